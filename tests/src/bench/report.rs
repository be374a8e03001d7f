//! BENCHMARKS.md: method, machine, tables, and each target met or missed.
use std::{fmt::Write as _, fs};

use super::paths::{SIP_FLOOD, SIP_REGISTER, SIP_REGISTER_READ, SIP_UNDER_LIMIT};
use super::{
    controller::EventRates, crowdsec::CrowdsecResult, live::LiveResult, paths::PathResult,
    paths::ScaleMemory, paths::ScaleResult, paths::VersusResult, Effort, Stats,
};

/// An earlier build of the XDP program to time beside this one.
#[derive(Clone, Debug)]
pub struct Previous {
    pub object: std::path::PathBuf,
    /// What the report calls it (a commit, say).
    pub name: String,
}

/// Where BENCHMARKS.md's hand-written sections begin: a run keeps the
/// file from this line on.
pub const HAND_WRITTEN_MARKER: &str =
    "<!-- Sections below are written by hand; `cargo xtask bench` keeps them. -->";

/// The SIP path's cost against the previous build's that issue 11 asks for.
const SIP_PATH_TARGET: f64 = 0.65;

/// The most this build may be slower than the previous one on any path.
pub const MAX_SLOWDOWN: f64 = 1.05;
use crate::XDP_DROP;

/// Criterion's median for the corpus benchmark, as messages per second.
pub fn parser_figures(criterion_dir: &std::path::Path) -> anyhow::Result<Parser> {
    use anyhow::Context;
    let estimates = criterion_dir.join("sip_parse/corpus/new/estimates.json");
    let text = fs::read_to_string(&estimates)
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
    Ok(Parser {
        messages_per_second: corpus_messages as f64 / (median * 1e-9),
        corpus_messages,
    })
}

pub struct Parser {
    /// Messages per second on one core (criterion's median).
    pub messages_per_second: f64,
    pub corpus_messages: usize,
}

pub struct Results {
    pub effort: Effort,
    pub bare_drop: Stats,
    pub bare_pass: Stats,
    pub paths: Vec<PathResult>,
    /// Each path against the previous build's, when one was given.
    pub versus: Versus,
    pub crossing: (Stats, Stats),
    /// The spoofed-source SIP flood: (reader on, SIP path without it), ns.
    pub flood: (Stats, Stats),
    /// xdp-filter's deny hit in the same framing: (ns, ratio to bare XDP_DROP).
    pub xdp_filter: Result<(Stats, Stats), String>,
    pub scaling: Vec<ScaleResult>,
    pub memory: Vec<ScaleMemory>,
    pub default_memory: (Vec<(String, u64)>, u64),
    pub live: Result<Vec<LiveResult>, String>,
    /// sipguard against Debian's crowdsec-firewall-bouncer.
    pub crowdsec: Result<CrowdsecResult, String>,
    pub parser: Option<Parser>,
    pub events: EventRates,
    pub latency_us: Vec<f64>,
}

fn read(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "- CPU: {cpu} ({cores} cores available)\n- Kernel: {}\n- Clocksource: {}\n- BPF JIT: {} (net.core.bpf_jit_enable)\n",
        read("/proc/sys/kernel/osrelease"),
        read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        match read("/proc/sys/net/core/bpf_jit_enable").as_str() {
            "1" => "on".to_string(),
            other => format!("{other} (not 1: interpreted!)"),
        },
    )
}

fn f(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn range(s: &Stats) -> String {
    format!("{} ({} to {})", f(s.median), f(s.min), f(s.max))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**not met**"
    }
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Table 1's rows, one per path.
fn path_rows(paths: &[PathResult]) -> String {
    let mut out = String::new();
    for p in paths {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            p.name,
            if p.action == XDP_DROP { "drop" } else { "pass" },
            range(&p.ns),
            range(&p.ratio)
        );
    }
    out
}

/// Issue 12's reader budget: `extra` ns for the 600-byte REGISTER read
/// (same frame, same rounds, reader on minus reader off).
fn reader_target(extra: f64) -> String {
    format!(
        "| SIP reader (`[sip_scanners]`): a 600-byte REGISTER costs <= 1 us more than the SIP path | +{} ns | {} |\n",
        f(extra),
        verdict(extra <= 1000.0)
    )
}

