//! The in-memory scheduling index: for each destination domain, which messages are due
//! when. Rebuilt from the state on open and on snapshot install; kept current by `apply`.
//! Readers (delivery) wait on [`Shared::changed`] and then ask for due work.
//!
//! The deliveries of a paused tenant's messages are held aside, out of their domains'
//! queues: delivery does not see them (nothing due, nothing queued) until the tenant is
//! resumed and they go back.

use crate::ownership::Ownership;
use crate::types::{NodeId, SiteOf};
use baton_reputation::site::SiteState;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Default)]
struct DomainQueue {
    due: BTreeSet<(u64, String)>,
    by_id: HashMap<String, u64>,
}

/// Which queued message is whose, and the deliveries held for paused tenants.
#[derive(Default)]
struct Tenants {
    /// The tenant of each queued message that has one (names shared).
    of: HashMap<String, Arc<str>>,
    names: HashSet<Arc<str>>,
    /// Paused tenants, with what their senders are told.
    paused: HashMap<String, String>,
    /// A paused tenant's deliveries: (domain, id) and when each was due.
    held: HashMap<Arc<str>, HashMap<(String, String), u64>>,
}

impl Tenants {
    fn intern(&mut self, name: String) -> Arc<str> {
        match self.names.get(name.as_str()) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = name.into();
                self.names.insert(n.clone());
                n
            }
        }
    }

    /// The paused tenant of message `id`, if its tenant is paused.
    fn paused_of(&self, id: &str) -> Option<Arc<str>> {
        self.of
            .get(id)
            .filter(|t| self.paused.contains_key(&***t))
            .cloned()
    }
}

/// Due work per domain.
#[derive(Default)]
pub struct Index {
    domains: HashMap<String, DomainQueue>,
    messages: usize,
    dirty: HashSet<String>,
    /// Domains an operator suspended: nothing of theirs is due.
    suspended: HashSet<String>,
    /// Each domain's site, once its owner resolved it.
    sites: HashMap<String, SiteOf>,
    /// Each site's replicated throttle.
    site_states: HashMap<String, SiteState>,
    /// The ownership table as applied with the sites above.
    ownership: Arc<Ownership>,
    /// The log index of each site's last operator resume (since this process started:
    /// a site's actor acts on those applied after it started).
    site_resumes: HashMap<String, u64>,
    tenants: Tenants,
}

impl Index {
    pub(crate) fn upsert(&mut self, domain: &str, id: &str, due_ms: u64) {
        if let Some(tenant) = self.tenants.paused_of(id) {
            self.tenants
                .held
                .entry(tenant)
                .or_default()
                .insert((domain.to_string(), id.to_string()), due_ms);
            return;
        }
        let queue = self.domains.entry(domain.to_string()).or_default();
        if let Some(old) = queue.by_id.insert(id.to_string(), due_ms) {
            queue.due.remove(&(old, id.to_string()));
        }
        queue.due.insert((due_ms, id.to_string()));
        self.dirty.insert(domain.to_string());
    }

    pub(crate) fn remove(&mut self, domain: &str, id: &str) {
        if let Some(tenant) = self.tenants.of.get(id)
            && let Some(held) = self.tenants.held.get_mut(tenant)
        {
            held.remove(&(domain.to_string(), id.to_string()));
            if held.is_empty() {
                let tenant = tenant.clone();
                self.tenants.held.remove(&tenant);
            }
        }
        if let Some(queue) = self.domains.get_mut(domain) {
            if let Some(old) = queue.by_id.remove(id) {
                queue.due.remove(&(old, id.to_string()));
            }
            if queue.by_id.is_empty() {
                self.domains.remove(domain);
            }
        }
        self.dirty.insert(domain.to_string());
    }

    pub(crate) fn add_messages(&mut self, n: isize) {
        self.messages = self.messages.saturating_add_signed(n);
    }

    pub(crate) fn clear(&mut self) {
        for domain in self.domains.keys() {
            self.dirty.insert(domain.clone());
        }
        self.domains.clear();
        self.messages = 0;
        self.tenants = Tenants::default();
    }

