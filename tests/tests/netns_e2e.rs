//! End to end: `sipguard run` attached in native mode to a veth inside a
//! network namespace, real UDP and TCP sent from a second namespace, and
//! assertions on what arrives and on the kernel's counters.
//! Needs root (`cargo xtask test`); every namespace is deleted on drop.
use std::{
    io::Write,
    net::{IpAddr, TcpListener, TcpStream},
    time::Duration,
};

use guard_common::{BanReason, Reason, SourceKey};
use guard_userspace::kernel::maps::KernelMaps;
use sipguard_tests::{
    daemon::{sipguard_bin, start_guard, Daemon, PinRoot, TempDir, TempFile, TempSocket},
    netns::Link,
    traffic::{
        cli, connect_from, delivered, send_udp, tcp_connects, xdp_attached, UdpSink, CLIENT_ADDRS,
        PBX_ADDRS,
    },
};

const ALLOWED: &str = "10.77.0.2";
const DENIED: &str = "10.77.0.3";
const ATTACKER: &str = "10.77.0.4";
const STRANGER_V6: &str = "fd77::5";

const CONFIG: &str = r#"
[[allow]]
cidr = "10.77.0.2/32"
comment = "office"
[[deny]]
cidr = "10.77.0.3/32"
comment = "scanner"
"#;

fn setup() -> (Link, TempFile) {
    let link = Link::new("e2e", &CLIENT_ADDRS, &PBX_ADDRS).expect("namespaces and veth");
    (link, TempFile::new("e2e.toml", CONFIG))
}

