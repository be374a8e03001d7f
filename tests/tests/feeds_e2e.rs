//! Blocklist feeds end to end: a stand-in for APIBan and VoIPBL (an HTTP
//! server on the PBX namespace's loopback, `sipguard_tests::feeds`), the
//! daemon pulling them into the fleet deny set, and real packets through
//! the XDP program on the PBX's veth. The feeds go bad (garbage, 500,
//! rate limits, gone) and the last good lists stay; a restart without them
//! enforces the saved lists. Needs root (`cargo xtask test`).
use std::time::{Duration, Instant};

use guard_userspace::control::protocol::{BanRow, Status};
use sipguard_tests::{
    daemon::{start_guard, Daemon, TempDir, TempFile, TempSocket},
    feeds::{FeedServer, Mode, APIBAN_KEY, API_PATH, LIST_PATH},
    netns::Link,
    traffic::{cli, delivered, CLIENT_ADDRS, PBX_ADDRS},
};

/// Allow-listed in every config here.
const OFFICE: &str = "10.77.0.2";
/// On the VoIPBL-shaped list.
const SCANNER: &str = "10.77.0.3";
const SCANNER_V6: &str = "fd77::5";
/// Reported by the APIBan stand-in.
const FRAUDSTER: &str = "10.77.0.4";
/// The list: comments, a bad line, the office (spared), two sources.
const LIST: &str = "# VoIPBL-shaped list\n# generated for sipguard's tests\n10.77.0.3\n\
                    this line is not an address\nfd77::5/128\n10.77.0.2\n198.51.100.0/24\n";
/// A feed's first refresh, and a refresh after a failure (10 s, the
/// shortest refresh and first backoff), with room for a loaded machine.
const REFRESHED: Duration = Duration::from_secs(30);

struct Site {
    link: Link,
    config: TempFile,
    socket: TempSocket,
    state: TempDir,
}

impl Site {
    /// The site's files, on a link made beforehand (the feed server must
    /// be up for the config to name its port).
    fn new(link: Link, tag: &str, feeds: &str) -> Site {
        let config = format!("[[allow]]\ncidr = \"{OFFICE}/32\"\ncomment = \"office\"\n\n{feeds}");
        let socket = TempSocket::new(tag);
        Site {
            link,
            config: TempFile::new(&format!("{tag}.toml"), &config),
            socket,
            state: TempDir::new(&format!("{tag}-state")),
        }
    }

    fn start(&self) -> Daemon {
        let (daemon, _) = start_guard(
            &self.link.right,
            &self.link.right_if,
            &self.config,
            &[
                "--control-socket",
                &self.socket,
                "--state-dir",
                self.state.path(),
            ],
        )
        .expect("sipguard attached");
        daemon
    }

    fn passes(&self, source: &'static str) -> bool {
        delivered(&self.link, source, 3) == 3
    }

    fn dropped(&self, source: &'static str) -> bool {
        delivered(&self.link, source, 3) == 0
    }

