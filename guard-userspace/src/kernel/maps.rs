//! Typed access to the XDP program's maps, from the program just loaded or
//! from one already running (found by its program id).
use std::net::IpAddr;
use std::os::fd::AsFd;

use aya::maps::{
    lpm_trie::Key as LpmKey, Array, HashMap, IterableMap, LpmTrie, Map, MapData, MapError,
    PerCpuArray, RingBuf,
};
use guard_common::{
    map_names as names, policy_rule_index, policy_service_index,
    sip_rules::{SipPermit, DIAL_KEY_BYTES, PERMIT_KEY_BYTES},
    sip_scan::{PatternTable, ScanStatus},
    BanEntry, Counter, Health, PeerEntry, PortClass, RateKey, RateRule, RateState, Reason,
    RuleCounter, RulesPerCpu, ServicePolicy, Settings, SourceKey, DROP_GENERATION_CONTROLLER_STEP,
    MAX_RATE_RULES, POLICY_SLOTS, PORT_SLOTS, SERVICE_SLOTS,
};
use ipnet::IpNet;

use super::store::Result;
pub use super::store::{source_key, MapStore, MapsError, NetList};
use crate::policy::compile::CompiledPolicy;

type Trie4 = LpmTrie<MapData, [u8; 4], u32>;
type Trie6 = LpmTrie<MapData, [u8; 16], u32>;

/// A missing key reads as None, whichever way aya reports it.
/// bpf_map_update_elem's flag: fail if the key exists (linux/bpf.h).
const BPF_NOEXIST: u64 = 1;

fn absent_as_none<T>(found: Result<T, MapError>, what: &str) -> Result<Option<T>> {
    match found {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(None)
        }
        Err(cause) => Err(MapsError::Map {
            what: what.to_string(),
            cause,
        }),
    }
}

pub struct KernelMaps {
    bans: HashMap<MapData, SourceKey, BanEntry>,
    deny_v4: Trie4,
    deny_v6: Trie6,
    allow_v4: Trie4,
    allow_v6: Trie6,
    /// The fleet deny set (CrowdSec ranges, feeds); see `runtime::fleet_set`.
    fleet_v4: Trie4,
    fleet_v6: Trie6,
    /// Per family (0: IPv4, 1: IPv6), non-zero while its fleet trie may
    /// hold an entry: the XDP program searches the trie only then.
    fleet_in_use: Array<MapData, u32>,
    /// The allow lists' generation: bumped after every change of an allow
    /// list or of the policy (see `guard_common::SourceCacheEntry`: the
    /// XDP program caches IPv4 sources' allow answers under it).
    allow_generation: Array<MapData, u32>,
    /// The drop sets' generation: bumped after every entry made in the
    /// ban, deny or fleet sets (see
    /// `guard_common::SourceCacheEntry`: the XDP program caches IPv4
    /// sources found in none of them under it).
    drop_generation: Array<MapData, u64>,
    /// Bans made while publication is held ([`MapStore::hold_ban_publication`]):
    /// `Some(true)` once one awaits its bump of `drop_generation`.
    held_bans: Option<bool>,
    ports: Array<MapData, PortClass>,
    services: Array<MapData, ServicePolicy>,
    rules: Array<MapData, RateRule>,
    settings: Array<MapData, Settings>,
    rate_state: HashMap<MapData, RateKey, RateState>,
    /// Learned peers (written by the controller, read by the rate step).
    peers: HashMap<MapData, SourceKey, PeerEntry>,
    verdicts: PerCpuArray<MapData, Counter>,
    rules_per_cpu: PerCpuArray<MapData, RulesPerCpu>,
    health: PerCpuArray<MapData, u64>,
    /// Scanner fingerprints, one table per policy slot.
    sip_patterns: Array<MapData, PatternTable>,
    /// SIP requests the kernel read, by outcome.
    sip_scans: PerCpuArray<MapData, u64>,
    /// The SIP rules' permit networks and dial prefixes, per policy slot.
    sip_permit: LpmTrie<MapData, [u8; PERMIT_KEY_BYTES], SipPermit>,
    sip_dial: LpmTrie<MapData, [u8; DIAL_KEY_BYTES], u32>,
    /// Taken by whoever reads ban events (there is one reader).
    ban_events: Option<RingBuf<MapData>>,
    /// Taken by the SIP watcher.
    sip_events: Option<RingBuf<MapData>>,
}

impl std::fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelMaps")
    }
}

fn typed<T>(take: &mut impl FnMut(&str) -> Option<Map>, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = take(name)
        .ok_or_else(|| MapsError::Layout(format!("the XDP program has no map {name}")))?;
    T::try_from(map)
        .map_err(|e| MapsError::Layout(format!("map {name} has an unexpected type: {e}")))
}

