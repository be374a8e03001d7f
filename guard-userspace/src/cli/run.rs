//! `sipguard run`: the daemon.
use super::CliError;
use crate::daemon::{self, RunOptions};

pub fn run(options: RunOptions) -> Result<(), CliError> {
    // A bad config is reported before any kernel work.
    let prepared = daemon::prepare(&options).map_err(|e| CliError::BadConfig(format!("{e:#}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    runtime
        .block_on(daemon::run(options, prepared))
        .map_err(|e| CliError::Failed(format!("{e:#}")))
}
