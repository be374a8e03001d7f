//! A guard belongs to one (network namespace, interface) pair: two
//! namespaces, each with an interface of the same name and a guard on it,
//! sharing one bpffs and one state directory (as containers sharing the
//! host's /sys/fs/bpf and /var/lib/sipguard do), keep two guards with
//! separate bans; pins of the earlier single-namespace layout are taken
//! over by their own namespace only, without a gap; pins in a bpffs that
//! dies with the daemon are reported, or refused with `--require-pins`.
//! Needs root (`cargo xtask test`).
use std::path::{Path, PathBuf};

use guard_userspace::control::protocol::BanRow;
use sipguard_tests::{
    daemon::{start_guard, Daemon, PinRoot, TempDir, TempFile, TempSocket},
    metrics,
    netns::Link,
    traffic::{cli, cli_in, delivered, xdp_attached, CLIENT_ADDRS, PBX_ADDRS},
};

const OFFICE: &str = "10.77.0.2";
const SCANNER: &str = "10.77.0.3";
const FRAUDSTER: &str = "10.77.0.4";

/// One namespace's PBX side: its link and its control socket.
struct Pbx {
    link: Link,
    socket: TempSocket,
}

impl Pbx {
    /// Every PBX's interface has this name, each in its own namespace.
    fn new(tag: &str) -> Pbx {
        let iface = format!("sgid{}", std::process::id() % 100_000);
        let link = Link::named(tag, &format!("{iface}c"), &iface, &CLIENT_ADDRS, &PBX_ADDRS)
            .expect("namespaces and veth");
        let socket = TempSocket::new(tag);
        Pbx { link, socket }
    }

