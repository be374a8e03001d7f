//! sipguard's XDP program. One packet's path, top to bottom:
//!
//! parse -> ban -> deny -> fragment -> service access (closed, trusted)
//!       -> allow list -> rate rules -> verdict
//!
//! The steps after parsing are the shared verdict, `guard_common::verdict::
//! judge` (the controller's `explain` runs the same function); this program
//! supplies its lookups over the maps ([`KernelLookup`]). Every path ends in
//! exactly one `Reason`, which is counted (per CPU, packets and bytes) and
//! turned into XDP_DROP or XDP_PASS; monitor mode passes all.
//! SIP requests that pass are then copied to the controller by tail-calling
//! `sipguard_capture` (a program of its own, so the verifier checks the copy
//! once instead of once per verdict path); the tc egress program at the
//! bottom copies the PBX's SIP answers.
#![no_std]
#![no_main]

mod bans;
mod counters;
mod maps;
mod parse;
mod rate_limit;
mod sip_capture;
mod sip_inspect;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md, TC_ACT_PIPE},
    macros::{classifier, xdp},
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use guard_common::{
    policy_port_index, policy_service_index,
    verdict::{classify, judge_parts, Lookup, Verdict},
    AccessMode, L4Proto, PortClass, Reason, Settings, SourceKey, CAPTURE_INBOUND, CAPTURE_OUTBOUND,
};

use crate::{
    maps::{ALLOW_V4, ALLOW_V6, CAPTURE_PROG, DENY_V4, DENY_V6, PORTS, SERVICES, SETTINGS},
    parse::{Address, Frame, Transport},
};

/// The shared verdict's lookups, over this program's maps, and the arriving
/// packet whose SIP request step 5b reads: its context and where its payload
/// starts and how long it is (0: none; egress has no packet here). Kept to
/// 16 bytes: the packet path's stack is nearly all of the kernel's 512.
struct KernelLookup {
    ctx: *mut xdp_md,
    payload_start: u32,
    payload_len: u32,
}

impl KernelLookup {
    #[inline(always)]
    fn without_packet() -> KernelLookup {
        KernelLookup {
            ctx: core::ptr::null_mut(),
            payload_start: 0,
            payload_len: 0,
        }
    }
}

impl Lookup for KernelLookup {
    /// One read per packet: the policy slot in it keeps every later lookup
    /// in one policy, even while a reload switches slots.
    #[inline(always)]
    fn settings(&mut self) -> Settings {
        match SETTINGS.get(0) {
            Some(settings) => *settings,
            None => Settings::default(),
        }
    }

    #[inline(always)]
    fn is_banned(&mut self, source: &SourceKey) -> bool {
        bans::is_banned(source)
    }

    #[inline(always)]
    fn is_denied(&mut self, source: &Address) -> bool {
        match source {
            Address::V4(addr) => DENY_V4.get(Key::new(32, *addr)).is_some(),
            Address::V6(addr) => DENY_V6.get(Key::new(128, *addr)).is_some(),
        }
    }

    /// Services the source's allow-list entry grants (0 when it has none).
    #[inline(always)]
    fn allow_mask(&mut self, source: &Address) -> u32 {
        let found = match source {
            Address::V4(addr) => ALLOW_V4.get(Key::new(32, *addr)),
            Address::V6(addr) => ALLOW_V6.get(Key::new(128, *addr)),
        };
        found.copied().unwrap_or(0)
    }

    #[inline(always)]
    fn port_class(&mut self, proto: L4Proto, port: u16, slot: u8) -> PortClass {
        PORTS
            .get(policy_port_index(slot, proto, port))
            .copied()
            .unwrap_or(PortClass::UNCLASSIFIED)
    }

    #[inline(always)]
    fn access_mode(&mut self, service: u8, slot: u8) -> AccessMode {
        match SERVICES.get(policy_service_index(slot, service)) {
            Some(policy) => policy.access_mode(),
            // Unreachable with a valid id; refuse rather than open.
            None => AccessMode::Closed,
        }
    }

