//! The state directory (default /var/lib/sipguard): bans, the operator's
//! runtime list changes and the learned peers, so that they outlive a
//! reboot (when the pinned maps are gone) and a restart (the controller's
//! own memory of peers). Every write is atomic: temporary file, fsync, rename, fsync of
//! the directory. A reader sees the old file or the new one, never a mix.
use std::{
    io::Write,
    net::Ipv6Addr,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use guard_common::{BanEntry, BanReason, SourceKey, BAN_FOREVER, NO_RULE};
use prometheus_client::metrics::counter::Counter;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tracing::{info, warn};

use crate::kernel::bans;
pub use crate::policy::live::ListChanges;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/sipguard";
const BANS_FILE: &str = "bans.json";
/// Bans made and removed since `bans.json` was last written, one JSON
/// line each ([`JournalLine`]).
const JOURNAL_FILE: &str = "bans.journal";
const LISTS_FILE: &str = "lists.json";
const MODE_FILE: &str = "xdp_mode.json";
/// The config file last put in force by a confirmed `sipguard apply`.
const APPLIED_FILE: &str = "applied.json";
const FLEET_FILE: &str = "fleet.json";
const PEERS_FILE: &str = "peers.json";
/// Each feed's cursor and, for APIBan, when each address was last listed.
const FEEDS_FILE: &str = "feeds.json";
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

/// `applied.json`: the file a confirmed `apply` put in force, over the
/// `--config` the daemon then ran with.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct AppliedFile {
    version: u32,
    path: PathBuf,
    over: Option<PathBuf>,
}

/// One line of `bans.journal`: a ban made, or a ban lifted (by the
/// operator, or a fleet decision deleted) that `bans.json` may still hold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum JournalLine {
    Ban(SavedBan),
    Removed {
        /// The ban map's key, as [`SavedBan::key`].
        removed: Ipv6Addr,
    },
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct BansFile {
    version: u32,
    bans: Vec<SavedBan>,
}

/// One entry of the fleet deny set as saved: a network and who holds it
/// (`crowdsec`, or `feed:NAME`), with its words for `explain`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedFleetEntry {
    pub net: ipnet::IpNet,
    pub holder: String,
    pub detail: String,
    /// When the network entered the set (UNIX seconds; 0: unknown).
    #[serde(default)]
    pub since_unix: u64,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct FleetFile {
    version: u32,
    entries: Vec<SavedFleetEntry>,
}

/// One learned peer as saved: its end in wall-clock time, so that a peer
/// comes back after a reboot with the time it had left.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedPeer {
    /// The source as the SIP tracker keys it (an IPv6 source: its prefix).
    pub source: std::net::IpAddr,
    /// `registered`, `provider` or `call`.
    pub kind: String,
    pub live_users: u32,
    /// Usernames of its live registrations (capped).
    #[serde(default)]
    pub users: Vec<String>,
    pub expires_unix: u64,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct PeersFile {
    version: u32,
    peers: Vec<SavedPeer>,
}

/// A feed's state as saved, beside its entries in `fleet.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SavedFeed {
    /// `apiban` or `list`: a feed whose kind changed starts afresh.
    pub kind: String,
    /// The feed's source (without keys): a feed pointed elsewhere starts afresh.
    #[serde(default)]
    pub from: String,
    /// When the list in force was fetched (UNIX seconds).
    #[serde(default)]
    pub last_success_unix: Option<u64>,
    /// APIBan: the ID to ask with next.
    #[serde(default)]
    pub cursor: Option<String>,
    /// A list's validators, for a conditional GET (304: unchanged).
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub last_modified: Option<String>,
    /// APIBan: each network and when APIBan last listed it (UNIX seconds).
    #[serde(default)]
    pub seen: Vec<(ipnet::IpNet, u64)>,
}

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct FeedsFile {
    version: u32,
    feeds: std::collections::BTreeMap<String, SavedFeed>,
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
    /// An IPv6 key is masked to `ipv6_prefix`, the prefix the XDP program
    /// looks sources up by: a key with host bits (a hand-edited file, or
    /// another prefix setting) would be listed but never match.
    pub fn to_entry(
        &self,
        rule_names: &[String],
        clocks: Clocks,
        ipv6_prefix: u8,
    ) -> Option<(SourceKey, BanEntry)> {
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
        let key = SourceKey {
            addr: self.key.octets(),
        };
        let key = match key.ipv4() {
            Some(_) => key,
            None => SourceKey::from_ipv6(key.addr, ipv6_prefix),
        };
        Some((key, entry))
    }
}

