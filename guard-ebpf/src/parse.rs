//! Packet parsing: Ethernet (+ up to two VLAN tags) -> IPv4/IPv6 (+ up to six
//! extension headers) -> UDP/TCP. Every read is bounds-checked; anything that
//! claims to be IP but does not fit is `Malformed`. The same parser serves
//! the XDP program (direct packet access) and the tc egress program
//! (`bpf_skb_load_bytes`) through [`PacketBytes`].
use aya_ebpf::{
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
pub use guard_common::verdict::Address;

const ETH_HEADER_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const MAX_VLAN_TAGS: usize = 2;

const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const MAX_IPV6_EXT_HEADERS: usize = 6;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;
const IPPROTO_HIP: u8 = 139;
const IPPROTO_SHIM6: u8 = 140;

/// Neighbour discovery (RFC 4861): router/neighbour solicitation and
/// advertisement, redirect. Blocking them breaks IPv6 itself.
const ICMPV6_ND_FIRST: u8 = 133;
const ICMPV6_ND_LAST: u8 = 137;

const TCP_MIN_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// Headers ending further into the frame than this are treated as malformed.
/// It bounds every offset for the verifier; 2 KiB of IPv6 extension headers
/// is already far beyond anything legitimate.
const MAX_HEADER_END: usize = 2048;

pub enum Frame {
    /// Not IP (ARP, LLDP, ...) or ICMPv6 neighbour discovery: never filtered.
    AlwaysPass,
    /// Claims to be IP but is truncated or inconsistent.
    Malformed,
    Ip(Packet),
}

pub struct Packet {
    pub source: Address,
    pub destination: Address,
    pub transport: Transport,
}

/// Where a TCP or UDP payload lies in the frame.
#[derive(Clone, Copy)]
pub struct Payload {
    pub start: usize,
    pub end: usize,
}

/// The shared verdict's transport, carrying the payload's position along
/// for SIP capture.
pub type Transport = guard_common::verdict::Transport<Payload>;

/// Bounds-checked access to a frame's bytes.
pub trait PacketBytes {
    /// Copies `N` bytes at `offset`, or `None` when they are not all inside
    /// the frame. Keep `N >= 2`: LLVM rewrites a 1-byte check as
    /// `start >= end`, from which the verifier grants no readable bytes.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
    fn frame_len(&self) -> usize;
    /// Copies `len` (1..=`dst` capacity) bytes at `offset` into `dst`.
    fn copy_out(&self, offset: usize, dst: *mut u8, len: u32) -> bool;
}

impl PacketBytes for XdpContext {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_HEADER_END {
            return None;
        }
        let start = self.data() + offset;
        if start + N > self.data_end() {
            return None;
        }
        // SAFETY: [start, start + N) was just checked to lie inside the frame.
        Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.data_end() - self.data()
    }

    #[inline(always)]
    fn copy_out(&self, offset: usize, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the helper checks the frame bounds; `dst` holds `len` bytes.
        unsafe { bpf_xdp_load_bytes(self.ctx, offset as u32, dst.cast(), len) == 0 }
    }
}

impl PacketBytes for TcContext {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_HEADER_END {
            return None;
        }
        TcContext::load::<[u8; N]>(self, offset).ok()
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.len() as usize
    }

    #[inline(always)]
    fn copy_out(&self, offset: usize, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the helper checks the skb bounds; `dst` holds `len` bytes.
        unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), offset as u32, dst.cast(), len) == 0 }
    }
}

#[inline(always)]
fn load_u16<P: PacketBytes>(ctx: &P, offset: usize) -> Option<u16> {
    ctx.load::<2>(offset).map(u16::from_be_bytes)
}

#[inline(always)]
pub fn parse<P: PacketBytes>(ctx: &P) -> Frame {
    let (ethertype, l3) = match ethernet(ctx) {
        Some(found) => found,
        None => return Frame::Malformed,
    };
    let parsed = match ethertype {
        ETH_P_IPV4 => ipv4(ctx, l3),
        ETH_P_IPV6 => ipv6(ctx, l3),
        // A third VLAN tag: we cannot see what it carries, so we cannot vouch for it.
        ETH_P_8021Q | ETH_P_8021AD => None,
        _ => return Frame::AlwaysPass,
    };
    parsed.unwrap_or(Frame::Malformed)
}

/// The ethertype after up to two VLAN tags, and where the L3 header starts.
#[inline(always)]
fn ethernet<P: PacketBytes>(ctx: &P) -> Option<(u16, usize)> {
    let mut ethertype = load_u16(ctx, 12)?;
    let mut offset = ETH_HEADER_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // Tag: 2 bytes TCI, then the inner ethertype.
        ethertype = load_u16(ctx, offset + 2)?;
        offset += 4;
    }
    Some((ethertype, offset))
}

