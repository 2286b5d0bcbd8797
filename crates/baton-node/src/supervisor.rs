//! The node as named components under one supervisor.
//!
//! A [`Component`] has a name, a [`Status`], a start and a drain. [`Node::start`] starts
//! the components in the order given (the list in [`crate::node::run`]); [`Node::drain`]
//! drains them in the reverse order. Each running component's work lives in one actor
//! linked to the [`Supervisor`] (a ractor actor): when that actor fails (a panic, an
//! error, or a stop nobody asked for), the supervisor logs it, counts it in
//! `baton_component_restarts_total{component}` and starts the component again, after a
//! short backoff that grows with repeated crashes. A component that crashes more than
//! [`MAX_CRASHES`] times within [`CRASH_WINDOW`] stops the node with an error, so an
//! init system or Kubernetes restarts the process instead of the node limping on.
//!
//! Nothing is lost by a restart: the queue lives in the replicated state machine, not
//! in actors. A message being committed when its component crashed is answered `451`
//! (nothing was stored, or the retried enqueue is a no-op); a delivery cut short is
//! retried (at worst sent again, as after a process crash).

use crate::metrics as m;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// More crashes than this within [`CRASH_WINDOW`] stop the node.
pub const MAX_CRASHES: usize = 5;
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// The wait before the first restart; doubled for each crash still in the window.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One part of a node.
pub trait Component: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Starts the component. Its long-running work goes into an actor linked to
    /// `supervisor` (spawned with `Actor::spawn_linked`, or [`spawn_task`]), returned
    /// here; `None` when the start did all there is to do. Called again after a crash.
    fn start(&self, supervisor: ActorCell) -> BoxFuture<'_, anyhow::Result<Option<ActorCell>>>;

    /// Stops the component's work and returns when it is done. Each component bounds
    /// its own wait.
    fn drain(&self) -> BoxFuture<'_, ()>;
}

/// Where a component is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Waiting,
    Starting,
    Running,
    /// Its start did everything (nothing keeps running).
    Done,
    Restarting,
    Draining,
    Stopped,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Done => "done",
            Status::Restarting => "restarting",
            Status::Draining => "draining",
            Status::Stopped => "stopped",
            Status::Failed => "failed",
        }
    }
}

/// Every component's name and status, for `/healthz` and the logs.
#[derive(Clone, Default)]
pub struct Statuses(Arc<Mutex<Vec<(&'static str, Status)>>>);

impl Statuses {
    fn set(&self, index: usize, status: Status) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((name, s)) = all.get_mut(index) {
            *s = status;
            let up = matches!(status, Status::Running | Status::Done);
            metrics::gauge!(m::COMPONENT_UP, "component" => *name).set(if up { 1.0 } else { 0.0 });
        }
    }

    pub fn list(&self) -> Vec<(&'static str, Status)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A handle to an actor a component restarts: users look the current one up each time.
pub struct Slot<M>(Arc<RwLock<Option<ActorRef<M>>>>);

impl<M> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Slot(self.0.clone())
    }
}

impl<M> Default for Slot<M> {
    fn default() -> Self {
        Slot(Arc::new(RwLock::new(None)))
    }
}

impl<M: Send + 'static> Slot<M> {
    /// The running actor, if any.
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, actor: Option<ActorRef<M>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = actor;
    }
}

/// An actor that runs one future, a component's work: it stops when the future returns
/// `Ok`, and fails (so its supervisor restarts the component) when the future returns
/// an error or panics.
struct TaskActor;

type Work = BoxFuture<'static, anyhow::Result<()>>;

impl Actor for TaskActor {
    type Msg = ();
    type State = Option<Work>;
    type Arguments = Work;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        work: Work,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.cast(())?;
        Ok(Some(work))
    }

    async fn handle(
        &self,
        myself: ActorRef<()>,
        _: (),
        work: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(work) = work.take() {
            work.await?;
            myself.stop(None);
        }
        Ok(())
    }
}

/// Runs `work` in an actor linked to `supervisor`.
pub async fn spawn_task(
    supervisor: ActorCell,
    work: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) -> anyhow::Result<ActorCell> {
    let (actor, _) = Actor::spawn_linked(None, TaskActor, Box::pin(work), supervisor).await?;
    Ok(actor.get_cell())
}

