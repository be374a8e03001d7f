//! CI's smoke run of `cargo xtask bench`: every section at tiny effort, so
//! the benchmarks cannot rot. It asserts only that each produced its rows;
//! the figures of a smoke run mean nothing. Needs root.
use std::path::PathBuf;

use sipguard_tests::{
    bench::{controller, live, load_baseline, memory, paths, report, Effort},
    Harness,
};

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn every_benchmark_produces_its_rows() {
    let baseline = PathBuf::from(
        std::env::var_os("SIPGUARD_BASELINE_OBJECT")
            .expect("SIPGUARD_BASELINE_OBJECT (set by cargo xtask test)"),
    );
    let effort = Effort::SMOKE;
    let ebpf = load_baseline(&baseline, 0).unwrap();
    let (path_results, bare_drop, bare_pass) = paths::per_path(&ebpf, effort).unwrap();
    assert_eq!(path_results.len(), paths::paths().len());
    let crossing = paths::crossing(&ebpf, effort).unwrap();
    let xdp_filter = paths::xdp_filter_reference(&ebpf, effort).map_err(|e| format!("{e:#}"));
    assert!(xdp_filter.is_ok(), "{xdp_filter:?}");
    let (scaling, memory_rows) = paths::scaling(effort).unwrap();
    assert_eq!(scaling.len(), 3 * 4);
    assert_eq!(memory_rows.len(), 3);
    let default_memory = memory::all_maps(&mut Harness::new("")).unwrap();
    assert!(default_memory.1 > 0);
    let live = live::live(&baseline, effort);
    live::release_bpffs();
    let live = live.unwrap();
    assert_eq!(live.len(), 7);
    assert!(
        live.iter().all(|l| l.pps.median > 0.0),
        "a live contender saw nothing"
    );
    let events = controller::ban_events(effort).unwrap();
    assert!(events.burst_capacity > 0 && events.delivered > 0);
    let latency_us = controller::failure_to_ban_latency(effort).unwrap();
    assert_eq!(latency_us.len(), effort.latency_bans as usize);
    let text = report::render(&report::Results {
        effort,
        bare_drop,
        bare_pass,
        paths: path_results,
        crossing,
        xdp_filter,
        scaling,
        memory: memory_rows,
        default_memory,
        live: Ok(live),
        parser: Some(report::Parser {
            messages_per_second: 1.0,
            corpus_messages: 1,
        }),
        events,
        latency_us,
    });
    for row in [
        "## Targets",
        "| bare XDP_DROP |",
        "| ban hit |",
        "| SIP crossing the limit",
        "*reference:* xdp-filter (xdp-tools) deny hit",
        "## 2. Scaling",
        "| sipguard, deny path |",
        "| nftables inet prerouting",
        "| iptables raw",
        "| xdp-filter",
        "At the default sizes",
        "Failure-to-ban latency",
        "Ban events",
    ] {
        assert!(text.contains(row), "no {row:?} in the report:\n{text}");
    }
}
