//! sipguard's XDP program. One packet's path, top to bottom:
//!
//! parse -> ban -> deny -> fleet -> fragment -> service access (closed, trusted)
//!       -> allow list (trusted services, "drop") -> SIP inspection
//!          (fingerprints, then extension and dial rules)
//!       -> rate rules (count; over a limit: allow list, peer budget, ban)
//!       -> verdict
//!
//! An IPv4 source this CPU found in no ban, deny or fleet set skips those
//! three searches while none of them gained an entry (`source_cache`).
//!
//! The rate step's counting and its over-budget step run in global BPF
//! functions (`sipguard_count`, `sipguard_over_budget`, `sipguard_rate_ban`;
//! see `rate_limit`), which the verifier checks once each.
//!
//! The steps after parsing are the shared verdict, `guard_common::verdict::
//! judge` (the controller's `explain` runs the same function); this program
//! supplies its lookups over the maps ([`KernelLookup`]). Every path ends in
//! exactly one `Reason`, which is counted (per CPU, packets and bytes) and
//! turned into XDP_DROP or XDP_PASS; monitor mode passes all.
//! SIP requests that pass are then copied to the controller by tail-calling
//! `sipguard_capture` (a program of its own, so the verifier checks the copy
//! once instead of once per verdict path), and requests a SIP rule denied
//! by tail-calling `sipguard_capture_denied` (which drops them). Both read
//! the packet's description (peer, ports, payload) that the packet path
//! leaves in the per-CPU `CAPTURE_ASK` right before the tail call, instead
//! of parsing the packet again. The tc egress program at the bottom copies
//! the PBX's SIP answers.
#![no_std]
#![no_main]

mod bans;
mod clock;
mod counters;
mod maps;
mod parse;
mod rate_limit;
mod sip_capture;
mod sip_inspect;
mod source_cache;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md, TC_ACT_PIPE},
    macros::{classifier, xdp},
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use guard_common::{
    policy_port_index, policy_service_index,
    sip_rules::SipPermit,
    verdict::{
        classify, dial_rate_step, judge_parts, over_budget_step, sip_rules_step, CachedClear,
        Lookup, RateAsk, RateExcess, SipAsk, SipOutcome, Verdict,
    },
    AccessMode, Health, L4Proto, PortClass, Reason, Settings, SourceKey, CAPTURE_DENIED_SLOT,
    CAPTURE_INBOUND, CAPTURE_OUTBOUND, CAPTURE_PASSED_SLOT,
};

use crate::{
    counters::count_health,
    maps::{
        CAPTURE_ASK, CAPTURE_PROG, DENY_V4, DENY_V6, FLEET_IN_USE, FLEET_V4, FLEET_V6, PORTS,
        SERVICES, SETTINGS,
    },
    parse::{Address, Frame, Transport},
    sip_capture::CaptureAsk,
};

/// The shared verdict's lookups, over this program's maps, and the arriving
/// packet whose SIP request step 5b reads: its context and where its payload
/// starts and how long it is (0: none; egress has no packet here). Kept to
/// 16 bytes: the packet path's stack is nearly all of the kernel's 512.
struct KernelLookup {
    ctx: *mut xdp_md,
    payload_start: u32,
    payload_len: u32,
}

impl KernelLookup {
    #[inline(always)]
    fn without_packet() -> KernelLookup {
        KernelLookup {
            ctx: core::ptr::null_mut(),
            payload_start: 0,
            payload_len: 0,
        }
    }
}

impl Lookup for KernelLookup {
    /// One read per packet: the policy slot in it keeps every later lookup
    /// in one policy, even while a reload switches slots. Read as one
    /// volatile word and taken apart: copied whole (`*settings`), LLVM
    /// spilled an uninitialised register at the program's start, which the
    /// verifier refuses; read field by field, it took six loads.
    #[inline(always)]
    fn settings(&mut self) -> Settings {
        match SETTINGS.get_ptr(0) {
            // SAFETY: a live map value of 8 bytes, 8-byte aligned (array
            // map values are), read once.
            Some(s) => Settings::from_word(unsafe { core::ptr::read_volatile(s as *const u64) }),
            None => Settings::default(),
        }
    }

    #[inline(always)]
    fn is_banned(&mut self, source: &SourceKey) -> bool {
        bans::is_banned(source)
    }

