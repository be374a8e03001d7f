//! SIP authentication failures: which of the PBX's answers are failures, how
//! much evidence each carries, and when a source is banned. Pure logic (the
//! caller supplies the clock), so every rule below is unit-tested.
//!
//! # Failure semantics
//! - A 401/407 answering a request *without* credentials is the normal
//!   challenge, not a failure.
//! - A 401/407 answering a request *with* credentials is a failure, unless the
//!   challenge says `stale=true` (an expired nonce, not a wrong password).
//! - A 403 answering REGISTER, INVITE or any request with credentials is a
//!   failure; so is a 404 answering REGISTER (a probe for an extension).
//! - Answers are matched to requests by Call-ID + CSeq + the requester's
//!   address; only answers the PBX sent (seen leaving its NIC) count.
//!
//! # Evidence against spoofing
//! A failure is *proven* when the failing request echoed a nonce the PBX had
//! issued to that same address: the round trip shows the address is real.
//! Other failures are *unproven*; they ban only at `unproven_multiplier`
//! times the level's threshold. Residual risk: an attacker who can see the
//! PBX's answers to a victim address (on its path) can complete the round
//! trip and get the victim banned; and unproven failures forged at the higher
//! threshold can still ban a victim that is not allow-listed or whitelisted.
//!
//! # Thresholds
//! A source is banned when, within the level's window, its proven failures
//! reach the limit, or all its failures reach limit x multiplier; or when its
//! failures name too many distinct usernames (enumeration, same two tiers).
//! A source holding a live registration (an office behind one NAT address)
//! is judged per username instead, so a colleague's typos do not take the
//! office offline while brute force on any one username is still stopped.
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use guard_common::BanReason;
use ipnet::IpNet;

use crate::sip::parser::{uri_user, Message};

/// The four fail2ban-style levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LevelName {
    Weak,
    Normal,
    Strong,
    Paranoid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    pub failures: u32,
    pub window: Duration,
    pub ban: Duration,
}

const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

