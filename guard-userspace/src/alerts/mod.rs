//! Alerts (`[[alerts]]`): bans and the guard's health become a few
//! readable messages to a webhook or by e-mail.
//!
//! A ban reaches this module through [`Alerts::ban`], which never waits: it
//! puts the notice into each sink's bounded queue, and a full queue drops it
//! (counted, and told in the next summary). So a slow or dead sink can never
//! delay a ban. Map fill levels and the interface state are published on
//! watch channels (the newest value wins, nothing queues up). Per sink, a
//! limiter task turns bursts into an "attack started" message and periodic
//! summaries ([`limiter`]), and a delivery task sends them, retrying with
//! backoff. A failing controller says so with [`Alerts::last_word`].
mod config;
mod email;
pub mod limiter;
mod text;
mod webhook;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

pub use config::{AlertConfig, AlertKind, Secret, StartTls};
pub use email::EmailError;
pub use limiter::{BanNotice, Fill, Message, Summary};
pub use webhook::WebhookError;

use self::{
    email::Email,
    limiter::{Limiter, Settings},
    webhook::Webhook,
};

/// Ban notices waiting for a sink's limiter.
const NOTICE_QUEUE: usize = 4096;
/// Messages waiting for delivery (the limiter makes few).
const MESSAGE_QUEUE: usize = 32;
/// How often the limiter checks whether a summary is due.
const TICK: Duration = Duration::from_millis(100);
/// The longest wait between two delivery attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error(transparent)]
    Email(#[from] EmailError),
}

/// Where a sink's messages go.
enum Transport {
    Webhook(Webhook),
    Email(Email),
}

impl Transport {
    fn new(config: &AlertConfig) -> Result<Transport, AlertError> {
        Ok(match config.kind {
            AlertKind::Webhook => {
                let url = config.url.as_deref().unwrap_or_default();
                Transport::Webhook(Webhook::new(url)?)
            }
            AlertKind::Email => Transport::Email(Email::new(config)?),
        })
    }

    fn describe(&self) -> String {
        match self {
            Transport::Webhook(webhook) => format!("posting to {}", webhook.url()),
            Transport::Email(email) => email.describe(),
        }
    }

    /// One attempt.
    async fn send(&self, host: &str, message: &Message) -> Result<(), AlertError> {
        match self {
            Transport::Webhook(webhook) => Ok(webhook.post(&webhook::body(host, message)).await?),
            Transport::Email(email) => Ok(email
                .send(&text::subject(host, message), text::text(host, message))
                .await?),
        }
    }
}

/// What the limiters hear besides bans: the newest value only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Health {
    fills: Vec<Fill>,
    /// (interface, attached), once it changed.
    interface: Option<(String, bool)>,
}

struct Sink {
    notices: mpsc::Sender<BanNotice>,
    lost: Arc<AtomicU64>,
    transport: Arc<Transport>,
}

/// The running alert sinks. Dropping it ends their tasks once their queues
/// are empty.
pub struct Alerts {
    sinks: Vec<Sink>,
    health: watch::Sender<Health>,
    host: String,
    map_check_every: Duration,
}

impl Alerts {
    /// Starts a limiter and a delivery task per sink on the current tokio
    /// runtime. A sink that cannot be built (unreadable password or CA
    /// file) is an error before anything starts.
    pub fn start(configs: &[AlertConfig]) -> Result<Alerts, AlertError> {
        let host = hostname();
        let transports = configs
            .iter()
            .map(|config| Ok((config, Arc::new(Transport::new(config)?))))
            .collect::<Result<Vec<_>, AlertError>>()?;
        let (health, _) = watch::channel(Health::default());
        let mut sinks = Vec::new();
        for (config, transport) in transports {
            info!("alerts: {}", transport.describe());
            let (notices, notice_rx) = mpsc::channel(NOTICE_QUEUE);
            let (messages, message_rx) = mpsc::channel(MESSAGE_QUEUE);
            let lost = Arc::new(AtomicU64::new(0));
            let settings = Settings {
                burst_gap: config.burst_gap,
                summary_every: config.summary_every,
                map_full_percent: config.map_full_percent,
            };
            let inputs = Inputs {
                notices: notice_rx,
                health: health.subscribe(),
                lost: Arc::clone(&lost),
            };
            tokio::spawn(limit(inputs, Limiter::new(settings), messages));
            let delivery = Delivery {
                transport: Arc::clone(&transport),
                retries: config.retries,
                backoff: config.backoff,
                host: host.clone(),
            };
            tokio::spawn(deliver(message_rx, delivery));
            sinks.push(Sink {
                notices,
                lost,
                transport,
            });
        }
        let map_check_every = configs
            .iter()
            .map(|c| c.map_check_every)
            .min()
            .unwrap_or(Duration::from_secs(60));
        Ok(Alerts {
            sinks,
            health,
            host,
            map_check_every,
        })
    }

