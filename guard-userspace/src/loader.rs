//! Loading the embedded XDP program, sizing and filling its maps, attaching it.
use anyhow::{anyhow, Context, Result};
use aya::{
    programs::{tc, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use guard_common::{map_names as names, CAPTURE_PROGRAM_NAME, EGRESS_PROGRAM_NAME, PROGRAM_NAME};

use crate::{config::Config, maps::KernelMaps, policy::CompiledPolicy};

/// The XDP object, embedded at build time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SIPGUARD_EBPF_OBJECT"));

/// How to attach: let sipguard pick (native, else generic), or insist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeChoice {
    Auto,
    Native,
    Skb,
}

/// A loaded (and perhaps attached) guard.
pub struct Guard {
    pub ebpf: Ebpf,
    maps: Option<KernelMaps>,
    attachment: Option<(aya::programs::xdp::XdpLinkId, &'static str)>,
    egress: Option<aya::programs::tc::SchedClassifierLinkId>,
}

impl Guard {
    /// Loads the program with maps sized and filled from `config`.
    pub fn load(config: &Config, policy: &CompiledPolicy) -> Result<Guard> {
        raise_memlock_limit();
        let rate_entries = config
            .guard
            .max_tracked_sources
            .saturating_mul(policy.max_rules_per_port().max(1));
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::BANS, config.guard.max_bans)
            .map_max_entries(names::RATE_STATE, rate_entries)
            .map_max_entries(names::DENY_V4, config.guard.max_cidrs)
            .map_max_entries(names::DENY_V6, config.guard.max_cidrs)
            .map_max_entries(names::ALLOW_V4, config.guard.max_cidrs)
            .map_max_entries(names::ALLOW_V6, config.guard.max_cidrs)
            .load(EBPF_OBJECT)
            .map_err(|e| anyhow!("cannot create the XDP program's maps: {}", describe(&e)))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("the embedded object has no program {PROGRAM_NAME}"))?
            .try_into()?;
        program.load().map_err(|e| {
            anyhow!(
                "the kernel rejected the XDP program (sipguard needs Linux 5.18+ with \
                 BPF atomics and ring buffers): {}",
                describe(&e)
            )
        })?;
        let capture: &mut Xdp = ebpf
            .program_mut(CAPTURE_PROGRAM_NAME)
            .ok_or_else(|| anyhow!("the embedded object has no program {CAPTURE_PROGRAM_NAME}"))?
            .try_into()?;
        capture.load().map_err(|e| {
            anyhow!(
                "the kernel rejected the SIP capture program: {}",
                describe(&e)
            )
        })?;
        let capture_fd = capture.fd()?.try_clone()?;
        let mut slots: aya::maps::ProgramArray<_> = ebpf
            .map_mut(names::CAPTURE_PROG)
            .ok_or_else(|| anyhow!("the embedded object has no map {}", names::CAPTURE_PROG))?
            .try_into()?;
        slots
            .set(0, &capture_fd, 0)
            .context("installing the SIP capture program")?;
        egress_program(&mut ebpf)?.load().map_err(|e| {
            anyhow!(
                "the kernel rejected the tc egress program: {}",
                describe(&e)
            )
        })?;
        let mut maps = KernelMaps::from_ebpf(&mut ebpf)?;
        maps.write_policy(policy)
            .context("filling the policy maps")?;
        Ok(Guard {
            ebpf,
            maps: Some(maps),
            attachment: None,
            egress: None,
        })
    }

    /// The program's maps (until [`Guard::take_maps`]).
    pub fn maps(&self) -> &KernelMaps {
        self.maps.as_ref().expect("the maps were handed over")
    }

    pub fn maps_mut(&mut self) -> &mut KernelMaps {
        self.maps.as_mut().expect("the maps were handed over")
    }

    /// Hands the maps over (to tasks sharing them); the programs stay here.
    pub fn take_maps(&mut self) -> Option<KernelMaps> {
        self.maps.take()
    }

    /// Attaches the tc egress program that copies the PBX's SIP answers.
    pub fn attach_egress(&mut self, iface: &str) -> Result<()> {
        let program = egress_program(&mut self.ebpf)?;
        // Kernels before 6.6 (no TCX) need a clsact qdisc to attach to.
        let link = match program.attach(iface, TcAttachType::Egress) {
            Ok(link) => link,
            Err(_) => {
                let _ = tc::qdisc_add_clsact(iface);
                program
                    .attach(iface, TcAttachType::Egress)
                    .map_err(|e| anyhow!("cannot attach tc egress to {iface}: {}", describe(&e)))?
            }
        };
        self.egress = Some(link);
        Ok(())
    }

    pub fn program(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("program {PROGRAM_NAME} vanished"))?
            .try_into()?)
    }

    /// Attaches to `iface`; returns the mode used ("native" or "skb").
    pub fn attach(&mut self, iface: &str, choice: XdpModeChoice) -> Result<&'static str> {
        let program = self.program()?;
        let attempts: &[(XdpMode, &'static str)] = match choice {
            XdpModeChoice::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "skb")],
            XdpModeChoice::Native => &[(XdpMode::Driver, "native")],
            XdpModeChoice::Skb => &[(XdpMode::Skb, "skb")],
        };
        let mut last_error = None;
        for (mode, name) in attempts {
            match program.attach(iface, *mode) {
                Ok(link) => {
                    self.attachment = Some((link, name));
                    return Ok(name);
                }
                Err(e) => last_error = Some((name, e)),
            }
        }
        let (name, e) = last_error.expect("at least one attach attempt");
        Err(anyhow!(
            "cannot attach XDP to {iface} in {name} mode: {}",
            describe(&e)
        ))
    }

    /// Detaches from the interface (also done on drop).
    pub fn detach(&mut self) -> Result<()> {
        if let Some(link) = self.egress.take() {
            egress_program(&mut self.ebpf)?.detach(link)?;
        }
        if let Some((link, _)) = self.attachment.take() {
            self.program()?.detach(link)?;
        }
        Ok(())
    }

    /// The kernel's id of the loaded program.
    pub fn program_id(&mut self) -> Result<u32> {
        Ok(self.program()?.info()?.id())
    }
}

fn egress_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    Ok(ebpf
        .program_mut(EGRESS_PROGRAM_NAME)
        .ok_or_else(|| anyhow!("the embedded object has no program {EGRESS_PROGRAM_NAME}"))?
        .try_into()?)
}

/// One line from an aya error and its causes.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    // A verifier log is many lines: the fault is stated just before the
    // closing "processed N insns" line. The whole log goes to debug output.
    tracing::debug!("full error: {text}");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.as_slice() {
        [] => String::new(),
        [one] => one.to_string(),
        [first, .., fault, last] if last.starts_with("processed ") => {
            format!("{first} ... {fault}")
        }
        [first, .., last] => format!("{first} ... {last}"),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct; failure only matters on old kernels.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}
