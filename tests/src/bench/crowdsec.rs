//! CrowdSec at fleet scale (issue 13): N IP decisions in a real LAPI
//! (Debian's `crowdsec -no-cs`, as the fleet tests start it), then two
//! bouncers, each started afresh against it on the bench's veth:
//! sipguard, and Debian's crowdsec-firewall-bouncer in nftables mode.
//! For each:
//! - the time from the bouncer's start until the kernel holds all N
//!   (sipguard: its ban map; the firewall bouncer: its nft set), or the
//!   cap, whichever comes first;
//! - then the live drop rate of frames from one of the N sources, with all
//!   N entries in force.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use guard_common::BanReason;
use guard_userspace::{clock, kernel::maps::KernelMaps};

use super::{
    live::{self, Counter, Veth, ATTACKER},
    Effort, Stats,
};
use crate::{
    crowdsec::Lapi,
    daemon::{start_guard, Daemon, TempDir, TempFile},
};

/// The decisions besides [`ATTACKER`]: every other address of
/// 100.64.0.0/10 (shared address space, 4 M of them), far from the bench's
/// own links, so that no bouncer cuts itself off its LAPI. Never two
/// neighbours: an interval set could merge those into one element.
const FIRST_OTHER: u32 = u32::from_be_bytes([100, 64, 0, 0]);
/// The firewall bouncer's nft table and set (its defaults).
const NFT_TABLE: &str = "crowdsec";
const NFT_SET: &str = "crowdsec-blacklists";
const BOUNCER_BIN: &str = "crowdsec-firewall-bouncer";

/// How far one bouncer got with the decisions.
#[derive(Debug, Clone)]
pub struct Applied {
    /// Seconds from the bouncer's first request to the LAPI until the
    /// kernel held every decision; None when it did not within the cap.
    pub seconds: Option<f64>,
    /// The same from the start of its process (sipguard's includes loading
    /// and attaching its XDP program).
    pub from_start: Option<f64>,
    /// Decisions in the kernel when it was done (or at the cap).
    pub held: u64,
}

#[derive(Debug, Clone)]
pub struct BouncerResult {
    pub name: String,
    pub applied: Applied,
    /// Frames from a banned source dropped per second of generator time,
    /// with every entry in force; Err: why not measured.
    pub pps: std::result::Result<Stats, String>,
}

#[derive(Debug, Clone)]
pub struct CrowdsecResult {
    pub decisions: u32,
    pub cap: Duration,
    /// How long `cscli decisions import` took to put them in the LAPI.
    pub import_seconds: f64,
    pub sipguard: BouncerResult,
    pub firewall: BouncerResult,
}

impl CrowdsecResult {
    /// How many times faster sipguard put the decisions in the kernel; a
    /// lower bound (`true`) when the firewall bouncer ran into the cap.
    pub fn apply_ratio(&self) -> Option<(f64, bool)> {
        let ours = self.sipguard.applied.seconds?;
        match self.firewall.applied.seconds {
            Some(theirs) => Some((theirs / ours, false)),
            None => Some((self.cap.as_secs_f64() / ours, true)),
        }
    }

    /// How many times faster sipguard drops.
    pub fn drop_ratio(&self) -> Option<f64> {
        match (&self.sipguard.pps, &self.firewall.pps) {
            (Ok(ours), Ok(theirs)) if theirs.median > 0.0 => Some(ours.median / theirs.median),
            _ => None,
        }
    }
}

/// The decisions as `cscli decisions import` reads them: [`ATTACKER`] and
/// `count - 1` others.
fn decisions_csv(count: u32) -> String {
    let mut csv = String::from("duration,scope,type,value,reason\n");
    let mut line = |ip: &str| {
        let _ = writeln!(csv, "12h,ip,ban,{ip},sipguard-bench/load");
    };
    line(ATTACKER);
    for n in 0..count.saturating_sub(1) {
        line(&Ipv4Addr::from(FIRST_OTHER + 2 * n).to_string());
    }
    csv
}

pub fn crowdsec(baseline_path: &std::path::Path, effort: Effort) -> Result<CrowdsecResult> {
    let count = effort.crowdsec_decisions;
    let cap = effort.crowdsec_cap;
    let mut veth = Veth::new("csb", baseline_path, effort)?;
    let lapi = Lapi::start(&veth.link.right)?;
    let dir = TempDir::new("bench-crowdsec");
    let file = format!("{}/decisions.csv", dir.path());
    std::fs::write(&file, decisions_csv(count))?;
    let started = Instant::now();
    lapi.cscli(&["decisions", "import", "-i", file.as_str()])
        .with_context(|| format!("importing {count} decisions:\n{}", lapi.log()))?;
    let import_seconds = started.elapsed().as_secs_f64();
    eprintln!("bench: crowdsec: {count} decisions imported in {import_seconds:.1} s");

    let sipguard = sipguard(&mut veth, &lapi, count, cap, effort)?;
    let firewall = firewall_bouncer(&mut veth, &lapi, &dir, count, cap, effort)?;
    Ok(CrowdsecResult {
        decisions: count,
        cap,
        import_seconds,
        sipguard,
        firewall,
    })
}