    /// Tells every sink about a ban, without ever waiting.
    pub fn ban(&self, notice: BanNotice) {
        for sink in &self.sinks {
            if sink.notices.try_send(notice.clone()).is_err() {
                sink.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// How full the maps are now (each sink tells what crosses its level).
    pub fn fills(&self, fills: Vec<Fill>) {
        self.health.send_modify(|health| health.fills = fills);
    }

    /// The guard left its interface (`attached` false) or is back on it.
    pub fn interface(&self, iface: &str, attached: bool) {
        self.health
            .send_modify(|health| health.interface = Some((iface.to_string(), attached)));
    }

    /// How often the maps' fill levels should be read.
    pub fn map_check_every(&self) -> Duration {
        self.map_check_every
    }

    /// The controller is failing: one attempt per sink, all at once,
    /// bounded by `within` (the process is about to exit).
    pub async fn last_word(&self, error: &str, within: Duration) {
        let message = Message::Failed {
            error: error.to_string(),
        };
        let mut sends = tokio::task::JoinSet::new();
        for sink in &self.sinks {
            let (transport, host, message) = (
                Arc::clone(&sink.transport),
                self.host.clone(),
                message.clone(),
            );
            sends.spawn(async move {
                match tokio::time::timeout(within, transport.send(&host, &message)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("alerts: the last alert was not sent: {e}"),
                    Err(_) => warn!("alerts: the last alert was not sent within {within:?}"),
                }
            });
        }
        while sends.join_next().await.is_some() {}
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this host".to_string())
}

/// What a sink's limiter listens to.
struct Inputs {
    notices: mpsc::Receiver<BanNotice>,
    health: watch::Receiver<Health>,
    lost: Arc<AtomicU64>,
}

/// Feeds the limiter until the notices end; hands its messages on (a full
/// message queue drops the message: the sink is far behind).
async fn limit(mut inputs: Inputs, mut limiter: Limiter, messages: mpsc::Sender<Message>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health_open = true;
    loop {
        let mut out = Vec::new();
        tokio::select! {
            notice = inputs.notices.recv() => match notice {
                Some(notice) => out.extend(limiter.on_ban(Instant::now(), notice)),
                None => break,
            },
            changed = inputs.health.changed(), if health_open => match changed {
                Ok(()) => {
                    let health = inputs.health.borrow_and_update().clone();
                    let now = Instant::now();
                    for fill in &health.fills {
                        out.extend(limiter.on_fill(now, fill));
                    }
                    if let Some((iface, attached)) = &health.interface {
                        out.extend(limiter.on_interface(now, iface, *attached));
                    }
                }
                Err(_) => health_open = false,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                limiter.on_lost(inputs.lost.swap(0, Ordering::Relaxed));
                out.extend(limiter.tick(now));
                out.extend(limiter.flush_interface(now));
            }
        }
        for message in out {
            if messages.try_send(message).is_err() {
                warn!("alerts: the sink is far behind; a message was dropped");
            }
        }
    }
}

/// How a sink's messages are delivered.
struct Delivery {
    transport: Arc<Transport>,
    retries: u32,
    backoff: Duration,
    host: String,
}

/// Sends each message, retrying a failed one with doubling waits.
async fn deliver(mut messages: mpsc::Receiver<Message>, delivery: Delivery) {
    while let Some(message) = messages.recv().await {
        let mut wait = delivery.backoff;
        let mut attempt = 0;
        loop {
            match delivery.transport.send(&delivery.host, &message).await {
                Ok(()) => break,
                Err(e) if attempt < delivery.retries => {
                    attempt += 1;
                    warn!("alerts: {e}; attempt {} in {wait:?}", attempt + 1);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    warn!("alerts: {e}; giving up on this message after {attempt} retries");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