fn optional<T>(take: &mut impl FnMut(&str) -> Option<Map>, name: &str) -> Result<Option<T>>
where
    T: TryFrom<Map, Error = MapError>,
{
    take(name)
        .map(|map| {
            T::try_from(map)
                .map_err(|e| MapsError::Layout(format!("map {name} has an unexpected type: {e}")))
        })
        .transpose()
}

impl KernelMaps {
    /// Builds from a source of maps by name (`Ebpf::take_map`, or maps found by id).
    pub fn from_source(mut take: impl FnMut(&str) -> Option<Map>) -> Result<KernelMaps> {
        let t = &mut take;
        Ok(KernelMaps {
            bans: typed(t, names::BANS)?,
            deny_v4: typed(t, names::DENY_V4)?,
            deny_v6: typed(t, names::DENY_V6)?,
            allow_v4: typed(t, names::ALLOW_V4)?,
            allow_v6: typed(t, names::ALLOW_V6)?,
            fleet_v4: typed(t, names::FLEET_V4)?,
            fleet_v6: typed(t, names::FLEET_V6)?,
            fleet_in_use: typed(t, names::FLEET_IN_USE)?,
            allow_generation: typed(t, names::ALLOW_GENERATION)?,
            drop_generation: typed(t, names::DROP_GENERATION)?,
            held_bans: None,
            ports: typed(t, names::PORTS)?,
            services: typed(t, names::SERVICES)?,
            rules: typed(t, names::RULES)?,
            settings: typed(t, names::SETTINGS)?,
            rate_state: typed(t, names::RATE_STATE)?,
            peers: typed(t, names::PEERS)?,
            verdicts: typed(t, names::VERDICTS)?,
            rules_per_cpu: typed(t, names::RULES_PER_CPU)?,
            health: typed(t, names::HEALTH)?,
            sip_patterns: typed(t, names::SIP_PATTERNS)?,
            sip_scans: typed(t, names::SIP_SCANS)?,
            sip_permit: typed(t, names::SIP_PERMIT)?,
            sip_dial: typed(t, names::SIP_DIAL)?,
            // Only the daemon reads the rings; an inspector opening the maps
            // by program id may not find them (the capture programs own SIP_EVENTS).
            ban_events: optional(t, names::BAN_EVENTS)?,
            sip_events: optional(t, names::SIP_EVENTS)?,
        })
    }

    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<KernelMaps> {
        KernelMaps::from_source(|name| ebpf.take_map(name))
    }

    /// The maps of a loaded program, by its id (as `bpftool prog` shows it).
    pub fn from_program_id(program_id: u32) -> Result<KernelMaps> {
        let info = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .find(|p| p.id() == program_id)
            .ok_or_else(|| MapsError::Layout(format!("no BPF program with id {program_id}")))?;
        let ids = info
            .map_ids()
            .map_err(|e| MapsError::Layout(format!("reading the program's map ids: {e}")))?
            .ok_or_else(|| MapsError::Layout("the kernel does not report map ids".into()))?;
        let mut found = Vec::new();
        for id in ids {
            let data = MapData::from_id(id).map_err(MapsError::map(format!("opening map {id}")))?;
            let name = data
                .info()
                .ok()
                .and_then(|i| i.name_as_str().map(str::to_owned))
                .unwrap_or_default();
            let map = Map::from_map_data(data).map_err(MapsError::map(format!("map {id}")))?;
            found.push((name, map));
        }
        KernelMaps::from_source(|wanted| {
            // The kernel keeps 15 characters of a map name.
            let short = &wanted[..wanted.len().min(15)];
            let i = found.iter().position(|(name, _)| name == short)?;
            Some(found.swap_remove(i).1)
        })
    }

