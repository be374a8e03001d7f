//! Prometheus/OpenMetrics: the kernel's counters (read on each scrape),
//! the controller's own counters, and an HTTP endpoint serving /metrics.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use guard_common::{BanReason, Health, PeerEntry, PeerKind, Reason, MAX_RATE_RULES};
use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderValue, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        info::Info,
    },
    registry::Registry,
};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::{
    clock,
    kernel::maps::{KernelMaps, NetList},
    listen::{self, METRICS_CONNECTIONS},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

/// A fleet source, labelled as the `sipguard_fleet_*` series are.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FleetSourceLabels {
    /// crowdsec or feed.
    pub origin: String,
    /// crowdsec, or the feed's name.
    pub source: String,
}

/// SIP methods counted by name; anything else is "other" (bounded labels).
const KNOWN_METHODS: &[&str] = &[
    "REGISTER",
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "SUBSCRIBE",
    "NOTIFY",
    "MESSAGE",
    "REFER",
    "INFO",
    "UPDATE",
    "PRACK",
    "PUBLISH",
];

/// Counters the controller itself increments.
#[derive(Clone, Default)]
pub struct ControllerCounters {
    pub bans_created: Family<ReasonLabel, Counter>,
    pub auth_failures: Family<StatusLabel, Counter>,
    pub sip_requests: Family<MethodLabel, Counter>,
    pub sip_responses: Family<StatusLabel, Counter>,
    pub sip_malformed: Counter,
    /// HEP messages by what became of them.
    pub hep_packets: crate::sip::hep_input::HepCounters,
    /// SIP messages seen both on the wire and over HEP, counted once.
    pub sip_duplicates: Counter,
    /// Saves of bans or list changes to the state directory that failed.
    pub state_save_failures: Counter,
    /// 1 while the guard is on its interface, 0 while the interface is gone.
    pub attached: crate::kernel::iface::AttachedFlag,
    /// The health of the CrowdSec bouncer and of each feed.
    pub fleet_health: crate::fleet::health::Health,
    /// Bans reported to the CrowdSec LAPI, by what became of them.
    pub fleet_reports: Family<ResultLabel, Counter>,
    /// Reports waiting for the LAPI.
    pub fleet_reports_queued: Gauge,
    /// Learned peers a CrowdSec decision or a feed entry named or covered,
    /// not dropped, by fleet source.
    pub fleet_peers_spared: Family<FleetSourceLabels, Counter>,
    /// Usernames probed (extension scans: `sip::probes`).
    pub sip_probes: Counter,
    /// Sources with open probes, as of the watcher's last prune.
    pub sip_probing_sources: Gauge,
}

impl ControllerCounters {
    pub fn ban_created(&self, reason: BanReason) {
        self.bans_created
            .get_or_create(&ReasonLabel {
                reason: reason.name().to_string(),
            })
            .inc();
    }

    pub fn fleet_reports(&self, result: crate::fleet::report::ReportResult, n: u64) {
        self.fleet_reports
            .get_or_create(&ResultLabel {
                result: result.name().to_string(),
            })
            .inc_by(n);
    }

    /// How many reports ended so (for tests and logs).
    pub fn fleet_reports_count(&self, result: crate::fleet::report::ReportResult) -> u64 {
        self.fleet_reports
            .get_or_create(&ResultLabel {
                result: result.name().to_string(),
            })
            .get()
    }

    /// `n` learned peers spared by `origin`'s `source` (see
    /// [`FleetSourceLabels`]).
    pub fn fleet_peers_spared(&self, origin: &str, source: &str, n: u64) {
        self.fleet_peers_spared
            .get_or_create(&FleetSourceLabels {
                origin: origin.to_string(),
                source: source.to_string(),
            })
            .inc_by(n);
    }

    pub fn sip_request(&self, method: &str) {
        let method = if KNOWN_METHODS.contains(&method) {
            method
        } else {
            "other"
        };
        self.sip_requests
            .get_or_create(&MethodLabel {
                method: method.to_string(),
            })
            .inc();
    }

    pub fn sip_response(&self, status: u16) {
        self.sip_responses
            .get_or_create(&StatusLabel {
                status: status.to_string(),
            })
            .inc();
    }

    pub fn auth_failure(&self, status: u16) {
        self.auth_failures
            .get_or_create(&StatusLabel {
                status: status.to_string(),
            })
            .inc();
    }
}

