//! Turns a stream of bans into a few messages: the first ban of a burst is
//! an "attack started" message at once; the bans after it are counted and
//! summed up at most once per period while the attack goes on. A flood of
//! 10,000 bans is one message plus one summary per period.
//!
//! The guard's own health is limited too: a map over its threshold is told
//! once per crossing and at most once per period; interface changes at
//! most [`INTERFACE_BUDGET`] times per period, the latest state told when
//! the budget allows again (a flapping link cannot flood a sink, and the
//! last word about it is never lost).
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

/// A ban, as the alert sinks tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanNotice {
    pub source: String,
    /// `rate-limit`, `auth-failure`, `enumeration`, `manual`.
    pub reason: String,
    /// The rule, or the failures and usernames that made the ban.
    pub evidence: String,
    pub duration: Duration,
    /// SIP usernames the source tried, if any (for "top targeted users").
    pub users: Vec<String>,
}

/// What a sink sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    AttackStarted(BanNotice),
    Summary(Summary),
    /// A map is at or over the configured fill level.
    MapNearlyFull(Fill),
    /// The guard left its interface (it vanished) or is back on it.
    Interface {
        iface: String,
        attached: bool,
    },
    /// The controller stops on an error (sent once, best-effort).
    Failed {
        error: String,
    },
}

/// How full a kernel map is (as `sipguard_map_entries` and `_capacity` say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    pub map: String,
    pub entries: u64,
    pub capacity: u64,
}

impl Fill {
    pub fn percent(&self) -> u64 {
        (self.entries * 100).checked_div(self.capacity).unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub period: Duration,
    pub bans: u64,
    pub by_reason: BTreeMap<String, u64>,
    /// Most banned first, at most [`TOP`].
    pub top_sources: Vec<(String, u64)>,
    pub top_users: Vec<(String, u64)>,
    /// Ban notices dropped before they reached the limiter (a full queue).
    pub lost: u64,
}

/// Entries in the top lists.
pub const TOP: usize = 5;
/// Distinct sources or users remembered per period: a spoofed flood must
/// not grow the maps without bound (the counts stay exact).
const MAX_DISTINCT: usize = 10_000;
/// Interface messages per summary period.
pub const INTERFACE_BUDGET: usize = 4;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub burst_gap: Duration,
    pub summary_every: Duration,
    pub map_full_percent: u8,
}

/// Per map: whether it may be told again, and when it last was.
#[derive(Debug, Default)]
struct FullMap {
    /// Told since it last was below the threshold.
    told: bool,
    told_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Period {
    bans: u64,
    by_reason: BTreeMap<String, u64>,
    sources: HashMap<String, u64>,
    users: HashMap<String, u64>,
    lost: u64,
}

fn count(map: &mut HashMap<String, u64>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n += 1;
    } else if map.len() < MAX_DISTINCT {
        map.insert(key.to_string(), 1);
    }
}

