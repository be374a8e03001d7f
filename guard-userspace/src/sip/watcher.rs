//! The SIP watcher: reads the signalling the kernel captured, parses it, feeds
//! the authentication-failure tracker, and has the runtime (the one owner of
//! bans) put the bans it decides into the XDP ban map, where they take effect
//! on the source's next packet.
use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use guard_common::{Reason, SipCaptureHeader, SourceKey, CAPTURE_INBOUND, CAPTURE_OUTBOUND};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::debug;

use crate::{
    metrics::ControllerCounters,
    policy::sip_rules::{NamedRequest, RuleView},
    runtime::{bans, Runtime},
    sip::dedup::{Dedup, Endpoints, Origin},
    sip::hep::Transport,
    sip::hep_input::{HepSip, PbxAddresses},
    sip::parser::{self, Message, ParseError},
    sip::tracker::{BanDecision, Failure, Tracker},
};
use guard_common::BanReason;

/// Why the watcher stopped.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch the SIP capture ring: {0}")]
    Register(#[source] std::io::Error),
    #[error("reading the SIP capture ring: {0}")]
    Read(#[source] std::io::Error),
}

/// Records read before the watcher lets other tasks run.
const RECORDS_PER_TURN: usize = 4096;

/// How often the tracker forgets what is too old to matter.
const PRUNE_INTERVAL: Duration = Duration::from_secs(30);

/// What the watcher has seen.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchStats {
    pub captures: u64,
    pub hep: u64,
    pub messages: u64,
    pub malformed: u64,
    /// HEP copies of messages also captured on the wire (or the reverse).
    pub duplicates: u64,
    /// HEP messages the PBX sent or got as a client.
    pub pbx_as_client: u64,
    /// Requests the kernel dropped for an extension or dial rule.
    pub denied: u64,
}

/// A request the kernel dropped for a SIP rule, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedRequest {
    pub source: IpAddr,
    /// `Reason::ExtensionDenied` or `Reason::DialDenied` as u8.
    pub reason: u8,
    pub rule: u8,
    pub method: String,
    /// The user it named (Authorization username, else To for REGISTER,
    /// From otherwise).
    pub user: String,
    /// The number an INVITE dialled.
    pub dialled: Option<String>,
}

/// Denied requests logged per second at most; the rest are counted.
const DENIED_LOGS_PER_SECOND: u32 = 20;

/// The HEP side of the watch: its queue and the PBX's addresses.
pub struct HepFeed {
    pub queue: mpsc::Receiver<HepSip>,
    pub pbx: PbxAddresses,
}

/// The tracker and what feeds it: wire captures, and HEP when configured
/// (then a message seen on both is counted once).
pub struct Watch {
    pub tracker: Tracker,
    pub stats: WatchStats,
    counters: ControllerCounters,
    /// Some with HEP input.
    dedup: Option<Dedup>,
    pbx: PbxAddresses,
    /// Denied requests to log (taken by the watch loop).
    pub denied: Vec<DeniedRequest>,
    /// The SIP rules in force, which the controller applies to what the
    /// kernel could not read (set by the watch loop before each batch).
    pub rules: Option<Arc<RuleView>>,
    /// Start of the current second of denied-request logs, lines in it,
    /// and lines left out since the last one logged.
    denied_logs: (Option<Instant>, u32, u64),
}

/// A datagram (or one HEP message) read as far as it goes: a header section
/// cut short is still read, and the tracker knows it is incomplete.
fn parse_one(data: &[u8]) -> Option<Result<Message<'_>, ParseError>> {
    let parsed = match parser::parse(data, true) {
        Err(ParseError::Truncated) => parser::parse(data, false),
        parsed => parsed,
    };
    match parsed {
        Err(ParseError::Empty) => None,
        parsed => Some(parsed.map(|(message, _)| message)),
    }
}

impl Watch {
    pub fn new(tracker: Tracker, counters: ControllerCounters, hep: Option<PbxAddresses>) -> Watch {
        Watch {
            tracker,
            stats: WatchStats::default(),
            counters,
            dedup: hep.is_some().then(Dedup::default),
            pbx: hep.unwrap_or_default(),
            denied: Vec::new(),
            denied_logs: (None, 0, 0),
            rules: None,
        }
    }