    /// Every queued message's tenant, and the paused tenants with their reasons (before
    /// the deliveries are upserted).
    pub(crate) fn set_tenants(
        &mut self,
        of: HashMap<String, String>,
        paused: HashMap<String, String>,
    ) {
        for (id, tenant) in of {
            self.set_tenant(id, Some(tenant));
        }
        self.tenants.paused = paused;
    }

    /// Message `id`'s tenant, or none (the message is gone).
    pub(crate) fn set_tenant(&mut self, id: String, tenant: Option<String>) {
        match tenant {
            Some(t) => {
                let t = self.tenants.intern(t);
                self.tenants.of.insert(id, t);
            }
            None => {
                self.tenants.of.remove(&id);
            }
        }
    }

    /// Pauses `tenant` (with the reason its senders are told): its deliveries leave
    /// their domains' queues. Or resumes it (`None`): they go back, as due as they were.
    pub(crate) fn pause_tenant(&mut self, tenant: String, reason: Option<String>) {
        match reason {
            Some(reason) => {
                self.tenants.paused.insert(tenant.clone(), reason);
                let mut moving = Vec::new();
                for (domain, q) in &self.domains {
                    for (id, due) in &q.by_id {
                        if self.tenants.of.get(id).is_some_and(|t| **t == *tenant) {
                            moving.push((domain.clone(), id.clone(), *due));
                        }
                    }
                }
                for (domain, id, due) in moving {
                    self.remove(&domain, &id);
                    self.upsert(&domain, &id, due);
                }
            }
            None => {
                self.tenants.paused.remove(&tenant);
                if let Some(held) = self.tenants.held.remove(tenant.as_str()) {
                    for ((domain, id), due) in held {
                        self.upsert(&domain, &id, due);
                    }
                }
            }
        }
    }

    /// Why `tenant` is paused (what its senders are told), if it is.
    pub fn tenant_paused(&self, tenant: &str) -> Option<&str> {
        self.tenants.paused.get(tenant).map(String::as_str)
    }

    /// Deliveries (message, domain) held because `tenant` is paused.
    pub fn held(&self, tenant: &str) -> usize {
        self.tenants.held.get(tenant).map_or(0, |h| h.len())
    }

    pub(crate) fn set_suspended(&mut self, domains: HashSet<String>) {
        for d in self.suspended.symmetric_difference(&domains) {
            self.dirty.insert(d.clone());
        }
        self.suspended = domains;
    }

    pub(crate) fn suspend(&mut self, domain: &str, on: bool) {
        let changed = if on {
            self.suspended.insert(domain.to_string())
        } else {
            self.suspended.remove(domain)
        };
        if changed {
            self.dirty.insert(domain.to_string());
        }
    }

    pub(crate) fn set_sites(
        &mut self,
        sites: HashMap<String, SiteOf>,
        states: HashMap<String, SiteState>,
        ownership: Arc<Ownership>,
    ) {
        self.dirty.extend(sites.keys().cloned());
        self.dirty.extend(self.sites.keys().cloned());
        self.sites = sites;
        self.site_states = states;
        self.ownership = ownership;
    }

    pub(crate) fn map_site(&mut self, domain: String, of: SiteOf) {
        self.dirty.insert(domain.clone());
        self.sites.insert(domain, of);
    }

    pub(crate) fn set_site_state(&mut self, site: String, state: SiteState) {
        self.site_states.insert(site, state);
    }

    pub(crate) fn resume_site(&mut self, site: String, at: u64) {
        self.site_states.remove(&site);
        self.site_resumes.insert(site, at);
    }

    /// The log index of the last operator resume of `site` applied here (0: none).
    pub fn site_resumed_at(&self, site: &str) -> u64 {
        self.site_resumes.get(site).copied().unwrap_or(0)
    }

    pub(crate) fn set_ownership(&mut self, ownership: Arc<Ownership>) {
        self.ownership = ownership;
    }

    /// The site `domain` belongs to, once resolved.
    pub fn site_of(&self, domain: &str) -> Option<&SiteOf> {
        self.sites.get(domain)
    }

    /// What delivery ownership of `domain` follows: its site, or the domain itself
    /// while its site is not known.
    pub fn owner_key<'a>(&'a self, domain: &'a str) -> &'a str {
        self.sites.get(domain).map_or(domain, |s| s.site.as_str())
    }

    /// The owner of `domain` (by its site) in the current epoch.
    pub fn owner(&self, domain: &str) -> Option<NodeId> {
        self.ownership.owner(self.owner_key(domain))
    }

