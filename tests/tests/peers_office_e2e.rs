//! Learned peers at work (issue 11): an office behind one NAT address and a
//! provider's trunk, under the built-in policy (the vendors' rules: 120
//! packets in 60 s and 40 in 2 s on UDP 5060), are never banned, however far
//! past those limits their normal work goes. Debian's Kamailio is the PBX
//! (`peers/office-pbx.cfg`: registrar, BLF, calls to an IVR, and a trunk
//! registration with `uac_reg`) and the provider (`peers/provider.cfg`);
//! sipp plays the phones, the IVR and the provider's calls. `sipguard peers
//! --json` and `explain` must say what the kernel does. Needs root (`cargo
//! xtask test`); the namespaces (`sg-po...`) are deleted on drop.
use std::{
    net::UdpSocket,
    os::unix::process::CommandExt,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use guard_userspace::control::protocol::{BanRow, PeerRow};
use md5::{Digest, Md5};
use sipguard_tests::{
    daemon::{Daemon, TempDir, TempFile},
    kamailio::{peers, sipp_totals, KamailioSetup, Pbx, PBX, PHONE},
    metrics,
    netns::NetNs,
    traffic::cli,
};

/// The office's NAT address (the phones' side of the veth).
const OFFICE: &str = PHONE;
/// The provider: its registrar and its calls, from the same address.
const PROVIDER: &str = "10.78.0.4";
/// Where the IVR's SDP says its media goes (the test counts it there).
const IVR_MEDIA_PORT: u16 = 16000;
/// Where the office phone's SDP says its media comes from.
const PHONE_MEDIA_PORT: u16 = 20000;

/// The office: 30 phones re-registering every 2 s (15 registrations a
/// second), for 75 s.
///
/// Why that is enough (the issue asks for 3 minutes; the rate is the
/// same, the length is cut to keep CI short): each registration is two
/// packets from the office (REGISTER, then REGISTER with credentials), so
/// the phones alone send 30 packets a second. The 40-per-2s rule is crossed
/// within the first 1.4 s and then in every 2-s window of the run (about
/// 60, plus the BLF and the call: twice its limit), some 37 windows in a
/// row; the 120-per-60s rule is crossed after 4 s and its window then holds
/// up to about 2,300 packets, nineteen times its limit, for the last 15 s.
/// Without the peer budget the first crossing bans the office for an hour.
/// A longer run repeats the same windows.
const PHONES: u32 = 30;
const REGISTRATIONS_PER_SECOND: u32 = 15;
const OFFICE_SECONDS: u32 = 75;

/// The provider's calls: 300 a minute (5 a second), for 70 s. Each is
/// INVITE, ACK and BYE from the provider: 15 packets a second, under the
/// 40-per-2s rule but 900 in a minute, 7.5 times the 120-per-60s rule's
/// limit, which would ban a stranger after 8 s and a registered peer with
/// no users (x2) after 16 s.
const TRUNK_CALLS_PER_SECOND: u32 = 5;
const TRUNK_CALLS: u32 = 350;

/// The PBX's Kamailio config, with `defines` in place of its marker line.
fn pbx_config(defines: &str) -> TempFile {
    let text = std::fs::read_to_string(peers().join("office-pbx.cfg")).expect("office-pbx.cfg");
    assert!(text.contains("# @DEFINES@"));
    TempFile::new("office-pbx.cfg", &text.replace("# @DEFINES@", defines))
}

/// The PBX (Kamailio on 10.78.0.1:5060, and sipguard with the built-in
/// policy) and its IVR (a sipp UAS on port 5090).
fn start_pbx(tag: &str, cfg: &TempFile) -> (Pbx, Daemon) {
    let setup = KamailioSetup {
        cfg: cfg.0.clone(),
        listen: vec![format!("udp:{PBX}:5060")],
        ..KamailioSetup::default()
    };
    let pbx = Pbx::start_with(tag, "", setup);
    let ivr = spawn_quiet(
        &pbx.link.right,
        "sipp",
        &[
            "-sf",
            peers().join("ivr-uas.xml").to_str().unwrap(),
            "-i",
            PBX,
            "-p",
            "5090",
            "-nostdin",
        ],
    );
    (pbx, ivr)
}

/// A long-running program in `ns` whose screen output nobody reads (it
/// would fill the pipe): stdout to /dev/null, stderr kept as its log,
/// stopped with its children when dropped.
fn spawn_quiet(ns: &NetNs, program: &str, args: &[&str]) -> Daemon {
    let child = ns
        .command(program)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    Daemon::watch(child)
}

/// What a sipp run ended with.
struct SippRun {
    successful: u32,
    failed: u32,
    output: String,
}

/// Runs sipp in namespace `ns` against the PBX on a thread of its own.
fn sipp(ns: &NetNs, scenario: &str, args: &[String]) -> JoinHandle<SippRun> {
    let mut command = ns.command("timeout");
    command
        .args(["400", "sipp", &format!("{PBX}:5060"), "-sf"])
        .arg(peers().join(scenario))
        .args(args)
        .args(["-nostdin", "-recv_timeout", "5000", "-timeout", "300s"]);
    thread::spawn(move || {
        let output = command
            .output()
            .expect("running sipp (apt-get install sip-tester)");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (successful, failed) = sipp_totals(&text);
        SippRun {
            successful,
            failed,
            output: format!("{text}{}", String::from_utf8_lossy(&output.stderr)),
        }
    })
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// `sipguard peers --json`, as the typed rows the daemon sent.
fn peers_json(pbx: &Pbx) -> Vec<PeerRow> {
    let out = cli(&pbx.socket, &["peers", "--json"]);
    assert!(
        out.status.success(),
        "sipguard peers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "peers --json is not a list of peers ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The learned peer `source`, once `ready` holds of it.
fn wait_for_peer(
    pbx: &Pbx,
    source: &str,
    ready: impl Fn(&PeerRow) -> bool,
    timeout: Duration,
) -> PeerRow {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = peers_json(pbx);
        if let Some(row) = rows.iter().find(|r| r.source == source && ready(r)) {
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{source} is not the peer expected within {timeout:?}: {rows:?}\n{}",
            pbx.guard.log()
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// Packets the kernel counted from a peer in the window of `rule`.
fn counted(row: &PeerRow, rule: &str) -> u64 {
    row.packets
        .iter()
        .find(|r| r.rule == rule)
        .unwrap_or_else(|| panic!("no rule {rule} in {row:?}"))
        .counted
}

fn assert_not_banned(pbx: &Pbx, source: &str, ip: [u8; 4]) {
    assert!(
        pbx.ban(ip).is_none(),
        "{source} was banned:\n{}",
        pbx.guard.log()
    );
    let out = cli(&pbx.socket, &["bans", "--json"]);
    let bans: Vec<BanRow> = serde_json::from_slice(&out.stdout).expect("bans as JSON");
    assert!(bans.is_empty(), "{bans:?}");
}

/// The metrics the guard serves in the PBX's namespace.
fn scrape(pbx: &Pbx) -> String {
    metrics::scrape(&pbx.link.right, metrics::DEFAULT_ADDRESS).expect("the metrics endpoint")
}

/// Counts the RTP datagrams from `source` arriving at the IVR's media port.
struct RtpReceiver {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<anyhow::Result<u64>>,
}

impl RtpReceiver {
    fn start(ns: &NetNs, source: &'static str) -> RtpReceiver {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let socket = ns
            .run_in(|| UdpSocket::bind((PBX, IVR_MEDIA_PORT)))
            .join()
            .expect("bind thread")
            .expect("the PBX's namespace")
            .expect("binding the IVR's media port");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let source: std::net::IpAddr = source.parse().unwrap();
        // The socket lives in the PBX's namespace whatever thread reads it.
        let handle = thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut seen = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    seen += u64::from(from.ip() == source);
                }
            }
            Ok(seen)
        });
        RtpReceiver { stop, handle }
    }

    fn finish(self) -> u64 {
        thread::sleep(Duration::from_millis(500));
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .expect("receiver thread")
            .expect("receiver")
    }
}

/// Sends `packets` RTP packets (PCMU, 20 ms each) from the office phone's
/// media port to the IVR's, as the call's media; returns how many it sent.
fn send_rtp(ns: &NetNs, packets: u16) -> JoinHandle<anyhow::Result<u64>> {
    ns.run_in(move || {
        let socket =
            UdpSocket::bind((OFFICE, PHONE_MEDIA_PORT)).expect("binding the phone's media");
        let mut sent = 0;
        let start = Instant::now();
        for seq in 0..packets {
            let mut packet = vec![0x80, 0x00];
            packet.extend_from_slice(&seq.to_be_bytes());
            packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            packet.extend_from_slice(&0x5167_7561u32.to_be_bytes());
            packet.extend_from_slice(&[0xff; 160]);
            socket
                .send_to(&packet, (PBX, IVR_MEDIA_PORT))
                .expect("sending RTP");
            sent += 1;
            let next = start + Duration::from_millis(20) * (u32::from(seq) + 1);
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        sent
    })
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn an_office_behind_one_address_is_never_banned_and_its_calls_keep_their_media() {
    let cfg = pbx_config("");
    let (pbx, _ivr) = start_pbx("po-office", &cfg);

    // The injection files: the phones' users and credentials, the BLF keys.
    let mut users = String::from("SEQUENTIAL\n");
    for n in 0..PHONES {
        let user = 2000 + n;
        users.push_str(&format!(
            "{user};[authentication username={user} password=correct-horse]\n"
        ));
    }
    let users = TempFile::new("office-users.csv", &users);
    let mut keys = String::from("SEQUENTIAL\n");
    for n in 1..PHONES {
        keys.push_str(&format!("{}\n", 2000 + n));
    }
    let keys = TempFile::new("office-blf.csv", &keys);

    let registrations = REGISTRATIONS_PER_SECOND * OFFICE_SECONDS;
    let phones = sipp(
        &pbx.link.left,
        "office-register.xml",
        &strings(&[
            "-i",
            OFFICE,
            "-p",
            "5071",
            "-inf",
            users.path(),
            "-r",
            &REGISTRATIONS_PER_SECOND.to_string(),
            "-rp",
            "1000",
            "-m",
            &registrations.to_string(),
        ]),
    );
    // Every phone registered: the office is one peer with 30 live users
    // (more for a moment while a phone's challenge is pending), learned
    // within its first second of work.
    let office = wait_for_peer(&pbx, OFFICE, |r| r.users >= PHONES, Duration::from_secs(20));
    assert_eq!(office.kind, "registered");
    assert_eq!(
        office.budget_factor,
        2 * u64::from(office.users),
        "users x factor 2"
    );

    // The receptionist's 29 BLF keys, each refreshed about every 10 s, and
    // a call to the IVR with its media, while the phones go on registering.
    let blf_seconds = OFFICE_SECONDS - 15;
    let blf = sipp(
        &pbx.link.left,
        "office-blf.xml",
        &strings(&[
            "-i",
            OFFICE,
            "-p",
            "5072",
            "-s",
            "2000",
            "-au",
            "2000",
            "-ap",
            "correct-horse",
            "-inf",
            keys.path(),
            "-r",
            "3",
            "-rp",
            "1000",
            "-m",
            &(3 * blf_seconds).to_string(),
        ]),
    );
    let media = RtpReceiver::start(&pbx.link.right, OFFICE);
    let call_ms = (OFFICE_SECONDS - 15) * 1000;
    let call = sipp(
        &pbx.link.left,
        "office-call.xml",
        &strings(&[
            "-i",
            OFFICE,
            "-p",
            "5073",
            "-s",
            "500",
            "-au",
            "2001",
            "-ap",
            "correct-horse",
            "-d",
            &call_ms.to_string(),
            "-m",
            "1",
        ]),
    );
    // The call's media: 50 packets a second for most of the call.
    thread::sleep(Duration::from_secs(2));
    let rtp_packets = (call_ms / 20 - 250) as u16;
    let rtp = send_rtp(&pbx.link.left, rtp_packets);

    // While all that runs, what the kernel counts from the office: far past
    // the plain limits, inside its budget.
    let mut busiest_2s = 0;
    let mut busiest_60s = 0;
    let deadline = Instant::now() + Duration::from_secs(u64::from(OFFICE_SECONDS) - 25);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_secs(3));
        let rows = peers_json(&pbx);
        let Some(row) = rows.iter().find(|r| r.source == OFFICE) else {
            panic!("the office is no longer a peer: {rows:?}");
        };
        busiest_2s = busiest_2s.max(counted(row, "sip-udp-40-per-2s"));
        busiest_60s = busiest_60s.max(counted(row, "sip-udp-120-per-60s"));
        assert_not_banned(&pbx, OFFICE, [10, 78, 0, 2]);
    }

    let sent = rtp
        .join()
        .expect("RTP thread")
        .expect("the office's namespace");
    let call = call.join().expect("call thread");
    let received = media.finish();
    let blf = blf.join().expect("BLF thread");
    let phones = phones.join().expect("phones thread");

    assert_eq!(
        (phones.successful, phones.failed),
        (registrations, 0),
        "{}",
        phones.output
    );
    assert_eq!(
        (blf.successful, blf.failed),
        (3 * blf_seconds, 0),
        "{}",
        blf.output
    );
    assert_eq!((call.successful, call.failed), (1, 0), "{}", call.output);
    assert_eq!(received, sent, "the call's media arrived whole");
    assert_not_banned(&pbx, OFFICE, [10, 78, 0, 2]);
    assert!(
        busiest_2s > 40,
        "the office never crossed 40 in 2 s ({busiest_2s}): the test proves nothing"
    );
    assert!(
        busiest_60s > 10 * 120,
        "the office never crossed 10 x 120 in 60 s ({busiest_60s})"
    );

    // What the operator sees: the peer, its budget and its counts.
    let rows = peers_json(&pbx);
    let office = rows
        .iter()
        .find(|r| r.source == OFFICE)
        .expect("the office");
    assert_eq!(
        (office.kind.as_str(), office.users, office.budget_factor),
        ("registered", PHONES, 60),
        "{rows:?}"
    );
    // Its registrations last 60 s, but its authenticated call and
    // subscriptions keep it a peer for the idle time (10 minutes).
    assert!((1..=600).contains(&office.expires_seconds), "{office:?}");
    let rule = office
        .packets
        .iter()
        .find(|r| r.rule == "sip-udp-40-per-2s")
        .unwrap();
    assert_eq!(rule.budget, 40 * 60);
    let out = cli(&pbx.socket, &["peers"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("SOURCE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(OFFICE) && l.contains("registered") && l.contains("x60")),
        "{table}"
    );
    let out = cli(&pbx.socket, &["explain", OFFICE]);
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(
        words.contains("learned peer: 30 live registrations, rate budget x60"),
        "{words}"
    );
    let text = scrape(&pbx);
    assert_eq!(
        metrics::value(&text, "sipguard_peers{kind=\"registered\"}"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metrics::value(&text, "sipguard_peer_registrations"),
        Some(u64::from(PHONES)),
        "{text}"
    );
    assert_eq!(
        metrics::value(
            &text,
            "sipguard_packets_total{reason=\"rate_limited\",service=\"sip\"}"
        )
        .unwrap_or(0),
        0,
        "{text}"
    );
    // A clean stop takes its control socket away with it.
    let mut pbx = pbx;
    assert!(pbx.guard.stop().unwrap().success());
}

/// The uac_reg table (db_text) with the PBX's one trunk registration.
fn trunk_table() -> TempDir {
    let dir = TempDir::new("uacreg");
    let version = "id(int,auto) table_name(string) table_version(int) \n0:uacreg:5\n";
    std::fs::write(dir.0.join("version"), version).unwrap();
    let columns = std::fs::read_to_string("/usr/share/kamailio/dbtext/kamailio/uacreg")
        .map(|t| t.lines().next().unwrap_or_default().to_string())
        .ok()
        .filter(|header| header.starts_with("id(int,auto)"))
        .expect("Debian's kamailio ships the uacreg table's columns");
    // l_uuid, l_username, l_domain, r_username, r_domain, realm,
    // auth_username, auth_password, auth_ha1, auth_proxy, expires (60 s),
    // flags, reg_delay, contact_addr, socket. db_text takes no empty
    // strings, and a colon in a value is written `\:`.
    let ha1: String = Md5::digest(b"pbxtrunk:provider.test:trunk-secret")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let row = format!(
        "1:trunk:pbxtrunk:pbx.test:pbxtrunk:{PROVIDER}:provider.test:pbxtrunk:trunk-secret:{ha1}:\
         sip\\:{PROVIDER}\\:5060:60:0:0:{PBX}\\:5060:udp\\:{PBX}\\:5060\n"
    );
    std::fs::write(dir.0.join("uacreg"), format!("{columns}\n{row}")).unwrap();
    dir
}

#[test]
#[ignore = "needs root: run through `cargo xtask test`"]
fn the_pbxs_provider_is_learned_from_its_registration_and_its_calls_are_never_banned() {
    let table = trunk_table();
    let defines = format!(
        "#!define WITH_TRUNK\n#!define UACREG_DB \"text://{}\"\n",
        table.path()
    );
    let cfg = pbx_config(&defines);
    let (pbx, _ivr) = start_pbx("po-trunk", &cfg);

    // The provider's registrar, in its own namespace (the far side of the
    // veth). The PBX registers there on its own (uac_reg, retrying until
    // the provider answers): the watcher sees the PBX act as a client, and
    // the provider's 2xx to it.
    let provider_run = TempDir::new("kamailio-provider");
    let mut provider = spawn_quiet(
        &pbx.link.left,
        "kamailio",
        &[
            "-f",
            peers().join("provider.cfg").to_str().unwrap(),
            "-l",
            &format!("udp:{PROVIDER}:5060"),
            "-DD",
            "-E",
            "-n",
            "1",
            "-Y",
            provider_run.path(),
        ],
    );
    provider
        .wait_for("SO_RCVBUF is finally", Duration::from_secs(20))
        .expect("the provider's kamailio listening");
    let learned = wait_for_peer(
        &pbx,
        PROVIDER,
        |r| r.kind == "provider",
        Duration::from_secs(60),
    );
    assert_eq!(learned.users, 0);
    assert_eq!(learned.budget_factor, 200, "a provider's budget is the cap");
    assert!((1..=60).contains(&learned.expires_seconds), "{learned:?}");

    // 300 calls a minute from the provider's address to the PBX.
    let calls = sipp(
        &pbx.link.left,
        "trunk-call.xml",
        &strings(&[
            "-i",
            PROVIDER,
            "-p",
            "5070",
            "-s",
            "500",
            "-r",
            &TRUNK_CALLS_PER_SECOND.to_string(),
            "-rp",
            "1000",
            "-m",
            &TRUNK_CALLS.to_string(),
        ]),
    )
    .join()
    .expect("calls thread");
    assert_eq!(
        (calls.successful, calls.failed),
        (TRUNK_CALLS, 0),
        "{}\n{}",
        calls.output,
        pbx.guard.log()
    );
    assert_not_banned(&pbx, PROVIDER, [10, 78, 0, 4]);

    let rows = peers_json(&pbx);
    let provider_row = rows
        .iter()
        .find(|r| r.source == PROVIDER)
        .expect("the provider");
    assert_eq!(
        (provider_row.kind.as_str(), provider_row.budget_factor),
        ("provider", 200),
        "{rows:?}"
    );
    // The last minute of calls, as the kernel counted it: five times the
    // plain limit at least, inside the provider's budget (120 x 200).
    let minute = counted(provider_row, "sip-udp-120-per-60s");
    assert!(minute > 5 * 120, "{provider_row:?}");
    let out = cli(&pbx.socket, &["explain", PROVIDER]);
    let words = String::from_utf8_lossy(&out.stdout);
    assert!(
        words.contains("learned peer: the PBX's provider"),
        "{words}"
    );
    let text = scrape(&pbx);
    assert_eq!(
        metrics::value(&text, "sipguard_peers{kind=\"provider\"}"),
        Some(1),
        "{text}"
    );
    drop(provider);
    let mut pbx = pbx;
    assert!(pbx.guard.stop().unwrap().success());
}
