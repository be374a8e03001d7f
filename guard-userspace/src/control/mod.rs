//! The control socket: a root-only (0600) Unix socket on which the daemon
//! answers the CLI. One JSON request per line, one JSON response per line.
//! Requests that change the policy are checked against the operator's SSH
//! sessions first (see `safety`), and saved to the state directory after.
use std::{
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use guard_common::{BanEntry, BanReason, Reason, BAN_FOREVER, NO_RULE};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader},
    net::UnixListener,
    sync::{Mutex, Notify},
};
use tracing::{debug, info, warn};

use crate::{
    clock,
    kernel::maps::{KernelMaps, NetList},
    metrics::ControllerCounters,
    policy::compile::allow_mask,
    policy::config::ALL,
    policy::live::{ConfigSource, ListEntry, LivePolicy, NO_SERVICE_NAME},
    runtime::bans::{self, BanDetails},
    runtime::safety::{After, LockoutCheck, Session},
    state::{ListChanges, StateDir},
};

mod switch;

pub const DEFAULT_SOCKET: &str = "/run/sipguard/control.sock";
/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

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
    Bans,
    AllowAdd {
        cidr: IpNet,
        /// Service names, "all" or "other"; empty means "all".
        services: Vec<String>,
        comment: Option<String>,
    },
    AllowRemove {
        cidr: IpNet,
    },
    AllowList,
    DenyAdd {
        cidr: IpNet,
        comment: Option<String>,
    },
    DenyRemove {
        cidr: IpNet,
    },
    DenyList,
    Explain {
        ip: IpAddr,
    },
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// No such ban or list entry, nothing to confirm (CLI exit code 3).
    #[serde(default)]
    pub not_found: bool,
    /// The config file is broken; nothing changed (exit code 2).
    #[serde(default)]
    pub bad_config: bool,
    /// Refused: it would cut the operator's SSH session (exit code 4).
    #[serde(default)]
    pub refused: bool,
    pub data: serde_json::Value,
}

impl Response {
    fn ok(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            error: None,
            not_found: false,
            bad_config: false,
            refused: false,
            data,
        }
    }

    fn error(message: String) -> Response {
        Response {
            ok: false,
            error: Some(message),
            not_found: false,
            bad_config: false,
            refused: false,
            data: serde_json::Value::Null,
        }
    }

    fn not_found(message: String) -> Response {
        Response {
            not_found: true,
            ..Response::error(message)
        }
    }

    fn refused(message: String) -> Response {
        Response {
            refused: true,
            ..Response::error(message)
        }
    }
}

/// One row of `sipguard bans`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BanRow {
    pub source: String,
    pub reason: String,
    /// The rate rule, or the operator's words for a manual ban.
    pub detail: String,
    pub since_seconds: u64,
    /// None: until removed.
    pub remaining_seconds: Option<u64>,
    pub dropped: u64,
}

/// Where and how the guard is attached, for `status`.
#[derive(Debug, Clone)]
pub struct Attached {
    pub iface: String,
    pub xdp_mode: String,
    pub program_id: u32,
    /// The pin directory, when the guard outlives the daemon.
    pub pinned_at: Option<PathBuf>,
}

/// What the daemon shares with the control socket.
pub struct ControlState {
    pub maps: Arc<Mutex<KernelMaps>>,
    pub counters: ControllerCounters,
    pub attached: Attached,
    pub started: Instant,
    /// Lock order: `policy` before `maps`.
    pub policy: Arc<Mutex<LivePolicy>>,
    /// Where `reload` reads the config from.
    pub source: Mutex<ConfigSource>,
    /// The operator's words (or saved evidence) for each ban.
    pub ban_details: BanDetails,
    pub state: StateDir,
    /// Wakes the task that saves bans to the state directory.
    pub bans_changed: Arc<Notify>,
    pending: Mutex<Option<switch::Pending>>,
}

/// A refusal (or failure) on its way back to the CLI.
type Answer = std::result::Result<Response, Response>;

fn failed(e: anyhow::Error) -> Response {
    Response::error(format!("{e:#}"))
}

