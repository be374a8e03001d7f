//! The verdict: one function, [`judge`], shared by the XDP program and the
//! controller. The XDP program runs it over its maps for every packet; the
//! controller runs it over the compiled policy and the live maps for
//! `sipguard explain` and the SSH-lockout check. Both sides implement
//! [`Lookup`]; the order of the steps and what each decides live here once.
//!
//! The steps, in order (each may end the verdict):
//! 1. ban ([`Step::Ban`]): an unexpired ban on the source drops;
//! 2. deny list ([`Step::Deny`]): drops;
//!
//!    then the fleet deny set ([`Step::Fleet`]): networks other machines
//!    decided on (CrowdSec range decisions, blocklist feeds), kept apart
//!    from the operator's deny list. It drops, except allow-listed sources
//!    and learned peers ([`Lookup::peer_users`]): a fleet decision never
//!    drops a network the operator trusts nor the PBX's own users (both
//!    are searched only on a match, which is rare);
//! 3. non-first fragments carry no ports: they pass ([`Step::Fragment`]);
//! 4. service access ([`Step::Access`]): `closed` drops; `trusted` drops
//!    sources its allow list does not grant;
//! 5. allow list ([`Step::Allow`]): a trusted service passes allow-listed
//!    sources, and "drop" passes allow-listed unclassified traffic. It is
//!    only searched where its answer can change the verdict, so
//!    `passed_allowlisted` counts the packets that passed *because* of it;
//!    Then, on ports watched for SIP, SIP inspection ([`Step::Sip`]): a
//!    request carrying a scanner fingerprint drops and bans its source
//!    (reason `scanner`), unless the source is allow-listed for the service;
//!    then the SIP rules ([`sip_rules_step`]): a REGISTER, INVITE or
//!    SUBSCRIBE naming a user an extension rule restricts, from a source
//!    none of that user's rules permits, drops (`extension_denied`); an
//!    INVITE dialling a dial rule's prefix from a source the rule does not
//!    permit drops (`dial_denied`, and bans if the rule says so). An
//!    allow-listed source is never dropped by them;
//! 6. rate rules ([`Step::Rate`], [`rate_step`]): an allow-listed source
//!    is never rate-limited nor counted (it passes, [`Step::Allow`]; the
//!    kernel keeps recent IPv4 sources' allow answers in a per-CPU
//!    cache, see [`Lookup::count_rate`], so most packets search no trie).
//!    Other packets are counted against their port's rules. Only a packet
//!    over a rule's limit asks more: a learned peer
//!    ([`Lookup::peer_users`]) has a budget of each limit times
//!    [`peer_multiplier`]. The packet over that drops (the kernel bans its
//!    source there). A packet under every limit costs no peer search;
//! 7. the service passes ([`Step::Service`]), or traffic matching no service
//!    gets the default policy ([`Step::Default`]).
//!
//! Monitor mode is part of the result: [`Verdict::drops`] is false for every
//! packet while it is on, yet the reason is computed and counted as usual.
//!
//! # Extending it
//! New kernel rules are added here, once, and both sides follow:
//! - SIP inspection (step 5b) reads the request through
//!   [`Lookup::scanner_fingerprint`]; the SIP rules read what the reader
//!   found through [`Lookup::sip_user_rules`] and [`Lookup::sip_dial_rule`].
pub use crate::rate::peer_multiplier;
use crate::{
    service_bit,
    sip_rules::{first_rule, SipPermit, USER_AUTH, USER_FROM, USER_TO},
    AccessMode, DefaultPolicy, L4Proto, PortClass, Reason, Settings, SourceKey, CAPTURE_INBOUND,
    NO_SERVICE, UNCLASSIFIED_BIT,
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

/// What a cache knows of a source before the drop sets are searched
/// ([`Lookup::drop_sets_cached`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachedClear {
    /// In no ban, deny or fleet set: none changed since it was searched.
    Clear,
    /// Search them; if the source is in none, remember it under `stamp`
    /// ([`Lookup::note_clear`]; 0: not as clear, the cache may only note
    /// that it saw the source).
    Unknown { stamp: u64 },
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
    /// True if the fleet deny set holds `source`.
    fn is_fleet_denied(&mut self, source: &Address) -> bool;
    /// A cache's word on whether `source` is in a drop set (ban, deny,
    /// fleet) before they are searched. The kernel keeps recent IPv4
    /// sources that were in none, stamped with the drop sets' generation
    /// (bumped after every ban, deny or fleet entry made); lookups without
    /// a cache search every time (the default).
    fn drop_sets_cached(&mut self, _source: &Address) -> CachedClear {
        CachedClear::Unknown { stamp: 0 }
    }
    /// Remembers that `source` was in no drop set when searched under
    /// `stamp` (from [`Lookup::drop_sets_cached`]; see [`CachedClear`]).
    fn note_clear(&mut self, _source: &Address, _stamp: u64) {}
    /// The service mask of `source`'s (longest-prefix) allow entry; 0 if none.
    fn allow_mask(&mut self, source: &Address) -> u32;
    /// The class of `(proto, port)` under policy `slot`.
    fn port_class(&mut self, proto: L4Proto, port: u16, slot: u8) -> PortClass;
    /// The access mode of `service` under policy `slot` (closed if unknown).
    fn access_mode(&mut self, service: u8, slot: u8) -> AccessMode;
    /// Counts the packet against each of `class`'s rate rules (under policy
    /// `slot`) and returns the rule that needs the largest multiple of its
    /// limit; or, without counting, [`RateExcess::ALLOWLISTED`] if the
    /// allow-list entry of `address` grants `allow_bit` (allow-listed
    /// sources are never rate-limited). The kernel keeps an IPv4 source's
    /// answer in a per-CPU cache, stamped with the allow lists'
    /// generation, so that most packets search no trie. The controller
    /// only peeks ("what would the next packet count?") and changes nothing.
    fn count_rate(
        &mut self,
        source: &SourceKey,
        address: &Address,
        allow_bit: u32,
        class: &PortClass,
        is_syn: bool,
        slot: u8,
    ) -> RateExcess;
    /// The users the budget of `source` counts if it is an unexpired
    /// learned peer ([`crate::PeerEntry::budget_users`]: its live
    /// registrations; for a provider, the cap).
    fn peer_users(&mut self, source: &SourceKey) -> Option<u32>;
    /// The packet exceeded its budget on `excess.rule`: the kernel bans the
    /// source for the rule's ban time (and counts the rule's limited
    /// packet); the controller notes it.
    fn rate_ban(&mut self, source: &SourceKey, excess: &RateExcess, slot: u8);
    /// [`over_budget_step`], which this default runs over this lookup; the
    /// XDP program runs it inside a global BPF function of its own, which
    /// the verifier checks once instead of once per path into it.
    fn over_budget(&mut self, source: &SourceKey, excess: &RateExcess, ask: &RateAsk) -> bool
    where
        Self: Sized,
    {
        over_budget_step(self, source, excess, ask)
    }
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
    /// The extension rules (bit i: rule i) restricting user `which`
    /// ([`USER_TO`], [`USER_FROM`], [`USER_AUTH`]) of the packet's SIP
    /// request, by its method ([`crate::sip_rules::named_rules`]); 0 if
    /// none. Asked after [`Lookup::scanner_fingerprint`]: the kernel
    /// answers from what its reader found, the controller from `explain
    /// --user`.
    fn sip_user_rules(&mut self, _which: usize, _slot: u8) -> u64 {
        0
    }
    /// The dial rule (its index + 1) of the longest prefix the INVITE's
    /// number starts with; 0 if none (or not an INVITE).
    fn sip_dial_rule(&mut self, _slot: u8) -> u8 {
        0
    }
    /// The extension and dial rules whose `permit` networks hold `source`:
    /// one LPM lookup.
    fn sip_permit(&mut self, _source: &Address, _slot: u8) -> SipPermit {
        SipPermit::NONE
    }
    /// Whether dial rule `rule` lets learned peers dial its prefixes.
    fn dial_permits_peers(&mut self, _rule: u8, _slot: u8) -> bool {
        false
    }
    /// Whether dial rule `rule` limits its permitted sources' calls a minute.
    fn dial_counts_calls(&mut self, _rule: u8, _slot: u8) -> bool {
        false
    }
    /// Counts an INVITE of `source` under dial rule `rule`'s calls a
    /// minute; true if it is over the limit. The controller only peeks
    /// ("would the next one be over?") and changes nothing.
    fn count_dial(&mut self, _source: &SourceKey, _rule: u8, _slot: u8) -> bool {
        false
    }
    /// A SIP rule denied the request (`reason` is `ExtensionDenied` or
    /// `DialDenied`, `rule` the rule's index): the kernel notes the rule
    /// for the capture that tells the controller (and, after the step,
    /// bans the source for a dial rule with a ban time); the controller
    /// notes it for `explain`.
    fn sip_denied(&mut self, _source: &SourceKey, _reason: Reason, _rule: u8, _slot: u8) {}
    /// [`sip_rules_step`], then [`dial_rate_step`] for a permitted call
    /// under a rule with a calls-a-minute limit. The XDP program runs the
    /// first in a global BPF function of its own.
    fn sip_rules(&mut self, ask: &SipAsk<'_>) -> SipOutcome
    where
        Self: Sized,
    {
        match sip_rules_step(self, ask) {
            SipOutcome::DialCounted { rule } => dial_rate_step(self, ask, rule),
            outcome => outcome,
        }
    }
}

/// What the SIP rules step needs of a packet besides its request. By
/// reference: the XDP program's global function keeps them in map memory,
/// its stack has no room for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipAsk<'a> {
    pub address: &'a Address,
    /// The source's ban key.
    pub source: &'a SourceKey,
    /// The service of the port (allow-listed sources of it are spared).
    pub service: u8,
    pub slot: u8,
}

