//! `sipguard peers`.
use super::{human_seconds, output::Output, CliError};
use crate::control::{client::Client, protocol::PeerRow};

pub fn peers(client: &Client, json: bool, out: &mut Output) -> Result<(), CliError> {
    let rows = client.peers()?;
    if json {
        return out.json(&rows);
    }
    if rows.is_empty() {
        return out.line("no learned peers");
    }
    out.table(
        &[
            "SOURCE",
            "KIND",
            "USERS",
            "EXPIRES",
            "BUDGET",
            "PACKETS/BUDGET",
        ],
        &rows.iter().map(row).collect::<Vec<_>>(),
    )
}

fn row(peer: &PeerRow) -> Vec<String> {
    vec![
        peer.source.clone(),
        peer.kind.clone(),
        peer.users.to_string(),
        format!("in {}", human_seconds(peer.expires_seconds)),
        format!("x{}", peer.budget_factor),
        packets(peer),
    ]
}

/// "sip-udp-40-per-2s 61/2400": the rules that counted something, each
/// with the packets in its window over the peer's budget there.
pub fn packets(peer: &PeerRow) -> String {
    let counted: Vec<String> = peer
        .packets
        .iter()
        .filter(|r| r.counted > 0)
        .map(|r| format!("{} {}/{}", r.rule, r.counted, r.budget))
        .collect();
    if counted.is_empty() {
        "none in the windows".to_string()
    } else {
        counted.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::RuleCount;

    #[test]
    fn a_row_names_the_rules_that_counted() {
        let rule = |rule: &str, counted, budget| RuleCount {
            rule: rule.into(),
            counted,
            budget,
        };
        let mut peer = PeerRow {
            source: "198.51.100.20".into(),
            kind: "registered".into(),
            users: 30,
            expires_seconds: 290,
            budget_factor: 60,
            packets: vec![
                rule("sip-udp-120-per-60s", 1800, 7200),
                rule("sip-udp-40-per-2s", 0, 2400),
            ],
        };
        assert_eq!(
            row(&peer),
            [
                "198.51.100.20",
                "registered",
                "30",
                "in 4m 50s",
                "x60",
                "sip-udp-120-per-60s 1800/7200"
            ]
        );
        peer.packets[0].counted = 0;
        assert_eq!(packets(&peer), "none in the windows");
    }
}
