//! Delivery: the actors and workers that send this node's domains' mail.
//!
//! - `manager` — the DeliveryManager: one DomainDelivery per owned domain with work;
//! - `domain` — DomainDelivery: a domain's backlog, its retry timer and its workers;
//! - `worker` — one outbound connection's worth of work: asks its DomainDelivery for
//!   jobs by message, sends them, and commits each outcome through the OutcomeBatcher.
//!
//! What to do with each recipient and reply is decided by `baton_delivery::policy`
//! (pure functions); this module does the IO and the bookkeeping.
//!
//! Only the domains this node owns are delivered, and only while its lease lasts: a
//! domain's owner holds a lease it renews through Raft, a node delivers only while its
//! own clock says the lease holds, and the leader gives a silent node's domains to others
//! only once that lease has expired by the leader's clock (see `baton_queue::ownership`
//! and `baton_cluster::lease`). A message is *in flight* from when it is taken until its
//! outcome is committed and applied: an [`InFlight`] token, registered here, so it is
//! never taken twice by this node. Messages are taken only after checking, under the
//! registry's lock, that the current ownership view allows their domain; the
//! acknowledgement of a new ownership epoch checks under the same lock that nothing it
//! forbids is in flight. So once a node has acknowledged an epoch, it is not delivering
//! anything that epoch gave to another node.

mod domain;
mod manager;
pub mod site;
pub mod sts;
mod worker;

#[cfg(test)]
mod tests;

pub use domain::DomainMsg;
pub use manager::{DeliveryManager, ManagerMsg};
pub use site::{SiteRegistry, SiteSetup};

use crate::batcher::BatcherMsg;
use crate::supervisor::Slot;
use baton_cluster::{Lease, Writer};
use baton_delivery::outbound::Timeouts;
use baton_delivery::retry::RetryPolicy;
use baton_delivery::route::Router;
use baton_delivery::tls::{TlsClients, TlsPolicy};
use baton_queue::ownership::Ownership;
use baton_queue::state_machine::QueueReader;
use baton_reputation::classify::Classifier;
use ractor::ActorRef;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// What every delivery actor and worker needs.
pub struct DeliveryContext {
    pub hostname: String,
    pub reader: QueueReader,
    pub router: Router,
    pub tls: TlsClients,
    pub tls_policy: TlsPolicy,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    pub outcomes: Slot<BatcherMsg<baton_queue::types::Finished>>,
    /// False while this node must not start transactions (catching up, draining).
    pub may_deliver: watch::Receiver<bool>,
    /// This node, its lease and the replicated ownership table.
    pub me: u64,
    pub lease: Arc<Lease>,
    /// No transaction starts, and no final dot is sent, with less lease left than this.
    pub lease_margin: Duration,
    pub ownership: watch::Receiver<Arc<Ownership>>,
    pub in_flight: InFlightRegistry,
    /// Proposes site moves and site state.
    pub writer: Writer,
    /// Classifies remote replies (replaced on SIGHUP).
    pub classifier: RwLock<Arc<Classifier>>,
    /// `[shaping]`, for each site's limits.
    pub setup: SiteSetup,
    /// The sites this node delivers.
    pub sites: SiteRegistry,
    /// `delivery.mta_sts`, and when this node last looked at each domain's policy.
    pub sts: sts::StsPolicies,
    /// `[bounces]`, when on: MAIL FROM becomes the message's bounce address.
    pub bounces: Option<Arc<crate::feedback::BounceSetup>>,
}

impl DeliveryContext {
    /// Whether this node owns `domain` (by its site) in the current epoch (it may
    /// still have to wait for the epoch to settle).
    pub fn owns(&self, domain: &str) -> bool {
        self.reader.shared.with(|i| i.owner(domain)) == Some(self.me)
    }

    /// Whether this node owns the ownership key (a site, or an unmapped domain) now.
    pub fn owns_key(&self, key: &str) -> bool {
        self.ownership.borrow().owner(key) == Some(self.me)
    }

    /// Whether a transaction to `domain` may start now: this node may deliver, its
    /// lease holds, it owns the domain's site in the current and the settled epoch,
    /// and the domain is not moving to another site.
    pub fn allowed(&self, domain: &str) -> bool {
        *self.may_deliver.borrow()
            && self.lease.left() > self.lease_margin
            && self.reader.shared.with(|i| i.may_deliver(self.me, domain))
            && !self.in_flight.moving(domain)
    }

    /// Reads `shaping.rules_file` again (SIGHUP): the new rules replace the old ones,
    /// or, when the file does not read or parse, the old ones stay and the error is
    /// logged.
    pub fn reload_rules(&self) {
        match self.setup.config.load_rules() {
            Ok(c) => {
                let n = c.rules().len();
                *self.classifier.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c);
                tracing::info!(operator_rules = n, "classification rules reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "classification rules not reloaded; the previous rules stay");
            }
        }
    }

