//! [`run`]: one node — the queue, then its components, started in the order listed and
//! drained in the reverse order.

use crate::auth::Users;
use crate::batcher::{BatcherArgs, BatcherComponent, WriteFn};
use crate::components::*;
use crate::config::{Config, TlsMode};
use crate::delivery::{DeliveryContext, SiteSetup};
use crate::ingress::bounces::Inbound;
use crate::ingress::{Accepted, IngressShared};
use crate::signing::{Keys, Signing};
use crate::supervisor::{Component, Node, Statuses};
use anyhow::Context;
use baton_cluster::{GrpcNetwork, Lease, Peers, Writer};
use baton_delivery::outbound::Timeouts;
use baton_delivery::retry::RetryPolicy;
use baton_delivery::route::{RouteConfig, Router};
use baton_delivery::tls::{TlsClients, TlsPolicy};
use baton_queue::clock::now_ms;
use baton_queue::types::{Finished, Request};
use baton_queue::{QueueNode, QueueOptions};
use std::sync::Arc;
use tokio::sync::watch;

/// Runs a node until `shutdown` turns true (then drains) or a component fails for good.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let prometheus = crate::metrics::install();
    let data_dir = config.node.data_dir.clone();
    // Checked by the config's validation already; read again here (the files may have
    // changed since).
    let tls = config
        .cluster
        .peer_tls()
        .map_err(crate::config::ConfigErrors)?;
    let peers = Peers::new(tls);
    let queue = QueueNode::open(
        queue_options(&config),
        GrpcNetwork {
            peers: peers.clone(),
        },
    )
    .await
    .with_context(|| format!("opening the queue in {}", data_dir.display()))?;
    let writer = Writer::new(queue.clone(), peers.clone());
    let s = Arc::new(Shared {
        lease: Lease::new(config.cluster.lease),
        stopping: watch::channel(false).0,
        caught_up: watch::channel(false).0,
        ready: watch::channel(false).0,
        deliver: watch::channel(false).0,
        committer: Default::default(),
        outcomes: Default::default(),
        delivery_drained: Default::default(),
        statuses: Statuses::default(),
        config,
        queue: queue.clone(),
        peers,
        writer,
    });
    let delivery = delivery_context(&s)?;
    let signing = Signing::new(
        Keys::load(&s.config.dkim, &s.config.signing).map_err(crate::config::ConfigErrors)?,
    );
    tokio::spawn(reload_on_hangup(
        delivery.clone(),
        signing.clone(),
        s.config.source.clone(),
    ));
    let bounces = delivery.bounces.clone().map(|setup| {
        let thresholds = s.config.tenants.thresholds();
        let node = s.config.node.id;
        Inbound::new(setup, s.writer.clone(), delivery.clone(), thresholds, node)
    });
    let ingress = IngressShared::new(
        s.config.smtp.clone(),
        Users::new(&s.config.smtp.users),
        s.committer.clone(),
        s.ready.subscribe(),
        queue.reader.clone(),
        signing,
        bounces,
    );
    let components: Vec<Arc<dyn Component>> = vec![
        Arc::new(Raft(s.clone(), Task::default())),
        Arc::new(Http(s.clone(), Task::default(), prometheus)),
        Arc::new(Admin(s.clone(), Task::default(), delivery.clone())),
        Arc::new(Membership(s.clone())),
        Arc::new(Leadership(s.clone())),
        Arc::new(committer(&s)),
        Arc::new(outcome_batcher(&s)),
        Arc::new(LeaseKeeper {
            shared: s.clone(),
            task: Task::default(),
        }),
        Arc::new(Background::lease_expiry(&s)),
        Arc::new(Delivery {
            shared: s.clone(),
            ctx: delivery,
            manager: Default::default(),
        }),
        Arc::new(Background::webhook(&s)),
        Arc::new(Background::event_retention(&s)),
        Arc::new(Background::bounce_key(&s)),
        Arc::new(Ingress(s.clone(), ingress, Task::default())),
        Arc::new(Readiness(s.clone(), Task::default())),
    ];
    let mut node = Node::start(components, s.statuses.clone(), &mut shutdown).await?;
    say!("node {} data in {}", s.config.node.id, data_dir.display());
    let failed = tokio::select! {
        _ = shutdown.wait_for(|s| *s) => None,
        reason = node.failed() => Some(reason),
    };
    tracing::info!("draining");
    s.stopping.send_replace(true);
    node.drain().await;
    queue.shutdown().await;
    tracing::info!("stopped");
    match failed {
        Some(reason) => Err(anyhow::anyhow!(reason)),
        None => Ok(()),
    }
}

fn queue_options(config: &Config) -> QueueOptions {
    QueueOptions {
        node_id: config.node.id,
        data_dir: config.node.data_dir.clone(),
        advertise: config.cluster.advertise.clone(),
        // With seeds to ask, whether to form a cluster is decided after asking them
        // (the membership component); without, at once.
        bootstrap: config.cluster.bootstrap && config.cluster.join.is_empty(),
        snapshot_logs: config.cluster.snapshot_logs,
    }
}

