//! Quick look at the per-path table alone:
//! `timing_probe BASELINE_OBJECT [RUNS [REPEAT [PREVIOUS_OBJECT]]]`; with a
//! previous build's object, each path against it in the same rounds.
fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_default();
    let runs: usize = args.next().unwrap_or("3".into()).parse()?;
    let repeat: u32 = args.next().unwrap_or("10000000".into()).parse()?;
    let previous = args.next().map(std::path::PathBuf::from);
    let ebpf = sipguard_tests::bench::load_baseline(std::path::Path::new(&path), 0)?;
    let effort = sipguard_tests::bench::Effort {
        runs,
        repeat,
        ..sipguard_tests::bench::Effort::FULL
    };
    let measured = sipguard_tests::bench::paths::per_path(&ebpf, previous.as_deref(), effort)?;
    println!(
        "bare drop {:.2} bare pass {:.2}",
        measured.bare_drop.median, measured.bare_pass.median
    );
    for r in measured.paths {
        println!(
            "{:40} {:7.2} ns  {:5.2}x",
            r.name, r.ns.median, r.ratio.median
        );
    }
    for v in measured.versus.unwrap_or_default() {
        println!(
            "{:40} {:7.2} ns vs {:7.2} ns previous: {:5.3}x ({:5.3} to {:5.3})",
            v.name, v.ours.median, v.theirs.median, v.ratio.median, v.ratio.min, v.ratio.max
        );
    }
    Ok(())
}
