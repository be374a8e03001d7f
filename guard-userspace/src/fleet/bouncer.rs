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
//! - The runtime applies the changes (`Runtime::fleet_bans`): allow-listed
//!   networks are never dropped, local bans are left as they are.
//! - Range decisions go to the fleet deny set (`Runtime::fleet_ranges`),
//!   which the XDP program checks after the deny list; a full sync makes it
//!   hold exactly the LAPI's ranges.
use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use super::{
    config::CrowdsecSection,
    decisions::{Book, Change, Tally, Target},
    health::{Origin, SourceHealth},
    http::Http,
    lapi::{Lapi, LapiError},
};
use crate::{
    clock,
    runtime::{
        fleet::{FleetApplied, FleetBan, FleetChange},
        fleet_set::{Holder, RangeChange},
        Runtime,
    },
};

/// The longest wait between two tries while the LAPI is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
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
    /// Decisions on learned peers, not dropped.
    pub peers_spared: u64,
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

impl Bouncer {
    /// Builds the client; talks to nobody yet.
    pub fn new(
        section: CrowdsecSection,
        key: &str,
        runtime: Arc<Runtime>,
    ) -> Result<Bouncer, LapiError> {
        let http = Http::new()?;
        let lapi = Lapi::new(http, &section, key)?;
        let status = BouncerStatus {
            url: lapi.url(),
            ..BouncerStatus::default()
        };
        runtime.counters().fleet_health.register(SourceHealth::new(
            "crowdsec",
            Origin::Crowdsec,
            "crowdsec",
            &lapi.url(),
        ));
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
                    self.health(|h| h.failed(e.to_string()));
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn health(&self, f: impl FnOnce(&mut SourceHealth)) {
        self.runtime
            .counters()
            .fleet_health
            .update(Origin::Crowdsec, "crowdsec", f);
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
            changes.extend(self.stale_bans().await);
        }
        let applied = self.enforce(&changes, startup).await;
        if startup || changes.len() > LOG_EACH || skipped(&tally) > 0 {
            info!(
                "crowdsec {}: {} new, {} deleted; {} enforced, {} lifted, {} allow-listed \
                 and {} learned peers (not dropped), {} already banned here; ignored {} other \
                 types, {} other scopes, {} filtered, {} malformed; {} targets held",
                if startup { "full sync" } else { "delta" },
                tally.new,
                tally.deleted,
                applied.enforced,
                applied.lifted,
                applied.allowlisted,
                applied.peers_spared,
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
            s.peers_spared += applied.peers_spared;
            s.kept_local += applied.kept_local;
            s.decisions = totals;
        });
        self.health(|h| {
            h.succeeded();
            h.entries = held as u64;
            h.applied_total += applied.enforced;
            h.lifted_total += applied.lifted;
            h.skipped = skipped(&tally);
        });
        Ok(())
    }

    /// `crowdsec` bans in the kernel that the LAPI no longer holds (the
    /// maps outlived a restart, or bans came back from the state file).
    async fn stale_bans(&self) -> Vec<Change> {
        let held: HashSet<Target> = self.book.targets().copied().collect();
        let bans = match self.runtime.fleet_bans_in_force().await {
            Ok(bans) => bans,
            Err(e) => {
                warn!("reading the ban map for the crowdsec resync failed: {e}");
                return Vec::new();
            }
        };
        bans.into_iter()
            .map(Target::Source)
            .filter(|target| !held.contains(target))
            .map(|target| Change::Lift { target })
            .collect()
    }

    /// Hands the changes to the runtime, the one owner of bans and of the
    /// fleet deny set (which holds exactly the book's ranges after a full sync).
    async fn enforce(&self, changes: &[Change], startup: bool) -> FleetApplied {
        let bans: Vec<FleetChange> = changes.iter().filter_map(fleet_change).collect();
        let ranges: Vec<RangeChange> = changes.iter().filter_map(range_change).collect();
        let mut applied = self.runtime.fleet_bans(&bans, bans.len() <= LOG_EACH).await;
        let log_each = ranges.len() <= LOG_EACH;
        let done = self
            .runtime
            .fleet_ranges(&Holder::Crowdsec, &ranges, startup, log_each)
            .await;
        applied.enforced += done.enforced;
        applied.lifted += done.lifted;
        applied.allowlisted += done.allowlisted;
        applied.peers_spared += done.peers_spared;
        applied
    }
}

/// A range decision as the runtime takes it.
fn range_change(change: &Change) -> Option<RangeChange> {
    match change {
        Change::Enforce {
            target: Target::Range(net),
            scenario,
            origin,
            ..
        } => Some(RangeChange::Hold {
            net: *net,
            detail: format!("{scenario} (origin {origin})"),
        }),
        Change::Lift {
            target: Target::Range(net),
        } => Some(RangeChange::Lift(*net)),
        _ => None,
    }
}

/// An IP decision as the runtime takes it (ranges: [`range_change`]).
fn fleet_change(change: &Change) -> Option<FleetChange> {
    match change {
        Change::Enforce {
            target: Target::Source(key),
            expires_ns,
            scenario,
            origin,
            ..
        } => Some(FleetChange::Ban(FleetBan {
            key: *key,
            expires_ns: *expires_ns,
            scenario: scenario.clone(),
            origin: origin.clone(),
        })),
        Change::Lift {
            target: Target::Source(key),
        } => Some(FleetChange::Lift(*key)),
        Change::Enforce {
            target: Target::Range(_),
            ..
        }
        | Change::Lift {
            target: Target::Range(_),
        } => None,
    }
}

fn skipped(tally: &Tally) -> u64 {
    tally.other_types + tally.other_scopes + tally.filtered + tally.malformed
}

/// `poll_interval` doubled per failure, up to a minute (or the interval).
fn backoff(poll: Duration, failures: u32) -> Duration {
    let doubled = poll.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(MAX_BACKOFF.max(poll))
}

#[cfg(test)]
mod tests {
    use super::*;

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
