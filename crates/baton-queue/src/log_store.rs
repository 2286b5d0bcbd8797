//! The Raft log on [`crate::db`], with group commit.
//!
//! `append` writes the entries and hands openraft's completion callback to one flusher
//! task. The flusher takes every callback waiting, runs one fsync and completes them in
//! order: concurrent appends share a flush, and no append is reported before the flush
//! that covers it.

use crate::db::{Batch, Db, DbError, Tree};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{StorageIOError, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

#[derive(Clone)]
pub struct LogStore {
    db: Db,
    log: Tree,
    meta: Tree,
    flusher: mpsc::UnboundedSender<LogFlushed<TypeConfig>>,
    /// The last committed index openraft told us about, for metrics.
    pub committed: Arc<AtomicU64>,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::write_logs(&e).into()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, DbError> {
    bincode::deserialize(bytes).map_err(|e| DbError::corrupt(format!("{what}: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, DbError> {
    bincode::serialize(value).map_err(|e| DbError::corrupt(format!("encode: {e}")))
}

impl LogStore {
    /// Opens the log in `db` and starts its flusher task (needs a tokio runtime).
    pub fn open(db: &Db) -> Result<LogStore, DbError> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(flusher(db.clone(), rx));
        Ok(LogStore {
            db: db.clone(),
            log: db.tree("raft-log")?,
            meta: db.tree("raft-meta")?,
            flusher: tx,
            committed: Arc::new(AtomicU64::new(0)),
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, DbError> {
        match self.meta.get(key)? {
            Some(v) => Ok(Some(decode(&v, "raft meta")?)),
            None => Ok(None),
        }
    }

    fn last_purged(&self) -> Result<Option<LogId>, DbError> {
        Ok(self.get_meta::<Option<LogId>>(PURGED)?.flatten())
    }
}

async fn flusher(db: Db, mut rx: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>) {
    let mut waiting = Vec::new();
    while let Some(first) = rx.recv().await {
        waiting.push(first);
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let result = db.flush().await;
        for callback in waiting.drain(..) {
            callback.log_io_completed(result.as_ref().map(|_| ()).map_err(io_err));
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        let mut entries = Vec::new();
        for pair in self.log.range(&index_key(start), &index_key(end)) {
            let (_, value) = pair.map_err(read_err)?;
            entries.push(decode::<Entry>(&value, "log entry").map_err(read_err)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged().map_err(read_err)?;
        let last_log_id = match self.log.last().map_err(read_err)? {
            Some((_, value)) => Some(
                decode::<Entry>(&value, "log entry")
                    .map_err(read_err)?
                    .log_id,
            ),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let bytes = encode(vote).map_err(|e| StorageIOError::<NodeId>::write_vote(&e))?;
        self.meta
            .insert(VOTE, bytes)
            .map_err(|e| StorageIOError::<NodeId>::write_vote(&e))?;
        self.db
            .flush()
            .await
            .map_err(|e| StorageIOError::<NodeId>::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(VOTE)
            .map_err(|e| StorageIOError::<NodeId>::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.committed.store(c.index, Ordering::Relaxed);
        }
        let bytes = encode(&committed).map_err(write_err)?;
        self.meta.insert(COMMITTED, bytes).map_err(write_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_meta::<Option<LogId>>(COMMITTED)
            .map_err(read_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = Batch::default();
        for entry in entries {
            let bytes = encode(&entry).map_err(write_err)?;
            batch.insert(index_key(entry.log_id.index), bytes);
        }
        self.log.apply(batch).map_err(write_err)?;
        if let Err(mpsc::error::SendError(callback)) = self.flusher.send(callback) {
            // The flusher is gone (runtime shutting down): flush here.
            let result = self.db.flush().await;
            callback.log_io_completed(result.map(|_| ()).map_err(io_err));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = Batch::default();
        for pair in self
            .log
            .range(&index_key(log_id.index), &index_key(u64::MAX))
        {
            let (key, _) = pair.map_err(write_err)?;
            batch.remove(key);
        }
        self.log.apply(batch).map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = encode(&Some(log_id)).map_err(write_err)?;
        self.meta.insert(PURGED, bytes).map_err(write_err)?;
        let mut batch = Batch::default();
        for pair in self.log.range(&index_key(0), &index_key(log_id.index + 1)) {
            let (key, _) = pair.map_err(write_err)?;
            batch.remove(key);
        }
        self.log.apply(batch).map_err(write_err)?;
        Ok(())
    }
}
