//! Per-CPU counters: plain adds are exact because each CPU owns its slot.
use guard_common::{verdict_index, Health, Reason};

use crate::maps::{HEALTH, RULE_HITS, VERDICTS};

#[inline(always)]
pub fn count_verdict(reason: Reason, service: u8, bytes: u64) {
    if let Some(counter) = VERDICTS.get_ptr_mut(verdict_index(reason, service)) {
        // SAFETY: a per-CPU slot, only this CPU writes it.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_rule(rule: u32) {
    if let Some(counter) = RULE_HITS.get_ptr_mut(rule) {
        // SAFETY: as above.
        unsafe { (*counter).counted += 1 };
    }
}

#[inline(always)]
pub fn count_rule_limited(rule: u32) {
    if let Some(counter) = RULE_HITS.get_ptr_mut(rule) {
        // SAFETY: as above.
        unsafe { (*counter).limited += 1 };
    }
}

#[inline(always)]
pub fn count_health(what: Health) {
    if let Some(counter) = HEALTH.get_ptr_mut(what as u32) {
        // SAFETY: as above.
        unsafe { *counter += 1 };
    }
}
