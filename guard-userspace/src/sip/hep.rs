//! HEPv3 (the Homer Encapsulation Protocol) decoding: what a PBX mirrors of
//! its own signalling (Kamailio's siptrace, Asterisk's res_hep, FreeSWITCH,
//! OpenSIPS), decrypted when it came over TLS or WebSocket.
//!
//! A HEPv3 message is the magic `HEP3`, a big-endian u16 total length
//! (header included), then chunks: vendor u16, type u16, length u16 (its
//! 6-byte header included), data. Chunks are read by type, never by
//! position; vendor chunks (vendor != 0) and unknown types are skipped.
//! Every length is checked against the bytes at hand before it is used, so
//! hostile input gives an error, never a panic or a read past the end.
//! (The crates.io `hep` crate copies the payload into a `String` and is a
//! one-version hobby crate; this reader borrows and is ~150 lines.)
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The magic and the total length.
pub const HEADER_LEN: usize = 6;
const CHUNK_HEADER_LEN: usize = 6;

/// Generic chunk types (vendor 0) sipguard reads.
mod chunk {
    pub const IP_FAMILY: u16 = 0x0001;
    pub const IP_PROTO: u16 = 0x0002;
    pub const IPV4_SRC: u16 = 0x0003;
    pub const IPV4_DST: u16 = 0x0004;
    pub const IPV6_SRC: u16 = 0x0005;
    pub const IPV6_DST: u16 = 0x0006;
    pub const SRC_PORT: u16 = 0x0007;
    pub const DST_PORT: u16 = 0x0008;
    pub const PROTO_TYPE: u16 = 0x000b;
    pub const CAPTURE_ID: u16 = 0x000c;
    pub const AUTH_KEY: u16 = 0x000e;
    pub const PAYLOAD: u16 = 0x000f;
    pub const COMPRESSED_PAYLOAD: u16 = 0x0010;
}

/// The HEP protocol type of SIP (chunk 0x000b).
pub const PROTO_TYPE_SIP: u8 = 1;

/// Why bytes are not a usable HEPv3 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HepError {
    #[error("shorter than the 6-byte HEP header")]
    Short,
    #[error("HEP version {0}: only HEPv3 is read")]
    Version(u8),
    #[error("not HEP (no HEP3 magic)")]
    NotHep,
    #[error("total length {declared}: shorter than the header, or more than the {received} bytes received")]
    TotalLength { declared: usize, received: usize },
    #[error("a chunk header at offset {offset} is cut short")]
    ChunkCut { offset: usize },
    #[error("chunk {kind:#06x} at offset {offset}: length {len} is out of bounds")]
    ChunkLength {
        offset: usize,
        kind: u16,
        len: usize,
    },
    #[error("chunk type 0 is reserved")]
    ZeroType,
    #[error("chunk {kind:#06x}: {len} bytes where {expected} belong")]
    ChunkSize {
        kind: u16,
        len: usize,
        expected: usize,
    },
    #[error("no {0} chunk")]
    Missing(&'static str),
    #[error("source and destination are of different address families")]
    MixedFamilies,
    #[error("compressed payloads are not read")]
    Compressed,
}

/// A decoded HEPv3 message; the payload borrows from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HepPacket<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The IP protocol id chunk: 17 UDP, 6 TCP, 132 SCTP; Kamailio sends
    /// 22 for TLS, WS and WSS alike.
    pub ip_proto: u8,
    /// 1 = SIP; other HEP types (RTCP, logs...) are not SIP.
    pub proto_type: u8,
    pub capture_id: Option<u32>,
    pub auth_key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// The bytes this message took (its total length).
    pub len: usize,
}

/// The total length a HEPv3 header declares, for framing a TCP stream:
/// the caller reads that many bytes (header included) and decodes them.
pub fn frame_len(header: &[u8]) -> Result<usize, HepError> {
    let header = header.get(..HEADER_LEN).ok_or(HepError::Short)?;
    if &header[..4] != b"HEP3" {
        return Err(version_error(header[0]));
    }
    let declared = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if declared < HEADER_LEN {
        return Err(HepError::TotalLength {
            declared,
            received: HEADER_LEN,
        });
    }
    Ok(declared)
}

/// HEPv1 and v2 start with their version byte; anything else is not HEP.
fn version_error(first: u8) -> HepError {
    match first {
        1 | 2 => HepError::Version(first),
        _ => HepError::NotHep,
    }
}

/// What the chunks said, before the required ones are checked.
#[derive(Default)]
struct Fields<'a> {
    src4: Option<Ipv4Addr>,
    dst4: Option<Ipv4Addr>,
    src6: Option<Ipv6Addr>,
    dst6: Option<Ipv6Addr>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    ip_proto: Option<u8>,
    proto_type: Option<u8>,
    capture_id: Option<u32>,
    auth_key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    compressed: bool,
}

/// Decodes one HEPv3 message from the start of `bytes` (a datagram, or a
/// frame of a TCP stream); bytes after its total length are not read.
pub fn decode(bytes: &[u8]) -> Result<HepPacket<'_>, HepError> {
    let total = frame_len(bytes)?;
    if total > bytes.len() {
        return Err(HepError::TotalLength {
            declared: total,
            received: bytes.len(),
        });
    }
    let message = &bytes[..total];
    let mut fields = Fields::default();
    let mut offset = HEADER_LEN;
    while offset < total {
        let header = message
            .get(offset..offset + CHUNK_HEADER_LEN)
            .ok_or(HepError::ChunkCut { offset })?;
        let vendor = u16::from_be_bytes([header[0], header[1]]);
        let kind = u16::from_be_bytes([header[2], header[3]]);
        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let data = (len >= CHUNK_HEADER_LEN)
            .then(|| message.get(offset + CHUNK_HEADER_LEN..offset + len))
            .flatten()
            .ok_or(HepError::ChunkLength { offset, kind, len })?;
        if vendor == 0 {
            read_chunk(&mut fields, kind, data)?;
        }
        offset += len;
    }
    finish(fields, total)
}

