//! The `sipguard` command line: arguments (`args`), one file per command,
//! and the output they print (`output`). Every command returns a
//! [`CliError`] whose kind decides the exit code.
use std::{io::Write, process::ExitCode};

use clap::Parser;

use crate::control::{
    client::{Client, ClientError},
    protocol::ErrorKind,
};

pub mod args;
mod ban;
mod bans;
mod check_config;
mod explain;
mod generate;
mod lists;
mod monitor;
pub mod output;
mod peers;
mod run;
mod status;
mod switch;
mod unload;

use args::{Cli, Command, LogFormat};
use output::Output;

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The reader of our output has gone: stop quietly.
    #[error("the output was closed")]
    ClosedPipe,
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    BadConfig(String),
    #[error("{0}")]
    NotFound(String),
    /// A command line that cannot be done as given.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// Exit codes: 0 success, 1 runtime failure, 2 bad configuration or
    /// usage, 3 not found, 4 refused (it would cut your SSH session).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::ClosedPipe => 0,
            CliError::Client(e) => e.exit_code(),
            CliError::BadConfig(_) => ErrorKind::BadConfig.exit_code(),
            CliError::Usage(_) => ErrorKind::BadRequest.exit_code(),
            CliError::NotFound(_) => ErrorKind::NotFound.exit_code(),
            CliError::Failed(_) => ErrorKind::Failed.exit_code(),
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let mut out = Output::stdout();
    let result = dispatch(cli, &mut out).and_then(|()| out.flush());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::ClosedPipe) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: a closed stderr must not turn an error into a panic.
            let _ = writeln!(std::io::stderr(), "sipguard: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn dispatch(cli: Cli, out: &mut Output) -> Result<(), CliError> {
    let client = Client::new(&cli.control_socket, cli.force);
    match cli.command {
        Command::Run {
            iface,
            config,
            xdp_mode,
            monitor,
            level,
            metrics_addr,
            state_dir,
            pin_dir,
            no_pin,
            require_pins,
        } => run::run(crate::daemon::RunOptions {
            control_socket: cli.control_socket,
            iface,
            config,
            xdp_mode,
            monitor,
            level,
            metrics_addr,
            state_dir,
            pin_dir: (!no_pin).then_some(pin_dir),
            require_pins,
        }),
        Command::Status { json } => status::status(&client, json, out),
        Command::Ban { action } => ban::ban(&client, action, out),
        Command::Bans { json, origin } => bans::bans(&client, json, origin.map(Into::into), out),
        Command::Monitor { state } => monitor::monitor(&client, state, out),
        Command::Explain {
            ip,
            json,
            user,
            dial,
        } => {
            let sip = (user.is_some() || dial.is_some())
                .then_some(crate::runtime::explain::SipQuery { user, dial });
            explain::explain(&client, ip, sip, json, out)
        }
        Command::Peers { json } => peers::peers(&client, json, out),
        Command::Allow { action } => {
            let request = action.into_request().map_err(CliError::Usage)?;
            lists::list_command(&client, request, out)
        }
        Command::Deny { action } => {
            let request = action.into_request().map_err(CliError::Usage)?;
            lists::list_command(&client, request, out)
        }
        Command::Completions { shell } => generate::completions(shell, out),
        Command::Manpage => generate::manpage(out),
        Command::Reload => switch::reload(&client, out),
        Command::Apply { file, confirm } => switch::apply(&client, &file, confirm, out),
        Command::Confirm => switch::confirm(&client, out),
        Command::Unload { iface, pin_dir } => unload::unload(&client, &iface, &pin_dir, out),
        Command::CheckConfig { file } => check_config::check_config(&file, out),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIPGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// "1h 30m" for a number of seconds.
fn human_seconds(seconds: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
}
