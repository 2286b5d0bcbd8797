//! DomainDelivery: one destination domain's backlog, retry timer and workers.
//!
//! The actor takes due messages from the scheduling index into its backlog (each one
//! [`InFlight`], in the node's in-flight registry), starts workers for them (one connection each, up to the domain's
//! limit), and hands a job to a worker each time it asks ([`DomainMsg::Next`]). Workers
//! are actors linked to this one: when one ends, or fails, its slot is freed; a failed
//! worker's messages leave flight with it (their tokens are dropped) and are taken again.

use super::worker::Worker;
use super::{DeliveryContext, InFlight};
use baton_queue::clock::now_ms;
use baton_queue::types::HELD;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// A domain's backlog is refilled from the index when it falls below this...
const WORK_LOW: usize = 200;
/// ...up to this many messages taken at once.
const WORK_MAX: usize = 1000;

pub struct DomainDelivery;

pub enum DomainMsg {
    /// New or changed work; also the retry timer.
    Poke,
    /// A message left flight (its outcome is committed, or it was given back): it may be
    /// taken again.
    Finished(String),
    /// A worker asks for its next message (none: the worker ends).
    Next(RpcReplyPort<Option<InFlight>>),
    /// A worker's connection opened (true) or closed (false).
    Connection(bool),
    /// How many of this domain's connections are open.
    Live(RpcReplyPort<usize>),
}

pub struct DomainState {
    ctx: Arc<DeliveryContext>,
    domain: String,
    backlog: VecDeque<InFlight>,
    workers: usize,
    live: usize,
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
            backlog: VecDeque::new(),
            workers: 0,
            live: 0,
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
            // Out of the registry already: only a chance to take more.
            DomainMsg::Finished(_) => false,
            DomainMsg::Next(port) => {
                let next = if state.ctx.allowed(&state.domain) {
                    state.backlog.pop_front()
                } else {
                    None
                };
                let _ = port.send(next);
                false
            }
            DomainMsg::Connection(up) => {
                if up {
                    state.live += 1;
                } else {
                    state.live = state.live.saturating_sub(1);
                }
                false
            }
            DomainMsg::Live(port) => {
                let _ = port.send(state.live);
                return Ok(());
            }
        };
        state.schedule(&myself, look).await?;
        state.stop_if_done(&myself);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(..) => {}
            SupervisionEvent::ActorFailed(_, e) => {
                // Its connection closed with it (and said so, through its guard).
                metrics::counter!(crate::metrics::WORKER_CRASHES).increment(1);
                tracing::error!(domain = %state.domain, error = %e, "delivery worker crashed; its messages are taken again");
            }
            _ => return Ok(()),
        }
        state.workers = state.workers.saturating_sub(1);
        state.schedule(&myself, false).await?;
        state.stop_if_done(&myself);
        Ok(())
    }
}

impl DomainState {
    /// Takes due work, starts workers for it and arms the retry timer.
    async fn schedule(
        &mut self,
        myself: &ActorRef<DomainMsg>,
        look: bool,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_ms();
        if !self.ctx.allowed(&self.domain) {
            // Draining, no lease, or not (yet) ours: give back what waits in the backlog.
            self.backlog.clear();
            self.arm_timer(myself, now + 1000);
            return Ok(());
        }
        // Refill when the backlog runs low, or when asked to look (new work, timer):
        // not on every finished message, which would rescan the in-flight set each time.
        if look || self.backlog.len() < WORK_LOW {
            let want = WORK_MAX.saturating_sub(self.backlog.len());
            let (taken, next) = self.ctx.take(&self.domain, now, want, myself);
            self.backlog.extend(taken);
            if let Some(at) = next {
                self.arm_timer(myself, at);
            }
        }
        let per_connection = self.ctx.max_messages_per_connection.clamp(1, 20);
        let wanted = self
            .backlog
            .len()
            .div_ceil(per_connection)
            .min(self.ctx.max_connections);
        while self.workers < wanted {
            Actor::spawn_linked(
                None,
                Worker,
                (self.ctx.clone(), self.domain.clone(), myself.clone()),
                myself.get_cell(),
            )
            .await?;
            self.workers += 1;
        }
        Ok(())
    }

    /// Stops when nothing is in flight, no worker runs, and there is nothing more to do
    /// here (the domain moved away or its queue is empty).
    fn stop_if_done(&self, myself: &ActorRef<DomainMsg>) {
        if self.ctx.in_flight.count(&self.domain) == 0
            && self.workers == 0
            && (!self.ctx.owns(&self.domain)
                || self.ctx.reader.shared.with(|i| i.queued(&self.domain)) == 0)
        {
            myself.stop(None);
        }
    }

    fn arm_timer(&mut self, myself: &ActorRef<DomainMsg>, at: u64) {
        if at == HELD {
            // Never due: an operator's retry announces itself as a change.
            return;
        }
        let now = now_ms();
        if let Some(t) = self.timer_at
            && t > now
            && t <= at
        {
            return;
        }
        self.timer_at = Some(at);
        let wait = Duration::from_millis(at.saturating_sub(now).max(10));
        myself.send_after(wait, || DomainMsg::Poke);
    }
}
