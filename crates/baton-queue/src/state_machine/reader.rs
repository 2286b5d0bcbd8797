//! [`QueueReader`]: read access to the applied state, for delivery, ingress and
//! operators. Reads see whole entries only: every entry is one atomic batch.

use super::keys::*;
use crate::bodies::{self, Bodies, BodyRef};
use crate::db::{DbError, Tree};
use crate::index::Shared;
use crate::types::{DeliveryRecord, Event, Listing, MessageMeta, TenantRecord, Tracked};
use std::sync::Arc;

/// Read access to the queue's state, for delivery and operators. Cheap to clone.
#[derive(Clone)]
pub struct QueueReader {
    pub(super) state: Tree,
    pub(super) bodies: Arc<std::sync::Mutex<Bodies>>,
    pub shared: Arc<Shared>,
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

    /// The open delivery records of a domain, in id order (from either end), from after
    /// `after_id`.
    pub fn deliveries(
        &self,
        domain: &str,
        after_id: &str,
    ) -> impl DoubleEndedIterator<Item = Result<(String, DeliveryRecord), DbError>> + use<> {
        let (prefix, to) = delivery_range(domain);
        let from = [&prefix[..], after_id.as_bytes(), b"\0"].concat();
        let start = prefix.len();
        self.state.range(&from, &to).map(move |pair| {
            let (key, value) = pair?;
            let id = String::from_utf8_lossy(&key[start..]).into_owned();
            Ok((id, decode(&value, "delivery")?))
        })
    }

    /// The ids of the queued messages, in id order (from either end), from after
    /// `after_id`.
    pub fn message_ids(
        &self,
        after_id: &str,
    ) -> impl DoubleEndedIterator<Item = Result<String, DbError>> + use<> {
        let from = [MESSAGES, after_id.as_bytes(), b"\0"].concat();
        self.state
            .range(&from, MESSAGES_END)
            .map(|pair| pair.map(|(key, _)| name_of(&key)))
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
            .range(EVENTS, &event_key(want.saturating_add(1)))
            .next_back()
        {
            Some(Ok((key, _))) => key,
            _ => event_key(want),
        };
        self.state.range(&start, EVENTS_END).flat_map(move |pair| {
            let chunk: Result<Vec<(u64, Event)>, DbError> = pair.and_then(|(key, value)| {
                let first = event_position(&key);
                let events: Vec<Event> = decode_events(&value)?;
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
        let first = match self.state.range(EVENTS, EVENTS_END).next() {
            Some(pair) => event_position(&pair?.0),
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
        self.listings(SUSPENDED)
    }

    /// The suppression list.
    pub fn suppressions(&self) -> Result<Vec<(String, Listing)>, DbError> {
        self.listings(SUPPRESSED)
    }

    pub fn is_suppressed(&self, address: &str) -> Result<bool, DbError> {
        self.state.contains(suppress_key(address))
    }

    /// The tenant of queued message `id`, if it has one.
    pub fn tenant_of(&self, id: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .state
            .get(tenant_of_key(id))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// A tenant's counters and standing, if any of its mail was ever counted or it was
    /// ever paused.
    pub fn tenant(&self, tenant: &str) -> Result<Option<TenantRecord>, DbError> {
        match self.state.get(tenant_key(tenant))? {
            Some(v) => Ok(Some(decode(&v, "tenant")?)),
            None => Ok(None),
        }
    }

    /// Every known tenant, by name.
    pub fn tenants(&self) -> Result<Vec<(String, TenantRecord)>, DbError> {
        self.state
            .scan_prefix(TENANTS)
            .map(|pair| {
                let (key, value) = pair?;
                Ok((name_of(&key), decode(&value, "tenant")?))
            })
            .collect()
    }

    /// Whether `address` is suppressed for `tenant`'s mail (the global list aside).
    pub fn is_suppressed_for(&self, tenant: &str, address: &str) -> Result<bool, DbError> {
        self.state.contains(tenant_suppress_key(tenant, address))
    }

    /// The addresses suppressed for one tenant's mail: (tenant, address, listing), by
    /// tenant, then address.
    pub fn tenant_suppressions(&self) -> Result<Vec<(String, String, Listing)>, DbError> {
        self.state
            .scan_prefix(TENANT_SUPPRESSED)
            .map(|pair| {
                let (key, value) = pair?;
                let (tenant, address) = split_tenant_suppress_key(&key)?;
                Ok((tenant, address, decode(&value, "listing")?))
            })
            .collect()
    }

    /// The MTA-STS policy cached for `domain`, expired or not (see
    /// [`StsPolicyRecord::is_live`](crate::sts::StsPolicyRecord::is_live)).
    pub fn sts_policy(&self, domain: &str) -> Result<Option<crate::sts::StsPolicyRecord>, DbError> {
        match self.state.get(sts_policy_key(domain))? {
            Some(v) => Ok(Some(decode(&v, "MTA-STS policy")?)),
            None => Ok(None),
        }
    }

    /// The key of the bounce tokens' HMAC, once the leader has set it.
    pub fn bounce_key(&self) -> Result<Option<Vec<u8>>, DbError> {
        self.state.get(BOUNCE_KEY)
    }

    /// The retained record of message `id` (written while bounce handling is on).
    pub fn tracked(&self, id: &str) -> Result<Option<Tracked>, DbError> {
        match self.state.get(tracked_key(id))? {
            Some(v) => Ok(Some(decode(&v, "tracked message")?)),
            None => Ok(None),
        }
    }

    /// The id of the oldest retained record, if any.
    pub fn oldest_tracked(&self) -> Result<Option<String>, DbError> {
        match self.state.scan_prefix(TRACKED).next() {
            Some(pair) => Ok(Some(name_of(&pair?.0))),
            None => Ok(None),
        }
    }

    fn listings(&self, prefix: &[u8]) -> Result<Vec<(String, Listing)>, DbError> {
        self.state
            .scan_prefix(prefix)
            .map(|pair| {
                let (key, value) = pair?;
                Ok((name_of(&key), decode(&value, "listing")?))
            })
            .collect()
    }
}

/// Locks the body files. Every method of `Bodies` leaves them consistent between calls,
/// so a lock poisoned by a panic elsewhere is taken over.
pub(super) fn lock(bodies: &std::sync::Mutex<Bodies>) -> std::sync::MutexGuard<'_, Bodies> {
    bodies.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn body_err(e: impl std::fmt::Display) -> DbError {
    DbError::corrupt(e)
}
