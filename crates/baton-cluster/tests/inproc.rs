//! Cluster failures played out in one process: three real queue nodes (sled, log and
//! body files in temporary directories, openraft) over the in-memory router of
//! `support`, which partitions, delays and drops what they say to each other.
//!
//! - a leader cut off with a write it could not commit: the others go on without it,
//!   and once it is back its entry is gone and the write resolved exactly once;
//! - the owner of a domain cut off until its delivery lease ends: the domain moves only
//!   after that, and no two nodes may deliver it at the same instant;
//! - a node back after the others snapshotted and purged the log it missed: it installs
//!   the snapshot and ends with the same queue.

mod support;

use baton_cluster::{Lease, Writer, lease};
use baton_queue::state_machine::QueueReader;
use baton_queue::types::{EventKind, NodeId, Request};
use baton_queue::{QueueError, QueueNode};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Cluster, Fault, Rpc, enqueue, message, within};
use tokio::sync::watch;
use tokio::time::Instant;

/// Every (message id, body) queued on `reader`'s node, for comparing nodes.
fn queue_of(reader: &QueueReader, ids: &BTreeSet<String>) -> Vec<(String, Vec<u8>)> {
    ids.iter()
        .map(|id| {
            let body = reader
                .body(id)
                .expect("read a body")
                .unwrap_or_else(|| panic!("no body for {id}"));
            (id.clone(), body)
        })
        .collect()
}

