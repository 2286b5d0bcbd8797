//! Command handlers: EHLO/HELO, MAIL, RCPT, DATA, BDAT and the simple verbs.

use super::{Action, Envelope, Refusal, ServerSession, State, Txn, Wait};
use crate::address::{Mailbox, ReversePath};
use crate::command::{self, BodyType, Command, MailParams};
use crate::data::{BdatDecoder, DataDecoder, DataError, LineCheck};
use crate::header::{self, FromError};
use crate::replies;
use crate::reply::Reply;

/// NOOP, RSET, VRFY and HELP a session may send before each counts as an error.
pub const JUNK_LIMIT: usize = 100;

impl ServerSession {
    /// Handle one command line.
    pub(super) fn command(&mut self, line: &[u8]) {
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(r) => return self.error(r),
        };
        match cmd {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, .. } => self.rcpt(to),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.txn = None;
                self.junk(replies::ok());
            }
            Command::Noop => self.junk(replies::ok()),
            Command::Vrfy(_) => self.junk(replies::vrfy()),
            Command::Help(_) => self.junk(replies::help()),
            Command::Quit => {
                self.reply(replies::bye());
                self.close();
            }
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial),
        }
    }

    /// NOOP, RSET, VRFY, HELP: past [`JUNK_LIMIT`] in a session each counts as an
    /// error, so they cannot keep a connection open for ever (Postfix's
    /// `smtpd_junk_command_limit`).
    fn junk(&mut self, r: Reply) {
        self.junk += 1;
        if self.junk > JUNK_LIMIT {
            self.error(r)
        } else {
            self.reply(r)
        }
    }

    fn ehlo(&mut self, name: String, esmtp: bool) {
        self.txn = None;
        self.helo = Some(name);
        self.esmtp = esmtp;
        let host = self.cfg.hostname.clone();
        if !esmtp {
            return self.reply(replies::ehlo(vec![host]));
        }
        let mut lines = vec![
            host,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.cfg.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
        ];
        if self.cfg.tls_available && !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        self.reply(replies::ehlo(lines));
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) {
        if self.helo.is_none() {
            return self.error(replies::need_helo());
        }
        if self.txn.is_some() {
            return self.error(replies::nested_mail());
        }
        if self.cfg.require_auth && self.auth_user.is_none() {
            return self.reply(replies::auth_required());
        }
        if params.size.is_some_and(|s| s > self.cfg.max_message_size) {
            return self.reply(replies::size_exceeded());
        }
        if params.body == Some(BodyType::BinaryMime) {
            return self.error(replies::binarymime());
        }
        if from.needs_smtputf8() && !params.smtputf8 {
            return self.reply(replies::need_smtputf8());
        }
        if !self.allowed_from.is_empty()
            && let Some(sender) = from.mailbox()
            && !header::domain_allowed(&sender.domain, &self.allowed_from)
        {
            let reply = replies::sender_not_allowed(&sender.domain);
            self.refused(from.to_string(), 0, 0, reply.clone());
            return self.error(reply);
        }
        if self.cfg.check_senders {
            self.out.push(Action::CheckMail { from: from.clone() });
            self.wait = Wait::Mail(from, params);
            return;
        }
        self.begin_txn(from, params);
    }

    /// A sender accepted: the transaction starts.
    pub(super) fn begin_txn(&mut self, from: ReversePath, params: MailParams) {
        self.txn = Some(Txn {
            from,
            params,
            rcpts: Vec::new(),
            over_limit: 0,
            body: Vec::new(),
            bdat: false,
            check: LineCheck::default(),
        });
        self.reply(replies::mail_ok());
    }

    /// Whether `to` is at [`ServerConfig::local_domain`].
    fn is_local(&self, to: &Mailbox) -> bool {
        !self.cfg.local_domain.is_empty() && to.domain.eq_ignore_ascii_case(&self.cfg.local_domain)
    }

    fn local_limit(&self) -> u64 {
        self.cfg
            .local_max_message_size
            .min(self.cfg.max_message_size)
    }

    /// The largest body the current transaction may have.
    fn size_limit(&self) -> u64 {
        match self.txn.as_ref().and_then(|t| t.rcpts.first()) {
            Some(r) if self.is_local(r) => self.local_limit(),
            _ => self.cfg.max_message_size,
        }
    }

    fn rcpt(&mut self, mut to: Mailbox) {
        let Some(txn) = self.txn.as_ref() else {
            return self.error(replies::need_mail());
        };
        if txn.bdat {
            return self.error(replies::rcpt_after_bdat());
        }
        if txn.rcpts.len() >= self.cfg.max_recipients {
            // Like Postfix's recipient overshoot: a client that ignores the limit for
            // as many recipients again is probing, and each further one is an error.
            let over = txn.over_limit + 1;
            if let Some(t) = self.txn.as_mut() {
                t.over_limit = over;
            }
            return if over > self.cfg.max_recipients {
                self.error(replies::too_many_rcpts())
            } else {
                self.reply(replies::too_many_rcpts())
            };
        }
        if to.needs_smtputf8() && !txn.params.smtputf8 {
            return self.reply(replies::need_smtputf8());
        }
        let local = self.is_local(&to);
        if to.domain.is_empty() {
            // <postmaster> must always be accepted (RFC 5321 §4.5.1).
            to.domain = self.cfg.hostname.clone();
        } else if !local && !self.cfg.relay_allowed && self.auth_user.is_none() {
            return self.error(replies::relay_denied());
        }
        if txn.rcpts.first().is_some_and(|r| self.is_local(r) != local) {
            return self.reply(replies::local_mixed(&self.cfg.local_domain));
        }
        if txn.rcpts.iter().any(|r| r.same_as(&to)) {
            return self.reply(replies::rcpt_ok());
        }
        if self.cfg.check_recipients {
            self.out.push(Action::CheckRcpt {
                from: txn.from.clone(),
                to: to.clone(),
            });
            self.wait = Wait::Rcpt(to);
        } else {
            if let Some(t) = self.txn.as_mut() {
                t.rcpts.push(to);
            }
            self.reply(replies::rcpt_ok());
        }
    }

    fn data(&mut self) {
        let Some(txn) = self.txn.as_ref() else {
            return self.error(replies::need_mail());
        };
        if txn.bdat {
            return self.error(replies::bdat_data_mixed());
        }
        if txn.rcpts.is_empty() {
            return self.reply(replies::no_rcpts());
        }
        self.state = State::Data(DataDecoder::new(self.size_limit()));
        self.reply(replies::start_data());
    }

    fn bdat(&mut self, size: u64, last: bool) {
        let limit = self.size_limit();
        let (dec, reject) = match self.txn.as_mut() {
            None => (BdatDecoder::discard(size), Some(replies::need_mail())),
            Some(t) if t.rcpts.is_empty() => {
                (BdatDecoder::discard(size), Some(replies::no_rcpts()))
            }
            Some(t) => {
                t.bdat = true;
                let room = limit.saturating_sub(t.body.len() as u64);
                (BdatDecoder::new(size, room), None)
            }
        };
        self.state = State::Bdat {
            dec,
            size,
            last,
            reject,
        };
        if size == 0 {
            self.bdat_chunk_done();
        }
    }

    /// A BDAT chunk was read completely.
    pub(super) fn bdat_chunk_done(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Command);
        let State::Bdat {
            dec,
            size,
            last,
            reject,
        } = state
        else {
            return;
        };
        if let Some(r) = reject {
            return self.reply(r);
        }
        match dec.result() {
            Err(e) => self.end_of_message(Err(e)),
            Ok(()) if last => {
                let check = self.txn.as_ref().map_or(Ok(()), |t| t.check.result());
                self.end_of_message(check)
            }
            Ok(()) => self.reply(replies::bdat_ok(size)),
        }
    }

    /// The body is complete: reject it, or hand it over for enqueueing.
    pub(super) fn end_of_message(&mut self, result: Result<(), DataError>) {
        let Some(txn) = self.txn.take() else {
            return self.reply(replies::need_mail());
        };
        let refusal = match result {
            Err(e) => Some(replies::data_error(e)),
            Ok(()) if !self.allowed_from.is_empty() => self.check_from_header(&txn.body),
            Ok(()) => None,
        };
        if let Some(reply) = refusal {
            let size = txn.body.len() as u64;
            self.refused(txn.from.to_string(), txn.rcpts.len(), size, reply.clone());
            return self.reply(reply);
        }
        let env = Envelope {
            helo: self.helo.clone().unwrap_or_default(),
            from: txn.from,
            rcpts: txn.rcpts,
            body: txn.body,
            smtputf8: txn.params.smtputf8,
            body_type: txn.params.body.unwrap_or_default(),
            authenticated: self.auth_user.clone(),
            tls: self.tls,
            esmtp: self.esmtp,
        };
        self.out.push(Action::Enqueue(env));
        self.wait = Wait::Enqueue;
    }

    /// The `From:` header of an authenticated user restricted by `allowed_from`: every
    /// address's domain must be allowed. No `From:` at all is left to the receiver.
    fn check_from_header(&self, body: &[u8]) -> Option<Reply> {
        match header::from_domains(body) {
            Ok(domains) => domains
                .iter()
                .find(|d| !header::domain_allowed(d, &self.allowed_from))
                .map(|d| replies::from_header_not_allowed(d)),
            Err(FromError::Missing) => None,
            Err(e) => Some(replies::from_header_unusable(e)),
        }
    }

    /// Tell the IO layer, for its log, what was refused.
    pub(super) fn refused(&mut self, from: String, rcpts: usize, size: u64, reply: Reply) {
        self.out.push(Action::Refused(Refusal {
            from,
            rcpts,
            size,
            reply,
        }));
    }

    fn starttls(&mut self) {
        if self.tls {
            return self.error(replies::tls_active());
        }
        if !self.cfg.tls_available {
            return self.error(replies::tls_unavailable());
        }
        self.reply(replies::ready_tls());
        self.out.push(Action::StartTls);
        self.state = State::TlsPending;
    }
}
