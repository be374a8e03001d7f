//! `cargo xtask`: set up the toolchain, build the XDP program and the
//! controller, run the tests, run the guard.
mod deb;
mod fuzz;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::setup::BpfToolchain;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Build the XDP program and the `sipguard` binary (release).
    Build,
    /// Run every test; kernel and namespace tests need root.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks (as root) and write BENCHMARKS.md.
    Bench {
        /// CI's short version: tiny repeat counts, output to target/.
        #[arg(long)]
        smoke: bool,
        /// An earlier build's XDP object: every verdict path is timed on it
        /// too, in the same rounds, and compared (BENCHMARKS.md section 1b).
        #[arg(long)]
        previous: Option<PathBuf>,
        /// What the report calls the earlier build (a commit, say).
        #[arg(long, requires = "previous")]
        previous_name: Option<String>,
        /// Only the per-path table and its comparison with `--previous`,
        /// written to target/BENCHMARKS.paths.md (a few minutes, for a
        /// quiet moment on a shared machine).
        #[arg(long, requires = "previous", conflicts_with = "smoke")]
        paths_only: bool,
        /// With --paths-only: 3 runs of 1,000,000 packets instead of 5 of
        /// 10,000,000, for trying a change (report the full run's figures).
        #[arg(long, requires = "paths_only")]
        quick: bool,
        /// With --paths-only: only the paths whose names contain NAME
        /// (repeatable), e.g. --only "SIP under".
        #[arg(long, requires = "paths_only", value_name = "NAME")]
        only: Vec<String>,
    },
    /// Build the Debian package (target/debian/sipguard_VERSION_ARCH.deb).
    Deb,
    /// Build, then run `sipguard run` with these arguments (as root).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::setup().map(|_| ()),
        Task::Build => build_all(Profile::Release).map(|_| ()),
        Task::Test { args } => test(&args),
        Task::Run { args } => run(&args),
        Task::Bench {
            smoke,
            previous,
            previous_name,
            paths_only,
            quick,
            only,
        } => bench(
            BenchRun {
                smoke,
                paths_only,
                quick,
                only,
            },
            previous.as_deref(),
            previous_name.as_deref(),
        ),
        Task::Deb => deb::deb().map(|_| ()),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Profile {
    Debug,
    Release,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// Where the BPF build puts its artifacts (its own target dir: another
/// toolchain, another set of host artifacts).
fn bpf_target_dir() -> PathBuf {
    workspace_root().join("target").join("bpf")
}

pub fn ebpf_object_path() -> PathBuf {
    bpf_target_dir().join("bpfel-unknown-none/release/guard-ebpf")
}

/// The bench's reference programs (bare XDP_DROP/XDP_PASS, traffic generator).
pub fn baseline_object_path() -> PathBuf {
    bpf_target_dir().join("bpfel-unknown-none/release/baseline")
}

/// A cargo command free of the variables the outer `cargo run` set, so an
/// inner build picks its own toolchain.
fn clean_cargo(toolchain: Option<&str>) -> Command {
    let mut command = match toolchain {
        Some(toolchain) => {
            let mut c = Command::new("rustup");
            c.args(["run", toolchain, "cargo"]);
            c
        }
        None => Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())),
    };
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        command.env_remove(var);
    }
    command.current_dir(workspace_root());
    command
}

