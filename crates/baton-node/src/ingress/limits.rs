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

/// Addresses tracked for AUTH failures before expired entries are first swept.
const AUTH_TRACKED: usize = 10_000;

/// A submission or implicit-TLS client on a reserved slot must have authenticated
/// within this of connecting.
pub const RESERVED_AUTH_GRACE: Duration = Duration::from_secs(20);

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

    /// A slot, and whether it is a reserved one; `None` when the client's share is
    /// full.
    pub fn enter(&self, privileged: bool) -> Option<(OwnedSemaphorePermit, bool)> {
        if let Ok(slot) = self.general.clone().try_acquire_owned() {
            return Some((slot, false));
        }
        if !privileged {
            return None;
        }
        let slot = self.reserved.clone().try_acquire_owned().ok()?;
        Some((slot, true))
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
    /// content expected), `partial_line` (part of a command line buffered), `n` body
    /// bytes read in this step, `progressed` (a command line completed in this step,
    /// so a partial line now buffered is a new one).
    pub fn update(
        &mut self,
        now: Instant,
        in_body: bool,
        partial_line: bool,
        n: usize,
        progressed: bool,
    ) {
        if in_body {
            self.line_started = None;
            let (_, bytes) = self.body.get_or_insert((now, 0));
            *bytes += n as u64;
        } else {
            self.body = None;
            self.line_started = match (partial_line, self.line_started) {
                (false, _) => None,
                (true, Some(first)) if !progressed => Some(first),
                (true, _) => Some(now),
            };
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
///
/// An attempt counts as a failure from before its check until it succeeds, so
/// attempts in flight at once from one address are counted too. Entries are created
/// only by AUTH attempts, each of which waits for an argon2 check (a few hundred per
/// second per node at most), so the map holds at most that many entries per
/// [`AUTH_FAILURE_WINDOW`]; expired ones are swept whenever it has doubled.
pub struct AuthFailures {
    limit: usize,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    by_address: HashMap<IpAddr, (Instant, usize)>,
    sweep_at: usize,
}

impl AuthFailures {
    /// At most `limit` failures per [`AUTH_FAILURE_WINDOW`]; 0: no limit.
    pub fn new(limit: usize) -> AuthFailures {
        AuthFailures {
            limit,
            seen: Mutex::new(Seen {
                by_address: HashMap::new(),
                sweep_at: AUTH_TRACKED,
            }),
        }
    }

    /// Before checking credentials: false when the address has used up its failures
    /// (refuse AUTH unchecked); else the attempt counts as a failure until
    /// [`AuthFailures::succeeded`].
    pub fn begin(&self, ip: IpAddr, now: Instant) -> bool {
        if self.limit == 0 {
            return true;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.by_address.len() >= seen.sweep_at {
            seen.by_address
                .retain(|_, (since, _)| now < *since + AUTH_FAILURE_WINDOW);
            seen.sweep_at = (seen.by_address.len() * 2).max(AUTH_TRACKED);
        }
        let entry = seen.by_address.entry(key(ip)).or_insert((now, 0));
        if now >= entry.0 + AUTH_FAILURE_WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            return false;
        }
        entry.1 += 1;
        true
    }

    /// The attempt begun succeeded: it was not a failure.
    pub fn succeeded(&self, ip: IpAddr) {
        if self.limit == 0 {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = seen.by_address.get_mut(&key(ip)) {
            entry.1 = entry.1.saturating_sub(1);
        }
    }
}

/// IPv4 as is (mapped IPv6 as IPv4), IPv6 by its /64: one host has a whole /64.
pub fn key(ip: IpAddr) -> IpAddr {
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
        assert!(a.iter().all(|(_, reserved)| !reserved));
        assert!(c.enter(false).is_none());
        let p = c.enter(true).unwrap();
        assert!(p.1, "a reserved slot");
        assert!(c.enter(true).is_none());
        assert!(c.stressed());
        drop(a);
        drop(p);
        assert!(!c.stressed());
    }

    fn timeouts() -> Timeouts {
        Timeouts {
            command: Duration::from_secs(10),
            data: Duration::from_secs(5),
            data_min_rate: 100,
        }
    }

    #[test]
    fn command_line_deadline_runs_from_its_first_byte() {
        let t0 = Instant::now();
        let t = timeouts();
        let mut d = Deadlines::default();
        d.update(t0, false, false, 0, false);
        assert_eq!(d.next(t0, &t), t0 + t.command);
        let later = t0 + Duration::from_secs(3);
        d.update(later, false, true, 0, false);
        // More bytes of the same line do not move it.
        let later2 = later + Duration::from_secs(6);
        d.update(later2, false, true, 0, false);
        assert_eq!(d.next(later2, &t), later + t.command);
        // A complete line starts a fresh wait ...
        d.update(later2, false, false, 0, true);
        assert_eq!(d.next(later2, &t), later2 + t.command);
        // ... and so does the part of a next line that came with it.
        let later3 = later2 + Duration::from_secs(1);
        d.update(later3, false, true, 0, false);
        let later4 = later3 + Duration::from_secs(1);
        d.update(later4, false, true, 0, true);
        assert_eq!(d.next(later4, &t), later4 + t.command);
    }

    #[test]
    fn body_must_keep_the_minimum_rate_after_its_first_timeout() {
        let t0 = Instant::now();
        let t = timeouts();
        let mut d = Deadlines::default();
        d.update(t0, true, false, 0, false);
        assert_eq!(d.next(t0, &t), t0 + t.data);
        // 1 byte every 4 s never idles for 5 s, but earns only 10 ms each.
        let mut now = t0;
        for _ in 0..2 {
            now += Duration::from_secs(4);
            d.update(now, true, false, 1, false);
        }
        assert_eq!(d.next(now, &t), t0 + t.data + Duration::from_millis(20));
        // 1000 bytes earn 10 s more.
        d.update(now, true, false, 1000, false);
        assert_eq!(d.next(now, &t), now + t.data);
    }

    #[test]
    fn auth_failures_are_counted_per_address_and_forgotten() {
        let f = AuthFailures::new(2);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        // Two attempts in flight at once use up the limit ...
        assert!(f.begin(a, t0));
        assert!(f.begin(b, t0), "the same /64");
        assert!(!f.begin(a, t0));
        assert!(f.begin(other, t0));
        // ... until one succeeds.
        f.succeeded(b);
        assert!(f.begin(b, t0));
        assert!(!f.begin(b, t0));
        assert!(f.begin(a, t0 + AUTH_FAILURE_WINDOW));
        assert!(AuthFailures::new(0).begin(a, t0));
    }

    #[test]
    fn expired_addresses_are_swept() {
        let f = AuthFailures::new(1);
        let t0 = Instant::now();
        for i in 0..AUTH_TRACKED as u32 {
            assert!(f.begin(IpAddr::from(i.to_be_bytes()), t0));
        }
        let later = t0 + AUTH_FAILURE_WINDOW;
        assert!(f.begin("192.0.2.1".parse().unwrap(), later));
        let seen = f.seen.lock().unwrap();
        assert_eq!(seen.by_address.len(), 1);
        assert_eq!(seen.sweep_at, AUTH_TRACKED);
    }
}
