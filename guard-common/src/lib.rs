//! Types shared by sipguard's XDP program (`guard-ebpf`) and its controller
//! (`guard-userspace`). Everything here is `#[repr(C)]` plain data: the kernel
//! and user space read the same bytes out of the same maps.
//!
//! # Byte order
//! - Addresses (`SourceKey::addr`, LPM trie data) are in **network byte order**,
//!   exactly as they appear on the wire, so the XDP program copies them without
//!   swapping. IPv4 sources use the IPv4-mapped IPv6 form `::ffff:a.b.c.d`.
//! - LPM trie keys carry their `prefix_len` in host order (the kernel's rule).
//! - Every other integer (ports in [`port_index`], counters, times, limits) is
//!   in **host byte order**; the XDP program swaps ports once while parsing.
//! - Times are nanoseconds of `CLOCK_MONOTONIC_COARSE`, which the controller
//!   reads with clock_gettime and the XDP program derives from `jiffies`
//!   (see [`clock`]: an inlined load, where `bpf_ktime_get_coarse_ns` is a
//!   helper call), so a ban's expiry means the same to both sides, within a
//!   tick. Suspended time does not count: a ban lasts its time of the
//!   machine running.
#![no_std]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

/// Declares a type the kernel and user space exchange through a map or a
/// ring: pins its size at compile time (a changed layout fails the build
/// here, not at run time in the kernel) and, on the user-space side,
/// implements `aya::Pod` for it.
macro_rules! map_type {
    ($type:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$type>() == $size);
        // SAFETY: repr(C), Copy, made of integers, padding explicit (so every
        // byte pattern is a valid value and no byte is uninitialised).
        #[cfg(feature = "user")]
        unsafe impl aya::Pod for $type {}
    };
}

pub mod atomic;
pub mod clock;
pub mod rate;
#[cfg(feature = "user")]
pub mod sip_patterns;
pub mod sip_rules;
pub mod sip_scan;
#[cfg(feature = "user")]
pub mod sip_users;
pub mod verdict;

pub use rate::{RateWindow, RATE_SLOTS};

/// Services are numbered 1..=MAX_SERVICES (0 is [`NO_SERVICE`], so a zeroed
/// `PORTS` slot means "no service"); see [`service_bit`] for allow masks.
pub const MAX_SERVICES: usize = 31;
/// Slots in the `SERVICES` array (slot 0 is unused).
pub const SERVICE_SLOTS: u32 = MAX_SERVICES as u32 + 1;
/// Allow-mask bit for traffic that matches no service (lets an allow-listed
/// network through a `default_policy = "drop"`).
pub const UNCLASSIFIED_BIT: u32 = 1 << 31;
/// Allow-mask granting every service and unclassified traffic.
pub const ALLOW_ALL: u32 = u32::MAX;
/// Upper bound on configured rate rules.
pub const MAX_RATE_RULES: usize = 16;
/// Rate rules that may watch one (protocol, port). Small on purpose: the
/// XDP program walks this list for every packet to the port.
pub const MAX_RULES_PER_PORT: usize = 4;
/// Filler in [`PortClass::rules`] after the last rule (so a zeroed slot has none).
pub const NO_RULE_INDEX: u8 = 0;
/// `PortClass::service` value for a port that belongs to no service.
pub const NO_SERVICE: u8 = 0;

/// Allow-list mask bit granting service `id` (1..=MAX_SERVICES).
#[inline(always)]
pub const fn service_bit(id: u8) -> u32 {
    if id == NO_SERVICE || id as usize > MAX_SERVICES {
        0
    } else {
        1 << (id - 1)
    }
}

/// Index of the `(protocol, destination port)` slot in the `PORTS` array.
#[inline(always)]
pub const fn port_index(proto: L4Proto, port: u16) -> u32 {
    ((proto as u32) << 16) | port as u32
}
/// Slots of one policy in the `PORTS` array: one per TCP port and one per UDP port.
pub const PORT_SLOTS: u32 = 2 << 16;

/// `PORTS`, `SERVICES` and `RULES` each hold two policies side by side;
/// [`Settings::policy_slot`] names the one in force. A reload writes the
/// other one, then switches with a single write of `SETTINGS`: a packet sees
/// the whole old policy or the whole new one, never a mix.
pub const POLICY_SLOTS: u32 = 2;

/// Index of a port's class in `PORTS` under policy `slot`.
#[inline(always)]
pub const fn policy_port_index(slot: u8, proto: L4Proto, port: u16) -> u32 {
    (slot as u32 & 1) * PORT_SLOTS + port_index(proto, port)
}

