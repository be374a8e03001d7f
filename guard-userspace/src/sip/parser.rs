//! RFC 3261 message parsing, as much as sipguard needs: the start line and
//! the headers Via, From, To, Call-ID, CSeq, Authorization/Proxy-Authorization,
//! WWW-/Proxy-Authenticate, User-Agent, Contact, Expires and Content-Length.
//!
//! Zero-copy over the captured bytes, lenient where RFC 3261 is (compact
//! forms, case-insensitive names, repeated headers, folded lines, odd
//! whitespace, CRLF or bare LF), and strict about everything it relies on.
//! Hostile input gives an error, never a panic.
use std::fmt;

/// Headers beyond this make a message malformed (a flood of headers is an attack).
pub const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Nothing but keep-alive line breaks.
    Empty,
    NotUtf8,
    BadStartLine,
    BadHeader,
    TooManyHeaders,
    /// The header section does not end within the bytes we have.
    Truncated,
    BadCSeq,
    BadContentLength,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ParseError::Empty => "empty (keep-alive)",
            ParseError::NotUtf8 => "not UTF-8",
            ParseError::BadStartLine => "bad start line",
            ParseError::BadHeader => "bad header line",
            ParseError::TooManyHeaders => "too many headers",
            ParseError::Truncated => "header section cut short",
            ParseError::BadCSeq => "bad CSeq",
            ParseError::BadContentLength => "bad Content-Length",
        };
        f.write_str(text)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: &'a str, uri: &'a str },
    Response { code: u16, reason: &'a str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub number: u32,
    pub method: &'a str,
}

/// Digest credentials from Authorization or Proxy-Authorization.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub scheme: &'a str,
    pub username: Option<&'a str>,
    pub realm: Option<&'a str>,
    pub nonce: Option<&'a str>,
}

/// A digest challenge from WWW-Authenticate or Proxy-Authenticate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenge<'a> {
    pub nonce: Option<&'a str>,
    pub stale: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub start: StartLine<'a>,
    pub via: Vec<&'a str>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub call_id: Option<&'a str>,
    pub cseq: Option<CSeq<'a>>,
    /// Authorization or Proxy-Authorization (the first one).
    pub credentials: Option<Credentials<'a>>,
    /// WWW-Authenticate or Proxy-Authenticate (the first one).
    pub challenge: Option<Challenge<'a>>,
    pub user_agent: Option<&'a str>,
    pub contact: Vec<&'a str>,
    pub expires: Option<u32>,
    pub content_length: Option<usize>,
}