impl LevelName {
    pub const fn level(self) -> Level {
        let (failures, window, ban) = match self {
            LevelName::Weak => (20, 10 * MINUTE, 10 * MINUTE),
            LevelName::Normal => (10, HOUR, DAY),
            LevelName::Strong => (5, 6 * HOUR, 7 * DAY),
            LevelName::Paranoid => (3, DAY, 30 * DAY),
        };
        Level {
            failures,
            window: Duration::from_secs(window),
            ban: Duration::from_secs(ban),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthPolicy {
    pub level: Level,
    pub unproven_multiplier: u32,
    /// Distinct failing usernames from one source that mean enumeration.
    pub enumeration_usernames: u32,
    /// Never banned (config whitelist plus the data plane's allow list).
    pub whitelist: Vec<IpNet>,
    /// Ban time multiplied by this on each new ban of the same source...
    pub escalation_factor: u32,
    /// ...up to this.
    pub max_ban: Duration,
}

/// How long an unanswered request is remembered (64 x T1, RFC 3261).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);
/// How long an issued nonce proves a round trip.
const NONCE_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Memory bounds: spoofed sources can make entries, so every table is capped.
const MAX_PENDING: usize = 65_536;
const MAX_NONCES: usize = 65_536;
const MAX_SOURCES: usize = 65_536;
const MAX_FAILURES_PER_SOURCE: usize = 256;
/// Failures kept as evidence in a ban's log line.
const EVIDENCE: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TransactionKey {
    peer: IpAddr,
    call_id: String,
    cseq: u32,
    method: String,
}

#[derive(Debug, Clone)]
struct PendingRequest {
    at: Instant,
    method: String,
    username: String,
    has_credentials: bool,
    nonce: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub at: Instant,
    pub username: String,
    pub status: u16,
    pub proven: bool,
}

#[derive(Debug, Default)]
struct SourceState {
    failures: VecDeque<Failure>,
    /// username -> registration valid until.
    registrations: HashMap<String, Instant>,
    last_seen: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BanDecision {
    pub source: IpAddr,
    pub reason: BanReason,
    pub duration: Duration,
    /// Newest last.
    pub evidence: Vec<Failure>,
    pub failures_in_window: usize,
    pub proven: bool,
    /// 1 for a first ban, 2 for the second, ...
    pub offence: u32,
}

/// What the tracker saw, for metrics and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackerStats {
    pub failures: u64,
    pub whitelisted_failures: u64,
    pub unmatched_responses: u64,
    pub successes: u64,
}

pub struct Tracker {
    policy: AuthPolicy,
    pending: HashMap<TransactionKey, PendingRequest>,
    nonces: HashMap<(IpAddr, String), Instant>,
    sources: HashMap<IpAddr, SourceState>,
    offences: HashMap<IpAddr, u32>,
    pub stats: TrackerStats,
}

/// The username a request is about: the digest username, else the To user
/// of a REGISTER, else the From user.
fn request_username(message: &Message<'_>) -> String {
    let from_credentials = message.credentials.as_ref().and_then(|c| c.username);
    let from_headers = if message.method() == Some("REGISTER") {
        message.to.and_then(uri_user)
    } else {
        message.from.and_then(uri_user)
    };
    from_credentials.or(from_headers).unwrap_or("").to_string()
}

impl Tracker {
    pub fn new(policy: AuthPolicy) -> Tracker {
        Tracker {
            policy,
            pending: HashMap::new(),
            nonces: HashMap::new(),
            sources: HashMap::new(),
            offences: HashMap::new(),
            stats: TrackerStats::default(),
        }
    }

    pub fn policy(&self) -> &AuthPolicy {
        &self.policy
    }

    /// A request that reached the PBX from `peer`.
    pub fn on_request(&mut self, now: Instant, peer: IpAddr, message: &Message<'_>) {
        let (Some(method), Some(call_id), Some(cseq)) =
            (message.method(), message.call_id, message.cseq)
        else {
            return;
        };
        if method == "ACK" || method == "CANCEL" {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.prune(now);
            if self.pending.len() >= MAX_PENDING {
                return;
            }
        }
        let key = TransactionKey {
            peer,
            call_id: call_id.to_string(),
            cseq: cseq.number,
            method: cseq.method.to_string(),
        };
        let credentials = message.credentials.as_ref();
        self.pending.insert(
            key,
            PendingRequest {
                at: now,
                method: method.to_string(),
                username: request_username(message),
                has_credentials: credentials.is_some(),
                nonce: credentials.and_then(|c| c.nonce).map(str::to_string),
            },
        );
    }

    /// An answer the PBX sent to `peer`. Returns a ban when it tips the balance.
    pub fn on_response(
        &mut self,
        now: Instant,
        peer: IpAddr,
        message: &Message<'_>,
    ) -> Option<BanDecision> {
        let (Some(status), Some(call_id), Some(cseq)) =
            (message.status(), message.call_id, message.cseq)
        else {
            return None;
        };
        if status < 200 {
            return None;
        }
        let key = TransactionKey {
            peer,
            call_id: call_id.to_string(),
            cseq: cseq.number,
            method: cseq.method.to_string(),
        };
        let Some(request) = self.pending.remove(&key) else {
            self.stats.unmatched_responses += 1;
            return None;
        };
        let challenge = message.challenge.as_ref();
        if matches!(status, 401 | 407) {
            if let Some(nonce) = challenge.and_then(|c| c.nonce) {
                if self.nonces.len() < MAX_NONCES {
                    self.nonces.insert((peer, nonce.to_string()), now);
                }
            }
        }
        let is_failure = match status {
            401 | 407 => request.has_credentials && !challenge.is_some_and(|c| c.stale),
            403 => {
                matches!(request.method.as_str(), "REGISTER" | "INVITE") || request.has_credentials
            }
            404 => request.method == "REGISTER",
            200..=299 if request.method == "REGISTER" => {
                self.on_registered(now, peer, &request.username, message);
                return None;
            }
            _ => false,
        };
        if !is_failure {
            return None;
        }
        let proven = request.nonce.as_ref().is_some_and(|nonce| {
            self.nonces
                .get(&(peer, nonce.clone()))
                .is_some_and(|issued| now.duration_since(*issued) <= NONCE_LIFETIME)
        });
        self.record_failure(now, peer, request.username, status, proven)
    }

    fn on_registered(&mut self, now: Instant, peer: IpAddr, username: &str, message: &Message<'_>) {
        self.stats.successes += 1;
        let expiry = message.registration_expiry().unwrap_or(3600);
        let state = self.sources.entry(peer).or_default();
        state.failures.retain(|f| f.username != username);
        if expiry == 0 {
            state.registrations.remove(username);
        } else {
            let until = now + Duration::from_secs(expiry as u64);
            state.registrations.insert(username.to_string(), until);
        }
        state.last_seen = Some(now);
    }

    pub fn is_whitelisted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.policy.whitelist.iter().any(|net| net.contains(&ip))
    }

    fn record_failure(
        &mut self,
        now: Instant,
        peer: IpAddr,
        username: String,
        status: u16,
        proven: bool,
    ) -> Option<BanDecision> {
        self.stats.failures += 1;
        if self.is_whitelisted(peer) {
            self.stats.whitelisted_failures += 1;
            return None;
        }
        if !self.sources.contains_key(&peer) && self.sources.len() >= MAX_SOURCES {
            self.prune(now);
        }
        let window = self.policy.level.window;
        let state = self.sources.entry(peer).or_default();
        state.last_seen = Some(now);
        state.failures.push_back(Failure {
            at: now,
            username: username.clone(),
            status,
            proven,
        });
        while state
            .failures
            .front()
            .is_some_and(|f| now.duration_since(f.at) > window)
        {
            state.failures.pop_front();
        }
        while state.failures.len() > MAX_FAILURES_PER_SOURCE {
            state.failures.pop_front();
        }
        state.registrations.retain(|_, until| *until > now);
        let office = !state.registrations.is_empty();

        let limit = self.policy.level.failures as usize;
        let unproven_limit = limit * self.policy.unproven_multiplier.max(1) as usize;
        let over = |failures: &mut dyn Iterator<Item = &Failure>| {
            let (mut proven, mut all) = (0usize, 0usize);
            for f in failures {
                all += 1;
                proven += f.proven as usize;
            }
            proven >= limit || all >= unproven_limit
        };
        let auth_failure = if office {
            over(&mut state.failures.iter().filter(|f| f.username == username))
        } else {
            over(&mut state.failures.iter())
        };
        let enumeration = {
            let enum_limit = self.policy.enumeration_usernames.max(1) as usize;
            let mut proven_names: Vec<&str> = Vec::new();
            let mut all_names: Vec<&str> = Vec::new();
            for f in &state.failures {
                if !all_names.contains(&f.username.as_str()) {
                    all_names.push(&f.username);
                }
                if f.proven && !proven_names.contains(&f.username.as_str()) {
                    proven_names.push(&f.username);
                }
            }
            proven_names.len() >= enum_limit
                || all_names.len() >= enum_limit * self.policy.unproven_multiplier.max(1) as usize
        };
        let reason = if auth_failure {
            BanReason::AuthFailure
        } else if enumeration {
            BanReason::Enumeration
        } else {
            return None;
        };

        let failures_in_window = state.failures.len();
        let evidence: Vec<Failure> = state
            .failures
            .iter()
            .skip(failures_in_window.saturating_sub(EVIDENCE))
            .cloned()
            .collect();
        let proven = evidence.iter().all(|f| f.proven);
        // The ban is in place: start afresh should the source come back.
        self.sources.remove(&peer);
        let offence = {
            let n = self.offences.entry(peer).or_default();
            *n += 1;
            *n
        };
        Some(BanDecision {
            source: peer,
            reason,
            duration: self.ban_duration(offence),
            evidence,
            failures_in_window,
            proven,
            offence,
        })
    }

    /// The level's ban time, multiplied for repeat offenders, capped.
    fn ban_duration(&self, offence: u32) -> Duration {
        let base = self.policy.level.ban;
        let factor = self.policy.escalation_factor.max(1) as u64;
        let mut duration = base;
        for _ in 1..offence {
            duration = duration.saturating_mul(factor as u32);
            if duration >= self.policy.max_ban {
                break;
            }
        }
        if factor > 1 {
            duration.min(self.policy.max_ban.max(base))
        } else {
            base
        }
    }

    /// Forgets what is too old to matter; call periodically.
    pub fn prune(&mut self, now: Instant) {
        self.pending
            .retain(|_, p| now.duration_since(p.at) <= TRANSACTION_TIMEOUT);
        self.nonces
            .retain(|_, issued| now.duration_since(*issued) <= NONCE_LIFETIME);
        let window = self.policy.level.window;
        self.sources.retain(|_, s| {
            s.failures.retain(|f| now.duration_since(f.at) <= window);
            s.registrations.retain(|_, until| *until > now);
            !s.failures.is_empty() || !s.registrations.is_empty()
        });
        // Still full: drop the least recently seen half.
        if self.sources.len() >= MAX_SOURCES {
            let mut seen: Vec<(IpAddr, Option<Instant>)> = self
                .sources
                .iter()
                .map(|(ip, s)| (*ip, s.last_seen))
                .collect();
            seen.sort_by_key(|(_, at)| *at);
            for (ip, _) in seen.into_iter().take(MAX_SOURCES / 2) {
                self.sources.remove(&ip);
            }
        }
    }

    /// Tracked sources, for status output and tests.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
