use std::net::IpAddr;

use super::*;
use crate::sip::{parser::parse, probes::ANSWER_GRACE};
use guard_common::PeerKind;

fn policy(level: LevelName) -> AuthPolicy {
    AuthPolicy {
        level: level.level(),
        unproven_multiplier: 3,
        enumeration_usernames: 5,
        whitelist: vec!["192.0.2.0/24".parse().unwrap()],
        escalation_factor: 1,
        max_ban: Duration::from_secs(30 * 86_400),
        ipv6_prefix: 64,
        unproven_ban_budget: 32_768,
        peer_idle: Duration::from_secs(600),
        max_peers: 1024,
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn request(
    method: &str,
    call_id: &str,
    cseq: u32,
    user: &str,
    credentials: Option<&str>,
) -> String {
    let auth = match credentials {
        Some(nonce) => format!(
            "Authorization: Digest username=\"{user}\", realm=\"pbx\", nonce=\"{nonce}\", response=\"00\"\r\n"
        ),
        None => String::new(),
    };
    format!(
        "{method} sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK{cseq}\r\n\
From: <sip:{user}@pbx>;tag=1\r\nTo: <sip:{user}@pbx>\r\nCall-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

fn response(code: u16, call_id: &str, cseq: u32, method: &str, extra: &str) -> String {
    format!(
        "SIP/2.0 {code} Whatever\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK{cseq}\r\n\
From: <sip:u@pbx>;tag=1\r\nTo: <sip:u@pbx>;tag=2\r\nCall-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

fn challenge(nonce: &str, stale: bool) -> String {
    format!(
        "WWW-Authenticate: Digest realm=\"pbx\", nonce=\"{nonce}\", stale={}\r\n",
        if stale { "TRUE" } else { "FALSE" }
    )
}

/// Drives one exchange; returns the ban decision it causes, if any.
fn exchange(
    t: &mut Tracker,
    now: Instant,
    peer: IpAddr,
    req: &str,
    resp: &str,
) -> Option<BanDecision> {
    let (req, _) = parse(req.as_bytes(), true).unwrap();
    t.on_request(now, peer, &req);
    let (resp, _) = parse(resp.as_bytes(), true).unwrap();
    t.on_response(now, peer, &resp)
}

/// A REGISTER challenged, then retried with the PBX's nonce and refused
/// with a new 401: one *proven* failure for `user`.
fn proven_failure(
    t: &mut Tracker,
    now: Instant,
    peer: IpAddr,
    user: &str,
    n: u32,
) -> Option<BanDecision> {
    let call = format!("call-{user}-{n}");
    let nonce = format!("nonce-{user}-{n}");
    let first = exchange(
        t,
        now,
        peer,
        &request("REGISTER", &call, 1, user, None),
        &response(401, &call, 1, "REGISTER", &challenge(&nonce, false)),
    );
    assert_eq!(first, None, "a plain challenge is no failure");
    exchange(
        t,
        now,
        peer,
        &request("REGISTER", &call, 2, user, Some(&nonce)),
        &response(401, &call, 2, "REGISTER", &challenge("fresh", false)),
    )
}

/// A 404 to a REGISTER without credentials: one *unproven* failure.
fn unproven_failure(
    t: &mut Tracker,
    now: Instant,
    peer: IpAddr,
    user: &str,
    n: u32,
) -> Option<BanDecision> {
    let call = format!("probe-{user}-{n}");
    exchange(
        t,
        now,
        peer,
        &request("REGISTER", &call, 1, user, None),
        &response(404, &call, 1, "REGISTER", ""),
    )
}

#[test]
fn levels_are_exactly_the_vendors() {
    let l = |n: LevelName| {
        let l = n.level();
        (l.failures, l.window.as_secs(), l.ban.as_secs())
    };
    assert_eq!(l(LevelName::Weak), (20, 600, 600));
    assert_eq!(l(LevelName::Normal), (10, 3600, 86_400));
    assert_eq!(l(LevelName::Strong), (5, 6 * 3600, 7 * 86_400));
    assert_eq!(l(LevelName::Paranoid), (3, 86_400, 30 * 86_400));
}

#[test]
fn a_challenge_to_a_request_without_credentials_is_not_a_failure() {
    let mut t = Tracker::new(policy(LevelName::Paranoid));
    let now = Instant::now();
    for n in 0..10 {
        let call = format!("c{n}");
        let d = exchange(
            &mut t,
            now,
            ip("198.51.100.1"),
            &request("REGISTER", &call, 1, "100", None),
            &response(401, &call, 1, "REGISTER", &challenge("x", false)),
        );
        assert_eq!(d, None);
    }
    assert_eq!(t.stats.failures, 0);
}

#[test]
fn proven_failures_ban_at_the_level_limit() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let peer = ip("198.51.100.7");
    for n in 1..10 {
        assert_eq!(
            proven_failure(&mut t, now, peer, "1001", n),
            None,
            "failure {n}"
        );
    }
    let ban = proven_failure(&mut t, now, peer, "1001", 10).expect("10th failure bans");
    assert_eq!(ban.reason, BanReason::AuthFailure);
    assert_eq!(ban.duration, Duration::from_secs(86_400));
    assert!(ban.proven);
    assert_eq!(ban.failures_in_window, 10);
    assert_eq!(ban.evidence.len(), 5);
    assert!(ban
        .evidence
        .iter()
        .all(|f| f.username == b"1001" && f.status == 401));
}

#[test]
fn stale_nonce_is_not_a_failure() {
    let mut t = Tracker::new(policy(LevelName::Paranoid));
    let now = Instant::now();
    let peer = ip("198.51.100.7");
    for n in 0..5 {
        let call = format!("c{n}");
        let d = exchange(
            &mut t,
            now,
            peer,
            &request("REGISTER", &call, 2, "100", Some("old")),
            &response(401, &call, 2, "REGISTER", &challenge("new", true)),
        );
        assert_eq!(d, None);
    }
    assert_eq!(t.stats.failures, 0);
}

#[test]
fn which_403s_and_404s_are_failures() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let peer = ip("198.51.100.7");
    let cases = [
        ("REGISTER", None, 403, true),
        ("INVITE", None, 403, true),
        ("OPTIONS", None, 403, false),
        ("OPTIONS", Some("n"), 403, true),
        ("REGISTER", None, 404, true),
        ("INVITE", None, 404, false),
        ("INVITE", None, 486, false),
        ("INVITE", Some("n"), 200, false),
    ];
    for (i, (method, creds, code, failure)) in cases.into_iter().enumerate() {
        let before = t.stats.failures;
        let call = format!("k{i}");
        exchange(
            &mut t,
            now,
            peer,
            &request(method, &call, 1, "u", creds),
            &response(code, &call, 1, method, ""),
        );
        assert_eq!(
            t.stats.failures - before,
            failure as u64,
            "{method} {creds:?} -> {code}"
        );
    }
}

#[test]
fn unproven_failures_need_three_times_the_limit() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let peer = ip("203.0.113.9");
    // One username, so enumeration does not kick in.
    for n in 1..30 {
        assert_eq!(
            unproven_failure(&mut t, now, peer, "100", n),
            None,
            "failure {n}"
        );
    }
    let ban = unproven_failure(&mut t, now, peer, "100", 30).expect("30th bans");
    assert_eq!(ban.reason, BanReason::AuthFailure);
    assert!(!ban.proven);
}

#[test]
fn a_nonce_issued_to_another_address_proves_nothing() {
    let mut t = Tracker::new(policy(LevelName::Paranoid));
    let now = Instant::now();
    // The PBX challenges 198.51.100.1 ...
    exchange(
        &mut t,
        now,
        ip("198.51.100.1"),
        &request("REGISTER", "a", 1, "9", None),
        &response(401, "a", 1, "REGISTER", &challenge("N1", false)),
    );
    // ... and a request from elsewhere echoing that nonce fails: unproven.
    for n in 0..8 {
        let call = format!("b{n}");
        let d = exchange(
            &mut t,
            now,
            ip("198.51.100.2"),
            &request("REGISTER", &call, 2, "9", Some("N1")),
            &response(401, &call, 2, "REGISTER", &challenge("N2", false)),
        );
        assert_eq!(d, None, "paranoid proven limit is 3, unproven 9");
    }
    let d = exchange(
        &mut t,
        now,
        ip("198.51.100.2"),
        &request("REGISTER", "b9", 2, "9", Some("N1")),
        &response(401, "b9", 2, "REGISTER", &challenge("N3", false)),
    );
    assert!(d.is_some_and(|d| !d.proven));
}

#[test]
fn answers_must_match_call_id_cseq_and_address() {
    let mut t = Tracker::new(policy(LevelName::Paranoid));
    let now = Instant::now();
    let peer = ip("198.51.100.7");
    let text = request("REGISTER", "m1", 5, "u", Some("n"));
    let (req, _) = parse(text.as_bytes(), true).unwrap();
    t.on_request(now, peer, &req);
    // 2xx answers that match nothing change nothing.
    for (call, cseq, method, to) in [
        ("m2", 5, "REGISTER", peer),
        ("m1", 6, "REGISTER", peer),
        ("m1", 5, "INVITE", peer),
        ("m1", 5, "REGISTER", ip("198.51.100.8")),
    ] {
        let text = response(202, call, cseq, method, "");
        let (resp, _) = parse(text.as_bytes(), true).unwrap();
        assert_eq!(t.on_response(now, to, &resp), None);
    }
    assert_eq!(t.stats.failures, 0);
    assert_eq!(t.stats.unmatched_responses, 4);
    // The request is still pending: its own answer matches it.
    let text = response(403, "m1", 5, "REGISTER", "");
    let (resp, _) = parse(text.as_bytes(), true).unwrap();
    t.on_response(now, peer, &resp);
    assert_eq!(t.stats.unmatched_responses, 4);
    assert_eq!(t.stats.failures, 1);
}

/// Issue 10: an answer whose request was never read (fragmented, cut,
/// lost) still counts, as an unproven failure for the user it echoes.
#[test]
fn failures_answering_unread_requests_count_as_unproven() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let peer = ip("198.51.100.9");
    for (code, method) in [(401, "REGISTER"), (407, "INVITE"), (403, "OPTIONS")] {
        let text = response(code, "never-read", 1, method, &challenge("n", false));
        let (resp, _) = parse(text.as_bytes(), true).unwrap();
        assert_eq!(t.on_response(now, peer, &resp), None);
    }
    assert_eq!(t.stats.failures, 3);
    // Stale challenges and other answers are not failures.
    for (code, extra) in [(401, challenge("n", true)), (486, String::new())] {
        let text = response(code, "never-read", 1, "INVITE", &extra);
        let (resp, _) = parse(text.as_bytes(), true).unwrap();
        t.on_response(now, peer, &resp);
    }
    assert_eq!(t.stats.failures, 3);
    // 30 unproven failures (normal: 10 x 3) ban, and not one before.
    let mut ban = None;
    for i in 3..30 {
        assert_eq!(ban, None, "banned after {i}");
        let text = response(401, &format!("x{i}"), 1, "REGISTER", &challenge("n", false));
        let (resp, _) = parse(text.as_bytes(), true).unwrap();
        ban = t.on_response(now, peer, &resp);
    }
    let ban = ban.expect("banned at 30 unproven failures");
    assert!(!ban.proven);
    assert_eq!(ban.evidence[0].display_username(), "u");
}

/// A request read only in part (its header section cut: the first IP
/// fragment, a capture cut at its size, a TCP segment) may have carried
/// credentials after the cut: its 401 is an unproven failure; and when
/// its credentials are in the part read, the failure is proven.
#[test]
fn a_request_read_in_part_counts_its_answer() {
    let mut t = Tracker::new(policy(LevelName::Paranoid));
    let now = Instant::now();
    let peer = ip("198.51.100.10");
    let full = request("REGISTER", "frag", 1, "u", None);
    let cut = full.find("Content-Length").unwrap() + 3;
    let (req, _) = parse(&full.as_bytes()[..cut], false).unwrap();
    assert!(!req.complete);
    t.on_request(now, peer, &req);
    let text = response(401, "frag", 1, "REGISTER", &challenge("n1", false));
    let (resp, _) = parse(text.as_bytes(), true).unwrap();
    t.on_response(now, peer, &resp);
    assert_eq!(t.stats.failures, 1);
    assert_eq!(t.stats.unmatched_responses, 0);
    // Credentials before the cut: the echoed nonce proves it.
    let full = request("REGISTER", "frag", 2, "u", Some("n1"));
    let cut = full.find("Content-Length").unwrap() + 3;
    let (req, _) = parse(&full.as_bytes()[..cut], false).unwrap();
    t.on_request(now, peer, &req);
    let text = response(401, "frag", 2, "REGISTER", &challenge("n2", false));
    let (resp, _) = parse(text.as_bytes(), true).unwrap();
    t.on_response(now, peer, &resp);
    let state = t.suspects.peek(&peer).or(t.sources.peek(&peer)).unwrap();
    let proven: Vec<bool> = state.failures.iter().map(|f| f.proven).collect();
    assert_eq!(proven, vec![false, true]);
}

/// Duplicate Call-ID and CSeq: Asterisk answers with the last, Kamailio
/// and FreeSWITCH with the first; either answer matches, and proves.
#[test]
fn duplicate_headers_match_either_answer() {
    for (answer_call, answer_cseq) in [("first", 7), ("last", 2)] {
        let mut t = Tracker::new(policy(LevelName::Paranoid));
        let now = Instant::now();
        let peer = ip("198.51.100.11");
        let mut bans = Vec::new();
        for n in 0..3 {
            let nonce = format!("nonce{n}");
            let text = response(401, "x", 100 + n, "REGISTER", &challenge(&nonce, false));
            let (resp, _) = parse(text.as_bytes(), true).unwrap();
            t.on_response(now, peer, &resp);
            // Issued to an unread request: one unproven failure each. The
            // guess itself carries two of each header.
            let text = request("REGISTER", "last", 2, "u", Some(&nonce)).replace(
                "Call-ID: last",
                "Call-ID: first\r\nCSeq: 7 REGISTER\r\nCall-ID: last",
            );
            let (req, _) = parse(text.as_bytes(), true).unwrap();
            t.on_request(now, peer, &req);
            let text = response(
                401,
                answer_call,
                answer_cseq,
                "REGISTER",
                &challenge("fresh", false),
            );
            let (resp, _) = parse(text.as_bytes(), true).unwrap();
            bans.extend(t.on_response(now, peer, &resp));
        }
        assert_eq!(t.stats.unmatched_responses, 3, "only the challenges");
        let ban = bans.pop().expect("three proven failures ban (paranoid)");
        assert!(ban.evidence.iter().filter(|f| f.proven).count() >= 2);
    }
}

/// Two Authorization headers: the PBX may check either; any nonce the PBX
/// issued to the address proves the request.
#[test]
fn duplicate_authorization_proves_with_any_nonce() {
    let mut t = Tracker::new(policy(LevelName::Paranoid));
    let now = Instant::now();
    let peer = ip("198.51.100.12");
    let text = response(401, "c", 1, "REGISTER", &challenge("real", false));
    let (resp, _) = parse(text.as_bytes(), true).unwrap();
    t.on_response(now, peer, &resp);
    let text = request("REGISTER", "c", 2, "u", Some("bogus")).replace(
        "Content-Length",
        "Authorization: Digest username=\"u\", nonce=\"real\"\r\nContent-Length",
    );
    let (req, _) = parse(text.as_bytes(), true).unwrap();
    t.on_request(now, peer, &req);
    let text = response(401, "c", 2, "REGISTER", &challenge("next", false));
    let (resp, _) = parse(text.as_bytes(), true).unwrap();
    t.on_response(now, peer, &resp);
    let state = t
        .sources
        .peek(&peer)
        .expect("proven: kept with the established");
    assert!(state.failures.back().unwrap().proven);
}

/// Escaped spellings of one username are one username.
#[test]
fn escaped_usernames_are_one_username() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let peer = ip("198.51.100.13");
    for (i, to) in ["1001", "%31001", "%31%30%30%31"].iter().enumerate() {
        let call = format!("e{i}");
        let text = request("REGISTER", &call, 1, to, None);
        let (req, _) = parse(text.as_bytes(), true).unwrap();
        t.on_request(now, peer, &req);
        let text = response(404, &call, 1, "REGISTER", "");
        let (resp, _) = parse(text.as_bytes(), true).unwrap();
        t.on_response(now, peer, &resp);
    }
    let state = t.suspects.peek(&peer).unwrap();
    assert!(state.failures.iter().all(|f| f.username == b"1001"));
}

/// An IPv6 attacker cannot spread its guesses over its /64.
#[test]
fn ipv6_sources_are_tracked_by_their_ban_prefix() {
    let mut t = Tracker::new(policy(LevelName::Paranoid));
    let now = Instant::now();
    let mut ban = None;
    for n in 0..9 {
        let peer = ip(&format!("2001:db8:1:2::{:x}", n + 1));
        ban = ban.or(unproven_failure(&mut t, now, peer, "u", n));
    }
    let ban = ban.expect("9 unproven failures from one /64 ban (paranoid: 3 x 3)");
    assert_eq!(ban.source, ip("2001:db8:1:2::9"));
    assert_eq!(t.tracked_sources(), 0, "one source, banned and forgotten");
}

#[test]
fn many_usernames_from_one_source_is_enumeration() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let peer = ip("198.51.100.66");
    for (n, user) in ["100", "101", "102", "103"].iter().enumerate() {
        assert_eq!(proven_failure(&mut t, now, peer, user, n as u32), None);
    }
    let ban = proven_failure(&mut t, now, peer, "104", 9).expect("5 usernames");
    assert_eq!(ban.reason, BanReason::Enumeration);
    assert_eq!(ban.failures_in_window, 5);
}

