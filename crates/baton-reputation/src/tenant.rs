//! A tenant's verdict (the `[tenants]` keys of the README's "Configuration reference"): its
//! hard-bounce and complaint rates over a representative window, against warn and
//! pause thresholds, with no verdict below a minimum volume.
//!
//! Counts arrive as deltas and are kept in hourly buckets; the window is the newest
//! buckets, up to `window` old and at most `max_recipients` attempted recipients. The
//! state machine applies the deltas, so every node reaches the same verdict.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// `[tenants]`. Serializable: the state machine takes them from the log, so every node
/// judges with the same ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub bounce_warn_rate: f64,
    pub bounce_pause_rate: f64,
    /// No bounce verdict below this many attempted recipients.
    pub bounce_min_volume: u64,
    pub complaint_warn_rate: f64,
    pub complaint_pause_rate: f64,
    /// No complaint verdict below this many delivered recipients.
    pub complaint_min_volume: u64,
    pub window: Duration,
    /// The window holds at most this many attempted recipients (newest first).
    pub max_recipients: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            bounce_warn_rate: 0.05,
            bounce_pause_rate: 0.10,
            bounce_min_volume: 200,
            complaint_warn_rate: 0.001,
            complaint_pause_rate: 0.005,
            complaint_min_volume: 1000,
            window: Duration::from_secs(7 * 86_400),
            max_recipients: 10_000,
        }
    }
}

impl Thresholds {
    /// The warn and pause rates of `signal`.
    pub fn limits(&self, signal: Signal) -> (f64, f64) {
        match signal {
            Signal::HardBounce => (self.bounce_warn_rate, self.bounce_pause_rate),
            Signal::Complaint => (self.complaint_warn_rate, self.complaint_pause_rate),
        }
    }
}

/// Counts to add, for one tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Recipients a delivery was attempted to (with a final answer).
    pub attempted: u64,
    /// Of them, hard bounces (bad or inactive mailbox, bad domain; sync or async).
    pub hard: u64,
    pub delivered: u64,
    pub complaints: u64,
}

impl Counts {
    /// Hard bounces over attempted recipients (0 with none attempted).
    pub fn bounce_rate(&self) -> f64 {
        ratio(self.hard, self.attempted)
    }

    /// Complaints over delivered recipients (0 with none delivered).
    pub fn complaint_rate(&self) -> f64 {
        ratio(self.complaints, self.delivered)
    }

    pub fn add(&mut self, other: &Counts) {
        self.attempted += other.attempted;
        self.hard += other.hard;
        self.delivered += other.delivered;
        self.complaints += other.complaints;
    }
}

/// Which rate a verdict is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    HardBounce,
    Complaint,
}

/// Why: the rate, its numerator and denominator, and the limit it passed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    pub signal: Signal,
    pub count: u64,
    pub of: u64,
    pub limit: f64,
}

impl fmt::Display for Reason {
    /// `hard-bounce rate 12.5% (125/1000, limit 10%)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.signal {
            Signal::HardBounce => "hard-bounce",
            Signal::Complaint => "complaint",
        };
        let rate = ratio(self.count, self.of);
        write!(
            f,
            "{name} rate {} ({}/{}, limit {})",
            percent(rate),
            self.count,
            self.of,
            percent(self.limit)
        )
    }
}

fn ratio(count: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        count as f64 / of as f64
    }
}

/// `12.5%`, `10%`, `0.5%`.
fn percent(x: f64) -> String {
    let p = format!("{:.2}", x * 100.0);
    let p = p.trim_end_matches('0').trim_end_matches('.');
    format!("{p}%")
}

/// A tenant's standing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Standing {
    Good,
    Warned(Reason),
    /// Paused by the thresholds, or by an operator (`reason` is then `None`).
    Paused {
        reason: Option<Reason>,
        note: String,
    },
}

/// A change worth an event: `tenant_warning`, `tenant_paused`, `tenant_resumed`.
#[derive(Debug, Clone, PartialEq)]
pub enum TenantChange {
    Warned(Reason),
    Paused(Reason),
    Resumed,
}

