//! Measures the XDP program's clock base at load (see `guard_common::clock`):
//! the `sipguard_clock` program reads jiffies and the coarse clock, test-run
//! a few ticks apart; the base goes into the `CLOCK` map. If the samples fit
//! no tick length, the map stays empty and the program reads the coarse
//! clock through its helper, as it did before: slower, never wrong.
use std::time::{Duration, Instant};

use aya::{
    maps::Array,
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use guard_common::{
    clock::{ClockBase, ClockSample, CALIBRATION_TICKS},
    map_names as names, CLOCK_PROGRAM_NAME,
};
use tracing::warn;

use super::loader::{kernel, xdp_program, LoadError};

/// Attempts at a base that a third sample agrees with.
const ATTEMPTS: usize = 3;
/// Longest wait for [`CALIBRATION_TICKS`] ticks (40 ms at 250 Hz, 417 ms at 24 Hz).
const MAX_WAIT: Duration = Duration::from_millis(600);

/// Loads the clock program and writes the base it measures. Returns it,
/// or None (with a warning) when the samples fit no tick length.
pub fn calibrate(ebpf: &mut Ebpf) -> Result<Option<ClockBase>, LoadError> {
    let program = xdp_program(ebpf, CLOCK_PROGRAM_NAME)?;
    program
        .load()
        .map_err(kernel("the kernel rejected the clock program"))?;
    let mut found = None;
    for _ in 0..ATTEMPTS {
        if let Some(base) = measure(program)? {
            found = Some(base);
            break;
        }
    }
    let Some(base) = found else {
        warn!(
            "the kernel's tick counter fits no known tick length: the XDP program reads \
             the coarse clock through its helper (slower per banned or counted packet)"
        );
        return Ok(None);
    };
    let mut map: Array<_, ClockBase> = ebpf
        .map_mut(names::CLOCK)
        .ok_or_else(|| LoadError::Missing(format!("map {}", names::CLOCK)))?
        .try_into()
        .map_err(kernel(names::CLOCK))?;
    map.set(0, base, 0)
        .map_err(kernel(format!("writing {}", names::CLOCK)))?;
    Ok(Some(base))
}

/// Samples every 2 ms over [`CALIBRATION_TICKS`] ticks, the base checked
/// against one more.
fn measure(program: &Xdp) -> Result<Option<ClockBase>, LoadError> {
    let mut samples = vec![sample(program)?];
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(2));
        let next = sample(program)?;
        samples.push(next);
        let ticks = next.jiffies.wrapping_sub(samples[0].jiffies);
        if (ticks >= CALIBRATION_TICKS && next.is_steady()) || started.elapsed() > MAX_WAIT {
            break;
        }
    }
    let Some(base) = ClockBase::calibrate(&samples) else {
        return Ok(None);
    };
    std::thread::sleep(Duration::from_millis(1));
    Ok(base.agrees_with(&sample(program)?).then_some(base))
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
