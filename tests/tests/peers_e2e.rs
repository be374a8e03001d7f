//! Learned peers and extension scans end to end (issue 11): Debian's
//! Kamailio as registrar (`peers/kamailio.cfg`) with `sipguard run`
//! watching its veth in the PBX's namespace, and real clients in the other:
//! sipp as phones (100 of them from one address), svwar as a scanner
//! disguised with a phone's User-Agent, and raw UDP for floods, replays and
//! forged answers. Every test's traffic is bounded; namespaces (prefixed
//! `pe`) are deleted on drop. Needs root (`cargo xtask test`).
use std::{collections::BTreeSet, net::UdpSocket, time::Duration};

use guard_common::{BanReason, PeerKind, Reason, SourceKey};
use guard_userspace::{clock::monotonic_ns, sip::parser};
use sipguard_tests::{
    daemon::TempFile,
    kamailio::{
        peers, register, send, sipp_totals, KamailioSetup, Pbx, ATTACKER, PASSWORD, PBX, PHONE,
    },
    metrics,
};

const PHONE_IP: [u8; 4] = [10, 78, 0, 2];
const ATTACKER_IP: [u8; 4] = [10, 78, 0, 4];

/// The built-in rate rules (120 in 60 s and 40 in 2 s on SIP/UDP), the
/// normal level, the fingerprints on (a disguised scanner gets past them).
const CONFIG: &str = "[sip_auth]\nlevel = \"normal\"\n[sip_scanners]\nenabled = true\n";

fn key(ip: [u8; 4]) -> SourceKey {
    SourceKey::from_ipv4(ip)
}

/// Gives the controller a moment to read the ring buffer and act.
fn settle() {
    std::thread::sleep(Duration::from_millis(500));
}

/// Sends `count` requests from `source` (one socket) as fast as it can,
/// then counts the final answers that come back within 1 s of silence.
fn flood(pbx: &Pbx, source: &'static str, count: u32, request: fn(u32) -> String) -> u32 {
    pbx.link
        .left
        .run_in(move || {
            let socket = UdpSocket::bind((source, 0)).expect("binding the flooder");
            socket
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            for n in 0..count {
                socket
                    .send_to(request(n).as_bytes(), (PBX, 5060))
                    .expect("sending");
            }
            let mut buf = [0u8; 4096];
            let mut answers = 0;
            while let Ok(len) = socket.recv(&mut buf) {
                let final_answer = parser::parse(&buf[..len], true)
                    .ok()
                    .and_then(|(m, _)| m.status())
                    .is_some_and(|s| s >= 200);
                answers += final_answer as u32;
            }
            answers
        })
        .join()
        .expect("flood thread")
        .expect("client namespace")
}

fn options(source: &str, n: u32) -> String {
    format!(
        "OPTIONS sip:{PBX} SIP/2.0\r\nVia: SIP/2.0/UDP {source}:5080;branch=z9hG4bK-o{n};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:1001@{PBX}>;tag=o{n}\r\nTo: <sip:{PBX}>\r\nCall-ID: opt-{n}@{source}\r\n\
CSeq: 1 OPTIONS\r\nUser-Agent: flooder\r\nContent-Length: 0\r\n\r\n"
    )
}

fn options_from_attacker(n: u32) -> String {
    options(ATTACKER, n)
}

fn options_from_phone(n: u32) -> String {
    options(PHONE, n)
}

fn register_from_attacker(n: u32) -> String {
    register(ATTACKER, &format!("flood-{n}"), 1, None)
}

/// The kernel's ban on `ip`, if any.
fn ban_reason(pbx: &Pbx, ip: [u8; 4]) -> Option<u16> {
    pbx.ban(ip).map(|b| b.reason)
}

/// `users` phones from PHONE, one socket each (as behind a NAT), all
/// registering within one second. Returns (successful, failed).
fn boot_storm(pbx: &Pbx, first: u32, users: u32) -> (u32, u32) {
    let mut csv = String::from("SEQUENTIAL\n");
    for user in first..first + users {
        csv.push_str(&format!(
            "{user};[authentication username={user} password={PASSWORD}]\n"
        ));
    }
    let inf = TempFile::new("peers-users.csv", &csv);
    let output = pbx
        .link
        .left
        .command("timeout")
        .args(["60", "sipp", &format!("{PBX}:5060"), "-sf"])
        .arg(peers().join("register-users.xml"))
        .args([
            "-inf",
            inf.path(),
            "-i",
            PHONE,
            "-t",
            "un",
            "-max_socket",
            "512",
        ])
        .args(["-m", &users.to_string(), "-l", &users.to_string()])
        .args(["-r", &users.to_string(), "-rp", "1000", "-nostdin"])
        .args(["-timeout", "30s", "-recv_timeout", "5000"])
        .output()
        .expect("running sipp (apt-get install sip-tester)");
    sipp_totals(&String::from_utf8_lossy(&output.stdout))
}

