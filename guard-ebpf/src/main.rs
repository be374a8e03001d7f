//! sipguard's XDP program. One packet's path, top to bottom:
//!
//! parse -> ban -> deny -> allow -> service policy -> rate rules -> verdict
//!
//! Every path ends in exactly one `Reason`, which is counted (per CPU, packets
//! and bytes) and turned into XDP_DROP or XDP_PASS; monitor mode passes all.
//! SIP requests that pass are then copied to the controller by tail-calling
//! `sipguard_capture` (a program of its own, so the verifier checks the copy
//! once instead of once per verdict path); the tc egress program at the
//! bottom copies the PBX's SIP answers.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod bans;
mod counters;
mod maps;
mod parse;
mod rate_limit;
mod sip_capture;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_PIPE},
    macros::{classifier, xdp},
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use guard_common::{
    policy_port_index, policy_service_index, service_bit, AccessMode, L4Proto, PortClass, Reason,
    Settings, SourceKey, CAPTURE_INBOUND, CAPTURE_OUTBOUND, DEFAULT_DROP, NO_SERVICE,
    UNCLASSIFIED_BIT,
};

use crate::{
    maps::{ALLOW_V4, ALLOW_V6, CAPTURE_PROG, DENY_V4, DENY_V6, PORTS, SERVICES, SETTINGS},
    parse::{Address, Frame, Packet, Transport},
};

/// One read per packet: the policy slot in it keeps every later lookup
/// in one policy, even while a reload switches slots.
#[inline(always)]
fn settings() -> Settings {
    match SETTINGS.get(0) {
        Some(settings) => *settings,
        None => Settings::default(),
    }
}

#[xdp]
pub fn sipguard(ctx: XdpContext) -> u32 {
    let frame = parse::parse(&ctx);
    // Read after parsing. Read before, the value lived through the inlined
    // parser and LLVM spilled an uninitialised register there, which the
    // verifier refuses ("R5 !read_ok"). The egress program reads it first
    // for the same reason: there the other order is the one that fails.
    let settings = settings();
    let (reason, class) = match frame {
        Frame::AlwaysPass => (Reason::Passed, PortClass::UNCLASSIFIED),
        Frame::Malformed => (Reason::Malformed, PortClass::UNCLASSIFIED),
        Frame::Ip(packet) => judge(&packet, &settings),
    };
    counters::count_verdict(reason, class.service, (ctx.data_end() - ctx.data()) as u64);
    if reason.drops() && settings.monitor == 0 {
        return xdp_action::XDP_DROP;
    }
    if class.watches_sip() {
        // Does not return when it succeeds; the capture program passes the packet.
        unsafe { CAPTURE_PROG.tail_call(&ctx, 0) };
    }
    xdp_action::XDP_PASS
}

/// Tail-called for SIP packets that passed: copies their payload.
#[xdp]
pub fn sipguard_capture(ctx: XdpContext) -> u32 {
    if let Frame::Ip(packet) = parse::parse(&ctx) {
        sip_capture::capture(&ctx, &packet, CAPTURE_INBOUND);
    }
    xdp_action::XDP_PASS
}

