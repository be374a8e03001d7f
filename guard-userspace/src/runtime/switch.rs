//! Switching the whole policy: `reload`, `apply [--confirm]`, `confirm`,
//! and the revert of an unconfirmed apply.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    safety::{After, LockoutCheck},
    Error, Monitor, MonitorOrigin, Result, Runtime,
};
use crate::{
    clock,
    kernel::store::MapStore,
    policy::config::Config,
    policy::live::{ConfigSource, LivePolicy},
};

/// An `apply --confirm` waiting for `confirm`: what to go back to.
pub(crate) struct Pending {
    id: u64,
    config: Config,
    name: String,
    source: ConfigSource,
    pub(crate) deadline: Instant,
}

/// What a `reload` or `apply` put in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicySwitch {
    /// Where the policy came from.
    pub source: String,
    /// The policy in a line.
    pub policy: String,
    /// Sections that change only at the next restart.
    pub restart_needed: Vec<String>,
    /// Run `sipguard confirm` within this many seconds, or it reverts.
    pub confirm_within_seconds: Option<u64>,
    pub monitor: MonitorOutcome,
    /// Why an `apply` in force will not outlive a restart (a failed save).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_saved: Option<String>,
}

/// Monitor mode after a switch, and why.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct MonitorOutcome {
    pub on: bool,
    /// True: the file does not set `monitor`, so the mode in force was kept.
    pub kept: bool,
}

/// `confirm`: the policy that stays.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Confirmed {
    pub confirmed: String,
    /// Why it will not outlive a restart (a failed save).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_saved: Option<String>,
}

/// What the runtime owns and a config file does not change: the monitor
/// mode in force (unless the file sets `monitor`) and the IPv6 ban prefix
/// (the ban map's keys are made with it).
fn in_force(mut config: Config, monitor: Monitor, ipv6_ban_prefix: u8) -> (Config, Monitor, bool) {
    let (monitor, kept) = match config.guard.monitor {
        Some(on) => (
            Monitor {
                on,
                by: MonitorOrigin::Config,
            },
            false,
        ),
        None => (monitor, true),
    };
    config.guard.monitor = Some(monitor.on);
    config.guard.ipv6_ban_prefix = ipv6_ban_prefix;
    (config, monitor, kept)
}

impl Runtime {
    /// `reload`: the config file the daemon runs with, again.
    pub async fn reload(self: &Arc<Self>, lockout: &LockoutCheck) -> Result<PolicySwitch> {
        let source = self.policy().await.source.clone();
        self.switch_policy(source, None, lockout).await
    }

    /// `apply`: another config file, reverted unless confirmed within `confirm`.
    pub async fn apply(
        self: &Arc<Self>,
        path: std::path::PathBuf,
        confirm: Option<Duration>,
        lockout: &LockoutCheck,
    ) -> Result<PolicySwitch> {
        let source = self.policy().await.source.with_path(path);
        self.switch_policy(source, confirm, lockout).await
    }

    /// Remembers a confirmed `apply` in the state directory, so that a
    /// restart puts the same policy in force; returns why not, if it failed.
    fn remember_applied(&self, source: &ConfigSource) -> Option<String> {
        let path = source.path.as_deref()?;
        let saved = self
            .state
            .save_applied(path, source.started_with.as_deref());
        saved.err().map(|e| {
            let why = format!(
                "in force, but not saved ({e:#}): a restart goes back to the --config file"
            );
            warn!("the policy from {}: {why}", path.display());
            why
        })
    }

