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

/// A ban the kernel made, for the alert sinks.
pub fn notice(
    event: &BanEvent,
    rule_names: &[String],
    ipv6_prefix: u8,
) -> crate::alerts::BanNotice {
    let evidence = match rule_name(event.rule, rule_names) {
        Some(rule) => format!("rule {rule} ({} packets in its window)", event.count),
        None => reason_name(event.reason).to_string(),
    };
    crate::alerts::BanNotice {
        source: source_to_string(&event.source, ipv6_prefix),
        reason: reason_name(event.reason).to_string(),
        evidence,
        duration: Duration::from_nanos(event.expires_ns.saturating_sub(event.created_ns)),
        users: Vec::new(),
    }
}

/// The evidence of a ban the kernel made (what the fleet's alerts carry):
/// the rate rule and its count, the scanner fingerprint, or the dial rule.
pub fn evidence(
    event: &BanEvent,
    rule_names: &[String],
    scanner_names: &[String],
    dial_names: &[String],
) -> String {
    if event.reason == BanReason::DialDenied as u16 {
        // Its event carries the dial rule's index.
        let rule = dial_names
            .get(event.rule as usize)
            .map_or("a dial rule no longer configured", String::as_str);
        return format!("call to a blocked prefix, dial rule {rule}");
    }
    if event.reason == BanReason::Scanner as u16 {
        let pattern = (event.rule as usize)
            .checked_sub(1)
            .and_then(|i| scanner_names.get(i))
            .map_or("a fingerprint no longer configured", String::as_str);
        return format!("SIP scanner fingerprint {pattern}");
    }
    match rule_name(event.rule, rule_names) {
        Some(rule) => format!("rule {rule} ({} packets in its window)", event.count),
        None => reason_name(event.reason).to_string(),
    }
}

/// The log line for a ban the kernel made.
pub fn describe_event(
    event: &BanEvent,
    rule_names: &[String],
    scanner_names: &[String],
    dial_names: &[String],
    ipv6_prefix: u8,
) -> String {
    let source = source_to_string(&event.source, ipv6_prefix);
    let duration = ban_duration(event.created_ns, event.expires_ns);
    if event.reason == BanReason::DialDenied as u16 {
        // Its event carries the dial rule's index.
        let rule = dial_names
            .get(event.rule as usize)
            .map_or("a dial rule no longer configured", String::as_str);
        return format!("banned {source} for {duration}: dial-denied, dial rule {rule}");
    }
    if event.reason == BanReason::Scanner as u16 {
        // A scanner ban's event carries the fingerprint's number (1-based).
        let pattern = (event.rule as usize)
            .checked_sub(1)
            .and_then(|i| scanner_names.get(i))
            .map_or("a fingerprint no longer configured", String::as_str);
        return format!("banned {source} for {duration}: scanner, {pattern}");
    }
    match rule_name(event.rule, rule_names) {
        Some(rule) => format!(
            "banned {source} for {duration}: {} by rule {rule} ({} packets in its window)",
            reason_name(event.reason),
            event.count
        ),
        None => format!(
            "banned {source} for {duration}: {}",
            reason_name(event.reason)
        ),
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

    #[test]
    fn event_lines_name_rule_and_duration() {
        let event = BanEvent {
            source: SourceKey::from_ipv4([198, 51, 100, 9]),
            created_ns: 5_000_000_000,
            expires_ns: 5_000_000_000 + 3_600_000_000_000,
            reason: BanReason::RateLimit as u16,
            rule: 1,
            count: 41,
        };
        let names = vec!["a".to_string(), "sip-udp-40-per-2s".to_string()];
        assert_eq!(
            describe_event(&event, &names, &[], &[], 64),
            "banned 198.51.100.9 for 1h: rate-limit by rule sip-udp-40-per-2s (41 packets in its window)"
        );
        assert_eq!(
            evidence(&event, &names, &[], &[]),
            "rule sip-udp-40-per-2s (41 packets in its window)"
        );
        let scanner = BanEvent {
            reason: BanReason::Scanner as u16,
            rule: 2,
            ..event
        };
        let patterns = vec!["sipvicious".to_string(), "friendly-scanner".to_string()];
        assert_eq!(
            evidence(&scanner, &names, &patterns, &[]),
            "SIP scanner fingerprint friendly-scanner"
        );
        let dial = BanEvent {
            reason: BanReason::DialDenied as u16,
            rule: 0,
            ..event
        };
        assert_eq!(
            evidence(&dial, &names, &[], &["international".to_string()]),
            "call to a blocked prefix, dial rule international"
        );
    }
}
