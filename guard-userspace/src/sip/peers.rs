//! Learned peers: sources the PBX has seen authenticate, which the kernel
//! gives a larger rate budget (`guard_common::verdict::rate_step`).
//!
//! # What makes a peer
//! - A 2xx the PBX sent to a REGISTER, INVITE or SUBSCRIBE from a source
//!   whose credentials echoed a nonce the PBX had issued to that same
//!   address (the round trip proves the address, the 2xx the password).
//!   A REGISTER adds a *registration* for its username, live until its
//!   expiry (Contact `expires` or the Expires header; 0 unregisters); an
//!   INVITE or SUBSCRIBE keeps the source a peer for the configured idle
//!   time after its last such answer.
//! - A 2xx from an address to a REGISTER the PBX itself sent there: that
//!   address is a provider, a peer as long as the PBX's registration.
//!
//! Nothing else does: unauthenticated requests, failures, 1xx, answers the
//! PBX did not send (a forged 2xx arrives inbound, and the tracker reads
//! only the PBX's own answers), credentials echoing a nonce issued to
//! another address (a replay), or a 2xx that matches no request of the
//! source.
//!
//! Every change is queued for the runtime, the one owner of the kernel's
//! peer map ([`PeerBook::take_changes`]).
use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use guard_common::PeerKind;
use lru::LruCache;

/// One learned peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Username -> registration live until.
    registrations: HashMap<Vec<u8>, Instant>,
    /// An authenticated call or subscription keeps the peer until then.
    active_until: Option<Instant>,
    /// The PBX's registration with this provider lasts until then.
    provider_until: Option<Instant>,
}

impl Peer {
    /// When the peer lapses, if it still holds anything at `now`.
    pub fn until(&self, now: Instant) -> Option<Instant> {
        self.registrations
            .values()
            .copied()
            .chain(self.active_until)
            .chain(self.provider_until)
            .filter(|until| *until > now)
            .max()
    }

    /// Registrations live at `now`.
    pub fn live_users(&self, now: Instant) -> u32 {
        let live = self.registrations.values().filter(|u| **u > now).count();
        u32::try_from(live).unwrap_or(u32::MAX)
    }

    /// Registered (its users registered) before provider before call.
    pub fn kind(&self, now: Instant) -> PeerKind {
        if self.live_users(now) > 0 {
            PeerKind::Registered
        } else if self.provider_until.is_some_and(|u| u > now) {
            PeerKind::Provider
        } else {
            PeerKind::Call
        }
    }

    fn forget_lapsed(&mut self, now: Instant) {
        self.registrations.retain(|_, until| *until > now);
        self.active_until = self.active_until.filter(|u| *u > now);
        self.provider_until = self.provider_until.filter(|u| *u > now);
    }
}

/// What the kernel's peer map must now hold for one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerChange {
    /// The source as the tracker keys it (IPv6: its ban prefix).
    pub source: IpAddr,
    /// None: no longer a peer (remove the entry).
    pub entry: Option<PeerFacts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerFacts {
    pub kind: PeerKind,
    pub live_users: u32,
    pub until: Instant,
}

/// The learned peers, bounded (a peer needs a real round trip, so a
/// spoofed flood cannot fill it; a full book forgets its least recently
/// confirmed peer).
pub struct PeerBook {
    peers: LruCache<IpAddr, Peer>,
    /// Sources whose entry changed since the last [`PeerBook::take_changes`].
    changed: Vec<IpAddr>,
    /// Removed from the book (lapsed or evicted) since then.
    removed: Vec<IpAddr>,
    idle: Duration,
}

