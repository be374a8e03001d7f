//! The benchmark runner behind `cargo xtask bench` (root). Writes BENCHMARKS.md.
//!
//! sipguard-bench --baseline OBJECT --output FILE [--criterion DIR] [--smoke]
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use sipguard_tests::{
    bench::{controller, live, load_baseline, memory, paths, report, Effort},
    is_root, Harness,
};

struct Args {
    baseline: PathBuf,
    output: PathBuf,
    criterion: Option<PathBuf>,
    smoke: bool,
}

fn args() -> Result<Args> {
    let mut baseline = None;
    let mut output = None;
    let mut criterion = None;
    let mut smoke = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--baseline" => baseline = it.next().map(PathBuf::from),
            "--output" => output = it.next().map(PathBuf::from),
            "--criterion" => criterion = it.next().map(PathBuf::from),
            "--smoke" => smoke = true,
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(Args {
        baseline: baseline.context("--baseline OBJECT is required")?,
        output: output.context("--output FILE is required")?,
        criterion,
        smoke,
    })
}

/// Criterion's median for the corpus benchmark -> messages per second.
fn parser(dir: &std::path::Path) -> Result<report::Parser> {
    let estimates = dir.join("sip_parse/corpus/new/estimates.json");
    let text = std::fs::read_to_string(&estimates)
        .with_context(|| format!("reading {}", estimates.display()))?;
    // {"mean":{...},"median":{"confidence_interval":{...},"point_estimate":123.4,...},...}
    let median = text
        .split("\"median\"")
        .nth(1)
        .and_then(|rest| rest.split("\"point_estimate\":").nth(1))
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|n| n.trim().parse::<f64>().ok())
        .context("no median in criterion's estimates")?;
    let corpus_messages = include_str!("../../../guard-userspace/benches/sip_corpus.txt")
        .split("%%\n")
        .count();
    Ok(report::Parser {
        messages_per_second: corpus_messages as f64 / (median * 1e-9),
        corpus_messages,
    })
}

fn main() -> Result<()> {
    let args = args()?;
    if !is_root() {
        bail!("the benchmarks load XDP programs and create namespaces: run as root");
    }
    let effort = if args.smoke {
        Effort::SMOKE
    } else {
        Effort::FULL
    };
    let baseline = load_baseline(&args.baseline, 0)?;
    eprintln!("bench: per-path costs");
    let (path_results, bare_drop, bare_pass) = paths::per_path(&baseline, effort)?;
    let crossing = paths::crossing(&baseline, effort)?;
    let xdp_filter = paths::xdp_filter_reference(&baseline, effort).map_err(|e| format!("{e:#}"));
    eprintln!("bench: scaling to {} entries", effort.scale_sizes[2]);
    let (scaling, scale_memory) = paths::scaling(effort)?;
    let default_memory = {
        let mut h = Harness::try_new("")?;
        memory::all_maps(&mut h)?
    };
    eprintln!("bench: live packets on veth");
    let live = live::live(&args.baseline, effort).map_err(|e| format!("{e:#}"));
    live::release_bpffs();
    eprintln!("bench: controller");
    let events = controller::ban_events(effort)?;
    let latency_us = controller::failure_to_ban_latency(effort)?;
    let parser = match &args.criterion {
        Some(dir) => Some(parser(dir)?),
        None => None,
    };
    let results = report::Results {
        effort,
        bare_drop,
        bare_pass,
        paths: path_results,
        crossing,
        xdp_filter,
        scaling,
        memory: scale_memory,
        default_memory,
        live,
        parser,
        events,
        latency_us,
    };
    let text = report::render(&results);
    std::fs::write(&args.output, &text)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!("bench: wrote {}", args.output.display());
    Ok(())
}
