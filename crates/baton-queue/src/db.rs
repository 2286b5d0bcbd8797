//! The narrow storage layer. sled lives behind these few calls and nowhere else.
//!
//! sled writes are not durable until flushed (an abort after 1,000 inserts left none of
//! them): callers that promise durability call [`Db::flush`] and wait for it.
//!
//! A *buffered* tree ([`Db::buffered_tree`]) keeps its recent writes in memory and hands
//! them to sled in one batch at a checkpoint: every two seconds, at [`Db::flush`], or when
//! they pass [`OVERLAY_MAX`] bytes. A key written and removed between two checkpoints
//! never reaches sled at all. That is most of the queue's state: a message relayed at
//! once is enqueued and finished within a second or two. Whatever a crash takes from the
//! buffer is still in the Raft log, which is replayed from the applied index the last
//! checkpoint stored (the state machine writes that index in every batch, so a
//! checkpoint is always the state after one whole batch).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

/// A buffered tree checkpoints at once past this many bytes of keys and values (each
/// key counted with [`SLOT_OVERHEAD`] more for its place in memory). Kept small: sled's
/// memory grows with the size of one batch, and with 32 MiB a node joining a cluster
/// that held 100,000 queued messages peaked at 1.2 GiB, against 0.65 GiB with 4 MiB.
pub const OVERLAY_MAX: usize = 4 * 1024 * 1024;
const SLOT_OVERHEAD: usize = 96;
/// How often buffered trees are checkpointed in the background.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// A storage failure. Always fatal for the operation that met it.
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct DbError(String);

impl From<sled::Error> for DbError {
    fn from(e: sled::Error) -> Self {
        DbError(e.to_string())
    }
}

impl DbError {
    pub fn corrupt(what: impl std::fmt::Display) -> Self {
        DbError(format!("corrupt record: {what}"))
    }
}

impl From<DbError> for std::io::Error {
    fn from(e: DbError) -> Self {
        std::io::Error::other(e.0)
    }
}

pub type Result<T> = std::result::Result<T, DbError>;

/// One database: a directory holding named trees.
#[derive(Clone)]
pub struct Db {
    inner: sled::Db,
    /// sled's data file, for the `fdatasync` its own flush leaves out.
    file: Arc<std::fs::File>,
    overlays: Arc<Mutex<Vec<Arc<Overlay>>>>,
}

impl Db {
    pub fn open(dir: &Path) -> Result<Db> {
        Db::open_with(dir, true)
    }

    /// `checkpointer`: whether buffered trees are checkpointed in the background (tests
    /// that look at the buffer turn it off).
    fn open_with(dir: &Path, checkpointer: bool) -> Result<Db> {
        let inner = sled::Config::new()
            .path(dir)
            // Durability comes from our explicit flushes; the background flusher only
            // bounds how much unflushed state-machine data a crash can cost (replayed
            // from the log anyway).
            .flush_every_ms(Some(1000))
            .cache_capacity(64 * 1024 * 1024)
            .open()?;
        // sled 0.34 keeps everything in `<dir>/db`.
        let path = dir.join("db");
        let file =
            std::fs::File::open(&path).map_err(|e| DbError(format!("{}: {e}", path.display())))?;
        let overlays = Arc::new(Mutex::new(Vec::new()));
        if checkpointer {
            start_checkpointer(Arc::downgrade(&overlays))?;
        }
        Ok(Db {
            inner,
            file: Arc::new(file),
            overlays,
        })
    }

    pub fn tree(&self, name: &str) -> Result<Tree> {
        Ok(Tree {
            base: self.inner.open_tree(name)?,
            overlay: None,
        })
    }

    /// A tree whose writes are buffered in memory between checkpoints (see the module
    /// documentation). Open each buffered tree once.
    pub fn buffered_tree(&self, name: &str) -> Result<Tree> {
        let base = self.inner.open_tree(name)?;
        let overlay = Arc::new(Overlay::new(base.clone()));
        lock(&self.overlays).push(overlay.clone());
        Ok(Tree {
            base,
            overlay: Some(overlay),
        })
    }

    /// Hands every buffered write to sled (see [`Db::flush`] for durability).
    pub fn checkpoint(&self) -> Result<()> {
        checkpoint_all(&self.overlays)
    }

