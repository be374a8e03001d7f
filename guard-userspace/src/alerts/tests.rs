//! The alert sinks against a local HTTP receiver started by each test.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;

/// Records every POSTed JSON body; answers 500 to the first `failures`
/// requests, 200 after.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicU64>,
}

async fn read_request(stream: &mut TcpStream) -> Option<Value> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())?;
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    serde_json::from_slice(&data[head_end..head_end + length]).ok()
}

impl Receiver {
    async fn start(failures: u64) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicU64::new(0));
        let (b, r) = (Arc::clone(&bodies), Arc::clone(&requests));
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let Some(body) = read_request(&mut stream).await else {
                    continue;
                };
                let n = r.fetch_add(1, Ordering::SeqCst);
                let status = if n < failures {
                    "500 Internal Server Error"
                } else {
                    b.lock().unwrap().push(body);
                    "200 OK"
                };
                let response =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        Receiver {
            url,
            bodies,
            requests,
        }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// Waits until `n` bodies arrived (or fails after `timeout`).
    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let bodies = self.bodies();
            if bodies.len() >= n {
                return bodies;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages within {timeout:?}: {bodies:?}",
                bodies.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn config(url: &str) -> AlertConfig {
    let mut config = parse(&format!("[[alerts]]\nkind = \"webhook\"\nurl = {url:?}\n"))
        .unwrap()
        .remove(0);
    config.burst_gap = Duration::from_millis(800);
    config.summary_every = Duration::from_millis(400);
    config.retries = 4;
    config.backoff = Duration::from_millis(20);
    config
}

/// The `[[alerts]]` of a config text, validated as `sipguard run` does.
fn parse(text: &str) -> Result<Vec<AlertConfig>, crate::policy::config::ConfigError> {
    crate::policy::config::Config::parse(text, "site.toml").map(|c| c.alerts)
}

fn notice(i: u32) -> BanNotice {
    BanNotice {
        source: format!("203.0.113.{}", i % 250),
        reason: if i.is_multiple_of(2) {
            "rate-limit"
        } else {
            "auth-failure"
        }
        .to_string(),
        evidence: "sip-udp-40-per-2s".to_string(),
        duration: Duration::from_secs(3600),
        users: vec![format!("10{:02}", i % 3)],
    }
}

fn events(bodies: &[Value], event: &str) -> Vec<Value> {
    bodies
        .iter()
        .filter(|b| b["event"] == event)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_10000_bans_sends_one_attack_message_and_few_summaries() {
    let receiver = Receiver::start(0).await;
    let alerts = Alerts::start(&[config(&receiver.url)]).unwrap();
    // `ban` is not async: 10,000 calls cannot wait on the sink.
    for i in 0..10_000 {
        alerts.ban(notice(i));
    }
    let first = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(first[0]["event"], "attack_started", "{first:?}");
    assert_eq!(first[0]["source"], "203.0.113.0");
    let text = first[0]["text"].as_str().unwrap();
    assert!(
        text.contains("attack started. Banned 203.0.113.0 for 1h (rate-limit): sip-udp-40-per-2s"),
        "{text}"
    );

    // The attack ends 800 ms after the last ban; every ban is accounted for
    // by then, counted or told as lost to the full queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    let bodies = loop {
        let bodies = receiver.bodies();
        let summaries = events(&bodies, "summary");
        let told: u64 = summaries
            .iter()
            .map(|s| s["bans"].as_u64().unwrap() + s["lost"].as_u64().unwrap())
            .sum();
        if told == 9_999 {
            break bodies;
        }
        assert!(Instant::now() < deadline, "told {told} of 9999: {bodies:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(events(&bodies, "attack_started").len(), 1, "{bodies:?}");
    let summaries = events(&bodies, "summary");
    assert!(
        (1..=4).contains(&summaries.len()),
        "a handful of messages, not 10,000: {bodies:?}"
    );
    let summary = &summaries[0];
    assert!(
        summary["text"].as_str().unwrap().contains("Top sources: "),
        "{summary}"
    );
    assert!(summary["top_users"].as_array().unwrap().len() <= 3);
    drop(alerts);
}

#[tokio::test]
async fn a_failing_receiver_is_retried_until_it_answers() {
    let receiver = Receiver::start(2).await;
    let alerts = Alerts::start(&[config(&receiver.url)]).unwrap();
    alerts.ban(notice(7));
    let bodies = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        receiver.requests.load(Ordering::SeqCst),
        3,
        "two 500s, then 200"
    );
    assert_eq!(bodies[0]["event"], "attack_started");
    assert_eq!(bodies[0]["reason"], "auth-failure");
    assert_eq!(bodies[0]["ban_seconds"], 3600);
}

#[tokio::test]
async fn a_dead_sink_delays_neither_bans_nor_the_other_sinks() {
    // A port nobody listens on: every attempt fails at once.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/hook", dead.local_addr().unwrap());
    drop(dead);
    let receiver = Receiver::start(0).await;
    let alerts = Alerts::start(&[config(&dead_url), config(&receiver.url)]).unwrap();
    for i in 0..10_000 {
        alerts.ban(notice(i));
    }
    let bodies = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(bodies[0]["event"], "attack_started");
}

#[test]
fn bad_urls_are_refused_with_their_line() {
    for (url, reason) in [
        ("not a url", "relative URL without a base"),
        ("ftp://example.org/hook", "only http and https"),
    ] {
        let error = parse(&format!(
            "[guard]\n\n[[alerts]]\nkind = \"webhook\"\nurl = {url:?}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("site.toml:5: key `alerts[0].url`:") && error.contains(reason),
            "{error}"
        );
    }
}

#[test]
fn email_keys_are_checked_with_their_line() {
    let good = "[[alerts]]\nkind = \"email\"\nserver = \"mail.example.org\"\n\
                from = \"sipguard <pbx@example.org>\"\nto = [\"admin@example.org\"]\n";
    let config = parse(good).unwrap().remove(0);
    assert_eq!(config.starttls, StartTls::Required);
    assert_eq!(config.map_full_percent, 90);
    for (extra, line_key) in [
        (
            "username = \"pbx\"\n",
            "site.toml:6: key `alerts[0].username`: needs `password`",
        ),
        (
            "password = \"x\"\n",
            "site.toml:6: key `alerts[0].password`: needs `username`",
        ),
        (
            "username = \"pbx\"\npassword = \"x\"\npassword_file = \"/p\"\n",
            "site.toml:8: key `alerts[0].password_file`: give `password` or",
        ),
        (
            "url = \"http://x\"\n",
            "site.toml:6: key `alerts[0].url`: a webhook key",
        ),
        ("port = 0\n", "site.toml:6: key `alerts[0].port`"),
        (
            "starttls = \"maybe\"\n",
            "site.toml:6: key `alerts[0].starttls`: unknown variant",
        ),
        (
            "map_full_percent = 0\n",
            "site.toml:6: key `alerts[0].map_full_percent`",
        ),
        (
            "smtp = \"x\"\n",
            "site.toml:6: key `alerts[0].smtp`: unknown field `smtp`",
        ),
    ] {
        let error = parse(&format!("{good}{extra}")).unwrap_err().to_string();
        assert!(error.starts_with(line_key), "{extra}: {error}");
    }
    let bad_to = good.replace("admin@example.org", "admin at example");
    let error = parse(&bad_to).unwrap_err().to_string();
    assert!(
        error.starts_with("site.toml:5: key `alerts[0].to`: \"admin at example\" is not"),
        "{error}"
    );
    let webhook_with_mail =
        "[[alerts]]\nkind = \"webhook\"\nurl = \"http://x/\"\nfrom = \"a@b.c\"\n";
    let error = parse(webhook_with_mail).unwrap_err().to_string();
    assert!(
        error.starts_with("site.toml:4: key `alerts[0].from`: an e-mail key"),
        "{error}"
    );
    let error = parse("[[alerts]]\nkind = \"email\"\nto = [\"a@b.c\"]\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("e-mail needs `server`"), "{error}");
}

#[test]
fn a_password_is_never_printed() {
    let config = parse(
        "[[alerts]]\nkind = \"email\"\nserver = \"mail.example.org\"\nfrom = \"a@b.c\"\n\
         to = [\"d@e.f\"]\nusername = \"u\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    assert!(!format!("{config:?}").contains("hunter2"));
}

#[tokio::test]
async fn an_unreadable_password_file_stops_the_start() {
    let mut config = parse(
        "[[alerts]]\nkind = \"email\"\nserver = \"mail.example.org\"\nfrom = \"a@b.c\"\n\
         to = [\"d@e.f\"]\nusername = \"u\"\npassword_file = \"/nonexistent/sipguard-pw\"\n",
    )
    .unwrap();
    let error = Alerts::start(&config).err().expect("refused").to_string();
    assert!(
        error.contains("password_file /nonexistent/sipguard-pw"),
        "{error}"
    );
    config[0].password_file = None;
    config[0].password = Some(Secret("pw".into()));
    assert!(Alerts::start(&config).is_ok());
}

#[test]
fn every_message_has_a_subject_and_a_readable_text() {
    let host = "pbx1";
    let fill = Message::MapNearlyFull(Fill {
        map: "bans".into(),
        entries: 59_000,
        capacity: 65_536,
    });
    assert_eq!(
        text::subject(host, &fill),
        "sipguard on pbx1: bans map 90% full"
    );
    assert!(text::text(host, &fill).contains("59000 of 65536 entries"));
    let body = webhook::body(host, &fill);
    assert_eq!(
        (body["event"].as_str(), body["percent"].as_u64()),
        (Some("map_nearly_full"), Some(90))
    );
    let gone = Message::Interface {
        iface: "eth0".into(),
        attached: false,
    };
    assert_eq!(
        text::subject(host, &gone),
        "sipguard on pbx1: detached: eth0 is gone"
    );
    assert_eq!(webhook::body(host, &gone)["event"], "detached");
    let failed = Message::Failed {
        error: "ban event reader stopped".into(),
    };
    assert!(text::text(host, &failed).contains("failed and is stopping: ban event reader"));
    assert_eq!(webhook::body(host, &failed)["event"], "controller_failed");
}

#[tokio::test]
async fn the_last_word_reaches_a_live_sink_and_gives_up_on_a_silent_one() {
    // Accepts connections and never answers: the last word must not wait for it.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/hook", silent.local_addr().unwrap());
    let receiver = Receiver::start(0).await;
    let alerts = Alerts::start(&[config(&silent_url), config(&receiver.url)]).unwrap();
    let started = Instant::now();
    alerts
        .last_word(
            "the XDP program could not be attached",
            Duration::from_millis(500),
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let bodies = receiver.wait_for(1, Duration::from_secs(1)).await;
    assert_eq!(bodies[0]["event"], "controller_failed");
    drop(silent);
}

#[tokio::test]
async fn map_fill_and_interface_changes_reach_the_sink() {
    let receiver = Receiver::start(0).await;
    let mut config = config(&receiver.url);
    config.map_full_percent = 50;
    let alerts = Alerts::start(&[config]).unwrap();
    let fill = |entries| Fill {
        map: "deny_v4".into(),
        entries,
        capacity: 100,
    };
    alerts.fills(vec![fill(10)]);
    alerts.fills(vec![fill(60)]);
    let bodies = receiver.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(bodies[0]["event"], "map_nearly_full", "{bodies:?}");
    assert_eq!(bodies[0]["map"], "deny_v4");
    alerts.fills(vec![fill(70)]);
    // The newest state wins on the watch channel: one change at a time.
    alerts.interface("eth0", false);
    receiver.wait_for(2, Duration::from_secs(5)).await;
    alerts.interface("eth0", true);
    let bodies = receiver.wait_for(3, Duration::from_secs(5)).await;
    let events: Vec<_> = bodies.iter().map(|b| b["event"].clone()).collect();
    assert_eq!(events, ["map_nearly_full", "detached", "reattached"]);
}

#[test]
fn alerts_config_parses_and_names_unknown_kinds() {
    #[derive(serde::Deserialize)]
    struct File {
        alerts: Vec<AlertConfig>,
    }
    let file: File = toml::from_str(
        r#"
[[alerts]]
kind = "webhook"
url = "https://chat.example.org/hooks/abc"
summary_every = "30m"
"#,
    )
    .unwrap();
    assert_eq!(file.alerts[0].summary_every, Duration::from_secs(1800));
    assert_eq!(file.alerts[0].burst_gap, Duration::from_secs(600));
    assert_eq!(file.alerts[0].retries, 6);
    let error = toml::from_str::<File>("[[alerts]]\nkind = \"pager\"\nurl = \"http://x\"\n")
        .err()
        .unwrap();
    assert!(
        error.to_string().contains("unknown variant `pager`"),
        "{error}"
    );
    let error = toml::from_str::<File>(
        "[[alerts]]\nkind = \"webhook\"\nurl = \"http://x\"\nbackoff = \"0s\"\n",
    )
    .err()
    .unwrap();
    assert!(error.to_string().contains("longer than 0s"), "{error}");
}

#[test]
fn the_examples_alerts_parse_and_document_every_key() {
    let example = include_str!("../../../sipguard.example.toml");
    // The commented-out entries, uncommented (their own comments stay comments).
    let mut text = String::new();
    let mut inside = false;
    for line in example.lines() {
        if line == "# [[alerts]]" {
            inside = true;
        } else if !line.starts_with("# ") {
            inside = false;
        }
        if inside {
            text.push_str(&line[2..]);
            text.push('\n');
        }
    }
    let alerts = parse(&text).unwrap();
    let kinds: Vec<_> = alerts.iter().map(|a| a.kind).collect();
    assert_eq!(kinds, [AlertKind::Webhook, AlertKind::Email]);
    // Every key serde knows, from its own list of them.
    let error = parse("[[alerts]]\nkind = \"webhook\"\nno_such_key = 1\n")
        .unwrap_err()
        .reason;
    let keys = error.split("expected one of ").nth(1).expect(&error);
    for key in keys.split(", ") {
        let key = key.trim_matches('`');
        assert!(
            text.contains(&format!("\n{key} = ")) || text.contains(&format!("# {key} = ")),
            "{key} is not in sipguard.example.toml's [[alerts]] examples"
        );
    }
}
