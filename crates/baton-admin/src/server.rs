//! The admin service over one node.
//!
//! Reads (status, queue, messages, suppressions, events) come from this node's applied
//! state and say which log index they reflect. Changes are Raft commands written with
//! [`Writer::write_applied`]: forwarded to the leader from a follower, and answered once
//! applied here, so a read on the same node afterwards sees them.

pub use crate::convert::event_pb;
pub use crate::serve::{TlsFiles, TokenCheck, serve};

use crate::bulk;
use crate::convert::*;
use crate::pb::admin_server::Admin;
use crate::pb::*;
use crate::tenants;
use baton_cluster::join::{Change, change_membership};
use baton_cluster::{Lease, Peers, Writer};
use baton_queue::types::{EventKind, Request};
use baton_queue::{DeliveryRecord, QueueNode, domain_of};
use openraft::ServerState;
use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

/// What the service needs from the node it runs in.
#[derive(Clone)]
pub struct AdminContext {
    pub queue: QueueNode,
    pub writer: Writer,
    pub peers: Peers,
    pub lease: Arc<Lease>,
    /// `smtp.hostname`: the Reporting-MTA of DSNs for deleted messages.
    pub hostname: String,
    /// This node's `cluster.advertise`, asked for membership changes when no leader is
    /// known.
    pub advertise: String,
    /// How many messages this node is sending to a domain right now.
    pub in_flight: Arc<dyn Fn(&str) -> usize + Send + Sync>,
    /// The node's live classification rules (they change on SIGHUP).
    pub classifier: Arc<dyn Fn() -> Arc<baton_reputation::classify::Classifier> + Send + Sync>,
}

/// How long a membership change may take (a learner catching up, domains moving).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);
/// Events read from the state per step of a stream.
const EVENT_CHUNK: usize = 512;

pub struct AdminService {
    ctx: AdminContext,
}

impl AdminService {
    pub fn new(ctx: AdminContext) -> AdminService {
        AdminService { ctx }
    }

    fn applied(&self) -> u64 {
        *self.ctx.queue.reader.shared.changed.borrow()
    }

    async fn change(&self, request: Request) -> Result<GrpcResponse<ChangeReply>, Status> {
        let response = self
            .ctx
            .writer
            .write_applied(request)
            .await
            .map_err(write_status)?;
        Ok(GrpcResponse::new(ChangeReply {
            index: response.index,
            changed: response.changed,
        }))
    }

    fn missing_message(&self, id: &str) -> Status {
        match self.ctx.queue.reader.finished(id) {
            Ok(true) => Status::not_found(format!(
                "message {id} is no longer queued: it was delivered, bounced or deleted (see `batonctl events --message {id}`)"
            )),
            _ => Status::not_found(format!("no message {id} in the queue")),
        }
    }

