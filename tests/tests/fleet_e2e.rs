//! sipguard as a CrowdSec bouncer, end to end: a real LAPI (Debian's
//! `crowdsec -no-cs`) in its own namespace, decisions made with `cscli`,
//! and real packets through the XDP program on the PBX's veth.
//! Needs root and crowdsec (`cargo xtask test` installs it).
use std::time::{Duration, Instant};

use guard_userspace::control::protocol::BanRow;
use sipguard_tests::{
    crowdsec::Lapi,
    daemon::{Daemon, GuardHome},
    netns::Link,
    traffic::{cli, delivered, CLIENT_ADDRS, PBX_ADDRS},
};

/// Allow-listed in every config here.
const OFFICE: &str = "10.77.0.2";
const SCANNER: &str = "10.77.0.3";
const FRAUDSTER: &str = "10.77.0.4";
const SCANNER_V6: &str = "fd77::5";
const POLL: Duration = Duration::from_secs(1);
/// One poll interval, plus the time a check itself takes (a sink and a
/// few datagrams, about 0.4 s) and scheduling on a loaded CI machine.
const WITHIN_A_POLL: Duration = Duration::from_millis(3000);

struct Site {
    link: Link,
    lapi: Lapi,
    home: GuardHome,
}

impl Site {
    fn new(tag: &str) -> Site {
        let link = Link::new(tag, &CLIENT_ADDRS, &PBX_ADDRS).expect("namespaces and veth");
        let lapi = Lapi::start(&link.right).expect("a CrowdSec LAPI");
        let config = format!(
            "[[allow]]\ncidr = \"{OFFICE}/32\"\ncomment = \"office\"\n\n\
             [crowdsec]\nlapi_url = \"{}\"\nbouncer_api_key = \"{}\"\npoll_interval = \"1s\"\n",
            lapi.url(),
            lapi.bouncer_key
        );
        Site {
            link,
            lapi,
            home: GuardHome::new(tag, &config),
        }
    }

    fn start(&self) -> Daemon {
        let (mut daemon, _) = self
            .home
            .start(&self.link.right, &self.link.right_if)
            .expect("sipguard attached");
        daemon
            .wait_for("crowdsec full sync", Duration::from_secs(20))
            .expect("the first sync");
        daemon
    }

    fn cscli(&self, args: &[&str]) {
        self.lapi
            .cscli(args)
            .unwrap_or_else(|e| panic!("{e:#}\nLAPI log:\n{}", self.lapi.log()));
    }

    fn ban(&self, ip: &str) {
        self.cscli(&[
            "decisions",
            "add",
            "--ip",
            ip,
            "--duration",
            "1h",
            "--reason",
            "sipguard-test/sip-bf",
        ]);
    }

    fn unban(&self, ip: &str) {
        self.cscli(&["decisions", "delete", "--ip", ip]);
    }

    fn passes(&self, source: &'static str) -> bool {
        delivered(&self.link, source, 3) == 3
    }

    fn dropped(&self, source: &'static str) -> bool {
        delivered(&self.link, source, 3) == 0
    }

