//! The transaction logic, entry by entry, against a real store in a temporary directory:
//! no Raft, no clock (every time comes from the entries).

use super::*;
use crate::types::{Deletion, Event, EventKind, Outcome, Remote};
use openraft::{CommittedLeaderId, Membership};
use std::collections::{BTreeMap, BTreeSet};

struct Machine {
    sm: StateMachine,
    index: u64,
    _dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("db")).expect("db");
        let sm = StateMachine::open(&db, dir.path().join("snapshots")).expect("state machine");
        Machine {
            sm,
            index: 0,
            _dir: dir,
        }
    }

    fn entry(&mut self, payload: EntryPayload<TypeConfig>) -> Response {
        self.index += 1;
        let entry = Entry {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), self.index),
            payload,
        };
        self.sm
            .apply_entry(&entry, &mut HashMap::new())
            .expect("apply")
    }

    fn apply(&mut self, request: Request) -> Response {
        self.entry(EntryPayload::Normal(request))
    }

    fn enqueue(&mut self, messages: Vec<NewMessage>) -> Response {
        self.apply(Request::Enqueue { messages })
    }

    fn outcome(&mut self, now_ms: u64, outcome: Outcome) -> Response {
        self.apply(Request::Outcomes {
            now_ms,
            results: vec![outcome],
        })
    }

    fn reader(&self) -> QueueReader {
        self.sm.reader()
    }

    fn record(&self, domain: &str, id: &str) -> Option<DeliveryRecord> {
        self.reader().delivery(domain, id).expect("read delivery")
    }

    fn events(&self) -> Vec<(u64, Event)> {
        self.reader()
            .events_after(0)
            .collect::<Result<_, _>>()
            .expect("read events")
    }

    /// Event kinds for `id`, in order.
    fn kinds(&self, id: &str) -> Vec<(EventKind, String)> {
        self.events()
            .into_iter()
            .filter(|(_, e)| e.id == id)
            .map(|(_, e)| (e.kind, e.recipient))
            .collect()
    }

    fn due(&self, domain: &str, now_ms: u64) -> Vec<String> {
        self.reader()
            .shared
            .with(|i| i.take_due(domain, now_ms, 100, &Default::default()).0)
    }

    fn messages(&self) -> usize {
        self.reader().shared.with(|i| i.messages())
    }
}

fn message(id: &str, rcpts: &[&str]) -> NewMessage {
    NewMessage {
        id: id.into(),
        sender: "sender@src.test".into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        body: format!("Subject: {id}\r\n\r\nbody of {id}\r\n").into_bytes(),
        received_at_ms: 1_000,
        eight_bit: false,
        smtputf8: false,
    }
}

/// The outcome of an attempt on `domain` that finished `finished` (delivered, unless
/// also in `failed`) and deferred the rest until `next_attempt_ms`.
fn outcome(id: &str, domain: &str, finished: &[&str], failed: &[&str], next: u64) -> Outcome {
    Outcome {
        id: id.into(),
        domain: domain.into(),
        finished: finished.iter().map(|r| r.to_string()).collect(),
        next_attempt_ms: next,
        last_reply: Some("250 2.0.0 ok".into()),
        failed: failed.iter().map(|r| r.to_string()).collect(),
        remote: Remote {
            host: "mx.dst.test".into(),
            ip: "127.0.0.9".into(),
            tls: String::new(),
        },
        node: 1,
        ..Outcome::default()
    }
}

#[test]
fn enqueue_is_idempotent_by_id_in_an_entry_across_entries_and_after_finishing() {
    let mut m = Machine::new();
    let r = m.enqueue(vec![
        message("A", &["x@dst.test"]),
        message("A", &["x@dst.test"]),
    ]);
    assert_eq!((r.added, r.duplicates), (1, 1));
    let r = m.enqueue(vec![
        message("A", &["x@dst.test"]),
        message("B", &["y@dst.test"]),
    ]);
    assert_eq!((r.added, r.duplicates), (1, 1));
    assert_eq!(m.messages(), 2);
    // Finished: the tombstone still makes a retried enqueue a no-op.
    m.outcome(2_000, outcome("A", "dst.test", &["x@dst.test"], &[], 0));
    assert!(m.reader().finished("A").unwrap());
    let r = m.enqueue(vec![message("A", &["x@dst.test"])]);
    assert_eq!((r.added, r.duplicates), (0, 1));
    assert_eq!(m.messages(), 1);
    // One Received event per recipient of each new message, none for duplicates.
    let received = m
        .events()
        .iter()
        .filter(|(_, e)| e.kind == EventKind::Received)
        .count();
    assert_eq!(received, 2);
}

