//! `sipguard run`, in named steps: read the config and find the interface
//! ([`prepare`]), check the machine, open the state directory, bind the
//! endpoints, load and attach the program ([`start`]), hand the maps to the
//! runtime, start its tasks, wait for a signal, and stop in order.
use crate::alerts::Alerts;
use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{signal, Signal, SignalKind},
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    clock,
    control::server,
    fleet,
    kernel::events::BanEvents,
    kernel::iface::InterfaceWatch,
    kernel::loader::{Guard, XdpModeChoice},
    kernel::netns::Netns,
    kernel::pins::Pins,
    kernel::preflight,
    metrics::{self, Metrics},
    policy::config::Config,
    policy::live::{ConfigSource, LivePolicy},
    runtime::{Attached, Parts, Runtime},
    sip::hep_input::{self, Gate, HepSockets, PbxAddresses},
    sip::tracker::{AuthPolicy, LevelName, Tracker},
    sip::watcher::{self, HepFeed},
    state::{self, StateDir},
};

mod error;
mod start;

pub use error::DaemonError;
use error::Result;

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
    /// Refuse to start when the pins would not outlive this process.
    pub require_pins: bool,
}

impl RunOptions {
    pub fn config_source(&self) -> ConfigSource {
        ConfigSource {
            path: self.config.clone(),
            started_with: self.config.clone(),
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

/// The policy to start with: the file a confirmed `sipguard apply` put in
/// force over this same `--config`, if it still reads; else `--config`'s.
fn applied_policy(
    options: &RunOptions,
    state: &StateDir,
    config: Config,
    source: String,
) -> (Config, String, ConfigSource) {
    let given = options.config_source();
    let path = match state.load_applied(options.config.as_deref()) {
        Ok(Some(path)) => path,
        Ok(None) => return (config, source, given),
        Err(e) => {
            warn!("cannot read which config was last applied ({e:#}): starting with {source}");
            return (config, source, given);
        }
    };
    let applied = given.with_path(path);
    match applied.load() {
        Ok((config, name)) => {
            warn!(
                "policy from {name}, as last applied and confirmed (`sipguard apply`), not from                  {source}; `sipguard apply {source}` goes back to it"
            );
            (config, name, applied)
        }
        Err(e) => {
            warn!("the config last applied cannot be used ({e}): starting with {source}");
            (config, source, given)
        }
    }
}

/// The signals `run` stops (or reloads) on.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        let install = |kind| signal(kind).map_err(DaemonError::Signals);
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }
}

/// The sockets bound before anything is attached (a taken one is a clear error).
struct Endpoints {
    control: UnixListener,
    metrics: Option<TcpListener>,
    hep: Option<hep_input::HepSockets>,
}

async fn bind_endpoints(options: &RunOptions, config: &Config) -> Result<Endpoints> {
    let control = server::bind(&options.control_socket)?;
    let metrics = if config.metrics.enabled {
        Some(metrics::bind(config.metrics.address).await?)
    } else {
        None
    };
    let hep = hep_input::bind(&config.hep).await?;
    Ok(Endpoints {
        control,
        metrics,
        hep,
    })
}

/// The pins of this guard, or None (unpinned: the guard stops with this
/// process), and why they would not outlive it if they would not. With
/// `--require-pins`, such pins refuse the start instead of warning.
fn prepare_pins(
    options: &RunOptions,
    iface: &str,
    ifindex: u32,
    netns: &Netns,
) -> Result<(Option<Pins>, Option<String>)> {
    let Some(root) = &options.pin_dir else {
        return Ok((None, None));
    };
    let pins = match Pins::prepare(root, iface, ifindex, netns) {
        Ok(pins) => pins,
        Err(e) if options.require_pins => return Err(DaemonError::PinsRequired(e)),
        Err(e) => {
            warn!("{e:#}: running unpinned, so the guard stops when this process does");
            return Ok((None, None));
        }
    };
    let warning = pins.private_mount_warning();
    if let Some(warning) = &warning {
        if options.require_pins {
            return Err(DaemonError::PinsPrivate(warning.clone()));
        }
        warn!("{warning}");
    }
    Ok((Some(pins), warning))
}

/// How long a failing controller waits for its last alert.
const LAST_WORD: Duration = Duration::from_secs(5);

pub async fn run(options: RunOptions, prepared: Prepared) -> Result<()> {
    // First of all: a SIGTERM during start-up must still end in the orderly
    // stop below (bans saved), not in the default action.
    let signals = Signals::install()?;
    // Then the alert sinks, so that a failure from here on (attaching, a
    // lost ring) reaches the admin before the process exits.
    let alerts = start_alerts(&prepared.config)?;
    let result = guard(options, prepared, signals, alerts.clone()).await;
    if let (Err(e), Some(alerts)) = (&result, &alerts) {
        alerts.last_word(&format!("{e:#}"), LAST_WORD).await;
    }
    result
}

fn start_alerts(config: &Config) -> Result<Option<Arc<Alerts>>> {
    if config.alerts.is_empty() {
        return Ok(None);
    }
    let alerts = Alerts::start(&config.alerts).map_err(DaemonError::Alerts)?;
    Ok(Some(Arc::new(alerts)))
}

async fn guard(
    options: RunOptions,
    prepared: Prepared,
    mut signals: Signals,
    alerts: Option<Arc<Alerts>>,
) -> Result<()> {
    let Prepared {
        config,
        source,
        iface,
    } = prepared;
    let ifindex = preflight::interface_index(&iface)?;
    preflight::privileges()?;
    preflight::kernel()?;
    let netns = Netns::current()?;
    let (pins, pins_warning) = prepare_pins(&options, &iface, ifindex, &netns)?;

    // One directory per (network namespace, interface), as with the pins:
    // guards on two interfaces, or on two namespaces' `eth0`, keep apart.
    let mut state = StateDir::open(&state::guard_dir(&options.state_dir, &iface, &netns))?;
    let (config, source, config_source) = applied_policy(&options, &state, config, source);
    let (max_cidrs, max_bans) = (config.guard.max_cidrs, config.guard.max_bans);
    let live = LivePolicy::build(config, source, state.load_lists(max_cidrs)?);
    let mut fleet = fleet::prepare(&live.config)?;
    let saved_bans = state.load_bans(max_bans)?;
    let saved_fleet = state.load_fleet(live.config.guard.max_fleet_cidrs)?;
    let saved_peers = state.load_peers(live.config.peers.max_peers)?;
    fleet.load_feed_state(&state, live.config.guard.max_fleet_cidrs)?;
    let endpoints = bind_endpoints(&options, &live.config).await?;
    // Subscribed before attaching, so that no change of the interface is missed.
    let mut iface_watch = InterfaceWatch::open(&iface, ifindex, options.xdp_mode);
    iface_watch.alert_to(alerts.clone());

    let started = start::load_and_attach(
        &live,
        &saved_bans,
        pins.as_ref(),
        &iface,
        options.xdp_mode,
        &state,
    )?;
    let start::Started {
        mut guard,
        xdp_mode,
        program_id,
        ban_details,
    } = started;

    let mut maps = guard
        .take_maps()
        .ok_or(DaemonError::TakenTwice("the maps"))?;
    let ban_ring = maps
        .take_ban_events()
        .ok_or(DaemonError::TakenTwice("the ban event ring"))?;
    let sip_ring = maps
        .take_sip_events()
        .ok_or(DaemonError::TakenTwice("the SIP ring"))?;
    // The metrics read the maps through handles of their own.
    let metrics = Arc::new(Metrics::new(
        maps.reopen()
            .map_err(DaemonError::maps("opening the maps for the metrics"))?,
        start::metric_names(&live.config, &live.compiled),
    ));
    iface_watch.attached(metrics.counters.attached.clone());
    state.count_failures_in(metrics.counters.state_save_failures.clone());
    let sip_auth = live.config.sip_auth.enabled.then(|| SipWatch {
        policy: live.config.auth_policy(),
        service: live.config.sip_auth.service.clone(),
        level: live.config.sip_auth.level,
        hep: live.config.hep.clone(),
        saved_peers,
    });
    let watching_sip = sip_auth.is_some();
    let runtime = Arc::new(Runtime::new(Parts {
        maps: Box::new(maps),
        live,
        source: config_source,
        ban_details,
        counters: metrics.counters.clone(),
        attached: Attached {
            iface: iface.clone(),
            xdp_mode,
            program_id,
            pinned_at: pins
                .as_ref()
                .filter(|_| guard.is_pinned())
                .map(Pins::iface_dir),
            pins_warning,
        },
        state,
        alerts: alerts.clone(),
    }));

    // bans.json at once, with the journal of a killed run folded in: the
    // state directory is whole before the first answer.
    runtime.save_bans().await;
    runtime
        .restore_fleet(saved_fleet, |holder| fleet.holds(holder))
        .await
        .map_err(DaemonError::maps("restoring the fleet deny set"))?;
    let ban_events = BanEvents::new(ban_ring).map_err(DaemonError::BanEvents)?;
    let mut events = tokio::spawn(Arc::clone(&runtime).log_ban_events(ban_events));
    let hep_sockets = endpoints.hep;
    let mut tasks = spawn_tasks(&runtime, endpoints.control, endpoints.metrics, &metrics);
    tasks.extend(fleet.spawn(&runtime)?);
    if let Some(alerts) = &alerts {
        tasks.push(watch_fill(&metrics, alerts));
    }
    if let Some(sip) = sip_auth {
        guard.attach_egress(&iface)?;
        iface_watch.with_egress();
        tasks.extend(watch_sip(&runtime, sip_ring, sip, hep_sockets));
    }

    // (why it stops, the failure if it is one)
    let (why, failure) = loop {
        tokio::select! {
            _ = signals.term.recv() => break ("SIGTERM", None),
            _ = signals.int.recv() => break ("SIGINT", None),
            _ = signals.hup.recv() => server::reload_on_signal(&runtime).await,
            wake = iface_watch.next() => iface_watch.handle(wake, &mut guard),
            ended = &mut events => {
                let why = match ended {
                    Ok(Ok(())) => "the ring ended".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                let failure = DaemonError::EventReaderStopped(why);
                break ("ban event reader stopped", Some(failure));
            }
        }
    };
    stop(why, tasks, &options, &runtime, guard, &iface, watching_sip).await?;
    // Without the ring the controller hears no bans: a failure, so that
    // the service manager restarts it (and the alert sinks hear of it).
    failure.map_or(Ok(()), Err)
}

/// Reads the watched maps' fill levels now and then and hands them to the
/// alert sinks, which tell what crosses their level.
fn watch_fill(metrics: &Arc<Metrics>, alerts: &Arc<Alerts>) -> JoinHandle<()> {
    let (metrics, alerts) = (Arc::clone(metrics), Arc::clone(alerts));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(alerts.map_check_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let metrics = Arc::clone(&metrics);
            // Walking the ban map is many system calls: off the async threads.
            match tokio::task::spawn_blocking(move || metrics.fills()).await {
                Ok(fills) => alerts.fills(fills),
                Err(e) => {
                    warn!("alerts: reading the maps' fill levels failed: {e}");
                    return;
                }
            }
        }
    })
}

