//! The control socket's request decoding, as the server does it: one line
//! of JSON into an `Envelope`. What decodes must survive the wire again.
#![no_main]

use guard_userspace::control::protocol::{Envelope, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_REQUEST {
        return;
    }
    // The server reads a line as UTF-8 text; other bytes never reach serde.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(envelope) = serde_json::from_str::<Envelope>(line) {
        let again = serde_json::to_string(&envelope).expect("an envelope encodes");
        let back: Envelope = serde_json::from_str(&again).expect("an encoded envelope decodes");
        assert_eq!(back, envelope);
    }
});
