//! The queue state machine: applies [`Request`]s to the `state` tree.
//!
//! - `keys` — the key schema of the `state` tree;
//! - `tx` — the transaction logic: what one entry writes, against the [`Store`]
//!   trait, with unit tests that need no Raft;
//! - `reader` — [`QueueReader`], read access for delivery, ingress and operators;
//! - `compaction` — moving bodies out of mostly empty body files;
//! - `snapshots` — building, receiving and installing snapshots.
//!
//! Here: opening the state (and the scheduling index rebuilt from it), and `apply`,
//! which writes each entry's batch, then updates the index, the event position, the
//! ownership table and the body files.
//!
//! [`Store`]: crate::db::Store

mod compaction;
mod keys;
mod reader;
mod snapshots;
mod tx;

#[cfg(test)]
mod tests;

pub use reader::QueueReader;
pub use snapshots::SnapshotBuilder;
pub use tx::TOMBSTONE_MS;

use crate::bodies::{Bodies, BodyRef};
use crate::db::{Db, DbError, Tree};
use crate::index::Shared;
use crate::ownership::Ownership;
use crate::snapshot;
use crate::types::{
    DeliveryRecord, Entry, LogId, NewMessage, NodeId, Request, Response, Snapshot, SnapshotMeta,
    StorageError, StoredMembership, TenantRecord, TypeConfig,
};
use compaction::{COMPACT_CHECK, Compaction};
use keys::*;
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, StorageIOError};
use reader::{body_err, lock};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use tx::{IndexOp, Meta, SiteOp, Tx};

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::write_state_machine(&e).into()
}
fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::<NodeId>::read_state_machine(&e).into()
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
    meta: Meta,
    /// The position the next event gets (kept here, stored at `s/events_next`).
    events_next: u64,
    /// The body file being compacted, if any (see [`StateMachine::compact_step`]).
    compaction: Option<Compaction>,
    next_compaction_check: tokio::time::Instant,
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
            meta: Meta {
                ownership: Ownership::default(),
                voters: Default::default(),
            },
            events_next: 1,
            compaction: None,
            next_compaction_check: tokio::time::Instant::now() + COMPACT_CHECK,
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

    fn rebuild_index(&mut self) -> Result<(), DbError> {
        self.meta.ownership = match self.state.get(OWNERSHIP)? {
            Some(v) => decode(&v, "ownership")?,
            None => Ownership::default(),
        };
        let (_, membership) = self.applied_and_membership()?;
        self.meta.voters = membership.membership().voter_ids().collect();
        self.shared
            .ownership
            .send_replace(Arc::new(self.meta.ownership.clone()));
        let mut records = Vec::new();
        for pair in self.state.scan_prefix(DELIVERIES) {
            let (key, value) = pair?;
            let (domain, id) = split_delivery_key(&key)?;
            let record: DeliveryRecord = decode(&value, "delivery")?;
            records.push((domain, id, record.next_attempt_ms));
        }
        let messages = self.state.scan_prefix(MESSAGES).count();
        let mut refs = Vec::new();
        for pair in self.state.scan_prefix(BODY_REFS) {
            let (_, value) = pair?;
            refs.push(decode::<BodyRef>(&value, "body reference")?);
        }
        lock(&self.bodies).set_live(refs).map_err(body_err)?;
        self.events_next = self.state.get(EVENTS_NEXT)?.map_or(1, |v| u64_of(&v));
        let mut suspended = HashSet::new();
        for pair in self.state.scan_prefix(SUSPENDED) {
            let (key, _) = pair?;
            suspended.insert(name_of(&key));
        }
        let mut sites = HashMap::new();
        for pair in self.state.scan_prefix(SITE_OF) {
            let (key, value) = pair?;
            sites.insert(name_of(&key), decode(&value, "site")?);
        }
        let mut site_states = HashMap::new();
        for pair in self.state.scan_prefix(SITE_STATES) {
            let (key, value) = pair?;
            site_states.insert(name_of(&key), decode(&value, "site state")?);
        }
        let mut tenant_of = HashMap::new();
        for pair in self.state.scan_prefix(TENANT_OF) {
            let (key, value) = pair?;
            tenant_of.insert(name_of(&key), String::from_utf8_lossy(&value).into_owned());
        }
        let mut paused = HashMap::new();
        for pair in self.state.scan_prefix(TENANTS) {
            let (key, value) = pair?;
            let record: TenantRecord = decode(&value, "tenant")?;
            if let Some(reason) = record.pause_reason() {
                paused.insert(name_of(&key), reason.to_string());
            }
        }
        let ownership = Arc::new(self.meta.ownership.clone());
        self.shared.with(|index| {
            index.clear();
            index.set_sites(sites, site_states, ownership);
            // Before the deliveries: a paused tenant's are held as they come.
            index.set_tenants(tenant_of, paused);
            for (domain, id, due) in &records {
                index.upsert(domain, id, *due);
            }
            index.add_messages(messages as isize);
            index.set_suspended(suspended);
        });
        Ok(())
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
                EntryPayload::Normal(
                    Request::Enqueue { messages }
                    | Request::EnqueueFrom { messages, .. }
                    | Request::EnqueueTenants { messages, .. }
                    | Request::EnqueueTracked { messages, .. },
                ) => {
                    for m in messages {
                        put(m)?;
                    }
                }
                EntryPayload::Normal(Request::Outcomes { results, .. }) => {
                    for dsn in results.iter().filter_map(|o| o.dsn.as_ref()) {
                        put(dsn)?;
                    }
                }
                EntryPayload::Normal(Request::Finished { results, .. }) => {
                    for dsn in results.iter().filter_map(|f| f.outcome.dsn.as_ref()) {
                        put(dsn)?;
                    }
                }
                EntryPayload::Normal(Request::Delete { dsn: Some(dsn), .. }) => put(dsn)?,
                EntryPayload::Normal(Request::DeleteMany { messages, .. }) => {
                    for dsn in messages.iter().filter_map(|m| m.dsn.as_ref()) {
                        put(dsn)?;
                    }
                }
                _ => {}
            }
        }
        if !prepared.is_empty() {
            bodies.sync().map_err(body_err)?;
        }
        Ok(prepared)
    }

    /// Applies one entry: its writes as one batch (with the applied log id), then what
    /// follows from them outside the state.
    fn apply_entry(
        &mut self,
        entry: &Entry,
        prepared: &mut HashMap<String, BodyRef>,
    ) -> Result<Response, DbError> {
        let bodies = self.bodies.clone();
        let mut bodies = lock(&bodies);
        let mut tx = Tx::new(&self.state, &mut bodies, prepared);
        let response = tx.entry(entry, &mut self.meta)?;
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
            ownership,
            renewal,
            site_ops,
            ..
        } = tx;
        let mut next = self.events_next;
        if !events.is_empty() {
            batch.insert(event_key(next), encode_events(&events));
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
                    IndexOp::Tenant(id, tenant) => index.set_tenant(id, tenant),
                    IndexOp::Pause(tenant, reason) => index.pause_tenant(tenant, reason),
                }
            }
            index.add_messages(message_delta);
            if let Some((domain, on)) = suspend {
                index.suspend(&domain, on);
            }
            for op in site_ops {
                match op {
                    SiteOp::Map(domain, of) => index.map_site(domain, of),
                    SiteOp::State(site, state) => index.set_site_state(site, state),
                    SiteOp::Resume(site, at) => index.resume_site(site, at),
                }
            }
            // Under the same lock as the sites: one consistent view for delivery.
            if let Some(o) = &ownership {
                index.set_ownership(Arc::new(o.clone()));
            }
        });
        if let Some((node, index)) = renewal {
            // Local time: the leader counts lease expiry from when it applied a renewal.
            self.shared
                .renewals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(node, (index, tokio::time::Instant::now()));
        }
        if let Some(o) = ownership {
            self.meta.ownership = o.clone();
            self.shared.ownership.send_replace(Arc::new(o));
        }
        Ok(response)
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
        self.receive_file().await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        self.install(meta, snapshot).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.current().await
    }
}
