//! The controller's side of the shared verdict (`guard_common::verdict`):
//! [`HostLookup`] answers the judge's questions from the compiled policy
//! (what the maps were written from) and the kernel's live bans and rate
//! state, read only. `explain` and the SSH-lockout check decide with it, so
//! they say what the XDP program does, step for step.
use std::net::IpAddr;

use guard_common::{
    rate::{needed_multiplier, slot_width_ns, window_total},
    rate_group, rate_lane,
    sip_rules::{
        dial_rate_group, dials, named_rules, SipPermit, DIAL_WINDOW_NS, USER_AUTH, USER_FROM,
        USER_TO,
    },
    sip_scan::SipSummary,
    verdict::{judge, Address, Lookup, Packet, RateExcess, Step, Transport, Verdict},
    AccessMode, BanEntry, L4Proto, PeerEntry, PortClass, RateKey, RateState, Reason, Settings,
    SourceKey, MAX_RATE_RULES, NO_SERVICE, RULE_SYN_ONLY,
};
use ipnet::IpNet;

use crate::{
    clock,
    kernel::bans,
    kernel::maps::{KernelMaps, MapStore, MapsError, NetList},
    policy::{
        compile::CompiledPolicy,
        live::{LivePolicy, Verdict as ExplainRow},
    },
};

/// The kernel state a verdict reads besides the policy: bans, rate
/// windows and learned peers. Read only: judging never counts a packet or
/// changes a ban.
pub trait KernelState {
    type Error;
    /// The ban-map entry of `source` (expired or not).
    fn ban(&self, source: &SourceKey) -> Result<Option<BanEntry>, Self::Error>;
    /// The rate windows of `(source, rule group)`.
    fn rate_state(&self, key: &RateKey) -> Result<Option<RateState>, Self::Error>;
    /// The peer-map entry of `source` (expired or not).
    fn peer(&self, source: &SourceKey) -> Result<Option<PeerEntry>, Self::Error>;
    /// The fleet deny set's (longest) network holding `address`.
    fn fleet(&self, address: &Address) -> Result<Option<IpNet>, Self::Error>;
    /// Who put `net` in the fleet deny set (a CrowdSec scenario, a feed),
    /// for `explain`; None when unknown.
    fn fleet_holder(&self, _net: &IpNet) -> Option<String> {
        None
    }
}

impl KernelState for KernelMaps {
    type Error = MapsError;

    fn ban(&self, source: &SourceKey) -> Result<Option<BanEntry>, Self::Error> {
        KernelMaps::ban(self, source)
    }

    fn rate_state(&self, key: &RateKey) -> Result<Option<RateState>, Self::Error> {
        KernelMaps::rate_state(self, key)
    }

    fn peer(&self, source: &SourceKey) -> Result<Option<PeerEntry>, Self::Error> {
        KernelMaps::peer(self, source)
    }

    fn fleet(&self, address: &Address) -> Result<Option<IpNet>, Self::Error> {
        KernelMaps::fleet_match(self, address_ip(address))
    }
}

/// Whichever maps the runtime holds (the kernel's, or in-memory ones in tests).
impl KernelState for dyn MapStore + '_ {
    type Error = MapsError;

    fn ban(&self, source: &SourceKey) -> Result<Option<BanEntry>, Self::Error> {
        MapStore::ban(self, source)
    }

    fn rate_state(&self, key: &RateKey) -> Result<Option<RateState>, Self::Error> {
        MapStore::rate_state(self, key)
    }

    fn peer(&self, source: &SourceKey) -> Result<Option<PeerEntry>, Self::Error> {
        MapStore::peer(self, source)
    }

    fn fleet(&self, address: &Address) -> Result<Option<IpNet>, Self::Error> {
        MapStore::fleet_match(self, address_ip(address))
    }
}

/// No bans, no rate state: the verdict of the policy alone.
pub struct NoKernelState;

impl KernelState for NoKernelState {
    type Error = std::convert::Infallible;

    fn ban(&self, _: &SourceKey) -> Result<Option<BanEntry>, Self::Error> {
        Ok(None)
    }

    fn rate_state(&self, _: &RateKey) -> Result<Option<RateState>, Self::Error> {
        Ok(None)
    }

    fn peer(&self, _: &SourceKey) -> Result<Option<PeerEntry>, Self::Error> {
        Ok(None)
    }

    fn fleet(&self, _: &Address) -> Result<Option<IpNet>, Self::Error> {
        Ok(None)
    }
}

/// A rate rule the packet would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHit {
    /// Index of the rule in the policy.
    pub rule: u8,
    /// Packets in the window, this one included.
    pub count: u64,
}