/// What the SIP rules decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SipOutcome {
    /// No rule names the request, or its source is permitted.
    Pass,
    /// A rule names the request, but the source is allow-listed.
    Allowlisted,
    /// A user the request names is restricted by extension rule `rule`
    /// (the lowest-numbered of the user's rules), none of whose rules
    /// permits the source.
    ExtensionDenied { rule: u8 },
    /// The number dialled falls under dial rule `rule`, which does not
    /// permit the source, or does and it is over the rule's calls a minute.
    DialDenied { rule: u8 },
    /// The number dialled falls under dial rule `rule`, which permits the
    /// source and limits its calls a minute: [`dial_rate_step`] decides.
    DialCounted { rule: u8 },
}

impl SipOutcome {
    /// As one word, for the XDP program's global BPF function: the kind in
    /// bits 0-7, the rule in 8-15.
    #[inline(always)]
    pub const fn to_word(&self) -> u32 {
        match *self {
            SipOutcome::Pass => 0,
            SipOutcome::Allowlisted => 1,
            SipOutcome::ExtensionDenied { rule } => 2 | (rule as u32) << 8,
            SipOutcome::DialDenied { rule } => 3 | (rule as u32) << 8,
            SipOutcome::DialCounted { rule } => 4 | (rule as u32) << 8,
        }
    }

