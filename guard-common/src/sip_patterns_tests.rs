//! The compiled automaton against the aho-corasick crate, and the reader
//! with fingerprints.
use super::*;
use crate::sip_scan::{scan, ScanStatus};

extern crate std;
use std::{format, string::String, vec::Vec};

fn ua(text: &str) -> Pattern<'_> {
    Pattern {
        field: PatternField::UserAgent,
        text: text.as_bytes(),
        prefix: false,
    }
}

#[test]
fn substring_prefix_and_fields() {
    let patterns = [
        ua("friendly-scanner"),
        Pattern {
            prefix: true,
            ..ua("sip")
        },
        Pattern {
            field: PatternField::From,
            text: b"sipvicious",
            prefix: false,
        },
        ua("VaxSIPUserAgent"),
    ];
    let table = compile(&patterns).expect("compiles");
    let cases: [(PatternField, &str, Option<u16>); 10] = [
        (PatternField::UserAgent, "friendly-scanner", Some(1)),
        (PatternField::UserAgent, "x FRIENDLY-Scanner 1.0", Some(1)),
        (PatternField::UserAgent, "friendly-scanne", None),
        (PatternField::UserAgent, "sipcli/v1.8", Some(2)),
        (PatternField::UserAgent, "my sip phone", None),
        (PatternField::UserAgent, "vaxsipuseragent/3.1", Some(4)),
        (
            PatternField::From,
            "\"sipvicious\"<sip:100@1.1.1.1>",
            Some(3),
        ),
        (PatternField::From, "friendly-scanner", None),
        (PatternField::To, "sipvicious", None),
        (PatternField::Contact, "sip", None),
    ];
    for (field, value, expected) in cases {
        assert_eq!(
            table.first_match(field, value.as_bytes()),
            expected,
            "{field:?} {value}"
        );
    }
}

#[test]
fn overlapping_patterns_report_the_first_to_end() {
    // "scan" ends inside "friendly-scanner": the failure links must carry it.
    let table = compile(&[ua("friendly-scanner"), ua("scan")]).expect("compiles");
    assert_eq!(
        table.first_match(PatternField::UserAgent, b"friendly-scanner"),
        Some(2)
    );
    let table = compile(&[ua("abcd"), ua("bc")]).expect("compiles");
    assert_eq!(table.first_match(PatternField::UserAgent, b"abcd"), Some(2));
    assert_eq!(table.first_match(PatternField::UserAgent, b"xbcx"), Some(2));
}

#[test]
fn refused_patterns() {
    assert_eq!(
        compile(&[ua("")]).err(),
        Some(PatternError::Empty { number: 1 })
    );
    assert_eq!(
        compile(&[ua("ok"), ua("a\r\nb")]).err(),
        Some(PatternError::LineBreak { number: 2 })
    );
    let long: String = "ab".repeat(PATTERN_STATES);
    assert!(matches!(
        compile(&[ua(&long)]).err(),
        Some(PatternError::TooManyStates { .. })
    ));
    let alphabet: Vec<String> = (0u8..70)
        .map(|i| format!("{}", (b'!' + i) as char))
        .collect();
    let many: Vec<Pattern<'_>> = alphabet.iter().map(|s| ua(s)).collect();
    assert_eq!(compile(&many).err(), Some(PatternError::TooManyClasses));
}

#[test]
fn keys_are_the_rarest_letter_every_pattern_holds() {
    let field = |field, text: &'static str| Pattern {
        field,
        text: text.as_bytes(),
        prefix: false,
    };
    let table = compile(&[
        ua("friendly-scanner"),
        Pattern {
            prefix: true,
            ..ua("SIPCLI")
        },
        field(PatternField::From, "sipvicious"),
        field(PatternField::To, "x@y"),
        field(PatternField::To, "Y-z"),
    ])
    .expect("compiles");
    // User-Agent: s, i, c and l are common to both; l is the rarest. No
    // Contact patterns: no key.
    assert_eq!(table.keys, [b'l', b'v', b'y', 0]);
    // No letter common to all (a common non-letter does not count).
    let table = compile(&[ua("ab-1"), ua("cd-2")]).expect("compiles");
    assert_eq!(table.keys, [0; PATTERN_FIELDS]);
    // A space in any pattern: a match may span a folded line, no keys.
    let table =
        compile(&[ua("sip cli"), field(PatternField::From, "sipvicious")]).expect("compiles");
    assert_eq!(table.keys, [0; PATTERN_FIELDS]);
}