impl ControlState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        maps: Arc<Mutex<KernelMaps>>,
        counters: ControllerCounters,
        attached: Attached,
        policy: Arc<Mutex<LivePolicy>>,
        source: ConfigSource,
        ban_details: BanDetails,
        state: StateDir,
        bans_changed: Arc<Notify>,
    ) -> ControlState {
        ControlState {
            maps,
            counters,
            attached,
            started: Instant::now(),
            policy,
            source: Mutex::new(source),
            ban_details,
            state,
            bans_changed,
            pending: Mutex::new(None),
        }
    }

    /// `reload` on SIGHUP: no CLI session to protect beyond the live ones.
    pub async fn reload_on_signal(self: &Arc<Self>) {
        let response = self
            .handle(Envelope {
                request: Request::Reload,
                force: false,
                session: None,
            })
            .await;
        if let Some(error) = response.error {
            warn!("SIGHUP: reload failed: {error}");
        }
    }

    async fn handle(self: &Arc<Self>, envelope: Envelope) -> Response {
        let Envelope {
            request,
            force,
            session,
        } = envelope;
        let lockout = LockoutCheck { force, session };
        let answer: Answer = match request {
            Request::Status => self.status().await.map_err(failed),
            Request::BanAdd {
                ip,
                seconds,
                reason,
            } => self.ban_add(ip, seconds, reason, &lockout).await,
            Request::BanRemove { ip } => self.ban_remove(ip).await,
            Request::Bans => self.bans().await.map_err(failed),
            Request::AllowAdd {
                cidr,
                services,
                comment,
            } => {
                self.list_add(NetList::Allow, cidr, services, comment, &lockout)
                    .await
            }
            Request::AllowRemove { cidr } => self.list_remove(NetList::Allow, cidr, &lockout).await,
            Request::AllowList => self.list(NetList::Allow).await,
            Request::DenyAdd { cidr, comment } => {
                self.list_add(NetList::Deny, cidr, Vec::new(), comment, &lockout)
                    .await
            }
            Request::DenyRemove { cidr } => self.list_remove(NetList::Deny, cidr, &lockout).await,
            Request::DenyList => self.list(NetList::Deny).await,
            Request::Explain { ip } => self.explain(ip).await.map_err(failed),
            Request::Monitor { on } => self.monitor(on, &lockout).await,
            Request::Reload => {
                let source = self.source.lock().await.clone();
                self.switch_policy(source, None, &lockout).await
            }
            Request::Apply {
                path,
                confirm_seconds,
            } => {
                let source = self.source.lock().await.with_path(path);
                let confirm = confirm_seconds.map(Duration::from_secs);
                self.switch_policy(source, confirm, &lockout).await
            }
            Request::Confirm => self.confirm().await,
        };
        answer.unwrap_or_else(|refusal| refusal)
    }

    async fn monitor(&self, on: bool, lockout: &LockoutCheck) -> Answer {
        let policy = self.policy.lock().await;
        let mut maps = self.maps.lock().await;
        let after = After {
            policy: &policy,
            new_ban: None,
            monitor: Some(on),
        };
        lockout
            .check(&policy, &maps, after)
            .map_err(Response::refused)?;
        let mut settings = maps.settings().map_err(failed)?;
        settings.monitor = on as u8;
        // One array slot: the next packet sees either the old or the new value.
        maps.settings
            .set(0, settings, 0)
            .map_err(|e| failed(e.into()))?;
        if on {
            warn!("monitor mode ON by the operator: every verdict is counted, nothing is dropped");
        } else {
            info!("monitor mode off by the operator: verdicts are enforced");
        }
        Ok(Response::ok(serde_json::json!({ "monitor": on })))
    }

    async fn status(&self) -> Result<Response> {
        let summary = self.policy.lock().await.summary();
        let awaiting = self.pending.lock().await.as_ref().map(|p| {
            p.deadline
                .saturating_duration_since(Instant::now())
                .as_secs()
        });
        let maps = self.maps.lock().await;
        let monitor = maps.settings()?.monitor != 0;
        let totals = maps.verdicts()?;
        let counters: serde_json::Map<String, serde_json::Value> = Reason::ALL
            .iter()
            .map(|r| (r.name().to_string(), totals[*r as usize].packets.into()))
            .collect();
        let active = maps.active_bans(clock::monotonic_ns())?.len();
        Ok(Response::ok(serde_json::json!({
            "iface": self.attached.iface,
            "xdp_mode": self.attached.xdp_mode,
            "program_id": self.attached.program_id,
            "pinned_at": self.attached.pinned_at,
            "state_dir": self.state.path(),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "policy": summary,
            "monitor": monitor,
            "bans_active": active,
            "awaiting_confirmation_seconds": awaiting,
            "packets": counters,
        })))
    }

    async fn ban_add(
        &self,
        ip: IpAddr,
        seconds: Option<u64>,
        reason: Option<String>,
        lockout: &LockoutCheck,
    ) -> Answer {
        let policy = self.policy.lock().await;
        let mut maps = self.maps.lock().await;
        let key = maps.source_key(ip).map_err(failed)?;
        let prefix = policy.config.guard.ipv6_ban_prefix;
        let now = clock::monotonic_ns();
        let expires_ns = match seconds {
            Some(0) => return Err(Response::error("a ban must last longer than 0 s".into())),
            Some(s) => now.saturating_add(s.saturating_mul(1_000_000_000)),
            None => BAN_FOREVER,
        };
        let entry = BanEntry {
            expires_ns,
            created_ns: now,
            reason: BanReason::Manual as u16,
            rule: NO_RULE,
            ..BanEntry::default()
        };
        let after = After {
            policy: &policy,
            new_ban: Some((key, entry)),
            monitor: None,
        };
        lockout
            .check(&policy, &maps, after)
            .map_err(Response::refused)?;
        maps.insert_ban(key, entry).map_err(failed)?;
        drop(maps);
        drop(policy);
        let why = reason.unwrap_or_default();
        self.ban_details.lock().await.insert(key, why.clone());
        self.bans_changed.notify_one();
        self.counters.ban_created(BanReason::Manual);
        let source = bans::source_to_string(&key, prefix);
        let duration = bans::ban_duration(now, expires_ns);
        warn!(target: "sipguard::ban", "banned {source} for {duration}: manual{}", if why.is_empty() { String::new() } else { format!(" ({why})") });
        Ok(Response::ok(
            serde_json::json!({ "source": source, "for": duration }),
        ))
    }

    async fn ban_remove(&self, ip: IpAddr) -> Answer {
        let mut maps = self.maps.lock().await;
        let key = maps.source_key(ip).map_err(failed)?;
        let prefix = maps.settings().map_err(failed)?.ipv6_ban_prefix;
        let removed = maps.remove_ban(&key).map_err(failed)?;
        drop(maps);
        let source = bans::source_to_string(&key, prefix);
        if !removed {
            return Err(Response::not_found(format!("{source} is not banned")));
        }
        self.ban_details.lock().await.remove(&key);
        self.bans_changed.notify_one();
        info!(target: "sipguard::ban", "unbanned {source} by the operator");
        Ok(Response::ok(serde_json::json!({ "source": source })))
    }

    /// Adds to a live list; an invalid change is refused before anything is touched.
    async fn list_add(
        &self,
        list: NetList,
        cidr: IpNet,
        services: Vec<String>,
        comment: Option<String>,
        lockout: &LockoutCheck,
    ) -> Answer {
        let cidr = cidr.trunc();
        let mut policy = self.policy.lock().await;
        let (value, services) = match list {
            NetList::Deny => (0, Vec::new()),
            NetList::Allow => {
                let services = if services.is_empty() {
                    vec![ALL.to_string()]
                } else {
                    services
                };
                let names = policy.service_names();
                let mask = allow_mask(&names, &services).map_err(|unknown| {
                    Response::error(format!(
                        "unknown service {unknown:?} (known: {}, all, other); nothing changed",
                        names.join(", ")
                    ))
                })?;
                (mask, services)
            }
        };
        let entry = ListEntry {
            cidr: cidr.to_string(),
            services: services.clone(),
            comment: comment.unwrap_or_default(),
            origin: "runtime".to_string(),
        };
        let mut changes = policy.changes.clone();
        changes.record_add(list, cidr, entry);
        let name = list.name();
        self.commit_list_change(&mut policy, changes, lockout, |maps| {
            maps.insert_net(list, cidr, value).map_err(|e| {
                Response::error(format!(
                    "the {name} list refused {cidr} (full?): {e:#}; nothing changed"
                ))
            })
        })
        .await?;
        if list == NetList::Allow {
            info!(
                "allow-listed {cidr} for {} by the operator",
                services.join(",")
            );
        } else {
            info!("deny-listed {cidr} by the operator");
        }
        Ok(Response::ok(
            serde_json::json!({ "list": name, "cidr": cidr.to_string(), "added": true }),
        ))
    }

    async fn list_remove(&self, list: NetList, cidr: IpNet, lockout: &LockoutCheck) -> Answer {
        let cidr = cidr.trunc();
        let name = list.name();
        let mut policy = self.policy.lock().await;
        if !policy.lists.list(list).contains_key(&cidr) {
            return Err(Response::not_found(format!(
                "{cidr} is not on the {name} list"
            )));
        }
        let in_config = match list {
            NetList::Allow => policy.config.allow.iter().any(|e| e.cidr.trunc() == cidr),
            NetList::Deny => policy.config.deny.iter().any(|e| e.cidr.trunc() == cidr),
        };
        let mut changes = policy.changes.clone();
        changes.record_remove(list, cidr, in_config);
        self.commit_list_change(&mut policy, changes, lockout, |maps| {
            maps.remove_net(list, cidr).map_err(failed)
        })
        .await?;
        info!("removed {cidr} from the {name} list by the operator");
        Ok(Response::ok(
            serde_json::json!({ "list": name, "cidr": cidr.to_string(), "added": false }),
        ))
    }

    /// Checks a list change against the SSH sessions, makes it in the
    /// kernel with `write` (one trie entry: atomic), then keeps it in the
    /// live policy and the state directory.
    async fn commit_list_change(
        &self,
        policy: &mut LivePolicy,
        changes: ListChanges,
        lockout: &LockoutCheck,
        write: impl FnOnce(&mut KernelMaps) -> std::result::Result<(), Response>,
    ) -> std::result::Result<(), Response> {
        let candidate = LivePolicy::build(policy.config.clone(), policy.source.clone(), changes);
        let mut maps = self.maps.lock().await;
        let after = After {
            policy: &candidate,
            new_ban: None,
            monitor: None,
        };
        lockout
            .check(policy, &maps, after)
            .map_err(Response::refused)?;
        write(&mut maps)?;
        drop(maps);
        *policy = candidate;
        // The kernel already has the change; a failed save is reported in the log.
        if let Err(e) = self.state.save_lists(&policy.changes) {
            warn!("saving the list changes failed: {e:#}; they hold until restart");
        }
        Ok(())
    }

    async fn list(&self, list: NetList) -> Answer {
        let policy = self.policy.lock().await;
        let entries: Vec<_> = policy.lists.list(list).values().collect();
        Ok(Response::ok(
            serde_json::to_value(entries).map_err(|e| failed(e.into()))?,
        ))
    }

    /// The verdict `ip` gets for each service now, and what decides it.
    async fn explain(&self, ip: IpAddr) -> Result<Response> {
        let ip = ip.to_canonical();
        let policy = self.policy.lock().await;
        let maps = self.maps.lock().await;
        let key = maps.source_key(ip)?;
        let ban = maps.active_ban(&key, clock::monotonic_ns())?;
        drop(maps);
        let mut names = policy.service_names();
        names.push(NO_SERVICE_NAME.to_string());
        let rows: Vec<_> = names
            .iter()
            .map(|name| policy.verdict(ip, ban.as_ref(), name, &policy.compiled.rule_names))
            .collect();
        Ok(Response::ok(serde_json::json!({
            "source": bans::source_to_string(&key, policy.config.guard.ipv6_ban_prefix),
            "verdicts": rows,
        })))
    }

    async fn bans(&self) -> Result<Response> {
        let rule_names = self.policy.lock().await.compiled.rule_names.clone();
        let maps = self.maps.lock().await;
        let prefix = maps.settings()?.ipv6_ban_prefix;
        let now = clock::monotonic_ns();
        let details = self.ban_details.lock().await;
        let mut rows: Vec<BanRow> = maps
            .active_bans(now)?
            .into_iter()
            .map(|(key, ban)| BanRow {
                source: bans::source_to_string(&key, prefix),
                reason: bans::reason_name(ban.reason).to_string(),
                detail: match bans::rule_name(ban.rule, &rule_names) {
                    Some(rule) => format!("rule {rule}"),
                    None => details.get(&key).cloned().unwrap_or_default(),
                },
                since_seconds: now.saturating_sub(ban.created_ns) / 1_000_000_000,
                remaining_seconds: (ban.expires_ns != BAN_FOREVER)
                    .then(|| ban.expires_ns.saturating_sub(now) / 1_000_000_000),
                dropped: ban.dropped,
            })
            .collect();
        rows.sort_by(|a, b| a.source.cmp(&b.source));
        Ok(Response::ok(serde_json::to_value(rows)?))
    }
}

