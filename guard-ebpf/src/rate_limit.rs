//! Auto-blacklist: count the packet against every rate rule on its port and
//! report whether one of them is exceeded (it then bans the source).
//! The counting algorithm and its error bound are in `guard_common::rate`.
use aya_ebpf::bindings::BPF_NOEXIST;
use guard_common::{
    policy_rule_index,
    rate::{first_packet, record_packet},
    Health, PortClass, RateKey, RateRule, SourceKey, MAX_RULES_PER_PORT, NO_RULE_INDEX,
    RULE_SYN_ONLY,
};

use crate::{
    bans::{ban_for_rule, now_ns},
    counters::{count_health, count_rule},
    maps::{RATE_STATE, RULES},
};

/// True if the packet exceeds one of the port's rules (the source is then banned).
#[inline(always)]
pub fn exceeds_rate_rules(
    source: &SourceKey,
    class: &PortClass,
    is_syn: bool,
    policy_slot: u8,
) -> bool {
    let now_ns = now_ns();
    for slot in 0..MAX_RULES_PER_PORT {
        let entry = class.rules[slot];
        if entry == NO_RULE_INDEX {
            break;
        }
        let index = (entry - 1) as u32;
        let Some(rule) = RULES.get(policy_rule_index(policy_slot, index)) else {
            continue;
        };
        if rule.flags & RULE_SYN_ONLY != 0 && !is_syn {
            continue;
        }
        let count = count_packet(source, index, rule, now_ns);
        let over = count > rule.limit as u64;
        count_rule(index, over);
        if over {
            ban_for_rule(source, index, rule, count, now_ns);
            return true;
        }
    }
    false
}

/// Adds the packet to the (source, rule) window; returns the window's count.
#[inline(always)]
fn count_packet(source: &SourceKey, rule_index: u32, rule: &RateRule, now_ns: u64) -> u64 {
    let key = RateKey {
        source: *source,
        rule: rule_index,
    };
    if let Some(window) = RATE_STATE.get_ptr_mut(key) {
        // SAFETY: a live map value, changed only through record_packet.
        return unsafe { record_packet(window, now_ns, rule.slot_ns) };
    }
    let fresh = first_packet(now_ns, rule.slot_ns);
    if RATE_STATE.insert(key, fresh, BPF_NOEXIST as u64).is_ok() {
        return 1;
    }
    // Another CPU created the window in between: count into theirs.
    match RATE_STATE.get_ptr_mut(key) {
        // SAFETY: as above.
        Some(window) => unsafe { record_packet(window, now_ns, rule.slot_ns) },
        None => {
            count_health(Health::RateStateFailed);
            1
        }
    }
}
