//! RFC 3261 message reading, as much as sipguard needs: the start line and
//! the headers Via, From, To, Call-ID, CSeq, Authorization/Proxy-Authorization,
//! WWW-/Proxy-Authenticate, User-Agent, Contact, Expires and Content-Length.
//!
//! # Bytes, not text
//! The reader works on the captured bytes. A PBX accepts bytes that are not
//! UTF-8 (or are NUL) in headers it does not interpret, so the reader must
//! too: a message is never rejected for bytes in a header it does not need,
//! nor for a header line it cannot read (that line alone is skipped), nor for
//! the number of its headers (it reads on to the end of the header section,
//! within the capture). The fields it needs are compared as bytes.
//! Usernames are decoded (RFC 3261 `%HH` escapes in URIs, `\x` in quoted
//! strings) so that two spellings of one name compare equal; they are shown
//! lossily, for display only ([`display`]).
//!
//! Lenient where the PBXs are: compact forms, names in any case, spaces or
//! tabs (any number) around the colon and between tokens, folded lines
//! (a line starting with SP or HT continues the previous one; Call-ID is
//! compared with all whitespace removed, so a folded Call-ID still matches),
//! CRLF, bare LF or a mix.
//!
//! # Duplicate headers
//! The PBXs disagree about repeated single-instance headers:
//! - Asterisk (PJSIP, `sip_parser.c`): each Call-ID, CSeq, From and To
//!   header overwrites `rdata->msg_info`, so the **last** one wins, and the
//!   answer is built from it.
//! - FreeSWITCH (Sofia-SIP) keeps the **first**: extra instances of a
//!   single-instance header go to its list of erroneous headers.
//! - Kamailio (`parse_headers` in `msg_parser.c`) refuses a message with a
//!   second Call-ID or CSeq ("duplicate CSeq header field") and answers
//!   nothing (the end-to-end tests show it).
//!
//! So the reader keeps both the first and the last Call-ID and CSeq, and the
//! tracker matches an answer against either. Authorization and
//! Proxy-Authorization may repeat legitimately (one per realm): PJSIP in
//! Asterisk tries every one, Kamailio and Sofia pick the one for their realm.
//! The reader keeps them all (up to [`MAX_CREDENTIALS`]): a request carries
//! credentials if any header does, and any of their nonces may prove it.
//!
//! Hostile input gives an error or a partial message, never a panic.
use std::{borrow::Cow, fmt};

/// Credentials and challenges kept per message; more are ignored (a PBX
/// checks one per realm, and a message has a handful of realms at most).
pub const MAX_CREDENTIALS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Nothing but keep-alive line breaks.
    Empty,
    BadStartLine,
    /// The header section does not end within the bytes we have.
    Truncated,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ParseError::Empty => "empty (keep-alive)",
            ParseError::BadStartLine => "bad start line",
            ParseError::Truncated => "header section cut short",
        };
        f.write_str(text)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: &'a [u8], uri: &'a [u8] },
    Response { code: u16, reason: &'a [u8] },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub number: u32,
    pub method: &'a [u8],
}

/// Digest credentials from Authorization or Proxy-Authorization.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub scheme: &'a [u8],
    pub username: Option<Cow<'a, [u8]>>,
    pub realm: Option<Cow<'a, [u8]>>,
    pub nonce: Option<Cow<'a, [u8]>>,
}

