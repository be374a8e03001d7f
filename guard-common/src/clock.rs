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

/// Tick lengths of the kernel's possible HZ (TICK_NSEC = (10^9 + HZ/2) / HZ
/// for HZ 100, 250, 300, 1000, and the rarer 24, 48, 1024).
const TICK_LENGTHS: [u64; 7] = [
    tick_nsec(100),
    tick_nsec(250),
    tick_nsec(300),
    tick_nsec(1000),
    tick_nsec(24),
    tick_nsec(48),
    tick_nsec(1024),
];

const fn tick_nsec(hz: u64) -> u64 {
    (1_000_000_000 + hz / 2) / hz
}

/// Ticks between the first and last calibration samples: the tick length
/// is their ratio, within 2% of a known one even if one tick was handled
/// 0.8 ms late (as happens in virtual machines).
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

    /// The base from samples taken in time order, the first and last
    /// steady and at least [`CALIBRATION_TICKS`] apart: the tick length is
    /// the known one within 2% of their ratio. Jiffies advance on a grid
    /// of tick lengths, while the coarse clock holds the time its tick was
    /// handled, a little after its grid point; the base is the earliest
    /// any steady sample puts the last sample's tick at, so the derived
    /// clock runs on the grid and at most that little ahead of the coarse
    /// one. None if the samples fit no tick length.
    pub fn calibrate(samples: &[ClockSample]) -> Option<ClockBase> {
        let (first, last) = (samples.first()?, samples.last()?);
        if !first.is_steady() || !last.is_steady() {
            return None;
        }
        let ticks = last.jiffies.checked_sub(first.jiffies)?;
        if ticks < CALIBRATION_TICKS {
            return None;
        }
        let measured = last.coarse_ns.checked_sub(first.coarse_ns)? / ticks;
        let tick_ns = TICK_LENGTHS
            .into_iter()
            .find(|&t| measured.abs_diff(t) <= t / 50)?;
        let base_ns = samples
            .iter()
            .filter(|s| s.is_steady() && s.jiffies <= last.jiffies)
            .map(|s| {
                s.coarse_ns
                    .saturating_add((last.jiffies - s.jiffies) * tick_ns)
            })
            .min()?;
        Some(ClockBase {
            base_ns,
            base_jiffies: last.jiffies,
            tick_ns,
        })
    }

    /// True if `sample` reads within one tick of what this base says.
    pub fn agrees_with(&self, sample: &ClockSample) -> bool {
        self.tick_ns != 0 && self.now_ns(sample.jiffies).abs_diff(sample.coarse_ns) <= self.tick_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ250: u64 = 4_000_000;

    fn at(jiffies: u64, coarse_ns: u64) -> ClockSample {
        ClockSample {
            jiffies,
            coarse_ns,
            jiffies_after: jiffies,
        }
    }

    #[test]
    fn the_tick_length_is_the_known_one_nearest_the_samples() {
        // 250 Hz, the last tick handled 300 us late.
        let base = ClockBase::calibrate(&[at(1000, 7_000_000_000), at(1010, 7_040_300_000)])
            .expect("a 250 Hz clock");
        assert_eq!(base.tick_ns, HZ250);
        assert_eq!(base.base_jiffies, 1010);
        // On the grid the first sample gives, not 300 us ahead.
        assert_eq!(base.now_ns(1010), 7_040_000_000);
        assert_eq!(base.now_ns(1260), 7_040_000_000 + 250 * HZ250);
        let base = ClockBase::calibrate(&[at(10, 0), at(20, 10 * 3_333_333)]).unwrap();
        assert_eq!(base.tick_ns, 3_333_333, "300 Hz");
        let base = ClockBase::calibrate(&[at(10, 0), at(40, 30_000_000)]).unwrap();
        assert_eq!(base.tick_ns, 1_000_000, "1000 Hz");
    }

    #[test]
    fn the_base_is_the_earliest_steady_sample_on_the_grid() {
        let torn = ClockSample {
            jiffies_after: 1004,
            ..at(1003, 7_000_000_000)
        };
        let samples = [
            at(1000, 7_000_000_500),
            at(1002, 7_008_000_020),
            torn,
            at(1010, 7_040_000_900),
        ];
        let base = ClockBase::calibrate(&samples).unwrap();
        assert_eq!(base.now_ns(1010), 7_040_000_020);
    }

    #[test]
    fn samples_that_fit_no_tick_length_calibrate_nothing() {
        // Too close together, backwards, or a rate no HZ gives.
        assert_eq!(ClockBase::calibrate(&[at(10, 0), at(12, 8_000_000)]), None);
        assert_eq!(ClockBase::calibrate(&[at(30, 0), at(10, 80_000_000)]), None);
        assert_eq!(ClockBase::calibrate(&[at(10, 9), at(20, 0)]), None);
        assert_eq!(ClockBase::calibrate(&[at(10, 0), at(20, 70_000_000)]), None);
        assert_eq!(ClockBase::calibrate(&[]), None);
        // A tick between the two reads of the last sample.
        let torn = ClockSample {
            jiffies_after: 21,
            ..at(20, 40_000_000)
        };
        assert_eq!(ClockBase::calibrate(&[at(10, 0), torn]), None);
    }

    #[test]
    fn the_clock_wraps_with_jiffies() {
        // jiffies start near the top of their range (INITIAL_JIFFIES).
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