/// Issue 11 item 3: 100 phones behind one address register within one
/// second before any is learned (200 requests, five times the 40-in-2-s
/// rule): not banned, since each phone answering its challenge credits the
/// address and each 2xx makes it a registration. A flood of
/// unauthenticated REGISTERs from an unknown address is still cut at 40.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_boot_storm_of_100_phones_is_not_banned_an_unauthenticated_flood_is() {
    let mut pbx = Pbx::start("peboot", CONFIG);
    assert_eq!(boot_storm(&pbx, 2000, 100), (100, 0), "{}", pbx.guard.log());
    settle();
    assert_eq!(ban_reason(&pbx, PHONE_IP), None, "{}", pbx.guard.log());
    let maps = pbx.maps();
    assert_eq!(maps.verdict(Reason::RateLimited).unwrap().packets, 0);
    assert!(
        maps.verdict(Reason::Passed).unwrap().packets >= 200,
        "every request passed"
    );
    let peer = maps.peer(&key(PHONE_IP)).unwrap().expect("a learned peer");
    assert_eq!(peer.live_users, 100);
    assert_eq!(peer.kind, PeerKind::Registered as u16);

    // 100 unauthenticated REGISTERs for one user from an unknown address,
    // answering no challenge: cut at the normal limit.
    let answered = flood(&pbx, ATTACKER, 100, register_from_attacker);
    assert!(answered <= 40, "{answered} answered");
    settle();
    assert_eq!(
        ban_reason(&pbx, ATTACKER_IP),
        Some(BanReason::RateLimit as u16)
    );
    assert!(maps.peer(&key(ATTACKER_IP)).unwrap().is_none());
    assert!(pbx.guard.stop().unwrap().success());
}

/// Issue 11 "Floods": an unknown source flooding OPTIONS is cut at 40 in
/// 2 s; a peer (one live registration: a budget of 2 x each limit)
/// flooding 10 times its budget is banned, and the ban's log line names
/// the registration it cut.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn floods_are_cut_at_the_limit_or_the_peers_budget() {
    let mut pbx = Pbx::start("peflood", CONFIG);
    let answered = flood(&pbx, ATTACKER, 100, options_from_attacker);
    assert!(answered <= 40, "{answered} answered");
    settle();
    assert_eq!(
        ban_reason(&pbx, ATTACKER_IP),
        Some(BanReason::RateLimit as u16)
    );

    assert_eq!(pbx.sipp(PHONE, "register.xml", "1001", PASSWORD, 1), (1, 0));
    settle();
    let peer = pbx.maps().peer(&key(PHONE_IP)).unwrap().expect("a peer");
    assert_eq!(peer.live_users, 1);
    // Budget: 80 in 2 s; ten times that.
    let answered = flood(&pbx, PHONE, 800, options_from_phone);
    assert!(
        answered > 40 && answered <= 80,
        "{answered} answered: more than a stranger's 40, at most the budget"
    );
    let line = pbx
        .guard
        .wait_for("banned 10.78.0.2", Duration::from_secs(5))
        .unwrap();
    assert!(line.contains("rate-limit"), "{line}");
    assert!(line.contains("cut 1 live registration: 1001"), "{line}");
    assert_eq!(
        ban_reason(&pbx, PHONE_IP),
        Some(BanReason::RateLimit as u16)
    );
    assert!(pbx.guard.stop().unwrap().success());
}

