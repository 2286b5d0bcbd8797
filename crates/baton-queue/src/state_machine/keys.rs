//! The key schema of the `state` tree, and the encoding of its values.
//!
//! One tree, so each entry's writes are one atomic batch together with the applied log
//! id:
//!
//! | key | value |
//! |---|---|
//! | `m/<id>` | [`MessageMeta`](crate::types::MessageMeta) |
//! | `p/<id>` | where the body is: a [`BodyRef`](crate::bodies::BodyRef) into the body files |
//! | `b/<id>` | body bytes (state written before the body files existed, and snapshot records) |
//! | `d/<domain>\0<id>` | [`DeliveryRecord`](crate::types::DeliveryRecord) |
//! | `t/<id>` | tombstone time (unix ms, BE): a finished id, so a retried enqueue is a no-op |
//! | `T/<time BE><id>` | the same tombstone, ordered by time for expiry |
//! | `s/applied`, `s/membership` | openraft's applied log id and membership |
//! | `s/ownership` | the delivery [`Ownership`](crate::ownership::Ownership) table |
//! | `s/events_next` | the position the next event gets (u64 BE) |
//! | `s/webhook` | the last event position the webhook delivered (u64 BE) |
//! | `e/<position BE>` | the [`Event`](crate::types::Event)s one entry added, from that position on (one record per entry, not per event: sled's memory grows with its record count) |
//! | `x/<domain>` | a suspended domain: [`Listing`](crate::types::Listing) |
//! | `u/<address>` | a suppressed recipient (lower-cased): [`Listing`](crate::types::Listing) |
//! | `y/<domain>` | the domain's site: [`SiteOf`](crate::types::SiteOf) |
//! | `r/<site>` | the site's replicated throttle: [`SiteState`](baton_reputation::site::SiteState) |
//! | `n/<id>` | the tenant of a queued message (UTF-8; absent: none), removed with the message |
//! | `c/<tenant>` | the tenant's counters and standing: [`TenantRecord`](crate::types::TenantRecord) |
//! | `v/<tenant>\0<address>` | an address suppressed for one tenant's mail (lower-cased): [`Listing`](crate::types::Listing) |
//! | `z/<domain>` | the domain's cached MTA-STS policy (lower-cased domain): [`StsPolicyRecord`](crate::sts::StsPolicyRecord), kept until replaced or dropped (readers ignore it once expired) |
//! | `s/bounce_key` | the key of the bounce tokens' HMAC (32 bytes), set once |
//! | `k/<id>` | a message's retained record for late bounces and complaints: [`Tracked`](crate::types::Tracked), kept after delivery until the event retention lets it go (ids are ULIDs: key order is time order) |
//!
//! Event records written since sites exist start with [`EVENTS_V2`] (eight 0xff bytes,
//! which no older record starts with: those begin with a little-endian count).

use crate::db::DbError;
use serde::Serialize;

pub(crate) const APPLIED: &[u8] = b"s/applied";
pub(crate) const MEMBERSHIP: &[u8] = b"s/membership";
pub(crate) const OWNERSHIP: &[u8] = b"s/ownership";
pub(crate) const EVENTS_NEXT: &[u8] = b"s/events_next";
pub(crate) const WEBHOOK: &[u8] = b"s/webhook";
pub(crate) const BOUNCE_KEY: &[u8] = b"s/bounce_key";

/// Prefixes of the key families, for scans.
pub(crate) const MESSAGES: &[u8] = b"m/";
/// The first key after every message record.
pub(crate) const MESSAGES_END: &[u8] = b"m0";
pub(crate) const BODY_REFS: &[u8] = b"p/";
pub(crate) const BODIES: &[u8] = b"b/";
pub(crate) const DELIVERIES: &[u8] = b"d/";
pub(crate) const TOMB_TIMES: &[u8] = b"T/";
pub(crate) const EVENTS: &[u8] = b"e/";
/// The first key after every event record.
pub(crate) const EVENTS_END: &[u8] = b"e0";
pub(crate) const SUSPENDED: &[u8] = b"x/";
pub(crate) const SUPPRESSED: &[u8] = b"u/";
pub(crate) const SITE_OF: &[u8] = b"y/";
pub(crate) const SITE_STATES: &[u8] = b"r/";
pub(crate) const TENANT_OF: &[u8] = b"n/";
pub(crate) const TENANTS: &[u8] = b"c/";
pub(crate) const TENANT_SUPPRESSED: &[u8] = b"v/";
pub(crate) const STS_POLICIES: &[u8] = b"z/";
pub(crate) const TRACKED: &[u8] = b"k/";
pub(crate) const EVENTS_V2: [u8; 8] = [0xff; 8];

