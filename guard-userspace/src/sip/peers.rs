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
//! # Boot storms: the challenge credit
//! Up to 100 phones behind one address may register within a second, as
//! after a power cut, before any of them is learned. Each costs two
//! requests (the challenged one and its answer), so the address passes the
//! built-in 40-in-2-s rule long before a slow PBX (a database lookup per
//! REGISTER) has sent its 2xx. So a request whose credentials echo a nonce
//! the PBX issued to that same address (a *challenge answered*: the
//! address is real, the password not yet judged) credits the address at
//! once with a *pending* registration for its username: the kernel's
//! budget grows by one user (`factor` x each limit) per phone answering its
//! challenge, one round trip before the 2xx. The PBX's answer settles it:
//! a 2xx makes the registration, anything else (401, 403, even a 1xx)
//! withdraws the credit, and an unanswered one lapses after
//! [`CREDIT_LIFETIME`]. At most [`MAX_PENDING`] per source.
//!
//! What it cannot do: an unknown address sending more requests than a
//! rule's limit before the first of its challenges is answered is cut at
//! the normal limits, which is what must happen to a flood of
//! unauthenticated REGISTERs (a flood never answers a challenge). An
//! attacker on a real address who answers challenges with wrong passwords
//! holds a credit only until the PBX's 401, and collects proven failures.
//!
//! Nothing else makes a peer: unauthenticated requests, failures, 1xx, answers the
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
    /// Challenges answered, awaiting the PBX's answer (the boot-storm
    /// credit): username -> credited until.
    pending: HashMap<Vec<u8>, Instant>,
}

impl Peer {
    /// When the peer lapses, if it still holds anything at `now`.
    pub fn until(&self, now: Instant) -> Option<Instant> {
        self.registrations
            .values()
            .chain(self.pending.values())
            .copied()
            .chain(self.active_until)
            .chain(self.provider_until)
            .filter(|until| *until > now)
            .max()
    }

    /// Registrations live at `now`, with the challenges answered that
    /// await the PBX's answer.
    pub fn live_users(&self, now: Instant) -> u32 {
        let registered = self.registrations.values().filter(|u| **u > now).count();
        let pending = self
            .pending
            .iter()
            .filter(|(name, until)| **until > now && !self.registrations.contains_key(*name))
            .count();
        u32::try_from(registered + pending).unwrap_or(u32::MAX)
    }

    /// Learned: a registration, a provider's or an authenticated call,
    /// not a credit alone.
    fn is_learned(&self, now: Instant) -> bool {
        self.registrations.values().any(|u| *u > now)
            || self.active_until.is_some_and(|u| u > now)
            || self.provider_until.is_some_and(|u| u > now)
    }

    /// The usernames registered live, for logs (at most `max`).
    fn users(&self, now: Instant, max: usize) -> Vec<String> {
        let mut users: Vec<String> = self
            .registrations
            .iter()
            .filter(|(name, until)| **until > now && !name.starts_with(RESTORED))
            .map(|(name, _)| crate::sip::parser::display(name))
            .collect();
        users.sort();
        users.truncate(max);
        users
    }

    /// Provider before registered (its users registered) before call. A
    /// provider whose address also holds registrations (a trunk that
    /// registers users of its own) gets the larger budget of the two: a
    /// provider's is the cap, which no count of users exceeds
    /// (`PeerEntry::budget_users`); its registrations still count.
    pub fn kind(&self, now: Instant) -> PeerKind {
        if self.provider_until.is_some_and(|u| u > now) {
            PeerKind::Provider
        } else if self.live_users(now) > 0 {
            PeerKind::Registered
        } else {
            PeerKind::Call
        }
    }

    fn forget_lapsed(&mut self, now: Instant) {
        self.registrations.retain(|_, until| *until > now);
        self.pending.retain(|_, until| *until > now);
        self.active_until = self.active_until.filter(|u| *u > now);
        self.provider_until = self.provider_until.filter(|u| *u > now);
    }
}

/// How long a challenge answered credits its address without the PBX's
/// answer (a SIP transaction's life, 64 x T1).
pub const CREDIT_LIFETIME: Duration = Duration::from_secs(32);
/// Challenges answered a source may have pending at once.
pub const MAX_PENDING: usize = 128;
/// Usernames a peer's log lines and saved state name at most.
pub const MAX_NAMED_USERS: usize = 32;
/// Registrations restored without their username start with this.
const RESTORED: &[u8] = b"\0restored-";

