//! Writes from any node: run locally on the leader, forwarded to it from a follower
//! (one RPC per batch), following leader changes. Retrying is safe: enqueue is
//! idempotent by message id and outcomes by (id, domain).
//!
//! How a forwarded write reaches the leader is behind [`Forward`]: gRPC through
//! [`Peers`] in a running node, an in-memory router in the in-process cluster tests.
//! Everything else (when to forward, what to retry and for how long) is here, the same
//! whichever carries it.

use crate::network::Peers;
use crate::pb::Payload;
use crate::server::ForwardError;
use crate::{decode, encode};
use baton_queue::types::{NodeId, Request, Response};
use baton_queue::{QueueError, QueueNode};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A write sent to the leader failed.
#[derive(Debug)]
pub struct ForwardFailed {
    pub error: QueueError,
    /// The request may have reached a leader and been appended (anything but a refused
    /// connection or a definite refusal): the writer then retries until it resolves
    /// rather than report that nothing was stored.
    pub maybe_appended: bool,
}

/// What the leader's refusal means to the writer that forwarded to it.
impl From<ForwardError> for ForwardFailed {
    fn from(e: ForwardError) -> ForwardFailed {
        match e {
            // The remote may have appended before losing leadership.
            ForwardError::NotLeader(leader) => ForwardFailed {
                error: QueueError::NotLeader { leader },
                maybe_appended: true,
            },
            ForwardError::Failed(m) => ForwardFailed {
                error: QueueError::Unavailable(m),
                maybe_appended: false,
            },
        }
    }
}

/// Carries a follower's write to the leader and brings back the leader's answer.
pub trait Forward: Send + Sync + 'static {
    /// Runs `request` on node `leader`, whose Raft address is `addr`, as the leader's
    /// [`QueueNode::write`] would.
    fn forward<'a>(
        &'a self,
        leader: NodeId,
        addr: &'a str,
        request: &'a Request,
    ) -> Pin<Box<dyn Future<Output = Result<Response, ForwardFailed>> + Send + 'a>>;
}

#[derive(Clone)]
pub struct Writer {
    pub queue: QueueNode,
    forward: Arc<dyn Forward>,
}

/// Quick attempts while nothing can have been appended (no leader known, refused by a
/// leader's quorum check): then a 451 is the truth.
const CLEAN_ATTEMPTS: u32 = 5;
/// How long a write that may have been appended is retried until it resolves. Retrying
/// is what resolves it: enqueue is idempotent by message id, so if the first attempt
/// was committed the retry is a no-op that says so. Answering 451 instead would make
/// the client send the message again (README, "Design: the replicated queue").
const RESOLVE: Duration = Duration::from_secs(60);

impl Writer {
    /// A writer forwarding over gRPC to the leader's Raft service.
    pub fn new(queue: QueueNode, peers: Peers) -> Writer {
        Writer::with_forward(queue, Arc::new(peers))
    }

    /// A writer forwarding through `forward`.
    pub fn with_forward(queue: QueueNode, forward: Arc<dyn Forward>) -> Writer {
        Writer { queue, forward }
    }

    /// Like [`Writer::write`], and returns only once the entry is applied on this node
    /// too (a follower applies after the leader answered). Callers that read their own
    /// writes from the local state need this: delivery must not see a message as still
    /// due after its outcome was committed.
    pub async fn write_applied(&self, request: Request) -> Result<Response, QueueError> {
        let response = self.write(request).await?;
        let mut applied = self.queue.reader.shared.changed.subscribe();
        let wait = applied.wait_for(|i| *i >= response.index);
        match tokio::time::timeout(RESOLVE, wait).await {
            Ok(Ok(_)) => Ok(response),
            _ => Err(QueueError::Unavailable(format!(
                "entry {} committed but not applied here within {RESOLVE:?}",
                response.index
            ))),
        }
    }

    pub async fn write(&self, request: Request) -> Result<Response, QueueError> {
        let deadline = tokio::time::Instant::now() + RESOLVE;
        let mut maybe_appended = false;
        let mut attempt: u32 = 0;
        loop {
            let was_leader = self.queue.is_leader();
            // A follower that knows its leader forwards at once (no local attempt, no
            // copy of the batch for it).
            let local = match self.known_leader() {
                Some(leader) => Err(QueueError::NotLeader {
                    leader: Some(leader),
                }),
                None => self.queue.write(request.clone()).await,
            };
            let error = match local {
                Ok(r) => return Ok(r),
                Err(QueueError::NotLeader {
                    leader: Some((id, addr)),
                }) if id != self.queue.id => {
                    match self.forward.forward(id, &addr, &request).await {
                        Ok(r) => return Ok(r),
                        Err(failed) => {
                            maybe_appended |= failed.maybe_appended;
                            failed.error
                        }
                    }
                }
                // A leader that lost leadership while our entry waited for its commit:
                // the entry may still be committed by the next leader.
                Err(e @ QueueError::NotLeader { .. }) => {
                    maybe_appended |= was_leader;
                    e
                }
                Err(e @ QueueError::Fatal(_)) => return Err(e),
                // Refused before appending (quorum check).
                Err(e @ QueueError::Unavailable(_)) => e,
            };
            attempt += 1;
            let give_up = if maybe_appended {
                tokio::time::Instant::now() >= deadline
            } else {
                attempt >= CLEAN_ATTEMPTS
            };
            if give_up {
                if maybe_appended {
                    tracing::error!(error = %error, "a write that may have been appended did not resolve");
                }
                return Err(error);
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10)))).await;
        }
    }

    /// The leader and its address, when it is another node.
    fn known_leader(&self) -> Option<(u64, String)> {
        let metrics = self.queue.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader.filter(|id| *id != self.queue.id)?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }
}

/// gRPC: the leader's `Forward` call.
impl Forward for Peers {
    fn forward<'a>(
        &'a self,
        _leader: NodeId,
        addr: &'a str,
        request: &'a Request,
    ) -> Pin<Box<dyn Future<Output = Result<Response, ForwardFailed>> + Send + 'a>> {
        Box::pin(grpc_forward(self, addr, request))
    }
}

async fn grpc_forward(
    peers: &Peers,
    addr: &str,
    request: &Request,
) -> Result<Response, ForwardFailed> {
    let failed = |error, maybe_appended| ForwardFailed {
        error,
        maybe_appended,
    };
    let mut client = peers
        .client(addr)
        .map_err(|e| failed(QueueError::Unavailable(e), false))?;
    let data = encode(request).map_err(|e| failed(QueueError::Fatal(e.to_string()), false))?;
    let reply = client.forward(Payload { data }).await.map_err(|s| {
        let refused = s.code() == tonic::Code::Unavailable && s.message().contains("connect");
        failed(
            QueueError::Unavailable(format!("forward to {addr}: {}", s.message())),
            !refused,
        )
    })?;
    let result: Result<Response, ForwardError> = decode(&reply.into_inner().data)
        .map_err(|e| failed(QueueError::Unavailable(e.to_string()), true))?;
    result.map_err(ForwardFailed::from)
}
