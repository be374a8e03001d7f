//! A ban of sipguard's own as a CrowdSec alert, and the bounded channel
//! that takes it from whoever banned to the watcher task.
//!
//! The alert follows the LAPI's model (`pkg/models/localapi_swagger.yaml`,
//! `Alert`; 1.4.6 refuses one without any of its required fields): the
//! scenario `sipguard/REASON`, the evidence as the message, the source as
//! an `Ip` scope (an IPv6 source as the `Range` the guard bans), and one
//! `ban` decision for the ban's remaining time. The LAPI sets the
//! decision's end to `stop_at` plus its duration, so `stop_at` is the time
//! of sending and the duration what is left of the ban then: a report
//! that waited in the queue ends when the ban does.
use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use guard_common::{BanReason, SourceKey, BAN_FOREVER};
use ipnet::IpNet;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{kernel::bans::source_ip, metrics::ControllerCounters};

/// Reports on their way to the watcher task; beyond this a burst is
/// dropped (counted) rather than waited for.
pub const CHANNEL: usize = 4096;
/// The longest decision reported (Go durations stop at about 292 years;
/// no ban the guard makes itself lasts this long).
const MAX_DECISION: Duration = Duration::from_secs(365 * 86_400);
/// The decisions' origin: the one the LAPI gives its watchers' decisions,
/// so bouncers that take only local detections (`origins: crowdsec`)
/// take sipguard's too, and `cscli alerts list` and `cscli decisions list`
/// show them (without `--all` they show only origins `crowdsec` and
/// `cscli`). The scenario says they are sipguard's.
pub const ORIGIN: &str = "crowdsec";

/// Whether bans of this reason are reported: the guard's own findings,
/// not the operator's manual bans, nor bans that came from the LAPI.
pub fn reported(reason: BanReason) -> bool {
    !matches!(reason, BanReason::Manual | BanReason::Crowdsec)
}

/// `sipguard/auth-failure`, `sipguard/rate-limit`, ...
pub fn scenario(reason: BanReason) -> String {
    format!("sipguard/{}", reason.name())
}

/// The scenarios the watcher announces at login.
pub fn scenarios() -> Vec<String> {
    BanReason::ALL
        .into_iter()
        .filter(|r| reported(*r))
        .map(scenario)
        .collect()
}

/// One ban the guard made, to be reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// What is banned: an address, or an IPv6 source's ban prefix.
    pub target: IpNet,
    pub reason: BanReason,
    pub evidence: String,
    /// The failures or packets that led to the ban (at least 1).
    pub events: u32,
    /// When the ban was made (wall clock).
    pub banned_at: SystemTime,
    /// When it ends, in the kernel's monotonic nanoseconds.
    pub expires_ns: u64,
}

impl Report {
    /// A ban on a ban-map key, made now.
    pub fn new(
        key: &SourceKey,
        ipv6_prefix: u8,
        reason: BanReason,
        evidence: String,
        events: u32,
        expires_ns: u64,
    ) -> Report {
        let ip = source_ip(key);
        let len = match ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => ipv6_prefix.min(128),
        };
        let target = IpNet::new(ip, len).map_or_else(|_| IpNet::from(ip), |n| n.trunc());
        Report {
            target,
            reason,
            evidence,
            events: events.max(1),
            banned_at: SystemTime::now(),
            expires_ns,
        }
    }

    /// What is left of the ban at `now_ns`; None once under a second.
    pub fn remaining(&self, now_ns: u64) -> Option<Duration> {
        let left = if self.expires_ns == BAN_FOREVER {
            MAX_DECISION
        } else {
            Duration::from_nanos(self.expires_ns.saturating_sub(now_ns)).min(MAX_DECISION)
        };
        (left >= Duration::from_secs(1)).then_some(left)
    }

    /// The LAPI's scope and value for the target.
    pub fn scope(&self) -> (&'static str, String) {
        if self.target.prefix_len() == self.target.max_prefix_len() {
            ("Ip", self.target.addr().to_string())
        } else {
            ("Range", self.target.to_string())
        }
    }
}

