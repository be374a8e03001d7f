//! The ban lifecycle: the details kept with each ban, manual bans and
//! unbans, the list of bans in force, the sweep of expired bans, saving them
//! to the state directory and restoring them at start; and how bans read in
//! logs.
use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use guard_common::{BanEntry, BanReason, SourceKey, BAN_FOREVER, NO_RULE};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{
    safety::{After, LockoutCheck},
    Error, Result, Runtime,
};
use crate::{
    clock,
    kernel::store::{MapStore, MapsError},
    sip::{ban as sip_ban, tracker::BanDecision},
    state::{Clocks, SavedBan, StateDir},
};

/// How often expired bans are cleared from the map.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest time between two saves of the bans.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// The words that go with each ban: the operator's reason for a manual ban,
/// the evidence of a SIP ban. Shared by whoever bans; saved with the bans.
pub type BanDetails = Arc<Mutex<HashMap<SourceKey, String>>>;

use crate::kernel::bans::RuleNames;
pub use crate::kernel::bans::{
    ban_duration, describe_event, reason_name, rule_name, source_ip, source_to_string,
};

/// `sipguard ban add`: what was banned, and for how long.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Banned {
    pub source: String,
    /// "1h", or "ever".
    #[serde(rename = "for")]
    pub duration: String,
}

/// `sipguard ban remove`: what was unbanned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Unbanned {
    pub source: String,
}

/// One row of `sipguard bans`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BanRow {
    pub source: String,
    pub reason: String,
    /// The rate rule, or the operator's words for a manual ban.
    pub detail: String,
    pub since_seconds: u64,
    /// None: until removed.
    pub remaining_seconds: Option<u64>,
    pub dropped: u64,
    /// A network of the fleet deny set (a CrowdSec range, a feed's entry):
    /// in force while its holder lists it; it keeps no drop count.
    #[serde(default)]
    pub listed: bool,
}

/// Which bans `sipguard bans --origin` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BanOrigin {
    /// CrowdSec decisions: IP bans and the ranges of the fleet deny set.
    Crowdsec,
    /// The feeds' entries in the fleet deny set.
    Feed,
    /// The guard's own bans: rate limits, SIP rules, manual.
    Local,
}

/// The longest timed ban: the kernel keeps a ban's end in u64 monotonic
/// nanoseconds (about 584 years, the top value meaning "until removed");
/// half of that leaves room for any uptime.
pub const MAX_BAN: Duration = Duration::from_secs(u64::MAX / 2 / 1_000_000_000);

/// Checks a timed ban's length: at least a second, at most [`MAX_BAN`].
/// A ban until removed is asked for as such, never by a huge length.
pub fn check_ban_length(d: Duration) -> std::result::Result<Duration, String> {
    if d < Duration::from_secs(1) {
        return Err(format!(
            "a ban lasts at least 1s (got {}); to lift a ban use `sipguard ban remove`",
            humantime::format_duration(d)
        ));
    }
    if d > MAX_BAN {
        return Err(format!(
            "{} is beyond what the kernel can hold (at most {}); for a ban until removed, \
             use `--for forever` or leave `--for` out",
            humantime::format_duration(d),
            humantime::format_duration(MAX_BAN)
        ));
    }
    Ok(d)
}

/// When a ban of length `d` made at `now` ends, in the kernel's clock.
fn ban_expiry(now: u64, d: Duration) -> std::result::Result<u64, String> {
    let d = check_ban_length(d)?;
    u64::try_from(d.as_nanos())
        .ok()
        .and_then(|ns| now.checked_add(ns))
        .filter(|&end| end != BAN_FOREVER)
        .ok_or_else(|| {
            format!(
                "{} is beyond what the kernel can hold",
                humantime::format_duration(d)
            )
        })
}

/// A manual ban, checked against the operator's SSH sessions.
pub struct BanRequest {
    pub ip: IpAddr,
    /// None: until removed.
    pub duration: Option<Duration>,
    /// The operator's words, shown by `sipguard bans`.
    pub reason: Option<String>,
}

