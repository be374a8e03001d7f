//! `explain`: the verdict an address gets for each service now, and what
//! decides it.
use std::net::IpAddr;

use guard_common::{verdict::Address, BanEntry, PeerEntry, RateKey, RateState, SourceKey};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    fleet_set::FleetSet,
    peer_rows::{peer_row, PeerRow},
    Error, Result, Runtime,
};
use crate::{
    clock,
    kernel::store::{MapStore, MapsError},
    policy::{
        live::{Verdict, NO_SERVICE_NAME},
        verdict::{Inputs, KernelState, SipRequest},
    },
};

/// The verdicts for one source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Explanation {
    /// The address, or its IPv6 ban prefix.
    pub source: String,
    /// One row per service, then traffic that matches none.
    pub verdicts: Vec<Verdict>,
    /// What the SIP rules decide for the user and number asked about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip: Option<Verdict>,
    /// The source's unexpired entry in the kernel's peer map: the budget
    /// the rate rules give it.
    #[serde(default)]
    pub peer: Option<PeerRow>,
}

/// `explain --user NAME --dial NUMBER`: the request to judge by the SIP rules.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SipQuery {
    pub user: Option<String>,
    pub dial: Option<String>,
}

impl Runtime {
    pub async fn explain(&self, ip: IpAddr) -> Result<Explanation> {
        self.explain_with(ip, None).await
    }

    /// [`Runtime::explain`], and with `sip` what the SIP rules decide for
    /// that user and number from `ip`.
    pub async fn explain_with(&self, ip: IpAddr, sip: Option<SipQuery>) -> Result<Explanation> {
        let ip = ip.to_canonical();
        let key = self.source_key(ip);
        let policy = self.policy().await;
        let maps = self.maps().await;
        let fleet = self.fleet.lock().await;
        let state = Named {
            maps: &**maps,
            fleet: &fleet,
        };
        let settings = maps.settings()?;
        let now_ns = clock::monotonic_ns();
        let inputs = Inputs {
            settings,
            state: &state,
            now_ns,
        };
        let live = &policy.live;
        let mut names = live.service_names();
        names.push(NO_SERVICE_NAME.to_string());
        let verdicts = names
            .iter()
            .map(|name| live.explain(ip, name, &inputs))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Failed(format!("reading the kernel's bans and rate state: {e}")))?;
        let sip = match sip {
            Some(query) => {
                let request = SipRequest::named(
                    &live.compiled.sip_rules,
                    query.user.as_deref(),
                    query.dial.as_deref(),
                );
                let row = live.explain_sip(ip, &request, &inputs).map_err(|e| {
                    Error::Failed(format!("reading the kernel's bans and rate state: {e}"))
                })?;
                Some(row)
            }
            None => None,
        };
        let source = self.source_name(&key);
        let peer = match MapStore::peer(&**maps, &key)? {
            Some(entry) if entry.is_active(now_ns) => Some(peer_row(
                &**maps,
                &live.compiled,
                &settings,
                (key, entry),
                source.clone(),
                now_ns,
            )?),
            _ => None,
        };
        Ok(Explanation {
            source,
            verdicts,
            sip,
            peer,
        })
    }
}

/// The kernel's state, with the holders of the fleet deny set's networks.
struct Named<'a> {
    maps: &'a dyn MapStore,
    fleet: &'a FleetSet,
}

impl KernelState for Named<'_> {
    type Error = MapsError;

    fn ban(&self, source: &SourceKey) -> std::result::Result<Option<BanEntry>, Self::Error> {
        KernelState::ban(self.maps, source)
    }

    fn rate_state(&self, key: &RateKey) -> std::result::Result<Option<RateState>, Self::Error> {
        KernelState::rate_state(self.maps, key)
    }

    fn peer(&self, source: &SourceKey) -> std::result::Result<Option<PeerEntry>, Self::Error> {
        KernelState::peer(self.maps, source)
    }

    fn fleet(&self, address: &Address) -> std::result::Result<Option<IpNet>, Self::Error> {
        KernelState::fleet(self.maps, address)
    }

    fn fleet_holder(&self, net: &IpNet) -> Option<String> {
        self.fleet.describe(net)
    }
}
