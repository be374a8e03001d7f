use super::*;

const REGISTER: &str = "REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-524287-1---a1b2c3;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:1001@198.51.100.7:5060;rinstance=8f1a>\r\n\
To: <sip:1001@pbx.example.com>\r\n\
From: \"Alice\" <sip:1001@pbx.example.com>;tag=d3b07384\r\n\
Call-ID: ZGQ3NmE1YjQ3ZWM5\r\n\
CSeq: 1 REGISTER\r\n\
Expires: 3600\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE\r\n\
User-Agent: Zoiper rv2.10.20.3\r\n\
Content-Length: 0\r\n\r\n";

const CHALLENGE: &str = "SIP/2.0 401 Unauthorized\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;rport=5060;received=198.51.100.7;branch=z9hG4bK-524287-1---a1b2c3\r\n\
Call-ID: ZGQ3NmE1YjQ3ZWM5\r\n\
From: \"Alice\" <sip:1001@pbx.example.com>;tag=d3b07384\r\n\
To: <sip:1001@pbx.example.com>;tag=z9hG4bK-524287\r\n\
CSeq: 1 REGISTER\r\n\
WWW-Authenticate: Digest realm=\"asterisk\",nonce=\"1732187000/8a7b6c5d4e3f\",opaque=\"5ccc\",algorithm=MD5,qop=\"auth\"\r\n\
Server: Asterisk PBX 20.5.0\r\n\
Content-Length:  0\r\n\r\n";

const AUTHORIZED: &str = "REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-524287-2;rport\r\n\
To: <sip:1001@pbx.example.com>\r\n\
From: \"Alice\" <sip:1001@pbx.example.com>;tag=d3b07384\r\n\
Call-ID: ZGQ3NmE1YjQ3ZWM5\r\n\
CSeq: 2 REGISTER\r\n\
Authorization: Digest username=\"1001\",realm=\"asterisk\",nonce=\"1732187000/8a7b6c5d4e3f\",uri=\"sip:pbx.example.com\",response=\"4f2a\",cnonce=\"9e8d\",nc=00000001,qop=auth,algorithm=MD5,opaque=\"5ccc\"\r\n\
Content-Length: 0\r\n\r\n";

const COMPACT: &str = "INVITE sip:100@pbx SIP/2.0\n\
v:SIP/2.0/UDP 203.0.113.9:5070;branch=z9hG4bK1\n\
V : SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK0\n\
f:   <sip:scanner@203.0.113.9>;tag=1\n\
t:<sip:100@pbx>\n\
i: 84ea1f5@203.0.113.9\n\
cseq:   77    INVITE  \n\
m: <sip:scanner@203.0.113.9:5070>\n\
user-agent: friendly-scanner\n\
l: 4\n\
\n\
v=0\n";

#[test]
fn register_without_credentials() {
    let (m, used) = parse(REGISTER.as_bytes(), true).unwrap();
    assert_eq!(used, REGISTER.len());
    assert_eq!(m.method(), Some("REGISTER"));
    assert_eq!(m.call_id, Some("ZGQ3NmE1YjQ3ZWM5"));
    assert_eq!(
        m.cseq,
        Some(CSeq {
            number: 1,
            method: "REGISTER"
        })
    );
    assert_eq!(m.credentials, None);
    assert_eq!(m.user_agent, Some("Zoiper rv2.10.20.3"));
    assert_eq!(m.expires, Some(3600));
    assert_eq!(m.via.len(), 1);
    assert_eq!(uri_user(m.to.unwrap()), Some("1001"));
    assert_eq!(uri_user(m.from.unwrap()), Some("1001"));
    assert_eq!(m.content_length, Some(0));
}

