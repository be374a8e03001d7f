//! The Prometheus alerting rules in dist/: checked and unit-tested with
//! Debian's promtool, then loaded by Debian's Prometheus scraping a running
//! sipguard in a network namespace, where a flood must fire the attack rule.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use sipguard_tests::{
    crowdsec::Lapi,
    daemon::{start_guard, Daemon, TempDir, TempFile},
    netns::Link,
    traffic::{send_udp, UdpSink, CLIENT_ADDRS, PBX_ADDRS},
};

const METRICS_PORT: u16 = 19478;
const PROMETHEUS_PORT: u16 = 19090;
const ATTACKER: &str = "10.77.0.4";

fn dist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .join("dist")
}

/// Runs promtool; its output on failure.
fn promtool(args: &[&str]) -> Result<String> {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dist())
        .output()
        .context("running promtool (Debian's `prometheus`; `cargo xtask setup` installs it)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("promtool {args:?} failed:\n{text}");
    }
    Ok(text)
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let checked = promtool(&["check", "rules", "sipguard.rules.yml"]).unwrap();
    assert!(checked.contains("SUCCESS: 12 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "sipguard.rules.test.yml"]).unwrap();
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn promtool_rejects_a_broken_rule() {
    let dir = TempDir::new("rules");
    let broken = dir.0.join("broken.yml");
    std::fs::write(
        &broken,
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(sipguard_packets_total[5m] > 0\n",
    )
    .unwrap();
    let error = promtool(&["check", "rules", broken.to_str().unwrap()]).unwrap_err();
    assert!(format!("{error:#}").contains("parse error"), "{error:#}");
}

/// The `sipguard_*` series the rules use.
fn series_in_rules() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(dist().join("sipguard.rules.yml")).unwrap();
    let mut names = BTreeSet::new();
    let mut rest = rules.as_str();
    while let Some(at) = rest.find("sipguard_") {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(rest.len());
        names.insert(rest[..end].to_string());
        rest = &rest[end..];
    }
    names
}

/// Percent-encodes a query parameter (PromQL has braces, quotes, brackets).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET from Prometheus's API inside the PBX namespace; the JSON `data`.
fn api(link: &Link, path: String) -> Result<Value> {
    link.right
        .run_in(move || -> Result<Value> {
            let mut stream = TcpStream::connect(("127.0.0.1", PROMETHEUS_PORT))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(
                stream,
                "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            let (_, body) = response
                .split_once("\r\n\r\n")
                .context("no HTTP body from Prometheus")?;
            let json: Value = serde_json::from_str(body).context("Prometheus's answer")?;
            if json["status"] != "success" {
                bail!("Prometheus: {json}");
            }
            Ok(json["data"].clone())
        })
        .join()
        .expect("API thread")?
}

/// The instant-query result vector.
fn query(link: &Link, promql: &str) -> Result<Vec<Value>> {
    let data = api(link, format!("/api/v1/query?query={}", encode(promql)))?;
    Ok(data["result"].as_array().cloned().unwrap_or_default())
}

/// The state ("pending", "firing") of an alert, if it is active.
fn alert_state(link: &Link, name: &str) -> Result<Option<String>> {
    let data = api(link, "/api/v1/alerts".to_string())?;
    Ok(data["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["labels"]["alertname"] == name)
        .and_then(|a| a["state"].as_str().map(str::to_string)))
}

/// Polls `check` every 250 ms until it returns true or `timeout` passes.
fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(250));
    }
}

fn start_prometheus(link: &Link, data: &TempDir) -> Result<(Daemon, TempFile)> {
    let rules = dist().join("sipguard.rules.yml");
    let config = TempFile::new(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n  - job_name: sipguard\n    \
             static_configs: [{{targets: [\"127.0.0.1:{METRICS_PORT}\"]}}]\n",
            rules.display()
        ),
    );
    let child = link.right.spawn(
        "prometheus",
        &[
            &format!("--config.file={}", config.path()),
            &format!("--storage.tsdb.path={}", data.path()),
            &format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"),
        ],
    )?;
    let mut prometheus = Daemon::watch(child);
    prometheus.wait_for(
        "Server is ready to receive web requests",
        Duration::from_secs(30),
    )?;
    Ok((prometheus, config))
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn prometheus_fires_the_attack_rule_during_a_flood() {
    let link = Link::new("prom", &CLIENT_ADDRS, &PBX_ADDRS).expect("namespaces and veth");
    // A feed read from a file and a real CrowdSec LAPI: the health series
    // the feed and LAPI rules read are exported, so their quiet checks
    // below would catch a rule that fires on a healthy source.
    let feed = TempFile::new("prom-feed.txt", "# a local drop list\n203.0.113.0/24\n");
    let lapi = Lapi::start(&link.right).expect("a CrowdSec LAPI");
    let config = TempFile::new(
        "prom.toml",
        &format!(
            "[[feeds]]\nname = \"local-drop\"\nkind = \"list\"\nfile = \"{}\"\n\n\
             [crowdsec]\nlapi_url = \"{}\"\nbouncer_api_key = \"{}\"\npoll_interval = \"1s\"\n",
            feed.path(),
            lapi.url(),
            lapi.bouncer_key
        ),
    );
    let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
    // A socket of its own: another daemon may hold the default one.
    let dir = TempDir::new("prom-ctl");
    let socket = format!("{}/control.sock", dir.path());
    let (mut guard, _) = start_guard(
        &link.right,
        &link.right_if,
        &config,
        &["--metrics-addr", &metrics_addr, "--control-socket", &socket],
    )
    .expect("sipguard attached");
    guard
        .wait_for("serving metrics", Duration::from_secs(5))
        .unwrap();
    guard
        .wait_for("crowdsec full sync", Duration::from_secs(20))
        .unwrap();
    let data = TempDir::new("prometheus-data");
    let (prometheus, _config) = start_prometheus(&link, &data).expect("prometheus started");

    // Scraped, with the ban counter known at zero, and no attack yet.
    let created = r#"sipguard_bans_created_total{job="sipguard",reason="rate-limit"}"#;
    wait_until("two scrapes of sipguard", Duration::from_secs(30), || {
        query(&link, &format!("count_over_time({created}[1m]) >= 2"))
            .map(|r| r.len() == 1)
            .unwrap_or(false)
    });
    assert_eq!(
        alert_state(&link, "SipguardAttackInProgress").unwrap(),
        None
    );
    // Both fleet sources are scraped as healthy (0 failed pulls in a row):
    // what the feed and LAPI rules must stay quiet on.
    for (origin, source) in [("crowdsec", "crowdsec"), ("feed", "local-drop")] {
        let series = format!(
            r#"sipguard_fleet_failing{{job="sipguard",origin="{origin}",source="{source}"}}"#
        );
        let found = query(&link, &series).unwrap();
        assert_eq!(found.len(), 1, "{series}: {found:?}");
        assert_eq!(found[0]["value"][1], "0", "{series}: {found:?}");
    }

    // 41 datagrams within 2 s: the 41st bans the source.
    let sink = UdpSink::start(&link);
    send_udp(&link, ATTACKER, 41);
    sink.finish();
    guard
        .wait_for("banned 10.77.0.4", Duration::from_secs(5))
        .unwrap();
    let flooded = Instant::now();
    wait_until("the attack alert firing", Duration::from_secs(30), || {
        alert_state(&link, "SipguardAttackInProgress")
            .map(|s| s.as_deref() == Some("firing"))
            .unwrap_or(false)
    });
    eprintln!("attack alert firing {:?} after the ban", flooded.elapsed());

    // Every series the rules use is one the daemon really exports.
    let exported: BTreeSet<String> = query(&link, r#"count by (__name__) ({job="sipguard"})"#)
        .unwrap()
        .iter()
        .filter_map(|r| r["metric"]["__name__"].as_str().map(str::to_string))
        .collect();
    let used = series_in_rules();
    assert!(used.len() >= 6, "{used:?}");
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "rules use {missing:?}, not exported:\n{exported:?}"
    );
    // None of the other rules fires on a healthy guard.
    for name in [
        "SipguardBanMapFilling",
        "SipguardBanMapFull",
        "SipguardRingBufferLosses",
        "SipguardScrapeFailing",
        "SipguardScrapeMissing",
        "SipguardFeedFailing",
        "SipguardLapiUnreachable",
        "SipguardLapiReportsQueued",
    ] {
        assert_eq!(alert_state(&link, name).unwrap(), None, "{name}");
    }
    drop(prometheus);
    drop(lapi);
}