/// What the collector needs to name things.
#[derive(Debug, Clone)]
pub struct Names {
    /// Service names by id (index 0 is id 1).
    pub services: Vec<String>,
    pub rules: Vec<String>,
    /// (map, capacity) for the fill-level gauges.
    pub capacities: Vec<(&'static str, u64)>,
}

/// Reads the kernel's maps on each scrape, through handles of its own: a
/// scrape takes no lock that control commands or bans wait for.
#[derive(Debug)]
struct KernelCollector {
    maps: Arc<KernelMaps>,
    names: Names,
    /// Rate-state entries, counted in the background (walking millions of
    /// LRU keys on every scrape would be too slow).
    rate_state_entries: Arc<AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    reason: String,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: String,
}

fn counter_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, u64)],
) -> std::fmt::Result {
    let mut metric =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, value) in rows {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, i64)],
) -> std::fmt::Result {
    let mut metric =
        encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn plain_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> std::fmt::Result {
    let metric =
        encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    ConstGauge::new(value).encode(metric)
}

/// `sipguard_peers` by kind (every kind, from zero) and the live
/// registrations of the unexpired peer-map entries at `now_ns`.
fn peer_gauges(
    peers: &[(guard_common::SourceKey, PeerEntry)],
    now_ns: u64,
) -> (Vec<(KindLabel, i64)>, i64) {
    const KINDS: [PeerKind; 3] = [PeerKind::Registered, PeerKind::Provider, PeerKind::Call];
    let mut by_kind = [0i64; KINDS.len()];
    let mut registrations = 0i64;
    for (_, peer) in peers.iter().filter(|(_, p)| p.is_active(now_ns)) {
        let kind = PeerKind::from_u16(peer.kind);
        if let Some(i) = KINDS.iter().position(|k| *k == kind) {
            by_kind[i] += 1;
        }
        registrations += i64::from(peer.live_users);
    }
    let rows = KINDS
        .iter()
        .zip(by_kind)
        .map(|(kind, n)| {
            let kind = kind.name().to_string();
            (KindLabel { kind }, n)
        })
        .collect();
    (rows, registrations)
}

impl KernelCollector {
    fn service_name(&self, id: u8) -> String {
        if id == 0 {
            return "none".to_string();
        }
        self.names
            .services
            .get(id as usize - 1)
            .cloned()
            .unwrap_or_else(|| format!("service-{id}"))
    }
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        // Scrapes are served from a blocking thread (see `serve`).
        let maps = &self.maps;
        let verdicts = maps.verdicts_by_service().unwrap_or_default();
        let labels = |reason: Reason, service: u8| VerdictLabels {
            reason: reason.name().to_string(),
            service: self.service_name(service),
        };
        let packets: Vec<_> = verdicts
            .iter()
            .map(|(r, s, c)| (labels(*r, *s), c.packets))
            .collect();
        let bytes: Vec<_> = verdicts
            .iter()
            .map(|(r, s, c)| (labels(*r, *s), c.bytes))
            .collect();
        counter_family(
            &mut encoder,
            "sipguard_packets",
            "Packets judged by the XDP program, by verdict reason and destination service.",
            &packets,
        )?;
        counter_family(
            &mut encoder,
            "sipguard_bytes",
            "Bytes judged by the XDP program, by verdict reason and destination service.",
            &bytes,
        )?;

        let hits = maps
            .rule_hits()
            .unwrap_or([Default::default(); MAX_RATE_RULES]);
        let rule = |i: usize| RuleLabel {
            rule: self.names.rules[i].clone(),
        };
        let counted: Vec<_> = (0..self.names.rules.len())
            .map(|i| (rule(i), hits[i].counted))
            .collect();
        let limited: Vec<_> = (0..self.names.rules.len())
            .map(|i| (rule(i), hits[i].limited))
            .collect();
        counter_family(
            &mut encoder,
            "sipguard_rate_rule_packets",
            "Packets counted by each rate rule.",
            &counted,
        )?;
        counter_family(
            &mut encoder,
            "sipguard_rate_rule_hits",
            "Packets over a rate rule's limit (each one bans its source).",
            &limited,
        )?;

        let bans = maps.active_bans(clock::monotonic_ns()).unwrap_or_default();
        // Index 0 collects reasons this build does not know.
        let mut active = [0i64; BanReason::ALL.len() + 1];
        for (_, ban) in &bans {
            let known = BanReason::from_u16(ban.reason).map_or(0, |r| r as usize);
            active[known] += 1;
        }
        let active: Vec<_> = BanReason::ALL
            .iter()
            .map(|r| {
                (
                    ReasonLabel {
                        reason: r.name().to_string(),
                    },
                    active[*r as usize],
                )
            })
            .collect();
        gauge_family(
            &mut encoder,
            "sipguard_bans_active",
            "Bans in force, by reason.",
            &active,
        )?;

        let health = maps.health().unwrap_or_default();
        let losses: Vec<_> = [
            (Health::EventLost, "ban_events"),
            (Health::SipCaptureLost, "sip_capture"),
        ]
        .iter()
        .map(|(h, ring)| {
            (
                KindLabel {
                    kind: ring.to_string(),
                },
                health[*h as usize],
            )
        })
        .collect();
        counter_family(
            &mut encoder,
            "sipguard_ring_buffer_lost",
            "Records the kernel could not put into a full ring buffer.",
            &losses,
        )?;
        let errors: Vec<_> = [Health::BanMapFull, Health::RateStateFailed]
            .iter()
            .map(|h| {
                (
                    KindLabel {
                        kind: h.name().to_string(),
                    },
                    health[*h as usize],
                )
            })
            .collect();
        counter_family(
            &mut encoder,
            "sipguard_kernel_errors",
            "Things the XDP program could not do (a full ban map: dropped but not banned).",
            &errors,
        )?;

        let scans: Vec<_> = maps
            .sip_scans()
            .map(|scans| {
                scans
                    .iter()
                    .map(|(status, count)| {
                        let kind = status.name().to_string();
                        (KindLabel { kind }, *count)
                    })
                    .collect()
            })
            .unwrap_or_default();
        counter_family(
            &mut encoder,
            "sipguard_sip_inspected",
            "SIP requests the XDP program read, by outcome: complete, partial (cut by 2 KiB or \
             the segment), unreadable (left to the PBX and the controller), fingerprint.",
            &scans,
        )?;

        let peers = maps.peers().unwrap_or_default();
        let (by_kind, registrations) = peer_gauges(&peers, clock::monotonic_ns());
        gauge_family(
            &mut encoder,
            "sipguard_peers",
            "Learned peers in force, by kind: registered (its users registered with the PBX), \
             provider (the PBX registers with it), call (authenticated calls or subscriptions).",
            &by_kind,
        )?;
        plain_gauge(
            &mut encoder,
            "sipguard_peer_registrations",
            "Live registrations from learned peers (what their rate budgets count).",
            registrations,
        )?;

        let rate_state = self.rate_state_entries.load(Ordering::Relaxed);
        let walked = Walked {
            bans: bans.len(),
            peers: peers.len(),
            rate_state,
        };
        let entries = |name: &str| map_entries(maps, name, &walked) as i64;
        let fill: Vec<_> = self
            .names
            .capacities
            .iter()
            .map(|(m, _)| (MapLabel { map: m.to_string() }, entries(m)))
            .collect();
        let capacity: Vec<_> = self
            .names
            .capacities
            .iter()
            .map(|(m, c)| (MapLabel { map: m.to_string() }, *c as i64))
            .collect();
        gauge_family(
            &mut encoder,
            "sipguard_map_entries",
            "Entries in each kernel map (rate_state counted every minute).",
            &fill,
        )?;
        gauge_family(
            &mut encoder,
            "sipguard_map_capacity",
            "Capacity of each kernel map.",
            &capacity,
        )?;
        Ok(())
    }
}

