//! The one place Baton reads the system clock (`clippy.toml` bans `std::time::Instant` and
//! `SystemTime::now` everywhere else).
//!
//! - [`now_ms`] is wall-clock time in unix milliseconds: the time log commands carry (a
//!   message's arrival, an outcome's next attempt, an operator's change). Nothing reads
//!   it while applying an entry: replicas use the time in the entry, so they agree.
//! - Everything that measures an interval on one node (leases, timeouts, retry timers,
//!   housekeeping) uses `tokio::time::Instant`, so tests can pause and advance it.
#![allow(clippy::disallowed_methods)]

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time now, in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
