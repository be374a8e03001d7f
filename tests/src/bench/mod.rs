//! `cargo xtask bench`: the cost of every verdict path against a bare XDP
//! program, scaling to a million entries, memory, live packets on veth, and
//! the controller. Ratios measured side by side in one run, never absolute
//! times alone: these machines are shared and noisy.
pub mod controller;
pub mod crowdsec;
pub mod live;
pub mod memory;
pub mod paths;
pub mod previous;
pub mod report;

use std::time::Instant;

use anyhow::{Context, Result};
use aya::programs::Xdp;

/// How hard to measure: the full run, or CI's smoke run that only proves
/// every row can still be produced.
#[derive(Clone, Copy, Debug)]
pub struct Effort {
    /// BPF_PROG_TEST_RUN repetitions per measurement.
    pub repeat: u32,
    /// Measurements per figure (median, min and max are reported).
    pub runs: usize,
    /// Map sizes for the scaling table.
    pub scale_sizes: [u32; 3],
    /// Distinct sources for per-ban measurements.
    pub distinct_sources: u32,
    /// Bans timed end to end for the latency figure.
    pub latency_bans: u32,
    /// Seconds of live traffic per measurement.
    pub live_seconds: f64,
    /// IP decisions in the LAPI for the CrowdSec bouncers, and how long
    /// one may take to put them in the kernel.
    pub crowdsec_decisions: u32,
    pub crowdsec_cap: std::time::Duration,
    pub smoke: bool,
}

impl Effort {
    pub const FULL: Effort = Effort {
        // Under the 16M limit of the bench's "SIP under the limit" rules.
        repeat: 10_000_000,
        runs: 5,
        scale_sizes: [1_000, 100_000, 1_000_000],
        distinct_sources: 2_000,
        latency_bans: 120,
        live_seconds: 2.0,
        crowdsec_decisions: 100_000,
        crowdsec_cap: std::time::Duration::from_secs(600),
        smoke: false,
    };
    /// `--paths-only --quick`: a minute or two for trying a change to the
    /// packet path; the full run's figures are the ones to report.
    pub const QUICK: Effort = Effort {
        repeat: 1_000_000,
        runs: 3,
        smoke: false,
        ..Effort::SMOKE
    };
    pub const SMOKE: Effort = Effort {
        repeat: 100_000,
        runs: 1,
        scale_sizes: [100, 1_000, 2_000],
        distinct_sources: 50,
        latency_bans: 5,
        live_seconds: 0.2,
        crowdsec_decisions: 1_000,
        crowdsec_cap: std::time::Duration::from_secs(180),
        smoke: true,
    };
}

/// Median, min and max of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Stats {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Stats {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// The value at quantile `q` (0..=1) of a sample.
    pub fn quantile(samples: &[f64], q: f64) -> f64 {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return f64::NAN;
        }
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[index]
    }
}

fn timed_run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(f64, u32)> {
    let start = Instant::now();
    let result = crate::run_xdp(program, frame, repeat)?;
    Ok((start.elapsed().as_nanos() as f64, result.return_value))
}

/// Nanoseconds per packet through BPF_PROG_TEST_RUN.
///
/// Every XDP test run with repeat > 1 pays a fixed cost of about 15 ms (the
/// kernel flips a static key around it), and the kernel's own per-run
/// average is truncated to whole nanoseconds. So this times a run of
/// `repeat + 2` and one of 2 by wall clock and divides the difference by
/// `repeat`: the fixed cost cancels. The figure includes the kernel test
/// loop's small per-iteration cost, the same for every program measured.
pub fn ns_per_packet(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(f64, u32)> {
    let (short, _) = timed_run(program, frame, 2)?;
    let (long, action) = timed_run(program, frame, repeat + 2)?;
    Ok(((long - short).max(0.0) / repeat as f64, action))
}

/// The bench's reference programs (`guard-ebpf/src/bin/baseline.rs`).
pub fn load_baseline(path: &std::path::Path, target_ifindex: u32) -> Result<aya::Ebpf> {
    let mut ebpf = aya::EbpfLoader::new()
        .override_global("TARGET_IFINDEX", &target_ifindex, true)
        .load_file(path)
        .with_context(|| format!("loading {}", path.display()))?;
    for name in ["bare_drop", "bare_pass", "generate"] {
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name}"))?
            .try_into()?;
        program.load()?;
    }
    Ok(ebpf)
}

pub fn xdp<'a>(ebpf: &'a aya::Ebpf, name: &str) -> Result<&'a Xdp> {
    Ok(ebpf
        .program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?)
}

/// Only the per-path table against `previous`, as markdown: a short run
/// for a quiet moment. `only`: the paths whose names contain one of these
/// (all when empty).
pub fn paths_only(
    baseline_path: &std::path::Path,
    previous: &report::Previous,
    effort: Effort,
    only: &[String],
) -> Result<String> {
    let baseline = load_baseline(baseline_path, 0)?;
    eprintln!("bench: per-path costs, against {}", previous.name);
    let per_path = paths::per_path(&baseline, Some(previous.object.as_path()), effort, only)?;
    let versus = per_path.versus.map(|rows| (previous.clone(), rows));
    // The flood's single runs, when the filter asks for its row.
    let flood = if only.is_empty()
        || only
            .iter()
            .any(|name| paths::SIP_FLOOD.contains(name.as_str()))
    {
        eprintln!("bench: spoofed-source SIP flood");
        Some(paths::flood(effort)?)
    } else {
        None
    };
    Ok(report::render_paths_only(
        effort,
        &per_path.paths,
        &versus,
        flood.as_ref(),
    ))
}

/// Runs every benchmark at `effort` and gathers the report's inputs.
/// `criterion` is where `cargo bench` left the parser figures (if it ran);
/// `previous`, an earlier build's XDP object timed path by path beside this one.
pub fn run_all(
    baseline_path: &std::path::Path,
    criterion: Option<&std::path::Path>,
    previous: Option<&report::Previous>,
    effort: Effort,
) -> Result<report::Results> {
    let baseline = load_baseline(baseline_path, 0)?;
    eprintln!("bench: per-path costs");
    let paths::PerPath {
        paths,
        bare_drop,
        bare_pass,
        versus,
    } = paths::per_path(&baseline, previous.map(|p| p.object.as_path()), effort, &[])?;
    let versus = previous.cloned().zip(versus);
    let crossing = paths::crossing(&baseline, effort)?;
    let flood = paths::flood(effort)?;
    let xdp_filter = paths::xdp_filter_reference(&baseline, effort).map_err(|e| format!("{e:#}"));
    eprintln!("bench: scaling to {} entries", effort.scale_sizes[2]);
    let (scaling, memory) = paths::scaling(effort)?;
    let default_memory = memory::all_maps(&mut crate::Harness::try_new("")?)?;
    eprintln!("bench: live packets on veth");
    let live = live::live(baseline_path, effort).map_err(|e| format!("{e:#}"));
    live::release_bpffs();
    eprintln!("bench: CrowdSec, {} decisions", effort.crowdsec_decisions);
    let crowdsec = crowdsec::crowdsec(baseline_path, effort).map_err(|e| format!("{e:#}"));
    eprintln!("bench: controller");
    let events = controller::ban_events(effort)?;
    let latency_us = controller::failure_to_ban_latency(effort)?;
    let parser = criterion.map(report::parser_figures).transpose()?;
    Ok(report::Results {
        effort,
        bare_drop,
        bare_pass,
        paths,
        versus,
        crossing,
        flood,
        xdp_filter,
        scaling,
        memory,
        default_memory,
        live,
        crowdsec,
        parser,
        events,
        latency_us,
    })
}
