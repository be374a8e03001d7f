//! The running guard: one owner of its state (the map handles, the live
//! policy, the ban details, the pending confirmation, monitor mode and the
//! IPv6 ban prefix) and the operations on it. Nothing here knows of the
//! control socket or JSON: `control` translates requests into these calls.
//!
//! - `bans`: the ban lifecycle (details, add, remove, list, sweep, save, restore)
//! - `lists`: allow and deny list changes
//! - `fleet`: CrowdSec IP decisions as bans
//! - `fleet_set`: the fleet deny set (CrowdSec ranges, feeds) and its holders
//! - `peers`: the learned peers in the kernel, their saving and restoring
//! - `switch`: reload, apply, confirm and the revert of an unconfirmed apply
//! - `explain`, `status`: what an address gets, what is in force
//! - `peers`: the kernel's peer map, written from the SIP watcher's peers;
//!   `peer_rows`: read back for `sipguard peers` and `explain`
//! - `safety`: the SSH-lockout check
use crate::alerts::{Alerts, BanNotice};
use std::{path::PathBuf, sync::Arc, time::Instant};

use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::{
    kernel::store::{MapStore, MapsError},
    metrics::ControllerCounters,
    policy::live::{ConfigSource, LivePolicy},
    state::StateDir,
};

pub mod bans;
pub mod explain;
pub mod fleet;
pub mod fleet_set;
pub mod lists;
pub mod peer_rows;
pub mod peers;
pub mod safety;
pub mod status;
pub mod switch;

/// Why an operation did not happen. In every case nothing changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The config file is broken.
    #[error("{0}")]
    BadConfig(String),
    /// No such ban or list entry; nothing to confirm.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong (a zero or too long ban, an unknown
    /// service): a usage error, exit code 2.
    #[error("{0}")]
    Invalid(String),
    /// It would cut the operator's SSH session.
    #[error("{0}")]
    Refused(String),
    /// The kernel or the state directory failed, or the request cannot be
    /// done now (an unknown service, a change awaiting confirmation).
    #[error("{0}")]
    Failed(String),
}

impl From<MapsError> for Error {
    fn from(e: MapsError) -> Error {
        Error::Failed(e.to_string())
    }
}

