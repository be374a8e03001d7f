//! The TOML configuration: its shape, the built-in defaults, and validation.
//! Every error names the file, the line, the key and the reason.
use std::{collections::BTreeMap, path::Path, time::Duration};

use guard_common::{
    rate::MAX_RATE_LIMIT, service_bit, AccessMode, ALLOW_ALL, MAX_RATE_RULES, MAX_RULES_PER_PORT,
    MAX_SERVICES, UNCLASSIFIED_BIT,
};

use crate::sip::tracker::{AuthPolicy, LevelName};
use ipnet::IpNet;
use serde::Deserialize;

/// Where the built-in policy comes from when no `--config` is given.
pub const BUILTIN_SOURCE: &str = "<built-in default>";

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub guard: GuardSection,
    /// Overrides of the built-in services by name, and new services.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSection>,
    #[serde(default)]
    pub allow: Vec<AllowEntry>,
    #[serde(default)]
    pub deny: Vec<DenyEntry>,
    /// Replaces the built-in rules when present (an empty list disables them).
    #[serde(default)]
    pub rate_rules: Option<Vec<RateRuleSection>>,
    #[serde(default)]
    pub sip_auth: SipAuthSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Where ban alerts go (read at start-up).
    #[serde(default)]
    pub alerts: Vec<crate::alerts::AlertConfig>,
    /// The CrowdSec bouncer (off unless present).
    #[serde(default)]
    pub crowdsec: Option<crate::fleet::config::CrowdsecSection>,
    /// Blocklist feeds (APIBan, VoIPBL, FireHOL...) into the fleet deny set.
    #[serde(default)]
    pub feeds: Vec<crate::fleet::feeds::config::FeedSection>,
    #[serde(default)]
    pub sip_scanners: crate::policy::scanners::SipScannersSection,
    /// HEPv3 input: the signalling a PBX mirrors (read at start-up).
    #[serde(default)]
    pub hep: HepSection,
    #[serde(default)]
    pub peers: PeersSection,
    /// Users restricted to networks (see `policy::sip_rules`).
    #[serde(default)]
    pub extension_rules: Vec<crate::policy::sip_rules::ExtensionRuleSection>,
    /// Number prefixes only some sources may dial.
    #[serde(default)]
    pub dial_rules: Vec<crate::policy::sip_rules::DialRuleSection>,
}

/// Where the PBX's mirrored signalling (HEPv3) comes in, and from whom.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HepSection {
    /// UDP address to accept HEPv3 on; None: no HEP input.
    pub listen: Option<std::net::SocketAddr>,
    /// Accept HEPv3 over TCP on the same address too.
    pub tcp: bool,
    /// Senders allowed; required when `listen` is not a loopback address.
    pub allow: Vec<IpNet>,
    /// When set, a HEP message must carry this authentication key (chunk 14).
    pub auth_key: Option<String>,
    /// The PBX's own addresses, when it is not this host (this host's
    /// addresses always count): what it sends as a client is not judged.
    pub pbx_addresses: Vec<std::net::IpAddr>,
}

/// Learned peers: sources that authenticated with the PBX get a larger rate
/// budget. A peer's budget per rule is the rule's packets x
/// min(max(live users, 1) x `factor`, `max_multiplier`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PeersSection {
    /// Multiple of each rule's limit per live registered user.
    pub factor: u16,
    /// The largest multiple of a rule's limit a peer's budget reaches.
    pub max_multiplier: u16,
    /// Capacity of the peer map (a restart applies a change).
    pub max_peers: u32,
    /// How long an authenticated call or subscription keeps its source a
    /// peer after the PBX's last 2xx to one.
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
}

impl Default for PeersSection {
    fn default() -> Self {
        PeersSection {
            factor: guard_common::DEFAULT_PEER_FACTOR,
            max_multiplier: guard_common::DEFAULT_PEER_MAX_MULTIPLIER,
            max_peers: 65_536,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub enabled: bool,
    /// Where to serve GET /metrics.
    pub address: std::net::SocketAddr,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: true,
            address: std::net::SocketAddr::from(([127, 0, 0, 1], 9477)),
        }
    }
}

/// Bans from SIP authentication failures seen on the wire.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SipAuthSection {
    pub enabled: bool,
    /// The service whose ports carry the PBX's SIP signalling.
    pub service: String,
    pub level: LevelName,
    /// Overrides of the level's values.
    pub failures: Option<u32>,
    #[serde(with = "humantime_option")]
    pub window: Option<Duration>,
    #[serde(with = "humantime_option")]
    pub ban: Option<Duration>,
    /// Unproven failures ban at this many times the limit.
    pub unproven_multiplier: u32,
    /// Distinct failing usernames from one source that mean enumeration.
    pub enumeration_usernames: u32,
    /// Networks never banned for SIP failures (the allow list never is either).
    pub whitelist: Vec<IpNet>,
    /// Each new ban of the same source lasts this many times longer (1 = off)...
    pub escalation_factor: u32,
    /// ...up to this.
    #[serde(with = "humantime_serde_compat")]
    pub max_ban: Duration,
}

