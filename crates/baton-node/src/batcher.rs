//! Group commit as an actor: items from many senders are written to Raft in batches.
//!
//! While fewer than `max_in_flight` writes are running, a new item starts a write with
//! everything waiting; otherwise items wait and go together in the next write. Under load
//! each Raft entry (and its fsync) carries many messages; when idle, an item is written at
//! once. The Committer (ingress messages) and the OutcomeBatcher (delivery results) are
//! both this actor with a different write function, and both are components
//! ([`BatcherComponent`]): a crashed batcher is started again, and its users find the new
//! one through a [`Slot`].

use crate::supervisor::{BoxFuture, Component, Slot};
use baton_queue::QueueError;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Writes one batch; the error is shown to every item's sender.
pub type WriteFn<T> = Arc<
    dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = Result<(), QueueError>> + Send>> + Send + Sync,
>;

pub enum BatcherMsg<T> {
    Submit(T, RpcReplyPort<Result<(), QueueError>>),
    Written,
    /// Refuse new items, and answer once everything waiting is written.
    Drain(RpcReplyPort<()>),
}

pub struct Batcher<T>(PhantomData<fn() -> T>);

impl<T> Default for Batcher<T> {
    fn default() -> Self {
        Batcher(PhantomData)
    }
}

pub struct BatcherArgs<T> {
    pub write: WriteFn<T>,
    pub max_batch: usize,
    pub max_in_flight: usize,
    /// Size of an item, to bound a batch's bytes (`max_batch_bytes`).
    pub weight: fn(&T) -> usize,
    pub max_batch_bytes: usize,
}

impl<T> Clone for BatcherArgs<T> {
    fn clone(&self) -> Self {
        BatcherArgs {
            write: self.write.clone(),
            max_batch: self.max_batch,
            max_in_flight: self.max_in_flight,
            weight: self.weight,
            max_batch_bytes: self.max_batch_bytes,
        }
    }
}

pub struct BatcherState<T> {
    args: BatcherArgs<T>,
    waiting: Vec<(T, RpcReplyPort<Result<(), QueueError>>)>,
    in_flight: usize,
    /// Drains waiting for the last write.
    drained: Vec<RpcReplyPort<()>>,
    draining: bool,
}

impl<T: Send + 'static> BatcherState<T> {
    fn start_writes(&mut self, myself: &ActorRef<BatcherMsg<T>>) {
        while self.in_flight < self.args.max_in_flight && !self.waiting.is_empty() {
            let mut bytes = 0;
            let mut take = 0;
            for (item, _) in &self.waiting {
                let w = (self.args.weight)(item);
                if take > 0
                    && (take >= self.args.max_batch || bytes + w > self.args.max_batch_bytes)
                {
                    break;
                }
                bytes += w;
                take += 1;
            }
            let batch: Vec<_> = self.waiting.drain(..take).collect();
            let (items, ports): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
            metrics::histogram!(crate::metrics::COMMIT_BATCH).record(items.len() as f64);
            let write = (self.args.write)(items);
            let me = myself.clone();
            self.in_flight += 1;
            // The write goes on even if this actor crashes meanwhile: its senders are
            // answered by the task, not by the actor.
            tokio::spawn(async move {
                let result = write.await;
                for port in ports {
                    let _ = port.send(result.clone());
                }
                let _ = me.cast(BatcherMsg::Written);
            });
        }
        if self.waiting.is_empty() && self.in_flight == 0 {
            for port in self.drained.drain(..) {
                let _ = port.send(());
            }
        }
    }
}

impl<T: Send + 'static> Actor for Batcher<T> {
    type Msg = BatcherMsg<T>;
    type State = BatcherState<T>;
    type Arguments = BatcherArgs<T>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(BatcherState {
            args,
            waiting: Vec::new(),
            in_flight: 0,
            drained: Vec::new(),
            draining: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BatcherMsg::Submit(_, port) if state.draining => {
                let _ = port.send(Err(QueueError::Unavailable("the node is stopping".into())));
            }
            BatcherMsg::Submit(item, port) => state.waiting.push((item, port)),
            BatcherMsg::Written => state.in_flight = state.in_flight.saturating_sub(1),
            BatcherMsg::Drain(port) => {
                state.draining = true;
                state.drained.push(port);
            }
        }
        state.start_writes(&myself);
        Ok(())
    }
}

/// Submits `item` to the batcher in `slot` and waits up to `timeout` for its write.
/// `None` when the outcome is unknown (the write may still commit).
pub async fn submit<T: Send + 'static>(
    slot: &Slot<BatcherMsg<T>>,
    item: T,
    timeout: Duration,
) -> Option<Result<(), QueueError>> {
    let Some(batcher) = slot.get() else {
        return Some(Err(QueueError::Unavailable(
            "the batcher is not running".into(),
        )));
    };
    match batcher
        .call(|port| BatcherMsg::Submit(item, port), Some(timeout))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(result)) => Some(result),
        Ok(ractor::rpc::CallResult::Timeout) => None,
        // The batcher went away before taking the item (a crash, a drain): nothing
        // was handed to Raft.
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
            Some(Err(QueueError::Unavailable("the batcher stopped".into())))
        }
    }
}

/// A batcher as a node component.
pub struct BatcherComponent<T> {
    pub name: &'static str,
    pub args: BatcherArgs<T>,
    pub slot: Slot<BatcherMsg<T>>,
    /// How long a drain waits for the last writes.
    pub drain_timeout: Duration,
}

impl<T: Send + 'static> Component for BatcherComponent<T> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn start(&self, supervisor: ActorCell) -> BoxFuture<'_, anyhow::Result<Option<ActorCell>>> {
        Box::pin(async move {
            let (actor, _) =
                Actor::spawn_linked(None, Batcher::<T>::default(), self.args.clone(), supervisor)
                    .await?;
            let cell = actor.get_cell();
            self.slot.set(Some(actor));
            Ok(Some(cell))
        })
    }

    fn drain(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(batcher) = self.slot.get() else {
                return;
            };
            let drained = batcher
                .call(BatcherMsg::Drain, Some(self.drain_timeout))
                .await;
            if !matches!(drained, Ok(ractor::rpc::CallResult::Success(()))) {
                tracing::warn!(
                    component = self.name,
                    "writes still running at the end of the drain"
                );
            }
            self.slot.set(None);
            let _ = batcher
                .stop_and_wait(None, Some(Duration::from_secs(5)))
                .await;
        })
    }
}
