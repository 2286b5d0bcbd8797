//! The inbound SMTP session engine: [`ServerSession::handle`] turns [`Event`]s (bytes
//! from the socket, results of checks the IO layer ran) into [`Action`]s (replies to
//! write, TLS upgrade, credential and recipient checks, enqueueing, close).
//!
//! The engine owns line reading, DATA and BDAT decoding and the buffering of pipelined
//! input. While it waits for the result of an action it asked for ([`Action::CheckAuth`],
//! [`Action::CheckMail`], [`Action::CheckRcpt`], [`Action::Enqueue`]) it processes no
//! input but buffers it;
//! the IO layer should stop reading the socket while [`ServerSession::waiting`] is true
//! (backpressure).
//!
//! Layout: `mod.rs` (types and the input loop), `commands.rs` (EHLO, MAIL, RCPT, DATA,
//! BDAT and the simple verbs), `auth.rs` (AUTH PLAIN/LOGIN), `replies.rs` (every reply
//! text the server sends).

mod auth;
mod commands;

pub use commands::JUNK_LIMIT;

use std::time::Duration;

use crate::address::{Mailbox, ReversePath};
use crate::command::{BodyType, MailParams};
use crate::data::{BdatDecoder, DataDecoder, LineCheck};
use crate::line::{LineEvent, LineReader};
use crate::replies;
use crate::reply::Reply;

/// Input buffered beyond `max_message_size` while waiting before the session is closed.
const BUFFER_SLACK: u64 = 64 * 1024;

/// Per-session configuration (derived from the listener and the peer).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Our hostname for the greeting, EHLO and replies.
    pub hostname: String,
    /// Largest accepted body in bytes (advertised as SIZE).
    pub max_message_size: u64,
    /// Most recipients per message; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// After this many protocol errors: `421 4.7.0` and close. 0 = no limit.
    pub max_errors: usize,
    /// A certificate is configured: advertise and accept STARTTLS.
    pub tls_available: bool,
    /// TLS is already on (implicit TLS listener).
    pub tls_active: bool,
    /// SMTP users are configured: AUTH may be offered.
    pub auth_enabled: bool,
    /// Submission listener: MAIL requires AUTH first.
    pub require_auth: bool,
    /// The peer is in relay_networks: may relay without AUTH, may AUTH without TLS.
    pub relay_allowed: bool,
    /// Ask the IO layer about each recipient ([`Action::CheckRcpt`]); if false,
    /// recipients passing the engine's own checks are accepted at once.
    pub check_recipients: bool,
    /// Ask the IO layer about each sender ([`Action::CheckMail`]); if false, a MAIL
    /// passing the engine's own checks is accepted at once.
    pub check_senders: bool,
    /// Text after the hostname in the 220 greeting.
    pub greeting_banner: String,
    /// A domain whose mail the IO layer handles itself (Baton's bounce domain): any
    /// client may send to it without AUTH (still asked about by [`Action::CheckRcpt`]),
    /// a transaction never mixes it with other recipients, and its messages are at most
    /// `local_max_message_size`. Empty: none.
    pub local_domain: String,
    /// The largest message to `local_domain` (bytes).
    pub local_max_message_size: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "localhost".into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_errors: 20,
            tls_available: false,
            tls_active: false,
            auth_enabled: false,
            require_auth: false,
            relay_allowed: false,
            check_recipients: false,
            check_senders: false,
            greeting_banner: "ESMTP Baton".into(),
            local_domain: String::new(),
            local_max_message_size: 1024 * 1024,
        }
    }
}

/// Something that happened to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// The connection is open (after any PROXY header): send the greeting.
    Connected,
    /// Bytes read from the client.
    Input(&'a [u8]),
    /// The TLS handshake asked for by [`Action::StartTls`] finished.
    TlsEstablished,
    /// Result of [`Action::CheckAuth`].
    AuthChecked(AuthResult),
    /// Result of [`Action::CheckRcpt`]: accept, or the reply to refuse with.
    RcptChecked(Result<(), Reply>),
    /// Result of [`Action::CheckMail`]: accept, or the reply to refuse with.
    MailChecked(Result<(), Reply>),
    /// Result of [`Action::Enqueue`]: the queue id, or the reply to refuse with
    /// (e.g. `451 4.3.0`).
    Enqueued(Result<String, Reply>),
    /// The phase timeout ([`ServerSession::phase`]) expired.
    Timeout,
}