impl Default for SipAuthSection {
    fn default() -> Self {
        SipAuthSection {
            enabled: true,
            service: "sip".to_string(),
            level: LevelName::Normal,
            failures: None,
            window: None,
            ban: None,
            unproven_multiplier: 3,
            enumeration_usernames: 5,
            whitelist: Vec::new(),
            escalation_factor: 1,
            max_ban: Duration::from_secs(30 * 86_400),
        }
    }
}

mod humantime_option {
    use std::time::Duration;

    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::humantime_serde_compat::deserialize(d).map(Some)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GuardSection {
    #[serde(with = "default_policy")]
    pub default_policy: DefaultPolicy,
    /// None: not set (a reload keeps the monitor mode in force).
    pub monitor: Option<bool>,
    pub ipv6_ban_prefix: u8,
    pub max_bans: u32,
    pub max_tracked_sources: u32,
    pub max_cidrs: u32,
    /// Entries of the fleet deny set, per address family: CrowdSec range
    /// decisions and blocklist feeds, apart from the operator's lists.
    pub max_fleet_cidrs: u32,
}

impl Default for GuardSection {
    fn default() -> Self {
        GuardSection {
            default_policy: DefaultPolicy::Pass,
            monitor: None,
            ipv6_ban_prefix: 64,
            max_bans: 65_536,
            max_tracked_sources: 1_000_000,
            max_cidrs: 65_536,
            max_fleet_cidrs: 131_072,
        }
    }
}

/// The kernel's own enum, read by name.
pub use guard_common::DefaultPolicy;

mod default_policy {
    use guard_common::DefaultPolicy;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DefaultPolicy, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "pass" => Ok(DefaultPolicy::Pass),
            "drop" => Ok(DefaultPolicy::Drop),
            _ => Err(serde::de::Error::custom(format!(
                "unknown variant `{text}`, expected `pass` or `drop`"
            ))),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// Port specs such as "5060/udp", "10000-20000/udp" or "5060" (TCP and UDP).
    pub ports: Option<Vec<PortSpec>>,
    /// "open", "trusted" or "closed": the kernel's own access modes.
    #[serde(default, with = "access_mode")]
    pub access: Option<AccessMode>,
}

/// Access modes by name, straight into the kernel's enum.
mod access_mode {
    use guard_common::AccessMode;
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AccessMode>, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "open" => Ok(Some(AccessMode::Open)),
            "trusted" => Ok(Some(AccessMode::Trusted)),
            "closed" => Ok(Some(AccessMode::Closed)),
            _ => Err(serde::de::Error::custom(format!(
                "unknown variant `{text}`, expected one of `open`, `trusted`, `closed`"
            ))),
        }
    }
}

/// One port spec from the file, parsed as it is read: its ranges, and its
/// text for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    text: String,
    ranges: Vec<PortRange>,
}

impl PortSpec {
    pub fn ranges(&self) -> &[PortRange] {
        &self.ranges
    }
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for PortSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<PortSpec, String> {
        Ok(PortSpec {
            ranges: parse_port_spec(text)?,
            text: text.to_string(),
        })
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PortSpec, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A service as the policy uses it: the built-ins with the file's
/// overrides, then the file's own, ids from 1 in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub ports: Vec<PortSpec>,
    pub access: AccessMode,
}

impl Service {
    /// Every port range of the service.
    pub fn ranges(&self) -> impl Iterator<Item = &PortRange> {
        self.ports.iter().flat_map(PortSpec::ranges)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    pub cidr: IpNet,
    /// Service names, or "all" (the default). "other" means traffic that
    /// matches no service.
    #[serde(default = "all_services")]
    pub services: Vec<String>,
    #[serde(default)]
    pub comment: String,
    /// `services` resolved against the service table when the config is
    /// read (see [`AllowedService`]): what the kernel's allow trie holds.
    #[serde(skip)]
    pub mask: u32,
}

fn all_services() -> Vec<String> {
    vec![ALL.to_string()]
}

/// Allow-list keyword for every service and unclassified traffic.
pub const ALL: &str = "all";
/// Allow-list keyword for traffic that matches no service.
pub const OTHER: &str = "other";

/// One word of an allow entry's `services`, resolved against a service
/// table once, when the config or a runtime change is read. Names are the
/// entries' identity (a reload may renumber services); ids are what the
/// kernel holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowedService {
    /// `all`: every service and traffic that matches none.
    All,
    /// `other`: traffic that matches no service.
    Other,
    /// A service by its id (from 1, as the kernel numbers them).
    Id(u8),
}

impl AllowedService {
    /// `word` against the service names in id order; None if unknown.
    pub fn parse(word: &str, service_names: &[String]) -> Option<AllowedService> {
        match word {
            ALL => Some(AllowedService::All),
            OTHER => Some(AllowedService::Other),
            name => service_names
                .iter()
                .position(|n| n == name)
                .map(|i| AllowedService::Id(i as u8 + 1)),
        }
    }

