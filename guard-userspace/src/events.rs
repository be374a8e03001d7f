//! Reads the kernel's ban events from the ring buffer and logs each one.
use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use guard_common::BanEvent;
use tokio::io::unix::AsyncFd;

use crate::{bans::describe_event, metrics::ControllerCounters};

/// Logs every ban event until the ring buffer fails. `rule_names` index the rules.
pub async fn log_ban_events(
    ring: RingBuf<MapData>,
    rule_names: Vec<String>,
    ipv6_prefix: u8,
    counters: ControllerCounters,
) -> Result<()> {
    // SAFETY: the ring buffer owns its fd, which stays open while the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("{e}"))?;
    loop {
        let mut ready = ring.readable_mut().await?;
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
                    )
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
