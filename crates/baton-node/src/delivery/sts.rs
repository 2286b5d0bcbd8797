//! MTA-STS (RFC 8461) on the node: which policy holds for a domain its owner delivers.
//!
//! The policy lives in the replicated state (`Request::SetStsPolicy`, read with
//! `QueueReader::sts_policy`): whoever owns the domain, now or after a failover, reads
//! the same one. The owner looks up `_mta-sts.DOMAIN` (at most every
//! [`TXT_RECHECK_MS`] per domain) and fetches the policy file when the record's id
//! differs from the cached policy's, when half of its `max_age` has passed, or when none
//! is cached; a fetched policy is committed before it is used (`mode: none` drops the
//! cached one). A failed fetch, a failed lookup or a missing TXT record keeps the cached
//! policy until it expires (RFC 8461 §5.1), so blocking the fetch downgrades nothing.
//! A failed fetch is tried again after [`FETCH_RETRY_MS`].

use super::DeliveryContext;
use crate::metrics as m;
use baton_delivery::mta_sts::Mode;
use baton_delivery::mta_sts_fetch;
use baton_queue::clock::now_ms;
use baton_queue::sts::StsPolicyRecord;
use baton_queue::types::Request;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A domain's `_mta-sts` TXT record is looked up at most this often while a policy is
/// cached (the resolver caches it for up to 5 minutes anyway).
pub const TXT_RECHECK_MS: u64 = 60 * 1000;
/// After a failed policy fetch, the next try waits this long.
pub const FETCH_RETRY_MS: u64 = 60 * 1000;

/// What this node knows of each domain's policy besides the state: when it last looked.
#[derive(Default)]
pub struct StsPolicies {
    /// `delivery.mta_sts`.
    pub enabled: bool,
    domains: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Checked>>>>,
}

#[derive(Default)]
struct Checked {
    /// When the TXT record was last looked up, and the last failed fetch (unix ms).
    txt_ms: u64,
    failed_fetch_ms: u64,
}

impl StsPolicies {
    pub fn new(enabled: bool) -> StsPolicies {
        StsPolicies {
            enabled,
            domains: Mutex::default(),
        }
    }

    fn domain(&self, domain: &str) -> Arc<tokio::sync::Mutex<Checked>> {
        self.domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(domain.to_string())
            .or_default()
            .clone()
    }
}

/// The policy that holds for `domain` now (`None`: none, or MTA-STS is off), refreshed
/// first when due. Only the domain's owner calls this (its workers, before opening a
/// connection); one refresh per domain at a time.
pub async fn policy(ctx: &DeliveryContext, domain: &str) -> Option<StsPolicyRecord> {
    if !ctx.sts.enabled || ctx.router.uses_smarthost() || domain.starts_with('[') {
        return None;
    }
    let domain = domain.to_ascii_lowercase();
    let slot = ctx.sts.domain(&domain);
    let mut checked = slot.lock().await;
    let now = now_ms();
    let cached = match ctx.reader.sts_policy(&domain) {
        Ok(p) => p.filter(|p| p.is_live(now)),
        Err(e) => {
            tracing::warn!(%domain, error = %e, "cached MTA-STS policy unreadable");
            None
        }
    };
    if cached.as_ref().is_some_and(|c| !c.refresh_due(now))
        && now < checked.txt_ms.saturating_add(TXT_RECHECK_MS)
    {
        return cached;
    }
    checked.txt_ms = now;
    let id = match mta_sts_fetch::txt_id(&ctx.router, &domain).await {
        Ok(Some(id)) => id,
        Ok(None) => return cached,
        Err(e) => {
            tracing::info!(%domain, error = %e, "MTA-STS record not read; the cached policy, if any, holds");
            return cached;
        }
    };
    let due = cached
        .as_ref()
        .is_none_or(|c| c.id != id || c.refresh_due(now));
    if !due || now < checked.failed_fetch_ms.saturating_add(FETCH_RETRY_MS) {
        return cached;
    }
    let policy = match mta_sts_fetch::fetch_policy(&ctx.router, &ctx.tls, &domain).await {
        Ok(p) => p,
        Err(e) => {
            checked.failed_fetch_ms = now;
            metrics::counter!(m::MTA_STS_FETCHES, "result" => "failed").increment(1);
            tracing::warn!(%domain, error = %e, cached = cached.is_some(), "MTA-STS policy not fetched; the cached policy, if any, holds");
            return cached;
        }
    };
    metrics::counter!(m::MTA_STS_FETCHES, "result" => "ok").increment(1);
    let record = (policy.mode != Mode::None).then(|| StsPolicyRecord {
        id: id.clone(),
        mode: policy.mode.as_str().to_string(),
        mx: policy.mx.clone(),
        max_age_s: policy.max_age,
        fetched_ms: now,
        expires_ms: now.saturating_add(policy.max_age.saturating_mul(1000)),
    });
    tracing::info!(%domain, %id, mode = %policy.mode, mx = ?policy.mx, max_age = policy.max_age, "MTA-STS policy fetched");
    let request = Request::SetStsPolicy {
        domain: domain.clone(),
        policy: record.clone(),
    };
    if let Err(e) = ctx.writer.write_applied(request).await {
        // Used anyway: the next refresh commits it again.
        tracing::warn!(%domain, error = %e, "MTA-STS policy not committed yet");
        checked.txt_ms = 0;
    }
    record
}
