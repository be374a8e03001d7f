//! The `sipguard` command line.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{CommandFactory, Parser, Subcommand};
use guard_userspace::{
    control::{self, BanRow, Envelope, Request},
    daemon::{self, RunOptions},
    kernel::loader::XdpModeChoice,
    kernel::pins::{self, Pins},
    policy::compile::CompiledPolicy,
    policy::config::Config,
    policy::live::{ListEntry, Verdict},
    runtime::safety::Session,
    sip::tracker::LevelName,
    state,
};
use ipnet::IpNet;

/// XDP protection for IP PBXs: allow/deny lists, per-service access, SIP rate
/// limits with auto-blacklisting, all in the kernel's fast path.
#[derive(Parser)]
#[command(name = "sipguard", version, propagate_version = true)]
struct Cli {
    /// Log lines as text for people or JSON for log collectors.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The daemon's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    control_socket: PathBuf,
    /// Make a change even if it would cut your own SSH session.
    #[arg(long, global = true)]
    force: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum BanAction {
    /// Ban an address (an IPv6 address bans its prefix, /64 by default).
    Add {
        ip: IpAddr,
        /// How long ("10m", "1h", "7d"); without it, until removed.
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Why, shown by `sipguard bans`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban (exit code 3 if there is none).
    Remove { ip: IpAddr },
}

#[derive(Subcommand)]
enum AllowAction {
    /// Allow a network (CIDR, or an address for itself alone).
    Add {
        #[arg(value_parser = parse_net)]
        cidr: IpNet,
        /// Services it is trusted for (comma-separated; "all", the default, or "other").
        #[arg(long, value_delimiter = ',')]
        services: Vec<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Take a network off the allow list (exit code 3 if it is not on it).
    Remove {
        #[arg(value_parser = parse_net)]
        cidr: IpNet,
    },
    /// Show the allow list.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DenyAction {
    /// Deny a network (CIDR, or an address for itself alone).
    Add {
        #[arg(value_parser = parse_net)]
        cidr: IpNet,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Take a network off the deny list (exit code 3 if it is not on it).
    Remove {
        #[arg(value_parser = parse_net)]
        cidr: IpNet,
    },
    /// Show the deny list.
    List {
        #[arg(long)]
        json: bool,
    },
}

impl AllowAction {
    fn into_request(self) -> (Request, Option<bool>) {
        match self {
            AllowAction::Add {
                cidr,
                services,
                comment,
            } => (
                Request::AllowAdd {
                    cidr,
                    services,
                    comment,
                },
                None,
            ),
            AllowAction::Remove { cidr } => (Request::AllowRemove { cidr }, None),
            AllowAction::List { json } => (Request::AllowList, Some(json)),
        }
    }
}

impl DenyAction {
    fn into_request(self) -> (Request, Option<bool>) {
        match self {
            DenyAction::Add { cidr, comment } => (Request::DenyAdd { cidr, comment }, None),
            DenyAction::Remove { cidr } => (Request::DenyRemove { cidr }, None),
            DenyAction::List { json } => (Request::DenyList, Some(json)),
        }
    }
}

/// A CIDR, or an address meaning just itself (/32 or /128).
fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is neither a CIDR nor an IP address"))
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
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
        /// Bans and runtime allow/deny changes are saved here, under IFACE/.
        #[arg(long, value_name = "DIR", default_value = state::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The XDP link and maps are pinned here (a bpffs is mounted if absent),
        /// so the kernel keeps enforcing while no controller runs.
        #[arg(long, value_name = "DIR", default_value = pins::DEFAULT_PIN_ROOT)]
        pin_dir: PathBuf,
        /// Do not pin: the guard stops with this process.
        #[arg(long)]
        no_pin: bool,
    },
    /// Re-read the daemon's config file; a broken one changes nothing.
    Reload,
    /// Apply a config file to the running daemon.
    Apply {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Revert to the current policy unless `sipguard confirm` comes within
        /// this time ("60s", "5m").
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        confirm: Option<std::time::Duration>,
    },
    /// Keep the change that `apply --confirm` made.
    Confirm,
    /// Detach the guard from an interface and remove its pins (the daemon
    /// must be stopped). The saved bans stay in the state directory.
    Unload {
        #[arg(long)]
        iface: String,
        #[arg(long, value_name = "DIR", default_value = pins::DEFAULT_PIN_ROOT)]
        pin_dir: PathBuf,
    },
    /// Validate a configuration file and summarise it.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// The running daemon: interface, XDP mode, program, uptime, policy, counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Ban or unban a source by hand.
    Ban {
        #[command(subcommand)]
        action: BanAction,
    },
    /// The bans in force: source, reason, rule or evidence, since, remaining, drops.
    Bans {
        #[arg(long)]
        json: bool,
    },
    /// Monitor mode at run time: on counts every verdict but drops nothing.
    Monitor {
        #[arg(value_enum)]
        state: OnOff,
    },
    /// For each service, the verdict IP gets now and what decides it.
    Explain {
        ip: IpAddr,
        #[arg(long)]
        json: bool,
    },
    /// Change or show the allow list at run time.
    Allow {
        #[command(subcommand)]
        action: AllowAction,
    },
    /// Change or show the deny list at run time.
    Deny {
        #[command(subcommand)]
        action: DenyAction,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `sipguard manpage > /usr/share/man/man8/sipguard.8`.
    Manpage,
}

/// Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage,
/// 3 not found (no such ban), 4 refused (it would cut your SSH session).
const EXIT_FAILURE: u8 = 1;
const EXIT_BAD_CONFIG: u8 = 2;
const EXIT_NOT_FOUND: u8 = 3;
const EXIT_REFUSED: u8 = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let client = Client {
        socket: cli.control_socket.clone(),
        force: cli.force,
    };
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
        } => {
            let options = RunOptions {
                control_socket: cli.control_socket.clone(),
                iface,
                config,
                xdp_mode,
                monitor,
                level,
                metrics_addr,
                state_dir,
                pin_dir: (!no_pin).then_some(pin_dir),
            };
            // A bad config is reported before any kernel work.
            let prepared = match daemon::prepare(&options) {
                Ok(prepared) => prepared,
                Err(e) => {
                    eprintln!("sipguard: {e:#}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
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
            match runtime.block_on(daemon::run(options, prepared)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sipguard: {e:#}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        Command::Status { json } => client.talk(&Request::Status, json, print_status),
        Command::Ban { action } => {
            let request = match action {
                BanAction::Add {
                    ip,
                    duration,
                    reason,
                } => Request::BanAdd {
                    ip,
                    seconds: duration.map(|d| d.as_secs().max(1)),
                    reason,
                },
                BanAction::Remove { ip } => Request::BanRemove { ip },
            };
            client.talk(&request, false, |data| {
                let source = data["source"].as_str().unwrap_or("?");
                match data["for"].as_str() {
                    Some(duration) => println!("banned {source} for {duration}"),
                    None => println!("unbanned {source}"),
                }
            })
        }
        Command::Bans { json } => client.talk(&Request::Bans, json, print_bans),
        Command::Monitor { state } => {
            let on = state == OnOff::On;
            client.talk(&Request::Monitor { on }, false, |data| {
                if data["monitor"].as_bool().unwrap_or(false) {
                    println!("monitor mode on: every verdict is counted, nothing is dropped");
                } else {
                    println!("monitor mode off: verdicts are enforced");
                }
            })
        }
        Command::Explain { ip, json } => client.talk(&Request::Explain { ip }, json, print_explain),
        Command::Allow { action } => client.list_command(action.into_request()),
        Command::Deny { action } => client.list_command(action.into_request()),
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
        Command::Reload => client.talk(&Request::Reload, false, print_policy_change),
        Command::Apply { file, confirm } => {
            // The daemon runs elsewhere: it needs the whole path.
            let path = match std::fs::canonicalize(&file) {
                Ok(path) => path,
                Err(e) => {
                    eprintln!("sipguard: {}: {e}", file.display());
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            let request = Request::Apply {
                path,
                confirm_seconds: confirm.map(|d| d.as_secs().max(1)),
            };
            client.talk(&request, false, print_policy_change)
        }
        Command::Confirm => client.talk(&Request::Confirm, false, |data| {
            println!(
                "confirmed: the policy from {} stays",
                data["confirmed"].as_str().unwrap_or("?")
            )
        }),
        Command::Unload { iface, pin_dir } => unload(&client.socket, &iface, &pin_dir),
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

/// The CLI's side of the control socket.
struct Client {
    socket: PathBuf,
    force: bool,
}

impl Client {
    /// Sends a request to the daemon; prints its answer as JSON or with `human`.
    fn talk(&self, request: &Request, json: bool, human: fn(&serde_json::Value)) -> ExitCode {
        let envelope = Envelope {
            request: request.clone(),
            force: self.force,
            session: std::env::var("SSH_CLIENT")
                .ok()
                .and_then(|v| Session::from_ssh_client(&v)),
        };
        match control::send(&self.socket, &envelope) {
            Ok(response) if response.ok => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&response.data).unwrap_or_default()
                    );
                } else {
                    human(&response.data);
                }
                ExitCode::SUCCESS
            }
            Ok(response) => {
                eprintln!("sipguard: {}", response.error.unwrap_or_default());
                ExitCode::from(if response.not_found {
                    EXIT_NOT_FOUND
                } else if response.bad_config {
                    EXIT_BAD_CONFIG
                } else if response.refused {
                    EXIT_REFUSED
                } else {
                    EXIT_FAILURE
                })
            }
            Err(e) => {
                eprintln!("sipguard: {e:#}");
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }

    /// Sends an allow/deny request: `Some(json)` for a listing, `None` for a change.
    fn list_command(&self, (request, listing): (Request, Option<bool>)) -> ExitCode {
        match listing {
            Some(json) => self.talk(&request, json, print_list),
            None => self.talk(&request, false, print_change),
        }
    }
}

/// `sipguard unload`: removes the pins of a stopped daemon.
fn unload(socket: &Path, iface: &str, pin_dir: &Path) -> ExitCode {
    if control::request(socket, &Request::Status).is_ok() {
        eprintln!(
            "sipguard: a daemon still answers on {}: stop it first",
            socket.display()
        );
        return ExitCode::from(EXIT_FAILURE);
    }
    match Pins::at(pin_dir, iface).remove_all() {
        Ok(true) => {
            println!("removed the pins of {iface}: the guard is detached and its maps freed");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!(
                "sipguard: nothing is pinned for {iface} under {}",
                pin_dir.display()
            );
            ExitCode::from(EXIT_NOT_FOUND)
        }
        Err(e) => {
            eprintln!("sipguard: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn print_policy_change(data: &serde_json::Value) {
    println!(
        "policy from {}: {}",
        data["source"].as_str().unwrap_or("?"),
        data["policy"].as_str().unwrap_or("?")
    );
    for what in data["restart_needed"].as_array().into_iter().flatten() {
        println!(
            "note: {} changed; that takes effect at the next restart",
            what.as_str().unwrap_or("?")
        );
    }
    if let Some(seconds) = data["confirm_within_seconds"].as_u64() {
        println!("run `sipguard confirm` within {seconds} s, or it reverts");
    }
}

fn print_change(data: &serde_json::Value) {
    let cidr = data["cidr"].as_str().unwrap_or("?");
    let list = data["list"].as_str().unwrap_or("?");
    if data["added"].as_bool().unwrap_or(false) {
        println!("added {cidr} to the {list} list");
    } else {
        println!("removed {cidr} from the {list} list");
    }
}

fn print_explain(data: &serde_json::Value) {
    println!("{}:", data["source"].as_str().unwrap_or("?"));
    let rows: Vec<Verdict> = serde_json::from_value(data["verdicts"].clone()).unwrap_or_default();
    let table: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| vec![r.service, r.verdict, r.because])
        .collect();
    print_table(&["SERVICE", "VERDICT", "BECAUSE"], &table);
}

fn print_list(data: &serde_json::Value) {
    let rows: Vec<ListEntry> = serde_json::from_value(data.clone()).unwrap_or_default();
    if rows.is_empty() {
        println!("the list is empty");
        return;
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.cidr.clone(),
                r.services.join(","),
                r.origin.clone(),
                r.comment.clone(),
            ]
        })
        .collect();
    print_table(&["CIDR", "SERVICES", "ORIGIN", "COMMENT"], &table);
}

/// Left-aligned columns, two spaces apart.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|row| row[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let print_row = |cells: Vec<String>| {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    };
    print_row(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        print_row(row.clone());
    }
}

fn print_status(data: &serde_json::Value) {
    let uptime = std::time::Duration::from_secs(data["uptime_seconds"].as_u64().unwrap_or(0));
    println!(
        "interface:  {} ({} mode, program id {})",
        data["iface"].as_str().unwrap_or("?"),
        data["xdp_mode"].as_str().unwrap_or("?"),
        data["program_id"]
    );
    println!("uptime:     {}", humantime::format_duration(uptime));
    println!("policy:     {}", data["policy"].as_str().unwrap_or("?"));
    if data["monitor"].as_bool().unwrap_or(false) {
        println!("monitor:    ON (nothing is dropped)");
    }
    println!("bans:       {} in force", data["bans_active"]);
    match data["pinned_at"].as_str() {
        Some(dir) => println!("pinned at:  {dir} (the guard outlives this daemon)"),
        None => println!("pinned at:  not pinned (the guard stops with this daemon)"),
    }
    println!("state:      {}", data["state_dir"].as_str().unwrap_or("?"));
    if let Some(seconds) = data["awaiting_confirmation_seconds"].as_u64() {
        println!("confirm:    an applied change reverts in {seconds} s unless `sipguard confirm`");
    }
    if let Some(packets) = data["packets"].as_object() {
        let line: Vec<String> = packets
            .iter()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect();
        println!(
            "packets:    {}",
            if line.is_empty() {
                "none yet".to_string()
            } else {
                line.join(" ")
            }
        );
    }
}

fn print_bans(data: &serde_json::Value) {
    let rows: Vec<BanRow> = serde_json::from_value(data.clone()).unwrap_or_default();
    if rows.is_empty() {
        println!("no bans in force");
        return;
    }
    let human = |s: u64| humantime::format_duration(std::time::Duration::from_secs(s)).to_string();
    let table: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.source.clone(),
                r.reason.clone(),
                r.detail.clone(),
                format!("{} ago", human(r.since_seconds)),
                r.remaining_seconds.map_or("until removed".into(), human),
                r.dropped.to_string(),
            ]
        })
        .collect();
    let rows: Vec<Vec<String>> = table.into_iter().map(Vec::from).collect();
    print_table(
        &[
            "SOURCE",
            "REASON",
            "RULE/EVIDENCE",
            "SINCE",
            "REMAINING",
            "DROPPED",
        ],
        &rows,
    );
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
