//! A real CrowdSec Local API (Debian's `crowdsec -no-cs`) for the fleet
//! tests, in a network namespace of its own joined to the PBX's by a veth
//! pair, so a test can cut the PBX off the LAPI (`set_link`) while `cscli`
//! still reaches it; more PBXs join with [`Lapi::connect`]. Each LAPI has
//! its own config copy, SQLite database, port and credentials in a
//! temporary directory; it is stopped on drop.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    daemon::TempDir,
    netns::{self, NetNs},
};

/// The LAPI's side of the veth pair, and the PBX's.
const LAPI_ADDR: &str = "10.99.0.1";
const PBX_SIDE_ADDR: &str = "10.99.0.2";
pub const LAPI_PORT: u16 = 18080;

/// The system's hub and profiles are read-only for these LAPIs; everything
/// they write goes into their own directory.
fn config_text(dir: &str) -> String {
    format!(
        "common:
  daemonize: false
  log_media: file
  log_level: info
  log_dir: {dir}/
  working_dir: .
config_paths:
  config_dir: /etc/crowdsec/
  data_dir: {dir}/data/
  simulation_path: /etc/crowdsec/simulation.yaml
  hub_dir: /var/lib/crowdsec/hub/
  index_path: /var/lib/crowdsec/hub/.index.json
  notification_dir: /etc/crowdsec/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
db_config:
  log_level: info
  type: sqlite
  db_path: {dir}/data/crowdsec.db
api:
  client:
    credentials_path: {dir}/local_api_credentials.yaml
  server:
    log_level: info
    # Every veth of its own namespace: one per PBX.
    listen_uri: 0.0.0.0:{LAPI_PORT}
    profiles_path: /etc/crowdsec/profiles.yaml
    trusted_ips:
      - 127.0.0.1
      - {LAPI_ADDR}
prometheus:
  enabled: false
"
    )
}

pub struct Lapi {
    pub ns: NetNs,
    dir: TempDir,
    config: PathBuf,
    /// The PBX-side interface name (in the PBX namespace).
    pbx_if: String,
    pbx_ns: String,
    /// The bouncer key `cscli bouncers add` printed.
    pub bouncer_key: String,
    child: Option<Child>,
}

/// Numbers the veth pairs of this process's LAPIs.
static NEXT: AtomicU32 = AtomicU32::new(0);
/// Numbers the PBXs joined to a LAPI after the first (10.99.N.0/30).
static NEXT_PBX: AtomicU32 = AtomicU32::new(1);

impl Lapi {
    /// Starts a LAPI reachable from `pbx` at [`Lapi::url`], with a machine
    /// (for cscli) and a bouncer registered.
    pub fn start(pbx: &NetNs) -> Result<Lapi> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ns = NetNs::new("lapi")?;
        let lapi_if = format!("sgcs{}x{n}", std::process::id() % 100_000);
        let pbx_if = format!("sgcp{}x{n}", std::process::id() % 100_000);
        ns.ip(&[
            "link", "add", &lapi_if, "type", "veth", "peer", "name", &pbx_if, "netns", &pbx.name,
        ])?;
        ns.ip(&["addr", "add", &format!("{LAPI_ADDR}/30"), "dev", &lapi_if])?;
        ns.ip(&["link", "set", &lapi_if, "up"])?;
        pbx.ip(&[
            "addr",
            "add",
            &format!("{PBX_SIDE_ADDR}/30"),
            "dev",
            &pbx_if,
        ])?;
        pbx.ip(&["link", "set", &pbx_if, "up"])?;

