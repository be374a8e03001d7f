//! The benchmark runner behind `cargo xtask bench` (root). Writes BENCHMARKS.md.
//!
//! sipguard-bench --baseline OBJECT --output FILE [--criterion DIR] [--smoke]
//!                [--previous OBJECT [--previous-name NAME]]
//!                [--paths-only [--quick] [--only NAME]...]
//!
//! `--previous` times an earlier build's XDP object path by path in the
//! same rounds as this build's (section 1b and a target row).
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use sipguard_tests::{
    bench::{self, report, Effort},
    is_root,
};

struct Args {
    baseline: PathBuf,
    output: PathBuf,
    criterion: Option<PathBuf>,
    previous: Option<report::Previous>,
    smoke: bool,
    /// Only table 1 and its comparison with `previous`.
    paths_only: bool,
    /// With `paths_only`: fewer, shorter runs ([`Effort::QUICK`]).
    quick: bool,
    /// With `paths_only`: the paths whose names contain one of these.
    only: Vec<String>,
    /// Only the CrowdSec comparison (a full run's figures, about 4 minutes).
    crowdsec_only: bool,
}

fn args() -> Result<Args> {
    let mut baseline = None;
    let mut output = None;
    let mut criterion = None;
    let mut smoke = false;
    let mut paths_only = false;
    let mut quick = false;
    let mut only = Vec::new();
    let mut crowdsec_only = false;
    let mut previous = None;
    let mut previous_name = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--baseline" => baseline = it.next().map(PathBuf::from),
            "--output" => output = it.next().map(PathBuf::from),
            "--criterion" => criterion = it.next().map(PathBuf::from),
            "--smoke" => smoke = true,
            "--paths-only" => paths_only = true,
            "--quick" => quick = true,
            "--only" => only.push(it.next().context("--only NAME")?),
            "--crowdsec-only" => crowdsec_only = true,
            "--previous" => previous = it.next().map(PathBuf::from),
            "--previous-name" => previous_name = it.next(),
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(Args {
        baseline: baseline.context("--baseline OBJECT is required")?,
        output: output.context("--output FILE is required")?,
        criterion,
        previous: previous.map(|object| report::Previous {
            name: previous_name.unwrap_or_else(|| object.display().to_string()),
            object,
        }),
        smoke,
        paths_only,
        quick,
        only,
        crowdsec_only,
    })
}

fn main() -> Result<()> {
    let args = args()?;
    if !is_root() {
        bail!("the benchmarks load XDP programs and create namespaces: run as root");
    }
    if (args.quick || !args.only.is_empty()) && !args.paths_only {
        bail!("--quick and --only go with --paths-only");
    }
    let effort = if args.smoke {
        Effort::SMOKE
    } else if args.quick {
        Effort::QUICK
    } else {
        Effort::FULL
    };
    if args.crowdsec_only {
        let result = bench::crowdsec::crowdsec(&args.baseline, Effort::FULL)?;
        let text = format!(
            "CrowdSec, {} decisions: apply {:?} (ratio, capped), drop {:?} (ratio)\n{result:#?}\n",
            result.decisions,
            result.apply_ratio(),
            result.drop_ratio(),
        );
        std::fs::write(&args.output, &text)
            .with_context(|| format!("writing {}", args.output.display()))?;
        eprintln!("{text}");
        return Ok(());
    }
    if args.paths_only {
        let previous = args
            .previous
            .context("--paths-only compares with a previous build: give --previous OBJECT")?;
        let text = bench::paths_only(&args.baseline, &previous, effort, &args.only)?;
        std::fs::write(&args.output, &text)
            .with_context(|| format!("writing {}", args.output.display()))?;
        eprintln!("bench: wrote {}", args.output.display());
        return Ok(());
    }
    let results = bench::run_all(
        &args.baseline,
        args.criterion.as_deref(),
        args.previous.as_ref(),
        effort,
    )?;
    let mut text = report::render(&results);
    // Sections written by hand (one-off measurements) follow a marker and
    // survive a new run.
    if let Ok(old) = std::fs::read_to_string(&args.output) {
        if let Some(at) = old.find(report::HAND_WRITTEN_MARKER) {
            text.push('\n');
            text.push_str(&old[at..]);
        }
    }
    std::fs::write(&args.output, &text)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!("bench: wrote {}", args.output.display());
    Ok(())
}
