//! openraft type configuration, log commands and the records they create.

use serde::{Deserialize, Serialize};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Baton's Raft types.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;

/// A message accepted at ingress, as it enters the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// Made at ingress (ULID); enqueueing the same id twice is a no-op.
    pub id: String,
    /// Envelope sender; empty for the null reverse-path `<>`.
    pub sender: String,
    /// Envelope recipients, `local@domain`.
    pub recipients: Vec<String>,
    /// The message as it will be sent, `Received:` header included.
    #[serde(with = "bytes")]
    pub body: Vec<u8>,
    /// Unix milliseconds at acceptance.
    pub received_at_ms: u64,
    /// The body needs 8BITMIME; recipients or sender need SMTPUTF8.
    pub eight_bit: bool,
    pub smtputf8: bool,
}

/// The result of one delivery attempt of one message to one domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub id: String,
    pub domain: String,
    /// Recipients that are finished (delivered or failed for good).
    pub finished: Vec<String>,
    /// When the remaining recipients are tried again (unix ms).
    pub next_attempt_ms: u64,
    /// The remote's last reply, for operators.
    pub last_reply: Option<String>,
    /// A delivery status notification to enqueue with this outcome.
    pub dsn: Option<NewMessage>,
    /// Of `finished`: the recipients that failed for good (the rest were delivered,
    /// or skipped as suppressed).
    pub failed: Vec<String>,
    /// Of `finished`: the recipients skipped because they are on the suppression list.
    pub suppressed: Vec<String>,
    /// The failure is the message's age passing `delivery.max_age`.
    pub expired: bool,
    /// What the attempt talked to, for events: host name, IP, TLS version ("" none).
    pub remote: Remote,
    /// The node that made the attempt.
    pub node: NodeId,
}

/// The remote end of one delivery attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    pub host: String,
    pub ip: String,
    pub tls: String,
}

/// What happened to a message (for one recipient), as kept in the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Received,
    Delivered,
    Deferred,
    Bounced,
    Expired,
    Suppressed,
    Deleted,
    // New kinds go last: a variant's place is its encoding in the state.
    /// A site's rate or connections went down.
    Throttled,
    /// They went up again.
    ThrottleRelaxed,
    SiteSuspended,
    /// A suspension ended: one message may go.
    SiteProbe,
    SiteResumed,
    TenantWarning,
    TenantPaused,
    TenantResumed,
    /// A delivery status notification arrived after delivery (a recipient's failure).
    BouncedAsync,
    /// A feedback report (ARF, type abuse or fraud) about a delivered message.
    Complaint,
}

impl EventKind {
    pub const ALL: [EventKind; 17] = [
        EventKind::Received,
        EventKind::Delivered,
        EventKind::Deferred,
        EventKind::Bounced,
        EventKind::Expired,
        EventKind::Suppressed,
        EventKind::Deleted,
        EventKind::Throttled,
        EventKind::ThrottleRelaxed,
        EventKind::SiteSuspended,
        EventKind::SiteProbe,
        EventKind::SiteResumed,
        EventKind::TenantWarning,
        EventKind::TenantPaused,
        EventKind::TenantResumed,
        EventKind::BouncedAsync,
        EventKind::Complaint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Received => "received",
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Bounced => "bounced",
            EventKind::Expired => "expired",
            EventKind::Suppressed => "suppressed",
            EventKind::Deleted => "deleted",
            EventKind::Throttled => "throttled",
            EventKind::ThrottleRelaxed => "throttle_relaxed",
            EventKind::SiteSuspended => "site_suspended",
            EventKind::SiteProbe => "site_probe",
            EventKind::SiteResumed => "site_resumed",
            EventKind::TenantWarning => "tenant_warning",
            EventKind::TenantPaused => "tenant_paused",
            EventKind::TenantResumed => "tenant_resumed",
            EventKind::BouncedAsync => "bounced_async",
            EventKind::Complaint => "complaint",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One entry of the replicated event log. Its position is its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub time_ms: u64,
    pub kind: EventKind,
    pub id: String,
    pub recipient: String,
    pub domain: String,
    pub sender: String,
    pub remote: Remote,
    pub reply: String,
    pub node: NodeId,
    /// The destination site, for site events (and deliveries, when known).
    pub site: String,
    /// The tenant, for tenant events.
    pub tenant: String,
    /// The classification rule that caused a policy event.
    pub rule: String,
    /// What changed, for people: "rate 1.5/s, 3 connections".
    pub detail: String,
}

/// An event as stored before sites and tenants (read from older state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventV1 {
    pub time_ms: u64,
    pub kind: EventKind,
    pub id: String,
    pub recipient: String,
    pub domain: String,
    pub sender: String,
    pub remote: Remote,
    pub reply: String,
    pub node: NodeId,
}

