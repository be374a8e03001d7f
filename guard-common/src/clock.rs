//! The clock of bans and rate windows, as the XDP program reads it.
//!
//! Bans and rate windows count in CLOCK_MONOTONIC nanoseconds at a tick's
//! resolution (the coarse clock). Reading that clock is a helper call, about
//! 6 ns, on every banned packet and every counted one. The kernel's tick
//! counter, `jiffies`, advances exactly once per tick length of monotonic
//! time and is read by an inlined load (`bpf_jiffies64`), so the program
//! derives the coarse clock from it: `base_ns + (jiffies - base_jiffies) *
//! tick_ns`. The controller measures the base and the tick length once per
//! load ([`ClockBase::calibrate`]) from samples the `sipguard_clock`
//! program takes; until then, or if the samples make no sense, `tick_ns` is
//! 0 and the program reads the coarse clock itself.

/// One reading of both clocks by the `sipguard_clock` program: `jiffies`
/// read before and after the coarse clock, so that a tick in between shows.
/// Written into the first [`ClockSample::BYTES`] bytes of its test packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockSample {
    pub jiffies: u64,
    pub coarse_ns: u64,
    pub jiffies_after: u64,
}

impl ClockSample {
    pub const BYTES: usize = 24;

    /// The sample from the packet the program wrote (little-endian words).
    pub fn from_bytes(bytes: &[u8]) -> Option<ClockSample> {
        let word = |i: usize| -> Option<u64> {
            let chunk = bytes.get(i * 8..i * 8 + 8)?;
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            Some(u64::from_le_bytes(w))
        };
        Some(ClockSample {
            jiffies: word(0)?,
            coarse_ns: word(1)?,
            jiffies_after: word(2)?,
        })
    }

    /// Both clocks read within one tick.
    pub const fn is_steady(&self) -> bool {
        self.jiffies == self.jiffies_after
    }
}

/// The `CLOCK` map's value (see the module docs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClockBase {
    pub base_ns: u64,
    pub base_jiffies: u64,
    /// The kernel's tick length (TICK_NSEC); 0: not calibrated.
    pub tick_ns: u64,
}
map_type!(ClockBase, 24);

/// The HZ x86-64 and arm64 kernels offer: 100, 250, 300 and 1000, their tick
/// lengths at least 17% apart, so samples over ten ticks tell them apart.
/// Other HZ (1024, 24, 48: MIPS and Alpha; 200, 500: arm32) are refused by
/// the boot check ([`counts_ticks_since_boot`]) and left to the helper.
const HZ_CHOICES: [u64; 4] = [100, 250, 300, 1000];

/// Jiffies at boot: the kernel's INITIAL_JIFFIES, `(u32)(-300 * HZ)`, so
/// that the 32-bit counter wraps five minutes after boot.
const fn initial_jiffies(hz: u64) -> u64 {
    (1u64 << 32) - 300 * hz
}

/// Whether `sample` reads as `hz` would have it: jiffies since boot are
/// about the monotonic clock's ticks (within 5 s; this machine's kernel
/// starts its ticks 0.14 s after its clock). A kernel of another HZ whose
/// tick length is near one of [`HZ_CHOICES`] (1024 Hz, 2.4% from 1000)
/// is off by seconds of ticks here.
const fn counts_ticks_since_boot(sample: &ClockSample, hz: u64) -> bool {
    let expected = initial_jiffies(hz).wrapping_add(sample.coarse_ns / tick_nsec(hz));
    sample.jiffies.abs_diff(expected) <= 5 * hz
}

const fn tick_nsec(hz: u64) -> u64 {
    (1_000_000_000 + hz / 2) / hz
}

/// Ticks between the first and last steady calibration samples.
pub const CALIBRATION_TICKS: u64 = 10;

impl ClockBase {
    /// The coarse clock at `jiffies` (wrapping, as the kernel's counters do).
    #[inline(always)]
    pub const fn now_ns(&self, jiffies: u64) -> u64 {
        self.base_ns.wrapping_add(
            jiffies
                .wrapping_sub(self.base_jiffies)
                .wrapping_mul(self.tick_ns),
        )
    }

