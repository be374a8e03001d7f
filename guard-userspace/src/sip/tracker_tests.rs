use std::net::IpAddr;

use super::*;
use crate::sip::parser::parse;

fn policy(level: LevelName) -> AuthPolicy {
    AuthPolicy {
        level: level.level(),
        unproven_multiplier: 3,
        enumeration_usernames: 5,
        whitelist: vec!["192.0.2.0/24".parse().unwrap()],
        escalation_factor: 1,
        max_ban: Duration::from_secs(30 * 86_400),
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
        .all(|f| f.username == "1001" && f.status == 401));
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
    for (call, cseq, method, to) in [
        ("m2", 5, "REGISTER", peer),
        ("m1", 6, "REGISTER", peer),
        ("m1", 5, "INVITE", peer),
        ("m1", 5, "REGISTER", ip("198.51.100.8")),
    ] {
        let text = response(403, call, cseq, method, "");
        let (resp, _) = parse(text.as_bytes(), true).unwrap();
        assert_eq!(t.on_response(now, to, &resp), None);
    }
    assert_eq!(t.stats.failures, 0);
    assert_eq!(t.stats.unmatched_responses, 4);
    // A response with no request at all is unmatched too.
    let text = response(403, "never", 1, "REGISTER", "");
    let (resp, _) = parse(text.as_bytes(), true).unwrap();
    t.on_response(now, peer, &resp);
    assert_eq!(t.stats.unmatched_responses, 5);
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

#[test]
fn unproven_enumeration_needs_three_times_the_usernames() {
    let mut t = Tracker::new(policy(LevelName::Normal));
    let now = Instant::now();
    let peer = ip("203.0.113.50");
    for n in 0..14 {
        assert_eq!(
            unproven_failure(&mut t, now, peer, &format!("{}", 200 + n), n),
            None
        );
    }
    let ban = unproven_failure(&mut t, now, peer, "214", 14).expect("15 usernames");
    assert_eq!(ban.reason, BanReason::Enumeration);
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
    for i in 0..(MAX_PENDING as u32 + 1000) {
        t.on_request(now, IpAddr::from(i.to_be_bytes()), &req);
    }
    assert!(t.pending.len() <= MAX_PENDING);
    t.prune(now + TRANSACTION_TIMEOUT + Duration::from_secs(1));
    assert!(t.pending.is_empty());
}