/// One tenant's counters and standing (replicated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    /// (hour start, unix ms; counts), oldest first.
    buckets: VecDeque<(u64, Counts)>,
    pub standing: Standing,
}

const HOUR_MS: u64 = 3_600_000;

impl Default for Tenant {
    fn default() -> Self {
        Tenant {
            buckets: VecDeque::new(),
            standing: Standing::Good,
        }
    }
}

impl Tenant {
    /// Adds counts at `now_ms` and returns the change of standing they caused, if any.
    /// A paused tenant stays paused until [`Tenant::resume`].
    pub fn record(&mut self, now_ms: u64, counts: Counts, t: &Thresholds) -> Option<TenantChange> {
        let hour = now_ms / HOUR_MS * HOUR_MS;
        match self.buckets.back_mut() {
            Some((h, c)) if *h == hour => c.add(&counts),
            _ => self.buckets.push_back((hour, counts)),
        }
        let oldest = now_ms.saturating_sub(u64::try_from(t.window.as_millis()).unwrap_or(u64::MAX));
        while self
            .buckets
            .front()
            .is_some_and(|(h, _)| h.saturating_add(HOUR_MS) <= oldest)
        {
            self.buckets.pop_front();
        }
        // Buckets older than the newest `max_recipients` attempted add nothing.
        let mut seen = 0;
        let mut keep = 0;
        for (_, c) in self.buckets.iter().rev() {
            keep += 1;
            seen += c.attempted;
            if seen >= t.max_recipients {
                break;
            }
        }
        while self.buckets.len() > keep {
            self.buckets.pop_front();
        }
        if matches!(self.standing, Standing::Paused { .. }) {
            return None;
        }
        let verdict = self.verdict(t);
        match (&self.standing, verdict) {
            (_, Verdict::Pause(r)) => {
                self.standing = Standing::Paused {
                    reason: Some(r),
                    note: r.to_string(),
                };
                Some(TenantChange::Paused(r))
            }
            (Standing::Good, Verdict::Warn(r)) => {
                self.standing = Standing::Warned(r);
                Some(TenantChange::Warned(r))
            }
            (Standing::Warned(_), Verdict::Good) => {
                self.standing = Standing::Good;
                None
            }
            _ => None,
        }
    }

    /// The start of the oldest hour in the window (unix ms), if it holds any.
    pub fn window_start_ms(&self) -> Option<u64> {
        self.buckets.front().map(|(h, _)| *h)
    }

    /// The totals in the window.
    pub fn totals(&self) -> Counts {
        let mut total = Counts::default();
        for (_, c) in &self.buckets {
            total.add(c);
        }
        total
    }

    /// What the counts say now (pausing beats warning; hard bounces beat complaints).
    pub fn verdict(&self, t: &Thresholds) -> Verdict {
        let c = self.totals();
        let mut worst = Verdict::Good;
        let checks = [
            (
                Signal::HardBounce,
                c.hard,
                c.attempted,
                t.bounce_min_volume,
                t.bounce_warn_rate,
                t.bounce_pause_rate,
            ),
            (
                Signal::Complaint,
                c.complaints,
                c.delivered,
                t.complaint_min_volume,
                t.complaint_warn_rate,
                t.complaint_pause_rate,
            ),
        ];
        for (signal, count, of, min, warn, pause) in checks {
            if of < min.max(1) {
                continue;
            }
            let rate = count as f64 / of as f64;
            let reason = |limit| Reason {
                signal,
                count,
                of,
                limit,
            };
            if rate >= pause {
                return Verdict::Pause(reason(pause));
            }
            if rate >= warn && worst == Verdict::Good {
                worst = Verdict::Warn(reason(warn));
            }
        }
        worst
    }

    /// An operator pauses the tenant.
    pub fn pause(&mut self, note: String) {
        self.standing = Standing::Paused { reason: None, note };
    }

