//! A guard's metrics endpoint, read from inside the namespace it listens in.
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{anyhow, Context, Result};

use crate::netns::NetNs;

/// The endpoint's address unless a config says otherwise (`metrics.address`).
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9477";

/// One `GET /metrics` to `address` from inside `ns`: the whole answer, head
/// and body. A read that stalls for 5 s is an error, so that a hung
/// endpoint fails the test instead of hanging it.
pub fn scrape(ns: &NetNs, address: &str) -> Result<String> {
    let address = address.to_string();
    ns.run_in(move || -> Result<String> {
        let mut stream =
            TcpStream::connect(&address).with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        // The endpoint closes after one answer: read to the end.
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .with_context(|| format!("reading the answer of {address}"))?;
        Ok(answer)
    })
    .join()
    .map_err(|_| anyhow!("the scrape thread panicked"))??
}

/// The value of `series` in a scrape: the series as printed, labels
/// included (`sipguard_attached`,
/// `sipguard_hep_packets_total{result="accepted"}`).
pub fn value(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_found_by_its_whole_name() {
        let text = "HTTP/1.1 200 OK\r\n\r\nsipguard_attached_total 7\nsipguard_attached 1\n\
                    sipguard_hep_packets_total{result=\"accepted\"} 24\n# EOF\n";
        assert_eq!(value(text, "sipguard_attached"), Some(1));
        assert_eq!(
            value(text, "sipguard_hep_packets_total{result=\"accepted\"}"),
            Some(24)
        );
        assert_eq!(value(text, "sipguard_hep_packets_total"), None);
        assert_eq!(value(text, "sipguard_missing"), None);
    }
}
