//! What keeps one client, or many anonymous ones, from taking the node: connection
//! capacity with a share reserved for trusted clients, per-IP connection counts, AUTH
//! failures counted per client address across connections, and the deadlines that
//! replace idle timers (a command line or a body must make progress, not just trickle).

use crate::config::SmtpConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How long AUTH failures from one address are remembered.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// Timeouts while the node is under stress (like Postfix's stress mode).
const STRESS_TIMEOUT: Duration = Duration::from_secs(10);

/// Addresses tracked for AUTH failures before expired entries are swept.
const AUTH_TRACKED: usize = 10_000;

/// The node's inbound connection slots: `max_connections`, of which `reserved` only
/// privileged clients (relay_networks, submission and implicit-TLS listeners) may take.
pub struct Capacity {
    general: Arc<Semaphore>,
    general_total: usize,
    reserved: Arc<Semaphore>,
}

impl Capacity {
    pub fn new(max: usize, reserved: usize) -> Capacity {
        let reserved = reserved.min(max);
        Capacity {
            general: Arc::new(Semaphore::new(max - reserved)),
            general_total: max - reserved,
            reserved: Arc::new(Semaphore::new(reserved)),
        }
    }

    /// A slot, or `None` when the client's share is full.
    pub fn enter(&self, privileged: bool) -> Option<OwnedSemaphorePermit> {
        let slot = self.general.clone().try_acquire_owned().ok();
        match slot {
            None if privileged => self.reserved.clone().try_acquire_owned().ok(),
            other => other,
        }
    }

    /// Nine in ten general slots are taken: sessions get short timeouts.
    pub fn stressed(&self) -> bool {
        self.general.available_permits() * 10 < self.general_total.max(1)
    }
}

/// The timeouts a session starts with: the configured ones, or short ones under
/// stress.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub command: Duration,
    pub data: Duration,
    /// Bytes per second a body must average after its first `data` timeout; 0: none.
    pub data_min_rate: u64,
}

impl Timeouts {
    pub fn new(smtp: &SmtpConfig, stressed: bool) -> Timeouts {
        let cap = |d: Duration| if stressed { d.min(STRESS_TIMEOUT) } else { d };
        Timeouts {
            command: cap(smtp.command_timeout),
            data: cap(smtp.data_timeout),
            data_min_rate: smtp.data_min_rate,
        }
    }
}

/// When the session's current wait must end, by phase:
/// - a command line must be complete within `command` of its first byte (and the wait
///   for its first byte is `command` too);
/// - a body (DATA, or one BDAT chunk) may be idle at most `data` between reads, and
///   after its first `data` it must average `data_min_rate`: at time `start + data + t`
///   at least `rate × t` bytes must have arrived.
#[derive(Debug, Default)]
pub struct Deadlines {
    line_started: Option<Instant>,
    body: Option<(Instant, u64)>,
}

impl Deadlines {
    /// Note what arrived and where the session now is: `in_body` (DATA or BDAT
    /// content expected), `partial_line` (part of a command line buffered), `n` bytes
    /// read in this step (0 when the phase changed by itself).
    pub fn update(&mut self, now: Instant, in_body: bool, partial_line: bool, n: usize) {
        if in_body {
            self.line_started = None;
            let (_, bytes) = self.body.get_or_insert((now, 0));
            *bytes += n as u64;
        } else {
            self.body = None;
            if partial_line {
                self.line_started.get_or_insert(now);
            } else {
                self.line_started = None;
            }
        }
    }

    /// The instant the next read must have completed by.
    pub fn next(&self, now: Instant, t: &Timeouts) -> Instant {
        match (self.body, self.line_started) {
            (Some((start, bytes)), _) => {
                let idle = now + t.data;
                if t.data_min_rate == 0 {
                    return idle;
                }
                let earned = Duration::from_secs_f64(bytes as f64 / t.data_min_rate as f64);
                idle.min(start + t.data + earned)
            }
            (None, Some(first_byte)) => first_byte + t.command,
            (None, None) => now + t.command,
        }
    }
}

