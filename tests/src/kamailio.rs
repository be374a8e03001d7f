//! A PBX for end-to-end tests: Debian's Kamailio as a registrar with
//! digest authentication (`peers/kamailio.cfg`: extensions 1001 and 1002,
//! password "correct-horse", realm "pbx.test") and `sipguard run` watching
//! its veth, in a namespace pair deleted on drop.
use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    time::Duration,
};

use guard_common::SourceKey;
use guard_userspace::{kernel::maps::KernelMaps, sip::parser};
use md5::{Digest, Md5};

use crate::{
    daemon::{start_guard, Daemon, TempDir, TempFile, TempSocket},
    netns::Link,
};

pub const PBX: &str = "10.78.0.1";
pub const PHONE: &str = "10.78.0.2";
pub const ATTACKER: &str = "10.78.0.4";

pub fn peers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

/// The PBX namespace running Kamailio and sipguard.
pub struct Pbx {
    pub link: Link,
    pub guard: Daemon,
    pub kamailio: Daemon,
    program_id: u32,
    _config: TempFile,
    pub socket: TempSocket,
    /// Kamailio's runtime directory, removed after it has stopped.
    _run_dir: TempDir,
    /// The guard's state directory, kept across [`Pbx::restart_guard`].
    state: TempDir,
}

/// How Kamailio is started: its config file, the sockets it listens on,
/// and the names its config's `#!ifdef`s see (`-A NAME`).
pub struct KamailioSetup {
    pub cfg: PathBuf,
    pub listen: Vec<String>,
    pub defines: Vec<String>,
}

impl Default for KamailioSetup {
    fn default() -> KamailioSetup {
        KamailioSetup {
            cfg: peers().join("kamailio.cfg"),
            listen: vec![format!("udp:{PBX}:5060")],
            defines: Vec::new(),
        }
    }
}

impl Pbx {
    pub fn start(tag: &str, config: &str) -> Pbx {
        Pbx::start_with(tag, config, KamailioSetup::default())
    }

    /// Like [`Pbx::start`], with Kamailio's config and sockets given.
    pub fn start_with(tag: &str, config: &str, setup: KamailioSetup) -> Pbx {
        Pbx::start_on(Pbx::link(tag), tag, config, setup)
    }

    /// The client and PBX namespaces and their veth, with nothing running
    /// yet (to join the PBX to other namespaces first).
    pub fn link(tag: &str) -> Link {
        Link::new(tag, &["10.78.0.2/24", "10.78.0.4/24"], &["10.78.0.1/24"])
            .expect("namespaces and veth")
    }

