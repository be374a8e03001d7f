//! `sipguard explain IP`.
use std::net::IpAddr;

use super::{output::Output, CliError};
use crate::control::client::Client;

pub fn explain(client: &Client, ip: IpAddr, json: bool, out: &mut Output) -> Result<(), CliError> {
    let explanation = client.explain(ip)?;
    if json {
        return out.json(&explanation);
    }
    out.line(format_args!("{}:", explanation.source))?;
    let rows: Vec<Vec<String>> = explanation
        .verdicts
        .into_iter()
        .map(|r| vec![r.service, r.verdict, r.because])
        .collect();
    out.table(&["SERVICE", "VERDICT", "BECAUSE"], &rows)
}
