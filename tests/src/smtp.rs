//! A local SMTP sink for the e-mail alert tests: Debian's python3-aiosmtpd
//! running tests/scripts/smtp_sink.py inside the test's namespace, with
//! STARTTLS on a certificate made by the test (openssl) and AUTH required.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{
    daemon::{Daemon, TempDir},
    netns::{run, NetNs},
};

/// Debian's interpreter, which has python3-aiosmtpd (not a pyenv shim).
const PYTHON: &str = "/usr/bin/python3";
pub const USER: &str = "pbx-alerts";
pub const PASSWORD: &str = "correct horse battery";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/smtp_sink.py")
}

/// A test CA and a certificate for `localhost` signed by it (a self-signed
/// CA certificate cannot serve as the server's own: webpki refuses a CA
/// used as an end entity).
pub struct TestCertificates {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCertificates {
    pub fn make(dir: &Path) -> Result<TestCertificates> {
        let at = |name: &str| dir.join(name);
        let path = |name: &str| at(name).to_string_lossy().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        run(Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-keyout", &path("ca.key"), "-out", &path("ca.pem")])
            .args(["-days", "2", "-subj", "/CN=sipguard test CA"]))?;
        run(Command::new("openssl")
            .arg("req")
            .args(ec)
            .args(["-keyout", &path("server.key"), "-out", &path("server.csr")])
            .args(["-subj", "/CN=localhost"]))?;
        std::fs::write(
            at("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        run(Command::new("openssl")
            .args(["x509", "-req", "-in", &path("server.csr")])
            .args(["-CA", &path("ca.pem"), "-CAkey", &path("ca.key")])
            .args(["-CAcreateserial", "-days", "2"])
            .args(["-out", &path("server.pem"), "-extfile", &path("server.ext")]))?;
        Ok(TestCertificates {
            ca: at("ca.pem"),
            cert: at("server.pem"),
            key: at("server.key"),
        })
    }
}

/// The running sink; stopped (with its process group) on drop.
pub struct SmtpSink {
    _process: Daemon,
    out: PathBuf,
    pub certificates: TestCertificates,
    pub port: u16,
}

impl SmtpSink {
    /// Starts the sink on 127.0.0.1:`port` inside `ns`; files go to `dir`.
    pub fn start(ns: &NetNs, dir: &TempDir, port: u16) -> Result<SmtpSink> {
        let dir_path = Path::new(dir.path());
        let certificates = TestCertificates::make(dir_path)?;
        let out = dir_path.join("mails.jsonl");
        let arg = |p: &Path| p.to_string_lossy().to_string();
        let child = ns.spawn(
            PYTHON,
            &[
                &arg(&script()),
                "127.0.0.1",
                &port.to_string(),
                &arg(&certificates.cert),
                &arg(&certificates.key),
                USER,
                PASSWORD,
                &arg(&out),
            ],
        )?;
        let mut process = Daemon::watch(child);
        process
            .wait_for("ready", Duration::from_secs(10))
            .context("the SMTP sink (is python3-aiosmtpd installed? `cargo xtask setup`)")?;
        Ok(SmtpSink {
            _process: process,
            out,
            certificates,
            port,
        })
    }

    /// Every mail accepted so far.
    pub fn mails(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits until `done` holds for the mails (or fails after `timeout`).
    pub fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mails = self.mails();
            if done(&mails) {
                return Ok(mails);
            }
            if Instant::now() > deadline {
                bail!("not within {timeout:?}; the mails: {mails:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