    #[inline(always)]
    fn is_denied(&mut self, source: &Address) -> bool {
        match source {
            Address::V4(addr) => DENY_V4.get(Key::new(32, *addr)).is_some(),
            Address::V6(addr) => DENY_V6.get(Key::new(128, *addr)).is_some(),
        }
    }

    #[inline(always)]
    fn is_fleet_denied(&mut self, source: &Address) -> bool {
        let family = match source {
            Address::V4(_) => 0,
            Address::V6(_) => 1,
        };
        if FLEET_IN_USE.get(family).copied().unwrap_or(0) == 0 {
            return false;
        }
        match source {
            Address::V4(addr) => FLEET_V4.get(Key::new(32, *addr)).is_some(),
            Address::V6(addr) => FLEET_V6.get(Key::new(128, *addr)).is_some(),
        }
    }

    /// This CPU's source cache, for an IPv4 source; IPv6 sources are
    /// searched every time.
    #[inline(always)]
    fn drop_sets_cached(&mut self, source: &Address) -> CachedClear {
        let Address::V4(addr) = source else {
            return CachedClear::Unknown { stamp: 0 };
        };
        match source_cache::clear_v4(u32::from_le_bytes(*addr)) {
            Ok(()) => CachedClear::Clear,
            Err(stamp) => CachedClear::Unknown { stamp },
        }
    }

    /// Also takes the slot for a source seen the first time (`stamp` 0).
    #[inline(always)]
    fn note_clear(&mut self, source: &Address, stamp: u64) {
        if let Address::V4(addr) = source {
            source_cache::note_clear_v4(u32::from_le_bytes(*addr), stamp);
        }
    }

    /// Services the source's allow-list entry grants (0 when it has none).
    #[inline(always)]
    fn allow_mask(&mut self, source: &Address) -> u32 {
        source_cache::allow_mask(source)
    }

    #[inline(always)]
    fn port_class(&mut self, proto: L4Proto, port: u16, slot: u8) -> PortClass {
        PORTS
            .get(policy_port_index(slot, proto, port))
            .copied()
            .unwrap_or(PortClass::UNCLASSIFIED)
    }

    #[inline(always)]
    fn access_mode(&mut self, service: u8, slot: u8) -> AccessMode {
        match SERVICES.get(policy_service_index(slot, service)) {
            Some(policy) => policy.access_mode(),
            // Unreachable with a valid id; refuse rather than open.
            None => AccessMode::Closed,
        }
    }

    #[inline(always)]
    fn count_rate(
        &mut self,
        source: &SourceKey,
        address: &Address,
        allow_bit: u32,
        class: &PortClass,
        is_syn: bool,
        slot: u8,
    ) -> RateExcess {
        rate_limit::count_rate(source, address, allow_bit, class, is_syn, slot)
    }

    #[inline(always)]
    fn peer_users(&mut self, source: &SourceKey) -> Option<u32> {
        rate_limit::peer_users(source)
    }

    #[inline(always)]
    fn rate_ban(&mut self, source: &SourceKey, excess: &RateExcess, slot: u8) {
        rate_limit::ban(source, excess, slot)
    }

    /// In the global function `sipguard_over_budget`.
    #[inline(always)]
    fn over_budget(&mut self, source: &SourceKey, excess: &RateExcess, ask: &RateAsk) -> bool {
        let (hi, lo) = rate_limit::key_words(source);
        let packed = ((ask.slot & 1) as u64)
            | (ask.peer_factor as u64) << 16
            | (ask.peer_max_multiplier as u64) << 32;
        sipguard_over_budget(hi, lo, excess.to_word(), packed) != 0
    }

    /// Reads the request (only while the policy has fingerprints or SIP
    /// rules). Forgets the payload unless the SIP rules have something to
    /// judge, so that [`Lookup::sip_rules`] costs nothing then.
    #[inline(always)]
    fn scanner_fingerprint(&mut self, slot: u8) -> u16 {
        if self.payload_len == 0 {
            return 0;
        }
        // The table is looked up here too: without it, nothing is copied.
        let word = match sip_inspect::patterns(slot) {
            Some(_) => sip_inspect::read(self.ctx, self.payload_start, self.payload_len, slot),
            None => 0,
        };
        if word & sip_inspect::NEEDS_RULES == 0 {
            self.payload_len = 0;
        }
        word as u16
    }