    /// The classifier in force.
    pub fn classifier(&self) -> Arc<Classifier> {
        self.classifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes up to `want` messages of `domain` due at `now_ms` into flight, if the
    /// domain may be delivered now; each token tells `actor` when it ends. Also returns
    /// when the next message not in flight is due. Under the registry's lock: a message
    /// in flight is never taken again, whichever actor took it.
    fn take(
        &self,
        domain: &str,
        now_ms: u64,
        want: usize,
        actor: &ActorRef<DomainMsg>,
    ) -> (Vec<InFlight>, Option<u64>) {
        let mut map = self.in_flight.lock();
        if !self.allowed(domain) {
            return (Vec::new(), None);
        }
        let taken = map.entry(domain.to_string()).or_default();
        let (due, next) = self
            .reader
            .shared
            .with(|i| i.take_due(domain, now_ms, want, taken));
        taken.extend(due.iter().cloned());
        if taken.is_empty() {
            map.remove(domain);
        }
        if !due.is_empty() {
            self.in_flight.total.send_modify(|n| *n += due.len());
        }
        drop(map);
        let tokens = due
            .into_iter()
            .map(|id| InFlight {
                domain: domain.to_string(),
                id,
                actor: actor.clone(),
                registry: self.in_flight.clone(),
            })
            .collect();
        (tokens, next)
    }

    /// Whether nothing in flight is forbidden by `view` (then this node may acknowledge
    /// `view`'s epoch). A domain in flight here cannot change site meanwhile: only the
    /// node that may deliver it proposes that, with none of it in flight.
    pub fn clean_for(&self, view: &Ownership) -> bool {
        let map = self.in_flight.lock();
        self.reader.shared.with(|i| {
            map.keys()
                .all(|d| view.may_deliver(self.me, i.owner_key(d)))
        })
    }
}

/// The messages in flight on this node, by domain; also the lock that orders taking
/// work against acknowledging ownership epochs.
#[derive(Clone)]
pub struct InFlightRegistry {
    domains: Arc<Mutex<HashMap<String, HashSet<String>>>>,
    /// Domains whose move to another site is proposed: none of their mail is taken
    /// until the proposal is decided. Locked after `domains`.
    moving: Arc<Mutex<HashSet<String>>>,
    /// How many there are in all, changed under the lock: a drain waits for zero.
    total: Arc<watch::Sender<usize>>,
}

impl Default for InFlightRegistry {
    fn default() -> Self {
        InFlightRegistry {
            domains: Default::default(),
            moving: Default::default(),
            total: Arc::new(watch::channel(0).0),
        }
    }
}

impl InFlightRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        // Every change is one whole update under the lock.
        self.domains.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages of `domain` this node is sending now.
    pub fn count(&self, domain: &str) -> usize {
        self.lock().get(domain).map_or(0, HashSet::len)
    }

    fn moving_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.moving.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `domain` is moving to another site.
    pub fn moving(&self, domain: &str) -> bool {
        self.moving_set().contains(domain)
    }

    /// Marks `domain` as moving if none of it is in flight; false otherwise.
    pub fn begin_move(&self, domain: &str) -> bool {
        let map = self.lock();
        if map.get(domain).is_some_and(|ids| !ids.is_empty()) {
            return false;
        }
        self.moving_set().insert(domain.to_string());
        true
    }

    /// The move of `domain` was decided (applied or refused).
    pub fn end_move(&self, domain: &str) {
        self.moving_set().remove(domain);
    }

    /// Messages in flight, all domains.
    pub fn total(&self) -> usize {
        *self.total.borrow()
    }

    /// Waits until nothing is in flight.
    pub async fn idle(&self) {
        // The sender lives as long as `self`, so the wait ends only at zero.
        let _ = self.total.subscribe().wait_for(|n| *n == 0).await;
    }

    /// A receiver that sees every change of the total.
    pub fn changes(&self) -> watch::Receiver<usize> {
        self.total.subscribe()
    }

    fn leave(&self, domain: &str, id: &str) {
        let mut map = self.lock();
        if let Some(ids) = map.get_mut(domain)
            && ids.remove(id)
        {
            if ids.is_empty() {
                map.remove(domain);
            }
            self.total.send_modify(|n| *n -= 1);
        }
    }
}

/// One message of one domain in flight on this node. Dropping it (after the outcome's
/// commit, when the message is given back unsent, or when a worker holding it fails)
/// takes the message out of flight and tells its DomainDelivery, which may take it again.
pub struct InFlight {
    pub domain: String,
    pub id: String,
    actor: ActorRef<DomainMsg>,
    registry: InFlightRegistry,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.registry.leave(&self.domain, &self.id);
        let _ = self
            .actor
            .cast(DomainMsg::Finished(std::mem::take(&mut self.id)));
    }
}
