//! Extension scans, caught within `enumeration_usernames` names (issue 11).
//!
//! A scanner (sipvicious' svwar and its kin) asks the PBX about one
//! username after another and learns from each answer which exist: a 401
//! for a user that exists, a 404 for one that does not. A challenge is no
//! failure, so counting failures alone let a scan learn 15 names before its
//! ban. Here every request is a *probe* of the username it names:
//!
//! - the methods are REGISTER, INVITE, OPTIONS and SUBSCRIBE; the username
//!   is the To user (the extension asked about), else the From user;
//! - a probe stays open while the PBX challenges it (401/407 to a request
//!   without proof of the round trip), refuses it (403, 404) or answers
//!   nothing; it closes when the source answers the challenge (its next
//!   request for that name echoes a nonce the PBX issued to its address),
//!   or the PBX accepts it (2xx, or a call that rings), or gives any other
//!   answer (486, 480, ...: the PBX handled it);
//! - a source is banned as `enumeration` when `enumeration_usernames`
//!   distinct names it probed are open and *ripe* within the level's window.
//!
//! # Who is judged, and how fast
//! - Not at all: allow-listed or whitelisted sources, learned peers, and a
//!   source the PBX has accepted within the window (a completed
//!   authentication, a registration, a call that rang). Their failures
//!   still count under the proven/unproven failure rules (`tracker`).
//! - *Strict* (a source that has never answered a challenge within the
//!   window and probes from fewer than [`NAT_PORTS`] source ports, as every
//!   sipvicious tool does): a probe is ripe as soon as the PBX answered it,
//!   so the ban lands at the answer to the fifth name and the sixth request
//!   finds it in the kernel. An unanswered probe is ripe after
//!   [`ANSWER_GRACE`] (a slow PBX is not the source's fault; a silent PBX
//!   tells a scanner nothing).
//! - *Patient* (a source that answers challenges, or whose probes come from
//!   [`NAT_PORTS`] or more ports: phones behind one NAT address, each with
//!   its own mapping): a challenged probe is ripe only once it has gone
//!   [`ANSWER_GRACE`] without its answer, an unanswered one after
//!   [`SILENT_GRACE`], and refusals are left to the failure rules. An
//!   office rebooting 30 phones sends 30 names before any of them answers
//!   its challenge; each does within milliseconds, and the first 2xx
//!   exempts the source.
//!
//! Residual risks, documented: a phone with five or more lines on one port,
//! booting from an address that is not (yet) a learned peer, is judged
//! strictly; a scanner that spreads its probes over ports, or answers one
//! challenge, gets [`ANSWER_GRACE`] more time (the rate rules still cut it
//! at the normal limits). Probes are unproven (a forged source address
//! makes them too): the ban goes through the tracker's unproven-ban budget,
//! and learned peers, the PBX's own users, are never judged here.
use std::{
    collections::VecDeque,
    net::IpAddr,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use lru::LruCache;

/// How long a source that answers challenges has to answer one, and how
/// long a strict source's probe may go unanswered by the PBX, before the
/// probe counts.
pub const ANSWER_GRACE: Duration = Duration::from_secs(2);
/// How long a patient source's probe may go without any answer from the
/// PBX before it counts (a SIP transaction's life, 64 x T1).
pub const SILENT_GRACE: Duration = Duration::from_secs(32);
/// Distinct source ports that make a source look like phones behind NAT.
pub const NAT_PORTS: usize = 3;
/// Names kept per source (its oldest go first).
const MAX_NAMES: usize = 64;
/// Ports remembered per source.
const MAX_PORTS: usize = 8;

/// What the PBX has answered to a probe so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// Nothing yet (or only 100 Trying).
    Nothing,
    /// 401/407: the name may exist; the source should now answer it.
    Challenged(u16),
    /// 403, 404.
    Refused(u16),
}

impl ProbeAnswer {
    /// The status for logs (0: no answer).
    pub fn status(self) -> u16 {
        match self {
            ProbeAnswer::Nothing => 0,
            ProbeAnswer::Challenged(s) | ProbeAnswer::Refused(s) => s,
        }
    }
}

/// One open probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub username: Vec<u8>,
    /// When its first request arrived.
    pub at: Instant,
    pub answer: ProbeAnswer,
}

#[derive(Debug, Default)]
struct SourceProbes {
    /// Open probes, oldest first, one per name.
    open: VecDeque<Probe>,
    ports: Vec<u16>,
    /// When the source last echoed a nonce issued to its address.
    answered_challenge: Option<Instant>,
    /// When the PBX last accepted it.
    accepted: Option<Instant>,
}