/// Drop rates of `runs` live runs.
fn drop_rates(veth: &mut Veth, counter: &Counter, runs: usize) -> Result<Stats> {
    let mut pps = Vec::new();
    for _ in 0..runs {
        pps.push(veth.drop_rate(counter)?.0);
    }
    Ok(Stats::of(&pps))
}

fn sipguard(
    veth: &mut Veth,
    lapi: &Lapi,
    count: u32,
    cap: Duration,
    effort: Effort,
) -> Result<BouncerResult> {
    // Room for every decision, whatever the default capacity.
    let max_bans = (count + count / 2).max(65_536);
    let config = TempFile::new(
        "bench-crowdsec.toml",
        &format!(
            "[guard]\nmax_bans = {max_bans}\n\n[sip_auth]\nenabled = false\n\n\
             [crowdsec]\nlapi_url = \"{}\"\nbouncer_api_key = \"{}\"\npoll_interval = \"1s\"\n",
            lapi.url(),
            lapi.bouncer_key
        ),
    );
    let link = &veth.link;
    let started = Instant::now();
    let (mut daemon, program_id) = start_guard(&link.right, &link.right_if, &config, &[])?;
    let pulling = daemon.wait_for("crowdsec bouncer: pulling decisions", cap);
    let synced = daemon.wait_for("crowdsec full sync", cap);
    let elapsed = started.elapsed().as_secs_f64();
    // The bouncer task logs just before its first request, and once the
    // bans are in the map: the daemon's own time stamps, not this poll's.
    let lapi_to_kernel = match (&pulling, &synced) {
        (Ok(first), Ok(last)) => stamp(last)
            .zip(stamp(first))
            .and_then(|(last, first)| last.duration_since(first).ok())
            .map(|d| d.as_secs_f64()),
        _ => None,
    };
    let maps = KernelMaps::from_program_id(program_id)?;
    let held = maps
        .active_bans(clock::monotonic_ns())?
        .iter()
        .filter(|(_, ban)| ban.reason == BanReason::Crowdsec as u16)
        .count() as u64;
    let done = lapi_to_kernel.is_some() && held >= u64::from(count);
    eprintln!("bench: crowdsec: sipguard held {held} of {count} after {elapsed:.2} s");
    let pps = if done {
        drop_rates(veth, &Counter::XdpPackets, effort.runs).map_err(|e| format!("{e:#}"))
    } else {
        Err(format!(
            "sipguard held {held} of {count} decisions: {}",
            synced.err().map_or(String::new(), |e| format!("{e:#}"))
        ))
    };
    daemon.stop()?;
    Ok(BouncerResult {
        name: "sipguard (XDP, ban map)".into(),
        applied: Applied {
            seconds: lapi_to_kernel.filter(|_| done),
            from_start: done.then_some(elapsed),
            held,
        },
        pps,
    })
}

/// When a line of the daemon's log was written: tracing's RFC 3339 stamp
/// at its start (after any colour codes).
fn stamp(line: &str) -> Option<std::time::SystemTime> {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, then one final letter.
            chars.find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    humantime::parse_rfc3339_weak(plain.split_whitespace().next()?).ok()
}

/// The firewall bouncer's config: nftables mode, IPv4 only (the decisions
/// are), its logs and pid file in `dir`.
fn bouncer_config(dir: &str, url: &str, key: &str) -> String {
    format!(
        "mode: nftables
pid_dir: {dir}/
update_frequency: 1s
daemonize: false
log_mode: file
log_dir: {dir}/
log_level: info
api_url: {url}
api_key: {key}
insecure_skip_verify: false
disable_ipv6: true
deny_action: DROP
deny_log: false
supported_decisions_types:
  - ban
blacklists_ipv4: {NFT_SET}
blacklists_ipv6: crowdsec6-blacklists
nftables:
  ipv4:
    enabled: true
    set-only: false
    table: {NFT_TABLE}
    chain: crowdsec-chain
  ipv6:
    enabled: false
    set-only: false
    table: crowdsec6
    chain: crowdsec6-chain
prometheus:
  enabled: false
  listen_addr: 127.0.0.1
  listen_port: 60601
"
    )
}

