//! A `sipguard` process under test: its log collected as it runs, and the
//! process stopped on drop, whatever happened in the test.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::netns::NetNs;

/// The `sipguard` binary: `$SIPGUARD_BIN` (set by `cargo xtask test`), else
/// the one cargo built next to this test.
pub fn sipguard_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SIPGUARD_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/sipguard
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("sipguard"))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} not found: run the tests through `cargo xtask test`",
        path.display()
    );
    path
}

/// A path under the temp directory that no other test (or run) uses.
fn unique_temp_path(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("sipguard-{}-{n}-{name}", std::process::id()))
}

fn utf8(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// A file removed on drop (test configs).
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, contents: &str) -> TempFile {
        let path = unique_temp_path(name);
        std::fs::write(&path, contents).expect("writing a temporary file");
        TempFile(path)
    }

    pub fn path(&self) -> &str {
        utf8(&self.0)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A directory removed on drop (state directories).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = unique_temp_path(name);
        std::fs::create_dir_all(&path).expect("creating a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &str {
        utf8(&self.0)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A control socket's path, removed on drop: a daemon stopped by SIGKILL
/// (as `Daemon`'s drop does, and a failing test's unwinding) cannot remove
/// its own socket, and old tests left hundreds in /tmp. It reads as the
/// path's `&str`, as the `--control-socket` arguments take it.
#[derive(Debug)]
pub struct TempSocket(PathBuf);

impl TempSocket {
    /// `tag` names the file.
    pub fn new(tag: &str) -> TempSocket {
        TempSocket(unique_temp_path(&format!("{tag}.sock")))
    }

    pub fn path(&self) -> &str {
        utf8(&self.0)
    }
}

impl std::ops::Deref for TempSocket {
    type Target = str;

    fn deref(&self) -> &str {
        self.path()
    }
}

impl AsRef<Path> for TempSocket {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempSocket {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A bpffs of the test's own, for pins that must outlive one daemon
/// (`ip netns exec` gives each daemon a private /sys, whose pins vanish
/// with it). Unmounting on drop frees whatever is still pinned.
pub struct PinRoot(pub PathBuf);

impl PinRoot {
    pub fn new() -> Result<PinRoot> {
        let path = unique_temp_path("bpffs");
        std::fs::create_dir(&path).context("creating the bpffs mount point")?;
        crate::netns::run(
            std::process::Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(&path),
        )?;
        Ok(PinRoot(path))
    }

    pub fn path(&self) -> &str {
        utf8(&self.0)
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `sipguard run --iface IFACE --xdp-mode native --config CONFIG EXTRA...`
/// inside `ns`, waiting until it has attached. Without `--state-dir` in
/// `extra`, the daemon gets a fresh one of its own (removed with it);
/// without `--pin-dir`, it runs with `--no-pin`.
pub fn start_guard(
    ns: &NetNs,
    iface: &str,
    config: &TempFile,
    extra: &[&str],
) -> Result<(Daemon, u32)> {
    let bin = sipguard_bin();
    let own_state = (!extra.contains(&"--state-dir")).then(|| TempDir::new("state"));
    let mut args = vec![
        "run",
        "--iface",
        iface,
        "--xdp-mode",
        "native",
        "--config",
        config.path(),
    ];
    args.extend_from_slice(extra);
    if let Some(dir) = &own_state {
        args.extend(["--state-dir", dir.path()]);
    }
    // Pinning is tested where a test brings its own bpffs (`PinRoot`).
    if !extra.contains(&"--pin-dir") {
        args.push("--no-pin");
    }
    let child = ns.spawn(bin.to_str().context("UTF-8 path")?, &args)?;
    let mut daemon = Daemon::watch(child);
    daemon.state_dir = own_state;
    let program_id = daemon.program_id()?;
    Ok((daemon, program_id))
}

/// Where one guard lives across its restarts: its config file, control
/// socket, state directory and, for tests of pinning, a bpffs of its own.
/// Every start passes them all, so a daemon started after a kill, a stop
/// or an upgrade finds what the last one left.
pub struct GuardHome {
    pub config: TempFile,
    pub socket: TempSocket,
    pub state: TempDir,
    pub pins: Option<PinRoot>,
}

impl GuardHome {
    /// Unpinned (`--no-pin`): the guard stops with its daemon. `tag` names
    /// the files.
    pub fn new(tag: &str, config: &str) -> GuardHome {
        GuardHome {
            config: TempFile::new(&format!("{tag}.toml"), config),
            socket: TempSocket::new(tag),
            state: TempDir::new(&format!("{tag}-state")),
            pins: None,
        }
    }

    /// Pinned in a bpffs of its own: the guard outlives its daemon.
    pub fn pinned(tag: &str, config: &str) -> Result<GuardHome> {
        Ok(GuardHome {
            pins: Some(PinRoot::new()?),
            ..GuardHome::new(tag, config)
        })
    }

    /// The pin root; panics for an unpinned home (a test's own mistake).
    pub fn pin_root(&self) -> &PinRoot {
        self.pins.as_ref().expect("a pinned GuardHome")
    }

    /// `--control-socket`, `--state-dir` and, when pinned, `--pin-dir`.
    pub fn args(&self) -> Vec<&str> {
        let mut args = vec![
            "--control-socket",
            self.socket.path(),
            "--state-dir",
            self.state.path(),
        ];
        if let Some(pins) = &self.pins {
            args.extend(["--pin-dir", pins.path()]);
        }
        args
    }

    /// Starts a daemon here, on `iface` in `ns`, and waits until it has
    /// attached: (the daemon, its program id).
    pub fn start(&self, ns: &NetNs, iface: &str) -> Result<(Daemon, u32)> {
        start_guard(ns, iface, &self.config, &self.args())
    }
}

pub struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    state_dir: Option<TempDir>,
}

impl Daemon {
    /// Takes a spawned child with piped stderr (the log).
    pub fn watch(mut child: Child) -> Daemon {
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        Daemon {
            child: Some(child),
            log,
            state_dir: None,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle`; returns that line.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "sipguard exited ({status}) before logging {needle:?}:\n{}",
                        self.log()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no {needle:?} in the log within {timeout:?}:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The program id from the "attached ... (program id N)" line.
    pub fn program_id(&mut self) -> Result<u32> {
        let line = self.wait_for("program id", Duration::from_secs(30))?;
        let id = line
            .split("program id ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .context("no program id in the attach line")?;
        Ok(id.trim().parse()?)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the daemon.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let child = self.child.as_ref().context("already stopped")?;
        // SAFETY: signalling our own child.
        if unsafe { libc::kill(child.id() as i32, signal) } != 0 {
            bail!("kill: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The exit status, once the process has ended by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILL, as a crash would: nothing of the daemon's runs.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("already stopped")?;
        kill_group(&mut child);
        thread::sleep(Duration::from_millis(100));
        Ok(())
    }

    /// SIGTERM, then the exit status (SIGKILL after 10 s).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                // Let the reader thread catch the last lines.
                thread::sleep(Duration::from_millis(100));
                kill_group(&mut child);
                return Ok(status);
            }
            if Instant::now() > deadline {
                kill_group(&mut child);
                bail!("sipguard ignored SIGTERM for 10 s:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// SIGKILL to the child's whole process group (it leads one, see
/// `NetNs::spawn`): forking servers such as Kamailio leave no workers behind.
fn kill_group(child: &mut Child) {
    // SAFETY: signalling a process group we created.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bound socket left behind (as by a daemon killed with SIGKILL) goes
    /// with its `TempSocket`, also when the test holding it fails.
    #[test]
    fn a_control_socket_is_removed_on_drop_even_when_the_test_fails() {
        let socket = TempSocket::new("drop");
        let path = PathBuf::from(socket.path());
        let seen = path.clone();
        let failed = std::panic::catch_unwind(move || {
            let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
            assert!(seen.exists());
            panic!("a failing test");
        });
        assert!(failed.is_err());
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
