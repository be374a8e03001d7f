//! SIP inspection on the packet path: copies the start of a request's
//! payload into a per-CPU buffer and runs the shared reader
//! (`guard_common::sip_scan`) over it with `bpf_loop`, one byte per
//! iteration. The verifier checks the body once, whatever the length.
//!
//! Cost (BPF_PROG_TEST_RUN, kernel 6.18): about 5.4 us more for a 726-byte
//! REGISTER, about 90 ns for a short request; over issue 12's 1 us budget,
//! so `[sip_scanners]` is off by default. Reading 8-byte chunks (a SWAR
//! test passes over unread headers, see `SipScan::skips_chunk`) verifies,
//! but its loop body needs ~80 bytes of stack, and the packet path already
//! takes 432 of the 512 the call chain may use: that is the next step.
use aya_ebpf::{
    bindings::xdp_md,
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
};
use guard_common::{
    sip_scan::{PatternTable, ScanStatus, SipScan, SCAN_BYTES},
    POLICY_SLOTS,
};

use crate::{
    maps::{SIP_PATTERNS, SIP_SCANS, SIP_SCRATCH},
    sip_capture::clamp_length,
};

/// What the loop body reads, on the reader's stack: two pointers, so that
/// no byte pays for a map lookup.
struct LoopState {
    scratch: *mut Scratch,
    table: *const PatternTable,
}

/// The per-CPU working space: the copied payload, how much of it to read,
/// and the reader's state (too big for the 512-byte stack).
#[repr(C)]
pub struct Scratch {
    pub buf: [u8; SCAN_BYTES],
    pub len: u32,
    pub scan: SipScan,
}

/// The fingerprint table in force, if it holds any pattern.
#[inline(always)]
pub fn patterns(slot: u8) -> Option<*const PatternTable> {
    let table = SIP_PATTERNS.get_ptr((slot as u32) & (POLICY_SLOTS - 1))?;
    // SAFETY: a live map value, read only.
    if unsafe { (*table).active } == 0 {
        return None;
    }
    Some(table)
}

/// Reads the SIP request in `payload` against the table of policy `slot`:
/// the number of the fingerprint it carries, or 0 (also when it cannot be
/// read: that is the controller's to judge, never a drop). Counts each
/// outcome.
#[inline(always)]
pub fn fingerprint(ctx: *mut xdp_md, start: u32, len: u32, slot: u8) -> u16 {
    sipguard_read_sip(ctx, start, len, slot as u32) as u16
}

/// Copies `len` bytes of the payload at `start` into the per-CPU buffer and
/// reads them. A global BPF function, which the verifier checks once, on
/// its own, with unknown arguments: inlined into the packet path, the copy
/// made the payload's offsets values it must track exactly, so the states
/// of every path after it (IPv4, IPv6, VLAN, TCP, UDP, ...) stopped merging
/// and the program went past the one-million-instruction limit.
#[no_mangle]
#[inline(never)]
pub extern "C" fn sipguard_read_sip(ctx: *mut xdp_md, start: u32, len: u32, slot: u32) -> u32 {
    if ctx.is_null() || len == 0 {
        return 0;
    }
    let Some(scratch) = SIP_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let Some(table) = patterns(slot as u8) else {
        return 0;
    };
    let len = clamp_length(len as usize, SCAN_BYTES);
    // SAFETY: a per-CPU map value only this CPU uses; `len` bytes fit in
    // `buf`; the helper checks the frame's bounds.
    let copied = unsafe {
        let buf = core::ptr::addr_of_mut!((*scratch).buf) as *mut core::ffi::c_void;
        bpf_xdp_load_bytes(ctx, start, buf, len as u32) == 0
    };
    if !copied {
        return 0;
    }
    // SAFETY: a per-CPU map value only this CPU uses.
    unsafe {
        (*scratch).len = len as u32;
        (*scratch).scan.reset();
        let mut state = LoopState { scratch, table };
        bpf_loop(
            len as u32,
            byte_step as *mut _,
            core::ptr::addr_of_mut!(state) as *mut _,
            0,
        );
        let scan = &mut (*scratch).scan;
        scan.finish();
        count(scan.out.status);
        if scan.out.status == ScanStatus::Matched {
            u32::from(scan.out.pattern)
        } else {
            0
        }
    }
}

/// The loop body: one byte. Inside a header nobody reads, a byte other
/// than a line feed costs one test. Returns 1 to stop.
#[inline(never)]
extern "C" fn byte_step(index: u64, state: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `state` is the LoopState `sipguard_read_sip` passed to
    // bpf_loop: a per-CPU value only this CPU uses and a live map value.
    // The index is masked to `buf`.
    unsafe {
        let state = &*(state as *const LoopState);
        let scratch = &mut *state.scratch;
        let at = index as usize & (SCAN_BYTES - 1);
        let byte = scratch.buf[at];
        if scratch.scan.skips(byte) {
            return 0;
        }
        let table = &*state.table;
        // The class from a second, volatile load: see `SipScan::step_classed`.
        let again = core::ptr::read_volatile(scratch.buf.as_ptr().add(at));
        let class = table.class[again as usize];
        i64::from(!scratch.scan.step_classed(byte, class, table))
    }
}

#[inline(always)]
fn count(status: ScanStatus) {
    if let Some(counter) = SIP_SCANS.get_ptr_mut(status as u32) {
        // SAFETY: a per-CPU slot, only this CPU writes it.
        unsafe { *counter += 1 };
    }
}