impl From<EventV1> for Event {
    fn from(e: EventV1) -> Event {
        Event {
            time_ms: e.time_ms,
            kind: e.kind,
            id: e.id,
            recipient: e.recipient,
            domain: e.domain,
            sender: e.sender,
            remote: e.remote,
            reply: e.reply,
            node: e.node,
            site: String::new(),
            tenant: String::new(),
            rule: String::new(),
            detail: String::new(),
        }
    }
}

/// A domain's site, as committed by the node that resolved its MX hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteOf {
    pub site: String,
    /// The log index that set it: a [`Request::SetSite`] names the one it replaces.
    pub index: u64,
    /// When the MX hosts were resolved (unix ms).
    pub resolved_ms: u64,
}

/// A recipient suppressed because the remote said it does not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoSuppression {
    pub address: String,
    /// The reply's category (`bad_mailbox`, `inactive_mailbox`, `bad_domain`).
    pub category: String,
    pub reply: String,
}

/// A tenant's counters and standing as replicated (the tenant is the AUTH user of the
/// session that sent its mail, else the sender's domain).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub tenant: baton_reputation::tenant::Tenant,
    /// When its standing last changed (unix ms, the proposer's clock; 0: never).
    pub since_ms: u64,
    /// The thresholds of its last verdict (none before its first counted recipient).
    pub thresholds: Option<baton_reputation::tenant::Thresholds>,
}

impl TenantRecord {
    /// Why it is paused (what its senders are told), if it is.
    pub fn pause_reason(&self) -> Option<&str> {
        match &self.tenant.standing {
            baton_reputation::tenant::Standing::Paused { note, .. } => Some(note),
            _ => None,
        }
    }
}

/// An outcome and what it teaches beyond the message (a [`Request::Finished`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub outcome: Outcome,
    pub suppress: Vec<AutoSuppression>,
    /// The deferral was the site's throttle: it does not count as an attempt.
    pub throttled: bool,
    /// Each failed or deferred recipient's own reply and the rule that classified it,
    /// for its event (`outcome.last_reply` is the transaction's last reply).
    pub replies: Vec<RecipientReply>,
}

/// One recipient's reply in a [`Finished`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientReply {
    pub recipient: String,
    pub reply: String,
    pub rule: String,
}

/// The event a site's transition makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteEvent {
    pub kind: EventKind,
    pub rule: String,
    pub reply: String,
    pub detail: String,
    pub time_ms: u64,
}

/// An operator's note on a suspended domain or a suppressed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub reason: String,
    pub since_ms: u64,
}

