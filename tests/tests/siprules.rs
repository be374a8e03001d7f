//! Extension and dial rules read in the kernel (issue 12, items 3 and 4):
//! crafted SIP requests through the real XDP program with
//! BPF_PROG_TEST_RUN, asserting the action, the verdict counters, the ban
//! map, the ban events and the capture that tells the controller. Each
//! header form the reader handles, IPv6, VLAN, a TCP first segment, the
//! allow list, learned peers, monitor mode, and a rule change at run time.
//! Every case is also judged by the controller's side of the shared verdict
//! (`explain`'s), from what the shared reader reads of the same payload:
//! the two must agree. Needs root.
use guard_common::{
    sip_scan::scan,
    verdict::{Packet, Transport},
    BanReason, PeerEntry, PeerKind, Reason, Settings, NO_RULE,
};
use guard_userspace::{
    clock,
    policy::{
        compile::CompiledPolicy,
        config::Config,
        verdict::{ip_address, HostLookup, NoKernelState, SipRequest},
    },
};
use sipguard_tests::{frames::*, verdict_check::host_judge_sip, Harness, XDP_DROP, XDP_PASS};

const PBX4: &str = "192.0.2.1";
const PBX6: &str = "2001:db8:ffff::1";

/// 6010 from the office only; the sales extensions from the company's
/// networks; international calls from the office (and learned peers),
/// premium numbers from nowhere. No rate rules, so that nothing but the
/// SIP rules decides.
const POLICY: &str = r#"
rate_rules = []
[[allow]]
cidr = "10.1.0.0/16"
services = ["sip"]

[[extension_rules]]
name = "6010 office"
users = ["6010"]
permit = ["172.16.5.0/24"]

[[extension_rules]]
name = "sales"
users = ["sales-*", "2xx"]
permit = ["172.16.0.0/16", "2001:db8:a::/48"]

[[dial_rules]]
name = "international"
prefixes = ["00", "+", "011"]
permit = ["172.16.5.0/24", "peers"]
ban = "1h"

[[dial_rules]]
name = "premium"
prefixes = ["0900", "00882"]
"#;

/// A REGISTER with these header lines between Via and Call-ID.
fn register(lines: &str) -> String {
    format!(
        "REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
{lines}\
Call-ID: a84b4c76e66710@198.51.100.9\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:phone@198.51.100.9:5060>\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n"
    )
}

fn register_user(user: &str) -> String {
    register(&format!(
        "To: <sip:{user}@pbx.example.com>\r\nFrom: <sip:{user}@pbx.example.com>;tag=19283\r\n"
    ))
}

/// A request of `method` to `uri` with these header lines.
fn request(method: &str, uri: &str, lines: &str) -> String {
    format!(
        "{method} {uri} SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
{lines}\
Call-ID: 3848276298220188511@198.51.100.9\r\n\
CSeq: 1 {method}\r\n\
Contact: <sip:phone@198.51.100.9:5060>\r\n\
Content-Length: 0\r\n\r\n"
    )
}

fn invite(number: &str, from: &str) -> String {
    request(
        "INVITE",
        &format!("sip:{number}@pbx.example.com"),
        &format!(
            "To: <sip:{number}@pbx.example.com>\r\nFrom: <sip:{from}@pbx.example.com>;tag=1\r\n"
        ),
    )
}

/// What the controller's side of the shared verdict says of `payload`
/// from `source` to UDP 5060, reading the payload with the shared reader
/// and the policy's own table.
fn host_reason(h: &Harness, source: &str, payload: &str) -> Reason {
    let table = h.policy.sip_table().expect("table");
    let summary = scan(payload.as_bytes(), &table);
    let readable = !matches!(
        summary.status,
        guard_common::sip_scan::ScanStatus::Unreadable
    );
    let packet = Packet {
        source: ip_address(ip(source)),
        transport: Transport::Udp {
            sport: 5060,
            dport: 5060,
            payload: (),
        },
    };
    let mut lookup = HostLookup::new(&h.policy, Settings::default(), &NoKernelState, 0);
    if readable {
        lookup = lookup.with_request(SipRequest::read(&summary));
    }
    lookup.judge(&packet).expect("judged").verdict.reason
}

struct Case {
    name: &'static str,
    source: &'static str,
    payload: String,
    want: Reason,
}

fn case(name: &'static str, source: &'static str, payload: String, want: Reason) -> Case {
    Case {
        name,
        source,
        payload,
        want,
    }
}

