//! The outbound SMTP session engine used by delivery: [`ClientSession::handle`] turns
//! [`ClientEvent`]s (server bytes, messages to send) into [`ClientAction`]s (bytes to
//! write, TLS upgrade, per-recipient results).
//!
//! One connection, any number of messages: after the greeting and EHLO (and STARTTLS if
//! wanted and offered) the engine says [`ClientAction::Ready`]; the IO layer answers
//! with [`ClientEvent::Send`] or [`ClientEvent::Quit`]. With PIPELINING, MAIL, all RCPTs
//! and DATA go out in one write (RFC 2920); without it, one command per round trip.
//! Bodies are sent with DATA only (no BDAT): on [`ClientAction::WriteData`] the IO layer
//! writes the body dot-stuffed with [`crate::data::dot_stuff`] and then reports
//! [`ClientEvent::DataWritten`].
//!
//! [`ClientAction::Failed`] means the connection is finished (the engine has already
//! asked to write QUIT where that makes sense); a message in progress at that point was
//! not delivered and gets the failure's reply. It is always followed by
//! [`ClientAction::Closed`].

use std::collections::VecDeque;

use crate::address::{Mailbox, ReversePath};
use crate::replies;
use crate::reply::{Reply, ReplyError, ReplyParser};

/// Client settings.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    /// Use STARTTLS when the server offers it.
    pub want_tls: bool,
    /// Fail the connection if TLS cannot be established (implies `want_tls`).
    pub require_tls: bool,
}

/// A message to send on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Envelope sender.
    pub from: ReversePath,
    /// Recipients, in order; results are reported by index.
    pub rcpts: Vec<Mailbox>,
    /// Body size in bytes, for the SIZE parameter.
    pub size_hint: u64,
    /// The body has 8-bit content (send `BODY=8BITMIME` when supported).
    pub eight_bit: bool,
    /// The message needs SMTPUTF8.
    pub smtputf8: bool,
}

/// Something that happened to the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent<'a> {
    /// Bytes from the server.
    Input(&'a [u8]),
    /// The TLS handshake asked for by [`ClientAction::StartTls`] completed.
    TlsEstablished,
    /// Send this message (only after [`ClientAction::Ready`]).
    Send(OutboundMessage),
    /// The body, including the final `.CRLF`, has been written.
    DataWritten,
    /// End the session.
    Quit,
}

/// Why the connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The greeting was not 220.
    #[error("server greeting was not 220")]
    Greeting,
    /// EHLO and HELO were refused.
    #[error("EHLO/HELO refused")]
    Helo,
    /// TLS required but not offered or refused.
    #[error("STARTTLS required but not available")]
    TlsUnavailable,
    /// The server closed the session (421) or replied out of turn.
    #[error("server ended the session")]
    ServerClosed,
    /// The server sent bytes that are not SMTP replies.
    #[error("protocol error: {0}")]
    Protocol(#[from] ReplyError),
    /// The IO layer sent an event that does not fit the session's state.
    #[error("event not expected in this state")]
    UnexpectedEvent,
}

/// Something the IO layer must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Start the TLS handshake, then send [`ClientEvent::TlsEstablished`].
    StartTls,
    /// Idle: send a message or quit.
    Ready,
    /// The server said 354: write the dot-stuffed body and terminator now.
    WriteData,
    /// The server answered the RCPT for `rcpts[index]`.
    RcptResult {
        /// Index into [`OutboundMessage::rcpts`].
        index: usize,
        /// The reply (MAIL's reply if MAIL was refused).
        reply: Reply,
    },
    /// The message is finished.
    MessageDone {
        /// One reply per recipient.
        rcpt_replies: Vec<Reply>,
        /// The reply to the end of data (or to DATA if it was refused); `None` if no
        /// recipient was accepted. Accepted recipients share this outcome.
        data_reply: Option<Reply>,
    },
    /// The connection failed; see the module docs.
    Failed {
        /// The server's reply, if the failure was one.
        reply: Option<Reply>,
        /// Why.
        reason: ClientError,
    },
    /// The session is over: close the connection.
    Closed,
}

/// ESMTP extensions the server advertised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// The server answered EHLO (not only HELO).
    pub esmtp: bool,
    /// STARTTLS.
    pub starttls: bool,
    /// SIZE, with its limit (0 = no fixed limit).
    pub size: Option<u64>,
    /// PIPELINING.
    pub pipelining: bool,
    /// 8BITMIME.
    pub eight_bit_mime: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// CHUNKING.
    pub chunking: bool,
    /// ENHANCEDSTATUSCODES.
    pub enhanced_status_codes: bool,
    /// DSN.
    pub dsn: bool,
    /// AUTH mechanisms, upper-cased.
    pub auth: Vec<String>,
}