impl From<crate::state::StateError> for Error {
    fn from(e: crate::state::StateError) -> Error {
        Error::Failed(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where and how the guard is attached, for `status`.
#[derive(Debug, Clone)]
pub struct Attached {
    pub iface: String,
    pub xdp_mode: String,
    pub program_id: u32,
    /// The pin directory, when the guard is pinned.
    pub pinned_at: Option<PathBuf>,
    /// Why the pins will not outlive the daemon after all (a private bpffs).
    pub pins_warning: Option<String>,
}

/// Monitor mode in force, and who set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Monitor {
    pub on: bool,
    pub by: MonitorOrigin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorOrigin {
    /// The config file's `monitor` (or `--monitor`).
    Config,
    /// `sipguard monitor on|off`.
    Operator,
}

/// The policy side of the state, behind one lock: what is in force, where
/// it came from, and the change awaiting confirmation.
pub(crate) struct PolicyState {
    pub(crate) live: LivePolicy,
    /// Where `reload` reads the config from.
    pub(crate) source: ConfigSource,
    pub(crate) pending: Option<switch::Pending>,
    pub(crate) monitor: Monitor,
}

/// The one owner of the running guard's state.
///
/// Lock order: `journal_lock` before `policy` before `maps` before `ban_details`
/// and `fleet` (an append takes `journal_lock` alone).
pub struct Runtime {
    policy: Mutex<PolicyState>,
    /// The kernel's maps (in unit tests, maps kept in memory).
    maps: Mutex<Box<dyn MapStore>>,
    /// The operator's words (or saved evidence) for each ban.
    ban_details: bans::BanDetails,
    /// Who holds each network of the fleet deny set.
    fleet: Mutex<fleet_set::FleetSet>,
    /// Fixed for the life of the maps (their keys are made with it).
    ipv6_ban_prefix: u8,
    counters: ControllerCounters,
    attached: Attached,
    started: Instant,
    state: StateDir,
    /// Wakes the task that saves bans to the state directory.
    bans_changed: Arc<Notify>,
    /// Keeps journal appends apart from the save that clears the journal.
    journal_lock: Mutex<()>,
    /// The `[[alerts]]` sinks, told of every ban the guard makes.
    alerts: Option<Arc<Alerts>>,
    /// The learned peers as last written to the kernel (a plain lock:
    /// held for a lookup or a copy, never across an await).
    peers: std::sync::Mutex<peers::PeerMirror>,
    /// The CrowdSec watcher, told of every ban the guard makes (set once
    /// it starts, after the runtime).
    reports: std::sync::OnceLock<crate::fleet::report::Reports>,
}

/// What the daemon hands over to the runtime after start-up.
pub struct Parts {
    pub maps: Box<dyn MapStore>,
    pub live: LivePolicy,
    pub source: ConfigSource,
    pub ban_details: std::collections::HashMap<guard_common::SourceKey, String>,
    pub counters: ControllerCounters,
    pub attached: Attached,
    pub state: StateDir,
    pub alerts: Option<Arc<Alerts>>,
}

impl Runtime {
    pub fn new(parts: Parts) -> Runtime {
        let Parts {
            maps,
            live,
            source,
            ban_details,
            counters,
            attached,
            state,
            alerts,
        } = parts;
        let monitor = Monitor {
            on: live.config.guard.monitor.unwrap_or(false),
            by: MonitorOrigin::Config,
        };
        Runtime {
            ipv6_ban_prefix: live.config.guard.ipv6_ban_prefix,
            policy: Mutex::new(PolicyState {
                live,
                source,
                pending: None,
                monitor,
            }),
            maps: Mutex::new(maps),
            ban_details: Arc::new(Mutex::new(ban_details)),
            fleet: Mutex::new(fleet_set::FleetSet::default()),
            counters,
            attached,
            started: Instant::now(),
            state,
            bans_changed: Arc::new(Notify::new()),
            journal_lock: Mutex::new(()),
            alerts,
            peers: std::sync::Mutex::default(),
            reports: std::sync::OnceLock::new(),
        }
    }

    /// From now on, every ban the guard makes is reported to the LAPI too.
    pub fn report_to(&self, reports: crate::fleet::report::Reports) {
        if self.reports.set(reports).is_err() {
            tracing::warn!("a second crowdsec watcher was not started");
        }
    }

    /// Tells the CrowdSec watcher (if any) of a ban on `key` (never waits;
    /// only the guard's own findings are reported).
    pub(crate) fn report(
        &self,
        key: &guard_common::SourceKey,
        reason: guard_common::BanReason,
        evidence: String,
        events: u32,
        expires_ns: u64,
    ) {
        if let Some(reports) = self.reports.get() {
            reports.ban(crate::fleet::report::Report::new(
                key,
                self.ipv6_ban_prefix,
                reason,
                evidence,
                events,
                expires_ns,
            ));
        }
    }

    /// Tells the alert sinks of a ban (never waits).
    pub(crate) fn alert(&self, notice: BanNotice) {
        if let Some(alerts) = &self.alerts {
            alerts.ban(notice);
        }
    }

    pub(crate) async fn policy(&self) -> MutexGuard<'_, PolicyState> {
        self.policy.lock().await
    }

    pub(crate) async fn maps(&self) -> MutexGuard<'_, Box<dyn MapStore>> {
        self.maps.lock().await
    }

    /// Holds the maps' lock as a long operation would, for tests that show
    /// who does not wait for it (the metrics, with handles of their own).
    #[doc(hidden)]
    pub fn hold_maps_lock(&self) -> MutexGuard<'_, Box<dyn MapStore>> {
        self.maps.blocking_lock()
    }