    /// Replaces the policy with the config from `source`. A broken config,
    /// or one that cuts the operator's SSH session, changes nothing. With
    /// `confirm`, the old policy comes back unless `confirm` arrives in time.
    async fn switch_policy(
        self: &Arc<Self>,
        source: ConfigSource,
        confirm: Option<Duration>,
        lockout: &LockoutCheck,
    ) -> Result<PolicySwitch> {
        let mut state = self.policy().await;
        if let Some(p) = state.pending.as_ref() {
            return Err(Error::Failed(format!(
                "an applied change awaits `sipguard confirm` ({} s left); confirm it or let it revert first",
                p.deadline.saturating_duration_since(Instant::now()).as_secs()
            )));
        }
        // Read off the runtime: a slow file must not stall other commands.
        let reading = source.clone();
        let loaded = tokio::task::spawn_blocking(move || reading.load())
            .await
            .map_err(|e| Error::Failed(format!("reading the config failed: {e}")))?;
        let (config, name) = loaded.map_err(|e| {
            Error::BadConfig(format!(
                "{e}\nnothing changed: the old policy stays in force"
            ))
        })?;
        let mut restart = needs_restart(&state.live.config, &config);
        let (config, monitor, kept) = in_force(config, state.monitor, self.ipv6_ban_prefix);
        let candidate = LivePolicy::build(config, name.clone(), state.live.changes.clone());
        restart.extend(labels_changed(&state.live, &candidate));
        {
            let mut maps = self.maps().await;
            let after = After {
                policy: &candidate,
                new_ban: None,
                monitor: Some(monitor.on),
            };
            lockout
                .check(&state.live, &**maps, after)
                .map_err(Error::Refused)?;
            install(&mut **maps, &state.live, &candidate)?;
        }
        let summary = candidate.summary();
        let previous = std::mem::replace(&mut state.live, candidate);
        let previous_source = std::mem::replace(&mut state.source, source);
        state.monitor = monitor;
        // A switch that needs no confirmation is the one a restart keeps
        // (a reload of the same file saves nothing new).
        let not_saved = match confirm {
            None => self.remember_applied(&state.source),
            Some(_) => None,
        };
        for what in &restart {
            warn!("{what} changed: that takes effect at the next restart");
        }
        let confirm_by = confirm.map(|wait| {
            let id = clock::monotonic_ns();
            state.pending = Some(Pending {
                id,
                config: previous.config,
                name: previous.source,
                source: previous_source,
                deadline: Instant::now() + wait,
            });
            let runtime = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                runtime.revert(id).await;
            });
            wait.as_secs()
        });
        let monitor_line = match (monitor.on, kept) {
            (true, true) => "monitor mode kept on",
            (false, true) => "monitor mode kept off",
            (true, false) => "monitor mode on, as the file says",
            (false, false) => "monitor mode off, as the file says",
        };
        match confirm_by {
            Some(s) => warn!(
                "policy from {name} applied: {summary}; {monitor_line}; it reverts in {s} s unless `sipguard confirm`"
            ),
            None => info!("policy reloaded from {name}: {summary}; {monitor_line}"),
        }
        Ok(PolicySwitch {
            source: name,
            policy: summary,
            restart_needed: restart,
            confirm_within_seconds: confirm_by,
            monitor: MonitorOutcome {
                on: monitor.on,
                kept,
            },
            not_saved,
        })
    }

    /// The `apply --confirm` timer: back to the old policy, keeping the
    /// runtime list changes and the monitor mode switched since.
    async fn revert(&self, id: u64) {
        let mut state = self.policy().await;
        if state.pending.as_ref().map(|p| p.id) != Some(id) {
            return; // confirmed
        }
        let Some(old) = state.pending.take() else {
            return;
        };
        let mut config = old.config;
        config.guard.monitor = Some(state.monitor.on);
        let restored = LivePolicy::build(config, old.name.clone(), state.live.changes.clone());
        let mut maps = self.maps().await;
        match install(&mut **maps, &state.live, &restored) {
            Ok(()) => {
                warn!(
                    "the applied policy was not confirmed in time: reverted to the policy from {}",
                    old.name
                );
                state.live = restored;
                state.source = old.source;
            }
            Err(e) => warn!("reverting the unconfirmed policy failed: {e}"),
        }
    }

    pub async fn confirm(&self) -> Result<Confirmed> {
        let mut state = self.policy().await;
        if state.pending.take().is_none() {
            return Err(Error::NotFound(
                "no applied change awaits confirmation".into(),
            ));
        }
        info!("the policy from {} is confirmed", state.live.source);
        // Saved while the policy lock is held: no other switch comes between.
        let not_saved = self.remember_applied(&state.source);
        Ok(Confirmed {
            confirmed: state.live.source.clone(),
            not_saved,
        })
    }
}

