//! Per-packet cost of every verdict path, and how it scales with map sizes,
//! through BPF_PROG_TEST_RUN, against the bare XDP_DROP/XDP_PASS programs.
use anyhow::{bail, ensure, Context, Result};
use guard_common::{BanEntry, BanReason, RateKey, RateState, SourceKey, BAN_FOREVER, NO_RULE};
use guard_userspace::{clock::monotonic_ns, kernel::maps::NetList};

use super::{memory, ns_per_packet, xdp, Effort, Stats};
use crate::{frames::*, run_xdp, Harness, XDP_DROP, XDP_PASS};

const PBX4: &str = "192.0.2.1";
const PBX6: &str = "2001:db8:ffff::1";
const BANNED: &str = "198.51.100.50";
const EXPIRED: &str = "198.51.100.51";

/// The bench policy: an allow and a deny entry, and the default's two rules
/// on SIP/UDP 5060 with limits no benchmark run reaches (the "under the
/// limit" path repeats one source millions of times).
fn policy(max_bans: u32, max_cidrs: u32, max_tracked: u32) -> String {
    format!(
        r#"
[guard]
max_bans = {max_bans}
max_cidrs = {max_cidrs}
max_tracked_sources = {max_tracked}
[[allow]]
cidr = "10.1.0.0/16"
[[deny]]
cidr = "203.0.113.0/24"
[[deny]]
cidr = "2001:db8:bad::/48"
[[rate_rules]]
name = "sip-huge-1h"
ports = ["5060/udp"]
packets = 16000000
window = "1h"
ban = "1h"
[[rate_rules]]
name = "sip-huge-24h"
ports = ["5060/udp"]
packets = 16000000
window = "24h"
ban = "1h"
"#
    )
}

pub struct Path {
    pub name: &'static str,
    pub frame: Vec<u8>,
    pub action: u32,
    /// Time it from a new source each measurement, so that repeated
    /// measurements never add up to a rate limit.
    pub fresh_source: bool,
    /// The policy it runs under.
    pub policy: PathPolicy,
    /// Timed with the SIP capture ring drained before every run of
    /// [`CAPTURED_RUN`] packets, so that each packet's capture is copied.
    /// Elsewhere nobody reads the ring, which fills at once: the SIP rows
    /// then time a full ring's path (the capture counted lost), in both builds.
    pub captures_read: bool,
}

/// Packets per timed run while the capture ring is read: the ring holds
/// about 2,000 records.
const CAPTURED_RUN: u32 = 1_000;
/// Runs per measurement while the capture ring is read.
const CAPTURED_RUNS: u32 = 10;

/// The bench policy, with the SIP reader on, or with SIP rules (each in a
/// harness of its own; the earlier build is not timed on the last two).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PathPolicy {
    Bench,
    Reader,
    Rules,
}

/// The bench policy with the SIP reader on (`[sip_scanners]`, the built-in
/// fingerprints).
fn reader_policy() -> String {
    format!(
        "{}\n[sip_scanners]\nenabled = true\n",
        policy(65_536, 65_536, 100_000)
    )
}

/// The bench policy with an extension rule for 1001 (its permitted network
/// holds the bench's fresh sources, 100.100.0.0 and up) and a dial rule
/// against international calls (from 10.9.0.0/16 only, no ban: every
/// measurement sees the same drop). No fingerprints: rules alone make the
/// kernel read.
fn rules_policy() -> String {
    format!(
        r#"{}
[[extension_rules]]
name = "1001 from the bench's sources"
users = ["1001"]
permit = ["100.64.0.0/10"]
[[dial_rules]]
name = "international"
prefixes = ["00"]
permit = ["10.9.0.0/16"]
"#,
        policy(65_536, 65_536, 100_000)
    )
}

