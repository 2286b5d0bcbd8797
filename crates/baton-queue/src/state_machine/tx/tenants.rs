//! What entries do to tenants: the counts of each delivery outcome added to its tenant's
//! window and judged there (`tenant_warning`, `tenant_paused`), an operator's pause and
//! resume, and addresses suppressed for one tenant's mail. The index holds a paused
//! tenant's deliveries aside ([`IndexOp::Pause`]) until it is resumed.

use super::{IndexOp, Tx};
use crate::db::DbError;
use crate::state_machine::keys::*;
use crate::types::{AutoSuppression, Event, EventKind, Listing, NodeId, Remote, TenantRecord};
use baton_reputation::tenant::{Counts, Reason, Signal, Standing, TenantChange, Thresholds};

/// What one entry's outcomes add to one tenant.
#[derive(Default)]
pub(super) struct Delta {
    counts: Counts,
    /// The node of the last outcome counted.
    node: NodeId,
    /// The reply of the last hard bounce counted.
    reply: String,
}

impl Delta {
    pub(super) fn add(&mut self, counts: Counts, node: NodeId, hard: &[AutoSuppression]) {
        self.counts.add(&counts);
        self.node = node;
        if counts.hard > 0
            && let Some(s) = hard.last()
        {
            self.reply = s.reply.clone();
        }
    }
}

/// The `[tenants]` key whose limit a verdict passed, as the event's rule.
fn rule(signal: Signal, pause: bool) -> &'static str {
    match (signal, pause) {
        (Signal::HardBounce, false) => "tenants.bounce_warn_rate",
        (Signal::HardBounce, true) => "tenants.bounce_pause_rate",
        (Signal::Complaint, false) => "tenants.complaint_warn_rate",
        (Signal::Complaint, true) => "tenants.complaint_pause_rate",
    }
}

/// The rule of events an operator caused.
const OPERATOR: &str = "operator";

impl Tx<'_> {
    /// The tenant of message `id`, if it has one.
    pub(super) fn tenant_of(&self, id: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .state
            .get(&tenant_of_key(id))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn get_tenant(&self, tenant: &str) -> Result<Option<TenantRecord>, DbError> {
        match self.state.get(&tenant_key(tenant))? {
            Some(v) => Ok(Some(decode(&v, "tenant")?)),
            None => Ok(None),
        }
    }

    fn put_tenant(&mut self, tenant: &str, record: &TenantRecord) {
        self.batch.insert(tenant_key(tenant), encode(record));
    }

    #[allow(clippy::too_many_arguments)]
    fn tenant_event(
        &mut self,
        kind: EventKind,
        tenant: &str,
        rule: &str,
        detail: &str,
        reply: &str,
        node: NodeId,
        time_ms: u64,
    ) {
        self.events.push(Event {
            time_ms,
            kind,
            id: String::new(),
            recipient: String::new(),
            domain: String::new(),
            sender: String::new(),
            remote: Remote::default(),
            reply: reply.to_string(),
            node,
            site: String::new(),
            tenant: tenant.to_string(),
            rule: rule.to_string(),
            detail: detail.to_string(),
        });
    }

    /// Adds `delta` to `tenant`'s window at `now_ms` and judges the window by
    /// `thresholds`: a warning once, a pause (its mail held) past the pause rate.
    pub(super) fn count_tenant(
        &mut self,
        tenant: &str,
        delta: Delta,
        now_ms: u64,
        thresholds: &Thresholds,
    ) -> Result<(), DbError> {
        let mut record = self.get_tenant(tenant)?.unwrap_or_default();
        let was = record.tenant.standing.clone();
        let change = record.tenant.record(now_ms, delta.counts, thresholds);
        record.thresholds = Some(thresholds.clone());
        let event = |tx: &mut Tx, kind: EventKind, rule: &str, detail: &str| {
            tx.tenant_event(kind, tenant, rule, detail, &delta.reply, delta.node, now_ms);
        };
        match change {
            Some(TenantChange::Warned(r)) => {
                event(
                    self,
                    EventKind::TenantWarning,
                    rule(r.signal, false),
                    &r.to_string(),
                );
                record.since_ms = now_ms;
            }
            Some(TenantChange::Paused(r)) => {
                if was == Standing::Good {
                    // Past the pause rate is past the warn rate too: both are said.
                    let warn = Reason {
                        limit: thresholds.limits(r.signal).0,
                        ..r
                    };
                    let detail = warn.to_string();
                    event(
                        self,
                        EventKind::TenantWarning,
                        rule(r.signal, false),
                        &detail,
                    );
                }
                let note = r.to_string();
                event(self, EventKind::TenantPaused, rule(r.signal, true), &note);
                self.index_ops
                    .push(IndexOp::Pause(tenant.to_string(), Some(note)));
                record.since_ms = now_ms;
            }
            // Counts never resume a tenant.
            Some(TenantChange::Resumed) => {}
            // A warning that lapsed as the window moved on.
            None if record.tenant.standing != was => record.since_ms = now_ms,
            None => {}
        }
        self.put_tenant(tenant, &record);
        Ok(())
    }

    /// [`Request::PauseTenant`](crate::types::Request::PauseTenant): whether it changed
    /// anything (a paused tenant keeps its reason).
    pub(super) fn pause_tenant(
        &mut self,
        tenant: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<bool, DbError> {
        let mut record = self.get_tenant(tenant)?.unwrap_or_default();
        if record.tenant.paused() {
            return Ok(false);
        }
        let note = match reason.trim() {
            "" => "paused by an operator".to_string(),
            r => r.to_string(),
        };
        record.tenant.pause(note.clone());
        record.since_ms = now_ms;
        self.tenant_event(
            EventKind::TenantPaused,
            tenant,
            OPERATOR,
            &note,
            "",
            0,
            now_ms,
        );
        self.index_ops
            .push(IndexOp::Pause(tenant.to_string(), Some(note)));
        self.put_tenant(tenant, &record);
        Ok(true)
    }

    /// [`Request::ResumeTenant`](crate::types::Request::ResumeTenant): whether the
    /// tenant was paused. Its window starts afresh and its held mail is due again.
    pub(super) fn resume_tenant(&mut self, tenant: &str, now_ms: u64) -> Result<bool, DbError> {
        let Some(mut record) = self.get_tenant(tenant)? else {
            return Ok(false);
        };
        if record.tenant.resume().is_none() {
            return Ok(false);
        }
        record.since_ms = now_ms;
        let detail = "resumed by an operator: a fresh window starts";
        self.tenant_event(
            EventKind::TenantResumed,
            tenant,
            OPERATOR,
            detail,
            "",
            0,
            now_ms,
        );
        self.index_ops
            .push(IndexOp::Pause(tenant.to_string(), None));
        self.put_tenant(tenant, &record);
        Ok(true)
    }

    /// Suppresses `address` for `tenant`'s mail; false if it was (the reason is updated).
    pub(super) fn suppress_for_tenant(
        &mut self,
        tenant: &str,
        address: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<bool, DbError> {
        let key = tenant_suppress_key(tenant, address);
        let changed = !self.state.contains(&key)?;
        let listing = Listing {
            reason: reason.to_string(),
            since_ms: now_ms,
        };
        self.batch.insert(key, encode(&listing));
        Ok(changed)
    }

    pub(super) fn unsuppress_for_tenant(
        &mut self,
        tenant: &str,
        address: &str,
    ) -> Result<bool, DbError> {
        let key = tenant_suppress_key(tenant, address);
        let changed = self.state.contains(&key)?;
        self.batch.remove(key);
        Ok(changed)
    }
}
