//! The verdict table, Katran style: (policy, kernel state, packet,
//! expected reason). Every case runs through the controller's judge (no
//! root needed) and through the XDP program with BPF_PROG_TEST_RUN (root),
//! which must agree with each other and with the table. A property test
//! then compares the two on random policies and packets.
use std::{cell::RefCell, net::IpAddr};

use guard_common::{
    rate::{first_packet, slot_width_ns},
    rate_group, rate_lane, service_bit,
    verdict::{Address, Packet, Transport},
    AccessMode, BanEntry, BanReason, DefaultPolicy, L4Proto, PeerEntry, PeerKind, PortClass,
    RateKey, RateRule, Reason, ServicePolicy, Settings, SourceKey, ALLOW_ALL, NO_RULE,
    RULE_SYN_ONLY, UNCLASSIFIED_BIT,
};
use guard_userspace::{
    clock::monotonic_ns,
    policy::{
        compile::CompiledPolicy,
        config::Config,
        verdict::{ip_address, Judgement},
    },
};
use ipnet::IpNet;
use proptest::{
    prelude::*,
    test_runner::{Config as RunnerConfig, TestCaseError, TestRunner},
};
use sipguard_tests::{
    frames::frame_of, verdict_check::*, Harness, BASE_POLICY, XDP_DROP, XDP_PASS,
};

const SEC: u64 = 1_000_000_000;
const HOUR: u64 = 3600 * SEC;

/// Allow, deny, trusted and closed services, default pass; the built-in
/// services and SIP rate rules (0: 120 per 60 s, 1: 40 per 2 s on UDP 5060).
const BASE: &str = BASE_POLICY;

const DROP_ALL: &str = r#"
[guard]
default_policy = "drop"
[[allow]]
cidr = "10.1.0.0/16"
[[allow]]
cidr = "10.2.0.0/16"
services = ["sip"]
"#;

const MONITOR: &str = r#"
[guard]
monitor = true
default_policy = "drop"
[services.web]
access = "trusted"
[[deny]]
cidr = "203.0.113.0/24"
"#;

/// Its one rule (0: it replaces the built-in ones) counts SSH connection attempts only.
const SSH_SYN: &str = r#"
[[rate_rules]]
name = "ssh-connects"
service = "ssh"
packets = 5
window = "1m"
ban = "1h"
syn_only = true
"#;

/// A rule whose port list names UDP 5060 twice.
const DOUBLE_LISTED: &str = r#"
[[rate_rules]]
name = "sip-10"
ports = ["5060", "5060/udp"]
packets = 10
window = "1m"
ban = "1h"
"#;

/// Learned peers get 3x each rule's limit per live user, at most 30x.
const PEERS: &str = r#"
[peers]
factor = 3
max_multiplier = 30
[[allow]]
cidr = "10.1.0.0/16"
services = ["sip"]
"#;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn udp(src: &str, dport: u16) -> Packet {
    Packet {
        source: ip_address(ip(src)),
        transport: Transport::Udp {
            sport: 40000,
            dport,
            payload: (),
        },
    }
}

fn tcp(src: &str, dport: u16, syn: bool) -> Packet {
    Packet {
        source: ip_address(ip(src)),
        transport: Transport::Tcp {
            sport: 40000,
            dport,
            syn,
            payload: (),
        },
    }
}

fn fragment(src: &str) -> Packet {
    Packet {
        source: ip_address(ip(src)),
        transport: Transport::LaterFragment,
    }
}

fn icmp(src: &str) -> Packet {
    Packet {
        source: ip_address(ip(src)),
        transport: Transport::Other,
    }
}

