//! Living with a running guard, end to end in namespaces: kill -9 and
//! restart with no unfiltered gap, a simulated reboot, reloads of broken and
//! good configs, commit-confirmed apply, and the SSH-lockout refusal.
//! Needs root (`cargo xtask test`); namespaces and the test's own bpffs are
//! removed on drop.
use std::{
    net::TcpListener,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use guard_userspace::{
    control::protocol::BanRow,
    kernel::maps::{KernelMaps, NetList},
};
use sipguard_tests::{
    daemon::{sipguard_bin, Daemon, GuardHome, TempFile},
    netns::Link,
    traffic::{
        cli, cli_in, connect_from, delivered, received_from, xdp_attached, UdpSink, CLIENT_ADDRS,
        PBX_ADDRS,
    },
};

const OFFICE: &str = "10.77.0.2";
const SCANNER: &str = "10.77.0.3";
const FRAUDSTER: &str = "10.77.0.4";

/// The namespaces, a config file, and where the daemon keeps its socket,
/// state and pins (all the test's own).
struct Site {
    link: Link,
    home: GuardHome,
}

impl Site {
    fn new(tag: &str, config: &str) -> Site {
        let link = Link::new(tag, &CLIENT_ADDRS, &PBX_ADDRS).expect("namespaces and veth");
        Site {
            link,
            home: GuardHome::pinned(tag, config).expect("a bpffs for the test"),
        }
    }

    fn start(&self) -> (Daemon, u32) {
        self.home
            .start(&self.link.right, &self.link.right_if)
            .expect("sipguard attached")
    }

    /// Starts the daemon while the banned `source` keeps sending; asserts
    /// that not one of its datagrams slips through meanwhile.
    fn start_under_fire(&self, source: &'static str) -> (Daemon, u32) {
        let stream = Stream::start(&self.link, source);
        std::thread::sleep(Duration::from_millis(200));
        let started = self.start();
        std::thread::sleep(Duration::from_millis(300));
        let (sent, received) = stream.finish(source);
        assert!(sent > 100, "only {sent} datagrams sent");
        assert_eq!(
            received,
            0,
            "{received} of {sent} passed during the start:\n{}",
            started.0.log()
        );
        started
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        cli(&self.home.socket, args)
    }

    /// `sipguard unload` in the guard's namespace: detach and unpin, as a
    /// reboot would leave it.
    fn unload(&self) {
        let out = cli_in(
            &self.link.right,
            &self.home.socket,
            &[
                "unload",
                "--iface",
                &self.link.right_if,
                "--pin-dir",
                self.home.pin_root().path(),
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }

    fn bans(&self) -> Vec<BanRow> {
        let out = self.cli(&["bans", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("bans as JSON")
    }

    /// How many of `count` datagrams from `source` reach the PBX.
    fn delivered(&self, source: &'static str, count: usize) -> usize {
        delivered(&self.link, source, count)
    }

    /// The id of the XDP program on the PBX's interface.
    fn attached_program(&self) -> Option<u32> {
        let out = self
            .link
            .right
            .ip(&["-d", "link", "show", "dev", &self.link.right_if])
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let rest = text.split("prog/xdp id ").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    }
}

/// The one guard's pin directory under the site's interface.
fn guard_pin_dir(site: &Site) -> std::path::PathBuf {
    let iface = site.home.pin_root().0.join(&site.link.right_if);
    let mut dirs: Vec<_> = std::fs::read_dir(&iface)
        .expect("the interface's pin directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.remove(0)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn ban_of<'a>(bans: &'a [BanRow], source: &str) -> &'a BanRow {
    bans.iter()
        .find(|b| b.source == source)
        .unwrap_or_else(|| panic!("no ban on {source} in {bans:?}"))
}

/// Sends datagrams from `source` until stopped (at most 20 s, paced), and
/// counts what the PBX receives from it meanwhile.
struct Stream {
    stop: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<anyhow::Result<usize>>,
    sink: UdpSink,
}

impl Stream {
    fn start(link: &Link, source: &'static str) -> Stream {
        let sink = UdpSink::start(link);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let sender = link.left.run_in(move || {
            let socket = std::net::UdpSocket::bind((source, 0)).expect("bind source");
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut sent = 0;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let _ = socket.send_to(b"OPTIONS sip:pbx SIP/2.0\r\n\r\n", ("10.77.0.1", 5060));
                sent += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        });
        Stream { stop, sender, sink }
    }

    /// (sent, received by the PBX)
    fn finish(self, source: &str) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.join().expect("sender").expect("sender");
        (sent, received_from(&self.sink.finish(), source))
    }
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn after_kill_9_the_kernel_keeps_enforcing_and_a_restart_adopts_the_guard() {
    let site = Site::new("kill", "");
    let (mut daemon, first_program) = site.start();
    let out = site.cli(&["ban", "add", FRAUDSTER, "--for", "1h", "--reason", "fraud"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(site.delivered(FRAUDSTER, 5), 0);

    daemon.kill().unwrap();
    // No controller: the pinned link and maps go on dropping the banned
    // source and passing the others.
    assert!(xdp_attached(&site.link));
    assert_eq!(site.delivered(FRAUDSTER, 20), 0, "banned source passed");
    assert_eq!(site.delivered(OFFICE, 5), 5);

    // Restart (a newer binary would do the same) while the banned source
    // keeps sending: not one datagram may slip through.
    let (mut daemon, second_program) = site.start_under_fire(FRAUDSTER);

    let log = daemon.log();
    assert!(
        log.contains("replaced the program in the pinned link"),
        "{log}"
    );
    assert!(
        log.contains("adopted the pinned maps of an earlier run: 1 bans"),
        "{log}"
    );
    // The new program runs in the same link: the interface shows it.
    assert_ne!(first_program, second_program);
    assert_eq!(site.attached_program(), Some(second_program));
    let out = site.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status as JSON");
    assert_eq!(status["program_id"], second_program);
    assert_eq!(
        status["xdp_mode"], "native",
        "remembered from the first start"
    );
    // Pins and state are this namespace's, under the interface's name.
    let pinned_at = status["pinned_at"].as_str().expect("pinned");
    let iface_pins = site.home.pin_root().0.join(&site.link.right_if);
    assert!(
        pinned_at.starts_with(&format!("{}/netns-", iface_pins.display())),
        "{pinned_at}"
    );
    assert_eq!(status["pins_warning"], serde_json::Value::Null);
    let state_dir = site
        .home
        .state
        .0
        .join(&site.link.right_if)
        .join(format!("netns-{}", site.link.right.name));
    assert_eq!(status["state_dir"], state_dir.display().to_string());
    assert!(state_dir.join("bans.json").exists());
    let bans = site.bans();
    assert_eq!(bans.len(), 1, "{bans:?}");
    let ban = ban_of(&bans, FRAUDSTER);
    assert_eq!(
        (ban.reason.as_str(), ban.detail.as_str()),
        ("manual", "fraud")
    );
    assert!(ban.dropped >= 25, "{ban:?}");

    // SIGTERM leaves the guard in place too; `unload` removes it.
    daemon.stop().unwrap();
    assert!(
        daemon.log().contains("the kernel keeps enforcing"),
        "{}",
        daemon.log()
    );
    assert!(xdp_attached(&site.link));
    site.unload();
    assert!(!xdp_attached(&site.link));
    assert_eq!(site.delivered(FRAUDSTER, 5), 5);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn after_a_reboot_bans_and_list_changes_come_back() {
    let site = Site::new(
        "boot",
        "[[deny]]\ncidr = \"192.0.2.0/24\"\ncomment = \"old range\"\n",
    );
    let (mut daemon, _) = site.start();
    // Runtime list changes: one added, one config entry removed.
    for change in [
        &[
            "allow",
            "add",
            "198.51.100.0/24",
            "--services",
            "sip",
            "--comment",
            "new office",
        ][..],
        &["deny", "remove", "192.0.2.0/24"][..],
    ] {
        let out = site.cli(change);
        assert!(out.status.success(), "{change:?}: {}", stderr(&out));
    }
    let out = site.cli(&["ban", "add", SCANNER, "--for", "1h", "--reason", "probing"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // 41 datagrams in 2 s: the kernel bans by the built-in rule.
    assert_eq!(site.delivered(FRAUDSTER, 41), 40);
    let before = site.bans();
    assert_eq!(before.len(), 2, "{before:?}");
    std::thread::sleep(Duration::from_millis(1500)); // the saver's pace
    daemon.stop().unwrap();

    // A reboot: the program is detached and every pin is gone.
    site.unload();
    assert!(!xdp_attached(&site.link));
    std::thread::sleep(Duration::from_secs(3));

    let (daemon, program) = site.start();
    assert!(
        daemon.log().contains("restored 2 of 2 saved bans"),
        "{}",
        daemon.log()
    );
    let after = site.bans();
    let manual = ban_of(&after, SCANNER);
    assert_eq!(manual.detail, "probing");
    let left = manual.remaining_seconds.expect("a timed ban");
    let was = ban_of(&before, SCANNER).remaining_seconds.unwrap();
    assert!(
        left + 3 <= was && left + 30 > was,
        "remaining {left}s after a 3 s reboot, was {was}s"
    );
    let auto = ban_of(&after, FRAUDSTER);
    assert_eq!(auto.reason, "rate-limit");
    assert!(auto.detail.starts_with("rule "), "{auto:?}");
    assert_eq!(site.delivered(SCANNER, 5), 0);
    assert_eq!(site.delivered(FRAUDSTER, 5), 0);
    assert_eq!(site.delivered(OFFICE, 5), 5);

    let out = site.cli(&["allow", "list", "--json"]);
    let allow: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(allow[0]["cidr"], "198.51.100.0/24", "{allow}");
    assert_eq!(allow[0]["comment"], "new office");
    assert_eq!(allow[0]["origin"], "runtime");
    let out = site.cli(&["deny", "list", "--json"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = site.cli(&["explain", "192.0.2.7"]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("denied"));
    let out = site.cli(&["explain", "198.51.100.7"]);
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("allow-listed by 198.51.100.0/24 (new office)"));
    // And the kernel's tries hold exactly that.
    let maps = KernelMaps::from_program_id(program).unwrap();
    assert_eq!(maps.nets(NetList::Deny).unwrap(), vec![]);
    assert_eq!(
        maps.nets(NetList::Allow).unwrap(),
        vec!["198.51.100.0/24".parse::<ipnet::IpNet>().unwrap()]
    );
    drop(daemon);
}

/// An unban answered right before a SIGKILL, then a reboot: the saver had
/// not written `bans.json` again yet (it saves at most once a second), so
/// only the journal knows of the unban, and the ban must stay lifted.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn an_unban_right_before_kill_9_stays_lifted_after_a_reboot() {
    let site = Site::new("unban", "");
    let (mut daemon, _) = site.start();
    for (source, why) in [(SCANNER, "probing"), (FRAUDSTER, "wrong password")] {
        let out = site.cli(&["ban", "add", source, "--for", "1h", "--reason", why]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let bans_json = site
        .home
        .state
        .0
        .join(&site.link.right_if)
        .join(format!("netns-{}", site.link.right.name))
        .join("bans.json");
    let saved =
        |source: &str| std::fs::read_to_string(&bans_json).is_ok_and(|text| text.contains(source));
    // The saver has just written both bans; its next save is a second away.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !saved(FRAUDSTER) {
        assert!(Instant::now() < deadline, "bans.json never held the bans");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = site.cli(&["ban", "remove", FRAUDSTER]);
    assert!(out.status.success(), "{}", stderr(&out));
    daemon.kill().unwrap();
    assert!(
        saved(FRAUDSTER),
        "the saver wrote bans.json before the kill, so this run shows nothing: \
         the unban and the kill must fall within its one-second pace"
    );

    // A reboot: the program is detached and every pin is gone.
    site.unload();
    let (daemon, _) = site.start();
    let log = daemon.log();
    let bans = site.bans();
    assert_eq!(bans.len(), 1, "the lifted ban came back: {bans:?}\n{log}");
    assert_eq!(ban_of(&bans, SCANNER).detail, "probing");
    assert_eq!(site.delivered(FRAUDSTER, 5), 5);
    assert_eq!(site.delivered(SCANNER, 5), 0);
    assert!(log.contains("restored 1 of 1 saved bans"), "{log}");
    assert!(
        log.contains("0 bans made and 1 lifted since the last save"),
        "{log}"
    );
    drop(daemon);
}

const DENY_SCANNER: &str = "[[deny]]\ncidr = \"10.77.0.3/32\"\ncomment = \"scanner\"\n";

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_reload_of_a_broken_config_keeps_the_old_policy_and_a_good_one_applies() {
    let site = Site::new("reload", DENY_SCANNER);
    let (daemon, _) = site.start();
    assert_eq!(site.delivered(SCANNER, 5), 0);

    std::fs::write(&site.home.config.0, "[[deny]]\ncidr = \"10.77.0.300/32\"\n").unwrap();
    let out = site.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains(":2:") && message.contains("old policy stays in force"),
        "{message}"
    );
    assert_eq!(site.delivered(SCANNER, 5), 0, "the old deny must hold");

    // A good config takes effect at once.
    std::fs::write(&site.home.config.0, "[[deny]]\ncidr = \"10.77.0.4/32\"\n").unwrap();
    let out = site.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(site.delivered(SCANNER, 5), 5);
    assert_eq!(site.delivered(FRAUDSTER, 5), 0);
    assert!(daemon.log().contains("policy reloaded from"));

    // SIGHUP reloads too (systemd's ExecReload uses the CLI instead).
    std::fs::write(&site.home.config.0, DENY_SCANNER).unwrap();
    daemon.signal(libc::SIGHUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.log().matches("policy reloaded from").count() < 2 {
        assert!(Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(site.delivered(SCANNER, 5), 0);
    assert_eq!(site.delivered(FRAUDSTER, 5), 5);
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn apply_with_confirm_reverts_unless_confirmed() {
    let site = Site::new("apply", "");
    let (daemon, _) = site.start();
    let candidate = TempFile::new("candidate.toml", DENY_SCANNER);

    let out = site.cli(&["apply", candidate.path(), "--confirm", "2s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sipguard confirm"));
    assert_eq!(site.delivered(SCANNER, 5), 0);
    // A second change must wait for the first to be settled.
    let out = site.cli(&["reload"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("awaits `sipguard confirm`"));

    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(site.delivered(SCANNER, 5), 5, "not reverted");
    assert!(daemon.log().contains("not confirmed in time: reverted"));
    let out = site.cli(&["confirm"]);
    assert_eq!(out.status.code(), Some(3), "nothing to confirm");

    let out = site.cli(&["apply", candidate.path(), "--confirm", "2s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = site.cli(&["confirm"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(site.delivered(SCANNER, 5), 0, "confirmed policy reverted");
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn changes_that_would_cut_the_operators_ssh_session_are_refused() {
    let site = Site::new("ssh", "");
    let (_daemon, _) = site.start();

    // The operator's session as SSH_CLIENT tells it.
    let as_operator = |args: &[&str]| {
        Command::new(sipguard_bin())
            .env("SSH_CLIENT", format!("{OFFICE} 50022 22"))
            .args(["--control-socket", &site.home.socket])
            .args(args)
            .output()
            .expect("running sipguard")
    };
    let out = as_operator(&["deny", "add", "10.77.0.0/24"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cut the SSH session from 10.77.0.2"),
        "{}",
        stderr(&out)
    );
    assert_eq!(site.delivered(OFFICE, 3), 3, "nothing changed");
    let out = as_operator(&["ban", "add", OFFICE]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    // Another source is fine.
    let out = as_operator(&["deny", "add", "10.77.0.4/32"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A live session on port 22, seen by the daemon itself.
    let ready = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ready);
    let server = site.link.right.run_in(move || {
        let listener = TcpListener::bind(("10.77.0.1", 22)).expect("bind :22");
        flag.store(true, Ordering::Relaxed);
        listener.accept().map(|(stream, _)| stream)
    });
    while !ready.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _session = site
        .link
        .left
        .run_in(|| connect_from(SCANNER, 22, Duration::from_secs(2)))
        .join()
        .unwrap()
        .unwrap()
        .expect("an SSH-port session");
    let _accepted = server.join().unwrap().unwrap().expect("accepted");

    let trusted_ssh = TempFile::new("trusted-ssh.toml", "[services.ssh]\naccess = \"trusted\"\n");
    let out = site.cli(&["apply", trusted_ssh.path()]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("10.77.0.3") && stderr(&out).contains("not trusted"),
        "{}",
        stderr(&out)
    );
    let out = site.cli(&["ban", "add", SCANNER]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(site.bans().is_empty());
    // --force does it anyway.
    let out = site.cli(&["--force", "ban", "add", SCANNER, "--for", "1m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(site.bans().len(), 1);

    // In monitor mode the session passes again; enforcing would cut it.
    let out = site.cli(&["monitor", "on"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = site.cli(&["monitor", "off"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("banned"), "{}", stderr(&out));
    let out = site.cli(&["--force", "monitor", "off"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_binary_with_a_new_map_layout_takes_over_through_the_same_link() {
    let site = Site::new("layout", "");
    let (mut daemon, _) = site.start();
    let out = site.cli(&["ban", "add", FRAUDSTER, "--reason", "fraud"]);
    assert!(out.status.success(), "{}", stderr(&out));
    daemon.stop().unwrap();

    // What an older binary leaves: its maps under another layout version.
    let iface_dir = guard_pin_dir(&site);
    let current = iface_dir.join(format!("maps-v{}", guard_common::MAP_LAYOUT_VERSION));
    let older = iface_dir.join("maps-v0");
    std::fs::rename(&current, &older).expect("renaming in bpffs");

    let (daemon, program) = site.start_under_fire(FRAUDSTER);

    let log = daemon.log();
    assert!(log.contains("restored 1 of 1 saved bans"), "{log}");
    assert!(
        log.contains("replaced the program in the pinned link"),
        "{log}"
    );
    assert!(log.contains("removed the maps of an older layout"), "{log}");
    assert!(!older.exists() && current.exists());
    assert_eq!(site.attached_program(), Some(program));
    let bans = site.bans();
    assert_eq!(ban_of(&bans, FRAUDSTER).remaining_seconds, None);
}
