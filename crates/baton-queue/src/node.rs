//! [`QueueNode`]: the stores and openraft, started together, and the calls the rest of
//! Baton makes on the queue.

use crate::db::{Db, DbError};
use crate::log_store::LogStore;
use crate::state_machine::{QueueReader, StateMachine};
use crate::types::{NewMessage, NodeId, Outcome, Raft, Request, Response};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, SnapshotPolicy};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A leader accepts writes only if a quorum acknowledged it within this (the election
/// timeout's upper bound).
const QUORUM_FRESH_MS: u64 = 1200;

/// How to open a queue node.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// The address peers use to reach this node's Raft service.
    pub advertise: String,
    /// With no state on disk, form a new one-voter cluster.
    pub bootstrap: bool,
    /// Log entries between snapshots; a tenth of it is kept after a snapshot for
    /// followers that lag a little, older entries are purged.
    pub snapshot_logs: u64,
}

/// Why a queue call failed. `Unavailable` and `NotLeader` are retryable and mean
/// nothing was stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// This node is not the leader; the leader's id and Raft address if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(NodeId, String)> },
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error("queue failed: {0}")]
    Fatal(String),
}

impl From<DbError> for QueueError {
    fn from(e: DbError) -> Self {
        QueueError::Fatal(e.to_string())
    }
}

/// A running queue replica.
#[derive(Clone)]
pub struct QueueNode {
    pub raft: Raft,
    pub reader: QueueReader,
    pub id: NodeId,
    /// Last committed log index known here.
    pub committed: Arc<std::sync::atomic::AtomicU64>,
    /// Set while a draining leader hands leadership over: new writes are refused (as
    /// "not the leader", so writers retry until the next leader takes them) so the
    /// successor's log can match ours.
    handing_over: Arc<std::sync::atomic::AtomicBool>,
    db: Db,
}

impl QueueNode {
    /// Opens the stores and starts Raft with `network` for talking to peers.
    pub async fn open<N>(opts: QueueOptions, network: N) -> Result<QueueNode, QueueError>
    where
        N: openraft::RaftNetworkFactory<crate::types::TypeConfig>,
    {
        std::fs::create_dir_all(&opts.data_dir).map_err(|e| {
            QueueError::Fatal(format!("cannot create {}: {e}", opts.data_dir.display()))
        })?;
        let db = Db::open(&opts.data_dir.join("db"))?;
        let log = LogStore::open(&db, &opts.data_dir.join("log"))?;
        let committed = log.committed.clone();
        let sm = StateMachine::open(&db, opts.data_dir.join("snapshots"))?;
        let reader = sm.reader();
        let config = Config {
            cluster_name: "baton".into(),
            heartbeat_interval: 150,
            election_timeout_min: 600,
            election_timeout_max: 1200,
            // An Enqueue entry can carry 16 MiB of bodies; 8 of them bound one
            // AppendEntries (and the memory a catching-up follower decodes at once).
            max_payload_entries: 8,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_logs),
            max_in_snapshot_log_to_keep: opts.snapshot_logs / 10,
            purge_batch_size: (opts.snapshot_logs / 10).max(1),
            ..Default::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| QueueError::Fatal(format!("raft config: {e}")))?,
        );
        let raft = Raft::new(opts.node_id, config, network, log, sm)
            .await
            .map_err(|e| QueueError::Fatal(format!("raft start: {e}")))?;
        let node = QueueNode {
            raft,
            reader,
            id: opts.node_id,
            committed,
            handing_over: Default::default(),
            db,
        };
        if opts.bootstrap && !node.raft.is_initialized().await.unwrap_or(true) {
            node.form(&opts.advertise).await?;
        }
        Ok(node)
    }

    /// Forms a new one-node cluster of this node, reachable at `advertise`. Only for a
    /// node with no state, and only where no cluster exists (the caller's to know).
    pub async fn form(&self, advertise: &str) -> Result<(), QueueError> {
        let mut members = BTreeMap::new();
        members.insert(
            self.id,
            BasicNode {
                addr: advertise.to_string(),
            },
        );
        self.raft
            .initialize(members)
            .await
            .map_err(|e| QueueError::Fatal(format!("bootstrap: {e}")))
    }

    /// Waits until this node knows a leader and has applied what it committed.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), QueueError> {
        self.raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    m.current_leader.is_some()
                        && m.last_applied.map(|l| l.index) >= m.last_log_index
                },
                "leader known and log applied",
            )
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        Ok(())
    }

    /// Appends and commits an `Enqueue`; returns once it is applied here.
    pub async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<Response, QueueError> {
        self.write(Request::Enqueue { messages }).await
    }

    /// Commits delivery outcomes.
    pub async fn record_outcomes(
        &self,
        now_ms: u64,
        results: Vec<Outcome>,
    ) -> Result<(), QueueError> {
        self.write(Request::Outcomes { now_ms, results })
            .await
            .map(|_| ())
    }

    /// Appends `request` if this node is a leader that heard from a quorum recently;
    /// returns once it is committed and applied here.
    pub async fn write(&self, request: Request) -> Result<Response, QueueError> {
        if self.handing_over.load(std::sync::atomic::Ordering::Acquire) {
            return Err(QueueError::NotLeader { leader: None });
        }
        {
            let m = self.raft.metrics().borrow().clone();
            let voters = m.membership_config.membership().voter_ids().count();
            if m.current_leader == Some(self.id)
                && voters > 1
                && m.millis_since_quorum_ack
                    .is_none_or(|ms| ms > QUORUM_FRESH_MS)
            {
                // Not appended: answering 451 is truthful.
                return Err(QueueError::Unavailable(
                    "the leader has not heard from a quorum recently".into(),
                ));
            }
        }
        match self.raft.client_write(request).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(QueueError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                })
            }
            Err(RaftError::APIError(e)) => Err(QueueError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(QueueError::Fatal(e.to_string())),
        }
    }

    /// Refuses (or again accepts) new writes while leadership is handed over.
    pub fn set_handing_over(&self, on: bool) {
        self.handing_over
            .store(on, std::sync::atomic::Ordering::Release);
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Flushes and stops Raft.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        let _ = self.db.flush().await;
    }
}