    /// Its bits in an allow entry's mask.
    pub fn bits(self) -> u32 {
        match self {
            AllowedService::All => ALLOW_ALL,
            AllowedService::Other => UNCLASSIFIED_BIT,
            AllowedService::Id(id) => service_bit(id),
        }
    }
}

/// The allow mask of `words` against the service names in id order; the
/// first unknown word is the error.
pub fn allow_mask(service_names: &[String], words: &[String]) -> Result<u32, String> {
    words.iter().try_fold(0u32, |mask, word| {
        AllowedService::parse(word, service_names)
            .map(|service| mask | service.bits())
            .ok_or_else(|| word.clone())
    })
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DenyEntry {
    pub cidr: IpNet,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateRuleSection {
    pub name: String,
    /// Count packets to this service's ports...
    pub service: Option<String>,
    /// ...or to these port specs (exactly one of the two).
    pub ports: Option<Vec<PortSpec>>,
    /// Packets allowed per window; the next one bans.
    pub packets: u32,
    #[serde(with = "humantime_serde_compat")]
    pub window: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub ban: Duration,
    /// TCP only: count connection attempts (SYN without ACK) instead of packets.
    #[serde(default)]
    pub syn_only: bool,
}

/// Durations as humantime strings ("2s", "1h", "7d", "1h 30m").
pub(crate) mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

/// A port range of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub proto: guard_common::L4Proto,
    pub first: u16,
    pub last: u16,
}

/// Parses "5060/udp", "10000-20000/tcp" or "5060" (both protocols); the
/// one place a port spec is read (see [`PortSpec`]).
fn parse_port_spec(spec: &str) -> Result<Vec<PortRange>, String> {
    use guard_common::L4Proto;
    let (range, protos) = match spec.split_once('/') {
        Some((range, "udp")) => (range, vec![L4Proto::Udp]),
        Some((range, "tcp")) => (range, vec![L4Proto::Tcp]),
        Some((_, other)) => {
            return Err(format!(
                "port spec {spec:?}: unknown protocol {other:?} (use udp or tcp)"
            ))
        }
        None => (spec, vec![L4Proto::Udp, L4Proto::Tcp]),
    };
    let parse_port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("port spec {spec:?}: {p:?} is not a port number (0-65535)"))
    };
    let (first, last) = match range.split_once('-') {
        Some((a, b)) => (parse_port(a)?, parse_port(b)?),
        None => {
            let p = parse_port(range)?;
            (p, p)
        }
    };
    if first > last {
        return Err(format!("port spec {spec:?}: range runs backwards"));
    }
    Ok(protos
        .into_iter()
        .map(|proto| PortRange { proto, first, last })
        .collect())
}

/// A built-in port spec (a constant of this file, checked by the tests).
fn builtin_spec(text: &str) -> PortSpec {
    text.parse()
        .unwrap_or_else(|e| panic!("built-in port spec: {e}"))
}

/// The built-in services: (name, ports). All start `open`.
pub const BUILTIN_SERVICES: &[(&str, &[&str])] = &[
    ("sip", &["5060/udp", "5060/tcp"]),
    ("sip-tls", &["5061/tcp"]),
    ("rtp", &["10000-20000/udp"]),
    ("web", &["80/tcp", "443/tcp"]),
    ("ami", &["5038/tcp"]),
    ("ssh", &["22/tcp"]),
    ("tftp", &["69/udp"]),
];

/// The vendors' auto-blacklist rules on SIP/UDP 5060.
pub fn builtin_rate_rules() -> Vec<RateRuleSection> {
    let rule = |name: &str, packets, window| RateRuleSection {
        name: name.to_string(),
        service: None,
        ports: Some(vec![builtin_spec("5060/udp")]),
        packets,
        window: Duration::from_secs(window),
        ban: Duration::from_secs(3600),
        syn_only: false,
    };
    vec![
        rule("sip-udp-120-per-60s", 120, 60),
        rule("sip-udp-40-per-2s", 40, 2),
    ]
}

/// A configuration error, pointing at its place in the file:
/// `FILE:LINE: key KEY: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}{}", at_line(*.line), about(.key, .reason))]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: String,
    pub reason: String,
}