pub enum SupervisorMsg {
    /// Start component `index`, answering once it runs (or failed to start).
    Start(usize, RpcReplyPort<Result<(), String>>),
    /// Restart component `index` after a crash.
    Restart(usize),
    /// A start (in a task of its own, so a long one such as a join does not hold up
    /// the supervisor, and a panic in it is an error) finished.
    Started {
        index: usize,
        result: Result<Option<ActorCell>, String>,
        reply: Option<RpcReplyPort<Result<(), String>>>,
    },
    /// From now on, a stopping component is being drained: no restarts. Answered once
    /// the supervisor has taken it in.
    Draining(RpcReplyPort<()>),
}

/// The supervisor actor.
pub struct Supervisor;

pub struct SupervisorState {
    components: Vec<Arc<dyn Component>>,
    statuses: Statuses,
    /// The running actor of each component.
    watched: HashMap<ractor::ActorId, usize>,
    /// Why actors not (yet) watched ended: one can end before its start reports it.
    early: HashMap<ractor::ActorId, String>,
    crashes: Vec<VecDeque<Instant>>,
    draining: bool,
    fatal: watch::Sender<Option<String>>,
}

impl SupervisorState {
    /// Starts component `index` in a task; its result comes back as `Started`.
    fn start(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        index: usize,
        reply: Option<RpcReplyPort<Result<(), String>>>,
    ) {
        let component = self.components[index].clone();
        self.statuses.set(index, Status::Starting);
        let (me, cell) = (myself.clone(), myself.get_cell());
        tokio::spawn(async move {
            let task = tokio::spawn(async move { component.start(cell).await });
            let result = match task.await {
                Ok(Ok(started)) => Ok(started),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(e) => Err(format!("its start panicked: {e}")),
            };
            let _ = me.cast(SupervisorMsg::Started {
                index,
                result,
                reply,
            });
        });
    }

