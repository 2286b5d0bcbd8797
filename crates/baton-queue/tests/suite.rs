//! openraft's storage test suite against our sled-backed stores, plus queue semantics.
#![allow(clippy::result_large_err)]

use baton_queue::db::Db;
use baton_queue::log_store::LogStore;
use baton_queue::state_machine::StateMachine;
use baton_queue::types::{NodeId, StorageError, TypeConfig};
use baton_queue::{NewMessage, Outcome, QueueNode, QueueOptions};
use openraft::testing::{StoreBuilder, Suite};
use std::time::Duration;
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("tempdir");
        let io = |e: baton_queue::db::DbError| -> StorageError {
            openraft::StorageIOError::<NodeId>::write(&e).into()
        };
        let db = Db::open(&dir.path().join("db")).map_err(io)?;
        let log = LogStore::open(&db, &dir.path().join("log")).map_err(io)?;
        let sm = StateMachine::open(&db, dir.path().join("snapshots")).map_err(io)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}

fn message(id: &str, rcpts: &[&str]) -> NewMessage {
    NewMessage {
        id: id.into(),
        sender: "a@src.test".into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        body: b"Subject: t\r\n\r\nhi\r\n".to_vec(),
        received_at_ms: 1,
        eight_bit: false,
        smtputf8: false,
    }
}

async fn open(dir: &TempDir) -> QueueNode {
    let node = QueueNode::open(
        QueueOptions {
            node_id: 1,
            data_dir: dir.path().to_path_buf(),
            advertise: "127.0.0.1:7301".into(),
            bootstrap: true,
            snapshot_logs: 5000,
        },
        baton_queue::network::NoPeers,
    )
    .await
    .expect("open");
    node.wait_ready(Duration::from_secs(10))
        .await
        .expect("ready");
    node
}

#[tokio::test]
async fn enqueue_is_idempotent_and_outcomes_finish_messages() {
    let dir = TempDir::new().unwrap();
    let node = open(&dir).await;
    let r = node
        .enqueue(vec![
            message("m1", &["x@one.test", "y@two.test", "z@TWO.test"]),
            message("m1", &["x@one.test"]),
        ])
        .await
        .unwrap();
    assert_eq!((r.added, r.duplicates), (1, 1));
    let none = std::collections::HashSet::new();
    let idx = |d: &str| node.reader.shared.with(|i| i.take_due(d, 10, 10, &none).0);
    assert_eq!(idx("one.test"), vec!["m1".to_string()]);
    assert_eq!(idx("two.test"), vec!["m1".to_string()]);
    let rec = node.reader.delivery("two.test", "m1").unwrap().unwrap();
    assert_eq!(rec.recipients, vec!["y@two.test", "z@TWO.test"]);

    // one.test done; two.test: one finished, one deferred.
    node.record_outcomes(
        100,
        vec![
            Outcome {
                id: "m1".into(),
                domain: "one.test".into(),
                finished: vec!["x@one.test".into()],
                next_attempt_ms: 0,
                last_reply: Some("250 ok".into()),
                dsn: None,
                ..Default::default()
            },
            Outcome {
                id: "m1".into(),
                domain: "two.test".into(),
                finished: vec!["y@two.test".into()],
                next_attempt_ms: 5000,
                last_reply: Some("451 later".into()),
                dsn: None,
                ..Default::default()
            },
        ],
    )
    .await
    .unwrap();
    assert!(idx("one.test").is_empty());
    assert!(idx("two.test").is_empty(), "deferred until 5000");
    assert_eq!(
        node.reader.shared.with(|i| i.next_due("two.test")),
        Some(5000)
    );
    let rec = node.reader.delivery("two.test", "m1").unwrap().unwrap();
    assert_eq!((rec.attempts, rec.recipients.len()), (1, 1));

    node.record_outcomes(
        200,
        vec![Outcome {
            id: "m1".into(),
            domain: "two.test".into(),
            finished: vec!["z@TWO.test".into()],
            next_attempt_ms: 0,
            last_reply: None,
            dsn: Some(message("dsn1", &["a@src.test"])),
            ..Default::default()
        }],
    )
    .await
    .unwrap();
    assert!(node.reader.message("m1").unwrap().is_none());
    assert!(node.reader.body("m1").unwrap().is_none());
    assert!(node.reader.knows("m1").unwrap(), "tombstone kept");
    assert_eq!(idx("src.test"), vec!["dsn1".to_string()]);
    // A retried enqueue of a finished id is a no-op.
    let r = node
        .enqueue(vec![message("m1", &["x@one.test"])])
        .await
        .unwrap();
    assert_eq!((r.added, r.duplicates), (0, 1));
    assert_eq!(node.reader.shared.with(|i| i.messages()), 1);
    node.shutdown().await;
}

