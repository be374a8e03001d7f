//! The control socket: a root-only (0600) Unix socket on which the daemon
//! answers the CLI. One JSON request per line, one JSON response per line.
use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader, Write},
    net::IpAddr,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use guard_common::{AccessMode, BanEntry, BanReason, Reason, SourceKey, BAN_FOREVER, NO_RULE};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader},
    net::UnixListener,
    sync::Mutex,
};
use tracing::{debug, info, warn};

use crate::{
    bans, clock,
    config::{Config, ALL, OTHER},
    maps::{KernelMaps, NetList},
    metrics::ControllerCounters,
    policy::{allow_mask, CompiledPolicy},
};

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
}

/// A service as `explain` needs it.
#[derive(Debug, Clone)]
pub struct ServiceInfo {
    pub name: String,
    pub access: AccessMode,
    /// Rate rules watching any of its ports.
    pub rules: Vec<String>,
}

impl ServiceInfo {
    /// From the compiled policy: the same port table the XDP program reads.
    pub fn from_policy(policy: &CompiledPolicy) -> Vec<ServiceInfo> {
        policy
            .services
            .iter()
            .map(|(id, service)| {
                let mut rules: Vec<u8> = policy
                    .ports
                    .iter()
                    .filter(|(_, class)| class.service == *id)
                    .flat_map(|(_, class)| class.rule_indexes().collect::<Vec<_>>())
                    .collect();
                rules.sort_unstable();
                rules.dedup();
                ServiceInfo {
                    name: policy.service_names[*id as usize - 1].clone(),
                    access: service.access_mode(),
                    rules: rules
                        .into_iter()
                        .map(|i| policy.rule_names[i as usize].clone())
                        .collect(),
                }
            })
            .collect()
    }
}

/// One row of `sipguard explain`: the verdict a source gets for a service now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub service: String,
    /// "pass" or "drop".
    pub verdict: String,
    pub because: String,
}

/// One row of `sipguard allow list` / `deny list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListEntry {
    pub cidr: String,
    /// Allow entries only.
    pub services: Vec<String>,
    pub comment: String,
    /// "config" or "runtime".
    pub origin: String,
}

/// The allow and deny lists as the daemon knows them (the kernel's tries
/// hold only prefixes and masks).
#[derive(Debug, Default)]
pub struct Lists {
    pub allow: BTreeMap<IpNet, ListEntry>,
    pub deny: BTreeMap<IpNet, ListEntry>,
}

impl Lists {
    pub fn from_config(config: &Config) -> Lists {
        let mut lists = Lists::default();
        for entry in &config.allow {
            lists.add(
                NetList::Allow,
                entry.cidr,
                entry.services.clone(),
                entry.comment.clone(),
                "config",
            );
        }
        for entry in &config.deny {
            lists.add(
                NetList::Deny,
                entry.cidr,
                Vec::new(),
                entry.comment.clone(),
                "config",
            );
        }
        lists
    }

    fn list(&self, list: NetList) -> &BTreeMap<IpNet, ListEntry> {
        match list {
            NetList::Allow => &self.allow,
            NetList::Deny => &self.deny,
        }
    }

    fn list_mut(&mut self, list: NetList) -> &mut BTreeMap<IpNet, ListEntry> {
        match list {
            NetList::Allow => &mut self.allow,
            NetList::Deny => &mut self.deny,
        }
    }

    fn add(
        &mut self,
        list: NetList,
        cidr: IpNet,
        services: Vec<String>,
        comment: String,
        origin: &str,
    ) {
        let cidr = cidr.trunc();
        let entry = ListEntry {
            cidr: cidr.to_string(),
            services,
            comment,
            origin: origin.to_string(),
        };
        self.list_mut(list).insert(cidr, entry);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub ok: bool,
    /// Why it failed; `not_found` marks a missing ban (CLI exit code 3).
    pub error: Option<String>,
    pub not_found: bool,
    pub data: serde_json::Value,
}

impl Response {
    fn ok(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            error: None,
            not_found: false,
            data,
        }
    }

