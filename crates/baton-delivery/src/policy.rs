//! Delivery policy as pure functions: no sockets, no actors, no clock.
//!
//! The delivery actors in `baton-node` do the IO and call these to decide:
//!
//! 1. [`prepare`] — before a transaction: the envelope sender, which recipients to send
//!    to, and which are already decided (suppressed, unparsable, unknown because the
//!    suppression list could not be read). A stored sender that does not parse holds
//!    the message: it is never sent with another sender.
//! 2. [`from_transaction`], [`from_error`], [`expired`], [`route_failed`],
//!    [`defer_all`] — what an attempt (or a decision without one) did to each
//!    recipient: an [`Attempt`].
//! 3. [`outcome`] — the [`Outcome`] committed to the queue: the finished recipients, the
//!    next retry time, and the bounce (DSN) to the sender, if one is due.
//!
//! This is the seam reputation plugs into: every remote reply passes through
//! [`from_transaction`] or [`from_error`].

use crate::dsn::{self, FailedRecipient};
use crate::retry::RetryPolicy;
use crate::route::RouteError;
use baton_queue::types::{HELD, Remote};
use baton_queue::{DeliveryRecord, MessageMeta, Outcome};
use baton_smtp::address::{Mailbox, ReversePath};
use baton_smtp::replies;
use baton_smtp::reply::Reply;

/// One message's open delivery to one domain, as read from the queue.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub domain: String,
    pub meta: MessageMeta,
    pub record: DeliveryRecord,
}

/// What one attempt (or a decision without one) did to a job's recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attempt {
    pub delivered: Vec<String>,
    /// (recipient, enhanced status, reason)
    pub failed: Vec<(String, String, String)>,
    /// (recipient, reason)
    pub deferred: Vec<(String, String)>,
    pub suppressed: Vec<String>,
    pub last_reply: Option<String>,
    pub remote: Remote,
    /// The failure is the message's age.
    pub expired: bool,
    /// The message must not be retried until an operator says so.
    pub held: bool,
}

impl Attempt {
    /// Adds what `other` decided (recipients of a transaction to those decided before
    /// it); `other`'s reply and remote win.
    fn merge(mut self, other: Attempt) -> Attempt {
        self.delivered.extend(other.delivered);
        self.failed.extend(other.failed);
        self.deferred.extend(other.deferred);
        self.suppressed.extend(other.suppressed);
        if other.last_reply.is_some() {
            self.last_reply = other.last_reply;
        }
        if other.remote != Remote::default() {
            self.remote = other.remote;
        }
        self.expired |= other.expired;
        self.held |= other.held;
        self
    }
}

/// A job ready for a transaction.
#[derive(Debug, Clone)]
pub struct Plan {
    pub from: ReversePath,
    /// The recipients to send to, as stored and parsed.
    pub send: Vec<(String, Mailbox)>,
    /// The recipients decided without a transaction.
    pub decided: Attempt,
}

/// What [`prepare`] found.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// Send to `plan.send`.
    Send(Plan),
    /// Nothing to send: every recipient is decided (or the message is held).
    Decided(Attempt),
}

