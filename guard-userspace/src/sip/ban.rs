//! How a SIP ban reads: its log line, the evidence `sipguard bans` shows
//! (and the state directory keeps), and its alert.
use std::time::Duration;

use crate::{alerts::BanNotice, clock, sip::tracker::BanDecision};

/// The log line for a SIP ban, with its evidence.
pub fn describe_ban(decision: &BanDecision, source: &str, window: Duration) -> String {
    format!(
        "banned {source} for {}: {}, {}",
        clock::human(decision.duration),
        decision.reason.name(),
        evidence(decision, window)
    )
}

/// A SIP ban, for the alert sinks.
pub fn notice(decision: &BanDecision, window: Duration) -> BanNotice {
    let mut users: Vec<String> = decision
        .evidence
        .iter()
        .filter(|f| !f.username.is_empty())
        .map(|f| f.display_username())
        .collect();
    users.sort();
    users.dedup();
    BanNotice {
        source: decision.source.to_string(),
        reason: decision.reason.name().to_string(),
        evidence: evidence(decision, window),
        duration: decision.duration,
        users,
    }
}

/// What `sipguard bans` shows (and the state directory keeps) for a SIP ban.
pub fn evidence(decision: &BanDecision, window: Duration) -> String {
    let evidence: Vec<String> = decision
        .evidence
        .iter()
        .map(|f| match f.status {
            // A probe the PBX never answered.
            0 => format!("{}:none", f.display_username()),
            status => format!("{}:{status}", f.display_username()),
        })
        .collect();
    format!(
        "{} failures in {} ({}{}), last user:status {}",
        decision.failures_in_window,
        clock::human(window),
        if decision.proven {
            "proven"
        } else {
            "unproven"
        },
        if decision.offence > 1 {
            format!(", offence {}", decision.offence)
        } else {
            String::new()
        },
        evidence.join(" ")
    )
}