/// The verdict, and the class of the destination port (for SIP capture).
#[inline(always)]
fn judge(packet: &Packet, settings: &Settings) -> (Reason, PortClass) {
    let unclassified = PortClass::UNCLASSIFIED;
    let source = match packet.source {
        Address::V4(addr) => SourceKey::from_ipv4(addr),
        Address::V6(addr) => SourceKey::from_ipv6(addr, settings.ipv6_ban_prefix),
    };
    // Banned and denied packets still count against the service they were
    // aimed at; their port class is read on those (early) returns only.
    let slot = settings.policy_slot;
    if bans::is_banned(&source) {
        return (
            Reason::Banned,
            classify(&packet.transport, CAPTURE_INBOUND, slot).0,
        );
    }
    if is_denied(&packet.source) {
        return (
            Reason::Denied,
            classify(&packet.transport, CAPTURE_INBOUND, slot).0,
        );
    }
    if let Transport::LaterFragment = packet.transport {
        return (Reason::Fragment, unclassified);
    }
    let (class, is_syn) = classify(&packet.transport, CAPTURE_INBOUND, slot);

    // Service policy. The allow list is searched only where its answer can
    // change the verdict: trusted services, ports with rate rules (an
    // allow-listed source skips them), and unclassified traffic under
    // "drop". Elsewhere the packet passes either way.
    if class.service != NO_SERVICE {
        let access = access_mode(class.service, slot);
        if access == AccessMode::Closed {
            return (Reason::Closed, class);
        }
        if access == AccessMode::Trusted || class.has_rules() {
            let allowed = allow_mask(&packet.source) & service_bit(class.service) != 0;
            if allowed {
                return (Reason::PassedAllowlisted, class);
            }
            if access == AccessMode::Trusted {
                return (Reason::NotTrusted, class);
            }
        }
    } else if (settings.default_policy == DEFAULT_DROP || class.has_rules())
        && allow_mask(&packet.source) & UNCLASSIFIED_BIT != 0
    {
        return (Reason::PassedAllowlisted, class);
    }

    if class.has_rules() && rate_limit::exceeds_rate_rules(&source, &class, is_syn, slot) {
        return (Reason::RateLimited, class);
    }

    if class.service == NO_SERVICE && settings.default_policy == DEFAULT_DROP {
        (Reason::DefaultDrop, class)
    } else {
        (Reason::Passed, class)
    }
}

/// tc egress: copies the PBX's SIP answers (sent from a watched port) to the
/// controller. It never drops or changes a packet.
#[classifier]
pub fn sipguard_egress(ctx: TcContext) -> i32 {
    let slot = settings().policy_slot;
    if let Frame::Ip(packet) = parse::parse(&ctx) {
        let (class, _) = classify(&packet.transport, CAPTURE_OUTBOUND, slot);
        if class.watches_sip() {
            sip_capture::capture(&ctx, &packet, CAPTURE_OUTBOUND);
        }
    }
    TC_ACT_PIPE as i32
}

/// The class of the PBX's port (the destination of an arriving packet, the
/// source of a departing one), and whether the packet opens a TCP connection.
#[inline(always)]
fn classify(transport: &Transport, direction: u8, slot: u8) -> (PortClass, bool) {
    let pbx_port = |sport: u16, dport: u16| {
        if direction == CAPTURE_INBOUND {
            dport
        } else {
            sport
        }
    };
    match *transport {
        Transport::Tcp {
            sport, dport, syn, ..
        } => (port_class(L4Proto::Tcp, pbx_port(sport, dport), slot), syn),
        Transport::Udp { sport, dport, .. } => (
            port_class(L4Proto::Udp, pbx_port(sport, dport), slot),
            false,
        ),
        Transport::LaterFragment | Transport::Other => (PortClass::UNCLASSIFIED, false),
    }
}

#[inline(always)]
fn is_denied(source: &Address) -> bool {
    match source {
        Address::V4(addr) => DENY_V4.get(Key::new(32, *addr)).is_some(),
        Address::V6(addr) => DENY_V6.get(Key::new(128, *addr)).is_some(),
    }
}

/// Services the source's allow-list entry grants (0 when it has none).
#[inline(always)]
fn allow_mask(source: &Address) -> u32 {
    let found = match source {
        Address::V4(addr) => ALLOW_V4.get(Key::new(32, *addr)),
        Address::V6(addr) => ALLOW_V6.get(Key::new(128, *addr)),
    };
    found.copied().unwrap_or(0)
}

#[inline(always)]
fn port_class(proto: L4Proto, port: u16, slot: u8) -> PortClass {
    PORTS
        .get(policy_port_index(slot, proto, port))
        .copied()
        .unwrap_or(PortClass::UNCLASSIFIED)
}

#[inline(always)]
fn access_mode(service: u8, slot: u8) -> AccessMode {
    match SERVICES.get(policy_service_index(slot, service)) {
        Some(policy) => policy.access_mode(),
        // Unreachable with a valid id; refuse rather than open.
        None => AccessMode::Closed,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