/// Issue 12's flood budget: a new source on every packet, reader on, at
/// most 3x the SIP path without it timed the same way.
fn flood_target(flood: &(Stats, Stats)) -> String {
    let ratio = flood.0.median / flood.1.median;
    format!(
        "| spoofed-source SIP flood (600-byte REGISTER, a new source every packet) with the reader on <= 3x today's SIP path per packet | {}x ({} ns against {} ns, kernel-timed single runs) | {} |\n",
        f(ratio),
        f(flood.0.median),
        f(flood.1.median),
        verdict(ratio <= 3.0)
    )
}

/// Table 1's rows for the flood (kernel-timed single runs, so not comparable
/// with the repeated runs above; the ratio is to the row below it).
fn flood_rows(e: Effort, flood: &(Stats, Stats)) -> String {
    format!(
        "| {SIP_FLOOD}, {} sources | pass | {} | {} (to the row below) |\n\
         | SIP 600 B REGISTER without the reader, a new source every packet, timed the same way | pass | {} | 1 |\n",
        e.distinct_sources,
        range(&flood.0),
        f(flood.0.median / flood.1.median),
        range(&flood.1)
    )
}

/// Each path against an earlier build's, when one was given.
pub type Versus = Option<(Previous, Vec<VersusResult>)>;

/// `cargo xtask bench --paths-only`: the machine, table 1's paths and
/// section 1b, with the slowdown target's row.
pub fn render_paths_only(
    effort: Effort,
    paths: &[PathResult],
    versus: &Versus,
    flood: Option<&(Stats, Stats)>,
) -> String {
    let mut out = String::from("# sipguard benchmarks: per-path costs only\n\n");
    let _ = writeln!(
        out,
        "Written by `cargo xtask bench --paths-only` (as root). Every figure is the median of \
         {} runs, with min and max in brackets.\n",
        effort.runs
    );
    let _ = writeln!(out, "## Machine\n\n{}", machine());
    let ns = |name: &str| paths.iter().find(|p| p.name == name).map(|p| p.ns.median);
    let _ = writeln!(
        out,
        "## Target\n\n| target | measured | verdict |\n| --- | --- | --- |\n{}{}{}",
        match (ns(SIP_REGISTER_READ), ns(SIP_REGISTER)) {
            (Some(read), Some(plain)) => reader_target(read - plain),
            _ => String::new(),
        },
        flood.map(flood_target).unwrap_or_default(),
        slowdown_target(versus)
    );
    let _ = writeln!(
        out,
        "## 1. Per-packet cost by path\n\n| path | verdict | ns/packet | ratio to bare |\n| --- | --- | --- | --- |"
    );
    out.push_str(&path_rows(paths));
    if let Some(flood) = flood {
        out.push_str(&flood_rows(effort, flood));
    }
    out.push('\n');
    out.push_str(&versus_section(effort, versus));
    out
}

