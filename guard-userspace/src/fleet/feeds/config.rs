//! `[[feeds]]`: blocklists pulled on a schedule into the fleet deny set.
//!
//! - `kind = "apiban"`: APIBan's API (`key` or `key_file`), paged with its
//!   ID cursor; entries live `lifetime` (APIBan's 7 days) after APIBan last
//!   listed them.
//! - `kind = "list"`: a `url` (http/https) or a `file` with one address or
//!   network per line (VoIPBL, FireHOL, Spamhaus DROP...).
use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

/// APIBan's API, as its own clients call it.
pub const APIBAN_URL: &str = "https://apiban.org/api/";
/// The shortest refresh accepted: a public list changes in hours.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
const MAX_REFRESH: Duration = Duration::from_secs(7 * 24 * 3600);
/// APIBan's own clients ask every 5 minutes (its systemd timer).
const APIBAN_REFRESH: Duration = Duration::from_secs(300);
const LIST_REFRESH: Duration = Duration::from_secs(3600);
/// APIBan lists an address for 7 days (its clients flush after 604,800 s).
const APIBAN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_ENTRIES_LIMIT: u32 = 1_000_000;
const DEFAULT_MAX_ENTRIES: u32 = 100_000;
/// VoIPBL's list is about 2 MB; FireHOL's level 3 about 1 MB.
const DEFAULT_MAX_BYTES: u64 = 32 << 20;
const MAX_BYTES_LIMIT: u64 = 256 << 20;
const MIN_BYTES: u64 = 1024;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FeedKind {
    Apiban,
    List,
}

impl FeedKind {
    pub fn name(self) -> &'static str {
        match self {
            FeedKind::Apiban => "apiban",
            FeedKind::List => "list",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedSection {
    /// Names the feed in logs, `status`, `explain` and the saved state.
    pub name: String,
    pub kind: FeedKind,
    /// `list`: the list's URL; `apiban`: the API's base (default APIBan's).
    #[serde(default)]
    pub url: Option<String>,
    /// `list`: a local file instead of a URL.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// `apiban`: the key apiban.org gave...
    #[serde(default)]
    pub key: Option<String>,
    /// ...or a file holding it (read at start).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// How often the feed is asked (default 5m for apiban, 1h for a list).
    #[serde(default, deserialize_with = "duration_option")]
    pub refresh: Option<Duration>,
    /// `apiban`: how long an address stays after APIBan last listed it.
    #[serde(default, deserialize_with = "duration_option")]
    pub lifetime: Option<Duration>,
    /// The most entries taken from this feed (the rest are counted).
    #[serde(default = "default_max_entries")]
    pub max_entries: u32,
    /// The largest answer or file read; a larger one is an error.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Keep entries over private and special-use networks (RFC 1918,
    /// loopback, link-local, CGNAT, ULA...), which a public list may carry
    /// (FireHOL's level 1 lists the bogons) and which would drop the PBX's
    /// own LAN. Default false: skipped and counted.
    #[serde(default)]
    pub include_private: bool,
}

fn default_max_entries() -> u32 {
    DEFAULT_MAX_ENTRIES
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}

fn duration_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
}

/// Where a feed's list comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Url(reqwest::Url),
    File(PathBuf),
}

impl FeedSection {
    pub fn refresh(&self) -> Duration {
        self.refresh.unwrap_or(match self.kind {
            FeedKind::Apiban => APIBAN_REFRESH,
            FeedKind::List => LIST_REFRESH,
        })
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime.unwrap_or(APIBAN_LIFETIME)
    }

    /// The feed's source (assumes a validated section).
    pub fn source(&self) -> Option<Source> {
        if let Some(file) = &self.file {
            return Some(Source::File(file.clone()));
        }
        let url = match (self.kind, &self.url) {
            (_, Some(url)) => url.as_str(),
            (FeedKind::Apiban, None) => APIBAN_URL,
            (FeedKind::List, None) => return None,
        };
        reqwest::Url::parse(url).ok().map(Source::Url)
    }

