//! The queue state machine: applies [`Request`]s to the `state` tree.
//!
//! Layout of the `state` tree (one tree, so each entry is one atomic batch together with
//! the applied log id):
//!
//! | key | value |
//! |---|---|
//! | `m/<id>` | [`MessageMeta`] |
//! | `p/<id>` | where the body is: a [`BodyRef`] into the body files ([`crate::bodies`]) |
//! | `b/<id>` | body bytes (state written before the body files, and snapshot records) |
//! | `d/<domain>\0<id>` | [`DeliveryRecord`] |
//! | `t/<id>` | tombstone time (unix ms, BE): a finished id, so a retried enqueue is a no-op |
//! | `T/<time BE><id>` | the same tombstone, ordered by time for expiry |
//! | `s/applied`, `s/membership` | openraft's applied log id and membership |
//! | `s/ownership` | the delivery [`Ownership`] table |
//! | `s/events_next` | the position the next event gets (u64 BE) |
//! | `s/webhook` | the last event position the webhook delivered (u64 BE) |
//! | `e/<position BE>` | the [`Event`]s one entry added, from that position on (one record per entry, not per event: sled's memory grows with its record count) |
//! | `x/<domain>` | a suspended domain: [`Listing`] |
//! | `u/<address>` | a suppressed recipient (lower-cased): [`Listing`] |

use crate::bodies::{self, Bodies, BodyRef};
use crate::db::{Batch, Db, DbError, Tree};
use crate::index::Shared;
use crate::ownership::Ownership;
use crate::snapshot::{self, SnapshotReader, SnapshotWriter, make_current};
use crate::types::{
    DeliveryRecord, Entry, Event, EventKind, Listing, LogId, MessageMeta, NewMessage, NodeId,
    Outcome, Remote, Request, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig, domain_of,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, StorageIOError};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// How often apply looks for a body file worth compacting.
const COMPACT_CHECK: std::time::Duration = std::time::Duration::from_secs(10);
/// Bodies moved per apply while a file is compacted (about 1 MiB of 4 KiB mail).
const COMPACT_STEP: usize = 256;

/// A body file being emptied: the bodies still to move out of it.
struct Compaction {
    file: u64,
    todo: Vec<(String, BodyRef)>,
}

const APPLIED: &[u8] = b"s/applied";
const MEMBERSHIP: &[u8] = b"s/membership";
const OWNERSHIP: &[u8] = b"s/ownership";
const EVENTS_NEXT: &[u8] = b"s/events_next";
const WEBHOOK: &[u8] = b"s/webhook";
/// At most this many event records are trimmed by one entry (the leader writes more).
const TRIM_MAX: usize = 10_000;
/// How long a finished message id is remembered for idempotent enqueue.
pub const TOMBSTONE_MS: u64 = 24 * 3600 * 1000;

fn msg_key(id: &str) -> Vec<u8> {
    [b"m/", id.as_bytes()].concat()
}
fn body_key(id: &str) -> Vec<u8> {
    [b"b/", id.as_bytes()].concat()
}
fn body_ref_key(id: &str) -> Vec<u8> {
    [b"p/", id.as_bytes()].concat()
}
fn delivery_key(domain: &str, id: &str) -> Vec<u8> {
    [b"d/", domain.as_bytes(), b"\0", id.as_bytes()].concat()
}
fn tomb_key(id: &str) -> Vec<u8> {
    [b"t/", id.as_bytes()].concat()
}
fn tomb_time_key(time: u64, id: &str) -> Vec<u8> {
    [&b"T/"[..], &time.to_be_bytes(), id.as_bytes()].concat()
}
fn event_key(position: u64) -> Vec<u8> {
    [&b"e/"[..], &position.to_be_bytes()].concat()
}
fn suspend_key(domain: &str) -> Vec<u8> {
    [b"x/", domain.as_bytes()].concat()
}
fn suppress_key(address: &str) -> Vec<u8> {
    [b"u/", address.to_ascii_lowercase().as_bytes()].concat()
}
fn u64_of(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, DbError> {
    bincode::deserialize(bytes).map_err(|e| DbError::corrupt(format!("{what}: {e}")))
}
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs into a Vec cannot fail.
    bincode::serialize(value).unwrap_or_default()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::write_state_machine(&e).into()
}
fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::read_state_machine(&e).into()
}

/// Read access to the queue's state, for delivery and operators. Cheap to clone.
#[derive(Clone)]
pub struct QueueReader {
    state: Tree,
    bodies: Arc<std::sync::Mutex<Bodies>>,
    pub shared: Arc<Shared>,
}

fn lock(bodies: &std::sync::Mutex<Bodies>) -> std::sync::MutexGuard<'_, Bodies> {
    // Every method leaves `Bodies` consistent between calls.
    bodies.lock().unwrap_or_else(|p| p.into_inner())
}