pub fn render(r: &Results) -> String {
    let mut out = String::new();
    let e = r.effort;
    let _ = writeln!(out, "# sipguard benchmarks\n");
    if e.smoke {
        let _ = writeln!(
            out,
            "> **Smoke run** (CI): tiny repeat counts and map sizes, to prove every row can be \
             produced. These figures mean nothing; see a full `cargo xtask bench`.\n"
        );
    }
    let _ = writeln!(
        out,
        "Written by `cargo xtask bench` (as root). Every figure is the median of {} runs, \
         with min and max in brackets. The machines are shared and noisy, so the figures that \
         matter are ratios measured side by side in the same run.\n",
        e.runs
    );
    let _ = writeln!(out, "## Machine\n\n{}", machine());

    // Targets first: what a reader wants to know.
    let path = |name: &str| r.paths.iter().find(|p| p.name == name);
    let ban = path("ban hit").map(|p| p.ratio.median).unwrap_or(f64::NAN);
    let deny = path("deny hit").map(|p| p.ratio.median).unwrap_or(f64::NAN);
    let sip = path(SIP_UNDER_LIMIT)
        .map(|p| p.ratio.median)
        .unwrap_or(f64::NAN);
    let crossing = r.crossing.0.median / r.crossing.1.median;
    let growth = |name: &str| {
        r.scaling
            .iter()
            .filter(|s| s.path == name)
            .map(|s| s.relative.median)
            .fold(f64::NAN, f64::max)
    };
    let _ = writeln!(
        out,
        "## Targets\n\n| target | measured | verdict |\n| --- | --- | --- |"
    );
    let _ = writeln!(
        out,
        "| banned or denied drop path <= 1.3x bare XDP_DROP | ban {}x, deny {}x | {} |",
        f(ban),
        f(deny),
        verdict(ban <= 1.3 && deny <= 1.3)
    );
    let _ = writeln!(
        out,
        "| full SIP rate-limit path <= 2.5x bare | under the limit {}x (vs XDP_PASS); crossing it, ban insert and event, {}x (vs XDP_DROP) | {} |",
        f(sip),
        f(crossing),
        verdict(sip <= 2.5)
    );
    let ns = |name: &str| path(name).map(|p| p.ns.median).unwrap_or(f64::NAN);
    // The same 600-byte REGISTER, with and without the kernel's SIP reader.
    out.push_str(&reader_target(ns(SIP_REGISTER_READ) - ns(SIP_REGISTER)));
    out.push_str(&flood_target(&r.flood));
    for name in ["ban hit", "IPv4, nothing matched", SIP_UNDER_LIMIT] {
        let g = growth(name);
        let _ = writeln!(
            out,
            "| cost grows <= 10% from small maps to {} entries: {name} | worst {}x | {} |",
            e.scale_sizes[2],
            f(g),
            verdict(g <= 1.10)
        );
    }
    let _ = writeln!(
        out,
        "| deny list (LPM) growth, reported honestly | worst {}x at {} CIDRs | (no target) |",
        f(growth("deny hit")),
        e.scale_sizes[2]
    );
    match &r.live {
        Ok(live) => {
            let get = |prefix: &str| {
                live.iter()
                    .find(|l| l.name.starts_with(prefix))
                    .map(|l| l.ratio.median)
            };
            let best_nft = live
                .iter()
                .filter(|l| l.name.starts_with("nftables"))
                .map(|l| l.pps.median)
                .fold(0.0, f64::max);
            for prefix in ["sipguard, ban path", "sipguard, deny path"] {
                let ratio = get(prefix).unwrap_or(f64::NAN);
                let pps = live
                    .iter()
                    .find(|l| l.name == prefix)
                    .map(|l| l.pps.median)
                    .unwrap_or(f64::NAN);
                let _ = writeln!(
                    out,
                    "| live drop pps >= 0.85x bare XDP_DROP: {prefix} | {}x | {} |",
                    f(ratio),
                    verdict(ratio >= 0.85)
                );
                let vs_nft = pps / best_nft;
                let _ = writeln!(
                    out,
                    "| live drop pps >= 3x the best nftables variant: {prefix} | {}x | {} |",
                    f(vs_nft),
                    verdict(vs_nft >= 3.0)
                );
            }
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "| live drop pps targets | not measured: {e} | **not met** |"
            );
        }
    }
    let _ = write!(out, "{}", crowdsec_targets(r));
    if let Some(p) = &r.parser {
        let _ = writeln!(
            out,
            "| controller parses >= 500k SIP messages/s per core | {} msg/s | {} |",
            si(p.messages_per_second),
            verdict(p.messages_per_second >= 500_000.0)
        );
    } else {
        let _ = writeln!(
            out,
            "| controller parses >= 500k SIP messages/s per core | not measured | **not met** |"
        );
    }
    let p99 = Stats::quantile(&r.latency_us, 0.99);
    let _ = writeln!(
        out,
        "| failure-to-ban p99 < 5 ms | {} us | {} |",
        f(p99),
        verdict(p99 < 5000.0)
    );
    let _ = writeln!(out, "{}", slowdown_target(&r.versus));

    let _ = writeln!(out, "{}", missed_targets(r));
    let _ = writeln!(
        out,
        "## 1. Per-packet cost by path\n\nBPF_PROG_TEST_RUN with repeat {}: the wall time of a \
         run of repeat + 2 minus that of a run of 2, divided by repeat (every repeated XDP test \
         run pays a fixed ~15 ms the difference cancels; the kernel's own average is whole \
         nanoseconds only). This includes the kernel test loop's own small per-iteration cost, \
         the same for every program, so ratios understate differences slightly. The \"SIP under \
         the limit\" path uses rules too high to cross and a new source per measurement. Dropping paths are compared with a bare `XDP_DROP`, passing paths with a \
         bare `XDP_PASS`, both built in this workspace (`guard-ebpf/src/bin/baseline.rs`) and \
         measured in the same rounds.\n",
        e.repeat
    );
    let _ = writeln!(
        out,
        "| path | verdict | ns/packet | ratio to bare |\n| --- | --- | --- | --- |"
    );
    let _ = writeln!(
        out,
        "| bare XDP_DROP | drop | {} | 1 |",
        range(&r.bare_drop)
    );
    let _ = writeln!(
        out,
        "| bare XDP_PASS | pass | {} | 1 |",
        range(&r.bare_pass)
    );
    out.push_str(&path_rows(&r.paths));
    let _ = writeln!(
        out,
        "{}| SIP crossing the limit (ban insert + event), {} distinct sources, kernel-timed single runs | drop | {} | {} |\n\
         | bare XDP_DROP, timed the same way | drop | {} | 1 |\n",
        match &r.xdp_filter {
            Ok((ns, ratio)) => format!(
                "| *reference:* xdp-filter (xdp-tools) deny hit | drop | {} | {} |\n",
                range(ns),
                range(ratio)
            ),
            Err(e) => format!("| *reference:* xdp-filter deny hit | drop | not measured: {e} | |\n"),
        },
        e.distinct_sources,
        range(&r.crossing.0),
        f(crossing),
        range(&r.crossing.1)
    );
    out.push_str(&flood_rows(e, &r.flood));
    out.push('\n');

    let _ = writeln!(out, "{}", versus_section(r.effort, &r.versus));
    let _ = writeln!(
        out,
        "## 2. Scaling\n\nThe same paths with the ban map, the IPv4 deny trie and the rate state \
         filled with N entries (random other sources), relative to the same path on small maps \
         measured in the same rounds.\n\n| entries | path | ns/packet | relative to small maps |\n| --- | --- | --- | --- |"
    );
    for s in &r.scaling {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            s.entries,
            s.path,
            range(&s.ns),
            range(&s.relative)
        );
    }

    let _ = writeln!(
        out,
        "\n## 3. Live packets on veth\n\nTwo namespaces created by the bench, a veth pair between \
         them. A generator program run with BPF_F_TEST_XDP_LIVE_FRAMES (batch 64) redirects \
         UDP frames from a banned/denied source out of the sending veth; the receiving veth runs \
         each contender in turn (XDP contenders in native mode; the nftables and iptables \
         contenders see the frames through the stack, with GRO enabled on the receiving veth, \
         which veth requires for redirected frames without an XDP program). Figure: frames \
         the contender dropped per second of generator wall time, counted on the receiving side \
         (ethtool rx_queue_0_xdp_packets for XDP, rule counters otherwise). Both ends share the \
         machine's CPUs, so absolute pps are low; the ratios compare the contenders.\n"
    );
    match &r.live {
        Ok(live) => {
            let _ = writeln!(
                out,
                "| contender | drops/s | ratio to bare XDP_DROP | frames seen/generated |\n| --- | --- | --- | --- |"
            );
            for l in live {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {:.2} |",
                    l.name,
                    si(l.pps.median),
                    range(&l.ratio),
                    l.received_share
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "Not measured: {e}");
        }
    }

    let _ = writeln!(
        out,
        "\n## 4. Memory\n\nBytes the kernel charges per map (`memlock` in /proc/PID/fdinfo, the \
         map's memory use on 6.x kernels). Hash and LRU maps are preallocated, so they cost \
         their capacity from the start; the LPM trie grows with its entries.\n\n| entries | ban map | IPv4 deny trie | rate state (one entry per source) |\n| --- | --- | --- | --- |"
    );
    for m in &r.memory {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            m.entries,
            bytes(m.bans),
            bytes(m.deny_v4),
            bytes(m.rate_state)
        );
    }
    if let (Some(a), Some(b)) = (r.memory.first(), r.memory.last()) {
        let n = (b.entries - a.entries) as f64;
        let _ = writeln!(
            out,
            "\nPer entry (difference between the smallest and largest run): ban {:.0} B, deny CIDR {:.0} B, \
             tracked source {:.0} B (one rate-state entry, holding the windows of up to four rules).\n",
            (b.bans as f64 - a.bans as f64) / n,
            (b.deny_v4 as f64 - a.deny_v4 as f64) / n,
            (b.rate_state as f64 - a.rate_state as f64) / n,
        );
    }
    let _ = writeln!(
        out,
        "At the default sizes (65,536 bans, 65,536 CIDRs per list, 1,000,000 tracked sources): **{}** in all.\n\n| map | bytes |\n| --- | --- |",
        bytes(r.default_memory.1)
    );
    for (name, b) in &r.default_memory.0 {
        let _ = writeln!(out, "| {name} | {} |", bytes(*b));
    }

    let _ = writeln!(out, "\n## 5. Controller\n");
    if let Some(p) = &r.parser {
        let _ = writeln!(
            out,
            "- SIP parsing: **{} messages/s** on one core (criterion median over a corpus of {} \
             realistic messages: REGISTER with and without credentials, challenges, 200 OK, INVITE \
             with SDP, compact-form scanner traffic; `guard-userspace/benches/sip_parse.rs`).",
            si(p.messages_per_second),
            p.corpus_messages
        );
    }
    let (p50, p99) = (
        Stats::quantile(&r.latency_us, 0.5),
        Stats::quantile(&r.latency_us, 0.99),
    );
    let _ = writeln!(
        out,
        "- Failure-to-ban latency over {} bans, end to end in namespaces: p50 **{} us**, p99 \
         **{} us** (max {} us). Measured from the moment a registrar in the PBX namespace sends \
         the refusal that makes the paranoid level's third proven failure until the source's ban \
         is in the kernel ban map: tc egress capture, ring buffer, parse, tracker, map update.",
        r.latency_us.len(),
        f(p50),
        f(p99),
        f(Stats::of(&r.latency_us).max)
    );
    let ev = &r.events;
    let _ = writeln!(
        out,
        "- Ban events: the 256 KiB ring holds **{}** events with nobody reading. With a reader \
         doing the controller's per-event work, {} bans/s made as fast as BPF_PROG_TEST_RUN can \
         make them (two runs per ban) delivered {} events and lost **{}**: the ring outpaces \
         anything this producer can make, so the maximum rate is at least that figure.",
        ev.burst_capacity,
        si(ev.produced_per_second),
        ev.delivered,
        ev.lost
    );
    let _ = write!(out, "{}", crowdsec_section(r));
    out
}

