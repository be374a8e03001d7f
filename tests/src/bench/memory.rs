//! Kernel memory of sipguard's maps, as the kernel accounts it
//! (`memlock` in /proc/self/fdinfo: the map's actual memory use on 6.x).
use std::{collections::BTreeMap, fs};

use anyhow::{Context, Result};

use crate::Harness;

/// map id -> bytes, for every BPF map this process holds open.
fn memlock_by_map_id() -> Result<BTreeMap<u32, u64>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir("/proc/self/fdinfo")? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) {
            out.insert(id as u32, bytes);
        }
    }
    Ok(out)
}

/// Ids of the maps the harness's programs use.
fn harness_map_ids(h: &mut Harness) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for (_, program) in h.guard.ebpf.programs() {
        if let Ok(info) = program.info() {
            ids.extend(info.map_ids()?.unwrap_or_default());
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

fn map_name(id: u32) -> String {
    aya::maps::MapInfo::from_id(id)
        .ok()
        .and_then(|i| i.name_as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Bytes the kernel charges for the harness's map named `name`.
pub fn map_memory(h: &mut Harness, name: &str) -> Result<u64> {
    let short = &name[..name.len().min(15)];
    let memlock = memlock_by_map_id()?;
    harness_map_ids(h)?
        .into_iter()
        .find(|id| map_name(*id) == short)
        .and_then(|id| memlock.get(&id).copied())
        .with_context(|| format!("no memlock figure for map {name}"))
}

/// (map name, bytes) for every map of the harness, and their total.
pub fn all_maps(h: &mut Harness) -> Result<(Vec<(String, u64)>, u64)> {
    let memlock = memlock_by_map_id()?;
    let mut rows: Vec<(String, u64)> = harness_map_ids(h)?
        .into_iter()
        .filter_map(|id| memlock.get(&id).map(|bytes| (map_name(id), *bytes)))
        .collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1));
    let total = rows.iter().map(|(_, b)| b).sum();
    Ok((rows, total))
}
