//! Scanner fingerprints read in the kernel (issue 12): crafted SIP requests
//! through the real XDP program with BPF_PROG_TEST_RUN, asserting the
//! action, the verdict counters, the ban map and the ban events. Every
//! header form the reader handles, the copy's 2 KiB boundary, IPv6, VLAN
//! and TCP, the allow list, and a pattern change at run time. Needs root.
use guard_common::{sip_scan::ScanStatus, BanReason, Reason, NO_RULE};
use guard_userspace::policy::{compile::CompiledPolicy, config::Config};
use sipguard_tests::{frames::*, Harness, XDP_DROP, XDP_PASS};

const PBX4: &str = "192.0.2.1";
const PBX6: &str = "2001:db8:ffff::1";

/// The built-in fingerprints, an allow-listed office, no rate rules (so
/// that nothing but the reader decides).
const POLICY: &str = r#"
rate_rules = []
[sip_scanners]
enabled = true
[[allow]]
cidr = "10.1.0.0/16"
services = ["sip"]
"#;

/// What sipvicious' svmap 0.3.8 sends by default (rendered by its own
/// makeRequest; see /work/shared/notes/research/scanners.md).
const SVMAP: &str = "OPTIONS sip:100@192.0.2.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.5:5060;branch=z9hG4bK-3280387012;rport\r\n\
Max-Forwards: 70\r\n\
To: \"sipvicious\"<sip:100@1.1.1.1>\r\n\
From: \"sipvicious\"<sip:100@1.1.1.1>;tag=63303030303230613133633401353737303930303337\r\n\
User-Agent: friendly-scanner\r\n\
Call-ID: 969890095556717129979978\r\n\
Contact: sip:100@198.51.100.5:5060\r\n\
CSeq: 1 OPTIONS\r\n\
Accept: application/sdp\r\n\
Content-Length: 0\r\n\r\n";

/// svmap -c: compact headers and no User-Agent; caught by the display name.
const SVMAP_COMPACT: &str = "OPTIONS sip:100@192.0.2.1 SIP/2.0\r\n\
v: SIP/2.0/UDP 198.51.100.5:5060;branch=z9hG4bK-1;rport\r\n\
t: \"sipvicious\"<sip:100@1.1.1.1>\r\n\
f: \"sipvicious\"<sip:100@1.1.1.1>;tag=6330\r\n\
i: 96989009\r\n\
m: sip:100@198.51.100.5:5060\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n";

/// A REGISTER from `agent_lines` (User-Agent header lines, may be empty)
/// after `pad` bytes of an X-Pad header.
fn register(agent_lines: &str, pad: usize) -> String {
    let padding = if pad > 0 {
        format!("X-Pad: {}\r\n", "p".repeat(pad))
    } else {
        String::new()
    };
    format!(
        "REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: <sip:1001@pbx.example.com>\r\n\
From: <sip:1001@pbx.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@198.51.100.9\r\n\
CSeq: 1 REGISTER\r\n\
{padding}{agent_lines}\
Contact: <sip:1001@198.51.100.9:5060>\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n"
    )
}

fn scans(h: &Harness, status: ScanStatus) -> u64 {
    h.guard.maps().sip_scans().expect("reading SIP_SCANS")[status as usize].1
}

