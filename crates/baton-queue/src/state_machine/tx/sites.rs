//! What sites add to a transaction: a domain's move to its site, a site's events, and
//! the suppression of hard-bounced addresses.

use super::super::keys::*;
use super::{Meta, SiteOp, Tx};
use crate::db::DbError;
use crate::types::{AutoSuppression, Event, Listing, NodeId, Remote, SiteEvent, SiteOf};

impl Tx<'_> {
    pub(super) fn site_event(&mut self, site: &str, e: &SiteEvent, node: NodeId) {
        self.events.push(Event {
            time_ms: e.time_ms,
            kind: e.kind,
            id: String::new(),
            recipient: String::new(),
            domain: String::new(),
            sender: String::new(),
            remote: Remote::default(),
            reply: e.reply.clone(),
            node,
            site: site.to_string(),
            tenant: String::new(),
            rule: e.rule.clone(),
            detail: e.detail.clone(),
        });
    }

    /// A hard bounce: the address goes on the suppression list, unless it is there.
    pub(super) fn auto_suppress(
        &mut self,
        s: &AutoSuppression,
        now_ms: u64,
    ) -> Result<(), DbError> {
        let key = suppress_key(&s.address);
        if self.state.contains(&key)? {
            return Ok(());
        }
        let listing = Listing {
            reason: format!("{}: {}", s.category, s.reply),
            since_ms: now_ms,
        };
        self.batch.insert(key, encode(&listing));
        Ok(())
    }

    /// [`Request::SetSite`]: whether it applied.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn set_site(
        &mut self,
        domain: &str,
        site: &str,
        base: u64,
        by: NodeId,
        resolved_ms: u64,
        index: u64,
        meta: &Meta,
    ) -> Result<bool, DbError> {
        let key = site_of_key(domain);
        let current: Option<SiteOf> = match self.state.get(&key)? {
            Some(v) => Some(decode(&v, "site")?),
            None => None,
        };
        let (current_index, current_key) = match &current {
            Some(c) => (c.index, c.site.as_str()),
            None => (0, domain),
        };
        if current_index != base || !meta.ownership.may_deliver(by, current_key) {
            return Ok(false);
        }
        let of = SiteOf {
            site: site.to_string(),
            index,
            resolved_ms,
        };
        self.batch.insert(key, encode(&of));
        self.site_ops.push(SiteOp::Map(domain.to_string(), of));
        Ok(true)
    }
}
