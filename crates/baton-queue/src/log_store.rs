//! The Raft log, with group commit: entries in segment files ([`crate::segments`]), the
//! vote, the committed and the purged log ids in the `raft-meta` tree of [`crate::db`].
//!
//! `append` writes the entries and hands openraft's completion callback to one flusher
//! task. The flusher takes every callback waiting, runs one `fdatasync` and completes
//! them in order: concurrent appends share a flush, and no append is reported before the
//! flush that covers it.
//!
//! Purging flushes the database first: the state machine lives there, and the entries
//! purged are the only other copy of what it has applied since its last flush.
//!
//! The entries appended last are also kept in memory ([`Recent`], up to
//! [`RECENT_MAX_BYTES`]): a leader replicates each entry to every follower right after
//! appending it, and reading it back from the file would cost a read and a decode per
//! follower.

use crate::db::{Db, DbError, Tree};
use crate::segments::{self, Pending, Segments};
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{StorageIOError, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

/// How many bytes of recently appended entries stay in memory.
const RECENT_MAX_BYTES: usize = 32 * 1024 * 1024;

/// The last appended entries, contiguous by index, oldest first.
#[derive(Default)]
struct Recent {
    entries: std::collections::VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn push(&mut self, entry: Entry, size: usize) {
        let next = self.entries.back().map(|(e, _)| e.log_id.index + 1);
        if next.is_some_and(|n| n != entry.log_id.index) {
            self.clear();
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        while self.bytes > RECENT_MAX_BYTES && self.entries.len() > 1 {
            if let Some((_, s)) = self.entries.pop_front() {
                self.bytes -= s;
            }
        }
    }

    fn get(&self, index: u64) -> Option<&Entry> {
        let first = self.first_index()?;
        let at = usize::try_from(index.checked_sub(first)?).ok()?;
        self.entries.get(at).map(|(e, _)| e)
    }

    /// Forgets the entries from `index` on.
    fn truncate(&mut self, index: u64) {
        while let Some((e, s)) = self.entries.back() {
            if e.log_id.index < index {
                break;
            }
            self.bytes -= *s;
            self.entries.pop_back();
        }
    }

    /// Forgets the entries up to `index`.
    fn purge(&mut self, index: u64) {
        while let Some((e, s)) = self.entries.front() {
            if e.log_id.index > index {
                break;
            }
            self.bytes -= *s;
            self.entries.pop_front();
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

#[derive(Clone)]
pub struct LogStore {
    db: Db,
    log: Arc<Mutex<Segments>>,
    recent: Arc<Mutex<Recent>>,
    meta: Tree,
    flusher: mpsc::UnboundedSender<(Pending, LogFlushed<TypeConfig>)>,
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
    /// Opens the log (segments in `dir`, metadata in `db`) and starts its flusher task
    /// (needs a tokio runtime). A log kept in `db` by an older version moves to `dir`.
    pub fn open(db: &Db, dir: &Path) -> Result<LogStore, DbError> {
        let mut segments = Segments::open(dir).map_err(|e| DbError::corrupt(e.to_string()))?;
        // Buffered: `save_committed` runs on every commit and need not be durable; the
        // vote and the purge mark are followed by a `Db::flush`, which covers buffers.
        let meta = db.buffered_tree("raft-meta")?;
        let old = db.tree("raft-log")?;
        if segments.is_empty() && old.last()?.is_some() {
            for pair in old.iter() {
                let (key, value) = pair?;
                let index = u64::from_be_bytes(
                    key.as_slice()
                        .try_into()
                        .map_err(|_| DbError::corrupt("old log key"))?,
                );
                segments
                    .append(index, &value)
                    .map_err(|e| DbError::corrupt(e.to_string()))?;
            }
            segments
                .take_dirty()
                .sync()
                .map_err(|e| DbError::corrupt(e.to_string()))?;
            old.clear()?;
            tracing::info!(dir = %dir.display(), "moved the Raft log out of the database into segment files");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(flusher(rx));
        let store = LogStore {
            db: db.clone(),
            log: Arc::new(Mutex::new(segments)),
            recent: Arc::default(),
            meta,
            flusher: tx,
            committed: Arc::new(AtomicU64::new(0)),
        };
        if let Some(purged) = store.last_purged()? {
            store
                .segments()
                .purge(purged.index)
                .map_err(|e| DbError::corrupt(e.to_string()))?;
        }
        Ok(store)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        // Every method leaves it contiguous.
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn segments(&self) -> std::sync::MutexGuard<'_, Segments> {
        // A panic while holding the lock left the index as it was between calls: every
        // method updates it only after its file operation succeeded.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Reads and decodes entry `index`, if the log holds it.
    fn entry(&self, index: u64) -> Result<Option<Entry>, DbError> {
        if let Some(e) = self.recent().get(index) {
            return Ok(Some(e.clone()));
        }
        let Some((file, offset, len)) = self.segments().locate(index) else {
            return Ok(None);
        };
        let bytes = segments::read_at(&file, offset, len)
            .map_err(|e| DbError::corrupt(format!("log entry {index}: {e}")))?;
        Ok(Some(decode(&bytes, "log entry")?))
    }
}

async fn flusher(mut rx: mpsc::UnboundedReceiver<(Pending, LogFlushed<TypeConfig>)>) {
    let mut waiting = Vec::new();
    while let Some((pending, first)) = rx.recv().await {
        let mut all = pending;
        waiting.push(first);
        while let Ok((more, callback)) = rx.try_recv() {
            all.merge(more);
            waiting.push(callback);
        }
        let result = match tokio::task::spawn_blocking(move || all.sync()).await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(format!("log sync task: {e}"))),
        };
        for callback in waiting.drain(..) {
            callback.log_io_completed(result.as_ref().map(|_| ()).map_err(io_err));
        }
    }
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
        let (first, last) = {
            let s = self.segments();
            (s.first_index(), s.last_index())
        };
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        for index in start.max(first)..end.min(last.saturating_add(1)) {
            match self.entry(index).map_err(read_err)? {
                Some(e) => entries.push(e),
                None => break,
            }
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged().map_err(read_err)?;
        let last = self.segments().last_index();
        let last_log_id = match last {
            Some(index) => match self.entry(index).map_err(read_err)? {
                Some(e) => Some(e.log_id),
                None => last_purged_log_id,
            },
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
        let pending = {
            let mut s = self.segments();
            // One entry's encoding at a time: entries can be 16 MiB each.
            let mut recent = self.recent();
            for entry in entries {
                let index = entry.log_id.index;
                let bytes = encode(&entry).map_err(write_err)?;
                if let Err(e) = s.append(index, &bytes) {
                    recent.clear();
                    return Err(write_err(DbError::corrupt(e.to_string())));
                }
                recent.push(entry, bytes.len());
            }
            s.take_dirty()
        };
        if let Err(mpsc::error::SendError((pending, callback))) =
            self.flusher.send((pending, callback))
        {
            // The flusher is gone (runtime shutting down): sync here.
            callback.log_io_completed(pending.sync());
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent().truncate(log_id.index);
        self.segments()
            .truncate(log_id.index)
            .map_err(|e| write_err(DbError::corrupt(e.to_string())))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The state machine (and this mark) must be durable before the entries that
        // could rebuild it go.
        let bytes = encode(&Some(log_id)).map_err(write_err)?;
        self.meta.insert(PURGED, bytes).map_err(write_err)?;
        self.db.flush().await.map_err(write_err)?;
        self.recent().purge(log_id.index);
        self.segments()
            .purge(log_id.index)
            .map_err(|e| write_err(DbError::corrupt(e.to_string())))?;
        Ok(())
    }
}