/// Issue 11 "No free peers": credentials replayed from another address
/// (Kamailio accepts them: its nonces are not bound to an address), and a
/// 2xx the PBX did not send (forged by the client), make no peer.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn replayed_credentials_and_forged_answers_make_no_peer() {
    let mut pbx = Pbx::start("pefree", CONFIG);
    // The phone registers 1001: challenge, then credentials.
    let phone_register = pbx
        .link
        .left
        .run_in(|| {
            let socket = UdpSocket::bind((PHONE, 5070)).expect("binding the phone");
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let (status, nonce) =
                send(&socket, register(PHONE, "phone-1", 1, None).as_bytes()).expect("answer");
            assert_eq!(status, 401);
            let nonce = nonce.expect("a nonce");
            let text = register(PHONE, "phone-1", 2, Some((&nonce, PASSWORD)));
            let (status, _) = send(&socket, text.as_bytes()).expect("answer");
            assert_eq!(status, 200);
            text
        })
        .join()
        .unwrap()
        .unwrap();
    settle();
    assert!(pbx.maps().peer(&key(PHONE_IP)).unwrap().is_some());

    // The attacker replays the phone's credentials from its own address.
    let replayed = pbx
        .link
        .left
        .run_in(move || {
            let socket = UdpSocket::bind((ATTACKER, 5070)).expect("binding the attacker");
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let text = phone_register
                .replace("CSeq: 2", "CSeq: 3")
                .replace(&format!("{PHONE}:5070"), &format!("{ATTACKER}:5070"));
            send(&socket, text.as_bytes()).map(|(status, _)| status)
        })
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(replayed, Some(200), "Kamailio takes the replay");

    // A 2xx forged by the attacker itself, for its own REGISTER.
    pbx.link
        .left
        .run_in(|| {
            let socket = UdpSocket::bind((ATTACKER, 5071)).expect("binding the attacker");
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let text = register(ATTACKER, "forged-1", 1, None);
            assert_eq!(send(&socket, text.as_bytes()).map(|a| a.0), Some(401));
            let forged = format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {ATTACKER}:5071;branch=z9hG4bK-forged-1-1\r\n\
From: <sip:1001@{PBX}>;tag=forged-1\r\nTo: <sip:1001@{PBX}>;tag=x\r\nCall-ID: forged-1\r\n\
CSeq: 1 REGISTER\r\nContact: <sip:1001@{ATTACKER}:5071>;expires=3600\r\n\
Content-Length: 0\r\n\r\n"
            );
            socket.send_to(forged.as_bytes(), (PBX, 5060)).unwrap();
        })
        .join()
        .unwrap()
        .unwrap();
    settle();
    assert!(
        pbx.maps().peer(&key(ATTACKER_IP)).unwrap().is_none(),
        "{}",
        pbx.guard.log()
    );
    // Without a budget of its own, its flood is cut at the normal limit.
    let answered = flood(&pbx, ATTACKER, 100, options_from_attacker);
    assert!(answered <= 40, "{answered} answered");
    assert!(pbx.guard.stop().unwrap().success());
}

/// Issue 11 "Restart": the learned peers are saved in the state directory
/// and come back with their remaining time in a new guard with new maps
/// (as after a reboot), so the office keeps its budget.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_restart_keeps_the_learned_peers() {
    let mut pbx = Pbx::start("perest", CONFIG);
    assert_eq!(pbx.sipp(PHONE, "register.xml", "1002", PASSWORD, 1), (1, 0));
    settle();
    assert!(pbx.maps().peer(&key(PHONE_IP)).unwrap().is_some());
    let old_program = pbx.maps().peer(&key(PHONE_IP)).unwrap().unwrap();

    pbx.restart_guard();
    pbx.guard
        .wait_for("saved learned peers", Duration::from_secs(10))
        .unwrap();
    settle();
    let peer = pbx
        .maps()
        .peer(&key(PHONE_IP))
        .unwrap()
        .expect("restored into the new maps");
    assert_eq!(peer.live_users, 1);
    assert_eq!(peer.kind, PeerKind::Registered as u16);
    let left_s = peer.expires_ns.saturating_sub(monotonic_ns()) / 1_000_000_000;
    assert!(
        (200..=301).contains(&left_s),
        "{left_s} s left of sipp's 300 (was {old_program:?})"
    );
    // The budget is back: 60 requests in a moment (a stranger's limit is 40).
    let answered = flood(&pbx, PHONE, 60, options_from_phone);
    assert_eq!(answered, 60);
    settle();
    assert_eq!(ban_reason(&pbx, PHONE_IP), None, "{}", pbx.guard.log());
    assert!(pbx.guard.stop().unwrap().success());
}

