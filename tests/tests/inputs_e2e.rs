//! Hostile or broken file inputs: a config that is a FIFO, a device or a
//! huge file is refused at once with a clear line (and nothing else
//! stalls), and capacities the kernel cannot give are refused with the
//! file and line, before anything is loaded.
use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use sipguard_tests::{
    daemon::{sipguard_bin, start_guard, TempFile, TempSocket},
    netns::Link,
    traffic::{cli, delivered, CLIENT_ADDRS, PBX_ADDRS},
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
        (
            huge.to_str().unwrap(),
            "67108864 bytes, more than the 16777216",
        ),
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
    let socket = TempSocket::new("fifo");
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

/// A saved ban as `bans.json` holds it, created `age` seconds ago.
fn saved_ban(source: &str, age: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        r#"{{"key":"::ffff:{source}","reason":"manual","rule":null,"detail":"","created_unix":{},"expires_unix":null,"dropped":0}}"#,
        now - age
    )
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn saved_bans_beyond_the_capacity_restore_the_newest_and_keep_the_rest() {
    let link = Link::new("over", &CLIENT_ADDRS, &PBX_ADDRS).unwrap();
    let config = TempFile::new("over.toml", "[guard]\nmax_bans = 2\n");
    let state = sipguard_tests::daemon::TempDir::new("over-state");
    let dir = state
        .0
        .join(&link.right_if)
        .join(format!("netns-{}", link.right.name));
    std::fs::create_dir_all(&dir).unwrap();
    let bans = [
        saved_ban("10.77.0.2", 300),
        saved_ban("10.77.0.3", 10),
        saved_ban("10.77.0.4", 20),
    ];
    std::fs::write(
        dir.join("bans.json"),
        format!(r#"{{"version":1,"bans":[{}]}}"#, bans.join(",")),
    )
    .unwrap();
    let socket = TempSocket::new("over");
    let (guard, _) = start_guard(
        &link.right,
        &link.right_if,
        &config,
        &["--control-socket", &socket, "--state-dir", state.path()],
    )
    .expect("the start does not fail on it");
    assert!(
        guard.log().contains("3 saved bans do not fit"),
        "{}",
        guard.log()
    );
    let out = cli(&socket, &["bans", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut sources: Vec<&str> = rows.iter().filter_map(|r| r["source"].as_str()).collect();
    sources.sort();
    assert_eq!(sources, ["10.77.0.3", "10.77.0.4"], "the newest win");
    let left_out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("bans.left-out-")
        })
        .collect();
    assert_eq!(left_out.len(), 1);
    let kept = std::fs::read_to_string(left_out[0].path()).unwrap();
    assert!(
        kept.contains("10.77.0.2") && !kept.contains("10.77.0.3"),
        "{kept}"
    );
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_read_only_state_directory_allows_the_start_and_failed_saves_are_counted() {
    let link = Link::new("rost", &CLIENT_ADDRS, &PBX_ADDRS).unwrap();
    let config = TempFile::new("rost.toml", "");
    let state = sipguard_tests::daemon::TempDir::new("rost-state");
    let dir = state
        .0
        .join(&link.right_if)
        .join(format!("netns-{}", link.right.name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bans.json"), "{ not json").unwrap();
    // A read-only bind mount over the directory (undone on drop).
    struct ReadOnly(std::path::PathBuf);
    impl Drop for ReadOnly {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let ro = ReadOnly(state.0.clone());
    sipguard_tests::netns::run(Command::new("mount").arg("--bind").arg(&ro.0).arg(&ro.0)).unwrap();
    sipguard_tests::netns::run(
        Command::new("mount")
            .args(["-o", "remount,ro,bind"])
            .arg(&ro.0),
    )
    .unwrap();

    let socket = TempSocket::new("rost");
    let (guard, _) = start_guard(
        &link.right,
        &link.right_if,
        &config,
        &["--control-socket", &socket, "--state-dir", state.path()],
    )
    .expect("a read-only state directory does not stop the start");
    let log = guard.log();
    assert!(log.contains("IS NOT WRITABLE"), "{log}");
    assert!(log.contains("nor set aside"), "{log}");
    let out = cli(&socket, &["ban", "add", "10.77.0.4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = cli(&socket, &["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if status["state_save_failures"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed save counted: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = cli(&socket, &["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("saves to the state directory failed"),
        "{out:?}"
    );
    // A list change is made, and its answer says that it was not saved.
    let out = cli(&socket, &["deny", "add", "192.0.2.0/24"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("added 192.0.2.0/24 to the deny list"),
        "{text}"
    );
    assert!(text.contains("WARNING: in force, but not saved"), "{text}");
    drop(guard);
    drop(ro);
}

/// An IPv6 ban key with host bits in `bans.json` (a hand-edited file, or
/// one of an earlier version) is restored masked to the configured
/// `ipv6_ban_prefix`, listed so, and enforced: the XDP program looks
/// sources up by that prefix.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn restored_ipv6_ban_keys_with_host_bits_are_masked_and_enforced() {
    let link = Link::new("v6ban", &CLIENT_ADDRS, &PBX_ADDRS).unwrap();
    let config = TempFile::new("v6ban.toml", "[guard]\nipv6_ban_prefix = 56\n");
    let state = sipguard_tests::daemon::TempDir::new("v6ban-state");
    let dir = state
        .0
        .join(&link.right_if)
        .join(format!("netns-{}", link.right.name));
    std::fs::create_dir_all(&dir).unwrap();
    // fd77:0:0:ab::/64 is not the client's /64 (fd77::5); its /56 is.
    let ban = r#"{"key":"fd77:0:0:ab:1:2:3:4","reason":"manual","rule":null,"detail":"",
        "created_unix":1,"expires_unix":null,"dropped":0}"#;
    std::fs::write(
        dir.join("bans.json"),
        format!(r#"{{"version":1,"bans":[{ban}]}}"#),
    )
    .unwrap();
    let socket = TempSocket::new("v6ban");
    let (mut guard, _) = start_guard(
        &link.right,
        &link.right_if,
        &config,
        &["--control-socket", &socket, "--state-dir", state.path()],
    )
    .expect("sipguard attached");
    let out = cli(&socket, &["bans", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let sources: Vec<&str> = rows.iter().filter_map(|r| r["source"].as_str()).collect();
    assert_eq!(sources, ["fd77::/56"], "{rows:?}");
    assert_eq!(delivered(&link, "fd77::5", 5), 0, "the restored ban holds");
    assert_eq!(delivered(&link, "10.77.0.3", 5), 5);
    // A clean stop removes the control socket.
    assert!(guard.stop().unwrap().success(), "{}", guard.log());
}