/// Index of a service's policy in `SERVICES` under policy `slot`.
#[inline(always)]
pub const fn policy_service_index(slot: u8, service: u8) -> u32 {
    (slot as u32 & 1) * SERVICE_SLOTS + service as u32
}

/// Index of a rate rule in `RULES` under policy `slot`. Rate state, rule
/// counters and bans name a rule by its index within the policy.
#[inline(always)]
pub const fn policy_rule_index(slot: u8, rule: u32) -> u32 {
    (slot as u32 & 1) * MAX_RATE_RULES as u32 + rule
}

/// Transport protocols the policy can name.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4Proto {
    Tcp = 0,
    Udp = 1,
}

/// What the policy knows about one `(protocol, port)`: its service and the
/// rate rules that watch it. Looked up once per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortClass {
    /// Service id (1..=MAX_SERVICES), or [`NO_SERVICE`].
    pub service: u8,
    /// Rate rules counting packets to this port, as rule index + 1, packed
    /// from the start, then [`NO_RULE_INDEX`].
    pub rules: [u8; MAX_RULES_PER_PORT],
    /// [`PORT_SIP_WATCH`] and future per-port flags.
    pub flags: u8,
    pub _pad: [u8; 2],
}
map_type!(PortClass, 8);

/// PortClass flag: SIP signalling on this port is copied to user space
/// (requests arriving at it, answers leaving from it).
pub const PORT_SIP_WATCH: u8 = 1;

impl PortClass {
    pub const UNCLASSIFIED: PortClass = PortClass {
        service: NO_SERVICE,
        rules: [NO_RULE_INDEX; MAX_RULES_PER_PORT],
        flags: 0,
        _pad: [0; 2],
    };

    #[inline(always)]
    pub const fn watches_sip(&self) -> bool {
        self.flags & PORT_SIP_WATCH != 0
    }

    /// True if no rate rule watches this port.
    #[inline(always)]
    pub const fn has_rules(&self) -> bool {
        self.rules[0] != NO_RULE_INDEX
    }

    /// Adds rule `index` (once: a rule whose port list names a port twice,
    /// say "5060" and "5060/udp", must not count its packets twice); false
    /// if the port already has [`MAX_RULES_PER_PORT`] other rules.
    pub fn add_rule(&mut self, index: u8) -> bool {
        for slot in self.rules.iter_mut() {
            if *slot == index + 1 {
                return true;
            }
            if *slot == NO_RULE_INDEX {
                *slot = index + 1;
                return true;
            }
        }
        false
    }

    /// The rule indexes, in order.
    pub fn rule_indexes(&self) -> impl Iterator<Item = u8> + '_ {
        self.rules
            .iter()
            .take_while(|r| **r != NO_RULE_INDEX)
            .map(|r| r - 1)
    }

    pub fn rule_count(&self) -> usize {
        self.rule_indexes().count()
    }
}

/// Who may reach a service.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    /// Anyone, subject to the rate rules.
    Open = 0,
    /// Allow-listed sources only.
    Trusted = 1,
    /// Nobody.
    Closed = 2,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServicePolicy {
    /// An [`AccessMode`] as u8 (an enum read from a map must not hold an invalid value).
    pub access: u8,
}
map_type!(ServicePolicy, 1);

impl ServicePolicy {
    pub const fn access_mode(&self) -> AccessMode {
        match self.access {
            0 => AccessMode::Open,
            1 => AccessMode::Trusted,
            _ => AccessMode::Closed,
        }
    }
}

/// Rule flag: count only TCP connection attempts (SYN without ACK).
pub const RULE_SYN_ONLY: u8 = 1;

/// One auto-blacklist rule. See [`rate`] for the counting algorithm.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateRule {
    /// Packets allowed per window; packet `limit + 1` bans.
    pub limit: u32,
    pub flags: u8,
    pub _pad: [u8; 3],
    /// Width of one counting slot: `window / (RATE_SLOTS - 1)`, see [`rate`].
    pub slot_ns: u64,
    /// How long a ban created by this rule lasts.
    pub ban_ns: u64,
}
map_type!(RateRule, 24);

/// What traffic that matches no service gets. Stored in [`Settings`] as a
/// u8 (an enum read from a map must not hold an invalid value): decode it
/// with [`Settings::default_policy`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultPolicy {
    #[default]
    Pass = 0,
    Drop = 1,
}