/// What the lookups found on the way: the entries behind the verdict.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Found {
    /// The ban in force on the source.
    pub ban: Option<BanEntry>,
    /// The deny entry holding the source.
    pub deny: Option<IpNet>,
    /// The fleet deny set's entry holding the source, and who put it there.
    pub fleet: Option<(IpNet, Option<String>)>,
    /// The source's allow entry and its service mask (when it was searched).
    pub allow: Option<(IpNet, u32)>,
    pub rate: Option<RateHit>,
    /// The source's unexpired peer entry (searched only for a packet over
    /// a rule's limit).
    pub peer: Option<PeerEntry>,
    /// The SIP rule that denied the request: `ExtensionDenied` or
    /// `DialDenied`, and the rule's index.
    pub sip: Option<(Reason, u8)>,
    /// A permitted call over its dial rule's calls a minute: this one's
    /// number in the window.
    pub dial_calls: Option<u64>,
}

/// A SIP request as the SIP rules see it: what `explain --user/--dial`
/// asks about, or (in the tests) a request the shared reader read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SipRequest {
    /// The extension rules restricting its To, From and Authorization
    /// users, by its method (`guard_common::sip_rules::named_rules`).
    pub user_rules: [u64; 3],
    /// The number an INVITE dials (its Request-URI user).
    pub dialled: Option<String>,
}

impl SipRequest {
    /// `user` registering (no `dial`), or `user` (if any) dialling `dial`
    /// (an INVITE: its To is the number, not a user of the PBX).
    pub fn named(
        rules: &crate::policy::sip_rules::SipRules,
        user: Option<&str>,
        dial: Option<&str>,
    ) -> SipRequest {
        let mask = user.map_or(0, |u| rules.rules_of_user(u));
        match dial {
            Some(number) => SipRequest {
                user_rules: [0, mask, mask],
                dialled: Some(number.to_string()),
            },
            None => SipRequest {
                user_rules: [mask; 3],
                dialled: None,
            },
        }
    }

    /// What the kernel's reader found in a request (read with the same
    /// policy's table).
    pub fn read(summary: &SipSummary) -> SipRequest {
        SipRequest {
            user_rules: [
                named_rules(summary, USER_TO),
                named_rules(summary, USER_FROM),
                named_rules(summary, USER_AUTH),
            ],
            dialled: dials(summary)
                .then(|| String::from_utf8_lossy(summary.request_user.value()).into_owned()),
        }
    }
}

/// A verdict with what decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub found: Found,
}

/// [`Lookup`] over a compiled policy and the kernel's bans and rate state.
pub struct HostLookup<'a, K: KernelState + ?Sized> {
    policy: &'a CompiledPolicy,
    settings: Settings,
    state: &'a K,
    now_ns: u64,
    found: Found,
    error: Option<K::Error>,
    /// The SIP request the packet carries, if any is asked about.
    request: Option<SipRequest>,
}

impl<'a, K: KernelState + ?Sized> HostLookup<'a, K> {
    /// `settings` are those in force (monitor mode and the IPv6 ban prefix
    /// live in the kernel's settings, which may differ from the file's);
    /// the policy slot is ignored: `policy` is the one policy judged.
    pub fn new(policy: &'a CompiledPolicy, settings: Settings, state: &'a K, now_ns: u64) -> Self {
        HostLookup {
            policy,
            settings,
            state,
            now_ns,
            found: Found::default(),
            error: None,
            request: None,
        }
    }

    /// Dial rule `rule`'s calls a minute (0: no limit).
    fn dial_limit(&self, rule: u8) -> u32 {
        self.policy
            .sip_rules
            .dial
            .get(rule as usize)
            .and_then(|r| r.calls_per_minute)
            .unwrap_or(0)
    }

    /// The packet carries `request` (judged by the SIP rules).
    pub fn with_request(mut self, request: SipRequest) -> Self {
        self.request = Some(request);
        self
    }

    /// Judges `packet`: the verdict and the entries behind it.
    pub fn judge(mut self, packet: &Packet) -> Result<Judgement, K::Error> {
        let settings = self.settings();
        let verdict = judge(&mut self, packet, &settings);
        match self.error {
            Some(error) => Err(error),
            None => Ok(Judgement {
                verdict,
                found: self.found,
            }),
        }
    }

    fn keep_error<T>(&mut self, result: Result<Option<T>, K::Error>) -> Option<T> {
        match result {
            Ok(found) => found,
            Err(error) => {
                self.error.get_or_insert(error);
                None
            }
        }
    }

