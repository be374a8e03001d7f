//! sipguard's XDP program. One packet's path, top to bottom:
//!
//! parse -> ban -> deny -> allow -> service policy -> rate rules -> verdict
//!
//! Every path ends in exactly one `Reason`, which is counted (per CPU, packets
//! and bytes) and turned into XDP_DROP or XDP_PASS; monitor mode passes all.
#![no_std]
#![no_main]

mod bans;
mod counters;
mod maps;
mod parse;
mod rate_limit;

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_boot_ns, macros::xdp, maps::lpm_trie::Key,
    programs::XdpContext,
};
use guard_common::{
    port_index, service_bit, AccessMode, L4Proto, PortClass, Reason, Settings, SourceKey,
    DEFAULT_DROP, NO_SERVICE, UNCLASSIFIED_BIT,
};

use crate::{
    maps::{ALLOW_V4, ALLOW_V6, DENY_V4, DENY_V6, PORTS, SERVICES, SETTINGS},
    parse::{Frame, Packet, Source, Transport},
};

#[xdp]
pub fn sipguard(ctx: XdpContext) -> u32 {
    let settings = match SETTINGS.get(0) {
        Some(settings) => *settings,
        None => Settings::default(),
    };
    let reason = match parse::parse(&ctx) {
        Frame::AlwaysPass => Reason::Passed,
        Frame::Malformed => Reason::Malformed,
        Frame::Ip(packet) => judge(&packet, &settings),
    };
    counters::count_verdict(reason, (ctx.data_end() - ctx.data()) as u64);
    if reason.drops() && settings.monitor == 0 {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn judge(packet: &Packet, settings: &Settings) -> Reason {
    let source = match packet.source {
        Source::V4(addr) => SourceKey::from_ipv4(addr),
        Source::V6(addr) => SourceKey::from_ipv6(addr, settings.ipv6_ban_prefix),
    };
    // Read once: a ban check and a rate rule must agree on "now".
    let now_ns = unsafe { bpf_ktime_get_boot_ns() };

    if bans::is_banned(&source, now_ns) {
        return Reason::Banned;
    }
    if is_denied(&packet.source) {
        return Reason::Denied;
    }
    let allowed_services = allow_mask(&packet.source);

    let (class, is_syn) = match packet.transport {
        Transport::LaterFragment => return Reason::Fragment,
        Transport::Tcp { dport, syn } => (port_class(L4Proto::Tcp, dport), syn),
        Transport::Udp { dport } => (port_class(L4Proto::Udp, dport), false),
        Transport::Other => (PortClass::UNCLASSIFIED, false),
    };

    // Service policy. An allow-listed source skips its service's rate rules.
    if class.service != NO_SERVICE {
        let allowed = allowed_services & service_bit(class.service) != 0;
        match access_mode(class.service) {
            AccessMode::Closed => return Reason::Closed,
            AccessMode::Trusted if !allowed => return Reason::NotTrusted,
            AccessMode::Trusted | AccessMode::Open if allowed => return Reason::PassedAllowlisted,
            AccessMode::Trusted | AccessMode::Open => {}
        }
    } else if allowed_services & UNCLASSIFIED_BIT != 0 {
        return Reason::PassedAllowlisted;
    }

    if class.has_rules() && rate_limit::exceeds_rate_rules(&source, &class, is_syn, now_ns) {
        return Reason::RateLimited;
    }

    if class.service == NO_SERVICE && settings.default_policy == DEFAULT_DROP {
        Reason::DefaultDrop
    } else {
        Reason::Passed
    }
}

#[inline(always)]
fn is_denied(source: &Source) -> bool {
    match source {
        Source::V4(addr) => DENY_V4.get(Key::new(32, *addr)).is_some(),
        Source::V6(addr) => DENY_V6.get(Key::new(128, *addr)).is_some(),
    }
}

/// Services the source's allow-list entry grants (0 when it has none).
#[inline(always)]
fn allow_mask(source: &Source) -> u32 {
    let found = match source {
        Source::V4(addr) => ALLOW_V4.get(Key::new(32, *addr)),
        Source::V6(addr) => ALLOW_V6.get(Key::new(128, *addr)),
    };
    found.copied().unwrap_or(0)
}

#[inline(always)]
fn port_class(proto: L4Proto, port: u16) -> PortClass {
    PORTS
        .get(port_index(proto, port))
        .copied()
        .unwrap_or(PortClass::UNCLASSIFIED)
}

#[inline(always)]
fn access_mode(service: u8) -> AccessMode {
    match SERVICES.get(service as u32) {
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
