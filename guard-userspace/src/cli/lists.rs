//! `sipguard allow|deny add|remove|list`.
use super::{output::Output, CliError};
use crate::control::{client::Client, protocol::Request};

/// An allow/deny request: `Some(json)` for a listing, `None` for a change.
pub fn list_command(
    client: &Client,
    (request, listing): (Request, Option<bool>),
    out: &mut Output,
) -> Result<(), CliError> {
    let Some(json) = listing else {
        let change = client.list_change(request)?;
        let (verb, to) = if change.added {
            ("added", "to")
        } else {
            ("removed", "from")
        };
        out.line(format_args!(
            "{verb} {} {to} the {} list",
            change.cidr, change.list
        ))?;
        if let Some(why) = &change.not_saved {
            out.line(format_args!(
                "WARNING: in force, but not saved ({why}): it will not outlive a restart"
            ))?;
        }
        return Ok(());
    };
    let rows = client.list(request)?;
    if json {
        return out.json(&rows);
    }
    if rows.is_empty() {
        return out.line("the list is empty");
    }
    let table: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| vec![r.cidr, r.services.join(","), r.origin, r.comment])
        .collect();
    out.table(&["CIDR", "SERVICES", "ORIGIN", "COMMENT"], &table)
}