pub(crate) fn msg_key(id: &str) -> Vec<u8> {
    [MESSAGES, id.as_bytes()].concat()
}
pub(crate) fn body_key(id: &str) -> Vec<u8> {
    [BODIES, id.as_bytes()].concat()
}
pub(crate) fn body_ref_key(id: &str) -> Vec<u8> {
    [BODY_REFS, id.as_bytes()].concat()
}
pub(crate) fn delivery_key(domain: &str, id: &str) -> Vec<u8> {
    [DELIVERIES, domain.as_bytes(), b"\0", id.as_bytes()].concat()
}
/// The keys of `domain`'s delivery records: from `prefix` up to (not including) the
/// returned end.
pub(crate) fn delivery_range(domain: &str) -> (Vec<u8>, Vec<u8>) {
    let prefix = [DELIVERIES, domain.as_bytes(), b"\0"].concat();
    let mut end = prefix.clone();
    // The byte after the separator ends the domain's range.
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    (prefix, end)
}
/// The domain and message id of a `d/<domain>\0<id>` key.
pub(crate) fn split_delivery_key(key: &[u8]) -> Result<(String, String), DbError> {
    let rest = key.strip_prefix(DELIVERIES).unwrap_or(key);
    let Some(split) = rest.iter().position(|&b| b == 0) else {
        return Err(DbError::corrupt("delivery key without separator"));
    };
    Ok((
        String::from_utf8_lossy(&rest[..split]).into_owned(),
        String::from_utf8_lossy(&rest[split + 1..]).into_owned(),
    ))
}
pub(crate) fn tomb_key(id: &str) -> Vec<u8> {
    [b"t/", id.as_bytes()].concat()
}
pub(crate) fn tomb_time_key(time: u64, id: &str) -> Vec<u8> {
    [TOMB_TIMES, &time.to_be_bytes(), id.as_bytes()].concat()
}
/// The message id of a `T/<time BE><id>` key.
pub(crate) fn tomb_time_id(key: &[u8]) -> String {
    String::from_utf8_lossy(key.get(TOMB_TIMES.len() + 8..).unwrap_or_default()).into_owned()
}
pub(crate) fn event_key(position: u64) -> Vec<u8> {
    [EVENTS, &position.to_be_bytes()].concat()
}
/// The position of an `e/<position BE>` key.
pub(crate) fn event_position(key: &[u8]) -> u64 {
    u64_of(key.get(EVENTS.len()..).unwrap_or_default())
}
pub(crate) fn suspend_key(domain: &str) -> Vec<u8> {
    [SUSPENDED, domain.as_bytes()].concat()
}
pub(crate) fn suppress_key(address: &str) -> Vec<u8> {
    [SUPPRESSED, address.to_ascii_lowercase().as_bytes()].concat()
}
pub(crate) fn site_of_key(domain: &str) -> Vec<u8> {
    [SITE_OF, domain.as_bytes()].concat()
}
pub(crate) fn site_state_key(site: &str) -> Vec<u8> {
    [SITE_STATES, site.as_bytes()].concat()
}
pub(crate) fn tenant_of_key(id: &str) -> Vec<u8> {
    [TENANT_OF, id.as_bytes()].concat()
}
pub(crate) fn tenant_key(tenant: &str) -> Vec<u8> {
    [TENANTS, tenant.as_bytes()].concat()
}
pub(crate) fn tenant_suppress_key(tenant: &str, address: &str) -> Vec<u8> {
    [
        TENANT_SUPPRESSED,
        tenant.as_bytes(),
        b"\0",
        address.to_ascii_lowercase().as_bytes(),
    ]
    .concat()
}
pub(crate) fn sts_policy_key(domain: &str) -> Vec<u8> {
    [STS_POLICIES, domain.to_ascii_lowercase().as_bytes()].concat()
}
pub(crate) fn tracked_key(id: &str) -> Vec<u8> {
    [TRACKED, id.as_bytes()].concat()
}
/// The tenant and address of a `v/<tenant>\0<address>` key.
pub(crate) fn split_tenant_suppress_key(key: &[u8]) -> Result<(String, String), DbError> {
    let rest = key.strip_prefix(TENANT_SUPPRESSED).unwrap_or(key);
    let Some(split) = rest.iter().position(|&b| b == 0) else {
        return Err(DbError::corrupt("tenant suppression key without separator"));
    };
    Ok((
        String::from_utf8_lossy(&rest[..split]).into_owned(),
        String::from_utf8_lossy(&rest[split + 1..]).into_owned(),
    ))
}
/// One entry's events as stored.
pub(crate) fn encode_events(events: &[crate::types::Event]) -> Vec<u8> {
    [&EVENTS_V2[..], &encode(&events)].concat()
}
/// An event record, of either format.
pub(crate) fn decode_events(bytes: &[u8]) -> Result<Vec<crate::types::Event>, DbError> {
    match bytes.strip_prefix(&EVENTS_V2[..]) {
        Some(rest) => decode(rest, "events"),
        None => Ok(decode::<Vec<crate::types::EventV1>>(bytes, "events")?
            .into_iter()
            .map(Into::into)
            .collect()),
    }
}
/// The name after a two-byte family prefix (`x/`, `u/`, `p/`, ...).
pub(crate) fn name_of(key: &[u8]) -> String {
    String::from_utf8_lossy(key.get(2..).unwrap_or_default()).into_owned()
}
pub(crate) fn u64_of(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or_default()
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, DbError> {
    bincode::deserialize(bytes).map_err(|e| DbError::corrupt(format!("{what}: {e}")))
}
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs into a Vec cannot fail.
    bincode::serialize(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back_into_their_parts() {
        let key = delivery_key("example.com", "01ID");
        assert_eq!(
            split_delivery_key(&key).unwrap(),
            ("example.com".to_string(), "01ID".to_string())
        );
        let (from, to) = delivery_range("example.com");
        assert!(from.as_slice() <= key.as_slice() && key.as_slice() < to.as_slice());
        // A domain that extends this one sorts outside its range.
        assert!(delivery_key("example.com.au", "01ID").as_slice() >= to.as_slice());
        assert_eq!(tomb_time_id(&tomb_time_key(42, "01ID")), "01ID");
        assert_eq!(event_position(&event_key(7)), 7);
        assert_eq!(name_of(&suppress_key("A@B.test")), "a@b.test");
        assert_eq!(name_of(&site_of_key("gmail.com")), "gmail.com");
        assert_eq!(name_of(&tenant_key("app1")), "app1");
        assert_eq!(name_of(&tenant_of_key("01ID")), "01ID");
        assert_eq!(
            split_tenant_suppress_key(&tenant_suppress_key("app1", "Bob@X.test")).unwrap(),
            ("app1".to_string(), "bob@x.test".to_string())
        );
    }

    #[test]
    fn events_of_both_formats_decode() {
        use crate::types::{Event, EventKind, EventV1, Remote};
        let old = EventV1 {
            time_ms: 5,
            kind: EventKind::Delivered,
            id: "01ID".into(),
            recipient: "a@b.test".into(),
            domain: "b.test".into(),
            sender: "s@x.test".into(),
            remote: Remote::default(),
            reply: "250 ok".into(),
            node: 2,
        };
        let stored = encode(&vec![old.clone()]);
        let back = decode_events(&stored).unwrap();
        assert_eq!(back, vec![Event::from(old)]);
        let mut new = back[0].clone();
        new.kind = EventKind::Throttled;
        new.site = "mx.b.test".into();
        new.rule = "gmail-rate".into();
        assert_eq!(
            decode_events(&encode_events(&[new.clone()])).unwrap(),
            vec![new]
        );
    }
}
