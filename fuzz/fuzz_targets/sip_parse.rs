//! The SIP reader on hostile bytes: `parse` and `parse_stream`, then every
//! accessor the watcher uses, then the tracker fed with what was read.
//! Input: one flags byte (bit 0: capture complete, bit 1: prune after each
//! message, bit 2: IPv6 source, bits 3..: the source's last part), then
//! the payload.
#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use guard_userspace::sip::{
    parser::{self, Message},
    tracker::{Capacities, Tracker},
};
use libfuzzer_sys::fuzz_target;
use sipguard_fuzz::default_auth_policy;

fn touch(message: &Message<'_>) {
    let _ = message.method();
    let _ = message.status();
    let _ = message.stale();
    let _ = message.registration_expiry();
    let _ = message.transaction_ids();
    let _ = message.is_method("REGISTER");
    for value in [message.from, message.to].into_iter().flatten() {
        if let Some(user) = parser::uri_user(value) {
            let _ = parser::display(&user);
        }
    }
    for contact in &message.contact {
        let _ = parser::uri_user(contact);
    }
    for credentials in &message.credentials {
        if let Some(user) = &credentials.username {
            let _ = parser::display(user);
        }
    }
}

/// A few entries per table, two transactions per source.
const SMALL: Capacities = Capacities {
    pending: 4,
    pending_per_source: 2,
    probation_nonces: 4,
    protected_nonces: 4,
    live_sources: 4,
    suspects: 4,
    sources: 4,
    offences: 4,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, payload)) = data.split_first() else {
        return;
    };
    let complete = flags & 1 == 1;
    if let Ok((message, used)) = parser::parse(payload, complete) {
        assert!(
            used >= 1 && used <= payload.len(),
            "{used} of {}",
            payload.len()
        );
        touch(&message);
    }
    let messages = parser::parse_stream(payload, complete);
    // Small tables: the default ones (65,536 entries each, allocated up
    // front) cost more than the parsing, and a few entries make every
    // input run through eviction too.
    let mut tracker = Tracker::with_capacities(default_auth_policy().clone(), SMALL);
    let start = Instant::now();
    let peer = if flags & 4 == 0 {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, flags >> 3))
    } else {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            0,
            u16::from(flags >> 3),
        ))
    };
    for (i, message) in messages.iter().enumerate() {
        let Ok(message) = message else { continue };
        touch(message);
        let now = start + Duration::from_millis(i as u64);
        // Requests in, answers out: each message both ways, so that a
        // stream of replayed requests and answers drives the matching.
        tracker.on_request(now, peer, message);
        let _ = tracker.on_response(now, peer, message);
        if flags & 2 == 2 {
            tracker.prune(now + Duration::from_secs(60));
        }
    }
});
