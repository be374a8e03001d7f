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

fn b(text: &str) -> &[u8] {
    text.as_bytes()
}

fn cseq(number: u32, method: &str) -> Option<CSeq<'_>> {
    Some(CSeq {
        number,
        method: method.as_bytes(),
    })
}

fn user(value: &[u8]) -> Option<Vec<u8>> {
    uri_user(value).map(|u| u.into_owned())
}

/// A REGISTER with `extra` header lines after the start line, and its
/// credentials; the line ends of the template are `\r\n`.
fn register_with(extra: &str) -> Vec<u8> {
    format!(
        "REGISTER sip:pbx SIP/2.0\r\n{extra}Via: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bK1\r\n\
To: <sip:1001@pbx>\r\nFrom: <sip:1001@pbx>;tag=1\r\nCall-ID: cid-1\r\nCSeq: 2 REGISTER\r\n\
Authorization: Digest username=\"1001\", realm=\"pbx\", nonce=\"n1\", response=\"0\"\r\n\
Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The fields the tracker needs, as it would see them.
/// (Call-ID, CSeq number, username, nonce).
type Essentials = (Vec<u8>, Option<u32>, Option<Vec<u8>>, Option<Vec<u8>>);

fn essentials(bytes: &[u8]) -> Essentials {
    let (m, _) = parse(bytes, true).expect("parsed");
    let call_id = m.call_id.clone().expect("Call-ID").into_owned();
    let cred = m.credentials.first();
    (
        call_id,
        m.cseq.map(|c| c.number),
        cred.and_then(|c| c.username.clone()).map(Cow::into_owned),
        cred.and_then(|c| c.nonce.clone()).map(Cow::into_owned),
    )
}

fn expected() -> Essentials {
    (
        b"cid-1".to_vec(),
        Some(2),
        Some(b"1001".to_vec()),
        Some(b"n1".to_vec()),
    )
}

#[test]
fn register_without_credentials() {
    let (m, used) = parse(REGISTER.as_bytes(), true).unwrap();
    assert_eq!(used, REGISTER.len());
    assert_eq!(m.method(), Some(b("REGISTER")));
    assert!(m.is_method("register"));
    assert_eq!(m.call_id.as_deref(), Some(b("ZGQ3NmE1YjQ3ZWM5")));
    assert_eq!(m.cseq, cseq(1, "REGISTER"));
    assert!(m.credentials.is_empty());
    assert_eq!(m.user_agent, Some(b("Zoiper rv2.10.20.3")));
    assert_eq!(m.expires, Some(3600));
    assert_eq!(m.via.len(), 1);
    assert_eq!(user(m.to.unwrap()), Some(b"1001".to_vec()));
    assert_eq!(user(m.from.unwrap()), Some(b"1001".to_vec()));
    assert_eq!(m.content_length, Some(0));
    assert!(m.complete);
}

#[test]
fn challenge_and_credentials() {
    let (c, _) = parse(CHALLENGE.as_bytes(), true).unwrap();
    assert_eq!(c.status(), Some(401));
    assert_eq!(c.challenges.len(), 1);
    assert_eq!(
        c.challenges[0].nonce.as_deref(),
        Some(b("1732187000/8a7b6c5d4e3f"))
    );
    assert!(!c.stale());
    let (a, _) = parse(AUTHORIZED.as_bytes(), true).unwrap();
    let cred = &a.credentials[0];
    assert_eq!(cred.scheme, b"Digest");
    assert_eq!(cred.username.as_deref(), Some(b("1001")));
    assert_eq!(cred.realm.as_deref(), Some(b("asterisk")));
    assert_eq!(cred.nonce.as_deref(), Some(b("1732187000/8a7b6c5d4e3f")));
}

#[test]
fn proxy_headers_and_stale() {
    let text = "SIP/2.0 407 Proxy Authentication Required\r\nCall-ID: x\r\nCSeq: 5 INVITE\r\n\
PROXY-AUTHENTICATE: Digest  realm=\"pbx\" , nonce=\"n2\", stale=TRUE\r\n\r\n";
    let (m, _) = parse(b(text), true).unwrap();
    assert_eq!(m.challenges[0].nonce.as_deref(), Some(b("n2")));
    assert!(m.stale());
    let text = "INVITE sip:1@pbx SIP/2.0\r\nCall-ID: x\r\nCSeq: 6 INVITE\r\n\
proxy-authorization: Digest username=\"200\", nonce=\"n2\"\r\n\r\n";
    let (m, _) = parse(b(text), true).unwrap();
    assert_eq!(m.credentials[0].username.as_deref(), Some(b("200")));
}

#[test]
fn compact_forms_case_and_whitespace_and_bare_lf() {
    let (m, used) = parse(COMPACT.as_bytes(), true).unwrap();
    assert_eq!(used, COMPACT.len());
    assert_eq!(m.method(), Some(b("INVITE")));
    assert_eq!(
        m.via,
        vec![
            b("SIP/2.0/UDP 203.0.113.9:5070;branch=z9hG4bK1"),
            b("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK0")
        ]
    );
    assert_eq!(user(m.from.unwrap()), Some(b"scanner".to_vec()));
    assert_eq!(user(m.to.unwrap()), Some(b"100".to_vec()));
    assert_eq!(m.call_id.as_deref(), Some(b("84ea1f5@203.0.113.9")));
    assert_eq!(m.cseq, cseq(77, "INVITE"));
    assert_eq!(m.contact.len(), 1);
    assert_eq!(m.user_agent, Some(b("friendly-scanner")));
    assert_eq!(m.content_length, Some(4));
}

#[test]
fn every_compact_form_is_known() {
    let text = "OPTIONS sip:x SIP/2.0\r\nv: a\r\nf: <sip:f@x>\r\nt: <sip:t@x>\r\ni: cid\r\nm: <sip:m@x>\r\nl: 0\r\ncseq: 1 OPTIONS\r\n\r\n";
    let (m, _) = parse(b(text), true).unwrap();
    assert_eq!(m.via, vec![b("a")]);
    assert_eq!(user(m.from.unwrap()), Some(b"f".to_vec()));
    assert_eq!(user(m.to.unwrap()), Some(b"t".to_vec()));
    assert_eq!(m.call_id.as_deref(), Some(b("cid")));
    assert_eq!(m.contact, vec![b("<sip:m@x>")]);
    assert_eq!(m.content_length, Some(0));
}

#[test]
fn folded_and_repeated_headers() {
    let text =
        "REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=1,\r\n  SIP/2.0/UDP b;branch=2\r\n\
Via: SIP/2.0/TCP c;branch=3\r\nCall-ID: abc\r\nCSeq:\r\n\t9 REGISTER\r\n\
Authorization: Digest username=\"7\",\r\n realm=\"r\", nonce=\"n\"\r\n\r\n";
    let (m, _) = parse(b(text), true).unwrap();
    assert_eq!(m.via.len(), 2);
    assert!(m.via[0].ends_with(b"branch=2"));
    assert_eq!(m.cseq, cseq(9, "REGISTER"));
    let cred = &m.credentials[0];
    assert_eq!(cred.username.as_deref(), Some(b("7")));
    assert_eq!(cred.nonce.as_deref(), Some(b("n")));
}

#[test]
fn registration_expiry_prefers_contact_params() {
    let text = "SIP/2.0 200 OK\r\nCall-ID: a\r\nCSeq: 2 REGISTER\r\n\
Contact: <sip:1001@198.51.100.7:5060>;expires=120, <sip:1001@10.0.0.2>;expires=300\r\n\
Expires: 3600\r\n\r\n";
    let (m, _) = parse(b(text), true).unwrap();
    assert_eq!(m.registration_expiry(), Some(120));
    let text = "SIP/2.0 200 OK\r\nCall-ID: a\r\nCSeq: 2 REGISTER\r\nExpires: 60\r\n\r\n";
    assert_eq!(
        parse(b(text), true).unwrap().0.registration_expiry(),
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
    assert_eq!(messages[0].as_ref().unwrap().method(), Some(b("INVITE")));
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

/// TCP segmentation: a message whose header section is split across
/// segments gives, from the first segment, an incomplete message (its
/// credentials unknown, which the tracker treats as a possible guess),
/// and from the second, nothing that passes for a message.
#[test]
fn tcp_segmentation_gives_an_incomplete_message() {
    let whole = register_with("");
    // Cut inside the Authorization header.
    let split = whole.windows(6).position(|w| w == b"Digest").unwrap();
    let first = parse_stream(&whole[..split], false);
    let message = first[0].as_ref().expect("the first segment's headers");
    assert!(!message.complete);
    assert_eq!(message.call_id.as_deref(), Some(b("cid-1")));
    let second = parse_stream(&whole[split..], true);
    assert!(second.iter().all(|m| m.is_err()), "{second:?}");
}

#[test]
fn keepalive_is_empty_not_malformed() {
    assert_eq!(parse(b"\r\n\r\n", true).unwrap_err(), ParseError::Empty);
    assert!(parse_stream(b"\r\n", true).is_empty());
}

#[test]
fn uri_users() {
    assert_eq!(
        user(b"<sip:alice@example.com>;tag=1"),
        Some(b"alice".to_vec())
    );
    assert_eq!(
        user(b"\"Bob <x>\" <sips:bob:secret@example.com:5061;transport=tls>"),
        Some(b"bob".to_vec())
    );
    assert_eq!(
        user(b"sip:carol@example.com;tag=9"),
        Some(b"carol".to_vec())
    );
    assert_eq!(user(b"<tel:+15551234>"), Some(b"+15551234".to_vec()));
    assert_eq!(user(b"<SIP:Dave@example.com>"), Some(b"Dave".to_vec()));
    assert_eq!(user(b"<sip:example.com>"), None);
    assert_eq!(user(b"garbage"), None);
}

/// RFC 3261 escapes: `%31001` is user 1001; a quoted username with `\"`
/// escapes is unescaped; display is lossy and escapes control bytes.
#[test]
fn escaped_usernames() {
    assert_eq!(user(b"<sip:%31%30%301@pbx>"), Some(b"1001".to_vec()));
    assert_eq!(user(b"<sip:al%2Gice@pbx>"), Some(b"al%2Gice".to_vec()));
    assert_eq!(user(b"<sip:%ff%00x@pbx>"), Some(b"\xff\x00x".to_vec()));
    assert_eq!(display(b"\xff\x00x"), "\u{fffd}\\u{0}x");
    let text = b"REGISTER sip:x SIP/2.0\r\nCall-ID: a\r\nCSeq: 1 REGISTER\r\n\
Authorization: Digest username=\"10\\\"01\", nonce=\"n\\\\1\"\r\n\r\n";
    let (m, _) = parse(text, true).unwrap();
    assert_eq!(m.credentials[0].username.as_deref(), Some(b("10\"01")));
    assert_eq!(m.credentials[0].nonce.as_deref(), Some(b("n\\1")));
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
    assert!(!m.complete);
    assert_eq!(
        m.credentials[0].nonce.as_deref(),
        Some(b("1732187000/8a7b6c5d4e3f"))
    );
}

/// Every evasion of issue 10 and its cousins reads the same fields as the
/// plain message.
#[test]
fn evasions_read_the_same_fields() {
    let plain = register_with("");
    assert_eq!(essentials(&plain), expected());
    let text = String::from_utf8(plain.clone()).unwrap();
    let mut variants: Vec<(&str, Vec<u8>)> = vec![
        (
            "0xFF in User-Agent",
            register_with("User-Agent: x\u{ff}y\r\n"),
        ),
        ("NUL in a header", register_with("X-Pad: a\0b\r\n")),
        (
            "raw 0xFF and NUL bytes",
            [&plain[..26], b"X-Bin: \xff\xfe\x00\x80\r\n", &plain[26..]].concat(),
        ),
        (
            "200 headers",
            register_with(
                &(0..200)
                    .map(|i| format!("X-{i}: y\r\n"))
                    .collect::<String>(),
            ),
        ),
        ("a line without a colon", register_with("junk line\r\n")),
        ("a bad header name", register_with("Bad Name: x\r\n")),
        (
            "a bad CSeq before the real one",
            register_with("CSeq: x REGISTER\r\n"),
        ),
        (
            "a bad Content-Length",
            register_with("Content-Length: lots\r\n"),
        ),
        ("LF only", text.replace("\r\n", "\n").into_bytes()),
        (
            "mixed line ends",
            text.replacen("\r\n", "\n", 3).into_bytes(),
        ),
        (
            "names in any case",
            text.replace("Call-ID", "cAlL-iD")
                .replace("CSeq", "cseq")
                .replace("Authorization", "AUTHORIZATION")
                .into_bytes(),
        ),
        (
            "compact Call-ID",
            text.replace("Call-ID:", "i:").into_bytes(),
        ),
        (
            "tabs and spaces",
            text.replace("Call-ID: ", "Call-ID \t:\t  ")
                .replace("CSeq: 2 REGISTER", "CSeq:\t2 \t  REGISTER\t")
                .replace("Digest ", "Digest\t  ")
                .into_bytes(),
        ),
        (
            "folded Call-ID",
            text.replace("Call-ID: cid-1", "Call-ID:\r\n cid-1")
                .into_bytes(),
        ),
        (
            "Call-ID folded inside",
            text.replace("Call-ID: cid-1", "Call-ID: cid\r\n\t-1")
                .into_bytes(),
        ),
        (
            "folded credentials",
            text.replace("realm=\"pbx\", ", "realm=\"pbx\",\r\n   ")
                .into_bytes(),
        ),
        (
            "parameter order and quoting",
            text.replace(
                "username=\"1001\", realm=\"pbx\", nonce=\"n1\", response=\"0\"",
                "response=0 ,nonce = n1,realm=pbx,USERNAME=\"1001\"",
            )
            .into_bytes(),
        ),
        (
            "a comma inside a quoted parameter",
            text.replace("response=\"0\"", "opaque=\"a,nonce=x\", response=\"0\"")
                .into_bytes(),
        ),
        (
            "lower-case version",
            text.replace("SIP/2.0\r\n", "sip/2.0\r\n").into_bytes(),
        ),
        (
            "multiple spaces in the start line",
            text.replace("REGISTER sip:pbx SIP/2.0", "REGISTER   sip:pbx\tSIP/2.0")
                .into_bytes(),
        ),
        (
            "leading zeros in CSeq",
            text.replace("CSeq: 2 ", "CSeq: 0002 ").into_bytes(),
        ),
    ];
    variants.push((
        "1500-byte padding",
        register_with(&format!("X-Pad: {}\r\n", "p".repeat(1500))),
    ));
    for (name, bytes) in &variants {
        assert_eq!(essentials(bytes), expected(), "{name}");
    }
}

/// Duplicate Call-ID and CSeq: both the first (Kamailio, FreeSWITCH) and
/// the last (Asterisk) are kept; duplicate Authorization: all are kept.
#[test]
fn duplicates_keep_first_and_last() {
    let text = register_with(
        "Call-ID: other\r\nCSeq: 7 REGISTER\r\n\
Authorization: Digest username=\"2002\", nonce=\"n0\"\r\n",
    );
    let (m, _) = parse(&text, true).unwrap();
    assert_eq!(m.call_id.as_deref(), Some(b("other")));
    assert_eq!(m.call_id_last.as_deref(), Some(b("cid-1")));
    assert_eq!(m.cseq, cseq(7, "REGISTER"));
    assert_eq!(m.cseq_last, cseq(2, "REGISTER"));
    let ids: Vec<(&[u8], u32)> = m
        .transaction_ids()
        .into_iter()
        .map(|(c, s)| (c, s.number))
        .collect();
    assert_eq!(
        ids,
        vec![
            (b("other"), 7),
            (b("other"), 2),
            (b("cid-1"), 7),
            (b("cid-1"), 2)
        ]
    );
    let nonces: Vec<&[u8]> = m
        .credentials
        .iter()
        .filter_map(|c| c.nonce.as_deref())
        .collect();
    assert_eq!(nonces, vec![b("n0"), b("n1")]);
    // A plain message has one transaction id; a repeat of the same value
    // adds none.
    let text = register_with("Call-ID: cid-1\r\n");
    let (m, _) = parse(&text, true).unwrap();
    assert_eq!(m.transaction_ids().len(), 1);
}

#[test]
fn hostile_corpus() {
    let huge_value = format!(
        "REGISTER sip:x SIP/2.0\r\nX-Pad: {}\r\nCall-ID: a\r\nCSeq: 1 REGISTER\r\n\r\n",
        "A".repeat(60_000)
    );
    assert!(parse(b(&huge_value), true).is_ok());
    let cases: &[(&[u8], ParseError)] = &[
        (b"REGISTER sip:x\r\n\r\n", ParseError::BadStartLine),
        (b"REGISTER SIP/2.0\r\n\r\n", ParseError::BadStartLine),
        (b"REGISTER sip:x HTTP/1.1\r\n\r\n", ParseError::BadStartLine),
        (b"SIP/2.0 99 Low\r\n\r\n", ParseError::BadStartLine),
        (b"SIP/2.0 abc Bad\r\n\r\n", ParseError::BadStartLine),
        (b"SIP/3.0 200 OK\r\n\r\n", ParseError::BadStartLine),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            ParseError::BadStartLine,
        ),
        (b"\xff\xfe\r\n\r\n", ParseError::BadStartLine),
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
    // Fields that cannot be read are absent, not fatal.
    let (m, _) = parse(
        b"REGISTER sip:x SIP/2.0\r\nCSeq: 99999999999 REGISTER\r\nCall-ID:\r\n\
Content-Length: lots\r\n\r\n",
        true,
    )
    .unwrap();
    assert_eq!((m.cseq, m.call_id, m.content_length), (None, None, None));
}

#[test]
fn content_length_beyond_the_capture_is_clipped() {
    let text = "INVITE sip:x SIP/2.0\r\nCall-ID: a\r\nCSeq: 1 INVITE\r\nContent-Length: 5000\r\n\r\nv=0\r\n";
    let (m, used) = parse(b(text), true).unwrap();
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
                2 => bytes.insert(at, b"\r\n:;,\"<>\0 %\\"[(next() % 12) as usize]),
                _ => bytes.truncate(at),
            }
            if bytes.is_empty() {
                break;
            }
        }
        for complete in [true, false] {
            if let Ok((m, _)) = parse(&bytes, complete) {
                let _ = m.transaction_ids();
                let _ = m.registration_expiry();
                for value in m.from.iter().chain(m.to.iter()).chain(m.contact.iter()) {
                    let _ = uri_user(value).map(|u| display(&u));
                }
            }
            let _ = parse_stream(&bytes, complete);
        }
    }
}
