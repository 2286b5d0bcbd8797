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
    queue.set_handing_over(true);
    // A draining node must not win the election it provokes (its election timer would
    // otherwise fire while the others wait out the old leader's lease).
    queue.raft.runtime_config().elect(false);
    let new = elect_one(queue, peers, &membership, candidates, timeout).await;
    if new.is_none() {
        // Still the leader (or nobody is): keep serving writes.
        queue.set_handing_over(false);
    }
    new
}

async fn elect_one(
    queue: &QueueNode,
    peers: &Peers,
    membership: &openraft::Membership<u64, openraft::BasicNode>,
    candidates: Vec<(u64, u64)>,
    timeout: Duration,
) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    for (id, _) in candidates {
        let Some(node) = membership.get_node(&id) else {
            continue;
        };
        let Ok(mut client) = peers.client(&node.addr) else {
            continue;
        };
        // The candidate's log must hold everything we appended (the last writes of the
        // drain among them), or the other voters would refuse it their votes.
        let mut metrics = queue.raft.metrics();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                let caught_up = {
                    let m = metrics.borrow_and_update();
                    let last = m.last_log_index.unwrap_or(0);
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).copied().flatten())
                        .is_some_and(|l| l.index >= last)
                };
                if caught_up || metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
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