    /// The SIP rules applied to a request the kernel passed or never saw:
    /// one it could read was judged there already (and passed, so it
    /// passes here too); one it could not (split across TCP segments,
    /// headers past 2 KiB, TLS through HEP) reached the PBX, and a rule
    /// that denies it bans its source at once (issue 12 item 5).
    fn judge_rules(
        &mut self,
        peer: IpAddr,
        message: &Message<'_>,
        now: Instant,
    ) -> Option<BanDecision> {
        let view = self.rules.as_ref().filter(|view| !view.is_empty())?;
        // A request, or the PBX's answer to one (which names its To and
        // From, and the number an INVITE called in its To): the answer is
        // what shows a request the kernel could not read, cut at 2 KiB or
        // split across TCP segments, reached the PBX.
        let (method, dialled) = match message.start {
            parser::StartLine::Request { method, uri } => (method, parser::uri_user(uri)),
            parser::StartLine::Response { .. } => {
                let method = message.cseq?.method;
                (method, message.to.and_then(parser::uri_user))
            }
        };
        if self.tracker.is_whitelisted(peer) {
            return None;
        }
        let to = message.to.and_then(parser::uri_user);
        let from = message.from.and_then(parser::uri_user);
        let auth = message
            .credentials
            .iter()
            .find_map(|c| c.username.as_deref());
        let request = NamedRequest {
            method,
            users: [to.as_deref(), from.as_deref(), auth],
            dialled: dialled.as_deref(),
        };
        let is_peer = self.tracker.peers.is_learned(peer, now);
        let (reason, rule) = view.judge(peer, &request, is_peer)?;
        let rules = view.rules();
        let (reason, duration, what) = if reason == Reason::DialDenied {
            let ban = rules
                .dial
                .get(rule as usize)
                .map(|r| r.ban)
                .filter(|ban| !ban.is_zero())
                .unwrap_or(self.tracker.policy().level.ban);
            (BanReason::DialDenied, ban, rules.dial_name(rule))
        } else {
            let ban = self.tracker.policy().level.ban;
            (BanReason::ExtensionDenied, ban, rules.extension_name(rule))
        };
        let username = auth
            .map(<[u8]>::to_vec)
            .or_else(|| from.as_deref().map(<[u8]>::to_vec))
            .unwrap_or_default();
        tracing::warn!(
            target: "sipguard::sip_rules",
            "{} from {peer} (user {}) reached the PBX unjudged by the kernel: {} by rule {what}",
            parser::display(method),
            parser::display(&username),
            reason.name()
        );
        self.stats.denied += 1;
        Some(BanDecision {
            source: peer,
            reason,
            duration,
            evidence: vec![Failure {
                at: now,
                username,
                status: 403,
                proven: false,
            }],
            failures_in_window: 1,
            proven: false,
            offence: 1,
        })
    }

    /// Lines of denied requests left out of the log since the last one.
    pub fn take_unlogged_denied(&mut self) -> u64 {
        std::mem::take(&mut self.denied_logs.2)
    }