    /// The base from samples taken in time order, spanning at least
    /// [`CALIBRATION_TICKS`] ticks between their first and last steady ones.
    ///
    /// The tick length is that of the one HZ of [`HZ_CHOICES`] under which
    /// the jiffies count the ticks since boot ([`counts_ticks_since_boot`]:
    /// their starting values lie 15,000 ticks or more apart). Jiffies
    /// advance on a grid of tick lengths of monotonic time; the coarse clock
    /// holds the time it was last updated: a little after its tick's grid
    /// point while ticks run, anywhere within the tick on an idle tickless
    /// CPU (which updates both when it wakes), and, for a moment around an
    /// update, a tick ahead of or behind the jiffies. So each sample's
    /// "offset", `coarse + (last jiffies - jiffies) * T`, lies within a tick
    /// of the grid point of the last sample's tick, a tick to either side
    /// for the few caught mid-update. The base is the lowest offset of the
    /// densest window of one tick, which must hold at least half the steady
    /// samples; every offset must lie within two ticks of it. The derived
    /// clock then runs on the grid, within a tick of the coarse one, two
    /// for a moment. None if nothing fits.
    pub fn calibrate(samples: &[ClockSample]) -> Option<ClockBase> {
        let steady = || samples.iter().filter(|s| s.is_steady());
        let (first, last) = (steady().next()?, steady().next_back()?);
        if last.jiffies.checked_sub(first.jiffies)? < CALIBRATION_TICKS {
            return None;
        }
        let mut fitting = HZ_CHOICES
            .into_iter()
            .filter(|&hz| counts_ticks_since_boot(last, hz));
        let hz = fitting.next()?;
        if fitting.next().is_some() {
            return None;
        }
        let tick_ns = tick_nsec(hz);
        let offset = |s: &ClockSample| -> Option<u64> {
            let ticks = last.jiffies.checked_sub(s.jiffies)?;
            s.coarse_ns.checked_add(ticks.checked_mul(tick_ns)?)
        };
        let offsets = || steady().filter_map(offset);
        let mut best: Option<(usize, u64)> = None;
        for low in offsets() {
            let high = low.saturating_add(tick_ns - 1);
            let inside = offsets().filter(|o| (low..=high).contains(o)).count();
            if best.is_none_or(|(n, _)| inside > n) {
                best = Some((inside, low));
            }
        }
        let (inside, base_ns) = best?;
        let count = steady().count();
        let near = |o: u64| o.abs_diff(base_ns) <= 2 * tick_ns;
        (inside * 2 >= count && offsets().count() == count && offsets().all(near)).then_some(
            ClockBase {
                base_ns,
                base_jiffies: last.jiffies,
                tick_ns,
            },
        )
    }

