//! SIP authentication failures: parsing captured signalling (and the
//! signalling PBXs mirror over HEP), the failure rules, and the watcher that
//! turns them into bans.
pub mod ban;
pub mod dedup;
pub mod hep;
pub mod hep_input;
pub mod parser;
pub mod peers;
pub mod probes;
pub mod tracker;
pub mod watcher;