    /// The kernel's rate count, without counting: the packet's count in
    /// each rule's window is what is there plus this packet (plus one for
    /// each earlier listing of the same rule on the port, which the kernel
    /// counted a moment before).
    fn rate_peek(&mut self, source: &SourceKey, class: &PortClass, is_syn: bool) -> RateExcess {
        let mut counted_here = [0u64; MAX_RATE_RULES];
        let mut excess = RateExcess::UNDER;
        let mut group: Option<(u32, Option<RateState>)> = None;
        for index in class.rule_indexes() {
            let Some(rule) = self.policy.rule(index) else {
                continue;
            };
            if rule.flags & RULE_SYN_ONLY != 0 && !is_syn {
                continue;
            }
            let wanted = rate_group(index as u32);
            let state = match group {
                Some((g, state)) if g == wanted => state,
                _ => {
                    let key = RateKey {
                        source: *source,
                        group: wanted,
                    };
                    let found = self.state.rate_state(&key);
                    let state = self.keep_error(found);
                    group = Some((wanted, state));
                    state
                }
            };
            let seen = state.map_or(0, |s| {
                window_total(
                    &s.windows[rate_lane(index as u32)],
                    self.now_ns,
                    rule.slot_ns,
                )
            });
            counted_here[index as usize] += 1;
            let count = seen + counted_here[index as usize];
            if count > rule.limit as u64 {
                let needed = needed_multiplier(count, rule.limit);
                if needed > excess.needed {
                    excess = RateExcess {
                        rule: index as u32,
                        count,
                        needed,
                        allowlisted: false,
                    };
                }
            }
        }
        excess
    }
}

/// The longest prefix in `nets` holding `address` (what an LPM trie finds).
/// IPv4 sources search the IPv4 networks only, IPv6 ones the IPv6
/// networks, as the kernel's two tries do.
fn longest_match<T: Copy>(
    nets: impl Iterator<Item = (IpNet, T)>,
    address: &Address,
) -> Option<(IpNet, T)> {
    let ip = address_ip(address);
    nets.filter(|(net, _)| net.contains(&ip))
        .max_by_key(|(net, _)| net.prefix_len())
}

pub fn address_ip(address: &Address) -> IpAddr {
    match *address {
        Address::V4(a) => IpAddr::from(a),
        Address::V6(a) => IpAddr::from(a),
    }
}

/// The verdict's address of `ip` (an IPv4-mapped IPv6 address is IPv4, as
/// the kernel sees such a peer).
pub fn ip_address(ip: IpAddr) -> Address {
    match ip.to_canonical() {
        IpAddr::V4(v4) => Address::V4(v4.octets()),
        IpAddr::V6(v6) => Address::V6(v6.octets()),
    }
}

impl<K: KernelState + ?Sized> Lookup for HostLookup<'_, K> {
    fn settings(&mut self) -> Settings {
        self.settings
    }

    fn is_banned(&mut self, source: &SourceKey) -> bool {
        let ban = self.state.ban(source);
        let now = self.now_ns;
        self.found.ban = self.keep_error(ban).filter(|ban| ban.is_active(now));
        self.found.ban.is_some()
    }

    fn is_denied(&mut self, source: &Address) -> bool {
        let nets = self.policy.deny.iter().map(|net| (*net, ()));
        self.found.deny = longest_match(nets, source).map(|(net, _)| net);
        self.found.deny.is_some()
    }

    fn is_fleet_denied(&mut self, source: &Address) -> bool {
        let found = self.state.fleet(source);
        let net = self.keep_error(found);
        self.found.fleet = net.map(|net| (net, self.state.fleet_holder(&net)));
        self.found.fleet.is_some()
    }

    fn allow_mask(&mut self, source: &Address) -> u32 {
        self.found.allow = longest_match(self.policy.allow.iter().copied(), source);
        self.found.allow.map_or(0, |(_, mask)| mask)
    }

    fn port_class(&mut self, proto: L4Proto, port: u16, _slot: u8) -> PortClass {
        self.policy.port_class(proto, port)
    }

    fn access_mode(&mut self, service: u8, _slot: u8) -> AccessMode {
        self.policy.access_mode(service)
    }

    fn count_rate(
        &mut self,
        source: &SourceKey,
        address: &Address,
        allow_bit: u32,
        class: &PortClass,
        is_syn: bool,
        _slot: u8,
    ) -> RateExcess {
        // The kernel answers from its cache of this search.
        self.found.allow = longest_match(self.policy.allow.iter().copied(), address);
        if self.found.allow.map_or(0, |(_, mask)| mask) & allow_bit != 0 {
            return RateExcess::ALLOWLISTED;
        }
        self.rate_peek(source, class, is_syn)
    }

    fn peer_users(&mut self, source: &SourceKey) -> Option<u32> {
        let peer = self.state.peer(source);
        let now = self.now_ns;
        self.found.peer = self.keep_error(peer).filter(|peer| peer.is_active(now));
        self.found.peer.map(|peer| peer.budget_users())
    }

    fn rate_ban(&mut self, _source: &SourceKey, excess: &RateExcess, _slot: u8) {
        self.found.rate = Some(RateHit {
            rule: excess.rule as u8,
            count: excess.count,
        });
    }

    fn sip_user_rules(&mut self, which: usize, _slot: u8) -> u64 {
        self.request
            .as_ref()
            .and_then(|r| r.user_rules.get(which).copied())
            .unwrap_or(0)
    }

    fn sip_dial_rule(&mut self, _slot: u8) -> u8 {
        let Some(number) = self.request.as_ref().and_then(|r| r.dialled.as_deref()) else {
            return 0;
        };
        self.policy
            .sip_rules
            .dial_rule_of(number)
            .map_or(0, |(rule, _)| rule + 1)
    }

    fn sip_permit(&mut self, source: &Address, _slot: u8) -> SipPermit {
        self.policy.sip_rules.permit_of(address_ip(source))
    }

    fn dial_permits_peers(&mut self, rule: u8, _slot: u8) -> bool {
        self.policy
            .sip_rules
            .dial
            .get(rule as usize)
            .is_some_and(|r| r.permits_peers())
    }

    fn dial_counts_calls(&mut self, rule: u8, _slot: u8) -> bool {
        self.dial_limit(rule) != 0
    }

    /// Peeks: would this call be over the limit, the kernel's window as it is?
    fn count_dial(&mut self, source: &SourceKey, rule: u8, _slot: u8) -> bool {
        let limit = self.dial_limit(rule);
        let key = RateKey {
            source: *source,
            group: dial_rate_group(rule),
        };
        let found = self.state.rate_state(&key);
        let seen = self.keep_error(found).map_or(0, |state| {
            window_total(
                &state.windows[0],
                self.now_ns,
                slot_width_ns(DIAL_WINDOW_NS),
            )
        });
        let over = seen + 1 > limit as u64;
        if over {
            self.found.dial_calls = Some(seen + 1);
        }
        over
    }

    fn sip_denied(&mut self, _source: &SourceKey, reason: Reason, rule: u8, _slot: u8) {
        self.found.sip = Some((reason, rule));
    }
}

