//! The health of each fleet source (the CrowdSec bouncer, each feed): what
//! `sipguard status` shows and the metrics serve. Each source's task writes
//! its own row; readers take a copy.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Unit,
};
use serde::{Deserialize, Serialize};

use crate::state::unix_now;

/// Where a source's entries come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Crowdsec,
    Feed,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Crowdsec => "crowdsec",
            Origin::Feed => "feed",
        }
    }
}

/// One source's health, as `status --json` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceHealth {
    /// `crowdsec`, or the feed's name.
    pub name: String,
    pub origin: Origin,
    /// `crowdsec`, `apiban` or `list`.
    pub kind: String,
    /// Where it is read from (without keys).
    pub from: String,
    /// When the last pull succeeded (UNIX seconds).
    pub last_success_unix: Option<u64>,
    /// When the entries in force were fetched (a feed's list may come from
    /// the state directory after a restart).
    #[serde(default)]
    pub list_unix: Option<u64>,
    /// Pulls failed in a row now (0: healthy).
    pub failing: u32,
    /// Failed pulls since the start.
    pub errors_total: u64,
    /// The last failure, while failing.
    pub last_error: Option<String>,
    /// Entries (decisions, networks) in force.
    pub entries: u64,
    /// Entries put in force since the start.
    pub applied_total: u64,
    /// Entries lifted since the start.
    pub lifted_total: u64,
    /// Lines or addresses of the last good list that were not taken
    /// (bad lines, private or too broad networks, over `max_entries`).
    #[serde(default)]
    pub skipped: u64,
}

impl SourceHealth {
    pub fn new(name: &str, origin: Origin, kind: &str, from: &str) -> SourceHealth {
        SourceHealth {
            name: name.to_string(),
            origin,
            kind: kind.to_string(),
            from: from.to_string(),
            last_success_unix: None,
            list_unix: None,
            failing: 0,
            errors_total: 0,
            last_error: None,
            entries: 0,
            applied_total: 0,
            lifted_total: 0,
            skipped: 0,
        }
    }

    /// A pull that succeeded now.
    pub fn succeeded(&mut self) {
        let now = unix_now();
        self.last_success_unix = Some(now);
        self.list_unix = Some(now);
        self.failing = 0;
        self.last_error = None;
    }

    /// A pull that failed now.
    pub fn failed(&mut self, error: String) {
        self.failing = self.failing.saturating_add(1);
        self.errors_total += 1;
        self.last_error = Some(error);
    }
}

/// Every source's row, shared by the sources, the runtime's `status` and
/// the metrics.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<BTreeMap<(Origin, String), SourceHealth>>>);

impl Health {
    /// Adds (or replaces) a source's row.
    pub fn register(&self, row: SourceHealth) {
        if let Ok(mut rows) = self.0.lock() {
            rows.insert((row.origin, row.name.clone()), row);
        }
    }

    /// Changes a source's row.
    pub fn update(&self, origin: Origin, name: &str, f: impl FnOnce(&mut SourceHealth)) {
        if let Ok(mut rows) = self.0.lock() {
            if let Some(row) = rows.get_mut(&(origin, name.to_string())) {
                f(row);
            }
        }
    }

