//! The in-memory network: openraft's RPCs and forwarded writes delivered by calling
//! the target node directly, through faults a test sets.
//!
//! The idea is openraft's own test router: every node registers under its id; an RPC
//! is a function call on the target's `Raft`, so what a test can do to the network is
//! decided in one place, per call. Requests and replies still go through bincode, as
//! they do between real nodes, so what cannot cross the wire cannot cross here either.
//!
//! What a test can do to the network:
//! - [`Router::partition`] / [`Router::isolate`]: nodes in different groups cannot reach
//!   each other (calls answer `Unreachable`, like a refused connection);
//! - [`Router::heal`] ends the partition;
//! - [`Router::drop_every`]: the next call to a node fails, then every n-th, with a
//!   chosen [`Fault`], until [`Router::stop_dropping`];
//! - [`Router::set_delay`]: every call waits this long before it is delivered.
//!
//! Reachability is looked at when a call is delivered (after its delay) and again when
//! its reply comes back: a partition that starts while the target works on a call loses
//! the reply, as a real one would.
//!
//! Snapshots go the way the gRPC network sends them: openraft's chunked
//! `install_snapshot` (our `SnapshotData` is a file, so openraft's default
//! `full_snapshot` reads it in chunks), each chunk one call here.

use baton_cluster::server::ForwardError;
use baton_cluster::{Forward, ForwardFailed};
use baton_queue::types::{NodeId, Raft, Request, Response, TypeConfig};
use baton_queue::{QueueError, QueueNode};
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How a call that does not get through fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `RPCError::Unreachable`: openraft backs off from the target; a forwarded write
    /// counts as never sent (a refused connection).
    Unreachable,
    /// `RPCError::Network`: openraft retries at its next chance; a forwarded write may
    /// have reached the leader (a reset connection).
    Network,
}

/// What a call carries, for [`Router::delivered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Forward,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<NodeId, QueueNode>,
    /// Partition groups: node -> group. Nodes named in no group form one more group.
    groups: BTreeMap<NodeId, usize>,
    /// Target -> (every n-th call fails, calls so far, how).
    lossy: BTreeMap<NodeId, (u64, u64, Fault)>,
    delay: Duration,
    /// Calls that reached their target, by kind and target.
    delivered: BTreeMap<(Rpc, NodeId), u64>,
    /// Calls that failed on a fault (not delivered, or their reply lost), likewise.
    dropped: BTreeMap<(Rpc, NodeId), u64>,
}

impl State {
    fn group(&self, id: NodeId) -> usize {
        self.groups.get(&id).copied().unwrap_or(usize::MAX)
    }

    /// Whether a call from `from` to `to` is let through now (counting it against a
    /// lossy target when `count`: its first call fails, then every n-th).
    fn check(&mut self, from: NodeId, to: NodeId, count: bool) -> Result<(), Fault> {
        if self.group(from) != self.group(to) {
            return Err(Fault::Unreachable);
        }
        if count && let Some((every, calls, fault)) = self.lossy.get_mut(&to) {
            *calls += 1;
            if (*calls - 1).is_multiple_of(*every) {
                return Err(*fault);
            }
        }
        Ok(())
    }
}

/// The in-memory network shared by the nodes of one test cluster. Cheap to clone.
#[derive(Clone, Default)]
pub struct Router {
    state: Arc<Mutex<State>>,
}