/// Runs each case's request over UDP: the action its reason calls for,
/// counted under that reason, and the controller's side of the shared
/// verdict agreeing.
fn run_cases(h: &mut Harness, cases: &[Case]) {
    for c in cases {
        let dst = if c.source.contains(':') { PBX6 } else { PBX4 };
        let want = if c.want.drops() { XDP_DROP } else { XDP_PASS };
        let before = h.packets(c.want);
        let frame = udp(c.source, dst, 5060, c.payload.as_bytes());
        assert_eq!(h.run(&frame), want, "{}", c.name);
        assert_eq!(h.packets(c.want), before + 1, "{}: counted", c.name);
        let host = host_reason(h, c.source, &c.payload);
        assert_eq!(host, c.want, "{}: host", c.name);
    }
}

/// `payload` to the PBX's IPv4 address from the first source in a
/// VLAN-tagged datagram and from the second in a TCP segment: the actions.
fn over_vlan_and_tcp(h: &mut Harness, sources: [&str; 2], payload: &str) -> [u32; 2] {
    let vlan = with_vlan_tags(
        &udp(sources[0], PBX4, 5060, payload.as_bytes()),
        &[(TPID_8021Q, 7)],
    );
    let tcp = tcp_segment(sources[1], PBX4, 5060, payload.as_bytes());
    [h.run(&vlan), h.run(&tcp)]
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn extension_rules_header_forms() {
    use Reason::{ExtensionDenied as Denied, Passed, PassedAllowlisted};
    let mut h = Harness::new(POLICY);
    let cases = [
        case("6010 registers from outside", "198.51.100.1", register_user("6010"), Denied),
        case("another user registers from anywhere", "198.51.100.2", register_user("1001"), Passed),
        case("6010 from the office", "172.16.5.9", register_user("6010"), Passed),
        case("6010 from sales' network", "172.16.9.9", register_user("6010"), Denied),
        case("201 from sales' network", "172.16.9.9", register_user("201"), Passed),
        case("201 from outside", "198.51.100.3", register_user("201"), Denied),
        case("2011 is no 2xx", "198.51.100.4", register_user("2011"), Passed),
        case("sales-* in another case", "198.51.100.5", register_user("Sales-Bob"), Denied),
        case(
            "compact headers",
            "198.51.100.6",
            register("t: <sip:6010@pbx.example.com>\r\nf: <sip:6010@pbx.example.com>;tag=1\r\n"),
            Denied,
        ),
        case(
            "lower-case names, only To names it",
            "198.51.100.7",
            register("to: <sip:6010@pbx.example.com>\r\nfrom: <sip:1001@pbx.example.com>;tag=1\r\n"),
            Denied,
        ),
        case(
            "To on a folded line",
            "198.51.100.8",
            register("To:\r\n <sip:6010@pbx.example.com>\r\nFrom: <sip:x@pbx.example.com>;tag=1\r\n"),
            Denied,
        ),
        case(
            "only the Authorization username names it",
            "198.51.100.9",
            register(
                "To: <sip:1001@pbx.example.com>\r\nFrom: <sip:1001@pbx.example.com>;tag=1\r\n\
Authorization: Digest username=\"6010\", realm=\"pbx\", nonce=\"abc\", uri=\"sip:pbx\", response=\"00\"\r\n",
            ),
            Denied,
        ),
        case("To and From missing", "198.51.100.10", register(""), Passed),
        case(
            "To duplicated: the first one counts",
            "198.51.100.11",
            register("To: <sip:6010@pbx.example.com>\r\nTo: <sip:1001@pbx.example.com>\r\n"),
            Denied,
        ),
        case(
            "To duplicated, the restricted one second",
            "198.51.100.12",
            register("To: <sip:1001@pbx.example.com>\r\nTo: <sip:6010@pbx.example.com>\r\n"),
            Passed,
        ),
        case(
            "an escaped user",
            "198.51.100.13",
            register("To: <sip:%36010@pbx.example.com>\r\n"),
            Denied,
        ),
        case(
            "a user with a password",
            "198.51.100.14",
            register("To: <sip:1001@pbx.example.com>\r\nFrom: <sip:6010:secret@pbx.example.com>;tag=1\r\n"),
            Denied,
        ),
        case(
            "INVITE from 6010",
            "198.51.100.15",
            invite("1001", "6010"),
            Denied,
        ),
        case(
            "INVITE to 6010 (a remote phone calling it)",
            "198.51.100.16",
            invite("6010", "1001"),
            Passed,
        ),
        case(
            "SUBSCRIBE to 6010's state (BLF)",
            "198.51.100.17",
            request(
                "SUBSCRIBE",
                "sip:6010@pbx.example.com",
                "To: <sip:6010@pbx.example.com>\r\nFrom: <sip:1001@pbx.example.com>;tag=1\r\nEvent: dialog\r\n",
            ),
            Passed,
        ),
        case(
            "SUBSCRIBE from 6010",
            "198.51.100.18",
            request(
                "SUBSCRIBE",
                "sip:1001@pbx.example.com",
                "To: <sip:1001@pbx.example.com>\r\nFrom: <sip:6010@pbx.example.com>;tag=1\r\nEvent: dialog\r\n",
            ),
            Denied,
        ),
        case(
            "OPTIONS is not restricted",
            "198.51.100.19",
            request(
                "OPTIONS",
                "sip:pbx.example.com",
                "To: <sip:6010@pbx.example.com>\r\nFrom: <sip:6010@pbx.example.com>;tag=1\r\n",
            ),
            Passed,
        ),
        case(
            "a response is not read",
            "198.51.100.20",
            "SIP/2.0 200 OK\r\nTo: <sip:6010@pbx.example.com>\r\n\r\n".to_string(),
            Passed,
        ),
        case(
            "To past 2 KiB is not read",
            "198.51.100.21",
            register(&format!(
                "X-Pad: {}\r\nTo: <sip:6010@pbx.example.com>\r\n",
                "p".repeat(2100)
            )),
            Passed,
        ),
        case("allow-listed", "10.1.2.3", register_user("6010"), PassedAllowlisted),
        case("IPv6 from sales' network", "2001:db8:a::5", register_user("201"), Passed),
        case("IPv6 from outside", "2001:db8:b::5", register_user("201"), Denied),
    ];
    run_cases(&mut h, &cases);
    for c in &cases {
        assert!(!h.is_banned(&ban_key(c.source)), "{}: never banned", c.name);
    }
    let denied = cases.iter().filter(|c| c.want == Denied).count() as u64;
    assert_eq!(h.packets(Denied), denied);
    // Each denied request reached the controller, marked with its rule.
    let captures = h.drain_sip_captures();
    let marked: Vec<_> = captures.iter().filter(|(c, _)| c.denied != 0).collect();
    assert_eq!(marked.len() as u64, denied);
    assert!(marked
        .iter()
        .all(|(c, _)| c.denied == Denied as u8 && c.denied_rule <= 1));
    assert_eq!(marked[0].0.denied_rule, 0, "6010's rule");
    assert!(h.drain_ban_events().is_empty());

    // VLAN and a TCP first segment.
    let sources = ["198.51.100.30", "198.51.100.31"];
    let actions = over_vlan_and_tcp(&mut h, sources, &register_user("6010"));
    assert_eq!(actions, [XDP_DROP, XDP_DROP]);
    let frame = tcp_segment(
        "198.51.100.32",
        PBX4,
        5060,
        register_user("1001").as_bytes(),
    );
    assert_eq!(h.run(&frame), XDP_PASS, "TCP, another user");
    assert_eq!(h.packets(Denied), denied + 2);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn dial_rules_drop_count_and_ban() {
    use Reason::{DialDenied as Denied, Passed, PassedAllowlisted};
    let mut h = Harness::new(POLICY);
    let cases = [
        case(
            "00 from outside",
            "198.51.100.40",
            invite("0044201234567", "1001"),
            Denied,
        ),
        case(
            "+ from outside",
            "198.51.100.41",
            invite("+44201234567", "1001"),
            Denied,
        ),
        case(
            "tel URI from outside",
            "198.51.100.42",
            request(
                "INVITE",
                "tel:+44201234567",
                "To: <tel:+44201234567>\r\nFrom: <sip:1001@pbx.example.com>;tag=1\r\n",
            ),
            Denied,
        ),
        case(
            "011 escaped",
            "198.51.100.43",
            invite("%3011441234", "1001"),
            Denied,
        ),
        case(
            "a local call",
            "198.51.100.44",
            invite("1002", "1001"),
            Passed,
        ),
        case(
            "00 from the office",
            "172.16.5.7",
            invite("0044201234567", "1001"),
            Passed,
        ),
        case(
            "premium from the office: the longest prefix decides",
            "172.16.5.8",
            invite("00882123456", "1001"),
            Denied,
        ),
        case(
            "premium 0900 from outside",
            "198.51.100.45",
            invite("0900123", "1001"),
            Denied,
        ),
        case(
            "allow-listed",
            "10.1.2.4",
            invite("0044201234567", "1001"),
            PassedAllowlisted,
        ),
        case(
            "REGISTER to a number is no call",
            "198.51.100.46",
            request(
                "REGISTER",
                "sip:0044@pbx.example.com",
                "To: <sip:1001@pbx.example.com>\r\nFrom: <sip:1001@pbx.example.com>;tag=1\r\n",
            ),
            Passed,
        ),
        case(
            "IPv6 from outside",
            "2001:db8:b::6",
            invite("0033123", "1001"),
            Denied,
        ),
    ];
    run_cases(&mut h, &cases);
    // International bans (for 1h, naming no rate rule); premium does not.
    for source in [
        "198.51.100.40",
        "198.51.100.41",
        "198.51.100.42",
        "198.51.100.43",
    ] {
        let ban = h.guard.maps().ban(&ban_key(source)).expect("reading BANS");
        let ban = ban.unwrap_or_else(|| panic!("{source} banned"));
        assert_eq!(ban.reason, BanReason::DialDenied as u16);
        assert_eq!(ban.rule, NO_RULE);
        assert_eq!(ban.expires_ns - ban.created_ns, 3_600_000_000_000);
    }
    assert!(h.is_banned(&ban_key("2001:db8:b::1")), "IPv6 bans its /64");
    for source in ["172.16.5.8", "198.51.100.45", "198.51.100.44", "172.16.5.7"] {
        assert!(!h.is_banned(&ban_key(source)), "{source}");
    }
    let events = h.drain_ban_events();
    assert_eq!(events.len(), 5);
    assert!(events
        .iter()
        .all(|e| e.reason == BanReason::DialDenied as u16 && e.rule == 0));
    // The controller gets each dropped INVITE, with the rule.
    let captures = h.drain_sip_captures();
    let marked: Vec<_> = captures.iter().filter(|(c, _)| c.denied != 0).collect();
    assert_eq!(marked.len(), 7);
    assert!(marked.iter().all(|(c, _)| c.denied == Denied as u8));
    let premium = marked.iter().filter(|(c, _)| c.denied_rule == 1).count();
    assert_eq!(premium, 2);
    // The banned source's next packet is dropped as banned.
    let next = udp(
        "198.51.100.40",
        PBX4,
        5060,
        invite("1002", "1001").as_bytes(),
    );
    assert_eq!(h.run(&next), XDP_DROP);
    assert_eq!(h.packets(Reason::Banned), 1);

    // VLAN and TCP.
    let sources = ["198.51.100.50", "198.51.100.51"];
    let actions = over_vlan_and_tcp(&mut h, sources, &invite("0044201", "1001"));
    assert_eq!(actions, [XDP_DROP, XDP_DROP]);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn learned_peers_may_dial_where_the_rule_says_so() {
    let mut h = Harness::new(POLICY);
    let peer = "203.0.113.20";
    let entry = PeerEntry {
        expires_ns: clock::monotonic_ns() + 3_600_000_000_000,
        live_users: 3,
        kind: PeerKind::Registered as u16,
        _pad: 0,
    };
    h.guard
        .maps_mut()
        .insert_peer(ban_key(peer), entry)
        .expect("writing PEERS");
    let international = invite("0044201234567", "1001");
    assert_eq!(
        h.run(&udp(peer, PBX4, 5060, international.as_bytes())),
        XDP_PASS
    );
    // The premium rule does not name peers.
    let premium = invite("0900123", "1001");
    assert_eq!(h.run(&udp(peer, PBX4, 5060, premium.as_bytes())), XDP_DROP);
    assert_eq!(h.packets(Reason::DialDenied), 1);
    assert!(!h.is_banned(&ban_key(peer)));
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn monitor_mode_counts_and_passes() {
    let mut h = Harness::new(&format!("{POLICY}\n[guard]\nmonitor = true\n"));
    let frame = udp(
        "198.51.100.60",
        PBX4,
        5060,
        register_user("6010").as_bytes(),
    );
    assert_eq!(h.run(&frame), XDP_PASS);
    assert_eq!(h.packets(Reason::ExtensionDenied), 1);
    let captures = h.drain_sip_captures();
    assert_eq!(captures.len(), 1);
    assert_eq!(captures[0].0.denied, Reason::ExtensionDenied as u8);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn rules_change_at_run_time() {
    let mut h = Harness::new("rate_rules = []\n");
    let frame = udp(
        "198.51.100.70",
        PBX4,
        5060,
        register_user("6010").as_bytes(),
    );
    assert_eq!(h.run(&frame), XDP_PASS);
    let config = Config::parse(POLICY, "test config").expect("valid");
    h.guard
        .maps_mut()
        .sync_policy(&CompiledPolicy::compile(&config))
        .expect("switching");
    assert_eq!(h.run(&frame), XDP_DROP);
    // A rule's network widened: the same source may now.
    let wider = POLICY.replace(
        "permit = [\"172.16.5.0/24\"]",
        "permit = [\"198.51.100.0/24\"]",
    );
    let config = Config::parse(&wider, "test config").expect("valid");
    h.guard
        .maps_mut()
        .sync_policy(&CompiledPolicy::compile(&config))
        .expect("switching");
    assert_eq!(h.run(&frame), XDP_PASS);
    // And back to none.
    let config = Config::parse("rate_rules = []\n", "test config").expect("valid");
    h.guard
        .maps_mut()
        .sync_policy(&CompiledPolicy::compile(&config))
        .expect("switching");
    let dial = udp(
        "198.51.100.71",
        PBX4,
        5060,
        invite("0044201", "1001").as_bytes(),
    );
    assert_eq!(h.run(&dial), XDP_PASS);
    assert_eq!(h.packets(Reason::ExtensionDenied), 1);
    assert_eq!(h.packets(Reason::DialDenied), 0);
}

/// `calls_per_minute`: each permitted source's calls to the rule's prefixes
/// are counted in a sliding minute; the one over the limit is dropped and,
/// with `ban`, bans. The host, reading the kernel's windows, says the same
/// before each call.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn calls_per_minute_limits_each_permitted_source() {
    let policy = r#"
rate_rules = []
[[dial_rules]]
name = "international"
prefixes = ["00"]
permit = ["172.16.5.0/24"]
calls_per_minute = 3
ban = "10m"
"#;
    let mut h = Harness::new(policy);
    let call = invite("0044201234", "1001");
    let judged = |h: &mut Harness, source: &str, payload: &str| {
        let settings = h.guard.maps().settings().expect("SETTINGS");
        let packet = Packet {
            source: ip_address(ip(source)),
            transport: Transport::Udp {
                sport: 5060,
                dport: 5060,
                payload: (),
            },
        };
        let host = host_judge_sip(
            &h.policy,
            settings,
            h.guard.maps(),
            clock::monotonic_ns(),
            &packet,
            payload.as_bytes(),
        )
        .expect("reading the kernel's windows");
        let action = h.run(&udp(source, PBX4, 5060, payload.as_bytes()));
        (host.verdict.reason, action)
    };
    for n in 1..=3 {
        assert_eq!(
            judged(&mut h, "172.16.5.7", &call),
            (Reason::Passed, XDP_PASS),
            "call {n}"
        );
    }
    assert_eq!(
        judged(&mut h, "172.16.5.7", &call),
        (Reason::DialDenied, XDP_DROP),
        "call 4"
    );
    let ban = h
        .guard
        .maps()
        .ban(&ban_key("172.16.5.7"))
        .expect("BANS")
        .expect("banned");
    assert_eq!(ban.reason, BanReason::DialDenied as u16);
    assert_eq!(ban.expires_ns - ban.created_ns, 600_000_000_000);
    // Each source has its own count; local calls are not counted.
    for _ in 0..5 {
        let local = invite("1002", "1001");
        assert_eq!(
            judged(&mut h, "172.16.5.8", &local),
            (Reason::Passed, XDP_PASS)
        );
    }
    assert_eq!(
        judged(&mut h, "172.16.5.8", &call),
        (Reason::Passed, XDP_PASS)
    );
    // Sources the rule does not permit are dropped at their first call.
    assert_eq!(
        judged(&mut h, "198.51.100.80", &call),
        (Reason::DialDenied, XDP_DROP)
    );
    assert_eq!(h.packets(Reason::DialDenied), 2);
}
