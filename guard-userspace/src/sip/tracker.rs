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
//!   address, with the first or the last of repeated Call-ID/CSeq headers
//!   (PBXs differ: see `sip`); only answers the PBX sent count.
//!
//! # Answers that match no readable request
//! The answer is what the PBX decided, so it is judged even when its request
//! was not read: fragmented (later IP fragments are not captured), cut at the
//! capture size, split across TCP segments, lost from a full ring, or written
//! to confuse a parser. Whether it carried credentials is then unknown, so:
//! - a 401/407 (not stale), a 403, or a 404 to REGISTER answering a request
//!   that was not read, or read only in part (its header section cut before
//!   its end), is an *unproven* failure, for the To user (REGISTER) or the
//!   From user (anything else) the answer echoes;
//! - a 2xx to REGISTER still clears that username's failures.
//!
//! A source whose requests are always unreadable is thus banned at the
//! unproven threshold, limit x `unproven_multiplier` (30 at the normal
//! level; each guess costs it one failure, two when it also needs a fresh
//! challenge). It cannot be proven: the nonce its request echoed is in the
//! part that was not read. A phone whose requests are not read (a ring lost
//! under a flood) collects an unproven failure per challenge, which its next
//! successful registration clears. So does a phone on a lossy link whose
//! retransmitted request gets a second answer: answers are not
//! de-duplicated, since a stateless PBX (Kamailio's `sl` replies) answers a
//! guess that reuses an earlier request's Call-ID, CSeq and branch with a
//! byte-identical 401 (its nonce changes once a second), and skipping such
//! answers would let a guesser whose guesses are unreadable go uncounted.
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
//! failures name too many distinct usernames (enumeration, same two tiers);
//! or when it has probed `enumeration_usernames` distinct usernames without
//! the PBX ever accepting it (an extension scan: `sip::probes`, which also
//! counts the challenges a scanner never answers and the requests the PBX
//! leaves unanswered).
//! A source holding a live registration (an office behind one NAT address)
//! is judged per username instead, so a colleague's typos do not take the
//! office offline while brute force on any one username is still stopped.
//! An IPv6 source is its ban prefix (`ipv6_prefix`, /64 by default): an
//! attacker cannot spread its guesses over the addresses of its network.
//!
//! # Bounded under a flood
//! Every table has a fixed capacity and evicts in O(1) (least recently
//! used), never by scanning; what a spoofed flood can fill is kept apart
//! from what proves a real attacker:
//! - pending requests: at most 64 per source (its own oldest go first),
//!   65,536 in all ([`Capacities`]). The PBX answers within
//!   milliseconds, so even a full table keeps a request for about a second
//!   at 50,000 requests/s; and an answer whose request was evicted still
//!   counts (above).
//! - nonces: a nonce issued to an address that has never echoed one goes to
//!   a probation table, which a flood of spoofed requests churns; one issued
//!   to an address that has completed a round trip (a *live* address) goes
//!   to a protected table that spoofed sources can never enter, since they
//!   cannot echo. A brute force proves itself on its first echo, and from
//!   then on its evidence is out of the flood's reach.
//! - per-source failure state: sources with only unproven failures (all a
//!   spoofed flood can create) are kept apart from sources with proven
//!   failures or a live registration, each table evicting its own least
//!   recently active.
//! - bans: forged failures can get forged addresses banned (unproven, at
//!   the higher threshold). At most `unproven_ban_budget` unproven bans
//!   (half the ban map) are made per ban time, so such a flood can never
//!   fill the ban map and leave no room for a proven attacker's ban.
use std::{
    collections::{hash_map::RandomState, HashMap, VecDeque},
    hash::BuildHasher,
    net::IpAddr,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use guard_common::BanReason;
use ipnet::IpNet;
use lru::LruCache;

use crate::sip::{
    parser::{display, uri_user, Message},
    peers::PeerBook,
    probes::{Probes, Scan},
};

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
    /// IPv6 sources are tracked (and banned) by this prefix.
    pub ipv6_prefix: u8,
    /// Unproven bans in force at most (counted over the level's ban time):
    /// forged failures can ban forged addresses, and must not fill the
    /// kernel's ban map, which would leave no room to ban a real attacker.
    pub unproven_ban_budget: usize,
    /// How long an authenticated call keeps its source a learned peer.
    pub peer_idle: Duration,
    /// Learned peers kept at most (the kernel's peer map's size).
    pub max_peers: usize,
}

