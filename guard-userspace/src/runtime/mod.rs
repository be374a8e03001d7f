//! What the daemon keeps while it runs: bans, and the SSH-lockout check on changes.
pub mod bans;
pub mod safety;