/// Default [`Settings::peer_factor`].
pub const DEFAULT_PEER_FACTOR: u16 = 2;
/// Default [`Settings::peer_max_multiplier`].
pub const DEFAULT_PEER_MAX_MULTIPLIER: u16 = 200;

/// Global knobs, in a one-slot array so they change at run time without reloading.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// A [`DefaultPolicy`] as u8, for traffic that matches no service.
    pub default_policy: u8,
    /// Non-zero: compute and count every verdict, but pass every packet.
    pub monitor: u8,
    /// IPv6 sources are banned and rate-limited per prefix of this length (1..=128).
    pub ipv6_ban_prefix: u8,
    /// Which of the [`POLICY_SLOTS`] policies is in force (0 or 1).
    pub policy_slot: u8,
    /// A learned peer's rate budget per live user, as a multiple of each
    /// rule's limit (see [`rate::peer_multiplier`]).
    pub peer_factor: u16,
    /// The largest multiple of a rule's limit any peer's budget reaches.
    pub peer_max_multiplier: u16,
}
map_type!(Settings, 8);

impl Settings {
    /// The settings stored in `word` (their 8 bytes, read as one
    /// little-endian word).
    #[inline(always)]
    pub const fn from_word(word: u64) -> Settings {
        Settings {
            default_policy: word as u8,
            monitor: (word >> 8) as u8,
            ipv6_ban_prefix: (word >> 16) as u8,
            policy_slot: (word >> 24) as u8,
            peer_factor: (word >> 32) as u16,
            peer_max_multiplier: (word >> 48) as u16,
        }
    }

    /// The default policy; any value but `Drop`'s passes, as the kernel
    /// has always read it.
    pub const fn default_policy(&self) -> DefaultPolicy {
        match self.default_policy {
            1 => DefaultPolicy::Drop,
            _ => DefaultPolicy::Pass,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_policy: DefaultPolicy::Pass as u8,
            monitor: 0,
            ipv6_ban_prefix: 64,
            policy_slot: 0,
            peer_factor: DEFAULT_PEER_FACTOR,
            peer_max_multiplier: DEFAULT_PEER_MAX_MULTIPLIER,
        }
    }
}

/// Key of the ban map and (with a rule id) of the rate state: a source
/// address, IPv4-mapped for IPv4, IPv6 masked to `Settings::ipv6_ban_prefix`.
/// Aligned to 4 (no size change, so `RateKey` stays 20 bytes): with byte
/// alignment the BPF program built and read keys one byte at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
}
map_type!(SourceKey, 16);

impl SourceKey {
    /// `::ffff:a.b.c.d`, built from two words: a zeroed array with bytes
    /// set one by one became a `memset` call in the BPF program.
    #[inline(always)]
    pub const fn from_ipv4(octets: [u8; 4]) -> Self {
        let low = (u32::from_le_bytes(octets) as u64) << 32 | 0xffff_0000;
        // SAFETY: two u64s are 16 initialised bytes; `to_le` makes the
        // bytes the same on any host.
        let addr = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([0, low.to_le()]) };
        SourceKey { addr }
    }

    /// The IPv6 source with every bit past `prefix_len` cleared.
    #[inline(always)]
    pub fn from_ipv6(octets: [u8; 16], prefix_len: u8) -> Self {
        let mut addr = octets;
        let keep = if prefix_len > 128 {
            128
        } else {
            prefix_len as usize
        };
        let mut i = 0;
        while i < 16 {
            let bit = i * 8;
            if bit >= keep {
                addr[i] = 0;
            } else if keep - bit < 8 {
                addr[i] &= 0xffu8 << (8 - (keep - bit));
            }
            i += 1;
        }
        SourceKey { addr }
    }

    /// The IPv4 address if this key is IPv4-mapped.
    pub fn ipv4(&self) -> Option<[u8; 4]> {
        let a = &self.addr;
        if a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff {
            Some([a[12], a[13], a[14], a[15]])
        } else {
            None
        }
    }
}

/// Why a ban exists. Stored as u16 in [`BanEntry::reason`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanReason {
    /// Added by the operator.
    Manual = 1,
    /// Created in the kernel by a rate rule.
    RateLimit = 2,
    /// Repeated SIP authentication failures.
    AuthFailure = 3,
    /// One source failing on many usernames.
    Enumeration = 4,
    /// A decision of the CrowdSec fleet (its LAPI), not made here.
    Crowdsec = 5,
    /// A SIP request carrying a scanner fingerprint; `BanEntry::rule` holds
    /// the fingerprint's number (1-based).
    Scanner = 6,
    /// An INVITE to a dial rule's prefix from a source the rule does not
    /// permit, under a rule with a ban time; the ban names no rate rule,
    /// its event carries the dial rule's index.
    DialDenied = 7,
    /// A request naming an extension its extension rule does not permit
    /// from the source, which the kernel could not read (TCP split across
    /// segments, past 2 KiB, TLS seen through HEP): the controller bans on
    /// the first offence.
    ExtensionDenied = 8,
}

