//! The components a node is made of (the list is in [`crate::node::run`]), each with
//! its start and its drain. What they share is in [`Shared`].

use crate::batcher::BatcherMsg;
use crate::config::Config;
use crate::delivery::{DeliveryContext, DeliveryManager, ManagerMsg};
use crate::http::{self, HttpState};
use crate::ingress::{Accepted, IngressShared, Listener};
use crate::supervisor::{BoxFuture, Component, Slot, Statuses, spawn_task};
use anyhow::Context as _;
use baton_cluster::{Lease, Peers, RaftService, Writer, lease};
use baton_queue::QueueNode;
use baton_queue::types::Request;
use ractor::{Actor, ActorCell, ActorRef};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a drain waits for open SMTP sessions, and for deliveries in flight.
pub const DRAIN: Duration = Duration::from_secs(30);
/// How long a drain waits for a component's task to end once told to stop.
const STOP: Duration = Duration::from_secs(5);
/// Between attempts to hand a draining node's domains back.
const RELEASE_PAUSE: Duration = Duration::from_millis(250);

/// What the components of one node share.
pub struct Shared {
    pub config: Config,
    pub queue: QueueNode,
    pub peers: Peers,
    pub writer: Writer,
    pub lease: Arc<Lease>,
    /// True once the node drains (set before any component is drained).
    pub stopping: watch::Sender<bool>,
    /// This node has reached the leader's commit index (after start).
    pub caught_up: watch::Sender<bool>,
    /// The node accepts mail: caught up, a leader known, not draining.
    pub ready: watch::Sender<bool>,
    /// The node may start deliveries: caught up and not draining.
    pub deliver: watch::Sender<bool>,
    pub committer: Slot<BatcherMsg<Accepted>>,
    pub outcomes: Slot<BatcherMsg<baton_queue::types::Finished>>,
    /// Set by the delivery drain when nothing was left in flight: only then may the lease
    /// drain hand the domains back at once.
    pub delivery_drained: AtomicBool,
    pub statuses: Statuses,
}

/// A component whose work is one task: its stop switch and its actor.
#[derive(Default)]
pub struct Task {
    stop: Mutex<Option<watch::Sender<bool>>>,
    cell: Mutex<Option<ActorCell>>,
}

impl Task {
    /// Runs `work(stop)` in an actor linked to `supervisor`.
    pub async fn start<F>(
        &self,
        supervisor: ActorCell,
        work: impl FnOnce(watch::Receiver<bool>) -> F,
    ) -> anyhow::Result<Option<ActorCell>>
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let cell = spawn_task(supervisor, work(stopped)).await?;
        *lock(&self.stop) = Some(stop);
        *lock(&self.cell) = Some(cell.clone());
        Ok(Some(cell))
    }

    /// Tells the work to stop and waits up to `timeout` for it to end; then ends it.
    pub async fn stop(&self, timeout: Duration) {
        if let Some(stop) = lock(&self.stop).take() {
            stop.send_replace(true);
        }
        let Some(cell) = lock(&self.cell).take() else {
            return;
        };
        // The actor stops by itself once its work returns; a stop signal waits for that.
        if cell.stop_and_wait(None, Some(timeout)).await.is_err() {
            cell.kill();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Implements [`Component`] for a type with `name`, `start` and `drain` methods of its own.
macro_rules! component {
    ($t:ty, $name:literal) => {
        impl Component for $t {
            fn name(&self) -> &'static str {
                $name
            }
            fn start(&self, sup: ActorCell) -> BoxFuture<'_, anyhow::Result<Option<ActorCell>>> {
                Box::pin(self.start(sup))
            }
            fn drain(&self) -> BoxFuture<'_, ()> {
                Box::pin(self.drain())
            }
        }
    };
}

// ---------------------------------------------------------------- raft

/// The Raft service peers call (votes, appends, forwarded writes, joins). It serves
/// through the drain (forwarded writes, the leadership hand-over) and stops last.
pub struct Raft(pub Arc<Shared>, pub Task);
component!(Raft, "raft");