    /// An operator lifts a pause: a fresh window starts.
    pub fn resume(&mut self) -> Option<TenantChange> {
        let was_paused = matches!(self.standing, Standing::Paused { .. });
        self.buckets.clear();
        self.standing = Standing::Good;
        was_paused.then_some(TenantChange::Resumed)
    }

    pub fn paused(&self) -> bool {
        matches!(self.standing, Standing::Paused { .. })
    }
}

/// What the counts say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Good,
    Warn(Reason),
    Pause(Reason),
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000 * HOUR_MS;

    fn sent(attempted: u64, hard: u64) -> Counts {
        Counts {
            attempted,
            hard,
            delivered: attempted - hard,
            complaints: 0,
        }
    }

    #[test]
    fn no_verdict_below_the_minimum_volume() {
        let t = Thresholds::default();
        let mut x = Tenant::default();
        assert_eq!(x.record(T0, sent(199, 100), &t), None);
        assert_eq!(x.standing, Standing::Good);
        let change = x.record(T0, sent(1, 0), &t);
        let Some(TenantChange::Paused(r)) = change else {
            panic!("{change:?}")
        };
        assert_eq!(r.to_string(), "hard-bounce rate 50% (100/200, limit 10%)");
    }

    #[test]
    fn warn_then_pause_then_resume_with_a_fresh_window() {
        let t = Thresholds::default();
        let mut x = Tenant::default();
        let change = x.record(T0, sent(1000, 60), &t);
        assert!(
            matches!(change, Some(TenantChange::Warned(_))),
            "{change:?}"
        );
        // Warned once, not at every delta.
        assert_eq!(x.record(T0, sent(10, 1), &t), None);
        let change = x.record(T0 + 1000, sent(400, 80), &t);
        let Some(TenantChange::Paused(r)) = change else {
            panic!("{change:?}")
        };
        assert_eq!(r.to_string(), "hard-bounce rate 10% (141/1410, limit 10%)");
        assert!(x.paused());
        // Paused stays paused, whatever comes.
        assert_eq!(x.record(T0 + 2000, sent(10_000, 0), &t), None);
        assert!(x.paused());
        assert_eq!(x.resume(), Some(TenantChange::Resumed));
        assert_eq!(x.totals(), Counts::default());
        assert_eq!(x.record(T0 + 3000, sent(300, 0), &t), None);
    }

    #[test]
    fn complaints_count_against_delivered() {
        let t = Thresholds::default();
        let mut x = Tenant::default();
        let c = Counts {
            attempted: 1000,
            hard: 0,
            delivered: 1000,
            complaints: 5,
        };
        let change = x.record(T0, c, &t);
        let Some(TenantChange::Paused(r)) = change else {
            panic!("{change:?}")
        };
        assert_eq!(r.to_string(), "complaint rate 0.5% (5/1000, limit 0.5%)");
    }

    #[test]
    fn the_window_is_the_newest_recipients_and_days() {
        let t = Thresholds {
            max_recipients: 1000,
            ..Thresholds::default()
        };
        let mut x = Tenant::default();
        // A bad hour long ago ...
        x.record(T0, sent(100, 9), &t);
        // ... then 1000 clean recipients an hour later push it out of the window.
        x.record(T0 + HOUR_MS, sent(1000, 0), &t);
        assert_eq!(x.totals().hard, 0);
        // And buckets older than the window go.
        let mut y = Tenant::default();
        y.record(T0, sent(150, 15), &t);
        y.record(T0 + 8 * 24 * HOUR_MS, sent(100, 0), &t);
        assert_eq!(y.totals(), sent(100, 0));
    }

    #[test]
    fn an_operator_pause_is_lifted_by_resume() {
        let mut x = Tenant::default();
        x.pause("asked by the customer".into());
        assert!(x.paused());
        assert_eq!(x.record(T0, sent(1000, 0), &Thresholds::default()), None);
        assert_eq!(x.resume(), Some(TenantChange::Resumed));
        assert_eq!(x.resume(), None);
    }
}
