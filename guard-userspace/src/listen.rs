//! The daemon's local endpoints (the control socket and the metrics port)
//! against hostile or broken local clients: an accept loop that outlives
//! every accept error (EMFILE, ENFILE, ECONNABORTED...) with a short
//! backoff, and a cap on the connections each endpoint serves at once.
//!
//! The loop takes a slot before it accepts: beyond the cap, clients wait
//! in the kernel's backlog and cost the daemon no descriptor. Each endpoint
//! has slots of its own, so a flood of one (metrics is reachable by any
//! local user) never takes the control socket's: `status` and `ban add`
//! always find a slot and a descriptor. Each connection's handler bounds
//! its own time (see `control::server` and `metrics`).
use std::{future::Future, io, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

/// Control connections served at once (root only; the CLI makes one per command).
pub const CONTROL_CONNECTIONS: usize = 32;
/// Metrics connections served at once (a scraper needs one or two).
pub const METRICS_CONNECTIONS: usize = 32;
/// Descriptors local clients can hold in all: far below systemd's default
/// limit of 1024 (the unit raises it to 65536), so the maps, state files,
/// netlink and the fleet's connections always have room.
pub const TOTAL_CONNECTIONS: usize = CONTROL_CONNECTIONS + METRICS_CONNECTIONS;
const _: () = assert!(TOTAL_CONNECTIONS * 8 <= 1024, "an eighth of 1024 at most");

/// First and longest wait after a failed accept.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A listening socket the loop can accept from.
pub trait Accept: Send + 'static {
    type Conn: Send + 'static;
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
}

impl Accept for UnixListener {
    type Conn = UnixStream;
    async fn accept_one(&self) -> io::Result<UnixStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Accept for TcpListener {
    type Conn = TcpStream;
    async fn accept_one(&self) -> io::Result<TcpStream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Waits after failed accepts: doubling from [`BACKOFF_FIRST`] to
/// [`BACKOFF_MAX`], back to the start after a success. The first failure
/// of a run is a warning, the rest are counted in it when it ends.
struct Backoff {
    endpoint: &'static str,
    next: Duration,
    failures: u64,
}

impl Backoff {
    fn new(endpoint: &'static str) -> Backoff {
        Backoff {
            endpoint,
            next: BACKOFF_FIRST,
            failures: 0,
        }
    }

    async fn failed(&mut self, e: &io::Error) {
        if self.failures == 0 {
            warn!(
                "{}: accepting a connection failed: {e}; retrying (the endpoint keeps serving)",
                self.endpoint
            );
        } else {
            debug!("{}: accept failed again: {e}", self.endpoint);
        }
        self.failures += 1;
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(BACKOFF_MAX);
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            warn!(
                "{}: accepting again after {} failed attempts",
                self.endpoint, self.failures
            );
        }
        self.failures = 0;
        self.next = BACKOFF_FIRST;
    }
}

/// Accepts on `listener` for ever, at most `cap` connections at once, each
/// handed to `handle` on a task of its own. Never returns on an accept error.
pub async fn serve<L, F, Fut>(endpoint: &'static str, listener: L, cap: usize, handle: F)
where
    L: Accept,
    F: Fn(L::Conn) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(cap));
    let mut backoff = Backoff::new(endpoint);
    loop {
        // Only this loop holds the semaphore, which is never closed.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match listener.accept_one().await {
            Ok(conn) => {
                backoff.succeeded();
                let served = handle(conn);
                tokio::spawn(async move {
                    served.await;
                    drop(slot);
                });
            }
            Err(e) => backoff.failed(&e).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::{mpsc, Mutex};

    /// Hands out what the test queues: a connection number or an error.
    struct Fake(Mutex<mpsc::UnboundedReceiver<io::Result<usize>>>);

    impl Accept for Fake {
        type Conn = usize;
        async fn accept_one(&self) -> io::Result<usize> {
            match self.0.lock().await.recv().await {
                Some(next) => next,
                None => std::future::pending().await,
            }
        }
    }

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[tokio::test]
    async fn accept_errors_never_end_the_loop() {
        let (queue, rx) = mpsc::unbounded_channel();
        for e in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ECONNABORTED,
            libc::ENOBUFS,
        ] {
            queue.send(Err(io::Error::from_raw_os_error(e))).unwrap();
        }
        queue.send(Ok(1)).unwrap();
        // Enough in a row to reach longer waits (about 0.6 s in all).
        for _ in 0..6 {
            queue.send(Err(emfile())).unwrap();
        }
        queue.send(Ok(2)).unwrap();
        let (served_tx, mut served) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve("test", Fake(Mutex::new(rx)), 4, move |n| {
            let served_tx = served_tx.clone();
            async move {
                let _ = served_tx.send(n);
            }
        }));
        // Generous bound: only a hang fails here.
        let bound = Duration::from_secs(60);
        let first = tokio::time::timeout(bound, served.recv()).await.unwrap();
        let second = tokio::time::timeout(bound, served.recv()).await.unwrap();
        assert_eq!((first, second), (Some(1), Some(2)));
        assert!(!server.is_finished());
        server.abort();
    }

    #[tokio::test]
    async fn no_more_than_the_cap_at_once_and_slots_come_back() {
        let (queue, rx) = mpsc::unbounded_channel();
        for n in 0..10 {
            queue.send(Ok(n)).unwrap();
        }
        let busy = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (release_tx, release) = tokio::sync::watch::channel(false);
        let (done_tx, mut done) = mpsc::unbounded_channel();
        let (b, m) = (Arc::clone(&busy), Arc::clone(&most));
        let server = tokio::spawn(serve("test", Fake(Mutex::new(rx)), 3, move |_| {
            let (busy, most, done) = (Arc::clone(&b), Arc::clone(&m), done_tx.clone());
            let mut release = release.clone();
            async move {
                let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let _ = release.wait_for(|go| *go).await;
                busy.fetch_sub(1, Ordering::SeqCst);
                let _ = done.send(());
            }
        }));
        // Let the loop take what it can: three, then it waits for a slot.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(busy.load(Ordering::SeqCst), 3);
        release_tx.send(true).unwrap();
        for _ in 0..10 {
            let bound = Duration::from_secs(60);
            tokio::time::timeout(bound, done.recv()).await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 3, "never above the cap");
        server.abort();
    }
}
