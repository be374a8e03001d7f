//! The guard's maps kept in memory, for host unit tests of the runtime's
//! operations (no root, no kernel). They hold what the kernel's would after
//! the same operations; the kernel's own behaviour (verdicts, counting) is
//! tested against the real program elsewhere.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
};

use guard_common::{BanEntry, Counter, PeerEntry, RateKey, RateState, Reason, Settings, SourceKey};
use ipnet::IpNet;

use super::store::{MapStore, MapsError, NetList, Result};
use crate::policy::compile::CompiledPolicy;

/// What one policy slot holds: the tables the kernel's slot would.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotTables {
    pub services: Vec<(u8, guard_common::ServicePolicy)>,
    pub rules: Vec<guard_common::RateRule>,
    pub ports: Vec<(u32, guard_common::PortClass)>,
}

/// A handle on maps kept in memory: the runtime holds one, the test a
/// clone, to look at them and to make them fail.
#[derive(Debug, Clone, Default)]
pub struct FakeMaps(Arc<Mutex<FakeState>>);

#[derive(Debug, Default)]
pub struct FakeState {
    pub settings: Settings,
    pub bans: HashMap<SourceKey, BanEntry>,
    pub windows: HashMap<RateKey, RateState>,
    pub peers: HashMap<SourceKey, PeerEntry>,
    pub lists: HashMap<NetList, BTreeMap<IpNet, u32>>,
    /// The fleet deny set.
    pub fleet: BTreeMap<IpNet, ()>,
    /// Entries the fleet deny set takes before it is full (None: no limit).
    pub fleet_capacity: Option<usize>,
    pub slots: [SlotTables; 2],
    pub verdicts: [Counter; Reason::COUNT],
    /// Entries a list takes before it is full (None: no limit).
    pub list_capacity: Option<usize>,
    /// When set, writing a policy slot fails (a kernel that refuses).
    pub refuse_policy: bool,
    /// Policy slot writes so far.
    pub slot_writes: usize,
}

impl FakeMaps {
    /// Maps as the kernel's are after `sync_policy(policy)` on new maps.
    pub fn with_policy(policy: &CompiledPolicy) -> FakeMaps {
        let mut maps = FakeMaps::default();
        maps.sync_policy(policy)
            .expect("in-memory maps take any policy");
        maps
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding it fails anyway.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MapStore for FakeMaps {
    fn settings(&self) -> Result<Settings> {
        Ok(self.state().settings)
    }

    fn write_settings(&mut self, settings: Settings) -> Result<()> {
        self.state().settings = settings;
        Ok(())
    }

    fn ban(&self, source: &SourceKey) -> Result<Option<BanEntry>> {
        Ok(self.state().bans.get(source).copied())
    }

    fn insert_ban(&mut self, source: SourceKey, entry: BanEntry) -> Result<()> {
        self.state().bans.insert(source, entry);
        Ok(())
    }

    fn insert_new_ban(&mut self, source: SourceKey, entry: BanEntry) -> Result<bool> {
        let mut state = self.state();
        if state.bans.contains_key(&source) {
            return Ok(false);
        }
        state.bans.insert(source, entry);
        Ok(true)
    }

    fn remove_ban(&mut self, source: &SourceKey) -> Result<bool> {
        Ok(self.state().bans.remove(source).is_some())
    }

    fn bans(&self) -> Result<Vec<(SourceKey, BanEntry)>> {
        Ok(self.state().bans.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn rate_state(&self, key: &RateKey) -> Result<Option<RateState>> {
        Ok(self.state().windows.get(key).copied())
    }

    fn peer(&self, source: &SourceKey) -> Result<Option<PeerEntry>> {
        Ok(self.state().peers.get(source).copied())
    }

    fn insert_peer(&mut self, source: SourceKey, entry: PeerEntry) -> Result<()> {
        self.state().peers.insert(source, entry);
        Ok(())
    }

    fn remove_peer(&mut self, source: &SourceKey) -> Result<bool> {
        Ok(self.state().peers.remove(source).is_some())
    }

    fn peers(&self) -> Result<Vec<(SourceKey, PeerEntry)>> {
        Ok(self.state().peers.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn nets(&self, list: NetList) -> Result<Vec<IpNet>> {
        Ok(self
            .state()
            .lists
            .get(&list)
            .map(|l| l.keys().copied().collect())
            .unwrap_or_default())
    }

    fn insert_net(&mut self, list: NetList, net: IpNet, value: u32) -> Result<()> {
        let mut state = self.state();
        let capacity = state.list_capacity;
        let entries = state.lists.entry(list).or_default();
        let full = capacity.is_some_and(|cap| entries.len() >= cap && !entries.contains_key(&net));
        if full {
            return Err(MapsError::Full(list.name()));
        }
        entries.insert(net, value);
        Ok(())
    }

    fn remove_net(&mut self, list: NetList, net: IpNet) -> Result<()> {
        self.state().lists.entry(list).or_default().remove(&net);
        Ok(())
    }

    fn fleet_nets(&self) -> Result<Vec<IpNet>> {
        Ok(self.state().fleet.keys().copied().collect())
    }

    fn insert_fleet(&mut self, net: IpNet) -> Result<()> {
        let mut state = self.state();
        let full = state
            .fleet_capacity
            .is_some_and(|cap| state.fleet.len() >= cap && !state.fleet.contains_key(&net));
        if full {
            return Err(MapsError::Full("fleet deny set"));
        }
        state.fleet.insert(net, ());
        Ok(())
    }

    fn remove_fleet(&mut self, net: IpNet) -> Result<bool> {
        Ok(self.state().fleet.remove(&net).is_some())
    }

    fn fleet_match(&self, ip: std::net::IpAddr) -> Result<Option<IpNet>> {
        let ip = ip.to_canonical();
        Ok(self
            .state()
            .fleet
            .keys()
            .filter(|net| net.contains(&ip))
            .max_by_key(|net| net.prefix_len())
            .copied())
    }

    fn write_policy_slot(&mut self, slot: u8, policy: &CompiledPolicy) -> Result<()> {
        let mut state = self.state();
        if state.refuse_policy {
            return Err(MapsError::Full("RULES"));
        }
        policy.sip_table().map_err(MapsError::Patterns)?;
        state.slot_writes += 1;
        state.slots[slot as usize & 1] = SlotTables {
            services: policy.services.clone(),
            rules: policy.rules.clone(),
            ports: policy.ports.clone(),
        };
        Ok(())
    }

    fn verdicts(&self) -> Result<[Counter; Reason::COUNT]> {
        Ok(self.state().verdicts)
    }
}
