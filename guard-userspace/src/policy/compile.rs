//! Compiles a validated [`Config`] into the exact values the kernel maps hold.
//! Pure: no kernel access, so every translation rule is unit-tested.
use std::net::IpAddr;

use guard_common::{
    port_index, rate::slot_width_ns, AccessMode, L4Proto, PortClass, RateRule, ServicePolicy,
    Settings, MAX_RATE_RULES, PORT_SIP_WATCH, RULE_SYN_ONLY, SERVICE_SLOTS,
};
use ipnet::IpNet;

use crate::policy::{config::Config, scanners::SipScannersSection, sip_rules::SipRules};

/// Everything the kernel needs to enforce a configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledPolicy {
    pub settings: Settings,
    /// Service names by id (index 0 is id 1).
    pub service_names: Vec<String>,
    /// `(id, policy)` for every service.
    pub services: Vec<(u8, ServicePolicy)>,
    /// Non-default `PORTS` slots.
    pub ports: Vec<(u32, PortClass)>,
    pub rule_names: Vec<String>,
    pub rules: Vec<RateRule>,
    /// `(network, allowed services mask)`, networks normalised (host bits cleared).
    pub allow: Vec<(IpNet, u32)>,
    pub deny: Vec<IpNet>,
    /// Scanner fingerprints; the kernel's table is built from it on sync.
    pub scanners: SipScannersSection,
    /// How each fingerprint is named in logs, by number - 1.
    pub scanner_names: Vec<String>,
    /// Extension and dial rules; their tables are built on sync.
    pub sip_rules: SipRules,
}

impl CompiledPolicy {
    pub fn compile(config: &Config) -> CompiledPolicy {
        let services = config.services();

        let mut ports = vec![PortClass::UNCLASSIFIED; guard_common::PORT_SLOTS as usize];
        for (i, service) in services.iter().enumerate() {
            for range in service.ranges() {
                for port in range.first..=range.last {
                    ports[port_index(range.proto, port) as usize].service = i as u8 + 1;
                }
            }
        }
        if config.sip_auth.enabled {
            let watched = services.iter().find(|s| s.name == config.sip_auth.service);
            for range in watched.into_iter().flat_map(|s| s.ranges()) {
                for port in range.first..=range.last {
                    ports[port_index(range.proto, port) as usize].flags |= PORT_SIP_WATCH;
                }
            }
        }
        let rule_sections = config.rate_rules();
        let mut rules = Vec::new();
        for (bit, rule) in rule_sections.iter().enumerate() {
            for range in config.rule_ranges(rule) {
                for port in range.first..=range.last {
                    // Validation bounds the rules per port, so this always fits.
                    ports[port_index(range.proto, port) as usize].add_rule(bit as u8);
                }
            }
            let window_ns = rule.window.as_nanos().min(u64::MAX as u128) as u64;
            rules.push(RateRule {
                limit: rule.packets,
                flags: if rule.syn_only { RULE_SYN_ONLY } else { 0 },
                _pad: [0; 3],
                slot_ns: slot_width_ns(window_ns),
                ban_ns: rule.ban.as_nanos().min(u64::MAX as u128) as u64,
            });
        }

        let service_names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
        // Masks resolved when the config was read.
        let allow = config
            .allow
            .iter()
            .map(|entry| (entry.cidr.trunc(), entry.mask))
            .collect();

        CompiledPolicy {
            settings: Settings {
                default_policy: config.guard.default_policy as u8,
                monitor: config.guard.monitor.unwrap_or(false) as u8,
                ipv6_ban_prefix: config.guard.ipv6_ban_prefix,
                policy_slot: 0,
                peer_factor: config.peers.factor,
                peer_max_multiplier: config.peers.max_multiplier,
            },
            service_names,
            services: services
                .iter()
                .enumerate()
                .map(|(i, service)| {
                    let access = service.access as u8;
                    (i as u8 + 1, ServicePolicy { access })
                })
                .collect(),
            ports: ports
                .into_iter()
                .enumerate()
                .filter(|(_, class)| *class != PortClass::UNCLASSIFIED)
                .map(|(i, class)| (i as u32, class))
                .collect(),
            rule_names: rule_sections.iter().map(|r| r.name.clone()).collect(),
            rules,
            allow,
            deny: config.deny.iter().map(|d| d.cidr.trunc()).collect(),
            scanners: config.sip_scanners.clone(),
            scanner_names: config
                .sip_scanners
                .effective()
                .iter()
                .map(|p| p.describe())
                .collect(),
            sip_rules: config.sip_rules(),
        }
    }

    /// The SIP table of a policy slot (`SIP_PATTERNS`): the scanner
    /// fingerprints' automaton, the extension rules' user automaton and
    /// the dial rules.
    pub fn sip_table(&self) -> Result<Box<guard_common::sip_scan::PatternTable>, String> {
        let mut table = self.scanners.table()?;
        self.sip_rules.fill_table(&mut table)?;
        Ok(table)
    }