/// How long an unanswered request is remembered (64 x T1, RFC 3261).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(32);
/// How long an issued nonce proves a round trip.
const NONCE_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Memory bounds: spoofed sources can make entries, so every table is capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacities {
    pub pending: usize,
    /// A phone has a few transactions open; a trunk more, but answered fast.
    pub pending_per_source: usize,
    /// Nonces issued to addresses that have not yet echoed one...
    pub probation_nonces: usize,
    /// ...and to live addresses (ones that echoed a nonce of theirs).
    pub protected_nonces: usize,
    pub live_sources: usize,
    /// Sources with only unproven failures, and sources with more.
    pub suspects: usize,
    pub sources: usize,
    pub offences: usize,
}

impl Default for Capacities {
    fn default() -> Capacities {
        Capacities {
            pending: 65_536,
            pending_per_source: 64,
            probation_nonces: 65_536,
            protected_nonces: 65_536,
            live_sources: 65_536,
            suspects: 65_536,
            sources: 65_536,
            offences: 65_536,
        }
    }
}

const MAX_FAILURES_PER_SOURCE: usize = 256;
/// Failures kept as evidence in a ban's log line.
const EVIDENCE: usize = 5;

/// What an answer is matched by: the requester, and a keyed hash of
/// (Call-ID, CSeq number, CSeq method). The key is random per process, so
/// nobody can aim collisions; entries stay small and fixed in size.
type TxKey = (IpAddr, u64);
/// A nonce issued to an address, hashed the same way.
type NonceKey = (IpAddr, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Register,
    Invite,
    Subscribe,
    Options,
    Other,
}

impl Method {
    fn of(name: &[u8]) -> Method {
        if name.eq_ignore_ascii_case(b"REGISTER") {
            Method::Register
        } else if name.eq_ignore_ascii_case(b"INVITE") {
            Method::Invite
        } else if name.eq_ignore_ascii_case(b"SUBSCRIBE") {
            Method::Subscribe
        } else if name.eq_ignore_ascii_case(b"OPTIONS") {
            Method::Options
        } else {
            Method::Other
        }
    }

    /// The methods an extension scan probes with.
    fn probes(self) -> bool {
        self != Method::Other
    }

    /// Whether a `status` answer to this method accepts its source: a
    /// registration, a subscription, or a call that rings or is answered.
    fn accepted_by(self, status: u16) -> bool {
        match self {
            Method::Register | Method::Subscribe => (200..300).contains(&status),
            Method::Invite => (180..300).contains(&status),
            Method::Options | Method::Other => false,
        }
    }
}

/// Whether a request carried credentials, as far as its capture shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credentials {
    None,
    Some,
    /// Its header section was cut before the end: they may be in the rest.
    Unknown,
}

#[derive(Debug, Clone)]
struct PendingRequest {
    at: Instant,
    method: Method,
    username: Vec<u8>,
    credentials: Credentials,
    /// Hashed nonces of its credentials.
    nonces: Vec<u64>,
    /// Every key it is filed under (see `Message::transaction_ids`).
    keys: Vec<u64>,
    /// The username it asks about (the To user, else the From user).
    target: Vec<u8>,
    /// Its credentials echoed a nonce issued to its address.
    echoed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub at: Instant,
    /// As the request carried it, escapes decoded; see `display_username`.
    pub username: Vec<u8>,
    pub status: u16,
    pub proven: bool,
}