/// A digest challenge from WWW-Authenticate or Proxy-Authenticate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Challenge<'a> {
    pub nonce: Option<Cow<'a, [u8]>>,
    pub stale: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub start: StartLine<'a>,
    pub via: Vec<&'a [u8]>,
    pub from: Option<&'a [u8]>,
    pub to: Option<&'a [u8]>,
    /// The first Call-ID, whitespace removed (Kamailio, FreeSWITCH)...
    pub call_id: Option<Cow<'a, [u8]>>,
    /// ...and the last, when there are several (Asterisk).
    pub call_id_last: Option<Cow<'a, [u8]>>,
    /// The first CSeq, and the last when there are several.
    pub cseq: Option<CSeq<'a>>,
    pub cseq_last: Option<CSeq<'a>>,
    /// Every Authorization or Proxy-Authorization, in order.
    pub credentials: Vec<Credentials<'a>>,
    /// Every WWW-Authenticate or Proxy-Authenticate, in order.
    pub challenges: Vec<Challenge<'a>>,
    pub user_agent: Option<&'a [u8]>,
    pub contact: Vec<&'a [u8]>,
    pub expires: Option<u32>,
    pub content_length: Option<usize>,
    /// False when the capture ended inside the header section: headers
    /// after the cut (credentials among them) are unknown.
    pub complete: bool,
}

