//! Fleet (CrowdSec) decisions as bans: the bouncer says what the LAPI
//! holds, the runtime puts it in force beside its own bans, with the same
//! details, counters and saving as every other ban.
//!
//! - Allow-listed networks (and `sip_auth.whitelist`) and learned peers
//!   (the PBX's own users: offices, trunks) are never dropped by a fleet
//!   decision: such decisions are counted and logged.
//! - A local ban (manual, rate-limit, SIP) on the same source is left as it
//!   is; a fleet decision never lifts a ban it did not make.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use guard_common::{BanEntry, BanReason, PeerEntry, SourceKey, NO_RULE};
use ipnet::IpNet;
use tracing::{info, warn};

use super::Runtime;
use crate::{
    clock,
    kernel::{
        bans,
        store::{MapStore, MapsError, NetList},
    },
};

/// Bans written per hold of the map lock, so a 100,000-decision start-up
/// never blocks the control socket or the SIP watcher for long.
const BATCH: usize = 4096;
/// From this many changes in one answer (a full sync), the active peers are
/// read once instead of looked up per decision.
const PEER_SNAPSHOT_FROM: usize = 1024;

/// The active peers, or None if the map cannot be read (then each source
/// is looked up on its own).
fn active_peers(maps: &dyn MapStore, now: u64) -> Option<HashMap<SourceKey, PeerEntry>> {
    let peers = maps.peers().ok()?;
    Some(
        peers
            .into_iter()
            .filter(|(_, p)| p.is_active(now))
            .collect(),
    )
}

/// A fleet decision to enforce on one ban-map key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetBan {
    pub key: SourceKey,
    /// Monotonic nanoseconds.
    pub expires_ns: u64,
    pub scenario: String,
    pub origin: String,
}

/// One change the fleet asks for, applied in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetChange {
    Ban(FleetBan),
    /// The fleet no longer holds this key (only a fleet ban is lifted).
    Lift(SourceKey),
}

/// What applying fleet decisions did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FleetApplied {
    pub enforced: u64,
    pub lifted: u64,
    pub allowlisted: u64,
    /// Decisions on learned peers (IP decisions not applied, ranges
    /// applied around them).
    pub peers_spared: u64,
    pub kept_local: u64,
}

/// What one decision did.
enum Outcome {
    /// The key, its detail, and whether the ban is new.
    Banned(SourceKey, String, bool),
    Lifted(SourceKey),
    Allowlisted,
    PeerSpared,
    KeptLocal,
    Nothing,
}

impl Runtime {
    /// The fleet bans in force (to find those the LAPI no longer holds).
    pub async fn fleet_bans_in_force(&self) -> super::Result<Vec<SourceKey>> {
        let bans = self.maps().await.active_bans(clock::monotonic_ns())?;
        Ok(bans
            .into_iter()
            .filter(|(_, ban)| ban.reason == BanReason::Crowdsec as u16)
            .map(|(key, _)| key)
            .collect())
    }

    /// Puts the fleet's decisions in force and lifts those it dropped
    /// (only bans the fleet made). `log_each`: log every change (a small
    /// answer) rather than only the totals the caller logs.
    pub async fn fleet_bans(&self, changes: &[FleetChange], log_each: bool) -> FleetApplied {
        let allowed = self.allowed_networks().await;
        let now = clock::monotonic_ns();
        let mut applied = FleetApplied::default();
        let mut details: Vec<(SourceKey, Option<String>)> = Vec::new();
        let mut record =
            |outcome: Result<Outcome, MapsError>, applied: &mut FleetApplied| match outcome {
                Ok(Outcome::Banned(key, detail, new)) => {
                    applied.enforced += 1;
                    if new {
                        self.counters.ban_created(BanReason::Crowdsec);
                    }
                    details.push((key, Some(detail)));
                }
                Ok(Outcome::Lifted(key)) => {
                    applied.lifted += 1;
                    details.push((key, None));
                }
                Ok(Outcome::Allowlisted) => applied.allowlisted += 1,
                Ok(Outcome::PeerSpared) => {
                    applied.peers_spared += 1;
                    let (origin, source) = super::fleet_set::Holder::Crowdsec.labels();
                    self.counters.fleet_peers_spared(origin, source, 1);
                }
                Ok(Outcome::KeptLocal) => applied.kept_local += 1,
                Ok(Outcome::Nothing) => {}
                Err(e) => warn!("applying a crowdsec decision failed: {e}"),
            };
        let mut peers = None;
        for batch in changes.chunks(BATCH) {
            let mut maps = self.maps().await;
            if peers.is_none() && changes.len() >= PEER_SNAPSHOT_FROM {
                peers = Some(active_peers(&**maps, now));
            }
            // One write of the drop sets' generation for the batch, not
            // one per ban (a full sync makes 100,000).
            maps.hold_ban_publication();
            for change in batch {
                let outcome = match change {
                    FleetChange::Ban(ban) => {
                        let known = peers.as_ref().and_then(|p| p.as_ref());
                        self.put_fleet_ban(&mut **maps, ban, &allowed, known, now, log_each)
                    }
                    FleetChange::Lift(key) => self.lift_fleet_ban(&mut **maps, key, log_each),
                };
                record(outcome, &mut applied);
            }
            if let Err(e) = maps.publish_bans() {
                warn!("publishing crowdsec bans to the XDP program's source cache failed: {e}");
            }
        }
        if !details.is_empty() {
            let lifted: Vec<SourceKey> = {
                let mut held = self.ban_details.lock().await;
                let lifted: Vec<SourceKey> = details
                    .iter()
                    .filter(|(_, detail)| detail.is_none())
                    .map(|(key, _)| *key)
                    .collect();
                for (key, detail) in details {
                    match detail {
                        Some(detail) => held.insert(key, detail),
                        None => held.remove(&key),
                    };
                }
                // A key banned again after its lift in this answer is in force.
                lifted
                    .into_iter()
                    .filter(|key| !held.contains_key(key))
                    .collect()
            };
            // A deleted decision must not come back from `bans.json` after a
            // reboot without the LAPI. Fleet bans themselves are not
            // journaled: the next full sync brings them back.
            self.journal_removals(&lifted).await;
            self.bans_changed.notify_one();
        }
        applied
    }

