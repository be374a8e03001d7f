//! `sipguard run`: load, attach, log bans, clear expired ones, and detach
//! cleanly on SIGINT or SIGTERM.
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use guard_common::Reason;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::Mutex,
};
use tracing::{info, warn};

use crate::{
    auth_tracker::{LevelName, Tracker},
    bans, clock,
    config::{Config, DefaultPolicy, BUILTIN_SOURCE},
    control::{self, ControlState},
    events,
    loader::{Guard, XdpModeChoice},
    maps::KernelMaps,
    metrics::{self, Metrics},
    policy::CompiledPolicy,
    preflight, sip_watch,
};

/// How often expired bans are cleared from the map.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

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
}

/// Reads the config and resolves the interface; nothing touches the kernel yet.
pub fn prepare(options: &RunOptions) -> Result<(Config, String, String)> {
    let (mut config, source) = match &options.config {
        Some(path) => (Config::load(path)?, path.display().to_string()),
        None => (Config::default(), BUILTIN_SOURCE.to_string()),
    };
    if options.monitor {
        config.guard.monitor = true;
    }
    if let Some(level) = options.level {
        config.sip_auth.level = level;
    }
    if let Some(address) = options.metrics_addr {
        config.metrics.enabled = true;
        config.metrics.address = address;
    }
    let iface = match &options.iface {
        Some(iface) => iface.clone(),
        None => {
            let iface = preflight::default_route_interface()?;
            info!("no --iface given: using {iface}, the default-route interface");
            iface
        }
    };
    Ok((config, source, iface))
}

pub async fn run(options: RunOptions) -> Result<()> {
    let (config, source, iface) = prepare(&options)?;
    preflight::interface_index(&iface)?;
    preflight::privileges()?;
    preflight::kernel()?;

    let control_listener = control::bind(&options.control_socket)?;
    let metrics_listener = if config.metrics.enabled {
        Some(metrics::bind(config.metrics.address).await?)
    } else {
        None
    };
    let policy = CompiledPolicy::compile(&config);
    let mut guard = Guard::load(&config, &policy)?;
    let mode = guard.attach(&iface, options.xdp_mode)?;
    let program_id = guard.program_id()?;
    info!(
        "attached to {iface} in {mode} mode (program id {program_id}); policy from {source}: {}",
        summary(&config, &policy)
    );

    let mut maps = guard.take_maps().context("maps handed over twice")?;
    let ban_ring = maps
        .ban_events
        .take()
        .context("ban event ring taken twice")?;
    let sip_ring = maps.sip_events.take().context("SIP ring taken twice")?;
    let ipv6_prefix = config.guard.ipv6_ban_prefix;
    let maps = Arc::new(Mutex::new(maps));
    let metrics = Arc::new(Metrics::new(
        Arc::clone(&maps),
        metric_names(&config, &policy),
    ));
    let counters = metrics.counters.clone();

    let events = tokio::spawn(events::log_ban_events(
        ban_ring,
        policy.rule_names.clone(),
        ipv6_prefix,
        counters.clone(),
    ));
    let mut tasks = vec![tokio::spawn(sweep_forever(Arc::clone(&maps), ipv6_prefix))];
    let control_state = Arc::new(ControlState {
        maps: Arc::clone(&maps),
        counters: counters.clone(),
        iface: iface.clone(),
        xdp_mode: mode.to_string(),
        program_id,
        policy: summary(&config, &policy),
        rule_names: policy.rule_names.clone(),
        started: std::time::Instant::now(),
        manual_reasons: Mutex::new(Default::default()),
        lists: Mutex::new(control::Lists::from_config(&config)),
        services: control::ServiceInfo::from_policy(&policy),
        default_drop: config.guard.default_policy == DefaultPolicy::Drop,
    });
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
    if config.sip_auth.enabled {
        guard.attach_egress(&iface)?;
        let auth = config.auth_policy();
        info!(
            "watching SIP authentication on the {} service: level {:?}, ban after {} failures \
             in {} ({} if unproven) for {}",
            config.sip_auth.service,
            config.sip_auth.level,
            auth.level.failures,
            clock::human(auth.level.window),
            auth.level.failures * auth.unproven_multiplier,
            clock::human(auth.level.ban)
        );
        let tracker = Tracker::new(auth);
        let maps = Arc::clone(&maps);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = sip_watch::watch(sip_ring, tracker, maps, counters).await {
                warn!("SIP watcher stopped: {e:#}");
            }
        }));
    }

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let why = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
        ended = events => format!("ban event reader stopped: {ended:?}").leak(),
    };
    for task in &tasks {
        task.abort();
    }
    let _ = std::fs::remove_file(&options.control_socket);
    guard.detach()?;
    info!("{why}: detached from {iface}");
    log_totals(&*maps.lock().await);
    Ok(())
}

async fn sweep_forever(maps: Arc<Mutex<KernelMaps>>, ipv6_prefix: u8) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let mut maps = maps.lock().await;
        match bans::sweep_expired(&mut maps, clock::monotonic_ns()) {
            Ok(expired) => {
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

fn metric_names(config: &Config, policy: &CompiledPolicy) -> metrics::Names {
    let g = &config.guard;
    let rate_entries = g.max_tracked_sources as u64 * policy.max_rules_per_port().max(1) as u64;
    metrics::Names {
        services: policy.service_names.clone(),
        rules: policy.rule_names.clone(),
        capacities: vec![
            ("bans", g.max_bans as u64),
            ("allow_v4", g.max_cidrs as u64),
            ("allow_v6", g.max_cidrs as u64),
            ("deny_v4", g.max_cidrs as u64),
            ("deny_v6", g.max_cidrs as u64),
            ("rate_state", rate_entries),
        ],
    }
}

fn summary(config: &Config, policy: &CompiledPolicy) -> String {
    let default = match config.guard.default_policy {
        DefaultPolicy::Pass => "pass",
        DefaultPolicy::Drop => "drop",
    };
    format!(
        "default {default}{}, {} services, {} rate rules, {} allow and {} deny entries",
        if config.guard.monitor {
            ", MONITOR mode (nothing is dropped)"
        } else {
            ""
        },
        policy.services.len(),
        policy.rules.len(),
        policy.allow.len(),
        policy.deny.len()
    )
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
