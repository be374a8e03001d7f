//! Learned peers in the kernel: the runtime is the one writer of the peer
//! map. The SIP watcher's tracker decides who is a peer (`sip::peers`);
//! this turns its changes into map entries on the kernel's clock, and
//! keeps what it wrote: for the ban log lines (the live registrations a
//! ban cuts) and for the state directory (`peers.json`), so that a restart
//! or a reboot cannot ban an office (its peers come back with the time
//! they had left).
use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use guard_common::{PeerEntry, PeerKind, SourceKey};
use tracing::{info, warn};

use super::Runtime;
use crate::{
    clock,
    sip::peers::{PeerBook, PeerChange, PeerFacts},
    state::{unix_now, SavedPeer},
};

/// The kernel's entry for `facts`, as seen at `now` (`now_ns` on the
/// kernel's clock).
pub fn peer_entry(facts: &PeerFacts, now: Instant, now_ns: u64) -> PeerEntry {
    let left = facts.until.saturating_duration_since(now);
    let left_ns = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX);
    PeerEntry {
        expires_ns: now_ns.saturating_add(left_ns),
        live_users: facts.live_users,
        kind: facts.kind as u16,
        _pad: 0,
    }
}

/// One peer as the runtime last wrote it to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirroredPeer {
    /// The source as the tracker keys it.
    pub source: IpAddr,
    pub facts: PeerFacts,
    pub users: Vec<String>,
}

/// The peers in the kernel's map, by ban-map key (a peer and a ban of the
/// same source share it).
#[derive(Debug, Default)]
pub struct PeerMirror {
    peers: HashMap<SourceKey, MirroredPeer>,
    /// Changed since the last save.
    changed: bool,
}

/// How a ban log line names the live registrations the ban cut: empty
/// when the source held none.
pub fn cut_registrations(peer: Option<&MirroredPeer>, now: Instant) -> String {
    let Some(peer) = peer.filter(|p| p.facts.until > now && p.facts.live_users > 0) else {
        return String::new();
    };
    let users = peer.facts.live_users;
    let plural = if users == 1 { "" } else { "s" };
    if peer.users.is_empty() {
        return format!("; cut {users} live registration{plural}");
    }
    let more = users.saturating_sub(peer.users.len() as u32);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "; cut {users} live registration{plural}: {}{more}",
        peer.users.join(", ")
    )
}

/// A saved peer as the tracker's book takes it back, or None once it has
/// run out (or names an unknown kind).
pub fn restored_facts(saved: &SavedPeer, now: Instant, unix: u64) -> Option<PeerFacts> {
    let left = saved.expires_unix.checked_sub(unix).filter(|s| *s > 0)?;
    let kind = [PeerKind::Registered, PeerKind::Provider, PeerKind::Call]
        .into_iter()
        .find(|k| k.name() == saved.kind)?;
    Some(PeerFacts {
        kind,
        live_users: saved.live_users,
        until: now + Duration::from_secs(left),
    })
}

/// Puts saved peers back into the tracker's book (the runtime writes them
/// to the kernel with the book's first changes). Returns how many.
pub fn restore_peers(book: &mut PeerBook, saved: &[SavedPeer]) -> usize {
    let (now, unix) = (Instant::now(), unix_now());
    let mut restored = 0;
    for peer in saved {
        if let Some(facts) = restored_facts(peer, now, unix) {
            book.restore(now, peer.source, &facts, &peer.users);
            restored += 1;
        }
    }
    if restored > 0 {
        info!(
            "restored {restored} of {} saved learned peers with their remaining time",
            saved.len()
        );
    }
    restored
}

impl Runtime {
    /// Puts the tracker's peer changes into the kernel's peer map. A
    /// failed write is logged and counted as a health problem of the map;
    /// the next change of the same peer writes it again.
    pub async fn apply_peers(&self, changes: &[PeerChange]) {
        if changes.is_empty() {
            return;
        }
        let now = Instant::now();
        let now_ns = clock::monotonic_ns();
        let mut written = Vec::with_capacity(changes.len());
        {
            let mut maps = self.maps().await;
            for change in changes {
                let key: SourceKey = self.source_key(change.source);
                let result = match &change.entry {
                    Some(facts) => maps.insert_peer(key, peer_entry(facts, now, now_ns)),
                    // Never written (the map was full) or already gone: fine.
                    None => maps.remove_peer(&key).map(|_| ()),
                };
                match result {
                    Ok(()) => written.push((key, change)),
                    Err(e) => warn!("peer map: {}: {e}", change.source),
                }
            }
        }
        let mut mirror = self.peer_mirror();
        for (key, change) in written {
            match &change.entry {
                Some(facts) => mirror.peers.insert(
                    key,
                    MirroredPeer {
                        source: change.source,
                        facts: *facts,
                        users: change.users.clone(),
                    },
                ),
                None => mirror.peers.remove(&key),
            };
        }
        mirror.changed = true;
    }

    fn peer_mirror(&self) -> std::sync::MutexGuard<'_, PeerMirror> {
        // A panic elsewhere while holding it leaves plain data: keep going.
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The learned peer holding `key`, as last written to the kernel.
    pub fn peer(&self, key: &SourceKey) -> Option<MirroredPeer> {
        self.peer_mirror().peers.get(key).cloned()
    }

    /// Every learned peer, as last written to the kernel.
    pub fn peers(&self) -> Vec<MirroredPeer> {
        self.peer_mirror().peers.values().cloned().collect()
    }

    /// The learned peers inside `net` (a fleet range spares them), by name.
    pub fn peers_in(&self, net: &ipnet::IpNet) -> Vec<String> {
        let now = Instant::now();
        let mut inside: Vec<String> = self
            .peer_mirror()
            .peers
            .values()
            .filter(|p| p.facts.until > now && net.contains(&p.source))
            .map(|p| p.source.to_string())
            .collect();
        inside.sort();
        inside
    }

    /// What a ban log line adds for the registrations a ban on `key` cuts.
    pub fn cut_registrations(&self, key: &SourceKey) -> String {
        cut_registrations(self.peer_mirror().peers.get(key), Instant::now())
    }

    /// Writes the learned peers to the state directory, if they changed
    /// since the last save (`force`: whatever).
    pub fn save_peers(&self, force: bool) {
        let (now, unix) = (Instant::now(), unix_now());
        let saved: Vec<SavedPeer> = {
            let mut mirror = self.peer_mirror();
            if !mirror.changed && !force {
                return;
            }
            mirror.changed = false;
            mirror
                .peers
                .values()
                .filter(|p| p.facts.until > now)
                .map(|p| SavedPeer {
                    source: p.source,
                    kind: p.facts.kind.name().to_string(),
                    live_users: p.facts.live_users,
                    users: p.users.clone(),
                    // Rounded up: a peer never comes back shorter than a second.
                    expires_unix: unix + p.facts.until.saturating_duration_since(now).as_secs() + 1,
                })
                .collect()
        };
        if let Err(e) = self.state.save_peers(saved) {
            self.peer_mirror().changed = true;
            warn!("saving the learned peers failed: {e:#}");
        }
    }
}