    /// The class of `(proto, port)`, as `PORTS` holds it.
    pub fn port_class(&self, proto: L4Proto, port: u16) -> PortClass {
        let index = port_index(proto, port);
        // `ports` is sorted by index: compile() builds it in index order.
        match self.ports.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) => self.ports[at].1,
            Err(_) => PortClass::UNCLASSIFIED,
        }
    }

    /// The access mode of service `id`, as `SERVICES` holds it: an id
    /// without a service reads as the zeroed slot (open), one beyond the
    /// array as closed (the XDP program's fallback). No port names either.
    pub fn access_mode(&self, id: u8) -> AccessMode {
        if id as u32 >= SERVICE_SLOTS {
            return AccessMode::Closed;
        }
        self.services
            .iter()
            .find(|(i, _)| *i == id)
            .map_or(AccessMode::Open, |(_, service)| service.access_mode())
    }

    /// Rate rule `index`, as `RULES` holds it: zeroed past the policy's
    /// rules, absent beyond the array. No port names either.
    pub fn rule(&self, index: u8) -> Option<RateRule> {
        if index as usize >= MAX_RATE_RULES {
            return None;
        }
        Some(self.rules.get(index as usize).copied().unwrap_or_default())
    }

    /// The largest number of rate-state groups one port's rules span
    /// (`guard_common::rate_group`): each needs its own rate-state entry
    /// per source. 1 for any policy of up to four rules.
    pub fn max_rate_groups_per_port(&self) -> u32 {
        self.ports
            .iter()
            .map(|(_, class)| {
                let mut groups: Vec<u32> = class
                    .rule_indexes()
                    .map(|rule| guard_common::rate_group(rule as u32))
                    .collect();
                groups.dedup();
                groups.len() as u32
            })
            .max()
            .unwrap_or(0)
    }
}

/// Address bytes in network order, as the LPM tries and `SourceKey` hold them.
pub fn ip_octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use guard_common::{
        service_bit, DefaultPolicy, L4Proto, ALLOW_ALL, NO_SERVICE, UNCLASSIFIED_BIT,
    };

    use super::*;

    fn compile(text: &str) -> CompiledPolicy {
        CompiledPolicy::compile(&Config::parse(text, "t.toml").unwrap())
    }

    fn class(p: &CompiledPolicy, proto: L4Proto, port: u16) -> PortClass {
        let index = port_index(proto, port);
        p.ports
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, c)| *c)
            .unwrap_or(PortClass::UNCLASSIFIED)
    }

    #[test]
    fn builtin_policy_marks_sip_and_its_two_rules() {
        let p = compile("");
        let sip = class(&p, L4Proto::Udp, 5060);
        assert_eq!(p.service_names[sip.service as usize - 1], "sip");
        assert_eq!(sip.rule_indexes().collect::<Vec<_>>(), vec![0, 1]);
        // TCP 5060 is sip too, but the vendors' rules are UDP only.
        assert!(!class(&p, L4Proto::Tcp, 5060).has_rules());
        assert_eq!(class(&p, L4Proto::Udp, 15000).service, 3);
        assert_eq!(class(&p, L4Proto::Udp, 20001), PortClass::UNCLASSIFIED);
        assert_eq!(class(&p, L4Proto::Tcp, 5038).service, 5);
        assert_eq!(p.rules[0].limit, 120);
        assert_eq!(p.rules[1].limit, 40);
        assert_eq!(p.rules[1].ban_ns, 3_600_000_000_000);
        assert_eq!(p.rules[1].slot_ns, 2_000_000_000 / 7);
        assert_eq!(p.max_rate_groups_per_port(), 1);
        assert!(sip.watches_sip());
        assert!(class(&p, L4Proto::Tcp, 5060).watches_sip());
        assert!(!class(&p, L4Proto::Udp, 15000).watches_sip());
        assert_eq!(p.settings.default_policy(), DefaultPolicy::Pass);
        assert!(p
            .services
            .iter()
            .all(|(_, s)| s.access == AccessMode::Open as u8));
    }

    #[test]
    fn allow_masks_and_cidr_normalisation() {
        let p = compile(
            r#"
[[allow]]
cidr = "192.0.2.77/24"
services = ["sip", "web"]
[[allow]]
cidr = "2001:db8::1/48"
[[allow]]
cidr = "198.51.100.0/24"
services = ["other"]
"#,
        );
        assert_eq!(p.allow[0].0.to_string(), "192.0.2.0/24");
        assert_eq!(p.allow[0].1, service_bit(1) | service_bit(4));
        assert_eq!(p.allow[1].0.to_string(), "2001:db8::/48");
        assert_eq!(p.allow[1].1, ALLOW_ALL);
        assert_eq!(p.allow[2].1, UNCLASSIFIED_BIT);
    }

    #[test]
    fn service_rules_and_syn_only() {
        let p = compile(
            r#"
[guard]
default_policy = "drop"
[services.ssh]
access = "trusted"
[[rate_rules]]
name = "ssh-connects"
service = "ssh"
packets = 5
window = "1m"
ban = "1d"
syn_only = true
"#,
        );
        assert_eq!(p.settings.default_policy(), DefaultPolicy::Drop);
        assert_eq!(
            class(&p, L4Proto::Tcp, 22)
                .rule_indexes()
                .collect::<Vec<_>>(),
            vec![0]
        );
        assert!(!class(&p, L4Proto::Udp, 5060).has_rules());
        assert_eq!(p.rules[0].flags, RULE_SYN_ONLY);
        let ssh = p.services.iter().find(|(id, _)| *id == 6).unwrap();
        assert_eq!(ssh.1.access, AccessMode::Trusted as u8);
        assert_ne!(class(&p, L4Proto::Tcp, 22).service, NO_SERVICE);
    }
}
