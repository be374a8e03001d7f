//! One SIP message, two sightings: a PBX that mirrors its signalling over
//! HEP also sends what the XDP program captures on the wire (plain UDP and
//! TCP). Each message must count once, so that a guess is one failure.
//!
//! A message is known by a keyed hash of (peer address and port, the PBX's
//! port, layer-4 protocol, direction, Call-ID, CSeq, status). A sighting
//! from one input cancels one earlier unmatched sighting from the *other*
//! input within [`TTL`]; sightings from the same input never cancel each
//! other, so a retransmission, or the byte-identical 401s a stateless PBX
//! gives a guesser that reuses its Call-ID and CSeq, still count as often
//! as the PBX's one input shows them (see `tracker`).
use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hash, Hasher},
    net::IpAddr,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use lru::LruCache;

use crate::sip::parser::Message;

/// How long a sighting waits for its twin (the ring buffer and the HEP
/// socket are both read within milliseconds, unless the controller lags).
pub const TTL: Duration = Duration::from_secs(5);
/// Sightings remembered at most (least recently seen go first).
pub const CAPACITY: usize = 65_536;

/// Where a message was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Wire,
    Hep,
}

/// Who a message is between, from the PBX's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub peer: IpAddr,
    pub peer_port: u16,
    pub local_port: u16,
    /// 17 UDP, 6 TCP (TLS and WebSocket run over it too).
    pub ip_proto: u8,
    /// Towards the PBX (true) or from it.
    pub inbound: bool,
}

#[derive(Debug, Clone, Copy)]
struct Sighting {
    origin: Origin,
    unmatched: u32,
    at: Instant,
}

pub struct Dedup {
    seen: LruCache<u64, Sighting>,
    hasher: RandomState,
}

impl Default for Dedup {
    fn default() -> Dedup {
        Dedup::new(CAPACITY)
    }
}

impl Dedup {
    pub fn new(capacity: usize) -> Dedup {
        Dedup {
            seen: LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN)),
            hasher: RandomState::new(),
        }
    }

    /// Whether this sighting is the twin of one already counted (then the
    /// caller skips it). Messages without Call-ID or CSeq are never twins.
    pub fn is_twin(
        &mut self,
        origin: Origin,
        endpoints: &Endpoints,
        message: &Message<'_>,
        now: Instant,
    ) -> bool {
        let Some(key) = self.key(endpoints, message) else {
            return false;
        };
        match self.seen.get_mut(&key) {
            Some(s) if now.saturating_duration_since(s.at) <= TTL => {
                if s.origin == origin {
                    s.unmatched = s.unmatched.saturating_add(1);
                    s.at = now;
                    return false;
                }
                s.unmatched -= 1;
                if s.unmatched == 0 {
                    self.seen.pop(&key);
                }
                true
            }
            _ => {
                self.seen.put(
                    key,
                    Sighting {
                        origin,
                        unmatched: 1,
                        at: now,
                    },
                );
                false
            }
        }
    }

    fn key(&self, endpoints: &Endpoints, message: &Message<'_>) -> Option<u64> {
        let call_id = message.call_id.as_ref()?;
        let cseq = message.cseq?;
        let mut h = self.hasher.build_hasher();
        endpoints.hash(&mut h);
        call_id.hash(&mut h);
        cseq.number.hash(&mut h);
        cseq.method.to_ascii_uppercase().hash(&mut h);
        message.status().hash(&mut h);
        Some(h.finish())
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parser;

    const REGISTER: &[u8] = b"REGISTER sip:pbx SIP/2.0\r\nCall-ID: a\r\nCSeq: 2 REGISTER\r\n\r\n";
    const ANSWER: &[u8] = b"SIP/2.0 401 No\r\nCall-ID: a\r\nCSeq: 2 REGISTER\r\n\r\n";

    fn ends(inbound: bool) -> Endpoints {
        Endpoints {
            peer: "198.51.100.7".parse().unwrap(),
            peer_port: 5062,
            local_port: 5060,
            ip_proto: 17,
            inbound,
        }
    }

    #[test]
    fn each_wire_sighting_cancels_one_hep_sighting() {
        let mut d = Dedup::default();
        let now = Instant::now();
        let (req, _) = parser::parse(REGISTER, true).unwrap();
        let (ans, _) = parser::parse(ANSWER, true).unwrap();
        assert!(!d.is_twin(Origin::Wire, &ends(true), &req, now));
        assert!(!d.is_twin(Origin::Wire, &ends(false), &ans, now));
        // The answer is not the request's twin, nor is another peer's message.
        let mut other = ends(true);
        other.peer_port = 5064;
        assert!(!d.is_twin(Origin::Hep, &other, &req, now));
        assert!(d.is_twin(Origin::Hep, &ends(true), &req, now));
        assert!(d.is_twin(Origin::Hep, &ends(false), &ans, now));
        // A third sighting is a new message (a retransmission).
        assert!(!d.is_twin(Origin::Hep, &ends(false), &ans, now));
        let later = now + Duration::from_secs(1);
        assert!(
            d.is_twin(Origin::Wire, &ends(false), &ans, later),
            "the wire's copy of the retransmission"
        );
        assert_eq!(d.len(), 1, "only the other peer's request waits");
    }

    #[test]
    fn repeats_from_one_input_all_count_and_twins_expire() {
        let mut d = Dedup::default();
        let now = Instant::now();
        let (ans, _) = parser::parse(ANSWER, true).unwrap();
        assert!(!d.is_twin(Origin::Wire, &ends(false), &ans, now));
        assert!(!d.is_twin(Origin::Wire, &ends(false), &ans, now));
        assert!(d.is_twin(Origin::Hep, &ends(false), &ans, now));
        assert!(d.is_twin(Origin::Hep, &ends(false), &ans, now));
        assert!(!d.is_twin(Origin::Hep, &ends(false), &ans, now));
        assert_eq!(d.len(), 1, "the last HEP sighting waits for its twin");
        let late = now + TTL + Duration::from_secs(1);
        assert!(
            !d.is_twin(Origin::Wire, &ends(false), &ans, late),
            "too late to be a twin"
        );
    }

    #[test]
    fn messages_without_ids_are_never_twins() {
        let mut d = Dedup::new(0);
        let now = Instant::now();
        let (m, _) = parser::parse(b"OPTIONS sip:x SIP/2.0\r\n\r\n", true).unwrap();
        assert!(!d.is_twin(Origin::Wire, &ends(true), &m, now));
        assert!(!d.is_twin(Origin::Hep, &ends(true), &m, now));
    }
}