    /// Every row, CrowdSec first, then the feeds by name.
    pub fn rows(&self) -> Vec<SourceHealth> {
        self.0
            .lock()
            .map(|rows| rows.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl Health {
    /// The rows as Prometheus series, read on each scrape.
    pub fn collector(&self) -> HealthCollector {
        HealthCollector(self.clone())
    }
}

/// Serves each source's health: `sipguard_fleet_*` (labels `origin`:
/// crowdsec or feed, and `source`: crowdsec or the feed's name) and
/// `sipguard_feed_*` (label `feed`).
#[derive(Debug)]
pub struct HealthCollector(Health);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    origin: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeedLabel {
    feed: String,
}

/// One family; declared even without rows (a dashboard may query it on a
/// guard without feeds).
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, help, unit): (&str, &str, Option<&Unit>),
    kind: MetricType,
    rows: Vec<(L, M)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in &rows {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for HealthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let rows = self.0.rows();
        let now = unix_now();
        let labels = |h: &SourceHealth| SourceLabels {
            origin: h.origin.name().to_string(),
            source: h.name.clone(),
        };
        let counter = |f: fn(&SourceHealth) -> u64| -> Vec<(SourceLabels, ConstCounter<u64>)> {
            rows.iter()
                .map(|h| (labels(h), ConstCounter::new(f(h))))
                .collect()
        };
        let gauge = |f: fn(&SourceHealth) -> i64| -> Vec<(SourceLabels, ConstGauge<i64>)> {
            rows.iter()
                .map(|h| (labels(h), ConstGauge::new(f(h))))
                .collect()
        };
        let e = &mut encoder;
        let (counter_kind, gauge_kind) = (MetricType::Counter, MetricType::Gauge);
        family(
            e,
            (
                "sipguard_fleet_applied",
                "Fleet decisions and feed entries put in force, by origin (crowdsec, feed) \
                 and source.",
                None,
            ),
            counter_kind,
            counter(|h| h.applied_total),
        )?;
        family(
            e,
            (
                "sipguard_fleet_lifted",
                "Fleet decisions and feed entries lifted, by origin and source.",
                None,
            ),
            counter_kind,
            counter(|h| h.lifted_total),
        )?;
        family(
            e,
            (
                "sipguard_fleet_sync_failures",
                "Pulls of the LAPI or a feed that failed (what was applied stays in force).",
                None,
            ),
            counter_kind,
            counter(|h| h.errors_total),
        )?;
        family(
            e,
            (
                "sipguard_fleet_entries",
                "Decisions or feed entries in force, by origin and source.",
                None,
            ),
            gauge_kind,
            gauge(|h| i64::try_from(h.entries).unwrap_or(i64::MAX)),
        )?;
        family(
            e,
            (
                "sipguard_fleet_failing",
                "Pulls failed in a row now (0: the source is healthy).",
                None,
            ),
            gauge_kind,
            gauge(|h| i64::from(h.failing)),
        )?;
        family(
            e,
            (
                "sipguard_fleet_last_sync_timestamp",
                "When the last pull succeeded (UNIX time; 0: never).",
                Some(&Unit::Seconds),
            ),
            gauge_kind,
            gauge(|h| h.last_success_unix.map_or(0, |t| t as i64)),
        )?;
        let feeds = || rows.iter().filter(|h| h.origin == Origin::Feed);
        let age: Vec<_> = feeds()
            .filter_map(|h| {
                let age = now.saturating_sub(h.list_unix?);
                Some((
                    FeedLabel {
                        feed: h.name.clone(),
                    },
                    ConstGauge::new(age as i64),
                ))
            })
            .collect();
        family(
            e,
            (
                "sipguard_feed_age",
                "How old each feed's list in force is (since it was fetched).",
                Some(&Unit::Seconds),
            ),
            gauge_kind,
            age,
        )?;
        let skipped: Vec<_> = feeds()
            .map(|h| {
                (
                    FeedLabel {
                        feed: h.name.clone(),
                    },
                    ConstGauge::new(h.skipped as i64),
                )
            })
            .collect();
        family(
            e,
            (
                "sipguard_feed_skipped",
                "Entries of each feed's last list not taken: bad lines, private or too broad \
                 networks, over max_entries.",
                None,
            ),
            gauge_kind,
            skipped,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_track_failures_and_recovery() {
        let health = Health::default();
        health.register(SourceHealth::new(
            "voipbl",
            Origin::Feed,
            "list",
            "https://x/",
        ));
        health.register(SourceHealth::new(
            "crowdsec",
            Origin::Crowdsec,
            "crowdsec",
            "http://l/",
        ));
        health.update(Origin::Feed, "voipbl", |h| h.failed("answered 500".into()));
        health.update(Origin::Feed, "voipbl", |h| h.failed("answered 500".into()));
        let rows = health.rows();
        assert_eq!(rows[0].name, "crowdsec");
        assert_eq!((rows[1].failing, rows[1].errors_total), (2, 2));
        health.update(Origin::Feed, "voipbl", SourceHealth::succeeded);
        let row = &health.rows()[1];
        assert_eq!((row.failing, row.errors_total), (0, 2));
        assert!(row.last_error.is_none() && row.last_success_unix.is_some());
    }

    #[test]
    fn the_rows_are_served_as_series() {
        let health = Health::default();
        let mut row = SourceHealth::new("voipbl", Origin::Feed, "list", "https://x/");
        row.entries = 1234;
        row.applied_total = 1300;
        row.list_unix = Some(unix_now() - 60);
        health.register(row);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(health.collector()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "sipguard_fleet_applied_total{origin=\"feed\",source=\"voipbl\"} 1300",
            "sipguard_fleet_entries{origin=\"feed\",source=\"voipbl\"} 1234",
            "sipguard_fleet_last_sync_timestamp_seconds{origin=\"feed\",source=\"voipbl\"} 0",
            "sipguard_feed_age_seconds{feed=\"voipbl\"} 6",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