/// Issue 11: an extension scan is banned within 5 usernames, whatever the
/// PBX answers (404, a challenge to every name alike, 403, or nothing),
/// before it can learn a sixth.
#[test]
fn an_extension_scan_is_banned_within_five_usernames() {
    for (case, code) in [("404", 404), ("alike", 401), ("403", 403), ("silent", 0)] {
        let mut t = Tracker::new(policy(LevelName::Normal));
        let start = Instant::now();
        let scanner = ip("203.0.113.50");
        let mut bans = Vec::new();
        for (n, method) in ["REGISTER", "OPTIONS", "INVITE", "SUBSCRIBE", "REGISTER"]
            .into_iter()
            .enumerate()
        {
            assert!(bans.is_empty(), "{case}: banned after {n} names");
            let now = start + Duration::from_secs(3 * n as u64);
            let call = format!("scan-{n}");
            let text = request(method, &call, 1, &format!("{}", 100 + n), None);
            let (req, _) = parse(text.as_bytes(), true).unwrap();
            bans.extend(t.on_request(now, scanner, &req));
            if code != 0 {
                let text = response(code, &call, 1, method, &challenge(&call, false));
                let (resp, _) = parse(text.as_bytes(), true).unwrap();
                bans.extend(t.on_response(now, scanner, &resp));
            }
        }
        if code == 0 {
            // Nothing answered: the fifth ripens with time.
            assert!(bans.is_empty(), "{case}");
            bans = t.judge_waiting(start + Duration::from_secs(12) + ANSWER_GRACE);
        }
        assert_eq!(bans.len(), 1, "{case}");
        let ban = &bans[0];
        assert_eq!(ban.reason, BanReason::Enumeration, "{case}");
        assert!(!ban.proven);
        assert_eq!(ban.failures_in_window, 5, "{case}");
        let statuses: Vec<u16> = ban.evidence.iter().map(|f| f.status).collect();
        assert_eq!(statuses, vec![code; 5], "{case}");
        assert_eq!(ban.evidence[4].display_username(), "104");
    }
}

