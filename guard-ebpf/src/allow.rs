//! The allow lists from the kernel's side: which services a source's
//! allow-list entry grants. An IPv4 source's answer is cached per CPU
//! (`ALLOW_CACHE`) under the allow lists' generation, so that a busy
//! source costs one array read instead of a trie search per packet.
use aya_ebpf::maps::lpm_trie::Key;
use guard_common::{allow_cache_slot, AllowCacheEntry};

use crate::{
    maps::{ALLOW_CACHE, ALLOW_GENERATION, ALLOW_V4, ALLOW_V6},
    parse::Address,
};

/// Services the source's allow-list entry grants (0 when it has none).
#[inline(always)]
pub fn mask(source: &Address) -> u32 {
    match source {
        Address::V4(addr) => mask_v4(u32::from_le_bytes(*addr)),
        Address::V6(addr) => ALLOW_V6.get(Key::new(128, *addr)).copied().unwrap_or(0),
    }
}

/// The answer for IPv4 source `addr` (its bytes in memory order): from
/// this CPU's cache slot if it holds `addr` under the current generation,
/// else the trie's, cached under the generation read before the search
/// (a change made meanwhile bumps it, and the next packet searches again).
/// Before the controller first writes a generation (0), nothing is cached.
#[inline(always)]
fn mask_v4(addr: u32) -> u32 {
    let generation = ALLOW_GENERATION.get(0).copied().unwrap_or(0);
    if generation == 0 {
        return search_v4(addr);
    }
    let Some(slot) = ALLOW_CACHE.get_ptr_mut(allow_cache_slot(addr)) else {
        return search_v4(addr);
    };
    // SAFETY: this CPU's slot; nothing else writes it while we run.
    unsafe {
        if (*slot).addr == addr && (*slot).generation == generation {
            return (*slot).mask;
        }
        let mask = search_v4(addr);
        *slot = AllowCacheEntry {
            addr,
            generation,
            mask,
            _pad: 0,
        };
        mask
    }
}

#[inline(always)]
fn search_v4(addr: u32) -> u32 {
    ALLOW_V4
        .get(Key::new(32, addr.to_le_bytes()))
        .copied()
        .unwrap_or(0)
}
