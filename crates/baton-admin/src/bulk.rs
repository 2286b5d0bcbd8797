//! `RetryQueue` and `DeleteQueue`: an operator's retry or delete of every message queued
//! for a domain, or of every queued message (`batonctl queue retry|delete`).
//!
//! The messages are those queued when the call began (ids up to the last one then), read
//! a batch at a time from the applied state and changed by one `RetryMany` or
//! `DeleteMany` log entry per batch: as many `Retry`/`Delete` commands, applied the same
//! way, so a batch is all or nothing and a batch written twice (a retried write) changes
//! nothing the second time and sends no second DSN. Memory stays bounded by a batch
//! whatever the size of the queue.

use crate::convert::{internal, valid_domain, write_status};
use crate::pb::QueueChangeReply;
use crate::server::AdminContext;
use baton_delivery::dsn;
use baton_queue::state_machine::QueueReader;
use baton_queue::types::{Deletion, Request};
use baton_queue::{MessageMeta, NewMessage, domain_of};
use baton_smtp::replies;
use tonic::Status;

/// Messages per log entry.
const BATCH: usize = 500;
/// DSN bytes per log entry, at most (a larger DSN is written alone).
const BATCH_DSN_BYTES: usize = 4 << 20;

/// Which messages a call acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Those with an open delivery to this domain, and only that delivery.
    Domain(String),
    /// Every queued message, every open delivery of it.
    All,
}

impl Selection {
    pub(crate) fn new(domain: &str, all: bool) -> Result<Selection, Status> {
        match (domain.trim().is_empty(), all) {
            (true, true) => Ok(Selection::All),
            (false, false) => Ok(Selection::Domain(valid_domain(domain)?)),
            (false, true) => Err(Status::invalid_argument(
                "give either a domain or all, not both",
            )),
            (true, false) => Err(Status::invalid_argument(
                "give a domain, or all for every queued message",
            )),
        }
    }

    fn domain(&self) -> Option<String> {
        match self {
            Selection::Domain(d) => Some(d.clone()),
            Selection::All => None,
        }
    }

    /// The last id queued now: the end of what this call acts on.
    fn last_id(&self, reader: &QueueReader) -> Result<Option<String>, Status> {
        let last = match self {
            Selection::Domain(d) => reader.deliveries(d, "").next_back().map(|p| p.map(|x| x.0)),
            Selection::All => reader.message_ids("").next_back(),
        };
        last.transpose().map_err(internal)
    }

    /// The next at most `n` ids after `after`, up to `last`.
    fn next_ids(
        &self,
        reader: &QueueReader,
        after: &str,
        last: &str,
        n: usize,
    ) -> Result<Vec<String>, Status> {
        let ids: Box<dyn Iterator<Item = Result<String, _>>> = match self {
            Selection::Domain(d) => Box::new(reader.deliveries(d, after).map(|p| p.map(|x| x.0))),
            Selection::All => Box::new(reader.message_ids(after)),
        };
        let mut out = Vec::new();
        for id in ids.take(n) {
            let id = id.map_err(internal)?;
            if id.as_str() > last {
                break;
            }
            out.push(id);
        }
        Ok(out)
    }
}

/// A call that failed part of the way, for the operator: how far it got.
fn stopped(done: u64, what: &str, status: Status) -> Status {
    if done == 0 {
        return status;
    }
    Status::new(
        status.code(),
        format!(
            "{done} message(s) {what} before this: {}; run the command again for the rest",
            status.message()
        ),
    )
}

/// `RetryQueue`: `RetryMany` over the selection, a batch at a time.
pub(crate) async fn retry(
    ctx: &AdminContext,
    which: Selection,
) -> Result<QueueChangeReply, Status> {
    let reader = &ctx.queue.reader;
    let mut reply = QueueChangeReply::default();
    let Some(last) = which.last_id(reader)? else {
        return Ok(reply);
    };
    let mut after = String::new();
    loop {
        let ids = which
            .next_ids(reader, &after, &last, BATCH)
            .map_err(|e| stopped(reply.messages, "retried", e))?;
        let Some(end) = ids.last().cloned() else {
            return Ok(reply);
        };
        let request = Request::RetryMany {
            domain: which.domain(),
            ids,
        };
        let response = ctx
            .writer
            .write_applied(request)
            .await
            .map_err(|e| stopped(reply.messages, "retried", write_status(e)))?;
        reply.messages += u64::from(response.added);
        reply.index = response.index;
        after = end;
    }
}

