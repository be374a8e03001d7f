//! Following the guarded interface through netlink. A deleted interface
//! takes its XDP attachment with it; the guard keeps its maps (bans, rate
//! state, policy) and, as soon as an interface of the same name appears
//! again in this namespace (a re-created veth, VLAN or bond), attaches the
//! same program with the same maps to it. Link down and up needs nothing:
//! the attachment stays.
use std::{sync::Arc, time::Duration};

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::alerts::Alerts;
use crate::kernel::{
    loader::{Attachment, Guard, XdpModeChoice},
    netlink::{self, LinkEvent, LinkWatch},
    preflight,
};

/// How soon a failed re-attachment is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// Whether the guard is on its interface now: the `sipguard_attached`
/// gauge, which `status` reads too. A guard starts attached.
#[derive(Debug, Clone)]
pub struct AttachedFlag(pub Gauge);

impl Default for AttachedFlag {
    fn default() -> AttachedFlag {
        let flag = AttachedFlag(Gauge::default());
        flag.set(true);
        flag
    }
}

impl AttachedFlag {
    pub fn get(&self) -> bool {
        self.0.get() != 0
    }

    fn set(&self, attached: bool) {
        self.0.set(i64::from(attached));
    }
}

pub struct InterfaceWatch {
    watch: Option<LinkWatch>,
    iface: String,
    ifindex: u32,
    mode: XdpModeChoice,
    /// Whether the tc egress program (SIP answers) is attached too.
    egress: bool,
    pub attached: AttachedFlag,
    retry_at: Option<Instant>,
    /// Told when the guard leaves the interface and when it is back.
    alerts: Option<Arc<Alerts>>,
}

/// What the daemon's loop should wait for next.
pub enum Wake {
    Events(Vec<LinkEvent>),
    /// The subscription lost messages (or a retry is due): look afresh.
    Recheck,
}

impl InterfaceWatch {
    /// Subscribes before the guard attaches, so that no change is missed.
    /// Without netlink the guard still runs, but does not follow the
    /// interface (said once).
    pub fn open(iface: &str, ifindex: u32, mode: XdpModeChoice) -> InterfaceWatch {
        let watch = LinkWatch::open()
            .map_err(|e| warn!("cannot follow {iface} through netlink ({e}): a re-created {iface} will not be re-attached"))
            .ok();
        InterfaceWatch {
            watch,
            iface: iface.to_string(),
            ifindex,
            mode,
            egress: false,
            attached: AttachedFlag::default(),
            retry_at: None,
            alerts: None,
        }
    }

    /// Tells `alerts` of every departure and return from now on.
    pub fn alert_to(&mut self, alerts: Option<Arc<Alerts>>) {
        self.alerts = alerts;
    }

    /// Sets the flag; tells the alert sinks when it changes.
    fn set_attached(&mut self, attached: bool) {
        let was = self.attached.get();
        self.attached.set(attached);
        if was != attached {
            if let Some(alerts) = &self.alerts {
                alerts.interface(&self.iface, attached);
            }
        }
    }

    /// The guard is attached; `flag` reports it from now on.
    pub fn attached(&mut self, flag: AttachedFlag) {
        flag.set(true);
        self.attached = flag;
    }

    /// The tc egress program is attached too, and must follow.
    pub fn with_egress(&mut self) {
        self.egress = true;
    }

    /// The next link changes (never returns without a subscription).
    pub async fn next(&mut self) -> Wake {
        let retry = async {
            match self.retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let Some(watch) = self.watch.as_mut() else {
            retry.await;
            return Wake::Recheck;
        };
        tokio::select! {
            events = watch.next() => match events {
                Ok(events) => Wake::Events(events),
                Err(e) => {
                    warn!("netlink: {e}: looking at {} afresh", self.iface);
                    // A lasting error must not spin the daemon's loop.
                    tokio::time::sleep(RETRY).await;
                    Wake::Recheck
                }
            },
            () = retry => Wake::Recheck,
        }
    }

    /// Acts on what [`InterfaceWatch::next`] reported.
    pub fn handle(&mut self, wake: Wake, guard: &mut Guard) {
        match wake {
            Wake::Events(events) => {
                for event in events {
                    self.event(event, guard);
                }
            }
            Wake::Recheck => self.recheck(guard),
        }
    }

    fn event(&mut self, event: LinkEvent, guard: &mut Guard) {
        match event {
            LinkEvent::Deleted { index, .. } if index == self.ifindex => self.gone(),
            // A new interface of that name, or ours back after a failure.
            LinkEvent::Changed { index, name }
                if name == self.iface && (index != self.ifindex || !self.attached.get()) =>
            {
                self.ifindex = index;
                self.reattach(guard);
            }
            _ => {}
        }
    }

    /// After lost messages or a failed attempt: compares the interface of
    /// that name with what the guard believes.
    fn recheck(&mut self, guard: &mut Guard) {
        self.retry_at = None;
        match preflight::interface_index(&self.iface) {
            Err(_) if self.attached.get() => self.gone(),
            Err(_) => {}
            Ok(index) => {
                let ours = guard.program_id().ok();
                let running = netlink::xdp_program(index).ok().flatten();
                if index != self.ifindex || !self.attached.get() || running != ours {
                    self.ifindex = index;
                    self.reattach(guard);
                }
            }
        }
    }

    fn gone(&mut self) {
        self.set_attached(false);
        warn!(
            "{} is gone: the guard is off the interface. Its maps (bans, rate state, policy) \
             are kept; it attaches again when an interface named {} appears in this namespace",
            self.iface, self.iface
        );
    }

    fn reattach(&mut self, guard: &mut Guard) {
        let attached = guard.attach(&self.iface, self.mode).and_then(|how| {
            if self.egress {
                guard.attach_egress(&self.iface)?;
            }
            Ok(how)
        });
        match attached {
            Ok(how) => {
                self.set_attached(true);
                let how = match how {
                    Attachment::New(mode) => format!("attached anew in {mode} mode"),
                    Attachment::Replaced => "the pinned link still holds it".to_string(),
                };
                info!(
                    "{} is back (index {}): {how}, with the same maps and bans",
                    self.iface, self.ifindex
                );
            }
            Err(e) => {
                self.set_attached(false);
                warn!(
                    "cannot attach to the new {} yet ({e:#}); trying again",
                    self.iface
                );
                self.retry_at = Some(Instant::now() + RETRY);
            }
        }
    }
}
