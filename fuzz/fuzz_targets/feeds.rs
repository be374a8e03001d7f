//! Blocklist feeds on hostile bytes: a list (VoIPBL, FireHOL...) through
//! `fleet::feeds::list::parse_list` and its check, and an APIBan answer
//! through `fleet::feeds::apiban::parse_page` under any HTTP status. No
//! panic, and what is taken obeys the limits: at most `max_entries`
//! entries, none broader than a feed may list, no private or special-use
//! network unless asked, and an APIBan cursor that is safe in a URL.
#![no_main]

use guard_userspace::fleet::feeds::{
    apiban::{parse_page, Page},
    list::{is_special, is_too_broad, parse_list, Limits},
};
use libfuzzer_sys::fuzz_target;

/// HTTP statuses an APIBan answer comes with.
const STATUSES: [u16; 8] = [200, 400, 401, 403, 404, 429, 500, 503];

fuzz_target!(|data: &[u8]| {
    // The first byte: bit 0 list or page; bit 1 include_private; bits 2..
    // the page's status, or the list's max_entries (1..=64).
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    if flags & 1 == 0 {
        let limits = Limits {
            max_entries: usize::from(flags >> 2) + 1,
            include_private: flags & 2 != 0,
        };
        let Ok(parsed) = parse_list(body, &limits) else {
            return;
        };
        assert!(parsed.nets.len() <= limits.max_entries);
        for net in &parsed.nets {
            assert_eq!(*net, net.trunc(), "host bits cleared");
            assert!(!is_too_broad(net), "{net} is too broad");
            assert!(
                limits.include_private || !is_special(net),
                "{net} is private"
            );
        }
        let _ = parsed.check(flags & 4 != 0);
    } else {
        let status = STATUSES[usize::from(flags >> 2) % STATUSES.len()];
        if let Ok(Page::More { next, .. }) = parse_page(status, body, "100") {
            assert_eq!(status, 200);
            assert!(!next.is_empty() && next.len() <= 64 && next != "100");
            assert!(next
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }
});
