//! `sipguard bans`.
use super::{human_seconds, output::Output, CliError};
use crate::control::{
    client::Client,
    protocol::{BanOrigin, BanRow},
};

pub fn bans(
    client: &Client,
    json: bool,
    origin: Option<BanOrigin>,
    out: &mut Output,
) -> Result<(), CliError> {
    let rows = client.bans_by(origin)?;
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
        match (ban.listed, ban.remaining_seconds) {
            (true, _) => "while listed".into(),
            (false, None) => "until removed".into(),
            (false, Some(s)) => human_seconds(s),
        },
        match ban.listed {
            true => "-".into(),
            false => ban.dropped.to_string(),
        },
    ]
}