    /// A second set of handles on the same kernel maps (duplicated fds), for
    /// a reader that must not share the owner's lock, such as the metrics.
    /// Needs no privilege beyond holding these maps (unlike opening by id).
    /// The rings stay with this set.
    pub fn reopen(&self) -> Result<KernelMaps> {
        let mut found: Vec<(&str, Map)> = Vec::new();
        let mut add = |name: &'static str, data: &MapData| -> Result<()> {
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|cause| MapsError::Io {
                    what: format!("duplicating the fd of {name}"),
                    cause,
                })?;
            let data = MapData::from_fd(fd).map_err(MapsError::map(format!("reopening {name}")))?;
            let map =
                Map::from_map_data(data).map_err(MapsError::map(format!("reopening {name}")))?;
            found.push((name, map));
            Ok(())
        };
        add(names::BANS, self.bans.map())?;
        add(names::DENY_V4, self.deny_v4.map())?;
        add(names::DENY_V6, self.deny_v6.map())?;
        add(names::ALLOW_V4, self.allow_v4.map())?;
        add(names::ALLOW_V6, self.allow_v6.map())?;
        add(names::FLEET_V4, self.fleet_v4.map())?;
        add(names::FLEET_V6, self.fleet_v6.map())?;
        add(names::FLEET_IN_USE, self.fleet_in_use.map())?;
        add(names::ALLOW_GENERATION, self.allow_generation.map())?;
        add(names::DROP_GENERATION, self.drop_generation.map())?;
        add(names::PORTS, self.ports.map())?;
        add(names::SERVICES, self.services.map())?;
        add(names::RULES, self.rules.map())?;
        add(names::SETTINGS, self.settings.map())?;
        add(names::RATE_STATE, self.rate_state.map())?;
        add(names::PEERS, self.peers.map())?;
        add(names::VERDICTS, self.verdicts.map())?;
        add(names::RULES_PER_CPU, self.rules_per_cpu.map())?;
        add(names::HEALTH, self.health.map())?;
        add(names::SIP_PATTERNS, self.sip_patterns.map())?;
        add(names::SIP_SCANS, self.sip_scans.map())?;
        add(names::SIP_PERMIT, self.sip_permit.map())?;
        add(names::SIP_DIAL, self.sip_dial.map())?;
        KernelMaps::from_source(|wanted| {
            let i = found.iter().position(|(name, _)| *name == wanted)?;
            Some(found.swap_remove(i).1)
        })
    }

    /// Makes the maps hold exactly `policy` (see [`MapStore::sync_policy`]).
    pub fn sync_policy(&mut self, policy: &CompiledPolicy) -> Result<()> {
        MapStore::sync_policy(self, policy)
    }

    /// Service `id`'s policy in policy slot `slot`.
    pub fn service_in(&self, slot: u8, id: u8) -> Result<ServicePolicy> {
        self.services
            .get(&policy_service_index(slot, id), 0)
            .map_err(MapsError::map("reading SERVICES"))
    }

    /// Rate rule `i` in policy slot `slot`.
    pub fn rule_in(&self, slot: u8, i: u32) -> Result<RateRule> {
        self.rules
            .get(&policy_rule_index(slot, i), 0)
            .map_err(MapsError::map("reading RULES"))
    }

    /// The class of port slot `index` (protocol and port) in policy slot `slot`.
    pub fn port_in(&self, slot: u8, index: u32) -> Result<PortClass> {
        self.ports
            .get(&(slot as u32 * PORT_SLOTS + index), 0)
            .map_err(MapsError::map("reading PORTS"))
    }

    fn write_policy_slot(&mut self, slot: u8, policy: &CompiledPolicy) -> Result<()> {
        let mut rules = vec![RateRule::default(); MAX_RATE_RULES];
        rules[..policy.rules.len()].copy_from_slice(&policy.rules);
        for (i, rule) in rules.iter().enumerate() {
            self.rules
                .set(policy_rule_index(slot, i as u32), rule, 0)
                .map_err(MapsError::map("writing RULES"))?;
        }
        // Unused ids hold what a new map holds (zeros); no port points at them.
        let mut services = vec![ServicePolicy { access: 0 }; SERVICE_SLOTS as usize];
        for (id, service) in &policy.services {
            services[*id as usize] = *service;
        }
        for (id, service) in services.iter().enumerate() {
            self.services
                .set(policy_service_index(slot, id as u8), service, 0)
                .map_err(MapsError::map("writing SERVICES"))?;
        }
        let mut ports = vec![PortClass::UNCLASSIFIED; PORT_SLOTS as usize];
        for (index, class) in &policy.ports {
            ports[*index as usize] = *class;
        }
        let base = slot as u32 * PORT_SLOTS;
        for (index, class) in ports.iter().enumerate() {
            // Reading first skips most of the ~131k writes.
            let index = base + index as u32;
            if self.ports.get(&index, 0).ok().as_ref() != Some(class) {
                self.ports
                    .set(index, class, 0)
                    .map_err(MapsError::map("writing PORTS"))?;
            }
        }
        self.write_sip_rules(slot, policy)?;
        let table = policy.sip_table().map_err(MapsError::Patterns)?;
        self.sip_patterns
            .set(slot as u32, *table, 0)
            .map_err(MapsError::map("writing SIP_PATTERNS"))
    }

    /// Makes policy slot `slot`'s keys of the permit and dial tries
    /// exactly `policy`'s (the slot is not in force: no packet reads them).
    fn write_sip_rules(&mut self, slot: u8, policy: &CompiledPolicy) -> Result<()> {
        let permits = policy.sip_rules.permit_keys(slot);
        let mut stale = Vec::new();
        for key in self.sip_permit.keys() {
            let key = key.map_err(MapsError::map("reading SIP_PERMIT"))?;
            let data = key.data();
            let wanted = permits
                .iter()
                .any(|(len, d, _)| *len == key.prefix_len() && *d == data);
            if data[0] == slot && !wanted {
                stale.push(LpmKey::new(key.prefix_len(), data));
            }
        }
        for key in &stale {
            absent_as_none(self.sip_permit.remove(key), "clearing SIP_PERMIT")?;
        }
        for (len, data, permit) in &permits {
            self.sip_permit
                .insert(&LpmKey::new(*len, *data), permit, 0)
                .map_err(MapsError::map("writing SIP_PERMIT"))?;
        }
        let dials = policy.sip_rules.dial_keys(slot);
        let mut stale = Vec::new();
        for key in self.sip_dial.keys() {
            let key = key.map_err(MapsError::map("reading SIP_DIAL"))?;
            let data = key.data();
            let wanted = dials
                .iter()
                .any(|(len, d, _)| *len == key.prefix_len() && *d == data);
            if data[0] == slot && !wanted {
                stale.push(LpmKey::new(key.prefix_len(), data));
            }
        }
        for key in &stale {
            absent_as_none(self.sip_dial.remove(key), "clearing SIP_DIAL")?;
        }
        for (len, data, rule) in &dials {
            self.sip_dial
                .insert(&LpmKey::new(*len, *data), rule, 0)
                .map_err(MapsError::map("writing SIP_DIAL"))?;
        }
        Ok(())
    }

    /// The prefixes a list holds in the kernel.
    pub fn nets(&self, list: NetList) -> Result<Vec<IpNet>> {
        let name = list.name();
        let what = || format!("reading the {name} list");
        let (v4, v6) = match list {
            NetList::Allow => (&self.allow_v4, &self.allow_v6),
            NetList::Deny => (&self.deny_v4, &self.deny_v6),
        };
        let mut nets = Vec::new();
        for key in v4.keys() {
            let key = key.map_err(MapsError::map(what()))?;
            let net = ipnet::Ipv4Net::new(key.data().into(), key.prefix_len() as u8)
                .map_err(|_| MapsError::BadKey(name))?;
            nets.push(IpNet::V4(net));
        }
        for key in v6.keys() {
            let key = key.map_err(MapsError::map(what()))?;
            let net = ipnet::Ipv6Net::new(key.data().into(), key.prefix_len() as u8)
                .map_err(|_| MapsError::BadKey(name))?;
            nets.push(IpNet::V6(net));
        }
        Ok(nets)
    }

    /// The IPv4 and IPv6 tries of one list.
    fn tries(&mut self, list: NetList) -> (&mut Trie4, &mut Trie6) {
        match list {
            NetList::Allow => (&mut self.allow_v4, &mut self.allow_v6),
            NetList::Deny => (&mut self.deny_v4, &mut self.deny_v6),
        }
    }

    /// Adds (or replaces) `net` with `value`: the services mask for the
    /// allow list, unused (0) for the deny list.
    pub fn insert_net(&mut self, list: NetList, net: IpNet, value: u32) -> Result<()> {
        let what = format!("adding {net} to the {} list", list.name());
        let (v4, v6) = self.tries(list);
        match net {
            IpNet::V4(n) => v4.insert(
                &LpmKey::new(n.prefix_len() as u32, n.network().octets()),
                value,
                0,
            ),
            IpNet::V6(n) => v6.insert(
                &LpmKey::new(n.prefix_len() as u32, n.network().octets()),
                value,
                0,
            ),
        }
        .map_err(MapsError::map(what))?;
        match list {
            NetList::Allow => self.bump_allow_generation(),
            NetList::Deny => self.bump_drop_generation(),
        }
    }

    pub fn remove_net(&mut self, list: NetList, net: IpNet) -> Result<()> {
        let what = format!("removing {net} from the {} list", list.name());
        let (v4, v6) = self.tries(list);
        match net {
            IpNet::V4(n) => v4.remove(&LpmKey::new(n.prefix_len() as u32, n.network().octets())),
            IpNet::V6(n) => v6.remove(&LpmKey::new(n.prefix_len() as u32, n.network().octets())),
        }
        .map_err(MapsError::map(what))?;
        if list == NetList::Allow {
            self.bump_allow_generation()?;
        }
        Ok(())
    }

    /// Adds `net` to the fleet deny set (its value: the prefix length,
    /// see `guard_common::FleetEntry`).
    pub fn insert_fleet(&mut self, net: IpNet) -> Result<()> {
        let len = net.prefix_len() as u32;
        // Marked in use first, so that the entry is searched from the
        // moment it is in the trie.
        self.mark_fleet_in_use(&net, true)?;
        let inserted = match net {
            IpNet::V4(n) => self
                .fleet_v4
                .insert(&LpmKey::new(len, n.network().octets()), len, 0),
            IpNet::V6(n) => self
                .fleet_v6
                .insert(&LpmKey::new(len, n.network().octets()), len, 0),
        };
        match inserted {
            Ok(()) => self.bump_drop_generation(),
            // An LPM trie at max_entries refuses with ENOSPC.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOSPC) => {
                Err(MapsError::Full("fleet deny set"))
            }
            Err(cause) => Err(MapsError::Map {
                what: format!("adding {net} to the fleet deny set"),
                cause,
            }),
        }
    }

    /// Removes `net` from the fleet deny set; false if it was not there.
    pub fn remove_fleet(&mut self, net: IpNet) -> Result<bool> {
        let len = net.prefix_len() as u32;
        let removed = match net {
            IpNet::V4(n) => self
                .fleet_v4
                .remove(&LpmKey::new(len, n.network().octets())),
            IpNet::V6(n) => self
                .fleet_v6
                .remove(&LpmKey::new(len, n.network().octets())),
        };
        let removed =
            absent_as_none(removed, "removing from the fleet deny set").map(|r| r.is_some())?;
        let now_empty = match net {
            IpNet::V4(_) => self.fleet_v4.keys().next().is_none(),
            IpNet::V6(_) => self.fleet_v6.keys().next().is_none(),
        };
        if now_empty {
            self.mark_fleet_in_use(&net, false)?;
        }
        Ok(removed)
    }

    /// Sets the in-use flag of `net`'s family (see `fleet_in_use`).
    fn mark_fleet_in_use(&mut self, net: &IpNet, in_use: bool) -> Result<()> {
        let family = match net {
            IpNet::V4(_) => 0,
            IpNet::V6(_) => 1,
        };
        self.fleet_in_use
            .set(family, u32::from(in_use), 0)
            .map_err(MapsError::map(format!(
                "marking the fleet deny set's {} entries in use",
                if family == 0 { "IPv4" } else { "IPv6" }
            )))
    }

    /// The networks the fleet deny set holds in the kernel.
    pub fn fleet_nets(&self) -> Result<Vec<IpNet>> {
        let what = || "reading the fleet deny set".to_string();
        let bad = |_| MapsError::BadKey("fleet");
        let mut nets = Vec::new();
        for key in self.fleet_v4.keys() {
            let key = key.map_err(MapsError::map(what()))?;
            let net =
                ipnet::Ipv4Net::new(key.data().into(), key.prefix_len() as u8).map_err(bad)?;
            nets.push(IpNet::V4(net));
        }
        for key in self.fleet_v6.keys() {
            let key = key.map_err(MapsError::map(what()))?;
            let net =
                ipnet::Ipv6Net::new(key.data().into(), key.prefix_len() as u8).map_err(bad)?;
            nets.push(IpNet::V6(net));
        }
        Ok(nets)
    }

    /// The fleet deny set's (longest) network holding `ip`, as the XDP
    /// program finds it.
    pub fn fleet_match(&self, ip: IpAddr) -> Result<Option<IpNet>> {
        let ip = ip.to_canonical();
        let found = match ip {
            IpAddr::V4(v4) => self.fleet_v4.get(&LpmKey::new(32, v4.octets()), 0),
            IpAddr::V6(v6) => self.fleet_v6.get(&LpmKey::new(128, v6.octets()), 0),
        };
        let len = absent_as_none(found, "reading the fleet deny set")?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        Ok(len.and_then(|len| IpNet::new(ip, len.min(max) as u8).ok().map(|n| n.trunc())))
    }

    pub fn settings(&self) -> Result<Settings> {
        self.settings
            .get(&0, 0)
            .map_err(MapsError::map("reading SETTINGS"))
    }

    /// One array slot: the next packet sees either the old or the new
    /// settings (a policy slot switch among them: the allow answers cached
    /// under the old one are searched again).
    pub fn write_settings(&mut self, settings: Settings) -> Result<()> {
        self.settings
            .set(0, settings, 0)
            .map_err(MapsError::map("writing SETTINGS"))?;
        // Written at every load and reload: both caches start over here
        // (the drop sets' generation is never 0 once a controller ran).
        self.bump_allow_generation()?;
        self.bump_drop_generation()
    }

    /// Makes every allow answer the XDP program cached stale. Called after
    /// the change, so a packet that read the new generation searches the
    /// changed trie. Continues from the map's value (pinned maps keep
    /// answers cached by an earlier controller), and skips 0 ("never").
    fn bump_allow_generation(&mut self) -> Result<()> {
        let current = self
            .allow_generation
            .get(&0, 0)
            .map_err(MapsError::map("reading ALLOW_GENERATION"))?;
        let next = match current.wrapping_add(1) {
            0 => 1,
            next => next,
        };
        self.allow_generation
            .set(0, next, 0)
            .map_err(MapsError::map("writing ALLOW_GENERATION"))
    }

    /// Makes every IPv4 source the XDP program cached as clear of the drop
    /// sets stale. Called after an entry is made in them, so a packet that
    /// read the new generation searches the changed set. Removals need
    /// none: a source cached as clear stays clear. Continues from the
    /// map's value, like [`Self::bump_allow_generation`], a whole
    /// [`DROP_GENERATION_CONTROLLER_STEP`] on (the program's own bans add 1).
    fn bump_drop_generation(&mut self) -> Result<()> {
        let current = self
            .drop_generation
            .get(&0, 0)
            .map_err(MapsError::map("reading DROP_GENERATION"))?;
        self.drop_generation
            .set(0, current.wrapping_add(DROP_GENERATION_CONTROLLER_STEP), 0)
            .map_err(MapsError::map("writing DROP_GENERATION"))
    }

    /// Tells the source cache of a ban just made, unless publication is held.
    fn publish_ban(&mut self) -> Result<()> {
        match self.held_bans {
            Some(_) => {
                self.held_bans = Some(true);
                Ok(())
            }
            None => self.bump_drop_generation(),
        }
    }

    /// See [`MapStore::hold_ban_publication`].
    pub fn hold_ban_publication(&mut self) {
        self.held_bans.get_or_insert(false);
    }

    /// See [`MapStore::publish_bans`]. Publication stops being held even
    /// if the write fails: the next ban's write then publishes these too.
    pub fn publish_bans(&mut self) -> Result<()> {
        if self.held_bans.take() == Some(true) {
            self.bump_drop_generation()?;
        }
        Ok(())
    }

    /// The ban-map key of an address under the current IPv6 ban prefix.
    pub fn source_key(&self, ip: IpAddr) -> Result<SourceKey> {
        Ok(source_key(ip, self.settings()?.ipv6_ban_prefix))
    }

    pub fn insert_ban(&mut self, source: SourceKey, entry: BanEntry) -> Result<()> {
        self.bans
            .insert(source, entry, 0)
            .map_err(MapsError::map("writing the ban map"))?;
        self.publish_ban()
    }

    /// See [`MapStore::insert_new_ban`].
    pub fn insert_new_ban(&mut self, source: SourceKey, entry: BanEntry) -> Result<bool> {
        match self.bans.insert(source, entry, BPF_NOEXIST) {
            Ok(()) => self.publish_ban().map(|()| true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(false)
            }
            Err(cause) => Err(MapsError::Map {
                what: "writing the ban map".to_string(),
                cause,
            }),
        }
    }

    pub fn remove_ban(&mut self, source: &SourceKey) -> Result<bool> {
        absent_as_none(self.bans.remove(source), "removing from the ban map")
            .map(|removed| removed.is_some())
    }

    pub fn ban(&self, source: &SourceKey) -> Result<Option<BanEntry>> {
        absent_as_none(self.bans.get(source, 0), "reading the ban map")
    }

    /// Every entry of the ban map, expired ones included.
    pub fn bans(&self) -> Result<Vec<(SourceKey, BanEntry)>> {
        let mut out = Vec::new();
        for item in self.bans.iter() {
            // An entry deleted while we walk is simply skipped.
            match item {
                Ok(pair) => out.push(pair),
                Err(MapError::KeyNotFound) => continue,
                Err(cause) => {
                    return Err(MapsError::Map {
                        what: "reading the ban map".into(),
                        cause,
                    })
                }
            }
        }
        Ok(out)
    }

    /// The bans in force at `now_ns` (expired ones wait for the sweeper).
    pub fn active_bans(&self, now_ns: u64) -> Result<Vec<(SourceKey, BanEntry)>> {
        MapStore::active_bans(self, now_ns)
    }

    /// The ban on `source` in force at `now_ns`, if any.
    pub fn active_ban(&self, source: &SourceKey, now_ns: u64) -> Result<Option<BanEntry>> {
        Ok(self.ban(source)?.filter(|ban| ban.is_active(now_ns)))
    }

    /// Verdict counters summed over CPUs and services, indexed like [`Reason::ALL`].
    pub fn verdicts(&self) -> Result<[Counter; Reason::COUNT]> {
        let mut totals = [Counter::default(); Reason::COUNT];
        for (reason, _, counter) in self.verdicts_by_service()? {
            let total = &mut totals[reason as usize];
            total.packets += counter.packets;
            total.bytes += counter.bytes;
        }
        Ok(totals)
    }

    /// Non-zero verdict counters per (reason, service id), summed over CPUs.
    pub fn verdicts_by_service(&self) -> Result<Vec<(Reason, u8, Counter)>> {
        let mut out = Vec::new();
        for reason in Reason::ALL {
            for service in 0..guard_common::SERVICE_SLOTS as u8 {
                let total = self.verdict_of(reason, service)?;
                if total.packets > 0 {
                    out.push((reason, service, total));
                }
            }
        }
        Ok(out)
    }

    /// One (reason, service) verdict counter, summed over CPUs: one read.
    pub fn verdict_of(&self, reason: Reason, service: u8) -> Result<Counter> {
        let index = guard_common::verdict_index(reason, service);
        let mut total = Counter::default();
        let values = self
            .verdicts
            .get(&index, 0)
            .map_err(MapsError::map("reading VERDICTS"))?;
        for per_cpu in values.iter() {
            total.packets += per_cpu.packets;
            total.bytes += per_cpu.bytes;
        }
        Ok(total)
    }

    pub fn verdict(&self, reason: Reason) -> Result<Counter> {
        Ok(self.verdicts()?[reason as usize])
    }

    pub fn rule_hits(&self) -> Result<[RuleCounter; MAX_RATE_RULES]> {
        let mut totals = [RuleCounter::default(); MAX_RATE_RULES];
        // A rule's counters are its index's in every CPU and policy slot.
        for slot in 0..POLICY_SLOTS {
            let values = self
                .rules_per_cpu
                .get(&slot, 0)
                .map_err(MapsError::map("reading RULES_PER_CPU"))?;
            for per_cpu in values.iter() {
                for (total, rule) in totals.iter_mut().zip(per_cpu.rules.iter()) {
                    total.counted += rule.hits.counted;
                    total.limited += rule.hits.limited;
                }
            }
        }
        Ok(totals)
    }

    pub fn health(&self) -> Result<[u64; Health::COUNT]> {
        let mut totals = [0u64; Health::COUNT];
        for (i, total) in totals.iter_mut().enumerate() {
            let values = self
                .health
                .get(&(i as u32), 0)
                .map_err(MapsError::map("reading HEALTH"))?;
            *total = values.iter().sum();
        }
        Ok(totals)
    }
}