/// The Committer: messages from every session, group-committed into `EnqueueTenants`
/// entries (each message with its tenant).
fn committer(s: &Arc<Shared>) -> BatcherComponent<Accepted> {
    let w = s.writer.clone();
    let node = s.config.node.id;
    // With `[bounces]`, each message also leaves a record for late reports.
    let tracked = s.config.bounces.enabled();
    let write: WriteFn<Accepted> = Arc::new(move |accepted| {
        let w = w.clone();
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let (messages, tenants) = accepted.into_iter().map(|a| (a.message, a.tenant)).unzip();
            let request = if tracked {
                Request::EnqueueTracked {
                    node,
                    messages,
                    tenants,
                }
            } else {
                Request::EnqueueTenants {
                    node,
                    messages,
                    tenants,
                }
            };
            let result = w.write(request).await;
            metrics::histogram!(crate::metrics::RAFT_APPEND)
                .record(started.elapsed().as_secs_f64());
            result.map(|_| ())
        })
    });
    BatcherComponent {
        name: "committer",
        args: BatcherArgs {
            write,
            max_batch: 512,
            max_in_flight: 1,
            weight: |a: &Accepted| a.message.body.len(),
            max_batch_bytes: 16 * 1024 * 1024,
        },
        slot: s.committer.clone(),
        drain_timeout: DRAIN,
    }
}

/// The OutcomeBatcher: delivery outcomes, group-committed into `Finished` entries with
/// this node's `[tenants]` thresholds.
fn outcome_batcher(s: &Arc<Shared>) -> BatcherComponent<Finished> {
    let w = s.writer.clone();
    // The tenants' verdicts are reached with this node's `[tenants]`, carried in the log.
    let thresholds = s.config.tenants.thresholds();
    let write: WriteFn<Finished> = Arc::new(move |results| {
        let w = w.clone();
        let thresholds = thresholds.clone();
        Box::pin(async move {
            let request = Request::Finished {
                now_ms: now_ms(),
                results,
                thresholds,
            };
            // Applied here before the messages leave flight, or this node's index
            // would still show them due and send them again.
            w.write_applied(request).await.map(|_| ())
        })
    });
    BatcherComponent {
        name: "outcomes",
        args: BatcherArgs {
            write,
            max_batch: 1024,
            max_in_flight: 1,
            weight: |f: &Finished| f.outcome.dsn.as_ref().map_or(256, |d| d.body.len()),
            max_batch_bytes: 16 * 1024 * 1024,
        },
        slot: s.outcomes.clone(),
        drain_timeout: DRAIN,
    }
}

fn delivery_context(s: &Arc<Shared>) -> anyhow::Result<Arc<DeliveryContext>> {
    let c = &s.config;
    let d = &c.delivery;
    let router = Router::new(RouteConfig {
        smarthost: (!d.smarthost.is_empty()).then(|| d.smarthost.clone()),
        dns_servers: d.dns_servers.clone(),
        mx_port: d.mx_port,
    })
    .map_err(|e| anyhow::anyhow!("delivery.dns_servers: {e}"))?;
    Ok(Arc::new(DeliveryContext {
        hostname: c.smtp.hostname.clone(),
        reader: s.queue.reader.clone(),
        router,
        tls: TlsClients::with_extra_roots(
            &d.extra_roots()
                .map_err(|e| anyhow::anyhow!("delivery.tls_ca_file: {e}"))?,
        ),
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
        outcomes: s.outcomes.clone(),
        may_deliver: s.deliver.subscribe(),
        me: c.node.id,
        lease: s.lease.clone(),
        lease_margin: c.cluster.lease / 4,
        ownership: s.queue.reader.shared.ownership.subscribe(),
        in_flight: Default::default(),
        writer: s.writer.clone(),
        classifier: std::sync::RwLock::new(Arc::new(c.shaping.classifier())),
        setup: SiteSetup {
            config: c.shaping.clone(),
            legacy_connections: d.max_connections_per_domain,
            legacy_per_connection: d.max_messages_per_connection,
        },
        sites: Default::default(),
        sts: crate::delivery::sts::StsPolicies::new(d.mta_sts),
        bounces: crate::feedback::BounceSetup::new(&c.bounces, s.queue.reader.clone()),
    }))
}

/// SIGHUP reloads what can change without a restart: the classification rules, and the
/// DKIM keys and `[signing]` of the config file, read again (a file that no longer
/// validates changes nothing).
async fn reload_on_hangup(
    delivery: Arc<DeliveryContext>,
    signing: Signing,
    source: Option<std::path::PathBuf>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP cannot be handled: reloads need a restart");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading");
        delivery.reload_rules();
        let Some(path) = &source else { continue };
        match Config::load(path) {
            Ok(config) => signing.reload(&config.dkim, &config.signing),
            Err(errors) => {
                for e in errors.0 {
                    tracing::error!(key = %e.key, reason = %e.reason, "config not reloaded: DKIM keys unchanged");
                }
            }
        }
    }
}
