//! Blocklist feeds: each `[[feeds]]` entry is a task that asks its source
//! every `refresh` and makes the fleet deny set hold exactly its list
//! (holder `feed NAME`), beside CrowdSec's ranges.
//!
//! - A feed that cannot be fetched, or answers something that is no list
//!   (an HTML page, mostly bad lines, nothing), keeps its last good list in
//!   force; the log says so once, `status` and the metrics count it, and it
//!   is retried with growing waits (up to the refresh, at least a minute).
//! - APIBan is paged with its ID cursor, at most [`MAX_PAGES`] a refresh, a
//!   pause between pages; a rate-limit answer (429, 503, "rate limit
//!   exceeded") waits at least the refresh, doubling, honouring Retry-After.
//!   Its entries leave [`FeedSection::lifetime`] (7 days) after APIBan last
//!   listed them.
//! - A list over HTTP is asked conditionally (ETag, Last-Modified): an
//!   unchanged list costs the server a 304.
//! - The state directory keeps each feed's entries (`fleet.json`) and its
//!   cursor, validators and APIBan's times (`feeds.json`): a restart
//!   without network enforces the last lists, and does not ask a feed
//!   again before its refresh is due.
pub mod apiban;
pub mod config;
pub mod list;
#[cfg(test)]
mod task_tests;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ipnet::IpNet;
use reqwest::{
    header::{
        HeaderMap, HeaderValue, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RETRY_AFTER,
    },
    StatusCode, Url,
};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use self::{
    apiban::{Page, PageError},
    config::{FeedKind, FeedSection, Source},
    list::{Limits, ListError, Parsed},
};
use super::{
    health::{Health, Origin, SourceHealth},
    http::{Http, HttpError},
};
use crate::{
    clock,
    runtime::{
        fleet_set::{Holder, RangeChange},
        Runtime,
    },
    state::{unix_now, SavedFeed},
};

/// APIBan pages asked in one refresh; the cursor carries on at the next.
pub const MAX_PAGES: usize = 100;
/// The pause between two APIBan pages.
const PAGE_PAUSE: Duration = Duration::from_millis(250);
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest wait after rate-limit answers.
const MAX_RATE_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Up to this many changes are logged one by one.
const LOG_EACH: usize = 20;

/// Why a refresh brought no new list.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{0}: answered {1}")]
    Status(String, StatusCode),
    #[error("cannot read {0}: {1}")]
    File(String, String),
    #[error("{0}: {1}")]
    NotAList(String, ListError),
    #[error("{0}")]
    Apiban(PageError),
    /// The wait the feed asked for (Retry-After; zero when none).
    #[error("rate limited by the feed")]
    RateLimited(Duration),
}

/// Every feed's saved state, written together to `feeds.json`.
#[derive(Clone)]
pub struct Store(Arc<Mutex<BTreeMap<String, SavedFeed>>>);

impl Store {
    pub fn new(saved: BTreeMap<String, SavedFeed>) -> Store {
        Store(Arc::new(Mutex::new(saved)))
    }

    async fn take(&self, name: &str) -> Option<SavedFeed> {
        self.0.lock().await.get(name).cloned()
    }

    async fn save(&self, runtime: &Runtime, name: &str, feed: SavedFeed) {
        let mut all = self.0.lock().await;
        all.insert(name.to_string(), feed);
        runtime.save_feed_states(&all);
    }
}

pub struct Feed {
    section: FeedSection,
    key: Option<String>,
    source: Source,
    http: Http,
    runtime: Arc<Runtime>,
    health: Health,
    store: Store,
    holder: Holder,
    saved: SavedFeed,
    /// APIBan: each network and when it was last listed (UNIX seconds).
    seen: BTreeMap<IpNet, u64>,
}

impl Feed {
    pub fn new(
        section: FeedSection,
        key: Option<String>,
        http: Http,
        runtime: Arc<Runtime>,
        store: Store,
    ) -> Option<Feed> {
        let source = section.source()?;
        let health = runtime.counters().fleet_health.clone();
        Some(Feed {
            holder: Holder::Feed(section.name.clone()),
            section,
            key,
            source,
            http,
            runtime,
            health,
            store,
            saved: SavedFeed::default(),
            seen: BTreeMap::new(),
        })
    }

    /// Where the feed is read from, without its key.
    fn shown(&self) -> String {
        match &self.source {
            Source::File(path) => path.display().to_string(),
            Source::Url(url) => match self.section.kind {
                FeedKind::Apiban => format!("{}KEY/banned/", base(url)),
                FeedKind::List => super::http::redact(url),
            },
        }
    }

    fn name(&self) -> &str {
        &self.section.name
    }