impl KernelMaps {
    /// The ring of kernel ban events, for its one reader.
    pub fn take_ban_events(&mut self) -> Option<RingBuf<MapData>> {
        self.ban_events.take()
    }

    /// The ring of SIP packets copied by the kernel, for the SIP watcher.
    pub fn take_sip_events(&mut self) -> Option<RingBuf<MapData>> {
        self.sip_events.take()
    }

    /// The ban event ring, read in place (tests drain it between cases).
    pub fn ban_events_mut(&mut self) -> Option<&mut RingBuf<MapData>> {
        self.ban_events.as_mut()
    }

    /// The SIP capture ring, read in place.
    pub fn sip_events_mut(&mut self) -> Option<&mut RingBuf<MapData>> {
        self.sip_events.as_mut()
    }

    /// Empties the rate state (tests and the bench start each case from
    /// none); returns how many windows went.
    pub fn clear_rate_state(&mut self) -> Result<usize> {
        let keys: Vec<RateKey> = self.rate_state.keys().filter_map(|k| k.ok()).collect();
        for key in &keys {
            // A window the kernel removed meanwhile is gone all the same.
            let _ = self.rate_state.remove(key);
        }
        Ok(keys.len())
    }

    /// The rate windows of `(source, rule group)`, if the kernel keeps them.
    pub fn rate_state(&self, key: &RateKey) -> Result<Option<RateState>> {
        absent_as_none(self.rate_state.get(key, 0), "reading the rate state")
    }

