//! The verdict: one function, [`judge`], shared by the XDP program and the
//! controller. The XDP program runs it over its maps for every packet; the
//! controller runs it over the compiled policy and the live maps for
//! `sipguard explain` and the SSH-lockout check. Both sides implement
//! [`Lookup`]; the order of the steps and what each decides live here once.
//!
//! The steps, in order (each may end the verdict):
//! 1. ban ([`Step::Ban`]): an unexpired ban on the source drops;
//! 2. deny list ([`Step::Deny`]): drops;
//! 3. non-first fragments carry no ports: they pass ([`Step::Fragment`]);
//! 4. service access ([`Step::Access`]): `closed` drops; `trusted` drops
//!    sources its allow list does not grant;
//! 5. allow list ([`Step::Allow`]): an allow-listed source passes without
//!    rate counting. It is only searched where its answer can change the
//!    verdict (trusted services, rate-limited ports, unclassified traffic
//!    under "drop"), so `passed_allowlisted` counts the packets that passed
//!    *because* of it;
//!    Then, on ports watched for SIP, SIP inspection ([`Step::Sip`]): a
//!    request carrying a scanner fingerprint drops and bans its source
//!    (reason `scanner`), unless the source is allow-listed for the service;
//! 6. rate rules ([`Step::Rate`]): the packet that exceeds a rule drops (the
//!    kernel bans its source there);
//! 7. the service passes ([`Step::Service`]), or traffic matching no service
//!    gets the default policy ([`Step::Default`]).
//!
//! Monitor mode is part of the result: [`Verdict::drops`] is false for every
//! packet while it is on, yet the reason is computed and counted as usual.
//!
//! # Extending it
//! New kernel rules are added here, once, and both sides follow:
//! - learned peers (a per-source peer budget in the rate check) extend
//!   [`Lookup::exceeds_rate_rules`]'s contract or add a lookup next to it,
//!   consulted in step 6;
//! - SIP inspection (step 5b) reads the request through
//!   [`Lookup::scanner_fingerprint`]; further SIP rules (a denied extension
//!   or dialled number) read the same [`crate::sip_scan::SipSummary`] there.
use crate::{
    service_bit, AccessMode, DefaultPolicy, L4Proto, PortClass, Reason, Settings, SourceKey,
    CAPTURE_INBOUND, NO_SERVICE, UNCLASSIFIED_BIT,
};

/// An IP address in network byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Address {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Address {
    /// The key a ban or rate window of this source has: IPv4-mapped for
    /// IPv4, IPv6 masked to the ban prefix.
    #[inline(always)]
    pub fn source_key(&self, ipv6_ban_prefix: u8) -> SourceKey {
        match *self {
            Address::V4(addr) => SourceKey::from_ipv4(addr),
            Address::V6(addr) => SourceKey::from_ipv6(addr, ipv6_ban_prefix),
        }
    }
}

/// What the verdict needs of a packet's transport. `P` is whatever else a
/// side carries along: the XDP program keeps the payload's position there
/// (for SIP capture), the controller nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport<P = ()> {
    Tcp {
        sport: u16,
        dport: u16,
        /// A connection attempt: SYN without ACK.
        syn: bool,
        payload: P,
    },
    Udp {
        sport: u16,
        dport: u16,
        payload: P,
    },
    /// A fragment other than the first: it carries no ports.
    LaterFragment,
    /// Any other protocol (ICMP, GRE, ESP, ...).
    Other,
}

/// A packet as the verdict sees it: where it comes from and what it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<P = ()> {
    pub source: Address,
    pub transport: Transport<P>,
}

