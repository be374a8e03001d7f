//! Two PBXs share one CrowdSec LAPI, end to end: each PBX namespace runs
//! Debian's Kamailio and sipguard (bouncer and watcher), the LAPI (Debian's
//! `crowdsec -no-cs`) runs in a namespace of its own with a veth to each,
//! machines and bouncers made with `cscli`. A password crack on PBX 1
//! (sipp guessing) is banned there, reported as an alert, and dropped at
//! PBX 2. Needs root and crowdsec (`cargo xtask test`).
use std::time::{Duration, Instant};

use guard_common::BanReason;
use guard_userspace::control::protocol::BanRow;
use sipguard_tests::{
    crowdsec::Lapi,
    daemon::TempFile,
    kamailio::{KamailioSetup, Pbx, ATTACKER, PASSWORD},
    traffic::cli,
};

const ATTACKER_OCTETS: [u8; 4] = [10, 78, 0, 4];
/// The deadline for a ban on one PBX to drop the attacker at the other:
/// PBX 1 reports at once, PBX 2 polls every second.
const FLEET_DEADLINE: Duration = Duration::from_secs(15);

/// A PBX's sipguard config: SIP bans at the normal level (10 wrong
/// passwords), and the `[crowdsec]` section given.
fn config(crowdsec: &str) -> String {
    format!("[sip_auth]\nlevel = \"normal\"\n\n[crowdsec]\n{crowdsec}poll_interval = \"1s\"\n")
}

/// The metrics of a PBX's sipguard (127.0.0.1:9477 in its namespace).
fn scrape(pbx: &Pbx) -> String {
    use std::io::{Read, Write};
    pbx.link
        .right
        .run_in(|| {
            let mut stream = std::net::TcpStream::connect("127.0.0.1:9477").ok()?;
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                .ok()?;
            let mut body = String::new();
            stream.read_to_string(&mut body).ok()?;
            Some(body)
        })
        .join()
        .expect("metrics thread")
        .expect("PBX namespace")
        .unwrap_or_default()
}

/// The value of the series that starts with `series` (name and labels).
fn metric(metrics: &str, series: &str) -> Option<i64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn reports(pbx: &Pbx, result: &str) -> i64 {
    let metrics = scrape(pbx);
    metric(
        &metrics,
        &format!("sipguard_fleet_reports_total{{result=\"{result}\"}}"),
    )
    .unwrap_or_else(|| panic!("no sipguard_fleet_reports_total {result}:\n{metrics}"))
}

fn queued(pbx: &Pbx) -> i64 {
    metric(&scrape(pbx), "sipguard_fleet_reports_queued ").expect("the queue gauge")
}

/// Polls `check` until it holds or `limit` has passed.
fn until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}

/// Ten wrong passwords from the attacker: PBX 1 bans it (normal level).
fn crack(pbx: &mut Pbx) {
    assert_eq!(
        pbx.sipp(ATTACKER, "register-wrong-password.xml", "1001", "guess", 10),
        (10, 0)
    );
    let line = pbx
        .guard
        .wait_for("banned 10.78.0.4", Duration::from_secs(5))
        .unwrap();
    assert!(line.contains("auth-failure, 10 failures in 1h"), "{line}");
}

/// Checks sipguard's one alert in the LAPI: scenario, evidence, source and
/// its ban decision, from machine `machine`.
fn check_alert(alert: &serde_json::Value, machine: &str) {
    assert_eq!(alert["scenario"], "sipguard/auth-failure", "{alert:#}");
    assert_eq!(alert["machine_id"], machine, "{alert:#}");
    let message = alert["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("10 failures in 1h (proven)") && message.contains("1001:401"),
        "the evidence is the message: {alert:#}"
    );
    assert_eq!(alert["source"]["scope"], "Ip", "{alert:#}");
    assert_eq!(alert["source"]["value"], ATTACKER, "{alert:#}");
    assert_eq!(alert["events_count"], 10, "{alert:#}");
    let decisions = alert["decisions"].as_array().expect("decisions");
    assert_eq!(decisions.len(), 1, "{alert:#}");
    let decision = &decisions[0];
    assert_eq!(decision["type"], "ban", "{alert:#}");
    assert_eq!(decision["value"], ATTACKER, "{alert:#}");
    assert_eq!(decision["origin"], "crowdsec", "{alert:#}");
    assert_eq!(decision["scenario"], "sipguard/auth-failure", "{alert:#}");
}

