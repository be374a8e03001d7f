//! `sipguard bans`.
use super::{human_seconds, output::Output, CliError};
use crate::control::{client::Client, protocol::BanRow};

pub fn bans(client: &Client, json: bool, out: &mut Output) -> Result<(), CliError> {
    let rows = client.bans()?;
    if json {
        return out.json(&rows);
    }
    if rows.is_empty() {
        return out.line("no bans in force");
    }
    out.table(
        &[
            "SOURCE",
            "REASON",
            "RULE/EVIDENCE",
            "SINCE",
            "REMAINING",
            "DROPPED",
        ],
        &rows.iter().map(row).collect::<Vec<_>>(),
    )
}

fn row(ban: &BanRow) -> Vec<String> {
    vec![
        ban.source.clone(),
        ban.reason.clone(),
        ban.detail.clone(),
        format!("{} ago", human_seconds(ban.since_seconds)),
        ban.remaining_seconds
            .map_or("until removed".into(), human_seconds),
        ban.dropped.to_string(),
    ]
}
