//! sipguard as a CrowdSec watcher (a "machine"): it logs in to the LAPI
//! (`POST /v1/watchers/login`, a JWT renewed before it runs out and on a
//! 401) and pushes its own bans as alerts (`POST /v1/alerts`), each with a
//! ban decision, so every bouncer of the fleet drops the attacker.
//!
//! - Bans reach this task through a bounded channel ([`report::Reports`]):
//!   banning never waits for the LAPI.
//! - While the LAPI cannot be reached (or refuses the login), reports wait
//!   in a queue of at most [`MAX_QUEUED`] (the oldest give way) and retry
//!   with backoff (1 s doubling to a minute). Each goes out with what is
//!   left of its ban; a ban that ran out meanwhile is not reported.
//! - Alerts the LAPI refuses (a 4xx answer, or a 5xx again and again) are
//!   dropped and logged: sending them again would not change the answer.
use std::{
    collections::VecDeque,
    time::{Duration, Instant, SystemTime},
};

use reqwest::{
    header::{HeaderMap, HeaderValue, AUTHORIZATION},
    StatusCode, Url,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    config,
    http::{Http, HttpError},
    report::{self, Alert, Report, ReportResult},
};
use crate::{clock, metrics::ControllerCounters};

/// Reports kept while the LAPI is away.
pub const MAX_QUEUED: usize = 10_000;
/// Alerts per `POST /v1/alerts`.
const BATCH: usize = 100;
/// A LAPI that has not answered in this time is taken as unreachable.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (the LAPI answers with the new alerts' ids).
const ANSWER_LIMIT: usize = 1 << 20;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A batch answered with a server error this many times in a row is
/// dropped (the LAPI 1.4.6 answers 500 to an alert it cannot validate).
const MAX_SERVER_ERRORS: u32 = 3;
/// A token is renewed this long before its end (the LAPI's last an hour).
const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// How long a token whose end cannot be read is used.
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(30 * 60);
/// Up to this many reports in one push are logged one by one.
const LOG_EACH: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum WatcherError {
    #[error("crowdsec.lapi_url: {0}")]
    Url(String),
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// Why a push did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PushError {
    /// No answer, a 429, or a failed login: try again later.
    Unreachable(String),
    /// A 5xx answer: tried again, a few times.
    ServerError(String),
    /// The LAPI answered no to these alerts.
    Refused(String),
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Unreachable(e) | PushError::ServerError(e) | PushError::Refused(e) => {
                f.write_str(e)
            }
        }
    }
}

fn classify(e: HttpError) -> PushError {
    match &e {
        HttpError::Status { status, .. } if status.is_server_error() => {
            PushError::ServerError(e.to_string())
        }
        HttpError::Status { status, .. }
            if status.is_client_error()
                && *status != StatusCode::TOO_MANY_REQUESTS
                && *status != StatusCode::UNAUTHORIZED =>
        {
            PushError::Refused(e.to_string())
        }
        _ => PushError::Unreachable(e.to_string()),
    }
}

#[derive(Serialize)]
struct Login<'a> {
    machine_id: &'a str,
    password: &'a str,
    scenarios: Vec<String>,
}

#[derive(Deserialize)]
struct LoginAnswer {
    token: String,
    #[serde(default)]
    expire: String,
}

struct Token {
    bearer: HeaderValue,
    renew_at: Instant,
}

/// The watcher's side of the LAPI: login and alerts.
struct Machine {
    http: Http,
    login_url: Url,
    alerts_url: Url,
    credentials: config::Machine,
    token: Option<Token>,
}

impl Machine {
    fn new(lapi_url: &str, credentials: config::Machine) -> Result<Machine, WatcherError> {
        let base = Url::parse(lapi_url).map_err(|e| WatcherError::Url(e.to_string()))?;
        let join = |path: &str| {
            base.join(path)
                .map_err(|e| WatcherError::Url(e.to_string()))
        };
        Ok(Machine {
            http: Http::new()?,
            login_url: join("v1/watchers/login")?,
            alerts_url: join("v1/alerts")?,
            credentials,
            token: None,
        })
    }

