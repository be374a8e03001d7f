//! `cargo xtask test`'s fuzz step: each cargo-fuzz target (fuzz/, nightly)
//! runs for a short time from its committed corpus, so that none rots.
//! The long runs and their figures are in FUZZING.md.
use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result};

use crate::{check, clean_cargo, setup, workspace_root};

/// The targets in fuzz/Cargo.toml, each with a seed corpus in fuzz/corpus/.
pub const TARGETS: &[&str] = &["sip_parse", "config", "control_request", "state_files"];
/// Per target (issue 15 asks for about 30 s each in CI).
const SECONDS_PER_TARGET: u32 = 30;
/// The options of every build and run: no sanitizer (the code under test
/// is safe Rust, and ASan would instrument every dependency for little
/// gain), debug assertions on (arithmetic overflow is a crash), and 16
/// codegen units instead of cargo-fuzz's 1, which makes the build from
/// nothing several times cheaper for somewhat slower runs (FUZZING.md).
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
    // One cargo invocation builds the four targets over shared dependencies.
    check(fuzz_command().arg("build").args(BUILD_FLAGS)).context("building the fuzz targets")?;
    println!(
        "xtask: fuzz: targets built in {} s",
        started.elapsed().as_secs()
    );
    for target in TARGETS {
        // New finds go to a scratch corpus; the committed seeds are read only.
        let scratch = workspace_root().join("target/fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let seeds: PathBuf = workspace_root().join("fuzz/corpus").join(target);
        check(
            fuzz_command()
                .arg("run")
                .args(BUILD_FLAGS)
                .arg(target)
                .arg(&scratch)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={SECONDS_PER_TARGET}"))
                .arg("-print_final_stats=1"),
        )
        .with_context(|| {
            format!("fuzz target {target} failed (its crash input is in fuzz/artifacts/{target}/)")
        })?;
    }
    println!(
        "xtask: fuzz: {} targets ran {SECONDS_PER_TARGET} s each without a crash ({} s in all)",
        TARGETS.len(),
        started.elapsed().as_secs()
    );
    Ok(())
}

fn fuzz_command() -> std::process::Command {
    let mut command = clean_cargo(Some("nightly"));
    command.arg("fuzz");
    command
}