    /// In the global function `sipguard_sip_rules`, for a request the
    /// reader found something in for the rules.
    #[inline(always)]
    fn sip_rules(&mut self, ask: &SipAsk<'_>) -> SipOutcome {
        if self.payload_len == 0 {
            return SipOutcome::Pass;
        }
        // Scalars only: the address as two words (IPv4 in the low 32 bits).
        let (hi, lo, v4) = match ask.address {
            Address::V4(a) => (0, u32::from_le_bytes(*a) as u64, 1u64),
            Address::V6(a) => {
                let (hi, lo) = rate_limit::addr_words(a);
                (hi, lo, 0)
            }
        };
        let (shi, slo) = rate_limit::key_words(ask.source);
        let packed = (ask.slot & 1) as u64 | (ask.service as u64) << 8 | v4 << 24;
        let mut outcome = SipOutcome::from_word(sipguard_sip_rules(hi, lo, shi, slo, packed));
        if let SipOutcome::DialCounted { rule } = outcome {
            outcome = dial_rate_step(self, ask, rule);
        }
        if let SipOutcome::DialDenied { rule } = outcome {
            // After the step, in a function of its own: the step's stack
            // and the ban's would not fit in the call chain's 512 bytes.
            sipguard_dial_ban(shi, slo, packed | (rule as u64) << 32);
        }
        outcome
    }

    #[inline(always)]
    fn sip_user_rules(&mut self, which: usize, _slot: u8) -> u64 {
        sip_inspect::user_rules(which)
    }

    #[inline(always)]
    fn sip_dial_rule(&mut self, slot: u8) -> u8 {
        sip_inspect::dial_rule(slot)
    }

    #[inline(always)]
    fn sip_permit(&mut self, source: &Address, slot: u8) -> SipPermit {
        sip_inspect::permit(source, slot)
    }

    #[inline(always)]
    fn dial_permits_peers(&mut self, rule: u8, slot: u8) -> bool {
        sip_inspect::dial_rule_info(rule, slot).0
    }

    #[inline(always)]
    fn dial_counts_calls(&mut self, rule: u8, slot: u8) -> bool {
        sip_inspect::dial_rule_info(rule, slot).2 != 0
    }

    /// In the global function `sipguard_dial_count`.
    #[inline(always)]
    fn count_dial(&mut self, source: &SourceKey, rule: u8, slot: u8) -> bool {
        let (hi, lo) = rate_limit::key_words(source);
        rate_limit::sipguard_dial_count(hi, lo, rule as u64 | ((slot & 1) as u64) << 8) != 0
    }

    /// Notes the denial for the capture that tells the controller; the
    /// ban of a dial rule with a ban time follows the step (see
    /// [`Lookup::sip_rules`] above).
    #[inline(always)]
    fn sip_denied(&mut self, _source: &SourceKey, reason: Reason, rule: u8, _slot: u8) {
        sip_inspect::note_denied(reason as u32 | (rule as u32) << 8);
    }

    #[inline(always)]
    fn ban_scanner(&mut self, source: &SourceKey, pattern: u16, slot: u8) {
        if let Some(table) = sip_inspect::patterns(slot) {
            // SAFETY: a live map value, read only.
            let ban_ns = unsafe { (*table).ban_ns };
            if ban_ns != 0 {
                bans::ban_scanner(source, pattern, ban_ns);
            }
        }
    }
}

/// The shared verdict's over-budget step (peer budget, ban) for source
/// (`hi`, `lo`), the [`RateExcess`] word `excess`, and `packed`: bit 0 the
/// policy slot, 16-31 the peer factor, 32-47 its cap. 1: banned. A global
/// BPF function (see `rate_limit`'s docs); scalars in and out, and no
/// address rebuilt here: LLVM keeps a rebuilt address byte by byte, and
/// that function's stack and the packet path's must fit in 512 bytes.
#[no_mangle]
#[inline(never)]
pub extern "C" fn sipguard_over_budget(hi: u64, lo: u64, excess: u64, packed: u64) -> u32 {
    let source = rate_limit::key_of(hi, lo);
    let excess = RateExcess::from_word(excess);
    // Only the fields the step reads; the address is not one of them.
    let ask = RateAsk {
        address: Address::V4([0; 4]),
        class: PortClass::UNCLASSIFIED,
        is_syn: false,
        slot: (packed & 1) as u8,
        ipv6_ban_prefix: 0,
        peer_factor: (packed >> 16) as u16,
        peer_max_multiplier: (packed >> 32) as u16,
    };
    over_budget_step(&mut KernelLookup::without_packet(), &source, &excess, &ask) as u32
}

