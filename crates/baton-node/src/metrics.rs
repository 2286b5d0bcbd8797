//! Metrics, rendered as Prometheus text on `/metrics`. Each is documented here and given
//! a description below; the first eight are the ones operators and tests rely on.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `baton_messages_received_total` | counter | messages answered 250 at ingress |
//! | `baton_messages_delivered_total` | counter | (message, recipient) delivered, remote 2xx |
//! | `baton_messages_deferred_total` | counter | (message, recipient) deferred for retry |
//! | `baton_messages_bounced_total` | counter | (message, recipient) failed for good (5xx, expiry, null MX) |
//! | `baton_queue_messages` | gauge | messages in the queue |
//! | `baton_raft_leader` | gauge | 1 on the leader |
//! | `baton_raft_commit_index` | gauge | last committed log index known here |
//! | `baton_raft_applied_index` | gauge | last applied log index |
//! | `baton_raft_term` | gauge | current term |
//! | `baton_smtp_sessions` | gauge | open inbound SMTP sessions |
//! | `baton_smtp_replies_total{code}` | counter | final replies to DATA/BDAT by code class |
//! | `baton_commit_batch_size` | histogram | messages per `Enqueue` entry |
//! | `baton_ownership_epoch` | gauge | current delivery-ownership epoch |
//! | `baton_ownership_settled` | gauge | 1 when every node acknowledged the current epoch |
//! | `baton_ownership_nodes` | gauge | nodes that own domains in the current epoch |
//! | `baton_ownership_owner` | gauge | 1 when this node is one of them |
//! | `baton_lease_remaining_seconds` | gauge | this node's delivery lease left, by its clock |
//! | `baton_messages_suppressed_total` | counter | recipients skipped: on the suppression list |
//! | `baton_domain_outcomes_total{domain,result}` | counter | per destination domain: delivered, deferred, bounced |
//! | `baton_delivery_latency_seconds{domain}` | histogram | accepted to delivered (first delivered recipient of an attempt) |
//! | `baton_raft_apply_lag` | gauge | committed but not yet applied entries here |
//! | `baton_raft_replication_lag{peer}` | gauge | on the leader: entries a member is behind the leader's last log |
//! | `baton_raft_snapshot_index` | gauge | last log index in this node's current snapshot |
//! | `baton_raft_append_seconds` | histogram | proposing a write until it is committed (this node's writes) |
//! | `baton_smtp_sessions_total` | counter | inbound SMTP sessions accepted |
//! | `baton_events_position` | gauge | position of the newest event in the replicated event log |
//! | `baton_webhook_position` | gauge | on the leader: last event position the webhook delivered |
//! | `baton_webhook_failures_total` | counter | webhook POSTs that failed (retried) |
//! | `baton_component_up{component}` | gauge | 1 while a node component runs (or finished its one-off start) |
//! | `baton_component_restarts_total{component}` | counter | crashes of a component, each followed by a restart |
//! | `baton_delivery_domain_crashes_total` | counter | domain delivery actors that crashed (and were started again) |
//! | `baton_delivery_worker_crashes_total` | counter | delivery workers that crashed (their messages are taken again) |
//! | `baton_smtp_session_crashes_total` | counter | inbound SMTP sessions that panicked (the session ends, nothing else) |
//! | `baton_smtp_refused_connections_total{reason}` | counter | connections refused before the greeting: `proxy_untrusted`, `capacity`, `per_ip` |
//! | `baton_smtp_timeouts_total{phase}` | counter | sessions cut with `421 4.4.2` at a deadline: `command`, `data` |
//! | `baton_smtp_stressed_sessions_total` | counter | sessions started with nine in ten general slots taken (short timeouts) |
//! | `baton_smtp_auth_throttled_total` | counter | AUTH refused unchecked: too many failures from the client address |
//! | `baton_smtp_refused_messages_total` | counter | messages or senders refused for their bytes, lines or `allowed_from` |
//! | `baton_site_state{site}` | gauge | on the site's owner: 0 normal, 1 throttled, 2 suspended, 3 probing |
//! | `baton_site_rate_per_minute{site}` | gauge | on the site's owner: messages per minute allowed (-1: no limit) |
//! | `baton_site_connections{site}` | gauge | on the site's owner: connections allowed |
//! | `baton_site_replies_total{site,category}` | counter | classified non-2xx replies from a site's hosts |
//! | `baton_messages_auto_suppressed_total` | counter | recipients put on the suppression list by a hard bounce |
//! | `baton_tenant_bounce_rate{tenant}` | gauge | a tenant's hard bounces over attempted recipients in its window (0 with none attempted) |
//! | `baton_tenant_complaint_rate{tenant}` | gauge | a tenant's complaints over delivered recipients in its window (0 with none delivered) |
//! | `baton_tenant_paused{tenant}` | gauge | 1 while a tenant is paused |
//! | `baton_dkim_signatures_total{domain,selector}` | counter | DKIM signatures added at enqueue |
//! | `baton_dkim_unsigned_total` | counter | accepted or refused messages that no `[[dkim]]` key could sign (with keys or `[signing]` configured) |
//! | `baton_dkim_errors_total` | counter | signing failures with a key that applied (the message goes on without that signature) |
//! | `baton_mta_sts_failures_total{mode}` | counter | MTA-STS: `enforce` deferrals (4.4.4, 4.7.5), `testing` connections the policy would have refused |
//! | `baton_mta_sts_fetches_total{result}` | counter | MTA-STS policy fetches by the domains' owner: `ok`, `failed` |

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub const RECEIVED: &str = "baton_messages_received_total";
pub const DELIVERED: &str = "baton_messages_delivered_total";
pub const DEFERRED: &str = "baton_messages_deferred_total";
pub const BOUNCED: &str = "baton_messages_bounced_total";
pub const QUEUE_MESSAGES: &str = "baton_queue_messages";
pub const RAFT_LEADER: &str = "baton_raft_leader";
pub const RAFT_COMMIT_INDEX: &str = "baton_raft_commit_index";
pub const RAFT_APPLIED_INDEX: &str = "baton_raft_applied_index";
pub const RAFT_TERM: &str = "baton_raft_term";
pub const SMTP_SESSIONS: &str = "baton_smtp_sessions";
pub const SMTP_REPLIES: &str = "baton_smtp_replies_total";
pub const COMMIT_BATCH: &str = "baton_commit_batch_size";
pub const OWNERSHIP_EPOCH: &str = "baton_ownership_epoch";
pub const OWNERSHIP_SETTLED: &str = "baton_ownership_settled";
pub const OWNERS: &str = "baton_ownership_nodes";
pub const OWNER: &str = "baton_ownership_owner";
pub const LEASE_LEFT: &str = "baton_lease_remaining_seconds";
pub const SUPPRESSED: &str = "baton_messages_suppressed_total";
pub const DOMAIN_OUTCOMES: &str = "baton_domain_outcomes_total";
pub const DELIVERY_LATENCY: &str = "baton_delivery_latency_seconds";
pub const RAFT_APPLY_LAG: &str = "baton_raft_apply_lag";
pub const RAFT_REPLICATION_LAG: &str = "baton_raft_replication_lag";
pub const RAFT_SNAPSHOT_INDEX: &str = "baton_raft_snapshot_index";
pub const RAFT_APPEND: &str = "baton_raft_append_seconds";
pub const SMTP_SESSIONS_TOTAL: &str = "baton_smtp_sessions_total";
pub const EVENTS_POSITION: &str = "baton_events_position";
pub const WEBHOOK_POSITION: &str = "baton_webhook_position";
pub const WEBHOOK_FAILURES: &str = "baton_webhook_failures_total";
pub const COMPONENT_UP: &str = "baton_component_up";
pub const COMPONENT_RESTARTS: &str = "baton_component_restarts_total";
pub const SITE_STATE: &str = "baton_site_state";
pub const SITE_RATE: &str = "baton_site_rate_per_minute";
pub const SITE_CONNECTIONS: &str = "baton_site_connections";
pub const SITE_REPLIES: &str = "baton_site_replies_total";
pub const AUTO_SUPPRESSED: &str = "baton_messages_auto_suppressed_total";
pub const TENANT_BOUNCE_RATE: &str = "baton_tenant_bounce_rate";
pub const TENANT_COMPLAINT_RATE: &str = "baton_tenant_complaint_rate";
pub const TENANT_PAUSED: &str = "baton_tenant_paused";
pub const DOMAIN_CRASHES: &str = "baton_delivery_domain_crashes_total";
pub const WORKER_CRASHES: &str = "baton_delivery_worker_crashes_total";
pub const SESSION_CRASHES: &str = "baton_smtp_session_crashes_total";
pub const SMTP_REFUSED_CONNECTIONS: &str = "baton_smtp_refused_connections_total";
pub const SMTP_TIMEOUTS: &str = "baton_smtp_timeouts_total";
pub const SMTP_STRESSED: &str = "baton_smtp_stressed_sessions_total";
pub const SMTP_AUTH_THROTTLED: &str = "baton_smtp_auth_throttled_total";
pub const SMTP_REFUSED_MESSAGES: &str = "baton_smtp_refused_messages_total";
pub const DKIM_SIGNATURES: &str = "baton_dkim_signatures_total";
pub const DKIM_UNSIGNED: &str = "baton_dkim_unsigned_total";
pub const DKIM_ERRORS: &str = "baton_dkim_errors_total";
pub const MTA_STS_FAILURES: &str = "baton_mta_sts_failures_total";
pub const MTA_STS_FETCHES: &str = "baton_mta_sts_fetches_total";
pub const FEEDBACK_REPORTS: &str = "baton_feedback_reports_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                900.0, 3600.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only when another recorder is installed (tests embedding a node):
            // then this handle renders nothing of ours, which is harmless.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(RECEIVED, "Messages accepted (250) at ingress.");
    describe_gauge!(
        SITE_STATE,
        "A site's throttle on its owner: 0 normal, 1 throttled, 2 suspended, 3 probing."
    );
    describe_gauge!(
        SITE_RATE,
        "Messages per minute a site allows now (-1: no limit)."
    );
    describe_gauge!(SITE_CONNECTIONS, "Connections a site allows now.");
    describe_counter!(
        SITE_REPLIES,
        "Classified non-2xx replies from a site's hosts, by category."
    );
    describe_counter!(
        AUTO_SUPPRESSED,
        "Recipients put on the suppression list by a hard bounce."
    );
    describe_gauge!(
        TENANT_BOUNCE_RATE,
        "A tenant's hard bounces over attempted recipients in its window."
    );
    describe_gauge!(
        TENANT_COMPLAINT_RATE,
        "A tenant's complaints over delivered recipients in its window."
    );
    describe_gauge!(TENANT_PAUSED, "1 while a tenant is paused.");
    describe_counter!(DELIVERED, "Recipients delivered (remote 2xx).");
    describe_counter!(DEFERRED, "Recipients deferred for a later attempt.");
    describe_counter!(BOUNCED, "Recipients failed for good.");
    describe_gauge!(QUEUE_MESSAGES, "Messages in the queue.");
    describe_gauge!(RAFT_LEADER, "1 when this node is the Raft leader.");
    describe_gauge!(
        RAFT_COMMIT_INDEX,
        "Last committed Raft log index known here."
    );
    describe_gauge!(RAFT_APPLIED_INDEX, "Last applied Raft log index.");
    describe_gauge!(RAFT_TERM, "Current Raft term.");
    describe_gauge!(SMTP_SESSIONS, "Open inbound SMTP sessions.");
    describe_counter!(SMTP_REPLIES, "Final replies to message data, by code.");
    describe_histogram!(COMMIT_BATCH, "Messages per Enqueue log entry.");
    describe_gauge!(OWNERSHIP_EPOCH, "Current delivery-ownership epoch.");
    describe_gauge!(
        OWNERSHIP_SETTLED,
        "1 when every node acknowledged the current ownership epoch."
    );
    describe_gauge!(OWNERS, "Nodes that own domains in the current epoch.");
    describe_gauge!(OWNER, "1 when this node owns domains in the current epoch.");
    describe_gauge!(
        LEASE_LEFT,
        "This node's delivery lease left, in seconds, by its own clock."
    );
    describe_counter!(SUPPRESSED, "Recipients skipped: on the suppression list.");
    describe_counter!(
        DOMAIN_OUTCOMES,
        "Recipients by destination domain and result (delivered, deferred, bounced)."
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        "Seconds from acceptance to delivery, by destination domain."
    );
    describe_gauge!(RAFT_APPLY_LAG, "Committed entries not yet applied here.");
    describe_gauge!(
        RAFT_REPLICATION_LAG,
        "On the leader: entries each member is behind the leader's last log entry."
    );
    describe_gauge!(
        RAFT_SNAPSHOT_INDEX,
        "Last log index in this node's snapshot."
    );
    describe_histogram!(
        RAFT_APPEND,
        "Seconds from proposing an entry to its commit."
    );
    describe_counter!(SMTP_SESSIONS_TOTAL, "Inbound SMTP sessions accepted.");
    describe_gauge!(
        EVENTS_POSITION,
        "Position of the newest event in the event log."
    );
    describe_gauge!(
        COMPONENT_UP,
        "1 while a node component runs (or finished its one-off start)."
    );
    describe_counter!(
        COMPONENT_RESTARTS,
        "Crashes of a node component, each followed by a restart."
    );
    describe_counter!(DOMAIN_CRASHES, "Domain delivery actors that crashed.");
    describe_counter!(WORKER_CRASHES, "Delivery workers that crashed.");
    describe_counter!(SESSION_CRASHES, "Inbound SMTP sessions that panicked.");
    describe_counter!(
        SMTP_REFUSED_CONNECTIONS,
        "Inbound connections refused before the greeting, by reason (proxy_untrusted, capacity, per_ip)."
    );
    describe_counter!(
        SMTP_TIMEOUTS,
        "Sessions cut with 421 4.4.2 at a deadline, by phase (command, data)."
    );
    describe_counter!(
        SMTP_STRESSED,
        "Sessions started while nine in ten general connection slots were taken (short timeouts)."
    );
    describe_counter!(
        SMTP_AUTH_THROTTLED,
        "AUTH attempts refused unchecked: too many failures from the client address."
    );
    describe_counter!(
        SMTP_REFUSED_MESSAGES,
        "Messages or senders refused for their content or sender (bytes, lines, allowed_from)."
    );
    describe_counter!(
        MTA_STS_FAILURES,
        "MTA-STS: enforce deferrals and testing-mode connections the policy would refuse."
    );
    describe_counter!(
        MTA_STS_FETCHES,
        "MTA-STS policy fetches by the domains' owner, by result."
    );
    describe_counter!(
        FEEDBACK_REPORTS,
        "Mail to the bounce domain, by kind (dsn, arf, rcpt) and result (bounced, soft, delayed, complaint, ignored, unparsed, unknown, mismatch, failed)."
    );
    // Register every contract name so /metrics carries them from the start.
    for c in [
        RECEIVED,
        DELIVERED,
        DEFERRED,
        BOUNCED,
        SUPPRESSED,
        SMTP_SESSIONS_TOTAL,
        DOMAIN_CRASHES,
        WORKER_CRASHES,
        SESSION_CRASHES,
        SMTP_STRESSED,
        SMTP_AUTH_THROTTLED,
        SMTP_REFUSED_MESSAGES,
        DKIM_UNSIGNED,
        DKIM_ERRORS,
    ] {
        metrics::counter!(c).increment(0);
    }
    for g in [
        QUEUE_MESSAGES,
        RAFT_LEADER,
        RAFT_COMMIT_INDEX,
        RAFT_APPLIED_INDEX,
        RAFT_TERM,
        SMTP_SESSIONS,
        RAFT_APPLY_LAG,
        RAFT_SNAPSHOT_INDEX,
        EVENTS_POSITION,
    ] {
        metrics::gauge!(g).set(0.0);
    }
}