#[test]
fn received_events_name_the_node_that_received() {
    let mut m = Machine::new();
    m.apply(Request::EnqueueFrom {
        node: 3,
        messages: vec![message("A", &["x@dst.test", "y@dst.test"])],
    });
    m.enqueue(vec![message("B", &["x@dst.test"])]);
    let nodes: Vec<(String, u64)> = m
        .events()
        .iter()
        .filter(|(_, e)| e.kind == EventKind::Received)
        .map(|(_, e)| (e.id.clone(), e.node))
        .collect();
    // An `Enqueue` written before nodes were named keeps node 0.
    assert_eq!(
        nodes,
        [
            ("A".to_string(), 3),
            ("A".to_string(), 3),
            ("B".to_string(), 0)
        ]
    );
}

#[test]
fn a_message_is_split_by_domain_and_goes_with_its_last_domain() {
    let mut m = Machine::new();
    m.enqueue(vec![message(
        "A",
        &["x@one.test", "y@two.test", "z@One.test", "x@one.test"],
    )]);
    let one = m.record("one.test", "A").expect("one.test record");
    assert_eq!(one.recipients, ["x@one.test", "z@One.test"]);
    assert_eq!(m.due("one.test", 0), ["A"]);
    assert_eq!(m.due("two.test", 0), ["A"]);
    m.outcome(
        2_000,
        outcome("A", "one.test", &["x@one.test", "z@One.test"], &[], 0),
    );
    assert!(m.record("one.test", "A").is_none());
    assert!(
        m.reader().message("A").unwrap().is_some(),
        "two.test is open"
    );
    assert!(m.reader().body("A").unwrap().is_some());
    m.outcome(2_000, outcome("A", "two.test", &["y@two.test"], &[], 0));
    assert!(m.reader().message("A").unwrap().is_none());
    assert!(m.reader().body("A").unwrap().is_none(), "the body went too");
    assert_eq!(m.messages(), 0);
    assert!(m.due("one.test", u64::MAX).is_empty());
}

#[test]
fn a_partial_outcome_defers_the_rest_until_its_next_attempt() {
    let mut m = Machine::new();
    m.enqueue(vec![message("A", &["x@dst.test", "y@dst.test"])]);
    let mut o = outcome("A", "dst.test", &["x@dst.test"], &[], 60_000);
    o.last_reply = Some("451 4.7.1 try later".into());
    m.outcome(2_000, o);
    let record = m.record("dst.test", "A").expect("still open");
    assert_eq!(record.recipients, ["y@dst.test"]);
    assert_eq!(record.attempts, 1);
    assert_eq!(record.next_attempt_ms, 60_000);
    assert_eq!(record.last_reply.as_deref(), Some("451 4.7.1 try later"));
    assert!(m.due("dst.test", 59_999).is_empty());
    assert_eq!(m.due("dst.test", 60_000), ["A"]);
    assert_eq!(
        m.kinds("A"),
        [
            (EventKind::Received, "x@dst.test".into()),
            (EventKind::Received, "y@dst.test".into()),
            (EventKind::Delivered, "x@dst.test".into()),
            (EventKind::Deferred, "y@dst.test".into()),
        ]
    );
    // The event carries the proposer's time, not the applying node's.
    let last = m.events().pop().unwrap().1;
    assert_eq!(last.time_ms, 2_000);
    assert_eq!(last.remote.host, "mx.dst.test");
}

#[test]
fn a_failure_enqueues_its_dsn_once_even_if_the_outcome_repeats() {
    let mut m = Machine::new();
    m.enqueue(vec![message("A", &["x@dst.test"])]);
    let mut o = outcome("A", "dst.test", &["x@dst.test"], &["x@dst.test"], 0);
    o.dsn = Some(NewMessage {
        recipients: vec!["sender@src.test".into()],
        sender: String::new(),
        ..message("DSN1", &[])
    });
    m.outcome(2_000, o.clone());
    assert_eq!(m.kinds("A").last().unwrap().0, EventKind::Bounced);
    assert_eq!(m.due("src.test", 0), ["DSN1"]);
    // The DSN's Received event comes after the Bounced event that caused it.
    let order: Vec<EventKind> = m.events().into_iter().map(|(_, e)| e.kind).collect();
    assert_eq!(
        order,
        [EventKind::Received, EventKind::Bounced, EventKind::Received]
    );
    // A repeated outcome (a retried commit) with another DSN changes nothing.
    o.dsn.as_mut().unwrap().id = "DSN2".into();
    m.outcome(2_500, o);
    assert_eq!(m.due("src.test", 0), ["DSN1"]);
    assert_eq!(m.events().len(), 3);
}

