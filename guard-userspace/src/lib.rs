//! sipguard's controller. One module per job:
//! - `config`: the TOML file, defaults and validation
//! - `policy`: config -> the values the kernel maps hold
//! - `maps`: typed access to the XDP program's maps
//! - `loader`: loading, attaching and detaching the embedded XDP program
//! - `bans`, `events`: ban bookkeeping and the kernel's ban events
//! - `metrics`: Prometheus series and the /metrics endpoint
//! - `preflight`: interface, privilege and kernel checks
//! - `control`: the control socket the CLI talks to (`control::switch`:
//!   reload, apply and confirm)
//! - `live_policy`: the config plus runtime list changes; verdicts for `explain`
//! - `state`: bans and runtime list changes saved in the state directory
//! - `pins`: the guard's pins in bpffs, so the kernel enforces without us
//! - `safety`: refusing changes that would cut the operator's SSH session
//! - `daemon`: `sipguard run`
pub mod auth_tracker;
pub mod bans;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod events;
pub mod live_policy;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod pins;
pub mod policy;
pub mod preflight;
pub mod safety;
pub mod sip;
pub mod sip_watch;
pub mod state;