impl Extensions {
    /// Parse the lines of a 250 reply to EHLO (the first line is the greeting name).
    pub fn parse(reply: &Reply) -> Extensions {
        let mut e = Extensions {
            esmtp: true,
            ..Extensions::default()
        };
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "STARTTLS" => e.starttls = true,
                "SIZE" => e.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "PIPELINING" => e.pipelining = true,
                "8BITMIME" => e.eight_bit_mime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "CHUNKING" => e.chunking = true,
                "ENHANCEDSTATUSCODES" => e.enhanced_status_codes = true,
                "DSN" => e.dsn = true,
                "AUTH" => e.auth = words.map(str::to_ascii_uppercase).collect(),
                _ => {}
            }
        }
        e
    }
}

/// A reply the engine is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Rset,
    Mail,
    Rcpt(usize),
    Data,
    /// Reply to the end of data. `dummy`: we sent an empty body only to get out of a
    /// 354 given with no accepted recipient.
    DataEnd {
        dummy: bool,
    },
}

#[derive(Debug)]
struct Txn {
    rcpt_count: usize,
    expect: VecDeque<Expect>,
    /// Commands not yet written (no PIPELINING).
    unsent: VecDeque<(Expect, Vec<u8>)>,
    mail_failed: Option<Reply>,
    mail_ok: bool,
    rcpt_replies: Vec<Option<Reply>>,
    accepted: usize,
    awaiting_body: bool,
}

#[derive(Debug)]
enum State {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    TlsHandshake,
    Idle,
    Txn(Txn),
    Quitting,
    Closed,
}

/// One outbound SMTP connection.
#[derive(Debug)]
pub struct ClientSession {
    cfg: ClientConfig,
    state: State,
    parser: ReplyParser,
    ext: Extensions,
    tls: bool,
    rset_needed: bool,
    out: Vec<ClientAction>,
}

impl ClientSession {
    /// A session on a freshly connected socket (waiting for the greeting).
    pub fn new(cfg: ClientConfig) -> Self {
        ClientSession {
            cfg,
            state: State::Greeting,
            parser: ReplyParser::new(),
            ext: Extensions::default(),
            tls: false,
            rset_needed: false,
            out: Vec::new(),
        }
    }

    /// A session on a connection that is already TLS (port 465).
    pub fn new_tls(cfg: ClientConfig) -> Self {
        let mut s = Self::new(cfg);
        s.tls = true;
        s
    }

    /// Extensions from the latest EHLO.
    pub fn server_extensions(&self) -> &Extensions {
        &self.ext
    }

    /// TLS is active.
    pub fn tls_active(&self) -> bool {
        self.tls
    }

    /// The session is over.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Idle and ready for [`ClientEvent::Send`].
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Process one event and return the actions to perform, in order.
    pub fn handle(&mut self, event: ClientEvent<'_>) -> Vec<ClientAction> {
        if !matches!(self.state, State::Closed) {
            self.step(event);
        }
        std::mem::take(&mut self.out)
    }

    fn step(&mut self, event: ClientEvent<'_>) {
        match event {
            ClientEvent::Input(bytes) => {
                if matches!(self.state, State::TlsHandshake) {
                    return; // plaintext after 220 to STARTTLS: never trust it
                }
                self.parser.feed(bytes);
                loop {
                    match self.parser.next_reply() {
                        Ok(Some(r)) => self.on_reply(r),
                        Ok(None) => break,
                        Err(e) => {
                            self.fail(None, ClientError::Protocol(e));
                            break;
                        }
                    }
                    if matches!(self.state, State::Closed | State::TlsHandshake) {
                        break;
                    }
                }
            }
            ClientEvent::TlsEstablished => {
                if !matches!(self.state, State::TlsHandshake) {
                    return self.fail(None, ClientError::UnexpectedEvent);
                }
                // RFC 3207 §4.2: forget what we learnt, start over.
                self.tls = true;
                self.parser = ReplyParser::new();
                self.ext = Extensions::default();
                self.ehlo();
            }
            ClientEvent::Send(msg) => {
                if !matches!(self.state, State::Idle) {
                    return self.fail(None, ClientError::UnexpectedEvent);
                }
                self.send(msg);
            }
            ClientEvent::DataWritten => match &mut self.state {
                State::Txn(t) if t.awaiting_body => {
                    t.awaiting_body = false;
                    t.expect.push_back(Expect::DataEnd { dummy: false });
                }
                _ => self.fail(None, ClientError::UnexpectedEvent),
            },
            ClientEvent::Quit => {
                self.write(b"QUIT\r\n".to_vec());
                self.state = State::Quitting;
            }
        }
    }