impl<'a> Message<'a> {
    fn new(start: StartLine<'a>, complete: bool) -> Message<'a> {
        Message {
            start,
            via: Vec::new(),
            from: None,
            to: None,
            call_id: None,
            call_id_last: None,
            cseq: None,
            cseq_last: None,
            credentials: Vec::new(),
            challenges: Vec::new(),
            user_agent: None,
            contact: Vec::new(),
            expires: None,
            content_length: None,
            complete,
        }
    }

    pub fn method(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// Whether this is a request of `method` (any case: PBXs accept it).
    pub fn is_method(&self, method: &str) -> bool {
        self.method()
            .is_some_and(|m| m.eq_ignore_ascii_case(method.as_bytes()))
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// Every (Call-ID, CSeq) this message may be known by: first and last
    /// of each, without repeats (one pair for a well-formed message).
    pub fn transaction_ids(&self) -> Vec<(&[u8], CSeq<'a>)> {
        let mut ids = Vec::with_capacity(4);
        for call_id in [&self.call_id, &self.call_id_last].into_iter().flatten() {
            for cseq in [self.cseq, self.cseq_last].into_iter().flatten() {
                let id = (call_id.as_ref(), cseq);
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// Whether any challenge says the nonce was stale (not a wrong password).
    pub fn stale(&self) -> bool {
        self.challenges.iter().any(|c| c.stale)
    }

    /// The registration lifetime a 2xx to REGISTER grants: the smallest
    /// Contact `expires` parameter, else the Expires header.
    pub fn registration_expiry(&self) -> Option<u32> {
        let from_contacts = self
            .contact
            .iter()
            .flat_map(|c| split_outside_quotes(c, b','))
            .filter_map(|c| header_param(c, b"expires"))
            .filter_map(parse_u32)
            .min();
        from_contacts.or(self.expires)
    }
}

/// The user part of a From/To/Contact value, `%HH` escapes decoded:
/// `"A" <sip:%61lice@x>;tag=1` -> `alice`.
pub fn uri_user(value: &[u8]) -> Option<Cow<'_, [u8]>> {
    let value = trim(value);
    // A quoted display name may itself contain '<' and '>'.
    let value = match value.strip_prefix(b"\"") {
        Some(rest) => {
            let close = closing_quote(rest)?;
            &rest[close + 1..]
        }
        None => value,
    };
    let uri = match (find(value, b'<'), find(value, b'>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => trim(value.split(|b| *b == b';').next().unwrap_or(value)),
    };
    let uri = trim(uri);
    let scheme_end = find(uri, b':')?;
    let scheme = &uri[..scheme_end];
    let rest = &uri[scheme_end + 1..];
    let is_tel = scheme.eq_ignore_ascii_case(b"tel");
    if !(is_tel || scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips")) {
        return None;
    }
    let user = match find(rest, b'@') {
        Some(at) => &rest[..at],
        None if is_tel => rest.split(|b| *b == b';').next().unwrap_or(rest),
        None => return None,
    };
    // `user:password@host`
    let user = user.split(|b| *b == b':').next().unwrap_or(user);
    (!user.is_empty()).then(|| percent_decode(user))
}

/// A username for logs: lossy UTF-8, control characters escaped.
pub fn display(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Parses one message at the start of `bytes`. Returns it and how many bytes
/// it spans (header section plus Content-Length body, clipped to `bytes`).
/// With `complete == false` (a capture cut short) a missing end of the header
/// section is tolerated: the last, partial line is ignored and the message
/// says it is incomplete.
pub fn parse(bytes: &[u8], complete: bool) -> Result<(Message<'_>, usize), ParseError> {
    let skipped = bytes
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let bytes = &bytes[skipped..];
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    let (head_len, body_start, head_complete) = match find_header_end(bytes) {
        Some((head, body)) => (head, body, true),
        None if !complete => {
            // Keep only whole lines.
            let last_newline = bytes
                .iter()
                .rposition(|b| *b == b'\n')
                .ok_or(ParseError::Truncated)?;
            (last_newline + 1, bytes.len(), false)
        }
        None => return Err(ParseError::Truncated),
    };
    let head = &bytes[..head_len];
    let first_end = find(head, b'\n').unwrap_or(head.len());
    let start = parse_start_line(trim_line_end(&head[..first_end]))?;
    let mut message = Message::new(start, head_complete);
    for (name, value) in headers(&head[(first_end + 1).min(head.len())..]) {
        apply_header(&mut message, name, value);
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
    while let Some(at) = find(&bytes[i..], b'\n') {
        let newline = i + at;
        let rest = &bytes[newline + 1..];
        if rest.first() == Some(&b'\n') {
            return Some((newline + 1, newline + 2));
        }
        if rest.starts_with(b"\r\n") {
            return Some((newline + 1, newline + 3));
        }
        i = newline + 1;
    }
    None
}

fn parse_start_line(line: &[u8]) -> Result<StartLine<'_>, ParseError> {
    let mut parts = line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|p| !p.is_empty());
    let first = parts.next().ok_or(ParseError::BadStartLine)?;
    if first.len() > 4 && first[..4].eq_ignore_ascii_case(b"SIP/") {
        if &first[4..] != b"2.0" {
            return Err(ParseError::BadStartLine);
        }
        let code_text = parts.next().ok_or(ParseError::BadStartLine)?;
        let code = (code_text.len() == 3)
            .then(|| parse_u32(code_text))
            .flatten()
            .filter(|code| (100..=699).contains(code))
            .ok_or(ParseError::BadStartLine)? as u16;
        let code_at = code_text.as_ptr() as usize - line.as_ptr() as usize;
        return Ok(StartLine::Response {
            code,
            reason: trim(&line[code_at + 3..]),
        });
    }
    // METHOD URI SIP/2.0; the URI is everything between (some PBXs accept
    // stray spaces in it).
    let last = line
        .rsplit(|b| *b == b' ' || *b == b'\t')
        .find(|p| !p.is_empty())
        .ok_or(ParseError::BadStartLine)?;
    if !last.eq_ignore_ascii_case(b"SIP/2.0") || !is_token(first) || std::ptr::eq(first, last) {
        return Err(ParseError::BadStartLine);
    }
    let uri_start = first.as_ptr() as usize - line.as_ptr() as usize + first.len();
    let uri_end = last.as_ptr() as usize - line.as_ptr() as usize;
    let uri = trim(&line[uri_start..uri_end]);
    if uri.is_empty() {
        return Err(ParseError::BadStartLine);
    }
    Ok(StartLine::Request { method: first, uri })
}

fn is_token(text: &[u8]) -> bool {
    !text.is_empty()
        && text
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(b))
}

/// Header lines of the header section `head` (after the start line), each
/// with its continuation lines (starting with SP or HT): the value is one
/// slice of the original bytes, its inner line breaks being whitespace to
/// every consumer. A line without a colon or with a name that is not a
/// token is skipped: a PBX ignores or refuses it, and either way the rest
/// of the message still matters.
fn headers(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || loop {
        if at >= head.len() {
            return None;
        }
        let start = at;
        let mut end = line_end(head, start);
        at = next_line(head, end);
        // Continuation lines.
        while at < head.len() && matches!(head[at], b' ' | b'\t') {
            end = line_end(head, at);
            at = next_line(head, end);
        }
        let line = &head[start..end];
        if trim(line).is_empty() {
            continue;
        }
        let Some(colon) = find(line, b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        if !is_token(name) {
            continue;
        }
        return Some((name, trim(&line[colon + 1..])));
    })
}

/// End of the line starting at `start`, without its line break.
fn line_end(bytes: &[u8], start: usize) -> usize {
    let newline = find(&bytes[start..], b'\n').map_or(bytes.len(), |i| start + i);
    if newline > start && bytes[newline - 1] == b'\r' {
        newline - 1
    } else {
        newline
    }
}

/// Start of the line after the one ending (before its break) at `end`.
fn next_line(bytes: &[u8], end: usize) -> usize {
    match find(&bytes[end..], b'\n') {
        Some(i) => end + i + 1,
        None => bytes.len(),
    }
}

fn apply_header<'a>(m: &mut Message<'a>, name: &'a [u8], value: &'a [u8]) {
    let is = |long: &[u8], short: Option<&[u8]>| {
        name.eq_ignore_ascii_case(long) || short.is_some_and(|s| name.eq_ignore_ascii_case(s))
    };
    if is(b"Via", Some(b"v")) {
        m.via.push(value);
    } else if is(b"From", Some(b"f")) {
        m.from.get_or_insert(value);
    } else if is(b"To", Some(b"t")) {
        m.to.get_or_insert(value);
    } else if is(b"Call-ID", Some(b"i")) {
        let id = without_whitespace(value);
        if !id.is_empty() {
            keep_first_and_last(&mut m.call_id, &mut m.call_id_last, id);
        }
    } else if is(b"CSeq", None) {
        if let Some(cseq) = parse_cseq(value) {
            keep_first_and_last(&mut m.cseq, &mut m.cseq_last, cseq);
        }
    } else if is(b"Authorization", None) || is(b"Proxy-Authorization", None) {
        if m.credentials.len() < MAX_CREDENTIALS {
            m.credentials.push(parse_credentials(value));
        }
    } else if is(b"WWW-Authenticate", None) || is(b"Proxy-Authenticate", None) {
        if m.challenges.len() < MAX_CREDENTIALS {
            let params = auth_params(value).1;
            m.challenges.push(Challenge {
                nonce: param(&params, b"nonce"),
                stale: param(&params, b"stale").is_some_and(|s| s.eq_ignore_ascii_case(b"true")),
            });
        }
    } else if is(b"User-Agent", None) {
        m.user_agent.get_or_insert(value);
    } else if is(b"Contact", Some(b"m")) {
        m.contact.push(value);
    } else if is(b"Expires", None) {
        m.expires = parse_u32(value);
    } else if is(b"Content-Length", Some(b"l")) {
        // The first one frames the message (Kamailio); a bad one is
        // ignored: the segment's end frames it instead.
        if m.content_length.is_none() {
            m.content_length = parse_u32(value).map(|n| n as usize);
        }
    }
}

fn keep_first_and_last<T: PartialEq>(first: &mut Option<T>, last: &mut Option<T>, value: T) {
    if first.is_none() {
        *first = Some(value);
    } else if first.as_ref() != Some(&value) {
        *last = Some(value);
    } else {
        *last = None;
    }
}

/// `CSeq: 1 REGISTER`, any whitespace (folds included) around the parts.
fn parse_cseq(value: &[u8]) -> Option<CSeq<'_>> {
    let mut parts = value
        .split(|b| b.is_ascii_whitespace())
        .filter(|p| !p.is_empty());
    let number = parse_u32(parts.next()?)?;
    let method = parts.next().filter(|m| is_token(m))?;
    Some(CSeq { number, method })
}

fn parse_credentials(value: &[u8]) -> Credentials<'_> {
    let (scheme, params) = auth_params(value);
    Credentials {
        scheme,
        username: param(&params, b"username"),
        realm: param(&params, b"realm"),
        nonce: param(&params, b"nonce"),
    }
}

/// A `name=value` pair of an auth header, both trimmed, the value raw.
type Param<'a> = (&'a [u8], &'a [u8]);

/// `Digest a="x", b=y` -> ("Digest", [(a, x), (b, y)]), in any order,
/// quoted or not, any whitespace around `=` and `,`.
fn auth_params(value: &[u8]) -> (&[u8], Vec<Param<'_>>) {
    let value = trim(value);
    let (scheme, rest) = match value.iter().position(|b| b.is_ascii_whitespace()) {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, &value[value.len()..]),
    };
    let params = split_outside_quotes(rest, b',')
        .filter_map(|item| {
            let eq = find(item, b'=')?;
            Some((trim(&item[..eq]), trim(&item[eq + 1..])))
        })
        .collect();
    (scheme, params)
}

/// The value of parameter `name`, unquoted (`\x` escapes resolved).
fn param<'a>(params: &[Param<'a>], name: &[u8]) -> Option<Cow<'a, [u8]>> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| unquote(v))
}

