//! The `sipguard` command line.
use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use guard_userspace::{
    auth_tracker::LevelName,
    config::Config,
    daemon::{self, RunOptions},
    loader::XdpModeChoice,
    policy::CompiledPolicy,
};

/// XDP protection for IP PBXs: allow/deny lists, per-service access, SIP rate
/// limits with auto-blacklisting, all in the kernel's fast path.
#[derive(Parser)]
#[command(name = "sipguard", version, propagate_version = true)]
struct Cli {
    /// Log lines as text for people or JSON for log collectors.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the guard to an interface and run until SIGINT or SIGTERM.
    Run {
        /// Interface to protect (default: the default-route interface).
        #[arg(long)]
        iface: Option<String>,
        /// TOML configuration (default: the built-in policy).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// XDP attach mode: auto tries native (driver) first, then skb (generic).
        #[arg(long, value_enum, default_value_t = XdpModeChoice::Auto)]
        xdp_mode: XdpModeChoice,
        /// Count every verdict but pass all packets.
        #[arg(long)]
        monitor: bool,
        /// SIP authentication-failure level (overrides sip_auth.level):
        /// weak 20/10min ban 10min, normal 10/1h ban 1d, strong 5/6h ban 7d,
        /// paranoid 3/24h ban 30d.
        #[arg(long, value_enum)]
        level: Option<LevelName>,
        /// Serve Prometheus metrics here (overrides metrics.address; default 127.0.0.1:9477).
        #[arg(long, value_name = "ADDR:PORT")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Validate a configuration file and summarise it.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `sipguard manpage > /usr/share/man/man8/sipguard.8`.
    Manpage,
}

/// Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.
const EXIT_FAILURE: u8 = 1;
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run {
            iface,
            config,
            xdp_mode,
            monitor,
            level,
            metrics_addr,
        } => {
            let options = RunOptions {
                iface,
                config,
                xdp_mode,
                monitor,
                level,
                metrics_addr,
            };
            // A bad config is reported before any kernel work.
            if let Err(e) = daemon::prepare(&options) {
                eprintln!("sipguard: {e:#}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("sipguard: cannot start the runtime: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            };
            match runtime.block_on(daemon::run(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sipguard: {e:#}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "sipguard", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Manpage => {
            let page = clap_mangen::Man::new(Cli::command()).section("8");
            match page.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sipguard: writing the man page: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                let policy = CompiledPolicy::compile(&config);
                println!(
                    "{}: OK ({} services, {} rate rules, {} allow and {} deny entries)",
                    file.display(),
                    policy.services.len(),
                    policy.rules.len(),
                    policy.allow.len(),
                    policy.deny.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sipguard: {e}");
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
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
