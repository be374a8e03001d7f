//! Host unit tests of every runtime operation, over maps kept in memory
//! (`kernel::fake`): no root, no kernel. What the kernel then does with
//! the maps is tested against the real program in tests/ (runtime_ops and
//! the verdict table).
use std::{net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use guard_common::{BanEntry, BanReason, SourceKey, BAN_FOREVER, NO_RULE};

use super::{
    bans::BanRequest,
    fleet::{FleetBan, FleetChange},
    lists::NewEntry,
    safety::{LockoutCheck, Session},
    Error, MonitorOrigin, Runtime,
};
use crate::{
    clock,
    kernel::{fake::FakeMaps, store::NetList},
    state::StateDir,
};

const POLICY: &str = r#"
[services.ami]
access = "closed"
[[deny]]
cidr = "203.0.113.0/24"
comment = "scanners"
[[allow]]
cidr = "10.1.0.0/16"
services = ["sip"]
"#;

const NO_SESSION: LockoutCheck = LockoutCheck {
    force: false,
    session: None,
};

/// A runtime over in-memory maps, its config in a file of its own (so that
/// `reload` re-reads it), its state directory beside it.
struct Site {
    runtime: Arc<Runtime>,
    maps: FakeMaps,
    dir: PathBuf,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Site {
    fn new(name: &str, toml: &str) -> Site {
        let dir = std::env::temp_dir().join(format!("sipguard-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (runtime, maps, _) = super::fake_runtime(&dir, toml);
        Site {
            runtime: Arc::new(runtime),
            maps,
            dir,
        }
    }

    fn write(&self, name: &str, toml: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, toml).unwrap();
        path
    }

    fn kernel_monitor(&self) -> bool {
        self.maps.state().settings.monitor != 0
    }

    fn kernel_nets(&self, list: NetList) -> Vec<String> {
        let state = self.maps.state();
        state
            .lists
            .get(&list)
            .map(|l| l.keys().map(|n| n.to_string()).collect())
            .unwrap_or_default()
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn ban(text: &str, duration: Option<Duration>, reason: Option<&str>) -> BanRequest {
    BanRequest {
        ip: ip(text),
        duration,
        reason: reason.map(str::to_string),
    }
}

fn entry(cidr: &str, services: &[&str]) -> NewEntry {
    NewEntry {
        cidr: cidr.parse().unwrap(),
        services: services.iter().map(|s| s.to_string()).collect(),
        comment: Some("office".into()),
    }
}

/// The verdict `explain` gives `source` for `service`.
async fn verdict(rt: &Runtime, source: &str, service: &str) -> String {
    rt.explain(ip(source))
        .await
        .unwrap()
        .verdicts
        .into_iter()
        .find(|v| v.service == service)
        .map(|v| v.verdict)
        .unwrap()
}

#[tokio::test]
async fn bans_are_added_listed_and_removed() {
    let s = Site::new("bans", POLICY);
    let rt = &s.runtime;
    let banned = rt
        .ban_add(
            ban("192.0.2.7", Some(Duration::from_secs(3600)), Some("fraud")),
            &NO_SESSION,
        )
        .await
        .unwrap();
    assert_eq!(
        (banned.source.as_str(), banned.duration.as_str()),
        ("192.0.2.7", "1h")
    );
    let v6 = rt
        .ban_add(ban("2001:db8:1:2::9", None, None), &NO_SESSION)
        .await
        .unwrap();
    assert_eq!(v6.source, "2001:db8:1:2::/64");
    let zero = rt
        .ban_add(ban("192.0.2.8", Some(Duration::ZERO), None), &NO_SESSION)
        .await;
    assert!(matches!(zero, Err(Error::Invalid(_))), "{zero:?}");
    let millennium = Some(Duration::from_secs(1000 * 365 * 86_400));
    let e = rt
        .ban_add(ban("192.0.2.8", millennium, None), &NO_SESSION)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("beyond")),
        "{e}"
    );

    // In the maps, as the kernel reads them.
    {
        let state = s.maps.state();
        assert_eq!(state.bans.len(), 2);
        let key = SourceKey::from_ipv4([192, 0, 2, 7]);
        assert_eq!(state.bans[&key].reason, BanReason::Manual as u16);
    }
    let rows = rt.bans().await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let fraud = rows.iter().find(|r| r.source == "192.0.2.7").unwrap();
    assert_eq!(
        (fraud.reason.as_str(), fraud.detail.as_str()),
        ("manual", "fraud")
    );
    assert!(fraud.remaining_seconds.unwrap() > 3590);
    let forever = rows.iter().find(|r| r.source.starts_with("2001")).unwrap();
    assert_eq!(forever.remaining_seconds, None);
    assert_eq!(rt.status().await.unwrap().bans_active, 2);
    assert_eq!(verdict(rt, "192.0.2.7", "sip").await, "drop");

    assert_eq!(
        rt.ban_remove(ip("192.0.2.7")).await.unwrap().source,
        "192.0.2.7"
    );
    assert_eq!(
        rt.ban_remove(ip("192.0.2.7")).await.unwrap_err(),
        Error::NotFound("192.0.2.7 is not banned".into())
    );
    // Another address in the same /64 is the same ban.
    rt.ban_remove(ip("2001:db8:1:2::1")).await.unwrap();
    assert!(rt.bans().await.unwrap().is_empty());
    assert!(s.maps.state().bans.is_empty());
}

#[tokio::test]
async fn expired_bans_are_swept_with_their_details_and_saved_bans_are_kept() {
    let s = Site::new("sweep", POLICY);
    let rt = &s.runtime;
    rt.ban_add(ban("192.0.2.1", None, Some("kept")), &NO_SESSION)
        .await
        .unwrap();
    let expired = BanEntry {
        expires_ns: 1,
        created_ns: 0,
        reason: BanReason::RateLimit as u16,
        rule: 0,
        ..BanEntry::default()
    };
    s.maps
        .state()
        .bans
        .insert(SourceKey::from_ipv4([192, 0, 2, 2]), expired);
    assert_eq!(
        rt.bans().await.unwrap().len(),
        1,
        "expired ones are not shown"
    );
    rt.sweep().await;
    let keys: Vec<SourceKey> = s.maps.state().bans.keys().copied().collect();
    assert_eq!(keys, [SourceKey::from_ipv4([192, 0, 2, 1])]);

    rt.save_bans().await;
    let saved = std::fs::read_to_string(s.dir.join("state/bans.json")).unwrap();
    assert!(
        saved.contains("192.0.2.1") && saved.contains("kept"),
        "{saved}"
    );
    assert!(!saved.contains("192.0.2.2"), "{saved}");
}

/// An unban (and a deleted fleet decision) reaches the state directory
/// before it is answered: a daemon killed before its next save, then
/// started after a reboot, must not bring the lifted ban back from
/// `bans.json`. No saver runs here, as none would before a SIGKILL.
#[tokio::test]
async fn lifted_bans_stay_lifted_across_a_kill_before_the_next_save() {
    let s = Site::new("unban-journal", POLICY);
    let rt = &s.runtime;
    let fleet = |source: &str| {
        FleetChange::Ban(FleetBan {
            key: rt.source_key(ip(source)),
            expires_ns: clock::monotonic_ns() + 3_600_000_000_000,
            scenario: "crowdsecurity/sip-bf".into(),
            origin: "cscli".into(),
        })
    };
    for source in ["192.0.2.50", "192.0.2.51", "192.0.2.52"] {
        rt.ban_add(ban(source, None, Some("by hand")), &NO_SESSION)
            .await
            .unwrap();
    }
    rt.fleet_bans(&[fleet("198.51.100.60"), fleet("198.51.100.61")], true)
        .await;
    rt.save_bans().await;
    // Lifted after that save: one saved, one made since (journaled only).
    rt.ban_add(ban("192.0.2.53", None, None), &NO_SESSION)
        .await
        .unwrap();
    rt.ban_remove(ip("192.0.2.51")).await.unwrap();
    rt.ban_remove(ip("192.0.2.53")).await.unwrap();
    let lift = FleetChange::Lift(rt.source_key(ip("198.51.100.61")));
    assert_eq!(rt.fleet_bans(&[lift], true).await.lifted, 1);

    let state = StateDir::open(&s.dir.join("state")).unwrap();
    let mut saved: Vec<String> = state
        .load_bans(1000)
        .unwrap()
        .into_iter()
        .map(|b| b.key.to_canonical().to_string())
        .collect();
    saved.sort();
    assert_eq!(saved, ["192.0.2.50", "192.0.2.52", "198.51.100.60"]);
}

#[tokio::test]
async fn sip_bans_keep_a_longer_ban_and_carry_their_evidence() {
    let s = Site::new("sip", POLICY);
    let rt = &s.runtime;
    let decision = |source: &str, secs: u64| crate::sip::tracker::BanDecision {
        source: ip(source),
        reason: BanReason::AuthFailure,
        duration: Duration::from_secs(secs),
        evidence: vec![crate::sip::tracker::Failure {
            at: std::time::Instant::now(),
            username: b"7".to_vec(),
            status: 401,
            proven: true,
        }],
        failures_in_window: 3,
        proven: true,
        offence: 1,
    };
    rt.ban_add(ban("192.0.2.30", None, None), &NO_SESSION)
        .await
        .unwrap();
    let window = Duration::from_secs(60);
    let made = rt
        .sip_bans(
            &[decision("192.0.2.30", 600), decision("192.0.2.31", 600)],
            window,
        )
        .await;
    assert_eq!(made, 1, "the ban until removed stays");
    let rows = rt.bans().await.unwrap();
    let manual = rows.iter().find(|r| r.source == "192.0.2.30").unwrap();
    assert_eq!(manual.reason, "manual");
    let sip = rows.iter().find(|r| r.source == "192.0.2.31").unwrap();
    assert_eq!(sip.reason, "auth-failure");
    assert!(sip.detail.contains("401"), "{}", sip.detail);
}

#[tokio::test]
async fn list_changes_reach_the_maps_or_change_nothing() {
    let s = Site::new("lists", POLICY);
    let rt = &s.runtime;
    let unknown = rt
        .list_add(
            NetList::Allow,
            entry("198.51.100.0/24", &["sip", "fax"]),
            &NO_SESSION,
        )
        .await
        .unwrap_err();
    assert!(matches!(&unknown, Error::Invalid(m) if m.contains("unknown service \"fax\"")));
    assert_eq!(rt.list(NetList::Allow).await.len(), 1, "nothing changed");
    assert_eq!(s.kernel_nets(NetList::Allow), ["10.1.0.0/16"]);

    let added = rt
        .list_add(
            NetList::Allow,
            entry("198.51.100.7/24", &["sip"]),
            &NO_SESSION,
        )
        .await
        .unwrap();
    assert_eq!(
        (added.cidr.as_str(), added.added, added.not_saved),
        ("198.51.100.0/24", true, None)
    );
    assert_eq!(
        s.kernel_nets(NetList::Allow),
        ["10.1.0.0/16", "198.51.100.0/24"]
    );
    let rows = rt.list(NetList::Allow).await;
    let row = rows.iter().find(|r| r.cidr == "198.51.100.0/24").unwrap();
    assert_eq!(
        (row.origin.as_str(), row.services.as_slice()),
        ("runtime", &["sip".to_string()][..])
    );

    // A config entry removed at run time; removing it twice is not found.
    let deny = || "203.0.113.0/24".parse().unwrap();
    assert!(
        !rt.list_remove(NetList::Deny, deny(), &NO_SESSION)
            .await
            .unwrap()
            .added
    );
    let again = rt.list_remove(NetList::Deny, deny(), &NO_SESSION).await;
    assert!(matches!(again, Err(Error::NotFound(_))), "{again:?}");
    assert!(s.kernel_nets(NetList::Deny).is_empty());
    assert_eq!(verdict(rt, "203.0.113.9", "sip").await, "pass");

    let saved = std::fs::read_to_string(s.dir.join("state/lists.json")).unwrap();
    assert!(
        saved.contains("198.51.100.0/24") && saved.contains("203.0.113.0/24"),
        "{saved}"
    );

    // A full list refuses, and the live policy stays as it was.
    s.maps.state().list_capacity = Some(0);
    let full = rt
        .list_add(NetList::Deny, entry("192.0.2.0/24", &[]), &NO_SESSION)
        .await
        .unwrap_err();
    assert!(
        matches!(&full, Error::Failed(m) if m.contains("full")),
        "{full}"
    );
    assert!(rt.list(NetList::Deny).await.is_empty());
}

#[tokio::test]
async fn the_ssh_lockout_check_refuses_and_changes_nothing() {
    let s = Site::new("lockout", POLICY);
    let rt = &s.runtime;
    let operator = LockoutCheck {
        force: false,
        session: Some(Session {
            client: ip("192.0.2.10"),
            server_port: 22,
        }),
    };
    let refused = rt.ban_add(ban("192.0.2.10", None, None), &operator).await;
    assert!(matches!(refused, Err(Error::Refused(_))), "{refused:?}");
    assert!(s.maps.state().bans.is_empty());
    let deny = rt
        .list_add(NetList::Deny, entry("192.0.2.0/24", &[]), &operator)
        .await;
    assert!(matches!(deny, Err(Error::Refused(_))), "{deny:?}");
    assert_eq!(s.kernel_nets(NetList::Deny), ["203.0.113.0/24"]);
    let forced = LockoutCheck {
        force: true,
        ..operator
    };
    rt.ban_add(ban("192.0.2.10", None, None), &forced)
        .await
        .unwrap();
    assert_eq!(s.maps.state().bans.len(), 1);
}

#[tokio::test]
async fn monitor_mode_has_one_owner_and_a_reload_keeps_it_unless_the_file_says() {
    let s = Site::new("monitor", &format!("[guard]\nmonitor = true\n{POLICY}"));
    let rt = &s.runtime;
    let status = rt.status().await.unwrap();
    assert!(status.monitor && status.monitor_by == MonitorOrigin::Config);
    assert!(s.kernel_monitor());
    // In monitor mode a denied source passes, and explain says so.
    assert_eq!(verdict(rt, "203.0.113.9", "sip").await, "pass");

    rt.set_monitor(false, &NO_SESSION).await.unwrap();
    let status = rt.status().await.unwrap();
    assert!(!status.monitor, "status says what is in force");
    assert_eq!(status.monitor_by, MonitorOrigin::Operator);
    assert!(!status.policy.contains("MONITOR"), "{}", status.policy);
    assert!(!s.kernel_monitor());
    assert_eq!(verdict(rt, "203.0.113.9", "sip").await, "drop");

    // The file no longer sets `monitor`: the runtime's switch stays.
    s.write("sipguard.toml", POLICY);
    rt.set_monitor(true, &NO_SESSION).await.unwrap();
    let switched = rt.reload(&NO_SESSION).await.unwrap();
    assert!(switched.monitor.on && switched.monitor.kept, "{switched:?}");
    assert!(s.kernel_monitor());

    // The file sets it: the file wins, and says so.
    s.write(
        "sipguard.toml",
        &format!("[guard]\nmonitor = false\n{POLICY}"),
    );
    let switched = rt.reload(&NO_SESSION).await.unwrap();
    assert!(
        !switched.monitor.on && !switched.monitor.kept,
        "{switched:?}"
    );
    assert!(!s.kernel_monitor());
    let status = rt.status().await.unwrap();
    assert!(!status.monitor && status.monitor_by == MonitorOrigin::Config);
}

#[tokio::test]
async fn a_reload_switches_policy_slots_and_a_broken_file_changes_nothing() {
    let s = Site::new("reload", POLICY);
    let rt = &s.runtime;
    let slot = s.maps.state().settings.policy_slot;
    s.write("sipguard.toml", "[services.ami]\naccess = \"open\"\n");
    rt.reload(&NO_SESSION).await.unwrap();
    {
        let state = s.maps.state();
        assert_eq!(state.settings.policy_slot, slot ^ 1, "one settings write");
        assert_ne!(state.slots[0], state.slots[1], "the old slot is kept whole");
    }
    assert_eq!(verdict(rt, "192.0.2.50", "ami").await, "pass");
    assert!(
        s.kernel_nets(NetList::Deny).is_empty(),
        "stale entries removed"
    );

    s.write("sipguard.toml", "[guard]\ndefault_policy = \"sometimes\"\n");
    let bad = rt.reload(&NO_SESSION).await.unwrap_err();
    assert!(matches!(bad, Error::BadConfig(_)), "{bad}");
    assert_eq!(s.maps.state().settings.policy_slot, slot ^ 1);
    assert_eq!(verdict(rt, "192.0.2.50", "ami").await, "pass");
}

#[tokio::test]
async fn a_policy_the_maps_refuse_puts_the_old_one_back() {
    let s = Site::new("refuse", POLICY);
    let rt = &s.runtime;
    let candidate = s.write("candidate.toml", "[services.ami]\naccess = \"open\"\n");
    s.maps.state().refuse_policy = true;
    let e = rt.apply(candidate, None, &NO_SESSION).await.unwrap_err();
    assert!(
        matches!(&e, Error::Failed(m) if m.contains("writing the new policy failed")),
        "{e}"
    );
    assert_eq!(verdict(rt, "192.0.2.50", "ami").await, "drop");
    assert!(rt.status().await.unwrap().source.ends_with("sipguard.toml"));
}

#[tokio::test(start_paused = true)]
async fn an_apply_is_confirmed_or_reverts_keeping_runtime_changes() {
    let s = Site::new("switch", POLICY);
    let rt = &s.runtime;
    let candidate = s.write("candidate.toml", "[services.ami]\naccess = \"open\"\n");
    assert!(matches!(rt.confirm().await, Err(Error::NotFound(_))));

    // Confirmed: it stays.
    rt.apply(
        candidate.clone(),
        Some(Duration::from_secs(60)),
        &NO_SESSION,
    )
    .await
    .unwrap();
    assert_eq!(verdict(rt, "192.0.2.50", "ami").await, "pass");
    let awaiting = rt.status().await.unwrap().awaiting_confirmation_seconds;
    assert!(matches!(awaiting, Some(59..=60)), "{awaiting:?}");
    let busy = rt.reload(&NO_SESSION).await.unwrap_err();
    assert!(
        busy.to_string().contains("awaits `sipguard confirm`"),
        "{busy}"
    );
    assert!(rt
        .confirm()
        .await
        .unwrap()
        .confirmed
        .ends_with("candidate.toml"));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(verdict(rt, "192.0.2.50", "ami").await, "pass", "confirmed");

    // Back to the first file, then an apply nobody confirms: the timer
    // reverts it, keeping the list change and the monitor switch made since.
    rt.apply(s.dir.join("sipguard.toml"), None, &NO_SESSION)
        .await
        .unwrap();
    rt.apply(candidate, Some(Duration::from_secs(30)), &NO_SESSION)
        .await
        .unwrap();
    rt.list_add(NetList::Deny, entry("192.0.2.99/32", &[]), &NO_SESSION)
        .await
        .unwrap();
    rt.set_monitor(true, &NO_SESSION).await.unwrap();
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(verdict(rt, "192.0.2.50", "ami").await, "pass", "not yet");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = rt.status().await.unwrap();
    assert_eq!(status.awaiting_confirmation_seconds, None, "reverted");
    assert!(
        status.source.ends_with("sipguard.toml"),
        "{}",
        status.source
    );
    assert!(status.monitor && s.kernel_monitor(), "the switch is kept");
    rt.set_monitor(false, &NO_SESSION).await.unwrap();
    assert_eq!(verdict(rt, "192.0.2.50", "ami").await, "drop");
    assert!(s
        .kernel_nets(NetList::Deny)
        .contains(&"192.0.2.99/32".to_string()));
}

#[tokio::test]
async fn explain_says_what_the_maps_decide() {
    let s = Site::new("explain", POLICY);
    let rt = &s.runtime;
    let explained = rt.explain(ip("10.1.2.3")).await.unwrap();
    assert_eq!(explained.source, "10.1.2.3");
    let sip = explained
        .verdicts
        .iter()
        .find(|v| v.service == "sip")
        .unwrap();
    assert!(sip.passes());
    let ami = explained
        .verdicts
        .iter()
        .find(|v| v.service == "ami")
        .unwrap();
    assert_eq!(ami.verdict, "drop", "allowed for sip only: {ami:?}");
    assert_eq!(verdict(rt, "203.0.113.9", "sip").await, "drop");
    let denied = rt.explain(ip("203.0.113.9")).await.unwrap();
    assert!(
        denied
            .verdicts
            .iter()
            .all(|v| v.because.contains("203.0.113.0/24")),
        "{denied:?}"
    );
}

#[tokio::test]
async fn status_reports_what_is_in_force() {
    let s = Site::new("status", POLICY);
    let rt = &s.runtime;
    s.maps.state().verdicts[guard_common::Reason::Denied as usize].packets = 7;
    let status = rt.status().await.unwrap();
    assert_eq!(status.iface, "test0");
    assert_eq!(status.bans_active, 0);
    assert!(!status.monitor);
    assert_eq!(status.awaiting_confirmation_seconds, None);
    assert_eq!(status.packets["denied"], 7);
}

#[tokio::test]
async fn fleet_bans_spare_allowed_networks_and_local_bans() {
    let s = Site::new("fleet", POLICY);
    let rt = &s.runtime;
    rt.ban_add(ban("192.0.2.40", None, Some("mine")), &NO_SESSION)
        .await
        .unwrap();
    let fleet = |source: &str| {
        FleetChange::Ban(FleetBan {
            key: rt.source_key(ip(source)),
            expires_ns: clock::monotonic_ns() + 3_600_000_000_000,
            scenario: "crowdsecurity/ssh-bf".into(),
            origin: "CAPI".into(),
        })
    };
    let applied = rt
        .fleet_bans(
            &[fleet("10.1.9.9"), fleet("192.0.2.40"), fleet("192.0.2.41")],
            true,
        )
        .await;
    assert_eq!(
        (applied.enforced, applied.allowlisted, applied.kept_local),
        (1, 1, 1)
    );
    assert_eq!(rt.fleet_bans_in_force().await.unwrap().len(), 1);
    let rows = rt.bans().await.unwrap();
    let theirs = rows.iter().find(|r| r.source == "192.0.2.41").unwrap();
    assert_eq!(theirs.reason, "crowdsec");
    assert!(
        theirs.detail.contains("ssh-bf (origin CAPI)"),
        "{}",
        theirs.detail
    );
    assert_eq!(
        rows.iter()
            .find(|r| r.source == "192.0.2.40")
            .unwrap()
            .reason,
        "manual"
    );

    // A lift touches only the fleet's own bans.
    let lift = |source: &str| FleetChange::Lift(rt.source_key(ip(source)));
    let applied = rt
        .fleet_bans(&[lift("192.0.2.40"), lift("192.0.2.41")], true)
        .await;
    assert_eq!(applied.lifted, 1);
    let left: Vec<String> = rt
        .bans()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.source)
        .collect();
    assert_eq!(left, ["192.0.2.40"]);
    let key = SourceKey::from_ipv4([192, 0, 2, 40]);
    let kept = s.maps.state().bans[&key];
    assert_eq!(
        (kept.reason, kept.rule, kept.expires_ns),
        (BanReason::Manual as u16, NO_RULE, BAN_FOREVER)
    );
}

/// A full sync (over a thousand decisions: the peers are read once, and
/// new bans take one map call) spares a learned peer and a local ban, and
/// renews a crowdsec ban already in force without restarting it.
#[tokio::test]
async fn a_large_fleet_sync_spares_peers_and_local_bans() {
    let s = Site::new("fleetsync", POLICY);
    let rt = &s.runtime;
    rt.ban_add(ban("192.0.2.40", None, Some("mine")), &NO_SESSION)
        .await
        .unwrap();
    let peer = rt.source_key(ip("198.51.100.7"));
    s.maps.state().peers.insert(
        peer,
        guard_common::PeerEntry {
            expires_ns: clock::monotonic_ns() + 3_600_000_000_000,
            live_users: 3,
            kind: guard_common::PeerKind::Registered as u16,
            _pad: 0,
        },
    );
    let hour = clock::monotonic_ns() + 3_600_000_000_000;
    let fleet = |key: SourceKey, expires_ns: u64| {
        FleetChange::Ban(FleetBan {
            key,
            expires_ns,
            scenario: "crowdsecurity/sip-bf".into(),
            origin: "CAPI".into(),
        })
    };
    let others = |expires_ns: u64| -> Vec<FleetChange> {
        (0..1500u32)
            .map(|i| {
                fleet(
                    SourceKey::from_ipv4((0x6440_0000 + 2 * i).to_be_bytes()),
                    expires_ns,
                )
            })
            .collect()
    };
    let mut changes = others(hour);
    changes.push(fleet(peer, hour));
    changes.push(fleet(rt.source_key(ip("192.0.2.40")), hour));
    let applied = rt.fleet_bans(&changes, false).await;
    assert_eq!(
        (applied.enforced, applied.peers_spared, applied.kept_local),
        (1500, 1, 1)
    );
    assert!(!s.maps.state().bans.contains_key(&peer));
    let first = SourceKey::from_ipv4([100, 64, 0, 0]);
    let made = s.maps.state().bans[&first];
    assert_eq!(made.reason, BanReason::Crowdsec as u16);

    // The next full sync extends them; each keeps its start.
    let applied = rt.fleet_bans(&others(hour + 60_000_000_000), false).await;
    assert_eq!(applied.enforced, 1500);
    let renewed = s.maps.state().bans[&first];
    assert_eq!(renewed.created_ns, made.created_ns);
    assert_eq!(renewed.expires_ns, hour + 60_000_000_000);
}

/// Over the control protocol, a network with host bits is refused naming
/// the masked network, unless the request asks for `normalize`; what is
/// stored and removed is the one canonical form.
#[tokio::test]
async fn control_requests_with_host_bits_are_refused_unless_normalized() {
    use crate::control::{
        protocol::{Envelope, ErrorKind, Reply, Request},
        server::dispatch,
    };
    let s = Site::new("hostbits", POLICY);
    let call = |request: Request| {
        let envelope = Envelope {
            request,
            force: false,
            session: None,
        };
        dispatch(&s.runtime, envelope)
    };
    let given = || "10.98.0.77/24".parse().unwrap();
    let add = |normalize| Request::DenyAdd {
        cidr: given(),
        comment: None,
        normalize,
    };
    let remove = |normalize| Request::DenyRemove {
        cidr: given(),
        normalize,
    };
    for request in [
        add(false),
        remove(false),
        Request::AllowAdd {
            cidr: given(),
            services: Vec::new(),
            comment: None,
            normalize: false,
        },
        Request::AllowRemove {
            cidr: given(),
            normalize: false,
        },
    ] {
        let refused = call(request.clone()).await.unwrap_err();
        assert_eq!(refused.kind, ErrorKind::BadRequest, "{request:?}");
        assert_eq!(
            refused.message,
            "10.98.0.77/24 has host bits set; the network is 10.98.0.0/24 \
             (give that, or add --normalize)"
        );
    }
    assert_eq!(
        s.kernel_nets(NetList::Deny),
        ["203.0.113.0/24"],
        "nothing changed"
    );

    let Reply::ListChanged(added) = call(add(true)).await.unwrap() else {
        panic!("not a list change");
    };
    assert_eq!(added.cidr, "10.98.0.0/24");
    let stored: Vec<String> = s
        .runtime
        .list(NetList::Deny)
        .await
        .into_iter()
        .map(|e| e.cidr)
        .collect();
    assert!(stored.contains(&"10.98.0.0/24".to_string()), "{stored:?}");
    assert!(s
        .kernel_nets(NetList::Deny)
        .contains(&"10.98.0.0/24".to_string()));
    // The canonical form, given exactly, removes it.
    let exact = Request::DenyRemove {
        cidr: "10.98.0.0/24".parse().unwrap(),
        normalize: false,
    };
    assert!(call(exact).await.is_ok());
    assert_eq!(s.kernel_nets(NetList::Deny), ["203.0.113.0/24"]);
    assert!(call(add(true)).await.is_ok());
    assert!(call(remove(true)).await.is_ok(), "normalized removal");
}

#[tokio::test]
async fn fleet_ranges_are_held_saved_restored_and_spare_what_is_trusted() {
    use super::fleet_set::{Holder, RangeChange};
    let toml = format!("{POLICY}\n[sip_auth]\nwhitelist = [\"198.51.100.64/26\"]\n");
    let s = Site::new("fleet-set", &toml);
    let rt = &s.runtime;
    let hold = |net: &str| RangeChange::Hold {
        net: net.parse().unwrap(),
        detail: "test/range (origin cscli)".into(),
    };
    let crowdsec = Holder::Crowdsec;
    let applied = rt
        .fleet_ranges(
            &crowdsec,
            &[
                hold("192.0.2.0/24"),
                hold("10.0.0.0/8"),
                hold("198.51.100.0/24"),
            ],
            false,
            true,
        )
        .await;
    // 10.0.0.0/8 holds the allow-listed 10.1.0.0/16: in force, counted;
    // 198.51.100.0/24 holds whitelisted sources the kernel cannot spare.
    assert_eq!((applied.enforced, applied.allowlisted), (2, 2));
    let nets =
        |s: &Site| -> Vec<String> { s.maps.state().fleet.keys().map(|n| n.to_string()).collect() };
    assert_eq!(nets(&s), ["10.0.0.0/8", "192.0.2.0/24"]);
    assert_eq!(verdict(rt, "192.0.2.9", "sip").await, "drop");
    assert_eq!(verdict(rt, "10.9.9.9", "sip").await, "drop");
    assert_eq!(verdict(rt, "10.1.2.3", "sip").await, "pass");
    let why = rt.explain(ip("192.0.2.9")).await.unwrap();
    assert!(
        why.verdicts[0]
            .because
            .contains("192.0.2.0/24 (crowdsec test/range (origin cscli))"),
        "{why:?}"
    );

    // A feed holds one of them too: it stays until both let go.
    let feed = Holder::Feed("voipbl".into());
    rt.fleet_ranges(&feed, &[hold("192.0.2.0/24")], true, true)
        .await;
    let applied = rt
        .fleet_ranges(&crowdsec, &[hold("10.0.0.0/8")], true, true)
        .await;
    assert_eq!(applied.lifted, 0, "the feed still holds 192.0.2.0/24");
    assert_eq!(nets(&s), ["10.0.0.0/8", "192.0.2.0/24"]);
    rt.fleet_ranges(&feed, &[], true, true).await;
    assert_eq!(nets(&s), ["10.0.0.0/8"]);

    // Saved on every change: a new start puts it back, without holders
    // no longer configured, and clears what the kernel held besides.
    rt.fleet_ranges(&feed, &[hold("192.0.2.0/24")], true, true)
        .await;
    let saved = StateDir::open(&s.dir.join("state"))
        .unwrap()
        .load_fleet(1000)
        .unwrap();
    assert_eq!(saved.len(), 2);
    let again = Site::new("fleet-set-2", &toml);
    again
        .maps
        .state()
        .fleet
        .insert("203.0.113.0/24".parse().unwrap(), ());
    again
        .runtime
        .restore_fleet(saved, |h| *h == Holder::Crowdsec)
        .await
        .unwrap();
    assert_eq!(nets(&again), ["10.0.0.0/8"]);
}

#[tokio::test]
async fn a_full_fleet_deny_set_refuses_and_says_so() {
    use super::fleet_set::{Holder, RangeChange};
    let s = Site::new("fleet-full", POLICY);
    s.maps.state().fleet_capacity = Some(1);
    let hold = |net: &str| RangeChange::Hold {
        net: net.parse().unwrap(),
        detail: String::new(),
    };
    let applied = s
        .runtime
        .fleet_ranges(
            &Holder::Crowdsec,
            &[hold("192.0.2.0/24"), hold("198.51.100.0/24")],
            true,
            true,
        )
        .await;
    assert_eq!(applied.enforced, 1);
    assert_eq!(s.runtime.fleet_len().await, 1);
    // The operator's deny list is another map: untouched.
    assert_eq!(s.kernel_nets(NetList::Deny), ["203.0.113.0/24"]);
}

#[tokio::test]
async fn learned_peers_reach_the_peer_map_on_the_kernels_clock() {
    use crate::sip::peers::{PeerChange, PeerFacts};
    use guard_common::PeerKind;
    let s = Site::new("peers", POLICY);
    let office = ip("198.51.100.20");
    let before_ns = crate::clock::monotonic_ns();
    let facts = PeerFacts {
        kind: PeerKind::Registered,
        live_users: 12,
        until: std::time::Instant::now() + Duration::from_secs(120),
    };
    s.runtime
        .apply_peers(&[PeerChange {
            source: office,
            entry: Some(facts),
            users: vec!["101".into()],
        }])
        .await;
    let key = s.runtime.source_key(office);
    let entry = s
        .maps
        .state()
        .peers
        .get(&key)
        .copied()
        .expect("a peer entry");
    assert_eq!(entry.live_users, 12);
    assert_eq!(entry.kind, PeerKind::Registered as u16);
    let left = entry.expires_ns - before_ns;
    assert!(
        (119_000_000_000..=121_000_000_000).contains(&left),
        "{left}"
    );
    // Gone from the book: gone from the map (twice changes nothing).
    for _ in 0..2 {
        s.runtime
            .apply_peers(&[PeerChange {
                source: office,
                entry: None,
                users: Vec::new(),
            }])
            .await;
        assert!(s.maps.state().peers.is_empty());
    }
}

fn office_peer(users: u32, left: Duration) -> crate::sip::peers::PeerChange {
    use crate::sip::peers::{PeerChange, PeerFacts};
    PeerChange {
        source: ip("198.51.100.20"),
        entry: Some(PeerFacts {
            kind: guard_common::PeerKind::Registered,
            live_users: users,
            until: std::time::Instant::now() + left,
        }),
        users: (0..users.min(3)).map(|n| format!("{}", 101 + n)).collect(),
    }
}

/// A restart (or a reboot) cannot ban an office: its peers are saved in
/// the state directory and come back with the time they had left, into a
/// new tracker and so into the kernel's peer map.
#[tokio::test]
async fn learned_peers_are_saved_and_restored_with_their_remaining_time() {
    use crate::sip::peers::PeerBook;
    let s = Site::new("peers-saved", POLICY);
    s.runtime
        .apply_peers(&[office_peer(12, Duration::from_secs(600))])
        .await;
    s.runtime.save_peers(false);
    let state = StateDir::open(&s.dir.join("state")).unwrap();
    let saved = state.load_peers(1000).unwrap();
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(
        (saved[0].kind.as_str(), saved[0].live_users),
        ("registered", 12)
    );
    assert_eq!(saved[0].users, ["101", "102", "103"]);
    let left = saved[0].expires_unix - crate::state::unix_now();
    assert!((599..=601).contains(&left), "{left}");

    // The next run: a new book, a new runtime over empty maps.
    let mut book = PeerBook::new(100, Duration::from_secs(600));
    assert_eq!(super::peers::restore_peers(&mut book, &saved), 1);
    let next = Site::new("peers-restored", POLICY);
    let before_ns = clock::monotonic_ns();
    next.runtime
        .apply_peers(&book.take_changes(std::time::Instant::now()))
        .await;
    let key = next.runtime.source_key(ip("198.51.100.20"));
    let entry = *next.maps.state().peers.get(&key).expect("restored");
    assert_eq!(entry.live_users, 12);
    let left_ns = entry.expires_ns - before_ns;
    assert!(
        (598_000_000_000..=602_000_000_000).contains(&left_ns),
        "{left_ns}"
    );
    // A named user re-registering replaces its restored registration.
    book.registered(std::time::Instant::now(), ip("198.51.100.20"), b"101", 600);
    let changes = book.take_changes(std::time::Instant::now());
    assert_eq!(changes[0].entry.unwrap().live_users, 12);

    // Lapsed peers are not restored; nor is an unknown kind.
    let mut lapsed = saved.clone();
    lapsed[0].expires_unix = crate::state::unix_now();
    let mut odd = saved.clone();
    odd[0].kind = "friend".into();
    let mut book = PeerBook::new(10, Duration::from_secs(600));
    assert_eq!(super::peers::restore_peers(&mut book, &lapsed), 0);
    assert_eq!(super::peers::restore_peers(&mut book, &odd), 0);
}

/// Issue 13: a CrowdSec IP decision on a learned peer is not applied
/// (counted and logged); a range decision is applied around it (the XDP
/// program spares the peer, see the verdict table).
#[tokio::test]
async fn fleet_decisions_spare_learned_peers() {
    use crate::runtime::fleet_set::{Holder, RangeChange};
    let s = Site::new("fleet-peers", POLICY);
    let rt = &s.runtime;
    rt.apply_peers(&[office_peer(3, Duration::from_secs(600))])
        .await;
    let decision = |source: &str| {
        FleetChange::Ban(FleetBan {
            key: rt.source_key(ip(source)),
            expires_ns: clock::monotonic_ns() + 3_600_000_000_000,
            scenario: "crowdsecurity/sip-bf".into(),
            origin: "CAPI".into(),
        })
    };
    let applied = rt
        .fleet_bans(
            &[decision("198.51.100.20"), decision("198.51.100.21")],
            true,
        )
        .await;
    assert_eq!((applied.enforced, applied.peers_spared), (1, 1));
    let office = rt.source_key(ip("198.51.100.20"));
    assert!(!s.maps.state().bans.contains_key(&office));
    let hold = |holder: Holder, net: &str| {
        let change = RangeChange::Hold {
            net: net.parse().unwrap(),
            detail: "crowdsecurity/sip-bf".into(),
        };
        async move { rt.fleet_ranges(&holder, &[change], true, true).await }
    };
    let applied = hold(Holder::Crowdsec, "198.51.100.0/24").await;
    assert_eq!(applied.peers_spared, 1);
    assert_eq!(rt.fleet_len().await, 1, "the range is applied");
    // Both reach the metrics, under the source that named the peer.
    let spared = |origin: &str, source: &str| {
        rt.counters()
            .fleet_peers_spared
            .get_or_create(&crate::metrics::FleetSourceLabels {
                origin: origin.into(),
                source: source.into(),
            })
            .get()
    };
    assert_eq!(spared("crowdsec", "crowdsec"), 2);
    let applied = hold(Holder::Feed("voipbl".into()), "198.51.100.16/28").await;
    assert_eq!(applied.peers_spared, 1);
    assert_eq!(spared("feed", "voipbl"), 1);
}

/// A ban's log line names the live registrations it cut.
#[tokio::test]
async fn a_ban_names_the_registrations_it_cuts() {
    let s = Site::new("peers-cut", POLICY);
    let rt = &s.runtime;
    let key = rt.source_key(ip("198.51.100.20"));
    assert_eq!(rt.cut_registrations(&key), "");
    rt.apply_peers(&[office_peer(5, Duration::from_secs(600))])
        .await;
    assert_eq!(
        rt.cut_registrations(&key),
        "; cut 5 live registrations: 101, 102, 103 and 2 more"
    );
    rt.apply_peers(&[office_peer(1, Duration::from_secs(600))])
        .await;
    assert_eq!(rt.cut_registrations(&key), "; cut 1 live registration: 101");
}

#[tokio::test]
async fn peers_and_explain_read_the_peer_map_and_the_rate_windows() {
    use guard_common::{rate::first_packet, PeerEntry, PeerKind, RateKey, RateState};
    let s = Site::new("peer-rows", POLICY);
    let rt = &s.runtime;
    let now = clock::monotonic_ns();
    let office = rt.source_key(ip("198.51.100.20"));
    let provider = rt.source_key(ip("192.0.2.9"));
    let lapsed = rt.source_key(ip("192.0.2.10"));
    let entry = |kind: PeerKind, live_users, expires_ns| PeerEntry {
        expires_ns,
        live_users,
        kind: kind as u16,
        _pad: 0,
    };
    let slot_ns = rt.policy().await.live.compiled.rules[1].slot_ns;
    {
        let mut state = s.maps.state();
        let peers = &mut state.peers;
        peers.insert(
            office,
            entry(PeerKind::Registered, 12, now + 300_000_000_000),
        );
        peers.insert(
            provider,
            entry(PeerKind::Provider, 0, now + 3_600_000_000_000),
        );
        peers.insert(lapsed, entry(PeerKind::Registered, 3, now - 1));
        // 61 packets in the 40-per-2s rule's window (rule 1, lane 1).
        let mut window = first_packet(now, slot_ns);
        for slot in window.slots.iter_mut().filter(|s| **s != 0) {
            *slot += 60;
        }
        let mut windows = RateState::default();
        windows.windows[1] = window;
        let key = RateKey {
            source: office,
            group: 0,
        };
        state.windows.insert(key, windows);
    }

    let rows = rt.peer_rows().await.unwrap();
    let sources: Vec<&str> = rows.iter().map(|r| r.source.as_str()).collect();
    assert_eq!(
        sources,
        ["192.0.2.9", "198.51.100.20"],
        "the lapsed one is left out"
    );
    let (provider, office) = (&rows[0], &rows[1]);
    assert_eq!((provider.kind.as_str(), provider.users), ("provider", 0));
    assert_eq!(
        provider.budget_factor, 200,
        "a provider's budget is the cap"
    );
    assert_eq!(provider.packets[1].budget, 40 * 200);
    assert!(provider.packets.iter().all(|r| r.counted == 0));
    assert_eq!((office.kind.as_str(), office.users), ("registered", 12));
    assert_eq!(office.budget_factor, 24, "12 users x factor 2");
    assert!((299..=300).contains(&office.expires_seconds), "{office:?}");
    assert_eq!(office.packets[1].rule, "sip-udp-40-per-2s");
    assert_eq!(
        (office.packets[1].counted, office.packets[1].budget),
        (61, 960)
    );

    let explained = rt.explain(ip("198.51.100.20")).await.unwrap();
    let peer = explained.peer.as_ref().expect("a learned peer");
    // The same entry and counts as `peers` (a second may have gone by).
    assert_eq!(
        (&peer.source, peer.users, peer.budget_factor, &peer.packets),
        (&office.source, 12, 24, &office.packets)
    );
    assert!(
        peer.summary()
            .starts_with("learned peer: 12 live registrations, rate budget x24"),
        "{}",
        peer.summary()
    );
    let sip = explained
        .verdicts
        .iter()
        .find(|v| v.service == "sip")
        .unwrap();
    assert_eq!(sip.verdict, "pass");
    assert!(
        sip.because.contains("within its learned-peer budget"),
        "{sip:?}"
    );
    assert!(rt.explain(ip("192.0.2.10")).await.unwrap().peer.is_none());
    let provider_words = rt
        .explain(ip("192.0.2.9"))
        .await
        .unwrap()
        .peer
        .unwrap()
        .summary();
    assert!(
        provider_words.starts_with("learned peer: the PBX's provider"),
        "{provider_words}"
    );
}