impl Failure {
    /// The username for logs ("?" when there was none).
    pub fn display_username(&self) -> String {
        if self.username.is_empty() {
            "?".to_string()
        } else {
            display(&self.username)
        }
    }
}

#[derive(Debug, Default)]
struct SourceState {
    failures: VecDeque<Failure>,
    /// username -> registration valid until.
    registrations: HashMap<Vec<u8>, Instant>,
}

impl SourceState {
    /// Proven evidence or a registration: worth keeping apart from a flood.
    fn is_established(&self) -> bool {
        !self.registrations.is_empty() || self.failures.iter().any(|f| f.proven)
    }
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
    /// Answers that matched no readable request (judged on their own).
    pub unmatched_responses: u64,
    pub successes: u64,
    /// Unproven bans not made because the budget was spent.
    pub unproven_bans_refused: u64,
    /// Probes opened: a username a source asked about (`sip::probes`).
    pub probes: u64,
    /// Entries pushed out of a full table.
    pub evicted_pending: u64,
    pub evicted_nonces: u64,
    pub evicted_sources: u64,
}

pub struct Tracker {
    policy: AuthPolicy,
    capacities: Capacities,
    hasher: RandomState,
    pending: LruCache<TxKey, PendingRequest>,
    /// Each source's pending keys, oldest first (its quota).
    pending_by_source: HashMap<IpAddr, VecDeque<u64>>,
    probation_nonces: LruCache<NonceKey, Instant>,
    protected_nonces: LruCache<NonceKey, Instant>,
    /// Addresses that echoed a nonce issued to them, and when.
    live: LruCache<IpAddr, Instant>,
    /// Sources with only unproven failures.
    suspects: LruCache<IpAddr, SourceState>,
    /// Sources with proven failures or a live registration.
    sources: LruCache<IpAddr, SourceState>,
    offences: LruCache<IpAddr, u32>,
    /// When each unproven ban of the last ban time was made, oldest first.
    unproven_bans: VecDeque<Instant>,
    /// REGISTERs the PBX sent (to a provider), by (address, transaction).
    outbound: LruCache<TxKey, Instant>,
    /// Sources that authenticated (see `sip::peers`).
    pub peers: PeerBook,
    /// Usernames each source asked about (extension scans: `sip::probes`).
    pub probes: Probes,
    pub stats: TrackerStats,
}

fn capacity(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

/// Whether `ip` is in one of `nets` (IPv4-mapped IPv6 as IPv4).
fn listed(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|net| net.contains(&ip))
}

/// The username an extension scan asks about: the To user (the extension
/// a REGISTER, INVITE, OPTIONS or SUBSCRIBE names), else the From user.
fn target(message: &Message<'_>) -> Vec<u8> {
    [message.to, message.from]
        .into_iter()
        .flatten()
        .find_map(uri_user)
        .map(|u| u.into_owned())
        .unwrap_or_default()
}

/// The username a request or answer is about: the digest username, else
/// the To user of a REGISTER, else the From user.
fn username(message: &Message<'_>, method: Method) -> Vec<u8> {
    let from_credentials = message
        .credentials
        .iter()
        .find_map(|c| c.username.as_deref());
    if let Some(name) = from_credentials {
        return name.to_vec();
    }
    let header = if method == Method::Register {
        message.to
    } else {
        message.from
    };
    header
        .and_then(uri_user)
        .map(|u| u.into_owned())
        .unwrap_or_default()
}

impl Tracker {
    pub fn new(policy: AuthPolicy) -> Tracker {
        Tracker::with_capacities(policy, Capacities::default())
    }

