//! Scanner fingerprints end to end (issue 12): Debian's Kamailio in a PBX
//! namespace behind sipguard with `[sip_scanners]` on, and SIPVicious'
//! svmap and svwar (Debian's sipvicious, their default User-Agent
//! "friendly-scanner") in the scanner's namespace. An nftables counter on
//! the scanner's side counts every datagram the PBX sends back to each
//! source. Kamailio runs `peers/kamailio.cfg`, which answers everybody
//! (403 to OPTIONS, 404/401 to REGISTER): unlike Debian's stock
//! kamailio.cfg it has no User-Agent filter of its own, so every silence
//! seen here is sipguard's. Needs root.
use std::{net::UdpSocket, process::Output, time::Duration};

use guard_common::Reason;
use serde_json::Value;
use sipguard_tests::{
    daemon::TempFile,
    kamailio::{send, Pbx, ATTACKER, PBX, PHONE},
    netns::NetNs,
    traffic::cli,
};

/// A third client address, for the pattern added at run time.
const DIALER: &str = "10.78.0.3";

/// Fingerprints on (built-in list), no rate rules (only the fingerprints
/// decide), the phone's address allow-listed for SIP and left out of the
/// authentication-failure bans (svwar's REGISTERs get 404s).
const CONFIG: &str = r#"
rate_rules = []
[sip_scanners]
enabled = true
ban = "1h"
[[allow]]
cidr = "10.78.0.2/32"
services = ["sip"]
[sip_auth]
level = "normal"
whitelist = ["10.78.0.2/32"]
"#;

/// Counts, in the scanner's namespace, the datagrams from the PBX's SIP
/// port to each client address (before any socket: prerouting).
struct Sniffer<'a> {
    ns: &'a NetNs,
}

