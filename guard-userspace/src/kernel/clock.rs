//! Measures the XDP program's clock base at load (see `guard_common::clock`):
//! the `sipguard_clock` program reads jiffies and the coarse clock, test-run
//! over ten ticks; the base goes into the `CLOCK` map. If the samples fit
//! no tick length, the map holds none and the program reads the coarse
//! clock through its helper, as it did before: slower, never wrong.
use std::time::{Duration, Instant};

use aya::{
    maps::{Array, MapData},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use guard_common::{
    clock::{ClockBase, ClockSample, CALIBRATION_TICKS},
    map_names as names, CLOCK_PROGRAM_NAME,
};
use tracing::warn;

use super::loader::{kernel, xdp_program, LoadError};

/// Attempts at a base that a later sample agrees with.
const ATTEMPTS: usize = 3;
/// Longest wait for [`CALIBRATION_TICKS`] ticks (100 ms at 100 Hz).
const MAX_WAIT: Duration = Duration::from_millis(300);

/// Loads the clock program and makes the `CLOCK` map hold a base that fresh
/// samples agree with; returns that base, or None (with a warning) when the
/// program is to read the coarse clock through its helper.
///
/// A base already in the map (pinned by an earlier controller, in this
/// boot: bpffs does not outlive one) that the samples agree with is kept
/// and not written again: the program of that controller may still be
/// running, and a 24-byte map write is not atomic to its readers. Failing
/// to measure is never fatal.
pub fn calibrate(ebpf: &mut Ebpf) -> Result<Option<ClockBase>, LoadError> {
    let existing = clock_map(ebpf)?
        .get(&0, 0)
        .map_err(kernel(format!("reading {}", names::CLOCK)))?;
    let existing = (existing.tick_ns != 0).then_some(existing);
    let found = match measure(ebpf, existing) {
        Ok(found) => found,
        Err(e) => {
            warn!("cannot read the kernel's clocks ({e}): {FALLBACK}");
            return Ok(existing);
        }
    };
    match found {
        Measured::Kept(base) => Ok(Some(base)),
        Measured::New(base) => {
            clock_map(ebpf)?
                .set(0, base, 0)
                .map_err(kernel(format!("writing {}", names::CLOCK)))?;
            Ok(Some(base))
        }
        Measured::Nothing => {
            warn!("the kernel's tick counter fits no tick length sipguard knows: {FALLBACK}");
            if existing.is_some() {
                // The samples contradict it: the helper is safer.
                clock_map(ebpf)?
                    .set(0, ClockBase::default(), 0)
                    .map_err(kernel(format!("clearing {}", names::CLOCK)))?;
            }
            Ok(None)
        }
    }
}

enum Measured {
    /// The base already in the map agrees with fresh samples.
    Kept(ClockBase),
    New(ClockBase),
    Nothing,
}

/// Up to [`ATTEMPTS`] runs of samples until one gives a base its check
/// sample agrees with.
fn measure(ebpf: &mut Ebpf, existing: Option<ClockBase>) -> Result<Measured, LoadError> {
    let program = xdp_program(ebpf, CLOCK_PROGRAM_NAME)?;
    program
        .load()
        .map_err(kernel("the kernel rejected the clock program"))?;
    for _ in 0..ATTEMPTS {
        let samples = attempt(program)?;
        if let Some(base) = existing {
            // Three quarters, as in the calibration: a sample taken between
            // a jiffies increment and its clock update reads a tick behind.
            let steady = samples.iter().filter(|s| s.is_steady());
            let agreeing = steady.clone().filter(|s| base.agrees_with(s)).count();
            if agreeing > 0 && agreeing * 4 >= steady.count() * 3 {
                return Ok(Measured::Kept(base));
            }
        }
        let Some((check, measured)) = samples.split_last() else {
            continue;
        };
        if let Some(base) = ClockBase::calibrate(measured).filter(|b| b.agrees_with(check)) {
            return Ok(Measured::New(base));
        }
    }
    Ok(Measured::Nothing)
}

const FALLBACK: &str =
    "the XDP program reads the coarse clock through its helper (slower per banned or counted packet)";

pub(super) fn clock_map(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, ClockBase>, LoadError> {
    ebpf.map_mut(names::CLOCK)
        .ok_or_else(|| LoadError::Missing(format!("map {}", names::CLOCK)))?
        .try_into()
        .map_err(kernel(names::CLOCK))
}

/// Samples every 2 ms until the steady ones span [`CALIBRATION_TICKS`]
/// ticks, then one more 20 ms later, which the base must agree with.
fn attempt(program: &Xdp) -> Result<Vec<ClockSample>, LoadError> {
    let mut samples = vec![sample(program)?];
    let started = Instant::now();
    let mut first_steady = samples.iter().find(|s| s.is_steady()).map(|s| s.jiffies);
    while started.elapsed() < MAX_WAIT {
        std::thread::sleep(Duration::from_millis(2));
        let next = sample(program)?;
        samples.push(next);
        if !next.is_steady() {
            continue;
        }
        let first = *first_steady.get_or_insert(next.jiffies);
        if next.jiffies.wrapping_sub(first) >= CALIBRATION_TICKS {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    samples.push(sample(program)?);
    Ok(samples)
}
fn sample(program: &Xdp) -> Result<ClockSample, LoadError> {
    // Room for an Ethernet header: the kernel refuses shorter XDP test packets.
    let packet = [0u8; 64];
    let mut out = [0u8; 64];
    program
        .test_run(TestRunOptions {
            data_in: Some(&packet),
            data_out: Some(&mut out),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .map_err(kernel("test-running the clock program"))?;
    ClockSample::from_bytes(&out).ok_or_else(|| LoadError::Kernel {
        what: "test-running the clock program".into(),
        detail: "it returned a short packet".into(),
    })
}
