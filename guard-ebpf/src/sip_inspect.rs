//! SIP inspection on the packet path: copies the start of a request's
//! payload into a per-CPU buffer and runs the shared reader
//! (`guard_common::sip_scan`) over it with `bpf_loop`. Each iteration takes
//! two steps; a step reads a run of bytes where it can (`SipScan::advance`:
//! a header nobody reads up to its line feed, eight bytes of a value only
//! the fingerprint automaton reads, a known header name), else one byte.
//! The verifier checks the body
//! once, whatever the length; the reading position lives in the per-CPU
//! scratch, not on the stack, which the packet path has nearly used up.
use aya_ebpf::{
    bindings::xdp_md,
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    maps::lpm_trie::Key,
};
use guard_common::{
    sip_rules::{
        dial_prefix_len, dials, named_rules, permit_prefix_len, SipPermit, DIAL_KEY_BYTES,
        DIAL_PERMIT_PEERS, PERMIT_KEY_BYTES, RULES_DIAL, USER_AUTH, USER_FROM, USER_TO,
    },
    sip_scan::{
        store_zero_word, PatternTable, ScanStatus, SipScan, SCAN_BYTES, SCAN_PAD, USER_BYTES,
    },
    verdict::Address,
    SourceKey, POLICY_SLOTS,
};

use crate::{
    maps::{SIP_DIAL, SIP_PATTERNS, SIP_PERMIT, SIP_SCANS, SIP_SCRATCH},
    sip_capture::clamp_length,
};

/// [`read`]'s word: the request names a user a rule restricts, or dials
/// under the dial rules; the SIP rules step has something to judge.
pub const NEEDS_RULES: u32 = 1 << 16;

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
    /// The copy, and room for `SipScan::advance`'s 16-byte window at its end.
    pub buf: [u8; SCAN_BYTES + SCAN_PAD],
    pub len: u32,
    /// The next byte to read.
    pub pos: u32,
    /// The last SIP rule denial on this CPU (reason | rule << 8), for
    /// `sipguard_capture_denied`, tail-called right after it.
    pub denied: u32,
    pub scan: SipScan,
    /// LPM keys, built here: the packet path's stack has no room for them.
    pub permit_key: LpmKey<PERMIT_KEY_BYTES>,
    pub dial_key: LpmKey<DIAL_KEY_BYTES>,
    /// The SIP rules step's source address and ban key (see
    /// `sipguard_sip_rules`).
    pub rules_address: Address,
    pub rules_source: SourceKey,
}

/// This CPU's scratch.
#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    SIP_SCRATCH.get_ptr_mut(0)
}

/// An LPM trie key laid out as `aya_ebpf`'s (packed) `Key<[u8; N]>`.
#[repr(C)]
pub struct LpmKey<const N: usize> {
    pub prefix_len: u32,
    pub data: [u8; N],
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
/// the number of the fingerprint it carries (low 16 bits; 0: none, also
/// when it cannot be read: that is the controller's to judge, never a
/// drop), and [`NEEDS_RULES`]. Counts each outcome.
#[inline(always)]
pub fn read(ctx: *mut xdp_md, start: u32, len: u32, slot: u8) -> u32 {
    sipguard_read_sip(ctx, start, len, slot as u32)
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
        zero_pad(scratch, len);
        (*scratch).len = len as u32;
        (*scratch).pos = 0;
        (*scratch).scan.reset();
        let mut state = LoopState { scratch, table };
        // Each iteration reads at least one byte.
        bpf_loop(
            len as u32,
            read_step as *mut _,
            core::ptr::addr_of_mut!(state) as *mut _,
            0,
        );
        let scan = &mut (*scratch).scan;
        scan.finish();
        count(scan.out.status);
        match scan.out.status {
            ScanStatus::Matched => u32::from(scan.out.pattern),
            ScanStatus::Unreadable => 0,
            _ => {
                let out = &scan.out;
                let named = named_rules(out, USER_TO)
                    | named_rules(out, USER_FROM)
                    | named_rules(out, USER_AUTH);
                let dialling = (*table).sip_rules & RULES_DIAL != 0 && dials(out);
                if named != 0 || dialling {
                    NEEDS_RULES
                } else {
                    0
                }
            }
        }
    }
}

