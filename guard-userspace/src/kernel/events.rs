//! Reads the kernel's ban events from the ring buffer and logs each one.
use std::sync::Arc;

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use guard_common::BanEvent;
use tokio::{
    io::unix::AsyncFd,
    sync::{Mutex, Notify},
};

use crate::{metrics::ControllerCounters, policy::live::LivePolicy, runtime::bans::describe_event};

/// Logs every ban event until the ring buffer fails, and wakes the ban saver.
pub async fn log_ban_events(
    ring: RingBuf<MapData>,
    policy: Arc<Mutex<LivePolicy>>,
    ipv6_prefix: u8,
    counters: ControllerCounters,
    bans_changed: Arc<Notify>,
) -> Result<()> {
    // SAFETY: the ring buffer owns its fd, which stays open while the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("{e}"))?;
    loop {
        let mut ready = ring.readable_mut().await?;
        // Rule indexes follow the policy in force (a reload renumbers them).
        let rule_names = policy.lock().await.compiled.rule_names.clone();
        let ring = ready.get_inner_mut();
        while let Some(item) = ring.next() {
            match parse_event(&item) {
                Some(event) => {
                    if let Some(reason) = guard_common::BanReason::from_u16(event.reason) {
                        counters.ban_created(reason);
                    }
                    tracing::warn!(
                        target: "sipguard::ban",
                        "{}",
                        describe_event(&event, &rule_names, ipv6_prefix)
                    );
                    bans_changed.notify_one();
                }
                None => tracing::error!("ignored a ban event of {} bytes", item.len()),
            }
        }
        ready.clear_ready();
    }
}

fn parse_event(bytes: &[u8]) -> Option<BanEvent> {
    if bytes.len() < std::mem::size_of::<BanEvent>() {
        return None;
    }
    // SAFETY: length checked; BanEvent is plain data; the ring gives no alignment promise.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<BanEvent>()) })
}
