//! The control socket: a root-only (0600) Unix socket on which the daemon
//! answers the CLI, one JSON request per line and one JSON response per
//! line (`protocol`). The daemon's side is `server`, the CLI's `client`;
//! the operations themselves are the runtime's.
pub mod client;
pub mod protocol;
pub mod server;

pub use protocol::DEFAULT_SOCKET;
