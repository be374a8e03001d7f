//! The decisions in force, as the bouncer learned them from the stream, and
//! the changes to the kernel that each answer makes. Pure bookkeeping (no
//! kernel, no clock of its own), so every rule here is unit-tested.
//!
//! Several decisions can target one address (two scenarios, a re-ban): the
//! book keeps each by its LAPI id, and the target stays enforced until its
//! last decision is deleted or runs out, for as long as the longest one.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use guard_common::SourceKey;
use ipnet::IpNet;

use super::{
    config::{CrowdsecSection, Scope},
    lapi::{parse_go_duration, scope_of, Decision, Stream},
};
use crate::kernel::maps::source_key;

/// What a decision drops: one source (a ban-map key) or a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Source(SourceKey),
    Range(IpNet),
}

impl Target {
    /// Sources first, each by address; then ranges.
    fn order(&self) -> (u8, [u8; 16], u8) {
        match self {
            Target::Source(key) => (0, key.addr, 0),
            Target::Range(IpNet::V4(n)) => (1, n.addr().to_ipv6_mapped().octets(), n.prefix_len()),
            Target::Range(IpNet::V6(n)) => (2, n.addr().octets(), n.prefix_len()),
        }
    }
}

impl Ord for Target {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order().cmp(&other.order())
    }
}

impl PartialOrd for Target {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    expires_ns: u64,
    scenario: String,
    origin: String,
}

/// A change to make in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Enforce `target` until `expires_ns` (monotonic), for `scenario`.
    Enforce {
        target: Target,
        /// The address as the decision named it (for logs and allow checks).
        value: String,
        expires_ns: u64,
        scenario: String,
        origin: String,
    },
    /// No decision holds `target` any more.
    Lift { target: Target },
}

/// What one stream answer held, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub new: u64,
    pub deleted: u64,
    /// Types other than `ban` (captcha, throttle...): counted, ignored.
    pub other_types: u64,
    /// Scopes not configured or not enforceable (country, AS...).
    pub other_scopes: u64,
    /// Left out by `origins` / `scenarios_*`.
    pub filtered: u64,
    /// Unparsable value or duration, or no id.
    pub malformed: u64,
    /// New decisions that had already run out.
    pub expired: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.new += other.new;
        self.deleted += other.deleted;
        self.other_types += other.other_types;
        self.other_scopes += other.other_scopes;
        self.filtered += other.filtered;
        self.malformed += other.malformed;
        self.expired += other.expired;
    }
}

#[derive(Debug, Default)]
pub struct Book {
    held: BTreeMap<Target, BTreeMap<i64, Held>>,
    /// Which target each decision id holds (deletes name the id).
    by_id: HashMap<i64, Target>,
    pub totals: Tally,
}

/// Why a decision is not taken.
enum Skip {
    OtherType,
    OtherScope,
    Filtered,
    Malformed,
}

impl Book {
    /// The targets in force (for the full resync after `startup=true`).
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.held.keys()
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Forgets everything (before a `startup=true` answer is applied).
    pub fn clear(&mut self) {
        self.held.clear();
        self.by_id.clear();
    }

