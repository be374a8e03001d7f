//! `sipguard run`: load, attach, log bans, clear expired ones, and detach
//! cleanly on SIGINT or SIGTERM.
use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use guard_common::{map_names as names, Reason, SourceKey};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{Mutex, Notify},
};
use tracing::{info, warn};

use crate::{
    clock,
    control::{self, Attached, ControlState},
    kernel::events,
    kernel::loader::{Attachment, Guard, XdpModeChoice},
    kernel::maps::KernelMaps,
    kernel::pins::{self, Pins},
    kernel::preflight,
    metrics::{self, Metrics},
    policy::compile::CompiledPolicy,
    policy::config::Config,
    policy::live::{ConfigSource, LivePolicy},
    runtime::bans::{self, BanDetails},
    sip::tracker::{LevelName, Tracker},
    sip::watcher,
    state::{Clocks, SavedBan, StateDir},
};

/// How often expired bans are cleared from the map.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest time between two saves of the bans.
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

pub struct RunOptions {
    pub control_socket: PathBuf,
    /// Overrides `metrics.address` (and enables the endpoint).
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub iface: Option<String>,
    pub config: Option<PathBuf>,
    pub xdp_mode: XdpModeChoice,
    pub monitor: bool,
    /// Overrides `sip_auth.level`.
    pub level: Option<LevelName>,
    pub state_dir: PathBuf,
    /// Where the XDP link and maps are pinned; None: not pinned (the guard
    /// stops with the process).
    pub pin_dir: Option<PathBuf>,
}

impl RunOptions {
    pub fn config_source(&self) -> ConfigSource {
        ConfigSource {
            path: self.config.clone(),
            monitor: self.monitor,
            level: self.level,
            metrics_addr: self.metrics_addr,
        }
    }
}

/// The config (and its name) and the interface, found before any kernel work.
pub struct Prepared {
    config: Config,
    source: String,
    iface: String,
}

/// Reads the config and resolves the interface; nothing touches the kernel yet.
pub fn prepare(options: &RunOptions) -> Result<Prepared> {
    let (config, source) = options.config_source().load()?;
    let iface = match &options.iface {
        Some(iface) => iface.clone(),
        None => {
            let iface = preflight::default_route_interface()?;
            info!("no --iface given: using {iface}, the default-route interface");
            iface
        }
    };
    Ok(Prepared {
        config,
        source,
        iface,
    })
}

