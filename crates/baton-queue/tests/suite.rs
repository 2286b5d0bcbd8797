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
        let log = LogStore::open(&db).map_err(io)?;
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
            },
            Outcome {
                id: "m1".into(),
                domain: "two.test".into(),
                finished: vec!["y@two.test".into()],
                next_attempt_ms: 5000,
                last_reply: Some("451 later".into()),
                dsn: None,
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
