//! The throttle of one destination site (the `[shaping]` keys of the README's
//! "Configuration reference"): a rate and a connection count that go down when the site says
//! so and climb back while it stays quiet, and a suspension with a doubling cool-down
//! that ends in one probe message.
//!
//! Every input carries its time (unix ms); nothing here reads a clock. The part of
//! [`Site`] that must survive a fail-over ([`SiteState`]) is serialisable, so the
//! owner can commit each transition and a new owner resumes where the old one was.
//! What is only evidence for the next decision (recent deliveries) stays local.

use crate::category::Category;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// The site a domain belongs to: the name of the first configured site
/// one of whose `mx_suffix`es ends one of the domain's MX host names, else the MX host
/// names, lowercased without a final dot, sorted, deduplicated and joined with commas.
/// `sites` is `(name, suffixes)` in configuration order.
pub fn site_name(mx_hosts: &[String], sites: &[(String, Vec<String>)]) -> String {
    let mut hosts: Vec<String> = mx_hosts
        .iter()
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    for (name, suffixes) in sites {
        let matches = suffixes.iter().any(|suffix| {
            let suffix = suffix.trim_end_matches('.').to_ascii_lowercase();
            let bare = suffix.trim_start_matches('.');
            hosts
                .iter()
                .any(|h| h == bare || h.ends_with(&format!(".{bare}")))
        });
        if matches {
            return name.clone();
        }
    }
    hosts.sort();
    hosts.dedup();
    hosts.join(",")
}

/// A site's limits and how fast they move (`[shaping]`, or a `[[shaping.site]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Shaping {
    /// Outbound connections at most.
    pub connections: u32,
    /// Messages per second at most; `None`: no ceiling.
    pub message_rate: Option<f64>,
    /// `rate_limited`: the rate becomes the delivered rate × this (a rule may say
    /// otherwise).
    pub decrease_factor: f64,
    /// At most one decrease per this, however many signals arrive at once.
    pub min_decrease_interval: Duration,
    /// A quiet interval after which the rate grows.
    pub increase_interval: Duration,
    /// ... by this share of the rate before the first decrease.
    pub increase_step: f64,
    /// Never below this (messages per second).
    pub min_rate: f64,
    /// First suspension; doubled per repeat within 24 h.
    pub suspend: Duration,
    pub max_suspend: Duration,
}

impl Default for Shaping {
    fn default() -> Self {
        Shaping {
            connections: 10,
            message_rate: None,
            decrease_factor: 0.5,
            min_decrease_interval: Duration::from_secs(30),
            increase_interval: Duration::from_secs(60),
            increase_step: 0.05,
            min_rate: 1.0 / 60.0,
            suspend: Duration::from_secs(15 * 60),
            max_suspend: Duration::from_secs(4 * 3600),
        }
    }
}

/// What a site does now.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Mode {
    /// At its configured limits.
    Normal,
    /// Slowed down (rate or connections below the configured limits).
    Throttled,
    /// No connection until `until_ms`.
    Suspended { until_ms: u64 },
    /// The suspension ended: one message may go, and its answer decides.
    Probing,
}

/// The part of a site's throttle that is replicated: a new owner continues from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteState {
    pub mode: Mode,
    /// Messages per second allowed; `None`: no limit.
    pub rate: Option<f64>,
    pub connections: u32,
    /// The delivered rate before the first decrease: what increases are a share of.
    pub peak: f64,
    pub last_decrease_ms: u64,
    /// The last rate or connection signal, or increase.
    pub last_change_ms: u64,
    pub last_connection_change_ms: u64,
    /// Starts of the suspensions within the last 24 h (for doubling).
    pub suspensions_ms: Vec<u64>,
    /// The rate to resume from (25% of it) after a probe.
    pub resume_from: f64,
}

/// A change worth an event (the event kinds), with the numbers to show.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// `throttled`: rate or connections went down.
    Throttled { rate: Option<f64>, connections: u32 },
    /// `throttle_relaxed`: they went up (`normal`: back at the configured limits).
    Relaxed {
        rate: Option<f64>,
        connections: u32,
        normal: bool,
    },
    /// `site_suspended` until then.
    Suspended { until_ms: u64 },
    /// `site_probe`: one message may go now.
    Probe,
    /// `site_resumed` at this rate.
    Resumed { rate: Option<f64> },
}

/// A site's throttle, with the local evidence it decides on.
#[derive(Debug, Clone)]
pub struct Site {
    pub state: SiteState,
    cfg: Shaping,
    /// Deliveries per second (unix second, count), newest last, within one
    /// `increase_interval`.
    delivered: VecDeque<(u64, u32)>,
}

