//! The webhook sink: one JSON POST per message. The `text` field reads as
//! is in Slack, Mattermost and Teams; the other fields are for machines.
use std::time::Duration;

use serde_json::{json, Value};

use super::{
    limiter::{BanNotice, Message, Summary},
    text,
};

/// How long one POST may take.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("alert webhook URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("building the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("POST {url}: {source}")]
    Send {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("POST {url}: the receiver answered {status}")]
    Status { url: String, status: u16 },
}

pub struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl Webhook {
    pub fn new(url: &str) -> Result<Webhook, WebhookError> {
        let bad = |reason: String| WebhookError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("only http and https are supported".to_string()));
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("sipguard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(WebhookError::Client)?;
        Ok(Webhook {
            client,
            url: parsed,
        })
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// One attempt: a 2xx answer is delivered, anything else an error.
    pub async fn post(&self, body: &Value) -> Result<(), WebhookError> {
        let response = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|source| WebhookError::Send {
                url: self.url.to_string(),
                source,
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(WebhookError::Status {
                url: self.url.to_string(),
                status: status.as_u16(),
            });
        }
        Ok(())
    }
}

fn pairs(items: &[(String, u64)], key: &str) -> Vec<Value> {
    items
        .iter()
        .map(|(name, n)| json!({ key: name, "bans": n }))
        .collect()
}

/// The structured fields of a message, beside its `text`.
fn fields(message: &Message) -> Value {
    match message {
        Message::AttackStarted(ban) => attack_started(ban),
        Message::Summary(s) => summary(s),
        Message::MapNearlyFull(fill) => json!({
            "event": "map_nearly_full",
            "map": fill.map,
            "entries": fill.entries,
            "capacity": fill.capacity,
            "percent": fill.percent(),
        }),
        Message::Interface { iface, attached } => json!({
            "event": if *attached { "reattached" } else { "detached" },
            "iface": iface,
        }),
        Message::Failed { error } => json!({
            "event": "controller_failed",
            "error": error,
        }),
    }
}

fn attack_started(ban: &BanNotice) -> Value {
    json!({
        "event": "attack_started",
        "source": ban.source,
        "reason": ban.reason,
        "evidence": ban.evidence,
        "ban_seconds": ban.duration.as_secs(),
        "users": ban.users,
    })
}

fn summary(s: &Summary) -> Value {
    json!({
        "event": "summary",
        "period_seconds": s.period.as_secs(),
        "bans": s.bans,
        "by_reason": s.by_reason,
        "top_sources": pairs(&s.top_sources, "source"),
        "top_users": pairs(&s.top_users, "user"),
        "lost": s.lost,
    })
}

/// The JSON body of a message.
pub fn body(host: &str, message: &Message) -> Value {
    let mut body = fields(message);
    body["text"] = Value::String(text::text(host, message));
    body["host"] = Value::String(host.to_string());
    body
}
