//! The `[crowdsec]` section: where the LAPI is, the bouncer's key, how often
//! to ask for decisions, and which decisions to take; and the machine
//! (watcher) sipguard reports its own bans as.
use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

use crate::alerts::Secret;

/// The shortest and longest poll intervals accepted.
const MIN_POLL: Duration = Duration::from_secs(1);
const MAX_POLL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CrowdsecSection {
    /// The Local API, e.g. `http://127.0.0.1:8080/`.
    pub lapi_url: String,
    /// The key `cscli bouncers add NAME` printed...
    #[serde(default)]
    pub bouncer_api_key: Option<String>,
    /// ...or a file holding it (read at start).
    #[serde(default)]
    pub bouncer_api_key_file: Option<PathBuf>,
    #[serde(default = "default_poll", deserialize_with = "duration")]
    pub poll_interval: Duration,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<Scope>,
    /// Only decisions of these origins (`cscli`, `crowdsec`, `CAPI`, `lists`...); empty: all.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Only decisions whose scenario contains one of these; empty: all.
    #[serde(default)]
    pub scenarios_containing: Vec<String>,
    /// No decision whose scenario contains one of these.
    #[serde(default)]
    pub scenarios_not_containing: Vec<String>,
    /// The machine `cscli machines add NAME --password ...` made: with it,
    /// sipguard reports its own bans to the LAPI (as a watcher).
    #[serde(default)]
    pub machine_login: Option<String>,
    /// Its password (never printed)...
    #[serde(default)]
    pub machine_password: Option<Secret>,
    /// ...or a file whose first line is the password (read at start).
    #[serde(default)]
    pub machine_password_file: Option<PathBuf>,
}

/// The watcher's credentials, read at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub login: String,
    pub password: Secret,
}

/// A decision scope sipguard can enforce.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One address: a ban.
    Ip,
    /// A network: the fleet deny set.
    Range,
}

impl Scope {
    /// The name the LAPI's `scopes` parameter takes.
    pub fn query_name(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::Range => "range",
        }
    }
}

fn default_poll() -> Duration {
    Duration::from_secs(10)
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Ip, Scope::Range]
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
}

