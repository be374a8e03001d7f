//! The XDP program's side: loading, attaching, maps, pins, and its events.
pub mod bans;
pub mod clock;
pub mod events;
#[cfg(test)]
pub mod fake;
pub mod iface;
pub mod loader;
pub mod maps;
pub mod netlink;
pub mod netns;
pub mod pins;
pub mod preflight;
pub mod store;
