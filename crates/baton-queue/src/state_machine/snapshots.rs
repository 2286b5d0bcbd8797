//! Snapshots of the state machine: built while apply pauses only for the records (the
//! bodies are copied beside apply from pinned body files), received from the leader and
//! installed, with a mark on disk so an install cut short is redone at start.

use super::keys::*;
use super::reader::{body_err, lock};
use super::{StateMachine, sm_read_err, sm_write_err};
use crate::bodies::{self, BodyRef};
use crate::db::{Batch, DbError};
use crate::snapshot::{self, SnapshotReader, SnapshotWriter, make_current};
use crate::types::{Snapshot, SnapshotMeta, StorageError, TypeConfig};
use openraft::storage::RaftSnapshotBuilder;
use std::path::PathBuf;
use std::sync::Arc;

impl StateMachine {
    /// Replaces the state with the current snapshot's. A mark on disk covers the time the
    /// state is half old, half new: if the process stops then, [`StateMachine::open`]
    /// calls this again, so a node never starts from a partly installed state.
    pub(super) fn load_current(&mut self) -> Result<(), DbError> {
        snapshot::mark_installing(&self.snapshot_dir)?;
        // Its references are about to be replaced (and `begin_replace` ends any hold).
        self.compaction = None;
        let mut reader = SnapshotReader::open(&self.snapshot_dir.join(snapshot::CURRENT))?;
        // Every body file there is now, a half-filled one from a stopped install included.
        let old_files = lock(&self.bodies).begin_replace().map_err(body_err)?;
        self.state.clear()?;
        let mut batch = Batch::default();
        let mut batch_bytes = 0;
        while let Some((k, v)) = reader.next_record()? {
            batch_bytes += k.len() + v.len();
            if let Some(id) = k.strip_prefix(BODIES) {
                let r = lock(&self.bodies).put(&v).map_err(body_err)?;
                batch.insert([BODY_REFS, id].concat(), encode(&r));
            } else {
                batch.insert(&k, &v);
            }
            if batch_bytes > 8 * 1024 * 1024 {
                lock(&self.bodies).sync().map_err(body_err)?;
                self.state.apply_direct(std::mem::take(&mut batch))?;
                batch_bytes = 0;
            }
        }
        batch.insert(APPLIED, encode(&reader.meta.last_log_id));
        batch.insert(MEMBERSHIP, encode(&reader.meta.last_membership));
        lock(&self.bodies).sync().map_err(body_err)?;
        self.state.apply_direct(batch)?;
        // The old state's body files go only once the new state is durable.
        self.db.flush_blocking()?;
        lock(&self.bodies)
            .drop_files(&old_files)
            .map_err(body_err)?;
        snapshot::clear_installing(&self.snapshot_dir)
    }

    /// Streams the whole state but the bodies into a new `.tmp` snapshot file, and
    /// pins the body files: the bodies are copied by [`PendingSnapshot::finish`] while
    /// entries are applied again (a body file is append-only, and an open handle keeps
    /// it readable even once it is deleted). Apply is paused only for the records.
    pub(super) fn begin_snapshot(&self) -> Result<PendingSnapshot, DbError> {
        let (last_log_id, last_membership) = self.applied_and_membership()?;
        let snapshot_id = match last_log_id {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, ulid::Ulid::new()),
            None => format!("empty-{}", ulid::Ulid::new()),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let tmp = self
            .snapshot_dir
            .join(format!("building-{}.tmp", ulid::Ulid::new()));
        let mut writer = SnapshotWriter::create(tmp, &meta)?;
        let mut pinned = Vec::new();
        for pair in self.state.iter() {
            let (k, v) = pair?;
            if k.as_slice() == APPLIED || k.as_slice() == MEMBERSHIP {
                continue;
            }
            if let Some(id) = k.strip_prefix(BODY_REFS) {
                // Bodies travel in the snapshot by value, as `b/<id>`.
                let r: BodyRef = decode(&v, "body reference")?;
                let file = lock(&self.bodies)
                    .file(&r)
                    .ok_or_else(|| DbError::corrupt(format!("body file {} missing", r.file)))?;
                pinned.push(([BODIES, id].concat(), file, r));
                continue;
            }
            writer.record(&k, &v)?;
        }
        Ok(PendingSnapshot {
            meta,
            writer,
            pinned,
        })
    }

