//! The narrow storage layer. sled lives behind these few calls and nowhere else.
//!
//! sled writes are not durable until flushed (STACK.md): callers that promise durability
//! call [`Db::flush`] and wait for it.

use std::path::Path;
use std::sync::Arc;

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
}

impl Db {
    pub fn open(dir: &Path) -> Result<Db> {
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
        Ok(Db {
            inner,
            file: Arc::new(file),
        })
    }

    pub fn tree(&self, name: &str) -> Result<Tree> {
        Ok(Tree(self.inner.open_tree(name)?))
    }

    /// Makes every write done so far durable.
    ///
    /// sled's flush writes its buffers with `sync_file_range`, which waits for the data
    /// pages but neither commits the file's metadata (its grown size) nor flushes the
    /// device's write cache: a power cut could still lose what it wrote. The
    /// `fdatasync` after it does both.
    pub async fn flush(&self) -> Result<()> {
        self.inner.flush_async().await?;
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| DbError(format!("fdatasync task: {e}")))?
            .map_err(|e| DbError(format!("fdatasync: {e}")))?;
        Ok(())
    }
}

/// A sorted key-value map.
#[derive(Clone)]
pub struct Tree(sled::Tree);

/// Writes applied atomically by [`Tree::apply`].
#[derive(Default)]
pub struct Batch(sled::Batch);

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.0.insert(key.as_ref(), value.as_ref());
    }
    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.0.remove(key.as_ref());
    }
}

pub type Pair = (Vec<u8>, Vec<u8>);

impl Tree {
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key)?.map(|v| v.to_vec()))
    }
    pub fn contains(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.0.contains_key(key)?)
    }
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.0.insert(key.as_ref(), value.as_ref())?;
        Ok(())
    }
    pub fn apply(&self, batch: Batch) -> Result<()> {
        self.0.apply_batch(batch.0)?;
        Ok(())
    }
    pub fn clear(&self) -> Result<()> {
        self.0.clear()?;
        Ok(())
    }
    /// Pairs with keys starting with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> impl Iterator<Item = Result<Pair>> {
        self.0.scan_prefix(prefix).map(|r| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(DbError::from)
        })
    }
    /// Pairs with `from <= key < to`, in key order.
    pub fn range(
        &self,
        from: &[u8],
        to: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<Pair>> + use<> {
        self.0.range(from..to).map(|r| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(DbError::from)
        })
    }
    /// Every pair, in key order.
    pub fn iter(&self) -> impl Iterator<Item = Result<Pair>> {
        self.0.iter().map(|r| {
            r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(DbError::from)
        })
    }
    pub fn last(&self) -> Result<Option<Pair>> {
        Ok(self.0.last()?.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }
}
