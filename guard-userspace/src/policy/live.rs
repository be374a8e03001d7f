//! The policy in force: the config file with the operator's runtime list
//! changes on top. Built at start, rebuilt by `reload` and `apply`, and read
//! by `explain` and the SSH-lockout check, which judge a source the way the
//! XDP program does.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use guard_common::{port_index, AccessMode, L4Proto, NO_SERVICE};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    kernel::maps::NetList,
    policy::config::{AllowEntry, Config, ConfigError, DefaultPolicy, DenyEntry, BUILTIN_SOURCE},
    policy::{compile::CompiledPolicy, config::allow_mask},
    sip::tracker::LevelName,
};

/// Where the config comes from, with the command line's overrides (which
/// a reload keeps).
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// None: the built-in policy.
    pub path: Option<PathBuf>,
    /// The `--config` the daemon was started with (`apply` changes `path`
    /// only): an applied file outlives a restart only over this one.
    pub started_with: Option<PathBuf>,
    pub monitor: bool,
    pub level: Option<LevelName>,
    pub metrics_addr: Option<SocketAddr>,
}

impl ConfigSource {
    /// The config and a name for it (its path, or the built-in default).
    pub fn load(&self) -> Result<(Config, String), ConfigError> {
        let (mut config, name) = match &self.path {
            Some(path) => (Config::load(path)?, path.display().to_string()),
            None => (Config::default(), BUILTIN_SOURCE.to_string()),
        };
        if self.monitor {
            config.guard.monitor = Some(true);
        }
        if let Some(level) = self.level {
            config.sip_auth.level = level;
        }
        if let Some(address) = self.metrics_addr {
            config.metrics.enabled = true;
            config.metrics.address = address;
        }
        Ok((config, name))
    }

    pub fn with_path(&self, path: PathBuf) -> ConfigSource {
        ConfigSource {
            path: Some(path),
            ..self.clone()
        }
    }
}

/// What `explain` calls traffic that matches no service.
pub const NO_SERVICE_NAME: &str = "(no service)";

/// One row of `sipguard allow list` / `deny list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListEntry {
    pub cidr: String,
    /// Allow entries only.
    pub services: Vec<String>,
    pub comment: String,
    /// "config" or "runtime".
    pub origin: String,
}

/// What the operator changed at run time, on top of the config file's lists.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ListChanges {
    pub version: u32,
    pub allow_added: BTreeMap<IpNet, ListEntry>,
    pub deny_added: BTreeMap<IpNet, ListEntry>,
    /// Config entries the operator removed.
    pub allow_removed: Vec<IpNet>,
    pub deny_removed: Vec<IpNet>,
}

impl ListChanges {
    /// The operator added `entry` at `net` (replacing any entry there).
    /// Networks are kept in one canonical form, host bits cleared (what the
    /// kernel's trie matches), so that a later removal finds them.
    pub fn record_add(&mut self, list: NetList, net: IpNet, entry: ListEntry) {
        let net = net.trunc();
        let entry = ListEntry {
            cidr: net.to_string(),
            ..entry
        };
        let (added, removed) = self.list_mut(list);
        added.insert(net, entry);
        removed.retain(|n| *n != net);
    }

    /// The operator removed `net`; a removal of a config entry (`in_config`)
    /// must be remembered, or the next start would bring it back.
    pub fn record_remove(&mut self, list: NetList, net: IpNet, in_config: bool) {
        let net = net.trunc();
        let (added, removed) = self.list_mut(list);
        added.remove(&net);
        if in_config && !removed.contains(&net) {
            removed.push(net);
        }
    }

    /// The same changes in canonical form (files written by earlier
    /// versions may hold networks with host bits).
    pub fn canonical(self) -> ListChanges {
        let mut out = ListChanges {
            version: self.version,
            ..ListChanges::default()
        };
        for (list, added, removed) in [
            (NetList::Allow, self.allow_added, self.allow_removed),
            (NetList::Deny, self.deny_added, self.deny_removed),
        ] {
            for (net, entry) in added {
                out.record_add(list, net, entry);
            }
            for net in removed {
                out.record_remove(list, net, true);
            }
        }
        out
    }

    fn list_mut(&mut self, list: NetList) -> (&mut BTreeMap<IpNet, ListEntry>, &mut Vec<IpNet>) {
        match list {
            NetList::Allow => (&mut self.allow_added, &mut self.allow_removed),
            NetList::Deny => (&mut self.deny_added, &mut self.deny_removed),
        }
    }
}

/// The allow and deny lists with their comments and origins (the kernel's
/// tries hold only prefixes and masks).
#[derive(Debug, Clone, Default)]
pub struct Lists {
    pub allow: BTreeMap<IpNet, ListEntry>,
    pub deny: BTreeMap<IpNet, ListEntry>,
}

