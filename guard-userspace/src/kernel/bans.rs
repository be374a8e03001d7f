//! How the kernel's bans read in logs and answers: sources, reasons,
//! rules, durations and ban events.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use guard_common::{BanEvent, BanReason, SourceKey, BAN_FOREVER, NO_RULE};

use crate::clock;

/// "192.0.2.7", or "2001:db8:1:2::/64" for an IPv6 key.
pub fn source_to_string(source: &SourceKey, ipv6_prefix: u8) -> String {
    match source.ipv4() {
        Some(v4) => Ipv4Addr::from(v4).to_string(),
        None => format!("{}/{}", Ipv6Addr::from(source.addr), ipv6_prefix),
    }
}

pub fn source_ip(source: &SourceKey) -> IpAddr {
    match source.ipv4() {
        Some(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        None => IpAddr::V6(Ipv6Addr::from(source.addr)),
    }
}

pub fn reason_name(reason: u16) -> &'static str {
    BanReason::from_u16(reason).map_or("unknown", BanReason::name)
}

pub fn rule_name(rule: u16, rule_names: &[String]) -> Option<&str> {
    if rule == NO_RULE {
        return None;
    }
    rule_names.get(rule as usize).map(String::as_str)
}

pub fn ban_duration(created_ns: u64, expires_ns: u64) -> String {
    if expires_ns == BAN_FOREVER {
        "ever".to_string()
    } else {
        clock::human(Duration::from_nanos(expires_ns.saturating_sub(created_ns)))
    }
}

/// The rule names a kernel ban's number may refer to, in the policy in
/// force (a reload renumbers them).
#[derive(Clone, Copy)]
pub struct RuleNames<'a> {
    pub rates: &'a [String],
    pub scanners: &'a [String],
    pub dials: &'a [String],
}

/// What a kernel ban's rule number names: its meaning depends on the
/// reason, so this is the one place that reads it.
enum Cause<'a> {
    /// The dial rule (the event carries its index).
    Dial(&'a str),
    /// The scanner fingerprint (the event carries its number, 1-based).
    Scanner(&'a str),
    /// The rate rule, and the packets counted in its window.
    Rate(&'a str, u32),
    /// No rule: the reason says it all.
    Reason,
}

fn cause<'a>(event: &BanEvent, names: RuleNames<'a>) -> Cause<'a> {
    if event.reason == BanReason::DialDenied as u16 {
        return Cause::Dial(
            names
                .dials
                .get(event.rule as usize)
                .map_or("a dial rule no longer configured", String::as_str),
        );
    }
    if event.reason == BanReason::Scanner as u16 {
        return Cause::Scanner(
            (event.rule as usize)
                .checked_sub(1)
                .and_then(|i| names.scanners.get(i))
                .map_or("a fingerprint no longer configured", String::as_str),
        );
    }
    match rule_name(event.rule, names.rates) {
        Some(rule) => Cause::Rate(rule, event.count),
        None => Cause::Reason,
    }
}

/// A ban the kernel made, for the alert sinks: its evidence is the
/// fleet's (`evidence`).
pub fn notice(event: &BanEvent, names: RuleNames<'_>, ipv6_prefix: u8) -> crate::alerts::BanNotice {
    crate::alerts::BanNotice {
        source: source_to_string(&event.source, ipv6_prefix),
        reason: reason_name(event.reason).to_string(),
        evidence: evidence(event, names),
        duration: Duration::from_nanos(event.expires_ns.saturating_sub(event.created_ns)),
        users: Vec::new(),
    }
}

/// The evidence of a ban the kernel made (what the fleet's alerts and the
/// alert sinks carry): the rate rule and its count, the scanner
/// fingerprint, or the dial rule.
pub fn evidence(event: &BanEvent, names: RuleNames<'_>) -> String {
    match cause(event, names) {
        Cause::Dial(rule) => format!("call to a blocked prefix, dial rule {rule}"),
        Cause::Scanner(pattern) => format!("SIP scanner fingerprint {pattern}"),
        Cause::Rate(rule, count) => format!("rule {rule} ({count} packets in its window)"),
        Cause::Reason => reason_name(event.reason).to_string(),
    }
}

