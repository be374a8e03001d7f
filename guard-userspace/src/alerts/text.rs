//! The words of each message: a subject line (e-mail) and a text that
//! reads as is in a chat (the webhook's `text`) or a mail body.
use std::time::Duration;

use super::limiter::{BanNotice, Fill, Message, Summary};

pub fn duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn list(items: &[(String, u64)]) -> String {
    items
        .iter()
        .map(|(name, n)| format!("{name} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A short line: the e-mail subject.
pub fn subject(host: &str, message: &Message) -> String {
    let what = match message {
        Message::AttackStarted(ban) => format!("attack started ({} banned)", ban.source),
        Message::Summary(s) => format!("{} more bans", s.bans),
        Message::MapNearlyFull(fill) => {
            format!("{} map {}% full", fill.map, fill.percent())
        }
        Message::Interface {
            iface,
            attached: false,
        } => format!("detached: {iface} is gone"),
        Message::Interface {
            iface,
            attached: true,
        } => format!("attached again to {iface}"),
        Message::Failed { .. } => "the controller failed".to_string(),
    };
    format!("sipguard on {host}: {what}")
}

/// The full text.
pub fn text(host: &str, message: &Message) -> String {
    match message {
        Message::AttackStarted(ban) => attack_started(host, ban),
        Message::Summary(s) => summary(host, s),
        Message::MapNearlyFull(fill) => nearly_full(host, fill),
        Message::Interface {
            iface,
            attached: false,
        } => format!(
            "sipguard on {host}: {iface} is gone, so the guard is off the interface and \
             nothing on it is filtered. Bans and policy are kept; it attaches again when an \
             interface named {iface} appears."
        ),
        Message::Interface {
            iface,
            attached: true,
        } => format!(
            "sipguard on {host}: {iface} is back and the guard is attached again, with the same \
             bans and policy."
        ),
        Message::Failed { error } => format!(
            "sipguard on {host}: the controller failed and is stopping: {error}. Pinned bans and \
             policy stay in force in the kernel; new bans are not made until it runs again."
        ),
    }
}

fn attack_started(host: &str, ban: &BanNotice) -> String {
    format!(
        "sipguard on {host}: attack started. Banned {} for {} ({}): {}",
        ban.source,
        duration(ban.duration),
        ban.reason,
        ban.evidence
    )
}

fn summary(host: &str, s: &Summary) -> String {
    let reasons: Vec<_> = s
        .by_reason
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let mut text = format!(
        "sipguard on {host}: {} more bans in the last {} ({}).",
        s.bans,
        duration(s.period),
        reasons.join(", ")
    );
    if !s.top_sources.is_empty() {
        text.push_str(&format!(" Top sources: {}.", list(&s.top_sources)));
    }
    if !s.top_users.is_empty() {
        text.push_str(&format!(" Top targeted users: {}.", list(&s.top_users)));
    }
    if s.lost > 0 {
        text.push_str(&format!(
            " {} bans were not told here (alert queue full).",
            s.lost
        ));
    }
    text
}

fn nearly_full(host: &str, fill: &Fill) -> String {
    let advice = if fill.map == "bans" {
        "When it is full, new attackers are dropped packet by packet but no longer banned: \
         raise max_bans in [guard], or deny the attacking networks as a whole \
         (`sipguard deny add CIDR`)."
    } else if fill.map == "peers" {
        "When it is full, new offices and providers are no longer learned and get the plain \
         rate limits: raise max_peers in [peers] (it takes effect at the next start)."
    } else {
        "When it is full, no more entries fit: raise max_cidrs in [guard], or merge entries \
         into wider networks."
    };
    format!(
        "sipguard on {host}: the {} map is {}% full ({} of {} entries). {advice}",
        fill.map,
        fill.percent(),
        fill.entries,
        fill.capacity
    )
}