impl BanReason {
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(BanReason::Manual),
            2 => Some(BanReason::RateLimit),
            3 => Some(BanReason::AuthFailure),
            4 => Some(BanReason::Enumeration),
            5 => Some(BanReason::Crowdsec),
            6 => Some(BanReason::Scanner),
            7 => Some(BanReason::DialDenied),
            8 => Some(BanReason::ExtensionDenied),
            _ => None,
        }
    }

    pub const ALL: [BanReason; 8] = [
        BanReason::Manual,
        BanReason::RateLimit,
        BanReason::AuthFailure,
        BanReason::Enumeration,
        BanReason::Crowdsec,
        BanReason::Scanner,
        BanReason::DialDenied,
        BanReason::ExtensionDenied,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            BanReason::Manual => "manual",
            BanReason::RateLimit => "rate-limit",
            BanReason::AuthFailure => "auth-failure",
            BanReason::Enumeration => "enumeration",
            BanReason::Crowdsec => "crowdsec",
            BanReason::Scanner => "scanner",
            BanReason::DialDenied => "dial-denied",
            BanReason::ExtensionDenied => "extension-denied",
        }
    }
}

/// `BanEntry::expires_ns` of a ban that never expires.
pub const BAN_FOREVER: u64 = u64::MAX;
/// `BanEntry::rule` when no rate rule created the ban.
pub const NO_RULE: u16 = u16::MAX;

/// Value of the ban map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanEntry {
    /// CLOCK_MONOTONIC_COARSE ns at which the ban lapses; [`BAN_FOREVER`] for never.
    pub expires_ns: u64,
    /// CLOCK_MONOTONIC_COARSE ns at which the ban was made.
    pub created_ns: u64,
    /// Packets dropped by this ban (atomically incremented by every CPU).
    pub dropped: u64,
    /// A [`BanReason`].
    pub reason: u16,
    /// Rate rule index for [`BanReason::RateLimit`], else [`NO_RULE`].
    pub rule: u16,
    pub _pad: u32,
}
map_type!(BanEntry, 32);

impl BanEntry {
    #[inline(always)]
    pub const fn is_active(&self, now_ns: u64) -> bool {
        now_ns < self.expires_ns
    }
}

/// Sent through the `BAN_EVENTS` ring buffer for every ban the kernel creates.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanEvent {
    pub source: SourceKey,
    pub created_ns: u64,
    pub expires_ns: u64,
    pub reason: u16,
    /// The rate rule's index, or for [`BanReason::Scanner`] the number
    /// (1-based) of the fingerprint that matched.
    pub rule: u16,
    /// Packets the rule had counted, the banning one included.
    pub count: u32,
}
map_type!(BanEvent, 40);

/// Bytes of a SIP message's start copied to user space: the start line and
/// headers of any sane message (bodies such as SDP may be cut).
pub const SIP_CAPTURE_BYTES: usize = 2048;

/// `SipCaptureHeader::direction`: a request or answer arriving at the PBX.
pub const CAPTURE_INBOUND: u8 = 0;
/// `SipCaptureHeader::direction`: a message the PBX sent.
pub const CAPTURE_OUTBOUND: u8 = 1;

/// Metadata of one captured SIP packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SipCaptureHeader {
    /// The remote party: the source of an inbound packet, the destination of
    /// an outbound one (IPv4-mapped for IPv4; never prefix-masked).
    pub peer: [u8; 16],
    pub peer_port: u16,
    pub local_port: u16,
    /// [`CAPTURE_INBOUND`] or [`CAPTURE_OUTBOUND`].
    pub direction: u8,
    /// An [`L4Proto`] as u8.
    pub transport: u8,
    /// Non-zero when a SIP rule dropped the request in the kernel (monitor
    /// mode: would have dropped): the [`Reason`] (`ExtensionDenied` or
    /// `DialDenied`) as u8.
    pub denied: u8,
    /// The denying rule's index (extension or dial rule).
    pub denied_rule: u8,
    /// Bytes of payload copied into `data`.
    pub captured: u32,
    /// Bytes of payload the packet carried.
    pub payload_len: u32,
}
map_type!(SipCaptureHeader, 32);

