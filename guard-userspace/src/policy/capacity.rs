//! The map capacities a config asks for, checked against what the kernel
//! can give before anything is loaded: `check-config` and `reload` refuse a
//! capacity the kernel would refuse at start (with the file and line), and
//! report the memory the maps would take.
use guard_common::{BanEntry, RateKey, RateState, SourceKey, MAX_RULES_PER_PORT, RATE_LANES};

use crate::policy::config::{Config, PortRange};

/// The most entries a BPF hash or LRU map can have: the kernel rounds
/// `max_entries` up to a power of two buckets of 16 bytes and refuses more
/// than `U32_MAX / sizeof(struct bucket)` buckets (kernel/bpf/hashtab.c,
/// `htab_map_alloc`: E2BIG), that is 2^27 entries.
pub const MAX_HASH_ENTRIES: u64 = 1 << 27;
/// A preallocated hash element's header (`struct htab_elem`), bytes.
const HTAB_ELEM_HEADER: u64 = 48;
const HTAB_BUCKET: u64 = 16;
/// An LPM trie node's header (`struct lpm_trie_node` + prefix length).
const LPM_NODE_HEADER: u64 = 48;

/// The memory each sized map takes (hash maps up front, tries when full).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    pub bans: u64,
    pub rate_state: u64,
    pub lists: u64,
}

impl Footprint {
    pub fn total(&self) -> u64 {
        self.bans + self.rate_state + self.lists
    }
}

fn hash_bytes(entries: u64, key: usize, value: usize) -> u64 {
    let element = HTAB_ELEM_HEADER + round8(key) + round8(value);
    entries.saturating_mul(element) + entries.next_power_of_two().saturating_mul(HTAB_BUCKET)
}

fn trie_bytes(entries: u64, key: usize) -> u64 {
    entries.saturating_mul(LPM_NODE_HEADER + round8(key) + round8(4))
}

fn round8(size: usize) -> u64 {
    (size as u64).div_ceil(8) * 8
}

/// The entries of the rate-state map, at most: one per (source, rule
/// group) a port's rules span (`guard_common::rate_group`: rules 0-3 are
/// one group), so one per source under a policy of up to four rules.
pub fn rate_entries(config: &Config) -> u64 {
    let groups = (config.rate_rules().len() as u64).div_ceil(RATE_LANES as u64);
    u64::from(config.guard.max_tracked_sources) * rules_per_port(config).min(groups).max(1)
}

pub fn footprint(config: &Config) -> Footprint {
    let g = &config.guard;
    let cidrs = u64::from(g.max_cidrs);
    let fleet = u64::from(g.max_fleet_cidrs);
    Footprint {
        bans: hash_bytes(
            u64::from(g.max_bans),
            size_of::<SourceKey>(),
            size_of::<BanEntry>(),
        ),
        rate_state: hash_bytes(
            rate_entries(config),
            size_of::<RateKey>(),
            size_of::<RateState>(),
        ),
        // Allow and deny, IPv4 and IPv6; then the fleet deny set.
        lists: 2 * (trie_bytes(cidrs, 4) + trie_bytes(cidrs, 16))
            + trie_bytes(fleet, 4)
            + trie_bytes(fleet, 16),
    }
}

/// Refuses capacities the kernel cannot give: (key, reason).
pub fn check(config: &Config) -> Result<(), (String, String)> {
    let g = &config.guard;
    if u64::from(g.max_bans) > MAX_HASH_ENTRIES {
        return Err((
            "guard.max_bans".into(),
            format!(
                "{} is more than the kernel's hash maps hold ({MAX_HASH_ENTRIES})",
                g.max_bans
            ),
        ));
    }
    for (key, nets) in [
        (
            "allow",
            config.allow.iter().map(|e| e.cidr).collect::<Vec<_>>(),
        ),
        ("deny", config.deny.iter().map(|e| e.cidr).collect()),
    ] {
        let v4 = nets
            .iter()
            .filter(|n| matches!(n, ipnet::IpNet::V4(_)))
            .count();
        let most = v4.max(nets.len() - v4);
        if most > g.max_cidrs as usize {
            return Err((
                "guard.max_cidrs".into(),
                format!(
                    "{} holds {most} entries of one address family, more than max_cidrs ({})",
                    key, g.max_cidrs
                ),
            ));
        }
    }
    let rate = rate_entries(config);
    if rate > MAX_HASH_ENTRIES {
        return Err((
            "guard.max_tracked_sources".into(),
            format!(
                "{} sources x {} rate rules on one port = {rate} rate-state entries, more \
                 than the kernel's hash maps hold ({MAX_HASH_ENTRIES})",
                g.max_tracked_sources,
                rules_per_port(config)
            ),
        ));
    }
    check_memory(config, memory_total())
}

