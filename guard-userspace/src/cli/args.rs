//! The command line's arguments.
use std::{net::IpAddr, path::PathBuf};

use clap::{Parser, Subcommand};
use ipnet::IpNet;

use crate::{
    control::{
        self,
        protocol::{exact_network, Request},
    },
    kernel::loader::XdpModeChoice,
    kernel::pins,
    sip::tracker::LevelName,
    state,
};

/// XDP protection for IP PBXs: allow/deny lists, per-service access, SIP rate
/// limits with auto-blacklisting, all in the kernel's fast path.
#[derive(Parser)]
#[command(name = "sipguard", version, propagate_version = true)]
pub struct Cli {
    /// Log lines as text for people or JSON for log collectors.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The daemon's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    /// Make a change even if it would cut your own SSH session.
    #[arg(long, global = true)]
    pub force: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum BanAction {
    /// Ban an address (an IPv6 address bans its prefix, /64 by default).
    Add {
        #[arg(value_parser = parse_ban_address)]
        ip: IpAddr,
        /// How long ("10m", "1h", "7d"), or "forever"; without it, until removed.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_ban_length)]
        duration: Option<BanLength>,
        /// Why, shown by `sipguard bans`.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban (exit code 3 if there is none).
    Remove { ip: IpAddr },
}

#[derive(Subcommand)]
pub enum AllowAction {
    /// Allow a network (CIDR, or an address for itself alone).
    Add {
        #[arg(value_parser = parse_net)]
        cidr: IpNet,
        /// Take a network with host bits set (10.0.0.7/24) as its masked
        /// network (10.0.0.0/24) instead of refusing it.
        #[arg(long)]
        normalize: bool,
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
        /// Take a network with host bits set as its masked network.
        #[arg(long)]
        normalize: bool,
    },
    /// Show the allow list.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum DenyAction {
    /// Deny a network (CIDR, or an address for itself alone).
    Add {
        #[arg(value_parser = parse_net)]
        cidr: IpNet,
        /// Take a network with host bits set as its masked network.
        #[arg(long)]
        normalize: bool,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Take a network off the deny list (exit code 3 if it is not on it).
    Remove {
        #[arg(value_parser = parse_net)]
        cidr: IpNet,
        /// Take a network with host bits set as its masked network.
        #[arg(long)]
        normalize: bool,
    },
    /// Show the deny list.
    List {
        #[arg(long)]
        json: bool,
    },
}

impl AllowAction {
    pub fn into_request(self) -> Result<(Request, Option<bool>), String> {
        Ok(match self {
            AllowAction::Add {
                cidr,
                normalize,
                services,
                comment,
            } => (
                Request::AllowAdd {
                    cidr: network(cidr, normalize)?,
                    services,
                    comment,
                    normalize,
                },
                None,
            ),
            AllowAction::Remove { cidr, normalize } => (
                Request::AllowRemove {
                    cidr: network(cidr, normalize)?,
                    normalize,
                },
                None,
            ),
            AllowAction::List { json } => (Request::AllowList, Some(json)),
        })
    }
}

impl DenyAction {
    pub fn into_request(self) -> Result<(Request, Option<bool>), String> {
        Ok(match self {
            DenyAction::Add {
                cidr,
                normalize,
                comment,
            } => {
                let cidr = network(cidr, normalize)?;
                let request = Request::DenyAdd {
                    cidr,
                    comment,
                    normalize,
                };
                (request, None)
            }
            DenyAction::Remove { cidr, normalize } => (
                Request::DenyRemove {
                    cidr: network(cidr, normalize)?,
                    normalize,
                },
                None,
            ),
            DenyAction::List { json } => (Request::DenyList, Some(json)),
        })
    }
}

/// A network to add or remove, checked before the daemon is asked (it
/// checks again): host bits refused unless `--normalize`.
fn network(cidr: IpNet, normalize: bool) -> Result<IpNet, String> {
    exact_network(cidr, normalize).map_err(|e| e.to_string())
}

/// How long a manual ban lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanLength {
    Forever,
    For(std::time::Duration),
}

impl BanLength {
    /// The protocol's form: None is until removed.
    pub fn duration(self) -> Option<std::time::Duration> {
        match self {
            BanLength::Forever => None,
            BanLength::For(d) => Some(d),
        }
    }
}

/// "forever", or a length from 1s to what the kernel can hold: 0s and
/// "1000y" are errors, never a silent 1 s or "for ever".
pub fn parse_ban_length(text: &str) -> Result<BanLength, String> {
    if matches!(text, "forever" | "for-ever") {
        return Ok(BanLength::Forever);
    }
    let d = humantime::parse_duration(text).map_err(|e| format!("{e}"))?;
    crate::runtime::bans::check_ban_length(d).map(BanLength::For)
}

/// One address: a network says what to use instead.
pub fn parse_ban_address(text: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(ip);
    }
    if text.parse::<IpNet>().is_ok() {
        return Err(format!(
            "{text} is a network: ban takes one address; to block a network use `sipguard deny add`"
        ));
    }
    Err(format!("{text:?} is not an IP address"))
}

/// A CIDR, or an address meaning just itself (/32 or /128).
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is neither a CIDR nor an IP address"))
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// Where a ban came from, for `bans --origin`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OriginArg {
    /// CrowdSec decisions (IP bans and ranges).
    Crowdsec,
    /// Blocklist feeds' entries.
    Feed,
    /// The guard's own bans (rate limits, SIP rules, manual).
    Local,
}

impl From<OriginArg> for crate::control::protocol::BanOrigin {
    fn from(arg: OriginArg) -> Self {
        use crate::control::protocol::BanOrigin;
        match arg {
            OriginArg::Crowdsec => BanOrigin::Crowdsec,
            OriginArg::Feed => BanOrigin::Feed,
            OriginArg::Local => BanOrigin::Local,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Bans and runtime allow/deny changes are saved here, under IFACE/
        /// (and a directory per network namespace other than PID 1's).
        #[arg(long, value_name = "DIR", default_value = state::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The XDP link and maps are pinned here (a bpffs is mounted if absent),
        /// so the kernel keeps enforcing while no controller runs.
        #[arg(long, value_name = "DIR", default_value = pins::DEFAULT_PIN_ROOT)]
        pin_dir: PathBuf,
        /// Do not pin: the guard stops with this process.
        #[arg(long)]
        no_pin: bool,
        /// Refuse to start if the pins would not outlive this process (a
        /// bpffs only this mount namespace sees).
        #[arg(long, conflicts_with = "no_pin")]
        require_pins: bool,
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
        /// Only these: `crowdsec` and `feed` include their networks in the
        /// fleet deny set, `local` the guard's own bans.
        #[arg(long, value_enum)]
        origin: Option<OriginArg>,
    },
    /// Monitor mode at run time: on counts every verdict but drops nothing.
    Monitor {
        #[arg(value_enum)]
        state: OnOff,
    },
    /// The learned peers (sources that authenticated with the PBX, and its
    /// providers): kind, live registrations, expiry, rate budget, packets
    /// counted.
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// For each service, the verdict IP gets now and what decides it.
    Explain {
        ip: IpAddr,
        #[arg(long)]
        json: bool,
        /// Also say what the SIP rules decide for this user registering
        /// (or, with --dial, calling) from IP.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Also say what the dial rules decide for an INVITE to NUMBER from IP.
        #[arg(long, value_name = "NUMBER")]
        dial: Option<String>,
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
