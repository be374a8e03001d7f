//! The guard's maps as the operations the runtime needs (bans, lists,
//! policy slots, settings, counters), whoever holds them: the kernel's
//! ([`super::maps::KernelMaps`]) or, in host unit tests, maps kept in memory
//! (`super::fake::FakeMaps`). How a policy is switched in (slot, lists,
//! one settings write) is written once, here, for both.
use std::net::IpAddr;

use guard_common::{BanEntry, Counter, PeerEntry, RateKey, RateState, Reason, Settings, SourceKey};
use ipnet::IpNet;

use crate::policy::compile::CompiledPolicy;

/// The ban-map key of an address: IPv4-mapped, or its IPv6 prefix.
pub fn source_key(ip: IpAddr, ipv6_prefix: u8) -> SourceKey {
    match ip.to_canonical() {
        IpAddr::V4(v4) => SourceKey::from_ipv4(v4.octets()),
        IpAddr::V6(v6) => SourceKey::from_ipv6(v6.octets(), ipv6_prefix),
    }
}

/// The allow list or the deny list (each an IPv4 and an IPv6 trie).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetList {
    Allow,
    Deny,
}

impl NetList {
    pub fn name(self) -> &'static str {
        match self {
            NetList::Allow => "allow",
            NetList::Deny => "deny",
        }
    }
}

