//! The `baton.raft.v1.Raft` service: what peers call on this node.

use crate::pb::raft_server::Raft as RaftRpc;
use crate::pb::{
    CommitIndexReply, CommitIndexRequest, ElectReply, ElectRequest, JoinReply, JoinRequest,
    Matched, Payload, ProbeReply, ProbeRequest, RemoveRequest,
};
use crate::{decode, encode};
use baton_queue::types::{Raft, Request, Response};
use baton_queue::{QueueError, QueueNode};
use openraft::{BasicNode, ChangeMembers};
use std::collections::BTreeSet;
use tonic::Status;

/// Serves Raft RPCs, forwarded writes and joins for one node.
pub struct RaftService {
    queue: QueueNode,
}

impl RaftService {
    pub fn new(queue: QueueNode) -> RaftService {
        RaftService { queue }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> crate::pb::raft_server::RaftServer<RaftService> {
        crate::pb::raft_server::RaftServer::new(self)
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024)
    }

    fn raft(&self) -> &Raft {
        &self.queue.raft
    }

    fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft().metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }
}

fn reply(data: Vec<u8>) -> Result<tonic::Response<Payload>, Status> {
    Ok(tonic::Response::new(Payload { data }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        req: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, Status> {
        let rpc = decode(&req.into_inner().data)?;
        let result = self.raft().append_entries(rpc).await;
        reply(encode(&result)?)
    }

    async fn vote(&self, req: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, Status> {
        let rpc = decode(&req.into_inner().data)?;
        let result = self.raft().vote(rpc).await;
        reply(encode(&result)?)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, Status> {
        let rpc = decode(&req.into_inner().data)?;
        let result = self.raft().install_snapshot(rpc).await;
        reply(encode(&result)?)
    }

    async fn forward(
        &self,
        req: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, Status> {
        let request: Request = decode(&req.into_inner().data)?;
        let result: Result<Response, ForwardError> = self
            .queue
            .write(request)
            .await
            .map_err(ForwardError::from_write);
        reply(encode(&result)?)
    }

    async fn join(
        &self,
        req: tonic::Request<JoinRequest>,
    ) -> Result<tonic::Response<JoinReply>, Status> {
        let JoinRequest { node_id, addr } = req.into_inner();
        if node_id == 0 || addr.is_empty() {
            return Err(Status::invalid_argument(
                "node_id > 0 and addr are required",
            ));
        }
        let leader = self.leader();
        let not_here = |error: String| {
            Ok(tonic::Response::new(JoinReply {
                ok: false,
                error,
                leader_id: leader.as_ref().map_or(0, |l| l.0),
                leader_addr: leader.as_ref().map(|l| l.1.clone()).unwrap_or_default(),
            }))
        };
        if leader.as_ref().map(|l| l.0) != Some(self.queue.id) {
            return not_here("not the leader".into());
        }
        tracing::info!(node_id, %addr, "adding node: learner first, voter once caught up");
        // Blocking: returns when the learner has caught up with the leader's log.
        if let Err(e) = self
            .raft()
            .add_learner(node_id, BasicNode { addr: addr.clone() }, true)
            .await
        {
            return not_here(format!("add learner: {e}"));
        }
        let ids: BTreeSet<u64> = [node_id].into();
        if let Err(e) = self
            .raft()
            .change_membership(ChangeMembers::AddVoterIds(ids), false)
            .await
        {
            return not_here(format!("promote to voter: {e}"));
        }
        tracing::info!(node_id, %addr, "node is a voter");
        Ok(tonic::Response::new(JoinReply {
            ok: true,
            error: String::new(),
            leader_id: self.queue.id,
            leader_addr: String::new(),
        }))
    }

    async fn remove(
        &self,
        req: tonic::Request<RemoveRequest>,
    ) -> Result<tonic::Response<JoinReply>, Status> {
        let RemoveRequest { node_id } = req.into_inner();
        let leader = self.leader();
        let answer = |ok: bool, error: String| {
            Ok(tonic::Response::new(JoinReply {
                ok,
                error,
                leader_id: leader.as_ref().map_or(0, |l| l.0),
                leader_addr: leader.as_ref().map(|l| l.1.clone()).unwrap_or_default(),
            }))
        };
        if leader.as_ref().map(|l| l.0) != Some(self.queue.id) {
            return answer(false, "not the leader".into());
        }
        let members: BTreeSet<u64> = {
            let m = self.raft().metrics().borrow().clone();
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect()
        };
        if !members.contains(&node_id) {
            return answer(false, format!("node {node_id} is not a member"));
        }
        if members.len() == 1 {
            return answer(false, "cannot remove the only member".into());
        }
        tracing::info!(node_id, "removing node: moving its domains first");
        if let Err(e) = self.queue.write(Request::Retire { node: node_id }).await {
            return answer(false, format!("retire: {e}"));
        }
        // Its domains move once it (or its lease's expiry) acknowledges the new epoch.
        let mut ownership = self.queue.reader.shared.ownership.subscribe();
        let moved = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            ownership
                .wait_for(|o| !o.nodes.contains(&node_id) && o.is_settled())
                .await
                .is_ok()
        })
        .await;
        if moved != Ok(true) {
            return answer(
                false,
                format!("node {node_id} did not hand its domains over within 60 s"),
            );
        }
        let ids: BTreeSet<u64> = [node_id].into();
        if let Err(e) = self
            .raft()
            .change_membership(ChangeMembers::RemoveVoters(ids), false)
            .await
        {
            return answer(false, format!("remove from membership: {e}"));
        }
        tracing::info!(node_id, "node removed");
        answer(true, String::new())
    }

    async fn commit_index(
        &self,
        _req: tonic::Request<CommitIndexRequest>,
    ) -> Result<tonic::Response<CommitIndexReply>, Status> {
        let ok = self.queue.is_leader();
        let index = if ok {
            self.queue
                .committed
                .load(std::sync::atomic::Ordering::Acquire)
        } else {
            0
        };
        let m = self.raft().metrics().borrow().clone();
        let last_log_index = m.last_log_index.unwrap_or(0);
        let matched = match (ok, &m.replication) {
            (true, Some(r)) => r
                .iter()
                .map(|(id, l)| Matched {
                    node_id: *id,
                    index: if *id == self.queue.id {
                        Some(last_log_index)
                    } else {
                        l.map(|l| l.index)
                    },
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(tonic::Response::new(CommitIndexReply {
            ok,
            index,
            last_log_index,
            matched,
        }))
    }

    async fn probe(
        &self,
        _req: tonic::Request<ProbeRequest>,
    ) -> Result<tonic::Response<ProbeReply>, Status> {
        let initialized = self
            .raft()
            .is_initialized()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let leader_id = self.raft().metrics().borrow().current_leader.unwrap_or(0);
        Ok(tonic::Response::new(ProbeReply {
            initialized,
            node_id: self.queue.id,
            leader_id,
        }))
    }

    async fn elect(
        &self,
        _req: tonic::Request<ElectRequest>,
    ) -> Result<tonic::Response<ElectReply>, Status> {
        tracing::info!("asked to take over leadership: starting an election");
        self.raft()
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(tonic::Response::new(ElectReply {}))
    }
}

/// Why a forwarded write failed on the receiving node.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum ForwardError {
    NotLeader(Option<(u64, String)>),
    Failed(String),
}

impl ForwardError {
    /// The receiving node's answer to the forwarded write it failed to make.
    pub fn from_write(e: QueueError) -> ForwardError {
        match e {
            QueueError::NotLeader { leader } => ForwardError::NotLeader(leader),
            e => ForwardError::Failed(e.to_string()),
        }
    }
}
