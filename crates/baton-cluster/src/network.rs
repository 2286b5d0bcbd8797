//! openraft's network over tonic.

use crate::pb::Payload;
use crate::pb::raft_client::RaftClient;
use crate::tls::PeerTls;
use crate::{decode, encode};
use baton_queue::types::{NodeId, TypeConfig};
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::transport::{Channel, Endpoint};

/// One channel per peer address, created lazily (no I/O until the first call) and shared
/// by the Raft network, forwarding, joins, catch-up and the hand-over. With a
/// [`PeerTls`] every channel is `https://` with mutual TLS; [`Peers::default`] is
/// plaintext (h2c), for loopback and the in-process tests.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<Arc<PeerTls>>,
}

impl Peers {
    /// Peers reached over mutual TLS when `tls` is given, else in plaintext.
    pub fn new(tls: Option<PeerTls>) -> Peers {
        Peers {
            channels: Arc::default(),
            tls: tls.map(Arc::new),
        }
    }

    /// The TLS peers talk, if any (the Raft server serves the same).
    pub fn tls(&self) -> Option<&PeerTls> {
        self.tls.as_deref()
    }

    pub fn client(&self, addr: &str) -> Result<RaftClient<Channel>, String> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(limited(c.clone()));
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad peer address {addr}: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(10));
        if let Some(tls) = &self.tls {
            // The server's certificate is checked for the URI's host: `addr`'s.
            endpoint = endpoint
                .tls_config(tls.client())
                .map_err(|e| format!("peer TLS for {addr}: {e}"))?;
        }
        let channel = endpoint.connect_lazy();
        map.insert(addr.to_string(), channel.clone());
        Ok(limited(channel))
    }
}

/// A client on `channel` with the message limits of every peer call (a large append or
/// snapshot chunk, and its answer), whether the channel is new or reused.
fn limited(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel)
        .max_decoding_message_size(256 * 1024 * 1024)
        .max_encoding_message_size(256 * 1024 * 1024)
}

/// The factory openraft asks for per-peer clients.
#[derive(Clone, Default)]
pub struct GrpcNetwork {
    pub peers: Peers,
}

pub struct GrpcPeer {
    target: NodeId,
    addr: String,
    peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcPeer;
    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GrpcPeer {
        GrpcPeer {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

fn unreachable<E: std::error::Error>(msg: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(msg)))
}

impl GrpcPeer {
    /// Sends `req` with `call` and decodes the remote's `Result<Resp, Err>`.
    async fn rpc<Req, Resp, Err, F, Fut>(
        &self,
        req: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, Err>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        Err: std::error::Error + serde::de::DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, Payload) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Payload>, tonic::Status>>,
    {
        let client = self.peers.client(&self.addr).map_err(unreachable)?;
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply =
            tokio::time::timeout(option.hard_ttl(), call(client, Payload { data }))
                .await
                // Unreachable: openraft then pauses replication to it for a backoff (see
                // `backoff` below), so a follower that is only slow is not sent the
                // same large append again while it still works on the last one.
                .map_err(|_| {
                    unreachable(format!(
                        "node {} ({}) did not answer within {:?}",
                        self.target,
                        self.addr,
                        option.hard_ttl()
                    ))
                })?
                .map_err(|status| match status.code() {
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => unreachable(
                        format!("node {} ({}): {}", self.target, self.addr, status.message()),
                    ),
                    _ => RPCError::Network(NetworkError::new(&status)),
                })?;
        let result: Result<Resp, Err> = decode(&reply.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for GrpcPeer {
    /// Pauses between replication attempts to a node that is unreachable or did not
    /// answer in time: short at first (a follower slowed by a large append or a slow
    /// fsync is usually back within tens of milliseconds), then openraft's default
    /// 500 ms. openraft starts over from the first after any success.
    fn backoff(&self) -> Backoff {
        Backoff::new(
            [50, 100, 200]
                .into_iter()
                .chain(std::iter::repeat(500))
                .map(std::time::Duration::from_millis),
        )
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(&rpc, &option, |mut c, p| async move {
            c.append_entries(p).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(&rpc, &option, |mut c, p| async move {
            c.install_snapshot(p).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(&rpc, &option, |mut c, p| async move { c.vote(p).await })
            .await
    }
}
