//! The fleet deny set: networks other machines decided on (CrowdSec range
//! decisions, blocklist feeds), in the kernel's `FLEET_V4`/`FLEET_V6` tries,
//! apart from the operator's deny list so that they never push it out.
//!
//! Several holders may hold one network (a CrowdSec range that a feed lists
//! too): it leaves the kernel with its last holder. The set is saved to the
//! state directory on every change and restored at start, so a reboot
//! without network still enforces it. Allow-listed sources are never
//! dropped by it: the shared verdict spares them.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
};

use ipnet::IpNet;
use tracing::{info, warn};

use super::{fleet::FleetApplied, Runtime};
use crate::{
    kernel::store::{MapStore, MapsError},
    state::{unix_now, SavedFleetEntry},
};

/// Entries written per hold of the map lock, so that a large feed never
/// blocks the control socket or the SIP watcher for long.
const BATCH: usize = 4096;

/// Who put a network in the fleet deny set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Holder {
    /// The CrowdSec bouncer (range decisions).
    Crowdsec,
    /// A `[[feeds]]` entry, by name.
    Feed(String),
}

impl Holder {
    /// How the holder is saved: `crowdsec`, or `feed:NAME`.
    pub fn saved_name(&self) -> String {
        match self {
            Holder::Crowdsec => "crowdsec".to_string(),
            Holder::Feed(name) => format!("feed:{name}"),
        }
    }

    /// Its `origin` and `source` labels in the metrics.
    pub fn labels(&self) -> (&str, &str) {
        match self {
            Holder::Crowdsec => ("crowdsec", "crowdsec"),
            Holder::Feed(name) => ("feed", name),
        }
    }

    pub fn from_saved_name(text: &str) -> Option<Holder> {
        match text {
            "crowdsec" => Some(Holder::Crowdsec),
            _ => text
                .strip_prefix("feed:")
                .filter(|name| !name.is_empty())
                .map(|name| Holder::Feed(name.to_string())),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Crowdsec => f.write_str("crowdsec"),
            Holder::Feed(name) => write!(f, "feed {name}"),
        }
    }
}

/// The networks in the fleet deny set, each with its holders and their
/// words (a scenario and origin, a feed's name).
#[derive(Debug, Default)]
pub struct FleetSet {
    nets: BTreeMap<IpNet, BTreeMap<Holder, String>>,
    /// When each network entered the set (UNIX seconds).
    since: HashMap<IpNet, u64>,
}

impl FleetSet {
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The networks `holder` holds.
    pub fn held_by(&self, holder: &Holder) -> Vec<IpNet> {
        self.nets
            .iter()
            .filter(|(_, holders)| holders.contains_key(holder))
            .map(|(net, _)| *net)
            .collect()
    }

    /// How many networks `holder` holds.
    pub fn held_count(&self, holder: &Holder) -> usize {
        self.nets
            .values()
            .filter(|holders| holders.contains_key(holder))
            .count()
    }

    /// The networks some holder `wanted` holds, with their words and
    /// since when (UNIX seconds).
    pub fn entries(&self, wanted: impl Fn(&Holder) -> bool) -> Vec<(IpNet, String, u64)> {
        self.nets
            .iter()
            .filter(|(_, holders)| holders.keys().any(&wanted))
            .filter_map(|(net, _)| {
                let words = self.describe(net)?;
                Some((*net, words, self.since.get(net).copied().unwrap_or(0)))
            })
            .collect()
    }

    /// Who holds `net`, in words: "crowdsec SCENARIO (origin O); feed NAME".
    pub fn describe(&self, net: &IpNet) -> Option<String> {
        let holders = self.nets.get(net)?;
        let words: Vec<String> = holders
            .iter()
            .map(|(holder, detail)| match detail.is_empty() {
                true => holder.to_string(),
                false => format!("{holder} {detail}"),
            })
            .collect();
        Some(words.join("; "))
    }

    fn saved(&self) -> Vec<SavedFleetEntry> {
        let mut out = Vec::new();
        for (net, holders) in &self.nets {
            for (holder, detail) in holders {
                out.push(SavedFleetEntry {
                    net: *net,
                    holder: holder.saved_name(),
                    detail: detail.clone(),
                    since_unix: self.since.get(net).copied().unwrap_or(0),
                });
            }
        }
        out
    }
}

/// One change a holder asks of the fleet deny set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeChange {
    /// Hold `net`; `detail` says why (a scenario and origin).
    Hold { net: IpNet, detail: String },
    /// Let go of `net`.
    Lift(IpNet),
}

/// What one fleet change did in the kernel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SetApplied {
    /// Networks that entered the kernel's set.
    pub added: u64,
    /// Networks that left it (their last holder let go).
    pub removed: u64,
    /// Networks the kernel refused (the set is full: guard.max_fleet_cidrs).
    pub refused: u64,
}

