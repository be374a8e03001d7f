//! Installs what building and testing sipguard need, and says what it did.
//!
//! Two ways to compile the XDP program (see shared notes on the toolchain):
//! - a rustup nightly with rust-src (`-Z build-std=core`), when present;
//! - otherwise Debian's rustc-web with its prebuilt BPF `core`
//!   (libstd-rust-web-dev-bpf), linked into rustup as `bpf-debian`.
//!
//! Either way bpf-linker 0.13 is built against Debian's LLVM 22.
use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Builds the Debian package (`cargo xtask deb`); pinned like bpf-linker.
const CARGO_DEB_VERSION: &str = "3.8.0";
const DEBIAN_TOOLCHAIN: &str = "bpf-debian";

/// Debian packages for the Debian BPF toolchain and for bpf-linker.
const TOOLCHAIN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Packages the tests use: `ip` for namespaces and veth pairs, a real SIP
/// registrar (Kamailio, with its TLS module and openssl for a test
/// certificate) and real SIP clients (sipp, sipsak); and what the
/// benchmarks compare sipguard with (xdp-filter, nftables, iptables with
/// ipset), read veth statistics with (ethtool) or pin programs with (bpftool);
/// Prometheus and its promtool for the alerting rules in dist/; lintian and
/// dpkg-dev (dpkg-shlibdeps) for the Debian package; util-linux's prlimit
/// and setpriv for the tests that run clients as another user under limits;
/// an SMTP sink for the e-mail alerts (python3-aiosmtpd) and openssl for its
/// test certificate; SIPVicious (svmap, svwar) as the real scanner the
/// scanner fingerprints are tested against.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "kamailio",
    "sip-tester",
    "sipsak",
    "kamailio-tls-modules",
    "openssl",
    "xdp-tools",
    "nftables",
    "iptables",
    "ipset",
    "ethtool",
    "bpftool",
    "prometheus",
    "lintian",
    "dpkg-dev",
    "python3-aiosmtpd",
    "openssl",
    "sipvicious",
];

pub enum BpfToolchain {
    NightlyRustSrc,
    Debian,
}

impl BpfToolchain {
    pub fn rustup_name(&self) -> &'static str {
        match self {
            BpfToolchain::NightlyRustSrc => "nightly",
            BpfToolchain::Debian => DEBIAN_TOOLCHAIN,
        }
    }
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn nightly_has_rust_src() -> bool {
    output("rustup", &["run", "nightly", "rustc", "--print", "sysroot"])
        .map(|sysroot| {
            Path::new(&sysroot)
                .join("lib/rustlib/src/rust/library/core")
                .is_dir()
        })
        .unwrap_or(false)
}

fn debian_bpf_core_present() -> bool {
    Path::new("/usr/lib/rustlib/bpfel-unknown-none/lib").is_dir()
        && Path::new("/usr/bin/rustc").exists()
}

fn debian_toolchain_linked() -> bool {
    output("rustup", &["toolchain", "list"])
        .map(|list| list.lines().any(|l| l.starts_with(DEBIAN_TOOLCHAIN)))
        .unwrap_or(false)
}

