//! `sipguard unload --iface IFACE`: removes the pins of a stopped daemon.
use std::path::Path;

use super::{output::Output, CliError};
use crate::{
    control::client::{Client, ClientError},
    kernel::pins,
};

pub fn unload(
    client: &Client,
    iface: &str,
    pin_dir: &Path,
    out: &mut Output,
) -> Result<(), CliError> {
    // Any answer at all means a daemon runs.
    if matches!(client.status(), Ok(_) | Err(ClientError::Daemon(_))) {
        return Err(CliError::Failed(format!(
            "a daemon still answers on {}: stop it first",
            client.socket.display()
        )));
    }
    match pins::unload(pin_dir, iface) {
        Ok(pins::Unloaded::Removed(dir)) => out.line(format_args!(
            "removed the pins of {iface} in this network namespace ({}): the guard is \
             detached and its maps freed",
            dir.display()
        )),
        Ok(pins::Unloaded::Nothing) => Err(CliError::NotFound(format!(
            "nothing is pinned for {iface} under {}",
            pin_dir.display()
        ))),
        Err(e) => Err(CliError::Failed(format!("{e:#}"))),
    }
}