/// How many `Received` events `reader`'s node holds for message `id`.
fn received(reader: &QueueReader, id: &str) -> usize {
    reader
        .events_after(0)
        .map(|e| e.expect("read events").1)
        .filter(|e| e.kind == EventKind::Received && e.id == id)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_with_an_uncommitted_write_loses_it_and_the_retry_lands_once() {
    let cluster = Cluster::start(3, 5000).await;
    let old = cluster.leader_of(&cluster.ids()).await;
    let rest: Vec<NodeId> = cluster.ids().into_iter().filter(|id| *id != old).collect();
    let old_node = cluster.node(old);
    old_node
        .writer
        .write(enqueue(vec![message("before", &["a@one.test"], 200)]))
        .await
        .expect("a write while all is well");
    let base = cluster.converged().await;
    let old_term = old_node.metrics().current_term;

    // Cut the leader off, then write on it at once (it heard from its quorum a moment
    // ago, so it appends): once straight into its queue, as a client that does not
    // retry, and once through its Writer, which retries until the write resolves.
    cluster.router.isolate(old);
    let raw = {
        let queue = old_node.queue.clone();
        tokio::spawn(async move {
            queue
                .write(enqueue(vec![message("lost", &["b@one.test"], 200)]))
                .await
        })
    };
    let retried = {
        let writer = old_node.writer.clone();
        tokio::spawn(async move {
            writer
                .write(enqueue(vec![message("retried", &["c@two.test"], 200)]))
                .await
        })
    };
    within("the cut-off leader to append both writes", async {
        old_node
            .queue
            .raft
            .wait(None)
            .metrics(
                |m| m.last_log_index >= Some(base + 2),
                "both writes appended",
            )
            .await
            .expect("metrics")
    })
    .await;

    // The others elect a leader among themselves and commit their own writes.
    let new = cluster.leader_of(&rest).await;
    assert_ne!(new, old);
    for (i, id) in rest.iter().chain(rest.iter()).enumerate() {
        let r = cluster
            .node(*id)
            .writer
            .write(enqueue(vec![message(
                &format!("after-{i}"),
                &["d@three.test"],
                200,
            )]))
            .await
            .expect("a write on the majority side");
        assert_eq!(r.added, 1);
    }
    // Meanwhile nothing the cut-off leader appended was committed, and both of its
    // callers still wait.
    assert_eq!(old_node.metrics().current_leader, Some(old));
    assert!(
        old_node
            .queue
            .committed
            .load(std::sync::atomic::Ordering::Acquire)
            <= base,
        "the cut-off leader committed an entry alone"
    );
    assert!(!raw.is_finished(), "the raw write returned before the heal");
    assert!(
        !retried.is_finished(),
        "the Writer's write returned before the heal"
    );

    cluster.router.heal();
    let raw = within("the raw write to fail", raw).await.expect("join");
    assert!(
        matches!(raw, Err(QueueError::NotLeader { .. })),
        "the raw write on the deposed leader: {raw:?}"
    );
    let retried = within("the Writer's write to resolve", retried)
        .await
        .expect("join")
        .expect("the Writer resolves its write on the new leader");
    assert_eq!((retried.added, retried.duplicates), (1, 0));
    assert!(retried.index > base + 1);

    // Converged: the old leader's entries were replaced by the new term's (had they
    // been kept, applying past them would have queued "lost").
    cluster.converged().await;
    let m = old_node.metrics();
    let applied = m.last_applied.expect("applied");
    assert!(applied.index >= base + 2);
    assert!(
        applied.leader_id.term > old_term,
        "{applied:?} after term {old_term}"
    );

    let expected: BTreeSet<String> = [
        "before", "after-0", "after-1", "after-2", "after-3", "retried",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let reference = queue_of(&cluster.node(new).queue.reader, &expected);
    for node in cluster.nodes.values() {
        let reader = &node.queue.reader;
        assert_eq!(node.queued_ids(), expected, "queued on node {}", node.id);
        assert_eq!(
            queue_of(reader, &expected),
            reference,
            "bodies on node {}",
            node.id
        );
        assert!(
            !reader.knows("lost").unwrap(),
            "node {} knows the lost write",
            node.id
        );
        assert_eq!(received(reader, "retried"), 1, "on node {}", node.id);
        assert_eq!(received(reader, "lost"), 0, "on node {}", node.id);
    }
    cluster.shutdown().await;
}

/// What the lease test's sampler saw, every few milliseconds, of every node's lease and
/// ownership view for one domain.
#[derive(Default)]
struct Seen {
    samples: u64,
    /// Samples at which more than one node could deliver the domain.
    double: Vec<String>,
    /// Nodes seen able to deliver it (a live lease, and its own view allows it).
    deliverers: BTreeSet<NodeId>,
    /// The latest end of the cut-off owner's lease seen (sample time + lease left).
    lease_end: Option<Instant>,
    /// After the cut: the first sample at which a node of the majority no longer had
    /// the cut-off owner own the domain, and how much of its lease was left then.
    moved: Option<(Instant, Duration)>,
}

/// Acknowledges every ownership epoch that waits for `queue`'s node, at once (nothing
/// is ever in flight in these tests: the node's delivery would be clean).
async fn acknowledge(queue: QueueNode, writer: Writer, mut stop: watch::Receiver<bool>) {
    let me = queue.id;
    let mut ownership = queue.reader.shared.ownership.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        let view = ownership.borrow_and_update().clone();
        let wait = if view.awaits_ack(me) {
            let ack = Request::AssignAck {
                node: me,
                epoch: view.epoch,
            };
            match writer.write_applied(ack).await {
                Ok(_) => continue,
                Err(_) => Duration::from_millis(100),
            }
        } else {
            Duration::from_millis(250)
        };
        tokio::select! {
            _ = ownership.changed() => {}
            _ = stop.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_an_owner_cut_off_keeps_its_domain_until_its_lease_ends() {
    const LEASE: Duration = Duration::from_secs(2);
    let cluster = Cluster::start(3, 5000).await;
    let all: BTreeSet<NodeId> = cluster.ids().into_iter().collect();

    // Every node renews its lease, expires others' when it leads, and acknowledges
    // epochs, as a running node does.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut leases: BTreeMap<NodeId, Arc<Lease>> = BTreeMap::new();
    let mut keeps = BTreeMap::new();
    for node in cluster.nodes.values() {
        let lease = Lease::new(LEASE);
        let (keep_stop, keep_stop_rx) = watch::channel(false);
        let keep = tokio::spawn(lease::keep(
            lease.clone(),
            node.writer.clone(),
            keep_stop_rx,
        ));
        keeps.insert(node.id, (keep_stop, keep));
        leases.insert(node.id, lease);
        tokio::spawn(lease::expire(
            node.queue.clone(),
            node.writer.clone(),
            LEASE,
            stop_rx.clone(),
        ));
        tokio::spawn(acknowledge(
            node.queue.clone(),
            node.writer.clone(),
            stop_rx.clone(),
        ));
    }
    for node in cluster.nodes.values() {
        let mut ownership = node.queue.reader.shared.ownership.subscribe();
        within("all three to own domains, settled", async {
            ownership
                .wait_for(|o| o.nodes == all && o.is_settled())
                .await
                .map(|_| ())
        })
        .await
        .expect("ownership");
    }
    within("every lease to be live", async {
        // A lease has no signal of its own: look again shortly.
        while leases.values().any(|l| l.left().is_zero()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // Mail for domains owned by each node; the one watched is owned by a follower.
    let leader = cluster.leader_of(&cluster.ids()).await;
    let view = cluster.node(leader).ownership();
    let mut domains: BTreeMap<NodeId, String> = BTreeMap::new();
    for i in 0.. {
        let d = format!("d{i}.test");
        let owner = view.owner(&d).expect("an owner");
        domains.entry(owner).or_insert(d);
        if domains.len() == all.len() {
            break;
        }
    }
    let (x, d) = domains
        .iter()
        .find(|(owner, _)| **owner != leader)
        .map(|(o, d)| (*o, d.clone()))
        .expect("a follower owns a domain");
    let majority: Vec<NodeId> = cluster.ids().into_iter().filter(|id| *id != x).collect();
    let mail = domains
        .values()
        .map(|d| message(&format!("to-{d}"), &[&format!("rcpt@{d}")], 300))
        .collect();
    cluster
        .node(leader)
        .writer
        .write(enqueue(mail))
        .await
        .expect("enqueue");

    // The sampler: views first, then leases, so a view that moved the domain is never
    // compared with a lease read before the move.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sampled_tx, mut sampled) = watch::channel(0u64);
    let sampler = {
        let shared: BTreeMap<NodeId, _> = cluster
            .nodes
            .values()
            .map(|n| (n.id, n.queue.reader.shared.clone()))
            .collect();
        let leases = leases.clone();
        let (seen, cut, d, majority) = (seen.clone(), cut.clone(), d.clone(), majority.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                let views: BTreeMap<NodeId, _> = shared
                    .iter()
                    .map(|(id, s)| (*id, s.ownership.borrow().clone()))
                    .collect();
                let now = Instant::now();
                let left: BTreeMap<NodeId, Duration> =
                    leases.iter().map(|(id, l)| (*id, l.left())).collect();
                let live: Vec<NodeId> = views
                    .iter()
                    .filter(|(id, v)| !left[id].is_zero() && v.may_deliver(**id, &d))
                    .map(|(id, _)| *id)
                    .collect();
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.samples += 1;
                sampled_tx.send_replace(seen.samples);
                seen.deliverers.extend(live.iter().copied());
                if live.len() > 1 {
                    let sample = format!("nodes {live:?} may all deliver {d}: leases {left:?}");
                    seen.double.push(sample);
                }
                if !left[&x].is_zero() {
                    seen.lease_end = seen.lease_end.max(Some(now + left[&x]));
                }
                let moved = majority.iter().any(|id| views[id].owner(&d) != Some(x));
                if moved && seen.moved.is_none() && cut.load(std::sync::atomic::Ordering::Acquire) {
                    seen.moved = Some((now, left[&x]));
                }
            }
        })
    };

    // Cut the owner off. It cannot renew: by its own clock its lease runs out.
    cut.store(true, std::sync::atomic::Ordering::Release);
    cluster.router.isolate(x);
    let cut_at = Instant::now();
    within("the cut-off owner's lease to run out", async {
        while !leases[&x].left().is_zero() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // The majority moves the domain, settles, and its new owner may deliver it.
    for id in &majority {
        let mut ownership = cluster.node(*id).queue.reader.shared.ownership.subscribe();
        within(&format!("node {id} to move {d} off node {x}"), async {
            ownership
                .wait_for(|o| !o.nodes.contains(&x) && o.is_settled())
                .await
                .map(|_| ())
        })
        .await
        .expect("ownership");
    }
    // The sampler looks again after the move, before its findings are read.
    let after = *sampled.borrow_and_update();
    within(
        "the sampler to sample the move",
        sampled.wait_for(|n| *n > after + 1),
    )
    .await
    .expect("sampler");
    let moved_view = cluster.node(majority[0]).ownership();
    let new_owner = moved_view.owner(&d).expect("an owner");
    assert!(majority.contains(&new_owner));
    let new_view = cluster.node(new_owner).ownership();
    assert!(new_view.may_deliver(new_owner, &d));
    assert!(!leases[&new_owner].left().is_zero());
    // The cut-off node's own view is stale (it still owns the domain there), but its
    // lease is gone: it may not deliver.
    let stale = cluster.node(x).ownership();
    assert_eq!(stale.owner(&d), Some(x));
    assert!(leases[&x].left().is_zero());
    {
        let (moved, lease_end) = {
            let seen = seen.lock().unwrap();
            (seen.moved, seen.lease_end)
        };
        let (moved_at, left_then) = moved.expect("the sampler saw the move");
        let lease_end = lease_end.expect("the sampler saw the lease");
        // Its last renewal was sent before the cut, and a renewal counts for nine
        // tenths of the lease from when it was sent.
        assert!(
            lease_end <= cut_at + LEASE * 9 / 10,
            "node {x}'s lease outlived the cut by {:?}",
            lease_end - cut_at
        );
        assert!(
            left_then.is_zero(),
            "{d} moved with {left_then:?} of node {x}'s lease left"
        );
        assert!(
            moved_at > lease_end,
            "{d} moved {:?} before node {x}'s lease ended",
            lease_end - moved_at
        );
        eprintln!(
            "lease test: node {x}'s lease ended {:?} after the cut; {d} moved {:?} after that",
            lease_end - cut_at,
            moved_at - lease_end
        );
    }

    // Back, with its renewals stopped first: it catches up and learns it lost the
    // domain, which stays with the new owner.
    let (keep_stop, keep) = keeps.remove(&x).expect("x keeps its lease");
    keep_stop.send_replace(true);
    within("node x's renewals to stop", keep)
        .await
        .expect("join");
    cluster.router.heal();
    let epoch = moved_view.epoch;
    let mut ownership = cluster.node(x).queue.reader.shared.ownership.subscribe();
    let back = within("the healed node to apply the move", async {
        ownership
            .wait_for(|o| o.epoch >= epoch && o.is_settled())
            .await
            .map(|o| (**o).clone())
    })
    .await
    .expect("ownership");
    assert!(!back.nodes.contains(&x));
    assert!(!back.may_deliver(x, &d));
    assert!(
        cluster
            .node(new_owner)
            .ownership()
            .may_deliver(new_owner, &d)
    );

    // Renewing again, it rejoins the owner set and gets the domain back (rendezvous
    // hashing over the same three), once the interim owner acknowledged.
    let (keep_stop, keep_stop_rx) = watch::channel(false);
    let keep = tokio::spawn(lease::keep(
        leases[&x].clone(),
        cluster.node(x).writer.clone(),
        keep_stop_rx,
    ));
    keeps.insert(x, (keep_stop, keep));
    within("the domain to return to its first owner", async {
        loop {
            let o = ownership.borrow_and_update().clone();
            if o.may_deliver(x, &d) && !leases[&x].left().is_zero() {
                return;
            }
            // The lease has no signal; the view does.
            tokio::select! {
                _ = ownership.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    })
    .await;
    assert!(
        !cluster
            .node(new_owner)
            .ownership()
            .may_deliver(new_owner, &d)
    );

    stop_tx.send_replace(true);
    for (stop, keep) in keeps.into_values() {
        stop.send_replace(true);
        within("renewals to stop", keep).await.expect("join");
    }
    within("the sampler to stop", sampler).await.expect("join");
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.double.is_empty(),
        "{} samples with two deliverers, first: {}",
        seen.double.len(),
        seen.double[0]
    );
    assert!(seen.samples > 200, "only {} samples", seen.samples);
    assert!(
        seen.deliverers.contains(&x) && seen.deliverers.contains(&new_owner),
        "deliverers seen: {:?}",
        seen.deliverers
    );
    // The mail is still queued everywhere: leases move who delivers, not what.
    let expected: BTreeSet<String> = domains.values().map(|d| format!("to-{d}")).collect();
    for node in cluster.nodes.values() {
        assert_eq!(node.queued_ids(), expected, "queued on node {}", node.id);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_node_back_after_the_log_it_missed_was_purged_installs_a_snapshot() {
    const SNAPSHOT_LOGS: u64 = 30;
    const WRITERS: usize = 4;
    const ENTRIES: usize = 30;
    let cluster = Cluster::start(3, SNAPSHOT_LOGS).await;
    // Every call takes a little while, as on a real network.
    cluster.router.set_delay(Duration::from_millis(1));
    let leader = cluster.leader_of(&cluster.ids()).await;
    let lagging = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let rest: Vec<NodeId> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != lagging)
        .collect();
    cluster
        .node(leader)
        .writer
        .write(enqueue(
            (0..5)
                .map(|i| message(&format!("early-{i}"), &["x@early.test"], 500))
                .collect(),
        ))
        .await
        .expect("enqueue");
    let base = cluster.converged().await;

    // Away while the others write many entries (through both of them: one forwards).
    cluster.router.isolate(lagging);
    cluster.leader_of(&rest).await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let writer = cluster.node(rest[w % rest.len()]).writer.clone();
        tasks.push(tokio::spawn(async move {
            for e in 0..ENTRIES {
                let ids = [format!("m-{w}-{e}-a"), format!("m-{w}-{e}-b")];
                let mail = ids
                    .iter()
                    .map(|id| message(id, &[&format!("r@d{}.test", e % 5), "s@all.test"], 1024))
                    .collect();
                writer
                    .write(enqueue(mail))
                    .await
                    .expect("a write while one node is away");
            }
        }));
    }
    for task in tasks {
        within("the writes", task).await.expect("join");
    }
    let lag_last = cluster.node(lagging).metrics().last_log_index.unwrap_or(0);
    assert_eq!(cluster.node(lagging).applied(), base);
    // The leader snapshotted and purged past the lagging node's log: it can only be
    // sent a snapshot. (Leadership may have moved within the majority meanwhile.)
    let leader = cluster.leader_of(&rest).await;
    let m = within("the leader to purge past the lagging node's log", async {
        cluster
            .node(leader)
            .queue
            .raft
            .wait(None)
            .metrics(
                |m| m.purged.is_some_and(|p| p.index > lag_last) && m.snapshot.is_some(),
                "purged",
            )
            .await
            .expect("metrics")
    })
    .await;
    let purged = m.purged.expect("purged").index;
    assert!(cluster.node(lagging).metrics().snapshot.is_none());

    // Back, over a lossy link: the first call to it fails, then every third (openraft
    // retries the snapshot's chunks and the appends). The loss is set while the node
    // is still cut off, so no call slips through in between.
    let kinds = [Rpc::AppendEntries, Rpc::Vote, Rpc::InstallSnapshot];
    let dropped = |r: &support::Router| kinds.iter().map(|k| r.dropped(*k, lagging)).sum::<u64>();
    let dropped_away = dropped(&cluster.router);
    cluster.router.drop_every(lagging, 3, Fault::Network);
    cluster.router.heal();
    let target = cluster.converged().await;
    let m = cluster.node(lagging).metrics();
    let snapshot = m.snapshot.expect("the lagging node holds a snapshot");
    assert!(
        snapshot.index >= purged,
        "its snapshot ({snapshot:?}) does not cover what the leader purged ({purged})"
    );
    assert!(m.last_applied.is_some_and(|l| l.index >= target));
    let chunks = cluster.router.delivered(Rpc::InstallSnapshot, lagging);
    assert!(chunks > 0, "no snapshot chunk reached the lagging node");
    let lost = dropped(&cluster.router) - dropped_away;
    assert!(lost > 0, "the lossy link dropped nothing");
    eprintln!(
        "snapshot test: {chunks} snapshot chunk(s) delivered, {} dropped; {lost} calls lost after the heal",
        cluster.router.dropped(Rpc::InstallSnapshot, lagging)
    );

    // The same queue everywhere, bodies included.
    let mut expected: BTreeSet<String> = (0..5).map(|i| format!("early-{i}")).collect();
    for w in 0..WRITERS {
        for e in 0..ENTRIES {
            expected.insert(format!("m-{w}-{e}-a"));
            expected.insert(format!("m-{w}-{e}-b"));
        }
    }
    let reference = queue_of(&cluster.node(leader).queue.reader, &expected);
    for node in cluster.nodes.values() {
        assert_eq!(node.queued_ids(), expected, "queued on node {}", node.id);
        assert_eq!(
            queue_of(&node.queue.reader, &expected),
            reference,
            "bodies on node {}",
            node.id
        );
    }
    cluster.shutdown().await;
}