impl Lists {
    /// The config's lists with the operator's runtime changes applied.
    pub fn build(config: &Config, changes: &ListChanges) -> Lists {
        let mut lists = Lists::default();
        for entry in &config.allow {
            lists.add(
                NetList::Allow,
                entry.cidr,
                entry.services.clone(),
                entry.comment.clone(),
                "config",
            );
        }
        for entry in &config.deny {
            lists.add(
                NetList::Deny,
                entry.cidr,
                Vec::new(),
                entry.comment.clone(),
                "config",
            );
        }
        for net in &changes.allow_removed {
            lists.allow.remove(net);
        }
        for net in &changes.deny_removed {
            lists.deny.remove(net);
        }
        lists.allow.extend(changes.allow_added.clone());
        lists.deny.extend(changes.deny_added.clone());
        lists
    }

    /// Keeps each list, per address family, within the tries' capacity:
    /// runtime entries beyond it (saved under a larger capacity) are not
    /// put in force, and said so; they stay in the state file. The config's
    /// own entries are checked against the capacity when it is read.
    pub fn fit(&mut self, capacity: usize) {
        for list in [NetList::Allow, NetList::Deny] {
            for v4 in [true, false] {
                let entries = self.list_mut(list);
                let family = |net: &IpNet| matches!(net, IpNet::V4(_)) == v4;
                let count = entries.keys().filter(|n| family(n)).count();
                if count <= capacity {
                    continue;
                }
                let excess: Vec<IpNet> = entries
                    .iter()
                    .filter(|(net, entry)| family(net) && entry.origin != "config")
                    .map(|(net, _)| *net)
                    .rev()
                    .take(count - capacity)
                    .collect();
                for net in &excess {
                    entries.remove(net);
                }
                warn!(
                    "{} runtime {} entries do not fit (guard.max_cidrs = {capacity}) and are \
                     not in force: {}",
                    excess.len(),
                    list.name(),
                    excess
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }

    pub fn list(&self, list: NetList) -> &BTreeMap<IpNet, ListEntry> {
        match list {
            NetList::Allow => &self.allow,
            NetList::Deny => &self.deny,
        }
    }

    pub fn list_mut(&mut self, list: NetList) -> &mut BTreeMap<IpNet, ListEntry> {
        match list {
            NetList::Allow => &mut self.allow,
            NetList::Deny => &mut self.deny,
        }
    }

    pub fn add(
        &mut self,
        list: NetList,
        cidr: IpNet,
        services: Vec<String>,
        comment: String,
        origin: &str,
    ) {
        let cidr = cidr.trunc();
        let entry = ListEntry {
            cidr: cidr.to_string(),
            services,
            comment,
            origin: origin.to_string(),
        };
        self.list_mut(list).insert(cidr, entry);
    }

    /// The most specific entry holding `ip` (what an LPM trie finds).
    pub fn longest_match(&self, list: NetList, ip: IpAddr) -> Option<(IpNet, &ListEntry)> {
        self.list(list)
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(net, entry)| (*net, entry))
    }
}

/// A service as `explain` needs it.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    pub name: String,
    pub access: AccessMode,
    /// Rate rules watching any of its ports.
    pub rules: Vec<String>,
}

impl ServiceInfo {
    /// From the compiled policy: the same port table the XDP program reads.
    pub fn from_policy(policy: &CompiledPolicy) -> Vec<ServiceInfo> {
        policy
            .services
            .iter()
            .map(|(id, service)| {
                let mut rules: Vec<u8> = policy
                    .ports
                    .iter()
                    .filter(|(_, class)| class.service == *id)
                    .flat_map(|(_, class)| class.rule_indexes().collect::<Vec<_>>())
                    .collect();
                rules.sort_unstable();
                rules.dedup();
                ServiceInfo {
                    name: policy.service_names[*id as usize - 1].clone(),
                    access: service.access_mode(),
                    rules: rules
                        .into_iter()
                        .map(|i| policy.rule_names[i as usize].clone())
                        .collect(),
                }
            })
            .collect()
    }
}

/// One row of `sipguard explain`: the verdict a source gets for a service
/// now, and what decides it (see `policy::verdict`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub service: String,
    /// "pass" or "drop".
    pub verdict: String,
    pub because: String,
}

impl Verdict {
    pub fn passes(&self) -> bool {
        self.verdict == "pass"
    }
}

/// The policy in force.
#[derive(Debug, Clone)]
pub struct LivePolicy {
    /// The file as loaded (with command-line overrides); its lists untouched.
    pub config: Config,
    /// Where `config` came from (a path, or "built-in defaults").
    pub source: String,
    pub changes: ListChanges,
    pub lists: Lists,
    /// The config with the runtime changes: what the maps hold.
    pub compiled: CompiledPolicy,
    pub services: Vec<ServiceInfo>,
    /// The SIP rules as the controller applies them (see `RuleView`).
    pub sip_view: std::sync::Arc<crate::policy::sip_rules::RuleView>,
}

