//! Delivery actors over a real one-node queue: a worker that panics.

use super::*;
use crate::batcher::{Batcher, BatcherArgs, WriteFn};
use crate::delivery::manager::DeliveryManager;
use baton_cluster::{Peers, Writer, lease};
use baton_delivery::route::RouteConfig;
use baton_queue::types::{EventKind, Request};
use baton_queue::{NewMessage, QueueNode, QueueOptions};
use ractor::Actor;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Fault injection: the worker that takes this message next panics while holding it.
static PANIC_ON: Mutex<Option<String>> = Mutex::new(None);
static PANICKED: AtomicUsize = AtomicUsize::new(0);

pub(super) fn maybe_panic(id: &str) {
    let hit = {
        let mut armed = PANIC_ON.lock().unwrap_or_else(|p| p.into_inner());
        armed.as_deref() == Some(id) && armed.take().is_some()
    };
    if hit {
        PANICKED.fetch_add(1, Ordering::SeqCst);
        panic!("fault injected: a worker panics holding {id}");
    }
}

/// A one-node queue with its delivery actors, sending to a port nothing listens on
/// (every attempt is refused, and deferred), one connection per domain.
struct Rig {
    queue: QueueNode,
    ctx: Arc<DeliveryContext>,
    /// The smarthost, where nothing listens.
    closed: std::net::SocketAddr,
    _stop: watch::Sender<bool>,
    _deliver: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = QueueNode::open(
            QueueOptions {
                node_id: 1,
                data_dir: dir.path().to_path_buf(),
                advertise: "127.0.0.1:1".into(),
                bootstrap: true,
                snapshot_logs: 5000,
            },
            baton_queue::network::NoPeers,
        )
        .await
        .expect("open the queue");
        queue
            .wait_ready(Duration::from_secs(10))
            .await
            .expect("a leader");
        let writer = Writer::new(queue.clone(), Peers::default());
        let outcomes = Slot::default();
        let w = writer.clone();
        let write: WriteFn<baton_queue::types::Finished> = Arc::new(move |results| {
            let w = w.clone();
            Box::pin(async move {
                let request = Request::Finished {
                    now_ms: baton_queue::clock::now_ms(),
                    results,
                    thresholds: Default::default(),
                };
                w.write_applied(request).await.map(|_| ())
            })
        });
        let args = BatcherArgs {
            write,
            max_batch: 100,
            max_in_flight: 1,
            weight: |_: &baton_queue::types::Finished| 1,
            max_batch_bytes: 1 << 20,
        };
        let (batcher, _) = Actor::spawn(None, Batcher::default(), args)
            .await
            .expect("batcher");
        outcomes.set(Some(batcher));
        let (stop_tx, stop) = watch::channel(false);
        let lease = Lease::new(Duration::from_secs(10));
        tokio::spawn(lease::keep(lease.clone(), writer.clone(), stop.clone()));
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let router = Router::new(RouteConfig {
            smarthost: Some(closed.to_string()),
            dns_servers: Vec::new(),
            mx_port: 25,
        })
        .expect("router");
        let (deliver_tx, may_deliver) = watch::channel(true);
        let ctx = Arc::new(DeliveryContext {
            hostname: "relay.test".into(),
            reader: queue.reader.clone(),
            router,
            tls: TlsClients::new(),
            tls_policy: TlsPolicy::Disabled,
            retry: RetryPolicy {
                intervals: vec![Duration::from_secs(600)],
                max_age: Duration::from_secs(3600),
            },
            timeouts: Timeouts::default(),
            outcomes,
            may_deliver,
            me: 1,
            lease,
            lease_margin: Duration::from_secs(1),
            ownership: queue.reader.shared.ownership.subscribe(),
            in_flight: InFlightRegistry::default(),
            writer: writer.clone(),
            classifier: RwLock::new(Arc::new(Classifier::default())),
            // One connection: a crashed worker's slot must be freed for anything more
            // to be sent to its domain.
            setup: SiteSetup {
                config: Default::default(),
                legacy_connections: 1,
                legacy_per_connection: 10,
            },
            sites: SiteRegistry::default(),
            sts: Default::default(),
            bounces: None,
        });
        Actor::spawn(None, DeliveryManager, (ctx.clone(), writer))
            .await
            .expect("manager");
        Rig {
            queue,
            ctx,
            closed,
            _stop: stop_tx,
            _deliver: deliver_tx,
            _dir: dir,
        }
    }

    async fn enqueue(&self, id: &str, sender: &str, rcpt: &str) {
        let message = NewMessage {
            id: id.into(),
            sender: sender.into(),
            recipients: vec![rcpt.into()],
            body: b"Subject: t\r\n\r\nhi\r\n".to_vec(),
            received_at_ms: baton_queue::clock::now_ms(),
            eight_bit: false,
            smtputf8: false,
        };
        self.queue.enqueue(vec![message]).await.expect("enqueue");
    }

    /// Waits (up to 30 s) for a `Deferred` event of message `id`; its reply.
    async fn deferred(&self, id: &str) -> String {
        let mut changed = self.queue.reader.shared.changed.subscribe();
        let wait = async {
            loop {
                let found = self
                    .queue
                    .reader
                    .events_after(0)
                    .map(|e| e.expect("events").1)
                    .find(|e| e.id == id && e.kind == EventKind::Deferred);
                if let Some(e) = found {
                    return e.reply;
                }
                changed.changed().await.expect("the queue runs");
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("a deferred event")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_frees_its_slot_and_its_message() {
    let rig = Rig::start().await;
    *PANIC_ON.lock().unwrap() = Some("M1".into());
    rig.enqueue("M1", "a@src.test", "x@crash.test").await;
    // The message is taken again after the panic, sent (refused) and deferred.
    let reply = rig.deferred("M1").await;
    assert_eq!(
        reply,
        format!(
            "could not connect to the smarthost: {} connection refused",
            rig.closed
        )
    );
    assert_eq!(PANICKED.load(Ordering::SeqCst), 1, "the fault was injected");
    tokio::time::timeout(Duration::from_secs(10), rig.ctx.in_flight.idle())
        .await
        .expect("nothing left in flight");
    assert_eq!(rig.ctx.in_flight.count("crash.test"), 0);
    let record = rig
        .queue
        .reader
        .delivery("crash.test", "M1")
        .expect("read")
        .expect("still queued");
    assert_eq!(record.attempts, 1, "one attempt, after the crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_stored_sender_does_not_parse_is_held_not_sent() {
    let rig = Rig::start().await;
    rig.enqueue("M2", "not an address", "x@held.test").await;
    let reply = rig.deferred("M2").await;
    // Decided before any connection: not the refused port's answer.
    assert!(reply.contains("does not parse"), "{reply}");
    let record = rig
        .queue
        .reader
        .delivery("held.test", "M2")
        .expect("read")
        .expect("still queued");
    assert_eq!(record.next_attempt_ms, baton_queue::types::HELD);
    let (due, _) = rig
        .queue
        .reader
        .shared
        .with(|i| i.take_due("held.test", u64::MAX - 1, 10, &Default::default()));
    assert!(due.is_empty(), "a held message is never due");
}