impl<'a> Message<'a> {
    pub fn method(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The registration lifetime a 2xx to REGISTER grants: the smallest
    /// Contact `expires` parameter, else the Expires header.
    pub fn registration_expiry(&self) -> Option<u32> {
        let from_contacts = self
            .contact
            .iter()
            .flat_map(|c| split_outside_quotes(c, b','))
            .filter_map(|c| header_param(c, "expires"))
            .filter_map(|v| v.trim().parse::<u32>().ok())
            .min();
        from_contacts.or(self.expires)
    }
}

/// The user part of a From/To/Contact value: `"A" <sip:alice@x>;tag=1` -> `alice`.
pub fn uri_user(value: &str) -> Option<&str> {
    let value = value.trim();
    // A quoted display name may itself contain '<' and '>'.
    let value = match value.strip_prefix('"') {
        Some(rest) => &rest[rest.find('"')? + 1..],
        None => value,
    };
    let uri = match (value.find('<'), value.find('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value.split(';').next().unwrap_or(value).trim(),
    };
    let rest = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"))
        .or_else(|| uri.strip_prefix("tel:"))?;
    let user = match rest.find('@') {
        Some(at) => &rest[..at],
        None if uri.starts_with("tel:") => rest,
        None => return None,
    };
    let user = user.split(':').next().unwrap_or(user);
    (!user.is_empty()).then_some(user)
}

/// Parses one message at the start of `bytes`. Returns it and how many bytes
/// it spans (header section plus Content-Length body, clipped to `bytes`).
/// With `complete == false` (a capture cut short) a missing end of the header
/// section is tolerated: the last, partial line is ignored.
pub fn parse(bytes: &[u8], complete: bool) -> Result<(Message<'_>, usize), ParseError> {
    let skipped = bytes
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let bytes = &bytes[skipped..];
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    let (head_len, body_start) = match find_header_end(bytes) {
        Some(found) => found,
        None if !complete => {
            // Keep only whole lines.
            let last_newline = bytes
                .iter()
                .rposition(|b| *b == b'\n')
                .ok_or(ParseError::Truncated)?;
            (last_newline + 1, bytes.len())
        }
        None => return Err(ParseError::Truncated),
    };
    let head = std::str::from_utf8(&bytes[..head_len]).map_err(|_| ParseError::NotUtf8)?;
    if head.contains('\0') {
        return Err(ParseError::BadHeader);
    }
    let first_line = head.split('\n').next().unwrap_or("").trim_end_matches('\r');
    let start = parse_start_line(first_line)?;
    let mut message = Message {
        start,
        via: Vec::new(),
        from: None,
        to: None,
        call_id: None,
        cseq: None,
        credentials: None,
        challenge: None,
        user_agent: None,
        contact: Vec::new(),
        expires: None,
        content_length: None,
    };
    let mut count = 0;
    for header in headers(head) {
        let (name, value) = header?;
        count += 1;
        if count > MAX_HEADERS {
            return Err(ParseError::TooManyHeaders);
        }
        apply_header(&mut message, name, value)?;
    }
    let body_len = message.content_length.unwrap_or(bytes.len() - body_start);
    let end = body_start.saturating_add(body_len).min(bytes.len());
    Ok((message, skipped + end))
}

/// Every message in a TCP segment (messages framed by Content-Length).
/// Stops at the first error, which is returned last. With `complete ==
/// false` (a capture cut short) the last message may lack its end.
pub fn parse_stream(bytes: &[u8], complete: bool) -> Vec<Result<Message<'_>, ParseError>> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        let parsed = match parse(rest, true) {
            Err(ParseError::Truncated) if !complete => parse(rest, false),
            parsed => parsed,
        };
        match parsed {
            Ok((message, used)) => {
                out.push(Ok(message));
                offset += used.max(1);
            }
            Err(ParseError::Empty) => break,
            Err(e) => {
                out.push(Err(e));
                break;
            }
        }
    }
    out
}

/// (length of the header section incl. the blank line, start of the body).
fn find_header_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            let rest = &bytes[i + 1..];
            if rest.first() == Some(&b'\n') {
                return Some((i + 1, i + 2));
            }
            if rest.starts_with(b"\r\n") {
                return Some((i + 1, i + 3));
            }
        }
        i += 1;
    }
    None
}

fn parse_start_line(line: &str) -> Result<StartLine<'_>, ParseError> {
    let mut parts = line.split(' ').filter(|p| !p.is_empty());
    let first = parts.next().ok_or(ParseError::BadStartLine)?;
    if let Some(version) = first.strip_prefix("SIP/") {
        if version != "2.0" {
            return Err(ParseError::BadStartLine);
        }
        let code_text = parts.next().ok_or(ParseError::BadStartLine)?;
        if code_text.len() != 3 {
            return Err(ParseError::BadStartLine);
        }
        let code: u16 = code_text.parse().map_err(|_| ParseError::BadStartLine)?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::BadStartLine);
        }
        let reason_at = line.find(code_text).map_or(line.len(), |i| i + 3);
        return Ok(StartLine::Response {
            code,
            reason: line[reason_at..].trim(),
        });
    }
    let uri = parts.next().ok_or(ParseError::BadStartLine)?;
    let version = parts.next().ok_or(ParseError::BadStartLine)?;
    if version != "SIP/2.0" || parts.next().is_some() || !is_token(first) {
        return Err(ParseError::BadStartLine);
    }
    Ok(StartLine::Request { method: first, uri })
}

fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// Header lines of `head` (after the start line), continuation lines
/// (starting with SP or HT) included in their header's value: the value is
/// one slice of the original text, its inner line breaks being whitespace to
/// every consumer.
fn headers(head: &str) -> impl Iterator<Item = Result<(&str, &str), ParseError>> {
    // (start, end) of each line, without its line break.
    let mut spans = Vec::new();
    let mut at = 0;
    for line in head.split_inclusive('\n') {
        let text = line.trim_end_matches(['\r', '\n']);
        spans.push((at, at + text.len()));
        at += line.len();
    }
    let mut i = 1; // line 0 is the start line
    std::iter::from_fn(move || {
        while i < spans.len() && spans[i].0 == spans[i].1 {
            i += 1;
        }
        let (start, end) = *spans.get(i)?;
        i += 1;
        let line = &head[start..end];
        let Some(colon) = line.find(':') else {
            return Some(Err(ParseError::BadHeader));
        };
        let name = line[..colon].trim_end();
        if !is_token(name) {
            return Some(Err(ParseError::BadHeader));
        }
        let mut value_end = end;
        while let Some(&(next_start, next_end)) = spans.get(i) {
            match head.as_bytes().get(next_start) {
                Some(b' ') | Some(b'\t') => {
                    value_end = next_end;
                    i += 1;
                }
                _ => break,
            }
        }
        Some(Ok((name, head[start + colon + 1..value_end].trim())))
    })
}

fn apply_header<'a>(m: &mut Message<'a>, name: &'a str, value: &'a str) -> Result<(), ParseError> {
    let is = |long: &str, short: Option<&str>| {
        name.eq_ignore_ascii_case(long) || short.is_some_and(|s| name.eq_ignore_ascii_case(s))
    };
    if is("Via", Some("v")) {
        m.via.push(value);
    } else if is("From", Some("f")) {
        m.from.get_or_insert(value);
    } else if is("To", Some("t")) {
        m.to.get_or_insert(value);
    } else if is("Call-ID", Some("i")) {
        if value.is_empty() {
            return Err(ParseError::BadHeader);
        }
        m.call_id.get_or_insert(value);
    } else if is("CSeq", None) {
        let mut parts = value.split_whitespace();
        let number = parts
            .next()
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or(ParseError::BadCSeq)?;
        let method = parts
            .next()
            .filter(|m| is_token(m))
            .ok_or(ParseError::BadCSeq)?;
        if parts.next().is_some() {
            return Err(ParseError::BadCSeq);
        }
        m.cseq = Some(CSeq { number, method });
    } else if is("Authorization", None) || is("Proxy-Authorization", None) {
        if m.credentials.is_none() {
            m.credentials = Some(parse_credentials(value));
        }
    } else if is("WWW-Authenticate", None) || is("Proxy-Authenticate", None) {
        if m.challenge.is_none() {
            let params = auth_params(value).1;
            m.challenge = Some(Challenge {
                nonce: param(&params, "nonce"),
                stale: param(&params, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
            });
        }
    } else if is("User-Agent", None) {
        m.user_agent.get_or_insert(value);
    } else if is("Contact", Some("m")) {
        m.contact.push(value);
    } else if is("Expires", None) {
        m.expires = value.trim().parse().ok();
    } else if is("Content-Length", Some("l")) {
        let length = value
            .trim()
            .parse::<usize>()
            .map_err(|_| ParseError::BadContentLength)?;
        m.content_length = Some(length);
    }
    Ok(())
}

fn parse_credentials(value: &str) -> Credentials<'_> {
    let (scheme, params) = auth_params(value);
    Credentials {
        scheme,
        username: param(&params, "username"),
        realm: param(&params, "realm"),
        nonce: param(&params, "nonce"),
    }
}

/// `Digest a="x", b=y` -> ("Digest", [(a, x), (b, y)]).
fn auth_params(value: &str) -> (&str, Vec<(&str, &str)>) {
    let value = value.trim();
    let (scheme, rest) = match value.find(|c: char| c.is_whitespace()) {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, ""),
    };
    let params = split_outside_quotes(rest, b',')
        .filter_map(|item| {
            let (key, val) = item.split_once('=')?;
            let val = val.trim();
            let val = val
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(val);
            Some((key.trim(), val))
        })
        .collect();
    (scheme, params)
}

fn param<'a>(params: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
}

/// A `;name=value` parameter of a header value (outside its <...> URI).
fn header_param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let after_uri = match value.find('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    after_uri.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// Splits on `sep` where it is not inside double quotes.
fn split_outside_quotes(text: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, b) in text.bytes().enumerate() {
        if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            items.push(&text[start..i]);
            start = i + 1;
        }
    }
    items.push(&text[start..]);
    items.into_iter().filter(|item| !item.trim().is_empty())
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
