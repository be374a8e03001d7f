//! Learned peers in the kernel: the runtime is the one writer of the peer
//! map. The SIP watcher's tracker decides who is a peer (`sip::peers`);
//! this turns its changes into map entries on the kernel's clock.
use std::time::Instant;

use guard_common::{PeerEntry, SourceKey};
use tracing::warn;

use super::Runtime;
use crate::{
    clock,
    sip::peers::{PeerChange, PeerFacts},
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
        let mut maps = self.maps().await;
        for change in changes {
            let key: SourceKey = self.source_key(change.source);
            let result = match &change.entry {
                Some(facts) => maps.insert_peer(key, peer_entry(facts, now, now_ns)),
                // Never written (the map was full) or already gone: fine.
                None => maps.remove_peer(&key).map(|_| ()),
            };
            if let Err(e) = result {
                warn!("peer map: {}: {e}", change.source);
            }
        }
    }
}
