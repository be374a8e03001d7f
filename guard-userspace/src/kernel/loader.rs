//! Loading the embedded XDP program, sizing and filling its maps, attaching it.
use std::path::Path;

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink},
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use guard_common::{
    map_names as names, CAPTURE_DENIED_PROGRAM_NAME, CAPTURE_DENIED_SLOT, CAPTURE_PASSED_SLOT,
    CAPTURE_PROGRAM_NAME, EGRESS_PROGRAM_NAME, PROGRAM_NAME,
};
use tracing::warn;

use crate::{
    kernel::maps::{KernelMaps, MapsError},
    kernel::pins::Pins,
    policy::compile::CompiledPolicy,
    policy::config::Config,
};

/// Why the program could not be loaded, attached or detached.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this sipguard was built without its XDP program (no BPF toolchain at build \
         time): build it with `cargo xtask build`"
    )]
    NoObject,
    /// The object lacks a program or map this controller needs.
    #[error("the embedded object has no {0}")]
    Missing(String),
    /// The kernel refused: what was asked, and its words (a verifier log cut
    /// to its fault line).
    #[error("{what}: {detail}")]
    Kernel { what: String, detail: String },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

pub type Result<T, E = LoadError> = std::result::Result<T, E>;

/// Maps an aya error to [`LoadError::Kernel`] with `what` was asked.
pub(super) fn kernel<E: std::error::Error + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> LoadError {
    let what = what.into();
    move |e| LoadError::Kernel {
        what,
        detail: describe(&e),
    }
}

/// The XDP object, embedded at build time. Empty when the build had no BPF
/// toolchain (see build.rs): such a binary refuses to load.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("SIPGUARD_EBPF_OBJECT"));

/// The embedded object, or why there is none.
pub fn ebpf_object() -> Result<&'static [u8]> {
    ebpf_object_in(EBPF_OBJECT)
}

fn ebpf_object_in(object: &[u8]) -> Result<&[u8]> {
    if object.is_empty() {
        return Err(LoadError::NoObject);
    }
    Ok(object)
}

/// How to attach: let sipguard pick (native, else generic), or insist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeChoice {
    Auto,
    Native,
    Skb,
}

/// How the XDP program reached the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// Attached anew in this mode ("native" or "skb").
    New(&'static str),
    /// Swapped atomically into the pinned link of an earlier run.
    Replaced,
}

/// A loaded (and perhaps attached) guard.
pub struct Guard {
    pub ebpf: Ebpf,
    maps: Option<KernelMaps>,
    pins: Option<Pins>,
    /// Whether the maps (and their bans) came from an earlier run's pins.
    pub adopted_maps: bool,
    /// The base of the program's clock measured at load (None: it reads
    /// the coarse clock through its helper).
    pub clock: Option<guard_common::clock::ClockBase>,
    /// Attachments owned by this process (detached on exit when not pinned).
    attachment: Option<aya::programs::xdp::XdpLinkId>,
    egress: Option<aya::programs::tc::SchedClassifierLinkId>,
    /// Whether the XDP attachment is pinned (made here or taken over).
    xdp_pinned: bool,
}

