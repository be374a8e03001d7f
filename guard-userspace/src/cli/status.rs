//! `sipguard status`.
use super::{human_seconds, output::Output, CliError};
use crate::{
    control::{client::Client, protocol::Status},
    fleet::health::{Origin, SourceHealth},
};

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
    lines.extend(
        s.fleet
            .iter()
            .map(|h| fleet_line(h, crate::state::unix_now())),
    );
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

/// One fleet source in a line: healthy or failing, since when, how much.
pub fn fleet_line(h: &SourceHealth, now: u64) -> String {
    let label = match h.origin {
        Origin::Crowdsec => "crowdsec:".to_string(),
        Origin::Feed => format!("feed {}:", h.name),
    };
    let ago = |t: u64| format!("{} ago", human_seconds(now.saturating_sub(t)));
    let synced = h.last_success_unix.map_or("never synced".to_string(), |t| {
        format!("last sync {}", ago(t))
    });
    let list = match (h.origin, h.list_unix) {
        (Origin::Feed, Some(t)) => format!(" (list from {})", ago(t)),
        _ => String::new(),
    };
    let state = match (&h.last_error, h.failing) {
        (Some(error), n) if n > 0 => format!(
            "FAILING ({n} in a row, {} since start: {error}); keeping what is in force",
            h.errors_total
        ),
        _ => "ok".to_string(),
    };
    let skipped = match h.skipped {
        0 => String::new(),
        n => format!(", {n} skipped"),
    };
    format!(
        "{label:<11} {state}; {synced}; {} entries in force{list}{skipped} [{}]",
        h.entries, h.from
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_lines_say_healthy_or_failing() {
        let now = 1_000_000;
        let mut feed =
            SourceHealth::new("voipbl", Origin::Feed, "list", "https://voipbl.org/update/");
        feed.last_success_unix = Some(now - 120);
        feed.list_unix = Some(now - 120);
        feed.entries = 41_234;
        feed.skipped = 3;
        assert_eq!(
            fleet_line(&feed, now),
            "feed voipbl: ok; last sync 2m ago; 41234 entries in force (list from 2m ago), \
             3 skipped [https://voipbl.org/update/]"
        );
        feed.failed("https://voipbl.org/update/: answered 503 Service Unavailable".into());
        assert!(fleet_line(&feed, now).starts_with(
            "feed voipbl: FAILING (1 in a row, 1 since start: https://voipbl.org/update/: \
             answered 503 Service Unavailable); keeping what is in force; last sync 2m ago"
        ));
        let lapi = SourceHealth::new("crowdsec", Origin::Crowdsec, "crowdsec", "http://l/");
        assert_eq!(
            fleet_line(&lapi, now),
            "crowdsec:   ok; never synced; 0 entries in force [http://l/]"
        );
    }
}
