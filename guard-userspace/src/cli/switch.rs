//! `sipguard reload`, `apply FILE [--confirm]`, `confirm`.
use std::{path::Path, time::Duration};

use super::{output::Output, CliError};
use crate::control::{client::Client, protocol::PolicySwitch};

pub fn reload(client: &Client, out: &mut Output) -> Result<(), CliError> {
    print_switch(&client.reload()?, out)
}

pub fn apply(
    client: &Client,
    file: &Path,
    confirm: Option<Duration>,
    out: &mut Output,
) -> Result<(), CliError> {
    // The daemon runs elsewhere: it needs the whole path.
    let path = std::fs::canonicalize(file)
        .map_err(|e| CliError::BadConfig(format!("{}: {e}", file.display())))?;
    print_switch(&client.apply(path, confirm)?, out)
}

pub fn confirm(client: &Client, out: &mut Output) -> Result<(), CliError> {
    let confirmed = client.confirm()?;
    out.line(format_args!(
        "confirmed: the policy from {} stays",
        confirmed.confirmed
    ))?;
    if let Some(why) = &confirmed.not_saved {
        out.line(format_args!("warning: {why}"))?;
    }
    Ok(())
}

fn print_switch(switch: &PolicySwitch, out: &mut Output) -> Result<(), CliError> {
    out.line(format_args!(
        "policy from {}: {}",
        switch.source, switch.policy
    ))?;
    let monitor = match (switch.monitor.on, switch.monitor.kept) {
        (true, true) => "monitor mode: on, kept (the file does not set `monitor`)",
        (false, true) => "monitor mode: off, kept (the file does not set `monitor`)",
        (true, false) => "monitor mode: on, as the file says",
        (false, false) => "monitor mode: off, as the file says",
    };
    out.line(monitor)?;
    for what in &switch.restart_needed {
        out.line(format_args!(
            "note: {what} changed; that takes effect at the next restart"
        ))?;
    }
    if let Some(seconds) = switch.confirm_within_seconds {
        out.line(format_args!(
            "run `sipguard confirm` within {seconds} s, or it reverts"
        ))?;
    }
    if let Some(why) = &switch.not_saved {
        out.line(format_args!("warning: {why}"))?;
    }
    Ok(())
}
