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
    let mut lines = vec![
        format!(
            "interface:  {} ({} mode, program id {})",
            s.iface, s.xdp_mode, s.program_id
        ),
        format!("uptime:     {}", human_seconds(s.uptime_seconds)),
        format!("policy:     {} (from {})", s.policy, s.source),
    ];
    if s.monitor {
        lines.push("monitor:    ON (nothing is dropped)".to_string());
    }
    lines.push(format!("bans:       {} in force", s.bans_active));
    lines.push(match &s.pinned_at {
        Some(dir) => format!(
            "pinned at:  {} (the guard outlives this daemon)",
            dir.display()
        ),
        None => "pinned at:  not pinned (the guard stops with this daemon)".to_string(),
    });
    lines.push(format!("state:      {}", s.state_dir.display()));
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