    /// Refreshes forever.
    pub async fn run(mut self) {
        let mut wait = self.start().await;
        let refresh = self.section.refresh();
        let (mut failures, mut limited) = (0u32, 0u32);
        loop {
            tokio::time::sleep(wait).await;
            wait = match self.refresh().await {
                Ok(()) => {
                    if failures > 0 || limited > 0 {
                        info!(
                            "feed {}: refreshed again after {failures} failures",
                            self.name()
                        );
                    }
                    (failures, limited) = (0, 0);
                    refresh
                }
                Err(FeedError::RateLimited(asked)) => {
                    limited = limited.saturating_add(1);
                    let wait = rate_wait(refresh, asked, limited);
                    self.failed(
                        &format!(
                            "rate limited by the feed; next try in {}",
                            clock::human(wait)
                        ),
                        limited == 1,
                    );
                    wait
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = backoff(refresh, failures);
                    self.failed(
                        &format!(
                            "{e}; the last good list stays in force; retrying in {}",
                            clock::human(wait)
                        ),
                        failures == 1,
                    );
                    wait
                }
            };
        }
    }

    fn failed(&self, why: &str, first: bool) {
        let name = self.name().to_string();
        self.health
            .update(Origin::Feed, &name, |h| h.failed(why.to_string()));
        if first {
            warn!("feed {name}: refresh failed: {why}");
        } else {
            debug!("feed {name}: refresh failed again: {why}");
        }
    }

    /// Takes up the saved state; returns the wait before the first refresh
    /// (none unless the saved list is younger than the refresh).
    async fn start(&mut self) -> Duration {
        let from = self.shown();
        let kind = self.section.kind.name();
        let mut row = SourceHealth::new(self.name(), Origin::Feed, kind, &from);
        let saved = self
            .store
            .take(self.name())
            .await
            .filter(|s| s.kind == kind && s.from == from);
        let entries = self.runtime.fleet_held_count(&self.holder).await;
        let saved = saved.unwrap_or_else(|| SavedFeed {
            kind: kind.to_string(),
            from: from.clone(),
            ..SavedFeed::default()
        });
        row.last_success_unix = saved.last_success_unix;
        row.list_unix = saved.last_success_unix.filter(|_| entries > 0);
        row.entries = entries as u64;
        self.health.register(row);
        self.seen = saved.seen.iter().copied().collect();
        if self.seen.is_empty() && entries > 0 && self.section.kind == FeedKind::Apiban {
            // fleet.json without feeds.json: the entries count from now.
            let now = unix_now();
            let held = self.runtime.fleet_held(&self.holder).await;
            self.seen = held.into_iter().map(|net| (net, now)).collect();
        }
        self.saved = saved;
        if self.section.kind == FeedKind::Apiban {
            // The saved times decide what stays: the kernel holds exactly them.
            self.expire();
            self.apply(None).await;
        }
        info!(
            "feed {}: {kind} from {from} every {}; {entries} entries in force from the state \
             directory",
            self.name(),
            clock::human(self.section.refresh())
        );
        let age = self
            .saved
            .last_success_unix
            .map(|t| Duration::from_secs(unix_now().saturating_sub(t)));
        match age {
            Some(age) if entries > 0 => self.section.refresh().saturating_sub(age),
            _ => Duration::ZERO,
        }
    }

    async fn refresh(&mut self) -> Result<(), FeedError> {
        match self.section.kind {
            FeedKind::List => self.refresh_list().await,
            FeedKind::Apiban => self.refresh_apiban().await,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_entries: self.section.max_entries as usize,
            include_private: self.section.include_private,
        }
    }

    async fn refresh_list(&mut self) -> Result<(), FeedError> {
        let body = match self.source.clone() {
            Source::File(path) => self.read_file(path).await?,
            Source::Url(url) => match self.get_list(url).await? {
                Some(body) => body,
                None => {
                    debug!("feed {}: unchanged (304)", self.name());
                    self.saved.last_success_unix = Some(unix_now());
                    self.health
                        .update(Origin::Feed, &self.section.name, SourceHealth::succeeded);
                    self.store
                        .save(&self.runtime, &self.section.name, self.saved.clone())
                        .await;
                    return Ok(());
                }
            },
        };
        let allow_empty = matches!(self.source, Source::File(_));
        let parsed = list::parse_list(&body, &self.limits())
            .and_then(|p| p.check(allow_empty))
            .map_err(|e| FeedError::NotAList(self.shown(), e))?;
        self.seen = parsed.nets.iter().map(|n| (*n, unix_now())).collect();
        self.apply(Some(&parsed)).await;
        self.saved.last_success_unix = Some(unix_now());
        self.store
            .save(&self.runtime, &self.section.name, self.saved.clone())
            .await;
        Ok(())
    }