pub const SIP_UNDER_LIMIT: &str = "SIP under the limit (2 rules)";
/// The same, with its capture copied to a ring that is read.
pub const SIP_UNDER_LIMIT_CAPTURED: &str = "SIP under the limit, capture read (2 rules)";
pub const SIP_REGISTER: &str = "SIP 600 B REGISTER (2 rules)";
/// The same frame with `[sip_scanners]` on (a harness of its own).
pub const SIP_REGISTER_READ: &str = "SIP 600 B REGISTER read, no fingerprint (2 rules)";
/// The same REGISTER under an extension rule naming its user, from a
/// permitted network: read, one LPM lookup, passed.
pub const SIP_RULES_REGISTER: &str =
    "SIP 600 B REGISTER, extension rule permits its network (SIP rules)";
/// An INVITE to an international number from a source the dial rule does
/// not permit: read, two LPM lookups, dropped (dial_denied).
pub const SIP_RULES_INVITE: &str = "SIP 600 B INVITE to 00..., dial rule drops (SIP rules)";

/// A typical REGISTER with credentials, about 600 bytes of payload: what
/// the kernel's SIP reader reads (issue 12's budget: at most 1 us more than
/// the SIP path without it).
pub fn register_600() -> Vec<u8> {
    let message = "REGISTER sip:pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.52:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: \"Alice\" <sip:1001@pbx.example.com>\r\n\
From: \"Alice\" <sip:1001@pbx.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@198.51.100.52\r\n\
CSeq: 2 REGISTER\r\n\
Contact: <sip:1001@198.51.100.52:5060;transport=udp>;expires=3600\r\n\
Authorization: Digest username=\"1001\", realm=\"pbx.example.com\", \
nonce=\"5f1a0c2e8b7d4a61b3e9\", uri=\"sip:pbx.example.com\", \
response=\"0b6e2c0bd8a1e4b2f1c9a7d3e5f60718\", algorithm=MD5\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, OPTIONS, INFO, SUBSCRIBE, UPDATE, MESSAGE\r\n\
Supported: replaces, path, gruu\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";
    message.as_bytes().to_vec()
}

