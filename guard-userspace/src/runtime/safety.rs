//! Refusing policy changes that would cut the operator's own SSH session
//! (unless forced). The sessions are the CLI's SSH_CLIENT and every
//! established TCP connection on the SSH service's ports, read from
//! /proc/net/tcp{,6} in the daemon's network namespace.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use guard_common::{BanEntry, L4Proto, Settings, SourceKey};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    clock,
    kernel::store::MapStore,
    policy::{
        live::LivePolicy,
        verdict::{packet_to, Inputs, KernelState, WithBan},
    },
};

/// The service whose sessions are protected.
pub const SSH_SERVICE: &str = "ssh";
/// Used when the policy has no "ssh" service.
const SSH_PORT: u16 = 22;

/// A live SSH session: its client, and the port it reached.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub client: IpAddr,
    pub server_port: u16,
}

impl Session {
    /// From `SSH_CLIENT` ("client-ip client-port server-port").
    pub fn from_ssh_client(value: &str) -> Option<Session> {
        let mut fields = value.split_whitespace();
        let client = fields.next()?.parse().ok()?;
        let _client_port = fields.next()?;
        let server_port = fields.next()?.parse().ok()?;
        Some(Session {
            client,
            server_port,
        })
    }
}

/// The SSH ports of the policy in force.
pub fn ssh_ports(policy: &LivePolicy) -> Vec<u16> {
    let ports = policy.tcp_ports(SSH_SERVICE);
    if ports.is_empty() {
        vec![SSH_PORT]
    } else {
        ports
    }
}

/// Established connections to `ports` in this network namespace.
pub fn live_sessions(ports: &[u16]) -> Vec<Session> {
    let mut sessions = Vec::new();
    for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(text) = std::fs::read_to_string(path) {
            sessions.extend(parse_proc_net_tcp(&text, v6, ports));
        }
    }
    sessions
}

const TCP_ESTABLISHED: &str = "01";

/// Rows of /proc/net/tcp{,6}: "sl local rem st ...", addresses as hex
/// "ADDR:PORT" with the address in host-order 32-bit words.
pub fn parse_proc_net_tcp(text: &str, v6: bool, ports: &[u16]) -> Vec<Session> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            if *state != TCP_ESTABLISHED {
                return None;
            }
            let (_, local_port) = parse_endpoint(local, v6)?;
            if !ports.contains(&local_port) {
                return None;
            }
            let (client, _) = parse_endpoint(remote, v6)?;
            Some(Session {
                client: client.to_canonical(),
                server_port: local_port,
            })
        })
        .collect()
}

