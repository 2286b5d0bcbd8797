//! Group commit as an actor: items from many senders are written to Raft in batches.
//!
//! While fewer than `max_in_flight` writes are running, a new item starts a write with
//! everything waiting; otherwise items wait and go together in the next write. Under load
//! each Raft entry (and its fsync) carries many messages; when idle, an item is written at
//! once. The Committer (ingress messages) and the OutcomeBatcher (delivery results) are
//! both this actor with a different write function.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

/// Writes one batch; the error is shown to every item's sender.
pub type WriteFn<T> =
    Arc<dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

pub enum BatcherMsg<T> {
    Submit(T, RpcReplyPort<Result<(), String>>),
    Written,
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

pub struct BatcherState<T> {
    args: BatcherArgs<T>,
    waiting: Vec<(T, RpcReplyPort<Result<(), String>>)>,
    in_flight: usize,
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
            tokio::spawn(async move {
                let result = write.await;
                for port in ports {
                    let _ = port.send(result.clone());
                }
                let _ = me.cast(BatcherMsg::Written);
            });
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
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BatcherMsg::Submit(item, port) => state.waiting.push((item, port)),
            BatcherMsg::Written => state.in_flight = state.in_flight.saturating_sub(1),
        }
        state.start_writes(&myself);
        Ok(())
    }
}