#[test]
fn suppressed_and_expired_recipients_get_their_own_events() {
    let mut m = Machine::new();
    m.enqueue(vec![message("A", &["x@dst.test", "y@dst.test"])]);
    let mut o = outcome("A", "dst.test", &["x@dst.test"], &[], 0);
    o.suppressed = vec!["x@dst.test".into()];
    o.next_attempt_ms = 5_000;
    m.outcome(2_000, o);
    let mut o = outcome("A", "dst.test", &["y@dst.test"], &["y@dst.test"], 0);
    o.expired = true;
    m.outcome(9_000, o);
    let kinds: Vec<_> = m.kinds("A").into_iter().skip(2).collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Suppressed, "x@dst.test".into()),
            (EventKind::Deferred, "y@dst.test".into()),
            (EventKind::Expired, "y@dst.test".into()),
        ]
    );
    assert!(m.reader().message("A").unwrap().is_none());
}

#[test]
fn retry_makes_every_open_delivery_due_now() {
    let mut m = Machine::new();
    m.enqueue(vec![message("A", &["x@one.test", "y@two.test"])]);
    m.outcome(2_000, outcome("A", "one.test", &[], &[], 600_000));
    m.outcome(2_000, outcome("A", "two.test", &[], &[], 900_000));
    assert!(m.due("one.test", 3_000).is_empty());
    let r = m.apply(Request::Retry { id: "A".into() });
    assert!(r.changed);
    assert_eq!(m.due("one.test", 3_000), ["A"]);
    assert_eq!(m.due("two.test", 3_000), ["A"]);
    assert_eq!(m.record("one.test", "A").unwrap().attempts, 1, "kept");
    assert!(!m.apply(Request::Retry { id: "nope".into() }).changed);
}

#[test]
fn delete_drops_the_message_with_or_without_a_dsn() {
    let mut m = Machine::new();
    m.enqueue(vec![
        message("A", &["x@one.test", "y@two.test"]),
        message("B", &["z@one.test"]),
    ]);
    let r = m.apply(Request::Delete {
        id: "A".into(),
        now_ms: 3_000,
        dsn: None,
    });
    assert!(r.changed);
    assert!(m.reader().message("A").unwrap().is_none());
    assert!(m.reader().finished("A").unwrap());
    let deleted: Vec<_> = m
        .kinds("A")
        .into_iter()
        .filter(|(k, _)| *k == EventKind::Deleted)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(deleted, ["x@one.test", "y@two.test"]);
    assert_eq!(m.due("one.test", 0), ["B"]);
    // Again: nothing left to delete, and no DSN either.
    let dsn = NewMessage {
        sender: String::new(),
        ..message("DSN-A", &["sender@src.test"])
    };
    let r = m.apply(Request::Delete {
        id: "A".into(),
        now_ms: 3_000,
        dsn: Some(dsn),
    });
    assert!(!r.changed);
    assert!(m.due("src.test", 0).is_empty());
    // With a DSN.
    let dsn = NewMessage {
        sender: String::new(),
        ..message("DSN-B", &["sender@src.test"])
    };
    let r = m.apply(Request::Delete {
        id: "B".into(),
        now_ms: 3_000,
        dsn: Some(dsn),
    });
    assert!(r.changed);
    assert_eq!(m.due("src.test", 0), ["DSN-B"]);
    assert_eq!(m.messages(), 1);
}

fn dsn_for(id: &str) -> NewMessage {
    NewMessage {
        sender: String::new(),
        ..message(&format!("DSN-{id}"), &["sender@src.test"])
    }
}

