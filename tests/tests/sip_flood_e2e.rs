//! Issue 10's flood, end to end: spoofed REGISTERs at a fixed rate from
//! 65,536 forged addresses (rate rules off, as a trunk-heavy site might run
//! them), half with forged credentials, to a second address of the PBX
//! where a minimal registrar answers every other one with a 401 and a fresh
//! nonce (its answers leave through the veth and are watched too: the
//! pending requests, the nonces and the suspects all overflow). Kamailio,
//! on the PBX's first address, is left to the real brute force from another
//! address in the middle of it (on this shared machine it cannot answer
//! 10,000 requests a second itself). It must still be banned after
//! exactly the level's proven failures. The test prints what it measured
//! (status latency, the controller's CPU, captures lost) and asserts no
//! timing: speed targets belong in `cargo xtask bench`. Needs root.
//! `SIPGUARD_FLOOD_RATE` sets the rate. The default, 2,000/s, is what the
//! debug build `cargo xtask test` runs sustains without losing captures on
//! a shared 2-CPU machine; BENCHMARKS.md has the figures at 10,000/s and
//! 50,000/s.
use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use guard_common::Health;
use guard_userspace::sip::parser;
use sipguard_tests::{
    kamailio::{guess, Pbx, ATTACKER, PHONE},
    traffic::cli,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The normal level: 10 proven failures ban.
const FAILURES: u32 = 10;
/// Spoofed requests sent before the brute force starts: more than the
/// controller's pending table (65,536) holds, half again.
const WARM_UP_REQUESTS: f64 = 100_000.0;

/// Where the flood goes: the PBX's second address.
const FLOODED: &str = "10.78.0.9";

/// An IPv4 + UDP packet from `source` to the flooded address (the kernel fills in the
/// IP checksum; a zero UDP checksum means none).
fn spoofed(source: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut packet = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        64,
        17,
        0,
        0,
    ];
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&FLOODED.parse::<Ipv4Addr>().unwrap().octets());
    packet.extend_from_slice(&5070u16.to_be_bytes());
    packet.extend_from_slice(&5060u16.to_be_bytes());
    packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    packet
}

fn flood_request(n: u32, source: Ipv4Addr) -> Vec<u8> {
    let auth = if n.is_multiple_of(2) {
        "Authorization: Digest username=\"1001\", realm=\"pbx.test\", nonce=\"forged\", \
uri=\"sip:10.78.0.1\", response=\"00\"\r\n"
    } else {
        ""
    };
    format!(
        "REGISTER sip:{FLOODED} SIP/2.0\r\nVia: SIP/2.0/UDP {source}:5070;branch=z9hG4bK-f{n}\r\n\
Max-Forwards: 70\r\nFrom: <sip:1001@{FLOODED}>;tag=f{n}\r\nTo: <sip:1001@{FLOODED}>\r\n\
Call-ID: flood-{n}\r\nCSeq: 1 REGISTER\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Sends spoofed requests from 10.80.0.0/16 at `rate` per second until
/// `stop`; returns how many it sent.
fn flood(rate: u32, stop: Arc<AtomicBool>) -> u64 {
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).expect("raw socket");
    socket.set_header_included_v4(true).expect("IP_HDRINCL");
    let to = SockAddr::from(SocketAddrV4::new(FLOODED.parse().unwrap(), 5060));
    let per_tick = (rate / 100).max(1);
    let start = Instant::now();
    let (mut sent, mut n, mut tick) = (0u64, 0u32, 0u32);
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..per_tick {
            n = n.wrapping_add(1);
            let source = Ipv4Addr::from(0x0a50_0000 | (n & 0xffff));
            if socket
                .send_to(&spoofed(source, &flood_request(n, source)), &to)
                .is_ok()
            {
                sent += 1;
            }
        }
        tick += 1;
        let next = start + Duration::from_millis(u64::from(tick) * 10);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    sent
}

/// A registrar that answers every other request on the flooded address
/// with a 401 and a fresh nonce, until `stop`.
fn answer_half(stop: Arc<AtomicBool>) {
    let socket = UdpSocket::bind((FLOODED, 5060)).expect("binding the flooded address");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        n += 1;
        let Ok((request, _)) = parser::parse(&buf[..len], true) else {
            continue;
        };
        if n % 2 == 1 {
            continue;
        }
        let text = |v: Option<&[u8]>| String::from_utf8_lossy(v.unwrap_or(b"")).into_owned();
        let answer = format!(
            "SIP/2.0 401 Unauthorized\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=pbx\r\n\
Call-ID: {}\r\nCSeq: 1 REGISTER\r\nWWW-Authenticate: Digest realm=\"pbx.test\", nonce=\"n{n}\"\r\n\
Content-Length: 0\r\n\r\n",
            text(request.via.first().copied()),
            text(request.from),
            text(request.to),
            text(request.call_id.as_deref()),
        );
        let _ = socket.send_to(answer.as_bytes(), from);
    }
}

