//! Copies SIP signalling to user space for the authentication-failure
//! watcher: requests arriving at a watched port (XDP, after they passed the
//! policy) and answers leaving from one (tc egress). Only packets with a
//! payload on watched SIP ports are copied, never RTP or anything else, and
//! only the first SIP_CAPTURE_BYTES of each.
use aya_ebpf::bindings::BPF_RB_AVAIL_DATA;
use guard_common::{
    Health, L4Proto, SipCapture, SipCaptureHeader, SourceKey, CAPTURE_INBOUND, SIP_CAPTURE_BYTES,
};

use crate::{
    counters::count_health,
    maps::{SIP_EVENTS, SIP_EVENTS_BYTES},
    parse::{Address, Packet, PacketBytes, Payload, Transport},
};

#[inline(always)]
fn mapped(address: &Address) -> [u8; 16] {
    match address {
        Address::V4(v4) => SourceKey::from_ipv4(*v4).addr,
        Address::V6(v6) => *v6,
    }
}

/// `len` (at least 1) capped at `capacity` (a power of two), in a form the
/// verifier can bound (1..=capacity): the helpers refuse a size that might
/// be 0. The volatile read hides `len`'s range from LLVM, which would
/// otherwise drop the mask as redundant. (An empty `asm!` did the same, but
/// its zero-length instruction left two BTF line records at one offset,
/// which the kernel refuses once the program has a bpf_loop callback.)
#[inline(always)]
pub fn clamp_length(len: usize, capacity: usize) -> usize {
    let capped = len.min(capacity) as u64;
    // SAFETY: reads a live local.
    let opaque = unsafe { core::ptr::read_volatile(&capped) };
    ((opaque.wrapping_sub(1) & (capacity as u64 - 1)) + 1) as usize
}

/// Bytes a capture record takes in the ring: the kernel's 8-byte record
/// header and the record, rounded up to 8.
const RECORD_BYTES: u64 = 8 + (core::mem::size_of::<SipCapture>() as u64).next_multiple_of(8);

/// True if `SIP_EVENTS` has room for one more record; else counts the
/// capture as lost. Read without the ring's lock (`bpf_ringbuf_query`),
/// so that while the controller is behind (a flood) the packet path skips
/// the tail call and the locked reservation that would fail anyway. A
/// stale read errs either way by a record the controller frees meanwhile.
#[inline(always)]
pub fn ring_has_room() -> bool {
    let pending = SIP_EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if pending.saturating_add(RECORD_BYTES) <= SIP_EVENTS_BYTES {
        return true;
    }
    count_health(Health::SipCaptureLost);
    false
}

/// A packet to copy, as the packet path hands it to the tail-called
/// capture programs (per-CPU, see `CAPTURE_ASK`): the record's header
/// (`denied` left 0) and where the payload starts. Written right before
/// the tail call, so the capture needs no second parse of the packet.
#[repr(C)]
#[derive(Default)]
pub struct CaptureAsk {
    pub header: SipCaptureHeader,
    pub payload_start: u32,
    pub _pad: u32,
}

/// Fills `ask` for `packet` (`direction` says who the peer is); false if
/// it carries nothing to copy (no TCP or UDP payload).
#[inline(always)]
pub fn describe(packet: &Packet, direction: u8, ask: &mut CaptureAsk) -> bool {
    let (proto, sport, dport, payload): (L4Proto, u16, u16, Payload) = match packet.transport {
        Transport::Udp {
            sport,
            dport,
            payload,
        } => (L4Proto::Udp, sport, dport, payload),
        Transport::Tcp {
            sport,
            dport,
            payload,
            ..
        } => (L4Proto::Tcp, sport, dport, payload),
        Transport::LaterFragment | Transport::Other => return false,
    };
    if payload.end <= payload.start {
        return false;
    }
    let payload_len = payload.end - payload.start;
    const _: () = assert!(SIP_CAPTURE_BYTES.is_power_of_two());
    let (peer, peer_port, local_port) = if direction == CAPTURE_INBOUND {
        (&packet.source, sport, dport)
    } else {
        (&packet.destination, dport, sport)
    };
    ask.header = SipCaptureHeader {
        peer: mapped(peer),
        peer_port,
        local_port,
        direction,
        transport: proto as u8,
        denied: 0,
        denied_rule: 0,
        captured: payload_len.min(SIP_CAPTURE_BYTES) as u32,
        payload_len: payload_len as u32,
    };
    ask.payload_start = payload.start as u32;
    true
}

/// Copies the packet `ask` describes (see [`describe`]). Runs in programs
/// of their own (the tail-called XDP captures, the tc egress program):
/// inlined into the packet path, its many live values made LLVM spill
/// registers in ways the verifier rejects.
///
/// `denied` is 0, or for a request a SIP rule denied the reason (low byte)
/// and the rule's index (high byte), which the controller logs.
#[inline(always)]
pub fn capture<P: PacketBytes>(ctx: &P, ask: &CaptureAsk, denied: u16) {
    let captured = clamp_length(ask.header.captured as usize, SIP_CAPTURE_BYTES);
    let Some(mut entry) = SIP_EVENTS.reserve::<SipCapture>(0) else {
        count_health(Health::SipCaptureLost);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to a reserved, exclusively owned ring buffer slot.
    unsafe {
        (*record).header = SipCaptureHeader {
            denied: denied as u8,
            denied_rule: (denied >> 8) as u8,
            captured: captured as u32,
            ..ask.header
        };
        let data = core::ptr::addr_of_mut!((*record).data) as *mut u8;
        if !ctx.copy_out(ask.payload_start as usize, data, captured as u32) {
            count_health(Health::SipCaptureLost);
            entry.discard(0);
            return;
        }
    }
    entry.submit(0);
}
