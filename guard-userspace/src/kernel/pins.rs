//! The guard's pins in bpffs. With its XDP link and maps pinned, the kernel
//! keeps enforcing the policy and the bans while no controller runs (even
//! after kill -9), and a restarted or upgraded controller adopts them.
//!
//! Layout, under the pin root (default /sys/fs/bpf/sipguard), one directory
//! per guard, that is per (network namespace, interface):
//!   <iface>/netns-<cookie>/xdp_link        the XDP attachment (a bpf_link)
//!   <iface>/netns-<cookie>/tc_link         the tc egress attachment (TCX)
//!   <iface>/netns-<cookie>/maps-v<N>/<MAP> every map, N = MAP_LAYOUT_VERSION
//! The cookie is the network namespace's, so two containers with an `eth0`
//! each, sharing the host's bpffs, never share a guard. Links live outside
//! the versioned directory: a binary with a new map layout still swaps its
//! program into the same link, with no gap.
//!
//! Earlier versions pinned straight into `<iface>/`. Such pins are moved into
//! this namespace's directory (renames: the kernel objects stay pinned, no
//! gap) only once the kernel confirms that their link runs on this
//! namespace's interface; otherwise they are another namespace's and are
//! left alone.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, PinnedLink};
use guard_common::MAP_LAYOUT_VERSION;
use tracing::{info, warn};

use crate::kernel::{
    netlink,
    netns::{Netns, NetnsError},
};

