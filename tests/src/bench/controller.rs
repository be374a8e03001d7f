//! The controller's side: how many ban events the ring carries before it
//! loses one, and how long a SIP authentication failure takes to become a
//! ban in the kernel, end to end.
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use guard_common::{BanEvent, Health, SourceKey};
use guard_userspace::{
    kernel::{bans::RuleNames, maps::KernelMaps},
    runtime::bans::describe_event,
    sip::parser,
};

use super::{Effort, Stats};
use crate::{
    daemon::{start_guard, TempFile},
    frames::udp,
    netns::Link,
    run_xdp, Harness, XDP_DROP,
};

pub struct EventRates {
    /// Events the ring holds with nobody reading.
    pub burst_capacity: u64,
    /// Bans made per second by the fastest producer we have (BPF_PROG_TEST_RUN).
    pub produced_per_second: f64,
    pub delivered: u64,
    pub lost: u64,
}

fn one_rule_harness() -> Result<Harness> {
    Harness::try_new(
        "[guard]\nmax_bans = 1000000\n[[rate_rules]]\nname = \"one\"\nports = [\"5060/udp\"]\npackets = 1\nwindow = \"1h\"\nban = \"1h\"\n",
    )
}

fn source(i: u32) -> String {
    let octets = (0x6440_0000u32 + i).to_be_bytes();
    format!("{}.{}.{}.{}", octets[0], octets[1], octets[2], octets[3])
}

/// Makes ban `i`: two packets from a new source, the second crossing the limit.
fn make_ban(h: &mut Harness, i: u32) -> Result<()> {
    let frame = udp(&source(i), "192.0.2.1", 5060, b"REGISTER");
    let program = h.guard.program()?;
    run_xdp(program, &frame, 1)?;
    ensure!(
        run_xdp(program, &frame, 1)?.return_value == XDP_DROP,
        "no ban for {}",
        source(i)
    );
    Ok(())
}

pub fn ban_events(effort: Effort) -> Result<EventRates> {
    // Burst: nobody reads; how many fit before the first loss?
    let mut h = one_rule_harness()?;
    let mut burst_capacity = 0;
    for i in 0..1_000_000 {
        make_ban(&mut h, i)?;
        if h.guard.maps().health()?[Health::EventLost as usize] > 0 {
            burst_capacity = i as u64;
            break;
        }
    }
    ensure!(burst_capacity > 0, "the ring never filled");

    // Sustained: a reader doing the controller's work on each event.
    let mut h = one_rule_harness()?;
    let mut ring = h.guard.maps_mut().take_ban_events().context("ban ring")?;
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, delivered) = (Arc::clone(&stop), Arc::clone(&delivered));
        std::thread::spawn(move || {
            let rates = vec!["one".to_string()];
            let names = RuleNames {
                rates: &rates,
                scanners: &[],
                dials: &[],
            };
            loop {
                let mut got_any = false;
                while let Some(item) = ring.next() {
                    got_any = true;
                    // SAFETY: the kernel writes whole BanEvents.
                    let event: BanEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    std::hint::black_box(describe_event(&event, names, 64));
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                if !got_any && stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        })
    };
    let bans = (effort.distinct_sources * 50).max(1000);
    let start = Instant::now();
    for i in 0..bans {
        make_ban(&mut h, i)?;
    }
    let produced_per_second = bans as f64 / start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    Ok(EventRates {
        burst_capacity,
        produced_per_second,
        delivered: delivered.load(Ordering::Relaxed),
        lost: h.guard.maps().health()?[Health::EventLost as usize],
    })
}

/// A registrar that challenges every REGISTER and refuses every answer,
/// and times each source's banning refusal until its ban is in the kernel.
struct Refuser {
    latencies: Mutex<Vec<f64>>,
    failures_to_ban: usize,
}

fn reply(request: &parser::Message<'_>, nonce: &str) -> String {
    let text = |bytes: Option<&[u8]>| String::from_utf8_lossy(bytes.unwrap_or(b"")).into_owned();
    let cseq = request
        .cseq
        .map(|c| (c.number, c.method))
        .unwrap_or((1, b"REGISTER"));
    format!(
        "SIP/2.0 401 Unauthorized\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=pbx\r\nCall-ID: {}\r\n\
CSeq: {} {}\r\nWWW-Authenticate: Digest realm=\"bench\", nonce=\"{nonce}\"\r\nContent-Length: 0\r\n\r\n",
        text(request.via.first().copied()),
        text(request.from),
        text(request.to),
        text(request.call_id.as_deref()),
        cseq.0,
        text(Some(cseq.1)),
    )
}