/// The IO layer's verdict on credentials ([`Action::CheckAuth`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// Valid. The user may use only these domains in the envelope sender and the
    /// `From:` header (`example.com`, `*.example.com`); empty: any.
    Valid {
        /// Domain patterns, see [`crate::header::domain_allowed`].
        allowed_from: Vec<String>,
    },
    /// Not valid: `535 5.7.8`, counted as an error.
    Invalid,
    /// Not checked, refused with this reply (too many failures from this client, say).
    /// A `421` closes the session.
    Refused(Reply),
}

impl AuthResult {
    /// Valid, with no restriction on sender domains.
    pub fn valid() -> AuthResult {
        AuthResult::Valid {
            allowed_from: Vec::new(),
        }
    }
}

/// Something the IO layer must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this reply.
    Reply(Reply),
    /// Start the TLS handshake now (the 220 before it must be written first), then send
    /// [`Event::TlsEstablished`]. Plaintext the client pipelined after STARTTLS has been
    /// discarded by the engine.
    StartTls,
    /// Check credentials, then send [`Event::AuthChecked`].
    CheckAuth {
        /// `PLAIN` or `LOGIN`.
        mechanism: String,
        /// Authorization identity (PLAIN only; empty if none).
        authzid: String,
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// Apply extra sender policy (a paused tenant, ...), then send
    /// [`Event::MailChecked`]. Only if [`ServerConfig::check_senders`]; the
    /// authenticated user, if any, is [`ServerSession::authenticated`].
    CheckMail {
        /// The sender.
        from: ReversePath,
    },
    /// Apply extra recipient policy (suppression list, ...), then send
    /// [`Event::RcptChecked`]. Only if [`ServerConfig::check_recipients`].
    CheckRcpt {
        /// The sender.
        from: ReversePath,
        /// The recipient.
        to: Mailbox,
    },
    /// Store this message durably, then send [`Event::Enqueued`].
    Enqueue(Envelope),
    /// Only to log: a message or sender was refused for its content or its sender (the
    /// reply follows as its own [`Action::Reply`]).
    Refused(Refusal),
    /// Close the connection (after writing the replies before this).
    Close,
}

/// What was refused, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The envelope sender (`<>` for the null path).
    pub from: String,
    /// Recipients accepted so far.
    pub rcpts: usize,
    /// Body bytes received (0 when refused at MAIL).
    pub size: u64,
    /// The reply sent.
    pub reply: Reply,
}

/// A received message. The caller prepends its own `Received:` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The EHLO/HELO argument.
    pub helo: String,
    /// The sender.
    pub from: ReversePath,
    /// Accepted recipients (no duplicates; `<postmaster>` has our hostname as domain).
    pub rcpts: Vec<Mailbox>,
    /// The body as received (unstuffed, CRLF line ends).
    pub body: Vec<u8>,
    /// `SMTPUTF8` was given.
    pub smtputf8: bool,
    /// `BODY=` type (7BIT if not given).
    pub body_type: BodyType,
    /// The authenticated user, if any.
    pub authenticated: Option<String>,
    /// Received over TLS.
    pub tls: bool,
    /// The client used EHLO (not HELO).
    pub esmtp: bool,
}

/// What the session is doing, for picking a timeout (RFC 5321 §4.5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a command (5 minutes).
    Command,
    /// Receiving DATA or a BDAT chunk (3 minutes per block).
    Data,
    /// STARTTLS accepted, handshake under way.
    TlsHandshake,
    /// Waiting for the IO layer's answer (no client timeout applies).
    Waiting,
    /// Closed.
    Closed,
}

impl Phase {
    /// The client inactivity timeout for this phase, if any.
    pub fn timeout(self) -> Option<Duration> {
        match self {
            Phase::Command | Phase::TlsHandshake => Some(Duration::from_secs(300)),
            Phase::Data => Some(Duration::from_secs(180)),
            Phase::Waiting | Phase::Closed => None,
        }
    }
}

/// The parser-owning state.
#[derive(Debug)]
enum State {
    Command,
    Data(DataDecoder),
    Bdat {
        dec: BdatDecoder,
        size: u64,
        last: bool,
        reject: Option<Reply>,
    },
    AuthPlain,
    AuthLoginUser,
    AuthLoginPass {
        user: String,
    },
    TlsPending,
    Closed,
}

/// An answer the engine waits for.
#[derive(Debug)]
enum Wait {
    None,
    Auth { user: String },
    Mail(ReversePath, MailParams),
    Rcpt(Mailbox),
    Enqueue,
}

