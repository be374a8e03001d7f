//! Shared helpers for sipguard's kernel tests: a harness that runs crafted
//! frames through the real XDP program (BPF_PROG_TEST_RUN), frame builders,
//! and self-cleaning network namespaces.
//!
//! Tests that need root are `#[ignore]`d with a reason: plain `cargo test`
//! reports them as ignored (skipped); `cargo xtask test` runs them as root.
pub mod bench;
pub mod crowdsec;
pub mod daemon;
pub mod feeds;
pub mod frames;
pub mod kamailio;
pub mod metrics;
pub mod netns;
pub mod smtp;
pub mod traffic;
pub mod verdict_check;

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions, TestRunResult, Xdp};
use guard_common::{
    BanEvent, Counter, Reason, RuleCounter, SipCaptureHeader, SourceKey, EGRESS_PROGRAM_NAME,
};
use guard_userspace::{
    kernel::loader::Guard, policy::compile::CompiledPolicy, policy::config::Config,
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The real XDP program, loaded (not attached) with a given configuration.
pub struct Harness {
    pub guard: Guard,
    pub policy: CompiledPolicy,
}

impl Harness {
    pub fn new(config_toml: &str) -> Harness {
        Self::try_new(config_toml).expect("loading the XDP program")
    }

    pub fn try_new(config_toml: &str) -> Result<Harness> {
        // A failing test then shows the full verifier log.
        init_test_logging();
        let config = Config::parse(config_toml, "test config")?;
        let policy = CompiledPolicy::compile(&config);
        let mut guard = Guard::load(&config, &policy, None)?;
        guard.maps_mut().sync_policy(&policy)?;
        Ok(Harness { guard, policy })
    }

    /// Runs one frame through the program; returns the XDP action.
    pub fn run(&mut self, frame: &[u8]) -> u32 {
        self.try_run(frame, 1).expect("BPF_PROG_TEST_RUN")
    }

    pub fn try_run(&mut self, frame: &[u8], repeat: u32) -> Result<u32> {
        Ok(run_xdp(self.guard.program()?, frame, repeat)?.return_value)
    }

    pub fn counter(&self, reason: Reason) -> Counter {
        self.guard.maps().verdict(reason).expect("reading VERDICTS")
    }

    pub fn packets(&self, reason: Reason) -> u64 {
        self.counter(reason).packets
    }

    /// Packets counted under every reason.
    pub fn all_packets(&self) -> u64 {
        let totals = self.guard.maps().verdicts().expect("reading VERDICTS");
        totals.iter().map(|c| c.packets).sum()
    }

    pub fn rule_hits(&self, rule: usize) -> RuleCounter {
        self.guard
            .maps()
            .rule_hits()
            .expect("reading RULES_PER_CPU")[rule]
    }

    pub fn is_banned(&self, source: &SourceKey) -> bool {
        self.guard
            .maps()
            .ban(source)
            .expect("reading BANS")
            .is_some()
    }

    /// Runs one frame through the tc egress program; returns its tc action.
    pub fn run_egress(&mut self, frame: &[u8]) -> i32 {
        let program: &mut aya::programs::SchedClassifier = self
            .guard
            .ebpf
            .program_mut(EGRESS_PROGRAM_NAME)
            .expect("egress program")
            .try_into()
            .expect("a classifier");
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN on the egress program");
        result.return_value as i32
    }

    /// SIP captures waiting in the ring buffer: (metadata, copied bytes).
    pub fn drain_sip_captures(&mut self) -> Vec<(SipCaptureHeader, Vec<u8>)> {
        let ring = self.guard.maps_mut().sip_events_mut().expect("ring buffer");
        let header_len = std::mem::size_of::<SipCaptureHeader>();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            assert!(item.len() >= header_len);
            // SAFETY: length checked, plain data.
            let header: SipCaptureHeader =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let data = item[header_len..header_len + header.captured as usize].to_vec();
            out.push((header, data));
        }
        out
    }

    /// Ban events waiting in the ring buffer.
    pub fn drain_ban_events(&mut self) -> Vec<BanEvent> {
        let ring = self.guard.maps_mut().ban_events_mut().expect("ring buffer");
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), std::mem::size_of::<BanEvent>());
            // SAFETY: length checked, plain data.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<BanEvent>()) });
        }
        events
    }
}

/// Runs `frame` through an XDP program `repeat` times (BPF_PROG_TEST_RUN).
pub fn run_xdp(program: &Xdp, frame: &[u8], repeat: u32) -> Result<TestRunResult> {
    program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")
}

/// True when running as root (the kernel tests need it).
pub fn is_root() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The reason string for `#[ignore]` on tests that need root.
pub const NEEDS_ROOT: &str = "needs root: run through `cargo xtask test`";

/// Shows the controller's debug logs (full verifier output) in failing tests.
pub fn init_test_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("guard_userspace=debug")
        .with_test_writer()
        .try_init();
}

/// The policy most kernel verdict tests start from: allow, deny, trusted
/// and closed services, default pass, with the built-in services and the
/// SIP rate rules (0: 120 per 60 s, 1: 40 per 2 s on UDP 5060).
pub const BASE_POLICY: &str = r#"
[services.web]
access = "trusted"
[services.ami]
access = "closed"
[[allow]]
cidr = "10.1.0.0/16"
services = ["sip", "web"]
[[allow]]
cidr = "2001:db8:a::/48"
[[deny]]
cidr = "203.0.113.0/24"
[[deny]]
cidr = "2001:db8:bad::/48"
"#;
