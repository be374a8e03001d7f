//! Checks made before touching the kernel, each failing with one clear line.
use std::{ffi::CString, fs, path::Path};

/// Why the machine cannot run the guard, in one line each.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("interface name {0:?} contains a NUL byte")]
    NulInName(String),
    #[error("interface {0:?} does not exist (see `ip link`)")]
    NoInterface(String),
    #[error("cannot read this process's capabilities from /proc/self/status")]
    UnreadableCapabilities,
    #[error("needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (missing: {0})")]
    MissingCapabilities(String),
    #[error(
        "Linux {major}.{minor} is too old: sipguard needs 5.18 or later \
         (BPF ring buffers, atomics, bpf_xdp_load_bytes)"
    )]
    OldKernel { major: u32, minor: u32 },
    #[error(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux is missing; needs CONFIG_DEBUG_INFO_BTF=y)"
    )]
    NoBtf,
    #[error("no default route found: name the interface with --iface")]
    NoDefaultRoute,
}

type Result<T, E = PreflightError> = std::result::Result<T, E>;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub fn interface_index(name: &str) -> Result<u32> {
    let Ok(c_name) = CString::new(name) else {
        return Err(PreflightError::NulInName(name.to_string()));
    };
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(PreflightError::NoInterface(name.to_string()));
    }
    Ok(index)
}

/// The effective capability set of this process.
fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

pub fn privileges() -> Result<()> {
    let Some(caps) = effective_capabilities() else {
        return Err(PreflightError::UnreadableCapabilities);
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    // Without it the verifier refuses the program's packet-pointer arithmetic.
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !missing.is_empty() {
        return Err(PreflightError::MissingCapabilities(missing.join(", ")));
    }
    Ok(())
}

/// Kernel release as (major, minor), from uname.
fn kernel_version() -> Option<(u32, u32)> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn kernel() -> Result<()> {
    if let Some((major, minor)) = kernel_version() {
        if (major, minor) < (5, 18) {
            return Err(PreflightError::OldKernel { major, minor });
        }
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(PreflightError::NoBtf);
    }
    Ok(())
}

/// The interface of the IPv4 (else IPv6) default route.
pub fn default_route_interface() -> Result<String> {
    if let Ok(table) = fs::read_to_string("/proc/net/route") {
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 7 && fields[1] == "00000000" && fields[7] == "00000000" {
                return Ok(fields[0].to_string());
            }
        }
    }
    if let Ok(table) = fs::read_to_string("/proc/net/ipv6_route") {
        // dest dest_len src src_len next_hop metric refcnt use flags iface
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() > 9
                && fields[0].chars().all(|c| c == '0')
                && fields[1] == "00"
                && fields[9] != "lo"
            {
                return Ok(fields[9].to_string());
            }
        }
    }
    Err(PreflightError::NoDefaultRoute)
}