#[test]
fn challenge_and_credentials() {
    let (c, _) = parse(CHALLENGE.as_bytes(), true).unwrap();
    assert_eq!(c.status(), Some(401));
    assert_eq!(
        c.challenge,
        Some(Challenge {
            nonce: Some("1732187000/8a7b6c5d4e3f"),
            stale: false
        })
    );
    let (a, _) = parse(AUTHORIZED.as_bytes(), true).unwrap();
    let cred = a.credentials.unwrap();
    assert_eq!(cred.scheme, "Digest");
    assert_eq!(cred.username, Some("1001"));
    assert_eq!(cred.realm, Some("asterisk"));
    assert_eq!(cred.nonce, Some("1732187000/8a7b6c5d4e3f"));
}

#[test]
fn proxy_headers_and_stale() {
    let text = "SIP/2.0 407 Proxy Authentication Required\r\nCall-ID: x\r\nCSeq: 5 INVITE\r\n\
PROXY-AUTHENTICATE: Digest  realm=\"pbx\" , nonce=\"n2\", stale=TRUE\r\n\r\n";
    let (m, _) = parse(text.as_bytes(), true).unwrap();
    assert_eq!(
        m.challenge,
        Some(Challenge {
            nonce: Some("n2"),
            stale: true
        })
    );
    let text = "INVITE sip:1@pbx SIP/2.0\r\nCall-ID: x\r\nCSeq: 6 INVITE\r\n\
proxy-authorization: Digest username=\"200\", nonce=\"n2\"\r\n\r\n";
    let (m, _) = parse(text.as_bytes(), true).unwrap();
    assert_eq!(m.credentials.unwrap().username, Some("200"));
}

#[test]
fn compact_forms_case_and_whitespace_and_bare_lf() {
    let (m, used) = parse(COMPACT.as_bytes(), true).unwrap();
    assert_eq!(used, COMPACT.len());
    assert_eq!(m.method(), Some("INVITE"));
    assert_eq!(
        m.via,
        vec![
            "SIP/2.0/UDP 203.0.113.9:5070;branch=z9hG4bK1",
            "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK0"
        ]
    );
    assert_eq!(uri_user(m.from.unwrap()), Some("scanner"));
    assert_eq!(uri_user(m.to.unwrap()), Some("100"));
    assert_eq!(m.call_id, Some("84ea1f5@203.0.113.9"));
    assert_eq!(
        m.cseq,
        Some(CSeq {
            number: 77,
            method: "INVITE"
        })
    );
    assert_eq!(m.contact.len(), 1);
    assert_eq!(m.user_agent, Some("friendly-scanner"));
    assert_eq!(m.content_length, Some(4));
}

#[test]
fn every_compact_form_is_known() {
    let text = "OPTIONS sip:x SIP/2.0\r\nv: a\r\nf: <sip:f@x>\r\nt: <sip:t@x>\r\ni: cid\r\nm: <sip:m@x>\r\nl: 0\r\ncseq: 1 OPTIONS\r\n\r\n";
    let (m, _) = parse(text.as_bytes(), true).unwrap();
    assert_eq!(m.via, vec!["a"]);
    assert_eq!(uri_user(m.from.unwrap()), Some("f"));
    assert_eq!(uri_user(m.to.unwrap()), Some("t"));
    assert_eq!(m.call_id, Some("cid"));
    assert_eq!(m.contact, vec!["<sip:m@x>"]);
    assert_eq!(m.content_length, Some(0));
}

#[test]
fn folded_and_repeated_headers() {
    let text =
        "REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=1,\r\n  SIP/2.0/UDP b;branch=2\r\n\
Via: SIP/2.0/TCP c;branch=3\r\nCall-ID: abc\r\nCSeq:\r\n\t9 REGISTER\r\n\
Authorization: Digest username=\"7\",\r\n realm=\"r\", nonce=\"n\"\r\n\r\n";
    let (m, _) = parse(text.as_bytes(), true).unwrap();
    assert_eq!(m.via.len(), 2);
    assert!(m.via[0].contains("branch=2"));
    assert_eq!(
        m.cseq,
        Some(CSeq {
            number: 9,
            method: "REGISTER"
        })
    );
    let cred = m.credentials.unwrap();
    assert_eq!((cred.username, cred.nonce), (Some("7"), Some("n")));
}