    #[inline(always)]
    pub const fn from_word(word: u32) -> SipOutcome {
        let rule = (word >> 8) as u8;
        match word & 0xff {
            1 => SipOutcome::Allowlisted,
            2 => SipOutcome::ExtensionDenied { rule },
            3 => SipOutcome::DialDenied { rule },
            4 => SipOutcome::DialCounted { rule },
            _ => SipOutcome::Pass,
        }
    }
}

/// The users a rule restricts that `permitted` lets through: a user is
/// denied when it is restricted and none of its rules permits the source.
#[inline(always)]
const fn denied(restricting: u64, permitted: u64) -> u64 {
    if restricting != 0 && restricting & permitted == 0 {
        restricting
    } else {
        0
    }
}

/// The SIP rules (after the fingerprints, before the rate rules). Only a
/// request that names a restricted user or dials a blocked prefix searches
/// the allow list and then the permit trie (one lookup for every rule).
#[inline(always)]
pub fn sip_rules_step<L: Lookup>(lookup: &mut L, ask: &SipAsk<'_>) -> SipOutcome {
    let slot = ask.slot;
    let to = lookup.sip_user_rules(USER_TO, slot);
    let from = lookup.sip_user_rules(USER_FROM, slot);
    let auth = lookup.sip_user_rules(USER_AUTH, slot);
    let dial = lookup.sip_dial_rule(slot);
    if to | from | auth == 0 && dial == 0 {
        return SipOutcome::Pass;
    }
    // As for fingerprints: an allow-listed source is trusted.
    if lookup.allow_mask(ask.address) & service_bit(ask.service) != 0 {
        return SipOutcome::Allowlisted;
    }
    let permit = lookup.sip_permit(ask.address, slot);
    let source = ask.source;
    let users = denied(to, permit.extensions)
        | denied(from, permit.extensions)
        | denied(auth, permit.extensions);
    if users != 0 {
        let rule = first_rule(users);
        lookup.sip_denied(source, Reason::ExtensionDenied, rule, slot);
        return SipOutcome::ExtensionDenied { rule };
    }
    if dial != 0 {
        let rule = (dial - 1) & 63;
        if permit.dial & (1u64 << rule) == 0
            && !(lookup.dial_permits_peers(rule, slot) && lookup.peer_users(source).is_some())
        {
            lookup.sip_denied(source, Reason::DialDenied, rule, slot);
            return SipOutcome::DialDenied { rule };
        }
        if lookup.dial_counts_calls(rule, slot) {
            return SipOutcome::DialCounted { rule };
        }
    }
    SipOutcome::Pass
}

