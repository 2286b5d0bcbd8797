//! Between the queue's records and the API's messages; the checks of request fields.

use crate::pb::{Event, Header};
use baton_delivery::dsn;
use baton_queue::types::{Event as QEvent, HELD};
use baton_queue::{DeliveryRecord, QueueError};
use tonic::Status;

pub(crate) fn write_status(e: QueueError) -> Status {
    Status::unavailable(format!("the change was not committed: {e}"))
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("reading the state: {e}"))
}

/// An event of the state as the API (and the webhook) shows it.
pub fn event_pb(position: u64, e: QEvent) -> Event {
    let (tls, tls_policy) = split_tls(&e.remote.tls);
    Event {
        position,
        time_unix_ms: e.time_ms,
        kind: e.kind.as_str().to_string(),
        message_id: e.id,
        recipient: e.recipient,
        domain: e.domain,
        sender: e.sender,
        remote_host: e.remote.host,
        remote_ip: e.remote.ip,
        tls,
        tls_policy,
        reply: e.reply,
        node_id: e.node,
        site: e.site,
        tenant: e.tenant,
        rule: e.rule,
        detail: e.detail,
    }
}

/// The stored `tls` of a delivery is the TLS version, then ` tls_policy=P` (the layout
/// of stored outcomes and events stays as it was): the API shows them apart.
fn split_tls(stored: &str) -> (String, String) {
    match stored.split_once("tls_policy=") {
        Some((version, policy)) => (version.trim().to_string(), policy.trim().to_string()),
        None => (stored.to_string(), String::new()),
    }
}

pub(crate) fn state_of(record: &DeliveryRecord) -> &'static str {
    if record.next_attempt_ms == HELD {
        "held"
    } else if record.attempts == 0 {
        "queued"
    } else {
        "deferred"
    }
}

/// When a delivery is tried next, for the API: 0 (none) for a held one.
pub(crate) fn next_attempt(record: &DeliveryRecord) -> u64 {
    if record.next_attempt_ms == HELD {
        0
    } else {
        record.next_attempt_ms
    }
}

/// Header fields of a message's header section, unfolded.
pub(crate) fn headers_of(body: &[u8]) -> Vec<Header> {
    let section = String::from_utf8_lossy(dsn::header_section(body)).into_owned();
    let mut out: Vec<Header> = Vec::new();
    for line in section.split("\r\n").flat_map(|l| l.split('\n')) {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.value.push(' ');
                last.value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push(Header {
                name: name.trim().to_string(),
                value: value.trim().to_string(),
            });
        }
    }
    out
}

pub(crate) fn valid_domain(domain: &str) -> Result<String, Status> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) {
        return Err(Status::invalid_argument(format!(
            "{domain:?} is not a domain name"
        )));
    }
    Ok(d)
}

pub(crate) fn valid_address(address: &str) -> Result<String, Status> {
    let a = address.trim().trim_start_matches('<').trim_end_matches('>');
    match a.rsplit_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !a.contains(char::is_whitespace) =>
        {
            Ok(a.to_ascii_lowercase())
        }
        _ => Err(Status::invalid_argument(format!(
            "{address:?} is not an address (local@domain)"
        ))),
    }
}