/// Entries the caller counted already: active bans, peer-map entries
/// (expired ones too, as they hold their slot until the controller removes
/// them), and the rate state's background count.
struct Walked {
    bans: usize,
    peers: usize,
    rate_state: u64,
}

/// Entries in a map as `sipguard_map_entries` reports them.
fn map_entries(maps: &KernelMaps, name: &str, walked: &Walked) -> u64 {
    match name {
        "bans" => walked.bans as u64,
        "peers" => walked.peers as u64,
        "allow_v4" => maps.net_counts(NetList::Allow).0 as u64,
        "allow_v6" => maps.net_counts(NetList::Allow).1 as u64,
        "deny_v4" => maps.net_counts(NetList::Deny).0 as u64,
        "deny_v6" => maps.net_counts(NetList::Deny).1 as u64,
        "fleet_v4" => maps.fleet_counts().0 as u64,
        "fleet_v6" => maps.fleet_counts().1 as u64,
        "rate_state" => walked.rate_state,
        _ => 0,
    }
}

/// The maps whose filling the alerts tell: the ban map, the deny lists,
/// the fleet deny set (which CrowdSec ranges and feeds fill) and the peer
/// map (full, new offices are no longer learned). The rate state is an
/// LRU map: full is its normal state.
const WATCHED_MAPS: [&str; 6] = [
    "bans", "deny_v4", "deny_v6", "fleet_v4", "fleet_v6", "peers",
];