/// 30 phones behind one address reboot at once: 30 names from 30 ports,
/// all challenged before the first answers its challenge; each then
/// completes its registration. Not banned.
#[test]
fn an_office_rebooting_thirty_phones_is_not_banned() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let office = ip("198.51.100.30");
    let mut bans = Vec::new();
    for n in 0..30u16 {
        let (call, user) = (format!("boot-{n}"), format!("{}", 200 + n));
        let text = request("REGISTER", &call, 1, &user, None);
        let (req, _) = parse(text.as_bytes(), true).unwrap();
        bans.extend(t.on_request_from(now, office, 20_000 + n, &req));
        let text = response(401, &call, 1, "REGISTER", &challenge(&call, false));
        let (resp, _) = parse(text.as_bytes(), true).unwrap();
        bans.extend(t.on_response(now, office, &resp));
    }
    let soon = now + Duration::from_millis(500);
    for n in 0..30u16 {
        let (call, user) = (format!("boot-{n}"), format!("{}", 200 + n));
        let text = request("REGISTER", &call, 2, &user, Some(&call));
        let (req, _) = parse(text.as_bytes(), true).unwrap();
        bans.extend(t.on_request_from(soon, office, 20_000 + n, &req));
        // Every phone that answered its challenge is credited at once.
        let facts = peer_facts(&mut t, soon, office).expect("credited");
        assert_eq!(facts.live_users, u32::from(n) + 1);
        let text = response(200, &call, 2, "REGISTER", "Expires: 300\r\n");
        let (resp, _) = parse(text.as_bytes(), true).unwrap();
        bans.extend(t.on_response(soon, office, &resp));
    }
    bans.extend(t.judge_waiting(now + Duration::from_secs(60)));
    assert!(bans.is_empty(), "{bans:?}");
    let facts = peer_facts(&mut t, soon, office).expect("a peer");
    assert_eq!(facts.live_users, 30);
}

