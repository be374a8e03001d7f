//! The ban map from the kernel's side: checking a source, and banning one.
use aya_ebpf::bindings::BPF_NOEXIST;
use guard_common::{atomic, BanEntry, BanEvent, BanReason, Health, RateRule, SourceKey};

use crate::{
    counters::count_health,
    maps::{BANS, BAN_EVENTS},
};

const EEXIST: i32 = 17;

/// True if `source` is under an unexpired ban (and counts the drop on it).
#[inline(always)]
pub fn is_banned(source: &SourceKey, now_ns: u64) -> bool {
    let Some(ban) = BANS.get_ptr_mut(source) else {
        return false;
    };
    // SAFETY: a live map value; `dropped` is only touched atomically.
    unsafe {
        if !(*ban).is_active(now_ns) {
            // Expired bans count as absent; clearing it here lets the
            // source be banned afresh.
            let _ = BANS.remove(source);
            return false;
        }
        atomic::fetch_add(core::ptr::addr_of_mut!((*ban).dropped), 1);
    }
    true
}

/// Bans `source` for the rule's ban time and reports it to user space.
#[inline(always)]
pub fn ban_for_rule(source: &SourceKey, rule_index: u32, rule: &RateRule, count: u64, now_ns: u64) {
    let entry = BanEntry {
        expires_ns: now_ns.saturating_add(rule.ban_ns),
        created_ns: now_ns,
        dropped: 0,
        reason: BanReason::RateLimit as u16,
        rule: rule_index as u16,
        _pad: 0,
    };
    match BANS.insert(source, entry, BPF_NOEXIST as u64) {
        Ok(()) => report(source, &entry, count),
        // Another CPU banned it a moment ago and reported it.
        Err(err) if err == -EEXIST => {}
        Err(_) => count_health(Health::BanMapFull),
    }
}

#[inline(always)]
fn report(source: &SourceKey, entry: &BanEntry, count: u64) {
    let event = BanEvent {
        source: *source,
        created_ns: entry.created_ns,
        expires_ns: entry.expires_ns,
        reason: entry.reason,
        rule: entry.rule,
        count: count.min(u32::MAX as u64) as u32,
    };
    if BAN_EVENTS.output::<BanEvent>(&event, 0).is_err() {
        count_health(Health::EventLost);
    }
}