fn unquote(value: &[u8]) -> Cow<'_, [u8]> {
    let Some(inner) = value.strip_prefix(b"\"") else {
        return Cow::Borrowed(value);
    };
    let inner = inner.strip_suffix(b"\"").unwrap_or(inner);
    if !inner.contains(&b'\\') {
        return Cow::Borrowed(inner);
    }
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            if let Some(&escaped) = bytes.next() {
                out.push(escaped);
            }
        } else {
            out.push(b);
        }
    }
    Cow::Owned(out)
}

/// RFC 3261 `escaped` (`%HH`) decoding; a malformed escape stays as it is.
fn percent_decode(text: &[u8]) -> Cow<'_, [u8]> {
    if !text.contains(&b'%') {
        return Cow::Borrowed(text);
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let decoded = (text[i] == b'%')
            .then(|| Some(hex(*text.get(i + 1)?)? << 4 | hex(*text.get(i + 2)?)?))
            .flatten();
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(text[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// A `;name=value` parameter of a header value (outside its <...> URI).
fn header_param<'a>(value: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let after_uri = match find(value, b'>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    after_uri.split(|b| *b == b';').skip(1).find_map(|p| {
        let eq = find(p, b'=')?;
        trim(&p[..eq])
            .eq_ignore_ascii_case(name)
            .then(|| trim(&p[eq + 1..]))
    })
}

/// Splits on `sep` where it is not inside double quotes (`\"` escaped).
fn split_outside_quotes(text: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in text.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            items.push(&text[start..i]);
            start = i + 1;
        }
    }
    items.push(&text[start..]);
    items.into_iter().filter(|item| !trim(item).is_empty())
}

/// Index of the quote closing a quoted string whose opening quote is just
/// before `text`.
fn closing_quote(text: &[u8]) -> Option<usize> {
    let mut escaped = false;
    for (i, &b) in text.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            return Some(i);
        }
    }
    None
}

fn parse_u32(text: &[u8]) -> Option<u32> {
    let text = trim(text);
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    text.iter().try_fold(0u32, |n, d| {
        n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

fn without_whitespace(value: &[u8]) -> Cow<'_, [u8]> {
    if value.iter().any(u8::is_ascii_whitespace) {
        Cow::Owned(
            value
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect(),
        )
    } else {
        Cow::Borrowed(value)
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn find(bytes: &[u8], needle: u8) -> Option<usize> {
    bytes.iter().position(|b| *b == needle)
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
