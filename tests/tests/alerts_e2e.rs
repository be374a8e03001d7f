//! `[[alerts]]` end to end, each test in namespaces of its own: kernel
//! bans reach a webhook receiver and an SMTP sink (Debian's aiosmtpd with
//! STARTTLS and AUTH) run in the PBX's namespace; a flood of 10,000 bans is
//! a handful of messages; dead or silent sinks never hold a ban back; a
//! nearly full ban map and a vanished interface are told. Needs root.
use std::{
    io::{Read, Write},
    net::TcpListener,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use sipguard_tests::{
    daemon::{start_guard, Daemon, TempDir, TempFile},
    frames, metrics,
    netns::Link,
    smtp::{SmtpSink, PASSWORD, USER},
    traffic::{cli, delivered, send_udp, UdpSink, CLIENT_ADDRS, PBX_ADDRS, PBX_V4},
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

const SMTP_PORT: u16 = 18_025;
/// Accepts connections and never says a word (a hung mail server).
const SILENT_PORT: u16 = 18_026;
/// Spoofed sources of the 10,000-ban flood.
const FLOOD: u32 = 10_000;
/// Every UDP datagram to 5060 past the first in 10 s bans its source.
const FLOOD_RULE: &str = "[[rate_rules]]\nname = \"sip-udp-1-per-10s\"\nports = [\"5060/udp\"]\n\
                          packets = 1\nwindow = \"10s\"\nban = \"1h\"\n";

/// The e-mail sink's `[[alerts]]` entry.
fn email_alerts(sink: &SmtpSink, dir: &TempDir, extra: &str) -> String {
    let password_file = format!("{}/smtp-password", dir.path());
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    format!(
        "[[alerts]]\nkind = \"email\"\nserver = \"localhost\"\nport = {}\n\
         starttls = \"required\"\nusername = \"{USER}\"\npassword_file = \"{password_file}\"\n\
         ca_file = \"{}\"\nfrom = \"sipguard <sipguard@pbx.test>\"\n\
         to = [\"admin@pbx.test\", \"oncall@pbx.test\"]\n{extra}",
        sink.port,
        sink.certificates.ca.display()
    )
}

/// Starts the guard on the link with `config`, its own control socket.
fn guard_with(link: &Link, config: &TempFile, dir: &TempDir) -> (Daemon, String) {
    let socket = format!("{}/control.sock", dir.path());
    let (guard, _) = start_guard(
        &link.right,
        &link.right_if,
        config,
        &["--control-socket", &socket],
    )
    .expect("sipguard attached");
    (guard, socket)
}

fn status(socket: &str) -> Value {
    let out = cli(socket, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status: {e}: {out:?}"))
}

/// Waits until `done` holds for the guard's status.
fn wait_status(socket: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = status(socket);
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two datagrams from each of `count` spoofed sources (10.100.0.0/14),
/// written as raw frames onto the client's end of the veth.
fn flood_sources(link: &Link, count: u32) {
    let iface = link.left_if.clone();
    link.left
        .run_in(move || {
            let name = std::ffi::CString::new(iface).unwrap();
            // SAFETY: plain socket calls on a socket this closure owns.
            unsafe {
                let ifindex = libc::if_nametoindex(name.as_ptr());
                assert_ne!(ifindex, 0, "the client's veth");
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
                let mut to: libc::sockaddr_ll = std::mem::zeroed();
                to.sll_family = libc::AF_PACKET as u16;
                to.sll_ifindex = ifindex as i32;
                to.sll_halen = 6;
                to.sll_addr[..6].copy_from_slice(&frames::MAC_DST);
                for i in 0..count {
                    let source = format!("10.{}.{}.{}", 100 + i / 65_536, (i / 256) % 256, i % 256);
                    let frame = frames::udp(&source, PBX_V4, 5060, b"OPTIONS");
                    for _ in 0..2 {
                        // A full queue is told as ENOBUFS: try again.
                        for _ in 0..1000 {
                            let sent = libc::sendto(
                                fd,
                                frame.as_ptr().cast(),
                                frame.len(),
                                0,
                                std::ptr::addr_of!(to).cast(),
                                std::mem::size_of::<libc::sockaddr_ll>() as u32,
                            );
                            if sent >= 0 {
                                break;
                            }
                            std::thread::sleep(Duration::from_micros(100));
                        }
                    }
                }
                libc::close(fd);
            }
        })
        .join()
        .expect("the flood thread")
        .expect("in the client namespace");
}

/// `sipguard_bans_created_total{reason="rate-limit"}` from the guard's
/// metrics endpoint (127.0.0.1:9477 in the PBX's namespace): the kernel
/// bans the controller heard of, each one told to the alert sinks.
fn rate_bans_heard(link: &Link) -> u64 {
    let text = metrics::scrape(&link.right, metrics::DEFAULT_ADDRESS)
        .expect("the metrics endpoint answers");
    metrics::value(&text, "sipguard_bans_created_total{reason=\"rate-limit\"}")
        .unwrap_or_else(|| panic!("no rate-limit ban counter in:\n{text}"))
}

fn subjects(mails: &[Value]) -> Vec<String> {
    mails
        .iter()
        .map(|m| m["subject"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The number just before `marker` in `text`, if any.
fn number_before(text: &str, marker: &str) -> Option<u64> {
    let before = &text[..text.find(marker)?];
    before.split_whitespace().last()?.parse().ok()
}

/// Bans the summaries account for: "N more bans in the last ...", plus
/// "M bans were not told here" (lost to a full queue).
fn bans_told(mails: &[Value]) -> u64 {
    mails
        .iter()
        .filter_map(|m| m["body"].as_str())
        .map(|b| {
            number_before(b, " more bans in the last").unwrap_or(0)
                + number_before(b, " bans were not told here").unwrap_or(0)
        })
        .sum()
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn e_mail_tells_one_attack_and_sums_up_a_10000_ban_flood() {
    let link = Link::new("mail", &CLIENT_ADDRS, &PBX_ADDRS).expect("namespaces and veth");
    let dir = TempDir::new("alerts-mail");
    let sink = SmtpSink::start(&link.right, &dir, SMTP_PORT).expect("the SMTP sink");
    // One attack for the whole test (burst_gap), summed up every 2 s.
    let config = TempFile::new(
        "alerts-mail.toml",
        &format!(
            "{FLOOD_RULE}{}",
            email_alerts(&sink, &dir, "burst_gap = \"1h\"\nsummary_every = \"2s\"\n")
        ),
    );
    let (mut guard, socket) = guard_with(&link, &config, &dir);
    guard
        .wait_for(
            "alerts: mailing admin@pbx.test, oncall@pbx.test through localhost:18025",
            Duration::from_secs(5),
        )
        .unwrap();

    // The first ban: one mail, over TLS, authenticated, to both addresses.
    send_udp(&link, ATTACKER, 2);
    guard
        .wait_for("banned 10.77.0.4", Duration::from_secs(5))
        .unwrap();
    let mails = sink
        .wait_until(Duration::from_secs(15), |m| !m.is_empty())
        .unwrap_or_else(|e| panic!("{e}\n{}", guard.log()));
    let first = &mails[0];
    assert_eq!(
        first["subject"].as_str().unwrap(),
        format!(
            "sipguard on {}: attack started (10.77.0.4 banned)",
            hostname()
        ),
        "{first}"
    );
    let body = first["body"].as_str().unwrap();
    assert!(
        body.contains(
            "attack started. Banned 10.77.0.4 for 1h (rate-limit): rule sip-udp-1-per-10s"
        ),
        "{body}"
    );
    assert_eq!(first["tls"], true);
    assert_eq!(first["user"], USER);
    assert_eq!(first["from"], "sipguard@pbx.test");
    assert_eq!(
        first["to"],
        serde_json::json!(["admin@pbx.test", "oncall@pbx.test"])
    );

    // 10,000 more bans within the same attack.
    let flood_started = Instant::now();
    flood_sources(&link, FLOOD);
    let status = wait_status(&socket, "10,001 bans in the kernel", |s| {
        s["bans_active"].as_u64() == Some(u64::from(FLOOD) + 1)
    });
    // Every ban the controller heard of (the ring may lose some in such a
    // flood) is summed up, counted or told as lost to a full queue: the
    // mails account for all of them but the first, none twice.
    let mails = sink
        .wait_until(Duration::from_secs(30), |m| {
            bans_told(m) + 1 == rate_bans_heard(&link)
        })
        .unwrap_or_else(|e| panic!("heard {} bans: {e}\n{status}", rate_bans_heard(&link)));
    let heard = rate_bans_heard(&link);
    assert!(heard > u64::from(FLOOD) / 2, "heard {heard}: {status}");
    let elapsed = flood_started.elapsed();
    let subjects = subjects(&mails);
    eprintln!(
        "{} mails for {heard} bans in {elapsed:?}: {subjects:#?}",
        mails.len()
    );
    assert_eq!(
        subjects
            .iter()
            .filter(|s| s.contains("attack started"))
            .count(),
        1,
        "one attack, one attack-started mail: {subjects:#?}"
    );
    // At most one summary per 2 s, plus the one in progress.
    let summaries = subjects.iter().filter(|s| s.contains("more bans")).count();
    let allowed = elapsed.as_secs() as usize / 2 + 2;
    assert!(
        (1..=allowed).contains(&summaries),
        "{summaries} summaries in {elapsed:?}: {subjects:#?}"
    );
    let summary = mails
        .iter()
        .filter_map(|m| m["body"].as_str())
        .find(|b| b.contains("more bans"))
        .unwrap();
    assert!(
        summary.contains("(rate-limit ") && summary.contains("Top sources: 10."),
        "{summary}"
    );
    assert!(guard.stop().unwrap().success(), "{}", guard.log());
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// A TCP listener on 127.0.0.1:`port` in `ns` that accepts and then says
/// nothing, until dropped.
struct Silent {
    stop: Arc<AtomicBool>,
}

impl Silent {
    fn start(link: &Link, port: u16) -> Silent {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let flag = Arc::clone(&stop);
        link.right.run_in(move || {
            let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the silent port");
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("silent listener");
        Silent { stop }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn dead_and_silent_sinks_hold_no_ban_back() {
    let link = Link::new("deadsink", &CLIENT_ADDRS, &PBX_ADDRS).expect("namespaces and veth");
    let dir = TempDir::new("alerts-dead");
    let _silent = Silent::start(&link, SILENT_PORT);
    // A mail server that never greets, one that is not there, a webhook
    // that is not there.
    let config = TempFile::new(
        "alerts-dead.toml",
        &format!(
            "{FLOOD_RULE}\
             [[alerts]]\nkind = \"email\"\nserver = \"127.0.0.1\"\nport = {SILENT_PORT}\n\
             starttls = \"never\"\nfrom = \"a@pbx.test\"\nto = [\"b@pbx.test\"]\n\
             backoff = \"100ms\"\n\
             [[alerts]]\nkind = \"email\"\nserver = \"localhost\"\nport = {SMTP_PORT}\n\
             from = \"a@pbx.test\"\nto = [\"b@pbx.test\"]\nbackoff = \"100ms\"\n\
             [[alerts]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{DEAD_PORT}/hook\"\n\
             backoff = \"100ms\"\n"
        ),
    );
    let (mut guard, socket) = guard_with(&link, &config, &dir);

    // The first ban goes to the sinks: they fail or hang from here on.
    send_udp(&link, ATTACKER, 2);
    guard
        .wait_for("banned 10.77.0.4", Duration::from_secs(5))
        .unwrap();
    assert_eq!(delivered(&link, ATTACKER, 5), 0, "the ban is in force");
    guard
        .wait_for("attempt 2 in", Duration::from_secs(10))
        .unwrap();
    // 10,000 bans while the sinks are down: all of them in the kernel.
    flood_sources(&link, FLOOD);
    wait_status(&socket, "10,001 bans in the kernel", |s| {
        s["bans_active"].as_u64() == Some(u64::from(FLOOD) + 1)
    });
    // The control socket answers too: a manual ban lands at once.
    let out = cli(&socket, &["ban", "add", "10.77.0.3", "--for", "1h"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        delivered(&link, "10.77.0.3", 5),
        0,
        "the manual ban is in force"
    );
    assert!(guard.stop().unwrap().success(), "{}", guard.log());
}

/// Waits for the next webhook body whose event is `event`.
fn next_event(bodies: &mpsc::Receiver<Value>, event: &str, guard: &Daemon) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let body = bodies
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no {event} webhook ({e}):\n{}", guard.log()));
        if body["event"] == event {
            return body;
        }
        eprintln!("(waiting for {event}) {body}");
    }
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_nearly_full_ban_map_and_a_vanished_interface_are_told() {
    let link = Link::new("health", &CLIENT_ADDRS, &PBX_ADDRS).expect("namespaces and veth");
    let dir = TempDir::new("alerts-health");
    let bodies = receiver(&link);
    let config = TempFile::new(
        "alerts-health.toml",
        &format!(
            "[guard]\nmax_bans = 20\n\
             [[alerts]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{HOOK_PORT}/hook\"\n\
             map_full_percent = 50\nmap_check_every = \"200ms\"\n"
        ),
    );
    let (mut guard, socket) = guard_with(&link, &config, &dir);

    // 10 of 20: half full.
    for i in 1..=10 {
        let out = cli(
            &socket,
            &["ban", "add", &format!("198.51.100.{i}"), "--for", "1h"],
        );
        assert!(out.status.success(), "{out:?}");
    }
    let full = next_event(&bodies, "map_nearly_full", &guard);
    assert_eq!(full["map"], "bans", "{full}");
    assert_eq!(
        (full["entries"].as_u64(), full["capacity"].as_u64()),
        (Some(10), Some(20))
    );
    assert!(
        full["text"]
            .as_str()
            .unwrap()
            .contains("the bans map is 50% full (10 of 20 entries)"),
        "{full}"
    );

    // The veth deleted and made again: detached, then attached again.
    link.left.ip(&["link", "del", &link.left_if]).unwrap();
    let gone = next_event(&bodies, "detached", &guard);
    assert_eq!(gone["iface"], link.right_if.as_str());
    assert_eq!(status(&socket)["attached"], false);
    link.plumb(&CLIENT_ADDRS, &PBX_ADDRS).unwrap();
    let back = next_event(&bodies, "reattached", &guard);
    assert!(
        back["text"]
            .as_str()
            .unwrap()
            .contains("is back and the guard is attached again"),
        "{back}"
    );
    // Still nearly full: said once only.
    while let Ok(body) = bodies.try_recv() {
        assert_ne!(body["event"], "map_nearly_full", "{body}");
    }
    assert!(guard.stop().unwrap().success(), "{}", guard.log());
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_failing_controller_sends_a_last_alert_before_it_exits() {
    let link = Link::new("fail", &CLIENT_ADDRS, &PBX_ADDRS).expect("namespaces and veth");
    let dir = TempDir::new("alerts-fail");
    let bodies = receiver(&link);
    let config = TempFile::new(
        "alerts-fail.toml",
        &format!("[[alerts]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{HOOK_PORT}/hook\"\n"),
    );
    // The config is fine; the interface is not there: `run` fails after
    // the alert sinks started.
    let socket = format!("{}/control.sock", dir.path());
    let bin = sipguard_tests::daemon::sipguard_bin();
    let out = link
        .right
        .command(bin.to_str().unwrap())
        .args([
            "run",
            "--iface",
            "sgnosuchif0",
            "--no-pin",
            "--config",
            config.path(),
        ])
        .args(["--control-socket", &socket, "--state-dir", dir.path()])
        .output()
        .expect("running sipguard");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    // The alert went out before the process ended: it is already here.
    let body = bodies
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("no last alert ({e}):\n{stderr}"));
    assert_eq!(body["event"], "controller_failed", "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("sgnosuchif0"), "{body}");
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .contains("the controller failed and is stopping"),
        "{body}"
    );
}