fn check(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// Compiles guard-ebpf for bpfel-unknown-none.
fn build_ebpf(toolchain: &BpfToolchain) -> Result<PathBuf> {
    let mut command = clean_cargo(Some(toolchain.rustup_name()));
    command
        .args(["build", "-p", "guard-ebpf", "--release"])
        .args(["--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(bpf_target_dir())
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", "bpf-linker")
        // BTF for bpftool and aya; cpu v3 for the atomic instructions.
        .env(
            "RUSTFLAGS",
            "-C debuginfo=2 -C link-arg=--btf -C target-cpu=v3",
        );
    match toolchain {
        // aya-ebpf needs unstable features; Debian's stable compiler allows them
        // with RUSTC_BOOTSTRAP, and its prebuilt `core` needs no build-std.
        BpfToolchain::Debian => {
            command.env("RUSTC_BOOTSTRAP", "1");
        }
        BpfToolchain::NightlyRustSrc => {
            command.args(["-Z", "build-std=core"]);
        }
    }
    check(&mut command).context("building the XDP program")?;
    Ok(ebpf_object_path())
}

/// Builds the XDP program, then the controller with it embedded.
fn build_all(profile: Profile) -> Result<PathBuf> {
    let toolchain = setup::ensure_ready()?;
    let object = build_ebpf(&toolchain)?;
    let mut command = clean_cargo(None);
    command
        .args(["build", "-p", "guard-userspace", "--bin", "sipguard"])
        .env("SIPGUARD_EBPF_OBJECT", &object);
    if profile == Profile::Release {
        command.arg("--release");
    }
    check(&mut command).context("building sipguard")?;
    Ok(workspace_root()
        .join("target")
        .join(profile.dir())
        .join("sipguard"))
}

fn is_root() -> bool {
    // SAFETY-free: reading our own effective uid through `id -u` keeps xtask libc-free.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn test(extra: &[String]) -> Result<()> {
    let sipguard = build_all(Profile::Debug)?;
    let root = is_root();
    // The package test installs the real package (a release build): made
    // for a full run as root, or a run that names the test.
    let names_it = extra.iter().any(|a| a.contains("deb_package"));
    let package = if root && (extra.is_empty() || names_it) {
        Some(deb::deb()?)
    } else {
        None
    };
    let mut command = clean_cargo(None);
    command.arg("test");
    if extra.is_empty() {
        // Criterion benches run once each in test mode, so they cannot rot
        // (their harness takes none of libtest's flags, hence a run of its own).
        let mut benches = clean_cargo(None);
        benches
            .args(["test", "-p", "guard-userspace", "--bench", "sip_parse"])
            .env("SIPGUARD_EBPF_OBJECT", ebpf_object_path());
        check(&mut benches).context("benchmarks in test mode failed")?;
        // Every host crate; guard-ebpf only builds for the BPF target.
        command.args(["--workspace", "--exclude", "guard-ebpf"]);
    } else {
        command.args(extra);
    }
    command
        .env("SIPGUARD_EBPF_OBJECT", ebpf_object_path())
        .env("SIPGUARD_BASELINE_OBJECT", baseline_object_path())
        .env("SIPGUARD_BIN", &sipguard)
        .arg("--");
    if let Some(package) = &package {
        command.env("SIPGUARD_DEB", package);
    }
    if root {
        // Kernel tests share the kernel: run them one at a time.
        command.args(["--include-ignored", "--test-threads=1"]);
    } else {
        eprintln!(
            "xtask: not root: the kernel and namespace tests are reported as ignored (skipped); \
             run `sudo cargo xtask test` to include them"
        );
    }
    check(&mut command).context("tests failed")?;
    // A full run as root or in CI also fuzzes each target briefly.
    if extra.is_empty() && (root || std::env::var_os("CI").is_some()) {
        fuzz::smoke()?;
    }
    Ok(())
}

/// Which benchmark run: CI's smoke run, the per-path comparison only, or
/// the full run.
struct BenchRun {
    smoke: bool,
    paths_only: bool,
    quick: bool,
    only: Vec<String>,
}

fn bench(run: BenchRun, previous: Option<&Path>, previous_name: Option<&str>) -> Result<()> {
    let BenchRun {
        smoke,
        paths_only,
        quick,
        only,
    } = run;
    if !is_root() {
        bail!("the benchmarks load XDP programs and create namespaces: run as root");
    }
    let sipguard = build_all(Profile::Release)?;
    let mut command = clean_cargo(None);
    command
        .args([
            "build",
            "--release",
            "-p",
            "sipguard-tests",
            "--bin",
            "sipguard-bench",
        ])
        .env("SIPGUARD_EBPF_OBJECT", ebpf_object_path());
    check(&mut command).context("building the bench runner")?;

    let mut criterion = clean_cargo(None);
    if !paths_only {
        criterion
            .args([
                "bench",
                "-p",
                "guard-userspace",
                "--bench",
                "sip_parse",
                "--",
            ])
            .env("SIPGUARD_EBPF_OBJECT", ebpf_object_path());
        if smoke {
            criterion.args(["--warm-up-time", "0.2", "--measurement-time", "0.5"]);
        } else {
            criterion.args(["--warm-up-time", "2", "--measurement-time", "10"]);
        }
        check(&mut criterion).context("the SIP parser benchmark")?;
    }

    let root = workspace_root();
    let output = if paths_only {
        root.join("target").join("BENCHMARKS.paths.md")
    } else if smoke {
        root.join("target").join("BENCHMARKS.smoke.md")
    } else {
        root.join("BENCHMARKS.md")
    };
    let mut runner = Command::new(root.join("target/release/sipguard-bench"));
    runner
        .arg("--baseline")
        .arg(baseline_object_path())
        .arg("--output")
        .arg(&output)
        .arg("--criterion")
        .arg(root.join("target/criterion"))
        .env("SIPGUARD_BIN", &sipguard);
    if smoke {
        runner.arg("--smoke");
    }
    if paths_only {
        runner.arg("--paths-only");
    }
    if quick {
        runner.arg("--quick");
    }
    for name in &only {
        runner.arg("--only").arg(name);
    }
    if let Some(previous) = previous {
        // The runner is started from the workspace root.
        let previous = std::fs::canonicalize(previous)
            .with_context(|| format!("the previous build {}", previous.display()))?;
        runner.arg("--previous").arg(previous);
    }
    if let Some(name) = previous_name {
        runner.arg("--previous-name").arg(name);
    }
    check(&mut runner).context("the benchmarks")?;
    println!("xtask: wrote {}", output.display());
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    let sipguard = build_all(Profile::Release)?;
    let mut command = Command::new(&sipguard);
    command.arg("run").args(args);
    let status = command
        .status()
        .with_context(|| format!("starting {}", sipguard.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}
