//! `[[alerts]]` end to end: a flooding source is banned by the kernel, and
//! the ban reaches a webhook receiver the test runs in the PBX's namespace,
//! while a second, dead sink changes nothing. Needs root.
use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;
use sipguard_tests::{
    daemon::{start_guard, TempDir, TempFile},
    netns::Link,
    traffic::{delivered, send_udp, UdpSink, CLIENT_ADDRS, PBX_ADDRS},
};

const ATTACKER: &str = "10.77.0.4";
const HOOK_PORT: u16 = 18_080;
/// Nobody listens here: every delivery to it fails.
const DEAD_PORT: u16 = 18_081;

/// Reads one HTTP request; returns its JSON body.
fn read_body(stream: &mut std::net::TcpStream) -> Option<Value> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())?;
        if data.len() >= end + 4 + length {
            return serde_json::from_slice(&data[end + 4..end + 4 + length]).ok();
        }
    }
}

/// A webhook receiver on 127.0.0.1:HOOK_PORT inside `ns`: each body goes
/// to the channel. It stops with the namespace's test.
fn receiver(link: &Link) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    link.right.run_in(move || {
        let listener = TcpListener::bind(("127.0.0.1", HOOK_PORT)).expect("bind the hook port");
        ready_tx.send(()).unwrap();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            if let Some(body) = read_body(&mut stream) {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                if tx.send(body).is_err() {
                    return;
                }
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver ready");
    rx
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_kernel_ban_reaches_the_webhook_and_a_dead_sink_changes_nothing() {
    let link = Link::new("alerts", &CLIENT_ADDRS, &PBX_ADDRS).expect("namespaces and veth");
    let config = TempFile::new(
        "alerts.toml",
        &format!(
            "[[alerts]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{DEAD_PORT}/hook\"\n\
             backoff = \"100ms\"\n\
             [[alerts]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{HOOK_PORT}/hook\"\n"
        ),
    );
    let bodies = receiver(&link);
    // A socket of its own: another daemon may hold the default one.
    let dir = TempDir::new("alerts");
    let socket = format!("{}/control.sock", dir.path());
    let (mut guard, _) = start_guard(
        &link.right,
        &link.right_if,
        &config,
        &["--control-socket", &socket],
    )
    .expect("sipguard attached");
    guard
        .wait_for("alerts: posting to", Duration::from_secs(5))
        .unwrap();

    // 41 datagrams within 2 s: the 41st bans; the rest are dropped.
    let sink = UdpSink::start(&link);
    send_udp(&link, ATTACKER, 41);
    sink.finish();
    let banned = Instant::now();
    guard
        .wait_for("banned 10.77.0.4", Duration::from_secs(5))
        .unwrap();
    assert_eq!(delivered(&link, ATTACKER, 5), 0, "the ban is in force");

    let body = bodies
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no webhook within 10 s ({e}):\n{}", guard.log()));
    eprintln!("webhook after {:?}: {body}", banned.elapsed());
    assert_eq!(body["event"], "attack_started", "{body}");
    assert_eq!(body["source"], ATTACKER);
    assert_eq!(body["reason"], "rate-limit");
    assert_eq!(body["ban_seconds"], 3600);
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains(
            "attack started. Banned 10.77.0.4 for 1h (rate-limit): rule sip-udp-40-per-2s"
        ),
        "{text}"
    );
    // One ban, one message: nothing more within the summary period.
    assert!(bodies.recv_timeout(Duration::from_secs(1)).is_err());
    // The dead sink is retried in the background.
    guard
        .wait_for("attempt 2 in", Duration::from_secs(5))
        .unwrap();
    assert!(guard.stop().unwrap().success(), "{}", guard.log());
}
