//! The HEPv3 decoder on hostile bytes (a datagram, or the frames of a TCP
//! stream back to back), then what decodes fed to the SIP watcher as the
//! HEP input does: no panic, no read past a length, whatever the chunks say.
#![no_main]

use std::time::Instant;

use guard_userspace::{
    metrics::ControllerCounters,
    sip::{
        hep,
        hep_input::{HepSip, PbxAddresses},
        tracker::Tracker,
        watcher::Watch,
    },
};
use libfuzzer_sys::fuzz_target;
use sipguard_fuzz::default_auth_policy;

fuzz_target!(|data: &[u8]| {
    let mut watch = Watch::new(
        Tracker::new(default_auth_policy().clone()),
        ControllerCounters::default(),
        Some(PbxAddresses::default()),
    );
    let now = Instant::now();
    let mut rest = data;
    // As the TCP input frames a stream: by each header's total length.
    while let Ok(len) = hep::frame_len(rest) {
        let decoded = hep::decode(rest);
        if let Ok(packet) = decoded {
            assert_eq!(packet.len, len);
            assert!(packet.payload.len() < len);
            let sip = HepSip {
                src: packet.src,
                dst: packet.dst,
                ip_proto: packet.ip_proto,
                payload: packet.payload.to_vec(),
            };
            let _ = watch.hep(&sip, now);
        }
        if len > rest.len() || decoded.is_err() {
            break;
        }
        rest = &rest[len..];
    }
});