// The fixed header is read in one checked load *before* any length field is
// trusted: otherwise LLVM uses the length comparison to drop bounds checks
// that the verifier (which does not relate lengths to packet pointers) needs.
#[inline(always)]
fn ipv4<P: PacketBytes>(ctx: &P, l3: usize) -> Option<Frame> {
    let header = ctx.load::<IPV4_MIN_HEADER>(l3)?;
    if header[0] >> 4 != 4 {
        return None;
    }
    let header_len = ((header[0] & 0x0f) as usize) * 4;
    if header_len < IPV4_MIN_HEADER {
        return None;
    }
    let total_len = u16::from_be_bytes([header[2], header[3]]) as usize;
    if total_len < header_len || l3 + total_len > ctx.frame_len() {
        return None;
    }
    let fragment = u16::from_be_bytes([header[6], header[7]]);
    let protocol = header[9];
    let source = Address::V4([header[12], header[13], header[14], header[15]]);
    let destination = Address::V4([header[16], header[17], header[18], header[19]]);

    let transport = if fragment & 0x1fff != 0 {
        Transport::LaterFragment
    } else {
        transport(ctx, protocol, l3 + header_len, l3 + total_len)?
    };
    Some(Frame::Ip(Packet {
        source,
        destination,
        transport,
    }))
}

#[inline(always)]
fn ipv6<P: PacketBytes>(ctx: &P, l3: usize) -> Option<Frame> {
    // As for IPv4: the fixed header first, lengths after.
    let header = ctx.load::<IPV6_HEADER>(l3)?;
    if header[0] >> 4 != 6 {
        return None;
    }
    let payload_len = u16::from_be_bytes([header[4], header[5]]) as usize;
    // Zero means a jumbogram (RFC 2675), whose length lives in an option.
    let ip_end = if payload_len == 0 {
        ctx.frame_len()
    } else {
        l3 + IPV6_HEADER + payload_len
    };
    if ip_end > ctx.frame_len() {
        return None;
    }
    let mut next = header[6];
    let mut address = [0u8; 16];
    address.copy_from_slice(&header[8..24]);
    let source = Address::V6(address);
    address.copy_from_slice(&header[24..40]);
    let destination = Address::V6(address);

    let mut offset = l3 + IPV6_HEADER;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_extension(next) {
            break;
        }
        // Every extension header starts with: next header, length, and (for a
        // fragment header) reserved + offset. One 4-byte read covers all.
        let ext = ctx.load::<4>(offset)?;
        let header_len = match next {
            IPPROTO_AH => (ext[1] as usize + 2) * 4,
            IPPROTO_FRAGMENT => {
                if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
                    // Fragment offset > 0: no ports in here.
                    let transport = Transport::LaterFragment;
                    return Some(Frame::Ip(Packet {
                        source,
                        destination,
                        transport,
                    }));
                }
                8
            }
            _ => (ext[1] as usize + 1) * 8,
        };
        next = ext[0];
        offset += header_len;
        if offset > MAX_HEADER_END {
            return None;
        }
    }
    if is_ipv6_extension(next) {
        // More extension headers than we walk: refuse rather than guess.
        return None;
    }
    if next == IPPROTO_ICMPV6 {
        // Type, code, checksum: 4 bytes every ICMPv6 message has.
        let icmp_type = ctx.load::<4>(offset)?[0];
        if (ICMPV6_ND_FIRST..=ICMPV6_ND_LAST).contains(&icmp_type) {
            return Some(Frame::AlwaysPass);
        }
        let transport = Transport::Other;
        return Some(Frame::Ip(Packet {
            source,
            destination,
            transport,
        }));
    }
    let transport = transport(ctx, next, offset, ip_end)?;
    Some(Frame::Ip(Packet {
        source,
        destination,
        transport,
    }))
}

#[inline(always)]
fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_FRAGMENT
            | IPPROTO_AH
            | IPPROTO_DSTOPTS
            | IPPROTO_MH
            | IPPROTO_HIP
            | IPPROTO_SHIM6
    )
}

/// The transport header at `l4`; the IP packet ends at `ip_end`.
#[inline(always)]
fn transport<P: PacketBytes>(ctx: &P, protocol: u8, l4: usize, ip_end: usize) -> Option<Transport> {
    match protocol {
        IPPROTO_UDP => {
            let header = ctx.load::<UDP_HEADER>(l4)?;
            let length = u16::from_be_bytes([header[4], header[5]]) as usize;
            if length < UDP_HEADER {
                return None;
            }
            Some(Transport::Udp {
                sport: u16::from_be_bytes([header[0], header[1]]),
                dport: u16::from_be_bytes([header[2], header[3]]),
                payload: Payload {
                    start: l4 + UDP_HEADER,
                    end: (l4 + length).min(ip_end),
                },
            })
        }
        IPPROTO_TCP => {
            let header = ctx.load::<TCP_MIN_HEADER>(l4)?;
            let header_len = ((header[12] >> 4) as usize) * 4;
            if header_len < TCP_MIN_HEADER {
                return None;
            }
            let flags = header[13];
            Some(Transport::Tcp {
                sport: u16::from_be_bytes([header[0], header[1]]),
                dport: u16::from_be_bytes([header[2], header[3]]),
                syn: flags & TCP_FLAG_SYN != 0 && flags & TCP_FLAG_ACK == 0,
                payload: Payload {
                    start: l4 + header_len,
                    end: ip_end,
                },
            })
        }
        _ => Some(Transport::Other),
    }
}