/// Answers requests on a socket from [`bind`] until dropped.
pub async fn serve(listener: UnixListener, state: Arc<ControlState>) -> Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = AsyncBufReader::new(read.take(MAX_REQUEST as u64));
            let response = match reader.read_line(&mut line).await {
                Ok(_) => match serde_json::from_str::<Envelope>(&line) {
                    Ok(request) => {
                        debug!("control: {request:?}");
                        state.handle(request).await
                    }
                    Err(e) => Response::error(format!("bad request: {e}")),
                },
                Err(e) => Response::error(format!("reading the request: {e}")),
            };
            let mut text = serde_json::to_string(&response).unwrap_or_default();
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}

/// Binds the socket (before anything is attached: another running sipguard
/// is a clear error), replacing a stale one, and makes it root-only (0600).
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("another sipguard already answers on {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    info!("control socket at {}", path.display());
    Ok(listener)
}

/// The CLI's side: sends one request to the daemon and returns its answer.
pub fn request(path: &Path, request: &Request) -> Result<Response> {
    send(
        path,
        &Envelope {
            request: request.clone(),
            force: false,
            session: None,
        },
    )
}

/// Sends a request with its safety envelope.
pub fn send(path: &Path, envelope: &Envelope) -> Result<Response> {
    let mut stream = UnixStream::connect(path).map_err(|e| {
        anyhow!(
            "cannot reach the daemon at {} (is `sipguard run` running? root only): {e}",
            path.display()
        )
    })?;
    // A reload rewrites ~131k port slots; give it time.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut text = serde_json::to_string(envelope)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).context("a malformed answer from the daemon")
}