/// A learned peer is never judged as a scan: its failures keep the old
/// proven/unproven tiers (15 unproven names at the normal level).
#[test]
fn a_learned_peer_keeps_the_failure_rules() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let office = ip("198.51.100.31");
    register_with_nonce(&mut t, now, office, "alice", 200, "Expires: 3600\r\n");
    for n in 0..14 {
        assert_eq!(
            unproven_failure(&mut t, now, office, &format!("{}", 200 + n), n),
            None,
            "name {n}"
        );
    }
    let ban = unproven_failure(&mut t, now, office, "214", 14).expect("15 names");
    assert_eq!(ban.reason, BanReason::Enumeration);
}

/// The challenge credit: a phone answering its challenge credits its
/// address at once; any answer but a 2xx withdraws it.
#[test]
fn a_challenge_answered_credits_until_the_pbx_answers() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let phone = ip("198.51.100.32");
    exchange(
        &mut t,
        now,
        phone,
        &request("REGISTER", "c", 1, "101", None),
        &response(401, "c", 1, "REGISTER", &challenge("n1", false)),
    );
    assert_eq!(
        peer_facts(&mut t, now, phone),
        None,
        "a challenge is no credit"
    );
    let text = request("REGISTER", "c", 2, "101", Some("n1"));
    let (req, _) = parse(text.as_bytes(), true).unwrap();
    t.on_request(now, phone, &req);
    let facts = peer_facts(&mut t, now, phone).expect("credited");
    assert_eq!((facts.live_users, facts.kind), (1, PeerKind::Registered));
    assert_eq!(facts.until, now + crate::sip::peers::CREDIT_LIFETIME);
    assert!(!t.peers.is_learned(phone, now), "not learned yet");
    let text = response(401, "c", 2, "REGISTER", &challenge("n2", false));
    let (resp, _) = parse(text.as_bytes(), true).unwrap();
    t.on_response(now, phone, &resp);
    assert_eq!(peer_facts(&mut t, now, phone), None, "a wrong password");
    // Unanswered, it lapses.
    let text = request("REGISTER", "c", 3, "101", Some("n2"));
    let (req, _) = parse(text.as_bytes(), true).unwrap();
    t.on_request(now, phone, &req);
    let later = now + crate::sip::peers::CREDIT_LIFETIME;
    t.prune(later);
    assert_eq!(peer_facts(&mut t, later, phone), None);
    // A flood that never answers a challenge is never credited.
    let flood = ip("203.0.113.77");
    for n in 0..100 {
        let call = format!("f{n}");
        exchange(
            &mut t,
            now,
            flood,
            &request("REGISTER", &call, 1, "101", None),
            &response(401, &call, 1, "REGISTER", &challenge(&call, false)),
        );
    }
    assert_eq!(peer_facts(&mut t, now, flood), None);
}