fn top(map: &HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut all: Vec<_> = map.iter().map(|(k, n)| (k.clone(), *n)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(TOP);
    all
}

pub struct Limiter {
    settings: Settings,
    last_ban: Option<Instant>,
    /// When the current summary period began (None: no attack).
    period_start: Option<Instant>,
    period: Period,
    full_maps: HashMap<String, FullMap>,
    /// When the recent interface messages were sent.
    interface_sent: VecDeque<Instant>,
    /// The interface state last told (None: nothing told yet).
    interface_told: Option<bool>,
    /// The newest interface state, not told yet.
    interface_pending: Option<(String, bool)>,
}

impl Limiter {
    pub fn new(settings: Settings) -> Limiter {
        Limiter {
            settings,
            last_ban: None,
            period_start: None,
            period: Period::default(),
            full_maps: HashMap::new(),
            interface_sent: VecDeque::new(),
            interface_told: None,
            interface_pending: None,
        }
    }

    /// A map's fill level: a message when it crossed the threshold since
    /// it was last told, and not within a period of the last message.
    pub fn on_fill(&mut self, now: Instant, fill: &Fill) -> Option<Message> {
        let over = fill.capacity > 0
            && fill.entries * 100 >= fill.capacity * u64::from(self.settings.map_full_percent);
        let state = self.full_maps.entry(fill.map.clone()).or_default();
        if !over {
            state.told = false;
            return None;
        }
        let recently = state
            .told_at
            .is_some_and(|at| now.saturating_duration_since(at) < self.settings.summary_every);
        if state.told || recently {
            return None;
        }
        state.told = true;
        state.told_at = Some(now);
        Some(Message::MapNearlyFull(fill.clone()))
    }

    /// The interface left or came back: told now if the budget allows,
    /// else when it does (see [`Limiter::flush_interface`]).
    pub fn on_interface(&mut self, now: Instant, iface: &str, attached: bool) -> Option<Message> {
        self.interface_pending = Some((iface.to_string(), attached));
        self.flush_interface(now)
    }

    /// The pending interface state, if the budget allows and it differs
    /// from the one last told.
    pub fn flush_interface(&mut self, now: Instant) -> Option<Message> {
        self.interface_pending.as_ref()?;
        while let Some(&sent) = self.interface_sent.front() {
            if now.saturating_duration_since(sent) < self.settings.summary_every {
                break;
            }
            self.interface_sent.pop_front();
        }
        if self.interface_sent.len() >= INTERFACE_BUDGET {
            return None;
        }
        let (iface, attached) = self.interface_pending.take()?;
        if self.interface_told == Some(attached) {
            return None;
        }
        self.interface_sent.push_back(now);
        self.interface_told = Some(attached);
        Some(Message::Interface { iface, attached })
    }

    /// A ban at `now`: the message to send at once, if any.
    pub fn on_ban(&mut self, now: Instant, notice: BanNotice) -> Option<Message> {
        let quiet = self
            .last_ban
            .is_none_or(|last| now.saturating_duration_since(last) >= self.settings.burst_gap);
        self.last_ban = Some(now);
        if quiet {
            self.period_start = Some(now);
            return Some(Message::AttackStarted(notice));
        }
        let period = &mut self.period;
        period.bans += 1;
        *period.by_reason.entry(notice.reason.clone()).or_default() += 1;
        count(&mut period.sources, &notice.source);
        for user in &notice.users {
            count(&mut period.users, user);
        }
        None
    }

    /// Notices lost before they got here: told in the next summary.
    pub fn on_lost(&mut self, lost: u64) {
        self.period.lost += lost;
    }

    /// Called now and then: the summary that is due, if any.
    pub fn tick(&mut self, now: Instant) -> Option<Message> {
        let start = self.period_start?;
        let elapsed = now.saturating_duration_since(start);
        if elapsed < self.settings.summary_every {
            return None;
        }
        let period = std::mem::take(&mut self.period);
        let attack_over = self
            .last_ban
            .is_none_or(|last| now.saturating_duration_since(last) >= self.settings.burst_gap);
        self.period_start = (!attack_over).then_some(now);
        if period.bans == 0 && period.lost == 0 {
            return None;
        }
        Some(Message::Summary(Summary {
            period: elapsed,
            bans: period.bans,
            by_reason: period.by_reason,
            top_sources: top(&period.sources),
            top_users: top(&period.users),
            lost: period.lost,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(source: &str, reason: &str) -> BanNotice {
        BanNotice {
            source: source.to_string(),
            reason: reason.to_string(),
            evidence: "test".to_string(),
            duration: Duration::from_secs(3600),
            users: vec!["1001".to_string()],
        }
    }

    fn limiter() -> Limiter {
        Limiter::new(Settings {
            burst_gap: Duration::from_secs(600),
            summary_every: Duration::from_secs(300),
            map_full_percent: 90,
        })
    }

    fn fill(entries: u64) -> Fill {
        Fill {
            map: "bans".to_string(),
            entries,
            capacity: 1000,
        }
    }

    #[test]
    fn a_full_map_is_told_once_per_crossing_and_at_most_once_per_period() {
        let mut limiter = limiter();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(limiter.on_fill(at(0), &fill(899)), None);
        let Some(Message::MapNearlyFull(told)) = limiter.on_fill(at(1), &fill(900)) else {
            panic!("90% is told");
        };
        assert_eq!((told.map.as_str(), told.percent()), ("bans", 90));
        // Still full: nothing more, however often it is checked.
        for s in 2..1000 {
            assert_eq!(limiter.on_fill(at(s), &fill(950)), None);
        }
        // Below and over again within a period: held back until the period
        // is over, then told once.
        let mut limiter = self::limiter();
        assert!(limiter.on_fill(at(0), &fill(1000)).is_some());
        assert_eq!(limiter.on_fill(at(10), &fill(10)), None);
        assert_eq!(limiter.on_fill(at(20), &fill(990)), None);
        assert_eq!(limiter.on_fill(at(299), &fill(990)), None);
        assert!(limiter.on_fill(at(300), &fill(990)).is_some());
        assert_eq!(limiter.on_fill(at(301), &fill(990)), None);
        // An empty map of no capacity is never full.
        let empty = Fill {
            map: "deny_v4".to_string(),
            entries: 0,
            capacity: 0,
        };
        assert_eq!(limiter.on_fill(at(400), &empty), None);
    }

    #[test]
    fn a_flapping_interface_is_a_few_messages_and_its_last_state_is_told() {
        let mut limiter = limiter();
        let start = Instant::now();
        let mut told = Vec::new();
        // 100 deletions and re-creations within a minute.
        for i in 0..200u64 {
            let now = start + Duration::from_millis(i * 300);
            told.extend(limiter.on_interface(now, "eth0", i % 2 == 1));
            told.extend(limiter.flush_interface(now));
        }
        assert_eq!(told.len(), INTERFACE_BUDGET, "{told:?}");
        assert_eq!(
            told[0],
            Message::Interface {
                iface: "eth0".to_string(),
                attached: false
            }
        );
        // It ended detached, last told attached: told once the period allows.
        limiter.on_interface(start + Duration::from_secs(61), "eth0", false);
        assert_eq!(
            limiter.flush_interface(start + Duration::from_secs(100)),
            None
        );
        assert_eq!(
            limiter.flush_interface(start + Duration::from_secs(301)),
            Some(Message::Interface {
                iface: "eth0".to_string(),
                attached: false
            })
        );
        assert_eq!(
            limiter.flush_interface(start + Duration::from_secs(900)),
            None
        );
    }

    #[test]
    fn a_flood_of_10000_bans_is_one_message_and_one_summary_per_period() {
        let mut limiter = limiter();
        let start = Instant::now();
        let mut messages = Vec::new();
        // 10,000 bans over 20 minutes, ticking every second.
        for i in 0..10_000u64 {
            let now = start + Duration::from_millis(i * 120);
            let source = format!("203.0.113.{}", i % 200);
            messages.extend(limiter.on_ban(now, notice(&source, "rate-limit")));
            messages.extend(limiter.tick(now));
        }
        let started = messages
            .iter()
            .filter(|m| matches!(m, Message::AttackStarted(_)))
            .count();
        assert_eq!(started, 1);
        let summaries: Vec<_> = messages
            .iter()
            .filter_map(|m| match m {
                Message::Summary(s) => Some(s),
                _ => None,
            })
            .collect();
        // 1200 s of bans, one summary per 300 s: three so far.
        assert_eq!(summaries.len(), 3, "{summaries:?}");
        assert!(summaries.iter().all(|s| s.top_sources.len() == TOP));
        assert_eq!(summaries[0].top_users, vec![("1001".to_string(), 2500)]);
        // The last summary comes once the period is over, and then no more.
        let end = start + Duration::from_secs(1200);
        let last = limiter
            .tick(end + Duration::from_secs(300))
            .expect("summary");
        let Message::Summary(last) = last else {
            panic!("{last:?}")
        };
        let total: u64 = summaries.iter().map(|s| s.bans).sum::<u64>() + last.bans;
        assert_eq!(total, 9_999, "every ban after the first is summed up");
        assert_eq!(last.by_reason["rate-limit"], last.bans);
        assert_eq!(limiter.tick(end + Duration::from_secs(3600)), None);
    }

    #[test]
    fn one_ban_is_one_message_and_a_quiet_gap_starts_a_new_attack() {
        let mut limiter = limiter();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(matches!(
            limiter.on_ban(start, notice("198.51.100.1", "auth-failure")),
            Some(Message::AttackStarted(n)) if n.source == "198.51.100.1"
        ));
        assert_eq!(limiter.tick(at(300)), None, "nothing more to say");
        // Within the gap: counted, summed up at the end of the period.
        assert_eq!(
            limiter.on_ban(at(400), notice("198.51.100.2", "enumeration")),
            None
        );
        let Some(Message::Summary(summary)) = limiter.tick(at(600)) else {
            panic!("a summary");
        };
        assert_eq!(summary.bans, 1);
        assert_eq!(summary.by_reason["enumeration"], 1);
        assert_eq!(summary.top_sources, vec![("198.51.100.2".to_string(), 1)]);
        assert_eq!(limiter.tick(at(1100)), None);
        // After ten quiet minutes: a new attack.
        assert!(matches!(
            limiter.on_ban(at(1200), notice("198.51.100.3", "rate-limit")),
            Some(Message::AttackStarted(_))
        ));
    }

    #[test]
    fn lost_notices_are_told_in_the_summary() {
        let mut limiter = limiter();
        let start = Instant::now();
        limiter.on_ban(start, notice("192.0.2.1", "rate-limit"));
        limiter.on_lost(42);
        let Some(Message::Summary(summary)) = limiter.tick(start + Duration::from_secs(301)) else {
            panic!("a summary");
        };
        assert_eq!((summary.bans, summary.lost), (0, 42));
    }

    #[test]
    fn distinct_sources_are_bounded_and_counts_stay_exact() {
        let mut limiter = limiter();
        let start = Instant::now();
        for i in 0..(MAX_DISTINCT as u64 + 5_000) {
            limiter.on_ban(start, notice(&format!("src-{i}"), "rate-limit"));
        }
        assert_eq!(limiter.period.sources.len(), MAX_DISTINCT);
        assert_eq!(limiter.period.bans, MAX_DISTINCT as u64 + 4_999);
    }
}