impl Guard {
    /// Loads the program with maps sized from `config`: the pinned maps of an
    /// earlier run when `pins` has them, else new ones (pinned when `pins`
    /// is given). The caller fills them with [`KernelMaps::sync_policy`].
    pub fn load(config: &Config, policy: &CompiledPolicy, pins: Option<&Pins>) -> Result<Guard> {
        let object = ebpf_object()?;
        raise_memlock_limit();
        // One entry per tracked source and rule group (one group for any
        // policy of up to four rules).
        let rate_entries = config
            .guard
            .max_tracked_sources
            .saturating_mul(policy.max_rate_groups_per_port().max(1));
        let adopted_maps = pins.is_some_and(Pins::has_maps);
        let mut loader = EbpfLoader::new();
        if let Some(pins) = pins {
            for name in names::ALL {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut ebpf = loader
            .map_max_entries(names::BANS, config.guard.max_bans)
            .map_max_entries(names::RATE_STATE, rate_entries)
            .map_max_entries(names::PEERS, config.peers.max_peers)
            .map_max_entries(names::DENY_V4, config.guard.max_cidrs)
            .map_max_entries(names::DENY_V6, config.guard.max_cidrs)
            .map_max_entries(names::ALLOW_V4, config.guard.max_cidrs)
            .map_max_entries(names::ALLOW_V6, config.guard.max_cidrs)
            .map_max_entries(names::FLEET_V4, config.guard.max_fleet_cidrs)
            .map_max_entries(names::FLEET_V6, config.guard.max_fleet_cidrs)
            .load(object)
            .map_err(kernel("cannot create the XDP program's maps"))?;
        xdp_program(&mut ebpf, PROGRAM_NAME)?
            .load()
            .map_err(kernel(
                "the kernel rejected the XDP program (sipguard needs Linux 5.18+ with \
                 BPF atomics and ring buffers)",
            ))?;
        let mut captures = Vec::new();
        for (slot, name, what) in [
            (
                CAPTURE_PASSED_SLOT,
                CAPTURE_PROGRAM_NAME,
                "the SIP capture program",
            ),
            (
                CAPTURE_DENIED_SLOT,
                CAPTURE_DENIED_PROGRAM_NAME,
                "the SIP denied-request capture program",
            ),
        ] {
            let capture = xdp_program(&mut ebpf, name)?;
            capture
                .load()
                .map_err(kernel(format!("the kernel rejected {what}")))?;
            let fd = capture
                .fd()
                .map_err(kernel(what))?
                .try_clone()
                .map_err(kernel(what))?;
            captures.push((slot, fd, what));
        }
        let mut slots: aya::maps::ProgramArray<_> = ebpf
            .map_mut(names::CAPTURE_PROG)
            .ok_or_else(|| LoadError::Missing(format!("map {}", names::CAPTURE_PROG)))?
            .try_into()
            .map_err(kernel(names::CAPTURE_PROG))?;
        for (slot, fd, what) in &captures {
            slots
                .set(*slot, fd, 0)
                .map_err(kernel(format!("installing {what}")))?;
        }
        egress_program(&mut ebpf)?
            .load()
            .map_err(kernel("the kernel rejected the tc egress program"))?;
        let clock = super::clock::calibrate(&mut ebpf)?;
        let maps = KernelMaps::from_ebpf(&mut ebpf)?;
        Ok(Guard {
            ebpf,
            clock,
            maps: Some(maps),
            pins: pins.cloned(),
            adopted_maps,
            attachment: None,
            egress: None,
            xdp_pinned: false,
        })
    }

    /// The clock base the `CLOCK` map holds (tick 0: the program reads the
    /// coarse clock through its helper).
    pub fn clock_in_map(&mut self) -> Result<guard_common::clock::ClockBase> {
        super::clock::clock_map(&mut self.ebpf)?
            .get(&0, 0)
            .map_err(kernel("reading CLOCK"))
    }

    /// Replaces the clock base (for tests: shows that the program tells
    /// the time by it).
    pub fn set_clock_base(&mut self, base: guard_common::clock::ClockBase) -> Result<()> {
        super::clock::clock_map(&mut self.ebpf)?
            .set(0, base, 0)
            .map_err(kernel("writing CLOCK"))
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

    /// Attaches the tc egress program that copies the PBX's SIP answers:
    /// into the pinned link of an earlier run if there is one.
    pub fn attach_egress(&mut self, iface: &str) -> Result<()> {
        let pin_path = self.pins.as_ref().map(Pins::tc_link);
        let swapped = swap_into_pinned(pin_path.as_deref(), |fd| {
            let link = SchedClassifierLink::try_from(fd).map_err(kernel("the pinned tc link"))?;
            egress_program(&mut self.ebpf)?
                .attach_to_link(link)
                .map_err(kernel("swapping into the pinned tc link"))?;
            Ok(())
        });
        if swapped {
            return Ok(());
        }
        let program = egress_program(&mut self.ebpf)?;
        // Kernels before 6.6 (no TCX) need a clsact qdisc to attach to.
        let link = match program.attach(iface, TcAttachType::Egress) {
            Ok(link) => link,
            Err(_) => {
                let _ = tc::qdisc_add_clsact(iface);
                program
                    .attach(iface, TcAttachType::Egress)
                    .map_err(kernel(format!("cannot attach tc egress to {iface}")))?
            }
        };
        if let Some(path) = pin_path {
            // Netlink tc filters (before TCX) cannot be pinned; they are
            // re-attached by the next run instead.
            let owned = egress_program(&mut self.ebpf)?
                .take_link(link)
                .map_err(kernel("the tc link"))?;
            match FdLink::try_from(owned) {
                // The pin holds the link from now on.
                Ok(fd) => drop(fd.pin(&path).map_err(kernel("pinning the tc link"))?),
                Err(_) => warn!("tc egress is attached through netlink: not pinned"),
            }
            return Ok(());
        }
        self.egress = Some(link);
        Ok(())
    }

    pub fn program(&mut self) -> Result<&mut Xdp> {
        xdp_program(&mut self.ebpf, PROGRAM_NAME)
    }

    /// Attaches to `iface`. With pins, an earlier run's pinned link gets the
    /// new program atomically (bpf_link_update: no packet goes unfiltered);
    /// otherwise a new link is made and pinned.
    pub fn attach(&mut self, iface: &str, choice: XdpModeChoice) -> Result<Attachment> {
        let pin_path = self.pins.as_ref().map(Pins::xdp_link);
        let swapped = swap_into_pinned(pin_path.as_deref(), |fd| {
            let link = XdpLink::try_from(fd).map_err(kernel("the pinned XDP link"))?;
            self.program()?
                .attach_to_link(link)
                .map_err(kernel("swapping into the pinned XDP link"))?;
            Ok(())
        });
        if swapped {
            self.xdp_pinned = true;
            return Ok(Attachment::Replaced);
        }
        let mode = self.attach_new(iface, choice)?;
        if let Some(path) = pin_path {
            let link = self
                .attachment
                .take()
                .ok_or_else(|| LoadError::Missing("XDP link to pin".into()))?;
            let owned = self
                .program()?
                .take_link(link)
                .map_err(kernel("the XDP link"))?;
            let fd = FdLink::try_from(owned).map_err(kernel(
                "this kernel attached XDP without a bpf_link, which cannot be pinned",
            ))?;
            drop(fd.pin(&path).map_err(kernel("pinning the XDP link"))?);
            self.xdp_pinned = true;
        }
        Ok(Attachment::New(mode))
    }

    fn attach_new(&mut self, iface: &str, choice: XdpModeChoice) -> Result<&'static str> {
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
                    self.attachment = Some(link);
                    return Ok(name);
                }
                Err(e) => last_error = Some((name, e)),
            }
        }
        let (name, e) = last_error.expect("at least one attach attempt");
        Err(kernel(format!(
            "cannot attach XDP to {iface} in {name} mode"
        ))(e))
    }

    /// Detaches what this process attached without pinning (also done on
    /// drop). Pinned attachments stay: see [`Pins::remove_all`].
    pub fn detach(&mut self) -> Result<()> {
        if let Some(link) = self.egress.take() {
            egress_program(&mut self.ebpf)?
                .detach(link)
                .map_err(kernel("detaching tc egress"))?;
        }
        if let Some(link) = self.attachment.take() {
            self.program()?
                .detach(link)
                .map_err(kernel("detaching XDP"))?;
        }
        Ok(())
    }

    /// Whether the attachment outlives this process.
    pub fn is_pinned(&self) -> bool {
        self.xdp_pinned
    }

    /// The kernel's id of the loaded program.
    pub fn program_id(&mut self) -> Result<u32> {
        let info = self
            .program()?
            .info()
            .map_err(kernel("the program's info"))?;
        Ok(info.id())
    }
}

