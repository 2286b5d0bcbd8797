//! Message bodies in append-only files beside the database, so the database holds only a
//! 20-byte reference per body (sled rewrote each 4 KiB body several times over as its
//! pages consolidated).
//!
//! Files are `<dir>/<seq, 20 digits>.body`, records `[length u32 LE][crc32 u32 LE][body]`.
//! Bodies are appended while an entry is applied and made durable with `fdatasync`
//! before the entry's references reach the database: a reference never points at bytes a
//! power cut could take. Each file counts its live bodies; a file whose count reaches
//! zero (and that is not being appended to) is deleted. On open the counts are rebuilt
//! from the references, files without any are deleted, and appends go to a new file.
//!
//! A file with a few long-lived bodies left (deferred mail) would otherwise keep all its
//! bytes for days: the state machine compacts such a file by copying its live bodies to
//! the current file ([`Bodies::sparsest`], [`Bodies::hold`], [`Bodies::moved`]) and
//! deletes it once the new references are durable ([`Bodies::unhold`]).

use crate::segments::{HEADER, fsync_dir, numbered_files, record_header};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A new file is started past this size.
const FILE_MAX: u64 = 64 * 1024 * 1024;

/// Bytes a body takes in its file.
fn footprint(r: &BodyRef) -> u64 {
    HEADER + u64::from(r.len)
}

/// Where a body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyRef {
    pub file: u64,
    pub offset: u64,
    pub len: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("message bodies in {path}: {what}")]
pub struct BodyError {
    path: String,
    what: String,
}

fn err(path: &Path, what: impl std::fmt::Display) -> BodyError {
    BodyError {
        path: path.display().to_string(),
        what: what.to_string(),
    }
}

pub struct Bodies {
    dir: PathBuf,
    files: BTreeMap<u64, Arc<File>>,
    live: HashMap<u64, u64>,
    /// Bytes of live bodies in each file.
    live_bytes: HashMap<u64, u64>,
    /// Files being compacted: kept, even empty, until [`Bodies::unhold`].
    held: HashSet<u64>,
    file_max: u64,
    /// The file appended to, and its length.
    current: u64,
    current_len: u64,
    /// Appends (or new files) not yet synced.
    unsynced: Vec<u64>,
    new_files: bool,
}