#[test]
#[ignore = "needs root, network namespaces, Kamailio and crowdsec: run with `cargo xtask test`"]
fn a_crack_on_one_pbx_is_dropped_at_the_other_through_the_lapi() {
    // The namespaces first: the LAPI joins both PBXs before sipguard starts.
    let link1 = Pbx::link("f2a");
    let link2 = Pbx::link("f2b");
    let lapi = Lapi::start(&link1.right).expect("a CrowdSec LAPI");
    let url1 = lapi.url();
    let url2 = lapi
        .connect(&link2.right)
        .expect("PBX 2 joined to the LAPI");
    let key1 = lapi.add_bouncer("f2-pbx1").expect("bouncer 1");
    let key2 = lapi.add_bouncer("f2-pbx2").expect("bouncer 2");
    lapi.add_machine("f2-pbx1", "f2-pbx1-password-7c1e")
        .expect("machine 1");
    lapi.add_machine("f2-pbx2", "f2-pbx2-password-93ab")
        .expect("machine 2");
    // PBX 1 reads its password from a file, PBX 2 has it in the config.
    let password1 = TempFile::new("f2-pbx1.password", "f2-pbx1-password-7c1e\n");
    let config1 = config(&format!(
        "lapi_url = \"{url1}\"\nbouncer_api_key = \"{key1}\"\nmachine_login = \"f2-pbx1\"\n\
         machine_password_file = \"{}\"\n",
        password1.path()
    ));
    let config2 = config(&format!(
        "lapi_url = \"{url2}\"\nbouncer_api_key = \"{key2}\"\nmachine_login = \"f2-pbx2\"\n\
         machine_password = \"f2-pbx2-password-93ab\"\n"
    ));
    let mut pbx1 = Pbx::start_on(link1, "f2a", &config1, KamailioSetup::default());
    let mut pbx2 = Pbx::start_on(link2, "f2b", &config2, KamailioSetup::default());
    for pbx in [&mut pbx1, &mut pbx2] {
        pbx.guard
            .wait_for("crowdsec watcher: logged in", Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e:#}\nLAPI log:\n{}", lapi.log()));
        pbx.guard
            .wait_for("crowdsec full sync", Duration::from_secs(20))
            .expect("the first sync");
    }
    assert!(
        !pbx1.guard.log().contains("f2-pbx1-password")
            && !pbx2.guard.log().contains("f2-pbx2-password"),
        "a password in the log"
    );

    // The attacker reaches PBX 2 before (one wrong guess is answered). Not
    // a correct registration: that would make it one of PBX 2's learned
    // peers, which a fleet decision never drops.
    assert_eq!(
        pbx2.sipp(ATTACKER, "register-wrong-password.xml", "1001", "guess", 1),
        (1, 0)
    );

    crack(&mut pbx1);
    let banned = Instant::now();
    // PBX 2 drops it within the deadline: its kernel holds the fleet's ban.
    let dropped_in_time = until(FLEET_DEADLINE, || {
        pbx2.ban(ATTACKER_OCTETS)
            .is_some_and(|b| b.reason == BanReason::Crowdsec as u16)
    });
    assert!(
        dropped_in_time,
        "PBX 2 has no crowdsec ban on the attacker after {FLEET_DEADLINE:?}\nPBX 1:\n{}\nPBX 2:\n{}",
        pbx1.guard.log(),
        pbx2.guard.log()
    );
    eprintln!("banned at PBX 2 {:?} after PBX 1 banned", banned.elapsed());
    // Real packets: the attacker's guesses no longer reach Kamailio.
    assert_eq!(
        pbx2.sipp(ATTACKER, "register-wrong-password.xml", "1001", "guess", 1)
            .0,
        0
    );
    let out = cli(&pbx2.socket, &["bans", "--json"]);
    let rows: Vec<BanRow> = serde_json::from_slice(&out.stdout).expect("bans as JSON");
    let row = rows
        .iter()
        .find(|r| r.source == ATTACKER)
        .expect("the fleet's ban at PBX 2");
    assert_eq!(row.reason, "crowdsec");
    assert!(row.detail.contains("sipguard/auth-failure"), "{row:?}");
    // The fleet's decision lasts what was left of PBX 1's ban (a day).
    assert!(
        row.remaining_seconds
            .is_some_and(|s| s > 86_000 && s <= 86_400),
        "{row:?}"
    );
    assert!(row.dropped >= 1, "{row:?}");
    // The phone at PBX 2 is unaffected.
    assert_eq!(
        pbx2.sipp(
            sipguard_tests::kamailio::PHONE,
            "register.xml",
            "1002",
            PASSWORD,
            1
        ),
        (1, 0)
    );

    // The LAPI holds sipguard's alert, with its evidence.
    let alerts = lapi.sipguard_alerts();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    check_alert(&alerts[0], "f2-pbx1");

    // The LAPI's ban is not reported back: neither by PBX 2, which made
    // it from the LAPI, nor by PBX 1, which pulled its own decision back.
    // Both pull every second; a few pulls later nothing more has come.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        lapi.sipguard_alerts().len(),
        1,
        "{:#?}",
        lapi.sipguard_alerts()
    );
    assert_eq!(reports(&pbx1, "sent"), 1);
    assert_eq!(reports(&pbx2, "sent"), 0);
    for pbx in [&pbx1, &pbx2] {
        assert_eq!(reports(pbx, "dropped"), 0);
        assert_eq!(reports(pbx, "rejected"), 0);
        assert_eq!(queued(pbx), 0);
    }
    assert!(pbx1
        .ban(ATTACKER_OCTETS)
        .is_some_and(|b| b.reason == BanReason::AuthFailure as u16));
    assert!(pbx1.guard.stop().unwrap().success());
    assert!(pbx2.guard.stop().unwrap().success());
}