        let dir = TempDir::new("crowdsec");
        std::fs::create_dir_all(dir.0.join("data"))?;
        let config = dir.0.join("config.yaml");
        std::fs::write(&config, config_text(dir.path()))?;
        let mut lapi = Lapi {
            ns,
            dir,
            config,
            pbx_if,
            pbx_ns: pbx.name.clone(),
            bouncer_key: String::new(),
            child: None,
        };
        let credentials = format!("{}/local_api_credentials.yaml", lapi.dir.path());
        lapi.cscli(&[
            "machines",
            "add",
            "sipguard-test",
            "--password",
            "sipguard-test-password",
            "-f",
            &credentials,
            "--force",
        ])?;
        let key = lapi.cscli(&["bouncers", "add", "sipguard-test", "-o", "raw"])?;
        lapi.bouncer_key = key.trim().lines().last().unwrap_or_default().to_string();
        if lapi.bouncer_key.is_empty() {
            bail!("cscli bouncers add printed no key");
        }
        lapi.resume()?;
        Ok(lapi)
    }

    /// The URL the PBX namespace reaches the LAPI at.
    pub fn url(&self) -> String {
        format!("http://{LAPI_ADDR}:{LAPI_PORT}/")
    }

    /// Joins another PBX namespace to the LAPI by a veth pair of its own
    /// (10.99.N.0/30); returns the URL that PBX reaches the LAPI at.
    pub fn connect(&self, pbx: &NetNs) -> Result<String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let net = NEXT_PBX.fetch_add(1, Ordering::Relaxed) % 250 + 1;
        let lapi_if = format!("sgcs{}x{n}", std::process::id() % 100_000);
        let pbx_if = format!("sgcp{}x{n}", std::process::id() % 100_000);
        self.ns.ip(&[
            "link", "add", &lapi_if, "type", "veth", "peer", "name", &pbx_if, "netns", &pbx.name,
        ])?;
        self.ns
            .ip(&["addr", "add", &format!("10.99.{net}.1/30"), "dev", &lapi_if])?;
        self.ns.ip(&["link", "set", &lapi_if, "up"])?;
        pbx.ip(&["addr", "add", &format!("10.99.{net}.2/30"), "dev", &pbx_if])?;
        pbx.ip(&["link", "set", &pbx_if, "up"])?;
        Ok(format!("http://10.99.{net}.1:{LAPI_PORT}/"))
    }

    /// `cscli machines add NAME --password PASSWORD`, its credentials file
    /// in the LAPI's directory (never over the LAPI's own).
    pub fn add_machine(&self, name: &str, password: &str) -> Result<()> {
        let file = format!("{}/machine-{name}.yaml", self.dir.path());
        self.cscli(&[
            "machines",
            "add",
            name,
            "--password",
            password,
            "-f",
            &file,
            "--force",
        ])?;
        Ok(())
    }

    /// `cscli bouncers add NAME -o raw`: the new bouncer's key.
    pub fn add_bouncer(&self, name: &str) -> Result<String> {
        let out = self.cscli(&["bouncers", "add", name, "-o", "raw"])?;
        let key = out.trim().lines().last().unwrap_or_default().to_string();
        if key.is_empty() {
            bail!("cscli bouncers add {name} printed no key");
        }
        Ok(key)
    }

    /// `cscli alerts list -o json`: the alerts, newest first.
    pub fn alerts(&self) -> Result<Vec<serde_json::Value>> {
        let out = self.cscli(&["alerts", "list", "-o", "json"])?;
        // No alert prints `null`.
        let alerts: Option<Vec<serde_json::Value>> =
            serde_json::from_str(out.trim()).with_context(|| format!("alerts as JSON: {out}"))?;
        Ok(alerts.unwrap_or_default())
    }

    /// sipguard's alerts (scenario `sipguard/...`), newest first; a failing
    /// `cscli` fails the test with the LAPI's log.
    pub fn sipguard_alerts(&self) -> Vec<serde_json::Value> {
        self.alerts()
            .unwrap_or_else(|e| panic!("{e:#}\nLAPI log:\n{}", self.log()))
            .into_iter()
            .filter(|a| {
                a["scenario"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("sipguard/"))
            })
            .collect()
    }

    /// `cscli -c CONFIG args...` in the LAPI's namespace; its stdout.
    pub fn cscli(&self, args: &[&str]) -> Result<String> {
        let config = self.config.to_str().context("UTF-8 path")?;
        let mut command = self.ns.command("cscli");
        command.args(["-c", config]).args(args);
        let output = netns::run(&mut command)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// (Re)starts `crowdsec -no-cs` and waits until `/health` answers.
    pub fn resume(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the LAPI already runs");
        }
        let config = self.config.to_str().context("UTF-8 path")?;
        let child = self
            .ns
            .command("crowdsec")
            .args(["-c", config, "-no-cs"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting crowdsec (installed by `cargo xtask setup`)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.healthy() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("crowdsec exited ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("the LAPI did not answer /health in 30 s:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Stops the LAPI: SIGTERM, then SIGKILL after 10 s (it can be slow).
    pub fn halt(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child (`ip netns exec` execs crowdsec).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Cuts (or restores) the PBX's link to the LAPI; cscli still works.
    pub fn set_link(&self, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        netns::ip(&["-n", &self.pbx_ns, "link", "set", &self.pbx_if, state])?;
        if up {
            // The route returns with the link; wait until it is usable.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let out = netns::ip(&["-n", &self.pbx_ns, "route", "get", LAPI_ADDR])?;
                if String::from_utf8_lossy(&out.stdout).contains(&self.pbx_if) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("no route to the LAPI after the link came up");
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The statuses the LAPI answered `METHOD PATH` with, oldest first,
    /// for clients whose User-Agent starts with `agent` (sipguard's is
    /// `sipguard/VERSION`; cscli logs in too). Read from the LAPI's request
    /// log, `crowdsec_api.log`, one line a request, such as
    /// `"POST /v1/watchers/login HTTP/1.1 200 162ms \"sipguard/0.1.0\" "`.
    pub fn answers(&self, method: &str, path: &str, agent: &str) -> Vec<u16> {
        let log = std::fs::read_to_string(self.dir.0.join("crowdsec_api.log")).unwrap_or_default();
        let request = format!("{method} {path} HTTP/1.1 ");
        log.lines()
            .filter_map(|line| {
                let rest = &line[line.find(&request)? + request.len()..];
                let mut words = rest.split(' ');
                let status = words.next()?.parse().ok()?;
                let _time = words.next()?;
                let client = words.next()?.trim_start_matches(['\\', '"']);
                client.starts_with(agent).then_some(status)
            })
            .collect()
    }

    /// The LAPI's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("crowdsec.log")).unwrap_or_default()
    }

    fn healthy(&self) -> bool {
        let answer = self.ns.run_in(|| -> std::io::Result<String> {
            let mut stream = TcpStream::connect((LAPI_ADDR, LAPI_PORT))?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.write_all(b"GET /health HTTP/1.0\r\nHost: lapi\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        });
        matches!(answer.join(), Ok(Ok(Ok(text))) if text.contains("\"up\""))
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.halt();
    }
}