pub async fn run(options: RunOptions, prepared: Prepared) -> Result<()> {
    let Prepared {
        config,
        source,
        iface,
    } = prepared;
    // First of all: a SIGTERM during start-up must still end in the orderly
    // stop below (bans saved), not in the default action.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    preflight::interface_index(&iface)?;
    preflight::privileges()?;
    preflight::kernel()?;

    // One directory per interface, as with the pins: guards on two
    // interfaces keep apart.
    let state = StateDir::open(&options.state_dir.join(&iface))?;
    let live = LivePolicy::build(config, source, state.load_lists()?);
    let saved_bans = state.load_bans()?;
    let control_listener = control::bind(&options.control_socket)?;
    let metrics_listener = if live.config.metrics.enabled {
        Some(metrics::bind(live.config.metrics.address).await?)
    } else {
        None
    };
    let pins = match &options.pin_dir {
        Some(root) => match Pins::prepare(root, &iface) {
            Ok(pins) => Some(pins),
            Err(e) => {
                warn!("{e:#}: running unpinned, so the guard stops when this process does");
                None
            }
        },
        None => None,
    };

    let adopting = pins.as_ref().is_some_and(Pins::has_maps);
    let started = load_and_attach(&live, &saved_bans, pins.as_ref(), &iface, options.xdp_mode);
    let (mut guard, attachment, ban_details) = match started {
        Ok(started) => started,
        Err(e) => {
            // Maps this run pinned would otherwise outlive it, holding memory.
            if let Some(pins) = pins.as_ref().filter(|_| !adopting) {
                pins::remove_dir(&pins.maps_dir());
            }
            return Err(e);
        }
    };
    let (how, mode) = match attachment {
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
    info!(
        "{how} {iface} in {mode} mode (program id {program_id}); policy from {}: {}",
        live.source,
        live.summary()
    );
    if let Some(pins) = &pins {
        for old in pins.other_versions() {
            pins::remove_dir(&old);
        }
    }

    let mut maps = guard.take_maps().context("maps handed over twice")?;
    let ban_ring = maps
        .ban_events
        .take()
        .context("ban event ring taken twice")?;
    let sip_ring = maps.sip_events.take().context("SIP ring taken twice")?;
    let ipv6_prefix = live.config.guard.ipv6_ban_prefix;
    let maps = Arc::new(Mutex::new(maps));
    let metrics = Arc::new(Metrics::new(
        Arc::clone(&maps),
        metric_names(&live.config, &live.compiled),
    ));
    let counters = metrics.counters.clone();
    let sip_auth = live
        .config
        .sip_auth
        .enabled
        .then(|| live.config.auth_policy());
    let sip_service = live.config.sip_auth.service.clone();
    let level = live.config.sip_auth.level;
    let policy = Arc::new(Mutex::new(live));
    let ban_details = Arc::new(Mutex::new(ban_details));
    let bans_changed = Arc::new(Notify::new());

    let events = tokio::spawn(events::log_ban_events(
        ban_ring,
        Arc::clone(&policy),
        ipv6_prefix,
        counters.clone(),
        Arc::clone(&bans_changed),
    ));
    let mut tasks = vec![
        tokio::spawn(sweep_forever(
            Arc::clone(&maps),
            Arc::clone(&ban_details),
            ipv6_prefix,
            Arc::clone(&bans_changed),
        )),
        tokio::spawn(save_bans_forever(
            Arc::clone(&maps),
            Arc::clone(&policy),
            Arc::clone(&ban_details),
            state.clone(),
            Arc::clone(&bans_changed),
        )),
    ];
    let control_state = Arc::new(ControlState::new(
        Arc::clone(&maps),
        counters.clone(),
        Attached {
            iface: iface.clone(),
            xdp_mode: mode,
            program_id,
            pinned_at: pins
                .as_ref()
                .filter(|_| guard.is_pinned())
                .map(Pins::iface_dir),
        },
        Arc::clone(&policy),
        options.config_source(),
        Arc::clone(&ban_details),
        state.clone(),
        Arc::clone(&bans_changed),
    ));
    let reloader = Arc::clone(&control_state);
    tasks.push(tokio::spawn(async move {
        if let Err(e) = control::serve(control_listener, control_state).await {
            warn!("control socket stopped: {e:#}");
        }
    }));
    if let Some(listener) = metrics_listener {
        let server = metrics::serve(listener, Arc::clone(&metrics));
        tasks.push(tokio::spawn(async move {
            if let Err(e) = server.await {
                warn!("metrics endpoint stopped: {e:#}");
            }
        }));
        tasks.push(tokio::spawn(metrics::count_rate_state(
            Arc::clone(&metrics),
            Arc::clone(&maps),
        )));
    }
    if let Some(auth) = sip_auth {
        guard.attach_egress(&iface)?;
        info!(
            "watching SIP authentication on the {sip_service} service: level {level:?}, ban \
             after {} failures in {} ({} if unproven) for {}",
            auth.level.failures,
            clock::human(auth.level.window),
            auth.level.failures * auth.unproven_multiplier,
            clock::human(auth.level.ban)
        );
        let tracker = Tracker::new(auth);
        let maps = Arc::clone(&maps);
        let details = Arc::clone(&ban_details);
        let bans_changed = Arc::clone(&bans_changed);
        tasks.push(tokio::spawn(async move {
            let watch = watcher::watch(sip_ring, tracker, maps, counters, details, bans_changed);
            if let Err(e) = watch.await {
                warn!("SIP watcher stopped: {e:#}");
            }
        }));
    }

    let mut events = events;
    let why = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => reloader.reload_on_signal().await,
            ended = &mut events => break format!("ban event reader stopped: {ended:?}").leak(),
        }
    };
    for task in &tasks {
        task.abort();
    }
    let _ = std::fs::remove_file(&options.control_socket);
    save_bans(&maps, &policy, &ban_details, &state).await;
    if guard.is_pinned() {
        info!(
            "{why}: stopped; the kernel keeps enforcing the pinned policy and bans on {iface} \
             (`sipguard unload --iface {iface}` removes them)"
        );
    } else {
        guard.detach()?;
        info!("{why}: detached from {iface}");
    }
    log_totals(&*maps.lock().await);
    Ok(())
}