fn open_pinned(path: &Path) -> Result<FdLink> {
    let link = PinnedLink::from_pin(path).map_err(kernel(format!("opening {}", path.display())))?;
    Ok(link.into())
}

/// Swaps the new program into the link pinned at `path`, if there is one,
/// with `replace`. A pinned link that cannot take it (its interface was
/// deleted and made again, say) is unpinned, so that a new one is made.
/// True if the program was swapped in.
fn swap_into_pinned(path: Option<&Path>, replace: impl FnOnce(FdLink) -> Result<()>) -> bool {
    let Some(path) = path.filter(|p| p.exists()) else {
        return false;
    };
    let Err(error) = open_pinned(path).and_then(replace) else {
        return true;
    };
    warn!(
        "the pinned link {} cannot be reused ({error}); attaching anew",
        path.display()
    );
    if let Err(e) = std::fs::remove_file(path) {
        warn!("cannot remove {}: {e}", path.display());
    }
    false
}

fn egress_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(EGRESS_PROGRAM_NAME)
        .ok_or_else(|| LoadError::Missing(format!("program {EGRESS_PROGRAM_NAME}")))?
        .try_into()
        .map_err(kernel(EGRESS_PROGRAM_NAME))
}

pub(super) fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| LoadError::Missing(format!("program {name}")))?
        .try_into()
        .map_err(kernel(name.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stub_object_is_refused_with_the_way_out() {
        let err = ebpf_object_in(&[]).unwrap_err().to_string();
        assert!(err.contains("without its XDP program"), "{err}");
        assert!(err.contains("cargo xtask build"), "{err}");
        assert_eq!(ebpf_object_in(b"\x7fELF").unwrap(), b"\x7fELF");
    }
}
