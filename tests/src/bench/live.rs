//! Live packets on a veth pair between two namespaces the bench creates:
//! BPF_F_TEST_XDP_LIVE_FRAMES drives a generator program that redirects
//! frames out of the sender's veth; on the receiving veth each contender
//! drops them. Figures are frames dropped per second, side by side, as
//! ratios against the bare XDP_DROP program on the same veth.
//!
//! veth pitfalls handled: frames redirected into a veth are only accepted
//! when its peer runs an XDP program or has GRO on, so the non-XDP
//! contenders (nftables, iptables) get GRO on the receiving veth.
use std::{process::Command, time::Instant};

use anyhow::{bail, ensure, Context, Result};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use guard_common::SourceKey;
use guard_userspace::kernel::maps::KernelMaps;

use super::{load_baseline, Effort, Stats};
use crate::{
    daemon::{start_guard, TempFile},
    frames::udp,
    netns::{Link, NetNs},
};

/// The source of every generated frame.
pub(crate) const ATTACKER: &str = "198.51.100.66";
const BATCH: u32 = 64;

pub struct LiveResult {
    pub name: String,
    pub pps: Stats,
    pub ratio: Stats,
    /// Frames the contender saw, against frames generated (all runs).
    pub received_share: f64,
}

fn run(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

pub(crate) fn ns_run(ns: &NetNs, program: &str, args: &[&str]) -> Result<String> {
    run(ns.command(program).args(args))
}

/// libxdp (xdp-filter) keeps its state in a bpffs. `ip netns exec` remounts
/// /sys, hiding /sys/fs/bpf, so the bench mounts one under /run, which
/// stays visible, and points libxdp at it.
pub(crate) const XDP_BPFFS: &str = "/run/sipguard-bench-bpffs";

pub(crate) fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(XDP_BPFFS))
    {
        return Ok(());
    }
    std::fs::create_dir_all(XDP_BPFFS)?;
    run(Command::new("mount").args(["-t", "bpf", "bpf", XDP_BPFFS])).map(|_| ())
}

/// Unmounts the bench's bpffs (after the last xdp-filter run).
pub fn release_bpffs() {
    let _ = Command::new("umount").arg(XDP_BPFFS).status();
    let _ = std::fs::remove_dir(XDP_BPFFS);
}

pub(crate) fn xdp_filter(ns: &NetNs, args: &[&str]) -> Result<String> {
    run(ns
        .command("xdp-filter")
        .args(args)
        .env("LIBXDP_BPFFS", XDP_BPFFS))
}

fn ethtool_stat(ns: &NetNs, iface: &str, name: &str) -> Result<u64> {
    let text = ns_run(ns, "ethtool", &["-S", iface])?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no ethtool statistic {name}"))
}

fn ifindex(ns: &NetNs, iface: &str) -> Result<u32> {
    let text = ns_run(ns, "ip", &["-o", "link", "show", "dev", iface])?;
    text.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .context("ifindex")
}