impl Runtime {
    /// A holder's range changes, checked against the networks a fleet
    /// decision must never drop: the XDP program spares allow-listed
    /// sources inside a range (the range is applied, and the overlap
    /// counted and logged); a range over any of `sip_auth.whitelist`, which
    /// the kernel does not know, is not applied (counted and logged).
    /// `full`: the holder holds exactly these ranges afterwards.
    pub async fn fleet_ranges(
        &self,
        holder: &Holder,
        changes: &[RangeChange],
        full: bool,
        log_each: bool,
    ) -> FleetApplied {
        let allowed = self.allowed_networks().await;
        let whitelist = self.sip_whitelist().await;
        let mut applied = FleetApplied::default();
        let mut add: Vec<(IpNet, String)> = Vec::new();
        let mut remove: Vec<IpNet> = Vec::new();
        for change in changes {
            match change {
                RangeChange::Hold { net, detail } => {
                    let about = about(detail);
                    if let Some(white) = whitelist.overlap(net) {
                        info!(
                            "{holder} range {net}{about} not applied: it overlaps {white} \
                             of sip_auth.whitelist"
                        );
                        applied.allowlisted += 1;
                        remove.push(*net);
                        continue;
                    }
                    let peers = self.peers_in(net);
                    if !peers.is_empty() {
                        info!(
                            "{holder} range {net} ({detail}): applied, except {} learned peer(s) \
                             in it ({}), which it never drops",
                            peers.len(),
                            peers.join(", ")
                        );
                        applied.peers_spared += peers.len() as u64;
                        let (origin, source) = holder.labels();
                        self.counters
                            .fleet_peers_spared(origin, source, peers.len() as u64);
                    }
                    if let Some(allow) = allowed.overlap(net) {
                        info!(
                            "{holder} range {net}{about}: applied, except the allow-listed \
                             {allow}, which it never drops"
                        );
                        applied.allowlisted += 1;
                    } else if log_each {
                        info!(target: "sipguard::ban", "fleet deny set: {net} for {holder} {detail}");
                    }
                    add.push((*net, detail.clone()));
                }
                RangeChange::Lift(net) => {
                    if log_each {
                        info!(target: "sipguard::ban", "{holder} range {net} lifted");
                    }
                    remove.push(*net);
                }
            }
        }
        let done = if full {
            self.fleet_replace(holder, add).await
        } else {
            self.fleet_update(holder, add, &remove).await
        };
        applied.enforced = done.added;
        applied.lifted = done.removed;
        applied
    }

    /// Makes `holder` hold exactly `wanted` (a full sync, a feed's new list).
    pub async fn fleet_replace(&self, holder: &Holder, wanted: Vec<(IpNet, String)>) -> SetApplied {
        let keep: HashSet<IpNet> = wanted.iter().map(|(net, _)| net.trunc()).collect();
        let gone: Vec<IpNet> = self
            .fleet
            .lock()
            .await
            .held_by(holder)
            .into_iter()
            .filter(|net| !keep.contains(net))
            .collect();
        self.fleet_update(holder, wanted, &gone).await
    }

    /// `holder` lets go of `remove`, then holds `add` (with their words).
    pub async fn fleet_update(
        &self,
        holder: &Holder,
        add: Vec<(IpNet, String)>,
        remove: &[IpNet],
    ) -> SetApplied {
        let mut applied = SetApplied::default();
        let mut changed = false;
        for batch in remove.chunks(BATCH) {
            let mut maps = self.maps().await;
            let mut set = self.fleet.lock().await;
            for net in batch {
                changed |= let_go(&mut **maps, &mut set, holder, net.trunc(), &mut applied);
            }
        }
        for batch in add.chunks(BATCH) {
            let mut maps = self.maps().await;
            let mut set = self.fleet.lock().await;
            for (net, detail) in batch {
                changed |= hold(
                    &mut **maps,
                    &mut set,
                    holder,
                    net.trunc(),
                    detail,
                    &mut applied,
                );
            }
        }
        if applied.refused > 0 {
            warn!(
                "the fleet deny set is full (guard.max_fleet_cidrs): {} networks of {holder} \
                 not in force",
                applied.refused
            );
        }
        if changed {
            self.save_fleet().await;
        }
        applied
    }

    /// Who holds the fleet entry `net`, in words (for `explain`).
    pub async fn fleet_describe(&self, net: &IpNet) -> Option<String> {
        self.fleet.lock().await.describe(net)
    }

    /// Networks in the fleet deny set.
    pub async fn fleet_len(&self) -> usize {
        self.fleet.lock().await.len()
    }

    /// How many networks `holder` holds.
    pub async fn fleet_held_count(&self, holder: &Holder) -> usize {
        self.fleet.lock().await.held_count(holder)
    }

    /// The networks `holder` holds.
    pub async fn fleet_held(&self, holder: &Holder) -> Vec<IpNet> {
        self.fleet.lock().await.held_by(holder)
    }