/// The state directory of the guard on `iface` in `netns`: `<root>/<iface>`
/// in PID 1's namespace (the layout of single-namespace installs), else a
/// directory of that namespace's own under it.
pub fn guard_dir(root: &Path, iface: &str, netns: &crate::kernel::netns::Netns) -> PathBuf {
    let dir = root.join(iface);
    match netns.state_key() {
        Some(key) => dir.join(key),
        None => dir,
    }
}

/// The state directory and its files.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
    /// Saves that failed (the `sipguard_state_save_failures_total` series).
    save_failures: Counter,
}

/// Why a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} {path}: {cause}")]
    Io {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {cause}")]
    Input {
        path: PathBuf,
        cause: FileInputError,
    },
    #[error("not a state file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("format version {0}, this sipguard reads {FORMAT_VERSION}")]
    Version(u32),
    #[error("a state file needs a directory: {0}")]
    NoDirectory(PathBuf),
}

pub type Result<T, E = StateError> = std::result::Result<T, E>;

impl StateDir {
    /// Creates the directory (root-only) if needed and clears temporary
    /// files an interrupted save left. A directory that cannot be created
    /// or written (read-only, full) does not stop the guard: it says loudly
    /// that changes will not outlive it, and each failed save is counted.
    pub fn open(dir: &Path) -> Result<StateDir> {
        use std::os::unix::fs::DirBuilderExt;
        let state = StateDir {
            dir: dir.to_path_buf(),
            save_failures: Counter::default(),
        };
        let created = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
        if let Err(e) = created.and_then(|()| state.probe()) {
            warn!(
                "THE STATE DIRECTORY {} IS NOT WRITABLE ({e}): bans and list changes made \
                 from now on will not outlive a reboot",
                dir.display()
            );
        }
        state.remove_temporary_files();
        Ok(state)
    }

