//! Table-driven cases for the request reader (every header form, line end
//! and boundary), and properties on arbitrary bytes.
use super::*;

extern crate std;
use std::{format, string::String, vec::Vec};

/// What a case expects; `None` for a user means "not present".
struct Case {
    name: &'static str,
    message: &'static str,
    status: ScanStatus,
    method: SipMethod,
    request_user: Option<&'static str>,
    from_user: Option<&'static str>,
    to_user: Option<&'static str>,
    auth_user: Option<&'static str>,
    agent: Option<&'static str>,
}

const BASE: Case = Case {
    name: "",
    message: "",
    status: ScanStatus::Complete,
    method: SipMethod::Register,
    request_user: None,
    from_user: Some("1001"),
    to_user: Some("1001"),
    auth_user: None,
    agent: None,
};

fn text(field: &SipField<USER_BYTES>) -> Option<String> {
    field
        .present()
        .then(|| String::from_utf8_lossy(field.value()).into_owned())
}

fn check(case: &Case) {
    let out = scan(case.message.as_bytes(), &PatternTable::EMPTY);
    let name = case.name;
    assert_eq!(out.status, case.status, "{name}: status");
    assert_eq!(out.method, case.method, "{name}: method");
    assert_eq!(
        text(&out.request_user).as_deref(),
        case.request_user,
        "{name}: Request-URI user"
    );
    assert_eq!(
        text(&out.from_user).as_deref(),
        case.from_user,
        "{name}: From user"
    );
    assert_eq!(
        text(&out.to_user).as_deref(),
        case.to_user,
        "{name}: To user"
    );
    assert_eq!(
        text(&out.auth_user).as_deref(),
        case.auth_user,
        "{name}: auth user"
    );
    let agent = out
        .user_agent
        .present()
        .then(|| String::from_utf8_lossy(out.user_agent.value()).into_owned());
    assert_eq!(agent.as_deref(), case.agent, "{name}: User-Agent");
    // The chunked reader and the plain byte loop agree.
    assert_eq!(
        out,
        bytewise(case.message.as_bytes(), &PatternTable::EMPTY),
        "{name}: chunks"
    );
}

/// The reader's plain byte loop, passing over unread bytes: what the XDP
/// program's runs must agree with.
pub(crate) fn bytewise(payload: &[u8], table: &PatternTable) -> SipSummary {
    let mut scanner = SipScan::new();
    scanner.reset();
    for &byte in &payload[..payload.len().min(SCAN_BYTES)] {
        if scanner.skips(byte) {
            continue;
        }
        if !scanner.step_classed(byte, table.class[byte as usize], table) {
            break;
        }
    }
    scanner.finish();
    scanner.out
}

const REGISTER: &str = "REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: \"Alice\" <sip:1001@pbx.example.com>\r\n\
From: \"Alice\" <sip:1001@pbx.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@192.0.2.10\r\n\
CSeq: 314159 REGISTER\r\n\
Contact: <sip:1001@192.0.2.10:5060>\r\n\
Authorization: Digest username=\"1001\", realm=\"pbx\", nonce=\"abc\", uri=\"sip:pbx.example.com\", response=\"0123\"\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";