/// The registry with every sipguard series.
pub struct Metrics {
    pub registry: Registry,
    pub counters: ControllerCounters,
    rate_state_entries: Arc<AtomicU64>,
    /// The metrics' own handles on the kernel's maps (see [`KernelCollector`]).
    maps: Arc<KernelMaps>,
    capacities: Vec<(&'static str, u64)>,
}

impl Metrics {
    /// `maps`: handles of the metrics' own (e.g. `KernelMaps::from_program_id`),
    /// never the runtime's.
    pub fn new(maps: KernelMaps, names: Names) -> Metrics {
        let maps = Arc::new(maps);
        let mut registry = Registry::default();
        let counters = ControllerCounters::default();
        // Every reason from zero, so the first ban is an increase that
        // `increase()` (and the alerting rules) can see.
        for reason in BanReason::ALL {
            let _ = counters.bans_created.get_or_create(&ReasonLabel {
                reason: reason.name().to_string(),
            });
        }
        registry.register(
            "sipguard_bans_created",
            "Bans made, by reason.",
            counters.bans_created.clone(),
        );
        registry.register(
            "sipguard_sip_auth_failures",
            "SIP authentication failures seen, by the PBX's status code.",
            counters.auth_failures.clone(),
        );
        registry.register(
            "sipguard_sip_requests",
            "SIP requests seen arriving at the PBX, by method.",
            counters.sip_requests.clone(),
        );
        registry.register(
            "sipguard_sip_responses",
            "SIP answers seen leaving the PBX, by status code.",
            counters.sip_responses.clone(),
        );
        registry.register(
            "sipguard_sip_malformed",
            "Captured SIP messages that did not parse.",
            counters.sip_malformed.clone(),
        );
        registry.register(
            "sipguard_hep_packets",
            "HEPv3 messages received, by result: accepted, malformed, refused_sender, \
             bad_auth_key, not_sip, dropped (the watcher's queue was full).",
            counters.hep_packets.0.clone(),
        );
        registry.register(
            "sipguard_sip_duplicates",
            "SIP messages seen both on the wire and over HEP, counted once.",
            counters.sip_duplicates.clone(),
        );
        registry.register(
            "sipguard_state_save_failures",
            "Saves to the state directory that failed (the change holds until a restart).",
            counters.state_save_failures.clone(),
        );
        for result in crate::fleet::report::ReportResult::ALL {
            counters.fleet_reports(result, 0);
        }
        registry.register(
            "sipguard_fleet_reports",
            "Bans reported to the CrowdSec LAPI, by result: sent, rejected (refused by the \
             LAPI), expired (the ban ran out before the LAPI was reached), dropped (a full queue).",
            counters.fleet_reports.clone(),
        );
        registry.register(
            "sipguard_fleet_reports_queued",
            "Ban reports waiting for the CrowdSec LAPI.",
            counters.fleet_reports_queued.clone(),
        );
        registry.register(
            "sipguard_fleet_peers_spared",
            "Learned peers a CrowdSec decision or feed entry named or covered, and which \
             were not dropped, by origin (crowdsec, feed) and source; counted each time the \
             decision or the feed's list is applied.",
            counters.fleet_peers_spared.clone(),
        );
        registry.register(
            "sipguard_sip_probes",
            "Usernames probed by REGISTER, INVITE, OPTIONS or SUBSCRIBE: a source asked about \
             a username it had no open probe for, before the PBX accepted it (a source with \
             enumeration_usernames open probes is banned as enumeration).",
            counters.sip_probes.clone(),
        );
        registry.register(
            "sipguard_sip_probing_sources",
            "Sources with open probes, not yet accepted by the PBX (as of the last prune, \
             every 30 s).",
            counters.sip_probing_sources.clone(),
        );
        registry.register(
            "sipguard_attached",
            "1 while the XDP program is on the interface; 0 while the interface is gone \
             (the maps are kept and it re-attaches when the interface comes back).",
            counters.attached.0.clone(),
        );
        registry.register(
            "sipguard_build",
            "sipguard build information.",
            Info::new(vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )]),
        );
        registry.register_collector(Box::new(counters.fleet_health.collector()));
        let rate_state_entries = Arc::new(AtomicU64::new(0));
        let capacities = names.capacities.clone();
        registry.register_collector(Box::new(KernelCollector {
            maps: Arc::clone(&maps),
            names,
            rate_state_entries: Arc::clone(&rate_state_entries),
        }));
        Metrics {
            registry,
            counters,
            rate_state_entries,
            maps,
            capacities,
        }
    }

    /// How full the watched maps are, from the numbers the metrics serve
    /// (`sipguard_map_entries` over `sipguard_map_capacity`). Walks the maps:
    /// call it from a blocking thread.
    pub fn fills(&self) -> Vec<crate::alerts::Fill> {
        let walked = Walked {
            bans: self
                .maps
                .active_bans(clock::monotonic_ns())
                .map(|b| b.len())
                .unwrap_or_default(),
            peers: self.maps.peers().map(|p| p.len()).unwrap_or_default(),
            rate_state: 0,
        };
        self.capacities
            .iter()
            .filter(|(name, _)| WATCHED_MAPS.contains(name))
            .map(|(name, capacity)| crate::alerts::Fill {
                map: name.to_string(),
                entries: map_entries(&self.maps, name, &walked),
                capacity: *capacity,
            })
            .collect()
    }

    /// Walks the rate state (its own handle: no lock anyone else waits for)
    /// and keeps the count for the next scrapes.
    pub fn count_rate_state_now(&self) -> u64 {
        let n = self.maps.rate_state_len() as u64;
        self.rate_state_entries.store(n, Ordering::Relaxed);
        n
    }

    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .map_err(MetricsError::Encode)?;
        Ok(text)
    }
}