impl<'a> Sniffer<'a> {
    fn start(ns: &'a NetNs) -> Sniffer<'a> {
        let mut rules = String::from("table inet sgsniff {\n");
        for name in ["to_phone", "to_dialer", "to_attacker"] {
            rules.push_str(&format!("  counter {name} {{}}\n"));
        }
        rules.push_str("  chain pre {\n    type filter hook prerouting priority -300;\n");
        for (name, address) in [
            ("to_phone", PHONE),
            ("to_dialer", DIALER),
            ("to_attacker", ATTACKER),
        ] {
            rules.push_str(&format!(
                "    ip saddr {PBX} ip daddr {address} udp sport 5060 counter name {name}\n"
            ));
        }
        rules.push_str("  }\n}\n");
        let file = TempFile::new("sniff.nft", &rules);
        let out = ns
            .command("nft")
            .args(["-f", file.path()])
            .output()
            .expect("running nft (apt-get install nftables)");
        assert!(out.status.success(), "nft -f: {out:?}");
        Sniffer { ns }
    }

    /// Datagrams counted so far on the way to `name`'s address.
    fn packets(&self, name: &str) -> u64 {
        let out = self
            .ns
            .command("nft")
            .args(["list", "counter", "inet", "sgsniff", name])
            .output()
            .expect("running nft");
        assert!(out.status.success(), "nft list counter: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in {text}"))
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// svmap from `source` against the PBX: one OPTIONS, its default
/// User-Agent, bounded by its own timeout and `timeout`.
fn svmap(pbx: &Pbx, source: &str) -> String {
    let out = pbx
        .link
        .left
        .command("timeout")
        .args(["30", "svmap", "-b", source, "-p", "5060", "-t", "0.5", PBX])
        .output()
        .expect("running svmap (apt-get install sipvicious)");
    text(&out)
}

/// svwar from `source`: REGISTERs for 20 extensions (1000-1019), sent
/// whatever the sanity check finds (--force), for at most 10 s silence.
/// Debian's svwar 0.3.3 takes `-b` but binds to any address, so the route
/// to the PBX prefers `source` while it runs.
fn svwar(pbx: &Pbx, source: &str) -> String {
    let prefer = |address: &str| {
        let net = "10.78.0.0/24";
        let iface = pbx.link.left_if.as_str();
        pbx.link
            .left
            .ip(&["route", "replace", net, "dev", iface, "src", address])
            .expect("the route's preferred source");
    };
    prefer(source);
    let out = pbx
        .link
        .left
        .command("timeout")
        .args(["40", "svwar", "-b", source, "-x", source, "-p", "5060"])
        .args([
            "-e",
            "1000-1019",
            "--force",
            "--maximumtime",
            "10",
            "-t",
            "0.2",
            PBX,
        ])
        .output()
        .expect("running svwar (apt-get install sipvicious)");
    prefer(PHONE);
    text(&out)
}

/// The bans in force, as `sipguard bans --json` lists them.
fn bans(pbx: &Pbx) -> Vec<Value> {
    let out = cli(&pbx.socket, &["bans", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("bans as JSON")
}

fn ban_of(pbx: &Pbx, source: &str) -> Option<Value> {
    bans(pbx).into_iter().find(|ban| {
        ban["source"]
            .as_str()
            .is_some_and(|s| s == source || s.starts_with(&format!("{source}/")))
    })
}

/// One OPTIONS from DIALER with `agent` as its User-Agent; the status
/// Kamailio answered with, if any (within 2 s).
fn options_from_dialer(pbx: &Pbx, agent: &'static str, cseq: u32) -> Option<u16> {
    pbx.link
        .left
        .run_in(move || {
            let socket = UdpSocket::bind((DIALER, 5072)).expect("binding the dialer");
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let message = format!(
                "OPTIONS sip:{PBX} SIP/2.0\r\n\
Via: SIP/2.0/UDP {DIALER}:5072;branch=z9hG4bK-dialer-{cseq};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:dialer@{DIALER}>;tag=d{cseq}\r\nTo: <sip:{PBX}>\r\n\
Call-ID: dialer-{cseq}\r\nCSeq: {cseq} OPTIONS\r\nUser-Agent: {agent}\r\n\
Content-Length: 0\r\n\r\n"
            );
            send(&socket, message.as_bytes()).map(|(status, _)| status)
        })
        .join()
        .expect("dialer thread")
        .expect("client namespace")
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn svmap_and_svwar_get_no_answer_and_are_banned_as_scanners() {
    let mut pbx = Pbx::start("scan", CONFIG);
    pbx.link
        .left
        .ip(&["addr", "add", "10.78.0.3/24", "dev", &pbx.link.left_if])
        .expect("the dialer's address");
    let sniffer = Sniffer::start(&pbx.link.left);

    // The allow-listed phone runs the same tools: answered, only counted.
    let allowed_map = svmap(&pbx, PHONE);
    let allowed_war = svwar(&pbx, PHONE);
    let to_phone = sniffer.packets("to_phone");
    assert!(
        to_phone >= 2,
        "the allow-listed source is answered ({to_phone}):\n{allowed_map}\n{allowed_war}"
    );
    assert!(
        allowed_map.contains(&format!("{PBX}:5060")),
        "svmap finds the PBX from the allow-listed source:\n{allowed_map}"
    );
    assert!(
        allowed_war.contains("reqauth"),
        "svwar finds 1001 and 1002 from the allow-listed source:\n{allowed_war}"
    );
    assert!(ban_of(&pbx, PHONE).is_none(), "{:?}", bans(&pbx));
    let maps = pbx.maps();
    let allowed = maps.verdict(Reason::PassedAllowlisted).unwrap().packets;
    assert!(allowed >= to_phone, "passed as allow-listed: {allowed}");
    assert_eq!(maps.verdict(Reason::Scanner).unwrap().packets, 0);

    // The scanner: no answer at all, and banned at its first packet.
    let war = svwar(&pbx, ATTACKER);
    let map = svmap(&pbx, ATTACKER);
    assert_eq!(
        sniffer.packets("to_attacker"),
        0,
        "the scanner saw answers:\n{map}\n{war}"
    );
    assert!(
        !map.contains(&format!("{PBX}:5060")) && !war.contains("reqauth"),
        "svmap or svwar found something:\n{map}\n{war}"
    );
    assert_eq!(sniffer.packets("to_phone"), to_phone, "svwar's source");
    let ban = ban_of(&pbx, ATTACKER).unwrap_or_else(|| panic!("no ban: {:?}", bans(&pbx)));
    assert_eq!(ban["reason"], "scanner", "{ban}");
    // svwar's first REGISTER dropped as a scanner's, svmap's OPTIONS as banned.
    assert_eq!(maps.verdict(Reason::Scanner).unwrap().packets, 1);
    assert!(maps.verdict(Reason::Banned).unwrap().packets >= 1);
    let line = pbx
        .guard
        .wait_for("banned 10.78.0.4", Duration::from_secs(5))
        .unwrap();
    assert!(line.contains("scanner, "), "{line}");

    // A made-up User-Agent is answered until `apply` adds it; the next
    // packet after the apply is dropped and bans its source.
    assert_eq!(options_from_dialer(&pbx, "MadeUpDialer/7.1", 1), Some(403));
    let answered = sniffer.packets("to_dialer");
    assert!(answered >= 1);
    let with_pattern = TempFile::new(
        "scan-apply.toml",
        &format!(
            "{CONFIG}\n[[sip_scanners.patterns]]\nfield = \"user_agent\"\nprefix = \"madeupdialer\"\n"
        ),
    );
    let out = cli(&pbx.socket, &["apply", with_pattern.path()]);
    assert!(out.status.success(), "apply: {}", text(&out));
    assert_eq!(options_from_dialer(&pbx, "MadeUpDialer/7.1", 2), None);
    assert_eq!(
        sniffer.packets("to_dialer"),
        answered,
        "no answer after apply"
    );
    let ban = ban_of(&pbx, DIALER).unwrap_or_else(|| panic!("no ban: {:?}", bans(&pbx)));
    assert_eq!(ban["reason"], "scanner", "{ban}");
    // The log names the fingerprint (`bans` leaves its evidence empty).
    let line = pbx
        .guard
        .wait_for("banned 10.78.0.3", Duration::from_secs(5))
        .unwrap();
    assert!(
        line.contains("scanner, user_agent prefix \"madeupdialer\""),
        "{line}"
    );

    let scanned = maps.verdict(Reason::Scanner).unwrap().packets;
    let banned = maps.verdict(Reason::Banned).unwrap().packets;
    println!(
        "answers to the allow-listed phone {to_phone} ({allowed} packets passed as \
         allow-listed), to the scanner 0; dropped as scanner {scanned}, as banned {banned}\nthe scanner's svmap: {map}"
    );
    assert!(pbx.guard.stop().unwrap().success());
}