#[test]
fn header_forms() {
    let cases = [
        Case {
            name: "register with credentials",
            message: REGISTER,
            auth_user: Some("1001"),
            agent: Some("Yealink SIP-T46S 66.86.0.15"),
            ..BASE
        },
        Case {
            name: "compact forms, lower case",
            message: "REGISTER sip:pbx SIP/2.0\r\nf: <sip:200@pbx>;tag=1\r\nt: sip:200@pbx\r\nm: <sip:200@10.0.0.1>\r\nuser-agent: x\r\n\r\n",
            from_user: Some("200"),
            to_user: Some("200"),
            agent: Some("x"),
            ..BASE
        },
        Case {
            name: "upper-case names, blanks before the colon",
            message: "OPTIONS sip:100@pbx SIP/2.0\r\nFROM : <sip:a@h>\r\nTO\t: <sip:b@h>\r\nUSER-AGENT: friendly-scanner\r\n\r\n",
            method: SipMethod::Options,
            request_user: Some("100"),
            from_user: Some("a"),
            to_user: Some("b"),
            agent: Some("friendly-scanner"),
            ..BASE
        },
        Case {
            name: "LF-only line ends",
            message: "INVITE sip:0044123@pbx SIP/2.0\nFrom: <sip:7@pbx>;tag=x\nTo: <sip:0044123@pbx>\nUser-Agent: pplsip\n\n",
            method: SipMethod::Invite,
            request_user: Some("0044123"),
            from_user: Some("7"),
            to_user: Some("0044123"),
            agent: Some("pplsip"),
            ..BASE
        },
        Case {
            name: "folded User-Agent and From",
            message: "REGISTER sip:pbx SIP/2.0\r\nUser-Agent: sip\r\n \t vicious\r\nFrom:\r\n \"x\"\r\n\t<sip:55@pbx>\r\nTo: <sip:55@pbx>\r\n\r\n",
            from_user: Some("55"),
            to_user: Some("55"),
            agent: Some("sip vicious"),
            ..BASE
        },
        Case {
            name: "missing headers",
            message: "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n",
            from_user: None,
            to_user: None,
            ..BASE
        },
        Case {
            name: "duplicated headers keep the first",
            message: "REGISTER sip:pbx SIP/2.0\r\nFrom: <sip:1@h>\r\nFrom: <sip:2@h>\r\nTo: <sip:3@h>\r\nt: <sip:4@h>\r\nUser-Agent: a\r\nUser-Agent: b\r\n\r\n",
            from_user: Some("1"),
            to_user: Some("3"),
            agent: Some("a"),
            ..BASE
        },
        Case {
            name: "addr-spec without brackets ends at ';'",
            message: "REGISTER sip:pbx SIP/2.0\r\nFrom: sip:alice@h;tag=1\r\nTo: sip:bob@h\r\n\r\n",
            from_user: Some("alice"),
            to_user: Some("bob"),
            ..BASE
        },
        Case {
            name: "URI without user, tel URI, sips",
            message: "INVITE tel:+441234;phone-context=x SIP/2.0\r\nFrom: <sip:h.example>;tag=1\r\nTo: <sips:carol@h>\r\n\r\n",
            method: SipMethod::Invite,
            request_user: Some("+441234"),
            from_user: None,
            to_user: Some("carol"),
            ..BASE
        },
        Case {
            name: "user with ';' inside brackets and on the request line",
            message: "INVITE sip:00;x=1@h SIP/2.0\r\nFrom: \"<sip:fake@h>\" <sip:a;b@h>\r\nTo: Bob <sip:b@h>\r\n\r\n",
            method: SipMethod::Invite,
            request_user: Some("00;x=1"),
            from_user: Some("a;b"),
            to_user: Some("b"),
            ..BASE
        },
        Case {
            name: "escaped quote in the display name",
            message: "REGISTER sip:pbx SIP/2.0\r\nFrom: \"a\\\"<sip:no@h>\" <sip:yes@h>\r\nTo: <sip:t@h>\r\n\r\n",
            from_user: Some("yes"),
            to_user: Some("t"),
            ..BASE
        },
        Case {
            name: "Proxy-Authorization, token username, other params first",
            message: "INVITE sip:9@h SIP/2.0\r\nproxy-authorization: Digest realm=\"x,username=\\\"no\\\"\", UserName = bob ,nonce=1\r\nFrom: <sip:bob@h>\r\nTo: <sip:9@h>\r\n\r\n",
            method: SipMethod::Invite,
            request_user: Some("9"),
            from_user: Some("bob"),
            to_user: Some("9"),
            auth_user: Some("bob"),
            ..BASE
        },
        Case {
            name: "usernamex is not username",
            message: "REGISTER sip:pbx SIP/2.0\r\nAuthorization: Digest usernamex=\"a\", username=\"b\"\r\n\r\n",
            from_user: None,
            to_user: None,
            auth_user: Some("b"),
            ..BASE
        },
        Case {
            name: "unknown method",
            message: "FOO sip:1@h SIP/2.0\r\n\r\n",
            method: SipMethod::Other,
            request_user: Some("1"),
            from_user: None,
            to_user: None,
            ..BASE
        },
        Case {
            name: "headers cut before the blank line",
            message: "REGISTER sip:pbx SIP/2.0\r\nFrom: <sip:1@h>\r\nTo: <sip:2@h>\r\nUser-Agent: cut her",
            status: ScanStatus::Partial,
            from_user: Some("1"),
            to_user: Some("2"),
            agent: Some("cut her"),
            ..BASE
        },
        Case {
            name: "user cut by the end of input is unknown",
            message: "REGISTER sip:pbx SIP/2.0\r\nFrom: <sip:10",
            status: ScanStatus::Partial,
            from_user: None,
            to_user: None,
            ..BASE
        },
        Case {
            name: "body is not read",
            message: "MESSAGE sip:1@h SIP/2.0\r\nTo: <sip:1@h>\r\n\r\nUser-Agent: friendly-scanner\r\n",
            method: SipMethod::Message,
            request_user: Some("1"),
            from_user: None,
            to_user: Some("1"),
            ..BASE
        },
    ];
    for case in &cases {
        check(case);
    }
}

