//! The clock the XDP program stamps bans and rate windows with:
//! CLOCK_MONOTONIC_COARSE, which the program derives from jiffies under a
//! base measured at load (`guard_common::clock`). Both sides agree on whether
//! a ban has expired, within a tick.
use std::time::Duration;

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; the clock exists since Linux 2.6.32.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// "1h 2m 3s" style, rounded to seconds.
pub fn human(duration: Duration) -> String {
    humantime::format_duration(Duration::from_secs(duration.as_secs())).to_string()
}
