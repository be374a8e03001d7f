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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use guard_common::BanReason;

    use super::*;
    use crate::sip::tracker::Failure;

    /// An auth-failure ban's alert: the failures, whether they were
    /// proven, each user and status, and the usernames tried (once each).
    #[test]
    fn an_auth_failure_notice_carries_the_failures_and_the_users() {
        let failure = |user: &str, status| Failure {
            at: Instant::now(),
            username: user.as_bytes().to_vec(),
            status,
            proven: true,
        };
        let decision = BanDecision {
            source: "198.51.100.7".parse().unwrap(),
            reason: BanReason::AuthFailure,
            duration: Duration::from_secs(86_400),
            evidence: vec![
                failure("1002", 403),
                failure("1001", 401),
                failure("1001", 401),
                failure("", 0),
            ],
            failures_in_window: 10,
            proven: true,
            offence: 2,
        };
        let notice = notice(&decision, Duration::from_secs(3600));
        assert_eq!(notice.source, "198.51.100.7");
        assert_eq!(notice.reason, "auth-failure");
        assert_eq!(
            notice.evidence,
            "10 failures in 1h (proven, offence 2), last user:status 1002:403 1001:401 1001:401 ?:none"
        );
        assert_eq!(
            notice.evidence,
            evidence(&decision, Duration::from_secs(3600))
        );
        assert_eq!(notice.duration, Duration::from_secs(86_400));
        assert_eq!(notice.users, ["1001", "1002"]);
    }
}