fn mac(ns: &NetNs, iface: &str) -> Result<[u8; 6]> {
    let text = ns_run(ns, "cat", &[&format!("/sys/class/net/{iface}/address")])?;
    let mut out = [0u8; 6];
    for (i, part) in text.trim().split(':').enumerate().take(6) {
        out[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(out)
}

/// How a contender counts the frames it dropped.
pub(crate) enum Counter {
    /// rx_queue_0_xdp_packets on the receiving veth (any XDP program).
    XdpPackets,
    /// The packets of an nft rule counter.
    Nft,
    /// The packets of iptables raw PREROUTING rules.
    Iptables,
    /// For a contender that drops in the input hook and counts nothing
    /// itself: the frames the receiving veth handed to the stack (its
    /// rx_packets) less those that got past the contender, which the
    /// bench's own chain after it counts (see [`watch_survivors`]).
    StackDrops,
}

/// The bench's table that counts what gets past the input hook's other
/// chains (a later priority: a dropped frame never reaches it).
const SURVIVORS_TABLE: &str = "sipbench_survivors";

pub(crate) fn watch_survivors(link: &Link) -> Result<()> {
    let rules = format!(
        "table ip {SURVIVORS_TABLE} {{ chain after {{ type filter hook input priority 100; \
         ip saddr {ATTACKER} counter; }}; }}"
    );
    ns_run(&link.right, "nft", &[&rules]).map(|_| ())
}

pub(crate) fn unwatch_survivors(link: &Link) -> Result<()> {
    ns_run(
        &link.right,
        "nft",
        &["delete", "table", "ip", SURVIVORS_TABLE],
    )
    .map(|_| ())
}

fn counter_packets(text: &str) -> u64 {
    text.split("counter packets ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Whatever keeps an installed contender alive (dropped to uninstall it).
type Installed = Option<Box<dyn std::any::Any>>;
type Install = Box<dyn Fn(&Link) -> Result<Installed>>;
type Remove = Box<dyn Fn(&Link) -> Result<()>>;

struct Contender {
    name: String,
    counter: Counter,
    install: Install,
    remove: Remove,
}

pub(crate) fn count(link: &Link, counter: &Counter) -> Result<u64> {
    let ns = &link.right;
    match counter {
        Counter::XdpPackets => ethtool_stat(ns, &link.right_if, "rx_queue_0_xdp_packets"),
        Counter::Nft => Ok(counter_packets(&ns_run(ns, "nft", &["list", "ruleset"])?)),
        Counter::StackDrops => {
            let statistic = format!("/sys/class/net/{}/statistics/rx_packets", link.right_if);
            let received: u64 = ns_run(ns, "cat", &[&statistic])?
                .trim()
                .parse()
                .context("rx_packets")?;
            let table = ns_run(ns, "nft", &["list", "table", "ip", SURVIVORS_TABLE])?;
            Ok(received.saturating_sub(counter_packets(&table)))
        }
        Counter::Iptables => {
            let text = ns_run(
                ns,
                "iptables",
                &["-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n"],
            )?;
            Ok(text
                .lines()
                .skip(2)
                .filter(|l| l.contains("DROP"))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .sum())
        }
    }
}

pub(crate) fn set_gro(link: &Link, on: bool) -> Result<()> {
    ns_run(
        &link.right,
        "ethtool",
        &["-K", &link.right_if, "gro", if on { "on" } else { "off" }],
    )?;
    Ok(())
}

/// An nftables contender: table `sipbench` of `family` with the attacker in
/// set `blocked` and the chain `chain(iface)` makes; GRO on while installed.
fn nft_contender(name: &str, family: &'static str, chain: fn(&str) -> String) -> Contender {
    Contender {
        name: name.into(),
        counter: Counter::Nft,
        install: Box::new(move |link| {
            set_gro(link, true)?;
            let rules = format!(
                "table {family} sipbench {{ set blocked {{ type ipv4_addr; elements = {{ {ATTACKER} }}; }}; {} }}",
                chain(&link.right_if)
            );
            ns_run(&link.right, "nft", &[&rules])?;
            Ok(None)
        }),
        remove: Box::new(move |link| {
            ns_run(&link.right, "nft", &["delete", "table", family, "sipbench"])?;
            set_gro(link, false)
        }),
    }
}

/// Loads a baseline program and attaches it natively to the receiving veth
/// (from a thread inside its namespace: attach resolves the interface there).
fn attach_baseline(
    link: &Link,
    path: &std::path::Path,
    program: &'static str,
) -> Result<aya::Ebpf> {
    let ebpf = load_baseline(path, 0)?;
    let iface = link.right_if.clone();
    link.right
        .run_in(move || -> Result<aya::Ebpf> {
            let mut ebpf = ebpf;
            let xdp: &mut Xdp = ebpf.program_mut(program).context("program")?.try_into()?;
            xdp.attach(&iface, XdpMode::Driver)?;
            Ok(ebpf)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("attach thread panicked"))??
}

fn contenders(baseline_path: std::path::PathBuf) -> Vec<Contender> {
    let bare = Contender {
        name: "bare XDP_DROP".into(),
        counter: Counter::XdpPackets,
        install: Box::new(move |link| {
            let ebpf = attach_baseline(link, &baseline_path, "bare_drop")?;
            Ok(Some(Box::new(ebpf) as Box<dyn std::any::Any>))
        }),
        remove: Box::new(|_| Ok(())),
    };
    let guard = |name: &str, deny: bool| Contender {
        name: name.into(),
        counter: Counter::XdpPackets,
        install: Box::new(move |link| {
            let config = if deny {
                format!("[[deny]]\ncidr = \"{ATTACKER}/32\"\n")
            } else {
                String::new()
            };
            let file = TempFile::new(
                "live.toml",
                &format!("{config}[sip_auth]\nenabled = false\n"),
            );
            let (daemon, program_id) = start_guard(&link.right, &link.right_if, &file, &[])?;
            let mut maps = KernelMaps::from_program_id(program_id)?;
            if !deny {
                let ip: std::net::Ipv4Addr = ATTACKER.parse()?;
                maps.insert_ban(
                    SourceKey::from_ipv4(ip.octets()),
                    guard_common::BanEntry {
                        expires_ns: guard_common::BAN_FOREVER,
                        reason: guard_common::BanReason::Manual as u16,
                        rule: guard_common::NO_RULE,
                        ..Default::default()
                    },
                )?;
            }
            Ok(Some(Box::new((daemon, file, maps, program_id))))
        }),
        remove: Box::new(|_| Ok(())),
    };
    let xdp_filter = Contender {
        name: "xdp-filter (deny mode)".into(),
        counter: Counter::XdpPackets,
        install: Box::new(|link| {
            ensure_bpffs()?;
            xdp_filter(
                &link.right,
                &["load", &link.right_if, "-m", "native", "-f", "ipv4,udp"],
            )?;
            xdp_filter(&link.right, &["ip", ATTACKER, "-m", "src"])?;
            Ok(None)
        }),
        remove: Box::new(|link| {
            xdp_filter(&link.right, &["unload", &link.right_if, "--all"]).map(|_| ())
        }),
    };
    let nft_netdev = nft_contender("nftables netdev ingress, address set", "netdev", |iface| {
        format!(
            "chain ingress {{ type filter hook ingress device {iface} priority -500; \
                 ip saddr @blocked counter drop; }};"
        )
    });
    let nft_inet = nft_contender(
        "nftables inet prerouting, set + meter (40 in 2 s)",
        "inet",
        |_| {
            "chain pre { type filter hook prerouting priority -300; \
             ip saddr @blocked counter drop; \
             udp dport 5060 meter sipflood { ip saddr limit rate over 20/second burst 40 packets } \
             counter drop; };"
                .to_string()
        },
    );
    let iptables = Contender {
        name: "iptables raw, ipset + hashlimit".into(),
        counter: Counter::Iptables,
        install: Box::new(|link| {
            set_gro(link, true)?;
            let ns = &link.right;
            ns_run(ns, "ipset", &["create", "sipbench", "hash:ip"])?;
            ns_run(ns, "ipset", &["add", "sipbench", ATTACKER])?;
            ns_run(
                ns,
                "iptables",
                &[
                    "-t",
                    "raw",
                    "-A",
                    "PREROUTING",
                    "-m",
                    "set",
                    "--match-set",
                    "sipbench",
                    "src",
                    "-j",
                    "DROP",
                ],
            )?;
            ns_run(
                ns,
                "iptables",
                &[
                    "-t",
                    "raw",
                    "-A",
                    "PREROUTING",
                    "-p",
                    "udp",
                    "--dport",
                    "5060",
                    "-m",
                    "hashlimit",
                    "--hashlimit-above",
                    "20/sec",
                    "--hashlimit-burst",
                    "40",
                    "--hashlimit-mode",
                    "srcip",
                    "--hashlimit-name",
                    "sipbench",
                    "-j",
                    "DROP",
                ],
            )?;
            Ok(None)
        }),
        remove: Box::new(|link| {
            let ns = &link.right;
            ns_run(ns, "iptables", &["-t", "raw", "-F", "PREROUTING"])?;
            ns_run(ns, "ipset", &["destroy", "sipbench"])?;
            set_gro(link, false)
        }),
    };
    vec![
        bare,
        guard("sipguard, ban path", false),
        guard("sipguard, deny path", true),
        xdp_filter,
        nft_netdev,
        nft_inet,
        iptables,
    ]
}

/// Whether the kernel and tools allow the live runs here.
fn tools_present() -> bool {
    ["ethtool", "nft", "iptables", "ipset", "xdp-filter"]
        .iter()
        .all(|tool| {
            Command::new("which")
                .arg(tool)
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// The live harness: two namespaces joined by a veth pair, and the
/// generator that sends frames from [`ATTACKER`] out of the left end into
/// the right one, where a contender drops them.
pub(crate) struct Veth {
    pub link: Link,
    generator: Option<aya::Ebpf>,
    frame: Vec<u8>,
    pub frames_per_run: u32,
}

impl Veth {
    pub(crate) fn new(tag: &str, baseline_path: &std::path::Path, effort: Effort) -> Result<Veth> {
        ensure!(
            tools_present(),
            "the live bench needs ethtool, nftables, iptables, ipset and xdp-tools"
        );
        let link = Link::new(tag, &["10.80.0.2/24"], &["10.80.0.1/24"])?;
        let target = ifindex(&link.left, &link.left_if)?;
        let generator = Some(load_baseline(baseline_path, target)?);
        let mut frame = udp(
            ATTACKER,
            "10.80.0.1",
            5060,
            b"REGISTER sip:10.80.0.1 SIP/2.0\r\n\r\n",
        );
        frame[..6].copy_from_slice(&mac(&link.right, &link.right_if)?);
        Ok(Veth {
            link,
            generator,
            frame,
            frames_per_run: ((effort.live_seconds * 1_000_000.0) as u32).max(10_000),
        })
    }

    /// Runs one batch of live frames through the generator, from a thread
    /// in the sending namespace (the redirect's interface is looked up
    /// there); the seconds it took.
    fn generate(&mut self) -> Result<f64> {
        let ebpf = self.generator.take().context("generator in use")?;
        let (frame, frames) = (self.frame.clone(), self.frames_per_run);
        let (ebpf, seconds) = self
            .link
            .left
            .run_in(move || -> Result<(aya::Ebpf, f64)> {
                let program: &Xdp = ebpf.program("generate").context("generate")?.try_into()?;
                let start = Instant::now();
                program
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        repeat: frames,
                        attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                        ..TestRunOptions::default()
                    })
                    .context("live-frames run")?;
                let seconds = start.elapsed().as_secs_f64();
                Ok((ebpf, seconds))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("generator thread panicked"))???;
        self.generator = Some(ebpf);
        Ok(seconds)
    }

    /// One run: the frames `counter` counted per second of generator time,
    /// and how many it counted.
    pub(crate) fn drop_rate(&mut self, counter: &Counter) -> Result<(f64, u64)> {
        let before = count(&self.link, counter)?;
        let seconds = self.generate()?;
        std::thread::sleep(std::time::Duration::from_millis(50));
        let after = count(&self.link, counter)?;
        let received = after.saturating_sub(before);
        Ok((received as f64 / seconds, received))
    }
}

pub fn live(baseline_path: &std::path::Path, effort: Effort) -> Result<Vec<LiveResult>> {
    let mut veth = Veth::new("live", baseline_path, effort)?;
    let mut results: Vec<(String, Vec<f64>, u64, u64)> = Vec::new();
    let all = contenders(baseline_path.to_path_buf());
    for contender in &all {
        results.push((contender.name.clone(), Vec::new(), 0, 0));
    }
    for _ in 0..effort.runs {
        for (i, contender) in all.iter().enumerate() {
            let installed = (contender.install)(&veth.link)?;
            let (pps, received) = veth.drop_rate(&contender.counter)?;
            drop(installed);
            (contender.remove)(&veth.link)?;
            results[i].1.push(pps);
            results[i].2 += received;
            results[i].3 += veth.frames_per_run as u64;
        }
    }
    let bare = results[0].1.clone();
    Ok(results
        .into_iter()
        .map(|(name, pps, received, generated)| LiveResult {
            name,
            ratio: Stats::of(
                &pps.iter()
                    .zip(&bare)
                    .map(|(p, b)| p / b)
                    .collect::<Vec<_>>(),
            ),
            pps: Stats::of(&pps),
            received_share: received as f64 / generated.max(1) as f64,
        })
        .collect())
}