/// One record of the `SIP_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SipCapture {
    pub header: SipCaptureHeader,
    pub data: [u8; SIP_CAPTURE_BYTES],
}

/// Key of the rate state map: one entry per (source, rule group), holding
/// the windows of the group's rules ([`RateState`]). Rules 0-3 are group 0,
/// so under a policy of up to four rules (the built-in one has two) a
/// source has one entry and a packet costs one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateKey {
    pub source: SourceKey,
    /// [`rate_group`] of the rules whose windows the entry holds.
    pub group: u32,
}
map_type!(RateKey, 20);

/// Windows per rate-state entry: the most rules one port can have, so a
/// port whose rules sit in one group costs one lookup. Sixteen (one per
/// possible rule) would cost 1 KiB per source, four times the memory for
/// windows no policy of four rules or fewer ever uses.
pub const RATE_LANES: usize = MAX_RULES_PER_PORT;

/// The rate-state group of rule `rule` (its index in the policy).
#[inline(always)]
pub const fn rate_group(rule: u32) -> u32 {
    rule / RATE_LANES as u32
}

/// The window of rule `rule` within its group's [`RateState`].
#[inline(always)]
pub const fn rate_lane(rule: u32) -> usize {
    rule as usize % RATE_LANES
}

/// Value of the rate state map: the windows of one source's rules of one
/// group, window [`rate_lane`] for each.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    pub windows: [RateWindow; RATE_LANES],
}
map_type!(RateState, 256);

/// Slots of the XDP program's per-CPU source cache (`SOURCE_CACHE`): a
/// direct-mapped table of what recent IPv4 sources' lookups answered.
/// 6 KiB per CPU, so it stays in the L1 cache.
pub const SOURCE_CACHE_SLOTS: u32 = 256;

/// One slot of the source cache: an IPv4 source (its bytes in memory
/// order, read as a little-endian word) and two answers, each with the
/// generation it was found under:
/// - its allow-list entry's service mask, under the allow lists'
///   generation (`ALLOW_GENERATION`, bumped by the controller whenever an
///   allow list or the policy slot changes; never 0 once written);
/// - that it is in no ban, deny or fleet set, under `clear_stamp`: the drop
///   sets' generation (`DROP_GENERATION`), or 0 for not known. Every entry
///   made in those sets bumps it after it is made, and it only grows, so a
///   stamp that still equals it proves none was added.
///
/// A slot of another address or an older generation is searched again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceCacheEntry {
    pub addr: u32,
    pub generation: u32,
    pub mask: u32,
    pub _pad: u32,
    pub clear_stamp: u64,
}
map_type!(SourceCacheEntry, 24);

/// How far the controller moves the drop sets' generation (`DROP_GENERATION`)
/// after an entry it made. The XDP program adds 1 (atomically) after each
/// ban it makes; the controller cannot add atomically, so it reads the
/// word and writes it this far on. The increments the program made in
/// between are lost, but the word still only grows: it jumps past them.
pub const DROP_GENERATION_CONTROLLER_STEP: u64 = 1 << 32;

/// The source-cache slot of IPv4 source `addr` (a multiplicative hash: a
/// subnet's neighbours land in different slots).
#[inline(always)]
pub const fn source_cache_slot(addr: u32) -> u32 {
    addr.wrapping_mul(0x9e37_79b1) >> (32 - SOURCE_CACHE_SLOTS.trailing_zeros())
}

/// Value of the `PEERS` map (key: [`SourceKey`]): a source the controller
/// saw authenticate. Its rate budget is each rule's limit times
/// [`rate::peer_multiplier`] of its [`PeerEntry::budget_users`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerEntry {
    /// CLOCK_MONOTONIC_COARSE ns at which the peer lapses.
    pub expires_ns: u64,
    /// Registrations live from this source (0 counts as 1).
    pub live_users: u32,
    /// A [`PeerKind`] as u16.
    pub kind: u16,
    pub _pad: u16,
}
map_type!(PeerEntry, 16);

impl PeerEntry {
    #[inline(always)]
    pub const fn is_active(&self, now_ns: u64) -> bool {
        now_ns < self.expires_ns
    }

    /// The users its budget counts: its live registrations, except for a
    /// provider, whose budget is the cap (`u32::MAX` users). The PBX chose
    /// that address itself, its trunk carries the calls of every user, and
    /// banning it would cut them all.
    #[inline(always)]
    pub const fn budget_users(&self) -> u32 {
        if self.kind == PeerKind::Provider as u16 {
            u32::MAX
        } else {
            self.live_users
        }
    }