#[test]
fn retry_many_makes_one_domains_deliveries_due_and_counts_them() {
    let mut m = Machine::new();
    m.enqueue(vec![
        message("A", &["x@one.test", "y@two.test"]),
        message("B", &["z@one.test"]),
        message("C", &["w@two.test"]),
    ]);
    for (id, domain) in [("A", "one.test"), ("A", "two.test"), ("B", "one.test")] {
        m.outcome(2_000, outcome(id, domain, &[], &[], 600_000));
    }
    m.outcome(2_000, outcome("C", "two.test", &[], &[], 600_000));
    let r = m.apply(Request::RetryMany {
        domain: Some("One.Test".into()),
        ids: vec!["A".into(), "B".into(), "C".into(), "nope".into()],
    });
    assert_eq!(
        (r.changed, r.added),
        (true, 2),
        "A and B; C has nothing to one.test"
    );
    assert_eq!(m.due("one.test", 3_000), ["A", "B"]);
    assert!(m.due("two.test", 3_000).is_empty(), "two.test untouched");
    // Every domain.
    let r = m.apply(Request::RetryMany {
        domain: None,
        ids: vec!["A".into(), "C".into()],
    });
    assert_eq!(r.added, 2);
    assert_eq!(m.due("two.test", 3_000), ["A", "C"]);
    let r = m.apply(Request::RetryMany {
        domain: Some("three.test".into()),
        ids: vec!["A".into()],
    });
    assert_eq!((r.changed, r.added), (false, 0));
}

#[test]
fn delete_many_deletes_one_domains_deliveries_with_a_dsn_each_once() {
    let mut m = Machine::new();
    m.enqueue(vec![
        message("A", &["x@one.test", "y@two.test"]),
        message("B", &["z@one.test", "v@one.test"]),
        message("C", &["w@two.test"]),
    ]);
    let deletions = |ids: &[&str]| -> Vec<Deletion> {
        ids.iter()
            .map(|id| Deletion {
                id: id.to_string(),
                dsn: Some(dsn_for(id)),
            })
            .collect()
    };
    let request = Request::DeleteMany {
        domain: Some("one.test".into()),
        now_ms: 3_000,
        messages: deletions(&["A", "B", "C"]),
    };
    let r = m.apply(request.clone());
    assert_eq!((r.changed, r.added), (true, 2));
    assert!(m.due("one.test", 0).is_empty());
    // A keeps its two.test recipient; C is untouched.
    assert_eq!(m.due("two.test", 0), ["A", "C"]);
    assert_eq!(
        m.reader().message("A").unwrap().map(|a| a.pending_domains),
        Some(1)
    );
    assert!(m.reader().message("B").unwrap().is_none());
    assert!(m.reader().finished("B").unwrap());
    let deleted: Vec<_> = m
        .events()
        .into_iter()
        .filter(|(_, e)| e.kind == EventKind::Deleted)
        .map(|(_, e)| e.recipient)
        .collect();
    assert_eq!(deleted, ["x@one.test", "z@one.test", "v@one.test"]);
    // One DSN per message deleted from, none for C.
    assert_eq!(m.due("src.test", 0), ["DSN-A", "DSN-B"]);
    // The same entry again (a write retried after a failover) changes nothing.
    let r = m.apply(request);
    assert_eq!((r.changed, r.added), (false, 0));
    assert_eq!(m.due("src.test", 0), ["DSN-A", "DSN-B"]);
    // Every domain: what is left of A, and C.
    let r = m.apply(Request::DeleteMany {
        domain: None,
        now_ms: 4_000,
        messages: vec![
            Deletion {
                id: "A".into(),
                dsn: None,
            },
            Deletion {
                id: "C".into(),
                dsn: None,
            },
        ],
    });
    assert_eq!(r.added, 2);
    assert!(m.due("two.test", 0).is_empty());
    assert_eq!(m.messages(), 2, "the two DSNs");
    let ids: Vec<String> = m
        .reader()
        .message_ids("")
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ids, ["DSN-A", "DSN-B"]);
    let ids: Vec<String> = m
        .reader()
        .message_ids("DSN-A")
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ids, ["DSN-B"]);
}

#[test]
fn tombstones_expire_by_the_entries_clock() {
    let mut m = Machine::new();
    m.enqueue(vec![message("A", &["x@dst.test"])]);
    m.outcome(2_000, outcome("A", "dst.test", &["x@dst.test"], &[], 0));
    // Not yet: any outcome entry expires the tombstones older than the window.
    m.apply(Request::Outcomes {
        now_ms: 2_000 + TOMBSTONE_MS,
        results: Vec::new(),
    });
    assert!(m.reader().finished("A").unwrap());
    m.apply(Request::Outcomes {
        now_ms: 2_000 + TOMBSTONE_MS + 1,
        results: Vec::new(),
    });
    assert!(!m.reader().finished("A").unwrap());
    let r = m.enqueue(vec![message("A", &["x@dst.test"])]);
    assert_eq!(r.added, 1, "a forgotten id is new again");
}

