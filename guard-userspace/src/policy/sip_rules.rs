//! Per-extension source rules (`[[extension_rules]]`) and dial rules
//! (`[[dial_rules]]`): their config, validation, and what the kernel's
//! maps hold for them (see `guard_common::sip_rules` for how the XDP
//! program matches them).
//!
//! - An extension rule restricts its `users` (names, `2xx`, `sales-*`) to
//!   its `permit` networks: a REGISTER naming one of them (To, From or
//!   Authorization username), or an INVITE or SUBSCRIBE from one of them
//!   (From or Authorization username), from anywhere else is dropped
//!   (`extension_denied`). A user several rules name may use any of their
//!   networks.
//! - A dial rule blocks INVITEs whose Request-URI user starts with one of
//!   its `prefixes` unless the source is in its `permit` networks (or is a
//!   learned peer, with `"peers"` in `permit`): `dial_denied`, and a ban of
//!   `ban` when set. The longest prefix decides which rule applies.
//! - Allow-listed sources (for the service) are never dropped by either.
use std::{net::IpAddr, time::Duration};

use guard_common::{
    sip_rules::{
        dial_prefix_len, permit_prefix_len, DialRule, SipPermit, UserTable, DIAL_KEY_BYTES,
        DIAL_PERMIT_PEERS, MAX_DIAL_PREFIX, MAX_DIAL_RULES, MAX_EXTENSION_RULES, PERMIT_KEY_BYTES,
        RULES_DIAL, RULES_EXTENSION,
    },
    sip_scan::PatternTable,
    sip_users,
};
use ipnet::{IpNet, Ipv6Net};
use serde::Deserialize;

/// The `permit` word that stands for learned peers.
pub const PEERS: &str = "peers";

/// Entries each of the two tries may hold per policy (each holds two policies).
pub const MAX_PERMIT_ENTRIES: usize = 8_192;
pub const MAX_DIAL_PREFIXES: usize = 8_192;

/// One `[[extension_rules]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExtensionRuleSection {
    /// How logs and `explain` name it (default: `extension_rules[N]`).
    #[serde(default)]
    pub name: Option<String>,
    pub users: Vec<String>,
    /// Networks the users may be used from.
    #[serde(default)]
    pub permit: Vec<IpNet>,
}

/// One `[[dial_rules]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DialRuleSection {
    #[serde(default)]
    pub name: Option<String>,
    /// Request-URI user prefixes: digits, `*`, `#`, and a leading `+`.
    pub prefixes: Vec<String>,
    /// Networks that may dial them, and `"peers"` for learned peers.
    #[serde(default)]
    pub permit: Vec<String>,
    /// Ban a source that dials them from elsewhere (or over
    /// `calls_per_minute`) for this long (0s or absent: drop the INVITE only).
    #[serde(default, with = "super::config::humantime_serde_compat")]
    pub ban: Duration,
    /// INVITEs to the prefixes each permitted source may send in a sliding
    /// minute; the one over it is dropped (and bans with `ban`).
    #[serde(default)]
    pub calls_per_minute: Option<u32>,
}

impl DialRuleSection {
    /// The `permit` networks (validation refused anything else).
    pub fn networks(&self) -> Vec<IpNet> {
        self.permit
            .iter()
            .filter_map(|entry| entry.parse::<IpNet>().ok())
            .map(|net| net.trunc())
            .collect()
    }

    pub fn permits_peers(&self) -> bool {
        self.permit.iter().any(|entry| entry == PEERS)
    }
}

/// Both kinds of rules, as the policy holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SipRules {
    pub extension: Vec<ExtensionRuleSection>,
    pub dial: Vec<DialRuleSection>,
}

/// The network as the permit trie keys it: IPv4 in its IPv4-mapped form.
fn mapped(net: &IpNet) -> Ipv6Net {
    match net {
        IpNet::V4(n) => Ipv6Net::new(n.network().to_ipv6_mapped(), 96 + n.prefix_len())
            .unwrap_or_else(|_| Ipv6Net::default()),
        IpNet::V6(n) => n.trunc(),
    }
}

fn mapped_ip(ip: IpAddr) -> Ipv6Net {
    let v6 = match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    Ipv6Net::new(v6, 128).unwrap_or_default()
}

