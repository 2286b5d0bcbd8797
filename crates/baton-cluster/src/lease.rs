//! Delivery leases (README, "Design: delivery ownership"; the table is `baton_queue::ownership`).
//!
//! - [`keep`] renews this node's lease through Raft every third of its length. The lease
//!   is valid by this node's monotonic clock, counted from when the renewal was *sent*,
//!   once this node has applied the committed renewal, and for nine tenths of its length
//!   (a margin for clocks that run at slightly different rates).
//! - [`expire`] runs on every node and acts on the leader: a node whose last renewal was
//!   applied here longer ago than the lease length (or, for renewals this node did not
//!   see applied, longer than the lease since it became leader) is expired, which moves
//!   its domains to the others. The old owner stopped before: its lease began earlier
//!   and is shorter.

use crate::writer::Writer;
use baton_queue::QueueNode;
use baton_queue::types::Request;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// This node's lease.
pub struct Lease {
    base: Instant,
    /// Milliseconds after `base` when the lease ends; 0: no lease.
    until_ms: AtomicU64,
    length: Duration,
}

impl Lease {
    pub fn new(length: Duration) -> Arc<Lease> {
        Arc::new(Lease {
            base: Instant::now(),
            until_ms: AtomicU64::new(0),
            length,
        })
    }

    /// How much of the lease is left by this node's clock.
    pub fn left(&self) -> Duration {
        let until = Duration::from_millis(self.until_ms.load(Ordering::Acquire));
        until.saturating_sub(self.base.elapsed())
    }

    /// Gives the lease up (before releasing this node's domains).
    pub fn revoke(&self) {
        self.until_ms.store(0, Ordering::Release);
    }

    fn extend(&self, sent: Instant) {
        let valid = self.length * 9 / 10;
        let until = (sent + valid).saturating_duration_since(self.base);
        self.until_ms
            .fetch_max(until.as_millis() as u64, Ordering::AcqRel);
    }
}

/// Renews `lease` until `stop` turns true.
pub async fn keep(lease: Arc<Lease>, writer: Writer, mut stop: watch::Receiver<bool>) {
    let period = lease.length / 3;
    let me = writer.queue.id;
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let sent = Instant::now();
        let renewed = tokio::time::timeout(period, async {
            // Valid once applied here: deliveries read the state this node applied.
            writer
                .write_applied(Request::LeaseRenew { node: me })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
        let wait = match renewed {
            Ok(Ok(())) => {
                lease.extend(sent);
                if failures > 0 {
                    tracing::info!("delivery lease renewed");
                }
                failures = 0;
                period.saturating_sub(sent.elapsed())
            }
            Ok(Err(e)) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, left = ?lease.left(), "delivery lease not renewed");
                }
                Duration::from_millis(300)
            }
            Err(_) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(left = ?lease.left(), "delivery lease renewal timed out");
                }
                Duration::ZERO
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

/// On the leader: expires the leases of nodes that stopped renewing. Runs until `stop`.
pub async fn expire(
    queue: QueueNode,
    writer: Writer,
    length: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut metrics = queue.raft.metrics();
    let mut leading: Option<(u64, Instant)> = None;
    // (node, renewal) pairs already proposed, so one expiry is not proposed twice.
    let mut proposed: HashMap<u64, (u64, Instant)> = HashMap::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let (is_leader, term, caught_up) = {
            let m = metrics.borrow_and_update();
            (
                m.current_leader == Some(queue.id),
                m.current_term,
                m.last_applied
                    .is_some_and(|l| l.leader_id.term == m.current_term),
            )
        };
        if !(is_leader && caught_up) {
            leading = None;
        } else {
            let since = match leading {
                Some((t, since)) if t == term => since,
                _ => {
                    let now = Instant::now();
                    leading = Some((term, now));
                    now
                }
            };
            let ownership = queue.reader.shared.ownership.borrow().clone();
            let local = queue
                .reader
                .shared
                .renewals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let suspects = ownership
                .nodes
                .iter()
                .chain(ownership.must_ack.difference(&ownership.acked));
            for &node in suspects {
                let renewal = ownership.renewed.get(&node).copied().unwrap_or(0);
                let from = match local.get(&node) {
                    Some((index, at)) if *index == renewal => *at,
                    _ => since,
                };
                if from.elapsed() <= length {
                    continue;
                }
                if let Some((r, at)) = proposed.get(&node)
                    && *r == renewal
                    && at.elapsed() < Duration::from_secs(2)
                {
                    continue;
                }
                proposed.insert(node, (renewal, Instant::now()));
                tracing::warn!(node, renewal, "delivery lease expired: moving its domains");
                let w = writer.clone();
                tokio::spawn(async move {
                    if let Err(e) = w.write(Request::Expire { node, renewal }).await {
                        tracing::warn!(node, error = %e, "could not expire a lease");
                    }
                });
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => {}
        }
    }
}