/// Counts the rate-state entries now and then (a walk over up to millions of keys).
pub async fn count_rate_state(metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        let metrics = Arc::clone(&metrics);
        // A walk over up to millions of keys: off the async threads.
        let _ = tokio::task::spawn_blocking(move || metrics.count_rate_state_now()).await;
    }
}

/// Why the metrics cannot be served, or a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("encoding the metrics: {0}")]
    Encode(#[source] std::fmt::Error),
    #[error("cannot listen for metrics on {address} (see --metrics-addr): {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Largest HTTP request head read (hyper's smallest buffer).
const MAX_REQUEST: usize = 8192;
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a client may take to send a request's head (against
/// slowloris), and how long a whole connection may last (against clients
/// that never take the answer). Either frees the connection's slot.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub head: Duration,
    pub connection: Duration,
}

pub const DEADLINES: Deadlines = Deadlines {
    head: Duration::from_secs(5),
    connection: Duration::from_secs(30),
};

/// What a scrape of /metrics answers (run on a blocking thread).
pub type Scrape = Arc<dyn Fn() -> Result<String, MetricsError> + Send + Sync>;

/// Binds the metrics address (before anything is attached, so a taken port
/// is a clear start-up error).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| MetricsError::Bind { address, source })
}

/// Serves GET /metrics until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    if let Ok(address) = listener.local_addr() {
        info!("serving metrics on http://{address}/metrics");
    }
    serve_http(listener, Arc::new(move || metrics.encode()), DEADLINES).await
}

/// The endpoint itself: HTTP/1 over hyper, one request per connection, at
/// most [`METRICS_CONNECTIONS`] at once, each within `deadlines`. Accept
/// errors never end it.
pub async fn serve_http(listener: TcpListener, scrape: Scrape, deadlines: Deadlines) {
    listen::serve(
        "metrics endpoint",
        listener,
        METRICS_CONNECTIONS,
        move |stream| {
            let scrape = Arc::clone(&scrape);
            connection(stream, scrape, deadlines)
        },
    )
    .await
}

async fn connection(stream: TcpStream, scrape: Scrape, deadlines: Deadlines) {
    let peer = stream.peer_addr().ok();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(deadlines.head)
        .max_buf_size(MAX_REQUEST)
        // One request per connection, then close (as scrapers expect of it).
        .keep_alive(false);
    let service = service_fn(move |request| respond(request, Arc::clone(&scrape)));
    let served = http.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(deadlines.connection, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("metrics request from {peer:?}: {e}"),
        Err(_) => debug!(
            "metrics connection from {peer:?} outlasted {:?}; closed",
            deadlines.connection
        ),
    }
}