    #[inline(always)]
    fn exceeds_rate_rules(
        &mut self,
        source: &SourceKey,
        class: &PortClass,
        is_syn: bool,
        slot: u8,
    ) -> bool {
        rate_limit::exceeds_rate_rules(source, class, is_syn, slot)
    }

    #[inline(always)]
    fn scanner_fingerprint(&mut self, slot: u8) -> u16 {
        if self.payload_len == 0 {
            return 0;
        }
        // The table is looked up here too: without patterns, nothing is copied.
        match sip_inspect::patterns(slot) {
            Some(_) => {
                sip_inspect::fingerprint(self.ctx, self.payload_start, self.payload_len, slot)
            }
            None => 0,
        }
    }

    #[inline(always)]
    fn ban_scanner(&mut self, source: &SourceKey, pattern: u16, slot: u8) {
        if let Some(table) = sip_inspect::patterns(slot) {
            // SAFETY: a live map value, read only.
            let ban_ns = unsafe { (*table).ban_ns };
            if ban_ns != 0 {
                bans::ban_scanner(source, pattern, ban_ns);
            }
        }
    }
}

/// Where a TCP or UDP packet's payload starts and its length (0: none).
#[inline(always)]
fn payload_of(transport: &Transport) -> (u32, u32) {
    match *transport {
        Transport::Udp { payload, .. } | Transport::Tcp { payload, .. }
            if payload.end > payload.start =>
        {
            (payload.start as u32, (payload.end - payload.start) as u32)
        }
        _ => (0, 0),
    }
}

#[xdp]
pub fn sipguard(ctx: XdpContext) -> u32 {
    let frame = parse::parse(&ctx);
    // Read after parsing. Read before, the value lived through the inlined
    // parser and LLVM spilled an uninitialised register there, which the
    // verifier refuses ("R5 !read_ok"). The egress program reads it first
    // for the same reason: there the other order is the one that fails.
    let settings = KernelLookup::without_packet().settings();
    let verdict = match frame {
        Frame::AlwaysPass => parse_verdict(Reason::Passed, &settings),
        Frame::Malformed => parse_verdict(Reason::Malformed, &settings),
        Frame::Ip(packet) => {
            let (payload_start, payload_len) = payload_of(&packet.transport);
            let mut lookup = KernelLookup {
                ctx: ctx.ctx,
                payload_start,
                payload_len,
            };
            judge_parts(&mut lookup, &packet.source, &packet.transport, &settings)
        }
    };
    let class = verdict.class;
    counters::count_verdict(
        verdict.reason,
        class.service,
        (ctx.data_end() - ctx.data()) as u64,
    );
    if verdict.drops() {
        return xdp_action::XDP_DROP;
    }
    if class.watches_sip() {
        // Does not return when it succeeds; the capture program passes the packet.
        unsafe { CAPTURE_PROG.tail_call(&ctx, 0) };
    }
    xdp_action::XDP_PASS
}

/// The verdict on a frame the shared judge never sees (not IP, malformed).
#[inline(always)]
fn parse_verdict(reason: Reason, settings: &Settings) -> Verdict {
    Verdict::new(reason, PortClass::UNCLASSIFIED, settings)
}

/// Tail-called for SIP packets that passed: copies their payload.
#[xdp]
pub fn sipguard_capture(ctx: XdpContext) -> u32 {
    if let Frame::Ip(packet) = parse::parse(&ctx) {
        sip_capture::capture(&ctx, &packet, CAPTURE_INBOUND);
    }
    xdp_action::XDP_PASS
}

/// tc egress: copies the PBX's SIP answers (sent from a watched port) to the
/// controller. It never drops or changes a packet.
#[classifier]
pub fn sipguard_egress(ctx: TcContext) -> i32 {
    let slot = KernelLookup::without_packet().settings().policy_slot;
    if let Frame::Ip(packet) = parse::parse(&ctx) {
        let (class, _) = classify(
            &mut KernelLookup::without_packet(),
            &packet.transport,
            CAPTURE_OUTBOUND,
            slot,
        );
        if class.watches_sip() {
            sip_capture::capture(&ctx, &packet, CAPTURE_OUTBOUND);
        }
    }
    TC_ACT_PIPE as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
