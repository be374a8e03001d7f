//! The HEP input: HEPv3 from allowed senders over UDP (and TCP when asked),
//! decoded, counted, and its SIP handed to the watcher, which feeds the same
//! tracker as the wire captures. Hostile or broken HEP is counted and
//! dropped; nothing a sender does can stall the watcher (a full queue drops).
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use prometheus_client::{
    encoding::EncodeLabelSet, metrics::counter::Counter, metrics::family::Family,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    net::{TcpListener, UdpSocket},
    sync::{mpsc, Semaphore},
    task::JoinHandle,
    time::timeout,
};
use tracing::{debug, info, warn};

use crate::{
    policy::config::HepSection,
    sip::hep::{self, HepError, PROTO_TYPE_SIP},
};

/// SIP messages waiting for the watcher; beyond this they are dropped.
pub const QUEUE: usize = 8192;
/// TCP senders connected at once (a PBX keeps one connection).
const MAX_TCP_CONNECTIONS: usize = 64;
/// The largest HEP message (its total length is a u16).
const MAX_HEP: usize = u16::MAX as usize;

/// One mirrored SIP message, as the HEP sender saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HepSip {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The HEP IP protocol id chunk (17, 6, 22 for TLS/WS/WSS, 132).
    pub ip_proto: u8,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// What became of a HEP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Malformed(HepError),
    /// The sender is not in `hep.allow`.
    RefusedSender,
    /// The authentication key is missing or wrong.
    BadAuthKey,
    /// Valid HEP of another protocol type (RTCP, logs...).
    NotSip,
    /// The watcher's queue was full.
    Dropped,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Malformed(_) => "malformed",
            Verdict::RefusedSender => "refused_sender",
            Verdict::BadAuthKey => "bad_auth_key",
            Verdict::NotSip => "not_sip",
            Verdict::Dropped => "dropped",
        }
    }
}

/// `sipguard_hep_packets{result}`.
#[derive(Clone, Default, Debug)]
pub struct HepCounters(pub Family<ResultLabel, Counter>);

impl HepCounters {
    pub fn count(&self, verdict: Verdict) {
        self.0
            .get_or_create(&ResultLabel {
                result: verdict.name().to_string(),
            })
            .inc();
    }
}

/// Who may send, and the key they must show.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Empty: anyone who can reach the socket (the config allows that only
    /// on a loopback address, where that is this host).
    allow: Vec<IpNet>,
    auth_key: Option<Vec<u8>>,
}

impl Gate {
    pub fn new(section: &HepSection) -> Gate {
        Gate {
            allow: section.allow.clone(),
            auth_key: section.auth_key.as_ref().map(|k| k.as_bytes().to_vec()),
        }
    }

    pub fn admits(&self, sender: IpAddr) -> bool {
        let sender = sender.to_canonical();
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&sender))
    }

    /// Judges one HEP message from `sender` (pure: the unit tests' entry).
    pub fn judge(&self, sender: IpAddr, bytes: &[u8]) -> Result<HepSip, Verdict> {
        if !self.admits(sender) {
            return Err(Verdict::RefusedSender);
        }
        let packet = hep::decode(bytes).map_err(Verdict::Malformed)?;
        if let Some(key) = &self.auth_key {
            if packet.auth_key != Some(key.as_slice()) {
                return Err(Verdict::BadAuthKey);
            }
        }
        if packet.proto_type != PROTO_TYPE_SIP {
            return Err(Verdict::NotSip);
        }
        Ok(HepSip {
            src: canonical(packet.src),
            dst: canonical(packet.dst),
            ip_proto: packet.ip_proto,
            payload: packet.payload.to_vec(),
        })
    }
}

/// `::ffff:192.0.2.1` (a dual-stack PBX's view of an IPv4 peer) as IPv4,
/// the way the kernel's capture and the ban map know it.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The PBX's own addresses: HEP mirrors what the PBX sends as a client
/// (to trunks, or proxied calls) too, and the answers it gets then are not
/// failures of anyone sipguard guards against.
#[derive(Debug, Clone, Default)]
pub struct PbxAddresses {
    configured: Vec<IpAddr>,
    host: Vec<IpAddr>,
}

impl PbxAddresses {
    /// `hep.pbx_addresses` and this host's addresses (looked up now).
    pub fn new(configured: &[IpAddr]) -> PbxAddresses {
        let mut pbx = PbxAddresses {
            configured: configured.iter().map(|ip| ip.to_canonical()).collect(),
            host: Vec::new(),
        };
        pbx.refresh();
        pbx
    }

