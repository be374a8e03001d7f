//! `status`, and monitor mode: what is in force now.
use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use guard_common::Reason;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    safety::{After, LockoutCheck},
    Error, Monitor, MonitorOrigin, Result, Runtime,
};
use crate::clock;

/// The running daemon, as `sipguard status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub iface: String,
    pub xdp_mode: String,
    pub program_id: u32,
    /// The pin directory; None: the guard stops with the daemon.
    pub pinned_at: Option<PathBuf>,
    /// Why the pins will not outlive the daemon after all (a private bpffs).
    #[serde(default)]
    pub pins_warning: Option<String>,
    /// False while the interface is gone (the maps are kept; the guard
    /// re-attaches when an interface of that name comes back).
    #[serde(default = "attached_by_default")]
    pub attached: bool,
    pub state_dir: PathBuf,
    /// Saves to the state directory that failed since the start.
    #[serde(default)]
    pub state_save_failures: u64,
    pub uptime_seconds: u64,
    /// Where the policy came from.
    pub source: String,
    /// The policy in force, in a line.
    pub policy: String,
    /// Monitor mode in force (nothing is dropped).
    pub monitor: bool,
    /// Who set monitor mode.
    pub monitor_by: MonitorOrigin,
    pub bans_active: u64,
    /// An applied change reverts in this many seconds unless confirmed.
    pub awaiting_confirmation_seconds: Option<u64>,
    /// Packets by verdict reason.
    pub packets: BTreeMap<String, u64>,
    /// The CrowdSec LAPI and each feed: last sync, failures, entries.
    #[serde(default)]
    pub fleet: Vec<crate::fleet::health::SourceHealth>,
}

fn attached_by_default() -> bool {
    true
}

/// What `monitor on|off` left in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MonitorSwitch {
    pub monitor: bool,
}

impl Runtime {
    pub async fn status(&self) -> Result<Status> {
        let policy = self.policy().await;
        let awaiting = policy.pending.as_ref().map(|p| {
            p.deadline
                .saturating_duration_since(Instant::now())
                .as_secs()
        });
        let maps = self.maps().await;
        let totals = maps.verdicts()?;
        let bans_active = maps.active_bans(clock::monotonic_ns())?.len() as u64;
        drop(maps);
        let packets = Reason::ALL
            .iter()
            .map(|r| (r.name().to_string(), totals[*r as usize].packets))
            .collect();
        Ok(Status {
            iface: self.attached.iface.clone(),
            xdp_mode: self.attached.xdp_mode.clone(),
            program_id: self.attached.program_id,
            pinned_at: self.attached.pinned_at.clone(),
            pins_warning: self.attached.pins_warning.clone(),
            attached: self.counters().attached.get(),
            state_dir: self.state.path().to_path_buf(),
            state_save_failures: self.state.save_failures(),
            uptime_seconds: self.started.elapsed().as_secs(),
            source: policy.live.source.clone(),
            policy: policy.live.summary(),
            monitor: policy.monitor.on,
            monitor_by: policy.monitor.by,
            bans_active,
            awaiting_confirmation_seconds: awaiting,
            packets,
            fleet: self.counters().fleet_health.rows(),
        })
    }

    /// Switches monitor mode (count every verdict, drop nothing) on or off.
    /// The runtime owns the switch: a later `reload` keeps it unless the
    /// file sets `monitor`.
    pub async fn set_monitor(&self, on: bool, lockout: &LockoutCheck) -> Result<MonitorSwitch> {
        let mut policy = self.policy().await;
        let mut maps = self.maps().await;
        let after = After {
            policy: &policy.live,
            new_ban: None,
            monitor: Some(on),
        };
        lockout
            .check(&policy.live, &**maps, after)
            .map_err(Error::Refused)?;
        let mut settings = maps.settings()?;
        settings.monitor = on as u8;
        // One array slot: the next packet sees either the old or the new value.
        maps.write_settings(settings)?;
        drop(maps);
        policy.monitor = Monitor {
            on,
            by: MonitorOrigin::Operator,
        };
        policy.live.set_monitor(on);
        if on {
            warn!("monitor mode ON by the operator: every verdict is counted, nothing is dropped");
        } else {
            info!("monitor mode off by the operator: verdicts are enforced");
        }
        Ok(MonitorSwitch { monitor: on })
    }
}

impl Runtime {
    /// Logs the packets by verdict (at stop).
    pub async fn log_totals(&self) {
        match self.maps().await.verdicts() {
            Ok(totals) => {
                let line: Vec<String> = Reason::ALL
                    .iter()
                    .zip(totals.iter())
                    .filter(|(_, c)| c.packets > 0)
                    .map(|(reason, c)| format!("{}={}", reason.name(), c.packets))
                    .collect();
                let line = if line.is_empty() {
                    "none".into()
                } else {
                    line.join(" ")
                };
                info!("packets by verdict: {line}");
            }
            Err(e) => warn!("reading counters failed: {e:#}"),
        }
    }
}
