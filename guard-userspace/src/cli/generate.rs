//! `sipguard completions SHELL` and `sipguard manpage`.
use clap::CommandFactory;

use super::{args::Cli, output::Output, CliError};

pub fn completions(shell: clap_complete::Shell, out: &mut Output) -> Result<(), CliError> {
    // Into memory first: clap_complete panics on a failed write.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "sipguard", &mut script);
    out.bytes(&script)
}

pub fn manpage(out: &mut Output) -> Result<(), CliError> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .section("8")
        .render(&mut page)
        .map_err(|e| CliError::Failed(format!("writing the man page: {e}")))?;
    out.bytes(&page)
}