/// A command in the Raft log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Accept messages into the queue.
    Enqueue {
        messages: Vec<NewMessage>,
    },
    /// Record delivery outcomes. `now_ms` is the proposer's clock, used to expire
    /// idempotency tombstones.
    Outcomes {
        now_ms: u64,
        results: Vec<Outcome>,
    },
    /// A node renews its delivery lease (and joins the owner set if it is a voter).
    LeaseRenew {
        node: NodeId,
    },
    /// The leader found `node`'s lease, renewed at log index `renewal`, expired.
    Expire {
        node: NodeId,
        renewal: u64,
    },
    /// `node` drained and gives its domains back.
    Release {
        node: NodeId,
    },
    /// An operator removes `node`: its domains move to the others.
    Retire {
        node: NodeId,
    },
    /// `node` has nothing in flight that `epoch` forbids it.
    AssignAck {
        node: NodeId,
        epoch: u64,
    },
    /// An operator: make every open delivery of message `id` due now.
    Retry {
        id: String,
    },
    /// An operator: drop message `id` from the queue (a `Deleted` event per open
    /// recipient), enqueueing `dsn` to its sender if given.
    Delete {
        id: String,
        now_ms: u64,
        dsn: Option<NewMessage>,
    },
    /// An operator holds delivery to `domain` (mail is still accepted).
    Suspend {
        domain: String,
        reason: String,
        now_ms: u64,
    },
    Resume {
        domain: String,
    },
    /// An operator adds `address` to the suppression list (lower-cased).
    Suppress {
        address: String,
        reason: String,
        now_ms: u64,
    },
    Unsuppress {
        address: String,
    },
    /// The leader trims the event log: events at positions below `below` go.
    TrimEvents {
        below: u64,
    },
    /// The webhook delivered every event up to `position`.
    WebhookSent {
        position: u64,
    },
    // New commands go last: a variant's place is its encoding in the log.
    /// An operator: `Retry` for many messages at once (`batonctl queue retry`), each
    /// limited to its delivery to `domain` when one is given. [`Response::added`] counts
    /// the messages it made due.
    RetryMany {
        domain: Option<String>,
        ids: Vec<String>,
    },
    /// An operator: `Delete` for many messages at once (`batonctl queue delete`), each
    /// limited to its delivery to `domain` when one is given (the message stays queued
    /// for its other domains), each enqueueing its DSN if anything of it was deleted.
    /// [`Response::added`] counts the messages it deleted from.
    DeleteMany {
        domain: Option<String>,
        now_ms: u64,
        messages: Vec<Deletion>,
    },
    /// Accept messages received by `node` (its id goes into their `received` events).
    /// Ingress writes this; `Enqueue` stays for entries already in logs.
    EnqueueFrom {
        node: NodeId,
        messages: Vec<NewMessage>,
    },
    /// `by`, which may deliver `domain` now and has none of it in flight, found its site:
    /// the domain's delivery moves to the site's owner. Applied only while `base` is
    /// still the index of the domain's site record (0: none) and `by` may still deliver
    /// it, so a stale or repeated proposal changes nothing.
    SetSite {
        domain: String,
        site: String,
        base: u64,
        by: NodeId,
        resolved_ms: u64,
    },
    /// The owner of `site` changed its throttle (applied only if `by` still owns it).
    SiteUpdate {
        site: String,
        by: NodeId,
        state: baton_reputation::site::SiteState,
        event: Option<SiteEvent>,
    },
    /// Delivery outcomes with what they teach: `Outcomes` plus hard bounces to suppress,
    /// and the counts of each message's tenant (recipients finished with a remote's
    /// answer, hard bounces, deliveries), judged against `thresholds` (the proposer's
    /// `[tenants]`: carried here so that every node reaches the same verdict).
    /// Delivery writes this; `Outcomes` stays for entries already in logs.
    Finished {
        now_ms: u64,
        results: Vec<Finished>,
        thresholds: baton_reputation::tenant::Thresholds,
    },
    /// An operator ends `site`'s throttle or suspension: its replicated state goes (a
    /// site starts at its configured limits) and its owner's actor, if running, resumes.
    SiteResume {
        site: String,
        now_ms: u64,
    },
    /// Accept messages received by `node`, each with its tenant: `tenants[i]` is
    /// `messages[i]`'s ("" for none, as for the null sender without AUTH; missing entries
    /// count as ""). Ingress writes this; `EnqueueFrom` stays for entries already in logs.
    EnqueueTenants {
        node: NodeId,
        messages: Vec<NewMessage>,
        tenants: Vec<String>,
    },
    /// An operator pauses `tenant`: its mail is refused at MAIL and its queued mail held.
    /// [`Response::changed`] is false if it was paused already (the reason is kept).
    PauseTenant {
        tenant: String,
        reason: String,
        now_ms: u64,
    },
    /// An operator lifts a tenant's pause (by the thresholds or by hand): a fresh window
    /// starts and its held mail is due again.
    ResumeTenant {
        tenant: String,
        now_ms: u64,
    },
    /// An operator suppresses `address` (lower-cased) for `tenant`'s mail only.
    SuppressForTenant {
        tenant: String,
        address: String,
        reason: String,
        now_ms: u64,
    },
    UnsuppressForTenant {
        tenant: String,
        address: String,
    },
    /// The owner of `domain` fetched its MTA-STS policy (RFC 8461): it is cached in the
    /// state until it expires, so a new owner enforces it even when the fetch fails.
    /// `None` drops the cached policy (the domain published `mode: none`).
    SetStsPolicy {
        domain: String,
        policy: Option<crate::sts::StsPolicyRecord>,
    },
    /// The leader found no bounce-token key and made one (random, by the proposer): the
    /// first key set stays, later ones change nothing.
    SetBounceKey {
        key: Vec<u8>,
    },
    /// `EnqueueTenants`, plus a retained record of each new message (its tenant, sender
    /// and recipients: [`Tracked`]) that outlives its delivery, so that a bounce or a
    /// complaint about it can be judged later. Ingress writes this when `bounces.domain`
    /// is set.
    EnqueueTracked {
        node: NodeId,
        messages: Vec<NewMessage>,
        tenants: Vec<String>,
    },
    /// One asynchronous report (a late bounce or a complaint) received by Baton: what it
    /// says about each recipient of tracked messages, with the proposer's `[tenants]`
    /// thresholds for the tenants' verdicts.
    Feedback {
        now_ms: u64,
        thresholds: baton_reputation::tenant::Thresholds,
        reports: Vec<FeedbackReport>,
    },
    /// The leader lets the retained records of messages received before `before_ms` go
    /// (with the event retention).
    TrimTracked {
        before_ms: u64,
    },
}