impl Refuser {
    fn serve(&self, socket: &UdpSocket, program_id: u32, expected: usize) -> Result<()> {
        let maps = KernelMaps::from_program_id(program_id)?;
        let mut failures: std::collections::HashMap<SocketAddr, usize> = Default::default();
        let mut buf = [0u8; 4096];
        let mut banned = 0;
        while banned < expected {
            let (len, from) = socket.recv_from(&mut buf).context("registrar receive")?;
            let Ok((request, _)) = parser::parse(&buf[..len], true) else {
                continue;
            };
            let count = if !request.credentials.is_empty() {
                let n = failures.entry(from).or_default();
                *n += 1;
                *n
            } else {
                0
            };
            let nonce = format!("n-{from}-{count}");
            socket.send_to(reply(&request, &nonce).as_bytes(), from)?;
            if count == self.failures_to_ban {
                let sent = Instant::now();
                let std::net::IpAddr::V4(ip) = from.ip() else {
                    bail!("IPv4 clients only");
                };
                let key = SourceKey::from_ipv4(ip.octets());
                while maps.ban(&key)?.is_none() {
                    if sent.elapsed() > Duration::from_secs(2) {
                        bail!("{from} was not banned within 2 s");
                    }
                    std::hint::spin_loop();
                }
                self.latencies
                    .lock()
                    .unwrap()
                    .push(sent.elapsed().as_secs_f64() * 1e6);
                banned += 1;
            }
        }
        Ok(())
    }
}

/// A client guessing passwords from `source`: `failures` refused attempts.
fn guess(source: &str, failures: usize) -> Result<()> {
    let socket = UdpSocket::bind((source, 5070))?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    let mut nonce: Option<String> = None;
    for cseq in 1..=(failures as u32 + 1) {
        let auth = nonce.as_ref().map_or(String::new(), |n| {
            format!("Authorization: Digest username=\"1001\", realm=\"bench\", nonce=\"{n}\", response=\"0\"\r\n")
        });
        let request = format!(
            "REGISTER sip:10.79.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {source}:5070;branch=z9hG4bK{cseq}\r\n\
From: <sip:1001@10.79.0.1>;tag={source}\r\nTo: <sip:1001@10.79.0.1>\r\nCall-ID: bench-{source}\r\n\
CSeq: {cseq} REGISTER\r\n{auth}Content-Length: 0\r\n\r\n"
        );
        socket.send_to(request.as_bytes(), ("10.79.0.1", 5060))?;
        let len = socket
            .recv(&mut buf)
            .context("no answer from the registrar")?;
        let (answer, _) = parser::parse(&buf[..len], true).map_err(|e| anyhow::anyhow!("{e}"))?;
        nonce = answer
            .challenges
            .first()
            .and_then(|c| c.nonce.as_deref())
            .map(|n| String::from_utf8_lossy(n).into_owned());
    }
    Ok(())
}

/// Failure-to-ban latency in microseconds over `effort.latency_bans` sources:
/// from the registrar sending the refusal that crosses the paranoid level's
/// limit (3 proven failures) until the source's ban is in the kernel map.
pub fn failure_to_ban_latency(effort: Effort) -> Result<Vec<f64>> {
    let sources: Vec<String> = (0..effort.latency_bans)
        .map(|i| format!("10.79.{}.{}", 1 + i / 200, 1 + i % 200))
        .collect();
    let mut client_addrs: Vec<String> = sources.iter().map(|s| format!("{s}/16")).collect();
    client_addrs.insert(0, "10.79.0.2/16".to_string());
    let refs: Vec<&str> = client_addrs.iter().map(String::as_str).collect();
    let link = Link::new("lat", &refs, &["10.79.0.1/16"])?;
    let config = TempFile::new("latency.toml", "[sip_auth]\nlevel = \"paranoid\"\n");
    let (mut guard, program_id) = start_guard(&link.right, &link.right_if, &config, &[])?;
    guard.wait_for("watching SIP authentication", Duration::from_secs(10))?;

    let refuser = Arc::new(Refuser {
        latencies: Mutex::new(Vec::new()),
        failures_to_ban: 3,
    });
    let expected = sources.len();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = {
        let refuser = Arc::clone(&refuser);
        link.right.run_in(move || -> Result<()> {
            let socket = UdpSocket::bind(("10.79.0.1", 5060))?;
            socket.set_read_timeout(Some(Duration::from_secs(5)))?;
            ready_tx.send(()).ok();
            refuser.serve(&socket, program_id, expected)
        })
    };
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("registrar ready")?;
    let client = link.left.run_in(move || -> Result<()> {
        for source in &sources {
            guess(source, 3)?;
        }
        Ok(())
    });
    client
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))???;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("registrar panicked"))???;
    guard.stop()?;
    let latencies = refuser.latencies.lock().unwrap().clone();
    ensure!(
        latencies.len() == expected,
        "{} of {expected} bans timed",
        latencies.len()
    );
    Ok(latencies)
}

pub fn latency_stats(latencies: &[f64]) -> (f64, f64, Stats) {
    (
        Stats::quantile(latencies, 0.5),
        Stats::quantile(latencies, 0.99),
        Stats::of(latencies),
    )
}
