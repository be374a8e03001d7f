//! The state directory (default /var/lib/sipguard): bans and the operator's
//! runtime list changes, so that they outlive a reboot (when the pinned maps
//! are gone). Every write is atomic: temporary file, fsync, rename, fsync of
//! the directory. A reader sees the old file or the new one, never a mix.
use std::{
    io::Write,
    net::Ipv6Addr,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use guard_common::{BanEntry, BanReason, SourceKey, BAN_FOREVER, NO_RULE};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tracing::warn;

use crate::kernel::bans;
pub use crate::policy::live::ListChanges;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/sipguard";
const BANS_FILE: &str = "bans.json";
const LISTS_FILE: &str = "lists.json";
const MODE_FILE: &str = "xdp_mode.json";
/// Bumped when a file's meaning changes; an unknown version is refused.
const FORMAT_VERSION: u32 = 1;

/// One ban as saved: times are wall-clock (UNIX seconds), because the
/// kernel's monotonic clock restarts at boot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedBan {
    /// The ban map's key: an IPv4-mapped address, or the masked IPv6 prefix.
    pub key: Ipv6Addr,
    pub reason: String,
    /// The rate rule's name (indexes change between configs).
    pub rule: Option<String>,
    /// The operator's words or the evidence.
    pub detail: String,
    pub created_unix: u64,
    /// None: until removed.
    pub expires_unix: Option<u64>,
    pub dropped: u64,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct BansFile {
    version: u32,
    bans: Vec<SavedBan>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Converts between the kernel's monotonic stamps and saved wall-clock times.
#[derive(Debug, Clone, Copy)]
pub struct Clocks {
    pub monotonic_ns: u64,
    pub unix: u64,
}

impl Clocks {
    pub fn now() -> Clocks {
        Clocks {
            monotonic_ns: crate::clock::monotonic_ns(),
            unix: unix_now(),
        }
    }

    fn to_unix(self, monotonic_ns: u64) -> u64 {
        let age = self.monotonic_ns.saturating_sub(monotonic_ns) / 1_000_000_000;
        let ahead = monotonic_ns.saturating_sub(self.monotonic_ns) / 1_000_000_000;
        self.unix.saturating_sub(age).saturating_add(ahead)
    }

    fn to_monotonic(self, unix: u64) -> u64 {
        let age = self.unix.saturating_sub(unix).saturating_mul(1_000_000_000);
        let ahead = unix.saturating_sub(self.unix).saturating_mul(1_000_000_000);
        self.monotonic_ns.saturating_sub(age).saturating_add(ahead)
    }
}

impl SavedBan {
    pub fn from_entry(
        key: &SourceKey,
        ban: &BanEntry,
        rule_names: &[String],
        detail: String,
        clocks: Clocks,
    ) -> SavedBan {
        SavedBan {
            key: Ipv6Addr::from(key.addr),
            reason: bans::reason_name(ban.reason).to_string(),
            rule: bans::rule_name(ban.rule, rule_names).map(str::to_owned),
            detail,
            created_unix: clocks.to_unix(ban.created_ns),
            expires_unix: (ban.expires_ns != BAN_FOREVER).then(|| clocks.to_unix(ban.expires_ns)),
            dropped: ban.dropped,
        }
    }

    /// The map entry to restore, or None once the ban has run out.
    /// A rule that no longer exists under its name is forgotten, not misnamed.
    pub fn to_entry(&self, rule_names: &[String], clocks: Clocks) -> Option<(SourceKey, BanEntry)> {
        let expires_ns = match self.expires_unix {
            None => BAN_FOREVER,
            Some(unix) if unix <= clocks.unix => return None,
            Some(unix) => clocks.to_monotonic(unix),
        };
        let reason = BanReason::ALL
            .iter()
            .find(|r| r.name() == self.reason)
            .map_or(BanReason::Manual as u16, |r| *r as u16);
        let rule = self
            .rule
            .as_ref()
            .and_then(|name| rule_names.iter().position(|n| n == name))
            .map_or(NO_RULE, |i| i as u16);
        let entry = BanEntry {
            expires_ns,
            created_ns: clocks.to_monotonic(self.created_unix),
            dropped: self.dropped,
            reason,
            rule,
            ..BanEntry::default()
        };
        Some((
            SourceKey {
                addr: self.key.octets(),
            },
            entry,
        ))
    }
}

/// The state directory and its files.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Creates the directory (root-only) if needed.
    pub fn open(dir: &Path) -> Result<StateDir> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn save_bans(&self, bans: Vec<SavedBan>) -> Result<()> {
        let file = BansFile {
            version: FORMAT_VERSION,
            bans,
        };
        write_atomically(&self.dir.join(BANS_FILE), &file)
    }

    /// Saved bans; an absent file is none. A file that cannot be read is set
    /// aside (never deleted) and reported.
    pub fn load_bans(&self) -> Result<Vec<SavedBan>> {
        let file: Option<BansFile> = self.read(BANS_FILE)?;
        Ok(file.map(|f| f.bans).unwrap_or_default())
    }

    pub fn save_lists(&self, changes: &ListChanges) -> Result<()> {
        let changes = ListChanges {
            version: FORMAT_VERSION,
            ..changes.clone()
        };
        write_atomically(&self.dir.join(LISTS_FILE), &changes)
    }

    pub fn load_lists(&self) -> Result<ListChanges> {
        Ok(self.read(LISTS_FILE)?.unwrap_or_default())
    }

    /// Remembers the XDP mode, for a later run that adopts the pinned link.
    pub fn save_xdp_mode(&self, mode: &str) {
        if let Err(e) = write_atomically(&self.dir.join(MODE_FILE), &mode) {
            warn!("saving the XDP mode failed: {e:#}");
        }
    }

    pub fn load_xdp_mode(&self) -> String {
        std::fs::read_to_string(self.dir.join(MODE_FILE))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_else(|| "unknown".to_string())
    }

    fn read<T: DeserializeOwned + Versioned>(&self, name: &str) -> Result<Option<T>> {
        let path = self.dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let parsed = serde_json::from_str::<T>(&text)
            .map_err(anyhow::Error::from)
            .and_then(|value| match value.version() {
                FORMAT_VERSION => Ok(value),
                other => bail!("format version {other}, this sipguard reads {FORMAT_VERSION}"),
            });
        match parsed {
            Ok(value) => Ok(Some(value)),
            Err(e) => {
                let aside = path.with_extension(format!("unreadable-{}", unix_now()));
                std::fs::rename(&path, &aside)
                    .with_context(|| format!("setting aside {}", path.display()))?;
                warn!(
                    "{} cannot be used ({e}); kept as {} and starting without it",
                    path.display(),
                    aside.display()
                );
                Ok(None)
            }
        }
    }
}

trait Versioned {
    fn version(&self) -> u32;
}

impl Versioned for BansFile {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Versioned for ListChanges {
    fn version(&self) -> u32 {
        self.version
    }
}

/// Temporary file, fsync, rename over the old one, fsync the directory.
pub fn write_atomically(path: &Path, value: &impl Serialize) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().context("a state file needs a directory")?;
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(value)?;
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::live::ListEntry;
    use ipnet::IpNet;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sipguard-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn bans_round_trip_with_remaining_time() {
        let rules = vec!["a".to_string(), "sip-udp-40-per-2s".to_string()];
        let saved_at = Clocks {
            monotonic_ns: 1_000 * 1_000_000_000,
            unix: 1_800_000_000,
        };
        let key = SourceKey::from_ipv4([198, 51, 100, 9]);
        let ban = BanEntry {
            created_ns: 900 * 1_000_000_000,
            expires_ns: 4_600 * 1_000_000_000, // 1 h after created, 3600 s left
            reason: BanReason::RateLimit as u16,
            rule: 1,
            dropped: 7,
            ..BanEntry::default()
        };
        let saved = SavedBan::from_entry(&key, &ban, &rules, String::new(), saved_at);
        assert_eq!(saved.expires_unix, Some(1_800_003_600));
        assert_eq!(saved.rule.as_deref(), Some("sip-udp-40-per-2s"));

        // A reboot: the monotonic clock restarted; 600 s of wall time passed.
        let booted = Clocks {
            monotonic_ns: 20 * 1_000_000_000,
            unix: 1_800_000_600,
        };
        let dir = StateDir::open(&temp_dir("bans")).unwrap();
        dir.save_bans(vec![saved]).unwrap();
        let loaded = dir.load_bans().unwrap();
        // The rule list changed order: the name still finds the rule.
        let new_rules = vec!["sip-udp-40-per-2s".to_string()];
        let (restored_key, restored) = loaded[0].to_entry(&new_rules, booted).unwrap();
        assert_eq!(restored_key, key);
        assert_eq!(restored.rule, 0);
        assert_eq!(restored.dropped, 7);
        assert_eq!(
            restored.expires_ns,
            (20 + 3_000) * 1_000_000_000,
            "3000 s left"
        );
        // After it has run out, nothing is restored.
        let late = Clocks {
            monotonic_ns: 0,
            unix: 1_800_003_600,
        };
        assert!(loaded[0].to_entry(&new_rules, late).is_none());
        let _ = std::fs::remove_dir_all(dir.path());
    }

    #[test]
    fn permanent_bans_stay_permanent() {
        let clocks = Clocks::now();
        let key = SourceKey::from_ipv4([192, 0, 2, 1]);
        let ban = BanEntry {
            created_ns: clocks.monotonic_ns,
            expires_ns: BAN_FOREVER,
            reason: BanReason::Manual as u16,
            rule: NO_RULE,
            ..BanEntry::default()
        };
        let saved = SavedBan::from_entry(&key, &ban, &[], "fraud".into(), clocks);
        assert_eq!(saved.expires_unix, None);
        let (_, restored) = saved.to_entry(&[], clocks).unwrap();
        assert_eq!(restored.expires_ns, BAN_FOREVER);
        assert_eq!(restored.reason, BanReason::Manual as u16);
    }

    #[test]
    fn an_unreadable_file_is_set_aside_not_lost() {
        let dir = StateDir::open(&temp_dir("corrupt")).unwrap();
        std::fs::write(dir.path().join(BANS_FILE), "{ not json").unwrap();
        assert!(dir.load_bans().unwrap().is_empty());
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            kept.iter().any(|n| n.starts_with("bans.unreadable-")),
            "{kept:?}"
        );
        let _ = std::fs::remove_dir_all(dir.path());
    }

    #[test]
    fn list_changes_round_trip() {
        let dir = StateDir::open(&temp_dir("lists")).unwrap();
        assert_eq!(dir.load_lists().unwrap(), ListChanges::default());
        let mut changes = ListChanges::default();
        let net: IpNet = "192.0.2.0/24".parse().unwrap();
        changes.allow_added.insert(
            net,
            ListEntry {
                cidr: net.to_string(),
                services: vec!["sip".into()],
                comment: "office".into(),
                origin: "runtime".into(),
            },
        );
        changes.deny_removed.push("203.0.113.0/24".parse().unwrap());
        dir.save_lists(&changes).unwrap();
        let loaded = dir.load_lists().unwrap();
        assert_eq!(loaded.allow_added, changes.allow_added);
        assert_eq!(loaded.deny_removed, changes.deny_removed);
        assert!(!dir.path().join("lists.tmp").exists());
        let _ = std::fs::remove_dir_all(dir.path());
    }
}
