//! Leadership hand-over for a graceful stop (openraft 0.9 has no transfer call): the
//! draining leader picks the voter whose log matches furthest and asks it to start an
//! election; its higher term makes the old leader step down, and its log wins the vote.

use crate::network::Peers;
use crate::pb::ElectRequest;
use baton_queue::QueueNode;
use std::time::Duration;

/// Hands leadership over if this node leads a cluster of more than one voter. Returns
/// the new leader's id, or `None` if there was nothing to do or it did not happen within
/// `timeout`.
pub async fn hand_over(queue: &QueueNode, peers: &Peers, timeout: Duration) -> Option<u64> {
    let m = queue.raft.metrics().borrow().clone();
    if m.current_leader != Some(queue.id) {
        return None;
    }
    let membership = m.membership_config.membership().clone();
    let matched = m.replication.clone().unwrap_or_default();
    let mut candidates: Vec<(u64, u64)> = membership
        .voter_ids()
        .filter(|id| *id != queue.id)
        .map(|id| {
            (
                id,
                matched.get(&id).copied().flatten().map_or(0, |l| l.index),
            )
        })
        .collect();
    candidates.sort_by_key(|(_, index)| std::cmp::Reverse(*index));
    let deadline = tokio::time::Instant::now() + timeout;
    for (id, _) in candidates {
        let Some(node) = membership.get_node(&id) else {
            continue;
        };
        let Ok(mut client) = peers.client(&node.addr) else {
            continue;
        };
        let asked = tokio::time::timeout_at(deadline, client.elect(ElectRequest {})).await;
        if !matches!(asked, Ok(Ok(_))) {
            continue;
        }
        let mut metrics = queue.raft.metrics();
        let moved = tokio::time::timeout_at(deadline, async {
            loop {
                let leader = metrics.borrow_and_update().current_leader;
                if leader.is_some() && leader != Some(queue.id) {
                    return leader;
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        if let Ok(Some(new)) = moved {
            tracing::info!(new_leader = new, "leadership handed over");
            return Some(new);
        }
    }
    None
}