    /// Takes one stream answer received at `now_ns`; returns the kernel
    /// changes in order (lifts first, so a re-ban in the same answer stays).
    pub fn apply(
        &mut self,
        stream: Stream,
        section: &CrowdsecSection,
        ipv6_prefix: u8,
        now_ns: u64,
    ) -> (Vec<Change>, Tally) {
        let mut tally = Tally::default();
        let mut touched: Vec<Target> = Vec::new();
        for decision in stream.deleted.unwrap_or_default() {
            tally.deleted += 1;
            if let Some(id) = decision.id {
                if let Some(target) = self.by_id.remove(&id) {
                    if let Some(held) = self.held.get_mut(&target) {
                        held.remove(&id);
                    }
                    touched.push(target);
                }
            }
        }
        for decision in stream.new.unwrap_or_default() {
            tally.new += 1;
            match accept(&decision, section, ipv6_prefix, now_ns) {
                Ok(Some((id, target, held))) => {
                    // The same id again (a resent decision) moves, never duplicates.
                    if let Some(old) = self.by_id.insert(id, target) {
                        if let Some(h) = self.held.get_mut(&old) {
                            h.remove(&id);
                        }
                        touched.push(old);
                    }
                    self.held.entry(target).or_default().insert(id, held);
                    touched.push(target);
                }
                Ok(None) => tally.expired += 1,
                Err(Skip::OtherType) => tally.other_types += 1,
                Err(Skip::OtherScope) => tally.other_scopes += 1,
                Err(Skip::Filtered) => tally.filtered += 1,
                Err(Skip::Malformed) => tally.malformed += 1,
            }
        }
        touched.sort();
        touched.dedup();
        let mut changes: Vec<Change> = Vec::new();
        let mut enforce: Vec<Change> = Vec::new();
        for target in touched {
            match self.strongest(&target) {
                Some(change) => enforce.push(change),
                None => {
                    self.held.remove(&target);
                    changes.push(Change::Lift { target });
                }
            }
        }
        changes.extend(enforce);
        self.totals.add(&tally);
        (changes, tally)
    }

    /// Drops decisions that have run out; returns the targets no longer held.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Change> {
        let mut lifted = Vec::new();
        let mut gone = Vec::new();
        self.held.retain(|target, held| {
            held.retain(|id, h| {
                let live = h.expires_ns > now_ns;
                if !live {
                    gone.push(*id);
                }
                live
            });
            if held.is_empty() {
                lifted.push(Change::Lift { target: *target });
            }
            !held.is_empty()
        });
        for id in gone {
            self.by_id.remove(&id);
        }
        lifted
    }

    /// The change that enforces `target` by its longest decision.
    fn strongest(&self, target: &Target) -> Option<Change> {
        let (_, held) = self
            .held
            .get(target)?
            .iter()
            .max_by_key(|(_, h)| h.expires_ns)?;
        Some(Change::Enforce {
            target: *target,
            value: describe(target),
            expires_ns: held.expires_ns,
            scenario: held.scenario.clone(),
            origin: held.origin.clone(),
        })
    }

    /// The scenario and origin holding `target`, for `explain` and logs.
    pub fn holder(&self, target: &Target) -> Option<(&str, &str)> {
        let (_, held) = self
            .held
            .get(target)?
            .iter()
            .max_by_key(|(_, h)| h.expires_ns)?;
        Some((&held.scenario, &held.origin))
    }
}

fn describe(target: &Target) -> String {
    match target {
        Target::Source(key) => crate::kernel::bans::source_ip(key).to_string(),
        Target::Range(net) => net.to_string(),
    }
}

/// A decision to hold: (id, target, held); None if it has run out.
fn accept(
    decision: &Decision,
    section: &CrowdsecSection,
    ipv6_prefix: u8,
    now_ns: u64,
) -> Result<Option<(i64, Target, Held)>, Skip> {
    if !decision.kind.eq_ignore_ascii_case("ban") {
        return Err(Skip::OtherType);
    }
    let scope = scope_of(decision)
        .filter(|s| section.scopes.contains(s))
        .ok_or(Skip::OtherScope)?;
    if !section.wants(&decision.origin, &decision.scenario) {
        return Err(Skip::Filtered);
    }
    let id = decision.id.ok_or(Skip::Malformed)?;
    let target = target_of(scope, decision.value.trim(), ipv6_prefix).ok_or(Skip::Malformed)?;
    let Some(duration) = parse_go_duration(&decision.duration).map_err(|_| Skip::Malformed)? else {
        return Ok(None);
    };
    if duration.is_zero() {
        return Ok(None);
    }
    let duration = duration.min(MAX_DECISION);
    let expires_ns = now_ns.saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    Ok(Some((
        id,
        target,
        Held {
            expires_ns,
            scenario: decision.scenario.clone(),
            origin: decision.origin.clone(),
        },
    )))
}