/// The shared SIP rules step for the source: its address (`hi`, `lo`;
/// IPv4 in the low 32 bits of `lo`), its ban key (`shi`, `slo`) and
/// `packed`: bit 0 the policy slot, 8-15 the service, bit 24 set for
/// IPv4. Returns a [`SipOutcome`] word. A global BPF function: the
/// verifier checks the step (its LPM lookups) once, not once per path of
/// the packet path. The address and key go to the per-CPU scratch and the
/// step reads them there: on this function's stack, LLVM kept them byte
/// by byte, and the packet path leaves it 160 bytes.
#[no_mangle]
#[inline(never)]
pub extern "C" fn sipguard_sip_rules(hi: u64, lo: u64, shi: u64, slo: u64, packed: u64) -> u32 {
    let Some(scratch) = sip_inspect::scratch() else {
        return 0;
    };
    // SAFETY: a per-CPU map value only this CPU uses.
    let (address, source) = unsafe {
        let address = core::ptr::addr_of_mut!((*scratch).rules_address);
        if packed >> 24 & 1 != 0 {
            *address = Address::V4((lo as u32).to_le_bytes());
        } else {
            *address = Address::V6(rate_limit::key_of(hi, lo).addr);
        }
        let source = core::ptr::addr_of_mut!((*scratch).rules_source);
        *source = rate_limit::key_of(shi, slo);
        (&*address, &*source)
    };
    let ask = SipAsk {
        address,
        source,
        service: (packed >> 8) as u8,
        slot: (packed & 1) as u8,
    };
    sip_rules_step(&mut KernelLookup::without_packet(), &ask).to_word()
}

/// Bans the source (its ban key `hi`, `lo`; `packed` as for
/// [`sipguard_sip_rules`], the dial rule's index in bits 32-39) for the
/// dial rule's ban time, if it has one.
#[no_mangle]
#[inline(never)]
pub extern "C" fn sipguard_dial_ban(hi: u64, lo: u64, packed: u64) -> u32 {
    let rule = (packed >> 32) as u8;
    let ban_ns = sip_inspect::dial_rule_info(rule, (packed & 1) as u8).1;
    if ban_ns == 0 {
        return 0;
    }
    bans::ban_dial(&rate_limit::key_of(hi, lo), rule, ban_ns);
    1
}

/// Where a TCP or UDP packet's payload starts and its length (0: none).
#[inline(always)]
fn payload_of(transport: &Transport) -> (u32, u32) {
    match *transport {
        Transport::Udp { payload, .. } | Transport::Tcp { payload, .. }
            if payload.end > payload.start =>
        {
            (payload.start as u32, (payload.end - payload.start) as u32)
        }
        _ => (0, 0),
    }
}

#[xdp]
pub fn sipguard(ctx: XdpContext) -> u32 {
    // Read before parsing. Read after it (as this program did before the
    // rate step's global functions), LLVM spilled an uninitialised
    // register at the start ("R4 !read_ok"); which order works depends on
    // register allocation, so `cargo xtask test` loads the program first.
    let settings = KernelLookup::without_packet().settings();
    let frame = parse::parse(&ctx);
    let (verdict, handed) = match frame {
        Frame::AlwaysPass => (parse_verdict(Reason::Passed, &settings), false),
        Frame::Malformed => (parse_verdict(Reason::Malformed, &settings), false),
        Frame::Ip(packet) => {
            let (payload_start, payload_len) = payload_of(&packet.transport);
            let mut lookup = KernelLookup {
                ctx: ctx.ctx,
                payload_start,
                payload_len,
            };
            let verdict = judge_parts(&mut lookup, &packet.source, &packet.transport, &settings);
            // Described here, where the packet is at hand, for the capture
            // programs tail-called below.
            let handed = verdict.class.watches_sip()
                && (!verdict.drops() || sip_denied(&verdict))
                && payload_len != 0
                && sip_capture::ring_has_room()
                && hand_off(&packet);
            (verdict, handed)
        }
    };
    let class = verdict.class;
    counters::count_verdict(
        verdict.reason,
        class.service,
        (ctx.data_end() - ctx.data()) as u64,
    );
    // A request a SIP rule denied goes to the controller (which logs it
    // and counts the failure) by the denied capture, which drops it
    // (passes it in monitor mode). Tail calls do not return when they succeed.
    let sip_denied = sip_denied(&verdict);
    if sip_denied && handed {
        unsafe { CAPTURE_PROG.tail_call(&ctx, CAPTURE_DENIED_SLOT) };
    }
    if verdict.drops() {
        return xdp_action::XDP_DROP;
    }
    if handed && !sip_denied {
        // The capture program passes the packet.
        unsafe { CAPTURE_PROG.tail_call(&ctx, CAPTURE_PASSED_SLOT) };
    }
    xdp_action::XDP_PASS
}