/// Why a map operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// The kernel refused a map operation (`what` says which).
    #[error("{what}: {cause}")]
    Map {
        what: String,
        cause: aya::maps::MapError,
    },
    /// The program lacks a map, or a map has another type than this
    /// controller expects (another build's program).
    #[error("{0}")]
    Layout(String),
    /// Finding or reopening the maps failed.
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    /// The policy's scanner fingerprints or SIP rules do not make a table.
    #[error("SIP table: {0}")]
    Patterns(String),
    /// A map has no room for another entry.
    #[error("the {0} map is full")]
    Full(&'static str),
    /// A key read back from the kernel makes no prefix.
    #[error("the {0} list holds a key that is no network")]
    BadKey(&'static str),
}

impl MapsError {
    pub(crate) fn map(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> MapsError {
        let what = what.into();
        move |cause| MapsError::Map { what, cause }
    }
}

pub type Result<T, E = MapsError> = std::result::Result<T, E>;

/// What the runtime does with the guard's maps. One implementation talks
/// to the kernel; a test one keeps them in memory, so every runtime
/// operation can be tested on the host without root.
pub trait MapStore: Send {
    fn settings(&self) -> Result<Settings>;
    /// One array slot: the next packet sees either the old or the new settings.
    fn write_settings(&mut self, settings: Settings) -> Result<()>;

    /// The ban-map entry of `source` (expired or not).
    fn ban(&self, source: &SourceKey) -> Result<Option<BanEntry>>;
    fn insert_ban(&mut self, source: SourceKey, entry: BanEntry) -> Result<()>;
    /// Inserts unless the map holds an entry for `source` (expired or
    /// not): false then, and nothing changed. One map call where a read
    /// and a write would be two (a fleet's full sync makes 100,000 bans).
    fn insert_new_ban(&mut self, source: SourceKey, entry: BanEntry) -> Result<bool>;
    /// Whether there was a ban to remove.
    fn remove_ban(&mut self, source: &SourceKey) -> Result<bool>;
    /// Holds back, until [`MapStore::publish_bans`], what each ban made
    /// tells the XDP program's source cache (a write of the drop sets'
    /// generation per ban), for a batch of many: one write for the batch.
    /// Until then a source the program cached as clear passes despite a
    /// new ban. Without a cache (the default), nothing is held.
    fn hold_ban_publication(&mut self) {}
    /// Publishes the bans made since [`MapStore::hold_ban_publication`]
    /// and stops holding them back.
    fn publish_bans(&mut self) -> Result<()> {
        Ok(())
    }
    /// Every entry of the ban map, expired ones included.
    fn bans(&self) -> Result<Vec<(SourceKey, BanEntry)>>;

    /// The rate windows of `(source, rule group)`, if the kernel keeps them.
    fn rate_state(&self, key: &RateKey) -> Result<Option<RateState>>;

    /// The peer-map entry of `source` (expired or not).
    fn peer(&self, source: &SourceKey) -> Result<Option<PeerEntry>>;
    fn insert_peer(&mut self, source: SourceKey, entry: PeerEntry) -> Result<()>;
    /// Whether there was a peer to remove.
    fn remove_peer(&mut self, source: &SourceKey) -> Result<bool>;
    /// Every entry of the peer map, expired ones included.
    fn peers(&self) -> Result<Vec<(SourceKey, PeerEntry)>>;

    /// The prefixes a list holds.
    fn nets(&self, list: NetList) -> Result<Vec<IpNet>>;
    /// Adds (or replaces) `net` with `value`: the services mask for the
    /// allow list, unused (0) for the deny list.
    fn insert_net(&mut self, list: NetList, net: IpNet, value: u32) -> Result<()>;
    fn remove_net(&mut self, list: NetList, net: IpNet) -> Result<()>;

    /// The networks the fleet deny set holds.
    fn fleet_nets(&self) -> Result<Vec<IpNet>>;
    /// Adds `net` to the fleet deny set ([`MapsError::Full`] when full).
    fn insert_fleet(&mut self, net: IpNet) -> Result<()>;
    /// Whether there was such an entry to remove.
    fn remove_fleet(&mut self, net: IpNet) -> Result<bool>;
    /// The fleet deny set's longest network holding `ip`.
    fn fleet_match(&self, ip: IpAddr) -> Result<Option<IpNet>>;

    /// Writes `policy`'s port, service, rule and scanner tables into policy
    /// slot `slot` (the one not in force).
    fn write_policy_slot(&mut self, slot: u8, policy: &CompiledPolicy) -> Result<()>;

    /// Verdict counters summed over CPUs and services, indexed like [`Reason::ALL`].
    fn verdicts(&self) -> Result<[Counter; Reason::COUNT]>;

    /// The bans in force at `now_ns` (expired ones wait for the sweeper).
    fn active_bans(&self, now_ns: u64) -> Result<Vec<(SourceKey, BanEntry)>> {
        let mut bans = self.bans()?;
        bans.retain(|(_, ban)| ban.is_active(now_ns));
        Ok(bans)
    }

    /// Makes the maps hold exactly `policy`, whether they are new or an
    /// earlier run's. The port, service and rule tables are written into the
    /// policy slot not in force, then one write of `SETTINGS` switches to it:
    /// a packet sees the old policy or the new one, never a mix. Allow and
    /// deny entries are added before the switch and stale ones removed
    /// after it. Bans, rate state and counters are left alone.
    fn sync_policy(&mut self, policy: &CompiledPolicy) -> Result<()> {
        let next = self.settings().map_or(0, |s| s.policy_slot & 1) ^ 1;
        self.write_policy_slot(next, policy)?;
        let allow: Vec<(IpNet, u32)> = policy.allow.clone();
        let deny: Vec<(IpNet, u32)> = policy.deny.iter().map(|net| (*net, 0)).collect();
        for (list, wanted) in [(NetList::Allow, &allow), (NetList::Deny, &deny)] {
            for (net, value) in wanted {
                self.insert_net(list, *net, *value)?;
            }
        }
        self.write_settings(Settings {
            policy_slot: next,
            ..policy.settings
        })?;
        for (list, wanted) in [(NetList::Allow, &allow), (NetList::Deny, &deny)] {
            for net in self.nets(list)? {
                if !wanted.iter().any(|(w, _)| *w == net) {
                    self.remove_net(list, net)?;
                }
            }
        }
        Ok(())
    }
}