/// A permitted call under a dial rule with calls a minute
/// (`calls_per_minute`): counted per source, and the one over the limit is
/// denied (and bans if the rule says so). The XDP program counts in a
/// global BPF function of its own (`sipguard_dial_count`).
#[inline(always)]
pub fn dial_rate_step<L: Lookup>(lookup: &mut L, ask: &SipAsk<'_>, rule: u8) -> SipOutcome {
    if lookup.count_dial(ask.source, rule, ask.slot) {
        lookup.sip_denied(ask.source, Reason::DialDenied, rule, ask.slot);
        SipOutcome::DialDenied { rule }
    } else {
        SipOutcome::Pass
    }
}

/// What counting a packet against its port's rules found: the rule whose
/// count needs the largest multiple of its limit ([`needed_multiplier`]).
///
/// [`needed_multiplier`]: crate::rate::needed_multiplier
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateExcess {
    /// The rule's index in the policy (meaningless under every limit).
    pub rule: u32,
    /// Packets in the rule's window, this one included.
    pub count: u64,
    /// `ceil(count / limit)`: 1 or less within the limit.
    pub needed: u64,
    /// The source is allow-listed for the port's service: nothing was
    /// counted, and the other fields say nothing.
    pub allowlisted: bool,
}

impl RateExcess {
    /// Within every limit.
    pub const UNDER: RateExcess = RateExcess {
        rule: 0,
        count: 0,
        needed: 0,
        allowlisted: false,
    };

    /// Allow-listed: never rate-limited, not counted.
    pub const ALLOWLISTED: RateExcess = RateExcess {
        allowlisted: true,
        ..RateExcess::UNDER
    };

    /// Over a rule's own limit (a peer's budget may still hold it).
    #[inline(always)]
    pub const fn is_over(&self) -> bool {
        self.needed > 1
    }

    /// As one word, for the XDP program's global BPF functions (which take
    /// and return scalars): count in bits 0-30, allow-listed in 31,
    /// needed in 32-59, rule in 60-63. Counts never pass 8 x 2^24
    /// (`rate::RATE_SLOTS` slots of 24-bit counts), nor rules 15.
    #[inline(always)]
    pub const fn to_word(&self) -> u64 {
        (self.count & 0x7fff_ffff)
            | (self.allowlisted as u64) << 31
            | (self.needed & 0x0fff_ffff) << 32
            | ((self.rule & 0xf) as u64) << 60
    }