/// An `Ip` value is an address; a `Range` value a CIDR. A range that is a
/// single address (/32, /128) is a ban like an `Ip` decision.
fn target_of(scope: Scope, value: &str, ipv6_prefix: u8) -> Option<Target> {
    match scope {
        Scope::Ip => {
            let ip: IpAddr = value.parse().ok()?;
            Some(Target::Source(source_key(ip, ipv6_prefix)))
        }
        Scope::Range => {
            let net: IpNet = value.parse().ok()?;
            let net = net.trunc();
            if net.prefix_len() == net.max_prefix_len() {
                Some(Target::Source(source_key(net.addr(), ipv6_prefix)))
            } else {
                Some(Target::Range(net))
            }
        }
    }
}

/// The longest a decision is taken for, whatever the LAPI says: a bound
/// that keeps every expiry far from overflowing the monotonic clock.
pub const MAX_DECISION: Duration = Duration::from_secs(10 * 365 * 86_400);

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000_000;
    const SEC: u64 = 1_000_000_000;
    const BOTH: &str = "scopes = [\"ip\", \"range\"]";

    fn section(extra: &str) -> CrowdsecSection {
        toml::from_str(&format!(
            "lapi_url = \"http://127.0.0.1:8080\"\nbouncer_api_key = \"k\"\n{extra}"
        ))
        .unwrap()
    }

    fn decision(id: i64, scope: &str, value: &str, duration: &str) -> Decision {
        Decision {
            id: Some(id),
            origin: "cscli".into(),
            kind: "ban".into(),
            scope: scope.into(),
            value: value.into(),
            duration: duration.into(),
            scenario: "test".into(),
        }
    }

    fn stream(new: Vec<Decision>, deleted: Vec<Decision>) -> Stream {
        Stream {
            new: Some(new),
            deleted: Some(deleted),
        }
    }

    fn ip(text: &str) -> Target {
        Target::Source(source_key(text.parse().unwrap(), 64))
    }

    fn net(text: &str) -> Target {
        Target::Range(text.parse().unwrap())
    }

    fn enforced(changes: &[Change]) -> Vec<(Target, u64)> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Enforce {
                    target, expires_ns, ..
                } => Some((*target, *expires_ns)),
                Change::Lift { .. } => None,
            })
            .collect()
    }

    fn lifted(changes: &[Change]) -> Vec<Target> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Lift { target } => Some(*target),
                Change::Enforce { .. } => None,
            })
            .collect()
    }

    #[test]
    fn ips_and_ranges_are_enforced_for_their_duration() {
        let mut book = Book::default();
        let s = stream(
            vec![
                decision(1, "Ip", "198.51.100.7", "1h"),
                decision(2, "Range", "203.0.113.0/24", "30m"),
                decision(3, "Ip", "2001:db8:1:2::9", "10s"),
                decision(4, "Range", "192.0.2.77/32", "10s"),
                decision(5, "Range", "203.0.114.9/24", "10s"),
            ],
            vec![],
        );
        let (changes, tally) = book.apply(s, &section(BOTH), 64, NOW);
        assert_eq!(tally.new, 5);
        assert_eq!(
            enforced(&changes),
            vec![
                (ip("192.0.2.77"), NOW + 10 * SEC),
                (ip("198.51.100.7"), NOW + 3600 * SEC),
                (ip("2001:db8:1:2::"), NOW + 10 * SEC),
                (net("203.0.113.0/24"), NOW + 1800 * SEC),
                (net("203.0.114.0/24"), NOW + 10 * SEC),
            ]
        );
        assert!(lifted(&changes).is_empty());
    }

    #[test]
    fn other_types_scopes_filters_and_junk_are_counted_not_taken() {
        let mut book = Book::default();
        let mut captcha = decision(1, "Ip", "192.0.2.1", "1h");
        captcha.kind = "captcha".into();
        let mut no_id = decision(9, "Ip", "192.0.2.9", "1h");
        no_id.id = None;
        let mut other_origin = decision(10, "Ip", "192.0.2.10", "1h");
        other_origin.origin = "CAPI".into();
        let s = stream(
            vec![
                captcha,
                decision(2, "Country", "FR", "1h"),
                decision(3, "Range", "192.0.2.0/24", "1h"),
                decision(4, "Ip", "not-an-ip", "1h"),
                decision(5, "Ip", "192.0.2.5", "forever"),
                decision(6, "Ip", "192.0.2.6", "-5s"),
                no_id,
                other_origin,
            ],
            vec![],
        );
        let ip_only = section("scopes = [\"ip\"]\norigins = [\"cscli\"]");
        let (changes, tally) = book.apply(s, &ip_only, 64, NOW);
        assert!(changes.is_empty(), "{changes:?}");
        assert!(book.is_empty());
        assert_eq!(
            tally,
            Tally {
                new: 8,
                deleted: 0,
                other_types: 1,
                other_scopes: 2,
                filtered: 1,
                malformed: 3,
                expired: 1,
            }
        );
    }

    #[test]
    fn a_target_is_lifted_with_its_last_decision() {
        let mut book = Book::default();
        let s = section("");
        let first = stream(
            vec![
                decision(1, "Ip", "198.51.100.7", "1h"),
                decision(2, "Ip", "198.51.100.7", "2h"),
            ],
            vec![],
        );
        let (changes, _) = book.apply(first, &s, 64, NOW);
        assert_eq!(
            enforced(&changes),
            vec![(ip("198.51.100.7"), NOW + 7200 * SEC)]
        );
        // The longer one goes: the shorter one still holds.
        let (changes, _) = book.apply(
            stream(vec![], vec![decision(2, "Ip", "198.51.100.7", "-1ms")]),
            &s,
            64,
            NOW + SEC,
        );
        assert_eq!(
            enforced(&changes),
            vec![(ip("198.51.100.7"), NOW + 3600 * SEC)]
        );
        let (changes, tally) = book.apply(
            stream(vec![], vec![decision(1, "Ip", "198.51.100.7", "-1ms")]),
            &s,
            64,
            NOW + 2 * SEC,
        );
        assert_eq!(lifted(&changes), vec![ip("198.51.100.7")]);
        assert_eq!(tally.deleted, 1);
        assert!(book.is_empty());
        // A delete of something never held changes nothing.
        let (changes, _) = book.apply(
            stream(vec![], vec![decision(77, "Ip", "192.0.2.1", "-1ms")]),
            &s,
            64,
            NOW,
        );
        assert!(changes.is_empty());
    }

    #[test]
    fn a_delete_and_a_new_ban_in_one_answer_leave_the_ban() {
        let mut book = Book::default();
        let s = section("");
        book.apply(
            stream(vec![decision(1, "Ip", "192.0.2.8", "1h")], vec![]),
            &s,
            64,
            NOW,
        );
        let (changes, _) = book.apply(
            stream(
                vec![decision(2, "Ip", "192.0.2.8", "5h")],
                vec![decision(1, "Ip", "192.0.2.8", "-1s")],
            ),
            &s,
            64,
            NOW,
        );
        assert_eq!(changes.len(), 1);
        assert_eq!(
            enforced(&changes),
            vec![(ip("192.0.2.8"), NOW + 5 * 3600 * SEC)]
        );
    }

    #[test]
    fn run_out_decisions_expire() {
        let mut book = Book::default();
        let s = section(BOTH);
        book.apply(
            stream(
                vec![
                    decision(1, "Range", "203.0.113.0/24", "10s"),
                    decision(2, "Ip", "192.0.2.8", "1h"),
                ],
                vec![],
            ),
            &s,
            64,
            NOW,
        );
        assert!(book.expire(NOW + 5 * SEC).is_empty());
        assert_eq!(
            book.expire(NOW + 11 * SEC),
            vec![Change::Lift {
                target: net("203.0.113.0/24")
            }]
        );
        assert_eq!(
            book.targets().copied().collect::<Vec<_>>(),
            vec![ip("192.0.2.8")]
        );
        assert_eq!(book.holder(&ip("192.0.2.8")), Some(("test", "cscli")));
    }
}
