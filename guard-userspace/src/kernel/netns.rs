//! The network namespace this process runs in: half of a guard's identity
//! (the other half is the interface's index). Two guards on `eth0` in two
//! containers are two guards, and their pins and state must keep apart.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// `SO_NETNS_COOKIE` (Linux 5.14; sipguard needs 5.18).
const SO_NETNS_COOKIE: libc::c_int = 71;
const RUN_NETNS: &str = "/run/netns";

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("cannot read this process's network namespace: {0}")]
    Read(#[source] std::io::Error),
}

/// A network namespace, as the kernel names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// Never reused while the machine runs (unlike the inode): the key of
    /// the pins, which do not outlive a boot either.
    pub cookie: u64,
    /// The nsfs inode, as `lsns` and `ls -l /proc/PID/ns/net` show it.
    pub inode: u64,
    /// Whether it is the namespace of PID 1 (the host's, or a container's own).
    pub is_init: bool,
    /// Its `ip netns` name, if it has one.
    pub name: Option<String>,
}

impl Netns {
    pub fn current() -> Result<Netns, NetnsError> {
        let own = std::fs::metadata("/proc/self/ns/net").map_err(NetnsError::Read)?;
        let same = |path: &Path| {
            std::fs::metadata(path).is_ok_and(|m| m.ino() == own.ino() && m.dev() == own.dev())
        };
        let name = named_netns(&same);
        // Without CAP_SYS_PTRACE (the systemd unit has only three
        // capabilities) PID 1's namespace cannot be looked at; an unnamed
        // namespace is then taken for the host's, as it is in that unit.
        let is_init = match std::fs::metadata("/proc/1/ns/net") {
            Ok(init) => init.ino() == own.ino() && init.dev() == own.dev(),
            Err(_) => name.is_none(),
        };
        Ok(Netns {
            cookie: cookie().map_err(NetnsError::Read)?,
            inode: own.ino(),
            is_init,
            name,
        })
    }

    /// The state directory's key, stable across reboots where it can be:
    /// PID 1's namespace keeps the layout of single-namespace installs, a
    /// named one (`ip netns add NAME`) goes by its name, others by inode.
    pub fn state_key(&self) -> Option<String> {
        if self.is_init {
            return None;
        }
        Some(match &self.name {
            Some(name) => format!("netns-{name}"),
            None => format!("netns-ino{}", self.inode),
        })
    }

    /// The pin directory's key: the cookie.
    pub fn pin_key(&self) -> String {
        format!("netns-{}", self.cookie)
    }

    /// A short description for log lines.
    pub fn describe(&self) -> String {
        let what = match (&self.name, self.is_init) {
            (Some(name), _) => format!("network namespace {name}"),
            (None, true) => "the initial network namespace".to_string(),
            (None, false) => "network namespace".to_string(),
        };
        format!("{what} (net:[{}], cookie {})", self.inode, self.cookie)
    }
}

fn cookie() -> std::io::Result<u64> {
    // Any socket tells the namespace it lives in.
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket and a buffer of the length given.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The `ip netns` name bound to the namespace `same` recognises.
fn named_netns(same: &dyn Fn(&Path) -> bool) -> Option<String> {
    let entries = std::fs::read_dir(RUN_NETNS).ok()?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p: &PathBuf| same(p))
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_namespace_with_a_cookie() {
        let netns = Netns::current().expect("a network namespace");
        assert_ne!(netns.cookie, 0);
        assert_eq!(Netns::current().unwrap(), netns, "stable within a process");
        assert!(netns.pin_key().starts_with("netns-"));
    }

    #[test]
    fn state_keys_follow_the_namespace() {
        let mut netns = Netns {
            cookie: 7,
            inode: 4026532000,
            is_init: true,
            name: None,
        };
        assert_eq!(netns.state_key(), None, "the single-namespace layout");
        netns.is_init = false;
        assert_eq!(netns.state_key().as_deref(), Some("netns-ino4026532000"));
        netns.name = Some("pbx".into());
        assert_eq!(netns.state_key().as_deref(), Some("netns-pbx"));
    }
}