    /// A valid token: the one held, or a new login.
    async fn bearer(&mut self) -> Result<HeaderValue, PushError> {
        if let Some(token) = self.token.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(token.bearer.clone());
        }
        self.token = None;
        let body = serde_json::to_vec(&Login {
            machine_id: &self.credentials.login,
            password: &self.credentials.password.0,
            scenarios: report::scenarios(),
        })
        .map_err(|e| PushError::Refused(e.to_string()))?;
        let answer = self
            .http
            .post_json(
                self.login_url.clone(),
                HeaderMap::new(),
                body,
                ANSWER_LIMIT,
                TIMEOUT,
            )
            .await
            .map_err(|e| {
                PushError::Unreachable(format!(
                    "logging in as machine {:?}: {e}",
                    self.credentials.login
                ))
            })?;
        let answer: LoginAnswer = serde_json::from_slice(&answer).map_err(|e| {
            PushError::Unreachable(format!("the LAPI's login answer has no token: {e}"))
        })?;
        let mut bearer = HeaderValue::from_str(&format!("Bearer {}", answer.token))
            .map_err(|_| PushError::Unreachable("the LAPI's token is not printable".into()))?;
        bearer.set_sensitive(true);
        let renew_at = Instant::now() + token_life(&answer.expire, SystemTime::now());
        self.token = Some(Token {
            bearer: bearer.clone(),
            renew_at,
        });
        Ok(bearer)
    }

    /// Pushes alerts; a 401 (a token the LAPI no longer takes) logs in
    /// again once.
    async fn push(&mut self, alerts: &[Alert]) -> Result<(), PushError> {
        let body = serde_json::to_vec(alerts).map_err(|e| PushError::Refused(e.to_string()))?;
        let mut renewed = false;
        loop {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, self.bearer().await?);
            let sent = self
                .http
                .post_json(
                    self.alerts_url.clone(),
                    headers,
                    body.clone(),
                    ANSWER_LIMIT,
                    TIMEOUT,
                )
                .await;
            match sent {
                Ok(_) => return Ok(()),
                Err(HttpError::Status { status, .. })
                    if status == StatusCode::UNAUTHORIZED && !renewed =>
                {
                    // Worth a line: the LAPI restarted (1.4.6 signs tokens
                    // with a secret of each run) or revoked the token.
                    info!(
                        "crowdsec watcher: the LAPI no longer takes the token (401); logging in \
                         again"
                    );
                    self.token = None;
                    renewed = true;
                }
                Err(e) => return Err(classify(e)),
            }
        }
    }
}

/// How long a token is used: until a minute before the end the LAPI gave
/// (`expire`, RFC 3339), between a minute and an hour.
fn token_life(expire: &str, now: SystemTime) -> Duration {
    match humantime::parse_rfc3339_weak(expire) {
        Ok(end) => end
            .duration_since(now)
            .unwrap_or_default()
            .saturating_sub(RENEW_BEFORE)
            .clamp(Duration::from_secs(60), Duration::from_secs(3600)),
        Err(_) => DEFAULT_TOKEN_LIFE,
    }
}

/// Reports waiting for the LAPI, oldest first, at most `bound`.
#[derive(Debug)]
struct Queue {
    items: VecDeque<Report>,
    bound: usize,
}

