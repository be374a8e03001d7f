//! Start-up's kernel steps: load the program, fill its maps, attach it.
use std::collections::HashMap;

use guard_common::{map_names as names, SourceKey};
use tracing::{info, warn};

use super::error::{DaemonError, Result};
use crate::{
    kernel::loader::{Attachment, Guard, XdpModeChoice},
    kernel::pins::{self, Pins},
    metrics,
    policy::compile::CompiledPolicy,
    policy::config::Config,
    policy::live::LivePolicy,
    runtime::bans,
    state::{SavedBan, StateDir},
};

/// The guard, attached, with what the runtime needs to know of it.
pub(super) struct Started {
    pub(super) guard: Guard,
    pub(super) xdp_mode: String,
    pub(super) program_id: u32,
    /// The saved details of the bans in force.
    pub(super) ban_details: HashMap<SourceKey, String>,
}

/// Loads the program, fills its maps (policy, then bans) and attaches it:
/// everything is in the maps before the program reaches the interface
/// (or, when adopted, while the old program still runs). On failure, maps
/// this run pinned are removed (they would otherwise hold memory).
pub(super) fn load_and_attach(
    live: &LivePolicy,
    saved_bans: &[SavedBan],
    pins: Option<&Pins>,
    iface: &str,
    mode: XdpModeChoice,
    state: &StateDir,
) -> Result<Started> {
    let adopting = pins.is_some_and(Pins::has_maps);
    let (mut guard, attachment, ban_details) =
        match fill_and_attach(live, saved_bans, pins, iface, mode, state) {
            Ok(started) => started,
            Err(e) => {
                if let Some(pins) = pins.filter(|_| !adopting) {
                    pins::remove_dir(&pins.maps_dir());
                }
                return Err(e);
            }
        };
    let (how, xdp_mode) = match attachment {
        Attachment::New(mode) => {
            state.save_xdp_mode(mode);
            ("attached to", mode.to_string())
        }
        Attachment::Replaced => (
            "replaced the program in the pinned link on",
            state.load_xdp_mode(),
        ),
    };
    let program_id = guard.program_id()?;
    let monitor = if live.config.guard.monitor == Some(true) {
        ", MONITOR mode (nothing is dropped)"
    } else {
        ""
    };
    info!(
        "{how} {iface} in {xdp_mode} mode (program id {program_id}); policy from {}: {}{monitor}",
        live.source,
        live.summary()
    );
    if let Some(pins) = pins {
        for old in pins.other_versions() {
            pins::remove_dir(&old);
        }
    }
    Ok(Started {
        guard,
        xdp_mode,
        program_id,
        ban_details,
    })
}

fn fill_and_attach(
    live: &LivePolicy,
    saved_bans: &[SavedBan],
    pins: Option<&Pins>,
    iface: &str,
    mode: XdpModeChoice,
    state: &StateDir,
) -> Result<(Guard, Attachment, HashMap<SourceKey, String>)> {
    let mut guard = Guard::load(&live.config, &live.compiled, pins)?;
    if let (Some(pins), true) = (pins, guard.adopted_maps) {
        warn_on_resized_maps(pins, &live.config, &live.compiled);
    }
    guard
        .maps_mut()
        .sync_policy(&live.compiled)
        .map_err(DaemonError::maps("filling the policy maps"))?;
    let adopted = guard.adopted_maps;
    let ban_details = bans::restore(
        guard.maps_mut(),
        saved_bans,
        &live.compiled.rule_names,
        adopted,
        bans::RestoreInto {
            capacity: live.config.guard.max_bans as usize,
            ipv6_prefix: live.config.guard.ipv6_ban_prefix,
            state,
        },
    )
    .map_err(DaemonError::maps("restoring the saved bans"))?;
    let attachment = guard.attach(iface, mode)?;
    Ok((guard, attachment, ban_details))
}

/// Adopted maps keep the size they were made with.
fn warn_on_resized_maps(pins: &Pins, config: &Config, policy: &CompiledPolicy) {
    for (name, _, wanted) in map_capacities(config, policy) {
        let Ok(info) = aya::maps::MapInfo::from_pin(pins.map(name)) else {
            continue;
        };
        if info.max_entries() as u64 != wanted {
            warn!(
                "the pinned map {name} holds {} entries, the config asks for {wanted}: \
                 the pinned size stays until `sipguard unload` and a new start",
                info.max_entries()
            );
        }
    }
}

/// The sized maps: name, metrics label, and the entries the config gives.
fn map_capacities(
    config: &Config,
    policy: &CompiledPolicy,
) -> [(&'static str, &'static str, u64); 9] {
    let g = &config.guard;
    let rate_entries =
        g.max_tracked_sources as u64 * policy.max_rate_groups_per_port().max(1) as u64;
    [
        (names::BANS, "bans", g.max_bans as u64),
        (names::ALLOW_V4, "allow_v4", g.max_cidrs as u64),
        (names::ALLOW_V6, "allow_v6", g.max_cidrs as u64),
        (names::DENY_V4, "deny_v4", g.max_cidrs as u64),
        (names::DENY_V6, "deny_v6", g.max_cidrs as u64),
        (names::FLEET_V4, "fleet_v4", g.max_fleet_cidrs as u64),
        (names::FLEET_V6, "fleet_v6", g.max_fleet_cidrs as u64),
        (names::RATE_STATE, "rate_state", rate_entries),
        (names::PEERS, "peers", config.peers.max_peers as u64),
    ]
}

pub(super) fn metric_names(config: &Config, policy: &CompiledPolicy) -> metrics::Names {
    metrics::Names {
        services: policy.service_names.clone(),
        rules: policy.rule_names.clone(),
        capacities: map_capacities(config, policy)
            .into_iter()
            .map(|(_, label, capacity)| (label, capacity))
            .collect(),
    }
}