    async fn membership(&self, change: Change) -> Result<GrpcResponse<NodeReply>, Status> {
        let metrics = self.ctx.queue.raft.metrics().borrow().clone();
        let mut seeds = Vec::new();
        if let Some(leader) = metrics.current_leader
            && let Some(node) = metrics.membership_config.membership().get_node(&leader)
        {
            seeds.push(node.addr.clone());
        }
        seeds.push(self.ctx.advertise.clone());
        change_membership(&self.ctx.peers, &seeds, &change, MEMBERSHIP_TIMEOUT)
            .await
            .map_err(|e| {
                if e.contains("not a member") || e.contains("only member") {
                    Status::failed_precondition(e)
                } else {
                    Status::unavailable(e)
                }
            })?;
        let leader = self.ctx.queue.raft.metrics().borrow().current_leader;
        Ok(GrpcResponse::new(NodeReply {
            leader_id: leader.unwrap_or(0),
        }))
    }
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Event, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _req: GrpcRequest<StatusRequest>,
    ) -> Result<GrpcResponse<StatusReply>, Status> {
        let q = &self.ctx.queue;
        let m = q.raft.metrics().borrow().clone();
        let ownership = q.reader.shared.ownership.borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let mut owned: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        let mut domains = q.reader.shared.with(|i| i.domains());
        domains.sort();
        for d in domains {
            if let Some(owner) = ownership.owner(&d) {
                owned.entry(owner).or_default().push(d);
            }
        }
        // Replication progress is the leader's knowledge: here if this node leads, else
        // asked of the leader (briefly; without it the lag is shown as unknown).
        let mut last_log = m.last_log_index.unwrap_or(0);
        let mut leader_view: Option<BTreeMap<u64, Option<u64>>> = None;
        if m.replication.is_none()
            && let Some(leader) = m.current_leader
            && let Some(node) = membership.get_node(&leader)
            && let Ok(mut client) = self.ctx.peers.client(&node.addr)
        {
            let ask = client.commit_index(baton_cluster::pb::CommitIndexRequest {});
            if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(1), ask).await {
                let reply = reply.into_inner();
                if reply.ok {
                    last_log = reply.last_log_index;
                    leader_view =
                        Some(reply.matched.iter().map(|x| (x.node_id, x.index)).collect());
                }
            }
        }
        let members = membership
            .nodes()
            .map(|(id, node)| {
                // None: unknown (no leader view, or the leader has not matched this
                // member's log since it became leader), never 0.
                let matched = if *id == q.id && m.replication.is_some() {
                    Some(last_log)
                } else if let Some(view) = &leader_view {
                    view.get(id).copied().flatten()
                } else {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).copied().flatten())
                        .map(|l| l.index)
                };
                Member {
                    id: *id,
                    addr: node.addr.clone(),
                    role: if voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    }
                    .into(),
                    leader: m.current_leader == Some(*id),
                    lag_known: matched.is_some(),
                    matched_index: matched,
                    lag: matched.map(|x| last_log.saturating_sub(x)),
                    owner: ownership.nodes.contains(id),
                    lease_renewal_index: ownership.renewed.get(id).copied().unwrap_or(0),
                    owned_domains: owned.remove(id).unwrap_or_default(),
                }
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Follower | ServerState::Shutdown => "follower",
        };
        Ok(GrpcResponse::new(StatusReply {
            node_id: q.id,
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            commit_index: q.committed.load(std::sync::atomic::Ordering::Acquire),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            members,
            ownership_epoch: ownership.epoch,
            ownership_settled: ownership.is_settled(),
            lease_remaining_seconds: self.ctx.lease.left().as_secs_f64(),
            role: role.into(),
        }))
    }

    async fn add_node(
        &self,
        req: GrpcRequest<AddNodeRequest>,
    ) -> Result<GrpcResponse<NodeReply>, Status> {
        let AddNodeRequest { id, addr } = req.into_inner();
        if id == 0 {
            return Err(Status::invalid_argument("node ids start at 1"));
        }
        if addr
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(Status::invalid_argument(format!(
                "{addr:?} is not host:port (the node's cluster.advertise)"
            )));
        }
        let members = self
            .ctx
            .queue
            .raft
            .metrics()
            .borrow()
            .membership_config
            .clone();
        if let Some(node) = members.membership().get_node(&id)
            && node.addr != addr
        {
            return Err(Status::already_exists(format!(
                "node {id} is already a member at {}",
                node.addr
            )));
        }
        self.membership(Change::Add { node_id: id, addr }).await
    }

    async fn remove_node(
        &self,
        req: GrpcRequest<RemoveNodeRequest>,
    ) -> Result<GrpcResponse<NodeReply>, Status> {
        let id = req.into_inner().id;
        let members = self
            .ctx
            .queue
            .raft
            .metrics()
            .borrow()
            .membership_config
            .clone();
        if members.membership().get_node(&id).is_none() {
            return Err(Status::not_found(format!("node {id} is not a member")));
        }
        self.membership(Change::Remove { node_id: id }).await
    }

    async fn queue_summary(
        &self,
        _req: GrpcRequest<QueueSummaryRequest>,
    ) -> Result<GrpcResponse<QueueSummaryReply>, Status> {
        let reader = &self.ctx.queue.reader;
        let applied = self.applied();
        let now = baton_queue::clock::now_ms();
        // (domain, queued, deferred, oldest id, suspended, owner, site, throttle)
        let (messages, rows) = reader.shared.with(|index| {
            let mut rows = Vec::new();
            for d in index.domains() {
                let (mut queued, mut deferred) = (0u64, 0u64);
                let mut oldest: Option<String> = None;
                for (id, due) in index.due_times(&d) {
                    if due == 0 {
                        queued += 1;
                    } else {
                        deferred += 1;
                    }
                    if oldest.as_deref().is_none_or(|o| id < o) {
                        oldest = Some(id.to_string());
                    }
                }
                let suspended = index.is_suspended(&d);
                let owner = index.owner(&d).unwrap_or(0);
                let site = index.site_of(&d).map(|s| s.site.clone());
                let throttle = if suspended {
                    "suspended"
                } else {
                    crate::sites::state_name(index.site_state(index.owner_key(&d)))
                };
                rows.push(crate::sites::DomainRow {
                    domain: d,
                    queued,
                    deferred,
                    oldest,
                    suspended,
                    owner,
                    site,
                    throttle,
                });
            }
            (index.messages() as u64, rows)
        });
        let mut domains: Vec<DomainSummary> = rows
            .into_iter()
            .map(|r| {
                // Ids are ULIDs: the smallest is the oldest; its meta says when.
                let oldest_age_seconds = r
                    .oldest
                    .and_then(|id| reader.message(&id).ok().flatten())
                    .map_or(0.0, |m| {
                        now.saturating_sub(m.received_at_ms) as f64 / 1000.0
                    });
                DomainSummary {
                    in_flight: (self.ctx.in_flight)(&r.domain) as u64,
                    owner: r.owner,
                    throttle: r.throttle.into(),
                    site: r.site.unwrap_or_default(),
                    domain: r.domain,
                    queued: r.queued,
                    deferred: r.deferred,
                    oldest_age_seconds,
                    suspended: r.suspended,
                }
            })
            .collect();
        domains.sort_by(|a, b| {
            (b.queued + b.deferred)
                .cmp(&(a.queued + a.deferred))
                .then(a.domain.cmp(&b.domain))
        });
        let suspended = reader
            .suspended()
            .map_err(internal)?
            .into_iter()
            .map(|(domain, l)| Suspension {
                domain,
                reason: l.reason,
                since_unix_ms: l.since_ms,
            })
            .collect();
        Ok(GrpcResponse::new(QueueSummaryReply {
            applied_index: applied,
            messages,
            domains,
            suspended,
        }))
    }

    async fn list_messages(
        &self,
        req: GrpcRequest<ListMessagesRequest>,
    ) -> Result<GrpcResponse<ListMessagesReply>, Status> {
        let r = req.into_inner();
        let page_size = match r.page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let want_state = match r.state.as_str() {
            "" | "any" => None,
            "queued" | "deferred" | "held" => Some(r.state.clone()),
            other => {
                return Err(Status::invalid_argument(format!(
                    "state {other:?}: expected queued, deferred or held"
                )));
            }
        };
        let reader = &self.ctx.queue.reader;
        let applied = self.applied();
        let mut domains: Vec<String> = if r.domain.is_empty() {
            reader.shared.with(|i| i.domains())
        } else {
            vec![valid_domain(&r.domain)?]
        };
        domains.sort();
        // The token is "<domain> <last id>".
        let (start_domain, after_id) = match r.page_token.split_once(' ') {
            Some((d, id)) => (d.to_string(), id.to_string()),
            None if r.page_token.is_empty() => (String::new(), String::new()),
            None => return Err(Status::invalid_argument("bad page_token")),
        };
        let mut messages = Vec::new();
        let mut next_page_token = String::new();
        'domains: for domain in domains.iter().filter(|d| **d >= start_domain) {
            let after = if *domain == start_domain {
                after_id.as_str()
            } else {
                ""
            };
            for pair in reader.deliveries(domain, after) {
                let (id, record) = pair.map_err(internal)?;
                let state = state_of(&record);
                if want_state.as_deref().is_some_and(|w| w != state) {
                    continue;
                }
                if messages.len() == page_size {
                    let last: &MessageSummary = &messages[page_size - 1];
                    next_page_token = format!("{} {}", last.domain, last.id);
                    break 'domains;
                }
                let Some(meta) = reader.message(&id).map_err(internal)? else {
                    continue;
                };
                messages.push(MessageSummary {
                    id,
                    domain: domain.clone(),
                    sender: meta.sender,
                    recipients: record.recipients.clone(),
                    state: state.into(),
                    attempts: record.attempts,
                    next_attempt_unix_ms: next_attempt(&record),
                    received_unix_ms: meta.received_at_ms,
                    size: meta.size,
                    last_reply: record.last_reply.clone().unwrap_or_default(),
                });
            }
        }
        Ok(GrpcResponse::new(ListMessagesReply {
            applied_index: applied,
            messages,
            next_page_token,
        }))
    }

    async fn get_message(
        &self,
        req: GrpcRequest<GetMessageRequest>,
    ) -> Result<GrpcResponse<Message>, Status> {
        let GetMessageRequest { id, include_body } = req.into_inner();
        let reader = &self.ctx.queue.reader;
        let applied = self.applied();
        let Some(meta) = reader.message(&id).map_err(internal)? else {
            return Err(self.missing_message(&id));
        };
        let body = reader.body(&id).map_err(internal)?.unwrap_or_default();
        let mut records: BTreeMap<String, Option<DeliveryRecord>> = BTreeMap::new();
        let mut recipients = Vec::new();
        for rcpt in &meta.recipients {
            let domain = domain_of(rcpt);
            if !records.contains_key(&domain) {
                let record = reader.delivery(&domain, &id).map_err(internal)?;
                records.insert(domain.clone(), record);
            }
            let open = records
                .get(&domain)
                .and_then(|r| r.as_ref())
                .filter(|r| r.recipients.contains(rcpt));
            recipients.push(match open {
                Some(r) => RecipientState {
                    address: rcpt.clone(),
                    domain,
                    state: state_of(r).into(),
                    attempts: r.attempts,
                    next_attempt_unix_ms: next_attempt(r),
                    last_reply: r.last_reply.clone().unwrap_or_default(),
                },
                None => RecipientState {
                    address: rcpt.clone(),
                    domain,
                    state: "done".into(),
                    ..Default::default()
                },
            });
        }
        Ok(GrpcResponse::new(Message {
            applied_index: applied,
            id,
            sender: meta.sender,
            received_unix_ms: meta.received_at_ms,
            size: meta.size,
            recipients,
            headers: headers_of(&body),
            body: if include_body { body } else { Vec::new() },
        }))
    }

    async fn retry_message(
        &self,
        req: GrpcRequest<MessageRequest>,
    ) -> Result<GrpcResponse<ChangeReply>, Status> {
        let id = req.into_inner().id;
        if self
            .ctx
            .queue
            .reader
            .message(&id)
            .map_err(internal)?
            .is_none()
        {
            return Err(self.missing_message(&id));
        }
        self.change(Request::Retry { id }).await
    }

    async fn delete_message(
        &self,
        req: GrpcRequest<DeleteMessageRequest>,
    ) -> Result<GrpcResponse<ChangeReply>, Status> {
        let DeleteMessageRequest { id, dsn: with_dsn } = req.into_inner();
        if self
            .ctx
            .queue
            .reader
            .message(&id)
            .map_err(internal)?
            .is_none()
        {
            return Err(self.missing_message(&id));
        }
        let now = baton_queue::clock::now_ms();
        let dsn = if with_dsn {
            bulk::operator_dsn(&self.ctx, &id, None, now)?
        } else {
            None
        };
        self.change(Request::Delete {
            id,
            now_ms: now,
            dsn,
        })
        .await
    }

    async fn retry_queue(
        &self,
        req: GrpcRequest<QueueSelection>,
    ) -> Result<GrpcResponse<QueueChangeReply>, Status> {
        let QueueSelection { domain, all } = req.into_inner();
        let which = bulk::Selection::new(&domain, all)?;
        Ok(GrpcResponse::new(bulk::retry(&self.ctx, which).await?))
    }

    async fn delete_queue(
        &self,
        req: GrpcRequest<DeleteQueueRequest>,
    ) -> Result<GrpcResponse<QueueChangeReply>, Status> {
        let DeleteQueueRequest { domain, all, dsn } = req.into_inner();
        let which = bulk::Selection::new(&domain, all)?;
        Ok(GrpcResponse::new(
            bulk::delete(&self.ctx, which, dsn).await?,
        ))
    }

    async fn suspend_domain(
        &self,
        req: GrpcRequest<SuspendDomainRequest>,
    ) -> Result<GrpcResponse<ChangeReply>, Status> {
        let r = req.into_inner();
        let domain = valid_domain(&r.domain)?;
        self.change(Request::Suspend {
            domain,
            reason: r.reason,
            now_ms: baton_queue::clock::now_ms(),
        })
        .await
    }

    async fn resume_domain(
        &self,
        req: GrpcRequest<DomainRequest>,
    ) -> Result<GrpcResponse<ChangeReply>, Status> {
        let domain = valid_domain(&req.into_inner().domain)?;
        self.change(Request::Resume { domain }).await
    }

    async fn list_suppressions(
        &self,
        _req: GrpcRequest<ListSuppressionsRequest>,
    ) -> Result<GrpcResponse<ListSuppressionsReply>, Status> {
        let applied = self.applied();
        let entries = self
            .ctx
            .queue
            .reader
            .suppressions()
            .map_err(internal)?
            .into_iter()
            .map(|(address, l)| Suppression {
                address,
                reason: l.reason,
                since_unix_ms: l.since_ms,
                tenant: String::new(),
            })
            .chain(tenants::suppressions(&self.ctx)?)
            .collect();
        Ok(GrpcResponse::new(ListSuppressionsReply {
            applied_index: applied,
            entries,
        }))
    }

    async fn add_suppression(
        &self,
        req: GrpcRequest<AddSuppressionRequest>,
    ) -> Result<GrpcResponse<ChangeReply>, Status> {
        let r = req.into_inner();
        if !r.tenant.is_empty() {
            return Ok(GrpcResponse::new(
                tenants::add_suppression(&self.ctx, r).await?,
            ));
        }
        let address = valid_address(&r.address)?;
        self.change(Request::Suppress {
            address,
            reason: r.reason,
            now_ms: baton_queue::clock::now_ms(),
        })
        .await
    }

    async fn remove_suppression(
        &self,
        req: GrpcRequest<AddressRequest>,
    ) -> Result<GrpcResponse<ChangeReply>, Status> {
        let r = req.into_inner();
        if !r.tenant.is_empty() {
            return Ok(GrpcResponse::new(
                tenants::remove_suppression(&self.ctx, r).await?,
            ));
        }
        let address = valid_address(&r.address)?;
        self.change(Request::Unsuppress { address }).await
    }

    async fn classify(
        &self,
        req: GrpcRequest<ClassifyRequest>,
    ) -> Result<GrpcResponse<ClassifyReply>, Status> {
        let reply = req.into_inner().reply;
        if reply.trim().is_empty() {
            return Err(Status::invalid_argument(
                "give the reply text to classify, e.g. \"550 5.1.1 no such user\"",
            ));
        }
        let v = (self.ctx.classifier)().classify(&reply);
        Ok(GrpcResponse::new(ClassifyReply {
            category: v.category.name().to_string(),
            scope: v.category.scope().name().to_string(),
            rule: v.rule.clone(),
            normalized: v.reply.clone(),
            factor: v.factor,
            suspend_seconds: v.suspend.map(|d| d.as_secs()),
        }))
    }

    async fn list_sites(
        &self,
        _req: GrpcRequest<ListSitesRequest>,
    ) -> Result<GrpcResponse<ListSitesReply>, Status> {
        let shared = &self.ctx.queue.reader.shared;
        let ownership = shared.ownership.borrow().clone();
        let sites = shared.with(|i| crate::sites::all(i, &ownership));
        Ok(GrpcResponse::new(ListSitesReply { sites }))
    }

    async fn get_site(&self, req: GrpcRequest<SiteRequest>) -> Result<GrpcResponse<Site>, Status> {
        let name = req.into_inner().name;
        let shared = &self.ctx.queue.reader.shared;
        let ownership = shared.ownership.borrow().clone();
        shared
            .with(|i| crate::sites::get(i, &ownership, &name))
            .map(GrpcResponse::new)
            .ok_or_else(|| crate::sites::unknown(&name))
    }

    async fn resume_site(
        &self,
        req: GrpcRequest<SiteRequest>,
    ) -> Result<GrpcResponse<ChangeReply>, Status> {
        let name = req.into_inner().name;
        let known = self
            .ctx
            .queue
            .reader
            .shared
            .with(|i| i.sites().contains_key(&name));
        if !known {
            return Err(crate::sites::unknown(&name));
        }
        self.change(Request::SiteResume {
            site: name,
            now_ms: baton_queue::clock::now_ms(),
        })
        .await
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        req: GrpcRequest<StreamEventsRequest>,
    ) -> Result<GrpcResponse<Self::StreamEventsStream>, Status> {
        let r = req.into_inner();
        let mut kinds = Vec::new();
        for k in &r.kinds {
            kinds.push(EventKind::parse(k).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "event kind {k:?}: expected one of {}",
                    EventKind::ALL.map(|k| k.as_str()).join(", ")
                ))
            })?);
        }
        let domain = if r.domain.is_empty() {
            None
        } else {
            Some(valid_domain(&r.domain)?)
        };
        let reader = self.ctx.queue.reader.clone();
        let (tx, rx) = mpsc::channel::<Result<Event, Status>>(EVENT_CHUNK);
        let mut changed = reader.shared.changed.subscribe();
        tokio::spawn(async move {
            let mut after = r.after;
            loop {
                changed.borrow_and_update();
                let mut batch = Vec::new();
                let mut read = 0;
                for pair in reader.events_after(after).take(EVENT_CHUNK) {
                    read += 1;
                    match pair {
                        Ok((position, e)) => {
                            after = position;
                            let wanted = (r.message_id.is_empty() || e.id == r.message_id)
                                && domain.as_ref().is_none_or(|d| e.domain == *d)
                                && (kinds.is_empty() || kinds.contains(&e.kind));
                            if wanted {
                                batch.push(event_pb(position, e));
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(internal(e))).await;
                            return;
                        }
                    }
                }
                for e in batch {
                    if tx.send(Ok(e)).await.is_err() {
                        return; // the client went away
                    }
                }
                if read == EVENT_CHUNK {
                    continue;
                }
                if !r.follow {
                    return;
                }
                tokio::select! {
                    c = changed.changed() => if c.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(GrpcResponse::new(Box::pin(stream)))
    }

    async fn list_tenants(
        &self,
        _req: GrpcRequest<ListTenantsRequest>,
    ) -> Result<GrpcResponse<ListTenantsReply>, Status> {
        Ok(GrpcResponse::new(tenants::list(&self.ctx)?))
    }

    async fn get_tenant(
        &self,
        req: GrpcRequest<TenantRequest>,
    ) -> Result<GrpcResponse<TenantReply>, Status> {
        Ok(GrpcResponse::new(tenants::get(
            &self.ctx,
            req.into_inner(),
        )?))
    }

    async fn pause_tenant(
        &self,
        req: GrpcRequest<PauseTenantRequest>,
    ) -> Result<GrpcResponse<ChangeReply>, Status> {
        Ok(GrpcResponse::new(
            tenants::pause(&self.ctx, req.into_inner()).await?,
        ))
    }

    async fn resume_tenant(
        &self,
        req: GrpcRequest<TenantRequest>,
    ) -> Result<GrpcResponse<ChangeReply>, Status> {
        Ok(GrpcResponse::new(
            tenants::resume(&self.ctx, req.into_inner()).await?,
        ))
    }
}