    pub fn ipv6_ban_prefix(&self) -> u8 {
        self.ipv6_ban_prefix
    }

    pub fn counters(&self) -> &ControllerCounters {
        &self.counters
    }

    /// The rate rules' names in the policy in force (a reload renumbers them).
    pub async fn rule_names(&self) -> Vec<String> {
        self.policy.lock().await.live.compiled.rule_names.clone()
    }

    /// Logs requests the kernel dropped for a SIP rule, naming the rule
    /// (and the number dialled), and how many more were left out.
    pub async fn log_denied(&self, denied: Vec<crate::sip::watcher::DeniedRequest>, left_out: u64) {
        if denied.is_empty() && left_out == 0 {
            return;
        }
        let policy = self.policy.lock().await;
        let rules = &policy.live.compiled.sip_rules;
        for d in denied {
            if d.reason == guard_common::Reason::DialDenied as u8 {
                let number = d.dialled.as_deref().unwrap_or("?");
                tracing::warn!(
                    target: "sipguard::sip_rules",
                    "dropped {} to {number} from {} (user {}): dial_denied by dial rule {}",
                    d.method,
                    d.source,
                    d.user,
                    rules.dial_name(d.rule)
                );
            } else {
                tracing::warn!(
                    target: "sipguard::sip_rules",
                    "dropped {} for user {} from {}: extension_denied by extension rule {}",
                    d.method,
                    d.user,
                    d.source,
                    rules.extension_name(d.rule)
                );
            }
        }
        if left_out > 0 {
            tracing::warn!(
                target: "sipguard::sip_rules",
                "{left_out} more requests dropped by SIP rules were not logged (at most 20 a second)"
            );
        }
    }

    /// The SIP rules in force, as the controller applies them.
    pub async fn rule_view(&self) -> std::sync::Arc<crate::policy::sip_rules::RuleView> {
        std::sync::Arc::clone(&self.policy.lock().await.live.sip_view)
    }

    /// The dial rules' names in the policy in force, by index.
    pub async fn dial_rule_names(&self) -> Vec<String> {
        let policy = self.policy.lock().await;
        let rules = &policy.live.compiled.sip_rules;
        (0..rules.dial.len() as u8)
            .map(|i| rules.dial_name(i))
            .collect()
    }

    /// How each scanner fingerprint in force is named, by number - 1.
    pub async fn scanner_names(&self) -> Vec<String> {
        self.policy.lock().await.live.compiled.scanner_names.clone()
    }

    /// Monitor mode in force.
    pub async fn monitor(&self) -> Monitor {
        self.policy.lock().await.monitor
    }
}

#[cfg(test)]
mod tests;

/// A runtime over in-memory maps for unit tests: its config is `toml` in
/// `dir/sipguard.toml` (so that `reload` re-reads it), its state directory
/// `dir/state`. Returns it, its maps and the config it read.
#[cfg(test)]
pub(crate) fn fake_runtime(
    dir: &std::path::Path,
    toml: &str,
) -> (
    Runtime,
    crate::kernel::fake::FakeMaps,
    crate::policy::config::Config,
) {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("sipguard.toml");
    std::fs::write(&file, toml).unwrap();
    let source = ConfigSource {
        path: Some(file),
        ..ConfigSource::default()
    };
    let (config, name) = source.load().unwrap();
    let live = LivePolicy::build(config.clone(), name, crate::state::ListChanges::default());
    let maps = crate::kernel::fake::FakeMaps::with_policy(&live.compiled);
    let runtime = Runtime::new(Parts {
        maps: Box::new(maps.clone()),
        live,
        source,
        ban_details: Default::default(),
        counters: ControllerCounters::default(),
        attached: Attached {
            iface: "test0".into(),
            xdp_mode: "skb".into(),
            program_id: 1,
            pinned_at: None,
            pins_warning: None,
        },
        state: StateDir::open(&dir.join("state")).unwrap(),
        alerts: None,
    });
    (runtime, maps, config)
}
