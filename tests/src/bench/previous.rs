//! An earlier build of the XDP program (`--previous OBJECT`, say the
//! commit before a change), whose per-path costs are timed in the same
//! rounds as this build's: old against new as ratios of one run.
//!
//! The earlier object may have other maps besides, so it is loaded with aya
//! directly and given only what every layout so far shares: the policy
//! arrays (slot 0), the allow and deny tries, the ban map and the capture
//! program. Its rate state starts empty, as this build's does.
use std::path::Path;

use anyhow::{Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, ProgramArray, RingBuf},
    programs::Xdp,
    EbpfLoader,
};
use guard_common::{
    map_names as names, policy_rule_index, policy_service_index, BanEntry, PortClass, RateRule,
    ServicePolicy, Settings, SourceKey, CAPTURE_PROGRAM_NAME, PROGRAM_NAME,
};
use guard_userspace::policy::compile::CompiledPolicy;
use ipnet::IpNet;

/// An earlier build of the XDP program, loaded with `policy`.
pub struct Previous {
    ebpf: aya::Ebpf,
    /// Its SIP capture ring (every layout so far has one).
    sip_events: RingBuf<MapData>,
}

impl Previous {
    /// Loads `object` with `policy` and `bans`, its maps sized as the
    /// bench's own harness: `capacity` bans and CIDRs per trie, the rate
    /// state for `tracked` sources of two rules.
    pub fn load(
        object: &Path,
        policy: &CompiledPolicy,
        bans: &[(SourceKey, BanEntry)],
        capacity: u32,
        tracked: u32,
    ) -> Result<Previous> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::BANS, capacity)
            .map_max_entries(names::DENY_V4, capacity)
            .map_max_entries(names::DENY_V6, capacity)
            .map_max_entries(names::ALLOW_V4, capacity)
            .map_max_entries(names::ALLOW_V6, capacity)
            .map_max_entries(names::RATE_STATE, tracked * 2)
            .load_file(object)
            .with_context(|| format!("loading {}", object.display()))?;
        for name in [PROGRAM_NAME, CAPTURE_PROGRAM_NAME] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name}"))?
                .try_into()?;
            program.load()?;
        }
        let capture: &Xdp = ebpf
            .program(CAPTURE_PROGRAM_NAME)
            .context("no capture program")?
            .try_into()?;
        let capture_fd = capture.fd()?.try_clone()?;
        let mut slots: ProgramArray<_> = ebpf
            .map_mut(names::CAPTURE_PROG)
            .context("no CAPTURE_PROG")?
            .try_into()?;
        slots.set(0, &capture_fd, 0)?;
        write_policy(&mut ebpf, policy)?;
        let mut ban_map: HashMap<_, SourceKey, BanEntry> =
            ebpf.map_mut(names::BANS).context("BANS")?.try_into()?;
        for (key, entry) in bans {
            ban_map.insert(key, entry, 0)?;
        }
        let sip_events =
            RingBuf::try_from(ebpf.take_map(names::SIP_EVENTS).context("no SIP_EVENTS")?)?;
        Ok(Previous { ebpf, sip_events })
    }

    /// Empties its SIP capture ring; returns the records it held.
    pub fn drain_captures(&mut self) -> usize {
        let mut records = 0;
        while self.sip_events.next().is_some() {
            records += 1;
        }
        records
    }

    pub fn program(&self) -> Result<&Xdp> {
        Ok(self
            .ebpf
            .program(PROGRAM_NAME)
            .context("no program")?
            .try_into()?)
    }
}

fn write_policy(ebpf: &mut aya::Ebpf, policy: &CompiledPolicy) -> Result<()> {
    let mut ports: Array<_, PortClass> = ebpf.map_mut(names::PORTS).context("PORTS")?.try_into()?;
    for (index, class) in &policy.ports {
        ports.set(*index, class, 0)?;
    }
    let mut services: Array<_, ServicePolicy> = ebpf
        .map_mut(names::SERVICES)
        .context("SERVICES")?
        .try_into()?;
    for (id, service) in &policy.services {
        services.set(policy_service_index(0, *id), service, 0)?;
    }
    let mut rules: Array<_, RateRule> = ebpf.map_mut(names::RULES).context("RULES")?.try_into()?;
    for (i, rule) in policy.rules.iter().enumerate() {
        rules.set(policy_rule_index(0, i as u32), rule, 0)?;
    }
    let nets = policy
        .allow
        .iter()
        .map(|(net, mask)| (names::ALLOW_V4, names::ALLOW_V6, *net, *mask))
        .chain(
            policy
                .deny
                .iter()
                .map(|net| (names::DENY_V4, names::DENY_V6, *net, 0)),
        );
    for (v4, v6, net, value) in nets {
        match net {
            IpNet::V4(net) => {
                let mut trie: LpmTrie<_, [u8; 4], u32> =
                    ebpf.map_mut(v4).context("v4 trie")?.try_into()?;
                let key = Key::new(net.prefix_len() as u32, net.network().octets());
                trie.insert(&key, value, 0)?;
            }
            IpNet::V6(net) => {
                let mut trie: LpmTrie<_, [u8; 16], u32> =
                    ebpf.map_mut(v6).context("v6 trie")?.try_into()?;
                let key = Key::new(net.prefix_len() as u32, net.network().octets());
                trie.insert(&key, value, 0)?;
            }
        }
    }
    let mut settings: Array<_, Settings> = ebpf
        .map_mut(names::SETTINGS)
        .context("SETTINGS")?
        .try_into()?;
    settings.set(
        0,
        Settings {
            policy_slot: 0,
            ..policy.settings
        },
        0,
    )?;
    Ok(())
}
