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

/// Tick lengths (TICK_NSEC = (10^9 + HZ/2) / HZ) of the HZ x86-64 and arm64
/// kernels offer: 100, 250, 300 and 1000, at least 17% apart, so samples
/// over ten ticks tell them apart. Other HZ (1024, 24, 48: MIPS and Alpha;
/// 200, 500: arm32) are left to the helper.
const TICK_LENGTHS: [u64; 4] = [
    tick_nsec(100),
    tick_nsec(250),
    tick_nsec(300),
    tick_nsec(1000),
];

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
    /// Jiffies advance on a grid of tick lengths of monotonic time; the
    /// coarse clock holds the time its tick was handled, a little after its
    /// grid point (interrupt latency). So under the right tick length `T`,
    /// every sample puts the last sample's tick at nearly the same time,
    /// its "offset" `coarse + (last jiffies - jiffies) * T`, while under a
    /// length 17% off the offsets drift by a sixth of a tick per tick. A
    /// sample taken between the kernel's jiffies increment and its clock
    /// update reads a coarse time a tick old, and lands a tick below the
    /// others. The tick length is the one under which three quarters of
    /// the steady samples lie within a quarter tick of each other; the
    /// base is the lowest offset among them (the derived clock then runs on
    /// the grid plus the smallest latency seen). None if no length fits.
    pub fn calibrate(samples: &[ClockSample]) -> Option<ClockBase> {
        let steady = || samples.iter().filter(|s| s.is_steady());
        let (first, last) = (steady().next()?, steady().next_back()?);
        if last.jiffies.checked_sub(first.jiffies)? < CALIBRATION_TICKS {
            return None;
        }
        let count = steady().count();
        TICK_LENGTHS.into_iter().find_map(|tick_ns| {
            let offset = |s: &ClockSample| -> Option<u64> {
                let ticks = last.jiffies.checked_sub(s.jiffies)?;
                s.coarse_ns.checked_add(ticks.checked_mul(tick_ns)?)
            };
            // The densest quarter-tick window, found from each sample's offset.
            let mut best: Option<(usize, u64)> = None;
            for pivot in steady() {
                let low = offset(pivot)?;
                let high = low.saturating_add(tick_ns / 4);
                let inside = steady()
                    .filter_map(offset)
                    .filter(|o| (low..=high).contains(o))
                    .count();
                if best.is_none_or(|(n, _)| inside > n) {
                    best = Some((inside, low));
                }
            }
            let (inside, base_ns) = best?;
            (inside * 4 >= count * 3).then_some(ClockBase {
                base_ns,
                base_jiffies: last.jiffies,
                tick_ns,
            })
        })
    }

    /// True if `sample` reads within one tick of what this base says.
    pub fn agrees_with(&self, sample: &ClockSample) -> bool {
        self.tick_ns != 0 && self.now_ns(sample.jiffies).abs_diff(sample.coarse_ns) <= self.tick_ns
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

    /// Samples every 2 ms over `ticks` ticks of `tick_ns`, each tick
    /// handled `late(tick)` ns after its grid point.
    fn sampled(tick_ns: u64, ticks: u64, late: impl Fn(u64) -> u64) -> std::vec::Vec<ClockSample> {
        let start = 7_000_000_000u64;
        (0..)
            .map(|i| start + i * 2_000_000)
            .take_while(|t| *t <= start + ticks * tick_ns)
            .map(|t| {
                let jiffies = 1000 + (t - start) / tick_ns;
                at(jiffies, start + (jiffies - 1000) * tick_ns + late(jiffies))
            })
            .collect()
    }

    #[test]
    fn the_tick_length_is_the_one_the_samples_keep_to() {
        for (tick_ns, hz) in [
            (HZ250, 250),
            (3_333_333, 300),
            (1_000_000, 1000),
            (10_000_000, 100),
        ] {
            // Ticks handled 5 to 60 us late.
            let samples = sampled(tick_ns, 12, |j| 5_000 + (j * 7_919) % 55_000);
            let base = ClockBase::calibrate(&samples).unwrap_or_else(|| panic!("{hz} Hz"));
            assert_eq!(base.tick_ns, tick_ns, "{hz} Hz");
            let last = samples.last().unwrap();
            // On the grid plus the smallest latency seen.
            let grid = 7_000_000_000 + (last.jiffies - 1000) * tick_ns;
            assert!(base.now_ns(last.jiffies) >= grid + 5_000, "{hz} Hz");
            assert!(base.now_ns(last.jiffies) <= grid + 60_000, "{hz} Hz");
            assert!(base.agrees_with(last));
        }
    }

    #[test]
    fn a_sample_between_the_tick_and_the_clock_update_is_left_out() {
        let mut samples = sampled(HZ250, 12, |_| 20_000);
        // jiffies already advanced, the coarse clock a tick old.
        samples[5].coarse_ns -= HZ250;
        let base = ClockBase::calibrate(&samples).unwrap();
        assert_eq!(base.tick_ns, HZ250);
        let last = samples.last().unwrap();
        assert_eq!(base.now_ns(last.jiffies), last.coarse_ns);
    }

    #[test]
    fn samples_that_fit_no_tick_length_calibrate_nothing() {
        // Too few ticks, a rate no HZ here gives (1024 Hz), jittered beyond
        // a quarter tick, or backwards.
        assert_eq!(ClockBase::calibrate(&sampled(HZ250, 8, |_| 0)), None);
        assert_eq!(ClockBase::calibrate(&sampled(976_563, 30, |_| 0)), None);
        assert_eq!(
            ClockBase::calibrate(&sampled(1_000_000, 30, |j| (j / 2 % 2) * 600_000)),
            None
        );
        assert_eq!(ClockBase::calibrate(&[at(30, 0), at(10, 80_000_000)]), None);
        assert_eq!(ClockBase::calibrate(&[]), None);
        // A tick between the two reads of every sample.
        let torn: std::vec::Vec<_> = sampled(HZ250, 12, |_| 0)
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
        assert!(!base.agrees_with(&at(2, 5_000_000_000 + 6 * HZ250)));
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
