//! Mail to the bounce domain: Baton is its MX. Any client may send to `b-TOKEN@domain`
//! (a valid token of a tracked message) and to `bounces.fbl_address`, without AUTH; the
//! engine keeps such recipients in transactions of their own, at most
//! [`MAX_REPORT_SIZE`]. Such mail is never queued: at the end of its data it is parsed
//! and becomes one `Feedback` command, answered 250 once committed.
//!
//! - A delivery status notification (RFC 3464): each `failed` recipient is classified
//!   like a synchronous reply; a hard bounce suppresses the address for everyone and
//!   counts on the message's tenant (`bounced_async`).
//! - An ARF report (RFC 5965) to the FBL address, type abuse or fraud: a complaint, the
//!   address suppressed for the tenant (`complaint`).
//!
//! Anything else (not a report, an unknown message, a recipient the message did not
//! have) is logged and counted in `baton_feedback_reports_total`, and answered 250.

use crate::delivery::DeliveryContext;
use crate::feedback::BounceSetup;
use crate::logfmt::Safe;
use crate::metrics as m;
use baton_cluster::Writer;
use baton_feedback::token::{self, Token};
use baton_feedback::{arf, dsn, returned_tokens};
use baton_queue::clock::now_ms;
use baton_queue::types::{FeedbackKind, FeedbackReport, NodeId, Request, Tracked};
use baton_reputation::tenant::Thresholds;
use baton_smtp::address::Mailbox;
use baton_smtp::replies;
use baton_smtp::reply::Reply;
use baton_smtp::server::Envelope;
use std::net::SocketAddr;
use std::sync::Arc;

/// The largest report accepted (bytes).
pub const MAX_REPORT_SIZE: u64 = 1024 * 1024;

/// What receiving reports needs.
pub struct Inbound {
    pub setup: Arc<BounceSetup>,
    writer: Writer,
    /// For the classifier (reloaded on SIGHUP).
    delivery: Arc<DeliveryContext>,
    thresholds: Thresholds,
    node: NodeId,
}

/// `550 5.1.1 <addr>: unknown bounce address`.
fn unknown(address: &str) -> Reply {
    Reply::new(550, "5.1.1", format!("<{address}>: unknown bounce address"))
}

fn count(kind: &'static str, result: &'static str) {
    metrics::counter!(m::FEEDBACK_REPORTS, "kind" => kind, "result" => result).increment(1);
}

impl Inbound {
    pub fn new(
        setup: Arc<BounceSetup>,
        writer: Writer,
        delivery: Arc<DeliveryContext>,
        thresholds: Thresholds,
        node: NodeId,
    ) -> Arc<Inbound> {
        Arc::new(Inbound {
            setup,
            writer,
            delivery,
            thresholds,
            node,
        })
    }

    /// Whether `to` is at the bounce domain.
    pub fn is_local(&self, to: &Mailbox) -> bool {
        to.domain.eq_ignore_ascii_case(&self.setup.domain)
    }

    fn is_fbl(&self, to: &Mailbox) -> bool {
        !self.setup.fbl_address.is_empty()
            && to.to_string().eq_ignore_ascii_case(&self.setup.fbl_address)
    }

    /// The token of a bounce address, verified, with its message's retained record.
    fn resolve(&self, token_text: &str) -> Option<(Token, Tracked)> {
        let token = Token::verify(self.setup.key()?, token_text)?;
        let record = self.setup_reader_tracked(&token)?;
        Some((token, record))
    }

