//! What the kernel's peer map holds, as operators read it: `sipguard
//! peers`, the peer line of `explain`. Read from the map itself (what the
//! rate step reads) and the rate state, with the budget function the
//! kernel runs (`PeerEntry::multiplier`), so the words are the kernel's facts.
use guard_common::{
    rate::window_total, rate_group, rate_lane, PeerEntry, PeerKind, RateKey, RateState, Settings,
    SourceKey,
};
use serde::{Deserialize, Serialize};

use super::{Result, Runtime};
use crate::{
    clock,
    kernel::store::{MapStore, MapsError},
    policy::compile::CompiledPolicy,
};

/// One learned peer as the kernel holds it: a row of `sipguard peers`,
/// and what `explain` says of a peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerRow {
    /// The address, or its IPv6 ban prefix.
    pub source: String,
    /// "registered" (its users registered with the PBX), "provider" (the
    /// PBX registered with it) or "call" (it placed authenticated calls or
    /// subscriptions).
    pub kind: String,
    /// Registrations live from the source.
    pub users: u32,
    /// Until the peer lapses, unless its users register (or call) again.
    pub expires_seconds: u64,
    /// Its budget as a multiple of each rate rule's limit: what the kernel
    /// applies (`PeerEntry::multiplier` under the settings in force).
    pub budget_factor: u64,
    /// Per rate rule: packets the kernel has counted from the source in
    /// the rule's window, and its budget there.
    pub packets: Vec<RuleCount>,
}

/// A source's packets in one rate rule's window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleCount {
    pub rule: String,
    /// Packets in the window now.
    pub counted: u64,
    /// Packets it may send in the window: the limit x the budget factor.
    pub budget: u64,
}

impl PeerRow {
    /// "12 live registrations" / "the PBX registers with it" / ...
    pub fn summary(&self) -> String {
        let users = match self.users {
            1 => "1 live registration".to_string(),
            n => format!("{n} live registrations"),
        };
        let what = match self.kind.as_str() {
            "provider" if self.users > 0 => {
                format!("the PBX's provider (it registers there), {users}")
            }
            "provider" => "the PBX's provider (it registers there)".to_string(),
            "call" => "authenticated calls or subscriptions".to_string(),
            _ => users,
        };
        format!(
            "learned peer: {what}, rate budget x{} (lapses in {})",
            self.budget_factor,
            clock::human(std::time::Duration::from_secs(self.expires_seconds))
        )
    }
}

/// The row of a peer-map entry: its facts, and the kernel's counts of the
/// source in every rate rule of `policy` (one rate-state read per group).
pub fn peer_row(
    maps: &dyn MapStore,
    policy: &CompiledPolicy,
    settings: &Settings,
    (key, entry): (SourceKey, PeerEntry),
    source: String,
    now_ns: u64,
) -> std::result::Result<PeerRow, MapsError> {
    let budget_factor = entry.multiplier(settings.peer_factor, settings.peer_max_multiplier);
    let mut group: Option<(u32, Option<RateState>)> = None;
    let mut packets = Vec::with_capacity(policy.rules.len());
    for (index, rule) in policy.rules.iter().enumerate() {
        let wanted = rate_group(index as u32);
        let state = match group {
            Some((g, state)) if g == wanted => state,
            _ => {
                let state = maps.rate_state(&RateKey {
                    source: key,
                    group: wanted,
                })?;
                group = Some((wanted, state));
                state
            }
        };
        let counted = state.map_or(0, |s| {
            window_total(&s.windows[rate_lane(index as u32)], now_ns, rule.slot_ns)
        });
        packets.push(RuleCount {
            rule: policy
                .rule_names
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("#{index}")),
            counted,
            budget: u64::from(rule.limit).saturating_mul(budget_factor),
        });
    }
    Ok(PeerRow {
        source,
        kind: PeerKind::from_u16(entry.kind).name().to_string(),
        users: entry.live_users,
        expires_seconds: entry.expires_ns.saturating_sub(now_ns) / 1_000_000_000,
        budget_factor,
        packets,
    })
}

impl Runtime {
    /// `sipguard peers`: the unexpired entries of the kernel's peer map
    /// (what the rate step reads), by source.
    pub async fn peer_rows(&self) -> Result<Vec<PeerRow>> {
        let policy = self.policy().await;
        let maps = self.maps().await;
        let settings = maps.settings()?;
        let now_ns = clock::monotonic_ns();
        let mut rows = Vec::new();
        for (key, entry) in maps.peers()? {
            if !entry.is_active(now_ns) {
                continue;
            }
            let name = self.source_name(&key);
            let row = peer_row(
                &**maps,
                &policy.live.compiled,
                &settings,
                (key, entry),
                name,
                now_ns,
            )?;
            rows.push(row);
        }
        rows.sort_by(|a, b| a.source.cmp(&b.source));
        Ok(rows)
    }
}