impl Runtime {
    /// The ban-map key of an address (IPv6 sources by their prefix).
    pub fn source_key(&self, ip: IpAddr) -> SourceKey {
        crate::kernel::maps::source_key(ip, self.ipv6_ban_prefix)
    }

    pub fn source_name(&self, key: &SourceKey) -> String {
        source_to_string(key, self.ipv6_ban_prefix)
    }

    pub async fn ban_add(&self, ban: BanRequest, lockout: &LockoutCheck) -> Result<Banned> {
        let now = clock::monotonic_ns();
        let expires_ns = match ban.duration {
            Some(d) => ban_expiry(now, d).map_err(Error::Invalid)?,
            None => BAN_FOREVER,
        };
        let key = self.source_key(ban.ip);
        let entry = BanEntry {
            expires_ns,
            created_ns: now,
            reason: BanReason::Manual as u16,
            rule: NO_RULE,
            ..BanEntry::default()
        };
        {
            let policy = self.policy().await;
            let mut maps = self.maps().await;
            let after = After {
                policy: &policy.live,
                new_ban: Some((key, entry)),
                monitor: None,
            };
            lockout
                .check(&policy.live, &**maps, after)
                .map_err(Error::Refused)?;
            maps.insert_ban(key, entry)?;
        }
        let why = ban.reason.unwrap_or_default();
        self.ban_details.lock().await.insert(key, why.clone());
        self.journal(&[(key, entry, why.clone())]).await;
        self.bans_changed.notify_one();
        self.counters.ban_created(BanReason::Manual);
        let source = self.source_name(&key);
        let duration = ban_duration(now, expires_ns);
        let because = if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        };
        let cut = self.cut_registrations(&key);
        warn!(target: "sipguard::ban", "banned {source} for {duration}: manual{because}{cut}");
        Ok(Banned { source, duration })
    }

    pub async fn ban_remove(&self, ip: IpAddr) -> Result<Unbanned> {
        let key = self.source_key(ip);
        let source = self.source_name(&key);
        if !self.maps().await.remove_ban(&key)? {
            return Err(Error::NotFound(format!("{source} is not banned")));
        }
        self.ban_details.lock().await.remove(&key);
        self.journal_removals(&[key]).await;
        self.bans_changed.notify_one();
        info!(target: "sipguard::ban", "unbanned {source} by the operator");
        Ok(Unbanned { source })
    }

    /// The bans in force, by source.
    pub async fn bans(&self) -> Result<Vec<BanRow>> {
        let rule_names = self.rule_names().await;
        let now = clock::monotonic_ns();
        let active = self.maps().await.active_bans(now)?;
        let details = self.ban_details.lock().await;
        let mut rows: Vec<BanRow> = active
            .into_iter()
            .map(|(key, ban)| BanRow {
                source: self.source_name(&key),
                reason: reason_name(ban.reason).to_string(),
                detail: match rule_name(ban.rule, &rule_names) {
                    Some(rule) => format!("rule {rule}"),
                    None => details.get(&key).cloned().unwrap_or_default(),
                },
                since_seconds: now.saturating_sub(ban.created_ns) / 1_000_000_000,
                remaining_seconds: (ban.expires_ns != BAN_FOREVER)
                    .then(|| ban.expires_ns.saturating_sub(now) / 1_000_000_000),
                dropped: ban.dropped,
                listed: false,
            })
            .collect();
        rows.sort_by(|a, b| a.source.cmp(&b.source));
        Ok(rows)
    }

    /// The bans of one origin (None: the ban map's, as [`Runtime::bans`]);
    /// CrowdSec's and the feeds' networks in the fleet deny set are listed
    /// for their origin only (a feed may hold 100,000).
    pub async fn bans_by(&self, origin: Option<BanOrigin>) -> Result<Vec<BanRow>> {
        use super::fleet_set::Holder;
        let crowdsec = reason_name(BanReason::Crowdsec as u16);
        let mut rows: Vec<BanRow> = self
            .bans()
            .await?
            .into_iter()
            .filter(|row| match origin {
                None => true,
                Some(BanOrigin::Crowdsec) => row.reason == crowdsec,
                Some(BanOrigin::Local) => row.reason != crowdsec,
                Some(BanOrigin::Feed) => false,
            })
            .collect();
        let (reason, wanted): (&str, fn(&Holder) -> bool) = match origin {
            Some(BanOrigin::Crowdsec) => (crowdsec, |h| *h == Holder::Crowdsec),
            Some(BanOrigin::Feed) => ("feed", |h| matches!(h, Holder::Feed(_))),
            None | Some(BanOrigin::Local) => return Ok(rows),
        };
        let now = crate::state::unix_now();
        let entries = self.fleet.lock().await.entries(wanted);
        rows.extend(entries.into_iter().map(|(net, words, since)| BanRow {
            source: net.to_string(),
            reason: reason.to_string(),
            detail: words,
            since_seconds: if since > 0 {
                now.saturating_sub(since)
            } else {
                0
            },
            remaining_seconds: None,
            dropped: 0,
            listed: true,
        }));
        rows.sort_by(|a, b| a.source.cmp(&b.source));
        Ok(rows)
    }

    /// Clears expired bans and their details, logging each.
    pub async fn sweep(&self) {
        let expired = {
            let mut maps = self.maps().await;
            match sweep_expired(&mut **maps, clock::monotonic_ns()) {
                Ok(expired) => expired,
                Err(e) => return warn!("clearing expired bans failed: {e:#}"),
            }
        };
        if expired.is_empty() {
            return;
        }
        self.bans_changed.notify_one();
        let mut details = self.ban_details.lock().await;
        for (source, ban) in expired {
            details.remove(&source);
            info!(
                target: "sipguard::ban",
                "ban on {} expired ({}, {} packets dropped)",
                self.source_name(&source),
                reason_name(ban.reason),
                ban.dropped
            );
        }
    }

    /// Clears expired bans every [`SWEEP_INTERVAL`].
    pub async fn sweep_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            self.sweep().await;
        }
    }

    /// Writes bans just made to the journal, before they are answered.
    async fn journal(&self, made: &[(SourceKey, BanEntry, String)]) {
        if made.is_empty() {
            return;
        }
        let rule_names = self.rule_names().await;
        let clocks = Clocks::now();
        let saved: Vec<SavedBan> = made
            .iter()
            .map(|(key, entry, detail)| {
                SavedBan::from_entry(key, entry, &rule_names, detail.clone(), clocks)
            })
            .collect();
        let _appending = self.journal_lock.lock().await;
        if let Err(e) = self.state.journal_bans(&saved) {
            warn!("journaling the bans failed (they are in force, saved at the next save): {e:#}");
        }
    }

    /// Writes bans just lifted to the journal, before they are answered:
    /// `bans.json` may still hold them until the next save.
    pub(super) async fn journal_removals(&self, lifted: &[SourceKey]) {
        if lifted.is_empty() {
            return;
        }
        let _appending = self.journal_lock.lock().await;
        if let Err(e) = self.state.journal_removals(lifted) {
            warn!("journaling lifted bans failed (they are lifted, saved at the next save): {e:#}");
        }
    }

    /// Writes the bans in force, with their details, to the state directory.
    pub async fn save_bans(&self) {
        // Held from before the map is read until the journal is cleared: a
        // ban journaled meanwhile waits, and goes into the next journal.
        let _journal = self.journal_lock.lock().await;
        let rule_names = self.rule_names().await;
        let clocks = Clocks::now();
        let bans = match self.maps().await.active_bans(clocks.monotonic_ns) {
            Ok(bans) => bans,
            Err(e) => return warn!("reading the bans to save them failed: {e:#}"),
        };
        let details = self.ban_details.lock().await;
        let saved = bans
            .iter()
            .map(|(key, ban)| {
                let detail = details.get(key).cloned().unwrap_or_default();
                SavedBan::from_entry(key, ban, &rule_names, detail, clocks)
            })
            .collect();
        drop(details);
        match self.state.save_bans(saved) {
            Ok(()) => self.state.clear_journal(),
            Err(e) => warn!("saving the bans failed: {e:#}"),
        }
    }

    /// Saves the bans whenever they change (at most once per [`SAVE_INTERVAL`]).
    pub async fn save_bans_forever(self: Arc<Self>) {
        loop {
            self.bans_changed.notified().await;
            self.save_bans().await;
            tokio::time::sleep(SAVE_INTERVAL).await;
        }
    }
}