#[tokio::test]
async fn state_survives_restart() {
    let dir = TempDir::new().unwrap();
    {
        let node = open(&dir).await;
        for i in 0..50 {
            node.enqueue(vec![message(&format!("r{i}"), &["u@keep.test"])])
                .await
                .unwrap();
        }
        node.shutdown().await;
    }
    let node = open(&dir).await;
    assert_eq!(node.reader.shared.with(|i| i.queued("keep.test")), 50);
    assert_eq!(node.reader.shared.with(|i| i.messages()), 50);
    node.shutdown().await;
}

/// Operator commands (retry, delete, suspend, suppress, trim) and the events that
/// enqueue, outcomes and deletes leave.
#[tokio::test]
async fn operator_commands_and_events() {
    use baton_queue::types::{EventKind, Request};
    let dir = TempDir::new().unwrap();
    let node = open(&dir).await;
    let none = std::collections::HashSet::new();
    let due = |d: &str| node.reader.shared.with(|i| i.take_due(d, 10, 10, &none).0);
    node.enqueue(vec![
        message("m1", &["x@one.test", "y@two.test"]),
        message("m2", &["z@one.test"]),
    ])
    .await
    .unwrap();
    // Suspension: nothing of the domain is due; resume brings it back.
    let r = node
        .write(Request::Suspend {
            domain: "ONE.test".into(),
            reason: "blocked us".into(),
            now_ms: 5,
        })
        .await
        .unwrap();
    assert!(r.changed);
    assert!(due("one.test").is_empty());
    assert_eq!(node.reader.suspended().unwrap()[0].0, "one.test");
    assert!(
        !node
            .write(Request::Suspend {
                domain: "one.test".into(),
                reason: String::new(),
                now_ms: 6
            })
            .await
            .unwrap()
            .changed
    );
    node.write(Request::Resume {
        domain: "one.test".into(),
    })
    .await
    .unwrap();
    assert_eq!(due("one.test").len(), 2);
    // A deferral, then retry makes it due now.
    node.record_outcomes(
        20,
        vec![Outcome {
            id: "m1".into(),
            domain: "two.test".into(),
            finished: vec![],
            next_attempt_ms: 9_000,
            last_reply: Some("451 4.7.1 later".into()),
            remote: baton_queue::types::Remote {
                host: "mx.two.test".into(),
                ip: "127.0.0.9".into(),
                tls: "TLSv1.3".into(),
            },
            node: 1,
            ..Default::default()
        }],
    )
    .await
    .unwrap();
    assert!(due("two.test").is_empty());
    assert!(
        node.write(Request::Retry { id: "m1".into() })
            .await
            .unwrap()
            .changed
    );
    assert_eq!(due("two.test"), vec!["m1".to_string()]);
    assert!(
        !node
            .write(Request::Retry { id: "nope".into() })
            .await
            .unwrap()
            .changed
    );
    // Delete with a DSN: the message goes, the DSN comes.
    let r = node
        .write(Request::Delete {
            id: "m1".into(),
            now_ms: 30,
            dsn: Some(message("dsn-m1", &["a@src.test"])),
        })
        .await
        .unwrap();
    assert!(r.changed);
    assert!(node.reader.message("m1").unwrap().is_none());
    assert!(node.reader.finished("m1").unwrap());
    assert_eq!(due("src.test"), vec!["dsn-m1".to_string()]);
    // Suppression list.
    node.write(Request::Suppress {
        address: "Z@One.test".into(),
        reason: "complaint".into(),
        now_ms: 40,
    })
    .await
    .unwrap();
    assert!(node.reader.is_suppressed("z@one.TEST").unwrap());
    assert!(
        node.write(Request::Unsuppress {
            address: "z@one.test".into()
        })
        .await
        .unwrap()
        .changed
    );
    assert!(!node.reader.is_suppressed("z@one.test").unwrap());

    let events: Vec<_> = node.reader.events_after(0).map(|e| e.unwrap()).collect();
    let kinds: Vec<_> = events
        .iter()
        .map(|(_, e)| (e.kind, e.recipient.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Received, "x@one.test"),
            (EventKind::Received, "y@two.test"),
            (EventKind::Received, "z@one.test"),
            (EventKind::Deferred, "y@two.test"),
            (EventKind::Deleted, "x@one.test"),
            (EventKind::Deleted, "y@two.test"),
            (EventKind::Received, "a@src.test"),
        ]
    );
    let positions: Vec<u64> = events.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, (1..=7).collect::<Vec<_>>());
    let deferred = &events[3].1;
    assert_eq!(
        (deferred.remote.ip.as_str(), deferred.reply.as_str()),
        ("127.0.0.9", "451 4.7.1 later")
    );
    assert_eq!(node.reader.events_after(5).count(), 2);
    // Trim: positions below 4 go; the rest keep theirs.
    node.write(Request::TrimEvents { below: 4 }).await.unwrap();
    assert_eq!(node.reader.event_bounds().unwrap(), (4, 8));
    node.shutdown().await;
}