    /// A request the kernel dropped for a SIP rule: noted for the log
    /// (with the number dialled), and for an extension rule a failure of
    /// its source.
    fn denied_request(
        &mut self,
        header: &SipCaptureHeader,
        peer: IpAddr,
        message: &Message<'_>,
        now: Instant,
        bans: &mut Vec<BanDecision>,
    ) {
        self.stats.denied += 1;
        if header.denied == Reason::ExtensionDenied as u8 {
            bans.extend(self.tracker.on_kernel_denied(now, peer, message));
        }
        let (start, lines, left_out) = &mut self.denied_logs;
        if start.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            *start = Some(now);
            *lines = 0;
        }
        if *lines >= DENIED_LOGS_PER_SECOND {
            *left_out += 1;
            return;
        }
        *lines += 1;
        let method = message.method().map(parser::display).unwrap_or_default();
        let user = message
            .credentials
            .iter()
            .find_map(|c| c.username.as_deref())
            .map(parser::display)
            .or_else(|| {
                let header = if message.is_method("REGISTER") {
                    message.to
                } else {
                    message.from
                };
                header
                    .and_then(parser::uri_user)
                    .map(|u| parser::display(&u))
            })
            .unwrap_or_else(|| "?".to_string());
        let dialled = match &message.start {
            parser::StartLine::Request { uri, .. } => {
                parser::uri_user(uri).map(|u| parser::display(&u))
            }
            parser::StartLine::Response { .. } => None,
        };
        self.denied.push(DeniedRequest {
            source: peer,
            reason: header.denied,
            rule: header.denied_rule,
            method,
            user,
            dialled,
        });
    }

    /// One ring buffer record: the messages in it, fed to the tracker.
    /// Returns the bans they cause.
    pub fn capture(&mut self, record: &[u8], now: Instant) -> Vec<BanDecision> {
        self.stats.captures += 1;
        let header_len = std::mem::size_of::<SipCaptureHeader>();
        if record.len() < header_len {
            self.stats.malformed += 1;
            return Vec::new();
        }
        // SAFETY: length checked; plain data; the ring gives no alignment promise.
        let header: SipCaptureHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
        let end = (header_len + header.captured as usize).min(record.len());
        let data = &record[header_len..end];
        let complete = header.captured == header.payload_len;
        let udp = header.transport == guard_common::L4Proto::Udp as u8;
        let messages: Vec<Result<Message<'_>, ParseError>> = if udp {
            parse_one(data).into_iter().collect()
        } else {
            parser::parse_stream(data, complete)
        };
        let inbound = match header.direction {
            CAPTURE_INBOUND => true,
            CAPTURE_OUTBOUND => false,
            _ => return Vec::new(),
        };
        let endpoints = Endpoints {
            peer: bans::source_ip(&SourceKey { addr: header.peer }),
            peer_port: header.peer_port,
            local_port: header.local_port,
            ip_proto: if udp { 17 } else { 6 },
            inbound,
        };
        let mut bans = Vec::new();
        if header.denied != 0 {
            // Dropped in the kernel: the PBX never answers it.
            for message in messages.into_iter().flatten() {
                self.denied_request(&header, endpoints.peer, &message, now, &mut bans);
            }
            return bans;
        }
        for message in messages {
            self.message(Origin::Wire, &endpoints, message, now, &mut bans);
        }
        bans
    }

    /// One SIP message a PBX mirrored over HEP. The requester is the
    /// request's source and the answer's destination; the PBX's own
    /// requests (as a client) and the answers to them are not judged.
    pub fn hep(&mut self, sip: &HepSip, now: Instant) -> Vec<BanDecision> {
        self.stats.hep += 1;
        let mut bans = Vec::new();
        let Some(message) = parse_one(&sip.payload) else {
            return bans;
        };
        let (peer, local, inbound) = match &message {
            Ok(m) if m.status().is_some() => (sip.dst, sip.src, false),
            _ => (sip.src, sip.dst, true),
        };
        if self.pbx.contains(peer.ip()) {
            self.stats.pbx_as_client += 1;
            return bans;
        }
        let via = message.as_ref().ok().and_then(|m| m.via.first().copied());
        let endpoints = Endpoints {
            peer: peer.ip(),
            peer_port: peer.port(),
            local_port: local.port(),
            ip_proto: Transport::of(sip.ip_proto, via).ip_proto(),
            inbound,
        };
        self.message(Origin::Hep, &endpoints, message, now, &mut bans);
        bans
    }

    /// Looks the host's addresses up again and forgets what is too old.
    /// Returns the bans of sources whose unanswered probes ripened since
    /// their last request.
    pub fn prune(&mut self, now: Instant) -> Vec<BanDecision> {
        let bans = self.tracker.judge_waiting(now);
        self.tracker.prune(now);
        let probing = self.tracker.probes.probing_sources();
        self.counters
            .sip_probing_sources
            .set(i64::try_from(probing).unwrap_or(i64::MAX));
        if self.dedup.is_some() {
            self.pbx.refresh();
        }
        bans
    }

    fn message(
        &mut self,
        origin: Origin,
        endpoints: &Endpoints,
        message: Result<Message<'_>, ParseError>,
        now: Instant,
        bans: &mut Vec<BanDecision>,
    ) {
        let peer = endpoints.peer;
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                self.stats.malformed += 1;
                self.counters.sip_malformed.inc();
                debug!("ignored a malformed SIP message from {peer} ({origin:?}): {e}");
                return;
            }
        };
        if let Some(dedup) = &mut self.dedup {
            if dedup.is_twin(origin, endpoints, &message, now) {
                self.stats.duplicates += 1;
                self.counters.sip_duplicates.inc();
                return;
            }
        }
        self.stats.messages += 1;
        // Requests to the PBX, and its answers (the requester is their
        // destination); not what the PBX asks as a client.
        if endpoints.inbound == message.method().is_some() {
            bans.extend(self.judge_rules(peer, &message, now));
        }
        match (endpoints.inbound, message.method(), message.status()) {
            (true, Some(method), _) => {
                self.counters
                    .sip_request(std::str::from_utf8(method).unwrap_or("other"));
                let probes_before = self.tracker.stats.probes;
                bans.extend(
                    self.tracker
                        .on_request_from(now, peer, endpoints.peer_port, &message),
                );
                self.counters
                    .sip_probes
                    .inc_by(self.tracker.stats.probes - probes_before);
            }
            (false, None, Some(status)) => {
                self.counters.sip_response(status);
                let failures_before = self.tracker.stats.failures;
                bans.extend(self.tracker.on_response(now, peer, &message));
                if self.tracker.stats.failures > failures_before {
                    self.counters.auth_failure(status);
                }
            }
            // The PBX acting as a client: its REGISTERs to a provider, and
            // the provider's answers, make the provider a peer.
            (false, Some(_), _) => self.tracker.on_pbx_request(now, peer, &message),
            (true, None, Some(_)) => self.tracker.on_answer_to_pbx(now, peer, &message),
            _ => {}
        }
    }
}