    /// Its budget as a multiple of each rule's limit, under `factor` and
    /// `max_multiplier` ([`rate::peer_multiplier`]).
    #[inline(always)]
    pub const fn multiplier(&self, factor: u16, max_multiplier: u16) -> u64 {
        rate::peer_multiplier(Some(self.budget_users()), factor, max_multiplier)
    }
}

/// How a source became a peer.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// Its users registered with the PBX.
    Registered = 1,
    /// The PBX registered with it (a provider).
    Provider = 2,
    /// It placed an authenticated call or subscription (an idle timeout).
    Call = 3,
}

impl PeerKind {
    /// From its number in a [`PeerEntry`] (unknown: `Registered`).
    pub const fn from_u16(value: u16) -> PeerKind {
        match value {
            2 => PeerKind::Provider,
            3 => PeerKind::Call,
            _ => PeerKind::Registered,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            PeerKind::Registered => "registered",
            PeerKind::Provider => "provider",
            PeerKind::Call => "call",
        }
    }
}

/// Slots of the per-CPU `VERDICTS` array: one per (reason, service id).
pub const VERDICT_SLOTS: u32 = Reason::COUNT as u32 * SERVICE_SLOTS;

/// Index of (reason, service) in `VERDICTS`; service 0 is "no service".
#[inline(always)]
pub const fn verdict_index(reason: Reason, service: u8) -> u32 {
    let service = if service as u32 >= SERVICE_SLOTS {
        0
    } else {
        service as u32
    };
    reason as u32 * SERVICE_SLOTS + service
}

/// Verdict reasons (with the service, the index into `VERDICTS`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Banned = 0,
    Denied = 1,
    NotTrusted = 2,
    Closed = 3,
    RateLimited = 4,
    DefaultDrop = 5,
    Malformed = 6,
    Fragment = 7,
    PassedAllowlisted = 8,
    Passed = 9,
    /// A SIP request carrying a scanner fingerprint (`sip_scan`).
    Scanner = 10,
    /// The source is in the fleet deny set (CrowdSec range decisions, feeds).
    Fleet = 11,
    /// A REGISTER, INVITE or SUBSCRIBE naming an extension its extension
    /// rule does not permit from this source (`sip_rules`).
    ExtensionDenied = 12,
    /// An INVITE dialling a dial rule's prefix from a source the rule does
    /// not permit (`sip_rules`).
    DialDenied = 13,
}

impl Reason {
    pub const COUNT: usize = 14;
    pub const ALL: [Reason; Reason::COUNT] = [
        Reason::Banned,
        Reason::Denied,
        Reason::NotTrusted,
        Reason::Closed,
        Reason::RateLimited,
        Reason::DefaultDrop,
        Reason::Malformed,
        Reason::Fragment,
        Reason::PassedAllowlisted,
        Reason::Passed,
        Reason::Scanner,
        Reason::Fleet,
        Reason::ExtensionDenied,
        Reason::DialDenied,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Reason::Banned => "banned",
            Reason::Denied => "denied",
            Reason::NotTrusted => "not_trusted",
            Reason::Closed => "closed",
            Reason::RateLimited => "rate_limited",
            Reason::DefaultDrop => "default_drop",
            Reason::Malformed => "malformed",
            Reason::Fragment => "fragment",
            Reason::PassedAllowlisted => "passed_allowlisted",
            Reason::Passed => "passed",
            Reason::Scanner => "scanner",
            Reason::Fleet => "fleet",
            Reason::ExtensionDenied => "extension_denied",
            Reason::DialDenied => "dial_denied",
        }
    }

    /// Whether the verdict drops the packet (outside monitor mode).
    pub const fn drops(self) -> bool {
        !matches!(
            self,
            Reason::Fragment | Reason::PassedAllowlisted | Reason::Passed
        )
    }
}

/// Packets and bytes, one per CPU per slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
map_type!(Counter, 16);

/// Per-rule counters (per CPU): packets the rule counted, and packets it limited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounter {
    pub counted: u64,
    pub limited: u64,
}
map_type!(RuleCounter, 16);

/// One rule's state on one CPU: its counters and its current time slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RulePerCpu {
    pub hits: RuleCounter,
    pub slot: rate::SlotEpoch,
}
map_type!(RulePerCpu, 40);

