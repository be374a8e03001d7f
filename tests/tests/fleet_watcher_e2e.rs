//! sipguard as a CrowdSec watcher against a real LAPI (Debian's
//! `crowdsec -no-cs`, in a namespace of its own, the machine made with
//! `cscli`): the bans the XDP program makes itself (a rate rule, a scanner
//! fingerprint, a dial rule, and a rate rule on an IPv6 source, banned as
//! its /64) each reach the LAPI as an alert with scenario
//! `sipguard/<reason>`, the evidence as its message and a ban decision of
//! the scope and value banned. Then the LAPI restarts, which makes the
//! watcher's token worthless (1.4.6 signs tokens with a secret drawn at
//! each start): the next report is answered 401, the watcher logs in again
//! once and the report goes through. (The LAPI's tokens last an hour, fixed
//! in 1.4.6, so renewal before expiry is left to the unit tests.)
//! Needs root and crowdsec (`cargo xtask test`).
use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use serde_json::Value;
use sipguard_tests::{
    crowdsec::Lapi,
    daemon::{Daemon, GuardHome},
    netns::Link,
    traffic::{send_udp, PBX_ADDRS, PBX_V4, PBX_V6},
};

const MACHINE: &str = "fw-pbx";
const PASSWORD: &str = "fw-pbx-password-5d0c";
const FLOODER: &str = "10.77.0.2";
const SCANNER: &str = "10.77.0.3";
const DIALER: &str = "10.77.0.4";
const FLOODER_V6: &str = "fd77::5";
/// Floods after the LAPI's restart.
const LATE_FLOODER: &str = "10.77.0.6";
const CLIENTS: [&str; 5] = [
    "10.77.0.2/24",
    "10.77.0.3/24",
    "10.77.0.4/24",
    "10.77.0.6/24",
    "fd77::5/64",
];
/// A report goes out as its ban is made; allow for a slow CI machine.
const REPORTED_WITHIN: Duration = Duration::from_secs(15);

/// A rate rule that bans on the 11th datagram in 2 s, the built-in scanner
/// fingerprints, a dial rule that lets nobody call `00`, and the watcher.
fn config(lapi_url: &str) -> String {
    format!(
        r#"[[rate_rules]]
name = "sip-udp-10-per-2s"
ports = ["5060/udp"]
packets = 10
window = "2s"
ban = "1h"

[sip_scanners]
enabled = true
ban = "1h"

[[dial_rules]]
name = "international"
prefixes = ["00"]
ban = "1h"

[crowdsec]
lapi_url = "{lapi_url}"
machine_login = "{MACHINE}"
machine_password = "{PASSWORD}"
"#
    )
}

/// One datagram from `source` (in the client namespace) to the PBX's SIP port.
fn send_sip(link: &Link, source: &'static str, payload: String) {
    let destination = if source.contains(':') { PBX_V6 } else { PBX_V4 };
    link.left
        .run_in(move || {
            let socket = UdpSocket::bind((source, 5062)).expect("bind source");
            socket
                .send_to(payload.as_bytes(), (destination, 5060))
                .expect("send");
        })
        .join()
        .expect("sender thread")
        .expect("client namespace");
}

/// An OPTIONS with svmap's User-Agent, "friendly-scanner" (and none of
/// its other marks, so that the User-Agent fingerprint is the one matched).
fn scan_request(source: &str) -> String {
    format!(
        "OPTIONS sip:100@{PBX_V4} SIP/2.0\r\n\
Via: SIP/2.0/UDP {source}:5062;branch=z9hG4bK-3280387012;rport\r\n\
Max-Forwards: 70\r\nTo: <sip:100@{PBX_V4}>\r\n\
From: <sip:100@{PBX_V4}>;tag=6330303030\r\nUser-Agent: friendly-scanner\r\n\
Call-ID: 969890095556717129979978\r\nContact: sip:100@{source}:5062\r\nCSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
    )
}

/// An INVITE to an international number.
fn international_call(source: &str) -> String {
    format!(
        "INVITE sip:0044201234567@{PBX_V4} SIP/2.0\r\n\
Via: SIP/2.0/UDP {source}:5062;branch=z9hG4bK-fw1;rport\r\nMax-Forwards: 70\r\n\
From: <sip:1001@{PBX_V4}>;tag=fw1\r\nTo: <sip:0044201234567@{PBX_V4}>\r\n\
Call-ID: fw1@{source}\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@{source}:5062>\r\n\
Content-Length: 0\r\n\r\n"
    )
}

