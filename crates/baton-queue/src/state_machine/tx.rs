//! The transaction logic: what one log entry does to the state.
//!
//! [`Tx::entry`] turns an entry into writes (one [`Batch`]) and side effects for the
//! state machine to carry out once the batch is applied: scheduling-index updates,
//! events, body files to release, a new ownership table. It reads the state through
//! [`Store`] and keeps an overlay, so later commands of one entry see earlier ones.
//!
//! Nothing here reads the clock: every time comes from the entry (the proposer's clock),
//! so every replica computes the same state.
//!
//! `tenants` (a child module, for the private fields): what entries do to tenants;
//! `bounces`: the bounce key, retained records and late reports.

mod bounces;
mod sites;
mod tenants;

use super::keys::*;
use crate::bodies::{Bodies, BodyRef};
use crate::db::{Batch, DbError, Store};
use crate::ownership::Ownership;
use crate::types::{
    AutoSuppression, DeliveryRecord, Entry, Event, EventKind, Listing, MessageMeta, NewMessage,
    NodeId, Outcome, RecipientReply, Remote, Request, Response, SiteEvent, SiteOf,
    StoredMembership, domain_of,
};
use baton_reputation::site::SiteState;
use baton_reputation::tenant::Counts;
use openraft::EntryPayload;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// At most this many event records are trimmed by one entry (the leader writes more).
const TRIM_MAX: usize = 10_000;
/// At most this many tombstones expire per entry.
const TOMBSTONE_EXPIRY_MAX: usize = 10_000;
/// How long a finished message id is remembered for idempotent enqueue.
pub const TOMBSTONE_MS: u64 = 24 * 3600 * 1000;

/// A change to the scheduling index.
pub(crate) enum IndexOp {
    Upsert(String, String, u64),
    Remove(String, String),
    /// A message's tenant (before its deliveries are upserted), or none once it is gone
    /// (after they are removed).
    Tenant(String, Option<String>),
    /// A tenant paused (with the reason its senders are told) or resumed (`None`).
    Pause(String, Option<String>),
}

/// A change to the index's sites.
pub(crate) enum SiteOp {
    /// A domain's site.
    Map(String, SiteOf),
    /// A site's throttle.
    State(String, SiteState),
    /// An operator resumed a site (at this log index).
    Resume(String, u64),
}

/// What the machine knows besides its store, which entries read and change.
pub(crate) struct Meta {
    pub ownership: Ownership,
    pub voters: BTreeSet<NodeId>,
}

fn body_err(e: impl std::fmt::Display) -> DbError {
    DbError::corrupt(e)
}

/// The writes of one log entry.
pub(crate) struct Tx<'a> {
    state: &'a dyn Store,
    pub bodies: &'a mut Bodies,
    /// Bodies put (and synced) before the entries were applied, by message id.
    prepared: &'a mut HashMap<String, BodyRef>,
    /// Bodies put by this entry (synced before the batch is applied)...
    pub put_bodies: bool,
    new_bodies: HashMap<String, BodyRef>,
    /// ...and released by it (their files may go after the batch is applied).
    pub released: Vec<BodyRef>,
    pub batch: Batch,
    messages: HashMap<String, Option<MessageMeta>>,
    deliveries: HashMap<Vec<u8>, Option<DeliveryRecord>>,
    seen: HashSet<String>,
    pub index_ops: Vec<IndexOp>,
    pub message_delta: isize,
    /// Events this entry adds, in order (positions are given when the batch is written).
    pub events: Vec<Event>,
    /// A domain suspended (true) or resumed (false).
    pub suspend: Option<(String, bool)>,
    /// The ownership table after this entry, when the entry changed it.
    pub ownership: Option<Ownership>,
    /// A node's lease renewal this entry applied, at this log index.
    pub renewal: Option<(NodeId, u64)>,
    /// Sites this entry changed.
    pub site_ops: Vec<SiteOp>,
}