    /// Makes every write done so far durable, buffered ones included.
    ///
    /// sled's flush writes its buffers with `sync_file_range`, which waits for the data
    /// pages but neither commits the file's metadata (its grown size) nor flushes the
    /// device's write cache: a power cut could still lose what it wrote. The
    /// `fdatasync` after it does both.
    pub async fn flush(&self) -> Result<()> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.flush_blocking())
            .await
            .map_err(|e| DbError(format!("flush task: {e}")))?
    }

    /// [`Db::flush`] on the calling thread: checkpoint, sled's flush, then `fdatasync`.
    pub fn flush_blocking(&self) -> Result<()> {
        self.checkpoint()?;
        self.inner.flush()?;
        self.file
            .sync_data()
            .map_err(|e| DbError(format!("fdatasync: {e}")))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Checkpoints every buffered tree, each even if another failed; returns the first error.
fn checkpoint_all(overlays: &Mutex<Vec<Arc<Overlay>>>) -> Result<()> {
    let list = lock(overlays).clone();
    let mut first = Ok(());
    for o in list {
        if let Err(e) = o.checkpoint() {
            first = first.and(Err(e));
        }
    }
    first
}

/// Checkpoints the buffered trees every [`CHECKPOINT_EVERY`] until the database is
/// dropped. sled's own flusher then writes them out within its second.
fn start_checkpointer(overlays: Weak<Mutex<Vec<Arc<Overlay>>>>) -> Result<()> {
    std::thread::Builder::new()
        .name("state-checkpoint".into())
        .spawn(move || {
            loop {
                std::thread::sleep(CHECKPOINT_EVERY);
                let Some(overlays) = overlays.upgrade() else {
                    return;
                };
                if let Err(e) = checkpoint_all(&overlays) {
                    // The writes stay buffered and are tried again next time; the Raft
                    // log still holds them.
                    tracing::error!(error = %e, "state checkpoint failed");
                }
            }
        })
        .map(|_| ())
        .map_err(|e| DbError(format!("starting the checkpoint thread: {e}")))
}

/// A key's buffered state: its value (`None`: removed) and whether a lower layer (the
/// frozen buffer or sled) holds a value for it, so that removing a key no lower layer
/// has simply forgets it.
#[derive(Clone)]
struct Slot {
    value: Option<Vec<u8>>,
    below: bool,
}

type Layer = BTreeMap<Vec<u8>, Slot>;

#[derive(Default)]
struct Layers {
    /// Writes since the last checkpoint began.
    active: Layer,
    active_bytes: usize,
    /// Writes a running checkpoint is handing to sled; still read until it is done.
    frozen: Option<Arc<Layer>>,
}

impl Layers {
    fn lookup(&self, key: &[u8]) -> Option<Option<&Vec<u8>>> {
        if let Some(slot) = self.active.get(key) {
            return Some(slot.value.as_ref());
        }
        self.frozen
            .as_ref()
            .and_then(|f| f.get(key))
            .map(|slot| slot.value.as_ref())
    }
}

/// What a buffered key counts against [`OVERLAY_MAX`].
fn slot_size(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    SLOT_OVERHEAD + key.len() + value.as_ref().map_or(0, |v| v.len())
}

struct Overlay {
    base: sled::Tree,
    layers: RwLock<Layers>,
    /// One checkpoint (or clear) at a time.
    checkpointing: Mutex<()>,
}

impl Overlay {
    fn new(base: sled::Tree) -> Overlay {
        Overlay {
            base,
            layers: RwLock::new(Layers::default()),
            checkpointing: Mutex::new(()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Layers> {
        self.layers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Layers> {
        self.layers.write().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let layers = self.read();
        match layers.lookup(key) {
            Some(v) => Ok(v.cloned()),
            None => Ok(self.base.get(key)?.map(|v| v.to_vec())),
        }
    }

    fn contains(&self, key: &[u8]) -> Result<bool> {
        let layers = self.read();
        match layers.lookup(key) {
            Some(v) => Ok(v.is_some()),
            None => Ok(self.base.contains_key(key)?),
        }
    }

    fn apply(&self, ops: Vec<Buffered>) -> Result<()> {
        let full = {
            let mut layers = self.write();
            for (key, value) in ops {
                let below = match layers.active.get(&key) {
                    Some(slot) => slot.below,
                    None => match layers.frozen.as_ref().and_then(|f| f.get(&key)) {
                        Some(slot) => slot.value.is_some(),
                        None => self.base.contains_key(&key)?,
                    },
                };
                if let Some(old) = layers.active.get(&key) {
                    layers.active_bytes -= slot_size(&key, &old.value);
                }
                if value.is_none() && !below {
                    layers.active.remove(&key);
                } else {
                    layers.active_bytes += slot_size(&key, &value);
                    layers.active.insert(key, Slot { value, below });
                }
            }
            layers.active_bytes > OVERLAY_MAX
        };
        if full {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Hands the buffered writes to sled in one batch.
    fn checkpoint(&self) -> Result<()> {
        let _one = lock(&self.checkpointing);
        let frozen = {
            let mut layers = self.write();
            if layers.active.is_empty() {
                return Ok(());
            }
            let frozen = Arc::new(std::mem::take(&mut layers.active));
            layers.active_bytes = 0;
            layers.frozen = Some(frozen.clone());
            frozen
        };
        let mut batch = sled::Batch::default();
        for (key, slot) in frozen.iter() {
            match &slot.value {
                Some(v) => batch.insert(key.as_slice(), v.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        let result = self.base.apply_batch(batch);
        let mut layers = self.write();
        match result {
            Ok(()) => {
                layers.frozen = None;
                Ok(())
            }
            Err(e) => {
                // Put the writes back under the newer ones, to be tried again.
                if let Some(frozen) = layers.frozen.take() {
                    let frozen = Arc::try_unwrap(frozen).unwrap_or_else(|f| (*f).clone());
                    for (key, slot) in frozen {
                        layers.active.entry(key).or_insert(slot);
                    }
                }
                Err(e.into())
            }
        }
    }

    fn clear(&self) -> Result<()> {
        let _one = lock(&self.checkpointing);
        let mut layers = self.write();
        *layers = Layers::default();
        self.base.clear()?;
        Ok(())
    }

    /// The buffered pairs (removals as `None`) with `from <= key < to`, newest layer
    /// winning, in key order.
    fn buffered_range(&self, from: &[u8], to: Option<&[u8]>) -> Vec<Buffered> {
        use std::ops::Bound;
        let range = (
            Bound::Included(from.to_vec()),
            to.map_or(Bound::Unbounded, |t| Bound::Excluded(t.to_vec())),
        );
        let layers = self.read();
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        if let Some(frozen) = &layers.frozen {
            for (k, slot) in frozen.range(range.clone()) {
                merged.insert(k.clone(), slot.value.clone());
            }
        }
        for (k, slot) in layers.active.range(range) {
            merged.insert(k.clone(), slot.value.clone());
        }
        merged.into_iter().collect()
    }
}

/// What the queue's logic needs of its state: point reads, ordered ranges and atomic
/// batches. The transaction logic (`state_machine::tx`) is written against this, not
/// against sled; [`Tree`] is the implementation.
pub trait Store: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn contains(&self, key: &[u8]) -> Result<bool>;
    /// Pairs with `from <= key < to`, in key order.
    fn range(&self, from: &[u8], to: &[u8]) -> Box<dyn DoubleEndedIterator<Item = Result<Pair>>>;
    /// Writes `batch` atomically: readers see all of it or none.
    fn apply(&self, batch: Batch) -> Result<()>;
}

impl Store for Tree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Tree::get(self, key)
    }
    fn contains(&self, key: &[u8]) -> Result<bool> {
        Tree::contains(self, key)
    }
    fn range(&self, from: &[u8], to: &[u8]) -> Box<dyn DoubleEndedIterator<Item = Result<Pair>>> {
        Box::new(Tree::range(self, from, to))
    }
    fn apply(&self, batch: Batch) -> Result<()> {
        Tree::apply(self, batch)
    }
}

/// A sorted key-value map.
#[derive(Clone)]
pub struct Tree {
    base: sled::Tree,
    overlay: Option<Arc<Overlay>>,
}

/// Writes applied atomically by [`Tree::apply`].
#[derive(Default)]
pub struct Batch(Vec<Buffered>);

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.0
            .push((key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
    }
    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.0.push((key.as_ref().to_vec(), None));
    }
}

pub type Pair = (Vec<u8>, Vec<u8>);

/// A buffered key and its value (`None`: removed).
type Buffered = (Vec<u8>, Option<Vec<u8>>);

type SledIter = Box<dyn DoubleEndedIterator<Item = Result<Pair>> + Send>;

fn sled_pairs(iter: sled::Iter) -> SledIter {
    Box::new(iter.map(|r| {
        r.map(|(k, v)| (k.to_vec(), v.to_vec()))
            .map_err(DbError::from)
    }))
}

/// sled's pairs merged with a buffer's (which win, and whose removals hide sled's).
pub struct Merged {
    base: Side<Result<Pair>, SledIter>,
    buffered: Side<Buffered, std::vec::IntoIter<Buffered>>,
}

/// One side of a merge, with the items taken from either end but not yet given out.
struct Side<T, I> {
    iter: I,
    front: Option<T>,
    back: Option<T>,
}

impl<T, I: DoubleEndedIterator<Item = T>> Side<T, I> {
    fn new(iter: I) -> Self {
        Side {
            iter,
            front: None,
            back: None,
        }
    }
    fn peek_front(&mut self) -> Option<&T> {
        if self.front.is_none() {
            self.front = self.iter.next().or_else(|| self.back.take());
        }
        self.front.as_ref()
    }
    fn peek_back(&mut self) -> Option<&T> {
        if self.back.is_none() {
            self.back = self.iter.next_back().or_else(|| self.front.take());
        }
        self.back.as_ref()
    }
}

impl Merged {
    fn new(base: SledIter, buffered: Vec<Buffered>) -> Merged {
        Merged {
            base: Side::new(base),
            buffered: Side::new(buffered.into_iter()),
        }
    }

    /// The next pair from one end; `back` walks from the end.
    fn step(&mut self, back: bool) -> Option<Result<Pair>> {
        use std::cmp::Ordering;
        loop {
            let (b, o) = if back {
                (self.base.peek_back(), self.buffered.peek_back())
            } else {
                (self.base.peek_front(), self.buffered.peek_front())
            };
            let order = match (b, o) {
                (None, None) => return None,
                (Some(Err(_)), _) => Ordering::Less,
                (Some(Ok((bk, _))), Some((ok, _))) => {
                    let o = bk.cmp(ok);
                    if back { o.reverse() } else { o }
                }
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
            };
            let take_base = |s: &mut Side<Result<Pair>, SledIter>| {
                if back { s.back.take() } else { s.front.take() }
            };
            match order {
                Ordering::Less => return take_base(&mut self.base),
                Ordering::Equal => {
                    // The buffer's newer value (or removal) hides sled's.
                    take_base(&mut self.base);
                }
                Ordering::Greater => {}
            }
            let item = if back {
                self.buffered.back.take()
            } else {
                self.buffered.front.take()
            };
            if let Some((k, Some(v))) = item {
                return Some(Ok((k, v)));
            }
        }
    }
}

impl Iterator for Merged {
    type Item = Result<Pair>;
    fn next(&mut self) -> Option<Self::Item> {
        self.step(false)
    }
}

impl DoubleEndedIterator for Merged {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.step(true)
    }
}

/// The byte string after every string starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Tree {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        match &self.overlay {
            Some(o) => o.get(key.as_ref()),
            None => Ok(self.base.get(key)?.map(|v| v.to_vec())),
        }
    }
    pub fn contains(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        match &self.overlay {
            Some(o) => o.contains(key.as_ref()),
            None => Ok(self.base.contains_key(key)?),
        }
    }
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let mut batch = Batch::default();
        batch.insert(key, value);
        self.apply(batch)
    }
    pub fn apply(&self, batch: Batch) -> Result<()> {
        match &self.overlay {
            Some(o) => o.apply(batch.0),
            None => self.apply_direct(batch),
        }
    }
    /// Writes `batch` to sled at once, past the buffer: for bulk loads (a snapshot being
    /// installed), which would otherwise sit in memory and reach sled as one huge batch.
    /// Whatever is buffered is handed to sled first, so reads stay in order.
    pub fn apply_direct(&self, batch: Batch) -> Result<()> {
        if let Some(o) = &self.overlay {
            o.checkpoint()?;
        }
        let mut b = sled::Batch::default();
        for (key, value) in batch.0 {
            match value {
                Some(v) => b.insert(key, v),
                None => b.remove(key),
            }
        }
        self.base.apply_batch(b)?;
        Ok(())
    }
    pub fn clear(&self) -> Result<()> {
        match &self.overlay {
            Some(o) => o.clear(),
            None => Ok(self.base.clear()?),
        }
    }
    fn merged(&self, iter: sled::Iter, from: &[u8], to: Option<&[u8]>) -> Merged {
        let buffered = match &self.overlay {
            Some(o) => o.buffered_range(from, to),
            None => Vec::new(),
        };
        Merged::new(sled_pairs(iter), buffered)
    }
    /// Pairs with keys starting with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> impl Iterator<Item = Result<Pair>> {
        let prefix = prefix.as_ref();
        let end = prefix_end(prefix);
        self.merged(self.base.scan_prefix(prefix), prefix, end.as_deref())
    }
    /// Pairs with `from <= key < to`, in key order.
    pub fn range(
        &self,
        from: &[u8],
        to: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<Pair>> + use<> {
        self.merged(self.base.range(from..to), from, Some(to))
    }
    /// Every pair, in key order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Pair>> {
        self.merged(self.base.iter(), &[], None)
    }
    pub fn last(&self) -> Result<Option<Pair>> {
        self.merged(self.base.iter(), &[], None)
            .next_back()
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(it: impl Iterator<Item = Result<Pair>>) -> Vec<(String, String)> {
        it.map(|p| {
            let (k, v) = p.unwrap();
            (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap())
        })
        .collect()
    }

    #[test]
    fn buffered_writes_read_through_checkpoints_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Db::open_with(dir.path(), false).unwrap();
            let t = db.buffered_tree("t").unwrap();
            t.insert("a", "1").unwrap();
            t.insert("c", "3").unwrap();
            db.checkpoint().unwrap();
            // Buffered on top of sled: an update, a removal, a new key, and a key
            // written and removed before any checkpoint.
            let mut b = Batch::default();
            b.insert("a", "1b");
            b.remove("c");
            b.insert("b", "2");
            b.insert("gone", "x");
            t.apply(b).unwrap();
            let mut b = Batch::default();
            b.remove("gone");
            t.apply(b).unwrap();
            assert!(o_len(&t) == 3, "the key written and removed is forgotten");
            assert_eq!(t.get("a").unwrap().unwrap(), b"1b");
            assert!(t.get("c").unwrap().is_none());
            assert!(!t.contains("gone").unwrap());
            let all = vec![("a".into(), "1b".into()), ("b".into(), "2".into())];
            assert_eq!(pairs(t.iter()), all);
            assert_eq!(
                pairs(t.range(b"a", b"z").rev()),
                vec![all[1].clone(), all[0].clone()]
            );
            assert_eq!(t.last().unwrap().unwrap().0, b"b");
            assert_eq!(pairs(t.scan_prefix("b")), vec![all[1].clone()]);
            // A walk from both ends meets in the middle once.
            let mut it = t.range(b"a", b"z");
            assert_eq!(it.next().unwrap().unwrap().0, b"a");
            assert_eq!(it.next_back().unwrap().unwrap().0, b"b");
            assert!(it.next().is_none() && it.next_back().is_none());
            futures_flush(&db);
        }
        let db = Db::open(dir.path()).unwrap();
        let t = db.buffered_tree("t").unwrap();
        assert_eq!(
            pairs(t.iter()),
            vec![("a".into(), "1b".into()), ("b".into(), "2".into())]
        );
    }

    #[test]
    fn a_full_buffer_goes_to_sled_and_direct_writes_pass_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_with(dir.path(), false).unwrap();
        let t = db.buffered_tree("t").unwrap();
        let value = vec![7u8; 1024];
        for i in 0..(OVERLAY_MAX / 1024 + 10) {
            t.insert(format!("k{i:08}"), &value).unwrap();
        }
        assert!(
            o_len(&t) < 1000,
            "past OVERLAY_MAX the buffer was checkpointed"
        );
        assert_eq!(t.scan_prefix("k").count(), OVERLAY_MAX / 1024 + 10);
        // A direct write hands the buffer over first, then goes straight to sled.
        t.insert("k00000000", "buffered").unwrap();
        let mut b = Batch::default();
        b.insert("z", "direct");
        t.apply_direct(b).unwrap();
        assert_eq!(o_len(&t), 0);
        assert_eq!(t.get("k00000000").unwrap().unwrap(), b"buffered");
        assert_eq!(t.get("z").unwrap().unwrap(), b"direct");
    }

    fn o_len(t: &Tree) -> usize {
        t.overlay.as_ref().unwrap().read().active.len()
    }

    fn futures_flush(db: &Db) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(db.flush())
            .unwrap();
    }
}
