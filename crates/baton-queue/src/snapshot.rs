//! Snapshot files: the state machine streamed to disk and back, never whole in memory.
//!
//! Layout: `u64` LE length + bincode [`SnapshotMeta`], then records of
//! `u32` LE key length, key, `u32` LE value length, value, to the end of the file.
//! The current snapshot is `current.bin` in the snapshot directory; one being built or
//! received is a `.tmp` file renamed over it once complete and synced.

use crate::db::DbError;
use crate::types::SnapshotMeta;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub const CURRENT: &str = "current.bin";
/// Present while `current.bin` is being loaded into the state: the state is then partly
/// old and partly new, and opening the state machine loads the snapshot again.
pub const INSTALLING: &str = "installing";

fn io(e: std::io::Error) -> DbError {
    DbError::corrupt(format!("snapshot file: {e}"))
}

/// Writes a snapshot file record by record.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    pub path: PathBuf,
}

impl SnapshotWriter {
    pub fn create(path: PathBuf, meta: &SnapshotMeta) -> Result<SnapshotWriter, DbError> {
        let file = File::create(&path).map_err(io)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let header = bincode::serialize(meta).map_err(|e| DbError::corrupt(e.to_string()))?;
        out.write_all(&(header.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&header).map_err(io)?;
        Ok(SnapshotWriter { out, path })
    }

    pub fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), DbError> {
        self.out
            .write_all(&(key.len() as u32).to_le_bytes())
            .map_err(io)?;
        self.out.write_all(key).map_err(io)?;
        self.out
            .write_all(&(value.len() as u32).to_le_bytes())
            .map_err(io)?;
        self.out.write_all(value).map_err(io)?;
        Ok(())
    }

    /// Flushes and syncs; returns the path.
    pub fn finish(self) -> Result<PathBuf, DbError> {
        let file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(self.path)
    }
}

/// Renames a finished `.tmp` file over `current.bin`, durably.
pub fn make_current(tmp: &Path, dir: &Path) -> Result<PathBuf, DbError> {
    let current = dir.join(CURRENT);
    std::fs::rename(tmp, &current).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(current)
}

/// Durably marks `dir` as being installed from (see [`INSTALLING`]).
pub fn mark_installing(dir: &Path) -> Result<(), DbError> {
    File::create(dir.join(INSTALLING))
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Removes the mark once the installed state is durable. Losing the removal in a crash
/// only means the snapshot is loaded once more.
pub fn clear_installing(dir: &Path) -> Result<(), DbError> {
    match std::fs::remove_file(dir.join(INSTALLING)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
        _ => Ok(()),
    }
}

/// Reads a snapshot file: its meta, then its records.
pub struct SnapshotReader {
    input: BufReader<File>,
    pub meta: SnapshotMeta,
}

impl SnapshotReader {
    pub fn open(path: &Path) -> Result<SnapshotReader, DbError> {
        SnapshotReader::from_file(File::open(path).map_err(io)?)
    }

    pub fn from_file(file: File) -> Result<SnapshotReader, DbError> {
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut len = [0u8; 8];
        input.read_exact(&mut len).map_err(io)?;
        let len = u64::from_le_bytes(len);
        if len > 64 * 1024 * 1024 {
            return Err(DbError::corrupt("snapshot header too large"));
        }
        let mut header = vec![0u8; len as usize];
        input.read_exact(&mut header).map_err(io)?;
        let meta = bincode::deserialize(&header).map_err(|e| DbError::corrupt(e.to_string()))?;
        Ok(SnapshotReader { input, meta })
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<crate::db::Pair>, DbError> {
        let mut len = [0u8; 4];
        match self.input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io(e)),
        }
        let key = self.read_bytes(u32::from_le_bytes(len))?;
        self.input.read_exact(&mut len).map_err(io)?;
        let value = self.read_bytes(u32::from_le_bytes(len))?;
        Ok(Some((key, value)))
    }

    fn read_bytes(&mut self, len: u32) -> Result<Vec<u8>, DbError> {
        let mut buf = vec![0u8; len as usize];
        self.input.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }
}
