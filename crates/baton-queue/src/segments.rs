//! The Raft log's entries in append-only segment files.
//!
//! Each segment is `<dir>/<first index, 20 digits>.seg`, a sequence of records
//! `[payload length: u32 LE][crc32 of payload: u32 LE][payload]`, one per entry, indexes
//! consecutive. Appends go to the last segment (a new one after 64 MiB); [`Segments::sync`]
//! makes them durable with `fdatasync` (and an `fsync` of the directory when files were
//! created). Truncating the tail cuts the file; purging the head deletes whole segments
//! once every entry in them is purged. On open, a torn record at the end of the last
//! segment (a crash mid-write) is cut off; damage anywhere else is an error.
//!
//! Why not sled: the log is written once and read back mostly while it is recent, which
//! is what a file is good at; in sled each entry cost about four times its size in
//! writes and a share of sled's page-cache work.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A new segment is started past this size.
const SEGMENT_MAX: u64 = 64 * 1024 * 1024;
pub(crate) const HEADER: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum SegError {
    #[error("log segment {path}: {what}")]
    Io { path: String, what: String },
    #[error("log segment {path}: corrupt at byte {offset}: {what}")]
    Corrupt {
        path: String,
        offset: u64,
        what: String,
    },
}

fn io(path: &Path, e: impl std::fmt::Display) -> SegError {
    SegError::Io {
        path: path.display().to_string(),
        what: e.to_string(),
    }
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
    /// Bytes of valid records.
    len: u64,
}

#[derive(Clone, Copy)]
struct Loc {
    /// First index of the segment.
    segment: u64,
    offset: u64,
    len: u32,
}

/// The entries, by index, as raw payloads.
pub struct Segments {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    index: BTreeMap<u64, Loc>,
    /// Files written since the last sync, and whether the directory changed.
    dirty: Vec<Arc<File>>,
    dir_dirty: bool,
}