impl Raft {
    async fn start(&self, sup: ActorCell) -> anyhow::Result<Option<ActorCell>> {
        let listen = self.0.config.cluster.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cluster.listen {listen}"))?;
        let mut server = tonic::transport::Server::builder();
        let tls = self.0.peers.tls();
        if let Some(tls) = tls {
            // A client without a certificate signed by cluster.tls_ca is refused at the
            // handshake; a failed handshake ends that connection only.
            server = server
                .tls_config(tls.server())
                .context("cluster.tls_cert / cluster.tls_key / cluster.tls_ca")?;
        }
        let how = if tls.is_some() { ", mutual TLS" } else { "" };
        say!("raft (peers only{how}) on {listen}");
        let service = RaftService::new(self.0.queue.clone()).into_server();
        self.1
            .start(sup, move |mut stop| async move {
                // Replies (append-entries acks, forwarded writes) are small: without
                // TCP_NODELAY, Nagle's algorithm holds them for the peer's delayed ACK.
                let incoming = tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |conn| {
                        conn.inspect(|stream| {
                            let _ = stream.set_nodelay(true);
                        })
                    },
                );
                server
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await?;
                Ok(())
            })
            .await
    }

    async fn drain(&self) {
        self.1.stop(Duration::from_secs(1)).await;
    }
}

// ---------------------------------------------------------------- membership

/// With no cluster state on disk: form a cluster (`cluster.bootstrap`, once the seeds
/// say none exists), join through `cluster.join`, or wait to be added. (With
/// `cluster.bootstrap` and no seeds, the queue formed a one-node cluster when it opened.)
pub struct Membership(pub Arc<Shared>);
component!(Membership, "membership");

/// How long a node with no state keeps trying to form or join a cluster before it gives
/// up (and exits, to be restarted).
const JOIN_FOR: Duration = Duration::from_secs(300);