impl Runtime {
    /// Puts the SIP watcher's bans in force, each with its evidence as its
    /// detail, counted and told to the alert sinks. A source already banned
    /// for longer keeps its ban. Returns how many bans were made.
    pub async fn sip_bans(&self, decisions: &[BanDecision], window: Duration) -> usize {
        if decisions.is_empty() {
            return 0;
        }
        let mut made = Vec::new();
        {
            let mut maps = self.maps().await;
            let mut details = self.ban_details.lock().await;
            for decision in decisions {
                match self.put_sip_ban(&mut **maps, decision, window) {
                    Ok(Some((key, entry))) => {
                        self.counters.ban_created(decision.reason);
                        let evidence = sip_ban::evidence(decision, window);
                        details.insert(key, evidence.clone());
                        self.report(
                            &key,
                            decision.reason,
                            evidence.clone(),
                            u32::try_from(decision.failures_in_window).unwrap_or(u32::MAX),
                            entry.expires_ns,
                        );
                        made.push((key, entry, evidence));
                        self.alert(sip_ban::notice(decision, window));
                    }
                    Ok(None) => {}
                    Err(e) => warn!("could not ban {}: {e:#}", decision.source),
                }
            }
        }
        self.journal(&made).await;
        self.bans_changed.notify_one();
        made.len()
    }

