//! The CrowdSec bouncer: pulls the decision stream and applies it to the
//! kernel. IP decisions become bans (reason `crowdsec`, the scenario as
//! detail) in the ban map, beside the guard's own bans.
//!
//! - Start: `startup=true` until one succeeds; then the kernel holds exactly
//!   the LAPI's decisions (stale `crowdsec` bans, e.g. restored after a
//!   reboot, are lifted), and deltas follow every `poll_interval`.
//! - Outage: everything applied stays; retries back off up to a minute; the
//!   log says when the LAPI went away and when it came back. The first pull
//!   after a failure is a full sync again (a failed pull may have moved the
//!   LAPI's per-bouncer cursor past a delta).
//! - Allow-listed networks (and `sip_auth.whitelist`) are never dropped by a
//!   fleet decision: such decisions are counted and logged.
//! - A local ban (manual, rate-limit, SIP) on the same source is left as it
//!   is; a fleet decision never lifts a ban it did not make.
use std::{
    collections::HashSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use guard_common::{BanEntry, BanReason, SourceKey, NO_RULE};
use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::{
    config::CrowdsecSection,
    decisions::{Book, Change, Tally, Target},
    http::Http,
    lapi::{Lapi, LapiError},
};
use crate::{
    clock,
    kernel::bans,
    kernel::maps::{KernelMaps, NetList},
    runtime::Runtime,
};

/// The longest wait between two tries while the LAPI is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Bans written per hold of the map lock, so a 100,000-decision start-up
/// never blocks the control socket or the SIP watcher for long.
const BATCH: usize = 4096;
/// Up to this many changes in one answer are logged one by one.
const LOG_EACH: usize = 20;

/// The bouncer's health and totals, for logs, status and metrics.
#[derive(Debug, Default, Clone)]
pub struct BouncerStatus {
    pub url: String,
    pub last_sync: Option<Instant>,
    pub last_error: Option<String>,
    pub failures: u32,
    pub held: usize,
    pub applied: u64,
    pub lifted: u64,
    pub allowlisted: u64,
    pub kept_local: u64,
    pub decisions: Tally,
}

pub struct Bouncer {
    section: CrowdsecSection,
    lapi: Lapi,
    book: Book,
    runtime: Arc<Runtime>,
    pub status: Arc<std::sync::Mutex<BouncerStatus>>,
}

/// What applying one answer did in the kernel.
#[derive(Debug, Default)]
struct Applied {
    enforced: u64,
    lifted: u64,
    allowlisted: u64,
    kept_local: u64,
}

impl Bouncer {
    /// Builds the client; talks to nobody yet.
    pub fn new(section: CrowdsecSection, key: &str, runtime: Arc<Runtime>) -> Result<Bouncer> {
        let http = Http::new()?;
        let lapi = Lapi::new(http, &section, key)?;
        let status = BouncerStatus {
            url: lapi.url(),
            ..BouncerStatus::default()
        };
        Ok(Bouncer {
            section,
            lapi,
            book: Book::default(),
            runtime,
            status: Arc::new(std::sync::Mutex::new(status)),
        })
    }

    /// Pulls forever: a full sync first, then deltas.
    pub async fn run(mut self) {
        info!(
            "crowdsec bouncer: pulling decisions ({}) from {} every {}",
            self.section
                .scopes
                .iter()
                .map(|s| s.query_name())
                .collect::<Vec<_>>()
                .join(", "),
            self.lapi.url(),
            clock::human(self.section.poll_interval)
        );
        let mut synced = false;
        let mut failures: u32 = 0;
        loop {
            let wait = match self.pull(!synced).await {
                Ok(()) => {
                    if failures > 0 {
                        info!(
                            "crowdsec LAPI reachable again after {failures} failed pulls: \
                             decisions in sync"
                        );
                    }
                    failures = 0;
                    synced = true;
                    self.section.poll_interval
                }
                Err(e) => {
                    // A pull that failed after the LAPI moved this bouncer's
                    // cursor loses that delta: the next success is a full sync.
                    synced = false;
                    failures = failures.saturating_add(1);
                    let wait = backoff(self.section.poll_interval, failures);
                    let held = self.book.len();
                    if failures == 1 {
                        warn!(
                            "crowdsec LAPI pull failed: {e}; the {held} decisions applied stay \
                             in force; retrying in {}",
                            clock::human(wait)
                        );
                    } else {
                        debug!("crowdsec LAPI pull {failures} failed: {e}");
                    }
                    self.record(|s| {
                        s.failures = failures;
                        s.last_error = Some(e.to_string());
                    });
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn record(&self, f: impl FnOnce(&mut BouncerStatus)) {
        if let Ok(mut status) = self.status.lock() {
            f(&mut status);
        }
    }

    /// One pull, applied.
    async fn pull(&mut self, startup: bool) -> Result<(), LapiError> {
        let stream = self.lapi.stream(startup).await?;
        let now = clock::monotonic_ns();
        if startup {
            self.book.clear();
        }
        let (mut changes, tally) =
            self.book
                .apply(stream, &self.section, self.runtime.ipv6_ban_prefix(), now);
        changes.extend(self.book.expire(now));
        if startup {
            changes.extend(self.stale_bans(now).await);
        }
        let applied = self.enforce(&changes, now).await;
        if startup || changes.len() > LOG_EACH || skipped(&tally) > 0 {
            info!(
                "crowdsec {}: {} new, {} deleted; {} enforced, {} lifted, {} allow-listed \
                 (not dropped), {} already banned here; ignored {} other types, {} other \
                 scopes, {} filtered, {} malformed; {} targets held",
                if startup { "full sync" } else { "delta" },
                tally.new,
                tally.deleted,
                applied.enforced,
                applied.lifted,
                applied.allowlisted,
                applied.kept_local,
                tally.other_types,
                tally.other_scopes,
                tally.filtered,
                tally.malformed,
                self.book.len()
            );
        }
        let held = self.book.len();
        let totals = self.book.totals;
        self.record(|s| {
            s.last_sync = Some(Instant::now());
            s.last_error = None;
            s.failures = 0;
            s.held = held;
            s.applied += applied.enforced;
            s.lifted += applied.lifted;
            s.allowlisted += applied.allowlisted;
            s.kept_local += applied.kept_local;
            s.decisions = totals;
        });
        Ok(())
    }

    /// `crowdsec` bans in the kernel that the LAPI no longer holds (the
    /// maps outlived a restart, or bans came back from the state file).
    async fn stale_bans(&self, now: u64) -> Vec<Change> {
        let held: HashSet<Target> = self.book.targets().copied().collect();
        let bans = match self.runtime.maps_handle().lock().await.active_bans(now) {
            Ok(bans) => bans,
            Err(e) => {
                warn!("reading the ban map for the crowdsec resync failed: {e:#}");
                return Vec::new();
            }
        };
        bans.into_iter()
            .filter(|(_, ban)| ban.reason == BanReason::Crowdsec as u16)
            .map(|(key, _)| Target::Source(key))
            .filter(|target| !held.contains(target))
            .map(|target| Change::Lift { target })
            .collect()
    }

    /// Applies the changes to the kernel maps and the ban details.
    async fn enforce(&self, changes: &[Change], now: u64) -> Applied {
        let allowed = self.allowed_networks().await;
        let mut applied = Applied::default();
        let mut details: Vec<(SourceKey, Option<String>)> = Vec::new();
        let log_each = changes.len() <= LOG_EACH;
        let maps = self.runtime.maps_handle();
        for batch in changes.chunks(BATCH) {
            let mut maps = maps.lock().await;
            for change in batch {
                match self.enforce_one(&mut maps, change, &allowed, now, log_each) {
                    Ok(Outcome::Banned(key, detail, new)) => {
                        applied.enforced += 1;
                        if new {
                            self.runtime.counters().ban_created(BanReason::Crowdsec);
                        }
                        details.push((key, Some(detail)));
                    }
                    Ok(Outcome::Lifted(key)) => {
                        applied.lifted += 1;
                        details.push((key, None));
                    }
                    Ok(Outcome::Allowlisted) => applied.allowlisted += 1,
                    Ok(Outcome::KeptLocal) => applied.kept_local += 1,
                    Ok(Outcome::Nothing) => {}
                    Err(e) => warn!("applying a crowdsec decision failed: {e:#}"),
                }
            }
        }
        if !details.is_empty() {
            let held = self.runtime.ban_details_handle();
            let mut held = held.lock().await;
            for (key, detail) in details {
                match detail {
                    Some(detail) => held.insert(key, detail),
                    None => held.remove(&key),
                };
            }
            self.runtime.bans_changed_handle().notify_one();
        }
        applied
    }

    fn enforce_one(
        &self,
        maps: &mut KernelMaps,
        change: &Change,
        allowed: &AllowedNets,
        now: u64,
        log_each: bool,
    ) -> Result<Outcome> {
        let prefix = self.runtime.ipv6_ban_prefix();
        match change {
            Change::Enforce {
                target: Target::Source(key),
                expires_ns,
                scenario,
                origin,
                ..
            } => {
                let shown = bans::source_to_string(key, prefix);
                let net = key_net(key, prefix);
                if let Some(allow) = allowed.overlap(&net) {
                    info!(
                        "crowdsec decision on {shown} ({scenario}) not applied: {allow} is \
                         allow-listed"
                    );
                    return Ok(Outcome::Allowlisted);
                }
                let existing = maps.ban(key)?.filter(|b| b.is_active(now));
                if existing.is_some_and(|b| b.reason != BanReason::Crowdsec as u16) {
                    return Ok(Outcome::KeptLocal);
                }
                let entry = BanEntry {
                    expires_ns: *expires_ns,
                    created_ns: existing.map_or(now, |b| b.created_ns),
                    dropped: existing.map_or(0, |b| b.dropped),
                    reason: BanReason::Crowdsec as u16,
                    rule: NO_RULE,
                    ..BanEntry::default()
                };
                maps.insert_ban(*key, entry)
                    .with_context(|| format!("banning {shown}"))?;
                if log_each && existing.is_none() {
                    info!(
                        target: "sipguard::ban",
                        "banned {shown} for {}: crowdsec {scenario} (origin {origin})",
                        bans::ban_duration(now, *expires_ns)
                    );
                }
                Ok(Outcome::Banned(
                    *key,
                    format!("{scenario} (origin {origin})"),
                    existing.is_none(),
                ))
            }
            Change::Lift {
                target: Target::Source(key),
            } => {
                let ours = maps
                    .ban(key)?
                    .is_some_and(|b| b.reason == BanReason::Crowdsec as u16);
                if !ours {
                    return Ok(Outcome::Nothing);
                }
                maps.remove_ban(key)?;
                if log_each {
                    info!(
                        target: "sipguard::ban",
                        "crowdsec decision on {} lifted: unbanned",
                        bans::source_to_string(key, prefix)
                    );
                }
                Ok(Outcome::Lifted(*key))
            }
            // The config refuses the range scope until the kernel has a
            // fleet deny set, so the book never holds a range.
            Change::Enforce {
                target: Target::Range(_),
                ..
            }
            | Change::Lift {
                target: Target::Range(_),
            } => Ok(Outcome::Nothing),
        }
    }

    /// The networks a fleet decision must never drop.
    async fn allowed_networks(&self) -> AllowedNets {
        let policy = self.runtime.policy().await;
        let live = &policy.live;
        let nets = live
            .lists
            .list(NetList::Allow)
            .keys()
            .chain(live.config.sip_auth.whitelist.iter())
            .map(IpNet::trunc)
            .collect();
        AllowedNets { nets }
    }
}

enum Outcome {
    /// The key, its detail, and whether the ban is new.
    Banned(SourceKey, String, bool),
    Lifted(SourceKey),
    Allowlisted,
    KeptLocal,
    Nothing,
}

fn skipped(tally: &Tally) -> u64 {
    tally.other_types + tally.other_scopes + tally.filtered + tally.malformed
}

/// `poll_interval` doubled per failure, up to a minute (or the interval).
fn backoff(poll: Duration, failures: u32) -> Duration {
    let doubled = poll.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(MAX_BACKOFF.max(poll))
}

/// The network a ban-map key drops: the address, or the IPv6 ban prefix.
fn key_net(key: &SourceKey, ipv6_prefix: u8) -> IpNet {
    let ip = bans::source_ip(key);
    let len = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => ipv6_prefix.min(128),
    };
    IpNet::new(ip, len).map_or_else(|_| IpNet::from(ip), |n| n.trunc())
}

/// The allow list and SIP whitelist, for overlap checks.
struct AllowedNets {
    nets: HashSet<IpNet>,
}

impl AllowedNets {
    /// An allowed network that `net` overlaps: one holding it (checked by
    /// each shorter prefix) or one inside it.
    fn overlap(&self, net: &IpNet) -> Option<IpNet> {
        if self.nets.is_empty() {
            return None;
        }
        for len in (0..=net.prefix_len()).rev() {
            if let Ok(outer) = IpNet::new(net.addr(), len) {
                if self.nets.contains(&outer.trunc()) {
                    return Some(outer.trunc());
                }
            }
        }
        if net.prefix_len() < net.max_prefix_len() {
            return self.nets.iter().find(|a| net.contains(*a)).copied();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(nets: &[&str]) -> AllowedNets {
        AllowedNets {
            nets: nets.iter().map(|n| n.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn allowed_networks_overlap_both_ways() {
        let a = allowed(&["192.0.2.0/24", "2001:db8:1:2::5/128"]);
        let net = |t: &str| t.parse::<IpNet>().unwrap();
        assert_eq!(a.overlap(&net("192.0.2.9/32")), Some(net("192.0.2.0/24")));
        assert_eq!(a.overlap(&net("192.0.0.0/16")), Some(net("192.0.2.0/24")));
        assert_eq!(a.overlap(&net("198.51.100.7/32")), None);
        assert_eq!(
            a.overlap(&net("2001:db8:1:2::/64")),
            Some(net("2001:db8:1:2::5/128"))
        );
        assert_eq!(a.overlap(&net("2001:db8:1:3::/64")), None);
        assert_eq!(allowed(&[]).overlap(&net("0.0.0.0/0")), None);
    }

    #[test]
    fn ipv6_keys_cover_their_ban_prefix() {
        let key = crate::kernel::maps::source_key("2001:db8:1:2::9".parse().unwrap(), 64);
        assert_eq!(key_net(&key, 64), "2001:db8:1:2::/64".parse().unwrap());
        let key = crate::kernel::maps::source_key("192.0.2.9".parse().unwrap(), 64);
        assert_eq!(key_net(&key, 64), "192.0.2.9/32".parse().unwrap());
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(10), 1), s(10));
        assert_eq!(backoff(s(10), 2), s(20));
        assert_eq!(backoff(s(10), 3), s(40));
        assert_eq!(backoff(s(10), 4), s(60));
        assert_eq!(backoff(s(10), 1000), s(60));
        assert_eq!(backoff(s(1), 3), s(4));
        assert_eq!(backoff(s(600), 3), s(600));
    }
}
