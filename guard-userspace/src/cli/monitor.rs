//! `sipguard monitor on|off`.
use super::{args::OnOff, output::Output, CliError};
use crate::control::client::Client;

pub fn monitor(client: &Client, state: OnOff, out: &mut Output) -> Result<(), CliError> {
    let switched = client.monitor(state == OnOff::On)?;
    if switched.monitor {
        out.line("monitor mode on: every verdict is counted, nothing is dropped")
    } else {
        out.line("monitor mode off: verdicts are enforced")
    }
}