    /// Writes one SIP ban into the ban map (unless a longer one is in
    /// place); returns its key and entry when it did.
    fn put_sip_ban(
        &self,
        maps: &mut dyn MapStore,
        decision: &BanDecision,
        window: Duration,
    ) -> std::result::Result<Option<(SourceKey, BanEntry)>, MapsError> {
        let key = self.source_key(decision.source);
        let source = self.source_name(&key);
        let now = clock::monotonic_ns();
        let expires_ns =
            now.saturating_add(decision.duration.as_nanos().min(u64::MAX as u128) as u64);
        if let Some(existing) = maps.ban(&key)? {
            if existing.is_active(now) && existing.expires_ns >= expires_ns {
                info!("{source} failed SIP authentication again but is already banned for longer");
                return Ok(None);
            }
        }
        let entry = BanEntry {
            expires_ns,
            created_ns: now,
            reason: decision.reason as u16,
            rule: NO_RULE,
            ..BanEntry::default()
        };
        maps.insert_ban(key, entry)?;
        warn!(
            target: "sipguard::ban",
            "{}{}",
            sip_ban::describe_ban(decision, &source, window),
            self.cut_registrations(&key)
        );
        Ok(Some((key, entry)))
    }
}

impl Runtime {
    /// Logs every ban the kernel makes and wakes the ban saver, until the
    /// ring fails.
    pub async fn log_ban_events(
        self: Arc<Self>,
        mut events: crate::kernel::events::BanEvents,
    ) -> std::io::Result<()> {
        loop {
            let (batch, bad) = events.next_batch().await?;
            if bad > 0 {
                tracing::error!("ignored {bad} malformed ban events");
            }
            if batch.is_empty() {
                continue;
            }
            // Rule indexes follow the policy in force (a reload renumbers them).
            let rule_names = self.rule_names().await;
            let scanner_names = self.scanner_names().await;
            let dial_names = self.dial_rule_names().await;
            let names = RuleNames {
                rates: &rule_names,
                scanners: &scanner_names,
                dials: &dial_names,
            };
            for event in &batch {
                if let Some(reason) = BanReason::from_u16(event.reason) {
                    self.counters.ban_created(reason);
                    self.report(
                        &event.source,
                        reason,
                        crate::kernel::bans::evidence(event, names),
                        event.count,
                        event.expires_ns,
                    );
                }
                warn!(
                    target: "sipguard::ban",
                    "{}{}",
                    describe_event(event, names, self.ipv6_ban_prefix),
                    self.cut_registrations(&event.source)
                );
                self.alert(crate::kernel::bans::notice(
                    event,
                    names,
                    self.ipv6_ban_prefix,
                ));
            }
            self.bans_changed.notify_one();
        }
    }
}