/// A typical INVITE with an SDP offer, about 600 bytes of payload, dialling
/// an international number.
pub fn invite_600() -> Vec<u8> {
    let sdp = "v=0\r\n\
o=1001 8000 8000 IN IP4 198.51.100.52\r\n\
s=call\r\n\
c=IN IP4 198.51.100.52\r\n\
t=0 0\r\n\
m=audio 12000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=sendrecv\r\n";
    let message = format!(
        "INVITE sip:0044201234567@pbx.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.52:5060;branch=z9hG4bK74bf9;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:0044201234567@pbx.example.com>\r\n\
From: \"Alice\" <sip:1001@pbx.example.com>;tag=9fxced76sl\r\n\
Call-ID: 3848276298220188511@198.51.100.52\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:1001@198.51.100.52:5060;transport=udp>\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, OPTIONS, INFO, UPDATE\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    message.into_bytes()
}

/// The frame to time for `path` (see [`Path::fresh_source`]): an IPv4
/// path's frame with a new source address.
fn frame_for(path: &Path, measurement: &mut u32) -> Vec<u8> {
    let mut frame = path.frame.clone();
    if !path.fresh_source {
        return frame;
    }
    *measurement += 1;
    let n = *measurement;
    let source = [100, 100 + ((n >> 16) % 28) as u8, (n >> 8) as u8, n as u8];
    // The IPv4 source address (checksums are not checked on this path).
    frame[ETH_LEN + 12..ETH_LEN + 16].copy_from_slice(&source);
    frame
}

pub fn paths() -> Vec<Path> {
    let mut truncated = udp("198.51.100.1", PBX4, 5060, b"REGISTER");
    truncated.truncate(ETH_LEN + 10);
    let p = |name, frame, action| Path {
        name,
        frame,
        action,
        fresh_source: false,
        policy: PathPolicy::Bench,
        captures_read: false,
    };
    let fresh = |policy, name, frame, action| Path {
        fresh_source: true,
        policy,
        ..p(name, frame, action)
    };
    vec![
        p("non-IP (ARP)", arp(), XDP_PASS),
        p(
            "IPv4, nothing matched",
            udp("198.51.100.1", PBX4, 9999, b"x"),
            XDP_PASS,
        ),
        p(
            "IPv6, nothing matched",
            udp("2001:db8:b::1", PBX6, 9999, b"x"),
            XDP_PASS,
        ),
        p(
            "deny hit",
            udp("203.0.113.5", PBX4, 5060, b"REGISTER"),
            XDP_DROP,
        ),
        p(
            "allow hit (SIP)",
            udp("10.1.2.3", PBX4, 5060, b"REGISTER"),
            XDP_PASS,
        ),
        p("ban hit", udp(BANNED, PBX4, 5060, b"REGISTER"), XDP_DROP),
        p("expired ban", udp(EXPIRED, PBX4, 9999, b"x"), XDP_PASS),
        fresh(
            PathPolicy::Bench,
            SIP_UNDER_LIMIT,
            udp("198.51.100.52", PBX4, 5060, b"REGISTER"),
            XDP_PASS,
        ),
        Path {
            captures_read: true,
            ..fresh(
                PathPolicy::Bench,
                SIP_UNDER_LIMIT_CAPTURED,
                udp("198.51.100.52", PBX4, 5060, b"REGISTER"),
                XDP_PASS,
            )
        },
        fresh(
            PathPolicy::Bench,
            SIP_REGISTER,
            udp("198.51.100.52", PBX4, 5060, &register_600()),
            XDP_PASS,
        ),
        fresh(
            PathPolicy::Reader,
            SIP_REGISTER_READ,
            udp("198.51.100.52", PBX4, 5060, &register_600()),
            XDP_PASS,
        ),
        fresh(
            PathPolicy::Rules,
            SIP_RULES_REGISTER,
            udp("198.51.100.52", PBX4, 5060, &register_600()),
            XDP_PASS,
        ),
        fresh(
            PathPolicy::Rules,
            SIP_RULES_INVITE,
            udp("198.51.100.52", PBX4, 5060, &invite_600()),
            XDP_DROP,
        ),
        p("malformed (truncated IPv4)", truncated, XDP_DROP),
        p(
            "RTP pass",
            udp("198.51.100.53", PBX4, 12000, &[0x80; 172]),
            XDP_PASS,
        ),
    ]
}

fn ban(expires_ns: u64) -> BanEntry {
    BanEntry {
        expires_ns,
        created_ns: monotonic_ns(),
        reason: BanReason::Manual as u16,
        rule: NO_RULE,
        ..BanEntry::default()
    }
}

/// The bench's two bans: one in force, one expired.
fn bench_bans() -> [(SourceKey, BanEntry); 2] {
    [
        (ban_key(BANNED), ban(BAN_FOREVER)),
        (ban_key(EXPIRED), ban(1)),
    ]
}

/// A harness with the bench policy, the banned and expired-ban sources in place.
pub fn bench_harness(max_bans: u32, max_cidrs: u32, max_tracked: u32) -> Result<Harness> {
    let mut h = Harness::try_new(&policy(max_bans, max_cidrs, max_tracked))?;
    let maps = h.guard.maps_mut();
    for (key, entry) in bench_bans() {
        maps.insert_ban(key, entry)?;
    }
    Ok(h)
}

/// One row of the per-path table.
pub struct PathResult {
    pub name: &'static str,
    pub action: u32,
    pub ns: Stats,
    /// Against bare XDP_DROP for dropping paths, bare XDP_PASS for passing ones.
    pub ratio: Stats,
}

/// One path timed in this build and in an earlier one (`--previous`), in
/// the same rounds: each measurement of ours is followed by one of theirs.
pub struct VersusResult {
    pub name: &'static str,
    pub ours: Stats,
    pub theirs: Stats,
    /// Ours over theirs, per round: above 1, this build is slower.
    pub ratio: Stats,
}

/// The per-path table, and the earlier build's paths when one was given.
pub struct PerPath {
    pub paths: Vec<PathResult>,
    pub bare_drop: Stats,
    pub bare_pass: Stats,
    pub versus: Option<Vec<VersusResult>>,
}

/// Measures every path and both baselines round-robin, `effort.runs` times;
/// with `previous` (an earlier build's object), each path of it right
/// after ours, with the same policy and bans. The SIP reader's path is
/// left out of the comparison when the earlier build has no reader.
/// `only`: the paths whose names contain one of these (all when empty).
pub fn per_path(
    baseline: &aya::Ebpf,
    previous: Option<&std::path::Path>,
    effort: Effort,
    only: &[String],
) -> Result<PerPath> {
    let mut h = bench_harness(65_536, 65_536, 100_000)?;
    let mut previous = previous
        .map(|object| {
            super::previous::Previous::load(object, &h.policy, &bench_bans(), 65_536, 100_000)
        })
        .transpose()?;
    // The SIP reader is off by default; its paths run with it on, or
    // with SIP rules.
    let mut reader = Harness::try_new(&reader_policy())?;
    let mut rules = Harness::try_new(&rules_policy())?;
    let paths: Vec<Path> = paths()
        .into_iter()
        .filter(|path| only.is_empty() || only.iter().any(|name| path.name.contains(name.as_str())))
        .collect();
    ensure!(!paths.is_empty(), "no path's name contains any of {only:?}");
    let bare_drop = xdp(baseline, "bare_drop")?;
    let bare_pass = xdp(baseline, "bare_pass")?;
    let frame = udp("198.51.100.1", PBX4, 9999, b"x");
    let mut drop_ns = Vec::new();
    let mut pass_ns = Vec::new();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut theirs: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut versus: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut measurement = 0;
    for _ in 0..effort.runs {
        let (d, _) = ns_per_packet(bare_drop, &frame, effort.repeat)?;
        let (p, _) = ns_per_packet(bare_pass, &frame, effort.repeat)?;
        drop_ns.push(d);
        pass_ns.push(p);
        for (i, path) in paths.iter().enumerate() {
            let frame = frame_for(path, &mut measurement);
            let (ns, action) = if path.captures_read {
                ns_with_captures_read(&mut h, &frame)?
            } else {
                let program = match path.policy {
                    PathPolicy::Bench => h.guard.program()?,
                    PathPolicy::Reader => reader.guard.program()?,
                    PathPolicy::Rules => rules.guard.program()?,
                };
                ns_per_packet(program, &frame, effort.repeat)?
            };
            ensure!(
                action == path.action,
                "{}: action {action}, expected {}",
                path.name,
                path.action
            );
            samples[i].push(ns);
            ratios[i].push(ns / if path.action == XDP_DROP { d } else { p });
            let comparable = path.policy == PathPolicy::Bench;
            if let Some(previous) = previous.as_mut().filter(|_| comparable) {
                let frame = frame_for(path, &mut measurement);
                let (old, action) = if path.captures_read {
                    previous_ns_with_captures_read(previous, &frame)?
                } else {
                    ns_per_packet(previous.program()?, &frame, effort.repeat)?
                };
                ensure!(
                    action == path.action,
                    "{} in the previous build: action {action}, expected {}",
                    path.name,
                    path.action
                );
                theirs[i].push(old);
                versus[i].push(ns / old);
            }
        }
    }
    let versus = previous.map(|_| {
        paths
            .iter()
            .enumerate()
            .filter(|(i, _)| !theirs[*i].is_empty())
            .map(|(i, path)| VersusResult {
                name: path.name,
                ours: Stats::of(&samples[i]),
                theirs: Stats::of(&theirs[i]),
                ratio: Stats::of(&versus[i]),
            })
            .collect()
    });
    let results = paths
        .iter()
        .enumerate()
        .map(|(i, path)| PathResult {
            name: path.name,
            action: path.action,
            ns: Stats::of(&samples[i]),
            ratio: Stats::of(&ratios[i]),
        })
        .collect();
    Ok(PerPath {
        paths: results,
        bare_drop: Stats::of(&drop_ns),
        bare_pass: Stats::of(&pass_ns),
        versus,
    })
}

/// The kernel's own average over [`CAPTURED_RUNS`] runs of
/// [`CAPTURED_RUN`] packets, the capture ring drained before each (whole
/// nanoseconds per run: a run this short is too short for
/// [`ns_per_packet`]'s wall-clock difference, whose fixed cost of about
/// 15 ms a run varies by more than the run takes); fails unless every
/// packet of a run was captured.
fn ns_with_captures_read(h: &mut Harness, frame: &[u8]) -> Result<(f64, u32)> {
    average_of_captured_runs(|| {
        let result = run_xdp(h.guard.program()?, frame, CAPTURED_RUN)?;
        Ok((result, h.drain_sip_captures().len()))
    })
}

/// [`ns_with_captures_read`] for the earlier build.
fn previous_ns_with_captures_read(
    previous: &mut super::previous::Previous,
    frame: &[u8],
) -> Result<(f64, u32)> {
    average_of_captured_runs(|| {
        let result = run_xdp(previous.program()?, frame, CAPTURED_RUN)?;
        Ok((result, previous.drain_captures()))
    })
}

/// Averages [`CAPTURED_RUNS`] calls of `run_and_drain` (a test run of
/// [`CAPTURED_RUN`] packets, and the records it then drained from the
/// ring); the first call is not counted: it empties the ring.
fn average_of_captured_runs(
    mut run_and_drain: impl FnMut() -> Result<(aya::programs::TestRunResult, usize)>,
) -> Result<(f64, u32)> {
    run_and_drain()?;
    let mut total = 0.0;
    let mut action = 0;
    for _ in 0..CAPTURED_RUNS {
        let (result, captured) = run_and_drain()?;
        ensure!(
            captured == CAPTURED_RUN as usize,
            "{captured} captures of {CAPTURED_RUN} packets"
        );
        total += result.duration.as_nanos() as f64;
        action = result.return_value;
    }
    Ok((total / CAPTURED_RUNS as f64, action))
}

/// The packet that crosses a rate limit: it inserts the ban and sends the
/// event. Each source crosses once, so every sample is a single run timed by
/// the kernel (whole nanoseconds), against bare XDP_DROP timed the same way.
pub fn crossing(baseline: &aya::Ebpf, effort: Effort) -> Result<(Stats, Stats)> {
    let mut h = Harness::try_new(
        "[guard]\nmax_bans = 200000\n[[rate_rules]]\nname = \"one\"\nports = [\"5060/udp\"]\npackets = 1\nwindow = \"1h\"\nban = \"1h\"\n",
    )?;
    let bare_drop = xdp(baseline, "bare_drop")?;
    let mut ours = Vec::new();
    let mut bare = Vec::new();
    let mut events = 0;
    for i in 0..effort.distinct_sources {
        let source = format!("100.{}.{}.{}", 64 + (i >> 16) % 64, (i >> 8) & 255, i & 255);
        let frame = udp(&source, PBX4, 5060, b"REGISTER");
        ensure!(h.run(&frame) == XDP_PASS, "first packet of {source}");
        let result = run_xdp(h.guard.program()?, &frame, 1)?;
        ensure!(
            result.return_value == XDP_DROP,
            "crossing packet of {source} passed"
        );
        ours.push(result.duration.as_nanos() as f64);
        let result = run_xdp(bare_drop, &frame, 1)?;
        bare.push(result.duration.as_nanos() as f64);
        if i % 1000 == 999 {
            events += h.drain_ban_events().len();
        }
    }
    events += h.drain_ban_events().len();
    ensure!(
        events == effort.distinct_sources as usize,
        "{events} ban events for {} bans",
        effort.distinct_sources
    );
    Ok((Stats::of(&ours), Stats::of(&bare)))
}

/// Name of the spoofed-source flood row (see [`flood`]).
pub const SIP_FLOOD: &str =
    "SIP 600 B REGISTER flood, a new source every packet, reader on (kernel-timed single runs)";

/// A spoofed-source flood of SIP requests (issue 12: at most 3x today's
/// SIP path per packet): the 600-byte REGISTER from a new source on every
/// packet, through the reader (`[sip_scanners]` on), each packet a single
/// run timed by the kernel as in [`crossing`] (a repeated run would repeat
/// its source); against the SIP path without the reader, timed the same way
/// in the same rounds, each from a source of its own. Both insert a
/// rate-state entry per source.
pub fn flood(effort: Effort) -> Result<(Stats, Stats)> {
    let mut plain = bench_harness(65_536, 65_536, 100_000)?;
    let mut reader = Harness::try_new(&reader_policy())?;
    let message = register_600();
    let mut ours = Vec::new();
    let mut today = Vec::new();
    for i in 0..effort.distinct_sources {
        let frame = |base: u32| {
            let source = format!(
                "100.{}.{}.{}",
                base + (i >> 16) % 32,
                (i >> 8) & 255,
                i & 255
            );
            udp(&source, PBX4, 5060, &message)
        };
        let result = run_xdp(reader.guard.program()?, &frame(64), 1)?;
        ensure!(
            result.return_value == XDP_PASS,
            "flood packet {i} (reader) dropped"
        );
        ours.push(result.duration.as_nanos() as f64);
        let result = run_xdp(plain.guard.program()?, &frame(96), 1)?;
        ensure!(result.return_value == XDP_PASS, "flood packet {i} dropped");
        today.push(result.duration.as_nanos() as f64);
    }
    Ok((Stats::of(&ours), Stats::of(&today)))
}

/// One row of the scaling table.
pub struct ScaleResult {
    pub entries: u32,
    pub path: &'static str,
    pub ns: Stats,
    /// Against the same path with the small maps, measured in the same rounds.
    pub relative: Stats,
}

/// Memory the kernel charges per map of a harness, for the memory table.
pub struct ScaleMemory {
    pub entries: u32,
    pub bans: u64,
    pub deny_v4: u64,
    pub rate_state: u64,
}

fn fill(h: &mut Harness, entries: u32) -> Result<()> {
    let maps = h.guard.maps_mut();
    let forever = ban(BAN_FOREVER);
    for i in 0..entries {
        let octets = (0x6440_0000u32 + i).to_be_bytes(); // 100.64.0.0/10 upwards
        maps.insert_ban(SourceKey::from_ipv4(octets), forever)?;
        let net = ipnet::Ipv4Net::new((0x0b00_0000u32 + i).into(), 32)?; // 11.0.0.0/8 upwards
        maps.insert_net(NetList::Deny, ipnet::IpNet::V4(net), 0)?;
        let tracked = RateKey {
            source: SourceKey::from_ipv4((0x6480_0000u32 + i).to_be_bytes()),
            group: 0,
        };
        maps.insert_rate_state(tracked, RateState::default())?;
    }
    Ok(())
}

const SCALED_PATHS: [&str; 4] = [
    "ban hit",
    "deny hit",
    "IPv4, nothing matched",
    SIP_UNDER_LIMIT,
];

/// Cost with `sizes` bans, deny CIDRs and tracked sources, relative to the
/// same paths on small maps.
pub fn scaling(effort: Effort) -> Result<(Vec<ScaleResult>, Vec<ScaleMemory>)> {
    let all = paths();
    let chosen: Vec<&Path> = SCALED_PATHS
        .iter()
        .map(|name| all.iter().find(|p| p.name == *name).context("scaled path"))
        .collect::<Result<_>>()?;
    let mut small = bench_harness(65_536, 65_536, 100_000)?;
    let mut measurement = 0;
    let mut results = Vec::new();
    let mut memory = Vec::new();
    for entries in effort.scale_sizes {
        let capacity = entries + 16;
        let mut big = bench_harness(capacity, capacity, capacity)?;
        fill(&mut big, entries)?;
        memory.push(ScaleMemory {
            entries,
            bans: memory::map_memory(&mut big, guard_common::map_names::BANS)?,
            deny_v4: memory::map_memory(&mut big, guard_common::map_names::DENY_V4)?,
            rate_state: memory::map_memory(&mut big, guard_common::map_names::RATE_STATE)?,
        });
        for path in &chosen {
            let mut ns = Vec::new();
            let mut relative = Vec::new();
            for _ in 0..effort.runs {
                let frame = frame_for(path, &mut measurement);
                let (base, a) = ns_per_packet(small.guard.program()?, &frame, effort.repeat)?;
                let frame = frame_for(path, &mut measurement);
                let (scaled, b) = ns_per_packet(big.guard.program()?, &frame, effort.repeat)?;
                if a != path.action || b != path.action {
                    bail!("{} with {entries} entries: unexpected action", path.name);
                }
                ns.push(scaled);
                relative.push(scaled / base);
            }
            results.push(ScaleResult {
                entries,
                path: path.name,
                ns: Stats::of(&ns),
                relative: Stats::of(&relative),
            });
        }
    }
    Ok((results, memory))
}

/// xdp-filter (xdp-tools) dropping a deny-listed source, timed exactly like
/// sipguard's paths against bare XDP_DROP: the reference for what one
/// address lookup costs in this framing. Its program is attached to a veth
/// in a namespace of the bench's, pinned by id with bpftool and run with
/// BPF_PROG_TEST_RUN.
pub fn xdp_filter_reference(baseline: &aya::Ebpf, effort: Effort) -> Result<(Stats, Stats)> {
    use super::live::{ensure_bpffs, ns_run, xdp_filter, XDP_BPFFS};
    ensure_bpffs()?;
    let link = crate::netns::Link::new("xfref", &["10.81.0.2/24"], &["10.81.0.1/24"])?;
    xdp_filter(
        &link.right,
        &["load", &link.right_if, "-m", "native", "-f", "ipv4,udp"],
    )?;
    xdp_filter(&link.right, &["ip", "203.0.113.5", "-m", "src"])?;
    let shown = ns_run(
        &link.right,
        "ip",
        &["-d", "link", "show", "dev", &link.right_if],
    )?;
    let id = shown
        .split("prog/xdp id ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("xdp-filter attached no program")?
        .to_string();
    let pin = format!("{XDP_BPFFS}/sipguard-bench-xdp-filter");
    let _ = std::fs::remove_file(&pin);
    let status = std::process::Command::new("bpftool")
        .args(["prog", "pin", "id", &id, &pin])
        .status()
        .context("running bpftool")?;
    ensure!(status.success(), "bpftool prog pin id {id} failed");
    let measured = (|| -> Result<(Stats, Stats)> {
        let program =
            aya::programs::Xdp::from_pin(&pin, aya_obj::programs::XdpAttachType::Interface)?;
        let bare_drop = xdp(baseline, "bare_drop")?;
        let frame = udp("203.0.113.5", PBX4, 5060, b"REGISTER");
        let (mut ns, mut ratio) = (Vec::new(), Vec::new());
        for _ in 0..effort.runs {
            let (base, _) = ns_per_packet(bare_drop, &frame, effort.repeat)?;
            let (cost, action) = ns_per_packet(&program, &frame, effort.repeat)?;
            ensure!(action == XDP_DROP, "xdp-filter passed a denied source");
            ns.push(cost);
            ratio.push(cost / base);
        }
        Ok((Stats::of(&ns), Stats::of(&ratio)))
    })();
    let _ = std::fs::remove_file(&pin);
    let _ = xdp_filter(&link.right, &["unload", &link.right_if, "--all"]);
    measured
}