/// A SIP rule denied the request: the denied capture logs and drops it.
#[inline(always)]
fn sip_denied(verdict: &Verdict) -> bool {
    matches!(verdict.reason, Reason::ExtensionDenied | Reason::DialDenied)
}

/// Describes the packet to the capture program about to be tail-called
/// (this CPU's `CAPTURE_ASK`); false if there is nothing to copy.
#[inline(always)]
fn hand_off(packet: &parse::Packet) -> bool {
    match CAPTURE_ASK.get_ptr_mut(0) {
        // SAFETY: this CPU's value; the tail call that reads it keeps the CPU.
        Some(ask) => sip_capture::describe(packet, CAPTURE_INBOUND, unsafe { &mut *ask }),
        None => false,
    }
}

/// Copies the packet the packet path handed over ([`hand_off`]), and
/// marks the description used: a capture program reached without a fresh
/// one (from a packet path of an earlier load, during a restart, which
/// describes nothing) copies nothing rather than a stale peer's packet,
/// and counts the request as lost.
#[inline(always)]
fn capture_handed(ctx: &XdpContext, denied: u16) {
    let Some(ask) = CAPTURE_ASK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's value, written by the packet path right before
    // the tail call that runs the caller.
    unsafe {
        if (*ask).header.payload_len == 0 {
            count_health(Health::SipCaptureLost);
            return;
        }
        sip_capture::capture(ctx, &*ask, denied);
        (*ask).header.payload_len = 0;
    }
}

/// The verdict on a frame the shared judge never sees (not IP, malformed).
#[inline(always)]
fn parse_verdict(reason: Reason, settings: &Settings) -> Verdict {
    Verdict::new(reason, PortClass::UNCLASSIFIED, settings)
}

/// Tail-called for SIP packets that passed: copies their payload, which
/// the packet path described ([`hand_off`]).
#[xdp]
pub fn sipguard_capture(ctx: XdpContext) -> u32 {
    capture_handed(&ctx, 0);
    xdp_action::XDP_PASS
}

/// Tail-called for SIP requests a SIP rule denied: copies them, marked
/// with the rule, and drops them (passes them in monitor mode). Reached
/// only from the packet path's denial, so the noted rule is this packet's.
#[xdp]
pub fn sipguard_capture_denied(ctx: XdpContext) -> u32 {
    let denied = sip_inspect::take_denied();
    capture_handed(&ctx, denied as u16);
    if KernelLookup::without_packet().settings().monitor != 0 {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// Test-run by the controller at load to read the kernel's clocks (see
/// `clock`); never attached.
#[xdp]
pub fn sipguard_clock(ctx: XdpContext) -> u32 {
    clock::sample(ctx.ctx)
}

/// tc egress: copies the PBX's SIP answers (sent from a watched port) to the
/// controller. It never drops or changes a packet.
#[classifier]
pub fn sipguard_egress(ctx: TcContext) -> i32 {
    let slot = KernelLookup::without_packet().settings().policy_slot;
    if let Frame::Ip(packet) = parse::parse(&ctx) {
        let (class, _) = classify(
            &mut KernelLookup::without_packet(),
            &packet.transport,
            CAPTURE_OUTBOUND,
            slot,
        );
        let mut ask = CaptureAsk::default();
        if class.watches_sip() && sip_capture::describe(&packet, CAPTURE_OUTBOUND, &mut ask) {
            sip_capture::capture(&ctx, &ask, 0);
        }
    }
    TC_ACT_PIPE as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
