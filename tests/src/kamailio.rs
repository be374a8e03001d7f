//! A PBX for end-to-end tests: Debian's Kamailio as a registrar with
//! digest authentication (`peers/kamailio.cfg`: extensions 1001 and 1002,
//! password "correct-horse", realm "pbx.test") and `sipguard run` watching
//! its veth, in a namespace pair deleted on drop.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use guard_common::SourceKey;
use guard_userspace::kernel::maps::KernelMaps;

use crate::{
    daemon::{start_guard, Daemon, TempFile},
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
    pub socket: String,
}

impl Pbx {
    pub fn start(tag: &str, config: &str) -> Pbx {
        let link = Link::new(tag, &["10.78.0.2/24", "10.78.0.4/24"], &["10.78.0.1/24"])
            .expect("namespaces and veth");
        let run_dir =
            std::env::temp_dir().join(format!("sipguard-kamailio-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&run_dir).unwrap();
        let kamailio_cfg = peers().join("kamailio.cfg");
        let child = link
            .right
            .spawn(
                "kamailio",
                &[
                    "-f",
                    kamailio_cfg.to_str().unwrap(),
                    "-l",
                    &format!("udp:{PBX}:5060"),
                    "-DD",
                    "-E",
                    "-n",
                    "1",
                    "-Y",
                    run_dir.to_str().unwrap(),
                ],
            )
            .expect("starting kamailio (apt-get install kamailio)");
        let mut kamailio = Daemon::watch(child);
        kamailio
            .wait_for("SO_RCVBUF is finally", Duration::from_secs(20))
            .expect("kamailio listening");

        let config = TempFile::new(&format!("{tag}.toml"), config);
        let socket = std::env::temp_dir()
            .join(format!("sipguard-{tag}-{}.sock", std::process::id()))
            .display()
            .to_string();
        let (mut guard, program_id) = start_guard(
            &link.right,
            &link.right_if,
            &config,
            &["--control-socket", &socket],
        )
        .expect("sipguard attached");
        guard
            .wait_for("watching SIP authentication", Duration::from_secs(10))
            .unwrap();
        Pbx {
            link,
            guard,
            kamailio,
            program_id,
            _config: config,
            socket,
        }
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
        let text = String::from_utf8_lossy(&output.stdout);
        let count = |label: &str| {
            text.lines()
                .rfind(|l| l.contains(label))
                .and_then(|l| l.split('|').nth(2))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        };
        (count("Successful call"), count("Failed call"))
    }

    pub fn ban(&self, ip: [u8; 4]) -> Option<guard_common::BanEntry> {
        self.maps().ban(&SourceKey::from_ipv4(ip)).unwrap()
    }
}