    /// Looks this host's addresses up again (they change with DHCP or a
    /// new interface); on failure the ones known are kept.
    pub fn refresh(&mut self) {
        match host_addresses() {
            Ok(host) => self.host = host,
            Err(e) => warn!("listing this host's addresses failed: {e}"),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.configured.contains(&ip) || self.host.contains(&ip)
    }
}

/// Every address of this host's interfaces (in this network namespace).
fn host_addresses() -> std::io::Result<Vec<IpAddr>> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed by freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its type.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The sockets, bound at start-up (a taken port is a clear error then).
pub struct HepSockets {
    udp: UdpSocket,
    tcp: Option<TcpListener>,
}

/// A HEP socket that cannot be bound (the port is taken, the address is not ours).
#[derive(Debug, thiserror::Error)]
#[error("binding the HEP input to {transport} {listen}: {source}")]
pub struct BindError {
    transport: &'static str,
    listen: SocketAddr,
    #[source]
    source: std::io::Error,
}

pub async fn bind(section: &HepSection) -> Result<Option<HepSockets>, BindError> {
    let Some(listen) = section.listen else {
        return Ok(None);
    };
    let failed = |transport| {
        move |source| BindError {
            transport,
            listen,
            source,
        }
    };
    let udp = UdpSocket::bind(listen).await.map_err(failed("udp"))?;
    let tcp = match section.tcp {
        true => Some(TcpListener::bind(listen).await.map_err(failed("tcp"))?),
        false => None,
    };
    Ok(Some(HepSockets { udp, tcp }))
}

/// Where accepted SIP goes, and what is counted.
#[derive(Clone)]
struct Sink {
    gate: Arc<Gate>,
    queue: mpsc::Sender<HepSip>,
    counters: HepCounters,
}

impl Sink {
    fn take(&self, sender: IpAddr, bytes: &[u8]) {
        let verdict = match self.gate.judge(sender, bytes) {
            Ok(sip) => match self.queue.try_send(sip) {
                Ok(()) => Verdict::Accepted,
                Err(_) => Verdict::Dropped,
            },
            Err(verdict) => verdict,
        };
        if let Verdict::Malformed(e) = verdict {
            debug!("ignored malformed HEP from {sender}: {e}");
        }
        self.counters.count(verdict);
    }
}

/// Starts reading the sockets; SIP goes to `queue`.
pub fn spawn(
    sockets: HepSockets,
    gate: Gate,
    queue: mpsc::Sender<HepSip>,
    counters: HepCounters,
) -> Vec<JoinHandle<()>> {
    let sink = Sink {
        gate: Arc::new(gate),
        queue,
        counters,
    };
    if let Ok(addr) = sockets.udp.local_addr() {
        info!(
            "accepting HEPv3 on udp {addr}{}",
            if sockets.tcp.is_some() {
                " and tcp"
            } else {
                ""
            }
        );
    }
    let mut tasks = vec![tokio::spawn(read_udp(sockets.udp, sink.clone()))];
    if let Some(tcp) = sockets.tcp {
        tasks.push(tokio::spawn(accept_tcp(tcp, sink)));
    }
    tasks
}

async fn read_udp(socket: UdpSocket, sink: Sink) {
    let mut buf = vec![0u8; MAX_HEP + 1];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, from)) => sink.take(from.ip(), &buf[..len]),
            Err(e) => {
                warn!("HEP input (udp): {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn accept_tcp(listener: TcpListener, sink: Sink) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!("HEP input (tcp): {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if !sink.gate.admits(from.ip()) {
            sink.counters.count(Verdict::RefusedSender);
            continue;
        }
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!("HEP input (tcp): {MAX_TCP_CONNECTIONS} connections open, refusing {from}");
            continue;
        };
        let sink = sink.clone();
        tokio::spawn(async move {
            read_tcp(stream, from.ip(), &sink).await;
            drop(slot);
        });
    }
}

/// Back-to-back HEP messages, framed by their total length. A frame that
/// is not HEPv3 leaves no way to find the next one: the connection is closed.
/// How long a HEP connection may stay silent between frames. A PBX that
/// traces nothing for this long reconnects when it next sends.
const TCP_IDLE: Duration = Duration::from_secs(600);
/// How long the rest of a frame may take once its header has begun: a
/// sender that trickles bytes cannot hold one of the few slots for ever.
const TCP_FRAME: Duration = Duration::from_secs(10);