/// The log line for a ban the kernel made.
pub fn describe_event(event: &BanEvent, names: RuleNames<'_>, ipv6_prefix: u8) -> String {
    let source = source_to_string(&event.source, ipv6_prefix);
    let duration = ban_duration(event.created_ns, event.expires_ns);
    let reason = reason_name(event.reason);
    match cause(event, names) {
        Cause::Dial(rule) => format!("banned {source} for {duration}: {reason}, dial rule {rule}"),
        Cause::Scanner(pattern) => format!("banned {source} for {duration}: {reason}, {pattern}"),
        Cause::Rate(rule, count) => format!(
            "banned {source} for {duration}: {reason} by rule {rule} ({count} packets in its window)"
        ),
        Cause::Reason => format!("banned {source} for {duration}: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_print_as_addresses() {
        let v4 = SourceKey::from_ipv4([192, 0, 2, 7]);
        assert_eq!(source_to_string(&v4, 64), "192.0.2.7");
        let v6: Ipv6Addr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let key = SourceKey::from_ipv6(v6.octets(), 64);
        assert_eq!(source_to_string(&key, 64), "2001:db8:1:2::/64");
        let key = SourceKey::from_ipv6(v6.octets(), 60);
        assert_eq!(source_to_string(&key, 60), "2001:db8:1::/60");
    }

    /// The rate rules, scanner fingerprints and dial rules of a policy.
    fn rule_lists() -> [Vec<String>; 3] {
        let list = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
        [
            list(&["a", "sip-udp-40-per-2s"]),
            list(&["sipvicious", "friendly-scanner"]),
            list(&["international", "premium"]),
        ]
    }

    fn names(lists: &[Vec<String>; 3]) -> RuleNames<'_> {
        RuleNames {
            rates: &lists[0],
            scanners: &lists[1],
            dials: &lists[2],
        }
    }

    /// A kernel ban of 198.51.100.9 for an hour, with rule number `rule`.
    fn event(reason: BanReason, rule: u16) -> BanEvent {
        BanEvent {
            source: SourceKey::from_ipv4([198, 51, 100, 9]),
            created_ns: 5_000_000_000,
            expires_ns: 5_000_000_000 + 3_600_000_000_000,
            reason: reason as u16,
            rule,
            count: 41,
        }
    }

    #[test]
    fn event_lines_name_rule_and_duration() {
        let lists = rule_lists();
        let names = names(&lists);
        let line = |reason, rule| describe_event(&event(reason, rule), names, 64);
        assert_eq!(
            line(BanReason::RateLimit, 1),
            "banned 198.51.100.9 for 1h: rate-limit by rule sip-udp-40-per-2s (41 packets in its window)"
        );
        assert_eq!(
            line(BanReason::Scanner, 2),
            "banned 198.51.100.9 for 1h: scanner, friendly-scanner"
        );
        assert_eq!(
            line(BanReason::DialDenied, 0),
            "banned 198.51.100.9 for 1h: dial-denied, dial rule international"
        );
    }

    /// What the email and webhook alerts say is what the fleet's alerts
    /// say: a dial rule's index and a fingerprint's number are not read
    /// as rate rules.
    #[test]
    fn notices_carry_the_evidence_of_each_reason() {
        let lists = rule_lists();
        let names = names(&lists);
        let cases = [
            (
                event(BanReason::RateLimit, 1),
                "rate-limit",
                "rule sip-udp-40-per-2s (41 packets in its window)",
            ),
            // Number 1 is the first fingerprint, not rate rule 1.
            (
                event(BanReason::Scanner, 1),
                "scanner",
                "SIP scanner fingerprint sipvicious",
            ),
            // Index 1 is the second dial rule, not rate rule 1.
            (
                event(BanReason::DialDenied, 1),
                "dial-denied",
                "call to a blocked prefix, dial rule premium",
            ),
            (
                event(BanReason::AuthFailure, NO_RULE),
                "auth-failure",
                "auth-failure",
            ),
            (
                event(BanReason::Scanner, 9),
                "scanner",
                "SIP scanner fingerprint a fingerprint no longer configured",
            ),
            (
                event(BanReason::DialDenied, 5),
                "dial-denied",
                "call to a blocked prefix, dial rule a dial rule no longer configured",
            ),
        ];
        for (event, reason, evidence_text) in cases {
            let notice = notice(&event, names, 64);
            assert_eq!(notice.source, "198.51.100.9");
            assert_eq!(notice.reason, reason);
            assert_eq!(notice.evidence, evidence_text, "{reason}");
            assert_eq!(notice.evidence, evidence(&event, names));
            assert_eq!(notice.duration, Duration::from_secs(3600));
            assert!(notice.users.is_empty());
        }
        let v6: Ipv6Addr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let v6_ban = BanEvent {
            source: SourceKey::from_ipv6(v6.octets(), 64),
            ..event(BanReason::RateLimit, 0)
        };
        let notice = notice(&v6_ban, names, 64);
        assert_eq!(notice.source, "2001:db8:1:2::/64");
        assert_eq!(notice.evidence, "rule a (41 packets in its window)");
    }
}
