//! What the CLI and the daemon say to each other: typed requests, a typed
//! answer for each, and one error kind that decides the CLI's exit code.
use std::{net::IpAddr, path::PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::runtime::{
    bans::{BanOrigin, BanRow, Banned, Unbanned},
    explain::Explanation,
    lists::ListChange,
    peer_rows::{PeerRow, RuleCount},
    status::{MonitorSwitch, Status},
    switch::{Confirmed, MonitorOutcome, PolicySwitch},
    MonitorOrigin,
};
pub use crate::{policy::live::ListEntry, runtime::safety::Session};

pub const DEFAULT_SOCKET: &str = "/run/sipguard/control.sock";
/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    BanAdd {
        ip: IpAddr,
        /// None: until removed.
        seconds: Option<u64>,
        reason: Option<String>,
    },
    BanRemove {
        ip: IpAddr,
    },
    Bans {
        /// Only this origin's (CrowdSec's and the feeds' include their
        /// networks in the fleet deny set).
        #[serde(default)]
        origin: Option<BanOrigin>,
    },
    AllowAdd {
        cidr: IpNet,
        /// Service names, "all" or "other"; empty means "all".
        services: Vec<String>,
        comment: Option<String>,
        /// Take a network with host bits set as its masked network
        /// (without it, such a network is refused: see [`exact_network`]).
        #[serde(default)]
        normalize: bool,
    },
    AllowRemove {
        cidr: IpNet,
        #[serde(default)]
        normalize: bool,
    },
    AllowList,
    DenyAdd {
        cidr: IpNet,
        comment: Option<String>,
        #[serde(default)]
        normalize: bool,
    },
    DenyRemove {
        cidr: IpNet,
        #[serde(default)]
        normalize: bool,
    },
    DenyList,
    Explain {
        ip: IpAddr,
        /// `--user`/`--dial`: also judge that request by the SIP rules.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sip: Option<crate::runtime::explain::SipQuery>,
    },
    /// The learned peers in the kernel's peer map.
    Peers,
    /// Switch monitor mode (count every verdict, drop nothing) on or off.
    Monitor {
        on: bool,
    },
    /// Re-read the config file the daemon was started with (or last applied).
    Reload,
    /// Apply a config file; with `confirm_seconds`, revert unless confirmed in time.
    Apply {
        path: PathBuf,
        confirm_seconds: Option<u64>,
    },
    /// Keep the change that `apply --confirm` made.
    Confirm,
}

/// A network given with host bits set (10.98.0.77/24): refused, naming the
/// masked network, as iproute2 does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given} has host bits set; the network is {masked} (give that, or add --normalize)")]
pub struct HostBits {
    pub given: IpNet,
    pub masked: IpNet,
}

/// The network a list request names, in its one canonical form (host bits
/// clear): as given, or masked when `normalize` asks for that; a network
/// with host bits is otherwise refused. The CLI and the daemon both check.
pub fn exact_network(given: IpNet, normalize: bool) -> Result<IpNet, HostBits> {
    let masked = given.trunc();
    if masked == given || normalize {
        Ok(masked)
    } else {
        Err(HostBits { given, masked })
    }
}

/// A request with what the safety check needs from the CLI.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    #[serde(flatten)]
    pub request: Request,
    /// Do it even if it cuts the operator's SSH session.
    #[serde(default)]
    pub force: bool,
    /// The CLI's own SSH session (from SSH_CLIENT), if any.
    #[serde(default)]
    pub session: Option<Session>,
}

/// The answer to each request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "reply", content = "data", rename_all = "snake_case")]
pub enum Reply {
    Status(Status),
    Banned(Banned),
    Unbanned(Unbanned),
    Bans(Vec<BanRow>),
    ListChanged(ListChange),
    List(Vec<ListEntry>),
    Explanation(Explanation),
    Peers(Vec<PeerRow>),
    Monitor(MonitorSwitch),
    PolicySwitched(PolicySwitch),
    Confirmed(Confirmed),
}

/// Why a request failed; in every case nothing changed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The config file is broken.
    BadConfig,
    /// No such ban or list entry, nothing to confirm.
    NotFound,
    /// It would cut the operator's SSH session.
    Refused,
    /// The kernel, the state directory or the daemon failed.
    Failed,
    /// The request could not be read.
    BadRequest,
}

impl ErrorKind {
    /// The CLI's exit code: 1 failure, 2 bad config or usage, 3 not found,
    /// 4 refused.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Failed => 1,
            ErrorKind::BadConfig | ErrorKind::BadRequest => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::Refused => 4,
        }
    }
}

/// A failed request, as the daemon reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ControlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ControlError {
        ControlError {
            kind,
            message: message.into(),
        }
    }
}

impl From<crate::runtime::Error> for ControlError {
    fn from(e: crate::runtime::Error) -> ControlError {
        use crate::runtime::Error;
        let kind = match &e {
            Error::BadConfig(_) => ErrorKind::BadConfig,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Refused(_) => ErrorKind::Refused,
            Error::Invalid(_) => ErrorKind::BadRequest,
            Error::Failed(_) => ErrorKind::Failed,
        };
        ControlError::new(kind, e.to_string())
    }
}

/// One response line.
pub type Response = Result<Reply, ControlError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_error_kinds() {
        let codes: Vec<u8> = [
            ErrorKind::Failed,
            ErrorKind::BadConfig,
            ErrorKind::BadRequest,
            ErrorKind::NotFound,
            ErrorKind::Refused,
        ]
        .iter()
        .map(|k| k.exit_code())
        .collect();
        assert_eq!(codes, [1, 2, 2, 3, 4]);
    }

    #[test]
    fn requests_and_answers_survive_the_wire() {
        let envelope = Envelope {
            request: Request::BanAdd {
                ip: "192.0.2.7".parse().unwrap(),
                seconds: Some(60),
                reason: Some("fraud".into()),
            },
            force: true,
            session: None,
        };
        let line = serde_json::to_string(&envelope).unwrap();
        assert!(line.contains("\"cmd\":\"ban_add\""), "{line}");
        assert_eq!(serde_json::from_str::<Envelope>(&line).unwrap(), envelope);

        let answers: [Response; 2] = [
            Ok(Reply::Banned(Banned {
                source: "192.0.2.7".into(),
                duration: "1m".into(),
            })),
            Err(ControlError::new(
                ErrorKind::NotFound,
                "192.0.2.7 is not banned",
            )),
        ];
        for answer in answers {
            let line = serde_json::to_string(&answer).unwrap();
            assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), answer);
        }
    }

    #[test]
    fn runtime_errors_keep_their_kind() {
        use crate::runtime::Error;
        let cases = [
            (Error::BadConfig("x".into()), ErrorKind::BadConfig),
            (Error::NotFound("x".into()), ErrorKind::NotFound),
            (Error::Refused("x".into()), ErrorKind::Refused),
            (Error::Failed("x".into()), ErrorKind::Failed),
        ];
        for (error, kind) in cases {
            assert_eq!(ControlError::from(error).kind, kind);
        }
    }
}
