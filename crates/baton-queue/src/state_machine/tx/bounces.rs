//! What entries do for late bounces and complaints: the bounce-token key (set once), the
//! retained record of each tracked message (`k/<id>`) and its expiry, and one report
//! (`Feedback`): an event, a suppression, a count on the message's tenant.

use super::Tx;
use super::tenants::Delta;
use crate::db::DbError;
use crate::state_machine::keys::*;
use crate::types::{
    AutoSuppression, Event, EventKind, FeedbackKind, FeedbackReport, Listing, NewMessage, Remote,
    Tracked, domain_of,
};
use baton_reputation::tenant::{Counts, Thresholds};

/// At most this many retained records expire per entry (the leader writes more).
const TRIM_TRACKED_MAX: usize = 10_000;

impl Tx<'_> {
    /// [`Request::SetBounceKey`](crate::types::Request::SetBounceKey): whether it was
    /// set (the first key stays; an empty one is refused).
    pub(super) fn set_bounce_key(&mut self, key: &[u8]) -> Result<bool, DbError> {
        if key.is_empty() || self.state.contains(BOUNCE_KEY)? {
            return Ok(false);
        }
        self.batch.insert(BOUNCE_KEY, key);
        Ok(true)
    }

    /// Keeps what a later report about message `m` (of `tenant`) needs.
    pub(super) fn track(&mut self, m: &NewMessage, tenant: &str) {
        let record = Tracked {
            tenant: tenant.to_string(),
            sender: m.sender.clone(),
            recipients: m.recipients.clone(),
            at_ms: m.received_at_ms,
        };
        self.batch.insert(tracked_key(&m.id), encode(&record));
    }

    /// Lets the records of messages received before `before_ms` go: their ids (ULIDs)
    /// sort below the ULID of that time.
    pub(super) fn trim_tracked(&mut self, before_ms: u64) -> Result<bool, DbError> {
        let end = tracked_key(&ulid::Ulid::from_parts(before_ms, 0).to_string());
        let mut changed = false;
        for pair in self.state.range(TRACKED, &end).take(TRIM_TRACKED_MAX) {
            let (key, _) = pair?;
            self.batch.remove(key);
            changed = true;
        }
        Ok(changed)
    }

    /// [`Request::Feedback`](crate::types::Request::Feedback): whether it changed
    /// anything. A report about an unknown message, or a recipient the message did not
    /// have, changes nothing; a repeated report adds an event but counts nothing again.
    pub(super) fn feedback(
        &mut self,
        r: &FeedbackReport,
        now_ms: u64,
        thresholds: &Thresholds,
    ) -> Result<bool, DbError> {
        let Some(v) = self.state.get(&tracked_key(&r.id))? else {
            return Ok(false);
        };
        let record: Tracked = decode(&v, "tracked message")?;
        let Some(recipient) = record
            .recipients
            .iter()
            .find(|a| a.eq_ignore_ascii_case(&r.recipient))
            .cloned()
        else {
            return Ok(false);
        };
        let (kind, detail) = match r.kind {
            FeedbackKind::Bounce => (
                EventKind::BouncedAsync,
                format!("late bounce: {}", r.category),
            ),
            FeedbackKind::Complaint => (EventKind::Complaint, "complaint".to_string()),
        };
        self.events.push(Event {
            time_ms: now_ms,
            kind,
            id: r.id.clone(),
            recipient: recipient.clone(),
            domain: domain_of(&recipient),
            sender: record.sender.clone(),
            remote: Remote::default(),
            reply: r.reply.clone(),
            node: r.node,
            site: String::new(),
            tenant: record.tenant.clone(),
            rule: r.rule.clone(),
            detail,
        });
        let mut delta = Delta::default();
        match r.kind {
            FeedbackKind::Bounce if r.hard => {
                let key = suppress_key(&recipient);
                if self.state.contains(&key)? {
                    return Ok(true); // suppressed (and counted) already
                }
                let listing = Listing {
                    reason: format!("bounce (async) {}: {}", r.category, r.reply),
                    since_ms: now_ms,
                };
                self.batch.insert(key, encode(&listing));
                let s = AutoSuppression {
                    address: recipient.to_ascii_lowercase(),
                    category: r.category.clone(),
                    reply: r.reply.clone(),
                };
                let counts = Counts {
                    hard: 1,
                    ..Counts::default()
                };
                delta.add(counts, r.node, &[s]);
            }
            FeedbackKind::Bounce => return Ok(true),
            FeedbackKind::Complaint => {
                if record.tenant.is_empty() {
                    return Ok(true); // nobody to suppress it for
                }
                let reason = format!("complaint: {}", r.reply);
                if !self.suppress_for_tenant(&record.tenant, &recipient, &reason, now_ms)? {
                    return Ok(true); // complained about already
                }
                let counts = Counts {
                    complaints: 1,
                    ..Counts::default()
                };
                delta.add(counts, r.node, &[]);
            }
        }
        if !record.tenant.is_empty() {
            self.count_tenant(&record.tenant, delta, now_ms, thresholds)?;
        }
        Ok(true)
    }
}
