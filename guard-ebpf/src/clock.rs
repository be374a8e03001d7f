//! The clock of bans and rate windows: CLOCK_MONOTONIC_COARSE nanoseconds
//! (a tick's resolution is plenty for windows of seconds), derived from
//! `jiffies` under the base the controller measured (`CLOCK`, see
//! `guard_common::clock`): an inlined load and a multiply, where the
//! coarse clock's helper costs about 6 ns on every banned or counted
//! packet. Until the base is written, the helper.
use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
};
use guard_common::clock::ClockSample;

use crate::maps::CLOCK;

/// Now, in the controller's CLOCK_MONOTONIC nanoseconds. Only read when an
/// entry needs it.
#[inline(always)]
pub fn now_ns() -> u64 {
    if let Some(base) = CLOCK.get(0) {
        if base.tick_ns != 0 {
            // SAFETY: a helper without arguments (inlined by the verifier).
            return base.now_ns(unsafe { bpf_jiffies64() });
        }
    }
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The `sipguard_clock` program: writes a [`ClockSample`] into the first
/// bytes of its (test-run) packet. Never attached.
#[inline(always)]
pub fn sample(ctx: *mut xdp_md) -> u32 {
    // SAFETY: the context the kernel passed; data and data_end bound the packet.
    let (data, end) = unsafe { ((*ctx).data as usize, (*ctx).data_end as usize) };
    if data + ClockSample::BYTES > end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: helpers without arguments.
    let (jiffies, coarse_ns, jiffies_after) =
        unsafe { (bpf_jiffies64(), bpf_ktime_get_coarse_ns(), bpf_jiffies64()) };
    let words = data as *mut u64;
    // SAFETY: 24 bytes checked above; the packet holds no alignment promise.
    unsafe {
        words.write_unaligned(jiffies.to_le());
        words.add(1).write_unaligned(coarse_ns.to_le());
        words.add(2).write_unaligned(jiffies_after.to_le());
    }
    xdp_action::XDP_PASS
}
