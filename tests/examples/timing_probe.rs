//! Quick look at the per-path table alone: `timing_probe BASELINE_OBJECT RUNS REPEAT`.
fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap();
    let runs: usize = args.next().unwrap_or("3".into()).parse()?;
    let repeat: u32 = args.next().unwrap_or("10000000".into()).parse()?;
    let ebpf = sipguard_tests::bench::load_baseline(std::path::Path::new(&path), 0)?;
    let effort = sipguard_tests::bench::Effort {
        runs,
        repeat,
        ..sipguard_tests::bench::Effort::FULL
    };
    let (rows, drop, pass) = sipguard_tests::bench::paths::per_path(&ebpf, effort)?;
    println!("bare drop {:.2} bare pass {:.2}", drop.median, pass.median);
    for r in rows {
        println!(
            "{:40} {:7.2} ns  {:5.2}x",
            r.name, r.ns.median, r.ratio.median
        );
    }
    Ok(())
}
