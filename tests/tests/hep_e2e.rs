//! SIP over TLS, judged through HEP, end to end: Debian's Kamailio as a TLS
//! registrar with digest auth (kamailio-tls-modules, a certificate made by
//! the test with openssl) mirrors its decrypted signalling with siptrace as
//! HEPv3 to `sipguard run`'s `[hep] listen` on the PBX namespace's
//! loopback. sipsak guesses passwords over TLS from the client namespace and
//! is banned in the kernel after the level's failures, while a correct TLS
//! registration from another address still works. Needs root (`cargo xtask
//! test`); namespaces, Kamailio and sipguard are stopped on drop.
use std::{path::Path, process::Output, time::Duration};

use guard_common::{BanReason, Reason};
use sipguard_tests::{
    daemon::TempDir,
    kamailio::{peers, KamailioSetup, Pbx, ATTACKER, PBX, PHONE},
    metrics,
};

/// Where siptrace sends HEP, inside the PBX's namespace.
const HEP: &str = "127.0.0.1:9060";

/// Kamailio's TLS listener, siptrace mirroring everything as HEPv3, and the
/// registrar of `peers/kamailio.cfg`: tls.so loaded first (its README asks
/// for that), siptrace after the registrar's modules (it needs tm).
fn kamailio_cfg(dir: &Path) -> String {
    let registrar = std::fs::read_to_string(peers().join("kamailio.cfg")).expect("kamailio.cfg");
    let (modules, route) = registrar
        .trim_start_matches("#!KAMAILIO\n")
        .split_once("request_route {")
        .expect("the registrar's route");
    format!(
        "#!KAMAILIO\n\
enable_tls=yes\n\
loadmodule \"tls.so\"\n\
modparam(\"tls\", \"config\", \"{tls}\")\n\
{modules}\n\
loadmodule \"siptrace.so\"\n\
modparam(\"siptrace\", \"duplicate_uri\", \"sip:{HEP}\")\n\
modparam(\"siptrace\", \"hep_mode_on\", 1)\n\
modparam(\"siptrace\", \"hep_version\", 3)\n\
modparam(\"siptrace\", \"hep_capture_id\", 101)\n\
modparam(\"siptrace\", \"trace_to_database\", 0)\n\
modparam(\"siptrace\", \"trace_on\", 1)\n\
modparam(\"siptrace\", \"trace_mode\", 1)\n\
request_route {{{route}",
        tls = dir.join("tls.cfg").display(),
    )
}