impl Segments {
    /// Opens (creating) `dir` and loads every segment's record positions.
    pub fn open(dir: &Path) -> Result<Segments, SegError> {
        let firsts = numbered_files(dir, ".seg").map_err(|e| io(dir, e))?;
        let mut s = Segments {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            index: BTreeMap::new(),
            dirty: Vec::new(),
            dir_dirty: false,
        };
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            s.load(first, i + 1 == count)?;
        }
        Ok(s)
    }

    fn path_of(&self, first: u64) -> PathBuf {
        self.dir.join(format!("{first:020}.seg"))
    }

    /// Reads one segment's records into the index; in the last segment a torn tail is
    /// cut off.
    fn load(&mut self, first: u64, last: bool) -> Result<(), SegError> {
        let path = self.path_of(first);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let size = file.metadata().map_err(|e| io(&path, e))?.len();
        let mut data = Vec::with_capacity(size as usize);
        file.seek(SeekFrom::Start(0)).map_err(|e| io(&path, e))?;
        file.read_to_end(&mut data).map_err(|e| io(&path, e))?;
        let mut offset = 0u64;
        let mut index = first;
        let torn = |offset: u64, what: &str| SegError::Corrupt {
            path: path.display().to_string(),
            offset,
            what: what.to_string(),
        };
        let mut valid = 0u64;
        while offset < size {
            let o = offset as usize;
            let problem = if size - offset < HEADER {
                Some("truncated record header")
            } else {
                let len = u32::from_le_bytes(data[o..o + 4].try_into().unwrap_or_default());
                let crc = u32::from_le_bytes(data[o + 4..o + 8].try_into().unwrap_or_default());
                let end = offset + HEADER + len as u64;
                if end > size {
                    Some("truncated record")
                } else if crc32fast::hash(&data[o + 8..end as usize]) != crc {
                    Some("checksum mismatch")
                } else {
                    if self.index.contains_key(&index) {
                        return Err(torn(offset, "index repeats an earlier segment's"));
                    }
                    self.index.insert(
                        index,
                        Loc {
                            segment: first,
                            offset,
                            len,
                        },
                    );
                    index += 1;
                    offset = end;
                    valid = end;
                    None
                }
            };
            if let Some(what) = problem {
                if !last {
                    return Err(torn(offset, what));
                }
                tracing::warn!(segment = %path.display(), offset, what, "cutting a torn record off the log's tail");
                file.set_len(valid).map_err(|e| io(&path, e))?;
                file.sync_all().map_err(|e| io(&path, e))?;
                break;
            }
        }
        self.segments.insert(
            first,
            Segment {
                path,
                file: Arc::new(file),
                len: valid,
            },
        );
        Ok(())
    }

    pub fn first_index(&self) -> Option<u64> {
        self.index.keys().next().copied()
    }

    pub fn last_index(&self) -> Option<u64> {
        self.index.keys().next_back().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Appends the payload of entry `index`, which must come after the last one. It
    /// usually follows it; after a snapshot was installed it may jump ahead (the entries
    /// before are purged later): then it starts a new segment, named by its index.
    pub fn append(&mut self, index: u64, payload: &[u8]) -> Result<(), SegError> {
        let gap = match self.last_index() {
            Some(last) if index <= last => {
                return Err(SegError::Io {
                    path: self.dir.display().to_string(),
                    what: format!("append of entry {index} after {last}: truncate first"),
                });
            }
            Some(last) => index != last + 1,
            None => false,
        };
        // A segment's name is its first entry's index: an empty last segment named
        // otherwise (left by a crash, a truncation or a purge) is replaced.
        if let Some((&first, seg)) = self.segments.iter().next_back()
            && seg.len == 0
            && first != index
            && let Some(seg) = self.segments.remove(&first)
        {
            self.dirty.retain(|f| !Arc::ptr_eq(f, &seg.file));
            std::fs::remove_file(&seg.path).map_err(|e| io(&seg.path, e))?;
            self.dir_dirty = true;
        }
        let need_new = match self.segments.values().next_back() {
            None => true,
            Some(s) => gap || s.len >= SEGMENT_MAX,
        };
        if need_new {
            let path = self.path_of(index);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            self.segments.insert(
                index,
                Segment {
                    path,
                    file: Arc::new(file),
                    len: 0,
                },
            );
            self.dir_dirty = true;
        }
        let (&first, seg) = self
            .segments
            .iter_mut()
            .next_back()
            .ok_or_else(|| io(&self.dir, "no segment"))?;
        seg.file
            .write_all_at(&record_header(payload), seg.len)
            .and_then(|_| seg.file.write_all_at(payload, seg.len + HEADER))
            .map_err(|e| io(&seg.path, e))?;
        self.index.insert(
            index,
            Loc {
                segment: first,
                offset: seg.len,
                len: payload.len() as u32,
            },
        );
        seg.len += HEADER + payload.len() as u64;
        if !self.dirty.iter().any(|f| Arc::ptr_eq(f, &seg.file)) {
            self.dirty.push(seg.file.clone());
        }
        Ok(())
    }

    /// What [`Segments::sync`] must make durable: taken by the caller, synced outside
    /// any lock.
    pub fn take_dirty(&mut self) -> Pending {
        Pending {
            files: std::mem::take(&mut self.dirty),
            dir: std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone()),
        }
    }

    /// Where entry `index` is: a file handle and the payload's position.
    pub fn locate(&self, index: u64) -> Option<(Arc<File>, u64, u32)> {
        let loc = self.index.get(&index)?;
        let seg = self.segments.get(&loc.segment)?;
        Some((seg.file.clone(), loc.offset + HEADER, loc.len))
    }

    /// Removes entries with index >= `since`, durably.
    pub fn truncate(&mut self, since: u64) -> Result<(), SegError> {
        let Some(loc) = self.index.get(&since).copied() else {
            return Ok(());
        };
        let later: Vec<u64> = self.segments.range(since..).map(|(k, _)| *k).collect();
        for first in later {
            if let Some(seg) = self.segments.remove(&first) {
                std::fs::remove_file(&seg.path).map_err(|e| io(&seg.path, e))?;
            }
        }
        if let Some(seg) = self.segments.get_mut(&loc.segment) {
            seg.file.set_len(loc.offset).map_err(|e| io(&seg.path, e))?;
            seg.file.sync_all().map_err(|e| io(&seg.path, e))?;
            seg.len = loc.offset;
        }
        self.index.split_off(&since);
        self.dirty.clear();
        sync_dir(&self.dir)
    }

    /// Forgets entries with index <= `upto` and deletes the segments that held only
    /// those.
    pub fn purge(&mut self, upto: u64) -> Result<(), SegError> {
        self.index = self.index.split_off(&(upto + 1));
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut removed = false;
        for (i, first) in firsts.iter().enumerate() {
            // A segment's entries end where the next segment begins (the last segment's
            // at the log's end).
            let ends_before = match firsts.get(i + 1) {
                Some(next) => next - 1 <= upto,
                None => self.index.is_empty(),
            };
            if ends_before && let Some(seg) = self.segments.remove(first) {
                self.dirty.retain(|f| !Arc::ptr_eq(f, &seg.file));
                std::fs::remove_file(&seg.path).map_err(|e| io(&seg.path, e))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Files to `fdatasync` (and a directory to `fsync`) for appends done so far.
#[derive(Default)]
pub struct Pending {
    files: Vec<Arc<File>>,
    dir: Option<PathBuf>,
}

impl Pending {
    pub fn merge(&mut self, other: Pending) {
        for f in other.files {
            if !self.files.iter().any(|g| Arc::ptr_eq(&f, g)) {
                self.files.push(f);
            }
        }
        if other.dir.is_some() {
            self.dir = other.dir;
        }
    }

    /// Blocking: makes the appends durable.
    pub fn sync(&self) -> std::io::Result<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        if let Some(dir) = &self.dir {
            fsync_dir(dir)?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), SegError> {
    fsync_dir(dir).map_err(|e| io(dir, e))
}

/// Makes file creations and deletions in `dir` durable.
pub(crate) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The numbers `n` of the files `<n, 20 digits><suffix>` in `dir` (created if missing),
/// in order. Segments and body files are named so.
pub(crate) fn numbered_files(dir: &Path, suffix: &str) -> std::io::Result<Vec<u64>> {
    std::fs::create_dir_all(dir)?;
    let mut numbers = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_suffix(suffix)
            .and_then(|n| n.parse::<u64>().ok())
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// The header of a record in a segment or body file: payload length and CRC-32, LE.
pub(crate) fn record_header(payload: &[u8]) -> [u8; HEADER as usize] {
    let mut header = [0u8; HEADER as usize];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    header
}

/// Reads a payload located by [`Segments::locate`] (blocking, from the page cache mostly).
pub fn read_at(file: &File, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    match file.read_exact_at(&mut buf, offset) {
        Ok(()) => Ok(buf),
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(std::io::Error::other(format!(
            "log entry at byte {offset} is cut short"
        ))),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_reopen_truncate_purge_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path()).unwrap();
        for i in 1..=10u64 {
            s.append(i, format!("entry {i}").as_bytes()).unwrap();
        }
        s.take_dirty().sync().unwrap();
        drop(s);
        let mut s = Segments::open(dir.path()).unwrap();
        assert_eq!((s.first_index(), s.last_index()), (Some(1), Some(10)));
        let (f, o, l) = s.locate(7).unwrap();
        assert_eq!(read_at(&f, o, l).unwrap(), b"entry 7");
        s.truncate(8).unwrap();
        assert_eq!(s.last_index(), Some(7));
        assert!(
            s.append(5, b"overlap").is_err(),
            "an overlap needs a truncate first"
        );
        s.append(8, b"new 8").unwrap();
        s.purge(3).unwrap();
        assert_eq!(s.first_index(), Some(4));
        s.take_dirty().sync().unwrap();
        // A torn record at the tail is cut off on open.
        let seg = dir.path().join(format!("{:020}.seg", 1));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2]);
        std::fs::write(&seg, bytes).unwrap();
        let mut s = Segments::open(dir.path()).unwrap();
        assert_eq!(s.last_index(), Some(8));
        let (f, o, l) = s.locate(8).unwrap();
        assert_eq!(read_at(&f, o, l).unwrap(), b"new 8");
        // After a snapshot the log may jump ahead: a new segment starts there.
        s.append(20, b"after a snapshot").unwrap();
        s.append(21, b"next").unwrap();
        s.take_dirty().sync().unwrap();
        drop(s);
        let mut s = Segments::open(dir.path()).unwrap();
        assert_eq!(s.last_index(), Some(21));
        let (f, o, l) = s.locate(20).unwrap();
        assert_eq!(read_at(&f, o, l).unwrap(), b"after a snapshot");
        assert!(s.locate(15).is_none());
        s.purge(19).unwrap();
        assert_eq!(s.first_index(), Some(20));
    }
}
