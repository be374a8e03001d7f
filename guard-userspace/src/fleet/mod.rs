//! sipguard in a fleet: CrowdSec's Local API (LAPI) as a source of bans,
//! and as the place sipguard reports its own bans to.
//! - `config`: the `[crowdsec]` section
//! - `http`: the HTTP client (reqwest, rustls) every fleet task shares
//! - `lapi`: the decision stream's wire format and client
//! - `decisions`: the decisions in force and the kernel changes they make
//! - `bouncer`: the pull loop that applies them
//! - `report`: a ban of sipguard's own as a LAPI alert, and the queue to it
//! - `watcher`: the machine's login and the task that pushes the alerts
//! - `feeds`: blocklist feeds (APIBan, lists) into the fleet deny set
//! - `health`: each source's health, for `status` and the metrics
pub mod bouncer;
pub mod config;
pub mod decisions;
pub mod feeds;
pub mod health;
pub mod http;
pub mod lapi;
pub mod report;
pub mod watcher;

use crate::policy::config::Config;

/// Why the fleet tasks cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The bouncer key cannot be had (its file is unreadable or empty).
    #[error("{0}")]
    Key(String),
    /// The watcher's password cannot be had (its file is unreadable or empty).
    #[error("{0}")]
    Machine(String),
    #[error(transparent)]
    Lapi(#[from] lapi::LapiError),
    #[error(transparent)]
    Watcher(#[from] watcher::WatcherError),
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error("{0}")]
    Feed(String),
    #[error("reading the feeds' saved state: {0}")]
    State(#[from] crate::state::StateError),
}

/// The fleet tasks a config asks for, checked before the guard attaches:
/// an unreadable key or password file stops the start with a clear error;
/// an unreachable LAPI does not (the tasks warn and retry).
pub struct Prepared {
    crowdsec: Option<Crowdsec>,
    /// Each feed with its key (APIBan's, read at start).
    feeds: Vec<(feeds::config::FeedSection, Option<String>)>,
    /// The feeds' saved cursors and times.
    saved_feeds: std::collections::BTreeMap<String, crate::state::SavedFeed>,
}

struct Crowdsec {
    section: config::CrowdsecSection,
    /// The bouncer's key (None: report only).
    key: Option<String>,
    /// The watcher's credentials (None: pull only).
    machine: Option<config::Machine>,
}

pub fn prepare(config: &Config) -> Result<Prepared, FleetError> {
    let crowdsec = match &config.crowdsec {
        Some(section) => Some(Crowdsec {
            key: section.api_key().map_err(FleetError::Key)?,
            machine: section.machine().map_err(FleetError::Machine)?,
            section: section.clone(),
        }),
        None => None,
    };
    let feeds = config
        .feeds
        .iter()
        .map(|feed| Ok((feed.clone(), feed.api_key().map_err(FleetError::Key)?)))
        .collect::<Result<Vec<_>, FleetError>>()?;
    Ok(Prepared {
        crowdsec,
        feeds,
        saved_feeds: Default::default(),
    })
}

impl Prepared {
    /// Whether a holder of the fleet deny set is still configured (saved
    /// entries of others are not restored).
    pub fn holds(&self, holder: &crate::runtime::fleet_set::Holder) -> bool {
        use crate::runtime::fleet_set::Holder;
        match holder {
            Holder::Crowdsec => self.crowdsec.as_ref().is_some_and(|c| {
                c.key.is_some() && c.section.scopes.contains(&config::Scope::Range)
            }),
            Holder::Feed(name) => self.feeds.iter().any(|(f, _)| f.name == *name),
        }
    }

    /// Takes up the feeds' saved state (those still configured).
    pub fn load_feed_state(
        &mut self,
        state: &crate::state::StateDir,
        max_entries: u32,
    ) -> Result<(), FleetError> {
        let mut saved = state.load_feeds(max_entries)?;
        saved.retain(|name, _| self.feeds.iter().any(|(f, _)| f.name == *name));
        self.saved_feeds = saved;
        Ok(())
    }

    /// Starts the bouncer, the watcher and the feeds (as configured) on the
    /// daemon's runtime; the watcher hears of every ban the guard makes
    /// from then on.
    pub fn spawn(
        self,
        runtime: &std::sync::Arc<crate::runtime::Runtime>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, FleetError> {
        let mut tasks = Vec::new();
        if let Some(Crowdsec {
            section,
            key,
            machine,
        }) = self.crowdsec
        {
            if let Some(machine) = machine {
                let counters = runtime.counters().clone();
                let (reports, queue) = report::channel(counters.clone());
                let watcher = watcher::Watcher::new(&section.lapi_url, machine, queue, counters)?;
                runtime.report_to(reports);
                tasks.push(tokio::spawn(watcher.run()));
            }
            if let Some(key) = key {
                let bouncer = bouncer::Bouncer::new(section, &key, std::sync::Arc::clone(runtime))?;
                tasks.push(tokio::spawn(bouncer.run()));
            }
        }
        if !self.feeds.is_empty() {
            let http = http::Http::new()?;
            let store = feeds::Store::new(self.saved_feeds);
            for (section, key) in self.feeds {
                let name = section.name.clone();
                let feed = feeds::Feed::new(
                    section,
                    key,
                    http.clone(),
                    std::sync::Arc::clone(runtime),
                    store.clone(),
                )
                .ok_or_else(|| FleetError::Feed(format!("feed {name}: no source")))?;
                tasks.push(tokio::spawn(feed.run()));
            }
        }
        Ok(tasks)
    }
}