/// A packet from `ip` to `(proto, port)`; TCP as a connection attempt
/// when `syn`.
pub fn packet_to(ip: IpAddr, proto: L4Proto, port: u16, syn: bool) -> Packet {
    let transport = match proto {
        L4Proto::Tcp => Transport::Tcp {
            sport: 0,
            dport: port,
            syn,
            payload: (),
        },
        L4Proto::Udp => Transport::Udp {
            sport: 0,
            dport: port,
            payload: (),
        },
    };
    Packet {
        source: ip_address(ip),
        transport,
    }
}

/// A packet from `ip` that no port classifies (ICMP, say).
pub fn unclassified_packet(ip: IpAddr) -> Packet {
    Packet {
        source: ip_address(ip),
        transport: Transport::Other,
    }
}

/// A kernel state with one more ban: what a `ban add` would leave.
pub struct WithBan<'a, K: KernelState + ?Sized> {
    pub state: &'a K,
    pub ban: Option<(SourceKey, BanEntry)>,
}

impl<K: KernelState + ?Sized> KernelState for WithBan<'_, K> {
    type Error = K::Error;

    fn ban(&self, source: &SourceKey) -> Result<Option<BanEntry>, Self::Error> {
        match self.ban {
            Some((key, entry)) if key == *source => Ok(Some(entry)),
            _ => self.state.ban(source),
        }
    }

    fn rate_state(&self, key: &RateKey) -> Result<Option<RateState>, Self::Error> {
        self.state.rate_state(key)
    }

    fn peer(&self, source: &SourceKey) -> Result<Option<PeerEntry>, Self::Error> {
        self.state.peer(source)
    }

    fn fleet(&self, address: &Address) -> Result<Option<IpNet>, Self::Error> {
        self.state.fleet(address)
    }

    fn fleet_holder(&self, net: &IpNet) -> Option<String> {
        self.state.fleet_holder(net)
    }
}

/// What a verdict reads besides the policy.
pub struct Inputs<'a, K: KernelState + ?Sized> {
    /// The settings in force: monitor mode, the IPv6 ban prefix.
    pub settings: Settings,
    pub state: &'a K,
    pub now_ns: u64,
}

impl LivePolicy {
    /// The verdict on `packet`, with the entries behind it. The policy's
    /// own default policy applies; monitor mode and the IPv6 ban prefix
    /// come from `inputs.settings`.
    pub fn judge<K: KernelState + ?Sized>(
        &self,
        packet: &Packet,
        inputs: &Inputs<K>,
    ) -> Result<Judgement, K::Error> {
        let settings = Settings {
            default_policy: self.compiled.settings.default_policy,
            ..inputs.settings
        };
        HostLookup::new(&self.compiled, settings, inputs.state, inputs.now_ns).judge(packet)
    }