/// Writes `candidate` into the maps; if that fails half way, puts `current` back.
fn install(maps: &mut dyn MapStore, current: &LivePolicy, candidate: &LivePolicy) -> Result<()> {
    let Err(e) = maps.sync_policy(&candidate.compiled) else {
        return Ok(());
    };
    let put_back = match maps.sync_policy(&current.compiled) {
        Ok(()) => "the old policy was put back".to_string(),
        Err(e) => format!("putting the old policy back failed too: {e:#}"),
    };
    Err(Error::Failed(format!(
        "writing the new policy failed: {e:#}; {put_back}"
    )))
}

/// Settings a running guard cannot change (the daemon reads them at start).
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.sip_auth != new.sip_auth {
        out.push("[sip_auth]".to_string());
    }
    if old.metrics != new.metrics {
        out.push("[metrics]".to_string());
    }
    if old.alerts != new.alerts {
        out.push("[[alerts]]".to_string());
    }
    if old.feeds != new.feeds {
        out.push("[[feeds]]".to_string());
    }
    let capacity = |c: &Config| {
        (
            c.guard.max_bans,
            c.guard.max_tracked_sources,
            c.guard.max_cidrs,
            c.guard.max_fleet_cidrs,
            c.guard.ipv6_ban_prefix,
        )
    };
    if old.peers.max_peers != new.peers.max_peers {
        out.push("peers.max_peers".to_string());
    }
    // The SIP watcher is given it at start, like [sip_auth].
    if old.peers.idle_timeout != new.peers.idle_timeout {
        out.push("peers.idle_timeout".to_string());
    }
    if capacity(old) != capacity(new) {
        out.push("guard capacities or ipv6_ban_prefix".to_string());
    }
    out
}

/// The metrics name services and rules as they were at start.
fn labels_changed(current: &LivePolicy, candidate: &LivePolicy) -> Option<String> {
    (current.compiled.service_names != candidate.compiled.service_names
        || current.compiled.rule_names != candidate.compiled.rule_names)
        .then(|| "metric labels (service and rule names)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "t.toml").unwrap()
    }

    const OPERATOR_ON: Monitor = Monitor {
        on: true,
        by: MonitorOrigin::Operator,
    };

    #[test]
    fn a_file_without_monitor_keeps_the_mode_in_force() {
        let (config, monitor, kept) = in_force(config(""), OPERATOR_ON, 64);
        assert!(kept);
        assert_eq!(monitor, OPERATOR_ON);
        assert_eq!(
            config.guard.monitor,
            Some(true),
            "the maps get the mode in force"
        );
    }

    #[test]
    fn a_file_that_sets_monitor_wins() {
        let (config, monitor, kept) =
            in_force(config("[guard]\nmonitor = false\n"), OPERATOR_ON, 64);
        assert!(!kept);
        assert_eq!(
            monitor,
            Monitor {
                on: false,
                by: MonitorOrigin::Config
            }
        );
        assert_eq!(config.guard.monitor, Some(false));
    }

    #[test]
    fn the_ipv6_ban_prefix_stays_until_restart() {
        let new = config("[guard]\nipv6_ban_prefix = 48\n");
        let old = config("");
        assert_eq!(
            needs_restart(&old, &new),
            ["guard capacities or ipv6_ban_prefix"]
        );
        let (config, _, _) = in_force(new, OPERATOR_ON, 64);
        assert_eq!(
            config.guard.ipv6_ban_prefix, 64,
            "the ban map's keys use 64"
        );
        let live = LivePolicy::build(config, "t".into(), Default::default());
        assert_eq!(live.compiled.settings.ipv6_ban_prefix, 64);
    }

    #[test]
    fn restart_only_sections_are_named() {
        let old = config("");
        let new = config("[sip_auth]\nlevel = \"strong\"\n[metrics]\nenabled = false\n");
        assert_eq!(needs_restart(&old, &new), ["[sip_auth]", "[metrics]"]);
        let new = config("[[alerts]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\n");
        assert_eq!(needs_restart(&old, &new), ["[[alerts]]"]);
        assert!(needs_restart(&old, &old).is_empty());
        let a = LivePolicy::build(old, "a".into(), Default::default());
        let b = LivePolicy::build(
            config("[services.fax]\nports = [\"9100/tcp\"]\n"),
            "b".into(),
            Default::default(),
        );
        assert!(labels_changed(&a, &b).is_some());
        assert!(labels_changed(&a, &a).is_none());
    }
}
