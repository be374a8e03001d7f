//! sipguard's controller, one folder per job:
//! - `kernel`: loading and attaching the XDP program (`loader`), typed access
//!   to its maps (`maps`), pins in bpffs (`pins`), checks before touching the
//!   kernel (`preflight`) and the kernel's ban events (`events`)
//! - `policy`: the TOML file (`config`), its translation into map values
//!   (`compile`) and the policy in force with runtime list changes (`live`)
//! - `runtime`: ban bookkeeping (`bans`) and the SSH-lockout check (`safety`)
//! - `sip`: the SIP parser (`parser`), the authentication-failure rules
//!   (`tracker`) and the watcher that feeds them captured signalling (`watcher`)
//! - `control`: the control socket the CLI talks to (`control::switch`:
//!   reload, apply and confirm)
//! - `metrics`: Prometheus series and the /metrics endpoint
//! - `state`: bans and runtime list changes saved in the state directory
//! - `daemon`: `sipguard run`
pub mod clock;
pub mod control;
pub mod daemon;
pub mod kernel;
pub mod metrics;
pub mod policy;
pub mod runtime;
pub mod sip;
pub mod state;
