//! `[[alerts]]`: where alert messages go and how often.
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// One alert sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    pub kind: AlertKind,
    /// Webhook: the URL a JSON message is POSTed to (http or https).
    pub url: String,
    /// Quiet time after the last ban that ends an attack: the next ban
    /// starts a new one, with its own "attack started" message.
    #[serde(default = "default_burst_gap", deserialize_with = "duration")]
    pub burst_gap: Duration,
    /// During an attack, at most one summary per period.
    #[serde(default = "default_summary_every", deserialize_with = "duration")]
    pub summary_every: Duration,
    /// Attempts after the first failed delivery, waiting `backoff`, then
    /// twice as long each time (at most a minute).
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_backoff", deserialize_with = "duration")]
    pub backoff: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// A JSON POST whose `text` field reads as is in Slack, Mattermost and Teams.
    Webhook,
}

fn default_burst_gap() -> Duration {
    Duration::from_secs(10 * 60)
}

fn default_summary_every() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_retries() -> u32 {
    6
}

fn default_backoff() -> Duration {
    Duration::from_secs(2)
}

/// Durations as humantime strings ("90s", "15m", "1h").
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    let value = humantime::parse_duration(&text).map_err(serde::de::Error::custom)?;
    if value.is_zero() {
        return Err(serde::de::Error::custom("must be longer than 0s"));
    }
    Ok(value)
}