    fn error(message: String) -> Response {
        Response {
            ok: false,
            error: Some(message),
            not_found: false,
            data: serde_json::Value::Null,
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

/// What the daemon shares with the control socket.
pub struct ControlState {
    pub maps: Arc<Mutex<KernelMaps>>,
    pub counters: ControllerCounters,
    pub iface: String,
    pub xdp_mode: String,
    pub program_id: u32,
    pub policy: String,
    pub rule_names: Vec<String>,
    pub started: Instant,
    /// The operator's reason for each manual ban.
    pub manual_reasons: Mutex<HashMap<SourceKey, String>>,
    pub lists: Mutex<Lists>,
    pub services: Vec<ServiceInfo>,
    pub default_drop: bool,
}

impl ControlState {
    async fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Status => self.status().await,
            Request::BanAdd {
                ip,
                seconds,
                reason,
            } => self.ban_add(ip, seconds, reason).await,
            Request::BanRemove { ip } => return self.ban_remove(ip).await,
            Request::Bans => self.bans().await,
            Request::AllowAdd {
                cidr,
                services,
                comment,
            } => self.list_add(NetList::Allow, cidr, services, comment).await,
            Request::AllowRemove { cidr } => return self.list_remove(NetList::Allow, cidr).await,
            Request::AllowList => self.list(NetList::Allow).await,
            Request::DenyAdd { cidr, comment } => {
                self.list_add(NetList::Deny, cidr, Vec::new(), comment)
                    .await
            }
            Request::DenyRemove { cidr } => return self.list_remove(NetList::Deny, cidr).await,
            Request::DenyList => self.list(NetList::Deny).await,
            Request::Explain { ip } => self.explain(ip).await,
            Request::Monitor { on } => self.monitor(on).await,
        };
        result.unwrap_or_else(|e| Response::error(format!("{e:#}")))
    }

    async fn monitor(&self, on: bool) -> Result<Response> {
        let mut maps = self.maps.lock().await;
        let mut settings = maps.settings()?;
        settings.monitor = on as u8;
        // One array slot: the next packet sees either the old or the new value.
        maps.settings.set(0, settings, 0)?;
        if on {
            warn!("monitor mode ON by the operator: every verdict is counted, nothing is dropped");
        } else {
            info!("monitor mode off by the operator: verdicts are enforced");
        }
        Ok(Response::ok(serde_json::json!({ "monitor": on })))
    }

    async fn status(&self) -> Result<Response> {
        let maps = self.maps.lock().await;
        let monitor = maps.settings()?.monitor != 0;
        let totals = maps.verdicts()?;
        let counters: serde_json::Map<String, serde_json::Value> = Reason::ALL
            .iter()
            .map(|r| (r.name().to_string(), totals[*r as usize].packets.into()))
            .collect();
        let now = clock::monotonic_ns();
        let active = maps
            .bans()?
            .iter()
            .filter(|(_, b)| b.is_active(now))
            .count();
        Ok(Response::ok(serde_json::json!({
            "iface": self.iface,
            "xdp_mode": self.xdp_mode,
            "program_id": self.program_id,
            "uptime_seconds": self.started.elapsed().as_secs(),
            "policy": self.policy,
            "monitor": monitor,
            "bans_active": active,
            "packets": counters,
        })))
    }

    async fn ban_add(
        &self,
        ip: IpAddr,
        seconds: Option<u64>,
        reason: Option<String>,
    ) -> Result<Response> {
        let mut maps = self.maps.lock().await;
        let key = maps.source_key(ip)?;
        let now = clock::monotonic_ns();
        let expires_ns = match seconds {
            Some(0) => bail!("a ban must last longer than 0 s"),
            Some(s) => now.saturating_add(s.saturating_mul(1_000_000_000)),
            None => BAN_FOREVER,
        };
        maps.insert_ban(
            key,
            BanEntry {
                expires_ns,
                created_ns: now,
                reason: BanReason::Manual as u16,
                rule: NO_RULE,
                ..BanEntry::default()
            },
        )?;
        let prefix = maps.settings()?.ipv6_ban_prefix;
        drop(maps);
        let why = reason.unwrap_or_default();
        self.manual_reasons.lock().await.insert(key, why.clone());
        self.counters.ban_created(BanReason::Manual);
        let source = bans::source_to_string(&key, prefix);
        let duration = bans::ban_duration(now, expires_ns);
        warn!(target: "sipguard::ban", "banned {source} for {duration}: manual{}", if why.is_empty() { String::new() } else { format!(" ({why})") });
        Ok(Response::ok(
            serde_json::json!({ "source": source, "for": duration }),
        ))
    }

    async fn ban_remove(&self, ip: IpAddr) -> Response {
        let result = async {
            let mut maps = self.maps.lock().await;
            let key = maps.source_key(ip)?;
            let prefix = maps.settings()?.ipv6_ban_prefix;
            let removed = maps.remove_ban(&key)?;
            anyhow::Ok((removed, bans::source_to_string(&key, prefix), key))
        }
        .await;
        match result {
            Ok((true, source, key)) => {
                self.manual_reasons.lock().await.remove(&key);
                info!(target: "sipguard::ban", "unbanned {source} by the operator");
                Response::ok(serde_json::json!({ "source": source }))
            }
            Ok((false, source, _)) => Response {
                not_found: true,
                ..Response::error(format!("{source} is not banned"))
            },
            Err(e) => Response::error(format!("{e:#}")),
        }
    }

    /// Adds to a live list; an invalid change is refused before anything is touched.
    async fn list_add(
        &self,
        list: NetList,
        cidr: IpNet,
        services: Vec<String>,
        comment: Option<String>,
    ) -> Result<Response> {
        let cidr = cidr.trunc();
        let (value, services) = match list {
            NetList::Deny => (0, Vec::new()),
            NetList::Allow => {
                let services = if services.is_empty() {
                    vec![ALL.to_string()]
                } else {
                    services
                };
                let names: Vec<String> = self.services.iter().map(|s| s.name.clone()).collect();
                let mask = allow_mask(&names, &services).map_err(|unknown| {
                    anyhow!(
                        "unknown service {unknown:?} (known: {}, all, other); nothing changed",
                        names.join(", ")
                    )
                })?;
                (mask, services)
            }
        };
        let name = list.name();
        self.maps
            .lock()
            .await
            .insert_net(list, cidr, value)
            .map_err(|e| {
                anyhow!("the {name} list refused {cidr} (full?): {e:#}; nothing changed")
            })?;
        if list == NetList::Allow {
            info!(
                "allow-listed {cidr} for {} by the operator",
                services.join(",")
            );
        } else {
            info!("deny-listed {cidr} by the operator");
        }
        self.lists
            .lock()
            .await
            .add(list, cidr, services, comment.unwrap_or_default(), "runtime");
        Ok(Response::ok(
            serde_json::json!({ "list": name, "cidr": cidr.to_string(), "added": true }),
        ))
    }

    async fn list_remove(&self, list: NetList, cidr: IpNet) -> Response {
        let cidr = cidr.trunc();
        let name = list.name();
        let mut lists = self.lists.lock().await;
        let entries = lists.list_mut(list);
        if !entries.contains_key(&cidr) {
            return Response {
                not_found: true,
                ..Response::error(format!("{cidr} is not on the {name} list"))
            };
        }
        match self.maps.lock().await.remove_net(list, cidr) {
            Ok(()) => {
                entries.remove(&cidr);
                info!("removed {cidr} from the {name} list by the operator");
                Response::ok(
                    serde_json::json!({ "list": name, "cidr": cidr.to_string(), "added": false }),
                )
            }
            Err(e) => Response::error(format!("{e:#}")),
        }
    }

    async fn list(&self, list: NetList) -> Result<Response> {
        let lists = self.lists.lock().await;
        let entries: Vec<_> = lists.list(list).values().collect();
        Ok(Response::ok(serde_json::to_value(entries)?))
    }

    /// The verdict `ip` gets for each service now, and what decides it, in
    /// the XDP program's order: ban, deny, service access and allow list, rate
    /// rules, default policy.
    async fn explain(&self, ip: IpAddr) -> Result<Response> {
        let ip = ip.to_canonical();
        let maps = self.maps.lock().await;
        let key = maps.source_key(ip)?;
        let prefix = maps.settings()?.ipv6_ban_prefix;
        let ban = maps
            .ban(&key)?
            .filter(|b| b.is_active(clock::monotonic_ns()));
        drop(maps);
        let lists = self.lists.lock().await;
        let longest = |list: &BTreeMap<IpNet, ListEntry>| {
            list.iter()
                .filter(|(net, _)| net.contains(&ip))
                .max_by_key(|(net, _)| net.prefix_len())
                .map(|(net, entry)| (*net, entry.clone()))
        };
        let deny = longest(&lists.deny);
        let allow = longest(&lists.allow);
        drop(lists);

        let row = |service: &str, pass: bool, because: String| Verdict {
            service: service.to_string(),
            verdict: if pass { "pass" } else { "drop" }.to_string(),
            because,
        };
        let allowed_for = |name: &str| {
            allow
                .as_ref()
                .filter(|(_, entry)| entry.services.iter().any(|s| s == ALL || s == name))
        };
        let mut rows = Vec::new();
        let mut names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        names.push("(no service)");
        for name in names {
            let info = self.services.iter().find(|s| s.name == name);
            let verdict = if let Some(ban) = &ban {
                let rule = bans::rule_name(ban.rule, &self.rule_names)
                    .map(|r| format!(" by rule {r}"))
                    .unwrap_or_default();
                row(
                    name,
                    false,
                    format!(
                        "banned ({}{rule}, {} left)",
                        bans::reason_name(ban.reason),
                        bans::ban_duration(clock::monotonic_ns(), ban.expires_ns)
                    ),
                )
            } else if let Some((net, entry)) = &deny {
                row(name, false, describe_entry("denied by", net, entry))
            } else if let Some(info) = info {
                let allowed = allowed_for(&info.name);
                match (info.access, allowed) {
                    (AccessMode::Closed, _) => {
                        row(name, false, "service closed to everyone".into())
                    }
                    (_, Some((net, entry))) => {
                        let skipped = if info.rules.is_empty() {
                            ""
                        } else {
                            "; rate rules skipped"
                        };
                        row(
                            name,
                            true,
                            format!("{}{skipped}", describe_entry("allow-listed by", net, entry)),
                        )
                    }
                    (AccessMode::Trusted, None) => {
                        row(name, false, "not trusted: allow-listed sources only".into())
                    }
                    (AccessMode::Open, None) if info.rules.is_empty() => {
                        row(name, true, "open service".into())
                    }
                    (AccessMode::Open, None) => row(
                        name,
                        true,
                        format!(
                            "open service, subject to rate rules {}",
                            info.rules.join(", ")
                        ),
                    ),
                }
            } else {
                let allowed = allow
                    .as_ref()
                    .filter(|(_, e)| e.services.iter().any(|s| s == ALL || s == OTHER));
                match allowed {
                    Some((net, entry)) => {
                        row(name, true, describe_entry("allow-listed by", net, entry))
                    }
                    None if self.default_drop => row(name, false, "default policy: drop".into()),
                    None => row(name, true, "default policy: pass".into()),
                }
            };
            rows.push(verdict);
        }
        Ok(Response::ok(serde_json::json!({
            "source": bans::source_to_string(&key, prefix),
            "verdicts": rows,
        })))
    }

    async fn bans(&self) -> Result<Response> {
        let maps = self.maps.lock().await;
        let prefix = maps.settings()?.ipv6_ban_prefix;
        let now = clock::monotonic_ns();
        let reasons = self.manual_reasons.lock().await;
        let mut rows: Vec<BanRow> = maps
            .bans()?
            .into_iter()
            .filter(|(_, ban)| ban.is_active(now))
            .map(|(key, ban)| BanRow {
                source: bans::source_to_string(&key, prefix),
                reason: bans::reason_name(ban.reason).to_string(),
                detail: match bans::rule_name(ban.rule, &self.rule_names) {
                    Some(rule) => format!("rule {rule}"),
                    None => reasons.get(&key).cloned().unwrap_or_default(),
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

fn describe_entry(what: &str, net: &IpNet, entry: &ListEntry) -> String {
    if entry.comment.is_empty() {
        format!("{what} {net}")
    } else {
        format!("{what} {net} ({})", entry.comment)
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
                Ok(_) => match serde_json::from_str::<Request>(&line) {
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
    let mut stream = UnixStream::connect(path).map_err(|e| {
        anyhow!(
            "cannot reach the daemon at {} (is `sipguard run` running? root only): {e}",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).context("a malformed answer from the daemon")
}