    /// Like [`Pbx::start_with`], on a link made by [`Pbx::link`].
    pub fn start_on(link: Link, tag: &str, config: &str, setup: KamailioSetup) -> Pbx {
        let run_dir = TempDir::new(&format!("kamailio-{tag}"));
        let mut args = vec!["-f".to_string(), setup.cfg.display().to_string()];
        for listen in &setup.listen {
            args.extend(["-l".to_string(), listen.clone()]);
        }
        for name in &setup.defines {
            args.extend(["-A".to_string(), name.clone()]);
        }
        args.extend(["-DD", "-E", "-n", "1", "-Y"].map(String::from));
        args.push(run_dir.path().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = link
            .right
            .spawn("kamailio", &args)
            .expect("starting kamailio (apt-get install kamailio)");
        let mut kamailio = Daemon::watch(child);
        kamailio
            .wait_for("SO_RCVBUF is finally", Duration::from_secs(20))
            .expect("kamailio listening");

        let config = TempFile::new(&format!("{tag}.toml"), config);
        let socket = TempSocket::new(tag);
        let state = TempDir::new(&format!("state-{tag}"));
        let (guard, program_id) = guard_in(&link, &config, &socket, &state);
        Pbx {
            link,
            guard,
            kamailio,
            program_id,
            _config: config,
            socket,
            _run_dir: run_dir,
            state,
        }
    }

    /// Stops the guard (SIGTERM) and starts another with the same config
    /// and state directory, unpinned: new maps, as after a reboot.
    pub fn restart_guard(&mut self) {
        assert!(self.guard.stop().expect("stopping the guard").success());
        let (guard, program_id) = guard_in(&self.link, &self._config, &self.socket, &self.state);
        self.guard = guard;
        self.program_id = program_id;
    }

    pub fn maps(&self) -> KernelMaps {
        KernelMaps::from_program_id(self.program_id).unwrap()
    }

    /// Runs sipp in the client namespace; returns (successful, failed) calls.
    pub fn sipp(
        &self,
        source: &str,
        scenario: &str,
        user: &str,
        password: &str,
        calls: u32,
    ) -> (u32, u32) {
        let scenario = peers().join(scenario);
        let output = self
            .link
            .left
            .command("timeout")
            .args(["60", "sipp", &format!("{PBX}:5060"), "-sf"])
            .arg(&scenario)
            .args(["-s", user, "-au", user, "-ap", password, "-i", source])
            .args(["-m", &calls.to_string(), "-l", "1", "-r", "20", "-nostdin"])
            .args(["-timeout", "10s", "-recv_timeout", "3000"])
            .output()
            .expect("running sipp (apt-get install sip-tester)");
        sipp_totals(&String::from_utf8_lossy(&output.stdout))
    }

    pub fn ban(&self, ip: [u8; 4]) -> Option<guard_common::BanEntry> {
        self.maps().ban(&SourceKey::from_ipv4(ip)).unwrap()
    }
}

/// `sipguard run` in the PBX's namespace, watching SIP.
fn guard_in(link: &Link, config: &TempFile, socket: &str, state: &TempDir) -> (Daemon, u32) {
    let (mut guard, program_id) = start_guard(
        &link.right,
        &link.right_if,
        config,
        &["--control-socket", socket, "--state-dir", state.path()],
    )
    .expect("sipguard attached");
    guard
        .wait_for("watching SIP authentication", Duration::from_secs(10))
        .unwrap();
    (guard, program_id)
}

pub const REALM: &str = "pbx.test";
pub const PASSWORD: &str = "correct-horse";

/// Rewrites the text of a guess (a REGISTER with credentials) into bytes.
pub type Variant = fn(String) -> Vec<u8>;

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A REGISTER for 1001 from `source`; with `auth`, digest credentials for
/// (nonce, password), as Kamailio checks them (no qop).
pub fn register(source: &str, call_id: &str, cseq: u32, auth: Option<(&str, &str)>) -> String {
    register_as("1001", source, call_id, cseq, auth)
}

/// [`register`] for extension `user`.
pub fn register_as(
    user: &str,
    source: &str,
    call_id: &str,
    cseq: u32,
    auth: Option<(&str, &str)>,
) -> String {
    let uri = format!("sip:{PBX}");
    let auth = auth.map_or(String::new(), |(nonce, password)| {
        let ha1 = md5_hex(&format!("{user}:{REALM}:{password}"));
        let ha2 = md5_hex(&format!("REGISTER:{uri}"));
        let response = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
        format!(
            "Authorization: Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", \
uri=\"{uri}\", response=\"{response}\", algorithm=MD5\r\n"
        )
    });
    format!(
        "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {source}:5070;branch=z9hG4bK-{call_id}-{cseq};rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:{user}@{PBX}>;tag={call_id}\r\nTo: <sip:{user}@{PBX}>\r\n\
Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{source}:5070>\r\n\
Expires: 60\r\nUser-Agent: guesser\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

/// Sends `message`, returns the answer's status and first nonce (None
/// when Kamailio does not answer).
pub fn send(socket: &UdpSocket, message: &[u8]) -> Option<(u16, Option<String>)> {
    socket
        .send_to(message, (PBX, 5060))
        .expect("sending to Kamailio");
    let mut buf = [0u8; 4096];
    loop {
        let len = socket.recv(&mut buf).ok()?;
        let Ok((answer, _)) = parser::parse(&buf[..len], true) else {
            panic!(
                "unreadable answer: {}",
                String::from_utf8_lossy(&buf[..len])
            );
        };
        let Some(status) = answer.status().filter(|s| *s >= 200) else {
            continue;
        };
        let nonce = answer
            .challenges
            .first()
            .and_then(|c| c.nonce.as_deref())
            .map(|n| String::from_utf8_lossy(n).into_owned());
        return Some((status, nonce));
    }
}

/// One request `text` from `source`:`port` in the client namespace: the
/// status of Kamailio's final answer (None when none came within 2 s).
pub fn request(pbx: &Pbx, source: &'static str, port: u16, text: String) -> Option<u16> {
    pbx.link
        .left
        .run_in(move || {
            let socket = UdpSocket::bind((source, port)).expect("binding the client");
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            send(&socket, text.as_bytes()).map(|(status, _)| status)
        })
        .join()
        .expect("client thread")
        .expect("client namespace")
}

/// One guess from `source` in the client namespace: a plain REGISTER for
/// the challenge, then the rewritten one with `password`. Returns the
/// status Kamailio answered the guess with, if it did.
pub fn guess(
    pbx: &Pbx,
    source: &'static str,
    call_id: String,
    variant: Variant,
    password: &'static str,
) -> Option<u16> {
    pbx.link
        .left
        .run_in(move || {
            let socket = UdpSocket::bind((source, 5070)).expect("binding the client");
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let (status, nonce) = send(&socket, register(source, &call_id, 1, None).as_bytes())?;
            assert_eq!(status, 401, "the challenge");
            let nonce = nonce.expect("a nonce");
            let text = register(source, &call_id, 2, Some((&nonce, password)));
            send(&socket, &variant(text)).map(|(status, _)| status)
        })
        .join()
        .expect("client thread")
        .expect("client namespace")
}

/// (successful, failed) calls from sipp's final statistics screen on its
/// stdout (0 where a line is missing).
pub fn sipp_totals(stdout: &str) -> (u32, u32) {
    let count = |label: &str| {
        stdout
            .lines()
            .rfind(|l| l.contains(label))
            .and_then(|l| l.split('|').nth(2))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    (count("Successful call"), count("Failed call"))
}
