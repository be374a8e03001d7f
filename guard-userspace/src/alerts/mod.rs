//! Alerts (`[[alerts]]`): bans become a few readable messages to a webhook.
//!
//! A ban reaches this module through [`Alerts::ban`], which never waits: it
//! puts the notice into each sink's bounded queue, and a full queue drops it
//! (counted, and told in the next summary). So a slow or dead sink can never
//! delay a ban. Per sink, a limiter task turns bursts into an "attack
//! started" message and periodic summaries ([`limiter`]), and a delivery
//! task posts them, retrying with backoff.
mod config;
pub mod limiter;
mod webhook;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{info, warn};

pub use config::{AlertConfig, AlertKind};
pub use limiter::{BanNotice, Message, Summary};
pub use webhook::WebhookError;

use self::{
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

struct Sink {
    notices: mpsc::Sender<BanNotice>,
    lost: Arc<AtomicU64>,
}

/// The running alert sinks. Dropping it ends their tasks once their queues
/// are empty.
pub struct Alerts {
    sinks: Vec<Sink>,
}

impl Alerts {
    /// Starts a limiter and a delivery task per sink on the current tokio
    /// runtime. A bad URL is an error before anything starts.
    pub fn start(configs: &[AlertConfig]) -> Result<Alerts, WebhookError> {
        let host = hostname();
        let mut sinks = Vec::new();
        let mut started = Vec::new();
        for config in configs {
            let AlertKind::Webhook = config.kind;
            started.push((config.clone(), Webhook::new(&config.url)?));
        }
        for (config, webhook) in started {
            info!("alerts: posting to {}", webhook.url());
            let (notices, notice_rx) = mpsc::channel(NOTICE_QUEUE);
            let (messages, message_rx) = mpsc::channel(MESSAGE_QUEUE);
            let lost = Arc::new(AtomicU64::new(0));
            let settings = Settings {
                burst_gap: config.burst_gap,
                summary_every: config.summary_every,
            };
            tokio::spawn(limit(
                notice_rx,
                Limiter::new(settings),
                Arc::clone(&lost),
                messages,
            ));
            tokio::spawn(deliver(message_rx, webhook, config, host.clone()));
            sinks.push(Sink { notices, lost });
        }
        Ok(Alerts { sinks })
    }

    /// Tells every sink about a ban, without ever waiting.
    pub fn ban(&self, notice: BanNotice) {
        for sink in &self.sinks {
            if sink.notices.try_send(notice.clone()).is_err() {
                sink.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this host".to_string())
}

/// Feeds the limiter until the notices end; hands its messages on (a full
/// message queue drops the message: the sink is far behind).
async fn limit(
    mut notices: mpsc::Receiver<BanNotice>,
    mut limiter: Limiter,
    lost: Arc<AtomicU64>,
    messages: mpsc::Sender<Message>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            notice = notices.recv() => match notice {
                Some(notice) => limiter.on_ban(Instant::now(), notice),
                None => break,
            },
            _ = tick.tick() => {
                limiter.on_lost(lost.swap(0, Ordering::Relaxed));
                limiter.tick(Instant::now())
            }
        };
        if let Some(message) = message {
            if messages.try_send(message).is_err() {
                warn!("alerts: the webhook is far behind; a message was dropped");
            }
        }
    }
}

/// Posts each message, retrying a failed one with doubling waits.
async fn deliver(
    mut messages: mpsc::Receiver<Message>,
    webhook: Webhook,
    config: AlertConfig,
    host: String,
) {
    while let Some(message) = messages.recv().await {
        let body = webhook::body(&host, &message);
        let mut wait = config.backoff;
        let mut attempt = 0;
        loop {
            match webhook.post(&body).await {
                Ok(()) => break,
                Err(e) if attempt < config.retries => {
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
