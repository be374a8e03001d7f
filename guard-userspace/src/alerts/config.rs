//! `[[alerts]]`: where alert messages go and how often.
//!
//! One flat table per sink, whatever its kind: serde keeps the span of each
//! key, so a bad value is reported at its line. What serde cannot check
//! (the keys a kind needs, addresses, URLs) [`AlertConfig::validate`] does,
//! with the key's path for the line.
use std::{fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

/// One alert sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    pub kind: AlertKind,
    /// Webhook: the URL a JSON message is POSTed to (http or https).
    #[serde(default)]
    pub url: Option<String>,
    // The e-mail keys (absent for a webhook).
    /// The SMTP server's host name (also the name its certificate must carry).
    #[serde(default)]
    pub server: Option<String>,
    /// Default: 587 (submission), or 25 with `starttls = "never"`.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub starttls: StartTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password (its first line), readable by root only.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A PEM certificate to trust besides the system's (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `"sipguard <sipguard@pbx.example.org>"` or a bare address.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
    /// Quiet time after the last ban that ends an attack: the next ban
    /// starts a new one, with its own "attack started" message.
    #[serde(default = "default_burst_gap", deserialize_with = "duration")]
    pub burst_gap: Duration,
    /// During an attack, at most one summary per period; also the least
    /// time between two "nearly full" messages about one map.
    #[serde(default = "default_summary_every", deserialize_with = "duration")]
    pub summary_every: Duration,
    /// Attempts after the first failed delivery, waiting `backoff`, then
    /// twice as long each time (at most a minute).
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_backoff", deserialize_with = "duration")]
    pub backoff: Duration,
    /// A map (bans, deny lists) this full, in percent, is told.
    #[serde(default = "default_map_full_percent")]
    pub map_full_percent: u8,
    /// How often the maps' fill levels are read (the shortest of all sinks).
    #[serde(default = "default_map_check_every", deserialize_with = "duration")]
    pub map_check_every: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    /// Refuse to send unless the server upgrades the connection to TLS.
    #[default]
    Required,
    /// Upgrade when the server offers it, else send in clear.
    Opportunistic,
    /// Never upgrade (a relay on the same host or a trusted network).
    Never,
}

/// A password: never printed by `{:?}`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// A JSON POST whose `text` field reads as is in Slack, Mattermost and Teams.
    Webhook,
    /// An e-mail over SMTP (STARTTLS, authentication).
    Email,
}

const EMAIL_KEYS: [&str; 9] = [
    "server",
    "port",
    "starttls",
    "username",
    "password",
    "password_file",
    "ca_file",
    "from",
    "to",
];

impl AlertConfig {
    /// What serde cannot check: (key under `alerts[i]`, reason).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=100).contains(&self.map_full_percent) {
            return Err(("map_full_percent", "must be 1..=100".into()));
        }
        match self.kind {
            AlertKind::Webhook => self.validate_webhook(),
            AlertKind::Email => self.validate_email(),
        }
    }

    fn validate_webhook(&self) -> Result<(), (&'static str, String)> {
        if let Some(key) = self.email_keys_given().first() {
            return Err((key, "an e-mail key, not for kind = \"webhook\"".into()));
        }
        let Some(url) = &self.url else {
            return Err(("kind", "a webhook needs `url`".into()));
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| ("url", format!("{url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(("url", "only http and https are supported".into()));
        }
        Ok(())
    }

    fn validate_email(&self) -> Result<(), (&'static str, String)> {
        let e = self;
        if self.url.is_some() {
            return Err(("url", "a webhook key, not for kind = \"email\"".into()));
        }
        match &e.server {
            None => return Err(("kind", "e-mail needs `server`".into())),
            Some(s) if s.trim().is_empty() || s.contains(char::is_whitespace) => {
                return Err(("server", "a host name or address".into()))
            }
            Some(_) => {}
        }
        if e.port == Some(0) {
            return Err(("port", "must be 1..=65535".into()));
        }
        match &e.from {
            None => return Err(("kind", "e-mail needs `from`".into())),
            Some(from) => mailbox(from).map_err(|reason| ("from", reason))?,
        };
        if e.to.is_empty() {
            return Err(("to", "at least one address".into()));
        }
        for to in &e.to {
            mailbox(to).map_err(|reason| ("to", reason))?;
        }
        match (&e.username, &e.password, &e.password_file) {
            (Some(_), Some(_), Some(_)) => Err((
                "password_file",
                "give `password` or `password_file`, not both".into(),
            )),
            (Some(_), None, None) => {
                Err(("username", "needs `password` or `password_file`".into()))
            }
            (None, Some(_), _) => Err(("password", "needs `username`".into())),
            (None, _, Some(_)) => Err(("password_file", "needs `username`".into())),
            _ => Ok(()),
        }
    }

    fn email_keys_given(&self) -> Vec<&'static str> {
        let e = self;
        let given = [
            e.server.is_some(),
            e.port.is_some(),
            e.starttls != StartTls::default(),
            e.username.is_some(),
            e.password.is_some(),
            e.password_file.is_some(),
            e.ca_file.is_some(),
            e.from.is_some(),
            !e.to.is_empty(),
        ];
        EMAIL_KEYS
            .iter()
            .zip(given)
            .filter_map(|(key, given)| given.then_some(*key))
            .collect()
    }
}

/// An address as lettre reads it (`Name <user@host>` or `user@host`).
fn mailbox(text: &str) -> Result<(), String> {
    text.parse::<lettre::message::Mailbox>()
        .map(|_| ())
        .map_err(|e| format!("{text:?} is not an e-mail address ({e})"))
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

fn default_map_full_percent() -> u8 {
    90
}

fn default_map_check_every() -> Duration {
    Duration::from_secs(60)
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