/// The targets table's CrowdSec rows.
fn crowdsec_targets(r: &Results) -> String {
    let c = match &r.crowdsec {
        Ok(c) => c,
        Err(e) => {
            return format!(
                "| CrowdSec: sipguard applies LAPI decisions >= 100x and drops >= 3x faster than \
                 crowdsec-firewall-bouncer | not measured: {e} | **not met** |\n"
            )
        }
    };
    let mut out = String::new();
    let (apply, apply_met) = match c.apply_ratio() {
        Some((ratio, true)) => (
            format!(
                "more than {}x (the firewall bouncer held {} at the {} cap)",
                f(ratio),
                c.firewall.applied.held,
                guard_userspace::clock::human(c.cap)
            ),
            ratio >= 100.0,
        ),
        Some((ratio, false)) => (format!("{}x", f(ratio)), ratio >= 100.0),
        None => (
            format!(
                "sipguard did not apply them all (held {})",
                c.sipguard.applied.held
            ),
            false,
        ),
    };
    let _ = writeln!(
        out,
        "| CrowdSec: {} IP decisions from the LAPI into the kernel >= 100x faster than \
         crowdsec-firewall-bouncer (nftables) | {apply} | {} |",
        c.decisions,
        verdict(apply_met)
    );
    let drops = c.drop_ratio();
    let _ = writeln!(
        out,
        "| CrowdSec: with {} entries in force, live drop pps >= 3x crowdsec-firewall-bouncer \
         (nftables) | {} | {} |",
        c.decisions,
        drops.map_or_else(|| "not measured".to_string(), |d| format!("{}x", f(d))),
        verdict(drops.is_some_and(|d| d >= 3.0))
    );
    out
}

