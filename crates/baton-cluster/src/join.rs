//! A node with no state asks seeds to add it to the cluster.

use crate::network::Peers;
use crate::pb::JoinRequest;
use std::time::Duration;

/// Asks each seed in turn (following "not the leader" answers to the leader) until one
/// adds this node, for at most `timeout`.
pub async fn join(
    peers: &Peers,
    seeds: &[String],
    node_id: u64,
    advertise: &str,
    timeout: Duration,
) -> Result<(), String> {
    if seeds.is_empty() {
        return Err("cluster.join is empty".into());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no seed answered");
    let mut targets: Vec<String> = seeds.to_vec();
    while tokio::time::Instant::now() < deadline {
        let Some(addr) = targets.first().cloned() else {
            targets = seeds.to_vec();
            continue;
        };
        targets.rotate_left(1);
        let attempt = async {
            let mut client = peers.client(&addr)?;
            client
                .join(JoinRequest {
                    node_id,
                    addr: advertise.to_string(),
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| format!("{addr}: {}", s.message()))
        };
        match attempt.await {
            Ok(reply) if reply.ok => return Ok(()),
            Ok(reply) => {
                last = format!("{addr}: {}", reply.error);
                if !reply.leader_addr.is_empty() && !targets.contains(&reply.leader_addr) {
                    targets.insert(0, reply.leader_addr);
                    continue;
                }
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("could not join the cluster: {last}"))
}