async fn read_tcp(mut stream: impl AsyncRead + Unpin, from: IpAddr, sink: &Sink) {
    let mut buf = vec![0u8; MAX_HEP];
    loop {
        let mut first = [0u8; 1];
        match timeout(TCP_IDLE, stream.read_exact(&mut first)).await {
            Ok(Ok(_)) => buf[0] = first[0],
            Ok(Err(_)) => return,
            Err(_) => {
                debug!("closing the HEP connection from {from}: idle for {TCP_IDLE:?}");
                return;
            }
        }
        let Some(len) = read_frame(&mut stream, &mut buf, from, sink).await else {
            return;
        };
        sink.take(from, &buf[..len]);
    }
}

/// Reads the rest of a frame whose first byte is in `buf[0]`; its length,
/// or None when the connection must close.
async fn read_frame(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut [u8],
    from: IpAddr,
    sink: &Sink,
) -> Option<usize> {
    let frame = async {
        stream.read_exact(&mut buf[1..hep::HEADER_LEN]).await.ok()?;
        let len = match hep::frame_len(&buf[..hep::HEADER_LEN]) {
            Ok(len) => len,
            Err(e) => {
                sink.counters.count(Verdict::Malformed(e));
                debug!("closing the HEP connection from {from}: {e}");
                return None;
            }
        };
        stream
            .read_exact(&mut buf[hep::HEADER_LEN..len])
            .await
            .ok()?;
        Some(len)
    };
    match timeout(TCP_FRAME, frame).await {
        Ok(len) => len,
        Err(_) => {
            debug!("closing the HEP connection from {from}: a frame took over {TCP_FRAME:?}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    fn hep(src: [u8; 4], proto_type: u8, key: Option<&[u8]>) -> Vec<u8> {
        let chunk = |kind: u16, data: &[u8]| {
            let mut c = vec![0, 0];
            c.extend_from_slice(&kind.to_be_bytes());
            c.extend_from_slice(&((data.len() + 6) as u16).to_be_bytes());
            c.extend_from_slice(data);
            c
        };
        let mut body = [
            chunk(2, &[17]),
            chunk(3, &src),
            chunk(4, &[10, 0, 0, 1]),
            chunk(7, &5062u16.to_be_bytes()),
            chunk(8, &5060u16.to_be_bytes()),
            chunk(11, &[proto_type]),
            chunk(15, b"OPTIONS sip:x SIP/2.0\r\n\r\n"),
        ]
        .concat();
        if let Some(key) = key {
            body.extend_from_slice(&chunk(14, key));
        }
        let mut out = b"HEP3".to_vec();
        out.extend_from_slice(&((body.len() + 6) as u16).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn gate(config: &str) -> Gate {
        let config = crate::policy::config::Config::parse(config, "t.toml").unwrap();
        Gate::new(&config.hep)
    }

    #[test]
    fn senders_keys_and_types_are_judged() {
        let open = gate("[hep]\nlisten = \"127.0.0.1:9060\"\n");
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let sip = open.judge(local, &hep([198, 51, 100, 7], 1, None)).unwrap();
        assert_eq!(sip.src, "198.51.100.7:5062".parse().unwrap());
        assert_eq!(sip.ip_proto, 17);
        assert_eq!(
            open.judge(local, &hep([1, 2, 3, 4], 5, None)),
            Err(Verdict::NotSip)
        );
        assert_eq!(
            open.judge(local, b"HEP3\x00\x07x"),
            Err(Verdict::Malformed(HepError::ChunkCut { offset: 6 }))
        );

        let listed = gate(
            "[hep]\nlisten = \"0.0.0.0:9060\"\nallow = [\"192.0.2.0/28\"]\nauth_key = \"k1\"\n",
        );
        let pbx: IpAddr = "192.0.2.5".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.5".parse().unwrap();
        assert!(listed
            .judge(pbx, &hep([1, 2, 3, 4], 1, Some(b"k1")))
            .is_ok());
        assert!(listed
            .judge(mapped, &hep([1, 2, 3, 4], 1, Some(b"k1")))
            .is_ok());
        assert_eq!(
            listed.judge(
                "192.0.2.99".parse().unwrap(),
                &hep([1, 2, 3, 4], 1, Some(b"k1"))
            ),
            Err(Verdict::RefusedSender)
        );
        assert_eq!(
            listed.judge(pbx, &hep([1, 2, 3, 4], 1, None)),
            Err(Verdict::BadAuthKey)
        );
        assert_eq!(
            listed.judge(pbx, &hep([1, 2, 3, 4], 1, Some(b"k2"))),
            Err(Verdict::BadAuthKey)
        );
    }

    #[test]
    fn this_hosts_addresses_are_the_pbx() {
        let pbx = PbxAddresses::new(&["192.0.2.80".parse().unwrap()]);
        assert!(pbx.contains("127.0.0.1".parse().unwrap()), "{pbx:?}");
        assert!(pbx.contains("192.0.2.80".parse().unwrap()));
        assert!(!pbx.contains("198.51.100.200".parse().unwrap()));
    }

    fn test_sink() -> (Sink, mpsc::Receiver<HepSip>) {
        let config =
            crate::policy::config::Config::parse("[hep]\nlisten = \"127.0.0.1:0\"\n", "t.toml")
                .unwrap();
        let (tx, rx) = mpsc::channel(QUEUE);
        let sink = Sink {
            gate: Arc::new(Gate::new(&config.hep)),
            queue: tx,
            counters: HepCounters::default(),
        };
        (sink, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_tcp_sender_that_trickles_a_frame_or_stays_silent_is_dropped() {
        use tokio::io::AsyncWriteExt;
        let from: IpAddr = "127.0.0.1".parse().unwrap();
        let (sink, mut rx) = test_sink();
        // Half a frame, then nothing: closed after the frame deadline.
        let (mut client, server) = tokio::io::duplex(4096);
        let frame = hep([198, 51, 100, 7], 1, None);
        client.write_all(&frame[..frame.len() / 2]).await.unwrap();
        let reader = tokio::spawn({
            let sink = sink.clone();
            async move { read_tcp(server, from, &sink).await }
        });
        tokio::time::sleep(TCP_FRAME + Duration::from_secs(1)).await;
        assert!(reader.is_finished(), "a trickled frame holds the slot");
        // Whole frames, then silence: the frames count, and the idle
        // connection closes after TCP_IDLE, not before.
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(&frame).await.unwrap();
        let reader = tokio::spawn({
            let sink = sink.clone();
            async move { read_tcp(server, from, &sink).await }
        });
        assert_eq!(
            rx.recv().await.unwrap().src.ip().to_string(),
            "198.51.100.7"
        );
        tokio::time::sleep(TCP_IDLE - Duration::from_secs(1)).await;
        assert!(!reader.is_finished(), "closed before the idle deadline");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(reader.is_finished(), "an idle connection holds the slot");
        drop(client);
    }

    #[tokio::test]
    async fn udp_and_tcp_inputs_queue_sip_and_count_the_rest() {
        use tokio::io::AsyncWriteExt;
        let config = crate::policy::config::Config::parse(
            "[hep]\nlisten = \"127.0.0.1:0\"\ntcp = true\n",
            "t.toml",
        )
        .unwrap();
        // Port 0 for UDP and TCP apart: bind them by hand on one free port.
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let counters = HepCounters::default();
        let tasks = spawn(
            HepSockets {
                udp,
                tcp: Some(tcp),
            },
            Gate::new(&config.hep),
            tx,
            counters.clone(),
        );
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"garbage", udp_addr).await.unwrap();
        client
            .send_to(&hep([198, 51, 100, 1], 1, None), udp_addr)
            .await
            .unwrap();
        assert_eq!(
            rx.recv().await.unwrap().src.ip().to_string(),
            "198.51.100.1"
        );
        let mut stream = TcpStream::connect(tcp_addr).await.unwrap();
        let mut two = hep([198, 51, 100, 2], 1, None);
        two.extend_from_slice(&hep([198, 51, 100, 3], 1, None));
        // Written in two pieces, split inside the second frame's header.
        let split = two.len() / 2 + 3;
        stream.write_all(&two[..split]).await.unwrap();
        stream.flush().await.unwrap();
        stream.write_all(&two[split..]).await.unwrap();
        assert_eq!(
            rx.recv().await.unwrap().src.ip().to_string(),
            "198.51.100.2"
        );
        assert_eq!(
            rx.recv().await.unwrap().src.ip().to_string(),
            "198.51.100.3"
        );
        let count = |result: &str| {
            counters
                .0
                .get_or_create(&ResultLabel {
                    result: result.into(),
                })
                .get()
        };
        assert_eq!(count("accepted"), 3);
        assert_eq!(
            count("malformed"),
            1,
            "the datagram came before the first SIP"
        );
        for task in tasks {
            task.abort();
        }
    }
}