/// The value of `RULES_PER_CPU`: every rule's [`RulePerCpu`] of one policy
/// slot, so that the rate step reads them with one lookup per packet.
/// A rule's counters are its index's in both slots together.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RulesPerCpu {
    pub rules: [RulePerCpu; MAX_RATE_RULES],
}
map_type!(RulesPerCpu, 40 * MAX_RATE_RULES);

/// Index into the per-CPU `HEALTH` array: things that went wrong in the kernel.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// The ban map was full: the source was dropped but not banned.
    BanMapFull = 0,
    /// The ban events ring buffer was full: a ban was made but not reported.
    EventLost = 1,
    /// A rate-state insert failed (should not happen with an LRU map).
    RateStateFailed = 2,
    /// The SIP capture ring buffer was full: a SIP message was not seen.
    SipCaptureLost = 3,
}

impl Health {
    pub const COUNT: usize = 4;
    pub const ALL: [Health; Health::COUNT] = [
        Health::BanMapFull,
        Health::EventLost,
        Health::RateStateFailed,
        Health::SipCaptureLost,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Health::BanMapFull => "ban_map_full",
            Health::EventLost => "ban_event_lost",
            Health::RateStateFailed => "rate_state_failed",
            Health::SipCaptureLost => "sip_capture_lost",
        }
    }
}

/// The value of a fleet deny set entry (`FLEET_V4`, `FLEET_V6`): the
/// entry's own prefix length, so that a lookup, which answers with the
/// value only, also tells which network held the address.
pub type FleetEntry = u32;

/// The layout of every map's keys and values. A controller adopts pinned
/// maps only under the same version; bump it when any map type changes.
pub const MAP_LAYOUT_VERSION: u32 = 8;

/// Map names, shared so a rename cannot split the two sides.
pub mod map_names {
    pub const BANS: &str = "BANS";
    pub const DENY_V4: &str = "DENY_V4";
    pub const DENY_V6: &str = "DENY_V6";
    pub const ALLOW_V4: &str = "ALLOW_V4";
    pub const ALLOW_V6: &str = "ALLOW_V6";
    pub const PORTS: &str = "PORTS";
    pub const SERVICES: &str = "SERVICES";
    pub const RULES: &str = "RULES";
    pub const SETTINGS: &str = "SETTINGS";
    pub const RATE_STATE: &str = "RATE_STATE";
    pub const VERDICTS: &str = "VERDICTS";
    pub const RULES_PER_CPU: &str = "RULES_PER_CPU";
    pub const HEALTH: &str = "HEALTH";
    pub const BAN_EVENTS: &str = "BAN_EVENTS";
    pub const SIP_EVENTS: &str = "SIP_EVENTS";
    pub const CAPTURE_PROG: &str = "CAPTURE_PROG";
    pub const SIP_PATTERNS: &str = "SIP_PATTERNS";
    pub const SIP_SCANS: &str = "SIP_SCANS";
    pub const SIP_SCRATCH: &str = "SIP_SCRATCH";
    pub const PEERS: &str = "PEERS";
    pub const FLEET_V4: &str = "FLEET_V4";
    pub const FLEET_V6: &str = "FLEET_V6";
    pub const FLEET_IN_USE: &str = "FLEET_IN_USE";
    pub const SIP_PERMIT: &str = "SIP_PERMIT";
    pub const SIP_DIAL: &str = "SIP_DIAL";
    pub const ALLOW_GENERATION: &str = "ALLOW_GENERATION";
    pub const SOURCE_CACHE: &str = "SOURCE_CACHE";
    pub const DROP_GENERATION: &str = "DROP_GENERATION";
    pub const CLOCK: &str = "CLOCK";

    /// Every map, for pinning.
    pub const ALL: [&str; 29] = [
        BANS,
        DENY_V4,
        DENY_V6,
        ALLOW_V4,
        ALLOW_V6,
        PORTS,
        SERVICES,
        RULES,
        SETTINGS,
        RATE_STATE,
        VERDICTS,
        RULES_PER_CPU,
        HEALTH,
        BAN_EVENTS,
        SIP_EVENTS,
        CAPTURE_PROG,
        SIP_PATTERNS,
        SIP_SCANS,
        SIP_SCRATCH,
        PEERS,
        FLEET_V4,
        FLEET_V6,
        FLEET_IN_USE,
        SIP_PERMIT,
        SIP_DIAL,
        ALLOW_GENERATION,
        SOURCE_CACHE,
        DROP_GENERATION,
        CLOCK,
    ];
}

