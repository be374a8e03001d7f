//! What recent IPv4 sources' lookups answered, cached per CPU
//! (`SOURCE_CACHE`, one direct-mapped slot per source), so that a busy
//! source costs one array read instead of map and trie searches per packet:
//! - the services its allow-list entry grants, under the allow lists'
//!   generation;
//! - that it is in no ban, deny or fleet set, under the drop sets'
//!   generation (see `guard_common::SourceCacheEntry`).
use aya_ebpf::maps::lpm_trie::Key;
use guard_common::{source_cache_slot, SourceCacheEntry};

use crate::{
    maps::{ALLOW_GENERATION, ALLOW_V4, ALLOW_V6, DROP_GENERATION, SOURCE_CACHE},
    parse::Address,
};

/// Services the source's allow-list entry grants (0 when it has none).
#[inline(always)]
pub fn allow_mask(source: &Address) -> u32 {
    match source {
        Address::V4(addr) => allow_mask_v4(u32::from_le_bytes(*addr)),
        Address::V6(addr) => ALLOW_V6.get(Key::new(128, *addr)).copied().unwrap_or(0),
    }
}

/// The answer for IPv4 source `addr` (its bytes in memory order): from
/// this CPU's cache slot if it holds `addr` under the current generation,
/// else the trie's, cached under the generation read before the search
/// (a change made meanwhile bumps it, and the next packet searches again).
/// Before the controller first writes a generation (0), nothing is cached.
#[inline(always)]
fn allow_mask_v4(addr: u32) -> u32 {
    let generation = ALLOW_GENERATION.get(0).copied().unwrap_or(0);
    if generation == 0 {
        return search_allow_v4(addr);
    }
    let Some(slot) = SOURCE_CACHE.get_ptr_mut(source_cache_slot(addr)) else {
        return search_allow_v4(addr);
    };
    // SAFETY: this CPU's slot; nothing else writes it while we run.
    unsafe {
        if (*slot).addr == addr && (*slot).generation == generation {
            return (*slot).mask;
        }
        let mask = search_allow_v4(addr);
        claim(slot, addr);
        (*slot).generation = generation;
        (*slot).mask = mask;
        mask
    }
}

/// Makes `slot` the slot of `addr`: one another source held is taken
/// whole, both its answers left unknown; the source's own keeps them.
///
/// # Safety
/// `slot` is this CPU's live `SOURCE_CACHE` value, written by nothing else
/// while the program runs.
#[inline(always)]
unsafe fn claim(slot: *mut SourceCacheEntry, addr: u32) {
    unsafe {
        if (*slot).addr != addr {
            *slot = SourceCacheEntry {
                addr,
                ..SourceCacheEntry::default()
            };
        }
    }
}

#[inline(always)]
fn search_allow_v4(addr: u32) -> u32 {
    ALLOW_V4
        .get(Key::new(32, addr.to_le_bytes()))
        .copied()
        .unwrap_or(0)
}

/// The drop sets' generation now (0 until the first change).
#[inline(always)]
fn drop_generation() -> u64 {
    DROP_GENERATION.get(0).copied().unwrap_or(0)
}

/// Bumps the drop sets' generation; called after the program made a ban,
/// so that no CPU keeps the source as clear.
#[inline(always)]
pub fn bump_drop_generation() {
    if let Some(word) = DROP_GENERATION.get_ptr_mut(0) {
        // SAFETY: a live map value, changed here only atomically.
        unsafe { guard_common::atomic::fetch_add(word, 1) };
    }
}

/// Whether IPv4 source `addr` is known to be in no drop set: `Ok(())` if
/// this CPU's slot holds it as clear under the current generation; else
/// the stamp to remember it under if the searches find it in none: the
/// generation, read before them, or 0 for a source the slot does not hold
/// yet. The generation is read only for the slot's own source, so a source
/// seen for the first time (or one that is banned, never remembered as
/// clear) costs one slot read; a clear source is remembered from its second
/// packet on.
#[inline(always)]
pub fn clear_v4(addr: u32) -> Result<(), u64> {
    let Some(slot) = SOURCE_CACHE.get_ptr(source_cache_slot(addr)) else {
        return Err(0);
    };
    // SAFETY: this CPU's slot, read only.
    let (held, stamp) = unsafe { ((*slot).addr, (*slot).clear_stamp) };
    if held != addr {
        return Err(0);
    }
    let generation = drop_generation();
    if generation != 0 && stamp == generation {
        Ok(())
    } else {
        Err(generation)
    }
}

/// Remembers IPv4 source `addr` as clear under `stamp` (from [`clear_v4`]:
/// read before the searches that found it in no drop set; 0 takes the slot
/// for the source without remembering it as clear; see [`claim`]).
#[inline(always)]
pub fn note_clear_v4(addr: u32, stamp: u64) {
    let Some(slot) = SOURCE_CACHE.get_ptr_mut(source_cache_slot(addr)) else {
        return;
    };
    // SAFETY: this CPU's slot; nothing else writes it while we run.
    unsafe {
        claim(slot, addr);
        (*slot).clear_stamp = stamp;
    }
}
