//! The bouncer's side of CrowdSec's Local API: `GET /v1/decisions/stream`
//! with `X-Api-Key`, first with `startup=true` (every decision in force),
//! then deltas (new and deleted since this bouncer's last pull).
//!
//! The LAPI answers `{"new": [...] | null, "deleted": [...] | null}`; each
//! decision has `id`, `origin`, `type`, `scope` (`Ip`, `Range`, ...),
//! `value`, `scenario` and a Go duration (`"59m59.24s"`, negative once it
//! has run out).
use std::time::Duration;

use reqwest::{
    header::{HeaderMap, HeaderValue},
    Url,
};
use serde::Deserialize;

use super::{
    config::{CrowdsecSection, Scope},
    http::{Http, HttpError},
};

/// The largest stream answer read: 100,000 decisions take about 20 MB.
pub const MAX_STREAM_BODY: usize = 64 << 20;
/// A delta is small: a LAPI that has not answered in this time is taken as
/// gone (a pooled connection to a vanished host would otherwise hang).
const DELTA_TIMEOUT: Duration = Duration::from_secs(10);
/// The start-up answer can hold every decision of the fleet.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LapiError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("the LAPI's answer is not a decision stream: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("the LAPI's answer is not a JSON object: {0:?}")]
    NotAnObject(String),
    #[error("crowdsec.lapi_url: {0}")]
    Url(String),
}

/// One decision as the LAPI sends it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Decision {
    pub id: Option<i64>,
    #[serde(default)]
    pub origin: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub scope: String,
    pub value: String,
    #[serde(default)]
    pub duration: String,
    #[serde(default)]
    pub scenario: String,
}

/// One answer of the stream.
#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct Stream {
    /// `null` and absent both mean none.
    #[serde(default)]
    pub new: Option<Vec<Decision>>,
    #[serde(default)]
    pub deleted: Option<Vec<Decision>>,
}

impl Stream {
    pub fn parse(body: &[u8]) -> Result<Stream, LapiError> {
        // serde would take a struct from a JSON array too; the LAPI sends an object.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(LapiError::NotAnObject(super::http::excerpt(body)));
        }
        Ok(serde_json::from_slice(body)?)
    }
}

/// A Go `time.Duration` string: `"1h2m3.5s"`, `"-18.88ms"`, `"0s"`. Returns
/// None for a negative duration (the decision has run out); an error for
/// anything else that is not one.
pub fn parse_go_duration(text: &str) -> Result<Option<Duration>, String> {
    let bad = || format!("invalid duration {text:?}");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(Some(Duration::ZERO));
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        total_ns = total_ns
            .checked_add(scaled(number, unit_ns).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        rest = tail;
    }
    if negative && total_ns > 0 {
        return Ok(None);
    }
    let secs = u64::try_from(total_ns / 1_000_000_000).map_err(|_| bad())?;
    Ok(Some(Duration::new(secs, (total_ns % 1_000_000_000) as u32)))
}

/// `number` (digits, at most one '.') times `unit_ns`, in whole ns.
fn scaled(number: &str, unit_ns: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole.checked_mul(unit_ns)?;
    // Digits past ns precision cannot change the result.
    let mut scale = unit_ns;
    for digit in fraction.bytes().take(20) {
        scale /= 10;
        value = value.checked_add(u128::from(digit - b'0') * scale)?;
    }
    Some(value)
}

/// The bouncer's LAPI client.
pub struct Lapi {
    http: Http,
    stream_url: Url,
    key: HeaderValue,
}

impl Lapi {
    pub fn new(http: Http, section: &CrowdsecSection, key: &str) -> Result<Lapi, LapiError> {
        let base = Url::parse(&section.lapi_url).map_err(|e| LapiError::Url(e.to_string()))?;
        let mut stream_url = base
            .join("v1/decisions/stream")
            .map_err(|e| LapiError::Url(e.to_string()))?;
        {
            let mut query = stream_url.query_pairs_mut();
            let scopes: Vec<&str> = section.scopes.iter().map(|s| s.query_name()).collect();
            query.append_pair("scopes", &scopes.join(","));
            for (name, list) in [
                ("origins", &section.origins),
                ("scenarios_containing", &section.scenarios_containing),
                (
                    "scenarios_not_containing",
                    &section.scenarios_not_containing,
                ),
            ] {
                if !list.is_empty() {
                    query.append_pair(name, &list.join(","));
                }
            }
        }
        let mut key = HeaderValue::from_str(key)
            .map_err(|_| LapiError::Url("the bouncer key is not a header value".into()))?;
        key.set_sensitive(true);
        Ok(Lapi {
            http,
            stream_url,
            key,
        })
    }

