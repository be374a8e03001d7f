//! `sipguard status`.
use super::{human_seconds, output::Output, CliError};
use crate::control::{client::Client, protocol::Status};

pub fn status(client: &Client, json: bool, out: &mut Output) -> Result<(), CliError> {
    let status = client.status()?;
    if json {
        return out.json(&status);
    }
    for line in status_lines(&status) {
        out.line(line)?;
    }
    Ok(())
}

/// The status as people read it.
pub fn status_lines(s: &Status) -> Vec<String> {
    let mut lines = vec![format!(
        "interface:  {} ({} mode, program id {})",
        s.iface, s.xdp_mode, s.program_id
    )];
    if !s.attached {
        lines.push(
            "ATTACHED:   NO: the interface is gone; the maps and bans are kept and the guard \
             re-attaches when it comes back"
                .to_string(),
        );
    }
    lines.extend([
        format!("uptime:     {}", human_seconds(s.uptime_seconds)),
        format!("policy:     {} (from {})", s.policy, s.source),
    ]);
    if s.monitor {
        lines.push("monitor:    ON (nothing is dropped)".to_string());
    }
    lines.push(format!("bans:       {} in force", s.bans_active));
    match (&s.pinned_at, &s.pins_warning) {
        (Some(dir), Some(warning)) => {
            lines.push(format!(
                "pinned at:  {} (but the guard will NOT outlive this daemon)",
                dir.display()
            ));
            lines.push(format!("WARNING:    {warning}"));
        }
        (Some(dir), None) => lines.push(format!(
            "pinned at:  {} (the guard outlives this daemon)",
            dir.display()
        )),
        (None, _) => {
            lines.push("pinned at:  not pinned (the guard stops with this daemon)".to_string())
        }
    }
    lines.push(format!("state:      {}", s.state_dir.display()));
    if s.state_save_failures > 0 {
        lines.push(format!(
            "WARNING:    {} saves to the state directory failed: recent changes will not \
             outlive a reboot (see the log)",
            s.state_save_failures
        ));
    }
    if let Some(seconds) = s.awaiting_confirmation_seconds {
        lines.push(format!(
            "confirm:    an applied change reverts in {seconds} s unless `sipguard confirm`"
        ));
    }
    let packets: Vec<String> = s
        .packets
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| format!("{reason}={n}"))
        .collect();
    lines.push(format!(
        "packets:    {}",
        if packets.is_empty() {
            "none yet".to_string()
        } else {
            packets.join(" ")
        }
    ));
    lines
}