    /// Puts rate windows in place, as the kernel would (for tests and the
    /// bench, which fill the rate state without sending packets).
    pub fn insert_rate_state(&mut self, key: RateKey, state: RateState) -> Result<()> {
        self.rate_state
            .insert(key, state, 0)
            .map_err(MapsError::map("writing the rate state"))
    }

    /// The peer-map entry of `source` (expired or not).
    pub fn peer(&self, source: &SourceKey) -> Result<Option<PeerEntry>> {
        absent_as_none(self.peers.get(source, 0), "reading the peer map")
    }

    /// Marks `source` a learned peer (or updates it).
    pub fn insert_peer(&mut self, source: SourceKey, entry: PeerEntry) -> Result<()> {
        self.peers
            .insert(source, entry, 0)
            .map_err(MapsError::map("writing the peer map"))
    }

    /// Every entry of the peer map, expired ones included.
    pub fn peers(&self) -> Result<Vec<(SourceKey, PeerEntry)>> {
        self.peers
            .iter()
            .map(|entry| entry.map_err(MapsError::map("reading the peer map")))
            .collect()
    }

    /// Whether there was a peer to remove.
    pub fn remove_peer(&mut self, source: &SourceKey) -> Result<bool> {
        match self.peers.remove(source) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(MapsError::map("removing from the peer map")(e)),
        }
    }

    /// Entries in the rate state: a walk of the whole map, so only for a
    /// reader with handles of its own (the metrics).
    pub fn rate_state_len(&self) -> usize {
        self.rate_state.keys().count()
    }

    /// Entries in a list's IPv4 and IPv6 tries.
    pub fn net_counts(&self, list: NetList) -> (usize, usize) {
        match list {
            NetList::Allow => (self.allow_v4.keys().count(), self.allow_v6.keys().count()),
            NetList::Deny => (self.deny_v4.keys().count(), self.deny_v6.keys().count()),
        }
    }

    /// Entries in the fleet deny set's IPv4 and IPv6 tries.
    pub fn fleet_counts(&self) -> (usize, usize) {
        (self.fleet_v4.keys().count(), self.fleet_v6.keys().count())
    }

    /// SIP requests the kernel read, summed over CPUs, by outcome.
    pub fn sip_scans(&self) -> Result<[(ScanStatus, u64); ScanStatus::COUNT as usize]> {
        let mut out = ScanStatus::ALL.map(|status| (status, 0));
        for (status, total) in out.iter_mut() {
            let values = self
                .sip_scans
                .get(&(*status as u32), 0)
                .map_err(MapsError::map("reading SIP_SCANS"))?;
            *total = values.iter().sum();
        }
        Ok(out)
    }
}