    /// What the SIP rules decide for `request` from `ip`, judged as the
    /// kernel judges a request to the first port it reads SIP on: the
    /// `explain --user/--dial` row.
    pub fn explain_sip<K: KernelState + ?Sized>(
        &self,
        ip: IpAddr,
        request: &SipRequest,
        inputs: &Inputs<K>,
    ) -> Result<ExplainRow, K::Error> {
        let asked = "sip rules".to_string();
        let Some((index, _)) = self.compiled.ports.iter().find(|(_, c)| c.watches_sip()) else {
            return Ok(ExplainRow {
                service: asked,
                verdict: "pass".to_string(),
                because: "no port is read for SIP ([sip_auth] is off)".to_string(),
            });
        };
        let proto = if index >> 16 == L4Proto::Tcp as u32 {
            L4Proto::Tcp
        } else {
            L4Proto::Udp
        };
        let packet = packet_to(ip, proto, (index & 0xffff) as u16, false);
        let settings = Settings {
            default_policy: self.compiled.settings.default_policy,
            ..inputs.settings
        };
        let judged = HostLookup::new(&self.compiled, settings, inputs.state, inputs.now_ns)
            .with_request(request.clone())
            .judge(&packet)?;
        let mut because = self.because(&judged);
        if judged.verdict.step() != Step::Sip && !judged.verdict.reason.drops() {
            because = format!("{because}; {}", self.sip_rules_pass(ip, request));
        }
        Ok(ExplainRow {
            service: asked,
            verdict: if judged.verdict.drops() {
                "drop"
            } else {
                "pass"
            }
            .to_string(),
            because,
        })
    }

    /// Why the SIP rules let `request` from `ip` through.
    fn sip_rules_pass(&self, ip: IpAddr, request: &SipRequest) -> String {
        let rules = &self.compiled.sip_rules;
        let mut parts = Vec::new();
        let users = request.user_rules.iter().fold(0, |all, m| all | m);
        if users == 0 {
            parts.push("no extension rule names the user".to_string());
        } else {
            let permit = rules.permit_of(ip);
            let names: Vec<String> = (0..64u8)
                .filter(|i| users & permit.extensions & (1 << i) != 0)
                .map(|i| rules.extension_name(i))
                .collect();
            parts.push(format!("permitted by extension rule {}", names.join(", ")));
        }
        if let Some(number) = &request.dialled {
            match rules.dial_rule_of(number) {
                None => parts.push(format!("no dial rule holds {number}")),
                Some((rule, prefix)) => parts.push(format!(
                    "{number} starts with {prefix}: dial rule {} permits this source",
                    rules.dial_name(rule)
                )),
            }
        }
        parts.join("; ")
    }

    /// The `explain` row of `ip` for `service` (a name, or anything else
    /// for traffic that matches no service, such as `NO_SERVICE_NAME`). A service whose ports differ (say, rate rules
    /// on UDP only) is judged per kind of port, and the row says each.
    pub fn explain<K: KernelState + ?Sized>(
        &self,
        ip: IpAddr,
        service: &str,
        inputs: &Inputs<K>,
    ) -> Result<ExplainRow, K::Error> {
        let id = match self
            .compiled
            .service_names
            .iter()
            .position(|n| n == service)
        {
            Some(i) => i as u8 + 1,
            None => NO_SERVICE,
        };
        let mut parts: Vec<(String, Judgement)> = Vec::new();
        if id == NO_SERVICE {
            parts.push((String::new(), self.judge(&unclassified_packet(ip), inputs)?));
        }
        for (ports, proto, port) in self.port_groups(id) {
            let judged = self.judge(&packet_to(ip, proto, port, true), inputs)?;
            parts.push((ports, judged));
        }
        let texts: Vec<(String, String, bool)> = parts
            .iter()
            .map(|(ports, judged)| (ports.clone(), self.because(judged), judged.verdict.drops()))
            .collect();
        let drops = texts.iter().any(|(_, _, drops)| *drops);
        let because = if texts.iter().all(|(_, text, _)| *text == texts[0].1) {
            texts
                .first()
                .map(|(_, text, _)| text.clone())
                .unwrap_or_default()
        } else {
            let each: Vec<String> = texts
                .iter()
                .map(|(ports, text, _)| format!("{ports}: {text}"))
                .collect();
            each.join("; ")
        };
        Ok(ExplainRow {
            service: service.to_string(),
            verdict: if drops { "drop" } else { "pass" }.to_string(),
            because,
        })
    }

    /// The ports of service `id` grouped by what the kernel knows of them
    /// (their class): a name ("udp 10000-20000, tcp 80") and one port to
    /// judge for each group. For no service: the unclassified ports some
    /// rate rule watches.
    fn port_groups(&self, id: u8) -> Vec<(String, L4Proto, u16)> {
        let mut groups: Vec<(PortClass, Vec<(L4Proto, u16)>)> = Vec::new();
        for (index, class) in &self.compiled.ports {
            if class.service != id || (id == NO_SERVICE && !class.has_rules()) {
                continue;
            }
            let proto = if index >> 16 == L4Proto::Tcp as u32 {
                L4Proto::Tcp
            } else {
                L4Proto::Udp
            };
            let port = (index & 0xffff) as u16;
            match groups
                .iter_mut()
                .find(|(c, _)| c.service == class.service && c.rules == class.rules)
            {
                Some((_, ports)) => ports.push((proto, port)),
                None => groups.push((*class, vec![(proto, port)])),
            }
        }
        groups
            .into_iter()
            .map(|(_, ports)| (port_list(&ports), ports[0].0, ports[0].1))
            .collect()
    }