    /// `peers`: the active peers read at the start of a large batch, or
    /// None to look each source up.
    fn put_fleet_ban(
        &self,
        maps: &mut dyn MapStore,
        ban: &FleetBan,
        allowed: &AllowedNets,
        peers: Option<&HashMap<SourceKey, PeerEntry>>,
        now: u64,
        log_each: bool,
    ) -> Result<Outcome, MapsError> {
        let FleetBan {
            key,
            expires_ns,
            scenario,
            origin,
        } = ban;
        let shown = self.source_name(key);
        if let Some(allow) = allowed.overlap(&key_net(key, self.ipv6_ban_prefix)) {
            info!("crowdsec decision on {shown} ({scenario}) not applied: {allow} is allow-listed");
            return Ok(Outcome::Allowlisted);
        }
        // The kernel's peer map is the truth the XDP program sees.
        let peer = match peers {
            Some(peers) => peers.get(key).copied(),
            None => maps.peer(key)?.filter(|p| p.is_active(now)),
        };
        if let Some(peer) = peer {
            info!(
                "crowdsec decision on {shown} ({scenario}) not applied: a learned peer \
                 ({}, {} live registrations)",
                guard_common::PeerKind::from_u16(peer.kind).name(),
                peer.live_users
            );
            return Ok(Outcome::PeerSpared);
        }
        let fresh = BanEntry {
            expires_ns: *expires_ns,
            created_ns: now,
            reason: BanReason::Crowdsec as u16,
            rule: NO_RULE,
            ..BanEntry::default()
        };
        // Most decisions are new: one map call. Otherwise a local ban in
        // force stays, and a crowdsec one keeps its start and drop count.
        let existing = if maps.insert_new_ban(*key, fresh)? {
            None
        } else {
            let existing = maps.ban(key)?.filter(|b| b.is_active(now));
            if existing.is_some_and(|b| b.reason != BanReason::Crowdsec as u16) {
                return Ok(Outcome::KeptLocal);
            }
            let entry = BanEntry {
                created_ns: existing.map_or(now, |b| b.created_ns),
                dropped: existing.map_or(0, |b| b.dropped),
                ..fresh
            };
            maps.insert_ban(*key, entry)?;
            existing
        };
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

    fn lift_fleet_ban(
        &self,
        maps: &mut dyn MapStore,
        key: &SourceKey,
        log_each: bool,
    ) -> Result<Outcome, MapsError> {
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
                self.source_name(key)
            );
        }
        Ok(Outcome::Lifted(*key))
    }

    /// The networks a fleet decision must never drop.
    pub(super) async fn allowed_networks(&self) -> AllowedNets {
        let policy = self.policy().await;
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

    /// `sip_auth.whitelist` alone: unlike the allow list, the XDP program
    /// does not know it, so a fleet range must not cover any of it.
    pub(super) async fn sip_whitelist(&self) -> AllowedNets {
        let policy = self.policy().await;
        let nets = policy
            .live
            .config
            .sip_auth
            .whitelist
            .iter()
            .map(IpNet::trunc)
            .collect();
        AllowedNets { nets }
    }
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
pub(super) struct AllowedNets {
    nets: HashSet<IpNet>,
}

impl AllowedNets {
    /// An allowed network that `net` overlaps: one holding it (checked by
    /// each shorter prefix) or one inside it.
    pub(super) fn overlap(&self, net: &IpNet) -> Option<IpNet> {
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
        let key = crate::kernel::store::source_key("2001:db8:1:2::9".parse().unwrap(), 64);
        assert_eq!(key_net(&key, 64), "2001:db8:1:2::/64".parse().unwrap());
        let key = crate::kernel::store::source_key("192.0.2.9".parse().unwrap(), 64);
        assert_eq!(key_net(&key, 64), "192.0.2.9/32".parse().unwrap());
    }
}
