//! Switching the whole policy: `reload`, `apply [--confirm]`, `confirm`,
//! and the revert of an unconfirmed apply.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{Answer, ControlState, Response};
use crate::{
    clock,
    kernel::maps::KernelMaps,
    policy::config::Config,
    policy::live::{ConfigSource, LivePolicy},
    runtime::safety::{After, LockoutCheck},
};

/// An `apply --confirm` waiting for `confirm`: what to go back to.
pub(super) struct Pending {
    id: u64,
    config: Config,
    name: String,
    source: ConfigSource,
    pub(super) deadline: Instant,
}

impl ControlState {
    /// Replaces the policy with the config from `source`. A broken config,
    /// or one that cuts the operator's SSH session, changes nothing. With
    /// `confirm`, the old policy comes back unless `confirm` arrives in time.
    pub(super) async fn switch_policy(
        self: &Arc<Self>,
        source: ConfigSource,
        confirm: Option<Duration>,
        lockout: &LockoutCheck,
    ) -> Answer {
        let mut pending = self.pending.lock().await;
        if let Some(p) = pending.as_ref() {
            return Err(Response::error(format!(
                "an applied change awaits `sipguard confirm` ({} s left); confirm it or let it revert first",
                p.deadline.saturating_duration_since(Instant::now()).as_secs()
            )));
        }
        let (config, name) = source.load().map_err(|e| Response {
            bad_config: true,
            ..Response::error(format!(
                "{e}\nnothing changed: the old policy stays in force"
            ))
        })?;
        let mut policy = self.policy.lock().await;
        let candidate = LivePolicy::build(config, name.clone(), policy.changes.clone());
        let restart = needs_restart(&policy, &candidate);
        {
            let mut maps = self.maps.lock().await;
            let after = After {
                policy: &candidate,
                new_ban: None,
                monitor: Some(candidate.config.guard.monitor),
            };
            lockout
                .check(&policy, &maps, after)
                .map_err(Response::refused)?;
            install(&mut maps, &policy, &candidate)?;
        }
        let summary = candidate.summary();
        let previous = std::mem::replace(&mut *policy, candidate);
        let previous_source = std::mem::replace(&mut *self.source.lock().await, source);
        for what in &restart {
            warn!("{what} changed: that takes effect at the next restart");
        }
        let confirm_by = confirm.map(|wait| {
            let id = clock::monotonic_ns();
            *pending = Some(Pending {
                id,
                config: previous.config,
                name: previous.source,
                source: previous_source,
                deadline: Instant::now() + wait,
            });
            let state = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                state.revert(id).await;
            });
            wait.as_secs()
        });
        match confirm_by {
            Some(s) => warn!(
                "policy from {name} applied: {summary}; it reverts in {s} s unless `sipguard confirm`"
            ),
            None => info!("policy reloaded from {name}: {summary}"),
        }
        Ok(Response::ok(serde_json::json!({
            "source": name,
            "policy": summary,
            "restart_needed": restart,
            "confirm_within_seconds": confirm_by,
        })))
    }

    /// The `apply --confirm` timer: back to the old policy, keeping the
    /// runtime list changes made since.
    async fn revert(&self, id: u64) {
        let mut pending = self.pending.lock().await;
        if pending.as_ref().map(|p| p.id) != Some(id) {
            return; // confirmed
        }
        let Some(old) = pending.take() else { return };
        let mut policy = self.policy.lock().await;
        let restored = LivePolicy::build(old.config, old.name.clone(), policy.changes.clone());
        let mut maps = self.maps.lock().await;
        match install(&mut maps, &policy, &restored) {
            Ok(()) => {
                warn!(
                    "the applied policy was not confirmed in time: reverted to the policy from {}",
                    old.name
                );
                *policy = restored;
                *self.source.lock().await = old.source;
            }
            Err(e) => warn!(
                "reverting the unconfirmed policy failed: {}",
                e.error.unwrap_or_default()
            ),
        }
    }

    pub(super) async fn confirm(&self) -> Answer {
        match self.pending.lock().await.take() {
            Some(_) => {
                let policy = self.policy.lock().await;
                info!("the policy from {} is confirmed", policy.source);
                Ok(Response::ok(
                    serde_json::json!({ "confirmed": policy.source }),
                ))
            }
            None => Err(Response::not_found(
                "no applied change awaits confirmation".into(),
            )),
        }
    }
}

/// Writes `candidate` into the maps; if that fails half way, puts `current` back.
fn install(
    maps: &mut KernelMaps,
    current: &LivePolicy,
    candidate: &LivePolicy,
) -> std::result::Result<(), Response> {
    let Err(e) = maps.sync_policy(&candidate.compiled) else {
        return Ok(());
    };
    let put_back = match maps.sync_policy(&current.compiled) {
        Ok(()) => "the old policy was put back".to_string(),
        Err(e) => format!("putting the old policy back failed too: {e:#}"),
    };
    Err(Response::error(format!(
        "writing the new policy failed: {e:#}; {put_back}"
    )))
}

/// Settings a running guard cannot change (the daemon reads them at start).
fn needs_restart(current: &LivePolicy, candidate: &LivePolicy) -> Vec<String> {
    let (old, new) = (&current.config, &candidate.config);
    let mut out = Vec::new();
    if old.sip_auth != new.sip_auth {
        out.push("[sip_auth]".to_string());
    }
    if old.metrics != new.metrics {
        out.push("[metrics]".to_string());
    }
    let capacity = |c: &Config| {
        (
            c.guard.max_bans,
            c.guard.max_tracked_sources,
            c.guard.max_cidrs,
            c.guard.ipv6_ban_prefix,
        )
    };
    if capacity(old) != capacity(new) {
        out.push("guard capacities or ipv6_ban_prefix".to_string());
    }
    if current.compiled.service_names != candidate.compiled.service_names
        || current.compiled.rule_names != candidate.compiled.rule_names
    {
        out.push("metric labels (service and rule names)".to_string());
    }
    out
}