/// svwar (Debian's sipvicious 0.3.3) as a phone (its User-Agent
/// svwar (Debian's sipvicious 0.3.3) as a phone (its User-Agent
/// rewritten) probing 100-199 with `method` from ATTACKER, 10 requests a
/// second. Returns its output.
fn svwar_as_phone(pbx: &Pbx, method: &str) -> String {
    let prefer = |address: &str| {
        pbx.link
            .left
            .ip(&[
                "route",
                "replace",
                "10.78.0.0/24",
                "dev",
                pbx.link.left_if.as_str(),
                "src",
                address,
            ])
            .expect("the route's preferred source");
    };
    // Debian's svwar takes `-b` but binds to any address.
    prefer(ATTACKER);
    let out = pbx
        .link
        .left
        .command("timeout")
        .args(["40", "python3"])
        .arg(peers().join("svwar-as-phone.py"))
        .args([
            "-b", ATTACKER, "-x", ATTACKER, "-p", "5060", "-e", "100-199", "-m", method,
        ])
        // Paced at about 4 names a second: the ban is in the kernel within a
        // few ms of the fifth answer (bench: p99 2.4 ms), so a sixth name can
        // reach Kamailio only if a loaded CI machine stalls the controller
        // for a quarter of a second.
        .args(["--force", "--maximumtime", "15", "-t", "0.25", PBX])
        .output()
        .expect("running svwar (apt-get install sipvicious)");
    prefer(PHONE);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The usernames Kamailio saw `method` requests for from `source`.
fn names_seen(pbx: &Pbx, method: &str, source: &str) -> BTreeSet<String> {
    pbx.kamailio
        .log()
        .lines()
        .filter(|l| l.contains(&format!("sipguard-test: {method} for [")))
        .filter(|l| l.contains(&format!("from {source}:")))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next().map(str::to_string))
        .collect()
}

/// A probe of extension `ext` by `method` from `source`:5090, with a
/// phone's User-Agent (From and To name it, as svwar's probes do).
fn probe(method: &str, source: &str, ext: u32) -> String {
    let uri = match method {
        "REGISTER" => format!("sip:{PBX}"),
        _ => format!("sip:{ext}@{PBX}"),
    };
    let event = match method {
        "SUBSCRIBE" => "Event: presence\r\n",
        _ => "",
    };
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {source}:5090;branch=z9hG4bK-s{ext};rport\r\n\
Max-Forwards: 70\r\nFrom: \"{ext}\"<sip:{ext}@{PBX}>;tag=s{ext}\r\nTo: \"{ext}\"<sip:{ext}@{PBX}>\r\n\
Call-ID: scan-{ext}\r\nCSeq: 1 {method}\r\nContact: <sip:{ext}@{source}:5090>\r\n{event}\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A scan that goes on whatever it hears: `method` probes for `first`,
/// `first` + 1, ... from one socket of `source`, each sent 20 ms after the
/// last was answered (or 300 ms passed without an answer), as a scanner a
/// round trip away on the Internet sends them; it stops after `give_up`
/// unanswered ones in a row. Returns how many were answered. (A scanner on
/// the PBX's own LAN, firing at once, can learn a name or two more while
/// the controller writes the ban; the rate rules still cap it.)
fn persistent_scan(
    pbx: &Pbx,
    method: &'static str,
    source: &'static str,
    first: u32,
    give_up: u32,
) -> u32 {
    pbx.link
        .left
        .run_in(move || {
            let socket = UdpSocket::bind((source, 5090)).expect("binding the scanner");
            socket
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let (mut answered, mut silent) = (0, 0);
            for ext in first..first + 100 {
                std::thread::sleep(Duration::from_millis(20));
                match send(&socket, probe(method, source, ext).as_bytes()) {
                    Some(_) => (answered, silent) = (answered + 1, 0),
                    None => silent += 1,
                }
                if silent == give_up {
                    break;
                }
            }
            answered
        })
        .join()
        .expect("scanner thread")
        .expect("client namespace")
}

/// How Kamailio (`peers/kamailio.cfg`) answers the probes of a scan.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answers {
    /// 404 for an unknown username, a challenge for a known one.
    NotFound,
    /// A challenge for every username alike.
    Alike,
}

/// Kamailio for a scan by `method`: every method answered as REGISTER is
/// (`PROBE_METHODS`), unknown users as `answers` says.
fn scanned_pbx(tag: &str, method: &str, answers: Answers) -> Pbx {
    let mut defines = Vec::new();
    if method != "REGISTER" {
        defines.push("PROBE_METHODS".to_string());
    }
    if answers == Answers::Alike {
        defines.push("CHALLENGE_ALL".to_string());
    }
    Pbx::start_with(
        tag,
        CONFIG,
        KamailioSetup {
            defines,
            ..KamailioSetup::default()
        },
    )
}