    fn explain(&self, ip: &str) -> String {
        let out = cli(&self.home.socket, &["explain", ip]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn bans(&self) -> Vec<BanRow> {
        self.bans_of(&[])
    }

    /// `bans --json` with more arguments (`--origin ...`).
    fn bans_of(&self, more: &[&str]) -> Vec<BanRow> {
        let out = cli(&self.home.socket, &[&["bans", "--json"][..], more].concat());
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).expect("bans as JSON")
    }

    /// The LAPI's line in `sipguard status`.
    fn lapi_status(&self) -> String {
        let out = cli(&self.home.socket, &["status"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("crowdsec:"))
            .expect("a crowdsec line in status")
            .to_string()
    }
}

/// How long until `check` holds (polling), or None within `limit`.
fn time_until(limit: Duration, check: impl Fn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
    }
    None
}

fn log_count(daemon: &Daemon, needle: &str) -> usize {
    daemon.log().matches(needle).count()
}

fn wait_log_count(daemon: &Daemon, needle: &str, count: usize, limit: Duration) {
    let start = Instant::now();
    while log_count(daemon, needle) < count {
        assert!(
            start.elapsed() < limit,
            "fewer than {count} {needle:?} in the log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root, network namespaces and crowdsec: run with `cargo xtask test`"]
fn cscli_decisions_are_dropped_within_a_poll_and_lifted_on_delete() {
    let site = Site::new("csd");
    let mut daemon = site.start();
    assert!(site.passes(SCANNER));

    site.ban(SCANNER);
    let took = time_until(WITHIN_A_POLL, || site.dropped(SCANNER));
    assert!(took.is_some(), "not dropped in time:\n{}", daemon.log());
    assert!(site.passes(FRAUDSTER), "only the decided address drops");
    let row = site
        .bans()
        .into_iter()
        .find(|b| b.source == SCANNER)
        .expect("the decision is a ban");
    assert_eq!(row.reason, "crowdsec");
    assert!(row.detail.contains("sipguard-test/sip-bf"), "{row:?}");
    assert!(row.remaining_seconds.is_some_and(|s| s > 3500 && s <= 3600));
    assert!(row.dropped >= 3, "{row:?}");
    // The origin filter: CrowdSec's, not the guard's own.
    assert!(site
        .bans_of(&["--origin", "crowdsec"])
        .iter()
        .any(|b| b.source == SCANNER));
    assert!(site.bans_of(&["--origin", "local"]).is_empty());
    let lapi = site.lapi_status();
    assert!(lapi.starts_with("crowdsec:   ok; last sync"), "{lapi}");

    // IPv6: the ban covers the source's prefix, as the guard's own do.
    site.ban(SCANNER_V6);
    assert!(time_until(WITHIN_A_POLL, || site.dropped(SCANNER_V6)).is_some());

    // An allow-listed address is never dropped by a fleet decision.
    site.ban(OFFICE);
    daemon
        .wait_for("is allow-listed", WITHIN_A_POLL)
        .expect("the refusal is logged");
    assert!(site.passes(OFFICE));

    // Other types are counted and ignored.
    site.cscli(&["decisions", "add", "--ip", FRAUDSTER, "--type", "captcha"]);
    daemon
        .wait_for("1 other types", WITHIN_A_POLL)
        .expect("the captcha is counted");
    assert!(site.passes(FRAUDSTER));

    site.unban(SCANNER);
    let took = time_until(WITHIN_A_POLL, || site.passes(SCANNER));
    assert!(took.is_some(), "not lifted in time:\n{}", daemon.log());
    assert!(site.dropped(SCANNER_V6), "the other decision stays");
    assert!(site.bans().iter().all(|b| b.source != SCANNER));
    daemon.stop().expect("stopped");
}

#[test]
#[ignore = "needs root, network namespaces and crowdsec: run with `cargo xtask test`"]
fn range_decisions_drop_the_whole_range_but_the_allow_list() {
    const RANGE: &str = "10.77.0.0/24";
    let site = Site::new("csr");
    let mut daemon = site.start();
    assert!(site.passes(SCANNER) && site.passes(FRAUDSTER));

    site.cscli(&[
        "decisions",
        "add",
        "--range",
        RANGE,
        "--duration",
        "1h",
        "--reason",
        "sipguard-test/range",
    ]);
    let took = time_until(WITHIN_A_POLL, || {
        site.dropped(SCANNER) && site.dropped(FRAUDSTER)
    });
    assert!(took.is_some(), "the range did not drop:\n{}", daemon.log());
    // The office inside the range is allow-listed: spared, and said so.
    assert!(site.passes(OFFICE));
    daemon
        .wait_for("except the allow-listed 10.77.0.2/32", WITHIN_A_POLL)
        .expect("the spared part is logged");
    assert!(site.passes(SCANNER_V6), "another family, another range");
    // A range is no ban: it is in the fleet deny set, and explain names it.
    assert!(site.bans().iter().all(|b| b.source != SCANNER));
    let ranges = site.bans_of(&["--origin", "crowdsec"]);
    let range = ranges
        .iter()
        .find(|b| b.source == RANGE)
        .expect("bans --origin crowdsec lists the range");
    assert!(
        range.listed && range.detail.contains("sipguard-test/range"),
        "{range:?}"
    );
    assert!(site.bans_of(&["--origin", "feed"]).is_empty());
    let why = site.explain(SCANNER);
    assert!(
        why.contains("fleet deny set: 10.77.0.0/24 (crowdsec sipguard-test/range (origin cscli))"),
        "{why}"
    );

    // A restart without the LAPI still enforces the range (saved state).
    daemon.stop().expect("stopped");
    let mut site = site;
    site.lapi.halt();
    let (mut daemon, _) = site
        .home
        .start(&site.link.right, &site.link.right_if)
        .expect("sipguard attached");
    daemon
        .wait_for("fleet deny set restored: 1 networks", WITHIN_A_POLL)
        .expect("the range is restored");
    assert!(site.dropped(SCANNER), "{}", daemon.log());
    assert!(site.passes(OFFICE));
    site.lapi.resume().expect("the LAPI restarts");
    daemon
        .wait_for("crowdsec full sync", Duration::from_secs(20))
        .expect("the sync after the LAPI is back");

    site.cscli(&["decisions", "delete", "--range", RANGE]);
    let took = time_until(WITHIN_A_POLL, || {
        site.passes(SCANNER) && site.passes(FRAUDSTER)
    });
    assert!(
        took.is_some(),
        "the range was not lifted:\n{}",
        daemon.log()
    );
    assert!(!site.explain(SCANNER).contains("fleet"));
    daemon.stop().expect("stopped");
}

#[test]
#[ignore = "needs root, network namespaces and crowdsec: run with `cargo xtask test`"]
fn outages_lose_nothing_and_restarts_resync() {
    let mut site = Site::new("cso");
    let mut daemon = site.start();
    site.ban(SCANNER);
    assert!(time_until(WITHIN_A_POLL, || site.dropped(SCANNER)).is_some());

    // The PBX loses the LAPI; decisions change meanwhile.
    site.lapi.set_link(false).expect("link down");
    // Packets to the LAPI vanish: the pull times out (10 s).
    wait_log_count(
        &daemon,
        "crowdsec LAPI pull failed",
        1,
        Duration::from_secs(15),
    );
    site.ban(FRAUDSTER);
    site.unban(SCANNER);
    assert!(site.dropped(SCANNER), "what was applied stays applied");
    let lapi = site.lapi_status();
    assert!(
        lapi.contains("FAILING"),
        "status says the LAPI is failing: {lapi}"
    );
    assert!(site.passes(FRAUDSTER));
    site.lapi.set_link(true).expect("link up");
    // The backoff has grown by now: up to 8 poll intervals, plus the checks.
    let caught_up = time_until(Duration::from_secs(12), || {
        site.dropped(FRAUDSTER) && site.passes(SCANNER)
    });
    assert!(
        caught_up.is_some(),
        "deltas did not arrive:\n{}",
        daemon.log()
    );
    daemon
        .wait_for("crowdsec LAPI reachable again", POLL)
        .expect("the recovery is logged");

    // The LAPI itself restarts: nothing lost, deltas still arrive.
    site.lapi.halt();
    wait_log_count(&daemon, "crowdsec LAPI pull failed", 2, WITHIN_A_POLL);
    assert!(site.dropped(FRAUDSTER));
    site.lapi.resume().expect("the LAPI restarts");
    site.ban(SCANNER_V6);
    let took = time_until(Duration::from_secs(12), || site.dropped(SCANNER_V6));
    assert!(
        took.is_some(),
        "no delta after the restart:\n{}",
        daemon.log()
    );
    assert!(site.dropped(FRAUDSTER));

    // sipguard restarts (bans come back from its state directory) while a
    // decision is deleted: the full sync lifts it, and keeps the rest.
    daemon.stop().expect("stopped");
    site.unban(FRAUDSTER);
    let mut daemon = site.start();
    let took = time_until(WITHIN_A_POLL, || site.passes(FRAUDSTER));
    assert!(
        took.is_some(),
        "a stale ban survived the resync:\n{}",
        daemon.log()
    );
    assert!(site.dropped(SCANNER_V6));
    assert!(daemon.log().contains("1 lifted"), "{}", daemon.log());
    daemon.stop().expect("stopped");
}