/// True if `prefix` is a valid dial prefix: digits, `*` and `#`, after an
/// optional leading `+`.
fn valid_prefix(prefix: &str) -> bool {
    let digits = prefix.strip_prefix('+').unwrap_or(prefix);
    (prefix == "+" || !digits.is_empty())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
        && prefix.len() <= MAX_DIAL_PREFIX
}

impl SipRules {
    pub fn is_empty(&self) -> bool {
        self.extension.is_empty() && self.dial.is_empty()
    }

    /// `(key, reason)` of the first problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.extension.len() > MAX_EXTENSION_RULES {
            return Err((
                "extension_rules".into(),
                format!("at most {MAX_EXTENSION_RULES} rules (a rule may list many users)"),
            ));
        }
        for (i, rule) in self.extension.iter().enumerate() {
            let key = |what: &str| format!("extension_rules[{i}].{what}");
            if rule.users.is_empty() {
                return Err((key("users"), "empty list".into()));
            }
            for (j, user) in rule.users.iter().enumerate() {
                sip_users::parse(user)
                    .map_err(|e| (format!("extension_rules[{i}].users[{j}]"), e.to_string()))?;
            }
        }
        if let Err(e) = self.user_table() {
            return Err(("extension_rules".into(), e));
        }
        if self.dial.len() > MAX_DIAL_RULES {
            return Err((
                "dial_rules".into(),
                format!("at most {MAX_DIAL_RULES} rules (a rule may list many prefixes)"),
            ));
        }
        let mut seen: std::collections::HashMap<&str, usize> = Default::default();
        for (i, rule) in self.dial.iter().enumerate() {
            let key = |what: &str| format!("dial_rules[{i}].{what}");
            if rule.prefixes.is_empty() {
                return Err((key("prefixes"), "empty list".into()));
            }
            for (j, prefix) in rule.prefixes.iter().enumerate() {
                let at = format!("dial_rules[{i}].prefixes[{j}]");
                if !valid_prefix(prefix) {
                    return Err((
                        at,
                        format!(
                            "{prefix:?} is no dial prefix: digits, `*` and `#` after an optional \
                             leading `+`, at most {MAX_DIAL_PREFIX} characters"
                        ),
                    ));
                }
                if let Some(other) = seen.insert(prefix.as_str(), i) {
                    return Err((at, format!("{prefix:?} is in dial_rules[{other}] already")));
                }
            }
            if let Some(calls) = rule.calls_per_minute {
                if calls == 0 || calls > guard_common::rate::MAX_RATE_LIMIT {
                    return Err((
                        key("calls_per_minute"),
                        format!(
                            "must be 1..={} (leave it out for no limit)",
                            guard_common::rate::MAX_RATE_LIMIT
                        ),
                    ));
                }
            }
            for (j, entry) in rule.permit.iter().enumerate() {
                if entry != PEERS && entry.parse::<IpNet>().is_err() {
                    return Err((
                        format!("dial_rules[{i}].permit[{j}]"),
                        format!("{entry:?} is neither a network (CIDR) nor \"{PEERS}\""),
                    ));
                }
            }
        }
        if seen.len() > MAX_DIAL_PREFIXES {
            return Err((
                "dial_rules".into(),
                format!("at most {MAX_DIAL_PREFIXES} prefixes in all"),
            ));
        }
        if self.permit_entries().len() > MAX_PERMIT_ENTRIES {
            return Err((
                "extension_rules".into(),
                format!(
                    "at most {MAX_PERMIT_ENTRIES} distinct permit networks in all extension and \
                     dial rules"
                ),
            ));
        }
        Ok(())
    }

    /// The rule's name for logs and `explain`.
    pub fn extension_name(&self, rule: u8) -> String {
        match self.extension.get(rule as usize) {
            Some(ExtensionRuleSection {
                name: Some(name), ..
            }) => name.clone(),
            _ => format!("extension_rules[{rule}]"),
        }
    }

    pub fn dial_name(&self, rule: u8) -> String {
        match self.dial.get(rule as usize) {
            Some(DialRuleSection {
                name: Some(name), ..
            }) => name.clone(),
            _ => format!("dial_rules[{rule}]"),
        }
    }

    fn user_table(&self) -> Result<UserTable, String> {
        let mut parsed = Vec::new();
        for rule in &self.extension {
            let users: Result<Vec<_>, _> = rule.users.iter().map(|u| sip_users::parse(u)).collect();
            parsed.push(users.map_err(|e| e.to_string())?);
        }
        sip_users::compile(&parsed).map_err(|e| e.to_string())
    }

    /// Writes the rules' part of a policy slot's SIP table.
    pub fn fill_table(&self, table: &mut PatternTable) -> Result<(), String> {
        table.users = self.user_table()?;
        let mut flags = 0;
        if !self.extension.is_empty() {
            flags |= RULES_EXTENSION;
        }
        if !self.dial.is_empty() {
            flags |= RULES_DIAL;
        }
        for (slot, rule) in table.dial.iter_mut().zip(self.dial.iter()) {
            *slot = DialRule {
                ban_ns: rule.ban.as_nanos().min(u64::MAX as u128) as u64,
                flags: if rule.permits_peers() {
                    DIAL_PERMIT_PEERS
                } else {
                    0
                },
                calls_per_minute: rule.calls_per_minute.unwrap_or(0),
            };
        }
        table.sip_rules = flags;
        if flags != 0 {
            table.active = 1;
        }
        Ok(())
    }

    /// Every permit network (IPv4-mapped), each with the rules whose
    /// networks hold it: the longest match then answers for every rule.
    pub fn permit_entries(&self) -> Vec<(Ipv6Net, SipPermit)> {
        let extension: Vec<Vec<Ipv6Net>> = self
            .extension
            .iter()
            .map(|r| r.permit.iter().map(mapped).collect())
            .collect();
        let dial: Vec<Vec<Ipv6Net>> = self
            .dial
            .iter()
            .map(|r| r.networks().iter().map(mapped).collect())
            .collect();
        let mut nets: Vec<Ipv6Net> = extension
            .iter()
            .chain(dial.iter())
            .flatten()
            .copied()
            .collect();
        nets.sort();
        nets.dedup();
        nets.into_iter()
            .map(|net| {
                let mask = |rules: &[Vec<Ipv6Net>]| {
                    rules
                        .iter()
                        .enumerate()
                        .filter(|(_, nets)| nets.iter().any(|n| n.contains(&net)))
                        .fold(0u64, |mask, (i, _)| mask | 1 << i)
                };
                let permit = SipPermit {
                    extensions: mask(&extension),
                    dial: mask(&dial),
                };
                (net, permit)
            })
            .collect()
    }

    /// `SIP_PERMIT`'s keys and values for policy `slot`.
    pub fn permit_keys(&self, slot: u8) -> Vec<(u32, [u8; PERMIT_KEY_BYTES], SipPermit)> {
        self.permit_entries()
            .into_iter()
            .map(|(net, permit)| {
                let mut data = [0u8; PERMIT_KEY_BYTES];
                data[0] = slot;
                data[1..].copy_from_slice(&net.network().octets());
                (permit_prefix_len(net.prefix_len() as u32), data, permit)
            })
            .collect()
    }

    /// `SIP_DIAL`'s keys and values (the rule's index) for policy `slot`.
    pub fn dial_keys(&self, slot: u8) -> Vec<(u32, [u8; DIAL_KEY_BYTES], u32)> {
        let mut out = Vec::new();
        for (rule, section) in self.dial.iter().enumerate() {
            for prefix in &section.prefixes {
                let bytes = prefix.as_bytes();
                let mut data = [0u8; DIAL_KEY_BYTES];
                data[0] = slot;
                let len = bytes.len().min(MAX_DIAL_PREFIX);
                data[1..1 + len].copy_from_slice(&bytes[..len]);
                out.push((dial_prefix_len(len), data, rule as u32));
            }
        }
        out
    }

    /// The rules whose networks hold `ip`, as the kernel's one lookup
    /// answers (the folded entries make the longest match equal to this).
    pub fn permit_of(&self, ip: IpAddr) -> SipPermit {
        let host = mapped_ip(ip);
        let holds = |nets: &[IpNet]| nets.iter().any(|n| mapped(n).contains(&host));
        let mut permit = SipPermit::NONE;
        for (i, rule) in self.extension.iter().enumerate() {
            if holds(&rule.permit) {
                permit.extensions |= 1 << i;
            }
        }
        for (i, rule) in self.dial.iter().enumerate() {
            if holds(&rule.networks()) {
                permit.dial |= 1 << i;
            }
        }
        permit
    }

    /// The dial rule (its index) of the longest prefix `number` starts
    /// with, and that prefix.
    pub fn dial_rule_of(&self, number: &str) -> Option<(u8, &str)> {
        let number = number.as_bytes();
        let number = &number[..number.len().min(MAX_DIAL_PREFIX)];
        self.dial
            .iter()
            .enumerate()
            .flat_map(|(i, rule)| rule.prefixes.iter().map(move |p| (i as u8, p.as_str())))
            .filter(|(_, prefix)| number.starts_with(prefix.as_bytes()))
            .max_by_key(|(_, prefix)| prefix.len())
    }

    /// The extension rules naming `user` (bit i: rule i).
    pub fn rules_of_user(&self, user: &str) -> u64 {
        self.user_table()
            .map(|table| table.rules_of(user.as_bytes()))
            .unwrap_or(0)
    }
}

