//! Verdict tests: crafted frames through the real XDP program with
//! BPF_PROG_TEST_RUN, asserting the action *and* the kernel's counters, ban
//! map and ban events. They need root (`cargo xtask test`).
use guard_common::{
    clock::ClockBase, BanEntry, BanReason, Health, Reason, SourceKey, BAN_FOREVER, NO_RULE,
};
use guard_userspace::{clock::monotonic_ns, kernel::maps::NetList};
use sipguard_tests::{frames::*, Harness, BASE_POLICY, XDP_DROP, XDP_PASS};

const PBX4: &str = "192.0.2.1";
const PBX6: &str = "2001:db8:ffff::1";

fn v4_key(text: &str) -> SourceKey {
    match ip(text) {
        std::net::IpAddr::V4(a) => SourceKey::from_ipv4(a.octets()),
        _ => unreachable!(),
    }
}

fn v6_key(text: &str, prefix: u8) -> SourceKey {
    match ip(text) {
        std::net::IpAddr::V6(a) => SourceKey::from_ipv6(a.octets(), prefix),
        _ => unreachable!(),
    }
}

/// Sends `n` copies; returns how many passed.
fn passes(h: &mut Harness, frame: &[u8], n: usize) -> usize {
    (0..n).filter(|_| h.run(frame) == XDP_PASS).count()
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn non_ip_frames_pass_and_count() {
    let mut h = Harness::new(BASE_POLICY);
    let frame = arp();
    assert_eq!(h.run(&frame), XDP_PASS);
    let c = h.counter(Reason::Passed);
    assert_eq!((c.packets, c.bytes), (1, frame.len() as u64));
    assert_eq!(h.all_packets(), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn icmpv6_neighbour_discovery_passes_even_from_a_denied_source() {
    let mut h = Harness::new(BASE_POLICY);
    for nd_type in 133..=137 {
        assert_eq!(h.run(&icmpv6("2001:db8:bad::7", PBX6, nd_type)), XDP_PASS);
    }
    // An echo request from the same source is judged like anything else.
    assert_eq!(h.run(&icmpv6("2001:db8:bad::7", PBX6, 128)), XDP_DROP);
    assert_eq!(h.packets(Reason::Passed), 5);
    assert_eq!(h.packets(Reason::Denied), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn deny_list_drops_ipv4_and_ipv6() {
    let mut h = Harness::new(BASE_POLICY);
    let frame = udp("203.0.113.99", PBX4, 5060, b"REGISTER");
    assert_eq!(h.run(&frame), XDP_DROP);
    assert_eq!(
        h.run(&tcp("2001:db8:bad:1::1", PBX6, 443, true, false)),
        XDP_DROP
    );
    // Just outside the denied networks.
    assert_eq!(h.run(&udp("203.0.114.1", PBX4, 5060, b"x")), XDP_PASS);
    assert_eq!(h.run(&udp("2001:db8:bae::1", PBX6, 5060, b"x")), XDP_PASS);
    let denied = h.counter(Reason::Denied);
    assert_eq!(denied.packets, 2);
    assert!(denied.bytes >= frame.len() as u64);
    assert_eq!(h.packets(Reason::Passed), 2);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn allow_listed_sources_skip_rate_rules_and_are_never_banned() {
    let mut h = Harness::new(BASE_POLICY);
    let frame = udp("10.1.2.3", PBX4, 5060, b"OPTIONS");
    assert_eq!(passes(&mut h, &frame, 200), 200);
    // Far past the 40-in-2-s rule, and never counted: every packet passed
    // because of the allow list (the kernel searched it once and keeps
    // the answer in its per-CPU source cache).
    assert_eq!(h.packets(Reason::PassedAllowlisted), 200);
    assert_eq!(h.rule_hits(0).counted + h.rule_hits(1).counted, 0);
    assert_eq!(h.rule_hits(0).limited + h.rule_hits(1).limited, 0);
    assert!(!h.is_banned(&v4_key("10.1.2.3")));
    assert!(h.drain_ban_events().is_empty());
    // The IPv6 allow list (searched per packet: the key is the /64) alike.
    let frame = udp("2001:db8:a::9", PBX6, 5060, b"OPTIONS");
    assert_eq!(passes(&mut h, &frame, 50), 50);
    assert_eq!(h.packets(Reason::PassedAllowlisted), 250);
    assert_eq!(h.rule_hits(0).counted + h.rule_hits(1).counted, 0);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_changed_allow_list_is_searched_again() {
    let mut h = Harness::new(BASE_POLICY);
    let frame = udp("10.1.2.3", PBX4, 5060, b"OPTIONS");
    let office: ipnet::IpNet = "10.1.0.0/16".parse().unwrap();
    assert_eq!(h.run(&frame), XDP_PASS);
    assert_eq!(h.packets(Reason::PassedAllowlisted), 1);
    // Removed: the answer cached for the source is stale, and the
    // source is counted like anyone.
    h.guard
        .maps_mut()
        .remove_net(NetList::Allow, office)
        .unwrap();
    assert_eq!(h.run(&frame), XDP_PASS);
    assert_eq!(h.packets(Reason::Passed), 1);
    assert_eq!(h.rule_hits(0).counted, 1);
    // Back: spared again.
    h.guard
        .maps_mut()
        .insert_net(NetList::Allow, office, guard_common::ALLOW_ALL)
        .unwrap();
    assert_eq!(h.run(&frame), XDP_PASS);
    assert_eq!(h.packets(Reason::PassedAllowlisted), 2);
    assert_eq!(h.rule_hits(0).counted, 1);
}

/// An outsider whose allow answer lands in the same per-CPU cache slot as
/// an allow-listed office source: each keeps its own answer.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn sources_sharing_a_source_cache_slot_keep_their_own_answers() {
    let mut h = Harness::new(BASE_POLICY);
    let office = [10, 1, 2, 3];
    let slot = guard_common::source_cache_slot(u32::from_le_bytes(office));
    // 198.18.0.0/15 (benchmarking addresses, not allow-listed) holds
    // 131,072 addresses for 256 slots.
    let outsider = (0..1u32 << 17)
        .map(|i| (u32::from_be_bytes([198, 18, 0, 0]) + i).to_be_bytes())
        .find(|a| guard_common::source_cache_slot(u32::from_le_bytes(*a)) == slot)
        .expect("an address in the office's slot");
    let ip = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_string();
    let office_frame = udp(&ip(office), PBX4, 5060, b"OPTIONS");
    let outsider_frame = udp(&ip(outsider), PBX4, 5060, b"OPTIONS");
    for round in 1..=3 {
        assert_eq!(h.run(&office_frame), XDP_PASS);
        assert_eq!(h.packets(Reason::PassedAllowlisted), round);
        assert_eq!(h.run(&outsider_frame), XDP_PASS);
        assert_eq!(h.packets(Reason::Passed), round, "the outsider is counted");
        assert_eq!(h.rule_hits(0).counted, round);
    }
}

/// Keeps the test on one CPU, so that its packets meet the per-CPU source
/// cache that earlier packets filled (elsewhere they would only miss it).
fn stay_on_one_cpu() {
    // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// A ban of a minute from now, made for `reason`.
fn minute_ban(reason: BanReason) -> BanEntry {
    let now = monotonic_ns();
    BanEntry {
        expires_ns: now + 60_000_000_000,
        created_ns: now,
        dropped: 0,
        reason: reason as u16,
        rule: NO_RULE,
        _pad: 0,
    }
}

/// A source the program found in no drop set is remembered per CPU (the
/// source cache). Every entry the controller makes afterwards in the ban,
/// deny or fleet sets reaches the source's next packet.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_source_cached_as_clear_meets_every_later_ban_deny_and_fleet_entry() {
    stay_on_one_cpu();
    let mut h = Harness::new(BASE_POLICY);
    let frame = |source: &str| udp(source, PBX4, 5060, b"OPTIONS");
    let net = |text: &str| -> ipnet::IpNet { text.parse().unwrap() };
    let ban = minute_ban(BanReason::Manual);
    // One at a time: each entry alone must reach the source cached as
    // clear just before it.
    type MakeEntry<'a> = &'a dyn Fn(&mut Harness);
    let entries: [(&str, Reason, MakeEntry); 3] = [
        ("198.51.100.7", Reason::Banned, &|h| {
            h.guard
                .maps_mut()
                .insert_ban(v4_key("198.51.100.7"), ban)
                .unwrap()
        }),
        ("198.51.100.8", Reason::Denied, &|h| {
            h.guard
                .maps_mut()
                .insert_net(NetList::Deny, net("198.51.100.8/32"), 0)
                .unwrap()
        }),
        ("198.51.100.9", Reason::Fleet, &|h| {
            h.guard
                .maps_mut()
                .insert_fleet(net("198.51.100.9/32"))
                .unwrap()
        }),
    ];
    for (source, reason, make_entry) in entries {
        assert_eq!(passes(&mut h, &frame(source), 3), 3, "{source}");
        make_entry(&mut h);
        assert_eq!(h.run(&frame(source)), XDP_DROP, "{source}");
        assert_eq!(h.packets(reason), 1, "{source}");
    }
}

/// A batch of bans (a fleet's full sync) is published to the source cache
/// once, at its end: until then a source cached as clear still passes.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn bans_held_back_reach_a_source_cached_as_clear_once_published() {
    stay_on_one_cpu();
    let mut h = Harness::new(BASE_POLICY);
    let frame = udp("198.51.100.7", PBX4, 5060, b"OPTIONS");
    assert_eq!(passes(&mut h, &frame, 3), 3);
    let ban = minute_ban(BanReason::Crowdsec);
    let maps = h.guard.maps_mut();
    maps.hold_ban_publication();
    assert!(maps.insert_new_ban(v4_key("198.51.100.7"), ban).unwrap());
    assert_eq!(
        h.run(&frame),
        XDP_PASS,
        "held back: the cache still says clear"
    );
    h.guard.maps_mut().publish_bans().unwrap();
    assert_eq!(h.run(&frame), XDP_DROP);
    assert_eq!(h.packets(Reason::Banned), 1);
    // Publication is no longer held: the next ban reaches the next packet.
    let other = udp("198.51.100.8", PBX4, 5060, b"OPTIONS");
    assert_eq!(passes(&mut h, &other, 3), 3);
    h.guard
        .maps_mut()
        .insert_ban(v4_key("198.51.100.8"), ban)
        .unwrap();
    assert_eq!(h.run(&other), XDP_DROP);
}

/// A ban the program makes itself reaches the source's packets on every
/// CPU, including those that had it cached as clear: the next packet
/// meets the ban (reason `banned`), not only the rate count still over
/// its limit (`rate_limited`), which would let it pass once the window
/// slid on.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_ban_the_program_makes_reaches_a_source_cached_as_clear() {
    stay_on_one_cpu();
    let mut h = Harness::new(BASE_POLICY);
    let frame = udp("198.51.100.7", PBX4, 5060, b"OPTIONS");
    // The default's 40 in 2 s: the 41st packet bans.
    assert_eq!(passes(&mut h, &frame, 40), 40);
    assert_eq!(h.run(&frame), XDP_DROP);
    assert_eq!(h.packets(Reason::RateLimited), 1);
    assert!(h.is_banned(&v4_key("198.51.100.7")));
    assert_eq!(h.run(&frame), XDP_DROP);
    assert_eq!(h.packets(Reason::Banned), 1);
    assert_eq!(h.packets(Reason::RateLimited), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn trusted_service_admits_only_its_allow_list() {
    let mut h = Harness::new(BASE_POLICY);
    assert_eq!(h.run(&tcp("10.1.9.9", PBX4, 443, true, false)), XDP_PASS);
    assert_eq!(
        h.run(&tcp("2001:db8:a:1::5", PBX6, 80, true, false)),
        XDP_PASS
    );
    assert_eq!(
        h.run(&tcp("198.51.100.1", PBX4, 443, true, false)),
        XDP_DROP
    );
    assert_eq!(
        h.run(&tcp("2001:db8:b::5", PBX6, 80, true, false)),
        XDP_DROP
    );
    assert_eq!(h.packets(Reason::PassedAllowlisted), 2);
    assert_eq!(h.packets(Reason::NotTrusted), 2);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn allow_entry_grants_only_its_services() {
    let mut h = Harness::new(
        r#"
[services.ssh]
access = "trusted"
[[allow]]
cidr = "10.1.0.0/16"
services = ["web"]
"#,
    );
    // 10.1/16 is trusted for web only, so ssh (trusted) is closed to it.
    assert_eq!(h.run(&tcp("10.1.2.3", PBX4, 22, true, false)), XDP_DROP);
    assert_eq!(h.packets(Reason::NotTrusted), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn closed_service_drops_everyone() {
    let mut h = Harness::new(BASE_POLICY);
    assert_eq!(h.run(&tcp("10.1.2.3", PBX4, 5038, true, false)), XDP_DROP);
    assert_eq!(
        h.run(&tcp("198.51.100.1", PBX4, 5038, true, false)),
        XDP_DROP
    );
    assert_eq!(h.packets(Reason::Closed), 2);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn default_drop_policy() {
    let mut h = Harness::new(
        r#"
[guard]
default_policy = "drop"
[[allow]]
cidr = "10.1.0.0/16"
[[allow]]
cidr = "10.2.0.0/16"
services = ["sip"]
"#,
    );
    // Unclassified port from a stranger: dropped.
    assert_eq!(h.run(&udp("198.51.100.1", PBX4, 9999, b"x")), XDP_DROP);
    assert_eq!(
        h.run(&tcp("198.51.100.1", PBX4, 3306, true, false)),
        XDP_DROP
    );
    // ICMP is unclassified too.
    assert_eq!(h.run(&icmpv6("2001:db8:b::1", PBX6, 128)), XDP_DROP);
    assert_eq!(h.packets(Reason::DefaultDrop), 3);
    // "all" covers unclassified traffic; a sip-only entry does not.
    assert_eq!(h.run(&udp("10.1.0.5", PBX4, 9999, b"x")), XDP_PASS);
    assert_eq!(h.run(&udp("10.2.0.5", PBX4, 9999, b"x")), XDP_DROP);
    // An open service stays open to strangers.
    assert_eq!(h.run(&udp("198.51.100.1", PBX4, 5060, b"x")), XDP_PASS);
    assert_eq!(h.packets(Reason::PassedAllowlisted), 1);
    assert_eq!(h.packets(Reason::DefaultDrop), 4);
    assert_eq!(h.packets(Reason::Passed), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn vlan_and_qinq_are_looked_through() {
    let mut h = Harness::new(BASE_POLICY);
    let denied = udp("203.0.113.5", PBX4, 5060, b"x");
    let stranger_web = tcp("198.51.100.1", PBX4, 443, true, false);
    let one = [(TPID_8021Q, 100)];
    let qinq = [(TPID_8021AD, 10), (TPID_8021Q, 100)];
    assert_eq!(h.run(&with_vlan_tags(&denied, &one)), XDP_DROP);
    assert_eq!(h.run(&with_vlan_tags(&denied, &qinq)), XDP_DROP);
    assert_eq!(h.packets(Reason::Denied), 2);
    assert_eq!(h.run(&with_vlan_tags(&stranger_web, &qinq)), XDP_DROP);
    assert_eq!(h.packets(Reason::NotTrusted), 1);
    let v6 = udp("2001:db8:a::1", PBX6, 5060, b"x");
    assert_eq!(h.run(&with_vlan_tags(&v6, &qinq)), XDP_PASS);
    // Allow-listed: spared the rate rules.
    assert_eq!(h.packets(Reason::PassedAllowlisted), 1);
    // A third tag hides what the frame carries: malformed.
    let three = [(TPID_8021AD, 10), (TPID_8021Q, 100), (TPID_8021Q, 200)];
    assert_eq!(h.run(&with_vlan_tags(&v6, &three)), XDP_DROP);
    assert_eq!(h.packets(Reason::Malformed), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn ipv4_options_are_skipped_by_ihl() {
    let mut h = Harness::new(BASE_POLICY);
    let web = tcp("198.51.100.1", PBX4, 443, true, false);
    for words in [1usize, 4, 10] {
        // NOPs then end-of-options: IHL 6, 9, 15.
        let mut options = vec![1u8; words * 4];
        options[words * 4 - 1] = 0;
        let frame = with_ipv4_options(&web, &options);
        assert_eq!(frame[ETH_LEN] & 0x0f, 5 + words as u8);
        // Port 443 is found behind the options: trusted service, stranger.
        assert_eq!(h.run(&frame), XDP_DROP);
    }
    assert_eq!(h.packets(Reason::NotTrusted), 3);
    assert_eq!(h.packets(Reason::Malformed), 0);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn ihl_below_five_is_malformed() {
    let mut h = Harness::new(BASE_POLICY);
    let frame = udp("198.51.100.1", PBX4, 5060, b"x");
    for ihl in 0..5 {
        assert_eq!(h.run(&with_ipv4_ihl(&frame, ihl)), XDP_DROP, "ihl {ihl}");
    }
    // IHL pointing past the packet is malformed too.
    assert_eq!(h.run(&with_ipv4_ihl(&frame, 15)), XDP_DROP);
    assert_eq!(h.packets(Reason::Malformed), 6);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn ipv6_extension_headers_are_walked() {
    let mut h = Harness::new(BASE_POLICY);
    let web = tcp("2001:db8:b::1", PBX6, 443, true, false);
    let chain = [
        options_header(0),
        routing_header(),
        fragment_header(0, true),
        options_header(60),
    ];
    let frame = with_ipv6_ext_headers(&web, &chain);
    // The TCP port behind four extension headers: trusted service, stranger.
    assert_eq!(h.run(&frame), XDP_DROP);
    assert_eq!(h.packets(Reason::NotTrusted), 1);

    let six: Vec<ExtHeader> = (0..6).map(|_| options_header(60)).collect();
    assert_eq!(h.run(&with_ipv6_ext_headers(&web, &six)), XDP_DROP);
    assert_eq!(h.packets(Reason::NotTrusted), 2);

    // Seven is more than sipguard walks: malformed, not guessed.
    let seven: Vec<ExtHeader> = (0..7).map(|_| options_header(60)).collect();
    assert_eq!(h.run(&with_ipv6_ext_headers(&web, &seven)), XDP_DROP);
    assert_eq!(h.packets(Reason::Malformed), 1);

    // SIP behind extension headers is rate-counted like any other.
    let sip = udp("2001:db8:b::1", PBX6, 5060, b"x");
    assert_eq!(h.run(&with_ipv6_ext_headers(&sip, &chain)), XDP_PASS);
    assert_eq!(h.rule_hits(1).counted, 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn later_fragments_are_judged_by_source_alone() {
    let mut h = Harness::new(BASE_POLICY);
    let stranger = tcp("198.51.100.1", PBX4, 443, true, false);
    // The first fragment carries the ports: judged in full.
    assert_eq!(h.run(&ipv4_fragment(&stranger, 0, true)), XDP_DROP);
    assert_eq!(h.packets(Reason::NotTrusted), 1);
    // A later fragment has no ports: it passes unless its source is barred.
    assert_eq!(h.run(&ipv4_fragment(&stranger, 185, false)), XDP_PASS);
    let denied = udp("203.0.113.1", PBX4, 5060, &[0u8; 64]);
    assert_eq!(h.run(&ipv4_fragment(&denied, 185, true)), XDP_DROP);
    let v6 = udp("2001:db8:b::1", PBX6, 5060, &[0u8; 64]);
    assert_eq!(
        h.run(&with_ipv6_ext_headers(&v6, &[fragment_header(100, false)])),
        XDP_PASS
    );
    let v6_denied = udp("2001:db8:bad::1", PBX6, 5060, &[0u8; 64]);
    assert_eq!(
        h.run(&with_ipv6_ext_headers(
            &v6_denied,
            &[fragment_header(100, true)]
        )),
        XDP_DROP
    );
    assert_eq!(h.packets(Reason::Fragment), 2);
    assert_eq!(h.packets(Reason::Denied), 2);

    // And a banned source's fragments are dropped.
    let now = monotonic_ns();
    let ban = BanEntry {
        expires_ns: BAN_FOREVER,
        created_ns: now,
        reason: BanReason::Manual as u16,
        rule: NO_RULE,
        ..BanEntry::default()
    };
    h.guard
        .maps_mut()
        .insert_ban(v4_key("198.51.100.1"), ban)
        .unwrap();
    assert_eq!(h.run(&ipv4_fragment(&stranger, 185, false)), XDP_DROP);
    assert_eq!(h.packets(Reason::Banned), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn frames_truncated_anywhere_are_malformed() {
    let mut h = Harness::new(BASE_POLICY);
    let frames = vec![
        udp("198.51.100.1", PBX4, 5060, b"REGISTER sip:x SIP/2.0"),
        tcp("198.51.100.1", PBX4, 5060, true, false),
        udp("2001:db8:b::1", PBX6, 5060, b"OPTIONS"),
        tcp("2001:db8:b::1", PBX6, 22, true, false),
        with_vlan_tags(
            &udp("198.51.100.1", PBX4, 5060, b"x"),
            &[(TPID_8021AD, 1), (TPID_8021Q, 2)],
        ),
        with_ipv6_ext_headers(
            &udp("2001:db8:b::1", PBX6, 5060, b"x"),
            &[options_header(0), fragment_header(0, true)],
        ),
        with_ipv4_options(&udp("198.51.100.1", PBX4, 5060, b"x"), &[1, 1, 1, 0]),
    ];
    let mut cuts = 0;
    for frame in &frames {
        // Every length, so every header boundary and every byte between
        // (the kernel refuses test frames shorter than an Ethernet header).
        for len in ETH_LEN..frame.len() {
            assert_eq!(
                h.run(&frame[..len]),
                XDP_DROP,
                "cut at {len} of {}",
                frame.len()
            );
            cuts += 1;
        }
    }
    assert_eq!(h.packets(Reason::Malformed), cuts);
    assert_eq!(h.all_packets(), cuts);
    // The whole frames are fine.
    for frame in &frames {
        assert_eq!(h.run(frame), XDP_PASS);
    }
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn zero_length_udp() {
    let mut h = Harness::new(BASE_POLICY);
    // No payload at all: a valid datagram, counted by the SIP rules.
    let empty = udp("198.51.100.1", PBX4, 5060, b"");
    assert_eq!(h.run(&empty), XDP_PASS);
    assert_eq!(h.rule_hits(0).counted, 1);
    // A UDP length field below the header size is malformed.
    for bad_len in [0u16, 7] {
        let mut frame = empty.clone();
        let at = ETH_LEN + 20 + 4;
        frame[at..at + 2].copy_from_slice(&bad_len.to_be_bytes());
        assert_eq!(h.run(&frame), XDP_DROP);
    }
    assert_eq!(h.packets(Reason::Malformed), 2);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn packet_41_within_2s_is_dropped_and_bans() {
    let mut h = Harness::new("");
    let attacker = "198.51.100.66";
    let frame = udp(attacker, PBX4, 5060, b"REGISTER");
    let before = monotonic_ns();
    for n in 1..=40 {
        assert_eq!(h.run(&frame), XDP_PASS, "packet {n}");
    }
    assert!(!h.is_banned(&v4_key(attacker)));
    assert_eq!(h.run(&frame), XDP_DROP, "packet 41");
    assert!(
        monotonic_ns() - before < 2_000_000_000,
        "the burst took over 2 s"
    );

    assert_eq!(h.packets(Reason::Passed), 40);
    assert_eq!(h.packets(Reason::RateLimited), 1);
    let rule = h.rule_hits(1);
    assert_eq!((rule.counted, rule.limited), (41, 1));
    assert_eq!(h.rule_hits(0).limited, 0);

    let ban = h
        .guard
        .maps_mut()
        .ban(&v4_key(attacker))
        .unwrap()
        .expect("a ban");
    assert_eq!(ban.reason, BanReason::RateLimit as u16);
    assert_eq!(ban.rule, 1);
    assert_eq!(ban.expires_ns - ban.created_ns, 3_600_000_000_000);
    let events = h.drain_ban_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].source, v4_key(attacker));
    assert_eq!((events[0].rule, events[0].count), (1, 41));
    assert_eq!(events[0].expires_ns, ban.expires_ns);

    // From now on the ban drops it, and counts what it dropped.
    assert_eq!(passes(&mut h, &frame, 5), 0);
    assert_eq!(h.packets(Reason::Banned), 5);
    assert_eq!(
        h.guard
            .maps_mut()
            .ban(&v4_key(attacker))
            .unwrap()
            .unwrap()
            .dropped,
        5
    );
    // Nobody else is affected.
    assert_eq!(h.run(&udp("198.51.100.67", PBX4, 5060, b"x")), XDP_PASS);
    assert!(h.drain_ban_events().is_empty());
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn packet_121_within_60s_is_dropped_and_bans() {
    // The vendors' long rule alone (with both, the 2 s rule fires first in a burst).
    let mut h = Harness::new(
        r#"
[[rate_rules]]
name = "sip-udp-120-per-60s"
ports = ["5060/udp"]
packets = 120
window = "60s"
ban = "1h"
"#,
    );
    let frame = udp("2001:db8:66::1", PBX6, 5060, b"INVITE");
    assert_eq!(passes(&mut h, &frame, 120), 120);
    assert_eq!(h.run(&frame), XDP_DROP);
    assert_eq!(h.packets(Reason::RateLimited), 1);
    assert_eq!(h.rule_hits(0).limited, 1);
    assert!(h.is_banned(&v6_key("2001:db8:66::1", 64)));
    assert_eq!(h.drain_ban_events()[0].count, 121);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn ipv6_sources_are_banned_per_prefix() {
    let mut h = Harness::new(
        r#"
[guard]
ipv6_ban_prefix = 64
[[rate_rules]]
name = "tiny"
ports = ["5060/udp"]
packets = 3
window = "10s"
ban = "10m"
"#,
    );
    // Rotating addresses inside one /64 shares one counter.
    for host in 1..=3 {
        let frame = udp(&format!("2001:db8:1:2::{host}"), PBX6, 5060, b"x");
        assert_eq!(h.run(&frame), XDP_PASS);
    }
    assert_eq!(h.run(&udp("2001:db8:1:2::4", PBX6, 5060, b"x")), XDP_DROP);
    assert_eq!(
        h.run(&udp("2001:db8:1:2:ffff::9", PBX6, 5060, b"x")),
        XDP_DROP
    );
    assert_eq!(h.packets(Reason::Banned), 1);
    // The neighbouring /64 is someone else.
    assert_eq!(h.run(&udp("2001:db8:1:3::1", PBX6, 5060, b"x")), XDP_PASS);
}

/// The program tells the time from jiffies under the base measured at
/// load, which the map holds; a second later, the bans it makes still
/// carry the controller's time (a wrong tick length would be off by a
/// sixth of it or more); and a base moved by an hour moves them by an hour.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn the_kernels_clock_keeps_the_controllers_time() {
    const HOUR: u64 = 3_600_000_000_000;
    let mut h = Harness::new("");
    let base = h.guard.clock.expect("the clock base was measured");
    assert_eq!(h.guard.clock_in_map().unwrap(), base);
    std::thread::sleep(std::time::Duration::from_millis(1000));
    // The default 40-in-2-s rule bans at packet 41.
    let ban_made_between = |h: &mut Harness, attacker: &str| {
        let frame = udp(attacker, PBX4, 5060, b"REGISTER");
        let before = monotonic_ns();
        let dropped_at = (1..=100).find(|_| h.run(&frame) == XDP_DROP);
        let after = monotonic_ns();
        assert_eq!(dropped_at, Some(41), "{attacker}");
        let ban = h.guard.maps_mut().ban(&v4_key(attacker)).unwrap().unwrap();
        (ban.created_ns, before, after)
    };
    // Both clocks step once a tick; they agree within one.
    let slack = 2 * base.tick_ns;
    let (made, before, after) = ban_made_between(&mut h, "198.51.100.67");
    assert!(
        made + slack >= before && made <= after + slack,
        "made at {made} ns, between {before} and {after}"
    );
    h.guard
        .set_clock_base(ClockBase {
            base_ns: base.base_ns + HOUR,
            ..base
        })
        .unwrap();
    let (made, before, after) = ban_made_between(&mut h, "198.51.100.68");
    assert!(
        made + slack >= before + HOUR && made <= after + HOUR + slack,
        "made at {made} ns, an hour after {before} to {after}"
    );
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn expired_bans_count_as_absent() {
    let mut h = Harness::new(BASE_POLICY);
    let now = monotonic_ns();
    // Expired 100 ms ago, ten ticks at 100 Hz: the program's clock (jiffies on
    // their grid) and the controller's coarse clock agree within one.
    let expired = BanEntry {
        expires_ns: now - 100_000_000,
        created_ns: now - 1_000_000_000,
        reason: BanReason::Manual as u16,
        rule: NO_RULE,
        ..BanEntry::default()
    };
    let live = BanEntry {
        expires_ns: now + 3_600_000_000_000,
        ..expired
    };
    h.guard
        .maps_mut()
        .insert_ban(v4_key("198.51.100.1"), expired)
        .unwrap();
    h.guard
        .maps_mut()
        .insert_ban(v4_key("198.51.100.2"), live)
        .unwrap();
    assert_eq!(h.run(&udp("198.51.100.1", PBX4, 5060, b"x")), XDP_PASS);
    assert_eq!(h.run(&udp("198.51.100.2", PBX4, 5060, b"x")), XDP_DROP);
    assert_eq!(h.packets(Reason::Banned), 1);
    // The expired entry waits for the controller's sweeper...
    assert!(h.is_banned(&v4_key("198.51.100.1")));
    assert_eq!(
        h.guard
            .maps_mut()
            .ban(&v4_key("198.51.100.2"))
            .unwrap()
            .unwrap()
            .dropped,
        1
    );
    // ...and a new rate-limit ban replaces it.
    let frame = udp("198.51.100.1", PBX4, 5060, b"x");
    assert_eq!(passes(&mut h, &frame, 40), 39, "one passed above");
    assert_eq!(h.run(&frame), XDP_DROP);
    let ban = h
        .guard
        .maps_mut()
        .ban(&v4_key("198.51.100.1"))
        .unwrap()
        .unwrap();
    assert_eq!(ban.reason, BanReason::RateLimit as u16);
    assert!(ban.is_active(monotonic_ns()));
    assert_eq!(h.drain_ban_events().len(), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn bans_come_before_the_allow_list() {
    let mut h = Harness::new(BASE_POLICY);
    let ban = BanEntry {
        expires_ns: BAN_FOREVER,
        reason: BanReason::Manual as u16,
        rule: NO_RULE,
        ..BanEntry::default()
    };
    h.guard
        .maps_mut()
        .insert_ban(v4_key("10.1.2.3"), ban)
        .unwrap();
    assert_eq!(h.run(&udp("10.1.2.3", PBX4, 5060, b"x")), XDP_DROP);
    assert_eq!(h.packets(Reason::Banned), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn monitor_mode_counts_every_verdict_but_passes_all() {
    let mut h = Harness::new(&format!("[guard]\nmonitor = true\n{BASE_POLICY}"));
    assert_eq!(h.run(&udp("203.0.113.5", PBX4, 5060, b"x")), XDP_PASS);
    assert_eq!(
        h.run(&tcp("198.51.100.1", PBX4, 5038, true, false)),
        XDP_PASS
    );
    let frame = udp("198.51.100.9", PBX4, 5060, b"x");
    assert_eq!(passes(&mut h, &frame, 45), 45);
    assert_eq!(h.packets(Reason::Denied), 1);
    assert_eq!(h.packets(Reason::Closed), 1);
    assert_eq!(h.packets(Reason::RateLimited), 1);
    assert_eq!(h.packets(Reason::Banned), 4);
    assert_eq!(h.drain_ban_events().len(), 1);
    let cut = udp("198.51.100.1", PBX4, 5060, b"x");
    assert_eq!(h.run(&cut[..30]), XDP_PASS);
    assert_eq!(h.packets(Reason::Malformed), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn syn_only_rules_count_connection_attempts() {
    let mut h = Harness::new(
        r#"
[[rate_rules]]
name = "ssh-connects"
service = "ssh"
packets = 3
window = "1m"
ban = "1h"
syn_only = true
"#,
    );
    let syn = tcp("198.51.100.1", PBX4, 22, true, false);
    let ack = tcp("198.51.100.1", PBX4, 22, false, true);
    let syn_ack = tcp("198.51.100.1", PBX4, 22, true, true);
    assert_eq!(passes(&mut h, &syn, 3), 3);
    assert_eq!(passes(&mut h, &ack, 20), 20);
    assert_eq!(passes(&mut h, &syn_ack, 5), 5);
    assert_eq!(h.rule_hits(0).counted, 3);
    assert_eq!(h.run(&syn), XDP_DROP);
    assert_eq!(h.packets(Reason::RateLimited), 1);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn default_rules_watch_only_sip_udp() {
    let mut h = Harness::new("");
    let sip_tcp = tcp("198.51.100.1", PBX4, 5060, false, true);
    assert_eq!(passes(&mut h, &sip_tcp, 100), 100);
    let rtp = udp("198.51.100.1", PBX4, 12000, &[0u8; 172]);
    assert_eq!(passes(&mut h, &rtp, 100), 100);
    assert_eq!(h.packets(Reason::Passed), 200);
    assert_eq!(h.rule_hits(0).counted + h.rule_hits(1).counted, 0);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_full_ban_map_drops_but_cannot_ban() {
    let mut h = Harness::new(
        r#"
[guard]
max_bans = 1
[[rate_rules]]
name = "tiny"
ports = ["5060/udp"]
packets = 1
window = "10s"
ban = "1h"
"#,
    );
    for source in ["198.51.100.1", "198.51.100.2"] {
        let frame = udp(source, PBX4, 5060, b"x");
        assert_eq!(h.run(&frame), XDP_PASS);
        assert_eq!(h.run(&frame), XDP_DROP);
    }
    assert!(h.is_banned(&v4_key("198.51.100.1")));
    assert!(!h.is_banned(&v4_key("198.51.100.2")));
    assert_eq!(h.packets(Reason::RateLimited), 2);
    assert_eq!(
        h.guard.maps_mut().health().unwrap()[Health::BanMapFull as usize],
        1
    );
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn counts_stay_exact_when_two_cpus_see_one_source() {
    let mut h = Harness::new(
        r#"
[[rate_rules]]
name = "huge"
ports = ["5060/udp"]
packets = 10000000
window = "1h"
ban = "1h"
[[rate_rules]]
name = "huge-2"
ports = ["5060/udp"]
packets = 10000000
window = "10m"
ban = "1h"
"#,
    );
    const PER_CPU: u32 = 200_000;
    let frame = udp("198.51.100.1", PBX4, 5060, b"x");
    let program = h.guard.program().unwrap();
    std::thread::scope(|scope| {
        for cpu in 0..2usize {
            let program = &*program;
            let frame = &frame;
            scope.spawn(move || {
                pin_to_cpu(cpu);
                use aya::programs::{TestRun, TestRunOptions};
                let result = program
                    .test_run(TestRunOptions {
                        data_in: Some(frame),
                        repeat: PER_CPU,
                        ..TestRunOptions::default()
                    })
                    .unwrap();
                assert_eq!(result.return_value, XDP_PASS);
            });
        }
    });
    let total = 2 * PER_CPU as u64;
    assert_eq!(h.packets(Reason::Passed), total);
    // Both rules' windows sit in the source's one entry, each exact.
    let key = guard_common::RateKey {
        source: v4_key("198.51.100.1"),
        group: 0,
    };
    let state = h.guard.maps().rate_state(&key).unwrap().expect("a window");
    for rule in 0..2u32 {
        assert_eq!(h.rule_hits(rule as usize).counted, total, "rule {rule}");
        let slot_ns = h.policy.rules[rule as usize].slot_ns;
        let window = &state.windows[guard_common::rate_lane(rule)];
        let counted = guard_common::rate::window_total(window, monotonic_ns(), slot_ns);
        assert_eq!(counted, total, "rule {rule}: packets lost between CPUs");
    }
}

fn pin_to_cpu(cpu: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: a zeroed cpu_set_t is valid; we set one bit and apply it to this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn verdicts_are_counted_per_destination_service() {
    let mut h = Harness::new(BASE_POLICY);
    let sip = 1u8; // built-in service ids: sip, sip-tls, rtp, web, ...
    let rtp = 3u8;
    assert_eq!(h.run(&udp("203.0.113.5", PBX4, 5060, b"x")), XDP_DROP);
    assert_eq!(h.run(&udp("198.51.100.1", PBX4, 12000, b"x")), XDP_PASS);
    assert_eq!(h.run(&udp("198.51.100.1", PBX4, 9999, b"x")), XDP_PASS);
    let rows = h.guard.maps().verdicts_by_service().unwrap();
    let packets = |reason: Reason, service: u8| {
        rows.iter()
            .find(|(r, s, _)| *r == reason && *s == service)
            .map_or(0, |(_, _, c)| c.packets)
    };
    // A denied packet still counts against the service it was aimed at.
    assert_eq!(packets(Reason::Denied, sip), 1);
    assert_eq!(packets(Reason::Passed, rtp), 1);
    assert_eq!(packets(Reason::Passed, 0), 1);
    assert_eq!(rows.len(), 3);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_new_policy_is_switched_in_whole_and_the_old_one_kept_intact() {
    let mut h = Harness::new(BASE_POLICY);
    let first_slot = h.guard.maps().settings().unwrap().policy_slot;
    assert_eq!(h.run(&tcp("10.9.9.9", PBX4, 5038, true, false)), XDP_DROP);
    assert_eq!(h.packets(Reason::Closed), 1);

    // The next policy opens AMI and closes the web GUI; the deny list changes.
    let next = guard_userspace::policy::config::Config::parse(
        "[services.web]\naccess = \"closed\"\n[[deny]]\ncidr = \"10.9.0.0/16\"\n",
        "next",
    )
    .unwrap();
    let policy = guard_userspace::policy::compile::CompiledPolicy::compile(&next);
    h.guard.maps_mut().sync_policy(&policy).unwrap();
    let settings = h.guard.maps().settings().unwrap();
    assert_eq!(
        settings.policy_slot,
        first_slot ^ 1,
        "one write switched slots"
    );
    assert_eq!(h.run(&tcp("10.8.0.1", PBX4, 5038, true, false)), XDP_PASS);
    assert_eq!(h.run(&tcp("10.8.0.1", PBX4, 443, true, false)), XDP_DROP);
    assert_eq!(h.run(&tcp("10.9.9.9", PBX4, 5038, true, false)), XDP_DROP);
    assert_eq!(h.run(&udp("203.0.113.9", PBX4, 5060, b"x")), XDP_PASS);
    assert_eq!(h.packets(Reason::Denied), 1);
    assert_eq!(h.packets(Reason::Closed), 2);

    // The slot now out of force still holds the whole first policy (what a
    // packet that read the old slot goes on seeing). Nothing is rewritten
    // before looking: its tables are read as they are, and one SETTINGS
    // write points the program back at them.
    let first = guard_userspace::policy::compile::CompiledPolicy::compile(
        &guard_userspace::policy::config::Config::parse(BASE_POLICY, "first").unwrap(),
    );
    {
        let maps = h.guard.maps();
        for (id, service) in &first.services {
            assert_eq!(
                maps.service_in(first_slot, *id).unwrap(),
                *service,
                "service {id}"
            );
        }
        for (i, rule) in first.rules.iter().enumerate() {
            assert_eq!(
                maps.rule_in(first_slot, i as u32).unwrap(),
                *rule,
                "rule {i}"
            );
        }
        for (index, class) in &first.ports {
            assert_eq!(
                maps.port_in(first_slot, *index).unwrap(),
                *class,
                "port slot {index}"
            );
        }
    }
    let mut settings = h.guard.maps().settings().unwrap();
    settings.policy_slot = first_slot;
    h.guard.maps_mut().write_settings(settings).unwrap();
    // The lists are not slotted (next's deny list holds): these sources are on none.
    assert_eq!(h.run(&tcp("10.8.0.1", PBX4, 5038, true, false)), XDP_DROP);
    assert_eq!(h.packets(Reason::Closed), 3, "AMI is closed again");
    let not_trusted = h.packets(Reason::NotTrusted);
    assert_eq!(h.run(&tcp("10.8.0.1", PBX4, 443, true, false)), XDP_DROP);
    assert_eq!(
        h.packets(Reason::NotTrusted),
        not_trusted + 1,
        "the web GUI is trusted-only again, not closed"
    );

    // Switching back in whole restores every verdict, lists included.
    h.guard.maps_mut().sync_policy(&first).unwrap();
    assert_eq!(
        h.guard.maps().settings().unwrap().policy_slot,
        first_slot ^ 1
    );
    assert_eq!(h.run(&tcp("10.9.9.9", PBX4, 5038, true, false)), XDP_DROP);
    assert_eq!(h.packets(Reason::Closed), 4);
    assert_eq!(h.run(&udp("203.0.113.9", PBX4, 5060, b"x")), XDP_DROP);
}