#[test]
fn the_reader_stops_at_a_fingerprint() {
    let table = compile(&[
        ua("friendly-scanner"),
        Pattern {
            field: PatternField::To,
            text: b"sipvicious",
            prefix: false,
        },
        Pattern {
            field: PatternField::Contact,
            text: b"<sip:scan",
            prefix: true,
        },
    ])
    .expect("compiles");
    let cases = [
        (
            "REGISTER sip:h SIP/2.0\r\nuser-agent:friendly-scanner\r\n\r\n",
            Some((1, PatternField::UserAgent)),
        ),
        (
            "REGISTER sip:h SIP/2.0\r\nUser-Agent: friendly-\r\n  scanner\r\n\r\n",
            None,
        ),
        (
            "REGISTER sip:h SIP/2.0\r\nUser-Agent: friendly-\r\n scanner\r\n\r\n",
            None,
        ),
        (
            "REGISTER sip:h SIP/2.0\r\nUser-Agent: x\r\nUser-Agent: Friendly-Scanner\r\n\r\n",
            Some((1, PatternField::UserAgent)),
        ),
        (
            "OPTIONS sip:h SIP/2.0\r\nContact:\r\n <sip:scan@h>\r\n\r\n",
            Some((3, PatternField::Contact)),
        ),
        (
            "OPTIONS sip:h SIP/2.0\r\nt: \"sipvicious\" <sip:1@h>\r\n\r\n",
            Some((2, PatternField::To)),
        ),
        (
            "OPTIONS sip:h SIP/2.0\r\nm: <sip:scanner@h>\r\n\r\n",
            Some((3, PatternField::Contact)),
        ),
        // The To key ('v') after the user, in capitals: the line is read.
        (
            "OPTIONS sip:h SIP/2.0\r\nTo: <sip:1@h>;tag=SIPVICIOUS\r\n\r\n",
            Some((2, PatternField::To)),
        ),
        // A line without it is passed; its folded continuation is read.
        (
            "OPTIONS sip:h SIP/2.0\r\nTo: <sip:1@h>;x=1\r\n ;tag=sipvicious\r\n\r\n",
            Some((2, PatternField::To)),
        ),
        (
            "OPTIONS sip:h SIP/2.0\r\nTo: <sip:1@h>;tag=sipvicous\r\n\r\n",
            None,
        ),
        ("OPTIONS sip:h SIP/2.0\r\nm: x<sip:scanner@h>\r\n\r\n", None),
        (
            "OPTIONS sip:h SIP/2.0\r\nX-UA: friendly-scanner\r\n\r\n",
            None,
        ),
        (
            "OPTIONS sip:h SIP/2.0\r\n\r\nUser-Agent: friendly-scanner\r\n",
            None,
        ),
    ];
    for (message, expected) in cases {
        let out = scan(message.as_bytes(), &table);
        let found = (out.pattern != 0)
            .then(|| (out.pattern, PatternField::ALL[out.pattern_field as usize]));
        assert_eq!(found, expected, "{message:?}");
        assert_eq!(
            out.status == ScanStatus::Matched,
            expected.is_some(),
            "{message:?}"
        );
    }
}

mod properties {
    use super::*;
    use aho_corasick::{AhoCorasick, MatchKind};
    use proptest::prelude::*;

    fn alphabet() -> impl Strategy<Value = u8> {
        prop_oneof![
            Just(b'a'),
            Just(b'B'),
            Just(b'c'),
            Just(b'-'),
            Just(b' '),
            Just(0xc3)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Matches iff the aho-corasick crate finds a pattern (case-insensitive),
        /// or, for prefix patterns, the value starts with one.
        #[test]
        fn agrees_with_aho_corasick(
            substrings in proptest::collection::vec(proptest::collection::vec(alphabet(), 1..6), 0..6),
            prefixes in proptest::collection::vec(proptest::collection::vec(alphabet(), 1..6), 0..3),
            value in proptest::collection::vec(alphabet(), 0..40),
        ) {
            let mut patterns: Vec<Pattern<'_>> = substrings.iter().map(|text| Pattern {
                field: PatternField::UserAgent, text, prefix: false,
            }).collect();
            patterns.extend(prefixes.iter().map(|text| Pattern {
                field: PatternField::UserAgent, text, prefix: true,
            }));
            let table = compile(&patterns).expect("compiles");
            let found = table.first_match(PatternField::UserAgent, &value).is_some();
            let substring = !substrings.is_empty() && AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .build(&substrings)
                .expect("builds")
                .is_match(&value);
            let prefix = prefixes.iter().any(|p| value.len() >= p.len()
                && value[..p.len()].eq_ignore_ascii_case(p));
            prop_assert_eq!(found, substring || prefix);
            prop_assert_eq!(table.first_match(PatternField::From, &value), None);
        }
    }
}

/// The reader's run-at-a-time loop ([`scan`]) against the plain byte loop,
/// with fingerprints on every field, so that the fingerprint runs (eight
/// bytes of a value at once) are checked where patterns end and where they
/// do not; and with extension rules, so that the rules naming each user
/// (the user automaton the runs step) are checked too.
mod runs {
    use super::*;
    use crate::sip_scan::tests::bytewise;
    use crate::sip_users;
    use proptest::prelude::*;