/// What the kernel's peer map must now hold for one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChange {
    /// The source as the tracker keys it (IPv6: its ban prefix).
    pub source: IpAddr,
    /// None: no longer a peer (remove the entry).
    pub entry: Option<PeerFacts>,
    /// Its live registrations' usernames (at most [`MAX_NAMED_USERS`]).
    pub users: Vec<String>,
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

    /// A REGISTER for `username` echoed a nonce the PBX issued to its
    /// address: the boot-storm credit (see the module docs).
    pub fn challenge_answered(&mut self, now: Instant, source: IpAddr, username: &[u8]) {
        let credited = self.peers.peek(&source).is_some_and(|peer| {
            peer.pending.len() >= MAX_PENDING
                || peer.registrations.get(username).is_some_and(|u| *u > now)
        });
        if credited {
            return;
        }
        let until = now + CREDIT_LIFETIME;
        self.update(now, source, |peer| {
            peer.pending.insert(username.to_vec(), until);
        });
    }

    /// The PBX answered that REGISTER with anything but a 2xx: the credit
    /// goes.
    pub fn challenge_refused(&mut self, now: Instant, source: IpAddr, username: &[u8]) {
        let pending = self
            .peers
            .peek(&source)
            .is_some_and(|peer| peer.pending.contains_key(username));
        if pending {
            self.update(now, source, |peer| {
                peer.pending.remove(username);
            });
        }
    }

    /// Whether `source` is a learned peer at `now` (a credit alone is not).
    pub fn is_learned(&self, source: IpAddr, now: Instant) -> bool {
        self.peers
            .peek(&source)
            .is_some_and(|peer| peer.is_learned(now))
    }

    /// A 2xx to an authenticated REGISTER for `username`: `expiry` seconds
    /// (0 unregisters it).
    pub fn registered(&mut self, now: Instant, source: IpAddr, username: &[u8], expiry: u32) {
        self.update(now, source, |peer| {
            peer.pending.remove(username);
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
    /// come back under the saved `users`, and as anonymous ones for the
    /// rest of `live_users` (the names saved are capped) until their users
    /// re-register.
    /// A provider's registrations come back with it, all lasting as long
    /// as the entry (only its latest expiry is saved).
    pub fn restore(&mut self, now: Instant, source: IpAddr, facts: &PeerFacts, users: &[String]) {
        let registered = match facts.kind {
            PeerKind::Registered => facts.live_users.max(1),
            PeerKind::Provider => facts.live_users,
            PeerKind::Call => 0,
        };
        self.update(now, source, |peer| {
            match facts.kind {
                PeerKind::Provider => peer.provider_until = Some(facts.until),
                PeerKind::Call => peer.active_until = Some(facts.until),
                PeerKind::Registered => {}
            }
            let users = &users[..users.len().min(registered as usize)];
            for user in users {
                peer.registrations
                    .insert(user.as_bytes().to_vec(), facts.until);
            }
            for n in users.len() as u32..registered {
                let mut name = RESTORED.to_vec();
                name.extend_from_slice(n.to_string().as_bytes());
                peer.registrations.insert(name, facts.until);
            }
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
            let peer = self.peers.peek(source);
            let entry = peer.and_then(|peer| {
                Some(PeerFacts {
                    kind: peer.kind(now),
                    live_users: peer.live_users(now),
                    until: peer.until(now)?,
                })
            });
            let users = match (peer, entry) {
                (Some(peer), Some(_)) => peer.users(now, MAX_NAMED_USERS),
                _ => Vec::new(),
            };
            out.push(PeerChange {
                source: *source,
                entry,
                users,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider whose address also registers users gets the larger of
    /// the two budgets, the provider's cap (not users x factor), and keeps
    /// its registrations, across a restore too.
    #[test]
    fn a_provider_with_registered_users_gets_the_providers_budget() {
        let mut book = PeerBook::new(16, Duration::from_secs(600));
        let now = Instant::now();
        let trunk: IpAddr = "203.0.113.50".parse().unwrap();
        for user in [&b"201"[..], b"202", b"203"] {
            book.registered(now, trunk, user, 600);
        }
        book.provider(now, trunk, 3600);
        let (_, facts) = book.list(now)[0];
        assert_eq!((facts.kind, facts.live_users), (PeerKind::Provider, 3));
        let entry = guard_common::PeerEntry {
            kind: facts.kind as u16,
            live_users: facts.live_users,
            ..Default::default()
        };
        let registered = guard_common::PeerEntry {
            kind: PeerKind::Registered as u16,
            ..entry
        };
        assert_eq!(entry.multiplier(2, 200), 200, "the cap");
        assert_eq!(registered.multiplier(2, 200), 6, "users x factor, smaller");

        // Restored (as after a restart): still a provider with 3 users.
        let mut next = PeerBook::new(16, Duration::from_secs(600));
        let users: Vec<String> = vec!["201".into(), "202".into()];
        next.restore(now, trunk, &facts, &users);
        let (_, restored) = next.list(now)[0];
        assert_eq!(
            (restored.kind, restored.live_users),
            (PeerKind::Provider, 3)
        );
        // The provider's registration lapses: its users' budget remains.
        let later = now + Duration::from_secs(3601);
        book.registered(later, trunk, b"201", 600);
        let (_, facts) = book.list(later)[0];
        assert_eq!((facts.kind, facts.live_users), (PeerKind::Registered, 1));
    }
}
