//! The SIP watcher: reads the signalling the kernel captured, parses it, feeds
//! the authentication-failure tracker, and has the runtime (the one owner of
//! bans) put the bans it decides into the XDP ban map, where they take effect
//! on the source's next packet.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};
use aya::maps::{MapData, RingBuf};
use guard_common::{SipCaptureHeader, SourceKey, CAPTURE_INBOUND, CAPTURE_OUTBOUND};
use tokio::io::unix::AsyncFd;
use tracing::debug;

use crate::{
    metrics::ControllerCounters,
    runtime::{bans, Runtime},
    sip::parser::{self, Message, ParseError},
    sip::tracker::{BanDecision, Tracker},
};

/// Records read before the watcher lets other tasks run.
const RECORDS_PER_TURN: usize = 4096;

/// How often the tracker forgets what is too old to matter.
const PRUNE_INTERVAL: Duration = Duration::from_secs(30);

/// What the watcher has seen.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchStats {
    pub captures: u64,
    pub messages: u64,
    pub malformed: u64,
}

/// One ring buffer record: the messages in it, fed to the tracker.
/// Returns the bans they cause.
pub fn handle_capture(
    record: &[u8],
    tracker: &mut Tracker,
    stats: &mut WatchStats,
    counters: &ControllerCounters,
    now: Instant,
) -> Vec<BanDecision> {
    stats.captures += 1;
    let header_len = std::mem::size_of::<SipCaptureHeader>();
    if record.len() < header_len {
        stats.malformed += 1;
        return Vec::new();
    }
    // SAFETY: length checked; plain data; the ring gives no alignment promise.
    let header: SipCaptureHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let end = (header_len + header.captured as usize).min(record.len());
    let data = &record[header_len..end];
    let complete = header.captured == header.payload_len;
    let messages: Vec<Result<Message<'_>, ParseError>> =
        if header.transport == guard_common::L4Proto::Udp as u8 {
            // A datagram whose header section does not end in the capture
            // (cut at the capture size, or the first of its IP fragments)
            // is still read as far as it goes: the tracker knows it is
            // incomplete.
            let parsed = match parser::parse(data, true) {
                Err(ParseError::Truncated) => parser::parse(data, false),
                parsed => parsed,
            };
            match parsed {
                Err(ParseError::Empty) => Vec::new(),
                parsed => vec![parsed.map(|(message, _)| message)],
            }
        } else {
            parser::parse_stream(data, complete)
        };

    let peer = bans::source_ip(&SourceKey { addr: header.peer });
    let mut bans = Vec::new();
    for message in messages {
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                stats.malformed += 1;
                counters.sip_malformed.inc();
                debug!("ignored a malformed SIP message from {peer}: {e}");
                continue;
            }
        };
        stats.messages += 1;
        match (header.direction, message.method(), message.status()) {
            (CAPTURE_INBOUND, Some(method), _) => {
                counters.sip_request(std::str::from_utf8(method).unwrap_or("other"));
                tracker.on_request(now, peer, &message)
            }
            (CAPTURE_OUTBOUND, None, Some(status)) => {
                counters.sip_response(status);
                let failures_before = tracker.stats.failures;
                bans.extend(tracker.on_response(now, peer, &message));
                if tracker.stats.failures > failures_before {
                    counters.auth_failure(status);
                }
            }
            // The PBX acting as a client (trunks): not our business.
            _ => {}
        }
    }
    bans
}

