//! The CLI's side of the control socket: one request, one typed answer.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::protocol::{
    BanOrigin, BanRow, Banned, Confirmed, ControlError, Envelope, ErrorKind, Explanation,
    ListChange, ListEntry, MonitorSwitch, PeerRow, PolicySwitch, Reply, Request, Response, Session,
    Status, Unbanned,
};

/// A reload rewrites ~131k port slots; give it time.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request got no answer the CLI can use.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the daemon at {socket} (is `sipguard run` running? root only): {source}"
    )]
    Unreachable {
        socket: String,
        source: std::io::Error,
    },
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("a malformed answer from the daemon: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("the daemon answered {request} with something else (a different sipguard version?)")]
    Unexpected { request: &'static str },
    /// The daemon refused or failed the request.
    #[error("{0}")]
    Daemon(#[from] ControlError),
}

impl ClientError {
    /// The CLI's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Daemon(e) => e.kind.exit_code(),
            _ => ErrorKind::Failed.exit_code(),
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A connection's settings: where the daemon is, and the safety envelope.
#[derive(Debug, Clone)]
pub struct Client {
    pub socket: PathBuf,
    /// Do it even if it cuts the operator's SSH session.
    pub force: bool,
    /// The operator's SSH session, for the lockout check.
    pub session: Option<Session>,
}

/// Takes the one reply a request expects, or says it got another.
macro_rules! expect {
    ($self:ident, $request:expr, $variant:ident) => {
        match $self.call($request)? {
            Reply::$variant(data) => Ok(data),
            _ => Err(ClientError::Unexpected {
                request: stringify!($variant),
            }),
        }
    };
}

impl Client {
    /// A client for `socket`, with the SSH session from `SSH_CLIENT`.
    pub fn new(socket: &Path, force: bool) -> Client {
        Client {
            socket: socket.to_path_buf(),
            force,
            session: std::env::var("SSH_CLIENT")
                .ok()
                .and_then(|v| Session::from_ssh_client(&v)),
        }
    }

    /// Sends one request and reads its answer.
    pub fn call(&self, request: Request) -> Result<Reply> {
        let envelope = Envelope {
            request,
            force: self.force,
            session: self.session,
        };
        Ok(send(&self.socket, &envelope)??)
    }

    pub fn status(&self) -> Result<Status> {
        expect!(self, Request::Status, Status)
    }

    pub fn ban_add(
        &self,
        ip: std::net::IpAddr,
        for_: Option<Duration>,
        reason: Option<String>,
    ) -> Result<Banned> {
        let request = Request::BanAdd {
            ip,
            seconds: for_.map(|d| d.as_secs()),
            reason,
        };
        expect!(self, request, Banned)
    }

    pub fn ban_remove(&self, ip: std::net::IpAddr) -> Result<Unbanned> {
        expect!(self, Request::BanRemove { ip }, Unbanned)
    }

    pub fn bans(&self) -> Result<Vec<BanRow>> {
        self.bans_by(None)
    }

    /// The bans of one origin (None: the ban map's).
    pub fn bans_by(&self, origin: Option<BanOrigin>) -> Result<Vec<BanRow>> {
        expect!(self, Request::Bans { origin }, Bans)
    }

    /// `AllowAdd`, `AllowRemove`, `DenyAdd` or `DenyRemove`.
    pub fn list_change(&self, request: Request) -> Result<ListChange> {
        expect!(self, request, ListChanged)
    }

    /// `AllowList` or `DenyList`.
    pub fn list(&self, request: Request) -> Result<Vec<ListEntry>> {
        expect!(self, request, List)
    }

    pub fn explain(
        &self,
        ip: std::net::IpAddr,
        sip: Option<crate::runtime::explain::SipQuery>,
    ) -> Result<Explanation> {
        expect!(self, Request::Explain { ip, sip }, Explanation)
    }

    pub fn peers(&self) -> Result<Vec<PeerRow>> {
        expect!(self, Request::Peers, Peers)
    }

    pub fn monitor(&self, on: bool) -> Result<MonitorSwitch> {
        expect!(self, Request::Monitor { on }, Monitor)
    }

    pub fn reload(&self) -> Result<PolicySwitch> {
        expect!(self, Request::Reload, PolicySwitched)
    }

    pub fn apply(&self, path: PathBuf, confirm: Option<Duration>) -> Result<PolicySwitch> {
        let request = Request::Apply {
            path,
            confirm_seconds: confirm.map(|d| d.as_secs().max(1)),
        };
        expect!(self, request, PolicySwitched)
    }

    pub fn confirm(&self) -> Result<Confirmed> {
        expect!(self, Request::Confirm, Confirmed)
    }
}

/// Sends a request with its safety envelope; the outer error is the
/// transport's, the inner the daemon's answer.
pub fn send(path: &Path, envelope: &Envelope) -> Result<Response> {
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Unreachable {
        socket: path.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut text = serde_json::to_string(envelope)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(serde_json::from_str(&line)?)
}
