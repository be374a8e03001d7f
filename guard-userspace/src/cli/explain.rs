//! `sipguard explain IP [--user NAME] [--dial NUMBER]`.
use std::net::IpAddr;

use super::{output::Output, CliError};
use crate::{control::client::Client, runtime::explain::SipQuery};

pub fn explain(
    client: &Client,
    ip: IpAddr,
    sip: Option<SipQuery>,
    json: bool,
    out: &mut Output,
) -> Result<(), CliError> {
    let explanation = client.explain(ip, sip)?;
    if json {
        return out.json(&explanation);
    }
    out.line(format_args!("{}:", explanation.source))?;
    if let Some(peer) = &explanation.peer {
        out.line(format_args!("  {}", peer.summary()))?;
        out.line(format_args!(
            "  packets in the rate windows: {}",
            super::peers::packets(peer)
        ))?;
    }
    let rows: Vec<Vec<String>> = explanation
        .verdicts
        .into_iter()
        .chain(explanation.sip)
        .map(|r| vec![r.service, r.verdict, r.because])
        .collect();
    out.table(&["SERVICE", "VERDICT", "BECAUSE"], &rows)
}