fn body_err(e: impl std::fmt::Display) -> DbError {
    DbError::corrupt(e)
}

impl QueueReader {
    pub fn message(&self, id: &str) -> Result<Option<MessageMeta>, DbError> {
        match self.state.get(msg_key(id))? {
            Some(v) => Ok(Some(decode(&v, "message")?)),
            None => Ok(None),
        }
    }
    pub fn body(&self, id: &str) -> Result<Option<Vec<u8>>, DbError> {
        match self.body_ref(id)? {
            Some(r) => self.body_at(id, r),
            None => self.state.get(body_key(id)),
        }
    }

    /// Where the body of `id` is (none for a body still in the state, `b/<id>`).
    #[doc(hidden)]
    pub fn body_ref(&self, id: &str) -> Result<Option<BodyRef>, DbError> {
        match self.state.get(body_ref_key(id))? {
            Some(v) => Ok(Some(decode(&v, "body reference")?)),
            None => Ok(None),
        }
    }

    /// The body of `id`, from `r` as read a moment ago: by now the message may have
    /// finished, or compaction may have moved its body and deleted `r`'s file.
    #[doc(hidden)]
    pub fn body_at(&self, id: &str, mut r: BodyRef) -> Result<Option<Vec<u8>>, DbError> {
        // A statement of its own, so the lock is let go before the `None` arm takes it.
        let found = lock(&self.bodies).file(&r);
        let file = match found {
            Some(file) => file,
            None => {
                // Compaction writes the new reference before the old file goes, and
                // files go under this lock: read the reference again, under it.
                let bodies = lock(&self.bodies);
                let Some(now) = self.body_ref(id)? else {
                    return Ok(None);
                };
                r = now;
                match bodies.file(&r) {
                    Some(file) => file,
                    None => return Ok(None),
                }
            }
        };
        bodies::read(&file, &r)
            .map(Some)
            .map_err(|e| body_err(format!("message {id}: {e}")))
    }
    pub fn delivery(&self, domain: &str, id: &str) -> Result<Option<DeliveryRecord>, DbError> {
        match self.state.get(delivery_key(domain, id))? {
            Some(v) => Ok(Some(decode(&v, "delivery")?)),
            None => Ok(None),
        }
    }
    /// Whether `id` is queued or was finished recently.
    pub fn knows(&self, id: &str) -> Result<bool, DbError> {
        Ok(self.state.contains(msg_key(id))? || self.state.contains(tomb_key(id))?)
    }

    /// Whether `id` finished (delivered, failed or deleted) within the tombstone window.
    pub fn finished(&self, id: &str) -> Result<bool, DbError> {
        self.state.contains(tomb_key(id))
    }

    /// The open delivery records of a domain, in id order, from after `after_id`.
    pub fn deliveries(
        &self,
        domain: &str,
        after_id: &str,
    ) -> impl Iterator<Item = Result<(String, DeliveryRecord), DbError>> + use<> {
        let prefix = [b"d/", domain.as_bytes(), b"\0"].concat();
        let from = [&prefix[..], after_id.as_bytes(), b"\0"].concat();
        let mut to = prefix.clone();
        // The byte after the separator ends the domain's range.
        if let Some(last) = to.last_mut() {
            *last = 1;
        }
        let start = prefix.len();
        self.state.range(&from, &to).map(move |pair| {
            let (key, value) = pair?;
            let id = String::from_utf8_lossy(&key[start..]).into_owned();
            Ok((id, decode(&value, "delivery")?))
        })
    }

    /// Events at positions greater than `after`, oldest first.
    pub fn events_after(
        &self,
        after: u64,
    ) -> impl Iterator<Item = Result<(u64, Event), DbError>> + use<> {
        // Start at the record holding position after + 1: the last one starting at or
        // before it.
        let want = after.saturating_add(1);
        let start = match self
            .state
            .range(b"e/", &event_key(want.saturating_add(1)))
            .next_back()
        {
            Some(Ok((key, _))) => key,
            _ => event_key(want),
        };
        self.state.range(&start, b"e0").flat_map(move |pair| {
            let chunk: Result<Vec<(u64, Event)>, DbError> = pair.and_then(|(key, value)| {
                let first = u64_of(&key[2..]);
                let events: Vec<Event> = decode(&value, "events")?;
                Ok((first..).zip(events).filter(|(p, _)| *p > after).collect())
            });
            match chunk {
                Ok(events) => events.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            }
        })
    }

    /// The position of the oldest retained event, and the next position to be used.
    pub fn event_bounds(&self) -> Result<(u64, u64), DbError> {
        let next = self.state.get(EVENTS_NEXT)?.map_or(1, |v| u64_of(&v));
        let first = match self.state.range(b"e/", b"e0").next() {
            Some(pair) => u64_of(&pair?.0[2..]),
            None => next,
        };
        Ok((first, next))
    }