#[test]
fn the_suppression_list_is_case_blind_and_reports_changes() {
    let mut m = Machine::new();
    let suppress = |address: &str| Request::Suppress {
        address: address.into(),
        reason: "complained".into(),
        now_ms: 7,
    };
    assert!(m.apply(suppress("Bob@Dst.test")).changed);
    assert!(!m.apply(suppress("bob@dst.test")).changed);
    assert!(m.reader().is_suppressed("BOB@dst.TEST").unwrap());
    let list = m.reader().suppressions().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].0, "bob@dst.test");
    assert_eq!(
        (list[0].1.reason.as_str(), list[0].1.since_ms),
        ("complained", 7)
    );
    let unsuppress = Request::Unsuppress {
        address: "bob@DST.test".into(),
    };
    assert!(m.apply(unsuppress.clone()).changed);
    assert!(!m.apply(unsuppress).changed);
    assert!(!m.reader().is_suppressed("bob@dst.test").unwrap());
}

#[test]
fn a_suspended_domain_has_nothing_due_until_resumed() {
    let mut m = Machine::new();
    m.enqueue(vec![message("A", &["x@dst.test"])]);
    let r = m.apply(Request::Suspend {
        domain: "DST.test".into(),
        reason: "421s".into(),
        now_ms: 5,
    });
    assert!(r.changed);
    assert!(m.due("dst.test", u64::MAX).is_empty());
    assert_eq!(m.reader().shared.with(|i| i.next_due("dst.test")), None);
    assert_eq!(m.reader().suspended().unwrap()[0].0, "dst.test");
    // Still accepted and queued meanwhile.
    m.enqueue(vec![message("B", &["y@dst.test"])]);
    assert_eq!(m.reader().shared.with(|i| i.queued("dst.test")), 2);
    assert!(
        m.apply(Request::Resume {
            domain: "dst.TEST".into()
        })
        .changed
    );
    assert!(
        !m.apply(Request::Resume {
            domain: "dst.test".into()
        })
        .changed
    );
    assert_eq!(m.due("dst.test", 0), ["A", "B"]);
}

#[test]
fn events_get_consecutive_positions_and_trim_by_whole_records() {
    let mut m = Machine::new();
    m.enqueue(vec![message("A", &["a@d.test", "b@d.test"])]); // positions 1, 2
    m.enqueue(vec![message("B", &["c@d.test"])]); // 3
    m.enqueue(vec![message("C", &["e@d.test"])]); // 4
    let positions: Vec<u64> = m.events().iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, [1, 2, 3, 4]);
    assert_eq!(m.reader().event_bounds().unwrap(), (1, 5));
    // Below 2 cuts no whole record (the first holds 1 and 2); below 4 cuts two.
    assert!(!m.apply(Request::TrimEvents { below: 2 }).changed);
    assert!(m.apply(Request::TrimEvents { below: 4 }).changed);
    assert_eq!(m.reader().event_bounds().unwrap(), (4, 5));
    let after: Vec<u64> = m.reader().events_after(2).map(|e| e.unwrap().0).collect();
    assert_eq!(after, [4]);
    m.apply(Request::WebhookSent { position: 4 });
    assert_eq!(m.reader().webhook_position().unwrap(), 4);
}

#[test]
fn lease_renewals_of_voters_join_the_owner_set() {
    let mut m = Machine::new();
    let voters: BTreeSet<NodeId> = [1, 2].into();
    let nodes: BTreeMap<NodeId, openraft::BasicNode> = voters
        .iter()
        .map(|id| (*id, openraft::BasicNode::default()))
        .collect();
    let membership = Membership::new(vec![voters], nodes);
    m.entry(EntryPayload::Membership(membership));
    m.apply(Request::LeaseRenew { node: 1 });
    m.apply(Request::LeaseRenew { node: 3 }); // not a voter
    let ownership = m.reader().shared.ownership.borrow().clone();
    assert_eq!(ownership.nodes, [1].into());
    assert_eq!(ownership.renewed.get(&1), Some(&2));
    assert_eq!(ownership.renewed.get(&3), Some(&3));
    let renewals = m.reader().shared.renewals.lock().unwrap().clone();
    assert_eq!(renewals.get(&1).map(|r| r.0), Some(2));
    // Applied ownership survives a reopen (it is in the state, not just in memory).
    assert_eq!(m.sm.meta.ownership, *ownership);
    assert_eq!(m.sm.meta.voters, [1, 2].into());
}

#[path = "site_tests.rs"]
mod sites;

#[path = "tenant_tests.rs"]
mod tenants;

#[path = "bounce_tests.rs"]
mod bounces;
#[path = "sts_tests.rs"]
mod sts;