/// Zeroes the [`SCAN_PAD`] bytes after the copy's `len` (at most
/// `SCAN_BYTES`): `SipScan::advance` loads words past the input without a
/// test and reads their bytes as zero. Eight stores per packet instead of
/// a test per word.
///
/// # Safety
/// `scratch` is this CPU's scratch.
#[inline(always)]
unsafe fn zero_pad(scratch: *mut Scratch, len: usize) {
    // SAFETY: len + SCAN_PAD <= the buffer's size.
    unsafe {
        let at = (core::ptr::addr_of_mut!((*scratch).buf) as *mut u8).add(len);
        let mut k = 0;
        while k < SCAN_PAD / 8 {
            store_zero_word(at.add(k * 8));
            k += 1;
        }
    }
}

/// The extension rules restricting user `which` of the request just read.
#[inline(always)]
pub fn user_rules(which: usize) -> u64 {
    match SIP_SCRATCH.get_ptr(0) {
        // SAFETY: a per-CPU map value only this CPU uses, read only.
        Some(scratch) => named_rules(unsafe { &(*scratch).scan.out }, which),
        None => 0,
    }
}

/// The dial rule (index + 1) of the longest prefix the request just read
/// dials, 0 if none: one LPM lookup, keyed by the slot and the number.
#[inline(always)]
pub fn dial_rule(slot: u8) -> u8 {
    let Some(scratch) = SIP_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a per-CPU map value only this CPU uses; indexes are bounded.
    unsafe {
        let out = &(*scratch).scan.out;
        if !dials(out) {
            return 0;
        }
        let user = &out.request_user;
        let key = &mut (*scratch).dial_key;
        let len = user.len as usize;
        key.prefix_len = dial_prefix_len(if len > USER_BYTES { USER_BYTES } else { len });
        key.data[0] = slot & 1;
        // All of it: bytes past the length are not compared. Volatile, so
        // that LLVM does not make it a call to memcpy.
        let mut i = 0;
        while i < USER_BYTES {
            core::ptr::write_volatile(&mut key.data[1 + i], user.bytes[i]);
            i += 1;
        }
        let key = &*(key as *const LpmKey<DIAL_KEY_BYTES> as *const Key<[u8; DIAL_KEY_BYTES]>);
        match SIP_DIAL.get(key) {
            Some(rule) => ((*rule & 63) + 1) as u8,
            None => 0,
        }
    }
}

/// The rules whose `permit` networks hold `address` under policy `slot`:
/// one LPM lookup.
#[inline(always)]
pub fn permit(address: &Address, slot: u8) -> SipPermit {
    let Some(scratch) = SIP_SCRATCH.get_ptr_mut(0) else {
        return SipPermit::NONE;
    };
    // SAFETY: a per-CPU map value only this CPU uses. Byte by byte into
    // the key (volatile: no memset or memcpy calls, nothing on the stack).
    unsafe {
        let key = &mut (*scratch).permit_key;
        key.prefix_len = permit_prefix_len(128);
        key.data[0] = slot & 1;
        match address {
            Address::V4(a) => {
                let mut i = 0;
                while i < 10 {
                    core::ptr::write_volatile(&mut key.data[1 + i], 0);
                    i += 1;
                }
                core::ptr::write_volatile(&mut key.data[11], 0xff);
                core::ptr::write_volatile(&mut key.data[12], 0xff);
                let mut i = 0;
                while i < 4 {
                    core::ptr::write_volatile(&mut key.data[13 + i], a[i]);
                    i += 1;
                }
            }
            Address::V6(a) => {
                let mut i = 0;
                while i < 16 {
                    core::ptr::write_volatile(&mut key.data[1 + i], a[i]);
                    i += 1;
                }
            }
        }
        let key = &*(key as *const LpmKey<PERMIT_KEY_BYTES> as *const Key<[u8; PERMIT_KEY_BYTES]>);
        SIP_PERMIT.get(key).copied().unwrap_or(SipPermit::NONE)
    }
}