/// AUTH failures per client address (IPv6 by /64), across connections.
#[derive(Default)]
pub struct AuthFailures {
    limit: usize,
    seen: Mutex<HashMap<IpAddr, (Instant, usize)>>,
}

impl AuthFailures {
    /// At most `limit` failures per [`AUTH_FAILURE_WINDOW`]; 0: no limit.
    pub fn new(limit: usize) -> AuthFailures {
        AuthFailures {
            limit,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The address has used up its failures: refuse AUTH without checking.
    pub fn throttled(&self, ip: IpAddr, now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&key(ip))
            .is_some_and(|(since, n)| now < *since + AUTH_FAILURE_WINDOW && *n >= self.limit)
    }

    /// One more failure from the address.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= AUTH_TRACKED {
            seen.retain(|_, (since, _)| now < *since + AUTH_FAILURE_WINDOW);
        }
        let entry = seen.entry(key(ip)).or_insert((now, 0));
        if now >= entry.0 + AUTH_FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

/// IPv4 as is (mapped IPv6 as IPv4), IPv6 by its /64: one host has a whole /64.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_slots_are_for_privileged_clients() {
        let c = Capacity::new(4, 1);
        let a: Vec<_> = (0..3).map(|_| c.enter(false).unwrap()).collect();
        assert!(c.enter(false).is_none());
        let p = c.enter(true).unwrap();
        assert!(c.enter(true).is_none());
        assert!(c.stressed());
        drop(a);
        drop(p);
        assert!(!c.stressed());
    }

    #[test]
    fn command_line_deadline_runs_from_its_first_byte() {
        let t0 = Instant::now();
        let t = Timeouts {
            command: Duration::from_secs(10),
            data: Duration::from_secs(5),
            data_min_rate: 100,
        };
        let mut d = Deadlines::default();
        d.update(t0, false, false, 0);
        assert_eq!(d.next(t0, &t), t0 + t.command);
        let later = t0 + Duration::from_secs(3);
        d.update(later, false, true, 1);
        // More bytes of the same line do not move it.
        let later2 = later + Duration::from_secs(6);
        d.update(later2, false, true, 1);
        assert_eq!(d.next(later2, &t), later + t.command);
        // A complete line starts a fresh wait.
        d.update(later2, false, false, 2);
        assert_eq!(d.next(later2, &t), later2 + t.command);
    }

    #[test]
    fn body_must_keep_the_minimum_rate_after_its_first_timeout() {
        let t0 = Instant::now();
        let t = Timeouts {
            command: Duration::from_secs(10),
            data: Duration::from_secs(5),
            data_min_rate: 100,
        };
        let mut d = Deadlines::default();
        d.update(t0, true, false, 0);
        assert_eq!(d.next(t0, &t), t0 + t.data);
        // 1 byte every 4 s never idles for 5 s, but earns only 10 ms each.
        let mut now = t0;
        for _ in 0..2 {
            now += Duration::from_secs(4);
            d.update(now, true, false, 1);
        }
        assert_eq!(d.next(now, &t), t0 + t.data + Duration::from_millis(20));
        // 1000 bytes earn 10 s more.
        d.update(now, true, false, 1000);
        assert_eq!(d.next(now, &t), now + t.data);
    }

    #[test]
    fn auth_failures_are_counted_per_address_and_forgotten() {
        let f = AuthFailures::new(2);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        f.failed(a, t0);
        assert!(!f.throttled(b, t0));
        f.failed(b, t0);
        assert!(f.throttled(a, t0), "the same /64");
        assert!(!f.throttled(other, t0));
        assert!(!f.throttled(a, t0 + AUTH_FAILURE_WINDOW));
        assert!(!AuthFailures::new(0).throttled(a, t0));
    }
}