    /// Saves every feed's cursor and times (`feeds.json`); a failure is
    /// logged and counted, the feeds go on.
    pub fn save_feed_states(
        &self,
        feeds: &std::collections::BTreeMap<String, crate::state::SavedFeed>,
    ) {
        if let Err(e) = self.state.save_feeds(feeds) {
            warn!("saving the feeds' state failed: {e:#}");
        }
    }

    async fn save_fleet(&self) {
        let saved = self.fleet.lock().await.saved();
        if let Err(e) = self.state.save_fleet(saved) {
            warn!("saving the fleet deny set failed: {e:#}; it holds until restart");
        }
    }

    /// Puts the saved fleet deny set back at start, keeping only holders
    /// still configured (`wanted`), and makes the kernel hold exactly it
    /// (pinned maps of an earlier run may hold more).
    pub async fn restore_fleet(
        &self,
        saved: Vec<SavedFleetEntry>,
        wanted: impl Fn(&Holder) -> bool,
    ) -> Result<(), MapsError> {
        let mut applied = SetApplied::default();
        let mut maps = self.maps().await;
        let mut set = self.fleet.lock().await;
        let mut dropped = 0usize;
        for entry in saved {
            match Holder::from_saved_name(&entry.holder).filter(|h| wanted(h)) {
                Some(holder) => {
                    let net = entry.net.trunc();
                    if hold(
                        &mut **maps,
                        &mut set,
                        &holder,
                        net,
                        &entry.detail,
                        &mut applied,
                    ) && entry.since_unix > 0
                    {
                        set.since.insert(net, entry.since_unix);
                    }
                }
                None => dropped += 1,
            }
        }
        let mut stale = 0;
        for net in maps.fleet_nets()? {
            if !set.nets.contains_key(&net) && maps.remove_fleet(net)? {
                stale += 1;
            }
        }
        if !set.is_empty() || dropped > 0 || stale > 0 {
            info!(
                "fleet deny set restored: {} networks in force, {dropped} saved entries of \
                 holders no longer configured left out, {stale} stale kernel entries removed",
                set.len()
            );
        }
        if applied.refused > 0 {
            warn!(
                "{} saved fleet networks do not fit (guard.max_fleet_cidrs)",
                applied.refused
            );
        }
        Ok(())
    }
}

/// " (words)", or nothing for a holder without words (a feed).
fn about(detail: &str) -> String {
    match detail.is_empty() {
        true => String::new(),
        false => format!(" ({detail})"),
    }
}

/// `holder` lets go of `net`; the kernel entry goes with its last holder.
fn let_go(
    maps: &mut dyn MapStore,
    set: &mut FleetSet,
    holder: &Holder,
    net: IpNet,
    applied: &mut SetApplied,
) -> bool {
    let Some(holders) = set.nets.get_mut(&net) else {
        return false;
    };
    if holders.remove(holder).is_none() {
        return false;
    }
    if holders.is_empty() {
        set.nets.remove(&net);
        set.since.remove(&net);
        match maps.remove_fleet(net) {
            Ok(_) => applied.removed += 1,
            Err(e) => warn!("removing {net} from the fleet deny set failed: {e}"),
        }
    }
    true
}

/// `holder` holds `net`; the kernel entry comes with its first holder.
fn hold(
    maps: &mut dyn MapStore,
    set: &mut FleetSet,
    holder: &Holder,
    net: IpNet,
    detail: &str,
    applied: &mut SetApplied,
) -> bool {
    if let Some(holders) = set.nets.get_mut(&net) {
        let old = holders.insert(holder.clone(), detail.to_string());
        return old.as_deref() != Some(detail);
    }
    match maps.insert_fleet(net) {
        Ok(()) => {
            applied.added += 1;
            let holders = BTreeMap::from([(holder.clone(), detail.to_string())]);
            set.nets.insert(net, holders);
            set.since.insert(net, unix_now());
            true
        }
        Err(MapsError::Full(_)) => {
            applied.refused += 1;
            false
        }
        Err(e) => {
            warn!("adding {net} to the fleet deny set failed: {e}");
            applied.refused += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_are_saved_by_name_and_read_back() {
        for holder in [Holder::Crowdsec, Holder::Feed("voipbl".into())] {
            assert_eq!(
                Holder::from_saved_name(&holder.saved_name()),
                Some(holder.clone())
            );
        }
        assert_eq!(Holder::from_saved_name("feed:"), None);
        assert_eq!(Holder::from_saved_name("other"), None);
    }

    #[test]
    fn a_network_names_every_holder() {
        let mut set = FleetSet::default();
        let net: IpNet = "203.0.113.0/24".parse().unwrap();
        set.nets.insert(
            net,
            BTreeMap::from([
                (Holder::Crowdsec, "test/range (origin cscli)".to_string()),
                (Holder::Feed("voipbl".into()), String::new()),
            ]),
        );
        assert_eq!(
            set.describe(&net).unwrap(),
            "crowdsec test/range (origin cscli); feed voipbl"
        );
        assert_eq!(set.held_by(&Holder::Crowdsec), vec![net]);
        assert_eq!(set.saved().len(), 2);
    }
}