    /// Whether a file can be made in the directory.
    fn probe(&self) -> std::io::Result<()> {
        let probe = self.dir.join(".write-probe");
        std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe))
    }

    fn remove_temporary_files(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.extension().is_some_and(|x| x == "tmp") {
                match std::fs::remove_file(&path) {
                    Ok(()) => info!("removed {}, left by an interrupted save", path.display()),
                    Err(e) => warn!("cannot remove {}: {e}", path.display()),
                }
            }
        }
    }

    /// Counts failed saves in `counter` (the metrics' series) from now on.
    pub fn count_failures_in(&mut self, counter: Counter) {
        counter.inc_by(self.save_failures.get());
        self.save_failures = counter;
    }

    pub fn save_failures(&self) -> u64 {
        self.save_failures.get()
    }

    fn write(&self, path: &Path, value: &impl Serialize) -> Result<()> {
        let written = write_atomically(path, value);
        if written.is_err() {
            self.save_failures.inc();
        }
        written
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn save_bans(&self, bans: Vec<SavedBan>) -> Result<()> {
        let file = BansFile {
            version: FORMAT_VERSION,
            bans,
        };
        self.write(&self.dir.join(BANS_FILE), &file)
    }

    /// Appends bans to the journal before they are answered, so that a
    /// daemon killed within the save interval loses none of them, nor their
    /// details. One append, no fsync: the page cache outlives the process
    /// (a power cut still loses at most the last save interval). Cleared by
    /// [`StateDir::clear_journal`] once `bans.json` holds them; the caller
    /// keeps appends and that clearing apart (see `Runtime::save_bans`).
    pub fn journal_bans(&self, bans: &[SavedBan]) -> Result<()> {
        let lines: Vec<JournalLine> = bans.iter().cloned().map(JournalLine::Ban).collect();
        self.append_journal(&lines)
    }

    /// Appends lifted bans (ban-map keys) to the journal before they are
    /// answered: `bans.json` may still hold them, and a ban the operator
    /// lifted must not come back after a kill or a reboot.
    pub fn journal_removals(&self, keys: &[SourceKey]) -> Result<()> {
        let lines: Vec<JournalLine> = keys
            .iter()
            .map(|key| JournalLine::Removed {
                removed: Ipv6Addr::from(key.addr),
            })
            .collect();
        self.append_journal(&lines)
    }

    fn append_journal(&self, lines: &[JournalLine]) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut text = Vec::new();
        for line in lines {
            serde_json::to_writer(&mut text, line)?;
            text.push(b'\n');
        }
        let path = self.dir.join(JOURNAL_FILE);
        let written = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(&text));
        if written.is_err() {
            self.save_failures.inc();
        }
        written.map_err(|cause| StateError::Io {
            what: "appending to",
            path,
            cause,
        })
    }

    /// Empties the journal: `bans.json` was just written with all it held.
    pub fn clear_journal(&self) {
        let path = self.dir.join(JOURNAL_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!("cannot clear {}: {e}", path.display()),
        }
    }

    /// Keeps bans that could not be restored (more than the ban map holds)
    /// in a file of their own, in the format of `bans.json`.
    pub fn set_aside_bans(&self, bans: Vec<SavedBan>) -> Result<PathBuf> {
        let path = self.dir.join(format!("bans.left-out-{}.json", unix_now()));
        let file = BansFile {
            version: FORMAT_VERSION,
            bans,
        };
        self.write(&path, &file)?;
        Ok(path)
    }

    /// Saved bans, from a file no larger than `max_bans` bans can make; an
    /// absent file is none. A file that cannot be used is set aside (never
    /// deleted) and reported.
    pub fn load_bans(&self, max_bans: u32) -> Result<Vec<SavedBan>> {
        let file: Option<BansFile> = self.read(BANS_FILE, size_limit(max_bans))?;
        let mut bans = file.map(|f| f.bans).unwrap_or_default();
        self.replay_journal(max_bans, &mut bans);
        Ok(bans)
    }

    /// Applies the journal to the bans of `bans.json` in its order: a ban
    /// line replaces an earlier ban of the same key, a removal drops it. A
    /// line that cannot be read is skipped and reported; the journal stays
    /// until the next save.
    fn replay_journal(&self, max_bans: u32, bans: &mut Vec<SavedBan>) {
        let path = self.dir.join(JOURNAL_FILE);
        let bytes = match read_regular_file(&path, size_limit(max_bans)) {
            Ok(bytes) => bytes,
            Err(FileInputError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => return warn!("{} cannot be used: {e}", path.display()),
        };
        let (lines, bad) = parse_journal(&bytes);
        if bad > 0 {
            warn!("{}: skipped {bad} unreadable lines", path.display());
        }
        if lines.is_empty() {
            return;
        }
        let made = lines
            .iter()
            .filter(|l| matches!(l, JournalLine::Ban(_)))
            .count();
        info!(
            "{made} bans made and {} lifted since the last save, from {}",
            lines.len() - made,
            path.display()
        );
        // Slots keep the saved order; a removed ban leaves an empty one.
        let mut slots: Vec<Option<SavedBan>> = bans.drain(..).map(Some).collect();
        let mut at: std::collections::HashMap<Ipv6Addr, usize> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().map(|b| (b.key, i)))
            .collect();
        for line in lines {
            match line {
                JournalLine::Ban(ban) => match at.get(&ban.key) {
                    Some(&i) => slots[i] = Some(ban),
                    None => {
                        at.insert(ban.key, slots.len());
                        slots.push(Some(ban));
                    }
                },
                JournalLine::Removed { removed } => {
                    if let Some(&i) = at.get(&removed) {
                        slots[i] = None;
                    }
                }
            }
        }
        bans.extend(slots.into_iter().flatten());
    }

    pub fn save_lists(&self, changes: &ListChanges) -> Result<()> {
        let changes = ListChanges {
            version: FORMAT_VERSION,
            ..changes.clone()
        };
        self.write(&self.dir.join(LISTS_FILE), &changes)
    }

    /// The runtime list changes, from a file no larger than lists of
    /// `max_cidrs` entries (added and removed, allow and deny) can make.
    pub fn load_lists(&self, max_cidrs: u32) -> Result<ListChanges> {
        let entries = max_cidrs.saturating_mul(4);
        let changes: Option<ListChanges> = self.read(LISTS_FILE, size_limit(entries))?;
        Ok(changes.map(ListChanges::canonical).unwrap_or_default())
    }

    /// Remembers the config file a confirmed `apply` put in force in place
    /// of `over` (the daemon's `--config`), for the next start. Applying
    /// `over` itself again forgets it.
    pub fn save_applied(&self, path: &Path, over: Option<&Path>) -> Result<()> {
        let file = self.dir.join(APPLIED_FILE);
        if over == Some(path) {
            return match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    self.save_failures.inc();
                    Err(StateError::Io {
                        what: "removing",
                        path: file,
                        cause: e,
                    })
                }
                _ => Ok(()),
            };
        }
        let applied = AppliedFile {
            version: FORMAT_VERSION,
            path: path.to_path_buf(),
            over: over.map(Path::to_path_buf),
        };
        self.write(&file, &applied)
    }

    /// The config file to start with instead of `config` (the `--config`
    /// given now), if a confirmed `apply` put one in force over that same
    /// `--config`. A different `--config` wins: the operator changed it.
    pub fn load_applied(&self, config: Option<&Path>) -> Result<Option<PathBuf>> {
        let applied: Option<AppliedFile> = self.read(APPLIED_FILE, 1 << 16)?;
        Ok(applied
            .filter(|a| a.over.as_deref() == config)
            .map(|a| a.path))
    }

    pub fn save_fleet(&self, entries: Vec<SavedFleetEntry>) -> Result<()> {
        let file = FleetFile {
            version: FORMAT_VERSION,
            entries,
        };
        self.write(&self.dir.join(FLEET_FILE), &file)
    }

    /// The saved fleet deny set, from a file no larger than `max_entries`
    /// entries of each address family (and their holders) can make.
    pub fn load_fleet(&self, max_entries: u32) -> Result<Vec<SavedFleetEntry>> {
        let entries = max_entries.saturating_mul(4);
        let file: Option<FleetFile> = self.read(FLEET_FILE, size_limit(entries))?;
        Ok(file.map(|f| f.entries).unwrap_or_default())
    }

    pub fn save_peers(&self, peers: Vec<SavedPeer>) -> Result<()> {
        let file = PeersFile {
            version: FORMAT_VERSION,
            peers,
        };
        self.write(&self.dir.join(PEERS_FILE), &file)
    }

    /// The saved learned peers, from a file no larger than `max_peers`
    /// peers can make; an absent file is none.
    pub fn load_peers(&self, max_peers: u32) -> Result<Vec<SavedPeer>> {
        let file: Option<PeersFile> = self.read(PEERS_FILE, size_limit(max_peers))?;
        Ok(file.map(|f| f.peers).unwrap_or_default())
    }

    pub fn save_feeds(&self, feeds: &std::collections::BTreeMap<String, SavedFeed>) -> Result<()> {
        let file = FeedsFile {
            version: FORMAT_VERSION,
            feeds: feeds.clone(),
        };
        self.write(&self.dir.join(FEEDS_FILE), &file)
    }

    /// Each feed's saved state, from a file no larger than `max_entries`
    /// APIBan entries (all feeds together) can make.
    pub fn load_feeds(
        &self,
        max_entries: u32,
    ) -> Result<std::collections::BTreeMap<String, SavedFeed>> {
        let file: Option<FeedsFile> = self.read(FEEDS_FILE, size_limit(max_entries))?;
        Ok(file.map(|f| f.feeds).unwrap_or_default())
    }

    /// Remembers the XDP mode, for a later run that adopts the pinned link.
    pub fn save_xdp_mode(&self, mode: &str) {
        if let Err(e) = self.write(&self.dir.join(MODE_FILE), &mode) {
            warn!("saving the XDP mode failed: {e:#}");
        }
    }

    pub fn load_xdp_mode(&self) -> String {
        std::fs::read_to_string(self.dir.join(MODE_FILE))
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_else(|| "unknown".to_string())
    }

    fn read<T: DeserializeOwned + Versioned>(&self, name: &str, limit: u64) -> Result<Option<T>> {
        let path = self.dir.join(name);
        let bytes = match read_regular_file(&path, limit) {
            Ok(bytes) => Ok(bytes),
            Err(FileInputError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            // Unreadable (permissions, I/O): an error, the file stays.
            Err(FileInputError::Io(cause)) => {
                return Err(StateError::Io {
                    what: "reading",
                    path,
                    cause,
                })
            }
            // Not a regular file, or too large: set aside.
            Err(cause) => Err(StateError::Input {
                path: path.clone(),
                cause,
            }),
        };
        let parsed = bytes.and_then(|bytes| decode::<T>(&bytes));
        match parsed {
            Ok(value) => Ok(Some(value)),
            Err(e) => {
                set_aside(&path, &e);
                Ok(None)
            }
        }
    }
}

