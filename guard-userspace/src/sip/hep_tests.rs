use super::*;

/// A chunk: vendor 0, `kind`, `data`.
fn chunk(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((data.len() + 6) as u16).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// `HEP3`, the total length, the chunks.
fn message(chunks: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = chunks.concat();
    let mut out = b"HEP3".to_vec();
    out.extend_from_slice(&((body.len() + 6) as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

const SIP: &[u8] = b"REGISTER sip:pbx SIP/2.0\r\nCall-ID: 1\r\nCSeq: 1 REGISTER\r\n\r\n";

/// What Kamailio's siptrace sends for a received TLS REGISTER, in its order.
fn kamailio_chunks() -> Vec<Vec<u8>> {
    vec![
        chunk(0x01, &[2]),
        chunk(0x02, &[22]),
        chunk(0x03, &[198, 51, 100, 7]),
        chunk(0x04, &[10, 0, 0, 1]),
        chunk(0x07, &5062u16.to_be_bytes()),
        chunk(0x08, &5061u16.to_be_bytes()),
        chunk(0x09, &1_700_000_000u32.to_be_bytes()),
        chunk(0x0a, &12u32.to_be_bytes()),
        chunk(0x0b, &[1]),
        chunk(0x0c, &101u32.to_be_bytes()),
        chunk(0x0f, SIP),
    ]
}

#[test]
fn reads_what_kamailio_sends() {
    let bytes = message(&kamailio_chunks());
    let packet = decode(&bytes).expect("valid");
    assert_eq!(packet.src, "198.51.100.7:5062".parse().unwrap());
    assert_eq!(packet.dst, "10.0.0.1:5061".parse().unwrap());
    assert_eq!(packet.ip_proto, 22);
    assert_eq!(packet.proto_type, PROTO_TYPE_SIP);
    assert_eq!(packet.capture_id, Some(101));
    assert_eq!(packet.payload, SIP);
    assert_eq!(packet.len, bytes.len());
    assert_eq!(packet.auth_key, None);
}

#[test]
fn reads_ipv6_any_order_vendor_chunks_and_trailing_bytes() {
    let mut chunks = kamailio_chunks();
    chunks.retain(|c| !matches!(c[3], 0x03 | 0x04));
    chunks.push(chunk(
        0x05,
        &"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets(),
    ));
    chunks.push(chunk(
        0x06,
        &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(),
    ));
    chunks.reverse();
    // A vendor chunk of a type sipguard would read otherwise is skipped.
    let mut vendor = chunk(0x07, &[0, 1]);
    vendor[1] = 0x21;
    chunks.insert(3, vendor);
    chunks.push(chunk(0x0e, b"secret"));
    chunks.push(chunk(0x11, b"correlation"));
    let mut bytes = message(&chunks);
    let len = bytes.len();
    bytes.extend_from_slice(b"HEP3 next message");
    let packet = decode(&bytes).expect("valid");
    assert_eq!(packet.src, "[2001:db8::7]:5062".parse().unwrap());
    assert_eq!(packet.auth_key, Some(&b"secret"[..]));
    assert_eq!(
        packet.len, len,
        "a frame of a stream ends at its total length"
    );
}

#[test]
fn malformed_input_is_an_error() {
    let good = message(&kamailio_chunks());
    let without = |kind: u16| {
        let mut chunks = kamailio_chunks();
        chunks.retain(|c| u16::from_be_bytes([c[2], c[3]]) != kind);
        message(&chunks)
    };
    let with = |extra: Vec<u8>| {
        let mut chunks = kamailio_chunks();
        chunks.insert(2, extra);
        message(&chunks)
    };
    let mut huge_total = good.clone();
    huge_total[4..6].copy_from_slice(&u16::MAX.to_be_bytes());
    let mut tiny_total = good.clone();
    tiny_total[4..6].copy_from_slice(&3u16.to_be_bytes());
    // The total length stops inside the last chunk's header.
    let mut cut_total = good.clone();
    let cut = (good.len() - SIP.len() - 3) as u16;
    cut_total[4..6].copy_from_slice(&cut.to_be_bytes());
    let mut huge_chunk = chunk(0x0f, SIP);
    huge_chunk[4..6].copy_from_slice(&u16::MAX.to_be_bytes());
    let mut short_chunk = chunk(0x11, b"x");
    short_chunk[4..6].copy_from_slice(&5u16.to_be_bytes());
    let mut v2 = good.clone();
    v2[0] = 2;
    let mut ipv6_dst = kamailio_chunks();
    ipv6_dst[3] = chunk(0x06, &[0; 16]);
    let mut compressed = kamailio_chunks();
    compressed.pop();
    compressed.push(chunk(0x10, b"zz"));

    let cases: Vec<(&str, Vec<u8>, HepError)> = vec![
        ("empty", vec![], HepError::Short),
        ("magic only", b"HEP3".to_vec(), HepError::Short),
        ("not HEP", b"REGISTER sip:x".to_vec(), HepError::NotHep),
        ("HEPv2", v2, HepError::Version(2)),
        ("HEPv1", vec![1, 16, 2, 17, 0, 0], HepError::Version(1)),
        (
            "cut short (truncated datagram)",
            good[..good.len() - 1].to_vec(),
            HepError::TotalLength {
                declared: good.len(),
                received: good.len() - 1,
            },
        ),
        (
            "huge total length",
            huge_total,
            HepError::TotalLength {
                declared: 65_535,
                received: good.len(),
            },
        ),
        (
            "total length under the header",
            tiny_total,
            HepError::TotalLength {
                declared: 3,
                received: 6,
            },
        ),
        (
            "total length ends in a chunk header",
            cut_total,
            HepError::ChunkCut {
                offset: good.len() - SIP.len() - 6,
            },
        ),
        (
            "huge chunk length",
            with(huge_chunk),
            HepError::ChunkLength {
                offset: 20,
                kind: 0x0f,
                len: 65_535,
            },
        ),
        (
            "chunk length under its header",
            with(short_chunk),
            HepError::ChunkLength {
                offset: 20,
                kind: 0x11,
                len: 5,
            },
        ),
        ("type 0", with(chunk(0, b"")), HepError::ZeroType),
        (
            "a port of 3 bytes",
            with(chunk(0x07, &[0, 1, 2])),
            HepError::ChunkSize {
                kind: 7,
                len: 9,
                expected: 8,
            },
        ),
        (
            "an IPv4 address of 16 bytes",
            with(chunk(0x03, &[0; 16])),
            HepError::ChunkSize {
                kind: 3,
                len: 22,
                expected: 10,
            },
        ),
        ("no payload", without(0x0f), HepError::Missing("payload")),
        (
            "compressed payload",
            message(&compressed),
            HepError::Compressed,
        ),
        (
            "no source",
            without(0x03),
            HepError::Missing("source address"),
        ),
        (
            "no destination port",
            without(0x08),
            HepError::Missing("destination port"),
        ),
        (
            "no IP protocol",
            without(0x02),
            HepError::Missing("IP protocol"),
        ),
        (
            "no protocol type",
            without(0x0b),
            HepError::Missing("protocol type"),
        ),
        (
            "IPv4 source, IPv6 destination",
            message(&ipv6_dst),
            HepError::MixedFamilies,
        ),
    ];
    for (name, bytes, expected) in cases {
        assert_eq!(decode(&bytes), Err(expected), "{name}");
    }
}

#[test]
fn frames_of_a_stream() {
    let good = message(&kamailio_chunks());
    assert_eq!(frame_len(&good), Ok(good.len()));
    assert_eq!(frame_len(&good[..5]), Err(HepError::Short));
    assert_eq!(frame_len(b"GET / HTTP/1.1"), Err(HepError::NotHep));
}

#[test]
fn transports() {
    let cases: &[(u8, Option<&[u8]>, Transport)] = &[
        (17, None, Transport::Udp),
        (6, Some(b"SIP/2.0/TCP 1.2.3.4"), Transport::Tcp),
        (
            22,
            Some(b"SIP/2.0/TLS 1.2.3.4:5061;branch=z"),
            Transport::Tls,
        ),
        (
            22,
            Some(b"SIP/2.0/WSS abc.invalid;branch=z"),
            Transport::Wss,
        ),
        (22, Some(b"SIP/2.0/ws abc.invalid"), Transport::Ws),
        (22, None, Transport::Tls),
        (22, Some(b""), Transport::Tls),
        (132, None, Transport::Sctp),
        (99, None, Transport::Other(99)),
    ];
    for (proto, via, expected) in cases {
        assert_eq!(Transport::of(*proto, *via), *expected, "{proto} {via:?}");
    }
    assert_eq!(Transport::Wss.ip_proto(), 6);
    assert_eq!(Transport::Udp.ip_proto(), 17);
}
