//! Network namespaces made by the tests themselves, deleted on drop (also when
//! a test panics), and a way to run code inside one from a thread (`setns`
//! switches only the calling thread).
use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use anyhow::{bail, Context, Result};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    pub name: String,
}

/// Runs a command, failing with its stderr on a non-zero exit.
pub fn run(command: &mut Command) -> Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Runs `ip` with these arguments, failing on a non-zero exit.
pub fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

impl NetNs {
    /// A new namespace named `sg-{tag}-{pid}-{n}`, with loopback up.
    pub fn new(tag: &str) -> Result<NetNs> {
        let name = format!(
            "sg-{tag}-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME args...`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Starts a program in the namespace, in a process group of its own so
    /// that [`crate::daemon::Daemon`] can stop it with all its children.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<Child> {
        use std::os::unix::process::CommandExt;
        self.command(program)
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {program} in {}", self.name))
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `f` on a thread that lives in this namespace.
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<Result<T>> {
        let path = self.path();
        thread::spawn(move || {
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: a valid namespace fd; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            Ok(f())
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Two namespaces joined by a veth pair, each end up and addressed.
pub struct Link {
    pub left: NetNs,
    pub right: NetNs,
    pub left_if: String,
    pub right_if: String,
}

impl Link {
    /// `left_addrs` / `right_addrs` are CIDRs such as "10.77.0.1/24".
    pub fn new(tag: &str, left_addrs: &[&str], right_addrs: &[&str]) -> Result<Link> {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        // Interface names are at most 15 characters.
        let left_if = format!("sgl{}x{n}", std::process::id() % 100_000);
        let right_if = format!("sgr{}x{n}", std::process::id() % 100_000);
        Link::named(tag, &left_if, &right_if, left_addrs, right_addrs)
    }

    /// Like [`Link::new`] with the interfaces' names given (each lives in a
    /// namespace of its own, so two links may use the same names).
    pub fn named(
        tag: &str,
        left_if: &str,
        right_if: &str,
        left_addrs: &[&str],
        right_addrs: &[&str],
    ) -> Result<Link> {
        let link = Link {
            left: NetNs::new(&format!("{tag}l"))?,
            right: NetNs::new(&format!("{tag}r"))?,
            left_if: left_if.to_string(),
            right_if: right_if.to_string(),
        };
        link.plumb(left_addrs, right_addrs)?;
        Ok(link)
    }

    /// Makes the veth pair (again: after a delete, the same names),
    /// addressed and up.
    pub fn plumb(&self, left_addrs: &[&str], right_addrs: &[&str]) -> Result<()> {
        let (left, right) = (&self.left, &self.right);
        let (left_if, right_if) = (&self.left_if, &self.right_if);
        left.ip(&[
            "link",
            "add",
            left_if,
            "type",
            "veth",
            "peer",
            "name",
            right_if,
            "netns",
            &right.name,
        ])?;
        for (ns, iface, addrs) in [(left, left_if, left_addrs), (right, right_if, right_addrs)] {
            for addr in addrs {
                let mut args = vec!["addr", "add", addr, "dev", iface];
                if addr.contains(':') {
                    // No duplicate address detection: the address is usable at once.
                    args.push("nodad");
                }
                ns.ip(&args)?;
            }
            ns.ip(&["link", "set", iface, "up"])?;
        }
        Ok(())
    }
}
