//! Per-source packet counting for the auto-blacklist rules.
//!
//! # Algorithm: slotted sliding window
//! A rule "`limit` packets in `window`" keeps, per (source, rule), [`RATE_SLOTS`]
//! slots of width `w = window / (RATE_SLOTS - 1)`. Slot `e % RATE_SLOTS` counts
//! the packets of time slot `e = now / w` and remembers `e`, so a slot left
//! from an older round is recognised and restarted instead of added up.
//! A packet's count is the sum over the current slot and the `RATE_SLOTS - 1`
//! before it; the packet that makes it exceed `limit` is dropped and bans.
//!
//! # Worst-case error
//! The summed span is longer than `window` and at most `window * RATE_SLOTS /
//! (RATE_SLOTS - 1)` (8/7 of it with 8 slots):
//! - never late: more than `limit` packets inside any `window` always ban;
//! - at most early by one slot: a source is banned only if it sent more than
//!   `limit` packets within `window + w` (for 40 in 2 s: within 2.29 s).
//!
//! # Concurrency
//! Each slot is one u64 (`epoch << 24 | count`) changed only by atomic
//! operations: a slot of the current epoch is incremented with `fetch_add`, an
//! old one is restarted with compare-and-swap, and the loser of that race
//! adds to the winner's fresh slot. Two CPUs counting the same source
//! therefore never lose a packet, and the CPU whose increment brings the count
//! over the limit sees it.
use crate::atomic;

/// Slots per window (see the module docs for the error this gives).
pub const RATE_SLOTS: usize = 8;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Largest `limit` a rule may have: the count must be able to exceed it.
pub const MAX_RATE_LIMIT: u32 = (COUNT_MASK - 1) as u32;

/// Value of the rate state map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    pub slots: [u64; RATE_SLOTS],
}
map_type!(RateWindow, 64);

#[inline(always)]
const fn pack(epoch: u64, count: u64) -> u64 {
    (epoch << COUNT_BITS) | (count & COUNT_MASK)
}

#[inline(always)]
const fn slot_epoch(slot: u64) -> u64 {
    slot >> COUNT_BITS
}

#[inline(always)]
const fn slot_count(slot: u64) -> u64 {
    slot & COUNT_MASK
}

/// The time slot `now_ns` falls in. A zero width (never configured) counts
/// as 1 ns; it also spares the BPF program Rust's divide-by-zero panic.
#[inline(always)]
const fn epoch_of(now_ns: u64, slot_ns: u64) -> u64 {
    now_ns / if slot_ns == 0 { 1 } else { slot_ns }
}

/// Slot width for a rule with this window.
pub const fn slot_width_ns(window_ns: u64) -> u64 {
    let w = window_ns / (RATE_SLOTS as u64 - 1);
    if w == 0 {
        1
    } else {
        w
    }
}

/// A fresh window whose first packet arrives at `now_ns`.
pub fn first_packet(now_ns: u64, slot_ns: u64) -> RateWindow {
    let epoch = epoch_of(now_ns, slot_ns);
    let mut window = RateWindow::default();
    window.slots[(epoch % RATE_SLOTS as u64) as usize] = pack(epoch, 1);
    window
}

/// One rule's time slot as last computed on one CPU (the XDP program
/// keeps one per CPU and rule): while the clock stays inside it, the
/// packet's slot is known without the 64-bit division of [`epoch_of`],
/// the rate step's costliest instruction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotEpoch {
    /// The slot width it was computed for (0: never computed).
    pub slot_ns: u64,
    /// Where the slot starts: `epoch * slot_ns`.
    pub start_ns: u64,
    pub epoch: u64,
}
map_type!(SlotEpoch, 24);