    async fn read_file(&self, path: std::path::PathBuf) -> Result<Vec<u8>, FeedError> {
        let limit = self.section.max_bytes;
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || crate::state::read_regular_file(&path, limit))
            .await
            .map_err(|e| FeedError::File(shown.clone(), e.to_string()))?
            .map_err(|e| FeedError::File(shown, e.to_string()))
    }

    /// The list's body, or None when the server says it is unchanged.
    async fn get_list(&mut self, url: Url) -> Result<Option<Vec<u8>>, FeedError> {
        let mut headers = HeaderMap::new();
        // Only a list still in force may be kept as "unchanged".
        if self.runtime.fleet_held_count(&self.holder).await > 0 {
            let validators = [
                (IF_NONE_MATCH, &self.saved.etag),
                (IF_MODIFIED_SINCE, &self.saved.last_modified),
            ];
            for (name, value) in validators {
                if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                    headers.insert(name, value);
                }
            }
        }
        let answer = self
            .http
            .fetch(url, self.shown(), headers, self.limit(), FETCH_TIMEOUT)
            .await?;
        match answer.status {
            StatusCode::NOT_MODIFIED => return Ok(None),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                return Err(FeedError::RateLimited(retry_after(&answer.headers)))
            }
            s if !s.is_success() => return Err(FeedError::Status(self.shown(), s)),
            _ => {}
        }
        let header = |name: reqwest::header::HeaderName| {
            answer
                .headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        self.saved.etag = header(ETAG);
        self.saved.last_modified = header(LAST_MODIFIED);
        Ok(Some(answer.body))
    }

    fn limit(&self) -> usize {
        usize::try_from(self.section.max_bytes).unwrap_or(usize::MAX)
    }

    /// APIBan: pages from the cursor on; what they brought is applied even
    /// when a later page fails (the cursor moves past exactly that).
    async fn refresh_apiban(&mut self) -> Result<(), FeedError> {
        let Source::Url(base_url) = self.source.clone() else {
            return Ok(());
        };
        let key = self.key.clone().unwrap_or_default();
        self.expire();
        let lifetime = self.section.lifetime().as_secs();
        let fresh = self
            .saved
            .last_success_unix
            .is_some_and(|t| unix_now().saturating_sub(t) < lifetime);
        let mut id = match (&self.saved.cursor, fresh) {
            (Some(cursor), true) => cursor.clone(),
            _ => apiban::START_ID.to_string(),
        };
        let mut parsed = Parsed::default();
        let mut failure = None;
        let mut pages = 0;
        loop {
            if pages == MAX_PAGES {
                info!(
                    "feed {}: {MAX_PAGES} pages this refresh; the rest at the next",
                    self.name()
                );
                break;
            }
            if pages > 0 {
                tokio::time::sleep(PAGE_PAUSE).await;
            }
            pages += 1;
            match self.page(&base_url, &key, &id).await {
                Ok(Page::Done) => break,
                Ok(Page::More { ips, next }) => {
                    self.take_page(&ips, &mut parsed);
                    id = next;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let progressed = pages > 1 || failure.is_none();
        if progressed {
            self.saved.cursor = Some(id);
            self.apply(Some(&parsed)).await;
            if failure.is_none() {
                self.saved.last_success_unix = Some(unix_now());
            }
            self.saved.seen = self.seen.iter().map(|(n, t)| (*n, *t)).collect();
            self.store
                .save(&self.runtime, &self.section.name, self.saved.clone())
                .await;
        }
        failure.map_or(Ok(()), Err)
    }

    async fn page(&self, base_url: &Url, key: &str, id: &str) -> Result<Page, FeedError> {
        let url = base(base_url)
            .join(&format!("{key}/banned/{id}"))
            .map_err(|e| FeedError::Apiban(PageError::Malformed(e.to_string())))?;
        let shown = format!("{}{id}", self.shown());
        let answer = self
            .http
            .fetch(url, shown, HeaderMap::new(), self.limit(), FETCH_TIMEOUT)
            .await?;
        apiban::parse_page(answer.status.as_u16(), &answer.body, id).map_err(|e| match e {
            PageError::RateLimited => FeedError::RateLimited(retry_after(&answer.headers)),
            other => FeedError::Apiban(other),
        })
    }

    /// One page's addresses, listed now.
    fn take_page(&mut self, ips: &[String], parsed: &mut Parsed) {
        let now = unix_now();
        let limits = self.limits();
        for ip in ips {
            let Some(net) = list::parse_entry(ip.trim()) else {
                parsed.invalid += 1;
                continue;
            };
            if list::is_too_broad(&net) {
                parsed.too_broad += 1;
            } else if !limits.include_private && list::is_special(&net) {
                parsed.private += 1;
            } else if self.seen.len() >= limits.max_entries && !self.seen.contains_key(&net) {
                parsed.over_limit += 1;
            } else {
                self.seen.insert(net, now);
                parsed.nets.insert(net);
            }
        }
    }

    /// APIBan: drops what APIBan last listed longer than `lifetime` ago.
    fn expire(&mut self) {
        let lifetime = self.section.lifetime().as_secs();
        let now = unix_now();
        self.seen
            .retain(|_, seen| now.saturating_sub(*seen) < lifetime);
    }

    /// Makes the fleet deny set hold exactly `self.seen` for this feed.
    /// `parsed`: the refresh that brought them (for the log and health).
    async fn apply(&mut self, parsed: Option<&Parsed>) {
        let changes: Vec<RangeChange> = self
            .seen
            .keys()
            .map(|net| RangeChange::Hold {
                net: *net,
                detail: String::new(),
            })
            .collect();
        let done = self
            .runtime
            .fleet_ranges(&self.holder, &changes, true, false)
            .await;
        let entries = self.runtime.fleet_held_count(&self.holder).await as u64;
        let name = self.section.name.clone();
        if let Some(p) = parsed {
            let skipped = p.invalid + p.private + p.too_broad + p.over_limit;
            let bad = match &p.first_invalid {
                Some((line, text)) => format!(" (line {line}: {text:?})"),
                None => String::new(),
            };
            // Every change is news; an unchanged large list is not.
            let news = done.enforced + done.lifted > 0 || skipped > 0 || changes.len() <= LOG_EACH;
            let line = format!(
                "feed {name}: refreshed, {entries} entries in force ({} added, {} removed, {} \
                 allow-listed); skipped {} bad lines{bad}, {} private or special-use, {} too \
                 broad, {} over max_entries",
                done.enforced,
                done.lifted,
                done.allowlisted,
                p.invalid,
                p.private,
                p.too_broad,
                p.over_limit
            );
            if news {
                info!("{line}");
            } else {
                debug!("{line}");
            }
            self.health.update(Origin::Feed, &name, |h| {
                h.succeeded();
                h.skipped = skipped;
            });
        }
        self.health.update(Origin::Feed, &name, |h| {
            h.entries = entries;
            h.applied_total += done.enforced;
            h.lifted_total += done.lifted;
        });
    }
}

/// The API's base URL with a final '/', so that joining keeps its path.
fn base(url: &Url) -> Url {
    let mut url = url.clone();
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// A Retry-After in seconds (the HTTP-date form is taken as absent).
fn retry_after(headers: &HeaderMap) -> Duration {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs)
}

/// After rate-limit answers: at least the refresh and what the server
/// asked, doubled per answer in a row, at most a day.
fn rate_wait(refresh: Duration, asked: Duration, in_a_row: u32) -> Duration {
    let base = refresh.max(asked);
    base.saturating_mul(1u32 << in_a_row.saturating_sub(1).min(16))
        .min(MAX_RATE_WAIT.max(asked))
}

/// After failures: from a minute (or the refresh, if shorter), doubling,
/// up to the refresh (at least a minute).
fn backoff(refresh: Duration, failures: u32) -> Duration {
    let minute = Duration::from_secs(60);
    let first = refresh.min(minute);
    first
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(refresh.max(minute))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_and_stay_bounded() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(3600), 1), s(60));
        assert_eq!(backoff(s(3600), 2), s(120));
        assert_eq!(backoff(s(3600), 100), s(3600));
        assert_eq!(backoff(s(10), 1), s(10));
        assert_eq!(backoff(s(10), 3), s(40));
        assert_eq!(backoff(s(10), 9), s(60));
        assert_eq!(rate_wait(s(300), s(0), 1), s(300));
        assert_eq!(rate_wait(s(300), s(900), 1), s(900));
        assert_eq!(rate_wait(s(300), s(0), 3), s(1200));
        assert_eq!(rate_wait(s(300), s(0), 60), s(86_400));
    }

    #[test]
    fn the_apiban_base_keeps_its_path() {
        let url = |t| Url::parse(t).unwrap();
        let page = |b| base(&url(b)).join("KEY/banned/100").unwrap().to_string();
        assert_eq!(
            page("https://apiban.org/api/"),
            "https://apiban.org/api/KEY/banned/100"
        );
        assert_eq!(
            page("https://apiban.org/api"),
            "https://apiban.org/api/KEY/banned/100"
        );
        assert_eq!(
            page("http://127.0.0.1:8081/"),
            "http://127.0.0.1:8081/KEY/banned/100"
        );
    }

    #[test]
    fn retry_after_takes_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), Duration::ZERO);
        h.insert(RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h), Duration::from_secs(120));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Duration::ZERO);
    }
}
