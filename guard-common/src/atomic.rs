//! 64-bit atomic read-modify-write on map memory. Rust's prebuilt `core` for
//! the BPF targets has no compare-and-swap atomics, so on BPF these are the
//! instructions themselves (BPF_ATOMIC, needs `-C target-cpu=v3`, kernel 5.12+);
//! on the host they are `AtomicU64`, which the unit tests exercise.

/// Adds `value` to `*target`; returns the previous value.
///
/// # Safety
/// `target` must be valid and 8-byte aligned, and only changed atomically.
#[inline(always)]
pub unsafe fn fetch_add(target: *mut u64, value: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let mut previous = value;
        // SAFETY: forwarded from the caller.
        unsafe {
            core::arch::asm!(
                "{previous} = atomic_fetch_add((u64 *)({target} + 0), {previous})",
                target = in(reg) target,
                previous = inout(reg) previous,
            );
        }
        previous
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: forwarded from the caller.
        unsafe { AtomicU64::from_ptr(target) }.fetch_add(value, Ordering::Relaxed)
    }
}

/// Stores `new` into `*target` if it holds `expected`; returns what it held.
///
/// # Safety
/// As for [`fetch_add`].
#[inline(always)]
pub unsafe fn compare_and_swap(target: *mut u64, expected: u64, new: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let mut seen = expected;
        // SAFETY: forwarded from the caller. cmpxchg compares with and returns in r0.
        unsafe {
            core::arch::asm!(
                "r0 = cmpxchg_64({target} + 0, r0, {new})",
                target = in(reg) target,
                new = in(reg) new,
                inout("r0") seen,
            );
        }
        seen
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: forwarded from the caller.
        match unsafe { AtomicU64::from_ptr(target) }.compare_exchange(
            expected,
            new,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(previous) | Err(previous) => previous,
        }
    }
}

/// Reads `*target` in one 64-bit load.
///
/// # Safety
/// As for [`fetch_add`].
#[inline(always)]
pub unsafe fn load(target: *const u64) -> u64 {
    // SAFETY: forwarded from the caller; an aligned u64 load is single-copy atomic.
    unsafe { core::ptr::read_volatile(target) }
}
