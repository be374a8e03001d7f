//! The config loader on hostile bytes, non-UTF-8 included: the text a file
//! gives (`config_text`), its parse and validation, then everything the
//! daemon derives from a config that passed.
#![no_main]

use guard_userspace::policy::config::{config_text, Config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = match config_text(data.to_vec()) {
        Ok(text) => text,
        Err((_, reason)) => {
            assert!(!reason.is_empty());
            return;
        }
    };
    match Config::parse(&text, "fuzz.toml") {
        Ok(config) => {
            let _ = config.services();
            for rule in config.rate_rules() {
                let _ = config.rule_ranges(&rule);
            }
            let _ = config.auth_policy();
        }
        Err(e) => {
            if let Some(line) = e.line {
                // A line number points into the file.
                assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "{e}");
            }
            let _ = e.to_string();
        }
    }
});
