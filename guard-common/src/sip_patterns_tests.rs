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