/// A self-signed certificate for the PBX and the TLS module's config.
fn certificate(dir: &Path) {
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=pbx.test"])
        .args(["-addext", &format!("subjectAltName=IP:{PBX},DNS:pbx.test")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // TLS 1.2: sipsak 0.9.8.1 (GnuTLS) gets no answer over TLS 1.3 ("nothing
    // received, select returned error"), seen by hand with Debian's packages.
    let tls = format!(
        "[server:default]\nmethod = TLSv1.2\nverify_certificate = no\nrequire_certificate = no\n\
private_key = {}\ncertificate = {}\n\n[client:default]\nverify_certificate = no\n\
require_certificate = no\n",
        key.display(),
        cert.display()
    );
    std::fs::write(dir.join("tls.cfg"), tls).unwrap();
}

/// One registration of 1001 over TLS with `password`, from the client
/// namespace's current source address for the PBX (sipsak verifies the
/// PBX's certificate against the test's).
fn register(pbx: &Pbx, dir: &Path, contact: &str, password: &str) -> Output {
    pbx.link
        .left
        .command("timeout")
        .args(["10", "sipsak", "-U", "-vv", "-i", "--transport=tls"])
        .arg(format!("--tls-ca-cert={}", dir.join("cert.pem").display()))
        .args(["-s", &format!("sip:1001@{PBX}:5061")])
        .args(["-C", &format!("sip:1001@{contact}:5070")])
        .args(["-a", password])
        .output()
        .expect("running sipsak (apt-get install sipsak)")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Makes `source` the client namespace's address for reaching the PBX
/// (sipsak cannot bind one).
fn source_for_pbx(pbx: &Pbx, source: &str) {
    let out = pbx
        .link
        .left
        .ip(&[
            "route",
            "replace",
            &format!("{PBX}/32"),
            "dev",
            &pbx.link.left_if,
            "src",
            source,
        ])
        .expect("ip route");
    assert!(out.status.success(), "{out:?}");
}

fn metric(text: &str, series: &str) -> u64 {
    metrics::value(text, series).unwrap_or(0)
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn password_guessing_over_tls_is_banned_through_hep() {
    // Declared before the PBX, so removed after Kamailio has stopped.
    let tmp = TempDir::new("hep-tls");
    let dir = tmp.0.clone();
    certificate(&dir);
    let cfg = dir.join("kamailio.cfg");
    std::fs::write(&cfg, kamailio_cfg(&dir)).unwrap();
    let mut pbx = Pbx::start_with(
        "hep",
        &format!("[sip_auth]\nlevel = \"strong\"\n\n[hep]\nlisten = \"{HEP}\"\n"),
        KamailioSetup {
            cfg,
            listen: vec![format!("udp:{PBX}:5060"), format!("tls:{PBX}:5061")],
            ..KamailioSetup::default()
        },
    );
    pbx.guard
        .wait_for(
            &format!("accepting HEPv3 on udp {HEP}"),
            Duration::from_secs(5),
        )
        .unwrap();

    // The phone registers over TLS (a challenge, then 200 OK).
    source_for_pbx(&pbx, PHONE);
    let out = register(&pbx, &dir, PHONE, "correct-horse");
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        pbx.kamailio.log()
    );

    // Four wrong passwords from the attacker: under the strong level's 5.
    source_for_pbx(&pbx, ATTACKER);
    for _ in 0..4 {
        let out = register(&pbx, &dir, ATTACKER, "guess");
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("401"), "{}", text(&out));
    }
    assert!(pbx.ban([10, 78, 0, 4]).is_none(), "{}", pbx.guard.log());

    // The fifth is banned, on the evidence Kamailio mirrored.
    let out = register(&pbx, &dir, ATTACKER, "guess");
    assert!(text(&out).contains("401"), "{}", text(&out));
    let line = pbx
        .guard
        .wait_for("banned 10.78.0.4", Duration::from_secs(5))
        .unwrap();
    assert!(
        line.contains("auth-failure, 5 failures in 6h (proven)"),
        "{line}"
    );
    // sipsak's digest username is "1001@" (the URI's user and an empty host).
    assert!(line.contains("1001@:401"), "{line}");
    let ban = pbx.ban([10, 78, 0, 4]).expect("banned in the kernel");
    assert_eq!(ban.reason, BanReason::AuthFailure as u16);

    // The next TLS handshake never reaches Kamailio.
    let dropped_before = pbx.maps().verdict(Reason::Banned).unwrap().packets;
    let out = register(&pbx, &dir, ATTACKER, "guess");
    assert!(!out.status.success());
    assert!(!text(&out).contains("401"), "{}", text(&out));
    assert!(pbx.maps().verdict(Reason::Banned).unwrap().packets > dropped_before);

    // The phone, from its own address, still registers over TLS.
    source_for_pbx(&pbx, PHONE);
    let out = register(&pbx, &dir, PHONE, "correct-horse");
    assert!(out.status.success(), "{}", text(&out));
    assert!(pbx.ban([10, 78, 0, 2]).is_none());

    // Every HEP message was SIP from an allowed sender, none malformed.
    let text = metrics::scrape(&pbx.link.right, metrics::DEFAULT_ADDRESS)
        .expect("the metrics endpoint answers");
    let accepted = metric(&text, "sipguard_hep_packets_total{result=\"accepted\"}");
    assert!(accepted >= 24, "{text}");
    assert_eq!(
        metric(&text, "sipguard_hep_packets_total{result=\"malformed\"}"),
        0
    );
    assert!(pbx.guard.stop().unwrap().success());
}