/// What the SIP watcher needs from the config.
struct SipWatch {
    policy: AuthPolicy,
    service: String,
    level: LevelName,
    hep: crate::policy::config::HepSection,
    /// Learned peers from the state directory.
    saved_peers: Vec<state::SavedPeer>,
}

/// The control socket, the metrics endpoint and rate-state counter, the
/// ban sweeper and the ban saver.
fn spawn_tasks(
    runtime: &Arc<Runtime>,
    control: UnixListener,
    metrics_listener: Option<TcpListener>,
    metrics: &Arc<Metrics>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(Arc::clone(runtime).sweep_forever()),
        tokio::spawn(Arc::clone(runtime).save_bans_forever()),
    ];
    // Neither ends on an accept error: they back off and keep serving.
    tasks.push(tokio::spawn(server::serve(control, Arc::clone(runtime))));
    if let Some(listener) = metrics_listener {
        tasks.push(tokio::spawn(metrics::serve(listener, Arc::clone(metrics))));
        tasks.push(tokio::spawn(metrics::count_rate_state(Arc::clone(metrics))));
    }
    tasks
}

/// Feeds the captured SIP signalling, and what the PBX mirrors over HEP,
/// to the failure rules, which ban.
fn watch_sip(
    runtime: &Arc<Runtime>,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    sip: SipWatch,
    hep_sockets: Option<HepSockets>,
) -> Vec<JoinHandle<()>> {
    let SipWatch {
        policy: auth,
        service,
        level,
        hep,
        saved_peers,
    } = sip;
    let mut tasks = Vec::new();
    let feed = hep_sockets.map(|sockets| {
        let (queue, receiver) = tokio::sync::mpsc::channel(hep_input::QUEUE);
        tasks.extend(hep_input::spawn(
            sockets,
            Gate::new(&hep),
            queue,
            runtime.counters().hep_packets.clone(),
        ));
        HepFeed {
            queue: receiver,
            pbx: PbxAddresses::new(&hep.pbx_addresses),
        }
    });
    info!(
        "watching SIP authentication on the {service} service: level {level:?}, ban \
         after {} failures in {} ({} if unproven) for {}",
        auth.level.failures,
        clock::human(auth.level.window),
        auth.level.failures * auth.unproven_multiplier,
        clock::human(auth.level.ban)
    );
    let mut tracker = Tracker::new(auth);
    // Written to the kernel with the book's first changes, when the watch starts.
    crate::runtime::peers::restore_peers(&mut tracker.peers, &saved_peers);
    let watch = watcher::watch(ring, tracker, Arc::clone(runtime), feed);
    tasks.push(tokio::spawn(async move {
        if let Err(e) = watch.await {
            warn!("SIP watcher stopped: {e:#}");
        }
    }));
    tasks
}

/// Stops the tasks, saves the bans, and leaves the guard pinned (enforcing)
/// or detaches it.
async fn stop(
    why: &str,
    tasks: Vec<JoinHandle<()>>,
    options: &RunOptions,
    runtime: &Runtime,
    mut guard: Guard,
    iface: &str,
    watching_sip: bool,
) -> Result<()> {
    for task in &tasks {
        task.abort();
    }
    let _ = std::fs::remove_file(&options.control_socket);
    runtime.save_bans().await;
    // Only a run that learned (or restored) peers knows them all.
    if watching_sip {
        runtime.save_peers(true);
    }
    if guard.is_pinned() {
        info!(
            "{why}: stopped; the kernel keeps enforcing the pinned policy and bans on {iface} \
             (`sipguard unload --iface {iface}` removes them)"
        );
    } else {
        guard.detach()?;
        info!("{why}: detached from {iface}");
    }
    runtime.log_totals().await;
    Ok(())
}
