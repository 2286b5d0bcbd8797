//! Delivery actors: the DeliveryManager starts one DomainDelivery per destination domain
//! with due work; a DomainDelivery sends its domain's messages over a few connections
//! and reports every outcome to the OutcomeBatcher.
//!
//! A message stays "in flight" in its DomainDelivery from the moment it is taken until
//! its outcome is committed and applied, so it is never sent twice by this node.
//!
//! Only the domains this node owns are delivered, and only while its lease lasts
//! (ARCHITECTURE.md, "Delivery ownership"). Messages are taken into flight only after
//! checking, under one lock, that the current ownership view allows their domain; the
//! acknowledgement of a new epoch checks under the same lock that nothing it forbids is
//! in flight. So once a node has acknowledged an epoch, it is not delivering anything
//! that epoch gave to another node.

use crate::batcher::BatcherMsg;
use crate::metrics as m;
use baton_cluster::Lease;
use baton_delivery::dsn::{self, FailedRecipient};
use baton_delivery::outbound::{ConnError, Connection, Timeouts, Transaction};
use baton_delivery::retry::RetryPolicy;
use baton_delivery::route::{RouteError, Router, Target};
use baton_delivery::tls::{TlsClients, TlsPolicy};
use baton_queue::clock::now_ms;
use baton_queue::ownership::Ownership;
use baton_queue::state_machine::QueueReader;
use baton_queue::types::Remote;
use baton_queue::{DeliveryRecord, MessageMeta, NewMessage, Outcome};
use baton_smtp::address::{Mailbox, ReversePath};
use baton_smtp::client::OutboundMessage;
use baton_smtp::reply::Reply;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What every delivery actor needs.
pub struct DeliveryContext {
    pub hostname: String,
    pub reader: QueueReader,
    pub router: Router,
    pub tls: TlsClients,
    pub tls_policy: TlsPolicy,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    pub max_connections: usize,
    pub max_messages_per_connection: usize,
    pub outcomes: ActorRef<BatcherMsg<Outcome>>,
    /// False while this node must not start transactions (catching up, draining).
    pub may_deliver: watch::Receiver<bool>,
    /// This node, its lease and the replicated ownership table.
    pub me: u64,
    pub lease: Arc<Lease>,
    /// No transaction starts, and no final dot is sent, with less lease left than this.
    pub lease_margin: Duration,
    pub ownership: watch::Receiver<Arc<Ownership>>,
    /// Messages taken by a DomainDelivery whose outcome is not yet committed, counted
    /// per domain; also the lock that orders taking work against acknowledging epochs.
    pub in_flight_domains: Mutex<HashMap<String, usize>>,
}

impl DeliveryContext {
    /// Whether this node owns `domain` in the current epoch (it may still have to wait
    /// for the epoch to settle).
    pub fn owns(&self, domain: &str) -> bool {
        self.ownership.borrow().owner(domain) == Some(self.me)
    }

    /// Whether a transaction to `domain` may start now.
    pub fn allowed(&self, domain: &str) -> bool {
        *self.may_deliver.borrow()
            && self.lease.left() > self.lease_margin
            && self.ownership.borrow().may_deliver(self.me, domain)
    }

    /// Puts `n` messages of `domain` in flight if the domain may be delivered now.
    fn enter(&self, domain: &str, n: usize) -> bool {
        let mut map = self
            .in_flight_domains
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if n == 0 || !self.allowed(domain) {
            return false;
        }
        *map.entry(domain.to_string()).or_default() += n;
        true
    }

    /// Messages of `domain` this node is sending now.
    pub fn in_flight(&self, domain: &str) -> usize {
        let map = self
            .in_flight_domains
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(domain).copied().unwrap_or(0)
    }

    /// Takes one message of `domain` out of flight.
    fn leave(&self, domain: &str) {
        let mut map = self
            .in_flight_domains
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get_mut(domain) {
            *c -= 1;
            if *c == 0 {
                map.remove(domain);
            }
        }
    }