#[test]
fn a_successful_register_clears_that_username() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let peer = ip("198.51.100.7");
    for n in 0..9 {
        proven_failure(&mut t, now, peer, "1001", n);
    }
    exchange(
        &mut t,
        now,
        peer,
        &request("REGISTER", "ok", 3, "1001", Some("nonce-1001-0")),
        &response(200, "ok", 3, "REGISTER", "Expires: 0\r\n"),
    );
    assert_eq!(t.stats.successes, 1);
    for n in 10..19 {
        assert_eq!(
            proven_failure(&mut t, now, peer, "1001", n),
            None,
            "counting restarted"
        );
    }
}

#[test]
fn an_office_with_a_live_registration_is_judged_per_username() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let office = ip("198.51.100.200");
    // Alice is registered from the office's NAT address.
    exchange(
        &mut t,
        now,
        office,
        &request("REGISTER", "alice", 2, "alice", Some("x")),
        &response(
            200,
            "alice",
            2,
            "REGISTER",
            "Contact: <sip:alice@10.0.0.5>;expires=3600\r\n",
        ),
    );
    // Bob and Carol mistype 9 times each: 18 failures, no ban.
    for n in 0..9 {
        assert_eq!(proven_failure(&mut t, now, office, "bob", n), None);
        assert_eq!(proven_failure(&mut t, now, office, "carol", n), None);
    }
    // Brute force on one username is still stopped.
    let ban = proven_failure(&mut t, now, office, "bob", 99).expect("bob's 10th");
    assert_eq!(ban.reason, BanReason::AuthFailure);
}

#[test]
fn without_a_registration_the_same_typos_ban_the_source() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let peer = ip("198.51.100.201");
    let mut banned = None;
    for n in 0..9 {
        banned = banned.or(proven_failure(&mut t, now, peer, "bob", n));
        banned = banned.or(proven_failure(&mut t, now, peer, "carol", n));
    }
    assert!(banned.is_some(), "10 failures from one source");
}

#[test]
fn registrations_expire() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let start = Instant::now();
    let office = ip("198.51.100.200");
    exchange(
        &mut t,
        start,
        office,
        &request("REGISTER", "a", 2, "alice", Some("x")),
        &response(200, "a", 2, "REGISTER", "Expires: 60\r\n"),
    );
    let later = start + Duration::from_secs(61);
    let mut banned = None;
    for n in 0..5 {
        banned = banned.or(proven_failure(&mut t, later, office, "bob", n));
        banned = banned.or(proven_failure(&mut t, later, office, "carol", n));
    }
    assert!(
        banned.is_some(),
        "the registration lapsed, so the source is judged whole"
    );
}