impl Queue {
    fn new(bound: usize) -> Queue {
        Queue {
            items: VecDeque::new(),
            bound,
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds a report; returns how many of the oldest gave way.
    fn push(&mut self, report: Report) -> usize {
        self.items.push_back(report);
        self.trim()
    }

    /// Puts a batch that did not go through back in front, in order;
    /// returns how many of the oldest gave way.
    fn put_back(&mut self, batch: Vec<Report>) -> usize {
        for report in batch.into_iter().rev() {
            self.items.push_front(report);
        }
        self.trim()
    }

    fn trim(&mut self) -> usize {
        let over = self.items.len().saturating_sub(self.bound);
        self.items.drain(..over);
        over
    }

    /// Up to `n` reports from the front whose bans still run at `now_ns`;
    /// and how many had run out (removed).
    fn take(&mut self, n: usize, now_ns: u64) -> (Vec<Report>, usize) {
        let mut batch = Vec::new();
        let mut expired = 0;
        while batch.len() < n {
            let Some(report) = self.items.pop_front() else {
                break;
            };
            if report.remaining(now_ns).is_some() {
                batch.push(report);
            } else {
                expired += 1;
            }
        }
        (batch, expired)
    }
}

/// 1 s doubled per failure, up to a minute.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// The task that reports the guard's bans.
pub struct Watcher {
    machine: Machine,
    url: String,
    rx: mpsc::Receiver<Report>,
    queue: Queue,
    counters: ControllerCounters,
}

impl Watcher {
    /// Builds the client; talks to nobody yet.
    pub fn new(
        lapi_url: &str,
        credentials: config::Machine,
        rx: mpsc::Receiver<Report>,
        counters: ControllerCounters,
    ) -> Result<Watcher, WatcherError> {
        let machine = Machine::new(lapi_url, credentials)?;
        Ok(Watcher {
            url: super::http::redact(&machine.alerts_url),
            machine,
            rx,
            queue: Queue::new(MAX_QUEUED),
            counters,
        })
    }

    /// Takes reports and pushes them until the guard stops.
    pub async fn run(mut self) {
        let login = self.machine.credentials.login.clone();
        info!(
            "crowdsec watcher: reporting bans ({}) to {} as machine {login:?}",
            report::scenarios().join(", "),
            self.url
        );
        // At once, so that wrong credentials show at start, not at the first ban.
        match self.machine.bearer().await {
            Ok(_) => info!("crowdsec watcher: logged in to the LAPI as {login:?}"),
            Err(e) => warn!(
                "crowdsec watcher: {e}; bans are queued (at most {MAX_QUEUED}) and the login \
                 retried"
            ),
        }
        let mut failures: u32 = 0;
        let mut server_errors: u32 = 0;
        let mut retry_at: Option<Instant> = None;
        loop {
            let waiting = retry_at.is_some_and(|at| Instant::now() < at);
            if self.queue.is_empty() || waiting {
                let received = match retry_at.filter(|_| waiting) {
                    Some(at) => tokio::select! {
                        received = self.rx.recv() => received,
                        _ = tokio::time::sleep_until(at.into()) => continue,
                    },
                    None => self.rx.recv().await,
                };
                match received {
                    Some(report) => self.enqueue(report),
                    // The guard is stopping.
                    None => return,
                }
                continue;
            }
            let outcome = self.push_batch().await;
            match outcome {
                Ok(_) => {
                    if failures > 0 {
                        info!(
                            "crowdsec watcher: the LAPI is reachable again after {failures} \
                             failed pushes; {} reports still queued",
                            self.queue.len()
                        );
                    }
                    failures = 0;
                    server_errors = 0;
                    retry_at = None;
                }
                Err((batch, e)) => {
                    if let PushError::ServerError(_) = e {
                        server_errors += 1;
                    }
                    if matches!(e, PushError::Refused(_)) || server_errors >= MAX_SERVER_ERRORS {
                        server_errors = 0;
                        self.finish(ReportResult::Rejected, batch.len());
                        warn!(
                            "crowdsec watcher: the LAPI refused {} alerts ({}): {e}",
                            batch.len(),
                            sources(&batch)
                        );
                        continue;
                    }
                    failures = failures.saturating_add(1);
                    let wait = backoff(failures);
                    let dropped = self.queue.put_back(batch);
                    self.finish(ReportResult::Dropped, dropped);
                    if failures == 1 {
                        warn!(
                            "crowdsec watcher: pushing alerts to the LAPI failed: {e}; {} reports \
                             queued, retrying in {}",
                            self.queue.len(),
                            clock::human(wait)
                        );
                    } else {
                        debug!("crowdsec watcher: push {failures} failed: {e}");
                    }
                    retry_at = Some(Instant::now() + wait);
                }
            }
        }
    }

    fn enqueue(&mut self, report: Report) {
        let dropped = self.queue.push(report);
        self.finish(ReportResult::Dropped, dropped);
    }

    /// Counts reports that left the queue.
    fn finish(&self, result: ReportResult, n: usize) {
        if n == 0 {
            return;
        }
        self.counters.fleet_reports(result, n as u64);
        self.counters.fleet_reports_queued.dec_by(n as i64);
    }

    /// Sends the front of the queue, taking in new reports meanwhile.
    /// Returns how many went, or the batch back with the reason.
    async fn push_batch(&mut self) -> Result<usize, (Vec<Report>, PushError)> {
        let now_ns = clock::monotonic_ns();
        let (batch, expired) = self.queue.take(BATCH, now_ns);
        if expired > 0 {
            info!("crowdsec watcher: {expired} bans ran out before they could be reported");
            self.finish(ReportResult::Expired, expired);
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let now = SystemTime::now();
        let alerts: Vec<Alert> = batch
            .iter()
            .filter_map(|r| report::alert(r, now_ns, now))
            .collect();
        let Watcher {
            machine,
            rx,
            queue,
            counters,
            ..
        } = self;
        let result = {
            let push = machine.push(&alerts);
            tokio::pin!(push);
            loop {
                tokio::select! {
                    result = &mut push => break result,
                    Some(report) = rx.recv() => {
                        let dropped = queue.push(report);
                        if dropped > 0 {
                            counters.fleet_reports(ReportResult::Dropped, dropped as u64);
                            counters.fleet_reports_queued.dec_by(dropped as i64);
                        }
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                self.finish(ReportResult::Sent, batch.len());
                if batch.len() <= LOG_EACH {
                    for r in &batch {
                        info!(
                            "crowdsec watcher: reported {} ({}) to the LAPI",
                            r.scope().1,
                            report::scenario(r.reason)
                        );
                    }
                } else {
                    info!(
                        "crowdsec watcher: reported {} bans to the LAPI",
                        batch.len()
                    );
                }
                Ok(batch.len())
            }
            Err(e) => Err((batch, e)),
        }
    }
}

/// The sources of a batch, for logs.
fn sources(batch: &[Report]) -> String {
    let shown: Vec<String> = batch.iter().take(LOG_EACH).map(|r| r.scope().1).collect();
    if batch.len() > LOG_EACH {
        format!("{}, ...", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_common::{BanReason, SourceKey};

    const SEC: u64 = 1_000_000_000;

    fn report(n: u8, expires_ns: u64) -> Report {
        Report::new(
            &SourceKey::from_ipv4([192, 0, 2, n]),
            64,
            BanReason::AuthFailure,
            format!("evidence {n}"),
            1,
            expires_ns,
        )
    }

    fn last_octets(reports: &[Report]) -> Vec<u8> {
        reports
            .iter()
            .map(|r| match r.target.addr() {
                std::net::IpAddr::V4(v4) => v4.octets()[3],
                std::net::IpAddr::V6(_) => 0,
            })
            .collect()
    }

    #[test]
    fn the_queue_keeps_the_newest_within_its_bound() {
        let mut queue = Queue::new(3);
        assert_eq!(queue.push(report(1, 100 * SEC)), 0);
        assert_eq!(queue.push(report(2, 100 * SEC)), 0);
        assert_eq!(queue.push(report(3, 100 * SEC)), 0);
        assert_eq!(queue.push(report(4, 100 * SEC)), 1);
        let (batch, expired) = queue.take(10, 0);
        assert_eq!((last_octets(&batch), expired), (vec![2, 3, 4], 0));
        assert!(queue.is_empty());
    }

    #[test]
    fn a_failed_batch_goes_back_in_front_in_order() {
        let mut queue = Queue::new(4);
        for n in 1..=4 {
            queue.push(report(n, 100 * SEC));
        }
        let (batch, _) = queue.take(2, 0);
        assert_eq!(last_octets(&batch), [1, 2]);
        // Meanwhile two more arrive: the queue is full.
        queue.push(report(5, 100 * SEC));
        queue.push(report(6, 100 * SEC));
        // Putting the batch back pushes out the oldest.
        assert_eq!(queue.put_back(batch), 2);
        let (all, _) = queue.take(10, 0);
        assert_eq!(last_octets(&all), [3, 4, 5, 6]);
    }

    #[test]
    fn bans_that_ran_out_are_not_sent() {
        let mut queue = Queue::new(10);
        queue.push(report(1, 5 * SEC));
        queue.push(report(2, 50 * SEC));
        queue.push(report(3, 9 * SEC + SEC / 2));
        let (batch, expired) = queue.take(10, 9 * SEC);
        // Less than a second left counts as run out.
        assert_eq!((last_octets(&batch), expired), (vec![2], 2));
        let mut queue = Queue::new(10);
        for n in 1..=5 {
            queue.push(report(n, 100 * SEC));
        }
        let (batch, _) = queue.take(2, 0);
        assert_eq!(last_octets(&batch), [1, 2]);
        assert_eq!(queue.len(), 3);
    }

    #[test]
    fn backoff_doubles_from_a_second_to_a_minute() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1), s(1));
        assert_eq!(backoff(2), s(2));
        assert_eq!(backoff(6), s(32));
        assert_eq!(backoff(7), s(60));
        assert_eq!(backoff(u32::MAX), s(60));
    }

    #[test]
    fn answers_sort_into_retry_or_drop() {
        let status = |code: u16| HttpError::Status {
            url: "http://lapi/v1/alerts".into(),
            status: StatusCode::from_u16(code).unwrap(),
            body: "{\"message\":\"x\"}".into(),
        };
        assert!(matches!(classify(status(400)), PushError::Refused(_)));
        assert!(matches!(classify(status(403)), PushError::Refused(_)));
        assert!(matches!(classify(status(422)), PushError::Refused(_)));
        assert!(matches!(classify(status(500)), PushError::ServerError(_)));
        assert!(matches!(classify(status(503)), PushError::ServerError(_)));
        assert!(matches!(classify(status(429)), PushError::Unreachable(_)));
        assert!(matches!(classify(status(401)), PushError::Unreachable(_)));
    }

    /// A LAPI double speaking HTTP/1.1: answers each request (one per
    /// connection) with the next scripted status and body, and records
    /// (path, Authorization header, body).
    struct Double {
        addr: std::net::SocketAddr,
        seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
    }

    impl Double {
        async fn start(answers: Vec<(u16, &'static str)>) -> Double {
            use tokio::io::AsyncWriteExt;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let log = std::sync::Arc::clone(&seen);
            tokio::spawn(async move {
                let mut answers = answers.into_iter();
                while let Ok((mut stream, _)) = listener.accept().await {
                    let request = read_request(&mut stream).await;
                    log.lock().unwrap().push(request);
                    let (status, body) = answers.next().unwrap_or((500, "{}"));
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                }
            });
            Double { addr, seen }
        }

        fn url(&self) -> String {
            format!("http://{}/", self.addr)
        }

        fn seen(&self) -> Vec<(String, String, String)> {
            self.seen.lock().unwrap().clone()
        }
    }

    /// The (path, Authorization) of each request the double saw.
    fn paths_and_auth(seen: &[(String, String, String)]) -> Vec<(&str, &str)> {
        seen.iter()
            .map(|(path, auth, _)| (path.as_str(), auth.as_str()))
            .collect()
    }

    async fn read_request(stream: &mut tokio::net::TcpStream) -> (String, String, String) {
        use tokio::io::AsyncReadExt;
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return Default::default();
            }
            data.extend_from_slice(&buf[..n]);
            let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&data[..end]).to_string();
            let header = |name: &str| {
                head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_string())
                })
            };
            let length: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if data.len() < end + 4 + length {
                continue;
            }
            let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).to_string();
            let path = head.split(' ').nth(1).unwrap_or_default().to_string();
            return (path, header("authorization").unwrap_or_default(), body);
        }
    }

    fn credentials() -> config::Machine {
        config::Machine {
            login: "pbx1".into(),
            password: crate::alerts::Secret("pw-9f2".into()),
        }
    }

    const LOGIN_T1: &str = r#"{"code":200,"expire":"2099-01-01T00:00:00Z","token":"t1"}"#;
    const LOGIN_T2: &str = r#"{"code":200,"expire":"2099-01-01T00:00:00Z","token":"t2"}"#;
    const EXPIRED: &str = r#"{"code":401,"message":"Token is expired"}"#;

    #[tokio::test]
    async fn a_token_the_lapi_no_longer_takes_is_renewed_once() {
        let lapi = Double::start(vec![
            (200, LOGIN_T1),
            (401, EXPIRED),
            (200, LOGIN_T2),
            (201, r#"["1"]"#),
            // The next push uses the token held; two 401s in a row fail.
            (401, EXPIRED),
            (200, LOGIN_T2),
            (401, EXPIRED),
        ])
        .await;
        let mut machine = Machine::new(&lapi.url(), credentials()).unwrap();
        let alert = report::alert(&report(1, 100 * SEC), 0, SystemTime::now()).unwrap();
        machine.push(std::slice::from_ref(&alert)).await.unwrap();
        let failed = machine.push(&[alert]).await.unwrap_err();
        assert!(matches!(failed, PushError::Unreachable(_)), "{failed:?}");
        let seen = lapi.seen();
        let calls = paths_and_auth(&seen);
        assert_eq!(
            calls,
            [
                ("/v1/watchers/login", ""),
                ("/v1/alerts", "Bearer t1"),
                ("/v1/watchers/login", ""),
                ("/v1/alerts", "Bearer t2"),
                ("/v1/alerts", "Bearer t2"),
                ("/v1/watchers/login", ""),
                ("/v1/alerts", "Bearer t2"),
            ]
        );
        let login: serde_json::Value = serde_json::from_str(&seen[0].2).unwrap();
        assert_eq!(login["machine_id"], "pbx1");
        assert_eq!(login["password"], "pw-9f2");
        let announced = login["scenarios"].as_array().unwrap();
        assert!(
            announced.contains(&"sipguard/auth-failure".into()),
            "{login}"
        );
        let alerts: serde_json::Value = serde_json::from_str(&seen[1].2).unwrap();
        assert_eq!(alerts[0]["scenario"], "sipguard/auth-failure");
        assert_eq!(alerts[0]["message"], "evidence 1");
        // The error says who could not log in, never the password.
        assert!(!format!("{failed:?}").contains("pw-9f2"));
    }

    /// A token is used until its renewal time (a minute before the end the
    /// LAPI gave: `token_life`), then replaced by a new login before the
    /// push, without waiting for a 401.
    #[tokio::test]
    async fn a_token_at_its_renewal_time_is_renewed_before_the_push() {
        let lapi = Double::start(vec![(201, r#"["1"]"#), (200, LOGIN_T2), (201, r#"["2"]"#)]).await;
        let mut machine = Machine::new(&lapi.url(), credentials()).unwrap();
        let alert = report::alert(&report(1, 100 * SEC), 0, SystemTime::now()).unwrap();
        let held = |renew_at| Token {
            bearer: HeaderValue::from_static("Bearer t1"),
            renew_at,
        };
        machine.token = Some(held(Instant::now() + Duration::from_secs(60)));
        machine.push(std::slice::from_ref(&alert)).await.unwrap();
        machine.token = Some(held(Instant::now()));
        machine.push(&[alert]).await.unwrap();
        let seen = lapi.seen();
        let calls = paths_and_auth(&seen);
        assert_eq!(
            calls,
            [
                ("/v1/alerts", "Bearer t1"),
                ("/v1/watchers/login", ""),
                ("/v1/alerts", "Bearer t2"),
            ]
        );
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what} did not happen within 10 s");
    }

    #[tokio::test]
    async fn the_task_retries_until_the_lapi_takes_the_alert_and_drops_refused_ones() {
        let lapi = Double::start(vec![
            (200, LOGIN_T1),
            // A server error: retried a second later.
            (503, r#"{"message":"busy"}"#),
            (201, r#"["1"]"#),
            // Refused: dropped, never sent again.
            (400, r#"{"message":"invalid"}"#),
        ])
        .await;
        let counters = ControllerCounters::default();
        let (reports, rx) = report::channel(counters.clone());
        let watcher = Watcher::new(&lapi.url(), credentials(), rx, counters.clone()).unwrap();
        let task = tokio::spawn(watcher.run());
        let in_an_hour = clock::monotonic_ns() + 3600 * SEC;
        reports.ban(report(1, in_an_hour));
        eventually("the report is sent", || {
            counters.fleet_reports_count(ReportResult::Sent) == 1
        })
        .await;
        assert_eq!(counters.fleet_reports_queued.get(), 0);
        reports.ban(report(2, in_an_hour));
        eventually("the refused report is dropped", || {
            counters.fleet_reports_count(ReportResult::Rejected) == 1
        })
        .await;
        assert_eq!(counters.fleet_reports_queued.get(), 0);
        assert_eq!(counters.fleet_reports_count(ReportResult::Sent), 1);
        let paths: Vec<String> = lapi.seen().into_iter().map(|(p, _, _)| p).collect();
        assert_eq!(
            paths,
            [
                "/v1/watchers/login",
                "/v1/alerts",
                "/v1/alerts",
                "/v1/alerts"
            ]
        );
        // The guard stops: the task ends.
        drop(reports);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends with its channel")
            .unwrap();
    }

    #[test]
    fn tokens_are_renewed_a_minute_before_their_end() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_480_000);
        // 2025-11-30T05:20:00Z plus an hour, as the LAPI (in UTC) writes it.
        assert_eq!(
            token_life("2025-11-30T06:20:00Z", now),
            Duration::from_secs(3540)
        );
        // An end already past, or unreadable: a minute, or the default.
        assert_eq!(
            token_life("2025-11-30T05:00:00Z", now),
            Duration::from_secs(60)
        );
        assert_eq!(token_life("", now), DEFAULT_TOKEN_LIFE);
        assert_eq!(
            token_life("2099-01-01T00:00:00Z", now),
            Duration::from_secs(3600)
        );
    }
}