/// Section 6: sipguard and Debian's firewall bouncer on the same LAPI.
fn crowdsec_section(r: &Results) -> String {
    let mut out = String::from("\n## 6. CrowdSec\n\n");
    let c = match &r.crowdsec {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "Not measured: {e}");
            return out;
        }
    };
    let _ = writeln!(
        out,
        "A real LAPI (Debian's `crowdsec -no-cs`, in a namespace of its own joined to the \
         receiving side of the live veth) holds {} IP ban decisions, put there by `cscli \
         decisions import` in {:.1} s. Each bouncer is then started afresh in the receiving \
         namespace with its own bouncer key and a 1 s poll: first sipguard (its crowdsec \
         bouncer, `poll_interval = \"1s\"`), then Debian's crowdsec-firewall-bouncer in \
         nftables mode (`update_frequency: 1s`, its default table and set). Time to the kernel, \
         until the kernel holds every decision: for sipguard from its bouncer's first request \
         to the LAPI to its \"crowdsec full sync\" log line, written once the bans are in the \
         ban map (the daemon's own log time stamps; the map is then walked to count them), and \
         also from its process start, which includes loading and attaching the XDP program; \
         for the firewall bouncer from its process start (a Go binary that asks the LAPI at \
         once), its nft set listed until it holds them all (no more than a fifth of the time, \
         so the listing takes little from it), or the {} cap. \
         Then, with every entry in force, live frames from one of the banned sources on the \
         veth as in section 3: for sipguard frames its XDP program saw (all dropped), for the \
         firewall bouncer frames the veth handed to the stack less those that got past its \
         input chain (counted by a chain of the bench's own after it).\n",
        c.decisions,
        c.import_seconds,
        guard_userspace::clock::human(c.cap)
    );
    let _ = writeln!(
        out,
        "| bouncer | decisions in the kernel | LAPI to all in the kernel | process start to all in the kernel | drops/s with all in force |\n| --- | --- | --- | --- | --- |"
    );
    let seconds = |s: Option<f64>| {
        s.map_or_else(
            || format!("not within {}", guard_userspace::clock::human(c.cap)),
            |s| format!("{} s", f(s)),
        )
    };
    for b in [&c.sipguard, &c.firewall] {
        let _ = writeln!(
            out,
            "| {} | {} of {} | {} | {} | {} |",
            b.name,
            b.applied.held,
            c.decisions,
            seconds(b.applied.seconds),
            seconds(b.applied.from_start),
            match &b.pps {
                Ok(pps) => format!("{} ({} to {})", si(pps.median), si(pps.min), si(pps.max)),
                Err(e) => format!("not measured: {e}"),
            }
        );
    }
    out
}