/// The SIP rules as the controller applies them itself, to the requests
/// the kernel could not read (split across TCP segments, headers past
/// 2 KiB) and to those it never sees (TLS and WebSocket, mirrored over
/// HEP): the same shared step (`guard_common::verdict::sip_rules_step`)
/// over the policy in force, with the user automaton built once.
pub struct RuleView {
    rules: SipRules,
    users: Box<UserTable>,
    /// The allow list as the kernel holds it (network, services mask).
    allow: Vec<(IpNet, u32)>,
    /// The `sip_auth.service`'s id (its allow-listed sources are spared).
    sip_service: u8,
}

impl std::fmt::Debug for RuleView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleView")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

/// What a request names, as the SIP rules read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedRequest<'a> {
    /// The method (any case).
    pub method: &'a [u8],
    /// To, From and the Authorization username, %-escapes decoded.
    pub users: [Option<&'a [u8]>; 3],
    /// The Request-URI user (the number an INVITE dials), decoded.
    pub dialled: Option<&'a [u8]>,
}

impl RuleView {
    pub fn new(compiled: &crate::policy::compile::CompiledPolicy, sip_service: &str) -> RuleView {
        let rules = compiled.sip_rules.clone();
        let users = Box::new(rules.user_table().unwrap_or(UserTable::EMPTY));
        let sip_service = compiled
            .service_names
            .iter()
            .position(|name| name == sip_service)
            .map_or(guard_common::NO_SERVICE, |i| i as u8 + 1);
        RuleView {
            rules,
            users,
            allow: compiled.allow.clone(),
            sip_service,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &SipRules {
        &self.rules
    }

    /// What the rules decide for `request` from `peer` (`is_peer`: a
    /// learned peer): the reason and rule that deny it, if any. Calls a
    /// minute are the kernel's to count.
    pub fn judge(
        &self,
        peer: IpAddr,
        request: &NamedRequest<'_>,
        is_peer: bool,
    ) -> Option<(guard_common::Reason, u8)> {
        use guard_common::{
            sip_rules::{USER_AUTH, USER_FROM, USER_TO},
            verdict::{sip_rules_step, SipAsk, SipOutcome},
        };
        let method = request.method;
        let restricts = |which: usize| {
            method.eq_ignore_ascii_case(b"REGISTER")
                || ((method.eq_ignore_ascii_case(b"INVITE")
                    || method.eq_ignore_ascii_case(b"SUBSCRIBE"))
                    && which != USER_TO)
        };
        let mut user_rules = [0u64; 3];
        for which in [USER_TO, USER_FROM, USER_AUTH] {
            if let (true, Some(user)) = (restricts(which), request.users[which]) {
                user_rules[which] = self.users.rules_of(user);
            }
        }
        let dial = match request.dialled {
            Some(number) if method.eq_ignore_ascii_case(b"INVITE") => self
                .rules
                .dial_rule_of(&String::from_utf8_lossy(number))
                .map_or(0, |(rule, _)| rule + 1),
            _ => 0,
        };
        let address = crate::policy::verdict::ip_address(peer);
        let source = address.source_key(128);
        let mut lookup = ViewLookup {
            view: self,
            user_rules,
            dial,
            is_peer,
            denied: None,
        };
        let ask = SipAsk {
            address: &address,
            source: &source,
            service: self.sip_service,
            slot: 0,
        };
        match sip_rules_step(&mut lookup, &ask) {
            SipOutcome::ExtensionDenied { rule } => {
                Some((guard_common::Reason::ExtensionDenied, rule))
            }
            SipOutcome::DialDenied { rule } => Some((guard_common::Reason::DialDenied, rule)),
            _ => None,
        }
    }
}

/// The shared step's lookups over a [`RuleView`] and one request. Only the
/// SIP rules' questions are asked of it; the rest answer "nothing".
struct ViewLookup<'a> {
    view: &'a RuleView,
    user_rules: [u64; 3],
    dial: u8,
    is_peer: bool,
    denied: Option<(guard_common::Reason, u8)>,
}

impl guard_common::verdict::Lookup for ViewLookup<'_> {
    fn settings(&mut self) -> guard_common::Settings {
        guard_common::Settings::default()
    }
    fn is_banned(&mut self, _: &guard_common::SourceKey) -> bool {
        false
    }
    fn is_denied(&mut self, _: &guard_common::verdict::Address) -> bool {
        false
    }
    fn is_fleet_denied(&mut self, _: &guard_common::verdict::Address) -> bool {
        false
    }
    /// The services mask of the source's longest allow entry.
    fn allow_mask(&mut self, source: &guard_common::verdict::Address) -> u32 {
        let ip = crate::policy::verdict::address_ip(source);
        self.view
            .allow
            .iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .map_or(0, |(_, mask)| *mask)
    }
    fn port_class(&mut self, _: guard_common::L4Proto, _: u16, _: u8) -> guard_common::PortClass {
        guard_common::PortClass::UNCLASSIFIED
    }
    fn access_mode(&mut self, _: u8, _: u8) -> guard_common::AccessMode {
        guard_common::AccessMode::Open
    }
    fn count_rate(
        &mut self,
        _: &guard_common::SourceKey,
        _: &guard_common::verdict::Address,
        _: u32,
        _: &guard_common::PortClass,
        _: bool,
        _: u8,
    ) -> guard_common::verdict::RateExcess {
        guard_common::verdict::RateExcess::UNDER
    }
    fn peer_users(&mut self, _: &guard_common::SourceKey) -> Option<u32> {
        self.is_peer.then_some(1)
    }
    fn rate_ban(
        &mut self,
        _: &guard_common::SourceKey,
        _: &guard_common::verdict::RateExcess,
        _: u8,
    ) {
    }
    fn sip_user_rules(&mut self, which: usize, _: u8) -> u64 {
        self.user_rules.get(which).copied().unwrap_or(0)
    }
    fn sip_dial_rule(&mut self, _: u8) -> u8 {
        self.dial
    }
    fn sip_permit(&mut self, source: &guard_common::verdict::Address, _: u8) -> SipPermit {
        self.view
            .rules
            .permit_of(crate::policy::verdict::address_ip(source))
    }
    fn dial_permits_peers(&mut self, rule: u8, _: u8) -> bool {
        self.view
            .rules
            .dial
            .get(rule as usize)
            .is_some_and(|r| r.permits_peers())
    }
    fn sip_denied(
        &mut self,
        _: &guard_common::SourceKey,
        reason: guard_common::Reason,
        rule: u8,
        _: u8,
    ) {
        self.denied = Some((reason, rule));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::Config;

    fn rules(text: &str) -> SipRules {
        let config = Config::parse(text, "t.toml").expect("valid");
        config.sip_rules()
    }

    const RULES: &str = r#"
[[extension_rules]]
name = "6010 from the office"
users = ["6010"]
permit = ["192.0.2.0/24"]

[[extension_rules]]
users = ["2xx", "6010"]
permit = ["192.0.2.128/25", "2001:db8::/32"]

[[dial_rules]]
name = "international"
prefixes = ["00", "+"]
permit = ["192.0.2.0/24", "peers"]
ban = "1d"

[[dial_rules]]
prefixes = ["0044"]
permit = ["198.51.100.0/24"]
"#;

    #[test]
    fn permit_entries_fold_overlapping_networks() {
        let r = rules(RULES);
        let entries = r.permit_entries();
        let find = |text: &str| {
            let net = mapped(&text.parse().unwrap());
            entries.iter().find(|(n, _)| *n == net).map(|(_, p)| *p)
        };
        assert_eq!(
            find("192.0.2.0/24"),
            Some(SipPermit {
                extensions: 0b01,
                dial: 0b01
            })
        );
        // The /25 is inside rule 0's /24 and dial rule 0's /24 too.
        assert_eq!(
            find("192.0.2.128/25"),
            Some(SipPermit {
                extensions: 0b11,
                dial: 0b01
            })
        );
        assert_eq!(find("198.51.100.0/24").unwrap().dial, 0b10);
        // The host's answer agrees with a longest match over the entries.
        for ip in ["192.0.2.200", "192.0.2.5", "2001:db8::1", "203.0.113.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let host = mapped_ip(ip);
            let longest = entries
                .iter()
                .filter(|(n, _)| n.contains(&host))
                .max_by_key(|(n, _)| n.prefix_len())
                .map_or(SipPermit::NONE, |(_, p)| *p);
            assert_eq!(r.permit_of(ip), longest, "{ip}");
        }
    }

    #[test]
    fn users_and_prefixes() {
        let r = rules(RULES);
        assert_eq!(r.rules_of_user("6010"), 0b11);
        assert_eq!(r.rules_of_user("250"), 0b10);
        assert_eq!(r.rules_of_user("1001"), 0);
        assert_eq!(r.dial_rule_of("0044123"), Some((1, "0044")));
        assert_eq!(r.dial_rule_of("0033123"), Some((0, "00")));
        assert_eq!(r.dial_rule_of("+4420"), Some((0, "+")));
        assert_eq!(r.dial_rule_of("1001"), None);
        let mut table = PatternTable::EMPTY;
        r.fill_table(&mut table).expect("fits");
        assert_eq!(table.sip_rules, RULES_EXTENSION | RULES_DIAL);
        assert_eq!(table.active, 1);
        assert_eq!(table.dial[0].flags, DIAL_PERMIT_PEERS);
        assert_eq!(table.dial[0].ban_ns, 86_400_000_000_000);
        assert_eq!(table.dial[1], DialRule::default());
        assert_eq!(r.dial_keys(1).len(), 3);
        assert!(r.dial_keys(1).iter().all(|(_, data, _)| data[0] == 1));
    }

    /// The example file's commented rules, uncommented, are a valid config
    /// holding the README's recipes.
    #[test]
    fn the_example_rules_are_valid() {
        let example = include_str!("../../../sipguard.example.toml");
        let start = example
            .find("# Per-extension source rules")
            .expect("section");
        let end = example.find("# HEP input").expect("next section");
        let toml: String = example[start..end]
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| {
                *line == "[[extension_rules]]"
                    || *line == "[[dial_rules]]"
                    || [
                        "name =",
                        "users =",
                        "permit =",
                        "prefixes =",
                        "ban =",
                        "calls_per_minute =",
                    ]
                    .iter()
                    .any(|key| line.starts_with(key))
            })
            .collect::<Vec<_>>()
            .join("\n");
        let r = rules(&toml);
        assert_eq!(r.extension.len(), 1);
        assert_eq!(r.dial.len(), 2);
        assert_eq!(r.rules_of_user("6010"), 1);
        assert_eq!(r.dial_rule_of("+4420"), Some((0, "+")));
        assert_eq!(r.dial_rule_of("00882123"), Some((1, "00882")));
    }

