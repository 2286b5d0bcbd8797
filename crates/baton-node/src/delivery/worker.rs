//! A delivery worker: one outbound connection's worth of work.
//!
//! The worker asks its DomainDelivery for the next message ([`DomainMsg::Next`]) until
//! there is none, opening (and reopening) one connection to the domain's MX hosts. For
//! each message it reads the job, asks the policy what to do, sends, and hands the
//! outcome to a commit task that holds the message's [`InFlight`] token until the
//! OutcomeBatcher has committed it. A message whose tenant was paused after it was taken
//! is given back unsent (the index holds it until the tenant is resumed). A message the remote accepted but whose outcome is
//! not committed is the one a crash would send twice: a worker keeps at most one such
//! message, so duplicates after a crash are bounded by the open connections.

use super::domain::DomainMsg;
use super::site::{ConnectionPermit, SiteGate, SiteMsg, Wait};
use super::{DeliveryContext, InFlight};
use crate::batcher;
use crate::logfmt::Safe;
use crate::metrics as m;
use baton_delivery::outbound::{ConnError, Connection, OpenFailed, Transaction};
use baton_delivery::policy::{self, Attempt, Job, Plan, Prepared};
use baton_delivery::route::{RouteError, Target};
use baton_queue::clock::now_ms;
use baton_queue::db::DbError;
use baton_queue::types::{AutoSuppression, Finished, RecipientReply, Remote};
use baton_reputation::category::Category;
use baton_smtp::client::OutboundMessage;
use baton_smtp::reply::Reply;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long an unreadable message waits before it is taken again.
const UNREADABLE_PAUSE: Duration = Duration::from_secs(5);
/// How long one try to commit an outcome may take before it is tried again.
const COMMIT_TRY: Duration = Duration::from_secs(60);
/// A worker waiting longer than this for its site's next token closes its connection.
const IDLE_CLOSE: Duration = Duration::from_secs(2);

#[path = "worker_sts.rs"]
mod sts;

pub struct Worker;

pub struct WorkerState {
    ctx: Arc<DeliveryContext>,
    domain: String,
    actor: ActorRef<DomainMsg>,
    gate: Arc<SiteGate>,
    /// This worker's connection slot at the site, held while it lives.
    _permit: ConnectionPermit,
}