/// Elements in the bouncer's set, 0 before it exists.
fn nft_set_len(veth: &Veth) -> u64 {
    let Ok(text) = live::ns_run(
        &veth.link.right,
        "nft",
        &["-j", "list", "set", "ip", NFT_TABLE, NFT_SET],
    ) else {
        return 0;
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|json| {
            json["nftables"].as_array()?.iter().find_map(|item| {
                let set = item.get("set")?;
                Some(
                    set.get("elem")
                        .and_then(|e| e.as_array())
                        .map_or(0, Vec::len) as u64,
                )
            })
        })
        .unwrap_or(0)
}

/// The Debian package's version (the binary's own `-V` says "-").
fn bouncer_version() -> String {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", BOUNCER_BIN])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_else(|| "(version unknown)".into())
}

fn firewall_bouncer(
    veth: &mut Veth,
    lapi: &Lapi,
    dir: &TempDir,
    count: u32,
    cap: Duration,
    effort: Effort,
) -> Result<BouncerResult> {
    let key = lapi.cscli(&["bouncers", "add", "sipguard-bench-firewall", "-o", "raw"])?;
    let key = key.trim().lines().last().unwrap_or_default().to_string();
    if key.is_empty() {
        bail!("cscli bouncers add printed no key");
    }
    let config = format!("{}/crowdsec-firewall-bouncer.yaml", dir.path());
    std::fs::write(&config, bouncer_config(dir.path(), &lapi.url(), &key))?;
    let name = format!("crowdsec-firewall-bouncer {} (nftables)", bouncer_version());
    // Frames redirected into a veth reach a stack without XDP only with GRO on.
    live::set_gro(&veth.link, true)?;
    let started = Instant::now();
    let child = veth
        .link
        .right
        .spawn(BOUNCER_BIN, &["-c", config.as_str()])?;
    let mut bouncer = Daemon::watch(child);
    let mut held = 0;
    let seconds = loop {
        let listing = Instant::now();
        held = held.max(nft_set_len(veth));
        if held >= u64::from(count) {
            break Some(started.elapsed().as_secs_f64());
        }
        if started.elapsed() >= cap {
            break None;
        }
        if let Some(status) = bouncer.exited() {
            bail!(
                "{BOUNCER_BIN} exited ({status}):\n{}",
                std::fs::read_to_string(dir.0.join("crowdsec-firewall-bouncer.log"))
                    .unwrap_or_default()
            );
        }
        // Listing a large set costs CPU the bouncer shares: poll at most a
        // fifth of the time.
        std::thread::sleep((listing.elapsed() * 4).max(Duration::from_millis(200)));
    };
    eprintln!(
        "bench: crowdsec: {BOUNCER_BIN} held {held} of {count} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let pps = if attacker_in_set(veth) {
        live::watch_survivors(&veth.link)?;
        let rates = drop_rates(veth, &Counter::StackDrops, effort.runs);
        live::unwatch_survivors(&veth.link)?;
        rates.map_err(|e| format!("{e:#}"))
    } else {
        Err(format!(
            "its set did not hold {ATTACKER} ({held} of {count})"
        ))
    };
    let _ = bouncer.stop();
    live::set_gro(&veth.link, false)?;
    Ok(BouncerResult {
        name,
        applied: Applied {
            seconds,
            from_start: seconds,
            held,
        },
        pps,
    })
}

fn attacker_in_set(veth: &Veth) -> bool {
    live::ns_run(
        &veth.link.right,
        "nft",
        &[
            "get",
            "element",
            "ip",
            NFT_TABLE,
            NFT_SET,
            &format!("{{ {ATTACKER} }}"),
        ],
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decisions_file_holds_the_attacker_and_distinct_others() {
        let csv = decisions_csv(1_000);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "duration,scope,type,value,reason");
        assert_eq!(lines.len(), 1 + 1_000);
        assert_eq!(
            lines[1],
            format!("12h,ip,ban,{ATTACKER},sipguard-bench/load")
        );
        let values: std::collections::HashSet<&str> = lines[1..]
            .iter()
            .map(|l| l.split(',').nth(3).unwrap())
            .collect();
        assert_eq!(values.len(), 1_000);
        assert!(values.contains("100.64.7.204"));
        assert!(!values.contains("100.64.0.1"));
    }

    #[test]
    fn log_lines_are_timed_by_their_own_stamps() {
        let plain =
            "2026-11-30T06:31:18.250000Z  INFO guard_userspace::fleet::bouncer: crowdsec full sync";
        let coloured = "\x1b[2m2026-11-30T06:31:17.000000Z\x1b[0m \x1b[32m INFO\x1b[0m pulling";
        let (last, first) = (stamp(plain).unwrap(), stamp(coloured).unwrap());
        assert_eq!(
            last.duration_since(first).unwrap(),
            Duration::from_millis(1250)
        );
        assert_eq!(stamp("no stamp here"), None);
    }
}