impl SourceProbes {
    fn probe_mut(&mut self, username: &[u8]) -> Option<&mut Probe> {
        self.open.iter_mut().find(|p| p.username == username)
    }

    fn close(&mut self, username: &[u8]) {
        self.open.retain(|p| p.username != username);
    }

    fn forget_old(&mut self, now: Instant, window: Duration) {
        let old = |at: Instant| now.saturating_duration_since(at) > window;
        while self.open.front().is_some_and(|p| old(p.at)) {
            self.open.pop_front();
        }
        self.answered_challenge = self.answered_challenge.filter(|at| !old(*at));
        self.accepted = self.accepted.filter(|at| !old(*at));
    }

    /// Strict: never answered a challenge, and one or two ports.
    fn is_strict(&self) -> bool {
        self.answered_challenge.is_none() && self.ports.len() < NAT_PORTS
    }

    fn is_ripe(&self, probe: &Probe, now: Instant) -> bool {
        let age = now.saturating_duration_since(probe.at);
        match (self.is_strict(), probe.answer) {
            (true, ProbeAnswer::Nothing) => age >= ANSWER_GRACE,
            (true, _) => true,
            (false, ProbeAnswer::Nothing) => age >= SILENT_GRACE,
            (false, ProbeAnswer::Challenged(_)) => age >= ANSWER_GRACE,
            (false, ProbeAnswer::Refused(_)) => false,
        }
    }
}

/// The evidence of an extension scan: the ripe probes, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub probes: Vec<Probe>,
}

/// Every source's open probes, bounded (a spoofed flood makes entries; a
/// full table forgets its least recently active source).
pub struct Probes {
    table: LruCache<IpAddr, SourceProbes>,
    window: Duration,
    limit: usize,
}

impl Probes {
    pub fn new(capacity: usize, window: Duration, limit: u32) -> Probes {
        Probes {
            table: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
            window,
            limit: limit.max(2) as usize,
        }
    }

    fn entry(&mut self, source: IpAddr) -> &mut SourceProbes {
        self.table.get_or_insert_mut(source, SourceProbes::default)
    }

    /// A request for `username` arrived from `source` (port `port`).
    /// `answers_challenge`: it echoed a nonce the PBX issued to the address.
    /// Returns whether it opened a probe the metrics count: a name not open
    /// for a source the PBX has not accepted (an accepted phone's plain
    /// re-REGISTER after its 2xx opens one, which the judge ignores, but it
    /// is ordinary traffic, not a probe to report).
    pub fn request(
        &mut self,
        now: Instant,
        source: IpAddr,
        port: u16,
        username: &[u8],
        answers_challenge: bool,
    ) -> bool {
        let state = self.entry(source);
        if answers_challenge {
            state.answered_challenge = Some(now);
            state.close(username);
            return false;
        }
        if username.is_empty() {
            return false;
        }
        if !state.ports.contains(&port) && state.ports.len() < MAX_PORTS {
            state.ports.push(port);
        }
        if state.probe_mut(username).is_some() {
            return false;
        }
        if state.open.len() >= MAX_NAMES {
            state.open.pop_front();
        }
        state.open.push_back(Probe {
            username: username.to_vec(),
            at: now,
            answer: ProbeAnswer::Nothing,
        });
        state.accepted.is_none()
    }

    /// The PBX answered `status` to a request for `username`.
    /// `proven`: that request echoed a nonce issued to the address;
    /// `accepts`: the answer accepts the source (a 2xx to REGISTER, INVITE
    /// or SUBSCRIBE, or a call that rings).
    pub fn answer(
        &mut self,
        now: Instant,
        source: IpAddr,
        username: &[u8],
        status: u16,
        proven: bool,
        accepts: bool,
    ) {
        let Some(state) = self.table.get_mut(&source) else {
            return;
        };
        match status {
            _ if accepts || (proven && (200..300).contains(&status)) => {
                state.accepted = Some(now);
                state.open.clear();
            }
            // Provisional: the final answer decides.
            100..=199 => {}
            // OPTIONS answered 200: handled, not probed.
            200..=299 => state.close(username),
            401 | 407 if !proven => {
                if let Some(probe) = state.probe_mut(username) {
                    probe.answer = ProbeAnswer::Challenged(status);
                }
            }
            403 | 404 => {
                if let Some(probe) = state.probe_mut(username) {
                    probe.answer = ProbeAnswer::Refused(status);
                }
            }
            // 486, 480, a wrong password (the failure rules'): handled.
            _ => state.close(username),
        }
    }

