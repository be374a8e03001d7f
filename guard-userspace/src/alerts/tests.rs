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
    AlertConfig {
        kind: AlertKind::Webhook,
        url: url.to_string(),
        burst_gap: Duration::from_millis(800),
        summary_every: Duration::from_millis(400),
        retries: 4,
        backoff: Duration::from_millis(20),
    }
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

#[tokio::test]
async fn bad_urls_are_refused_before_anything_starts() {
    for url in ["not a url", "ftp://example.org/hook"] {
        let error = Alerts::start(&[config(url)]).err().expect("refused");
        assert!(error.to_string().contains("alert webhook URL"), "{error}");
    }
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