    /// Whether nothing in flight is forbidden by `view` (then this node may acknowledge
    /// `view`'s epoch).
    pub fn clean_for(&self, view: &Ownership) -> bool {
        let map = self
            .in_flight_domains
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.keys().all(|d| view.may_deliver(self.me, d))
    }

    /// Waits until no message is in flight (polling; drain only).
    pub async fn idle(&self) {
        while !self
            .in_flight_domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------- manager

pub struct DeliveryManager;

pub enum ManagerMsg {
    /// The queue changed: look at the dirty domains.
    Changed,
    /// Ownership changed, or the periodic look: start actors for owned domains with
    /// work; with `poke`, also wake the running ones.
    Review { poke: bool },
}

pub struct ManagerState {
    ctx: Arc<DeliveryContext>,
    domains: HashMap<String, ActorRef<DomainMsg>>,
    by_cell: HashMap<ractor::ActorId, String>,
}

impl ManagerState {
    async fn ensure(
        &mut self,
        myself: &ActorRef<ManagerMsg>,
        domain: String,
        poke: bool,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(actor) = self.domains.get(&domain) {
            if poke {
                let _ = actor.cast(DomainMsg::Poke);
            }
            return Ok(());
        }
        if !self.ctx.owns(&domain) || self.ctx.reader.shared.with(|i| i.queued(&domain)) == 0 {
            return Ok(());
        }
        let (actor, _) = Actor::spawn_linked(
            None,
            DomainDelivery,
            (self.ctx.clone(), domain.clone()),
            myself.get_cell(),
        )
        .await?;
        self.by_cell.insert(actor.get_id(), domain.clone());
        self.domains.insert(domain, actor);
        Ok(())
    }
}

impl Actor for DeliveryManager {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = Arc<DeliveryContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        ctx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Watch the queue: every apply bumps `changed`.
        let mut changed = ctx.reader.shared.changed.subscribe();
        let me = myself.clone();
        tokio::spawn(async move {
            loop {
                if me.cast(ManagerMsg::Changed).is_err() {
                    return;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        });
        // Ownership changes move domains here or away.
        let mut ownership = ctx.ownership.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            while ownership.changed().await.is_ok() {
                if me.cast(ManagerMsg::Review { poke: true }).is_err() {
                    return;
                }
            }
        });
        // And a periodic look, for what no event announces (the lease starting).
        let me = myself.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if me.cast(ManagerMsg::Review { poke: false }).is_err() {
                    return;
                }
            }
        });
        Ok(ManagerState {
            ctx,
            domains: HashMap::new(),
            by_cell: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ManagerMsg::Changed => {
                let dirty = state.ctx.reader.shared.with(|i| i.take_dirty());
                for domain in dirty {
                    state.ensure(&myself, domain, true).await?;
                }
            }
            ManagerMsg::Review { poke } => {
                let domains = state.ctx.reader.shared.with(|i| i.domains());
                for domain in domains {
                    state.ensure(&myself, domain, poke).await?;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failure): (ActorCell, Option<String>) = match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell, None),
            SupervisionEvent::ActorFailed(cell, e) => (cell, Some(e.to_string())),
            _ => return Ok(()),
        };
        if let Some(domain) = state.by_cell.remove(&cell.get_id()) {
            state.domains.remove(&domain);
            if let Some(e) = failure {
                tracing::error!(%domain, error = %e, "domain delivery crashed; restarting");
            }
            // Work may have arrived while it was stopping.
            state.ensure(&myself, domain, true).await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- one domain

/// A domain's backlog is refilled from the index when it falls below this...
const WORK_LOW: usize = 200;
/// ...up to this many messages taken at once.
const WORK_MAX: usize = 1000;

pub struct DomainDelivery;

pub enum DomainMsg {
    /// New or changed work; also the retry timer.
    Poke,
    /// A message's outcome is committed (or failed to commit): it may be taken again.
    Finished(String),
    /// A connection task ended.
    ConnectionDone,
}

pub struct DomainState {
    ctx: Arc<DeliveryContext>,
    domain: String,
    in_flight: HashSet<String>,
    work: Arc<Mutex<VecDeque<String>>>,
    connections: usize,
    live: Arc<AtomicUsize>,
    timer_at: Option<u64>,
}

impl Actor for DomainDelivery {
    type Msg = DomainMsg;
    type State = DomainState;
    type Arguments = (Arc<DeliveryContext>, String);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (ctx, domain): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let _ = myself.cast(DomainMsg::Poke);
        Ok(DomainState {
            ctx,
            domain,
            in_flight: HashSet::new(),
            work: Arc::new(Mutex::new(VecDeque::new())),
            connections: 0,
            live: Arc::new(AtomicUsize::new(0)),
            timer_at: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let look = match msg {
            DomainMsg::Poke => true,
            DomainMsg::Finished(id) => {
                if state.in_flight.remove(&id) {
                    state.ctx.leave(&state.domain);
                }
                false
            }
            DomainMsg::ConnectionDone => {
                state.connections = state.connections.saturating_sub(1);
                false
            }
        };
        state.schedule(&myself, look);
        if state.in_flight.is_empty()
            && state.connections == 0
            && (!state.ctx.owns(&state.domain)
                || state.ctx.reader.shared.with(|i| i.queued(&state.domain)) == 0)
        {
            myself.stop(None);
        }
        Ok(())
    }
}

impl DomainState {
    /// Takes due work, starts connections for it and arms the retry timer.
    fn schedule(&mut self, myself: &ActorRef<DomainMsg>, look: bool) {
        let now = now_ms();
        if !self.ctx.allowed(&self.domain) {
            // Draining, no lease, or not (yet) ours: give back what waits in the backlog.
            let waiting: Vec<String> = self
                .work
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
                .collect();
            for id in waiting {
                if self.in_flight.remove(&id) {
                    self.ctx.leave(&self.domain);
                }
            }
            self.arm_timer(myself, now + 1000);
            return;
        }
        let backlog = self.work.lock().unwrap_or_else(|p| p.into_inner()).len();
        // Refill when the backlog runs low, or when asked to look (new work, timer):
        // not on every finished message, which would rescan the in-flight set each time.
        if look || backlog < WORK_LOW {
            let want = WORK_MAX.saturating_sub(backlog);
            let (due, next) = self
                .ctx
                .reader
                .shared
                .with(|i| i.take_due(&self.domain, now, want, &self.in_flight));
            if self.ctx.enter(&self.domain, due.len()) {
                let mut work = self.work.lock().unwrap_or_else(|p| p.into_inner());
                for id in due {
                    self.in_flight.insert(id.clone());
                    work.push_back(id);
                }
            }
            if let Some(at) = next {
                self.arm_timer(myself, at);
            }
        }
        let queued = self.work.lock().unwrap_or_else(|p| p.into_inner()).len();
        let per_connection = self.ctx.max_messages_per_connection.clamp(1, 20);
        let wanted = queued
            .div_ceil(per_connection)
            .min(self.ctx.max_connections);
        while self.connections < wanted {
            self.connections += 1;
            let worker = Worker {
                ctx: self.ctx.clone(),
                domain: self.domain.clone(),
                work: self.work.clone(),
                actor: myself.clone(),
                live: self.live.clone(),
            };
            tokio::spawn(worker.run());
        }
    }

    fn arm_timer(&mut self, myself: &ActorRef<DomainMsg>, at: u64) {
        let now = now_ms();
        if let Some(t) = self.timer_at
            && t > now
            && t <= at
        {
            return;
        }
        self.timer_at = Some(at);
        let wait = Duration::from_millis(at.saturating_sub(now).max(10));
        let me = myself.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = me.cast(DomainMsg::Poke);
        });
    }
}

/// One connection's worth of work: takes ids from the domain's work queue until empty.
struct Worker {
    ctx: Arc<DeliveryContext>,
    domain: String,
    work: Arc<Mutex<VecDeque<String>>>,
    actor: ActorRef<DomainMsg>,
    /// Open, working connections of this domain (all workers).
    live: Arc<AtomicUsize>,
}

/// Everything needed to attempt one message.
struct Job {
    id: String,
    meta: MessageMeta,
    record: DeliveryRecord,
}

impl Worker {
    fn next_id(&self) -> Option<String> {
        self.work
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    async fn run(self) {
        let mut conn: Option<Connection> = None;
        let mut sent_on_conn = 0usize;
        let mut targets: Option<Vec<Target>> = None;
        let mut unsettled: Option<tokio::task::JoinHandle<()>> = None;
        while let Some(id) = self.next_id() {
            if !self.ctx.allowed(&self.domain) {
                // Draining, no lease, or moved away: leave it queued.
                let _ = self.actor.cast(DomainMsg::Finished(id));
                continue;
            }
            let job = match self.load(&id) {
                Some(job) => job,
                None => {
                    self.release_later(id);
                    continue;
                }
            };
            let now = now_ms();
            if self.ctx.retry.expired(job.meta.received_at_ms, now) {
                let reason = format!(
                    "delivery time expired after {} attempts; last reply: {}",
                    job.record.attempts,
                    job.record.last_reply.as_deref().unwrap_or("none")
                );
                let failed = job
                    .record
                    .recipients
                    .iter()
                    .map(|r| (r.clone(), "4.4.7".to_string(), reason.clone()))
                    .collect();
                let attempt = Attempt {
                    failed,
                    last_reply: Some(reason),
                    expired: true,
                    ..Attempt::default()
                };
                self.finish(&job, attempt);
                continue;
            }
            if targets.is_none() {
                match self.ctx.router.route(&self.domain).await {
                    Ok(t) => targets = Some(t),
                    Err(e) => {
                        self.route_failed(job, &e);
                        // A permanent answer is the domain's; a temporary one is ours to
                        // apply to everything waiting only if nothing else is getting
                        // through.
                        if e.is_permanent() || self.live.load(Ordering::Acquire) == 0 {
                            while let Some(id) = self.next_id() {
                                match self.load(&id) {
                                    Some(job) => self.route_failed(job, &e),
                                    None => self.release_later(id),
                                }
                            }
                        }
                        break;
                    }
                }
            }
            if conn.as_ref().is_some_and(|c| !c.is_ready())
                || sent_on_conn >= self.ctx.max_messages_per_connection
            {
                if let Some(c) = conn.take() {
                    self.live.fetch_sub(1, Ordering::AcqRel);
                    c.quit().await;
                }
                sent_on_conn = 0;
            }
            if conn.is_none() {
                let opened = Connection::open(
                    targets.as_deref().unwrap_or_default(),
                    &self.ctx.hostname,
                    self.ctx.tls_policy,
                    &self.ctx.tls,
                    &self.ctx.timeouts,
                )
                .await;
                match opened {
                    Ok(c) => {
                        self.live.fetch_add(1, Ordering::AcqRel);
                        conn = Some(c);
                    }
                    Err((e, target)) => {
                        let reason = e.to_string();
                        let remote = target.map(|t| Remote {
                            host: t.host,
                            ip: t.addr.ip().to_string(),
                            tls: String::new(),
                        });
                        self.defer_all_from(&job, &reason, remote.unwrap_or_default());
                        // If no other connection to this domain works, the site is down:
                        // defer everything waiting. Otherwise (a host refusing one more
                        // connection, say) leave the rest to the working connections.
                        if self.live.load(Ordering::Acquire) == 0 {
                            while let Some(id) = self.next_id() {
                                match self.load(&id) {
                                    Some(job) => self.defer_all(&job, &reason),
                                    None => self.release_later(id),
                                }
                            }
                        }
                        break;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { break };
            // A message the remote accepted but whose outcome is not committed is the
            // one a crash here would have sent twice; keep at most one such message per
            // connection (ARCHITECTURE.md: duplicates bounded by open connections).
            if let Some(previous) = unsettled.take() {
                let _ = previous.await;
            }
            unsettled = self.attempt(c, job).await;
            sent_on_conn += 1;
        }
        if let Some(c) = conn.take() {
            self.live.fetch_sub(1, Ordering::AcqRel);
            c.quit().await;
        }
        let _ = self.actor.cast(DomainMsg::ConnectionDone);
    }

    /// Releases an id that could not be loaded (finished meanwhile, or unreadable) after
    /// a pause, so an unreadable record is not retried in a hot loop.
    fn release_later(&self, id: String) {
        let actor = self.actor.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let _ = actor.cast(DomainMsg::Finished(id));
        });
    }

    fn load(&self, id: &str) -> Option<Job> {
        let reader = &self.ctx.reader;
        let record = reader.delivery(&self.domain, id).ok().flatten()?;
        let meta = reader.message(id).ok().flatten()?;
        Some(Job {
            id: id.to_string(),
            meta,
            record,
        })
    }

    /// Attempts one message; when the remote answered, returns the task committing the
    /// outcome.
    async fn attempt(
        &self,
        conn: &mut Connection,
        job: Job,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let Some(body) = self.ctx.reader.body(&job.id).ok().flatten() else {
            let _ = self.actor.cast(DomainMsg::Finished(job.id));
            return None;
        };
        let from = if job.meta.sender.is_empty() {
            ReversePath::Null
        } else {
            match Mailbox::parse(&job.meta.sender) {
                Ok(m) => ReversePath::Mailbox(m),
                Err(_) => ReversePath::Null,
            }
        };
        let mut rcpts = Vec::new();
        let mut bad = Vec::new();
        let mut suppressed = Vec::new();
        for r in &job.record.recipients {
            if self.ctx.reader.is_suppressed(r).unwrap_or(false) {
                suppressed.push(r.clone());
                continue;
            }
            match Mailbox::parse(r) {
                Ok(m) => rcpts.push((r.clone(), m)),
                Err(e) => bad.push((
                    r.clone(),
                    "5.1.3".to_string(),
                    format!("bad recipient address: {e}"),
                )),
            }
        }
        if rcpts.is_empty() {
            // Nothing left to send (suppressed, or unparsable): no transaction.
            let attempt = Attempt {
                failed: bad,
                suppressed,
                last_reply: Some("recipient on the suppression list".into()),
                ..Attempt::default()
            };
            return Some(self.finish(&job, attempt));
        }
        let message = OutboundMessage {
            from,
            rcpts: rcpts.iter().map(|(_, m)| m.clone()).collect(),
            size_hint: body.len() as u64,
            eight_bit: job.meta.eight_bit,
            smtputf8: job.meta.smtputf8,
        };
        let lease = self.ctx.lease.clone();
        let lease_left = move || lease.left();
        let host = conn.target.host.clone();
        let remote = Remote {
            host: host.clone(),
            ip: conn.target.addr.ip().to_string(),
            tls: conn.tls_version(),
        };
        match conn
            .send(message, &body, &lease_left, self.ctx.lease_margin)
            .await
        {
            Ok(Transaction {
                rcpt_replies,
                data_reply,
            }) => {
                let mut delivered = Vec::new();
                let mut failed = bad;
                let mut deferred = Vec::new();
                for (i, (addr, _)) in rcpts.iter().enumerate() {
                    let rcpt = rcpt_replies.get(i);
                    let verdict = match (rcpt, &data_reply) {
                        (Some(r), _) if !r.is_positive() => r,
                        (Some(_), Some(d)) => d,
                        (Some(r), None) => r,
                        (None, Some(d)) => d,
                        (None, None) => {
                            deferred.push((addr.clone(), "no reply for recipient".to_string()));
                            continue;
                        }
                    };
                    if verdict.is_completion() {
                        delivered.push(addr.clone());
                    } else if verdict.is_permanent() {
                        failed.push((
                            addr.clone(),
                            status_of(verdict, "5.0.0"),
                            verdict.to_string().trim().to_string(),
                        ));
                    } else {
                        deferred.push((addr.clone(), verdict.to_string().trim().to_string()));
                    }
                }
                let last = data_reply
                    .as_ref()
                    .or(rcpt_replies.last())
                    .map(|r| r.to_string().trim().to_string());
                tracing::info!(
                    id = %job.id, domain = %self.domain, host = %host, tls = conn.tls,
                    delivered = delivered.len(), failed = failed.len(), deferred = deferred.len(),
                    reply = last.as_deref().unwrap_or(""), "attempt"
                );
                let attempt = Attempt {
                    delivered,
                    failed,
                    deferred,
                    suppressed,
                    last_reply: last,
                    remote,
                    expired: false,
                };
                Some(self.finish(&job, attempt))
            }
            Err(ConnError::Abandoned) => {
                tracing::info!(id = %job.id, "delivery abandoned before the final dot");
                let _ = self.actor.cast(DomainMsg::Finished(job.id));
                None
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::info!(id = %job.id, domain = %self.domain, error = %reason, "attempt failed");
                let deferred = rcpts
                    .iter()
                    .map(|(r, _)| (r.clone(), reason.clone()))
                    .collect();
                let attempt = Attempt {
                    failed: bad,
                    deferred,
                    suppressed,
                    last_reply: Some(reason),
                    remote,
                    ..Attempt::default()
                };
                self.finish(&job, attempt);
                None
            }
        }
    }

    fn route_failed(&self, job: Job, e: &RouteError) {
        if e.is_permanent() {
            let failed = job
                .record
                .recipients
                .iter()
                .map(|r| (r.clone(), e.status().to_string(), e.to_string()))
                .collect();
            let attempt = Attempt {
                failed,
                last_reply: Some(e.to_string()),
                ..Attempt::default()
            };
            self.finish(&job, attempt);
        } else {
            self.defer_all(&job, &e.to_string());
        }
    }

    fn defer_all(&self, job: &Job, reason: &str) {
        self.defer_all_from(job, reason, Remote::default());
    }

    /// Defers every recipient of `job`; `remote` is who refused, if anyone did.
    fn defer_all_from(&self, job: &Job, reason: &str, remote: Remote) {
        let deferred = job
            .record
            .recipients
            .iter()
            .map(|r| (r.clone(), reason.to_string()))
            .collect();
        let attempt = Attempt {
            deferred,
            last_reply: Some(reason.to_string()),
            remote,
            ..Attempt::default()
        };
        self.finish(job, attempt);
    }

    /// Commits the outcome of one attempt; the message leaves "in flight" afterwards.
    fn finish(&self, job: &Job, a: Attempt) -> tokio::task::JoinHandle<()> {
        let now = now_ms();
        metrics::counter!(m::DELIVERED).increment(a.delivered.len() as u64);
        metrics::counter!(m::BOUNCED).increment(a.failed.len() as u64);
        metrics::counter!(m::DEFERRED).increment(a.deferred.len() as u64);
        metrics::counter!(m::SUPPRESSED).increment(a.suppressed.len() as u64);
        let d = self.domain.as_str();
        metrics::counter!(m::DOMAIN_OUTCOMES, "domain" => d.to_string(), "result" => "delivered")
            .increment(a.delivered.len() as u64);
        metrics::counter!(m::DOMAIN_OUTCOMES, "domain" => d.to_string(), "result" => "deferred")
            .increment(a.deferred.len() as u64);
        metrics::counter!(m::DOMAIN_OUTCOMES, "domain" => d.to_string(), "result" => "bounced")
            .increment(a.failed.len() as u64);
        if !a.delivered.is_empty() {
            let age = now.saturating_sub(job.meta.received_at_ms) as f64 / 1000.0;
            metrics::histogram!(m::DELIVERY_LATENCY, "domain" => d.to_string()).record(age);
        }
        let mut finished = a.delivered;
        finished.extend(a.failed.iter().map(|(r, _, _)| r.clone()));
        finished.extend(a.suppressed.iter().cloned());
        let remote_host = (!a.remote.host.is_empty()).then_some(a.remote.host.as_str());
        let dsn = if !a.failed.is_empty() && !job.meta.sender.is_empty() {
            self.dsn(job, &a.failed, remote_host, now)
        } else {
            None
        };
        let next_attempt_ms =
            now + self.ctx.retry.delay(job.record.attempts + 1).as_millis() as u64;
        let outcome = Outcome {
            id: job.id.clone(),
            domain: self.domain.clone(),
            finished,
            next_attempt_ms,
            last_reply: a.last_reply,
            dsn,
            failed: a.failed.into_iter().map(|(r, _, _)| r).collect(),
            suppressed: a.suppressed,
            expired: a.expired,
            remote: a.remote,
            node: self.ctx.me,
        };
        let outcomes = self.ctx.outcomes.clone();
        let actor = self.actor.clone();
        let id = job.id.clone();
        tokio::spawn(async move {
            // The message stays in flight until its outcome is committed: releasing it
            // earlier would let it be taken and sent again. Enqueue and outcomes are
            // idempotent, so retrying the commit is safe.
            let mut wait = Duration::from_millis(200);
            loop {
                let o = outcome.clone();
                let result = outcomes
                    .call(
                        |port| BatcherMsg::Submit(o, port),
                        Some(Duration::from_secs(60)),
                    )
                    .await;
                match result {
                    Ok(ractor::rpc::CallResult::Success(Ok(()))) => break,
                    Err(_) | Ok(ractor::rpc::CallResult::SenderError) => {
                        // The batcher is gone (shutting down): the record stays queued.
                        tracing::warn!(%id, "outcome not committed: shutting down");
                        break;
                    }
                    other => {
                        tracing::warn!(%id, result = ?other.ok().map(|_| ()), "outcome not committed yet; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(10));
                    }
                }
            }
            let _ = actor.cast(DomainMsg::Finished(id));
        })
    }

    fn dsn(
        &self,
        job: &Job,
        failed: &[(String, String, String)],
        remote: Option<&str>,
        now: u64,
    ) -> Option<NewMessage> {
        let original = self
            .ctx
            .reader
            .body(&job.id)
            .ok()
            .flatten()
            .unwrap_or_default();
        let token = ulid::Ulid::new().to_string();
        let recipients: Vec<FailedRecipient> = failed
            .iter()
            .map(|(address, status, diagnostic)| FailedRecipient {
                address: address.clone(),
                status: status.clone(),
                remote_mta: remote.map(str::to_string),
                diagnostic: diagnostic.clone(),
            })
            .collect();
        let body = dsn::build(&dsn::DsnInput {
            reporting_mta: &self.ctx.hostname,
            queue_id: &job.id,
            to: &job.meta.sender,
            arrival_unix: job.meta.received_at_ms / 1000,
            now_unix: now / 1000,
            recipients: &recipients,
            original: &original,
            token: &token,
        });
        Some(NewMessage {
            id: token,
            sender: String::new(),
            recipients: vec![job.meta.sender.clone()],
            body,
            received_at_ms: now,
            eight_bit: original.iter().any(|b| *b >= 0x80),
            smtputf8: job.meta.smtputf8,
        })
    }
}

/// What one attempt (or a decision without one) did to a job's recipients.
#[derive(Default)]
struct Attempt {
    delivered: Vec<String>,
    /// (recipient, enhanced status, reason)
    failed: Vec<(String, String, String)>,
    /// (recipient, reason)
    deferred: Vec<(String, String)>,
    suppressed: Vec<String>,
    last_reply: Option<String>,
    remote: Remote,
    /// The failure is the message's age.
    expired: bool,
}

/// The enhanced status of a reply, or `default`.
fn status_of(reply: &Reply, default: &str) -> String {
    reply
        .enhanced
        .as_ref()
        .map(|e| e.to_string())
        .unwrap_or_else(|| default.to_string())
}