/// The runtime's operations, on the kernel's maps (each the inherent
/// method of the same name).
impl MapStore for KernelMaps {
    fn settings(&self) -> Result<Settings> {
        KernelMaps::settings(self)
    }

    fn write_settings(&mut self, settings: Settings) -> Result<()> {
        KernelMaps::write_settings(self, settings)
    }

    fn ban(&self, source: &SourceKey) -> Result<Option<BanEntry>> {
        KernelMaps::ban(self, source)
    }

    fn insert_ban(&mut self, source: SourceKey, entry: BanEntry) -> Result<()> {
        KernelMaps::insert_ban(self, source, entry)
    }

    fn insert_new_ban(&mut self, source: SourceKey, entry: BanEntry) -> Result<bool> {
        KernelMaps::insert_new_ban(self, source, entry)
    }

    fn hold_ban_publication(&mut self) {
        KernelMaps::hold_ban_publication(self)
    }

    fn publish_bans(&mut self) -> Result<()> {
        KernelMaps::publish_bans(self)
    }

    fn remove_ban(&mut self, source: &SourceKey) -> Result<bool> {
        KernelMaps::remove_ban(self, source)
    }

    fn bans(&self) -> Result<Vec<(SourceKey, BanEntry)>> {
        KernelMaps::bans(self)
    }