    #[inline(always)]
    pub const fn from_word(word: u64) -> RateExcess {
        RateExcess {
            rule: (word >> 60) as u32,
            count: word & 0x7fff_ffff,
            needed: word >> 32 & 0x0fff_ffff,
            allowlisted: word >> 31 & 1 != 0,
        }
    }
}

/// What the rate step ([`rate_step`]) needs of a packet: who sent it, where
/// to, and the settings in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateAsk {
    /// The full source address (the allow list is searched with it).
    pub address: Address,
    pub class: PortClass,
    pub is_syn: bool,
    /// The policy slot in force.
    pub slot: u8,
    /// The [`Settings`] in force that the step reads. Not the whole
    /// struct: copied whole, LLVM spilled an uninitialised register at the
    /// XDP program's start, which the verifier refuses ("R4 !read_ok").
    pub ipv6_ban_prefix: u8,
    pub peer_factor: u16,
    pub peer_max_multiplier: u16,
}

impl RateAsk {
    /// The source's ban and rate key.
    #[inline(always)]
    pub fn source(&self) -> SourceKey {
        self.address.source_key(self.ipv6_ban_prefix)
    }
}

/// The rate step's outcome.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateOutcome {
    /// Within every limit, or within the peer's budget: go on.
    Under = 0,
    /// Over a limit, but the source is allow-listed for the service.
    Allowlisted = 1,
    /// Over its budget: drops (the kernel has banned the source).
    Limited = 2,
}

/// Step 6: an allow-listed source is never rate-limited (nor counted);
/// any other packet is counted against its port's rules, and only a
/// packet over a limit searches the peers. A learned peer's budget per rule is
/// `limit x min(max(live users, 1) x factor, max_multiplier)`
/// ([`peer_multiplier`]; a provider's is `limit x max_multiplier`); any
/// other source's is the rule's limit.
#[inline(always)]
pub fn rate_step<L: Lookup>(lookup: &mut L, ask: &RateAsk) -> RateOutcome {
    let source = ask.source();
    let bit = if ask.class.service != NO_SERVICE {
        service_bit(ask.class.service)
    } else {
        UNCLASSIFIED_BIT
    };
    let excess = lookup.count_rate(&source, &ask.address, bit, &ask.class, ask.is_syn, ask.slot);
    if excess.allowlisted {
        return RateOutcome::Allowlisted;
    }
    if !excess.is_over() {
        return RateOutcome::Under;
    }
    if lookup.over_budget(&source, &excess, ask) {
        RateOutcome::Limited
    } else {
        RateOutcome::Under
    }
}

/// Whether a packet over a rule's own limit is over its source's budget
/// too: a learned peer's is the limit x [`peer_multiplier`], anyone
/// else's the limit. Over it, the source is banned ([`Lookup::rate_ban`]).
#[inline(always)]
pub fn over_budget_step<L: Lookup>(
    lookup: &mut L,
    source: &SourceKey,
    excess: &RateExcess,
    ask: &RateAsk,
) -> bool {
    let multiplier = peer_multiplier(
        lookup.peer_users(source),
        ask.peer_factor,
        ask.peer_max_multiplier,
    );
    if excess.needed <= multiplier {
        return false;
    }
    lookup.rate_ban(source, excess, ask.slot);
    true
}

