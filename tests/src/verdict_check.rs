//! One verdict, judged twice: by the XDP program (BPF_PROG_TEST_RUN) and
//! by the controller's side of the shared verdict (`HostLookup`), for the
//! verdict table and the host/kernel property test.
use std::collections::HashMap;

use guard_common::{
    sip_scan::{scan, ScanStatus},
    verdict::{Address, Packet},
    BanEntry, Counter, PeerEntry, RateKey, RateState, Reason, Settings, SourceKey,
};
use guard_userspace::policy::{
    compile::CompiledPolicy,
    verdict::{address_ip, HostLookup, Judgement, KernelState, SipRequest},
};
use ipnet::IpNet;

use crate::{frames::frame_of, Harness, XDP_DROP, XDP_PASS};

/// Bans, rate windows and peers held in memory: the kernel state of a
/// verdict judged without a kernel.
#[derive(Debug, Clone, Default)]
pub struct MemoryState {
    pub bans: HashMap<SourceKey, BanEntry>,
    pub windows: HashMap<RateKey, RateState>,
    pub peers: HashMap<SourceKey, PeerEntry>,
    /// The fleet deny set.
    pub fleet: Vec<IpNet>,
}

impl KernelState for MemoryState {
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

    /// The longest network holding the address, as an LPM trie finds it.
    fn fleet(&self, address: &Address) -> Result<Option<IpNet>, Self::Error> {
        let ip = address_ip(address);
        Ok(self
            .fleet
            .iter()
            .filter(|net| net.contains(&ip))
            .max_by_key(|net| net.prefix_len())
            .copied())
    }
}

/// The XDP action a verdict takes.
pub fn action(judgement: &Judgement) -> u32 {
    if judgement.verdict.drops() {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// The host's verdict on `packet` under `policy` and `settings`, reading
/// bans and rate state from `state`.
pub fn host_judge<K: KernelState>(
    policy: &CompiledPolicy,
    settings: Settings,
    state: &K,
    now_ns: u64,
    packet: &Packet,
) -> Result<Judgement, K::Error> {
    HostLookup::new(policy, settings, state, now_ns).judge(packet)
}

/// [`host_judge`] of `packet` carrying the SIP request `payload`, which
/// the host reads with the shared reader and the policy's own table, as
/// the kernel does (a request it cannot read names nothing).
pub fn host_judge_sip<K: KernelState>(
    policy: &CompiledPolicy,
    settings: Settings,
    state: &K,
    now_ns: u64,
    packet: &Packet,
    payload: &[u8],
) -> Result<Judgement, K::Error> {
    let table = policy.sip_table().expect("the policy's SIP table");
    let summary = scan(payload, &table);
    let mut lookup = HostLookup::new(policy, settings, state, now_ns);
    if summary.status != ScanStatus::Unreadable {
        lookup = lookup.with_request(SipRequest::read(&summary));
    }
    lookup.judge(packet)
}

/// [`kernel_run`] for a frame built by the caller (a SIP request's).
pub fn kernel_run_frame(
    h: &mut Harness,
    frame: &[u8],
    reason: Reason,
    service: u8,
) -> KernelOutcome {
    let before = counted(h, reason, service);
    let action = h.run(frame);
    let after = counted(h, reason, service);
    KernelOutcome {
        action,
        counted_as_expected: after == before + 1,
    }
}

/// Packets the kernel counted under `(reason, service)`, summed over CPUs.
pub fn counted(h: &Harness, reason: Reason, service: u8) -> u64 {
    h.guard
        .maps()
        .verdict_of(reason, service)
        .expect("reading VERDICTS")
        .packets
}

/// What the kernel did with one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelOutcome {
    pub action: u32,
    /// Whether it counted the packet under the expected (reason, service).
    pub counted_as_expected: bool,
}

/// Runs `packet` through the XDP program and checks which counter it
/// went to: one slot read before and after, so a case costs a few
/// syscalls (the property test runs 100,000 of them).
pub fn kernel_run(h: &mut Harness, packet: &Packet, reason: Reason, service: u8) -> KernelOutcome {
    let before = counted(h, reason, service);
    let action = h.run(&frame_of(packet));
    let after = counted(h, reason, service);
    KernelOutcome {
        action,
        counted_as_expected: after == before + 1,
    }
}

/// The reason and service the kernel counted the last packet under, found
/// by a full scan (only to describe a mismatch).
pub fn last_counted(h: &Harness, before: &[(Reason, u8, Counter)]) -> Option<(Reason, u8)> {
    let after = h
        .guard
        .maps()
        .verdicts_by_service()
        .expect("reading VERDICTS");
    after.iter().find_map(|(reason, service, counter)| {
        let old = before
            .iter()
            .find(|(r, s, _)| r == reason && s == service)
            .map_or(0, |(_, _, c)| c.packets);
        (counter.packets > old).then_some((*reason, *service))
    })
}

/// Empties the ban map, the rate state, the peers and the fleet deny set (between cases).
pub fn clear_kernel_state(h: &mut Harness) {
    let maps = h.guard.maps_mut();
    for (key, _) in maps.bans().expect("reading BANS") {
        let _ = maps.remove_ban(&key);
    }
    maps.clear_rate_state().expect("clearing RATE_STATE");
    for (key, _) in maps.peers().expect("reading PEERS") {
        let _ = maps.remove_peer(&key);
    }
    for net in maps.fleet_nets().expect("reading FLEET_V4/V6") {
        maps.remove_fleet(net).expect("clearing the fleet deny set");
    }
    h.drain_ban_events();
}

/// Writes `state` into the kernel's ban map, rate state, peers and fleet deny set.
pub fn load_kernel_state(h: &mut Harness, state: &MemoryState) {
    let maps = h.guard.maps_mut();
    for (key, ban) in &state.bans {
        maps.insert_ban(*key, *ban).expect("writing BANS");
    }
    for (key, window) in &state.windows {
        maps.insert_rate_state(*key, *window)
            .expect("writing RATE_STATE");
    }
    for (key, peer) in &state.peers {
        maps.insert_peer(*key, *peer).expect("writing PEERS");
    }
    for net in &state.fleet {
        maps.insert_fleet(*net).expect("writing FLEET_V4/V6");
    }
}