/// What a message's retained record keeps (`k/<id>`), for reports after delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracked {
    /// "" for none.
    pub tenant: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// When the message was received (unix ms).
    pub at_ms: u64,
}

/// What an asynchronous report says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeedbackKind {
    /// A delivery status notification's `failed` recipient.
    Bounce,
    /// An ARF report of type abuse or fraud.
    Complaint,
}

/// One recipient of a [`Request::Feedback`], verified by the node that received it (the
/// token's MAC); applied only if `recipient` is one of the tracked message's recipients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackReport {
    pub kind: FeedbackKind,
    /// The message id.
    pub id: String,
    pub recipient: String,
    /// The remote's reply as the classifier saw it (bounces), or the report's type and
    /// agent (complaints).
    pub reply: String,
    /// The classification rule (bounces) or "arf" (complaints).
    pub rule: String,
    /// The reply's category (bounces).
    pub category: String,
    /// A hard bounce: suppress the recipient for everyone and count it on the tenant.
    pub hard: bool,
    /// The node that received the report.
    pub node: NodeId,
}

/// One message of a [`Request::DeleteMany`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub id: String,
    /// The bounce to its sender, for the recipients deleted.
    pub dsn: Option<NewMessage>,
}

/// What applying a command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// For `Enqueue`: how many were new and how many were already known. For `RetryMany`
    /// and `DeleteMany`, `added` counts the messages changed (one field for both keeps
    /// the encoding that nodes forward writes with).
    pub added: u32,
    pub duplicates: u32,
    /// The log index of the entry.
    pub index: u64,
    /// For operator commands: whether the command changed anything.
    pub changed: bool,
}

/// A queued message's envelope and bookkeeping (the body is stored apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    pub sender: String,
    pub recipients: Vec<String>,
    pub received_at_ms: u64,
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// Domains whose delivery record is still open.
    pub pending_domains: u32,
}

/// The `next_attempt_ms` of a held delivery: never due until an operator retries it
/// (`batonctl message retry`) or deletes it.
pub const HELD: u64 = u64::MAX;

/// One message's delivery to one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// Recipients still to be delivered.
    pub recipients: Vec<String>,
    pub attempts: u32,
    /// Unix ms; 0 means at once, [`HELD`] never.
    pub next_attempt_ms: u64,
    pub last_reply: Option<String>,
}

/// The lower-cased domain of `local@domain` (the part after the last `@`).
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// `Vec<u8>` as one byte string rather than a sequence of separate `u8`s: with bincode
/// the encoding is the same (a length, then the bytes), but it is copied in one piece
/// instead of element by element, which mattered for message bodies crossing the log,
/// the network and the state several times each.
mod bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    #[cfg(test)]
    mod tests {
        /// The encoding is the one a plain `Vec<u8>` had: logs written before still read.
        #[test]
        fn same_bincode_as_a_plain_vec() {
            #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
            struct Fast(#[serde(with = "super")] Vec<u8>);
            let body = b"Subject: x\r\n\r\nbody\xff\r\n".to_vec();
            let plain = bincode::serialize(&body).unwrap();
            let fast = bincode::serialize(&Fast(body.clone())).unwrap();
            assert_eq!(plain, fast);
            let back: Fast = bincode::deserialize(&plain).unwrap();
            assert_eq!(back.0, body);
        }
    }
}
