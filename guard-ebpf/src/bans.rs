//! The ban map from the kernel's side: checking a source, and banning one.
use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use guard_common::{atomic, BanEntry, BanEvent, BanReason, Health, RateRule, SourceKey, NO_RULE};

use crate::{
    clock::now_ns,
    counters::count_health,
    maps::{BANS, BAN_EVENTS},
    source_cache::bump_drop_generation,
};

const EEXIST: i32 = 17;

/// True if `source` is under an unexpired ban (and counts the drop on it).
/// An expired ban counts as absent; the controller's sweeper removes it.
#[inline(always)]
pub fn is_banned(source: &SourceKey) -> bool {
    let Some(ban) = BANS.get_ptr_mut(source) else {
        return false;
    };
    let now_ns = now_ns();
    // SAFETY: a live map value; `dropped` is only touched atomically.
    unsafe {
        if !(*ban).is_active(now_ns) {
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
    ban(source, &entry, entry.rule, count);
}

/// Bans `source` for `ban_ns` for carrying scanner fingerprint `pattern`.
/// The ban names no rate rule; its event carries the fingerprint's number.
#[inline(always)]
pub fn ban_scanner(source: &SourceKey, pattern: u16, ban_ns: u64) {
    let now_ns = now_ns();
    let entry = BanEntry {
        expires_ns: now_ns.saturating_add(ban_ns),
        created_ns: now_ns,
        dropped: 0,
        reason: BanReason::Scanner as u16,
        rule: NO_RULE,
        _pad: 0,
    };
    ban(source, &entry, pattern, 1);
}

/// Bans `source` for `ban_ns` for dialling dial rule `rule`'s prefixes
/// from a source the rule does not permit; the ban and its event name the rule.
#[inline(always)]
pub fn ban_dial(source: &SourceKey, rule: u8, ban_ns: u64) {
    let now_ns = now_ns();
    let entry = BanEntry {
        expires_ns: now_ns.saturating_add(ban_ns),
        created_ns: now_ns,
        dropped: 0,
        reason: BanReason::DialDenied as u16,
        rule: NO_RULE,
        _pad: 0,
    };
    ban(source, &entry, rule as u16, 1);
}

#[inline(always)]
fn ban(source: &SourceKey, entry: &BanEntry, event_rule: u16, count: u64) {
    let now_ns = entry.created_ns;
    let entry = *entry;
    let inserted = match BANS.insert(source, entry, BPF_NOEXIST as u64) {
        Ok(()) => true,
        // An entry exists: another CPU banned the source a moment ago (it
        // reports that), or an expired ban awaits the sweeper: replace it.
        Err(err) if err == -EEXIST => match BANS.get_ptr(source) {
            // SAFETY: a live map value, read only.
            Some(old) if unsafe { !(*old).is_active(now_ns) } => {
                BANS.insert(source, entry, BPF_ANY as u64).is_ok()
            }
            _ => false,
        },
        Err(_) => {
            count_health(Health::BanMapFull);
            false
        }
    };
    if inserted {
        // No CPU may keep the source as clear of drop sets now.
        bump_drop_generation();
        report(source, &entry, event_rule, count);
    }
}

#[inline(always)]
fn report(source: &SourceKey, entry: &BanEntry, rule: u16, count: u64) {
    let event = BanEvent {
        source: *source,
        created_ns: entry.created_ns,
        expires_ns: entry.expires_ns,
        reason: entry.reason,
        rule,
        count: count.min(u32::MAX as u64) as u32,
    };
    if BAN_EVENTS.output::<BanEvent>(&event, 0).is_err() {
        count_health(Health::EventLost);
    }
}
