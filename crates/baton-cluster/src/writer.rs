//! Writes from any node: run locally on the leader, forwarded to it from a follower
//! (one RPC per batch), following leader changes. Retrying is safe: enqueue is
//! idempotent by message id and outcomes by (id, domain).

use crate::network::Peers;
use crate::pb::Payload;
use crate::server::ForwardError;
use crate::{decode, encode};
use baton_queue::types::{Request, Response};
use baton_queue::{QueueError, QueueNode};
use std::time::Duration;

#[derive(Clone)]
pub struct Writer {
    pub queue: QueueNode,
    pub peers: Peers,
}

/// Quick attempts while nothing can have been appended (no leader known, refused by a
/// leader's quorum check): then a 451 is the truth.
const CLEAN_ATTEMPTS: u32 = 5;
/// How long a write that may have been appended is retried until it resolves. Retrying
/// is what resolves it: enqueue is idempotent by message id, so if the first attempt
/// was committed the retry is a no-op that says so. Answering 451 instead would make
/// the client send the message again (ARCHITECTURE.md, "Replies mean what they say").
const RESOLVE: Duration = Duration::from_secs(60);

impl Writer {
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
                }) if id != self.queue.id => match self.forward(&addr, &request).await {
                    Ok(r) => return Ok(r),
                    Err((e, sent)) => {
                        maybe_appended |= sent;
                        e
                    }
                },
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

    /// Forwards to the leader at `addr`. On error, also says whether the request may have
    /// reached a leader (anything but a refused connection or a definite refusal).
    async fn forward(&self, addr: &str, request: &Request) -> Result<Response, (QueueError, bool)> {
        let mut client = self
            .peers
            .client(addr)
            .map_err(|e| (QueueError::Unavailable(e), false))?;
        let data = encode(request).map_err(|e| (QueueError::Fatal(e.to_string()), false))?;
        let reply = client.forward(Payload { data }).await.map_err(|s| {
            let refused = s.code() == tonic::Code::Unavailable && s.message().contains("connect");
            (
                QueueError::Unavailable(format!("forward to {addr}: {}", s.message())),
                !refused,
            )
        })?;
        let result: Result<Response, ForwardError> = decode(&reply.into_inner().data)
            .map_err(|e| (QueueError::Unavailable(e.to_string()), true))?;
        result.map_err(|e| match e {
            // The remote may have appended before losing leadership.
            ForwardError::NotLeader(leader) => (QueueError::NotLeader { leader }, true),
            ForwardError::Failed(m) => (QueueError::Unavailable(m), false),
        })
    }
}
