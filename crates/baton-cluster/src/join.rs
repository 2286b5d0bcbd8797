//! Membership changes run on the leader: a node with no state asks seeds to add it, and
//! an operator (through the admin API) adds or removes a node.

use crate::network::Peers;
use crate::pb::{JoinReply, JoinRequest, RemoveRequest};
use std::time::Duration;

/// A change of the cluster's membership.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add `node_id`, reachable at `addr`: a learner first, a voter once caught up.
    Add { node_id: u64, addr: String },
    /// Remove `node_id`: its domains move to the others, then it leaves the voters.
    Remove { node_id: u64 },
}

/// Asks each seed in turn (following "not the leader" answers to the leader) until one
/// adds this node, for at most `timeout`.
pub async fn join(
    peers: &Peers,
    seeds: &[String],
    node_id: u64,
    advertise: &str,
    timeout: Duration,
) -> Result<(), String> {
    let change = Change::Add {
        node_id,
        addr: advertise.to_string(),
    };
    change_membership(peers, seeds, &change, timeout)
        .await
        .map_err(|e| format!("could not join the cluster: {e}"))
}

/// Runs `change` on the leader, reached through `seeds` (following "not the leader"
/// answers), retrying for at most `timeout`. A removal the leader refuses (an unknown
/// node, the last member) ends at once; an addition is retried (a membership change in
/// progress clears).
pub async fn change_membership(
    peers: &Peers,
    seeds: &[String],
    change: &Change,
    timeout: Duration,
) -> Result<(), String> {
    if seeds.is_empty() {
        return Err("no node to ask (cluster.join is empty)".into());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no node answered");
    let mut targets: Vec<String> = seeds.to_vec();
    while tokio::time::Instant::now() < deadline {
        let Some(addr) = targets.first().cloned() else {
            targets = seeds.to_vec();
            continue;
        };
        targets.rotate_left(1);
        let attempt = async {
            let mut client = peers.client(&addr)?;
            let reply = match change {
                Change::Add { node_id, addr } => {
                    client
                        .join(JoinRequest {
                            node_id: *node_id,
                            addr: addr.clone(),
                        })
                        .await
                }
                Change::Remove { node_id } => {
                    client.remove(RemoveRequest { node_id: *node_id }).await
                }
            };
            reply
                .map(|r| r.into_inner())
                .map_err(|s| format!("{addr}: {}", s.message()))
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, attempt).await {
            Ok(Ok(JoinReply { ok: true, .. })) => return Ok(()),
            Ok(Ok(reply)) => {
                last = reply.error.clone();
                let redirected = !reply.leader_addr.is_empty() && reply.leader_addr != addr;
                if redirected {
                    if !targets.contains(&reply.leader_addr) {
                        targets.insert(0, reply.leader_addr);
                    } else if let Some(i) = targets.iter().position(|t| *t == reply.leader_addr) {
                        let leader = targets.remove(i);
                        targets.insert(0, leader);
                    }
                    continue;
                }
                if matches!(change, Change::Remove { .. })
                    && reply.leader_id != 0
                    && reply.error != "not the leader"
                {
                    // The leader itself refused (not a member, the last member, the
                    // hand-over timed out): retrying will not change its answer.
                    return Err(reply.error);
                }
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = format!("{addr}: no answer within {timeout:?}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(last)
}