    /// True if `sample` reads within two ticks of what this base says.
    pub fn agrees_with(&self, sample: &ClockSample) -> bool {
        self.tick_ns != 0
            && self.now_ns(sample.jiffies).abs_diff(sample.coarse_ns) <= 2 * self.tick_ns
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    const HZ250: u64 = 4_000_000;

    fn at(jiffies: u64, coarse_ns: u64) -> ClockSample {
        ClockSample {
            jiffies,
            coarse_ns,
            jiffies_after: jiffies,
        }
    }

    /// Samples every 2 ms over `ticks` ticks of a kernel of `hz` (up 7 s),
    /// each clock update `late(jiffies)` ns after its tick's grid point.
    fn sampled(hz: u64, ticks: u64, late: impl Fn(u64) -> u64) -> std::vec::Vec<ClockSample> {
        let tick_ns = tick_nsec(hz);
        let start = 7 * tick_ns * hz;
        let j0 = initial_jiffies(hz) + start / tick_ns;
        (0..)
            .map(|i| start + i * 2_000_000)
            .take_while(|t| *t <= start + ticks * tick_ns)
            .map(|t| {
                let jiffies = j0 + (t - start) / tick_ns;
                at(jiffies, start + (jiffies - j0) * tick_ns + late(jiffies))
            })
            .collect()
    }

    #[test]
    fn the_tick_length_is_the_one_the_samples_keep_to() {
        for hz in HZ_CHOICES {
            let tick_ns = tick_nsec(hz);
            // Ticks handled 5 to 60 us late.
            let samples = sampled(hz, 12, |j| 5_000 + (j * 7_919) % 55_000);
            let base = ClockBase::calibrate(&samples).unwrap_or_else(|| panic!("{hz} Hz"));
            assert_eq!(base.tick_ns, tick_ns, "{hz} Hz");
            let last = samples.last().unwrap();
            // On the grid plus the smallest latency seen.
            let grid = 7 * tick_ns * hz + (last.jiffies - samples[0].jiffies) * tick_ns;
            assert!(base.now_ns(last.jiffies) >= grid + 5_000, "{hz} Hz");
            assert!(base.now_ns(last.jiffies) <= grid + 60_000, "{hz} Hz");
            assert!(base.agrees_with(last));
        }
    }

    #[test]
    fn an_idle_cpus_clock_updates_anywhere_within_the_tick() {
        // Woken by its own timers: each update lands at a pseudo-random
        // point of its tick, up to 95% of it.
        for hz in HZ_CHOICES {
            let tick_ns = tick_nsec(hz);
            let samples = sampled(hz, 12, |j| (j * 7_919 % 97) * tick_ns / 102);
            let base = ClockBase::calibrate(&samples).unwrap_or_else(|| panic!("{hz} Hz"));
            assert_eq!(base.tick_ns, tick_ns, "{hz} Hz");
            for s in &samples {
                let behind = s.coarse_ns - base.now_ns(s.jiffies);
                assert!(behind < tick_ns, "{hz} Hz: {behind} ns behind");
            }
        }
    }

    #[test]
    fn a_sample_between_the_tick_and_the_clock_update_is_left_out() {
        let mut samples = sampled(250, 12, |_| 20_000);
        // jiffies already advanced, the coarse clock a tick old; and the
        // other way round (seen on this machine's kernel).
        samples[5].coarse_ns -= HZ250;
        samples[9].coarse_ns += HZ250;
        let base = ClockBase::calibrate(&samples).unwrap();
        assert_eq!(base.tick_ns, HZ250);
        let last = samples.last().unwrap();
        assert_eq!(base.now_ns(last.jiffies), last.coarse_ns);
    }

    #[test]
    fn samples_that_fit_no_tick_length_calibrate_nothing() {
        // Too few ticks, a kernel of an HZ not known here (1024 Hz, a tick
        // 2.4% from 1000 Hz's; 200 Hz), or backwards.
        assert_eq!(ClockBase::calibrate(&sampled(250, 8, |_| 0)), None);
        assert_eq!(ClockBase::calibrate(&sampled(1024, 30, |_| 0)), None);
        assert_eq!(ClockBase::calibrate(&sampled(200, 12, |_| 0)), None);
        assert_eq!(ClockBase::calibrate(&[at(30, 0), at(10, 80_000_000)]), None);
        assert_eq!(ClockBase::calibrate(&[]), None);
        // A tick between the two reads of every sample.
        let torn: std::vec::Vec<_> = sampled(250, 12, |_| 0)
            .into_iter()
            .map(|s| ClockSample {
                jiffies_after: s.jiffies + 1,
                ..s
            })
            .collect();
        assert_eq!(ClockBase::calibrate(&torn), None);
    }

    #[test]
    fn the_clock_wraps_with_jiffies() {
        // Wrapping past u64::MAX (64-bit jiffies start near 2^32, so this
        // takes ages; the arithmetic must not care).
        let base = ClockBase {
            base_ns: 5_000_000_000,
            base_jiffies: u64::MAX - 1,
            tick_ns: HZ250,
        };
        assert_eq!(base.now_ns(2), 5_000_000_000 + 4 * HZ250);
        assert!(base.agrees_with(&at(2, 5_000_000_000 + 4 * HZ250 + 10)));
        assert!(base.agrees_with(&at(2, 5_000_000_000 + 6 * HZ250)));
        assert!(!base.agrees_with(&at(2, 5_000_000_000 + 7 * HZ250)));
        assert!(!ClockBase::default().agrees_with(&at(0, 0)));
    }

    #[test]
    fn a_sample_reads_back_from_its_packet() {
        let mut packet = [0u8; 64];
        packet[..8].copy_from_slice(&7u64.to_le_bytes());
        packet[8..16].copy_from_slice(&9u64.to_le_bytes());
        packet[16..24].copy_from_slice(&8u64.to_le_bytes());
        let sample = ClockSample::from_bytes(&packet).unwrap();
        assert_eq!(
            (sample.jiffies, sample.coarse_ns, sample.jiffies_after),
            (7, 9, 8)
        );
        assert!(!sample.is_steady());
        assert_eq!(ClockSample::from_bytes(&packet[..20]), None);
    }
}