impl SlotEpoch {
    /// The time slot `now_ns` falls in for width `slot_ns`, as [`epoch_of`]
    /// computes it; from the slot remembered here while `now_ns` is inside
    /// it, else computed and remembered.
    #[inline(always)]
    pub fn epoch_at(&mut self, now_ns: u64, slot_ns: u64) -> u64 {
        // Unsigned: a clock before the slot's start wraps to a huge offset.
        if self.slot_ns == slot_ns && now_ns.wrapping_sub(self.start_ns) < slot_ns {
            return self.epoch;
        }
        let epoch = epoch_of(now_ns, slot_ns);
        *self = SlotEpoch {
            slot_ns,
            start_ns: epoch.wrapping_mul(slot_ns),
            epoch,
        };
        epoch
    }
}

/// Counts one packet at `now_ns` into `window` and returns the packets in the
/// sliding window, this one included.
///
/// # Safety
/// As for [`record_packet_in`].
#[inline(always)]
pub unsafe fn record_packet(window: *mut RateWindow, now_ns: u64, slot_ns: u64) -> u64 {
    unsafe { record_packet_in(window, epoch_of(now_ns, slot_ns)) }
}

/// Counts one packet of time slot `epoch` ([`epoch_of`] the packet's time)
/// into `window` and returns the packets in the sliding window, this one
/// included.
///
/// Written without loops over retries and without branches in the sum, so
/// the BPF verifier walks it in a few dozen instructions.
///
/// # Safety
/// `window` must point to a live, 8-byte aligned `RateWindow` (a map value)
/// that is only ever changed through this function.
#[inline(always)]
pub unsafe fn record_packet_in(window: *mut RateWindow, epoch: u64) -> u64 {
    let slots = unsafe { core::ptr::addr_of_mut!((*window).slots) } as *mut u64;
    // SAFETY: the index is < RATE_SLOTS; the caller vouches for the pointer.
    let slot = unsafe { slots.add((epoch % RATE_SLOTS as u64) as usize) };

    let seen = unsafe { atomic::load(slot) };
    let in_current = if slot_epoch(seen) == epoch {
        slot_count(unsafe { atomic::fetch_add(slot, 1) }) + 1
    } else if unsafe { atomic::compare_and_swap(slot, seen, pack(epoch, 1)) } == seen {
        1
    } else {
        // Another CPU restarted the slot for this epoch first: join its count.
        slot_count(unsafe { atomic::fetch_add(slot, 1) }) + 1
    };

    let mut total = in_current;
    for i in 0..RATE_SLOTS {
        // SAFETY: i < RATE_SLOTS.
        let other = unsafe { atomic::load(slots.add(i)) };
        total += slot_count(other) * is_previous_slot(epoch, slot_epoch(other));
    }
    total
}

/// 1 if `slot_epoch` is one of the `RATE_SLOTS - 1` slots before `epoch`, else
/// 0 (the current slot itself and stale ones give 0). Branch-free.
#[inline(always)]
const fn is_previous_slot(epoch: u64, slot_epoch: u64) -> u64 {
    // age - 1 wraps to a huge value for the current slot (age 0).
    let beyond = epoch.wrapping_sub(slot_epoch).wrapping_sub(1) / (RATE_SLOTS as u64 - 1);
    // 1 when beyond == 0, else 0, without a comparison.
    1 ^ ((beyond | beyond.wrapping_neg()) >> 63)
}

/// The multiple of its limit a rule's count `count` needs to stay inside:
/// `ceil(count / limit)`, so a count within `limit * m` passes under
/// multiplier `m` and the count `limit * m + 1` does not. Only called for a
/// count over the limit (the packet under the limit never divides).
#[inline(always)]
pub const fn needed_multiplier(count: u64, limit: u32) -> u64 {
    // checked_div: no panic path, which the BPF verifier refuses (a zero
    // limit, never configured, counts as 1).
    match (count + (limit as u64).saturating_sub(1)).checked_div(limit as u64) {
        Some(needed) => needed,
        None => count,
    }
}

