//! The daemon's side of the control socket: reads one request per
//! connection, hands it to the runtime, writes its answer.
use std::{future::Future, os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{unix::OwnedReadHalf, UnixListener, UnixStream},
    time::timeout,
};
use tracing::{debug, info, warn};

use super::protocol::{
    exact_network, ControlError, Envelope, ErrorKind, Reply, Request, Response, MAX_REQUEST,
};
use crate::{
    kernel::maps::NetList,
    listen::{self, CONTROL_CONNECTIONS},
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
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
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

/// How long a client may take to send its request line, and to take its
/// answer: an idle or slow connection is closed and frees its slot (the
/// CLI writes its request at once and reads the answer as it comes).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub request: Duration,
    pub answer: Duration,
}

pub const DEADLINES: Deadlines = Deadlines {
    request: Duration::from_secs(5),
    answer: Duration::from_secs(5),
};

/// Answers requests on a socket from [`bind`] until dropped, at most
/// [`CONTROL_CONNECTIONS`] at once; accept errors never end it.
pub async fn serve(listener: UnixListener, runtime: Arc<Runtime>) {
    listen::serve(
        "control socket",
        listener,
        CONTROL_CONNECTIONS,
        move |stream| {
            let runtime = Arc::clone(&runtime);
            answer(stream, DEADLINES, move |envelope| async move {
                dispatch(&runtime, envelope).await
            })
        },
    )
    .await
}

/// One connection: one request line read within its deadline, handed to
/// `dispatch`, its answer written within its deadline.
pub async fn answer<F, Fut>(stream: UnixStream, deadlines: Deadlines, dispatch: F)
where
    F: FnOnce(Envelope) -> Fut,
    Fut: Future<Output = Response>,
{
    let (read, mut write) = stream.into_split();
    let response = match timeout(deadlines.request, read_request(read)).await {
        Err(_) => {
            debug!("control: no request within {:?}; closed", deadlines.request);
            return;
        }
        Ok(Err(e)) => Err(e),
        Ok(Ok(envelope)) => {
            debug!("control: {envelope:?}");
            dispatch(envelope).await
        }
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    if timeout(deadlines.answer, write.write_all(text.as_bytes()))
        .await
        .is_err()
    {
        debug!(
            "control: the answer was not taken within {:?}",
            deadlines.answer
        );
    }
}

/// Reads and decodes one request line (at most [`MAX_REQUEST`] bytes).
async fn read_request(read: OwnedReadHalf) -> Result<Envelope, ControlError> {
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    reader.read_line(&mut line).await.map_err(|e| {
        ControlError::new(ErrorKind::BadRequest, format!("reading the request: {e}"))
    })?;
    serde_json::from_str::<Envelope>(&line)
        .map_err(|e| ControlError::new(ErrorKind::BadRequest, format!("bad request: {e}")))
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

/// A list request's network, refused (nothing changes) if it has host bits
/// and the request did not ask for the masked network.
fn exact(cidr: ipnet::IpNet, normalize: bool) -> Result<ipnet::IpNet, ControlError> {
    exact_network(cidr, normalize)
        .map_err(|e| ControlError::new(ErrorKind::BadRequest, e.to_string()))
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
        Request::Bans { origin } => Reply::Bans(runtime.bans_by(origin).await?),
        Request::AllowAdd {
            cidr,
            services,
            comment,
            normalize,
        } => {
            let entry = NewEntry {
                cidr: exact(cidr, normalize)?,
                services,
                comment,
            };
            Reply::ListChanged(runtime.list_add(NetList::Allow, entry, &lockout).await?)
        }
        Request::AllowRemove { cidr, normalize } => {
            let cidr = exact(cidr, normalize)?;
            Reply::ListChanged(runtime.list_remove(NetList::Allow, cidr, &lockout).await?)
        }
        Request::AllowList => Reply::List(runtime.list(NetList::Allow).await),
        Request::DenyAdd {
            cidr,
            comment,
            normalize,
        } => {
            let entry = NewEntry {
                cidr: exact(cidr, normalize)?,
                services: Vec::new(),
                comment,
            };
            Reply::ListChanged(runtime.list_add(NetList::Deny, entry, &lockout).await?)
        }
        Request::DenyRemove { cidr, normalize } => {
            let cidr = exact(cidr, normalize)?;
            Reply::ListChanged(runtime.list_remove(NetList::Deny, cidr, &lockout).await?)
        }
        Request::DenyList => Reply::List(runtime.list(NetList::Deny).await),
        Request::Explain { ip, sip } => Reply::Explanation(runtime.explain_with(ip, sip).await?),
        Request::Peers => Reply::Peers(runtime.peer_rows().await?),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{MonitorSwitch, Reply, Request};
    use tokio::io::AsyncReadExt;

    const SHORT: Deadlines = Deadlines {
        request: Duration::from_millis(100),
        answer: Duration::from_millis(100),
    };
    /// Only a hang fails against this.
    const HANG: Duration = Duration::from_secs(60);

    async fn monitor_on(envelope: Envelope) -> Response {
        assert_eq!(envelope.request, Request::Monitor { on: true });
        Ok(Reply::Monitor(MonitorSwitch { monitor: true }))
    }

    /// What the server sent before it closed the connection.
    async fn until_closed(client: &mut UnixStream) -> String {
        let mut text = String::new();
        tokio::time::timeout(HANG, client.read_to_string(&mut text))
            .await
            .expect("the server closed the connection")
            .unwrap();
        text
    }

    #[tokio::test]
    async fn idle_and_slow_clients_are_closed() {
        for sent in [&b""[..], b"{\"cmd\":\"sta"] {
            let (mut client, server) = UnixStream::pair().unwrap();
            client.write_all(sent).await.unwrap();
            let served = tokio::spawn(answer(server, SHORT, monitor_on));
            assert_eq!(until_closed(&mut client).await, "", "no answer, closed");
            served.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_request_in_time_is_answered() {
        let (mut client, server) = UnixStream::pair().unwrap();
        client
            .write_all(b"{\"cmd\":\"monitor\",\"on\":true}\n")
            .await
            .unwrap();
        tokio::spawn(answer(server, SHORT, monitor_on));
        let text = until_closed(&mut client).await;
        assert!(text.starts_with("{\"Ok\":{\"reply\":\"monitor\""), "{text}");
    }
}