/// The next HEP message, or never when there is no HEP input.
async fn next_hep(hep: &mut Option<HepFeed>) -> Option<HepSip> {
    match hep {
        Some(feed) => feed.queue.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs until the ring buffer fails.
pub async fn watch(
    ring: RingBuf<MapData>,
    tracker: Tracker,
    runtime: Arc<Runtime>,
    mut hep: Option<HepFeed>,
) -> Result<(), WatchError> {
    let counters = runtime.counters().clone();
    // SAFETY: the ring buffer owns its fd, which stays open while the AsyncFd lives.
    let mut ring =
        unsafe { AsyncFd::register(ring) }.map_err(|e| WatchError::Register(e.into()))?;
    let window = tracker.policy().level.window;
    let pbx = hep.as_mut().map(|feed| std::mem::take(&mut feed.pbx));
    let mut watch = Watch::new(tracker, counters, pbx);
    // Peers restored from the state directory go to the kernel first.
    runtime
        .apply_peers(&watch.tracker.peers.take_changes(Instant::now()))
        .await;
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut ready = ready.map_err(WatchError::Read)?;
                watch.rules = Some(runtime.rule_view().await);
                let mut decisions = Vec::new();
                let mut drained = false;
                for _ in 0..RECORDS_PER_TURN {
                    let Some(record) = ready.get_inner_mut().next() else {
                        drained = true;
                        break;
                    };
                    decisions.extend(watch.capture(&record, Instant::now()));
                }
                if drained {
                    ready.clear_ready();
                }
                let left_out = watch.take_unlogged_denied();
                runtime.log_denied(std::mem::take(&mut watch.denied), left_out).await;
                runtime.sip_bans(&decisions, window).await;
                runtime.apply_peers(&watch.tracker.peers.take_changes(Instant::now())).await;
                if !drained {
                    // A flood keeps the ring full: let the control socket
                    // and the other tasks have their turn.
                    tokio::task::yield_now().await;
                }
            }
            Some(first) = next_hep(&mut hep) => {
                watch.rules = Some(runtime.rule_view().await);
                let mut decisions = watch.hep(&first, Instant::now());
                if let Some(feed) = &mut hep {
                    for _ in 1..RECORDS_PER_TURN {
                        let Ok(sip) = feed.queue.try_recv() else { break };
                        decisions.extend(watch.hep(&sip, Instant::now()));
                    }
                }
                runtime.sip_bans(&decisions, window).await;
                runtime.apply_peers(&watch.tracker.peers.take_changes(Instant::now())).await;
            }
            _ = prune.tick() => {
                let decisions = watch.prune(Instant::now());
                runtime.sip_bans(&decisions, window).await;
                runtime.apply_peers(&watch.tracker.peers.take_changes(Instant::now())).await;
                // At most a prune interval of peer changes is lost to a SIGKILL.
                runtime.save_peers(false);
                let (stats, tracker) = (&watch.stats, &watch.tracker);
                debug!(
                    "SIP watch: {} captures, {} HEP, {} messages, {} duplicates, {} malformed, \
                     {} failures, {} sources tracked, {} pending, evicted {} pending / {} nonces / {} sources",
                    stats.captures, stats.hep, stats.messages, stats.duplicates, stats.malformed,
                    tracker.stats.failures, tracker.tracked_sources(), tracker.pending_requests(),
                    tracker.stats.evicted_pending, tracker.stats.evicted_nonces,
                    tracker.stats.evicted_sources
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::sip::tracker::{AuthPolicy, LevelName};
    use guard_common::{L4Proto, SourceKey};

    fn record(
        direction: u8,
        transport: L4Proto,
        peer: [u8; 4],
        payload: &[u8],
        payload_len: usize,
    ) -> Vec<u8> {
        let header = SipCaptureHeader {
            peer: SourceKey::from_ipv4(peer).addr,
            peer_port: 5062,
            local_port: 5060,
            direction,
            transport: transport as u8,
            denied: 0,
            denied_rule: 0,
            captured: payload.len() as u32,
            payload_len: payload_len as u32,
        };
        // SAFETY: plain data.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&header as *const SipCaptureHeader).cast::<u8>(),
                std::mem::size_of::<SipCaptureHeader>(),
            )
        };
        let mut out = bytes.to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn tracker() -> Tracker {
        Tracker::new(AuthPolicy {
            level: LevelName::Paranoid.level(),
            unproven_multiplier: 3,
            enumeration_usernames: 5,
            whitelist: Vec::new(),
            escalation_factor: 1,
            max_ban: Duration::from_secs(30 * 86_400),
            ipv6_prefix: 64,
            unproven_ban_budget: 32_768,
            peer_idle: Duration::from_secs(600),
            max_peers: 1024,
        })
    }

    fn register(cseq: u32, nonce: Option<&str>) -> String {
        let auth = nonce.map_or(String::new(), |n| {
            format!("Authorization: Digest username=\"7\", nonce=\"{n}\"\r\n")
        });
        format!("REGISTER sip:pbx SIP/2.0\r\nTo: <sip:7@pbx>\r\nFrom: <sip:7@pbx>;tag=a\r\nCall-ID: w{cseq}\r\nCSeq: {cseq} REGISTER\r\n{auth}Content-Length: 0\r\n\r\n")
    }

    fn answer(code: u16, cseq: u32, nonce: &str) -> String {
        format!("SIP/2.0 {code} No\r\nCall-ID: w{cseq}\r\nCSeq: {cseq} REGISTER\r\nWWW-Authenticate: Digest realm=\"r\", nonce=\"{nonce}\"\r\nContent-Length: 0\r\n\r\n")
    }

    #[test]
    fn captured_exchanges_lead_to_a_ban() {
        let mut w = Watch::new(tracker(), ControllerCounters::default(), None);
        let now = Instant::now();
        let peer = [198, 51, 100, 7];
        let mut bans = Vec::new();
        let mut feed = |direction: u8, text: &str| {
            let capture = record(direction, L4Proto::Udp, peer, text.as_bytes(), text.len());
            bans.extend(w.capture(&capture, now));
        };
        for cseq in 1..=3 {
            feed(CAPTURE_INBOUND, &register(cseq * 10, None));
            feed(
                CAPTURE_OUTBOUND,
                &answer(401, cseq * 10, &format!("n{cseq}")),
            );
            feed(
                CAPTURE_INBOUND,
                &register(cseq * 10 + 1, Some(&format!("n{cseq}"))),
            );
            feed(CAPTURE_OUTBOUND, &answer(401, cseq * 10 + 1, "again"));
        }
        assert_eq!(bans.len(), 1, "paranoid: 3 proven failures");
        assert_eq!(bans[0].source, IpAddr::V4(Ipv4Addr::from(peer)));
        assert!(bans[0].proven);
        assert_eq!(w.stats.messages, 12);
        let line =
            crate::sip::ban::describe_ban(&bans[0], "198.51.100.7", Duration::from_secs(86_400));
        assert!(line.starts_with("banned 198.51.100.7 for 30days: auth-failure, 3 failures in 1day (proven), last user:status 7:401 7:401 7:401"), "{line}");
    }

    /// Probes reach the metrics: each username a source asks about once,
    /// and the sources with open probes as of the last prune.
    #[test]
    fn probes_are_counted_for_the_metrics() {
        let counters = ControllerCounters::default();
        let mut w = Watch::new(tracker(), counters.clone(), None);
        let now = Instant::now();
        let peer = [198, 51, 100, 8];
        for (cseq, user) in [(1, "100"), (2, "101"), (3, "101"), (4, "102")] {
            let text = register(cseq, None).replace("sip:7@", &format!("sip:{user}@"));
            let capture = record(
                CAPTURE_INBOUND,
                L4Proto::Udp,
                peer,
                text.as_bytes(),
                text.len(),
            );
            assert!(w.capture(&capture, now).is_empty());
        }
        assert_eq!(counters.sip_probes.get(), 3, "101 twice is one probe");
        assert_eq!(counters.sip_probing_sources.get(), 0, "not pruned yet");
        assert!(w.prune(now).is_empty());
        assert_eq!(counters.sip_probing_sources.get(), 1);
    }

    /// A request the kernel denied for an extension rule is an unproven
    /// failure of its source (paranoid: 3 x 3 ban), never a pending
    /// request; a dial rule's denial is logged only. Both are noted with
    /// the user and the number.
    #[test]
    fn kernel_denials_count_as_failures_and_are_noted() {
        let mut w = Watch::new(tracker(), ControllerCounters::default(), None);
        let now = Instant::now();
        let peer = [198, 51, 100, 9];
        let denied = |reason: Reason, rule: u8, text: &str| {
            let mut bytes = record(
                CAPTURE_INBOUND,
                L4Proto::Udp,
                peer,
                text.as_bytes(),
                text.len(),
            );
            bytes[std::mem::offset_of!(SipCaptureHeader, denied)] = reason as u8;
            bytes[std::mem::offset_of!(SipCaptureHeader, denied_rule)] = rule;
            bytes
        };
        let invite = "INVITE sip:0044201@pbx SIP/2.0\r\nTo: <sip:0044201@pbx>\r\n\
From: <sip:1001@pbx>;tag=a\r\nCall-ID: d1\r\nCSeq: 1 INVITE\r\n\r\n";
        assert!(w
            .capture(&denied(Reason::DialDenied, 1, invite), now)
            .is_empty());
        assert_eq!(w.tracker.stats.failures, 0, "a dial denial is no failure");
        let mut bans = Vec::new();
        for cseq in 1..=9 {
            let text = register(cseq, None).replace("sip:7@", "sip:6010@");
            bans.extend(w.capture(&denied(Reason::ExtensionDenied, 0, &text), now));
        }
        assert_eq!(w.tracker.stats.failures, 9);
        assert_eq!(w.tracker.pending_requests(), 0);
        assert_eq!(bans.len(), 1, "paranoid: 3 failures x 3 when unproven");
        assert!(!bans[0].proven);
        assert_eq!(w.stats.denied, 10);
        assert_eq!(w.denied.len(), 10);
        assert_eq!(w.denied[0].dialled.as_deref(), Some("0044201"));
        assert_eq!(w.denied[0].reason, Reason::DialDenied as u8);
        assert_eq!(w.denied[0].rule, 1);
        assert_eq!(w.denied[1].user, "6010");
        assert_eq!(w.stats.messages, 0, "never fed as requests");
    }

    /// What the kernel could not read (here: a TCP segment whose request
    /// goes on in the next one) is judged by the same rules, and a denial
    /// bans on the first offence; allow-listed and whitelisted sources,
    /// permitted sources and other users are not.
    #[test]
    fn unread_requests_are_judged_by_the_sip_rules_and_ban_at_once() {
        let config = crate::policy::config::Config::parse(
            r#"
[[allow]]
cidr = "10.1.0.0/16"
services = ["sip"]
[[extension_rules]]
users = ["6010"]
permit = ["172.16.5.0/24"]
[[dial_rules]]
name = "international"
prefixes = ["00"]
permit = ["172.16.5.0/24"]
ban = "2h"
"#,
            "t.toml",
        )
        .expect("valid");
        let compiled = crate::policy::compile::CompiledPolicy::compile(&config);
        let view = Arc::new(RuleView::new(&compiled, "sip"));
        let mut w = Watch::new(tracker(), ControllerCounters::default(), None);
        w.rules = Some(view);
        let now = Instant::now();
        let cut = |text: &str| text.as_bytes()[..text.len() - 2].to_vec();
        let mut feed = |peer: [u8; 4], text: &str| {
            let data = cut(text);
            w.capture(
                &record(CAPTURE_INBOUND, L4Proto::Tcp, peer, &data, text.len() + 100),
                now,
            )
        };
        let restricted = register(1, None).replace("sip:7@", "sip:6010@");
        let bans = feed([198, 51, 100, 20], &restricted);
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].reason, BanReason::ExtensionDenied);
        assert_eq!(
            bans[0].duration,
            Duration::from_secs(30 * 86_400),
            "paranoid level ban"
        );
        assert!(feed([172, 16, 5, 1], &restricted).is_empty(), "permitted");
        assert!(feed([10, 1, 2, 3], &restricted).is_empty(), "allow-listed");
        assert!(
            feed([198, 51, 100, 21], &register(2, None)).is_empty(),
            "another user"
        );
        let invite = "INVITE sip:0044201@pbx SIP/2.0\r\nTo: <sip:0044201@pbx>\r\n\
From: <sip:1001@pbx>;tag=a\r\nCall-ID: i1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let bans = feed([198, 51, 100, 22], invite);
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].reason, BanReason::DialDenied);
        assert_eq!(
            bans[0].duration,
            Duration::from_secs(7200),
            "the rule's ban"
        );
        let local = invite.replace("0044201", "1002");
        assert!(feed([198, 51, 100, 23], &local).is_empty());
        // The PBX's answer to a REGISTER the kernel never read whole (its
        // request cut before To): the answer's To names the user.
        let answer = "SIP/2.0 401 Unauthorized\r\nTo: <sip:6010@pbx>\r\n\
From: <sip:6010@pbx>;tag=a\r\nCall-ID: r9\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
        let bans = w.capture(
            &record(
                CAPTURE_OUTBOUND,
                L4Proto::Udp,
                [198, 51, 100, 24],
                answer.as_bytes(),
                answer.len(),
            ),
            now,
        );
        assert!(
            bans.iter().any(|b| b.reason == BanReason::ExtensionDenied),
            "{bans:?}"
        );
    }

    #[test]
    fn tcp_records_may_hold_several_messages_and_a_cut_tail() {
        let mut w = Watch::new(tracker(), ControllerCounters::default(), None);
        let mut stream = register(1, None).into_bytes();
        stream.extend_from_slice(register(2, None).as_bytes());
        let cut = &stream[..stream.len() - 10];
        w.capture(
            &record(
                CAPTURE_INBOUND,
                L4Proto::Tcp,
                [198, 51, 100, 8],
                cut,
                stream.len(),
            ),
            Instant::now(),
        );
        assert_eq!(
            w.stats.messages, 2,
            "the cut second message still has its headers"
        );
        assert_eq!(w.stats.malformed, 0);
    }

    #[test]
    fn garbage_is_counted_and_ignored() {
        let mut w = Watch::new(tracker(), ControllerCounters::default(), None);
        let now = Instant::now();
        assert!(w.capture(&[1, 2, 3], now).is_empty());
        let junk = b"\x00\x01garbage\r\n\r\n";
        assert!(w
            .capture(
                &record(
                    CAPTURE_INBOUND,
                    L4Proto::Udp,
                    [1, 2, 3, 4],
                    junk,
                    junk.len()
                ),
                now
            )
            .is_empty());
        // A record claiming more captured bytes than it holds is clipped, not trusted.
        let mut lying = record(CAPTURE_INBOUND, L4Proto::Udp, [1, 2, 3, 4], b"REGISTER", 8);
        let captured = std::mem::offset_of!(SipCaptureHeader, captured);
        lying[captured..captured + 4].copy_from_slice(&5000u32.to_ne_bytes());
        w.capture(&lying, now);
        assert_eq!(w.stats.malformed, 3);
        assert_eq!(w.tracker.stats.failures, 0);
    }

    fn hep_watch() -> Watch {
        Watch::new(
            tracker(),
            ControllerCounters::default(),
            Some(PbxAddresses::new(&["10.0.0.1".parse().unwrap()])),
        )
    }

    /// A message Kamailio mirrors: `inbound` from the phone to the PBX's
    /// TLS port, else back.
    fn hep_sip(inbound: bool, text: &str) -> HepSip {
        let (phone, pbx) = (
            "198.51.100.9:40000".parse().unwrap(),
            "10.0.0.1:5061".parse().unwrap(),
        );
        let (src, dst) = if inbound { (phone, pbx) } else { (pbx, phone) };
        HepSip {
            src,
            dst,
            ip_proto: 22,
            payload: text.as_bytes().to_vec(),
        }
    }

    /// Three rounds of challenge and wrong guess.
    fn guesses() -> Vec<(bool, String)> {
        let mut out = Vec::new();
        for cseq in 1..=3 {
            out.push((true, register(cseq * 10, None)));
            out.push((false, answer(401, cseq * 10, &format!("n{cseq}"))));
            out.push((true, register(cseq * 10 + 1, Some(&format!("n{cseq}")))));
            out.push((false, answer(401, cseq * 10 + 1, "again")));
        }
        out
    }

    #[test]
    fn hep_exchanges_lead_to_a_ban_of_the_source() {
        let mut w = hep_watch();
        let now = Instant::now();
        let mut bans = Vec::new();
        for (inbound, text) in guesses() {
            bans.extend(w.hep(&hep_sip(inbound, &text), now));
        }
        assert_eq!(bans.len(), 1, "paranoid: 3 proven failures over TLS");
        assert_eq!(bans[0].source.to_string(), "198.51.100.9");
        assert!(bans[0].proven);
        assert_eq!(
            (w.stats.hep, w.stats.messages, w.stats.duplicates),
            (12, 12, 0)
        );
    }

    #[test]
    fn messages_on_the_wire_and_over_hep_count_once() {
        let mut w = hep_watch();
        let now = Instant::now();
        let mut bans = Vec::new();
        let peer = [198, 51, 100, 9];
        for (inbound, text) in guesses().into_iter().take(8) {
            let direction = if inbound {
                CAPTURE_INBOUND
            } else {
                CAPTURE_OUTBOUND
            };
            let mut capture = record(direction, L4Proto::Udp, peer, text.as_bytes(), text.len());
            let port = std::mem::offset_of!(SipCaptureHeader, peer_port);
            capture[port..port + 2].copy_from_slice(&40000u16.to_ne_bytes());
            bans.extend(w.capture(&capture, now));
            let mut mirrored = hep_sip(inbound, &text);
            mirrored.ip_proto = 17;
            mirrored.dst.set_port(5060);
            mirrored.src.set_port(if inbound { 40000 } else { 5060 });
            if !inbound {
                mirrored.dst.set_port(40000);
            }
            bans.extend(w.hep(&mirrored, now));
        }
        assert!(
            bans.is_empty(),
            "two guesses, each seen twice, are two failures: {bans:?}"
        );
        assert_eq!(w.tracker.stats.failures, 2);
        assert_eq!((w.stats.messages, w.stats.duplicates), (8, 8));
    }

    #[test]
    fn the_pbx_as_a_client_is_not_judged() {
        let mut w = hep_watch();
        let now = Instant::now();
        // The PBX registers to a trunk with a wrong password, three times.
        let trunk = "203.0.113.5:5060".parse().unwrap();
        let pbx = "10.0.0.1:5060".parse().unwrap();
        let mut bans = Vec::new();
        for (to_trunk, text) in guesses() {
            let (src, dst) = if to_trunk { (pbx, trunk) } else { (trunk, pbx) };
            let sip = HepSip {
                src,
                dst,
                ip_proto: 17,
                payload: text.into_bytes(),
            };
            bans.extend(w.hep(&sip, now));
        }
        assert!(bans.is_empty());
        assert_eq!(w.stats.pbx_as_client, 12);
        assert_eq!(w.tracker.stats.failures, 0);
    }
}
