//! What several fuzz targets share.
use std::sync::OnceLock;

use guard_userspace::{policy::config::Config, sip::tracker::AuthPolicy};

/// The default authentication policy, as an empty config file gives it
/// (parsed once, not per input).
pub fn default_auth_policy() -> &'static AuthPolicy {
    static POLICY: OnceLock<AuthPolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        Config::parse("", "empty.toml")
            .expect("the empty config is valid")
            .auth_policy()
    })
}
