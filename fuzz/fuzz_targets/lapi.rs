//! The CrowdSec LAPI's decision stream on hostile bytes: the body decoder,
//! then every decision through the bouncer's book (durations, scopes,
//! filters, deletes by id) and its expiry, as the bouncer does with a real
//! answer. No panic, whatever a hostile or broken LAPI sends.
#![no_main]

use std::sync::OnceLock;

use guard_userspace::fleet::{config::CrowdsecSection, decisions::Book, lapi::Stream};
use libfuzzer_sys::fuzz_target;

/// Both scopes and a scenario filter, so every branch of the book is open.
fn section() -> &'static CrowdsecSection {
    static SECTION: OnceLock<CrowdsecSection> = OnceLock::new();
    SECTION.get_or_init(|| {
        serde_json::from_str(
            r#"{"lapi_url": "http://127.0.0.1:8080", "bouncer_api_key": "k",
                "scopes": ["ip", "range"], "scenarios_not_containing": ["ssh"]}"#,
        )
        .expect("a valid crowdsec section")
    })
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the IPv6 ban prefix, within what the config allows (1..=128).
    let Some((&prefix, body)) = data.split_first() else {
        return;
    };
    let Ok(stream) = Stream::parse(body) else {
        return;
    };
    let mut book = Book::default();
    let now_ns = 1_000_000_000_000;
    let (changes, tally) = book.apply(stream, section(), prefix % 128 + 1, now_ns);
    // A new decision touches at most two targets (a resent id moves), a delete one.
    assert!(changes.len() <= 2 * tally.new as usize + tally.deleted as usize);
    let _ = book.expire(u64::MAX);
    assert!(
        book.is_empty(),
        "every decision runs out at the end of time"
    );
});