    /// Whether `source`'s ripe probes make a scan. `exempt`: whether it is
    /// a learned peer or whitelisted, never judged here (asked only of a
    /// source with enough ripe probes). The source's probes are forgotten
    /// with the verdict (its ban starts afresh).
    pub fn judge(
        &mut self,
        now: Instant,
        source: IpAddr,
        exempt: impl FnOnce() -> bool,
    ) -> Option<Scan> {
        let window = self.window;
        let limit = self.limit;
        let state = self.table.get_mut(&source)?;
        state.forget_old(now, window);
        if state.accepted.is_some() {
            return None;
        }
        let ripe: Vec<Probe> = state
            .open
            .iter()
            .filter(|p| state.is_ripe(p, now))
            .cloned()
            .collect();
        if ripe.len() < limit || exempt() {
            return None;
        }
        self.table.pop(&source);
        Some(Scan { probes: ripe })
    }

    /// Drops what is too old to matter, from the least recently active end.
    pub fn prune(&mut self, now: Instant) {
        let window = self.window;
        while let Some((_, state)) = self.table.peek_lru() {
            let newest = state
                .open
                .back()
                .map(|p| p.at)
                .into_iter()
                .chain(state.answered_challenge)
                .chain(state.accepted)
                .max();
            if newest.is_some_and(|at| now.saturating_duration_since(at) <= window) {
                break;
            }
            self.table.pop_lru();
        }
    }

    /// Sources with unanswered probes to look at again (their probes may
    /// have ripened with time alone), at most `max`.
    pub fn waiting(&self, max: usize) -> Vec<IpAddr> {
        self.table
            .iter()
            .filter(|(_, s)| s.accepted.is_none() && !s.open.is_empty())
            .map(|(source, _)| *source)
            .take(max)
            .collect()
    }

