//! An in-process Baton cluster for tests.
//!
//! Several [`QueueNode`]s in one process, each with its own temporary data directory
//! (real sled, real log segments and body files, real openraft: nothing of disk or
//! consensus is mocked), connected by an in-memory [`Router`] in place of gRPC. Tests
//! cut, delay and drop what the nodes say to each other and watch the cluster recover:
//! failures that take several processes, a chaos harness and minutes to provoke with
//! real nodes take a few seconds here, deterministically enough to run in CI.
//!
//! Each node also has a [`Writer`] whose forwarded writes go through the same router,
//! so the cluster code built on it (delivery leases, their expiry) runs unchanged.
//!
//! The router lives with the tests rather than behind a cargo feature of the crate:
//! it needs nothing private, only the [`baton_cluster::Forward`] seam of `Writer`.

#![allow(dead_code)]

pub mod router;

use baton_cluster::Writer;
use baton_queue::ownership::Ownership;
use baton_queue::types::{NodeId, Request};
use baton_queue::{NewMessage, QueueNode, QueueOptions};
use openraft::BasicNode;
use openraft::RaftMetrics;
pub use router::{Fault, Router, Rpc};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

/// How long any one wait in these tests may take before it fails the test.
pub const WAIT: Duration = Duration::from_secs(8);

/// One node of the cluster.
pub struct Node {
    pub id: NodeId,
    pub queue: QueueNode,
    /// Writes from this node, forwarded through the router when it is a follower.
    pub writer: Writer,
}

impl Node {
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.queue.raft.metrics().borrow().clone()
    }

    /// The ids of the messages queued here (for any domain), from the applied state.
    pub fn queued_ids(&self) -> BTreeSet<String> {
        self.queue.reader.shared.with(|index| {
            index
                .domains()
                .iter()
                .flat_map(|d| {
                    index
                        .due_times(d)
                        .map(|(id, _)| id.to_string())
                        .collect::<Vec<_>>()
                })
                .collect()
        })
    }

    /// The ownership table as this node last applied it.
    pub fn ownership(&self) -> Arc<Ownership> {
        self.queue.reader.shared.ownership.borrow().clone()
    }

    /// The last log index applied here.
    pub fn applied(&self) -> u64 {
        self.metrics().last_applied.map_or(0, |l| l.index)
    }
}

/// Several nodes on one [`Router`].
pub struct Cluster {
    pub router: Router,
    pub nodes: BTreeMap<NodeId, Node>,
    _dir: TempDir,
}

/// Fails the test with `what` if `f` does not finish within [`WAIT`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Logs to the test output with `RUST_LOG` set (e.g. `RUST_LOG=openraft=info,baton=debug`).
pub fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A message for `recipients` with a body of `size` bytes that names it.
pub fn message(id: &str, recipients: &[&str], size: usize) -> NewMessage {
    let mut body = format!("Subject: {id}\r\n\r\n").into_bytes();
    while body.len() < size {
        body.extend_from_slice(id.as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    NewMessage {
        id: id.into(),
        sender: "sender@src.test".into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        body,
        received_at_ms: 1,
        eight_bit: false,
        smtputf8: false,
    }
}

pub fn enqueue(messages: Vec<NewMessage>) -> Request {
    Request::Enqueue { messages }
}

impl Cluster {
    /// Opens voters `1..=n`, makes them one cluster and waits until every node knows
    /// the leader and applied the membership. `snapshot_logs` as in [`QueueOptions`].
    pub async fn start(n: u64, snapshot_logs: u64) -> Cluster {
        logs();
        let dir = TempDir::new().expect("tempdir");
        let router = Router::new();
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let queue = QueueNode::open(
                QueueOptions {
                    node_id: id,
                    data_dir: dir.path().join(format!("node-{id}")),
                    advertise: addr(id),
                    bootstrap: false,
                    snapshot_logs,
                },
                router.network(id),
            )
            .await
            .expect("open a node");
            router.register(queue.clone());
            let writer = Writer::with_forward(queue.clone(), router.forwarder(id));
            nodes.insert(id, Node { id, queue, writer });
        }
        let members: BTreeMap<NodeId, BasicNode> = (1..=n)
            .map(|id| (id, BasicNode { addr: addr(id) }))
            .collect();
        nodes[&1]
            .queue
            .raft
            .initialize(members)
            .await
            .expect("initialize");
        let cluster = Cluster {
            router,
            nodes,
            _dir: dir,
        };
        let all: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        cluster.leader_of(&all).await;
        cluster.converged().await;
        cluster
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[&id]
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Waits until every node of `group` knows the same leader, one of `group`.
    pub async fn leader_of(&self, group: &[NodeId]) -> NodeId {
        within(&format!("a leader among {group:?}"), async {
            let mut watches: Vec<_> = group
                .iter()
                .map(|id| self.node(*id).queue.raft.metrics())
                .collect();
            loop {
                let leaders: BTreeSet<Option<NodeId>> = watches
                    .iter_mut()
                    .map(|w| w.borrow_and_update().current_leader)
                    .collect();
                if let [Some(leader)] = leaders.into_iter().collect::<Vec<_>>()[..]
                    && group.contains(&leader)
                {
                    return leader;
                }
                // Any node's metrics changing is worth another look.
                let changed = watches.iter_mut().map(|w| Box::pin(w.changed()));
                let _ = futures_select_any(changed).await;
            }
        })
        .await
    }

    /// Waits until the leader has applied its whole log and every node applied as far;
    /// returns that index. Only for a cluster nothing writes to meanwhile.
    pub async fn converged(&self) -> u64 {
        let leader = self.leader_of(&self.ids()).await;
        let m = within("the leader to apply its log", async {
            self.node(leader)
                .queue
                .raft
                .wait(None)
                .metrics(
                    |m| {
                        m.last_log_index.is_some()
                            && m.last_applied.map(|l| l.index) == m.last_log_index
                    },
                    "leader applied its log",
                )
                .await
                .expect("leader metrics")
        })
        .await;
        let index = m.last_log_index.unwrap_or(0);
        for node in self.nodes.values() {
            within(&format!("node {} to apply up to {index}", node.id), async {
                node.queue
                    .raft
                    .wait(None)
                    .applied_index_at_least(Some(index), "applied")
                    .await
                    .expect("metrics")
            })
            .await;
        }
        index
    }

    /// Stops every node (flushing its stores) before the data directory goes.
    pub async fn shutdown(self) {
        for node in self.nodes.values() {
            node.queue.shutdown().await;
        }
    }
}

fn addr(id: NodeId) -> String {
    format!("inproc-{id}")
}

/// Waits for the first of `futures` to finish.
async fn futures_select_any<F: Future + Unpin>(futures: impl Iterator<Item = F>) {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}
