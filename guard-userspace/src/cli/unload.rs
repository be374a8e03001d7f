//! `sipguard unload --iface IFACE`: removes the pins of a stopped daemon.
use std::path::Path;

use super::{output::Output, CliError};
use crate::{
    control::client::{Client, ClientError},
    kernel::pins::Pins,
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
    match Pins::at(pin_dir, iface).remove_all() {
        Ok(true) => out.line(format_args!(
            "removed the pins of {iface}: the guard is detached and its maps freed"
        )),
        Ok(false) => Err(CliError::NotFound(format!(
            "nothing is pinned for {iface} under {}",
            pin_dir.display()
        ))),
        Err(e) => Err(CliError::Failed(format!("{e:#}"))),
    }
}