fn bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// Where targets are missed: the costs behind them, from this run's figures.
fn missed_targets(r: &Results) -> String {
    let ns = |name: &str| {
        r.paths
            .iter()
            .find(|p| p.name == name)
            .map_or(f64::NAN, |p| p.ns.median)
    };
    let unmatched = ns("IPv4, nothing matched");
    let allow_hit = ns("allow hit (SIP)");
    let under = ns(SIP_UNDER_LIMIT);
    let ban = ns("ban hit");
    let mut out = String::from("## Missed targets: profile and limits\n\n");
    let _ = writeln!(
        out,
        "Profiled by taking paths apart (each figure is a difference of two rows of table 1):\n\n\
         - Counting one SIP packet against the default two rate rules costs about **{} ns** \
         (SIP under the limit minus nothing matched): one LRU hash lookup of the source's rate \
         entry, which holds the windows of all its rules, and the atomic slot updates that keep \
         counts exact across CPUs.\n\
         - An allow-listed SIP source skips the rate rules ({} ns against {} ns for a source \
         under the limit): a per-CPU cache of recent IPv4 sources' allow answers, stamped \
         with the allow lists' generation, answers it with one array read, and the common \
         SIP path pays no trie search either. 23d5e08 searched the allow trie on every \
         packet.\n\
         - Already fixed in this run's code, found by these figures: a precise clock read on \
         every IP packet (now the coarse clock, read only when a ban entry or rate rule needs \
         it: about 25 ns off every path; and since derived from jiffies, an inlined load, \
         under a base the controller measures at load, instead of the coarse clock's helper \
         call: about 5 ns off the ban and counted paths), an allow-list search on every packet (now only \
         where it matters: unmatched IPv4 went from 96 ns to {} ns), and a fleet deny set \
         search on every packet (now only while the set holds entries).\n",
        f(under - unmatched),
        f(allow_hit),
        f(under),
        f(unmatched)
    );
    match &r.xdp_filter {
        Ok((xf, ratio)) => {
            let _ = writeln!(
                out,
                "**The 1.3x and 2.5x per-packet targets are beyond any program that looks an \
                 address up, in this framing.** BPF_PROG_TEST_RUN has no driver, so a bare \
                 XDP_DROP costs only {} ns here, and xdp-filter, the reference deny filter of \
                 xdp-tools, takes **{} ns ({}x bare)** for its single address lookup; sipguard's \
                 ban hit takes {} ns. On a real NIC the driver's own per-packet cost (tens of \
                 nanoseconds) is in both numerator and denominator, which is what the targets \
                 assume; the live veth run below includes such costs.\n",
                f(r.bare_drop.median),
                f(xf.median),
                f(ratio.median),
                f(ban)
            );
        }
        Err(e) => {
            let _ = writeln!(out, "(xdp-filter reference not measured: {e})\n");
        }
    }
    if let Ok(live) = &r.live {
        let get = |name: &str| {
            live.iter()
                .find(|l| l.name.starts_with(name))
                .map_or(f64::NAN, |l| l.ratio.median)
        };
        let _ = writeln!(
            out,
            "**Live on veth, the reference tool misses the 0.85x target too:** xdp-filter drops at \
             {}x bare XDP_DROP, sipguard at {}x (ban path) and {}x (deny path), {} and {} of \
             xdp-filter's rate, while doing more per packet (VLAN/IPv6 parsing, per-reason \
             byte counters, per-ban drop counts). Against nftables sipguard drops {}x faster \
             (ban path vs the best nftables variant), short of the 3x target; on this virtual \
             machine both ends of the veth share two vCPUs, which favours the slower contenders \
             (the generator's fixed cost per frame is a larger share of their time).\n",
            f(get("xdp-filter")),
            f(get("sipguard, ban path")),
            f(get("sipguard, deny path")),
            pct(get("sipguard, ban path") / get("xdp-filter")),
            pct(get("sipguard, deny path") / get("xdp-filter")),
            f(live.iter().find(|l| l.name == "sipguard, ban path").map_or(f64::NAN, |l| l.pps.median)
                / live.iter().filter(|l| l.name.starts_with("nftables")).map(|l| l.pps.median).fold(0.0, f64::max)),
        );
    }
    let _ = writeln!(
        out,
        "**Scaling:** the ban map and the rate state stay within 10% up to a million entries \
         on their hit paths. The \"nothing matched\" path misses in the ban map *and* in the \
         deny trie, which in the scaling run hold the N bans and the N deny CIDRs; its growth \
         (worst {}x) is the misses' in the larger structures, the trie's among them (the deny \
         hit alone grows {}x). Run to run it varies by about 0.1 (earlier full runs measured \
         1.06x to 1.32x).\n",
        f(r.scaling
            .iter()
            .filter(|s| s.path == "IPv4, nothing matched")
            .map(|s| s.relative.median)
            .fold(f64::NAN, f64::max)),
        f(r.scaling
            .iter()
            .filter(|s| s.path == "deny hit")
            .map(|s| s.relative.median)
            .fold(f64::NAN, f64::max)),
    );
    let _ = writeln!(
        out,
        "Next steps that would move these figures, not taken yet: the rate count's 64-bit \
         division per rule (its time slot, about 2 ns each), and IPv4-only keys (a 4-byte ban \
         key and an 8-byte rate key; an experiment measured only about 3 ns off the SIP and \
         allow paths, for a change of every map user). The SIP path's remaining cost is \
         spread thin: the JITed program and its counting function hold no single hot spot.\n"
    );
    out
}

