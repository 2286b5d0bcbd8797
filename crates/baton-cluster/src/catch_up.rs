//! A (re)starting node catches up with the leader's commit index before it takes a
//! delivery lease (README, "Design: delivery ownership"), so it never joins the owner
//! set while it still lacks most of the queue (a new node installing a large snapshot,
//! a node back from a long absence).

use crate::network::Peers;
use crate::pb::CommitIndexRequest;
use baton_queue::QueueNode;
use std::time::Duration;

/// Waits until a leader is known, asks it for its commit index, and waits until this
/// node has applied that far. Returns the index caught up to.
pub async fn catch_up(queue: &QueueNode, peers: &Peers) -> u64 {
    let mut metrics = queue.raft.metrics();
    loop {
        let leader = {
            let m = metrics.borrow_and_update();
            m.current_leader.and_then(|id| {
                let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
                Some((id, addr))
            })
        };
        let target = match leader {
            Some((id, _)) if id == queue.id => {
                Some(queue.committed.load(std::sync::atomic::Ordering::Acquire))
            }
            Some((_, addr)) => match peers.client(&addr) {
                Ok(mut client) => {
                    match tokio::time::timeout(
                        Duration::from_secs(2),
                        client.commit_index(CommitIndexRequest {}),
                    )
                    .await
                    {
                        Ok(Ok(reply)) if reply.get_ref().ok => Some(reply.get_ref().index),
                        _ => None,
                    }
                }
                Err(_) => None,
            },
            None => None,
        };
        if let Some(target) = target {
            let mut applied = queue.reader.shared.changed.subscribe();
            if applied.wait_for(|i| *i >= target).await.is_ok() {
                return target;
            }
        }
        // No leader yet, or it changed: look again shortly.
        tokio::select! {
            _ = metrics.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