    fn write(&mut self, bytes: Vec<u8>) {
        self.out.push(ClientAction::Write(bytes));
    }

    fn ehlo(&mut self) {
        self.write(format!("EHLO {}\r\n", self.cfg.helo_name).into_bytes());
        self.state = State::Ehlo;
    }

    fn ready(&mut self) {
        self.state = State::Idle;
        self.out.push(ClientAction::Ready);
    }

    /// End the connection: QUIT (if the server is still talking), Failed, Closed.
    fn fail(&mut self, reply: Option<Reply>, reason: ClientError) {
        let polite = !matches!(reason, ClientError::Protocol(_) | ClientError::ServerClosed);
        if polite && !matches!(self.state, State::TlsHandshake | State::Quitting) {
            self.write(b"QUIT\r\n".to_vec());
        }
        self.out.push(ClientAction::Failed { reply, reason });
        self.close();
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.out.push(ClientAction::Closed);
    }

    fn on_reply(&mut self, r: Reply) {
        if r.code == 421 && !matches!(self.state, State::Quitting) {
            return self.fail(Some(r), ClientError::ServerClosed);
        }
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Greeting => {
                if r.code == 220 {
                    self.ehlo();
                } else {
                    self.state = State::Greeting;
                    self.fail(Some(r), ClientError::Greeting);
                }
            }
            State::Ehlo => {
                if r.code == 250 {
                    self.ext = Extensions::parse(&r);
                    self.after_hello();
                } else if r.is_permanent() {
                    self.write(format!("HELO {}\r\n", self.cfg.helo_name).into_bytes());
                    self.state = State::Helo;
                } else {
                    self.state = State::Ehlo;
                    self.fail(Some(r), ClientError::Helo);
                }
            }
            State::Helo => {
                if r.code == 250 {
                    self.ext = Extensions::default();
                    self.after_hello();
                } else {
                    self.state = State::Helo;
                    self.fail(Some(r), ClientError::Helo);
                }
            }
            State::StartTls => {
                if r.code == 220 {
                    self.state = State::TlsHandshake;
                    self.out.push(ClientAction::StartTls);
                } else if self.cfg.require_tls {
                    self.state = State::StartTls;
                    self.fail(Some(r), ClientError::TlsUnavailable);
                } else {
                    // Opportunistic: carry on in plaintext.
                    self.ready();
                }
            }
            State::Txn(t) => self.txn_reply(t, r),
            State::Quitting => {
                // Replies still owed for an abandoned transaction may come first.
                if r.code == 221 || !r.is_positive() {
                    self.close();
                } else {
                    self.state = State::Quitting;
                }
            }
            State::Idle | State::TlsHandshake | State::Closed => {
                self.fail(Some(r), ClientError::ServerClosed);
            }
        }
    }

    fn after_hello(&mut self) {
        let want = self.cfg.want_tls || self.cfg.require_tls;
        if want && !self.tls && self.ext.starttls {
            self.write(b"STARTTLS\r\n".to_vec());
            self.state = State::StartTls;
        } else if self.cfg.require_tls && !self.tls {
            self.fail(None, ClientError::TlsUnavailable);
        } else {
            self.ready();
        }
    }

    fn send(&mut self, msg: OutboundMessage) {
        let n = msg.rcpts.len();
        // Refuse locally what the server cannot take.
        let local = if msg.smtputf8 && !self.ext.smtputf8 {
            Some(replies::remote_lacks_smtputf8())
        } else if matches!(self.ext.size, Some(max) if max > 0 && msg.size_hint > max) {
            Some(replies::remote_size_exceeded())
        } else if n == 0 {
            Some(replies::no_recipients())
        } else {
            None
        };
        if let Some(r) = local {
            self.out.push(ClientAction::MessageDone {
                rcpt_replies: vec![r; n],
                data_reply: None,
            });
            return self.ready();
        }
        let mut cmds: VecDeque<(Expect, Vec<u8>)> = VecDeque::new();
        if self.rset_needed {
            cmds.push_back((Expect::Rset, b"RSET\r\n".to_vec()));
            self.rset_needed = false;
        }
        let mut mail = format!("MAIL FROM:{}", msg.from);
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={}", msg.size_hint));
        }
        if msg.eight_bit && self.ext.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if msg.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        cmds.push_back((Expect::Mail, mail.into_bytes()));
        for (i, to) in msg.rcpts.iter().enumerate() {
            cmds.push_back((Expect::Rcpt(i), format!("RCPT TO:<{to}>\r\n").into_bytes()));
        }
        cmds.push_back((Expect::Data, b"DATA\r\n".to_vec()));
        let mut t = Txn {
            rcpt_count: n,
            expect: VecDeque::new(),
            unsent: VecDeque::new(),
            mail_failed: None,
            mail_ok: false,
            rcpt_replies: vec![None; n],
            accepted: 0,
            awaiting_body: false,
        };
        if self.ext.pipelining {
            let mut bytes = Vec::new();
            for (e, c) in cmds {
                t.expect.push_back(e);
                bytes.extend(c);
            }
            self.write(bytes);
        } else {
            // RSET (if any) and MAIL go one at a time too.
            t.unsent = cmds;
            self.send_next(&mut t);
        }
        self.state = State::Txn(t);
    }

    fn send_next(&mut self, t: &mut Txn) {
        if let Some((e, bytes)) = t.unsent.pop_front() {
            t.expect.push_back(e);
            self.write(bytes);
        }
    }

    fn txn_reply(&mut self, mut t: Txn, r: Reply) {
        let Some(expect) = t.expect.pop_front() else {
            // A reply while we owe the body: the server gave up on us.
            return self.fail(Some(r), ClientError::ServerClosed);
        };
        match expect {
            Expect::Rset => {}
            Expect::Mail => {
                if r.is_completion() {
                    t.mail_ok = true;
                } else {
                    t.mail_failed = Some(r);
                    if !t.unsent.is_empty() {
                        // Not pipelined: nothing else was sent; finish now.
                        t.unsent.clear();
                        for i in 0..t.rcpt_count {
                            self.rcpt_result(&mut t, i, None);
                        }
                        return self.finish(t, None);
                    }
                }
            }
            Expect::Rcpt(i) => self.rcpt_result(&mut t, i, Some(r)),
            Expect::Data => {
                if r.code == 354 {
                    if t.accepted > 0 && t.mail_ok {
                        t.awaiting_body = true;
                        self.out.push(ClientAction::WriteData);
                    } else {
                        // 354 with nobody to deliver to: send an empty body to get out.
                        self.write(b".\r\n".to_vec());
                        t.expect.push_back(Expect::DataEnd { dummy: true });
                    }
                } else {
                    // The transaction may still be open on the server.
                    self.rset_needed = t.mail_ok;
                    let data_reply = (t.accepted > 0).then_some(r);
                    return self.finish(t, data_reply);
                }
            }
            Expect::DataEnd { dummy } => {
                let data_reply = (!dummy && t.accepted > 0).then_some(r);
                return self.finish(t, data_reply);
            }
        }
        if t.expect.is_empty() && !t.awaiting_body {
            // Not pipelined: decide what to send next.
            match t.unsent.front() {
                Some((Expect::Data, _)) if t.accepted == 0 => {
                    self.rset_needed = t.mail_ok;
                    return self.finish(t, None);
                }
                _ => self.send_next(&mut t),
            }
        }
        self.state = State::Txn(t);
    }

    /// Record a RCPT reply (MAIL's failure overrides it).
    fn rcpt_result(&mut self, t: &mut Txn, i: usize, r: Option<Reply>) {
        let Some(reply) = t.mail_failed.clone().or(r) else {
            return;
        };
        if reply.is_completion() {
            t.accepted += 1;
        }
        if let Some(slot) = t.rcpt_replies.get_mut(i) {
            *slot = Some(reply.clone());
        }
        self.out.push(ClientAction::RcptResult { index: i, reply });
    }

    fn finish(&mut self, t: Txn, data_reply: Option<Reply>) {
        let fallback = replies::no_rcpt_reply();
        let rcpt_replies = t
            .rcpt_replies
            .into_iter()
            .map(|r| r.unwrap_or_else(|| fallback.clone()))
            .collect();
        self.out.push(ClientAction::MessageDone {
            rcpt_replies,
            data_reply,
        });
        self.ready();
    }
}