/// A state file's contents, checked for this sipguard's format version.
fn decode<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T> {
    let value = serde_json::from_slice::<T>(bytes)?;
    match value.version() {
        FORMAT_VERSION => Ok(value),
        other => Err(StateError::Version(other)),
    }
}

/// The bans in a `bans.json`'s bytes (what [`StateDir::load_bans`] reads),
/// without touching the file system: for the fuzz targets and tests.
pub fn parse_bans(bytes: &[u8]) -> Result<Vec<SavedBan>> {
    decode::<BansFile>(bytes).map(|f| f.bans)
}

/// The lines of a journal's bytes, and how many could not be read (a
/// line cut short by a full disk, say).
pub fn parse_journal(bytes: &[u8]) -> (Vec<JournalLine>, usize) {
    let mut lines = Vec::new();
    let mut bad = 0;
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice(line) {
            Ok(line) => lines.push(line),
            Err(_) => bad += 1,
        }
    }
    (lines, bad)
}

/// The list changes in a `lists.json`'s bytes, in canonical form (what
/// [`StateDir::load_lists`] reads), without touching the file system.
pub fn parse_lists(bytes: &[u8]) -> Result<ListChanges> {
    decode::<ListChanges>(bytes).map(ListChanges::canonical)
}

/// The most bytes a state file of `entries` entries may take: far more
/// than any real one (an entry is a few hundred bytes), far less than a
/// runaway or hostile file.
fn size_limit(entries: u32) -> u64 {
    const PER_ENTRY: u64 = 4096;
    const SLACK: u64 = 1 << 20;
    u64::from(entries) * PER_ENTRY + SLACK
}

