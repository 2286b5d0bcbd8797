//! Event-log retention: the leader trims events past `events.retention_count` or older
//! than `events.retention_age`, through Raft (`TrimEvents`), so every node keeps the
//! same positions.

use crate::config::EventsConfig;
use baton_cluster::Writer;
use baton_queue::QueueNode;
use baton_queue::clock::now_ms;
use baton_queue::types::Request;
use std::time::Duration;
use tokio::sync::watch;

/// How often the leader looks.
const EVERY: Duration = Duration::from_secs(10);
/// At most this many events are read to find the age cut per look.
const AGE_SCAN: usize = 10_000;

/// Where the event log should start now: below it, events go.
pub fn trim_point(queue: &QueueNode, config: &EventsConfig, now_ms: u64) -> Option<u64> {
    let reader = &queue.reader;
    let (first, next) = reader.event_bounds().ok()?;
    let by_count = next.saturating_sub(config.retention_count);
    let cutoff = now_ms.saturating_sub(config.retention_age.as_millis() as u64);
    let mut by_age = first;
    for pair in reader.events_after(first.saturating_sub(1)).take(AGE_SCAN) {
        let Ok((position, event)) = pair else { break };
        if event.time_ms >= cutoff {
            break;
        }
        by_age = position + 1;
    }
    let below = by_count.max(by_age);
    (below > first).then_some(below)
}

/// Runs on every node; acts while this node is the leader.
pub async fn retain(
    queue: QueueNode,
    writer: Writer,
    config: EventsConfig,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !queue.is_leader() {
            continue;
        }
        let now = now_ms();
        if let Some(below) = trim_point(&queue, &config, now)
            && let Err(e) = writer.write(Request::TrimEvents { below }).await
        {
            tracing::warn!(error = %e, "could not trim the event log");
        }
        // Reports about messages older than the events kept are not judged any more.
        let cutoff = now.saturating_sub(config.retention_age.as_millis() as u64);
        if let Some(before_ms) = crate::feedback::tracked_trim_point(&queue.reader, cutoff)
            && let Err(e) = writer.write(Request::TrimTracked { before_ms }).await
        {
            tracing::warn!(error = %e, "could not trim the retained message records");
        }
    }
}
