//! Hostile or broken file inputs: a config that is a FIFO, a device or a
//! huge file is refused at once with a clear line (and nothing else
//! stalls), and capacities the kernel cannot give are refused with the
//! file and line, before anything is loaded.
use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use sipguard_tests::{
    daemon::{sipguard_bin, start_guard, TempFile},
    netns::Link,
    traffic::{cli, CLIENT_ADDRS, PBX_ADDRS},
};

fn sipguard(args: &[&str]) -> Output {
    Command::new(sipguard_bin())
        .args(args)
        .output()
        .expect("running sipguard")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("sipguard-inputs-{}-{name}", std::process::id()))
}

fn mkfifo(path: &std::path::Path) {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
}

#[test]
fn check_config_refuses_fifos_devices_and_huge_files_at_once() {
    let fifo = temp_path("fifo.toml");
    let _ = std::fs::remove_file(&fifo);
    mkfifo(&fifo);
    let huge = temp_path("huge.toml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    for (path, why) in [
        (fifo.to_str().unwrap(), "not a regular file (a FIFO)"),
        ("/dev/zero", "not a regular file (a device)"),
        (huge.to_str().unwrap(), "more than the 16777216"),
    ] {
        let started = Instant::now();
        let out = sipguard(&["check-config", path]);
        assert!(started.elapsed() < Duration::from_secs(5), "{path} stalled");
        assert_eq!(out.status.code(), Some(2), "{path}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(&format!("{path}: {why}")), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let _ = std::fs::remove_file(fifo);
    let _ = std::fs::remove_file(huge);
}

#[test]
fn check_config_refuses_capacities_the_kernel_cannot_give_and_reports_memory() {
    let config = TempFile::new("capacity.toml", "[guard]\nmax_bans = 4294967295\n");
    let out = sipguard(&["check-config", config.path()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:2: key `guard.max_bans`", config.path())),
        "{err}"
    );
    let config = TempFile::new(
        "sources.toml",
        "[guard]\nmax_tracked_sources = 1073741824\n",
    );
    let out = sipguard(&["check-config", config.path()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(":2: key `guard.max_tracked_sources`: 1073741824 sources x 2"),
        "{}",
        stderr(&out)
    );

    let fine = TempFile::new("fine.toml", "[guard]\nmax_bans = 1000\n");
    let out = sipguard(&["check-config", fine.path()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("the maps take up to"), "{text}");
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn apply_of_a_fifo_is_refused_and_nothing_stalls() {
    let link = Link::new("fifo", &CLIENT_ADDRS, &PBX_ADDRS).unwrap();
    let config = TempFile::new("fifo-start.toml", "");
    let socket = std::env::temp_dir()
        .join(format!("sipguard-fifo-{}.sock", std::process::id()))
        .display()
        .to_string();
    let (_guard, _) = start_guard(
        &link.right,
        &link.right_if,
        &config,
        &["--control-socket", &socket],
    )
    .expect("sipguard attached");
    let fifo = temp_path("apply.fifo");
    let _ = std::fs::remove_file(&fifo);
    mkfifo(&fifo);

    let started = Instant::now();
    let out = cli(&socket, &["apply", fifo.to_str().unwrap()]);
    assert!(started.elapsed() < Duration::from_secs(5), "apply stalled");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a regular file (a FIFO)"),
        "{}",
        stderr(&out)
    );
    let out = cli(&socket, &["apply", "/dev/zero"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // The daemon goes on answering.
    let started = Instant::now();
    let out = cli(&socket, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(1));
    let _ = std::fs::remove_file(fifo);
}