/// A node stopped halfway through installing a snapshot (its old state cleared, the new
/// one partly written) loads the snapshot again when it opens, rather than starting
/// from a state that is neither.
#[tokio::test]
async fn an_interrupted_snapshot_install_is_redone_on_open() {
    use baton_queue::types::Request;
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload};

    let entry = |index: u64, ids: &[&str]| openraft::Entry::<TypeConfig> {
        log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request::Enqueue {
            messages: ids.iter().map(|id| message(id, &["x@one.test"])).collect(),
        }),
    };
    // The leader's state, snapshotted.
    let a = TempDir::new().unwrap();
    let db_a = Db::open(&a.path().join("db")).unwrap();
    let mut sm_a = StateMachine::open(&db_a, a.path().join("snapshots")).unwrap();
    sm_a.apply(vec![entry(1, &["m1", "m2"]), entry(2, &["m3"])])
        .await
        .unwrap();
    let snap = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let last = snap.meta.last_log_id;
    assert_eq!(last.map(|l| l.index), Some(2));

    // The joining node installs it, with a message of its own to be replaced.
    let b = TempDir::new().unwrap();
    let snapshots = b.path().join("snapshots");
    let db_b = Db::open(&b.path().join("db")).unwrap();
    {
        let mut sm_b = StateMachine::open(&db_b, snapshots.clone()).unwrap();
        sm_b.apply(vec![entry(1, &["old"])]).await.unwrap();
        sm_b.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert!(!snapshots.join(baton_queue::snapshot::INSTALLING).exists());
    }
    // Now as if it had stopped halfway: marked, state cleared, a body file half filled.
    baton_queue::snapshot::mark_installing(&snapshots).unwrap();
    db_b.tree("state").unwrap().clear().unwrap();
    let bodies = b.path().join("bodies");
    let half = bodies.join(format!("{:020}.body", 99));
    std::fs::write(&half, b"a body file the cut attempt had begun").unwrap();
    db_b.flush().await.unwrap();

    let mut sm_b = StateMachine::open(&db_b, snapshots.clone()).unwrap();
    let (applied, _) = sm_b.applied_state().await.unwrap();
    assert_eq!(applied, last, "the state is the snapshot's again");
    let reader = sm_b.reader();
    for id in ["m1", "m2", "m3"] {
        assert!(reader.message(id).unwrap().is_some(), "{id} is back");
        assert_eq!(
            reader.body(id).unwrap().as_deref(),
            Some(&b"Subject: t\r\n\r\nhi\r\n"[..]),
            "{id}'s body"
        );
    }
    assert!(reader.message("old").unwrap().is_none());
    assert!(!snapshots.join(baton_queue::snapshot::INSTALLING).exists());
    assert!(!half.exists(), "the cut attempt's body file was dropped");
    let files = std::fs::read_dir(&bodies).unwrap().count();
    assert_eq!(files, 1, "only the redone install's body file is left");
}