    /// What decided a verdict, in words, with the entry behind it.
    pub fn because(&self, judged: &Judgement) -> String {
        let verdict = &judged.verdict;
        let found = &judged.found;
        let text = match verdict.reason {
            Reason::Banned => match &found.ban {
                Some(ban) => {
                    let rule = bans::rule_name(ban.rule, &self.compiled.rule_names)
                        .map(|r| format!(" by rule {r}"))
                        .unwrap_or_default();
                    let left = if ban.expires_ns == guard_common::BAN_FOREVER {
                        "until removed".to_string()
                    } else {
                        let now = clock::monotonic_ns();
                        format!("{} left", bans::ban_duration(now, ban.expires_ns))
                    };
                    format!("banned ({}{rule}, {left})", bans::reason_name(ban.reason))
                }
                None => "banned".to_string(),
            },
            Reason::Denied => self.entry_text("denied by", NetList::Deny, found.deny),
            Reason::Fleet => match &found.fleet {
                Some((net, Some(holder))) => format!("fleet deny set: {net} ({holder})"),
                Some((net, None)) => format!("fleet deny set: {net}"),
                None => "fleet deny set".to_string(),
            },
            Reason::Fragment => "a later fragment: judged by its source alone".to_string(),
            Reason::Closed => "service closed to everyone".to_string(),
            Reason::NotTrusted => "not trusted: allow-listed sources only".to_string(),
            Reason::PassedAllowlisted => {
                let net = found.allow.map(|(net, _)| net);
                let entry = self.entry_text("allow-listed by", NetList::Allow, net);
                if verdict.class.has_rules() {
                    format!("{entry}; rate rules skipped")
                } else {
                    entry
                }
            }
            Reason::RateLimited => match found.rate {
                Some(hit) => format!(
                    "over rate rule {}: the next packet is number {} in its window, and bans",
                    self.rule_name(hit.rule),
                    hit.count
                ),
                None => "over a rate rule".to_string(),
            },
            // The controller judges without a packet, so it never finds a
            // fingerprint; the kernel's scanner bans show under Banned.
            Reason::Scanner => "a SIP request carrying a scanner fingerprint".to_string(),
            Reason::ExtensionDenied => {
                let rules = &self.compiled.sip_rules;
                match found.sip {
                    Some((_, rule)) => {
                        let nets: Vec<String> = rules
                            .extension
                            .get(rule as usize)
                            .map(|r| r.permit.iter().map(|n| n.to_string()).collect())
                            .unwrap_or_default();
                        format!(
                            "extension rule {} restricts the user to {}",
                            rules.extension_name(rule),
                            if nets.is_empty() {
                                "no network".to_string()
                            } else {
                                nets.join(", ")
                            }
                        )
                    }
                    None => "an extension rule restricts the user".to_string(),
                }
            }
            Reason::DialDenied => {
                let rules = &self.compiled.sip_rules;
                match found.sip {
                    Some((_, rule)) if found.dial_calls.is_some() => {
                        let limit = rules
                            .dial
                            .get(rule as usize)
                            .and_then(|r| r.calls_per_minute)
                            .unwrap_or(0);
                        format!(
                            "dial rule {} allows {limit} calls a minute from one source; this is call {}",
                            rules.dial_name(rule),
                            found.dial_calls.unwrap_or(0)
                        )
                    }
                    Some((_, rule)) => {
                        let section = rules.dial.get(rule as usize);
                        let ban = section
                            .filter(|r| !r.ban.is_zero())
                            .map(|r| {
                                format!(", and bans for {}", humantime::format_duration(r.ban))
                            })
                            .unwrap_or_default();
                        let permit = section
                            .map(|r| r.permit.join(", "))
                            .filter(|p| !p.is_empty())
                            .unwrap_or_else(|| "nobody".to_string());
                        format!(
                            "dial rule {} lets only {permit} dial its prefixes{ban}",
                            rules.dial_name(rule)
                        )
                    }
                    None => "a dial rule blocks the number".to_string(),
                }
            }
            Reason::Passed if verdict.step() == Step::Service => {
                let rules = self.rule_names(&verdict.class);
                // (An allow-listed source skips the rules: PassedAllowlisted.)
                if rules.is_empty() {
                    "open service".to_string()
                } else if found.peer.is_some() {
                    // The peer is searched only for a packet over a limit.
                    format!(
                        "open service, subject to rate rules {}: over a limit, within its \
                         learned-peer budget",
                        rules.join(", ")
                    )
                } else {
                    format!("open service, subject to rate rules {}", rules.join(", "))
                }
            }
            Reason::Passed => "default policy: pass".to_string(),
            Reason::DefaultDrop => "default policy: drop".to_string(),
            Reason::Malformed => "malformed".to_string(),
        };
        if verdict.monitor && verdict.reason.drops() {
            format!("{text} (monitor mode: passes)")
        } else {
            text
        }
    }