impl LivePolicy {
    pub fn build(config: Config, source: String, changes: ListChanges) -> LivePolicy {
        let mut lists = Lists::build(&config, &changes);
        lists.fit(config.guard.max_cidrs as usize);
        let mut effective = config.clone();
        let names: Vec<String> = effective.services().into_iter().map(|s| s.name).collect();
        // A runtime entry may name a service a newer config no longer has.
        for (net, entry) in lists.allow.iter_mut() {
            let unknown: Vec<String> = entry
                .services
                .iter()
                .filter(|s| allow_mask(&names, std::slice::from_ref(*s)).is_err())
                .cloned()
                .collect();
            if !unknown.is_empty() {
                warn!(
                    "allow entry {net}: the policy has no service {} any more; ignoring it",
                    unknown.join(", ")
                );
                entry.services.retain(|s| !unknown.contains(s));
            }
        }
        effective.allow = lists
            .allow
            .iter()
            .map(|(net, entry)| AllowEntry {
                cidr: *net,
                services: entry.services.clone(),
                comment: entry.comment.clone(),
                // Names resolved against this config's services (a reload
                // may renumber them); unknown ones were dropped above.
                mask: allow_mask(&names, &entry.services).unwrap_or(0),
            })
            .collect();
        effective.deny = lists
            .deny
            .iter()
            .map(|(net, entry)| DenyEntry {
                cidr: *net,
                comment: entry.comment.clone(),
            })
            .collect();
        let compiled = CompiledPolicy::compile(&effective);
        let services = ServiceInfo::from_policy(&compiled);
        let sip_view = std::sync::Arc::new(crate::policy::sip_rules::RuleView::new(
            &compiled,
            &config.sip_auth.service,
        ));
        LivePolicy {
            config,
            source,
            changes,
            lists,
            compiled,
            services,
            sip_view,
        }
    }

    pub fn default_drop(&self) -> bool {
        self.config.guard.default_policy == DefaultPolicy::Drop
    }

    pub fn service_names(&self) -> Vec<String> {
        self.services.iter().map(|s| s.name.clone()).collect()
    }

    /// The service that owns a TCP port, or [`NO_SERVICE_NAME`].
    pub fn tcp_service(&self, port: u16) -> String {
        let index = port_index(L4Proto::Tcp, port);
        self.compiled
            .ports
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, class)| class.service)
            .filter(|id| *id != NO_SERVICE)
            .and_then(|id| self.compiled.service_names.get(id as usize - 1).cloned())
            .unwrap_or_else(|| NO_SERVICE_NAME.to_string())
    }

    /// The TCP ports of a service.
    pub fn tcp_ports(&self, service: &str) -> Vec<u16> {
        let Some(id) = self
            .compiled
            .service_names
            .iter()
            .position(|n| n == service)
        else {
            return Vec::new();
        };
        self.compiled
            .ports
            .iter()
            .filter(|(_, class)| class.service as usize == id + 1)
            .filter(|(index, _)| index >> 16 == L4Proto::Tcp as u32)
            .map(|(index, _)| (*index & 0xffff) as u16)
            .collect()
    }

    /// Monitor mode as the maps get it (the runtime owns the switch).
    pub fn set_monitor(&mut self, on: bool) {
        self.config.guard.monitor = Some(on);
        self.compiled.settings.monitor = on as u8;
    }

    /// The policy in a line (monitor mode is the runtime's: see `status`).
    pub fn summary(&self) -> String {
        let default = if self.default_drop() { "drop" } else { "pass" };
        let sip = &self.compiled.sip_rules;
        let sip_rules = if sip.is_empty() {
            String::new()
        } else {
            format!(
                ", {} extension and {} dial rules",
                sip.extension.len(),
                sip.dial.len()
            )
        };
        format!(
            "default {default}, {} services, {} rate rules, {} allow and {} deny entries{sip_rules}",
            self.compiled.services.len(),
            self.compiled.rules.len(),
            self.lists.allow.len(),
            self.lists.deny.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_entries_beyond_the_capacity_are_not_put_in_force() {
        let config = Config::parse(
            "[guard]\nmax_cidrs = 2\n[[deny]]\ncidr = \"192.0.2.0/24\"\n",
            "test.toml",
        )
        .unwrap();
        let mut changes = ListChanges::default();
        for cidr in ["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"] {
            let net: IpNet = cidr.parse().unwrap();
            let entry = ListEntry {
                cidr: cidr.into(),
                services: Vec::new(),
                comment: String::new(),
                origin: "runtime".into(),
            };
            changes.record_add(NetList::Deny, net, entry);
        }
        let live = LivePolicy::build(config, "test.toml".into(), changes.clone());
        let deny: Vec<String> = live.lists.deny.keys().map(ToString::to_string).collect();
        // The config's entry stays, one runtime IPv4 entry fits, IPv6 has room.
        assert_eq!(deny, ["192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32"]);
        assert_eq!(live.changes, changes, "the saved changes are kept whole");
    }
}