/// Body files left mostly empty by finished mail (a few deferred messages keep a whole
/// file) are compacted: their live bodies move to the current file, the references
/// follow, durably, and the old files go.
#[tokio::test]
async fn mostly_empty_body_files_are_compacted() {
    use baton_queue::types::Request;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};

    let dir = TempDir::new().unwrap();
    let db = Db::open(&dir.path().join("db")).unwrap();
    let snapshots = dir.path().join("snapshots");
    let bodies_dir = dir.path().join("bodies");
    let body_of = |i: usize| format!("Subject: m{i}\r\n\r\n{}\r\n", "x".repeat(1000)).into_bytes();
    let files = || -> (usize, u64) {
        std::fs::read_dir(&bodies_dir)
            .unwrap()
            .fold((0, 0), |(n, bytes), e| {
                (n + 1, bytes + e.unwrap().metadata().unwrap().len())
            })
    };
    let kept = |reader: &baton_queue::state_machine::QueueReader, when: &str| {
        for (id, i) in [("m3", 3), ("m20", 20)] {
            assert_eq!(reader.body(id).unwrap(), Some(body_of(i)), "{id} {when}");
        }
    };
    let mut sm = StateMachine::open(&db, snapshots.clone()).unwrap();
    sm.set_body_file_max(16 * 1024);
    let mut index = 0;
    let mut entry = |request: Request| {
        index += 1;
        openraft::Entry::<TypeConfig> {
            log_id: openraft::LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(request),
        }
    };
    // 40 bodies of about 1 KiB: two full 16 KiB files and part of a third.
    for i in 0..40 {
        let mut m = message(&format!("m{i}"), &["x@one.test"]);
        m.body = body_of(i);
        sm.apply(vec![entry(Request::Enqueue { messages: vec![m] })])
            .await
            .unwrap();
    }
    // All finish but one message in each full file (think: deferred).
    let keep = ["m3", "m20"];
    let deletes: Vec<_> = (0..40)
        .map(|i| format!("m{i}"))
        .filter(|id| !keep.contains(&id.as_str()))
        .map(|id| {
            entry(Request::Delete {
                id,
                now_ms: 1,
                dsn: None,
            })
        })
        .collect();
    sm.apply(deletes).await.unwrap();
    let (count_before, bytes_before) = files();
    assert_eq!(count_before, 3, "two full files and the current one");

    let mut rounds = 0;
    while sm.compact_bodies().await.unwrap() {
        rounds += 1;
        assert!(rounds <= 5, "compaction keeps finding work");
    }
    assert_eq!(rounds, 2, "both mostly empty files were compacted");
    let (count_after, bytes_after) = files();
    assert_eq!(count_after, 1, "only the current file is left");
    assert!(
        bytes_after * 2 < bytes_before,
        "bytes on disk: {bytes_before} -> {bytes_after}"
    );
    let reader = sm.reader();
    kept(&reader, "after the move");
    assert_eq!(reader.body("m4").unwrap(), None);

    // A reader that read a reference just before its body moved and its file went
    // (delivery, racing compaction) still gets the body, from where it is now.
    let stale = reader.body_ref("m3").unwrap().expect("m3 has a body file");
    // A big body fills m3's file; the next one starts a new file, sealing it.
    for (id, size) in [("filler", 20 * 1024), ("next", 100)] {
        let mut m = message(id, &["x@one.test"]);
        m.body = vec![b'y'; size];
        sm.apply(vec![entry(Request::Enqueue { messages: vec![m] })])
            .await
            .unwrap();
        sm.apply(vec![entry(Request::Delete {
            id: id.into(),
            now_ms: 1,
            dsn: None,
        })])
        .await
        .unwrap();
    }
    assert!(
        sm.compact_bodies().await.unwrap(),
        "m3's file, now sealed, was compacted"
    );
    assert_ne!(
        reader.body_ref("m3").unwrap(),
        Some(stale),
        "m3's body moved"
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let late = sm.reader();
    std::thread::spawn(move || {
        let _ = tx.send(late.body_at("m3", stale).unwrap());
    });
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a read through a gone file answers (no deadlock)");
    assert_eq!(got, Some(body_of(3)));

    // The moved references survive a restart.
    drop(reader);
    drop(sm);
    let sm = StateMachine::open(&db, snapshots).unwrap();
    kept(&sm.reader(), "after a reopen");
    assert_eq!(
        files().0,
        2,
        "the compacted store's file and the reopened store's new one"
    );
}
