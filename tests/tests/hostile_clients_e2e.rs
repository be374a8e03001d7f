//! Hostile local clients (issue 15, item 4): 2,000 idle connections from
//! an unprivileged user to the metrics port of a daemon limited to 1,024
//! open files. Control commands and ban writes go on working during the
//! flood, and the metrics endpoint serves again once it ends.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use sipguard_tests::{
    daemon::{start_guard, TempDir, TempFile, TempSocket},
    metrics,
    netns::{Link, NetNs},
    traffic::{cli, delivered, CLIENT_ADDRS, PBX_ADDRS},
};

/// Generous: only a hang (a starved control socket) fails against it.
const HANG: Duration = Duration::from_secs(30);
const METRICS_PORT: u16 = 19491;
const FLOOD: usize = 2000;
/// `nobody` on Debian.
const UNPRIVILEGED: &str = "65534";

/// Runs the CLI, failing the test if it does not finish within [`HANG`].
fn cli_within(socket: &str, args: &[&str]) -> Output {
    let (socket, args): (String, Vec<String>) =
        (socket.into(), args.iter().map(|a| a.to_string()).collect());
    let what = args.join(" ");
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = done.send(cli(&socket, &args));
    });
    result
        .recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("`sipguard {what}` hung during the flood"))
}

/// The flood: `sipguard-flood` as `nobody`, with files enough for its
/// connections, inside the daemon's namespace. Killed on drop.
struct Flood(Child);

impl Flood {
    fn start(ns: &NetNs, socket: &str) -> (Flood, Vec<String>) {
        // A copy anyone may run: the build tree may sit in root's home.
        let dir = TempDir::new("flood");
        let bin = dir.0.join("sipguard-flood");
        std::fs::copy(env!("CARGO_BIN_EXE_sipguard-flood"), &bin).unwrap();
        let mut child = ns
            .command("prlimit")
            .arg(format!("--nofile={0}:{0}", FLOOD * 2 + 64))
            .args(["setpriv", "--reuid", UNPRIVILEGED, "--regid", UNPRIVILEGED])
            .arg("--clear-groups")
            .arg(&bin)
            .arg(FLOOD.to_string())
            .arg(format!("127.0.0.1:{METRICS_PORT}"))
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the flood");
        let stdout = child.stdout.take().unwrap();
        let flood = Flood(child);
        let (lines_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let read: Vec<String> = BufReader::new(stdout)
                .lines()
                .take(2)
                .map_while(Result::ok)
                .collect();
            let _ = lines_tx.send(read);
        });
        let report = lines.recv_timeout(HANG).expect("the flood reports");
        drop(dir);
        (flood, report)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        // Closing stdin ends it; kill in case it does not.
        drop(self.0.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One GET /metrics from inside `ns`: the status line, or why none came.
fn scrape(ns: &NetNs) -> Result<String, String> {
    metrics::scrape(ns, &format!("127.0.0.1:{METRICS_PORT}"))
        .map(|answer| answer.lines().next().unwrap_or("").to_string())
        .map_err(|e| format!("{e:#}"))
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_descriptor_flood_from_an_unprivileged_user_starves_nothing() {
    let link = Link::new("flood", &CLIENT_ADDRS, &PBX_ADDRS).unwrap();
    let config = TempFile::new("flood.toml", "");
    let socket = TempSocket::new("flood");
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let (mut guard, _) = start_guard(
        &link.right,
        &link.right_if,
        &config,
        &["--control-socket", &socket, "--metrics-addr", &metrics],
    )
    .expect("sipguard attached");
    guard
        .wait_for("serving metrics", Duration::from_secs(10))
        .unwrap();
    // systemd's default, which the unit raises: the daemon must hold anyway.
    let pid = guard.pid().unwrap().to_string();
    let limited = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=1024:1024"])
        .status()
        .unwrap();
    assert!(limited.success());
    assert_eq!(scrape(&link.right).as_deref(), Ok("HTTP/1.1 200 OK"));

    let (flood, report) = Flood::start(&link.right, &socket);
    assert_eq!(
        report.first().map(String::as_str),
        Some(format!("tcp {FLOOD} ").as_str()),
        "{report:?}"
    );
    // The control socket is root's (0600): the flood cannot reach it.
    assert!(
        report
            .get(1)
            .is_some_and(|l| l.starts_with("unix 0 ") && l.contains("denied")),
        "{report:?}"
    );
    // Let the whole flood reach the daemon: connects beyond its accept
    // queue are dropped and come back with the kernel's SYN retries (1 s, 3 s).
    std::thread::sleep(Duration::from_secs(4));
    // The flood holds at most the metrics endpoint's slots.
    let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    eprintln!("the daemon holds {held} descriptors during the flood");
    assert!(
        held < 512,
        "{held} descriptors of 1024 held during the flood"
    );

    let out = cli_within(&socket, &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli_within(&socket, &["ban", "add", "10.77.0.4", "--for", "1h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli_within(&socket, &["bans", "--json"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"10.77.0.4\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The ban is in the kernel, not only in the answer.
    assert_eq!(delivered(&link, "10.77.0.4", 5), 0);
    assert_eq!(delivered(&link, "10.77.0.3", 5), 5);

    drop(flood);
    let deadline = Instant::now() + HANG;
    let served = loop {
        match scrape(&link.right) {
            Ok(line) if line == "HTTP/1.1 200 OK" => break true,
            _ if Instant::now() > deadline => break false,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert!(
        served,
        "the metrics endpoint did not come back after the flood:\n{}",
        guard.log()
    );
    assert!(guard.stop().unwrap().success(), "{}", guard.log());
}
