//! Extension and dial rules end to end (issue 12): Debian's Kamailio in a
//! PBX namespace behind sipguard (`peers/kamailio-siprules.cfg`: a
//! registrar for 1001, 1002 and 6010 that logs every INVITE it receives
//! and answers it 480). The office phone (PHONE) and an address elsewhere
//! (ATTACKER) share the client namespace. Extension 6010 is restricted to
//! the office, and international numbers may be dialled from the office
//! only. Kamailio's own log shows which requests reached it. Needs root.
use std::{net::UdpSocket, time::Duration};

use guard_common::Reason;
use sipguard_tests::{
    kamailio::{peers, register_as, send, KamailioSetup, Pbx, ATTACKER, PASSWORD, PBX, PHONE},
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
    let setup = KamailioSetup {
        cfg: peers().join("kamailio-siprules.cfg"),
        ..KamailioSetup::default()
    };
    Pbx::start_with("sr", CONFIG, setup)
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

/// An INVITE from `source` (as 1001) to `number`: Kamailio's status, if any.
fn calls(pbx: &Pbx, source: &'static str, number: &'static str, call_id: &str) -> Option<u16> {
    let call_id = call_id.to_string();
    pbx.link
        .left
        .run_in(move || {
            let socket = UdpSocket::bind((source, 5071)).expect("binding the phone");
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let invite = format!(
                "INVITE sip:{number}@{PBX} SIP/2.0\r\n\
Via: SIP/2.0/UDP {source}:5071;branch=z9hG4bK-{call_id};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:1001@{PBX}>;tag={call_id}\r\nTo: <sip:{number}@{PBX}>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@{source}:5071>\r\n\
Content-Length: 0\r\n\r\n"
            );
            send(&socket, invite.as_bytes()).map(|(status, _)| status)
        })
        .join()
        .expect("phone thread")
        .expect("client namespace")
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn restricted_extension_and_international_calls() {
    let mut pbx = start();
    let maps = pbx.maps();

    // 6010 registers from the office; from elsewhere, nothing comes back.
    assert_eq!(registers(&pbx, PHONE, "6010", "sr-1"), Some(200));
    pbx.kamailio
        .wait_for(
            "kamailio registered 6010 from 10.78.0.2",
            Duration::from_secs(5),
        )
        .expect("Kamailio's log");
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
    pbx.kamailio
        .wait_for(
            "kamailio registered 1001 from 10.78.0.4",
            Duration::from_secs(5),
        )
        .expect("Kamailio's log");

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
    pbx.kamailio
        .wait_for(
            "kamailio got INVITE to 1002 from 10.78.0.4",
            Duration::from_secs(5),
        )
        .expect("the local call reached Kamailio");
    assert_eq!(calls(&pbx, PHONE, "0044201234567", "sr-6"), Some(480));
    pbx.kamailio
        .wait_for(
            "kamailio got INVITE to 0044201234567 from 10.78.0.2",
            Duration::from_secs(5),
        )
        .expect("the office's call reached Kamailio");
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
