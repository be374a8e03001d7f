//! The guard's pins in bpffs. With its XDP link and maps pinned, the kernel
//! keeps enforcing the policy and the bans while no controller runs (even
//! after kill -9), and a restarted or upgraded controller adopts them.
//!
//! Layout, under the pin root (default /sys/fs/bpf/sipguard):
//!   <iface>/xdp_link        the XDP attachment (a bpf_link)
//!   <iface>/tc_link         the tc egress attachment (TCX, Linux 6.6+)
//!   <iface>/maps-v<N>/<MAP> every map, N = MAP_LAYOUT_VERSION
//! Links live outside the versioned directory: a binary with a new map
//! layout still swaps its program into the same link, with no gap.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use guard_common::MAP_LAYOUT_VERSION;
use tracing::{info, warn};

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/sipguard";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const SYSTEM_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, Clone)]
pub struct Pins {
    iface_dir: PathBuf,
}

impl Pins {
    /// The pins of `iface` under `root`, mounting a bpffs first if `root`
    /// is not on one (at /sys/fs/bpf for the default root, else at `root`).
    pub fn prepare(root: &Path, iface: &str) -> Result<Pins> {
        let mount_point = if root.starts_with(SYSTEM_BPFFS) {
            Path::new(SYSTEM_BPFFS)
        } else {
            root
        };
        if !is_bpffs(mount_point) {
            mount_bpffs(mount_point)?;
        }
        let pins = Pins::at(root, iface);
        create_dir(&pins.maps_dir())?;
        Ok(pins)
    }

    /// The paths only; nothing is mounted or created.
    pub fn at(root: &Path, iface: &str) -> Pins {
        Pins {
            iface_dir: root.join(iface),
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
        std::fs::read_dir(&self.iface_dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p != &current && file_name(p).starts_with("maps-v"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes every pin of this interface: the kernel detaches the program
    /// and frees the maps once nothing else holds them. Returns whether any
    /// pin was there.
    pub fn remove_all(&self) -> Result<bool> {
        if !self.iface_dir.exists() {
            return Ok(false);
        }
        std::fs::remove_dir_all(&self.iface_dir)
            .with_context(|| format!("removing {}", self.iface_dir.display()))?;
        Ok(true)
    }
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
        .with_context(|| format!("cannot create the pin directory {}", dir.display()))
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
        .context("the pin directory's path has a NUL byte")?;
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
        bail!(
            "no bpffs at {} and mounting one failed: {} (mount it, or point --pin-dir at one)",
            mount_point.display(),
            std::io::Error::last_os_error()
        );
    }
    info!("mounted a bpffs at {}", mount_point.display());
    Ok(())
}