/// An alert as `POST /v1/alerts` takes it (a list of these).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Alert {
    pub scenario: String,
    /// No hub scenario: empty, as `cscli decisions add` sends.
    pub scenario_hash: String,
    pub scenario_version: String,
    pub message: String,
    pub events_count: i32,
    pub start_at: String,
    pub stop_at: String,
    /// No leaky bucket behind it.
    pub capacity: i32,
    pub leakspeed: String,
    pub simulated: bool,
    pub remediation: bool,
    pub events: Vec<Event>,
    pub decisions: Vec<Decision>,
    pub source: Source,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub timestamp: String,
    pub meta: Vec<Meta>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Meta {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Decision {
    pub origin: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub scope: String,
    pub value: String,
    /// A Go duration: whole seconds.
    pub duration: String,
    pub scenario: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Source {
    pub scope: String,
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The alert for a report sent at `now` (`now_ns` in the kernel's clock);
/// None if its ban has run out.
pub fn alert(report: &Report, now_ns: u64, now: SystemTime) -> Option<Alert> {
    let left = report.remaining(now_ns)?;
    let scenario = scenario(report.reason);
    let (scope, value) = report.scope();
    let start_at = rfc3339(report.banned_at);
    let meta = |key: &str, value: &str| Meta {
        key: key.to_string(),
        value: value.to_string(),
    };
    let source = Source {
        scope: scope.to_string(),
        value: value.clone(),
        ip: (scope == "Ip").then(|| value.clone()),
        range: (scope == "Range").then(|| value.clone()),
    };
    Some(Alert {
        message: report.evidence.clone(),
        events_count: i32::try_from(report.events).unwrap_or(i32::MAX),
        start_at: start_at.clone(),
        stop_at: rfc3339(now.max(report.banned_at)),
        scenario_hash: String::new(),
        scenario_version: env!("CARGO_PKG_VERSION").to_string(),
        capacity: 0,
        leakspeed: "0".to_string(),
        simulated: false,
        remediation: true,
        events: vec![Event {
            timestamp: start_at,
            meta: vec![
                meta("log_type", "sipguard_ban"),
                meta("source", &value),
                meta("reason", report.reason.name()),
                meta("evidence", &report.evidence),
            ],
        }],
        decisions: vec![Decision {
            origin: ORIGIN.to_string(),
            kind: "ban".to_string(),
            scope: scope.to_string(),
            value,
            duration: format!("{}s", left.as_secs()),
            scenario: scenario.clone(),
        }],
        source,
        scenario,
    })
}

/// Where the guard hands its bans to the watcher task. Never waits: a full
/// channel drops the report (counted as `dropped`).
#[derive(Clone)]
pub struct Reports {
    tx: mpsc::Sender<Report>,
    counters: ControllerCounters,
}

/// The handle, and the watcher task's end of the channel.
pub fn channel(counters: ControllerCounters) -> (Reports, mpsc::Receiver<Report>) {
    let (tx, rx) = mpsc::channel(CHANNEL);
    (Reports { tx, counters }, rx)
}

impl Reports {
    /// Queues a report of a ban the guard made, if its reason is reported.
    pub fn ban(&self, report: Report) {
        if !reported(report.reason) {
            return;
        }
        match self.tx.try_send(report) {
            Ok(()) => {
                self.counters.fleet_reports_queued.inc();
            }
            Err(_) => self.counters.fleet_reports(ReportResult::Dropped, 1),
        }
    }
}

/// What became of a report, for `sipguard_fleet_reports_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportResult {
    /// The LAPI took it.
    Sent,
    /// The LAPI refused it (sending it again would not help).
    Rejected,
    /// Its ban ran out before the LAPI could be reached.
    Expired,
    /// A full queue pushed it out.
    Dropped,
}

impl ReportResult {
    pub const ALL: [ReportResult; 4] = [
        ReportResult::Sent,
        ReportResult::Rejected,
        ReportResult::Expired,
        ReportResult::Dropped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ReportResult::Sent => "sent",
            ReportResult::Rejected => "rejected",
            ReportResult::Expired => "expired",
            ReportResult::Dropped => "dropped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_NS: u64 = 3_600_000_000_000;

    fn report(key: SourceKey, reason: BanReason) -> Report {
        let mut r = Report::new(
            &key,
            64,
            reason,
            "10 failures in 1h (proven), last user:status 1001:401".into(),
            10,
            5 * HOUR_NS,
        );
        r.banned_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_480_000);
        r
    }

    #[test]
    fn an_auth_failure_ban_is_a_complete_alert() {
        let r = report(
            SourceKey::from_ipv4([198, 51, 100, 9]),
            BanReason::AuthFailure,
        );
        let sent = r.banned_at + Duration::from_secs(2);
        // Sent an hour into a five-hour ban: four hours are left.
        let alert = alert(&r, HOUR_NS, sent).unwrap();
        let json = serde_json::to_value(vec![alert]).unwrap();
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            json,
            serde_json::json!([{
                "scenario": "sipguard/auth-failure",
                "scenario_hash": "",
                "scenario_version": version,
                "message": "10 failures in 1h (proven), last user:status 1001:401",
                "events_count": 10,
                "start_at": "2025-11-30T05:20:00Z",
                "stop_at": "2025-11-30T05:20:02Z",
                "capacity": 0,
                "leakspeed": "0",
                "simulated": false,
                "remediation": true,
                "events": [{
                    "timestamp": "2025-11-30T05:20:00Z",
                    "meta": [
                        {"key": "log_type", "value": "sipguard_ban"},
                        {"key": "source", "value": "198.51.100.9"},
                        {"key": "reason", "value": "auth-failure"},
                        {"key": "evidence",
                         "value": "10 failures in 1h (proven), last user:status 1001:401"}
                    ]
                }],
                "decisions": [{
                    "origin": "crowdsec",
                    "type": "ban",
                    "scope": "Ip",
                    "value": "198.51.100.9",
                    "duration": "14400s",
                    "scenario": "sipguard/auth-failure"
                }],
                "source": {"scope": "Ip", "value": "198.51.100.9", "ip": "198.51.100.9"}
            }])
        );
    }

    #[test]
    fn every_field_the_lapi_requires_is_there() {
        // Alert's `required` list in the LAPI's swagger (1.4.6), and Decision's, Source's, Event's.
        let r = report(SourceKey::from_ipv4([192, 0, 2, 1]), BanReason::Scanner);
        let json = serde_json::to_value(alert(&r, 0, SystemTime::now()).unwrap()).unwrap();
        for field in [
            "scenario",
            "scenario_hash",
            "scenario_version",
            "message",
            "events_count",
            "start_at",
            "stop_at",
            "capacity",
            "leakspeed",
            "simulated",
            "events",
            "source",
        ] {
            assert!(!json[field].is_null(), "{field} missing: {json}");
        }
        for field in ["origin", "type", "scope", "value", "duration", "scenario"] {
            assert!(json["decisions"][0][field].is_string(), "decision {field}");
        }
        for field in ["scope", "value"] {
            assert!(json["source"][field].is_string(), "source {field}");
        }
        for field in ["timestamp", "meta"] {
            assert!(!json["events"][0][field].is_null(), "event {field}");
        }
        assert_eq!(json["scenario"], "sipguard/scanner");
    }

    #[test]
    fn an_ipv6_source_is_reported_as_its_ban_prefix() {
        let ip: std::net::Ipv6Addr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let r = report(SourceKey::from_ipv6(ip.octets(), 64), BanReason::RateLimit);
        let a = alert(&r, 0, SystemTime::now()).unwrap();
        assert_eq!(a.source.scope, "Range");
        assert_eq!(a.source.value, "2001:db8:1:2::/64");
        assert_eq!(a.source.range.as_deref(), Some("2001:db8:1:2::/64"));
        assert_eq!(a.source.ip, None);
        assert_eq!(a.decisions[0].scope, "Range");
        assert_eq!(a.decisions[0].value, "2001:db8:1:2::/64");
        // A /128 ban prefix is one address.
        let mut r = Report::new(
            &SourceKey::from_ipv6(ip.octets(), 128),
            128,
            BanReason::RateLimit,
            String::new(),
            0,
            HOUR_NS,
        );
        r.banned_at = SystemTime::now();
        let a = alert(&r, 0, SystemTime::now()).unwrap();
        assert_eq!(
            (a.source.scope.as_str(), a.source.value.as_str()),
            ("Ip", "2001:db8:1:2:3:4:5:6")
        );
        assert_eq!(a.events_count, 1, "at least one event");
    }

    #[test]
    fn a_ban_that_ran_out_is_not_reported() {
        let r = report(SourceKey::from_ipv4([192, 0, 2, 1]), BanReason::Enumeration);
        assert!(alert(&r, 5 * HOUR_NS - 999_999_999, SystemTime::now()).is_none());
        assert!(alert(&r, 6 * HOUR_NS, SystemTime::now()).is_none());
        let a = alert(&r, 5 * HOUR_NS - 1_500_000_000, SystemTime::now()).unwrap();
        assert_eq!(a.decisions[0].duration, "1s");
    }

    #[test]
    fn the_lapi_s_own_bans_and_manual_bans_are_not_reported() {
        assert!(!reported(BanReason::Crowdsec));
        assert!(!reported(BanReason::Manual));
        let announced = scenarios();
        for reason in ["rate-limit", "auth-failure", "enumeration", "scanner"] {
            assert!(
                announced.contains(&format!("sipguard/{reason}")),
                "{announced:?}"
            );
        }
        for reason in ["manual", "crowdsec"] {
            assert!(
                !announced.contains(&format!("sipguard/{reason}")),
                "{announced:?}"
            );
        }
        let counters = ControllerCounters::default();
        let (reports, mut rx) = channel(counters.clone());
        reports.ban(report(
            SourceKey::from_ipv4([192, 0, 2, 1]),
            BanReason::Crowdsec,
        ));
        reports.ban(report(
            SourceKey::from_ipv4([192, 0, 2, 2]),
            BanReason::Manual,
        ));
        reports.ban(report(
            SourceKey::from_ipv4([192, 0, 2, 3]),
            BanReason::RateLimit,
        ));
        let queued = rx.try_recv().unwrap();
        assert_eq!(queued.target, "192.0.2.3/32".parse::<IpNet>().unwrap());
        assert!(rx.try_recv().is_err());
        assert_eq!(counters.fleet_reports_queued.get(), 1);
    }

    #[test]
    fn a_full_channel_drops_without_waiting() {
        let counters = ControllerCounters::default();
        let (reports, _rx) = channel(counters.clone());
        for i in 0..CHANNEL + 3 {
            let key = SourceKey::from_ipv4([10, 0, (i >> 8) as u8, i as u8]);
            reports.ban(report(key, BanReason::AuthFailure));
        }
        assert_eq!(counters.fleet_reports_queued.get(), CHANNEL as i64);
        assert_eq!(counters.fleet_reports_count(ReportResult::Dropped), 3);
    }
}