/// One request from a fresh source: the action, and whether it was read as
/// a scanner's (counted under `scanner`, source banned).
struct Case {
    name: &'static str,
    frame: Vec<u8>,
    scanner: bool,
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn header_forms_and_boundaries() {
    let mut h = Harness::new(POLICY);
    let ua = "User-Agent: friendly-scanner\r\n";
    // Where the User-Agent value starts in `register(ua, pad)`'s payload,
    // so a pad can put it past 1 KiB, past 2 KiB, or across the boundary.
    let value_at = |pad: usize| register(ua, pad).find("friendly-scanner").expect("in it");
    let pad_to = |offset: usize| offset - value_at(0) - "X-Pad: \r\n".len();
    let across = pad_to(2048 - 8); // "friendly" inside the copy, "-scanner" outside
    let past_2k = pad_to(2048 + 10);
    let past_1k = pad_to(1100);
    assert_eq!(value_at(across), 2048 - 8);
    let mut n = 0;
    let mut src = || {
        n += 1;
        format!("198.51.100.{n}")
    };
    let cases = [
        Case {
            name: "svmap default",
            frame: udp(&src(), PBX4, 5060, SVMAP.as_bytes()),
            scanner: true,
        },
        Case {
            name: "svmap compact (no User-Agent)",
            frame: udp(&src(), PBX4, 5060, SVMAP_COMPACT.as_bytes()),
            scanner: true,
        },
        Case {
            name: "lower-case name, upper-case value",
            frame: udp(
                &src(),
                PBX4,
                5060,
                register("user-agent: FRIENDLY-SCANNER/1.0\r\n", 0).as_bytes(),
            ),
            scanner: true,
        },
        Case {
            name: "value on a folded line",
            frame: udp(
                &src(),
                PBX4,
                5060,
                register("User-Agent:\r\n  friendly-scanner\r\n", 0).as_bytes(),
            ),
            scanner: true,
        },
        Case {
            name: "a fold inside the word breaks it",
            frame: udp(
                &src(),
                PBX4,
                5060,
                register("User-Agent: friendly-\r\n scanner\r\n", 0).as_bytes(),
            ),
            scanner: false,
        },
        Case {
            name: "LF-only line ends",
            frame: udp(
                &src(),
                PBX4,
                5060,
                register(ua, 0).replace("\r\n", "\n").as_bytes(),
            ),
            scanner: true,
        },
        Case {
            name: "missing User-Agent",
            frame: udp(&src(), PBX4, 5060, register("", 0).as_bytes()),
            scanner: false,
        },
        Case {
            name: "a phone",
            frame: udp(
                &src(),
                PBX4,
                5060,
                register("User-Agent: Yealink SIP-T46S 66.86.0.15\r\n", 0).as_bytes(),
            ),
            scanner: false,
        },
        Case {
            name: "duplicated, the second one a scanner",
            frame: udp(
                &src(),
                PBX4,
                5060,
                register("User-Agent: Yealink\r\nUser-Agent: sipcli/v1.8\r\n", 0).as_bytes(),
            ),
            scanner: true,
        },
        Case {
            name: "User-Agent past 1 KiB",
            frame: udp(&src(), PBX4, 5060, register(ua, past_1k).as_bytes()),
            scanner: true,
        },
        Case {
            name: "User-Agent past 2 KiB",
            frame: udp(&src(), PBX4, 5060, register(ua, past_2k).as_bytes()),
            scanner: false,
        },
        Case {
            name: "User-Agent cut by the copy",
            frame: udp(&src(), PBX4, 5060, register(ua, across).as_bytes()),
            scanner: false,
        },
        Case {
            name: "only in the body",
            frame: udp(
                &src(),
                PBX4,
                5060,
                format!("{}{ua}", register("", 0)).as_bytes(),
            ),
            scanner: false,
        },
        Case {
            name: "a response is not read",
            frame: udp(
                &src(),
                PBX4,
                5060,
                format!("SIP/2.0 200 OK\r\n{ua}\r\n").as_bytes(),
            ),
            scanner: false,
        },
        Case {
            name: "TCP segment",
            frame: tcp_segment(&src(), PBX4, 5060, SVMAP.as_bytes()),
            scanner: true,
        },
        Case {
            name: "VLAN",
            frame: with_vlan_tags(
                &udp(&src(), PBX4, 5060, SVMAP.as_bytes()),
                &[(TPID_8021Q, 7)],
            ),
            scanner: true,
        },
        Case {
            name: "not a SIP port",
            frame: udp(&src(), PBX4, 5070, SVMAP.as_bytes()),
            scanner: false,
        },
    ];
    let mut expected_scanners = 0;
    for (i, case) in cases.iter().enumerate() {
        let source = format!("198.51.100.{}", i + 1);
        let want = if case.scanner { XDP_DROP } else { XDP_PASS };
        assert_eq!(h.run(&case.frame), want, "{}", case.name);
        expected_scanners += u64::from(case.scanner);
        assert_eq!(
            h.packets(Reason::Scanner),
            expected_scanners,
            "{}",
            case.name
        );
        let ban = h.guard.maps().ban(&ban_key(&source)).expect("reading BANS");
        match ban {
            Some(ban) => {
                assert!(case.scanner, "{}: banned", case.name);
                assert_eq!(ban.reason, BanReason::Scanner as u16, "{}", case.name);
                assert_eq!(ban.rule, NO_RULE, "{}", case.name);
            }
            None => assert!(!case.scanner, "{}: not banned", case.name),
        }
    }
    // The bans were reported with the number of the fingerprint that
    // matched first in the message: svmap's To comes before its User-Agent.
    let events = h.drain_ban_events();
    assert_eq!(events.len() as u64, expected_scanners);
    let name = |number: u16| h.policy.scanner_names[number as usize - 1].clone();
    assert_eq!(name(events[0].rule), "to contains \"sipvicious\"");
    assert_eq!(name(events[1].rule), "to contains \"sipvicious\"");
    assert_eq!(
        name(events[2].rule),
        "user_agent contains \"friendly-scanner\""
    );
    assert_eq!(name(events[5].rule), "user_agent contains \"sipcli\"");
    assert_eq!(scans(&h, ScanStatus::Matched), expected_scanners);
    assert!(scans(&h, ScanStatus::Partial) >= 2, "past 2 KiB and cut");
    assert!(scans(&h, ScanStatus::Unreadable) >= 1, "the response");

    // A banned scanner's next packet, even a clean one, drops as banned.
    assert_eq!(
        h.run(&udp("198.51.100.1", PBX4, 5060, register("", 0).as_bytes())),
        XDP_DROP
    );
    assert_eq!(h.packets(Reason::Banned), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn ipv6_scanners_are_banned_by_prefix() {
    let mut h = Harness::new(POLICY);
    assert_eq!(
        h.run(&udp("2001:db8:5::9", PBX6, 5060, SVMAP.as_bytes())),
        XDP_DROP
    );
    assert!(h.is_banned(&ban_key("2001:db8:5::1")));
    assert_eq!(h.packets(Reason::Scanner), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn allow_listed_sources_are_never_banned_for_a_fingerprint() {
    let mut h = Harness::new(POLICY);
    assert_eq!(
        h.run(&udp("10.1.2.3", PBX4, 5060, SVMAP.as_bytes())),
        XDP_PASS
    );
    assert_eq!(h.packets(Reason::PassedAllowlisted), 1);
    assert_eq!(h.packets(Reason::Scanner), 0);
    assert!(!h.is_banned(&ban_key("10.1.2.3")));
    // With rate rules the allow list answers first: passed, never read.
    let mut h = Harness::new("[sip_scanners]\nenabled = true\n[[allow]]\ncidr = \"10.1.0.0/16\"\n");
    assert_eq!(
        h.run(&udp("10.1.2.3", PBX4, 5060, SVMAP.as_bytes())),
        XDP_PASS
    );
    assert_eq!(h.packets(Reason::PassedAllowlisted), 1);
    assert!(!h.is_banned(&ban_key("10.1.2.3")));
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn scanners_drop_before_the_rate_rules_count_them() {
    // Default rate rules: the first svmap packet drops, as `scanner`.
    let mut h = Harness::new("[sip_scanners]\nenabled = true\n");
    assert_eq!(
        h.run(&udp("198.51.100.70", PBX4, 5060, SVMAP.as_bytes())),
        XDP_DROP
    );
    assert_eq!(h.packets(Reason::Scanner), 1);
    assert_eq!(h.rule_hits(0).counted, 0);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn settings_off_zero_ban_and_monitor() {
    // Off by default.
    let off = "rate_rules = []\n";
    let mut h = Harness::new(off);
    assert_eq!(
        h.run(&udp("198.51.100.80", PBX4, 5060, SVMAP.as_bytes())),
        XDP_PASS
    );
    assert_eq!(h.packets(Reason::Passed), 1);
    assert_eq!(
        scans(&h, ScanStatus::Matched) + scans(&h, ScanStatus::Complete),
        0,
        "not read"
    );

    let no_ban = "rate_rules = []\n[sip_scanners]\nenabled = true\nban = \"0s\"\n";
    let mut h = Harness::new(no_ban);
    assert_eq!(
        h.run(&udp("198.51.100.81", PBX4, 5060, SVMAP.as_bytes())),
        XDP_DROP
    );
    assert!(!h.is_banned(&ban_key("198.51.100.81")));
    assert!(h.drain_ban_events().is_empty());

    let monitor = "rate_rules = []\n[guard]\nmonitor = true\n[sip_scanners]\nenabled = true\n";
    let mut h = Harness::new(monitor);
    assert_eq!(
        h.run(&udp("198.51.100.82", PBX4, 5060, SVMAP.as_bytes())),
        XDP_PASS
    );
    assert_eq!(h.packets(Reason::Scanner), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_pattern_added_at_run_time_applies_to_the_next_packet() {
    let mut h = Harness::new(POLICY);
    let request = register("User-Agent: EvilDialer 2.0\r\n", 0);
    let frame = udp("198.51.100.90", PBX4, 5060, request.as_bytes());
    assert_eq!(h.run(&frame), XDP_PASS);

    let text = format!(
        "{POLICY}\n[[sip_scanners.patterns]]\nfield = \"user_agent\"\nprefix = \"evildialer\"\n"
    );
    let config = Config::parse(&text, "test config").expect("valid");
    let policy = CompiledPolicy::compile(&config);
    h.guard.maps_mut().sync_policy(&policy).expect("switching");
    assert_eq!(h.run(&frame), XDP_DROP);
    assert_eq!(h.packets(Reason::Scanner), 1);
    let events = h.drain_ban_events();
    assert_eq!(events.len(), 1);
    // Numbered after the built-in list.
    let number = events[0].rule as usize;
    assert_eq!(
        policy.scanner_names[number - 1],
        "user_agent prefix \"evildialer\""
    );

    // And taken away again.
    let config = Config::parse(POLICY, "test config").expect("valid");
    h.guard
        .maps_mut()
        .sync_policy(&CompiledPolicy::compile(&config))
        .expect("switching");
    let other = udp("198.51.100.91", PBX4, 5060, request.as_bytes());
    assert_eq!(h.run(&other), XDP_PASS);
}