fn read_chunk<'a>(fields: &mut Fields<'a>, kind: u16, data: &'a [u8]) -> Result<(), HepError> {
    match kind {
        0 => return Err(HepError::ZeroType),
        chunk::IP_FAMILY => {
            sized::<1>(kind, data)?;
        }
        chunk::IP_PROTO => fields.ip_proto = Some(sized::<1>(kind, data)?[0]),
        chunk::PROTO_TYPE => fields.proto_type = Some(sized::<1>(kind, data)?[0]),
        chunk::IPV4_SRC => fields.src4 = Some(Ipv4Addr::from(sized::<4>(kind, data)?)),
        chunk::IPV4_DST => fields.dst4 = Some(Ipv4Addr::from(sized::<4>(kind, data)?)),
        chunk::IPV6_SRC => fields.src6 = Some(Ipv6Addr::from(sized::<16>(kind, data)?)),
        chunk::IPV6_DST => fields.dst6 = Some(Ipv6Addr::from(sized::<16>(kind, data)?)),
        chunk::SRC_PORT => fields.src_port = Some(u16::from_be_bytes(sized::<2>(kind, data)?)),
        chunk::DST_PORT => fields.dst_port = Some(u16::from_be_bytes(sized::<2>(kind, data)?)),
        chunk::CAPTURE_ID => {
            fields.capture_id = Some(u32::from_be_bytes(sized::<4>(kind, data)?));
        }
        chunk::AUTH_KEY => fields.auth_key = Some(data),
        chunk::PAYLOAD => fields.payload = Some(data),
        chunk::COMPRESSED_PAYLOAD => fields.compressed = true,
        // Timestamps, keep-alive timer, correlation id, and the rest.
        _ => {}
    }
    Ok(())
}

/// A fixed-size chunk's data, or the size error.
fn sized<const N: usize>(kind: u16, data: &[u8]) -> Result<[u8; N], HepError> {
    data.try_into().map_err(|_| HepError::ChunkSize {
        kind,
        len: data.len() + CHUNK_HEADER_LEN,
        expected: N + CHUNK_HEADER_LEN,
    })
}

fn finish(fields: Fields<'_>, total: usize) -> Result<HepPacket<'_>, HepError> {
    let (src, dst): (IpAddr, IpAddr) = match (fields.src4, fields.dst4, fields.src6, fields.dst6) {
        (Some(s), Some(d), None, None) => (s.into(), d.into()),
        (None, None, Some(s), Some(d)) => (s.into(), d.into()),
        (None, _, None, _) => return Err(HepError::Missing("source address")),
        (_, None, _, None) => return Err(HepError::Missing("destination address")),
        _ => return Err(HepError::MixedFamilies),
    };
    let src_port = fields.src_port.ok_or(HepError::Missing("source port"))?;
    let dst_port = fields
        .dst_port
        .ok_or(HepError::Missing("destination port"))?;
    let payload = match (fields.payload, fields.compressed) {
        (Some(payload), _) => payload,
        (None, true) => return Err(HepError::Compressed),
        (None, false) => return Err(HepError::Missing("payload")),
    };
    Ok(HepPacket {
        src: SocketAddr::new(src, src_port),
        dst: SocketAddr::new(dst, dst_port),
        ip_proto: fields.ip_proto.ok_or(HepError::Missing("IP protocol"))?,
        proto_type: fields
            .proto_type
            .ok_or(HepError::Missing("protocol type"))?,
        capture_id: fields.capture_id,
        auth_key: fields.auth_key,
        payload,
        len: total,
    })
}

/// The SIP transport of a mirrored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Ws,
    Wss,
    Sctp,
    Other(u8),
}

impl Transport {
    /// From the IP protocol chunk; Kamailio's 22 (TLS, WS or WSS) is told
    /// apart by the top Via's transport (the client's, in requests and in
    /// the answers that echo them).
    pub fn of(ip_proto: u8, top_via: Option<&[u8]>) -> Transport {
        match ip_proto {
            17 => Transport::Udp,
            6 => Transport::Tcp,
            132 => Transport::Sctp,
            22 => match top_via.map(via_transport) {
                Some(Some(t)) if t.eq_ignore_ascii_case(b"WSS") => Transport::Wss,
                Some(Some(t)) if t.eq_ignore_ascii_case(b"WS") => Transport::Ws,
                _ => Transport::Tls,
            },
            other => Transport::Other(other),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Sctp => "sctp",
            Transport::Other(_) => "other",
        }
    }

    /// The layer-4 protocol it runs over (what the wire capture knows).
    pub fn ip_proto(self) -> u8 {
        match self {
            Transport::Udp => 17,
            Transport::Sctp => 132,
            Transport::Other(p) => p,
            _ => 6,
        }
    }
}

/// `SIP/2.0/WSS host` -> `WSS`.
fn via_transport(via: &[u8]) -> Option<&[u8]> {
    let protocol = via.split(|b| b.is_ascii_whitespace()).next()?;
    protocol.rsplit(|&b| b == b'/').next()
}

#[cfg(test)]
#[path = "hep_tests.rs"]
mod tests;