#[test]
#[ignore = "needs root, network namespaces, Kamailio and crowdsec: run with `cargo xtask test`"]
fn reports_wait_for_an_unreachable_lapi_and_go_out_when_it_is_back() {
    let link = Pbx::link("f2q");
    let lapi = Lapi::start(&link.right).expect("a CrowdSec LAPI");
    lapi.add_machine("f2-queue", "f2-queue-password")
        .expect("machine");
    // A watcher only: no bouncer key.
    let config = config(&format!(
        "lapi_url = \"{}\"\nmachine_login = \"f2-queue\"\nmachine_password = \"f2-queue-password\"\n",
        lapi.url()
    ));
    let mut pbx = Pbx::start_on(link, "f2q", &config, KamailioSetup::default());
    pbx.guard
        .wait_for("crowdsec watcher: logged in", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\nLAPI log:\n{}", lapi.log()));
    assert!(
        !pbx.guard.log().contains("crowdsec bouncer"),
        "no bouncer without a key"
    );

    lapi.set_link(false).expect("link down");
    crack(&mut pbx);
    // Banning did not wait: the ban is in the kernel while the report waits.
    assert!(pbx.ban(ATTACKER_OCTETS).is_some());
    pbx.guard
        .wait_for("pushing alerts to the LAPI failed", Duration::from_secs(20))
        .expect("the failed push is logged");
    assert_eq!(queued(&pbx), 1);
    assert_eq!(reports(&pbx, "sent"), 0);
    assert!(lapi.sipguard_alerts().is_empty());

    lapi.set_link(true).expect("link up");
    // Retries back off up to a minute; after a short outage they come
    // within seconds (the deadline allows for a push timing out first).
    let arrived = until(Duration::from_secs(40), || {
        !lapi.sipguard_alerts().is_empty()
    });
    assert!(
        arrived,
        "the queued report never arrived:\n{}",
        pbx.guard.log()
    );
    let alerts = lapi.sipguard_alerts();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    check_alert(&alerts[0], "f2-queue");
    pbx.guard
        .wait_for("the LAPI is reachable again", Duration::from_secs(5))
        .expect("the recovery is logged");
    assert_eq!(queued(&pbx), 0);
    assert_eq!(reports(&pbx, "sent"), 1);
    assert!(pbx.guard.stop().unwrap().success());
}
