//! `explain`: the verdict an address gets for each service now, and what
//! decides it.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Error, Result, Runtime};
use crate::{
    clock,
    policy::{
        live::{Verdict, NO_SERVICE_NAME},
        verdict::Inputs,
    },
};

/// The verdicts for one source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Explanation {
    /// The address, or its IPv6 ban prefix.
    pub source: String,
    /// One row per service, then traffic that matches none.
    pub verdicts: Vec<Verdict>,
}

impl Runtime {
    pub async fn explain(&self, ip: IpAddr) -> Result<Explanation> {
        let ip = ip.to_canonical();
        let key = self.source_key(ip);
        let policy = self.policy().await;
        let maps = self.maps().await;
        let inputs = Inputs {
            settings: maps.settings()?,
            state: &**maps,
            now_ns: clock::monotonic_ns(),
        };
        let live = &policy.live;
        let mut names = live.service_names();
        names.push(NO_SERVICE_NAME.to_string());
        let verdicts = names
            .iter()
            .map(|name| live.explain(ip, name, &inputs))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Failed(format!("reading the kernel's bans and rate state: {e}")))?;
        Ok(Explanation {
            source: self.source_name(&key),
            verdicts,
        })
    }
}