fn io(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

fn rpc_error<E: std::error::Error>(fault: Fault, msg: String) -> RPCError<NodeId, BasicNode, E> {
    match fault {
        Fault::Unreachable => RPCError::Unreachable(Unreachable::new(&io(msg))),
        Fault::Network => RPCError::Network(NetworkError::new(&io(msg))),
    }
}

/// Through bincode and back, as between real nodes.
fn wire<T: Serialize + DeserializeOwned>(value: &T) -> T {
    let bytes = bincode::serialize(value).expect("encode for the wire");
    bincode::deserialize(&bytes).expect("decode from the wire")
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `node` reachable under its id.
    pub fn register(&self, node: QueueNode) {
        self.lock().nodes.insert(node.id, node);
    }

    /// The network factory node `from` gives openraft.
    pub fn network(&self, from: NodeId) -> RouterNetwork {
        RouterNetwork {
            router: self.clone(),
            from,
        }
    }

    /// How node `from`'s [`baton_cluster::Writer`] reaches the leader.
    pub fn forwarder(&self, from: NodeId) -> Arc<dyn Forward> {
        Arc::new(RouterForward {
            router: self.clone(),
            from,
        })
    }

    /// Nodes in different groups cannot reach each other; nodes named in no group are
    /// one more group. Replaces any earlier partition.
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let mut s = self.lock();
        s.groups.clear();
        for (i, group) in groups.iter().enumerate() {
            for id in *group {
                s.groups.insert(*id, i);
            }
        }
    }

    /// Cuts `id` off from every other node.
    pub fn isolate(&self, id: NodeId) {
        self.partition(&[&[id]]);
    }

    /// The next call to `to` (from anyone) fails with `fault`, then every `every`-th.
    pub fn drop_every(&self, to: NodeId, every: u64, fault: Fault) {
        assert!(every > 0);
        self.lock().lossy.insert(to, (every, 0, fault));
    }

    /// Ends the partition: every node reaches every other again.
    pub fn heal(&self) {
        self.lock().groups.clear();
    }

    /// Ends every [`Router::drop_every`].
    pub fn stop_dropping(&self) {
        self.lock().lossy.clear();
    }

    /// Every call waits `delay` before it is delivered.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Calls of kind `rpc` that reached node `to` so far.
    pub fn delivered(&self, rpc: Rpc, to: NodeId) -> u64 {
        self.lock().delivered.get(&(rpc, to)).copied().unwrap_or(0)
    }

    /// Calls of kind `rpc` to node `to` that failed on a fault so far.
    pub fn dropped(&self, rpc: Rpc, to: NodeId) -> u64 {
        self.lock().dropped.get(&(rpc, to)).copied().unwrap_or(0)
    }

    /// Waits out the delay, then hands over the target if the call gets through.
    async fn deliver(&self, rpc: Rpc, from: NodeId, to: NodeId) -> Result<QueueNode, Fault> {
        let delay = self.lock().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut s = self.lock();
        if let Err(fault) = s.check(from, to, true) {
            *s.dropped.entry((rpc, to)).or_default() += 1;
            return Err(fault);
        }
        let node = s.nodes.get(&to).cloned().ok_or(Fault::Unreachable)?;
        *s.delivered.entry((rpc, to)).or_default() += 1;
        Ok(node)
    }

    /// Whether the reply to a delivered call makes it back.
    fn reply_back(&self, rpc: Rpc, from: NodeId, to: NodeId) -> Result<(), Fault> {
        let mut s = self.lock();
        let back = s.check(from, to, false);
        if back.is_err() {
            *s.dropped.entry((rpc, to)).or_default() += 1;
        }
        back
    }

    /// One Raft RPC from `from` to `to`: `call` runs it on the target's `Raft`.
    async fn raft_rpc<Req, Resp, Err, F, Fut>(
        &self,
        rpc: Rpc,
        from: NodeId,
        to: NodeId,
        option: &RPCOption,
        req: Req,
        call: F,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, Err>>
    where
        Req: Serialize + DeserializeOwned,
        Resp: Serialize + DeserializeOwned,
        Err: std::error::Error + Serialize + DeserializeOwned,
        F: FnOnce(Raft, Req) -> Fut,
        Fut: Future<Output = Result<Resp, Err>>,
    {
        let node = self
            .deliver(rpc, from, to)
            .await
            .map_err(|f| rpc_error(f, format!("{rpc:?} {from} -> {to}: not delivered")))?;
        let result = tokio::time::timeout(option.hard_ttl(), call(node.raft, wire(&req)))
            .await
            // As the gRPC network: a target that does not answer in time is unreachable.
            .map_err(|_| {
                rpc_error(
                    Fault::Unreachable,
                    format!(
                        "{rpc:?} {from} -> {to}: no answer within {:?}",
                        option.hard_ttl()
                    ),
                )
            })?;
        self.reply_back(rpc, from, to)
            .map_err(|f| rpc_error(f, format!("{rpc:?} {from} -> {to}: reply lost")))?;
        wire(&result).map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
    }
}

/// openraft's network factory for one node.
pub struct RouterNetwork {
    router: Router,
    from: NodeId,
}

/// openraft's client from one node to another.
pub struct RouterPeer {
    router: Router,
    from: NodeId,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for RouterNetwork {
    type Network = RouterPeer;
    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> RouterPeer {
        RouterPeer {
            router: self.router.clone(),
            from: self.from,
            target,
        }
    }
}

impl RaftNetwork<TypeConfig> for RouterPeer {
    /// The gRPC network's backoff, so an unreachable node is retried as in production.
    fn backoff(&self) -> Backoff {
        Backoff::new(
            [50, 100, 200]
                .into_iter()
                .chain(std::iter::repeat(500))
                .map(Duration::from_millis),
        )
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let (from, to) = (self.from, self.target);
        self.router
            .raft_rpc(
                Rpc::AppendEntries,
                from,
                to,
                &option,
                rpc,
                |raft, rpc| async move { raft.append_entries(rpc).await },
            )
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
        let (from, to) = (self.from, self.target);
        self.router
            .raft_rpc(
                Rpc::InstallSnapshot,
                from,
                to,
                &option,
                rpc,
                |raft, rpc| async move { raft.install_snapshot(rpc).await },
            )
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let (from, to) = (self.from, self.target);
        self.router
            .raft_rpc(Rpc::Vote, from, to, &option, rpc, |raft, rpc| async move {
                raft.vote(rpc).await
            })
            .await
    }
}

/// A follower's write carried to the leader: the leader's [`QueueNode::write`], with
/// its refusal translated as the Raft service and the gRPC forwarder translate it.
struct RouterForward {
    router: Router,
    from: NodeId,
}

impl RouterForward {
    async fn call(&self, leader: NodeId, request: &Request) -> Result<Response, ForwardFailed> {
        let (from, to) = (self.from, leader);
        let node = self
            .router
            .deliver(Rpc::Forward, from, to)
            .await
            .map_err(|fault| ForwardFailed {
                error: QueueError::Unavailable(format!("forward {from} -> {to}: not delivered")),
                // A refused connection sent nothing; a reset one may have.
                maybe_appended: fault == Fault::Network,
            })?;
        let result: Result<Response, ForwardError> = node
            .write(wire(request))
            .await
            .map_err(ForwardError::from_write);
        self.router
            .reply_back(Rpc::Forward, from, to)
            .map_err(|_| ForwardFailed {
                error: QueueError::Unavailable(format!("forward {from} -> {to}: reply lost")),
                // The leader got it: it may have appended it.
                maybe_appended: true,
            })?;
        wire(&result).map_err(ForwardFailed::from)
    }
}

impl Forward for RouterForward {
    fn forward<'a>(
        &'a self,
        leader: NodeId,
        _addr: &'a str,
        request: &'a Request,
    ) -> Pin<Box<dyn Future<Output = Result<Response, ForwardFailed>> + Send + 'a>> {
        Box::pin(self.call(leader, request))
    }
}