/// Keeps an unusable state file as `*.unreadable-TIME` (never deleted) and
/// starts without it; in a read-only directory it stays where it is, and
/// start-up goes on all the same.
fn set_aside(path: &Path, why: &StateError) {
    let aside = path.with_extension(format!("unreadable-{}", unix_now()));
    match std::fs::rename(path, &aside) {
        Ok(()) => warn!(
            "{} cannot be used ({why}); kept as {} and starting without it",
            path.display(),
            aside.display()
        ),
        Err(e) => warn!(
            "{} cannot be used ({why}), nor set aside ({e}): starting without it; \
             it stays where it is",
            path.display()
        ),
    }
}

trait Versioned {
    fn version(&self) -> u32;
}

impl Versioned for AppliedFile {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Versioned for BansFile {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Versioned for FleetFile {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Versioned for PeersFile {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Versioned for FeedsFile {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Versioned for ListChanges {
    fn version(&self) -> u32 {
        self.version
    }
}

/// Why a file input was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileInputError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a regular file (a {0}): refused")]
    NotRegular(&'static str),
    #[error("{size} bytes, more than the {limit} this file may hold: refused")]
    TooLarge { size: u64, limit: u64 },
}

/// Reads a regular file of at most `limit` bytes. It is opened without
/// blocking (a FIFO with no writer would block the open) and checked on the
/// open descriptor, so that nothing can be swapped in between; the read
/// stops at the limit even if the file grows meanwhile.
pub fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, FileInputError> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if kind.is_fifo() {
            "FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "device"
        } else if kind.is_dir() {
            "directory"
        } else if kind.is_socket() {
            "socket"
        } else {
            "special file"
        };
        return Err(FileInputError::NotRegular(what));
    }
    if meta.len() > limit {
        return Err(FileInputError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileInputError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Temporary file, fsync, rename over the old one, fsync the directory.
pub fn write_atomically(path: &Path, value: &impl Serialize) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| StateError::NoDirectory(path.to_path_buf()))?;
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
    let written = write();
    if written.is_err() {
        // A full disk must not keep a half-written file around.
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|cause| StateError::Io {
        what: "writing",
        path: path.to_path_buf(),
        cause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{kernel::maps::NetList, policy::live::ListEntry};
    use ipnet::IpNet;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sipguard-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn an_unusable_state_file_is_a_typed_error() {
        let e = parse_bans(br#"{"version": 99, "bans": []}"#).unwrap_err();
        assert!(matches!(e, StateError::Version(99)), "{e}");
        assert!(matches!(parse_lists(b"{"), Err(StateError::Json(_))));
        let e = write_atomically(Path::new("/"), &1).unwrap_err();
        assert!(matches!(e, StateError::NoDirectory(_)), "{e}");
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
        let loaded = dir.load_bans(1000).unwrap();
        // The rule list changed order: the name still finds the rule.
        let new_rules = vec!["sip-udp-40-per-2s".to_string()];
        let (restored_key, restored) = loaded[0].to_entry(&new_rules, booted, 64).unwrap();
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
        assert!(loaded[0].to_entry(&new_rules, late, 64).is_none());
        let _ = std::fs::remove_dir_all(dir.path());
    }

    fn manual_ban(last: u8, detail: &str, expires_unix: u64) -> SavedBan {
        SavedBan {
            key: Ipv6Addr::from(SourceKey::from_ipv4([198, 51, 100, last]).addr),
            reason: "manual".into(),
            rule: None,
            detail: detail.into(),
            created_unix: 1_800_000_000,
            expires_unix: Some(expires_unix),
            dropped: 0,
        }
    }

    #[test]
    fn bans_journaled_since_the_last_save_are_loaded_with_it() {
        let dir = StateDir::open(&temp_dir("journal")).unwrap();
        dir.save_bans(vec![manual_ban(1, "saved", 1_800_003_600)])
            .unwrap();
        // Made after that save, then the daemon was killed: only journaled.
        dir.journal_bans(&[manual_ban(2, "fraud", 1_800_007_200)])
            .unwrap();
        dir.journal_bans(&[manual_ban(1, "again", 1_800_010_800)])
            .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap()
            .write_all(b"{\"key\": \"::ffff:198.51.1")
            .unwrap();
        let loaded = dir.load_bans(1000).unwrap();
        assert_eq!(
            loaded,
            vec![
                manual_ban(1, "again", 1_800_010_800),
                manual_ban(2, "fraud", 1_800_007_200)
            ],
            "a later line replaces a ban of the same key; a cut line is skipped"
        );
        // A save holds them all: the journal goes.
        dir.save_bans(loaded.clone()).unwrap();
        dir.clear_journal();
        assert!(!dir.path().join(JOURNAL_FILE).exists());
        assert_eq!(dir.load_bans(1000).unwrap(), loaded);
        let _ = std::fs::remove_dir_all(dir.path());
    }

    #[test]
    fn bans_lifted_since_the_last_save_stay_lifted() {
        let dir = StateDir::open(&temp_dir("journal-removed")).unwrap();
        let key = |last| SourceKey::from_ipv4([198, 51, 100, last]);
        dir.save_bans(vec![
            manual_ban(1, "kept", 1_800_003_600),
            manual_ban(2, "customer", 1_800_003_600),
        ])
        .unwrap();
        // The operator lifts a saved ban and one made since the save, then
        // the daemon is killed before the next save.
        dir.journal_removals(&[key(2)]).unwrap();
        dir.journal_bans(&[manual_ban(3, "typo", 1_800_007_200)])
            .unwrap();
        dir.journal_removals(&[key(3), key(9)]).unwrap();
        assert_eq!(
            dir.load_bans(1000).unwrap(),
            vec![manual_ban(1, "kept", 1_800_003_600)],
            "a lifted ban does not come back; lifting an unknown key changes nothing"
        );
        // Banned again after the removal: the later line wins.
        dir.journal_bans(&[manual_ban(2, "again", 1_800_010_800)])
            .unwrap();
        assert_eq!(
            dir.load_bans(1000).unwrap(),
            vec![
                manual_ban(1, "kept", 1_800_003_600),
                manual_ban(2, "again", 1_800_010_800)
            ]
        );
        let _ = std::fs::remove_dir_all(dir.path());
    }

    #[test]
    fn a_confirmed_apply_is_started_with_only_over_the_same_config() {
        let dir = StateDir::open(&temp_dir("applied")).unwrap();
        let (a, b) = (Path::new("/etc/a.toml"), Path::new("/etc/b.toml"));
        assert_eq!(dir.load_applied(Some(a)).unwrap(), None);
        dir.save_applied(b, Some(a)).unwrap();
        assert_eq!(dir.load_applied(Some(a)).unwrap(), Some(b.to_path_buf()));
        // The operator started it with another --config: that one wins.
        assert_eq!(dir.load_applied(Some(b)).unwrap(), None);
        assert_eq!(dir.load_applied(None).unwrap(), None);
        // Applying --config's own file again forgets the other.
        dir.save_applied(a, Some(a)).unwrap();
        assert_eq!(dir.load_applied(Some(a)).unwrap(), None);
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
        let (_, restored) = saved.to_entry(&[], clocks, 64).unwrap();
        assert_eq!(restored.expires_ns, BAN_FOREVER);
        assert_eq!(restored.reason, BanReason::Manual as u16);
    }

    #[test]
    fn an_unreadable_file_is_set_aside_not_lost() {
        let dir = StateDir::open(&temp_dir("corrupt")).unwrap();
        std::fs::write(dir.path().join(BANS_FILE), "{ not json").unwrap();
        assert!(dir.load_bans(1000).unwrap().is_empty());
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
    fn only_regular_files_within_the_limit_are_read() {
        let dir = temp_dir("inputs");
        std::fs::create_dir_all(&dir).unwrap();
        let regular = dir.join("ok.toml");
        std::fs::write(&regular, "[guard]\n").unwrap();
        assert_eq!(read_regular_file(&regular, 100).unwrap(), b"[guard]\n");

        // A FIFO with no writer: refused at once, not waited on.
        let fifo = dir.join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let refused = read_regular_file(&fifo, 100).unwrap_err();
        assert!(
            matches!(refused, FileInputError::NotRegular("FIFO")),
            "{refused}"
        );

        let zero = read_regular_file(Path::new("/dev/zero"), 100).unwrap_err();
        assert!(
            matches!(zero, FileInputError::NotRegular("device")),
            "{zero}"
        );
        let directory = read_regular_file(&dir, 100).unwrap_err();
        assert!(matches!(directory, FileInputError::NotRegular("directory")));

        // A huge (sparse) file is refused by its size, unread.
        let huge = dir.join("huge");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let too_large = read_regular_file(&huge, 16 << 20).unwrap_err();
        assert!(
            matches!(too_large, FileInputError::TooLarge { .. }),
            "{too_large}"
        );
        assert!(
            too_large.to_string().contains("1099511627776 bytes"),
            "{too_large}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_oversized_or_special_state_file_is_set_aside() {
        let dir = StateDir::open(&temp_dir("oversized")).unwrap();
        let bans = dir.path().join(BANS_FILE);
        std::fs::File::create(&bans)
            .unwrap()
            .set_len(size_limit(10) + 1)
            .unwrap();
        assert!(dir.load_bans(10).unwrap().is_empty());
        assert!(!bans.exists(), "set aside");
        std::os::unix::fs::symlink("/dev/zero", dir.path().join(LISTS_FILE)).unwrap();
        assert_eq!(dir.load_lists(10).unwrap(), ListChanges::default());
        let kept = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(kept, 2, "both kept aside");
        let _ = std::fs::remove_dir_all(dir.path());
    }

    #[test]
    fn restored_ipv6_ban_keys_are_masked_to_the_prefix() {
        let clocks = Clocks::now();
        let saved = SavedBan {
            key: "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap(),
            reason: "manual".into(),
            rule: None,
            detail: String::new(),
            created_unix: clocks.unix,
            expires_unix: None,
            dropped: 0,
        };
        let (key, _) = saved.to_entry(&[], clocks, 64).unwrap();
        assert_eq!(
            Ipv6Addr::from(key.addr),
            "2001:db8:1:2::".parse::<Ipv6Addr>().unwrap()
        );
        let (key, _) = saved.to_entry(&[], clocks, 48).unwrap();
        assert_eq!(
            Ipv6Addr::from(key.addr),
            "2001:db8:1::".parse::<Ipv6Addr>().unwrap()
        );
        // IPv4 (mapped) keys are whole addresses.
        let v4 = SavedBan {
            key: std::net::Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped(),
            ..saved
        };
        let (key, _) = v4.to_entry(&[], clocks, 64).unwrap();
        assert_eq!(key.ipv4(), Some([192, 0, 2, 7]));
    }

    #[test]
    fn list_entries_are_stored_and_removed_in_one_canonical_form() {
        let entry = |cidr: &str| ListEntry {
            cidr: cidr.into(),
            services: Vec::new(),
            comment: String::new(),
            origin: "runtime".into(),
        };
        let mut changes = ListChanges::default();
        let with_host_bits: IpNet = "10.98.0.77/24".parse().unwrap();
        let network: IpNet = "10.98.0.0/24".parse().unwrap();
        changes.record_add(NetList::Deny, with_host_bits, entry("10.98.0.77/24"));
        assert_eq!(changes.deny_added.keys().collect::<Vec<_>>(), [&network]);
        assert_eq!(changes.deny_added[&network].cidr, "10.98.0.0/24");
        changes.record_remove(NetList::Deny, network, false);
        assert!(changes.deny_added.is_empty());

        // A file of an earlier version, with host bits, is read canonically.
        let dir = StateDir::open(&temp_dir("canonical")).unwrap();
        let old = r#"{"version":1,"allow_added":{},"deny_added":{"10.98.0.77/24":
            {"cidr":"10.98.0.77/24","services":[],"comment":"","origin":"runtime"}},
            "allow_removed":["192.0.2.9/24"],"deny_removed":[]}"#;
        std::fs::write(dir.path().join(LISTS_FILE), old).unwrap();
        let loaded = dir.load_lists(100).unwrap();
        assert!(loaded.deny_added.contains_key(&network), "{loaded:?}");
        assert_eq!(
            loaded.allow_removed,
            ["192.0.2.0/24".parse::<IpNet>().unwrap()]
        );
        let _ = std::fs::remove_dir_all(dir.path());
    }

    #[test]
    fn failed_saves_are_counted_and_leave_no_temporary_file() {
        let dir = StateDir::open(&temp_dir("failing")).unwrap();
        // A directory where the file should be: the rename fails.
        std::fs::create_dir(dir.path().join(BANS_FILE)).unwrap();
        std::fs::write(dir.path().join(BANS_FILE).join("x"), "").unwrap();
        assert!(dir.save_bans(Vec::new()).is_err());
        assert!(dir.save_bans(Vec::new()).is_err());
        assert_eq!(dir.save_failures(), 2);
        assert!(!dir.path().join("bans.tmp").exists());
        let mut shared = dir.clone();
        let counter = Counter::default();
        shared.count_failures_in(counter.clone());
        assert_eq!(counter.get(), 2, "earlier failures carried over");

        // Leftovers of an interrupted save are cleared at the next open.
        std::fs::write(dir.path().join("lists.tmp"), "{").unwrap();
        let reopened = StateDir::open(dir.path()).unwrap();
        assert!(!reopened.path().join("lists.tmp").exists());
        let _ = std::fs::remove_dir_all(dir.path());
    }

    #[test]
    fn list_changes_round_trip() {
        let dir = StateDir::open(&temp_dir("lists")).unwrap();
        assert_eq!(dir.load_lists(1000).unwrap(), ListChanges::default());
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
        let loaded = dir.load_lists(1000).unwrap();
        assert_eq!(loaded.allow_added, changes.allow_added);
        assert_eq!(loaded.deny_removed, changes.deny_removed);
        assert!(!dir.path().join("lists.tmp").exists());
        let _ = std::fs::remove_dir_all(dir.path());
    }

    #[test]
    fn parsing_bytes_reads_what_the_files_hold() {
        let text = r#"{"version":1,"bans":[{"key":"::ffff:192.0.2.7","reason":"manual",
            "rule":null,"detail":"x","created_unix":1,"expires_unix":null,"dropped":0}]}"#;
        let bans = parse_bans(text.as_bytes()).unwrap();
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].key, "::ffff:192.0.2.7".parse::<Ipv6Addr>().unwrap());
        let other = text.replace("\"version\":1", "\"version\":2");
        assert!(parse_bans(other.as_bytes()).is_err());
        assert!(parse_bans(b"\xff{").is_err());

        // Lists come back canonical: host bits cleared, as load_lists gives them.
        let lists = r#"{"version":1,"allow_added":{},"deny_added":{},
            "allow_removed":["10.1.2.3/8"],"deny_removed":[]}"#;
        let changes = parse_lists(lists.as_bytes()).unwrap();
        assert_eq!(
            changes.allow_removed,
            ["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
    }
}