impl PeerBook {
    pub fn new(capacity: usize, idle: Duration) -> PeerBook {
        PeerBook {
            peers: LruCache::new(NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN)),
            changed: Vec::new(),
            removed: Vec::new(),
            idle,
        }
    }

    fn update(&mut self, now: Instant, source: IpAddr, change: impl FnOnce(&mut Peer)) {
        let mut peer = self.peers.pop(&source).unwrap_or_default();
        change(&mut peer);
        peer.forget_lapsed(now);
        if peer.until(now).is_none() {
            self.removed.push(source);
            return;
        }
        if let Some((evicted, _)) = self.peers.push(source, peer) {
            if evicted != source {
                self.removed.push(evicted);
            }
        }
        self.changed.push(source);
    }

    /// A 2xx to an authenticated REGISTER for `username`: `expiry` seconds
    /// (0 unregisters it).
    pub fn registered(&mut self, now: Instant, source: IpAddr, username: &[u8], expiry: u32) {
        self.update(now, source, |peer| {
            if expiry == 0 {
                peer.registrations.remove(username);
            } else {
                let until = now + Duration::from_secs(u64::from(expiry));
                peer.registrations.insert(username.to_vec(), until);
            }
        });
    }

    /// A 2xx to an authenticated INVITE or SUBSCRIBE.
    pub fn active(&mut self, now: Instant, source: IpAddr) {
        let until = now + self.idle;
        self.update(now, source, |peer| {
            peer.active_until = Some(peer.active_until.map_or(until, |u| u.max(until)));
        });
    }

    /// A provider's 2xx to the PBX's REGISTER, for `expiry` seconds.
    pub fn provider(&mut self, now: Instant, source: IpAddr, expiry: u32) {
        self.update(now, source, |peer| {
            peer.provider_until =
                (expiry > 0).then(|| now + Duration::from_secs(u64::from(expiry)));
        });
    }

    /// Drops what has lapsed (its oldest-confirmed end only: a peer
    /// confirmed more recently may still lapse first, and is dropped when
    /// it reaches that end or is confirmed again; the kernel ignores an
    /// expired entry meanwhile).
    pub fn prune(&mut self, now: Instant) {
        while let Some((source, peer)) = self.peers.peek_lru() {
            if peer.until(now).is_some() {
                break;
            }
            let source = *source;
            self.peers.pop_lru();
            self.removed.push(source);
        }
    }

    /// Adds a peer restored from the state directory. Its registrations
    /// come back as `live_users` anonymous ones until their users
    /// re-register (each re-registration replaces one).
    pub fn restore(&mut self, now: Instant, source: IpAddr, facts: &PeerFacts) {
        self.update(now, source, |peer| match facts.kind {
            PeerKind::Registered => {
                for n in 0..facts.live_users.max(1) {
                    peer.registrations
                        .insert(format!("\0restored-{n}").into_bytes(), facts.until);
                }
            }
            PeerKind::Provider => peer.provider_until = Some(facts.until),
            PeerKind::Call => peer.active_until = Some(facts.until),
        });
    }

    /// What the kernel's peer map must now hold, since the last call.
    pub fn take_changes(&mut self, now: Instant) -> Vec<PeerChange> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let changed = std::mem::take(&mut self.changed);
        let removed = std::mem::take(&mut self.removed);
        // The book says what holds now, whatever happened in between.
        for source in changed.iter().chain(removed.iter()) {
            if !seen.insert(*source) {
                continue;
            }
            let entry = self.peers.peek(source).and_then(|peer| {
                Some(PeerFacts {
                    kind: peer.kind(now),
                    live_users: peer.live_users(now),
                    until: peer.until(now)?,
                })
            });
            out.push(PeerChange {
                source: *source,
                entry,
            });
        }
        out
    }

    /// Every peer, for `sipguard peers` and the state directory.
    pub fn list(&self, now: Instant) -> Vec<(IpAddr, PeerFacts)> {
        self.peers
            .iter()
            .filter_map(|(source, peer)| {
                Some((
                    *source,
                    PeerFacts {
                        kind: peer.kind(now),
                        live_users: peer.live_users(now),
                        until: peer.until(now)?,
                    },
                ))
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}
