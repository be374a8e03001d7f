//! Blocklist entries as text: one address or network per line, `#` and `;`
//! starting a comment (VoIPBL, FireHOL netsets, Spamhaus DROP's
//! `1.2.3.0/24 ; SBL123`), anything after the first word ignored.
//!
//! A bad line is counted and skipped. An answer that is mostly bad lines
//! (an HTML error page, a captive portal, a truncated download) is no list
//! at all: the caller keeps the last good one.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Networks shorter than these are refused: one line of a feed must never
/// drop a sixteenth of the Internet.
const MIN_V4_PREFIX: u8 = 8;
const MIN_V6_PREFIX: u8 = 19;

/// What a feed may carry, and how much of it is taken.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: usize,
    /// Keep entries over private and special-use networks.
    pub include_private: bool,
}

/// The entries of a list, and what was left out.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Parsed {
    /// Unique networks, host bits cleared.
    pub nets: BTreeSet<IpNet>,
    /// Lines that are no address or network.
    pub invalid: u64,
    /// The first bad line (1-based) and its start, for the log.
    pub first_invalid: Option<(usize, String)>,
    /// Entries over private or special-use networks, left out.
    pub private: u64,
    /// Networks broader than /8 (IPv4) or /19 (IPv6), left out.
    pub too_broad: u64,
    /// Entries beyond `max_entries`, left out.
    pub over_limit: u64,
}

/// Why an answer is no list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("an HTML page, not a list: {0:?}")]
    Html(String),
    #[error("no entries (an empty answer)")]
    Empty,
    #[error("mostly not addresses ({invalid} bad lines, {valid} good; line {line}: {example:?})")]
    MostlyInvalid {
        valid: u64,
        invalid: u64,
        line: usize,
        example: String,
    },
}

impl Parsed {
    /// Adds one entry as the feed gave it; false if it is no address.
    pub fn add(&mut self, word: &str, limits: &Limits) -> bool {
        let Some(net) = parse_entry(word) else {
            return false;
        };
        if is_too_broad(&net) {
            self.too_broad += 1;
        } else if !limits.include_private && is_special(&net) {
            self.private += 1;
        } else if self.nets.len() >= limits.max_entries {
            if !self.nets.contains(&net) {
                self.over_limit += 1;
            }
        } else {
            self.nets.insert(net);
        }
        true
    }

    fn note_invalid(&mut self, line: usize, text: &str) {
        self.invalid += 1;
        if self.first_invalid.is_none() {
            let shown: String = text.chars().take(60).collect();
            self.first_invalid = Some((line, shown));
        }
    }

    /// Entries that were addresses, taken or not.
    pub fn valid(&self) -> u64 {
        self.nets.len() as u64 + self.private + self.too_broad + self.over_limit
    }

    /// Refuses what is no list: more bad lines than good ones, or (unless
    /// `allow_empty`) nothing at all.
    pub fn check(self, allow_empty: bool) -> Result<Parsed, ListError> {
        let valid = self.valid();
        if self.invalid > valid {
            let (line, example) = self.first_invalid.clone().unwrap_or_default();
            return Err(ListError::MostlyInvalid {
                valid,
                invalid: self.invalid,
                line,
                example,
            });
        }
        if valid == 0 && !allow_empty {
            return Err(ListError::Empty);
        }
        Ok(self)
    }
}

/// Parses a list's text. Not UTF-8 lines count as bad lines.
pub fn parse_list(body: &[u8], limits: &Limits) -> Result<Parsed, ListError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<') {
        return Err(ListError::Html(crate::fleet::http::excerpt(body)));
    }
    let mut parsed = Parsed::default();
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(raw) else {
            parsed.note_invalid(i + 1, &String::from_utf8_lossy(raw));
            continue;
        };
        let content = line.split(['#', ';']).next().unwrap_or_default().trim();
        let Some(word) = content.split_whitespace().next() else {
            continue;
        };
        if !parsed.add(word, limits) {
            parsed.note_invalid(i + 1, line.trim());
        }
    }
    Ok(parsed)
}

/// One address (a /32 or /128) or network, host bits cleared; an
/// IPv4-mapped IPv6 address is the IPv4 address.
pub fn parse_entry(word: &str) -> Option<IpNet> {
    if let Ok(ip) = word.parse::<IpAddr>() {
        return Some(IpNet::from(ip.to_canonical()));
    }
    let net = word.parse::<IpNet>().ok()?.trunc();
    match net {
        IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
            Some(v4) if v6.prefix_len() >= 96 => {
                Ipv4Net::new(v4, v6.prefix_len() - 96).ok().map(IpNet::V4)
            }
            _ => Some(net),
        },
        IpNet::V4(_) => Some(net),
    }
}

/// Whether `net` is broader than a feed may list.
pub fn is_too_broad(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => n.prefix_len() < MIN_V4_PREFIX,
        IpNet::V6(n) => n.prefix_len() < MIN_V6_PREFIX,
    }
}

/// Whether `net` overlaps a network that is no public source: this host,
/// private and shared (CGNAT) space, link-local, multicast, reserved.
pub fn is_special(net: &IpNet) -> bool {
    static SPECIAL: std::sync::OnceLock<Vec<IpNet>> = std::sync::OnceLock::new();
    SPECIAL
        .get_or_init(special_networks)
        .iter()
        .any(|s| s.contains(net) || net.contains(s))
}