/// Decides the envelope of `job`. `suppressed` looks a recipient up in the suppression
/// list; when it fails, that recipient is deferred, never sent to.
pub fn prepare<E: std::fmt::Display>(
    job: &Job,
    suppressed: impl Fn(&str) -> Result<bool, E>,
) -> Prepared {
    let from = if job.meta.sender.is_empty() {
        ReversePath::Null
    } else {
        match Mailbox::parse(&job.meta.sender) {
            Ok(m) => ReversePath::Mailbox(m),
            Err(_) => {
                // A bounce to the null sender would vanish, and a message sent with it
                // could not bounce: keep it where an operator can see it.
                let reply = replies::sender_unparsable(&job.meta.sender).to_string();
                return Prepared::Decided(Attempt {
                    held: true,
                    ..defer_all(job, &reply, Remote::default())
                });
            }
        }
    };
    let mut decided = Attempt::default();
    let mut send = Vec::new();
    for r in &job.record.recipients {
        match suppressed(r) {
            Ok(true) => {
                decided.suppressed.push(r.clone());
                decided.last_reply = Some(replies::recipient_suppressed().text());
                continue;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(id = %job.id, recipient = ?r, error = %e, "cannot read the suppression list; recipient deferred");
                let reason = replies::suppression_unreadable().to_string();
                decided.deferred.push((r.clone(), reason.clone()));
                decided.last_reply = Some(reason);
                continue;
            }
        }
        match Mailbox::parse(r) {
            Ok(m) => send.push((r.clone(), m)),
            Err(e) => {
                let reply = replies::bad_recipient(e);
                decided
                    .failed
                    .push((r.clone(), status_of(&reply, "5.1.3"), reply.text()));
                decided.last_reply = Some(reply.text());
            }
        }
    }
    if send.is_empty() {
        Prepared::Decided(decided)
    } else {
        Prepared::Send(Plan {
            from,
            send,
            decided,
        })
    }
}

/// What a transaction's replies mean for each recipient sent to: a recipient refused
/// at RCPT has its RCPT reply, an accepted one the reply to the final dot.
pub fn from_transaction(
    plan: Plan,
    rcpt_replies: &[Reply],
    data_reply: Option<&Reply>,
    remote: Remote,
) -> Attempt {
    let mut a = Attempt {
        remote,
        ..Attempt::default()
    };
    for (i, (addr, _)) in plan.send.iter().enumerate() {
        let verdict = match (rcpt_replies.get(i), data_reply) {
            (Some(r), _) if !r.is_positive() => r,
            (Some(_), Some(d)) => d,
            (Some(r), None) => r,
            (None, Some(d)) => d,
            (None, None) => {
                a.deferred
                    .push((addr.clone(), replies::no_rcpt_reply().to_string()));
                continue;
            }
        };
        let text = verdict.to_string().trim().to_string();
        if verdict.is_completion() {
            a.delivered.push(addr.clone());
        } else if verdict.is_permanent() {
            a.failed
                .push((addr.clone(), status_of(verdict, "5.0.0"), text));
        } else {
            a.deferred.push((addr.clone(), text));
        }
    }
    a.last_reply = data_reply
        .or(rcpt_replies.last())
        .map(|r| r.to_string().trim().to_string());
    plan.decided.merge(a)
}

/// Moves the refusals `about_site` says are about the site (a rate limit, a block)
/// from failed to deferred: the recipient is not at fault, so even a 5xx is retried
/// once the site allows. Returns whether the attempt deferred anything and every
/// deferral was such a refusal (then it was the site's throttle, not an attempt).
pub fn site_refusals(a: &mut Attempt, about_site: impl Fn(&str) -> bool) -> bool {
    let (site, failed): (Vec<_>, Vec<_>) = std::mem::take(&mut a.failed)
        .into_iter()
        .partition(|(_, _, reply)| about_site(reply));
    a.failed = failed;
    a.deferred
        .extend(site.into_iter().map(|(r, _, reply)| (r, reply)));
    !a.deferred.is_empty() && a.deferred.iter().all(|(_, reply)| about_site(reply))
}

/// A transaction that failed before the remote answered for the message (a lost
/// connection, a refused TLS): every recipient sent to is deferred.
pub fn from_error(plan: Plan, reason: &str, remote: Remote) -> Attempt {
    let a = Attempt {
        deferred: plan
            .send
            .iter()
            .map(|(r, _)| (r.clone(), reason.to_string()))
            .collect(),
        last_reply: Some(reason.to_string()),
        remote,
        ..Attempt::default()
    };
    plan.decided.merge(a)
}