#[test]
fn registration_expiry_prefers_contact_params() {
    let text = "SIP/2.0 200 OK\r\nCall-ID: a\r\nCSeq: 2 REGISTER\r\n\
Contact: <sip:1001@198.51.100.7:5060>;expires=120, <sip:1001@10.0.0.2>;expires=300\r\n\
Expires: 3600\r\n\r\n";
    let (m, _) = parse(text.as_bytes(), true).unwrap();
    assert_eq!(m.registration_expiry(), Some(120));
    let text = "SIP/2.0 200 OK\r\nCall-ID: a\r\nCSeq: 2 REGISTER\r\nExpires: 60\r\n\r\n";
    assert_eq!(
        parse(text.as_bytes(), true)
            .unwrap()
            .0
            .registration_expiry(),
        Some(60)
    );
}

#[test]
fn tcp_segment_with_two_messages() {
    let mut stream = Vec::new();
    stream.extend_from_slice(COMPACT.as_bytes());
    stream.extend_from_slice(AUTHORIZED.as_bytes());
    let messages = parse_stream(&stream, true);
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].as_ref().unwrap().method(), Some("INVITE"));
    assert_eq!(messages[1].as_ref().unwrap().cseq.unwrap().number, 2);
    // Keep-alive line breaks between messages are skipped.
    let mut with_keepalive = b"\r\n\r\n".to_vec();
    with_keepalive.extend_from_slice(REGISTER.as_bytes());
    with_keepalive.extend_from_slice(b"\r\n\r\n");
    with_keepalive.extend_from_slice(CHALLENGE.as_bytes());
    let messages = parse_stream(&with_keepalive, true);
    assert_eq!(messages.len(), 2);
    assert!(messages.iter().all(Result::is_ok));
}

#[test]
fn keepalive_is_empty_not_malformed() {
    assert_eq!(parse(b"\r\n\r\n", true).unwrap_err(), ParseError::Empty);
    assert!(parse_stream(b"\r\n", true).is_empty());
}

#[test]
fn uri_users() {
    assert_eq!(uri_user("<sip:alice@example.com>;tag=1"), Some("alice"));
    assert_eq!(
        uri_user("\"Bob <x>\" <sips:bob:secret@example.com:5061;transport=tls>"),
        Some("bob")
    );
    assert_eq!(uri_user("sip:carol@example.com;tag=9"), Some("carol"));
    assert_eq!(uri_user("<tel:+15551234>"), Some("+15551234"));
    assert_eq!(uri_user("<sip:example.com>"), None);
    assert_eq!(uri_user("garbage"), None);
}

#[test]
fn truncated_captures() {
    // Cut anywhere: never a panic; complete parsing fails cleanly...
    for cut in 0..AUTHORIZED.len() - 4 {
        let bytes = &AUTHORIZED.as_bytes()[..cut];
        assert!(parse(bytes, true).is_err(), "cut {cut}");
        let _ = parse(bytes, false);
    }
    // ...and a capture cut inside the headers still yields the whole lines.
    let cut = AUTHORIZED.find("Content-Length").unwrap() + 3;
    let (m, _) = parse(&AUTHORIZED.as_bytes()[..cut], false).unwrap();
    assert_eq!(
        m.credentials.unwrap().nonce,
        Some("1732187000/8a7b6c5d4e3f")
    );
}