/// The challenge Kamailio answers a known user's `method` with.
fn challenge(method: &str) -> u16 {
    if method == "REGISTER" {
        401
    } else {
        407
    }
}

/// The attacker is banned as `enumeration` on the unproven evidence of its
/// five probes, whose last user:status pairs end with `evidence`; Kamailio
/// saw five names from it, the kernel dropped the rest, and the phone on
/// the same network still registers. Stops the guard.
fn assert_scan_banned(mut pbx: Pbx, method: &str, evidence: &str, output: &str) {
    let line = pbx
        .guard
        .wait_for("banned 10.78.0.4", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\nscanner:\n{output}"));
    assert!(line.contains("enumeration, 5 failures"), "{line}");
    assert!(line.contains("(unproven)"), "{line}");
    assert!(line.contains(evidence), "{line}\nexpected ...{evidence}");
    assert_eq!(
        ban_reason(&pbx, ATTACKER_IP),
        Some(BanReason::Enumeration as u16)
    );
    let seen = names_seen(&pbx, method, ATTACKER);
    assert_eq!(
        seen.len(),
        5,
        "Kamailio answered {} usernames: {seen:?}\n{output}",
        seen.len()
    );
    let maps = pbx.maps();
    assert!(
        maps.verdict(Reason::Banned).unwrap().packets > 0,
        "{output}"
    );
    assert_eq!(
        maps.verdict(Reason::Scanner).unwrap().packets,
        0,
        "a phone's User-Agent gets past the fingerprints"
    );
    // The metrics count the probes and the ban.
    let text = metrics::scrape(&pbx.link.right, metrics::DEFAULT_ADDRESS).unwrap();
    let probes = metrics::value(&text, "sipguard_sip_probes_total");
    assert!(probes >= Some(5), "{probes:?} probes\n{text}");
    assert_eq!(
        metrics::value(&text, "sipguard_bans_created_total{reason=\"enumeration\"}"),
        Some(1),
        "{text}"
    );
    // The phone on the same network still registers.
    assert_eq!(pbx.sipp(PHONE, "register.xml", "1001", PASSWORD, 1), (1, 0));
    assert_eq!(ban_reason(&pbx, PHONE_IP), None);
    assert!(pbx.guard.stop().unwrap().success());
}

/// svwar's scan by `method` (REGISTER, INVITE or OPTIONS: the three it
/// knows) is banned within five usernames.
fn svwar_scan_is_banned_within_five_usernames(tag: &str, method: &'static str, answers: Answers) {
    let pbx = scanned_pbx(tag, method, answers);
    let output = svwar_as_phone(&pbx, method);
    if answers == Answers::Alike {
        // svwar gives up when every name is answered alike (its first
        // probe and 100, two names): it learned nothing. A scan that goes
        // on regardless is banned at its fifth name.
        assert!(output.contains("found nothing"), "{output}");
        let answered = persistent_scan(&pbx, method, ATTACKER, 100, 3);
        assert!(answered <= 4, "{answered} more names answered");
    } else {
        // svwar's own probe (a random number, 404), then 100-103: it
        // learned four extensions exist, and never got an answer for a
        // sixth name.
        for ext in 100..104 {
            assert!(output.contains(&format!("{ext}")), "{ext}: {output}");
        }
        assert!(!names_seen(&pbx, method, ATTACKER).contains("104"));
    }
    let c = challenge(method);
    let evidence = format!("100:{c} 101:{c} 102:{c} 103:{c}");
    assert_scan_banned(pbx, method, &evidence, &output);
}

/// Issue 11 item 4, against a PBX that answers 404 for unknown users (svwar
/// learns 100-103 exist from their 401s, then the ban drops its sixth name).
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn an_extension_scan_is_banned_within_five_usernames_404() {
    svwar_scan_is_banned_within_five_usernames("pe404", "REGISTER", Answers::NotFound);
}

/// ... and against one that challenges every username alike.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn an_extension_scan_is_banned_within_five_usernames_alike() {
    svwar_scan_is_banned_within_five_usernames("pealike", "REGISTER", Answers::Alike);
}

