//! The daemon's side of the control socket: reads one request per
//! connection, hands it to the runtime, writes its answer.
use std::{
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
};
use tracing::{debug, info, warn};

use super::protocol::{ControlError, Envelope, ErrorKind, Reply, Request, Response, MAX_REQUEST};
use crate::{
    kernel::maps::NetList,
    runtime::{bans::BanRequest, lists::NewEntry, safety::LockoutCheck, Runtime},
};

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another sipguard already answers on {0}")]
    Taken(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// Binds the socket (before anything is attached: another running sipguard
/// is a clear error), replacing a stale one, and makes it root-only (0600).
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |source| BindError::Io { what, path, source }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(BindError::Taken(path.display().to_string()));
        }
        std::fs::remove_file(path).map_err(io("removing stale", path))?;
    }
    let listener = UnixListener::bind(path).map_err(io("cannot create", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("restricting", path))?;
    info!("control socket at {}", path.display());
    Ok(listener)
}

/// Answers requests on a socket from [`bind`] until dropped.
pub async fn serve(listener: UnixListener, runtime: Arc<Runtime>) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let runtime = Arc::clone(&runtime);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
            let response = match reader.read_line(&mut line).await {
                Ok(_) => match serde_json::from_str::<Envelope>(&line) {
                    Ok(envelope) => {
                        debug!("control: {envelope:?}");
                        dispatch(&runtime, envelope).await
                    }
                    Err(e) => Err(ControlError::new(
                        ErrorKind::BadRequest,
                        format!("bad request: {e}"),
                    )),
                },
                Err(e) => Err(ControlError::new(
                    ErrorKind::BadRequest,
                    format!("reading the request: {e}"),
                )),
            };
            let mut text = serde_json::to_string(&response).unwrap_or_default();
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}

/// `reload` on SIGHUP: no CLI session to protect beyond the live ones.
pub async fn reload_on_signal(runtime: &Arc<Runtime>) {
    let lockout = LockoutCheck {
        force: false,
        session: None,
    };
    if let Err(e) = runtime.reload(&lockout).await {
        warn!("SIGHUP: reload failed: {e}");
    }
}

/// Runs one request against the runtime.
pub async fn dispatch(runtime: &Arc<Runtime>, envelope: Envelope) -> Response {
    let Envelope {
        request,
        force,
        session,
    } = envelope;
    let lockout = LockoutCheck { force, session };
    let reply = match request {
        Request::Status => Reply::Status(runtime.status().await?),
        Request::BanAdd {
            ip,
            seconds,
            reason,
        } => {
            let ban = BanRequest {
                ip,
                duration: seconds.map(Duration::from_secs),
                reason,
            };
            Reply::Banned(runtime.ban_add(ban, &lockout).await?)
        }
        Request::BanRemove { ip } => Reply::Unbanned(runtime.ban_remove(ip).await?),
        Request::Bans => Reply::Bans(runtime.bans().await?),
        Request::AllowAdd {
            cidr,
            services,
            comment,
        } => {
            let entry = NewEntry {
                cidr,
                services,
                comment,
            };
            Reply::ListChanged(runtime.list_add(NetList::Allow, entry, &lockout).await?)
        }
        Request::AllowRemove { cidr } => {
            Reply::ListChanged(runtime.list_remove(NetList::Allow, cidr, &lockout).await?)
        }
        Request::AllowList => Reply::List(runtime.list(NetList::Allow).await),
        Request::DenyAdd { cidr, comment } => {
            let entry = NewEntry {
                cidr,
                services: Vec::new(),
                comment,
            };
            Reply::ListChanged(runtime.list_add(NetList::Deny, entry, &lockout).await?)
        }
        Request::DenyRemove { cidr } => {
            Reply::ListChanged(runtime.list_remove(NetList::Deny, cidr, &lockout).await?)
        }
        Request::DenyList => Reply::List(runtime.list(NetList::Deny).await),
        Request::Explain { ip } => Reply::Explanation(runtime.explain(ip).await?),
        Request::Monitor { on } => Reply::Monitor(runtime.set_monitor(on, &lockout).await?),
        Request::Reload => Reply::PolicySwitched(runtime.reload(&lockout).await?),
        Request::Apply {
            path,
            confirm_seconds,
        } => {
            let confirm = confirm_seconds.map(Duration::from_secs);
            Reply::PolicySwitched(runtime.apply(path, confirm, &lockout).await?)
        }
        Request::Confirm => Reply::Confirmed(runtime.confirm().await?),
    };
    Ok(reply)
}