    fn setup_reader_tracked(&self, token: &Token) -> Option<Tracked> {
        match self.delivery.reader.tracked(&token.id.to_string()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a tracked message");
                None
            }
        }
    }

    /// RCPT to the bounce domain: the FBL address, or `b-TOKEN` with a valid token of a
    /// message still tracked; anything else is `550 5.1.1`.
    pub fn check_rcpt(&self, to: &Mailbox) -> Result<(), Reply> {
        if self.is_fbl(to) {
            return Ok(());
        }
        let address = to.to_string();
        match token::local_token(&to.local).and_then(|t| self.resolve(t)) {
            Some(_) => Ok(()),
            None => {
                count("rcpt", "unknown");
                tracing::info!(rcpt = %Safe(&address), "RCPT to the bounce domain refused: unknown bounce address");
                Err(unknown(&address))
            }
        }
    }

    /// A message to the bounce domain at the end of its data: its reports committed, or
    /// the reply that refuses it. Never queued.
    pub async fn receive(&self, envelope: Envelope, client: SocketAddr) -> Result<String, Reply> {
        let id = ulid::Ulid::new().to_string();
        let fbl = envelope.rcpts.iter().any(|r| self.is_fbl(r));
        let reports = if fbl {
            self.complaint(&envelope.body)
        } else {
            let tokens: Vec<&str> = envelope
                .rcpts
                .iter()
                .filter_map(|r| token::local_token(&r.local))
                .collect();
            self.bounces(&tokens, &envelope.body)
        };
        let kind = if fbl { "arf" } else { "dsn" };
        let n = reports.len();
        tracing::info!(report = %id, kind, reports = n, client = %client, size = envelope.body.len(), "report received");
        if reports.is_empty() {
            return Ok(id);
        }
        let request = Request::Feedback {
            now_ms: now_ms(),
            thresholds: self.thresholds.clone(),
            reports,
        };
        match self.writer.write(request).await {
            Ok(_) => Ok(id),
            Err(e) => {
                count(kind, "failed");
                tracing::warn!(error = %e, report = %id, "report not committed");
                Err(replies::queue_unavailable())
            }
        }
    }

    /// A DSN to `tokens`' bounce addresses: one report per failed recipient.
    fn bounces(&self, tokens: &[&str], body: &[u8]) -> Vec<FeedbackReport> {
        let parsed = match dsn::parse(body) {
            Ok(r) => r,
            Err(why) => {
                count("dsn", "unparsed");
                tracing::info!(why = %why, "mail to a bounce address is not a delivery status notification: nothing suppressed");
                return Vec::new();
            }
        };
        let classifier = self.delivery.classifier();
        let mut out: Vec<FeedbackReport> = Vec::new();
        for token_text in tokens {
            let Some((token, record)) = self.resolve(token_text) else {
                count("dsn", "unknown");
                continue;
            };
            for status in &parsed.recipients {
                match status.action {
                    dsn::Action::Failed => {}
                    dsn::Action::Delayed => {
                        count("dsn", "delayed");
                        continue;
                    }
                    _ => {
                        count("dsn", "ignored");
                        continue;
                    }
                }
                let Some(recipient) = recipient_of(&token, &record, status.recipient()) else {
                    count("dsn", "mismatch");
                    tracing::info!(id = %token.id, reported = %Safe(status.recipient().unwrap_or("")), "late bounce for a recipient the message did not have: nothing suppressed");
                    continue;
                };
                if out
                    .iter()
                    .any(|r| r.recipient.eq_ignore_ascii_case(&recipient))
                {
                    continue;
                }
                let verdict = classifier.classify(&status.reply());
                let hard = verdict.category.is_hard_bounce();
                count("dsn", if hard { "bounced" } else { "soft" });
                out.push(FeedbackReport {
                    kind: FeedbackKind::Bounce,
                    id: token.id.to_string(),
                    recipient,
                    reply: verdict.reply.clone(),
                    rule: verdict.rule.clone(),
                    category: verdict.category.name().to_string(),
                    hard,
                    node: self.node,
                });
            }
        }
        out
    }

    /// An ARF report to the FBL address: one complaint, or nothing.
    fn complaint(&self, body: &[u8]) -> Vec<FeedbackReport> {
        let Some(report) = arf::parse(body) else {
            count("arf", "unparsed");
            tracing::info!("mail to the FBL address is not an ARF report: ignored");
            return Vec::new();
        };
        if !report.is_complaint() {
            count("arf", "ignored");
            tracing::info!(feedback_type = %Safe(&report.feedback_type), "feedback report that is not a complaint: ignored");
            return Vec::new();
        }
        // The message: X-Baton-Ref, else the Return-Path's token, else the original
        // MAIL FROM's (each verified).
        let (reference, return_path) = report
            .returned_headers
            .as_deref()
            .map(returned_tokens)
            .unwrap_or_default();
        let mail_from = report.original_mail_from.as_deref().and_then(|a| {
            let (local, _) = a.rsplit_once('@')?;
            token::local_token(local).map(str::to_string)
        });
        let found = [reference, return_path, mail_from]
            .into_iter()
            .flatten()
            .find_map(|t| self.resolve(&t));
        let Some((token, record)) = found else {
            count("arf", "unknown");
            tracing::info!("complaint without a valid reference to a tracked message: ignored");
            return Vec::new();
        };
        let Some(recipient) = recipient_of(&token, &record, report.original_rcpt_to.as_deref())
        else {
            count("arf", "mismatch");
            tracing::info!(id = %token.id, "complaint names no recipient of the message: nothing suppressed");
            return Vec::new();
        };
        count("arf", "complaint");
        let agent = report.user_agent.as_deref().unwrap_or("unknown agent");
        vec![FeedbackReport {
            kind: FeedbackKind::Complaint,
            id: token.id.to_string(),
            recipient,
            reply: format!("ARF {} report ({agent})", report.feedback_type),
            rule: "arf".into(),
            category: String::new(),
            hard: false,
            node: self.node,
        }]
    }
}

/// The recipient a report is about: the token's, when it names one (a reported address
/// that differs is a forwarding, and the token is what Baton signed); else the reported
/// address if the message had it; else the message's only recipient.
fn recipient_of(token: &Token, record: &Tracked, reported: Option<&str>) -> Option<String> {
    if let Some(i) = token.recipient() {
        return record.recipients.get(i).cloned();
    }
    if let Some(r) = reported {
        return record
            .recipients
            .iter()
            .find(|a| a.eq_ignore_ascii_case(r))
            .cloned();
    }
    match record.recipients.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(index: u16) -> Token {
        Token::for_message("01ARZ3NDEKTSV4RRFFQ69G5FAV", index).unwrap()
    }

    #[test]
    fn the_recipient_of_a_report() {
        let record = Tracked {
            tenant: "t1".into(),
            sender: "s@x.test".into(),
            recipients: vec!["a@d.test".into(), "b@d.test".into()],
            at_ms: 0,
        };
        assert_eq!(
            recipient_of(&token(1), &record, None).as_deref(),
            Some("b@d.test")
        );
        assert_eq!(
            recipient_of(&token(1), &record, Some("a@d.test")).as_deref(),
            Some("b@d.test")
        );
        assert_eq!(recipient_of(&token(7), &record, None), None);
        let whole = token(token::WHOLE_MESSAGE);
        assert_eq!(
            recipient_of(&whole, &record, Some("A@d.test")).as_deref(),
            Some("a@d.test")
        );
        assert_eq!(recipient_of(&whole, &record, Some("c@d.test")), None);
        assert_eq!(recipient_of(&whole, &record, None), None);
        let one = Tracked {
            recipients: vec!["a@d.test".into()],
            ..record
        };
        assert_eq!(
            recipient_of(&whole, &one, None).as_deref(),
            Some("a@d.test")
        );
    }
}