    /// Checks what serde cannot: (key path below `feeds[i]`, reason).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, reason: &str| Err((key.to_string(), reason.to_string()));
        if !valid_name(&self.name) {
            return bad(
                "name",
                "1 to 32 letters, digits, '-', '_' or '.' (it names the feed in logs and state)",
            );
        }
        if let Some(url) = &self.url {
            check_url(url).map_err(|reason| ("url".to_string(), reason))?;
        }
        match self.kind {
            FeedKind::Apiban => {
                if self.file.is_some() {
                    return bad("file", "an apiban feed is read from its API (url)");
                }
                match (&self.key, &self.key_file) {
                    (None, None) | (Some(_), Some(_)) => {
                        return bad("key", "give exactly one of key or key_file");
                    }
                    (Some(key), None) if !valid_key(key) => {
                        return bad("key", "must be the key apiban.org gave: one printable word");
                    }
                    _ => {}
                }
            }
            FeedKind::List => {
                if self.key.is_some() || self.key_file.is_some() {
                    return bad("key", "only an apiban feed takes a key");
                }
                if self.lifetime.is_some() {
                    return bad("lifetime", "only an apiban feed has a lifetime");
                }
                if self.url.is_some() == self.file.is_some() {
                    return bad("url", "give exactly one of url or file");
                }
            }
        }
        if !(MIN_REFRESH..=MAX_REFRESH).contains(&self.refresh()) {
            return bad("refresh", "must be between 10s and 7d");
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(365 * 24 * 3600))
            .contains(&self.lifetime())
        {
            return bad("lifetime", "must be between 1m and 365d");
        }
        if !(1..=MAX_ENTRIES_LIMIT).contains(&self.max_entries) {
            return bad("max_entries", "must be between 1 and 1000000");
        }
        if !(MIN_BYTES..=MAX_BYTES_LIMIT).contains(&self.max_bytes) {
            return bad("max_bytes", "must be between 1024 and 268435456 (256 MiB)");
        }
        Ok(())
    }

    /// The APIBan key: given, or read from its file.
    pub fn api_key(&self) -> Result<Option<String>, String> {
        let key = match (&self.key, &self.key_file) {
            (Some(key), _) => key.clone(),
            (None, Some(path)) => {
                let bytes = crate::state::read_regular_file(path, 4096).map_err(|e| {
                    format!("feeds {}: key_file {}: {e}", self.name, path.display())
                })?;
                String::from_utf8_lossy(&bytes).trim().to_string()
            }
            (None, None) => return Ok(None),
        };
        if !valid_key(&key) {
            return Err(format!(
                "feeds {}: the APIBan key must be one printable word",
                self.name
            ));
        }
        Ok(Some(key))
    }
}

/// The whole `[[feeds]]` array: each entry, and names unique.
pub fn validate_all(feeds: &[FeedSection]) -> Result<(), (String, String)> {
    for (i, feed) in feeds.iter().enumerate() {
        feed.validate()
            .map_err(|(key, reason)| (format!("feeds[{i}].{key}"), reason))?;
        if feeds[..i].iter().any(|f| f.name == feed.name) {
            return Err((
                format!("feeds[{i}].name"),
                format!("another feed is named {:?}", feed.name),
            ));
        }
    }
    Ok(())
}

