//! SIP authentication failures: parsing captured signalling, the failure
//! rules, and the watcher that turns them into bans.
pub mod ban;
pub mod parser;
pub mod tracker;
pub mod watcher;