fn parse_endpoint(text: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<u32>> = (0..addr.len() / 8)
        .map(|i| addr.get(i * 8..i * 8 + 8))
        .map(|w| w.and_then(|w| u32::from_str_radix(w, 16).ok()))
        .collect();
    let words = words?;
    let mut bytes = Vec::with_capacity(16);
    for word in &words {
        // The kernel prints each 32-bit word in host (little-endian) order.
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    let ip = match (v6, bytes.len()) {
        (false, 4) => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        (true, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some((ip, port))
}

/// Why `candidate` would cut one of `sessions`, if it would, judged with
/// the shared verdict under `inputs` (monitor mode, bans, rate state).
pub fn would_cut<K: KernelState + ?Sized>(
    candidate: &LivePolicy,
    sessions: &[Session],
    inputs: &Inputs<K>,
) -> Option<String>
where
    K::Error: std::fmt::Display,
{
    sessions
        .iter()
        .find_map(|session| match cut_reason(candidate, session, inputs) {
            Ok(why) => why,
            // Cannot tell: refuse rather than risk the session.
            Err(e) => Some(format!(
                "cannot judge the SSH session from {}: {e}; nothing changed \
                 (--force to do it anyway)",
                session.client
            )),
        })
}

/// Why `policy` drops `session`, if it does: the verdict on one of its
/// packets (TCP to the server port, not a connection attempt).
fn cut_reason<K: KernelState + ?Sized>(
    policy: &LivePolicy,
    session: &Session,
    inputs: &Inputs<K>,
) -> Result<Option<String>, K::Error> {
    let packet = packet_to(session.client, L4Proto::Tcp, session.server_port, false);
    let judged = policy.judge(&packet, inputs)?;
    Ok(judged.verdict.drops().then(|| {
        format!(
            "this would cut the SSH session from {} to port {} ({}: {}); nothing changed \
             (--force to do it anyway)",
            session.client,
            session.server_port,
            policy.tcp_service(session.server_port),
            policy.because(&judged)
        )
    }))
}

/// The SSH-lockout check for one request: the CLI's session and `--force`.
pub struct LockoutCheck {
    /// Do it anyway (logged).
    pub force: bool,
    /// The CLI's own session.
    pub session: Option<Session>,
}

/// What a change leaves in force.
pub struct After<'a> {
    pub policy: &'a LivePolicy,
    /// A ban the change adds.
    pub new_ban: Option<(SourceKey, BanEntry)>,
    /// Monitor mode after the change; None: as it is now.
    pub monitor: Option<bool>,
}

impl LockoutCheck {
    /// Refuses a change from `current` to `after` that would drop an SSH
    /// session which passes now (in monitor mode every session passes).
    pub fn check(
        &self,
        current: &LivePolicy,
        maps: &dyn MapStore,
        after: After,
    ) -> Result<(), String> {
        let settings_now = maps.settings().unwrap_or(current.compiled.settings);
        let settings_after = Settings {
            monitor: after.monitor.map_or(settings_now.monitor, u8::from),
            ..settings_now
        };
        let mut ports = ssh_ports(current);
        ports.extend(ssh_ports(after.policy));
        let mut sessions = live_sessions(&ports);
        sessions.extend(self.session);
        let now_ns = clock::monotonic_ns();
        let now = Inputs {
            settings: settings_now,
            state: maps,
            now_ns,
        };
        let with_ban = WithBan {
            state: maps,
            ban: after.new_ban,
        };
        let later = Inputs {
            settings: settings_after,
            state: &with_ban,
            now_ns,
        };
        // Only sessions that pass now can be cut (one the kernel's state
        // cannot be read for is kept: better refuse than cut it).
        let open: Vec<Session> = sessions
            .into_iter()
            .filter(|s| !matches!(cut_reason(current, s, &now), Ok(Some(_))))
            .collect();
        match would_cut(after.policy, &open, &later) {
            Some(why) if self.force => {
                warn!("forced by the operator: {why}");
                Ok(())
            }
            Some(why) => Err(format!("refused: {why}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policy::{config::Config, verdict::NoKernelState},
        state::ListChanges,
    };

    const TCP4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100000A:0016 0200000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100000A:1F90 0300000A:C351 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st
   0: B80D0120000000000000000001000000:0016 B80D0120000000000000000002000000:D431 01 00000000:00000000
";

    #[test]
    fn established_ssh_sessions_are_found() {
        let v4 = parse_proc_net_tcp(TCP4, false, &[22]);
        assert_eq!(
            v4,
            vec![Session {
                client: "10.0.0.2".parse().unwrap(),
                server_port: 22
            }]
        );
        let v6 = parse_proc_net_tcp(TCP6, true, &[22]);
        assert_eq!(v6[0].client, "2001:db8::2".parse::<IpAddr>().unwrap());
        assert!(
            parse_proc_net_tcp("header\n garbage line\n 1: zz:zz yy:yy 01\n", false, &[22])
                .is_empty()
        );
    }

    #[test]
    fn ssh_client_variable_parses() {
        let session = Session::from_ssh_client("192.0.2.10 51234 22").unwrap();
        assert_eq!(session.client, "192.0.2.10".parse::<IpAddr>().unwrap());
        assert_eq!(session.server_port, 22);
        assert!(Session::from_ssh_client("nonsense").is_none());
    }

    fn policy(text: &str) -> LivePolicy {
        let config = Config::parse(text, "test.toml").unwrap();
        LivePolicy::build(config, "test".into(), ListChanges::default())
    }

    /// The policy's own settings, no bans, no rate state.
    fn alone(policy: &LivePolicy) -> Inputs<'static, NoKernelState> {
        Inputs {
            settings: policy.compiled.settings,
            state: &NoKernelState,
            now_ns: 1,
        }
    }

    #[test]
    fn a_deny_covering_the_operator_is_caught() {
        let session = Session {
            client: "192.0.2.10".parse().unwrap(),
            server_port: 22,
        };
        let safe = policy("");
        assert_eq!(would_cut(&safe, &[session], &alone(&safe)), None);
        let denied = policy("[[deny]]\ncidr = \"192.0.2.0/24\"\n");
        let why = would_cut(&denied, &[session], &alone(&denied)).unwrap();
        assert!(
            why.contains("192.0.2.10") && why.contains("denied by 192.0.2.0/24"),
            "{why}"
        );
        let trusted = policy("[services.ssh]\naccess = \"trusted\"\n");
        assert!(would_cut(&trusted, &[session], &alone(&trusted)).is_some());
        let trusted_and_allowed = policy(
            "[services.ssh]\naccess = \"trusted\"\n[[allow]]\ncidr = \"192.0.2.10/32\"\nservices = [\"ssh\"]\n",
        );
        assert_eq!(
            would_cut(
                &trusted_and_allowed,
                &[session],
                &alone(&trusted_and_allowed)
            ),
            None
        );
        let drop_all_ssh_unlisted =
            policy("[guard]\ndefault_policy = \"drop\"\n[services.ssh]\nports = [\"2222/tcp\"]\n");
        // Port 22 is no service now, and "drop" takes it.
        let inputs = alone(&drop_all_ssh_unlisted);
        assert!(would_cut(&drop_all_ssh_unlisted, &[session], &inputs).is_some());
    }

    #[test]
    fn in_monitor_mode_a_denied_session_is_not_cut() {
        let session = Session {
            client: "192.0.2.10".parse().unwrap(),
            server_port: 22,
        };
        let denied = policy("[[deny]]\ncidr = \"192.0.2.0/24\"\n");
        let mut monitor = alone(&denied);
        monitor.settings.monitor = 1;
        assert_eq!(would_cut(&denied, &[session], &monitor), None);
        // And a ban the change would add cuts it once monitor mode is off.
        let safe = policy("");
        let ban = BanEntry {
            expires_ns: u64::MAX,
            ..BanEntry::default()
        };
        let key = crate::kernel::maps::source_key(session.client, 64);
        let with_ban = WithBan {
            state: &NoKernelState,
            ban: Some((key, ban)),
        };
        let inputs = Inputs {
            settings: safe.compiled.settings,
            state: &with_ban,
            now_ns: 1,
        };
        let why = would_cut(&safe, &[session], &inputs).unwrap();
        assert!(why.contains("banned"), "{why}");
    }
}