    /// A new file to receive a snapshot from the leader into.
    pub(super) async fn receive_file(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self
            .snapshot_dir
            .join(format!("receiving-{}.tmp", ulid::Ulid::new()));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(sm_write_err)?;
        if let Some(old) = self.receiving.replace(path) {
            let _ = std::fs::remove_file(old);
        }
        Ok(Box::new(file))
    }

    /// Makes the received `snapshot` current and replaces the state with it.
    pub(super) async fn install(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use std::io::Seek;
        let mut file = snapshot.into_std().await;
        // Keep a copy as the current snapshot (the data handed over need not be the file
        // we created for receiving), then apply it.
        file.seek(std::io::SeekFrom::Start(0))
            .map_err(sm_write_err)?;
        let tmp = self
            .snapshot_dir
            .join(format!("installing-{}.tmp", ulid::Ulid::new()));
        {
            let mut copy = std::fs::File::create(&tmp).map_err(sm_write_err)?;
            std::io::copy(&mut file, &mut copy).map_err(sm_write_err)?;
            copy.sync_all().map_err(sm_write_err)?;
        }
        if let Some(received) = self.receiving.take() {
            let _ = std::fs::remove_file(received);
        }
        make_current(&tmp, &self.snapshot_dir).map_err(sm_write_err)?;
        self.load_current().map_err(sm_write_err)?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            last_log = ?meta.last_log_id.map(|l| l.index),
            "installed a snapshot from the leader"
        );
        self.rebuild_index().map_err(sm_write_err)?;
        if let Some(log_id) = meta.last_log_id {
            self.shared.changed.send_replace(log_id.index);
        }
        Ok(())
    }

    /// The current snapshot, if one was built or installed.
    pub(super) async fn current(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let path = self.snapshot_dir.join(snapshot::CURRENT);
        let meta = match SnapshotReader::open(&path) {
            Ok(r) => r.meta,
            Err(_) if !path.exists() => return Ok(None),
            Err(e) => return Err(sm_read_err(e)),
        };
        let file = tokio::fs::File::open(&path).await.map_err(sm_read_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

/// A snapshot whose records are written and whose bodies are still to be copied.
pub(super) struct PendingSnapshot {
    meta: SnapshotMeta,
    writer: SnapshotWriter,
    /// `b/<id>` keys, with the body file (held open) and where the body is in it.
    pinned: Vec<(Vec<u8>, Arc<std::fs::File>, BodyRef)>,
}

impl PendingSnapshot {
    /// Copies the bodies and closes the file.
    fn finish(mut self) -> Result<(SnapshotMeta, PathBuf), DbError> {
        for (key, file, r) in &self.pinned {
            let body = bodies::read(file, r).map_err(body_err)?;
            self.writer.record(key, &body)?;
        }
        Ok((self.meta, self.writer.finish()?))
    }
}

/// A snapshot begun by `get_snapshot_builder`, finished and made current by
/// `build_snapshot`.
pub struct SnapshotBuilder {
    pub(super) pending: Option<Result<PendingSnapshot, DbError>>,
    pub(super) dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let pending = self
            .pending
            .take()
            .unwrap_or_else(|| Err(DbError::corrupt("snapshot already built")))
            .map_err(sm_read_err)?;
        let (meta, tmp) = tokio::task::spawn_blocking(move || pending.finish())
            .await
            .map_err(|e| sm_write_err(DbError::corrupt(format!("snapshot task: {e}"))))?
            .map_err(sm_write_err)?;
        let current = make_current(&tmp, &self.dir).map_err(sm_write_err)?;
        let file = tokio::fs::File::open(&current).await.map_err(sm_read_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}
