//! Scanner fingerprints (`[sip_scanners]`): the built-in list, the
//! operator's patterns, their validation, and the table the kernel steps.
//!
//! The XDP program reads every SIP request arriving at the ports of
//! `sip_auth.service` (after ban, deny and the allow list) and drops a
//! request whose User-Agent, From, To or Contact carries a fingerprint,
//! banning its source (reason `scanner`). Allow-listed sources are never
//! banned for it.
use std::time::Duration;

use guard_common::{
    sip_patterns::{compile, Pattern},
    sip_scan::{PatternField, PatternTable},
};
use serde::Deserialize;

/// Which header a pattern reads.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FieldName {
    UserAgent,
    From,
    To,
    Contact,
}

impl FieldName {
    fn field(self) -> PatternField {
        match self {
            FieldName::UserAgent => PatternField::UserAgent,
            FieldName::From => PatternField::From,
            FieldName::To => PatternField::To,
            FieldName::Contact => PatternField::Contact,
        }
    }
}

/// One `[[sip_scanners.patterns]]` entry: `contains` or `prefix`, matched
/// ASCII case-insensitively against the header's whole value (a From or
/// To value includes its display name).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PatternEntry {
    pub field: FieldName,
    pub contains: Option<String>,
    pub prefix: Option<String>,
}

impl PatternEntry {
    fn text(&self) -> Option<(&str, bool)> {
        match (&self.contains, &self.prefix) {
            (Some(text), None) => Some((text, false)),
            (None, Some(text)) => Some((text, true)),
            _ => None,
        }
    }

    /// How logs and `bans` name it, e.g. `user_agent contains "friendly-scanner"`.
    pub fn describe(&self) -> String {
        let field = match self.field {
            FieldName::UserAgent => "user_agent",
            FieldName::From => "from",
            FieldName::To => "to",
            FieldName::Contact => "contact",
        };
        match self.text() {
            Some((text, true)) => format!("{field} prefix {text:?}"),
            Some((text, false)) => format!("{field} contains {text:?}"),
            None => format!("{field} (invalid)"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SipScannersSection {
    pub enabled: bool,
    /// Include the built-in list ([`builtin_patterns`]).
    pub builtin: bool,
    /// How long a matching source stays banned; 0s drops without banning.
    #[serde(with = "super::config::humantime_serde_compat")]
    pub ban: Duration,
    pub patterns: Vec<PatternEntry>,
}

impl Default for SipScannersSection {
    fn default() -> Self {
        SipScannersSection {
            // Off until the kernel's reader meets its cost budget (see
            // guard-ebpf/src/sip_inspect.rs).
            enabled: false,
            builtin: true,
            ban: Duration::from_secs(86_400),
            patterns: Vec::new(),
        }
    }
}

/// The default fingerprints: the tools' own default User-Agents, and
/// sipvicious' display name in From/To (which catches `svmap -c`, whose
/// compact requests carry no User-Agent). Sources in sipguard.example.toml.
pub fn builtin_patterns() -> Vec<PatternEntry> {
    let ua = |text: &str| PatternEntry {
        field: FieldName::UserAgent,
        contains: Some(text.to_string()),
        prefix: None,
    };
    let mut list: Vec<PatternEntry> = [
        "friendly-scanner",
        "sipvicious",
        "sipcli",
        "sip-cli",
        "VaxSIPUserAgent",
        "pplsip",
        "sipptk",
        "sundayddr",
        "iWar",
        "sip-scan",
    ]
    .into_iter()
    .map(ua)
    .collect();
    for field in [FieldName::From, FieldName::To] {
        list.push(PatternEntry {
            field,
            contains: Some("sipvicious".to_string()),
            prefix: None,
        });
    }
    list
}

impl SipScannersSection {
    /// The patterns in force, numbered from 1 in this order.
    pub fn effective(&self) -> Vec<PatternEntry> {
        if !self.enabled {
            return Vec::new();
        }
        let mut list = if self.builtin {
            builtin_patterns()
        } else {
            Vec::new()
        };
        list.extend(self.patterns.iter().cloned());
        list
    }

    /// `(key, reason)` of the first problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (i, entry) in self.patterns.iter().enumerate() {
            let key = format!("sip_scanners.patterns[{i}]");
            match entry.text() {
                None => return Err((key, "give exactly one of `contains` or `prefix`".into())),
                Some(("", _)) => return Err((key, "empty pattern".into())),
                Some(_) => {}
            }
        }
        self.table()
            .map(|_| ())
            .map_err(|reason| ("sip_scanners.patterns".to_string(), reason))
    }

    /// The table the XDP program steps (inactive when there are no patterns).
    pub fn table(&self) -> Result<Box<PatternTable>, String> {
        let list = self.effective();
        let patterns: Vec<Pattern<'_>> = list
            .iter()
            .filter_map(|entry| {
                let (text, prefix) = entry.text()?;
                Some(Pattern {
                    field: entry.field.field(),
                    text: text.as_bytes(),
                    prefix,
                })
            })
            .collect();
        let mut table = compile(&patterns).map_err(|e| e.to_string())?;
        table.ban_ns = self.ban.as_nanos().min(u64::MAX as u128) as u64;
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_list_compiles_and_matches_the_tools() {
        let section = SipScannersSection {
            enabled: true,
            ..Default::default()
        };
        let table = section.table().expect("the built-in list compiles");
        assert_eq!(table.active, 1);
        assert_eq!(table.ban_ns, 86_400_000_000_000);
        for agent in [
            "friendly-scanner",
            "sipcli/v1.8",
            "PPLSIP",
            "VaxSIPUserAgent/3.1",
        ] {
            assert!(
                table
                    .first_match(PatternField::UserAgent, agent.as_bytes())
                    .is_some(),
                "{agent}"
            );
        }
        for agent in [
            "Yealink SIP-T46S 66.86.0.15",
            "sipsak 0.9.8.1",
            "Asterisk PBX 20",
        ] {
            assert_eq!(
                table.first_match(PatternField::UserAgent, agent.as_bytes()),
                None,
                "{agent}"
            );
        }
        let svmap_from = b"\"sipvicious\"<sip:100@1.1.1.1>;tag=6330";
        assert!(table.first_match(PatternField::From, svmap_from).is_some());
    }

    #[test]
    fn disabled_or_empty_is_inactive() {
        let off = SipScannersSection::default();
        assert_eq!(off.table().expect("compiles").active, 0);
        let empty = SipScannersSection {
            enabled: true,
            builtin: false,
            ..Default::default()
        };
        assert_eq!(empty.table().expect("compiles").active, 0);
    }

    #[test]
    fn bad_patterns_are_refused() {
        let with = |entry: PatternEntry| SipScannersSection {
            enabled: true,
            patterns: vec![entry],
            ..Default::default()
        };
        let both = PatternEntry {
            field: FieldName::To,
            contains: Some("a".into()),
            prefix: Some("b".into()),
        };
        assert!(with(both).validate().is_err());
        let empty = PatternEntry {
            field: FieldName::To,
            contains: Some(String::new()),
            prefix: None,
        };
        assert!(with(empty).validate().is_err());
        let line_break = PatternEntry {
            field: FieldName::Contact,
            contains: None,
            prefix: Some("a\nb".into()),
        };
        let err = with(line_break).validate().unwrap_err();
        assert!(err.1.contains("line break"), "{err:?}");
    }
}