    /// Sources with open probes (not accepted by the PBX): what the
    /// `sipguard_sip_probing_sources` gauge shows. Walks the table.
    pub fn probing_sources(&self) -> usize {
        self.table
            .iter()
            .filter(|(_, s)| s.accepted.is_none() && !s.open.is_empty())
            .count()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn name(n: u32) -> Vec<u8> {
        n.to_string().into_bytes()
    }

    #[test]
    fn a_strict_scan_is_caught_at_the_fifth_answer() {
        let mut p = Probes::new(64, Duration::from_secs(3600), 5);
        let now = Instant::now();
        let scanner = ip("203.0.113.5");
        for n in 100..104 {
            p.request(now, scanner, 5060, &name(n), false);
            assert_eq!(p.judge(now, scanner, || false), None, "request {n}");
            p.answer(now, scanner, &name(n), 401, false, false);
            assert_eq!(p.judge(now, scanner, || false), None, "answer {n}");
        }
        p.request(now, scanner, 5060, &name(104), false);
        assert_eq!(p.judge(now, scanner, || false), None, "not yet answered");
        p.answer(now, scanner, &name(104), 404, false, false);
        let scan = p.judge(now, scanner, || false).expect("the fifth answer");
        assert_eq!(scan.probes.len(), 5);
        assert_eq!(scan.probes[4].answer, ProbeAnswer::Refused(404));
        assert!(p.is_empty(), "forgotten with the verdict");
    }

    #[test]
    fn the_same_name_again_is_one_probe() {
        let mut p = Probes::new(64, Duration::from_secs(3600), 5);
        let now = Instant::now();
        let phone = ip("198.51.100.5");
        for n in 0..50 {
            assert_eq!(p.request(now, phone, 5060, b"101", false), n == 0);
            p.answer(now, phone, b"101", 404, false, false);
            assert_eq!(p.judge(now, phone, || false), None);
        }
        assert_eq!(p.probing_sources(), 1);
        // Its answer to the challenge closes the probe.
        assert!(!p.request(now, phone, 5060, b"101", true));
        assert_eq!(p.probing_sources(), 0);
    }

    #[test]
    fn an_accepted_phone_s_requests_are_not_counted_as_probes() {
        let mut p = Probes::new(64, Duration::from_secs(3600), 5);
        let now = Instant::now();
        let phone = ip("198.51.100.7");
        assert!(
            p.request(now, phone, 5060, b"101", false),
            "before any answer"
        );
        p.answer(now, phone, b"101", 200, true, true);
        // Its next REGISTER, and a call to another name, are ordinary traffic.
        assert!(!p.request(now, phone, 5060, b"101", false));
        assert!(!p.request(now, phone, 5060, b"102", false));
        assert_eq!(p.probing_sources(), 0);
    }

    #[test]
    fn silence_counts_after_the_grace() {
        let mut p = Probes::new(64, Duration::from_secs(3600), 5);
        let now = Instant::now();
        let scanner = ip("203.0.113.6");
        for n in 0..5 {
            p.request(now, scanner, 40000, &name(n), false);
        }
        assert_eq!(p.judge(now, scanner, || false), None, "the PBX may be slow");
        let later = now + ANSWER_GRACE;
        assert_eq!(p.waiting(10), vec![scanner]);
        assert!(p.judge(later, scanner, || false).is_some());
    }

    #[test]
    fn phones_behind_nat_answer_their_challenges() {
        let mut p = Probes::new(64, Duration::from_secs(3600), 5);
        let now = Instant::now();
        let office = ip("198.51.100.20");
        // 30 phones boot at once: 30 names from 30 ports, all challenged
        // before the first answers.
        for n in 0..30 {
            p.request(now, office, 20000 + n as u16, &name(n), false);
            p.answer(now, office, &name(n), 401, false, false);
            assert_eq!(p.judge(now, office, || false), None, "phone {n}");
        }
        // They answer within the grace; the PBX accepts the first.
        let soon = now + Duration::from_millis(300);
        for n in 0..30 {
            p.request(soon, office, 20000 + n as u16, &name(n), true);
            assert_eq!(p.judge(soon, office, || false), None);
        }
        p.answer(soon, office, &name(0), 200, true, true);
        assert_eq!(
            p.judge(now + Duration::from_secs(60), office, || false),
            None
        );
    }

    #[test]
    fn one_port_and_one_answered_challenge_is_patient() {
        let mut p = Probes::new(64, Duration::from_secs(3600), 5);
        let now = Instant::now();
        let source = ip("198.51.100.21");
        p.request(now, source, 5060, b"alice", false);
        p.answer(now, source, b"alice", 401, false, false);
        p.request(now, source, 5060, b"alice", true);
        // A wrong password is the failure rules' business.
        for n in 0..6 {
            p.request(now, source, 5060, &name(n), false);
            p.answer(now, source, &name(n), 401, false, false);
            assert_eq!(p.judge(now, source, || false), None);
        }
        let later = now + ANSWER_GRACE;
        assert!(
            p.judge(later, source, || false).is_some(),
            "challenges never answered ripen after the grace"
        );
    }

    #[test]
    fn spread_over_ports_refusals_are_left_to_the_failure_rules() {
        let mut p = Probes::new(64, Duration::from_secs(3600), 5);
        let now = Instant::now();
        let source = ip("198.51.100.22");
        for n in 0..12 {
            p.request(now, source, 30000 + n as u16, &name(n), false);
            p.answer(now, source, &name(n), 404, false, false);
        }
        assert_eq!(p.judge(now + SILENT_GRACE, source, || false), None);
    }

    #[test]
    fn exempt_and_accepted_sources_are_not_judged() {
        let mut p = Probes::new(64, Duration::from_secs(3600), 5);
        let now = Instant::now();
        let (peer, trunk) = (ip("198.51.100.23"), ip("198.51.100.24"));
        for n in 0..10 {
            p.request(now, peer, 5060, &name(n), false);
            p.answer(now, peer, &name(n), 404, false, false);
        }
        assert_eq!(p.judge(now, peer, || true), None);
        // An IP trunk: its first call rang, so its calls to numbers that
        // do not exist are the failure rules' business.
        p.request(now, trunk, 5060, b"4420", false);
        p.answer(now, trunk, b"4420", 180, false, true);
        for n in 0..10 {
            p.request(now, trunk, 5060, &name(n), false);
            p.answer(now, trunk, &name(n), 404, false, false);
        }
        assert_eq!(p.judge(now, trunk, || false), None);
    }

    #[test]
    fn probes_outside_the_window_do_not_count() {
        let mut p = Probes::new(64, Duration::from_secs(600), 5);
        let start = Instant::now();
        let source = ip("203.0.113.7");
        for n in 0..4 {
            p.request(start, source, 5060, &name(n), false);
            p.answer(start, source, &name(n), 404, false, false);
        }
        let later = start + Duration::from_secs(601);
        p.request(later, source, 5060, &name(9), false);
        p.answer(later, source, &name(9), 404, false, false);
        assert_eq!(p.judge(later, source, || false), None);
        p.prune(later + Duration::from_secs(601));
        assert!(p.is_empty());
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut p = Probes::new(128, Duration::from_secs(600), 5);
        let now = Instant::now();
        for i in 0..10_000u32 {
            p.request(now, IpAddr::from(i.to_be_bytes()), 5060, b"u", false);
        }
        assert_eq!(p.len(), 128);
        let source = ip("203.0.113.8");
        for n in 0..1000 {
            p.request(now, source, 5060, &name(n), false);
        }
        assert_eq!(p.table.peek(&source).unwrap().open.len(), MAX_NAMES);
    }
}
