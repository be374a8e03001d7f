//! APIBan's API, as its own clients (apiban-tools, the Kamailio example)
//! speak it: `GET {base}{KEY}/banned/{ID}` answers
//! `{"ipaddress": [...], "ID": "NEXT"}`; the client asks again with NEXT
//! until the answer's ID is `"none"` (`{"ipaddress": ["no new bans"],
//! "ID": "none"}`, with status 400 or 404). ID `100` asks for the whole list.
//! A bad key answers ID `"unauthorized"`; too many requests answer 429, or
//! `{"ipaddress": "rate limit exceeded"}`.
use serde::Deserialize;
use serde_json::Value;

/// The ID that asks for the whole list.
pub const START_ID: &str = "100";
/// The longest cursor taken (it goes into the next URL).
const MAX_ID: usize = 64;

/// One answer of the `banned` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// Addresses, and the ID to ask with next.
    More { ips: Vec<String>, next: String },
    /// Nothing newer than the ID asked with.
    Done,
}

/// Why an answer brought no page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("APIBan refused the key (unauthorized)")]
    Unauthorized,
    #[error("APIBan's rate limit was reached")]
    RateLimited,
    #[error("APIBan answered {status}: {excerpt}")]
    Status { status: u16, excerpt: String },
    #[error("APIBan's answer is not a page of addresses: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    ipaddress: Value,
    #[serde(rename = "ID", default)]
    id: Value,
}

/// Reads one answer (its HTTP status and body).
pub fn parse_page(status: u16, body: &[u8], asked: &str) -> Result<Page, PageError> {
    if status == 429 || status == 503 {
        return Err(PageError::RateLimited);
    }
    let raw: Option<Raw> = serde_json::from_slice(body).ok();
    let Some(raw) = raw else {
        return Err(status_error(status, body)
            .unwrap_or_else(|| PageError::Malformed(crate::fleet::http::excerpt(body))));
    };
    if raw.ipaddress.as_str() == Some("rate limit exceeded") {
        return Err(PageError::RateLimited);
    }
    let id = match &raw.id {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    match id.as_str() {
        "unauthorized" => return Err(PageError::Unauthorized),
        "none" if status == 200 || status == 400 || status == 404 => return Ok(Page::Done),
        _ => {}
    }
    if let Some(e) = status_error(status, body) {
        return Err(e);
    }
    if id.is_empty()
        || id.len() > MAX_ID
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(PageError::Malformed(format!("the ID {:?}", raw.id)));
    }
    let Value::Array(list) = raw.ipaddress else {
        return Err(PageError::Malformed("ipaddress is not a list".into()));
    };
    let ips = list
        .into_iter()
        .map(|v| match v {
            Value::String(s) => s,
            other => other.to_string(),
        })
        .collect();
    if id == asked {
        // No progress: asking again would loop.
        return Ok(Page::Done);
    }
    Ok(Page::More { ips, next: id })
}

/// Anything but 200 that is not one of APIBan's JSON answers.
fn status_error(status: u16, body: &[u8]) -> Option<PageError> {
    match status {
        200 => None,
        401 | 403 => Some(PageError::Unauthorized),
        _ => Some(PageError::Status {
            status,
            excerpt: crate::fleet::http::excerpt(body),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_id() {
        let page = parse_page(
            200,
            br#"{"ipaddress":["198.51.100.7","203.0.113.9"],"ID":"1732960001"}"#,
            "100",
        )
        .unwrap();
        assert_eq!(
            page,
            Page::More {
                ips: vec!["198.51.100.7".into(), "203.0.113.9".into()],
                next: "1732960001".into()
            }
        );
        // Some servers send the ID as a number.
        assert_eq!(
            parse_page(200, br#"{"ipaddress":[],"ID":1732960002}"#, "1732960001").unwrap(),
            Page::More {
                ips: vec![],
                next: "1732960002".into()
            }
        );
    }

    #[test]
    fn the_end_of_the_list_is_none() {
        for status in [200, 400, 404] {
            assert_eq!(
                parse_page(
                    status,
                    br#"{"ipaddress":["no new bans"],"ID":"none"}"#,
                    "17"
                ),
                Ok(Page::Done)
            );
        }
        // The same ID again is no progress.
        assert_eq!(
            parse_page(200, br#"{"ipaddress":["192.0.2.1"],"ID":"17"}"#, "17"),
            Ok(Page::Done)
        );
    }

    #[test]
    fn refusals_and_limits_are_told_apart() {
        assert_eq!(
            parse_page(
                400,
                br#"{"ipaddress":["unauthorized"],"ID":"unauthorized"}"#,
                "100"
            ),
            Err(PageError::Unauthorized)
        );
        assert_eq!(
            parse_page(403, b"Forbidden", "100"),
            Err(PageError::Unauthorized)
        );
        assert_eq!(
            parse_page(
                400,
                br#"{"ipaddress":"rate limit exceeded","ID":"100"}"#,
                "100"
            ),
            Err(PageError::RateLimited)
        );
        assert_eq!(parse_page(429, b"", "100"), Err(PageError::RateLimited));
        assert_eq!(
            parse_page(503, b"<html>", "100"),
            Err(PageError::RateLimited)
        );
        assert!(matches!(
            parse_page(500, b"oops", "100"),
            Err(PageError::Status { status: 500, .. })
        ));
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"<html>",
            br#"{"ipaddress":{},"ID":"5"}"#,
            br#"{"ipaddress":[],"ID":"../../x"}"#,
            br#"{"ipaddress":[],"ID":""}"#,
            br#"{"ipaddress":[],"ID":null}"#,
            b"\xff\xfe",
        ] {
            assert!(
                matches!(parse_page(200, body, "100"), Err(PageError::Malformed(_))),
                "{body:?}"
            );
        }
        let long = format!(r#"{{"ipaddress":[],"ID":"{}"}}"#, "9".repeat(65));
        assert!(parse_page(200, long.as_bytes(), "100").is_err());
    }
}
