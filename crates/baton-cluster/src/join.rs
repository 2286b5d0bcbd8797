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

/// What the seeds said when asked whether they hold cluster state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Probed {
    /// Seeds that are members of a cluster.
    pub members: usize,
    /// Seeds that answered and hold no cluster state.
    pub empty: usize,
    /// Seeds that did not answer (yet).
    pub silent: usize,
}

impl Probed {
    /// A node with no state may form a new cluster: no seed is a member, and it and the
    /// seeds without state are a majority of it and all seeds. So a node that lost its
    /// volume, while a majority still holds the cluster, never forms a second one.
    pub fn may_form(&self, seeds: usize) -> bool {
        self.members == 0 && 2 * (self.empty + 1) > seeds + 1
    }
}

/// Asks every seed at once whether it holds cluster state, each within `per_call`.
pub async fn probe(peers: &Peers, seeds: &[String], per_call: Duration) -> Probed {
    let mut asks = tokio::task::JoinSet::new();
    for addr in seeds {
        let (peers, addr) = (peers.clone(), addr.clone());
        asks.spawn(async move {
            let mut client = peers.client(&addr).ok()?;
            tokio::time::timeout(per_call, client.probe(crate::pb::ProbeRequest {}))
                .await
                .ok()?
                .ok()
                .map(|r| r.into_inner().initialized)
        });
    }
    let mut probed = Probed::default();
    while let Some(answer) = asks.join_next().await {
        match answer.ok().flatten() {
            Some(true) => probed.members += 1,
            Some(false) => probed.empty += 1,
            None => probed.silent += 1,
        }
    }
    probed
}

#[cfg(test)]
mod tests {
    use super::Probed;

    #[test]
    fn forms_only_with_a_majority_without_state_and_no_member() {
        let p = |members, empty, silent| Probed {
            members,
            empty,
            silent,
        };
        // Fresh install of 3: the two others answer without state.
        assert!(p(0, 2, 0).may_form(2));
        // One of them not up yet: itself and one more are 2 of 3.
        assert!(p(0, 1, 1).may_form(2));
        // Lost its volume while the others hold the cluster.
        assert!(!p(1, 0, 1).may_form(2));
        assert!(!p(0, 0, 2).may_form(2));
        // Five: itself and two without state are 3 of 5; one member anywhere vetoes.
        assert!(p(0, 2, 2).may_form(4));
        assert!(!p(0, 1, 3).may_form(4));
        assert!(!p(1, 3, 0).may_form(4));
    }
}
