//! Body-file compaction: a mostly empty body file has its live bodies copied forward,
//! a step at a time after applies, and is deleted once the moved references are durable.

use super::StateMachine;
use super::keys::*;
use super::reader::{body_err, lock};
use crate::bodies::{self, BodyRef};
use crate::db::{Batch, DbError};
use std::time::Duration;

/// How often apply looks for a body file worth compacting.
pub(super) const COMPACT_CHECK: Duration = Duration::from_secs(10);
/// Bodies moved per apply while a file is compacted (about 1 MiB of 4 KiB mail).
const COMPACT_STEP: usize = 256;

/// A body file being emptied: the bodies still to move out of it.
pub(super) struct Compaction {
    file: u64,
    todo: Vec<(String, BodyRef)>,
}

impl StateMachine {
    /// One step of body-file compaction, run after an apply (so never beside one or
    /// beside a snapshot's record phase): every [`COMPACT_CHECK`] look for a mostly
    /// empty body file ([`Bodies::sparsest`]); while there is one, copy up to
    /// [`COMPACT_STEP`] of its live bodies to the current file, sync them, and point
    /// their references there. The emptied file is deleted only after a flush has made
    /// the new references durable: until then it still holds the copies a crash would
    /// fall back to. References are node-local (each node writes its own body files), so
    /// moving them needs no log entry. `force` skips the wait (tests). Returns whether
    /// a file is being compacted.
    pub(super) async fn compact_step(&mut self, force: bool) -> Result<bool, DbError> {
        if self.compaction.is_none() {
            let now = tokio::time::Instant::now();
            if !force && now < self.next_compaction_check {
                return Ok(false);
            }
            self.next_compaction_check = now + COMPACT_CHECK;
            let Some(file) = lock(&self.bodies).sparsest() else {
                return Ok(false);
            };
            let mut todo = Vec::new();
            for pair in self.state.scan_prefix(BODY_REFS) {
                let (key, value) = pair?;
                let r: BodyRef = decode(&value, "body reference")?;
                if r.file == file {
                    todo.push((name_of(&key), r));
                }
            }
            tracing::info!(
                file,
                bodies = todo.len(),
                "compacting a mostly empty body file"
            );
            lock(&self.bodies).hold(file);
            self.compaction = Some(Compaction { file, todo });
        }
        let Some(c) = self.compaction.as_mut() else {
            return Ok(false);
        };
        let chunk = c.todo.split_off(c.todo.len().saturating_sub(COMPACT_STEP));
        let mut batch = Batch::default();
        {
            let mut bodies = lock(&self.bodies);
            for (id, old) in chunk {
                let key = body_ref_key(&id);
                // The message may have finished (or been moved) since the file was picked.
                match self.state.get(&key)? {
                    Some(v) if decode::<BodyRef>(&v, "body reference")? == old => {}
                    _ => continue,
                }
                let file = bodies
                    .file(&old)
                    .ok_or_else(|| DbError::corrupt(format!("body file {} missing", old.file)))?;
                let body = bodies::read(&file, &old)
                    .map_err(|e| body_err(format!("message {id}: {e}")))?;
                let new = bodies.put(&body).map_err(body_err)?;
                bodies.moved(&old);
                batch.insert(key, encode(&new));
            }
            bodies.sync().map_err(body_err)?;
        }
        self.state.apply(batch)?;
        if c.todo.is_empty() {
            let file = c.file;
            self.compaction = None;
            self.db.flush().await?;
            lock(&self.bodies).unhold(file).map_err(body_err)?;
            tracing::info!(file, "compacted a body file");
        }
        Ok(true)
    }

    /// Runs body-file compaction now, to the end (tests); whether a file was compacted.
    #[doc(hidden)]
    pub async fn compact_bodies(&mut self) -> Result<bool, DbError> {
        let compacted = self.compact_step(true).await?;
        while self.compaction.is_some() {
            self.compact_step(true).await?;
        }
        Ok(compacted)
    }

    /// Starts a new body file past `bytes` instead of 64 MiB (tests).
    #[doc(hidden)]
    pub fn set_body_file_max(&self, bytes: u64) {
        lock(&self.bodies).set_file_max(bytes);
    }
}