/// The mail transaction in progress.
#[derive(Debug)]
struct Txn {
    from: ReversePath,
    params: MailParams,
    rcpts: Vec<Mailbox>,
    /// RCPTs refused for exceeding `max_recipients`.
    over_limit: usize,
    body: Vec<u8>,
    bdat: bool,
    /// DATA's byte policy over the BDAT chunks.
    check: LineCheck,
}

/// One inbound SMTP session. Create it per connection, send [`Event::Connected`], then
/// feed it events and perform the actions it returns.
#[derive(Debug)]
pub struct ServerSession {
    cfg: ServerConfig,
    state: State,
    wait: Wait,
    inbuf: Vec<u8>,
    lines: LineReader,
    helo: Option<String>,
    esmtp: bool,
    auth_user: Option<String>,
    /// Sender domains the authenticated user may use (empty: any).
    allowed_from: Vec<String>,
    tls: bool,
    txn: Option<Txn>,
    errors: usize,
    /// NOOP, RSET, VRFY and HELP so far.
    junk: usize,
    out: Vec<Action>,
}

impl ServerSession {
    /// A new session.
    pub fn new(cfg: ServerConfig) -> Self {
        let tls = cfg.tls_active;
        ServerSession {
            cfg,
            state: State::Command,
            wait: Wait::None,
            inbuf: Vec::new(),
            lines: LineReader::default(),
            helo: None,
            esmtp: false,
            auth_user: None,
            allowed_from: Vec::new(),
            tls,
            txn: None,
            errors: 0,
            junk: 0,
            out: Vec::new(),
        }
    }

    /// Process one event and return the actions to perform, in order.
    pub fn handle(&mut self, event: Event<'_>) -> Vec<Action> {
        let mut out = Vec::new();
        self.handle_into(event, &mut out);
        out
    }

    /// Like [`ServerSession::handle`], appending to `out`.
    pub fn handle_into(&mut self, event: Event<'_>, out: &mut Vec<Action>) {
        if !matches!(self.state, State::Closed) {
            self.step(event);
        }
        out.append(&mut self.out);
    }

    /// Waiting for an answer to CheckAuth, CheckMail, CheckRcpt or Enqueue.
    pub fn waiting(&self) -> bool {
        !matches!(self.wait, Wait::None)
    }