#[test]
fn hostile_corpus() {
    let huge_value = format!(
        "REGISTER sip:x SIP/2.0\r\nX-Pad: {}\r\nCall-ID: a\r\nCSeq: 1 REGISTER\r\n\r\n",
        "A".repeat(60_000)
    );
    assert!(parse(huge_value.as_bytes(), true).is_ok());
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: y\r\n")).collect();
    let too_many = format!("OPTIONS sip:x SIP/2.0\r\n{many}\r\n");
    assert_eq!(
        parse(too_many.as_bytes(), true).unwrap_err(),
        ParseError::TooManyHeaders
    );

    let cases: &[(&[u8], ParseError)] = &[
        (
            b"REGISTER sip:x SIP/2.0\r\nCall-ID: a\0b\r\n\r\n",
            ParseError::BadHeader,
        ),
        (
            b"REGISTER sip:x SIP/2.0\r\nCSeq: abc REGISTER\r\n\r\n",
            ParseError::BadCSeq,
        ),
        (
            b"REGISTER sip:x SIP/2.0\r\nCSeq: 1\r\n\r\n",
            ParseError::BadCSeq,
        ),
        (
            b"REGISTER sip:x SIP/2.0\r\nCSeq: 99999999999 REGISTER\r\n\r\n",
            ParseError::BadCSeq,
        ),
        (
            b"REGISTER sip:x SIP/2.0\r\nCSeq: 1 REGISTER extra\r\n\r\n",
            ParseError::BadCSeq,
        ),
        (
            b"REGISTER sip:x SIP/2.0\r\nCSeq: -1 REGISTER\r\n\r\n",
            ParseError::BadCSeq,
        ),
        (
            b"REGISTER sip:x SIP/2.0\r\nContent-Length: lots\r\n\r\n",
            ParseError::BadContentLength,
        ),
        (
            b"REGISTER sip:x SIP/2.0\r\nno colon here\r\n\r\n",
            ParseError::BadHeader,
        ),
        (
            b"REGISTER sip:x SIP/2.0\r\nBad Name: x\r\n\r\n",
            ParseError::BadHeader,
        ),
        (
            b"REGISTER sip:x SIP/2.0\r\nCall-ID:\r\n\r\n",
            ParseError::BadHeader,
        ),
        (b"REGISTER sip:x\r\n\r\n", ParseError::BadStartLine),
        (b"REGISTER sip:x HTTP/1.1\r\n\r\n", ParseError::BadStartLine),
        (b"SIP/2.0 99 Low\r\n\r\n", ParseError::BadStartLine),
        (b"SIP/2.0 abc Bad\r\n\r\n", ParseError::BadStartLine),
        (b"SIP/3.0 200 OK\r\n\r\n", ParseError::BadStartLine),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            ParseError::BadStartLine,
        ),
        (b"\xff\xfe\r\n\r\n", ParseError::NotUtf8),
        (
            b"REGISTER sip:x SIP/2.0\r\nCall-ID: a\r\n",
            ParseError::Truncated,
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            parse(bytes, true).unwrap_err(),
            *expected,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn content_length_beyond_the_capture_is_clipped() {
    let text = "INVITE sip:x SIP/2.0\r\nCall-ID: a\r\nCSeq: 1 INVITE\r\nContent-Length: 5000\r\n\r\nv=0\r\n";
    let (m, used) = parse(text.as_bytes(), true).unwrap();
    assert_eq!(m.content_length, Some(5000));
    assert_eq!(used, text.len());
}

/// Mutations of the corpus (flipped, dropped and duplicated bytes) never panic.
#[test]
fn mutated_corpus_never_panics() {
    let corpus = [REGISTER, CHALLENGE, AUTHORIZED, COMPACT];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let mut bytes = corpus[(next() % 4) as usize].as_bytes().to_vec();
        for _ in 0..(next() % 8 + 1) {
            let at = (next() as usize) % bytes.len().max(1);
            match next() % 4 {
                0 => bytes[at] = next() as u8,
                1 => {
                    bytes.remove(at);
                }
                2 => bytes.insert(at, b"\r\n:;,\"<>\0 "[(next() % 10) as usize]),
                _ => bytes.truncate(at),
            }
            if bytes.is_empty() {
                break;
            }
        }
        let _ = parse(&bytes, true);
        let _ = parse(&bytes, false);
        let _ = parse_stream(&bytes, true);
        let _ = parse_stream(&bytes, false);
    }
}