/// User + system CPU time of a process.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz.max(1))
}

/// One wrong guess from the attacker; Kamailio, busy with the flood, may
/// drop a request, so a guess that is not answered is tried again.
fn wrong_guess(pbx: &Pbx, n: u32) {
    for attempt in 0..5 {
        let answer = guess(
            pbx,
            ATTACKER,
            format!("brute-{n}-{attempt}"),
            |t| t.into_bytes(),
            "wrong",
        );
        if answer == Some(401) {
            return;
        }
        assert_eq!(answer, None, "guess {n}: {answer:?}");
    }
    panic!("Kamailio answered none of 5 tries of guess {n}");
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn a_brute_force_inside_a_spoofed_flood_is_banned_at_the_level() {
    let rate: u32 = std::env::var("SIPGUARD_FLOOD_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2_000);
    let mut pbx = Pbx::start("flood", "rate_rules = []\n[sip_auth]\nlevel = \"normal\"\n");
    // Answers to the forged addresses leave through the veth, like answers
    // to the internet would.
    pbx.link
        .right
        .ip(&["route", "add", "10.80.0.0/16", "via", PHONE])
        .expect("route to the forged sources");
    pbx.link
        .right
        .ip(&[
            "addr",
            "add",
            &format!("{FLOODED}/24"),
            "dev",
            &pbx.link.right_if,
        ])
        .expect("the flooded address");
    let pid = pbx.guard.pid().expect("sipguard runs");
    let stop = Arc::new(AtomicBool::new(false));
    let registrar = {
        let stop = Arc::clone(&stop);
        pbx.link.right.run_in(move || answer_half(stop))
    };
    let flooder = {
        let stop = Arc::clone(&stop);
        pbx.link.left.run_in(move || flood(rate, stop))
    };
    std::thread::sleep(Duration::from_secs_f64(
        (WARM_UP_REQUESTS / f64::from(rate)).clamp(2.0, 60.0),
    ));

    let (cpu_start, wall_start) = (cpu_time(pid), Instant::now());
    let mut status_worst = Duration::ZERO;
    for n in 1..=FAILURES {
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            pbx.ban([10, 78, 0, 4]).is_none(),
            "banned after {} guesses: {}",
            n - 1,
            pbx.guard.log()
        );
        let asked = Instant::now();
        let status = cli(&pbx.socket, &["status"]);
        status_worst = status_worst.max(asked.elapsed());
        assert!(status.status.success(), "status during the flood");
        wrong_guess(&pbx, n);
    }
    let line = pbx
        .guard
        .wait_for("banned 10.78.0.4", Duration::from_secs(5))
        .unwrap_or_else(|_| "not banned".to_string());
    let cpu =
        cpu_time(pid).saturating_sub(cpu_start).as_secs_f64() / wall_start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let sent = flooder
        .join()
        .expect("flood thread")
        .expect("flood namespace");
    registrar
        .join()
        .expect("registrar thread")
        .expect("PBX namespace");
    let health = pbx.maps().health().unwrap();
    println!(
        "flood {rate}/s: {sent} spoofed requests sent; brute force banned: {line}; \
status worst {:.1} ms; controller CPU {:.0}% of a core; captures lost {}",
        status_worst.as_secs_f64() * 1e3,
        cpu * 100.0,
        health[Health::SipCaptureLost as usize],
    );
    assert!(
        line.contains(&format!("auth-failure, {FAILURES} failures in 1h (proven)")),
        "{line}"
    );
    assert!(pbx.ban([10, 78, 0, 2]).is_none(), "the phone is not banned");
    assert!(pbx.guard.stop().unwrap().success());
}