    pub fn with_capacities(policy: AuthPolicy, capacities: Capacities) -> Tracker {
        let c = capacities;
        let peers = PeerBook::new(policy.max_peers, policy.peer_idle);
        let probes = Probes::new(
            c.suspects,
            policy.level.window,
            policy.enumeration_usernames,
        );
        Tracker {
            policy,
            capacities,
            hasher: RandomState::new(),
            pending: LruCache::new(capacity(c.pending)),
            pending_by_source: HashMap::new(),
            probation_nonces: LruCache::new(capacity(c.probation_nonces)),
            protected_nonces: LruCache::new(capacity(c.protected_nonces)),
            live: LruCache::new(capacity(c.live_sources)),
            suspects: LruCache::new(capacity(c.suspects)),
            sources: LruCache::new(capacity(c.sources)),
            offences: LruCache::new(capacity(c.offences)),
            unproven_bans: VecDeque::new(),
            outbound: LruCache::new(capacity(c.pending)),
            peers,
            probes,
            stats: TrackerStats::default(),
        }
    }

    pub fn policy(&self) -> &AuthPolicy {
        &self.policy
    }

    /// The address state is kept under: an IPv6 address is its ban prefix.
    fn source_of(&self, peer: IpAddr) -> IpAddr {
        match peer.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = self.policy.ipv6_prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - prefix as u32).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
            v4 => v4,
        }
    }

    fn transaction_keys(&self, message: &Message<'_>) -> Vec<u64> {
        message
            .transaction_ids()
            .into_iter()
            .map(|(call_id, cseq)| self.hasher.hash_one((call_id, cseq.number, cseq.method)))
            .collect()
    }

    fn nonce_key(&self, nonce: &[u8]) -> u64 {
        self.hasher.hash_one(nonce)
    }

    /// A request that reached the PBX from `peer` (source port unknown).
    pub fn on_request(
        &mut self,
        now: Instant,
        peer: IpAddr,
        message: &Message<'_>,
    ) -> Option<BanDecision> {
        self.on_request_from(now, peer, 0, message)
    }

    /// A request that reached the PBX from `peer`, port `port`. Returns a
    /// ban when the source's probes ripened into an extension scan.
    pub fn on_request_from(
        &mut self,
        now: Instant,
        peer: IpAddr,
        port: u16,
        message: &Message<'_>,
    ) -> Option<BanDecision> {
        let method_name = message.method()?;
        if message.is_method("ACK") || message.is_method("CANCEL") {
            return None;
        }
        let keys = self.transaction_keys(message);
        if keys.is_empty() {
            return None;
        }
        let source = self.source_of(peer);
        let nonces: Vec<u64> = message
            .credentials
            .iter()
            .filter_map(|c| c.nonce.as_deref())
            .map(|n| self.nonce_key(n))
            .collect();
        // Echoing a nonce issued to this address makes it live.
        let echoed = nonces.iter().any(|n| self.nonce_valid(now, source, *n));
        if echoed {
            self.live.put(source, now);
        }
        let method = Method::of(method_name);
        let credentials = if !message.credentials.is_empty() {
            Credentials::Some
        } else if message.complete {
            Credentials::None
        } else {
            Credentials::Unknown
        };
        let request = PendingRequest {
            at: now,
            method,
            username: username(message, method),
            credentials,
            nonces,
            keys: keys.clone(),
            target: target(message),
            echoed,
        };
        if echoed && method == Method::Register {
            self.peers
                .challenge_answered(now, source, &request.username);
        }
        if method.probes() {
            let opened = self
                .probes
                .request(now, source, port, &request.target, echoed);
            self.stats.probes += u64::from(opened);
        }
        for key in keys {
            self.file_pending(source, key, request.clone());
        }
        self.judge_probes(now, peer, source)
    }

    /// Files one key of a request, within the source's quota and the table's.
    fn file_pending(&mut self, source: IpAddr, key: u64, request: PendingRequest) {
        let queue = self.pending_by_source.entry(source).or_default();
        if queue.len() >= self.capacities.pending_per_source {
            if let Some(oldest) = queue.pop_front() {
                self.pending.pop(&(source, oldest));
                self.stats.evicted_pending += 1;
            }
        }
        queue.retain(|k| *k != key);
        queue.push_back(key);
        if let Some(((evicted_source, evicted_key), _)) = self.pending.push((source, key), request)
        {
            if (evicted_source, evicted_key) != (source, key) {
                self.stats.evicted_pending += 1;
                self.forget_pending_key(evicted_source, evicted_key);
            }
        }
    }

    fn forget_pending_key(&mut self, source: IpAddr, key: u64) {
        if let Some(queue) = self.pending_by_source.get_mut(&source) {
            queue.retain(|k| *k != key);
            if queue.is_empty() {
                self.pending_by_source.remove(&source);
            }
        }
    }

    /// Takes the request an answer belongs to, under all its keys.
    fn take_pending(&mut self, source: IpAddr, keys: &[u64]) -> Option<PendingRequest> {
        let request = keys
            .iter()
            .find_map(|key| self.pending.pop(&(source, *key)))?;
        for key in &request.keys {
            self.pending.pop(&(source, *key));
            self.forget_pending_key(source, *key);
        }
        Some(request)
    }

    fn nonce_valid(&self, now: Instant, source: IpAddr, nonce: u64) -> bool {
        let key = (source, nonce);
        self.protected_nonces
            .peek(&key)
            .or_else(|| self.probation_nonces.peek(&key))
            .is_some_and(|issued| now.duration_since(*issued) <= NONCE_LIFETIME)
    }

    fn issue_nonce(&mut self, now: Instant, source: IpAddr, nonce: u64) {
        let table = if self.live.contains(&source) {
            &mut self.protected_nonces
        } else {
            &mut self.probation_nonces
        };
        if let Some((key, _)) = table.push((source, nonce), now) {
            if key != (source, nonce) {
                self.stats.evicted_nonces += 1;
            }
        }
    }

    /// A request the XDP program dropped for an extension rule
    /// (`extension_denied`): a failure of its source under the username it
    /// named, as if the PBX had refused it (403). Unproven: the PBX never
    /// saw it, and its source may be forged. Returns a ban when it tips
    /// the balance.
    pub fn on_kernel_denied(
        &mut self,
        now: Instant,
        peer: IpAddr,
        message: &Message<'_>,
    ) -> Option<BanDecision> {
        let method = Method::of(message.method()?);
        let source = self.source_of(peer);
        let username = username(message, method);
        self.record_failure(now, peer, source, username, 403, false)
    }

    /// An answer the PBX sent to `peer`. Returns a ban when it tips the balance.
    pub fn on_response(
        &mut self,
        now: Instant,
        peer: IpAddr,
        message: &Message<'_>,
    ) -> Option<BanDecision> {
        let status = message.status()?;
        let source = self.source_of(peer);
        if status < 200 {
            self.on_provisional(now, source, status, message);
            return None;
        }
        if matches!(status, 401 | 407) {
            for nonce in message.challenges.iter().filter_map(|c| c.nonce.as_deref()) {
                let key = self.nonce_key(nonce);
                self.issue_nonce(now, source, key);
            }
        }
        let keys = self.transaction_keys(message);
        let request = match self.take_pending(source, &keys) {
            Some(request) => request,
            None => {
                self.stats.unmatched_responses += 1;
                // Judged on its own: what it answered is unknown.
                let method = Method::of(message.cseq.map_or(&b""[..], |c| c.method));
                PendingRequest {
                    at: now,
                    method,
                    username: username(message, method),
                    credentials: Credentials::Unknown,
                    nonces: Vec::new(),
                    keys: Vec::new(),
                    target: Vec::new(),
                    echoed: false,
                }
            }
        };
        self.answer_probe(now, source, &request, status);
        let is_failure = match status {
            401 | 407 => request.credentials != Credentials::None && !message.stale(),
            403 => {
                matches!(request.method, Method::Register | Method::Invite)
                    || request.credentials != Credentials::None
            }
            404 => request.method == Method::Register,
            200..=299 => {
                if request.method == Method::Register {
                    self.on_registered(now, source, &request.username, message);
                }
                self.learn_peer(now, source, &request, message);
                return self.judge_probes(now, peer, source);
            }
            _ => false,
        };
        if !is_failure {
            return self.judge_probes(now, peer, source);
        }
        let proven = request.credentials == Credentials::Some
            && request
                .nonces
                .iter()
                .any(|n| self.nonce_valid(now, source, *n));
        match self.record_failure(now, peer, source, request.username, status, proven) {
            Some(ban) => Some(ban),
            None => self.judge_probes(now, peer, source),
        }
    }

    /// A 1xx: a REGISTER's challenge credit goes (only a 2xx settles it),
    /// and a call that rings accepts its source. The request stays pending
    /// for its final answer.
    fn on_provisional(&mut self, now: Instant, source: IpAddr, status: u16, message: &Message<'_>) {
        let keys = self.transaction_keys(message);
        let Some(request) = keys
            .iter()
            .find_map(|key| self.pending.peek(&(source, *key)))
            .cloned()
        else {
            return;
        };
        self.answer_probe(now, source, &request, status);
    }

    /// An answer to a request: anything but a 2xx withdraws a REGISTER's
    /// challenge credit, and the probe of its username is answered.
    fn answer_probe(
        &mut self,
        now: Instant,
        source: IpAddr,
        request: &PendingRequest,
        status: u16,
    ) {
        if request.echoed && request.method == Method::Register && !(200..300).contains(&status) {
            self.peers.challenge_refused(now, source, &request.username);
        }
        if !request.method.probes() || request.keys.is_empty() {
            return;
        }
        let accepts = request.method.accepted_by(status);
        self.probes.answer(
            now,
            source,
            &request.target,
            status,
            request.echoed,
            accepts,
        );
    }

    /// Whether `source`'s probes make an extension scan (learned peers and
    /// whitelisted sources are never judged so).
    fn judge_probes(&mut self, now: Instant, peer: IpAddr, source: IpAddr) -> Option<BanDecision> {
        let (peers, whitelist) = (&self.peers, &self.policy.whitelist);
        let exempt = || listed(whitelist, peer) || peers.is_learned(source, now);
        let scan = self.probes.judge(now, source, exempt)?;
        self.scan_ban(now, peer, source, scan)
    }

    /// Sources whose unanswered probes ripened with time alone; call
    /// periodically. Returns their bans.
    pub fn judge_waiting(&mut self, now: Instant) -> Vec<BanDecision> {
        let waiting = self.probes.waiting(4096);
        waiting
            .into_iter()
            .filter_map(|source| self.judge_probes(now, source, source))
            .collect()
    }

    /// The ban for an extension scan: unproven evidence (a forged address
    /// makes probes too), so it spends the unproven-ban budget.
    fn scan_ban(
        &mut self,
        now: Instant,
        peer: IpAddr,
        source: IpAddr,
        scan: Scan,
    ) -> Option<BanDecision> {
        if !self.spend_unproven_ban(now) {
            self.stats.unproven_bans_refused += 1;
            return None;
        }
        let probed = scan.probes.len();
        let evidence: Vec<Failure> = scan
            .probes
            .into_iter()
            .skip(probed.saturating_sub(EVIDENCE))
            .map(|probe| Failure {
                at: probe.at,
                status: probe.answer.status(),
                username: probe.username,
                proven: false,
            })
            .collect();
        let offence = self.offences.get(&source).copied().unwrap_or(0) + 1;
        self.offences.put(source, offence);
        Some(BanDecision {
            source: peer,
            reason: BanReason::Enumeration,
            duration: self.ban_duration(offence),
            evidence,
            failures_in_window: probed,
            proven: false,
            offence,
        })
    }

    /// A 2xx the PBX sent: a learned peer if the request's credentials
    /// echoed a nonce issued to this same address (see `sip::peers`).
    fn learn_peer(
        &mut self,
        now: Instant,
        source: IpAddr,
        request: &PendingRequest,
        message: &Message<'_>,
    ) {
        let proven = request.credentials == Credentials::Some
            && request
                .nonces
                .iter()
                .any(|n| self.nonce_valid(now, source, *n));
        if !proven {
            return;
        }
        match request.method {
            Method::Register => {
                let expiry = message.registration_expiry().unwrap_or(3600);
                self.peers
                    .registered(now, source, &request.username, expiry);
            }
            Method::Invite | Method::Subscribe => self.peers.active(now, source),
            Method::Options | Method::Other => {}
        }
    }

    /// A request the PBX itself sent to `peer` (acting as a client): its
    /// REGISTERs are remembered, so that the answer makes a provider peer.
    pub fn on_pbx_request(&mut self, now: Instant, peer: IpAddr, message: &Message<'_>) {
        if !message.is_method("REGISTER") {
            return;
        }
        let source = self.source_of(peer);
        for key in self.transaction_keys(message) {
            self.outbound.put((source, key), now);
        }
    }

    /// An answer `peer` sent to the PBX: a 2xx to a REGISTER the PBX sent
    /// there makes `peer` a provider peer.
    pub fn on_answer_to_pbx(&mut self, now: Instant, peer: IpAddr, message: &Message<'_>) {
        let Some(status) = message.status() else {
            return;
        };
        if !(200..300).contains(&status) {
            return;
        }
        let source = self.source_of(peer);
        let mut matched = false;
        for key in self.transaction_keys(message) {
            if let Some(sent) = self.outbound.pop(&(source, key)) {
                matched |= now.duration_since(sent) <= TRANSACTION_TIMEOUT;
            }
        }
        if matched {
            let expiry = message.registration_expiry().unwrap_or(3600);
            self.peers.provider(now, source, expiry);
        }
    }

    fn on_registered(
        &mut self,
        now: Instant,
        source: IpAddr,
        username: &[u8],
        message: &Message<'_>,
    ) {
        self.stats.successes += 1;
        let expiry = message.registration_expiry().unwrap_or(3600);
        let mut state = self
            .sources
            .pop(&source)
            .or_else(|| self.suspects.pop(&source))
            .unwrap_or_default();
        state.failures.retain(|f| f.username != username);
        if expiry == 0 {
            state.registrations.remove(username);
        } else {
            let until = now + Duration::from_secs(expiry as u64);
            state.registrations.insert(username.to_vec(), until);
        }
        self.keep_state(source, state);
    }

    /// Files a source's state in the table its evidence earns.
    fn keep_state(&mut self, source: IpAddr, state: SourceState) {
        if state.failures.is_empty() && state.registrations.is_empty() {
            return;
        }
        let table = if state.is_established() {
            &mut self.sources
        } else {
            &mut self.suspects
        };
        if let Some((evicted, _)) = table.push(source, state) {
            if evicted != source {
                self.stats.evicted_sources += 1;
            }
        }
    }

    pub fn is_whitelisted(&self, ip: IpAddr) -> bool {
        listed(&self.policy.whitelist, ip)
    }

    fn record_failure(
        &mut self,
        now: Instant,
        peer: IpAddr,
        source: IpAddr,
        username: Vec<u8>,
        status: u16,
        proven: bool,
    ) -> Option<BanDecision> {
        self.stats.failures += 1;
        if self.is_whitelisted(peer) {
            self.stats.whitelisted_failures += 1;
            return None;
        }
        let window = self.policy.level.window;
        let mut state = self
            .sources
            .pop(&source)
            .or_else(|| self.suspects.pop(&source))
            .unwrap_or_default();
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
        let Some(reason) = self.verdict(&state, &username) else {
            self.keep_state(source, state);
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
        if !self.proven_alone_ban(&state, &username) && !self.spend_unproven_ban(now) {
            self.stats.unproven_bans_refused += 1;
            self.keep_state(source, state);
            return None;
        }
        // The ban is in place: the state is dropped, to start afresh should
        // the source come back.
        let offence = self.offences.get(&source).copied().unwrap_or(0) + 1;
        self.offences.put(source, offence);
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

    /// Whether the source's proven failures alone ban it.
    fn proven_alone_ban(&self, state: &SourceState, username: &[u8]) -> bool {
        let proven = SourceState {
            failures: state
                .failures
                .iter()
                .filter(|f| f.proven)
                .cloned()
                .collect(),
            registrations: state.registrations.clone(),
        };
        self.verdict(&proven, username).is_some()
    }

    /// Takes one unproven ban from the budget, if any is left.
    fn spend_unproven_ban(&mut self, now: Instant) -> bool {
        let ban = self.policy.level.ban;
        while self
            .unproven_bans
            .front()
            .is_some_and(|at| now.duration_since(*at) >= ban)
        {
            self.unproven_bans.pop_front();
        }
        if self.unproven_bans.len() >= self.policy.unproven_ban_budget {
            return false;
        }
        self.unproven_bans.push_back(now);
        true
    }

    /// Whether a source's failures (the newest for `username`) ban it.
    fn verdict(&self, state: &SourceState, username: &[u8]) -> Option<BanReason> {
        let office = !state.registrations.is_empty();
        let limit = self.policy.level.failures as usize;
        let multiplier = self.policy.unproven_multiplier.max(1) as usize;
        let over = |failures: &mut dyn Iterator<Item = &Failure>| {
            let (mut proven, mut all) = (0usize, 0usize);
            for f in failures {
                all += 1;
                proven += f.proven as usize;
            }
            proven >= limit || all >= limit * multiplier
        };
        let auth_failure = if office {
            over(&mut state.failures.iter().filter(|f| f.username == username))
        } else {
            over(&mut state.failures.iter())
        };
        let enumeration = {
            let enum_limit = self.policy.enumeration_usernames.max(1) as usize;
            let mut proven_names: Vec<&[u8]> = Vec::new();
            let mut all_names: Vec<&[u8]> = Vec::new();
            for f in &state.failures {
                if !all_names.contains(&f.username.as_slice()) {
                    all_names.push(&f.username);
                }
                if f.proven && !proven_names.contains(&f.username.as_slice()) {
                    proven_names.push(&f.username);
                }
            }
            proven_names.len() >= enum_limit || all_names.len() >= enum_limit * multiplier
        };
        if auth_failure {
            Some(BanReason::AuthFailure)
        } else if enumeration {
            Some(BanReason::Enumeration)
        } else {
            None
        }
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

    /// Forgets what is too old to matter; call periodically. Each table is
    /// trimmed from its oldest end only, so this costs what it removes.
    pub fn prune(&mut self, now: Instant) {
        while let Some((&(source, key), request)) = self.pending.peek_lru() {
            if now.duration_since(request.at) <= TRANSACTION_TIMEOUT {
                break;
            }
            self.pending.pop_lru();
            self.forget_pending_key(source, key);
        }
        for table in [&mut self.probation_nonces, &mut self.protected_nonces] {
            while table
                .peek_lru()
                .is_some_and(|(_, issued)| now.duration_since(*issued) > NONCE_LIFETIME)
            {
                table.pop_lru();
            }
        }
        while self
            .live
            .peek_lru()
            .is_some_and(|(_, at)| now.duration_since(*at) > NONCE_LIFETIME)
        {
            self.live.pop_lru();
        }
        while self
            .outbound
            .peek_lru()
            .is_some_and(|(_, sent)| now.duration_since(*sent) > TRANSACTION_TIMEOUT)
        {
            self.outbound.pop_lru();
        }
        self.peers.prune(now);
        self.probes.prune(now);
        let window = self.policy.level.window;
        for table in [&mut self.suspects, &mut self.sources] {
            while table.peek_lru().is_some_and(|(_, s)| {
                s.failures
                    .back()
                    .is_none_or(|f| now.duration_since(f.at) > window)
                    && s.registrations.values().all(|until| *until <= now)
            }) {
                table.pop_lru();
            }
        }
    }

    /// Tracked sources, for status output and tests.
    pub fn tracked_sources(&self) -> usize {
        self.suspects.len() + self.sources.len()
    }

    /// Pending requests (keys), for status output and tests.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