fn start(link: &Link, config: &TempFile, extra: &[&str]) -> (Daemon, u32) {
    start_guard(&link.right, &link.right_if, config, extra).expect("sipguard attached")
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn guard_drops_denied_passes_allowed_and_bans_a_flood() {
    let (link, config) = setup();
    let (mut guard, program_id) = start(&link, &config, &[]);
    assert!(guard.log().contains("native mode"), "{}", guard.log());
    assert!(xdp_attached(&link));

    let sink = UdpSink::start(&link);
    send_udp(&link, ALLOWED, 60);
    send_udp(&link, DENIED, 5);
    // 41 datagrams in well under 2 s: the 41st is dropped and bans.
    send_udp(&link, ATTACKER, 41);
    send_udp(&link, ATTACKER, 5);
    send_udp(&link, STRANGER_V6, 10);
    let seen = sink.finish();
    let got = |ip: &str| {
        seen.get(&ip.parse::<IpAddr>().unwrap())
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(got(ALLOWED), 60, "allow-listed source is never limited");
    assert_eq!(got(DENIED), 0, "deny-listed source");
    assert_eq!(got(ATTACKER), 40, "flooder: exactly the first 40 arrive");
    assert_eq!(got(STRANGER_V6), 10);

    // TCP: the allowed source connects, the denied and banned ones cannot.
    let _listener = link
        .right
        .run_in(|| TcpListener::bind("0.0.0.0:5061").expect("bind 5061"))
        .join()
        .unwrap()
        .unwrap();
    assert!(tcp_connects(&link, ALLOWED, 5061));
    assert!(!tcp_connects(&link, DENIED, 5061));
    assert!(!tcp_connects(&link, ATTACKER, 5061));

    // The kernel's own counters agree.
    let maps = KernelMaps::from_program_id(program_id).unwrap();
    let count = |r: Reason| maps.verdict(r).unwrap().packets;
    // The allow list is searched only over a limit: the first 40 of the
    // allowed source's 60 pass as any packet would, the other 20 because
    // the source is allow-listed.
    assert!(count(Reason::PassedAllowlisted) >= 20);
    assert!(count(Reason::Denied) >= 5);
    assert_eq!(count(Reason::RateLimited), 1);
    assert!(count(Reason::Banned) >= 5);
    assert_eq!(maps.rule_hits().unwrap()[1].limited, 1);
    let attacker = SourceKey::from_ipv4([10, 77, 0, 4]);
    let ban = maps.ban(&attacker).unwrap().expect("attacker banned");
    assert_eq!(ban.reason, BanReason::RateLimit as u16);
    assert!(ban.dropped >= 5);

    // The ban event reached the controller's log.
    guard
        .wait_for("banned 10.77.0.4 for 1h", Duration::from_secs(5))
        .unwrap();

    // SIGTERM detaches cleanly.
    let status = guard.stop().unwrap();
    assert!(status.success(), "exit {status}: {}", guard.log());
    assert!(guard.log().contains("SIGTERM: detached"), "{}", guard.log());
    assert!(!xdp_attached(&link));
    let sink = UdpSink::start(&link);
    send_udp(&link, DENIED, 3);
    assert_eq!(sink.finish().len(), 1, "after detach, traffic flows again");
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn monitor_mode_passes_everything_and_counts() {
    let (link, config) = setup();
    let (mut guard, program_id) = start(&link, &config, &["--monitor"]);
    assert!(guard.log().contains("MONITOR"), "{}", guard.log());
    let sink = UdpSink::start(&link);
    send_udp(&link, DENIED, 5);
    send_udp(&link, ATTACKER, 45);
    let seen = sink.finish();
    assert_eq!(seen.get(&DENIED.parse::<IpAddr>().unwrap()), Some(&5));
    assert_eq!(seen.get(&ATTACKER.parse::<IpAddr>().unwrap()), Some(&45));
    let maps = KernelMaps::from_program_id(program_id).unwrap();
    assert!(maps.verdict(Reason::Denied).unwrap().packets >= 5);
    assert_eq!(maps.verdict(Reason::RateLimited).unwrap().packets, 1);
    assert!(guard.stop().unwrap().success());
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn tcp_syn_flood_rule_bans_on_connection_attempts() {
    let (link, _) = setup();
    let config = TempFile::new(
        "syn.toml",
        r#"
[[rate_rules]]
name = "sip-tcp-connects"
ports = ["5060/tcp"]
packets = 3
window = "10s"
ban = "10m"
syn_only = true
"#,
    );
    let (mut guard, _) = start(&link, &config, &[]);
    let _listener = link
        .right
        .run_in(|| TcpListener::bind("0.0.0.0:5060").expect("bind tcp 5060"))
        .join()
        .unwrap()
        .unwrap();
    // A connection that sends data costs one SYN, however many segments follow.
    link.left
        .run_in(|| {
            let mut stream = connect_from(ATTACKER, 5060, Duration::from_secs(2)).unwrap();
            for _ in 0..20 {
                stream
                    .write_all(b"OPTIONS sip:pbx SIP/2.0\r\n\r\n")
                    .unwrap();
            }
        })
        .join()
        .unwrap()
        .unwrap();
    assert!(tcp_connects(&link, ATTACKER, 5060));
    assert!(tcp_connects(&link, ATTACKER, 5060));
    // The fourth connection attempt is over the limit of 3 SYNs in 10 s.
    assert!(!tcp_connects(&link, ATTACKER, 5060));
    // Another source is unaffected.
    assert!(tcp_connects(&link, ALLOWED, 5060));
    guard
        .wait_for("banned 10.77.0.4 for 10m", Duration::from_secs(5))
        .unwrap();
    assert!(guard.stop().unwrap().success());
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn without_iface_the_default_route_interface_is_used() {
    let (link, _) = setup();
    link.right
        .ip(&["route", "add", "default", "via", "10.77.0.2"])
        .unwrap();
    let bin = sipguard_bin();
    let state = TempDir::new("state");
    let child = link
        .right
        .spawn(
            bin.to_str().unwrap(),
            &["run", "--xdp-mode", "native", "--state-dir", state.path()],
        )
        .unwrap();
    let mut guard = Daemon::watch(child);
    let line = guard
        .wait_for("default-route interface", Duration::from_secs(30))
        .unwrap();
    assert!(line.contains(&format!("using {}", link.right_if)), "{line}");
    guard.program_id().unwrap();
    assert!(
        guard.log().contains("policy from <built-in default>"),
        "{}",
        guard.log()
    );
    // `ip netns exec` gives the daemon a /sys without a bpffs: it mounts
    // one to pin into (private to it, so it vanishes with it here).
    assert!(
        guard.log().contains("mounted a bpffs at /sys/fs/bpf"),
        "{}",
        guard.log()
    );
    assert!(xdp_attached(&link));
    assert!(guard.stop().unwrap().success());
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn without_iface_or_default_route_the_error_says_so() {
    let (link, _) = setup();
    let bin = sipguard_bin();
    let out = link
        .right
        .command(bin.to_str().unwrap())
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("no default route found: name the interface with --iface"));
}

/// GET `path` from the metrics endpoint inside the PBX namespace: (status line, body).
fn scrape(link: &Link, port: u16, path: &'static str) -> (String, String) {
    link.right
        .run_in(move || {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"
            )
            .unwrap();
            let mut response = String::new();
            std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
            (
                head.lines().next().unwrap_or("").to_string(),
                body.to_string(),
            )
        })
        .join()
        .unwrap()
        .unwrap()
}

/// The value of the series whose line starts with `series` (name and labels).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn metrics_are_scraped_over_http_and_rise_with_traffic() {
    let (link, config) = setup();
    let (mut guard, _) = start(&link, &config, &["--metrics-addr", "127.0.0.1:19477"]);
    guard
        .wait_for(
            "serving metrics on http://127.0.0.1:19477/metrics",
            Duration::from_secs(5),
        )
        .unwrap();
    let (status, before) = scrape(&link, 19477, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        before.contains("sipguard_build_info{version=\""),
        "{before}"
    );
    assert_eq!(
        value(&before, "sipguard_map_capacity{map=\"bans\"}"),
        Some(65536.0),
        "{before}"
    );
    assert_eq!(
        value(&before, "sipguard_map_entries{map=\"deny_v4\"}"),
        Some(1.0),
        "{before}"
    );
    assert!(
        before.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    let denied = "sipguard_packets_total{reason=\"denied\",service=\"sip\"}";
    let denied_before = value(&before, denied).unwrap_or(0.0);

    let sink = UdpSink::start(&link);
    send_udp(&link, DENIED, 5);
    send_udp(&link, ATTACKER, 41);
    sink.finish();
    guard
        .wait_for("banned 10.77.0.4", Duration::from_secs(5))
        .unwrap();

    let (_, after) = scrape(&link, 19477, "/metrics");
    assert_eq!(value(&after, denied), Some(denied_before + 5.0), "{after}");
    assert!(
        value(
            &after,
            "sipguard_bytes_total{reason=\"denied\",service=\"sip\"}"
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        value(
            &after,
            "sipguard_packets_total{reason=\"rate_limited\",service=\"sip\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "sipguard_rate_rule_hits_total{rule=\"sip-udp-40-per-2s\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "sipguard_bans_created_total{reason=\"rate-limit\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "sipguard_bans_active{reason=\"rate-limit\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "sipguard_map_entries{map=\"bans\"}"),
        Some(1.0)
    );
    // The 40 datagrams that passed are OPTIONS requests the SIP watcher saw.
    assert_eq!(
        value(&after, "sipguard_sip_requests_total{method=\"OPTIONS\"}"),
        Some(40.0),
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            "sipguard_ring_buffer_lost_total{kind=\"ban_events\"}"
        ),
        Some(0.0)
    );

    // Every series the Grafana dashboard queries is served.
    let dashboard = include_str!("../../dist/grafana-dashboard.json");
    for name in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if name.starts_with("sipguard_") && name != "sipguard_" {
            // A family is declared by its TYPE line even before it has samples.
            let family = name.trim_end_matches("_total").trim_end_matches("_info");
            assert!(
                after.contains(&format!("# TYPE {family} ")),
                "the dashboard queries {name}, which is not served"
            );
        }
    }

    let (status, _) = scrape(&link, 19477, "/elsewhere");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert!(guard.stop().unwrap().success());
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn the_systemd_units_capabilities_are_enough() {
    let unit = include_str!("../../dist/sipguard.service");
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds its capabilities")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert_eq!(caps.len(), 3, "{caps:?}");
    let (link, config) = setup();
    let bounding = format!("--bounding-set=-all,{}", caps.join(","));
    let bin = sipguard_bin();
    // systemd mounts /sys/fs/bpf for the unit; the test's own bpffs stands in.
    let pins = PinRoot::new().unwrap();
    let state = TempDir::new("state");
    let child = link
        .right
        .spawn(
            "setpriv",
            &[
                &bounding,
                bin.to_str().unwrap(),
                "run",
                "--iface",
                &link.right_if,
                "--xdp-mode",
                "native",
                "--config",
                config.path(),
                "--log-format",
                "json",
                "--pin-dir",
                pins.path(),
                "--state-dir",
                state.path(),
            ],
        )
        .unwrap();
    let mut guard = Daemon::watch(child);
    // Loaded, attached (XDP and tc), watching SIP, serving metrics.
    let line = guard
        .wait_for("watching SIP authentication", Duration::from_secs(30))
        .unwrap();
    assert!(
        line.starts_with('{') && line.contains("\"level\":\"INFO\""),
        "JSON logs: {line}"
    );
    assert!(guard.log().contains("serving metrics"), "{}", guard.log());
    assert!(xdp_attached(&link));
    assert!(guard.stop().unwrap().success());
    // Pinning needs nothing more: the guard stayed, until unloaded.
    assert!(!guard.log().contains("unpinned"), "{}", guard.log());
    assert!(xdp_attached(&link));
    // `unload` acts on the guard of the namespace it runs in.
    let out = link
        .right
        .command(bin.to_str().unwrap())
        .args([
            "unload",
            "--iface",
            &link.right_if,
            "--pin-dir",
            pins.path(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!xdp_attached(&link));

    // One capability fewer is refused with a clear line, nothing attached.
    let fewer = format!("--bounding-set=-all,{}", caps[..2].join(","));
    let out = link
        .right
        .command("setpriv")
        .args([
            &fewer,
            bin.to_str().unwrap(),
            "run",
            "--iface",
            &link.right_if,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing: CAP_NET_ADMIN"));
    assert!(!xdp_attached(&link));
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn the_cli_bans_and_unbans_through_the_control_socket() {
    use std::os::unix::fs::PermissionsExt;
    let (link, config) = setup();
    let socket = TempSocket::new("ctl");
    let (mut guard, program_id) = start(&link, &config, &["--control-socket", &socket]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "root-only socket");

    let out = cli(&socket, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["iface"], link.right_if.as_str());
    assert_eq!(status["program_id"], program_id);
    assert_eq!(status["xdp_mode"], "native");

    let out = cli(
        &socket,
        &[
            "ban",
            "add",
            ATTACKER,
            "--for",
            "10m",
            "--reason",
            "mistyped password",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "banned 10.77.0.4 for 10m"
    );
    let sink = UdpSink::start(&link);
    send_udp(&link, ATTACKER, 3);
    assert_eq!(sink.finish().len(), 0, "the banned source is dropped");

    let out = cli(&socket, &["bans"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("SOURCE"), "{table}");
    assert!(
        table.contains("10.77.0.4")
            && table.contains("manual")
            && table.contains("mistyped password"),
        "{table}"
    );
    let out = cli(&socket, &["bans", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["source"], "10.77.0.4");
    assert_eq!(rows[0]["dropped"], 3);
    assert!(rows[0]["remaining_seconds"].as_u64().unwrap() > 590);
    guard
        .wait_for(
            "banned 10.77.0.4 for 10m: manual (mistyped password)",
            Duration::from_secs(2),
        )
        .unwrap();

    let out = cli(&socket, &["ban", "remove", ATTACKER]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "unbanned 10.77.0.4"
    );
    let sink = UdpSink::start(&link);
    send_udp(&link, ATTACKER, 3);
    assert_eq!(sink.finish().len(), 1, "traffic flows again");
    let out = cli(&socket, &["ban", "remove", ATTACKER]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("10.77.0.4 is not banned"));

    assert!(guard.stop().unwrap().success());
    assert!(
        !std::path::Path::new(&socket).exists(),
        "the socket is removed on exit"
    );
    let out = cli(&socket, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the daemon"));
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn allow_and_deny_changes_apply_to_live_traffic() {
    let (link, config) = setup();
    let socket = TempSocket::new("lists");
    let (mut guard, _) = start(&link, &config, &["--control-socket", &socket]);
    let arrived = |source: &'static str, count: usize| delivered(&link, source, count);
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    // Deny: the next packet is dropped; removing it lets traffic through.
    assert_eq!(
        ok(cli(
            &socket,
            &["deny", "add", ATTACKER, "--comment", "scanner"]
        )),
        "added 10.77.0.4/32 to the deny list"
    );
    assert_eq!(arrived(ATTACKER, 3), 0);
    let list = ok(cli(&socket, &["deny", "list"]));
    assert!(
        list.contains("10.77.0.3/32") && list.contains("config"),
        "{list}"
    );
    assert!(
        list.contains("10.77.0.4/32") && list.contains("runtime") && list.contains("scanner"),
        "{list}"
    );
    assert_eq!(
        ok(cli(&socket, &["deny", "remove", "10.77.0.4/32"])),
        "removed 10.77.0.4/32 from the deny list"
    );
    assert_eq!(arrived(ATTACKER, 3), 3);
    assert_eq!(
        cli(&socket, &["deny", "remove", ATTACKER]).status.code(),
        Some(3)
    );

    // Allow for SIP: the source skips the rate rules (45 > 40 in 2 s, no ban).
    let out = cli(
        &socket,
        &["allow", "add", "10.77.0.4", "--services", "sip,fax"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown service \"fax\""));
    let before = ok(cli(&socket, &["allow", "list", "--json"]));
    assert!(
        !before.contains("10.77.0.4"),
        "a refused change changes nothing: {before}"
    );
    ok(cli(
        &socket,
        &[
            "allow",
            "add",
            "10.77.0.4",
            "--services",
            "sip",
            "--comment",
            "trunk",
        ],
    ));
    assert_eq!(arrived(ATTACKER, 45), 45);
    let rows: serde_json::Value =
        serde_json::from_str(&ok(cli(&socket, &["allow", "list", "--json"]))).unwrap();
    let trunk = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cidr"] == "10.77.0.4/32")
        .unwrap();
    assert_eq!(trunk["services"][0], "sip");
    assert_eq!(trunk["comment"], "trunk");
    // Once removed, the same flood is rate-limited again.
    ok(cli(&socket, &["allow", "remove", "10.77.0.4/32"]));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(arrived(ATTACKER, 45), 40);
    assert!(guard.stop().unwrap().success());
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn explain_says_what_decides_each_services_verdict() {
    let (link, _) = setup();
    let config = TempFile::new(
        "explain.toml",
        r#"
[services.web]
access = "trusted"
[services.ami]
access = "closed"
[[allow]]
cidr = "10.77.0.2/32"
services = ["web"]
comment = "office"
[[deny]]
cidr = "10.77.0.3/32"
comment = "scanner"
"#,
    );
    let socket = TempSocket::new("explain");
    let (mut guard, _) = start(&link, &config, &["--control-socket", &socket]);
    let explain = |ip: &str| -> Vec<(String, String, String)> {
        let out = cli(&socket, &["explain", ip, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let data: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        data["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                let s = |k: &str| v[k].as_str().unwrap().to_string();
                (s("service"), s("verdict"), s("because"))
            })
            .collect()
    };
    let find = |rows: &[(String, String, String)], service: &str| {
        rows.iter().find(|r| r.0 == service).cloned().unwrap()
    };

    // Unknown source: open services pass (SIP with its rules), trusted and closed drop.
    let unknown = explain("198.51.100.9");
    let sip = find(&unknown, "sip");
    assert_eq!(sip.1, "pass");
    assert!(sip.2.contains("sip-udp-40-per-2s"), "{sip:?}");
    assert_eq!(
        find(&unknown, "web"),
        (
            "web".into(),
            "drop".into(),
            "not trusted: allow-listed sources only".into()
        )
    );
    assert_eq!(find(&unknown, "ami").1, "drop");
    assert_eq!(find(&unknown, "(no service)").2, "default policy: pass");

    // Allowed for web only.
    let office = explain("10.77.0.2");
    assert_eq!(
        find(&office, "web"),
        (
            "web".into(),
            "pass".into(),
            "allow-listed by 10.77.0.2/32 (office)".into()
        )
    );
    // SIP is judged per kind of port: the rate rules watch UDP only.
    assert_eq!(
        find(&office, "sip").2,
        "tcp 5060: open service; \
         udp 5060: open service, subject to rate rules sip-udp-120-per-60s, sip-udp-40-per-2s"
    );
    assert_eq!(find(&office, "ami").2, "service closed to everyone");

    // Denied: every service drops.
    let scanner = explain("10.77.0.3");
    assert!(
        scanner
            .iter()
            .all(|r| r.1 == "drop" && r.2 == "denied by 10.77.0.3/32 (scanner)"),
        "{scanner:?}"
    );

    // Banned: every service drops, with the ban's reason; the check agrees with traffic.
    send_udp(&link, ATTACKER, 41);
    guard
        .wait_for("banned 10.77.0.4", Duration::from_secs(5))
        .unwrap();
    let banned = explain(ATTACKER);
    assert!(
        banned.iter().all(|r| r.1 == "drop"
            && r.2
                .starts_with("banned (rate-limit by rule sip-udp-40-per-2s")),
        "{banned:?}"
    );
    let table = String::from_utf8_lossy(&cli(&socket, &["explain", ATTACKER]).stdout).to_string();
    assert!(table.starts_with("10.77.0.4:\nSERVICE"), "{table}");
    assert!(guard.stop().unwrap().success());
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn monitor_mode_switches_at_run_time() {
    let (link, config) = setup();
    let socket = TempSocket::new("monitor");
    let (mut guard, program_id) = start(&link, &config, &["--control-socket", &socket]);
    let arrived = |count: usize| delivered(&link, DENIED, count);
    assert_eq!(arrived(3), 0);
    let out = cli(&socket, &["monitor", "on"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&cli(&socket, &["status", "--json"]).stdout).unwrap();
    assert_eq!(status["monitor"], true);
    assert_eq!(arrived(3), 3, "monitor mode passes the denied source");
    let maps = KernelMaps::from_program_id(program_id).unwrap();
    assert_eq!(
        maps.verdict(Reason::Denied).unwrap().packets,
        6,
        "and still counts it as denied"
    );
    assert!(cli(&socket, &["monitor", "off"]).status.success());
    assert_eq!(arrived(3), 0);
    guard
        .wait_for("monitor mode ON by the operator", Duration::from_secs(2))
        .unwrap();
    assert!(guard.stop().unwrap().success());
}