/// GET /metrics: the series; another GET: 404; another method: 405.
async fn respond(
    request: Request<Incoming>,
    scrape: Scrape,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            // The maps are read with syscalls: off the async threads.
            match tokio::task::spawn_blocking(move || scrape()).await {
                Ok(Ok(text)) => (StatusCode::OK, OPENMETRICS, text),
                Ok(Err(e)) => {
                    warn!("metrics: {e:#}");
                    let text = format!("{e:#}\n");
                    (StatusCode::INTERNAL_SERVER_ERROR, "text/plain", text)
                }
                Err(e) => {
                    warn!("metrics: the scrape failed: {e}");
                    let text = "the scrape failed\n".to_string();
                    (StatusCode::INTERNAL_SERVER_ERROR, "text/plain", text)
                }
            }
        }
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into()),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET"));
    }
    Ok(response)
}

#[cfg(test)]
mod http_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Only a hang fails against this.
    const HANG: Duration = Duration::from_secs(60);

    /// An endpoint on loopback answering `scrape`, with short deadlines.
    async fn endpoint(scrape: Scrape) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let short = Deadlines {
            head: Duration::from_millis(200),
            connection: Duration::from_secs(30),
        };
        tokio::spawn(serve_http(listener, scrape, short));
        address
    }

    fn series() -> Scrape {
        Arc::new(|| Ok("sipguard_up 1\n# EOF\n".to_string()))
    }

    /// Sends `request`, returns all the server wrote before it closed.
    async fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(HANG, stream.read_to_end(&mut answer))
            .await
            .expect("the server closed the connection")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn metrics_paths_content_type_and_one_request_per_connection() {
        let address = endpoint(series()).await;
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let head = answer.to_ascii_lowercase();
        assert!(
            head.contains(&format!("content-type: {OPENMETRICS}\r\n")),
            "{answer}"
        );
        assert!(head.contains("connection: close\r\n"), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\nsipguard_up 1\n# EOF\n"),
            "{answer}"
        );

        let answer = exchange(address, b"GET /elsewhere HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        assert!(answer.ends_with("try /metrics\n"), "{answer}");
        let answer = exchange(address, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{answer}"
        );
        assert!(answer.to_ascii_lowercase().contains("allow: get\r\n"));
    }

    #[tokio::test]
    async fn a_failed_scrape_is_a_500_and_the_endpoint_goes_on() {
        let address = endpoint(Arc::new(|| Err(MetricsError::Encode(std::fmt::Error)))).await;
        for _ in 0..2 {
            let answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert!(answer.starts_with("HTTP/1.1 500 "), "{answer}");
            assert!(
                answer.contains("\r\n\r\nencoding the metrics: "),
                "{answer}"
            );
        }
    }

    #[tokio::test]
    async fn slowloris_and_oversized_heads_are_cut_off_and_slots_come_back() {
        let address = endpoint(series()).await;
        // More slow clients than slots: each is closed at the head deadline.
        let mut slow = Vec::new();
        for _ in 0..METRICS_CONNECTIONS * 2 {
            slow.push(tokio::spawn(exchange(address, b"GET /metr")));
        }
        for client in slow {
            let answer = client.await.unwrap();
            assert!(!answer.contains("200 OK"), "{answer}");
        }
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        let answer = exchange(address, huge.as_bytes()).await;
        assert!(!answer.contains("200 OK"), "{answer}");
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    }
}

#[cfg(test)]
mod peer_tests {
    use guard_common::SourceKey;

    use super::*;

    #[test]
    fn peers_are_gauged_by_kind_with_their_live_registrations() {
        let now = 1_000_000;
        let peer = |n: u8, kind: PeerKind, live_users, expires_ns| {
            let entry = PeerEntry {
                expires_ns,
                live_users,
                kind: kind as u16,
                _pad: 0,
            };
            (SourceKey::from_ipv4([192, 0, 2, n]), entry)
        };
        let peers = [
            peer(1, PeerKind::Registered, 30, now + 1),
            peer(2, PeerKind::Registered, 2, now + 1),
            peer(3, PeerKind::Provider, 0, now + 1),
            // Lapsed: the kernel ignores it, and so do the gauges.
            peer(4, PeerKind::Registered, 9, now),
        ];
        let (by_kind, registrations) = peer_gauges(&peers, now);
        let by_kind: Vec<(&str, i64)> =
            by_kind.iter().map(|(k, n)| (k.kind.as_str(), *n)).collect();
        assert_eq!(by_kind, [("registered", 2), ("provider", 1), ("call", 0)]);
        assert_eq!(registrations, 32);
    }
}