/// Dial rule `rule` of policy `slot`: whether it lets learned peers dial,
/// its ban time, and its calls a minute (0: no limit).
#[inline(always)]
pub fn dial_rule_info(rule: u8, slot: u8) -> (bool, u64, u32) {
    match patterns(slot) {
        // SAFETY: a live map value, read only; the index is masked.
        Some(table) => unsafe {
            let info = &(*table).dial[rule as usize & 63];
            (
                info.flags & DIAL_PERMIT_PEERS != 0,
                info.ban_ns,
                info.calls_per_minute,
            )
        },
        None => (false, 0, 0),
    }
}

/// Notes a SIP rule's denial for the capture that follows it.
#[inline(always)]
pub fn note_denied(word: u32) {
    if let Some(scratch) = SIP_SCRATCH.get_ptr_mut(0) {
        // SAFETY: a per-CPU map value only this CPU uses.
        unsafe { (*scratch).denied = word };
    }
}

/// The denial [`note_denied`] noted (and forgets it).
#[inline(always)]
pub fn take_denied() -> u32 {
    match SIP_SCRATCH.get_ptr_mut(0) {
        // SAFETY: a per-CPU map value only this CPU uses.
        Some(scratch) => unsafe {
            let word = (*scratch).denied;
            (*scratch).denied = 0;
            word
        },
        None => 0,
    }
}

/// The loop body: two steps of [`one_step`] (half the calls: each costs
/// about 1.4 ns). Returns 1 to stop.
#[inline(never)]
extern "C" fn read_step(_index: u64, state: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `state` is the LoopState `sipguard_read_sip` passed to
    // bpf_loop: a per-CPU value only this CPU uses and a live map value.
    unsafe {
        let state = &*(state as *const LoopState);
        let scratch = &mut *state.scratch;
        let table = &*state.table;
        if one_step(scratch, table) != 0 {
            return 1;
        }
        one_step(scratch, table)
    }
}

/// A run of bytes (`SipScan::advance`), else one byte; inside a header
/// nobody reads, a byte other than a line feed costs one test. Returns 1
/// to stop.
///
/// # Safety
/// Offsets are masked to `buf`, whose padding holds the words read past it.
#[inline(always)]
unsafe fn one_step(scratch: &mut Scratch, table: &PatternTable) -> i64 {
    let len = scratch.len as usize;
    let pos = scratch.pos as usize;
    if pos >= len {
        return 1;
    }
    let read = scratch.scan.advance(&scratch.buf, pos, len, table);
    if read != 0 {
        scratch.pos = (pos + read) as u32;
        return 0;
    }
    let at = pos & (SCAN_BYTES - 1);
    scratch.pos = pos as u32 + 1;
    let byte = scratch.buf[at];
    if scratch.scan.skips(byte) {
        return 0;
    }
    // The class from a second, volatile load: see `SipScan::step_classed`.
    // SAFETY: `at` is masked to `buf`.
    let again = unsafe { core::ptr::read_volatile(scratch.buf.as_ptr().add(at)) };
    let class = table.class[again as usize];
    i64::from(!scratch.scan.step_classed(byte, class, table))
}

#[inline(always)]
fn count(status: ScanStatus) {
    if let Some(counter) = SIP_SCANS.get_ptr_mut(status as u32) {
        // SAFETY: a per-CPU slot, only this CPU writes it.
        unsafe { *counter += 1 };
    }
}
