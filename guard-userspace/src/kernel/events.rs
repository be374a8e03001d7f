//! Reads the kernel's ban events from their ring buffer.
use std::io::Result;

use aya::maps::{MapData, RingBuf};
use guard_common::BanEvent;
use tokio::io::unix::AsyncFd;

/// The ban event ring, readable without blocking the runtime.
pub struct BanEvents {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl BanEvents {
    pub fn new(ring: RingBuf<MapData>) -> Result<BanEvents> {
        // SAFETY: the ring buffer owns its fd, which stays open while the AsyncFd lives.
        let ring =
            unsafe { AsyncFd::register(ring) }.map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(BanEvents { ring })
    }

    /// Waits for events and returns those ready; records too short to be
    /// an event are counted in the second value.
    pub async fn next_batch(&mut self) -> Result<(Vec<BanEvent>, usize)> {
        let mut ready = self.ring.readable_mut().await?;
        let ring = ready.get_inner_mut();
        let (mut events, mut bad) = (Vec::new(), 0);
        while let Some(item) = ring.next() {
            match parse_event(&item) {
                Some(event) => events.push(event),
                None => bad += 1,
            }
        }
        ready.clear_ready();
        Ok((events, bad))
    }
}

fn parse_event(bytes: &[u8]) -> Option<BanEvent> {
    if bytes.len() < std::mem::size_of::<BanEvent>() {
        return None;
    }
    // SAFETY: length checked; BanEvent is plain data; the ring gives no alignment promise.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<BanEvent>()) })
}