/// The XDP program's name in the object file.
pub const PROGRAM_NAME: &str = "sipguard";
/// The XDP program tail-called to copy inbound SIP packets.
pub const CAPTURE_PROGRAM_NAME: &str = "sipguard_capture";
/// The XDP program tail-called for a SIP request a SIP rule denied: it
/// copies the request to the controller (which logs it and counts the
/// failure) and drops it, or passes it in monitor mode.
pub const CAPTURE_DENIED_PROGRAM_NAME: &str = "sipguard_capture_denied";
/// `CAPTURE_PROG` slots: the capture of passing SIP packets, and of denied ones.
pub const CAPTURE_PASSED_SLOT: u32 = 0;
pub const CAPTURE_DENIED_SLOT: u32 = 1;
/// The tc egress program (the PBX's SIP answers) in the object file.
pub const EGRESS_PROGRAM_NAME: &str = "sipguard_egress";
/// The XDP program the controller test-runs to read the kernel's clocks
/// (`clock::ClockSample`); never attached.
pub const CLOCK_PROGRAM_NAME: &str = "sipguard_clock";

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn ipv4_keys_are_ipv4_mapped() {
        let key = SourceKey::from_ipv4([192, 0, 2, 77]);
        assert_eq!(
            key.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 77]
        );
        assert_eq!(key.ipv4(), Some([192, 0, 2, 77]));
        assert_eq!(core::mem::align_of::<SourceKey>(), 4);
    }

    #[test]
    fn settings_read_as_one_word_are_the_stored_fields() {
        let stored = Settings {
            default_policy: 1,
            monitor: 2,
            ipv6_ban_prefix: 64,
            policy_slot: 1,
            peer_factor: 0x1234,
            peer_max_multiplier: 0xfedc,
        };
        // SAFETY: Settings is 8 bytes of integers without padding.
        let word: u64 = unsafe { core::mem::transmute(stored) };
        assert_eq!(Settings::from_word(u64::from_le(word)), stored);
    }

    #[test]
    fn source_cache_slots_stay_in_the_table_and_spread_a_subnet() {
        let mut seen = std::collections::BTreeSet::new();
        for host in 0..=255u8 {
            let slot = source_cache_slot(u32::from_le_bytes([192, 0, 2, host]));
            assert!(slot < SOURCE_CACHE_SLOTS);
            seen.insert(slot);
        }
        // A /24's hosts share few slots (a plain mask of the low byte
        // would put all of them in one: its first octet).
        assert!(seen.len() > 128, "{} slots for 256 hosts", seen.len());
        assert!(source_cache_slot(u32::MAX) < SOURCE_CACHE_SLOTS);
    }

    #[test]
    fn the_default_policy_is_stored_as_the_kernel_reads_it() {
        let mut settings = Settings::default();
        assert_eq!(settings.default_policy(), DefaultPolicy::Pass);
        assert_eq!(settings.default_policy, 0);
        settings.default_policy = DefaultPolicy::Drop as u8;
        assert_eq!(settings.default_policy, 1);
        assert_eq!(settings.default_policy(), DefaultPolicy::Drop);
        // A value no enum holds passes, as the XDP program always read it.
        settings.default_policy = 7;
        assert_eq!(settings.default_policy(), DefaultPolicy::Pass);
    }

    #[test]
    fn a_rule_is_added_to_a_port_once() {
        let mut class = PortClass::UNCLASSIFIED;
        assert!(class.add_rule(3));
        assert!(class.add_rule(3));
        assert!(class.add_rule(0));
        assert_eq!(class.rule_indexes().collect::<Vec<_>>(), [3, 0]);
        for rule in 1..=2 {
            assert!(class.add_rule(rule));
        }
        assert!(!class.add_rule(4), "a fifth rule does not fit");
        assert!(class.add_rule(3), "one already there still does");
    }

    #[test]
    fn a_providers_budget_is_the_cap_and_other_peers_count_their_users() {
        let peer = |kind: PeerKind, live_users| PeerEntry {
            expires_ns: 1,
            live_users,
            kind: kind as u16,
            _pad: 0,
        };
        assert_eq!(peer(PeerKind::Registered, 12).multiplier(2, 200), 24);
        assert_eq!(peer(PeerKind::Registered, 0).multiplier(2, 200), 2);
        assert_eq!(peer(PeerKind::Call, 0).multiplier(2, 200), 2);
        assert_eq!(peer(PeerKind::Provider, 0).budget_users(), u32::MAX);
        assert_eq!(peer(PeerKind::Provider, 0).multiplier(2, 200), 200);
        assert_eq!(peer(PeerKind::Provider, 3).multiplier(2, 30), 30);
    }
}