fn special_networks() -> Vec<IpNet> {
    let v4 = |a, b, c, d, len| Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len).map(IpNet::V4);
    let v6 = |addr: Ipv6Addr, len| Ipv6Net::new(addr, len).map(IpNet::V6);
    [
        v4(0, 0, 0, 0, 8),
        v4(10, 0, 0, 0, 8),
        v4(100, 64, 0, 0, 10),
        v4(127, 0, 0, 0, 8),
        v4(169, 254, 0, 0, 16),
        v4(172, 16, 0, 0, 12),
        v4(192, 168, 0, 0, 16),
        v4(224, 0, 0, 0, 3),
        v6(Ipv6Addr::UNSPECIFIED, 127),
        v6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
        v6(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
        v6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
        v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
        v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
    ]
    .into_iter()
    // Constant networks: every one is valid.
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_entries: 1000,
        include_private: false,
    };

    fn nets(parsed: &Parsed) -> Vec<String> {
        parsed.nets.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn voipbl_firehol_and_spamhaus_shapes_parse() {
        let voipbl = b"# VoIPBL blacklist\n# generated 2026-11-30\n198.51.100.7\n203.0.113.0/24\n\
                       198.51.100.7\n2001:db8:5::/48\n\n";
        let p = parse_list(voipbl, &LIMITS).unwrap().check(false).unwrap();
        assert_eq!(
            nets(&p),
            ["198.51.100.7/32", "203.0.113.0/24", "2001:db8:5::/48"]
        );
        assert_eq!(p.invalid, 0);

        let firehol = b"#\n# firehol_level1\n#\n0.0.0.0/8\n10.0.0.0/8\n192.0.2.0/24\n\
                        224.0.0.0/3\n100.64.0.0/10\n185.0.0.0/16\n";
        let p = parse_list(firehol, &LIMITS).unwrap().check(false).unwrap();
        // The bogons would drop the PBX's own LAN: skipped and counted.
        assert_eq!(nets(&p), ["185.0.0.0/16", "192.0.2.0/24"]);
        assert_eq!((p.private, p.too_broad), (3, 1));

        let drop = b"; Spamhaus DROP List\r\n1.10.16.0/20 ; SBL256894\r\n\
                     1.19.0.0/16 ; SBL434604\r\n";
        let p = parse_list(drop, &LIMITS).unwrap().check(false).unwrap();
        assert_eq!(nets(&p), ["1.10.16.0/20", "1.19.0.0/16"]);
    }

    #[test]
    fn entries_are_normalized() {
        let p = parse_list(
            b"198.51.100.77/24\n::ffff:192.0.2.9\n  192.0.2.10  extra words\n",
            &LIMITS,
        )
        .unwrap();
        assert_eq!(
            nets(&p),
            ["192.0.2.9/32", "192.0.2.10/32", "198.51.100.0/24"]
        );
    }

    #[test]
    fn bad_lines_are_counted_not_fatal() {
        let text =
            b"198.51.100.1\nnot-an-ip\n198.51.100.2\n1.2.3.4-1.2.3.9\n198.51.100.3\n\xff\xfe\n";
        let p = parse_list(text, &LIMITS).unwrap().check(false).unwrap();
        assert_eq!(p.nets.len(), 3);
        assert_eq!(p.invalid, 3);
        assert_eq!(p.first_invalid, Some((2, "not-an-ip".to_string())));
    }

    #[test]
    fn garbage_is_no_list() {
        let html = b"  <!DOCTYPE html><html><body>502 Bad Gateway</body></html>";
        assert!(matches!(parse_list(html, &LIMITS), Err(ListError::Html(_))));
        let text = b"Service unavailable\nplease retry later\n198.51.100.1\n";
        let e = parse_list(text, &LIMITS).unwrap().check(false).unwrap_err();
        assert_eq!(
            e,
            ListError::MostlyInvalid {
                valid: 1,
                invalid: 2,
                line: 1,
                example: "Service unavailable".into()
            }
        );
        let empty = parse_list(b"# nothing today\n\n", &LIMITS).unwrap();
        assert_eq!(empty.clone().check(false), Err(ListError::Empty));
        assert!(empty.check(true).is_ok(), "a local file may be empty");
        assert_eq!(
            parse_list(b"", &LIMITS).unwrap().check(false),
            Err(ListError::Empty)
        );
    }

    #[test]
    fn entries_beyond_the_limit_are_counted() {
        let limits = Limits {
            max_entries: 2,
            include_private: false,
        };
        let p = parse_list(
            b"192.0.2.1\n192.0.2.2\n192.0.2.1\n192.0.2.3\n192.0.2.4\n",
            &limits,
        )
        .unwrap();
        assert_eq!(p.nets.len(), 2);
        assert_eq!(p.over_limit, 2);
    }

    #[test]
    fn private_entries_are_kept_when_asked() {
        let limits = Limits {
            max_entries: 10,
            include_private: true,
        };
        let p = parse_list(b"10.77.0.3\nfd77::5\n0.0.0.0/0\n", &limits).unwrap();
        assert_eq!(nets(&p), ["10.77.0.3/32", "fd77::5/128"]);
        assert_eq!(p.too_broad, 1, "never the whole Internet");
    }

    #[test]
    fn special_networks_overlap_both_ways() {
        let special = |t: &str| is_special(&t.parse().unwrap());
        assert!(special("192.168.1.7/32"));
        assert!(special("192.0.0.0/8"), "holds 192.168.0.0/16");
        assert!(special("fe80::1/128"));
        assert!(special("::1/128"));
        assert!(!special("192.0.2.7/32"));
        assert!(!special("2001:db8::/32"));
        assert!(!special("8.8.8.0/24"));
    }
}
