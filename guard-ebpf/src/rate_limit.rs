//! Auto-blacklist: count the packet against every rate rule on its port and
//! report the rule that needs the largest multiple of its limit; the shared
//! verdict decides from that (allow list, peer budget) and calls [`ban`].
//! The counting algorithm and its error bound are in `guard_common::rate`.
//!
//! Counting and banning are global BPF functions (`sipguard_count`,
//! `sipguard_rate_ban`), which the verifier checks once each, on their
//! own, with unknown arguments. Inlined, or as static subprograms (walked
//! per call site), the counting loop's states multiplied with those of
//! the over-limit path (allow list, peer, ban) and of every path into the
//! verdict, and the program passed the one-million-instruction limit; so
//! did the whole rate step as one global function. Their arguments and
//! results are scalars: a [`SourceKey`] as two words, a [`RateExcess`] as
//! one ([`RateExcess::to_word`]).
use aya_ebpf::bindings::BPF_NOEXIST;
use guard_common::{
    policy_rule_index,
    rate::SlotEpoch,
    rate::{needed_multiplier, record_packet, record_packet_in, slot_width_ns},
    rate_group, rate_lane,
    sip_rules::{dial_rate_group, DIAL_WINDOW_NS},
    verdict::{Address, RateExcess},
    Health, PortClass, RateKey, RateState, SourceKey, MAX_RATE_RULES, MAX_RULES_PER_PORT,
    NO_RULE_INDEX, RATE_LANES, RULE_SYN_ONLY,
};

use crate::{
    bans::ban_for_rule,
    clock::now_ns,
    counters::{count_health, count_rule_limited},
    maps::{PEERS, RATE_STATE, RATE_ZERO, RULES, RULES_PER_CPU},
};

/// A source key as two words, and back.
#[inline(always)]
pub fn key_words(source: &SourceKey) -> (u64, u64) {
    addr_words(&source.addr)
}

/// Sixteen address bytes as two words.
#[inline(always)]
pub fn addr_words(a: &[u8; 16]) -> (u64, u64) {
    (
        u64::from_le_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_le_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    )
}

#[inline(always)]
pub fn key_of(hi: u64, lo: u64) -> SourceKey {
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&hi.to_le_bytes());
    addr[8..].copy_from_slice(&lo.to_le_bytes());
    SourceKey { addr }
}

/// Counts the packet against each of the port's rules (see
/// [`sipguard_count`]), unless the source is allow-listed for `allow_bit`
/// (a power of two, or 0).
#[inline(always)]
pub fn count_rate(
    source: &SourceKey,
    address: &Address,
    allow_bit: u32,
    class: &PortClass,
    is_syn: bool,
    policy_slot: u8,
) -> RateExcess {
    if allow_bit != 0 && crate::source_cache::allow_mask(address) & allow_bit != 0 {
        return RateExcess::ALLOWLISTED;
    }
    let ask = u32::from_le_bytes(class.rules) as u64
        | (is_syn as u64) << 32
        | ((policy_slot & 1) as u64) << 33;
    let (hi, lo) = key_words(source);
    RateExcess::from_word(sipguard_count(hi, lo, ask))
}

/// Counts the packet of source (`hi`, `lo`) against the rules in `ask`
/// (bits 0-31: the port's rule slots; 32: a SYN; 33: the policy slot):
/// one rate-state lookup per rule group (one for any policy of up to four
/// rules). Returns the [`RateExcess`] word.
#[no_mangle]
#[inline(never)]
pub extern "C" fn sipguard_count(hi: u64, lo: u64, ask: u64) -> u64 {
    // One key on the stack, its group changed in place: this function's
    // stack adds to the packet path's, and the two must fit in 512 bytes.
    let mut key = RateKey {
        source: key_of(hi, lo),
        group: u32::MAX,
    };
    let rules = (ask as u32).to_le_bytes();
    let is_syn = ask >> 32 & 1 != 0;
    count_windows(&mut key, &rules, is_syn, (ask >> 33 & 1) as u8).to_word()
}

