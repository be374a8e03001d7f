//! Extension and dial rules end to end (issue 12): Debian's Kamailio in a
//! PBX namespace behind sipguard (`peers/kamailio-siprules.cfg`: a
//! registrar for 1001, 1002 and 6010 that logs every INVITE it receives
//! and answers it 480). The office phone (PHONE) and an address elsewhere
//! (ATTACKER) share the client namespace. Extension 6010 is restricted to
//! the office, and international numbers may be dialled from the office
//! only. Kamailio's own log shows which requests reached it. Needs root.
use std::{
    io::{Read, Write},
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use guard_common::{sip_scan::ScanStatus, BanReason, Reason, SourceKey};
use sipguard_tests::{
    kamailio::{
        peers, register_as, request, send, KamailioSetup, Pbx, ATTACKER, PASSWORD, PBX, PHONE,
    },
    netns::Link,
    traffic::cli,
};

const CONFIG: &str = r#"
rate_rules = []
[[extension_rules]]
name = "6010 from the office"
users = ["6010"]
permit = ["10.78.0.2/32"]

[[dial_rules]]
name = "no international calls except from the office"
prefixes = ["00", "+"]
permit = ["10.78.0.2/32"]
"#;

fn start() -> Pbx {
    start_on(Pbx::link("sr"), "sr")
}

/// Kamailio on UDP and TCP 5060, on `link`.
fn start_on(link: Link, tag: &str) -> Pbx {
    let setup = KamailioSetup {
        cfg: peers().join("kamailio-siprules.cfg"),
        listen: vec![format!("udp:{PBX}:5060"), format!("tcp:{PBX}:5060")],
        ..KamailioSetup::default()
    };
    Pbx::start_on(link, tag, CONFIG, setup)
}

/// `user` registers from `source` (the challenge, then the answer): the
/// final status, or None if Kamailio never answered.
fn registers(pbx: &Pbx, source: &'static str, user: &'static str, call_id: &str) -> Option<u16> {
    let call_id = call_id.to_string();
    pbx.link
        .left
        .run_in(move || {
            let socket = UdpSocket::bind((source, 5070)).expect("binding the phone");
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let first = register_as(user, source, &call_id, 1, None);
            let (status, nonce) = send(&socket, first.as_bytes())?;
            if status != 401 {
                return Some(status);
            }
            let nonce = nonce.expect("a nonce");
            let second = register_as(user, source, &call_id, 2, Some((&nonce, PASSWORD)));
            send(&socket, second.as_bytes()).map(|(status, _)| status)
        })
        .join()
        .expect("phone thread")
        .expect("client namespace")
}

/// An INVITE from `source`:5071 as `from` to `number`, with `padding`
/// (a header line, or nothing) after its Via.
fn invite(source: &str, from: &str, number: &str, call_id: &str, padding: &str) -> String {
    format!(
        "INVITE sip:{number}@{PBX} SIP/2.0\r\n\
Via: SIP/2.0/UDP {source}:5071;branch=z9hG4bK-{call_id};rport\r\n{padding}\
Max-Forwards: 70\r\nFrom: <sip:{from}@{PBX}>;tag={call_id}\r\nTo: <sip:{number}@{PBX}>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{from}@{source}:5071>\r\n\
Content-Length: 0\r\n\r\n"
    )
}

/// An INVITE from `source` (as 1001) to `number`: Kamailio's status, if any.
fn calls(pbx: &Pbx, source: &'static str, number: &'static str, call_id: &str) -> Option<u16> {
    request(
        pbx,
        source,
        5071,
        invite(source, "1001", number, call_id, ""),
    )
}

/// Waits for Kamailio's log line saying `what` reached it.
fn kamailio_got(pbx: &mut Pbx, what: &str) {
    pbx.kamailio
        .wait_for(what, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("not in Kamailio's log: {e}"));
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn restricted_extension_and_international_calls() {
    let mut pbx = start();
    let maps = pbx.maps();

    // 6010 registers from the office; from elsewhere, nothing comes back.
    assert_eq!(registers(&pbx, PHONE, "6010", "sr-1"), Some(200));
    kamailio_got(&mut pbx, "kamailio registered 6010 from 10.78.0.2");
    assert_eq!(registers(&pbx, ATTACKER, "6010", "sr-2"), None);
    assert_eq!(maps.verdict(Reason::ExtensionDenied).unwrap().packets, 1);
    let line = pbx
        .guard
        .wait_for("extension_denied", Duration::from_secs(5))
        .expect("the drop logged");
    assert!(
        line.contains("user 6010 from 10.78.0.4") && line.contains("6010 from the office"),
        "{line}"
    );
    // Other users register from anywhere.
    assert_eq!(registers(&pbx, ATTACKER, "1001", "sr-3"), Some(200));
    kamailio_got(&mut pbx, "kamailio registered 1001 from 10.78.0.4");

    // An international call from elsewhere never reaches Kamailio; a local
    // one does, and the office may call abroad.
    assert_eq!(calls(&pbx, ATTACKER, "0044201234567", "sr-4"), None);
    assert_eq!(maps.verdict(Reason::DialDenied).unwrap().packets, 1);
    let line = pbx
        .guard
        .wait_for("dial_denied", Duration::from_secs(5))
        .expect("the drop logged");
    assert!(line.contains("to 0044201234567 from 10.78.0.4"), "{line}");
    assert_eq!(calls(&pbx, ATTACKER, "1002", "sr-5"), Some(480));
    kamailio_got(&mut pbx, "kamailio got INVITE to 1002 from 10.78.0.4");
    assert_eq!(calls(&pbx, PHONE, "0044201234567", "sr-6"), Some(480));
    kamailio_got(
        &mut pbx,
        "kamailio got INVITE to 0044201234567 from 10.78.0.2",
    );
    let log = pbx.kamailio.log();
    assert!(
        !log.contains("INVITE to 0044201234567 from 10.78.0.4"),
        "the untrusted call reached Kamailio:\n{log}"
    );
    assert!(
        !log.contains("registered 6010 from 10.78.0.4"),
        "6010 registered from elsewhere:\n{log}"
    );

    // explain says the same.
    let out = cli(&pbx.socket, &["explain", ATTACKER, "--user", "6010"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("extension rule 6010 from the office"),
        "{text}"
    );
    let out = cli(&pbx.socket, &["explain", PHONE, "--dial", "0044201234567"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("permits this source"), "{text}");
    let out = cli(
        &pbx.socket,
        &["explain", ATTACKER, "--dial", "0044201234567"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("lets only 10.78.0.2/32 dial"), "{text}");
    assert!(pbx.guard.stop().unwrap().success());
}

/// Another address of the client namespace, elsewhere for both rules.
const STRANGER: &str = "10.78.0.5";

/// CONFIG's rules, as the controller's judgement names them.
const EXTENSION_RULE: (BanReason, &str) = (BanReason::ExtensionDenied, "6010 from the office");
const DIAL_RULE: (BanReason, &str) = (
    BanReason::DialDenied,
    "no international calls except from the office",
);

/// One request over TCP from `source`, written in two segments (`head`,
/// 300 ms, then `rest`; TCP_NODELAY, so the head leaves alone): the
/// status of Kamailio's answer, if one came within 2 s.
fn tcp_split(pbx: &Pbx, source: &'static str, head: String, rest: String) -> Option<u16> {
    pbx.link
        .left
        .run_in(move || {
            let socket = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .expect("a TCP socket");
            let local: SocketAddr = format!("{source}:0").parse().unwrap();
            socket.bind(&local.into()).expect("binding the client");
            socket.set_nodelay(true).unwrap();
            let pbx: SocketAddr = format!("{PBX}:5060").parse().unwrap();
            socket
                .connect_timeout(&pbx.into(), Duration::from_secs(2))
                .expect("connecting to Kamailio over TCP");
            let mut stream: std::net::TcpStream = socket.into();
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            stream.write_all(head.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            stream.write_all(rest.as_bytes()).unwrap();
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
                    _ => return None,
                }
            }
            let text = String::from_utf8_lossy(&answer);
            text.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
        })
        .join()
        .expect("client thread")
        .expect("client namespace")
}

/// The controller's line for a request from `source` naming `user` that
/// the kernel could not judge, and the ban it made for it on the first
/// offence.
fn assert_judged_by_the_controller(
    pbx: &mut Pbx,
    (source, user): (&str, &str),
    (reason, what): (BanReason, &str),
) {
    let line = pbx
        .guard
        .wait_for(
            &format!("from {source} (user {user}) reached the PBX unjudged by the kernel"),
            Duration::from_secs(5),
        )
        .expect("the controller's judgement logged");
    assert!(
        line.contains(&format!(": {} by rule {what}", reason.name())),
        "{line}"
    );
    pbx.guard
        .wait_for(
            &format!("banned {source} for 1day: {}", reason.name()),
            Duration::from_secs(5),
        )
        .expect("banned on the first offence");
    let ip: std::net::Ipv4Addr = source.parse().unwrap();
    let ban = pbx.maps().ban(&SourceKey::from_ipv4(ip.octets())).unwrap();
    assert_eq!(ban.map(|b| b.reason), Some(reason as u16));
}

/// Issue 12 item 5: what the kernel cannot read, the controller judges by
/// the same rules, and bans on the first offence. A REGISTER for 6010 over
/// TCP whose head (request line and Via) and rest (To, From) are two
/// segments: the kernel reads the head (partial: no user in it), the rest
/// starts no request; Kamailio gets the whole REGISTER and challenges it,
/// and its answer, naming 6010, bans the source. The same for an INVITE
/// to 0044... split after its method, so the kernel never sees the number.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn requests_split_across_tcp_segments_are_judged_by_the_controller() {
    let link = Pbx::link("srtcp");
    link.left
        .ip(&["addr", "add", "10.78.0.5/24", "dev", &link.left_if])
        .expect("a third client address");
    let mut pbx = start_on(link, "srtcp");
    let maps = pbx.maps();
    let headers = |method: &str, uri: &str, from: &str, to: &str, source: &str| {
        (
            format!("{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TCP {source}:5070;branch=z9hG4bK-t{from}\r\n"),
            format!(
                "Max-Forwards: 70\r\nFrom: <sip:{from}@{PBX}>;tag=t{from}\r\nTo: <sip:{to}@{PBX}>\r\n\
Call-ID: tcp-{method}-{source}\r\nCSeq: 1 {method}\r\nContact: <sip:{from}@{source}:5070;transport=tcp>\r\n\
Content-Length: 0\r\n\r\n"
            ),
        )
    };
    let (head, rest) = headers("REGISTER", &format!("sip:{PBX}"), "6010", "6010", ATTACKER);
    assert_eq!(tcp_split(&pbx, ATTACKER, head, rest), Some(401));
    assert_judged_by_the_controller(&mut pbx, (ATTACKER, "6010"), EXTENSION_RULE);
    // The kernel read the head and judged nothing.
    assert_eq!(maps.verdict(Reason::ExtensionDenied).unwrap().packets, 0);
    let scans = maps.sip_scans().unwrap();
    assert!(scans[ScanStatus::Partial as usize].1 >= 1, "{scans:?}");
    // Banned: its next request gets no answer.
    assert_eq!(registers(&pbx, ATTACKER, "1001", "srtcp-1"), None);
    assert!(maps.verdict(Reason::Banned).unwrap().packets > 0);

    let (head, rest) = headers(
        "INVITE",
        &format!("sip:0044201234567@{PBX}"),
        "1001",
        "0044201234567",
        STRANGER,
    );
    let (method, rest) = (
        "INVITE ".to_string(),
        format!("{}{rest}", head.strip_prefix("INVITE ").unwrap()),
    );
    assert_eq!(tcp_split(&pbx, STRANGER, method, rest), Some(480));
    kamailio_got(
        &mut pbx,
        "kamailio got INVITE to 0044201234567 from 10.78.0.5",
    );
    assert_judged_by_the_controller(&mut pbx, (STRANGER, "1001"), DIAL_RULE);
    assert_eq!(maps.verdict(Reason::DialDenied).unwrap().packets, 0);
    assert!(pbx.guard.stop().unwrap().success());
}

/// INVITEs over 2 KiB (UDP, one 2.6 KiB datagram: the link's MTU is
/// raised so that it is not fragmented). The number dialled is in the
/// request line, which the kernel always reads: an INVITE to 0044... is
/// dropped there however long it is. A From past 2 KiB of padding is not
/// read: an INVITE from the restricted 6010 reaches Kamailio, and the
/// controller, reading Kamailio's answer, bans the source at once.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn invites_over_2_kib_are_judged_where_they_can_be_read() {
    let link = Pbx::link("srbig");
    for (ns, interface) in [(&link.left, &link.left_if), (&link.right, &link.right_if)] {
        ns.ip(&["link", "set", "dev", interface, "mtu", "3400"])
            .expect("a 3400-byte MTU");
    }
    let mut pbx = start_on(link, "srbig");
    let maps = pbx.maps();
    let padding = format!("X-Padding: {}\r\n", "p".repeat(2400));
    let call = |pbx: &Pbx, number: &str, from: &str, call_id: &str| {
        let text = invite(ATTACKER, from, number, call_id, &padding);
        assert!(text.len() > 2600, "{}", text.len());
        request(pbx, ATTACKER, 5071, text)
    };
    // The number is read: the kernel drops it (no ban: the rule has none).
    assert_eq!(call(&pbx, "0044201234567", "1001", "big-1"), None);
    assert_eq!(maps.verdict(Reason::DialDenied).unwrap().packets, 1);
    pbx.guard
        .wait_for("to 0044201234567 from 10.78.0.4", Duration::from_secs(5))
        .expect("the kernel's drop logged");
    assert!(!pbx.kamailio.log().contains("INVITE to 0044201234567"));

    // The From is past the copy: the PBX answers, the controller bans.
    assert_eq!(call(&pbx, "1002", "6010", "big-2"), Some(480));
    kamailio_got(&mut pbx, "kamailio got INVITE to 1002 from 10.78.0.4");
    assert_judged_by_the_controller(&mut pbx, (ATTACKER, "6010"), EXTENSION_RULE);
    assert_eq!(maps.verdict(Reason::ExtensionDenied).unwrap().packets, 0);
    assert_eq!(call(&pbx, "1002", "1001", "big-3"), None, "banned");
    assert!(pbx.guard.stop().unwrap().success());
}
