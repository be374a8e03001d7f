//! The live policy on the host: the config's lists with runtime changes,
//! what the maps get, and the facts `explain` and the lockout check read.
use ipnet::IpNet;

use super::{
    config::Config,
    live::{ConfigSource, ListChanges, ListEntry, LivePolicy, NO_SERVICE_NAME},
};
use crate::kernel::maps::NetList;

const CONFIG: &str = r#"
[services.ssh]
ports = ["22/tcp", "2222/tcp"]
[[allow]]
cidr = "10.1.0.0/16"
services = ["sip"]
comment = "office"
[[deny]]
cidr = "203.0.113.0/24"
"#;

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

fn entry(cidr: &str, services: &[&str]) -> ListEntry {
    ListEntry {
        cidr: cidr.to_string(),
        services: services.iter().map(|s| s.to_string()).collect(),
        comment: "runtime".to_string(),
        origin: "runtime".to_string(),
    }
}

fn live(changes: ListChanges) -> LivePolicy {
    LivePolicy::build(
        Config::parse(CONFIG, "t.toml").unwrap(),
        "t.toml".into(),
        changes,
    )
}

#[test]
fn runtime_changes_sit_on_top_of_the_config_lists() {
    let mut changes = ListChanges::default();
    changes.record_add(
        NetList::Allow,
        net("198.51.100.0/24"),
        entry("198.51.100.0/24", &["web"]),
    );
    changes.record_remove(NetList::Deny, net("203.0.113.0/24"), true);
    let policy = live(changes.clone());
    let allow: Vec<_> = policy.lists.allow.keys().copied().collect();
    assert_eq!(allow, [net("10.1.0.0/16"), net("198.51.100.0/24")]);
    assert!(policy.lists.deny.is_empty());
    // What the maps get: the config's entries plus the runtime's.
    assert_eq!(policy.compiled.allow.len(), 2);
    assert!(policy.compiled.deny.is_empty());
    // The config file is kept as it was.
    assert_eq!(policy.config.deny.len(), 1);

    // Adding back what was removed forgets the removal.
    changes.record_add(
        NetList::Deny,
        net("203.0.113.0/24"),
        entry("203.0.113.0/24", &[]),
    );
    assert!(changes.deny_removed.is_empty());
    assert_eq!(live(changes).lists.deny.len(), 1);
}

#[test]
fn a_runtime_entry_for_a_service_the_config_dropped_loses_it() {
    let mut changes = ListChanges::default();
    changes.record_add(
        NetList::Allow,
        net("192.0.2.0/24"),
        entry("192.0.2.0/24", &["sip", "fax"]),
    );
    let policy = live(changes);
    assert_eq!(policy.lists.allow[&net("192.0.2.0/24")].services, ["sip"]);
}

#[test]
fn the_lists_find_the_most_specific_entry() {
    let mut changes = ListChanges::default();
    changes.record_add(
        NetList::Allow,
        net("10.1.2.0/24"),
        entry("10.1.2.0/24", &["web"]),
    );
    let policy = live(changes);
    let (found, row) = policy
        .lists
        .longest_match(NetList::Allow, "10.1.2.3".parse().unwrap())
        .unwrap();
    assert_eq!(
        (found, row.services.as_slice()),
        (net("10.1.2.0/24"), &["web".to_string()][..])
    );
    let (found, _) = policy
        .lists
        .longest_match(NetList::Allow, "10.1.9.9".parse().unwrap())
        .unwrap();
    assert_eq!(found, net("10.1.0.0/16"));
    assert!(policy
        .lists
        .longest_match(NetList::Deny, "10.1.9.9".parse().unwrap())
        .is_none());
}

#[test]
fn tcp_ports_and_services_follow_the_port_table() {
    let policy = live(ListChanges::default());
    let mut ssh = policy.tcp_ports("ssh");
    ssh.sort_unstable();
    assert_eq!(ssh, [22, 2222]);
    assert_eq!(policy.tcp_service(2222), "ssh");
    assert_eq!(policy.tcp_service(5060), "sip");
    assert_eq!(policy.tcp_service(9), NO_SERVICE_NAME);
    assert!(policy.tcp_ports("nonesuch").is_empty());
}

#[test]
fn monitor_mode_is_not_part_of_the_policy_line() {
    let config = Config::parse("[guard]\nmonitor = true\n", "t.toml").unwrap();
    let mut policy = LivePolicy::build(config, "t".into(), ListChanges::default());
    assert_eq!(policy.compiled.settings.monitor, 1);
    assert!(
        !policy.summary().contains("MONITOR"),
        "{}",
        policy.summary()
    );
    policy.set_monitor(false);
    assert_eq!(policy.compiled.settings.monitor, 0);
    assert_eq!(policy.config.guard.monitor, Some(false));
}

#[test]
fn command_line_overrides_hold_across_loads() {
    let dir = std::env::temp_dir().join(format!("sipguard-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a.toml");
    std::fs::write(&file, "[sip_auth]\nlevel = \"weak\"\n").unwrap();
    let source = ConfigSource {
        path: Some(file.clone()),
        monitor: true,
        level: Some(crate::sip::tracker::LevelName::Paranoid),
        metrics_addr: None,
        started_with: None,
    };
    let (config, name) = source.load().unwrap();
    assert_eq!(name, file.display().to_string());
    assert_eq!(config.guard.monitor, Some(true));
    assert_eq!(
        config.sip_auth.level,
        crate::sip::tracker::LevelName::Paranoid
    );
    // Without --monitor, a file that does not set it leaves it unset.
    let plain = ConfigSource {
        path: Some(file),
        ..ConfigSource::default()
    };
    assert_eq!(plain.load().unwrap().0.guard.monitor, None);
    let _ = std::fs::remove_dir_all(&dir);
}
