//! The state-file loaders on hostile bytes: `bans.json` (then each ban
//! turned back into a kernel map entry) and `lists.json`.
#![no_main]

use guard_userspace::state::{parse_bans, parse_lists, Clocks};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, payload)) = data.split_first() else {
        return;
    };
    if flags & 1 == 0 {
        if let Ok(bans) = parse_bans(payload) {
            let clocks = Clocks {
                monotonic_ns: 5_000_000_000_000,
                unix: 1_800_000_000,
            };
            let rule_names = ["sip-flood".to_string(), "sip-burst".to_string()];
            let prefix = flags >> 1; // 0..=127: out-of-range prefixes included
            for ban in &bans {
                let _ = ban.to_entry(&rule_names, clocks, prefix);
            }
        }
    } else if let Ok(lists) = parse_lists(payload) {
        // Canonical form is a fixed point.
        assert_eq!(lists.clone().canonical(), lists);
    }
});