fn check_url(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A key that goes into a URL path: visible ASCII, no '/', '?' or '#'.
fn valid_key(key: &str) -> bool {
    (1..=256).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'%'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "site.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_kind() {
        let c = parse(
            "[[feeds]]\nname = \"apiban\"\nkind = \"apiban\"\nkey = \"abc123\"\n\n\
             [[feeds]]\nname = \"voipbl\"\nkind = \"list\"\nurl = \"https://voipbl.org/update/\"\n",
        )
        .unwrap();
        let (apiban, voipbl) = (&c.feeds[0], &c.feeds[1]);
        assert_eq!(apiban.refresh(), Duration::from_secs(300));
        assert_eq!(apiban.lifetime(), Duration::from_secs(604_800));
        assert_eq!(
            apiban.source(),
            Some(Source::Url(reqwest::Url::parse(APIBAN_URL).unwrap()))
        );
        assert_eq!(apiban.api_key().unwrap().as_deref(), Some("abc123"));
        assert_eq!(voipbl.refresh(), Duration::from_secs(3600));
        assert_eq!(voipbl.max_entries, 100_000);
        assert!(!voipbl.include_private);
        assert_eq!(voipbl.api_key().unwrap(), None);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases = [
            // A missing key points at the feed.
            ("[[feeds]]\nname = \"a\"\nkind = \"apiban\"\n", "site.toml:1: key `feeds[0].key`: give exactly one"),
            (
                "[[feeds]]\nname = \"a\"\nkind = \"list\"\nurl = \"https://x/\"\n\n[[feeds]]\nname = \"a\"\nkind = \"list\"\nfile = \"/x\"\n",
                "site.toml:7: key `feeds[1].name`: another feed",
            ),
            ("[[feeds]]\nname = \"a b\"\nkind = \"list\"\nfile = \"/x\"\n", "site.toml:2: key `feeds[0].name`"),
            ("[[feeds]]\nname = \"a\"\nkind = \"list\"\n", "site.toml:1: key `feeds[0].url`: give exactly one of url or file"),
            (
                "[[feeds]]\nname = \"a\"\nkind = \"list\"\nurl = \"ftp://x/\"\n",
                "site.toml:4: key `feeds[0].url`: must be an http",
            ),
            (
                "[[feeds]]\nname = \"a\"\nkind = \"list\"\nfile = \"/x\"\nrefresh = \"1s\"\n",
                "site.toml:5: key `feeds[0].refresh`: must be between 10s and 7d",
            ),
            (
                "[[feeds]]\nname = \"a\"\nkind = \"list\"\nfile = \"/x\"\nmax_entries = 0\n",
                "site.toml:5: key `feeds[0].max_entries`",
            ),
            (
                "[[feeds]]\nname = \"a\"\nkind = \"list\"\nfile = \"/x\"\nmax_bytes = 10\n",
                "site.toml:5: key `feeds[0].max_bytes`",
            ),
            (
                "[[feeds]]\nname = \"a\"\nkind = \"list\"\nfile = \"/x\"\nkey = \"k\"\n",
                "site.toml:5: key `feeds[0].key`: only an apiban feed",
            ),
            (
                "[[feeds]]\nname = \"a\"\nkind = \"apiban\"\nkey = \"a/b\"\n",
                "site.toml:4: key `feeds[0].key`: must be the key",
            ),
            ("[[feeds]]\nname = \"a\"\nkind = \"rss\"\n", "site.toml:3: key `feeds[0].kind`"),
            ("[[feeds]]\nname = \"a\"\nkind = \"list\"\nfile = \"/x\"\nrefrsh = \"1h\"\n", "site.toml:5"),
        ];
        for (text, expected) in cases {
            let e = parse(text).unwrap_err();
            assert!(
                e.starts_with(expected),
                "{text:?}:\n{e}\nexpected {expected}"
            );
        }
    }

    #[test]
    fn a_missing_key_file_is_a_clear_error() {
        let c = parse(
            "[[feeds]]\nname = \"apiban\"\nkind = \"apiban\"\nkey_file = \"/nonexistent/apiban.key\"\n",
        )
        .unwrap();
        let e = c.feeds[0].api_key().unwrap_err();
        assert!(
            e.contains("feeds apiban: key_file /nonexistent/apiban.key"),
            "{e}"
        );
    }

    #[test]
    fn the_example_feeds_are_valid_uncommented() {
        let example = include_str!("../../../../sipguard.example.toml");
        let start = example.find("# [[feeds]]").expect("a [[feeds]] example");
        let section: String = example[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter(|l| !l.starts_with("# #"))
            .map(|l| l.trim_start_matches("# "))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(&section, "example").unwrap();
        assert_eq!(c.feeds.len(), 3, "{section}");
        assert!(c.feeds.iter().any(|f| f.kind == FeedKind::Apiban));
    }
}
