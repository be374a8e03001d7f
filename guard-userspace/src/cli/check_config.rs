//! `sipguard check-config FILE`.
use std::path::Path;

use super::{output::Output, CliError};
use crate::policy::{capacity, compile::CompiledPolicy, config::Config};

pub fn check_config(file: &Path, out: &mut Output) -> Result<(), CliError> {
    let config = Config::load(file).map_err(|e| CliError::BadConfig(e.to_string()))?;
    let policy = CompiledPolicy::compile(&config);
    let maps = capacity::footprint(&config).total();
    out.line(format_args!(
        "{}: OK ({} services, {} rate rules, {} allow and {} deny entries; the maps take \
         up to {} of memory)",
        file.display(),
        policy.services.len(),
        policy.rules.len(),
        policy.allow.len(),
        policy.deny.len(),
        capacity::human_bytes(maps)
    ))
}
