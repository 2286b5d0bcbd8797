//! The replicated MTA-STS policy cache (RFC 8461): what a domain's owner fetched, kept in
//! the state (`z/<domain>`) so that every node, and the next owner after a failover,
//! enforces the same policy without fetching it, and an attacker who blocks the fetch
//! cannot downgrade it before it expires.

use serde::{Deserialize, Serialize};

/// One domain's policy as fetched, with the id of the TXT record it was fetched for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsPolicyRecord {
    /// The `id=` of the `_mta-sts` TXT record when the policy was fetched.
    pub id: String,
    /// `enforce` or `testing` (`none` is never stored: it drops the record).
    pub mode: String,
    /// The `mx:` patterns, lower-cased (`*.example.com` matches one leftmost label).
    pub mx: Vec<String>,
    /// `max_age`, seconds.
    pub max_age_s: u64,
    /// When it was fetched and when it expires (`fetched_ms + max_age`), unix ms, by the
    /// fetching node's clock.
    pub fetched_ms: u64,
    pub expires_ms: u64,
}

impl StsPolicyRecord {
    /// Whether it still holds at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_ms
    }

    /// Whether it should be fetched again at `now_ms` (half of `max_age` has passed).
    pub fn refresh_due(&self, now_ms: u64) -> bool {
        now_ms
            >= self
                .fetched_ms
                .saturating_add(self.max_age_s.saturating_mul(1000) / 2)
    }
}