/// What the verdict reads (and, in the kernel, counts). Every method sees
/// the policy slot in force when it needs one, so a whole verdict reads one
/// policy even while a reload switches slots.
pub trait Lookup {
    /// The settings in force (default policy, monitor, IPv6 ban prefix,
    /// policy slot). The XDP program reads them once per packet.
    fn settings(&mut self) -> Settings;
    /// True if `source` is under an unexpired ban. The kernel also counts
    /// the drop on the ban.
    fn is_banned(&mut self, source: &SourceKey) -> bool;
    /// True if the deny list holds `source`.
    fn is_denied(&mut self, source: &Address) -> bool;
    /// The service mask of `source`'s (longest-prefix) allow entry; 0 if none.
    fn allow_mask(&mut self, source: &Address) -> u32;
    /// The class of `(proto, port)` under policy `slot`.
    fn port_class(&mut self, proto: L4Proto, port: u16, slot: u8) -> PortClass;
    /// The access mode of `service` under policy `slot` (closed if unknown).
    fn access_mode(&mut self, service: u8, slot: u8) -> AccessMode;
    /// True if the packet exceeds one of `class`'s rate rules. The kernel
    /// counts the packet against each rule and bans the source on the one
    /// exceeded; the controller only peeks ("would the next packet
    /// exceed?") and changes nothing.
    fn exceeds_rate_rules(
        &mut self,
        source: &SourceKey,
        class: &PortClass,
        is_syn: bool,
        slot: u8,
    ) -> bool;
    /// The scanner fingerprint (its 1-based number) the packet's SIP
    /// request carries, 0 if none or if the request cannot be read. Asked
    /// only of packets to a port watched for SIP that no earlier step
    /// decided. The XDP program reads the payload with
    /// [`crate::sip_scan`]; the controller has no packet and keeps this
    /// default.
    fn scanner_fingerprint(&mut self, _slot: u8) -> u16 {
        0
    }
    /// Bans `source` for carrying fingerprint `pattern` (the kernel, for
    /// the ban time of policy `slot`); the controller's default changes nothing.
    fn ban_scanner(&mut self, _source: &SourceKey, _pattern: u16, _slot: u8) {}
}

/// The step that decided a verdict (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The frame itself: malformed (drops).
    Parse,
    Ban,
    Deny,
    Fragment,
    Access,
    Allow,
    Rate,
    /// SIP inspection: a scanner's fingerprint (drops and bans).
    Sip,
    /// A service's port: the service passes (after its rate rules, if any).
    Service,
    /// Traffic matching no service: the default policy.
    Default,
}

/// The outcome of [`judge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub reason: Reason,
    /// The class of the destination port; [`PortClass::UNCLASSIFIED`] for
    /// fragments and other protocols.
    pub class: PortClass,
    /// Monitor mode was on: nothing is dropped.
    pub monitor: bool,
}

impl Verdict {
    #[inline(always)]
    pub const fn new(reason: Reason, class: PortClass, settings: &Settings) -> Self {
        Verdict {
            reason,
            class,
            monitor: settings.monitor != 0,
        }
    }

    /// The step that decided. Derived, not stored: the XDP program never
    /// needs it, and a value carried along every path costs it registers.
    /// (A frame that is not IP passes with [`Step::Default`]'s reason.)
    pub const fn step(&self) -> Step {
        match self.reason {
            Reason::Malformed => Step::Parse,
            Reason::Banned => Step::Ban,
            Reason::Denied => Step::Deny,
            Reason::Fragment => Step::Fragment,
            Reason::Closed | Reason::NotTrusted => Step::Access,
            Reason::PassedAllowlisted => Step::Allow,
            Reason::RateLimited => Step::Rate,
            Reason::Scanner => Step::Sip,
            Reason::DefaultDrop => Step::Default,
            Reason::Passed if self.class.service != NO_SERVICE => Step::Service,
            Reason::Passed => Step::Default,
        }
    }

    /// Whether the packet is dropped: the reason drops and monitor mode is off.
    #[inline(always)]
    pub const fn drops(&self) -> bool {
        self.reason.drops() && !self.monitor
    }
}

/// The verdict for `packet`, reading the policy through `lookup` under
/// `settings` (which the caller reads with [`Lookup::settings`]; the XDP
/// program must read them after parsing, see its comments).
#[inline(always)]
pub fn judge<L: Lookup, P>(lookup: &mut L, packet: &Packet<P>, settings: &Settings) -> Verdict {
    judge_parts(lookup, &packet.source, &packet.transport, settings)
}