fn pct(ratio: f64) -> String {
    format!("{:.0}%", ratio * 100.0)
}

/// The worst path against the previous build: (name, median ratio).
fn worst_versus(rows: &[VersusResult]) -> Option<(&'static str, f64)> {
    rows.iter()
        .map(|v| (v.name, v.ratio.median))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// The targets table's row for "no path slower than the previous build".
fn slowdown_target(versus: &Versus) -> String {
    let target = format!(
        "no verdict path more than {:.0}% slower than the previous build",
        (MAX_SLOWDOWN - 1.0) * 100.0
    );
    match versus {
        Some((previous, rows)) => {
            let worst = match worst_versus(rows) {
                Some((name, worst)) => format!(
                    "| {target} ({}), same rounds | worst {}x ({name}) | {} |\n",
                    previous.name,
                    f(worst),
                    verdict(worst <= MAX_SLOWDOWN)
                ),
                None => format!("| {target} | no path measured | **not met** |\n"),
            };
            worst + &sip_path_target(previous, rows)
        }
        None => format!(
            "| {target} | not measured in this run (`cargo xtask bench --previous OBJECT`) | (not measured) |\n"
        ),
    }
}

/// Issue 11's row: the SIP path under the limit (one rate entry per
/// source, the peer lookup included) against the previous build's.
fn sip_path_target(previous: &Previous, rows: &[VersusResult]) -> String {
    let target = format!(
        "SIP under the limit, peer lookup included, <= {SIP_PATH_TARGET}x the previous build's"
    );
    match rows.iter().find(|v| v.name == SIP_UNDER_LIMIT) {
        Some(v) => format!(
            "| {target} ({}), same rounds | {}x | {} |\n",
            previous.name,
            f(v.ratio.median),
            verdict(v.ratio.median <= SIP_PATH_TARGET)
        ),
        None => format!(
            "| {target} | not measured (no such path in the previous build) | (not measured) |\n"
        ),
    }
}

/// Section 1b: every path of this build against the previous one's.
fn versus_section(effort: Effort, versus: &Versus) -> String {
    let mut out = String::new();
    let Some((previous, rows)) = versus else {
        let _ = writeln!(
            out,
            "## 1b. Against a previous build\n\nNot measured in this run: `cargo xtask bench \
             --previous OBJECT --previous-name NAME` times an earlier build's XDP object path by \
             path in the same rounds.\n"
        );
        return out;
    };
    let _ = writeln!(
        out,
        "## 1b. Against the previous build ({})\n\nThe previous build's XDP object ({}) loaded \
         beside this one with the same policy and bans, and each path timed on it right after \
         this build's, in the same rounds, {} times; the ratio is this build over the previous, \
         per round (above 1: this build is slower). Both objects were built with the same \
         toolchain on this machine. Paths the previous build does not have are left out.\n",
        previous.name,
        previous.object.display(),
        effort.runs
    );
    let _ = writeln!(
        out,
        "| path | this build, ns | previous build, ns | this / previous | within {:.0}% |\n| --- | --- | --- | --- | --- |",
        (MAX_SLOWDOWN - 1.0) * 100.0
    );
    for v in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            v.name,
            range(&v.ours),
            range(&v.theirs),
            range(&v.ratio),
            if v.ratio.median <= MAX_SLOWDOWN {
                "yes"
            } else {
                "**no**"
            }
        );
    }
    out
}