    fn start(&self, config: &TempFile, pins: &PinRoot, state: &TempDir) -> (Daemon, u32) {
        start_guard(
            &self.link.right,
            &self.link.right_if,
            config,
            &[
                "--control-socket",
                &self.socket,
                "--pin-dir",
                pins.path(),
                "--state-dir",
                state.path(),
            ],
        )
        .expect("sipguard attached")
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let out = cli(&self.socket, args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        out
    }

    fn ban(&self, source: &str) {
        self.cli(&["ban", "add", source, "--reason", "test"]);
    }

    fn bans(&self) -> Vec<String> {
        let out = self.cli(&["bans", "--json"]);
        let rows: Vec<BanRow> = serde_json::from_slice(&out.stdout).expect("bans as JSON");
        rows.into_iter().map(|b| b.source).collect()
    }

    fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).expect("status as JSON")
    }

    fn unload(&self, pins: &PinRoot) -> std::process::Output {
        cli_in(
            &self.link.right,
            &self.socket,
            &[
                "unload",
                "--iface",
                &self.link.right_if,
                "--pin-dir",
                pins.path(),
            ],
        )
    }

    fn delivered(&self, source: &'static str) -> usize {
        delivered(&self.link, source, 5)
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn two_namespaces_with_an_interface_of_the_same_name_keep_two_guards() {
    let (a, b) = (Pbx::new("ida"), Pbx::new("idb"));
    assert_eq!(a.link.right_if, b.link.right_if);
    let config = TempFile::new("identity.toml", "");
    let pins = PinRoot::new().expect("a bpffs");
    let state = TempDir::new("identity-state");

    let (mut guard_a, program_a) = a.start(&config, &pins, &state);
    let (mut guard_b, program_b) = b.start(&config, &pins, &state);
    assert_ne!(program_a, program_b);
    assert!(
        !guard_b.log().contains("adopted the pinned maps"),
        "{}",
        guard_b.log()
    );
    a.ban(FRAUDSTER);
    b.ban(SCANNER);

    // Each guard enforces its own bans only.
    assert_eq!(a.bans(), [FRAUDSTER]);
    assert_eq!(b.bans(), [SCANNER]);
    assert_eq!((a.delivered(FRAUDSTER), a.delivered(SCANNER)), (0, 5));
    assert_eq!((b.delivered(FRAUDSTER), b.delivered(SCANNER)), (5, 0));
    let (status_a, status_b) = (a.status(), b.status());
    assert_ne!(status_a["pinned_at"], status_b["pinned_at"]);
    assert_ne!(status_a["state_dir"], status_b["state_dir"]);
    assert_eq!(subdirs(&pins.0.join(&a.link.right_if)).len(), 2);

    // `unload` in A's namespace takes A's guard off, and only A's.
    guard_a.stop().unwrap();
    guard_b.kill().unwrap();
    let out = a.unload(&pins);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!xdp_attached(&a.link));
    assert!(xdp_attached(&b.link), "B's guard went with A's");
    assert_eq!(b.delivered(SCANNER), 0, "B's pinned ban is gone");
    assert_eq!(b.delivered(OFFICE), 5);

    // A starts afresh from its own saved state: its ban, not B's.
    let (mut guard_a, _) = a.start(&config, &pins, &state);
    assert!(
        guard_a.log().contains("restored 1 of 1 saved bans"),
        "{}",
        guard_a.log()
    );
    assert_eq!(a.bans(), [FRAUDSTER]);
    guard_a.stop().unwrap();
    assert!(a.unload(&pins).status.success());
    assert!(b.unload(&pins).status.success());
    assert!(!xdp_attached(&b.link));
    // Nothing is left for either namespace.
    let out = b.unload(&pins);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

/// Moves a guard's pins back into the layout of earlier versions:
/// straight under `<root>/<iface>/`.
fn to_single_namespace_layout(iface_dir: &Path) {
    let [guard_dir] = subdirs(iface_dir).try_into().expect("one guard's pins");
    for entry in std::fs::read_dir(&guard_dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::rename(entry.path(), iface_dir.join(entry.file_name())).expect("rename in bpffs");
    }
    std::fs::remove_dir(&guard_dir).unwrap();
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn pins_of_the_single_namespace_layout_go_to_their_own_namespace_only() {
    let (a, b) = (Pbx::new("lga"), Pbx::new("lgb"));
    let config = TempFile::new("legacy.toml", "");
    let pins = PinRoot::new().expect("a bpffs");
    // Separate state directories: the bans below can come only from pins.
    let (state_a, state_b) = (TempDir::new("legacy-a"), TempDir::new("legacy-b"));
    let (mut guard_a, _) = a.start(&config, &pins, &state_a);
    a.ban(FRAUDSTER);
    guard_a.stop().unwrap();
    std::fs::remove_dir_all(&state_a.0).unwrap();
    let iface_dir = pins.0.join(&a.link.right_if);
    to_single_namespace_layout(&iface_dir);
    assert_eq!(a.delivered(FRAUDSTER), 0, "the pinned guard enforces");

    // Another namespace's guard on an interface of the same name leaves
    // them alone: it neither adopts A's maps nor rewires A's link.
    let (mut guard_b, _) = b.start(&config, &pins, &state_b);
    let log = guard_b.log();
    assert!(
        log.contains("belong to a guard on another network namespace's interface"),
        "{log}"
    );
    assert!(!log.contains("adopted the pinned maps"), "{log}");
    assert!(b.bans().is_empty());
    assert!(iface_dir.join("xdp_link").exists());
    assert_eq!(a.delivered(FRAUDSTER), 0, "A's guard still enforces");
    guard_b.stop().unwrap();
    // B's `unload` refuses to touch them, and removes B's own.
    assert!(b.unload(&pins).status.success());
    assert!(iface_dir.join("xdp_link").exists());
    assert!(xdp_attached(&a.link));

    // A's own daemon takes them over, with the pinned ban and no gap.
    let stream = Stream::start(&a.link, FRAUDSTER);
    let (mut guard_a, program) = a.start(&config, &pins, &state_a);
    let (sent, received) = stream.finish(FRAUDSTER);
    assert!(sent > 50, "only {sent} sent");
    assert_eq!(received, 0, "{received} passed during the take-over");
    let log = guard_a.log();
    assert!(log.contains("took over this guard's pins"), "{log}");
    assert!(
        log.contains("adopted the pinned maps of an earlier run: 1 bans"),
        "{log}"
    );
    assert!(
        log.contains("replaced the program in the pinned link"),
        "{log}"
    );
    assert_eq!(a.bans(), [FRAUDSTER]);
    assert!(!iface_dir.join("xdp_link").exists());
    let status = a.status();
    assert_eq!(
        status["program_id"], program,
        "the program in the moved link"
    );
    guard_a.stop().unwrap();
    assert!(a.unload(&pins).status.success());
    assert!(!xdp_attached(&a.link));
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn pins_that_die_with_the_daemon_are_reported_or_refused() {
    let pbx = Pbx::new("prv");
    let config = TempFile::new("private.toml", "");
    // `ip netns exec` gives the daemon a /sys of its own: the bpffs it
    // mounts at /sys/fs/bpf is seen by nobody else and dies with it.
    let root = format!("/sys/fs/bpf/sipguard-test-{}", std::process::id());
    let (mut guard, _) = start_guard(
        &pbx.link.right,
        &pbx.link.right_if,
        &config,
        &["--control-socket", &pbx.socket, "--pin-dir", &root],
    )
    .expect("sipguard attached");
    assert!(
        guard.log().contains("will not outlive this daemon"),
        "{}",
        guard.log()
    );
    let status = pbx.status();
    let warning = status["pins_warning"].as_str().expect("a warning");
    assert!(
        warning.contains("Bind-mount the host's /sys/fs/bpf"),
        "{warning}"
    );
    let out = cli(&pbx.socket, &["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("WARNING"),
        "{out:?}"
    );
    guard.stop().unwrap();

    let out = pbx
        .link
        .right
        .command(
            sipguard_tests::daemon::sipguard_bin()
                .to_str()
                .expect("UTF-8"),
        )
        .args([
            "--control-socket",
            &pbx.socket,
            "run",
            "--iface",
            &pbx.link.right_if,
            "--config",
            config.path(),
            "--pin-dir",
            &root,
            "--require-pins",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("--require-pins"), "{}", stderr(&out));
    assert!(!xdp_attached(&pbx.link), "nothing attached");
}

/// Datagrams from `source` until stopped, counted at the PBX.
struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: std::thread::JoinHandle<anyhow::Result<usize>>,
    sink: sipguard_tests::traffic::UdpSink,
}

impl Stream {
    fn start(link: &Link, source: &'static str) -> Stream {
        use std::sync::atomic::Ordering;
        let sink = sipguard_tests::traffic::UdpSink::start(link);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let sender = link.left.run_in(move || {
            let socket = std::net::UdpSocket::bind((source, 0)).expect("bind source");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let mut sent = 0;
            while !flag.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let _ = socket.send_to(b"OPTIONS sip:pbx SIP/2.0\r\n\r\n", ("10.77.0.1", 5060));
                sent += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            sent
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        Stream { stop, sender, sink }
    }

    fn finish(self, source: &str) -> (usize, usize) {
        std::thread::sleep(std::time::Duration::from_millis(300));
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = self.sender.join().expect("sender").expect("sender");
        (
            sent,
            sipguard_tests::traffic::received_from(&self.sink.finish(), source),
        )
    }
}

/// The `sipguard_attached` gauge from the daemon's metrics endpoint (in
/// the PBX's namespace).
fn attached_gauge(pbx: &Pbx) -> Option<u64> {
    let text = metrics::scrape(&pbx.link.right, metrics::DEFAULT_ADDRESS).ok()?;
    metrics::value(&text, "sipguard_attached")
}

/// Polls `status` until `attached` is `want`; the time it took.
fn wait_attached(pbx: &Pbx, want: bool) -> std::time::Duration {
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(5) {
        if pbx.status()["attached"] == want {
            return started.elapsed();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("attached never became {want}: {}", pbx.status());
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_re_created_interface_gets_the_guard_back_with_its_bans() {
    let pbx = Pbx::new("rec");
    let config = TempFile::new("recreate.toml", "");
    let pins = PinRoot::new().expect("a bpffs");
    let state = TempDir::new("recreate-state");
    let (mut guard, program) = pbx.start(&config, &pins, &state);
    pbx.ban(FRAUDSTER);
    assert_eq!(pbx.delivered(FRAUDSTER), 0);
    assert_eq!(attached_gauge(&pbx), Some(1));

    // Link down and up: nothing to do, the attachment stays.
    pbx.link
        .right
        .ip(&["link", "set", &pbx.link.right_if, "down"])
        .unwrap();
    pbx.link
        .right
        .ip(&["link", "set", &pbx.link.right_if, "up"])
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(pbx.status()["attached"], true);
    assert_eq!(pbx.delivered(FRAUDSTER), 0);
    assert_eq!(pbx.delivered(OFFICE), 5);

    // Deleted: reported, maps kept.
    pbx.link
        .left
        .ip(&["link", "del", &pbx.link.left_if])
        .unwrap();
    wait_attached(&pbx, false);
    guard
        .wait_for("is gone", std::time::Duration::from_secs(2))
        .unwrap();
    assert_eq!(attached_gauge(&pbx), Some(0));
    let out = cli(&pbx.socket, &["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ATTACHED:   NO"),
        "{out:?}"
    );
    assert_eq!(pbx.bans(), [FRAUDSTER]);

    // Made again under the same name: back within a second, same program
    // and maps, so the banned source stays dropped.
    pbx.link.plumb(&CLIENT_ADDRS, &PBX_ADDRS).unwrap();
    let took = wait_attached(&pbx, true);
    assert!(took < std::time::Duration::from_secs(1), "took {took:?}");
    guard
        .wait_for("is back", std::time::Duration::from_secs(2))
        .unwrap();
    assert!(xdp_attached(&pbx.link));
    assert_eq!(pbx.status()["program_id"], program);
    assert_eq!(pbx.delivered(FRAUDSTER), 0, "the ban survived");
    assert_eq!(pbx.delivered(OFFICE), 5);
    assert_eq!(pbx.bans(), [FRAUDSTER]);
    // The new link is pinned: a restart adopts it.
    guard.stop().unwrap();
    assert!(xdp_attached(&pbx.link), "pinned on the new interface");
    assert_eq!(pbx.delivered(FRAUDSTER), 0);
    assert!(pbx.unload(&pins).status.success());
}