/// Refuses maps larger than the machine's memory (`have`, when known).
fn check_memory(config: &Config, have: Option<u64>) -> Result<(), (String, String)> {
    let need = footprint(config);
    if let Some(have) = have {
        if need.total() > have {
            let key = if need.rate_state >= need.bans && need.rate_state >= need.lists {
                "guard.max_tracked_sources"
            } else if need.bans >= need.lists {
                "guard.max_bans"
            } else {
                "guard.max_cidrs"
            };
            return Err((
                key.into(),
                format!(
                    "the maps would take {} (bans {}, rate state {}, lists {}), more than \
                     this machine's {} of memory",
                    human_bytes(need.total()),
                    human_bytes(need.bans),
                    human_bytes(need.rate_state),
                    human_bytes(need.lists),
                    human_bytes(have)
                ),
            ));
        }
    }
    Ok(())
}

/// The most rate rules that watch any one port (each needs a rate-state
/// entry per source), at most [`MAX_RULES_PER_PORT`].
pub fn rules_per_port(config: &Config) -> u64 {
    let services = config.services();
    let ranges: Vec<Vec<PortRange>> = config
        .rate_rules()
        .iter()
        .map(|rule| match (&rule.service, &rule.ports) {
            (Some(service), _) => services
                .iter()
                .find(|s| &s.name == service)
                .map(|s| s.ranges().cloned().collect())
                .unwrap_or_default(),
            (None, Some(ports)) => ports.iter().flat_map(|p| p.ranges()).cloned().collect(),
            (None, None) => Vec::new(),
        })
        .collect();
    // The most-watched port is the first port of some range.
    let covers = |rule: &Vec<PortRange>, at: &PortRange| {
        rule.iter()
            .any(|r| r.proto == at.proto && r.first <= at.first && at.first <= r.last)
    };
    let most = ranges
        .iter()
        .flatten()
        .map(|at| ranges.iter().filter(|rule| covers(rule, at)).count())
        .max()
        .unwrap_or(0);
    most.min(MAX_RULES_PER_PORT) as u64
}

/// MemTotal from /proc/meminfo, in bytes.
fn memory_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "test.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn the_defaults_fit_and_their_memory_is_reported() {
        let config = parse("").unwrap();
        assert_eq!(rules_per_port(&config), 2, "the two SIP rules on 5060");
        let need = footprint(&config);
        assert!(need.total() > 1 << 20 && need.total() < 1 << 30, "{need:?}");
    }

    #[test]
    fn capacities_the_kernel_cannot_give_are_refused_with_their_line() {
        let error = parse("[guard]\nmax_bans = 4294967295\n").unwrap_err();
        assert!(
            error.starts_with("test.toml:2: key `guard.max_bans`"),
            "{error}"
        );
        assert!(error.contains("134217728"), "{error}");
        // 2^30 sources x the two default rules on 5060.
        let error = parse("[guard]\n\nmax_tracked_sources = 1073741824\n").unwrap_err();
        assert!(
            error.starts_with("test.toml:3: key `guard.max_tracked_sources`"),
            "{error}"
        );
    }

    #[test]
    fn maps_larger_than_the_memory_are_refused() {
        let config = parse("[guard]\nmax_bans = 16777216\n").unwrap();
        let need = footprint(&config);
        assert!(need.bans > 1 << 30, "{need:?}");
        let (key, reason) = check_memory(&config, Some(1 << 30)).unwrap_err();
        assert_eq!(key, "guard.max_bans");
        assert!(
            reason.contains("more than this machine's 1.0 GiB"),
            "{reason}"
        );
        assert!(check_memory(&config, Some(64 << 30)).is_ok());
    }

    #[test]
    fn config_lists_beyond_max_cidrs_are_refused() {
        let error = parse(
            "[guard]\nmax_cidrs = 1\n[[deny]]\ncidr = \"192.0.2.0/24\"\n[[deny]]\ncidr = \"198.51.100.0/24\"\n",
        )
        .unwrap_err();
        assert!(
            error.contains(":2: key `guard.max_cidrs`: deny holds 2"),
            "{error}"
        );
        // One of each family fits in max_cidrs = 1 (a trie per family).
        parse("[guard]\nmax_cidrs = 1\n[[deny]]\ncidr = \"192.0.2.0/24\"\n[[deny]]\ncidr = \"2001:db8::/32\"\n")
            .unwrap();
    }

    #[test]
    fn rules_sharing_a_port_are_counted_together() {
        let config = parse(
            "[[rate_rules]]\nname = \"a\"\nports = [\"5060-5070/udp\"]\npackets = 5\nwindow = \"1s\"\nban = \"1m\"\n\
             [[rate_rules]]\nname = \"b\"\nports = [\"5065/udp\"]\npackets = 5\nwindow = \"1s\"\nban = \"1m\"\n\
             [[rate_rules]]\nname = \"c\"\nports = [\"5065/tcp\"]\npackets = 5\nwindow = \"1s\"\nban = \"1m\"\n",
        )
        .unwrap();
        assert_eq!(rules_per_port(&config), 2);
    }
}