/// Whether `job` is older than the policy allows at `now_ms`; then every recipient
/// fails as expired.
pub fn expired(job: &Job, retry: &RetryPolicy, now_ms: u64) -> Option<Attempt> {
    if !retry.expired(job.meta.received_at_ms, now_ms) {
        return None;
    }
    let reply = replies::expired(job.record.attempts, job.record.last_reply.as_deref());
    let status = status_of(&reply, "4.4.7");
    let reason = reply.text();
    Some(Attempt {
        failed: job
            .record
            .recipients
            .iter()
            .map(|r| (r.clone(), status.clone(), reason.clone()))
            .collect(),
        last_reply: Some(reason),
        expired: true,
        ..Attempt::default()
    })
}

/// No route to the domain: a permanent answer fails every recipient, a temporary one
/// defers them.
pub fn route_failed(job: &Job, e: &RouteError) -> Attempt {
    if !e.is_permanent() {
        return defer_all(job, &e.to_string(), Remote::default());
    }
    Attempt {
        failed: job
            .record
            .recipients
            .iter()
            .map(|r| (r.clone(), e.status().to_string(), e.to_string()))
            .collect(),
        last_reply: Some(e.to_string()),
        ..Attempt::default()
    }
}

/// Defers every recipient of `job`; `remote` is who refused, if anyone did.
pub fn defer_all(job: &Job, reason: &str, remote: Remote) -> Attempt {
    Attempt {
        deferred: job
            .record
            .recipients
            .iter()
            .map(|r| (r.clone(), reason.to_string()))
            .collect(),
        last_reply: Some(reason.to_string()),
        remote,
        ..Attempt::default()
    }
}

/// Who makes outcomes, and when.
pub struct Context<'a> {
    /// `smtp.hostname`: the Reporting-MTA of bounces.
    pub hostname: &'a str,
    pub retry: &'a RetryPolicy,
    /// The node making the attempt.
    pub node: u64,
    pub now_ms: u64,
}

/// The outcome to commit for `attempt` on `job`. `original` gives the message (its
/// header section goes into a bounce); it is called only when a bounce is due, and
/// `token` names that bounce (its queue id).
pub fn outcome(
    job: &Job,
    attempt: Attempt,
    ctx: &Context<'_>,
    original: impl FnOnce() -> Vec<u8>,
    token: impl FnOnce() -> String,
) -> Outcome {
    let remote_mta = (!attempt.remote.host.is_empty()).then(|| attempt.remote.host.clone());
    let dsn = (!attempt.failed.is_empty() && !job.meta.sender.is_empty()).then(|| {
        let failed: Vec<FailedRecipient> = attempt
            .failed
            .iter()
            .map(|(address, status, diagnostic)| FailedRecipient {
                address: address.clone(),
                status: status.clone(),
                remote_mta: remote_mta.clone(),
                diagnostic: diagnostic.clone(),
            })
            .collect();
        dsn::bounce(
            ctx.hostname,
            &job.id,
            &job.meta,
            &failed,
            &original(),
            ctx.now_ms,
            token(),
        )
    });
    let next_attempt_ms = if attempt.held {
        HELD
    } else {
        let wait = ctx.retry.delay(job.record.attempts + 1).as_millis() as u64;
        ctx.now_ms.saturating_add(wait)
    };
    let mut finished = attempt.delivered;
    finished.extend(attempt.failed.iter().map(|(r, _, _)| r.clone()));
    finished.extend(attempt.suppressed.iter().cloned());
    Outcome {
        id: job.id.clone(),
        domain: job.domain.clone(),
        finished,
        next_attempt_ms,
        last_reply: attempt.last_reply,
        dsn,
        failed: attempt.failed.into_iter().map(|(r, _, _)| r).collect(),
        suppressed: attempt.suppressed,
        expired: attempt.expired,
        remote: attempt.remote,
        node: ctx.node,
    }
}

/// The enhanced status of a reply, or `default`.
fn status_of(reply: &Reply, default: &str) -> String {
    reply
        .enhanced
        .as_ref()
        .map(|e| e.to_string())
        .unwrap_or_else(|| default.to_string())
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
