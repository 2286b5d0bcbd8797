//! [`run`]: one node, wired together — queue, committer, delivery, ingress, HTTP.

use crate::auth::Users;
use crate::batcher::{Batcher, BatcherArgs, WriteFn};
use crate::config::{Config, TlsMode};
use crate::delivery::{DeliveryContext, DeliveryManager};
use crate::http::{self, HttpState};
use crate::ingress::{IngressShared, Listener};
use anyhow::Context;
use baton_cluster::{GrpcNetwork, Lease, Peers, RaftService, Writer, lease};
use baton_delivery::outbound::Timeouts;
use baton_delivery::retry::RetryPolicy;
use baton_delivery::route::{RouteConfig, Router};
use baton_delivery::tls::{TlsClients, TlsPolicy};
use baton_queue::clock::now_ms;
use baton_queue::types::Request;
use baton_queue::{NewMessage, Outcome, QueueNode, QueueOptions};
use ractor::Actor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Prints a start-up line on standard output. A closed or full stdout (an init system
/// that stopped reading, a test that read what it needed) must not stop the relay, so
/// write errors are ignored rather than panicking as `println!` does.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// How long a drain waits for open SMTP sessions and deliveries.
const DRAIN: Duration = Duration::from_secs(30);

/// Runs a node until `shutdown` turns true, then drains and returns.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let prometheus = crate::metrics::install();

    let data_dir = config.node.data_dir.clone();
    let peers = Peers::default();
    let queue = QueueNode::open(
        QueueOptions {
            node_id: config.node.id,
            data_dir: data_dir.clone(),
            advertise: config.cluster.advertise.clone(),
            bootstrap: config.cluster.bootstrap,
            snapshot_logs: config.cluster.snapshot_logs,
        },
        GrpcNetwork {
            peers: peers.clone(),
        },
    )
    .await
    .with_context(|| format!("opening the queue in {}", data_dir.display()))?;
    let writer = Writer {
        queue: queue.clone(),
        peers: peers.clone(),
    };

    // The Raft service for peers.
    let (stop_tx, stop_rx) = watch::channel(false);
    let raft_listener = tokio::net::TcpListener::bind(config.cluster.listen)
        .await
        .with_context(|| format!("cluster.listen {}", config.cluster.listen))?;
    say!("raft (peers only) on {}", config.cluster.listen);
    // The Raft service serves through the drain (forwarded writes, the hand-over's
    // election) and is aborted at the very end.
    let raft_task = {
        let service = RaftService::new(queue.clone()).into_server();
        // Replies (append-entries acks, forwarded writes) are small: without TCP_NODELAY,
        // Nagle's algorithm holds them for the peer's delayed ACK (up to 40 ms on Linux).
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(raft_listener),
            |conn| {
                conn.inspect(|stream| {
                    let _ = stream.set_nodelay(true);
                })
            },
        );
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        })
    };
    if !queue.raft.is_initialized().await.unwrap_or(false) {
        if config.cluster.join.is_empty() {
            // An operator adds it (`batonctl node add`): the leader's first append
            // makes it a learner. Until then it is not ready.
            say!(
                "{} holds no cluster state and cluster.join is empty: waiting to be added (on a member: batonctl node add {} {}); set cluster.bootstrap = true to form a new cluster instead",
                data_dir.display(),
                config.node.id,
                config.cluster.advertise
            );
        } else {
            say!("joining the cluster through {:?}", config.cluster.join);
            baton_cluster::join::join(
                &peers,
                &config.cluster.join,
                config.node.id,
                &config.cluster.advertise,
                Duration::from_secs(300),
            )
            .await
            .map_err(anyhow::Error::msg)?;
        }
    }

    // Readiness: caught up with the leader's commit index (asked at start), and a leader
    // known. Delivery additionally needs this node's lease and each domain's ownership.
    let (ready_tx, ready_rx) = watch::channel(false);
    let (deliver_tx, deliver_rx) = watch::channel(false);
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lease = Lease::new(config.cluster.lease);
    let (lease_stop_tx, lease_stop_rx) = watch::channel(false);
    let (caught_up_tx, mut caught_up_rx) = watch::channel(false);
    {
        let queue = queue.clone();
        let ready_tx = ready_tx.clone();
        let draining = draining.clone();
        tokio::spawn(async move {
            let _ = caught_up_rx.wait_for(|c| *c).await;
            let mut metrics = queue.raft.metrics();
            loop {
                let leader = metrics.borrow_and_update().current_leader;
                let stopping = draining.load(std::sync::atomic::Ordering::Acquire);
                ready_tx.send_replace(leader.is_some() && !stopping);
                if stopping || metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let lease_task = {
        let queue = queue.clone();
        let peers = peers.clone();
        let writer = writer.clone();
        let lease = lease.clone();
        let deliver_tx = deliver_tx.clone();
        let draining = draining.clone();
        tokio::spawn(async move {
            // A (re)started node catches up with the leader's commit index before it
            // takes a lease, so it never joins the owner set with a stale queue.
            let index = baton_cluster::catch_up::catch_up(&queue, &peers).await;
            tracing::info!(index, "caught up with the leader's commit index");
            caught_up_tx.send_replace(true);
            if !draining.load(std::sync::atomic::Ordering::Acquire) {
                deliver_tx.send_replace(true);
            }
            lease::keep(lease, writer, lease_stop_rx).await;
        })
    };
    let expire_task = tokio::spawn(lease::expire(
        queue.clone(),
        writer.clone(),
        config.cluster.lease,
        stop_rx.clone(),
    ));

    // Committer and OutcomeBatcher: group commit into Raft.
    let w = writer.clone();
    let write_messages: WriteFn<NewMessage> = Arc::new(move |messages| {
        let w = w.clone();
        Box::pin(async move {
            let request = Request::Enqueue { messages };
            let started = tokio::time::Instant::now();
            let result = w.write(request).await;
            metrics::histogram!(crate::metrics::RAFT_APPEND)
                .record(started.elapsed().as_secs_f64());
            result.map(|_| ()).map_err(|e| e.to_string())
        })
    });
    let (committer, committer_handle) = Actor::spawn(
        Some("committer".into()),
        Batcher::<NewMessage>::default(),
        BatcherArgs {
            write: write_messages,
            max_batch: 512,
            max_in_flight: 1,
            weight: |m: &NewMessage| m.body.len(),
            max_batch_bytes: 16 * 1024 * 1024,
        },
    )
    .await
    .context("starting the committer")?;
    let w = writer.clone();
    let write_outcomes: WriteFn<Outcome> = Arc::new(move |results| {
        let w = w.clone();
        Box::pin(async move {
            let request = Request::Outcomes {
                now_ms: now_ms(),
                results,
            };
            // Applied here before the messages leave flight, or this node's index
            // would still show them due and send them again.
            w.write_applied(request)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    });
    let (outcomes, outcomes_handle) = Actor::spawn(
        Some("outcomes".into()),
        Batcher::<Outcome>::default(),
        BatcherArgs {
            write: write_outcomes,
            max_batch: 1024,
            max_in_flight: 1,
            weight: |o: &Outcome| o.dsn.as_ref().map_or(256, |d| d.body.len()),
            max_batch_bytes: 16 * 1024 * 1024,
        },
    )
    .await
    .context("starting the outcome batcher")?;

    // Delivery.
    let d = &config.delivery;
    let router = Router::new(RouteConfig {
        smarthost: (!d.smarthost.is_empty()).then(|| d.smarthost.clone()),
        dns_servers: d.dns_servers.clone(),
        mx_port: d.mx_port,
    })
    .map_err(|e| anyhow::anyhow!("delivery.dns_servers: {e}"))?;
    let ctx = Arc::new(DeliveryContext {
        hostname: config.smtp.hostname.clone(),
        reader: queue.reader.clone(),
        router,
        tls: TlsClients::new(),
        tls_policy: match d.tls {
            TlsMode::Disabled => TlsPolicy::Disabled,
            TlsMode::Opportunistic => TlsPolicy::Opportunistic,
            TlsMode::Required => TlsPolicy::Required,
        },
        retry: RetryPolicy {
            intervals: d.retry_intervals.clone(),
            max_age: d.max_age,
        },
        timeouts: Timeouts {
            connect: d.connect_timeout,
            ..Timeouts::default()
        },
        max_connections: d.max_connections_per_domain,
        max_messages_per_connection: d.max_messages_per_connection,
        outcomes: outcomes.clone(),
        may_deliver: deliver_rx,
        me: config.node.id,
        lease: lease.clone(),
        lease_margin: config.cluster.lease / 4,
        ownership: queue.reader.shared.ownership.subscribe(),
        in_flight_domains: Default::default(),
    });
    // Acknowledge each new ownership epoch once nothing it forbids is in flight here.
    let ack_task = {
        let ctx = ctx.clone();
        let writer = writer.clone();
        let mut ownership = queue.reader.shared.ownership.subscribe();
        tokio::spawn(async move {
            let me = ctx.me;
            loop {
                let view = ownership.borrow_and_update().clone();
                if view.awaits_ack(me) && ctx.clean_for(&view) {
                    let ack = Request::AssignAck {
                        node: me,
                        epoch: view.epoch,
                    };
                    if let Err(e) = writer.write_applied(ack).await {
                        tracing::warn!(epoch = view.epoch, error = %e, "could not acknowledge an ownership epoch");
                    }
                    // Applied (or failed): look again at the newest view.
                    continue;
                }
                tokio::select! {
                    changed = ownership.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        })
    };
    let (manager, manager_handle) =
        Actor::spawn(Some("delivery".into()), DeliveryManager, ctx.clone())
            .await
            .context("starting delivery")?;

    // Ingress.
    let shared = IngressShared::new(
        config.smtp.clone(),
        Users::new(&config.smtp.users),
        committer.clone(),
        ready_rx.clone(),
        queue.reader.clone(),
    );
    let mut listeners = tokio::task::JoinSet::new();
    for l in &config.smtp.listeners {
        let listener = Listener::bind(l.clone())
            .await
            .map_err(anyhow::Error::msg)?;
        say!("smtp {:?} listener on {}", l.mode, listener.local_addr());
        listeners.spawn(listener.run(shared.clone(), stop_rx.clone(), DRAIN));
    }
    let http_listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("http.listen {}", config.http.listen))?;
    say!("http (metrics, health) on {}", config.http.listen);
    say!("node {} data in {}", config.node.id, data_dir.display());
    let (http_stop_tx, http_stop_rx) = watch::channel(false);
    let http_task = tokio::spawn(http::serve(
        http_listener,
        Arc::new(HttpState {
            queue: queue.clone(),
            prometheus,
            ready: ready_rx.clone(),
            lease: lease.clone(),
        }),
        // HTTP stays up through the drain (readyz answers 503) and stops last.
        http_stop_rx.clone(),
    ));

    // The admin API: up until the very end, like HTTP.
    let admin_listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("admin.listen {}", config.admin.listen))?;
    say!(
        "admin gRPC{} on {}",
        if config.admin.tls_cert.is_some() {
            " (TLS)"
        } else {
            ""
        },
        config.admin.listen
    );
    let admin_task = {
        let ctx = ctx.clone();
        let admin = baton_admin::server::AdminContext {
            queue: queue.clone(),
            writer: writer.clone(),
            peers: peers.clone(),
            lease: lease.clone(),
            hostname: config.smtp.hostname.clone(),
            advertise: config.cluster.advertise.clone(),
            in_flight: Arc::new(move |domain: &str| ctx.in_flight(domain)),
        };
        let token = config.admin.token.clone();
        let stop = http_stop_rx.clone();
        let tls = match (&config.admin.tls_cert, &config.admin.tls_key) {
            (Some(cert), Some(key)) => Some({
                // Refuse to start on unusable files, naming the keys.
                crate::tls::server_config(cert, key)
                    .map_err(|e| anyhow::anyhow!("admin.tls_cert / admin.tls_key: {e}"))?;
                baton_admin::server::TlsFiles {
                    cert: std::fs::read(cert)
                        .with_context(|| format!("admin.tls_cert {}", cert.display()))?,
                    key: std::fs::read(key)
                        .with_context(|| format!("admin.tls_key {}", key.display()))?,
                }
            }),
            _ => None,
        };
        tokio::spawn(async move {
            if let Err(e) =
                baton_admin::server::serve(admin_listener, admin, &token, tls, stop).await
            {
                tracing::error!(error = %e, "admin API stopped");
            }
        })
    };
    let webhook_task = (!config.events.webhook_url.is_empty()).then(|| {
        tokio::spawn(crate::webhook::run(
            queue.clone(),
            writer.clone(),
            config.events.clone(),
            stop_rx.clone(),
        ))
    });
    let retain_task = tokio::spawn(crate::events::retain(
        queue.clone(),
        writer.clone(),
        config.events.clone(),
        stop_rx.clone(),
    ));

    let _ = shutdown.wait_for(|s| *s).await;
    tracing::info!("draining");
    draining.store(true, std::sync::atomic::Ordering::Release);
    ready_tx.send_replace(false);
    stop_tx.send_replace(true);
    while listeners.join_next().await.is_some() {}
    // Sessions are done: their messages are committed. Let deliveries finish.
    deliver_tx.send_replace(false);
    let idle = tokio::time::timeout(DRAIN, ctx.idle()).await.is_ok();
    // Stop renewing the lease, then give the domains back: their outcomes are
    // committed, so the next owners start where this node stopped. If something is
    // still in flight, the domains move only when the lease expires.
    lease_stop_tx.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
    if idle {
        lease.revoke();
        let release = writer.write(Request::Release {
            node: config.node.id,
        });
        match tokio::time::timeout(Duration::from_secs(5), release).await {
            Ok(Ok(_)) => tracing::info!("domains handed over"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not hand domains over; they move when the lease expires")
            }
            Err(_) => {
                tracing::warn!("handing domains over timed out; they move when the lease expires")
            }
        }
    } else {
        tracing::warn!(
            "deliveries still in flight after the drain; domains move when the lease expires"
        );
    }
    ack_task.abort();
    expire_task.abort();
    // Hand leadership to an up-to-date voter.
    baton_cluster::handover::hand_over(&queue, &peers, Duration::from_secs(5)).await;
    manager.stop(None);
    committer.stop(None);
    outcomes.stop(None);
    let _ = manager_handle.await;
    let _ = committer_handle.await;
    let _ = outcomes_handle.await;
    retain_task.abort();
    if let Some(t) = webhook_task {
        t.abort();
    }
    http_stop_tx.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    raft_task.abort();
    queue.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