/// Runs until the ring buffer fails.
pub async fn watch(
    ring: RingBuf<MapData>,
    mut tracker: Tracker,
    runtime: Arc<Runtime>,
) -> Result<()> {
    let counters = runtime.counters().clone();
    // SAFETY: the ring buffer owns its fd, which stays open while the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow!("{e}"))?;
    let mut stats = WatchStats::default();
    let window = tracker.policy().level.window;
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut ready = ready?;
                let mut decisions = Vec::new();
                let mut drained = false;
                for _ in 0..RECORDS_PER_TURN {
                    let Some(record) = ready.get_inner_mut().next() else {
                        drained = true;
                        break;
                    };
                    decisions.extend(handle_capture(&record, &mut tracker, &mut stats, &counters, Instant::now()));
                }
                if drained {
                    ready.clear_ready();
                }
                runtime.sip_bans(&decisions, window).await;
                if !drained {
                    // A flood keeps the ring full: let the control socket
                    // and the other tasks have their turn.
                    tokio::task::yield_now().await;
                }
            }
            _ = prune.tick() => {
                tracker.prune(Instant::now());
                debug!(
                    "SIP watch: {} captures, {} messages, {} malformed, {} failures, {} sources tracked, \
                     {} pending, evicted {} pending / {} nonces / {} sources",
                    stats.captures, stats.messages, stats.malformed, tracker.stats.failures,
                    tracker.tracked_sources(), tracker.pending_requests(),
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
            _pad: [0; 2],
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
        let mut t = tracker();
        let mut stats = WatchStats::default();
        let now = Instant::now();
        let peer = [198, 51, 100, 7];
        let mut bans = Vec::new();
        let mut feed = |direction: u8, text: &str| {
            let capture = record(direction, L4Proto::Udp, peer, text.as_bytes(), text.len());
            bans.extend(handle_capture(
                &capture,
                &mut t,
                &mut stats,
                &ControllerCounters::default(),
                now,
            ));
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
        assert_eq!(stats.messages, 12);
        let line =
            crate::sip::ban::describe_ban(&bans[0], "198.51.100.7", Duration::from_secs(86_400));
        assert!(line.starts_with("banned 198.51.100.7 for 30days: auth-failure, 3 failures in 1day (proven), last user:status 7:401 7:401 7:401"), "{line}");
    }

    #[test]
    fn tcp_records_may_hold_several_messages_and_a_cut_tail() {
        let mut t = tracker();
        let mut stats = WatchStats::default();
        let mut stream = register(1, None).into_bytes();
        stream.extend_from_slice(register(2, None).as_bytes());
        let cut = &stream[..stream.len() - 10];
        handle_capture(
            &record(
                CAPTURE_INBOUND,
                L4Proto::Tcp,
                [198, 51, 100, 8],
                cut,
                stream.len(),
            ),
            &mut t,
            &mut stats,
            &ControllerCounters::default(),
            Instant::now(),
        );
        assert_eq!(
            stats.messages, 2,
            "the cut second message still has its headers"
        );
        assert_eq!(stats.malformed, 0);
    }

    #[test]
    fn garbage_is_counted_and_ignored() {
        let mut t = tracker();
        let mut stats = WatchStats::default();
        let now = Instant::now();
        assert!(handle_capture(
            &[1, 2, 3],
            &mut t,
            &mut stats,
            &ControllerCounters::default(),
            now
        )
        .is_empty());
        let junk = b"\x00\x01garbage\r\n\r\n";
        assert!(handle_capture(
            &record(
                CAPTURE_INBOUND,
                L4Proto::Udp,
                [1, 2, 3, 4],
                junk,
                junk.len()
            ),
            &mut t,
            &mut stats,
            &ControllerCounters::default(),
            now
        )
        .is_empty());
        // A record claiming more captured bytes than it holds is clipped, not trusted.
        let mut lying = record(CAPTURE_INBOUND, L4Proto::Udp, [1, 2, 3, 4], b"REGISTER", 8);
        let captured = std::mem::offset_of!(SipCaptureHeader, captured);
        lying[captured..captured + 4].copy_from_slice(&5000u32.to_ne_bytes());
        handle_capture(
            &lying,
            &mut t,
            &mut stats,
            &ControllerCounters::default(),
            now,
        );
        assert_eq!(stats.malformed, 3);
        assert_eq!(t.stats.failures, 0);
    }
}