/// The probes may be INVITEs (`svwar -m INVITE`: 407 for 100-103)...
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn an_invite_scan_is_banned_within_five_usernames_404() {
    svwar_scan_is_banned_within_five_usernames("peinv404", "INVITE", Answers::NotFound);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn an_invite_scan_is_banned_within_five_usernames_alike() {
    svwar_scan_is_banned_within_five_usernames("peinvalk", "INVITE", Answers::Alike);
}

/// ... or OPTIONS (`svwar -m OPTIONS`)...
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn an_options_scan_is_banned_within_five_usernames_404() {
    svwar_scan_is_banned_within_five_usernames("peopt404", "OPTIONS", Answers::NotFound);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn an_options_scan_is_banned_within_five_usernames_alike() {
    svwar_scan_is_banned_within_five_usernames("peoptalk", "OPTIONS", Answers::Alike);
}

/// sipp scanning `names` by SUBSCRIBE (`peers/subscribe-scan.xml`) from
/// ATTACKER:5090, 10 names a second, one at a time. Returns (answered,
/// unanswered) and its output.
fn sipp_subscribe_scan(pbx: &Pbx, names: std::ops::Range<u32>) -> ((u32, u32), String) {
    let csv: String = std::iter::once("SEQUENTIAL\n".to_string())
        .chain(names.clone().map(|n| format!("{n}\n")))
        .collect();
    let inf = TempFile::new("subscribe-scan.csv", &csv);
    let calls = names.len().to_string();
    let output = pbx
        .link
        .left
        .command("timeout")
        .args(["60", "sipp", &format!("{PBX}:5060"), "-sf"])
        .arg(peers().join("subscribe-scan.xml"))
        .args(["-inf", inf.path(), "-i", ATTACKER, "-p", "5090", "-t", "u1"])
        // Paced as svwar is above.
        .args(["-m", &calls, "-l", "1", "-r", "4", "-nostdin", "-nr"])
        .args(["-timeout", "30s", "-recv_timeout", "1000"])
        .output()
        .expect("running sipp (apt-get install sip-tester)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (sipp_totals(&stdout), stdout)
}

/// ... or SUBSCRIBEs (sipp, one socket, a phone's User-Agent) for
/// 197-206: 197-199 exist (407), 200-206 do not (404). Banned at the
/// answer for 201, the fifth name.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_subscribe_scan_is_banned_within_five_usernames_404() {
    let pbx = scanned_pbx("pesub404", "SUBSCRIBE", Answers::NotFound);
    let (totals, output) = sipp_subscribe_scan(&pbx, 197..207);
    assert_eq!(totals, (5, 5), "answered, unanswered\n{output}");
    let evidence = "197:407 198:407 199:407 200:404 201:404";
    assert_scan_banned(pbx, "SUBSCRIBE", evidence, &output);
}

/// ... with a PBX that challenges every username alike (407 for 300-309,
/// which do not exist).
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_subscribe_scan_is_banned_within_five_usernames_alike() {
    let pbx = scanned_pbx("pesubalk", "SUBSCRIBE", Answers::Alike);
    let (totals, output) = sipp_subscribe_scan(&pbx, 300..310);
    assert_eq!(totals, (5, 5), "answered, unanswered\n{output}");
    let evidence = "300:407 301:407 302:407 303:407 304:407";
    assert_scan_banned(pbx, "SUBSCRIBE", evidence, &output);
}

/// ... and against one that answers nothing for unknown usernames: the
/// scanner learns nothing, and its unanswered probes count once 2 s have
/// passed without an answer (a slow PBX is not the source's fault), so the
/// ban comes a few names later, with "none" as their answers.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn an_extension_scan_of_a_silent_pbx_is_banned() {
    let mut pbx = Pbx::start_with(
        "pesilent",
        CONFIG,
        KamailioSetup {
            defines: vec!["SILENT_UNKNOWN".into()],
            ..KamailioSetup::default()
        },
    );
    // 300-319 do not exist: about 6 s of probes, 20 at most.
    assert_eq!(persistent_scan(&pbx, "REGISTER", ATTACKER, 300, 20), 0);
    let line = pbx
        .guard
        .wait_for("banned 10.78.0.4", Duration::from_secs(5))
        .unwrap();
    assert!(line.contains("enumeration"), "{line}");
    assert!(line.contains(":none"), "{line}");
    assert_eq!(
        ban_reason(&pbx, ATTACKER_IP),
        Some(BanReason::Enumeration as u16)
    );
    assert!(pbx.maps().verdict(Reason::Banned).unwrap().packets > 0);
    assert!(pbx.guard.stop().unwrap().success());
}