#[test]
fn unreadable_inputs() {
    let unreadable = [
        ("response", "SIP/2.0 200 OK\r\n\r\n"),
        ("empty", ""),
        ("keep-alive", "\r\n\r\n"),
        ("no version", "REGISTER sip:pbx\r\n\r\n"),
        ("wrong version", "REGISTER sip:pbx SIP/3.0\r\n\r\n"),
        ("http", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "header without colon",
            "REGISTER sip:pbx SIP/2.0\r\nFrom <sip:1@h>\r\n\r\n",
        ),
        (
            "CR without LF at line start",
            "REGISTER sip:pbx SIP/2.0\r\n\rX: y\r\n\r\n",
        ),
        (
            "method too long",
            "ABCDEFGHIJKLMNOPQ sip:1@h SIP/2.0\r\n\r\n",
        ),
        ("binary", "\u{0}\u{1}\u{2}"),
        ("request line cut", "REGISTER sip:p"),
    ];
    for (name, message) in unreadable {
        let out = scan(message.as_bytes(), &PatternTable::EMPTY);
        assert_eq!(out.status, ScanStatus::Unreadable, "{name}");
        assert_eq!(
            out,
            bytewise(message.as_bytes(), &PatternTable::EMPTY),
            "{name}"
        );
    }
}

#[test]
fn methods() {
    for (text, method) in [
        ("REGISTER", SipMethod::Register),
        ("INVITE", SipMethod::Invite),
        ("OPTIONS", SipMethod::Options),
        ("SUBSCRIBE", SipMethod::Subscribe),
        ("NOTIFY", SipMethod::Notify),
        ("MESSAGE", SipMethod::Message),
        ("ACK", SipMethod::Ack),
        ("BYE", SipMethod::Bye),
        ("CANCEL", SipMethod::Cancel),
        ("INFO", SipMethod::Info),
        ("PRACK", SipMethod::Prack),
        ("UPDATE", SipMethod::Update),
        ("REFER", SipMethod::Refer),
        ("PUBLISH", SipMethod::Publish),
        // Methods are case-sensitive (RFC 3261 7.1).
        ("register", SipMethod::Other),
        ("REGISTERX", SipMethod::Other),
    ] {
        let message = format!("{text} sip:pbx SIP/2.0\r\n\r\n");
        assert_eq!(
            scan(message.as_bytes(), &PatternTable::EMPTY).method,
            method,
            "{text}"
        );
    }
}

#[test]
fn long_values_are_truncated_not_lost() {
    let user = "9".repeat(40);
    let agent = "A".repeat(300);
    let message = format!(
        "INVITE sip:{user}@h SIP/2.0\r\nFrom: <sip:{user}@h>\r\nUser-Agent: {agent}\r\nTo: <sip:2@h>\r\n\r\n"
    );
    let out = scan(message.as_bytes(), &PatternTable::EMPTY);
    assert_eq!(out.status, ScanStatus::Complete);
    for field in [&out.request_user, &out.from_user] {
        assert!(field.present() && !field.complete());
        assert_eq!(field.value(), &user.as_bytes()[..USER_BYTES]);
    }
    assert_eq!(out.user_agent.value(), &agent.as_bytes()[..AGENT_BYTES]);
    assert!(out.user_agent.flags & FIELD_TRUNCATED != 0);
    assert_eq!(text(&out.to_user).as_deref(), Some("2"));
}

#[test]
fn only_the_first_scan_bytes_are_read() {
    // The To header starts past SCAN_BYTES: never seen.
    let filler = format!("X-Pad: {}\r\n", "p".repeat(SCAN_BYTES));
    let message = format!("REGISTER sip:pbx SIP/2.0\r\n{filler}To: <sip:1@h>\r\n\r\n");
    let out = scan(message.as_bytes(), &PatternTable::EMPTY);
    assert_eq!(out.status, ScanStatus::Partial);
    assert!(!out.to_user.present());
}