    /// Receiving a message body (DATA or a BDAT chunk).
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(_) | State::Bdat { .. })
    }

    /// The current phase, for the IO layer's timeout.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Closed => Phase::Closed,
            _ if self.waiting() => Phase::Waiting,
            State::Data(_) | State::Bdat { .. } => Phase::Data,
            State::TlsPending => Phase::TlsHandshake,
            _ => Phase::Command,
        }
    }

    /// The session has ended ([`Action::Close`] was returned).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The authenticated user, if any.
    pub fn authenticated(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    /// The EHLO/HELO name, if given.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// TLS is active.
    pub fn tls_active(&self) -> bool {
        self.tls
    }

    /// Input bytes buffered and not yet processed.
    pub fn buffered(&self) -> usize {
        self.inbuf.len() + self.lines.buffered()
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    fn step(&mut self, event: Event<'_>) {
        match event {
            Event::Connected => {
                let greeting = replies::greeting(&self.cfg.hostname, &self.cfg.greeting_banner);
                self.reply(greeting);
            }
            Event::Input(bytes) => {
                if matches!(self.state, State::TlsPending) {
                    return;
                }
                self.inbuf.extend_from_slice(bytes);
                // Input only piles up while waiting; bound it even if the IO layer does
                // not apply backpressure.
                if self.inbuf.len() as u64 > self.cfg.max_message_size + BUFFER_SLACK {
                    self.reply(replies::too_much_input(&self.cfg.hostname));
                    return self.close();
                }
                self.process();
            }
            Event::TlsEstablished => {
                // RFC 3207 §4.2: forget everything learnt before the handshake.
                self.tls = true;
                self.helo = None;
                self.esmtp = false;
                self.auth_user = None;
                self.allowed_from.clear();
                self.txn = None;
                self.wait = Wait::None;
                self.lines.clear();
                self.inbuf.clear();
                self.state = State::Command;
            }
            Event::AuthChecked(result) => {
                if let Wait::Auth { user } = std::mem::replace(&mut self.wait, Wait::None) {
                    match result {
                        AuthResult::Valid { allowed_from } => {
                            self.auth_user = Some(user);
                            self.allowed_from = allowed_from;
                            self.reply(replies::auth_ok());
                        }
                        AuthResult::Invalid => self.error(replies::auth_failed()),
                        AuthResult::Refused(r) => {
                            let closing = r.code == 421;
                            self.reply(r);
                            if closing {
                                return self.close();
                            }
                        }
                    }
                    self.process();
                }
            }
            Event::RcptChecked(result) => {
                if let Wait::Rcpt(to) = std::mem::replace(&mut self.wait, Wait::None) {
                    match result {
                        Ok(()) => {
                            if let Some(t) = self.txn.as_mut() {
                                t.rcpts.push(to);
                            }
                            self.reply(replies::rcpt_ok());
                        }
                        Err(r) => self.reply(r),
                    }
                    self.process();
                }
            }
            Event::MailChecked(result) => {
                if let Wait::Mail(from, params) = std::mem::replace(&mut self.wait, Wait::None) {
                    match result {
                        Ok(()) => self.begin_txn(from, params),
                        Err(r) => {
                            self.refused(from.to_string(), 0, 0, r.clone());
                            self.reply(r);
                        }
                    }
                    self.process();
                }
            }
            Event::Enqueued(result) => {
                if let Wait::Enqueue = self.wait {
                    self.wait = Wait::None;
                    self.txn = None;
                    match result {
                        Ok(id) => self.reply(replies::queued(&id)),
                        Err(r) => self.reply(r),
                    }
                    self.process();
                }
            }
            Event::Timeout => {
                self.reply(replies::timeout(&self.cfg.hostname));
                self.close();
            }
        }
    }

    /// Run buffered input through the current parser until it is used up, the session
    /// must wait, or it closed.
    fn process(&mut self) {
        let mut buf = std::mem::take(&mut self.inbuf);
        let mut pos = 0;
        while pos < buf.len() && matches!(self.wait, Wait::None) {
            let input = &buf[pos..];
            match &mut self.state {
                State::Closed | State::TlsPending => break,
                State::Data(dec) => {
                    let mut scratch = Vec::new();
                    let body = match self.txn.as_mut() {
                        Some(t) => &mut t.body,
                        None => &mut scratch,
                    };
                    let p = dec.feed(input, body);
                    pos += p.consumed;
                    if p.done {
                        let result = dec.result();
                        self.state = State::Command;
                        self.end_of_message(result);
                    }
                }
                State::Bdat { dec, .. } => {
                    let mut scratch = Vec::new();
                    let p = match self.txn.as_mut() {
                        Some(t) => {
                            let p = dec.feed(input, &mut t.body);
                            t.check.scan(&input[..p.consumed]);
                            p
                        }
                        None => dec.feed(input, &mut scratch),
                    };
                    pos += p.consumed;
                    if p.done {
                        self.bdat_chunk_done();
                    }
                }
                State::Command
                | State::AuthPlain
                | State::AuthLoginUser
                | State::AuthLoginPass { .. } => {
                    let (n, ev) = self.lines.read(input);
                    pos += n;
                    match ev {
                        LineEvent::NeedMore => {}
                        LineEvent::Line(line) => {
                            if matches!(self.state, State::Command) {
                                self.command(&line);
                            } else {
                                self.auth_response(&line);
                            }
                        }
                        LineEvent::Error(_) => {
                            self.state = State::Command;
                            self.error(replies::line_too_long());
                        }
                    }
                }
            }
        }
        if matches!(self.state, State::Closed | State::TlsPending) {
            // Anything pipelined after STARTTLS or QUIT is dropped (RFC 3207 §5).
            self.lines.clear();
            buf.clear();
        } else {
            buf.drain(..pos);
        }
        self.inbuf = buf;
    }

    fn reply(&mut self, r: Reply) {
        self.out.push(Action::Reply(r));
    }

    /// Reply with an error that counts toward `max_errors`.
    fn error(&mut self, r: Reply) {
        self.reply(r);
        self.errors += 1;
        if self.cfg.max_errors > 0 && self.errors >= self.cfg.max_errors {
            self.reply(replies::too_many_errors(&self.cfg.hostname));
            self.close();
        }
    }

    fn close(&mut self) {
        self.out.push(Action::Close);
        self.state = State::Closed;
        self.wait = Wait::None;
        self.inbuf.clear();
        self.lines.clear();
    }
}
