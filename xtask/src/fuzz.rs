//! `cargo xtask test`'s fuzz step: each cargo-fuzz target (fuzz/, nightly)
//! runs for a short time from its committed corpus, so that none rots.
//! The long runs and their figures are in FUZZING.md.
use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result};

use crate::{check, clean_cargo, setup, workspace_root};

/// The targets in fuzz/Cargo.toml, each with a seed corpus in fuzz/corpus/.
pub const TARGETS: &[&str] = &[
    "sip_parse",
    "config",
    "control_request",
    "state_files",
    "hep",
    "lapi",
    "feeds",
];
/// Per target (issue 15 asks for about 30 s each in CI).
const SECONDS_PER_TARGET: u32 = 30;
/// How the targets are built: no sanitizer (the code under test is safe
/// Rust, and ASan would instrument every dependency for little gain),
/// debug assertions on (arithmetic overflow is a crash), and 16 codegen
/// units instead of cargo-fuzz's 1, so that LLVM can split the large
/// dependencies (FUZZING.md).
pub const BUILD_FLAGS: &[&str] = &[
    "--sanitizer",
    "none",
    "--debug-assertions",
    "--codegen-units",
    "16",
];

/// Builds and runs every target. Skips, saying so, only when rustup has no
/// nightly toolchain; any other failure (a crash above all) fails the tests.
pub fn smoke() -> Result<()> {
    if !setup::have_nightly() {
        eprintln!(
            "xtask: fuzz: SKIPPED: no rustup nightly toolchain (cargo-fuzz needs one: \
             `rustup toolchain install nightly`)"
        );
        return Ok(());
    }
    setup::ensure_cargo_fuzz()?;
    let started = Instant::now();
    // One build of the four over shared dependencies. The runs below start
    // the built binaries themselves: `cargo fuzz run TARGET` builds one
    // target with other unit hashes, which would build every dependency
    // again.
    let fuzz_dir = workspace_root().join("fuzz");
    check(fuzz_command().arg("build").args(BUILD_FLAGS)).context("building the fuzz targets")?;
    println!(
        "xtask: fuzz: targets built in {} s",
        started.elapsed().as_secs()
    );
    for target in TARGETS {
        let binary = built(&fuzz_dir, target)?;
        // New finds go to a scratch corpus; the committed seeds are read only.
        let scratch = workspace_root().join("target/fuzz-corpus").join(target);
        let artifacts = fuzz_dir.join("artifacts").join(target);
        for dir in [&scratch, &artifacts] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        check(
            std::process::Command::new(&binary)
                .arg(&scratch)
                .arg(fuzz_dir.join("corpus").join(target))
                .arg(format!("-artifact_prefix={}/", artifacts.display()))
                .arg(format!("-max_total_time={SECONDS_PER_TARGET}"))
                .arg("-print_final_stats=1"),
        )
        .with_context(|| {
            format!(
                "fuzz target {target} failed (its crash input is in {})",
                artifacts.display()
            )
        })?;
    }
    println!(
        "xtask: fuzz: {} targets ran {SECONDS_PER_TARGET} s each without a crash ({} s in all)",
        TARGETS.len(),
        started.elapsed().as_secs()
    );
    Ok(())
}

/// The binary `cargo fuzz build` made for `target`
/// (fuzz/target/<host triple>/release/<target>).
fn built(fuzz_dir: &Path, target: &str) -> Result<PathBuf> {
    let target_dir = fuzz_dir.join("target");
    let entries = std::fs::read_dir(&target_dir)
        .with_context(|| format!("reading {}", target_dir.display()))?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("release").join(target))
        .find(|path| path.is_file())
        .with_context(|| format!("no fuzz binary {target} under {}", target_dir.display()))
}

fn fuzz_command() -> std::process::Command {
    let mut command = clean_cargo(Some("nightly"));
    command.arg("fuzz");
    command
}
