//! The policy: the config file, its compiled map values, and the policy in force.
pub mod capacity;
pub mod compile;
pub mod config;
pub mod live;
#[cfg(test)]
mod live_tests;
pub mod scanners;
pub mod sip_rules;
pub mod verdict;