/// Waits for sipguard's one alert on `value`.
fn reported(lapi: &Lapi, guard: &Daemon, value: &str) -> Value {
    let start = Instant::now();
    loop {
        let mut alerts: Vec<Value> = lapi
            .sipguard_alerts()
            .into_iter()
            .filter(|a| a["source"]["value"] == value)
            .collect();
        if !alerts.is_empty() {
            assert_eq!(alerts.len(), 1, "{alerts:#?}");
            return alerts.remove(0);
        }
        assert!(
            start.elapsed() < REPORTED_WITHIN,
            "no alert on {value} in the LAPI after {REPORTED_WITHIN:?}\nsipguard:\n{}\nLAPI:\n{}",
            guard.log(),
            lapi.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What one alert must say.
#[derive(Clone, Copy)]
struct Expected<'a> {
    reason: &'a str,
    /// The message: the evidence, as the ban's log line gives it.
    evidence: &'a str,
    scope: &'a str,
    value: &'a str,
    events: u64,
}

fn check_alert(alert: &Value, want: &Expected) {
    let scenario = format!("sipguard/{}", want.reason);
    assert_eq!(alert["scenario"], scenario.as_str(), "{alert:#}");
    assert_eq!(alert["machine_id"], MACHINE, "{alert:#}");
    assert_eq!(alert["message"], want.evidence, "{alert:#}");
    assert_eq!(alert["source"]["scope"], want.scope, "{alert:#}");
    assert_eq!(alert["source"]["value"], want.value, "{alert:#}");
    assert_eq!(alert["events_count"], want.events, "{alert:#}");
    let decisions = alert["decisions"].as_array().expect("decisions");
    assert_eq!(decisions.len(), 1, "{alert:#}");
    let decision = &decisions[0];
    assert_eq!(decision["type"], "ban", "{alert:#}");
    assert_eq!(decision["scope"], want.scope, "{alert:#}");
    assert_eq!(decision["value"], want.value, "{alert:#}");
    assert_eq!(decision["scenario"], scenario.as_str(), "{alert:#}");
    // The ban's hour, less the moments it took to report.
    let duration = decision["duration"].as_str().unwrap_or_default();
    assert!(
        duration.starts_with("59m") || duration.starts_with("1h"),
        "{alert:#}"
    );
}

#[test]
#[ignore = "needs root, network namespaces and crowdsec: run with `cargo xtask test`"]
fn the_kernels_bans_reach_the_lapi_and_a_restart_means_a_new_login() {
    let link = Link::new("fw", &CLIENTS, &PBX_ADDRS).expect("namespaces and veth");
    let mut lapi = Lapi::start(&link.right).expect("a CrowdSec LAPI");
    lapi.add_machine(MACHINE, PASSWORD).expect("the machine");
    let home = GuardHome::new("fw", &config(&lapi.url()));
    let (mut guard, _) = home
        .start(&link.right, &link.right_if)
        .expect("sipguard attached");
    guard
        .wait_for("crowdsec watcher: logged in", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\nLAPI log:\n{}", lapi.log()));

    // Four bans the kernel makes: 11 datagrams in 2 s (IPv4 and IPv6), a
    // scanner's OPTIONS, a call to a blocked prefix.
    send_udp(&link, FLOODER, 11);
    send_udp(&link, FLOODER_V6, 11);
    send_sip(&link, SCANNER, scan_request(SCANNER));
    send_sip(&link, DIALER, international_call(DIALER));

    let rate = Expected {
        reason: "rate-limit",
        evidence: "rule sip-udp-10-per-2s (11 packets in its window)",
        scope: "Ip",
        value: FLOODER,
        events: 11,
    };
    let cases = [
        rate,
        Expected {
            scope: "Range",
            value: "fd77::/64",
            ..rate
        },
        Expected {
            reason: "scanner",
            evidence: "SIP scanner fingerprint user_agent contains \"friendly-scanner\"",
            scope: "Ip",
            value: SCANNER,
            events: 1,
        },
        Expected {
            reason: "dial-denied",
            evidence: "call to a blocked prefix, dial rule international",
            scope: "Ip",
            value: DIALER,
            events: 1,
        },
    ];
    for want in &cases {
        check_alert(&reported(&lapi, &guard, want.value), want);
    }
    assert_eq!(
        lapi.answers("POST", "/v1/watchers/login", "sipguard/"),
        [200]
    );

    // The LAPI restarts: the token the watcher holds is signed with the
    // last run's secret. The next report is refused once, the watcher logs
    // in again and sends it.
    lapi.halt();
    lapi.resume().expect("the LAPI back");
    send_udp(&link, LATE_FLOODER, 11);
    guard
        .wait_for("no longer takes the token (401)", REPORTED_WITHIN)
        .unwrap_or_else(|e| panic!("{e:#}\nLAPI log:\n{}", lapi.log()));
    let late = Expected {
        value: LATE_FLOODER,
        ..rate
    };
    check_alert(&reported(&lapi, &guard, LATE_FLOODER), &late);
    assert_eq!(
        lapi.answers("POST", "/v1/watchers/login", "sipguard/"),
        [200, 200]
    );
    let pushes = lapi.answers("POST", "/v1/alerts", "sipguard/");
    assert!(
        pushes.len() >= 3
            && pushes[pushes.len() - 2] == 401
            && (200..300).contains(&pushes[pushes.len() - 1]),
        "the pushes' statuses: {pushes:?}"
    );
    assert!(
        pushes[..pushes.len() - 2]
            .iter()
            .all(|s| (200..300).contains(s)),
        "{pushes:?}"
    );
    assert!(guard.stop().unwrap().success());
}