    /// The last event position the webhook delivered.
    pub fn webhook_position(&self) -> Result<u64, DbError> {
        Ok(self.state.get(WEBHOOK)?.map_or(0, |v| u64_of(&v)))
    }

    /// Suspended domains.
    pub fn suspended(&self) -> Result<Vec<(String, Listing)>, DbError> {
        self.listings(b"x/")
    }

    /// The suppression list.
    pub fn suppressions(&self) -> Result<Vec<(String, Listing)>, DbError> {
        self.listings(b"u/")
    }

    pub fn is_suppressed(&self, address: &str) -> Result<bool, DbError> {
        self.state.contains(suppress_key(address))
    }

    fn listings(&self, prefix: &[u8]) -> Result<Vec<(String, Listing)>, DbError> {
        self.state
            .scan_prefix(prefix)
            .map(|pair| {
                let (key, value) = pair?;
                let name = String::from_utf8_lossy(&key[2..]).into_owned();
                Ok((name, decode(&value, "listing")?))
            })
            .collect()
    }
}

/// The state machine given to openraft.
pub struct StateMachine {
    db: Db,
    state: Tree,
    bodies: Arc<std::sync::Mutex<Bodies>>,
    shared: Arc<Shared>,
    /// Where snapshot files live.
    snapshot_dir: PathBuf,
    /// The `.tmp` file a snapshot from the leader is being received into.
    receiving: Option<PathBuf>,
    /// The ownership table and the voters, as stored (kept here to avoid decoding them
    /// on every entry).
    ownership: Ownership,
    voters: BTreeSet<NodeId>,
    /// The position the next event gets (kept here, stored at `s/events_next`).
    events_next: u64,
    /// The body file being compacted, if any (see [`StateMachine::compact_step`]).
    compaction: Option<Compaction>,
    next_compaction_check: std::time::Instant,
}

