//! Crafted Ethernet frames for verdict tests. Ordinary frames come from
//! etherparse; the unusual shapes (VLAN stacks, IPv4 options, IPv6 extension
//! headers, fragments) are made by editing those bytes, so every field the
//! XDP program reads stays consistent.
use std::net::IpAddr;

use etherparse::PacketBuilder;

pub const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const ETH_LEN: usize = 14;
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

fn v4(ip: IpAddr) -> [u8; 4] {
    match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => panic!("expected an IPv4 address"),
    }
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("expected an IPv6 address"),
    }
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// UDP from `src` to `dst:dport` (source port 40000).
pub fn udp(src: &str, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (ip(src), ip(dst));
    let builder = PacketBuilder::ethernet2(MAC_SRC, MAC_DST);
    let mut out = Vec::new();
    match src {
        IpAddr::V4(_) => builder
            .ipv4(v4(src), v4(dst), 64)
            .udp(40000, dport)
            .write(&mut out, payload),
        IpAddr::V6(_) => builder
            .ipv6(v6(src), v6(dst), 64)
            .udp(40000, dport)
            .write(&mut out, payload),
    }
    .expect("building a UDP frame");
    out
}

/// TCP from `src` to `dst:dport`; `syn` sets SYN, `ack` sets ACK.
pub fn tcp(src: &str, dst: &str, dport: u16, syn: bool, ack: bool) -> Vec<u8> {
    let (src, dst) = (ip(src), ip(dst));
    let builder = PacketBuilder::ethernet2(MAC_SRC, MAC_DST);
    let mut out = Vec::new();
    let mut tcp = match src {
        IpAddr::V4(_) => builder.ipv4(v4(src), v4(dst), 64),
        IpAddr::V6(_) => builder.ipv6(v6(src), v6(dst), 64),
    }
    .tcp(40000, dport, 1, 65535);
    if syn {
        tcp = tcp.syn();
    }
    if ack {
        tcp = tcp.ack(1);
    }
    tcp.write(&mut out, &[]).expect("building a TCP frame");
    out
}

/// TCP with a payload (ACK set: a segment of an open connection).
pub fn tcp_segment(src: &str, dst: &str, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = tcp(src, dst, dport, false, true);
    frame.extend_from_slice(payload);
    let total = (frame.len() - ETH_LEN) as u16;
    frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
    frame
}

/// The ban map's key for an address: an IPv4 address, or an IPv6
/// source's /64 (the default ban prefix).
pub fn ban_key(text: &str) -> guard_common::SourceKey {
    match ip(text) {
        IpAddr::V4(a) => guard_common::SourceKey::from_ipv4(a.octets()),
        IpAddr::V6(a) => guard_common::SourceKey::from_ipv6(a.octets(), 64),
    }
}

/// ICMPv6 of a given type and code from `src` to `dst`.
pub fn icmpv6(src: &str, dst: &str, icmp_type: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_SRC, MAC_DST)
        .ipv6(v6(ip(src)), v6(ip(dst)), 255)
        .icmpv6_raw(icmp_type, 0, [0; 4])
        .write(&mut out, &[0u8; 16])
        .expect("building an ICMPv6 frame");
    out
}

/// An ARP request (not IP: always passes).
pub fn arp() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&MAC_SRC);
    out.extend_from_slice(&0x0806u16.to_be_bytes());
    // htype 1, ptype IPv4, hlen 6, plen 4, op request, then addresses.
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&MAC_SRC);
    out.extend_from_slice(&[192, 0, 2, 1]);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&[192, 0, 2, 2]);
    out
}