impl CrowdsecSection {
    /// Checks what serde cannot: returns (key path, reason).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let key = |field: &str| format!("crowdsec.{field}");
        let url = reqwest::Url::parse(&self.lapi_url)
            .map_err(|e| (key("lapi_url"), format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err((
                key("lapi_url"),
                "must be an http:// or https:// URL with a host".into(),
            ));
        }
        match (&self.bouncer_api_key, &self.bouncer_api_key_file) {
            (None, None) if self.machine_login.is_none() => {
                return Err((
                    key("bouncer_api_key"),
                    "give bouncer_api_key or bouncer_api_key_file (to pull decisions), \
                     machine_login (to report bans), or both"
                        .into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err((
                    key("bouncer_api_key"),
                    "give exactly one of bouncer_api_key or bouncer_api_key_file".into(),
                ))
            }
            (Some(k), None) if !valid_key(k) => {
                return Err((
                    key("bouncer_api_key"),
                    "must be the printable key `cscli bouncers add` gave".into(),
                ))
            }
            _ => {}
        }
        self.validate_machine()?;
        if !(MIN_POLL..=MAX_POLL).contains(&self.poll_interval) {
            return Err((key("poll_interval"), "must be between 1s and 1h".into()));
        }
        if self.scopes.is_empty() {
            return Err((key("scopes"), "needs ip, range or both".into()));
        }
        for (name, list) in [
            ("origins", &self.origins),
            ("scenarios_containing", &self.scenarios_containing),
            ("scenarios_not_containing", &self.scenarios_not_containing),
        ] {
            if list.iter().any(|s| s.trim().is_empty() || s.contains(',')) {
                return Err((
                    key(name),
                    "entries must be non-empty, without commas".into(),
                ));
            }
        }
        Ok(())
    }

    fn validate_machine(&self) -> Result<(), (String, String)> {
        let key = |field: &str| format!("crowdsec.{field}");
        let password = (&self.machine_password, &self.machine_password_file);
        let Some(login) = &self.machine_login else {
            if password.0.is_some() || password.1.is_some() {
                let field = if password.0.is_some() {
                    "machine_password"
                } else {
                    "machine_password_file"
                };
                return Err((key(field), "needs machine_login".into()));
            }
            return Ok(());
        };
        if login.trim().is_empty() || login.len() > 255 || login.chars().any(char::is_control) {
            return Err((
                key("machine_login"),
                "must be the machine name `cscli machines add` was given".into(),
            ));
        }
        match password {
            (None, None) => Err((
                key("machine_login"),
                "needs machine_password or machine_password_file".into(),
            )),
            (Some(_), Some(_)) => Err((
                key("machine_password"),
                "give machine_password or machine_password_file, not both".into(),
            )),
            (Some(p), None) if p.0.is_empty() => {
                Err((key("machine_password"), "must not be empty".into()))
            }
            _ => Ok(()),
        }
    }

    /// The bouncer key: given, or read from its file; None without one
    /// (a watcher only).
    pub fn api_key(&self) -> Result<Option<String>, String> {
        let key = match (&self.bouncer_api_key, &self.bouncer_api_key_file) {
            (Some(key), _) => key.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    format!(
                        "crowdsec.bouncer_api_key_file: cannot read {}: {e}",
                        path.display()
                    )
                })?
                .trim()
                .to_string(),
            (None, None) => return Ok(None),
        };
        if !valid_key(&key) {
            return Err("crowdsec: the bouncer key must be one printable word".into());
        }
        Ok(Some(key))
    }

    /// The watcher's login and password (read from its file), if set.
    pub fn machine(&self) -> Result<Option<Machine>, String> {
        let Some(login) = &self.machine_login else {
            return Ok(None);
        };
        let password = match (&self.machine_password, &self.machine_password_file) {
            (Some(password), _) => password.clone(),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!(
                        "crowdsec.machine_password_file: cannot read {}: {e}",
                        path.display()
                    )
                })?;
                Secret(text.lines().next().unwrap_or_default().trim().to_string())
            }
            (None, None) => return Err("crowdsec.machine_login: no password".into()),
        };
        if password.0.is_empty() {
            return Err("crowdsec.machine_password_file: the first line is empty".into());
        }
        Ok(Some(Machine {
            login: login.clone(),
            password,
        }))
    }

    /// Whether a decision of this origin and scenario is taken.
    pub fn wants(&self, origin: &str, scenario: &str) -> bool {
        let origin_ok =
            self.origins.is_empty() || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin));
        let contains_ok = self.scenarios_containing.is_empty()
            || self
                .scenarios_containing
                .iter()
                .any(|s| scenario.contains(s.as_str()));
        let excluded = self
            .scenarios_not_containing
            .iter()
            .any(|s| scenario.contains(s.as_str()));
        origin_ok && contains_ok && !excluded
    }
}

