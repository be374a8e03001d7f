//! The `sipguard` command line: clear one-line errors and meaningful exit
//! codes for bad configs, bad arguments, a missing interface and missing
//! privileges. None of these touches the kernel.
use std::process::{Command, Output};

use sipguard_tests::{
    daemon::{sipguard_bin, TempSocket},
    is_root,
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

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("sipguard-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_accepts_the_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../sipguard.example.toml");
    let out = sipguard(&["check-config", example]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn check_config_names_file_line_key_and_reason() {
    let path = write_temp(
        "bad.toml",
        "[guard]\nmonitor = false\ndefault_policy = \"sometimes\"\n",
    );
    let out = sipguard(&["check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let expected = format!("{}:3: key `guard.default_policy`:", path.display());
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("sometimes"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn run_with_a_bad_config_stops_before_the_kernel() {
    let path = write_temp("badrule.toml", "[[rate_rules]]\nname = \"x\"\nservice = \"fax\"\npackets = 3\nwindow = \"2s\"\nban = \"1h\"\n");
    // Even with a real interface, nothing is loaded: the config fails first.
    let out = sipguard(&["run", "--iface", "lo", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(":3: key `rate_rules[0].service`: unknown service \"fax\""),
        "{err}"
    );
    assert!(!err.contains("attached"), "{err}");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn run_with_a_missing_config_file() {
    let out = sipguard(&[
        "run",
        "--iface",
        "lo",
        "--config",
        "/nonexistent/sipguard.toml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/sipguard.toml: cannot read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_with_a_missing_interface() {
    let out = sipguard(&["run", "--iface", "nosuchif0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(
        err,
        "sipguard: interface \"nosuchif0\" does not exist (see `ip link`)"
    );
}

#[test]
fn run_with_a_bad_argument_is_a_usage_error() {
    let out = sipguard(&["run", "--iface", "lo", "--xdp-mode", "turbo"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("turbo") && err.contains("native"), "{err}");
}

#[test]
fn run_without_privileges() {
    let out = if is_root() {
        // Drop to nobody, with no capabilities at all.
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(sipguard_bin())
            .args(["run", "--iface", "lo"])
            .output()
            .expect("setpriv (util-linux)")
    } else {
        sipguard(&["run", "--iface", "lo"])
    };
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(
        err,
        "sipguard: needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (missing: CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)"
    );
}

#[test]
fn completions_and_man_page_come_from_the_cli_definitions() {
    let out = sipguard(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("_sipguard()") && script.contains("check-config"),
        "{script}"
    );
    for shell in ["zsh", "fish"] {
        assert!(sipguard(&["completions", shell]).status.success());
    }
    let out = sipguard(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let out = sipguard(&["manpage"]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH sipguard 8"), "{page}");
    assert!(page.contains("\\-\\-log\\-format"), "{page}");
}

#[test]
fn runtime_commands_need_a_daemon_and_valid_addresses() {
    for command in ["bans", "peers"] {
        let out = sipguard(&["--control-socket", "/nonexistent/sipguard.sock", command]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        assert!(
            stderr(&out).contains("cannot reach the daemon at /nonexistent/sipguard.sock"),
            "{}",
            stderr(&out)
        );
    }
    let out = sipguard(&["ban", "add", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2));
    let out = sipguard(&["ban", "add", "192.0.2.1", "--for", "a while"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn list_changes_need_valid_networks() {
    let out = sipguard(&["allow", "add", "10.0.0.0/33"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("neither a CIDR nor an IP address"),
        "{}",
        stderr(&out)
    );
    let out = sipguard(&["deny", "remove", "example.com"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn policy_commands_report_missing_files_daemons_and_pins() {
    let socket = "/nonexistent/sipguard.sock";
    // apply: the file is checked before the daemon is asked.
    let out = sipguard(&["--control-socket", socket, "apply", "/nonexistent.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent.toml"),
        "{}",
        stderr(&out)
    );
    let out = sipguard(&[
        "--control-socket",
        socket,
        "apply",
        "x.toml",
        "--confirm",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    for command in [&["reload"][..], &["confirm"][..]] {
        let mut args = vec!["--control-socket", socket];
        args.extend_from_slice(command);
        let out = sipguard(&args);
        assert_eq!(out.status.code(), Some(1), "{command:?}");
        assert!(
            stderr(&out).contains("cannot reach the daemon"),
            "{}",
            stderr(&out)
        );
    }
    let pins = std::env::temp_dir().join(format!("sipguard-cli-pins-{}", std::process::id()));
    let out = sipguard(&[
        "--control-socket",
        socket,
        "unload",
        "--iface",
        "eth9",
        "--pin-dir",
        pins.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("nothing is pinned for eth9"),
        "{}",
        stderr(&out)
    );
}

/// A stand-in daemon: answers one request on `socket` with `answer`, but
/// only once `go` says the CLI's reader has gone.
fn answer_once(
    socket: &std::path::Path,
    answer: guard_userspace::control::protocol::Response,
    go: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<String> {
    use std::io::{BufRead, Write};
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut request = String::new();
        std::io::BufReader::new(&stream)
            .read_line(&mut request)
            .unwrap();
        go.recv().unwrap();
        let mut line = serde_json::to_string(&answer).unwrap();
        line.push('\n');
        (&stream).write_all(line.as_bytes()).unwrap();
        request
    })
}

/// Runs the CLI with its standard output already closed (as after
/// `| head -1` has read its line), against a daemon answering `answer`.
fn run_into_closed_pipe(
    args: &[&str],
    answer: guard_userspace::control::protocol::Response,
) -> (Output, String) {
    let socket = TempSocket::new(&format!("cli-epipe-{}", args.join("-")));
    let (go, wait) = std::sync::mpsc::channel();
    let daemon = answer_once(socket.as_ref(), answer, wait);
    let mut child = Command::new(sipguard_bin())
        .arg("--control-socket")
        .arg(&socket)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the answer arrives: every write fails.
    drop(child.stdout.take());
    go.send(()).unwrap();
    let out = child.wait_with_output().unwrap();
    let request = daemon.join().unwrap();
    (out, request)
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use guard_userspace::control::protocol::{BanRow, MonitorOrigin, Reply, Status};
    let status = Status {
        iface: "eth0".into(),
        xdp_mode: "native".into(),
        program_id: 7,
        pinned_at: None,
        pins_warning: None,
        attached: true,
        state_dir: "/var/lib/sipguard/eth0".into(),
        state_save_failures: 0,
        uptime_seconds: 5,
        source: "<built-in default>".into(),
        policy: "default pass".into(),
        monitor: false,
        monitor_by: MonitorOrigin::Config,
        bans_active: 0,
        awaiting_confirmation_seconds: None,
        packets: Default::default(),
        fleet: Vec::new(),
    };
    let (out, request) = run_into_closed_pipe(&["status"], Ok(Reply::Status(status)));
    assert!(request.contains("\"cmd\":\"status\""), "{request}");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "nothing on stderr, no panic");

    let rows: Vec<BanRow> = (0..1000)
        .map(|i| BanRow {
            source: format!("10.0.{}.{}", i / 256, i % 256),
            reason: "manual".into(),
            detail: String::new(),
            since_seconds: 1,
            remaining_seconds: None,
            dropped: 0,
            listed: false,
        })
        .collect();
    for args in [&["bans"][..], &["bans", "--json"][..]] {
        let (out, _) = run_into_closed_pipe(args, Ok(Reply::Bans(rows.clone())));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), "", "{args:?}");
    }
    let out = Command::new(sipguard_bin())
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            drop(child.stdout.take());
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn daemon_errors_become_exit_codes() {
    use guard_userspace::control::protocol::{ControlError, ErrorKind};
    for (kind, code) in [
        (ErrorKind::Failed, 1),
        (ErrorKind::BadConfig, 2),
        (ErrorKind::NotFound, 3),
        (ErrorKind::Refused, 4),
    ] {
        let socket = TempSocket::new(&format!("cli-kind-{code}"));
        let (go, wait) = std::sync::mpsc::channel();
        let error = Err(ControlError::new(kind, "no such thing"));
        let daemon = answer_once(socket.as_ref(), error, wait);
        go.send(()).unwrap();
        let out = sipguard(&[
            "--control-socket",
            socket.path(),
            "ban",
            "remove",
            "192.0.2.1",
        ]);
        daemon.join().unwrap();
        assert_eq!(out.status.code(), Some(code), "{kind:?}");
        assert_eq!(stderr(&out), "sipguard: no such thing");
    }
}

#[test]
fn ban_lengths_and_addresses_are_checked_before_the_daemon() {
    let socket = "/nonexistent/sipguard.sock";
    let ban = |extra: &[&str]| {
        let mut args = vec!["--control-socket", socket, "ban", "add"];
        args.extend_from_slice(extra);
        sipguard(&args)
    };
    for (length, says) in [
        ("0s", "at least 1s"),
        ("500ms", "at least 1s"),
        ("1000y", "beyond what the kernel can hold"),
    ] {
        let out = ban(&["192.0.2.1", "--for", length]);
        assert_eq!(out.status.code(), Some(2), "{length}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{length}: {}", stderr(&out));
    }
    let out = ban(&["10.0.0.0/24"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("ban takes one address; to block a network use `sipguard deny add`"),
        "{}",
        stderr(&out)
    );
    // These parse: only the missing daemon stops them.
    for length in ["forever", "1h", "290y"] {
        let out = ban(&["192.0.2.1", "--for", length]);
        assert_eq!(out.status.code(), Some(1), "{length}: {}", stderr(&out));
    }
}

/// The request line the CLI sends for `args` (the stand-in daemon answers
/// with `answer`).
fn request_of(args: &[&str], answer: guard_userspace::control::protocol::Response) -> String {
    let socket = TempSocket::new("cli-req");
    let (go, wait) = std::sync::mpsc::channel();
    let daemon = answer_once(socket.as_ref(), answer, wait);
    go.send(()).unwrap();
    let mut full = vec!["--control-socket", socket.path()];
    full.extend_from_slice(args);
    let out = sipguard(&full);
    let request = daemon.join().unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    request
}

#[test]
fn forever_is_asked_for_explicitly_and_hours_are_seconds() {
    use guard_userspace::control::protocol::{Banned, Reply};
    let banned = || {
        Ok(Reply::Banned(Banned {
            source: "192.0.2.1".into(),
            duration: "1h".into(),
        }))
    };
    let request = request_of(&["ban", "add", "192.0.2.1", "--for", "forever"], banned());
    assert!(request.contains("\"seconds\":null"), "{request}");
    let request = request_of(&["ban", "add", "192.0.2.1", "--for", "1h"], banned());
    assert!(request.contains("\"seconds\":3600"), "{request}");
}

#[test]
fn networks_with_host_bits_are_refused_unless_normalized() {
    use guard_userspace::control::protocol::{ListChange, Reply};
    for list in ["allow", "deny"] {
        for action in ["add", "remove"] {
            let out = sipguard(&[
                "--control-socket",
                "/nonexistent/sipguard.sock",
                list,
                action,
                "10.98.0.77/24",
            ]);
            assert_eq!(out.status.code(), Some(2), "{list}: {}", stderr(&out));
            assert!(
                stderr(&out)
                    .contains("10.98.0.77/24 has host bits set; the network is 10.98.0.0/24"),
                "{list} {action}: {}",
                stderr(&out)
            );
        }
        let changed = Ok(Reply::ListChanged(ListChange {
            list: list.into(),
            cidr: "10.98.0.0/24".into(),
            added: true,
            not_saved: None,
        }));
        let request = request_of(
            &[list, "add", "10.98.0.77/24", "--normalize"],
            changed.clone(),
        );
        assert!(
            request.contains("\"cidr\":\"10.98.0.0/24\""),
            "{list}: {request}"
        );
        let request = request_of(&[list, "remove", "10.98.0.77/24", "--normalize"], changed);
        assert!(
            request.contains("\"cidr\":\"10.98.0.0/24\"") && request.contains("_remove"),
            "{list}: {request}"
        );
    }
}

#[test]
fn an_error_into_a_closed_stderr_does_not_panic() {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe() fills two new descriptors that this test owns.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are new and owned here, each wrapped once.
    let (reader, writer) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    drop(reader);
    let out = Command::new(sipguard_bin())
        .args(["--control-socket", "/nonexistent/sipguard.sock", "bans"])
        .stderr(writer)
        .output()
        .unwrap();
    // The failure's own exit code, not a panic's 101.
    assert_eq!(out.status.code(), Some(1));
}