impl Bodies {
    pub fn open(dir: &Path) -> Result<Bodies, BodyError> {
        let mut files = BTreeMap::new();
        for seq in numbered_files(dir, ".body").map_err(|e| err(dir, e))? {
            let path = dir.join(format!("{seq:020}.body"));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| err(&path, e))?;
            files.insert(seq, Arc::new(file));
        }
        let current = files.keys().next_back().map_or(1, |s| s + 1);
        let mut bodies = Bodies {
            dir: dir.to_path_buf(),
            files,
            live: HashMap::new(),
            live_bytes: HashMap::new(),
            held: HashSet::new(),
            file_max: FILE_MAX,
            current,
            current_len: 0,
            unsynced: Vec::new(),
            new_files: false,
        };
        bodies.create_current()?;
        Ok(bodies)
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.body"))
    }

    fn create_current(&mut self) -> Result<(), BodyError> {
        let path = self.path_of(self.current);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| err(&path, e))?;
        self.files.insert(self.current, Arc::new(file));
        self.current_len = 0;
        self.new_files = true;
        Ok(())
    }

    /// Starts a new file past `bytes` instead of 64 MiB (tests).
    #[doc(hidden)]
    pub fn set_file_max(&mut self, bytes: u64) {
        self.file_max = bytes;
    }

    /// Sets the live counts from the references in the database; deletes the files no
    /// reference points into.
    pub fn set_live(&mut self, refs: impl IntoIterator<Item = BodyRef>) -> Result<(), BodyError> {
        self.live.clear();
        self.live_bytes.clear();
        for r in refs {
            *self.live.entry(r.file).or_default() += 1;
            *self.live_bytes.entry(r.file).or_default() += footprint(&r);
        }
        let seqs: Vec<u64> = self.files.keys().copied().collect();
        for seq in seqs {
            self.drop_if_empty(seq)?;
        }
        Ok(())
    }

    /// Appends a body (not yet durable: see [`Bodies::sync`]).
    pub fn put(&mut self, body: &[u8]) -> Result<BodyRef, BodyError> {
        if self.current_len >= self.file_max {
            self.current += 1;
            self.create_current()?;
        }
        let file = self
            .files
            .get(&self.current)
            .ok_or_else(|| err(&self.dir, "no current file"))?;
        file.write_all_at(&record_header(body), self.current_len)
            .and_then(|_| file.write_all_at(body, self.current_len + HEADER))
            .map_err(|e| err(&self.path_of(self.current), e))?;
        let r = BodyRef {
            file: self.current,
            offset: self.current_len + HEADER,
            len: body.len() as u32,
        };
        self.current_len += HEADER + body.len() as u64;
        *self.live.entry(self.current).or_default() += 1;
        *self.live_bytes.entry(self.current).or_default() += footprint(&r);
        if !self.unsynced.contains(&self.current) {
            self.unsynced.push(self.current);
        }
        Ok(r)
    }

    /// Makes every body put so far durable.
    pub fn sync(&mut self) -> Result<(), BodyError> {
        for seq in std::mem::take(&mut self.unsynced) {
            if let Some(f) = self.files.get(&seq) {
                f.sync_data().map_err(|e| err(&self.path_of(seq), e))?;
            }
        }
        if std::mem::take(&mut self.new_files) {
            fsync_dir(&self.dir).map_err(|e| err(&self.dir, e))?;
        }
        Ok(())
    }

    /// The file holding `r` (read it with [`read`], outside any lock).
    pub fn file(&self, r: &BodyRef) -> Option<Arc<File>> {
        self.files.get(&r.file).cloned()
    }

    /// One body fewer in `r`'s file; the file goes when none is left (unless held).
    pub fn release(&mut self, r: &BodyRef) -> Result<(), BodyError> {
        self.forget(r);
        self.drop_if_empty(r.file)
    }

    /// Counts `r` out of its file.
    fn forget(&mut self, r: &BodyRef) {
        if let Some(b) = self.live_bytes.get_mut(&r.file) {
            *b = b.saturating_sub(footprint(r));
        }
        if let Some(n) = self.live.get_mut(&r.file) {
            *n = n.saturating_sub(1);
        }
    }

    /// Deletes file `seq` if no body in it is live, unless it is appended to or held.
    fn drop_if_empty(&mut self, seq: u64) -> Result<(), BodyError> {
        let empty = self.live.get(&seq).copied().unwrap_or(0) == 0;
        if empty && seq != self.current && !self.held.contains(&seq) {
            self.delete(seq)?;
        }
        Ok(())
    }

    /// The file (not the current one, not held) whose live bodies fill at most a quarter
    /// of it, with at least half a file's worth of bytes to win back, the emptiest first.
    pub fn sparsest(&self) -> Option<u64> {
        let min_free = self.file_max / 2;
        let mut best: Option<(u64, f64)> = None;
        for (seq, file) in &self.files {
            if *seq == self.current || self.held.contains(seq) {
                continue;
            }
            let Ok(size) = file.metadata().map(|m| m.len()) else {
                continue;
            };
            let live = self.live_bytes.get(seq).copied().unwrap_or(0);
            if size == 0 || live.saturating_mul(4) > size || size - live < min_free {
                continue;
            }
            let fill = live as f64 / size as f64;
            if best.is_none_or(|(_, f)| fill < f) {
                best = Some((*seq, fill));
            }
        }
        best.map(|(seq, _)| seq)
    }

    /// Keeps file `seq` while its bodies are moved out of it.
    pub fn hold(&mut self, seq: u64) {
        self.held.insert(seq);
    }

    /// The body at `old` was copied to the current file (with [`Bodies::put`]): counts
    /// it out of its held file.
    pub fn moved(&mut self, old: &BodyRef) {
        self.forget(old);
    }

    /// Ends a hold, once the moved references are durable: the file goes if nothing is
    /// left in it.
    pub fn unhold(&mut self, seq: u64) -> Result<(), BodyError> {
        self.held.remove(&seq);
        self.drop_if_empty(seq)
    }

    fn delete(&mut self, seq: u64) -> Result<(), BodyError> {
        self.live.remove(&seq);
        self.live_bytes.remove(&seq);
        if self.files.remove(&seq).is_some() {
            let path = self.path_of(seq);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(&path, e)),
            }
        }
        Ok(())
    }

    /// Starts over for a snapshot being installed: appends go to a new file, and the
    /// files holding the old state are returned, to be dropped with
    /// [`Bodies::drop_files`] once the new state is in place.
    pub fn begin_replace(&mut self) -> Result<Vec<u64>, BodyError> {
        let old: Vec<u64> = self.files.keys().copied().collect();
        self.current += 1;
        self.create_current()?;
        self.live.clear();
        self.live_bytes.clear();
        self.held.clear();
        Ok(old)
    }

    pub fn drop_files(&mut self, seqs: &[u64]) -> Result<(), BodyError> {
        for seq in seqs {
            if *seq != self.current {
                self.delete(*seq)?;
            }
        }
        Ok(())
    }
}

/// Reads a body from its file, checking its checksum.
pub fn read(file: &File, r: &BodyRef) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; (HEADER as usize) + r.len as usize];
    file.read_exact_at(&mut buf, r.offset - HEADER)?;
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = buf.split_off(HEADER as usize);
    if len != r.len || crc32fast::hash(&body) != crc {
        return Err(std::io::Error::other(format!(
            "body at byte {} of file {} is damaged",
            r.offset, r.file
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_release_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Bodies::open(dir.path()).unwrap();
        let r1 = b.put(b"first body").unwrap();
        let r2 = b.put(b"second").unwrap();
        b.sync().unwrap();
        let f = b.file(&r2).unwrap();
        assert_eq!(read(&f, &r2).unwrap(), b"second");
        b.release(&r1).unwrap();
        drop(b);
        // Reopened: a new current file; the old one lives while r2 does.
        let mut b = Bodies::open(dir.path()).unwrap();
        b.set_live([r2]).unwrap();
        assert_eq!(read(&b.file(&r2).unwrap(), &r2).unwrap(), b"second");
        b.release(&r2).unwrap();
        assert!(b.file(&r2).is_none(), "a file with nothing live is deleted");
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "only the current file is left");
    }
}
