//! The controller's side of the shared verdict (`guard_common::verdict`):
//! [`HostLookup`] answers the judge's questions from the compiled policy
//! (what the maps were written from) and the kernel's live bans and rate
//! state, read only. `explain` and the SSH-lockout check decide with it, so
//! they say what the XDP program does, step for step.
use std::net::IpAddr;

use guard_common::{
    rate::window_total,
    verdict::{judge, Address, Lookup, Packet, Transport, Verdict},
    AccessMode, BanEntry, L4Proto, PortClass, RateKey, RateWindow, Settings, SourceKey,
    MAX_RATE_RULES, RULE_SYN_ONLY,
};
use ipnet::IpNet;

use crate::{kernel::maps::KernelMaps, policy::compile::CompiledPolicy};

/// The kernel state a verdict reads besides the policy: bans and rate
/// windows. Read only: judging never counts a packet or changes a ban.
pub trait KernelState {
    type Error;
    /// The ban-map entry of `source` (expired or not).
    fn ban(&self, source: &SourceKey) -> Result<Option<BanEntry>, Self::Error>;
    /// The rate window of `(source, rule)`.
    fn rate_window(&self, key: &RateKey) -> Result<Option<RateWindow>, Self::Error>;
}

impl KernelState for KernelMaps {
    type Error = aya::maps::MapError;

    fn ban(&self, source: &SourceKey) -> Result<Option<BanEntry>, Self::Error> {
        absent_as_none(self.bans.get(source, 0))
    }

    fn rate_window(&self, key: &RateKey) -> Result<Option<RateWindow>, Self::Error> {
        absent_as_none(self.rate_state.get(key, 0))
    }
}

fn absent_as_none<T>(
    found: Result<T, aya::maps::MapError>,
) -> Result<Option<T>, aya::maps::MapError> {
    match found {
        Ok(value) => Ok(Some(value)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// No bans, no rate state: the verdict of the policy alone.
pub struct NoKernelState;

impl KernelState for NoKernelState {
    type Error = std::convert::Infallible;

    fn ban(&self, _: &SourceKey) -> Result<Option<BanEntry>, Self::Error> {
        Ok(None)
    }

    fn rate_window(&self, _: &RateKey) -> Result<Option<RateWindow>, Self::Error> {
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
    /// The source's allow entry and its service mask (when it was searched).
    pub allow: Option<(IpNet, u32)>,
    pub rate: Option<RateHit>,
}

/// A verdict with what decided it.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub found: Found,
}

/// [`Lookup`] over a compiled policy and the kernel's bans and rate state.
pub struct HostLookup<'a, K: KernelState> {
    policy: &'a CompiledPolicy,
    settings: Settings,
    state: &'a K,
    now_ns: u64,
    found: Found,
    error: Option<K::Error>,
}

impl<'a, K: KernelState> HostLookup<'a, K> {
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
        }
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

    /// The kernel's rate check, without counting: the packet's count in
    /// each rule's window is what is there plus this packet (plus one for
    /// each earlier listing of the same rule on the port, which the kernel
    /// counted a moment before).
    fn rate_hit(&mut self, source: &SourceKey, class: &PortClass, is_syn: bool) -> Option<RateHit> {
        let mut counted_here = [0u64; MAX_RATE_RULES];
        for index in class.rule_indexes() {
            let Some(rule) = self.policy.rule(index) else {
                continue;
            };
            if rule.flags & RULE_SYN_ONLY != 0 && !is_syn {
                continue;
            }
            let key = RateKey {
                source: *source,
                rule: index as u32,
            };
            let window = self.state.rate_window(&key);
            let seen = self
                .keep_error(window)
                .map_or(0, |w| window_total(&w, self.now_ns, rule.slot_ns));
            counted_here[index as usize] += 1;
            let count = seen + counted_here[index as usize];
            if count > rule.limit as u64 {
                return Some(RateHit { rule: index, count });
            }
        }
        None
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

impl<K: KernelState> Lookup for HostLookup<'_, K> {
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

    fn exceeds_rate_rules(
        &mut self,
        source: &SourceKey,
        class: &PortClass,
        is_syn: bool,
        _slot: u8,
    ) -> bool {
        self.found.rate = self.rate_hit(source, class, is_syn);
        self.found.rate.is_some()
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
