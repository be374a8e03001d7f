//! Traffic for the namespace end-to-end tests: one addressing plan (the
//! PBX on the right of a veth pair, its clients on the left), a UDP sink on
//! the PBX's SIP port, senders, TCP connects, and the CLI.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

use crate::{daemon::sipguard_bin, netns::Link};

pub const PBX_V4: &str = "10.77.0.1";
pub const PBX_V6: &str = "fd77::1";
/// The client-side addresses `setup` gives the left namespace.
pub const CLIENT_ADDRS: [&str; 4] = ["10.77.0.2/24", "10.77.0.3/24", "10.77.0.4/24", "fd77::5/64"];
pub const PBX_ADDRS: [&str; 2] = ["10.77.0.1/24", "fd77::1/64"];

/// Datagrams that reached the PBX's port 5060, by source.
pub struct UdpSink {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<anyhow::Result<HashMap<IpAddr, usize>>>,
}

impl UdpSink {
    pub fn start(link: &Link) -> UdpSink {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = link.right.run_in(move || {
            // Dual-stack: IPv4 arrives as ::ffff:a.b.c.d.
            let socket = UdpSocket::bind("[::]:5060").expect("bind [::]:5060");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut seen: HashMap<IpAddr, usize> = HashMap::new();
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    *seen.entry(from.ip().to_canonical()).or_default() += 1;
                }
            }
            seen
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("receiver ready");
        UdpSink { stop, handle }
    }

    pub fn finish(self) -> HashMap<IpAddr, usize> {
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .expect("receiver thread")
            .expect("receiver")
    }
}

/// How many datagrams from `source` a sink saw.
pub fn received_from(seen: &HashMap<IpAddr, usize>, source: &str) -> usize {
    let source: IpAddr = source.parse().expect("a source address");
    seen.get(&source).copied().unwrap_or(0)
}

/// How many of `count` datagrams from `source` reach the PBX's port 5060.
pub fn delivered(link: &Link, source: &'static str, count: usize) -> usize {
    let sink = UdpSink::start(link);
    send_udp(link, source, count);
    received_from(&sink.finish(), source)
}

/// Sends `count` datagrams from `source` to the PBX's port 5060.
pub fn send_udp(link: &Link, source: &'static str, count: usize) {
    let destination = if source.contains(':') { PBX_V6 } else { PBX_V4 };
    link.left
        .run_in(move || {
            let socket = UdpSocket::bind((source, 0)).expect("bind source");
            for i in 0..count {
                let message = format!("OPTIONS sip:pbx SIP/2.0\r\nCSeq: {i} OPTIONS\r\n\r\n");
                socket
                    .send_to(message.as_bytes(), (destination, 5060))
                    .expect("send");
            }
        })
        .join()
        .expect("sender thread")
        .expect("sender");
}

/// A TCP connection from `source` to the PBX (call inside the client namespace).
pub fn connect_from(source: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    let from: SocketAddr = format!("{source}:0").parse().expect("source address");
    socket.bind(&from.into())?;
    let to: SocketAddr = format!("{PBX_V4}:{port}").parse().expect("PBX address");
    socket.connect_timeout(&to.into(), timeout)?;
    Ok(socket.into())
}

/// Tries a TCP connection from `source` to the PBX; true if it was accepted.
pub fn tcp_connects(link: &Link, source: &'static str, port: u16) -> bool {
    link.left
        .run_in(move || connect_from(source, port, Duration::from_millis(1500)).is_ok())
        .join()
        .expect("connect thread")
        .expect("connect")
}

pub fn xdp_attached(link: &Link) -> bool {
    let out = link
        .right
        .ip(&["-d", "link", "show", "dev", &link.right_if])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// Runs the sipguard CLI inside a network namespace (for the commands that
/// act on the namespace's own guard, such as `unload`).
pub fn cli_in(ns: &crate::netns::NetNs, socket: &str, args: &[&str]) -> std::process::Output {
    ns.command(sipguard_bin().to_str().expect("a UTF-8 path"))
        .env_remove("SSH_CLIENT")
        .arg("--control-socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("running sipguard")
}

/// Runs the sipguard CLI against a control socket.
pub fn cli(socket: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(sipguard_bin())
        // Where the tests run over SSH, the CLI must not speak for that session.
        .env_remove("SSH_CLIENT")
        .arg("--control-socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("running sipguard")
}
