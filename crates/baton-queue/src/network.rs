//! The Raft network of a one-voter cluster: there are no peers, so openraft never sends an
//! RPC through it. Any call answers `Unreachable`, which openraft backs off from. The
//! cluster layer (tonic) replaces this factory when nodes join.

use crate::types::{NodeId, TypeConfig};
use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

/// A network with no peers.
#[derive(Clone, Default)]
pub struct NoPeers;

fn unreachable<E: std::error::Error>(target: NodeId) -> RPCError<NodeId, BasicNode, E> {
    let e = std::io::Error::other(format!(
        "node {target} is not reachable: this node runs without a cluster network"
    ));
    RPCError::Unreachable(Unreachable::new(&e))
}

pub struct NoPeerClient {
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeerClient;
    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> NoPeerClient {
        NoPeerClient { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(unreachable(self.target))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable(self.target))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(unreachable(self.target))
    }
}
