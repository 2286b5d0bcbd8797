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

/// Attempts per write (each after a leader change or a failed forward).
const ATTEMPTS: usize = 5;

impl Writer {
    pub async fn write(&self, request: Request) -> Result<Response, QueueError> {
        let mut last = QueueError::Unavailable("no leader".into());
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
            }
            match self.queue.write(request.clone()).await {
                Err(QueueError::NotLeader {
                    leader: Some((id, addr)),
                }) if id != self.queue.id => match self.forward(&addr, &request).await {
                    Ok(r) => return Ok(r),
                    Err(e) => last = e,
                },
                Err(e @ QueueError::NotLeader { .. }) => last = e,
                other => return other,
            }
        }
        Err(last)
    }

    async fn forward(&self, addr: &str, request: &Request) -> Result<Response, QueueError> {
        let mut client = self.peers.client(addr).map_err(QueueError::Unavailable)?;
        let data = encode(request).map_err(|e| QueueError::Fatal(e.to_string()))?;
        let reply = client
            .forward(Payload { data })
            .await
            .map_err(|s| QueueError::Unavailable(format!("forward to {addr}: {}", s.message())))?;
        let result: Result<Response, ForwardError> =
            decode(&reply.into_inner().data).map_err(|e| QueueError::Unavailable(e.to_string()))?;
        result.map_err(|e| match e {
            ForwardError::NotLeader(leader) => QueueError::NotLeader { leader },
            ForwardError::Failed(m) => QueueError::Unavailable(m),
        })
    }
}