impl<'a> Tx<'a> {
    pub fn new(
        state: &'a dyn Store,
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
            ownership: None,
            renewal: None,
            site_ops: Vec::new(),
        }
    }

    /// Applies `entry` to this transaction; `meta` is updated in place (voters), a new
    /// ownership table is left in [`Tx::ownership`].
    pub fn entry(&mut self, entry: &Entry, meta: &mut Meta) -> Result<Response, DbError> {
        let mut response = Response {
            index: entry.log_id.index,
            ..Response::default()
        };
        let mut owners: Option<Ownership> = None;
        match &entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                self.batch.insert(MEMBERSHIP, encode(&stored));
                meta.voters = m.voter_ids().collect();
                let members: BTreeSet<NodeId> = m.nodes().map(|(id, _)| *id).collect();
                let mut o = meta.ownership.clone();
                o.members_changed(&members);
                owners = Some(o);
            }
            EntryPayload::Normal(request) => {
                owners = self.request(request, entry.log_id.index, meta, &mut response)?;
            }
        }
        self.ownership = owners.filter(|o| *o != meta.ownership);
        if let Some(o) = &self.ownership {
            self.batch.insert(OWNERSHIP, encode(o));
        }
        self.batch.insert(APPLIED, encode(&Some(entry.log_id)));
        Ok(response)
    }

    /// One command; returns the ownership table it computed, if it is an ownership
    /// command.
    fn request(
        &mut self,
        request: &Request,
        index: u64,
        meta: &Meta,
        response: &mut Response,
    ) -> Result<Option<Ownership>, DbError> {
        match request {
            Request::Enqueue { messages }
            | Request::EnqueueFrom { messages, .. }
            | Request::EnqueueTenants { messages, .. }
            | Request::EnqueueTracked { messages, .. } => {
                let (node, tenants) = match request {
                    Request::EnqueueFrom { node, .. } => (*node, &[][..]),
                    Request::EnqueueTenants { node, tenants, .. }
                    | Request::EnqueueTracked { node, tenants, .. } => (*node, &tenants[..]),
                    _ => (0, &[][..]),
                };
                let tracked = matches!(request, Request::EnqueueTracked { .. });
                for (i, message) in messages.iter().enumerate() {
                    let tenant = tenants.get(i).map_or("", String::as_str);
                    if self.enqueue(message, true, node, tenant)? {
                        if tracked {
                            self.track(message, tenant);
                        }
                        response.added += 1;
                    } else {
                        response.duplicates += 1;
                    }
                }
            }
            Request::Outcomes { now_ms, results } => {
                for outcome in results {
                    self.outcome(outcome, *now_ms, true, &[], &[])?;
                }
                self.expire_tombstones(*now_ms)?;
            }
            Request::Finished {
                now_ms,
                results,
                thresholds,
            } => {
                // Per tenant, in name order: every replica judges them in the same order.
                let mut deltas: BTreeMap<String, tenants::Delta> = BTreeMap::new();
                for finished in results {
                    let o = &finished.outcome;
                    // Read before the outcome: its last delivery takes the tenant along.
                    let tenant = self.tenant_of(&o.id)?;
                    let counts = self.outcome(
                        o,
                        *now_ms,
                        !finished.throttled,
                        &finished.suppress,
                        &finished.replies,
                    )?;
                    if let Some(tenant) = tenant
                        && counts != Counts::default()
                    {
                        deltas
                            .entry(tenant)
                            .or_default()
                            .add(counts, o.node, &finished.suppress);
                    }
                    for s in &finished.suppress {
                        self.auto_suppress(s, *now_ms)?;
                    }
                }
                for (tenant, delta) in deltas {
                    self.count_tenant(&tenant, delta, *now_ms, thresholds)?;
                }
                self.expire_tombstones(*now_ms)?;
            }
            Request::PauseTenant {
                tenant,
                reason,
                now_ms,
            } => response.changed = self.pause_tenant(tenant, reason, *now_ms)?,
            Request::ResumeTenant { tenant, now_ms } => {
                response.changed = self.resume_tenant(tenant, *now_ms)?;
            }
            Request::SuppressForTenant {
                tenant,
                address,
                reason,
                now_ms,
            } => {
                response.changed = self.suppress_for_tenant(tenant, address, reason, *now_ms)?;
            }
            Request::UnsuppressForTenant { tenant, address } => {
                response.changed = self.unsuppress_for_tenant(tenant, address)?;
            }
            Request::SetStsPolicy { domain, policy } => {
                let key = sts_policy_key(domain);
                response.changed = match policy {
                    Some(p) => {
                        self.batch.insert(key, encode(p));
                        true
                    }
                    None => {
                        let had = self.state.contains(&key)?;
                        self.batch.remove(key);
                        had
                    }
                };
            }
            Request::SetSite {
                domain,
                site,
                base,
                by,
                resolved_ms,
            } => {
                response.changed =
                    self.set_site(domain, site, *base, *by, *resolved_ms, index, meta)?;
            }
            Request::SiteResume { site, now_ms } => {
                self.batch.remove(site_state_key(site));
                self.site_ops.push(SiteOp::Resume(site.clone(), index));
                let event = SiteEvent {
                    kind: EventKind::SiteResumed,
                    rule: String::new(),
                    reply: String::new(),
                    detail: "resumed by an operator: configured limits".into(),
                    time_ms: *now_ms,
                };
                self.site_event(site, &event, 0);
                response.changed = true;
            }
            Request::SiteUpdate {
                site,
                by,
                state,
                event,
            } => {
                // Only the site's owner may change it: a deposed owner's late
                // proposal changes nothing.
                if meta.ownership.may_deliver(*by, site) {
                    self.batch.insert(site_state_key(site), encode(state));
                    self.site_ops
                        .push(SiteOp::State(site.clone(), state.clone()));
                    if let Some(e) = event {
                        self.site_event(site, e, *by);
                    }
                    response.changed = true;
                }
            }
            Request::Retry { id } => response.changed = self.retry(id, None)?,
            Request::Delete { id, now_ms, dsn } => {
                response.changed = self.delete(id, None, *now_ms, dsn.as_ref())?;
            }
            Request::RetryMany { domain, ids } => {
                for id in ids {
                    if self.retry(id, domain.as_deref())? {
                        response.added += 1;
                    }
                }
                response.changed = response.added > 0;
            }
            Request::DeleteMany {
                domain,
                now_ms,
                messages,
            } => {
                for m in messages {
                    if self.delete(&m.id, domain.as_deref(), *now_ms, m.dsn.as_ref())? {
                        response.added += 1;
                    }
                }
                response.changed = response.added > 0;
            }
            Request::Suspend {
                domain,
                reason,
                now_ms,
            } => {
                let domain = domain.to_ascii_lowercase();
                response.changed = !self.state.contains(&suspend_key(&domain))?;
                let listing = Listing {
                    reason: reason.clone(),
                    since_ms: *now_ms,
                };
                self.batch.insert(suspend_key(&domain), encode(&listing));
                self.suspend = Some((domain, true));
            }
            Request::Resume { domain } => {
                let domain = domain.to_ascii_lowercase();
                response.changed = self.state.contains(&suspend_key(&domain))?;
                self.batch.remove(suspend_key(&domain));
                self.suspend = Some((domain, false));
            }
            Request::Suppress {
                address,
                reason,
                now_ms,
            } => {
                response.changed = !self.state.contains(&suppress_key(address))?;
                let listing = Listing {
                    reason: reason.clone(),
                    since_ms: *now_ms,
                };
                self.batch.insert(suppress_key(address), encode(&listing));
            }
            Request::Unsuppress { address } => {
                response.changed = self.state.contains(&suppress_key(address))?;
                self.batch.remove(suppress_key(address));
            }
            Request::TrimEvents { below } => response.changed = self.trim_events(*below)?,
            Request::SetBounceKey { key } => response.changed = self.set_bounce_key(key)?,
            Request::TrimTracked { before_ms } => {
                response.changed = self.trim_tracked(*before_ms)?;
            }
            Request::Feedback {
                now_ms,
                thresholds,
                reports,
            } => {
                for report in reports {
                    response.changed |= self.feedback(report, *now_ms, thresholds)?;
                }
            }
            Request::WebhookSent { position } => {
                self.batch.insert(WEBHOOK, position.to_be_bytes());
                response.changed = true;
            }
            Request::LeaseRenew { node } => {
                let mut o = meta.ownership.clone();
                o.renew(*node, index, meta.voters.contains(node));
                self.renewal = Some((*node, index));
                return Ok(Some(o));
            }
            Request::Expire { node, renewal } => {
                let mut o = meta.ownership.clone();
                o.expire(*node, *renewal);
                return Ok(Some(o));
            }
            Request::Release { node } => {
                let mut o = meta.ownership.clone();
                o.release(*node);
                return Ok(Some(o));
            }
            Request::Retire { node } => {
                let mut o = meta.ownership.clone();
                o.retire(*node);
                return Ok(Some(o));
            }
            Request::AssignAck { node, epoch } => {
                let mut o = meta.ownership.clone();
                o.ack(*node, *epoch);
                return Ok(Some(o));
            }
        }
        Ok(None)
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
            site: String::new(),
            tenant: String::new(),
            rule: String::new(),
            detail: String::new(),
        });
    }

    /// Adds a message (with a `Received` event per recipient, naming `node`, when
    /// `events`) of `tenant` ("": none); false when the id is already known.
    fn enqueue(
        &mut self,
        m: &NewMessage,
        events: bool,
        node: NodeId,
        tenant: &str,
    ) -> Result<bool, DbError> {
        if !self.seen.insert(m.id.clone())
            || self.state.contains(&msg_key(&m.id))?
            || self.state.contains(&tomb_key(&m.id))?
        {
            return Ok(false);
        }
        if !tenant.is_empty() {
            // Before its deliveries reach the index, which holds a paused tenant's.
            self.batch.insert(tenant_of_key(&m.id), tenant.as_bytes());
            self.index_ops
                .push(IndexOp::Tenant(m.id.clone(), Some(tenant.to_string())));
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
                    node,
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

    /// Records an outcome; `count_attempt`: false when the deferral was a site's
    /// throttle. Returns what it finished, for the message's tenant: recipients
    /// delivered or failed (not expired, not suppressed), and of the failed those in
    /// `hard` (hard bounces). A repeated outcome finishes nothing and counts nothing.
    fn outcome(
        &mut self,
        o: &Outcome,
        now_ms: u64,
        count_attempt: bool,
        hard: &[AutoSuppression],
        replies: &[RecipientReply],
    ) -> Result<Counts, DbError> {
        let mut counts = Counts::default();
        let Some(mut record) = self.get_delivery(&o.domain, &o.id)? else {
            return Ok(counts); // already finished: a repeated outcome changes nothing
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
            match kind {
                EventKind::Delivered => {
                    counts.attempted += 1;
                    counts.delivered += 1;
                }
                EventKind::Bounced => {
                    counts.attempted += 1;
                    if hard.iter().any(|s| s.address.eq_ignore_ascii_case(&rcpt)) {
                        counts.hard += 1;
                    }
                }
                _ => {}
            }
            // The recipient's own reply when the attempt had one for it.
            let own = replies.iter().find(|r| r.recipient == rcpt);
            let text = own.map_or(reply.as_str(), |r| r.reply.as_str());
            self.event(now_ms, kind, &o.id, &rcpt, &sender, &o.remote, text, o.node);
            if let (Some(own), Some(e)) = (own, self.events.last_mut()) {
                e.rule = own.rule.clone();
            }
        }
        // The DSN's own `Received` event comes after the events of what caused it.
        if let Some(dsn) = &o.dsn
            && dsn_due
        {
            self.enqueue(dsn, true, o.node, "")?;
        }
        record.recipients.retain(|r| !o.finished.contains(r));
        if !record.recipients.is_empty() {
            if count_attempt {
                record.attempts += 1;
            }
            record.next_attempt_ms = o.next_attempt_ms;
            record.last_reply = o.last_reply.clone();
            self.index_ops.push(IndexOp::Upsert(
                o.domain.clone(),
                o.id.clone(),
                o.next_attempt_ms,
            ));
            self.put_delivery(&o.domain, &o.id, Some(record));
            return Ok(counts);
        }
        self.close_delivery(&o.domain, &o.id, now_ms)?;
        Ok(counts)
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
                None => match self.state.get(&body_ref_key(id))? {
                    Some(v) => Some(decode::<BodyRef>(&v, "body reference")?),
                    None => None,
                },
            };
            self.released.extend(r);
            self.batch.remove(tenant_of_key(id));
            self.index_ops.push(IndexOp::Tenant(id.to_string(), None));
            self.batch.insert(tomb_key(id), now_ms.to_be_bytes());
            self.batch.insert(tomb_time_key(now_ms, id), []);
            self.message_delta -= 1;
        }
        Ok(())
    }

    /// The domains with an open delivery record for message `id` (only `only`, if given).
    fn open_domains(
        &mut self,
        id: &str,
        only: Option<&str>,
    ) -> Result<Vec<(String, DeliveryRecord)>, DbError> {
        let Some(meta) = self.get_message(id)? else {
            return Ok(Vec::new());
        };
        let mut domains: Vec<String> = meta.recipients.iter().map(|r| domain_of(r)).collect();
        domains.retain(|d| only.is_none_or(|o| o.eq_ignore_ascii_case(d)));
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

    /// Makes the open deliveries of `id` (to `only`, if given) due now.
    fn retry(&mut self, id: &str, only: Option<&str>) -> Result<bool, DbError> {
        let open = self.open_domains(id, only)?;
        for (domain, mut record) in open.iter().cloned() {
            record.next_attempt_ms = 0;
            self.put_delivery(&domain, id, Some(record));
            self.index_ops
                .push(IndexOp::Upsert(domain, id.to_string(), 0));
        }
        Ok(!open.is_empty())
    }

    /// Closes the open deliveries of `id` (to `only`, if given) with a `Deleted` event
    /// per recipient, then enqueues `dsn`; false (and no DSN) when none was open.
    fn delete(
        &mut self,
        id: &str,
        only: Option<&str>,
        now_ms: u64,
        dsn: Option<&NewMessage>,
    ) -> Result<bool, DbError> {
        let open = self.open_domains(id, only)?;
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
            self.enqueue(dsn, true, 0, "")?;
        }
        Ok(true)
    }

    fn expire_tombstones(&mut self, now_ms: u64) -> Result<(), DbError> {
        let cutoff = now_ms.saturating_sub(TOMBSTONE_MS);
        let end = tomb_time_key(cutoff, "");
        for pair in self
            .state
            .range(TOMB_TIMES, &end)
            .take(TOMBSTONE_EXPIRY_MAX)
        {
            let (key, _) = pair?;
            let id = tomb_time_id(&key);
            self.batch.remove(&key);
            self.batch.remove(tomb_key(&id));
        }
        Ok(())
    }

    /// Removes whole event records whose last event is below `below`.
    fn trim_events(&mut self, below: u64) -> Result<bool, DbError> {
        let mut changed = false;
        for pair in self.state.range(EVENTS, &event_key(below)).take(TRIM_MAX) {
            let (key, value) = pair?;
            let events: Vec<Event> = decode_events(&value)?;
            if event_position(&key) + events.len() as u64 > below {
                break;
            }
            self.batch.remove(key);
            changed = true;
        }
        Ok(changed)
    }

    fn get_message(&mut self, id: &str) -> Result<Option<MessageMeta>, DbError> {
        if let Some(m) = self.messages.get(id) {
            return Ok(m.clone());
        }
        match self.state.get(&msg_key(id))? {
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