#[test]
fn reset_forgets_the_previous_message() {
    let mut scanner = SipScan::new();
    for message in [REGISTER, "OPTIONS sip:pbx SIP/2.0\r\n\r\n"] {
        scanner.reset();
        for &byte in message.as_bytes() {
            scanner.step(byte, &PatternTable::EMPTY);
        }
        scanner.finish();
    }
    assert_eq!(
        scanner.out,
        scan(b"OPTIONS sip:pbx SIP/2.0\r\n\r\n", &PatternTable::EMPTY)
    );
}

#[test]
fn byte_mask_finds_the_first_of_every_position() {
    for position in 0..8 {
        for later in position..8 {
            let mut word = [b'a'; 8];
            word[position] = b'\n';
            word[later] = b'\n';
            let mask = byte_mask(u64::from_le_bytes(word), b'\n');
            assert_eq!(first_flagged(mask), position);
        }
    }
    assert_eq!(byte_mask(u64::from_le_bytes(*b"abcdefgh"), b'\n'), 0);
    assert_eq!(byte_mask(u64::from_le_bytes([0x8a; 8]), b'\n'), 0);
}

/// Each name the runs match starts the header the byte loop finds from
/// the name's packed words.
#[test]
fn known_names_start_the_byte_loops_headers() {
    let names: [(&[u8], &KnownName); 20] = [
        (b"via", &K_VIA),
        (b"v", &K_V),
        (b"max-forwards", &K_MAX_FORWARDS),
        (b"m", &K_M),
        (b"to", &K_TO),
        (b"t", &K_T),
        (b"from", &K_FROM),
        (b"f", &K_F),
        (b"call-id", &K_CALL_ID),
        (b"cseq", &K_CSEQ),
        (b"contact", &K_CONTACT),
        (b"content-length", &K_CONTENT_LENGTH),
        (b"content-type", &K_CONTENT_TYPE),
        (b"i", &K_I),
        (b"l", &K_L),
        (b"authorization", &K_AUTHORIZATION),
        (b"allow", &K_ALLOW),
        (b"user-agent", &K_USER_AGENT),
        (b"supported", &K_SUPPORTED),
        (b"expires", &K_EXPIRES),
    ];
    for (text, known) in names {
        let mut scanner = SipScan::new();
        scanner.reset();
        scanner.name = pack(text);
        scanner.name_len = text.len() as u8;
        scanner.start_value(&PatternTable::EMPTY);
        let name = String::from_utf8_lossy(text);
        assert_eq!(scanner.header, known.header, "{name}");
        assert_eq!(known.len as usize, text.len(), "{name}");
        let mut line = [0u8; 16];
        line[..text.len()].copy_from_slice(text);
        line[text.len()] = b':';
        let w0 = u64::from_le_bytes(line[..8].try_into().unwrap());
        let w1 = u64::from_le_bytes(line[8..].try_into().unwrap());
        assert!(is_name(w0, w1, known), "{name}");
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// SIP-like input: fragments of real messages mixed with noise, so the
    /// deep states are reached, not just the first byte's refusal.
    fn sipish() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"REGISTER sip:1@h SIP/2.0\r\n".to_vec()),
            Just(b"From: \"a\\\"b\" <sip:".to_vec()),
            Just(b"t: sip:".to_vec()),
            Just(b"Authorization: Digest username=\"".to_vec()),
            Just(b"User-Agent: ".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\n ".to_vec()),
            Just(b"@;<>\",\\ \t:".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ];
        proptest::collection::vec(piece, 0..60).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Never panics on any input, stays within its copies, and the
        /// word-skipping reader agrees with the byte loop.
        #[test]
        fn arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let out = scan(&input, &PatternTable::EMPTY);
            prop_assert_eq!(out, bytewise(&input, &PatternTable::EMPTY));
            prop_assert!(out.user_agent.len as usize <= AGENT_BYTES);
        }

        #[test]
        fn sip_like_bytes(input in sipish()) {
            let out = scan(&input, &PatternTable::EMPTY);
            prop_assert_eq!(out, bytewise(&input, &PatternTable::EMPTY));
            for field in [&out.request_user, &out.from_user, &out.to_user, &out.auth_user] {
                prop_assert!(field.len as usize <= USER_BYTES);
            }
        }
    }
}