#[inline(always)]
fn count_windows(
    key: &mut RateKey,
    rules: &[u8; MAX_RULES_PER_PORT],
    is_syn: bool,
    policy_slot: u8,
) -> RateExcess {
    // The entry of `key`'s group, looked up when a rule of a new group
    // comes (the key starts in no group).
    let mut state: *mut RateState = core::ptr::null_mut();
    let now_ns = now_ns();
    // This CPU's counters and time slots of the policy's rules, read once.
    let per_cpu = RULES_PER_CPU
        .get_ptr_mut((policy_slot & 1) as u32)
        .unwrap_or(core::ptr::null_mut());
    let mut excess = RateExcess::UNDER;
    for slot in 0..MAX_RULES_PER_PORT {
        let entry = rules[slot];
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
        if rate_group(index) != key.group {
            key.group = rate_group(index);
            state = state_of(key);
        }
        if state.is_null() {
            continue;
        }
        // The mask keeps the index provably in bounds for the verifier.
        let lane = rate_lane(index) & (RATE_LANES - 1);
        let epoch = if per_cpu.is_null() {
            SlotEpoch::default().epoch_at(now_ns, rule.slot_ns)
        } else {
            // SAFETY: this CPU's value; nothing else writes it while we
            // run. The mask keeps the index in the table.
            unsafe {
                let mine = &mut (*per_cpu).rules[index as usize & (MAX_RATE_RULES - 1)];
                mine.hits.counted += 1;
                mine.slot.epoch_at(now_ns, rule.slot_ns)
            }
        };
        // SAFETY: a live map value, its windows changed only through record_packet.
        let count = unsafe {
            let window = core::ptr::addr_of_mut!((*state).windows[lane]);
            record_packet_in(window, epoch)
        };
        if count > rule.limit as u64 {
            let needed = needed_multiplier(count, rule.limit);
            if needed > excess.needed {
                excess = RateExcess {
                    rule: index,
                    count,
                    needed,
                    allowlisted: false,
                };
            }
        }
    }
    excess
}

/// Counts an INVITE of source (`hi`, `lo`) under dial rule `packed & 0xff`
/// of policy slot `packed >> 8 & 1` (its calls a minute: window 0 of the
/// source's entry of group `dial_rate_group(rule)`). 1: over the limit.
#[no_mangle]
#[inline(never)]
pub extern "C" fn sipguard_dial_count(hi: u64, lo: u64, packed: u64) -> u32 {
    let rule = packed as u8;
    let limit = crate::sip_inspect::dial_rule_info(rule, (packed >> 8 & 1) as u8).2;
    if limit == 0 {
        return 0;
    }
    let key = RateKey {
        source: key_of(hi, lo),
        group: dial_rate_group(rule),
    };
    let state = state_of(&key);
    if state.is_null() {
        return 0;
    }
    // SAFETY: a live map value, its windows changed only through record_packet.
    let count = unsafe {
        let window = core::ptr::addr_of_mut!((*state).windows[0]);
        record_packet(window, now_ns(), slot_width_ns(DIAL_WINDOW_NS))
    };
    (count > limit as u64) as u32
}

/// The rate-state entry of (source, group), created empty if missing; null
/// only if the map refuses an entry (which an LRU map should not).
#[inline(always)]
fn state_of(key: &RateKey) -> *mut RateState {
    if let Some(state) = RATE_STATE.get_ptr_mut(key) {
        return state;
    }
    // Inserted from a map value: a 256-byte value on the stack would crowd
    // the program's 512 bytes. A race with another CPU inserting the same
    // key loses nothing: BPF_NOEXIST keeps theirs, and both count into it.
    if let Some(zero) = RATE_ZERO.get(0) {
        let _ = RATE_STATE.insert(key, zero, BPF_NOEXIST as u64);
    }
    match RATE_STATE.get_ptr_mut(key) {
        Some(state) => state,
        None => {
            count_health(Health::RateStateFailed);
            core::ptr::null_mut()
        }
    }
}

/// The users the budget of `source` counts (`PeerEntry::budget_users`) if
/// the controller marked it as a peer that has not expired. Read only for
/// a packet over a limit.
#[inline(always)]
pub fn peer_users(source: &SourceKey) -> Option<u32> {
    // SAFETY: a plain read of a map value the controller writes whole.
    let peer = unsafe { PEERS.get(source) }?;
    if peer.is_active(now_ns()) {
        Some(peer.budget_users())
    } else {
        None
    }
}

/// Bans the source for the rule it exceeded its budget on (see
/// [`sipguard_rate_ban`]).
#[inline(always)]
pub fn ban(source: &SourceKey, excess: &RateExcess, policy_slot: u8) {
    let (hi, lo) = key_words(source);
    sipguard_rate_ban(hi, lo, excess.to_word(), policy_slot as u64);
}

/// Bans source (`hi`, `lo`) for the rule of the [`RateExcess`] word
/// `excess` under policy `slot`, and counts the rule's limited packet.
#[no_mangle]
#[inline(never)]
pub extern "C" fn sipguard_rate_ban(hi: u64, lo: u64, excess: u64, slot: u64) -> u32 {
    let source = key_of(hi, lo);
    let excess = RateExcess::from_word(excess);
    count_rule_limited(slot as u8, excess.rule);
    if let Some(rule) = RULES.get(policy_rule_index(slot as u8, excess.rule)) {
        ban_for_rule(&source, excess.rule, rule, excess.count, now_ns());
    }
    0
}