fn at_line(line: Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

fn about(key: &str, reason: &str) -> String {
    if key.is_empty() {
        format!(": {reason}")
    } else {
        format!(": key `{key}`: {reason}")
    }
}

/// The largest config file read (a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A config file's text: a regular file of at most [`MAX_CONFIG_BYTES`]
/// only, so that a FIFO, a device or /dev/zero is refused at once instead
/// of blocking or filling memory.
/// A bad file's error carries the line of the first invalid byte.
pub fn read_config_file(path: &Path) -> Result<String, (Option<usize>, String)> {
    let bytes = crate::state::read_regular_file(path, MAX_CONFIG_BYTES)
        .map_err(|e| (None, e.to_string()))?;
    config_text(bytes)
}

/// A config file's bytes as text, or why they are not and the line of the
/// first invalid byte (the fuzz target's entry: the file system plays no
/// part in it).
pub fn config_text(bytes: Vec<u8>) -> Result<String, (Option<usize>, String)> {
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        (
            Some(line),
            format!("not UTF-8 text (an invalid byte at offset {offset})"),
        )
    })
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = read_config_file(path).map_err(|(line, reason)| ConfigError {
            file: file.clone(),
            line,
            key: String::new(),
            reason,
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().map(|span| line_of_offset(text, span.start));
            ConfigError {
                file: file.to_string(),
                line,
                key: if key == "." { String::new() } else { key },
                reason: inner.message().trim().to_string(),
            }
        })?;
        config.validate().map_err(|(key, reason)| ConfigError {
            file: file.to_string(),
            line: spanned_line_of_key(text, &key).or_else(|| line_of_key(text, &key)),
            key,
            reason,
        })?;
        Ok(config.with_allow_masks())
    }

    /// Resolves each allow entry's services into its mask, once; validation
    /// has refused unknown names already.
    fn with_allow_masks(mut self) -> Config {
        let names: Vec<String> = self.services().into_iter().map(|s| s.name).collect();
        for entry in &mut self.allow {
            entry.mask = allow_mask(&names, &entry.services).unwrap_or(0);
        }
        self
    }

    /// The merged service table: built-ins with overrides, then new services,
    /// in id order (ids start at 1).
    pub fn services(&self) -> Vec<Service> {
        let mut out: Vec<Service> = BUILTIN_SERVICES
            .iter()
            .map(|(name, ports)| Service {
                name: name.to_string(),
                ports: ports.iter().map(|p| builtin_spec(p)).collect(),
                access: AccessMode::Open,
            })
            .collect();
        for (name, section) in &self.services {
            let slot = match out.iter().position(|s| s.name == *name) {
                Some(i) => i,
                None => {
                    out.push(Service {
                        name: name.clone(),
                        ports: Vec::new(),
                        access: AccessMode::Open,
                    });
                    out.len() - 1
                }
            };
            if let Some(ports) = &section.ports {
                out[slot].ports = ports.clone();
            }
            if let Some(access) = section.access {
                out[slot].access = access;
            }
        }
        out
    }

    /// The extension and dial rules.
    pub fn sip_rules(&self) -> crate::policy::sip_rules::SipRules {
        crate::policy::sip_rules::SipRules {
            extension: self.extension_rules.clone(),
            dial: self.dial_rules.clone(),
        }
    }

    pub fn rate_rules(&self) -> Vec<RateRuleSection> {
        self.rate_rules.clone().unwrap_or_else(builtin_rate_rules)
    }

    /// Checks what serde cannot: returns (key path, reason).
    fn validate(&self) -> Result<(), (String, String)> {
        let g = &self.guard;
        if !(1..=128).contains(&g.ipv6_ban_prefix) {
            return Err(("guard.ipv6_ban_prefix".into(), "must be 1..=128".into()));
        }
        for (key, value) in [
            ("guard.max_bans", g.max_bans),
            ("guard.max_tracked_sources", g.max_tracked_sources),
            ("guard.max_cidrs", g.max_cidrs),
            ("guard.max_fleet_cidrs", g.max_fleet_cidrs),
            ("peers.factor", self.peers.factor as u32),
            ("peers.max_multiplier", self.peers.max_multiplier as u32),
            ("peers.max_peers", self.peers.max_peers),
        ] {
            if value == 0 {
                return Err((key.into(), "must be at least 1".into()));
            }
        }

        crate::policy::capacity::check(self)?;

        let services = self.services();
        if services.len() > MAX_SERVICES {
            return Err((
                "services".into(),
                format!("at most {MAX_SERVICES} services, found {}", services.len()),
            ));
        }
        let mut claimed: Vec<(PortRange, &str)> = Vec::new();
        for service in &services {
            let name = &service.name;
            let key = format!("services.{name}.ports");
            if name == ALL || name == OTHER {
                return Err((format!("services.{name}"), "reserved service name".into()));
            }
            if service.ports.is_empty() {
                return Err((key, format!("service {name:?} needs at least one port")));
            }
            for spec in &service.ports {
                for range in spec.ranges() {
                    if let Some((_, other)) = claimed.iter().find(|(r, _)| overlaps(r, range)) {
                        return Err((
                            key,
                            format!("\"{spec}\" overlaps a port of service {other:?}"),
                        ));
                    }
                    claimed.push((*range, name));
                }
            }
        }

        let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
        for (i, entry) in self.allow.iter().enumerate() {
            if entry.services.is_empty() {
                return Err((format!("allow[{i}].services"), "empty list".into()));
            }
            if let Err(bad) = allow_mask(&names, &entry.services) {
                return Err((
                    format!("allow[{i}].services"),
                    format!("unknown service {bad:?}"),
                ));
            }
        }

        let rules = self.rate_rules();
        if rules.len() > MAX_RATE_RULES {
            return Err((
                "rate_rules".into(),
                format!("at most {MAX_RATE_RULES} rules, found {}", rules.len()),
            ));
        }
        for (i, rule) in rules.iter().enumerate() {
            let key = |field: &str| format!("rate_rules[{i}].{field}");
            match (&rule.service, &rule.ports) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err((
                        key("service"),
                        "give exactly one of service or ports".into(),
                    ))
                }
                (Some(service), None) if !services.iter().any(|s| s.name == *service) => {
                    return Err((key("service"), format!("unknown service {service:?}")))
                }
                (None, Some(ports)) if ports.is_empty() => {
                    return Err((key("ports"), "empty list".into()))
                }
                _ => {}
            }
            if rule.packets == 0 || rule.packets > MAX_RATE_LIMIT {
                return Err((key("packets"), format!("must be 1..={MAX_RATE_LIMIT}")));
            }
            if rule.window < Duration::from_secs(1) || rule.window > Duration::from_secs(86_400) {
                return Err((key("window"), "must be between 1s and 24h".into()));
            }
            if rule.ban.is_zero() {
                return Err((key("ban"), "must be longer than 0s".into()));
            }
            if rule.syn_only
                && !self
                    .rule_ranges(rule)
                    .iter()
                    .any(|r| r.proto == guard_common::L4Proto::Tcp)
            {
                return Err((key("syn_only"), "needs TCP ports to count SYNs on".into()));
            }
            if rules[..i].iter().any(|r| r.name == rule.name) {
                return Err((key("name"), format!("duplicate rule name {:?}", rule.name)));
            }
        }
        self.validate_rules_per_port(&rules)?;
        self.validate_sip_auth(&services)?;
        self.sip_scanners.validate()?;
        self.sip_rules().validate()?;
        self.validate_hep()?;
        for (i, alert) in self.alerts.iter().enumerate() {
            alert
                .validate()
                .map_err(|(field, reason)| (format!("alerts[{i}].{field}"), reason))?;
        }
        self.crowdsec.as_ref().map_or(Ok(()), |c| c.validate())?;
        crate::fleet::feeds::config::validate_all(&self.feeds)
    }

    fn validate_hep(&self) -> Result<(), (String, String)> {
        let hep = &self.hep;
        let Some(listen) = hep.listen else {
            return Ok(());
        };
        if !self.sip_auth.enabled {
            return Err((
                "hep.listen".into(),
                "HEP input feeds the SIP authentication watcher: set sip_auth.enabled = true"
                    .into(),
            ));
        }
        if !listen.ip().is_loopback() && hep.allow.is_empty() {
            return Err((
                "hep.listen".into(),
                format!(
                    "{} is not a loopback address: list the PBXs allowed to send HEP in hep.allow",
                    listen.ip()
                ),
            ));
        }
        if hep.auth_key.as_ref().is_some_and(|k| k.is_empty()) {
            return Err(("hep.auth_key".into(), "must not be empty".into()));
        }
        Ok(())
    }

    fn validate_sip_auth(&self, services: &[Service]) -> Result<(), (String, String)> {
        let a = &self.sip_auth;
        let key = |field: &str| format!("sip_auth.{field}");
        if !services.iter().any(|s| s.name == a.service) {
            return Err((key("service"), format!("unknown service {:?}", a.service)));
        }
        if a.failures == Some(0) {
            return Err((key("failures"), "must be at least 1".into()));
        }
        if a.window.is_some_and(|w| w < Duration::from_secs(1)) {
            return Err((key("window"), "must be at least 1s".into()));
        }
        if a.ban.is_some_and(|b| b.is_zero()) {
            return Err((key("ban"), "must be longer than 0s".into()));
        }
        if a.unproven_multiplier == 0 {
            return Err((key("unproven_multiplier"), "must be at least 1".into()));
        }
        if a.enumeration_usernames < 2 {
            return Err((key("enumeration_usernames"), "must be at least 2".into()));
        }
        if a.escalation_factor == 0 {
            return Err((
                key("escalation_factor"),
                "must be at least 1 (1 = off)".into(),
            ));
        }
        if a.max_ban < self.auth_policy().level.ban {
            return Err((key("max_ban"), "must not be shorter than the ban".into()));
        }
        Ok(())
    }

    /// The authentication-failure policy: the level with any overrides; the
    /// whitelist includes every allow-listed network.
    pub fn auth_policy(&self) -> AuthPolicy {
        let a = &self.sip_auth;
        let mut level = a.level.level();
        level.failures = a.failures.unwrap_or(level.failures);
        level.window = a.window.unwrap_or(level.window);
        level.ban = a.ban.unwrap_or(level.ban);
        let mut whitelist = a.whitelist.clone();
        whitelist.extend(self.allow.iter().map(|entry| entry.cidr));
        AuthPolicy {
            level,
            unproven_multiplier: a.unproven_multiplier,
            enumeration_usernames: a.enumeration_usernames,
            whitelist,
            escalation_factor: a.escalation_factor,
            max_ban: a.max_ban,
            ipv6_prefix: self.guard.ipv6_ban_prefix,
            // Half the ban map: forged failures can never fill it.
            unproven_ban_budget: (self.guard.max_bans / 2) as usize,
            peer_idle: self.peers.idle_timeout,
            max_peers: self.peers.max_peers as usize,
        }
    }

    /// No port may be watched by more than MAX_RULES_PER_PORT rules.
    fn validate_rules_per_port(&self, rules: &[RateRuleSection]) -> Result<(), (String, String)> {
        let mut watchers: BTreeMap<(u8, u16), usize> = BTreeMap::new();
        for (i, rule) in rules.iter().enumerate() {
            let mut ports: Vec<(u8, u16)> = self
                .rule_ranges(rule)
                .iter()
                .flat_map(|r| (r.first..=r.last).map(move |p| (r.proto as u8, p)))
                .collect();
            ports.sort_unstable();
            ports.dedup();
            for port in ports {
                let n = watchers.entry(port).or_default();
                *n += 1;
                if *n > MAX_RULES_PER_PORT {
                    return Err((
                        format!("rate_rules[{i}]"),
                        format!(
                            "port {} is watched by more than {MAX_RULES_PER_PORT} rules",
                            port.1
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The port ranges a rate rule watches (assumes a validated rule).
    pub fn rule_ranges(&self, rule: &RateRuleSection) -> Vec<PortRange> {
        match (&rule.service, &rule.ports) {
            (Some(service), _) => self
                .services()
                .into_iter()
                .find(|s| s.name == *service)
                .map(|s| s.ranges().copied().collect())
                .unwrap_or_default(),
            (None, Some(ports)) => ports
                .iter()
                .flat_map(|p| p.ranges().iter().copied())
                .collect(),
            (None, None) => Vec::new(),
        }
    }
}

fn overlaps(a: &PortRange, b: &PortRange) -> bool {
    a.proto == b.proto && a.first <= b.last && b.first <= a.last
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of a key path such as `rate_rules[1].window` from the parsed
/// document's spans, which also finds keys inside inline arrays and tables
/// (`rate_rules = [{ ... }]`): the deepest part that has a place in the file.
fn spanned_line_of_key(text: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = doc.as_item();
    let mut span: Option<std::ops::Range<usize>> = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some(named) = item.get(name) else { break };
        item = named;
        span = item.span().or(span);
        if let Some(n) = index {
            let Some(nth) = item.get(n) else { break };
            item = nth;
            span = item.span().or(span);
        }
    }
    span.map(|s| line_of_offset(text, s.start))
}

/// Best-effort line of a key path such as `rate_rules[1].window` or
/// `services.web.ports`: the line of the deepest part that can be found.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let mut line = None;
    let mut search_from = 0usize;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let found = match index {
            // The n-th `[[name]]` header.
            Some(n) => find_nth_line(text, search_from, n, |l| l == format!("[[{name}]]")),
            // A `[section.name]` header or a `name =` assignment.
            None => find_nth_line(text, search_from, 0, |l| {
                l.starts_with(&format!("{name} ="))
                    || l.starts_with(&format!("{name}="))
                    || (l.starts_with('[') && l.trim_matches(['[', ']']).ends_with(name))
            }),
        };
        if let Some((l, offset)) = found {
            line = Some(l);
            search_from = offset;
        }
    }
    line
}

/// (1-based line, byte offset of the line after it) of the n-th line from
/// `from` whose trimmed text satisfies `matches`.
fn find_nth_line(
    text: &str,
    from: usize,
    n: usize,
    matches: impl Fn(&str) -> bool,
) -> Option<(usize, usize)> {
    let mut seen = 0;
    let mut offset = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += raw.len();
        if start < from {
            continue;
        }
        if matches(raw.trim()) {
            if seen == n {
                return Some((i + 1, offset));
            }
            seen += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
    }

    #[test]
    fn allow_services_are_resolved_once_when_the_config_is_read() {
        let c = parse(
            "[[allow]]\ncidr = \"10.0.0.0/8\"\nservices = [\"sip\", \"other\"]\n\
             [[allow]]\ncidr = \"10.1.0.0/16\"\n",
        )
        .unwrap();
        let names: Vec<String> = c.services().into_iter().map(|s| s.name).collect();
        let sip = AllowedService::parse("sip", &names).unwrap();
        assert_eq!(sip, AllowedService::Id(1));
        assert_eq!(c.allow[0].mask, sip.bits() | UNCLASSIFIED_BIT);
        assert_eq!(c.allow[1].mask, ALLOW_ALL, "all by default");
        assert_eq!(AllowedService::parse("fax", &names), None);
        assert_eq!(
            allow_mask(&names, &["web".into(), "fax".into()]),
            Err("fax".to_string())
        );
    }

    #[test]
    fn empty_config_is_the_builtin_policy() {
        let c = parse("").unwrap();
        assert_eq!(c.guard.default_policy, DefaultPolicy::Pass);
        assert_eq!(c.guard.monitor, None);
        let rules = c.rate_rules();
        assert_eq!(rules.len(), 2);
        assert_eq!((rules[0].packets, rules[0].window.as_secs()), (120, 60));
        assert_eq!((rules[1].packets, rules[1].window.as_secs()), (40, 2));
        assert!(rules.iter().all(|r| r.ban == Duration::from_secs(3600)));
        let services = c.services();
        assert_eq!(services.len(), 7);
        assert!(services.iter().all(|s| s.access == AccessMode::Open));
    }

    #[test]
    fn hep_beyond_loopback_needs_an_allow_list() {
        let c = parse("[hep]\nlisten = \"127.0.0.1:9060\"\n").unwrap();
        assert_eq!(c.hep.listen, Some("127.0.0.1:9060".parse().unwrap()));
        assert!(!c.hep.tcp && c.hep.allow.is_empty());
        let e =
            parse("[metrics]\nenabled = false\n\n[hep]\ntcp = true\nlisten = \"0.0.0.0:9060\"\n")
                .unwrap_err();
        assert_eq!(e.line, Some(6), "{e}");
        assert_eq!(e.key, "hep.listen");
        assert!(
            e.to_string()
                .starts_with("test.toml:6: key `hep.listen`: 0.0.0.0 is not a loopback"),
            "{e}"
        );
        let c = parse("[hep]\nlisten = \"[::]:9060\"\nallow = [\"192.0.2.10/32\"]\n").unwrap();
        assert_eq!(c.hep.allow.len(), 1);
        let e =
            parse("[sip_auth]\nenabled = false\n[hep]\nlisten = \"127.0.0.1:9060\"\n").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("hep.listen", Some(4)), "{e}");
        let e = parse("[hep]\nlisten = \"127.0.0.1:9060\"\nauth_key = \"\"\n").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("hep.auth_key", Some(3)), "{e}");
        let e = parse("[hep]\nlisten = \"127.0.0.1\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = parse("[hep]\nlisten = \"127.0.0.1:9060\"\nallow = [\"nonsense\"]\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../../sipguard.example.toml");
        let c = parse(text).unwrap();
        assert!(c.rate_rules().len() >= 2);
    }

    #[test]
    fn overrides_and_new_services_merge() {
        let c = parse(
            r#"
[services.web]
access = "trusted"
[services.provisioning]
ports = ["8088/tcp"]
access = "closed"
"#,
        )
        .unwrap();
        let s = c.services();
        let web = s.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(web.access, AccessMode::Trusted);
        let ports: Vec<String> = web.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(ports, ["80/tcp", "443/tcp"]);
        let last = s.last().unwrap();
        assert_eq!(
            (last.name.as_str(), last.access),
            ("provisioning", AccessMode::Closed)
        );
    }

    #[test]
    fn port_specs() {
        use guard_common::L4Proto::*;
        assert_eq!(
            parse_port_spec("10000-20000/udp").unwrap(),
            vec![PortRange {
                proto: Udp,
                first: 10000,
                last: 20000
            }]
        );
        assert_eq!(parse_port_spec("5060").unwrap().len(), 2);
        assert!(parse_port_spec("5060/sctp").is_err());
        assert!(parse_port_spec("70000/udp").is_err());
        assert!(parse_port_spec("20-10/udp").is_err());
        assert!(parse_port_spec("x/udp").is_err());
    }

    #[test]
    fn syntax_error_names_line() {
        let e = parse("[guard]\ndefault_policy = \n").unwrap_err();
        assert_eq!(e.file, "test.toml");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let e = parse("[guard]\nmonitor = false\ndefault_policy = \"maybe\"\n").unwrap_err();
        assert_eq!(e.key, "guard.default_policy");
        assert_eq!(e.line, Some(3));
        assert!(
            e.reason.contains("maybe") || e.reason.contains("variant"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("test.toml:3: key `guard.default_policy`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_rejected() {
        let e = parse("[guard]\nmonitr = true\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.reason.contains("monitr"), "{e}");
    }

    #[test]
    fn bad_cidr_is_rejected_with_its_line() {
        let e = parse("[[allow]]\ncidr = \"10.0.0.0/33\"\n").unwrap_err();
        assert_eq!(e.key, "allow[0].cidr");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let text = r#"
[[rate_rules]]
name = "a"
ports = ["5060/udp"]
packets = 10
window = "10s"
ban = "1h"

[[rate_rules]]
name = "b"
service = "nope"
packets = 10
window = "10s"
ban = "1h"
"#;
        let e = parse(text).unwrap_err();
        assert_eq!(e.key, "rate_rules[1].service");
        assert_eq!(e.line, Some(11));
        assert!(e.reason.contains("nope"));
    }

    #[test]
    fn rule_limits_are_checked() {
        let rule = |extra: &str| {
            format!("[[rate_rules]]\nname = \"r\"\nports = [\"5060/udp\"]\n{extra}\n")
        };
        let e = parse(&rule("packets = 0\nwindow = \"2s\"\nban = \"1h\"")).unwrap_err();
        assert_eq!(e.key, "rate_rules[0].packets");
        let e = parse(&rule("packets = 5\nwindow = \"0s\"\nban = \"1h\"")).unwrap_err();
        assert_eq!(e.key, "rate_rules[0].window");
        let e = parse(&rule(
            "packets = 5\nwindow = \"2 fortnights\"\nban = \"1h\"",
        ))
        .unwrap_err();
        assert_eq!(e.key, "rate_rules[0].window");
        let e = parse(&rule(
            "packets = 5\nwindow = \"2s\"\nban = \"1h\"\nsyn_only = true",
        ))
        .unwrap_err();
        assert_eq!(e.key, "rate_rules[0].syn_only");
    }

    #[test]
    fn too_many_rules_is_an_error() {
        let mut text = String::new();
        for i in 0..=MAX_RATE_RULES {
            text += &format!(
                "[[rate_rules]]\nname = \"r{i}\"\nports = [\"{}/udp\"]\npackets = 5\nwindow = \"2s\"\nban = \"1h\"\n",
                1000 + i
            );
        }
        assert_eq!(parse(&text).unwrap_err().key, "rate_rules");
        // Exactly the maximum is fine.
        let cut = text.rfind("[[rate_rules]]").unwrap();
        assert!(parse(&text[..cut]).is_ok());
    }

    #[test]
    fn at_most_four_rules_per_port() {
        let mut text = String::new();
        for i in 0..5 {
            text += &format!(
                "[[rate_rules]]\nname = \"r{i}\"\nservice = \"sip\"\npackets = {}\nwindow = \"2s\"\nban = \"1h\"\n",
                10 + i
            );
        }
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "rate_rules[4]");
        assert!(e.reason.contains("5060"), "{e}");
    }

    #[test]
    fn overlapping_services_are_rejected() {
        let e = parse("[services.mysip]\nports = [\"5060/udp\"]\n").unwrap_err();
        assert_eq!(e.key, "services.mysip.ports");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn unknown_allow_service_is_rejected() {
        let e =
            parse("[[allow]]\ncidr = \"10.0.0.0/8\"\nservices = [\"sip\", \"fax\"]\n").unwrap_err();
        assert_eq!(e.key, "allow[0].services");
        assert!(e.reason.contains("fax"));
    }

    #[test]
    fn sip_auth_defaults_and_overrides() {
        let c = parse("").unwrap();
        assert!(c.sip_auth.enabled);
        let p = c.auth_policy();
        assert_eq!(p.level, LevelName::Normal.level());
        assert_eq!((p.unproven_multiplier, p.enumeration_usernames), (3, 5));
        let c = parse(
            "[sip_auth]\nlevel = \"strong\"\nban = \"2d\"\nwhitelist = [\"198.51.100.0/24\"]\n\
             [[allow]]\ncidr = \"192.0.2.0/24\"\n",
        )
        .unwrap();
        let p = c.auth_policy();
        assert_eq!(p.level.failures, 5);
        assert_eq!(p.level.ban, Duration::from_secs(2 * 86_400));
        assert_eq!(p.whitelist.len(), 2);
        let e = parse("[sip_auth]\nlevel = \"extreme\"\n").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("sip_auth.level", Some(2)));
        let e = parse("[sip_auth]\nservice = \"fax\"\n").unwrap_err();
        assert_eq!(e.key, "sip_auth.service");
        let e = parse("[sip_auth]\nmax_ban = \"1h\"\n").unwrap_err();
        assert_eq!(e.key, "sip_auth.max_ban");
    }

    #[test]
    fn metrics_section() {
        let c = parse("").unwrap();
        assert!(c.metrics.enabled);
        assert_eq!(c.metrics.address.to_string(), "127.0.0.1:9477");
        let c = parse("[metrics]\nenabled = false\naddress = \"[::1]:9000\"\n").unwrap();
        assert!(!c.metrics.enabled);
        let e = parse("[metrics]\naddress = \"localhost\"\n").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("metrics.address", Some(2)));
    }

    #[test]
    fn guard_limits() {
        assert_eq!(
            parse("[guard]\nipv6_ban_prefix = 0\n").unwrap_err().key,
            "guard.ipv6_ban_prefix"
        );
        assert_eq!(parse("[guard]\nmax_bans = 0\n").unwrap_err().line, Some(2));
        assert_eq!(
            parse("[guard]\nmax_bans = -1\n").unwrap_err().key,
            "guard.max_bans"
        );
    }
}

#[cfg(test)]
mod typed_tests {
    use super::*;

    #[test]
    fn port_specs_are_read_once_with_their_place_in_the_file() {
        let text = "[guard]\ndefault_policy = \"drop\"\n\n[services.web]\nports = [\"80/tcp\", \"8x/tcp\"]\n";
        let e = Config::parse(text, "t.toml").unwrap_err();
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.key.starts_with("services.web.ports"), "{e}");
        assert!(e.reason.contains("\"8x\" is not a port number"), "{e}");

        let text = "[[rate_rules]]\nname = \"x\"\nports = [\"5060/sctp\"]\npackets = 3\nwindow = \"2s\"\nban = \"1h\"\n";
        let e = Config::parse(text, "t.toml").unwrap_err();
        assert!(e.key.starts_with("rate_rules[0].ports"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.reason.contains("unknown protocol"), "{e}");

        let e = Config::parse("[services.web]\naccess = \"sometimes\"\n", "t.toml").unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line),
            ("services.web.access", Some(2)),
            "{e}"
        );
        assert!(
            e.reason
                .contains("expected one of `open`, `trusted`, `closed`"),
            "{e}"
        );
    }

    #[test]
    fn errors_inside_inline_arrays_name_their_line() {
        let text = "rate_rules = [\n  { name = \"a\", ports = [\"5060/udp\"], packets = 3, window = \"2s\", ban = \"1h\" },\n  { name = \"b\", ports = [\"5060/udp\"], packets = 0, window = \"2s\", ban = \"1h\" },\n]\n";
        let e = Config::parse(text, "t.toml").unwrap_err();
        assert_eq!(e.key, "rate_rules[1].packets", "{e}");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn a_file_that_is_not_utf8_names_the_line_of_its_bad_byte() {
        let dir = std::env::temp_dir().join(format!("sipguard-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, b"[guard]\nmonitor = false\n# caf\xe9\n").unwrap();
        let e = Config::load(&path).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.reason.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn services_carry_typed_ranges_and_access() {
        let c = Config::parse(
            "[services.fax]\nports = [\"9100-9102\"]\naccess = \"trusted\"\n",
            "t.toml",
        )
        .unwrap();
        let fax = c.services().into_iter().find(|s| s.name == "fax").unwrap();
        assert_eq!(fax.access, AccessMode::Trusted);
        let ranges: Vec<(u16, u16)> = fax.ranges().map(|r| (r.first, r.last)).collect();
        assert_eq!(ranges, [(9100, 9102), (9100, 9102)], "UDP and TCP");
        for (name, specs) in BUILTIN_SERVICES {
            for spec in *specs {
                assert!(spec.parse::<PortSpec>().is_ok(), "{name}: {spec}");
            }
        }
    }
}