impl Membership {
    async fn start(&self, _: ActorCell) -> anyhow::Result<Option<ActorCell>> {
        let s = &self.0;
        let c = &s.config;
        if s.queue.raft.is_initialized().await.unwrap_or(false) {
            return Ok(None);
        }
        if c.cluster.join.is_empty() {
            // An operator adds it (`batonctl node add`): the leader's first append
            // makes it a learner. Until then it is not ready.
            say!(
                "{} holds no cluster state and cluster.join is empty: waiting to be added (on a member: batonctl node add {} {}); set cluster.bootstrap = true to form a new cluster instead",
                c.node.data_dir.display(),
                c.node.id,
                c.cluster.advertise
            );
            return Ok(None);
        }
        // With ids from host names, only ordinal 0 forms a cluster: two pods without
        // state must never both form one.
        let may_form = c.cluster.bootstrap && (!c.node.id_from_hostname || c.node.id == 1);
        if may_form && self.form_unless_found().await? {
            return Ok(None);
        }
        say!("joining the cluster through {:?}", c.cluster.join);
        baton_cluster::join::join(
            &s.peers,
            &c.cluster.join,
            c.node.id,
            &c.cluster.advertise,
            JOIN_FOR,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        Ok(None)
    }

    /// Asks the seeds until one is a member of a cluster (false: join it) or enough say
    /// they hold no state that this node forms a new cluster (true).
    async fn form_unless_found(&self) -> anyhow::Result<bool> {
        let s = &self.0;
        let c = &s.config;
        let seeds = &c.cluster.join;
        tracing::info!(
            ?seeds,
            "no cluster state: asking the seeds whether a cluster exists before forming one"
        );
        let deadline = tokio::time::Instant::now() + JOIN_FOR;
        let mut last = baton_cluster::join::Probed::default();
        while tokio::time::Instant::now() < deadline && !*s.stopping.borrow() {
            let probed = baton_cluster::join::probe(&s.peers, seeds, Duration::from_secs(2)).await;
            if probed.members > 0 {
                tracing::info!(
                    members = probed.members,
                    "a cluster exists among the seeds: joining it"
                );
                return Ok(false);
            }
            if probed.may_form(seeds.len()) {
                tracing::info!(
                    empty = probed.empty,
                    silent = probed.silent,
                    "no cluster among the seeds: forming one"
                );
                s.queue
                    .form(&c.cluster.advertise)
                    .await
                    .context("forming the cluster")?;
                return Ok(true);
            }
            if probed != last {
                tracing::info!(
                    ?probed,
                    "waiting for the seeds to answer before forming or joining"
                );
                last = probed;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::bail!(
            "no cluster found and too few seeds answered to form one within {JOIN_FOR:?} (last: {last:?})"
        )
    }

    async fn drain(&self) {}
}

// ---------------------------------------------------------------- leadership

/// At the end of a drain, a leader hands leadership to an up-to-date voter.
pub struct Leadership(pub Arc<Shared>);
component!(Leadership, "leadership");

impl Leadership {
    async fn start(&self, _: ActorCell) -> anyhow::Result<Option<ActorCell>> {
        Ok(None)
    }

    async fn drain(&self) {
        baton_cluster::handover::hand_over(&self.0.queue, &self.0.peers, STOP).await;
    }
}

// ---------------------------------------------------------------- lease

/// Catches up with the leader's commit index, then renews this node's delivery lease.
/// Its drain stops renewing and, if nothing is in flight, hands the domains back: their
/// outcomes are committed, so the next owners start where this node stopped.
pub struct LeaseKeeper {
    pub shared: Arc<Shared>,
    pub task: Task,
}
component!(LeaseKeeper, "lease");

impl LeaseKeeper {
    async fn start(&self, sup: ActorCell) -> anyhow::Result<Option<ActorCell>> {
        let s = self.shared.clone();
        self.task
            .start(sup, move |stop| async move {
                // A (re)started node catches up with the leader's commit index before it
                // takes a lease, so it never joins the owner set with a stale queue.
                let index = baton_cluster::catch_up::catch_up(&s.queue, &s.peers).await;
                tracing::info!(index, "caught up with the leader's commit index");
                s.caught_up.send_replace(true);
                if !*s.stopping.borrow() {
                    s.deliver.send_replace(true);
                }
                lease::keep(s.lease.clone(), s.writer.clone(), stop).await;
                Ok(())
            })
            .await
    }

    async fn drain(&self) {
        self.task.stop(STOP).await;
        let s = &self.shared;
        if !s.delivery_drained.load(Ordering::Acquire) {
            tracing::warn!(
                "deliveries still in flight after the drain; domains move when the lease expires"
            );
            return;
        }
        s.lease.revoke();
        // Retried until STOP: a write finds no leader for the second or so of an
        // election (another node's drain, a leader lost), and domains not handed back
        // here wait for the lease to expire.
        let deadline = tokio::time::Instant::now() + STOP;
        loop {
            let release = s.writer.write(Request::Release {
                node: s.config.node.id,
            });
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(remaining, release).await {
                Ok(Ok(_)) => {
                    tracing::info!("domains handed over");
                    return;
                }
                Ok(Err(e)) if tokio::time::Instant::now() + RELEASE_PAUSE < deadline => {
                    tracing::info!(error = %e, "handing domains over: retrying");
                    tokio::time::sleep(RELEASE_PAUSE).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not hand domains over; they move when the lease expires");
                    return;
                }
                Err(_) => {
                    tracing::warn!(
                        "handing domains over timed out; they move when the lease expires"
                    );
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------- delivery

/// The DeliveryManager and everything below it. Its drain stops new transactions and
/// waits (up to [`DRAIN`]) for the messages in flight to have their outcomes committed.
pub struct Delivery {
    pub shared: Arc<Shared>,
    pub ctx: Arc<DeliveryContext>,
    pub manager: Mutex<Option<ActorRef<ManagerMsg>>>,
}
component!(Delivery, "delivery");

impl Delivery {
    async fn start(&self, sup: ActorCell) -> anyhow::Result<Option<ActorCell>> {
        let args = (self.ctx.clone(), self.shared.writer.clone());
        let (manager, _) = Actor::spawn_linked(None, DeliveryManager, args, sup).await?;
        let cell = manager.get_cell();
        *lock(&self.manager) = Some(manager);
        Ok(Some(cell))
    }

    async fn drain(&self) {
        self.shared.deliver.send_replace(false);
        let in_flight = &self.ctx.in_flight;
        match tokio::time::timeout(DRAIN, in_flight.idle()).await {
            Ok(()) => self.shared.delivery_drained.store(true, Ordering::Release),
            Err(_) => tracing::warn!(
                in_flight = in_flight.total(),
                "deliveries still in flight at the end of the drain"
            ),
        }
        let manager = lock(&self.manager).take();
        if let Some(manager) = manager {
            let _ = manager.stop_and_wait(None, Some(STOP)).await;
        }
    }
}

// ---------------------------------------------------------------- background tasks

/// What a [`Background`] component runs: given the node and the stop signal.
type BackgroundWork =
    fn(Arc<Shared>, watch::Receiver<bool>) -> BoxFuture<'static, anyhow::Result<()>>;

/// A component whose work is one task that runs until told to stop.
pub struct Background {
    name: &'static str,
    shared: Arc<Shared>,
    work: BackgroundWork,
    /// Off by configuration: the start does nothing.
    enabled: bool,
    task: Task,
}

impl Component for Background {
    fn name(&self) -> &'static str {
        self.name
    }

    fn start(&self, sup: ActorCell) -> BoxFuture<'_, anyhow::Result<Option<ActorCell>>> {
        Box::pin(async move {
            if !self.enabled {
                return Ok(None);
            }
            let (shared, work) = (self.shared.clone(), self.work);
            self.task.start(sup, move |stop| work(shared, stop)).await
        })
    }

    fn drain(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.task.stop(STOP))
    }
}

impl Background {
    /// On the leader: moves the domains of nodes whose lease expired.
    pub fn lease_expiry(shared: &Arc<Shared>) -> Background {
        Background::new("lease-expiry", shared, true, |s, stop| {
            Box::pin(async move {
                let length = s.config.cluster.lease;
                lease::expire(s.queue.clone(), s.writer.clone(), length, stop).await;
                Ok(())
            })
        })
    }

    /// On the leader: POSTs events to `events.webhook_url`, when it is set.
    pub fn webhook(shared: &Arc<Shared>) -> Background {
        let enabled = !shared.config.events.webhook_url.is_empty();
        Background::new("webhook", shared, enabled, |s, stop| {
            Box::pin(async move {
                let events = s.config.events.clone();
                crate::webhook::run(s.queue.clone(), s.writer.clone(), events, stop).await;
                Ok(())
            })
        })
    }

    /// On the leader: trims the event log to its retention.
    pub fn event_retention(shared: &Arc<Shared>) -> Background {
        Background::new("event-retention", shared, true, |s, stop| {
            Box::pin(async move {
                let events = s.config.events.clone();
                crate::events::retain(s.queue.clone(), s.writer.clone(), events, stop).await;
                Ok(())
            })
        })
    }

    /// Until the bounce-token key exists: the leader makes it.
    pub fn bounce_key(shared: &Arc<Shared>) -> Background {
        Background::new("bounce-key", shared, true, |s, stop| {
            Box::pin(async move {
                crate::feedback::ensure_key(s.queue.clone(), s.writer.clone(), stop).await;
                Ok(())
            })
        })
    }

    fn new(
        name: &'static str,
        shared: &Arc<Shared>,
        enabled: bool,
        work: BackgroundWork,
    ) -> Background {
        Background {
            name,
            shared: shared.clone(),
            work,
            enabled,
            task: Task::default(),
        }
    }
}

// ---------------------------------------------------------------- ingress

/// The SMTP listeners and their sessions. Its drain stops accepting, tells idle sessions
/// to come back later, lets messages in DATA finish (up to [`DRAIN`]), and waits for
/// their commits to be answered.
pub struct Ingress(pub Arc<Shared>, pub Arc<IngressShared>, pub Task);
component!(Ingress, "ingress");

impl Ingress {
    async fn start(&self, sup: ActorCell) -> anyhow::Result<Option<ActorCell>> {
        let mut listeners = Vec::new();
        for l in &self.0.config.smtp.listeners {
            let listener = Listener::bind(l.clone())
                .await
                .map_err(anyhow::Error::msg)?;
            say!("smtp {:?} listener on {}", l.mode, listener.local_addr());
            listeners.push(listener);
        }
        let shared = self.1.clone();
        self.2
            .start(sup, move |stop| async move {
                let mut running = tokio::task::JoinSet::new();
                for l in listeners {
                    running.spawn(l.run(shared.clone(), stop.clone(), DRAIN));
                }
                while let Some(ended) = running.join_next().await {
                    // A listener that panicked takes the component down with it, so the
                    // supervisor binds them all again.
                    ended.context("an SMTP listener failed")?;
                }
                Ok(())
            })
            .await
    }

    async fn drain(&self) {
        self.2.stop(2 * DRAIN + STOP).await;
    }
}

// ---------------------------------------------------------------- readiness

/// Ready (`/readyz`, SMTP accepted) once caught up and while a leader is known. Started
/// last and drained first: a draining node answers 503 and refuses new sessions before
/// anything else stops.
pub struct Readiness(pub Arc<Shared>, pub Task);
component!(Readiness, "readiness");

impl Readiness {
    async fn start(&self, sup: ActorCell) -> anyhow::Result<Option<ActorCell>> {
        let s = self.0.clone();
        self.1
            .start(sup, move |mut stop| async move {
                let mut caught_up = s.caught_up.subscribe();
                tokio::select! {
                    _ = caught_up.wait_for(|c| *c) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
                let mut metrics = s.queue.raft.metrics();
                loop {
                    let leader = metrics.borrow_and_update().current_leader;
                    s.ready.send_replace(leader.is_some() && !*stop.borrow());
                    tokio::select! {
                        changed = metrics.changed() => changed?,
                        _ = stop.wait_for(|s| *s) => {
                            s.ready.send_replace(false);
                            return Ok(());
                        }
                    }
                }
            })
            .await
    }

    async fn drain(&self) {
        self.1.stop(STOP).await;
        // Also when the task had ended or was killed.
        self.0.ready.send_replace(false);
    }
}

// ---------------------------------------------------------------- http and admin

/// `/healthz`, `/readyz` and `/metrics`: up from the start (a joining node answers its
/// liveness probe) to the end of the drain.
pub struct Http(
    pub Arc<Shared>,
    pub Task,
    pub metrics_exporter_prometheus::PrometheusHandle,
);
component!(Http, "http");

impl Http {
    async fn start(&self, sup: ActorCell) -> anyhow::Result<Option<ActorCell>> {
        let s = &self.0;
        let listen = s.config.http.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("http.listen {listen}"))?;
        say!("http (metrics, health) on {listen}");
        let state = Arc::new(HttpState {
            queue: s.queue.clone(),
            prometheus: self.2.clone(),
            ready: s.ready.subscribe(),
            lease: s.lease.clone(),
            statuses: s.statuses.clone(),
        });
        self.1
            .start(sup, move |stop| async move {
                http::serve(listener, state, stop).await;
                Ok(())
            })
            .await
    }

    async fn drain(&self) {
        self.1.stop(Duration::from_secs(2)).await;
    }
}

/// The gRPC admin API.
pub struct Admin(pub Arc<Shared>, pub Task, pub Arc<DeliveryContext>);
component!(Admin, "admin");

impl Admin {
    async fn start(&self, sup: ActorCell) -> anyhow::Result<Option<ActorCell>> {
        let s = &self.0;
        let c = &s.config.admin;
        let tls = match (&c.tls_cert, &c.tls_key) {
            (Some(cert), Some(key)) => Some({
                // Refuse to start on unusable files, naming the keys.
                crate::tls::server_config(cert, key)
                    .map_err(|e| anyhow::anyhow!("admin.tls_cert / admin.tls_key: {e}"))?;
                baton_admin::server::TlsFiles {
                    cert: std::fs::read(cert)
                        .with_context(|| format!("admin.tls_cert {}", cert.display()))?,
                    key: std::fs::read(key)
                        .with_context(|| format!("admin.tls_key {}", key.display()))?,
                }
            }),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(c.listen)
            .await
            .with_context(|| format!("admin.listen {}", c.listen))?;
        say!(
            "admin gRPC{} on {}",
            if tls.is_some() { " (TLS)" } else { "" },
            c.listen
        );
        let delivery = self.2.clone();
        let ctx = baton_admin::server::AdminContext {
            queue: s.queue.clone(),
            writer: s.writer.clone(),
            peers: s.peers.clone(),
            lease: s.lease.clone(),
            hostname: s.config.smtp.hostname.clone(),
            advertise: s.config.cluster.advertise.clone(),
            in_flight: Arc::new({
                let delivery = delivery.clone();
                move |domain: &str| delivery.in_flight.count(domain)
            }),
            classifier: Arc::new(move || delivery.classifier()),
        };
        let token = c.token.clone();
        self.1
            .start(sup, move |stop| async move {
                baton_admin::server::serve(listener, ctx, &token, tls, stop)
                    .await
                    .context("the admin API stopped")
            })
            .await
    }

    async fn drain(&self) {
        self.1.stop(Duration::from_secs(2)).await;
    }
}
