//! The Debian package `cargo xtask deb` builds: lintian finds no error, and
//! `dpkg -i` installs every file where Debian expects it; a remove keeps
//! the (edited) config, a purge deletes it. Needs root: it installs the
//! package on this machine, and purges it again whatever happens.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

const PACKAGE: &str = "sipguard";
const CONFIG: &str = "/etc/sipguard/sipguard.toml";
const UNIT: &str = "/usr/lib/systemd/system/sipguard.service";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// Runs and asserts success; returns stdout.
fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg's status of the package ("install ok installed", "deinstall ok
/// config-files"), or None when dpkg knows nothing of it.
fn status() -> Option<String> {
    let out = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !status.ends_with("not-installed")).then_some(status)
}

/// Purges the package on drop, so a failing test leaves nothing installed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", PACKAGE]);
    }
}

fn assert_file(path: &str, mode: u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(meta.is_file() && meta.len() > 0, "{path}");
    assert_eq!(meta.permissions().mode() & 0o777, mode, "{path}");
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn the_package_installs_removes_and_purges_cleanly() {
    let deb = std::env::var("SIPGUARD_DEB")
        .expect("SIPGUARD_DEB: run through `cargo xtask test` (it builds the package)");
    assert!(Path::new(&deb).exists(), "{deb}");

    // Errors fail lintian (its --fail-on default); warnings are printed.
    let lint = run("lintian", &["--fail-on", "error", &deb]);
    let report = String::from_utf8_lossy(&lint.stdout);
    eprintln!("lintian:\n{report}");
    assert!(lint.status.success(), "lintian: {report}");
    assert!(!report.lines().any(|l| l.starts_with("E:")), "{report}");

    // A leftover of an interrupted run would hide what this install does.
    if status().is_some() {
        ok("dpkg", &["--purge", PACKAGE]);
    }
    let installed = Installed;
    ok("dpkg", &["-i", &deb]);
    assert_eq!(status().as_deref(), Some("install ok installed"));

    assert_file("/usr/sbin/sipguard", 0o755);
    let version = ok("/usr/sbin/sipguard", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("sipguard {}", env!("CARGO_PKG_VERSION"))
    );

    // The config: the example, valid, and a conffile.
    assert_file(CONFIG, 0o644);
    let example = std::fs::read_to_string(workspace().join("sipguard.example.toml")).unwrap();
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), example);
    ok("/usr/sbin/sipguard", &["check-config", CONFIG]);
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    assert!(conffiles.contains(CONFIG), "{conffiles}");
    assert!(conffiles.contains("/etc/default/sipguard"), "{conffiles}");

    // The unit runs the packaged binary; systemd's own checker accepts it.
    assert_file(UNIT, 0o644);
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/sbin/sipguard run --config /etc/sipguard/sipguard.toml"),
        "{unit}"
    );
    let commands: Vec<_> = unit.lines().filter(|l| l.starts_with("Exec")).collect();
    assert_eq!(commands.len(), 3, "{unit}");
    assert!(
        commands.iter().all(|l| l.contains("=/usr/sbin/sipguard ")),
        "{commands:?}"
    );
    ok("systemd-analyze", &["verify", UNIT]);

    // The man page (gzipped roff) and the completions.
    assert_file("/usr/share/man/man8/sipguard.8.gz", 0o644);
    let man = ok("zcat", &["/usr/share/man/man8/sipguard.8.gz"]);
    assert!(man.contains(".TH sipguard 8"), "{man}");
    let bash = "/usr/share/bash-completion/completions/sipguard";
    assert_file(bash, 0o644);
    ok("bash", &["-n", bash]);
    for file in [
        "/usr/share/zsh/vendor-completions/_sipguard",
        "/usr/share/fish/vendor_completions.d/sipguard.fish",
    ] {
        assert_file(file, 0o644);
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.contains("check-config"), "{file}");
    }

    // The dashboard and the alerting rules, as in dist/.
    for file in ["grafana-dashboard.json", "sipguard.rules.yml"] {
        let installed = format!("/usr/share/sipguard/{file}");
        assert_file(&installed, 0o644);
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(workspace().join("dist").join(file)).unwrap(),
            "{file}"
        );
    }

    // Remove: the binary goes, the edited config stays.
    let edited = format!("{example}\n# edited by the admin\n");
    std::fs::write(CONFIG, &edited).unwrap();
    ok("dpkg", &["--remove", PACKAGE]);
    assert_eq!(status().as_deref(), Some("deinstall ok config-files"));
    assert!(!Path::new("/usr/sbin/sipguard").exists());
    assert!(!Path::new(UNIT).exists());
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), edited);

    // Purge: the config and the saved state go too.
    std::fs::create_dir_all("/var/lib/sipguard/eth9").unwrap();
    std::fs::write("/var/lib/sipguard/eth9/bans.json", "[]").unwrap();
    ok("dpkg", &["--purge", PACKAGE]);
    assert_eq!(status(), None);
    assert!(!Path::new(CONFIG).exists());
    assert!(!Path::new("/etc/default/sipguard").exists());
    assert!(!Path::new("/var/lib/sipguard").exists());
    drop(installed);
}