/// `DeleteQueue`: `DeleteMany` over the selection, a batch at a time, with a DSN for
/// each message when `with_dsn`.
pub(crate) async fn delete(
    ctx: &AdminContext,
    which: Selection,
    with_dsn: bool,
) -> Result<QueueChangeReply, Status> {
    let reader = &ctx.queue.reader;
    let mut reply = QueueChangeReply::default();
    let Some(last) = which.last_id(reader)? else {
        return Ok(reply);
    };
    let only = which.domain();
    let mut after = String::new();
    loop {
        let ids = which
            .next_ids(reader, &after, &last, BATCH)
            .map_err(|e| stopped(reply.messages, "deleted", e))?;
        let Some(end) = ids.last().cloned() else {
            return Ok(reply);
        };
        let now = baton_queue::clock::now_ms();
        let mut batch: Vec<Deletion> = Vec::new();
        let mut dsn_bytes = 0;
        for id in ids {
            let dsn = if with_dsn {
                operator_dsn(ctx, &id, only.as_deref(), now)
                    .map_err(|e| stopped(reply.messages, "deleted", e))?
            } else {
                None
            };
            let size = dsn.as_ref().map_or(0, |d| d.body.len());
            if !batch.is_empty() && dsn_bytes + size > BATCH_DSN_BYTES {
                write_deletions(ctx, &only, now, std::mem::take(&mut batch), &mut reply).await?;
                dsn_bytes = 0;
            }
            dsn_bytes += size;
            batch.push(Deletion { id, dsn });
        }
        write_deletions(ctx, &only, now, batch, &mut reply).await?;
        after = end;
    }
}

async fn write_deletions(
    ctx: &AdminContext,
    only: &Option<String>,
    now_ms: u64,
    messages: Vec<Deletion>,
    reply: &mut QueueChangeReply,
) -> Result<(), Status> {
    if messages.is_empty() {
        return Ok(());
    }
    let request = Request::DeleteMany {
        domain: only.clone(),
        now_ms,
        messages,
    };
    let response = ctx
        .writer
        .write_applied(request)
        .await
        .map_err(|e| stopped(reply.messages, "deleted", write_status(e)))?;
    reply.messages += u64::from(response.added);
    reply.index = response.index;
    Ok(())
}

/// The DSN an operator's delete of message `id` (its delivery to `only`, or all of it)
/// sends its sender: every recipient still open there failed, "deleted by an operator".
/// None for a null sender, or a message no longer queued (there).
pub(crate) fn operator_dsn(
    ctx: &AdminContext,
    id: &str,
    only: Option<&str>,
    now_ms: u64,
) -> Result<Option<NewMessage>, Status> {
    let reader = &ctx.queue.reader;
    let Some(meta) = reader.message(id).map_err(internal)? else {
        return Ok(None);
    };
    if meta.sender.is_empty() {
        return Ok(None);
    }
    let open = open_recipients(reader, id, &meta, only)?;
    if open.is_empty() {
        return Ok(None);
    }
    let original = reader.body(id).map_err(internal)?.unwrap_or_default();
    let why = replies::deleted_by_operator();
    let failed: Vec<dsn::FailedRecipient> = open
        .into_iter()
        .map(|address| dsn::FailedRecipient {
            address,
            status: why.enhanced.map(|e| e.to_string()).unwrap_or_default(),
            remote_mta: None,
            diagnostic: why.text(),
        })
        .collect();
    let token = ulid::Ulid::new().to_string();
    Ok(Some(dsn::bounce(
        &ctx.hostname,
        id,
        &meta,
        &failed,
        &original,
        now_ms,
        token,
    )))
}

/// The recipients of message `id` whose delivery (to `only`, or to any domain) is open.
fn open_recipients(
    reader: &QueueReader,
    id: &str,
    meta: &MessageMeta,
    only: Option<&str>,
) -> Result<Vec<String>, Status> {
    let mut domains: Vec<String> = meta.recipients.iter().map(|r| domain_of(r)).collect();
    domains.retain(|d| only.is_none_or(|o| o == d));
    domains.sort();
    domains.dedup();
    let mut open = Vec::new();
    for d in domains {
        if let Some(r) = reader.delivery(&d, id).map_err(internal)? {
            open.extend(r.recipients);
        }
    }
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::{Selection, stopped};
    use tonic::Status;

    #[test]
    fn a_failure_part_of_the_way_says_how_far_it_got() {
        let s = stopped(0, "deleted", Status::unavailable("no leader"));
        assert_eq!(s.message(), "no leader");
        let s = stopped(1000, "deleted", Status::unavailable("no leader"));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(
            s.message(),
            "1000 message(s) deleted before this: no leader; run the command again for the rest"
        );
    }

    #[test]
    fn a_selection_is_a_domain_or_all_never_both_or_neither() {
        assert_eq!(
            Selection::new("Example.COM.", false).ok(),
            Some(Selection::Domain("example.com".into()))
        );
        assert_eq!(Selection::new("", true).ok(), Some(Selection::All));
        for (domain, all) in [
            ("", false),
            (" ", false),
            ("example.com", true),
            ("a@b", false),
        ] {
            let e = Selection::new(domain, all).err();
            assert_eq!(
                e.as_ref().map(|e| e.code()),
                Some(tonic::Code::InvalidArgument),
                "{domain:?} {all}"
            );
        }
    }
}