    /// One pull: everything in force (`startup`), or what changed since the
    /// last pull.
    pub async fn stream(&self, startup: bool) -> Result<Stream, LapiError> {
        let mut url = self.stream_url.clone();
        url.query_pairs_mut()
            .append_pair("startup", if startup { "true" } else { "false" });
        let mut headers = HeaderMap::new();
        headers.insert("X-Api-Key", self.key.clone());
        let timeout = if startup {
            STARTUP_TIMEOUT
        } else {
            DELTA_TIMEOUT
        };
        let body = self
            .http
            .get(url, headers, MAX_STREAM_BODY, timeout)
            .await?;
        Stream::parse(&body)
    }

    /// Where the stream is read from (without the key), for logs and status.
    pub fn url(&self) -> String {
        super::http::redact(&self.stream_url)
    }
}

/// The scope of a decision, as sipguard enforces it.
pub fn scope_of(decision: &Decision) -> Option<Scope> {
    if decision.scope.eq_ignore_ascii_case("ip") {
        Some(Scope::Ip)
    } else if decision.scope.eq_ignore_ascii_case("range") {
        Some(Scope::Range)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Option<Duration> {
        parse_go_duration(text).unwrap()
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(
            d("59m59.243961497s"),
            Some(Duration::new(3599, 243_961_497))
        );
        assert_eq!(
            d("3h59m59.774090329s"),
            Some(Duration::new(14_399, 774_090_329))
        );
        assert_eq!(d("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(d("0s"), Some(Duration::ZERO));
        assert_eq!(d("0"), Some(Duration::ZERO));
        assert_eq!(d("1.5ms"), Some(Duration::from_micros(1500)));
        assert_eq!(d("2µs3ns"), Some(Duration::from_nanos(2003)));
        assert_eq!(d(".5s"), Some(Duration::from_millis(500)));
        // Deleted and run-out decisions carry negative durations.
        assert_eq!(d("-18.887335ms"), None);
        assert_eq!(d("-1h0m0s"), None);
    }

    #[test]
    fn bad_durations_are_errors() {
        for bad in [
            "",
            "-",
            "h",
            "5",
            "5x",
            "1.2.3s",
            "1h-2m",
            "s5",
            ".s",
            "99999999999999999999999h",
            "1 h",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn streams_parse_with_null_lists() {
        let body =
            br#"{"deleted":null,"new":[{"duration":"59m59.243961497s","id":1,"origin":"cscli",
            "scenario":"test","scope":"Ip","type":"ban","value":"198.51.100.7","extra":1}]}"#;
        let stream = Stream::parse(body).unwrap();
        assert_eq!(stream.deleted, None);
        let new = stream.new.unwrap();
        assert_eq!(new[0].value, "198.51.100.7");
        assert_eq!(new[0].kind, "ban");
        assert_eq!(scope_of(&new[0]), Some(Scope::Ip));
        assert_eq!(Stream::parse(b"{}").unwrap(), Stream::default());
        assert_eq!(
            Stream::parse(br#"{"new":null,"deleted":null}"#).unwrap(),
            Stream::default()
        );
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"<html>",
            br#"{"new":{}}"#,
            br#"{"new":[{"id":1}]}"#,
            br#"{"new":[{"type":"ban","scope":"Ip","value":7}]}"#,
            b"\xff\xfe",
        ] {
            assert!(Stream::parse(body).is_err(), "{body:?} parsed");
        }
    }

    #[test]
    fn the_stream_url_carries_scopes_and_filters() {
        let section: CrowdsecSection = toml::from_str(
            "lapi_url = \"http://127.0.0.1:8080\"\nbouncer_api_key = \"k\"\n\
             origins = [\"cscli\", \"crowdsec\"]\nscenarios_not_containing = [\"http\"]",
        )
        .unwrap();
        let lapi = Lapi::new(Http::new().unwrap(), &section, "k").unwrap();
        assert_eq!(
            lapi.stream_url.as_str(),
            "http://127.0.0.1:8080/v1/decisions/stream?scopes=ip%2Crange&origins=cscli%2Ccrowdsec\
             &scenarios_not_containing=http"
        );
    }
}