/// A source's rate budget, as a multiple of each rule's limit: 1 for a
/// source that is not a learned peer (`live_users` None); for a peer,
/// `max(live_users, 1) * factor`, at most `max_multiplier`, at least 1.
/// A peer's budget for a rule is then `limit * multiplier` packets per window.
#[inline(always)]
pub const fn peer_multiplier(live_users: Option<u32>, factor: u16, max_multiplier: u16) -> u64 {
    let Some(users) = live_users else {
        return 1;
    };
    let users = if users == 0 { 1 } else { users as u64 };
    let m = users * factor as u64;
    let m = if m > max_multiplier as u64 {
        max_multiplier as u64
    } else {
        m
    };
    if m == 0 {
        1
    } else {
        m
    }
}

/// Packets that a window holds as seen at `now_ns`, without counting one
/// (for inspection from user space).
pub fn window_total(window: &RateWindow, now_ns: u64, slot_ns: u64) -> u64 {
    let epoch = epoch_of(now_ns, slot_ns);
    window
        .slots
        .iter()
        .filter(|s| epoch.wrapping_sub(slot_epoch(**s)) < RATE_SLOTS as u64)
        .map(|s| slot_count(*s))
        .sum()
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{sync::Arc, thread, vec::Vec};

    const SEC: u64 = 1_000_000_000;

    fn count_at(window: &mut RateWindow, now: u64, slot: u64) -> u64 {
        unsafe { record_packet(window, now, slot) }
    }

    #[test]
    fn burst_counts_exactly() {
        let slot = slot_width_ns(2 * SEC);
        let mut w = first_packet(10 * SEC, slot);
        for n in 2..=41 {
            assert_eq!(count_at(&mut w, 10 * SEC + n * 1000, slot), n);
        }
    }

    #[test]
    fn packets_older_than_window_plus_one_slot_are_forgotten() {
        let window = 2 * SEC;
        let slot = slot_width_ns(window);
        let start = 100 * SEC;
        let mut w = first_packet(start, slot);
        for i in 1..40 {
            count_at(&mut w, start + i, slot);
        }
        // Still inside the window: everything counts.
        assert_eq!(count_at(&mut w, start + window - 1, slot), 41);
        // One window plus one slot later, the old packets are gone.
        let later = start + window + slot + 1;
        assert_eq!(count_at(&mut w, later, slot), 2);
    }

    #[test]
    fn never_late_any_window_with_too_many_packets_is_seen() {
        // 41 packets spread evenly over just under 2 s must reach a count of 41.
        let window = 2 * SEC;
        let slot = slot_width_ns(window);
        let start = 7 * SEC + 123_456_789;
        let step = (window - 1) / 40;
        let mut w = RateWindow::default();
        let mut last = 0;
        for i in 0..41 {
            last = count_at(&mut w, start + i * step, slot);
        }
        assert_eq!(last, 41);
    }

    #[test]
    fn slow_senders_stay_under_the_limit() {
        // 20 packets/s for a minute against "40 in 2 s": the count never
        // exceeds 40 * 8/7 + 1.
        let slot = slot_width_ns(2 * SEC);
        let mut w = RateWindow::default();
        let mut peak = 0;
        for i in 0..1200u64 {
            peak = peak.max(count_at(&mut w, SEC + i * SEC / 20, slot));
        }
        assert!(peak <= 40 * 8 / 7 + 1, "peak {peak}");
        assert!(peak >= 40, "peak {peak}");
    }

    #[test]
    fn a_remembered_slot_answers_as_the_division_does() {
        let mut cached = SlotEpoch::default();
        let w2 = slot_width_ns(2 * SEC);
        let w60 = slot_width_ns(60 * SEC);
        let mut now = 5 * SEC + 17;
        let mut misses = 0;
        // Every 3 ms for a while, across many slot boundaries, then a
        // rule whose width changed (a reload), then a clock set back.
        let times = (0..2_000u64)
            .map(|i| (now + i * 3_000_000, w2))
            .chain((0..50u64).map(|i| (now + i * 7_000_000, w60)))
            .chain([(now - SEC, w60), (0, w60), (u64::MAX, w60), (now, 0)])
            // Each side of a slot's edges.
            .chain([99, 100, 101].into_iter().flat_map(|k| {
                let edge = k * w2;
                [
                    (edge - 1, w2),
                    (edge, w2),
                    (edge + w2 - 1, w2),
                    (edge + w2, w2),
                ]
            }));
        for (t, width) in times {
            let before = cached;
            assert_eq!(
                cached.epoch_at(t, width),
                epoch_of(t, width),
                "at {t}, width {width}"
            );
            misses += (cached != before) as u32;
        }
        // One computation per slot entered, not per packet.
        assert!(misses < 40, "{misses} divisions");
        now += 1;
        assert_eq!(cached.epoch_at(now, w2), epoch_of(now, w2));
    }

    #[test]
    fn needed_multiplier_edges() {
        assert_eq!(needed_multiplier(40, 40), 1);
        assert_eq!(needed_multiplier(41, 40), 2);
        assert_eq!(needed_multiplier(80, 40), 2);
        assert_eq!(needed_multiplier(81, 40), 3);
        assert_eq!(needed_multiplier(5, 0), 5);
    }

    #[test]
    fn peer_multiplier_edges() {
        assert_eq!(peer_multiplier(None, 2, 200), 1);
        // No live user counts as one.
        assert_eq!(peer_multiplier(Some(0), 2, 200), 2);
        assert_eq!(peer_multiplier(Some(12), 2, 200), 24);
        assert_eq!(peer_multiplier(Some(100), 2, 200), 200);
        assert_eq!(peer_multiplier(Some(101), 2, 200), 200);
        assert_eq!(peer_multiplier(Some(u32::MAX), u16::MAX, u16::MAX), 65535);
        // A factor or cap of zero never makes a budget below the limit.
        assert_eq!(peer_multiplier(Some(5), 0, 200), 1);
        assert_eq!(peer_multiplier(Some(5), 2, 0), 1);
    }

    #[test]
    fn previous_slot_mask() {
        assert_eq!(is_previous_slot(100, 100), 0);
        for age in 1..RATE_SLOTS as u64 {
            assert_eq!(is_previous_slot(100, 100 - age), 1, "age {age}");
        }
        assert_eq!(is_previous_slot(100, 100 - RATE_SLOTS as u64), 0);
        assert_eq!(is_previous_slot(100, 0), 0);
        assert_eq!(is_previous_slot(100, 101), 0);
    }

    #[test]
    fn window_total_matches_recorded() {
        let slot = slot_width_ns(60 * SEC);
        let mut w = RateWindow::default();
        for i in 0..120u64 {
            count_at(&mut w, SEC + i * (SEC / 4), slot);
        }
        assert_eq!(window_total(&w, SEC + 119 * (SEC / 4), slot), 120);
    }

    #[test]
    fn two_threads_on_one_source_lose_no_packet() {
        struct Shared(std::cell::UnsafeCell<RateWindow>);
        unsafe impl Sync for Shared {}
        let shared = Arc::new(Shared(std::cell::UnsafeCell::new(RateWindow::default())));
        let slot = slot_width_ns(3600 * SEC);
        let per_thread = 100_000u64;
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let shared = Arc::clone(&shared);
                thread::spawn(move || {
                    let mut max_seen = 0;
                    for _ in 0..per_thread {
                        let n = unsafe { record_packet(shared.0.get(), 5 * SEC, slot) };
                        max_seen = max_seen.max(n);
                    }
                    max_seen
                })
            })
            .collect();
        let maxima: Vec<u64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(maxima.iter().copied().max(), Some(2 * per_thread));
        let total = window_total(unsafe { &*shared.0.get() }, 5 * SEC, slot);
        assert_eq!(total, 2 * per_thread);
    }
}