    fn table() -> Box<PatternTable> {
        let pattern = |field, text: &'static str, prefix| Pattern {
            field,
            text: text.as_bytes(),
            prefix,
        };
        let mut table = compile(&[
            pattern(PatternField::UserAgent, "friendly-scanner", false),
            pattern(PatternField::UserAgent, "sipcli", true),
            pattern(PatternField::UserAgent, "zq", false),
            pattern(PatternField::From, "sipvicious", false),
            pattern(PatternField::To, "x@y", false),
            // Ends inside a URI's start, right after a display name.
            pattern(PatternField::To, "b\"<s", false),
            pattern(PatternField::Contact, "scan", false),
            pattern(PatternField::Contact, "q", true),
        ])
        .expect("compiles");
        let users = |list: &[&str]| -> Vec<Vec<sip_users::Item>> {
            list.iter()
                .map(|user| sip_users::parse(user).expect("valid"))
                .collect()
        };
        table.users = sip_users::compile(&[
            users(&["1001", "x"]),
            users(&["10*", "ab"]),
            users(&["6010"]),
        ])
        .expect("compiles");
        table
    }

    fn pick(items: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
        proptest::sample::select(items).prop_map(|item| item.to_vec())
    }

    /// Requests made of header lines in every case and form, values that
    /// carry or miss the patterns, folds, bare LFs, and noise.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        let start = pick(&[
            b"REGISTER sip:1001@pbx SIP/2.0\r\n",
            b"INVITE sip:0044@pbx sip/2.0\n",
            b"OPTIONS sip:pbx SIP/2.0\r\r\n",
            b"INVITE  sip:1@h SIP/2.0x\r\n",
            b"REGISTERX sip:1@h SIP/2.0\r\n",
            b"SIP/2.0 200 OK\r\n",
        ]);
        let name = pick(&[
            b"Via",
            b"VIA",
            b"v",
            b"Max-Forwards",
            b"max-forwardsx",
            b"To",
            b"t",
            b"TO ",
            b"From",
            b"f",
            b"fRoM\t",
            b"Call-ID",
            b"i",
            b"CSeq",
            b"Contact",
            b"m",
            b"Content-Length",
            b"content-type",
            b"l",
            b"Authorization",
            b"Proxy-Authorization",
            b"Allow",
            b"User-Agent",
            b"user-agent",
            b"Supported",
            b"Expires",
            b"X-Other",
            b"Us\x05er-Agent",
        ]);
        let colon = pick(&[b":", b": ", b" : ", b":\t"]);
        let value = prop_oneof![
            pick(&[
                b"\"Alice\" <sip:1001@pbx.example.com>;tag=1928301774",
                b"<sip:sipvicious@1.1.1.1>;tag=SIPVICIOUS-friendly",
                b"sip:x@y",
                b"FRIENDLY-SCANNER",
                b"sipcli/v1.8 and more text past the sixty-four bytes of the user agent copy",
                b"Yealink SIP-T46S 66.86.0.15 zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz q",
                b"Digest username=\"1001\", realm=\"pbx\"",
                b"<sip:1001@198.51.100.52:5060;transport=udp>;expires=3600",
                b"quite scanned",
                b"70",
                b"Digest USERNAME=\"Ab\\\"c\", uri=\"sip:x\"",
                b"Digest  username = 6010 , realm=x",
                b"<SIP:x@y>;tag=1",
                b"sip:a%40b@c",
                b"xsip:a@b",
                b"tel:+4420@x",
                b"\"a\" sips:x@y",
                b"\"sip:\" <sip:6010:pw@h>",
                // The From and To keys ('v', 'y') in capitals only, after
                // the user, or not at all.
                b"<sip:X@Y>;tag=1",
                b"<sip:1@h>;tag=SIPVICIOUS",
                b"<sip:1@h>;tag=9",
                b"\"Bob\"<sip:b@h>",
            ]),
            proptest::collection::vec(any::<u8>(), 0..24),
        ];
        let end = pick(&[b"\r\n", b"\n", b"\r\n ", b"\r\n\t", b""]);
        let line = (name, colon, value, end)
            .prop_map(|(name, colon, value, end)| [name, colon, value, end].concat());
        (
            start,
            proptest::collection::vec(line, 0..24),
            pick(&[b"\r\n", b"\n", b""]),
        )
            .prop_map(|(start, lines, end)| [start, lines.concat(), end].concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn agree_with_the_byte_loop(message in message()) {
            let table = table();
            prop_assert_eq!(scan(&message, &table), bytewise(&message, &table));
            // And cut anywhere (a short copy ends mid-run).
            for cut in [message.len() / 3, message.len() / 2, message.len().saturating_sub(5)] {
                prop_assert_eq!(scan(&message[..cut], &table), bytewise(&message[..cut], &table));
            }
        }

        #[test]
        fn arbitrary_bytes_agree(input in proptest::collection::vec(any::<u8>(), 0..600)) {
            let table = table();
            prop_assert_eq!(scan(&input, &table), bytewise(&input, &table));
        }
    }
}