#[test]
fn whitelisted_sources_are_never_banned() {
    let mut t = Tracker::new(policy(LevelName::Paranoid));
    let now = Instant::now();
    for n in 0..50 {
        assert_eq!(proven_failure(&mut t, now, ip("192.0.2.10"), "x", n), None);
    }
    assert_eq!(t.stats.whitelisted_failures, 50);
    // IPv4-mapped IPv6 is the same address.
    assert_eq!(
        proven_failure(&mut t, now, ip("::ffff:192.0.2.11"), "x", 1),
        None
    );
}

#[test]
fn failures_outside_the_window_do_not_count() {
    let mut t = Tracker::new(policy(LevelName::Weak));
    let start = Instant::now();
    let peer = ip("198.51.100.9");
    for n in 0..19 {
        assert_eq!(proven_failure(&mut t, start, peer, "u", n), None);
    }
    let later = start + Duration::from_secs(601);
    assert_eq!(
        proven_failure(&mut t, later, peer, "u", 50),
        None,
        "the 19 are out of the 10 min window"
    );
}

#[test]
fn repeat_offenders_get_longer_bans_up_to_the_cap() {
    let mut p = policy(LevelName::Paranoid);
    p.escalation_factor = 2;
    p.max_ban = Duration::from_secs(100 * 86_400);
    let mut t = Tracker::new(p);
    let now = Instant::now();
    let peer = ip("198.51.100.9");
    let mut durations = Vec::new();
    for round in 0..4 {
        let mut ban = None;
        for n in 0..3 {
            ban = ban.or(proven_failure(&mut t, now, peer, "u", round * 10 + n));
        }
        durations.push(ban.expect("a ban per round").duration.as_secs() / 86_400);
    }
    assert_eq!(durations, vec![30, 60, 100, 100]);
}

#[test]
fn memory_stays_bounded_under_spoofed_requests() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let text = request("REGISTER", "c", 1, "u", None);
    let (req, _) = parse(text.as_bytes(), true).unwrap();
    let max = Capacities::default().pending;
    for i in 0..(max as u32 + 1000) {
        t.on_request(now, IpAddr::from(i.to_be_bytes()), &req);
    }
    assert_eq!(t.pending.len(), max);
    assert_eq!(t.stats.evicted_pending, 1000);
    assert!(t.pending_by_source.len() <= max);
    t.prune(now + TRANSACTION_TIMEOUT + Duration::from_secs(1));
    assert_eq!(t.pending.len(), 0);
    assert!(t.pending_by_source.is_empty());
}

/// One source holds at most its quota of pending requests; its own oldest
/// make room, nobody else's.
#[test]
fn pending_requests_have_a_per_source_quota() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let other = ip("198.51.100.20");
    let text = request("REGISTER", "other", 1, "u", None);
    let (req, _) = parse(text.as_bytes(), true).unwrap();
    t.on_request(now, other, &req);
    let greedy = ip("198.51.100.21");
    for n in 0..1000 {
        let text = request("REGISTER", &format!("g{n}"), 1, "u", None);
        let (req, _) = parse(text.as_bytes(), true).unwrap();
        t.on_request(now, greedy, &req);
    }
    assert_eq!(
        t.pending.len(),
        Capacities::default().pending_per_source + 1
    );
    assert_eq!(
        t.pending_by_source[&greedy].len(),
        Capacities::default().pending_per_source
    );
    let text = response(404, "other", 1, "REGISTER", "");
    let (resp, _) = parse(text.as_bytes(), true).unwrap();
    t.on_response(now, other, &resp);
    assert_eq!(
        t.stats.unmatched_responses, 0,
        "the other source's request stayed"
    );
}

/// Issue 10's flood, scaled down with the tables: 60,000 spoofed REGISTERs
/// from as many addresses, half answered with a nonce each and half with
/// forged credentials (far more than every table holds), 6,000 between
/// each challenge and guess of a real brute force. The brute force is
/// banned after exactly the level's proven failures.
#[test]
fn a_flood_does_not_push_out_a_real_attackers_evidence() {
    let small = Capacities {
        pending: 2048,
        pending_per_source: 8,
        probation_nonces: 2048,
        protected_nonces: 2048,
        live_sources: 2048,
        suspects: 2048,
        sources: 2048,
        offences: 2048,
    };
    let mut t = Tracker::with_capacities(policy(LevelName::Normal), small);
    let start = Instant::now();
    let attacker = ip("203.0.113.66");
    let mut spoofed = 0u32;
    let mut flood = |t: &mut Tracker, now: Instant, count: u32| {
        for _ in 0..count {
            spoofed += 1;
            let peer = IpAddr::from((0x0a00_0000 + spoofed).to_be_bytes());
            let call = format!("f{spoofed}");
            let nonce = spoofed.is_multiple_of(2).then_some("forged");
            let text = request("REGISTER", &call, 1, "u", nonce);
            let (req, _) = parse(text.as_bytes(), true).unwrap();
            t.on_request(now, peer, &req);
            if spoofed % 4 < 2 {
                let text = response(401, &call, 1, "REGISTER", &challenge(&call, false));
                let (resp, _) = parse(text.as_bytes(), true).unwrap();
                t.on_response(now, peer, &resp);
            }
        }
    };
    let mut ban = None;
    for n in 0..10u32 {
        let now = start + Duration::from_millis(u64::from(n) * 500);
        assert_eq!(ban, None, "banned after {n}");
        let call = format!("real-{n}");
        let nonce = format!("real-nonce-{n}");
        exchange(
            &mut t,
            now,
            attacker,
            &request("REGISTER", &call, 1, "1001", None),
            &response(401, &call, 1, "REGISTER", &challenge(&nonce, false)),
        );
        // The first guess follows at once; later ones after 6,000 spoofed
        // requests, which churn the probation nonces three times over.
        if n > 0 {
            flood(&mut t, now, 6_000);
        }
        ban = exchange(
            &mut t,
            now,
            attacker,
            &request("REGISTER", &call, 2, "1001", Some(&nonce)),
            &response(401, &call, 2, "REGISTER", &challenge("again", false)),
        );
    }
    let ban = ban.expect("banned after the level's 10 proven failures");
    assert!(ban.proven);
    assert_eq!(ban.failures_in_window, 10);
    let stats = &t.stats;
    assert!(
        stats.evicted_nonces > 2048 && stats.evicted_pending > 2048,
        "{stats:?}"
    );
    assert!(
        stats.evicted_sources > 2048,
        "the flood filled the suspects: {stats:?}"
    );
    assert!(t.tracked_sources() <= 4096);
    assert!(t.pending.len() <= 2048);
}