/// Inserts VLAN tags `(tpid, vlan id)` after the MAC addresses, outermost first.
pub fn with_vlan_tags(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (tpid, vid) in tags {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&vid.to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

fn set_u16(frame: &mut [u8], at: usize, value: u16) {
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn get_u16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// Adds IPv4 options (a multiple of 4 bytes) to an untagged IPv4 frame.
pub fn with_ipv4_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = (frame[ETH_LEN] & 0x0f) as usize;
    let header_end = ETH_LEN + ihl * 4;
    let mut out = frame[..header_end].to_vec();
    out.extend_from_slice(options);
    out.extend_from_slice(&frame[header_end..]);
    out[ETH_LEN] = 0x40 | (ihl + options.len() / 4) as u8;
    let total = get_u16(&out, ETH_LEN + 2) + options.len() as u16;
    set_u16(&mut out, ETH_LEN + 2, total);
    out
}

/// Sets the IPv4 IHL field (nothing else) of an untagged IPv4 frame.
pub fn with_ipv4_ihl(frame: &[u8], ihl: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[ETH_LEN] = 0x40 | (ihl & 0x0f);
    out
}

/// Marks an untagged IPv4 frame as a fragment at `offset` (8-byte units).
pub fn ipv4_fragment(frame: &[u8], offset: u16, more_fragments: bool) -> Vec<u8> {
    let mut out = frame.to_vec();
    let flags = if more_fragments { 0x2000 } else { 0 };
    set_u16(&mut out, ETH_LEN + 6, flags | (offset & 0x1fff));
    out
}

/// An IPv6 extension header: (its protocol number, its bytes after the
/// next-header byte). Length fields inside are the caller's business.
pub struct ExtHeader {
    pub kind: u8,
    pub body: Vec<u8>,
}

/// Hop-by-hop or destination options (PadN filling 8 bytes).
pub fn options_header(kind: u8) -> ExtHeader {
    ExtHeader {
        kind,
        body: vec![0, 1, 4, 0, 0, 0, 0],
    }
}

/// A routing header (type 0 with no addresses, segments left 0): 8 bytes.
pub fn routing_header() -> ExtHeader {
    ExtHeader {
        kind: 43,
        body: vec![0, 0, 0, 0, 0, 0, 0],
    }
}

/// A fragment header at `offset` (8-byte units).
pub fn fragment_header(offset: u16, more_fragments: bool) -> ExtHeader {
    let field = (offset << 3) | more_fragments as u16;
    let mut body = vec![0];
    body.extend_from_slice(&field.to_be_bytes());
    body.extend_from_slice(&[0, 0, 0, 1]);
    ExtHeader { kind: 44, body }
}

/// Inserts extension headers between an untagged IPv6 header and its payload.
pub fn with_ipv6_ext_headers(frame: &[u8], headers: &[ExtHeader]) -> Vec<u8> {
    let ip = ETH_LEN;
    let payload_start = ip + 40;
    let mut out = frame[..payload_start].to_vec();
    let mut next = frame[ip + 6];
    let mut chain = Vec::new();
    // Build from the innermost header outwards so each knows its successor.
    for header in headers.iter().rev() {
        let mut bytes = vec![next];
        bytes.extend_from_slice(&header.body);
        bytes.extend_from_slice(&chain);
        chain = bytes;
        next = header.kind;
    }
    out[ip + 6] = next;
    out.extend_from_slice(&chain);
    out.extend_from_slice(&frame[payload_start..]);
    let payload_len = get_u16(frame, ip + 4) + chain.len() as u16;
    set_u16(&mut out, ip + 4, payload_len);
    out
}

/// The PBX's addresses: where every judged frame goes.
pub const PBX4: &str = "192.0.2.1";
pub const PBX6: &str = "2001:db8:ffff::1";

/// A frame carrying what the shared verdict's `packet` describes, sent to
/// the PBX (UDP and TCP from port 40000; a later fragment of a UDP
/// datagram; "other" is an ICMP echo request).
pub fn frame_of(packet: &guard_common::verdict::Packet) -> Vec<u8> {
    use guard_common::verdict::{Address, Transport};
    let (src, dst, v6) = match packet.source {
        Address::V4(a) => (std::net::Ipv4Addr::from(a).to_string(), PBX4, false),
        Address::V6(a) => (std::net::Ipv6Addr::from(a).to_string(), PBX6, true),
    };
    match packet.transport {
        Transport::Udp { dport, .. } => udp(&src, dst, dport, b"x"),
        Transport::Tcp { dport, syn, .. } => tcp(&src, dst, dport, syn, false),
        Transport::LaterFragment if v6 => {
            with_ipv6_ext_headers(&udp(&src, dst, 5060, b"x"), &[fragment_header(10, false)])
        }
        Transport::LaterFragment => ipv4_fragment(&udp(&src, dst, 5060, b"x"), 10, false),
        Transport::Other if v6 => icmpv6(&src, dst, 128),
        Transport::Other => icmpv4_echo(&src, dst),
    }
}

/// An ICMP echo request from `src` to `dst` (IPv4).
pub fn icmpv4_echo(src: &str, dst: &str) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_SRC, MAC_DST)
        .ipv4(v4(ip(src)), v4(ip(dst)), 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut out, &[0u8; 8])
        .expect("building an ICMP frame");
    out
}