/// [`judge`] over the parts of a packet (the XDP program keeps more in its
/// packet than the verdict needs).
#[inline(always)]
pub fn judge_parts<L: Lookup, P>(
    lookup: &mut L,
    address: &Address,
    transport: &Transport<P>,
    settings: &Settings,
) -> Verdict {
    let verdict = |reason, class, _step: Step| Verdict::new(reason, class, settings);
    let source = address.source_key(settings.ipv6_ban_prefix);
    // Banned and denied packets still count against the service they were
    // aimed at; their port class is read on those (early) returns only.
    let slot = settings.policy_slot;
    if lookup.is_banned(&source) {
        let class = classify(lookup, transport, CAPTURE_INBOUND, slot).0;
        return verdict(Reason::Banned, class, Step::Ban);
    }
    if lookup.is_denied(address) {
        let class = classify(lookup, transport, CAPTURE_INBOUND, slot).0;
        return verdict(Reason::Denied, class, Step::Deny);
    }
    if let Transport::LaterFragment = transport {
        return verdict(Reason::Fragment, PortClass::UNCLASSIFIED, Step::Fragment);
    }
    let (class, is_syn) = classify(lookup, transport, CAPTURE_INBOUND, slot);

    // Service policy. The allow list is searched only where its answer can
    // change the verdict: trusted services, ports with rate rules (an
    // allow-listed source skips them), and unclassified traffic under
    // "drop". Elsewhere the packet passes either way.
    if class.service != NO_SERVICE {
        let access = lookup.access_mode(class.service, slot);
        if access == AccessMode::Closed {
            return verdict(Reason::Closed, class, Step::Access);
        }
        if access == AccessMode::Trusted || class.has_rules() {
            let allowed = lookup.allow_mask(address) & service_bit(class.service) != 0;
            if allowed {
                return verdict(Reason::PassedAllowlisted, class, Step::Allow);
            }
            if access == AccessMode::Trusted {
                return verdict(Reason::NotTrusted, class, Step::Access);
            }
        }
    } else if (settings.default_policy() == DefaultPolicy::Drop || class.has_rules())
        && lookup.allow_mask(address) & UNCLASSIFIED_BIT != 0
    {
        return verdict(Reason::PassedAllowlisted, class, Step::Allow);
    }

    // SIP inspection, before the rate rules so that a scanner's first
    // request drops. An allow-listed source is never banned for it; the
    // allow list is searched again only on a match, which is rare.
    if class.watches_sip() {
        let pattern = lookup.scanner_fingerprint(slot);
        if pattern != 0 {
            if lookup.allow_mask(address) & service_bit(class.service) != 0 {
                return verdict(Reason::PassedAllowlisted, class, Step::Allow);
            }
            lookup.ban_scanner(&source, pattern, slot);
            return verdict(Reason::Scanner, class, Step::Sip);
        }
    }

    if class.has_rules() && lookup.exceeds_rate_rules(&source, &class, is_syn, slot) {
        return verdict(Reason::RateLimited, class, Step::Rate);
    }

    if class.service == NO_SERVICE && settings.default_policy() == DefaultPolicy::Drop {
        verdict(Reason::DefaultDrop, class, Step::Default)
    } else {
        verdict(Reason::Passed, class, Step::Service)
    }
}

/// The class of the PBX's port (the destination of an arriving packet, the
/// source of a departing one: `direction` is [`CAPTURE_INBOUND`] or
/// [`crate::CAPTURE_OUTBOUND`]), and whether the packet opens a TCP connection.
#[inline(always)]
pub fn classify<L: Lookup, P>(
    lookup: &mut L,
    transport: &Transport<P>,
    direction: u8,
    slot: u8,
) -> (PortClass, bool) {
    let pbx_port = |sport: u16, dport: u16| {
        if direction == CAPTURE_INBOUND {
            dport
        } else {
            sport
        }
    };
    match *transport {
        Transport::Tcp {
            sport, dport, syn, ..
        } => (
            lookup.port_class(L4Proto::Tcp, pbx_port(sport, dport), slot),
            syn,
        ),
        Transport::Udp { sport, dport, .. } => (
            lookup.port_class(L4Proto::Udp, pbx_port(sport, dport), slot),
            false,
        ),
        Transport::LaterFragment | Transport::Other => (PortClass::UNCLASSIFIED, false),
    }
}