/// Kernel state before a case: bans and packets already counted.
#[derive(Clone, Copy)]
enum Before {
    Nothing,
    /// A manual ban on the source (IPv6 keyed by /64), in force or expired.
    Ban(&'static str, bool),
    /// `count` packets from the source already in rule `rule`'s window.
    Counted(&'static str, u32, u64),
    /// As `Counted`, the source being a learned peer with this many live
    /// users, unexpired or expired.
    Peer(&'static str, u32, u64, u32, bool),
    /// As `Counted`, the source being the PBX's provider (a learned peer
    /// of kind provider, no registrations of its own).
    Provider(&'static str, u32, u64),
    /// A network in the fleet deny set (a CrowdSec range, a feed's entry).
    InFleet(&'static str),
    /// As `InFleet`, with a learned peer (1 live user) in it, unexpired or
    /// expired.
    PeerInFleet(&'static str, &'static str, bool),
}

struct Case {
    name: &'static str,
    config: &'static str,
    before: Before,
    packet: Packet,
    expected: Reason,
}

fn case(
    name: &'static str,
    config: &'static str,
    before: Before,
    packet: Packet,
    expected: Reason,
) -> Case {
    Case {
        name,
        config,
        before,
        packet,
        expected,
    }
}

fn table() -> Vec<Case> {
    use Before::*;
    use Reason::*;
    vec![
        // Ban, then deny, come first.
        case(
            "ban drops",
            BASE,
            Ban("198.51.100.7", true),
            udp("198.51.100.7", 5060),
            Banned,
        ),
        case(
            "ban beats allow",
            BASE,
            Ban("10.1.2.4", true),
            udp("10.1.2.4", 5060),
            Banned,
        ),
        case(
            "expired ban",
            BASE,
            Ban("198.51.100.7", false),
            udp("198.51.100.7", 5060),
            Passed,
        ),
        case(
            "v6 ban per /64",
            BASE,
            Ban("2001:db8:c::1", true),
            udp("2001:db8:c::99", 80),
            Banned,
        ),
        case(
            "v6 ban not next /64",
            BASE,
            Ban("2001:db8:c::1", true),
            udp("2001:db8:c:1::1", 80),
            Passed,
        ),
        case("deny v4", BASE, Nothing, udp("203.0.113.99", 5060), Denied),
        case(
            "deny v6",
            BASE,
            Nothing,
            tcp("2001:db8:bad:1::1", 443, true),
            Denied,
        ),
        case(
            "just outside deny",
            BASE,
            Nothing,
            udp("203.0.114.1", 5060),
            Passed,
        ),
        case(
            "deny beats closed",
            BASE,
            Nothing,
            tcp("203.0.113.5", 5038, true),
            Denied,
        ),
        // The fleet deny set: after ban and deny, sparing the allow list.
        case(
            "fleet range v4",
            BASE,
            InFleet("198.51.100.0/24"),
            udp("198.51.100.7", 5060),
            Fleet,
        ),
        case(
            "fleet range v6",
            BASE,
            InFleet("2001:db8:f::/48"),
            tcp("2001:db8:f:1::1", 443, true),
            Fleet,
        ),
        case(
            "fleet single address",
            BASE,
            InFleet("198.51.100.7/32"),
            icmp("198.51.100.7"),
            Fleet,
        ),
        case(
            "just outside a fleet range",
            BASE,
            InFleet("198.51.100.0/24"),
            udp("198.51.101.1", 5060),
            Passed,
        ),
        case(
            "fleet drops later fragments",
            BASE,
            InFleet("198.51.100.0/24"),
            fragment("198.51.100.9"),
            Fleet,
        ),
        case(
            "fleet spares the allow list (under the limits)",
            BASE,
            InFleet("10.0.0.0/8"),
            udp("10.1.2.3", 5060),
            PassedAllowlisted,
        ),
        case(
            "fleet spares the allow list on ports without rules",
            BASE,
            InFleet("10.0.0.0/8"),
            tcp("10.1.2.3", 5060, true),
            Passed,
        ),
        case(
            "fleet-spared source still meets a closed service",
            BASE,
            InFleet("10.0.0.0/8"),
            tcp("10.1.2.3", 5038, true),
            Closed,
        ),
        case(
            "fleet spares an allow entry for other services",
            BASE,
            InFleet("2001:db8::/32"),
            udp("2001:db8:a::9", 9999),
            Passed,
        ),
        case(
            "fleet outside the allow entry drops",
            BASE,
            InFleet("10.0.0.0/8"),
            udp("10.2.0.1", 5060),
            Fleet,
        ),
        // ...and sparing learned peers (issue 13: the PBX's own users).
        case(
            "fleet spares a learned peer",
            BASE,
            PeerInFleet("198.51.100.0/24", "198.51.100.7", true),
            udp("198.51.100.7", 5060),
            Passed,
        ),
        case(
            "fleet spares a learned peer's other traffic",
            BASE,
            PeerInFleet("198.51.100.0/24", "198.51.100.7", true),
            icmp("198.51.100.7"),
            Passed,
        ),
        case(
            "fleet-spared peer still meets a trusted service",
            BASE,
            PeerInFleet("198.51.100.0/24", "198.51.100.7", true),
            tcp("198.51.100.7", 443, true),
            NotTrusted,
        ),
        case(
            "fleet drops a lapsed peer",
            BASE,
            PeerInFleet("198.51.100.0/24", "198.51.100.7", false),
            udp("198.51.100.7", 5060),
            Fleet,
        ),
        case(
            "fleet drops the peer's neighbour",
            BASE,
            PeerInFleet("198.51.100.0/24", "198.51.100.7", true),
            udp("198.51.100.8", 5060),
            Fleet,
        ),
        case(
            "fleet spares a v6 peer by its /64",
            BASE,
            PeerInFleet("2001:db8:f::/48", "2001:db8:f:1::1", true),
            udp("2001:db8:f:1::99", 5060),
            Passed,
        ),
        case(
            "fleet drops a neighbour's fragments",
            BASE,
            PeerInFleet("198.51.100.0/24", "198.51.100.7", true),
            fragment("198.51.100.9"),
            Fleet,
        ),
        case(
            "deny beats fleet",
            BASE,
            InFleet("203.0.0.0/8"),
            udp("203.0.113.9", 5060),
            Denied,
        ),
        case(
            "monitor: fleet",
            MONITOR,
            InFleet("198.51.100.0/24"),
            udp("198.51.100.7", 5060),
            Fleet,
        ),
        // Fragments: judged by source alone.
        case(
            "fragment passes",
            BASE,
            Nothing,
            fragment("198.51.100.1"),
            Fragment,
        ),
        case(
            "fragment v6 passes",
            BASE,
            Nothing,
            fragment("2001:db8:b::1"),
            Fragment,
        ),
        case(
            "denied fragment",
            BASE,
            Nothing,
            fragment("203.0.113.7"),
            Denied,
        ),
        case(
            "banned fragment",
            BASE,
            Ban("198.51.100.8", true),
            fragment("198.51.100.8"),
            Banned,
        ),
        case(
            "fragment under drop",
            DROP_ALL,
            Nothing,
            fragment("198.51.100.1"),
            Fragment,
        ),
        // Service access.
        case(
            "closed",
            BASE,
            Nothing,
            tcp("198.51.100.1", 5038, true),
            Closed,
        ),
        case(
            "closed to allow-listed",
            BASE,
            Nothing,
            tcp("10.1.2.3", 5038, true),
            Closed,
        ),
        case(
            "not trusted",
            BASE,
            Nothing,
            tcp("198.51.100.1", 443, true),
            NotTrusted,
        ),
        case(
            "not trusted v6",
            BASE,
            Nothing,
            tcp("2001:db8:b::5", 80, true),
            NotTrusted,
        ),
        case(
            "trusted allow-listed",
            BASE,
            Nothing,
            tcp("10.1.9.9", 443, true),
            PassedAllowlisted,
        ),
        case(
            "trusted v6 all",
            BASE,
            Nothing,
            tcp("2001:db8:a:1::5", 80, false),
            PassedAllowlisted,
        ),
        case(
            "allow for other service",
            DROP_ALL,
            Nothing,
            udp("10.2.0.5", 9999),
            DefaultDrop,
        ),
        // The allow list counts only where it decides: on a port with
        // rate rules it spares the source the rules (not counted, even
        // under the limits); on an open port without rules it changes nothing.
        case(
            "allow-listed under the limits",
            BASE,
            Nothing,
            udp("10.1.2.3", 5060),
            PassedAllowlisted,
        ),
        case(
            "allow-listed on open port without rules is passed",
            BASE,
            Nothing,
            tcp("10.1.2.3", 5060, true),
            Passed,
        ),
        case(
            "allow-listed past its limit",
            BASE,
            Counted("10.1.2.3", 1, 500),
            udp("10.1.2.3", 5060),
            PassedAllowlisted,
        ),
        // Rate rules.
        case(
            "stranger under limits",
            BASE,
            Nothing,
            udp("198.51.100.1", 5060),
            Passed,
        ),
        case(
            "packet 40 of 40",
            BASE,
            Counted("198.51.100.1", 1, 39),
            udp("198.51.100.1", 5060),
            Passed,
        ),
        case(
            "packet 41 of 40",
            BASE,
            Counted("198.51.100.1", 1, 40),
            udp("198.51.100.1", 5060),
            RateLimited,
        ),
        case(
            "packet 121 of 120",
            BASE,
            Counted("198.51.100.1", 0, 120),
            udp("198.51.100.1", 5060),
            RateLimited,
        ),
        case(
            "rules are per port",
            BASE,
            Counted("198.51.100.1", 1, 40),
            tcp("198.51.100.1", 5060, true),
            Passed,
        ),
        case(
            "v6 counted per /64",
            BASE,
            Counted("2001:db8:c::1", 1, 40),
            udp("2001:db8:c::2", 5060),
            RateLimited,
        ),
        case(
            "syn counts",
            SSH_SYN,
            Counted("198.51.100.1", 0, 5),
            tcp("198.51.100.1", 22, true),
            RateLimited,
        ),
        case(
            "non-syn does not",
            SSH_SYN,
            Counted("198.51.100.1", 0, 5),
            tcp("198.51.100.1", 22, false),
            Passed,
        ),
        case(
            "a rule listed twice on a port counts once",
            DOUBLE_LISTED,
            Counted("198.51.100.1", 0, 9),
            udp("198.51.100.1", 5060),
            Passed,
        ),
        // Learned peers: budget = limit x min(max(users, 1) x 3, 30).
        case(
            "peer: packet 480 of 40 x 4 users x 3",
            PEERS,
            Peer("198.51.100.1", 1, 479, 4, true),
            udp("198.51.100.1", 5060),
            Passed,
        ),
        case(
            "peer: packet 481 of 40 x 4 users x 3",
            PEERS,
            Peer("198.51.100.1", 1, 480, 4, true),
            udp("198.51.100.1", 5060),
            RateLimited,
        ),
        case(
            "peer: packet 1200 at the cap (40 x 30)",
            PEERS,
            Peer("198.51.100.1", 1, 1199, 20, true),
            udp("198.51.100.1", 5060),
            Passed,
        ),
        case(
            "peer: packet 1201 over the cap",
            PEERS,
            Peer("198.51.100.1", 1, 1200, 20, true),
            udp("198.51.100.1", 5060),
            RateLimited,
        ),
        case(
            "peer: 0 users count as 1 (packet 120 of 40 x 3)",
            PEERS,
            Peer("198.51.100.1", 1, 119, 0, true),
            udp("198.51.100.1", 5060),
            Passed,
        ),
        case(
            "peer: 0 users, packet 121",
            PEERS,
            Peer("198.51.100.1", 1, 120, 0, true),
            udp("198.51.100.1", 5060),
            RateLimited,
        ),
        case(
            "peer: expired, packet 41 of 40",
            PEERS,
            Peer("198.51.100.1", 1, 40, 4, false),
            udp("198.51.100.1", 5060),
            RateLimited,
        ),
        case(
            "peer: v6 peer per /64",
            PEERS,
            Peer("2001:db8:c::1", 1, 100, 4, true),
            udp("2001:db8:c::2", 5060),
            Passed,
        ),
        case(
            "peer: the 120-per-60s rule too (packet 361 of 120 x 3)",
            PEERS,
            Peer("198.51.100.1", 0, 360, 1, true),
            udp("198.51.100.1", 5060),
            RateLimited,
        ),
        // A provider's budget is the cap, whatever its users.
        case(
            "provider: packet 1200 at the cap (40 x 30)",
            PEERS,
            Provider("198.51.100.7", 1, 1199),
            udp("198.51.100.7", 5060),
            Passed,
        ),
        case(
            "provider: packet 1201 over the cap",
            PEERS,
            Provider("198.51.100.7", 1, 1200),
            udp("198.51.100.7", 5060),
            RateLimited,
        ),
        case(
            "allow-listed far past any budget",
            PEERS,
            Peer("10.1.2.3", 1, 5000, 1, true),
            udp("10.1.2.3", 5060),
            PassedAllowlisted,
        ),
        // Default policy.
        case(
            "default pass",
            BASE,
            Nothing,
            udp("198.51.100.1", 9999),
            Passed,
        ),
        case(
            "default pass icmp",
            BASE,
            Nothing,
            icmp("198.51.100.1"),
            Passed,
        ),
        case(
            "default drop",
            DROP_ALL,
            Nothing,
            udp("198.51.100.1", 9999),
            DefaultDrop,
        ),
        case(
            "default drop icmp v4",
            DROP_ALL,
            Nothing,
            icmp("198.51.100.1"),
            DefaultDrop,
        ),
        case(
            "default drop icmp v6",
            DROP_ALL,
            Nothing,
            icmp("2001:db8:b::1"),
            DefaultDrop,
        ),
        case(
            "allow all under drop",
            DROP_ALL,
            Nothing,
            udp("10.1.0.5", 9999),
            PassedAllowlisted,
        ),
        case(
            "open service under drop",
            DROP_ALL,
            Nothing,
            udp("198.51.100.1", 5060),
            Passed,
        ),
        case(
            "denied icmp v6",
            BASE,
            Nothing,
            icmp("2001:db8:bad::7"),
            Denied,
        ),
        // Monitor mode: the reason is the same, nothing drops.
        case(
            "monitor: denied",
            MONITOR,
            Nothing,
            udp("203.0.113.9", 5060),
            Denied,
        ),
        case(
            "monitor: not trusted",
            MONITOR,
            Nothing,
            tcp("198.51.100.1", 443, true),
            NotTrusted,
        ),
        case(
            "monitor: default drop",
            MONITOR,
            Nothing,
            udp("198.51.100.1", 9999),
            DefaultDrop,
        ),
        case(
            "monitor: banned",
            MONITOR,
            Ban("198.51.100.7", true),
            udp("198.51.100.7", 5060),
            Banned,
        ),
        case(
            "monitor: limited",
            MONITOR,
            Counted("198.51.100.1", 1, 40),
            udp("198.51.100.1", 5060),
            RateLimited,
        ),
    ]
}

fn key_of(text: &str, prefix: u8) -> SourceKey {
    ip_address(ip(text)).source_key(prefix)
}

/// The case's kernel state, at `now`.
fn state_of(before: Before, policy: &CompiledPolicy, now: u64) -> MemoryState {
    let prefix = policy.settings.ipv6_ban_prefix;
    let mut state = MemoryState::default();
    match before {
        Before::Nothing => {}
        Before::Ban(source, active) => {
            let ban = BanEntry {
                expires_ns: if active { now + HOUR } else { now - SEC },
                created_ns: now - 2 * SEC,
                reason: BanReason::Manual as u16,
                rule: NO_RULE,
                ..BanEntry::default()
            };
            state.bans.insert(key_of(source, prefix), ban);
        }
        Before::Counted(source, rule, count) => {
            count_into(&mut state, policy, key_of(source, prefix), rule, count, now);
        }
        Before::Peer(source, rule, count, users, active) => {
            let key = key_of(source, prefix);
            count_into(&mut state, policy, key, rule, count, now);
            let peer = PeerEntry {
                expires_ns: if active { now + HOUR } else { now - SEC },
                live_users: users,
                kind: PeerKind::Registered as u16,
                _pad: 0,
            };
            state.peers.insert(key, peer);
        }
        Before::Provider(source, rule, count) => {
            let key = key_of(source, prefix);
            count_into(&mut state, policy, key, rule, count, now);
            let peer = PeerEntry {
                expires_ns: now + HOUR,
                live_users: 0,
                kind: PeerKind::Provider as u16,
                _pad: 0,
            };
            state.peers.insert(key, peer);
        }
        Before::InFleet(net) => state.fleet.push(net.parse().expect("test network")),
        Before::PeerInFleet(net, source, active) => {
            state.fleet.push(net.parse().expect("test network"));
            let peer = PeerEntry {
                expires_ns: if active { now + HOUR } else { now - SEC },
                live_users: 1,
                kind: PeerKind::Registered as u16,
                _pad: 0,
            };
            state.peers.insert(key_of(source, prefix), peer);
        }
    }
    state
}

/// `count` packets of `source` in rule `rule`'s window, all in the current slot.
fn count_into(
    state: &mut MemoryState,
    policy: &CompiledPolicy,
    source: SourceKey,
    rule: u32,
    count: u64,
    now: u64,
) {
    let slot_ns = policy.rules[rule as usize].slot_ns;
    let mut window = first_packet(now, slot_ns);
    for slot in window.slots.iter_mut() {
        if *slot != 0 {
            *slot += count - 1;
        }
    }
    let key = RateKey {
        source,
        group: rate_group(rule),
    };
    let entry = state.windows.entry(key).or_default();
    entry.windows[rate_lane(rule)] = window;
}

fn expected_action(expected: Reason, policy: &CompiledPolicy) -> u32 {
    if expected.drops() && policy.settings.monitor == 0 {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// One table case (name, kernel state before, expected reason) in the
/// kernel: the state loaded, the host's judgement of it (`judge`, with the
/// kernel's settings and clock), then `frame` through the program. What
/// disagrees with the table, if anything: the kernel's action or counter,
/// or the host's reason.
fn kernel_case<E: std::fmt::Debug>(
    h: &mut Harness,
    policy: &CompiledPolicy,
    (name, before, expected): (&str, Before, Reason),
    frame: &[u8],
    judge: impl FnOnce(Settings, &Harness, u64) -> Result<Judgement, E>,
) -> Option<String> {
    clear_kernel_state(h);
    let now = monotonic_ns();
    load_kernel_state(h, &state_of(before, policy, now));
    let settings = h.guard.maps().settings().expect("SETTINGS");
    let host = judge(settings, h, now).expect("reading the kernel's state");
    let service = host.verdict.class.service;
    let counted = h.guard.maps().verdicts_by_service().expect("VERDICTS");
    let kernel = kernel_run_frame(h, frame, expected, service);
    let agree = kernel.counted_as_expected
        && kernel.action == expected_action(expected, policy)
        && host.verdict.reason == expected;
    (!agree).then(|| {
        format!(
            "{name}: kernel counted {:?} and returned {}; host says {:?}; table says {expected:?}",
            last_counted(h, &counted),
            kernel.action,
            host.verdict.reason,
        )
    })
}

#[test]
fn verdict_table_on_the_host() {
    let now = monotonic_ns();
    let mut failures = Vec::new();
    for case in table() {
        let config = Config::parse(case.config, "table").expect("table config");
        let policy = CompiledPolicy::compile(&config);
        let state = state_of(case.before, &policy, now);
        let judged = match host_judge(&policy, policy.settings, &state, now, &case.packet) {
            Ok(judged) => judged,
            Err(never) => match never {},
        };
        if judged.verdict.reason != case.expected
            || action(&judged) != expected_action(case.expected, &policy)
        {
            failures.push(format!(
                "{}: host says {:?} (drops: {}), table says {:?}",
                case.name,
                judged.verdict.reason,
                judged.verdict.drops(),
                case.expected
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn verdict_table_in_the_kernel() {
    let cases = table();
    let mut failures = Vec::new();
    let mut configs: Vec<&str> = cases.iter().map(|c| c.config).collect();
    configs.dedup();
    configs.sort_unstable();
    configs.dedup();
    for config in configs {
        let mut h = Harness::new(config);
        let policy = h.policy.clone();
        for case in cases.iter().filter(|c| c.config == config) {
            let judge = |settings, h: &Harness, now| {
                host_judge(&policy, settings, h.guard.maps(), now, &case.packet)
            };
            let frame = frame_of(&case.packet);
            let case = (case.name, case.before, case.expected);
            failures.extend(kernel_case(&mut h, &policy, case, &frame, judge));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---- SIP rules: packets carrying a SIP request, read by the kernel's
// reader and, on the host, by the same reader over the same bytes.

/// BASE with an extension rule and dial rules (BASE's SIP rate rules,
/// allow and deny lists still apply).
const SIP_RULES: &str = r#"
[services.web]
access = "trusted"
[[allow]]
cidr = "10.1.0.0/16"
services = ["sip", "web"]
[[deny]]
cidr = "203.0.113.0/24"
[[extension_rules]]
users = ["6010", "2xx"]
permit = ["172.16.5.0/24", "2001:db8:a::/48"]
[[dial_rules]]
prefixes = ["00", "+"]
permit = ["172.16.5.0/24", "peers"]
ban = "1h"
[[dial_rules]]
prefixes = ["0900"]
"#;

struct SipCase {
    name: &'static str,
    before: Before,
    source: &'static str,
    /// TCP (a first segment) instead of UDP.
    tcp: bool,
    payload: String,
    expected: Reason,
}

fn sip_register(user: &str) -> String {
    format!(
        "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
To: <sip:{user}@pbx>\r\nFrom: <sip:{user}@pbx>;tag=1\r\nCall-ID: 1\r\nCSeq: 1 REGISTER\r\n\r\n"
    )
}

fn sip_invite(number: &str) -> String {
    format!(
        "INVITE sip:{number}@pbx SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
To: <sip:{number}@pbx>\r\nFrom: <sip:1001@pbx>;tag=1\r\nCall-ID: 1\r\nCSeq: 1 INVITE\r\n\r\n"
    )
}

fn sip_table() -> Vec<SipCase> {
    use Before::*;
    use Reason::*;
    let c = |name, before, source, tcp, payload: String, expected| SipCase {
        name,
        before,
        source,
        tcp,
        payload,
        expected,
    };
    vec![
        c(
            "restricted user from outside",
            Nothing,
            "198.51.100.1",
            false,
            sip_register("6010"),
            ExtensionDenied,
        ),
        c(
            "restricted user from its network",
            Nothing,
            "172.16.5.1",
            false,
            sip_register("6010"),
            Passed,
        ),
        c(
            "a 2xx user from outside, IPv6",
            Nothing,
            "2001:db8:b::1",
            false,
            sip_register("250"),
            ExtensionDenied,
        ),
        c(
            "a 2xx user from its network, IPv6",
            Nothing,
            "2001:db8:a::1",
            false,
            sip_register("250"),
            Passed,
        ),
        c(
            "another user",
            Nothing,
            "198.51.100.2",
            false,
            sip_register("1001"),
            Passed,
        ),
        c(
            "TCP first segment",
            Nothing,
            "198.51.100.3",
            true,
            sip_register("6010"),
            ExtensionDenied,
        ),
        c(
            "allow-listed",
            Nothing,
            "10.1.2.3",
            false,
            sip_register("6010"),
            PassedAllowlisted,
        ),
        c(
            "banned first",
            Ban("198.51.100.4", true),
            "198.51.100.4",
            false,
            sip_register("6010"),
            Banned,
        ),
        c(
            "denied first",
            Nothing,
            "203.0.113.9",
            false,
            sip_register("6010"),
            Denied,
        ),
        c(
            "the rate rules after the SIP rules",
            Counted("198.51.100.5", 1, 40),
            "198.51.100.5",
            false,
            sip_register("6010"),
            ExtensionDenied,
        ),
        c(
            "a permitted user over a rate rule",
            Counted("172.16.5.2", 1, 40),
            "172.16.5.2",
            false,
            sip_register("6010"),
            RateLimited,
        ),
        c(
            "international from outside",
            Nothing,
            "198.51.100.6",
            false,
            sip_invite("0044123"),
            DialDenied,
        ),
        c(
            "international from the office",
            Nothing,
            "172.16.5.3",
            false,
            sip_invite("+44123"),
            Passed,
        ),
        c(
            "international from a learned peer",
            Peer("198.51.100.7", 0, 1, 2, true),
            "198.51.100.7",
            false,
            sip_invite("0044123"),
            Passed,
        ),
        c(
            "international from an expired peer",
            Peer("198.51.100.8", 0, 1, 2, false),
            "198.51.100.8",
            false,
            sip_invite("0044123"),
            DialDenied,
        ),
        c(
            "premium from the office",
            Nothing,
            "172.16.5.4",
            false,
            sip_invite("0900123"),
            DialDenied,
        ),
        c(
            "a local call",
            Nothing,
            "198.51.100.9",
            false,
            sip_invite("1002"),
            Passed,
        ),
        c(
            "not SIP",
            Nothing,
            "198.51.100.10",
            false,
            "x".to_string(),
            Passed,
        ),
    ]
}

fn sip_packet(case: &SipCase) -> Packet {
    let source = ip_address(ip(case.source));
    let transport = if case.tcp {
        Transport::Tcp {
            sport: 40000,
            dport: 5060,
            syn: false,
            payload: (),
        }
    } else {
        Transport::Udp {
            sport: 40000,
            dport: 5060,
            payload: (),
        }
    };
    Packet { source, transport }
}

fn sip_frame(case: &SipCase) -> Vec<u8> {
    use sipguard_tests::frames;
    let dst = if case.source.contains(':') {
        frames::PBX6
    } else {
        frames::PBX4
    };
    if case.tcp {
        let mut frame = frames::tcp(case.source, dst, 5060, false, true);
        frame.extend_from_slice(case.payload.as_bytes());
        let ip_header = if case.source.contains(':') { 4 } else { 2 };
        let len = if case.source.contains(':') {
            (frame.len() - frames::ETH_LEN - 40) as u16
        } else {
            (frame.len() - frames::ETH_LEN) as u16
        };
        frame[frames::ETH_LEN + ip_header..frames::ETH_LEN + ip_header + 2]
            .copy_from_slice(&len.to_be_bytes());
        frame
    } else {
        frames::udp(case.source, dst, 5060, case.payload.as_bytes())
    }
}

#[test]
fn sip_rules_table_on_the_host() {
    let now = monotonic_ns();
    let policy = CompiledPolicy::compile(&Config::parse(SIP_RULES, "table").expect("config"));
    let mut failures = Vec::new();
    for case in sip_table() {
        let state = state_of(case.before, &policy, now);
        let judged = match host_judge_sip(
            &policy,
            policy.settings,
            &state,
            now,
            &sip_packet(&case),
            case.payload.as_bytes(),
        ) {
            Ok(judged) => judged,
            Err(never) => match never {},
        };
        if judged.verdict.reason != case.expected {
            failures.push(format!(
                "{}: host says {:?}, table says {:?}",
                case.name, judged.verdict.reason, case.expected
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn sip_rules_table_in_the_kernel() {
    let mut h = Harness::new(SIP_RULES);
    let policy = h.policy.clone();
    let mut failures = Vec::new();
    for case in sip_table() {
        let packet = sip_packet(&case);
        let judge = |settings, h: &Harness, now| {
            let payload = case.payload.as_bytes();
            host_judge_sip(&policy, settings, h.guard.maps(), now, &packet, payload)
        };
        let frame = sip_frame(&case);
        let table = (case.name, case.before, case.expected);
        failures.extend(kernel_case(&mut h, &policy, table, &frame, judge));
        let banned = h.guard.maps().ban(&key_of(case.source, 64)).expect("BANS");
        let dial_ban =
            case.expected == Reason::DialDenied && case.name.starts_with("international");
        if dial_ban != banned.is_some_and(|b| b.reason == BanReason::DialDenied as u16) {
            failures.push(format!("{}: dial ban {:?}", case.name, banned));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---- The property test: random policies and packets, host against kernel.

/// Packets per world (random policy); CI's run is [`CI_PACKETS`] packets,
/// 25 worlds. A world costs one policy switch; a packet a handful of syscalls.
const PACKETS_PER_WORLD: usize = 4000;
const CI_PACKETS: u64 = 100_000;
/// The packets to compare, for a long run: `SIPGUARD_VERDICT_PACKETS=1000000
/// cargo xtask test --test verdict_table host_and_kernel` (250 worlds).
const PACKETS_VAR: &str = "SIPGUARD_VERDICT_PACKETS";

/// The packets asked for (at least CI's), and the worlds that take them.
fn reach() -> (u64, u32) {
    let packets = match std::env::var(PACKETS_VAR) {
        Ok(text) => text
            .trim()
            .replace('_', "")
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("{PACKETS_VAR}={text:?}: {e}")),
        Err(_) => CI_PACKETS,
    }
    .max(CI_PACKETS);
    let worlds = packets.div_ceil(PACKETS_PER_WORLD as u64);
    let worlds = u32::try_from(worlds).unwrap_or_else(|_| panic!("{PACKETS_VAR}: too many"));
    (packets, worlds)
}

/// Few ports, sources and networks, so that lists, services and rules
/// overlap often and rate limits (1..=5 packets) are reached.
const PORTS: [u16; 6] = [22, 80, 443, 5060, 10000, 40000];
const SOURCES: [&str; 9] = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.1.1",
    "10.1.0.1",
    "192.0.2.77",
    "2001:db8::1",
    "2001:db8::2",
    "2001:db8:0:1::1",
    "2001:db8:1::1",
];
const NETS: [&str; 12] = [
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.0.0.0/24",
    "10.0.0.1/32",
    "10.0.1.0/24",
    "10.1.0.0/16",
    "::/0",
    "2001:db8::/32",
    "2001:db8::/64",
    "2001:db8::1/128",
    "2001:db8:0:1::/64",
    "2001:db8:1::/48",
];

#[derive(Debug, Clone)]
struct World {
    policy: CompiledPolicy,
    /// Sources banned before the first packet: (index into SOURCES, in force).
    bans: Vec<(usize, bool)>,
    /// Learned peers: (index into SOURCES, live users, unexpired).
    peers: Vec<(usize, u32, bool)>,
    /// The fleet deny set (indexes into NETS).
    fleet: Vec<usize>,
    packets: Vec<Packet>,
}

fn packet_strategy() -> impl Strategy<Value = Packet> {
    (0..SOURCES.len(), 0u8..4, 0..PORTS.len(), any::<bool>()).prop_map(
        |(source, kind, port, syn)| {
            let source = ip_address(ip(SOURCES[source]));
            let dport = PORTS[port];
            let transport = match kind {
                0 => Transport::Udp {
                    sport: 40000,
                    dport,
                    payload: (),
                },
                1 => Transport::Tcp {
                    sport: 40000,
                    dport,
                    syn,
                    payload: (),
                },
                2 if syn => Transport::LaterFragment,
                _ => Transport::Other,
            };
            Packet { source, transport }
        },
    )
}

fn mask_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        Just(ALLOW_ALL),
        Just(UNCLASSIFIED_BIT),
        (1u8..=5).prop_map(service_bit),
    ]
}

/// (service id, 0 for none; raw rule numbers) for every (protocol, port).
type PortPlan = Vec<(u8, Vec<u8>)>;

fn world_strategy() -> impl Strategy<Value = World> {
    let settings = (
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(64u8), Just(128u8), 1u8..=128],
        (0u16..=3, 0u16..=8),
    );
    let services = prop::collection::vec(0u8..3, 1..=4);
    let rules = prop::collection::vec((1u32..=5, any::<bool>()), 0..=4);
    let ports: BoxedStrategy<PortPlan> = prop::collection::vec(
        (0u8..=5, prop::collection::vec(0u8..=5, 0..=4)),
        PORTS.len() * 2,
    )
    .boxed();
    let allow = prop::collection::vec((0..NETS.len(), mask_strategy()), 0..=4);
    let deny = prop::collection::vec(0..NETS.len(), 0..=2);
    let bans = prop::collection::vec((0..SOURCES.len(), any::<bool>()), 0..=2);
    let peers = prop::collection::vec((0..SOURCES.len(), 0u32..=3, any::<bool>()), 0..=3);
    let fleet = prop::collection::vec(0..NETS.len(), 0..=2);
    let packets = prop::collection::vec(packet_strategy(), PACKETS_PER_WORLD);
    (
        settings,
        services,
        rules,
        ports,
        allow,
        (deny, fleet),
        (bans, peers),
        packets,
    )
        .prop_map(
            |(
                (drop, monitor, prefix, (factor, cap)),
                services,
                rules,
                ports,
                allow,
                (deny, fleet),
                (bans, peers),
                packets,
            )| {
                let mut policy = build_policy(
                    drop, monitor, prefix, &services, &rules, &ports, &allow, &deny,
                );
                policy.settings.peer_factor = factor;
                policy.settings.peer_max_multiplier = cap;
                World {
                    policy,
                    bans,
                    peers,
                    fleet,
                    packets,
                }
            },
        )
}

/// A compiled policy as the kernel maps hold it. Port plans may name
/// services and rules the policy lacks: the map slots are zeroed there,
/// and both sides must read them the same way.
#[allow(clippy::too_many_arguments)]
fn build_policy(
    drop: bool,
    monitor: bool,
    prefix: u8,
    services: &[u8],
    rules: &[(u32, bool)],
    ports: &PortPlan,
    allow: &[(usize, u32)],
    deny: &[usize],
) -> CompiledPolicy {
    let access = |mode: u8| match mode {
        0 => AccessMode::Open,
        1 => AccessMode::Trusted,
        _ => AccessMode::Closed,
    };
    let mut port_classes = Vec::new();
    for (i, (service, rule_numbers)) in ports.iter().enumerate() {
        let proto = if i % 2 == 0 {
            L4Proto::Tcp
        } else {
            L4Proto::Udp
        };
        let mut class = PortClass {
            service: *service,
            ..PortClass::UNCLASSIFIED
        };
        for rule in rule_numbers {
            class.add_rule(*rule);
        }
        if class != PortClass::UNCLASSIFIED {
            let index = guard_common::port_index(proto, PORTS[i / 2]);
            port_classes.push((index, class));
        }
    }
    port_classes.sort_by_key(|(index, _)| *index);
    let mut allow_entries: Vec<(IpNet, u32)> = Vec::new();
    for (net, mask) in allow {
        let net: IpNet = NETS[*net].parse().expect("pool network");
        if !allow_entries.iter().any(|(n, _)| *n == net) {
            allow_entries.push((net, *mask));
        }
    }
    let mut deny_entries: Vec<IpNet> = Vec::new();
    for net in deny {
        let net: IpNet = NETS[*net].parse().expect("pool network");
        if !deny_entries.contains(&net) {
            deny_entries.push(net);
        }
    }
    CompiledPolicy {
        settings: Settings {
            default_policy: if drop {
                DefaultPolicy::Drop
            } else {
                DefaultPolicy::Pass
            } as u8,
            monitor: monitor as u8,
            ipv6_ban_prefix: prefix,
            ..Settings::default()
        },
        service_names: (1..=services.len()).map(|i| format!("s{i}")).collect(),
        services: services
            .iter()
            .enumerate()
            .map(|(i, mode)| {
                let access = access(*mode) as u8;
                (i as u8 + 1, ServicePolicy { access })
            })
            .collect(),
        ports: port_classes,
        rule_names: (0..rules.len()).map(|i| format!("r{i}")).collect(),
        rules: rules
            .iter()
            .map(|(limit, syn_only)| RateRule {
                limit: *limit,
                flags: if *syn_only { RULE_SYN_ONLY } else { 0 },
                slot_ns: slot_width_ns(HOUR),
                ban_ns: HOUR,
                ..RateRule::default()
            })
            .collect(),
        allow: allow_entries,
        deny: deny_entries,
        // No fingerprints: the host judge has no packet to read.
        scanners: Default::default(),
        scanner_names: Vec::new(),
        sip_rules: Default::default(),
    }
}

/// Switches the kernel to the world's policy and bans; clears the rest.
fn enter(h: &mut Harness, world: &World) {
    clear_kernel_state(h);
    h.guard
        .maps_mut()
        .sync_policy(&world.policy)
        .expect("writing the policy");
    let now = monotonic_ns();
    let mut state = MemoryState::default();
    for (source, active) in &world.bans {
        let ban = BanEntry {
            expires_ns: if *active { now + HOUR } else { now - SEC },
            created_ns: now - 2 * SEC,
            reason: BanReason::Manual as u16,
            rule: NO_RULE,
            ..BanEntry::default()
        };
        let key = key_of(SOURCES[*source], world.policy.settings.ipv6_ban_prefix);
        state.bans.insert(key, ban);
    }
    for (source, users, active) in &world.peers {
        let peer = PeerEntry {
            expires_ns: if *active { now + HOUR } else { now - SEC },
            live_users: *users,
            kind: PeerKind::Registered as u16,
            _pad: 0,
        };
        let key = key_of(SOURCES[*source], world.policy.settings.ipv6_ban_prefix);
        state.peers.insert(key, peer);
    }
    for net in &world.fleet {
        let net: IpNet = NETS[*net].parse().expect("pool network");
        if !state.fleet.contains(&net) {
            state.fleet.push(net);
        }
    }
    load_kernel_state(h, &state);
}

fn describe(packet: &Packet) -> String {
    let source = match packet.source {
        Address::V4(a) => IpAddr::from(a),
        Address::V6(a) => IpAddr::from(a),
    };
    format!("{source} {:?}", packet.transport)
}

/// Runs a world's packets in order through both sides, tallying the
/// reasons agreed on (indexed like `Reason::ALL`); or the first disagreement.
fn compare(
    h: &mut Harness,
    world: &World,
    tally: &mut [u64; Reason::COUNT],
) -> Result<(), TestCaseError> {
    enter(h, world);
    let settings = h.guard.maps().settings().expect("SETTINGS");
    for (compared, packet) in world.packets.iter().enumerate() {
        let now = monotonic_ns();
        let host = host_judge(&world.policy, settings, h.guard.maps(), now, packet)
            .map_err(|e| TestCaseError::fail(format!("reading the kernel's state: {e}")))?;
        let reason = host.verdict.reason;
        let service = host.verdict.class.service;
        let kernel = kernel_run(h, packet, reason, service);
        if !kernel.counted_as_expected || kernel.action != action(&host) {
            return Err(TestCaseError::fail(format!(
                "packet {compared} ({}): host says {reason:?} for service {service} \
                 (action {}), kernel returned {} and counted {}",
                describe(packet),
                action(&host),
                kernel.action,
                if kernel.counted_as_expected {
                    "the same"
                } else {
                    "something else"
                },
            )));
        }
        tally[reason as usize] += 1;
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn host_and_kernel_agree_on_random_policies() {
    let (packets, worlds) = reach();
    let started = std::time::Instant::now();
    let harness = RefCell::new(Harness::new(""));
    let tally = RefCell::new([0u64; Reason::COUNT]);
    let mut runner = TestRunner::new(RunnerConfig {
        cases: worlds,
        failure_persistence: None,
        // Shrinking re-runs worlds; a few steps make the failure readable.
        max_shrink_iters: 64,
        ..RunnerConfig::default()
    });
    let result = runner.run(&world_strategy(), |world| {
        compare(&mut harness.borrow_mut(), &world, &mut tally.borrow_mut())
    });
    if let Err(failure) = result {
        panic!("host and kernel disagree: {failure}");
    }
    let tally = tally.into_inner();
    let compared: u64 = tally.iter().sum();
    let by_reason: Vec<String> = Reason::ALL
        .iter()
        .map(|r| format!("{} {}", r.name(), tally[*r as usize]))
        .collect();
    // The time is for the record (FUZZING.md), not asserted.
    eprintln!(
        "host and kernel agree on {compared} packets in {worlds} random policies \
         ({:.0} s): {}",
        started.elapsed().as_secs_f64(),
        by_reason.join(", ")
    );
    assert!(
        compared >= packets,
        "only {compared} of {packets} packets compared: the test lost its reach"
    );
    // Every reason a policy decides must come up, or the test lost its reach.
    // (Scanner and the SIP rules need a SIP request read in the kernel, which
    // the random packets do not carry: the SIP table below, tests/scanners.rs
    // and tests/siprules.rs cover them.)
    let sip = [Reason::Scanner, Reason::ExtensionDenied, Reason::DialDenied];
    for reason in Reason::ALL {
        if reason != Reason::Malformed && !sip.contains(&reason) {
            assert!(
                tally[reason as usize] > 0,
                "no packet was {}",
                reason.name()
            );
        }
    }
}