impl Actor for Worker {
    type Msg = ();
    type State = WorkerState;
    type Arguments = (
        Arc<DeliveryContext>,
        String,
        ActorRef<DomainMsg>,
        Arc<SiteGate>,
        ConnectionPermit,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        (ctx, domain, actor, gate, permit): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.cast(())?;
        Ok(WorkerState {
            ctx,
            domain,
            actor,
            gate,
            _permit: permit,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<()>,
        _: (),
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let mut conn = Conn::default();
        let result = state.run(&mut conn).await;
        if let Some(open) = conn.open.take() {
            open.conn.quit().await;
        }
        myself.stop(None);
        result
    }
}

/// The worker's connection and what it knows of the domain's routes.
#[derive(Default)]
struct Conn {
    open: Option<Open>,
    sent: usize,
    targets: Option<Vec<Target>>,
    /// The TLS policy of the open connection, for events (see [`sts::tls_label`]).
    tag: &'static str,
}

/// An open connection, counted by the DomainDelivery while it lives: its guard, dropped
/// with it (a quit, or a worker that fails or is killed), tells the actor it closed.
struct Open {
    conn: Connection,
    _live: Live,
}

struct Live(ActorRef<DomainMsg>);

impl Open {
    fn new(conn: Connection, actor: &ActorRef<DomainMsg>) -> Open {
        let _ = actor.cast(DomainMsg::Connection(true));
        Open {
            conn,
            _live: Live(actor.clone()),
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.0.cast(DomainMsg::Connection(false));
    }
}

impl WorkerState {
    /// The next message to send, if any.
    async fn next(&self) -> Result<Option<InFlight>, ActorProcessingErr> {
        match self.actor.call(DomainMsg::Next, None).await? {
            ractor::rpc::CallResult::Success(next) => Ok(next),
            // The DomainDelivery is stopping: so does this worker.
            _ => Ok(None),
        }
    }

    /// Open connections of this domain (all workers).
    async fn live(&self) -> usize {
        match self.actor.call(DomainMsg::Live, None).await {
            Ok(ractor::rpc::CallResult::Success(n)) => n,
            _ => 0,
        }
    }

    /// Waits for the site's next token; false when this worker should stop (the site
    /// is suspended, moved away, or has fewer connections now).
    async fn paced(&self, conn: &mut Conn) -> bool {
        loop {
            if self.gate.over_connections() {
                return false;
            }
            match self.gate.take(now_ms()) {
                Ok(()) => return true,
                Err(Wait::Stop) => return false,
                Err(Wait::For(wait)) => {
                    if wait > IDLE_CLOSE
                        && let Some(open) = conn.open.take()
                    {
                        open.conn.quit().await;
                        conn.sent = 0;
                    }
                    tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                    if !self.ctx.allowed(&self.domain) {
                        return false;
                    }
                }
            }
        }
    }

    async fn run(&self, conn: &mut Conn) -> Result<(), ActorProcessingErr> {
        let mut unsettled: Option<JoinHandle<()>> = None;
        loop {
            if !self.paced(conn).await {
                break;
            }
            let Some(token) = self.next().await? else {
                self.gate.untake(now_ms());
                break;
            };
            #[cfg(test)]
            super::tests::maybe_panic(&token.id);
            let Some(job) = self.load(&token) else {
                release_later(token);
                continue;
            };
            let tenant = self.ctx.reader.tenant_of(&job.id);
            if let Ok(Some(t)) = &tenant
                && self
                    .ctx
                    .reader
                    .shared
                    .with(|i| i.tenant_paused(t).is_some())
            {
                // Its tenant was paused since it was taken: not attempted, not counted.
                // The index holds it aside, so it is not taken again until a resume.
                drop(token);
                self.gate.untake(now_ms());
                continue;
            }
            let prepared = policy::prepare(&job, |r| self.suppressed(&tenant, r));
            let plan = match (prepared, policy::expired(&job, &self.ctx.retry, now_ms())) {
                // Held before anything else: expiring it would bounce to the address
                // that does not parse.
                (Prepared::Decided(attempt), _) if attempt.held => {
                    tracing::error!(id = %job.id, sender = %Safe(&job.meta.sender), "the stored sender does not parse: message held");
                    self.finish(&job, token, attempt);
                    continue;
                }
                (_, Some(attempt)) | (Prepared::Decided(attempt), None) => {
                    self.finish(&job, token, attempt);
                    continue;
                }
                (Prepared::Send(plan), None) => plan,
            };
            if conn.targets.is_none() {
                match self.ctx.router.route(&self.domain).await {
                    Ok(t) => conn.targets = Some(t),
                    Err(e) => {
                        self.route_failed(job, token, &e).await?;
                        return Ok(());
                    }
                }
            }
            if conn.open.as_ref().is_some_and(|o| !o.conn.is_ready())
                || conn.sent >= self.gate.per_connection
            {
                if let Some(open) = conn.open.take() {
                    open.conn.quit().await;
                }
                conn.sent = 0;
            }
            if conn.open.is_none() {
                let plan = sts::StsPlan::new(
                    super::sts::policy(&self.ctx, &self.domain).await,
                    self.ctx.tls_policy,
                );
                let targets = plan.targets(conn.targets.as_deref().unwrap_or_default());
                if targets.is_empty() && plan.policy.is_some() {
                    let reason = sts::no_permitted_mx(&self.domain);
                    let remote = Remote {
                        tls: sts::tls_label("", plan.tag),
                        ..Remote::default()
                    };
                    self.sts_defer_all(job, token, &reason, remote).await?;
                    return Ok(());
                }
                let opened = Connection::open(
                    &targets,
                    &self.ctx.hostname,
                    plan.tls,
                    &self.ctx.tls,
                    &self.ctx.timeouts,
                )
                .await;
                match opened {
                    Ok(c) => {
                        plan.check_testing(&self.domain, &c);
                        conn.tag = plan.tag;
                        conn.open = Some(Open::new(c, &self.actor));
                    }
                    Err(failed) => {
                        let remote =
                            failed
                                .last_target()
                                .map_or_else(Remote::default, |t| Remote {
                                    host: t.host.clone(),
                                    ip: t.addr.ip().to_string(),
                                    tls: sts::tls_label("", plan.tag),
                                });
                        match plan.tls_failure(&failed) {
                            Some(reason) => self.sts_defer_all(job, token, &reason, remote).await?,
                            None => self.connect_failed(job, token, &failed, remote).await?,
                        }
                        return Ok(());
                    }
                }
            }
            let Some(open) = conn.open.as_mut() else {
                return Ok(());
            };
            if let Some(previous) = unsettled.take() {
                let _ = previous.await;
            }
            unsettled = self
                .attempt(&mut open.conn, conn.tag, job, plan, token)
                .await;
            conn.sent += 1;
        }
        Ok(())
    }

    /// While the site is probing: this attempt is over (the site's actor frees the
    /// probe if nothing it was told settled the site).
    fn probe_over(&self) {
        if self.gate.probing() {
            self.gate.tell(SiteMsg::ProbeOver);
        }
    }

    /// Tells the site's actor what a remote reply says about the site; returns its
    /// category.
    fn observe(&self, reply: &str) -> Category {
        let verdict = self.ctx.classifier().classify(reply);
        let category = verdict.category;
        if category != Category::Delivered {
            metrics::counter!(m::SITE_REPLIES, "site" => self.gate.name.clone(), "category" => category.name())
                .increment(1);
        }
        // The site's actor acts on the site-scoped ones; any other answer still ends a
        // probe (the site talks again).
        if about_site(category) {
            self.gate.refused(verdict);
        } else if category != Category::Delivered && category != Category::Transport {
            self.gate.tell(SiteMsg::Reply(Box::new(verdict)));
        }
        category
    }

    /// What an attempt's replies say, told to the site: deliveries, and the refusals
    /// that are about the site. Ends a probe that settled nothing.
    fn observe_transaction(&self, rcpt_replies: &[Reply], data_reply: Option<&Reply>) {
        for r in rcpt_replies.iter().filter(|r| !r.is_positive()) {
            self.observe(&r.to_string());
        }
        match data_reply {
            Some(d) if d.is_completion() => self.gate.delivered(),
            Some(d) => {
                self.observe(&d.to_string());
            }
            None => {}
        }
        self.probe_over();
    }

    /// Whether `rcpt` is on the global suppression list, or on that of the message's
    /// `tenant` (as read: an error defers the recipient, like the list's own).
    fn suppressed(
        &self,
        tenant: &Result<Option<String>, DbError>,
        rcpt: &str,
    ) -> Result<bool, String> {
        let reader = &self.ctx.reader;
        if reader.is_suppressed(rcpt).map_err(|e| e.to_string())? {
            return Ok(true);
        }
        match tenant {
            Ok(Some(tenant)) => reader
                .is_suppressed_for(tenant, rcpt)
                .map_err(|e| e.to_string()),
            Ok(None) => Ok(false),
            Err(e) => Err(format!("the message's tenant: {e}")),
        }
    }

    fn load(&self, token: &InFlight) -> Option<Job> {
        let reader = &self.ctx.reader;
        let record = reader.delivery(&self.domain, &token.id).ok().flatten()?;
        let meta = reader.message(&token.id).ok().flatten()?;
        Some(Job {
            id: token.id.clone(),
            domain: self.domain.clone(),
            meta,
            record,
        })
    }

    /// Sends one message; when the remote answered, returns the task committing the
    /// outcome.
    async fn attempt(
        &self,
        conn: &mut Connection,
        tag: &str,
        job: Job,
        plan: Plan,
        token: InFlight,
    ) -> Option<JoinHandle<()>> {
        let Some(body) = self.ctx.reader.body(&job.id).ok().flatten() else {
            // Finished meanwhile (or unreadable): give it back.
            release_later(token);
            return None;
        };
        // With `[bounces]`: the message's bounce address (naming the recipient when one).
        let from = self
            .ctx
            .bounces
            .as_ref()
            .and_then(|b| {
                let sending: Vec<&str> = plan.send.iter().map(|(r, _)| r.as_str()).collect();
                b.mail_from(&job.id, &plan.from, &job.meta.recipients, &sending)
            })
            .unwrap_or_else(|| plan.from.clone());
        let message = OutboundMessage {
            from,
            rcpts: plan.send.iter().map(|(_, m)| m.clone()).collect(),
            size_hint: body.len() as u64,
            eight_bit: job.meta.eight_bit,
            smtputf8: job.meta.smtputf8,
        };
        let lease = self.ctx.lease.clone();
        let lease_left = move || lease.left();
        let remote = Remote {
            host: conn.target.host.clone(),
            ip: conn.target.addr.ip().to_string(),
            tls: sts::tls_label(&conn.tls_version(), tag),
        };
        match conn
            .send(message, &body, &lease_left, self.ctx.lease_margin)
            .await
        {
            Ok(Transaction {
                rcpt_replies,
                data_reply,
            }) => {
                self.observe_transaction(&rcpt_replies, data_reply.as_ref());
                // Logged per recipient by `finish`.
                let a = policy::from_transaction(plan, &rcpt_replies, data_reply.as_ref(), remote);
                Some(self.finish_classified(&job, token, a, None))
            }
            Err(ConnError::Abandoned) => {
                tracing::info!(id = %job.id, "delivery abandoned before the final dot");
                None
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::info!(id = %job.id, domain = %self.domain, error = %Safe(&reason), "attempt failed");
                if let Some(reply) = e.reply() {
                    self.observe(&reply.to_string());
                }
                self.probe_over();
                let a = policy::from_error(plan, &reason, remote);
                self.finish_classified(&job, token, a, e.reply().map(|r| (reason.as_str(), r)));
                None
            }
        }
    }

    /// No route: this message, and (for a permanent answer, or when no other
    /// connection of the domain works) everything waiting, get the same answer.
    async fn route_failed(
        &self,
        job: Job,
        token: InFlight,
        e: &RouteError,
    ) -> Result<(), ActorProcessingErr> {
        tracing::info!(domain = %self.domain, error = %e, "no route");
        self.finish(&job, token, policy::route_failed(&job, e));
        if e.is_permanent() || self.live().await == 0 {
            while let Some(token) = self.next().await? {
                match self.load(&token) {
                    Some(job) => {
                        self.finish(&job, token, policy::route_failed(&job, e));
                    }
                    None => release_later(token),
                }
            }
        }
        Ok(())
    }

    /// No connection: this message is deferred; if no other connection to the domain
    /// works, the site is down and everything waiting is deferred too. Otherwise (a
    /// host refusing one more connection, say) the working connections take the rest.
    async fn connect_failed(
        &self,
        job: Job,
        token: InFlight,
        failed: &OpenFailed,
        remote: Remote,
    ) -> Result<(), ActorProcessingErr> {
        let reason = failed.reason(&self.domain, self.ctx.router.uses_smarthost());
        tracing::info!(domain = %self.domain, error = %reason, "no connection");
        if let Some(reply) = failed.tried.last().and_then(|(_, e)| e.reply()) {
            self.observe(&reply.to_string());
        }
        self.probe_over();
        // A refusal at the greeting is the site's answer for everything waiting.
        let refusal = failed
            .tried
            .last()
            .and_then(|(_, e)| e.reply())
            .map(|r| (reason.as_str(), r));
        let a = policy::defer_all(&job, &reason, remote);
        self.finish_classified(&job, token, a, refusal);
        if self.live().await == 0 {
            while let Some(token) = self.next().await? {
                match self.load(&token) {
                    Some(job) => {
                        let a = policy::defer_all(&job, &reason, Remote::default());
                        self.finish_classified(&job, token, a, refusal);
                    }
                    None => release_later(token),
                }
            }
        }
        Ok(())
    }

    /// Commits the outcome of an attempt that reached the remote: refusals about the
    /// site defer (even a 5xx) without using up an attempt, hard bounces suppress the
    /// address, and each failed or deferred recipient keeps its own reply and the rule
    /// that classified it. `refusal`: the reason every recipient was deferred with and
    /// the remote reply in it (a refusal before the message), classified by that reply.
    fn finish_classified(
        &self,
        job: &Job,
        token: InFlight,
        mut attempt: Attempt,
        refusal: Option<(&str, &Reply)>,
    ) -> JoinHandle<()> {
        // Each distinct reply classified once.
        let classifier = self.ctx.classifier();
        let mut verdicts: HashMap<String, (Category, String)> = HashMap::new();
        if let Some((reason, reply)) = refusal {
            let v = classifier.classify(&reply.to_string());
            verdicts.insert(reason.to_string(), (v.category, v.rule));
        }
        let failed = attempt.failed.iter().map(|(_, _, reply)| reply);
        for reply in failed.chain(attempt.deferred.iter().map(|(_, reply)| reply)) {
            if !verdicts.contains_key(reply) {
                let v = classifier.classify(reply);
                verdicts.insert(reply.clone(), (v.category, v.rule));
            }
        }
        let category = |reply: &str| verdicts.get(reply).map(|v| v.0);
        let throttled = policy::site_refusals(&mut attempt, |reply| {
            category(reply).is_some_and(about_site)
        });
        let suppress: Vec<AutoSuppression> = attempt
            .failed
            .iter()
            .filter_map(|(address, _, reply)| {
                let c = category(reply).filter(|c| c.is_hard_bounce() && reply.starts_with('5'))?;
                Some(AutoSuppression {
                    address: address.to_ascii_lowercase(),
                    category: c.name().to_string(),
                    reply: reply.clone(),
                })
            })
            .collect();
        metrics::counter!(m::AUTO_SUPPRESSED).increment(suppress.len() as u64);
        let failed = attempt.failed.iter().map(|(r, _, reply)| (r, reply));
        let replies = failed
            .chain(attempt.deferred.iter().map(|(r, reply)| (r, reply)))
            .map(|(recipient, reply)| RecipientReply {
                recipient: recipient.clone(),
                reply: reply.clone(),
                rule: verdicts.get(reply).map(|v| v.1.clone()).unwrap_or_default(),
            })
            .collect();
        self.finish_with(job, token, attempt, suppress, throttled, replies)
    }

    /// Commits the outcome of `attempt` in a task of its own; the message stays in
    /// flight (the task holds its token) until the outcome is committed.
    fn finish(&self, job: &Job, token: InFlight, attempt: Attempt) -> JoinHandle<()> {
        self.finish_with(job, token, attempt, Vec::new(), false, Vec::new())
    }

    /// [`WorkerState::finish`], with the addresses to suppress and each recipient's
    /// reply; `throttled`: the
    /// deferral was the site's throttle, so the message is due again at once (the
    /// site's gate paces it) and the attempt is not counted.
    fn finish_with(
        &self,
        job: &Job,
        token: InFlight,
        attempt: Attempt,
        suppress: Vec<AutoSuppression>,
        throttled: bool,
        replies: Vec<RecipientReply>,
    ) -> JoinHandle<()> {
        let now = now_ms();
        count(&self.domain, job, &attempt, now);
        log_outcomes(job, &attempt, now);
        let ctx = policy::Context {
            hostname: &self.ctx.hostname,
            retry: &self.ctx.retry,
            node: self.ctx.me,
            now_ms: now,
        };
        let reader = &self.ctx.reader;
        let mut outcome = policy::outcome(
            job,
            attempt,
            &ctx,
            || reader.body(&job.id).ok().flatten().unwrap_or_default(),
            || ulid::Ulid::new().to_string(),
        );
        if throttled {
            outcome.next_attempt_ms = now;
        }
        let finished = Finished {
            outcome,
            suppress,
            throttled,
            replies,
        };
        tokio::spawn(commit(self.ctx.clone(), finished, token))
    }
}

/// Commits `outcome`, retrying until it is committed; then the message leaves flight
/// (`token` is dropped). Releasing it earlier would let it be taken and sent again.
/// Enqueue and outcomes are idempotent, so retrying is safe. Gives up only once the
/// OutcomeBatcher is gone for good (drained at the end of a node's drain, when nothing
/// takes the message again here): the record stays queued for the next owner.
async fn commit(ctx: Arc<DeliveryContext>, finished: Finished, token: InFlight) {
    let mut wait = Duration::from_millis(200);
    let id = finished.outcome.id.clone();
    loop {
        match batcher::submit(&ctx.outcomes, finished.clone(), COMMIT_TRY).await {
            Some(Ok(())) => break,
            _ if ctx.outcomes.get().is_none() => {
                tracing::warn!(%id, "outcome not committed: the node stopped");
                break;
            }
            result => {
                tracing::warn!(%id, result = ?result.map(|r| r.err()), "outcome not committed yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
    drop(token);
}

/// Gives back a message that could not be loaded (finished meanwhile, or unreadable)
/// after a pause, so an unreadable record is not retried in a hot loop.
fn release_later(token: InFlight) {
    tokio::spawn(async move {
        tokio::time::sleep(UNREADABLE_PAUSE).await;
        drop(token);
    });
}

/// Whether a reply of `category` is about the site rather than the recipient or the
/// message: the site's actor acts on it, and it defers even when permanent.
fn about_site(category: Category) -> bool {
    matches!(
        category,
        Category::RateLimited | Category::ConnectionLimited | Category::Blocklisted
    )
}

/// One line per recipient, for an operator who greps like Postfix's log:
/// `id to relay delay dsn status tls reply`.
fn log_outcomes(job: &Job, a: &Attempt, now: u64) {
    let relay = match (a.remote.host.as_str(), a.remote.ip.as_str()) {
        ("", "") => "none".to_string(),
        (host, "") => host.to_string(),
        (host, ip) => format!("{host}[{ip}]"),
    };
    let delay = format!(
        "{:.1}",
        now.saturating_sub(job.meta.received_at_ms) as f64 / 1000.0
    );
    let tls = if a.remote.tls.is_empty() {
        "none"
    } else {
        a.remote.tls.as_str()
    };
    let line = |to: &str, dsn: &str, status: &str, reply: &str| {
        tracing::info!(
            id = %job.id, to = %Safe(&format!("<{to}>")), relay = %Safe(&relay), delay = %delay,
            dsn = %Safe(dsn), status = %status, tls = %Safe(tls), reply = %Safe(reply), "outcome"
        );
    };
    let last = a.last_reply.as_deref().unwrap_or("");
    for to in &a.delivered {
        line(to, enhanced_code(last).unwrap_or("2.0.0"), "sent", last);
    }
    let failed = if a.expired { "expired" } else { "bounced" };
    for (to, code, reason) in &a.failed {
        line(to, code, failed, reason);
    }
    let deferred = if a.held { "held" } else { "deferred" };
    for (to, reason) in &a.deferred {
        line(
            to,
            enhanced_code(reason).unwrap_or("4.0.0"),
            deferred,
            reason,
        );
    }
    for to in &a.suppressed {
        line(
            to,
            "5.7.1",
            "suppressed",
            "recipient on the suppression list",
        );
    }
}

/// The enhanced status code (`4.4.1`) after a reply's code, if the text has one.
fn enhanced_code(text: &str) -> Option<&str> {
    let mut words = text.split_whitespace();
    let code = words.next()?;
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let enhanced = words.next()?;
    let parts: Vec<&str> = enhanced.split('.').collect();
    let valid = parts.len() == 3
        && parts[0].len() == 1
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    valid.then_some(enhanced)
}

fn count(domain: &str, job: &Job, a: &Attempt, now: u64) {
    metrics::counter!(m::DELIVERED).increment(a.delivered.len() as u64);
    metrics::counter!(m::BOUNCED).increment(a.failed.len() as u64);
    metrics::counter!(m::DEFERRED).increment(a.deferred.len() as u64);
    metrics::counter!(m::SUPPRESSED).increment(a.suppressed.len() as u64);
    for (result, n) in [
        ("delivered", a.delivered.len()),
        ("deferred", a.deferred.len()),
        ("bounced", a.failed.len()),
    ] {
        metrics::counter!(m::DOMAIN_OUTCOMES, "domain" => domain.to_string(), "result" => result)
            .increment(n as u64);
    }
    if !a.delivered.is_empty() {
        let age = now.saturating_sub(job.meta.received_at_ms) as f64 / 1000.0;
        metrics::histogram!(m::DELIVERY_LATENCY, "domain" => domain.to_string()).record(age);
    }
}

#[cfg(test)]
mod log_tests {
    use super::enhanced_code;

    #[test]
    fn enhanced_codes_are_found_after_the_reply_code() {
        assert_eq!(enhanced_code("250 2.0.0 Ok: queued"), Some("2.0.0"));
        assert_eq!(enhanced_code("451 4.4.1 no answer"), Some("4.4.1"));
        assert_eq!(enhanced_code("550 mailbox unavailable"), None);
        assert_eq!(enhanced_code("connection refused"), None);
        assert_eq!(enhanced_code(""), None);
    }
}