fn bpf_linker_ok() -> bool {
    output("bpf-linker", &["--version"])
        .map(|v| v.contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

fn missing_packages(packages: &[&str]) -> Vec<String> {
    packages
        .iter()
        .filter(|p| {
            output("dpkg-query", &["-W", "-f=${Status}", p])
                .map(|s| !s.contains("install ok installed"))
                .unwrap_or(true)
        })
        .map(|p| p.to_string())
        .collect()
}

fn have_apt() -> bool {
    Path::new("/usr/bin/apt-get").exists() && Path::new("/usr/bin/dpkg-query").exists()
}

fn is_root() -> bool {
    output("id", &["-u"]).as_deref() == Some("0")
}

fn apt_install(packages: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo cargo xtask setup` (or install them)",
            packages.join(" ")
        );
    }
    println!("setup: installing {}", packages.join(" "));
    let status = Command::new("apt-get")
        .args(["update", "-q"])
        .status()
        .context("running apt-get update")?;
    if !status.success() {
        bail!("apt-get update failed");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        // No stdin in CI: keep a config file setup wrote (crowdsec's).
        .args(["-o", "Dpkg::Options::=--force-confdef"])
        .args(["-o", "Dpkg::Options::=--force-confold"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("apt-get install {} failed", packages.join(" "));
    }
    Ok(())
}

fn cargo_deb_ok() -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    output(&cargo, &["deb", "--version"])
        .map(|v| v.contains(CARGO_DEB_VERSION))
        .unwrap_or(false)
}

/// Installs cargo-deb from crates.io unless this version is there.
pub fn ensure_cargo_deb() -> Result<()> {
    if cargo_deb_ok() {
        println!("setup: ok: cargo-deb {CARGO_DEB_VERSION}");
        return Ok(());
    }
    println!("setup: building cargo-deb {CARGO_DEB_VERSION}");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .status()
        .context("running cargo install cargo-deb")?;
    if !status.success() {
        bail!("building cargo-deb {CARGO_DEB_VERSION} failed");
    }
    if !cargo_deb_ok() {
        bail!("cargo-deb was installed but `cargo deb` does not run (add ~/.cargo/bin to PATH)");
    }
    Ok(())
}

/// Debian's CrowdSec, for the fleet tests: they start their own LAPI
/// (`crowdsec -c FILE -no-cs`) per network namespace.
const CROWDSEC_PACKAGE: &str = "crowdsec";
/// The postinst registers with the Central API (online) and fails without
/// internet, unless this file exists and is not empty.
const CROWDSEC_CAPI_CREDENTIALS: &str = "/etc/crowdsec/online_api_credentials.yaml";

fn dpkg_status(package: &str) -> Option<String> {
    output("dpkg-query", &["-W", "-f=${Status}", package])
}

fn crowdsec_ready() -> bool {
    dpkg_status(CROWDSEC_PACKAGE).is_some_and(|s| s.contains("install ok installed"))
        && Path::new("/usr/bin/crowdsec").exists()
        && Path::new("/usr/bin/cscli").exists()
}

/// Installs Debian's crowdsec without the Central API, idempotently, and
/// makes sure its system service neither runs nor starts at boot: the tests
/// run their own LAPIs, each with its own config, database and port.
fn ensure_crowdsec() -> Result<()> {
    if crowdsec_ready() {
        println!("setup: ok: Debian package {CROWDSEC_PACKAGE}");
    } else {
        if !is_root() {
            bail!("crowdsec is not installed: run `sudo cargo xtask setup`");
        }
        let credentials = Path::new(CROWDSEC_CAPI_CREDENTIALS);
        let empty = std::fs::metadata(credentials).map_or(true, |m| m.len() == 0);
        if empty {
            println!("setup: writing {CROWDSEC_CAPI_CREDENTIALS} so crowdsec installs offline");
            std::fs::create_dir_all("/etc/crowdsec").context("creating /etc/crowdsec")?;
            std::fs::write(
                credentials,
                "# sipguard's setup: no Central API (this machine has no internet)\n",
            )
            .with_context(|| format!("writing {CROWDSEC_CAPI_CREDENTIALS}"))?;
        }
        let _no_start = NoServiceStarts::install()?;
        let half_done = dpkg_status(CROWDSEC_PACKAGE)
            .is_some_and(|s| s == "install ok half-configured" || s == "install ok unpacked");
        if half_done {
            // An earlier install stopped in its postinst: finish it.
            println!("setup: finishing the configuration of {CROWDSEC_PACKAGE}");
            let status = Command::new("dpkg")
                .args(["--configure", CROWDSEC_PACKAGE])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .context("running dpkg --configure")?;
            if !status.success() {
                bail!("dpkg --configure {CROWDSEC_PACKAGE} failed");
            }
        } else {
            apt_install(&[CROWDSEC_PACKAGE.to_string()])?;
        }
        if !crowdsec_ready() {
            bail!("{CROWDSEC_PACKAGE} was installed but crowdsec or cscli is missing");
        }
    }
    stop_service("crowdsec");
    Ok(())
}

/// Debian's nftables bouncer for CrowdSec, which the bench compares
/// sipguard with: it runs its own copy in the bench's namespace. Its
/// service, started on the host, would put CrowdSec's drop rules into the
/// host's own firewall.
const CROWDSEC_BOUNCER_PACKAGE: &str = "crowdsec-firewall-bouncer";

fn crowdsec_bouncer_ready() -> bool {
    dpkg_status(CROWDSEC_BOUNCER_PACKAGE).is_some_and(|s| s.contains("install ok installed"))
        && Path::new("/usr/bin/crowdsec-firewall-bouncer").exists()
}

/// Installs the bouncer (after crowdsec, whose cscli its postinst uses)
/// with its service neither started by the install nor enabled.
fn ensure_crowdsec_bouncer() -> Result<()> {
    if crowdsec_bouncer_ready() {
        println!("setup: ok: Debian package {CROWDSEC_BOUNCER_PACKAGE}");
    } else {
        if !is_root() {
            bail!("{CROWDSEC_BOUNCER_PACKAGE} is not installed: run `sudo cargo xtask setup`");
        }
        let _no_start = NoServiceStarts::install()?;
        apt_install(&[CROWDSEC_BOUNCER_PACKAGE.to_string()])?;
        if !crowdsec_bouncer_ready() {
            bail!("{CROWDSEC_BOUNCER_PACKAGE} was installed but its binary is missing");
        }
    }
    stop_service(CROWDSEC_BOUNCER_PACKAGE);
    Ok(())
}

/// Debian's policy-rc.d answer "not now" (101) for the length of an install,
/// so that maintainer scripts start no service (deb-systemd-invoke and
/// invoke-rc.d ask it). An existing policy-rc.d is left as it is.
struct NoServiceStarts(Option<&'static Path>);

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoServiceStarts {
    fn install() -> Result<NoServiceStarts> {
        let path = Path::new(POLICY_RC_D);
        if path.exists() {
            return Ok(NoServiceStarts(None));
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            path,
            "#!/bin/sh\n# sipguard's setup: no service starts\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {POLICY_RC_D} executable"))?;
        Ok(NoServiceStarts(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Stops and disables a packaged service the tests and the bench never need
/// (crowdsec's would hold 127.0.0.1:8080 and the shared database; the
/// bouncer's, the host's firewall): they run their own copies. Without a
/// running systemd (a container, a CI image) the install still enabled it
/// for the next boot: `systemctl disable` removes that link offline too.
fn stop_service(unit: &str) {
    let running = Path::new("/run/systemd/system").is_dir();
    let active =
        running && output("systemctl", &["is-active", unit]).is_some_and(|s| s == "active");
    let enabled = output("systemctl", &["is-enabled", unit]).is_some_and(|s| s == "enabled");
    if active || enabled {
        println!("setup: stopping and disabling the {unit} service (tests run their own)");
        let now: &[&str] = if running { &["--now"] } else { &[] };
        let _ = Command::new("systemctl")
            .arg("disable")
            .args(now)
            .arg(unit)
            .status();
    }
}

/// Runs the fuzz targets (`cargo xtask test`'s fuzz step); pinned like cargo-deb.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Whether rustup has a nightly toolchain (cargo-fuzz's libFuzzer build
/// needs nightly's sanitizer-coverage flags; rust-src is not needed).
pub fn have_nightly() -> bool {
    output("rustup", &["run", "nightly", "rustc", "--version"]).is_some()
}

fn cargo_fuzz_ok() -> bool {
    output("cargo", &["fuzz", "--version"])
        .map(|v| v.contains(CARGO_FUZZ_VERSION))
        .unwrap_or(false)
}

/// Installs cargo-fuzz from crates.io unless this version is there.
pub fn ensure_cargo_fuzz() -> Result<()> {
    if cargo_fuzz_ok() {
        println!("setup: ok: cargo-fuzz {CARGO_FUZZ_VERSION}");
        return Ok(());
    }
    println!("setup: building cargo-fuzz {CARGO_FUZZ_VERSION}");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTFLAGS")
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("building cargo-fuzz {CARGO_FUZZ_VERSION} failed");
    }
    if !cargo_fuzz_ok() {
        bail!("cargo-fuzz was installed but `cargo fuzz` does not run (add ~/.cargo/bin to PATH)");
    }
    Ok(())
}

/// Whether everything is in place, without installing anything.
fn ready() -> Option<BpfToolchain> {
    if !bpf_linker_ok()
        || !cargo_deb_ok()
        || !missing_packages(TEST_PACKAGES).is_empty()
        || !crowdsec_ready()
        || !crowdsec_bouncer_ready()
        || (have_nightly() && !cargo_fuzz_ok())
    {
        return None;
    }
    if nightly_has_rust_src() {
        return Some(BpfToolchain::NightlyRustSrc);
    }
    (debian_bpf_core_present() && debian_toolchain_linked()).then_some(BpfToolchain::Debian)
}

/// Runs setup only when something is missing.
pub fn ensure_ready() -> Result<BpfToolchain> {
    match ready() {
        Some(toolchain) => Ok(toolchain),
        None => setup(),
    }
}

pub fn setup() -> Result<BpfToolchain> {
    let uses_nightly = nightly_has_rust_src();
    if uses_nightly {
        println!("setup: ok: rustup nightly with rust-src (build-std path)");
    }
    if !have_apt() {
        if uses_nightly && bpf_linker_ok() {
            return Ok(BpfToolchain::NightlyRustSrc);
        }
        bail!(
            "unsupported system: sipguard's setup needs Debian's apt-get (for LLVM 22, and \
             rustc-web with its BPF core) unless a rustup nightly with rust-src and \
             bpf-linker {BPF_LINKER_VERSION} are already installed"
        );
    }

    let mut wanted: Vec<&str> = TEST_PACKAGES.to_vec();
    if !uses_nightly || !bpf_linker_ok() {
        wanted.extend_from_slice(TOOLCHAIN_PACKAGES);
    }
    let missing = missing_packages(&wanted);
    if missing.is_empty() {
        println!("setup: ok: Debian packages {}", wanted.join(" "));
    } else {
        apt_install(&missing)?;
    }
    ensure_crowdsec()?;
    ensure_crowdsec_bouncer()?;

    let toolchain = if uses_nightly {
        BpfToolchain::NightlyRustSrc
    } else {
        if !debian_bpf_core_present() {
            bail!(
                "libstd-rust-web-dev-bpf is installed but /usr/lib/rustlib/bpfel-unknown-none \
                 is missing: the Debian BPF core library is needed"
            );
        }
        if debian_toolchain_linked() {
            println!("setup: ok: rustup toolchain {DEBIAN_TOOLCHAIN} -> /usr");
        } else {
            println!("setup: linking Debian's rustc as rustup toolchain {DEBIAN_TOOLCHAIN}");
            let status = Command::new("rustup")
                .args(["toolchain", "link", DEBIAN_TOOLCHAIN, "/usr"])
                .status()
                .context("running rustup (is rustup installed?)")?;
            if !status.success() {
                bail!("rustup toolchain link {DEBIAN_TOOLCHAIN} /usr failed");
            }
        }
        BpfToolchain::Debian
    };

    if bpf_linker_ok() {
        println!("setup: ok: bpf-linker {BPF_LINKER_VERSION}");
    } else {
        println!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path)
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTFLAGS")
            .status()
            .context("running cargo install bpf-linker")?;
        if !status.success() {
            bail!("building bpf-linker failed (it needs llvm-22-dev and libpolly-22-dev)");
        }
        if !bpf_linker_ok() {
            bail!("bpf-linker was installed but is not on PATH (add ~/.cargo/bin to PATH)");
        }
    }
    ensure_cargo_deb()?;
    // The fuzz targets (run briefly by `cargo xtask test`) need nightly.
    if have_nightly() {
        ensure_cargo_fuzz()?;
    } else {
        println!("setup: skipped: cargo-fuzz (no rustup nightly toolchain)");
    }
    println!("setup: ready");
    Ok(toolchain)
}