    fn rate_state(&self, key: &RateKey) -> Result<Option<RateState>> {
        KernelMaps::rate_state(self, key)
    }

    fn peer(&self, source: &SourceKey) -> Result<Option<PeerEntry>> {
        KernelMaps::peer(self, source)
    }

    fn insert_peer(&mut self, source: SourceKey, entry: PeerEntry) -> Result<()> {
        KernelMaps::insert_peer(self, source, entry)
    }

    fn remove_peer(&mut self, source: &SourceKey) -> Result<bool> {
        KernelMaps::remove_peer(self, source)
    }

    fn peers(&self) -> Result<Vec<(SourceKey, PeerEntry)>> {
        KernelMaps::peers(self)
    }

    fn nets(&self, list: NetList) -> Result<Vec<IpNet>> {
        KernelMaps::nets(self, list)
    }

    fn insert_net(&mut self, list: NetList, net: IpNet, value: u32) -> Result<()> {
        KernelMaps::insert_net(self, list, net, value)
    }

    fn remove_net(&mut self, list: NetList, net: IpNet) -> Result<()> {
        KernelMaps::remove_net(self, list, net)
    }

    fn write_policy_slot(&mut self, slot: u8, policy: &CompiledPolicy) -> Result<()> {
        KernelMaps::write_policy_slot(self, slot, policy)
    }

    fn fleet_nets(&self) -> Result<Vec<IpNet>> {
        KernelMaps::fleet_nets(self)
    }

    fn insert_fleet(&mut self, net: IpNet) -> Result<()> {
        KernelMaps::insert_fleet(self, net)
    }

    fn remove_fleet(&mut self, net: IpNet) -> Result<bool> {
        KernelMaps::remove_fleet(self, net)
    }

    fn fleet_match(&self, ip: IpAddr) -> Result<Option<IpNet>> {
        KernelMaps::fleet_match(self, ip)
    }

    fn verdicts(&self) -> Result<[Counter; Reason::COUNT]> {
        KernelMaps::verdicts(self)
    }
}