/// Why the pins cannot be made, or removed.
#[derive(Debug, thiserror::Error)]
pub enum PinsError {
    #[error("cannot create the pin directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the pin directory's path has a NUL byte")]
    NulInPath,
    #[error(
        "no bpffs at {} and mounting one failed: {source} (mount it, or point --pin-dir at one)",
        path.display()
    )]
    Mount {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} holds a guard that does not run on {iface} in this {netns}: it belongs to \
         another namespace (or its interface is gone); not touching it",
        path.display()
    )]
    NotOurs {
        path: PathBuf,
        iface: String,
        netns: String,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

type Result<T, E = PinsError> = std::result::Result<T, E>;

fn remove_tree(path: &Path) -> Result<()> {
    std::fs::remove_dir_all(path).map_err(|source| PinsError::Remove {
        path: path.to_path_buf(),
        source,
    })
}

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/sipguard";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SYSTEM_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, Clone)]
pub struct Pins {
    iface_dir: PathBuf,
}

impl Pins {
    /// The pins of `iface` (index `ifindex`) in `netns` under `root`,
    /// mounting a bpffs first if `root` is not on one (at /sys/fs/bpf for
    /// the default root, else at `root`), and taking over this guard's pins
    /// from the single-namespace layout of earlier versions.
    pub fn prepare(root: &Path, iface: &str, ifindex: u32, netns: &Netns) -> Result<Pins> {
        let mount_point = if root.starts_with(SYSTEM_BPFFS) {
            Path::new(SYSTEM_BPFFS)
        } else {
            root
        };
        if !is_bpffs(mount_point) {
            mount_bpffs(mount_point)?;
        }
        let pins = Pins::at(root, iface, netns);
        create_dir(&pins.maps_dir())?;
        migrate_legacy(&root.join(iface), &pins, ifindex);
        Ok(pins)
    }

    /// The paths only; nothing is mounted or created.
    pub fn at(root: &Path, iface: &str, netns: &Netns) -> Pins {
        Pins {
            iface_dir: root.join(iface).join(netns.pin_key()),
        }
    }

    pub fn iface_dir(&self) -> PathBuf {
        self.iface_dir.clone()
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.iface_dir.join(format!("maps-v{MAP_LAYOUT_VERSION}"))
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn xdp_link(&self) -> PathBuf {
        self.iface_dir.join("xdp_link")
    }

    pub fn tc_link(&self) -> PathBuf {
        self.iface_dir.join("tc_link")
    }

    /// Whether a guard's maps are pinned (under this layout version).
    pub fn has_maps(&self) -> bool {
        self.map(guard_common::map_names::BANS).exists()
    }

    /// Map directories of other layout versions (left by another binary).
    pub fn other_versions(&self) -> Vec<PathBuf> {
        let current = self.maps_dir();
        pins_dirs(&self.iface_dir, "maps-v")
            .into_iter()
            .filter(|p| p != &current)
            .collect()
    }

    /// Removes every pin of this guard: the kernel detaches the program
    /// and frees the maps once nothing else holds them. Returns whether any
    /// pin was there. Other namespaces' guards on an interface of the same
    /// name keep theirs.
    pub fn remove_all(&self) -> Result<bool> {
        if !self.iface_dir.exists() {
            return Ok(false);
        }
        remove_tree(&self.iface_dir)?;
        // The interface's directory goes too once no namespace uses it.
        if let Some(parent) = self.iface_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(true)
    }

    /// Says why the pins would not outlive this process, if they would not:
    /// their bpffs is mounted nowhere PID 1 (the host, or the container's
    /// init) can see, so it goes away with this mount namespace.
    pub fn private_mount_warning(&self) -> Option<String> {
        let dev = std::fs::metadata(&self.iface_dir).ok()?.dev();
        // Unreadable (no right to look at PID 1): we cannot tell.
        let init_mounts = std::fs::read_to_string("/proc/1/mountinfo").ok()?;
        if mounted_in(&init_mounts, dev) {
            return None;
        }
        Some(format!(
            "the bpffs holding {} is mounted only in this daemon's mount namespace \
             (`ip netns exec`, or a container without the host's /sys/fs/bpf): the guard \
             will not outlive this daemon. Bind-mount the host's /sys/fs/bpf into it (e.g. \
             `-v /sys/fs/bpf:/sys/fs/bpf`), or give `--pin-dir` on a bpffs the host sees, \
             to keep it enforcing across restarts",
            self.iface_dir.display()
        ))
    }
}

/// Whether a mount table (`/proc/PID/mountinfo`) holds the filesystem of
/// device `dev`: then that bpffs lives as long as that namespace does.
fn mounted_in(mountinfo: &str, dev: u64) -> bool {
    let wanted = format!("{}:{}", libc::major(dev), libc::minor(dev));
    mountinfo
        .lines()
        .any(|line| line.split_whitespace().nth(2) == Some(wanted.as_str()))
}

/// Pins of the earlier single-namespace layout, in `legacy`.
const LEGACY_ENTRIES: [&str; 2] = ["xdp_link", "tc_link"];

/// Moves an earlier version's pins of this guard into its own directory.
/// Only pins whose XDP link the kernel shows running on `ifindex` of this
/// namespace are ours; any others belong to another namespace's guard (or
/// a dead one) and stay where they are.
fn migrate_legacy(legacy: &Path, pins: &Pins, ifindex: u32) {
    let link = legacy.join("xdp_link");
    if !link.exists() {
        return;
    }
    if pins.xdp_link().exists() {
        return info!(
            "the older pins at {} are not this guard's: it already has {}",
            legacy.display(),
            pins.iface_dir.display()
        );
    }
    if !runs_on(&link, ifindex) {
        return warn!(
            "the pins at {} belong to a guard on another network namespace's interface \
             of this name (or to one whose interface is gone): leaving them alone, this \
             guard uses {}",
            legacy.display(),
            pins.iface_dir.display()
        );
    }
    let mut moved = Vec::new();
    let entries = std::fs::read_dir(legacy).map(|dir| {
        dir.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| LEGACY_ENTRIES.contains(&n.as_str()) || n.starts_with("maps-v"))
            .collect::<Vec<_>>()
    });
    for name in entries.unwrap_or_default() {
        let to = pins.iface_dir.join(&name);
        // Our (empty) map directory is made already; the old one replaces it.
        if name.starts_with("maps-v") && to.exists() {
            let _ = std::fs::remove_dir(&to);
        }
        match std::fs::rename(legacy.join(&name), &to) {
            Ok(()) => moved.push(name),
            Err(e) => warn!(
                "cannot move {} to {}: {e}",
                legacy.join(&name).display(),
                to.display()
            ),
        }
    }
    info!(
        "took over this guard's pins from {} into {} ({}): one directory per network namespace",
        legacy.display(),
        pins.iface_dir.display(),
        moved.join(", ")
    );
}

/// Whether the XDP link pinned at `link` runs on interface `ifindex` of this
/// namespace: the program the interface runs is the link's.
fn runs_on(link: &Path, ifindex: u32) -> bool {
    let program = PinnedLink::from_pin(link)
        .map(FdLink::from)
        .ok()
        .and_then(|link| link.info().ok())
        .map(|info| info.program_id());
    match (program, netlink::xdp_program(ifindex)) {
        (Some(program), Ok(Some(running))) => program == running,
        (_, Err(e)) => {
            warn!("cannot ask the kernel which program {ifindex} runs: {e}");
            false
        }
        _ => false,
    }
}

/// What `sipguard unload` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Unloaded {
    /// This guard's pins were removed, from this directory.
    Removed(PathBuf),
    /// None were pinned.
    Nothing,
}

