//! CI's smoke run of `cargo xtask bench`: every section at tiny effort, so
//! the benchmarks cannot rot. It asserts only that each produced its rows;
//! the figures of a smoke run mean nothing. Needs root.
use std::path::PathBuf;

use sipguard_tests::bench::{self, paths, report, Effort};

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn every_benchmark_produces_its_rows() {
    let baseline = PathBuf::from(
        std::env::var_os("SIPGUARD_BASELINE_OBJECT")
            .expect("SIPGUARD_BASELINE_OBJECT (set by cargo xtask test)"),
    );
    let mut results = bench::run_all(&baseline, None, None, Effort::SMOKE).unwrap();
    assert_eq!(results.paths.len(), paths::paths().len());
    assert!(
        results.xdp_filter.is_ok(),
        "{:?}",
        results.xdp_filter.as_ref().err()
    );
    assert_eq!(results.scaling.len(), 3 * 4);
    assert_eq!(results.memory.len(), 3);
    assert!(results.default_memory.1 > 0);
    let live = results.live.as_ref().expect("live bench");
    assert_eq!(live.len(), 7);
    assert!(
        live.iter().all(|l| l.pps.median > 0.0),
        "a live contender saw nothing"
    );
    let crowdsec = results.crowdsec.as_ref().expect("the CrowdSec bench");
    assert_eq!(crowdsec.decisions, Effort::SMOKE.crowdsec_decisions);
    // sipguard had every decision in its ban map, the firewall bouncer at
    // least the source the live frames come from; both dropped them.
    assert!(crowdsec.sipguard.applied.seconds.is_some(), "{crowdsec:?}");
    assert_eq!(
        crowdsec.sipguard.applied.held,
        u64::from(crowdsec.decisions),
        "{crowdsec:?}"
    );
    assert!(crowdsec.firewall.applied.held > 0, "{crowdsec:?}");
    for bouncer in [&crowdsec.sipguard, &crowdsec.firewall] {
        assert!(
            bouncer.pps.as_ref().is_ok_and(|pps| pps.median > 0.0),
            "{bouncer:?}"
        );
    }
    assert!(results.events.burst_capacity > 0 && results.events.delivered > 0);
    assert_eq!(
        results.latency_us.len(),
        Effort::SMOKE.latency_bans as usize
    );
    // The criterion figures come from `cargo bench`, which a smoke run skips.
    results.parser = Some(report::Parser {
        messages_per_second: 1.0,
        corpus_messages: 1,
    });
    let text = report::render(&results);
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
        "## 1b. Against a previous build\n\nNot measured in this run",
        "## 6. CrowdSec",
        "| sipguard (XDP, ban map) | 1000 of 1000 |",
        "| crowdsec-firewall-bouncer ",
        "| CrowdSec: 1000 IP decisions from the LAPI into the kernel >= 100x faster",
        "| CrowdSec: with 1000 entries in force, live drop pps >= 3x",
    ] {
        assert!(text.contains(row), "no {row:?} in the report:\n{text}");
    }
}

/// `--previous`: an earlier build's object timed path by path beside this
/// one. Here the earlier build is this build's own object, loaded apart:
/// every path must give the same verdict on it, and the report its rows.
#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_previous_build_is_timed_path_by_path() {
    let baseline = PathBuf::from(
        std::env::var_os("SIPGUARD_BASELINE_OBJECT")
            .expect("SIPGUARD_BASELINE_OBJECT (set by cargo xtask test)"),
    );
    let object = PathBuf::from(
        std::env::var_os("SIPGUARD_EBPF_OBJECT")
            .expect("SIPGUARD_EBPF_OBJECT (set by cargo xtask test)"),
    );
    let baseline = bench::load_baseline(&baseline, 0).unwrap();
    let measured = paths::per_path(&baseline, Some(&object), Effort::SMOKE, &[]).unwrap();
    let versus = measured.versus.expect("the previous build's rows");
    // All but the SIP reader's and SIP rules' paths, which run on
    // harnesses of their own.
    let own = paths::paths()
        .iter()
        .filter(|p| p.policy == paths::PathPolicy::Bench)
        .count();
    assert_eq!(versus.len(), own);
    // Timed, not judged: at smoke effort a cheap path's difference of two
    // runs can round to 0 ns on a loaded machine, so a ratio may be
    // undefined; what must hold is that each path ran on the previous build.
    assert!(versus
        .iter()
        .all(|v| v.theirs.median.is_finite() && v.theirs.median >= 0.0));
    assert!(!versus.iter().any(|v| v.name == paths::SIP_REGISTER_READ
        || v.name == paths::SIP_RULES_REGISTER
        || v.name == paths::SIP_RULES_INVITE));
}