    fn run(&self, args: &[&str]) -> String {
        let out = cli(&self.socket, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn bans(&self, origin: &str) -> Vec<BanRow> {
        serde_json::from_str(&self.run(&["bans", "--json", "--origin", origin])).expect("JSON")
    }

    fn status(&self) -> Status {
        serde_json::from_str(&self.run(&["status", "--json"])).expect("JSON")
    }

    /// Waits until the feed's health satisfies `check`.
    fn wait_health(&self, feed: &str, daemon: &Daemon, check: impl Fn(&str, u32) -> bool) {
        let start = Instant::now();
        loop {
            let status = self.status();
            let row = status
                .fleet
                .iter()
                .find(|h| h.name == feed)
                .expect("the feed's row");
            if check(row.last_error.as_deref().unwrap_or(""), row.failing) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "feed {feed}: {row:?}\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn feeds_config(server: &FeedServer) -> String {
    format!(
        "[[feeds]]\nname = \"voipbl\"\nkind = \"list\"\nurl = \"{base}{LIST_PATH}\"\n\
         refresh = \"10s\"\n# The test network is private space.\ninclude_private = true\n\n\
         [[feeds]]\nname = \"apiban\"\nkind = \"apiban\"\nurl = \"{base}{API_PATH}\"\n\
         key = \"{APIBAN_KEY}\"\nrefresh = \"10s\"\ninclude_private = true\n",
        base = server.base()
    )
}

#[test]
#[ignore = "needs root and network namespaces: run with `cargo xtask test`"]
fn feeds_drop_in_the_kernel_and_keep_their_last_good_lists() {
    // The port is fixed by the first server; the config names it.
    let probe = Link::new("fdl", &CLIENT_ADDRS, &PBX_ADDRS).expect("namespaces and veth");
    let mut server = FeedServer::start(
        &probe.right,
        0,
        LIST,
        &[
            ("100", &[FRAUDSTER, OFFICE, "not-an-ip"], "1764460001"),
            ("1764460001", &[], "1764460001"),
        ],
    )
    .expect("the feed server");
    let site = Site::new(probe, "fdl", &feeds_config(&server));
    let mut daemon = site.start();
    daemon
        .wait_for("feed voipbl: refreshed", REFRESHED)
        .expect("the list's first refresh");
    daemon
        .wait_for("feed apiban: refreshed", REFRESHED)
        .expect("APIBan's first refresh");
    assert!(site.dropped(SCANNER), "{}", daemon.log());
    assert!(site.dropped(SCANNER_V6));
    assert!(site.dropped(FRAUDSTER));
    // Listed by both feeds, and allow-listed: never dropped.
    assert!(site.passes(OFFICE));
    let log = daemon.log();
    assert!(
        log.contains("1 bad lines (line 4: \"this line is not an address\")"),
        "{log}"
    );
    assert!(
        log.contains("except the allow-listed 10.77.0.2/32"),
        "{log}"
    );
    // APIBan was paged with its cursor.
    let asked = server.asked();
    assert!(
        asked.contains(&format!("{API_PATH}KEY/banned/100")),
        "{asked:?}"
    );
    assert!(
        asked.contains(&format!("{API_PATH}KEY/banned/1764460001")),
        "{asked:?}"
    );

    // explain and bans --origin name the feed.
    let why = site.run(&["explain", SCANNER]);
    assert!(
        why.contains("fleet deny set: 10.77.0.3/32 (feed voipbl)"),
        "{why}"
    );
    let why = site.run(&["explain", FRAUDSTER]);
    assert!(
        why.contains("fleet deny set: 10.77.0.4/32 (feed apiban)"),
        "{why}"
    );
    let feed_rows = site.bans("feed");
    let row = feed_rows
        .iter()
        .find(|r| r.source == "10.77.0.3/32")
        .expect("the list's entry");
    assert_eq!(
        (row.reason.as_str(), row.detail.as_str(), row.listed),
        ("feed", "feed voipbl", true)
    );
    assert!(feed_rows.iter().any(|r| r.detail == "feed apiban"));
    assert!(site.bans("local").is_empty());
    assert!(site.bans("crowdsec").is_empty());
    let table = site.run(&["bans", "--origin", "feed"]);
    assert!(table.contains("while listed"), "{table}");
    let status = site.status();
    let voipbl = status
        .fleet
        .iter()
        .find(|h| h.name == "voipbl")
        .expect("voipbl");
    assert_eq!((voipbl.failing, voipbl.entries), (0, 4), "{voipbl:?}");
    assert_eq!(voipbl.skipped, 1);
    let text = site.run(&["status"]);
    assert!(text.contains("feed voipbl: ok; last sync"), "{text}");

    // A captive portal's page: no list; the last good one stays.
    server.set_list_mode(Mode::Garbage);
    site.wait_health("voipbl", &daemon, |error, failing| {
        failing > 0 && error.contains("an HTML page")
    });
    assert!(site.dropped(SCANNER) && site.dropped(SCANNER_V6));
    daemon
        .wait_for("feed voipbl: refresh failed", REFRESHED)
        .expect("the failure is logged");
    // The server mends, then answers 500.
    server.set_list_mode(Mode::Good);
    daemon
        .wait_for("feed voipbl: refreshed again", REFRESHED * 2)
        .expect("the recovery is logged");
    server.set_list_mode(Mode::Error500);
    site.wait_health("voipbl", &daemon, |error, _| error.contains("500"));
    assert!(site.dropped(SCANNER));
    let text = site.run(&["status"]);
    assert!(text.contains("feed voipbl: FAILING"), "{text}");

    // APIBan's rate limit: nothing lost, asked again later.
    server.set_api_mode(Mode::RateLimited);
    site.wait_health("apiban", &daemon, |error, _| error.contains("rate limited"));
    assert!(site.dropped(FRAUDSTER));

    // Both feeds gone: connections refused; everything stays in force.
    server.stop();
    site.wait_health("voipbl", &daemon, |error, _| {
        error.contains("error sending request")
    });
    assert!(site.dropped(SCANNER) && site.dropped(FRAUDSTER) && site.passes(OFFICE));

    // A restart without the feeds enforces the saved lists.
    daemon.stop().expect("stopped");
    let mut daemon = site.start();
    daemon
        .wait_for("fleet deny set restored", REFRESHED)
        .expect("the saved lists are restored");
    assert!(site.dropped(SCANNER), "{}", daemon.log());
    assert!(site.dropped(SCANNER_V6) && site.dropped(FRAUDSTER));
    assert!(site.passes(OFFICE));
    daemon
        .wait_for("feed voipbl: refresh failed", REFRESHED)
        .expect("the unreachable feed is said so");
    let rows = site.bans("feed");
    assert!(rows.iter().any(|r| r.source == "10.77.0.3/32"), "{rows:?}");
    let status = site.status();
    let apiban = status
        .fleet
        .iter()
        .find(|h| h.name == "apiban")
        .expect("apiban");
    assert!(
        apiban.entries >= 1 && apiban.list_unix.is_some(),
        "{apiban:?}"
    );
    daemon.stop().expect("stopped");

    // The feeds come back: APIBan goes on from its saved cursor.
    let server = FeedServer::start(
        &site.link.right,
        server.port,
        LIST,
        &[("1764460001", &["10.77.0.9"], "1764460002")],
    )
    .expect("the feed server again");
    let mut daemon = site.start();
    daemon
        .wait_for("feed apiban: refreshed", REFRESHED)
        .expect("APIBan refreshed");
    let asked = server.asked();
    assert!(
        !asked.contains(&format!("{API_PATH}KEY/banned/100")),
        "the cursor was saved: {asked:?}"
    );
    assert!(site.dropped(FRAUDSTER), "the earlier page's entry stays");
    daemon.stop().expect("stopped");
}

#[test]
#[ignore = "needs root and network namespaces: run with `cargo xtask test`"]
fn bad_feed_config_is_a_clear_error_or_a_warning_and_a_retry() {
    // A missing key is a config error with its place.
    let bad = TempFile::new(
        "fdb-bad.toml",
        "[[feeds]]\nname = \"apiban\"\nkind = \"apiban\"\nrefresh = \"5m\"\n",
    );
    let out = std::process::Command::new(sipguard_tests::daemon::sipguard_bin())
        .args(["check-config", bad.path()])
        .output()
        .expect("check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(":1: key `feeds[0].key`: give exactly one of key or key_file"),
        "{stderr}"
    );

    // A key file that cannot be read stops the start, saying which.
    let link = Link::new("fdb", &CLIENT_ADDRS, &PBX_ADDRS).expect("namespaces and veth");
    let missing = TempFile::new(
        "fdb-keyfile.toml",
        "[[feeds]]\nname = \"apiban\"\nkind = \"apiban\"\nkey_file = \"/nonexistent/apiban.key\"\n",
    );
    let state = TempDir::new("fdb-keyfile-state");
    let out = link
        .right
        .command(
            sipguard_tests::daemon::sipguard_bin()
                .to_str()
                .expect("UTF-8"),
        )
        .args([
            "run",
            "--iface",
            link.right_if.as_str(),
            "--no-pin",
            "--state-dir",
            state.path(),
            "--config",
            missing.path(),
        ])
        .output()
        .expect("sipguard run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("key_file /nonexistent/apiban.key"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A feed unreachable at start: a warning, the guard runs, a retry
    // takes the list once it is there.
    let port = free_port(&link);
    let site = Site::new(
        link,
        "fdb",
        &format!(
            "[[feeds]]\nname = \"voipbl\"\nkind = \"list\"\n\
             url = \"http://127.0.0.1:{port}{LIST_PATH}\"\nrefresh = \"10s\"\n\
             include_private = true\n"
        ),
    );
    let mut daemon = site.start();
    daemon
        .wait_for("feed voipbl: refresh failed", REFRESHED)
        .expect("the unreachable feed is said so");
    assert!(site.passes(SCANNER));
    let text = site.run(&["status"]);
    assert!(text.contains("feed voipbl: FAILING"), "{text}");
    let _server = FeedServer::start(&site.link.right, port, LIST, &[]).expect("the feed server");
    daemon
        .wait_for("feed voipbl: refreshed", REFRESHED)
        .expect("the retry takes the list");
    assert!(site.dropped(SCANNER), "{}", daemon.log());
    daemon.stop().expect("stopped");
}

/// A port nothing listens on in the PBX's namespace (bound, then closed).
fn free_port(link: &Link) -> u16 {
    link.right
        .run_in(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        })
        .join()
        .expect("thread")
        .expect("namespace")
        .expect("a free port")
}