impl StateMachine {
    /// Opens the state in `db`, with snapshot files in `snapshot_dir` and message bodies
    /// in `bodies/` beside it, rebuilding the scheduling index from it.
    pub fn open(db: &Db, snapshot_dir: PathBuf) -> Result<StateMachine, DbError> {
        let bodies_dir = snapshot_dir
            .parent()
            .map_or_else(|| PathBuf::from("bodies"), |p| p.join("bodies"));
        std::fs::create_dir_all(&snapshot_dir)
            .map_err(|e| DbError::corrupt(format!("{}: {e}", snapshot_dir.display())))?;
        // Leftovers of a snapshot being built or received when the process stopped.
        if let Ok(entries) = std::fs::read_dir(&snapshot_dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let mut sm = StateMachine {
            db: db.clone(),
            state: db.buffered_tree("state")?,
            bodies: Arc::new(std::sync::Mutex::new(
                Bodies::open(&bodies_dir).map_err(body_err)?,
            )),
            shared: Arc::new(Shared::new()),
            snapshot_dir,
            receiving: None,
            ownership: Ownership::default(),
            voters: BTreeSet::new(),
            events_next: 1,
            compaction: None,
            next_compaction_check: std::time::Instant::now() + COMPACT_CHECK,
        };
        if sm.snapshot_dir.join(snapshot::INSTALLING).exists() {
            tracing::warn!("the last snapshot install was cut short; installing it again");
            sm.load_current()?;
        }
        sm.rebuild_index()?;
        // Readers wait on `changed` for an index to be applied: start from what is.
        if let (Some(applied), _) = sm.applied_and_membership()? {
            sm.shared.changed.send_replace(applied.index);
        }
        Ok(sm)
    }

    pub fn reader(&self) -> QueueReader {
        QueueReader {
            state: self.state.clone(),
            bodies: self.bodies.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Replaces the state with the current snapshot's. A mark on disk covers the time the
    /// state is half old, half new: if the process stops then, [`StateMachine::open`]
    /// calls this again, so a node never starts from a partly installed state.
    fn load_current(&mut self) -> Result<(), DbError> {
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
            if let Some(id) = k.strip_prefix(b"b/") {
                let r = lock(&self.bodies).put(&v).map_err(body_err)?;
                batch.insert([b"p/", id].concat(), encode(&r));
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

    /// One step of body-file compaction, run after an apply (so never beside one or
    /// beside a snapshot's record phase): every [`COMPACT_CHECK`] look for a mostly
    /// empty body file ([`Bodies::sparsest`]); while there is one, copy up to
    /// [`COMPACT_STEP`] of its live bodies to the current file, sync them, and point
    /// their references there. The emptied file is deleted only after a flush has made
    /// the new references durable: until then it still holds the copies a crash would
    /// fall back to. References are node-local (each node writes its own body files), so
    /// moving them needs no log entry. `force` skips the wait (tests). Returns whether
    /// a file is being compacted.
    async fn compact_step(&mut self, force: bool) -> Result<bool, DbError> {
        if self.compaction.is_none() {
            let now = std::time::Instant::now();
            if !force && now < self.next_compaction_check {
                return Ok(false);
            }
            self.next_compaction_check = now + COMPACT_CHECK;
            let Some(file) = lock(&self.bodies).sparsest() else {
                return Ok(false);
            };
            let mut todo = Vec::new();
            for pair in self.state.scan_prefix(b"p/") {
                let (key, value) = pair?;
                let r: BodyRef = decode(&value, "body reference")?;
                if r.file == file {
                    todo.push((String::from_utf8_lossy(&key[2..]).into_owned(), r));
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

    fn rebuild_index(&mut self) -> Result<(), DbError> {
        self.ownership = match self.state.get(OWNERSHIP)? {
            Some(v) => decode(&v, "ownership")?,
            None => Ownership::default(),
        };
        let (_, membership) = self.applied_and_membership()?;
        self.voters = membership.membership().voter_ids().collect();
        self.shared
            .ownership
            .send_replace(Arc::new(self.ownership.clone()));
        let mut records = Vec::new();
        for pair in self.state.scan_prefix(b"d/") {
            let (key, value) = pair?;
            let rest = &key[2..];
            let Some(split) = rest.iter().position(|&b| b == 0) else {
                return Err(DbError::corrupt("delivery key without separator"));
            };
            let domain = String::from_utf8_lossy(&rest[..split]).into_owned();
            let id = String::from_utf8_lossy(&rest[split + 1..]).into_owned();
            let record: DeliveryRecord = decode(&value, "delivery")?;
            records.push((domain, id, record.next_attempt_ms));
        }
        let messages = self.state.scan_prefix(b"m/").count();
        let mut refs = Vec::new();
        for pair in self.state.scan_prefix(b"p/") {
            let (_, value) = pair?;
            refs.push(decode::<BodyRef>(&value, "body reference")?);
        }
        lock(&self.bodies).set_live(refs).map_err(body_err)?;
        self.events_next = self.state.get(EVENTS_NEXT)?.map_or(1, |v| u64_of(&v));
        let mut suspended = HashSet::new();
        for pair in self.state.scan_prefix(b"x/") {
            let (key, _) = pair?;
            suspended.insert(String::from_utf8_lossy(&key[2..]).into_owned());
        }
        self.shared.with(|index| {
            index.clear();
            for (domain, id, due) in &records {
                index.upsert(domain, id, *due);
            }
            index.add_messages(messages as isize);
            index.set_suspended(suspended);
        });
        Ok(())
    }

    /// Streams the whole state but the bodies into a new `.tmp` snapshot file, and
    /// pins the body files: the bodies are copied by [`PendingSnapshot::finish`] while
    /// entries are applied again (a body file is append-only, and an open handle keeps
    /// it readable even once it is deleted). Apply is paused only for the records.
    fn begin_snapshot(&self) -> Result<PendingSnapshot, DbError> {
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
            if let Some(id) = k.strip_prefix(b"p/") {
                // Bodies travel in the snapshot by value, as `b/<id>`.
                let r: BodyRef = decode(&v, "body reference")?;
                let file = lock(&self.bodies)
                    .file(&r)
                    .ok_or_else(|| DbError::corrupt(format!("body file {} missing", r.file)))?;
                pinned.push(([b"b/", id].concat(), file, r));
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

    fn applied_and_membership(&self) -> Result<(Option<LogId>, StoredMembership), DbError> {
        let applied = match self.state.get(APPLIED)? {
            Some(v) => decode(&v, "applied")?,
            None => None,
        };
        let membership = match self.state.get(MEMBERSHIP)? {
            Some(v) => decode(&v, "membership")?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }

    /// Puts the body of every message `entries` may enqueue into the body files and
    /// syncs them once; returns where each is, by message id.
    fn prepare_bodies(&mut self, entries: &[Entry]) -> Result<HashMap<String, BodyRef>, DbError> {
        let mut prepared = HashMap::new();
        let mut bodies = lock(&self.bodies);
        let mut put = |m: &NewMessage| -> Result<(), DbError> {
            if !prepared.contains_key(&m.id) {
                let r = bodies.put(&m.body).map_err(body_err)?;
                prepared.insert(m.id.clone(), r);
            }
            Ok(())
        };
        for entry in entries {
            match &entry.payload {
                EntryPayload::Normal(Request::Enqueue { messages }) => {
                    for m in messages {
                        put(m)?;
                    }
                }
                EntryPayload::Normal(Request::Outcomes { results, .. }) => {
                    for dsn in results.iter().filter_map(|o| o.dsn.as_ref()) {
                        put(dsn)?;
                    }
                }
                EntryPayload::Normal(Request::Delete { dsn: Some(dsn), .. }) => put(dsn)?,
                _ => {}
            }
        }
        if !prepared.is_empty() {
            bodies.sync().map_err(body_err)?;
        }
        Ok(prepared)
    }

    fn apply_entry(
        &mut self,
        entry: &Entry,
        prepared: &mut HashMap<String, BodyRef>,
    ) -> Result<Response, DbError> {
        let bodies = self.bodies.clone();
        let mut bodies = lock(&bodies);
        let mut tx = Tx::new(&self.state, &mut bodies, prepared);
        let mut response = Response::default();
        let mut owner_change: Option<Ownership> = None;
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                tx.batch.insert(MEMBERSHIP, encode(&stored));
                self.voters = m.voter_ids().collect();
                let members: BTreeSet<NodeId> = m.nodes().map(|(id, _)| *id).collect();
                owner_change = Some(self.ownership.clone());
                if let Some(o) = owner_change.as_mut() {
                    o.members_changed(&members);
                }
            }
            EntryPayload::Normal(Request::Enqueue { messages }) => {
                for message in messages {
                    if tx.enqueue(message, true)? {
                        response.added += 1;
                    } else {
                        response.duplicates += 1;
                    }
                }
            }
            EntryPayload::Normal(Request::Outcomes { now_ms, results }) => {
                for outcome in results {
                    tx.outcome(outcome, *now_ms)?;
                }
                tx.expire_tombstones(*now_ms)?;
            }
            EntryPayload::Normal(Request::Retry { id }) => {
                response.changed = tx.retry(id)?;
            }
            EntryPayload::Normal(Request::Delete { id, now_ms, dsn }) => {
                response.changed = tx.delete(id, *now_ms, dsn.as_ref())?;
            }
            EntryPayload::Normal(Request::Suspend {
                domain,
                reason,
                now_ms,
            }) => {
                let domain = domain.to_ascii_lowercase();
                response.changed = !self.state.contains(suspend_key(&domain))?;
                let listing = Listing {
                    reason: reason.clone(),
                    since_ms: *now_ms,
                };
                tx.batch.insert(suspend_key(&domain), encode(&listing));
                tx.suspend = Some((domain, true));
            }
            EntryPayload::Normal(Request::Resume { domain }) => {
                let domain = domain.to_ascii_lowercase();
                response.changed = self.state.contains(suspend_key(&domain))?;
                tx.batch.remove(suspend_key(&domain));
                tx.suspend = Some((domain, false));
            }
            EntryPayload::Normal(Request::Suppress {
                address,
                reason,
                now_ms,
            }) => {
                response.changed = !self.state.contains(suppress_key(address))?;
                let listing = Listing {
                    reason: reason.clone(),
                    since_ms: *now_ms,
                };
                tx.batch.insert(suppress_key(address), encode(&listing));
            }
            EntryPayload::Normal(Request::Unsuppress { address }) => {
                response.changed = self.state.contains(suppress_key(address))?;
                tx.batch.remove(suppress_key(address));
            }
            EntryPayload::Normal(Request::TrimEvents { below }) => {
                // Whole records only: one whose last event is below `below`.
                for pair in self.state.range(b"e/", &event_key(*below)).take(TRIM_MAX) {
                    let (key, value) = pair?;
                    let events: Vec<Event> = decode(&value, "events")?;
                    if u64_of(&key[2..]) + events.len() as u64 > *below {
                        break;
                    }
                    tx.batch.remove(key);
                    response.changed = true;
                }
            }
            EntryPayload::Normal(Request::WebhookSent { position }) => {
                tx.batch.insert(WEBHOOK, position.to_be_bytes());
                response.changed = true;
            }
            EntryPayload::Normal(request) => {
                let mut o = self.ownership.clone();
                match *request {
                    Request::LeaseRenew { node } => {
                        o.renew(node, entry.log_id.index, self.voters.contains(&node));
                        self.shared
                            .renewals
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(node, (entry.log_id.index, std::time::Instant::now()));
                    }
                    Request::Expire { node, renewal } => o.expire(node, renewal),
                    Request::Release { node } => o.release(node),
                    Request::Retire { node } => o.retire(node),
                    Request::AssignAck { node, epoch } => o.ack(node, epoch),
                    // Handled above.
                    _ => {}
                }
                owner_change = Some(o);
            }
        }
        if let Some(o) = &owner_change
            && *o != self.ownership
        {
            tx.batch.insert(OWNERSHIP, encode(o));
        } else {
            owner_change = None;
        }
        response.index = entry.log_id.index;
        tx.batch.insert(APPLIED, encode(&Some(entry.log_id)));
        // Bodies are durable before the references to them are written.
        if tx.put_bodies {
            tx.bodies.sync().map_err(body_err)?;
        }
        let Tx {
            mut batch,
            index_ops,
            message_delta,
            events,
            suspend,
            released,
            bodies,
            ..
        } = tx;
        let mut next = self.events_next;
        if !events.is_empty() {
            batch.insert(event_key(next), encode(&events));
            next += events.len() as u64;
            batch.insert(EVENTS_NEXT, next.to_be_bytes());
        }
        self.state.apply(batch)?;
        for r in &released {
            bodies.release(r).map_err(body_err)?;
        }
        self.events_next = next;
        self.shared.with(|index| {
            for op in index_ops {
                match op {
                    IndexOp::Upsert(domain, id, due) => index.upsert(&domain, &id, due),
                    IndexOp::Remove(domain, id) => index.remove(&domain, &id),
                }
            }
            index.add_messages(message_delta);
            if let Some((domain, on)) = suspend {
                index.suspend(&domain, on);
            }
        });
        if let Some(o) = owner_change {
            self.ownership = o.clone();
            self.shared.ownership.send_replace(Arc::new(o));
        }
        Ok(response)
    }
}

enum IndexOp {
    Upsert(String, String, u64),
    Remove(String, String),
}

/// The writes of one log entry, with an overlay so later commands in the same entry see
/// earlier ones.
struct Tx<'a> {
    state: &'a Tree,
    bodies: &'a mut Bodies,
    /// Bodies put (and synced) before the entries were applied, by message id.
    prepared: &'a mut HashMap<String, BodyRef>,
    /// Bodies put by this entry (synced before the batch is applied)...
    put_bodies: bool,
    new_bodies: HashMap<String, BodyRef>,
    /// ...and released by it (their files may go after the batch is applied).
    released: Vec<BodyRef>,
    batch: Batch,
    messages: HashMap<String, Option<MessageMeta>>,
    deliveries: HashMap<Vec<u8>, Option<DeliveryRecord>>,
    seen: HashSet<String>,
    index_ops: Vec<IndexOp>,
    message_delta: isize,
    /// Events this entry adds, in order (positions are given at the end).
    events: Vec<Event>,
    /// A domain suspended (true) or resumed (false).
    suspend: Option<(String, bool)>,
}

impl<'a> Tx<'a> {
    fn new(
        state: &'a Tree,
        bodies: &'a mut Bodies,
        prepared: &'a mut HashMap<String, BodyRef>,
    ) -> Tx<'a> {
        Tx {
            state,
            bodies,
            prepared,
            put_bodies: false,
            new_bodies: HashMap::new(),
            released: Vec::new(),
            batch: Batch::default(),
            messages: HashMap::new(),
            deliveries: HashMap::new(),
            seen: HashSet::new(),
            index_ops: Vec::new(),
            message_delta: 0,
            events: Vec::new(),
            suspend: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        time_ms: u64,
        kind: EventKind,
        id: &str,
        recipient: &str,
        sender: &str,
        remote: &Remote,
        reply: &str,
        node: NodeId,
    ) {
        self.events.push(Event {
            time_ms,
            kind,
            id: id.to_string(),
            recipient: recipient.to_string(),
            domain: domain_of(recipient),
            sender: sender.to_string(),
            remote: remote.clone(),
            reply: reply.to_string(),
            node,
        });
    }

    /// Adds a message (with a `Received` event per recipient when `events`); false when
    /// the id is already known.
    fn enqueue(&mut self, m: &NewMessage, events: bool) -> Result<bool, DbError> {
        if !self.seen.insert(m.id.clone())
            || self.state.contains(msg_key(&m.id))?
            || self.state.contains(tomb_key(&m.id))?
        {
            return Ok(false);
        }
        let mut by_domain: Vec<(String, Vec<String>)> = Vec::new();
        for rcpt in &m.recipients {
            let domain = domain_of(rcpt);
            match by_domain.iter_mut().find(|(d, _)| *d == domain) {
                Some((_, list)) if !list.contains(rcpt) => list.push(rcpt.clone()),
                Some(_) => {}
                None => by_domain.push((domain, vec![rcpt.clone()])),
            }
        }
        let meta = MessageMeta {
            sender: m.sender.clone(),
            recipients: m.recipients.clone(),
            received_at_ms: m.received_at_ms,
            size: m.body.len() as u64,
            eight_bit: m.eight_bit,
            smtputf8: m.smtputf8,
            pending_domains: by_domain.len() as u32,
        };
        let r = match self.prepared.remove(&m.id) {
            Some(r) => r,
            None => {
                self.put_bodies = true;
                self.bodies.put(&m.body).map_err(body_err)?
            }
        };
        self.new_bodies.insert(m.id.clone(), r);
        self.batch.insert(body_ref_key(&m.id), encode(&r));
        self.put_message(&m.id, Some(meta));
        if events {
            let reply = format!("queued as {}", m.id);
            for rcpt in &m.recipients {
                let remote = Remote::default();
                self.event(
                    m.received_at_ms,
                    EventKind::Received,
                    &m.id,
                    rcpt,
                    &m.sender,
                    &remote,
                    &reply,
                    0,
                );
            }
        }
        for (domain, recipients) in by_domain {
            let record = DeliveryRecord {
                recipients,
                attempts: 0,
                next_attempt_ms: 0,
                last_reply: None,
            };
            self.put_delivery(&domain, &m.id, Some(record));
            self.index_ops
                .push(IndexOp::Upsert(domain, m.id.clone(), 0));
        }
        self.message_delta += 1;
        Ok(true)
    }

    fn outcome(&mut self, o: &Outcome, now_ms: u64) -> Result<(), DbError> {
        let Some(mut record) = self.get_delivery(&o.domain, &o.id)? else {
            return Ok(()); // already finished: a repeated outcome changes nothing
        };
        // A DSN only for recipients this outcome really finishes (not for a repeat).
        let dsn_due = o.finished.iter().any(|r| record.recipients.contains(r));
        let sender = self
            .get_message(&o.id)?
            .map(|m| m.sender)
            .unwrap_or_default();
        let reply = o.last_reply.clone().unwrap_or_default();
        for rcpt in record.recipients.clone() {
            let kind = if !o.finished.contains(&rcpt) {
                EventKind::Deferred
            } else if o.suppressed.contains(&rcpt) {
                EventKind::Suppressed
            } else if !o.failed.contains(&rcpt) {
                EventKind::Delivered
            } else if o.expired {
                EventKind::Expired
            } else {
                EventKind::Bounced
            };
            self.event(
                now_ms, kind, &o.id, &rcpt, &sender, &o.remote, &reply, o.node,
            );
        }
        // The DSN's own `Received` event comes after the events of what caused it.
        if let Some(dsn) = &o.dsn
            && dsn_due
        {
            self.enqueue(dsn, true)?;
        }
        record.recipients.retain(|r| !o.finished.contains(r));
        if !record.recipients.is_empty() {
            record.attempts += 1;
            record.next_attempt_ms = o.next_attempt_ms;
            record.last_reply = o.last_reply.clone();
            self.index_ops.push(IndexOp::Upsert(
                o.domain.clone(),
                o.id.clone(),
                o.next_attempt_ms,
            ));
            self.put_delivery(&o.domain, &o.id, Some(record));
            return Ok(());
        }
        self.close_delivery(&o.domain, &o.id, now_ms)
    }

    /// Removes a finished (message, domain) record; the message goes with its last one.
    fn close_delivery(&mut self, domain: &str, id: &str, now_ms: u64) -> Result<(), DbError> {
        self.put_delivery(domain, id, None);
        self.index_ops
            .push(IndexOp::Remove(domain.to_string(), id.to_string()));
        let Some(mut meta) = self.get_message(id)? else {
            return Ok(());
        };
        meta.pending_domains = meta.pending_domains.saturating_sub(1);
        if meta.pending_domains > 0 {
            self.put_message(id, Some(meta));
        } else {
            self.put_message(id, None);
            self.batch.remove(body_key(id));
            self.batch.remove(body_ref_key(id));
            let r = match self.new_bodies.remove(id) {
                Some(r) => Some(r),
                None => match self.state.get(body_ref_key(id))? {
                    Some(v) => Some(decode::<BodyRef>(&v, "body reference")?),
                    None => None,
                },
            };
            self.released.extend(r);
            self.batch.insert(tomb_key(id), now_ms.to_be_bytes());
            self.batch.insert(tomb_time_key(now_ms, id), []);
            self.message_delta -= 1;
        }
        Ok(())
    }

    /// The domains with an open delivery record for message `id`.
    fn open_domains(&mut self, id: &str) -> Result<Vec<(String, DeliveryRecord)>, DbError> {
        let Some(meta) = self.get_message(id)? else {
            return Ok(Vec::new());
        };
        let mut domains: Vec<String> = meta.recipients.iter().map(|r| domain_of(r)).collect();
        domains.sort();
        domains.dedup();
        let mut open = Vec::new();
        for domain in domains {
            if let Some(record) = self.get_delivery(&domain, id)? {
                open.push((domain, record));
            }
        }
        Ok(open)
    }

    fn retry(&mut self, id: &str) -> Result<bool, DbError> {
        let open = self.open_domains(id)?;
        for (domain, mut record) in open.iter().cloned() {
            record.next_attempt_ms = 0;
            self.put_delivery(&domain, id, Some(record));
            self.index_ops
                .push(IndexOp::Upsert(domain, id.to_string(), 0));
        }
        Ok(!open.is_empty())
    }

    fn delete(&mut self, id: &str, now_ms: u64, dsn: Option<&NewMessage>) -> Result<bool, DbError> {
        let open = self.open_domains(id)?;
        if open.is_empty() {
            return Ok(false);
        }
        let sender = self.get_message(id)?.map(|m| m.sender).unwrap_or_default();
        for (domain, record) in open {
            for rcpt in &record.recipients {
                let remote = Remote::default();
                self.event(
                    now_ms,
                    EventKind::Deleted,
                    id,
                    rcpt,
                    &sender,
                    &remote,
                    "deleted by an operator",
                    0,
                );
            }
            self.close_delivery(&domain, id, now_ms)?;
        }
        if let Some(dsn) = dsn {
            self.enqueue(dsn, true)?;
        }
        Ok(true)
    }

    fn expire_tombstones(&mut self, now_ms: u64) -> Result<(), DbError> {
        let cutoff = now_ms.saturating_sub(TOMBSTONE_MS);
        let end = tomb_time_key(cutoff, "");
        for pair in self.state.range(b"T/", &end).take(10_000) {
            let (key, _) = pair?;
            let id = String::from_utf8_lossy(&key[10..]).into_owned();
            self.batch.remove(&key);
            self.batch.remove(tomb_key(&id));
        }
        Ok(())
    }

    fn get_message(&mut self, id: &str) -> Result<Option<MessageMeta>, DbError> {
        if let Some(m) = self.messages.get(id) {
            return Ok(m.clone());
        }
        match self.state.get(msg_key(id))? {
            Some(v) => Ok(Some(decode(&v, "message")?)),
            None => Ok(None),
        }
    }

    fn put_message(&mut self, id: &str, meta: Option<MessageMeta>) {
        match &meta {
            Some(m) => self.batch.insert(msg_key(id), encode(m)),
            None => self.batch.remove(msg_key(id)),
        }
        self.messages.insert(id.to_string(), meta);
    }

    fn get_delivery(&mut self, domain: &str, id: &str) -> Result<Option<DeliveryRecord>, DbError> {
        let key = delivery_key(domain, id);
        if let Some(r) = self.deliveries.get(&key) {
            return Ok(r.clone());
        }
        match self.state.get(&key)? {
            Some(v) => Ok(Some(decode(&v, "delivery")?)),
            None => Ok(None),
        }
    }

    fn put_delivery(&mut self, domain: &str, id: &str, record: Option<DeliveryRecord>) {
        let key = delivery_key(domain, id);
        match &record {
            Some(r) => self.batch.insert(&key, encode(r)),
            None => self.batch.remove(&key),
        }
        self.deliveries.insert(key, record);
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.applied_and_membership().map_err(sm_read_err)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Every body these entries carry goes to the body files first, made durable
        // by one fdatasync for the whole call rather than one per entry.
        let mut prepared = self.prepare_bodies(&entries).map_err(|e| {
            let at = entries.first().map(|e| e.log_id).unwrap_or_default();
            StorageError::from(StorageIOError::<NodeId>::apply(at, &e))
        })?;
        let mut responses = Vec::new();
        let mut last = None;
        for entry in &entries {
            let response = self.apply_entry(entry, &mut prepared).map_err(|e| {
                StorageError::from(StorageIOError::<NodeId>::apply(entry.log_id, &e))
            })?;
            last = Some(entry.log_id.index);
            responses.push(response);
        }
        // Bodies of duplicates (ids already known) were never referenced.
        {
            let mut bodies = lock(&self.bodies);
            for r in prepared.values() {
                bodies.release(r).map_err(|e| {
                    StorageError::from(StorageIOError::<NodeId>::write_state_machine(&body_err(e)))
                })?;
            }
        }
        if let Err(e) = self.compact_step(false).await {
            // Not worth stopping the node for: the file stays held, so nothing of it is
            // deleted before a restart counts its references again (until then the
            // counts of a half-done step are off, which can only keep files longer).
            tracing::error!(error = %e, "body file compaction stopped");
            self.compaction = None;
        }
        if let Some(index) = last {
            self.shared.changed.send_replace(index);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The records are written here, while apply is paused, so the copy is
        // consistent; streamed to a file, so the state is never whole in memory. The
        // bodies follow in `build_snapshot`, which runs beside apply.
        SnapshotBuilder {
            pending: Some(self.begin_snapshot()),
            dir: self.snapshot_dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
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

    async fn install_snapshot(
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

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
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
struct PendingSnapshot {
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
    pending: Option<Result<PendingSnapshot, DbError>>,
    dir: PathBuf,
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