    /// Whether `node` may deliver `domain` by the ownership table and sites applied
    /// together (its lease aside).
    pub fn may_deliver(&self, node: NodeId, domain: &str) -> bool {
        self.ownership.may_deliver(node, self.owner_key(domain))
    }

    /// A site's replicated throttle, if it ever changed.
    pub fn site_state(&self, site: &str) -> Option<&SiteState> {
        self.site_states.get(site)
    }

    /// Every site with a known throttle or domain, with its domains.
    pub fn sites(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out: std::collections::BTreeMap<String, Vec<String>> = self
            .site_states
            .keys()
            .map(|s| (s.clone(), Vec::new()))
            .collect();
        for (domain, of) in &self.sites {
            out.entry(of.site.clone()).or_default().push(domain.clone());
        }
        for domains in out.values_mut() {
            domains.sort();
        }
        out
    }

    /// Whether an operator suspended delivery to `domain`.
    pub fn is_suspended(&self, domain: &str) -> bool {
        self.suspended.contains(domain)
    }

    /// The ids queued for `domain` with when each is due.
    pub fn due_times(&self, domain: &str) -> impl Iterator<Item = (&str, u64)> {
        self.domains
            .get(domain)
            .into_iter()
            .flat_map(|q| q.due.iter().map(|(due, id)| (id.as_str(), *due)))
    }

    /// When the next message for `domain` is due, if any is queued (never, while the
    /// domain is suspended).
    pub fn next_due(&self, domain: &str) -> Option<u64> {
        if self.suspended.contains(domain) {
            return None;
        }
        self.domains
            .get(domain)
            .and_then(|q| q.due.first().map(|(due, _)| *due))
    }

    /// Up to `want` ids due at `now_ms` for `domain` that are not in `exclude`, earliest
    /// first, and — when fewer were due — when the next one not in `exclude` is due.
    /// One pass over the domain's queue, bounded by `exclude.len() + want`.
    pub fn take_due(
        &self,
        domain: &str,
        now_ms: u64,
        want: usize,
        exclude: &std::collections::HashSet<String>,
    ) -> (Vec<String>, Option<u64>) {
        let mut ids = Vec::new();
        if self.suspended.contains(domain) {
            return (ids, None);
        }
        let Some(q) = self.domains.get(domain) else {
            return (ids, None);
        };
        for (due, id) in &q.due {
            if exclude.contains(id) {
                continue;
            }
            if *due > now_ms {
                return (ids, Some(*due));
            }
            if ids.len() >= want {
                return (ids, None);
            }
            ids.push(id.clone());
        }
        (ids, None)
    }

    /// Marks `domain` as changed, so watchers look at it.
    pub fn mark_dirty(&mut self, domain: &str) {
        self.dirty.insert(domain.to_string());
    }

    /// Number of (message, domain) records queued for `domain`.
    pub fn queued(&self, domain: &str) -> usize {
        self.domains.get(domain).map_or(0, |q| q.by_id.len())
    }

    pub fn domains(&self) -> Vec<String> {
        self.domains.keys().cloned().collect()
    }

    /// Messages in the queue (each counted once, whatever its domains).
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Domains whose queue changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<String> {
        self.dirty.drain().collect()
    }
}

/// The index plus a change signal, shared between the state machine and its readers.
pub struct Shared {
    pub index: Mutex<Index>,
    /// Bumped after every apply; the value is the last applied log index.
    pub changed: watch::Sender<u64>,
    /// The ownership table as last applied.
    pub ownership: watch::Sender<Arc<Ownership>>,
    /// When this node applied each node's last lease renewal (log index, local time):
    /// the leader counts lease expiry from here, never from a replicated clock.
    pub renewals: Mutex<HashMap<NodeId, (u64, Instant)>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            index: Mutex::new(Index::default()),
            changed: watch::channel(0).0,
            ownership: watch::channel(Arc::new(Ownership::default())).0,
            renewals: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` on the index. A poisoned lock is taken over: the index holds no
    /// invariant a panic elsewhere could break halfway that `apply` does not rewrite.
    pub fn with<T>(&self, f: impl FnOnce(&mut Index) -> T) -> T {
        let mut guard = self.index.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}
