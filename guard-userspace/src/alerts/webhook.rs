//! The webhook sink: one JSON POST per message. The `text` field reads as
//! is in Slack, Mattermost and Teams; the other fields are for machines.
use std::time::Duration;

use serde_json::{json, Value};

use super::limiter::{BanNotice, Message, Summary};

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

fn duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn list(items: &[(String, u64)]) -> String {
    items
        .iter()
        .map(|(name, n)| format!("{name} ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn attack_started(host: &str, ban: &BanNotice) -> Value {
    json!({
        "text": format!(
            "sipguard on {host}: attack started. Banned {} for {} ({}): {}",
            ban.source, duration(ban.duration), ban.reason, ban.evidence
        ),
        "event": "attack_started",
        "host": host,
        "source": ban.source,
        "reason": ban.reason,
        "evidence": ban.evidence,
        "ban_seconds": ban.duration.as_secs(),
        "users": ban.users,
    })
}

fn summary(host: &str, s: &Summary) -> Value {
    let reasons: Vec<_> = s
        .by_reason
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let mut text = format!(
        "sipguard on {host}: {} more bans in the last {} ({}).",
        s.bans,
        duration(s.period),
        reasons.join(", ")
    );
    if !s.top_sources.is_empty() {
        text.push_str(&format!(" Top sources: {}.", list(&s.top_sources)));
    }
    if !s.top_users.is_empty() {
        text.push_str(&format!(" Top targeted users: {}.", list(&s.top_users)));
    }
    if s.lost > 0 {
        text.push_str(&format!(
            " {} bans were not told here (alert queue full).",
            s.lost
        ));
    }
    let pairs = |items: &[(String, u64)], key: &str| -> Vec<Value> {
        items
            .iter()
            .map(|(name, n)| json!({ key: name, "bans": n }))
            .collect()
    };
    json!({
        "text": text,
        "event": "summary",
        "host": host,
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
    match message {
        Message::AttackStarted(ban) => attack_started(host, ban),
        Message::Summary(s) => summary(host, s),
    }
}