    fn entry_text(&self, what: &str, list: NetList, net: Option<IpNet>) -> String {
        let Some(net) = net else {
            return what.trim_end_matches(" by").to_string();
        };
        match self.lists.list(list).get(&net) {
            Some(entry) if !entry.comment.is_empty() => format!("{what} {net} ({})", entry.comment),
            _ => format!("{what} {net}"),
        }
    }

    fn rule_name(&self, index: u8) -> String {
        self.compiled
            .rule_names
            .get(index as usize)
            .cloned()
            .unwrap_or_else(|| format!("#{index}"))
    }

    fn rule_names(&self, class: &PortClass) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for index in class.rule_indexes() {
            let name = self.rule_name(index);
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}

/// "udp 5060, tcp 5060-5061": ports in ranges, per protocol.
fn port_list(ports: &[(L4Proto, u16)]) -> String {
    let mut ranges: Vec<(L4Proto, u16, u16)> = Vec::new();
    for (proto, port) in ports {
        match ranges.last_mut() {
            Some((p, _, last)) if p == proto && last.checked_add(1) == Some(*port) => *last = *port,
            _ => ranges.push((*proto, *port, *port)),
        }
    }
    let name = |proto: &L4Proto| match proto {
        L4Proto::Tcp => "tcp",
        L4Proto::Udp => "udp",
    };
    let texts: Vec<String> = ranges
        .iter()
        .map(|(proto, first, last)| match first == last {
            true => format!("{} {first}", name(proto)),
            false => format!("{} {first}-{last}", name(proto)),
        })
        .collect();
    texts.join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use guard_common::{rate::first_packet, BanReason, BAN_FOREVER, NO_RULE};

    use super::*;
    use crate::{policy::config::Config, state::ListChanges};

    const POLICY: &str = r#"
[services.web]
access = "trusted"
[[allow]]
cidr = "10.1.0.0/16"
services = ["sip", "web"]
comment = "office"
[[deny]]
cidr = "203.0.113.0/24"
comment = "scanner"
"#;

    fn live(text: &str) -> LivePolicy {
        let config = Config::parse(text, "test.toml").unwrap();
        LivePolicy::build(config, "test".into(), ListChanges::default())
    }

    #[derive(Default)]
    struct State {
        bans: HashMap<SourceKey, BanEntry>,
        windows: HashMap<RateKey, RateState>,
        peers: HashMap<SourceKey, PeerEntry>,
        fleet: Vec<(IpNet, String)>,
    }

    impl KernelState for State {
        type Error = std::convert::Infallible;
        fn ban(&self, source: &SourceKey) -> Result<Option<BanEntry>, Self::Error> {
            Ok(self.bans.get(source).copied())
        }
        fn rate_state(&self, key: &RateKey) -> Result<Option<RateState>, Self::Error> {
            Ok(self.windows.get(key).copied())
        }
        fn peer(&self, source: &SourceKey) -> Result<Option<PeerEntry>, Self::Error> {
            Ok(self.peers.get(source).copied())
        }
        fn fleet(&self, address: &Address) -> Result<Option<IpNet>, Self::Error> {
            let nets = self.fleet.iter().map(|(net, _)| (*net, ()));
            Ok(longest_match(nets, address).map(|(net, _)| net))
        }
        fn fleet_holder(&self, net: &IpNet) -> Option<String> {
            self.fleet
                .iter()
                .find(|(n, _)| n == net)
                .map(|(_, h)| h.clone())
        }
    }

    #[test]
    fn the_fleet_deny_set_drops_and_names_its_holder_but_spares_the_allow_list() {
        let policy = live(POLICY);
        let state = State {
            fleet: vec![
                ("10.0.0.0/8".parse().unwrap(), "crowdsec test/range".into()),
                ("198.51.100.0/24".parse().unwrap(), "feed voipbl".into()),
            ],
            ..State::default()
        };
        let inputs = inputs(&policy, &state, false);
        let dropped = row(&policy, "198.51.100.9", "sip", &inputs);
        assert_eq!(dropped.verdict, "drop");
        assert_eq!(
            dropped.because,
            "fleet deny set: 198.51.100.0/24 (feed voipbl)"
        );
        let stranger = row(&policy, "10.9.0.1", "sip", &inputs);
        assert_eq!(stranger.verdict, "drop");
        assert!(stranger
            .because
            .contains("10.0.0.0/8 (crowdsec test/range)"));
        // 10.1.0.0/16 is allow-listed (for sip and web): spared for every service.
        let office = row(&policy, "10.1.2.3", "sip", &inputs);
        assert_eq!(office.verdict, "pass", "{}", office.because);
        let denied = row(&policy, "203.0.113.5", "sip", &inputs);
        assert!(
            denied.because.starts_with("denied by"),
            "{}",
            denied.because
        );
    }

    fn inputs<'a>(policy: &LivePolicy, state: &'a State, monitor: bool) -> Inputs<'a, State> {
        Inputs {
            settings: Settings {
                monitor: monitor as u8,
                ..policy.compiled.settings
            },
            state,
            now_ns: 1_000_000_000_000,
        }
    }

    fn row(policy: &LivePolicy, ip: &str, service: &str, inputs: &Inputs<State>) -> ExplainRow {
        match policy.explain(ip.parse().unwrap(), service, inputs) {
            Ok(row) => row,
            Err(never) => match never {},
        }
    }

    #[test]
    fn in_monitor_mode_a_denied_source_passes_and_says_why() {
        let policy = live(POLICY);
        let state = State::default();
        let enforcing = row(
            &policy,
            "203.0.113.9",
            "sip",
            &inputs(&policy, &state, false),
        );
        assert_eq!(enforcing.verdict, "drop");
        assert_eq!(enforcing.because, "denied by 203.0.113.0/24 (scanner)");
        // The kernel counts it as denied and passes it: so does explain.
        let monitor = row(
            &policy,
            "203.0.113.9",
            "sip",
            &inputs(&policy, &state, true),
        );
        assert_eq!(monitor.verdict, "pass");
        assert_eq!(
            monitor.because,
            "denied by 203.0.113.0/24 (scanner) (monitor mode: passes)"
        );
    }

    #[test]
    fn an_allow_listed_source_on_an_open_port_without_rules_is_passed() {
        let policy = live(POLICY);
        let state = State::default();
        let inputs = inputs(&policy, &state, false);
        let packet = packet_to("10.1.2.3".parse().unwrap(), L4Proto::Tcp, 5060, true);
        let judged = policy.judge(&packet, &inputs).unwrap();
        // The kernel never searches the allow list here and counts `passed`.
        assert_eq!(judged.verdict.reason, Reason::Passed);
        assert_eq!(judged.found.allow, None);
        // On UDP 5060 the allow entry spares it the rate rules.
        let sip = row(&policy, "10.1.2.3", "sip", &inputs);
        assert_eq!(sip.verdict, "pass");
        assert_eq!(
            sip.because,
            "tcp 5060: open service; \
             udp 5060: allow-listed by 10.1.0.0/16 (office); rate rules skipped"
        );
        let web = row(&policy, "10.1.2.3", "web", &inputs);
        assert_eq!(web.because, "allow-listed by 10.1.0.0/16 (office)");
        let stranger = row(&policy, "198.51.100.1", "web", &inputs);
        assert_eq!(
            (stranger.verdict.as_str(), stranger.because.as_str()),
            ("drop", "not trusted: allow-listed sources only")
        );
    }

    #[test]
    fn bans_and_rate_windows_are_read_not_counted() {
        let policy = live(POLICY);
        let mut state = State::default();
        let now = 1_000_000_000_000;
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        let key = crate::kernel::maps::source_key(stranger, 64);
        // 40 packets in the 40-per-2s rule's window: the next one is over.
        let rule = 1u8;
        let mut window = first_packet(now, policy.compiled.rules[rule as usize].slot_ns);
        for slot in window.slots.iter_mut().filter(|s| **s != 0) {
            *slot += 39;
        }
        let mut windows = RateState::default();
        windows.windows[rate_lane(rule as u32)] = window;
        state.windows.insert(
            RateKey {
                source: key,
                group: rate_group(rule as u32),
            },
            windows,
        );
        let inputs = Inputs {
            settings: policy.compiled.settings,
            state: &state,
            now_ns: now,
        };
        let packet = packet_to(stranger, L4Proto::Udp, 5060, false);
        let judged = policy.judge(&packet, &inputs).unwrap();
        assert_eq!(judged.verdict.reason, Reason::RateLimited);
        assert_eq!(judged.found.rate, Some(RateHit { rule, count: 41 }));
        assert_eq!(
            policy.because(&judged),
            "over rate rule sip-udp-40-per-2s: the next packet is number 41 in its window, \
             and bans"
        );
        // A ban comes first, with its reason.
        state.bans.insert(
            key,
            BanEntry {
                expires_ns: BAN_FOREVER,
                reason: BanReason::Manual as u16,
                rule: NO_RULE,
                ..BanEntry::default()
            },
        );
        let inputs = Inputs {
            settings: policy.compiled.settings,
            state: &state,
            now_ns: now,
        };
        let judged = policy.judge(&packet, &inputs).unwrap();
        assert_eq!(judged.verdict.reason, Reason::Banned);
        assert_eq!(policy.because(&judged), "banned (manual, until removed)");
    }

    #[test]
    fn port_lists_are_ranges_per_protocol() {
        let ports = [
            (L4Proto::Udp, 10000),
            (L4Proto::Udp, 10001),
            (L4Proto::Udp, 10002),
            (L4Proto::Tcp, 80),
            (L4Proto::Tcp, 443),
        ];
        assert_eq!(port_list(&ports), "udp 10000-10002, tcp 80, tcp 443");
    }
}