/// The step that decided a verdict (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The frame itself: malformed (drops).
    Parse,
    Ban,
    Deny,
    /// The fleet deny set (CrowdSec ranges, feeds).
    Fleet,
    Fragment,
    Access,
    Allow,
    Rate,
    /// SIP inspection: a scanner's fingerprint (drops and bans), an
    /// extension or dial rule (drops; a dial rule may ban).
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
            Reason::Fleet => Step::Fleet,
            Reason::Fragment => Step::Fragment,
            Reason::Closed | Reason::NotTrusted => Step::Access,
            Reason::PassedAllowlisted => Step::Allow,
            Reason::RateLimited => Step::Rate,
            Reason::Scanner | Reason::ExtensionDenied | Reason::DialDenied => Step::Sip,
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
    if let CachedClear::Unknown { stamp } = lookup.drop_sets_cached(address) {
        if lookup.is_banned(&source) {
            let class = classify(lookup, transport, CAPTURE_INBOUND, slot).0;
            return verdict(Reason::Banned, class, Step::Ban);
        }
        if lookup.is_denied(address) {
            let class = classify(lookup, transport, CAPTURE_INBOUND, slot).0;
            return verdict(Reason::Denied, class, Step::Deny);
        }
        // A fleet decision never drops a network the operator trusts, nor a
        // learned peer (the PBX's own users): both are searched only on a
        // match, which is rare. Such a source is not remembered as clear:
        // its allow entry or peer may go.
        if lookup.is_fleet_denied(address) {
            if lookup.allow_mask(address) == 0 && lookup.peer_users(&source).is_none() {
                let class = classify(lookup, transport, CAPTURE_INBOUND, slot).0;
                return verdict(Reason::Fleet, class, Step::Fleet);
            }
        } else {
            lookup.note_clear(address, stamp);
        }
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
        if access == AccessMode::Trusted {
            if lookup.allow_mask(address) & service_bit(class.service) != 0 {
                return verdict(Reason::PassedAllowlisted, class, Step::Allow);
            }
            return verdict(Reason::NotTrusted, class, Step::Access);
        }
    } else if settings.default_policy() == DefaultPolicy::Drop
        && lookup.allow_mask(address) & UNCLASSIFIED_BIT != 0
    {
        return verdict(Reason::PassedAllowlisted, class, Step::Allow);
    }

    // SIP inspection, before the rate rules so that a scanner's first
    // request drops. An allow-listed source is never banned for it; the
    // allow list is searched only on a match, which is rare.
    if class.watches_sip() {
        let pattern = lookup.scanner_fingerprint(slot);
        if pattern != 0 {
            if lookup.allow_mask(address) & service_bit(class.service) != 0 {
                return verdict(Reason::PassedAllowlisted, class, Step::Allow);
            }
            lookup.ban_scanner(&source, pattern, slot);
            return verdict(Reason::Scanner, class, Step::Sip);
        }
        let ask = SipAsk {
            address,
            source: &source,
            service: class.service,
            slot,
        };
        match lookup.sip_rules(&ask) {
            // Counted already ([`Lookup::sip_rules`] runs the rate step).
            SipOutcome::Pass | SipOutcome::DialCounted { .. } => {}
            SipOutcome::Allowlisted => {
                return verdict(Reason::PassedAllowlisted, class, Step::Allow)
            }
            SipOutcome::ExtensionDenied { .. } => {
                return verdict(Reason::ExtensionDenied, class, Step::Sip)
            }
            SipOutcome::DialDenied { .. } => return verdict(Reason::DialDenied, class, Step::Sip),
        }
    }

    if class.has_rules() {
        let ask = RateAsk {
            address: *address,
            class,
            is_syn,
            slot,
            ipv6_ban_prefix: settings.ipv6_ban_prefix,
            peer_factor: settings.peer_factor,
            peer_max_multiplier: settings.peer_max_multiplier,
        };
        match rate_step(lookup, &ask) {
            RateOutcome::Under => {}
            RateOutcome::Allowlisted => {
                return verdict(Reason::PassedAllowlisted, class, Step::Allow)
            }
            RateOutcome::Limited => return verdict(Reason::RateLimited, class, Step::Rate),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_excess_word_round_trip() {
        for excess in [
            RateExcess::UNDER,
            RateExcess::ALLOWLISTED,
            RateExcess {
                rule: 15,
                count: 8 << 24,
                needed: 8 << 24,
                allowlisted: false,
            },
            RateExcess {
                rule: 3,
                count: 481,
                needed: 13,
                allowlisted: false,
            },
        ] {
            assert_eq!(RateExcess::from_word(excess.to_word()), excess);
        }
    }
}