/// Where saved bans go back: the ban map's capacity, the IPv6 prefix ban
/// keys are masked to, and the state directory that keeps any left out.
pub struct RestoreInto<'a> {
    pub capacity: usize,
    pub ipv6_prefix: u8,
    pub state: &'a StateDir,
}

/// Puts saved bans into new maps (after a reboot), or keeps the pinned
/// maps' bans as they are (`adopted`). Returns the saved details of the
/// bans in force. Saved bans beyond the ban map's capacity never stop the
/// start: the newest are restored, the rest kept aside in a file and
/// reported.
pub fn restore(
    maps: &mut dyn MapStore,
    saved: &[SavedBan],
    rule_names: &[String],
    adopted: bool,
    into: RestoreInto<'_>,
) -> std::result::Result<HashMap<SourceKey, String>, MapsError> {
    let clocks = Clocks::now();
    let mut details = HashMap::new();
    let mut restored = 0;
    let mut left_out = Vec::new();
    let mut newest_first: Vec<&SavedBan> = saved.iter().collect();
    newest_first.sort_by_key(|ban| std::cmp::Reverse(ban.created_unix));
    for ban in newest_first {
        let Some((key, entry)) = ban.to_entry(rule_names, clocks, into.ipv6_prefix) else {
            continue;
        };
        if !adopted {
            if restored >= into.capacity {
                left_out.push(ban.clone());
                continue;
            }
            if let Err(e) = maps.insert_ban(key, entry) {
                warn!("cannot restore the ban on {}: {e:#}", ban.key);
                left_out.push(ban.clone());
                continue;
            }
            restored += 1;
        }
        if !ban.detail.is_empty() {
            details.insert(key, ban.detail.clone());
        }
    }
    if adopted {
        let active = maps.active_bans(clock::monotonic_ns())?.len();
        info!("adopted the pinned maps of an earlier run: {active} bans in force");
    } else if restored > 0 {
        info!(
            "restored {restored} of {} saved bans with their remaining time",
            saved.len()
        );
    }
    if !left_out.is_empty() {
        let kept = match into.state.set_aside_bans(left_out.clone()) {
            Ok(path) => format!("kept in {}", path.display()),
            Err(e) => format!("and could not be kept aside: {e:#}"),
        };
        warn!(
            "{} saved bans do not fit (guard.max_bans = {}): the newest {restored} are in \
             force, the {} oldest are left out, {kept}",
            saved.len(),
            into.capacity,
            left_out.len()
        );
    }
    Ok(details)
}

/// Removes expired bans; returns them for logging.
pub fn sweep_expired(
    maps: &mut dyn MapStore,
    now_ns: u64,
) -> std::result::Result<Vec<(SourceKey, BanEntry)>, MapsError> {
    let expired: Vec<_> = maps
        .bans()?
        .into_iter()
        .filter(|(_, ban)| !ban.is_active(now_ns))
        .collect();
    for (source, _) in &expired {
        maps.remove_ban(source)?;
    }
    Ok(expired)
}