/// Without the protected tier the same flood would have cost the proof:
/// a nonce issued to an address that never echoed one is churned out.
#[test]
fn probation_nonces_are_churned_by_a_flood() {
    let small = Capacities {
        probation_nonces: 16,
        ..Capacities::default()
    };
    let mut t = Tracker::with_capacities(policy(LevelName::Normal), small);
    let now = Instant::now();
    let peer = ip("203.0.113.67");
    let text = response(401, "c", 1, "REGISTER", &challenge("mine", false));
    let (resp, _) = parse(text.as_bytes(), true).unwrap();
    t.on_response(now, peer, &resp);
    for i in 0..16u32 {
        let text = response(401, "c", 1, "REGISTER", &challenge("spoof", false));
        let (resp, _) = parse(text.as_bytes(), true).unwrap();
        t.on_response(now, IpAddr::from(i.to_be_bytes()), &resp);
    }
    let unproven = exchange(
        &mut t,
        now,
        peer,
        &request("REGISTER", "c", 2, "u", Some("mine")),
        &response(401, "c", 2, "REGISTER", &challenge("next", false)),
    );
    assert_eq!(unproven, None);
    assert!(t.sources.is_empty(), "the failure could not be proven");
}

/// Forged failures cannot fill the ban map: unproven bans stop at the
/// budget, proven ones do not, and the budget refills over the ban time.
#[test]
fn unproven_bans_are_capped_proven_ones_are_not() {
    let mut p = policy(LevelName::Paranoid);
    p.unproven_ban_budget = 2;
    let mut t = Tracker::new(p);
    let now = Instant::now();
    let mut banned = 0;
    for victim in 1..=4u8 {
        let peer = IpAddr::from([198, 51, 100, victim]);
        for n in 0..9 {
            banned += unproven_failure(&mut t, now, peer, "u", n).is_some() as u32;
        }
    }
    assert_eq!(banned, 2);
    assert_eq!(t.stats.unproven_bans_refused, 2);
    let attacker = ip("203.0.113.5");
    let mut ban = None;
    for n in 0..3 {
        ban = proven_failure(&mut t, now, attacker, "1001", n);
    }
    assert!(ban.is_some_and(|b| b.proven), "a proven ban is always made");
    // One ban time later the budget is back.
    let later = now + LevelName::Paranoid.level().ban;
    let peer = ip("198.51.100.9");
    let mut again = None;
    for n in 0..9 {
        again = again.or(unproven_failure(&mut t, later, peer, "u", n));
    }
    assert!(again.is_some());
}

/// A REGISTER challenged, then retried with the PBX's nonce from `peer`
/// and answered `code` (with `extra` headers).
fn register_with_nonce(
    t: &mut Tracker,
    now: Instant,
    peer: IpAddr,
    user: &str,
    code: u16,
    extra: &str,
) {
    let call = format!("reg-{user}");
    let nonce = format!("nonce-{user}");
    exchange(
        t,
        now,
        peer,
        &request("REGISTER", &call, 1, user, None),
        &response(401, &call, 1, "REGISTER", &challenge(&nonce, false)),
    );
    exchange(
        t,
        now,
        peer,
        &request("REGISTER", &call, 2, user, Some(&nonce)),
        &response(code, &call, 2, "REGISTER", extra),
    );
}

fn peer_facts(t: &mut Tracker, now: Instant, peer: IpAddr) -> Option<crate::sip::peers::PeerFacts> {
    t.peers
        .list(now)
        .into_iter()
        .find(|(source, _)| *source == peer)
        .map(|(_, facts)| facts)
}

