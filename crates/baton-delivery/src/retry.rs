//! When to try again, and when to give up.

use std::time::Duration;

/// The retry policy from `[delivery]`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Waits after the 1st, 2nd, ... failed attempt; the last repeats.
    pub intervals: Vec<Duration>,
    /// Age after which a message bounces as expired.
    pub max_age: Duration,
}

impl RetryPolicy {
    /// The wait after `attempts` failed attempts (counting the one just made).
    pub fn delay(&self, attempts: u32) -> Duration {
        let i = (attempts.max(1) - 1) as usize;
        self.intervals
            .get(i)
            .or(self.intervals.last())
            .copied()
            .unwrap_or(Duration::from_secs(300))
    }

    /// Whether a message received at `received_ms` has run out of time at `now_ms`.
    pub fn expired(&self, received_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(received_ms) >= self.max_age.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_interval_repeats() {
        let p = RetryPolicy {
            intervals: vec![Duration::from_secs(60), Duration::from_secs(300)],
            max_age: Duration::from_secs(3600),
        };
        assert_eq!(p.delay(1), Duration::from_secs(60));
        assert_eq!(p.delay(2), Duration::from_secs(300));
        assert_eq!(p.delay(9), Duration::from_secs(300));
        assert!(!p.expired(1000, 1000 + 3_599_999));
        assert!(p.expired(1000, 1000 + 3_600_000));
    }
}