/// A header value: visible ASCII, no spaces.
fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 512 && key.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(extra: &str) -> Result<CrowdsecSection, String> {
        let text = format!("lapi_url = \"http://127.0.0.1:8080\"\n{extra}");
        let section: CrowdsecSection = toml::from_str(&text).map_err(|e| e.to_string())?;
        section.validate().map_err(|(k, r)| format!("{k}: {r}"))?;
        Ok(section)
    }

    #[test]
    fn defaults_poll_every_10s_for_ips_and_ranges() {
        let s = section("bouncer_api_key = \"abc\"").unwrap();
        assert_eq!(s.poll_interval, Duration::from_secs(10));
        assert_eq!(s.scopes, vec![Scope::Ip, Scope::Range]);
        assert_eq!(s.api_key().unwrap().as_deref(), Some("abc"));
        assert_eq!(s.machine().unwrap(), None);
    }

    #[test]
    fn exactly_one_key_source() {
        let none = section("").unwrap_err();
        assert!(none.starts_with("crowdsec.bouncer_api_key:"), "{none}");
        let both = section("bouncer_api_key = \"a\"\nbouncer_api_key_file = \"/k\"").unwrap_err();
        assert!(both.contains("exactly one"), "{both}");
        let spaced = section("bouncer_api_key = \"a b\"").unwrap_err();
        assert!(spaced.contains("printable"), "{spaced}");
    }

    #[test]
    fn bad_values_are_refused() {
        let k = "bouncer_api_key = \"k\"\n";
        assert!(section(&format!("{k}poll_interval = \"0s\""))
            .unwrap_err()
            .contains("poll_interval"));
        assert!(section(&format!("{k}scopes = []"))
            .unwrap_err()
            .contains("scopes"));
        assert!(section(&format!("{k}scopes = [\"country\"]")).is_err());
        assert!(section(&format!("{k}origins = [\"\"]"))
            .unwrap_err()
            .contains("origins"));
        let url: Result<CrowdsecSection, String> = (|| {
            let s: CrowdsecSection =
                toml::from_str("lapi_url = \"ftp://x\"\nbouncer_api_key = \"k\"")
                    .map_err(|e| e.to_string())?;
            s.validate().map_err(|(k, r)| format!("{k}: {r}"))?;
            Ok(s)
        })();
        assert!(url.unwrap_err().contains("lapi_url"));
    }

    #[test]
    fn config_errors_name_file_line_and_key() {
        use crate::policy::config::Config;
        let text =
            "[guard]\nmonitor = true\n\n[crowdsec]\nlapi_url = \"nope\"\nbouncer_api_key = \"k\"\n";
        let e = Config::parse(text, "site.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("site.toml:5: key `crowdsec.lapi_url`: not a URL"),
            "{e}"
        );
        let text = "[crowdsec]\nlapi_url = \"http://127.0.0.1:8080\"\npoll_interval = \"5s\"\n";
        let e = Config::parse(text, "site.toml").unwrap_err().to_string();
        // A missing key points at its section.
        assert!(
            e.starts_with("site.toml:1: key `crowdsec.bouncer_api_key`"),
            "{e}"
        );
        let text = "[crowdsec]\nlapi_url = \"http://127.0.0.1:8080\"\nbouncer_key = \"k\"\n";
        let e = Config::parse(text, "site.toml").unwrap_err().to_string();
        assert!(e.contains("site.toml:3"), "{e}");
    }

    #[test]
    fn the_example_section_is_valid_uncommented() {
        use crate::policy::config::Config;
        let example = include_str!("../../../sipguard.example.toml");
        let start = example.find("# [crowdsec]").expect("a [crowdsec] example");
        let section: String = example[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter(|l| !l.starts_with("# #") && !l.starts_with("# # "))
            .map(|l| l.trim_start_matches("# "))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(&section, "example").unwrap();
        let s = c.crowdsec.unwrap();
        assert_eq!(s.scopes, vec![Scope::Ip, Scope::Range]);
        assert_eq!(s.api_key().unwrap().as_deref(), Some("..."));
        // The watcher's keys, uncommented.
        let machine: Vec<&str> = example[start..]
            .lines()
            .filter(|l| {
                l.starts_with("# # machine_login =") || l.starts_with("# # machine_password_file =")
            })
            .map(|l| l.trim_start_matches("# # "))
            .collect();
        assert_eq!(machine.len(), 2, "{machine:?}");
        let c = Config::parse(&format!("{section}\n{}", machine.join("\n")), "example").unwrap();
        let s = c.crowdsec.unwrap();
        assert_eq!(s.machine_login.as_deref(), Some("sipguard-pbx1"));
        assert!(s.machine_password_file.is_some());
    }

    #[test]
    fn a_machine_needs_exactly_one_password_source() {
        let s = section("machine_login = \"pbx1\"\nmachine_password = \"s3cret\"").unwrap();
        // A watcher alone needs no bouncer key.
        assert_eq!(s.api_key().unwrap(), None);
        let machine = s.machine().unwrap().unwrap();
        assert_eq!(machine.login, "pbx1");
        assert_eq!(machine.password.0, "s3cret");
        let k = "bouncer_api_key = \"k\"\n";
        for (extra, field) in [
            ("machine_login = \"pbx1\"", "crowdsec.machine_login: needs machine_password"),
            (
                "machine_login = \"pbx1\"\nmachine_password = \"a\"\nmachine_password_file = \"/p\"",
                "crowdsec.machine_password: give",
            ),
            ("machine_password = \"a\"", "crowdsec.machine_password: needs machine_login"),
            (
                "machine_password_file = \"/p\"",
                "crowdsec.machine_password_file: needs machine_login",
            ),
            ("machine_login = \" \"\nmachine_password = \"a\"", "crowdsec.machine_login:"),
            ("machine_login = \"pbx1\"\nmachine_password = \"\"", "crowdsec.machine_password:"),
        ] {
            let e = section(&format!("{k}{extra}")).unwrap_err();
            assert!(e.starts_with(field), "{extra}: {e}");
        }
    }

    #[test]
    fn the_password_is_read_from_its_file_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("sipguard-machine-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "from-the-file\nsecond line\n").unwrap();
        let s = section(&format!(
            "machine_login = \"pbx1\"\nmachine_password_file = \"{}\"",
            file.display()
        ))
        .unwrap();
        assert_eq!(s.machine().unwrap().unwrap().password.0, "from-the-file");
        assert!(!format!("{s:?}").contains("from-the-file"));
        let given = section("machine_login = \"pbx1\"\nmachine_password = \"hunter2\"").unwrap();
        assert!(!format!("{given:?}").contains("hunter2"), "{given:?}");
        std::fs::write(&file, "\n").unwrap();
        assert!(s.machine().unwrap_err().contains("first line is empty"));
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = section(
            "machine_login = \"pbx1\"\nmachine_password_file = \"/nonexistent/sipguard-pw\"",
        )
        .unwrap();
        let e = missing.machine().unwrap_err();
        assert!(e.contains("cannot read /nonexistent/sipguard-pw"), "{e}");
    }

    #[test]
    fn machine_errors_name_file_and_line() {
        use crate::policy::config::Config;
        let text = "[crowdsec]\nlapi_url = \"http://127.0.0.1:8080\"\nbouncer_api_key = \"k\"\n\
                    machine_password = \"hunter2\"\n";
        let e = Config::parse(text, "site.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("site.toml:4: key `crowdsec.machine_password`: needs machine_login"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn missing_key_file_is_a_clear_error() {
        let s = section("bouncer_api_key_file = \"/nonexistent/sipguard-key\"").unwrap();
        let e = s.api_key().unwrap_err();
        assert!(e.contains("cannot read /nonexistent/sipguard-key"), "{e}");
    }

    #[test]
    fn filters_pick_origins_and_scenarios() {
        let s = section(
            "bouncer_api_key = \"k\"\norigins = [\"crowdsec\", \"cscli\"]\n\
             scenarios_containing = [\"sip\", \"ssh\"]\nscenarios_not_containing = [\"slow\"]",
        )
        .unwrap();
        assert!(s.wants("crowdsec", "crowdsecurity/sip-bf"));
        assert!(s.wants("CSCLI", "crowdsecurity/ssh-bf"));
        assert!(!s.wants("CAPI", "crowdsecurity/sip-bf"));
        assert!(!s.wants("crowdsec", "crowdsecurity/http-probing"));
        assert!(!s.wants("crowdsec", "crowdsecurity/ssh-slow-bf"));
    }
}
