//! The SIP reader on hostile bytes: `parse` and `parse_stream`, then every
//! accessor the watcher uses, then the tracker fed with what was read.
//! Input: one flags byte (bit 0: capture complete, bit 1: prune after each
//! message, bit 2: IPv6 source, bits 3..: the source's last part), then
//! the payload.
#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::OnceLock,
    time::{Duration, Instant},
};

use guard_userspace::{
    policy::config::Config,
    sip::{
        parser::{self, Message},
        tracker::{AuthPolicy, Tracker},
    },
};
use libfuzzer_sys::fuzz_target;

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

/// The default policy, as an empty config file gives it.
fn policy() -> &'static AuthPolicy {
    static POLICY: OnceLock<AuthPolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        Config::parse("", "empty.toml")
            .expect("the empty config is valid")
            .auth_policy()
    })
}

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
    let mut tracker = Tracker::new(policy().clone());
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