    fn started(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        index: usize,
        result: Result<Option<ActorCell>, String>,
        reply: Option<RpcReplyPort<Result<(), String>>>,
    ) {
        let name = self.components[index].name();
        let restart = reply.is_none();
        let outcome = match result {
            Ok(Some(cell)) if self.draining => {
                // Started while the node began to drain: nothing will drain it.
                cell.kill();
                self.statuses.set(index, Status::Stopped);
                Ok(())
            }
            Ok(Some(cell)) => {
                self.watched.insert(cell.get_id(), index);
                self.statuses.set(index, Status::Running);
                if restart {
                    tracing::info!(component = name, "component restarted");
                }
                // It may have ended before it was watched (otherwise its end, when it
                // comes, finds it watched).
                if let Some(why) = self.early.remove(&cell.get_id()) {
                    self.watched.remove(&cell.get_id());
                    self.crashed(myself, index, &why);
                }
                Ok(())
            }
            Ok(None) => {
                self.statuses.set(index, Status::Done);
                Ok(())
            }
            Err(e) if restart => {
                self.crashed(myself, index, &format!("restart failed: {e}"));
                Ok(())
            }
            Err(e) => {
                self.statuses.set(index, Status::Failed);
                Err(e)
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }

    /// A component's actor ended on its own: restart the component, unless the node is
    /// draining or the component crashes too often.
    fn crashed(&mut self, myself: &ActorRef<SupervisorMsg>, index: usize, why: &str) {
        let name = self.components[index].name();
        if self.draining {
            self.statuses.set(index, Status::Stopped);
            tracing::debug!(component = name, why, "component stopped while draining");
            return;
        }
        let now = Instant::now();
        let crashes = &mut self.crashes[index];
        crashes.retain(|t| now.duration_since(*t) < CRASH_WINDOW);
        crashes.push_back(now);
        if crashes.len() > MAX_CRASHES {
            self.statuses.set(index, Status::Failed);
            let reason = format!(
                "component {name} crashed {} times within {CRASH_WINDOW:?}; last: {why}",
                crashes.len()
            );
            tracing::error!(component = name, "{reason}: stopping the node");
            self.fatal.send_replace(Some(reason));
            return;
        }
        metrics::counter!(m::COMPONENT_RESTARTS, "component" => name).increment(1);
        let backoff = FIRST_BACKOFF * 2u32.pow(crashes.len() as u32 - 1);
        tracing::error!(
            component = name,
            why,
            ?backoff,
            "component crashed; restarting it"
        );
        self.statuses.set(index, Status::Restarting);
        myself.send_after(backoff, move || SupervisorMsg::Restart(index));
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (
        Vec<Arc<dyn Component>>,
        Statuses,
        watch::Sender<Option<String>>,
    );

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (components, statuses, fatal): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            crashes: vec![VecDeque::new(); components.len()],
            components,
            statuses,
            watched: HashMap::new(),
            early: HashMap::new(),
            draining: false,
            fatal,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Start(index, reply) => state.start(&myself, index, Some(reply)),
            SupervisorMsg::Restart(index) if !state.draining => state.start(&myself, index, None),
            SupervisorMsg::Restart(_) => {}
            SupervisorMsg::Started {
                index,
                result,
                reply,
            } => state.started(&myself, index, result, reply),
            SupervisorMsg::Draining(reply) => {
                state.draining = true;
                let _ = reply.send(());
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
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, e) => (cell, e.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                reason.unwrap_or_else(|| "stopped without being drained".into()),
            ),
            _ => return Ok(()),
        };
        match state.watched.remove(&cell.get_id()) {
            Some(index) => state.crashed(&myself, index, &why),
            // Kept for its start's report (bounded: a start reports within moments).
            None if state.early.len() < 64 => {
                state.early.insert(cell.get_id(), why);
            }
            None => {}
        }
        Ok(())
    }
}

/// A running node: its components, in start order, under their supervisor.
pub struct Node {
    components: Vec<Arc<dyn Component>>,
    supervisor: ActorRef<SupervisorMsg>,
    statuses: Statuses,
    fatal: watch::Receiver<Option<String>>,
    started: usize,
}

impl Node {
    /// Starts `components` in order, their statuses kept in `statuses`. A failed start
    /// drains what had started and returns the error, naming the component. Returns
    /// early, with what started, if `stop` turns true meanwhile.
    pub async fn start(
        components: Vec<Arc<dyn Component>>,
        statuses: Statuses,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Node> {
        *statuses.0.lock().unwrap_or_else(|p| p.into_inner()) = components
            .iter()
            .map(|c| (c.name(), Status::Waiting))
            .collect();
        let (fatal_tx, fatal) = watch::channel(None);
        let (supervisor, _) = Actor::spawn(
            None,
            Supervisor,
            (components.clone(), statuses.clone(), fatal_tx),
        )
        .await?;
        let mut node = Node {
            components,
            supervisor,
            statuses,
            fatal,
            started: 0,
        };
        for index in 0..node.components.len() {
            let name = node.components[index].name();
            let started = tokio::select! {
                r = node.supervisor.call(|port| SupervisorMsg::Start(index, port), None) => r,
                _ = stop.wait_for(|s| *s) => {
                    tracing::info!(component = name, "stopping before the node finished starting");
                    return Ok(node);
                }
            };
            let result = match started {
                Ok(ractor::rpc::CallResult::Success(r)) => r,
                other => Err(format!("the supervisor did not answer: {other:?}")),
            };
            if let Err(e) = result {
                node.drain().await;
                anyhow::bail!("starting {name}: {e}");
            }
            node.started = index + 1;
        }
        Ok(node)
    }

    /// Resolves when a component crashed too often; the reason.
    pub async fn failed(&mut self) -> String {
        match self.fatal.wait_for(|f| f.is_some()).await {
            Ok(f) => f.clone().unwrap_or_default(),
            // The supervisor is gone: nothing restarts components any more.
            Err(_) => "the supervisor stopped".into(),
        }
    }

    /// Drains the started components in reverse order, then stops the supervisor (and
    /// with it any actor still running).
    pub async fn drain(mut self) {
        // Before any component stops, so no stop is taken for a crash.
        let _ = self
            .supervisor
            .call(SupervisorMsg::Draining, Some(Duration::from_secs(5)))
            .await;
        for index in (0..self.started).rev() {
            let component = self.components[index].clone();
            tracing::info!(component = component.name(), "draining");
            self.statuses.set(index, Status::Draining);
            component.drain().await;
            self.statuses.set(index, Status::Stopped);
        }
        self.started = 0;
        // Kill, not stop: a start still running (a join when the drain began) ends too.
        let _ = self
            .supervisor
            .kill_and_wait(Some(Duration::from_secs(5)))
            .await;
    }
}

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;