/// Removes the pins of the guard on `iface` in this network namespace, in
/// the current layout or (when the kernel confirms they are this
/// namespace's) the earlier one. Another namespace's guard is never touched.
pub fn unload(root: &Path, iface: &str) -> Result<Unloaded> {
    let netns = Netns::current()?;
    let pins = Pins::at(root, iface, &netns);
    if pins.remove_all()? {
        return Ok(Unloaded::Removed(pins.iface_dir()));
    }
    let legacy = root.join(iface);
    let link = legacy.join("xdp_link");
    if !link.exists() {
        return Ok(Unloaded::Nothing);
    }
    let ifindex = crate::kernel::preflight::interface_index(iface).ok();
    if !ifindex.is_some_and(|index| runs_on(&link, index)) {
        return Err(PinsError::NotOurs {
            path: legacy,
            iface: iface.to_string(),
            netns: netns.describe(),
        });
    }
    for name in LEGACY_ENTRIES {
        let _ = std::fs::remove_file(legacy.join(name));
    }
    for dir in pins_dirs(&legacy, "maps-v") {
        remove_tree(&dir)?;
    }
    let _ = std::fs::remove_dir(&legacy);
    Ok(Unloaded::Removed(legacy))
}

fn pins_dirs(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| file_name(p).starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes an older layout's maps once the program no longer uses them.
pub fn remove_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => info!("removed the maps of an older layout at {}", dir.display()),
        Err(e) => warn!("cannot remove {}: {e}", dir.display()),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn create_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PinsError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills a zeroed struct from a valid C string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

fn mount_bpffs(mount_point: &Path) -> Result<()> {
    create_dir(mount_point)?;
    let target = std::ffi::CString::new(mount_point.as_os_str().as_encoded_bytes())
        .map_err(|_| PinsError::NulInPath)?;
    let fstype = c"bpf";
    let options = c"mode=0700";
    // SAFETY: valid C strings; mount(2) copies them.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(PinsError::Mount {
            path: mount_point.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    info!("mounted a bpffs at {}", mount_point.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filesystem_is_found_in_a_mount_table_by_its_device() {
        let table = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                     71 70 0:41 / /sys/fs/bpf rw,relatime - bpf bpf rw\n";
        assert!(mounted_in(table, libc::makedev(0, 41)));
        assert!(!mounted_in(table, libc::makedev(0, 42)));
        // This process's /proc is in its own table.
        let own = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let proc_dev = std::fs::metadata("/proc").unwrap().dev();
        assert!(mounted_in(&own, proc_dev));
    }
}
