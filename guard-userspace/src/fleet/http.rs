//! The HTTP client every fleet task shares: reqwest on tokio with rustls
//! (ring, the system's CA store), bounded time and bounded bodies, so a
//! slow or hostile server costs a timeout or an error, never the memory.
use std::time::Duration;

use reqwest::{header::HeaderMap, Client, StatusCode, Url};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: {}", chain(.source))]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{url}: answer longer than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

#[derive(Clone)]
pub struct Http {
    client: Client,
}

impl Http {
    pub fn new() -> Result<Http, HttpError> {
        let client = Client::builder()
            .user_agent(concat!("sipguard/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(HttpError::Build)?;
        Ok(Http { client })
    }

    /// GET `url`; the body of a 2xx answer, at most `limit` bytes, within
    /// `timeout` (connecting included).
    pub async fn get(
        &self,
        url: Url,
        headers: HeaderMap,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, HttpError> {
        let request = self
            .client
            .get(url.clone())
            .headers(headers)
            .timeout(timeout);
        self.send(request, &url, limit).await
    }

    /// POST `body` as JSON to `url`; the answer's body as for [`Http::get`].
    pub async fn post_json(
        &self,
        url: Url,
        headers: HeaderMap,
        body: Vec<u8>,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, HttpError> {
        let request = self
            .client
            .post(url.clone())
            .headers(headers)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body);
        self.send(request, &url, limit).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
        limit: usize,
    ) -> Result<Vec<u8>, HttpError> {
        let shown = redact(url);
        let answer = read_answer(request, shown.clone(), limit).await?;
        if !answer.status.is_success() {
            return Err(HttpError::Status {
                url: shown,
                status: answer.status,
                body: excerpt(&answer.body),
            });
        }
        Ok(answer.body)
    }

    /// GET `url` whatever the status (a feed reads its errors' bodies too),
    /// the body bounded as for [`Http::get`]. `shown` names the URL in
    /// errors: a URL with a key in its path must not reach the log.
    pub async fn fetch(
        &self,
        url: Url,
        shown: String,
        headers: HeaderMap,
        limit: usize,
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        let request = self.client.get(url).headers(headers).timeout(timeout);
        read_answer(request, shown, limit).await
    }
}

/// An HTTP answer of any status.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Sends `request` and reads at most `limit` bytes of its answer.
async fn read_answer(
    request: reqwest::RequestBuilder,
    shown: String,
    limit: usize,
) -> Result<Answer, HttpError> {
    // reqwest's errors name the full URL: the caller's `shown` replaces it.
    let failed = |source: reqwest::Error| HttpError::Request {
        url: shown.clone(),
        source: source.without_url(),
    };
    let mut response = request.send().await.map_err(failed)?;
    let status = response.status();
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(HttpError::TooLarge { url: shown, limit });
    }
    let headers = response.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > limit {
            return Err(HttpError::TooLarge { url: shown, limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// An error and its causes ("error sending request: connection refused"):
/// reqwest's own message leaves out why.
fn chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = e.source();
    }
    text
}

/// The start of a body, printable, for error messages.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// The URL without its query (which may carry a feed's key) for logs.
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_never_show_a_query() {
        let url = Url::parse("https://feed.example/list?key=secret").unwrap();
        assert_eq!(redact(&url), "https://feed.example/list");
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        let body = [b'a'; 500];
        assert_eq!(excerpt(&body).len(), 200);
        assert_eq!(excerpt(b"{\"message\":\n\"x\"}"), "{\"message\": \"x\"}");
    }
}
