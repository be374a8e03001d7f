//! sipguard's controller, one folder per job:
//! - `cli`: the command line: arguments, one file per command, output
//! - `control`: the control socket: typed requests and answers (`protocol`),
//!   the daemon's side (`server`) and the CLI's (`client`)
//! - `runtime`: the one owner of the running guard's state, and the
//!   operations on it: `bans` (the ban lifecycle), `lists`, `switch`
//!   (reload, apply, confirm), `explain`, `status`, `safety` (SSH lockout)
//! - `kernel`: loading and attaching the XDP program (`loader`), typed access
//!   to its maps (`maps`), pins in bpffs (`pins`), checks before touching the
//!   kernel (`preflight`) and the kernel's ban events (`events`)
//! - `policy`: the TOML file (`config`), its translation into map values
//!   (`compile`) and the policy in force with runtime list changes (`live`)
//! - `sip`: the SIP parser (`parser`), the authentication-failure rules
//!   (`tracker`) and the watcher that feeds them captured signalling (`watcher`)
//! - `listen`: the local endpoints' accept loop: survives accept errors, caps
//!   connections per endpoint
//! - `metrics`: Prometheus series and the /metrics endpoint (hyper)
//! - `state`: bans and runtime list changes saved in the state directory
//! - `fleet`: the CrowdSec bouncer (decisions from a LAPI)
//! - `daemon`: `sipguard run`, start-up in named steps
pub mod alerts;
pub mod cli;
pub mod clock;
pub mod control;
pub mod daemon;
pub mod fleet;
pub mod kernel;
pub mod listen;
pub mod metrics;
pub mod policy;
pub mod runtime;
pub mod sip;
pub mod state;
