//! `/healthz` (200 while the process runs, with each component's status), `/readyz`
//! (200 when the node accepts mail, 503 otherwise and while draining) and `/metrics`.

use crate::metrics as m;
use crate::supervisor::Statuses;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use baton_queue::QueueNode;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct HttpState {
    pub queue: QueueNode,
    pub prometheus: PrometheusHandle,
    /// True when the node accepts SMTP (leader known, caught up, not draining).
    pub ready: watch::Receiver<bool>,
    pub lease: Arc<baton_cluster::Lease>,
    pub statuses: Statuses,
}

pub async fn serve(listener: TcpListener, state: Arc<HttpState>, mut stop: watch::Receiver<bool>) {
    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
}

async fn healthz(State(state): State<Arc<HttpState>>) -> String {
    let mut body = String::from("ok\n");
    for (name, status) in state.statuses.list() {
        body.push_str(&format!("{name} {}\n", status.as_str()));
    }
    body
}

async fn readyz(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    if *state.ready.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let q = &state.queue;
    let raft = q.raft.metrics().borrow().clone();
    metrics::gauge!(m::RAFT_LEADER).set(if raft.current_leader == Some(q.id) {
        1.0
    } else {
        0.0
    });
    metrics::gauge!(m::RAFT_TERM).set(raft.current_term as f64);
    metrics::gauge!(m::RAFT_APPLIED_INDEX).set(raft.last_applied.map_or(0, |l| l.index) as f64);
    let committed = q.committed.load(Ordering::Relaxed);
    let applied = raft.last_applied.map_or(0, |l| l.index);
    metrics::gauge!(m::RAFT_COMMIT_INDEX).set(committed as f64);
    metrics::gauge!(m::RAFT_APPLY_LAG).set(committed.saturating_sub(applied) as f64);
    metrics::gauge!(m::RAFT_SNAPSHOT_INDEX).set(raft.snapshot.map_or(0, |l| l.index) as f64);
    if let Some(replication) = &raft.replication {
        let last = raft.last_log_index.unwrap_or(0);
        for (peer, matched) in replication {
            let lag = last.saturating_sub(matched.map_or(0, |l| l.index));
            metrics::gauge!(m::RAFT_REPLICATION_LAG, "peer" => peer.to_string()).set(lag as f64);
        }
    }
    if let Ok((_, next)) = q.reader.event_bounds() {
        metrics::gauge!(m::EVENTS_POSITION).set(next.saturating_sub(1) as f64);
    }
    metrics::gauge!(m::QUEUE_MESSAGES).set(q.reader.shared.with(|i| i.messages()) as f64);
    let ownership = q.reader.shared.ownership.borrow().clone();
    metrics::gauge!(m::OWNERSHIP_EPOCH).set(ownership.epoch as f64);
    metrics::gauge!(m::OWNERSHIP_SETTLED).set(if ownership.is_settled() { 1.0 } else { 0.0 });
    metrics::gauge!(m::OWNERS).set(ownership.nodes.len() as f64);
    metrics::gauge!(m::OWNER).set(if ownership.nodes.contains(&q.id) {
        1.0
    } else {
        0.0
    });
    metrics::gauge!(m::LEASE_LEFT).set(state.lease.left().as_secs_f64());
    // From the replicated state: every node shows the same values.
    if let Ok(tenants) = q.reader.tenants() {
        for (name, t) in tenants {
            let totals = t.tenant.totals();
            let paused = if t.tenant.paused() { 1.0 } else { 0.0 };
            metrics::gauge!(m::TENANT_BOUNCE_RATE, "tenant" => name.clone())
                .set(totals.bounce_rate());
            metrics::gauge!(m::TENANT_COMPLAINT_RATE, "tenant" => name.clone())
                .set(totals.complaint_rate());
            metrics::gauge!(m::TENANT_PAUSED, "tenant" => name).set(paused);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
}