/// Loads the program, fills its maps (policy, then bans) and attaches it:
/// everything is in the maps before the program reaches the interface
/// (or, when adopted, while the old program still runs).
fn load_and_attach(
    live: &LivePolicy,
    saved_bans: &[SavedBan],
    pins: Option<&Pins>,
    iface: &str,
    mode: XdpModeChoice,
) -> Result<(Guard, Attachment, HashMap<SourceKey, String>)> {
    let mut guard = Guard::load(&live.config, &live.compiled, pins)?;
    if let (Some(pins), true) = (pins, guard.adopted_maps) {
        warn_on_resized_maps(pins, &live.config, &live.compiled);
    }
    guard
        .maps_mut()
        .sync_policy(&live.compiled)
        .context("filling the policy maps")?;
    let ban_details = restore_bans(&mut guard, saved_bans, live)?;
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

/// Restores saved bans into new maps (after a reboot), or keeps the pinned
/// maps' bans as they are. Returns the saved details of the bans in force.
fn restore_bans(
    guard: &mut Guard,
    saved: &[SavedBan],
    live: &LivePolicy,
) -> Result<HashMap<SourceKey, String>> {
    let clocks = Clocks::now();
    let rule_names = &live.compiled.rule_names;
    let mut details = HashMap::new();
    let mut restored = 0;
    let adopted = guard.adopted_maps;
    let maps = guard.maps_mut();
    for ban in saved {
        let Some((key, entry)) = ban.to_entry(rule_names, clocks) else {
            continue;
        };
        if !adopted {
            maps.insert_ban(key, entry)
                .with_context(|| format!("restoring the ban on {}", ban.key))?;
            restored += 1;
        }
        if !ban.detail.is_empty() {
            details.insert(key, ban.detail.clone());
        }
    }
    if adopted {
        let now = clock::monotonic_ns();
        let active = maps.active_bans(now)?.len();
        info!("adopted the pinned maps of an earlier run: {active} bans in force");
    } else if restored > 0 {
        info!(
            "restored {restored} of {} saved bans with their remaining time",
            saved.len()
        );
    }
    Ok(details)
}

/// Saves the bans whenever they change (at most once a second).
async fn save_bans_forever(
    maps: Arc<Mutex<KernelMaps>>,
    policy: Arc<Mutex<LivePolicy>>,
    details: BanDetails,
    state: StateDir,
    changed: Arc<Notify>,
) {
    loop {
        changed.notified().await;
        save_bans(&maps, &policy, &details, &state).await;
        tokio::time::sleep(SAVE_INTERVAL).await;
    }
}

async fn save_bans(
    maps: &Mutex<KernelMaps>,
    policy: &Mutex<LivePolicy>,
    details: &Mutex<HashMap<SourceKey, String>>,
    state: &StateDir,
) {
    let rule_names = policy.lock().await.compiled.rule_names.clone();
    let clocks = Clocks::now();
    let bans = match maps.lock().await.active_bans(clocks.monotonic_ns) {
        Ok(bans) => bans,
        Err(e) => return warn!("reading the bans to save them failed: {e:#}"),
    };
    let details = details.lock().await;
    let saved = bans
        .iter()
        .map(|(key, ban)| {
            let detail = details.get(key).cloned().unwrap_or_default();
            SavedBan::from_entry(key, ban, &rule_names, detail, clocks)
        })
        .collect();
    if let Err(e) = state.save_bans(saved) {
        warn!("saving the bans failed: {e:#}");
    }
}

async fn sweep_forever(
    maps: Arc<Mutex<KernelMaps>>,
    details: BanDetails,
    ipv6_prefix: u8,
    changed: Arc<Notify>,
) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let mut maps = maps.lock().await;
        match bans::sweep_expired(&mut maps, clock::monotonic_ns()) {
            Ok(expired) => {
                if !expired.is_empty() {
                    changed.notify_one();
                    let mut details = details.lock().await;
                    for (source, _) in &expired {
                        details.remove(source);
                    }
                }
                for (source, ban) in expired {
                    info!(
                        target: "sipguard::ban",
                        "ban on {} expired ({}, {} packets dropped)",
                        bans::source_to_string(&source, ipv6_prefix),
                        bans::reason_name(ban.reason),
                        ban.dropped
                    );
                }
            }
            Err(e) => warn!("clearing expired bans failed: {e:#}"),
        }
    }
}

/// The sized maps: name, metrics label, and the entries the config gives.
fn map_capacities(
    config: &Config,
    policy: &CompiledPolicy,
) -> [(&'static str, &'static str, u64); 6] {
    let g = &config.guard;
    let rate_entries = g.max_tracked_sources as u64 * policy.max_rules_per_port().max(1) as u64;
    [
        (names::BANS, "bans", g.max_bans as u64),
        (names::ALLOW_V4, "allow_v4", g.max_cidrs as u64),
        (names::ALLOW_V6, "allow_v6", g.max_cidrs as u64),
        (names::DENY_V4, "deny_v4", g.max_cidrs as u64),
        (names::DENY_V6, "deny_v6", g.max_cidrs as u64),
        (names::RATE_STATE, "rate_state", rate_entries),
    ]
}

fn metric_names(config: &Config, policy: &CompiledPolicy) -> metrics::Names {
    metrics::Names {
        services: policy.service_names.clone(),
        rules: policy.rule_names.clone(),
        capacities: map_capacities(config, policy)
            .into_iter()
            .map(|(_, label, capacity)| (label, capacity))
            .collect(),
    }
}

fn log_totals(maps: &KernelMaps) {
    match maps.verdicts() {
        Ok(totals) => {
            let line: Vec<String> = Reason::ALL
                .iter()
                .zip(totals.iter())
                .filter(|(_, c)| c.packets > 0)
                .map(|(reason, c)| format!("{}={}", reason.name(), c.packets))
                .collect();
            info!(
                "packets by verdict: {}",
                if line.is_empty() {
                    "none".into()
                } else {
                    line.join(" ")
                }
            );
        }
        Err(e) => warn!("reading counters failed: {e:#}"),
    }
}
