//! Per-CPU counters: plain adds are exact because each CPU owns its slot.
use guard_common::{verdict_index, Health, Reason, MAX_RATE_RULES};

use crate::maps::{HEALTH, RULES_PER_CPU, VERDICTS};

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

/// Counts a packet rule `rule` of policy `slot` limited. (The packets a
/// rule counted are counted by the rate step, beside the rule's time slot.)
#[inline(always)]
pub fn count_rule_limited(slot: u8, rule: u32) {
    if let Some(table) = RULES_PER_CPU.get_ptr_mut((slot & 1) as u32) {
        // SAFETY: as above; the mask keeps the index in the table.
        unsafe {
            (*table).rules[rule as usize & (MAX_RATE_RULES - 1)]
                .hits
                .limited += 1
        };
    }
}

#[inline(always)]
pub fn count_health(what: Health) {
    if let Some(counter) = HEALTH.get_ptr_mut(what as u32) {
        // SAFETY: as above.
        unsafe { *counter += 1 };
    }
}