#[test]
fn an_authenticated_registration_makes_a_peer_per_live_user() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let office = ip("198.51.100.20");
    for user in ["101", "102", "103"] {
        register_with_nonce(&mut t, now, office, user, 200, "Expires: 120\r\n");
    }
    let facts = peer_facts(&mut t, now, office).expect("a peer");
    assert_eq!(facts.kind, PeerKind::Registered);
    assert_eq!(facts.live_users, 3);
    assert_eq!(facts.until, now + Duration::from_secs(120));
    let changes = t.peers.take_changes(now);
    assert_eq!(changes.len(), 1, "one source: {changes:?}");
    assert_eq!(changes[0].entry, Some(facts));
    // Expires: 0 unregisters that user only; the last one ends the peer.
    register_with_nonce(&mut t, now, office, "101", 200, "Expires: 0\r\n");
    assert_eq!(peer_facts(&mut t, now, office).unwrap().live_users, 2);
    register_with_nonce(&mut t, now, office, "102", 200, "Expires: 0\r\n");
    register_with_nonce(&mut t, now, office, "103", 200, "Expires: 0\r\n");
    assert_eq!(peer_facts(&mut t, now, office), None);
    let changes = t.peers.take_changes(now);
    assert_eq!(changes.last().map(|c| c.entry), Some(None), "{changes:?}");
    // Registrations lapse on their own too.
    register_with_nonce(&mut t, now, office, "104", 200, "Expires: 60\r\n");
    t.prune(now + Duration::from_secs(61));
    assert_eq!(
        peer_facts(&mut t, now + Duration::from_secs(61), office),
        None
    );
}

#[test]
fn no_free_peers() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let attacker = ip("203.0.113.66");
    // A 2xx to a request without credentials.
    exchange(
        &mut t,
        now,
        attacker,
        &request("REGISTER", "c1", 1, "101", None),
        &response(200, "c1", 1, "REGISTER", "Expires: 3600\r\n"),
    );
    // Failures and provisional answers.
    register_with_nonce(&mut t, now, attacker, "102", 401, &challenge("n2", false));
    register_with_nonce(&mut t, now, attacker, "103", 403, "");
    register_with_nonce(&mut t, now, attacker, "104", 100, "");
    // Credentials replayed from another address: the nonce was issued to
    // the phone, not to the attacker.
    let phone = ip("198.51.100.21");
    exchange(
        &mut t,
        now,
        phone,
        &request("REGISTER", "p1", 1, "105", None),
        &response(401, "p1", 1, "REGISTER", &challenge("phone-nonce", false)),
    );
    exchange(
        &mut t,
        now,
        attacker,
        &request("REGISTER", "p1", 2, "105", Some("phone-nonce")),
        &response(200, "p1", 2, "REGISTER", "Expires: 3600\r\n"),
    );
    // A 2xx that matches no request of the source (forged or unread).
    let text = response(200, "nothing", 9, "REGISTER", "Expires: 3600\r\n");
    let (answer, _) = parse(text.as_bytes(), true).unwrap();
    t.on_response(now, attacker, &answer);
    // An authenticated OPTIONS is not a call.
    exchange(
        &mut t,
        now,
        attacker,
        &request("OPTIONS", "o1", 1, "106", None),
        &response(401, "o1", 1, "OPTIONS", &challenge("n6", false)),
    );
    exchange(
        &mut t,
        now,
        attacker,
        &request("OPTIONS", "o1", 2, "106", Some("n6")),
        &response(200, "o1", 2, "OPTIONS", ""),
    );
    assert!(t.peers.is_empty(), "{:?}", t.peers.list(now));
    // Challenges answered were credited, until the PBX's answer.
    let changes = t.peers.take_changes(now);
    assert!(changes.iter().all(|c| c.entry.is_none()), "{changes:?}");
}

#[test]
fn an_authenticated_call_keeps_a_peer_for_the_idle_time() {
    let mut p = policy(LevelName::Normal);
    p.peer_idle = Duration::from_secs(300);
    let mut t = Tracker::new(p);
    let now = Instant::now();
    let trunk = ip("198.51.100.22");
    exchange(
        &mut t,
        now,
        trunk,
        &request("INVITE", "i1", 1, "200", None),
        &response(
            407,
            "i1",
            1,
            "INVITE",
            &challenge("inv", false).replace("WWW", "Proxy"),
        ),
    );
    exchange(
        &mut t,
        now,
        trunk,
        &request("INVITE", "i1", 2, "200", Some("inv")),
        &response(200, "i1", 2, "INVITE", ""),
    );
    let facts = peer_facts(&mut t, now, trunk).expect("a call peer");
    assert_eq!(facts.kind, PeerKind::Call);
    assert_eq!(facts.live_users, 0);
    assert_eq!(facts.until, now + Duration::from_secs(300));
    let later = now + Duration::from_secs(301);
    t.prune(later);
    assert_eq!(peer_facts(&mut t, later, trunk), None);
}

#[test]
fn the_pbx_registering_to_a_provider_makes_it_a_peer() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let provider = ip("203.0.113.10");
    let ours_text = request("REGISTER", "up", 1, "trunk", None);
    let (ours, _) = parse(ours_text.as_bytes(), true).unwrap();
    // A 2xx before the PBX asked, or from another address, makes nothing.
    let answer_text = response(200, "up", 1, "REGISTER", "Expires: 600\r\n");
    let (answer, _) = parse(answer_text.as_bytes(), true).unwrap();
    t.on_answer_to_pbx(now, provider, &answer);
    assert!(t.peers.is_empty());
    t.on_pbx_request(now, provider, &ours);
    t.on_answer_to_pbx(now, ip("203.0.113.11"), &answer);
    assert!(t.peers.is_empty());
    // The provider's 2xx to the PBX's REGISTER.
    t.on_answer_to_pbx(now, provider, &answer);
    let facts = peer_facts(&mut t, now, provider).expect("a provider peer");
    assert_eq!(facts.kind, PeerKind::Provider);
    assert_eq!(facts.until, now + Duration::from_secs(600));
}