    #[test]
    fn bad_rules_name_their_line() {
        let err = |text: &str| Config::parse(text, "t.toml").unwrap_err().to_string();
        let e = err("[[dial_rules]]\nprefixes = [\"00\", \"0x1\"]\n");
        assert!(e.starts_with("t.toml:2:"), "{e}");
        assert!(e.contains("dial_rules[0].prefixes[1]"), "{e}");
        let e = err("[[dial_rules]]\nprefixes = [\"00\"]\n[[dial_rules]]\nprefixes = [\"00\"]\n");
        assert!(e.contains("in dial_rules[0] already"), "{e}");
        let e = err("[[dial_rules]]\nprefixes = [\"00\"]\npermit = [\"office\"]\n");
        assert!(e.contains("neither a network"), "{e}");
        let e =
            err("[[extension_rules]]\nusers = [\"6010\", \"a*b\"]\npermit = [\"10.0.0.0/8\"]\n");
        assert!(e.starts_with("t.toml:2:"), "{e}");
        assert!(e.contains("extension_rules[0].users[1]"), "{e}");
        let e = err("[[dial_rules]]\nprefixes = [\"00\"]\ncalls_per_minute = 0\n");
        assert!(e.starts_with("t.toml:3:"), "{e}");
        assert!(e.contains("calls_per_minute"), "{e}");
        let e = err("[[extension_rules]]\nusers = []\n");
        assert!(e.contains("empty list"), "{e}");
    }
}