const DAY_MS: u64 = 86_400_000;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Site {
    /// A site at its configured limits.
    pub fn new(cfg: Shaping) -> Site {
        let state = SiteState {
            mode: Mode::Normal,
            rate: cfg.message_rate,
            connections: cfg.connections.max(1),
            peak: 0.0,
            last_decrease_ms: 0,
            last_change_ms: 0,
            last_connection_change_ms: 0,
            suspensions_ms: Vec::new(),
            resume_from: 0.0,
        };
        Site::resume_state(cfg, state)
    }

    /// A site continuing from replicated state (a new owner after a fail-over).
    pub fn resume_state(cfg: Shaping, state: SiteState) -> Site {
        Site {
            state,
            cfg,
            delivered: VecDeque::new(),
        }
    }

    pub fn shaping(&self) -> &Shaping {
        &self.cfg
    }

    /// Messages per second allowed now (`None`: no limit). Zero while suspended.
    pub fn rate(&self) -> Option<f64> {
        match self.state.mode {
            Mode::Suspended { .. } => Some(0.0),
            _ => self.state.rate,
        }
    }

    /// Connections allowed now: none while suspended, one while probing.
    pub fn connections(&self) -> u32 {
        match self.state.mode {
            Mode::Suspended { .. } => 0,
            Mode::Probing => 1,
            _ => self.state.connections,
        }
    }

    /// While probing, only one message may be in flight.
    pub fn probing(&self) -> bool {
        self.state.mode == Mode::Probing
    }

    /// The delivered rate over the last `increase_interval` (messages per second), or
    /// over the time since the first delivery this node saw when that is shorter (a
    /// site that started sending moments ago is not averaged with the quiet before).
    pub fn delivered_rate(&self, now_ms: u64) -> f64 {
        let window = ms(self.cfg.increase_interval).max(1000);
        let from = now_ms.saturating_sub(window) / 1000;
        let mut first = None;
        let mut n: u32 = 0;
        for (s, count) in self.delivered.iter().filter(|(s, _)| *s >= from) {
            first.get_or_insert(*s);
            n += count;
        }
        let span = first.map_or(window, |s| {
            now_ms.saturating_sub(s * 1000).clamp(1000, window)
        });
        f64::from(n) * 1000.0 / span as f64
    }

    /// A message was delivered (or accepted by the site, whatever happened to its
    /// recipients). Ends a probe.
    pub fn delivered(&mut self, now_ms: u64) -> Option<Transition> {
        let sec = now_ms / 1000;
        match self.delivered.back_mut() {
            Some((s, n)) if *s == sec => *n += 1,
            _ => self.delivered.push_back((sec, 1)),
        }
        let keep_from = now_ms.saturating_sub(ms(self.cfg.increase_interval).max(1000)) / 1000;
        while self.delivered.front().is_some_and(|(s, _)| *s < keep_from) {
            self.delivered.pop_front();
        }
        if self.state.mode == Mode::Probing {
            return Some(self.resume_after_probe(now_ms));
        }
        None
    }

    /// A classified reply from the site. `factor` and `suspend` come from the rule
    /// that matched, when it says.
    pub fn signal(
        &mut self,
        now_ms: u64,
        category: Category,
        factor: Option<f64>,
        suspend: Option<Duration>,
    ) -> Option<Transition> {
        match category {
            Category::Blocklisted => Some(self.suspend(now_ms, suspend)),
            Category::RateLimited => {
                if self.state.mode == Mode::Probing {
                    return Some(self.suspend(now_ms, suspend));
                }
                self.decrease(now_ms, factor.unwrap_or(self.cfg.decrease_factor))
            }
            Category::ConnectionLimited => {
                if self.state.mode == Mode::Probing {
                    return Some(self.suspend(now_ms, suspend));
                }
                self.halve_connections(now_ms)
            }
            // A probe answered about a recipient or the message: the site talks again.
            c if self.state.mode == Mode::Probing && c != Category::Transport => {
                Some(self.resume_after_probe(now_ms))
            }
            _ => None,
        }
    }

    /// Time passing: suspensions end in a probe; quiet intervals give back rate and
    /// connections.
    pub fn tick(&mut self, now_ms: u64) -> Option<Transition> {
        match self.state.mode {
            Mode::Suspended { until_ms } if now_ms >= until_ms => {
                self.state.mode = Mode::Probing;
                Some(Transition::Probe)
            }
            Mode::Throttled => self.increase(now_ms),
            _ => None,
        }
    }

    /// An operator ends a suspension or throttle: the configured limits again.
    pub fn resume(&mut self, now_ms: u64) -> Transition {
        self.state.mode = Mode::Normal;
        self.state.rate = self.cfg.message_rate;
        self.state.connections = self.cfg.connections.max(1);
        self.state.last_change_ms = now_ms;
        Transition::Resumed {
            rate: self.state.rate,
        }
    }

    fn decrease(&mut self, now_ms: u64, factor: f64) -> Option<Transition> {
        let s = &mut self.state;
        let since = now_ms.saturating_sub(s.last_decrease_ms);
        if s.last_decrease_ms != 0 && since < ms(self.cfg.min_decrease_interval) {
            return None;
        }
        let measured = self.delivered_rate(now_ms);
        let s = &mut self.state;
        let mut r0 = match (s.rate, self.cfg.message_rate) {
            (Some(r), _) => measured.min(r),
            (None, Some(ceiling)) => measured.min(ceiling),
            (None, None) => measured,
        };
        if r0 <= 0.0 {
            r0 = s.rate.unwrap_or(self.cfg.min_rate);
        }
        if s.mode == Mode::Normal {
            s.peak = r0;
        }
        s.peak = s.peak.max(self.cfg.min_rate);
        let factor = factor.clamp(0.01, 0.99);
        s.rate = Some((r0 * factor).max(self.cfg.min_rate));
        s.mode = Mode::Throttled;
        s.last_decrease_ms = now_ms;
        s.last_change_ms = now_ms;
        Some(Transition::Throttled {
            rate: s.rate,
            connections: s.connections,
        })
    }

    fn halve_connections(&mut self, now_ms: u64) -> Option<Transition> {
        let measured = self.delivered_rate(now_ms).max(self.cfg.min_rate);
        let s = &mut self.state;
        if s.last_connection_change_ms != 0
            && now_ms.saturating_sub(s.last_connection_change_ms)
                < ms(self.cfg.min_decrease_interval)
        {
            return None;
        }
        let halved = (s.connections / 2).max(1);
        s.last_connection_change_ms = now_ms;
        s.last_change_ms = now_ms;
        if halved == s.connections {
            return None;
        }
        s.connections = halved;
        if s.mode == Mode::Normal {
            s.mode = Mode::Throttled;
            s.peak = measured;
        }
        Some(Transition::Throttled {
            rate: s.rate,
            connections: s.connections,
        })
    }

    fn increase(&mut self, now_ms: u64) -> Option<Transition> {
        let interval = ms(self.cfg.increase_interval).max(1);
        let delivered_rate = self.delivered_rate(now_ms);
        let s = &mut self.state;
        if now_ms.saturating_sub(s.last_change_ms) < interval {
            return None;
        }
        let mut changed = false;
        if let Some(rate) = s.rate
            && self.cfg.message_rate.is_none_or(|c| rate < c)
        {
            // Grow only when the site is being used: at least half the allowed rate,
            // or ten messages in the interval.
            let used = delivered_rate * interval as f64 / 1000.0;
            let wanted = (rate * interval as f64 / 1000.0 / 2.0).min(10.0);
            if used >= wanted {
                let step = (self.cfg.increase_step * s.peak).max(self.cfg.min_rate);
                let grown = rate + step;
                s.rate = match self.cfg.message_rate {
                    Some(c) if grown >= c => Some(c),
                    None if grown >= 2.0 * s.peak => None,
                    _ => Some(grown),
                };
                changed = true;
            }
        }
        // A connection back per two quiet intervals.
        if s.connections < self.cfg.connections
            && now_ms.saturating_sub(s.last_connection_change_ms) >= 2 * interval
        {
            s.connections += 1;
            s.last_connection_change_ms = now_ms;
            changed = true;
        }
        if !changed {
            return None;
        }
        s.last_change_ms = now_ms;
        let normal = s.rate == self.cfg.message_rate && s.connections >= self.cfg.connections;
        if normal {
            s.mode = Mode::Normal;
        }
        Some(Transition::Relaxed {
            rate: s.rate,
            connections: s.connections,
            normal,
        })
    }

    fn suspend(&mut self, now_ms: u64, rule: Option<Duration>) -> Transition {
        let s = &mut self.state;
        s.suspensions_ms
            .retain(|t| now_ms.saturating_sub(*t) < DAY_MS);
        let base = ms(rule.unwrap_or(self.cfg.suspend)).max(1);
        let doublings = u32::try_from(s.suspensions_ms.len())
            .unwrap_or(u32::MAX)
            .min(20);
        let length = base
            .saturating_mul(1u64 << doublings)
            .min(ms(self.cfg.max_suspend).max(base));
        s.suspensions_ms.push(now_ms);
        if !matches!(s.mode, Mode::Suspended { .. } | Mode::Probing) {
            let measured = self.delivered_rate(now_ms);
            let s = &mut self.state;
            s.resume_from = match s.rate {
                Some(r) if measured > 0.0 => measured.min(r),
                Some(r) => r,
                None if measured > 0.0 => measured,
                None => self.cfg.message_rate.unwrap_or(self.cfg.min_rate),
            };
        }
        let s = &mut self.state;
        let until_ms = now_ms.saturating_add(length);
        s.mode = Mode::Suspended { until_ms };
        s.last_change_ms = now_ms;
        Transition::Suspended { until_ms }
    }

    fn resume_after_probe(&mut self, now_ms: u64) -> Transition {
        let s = &mut self.state;
        let rate = (s.resume_from * 0.25).max(self.cfg.min_rate);
        s.rate = Some(match self.cfg.message_rate {
            Some(c) => rate.min(c),
            None => rate,
        });
        s.peak = s.resume_from.max(self.cfg.min_rate);
        s.mode = Mode::Throttled;
        s.last_change_ms = now_ms;
        Transition::Resumed { rate: s.rate }
    }
}

#[cfg(test)]
mod tests;
