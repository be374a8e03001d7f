//! Allow and deny list changes at run time: checked against the operator's
//! SSH sessions, written into the kernel's tries (one entry: atomic), kept
//! in the live policy and saved to the state directory.
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    safety::{After, LockoutCheck},
    Error, PolicyState, Result, Runtime,
};
use crate::{
    kernel::{maps::NetList, store::MapStore},
    policy::config::allow_mask,
    policy::config::ALL,
    policy::live::{ListEntry, LivePolicy},
    state::ListChanges,
};

/// What `allow|deny add|remove` changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListChange {
    /// "allow" or "deny".
    pub list: String,
    pub cidr: String,
    /// Added (true) or removed (false).
    pub added: bool,
    /// Why the change is in force but will not outlive a restart (its
    /// save to the state directory failed).
    #[serde(default)]
    pub not_saved: Option<String>,
}

/// An entry to add to a list.
pub struct NewEntry {
    pub cidr: IpNet,
    /// Allow entries: service names, "all" or "other"; empty means "all".
    pub services: Vec<String>,
    pub comment: Option<String>,
}

impl Runtime {
    /// Adds to a live list; an invalid change is refused before anything is touched.
    pub async fn list_add(
        &self,
        list: NetList,
        entry: NewEntry,
        lockout: &LockoutCheck,
    ) -> Result<ListChange> {
        let cidr = entry.cidr.trunc();
        let mut policy = self.policy().await;
        let (value, services) = match list {
            NetList::Deny => (0, Vec::new()),
            NetList::Allow => {
                let services = if entry.services.is_empty() {
                    vec![ALL.to_string()]
                } else {
                    entry.services
                };
                let names = policy.live.service_names();
                let mask = allow_mask(&names, &services).map_err(|unknown| {
                    Error::Invalid(format!(
                        "unknown service {unknown:?} (known: {}, all, other); nothing changed",
                        names.join(", ")
                    ))
                })?;
                (mask, services)
            }
        };
        let row = ListEntry {
            cidr: cidr.to_string(),
            services: services.clone(),
            comment: entry.comment.unwrap_or_default(),
            origin: "runtime".to_string(),
        };
        let mut changes = policy.live.changes.clone();
        changes.record_add(list, cidr, row);
        let name = list.name();
        let not_saved = self
            .commit_list_change(&mut policy, changes, lockout, |maps| {
                maps.insert_net(list, cidr, value).map_err(|e| {
                    Error::Failed(format!(
                        "the {name} list refused {cidr} (full?): {e:#}; nothing changed"
                    ))
                })
            })
            .await?;
        if list == NetList::Allow {
            info!(
                "allow-listed {cidr} for {} by the operator",
                services.join(",")
            );
        } else {
            info!("deny-listed {cidr} by the operator");
        }
        Ok(ListChange {
            list: name.to_string(),
            cidr: cidr.to_string(),
            added: true,
            not_saved,
        })
    }

    pub async fn list_remove(
        &self,
        list: NetList,
        cidr: IpNet,
        lockout: &LockoutCheck,
    ) -> Result<ListChange> {
        let cidr = cidr.trunc();
        let name = list.name();
        let mut policy = self.policy().await;
        if !policy.live.lists.list(list).contains_key(&cidr) {
            return Err(Error::NotFound(format!("{cidr} is not on the {name} list")));
        }
        let config = &policy.live.config;
        let in_config = match list {
            NetList::Allow => config.allow.iter().any(|e| e.cidr.trunc() == cidr),
            NetList::Deny => config.deny.iter().any(|e| e.cidr.trunc() == cidr),
        };
        let mut changes = policy.live.changes.clone();
        changes.record_remove(list, cidr, in_config);
        let not_saved = self
            .commit_list_change(&mut policy, changes, lockout, |maps| {
                Ok(maps.remove_net(list, cidr)?)
            })
            .await?;
        info!("removed {cidr} from the {name} list by the operator");
        Ok(ListChange {
            list: name.to_string(),
            cidr: cidr.to_string(),
            added: false,
            not_saved,
        })
    }

    /// The entries of a list, with their comments and origins.
    pub async fn list(&self, list: NetList) -> Vec<ListEntry> {
        let policy = self.policy().await;
        policy.live.lists.list(list).values().cloned().collect()
    }

    /// Checks a list change against the SSH sessions, makes it in the
    /// kernel with `write`, then keeps it in the live policy and the state
    /// directory. Returns why the save failed, if it did: the change holds
    /// until a restart, and the answer says so.
    async fn commit_list_change(
        &self,
        policy: &mut PolicyState,
        changes: ListChanges,
        lockout: &LockoutCheck,
        write: impl FnOnce(&mut dyn MapStore) -> Result<()>,
    ) -> Result<Option<String>> {
        let live = &policy.live;
        let candidate = LivePolicy::build(live.config.clone(), live.source.clone(), changes);
        let mut maps = self.maps().await;
        let after = After {
            policy: &candidate,
            new_ban: None,
            monitor: None,
        };
        lockout
            .check(live, &**maps, after)
            .map_err(Error::Refused)?;
        write(&mut **maps)?;
        drop(maps);
        policy.live = candidate;
        // The kernel already has the change; a failed save is reported in
        // the log, the answer and the metrics.
        let saved = self.state.save_lists(&policy.live.changes);
        Ok(saved.err().map(|e| {
            warn!("saving the list changes failed: {e:#}; they hold until restart");
            format!("{e:#}")
        }))
    }
}
