//! One outbound SMTP connection: TCP (and STARTTLS) around `baton_smtp::client`.
//!
//! [`Connection::open`] walks the targets in preference order and stops at the first host
//! that greets with 220 and finishes EHLO (and STARTTLS when the policy wants it); a
//! refused connection or a 4xx/5xx greeting moves on to the next host. When none is
//! usable, [`OpenFailed`] says what each host did.
//! [`Connection::send`] runs one transaction and returns the per-recipient replies.

use crate::reason;
use crate::route::Target;
use crate::tls::{TlsClients, TlsPolicy};
use baton_smtp::client::{
    ClientAction, ClientConfig, ClientError, ClientEvent, ClientSession, OutboundMessage,
};
use baton_smtp::data::dot_stuff_body;
use baton_smtp::reply::Reply;
use rustls::pki_types::ServerName;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Timeouts for one connection (RFC 5321 §4.5.3.2 gives the client's minimums).
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    /// Greeting, EHLO, MAIL, RCPT, DATA replies (5 minutes in the RFC).
    pub command: Duration,
    /// Reply to the final dot (10 minutes in the RFC).
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            command: Duration::from_secs(300),
            data_end: Duration::from_secs(600),
        }
    }
}

/// Why a connection could not be used. While opening, the reason is about one host
/// and does not name it ([`OpenFailed`] does).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    /// The host could not be reached or refused us; its reply if it gave one.
    #[error("{reason}")]
    Unavailable {
        reason: String,
        reply: Option<Reply>,
    },
    /// TLS was required and could not be had.
    #[error("TLS required but not available: {0}")]
    TlsRequired(String),
    /// The connection broke during a transaction.
    #[error("connection lost: {0}")]
    Lost(String),
    /// The TLS handshake failed (opportunistic: retried without TLS).
    #[error("TLS handshake failed: {0}")]
    TlsFailed(String),
    /// The lease ran out before the final dot: the transaction was abandoned.
    #[error("transaction abandoned before the final dot")]
    Abandoned,
}

impl ConnError {
    /// The remote's reply, when the error is one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            ConnError::Unavailable { reply, .. } => reply.as_ref(),
            _ => None,
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

/// No target could be used: what each did, in the order tried.
#[derive(Debug, Clone)]
pub struct OpenFailed {
    pub tried: Vec<(Target, ConnError)>,
}

impl OpenFailed {
    /// The last host tried, the one whose answer is recorded.
    pub fn last_target(&self) -> Option<&Target> {
        self.tried.last().map(|(t, _)| t)
    }

    /// The reason in words, for mail to `domain`: "could not connect to any MX host of
    /// example.com: mx1.example.com[192.0.2.1]:25 connection refused; ...".
    /// `smarthost`: the targets are the configured smarthost.
    pub fn reason(&self, domain: &str, smarthost: bool) -> String {
        let tried: Vec<String> = self
            .tried
            .iter()
            .map(|(t, e)| format!("{} {e}", reason::target(t)))
            .collect();
        reason::no_connection(domain, smarthost, &tried)
    }
}

/// The result of one transaction.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub rcpt_replies: Vec<Reply>,
    /// Reply to the final dot; `None` when no recipient was accepted.
    pub data_reply: Option<Reply>,
}

/// An open, ready connection.
pub struct Connection {
    stream: Stream,
    session: ClientSession,
    pub target: Target,
    pub tls: bool,
    timeouts: Timeouts,
    buf: Vec<u8>,
    pending: Vec<ClientAction>,
}

impl Connection {
    /// Connects to the first target that accepts us. On failure: what each target did
    /// (nothing when there was no target).
    pub async fn open(
        targets: &[Target],
        helo_name: &str,
        policy: TlsPolicy,
        tls: &TlsClients,
        timeouts: &Timeouts,
    ) -> Result<Connection, OpenFailed> {
        let mut tried = Vec::new();
        for target in targets {
            match Self::open_one(target, helo_name, policy, tls, timeouts).await {
                Ok(c) => return Ok(c),
                Err(ConnError::TlsFailed(reason)) if policy == TlsPolicy::Opportunistic => {
                    // Opportunistic: a failed handshake is retried in plain text, as
                    // Postfix's "may" level does.
                    tracing::info!(host = %target.host, %reason, "TLS failed; retrying without TLS");
                    match Self::open_one(target, helo_name, TlsPolicy::Disabled, tls, timeouts)
                        .await
                    {
                        Ok(c) => return Ok(c),
                        Err(e) => tried.push((target.clone(), e)),
                    }
                }
                Err(e @ ConnError::TlsRequired(_)) => tried.push((target.clone(), e)),
                Err(e) => {
                    tracing::debug!(host = %target.host, addr = %target.addr, error = %e, "MX host unusable");
                    tried.push((target.clone(), e));
                }
            }
        }
        Err(OpenFailed { tried })
    }

    async fn open_one(
        target: &Target,
        helo_name: &str,
        policy: TlsPolicy,
        tls: &TlsClients,
        timeouts: &Timeouts,
    ) -> Result<Connection, ConnError> {
        let unavailable = |reason: String| ConnError::Unavailable {
            reason,
            reply: None,
        };
        let tcp = tokio::time::timeout(timeouts.connect, TcpStream::connect(target.addr))
            .await
            .map_err(|_| {
                unavailable(format!(
                    "connection timed out after {}",
                    reason::duration(timeouts.connect)
                ))
            })?
            .map_err(|e| unavailable(reason::io(&e)))?;
        let _ = tcp.set_nodelay(true);
        let session = ClientSession::new(ClientConfig {
            helo_name: helo_name.to_string(),
            want_tls: policy != TlsPolicy::Disabled,
            require_tls: policy == TlsPolicy::Required,
        });
        let mut conn = Connection {
            stream: Stream::Plain(tcp),
            session,
            target: target.clone(),
            tls: false,
            timeouts: timeouts.clone(),
            buf: vec![0; 16 * 1024],
            pending: Vec::new(),
        };
        loop {
            let action = conn.next_action(timeouts.command).await?;
            match action {
                ClientAction::Ready => return Ok(conn),
                ClientAction::StartTls => {
                    let config = match policy {
                        TlsPolicy::Required => tls.verified.clone(),
                        _ => tls.opportunistic.clone(),
                    };
                    let name = ServerName::try_from(target.host.clone()).map_err(|e| {
                        let reason = format!("bad host name for TLS: {e}");
                        if policy == TlsPolicy::Required {
                            ConnError::TlsRequired(reason)
                        } else {
                            ConnError::TlsFailed(reason)
                        }
                    })?;
                    let Stream::Plain(tcp) = std::mem::replace(&mut conn.stream, Stream::Gone)
                    else {
                        return Err(unavailable("STARTTLS twice".into()));
                    };
                    let connector = tokio_rustls::TlsConnector::from(config);
                    match tokio::time::timeout(timeouts.command, connector.connect(name, tcp)).await
                    {
                        Ok(Ok(s)) => {
                            conn.stream = Stream::Tls(Box::new(s));
                            conn.tls = true;
                            let actions = conn.session.handle(ClientEvent::TlsEstablished);
                            conn.pending.extend(actions);
                        }
                        Ok(Err(e)) => {
                            return Err(if policy == TlsPolicy::Required {
                                ConnError::TlsRequired(format!("TLS handshake failed: {e}"))
                            } else {
                                ConnError::TlsFailed(e.to_string())
                            });
                        }
                        Err(_) => {
                            return Err(unavailable(format!(
                                "TLS handshake timed out after {}",
                                reason::duration(timeouts.command)
                            )));
                        }
                    }
                }
                ClientAction::Failed { reply, reason } => {
                    return Err(match (reason, &reply) {
                        (ClientError::TlsUnavailable, Some(r)) => {
                            ConnError::TlsRequired(format!("STARTTLS refused: {r}"))
                        }
                        (ClientError::TlsUnavailable, None) => {
                            ConnError::TlsRequired("STARTTLS not offered".into())
                        }
                        (other, _) => ConnError::Unavailable {
                            reason: match (&other, &reply) {
                                (ClientError::Greeting, Some(r)) => format!("greeted with {r}"),
                                (ClientError::Helo, Some(r)) => {
                                    format!("refused EHLO and HELO: {r}")
                                }
                                (_, Some(r)) => format!("answered {r}"),
                                (_, None) => other.to_string(),
                            },
                            reply,
                        },
                    });
                }
                ClientAction::Closed => {
                    return Err(unavailable("closed the connection".into()));
                }
                other => {
                    tracing::warn!(?other, "unexpected client action while opening");
                }
            }
        }
    }

    /// Sends one message under a delivery lease; `lease_left` tells how much of it is
    /// left. The final dot is sent only if more than `lease_margin` is left; otherwise
    /// the connection is dropped before the dot, so the remote discards the partial
    /// message, and [`ConnError::Abandoned`] is returned. The reply to the dot is awaited
    /// for at most `timeouts.data_end`, and only while the lease lasts: once it has run
    /// out another node may send the message, so a later reply cannot be trusted to
    /// mean anything and the attempt counts as failed.
    pub async fn send(
        &mut self,
        message: OutboundMessage,
        body: &[u8],
        lease_left: &(dyn Fn() -> Duration + Send + Sync),
        lease_margin: Duration,
    ) -> Result<Transaction, ConnError> {
        let actions = self.session.handle(ClientEvent::Send(message));
        self.pending.extend(actions);
        let mut rcpt_replies = Vec::new();
        loop {
            let timeout = self.timeouts.command;
            match self.next_action(timeout).await? {
                ClientAction::WriteData => {
                    let mut out = Vec::with_capacity(body.len() + body.len() / 50 + 8);
                    dot_stuff_body(body, &mut out);
                    self.write(&out).await?;
                    if lease_left() <= lease_margin {
                        self.stream = Stream::Gone;
                        return Err(ConnError::Abandoned);
                    }
                    self.write(b".\r\n").await?;
                    let actions = self.session.handle(ClientEvent::DataWritten);
                    self.pending.extend(actions);
                    // The reply to the dot may take longer; wait in slices no longer
                    // than the lease (renewals extend it).
                    let deadline = tokio::time::Instant::now() + self.timeouts.data_end;
                    let action = loop {
                        let left = lease_left();
                        let now = tokio::time::Instant::now();
                        if left.is_zero() || now >= deadline {
                            self.stream = Stream::Gone;
                            return Err(ConnError::Lost(format!(
                                "{} did not answer the final dot {}",
                                self.target.host,
                                if left.is_zero() {
                                    "while the delivery lease lasted"
                                } else {
                                    "in time"
                                }
                            )));
                        }
                        if let Some(action) =
                            self.next_action_within(left.min(deadline - now)).await?
                        {
                            break action;
                        }
                    };
                    match action {
                        ClientAction::MessageDone {
                            rcpt_replies,
                            data_reply,
                        } => {
                            return Ok(Transaction {
                                rcpt_replies,
                                data_reply,
                            });
                        }
                        other => return Err(self.failed(other)),
                    }
                }
                ClientAction::RcptResult { reply, .. } => rcpt_replies.push(reply),
                // "Idle" from the end of the previous message.
                ClientAction::Ready => {}
                ClientAction::MessageDone {
                    rcpt_replies,
                    data_reply,
                } => {
                    return Ok(Transaction {
                        rcpt_replies,
                        data_reply,
                    });
                }
                other => return Err(self.failed(other)),
            }
        }
    }

    fn failed(&mut self, action: ClientAction) -> ConnError {
        self.stream = Stream::Gone;
        match action {
            ClientAction::Failed { reply: Some(r), .. } => ConnError::Unavailable {
                reason: format!("{}: {r}", self.target.host),
                reply: Some(r),
            },
            ClientAction::Failed { reason, .. } => {
                ConnError::Lost(format!("{}: {reason}", self.target.host))
            }
            ClientAction::Closed => {
                ConnError::Lost(format!("{} closed the connection", self.target.host))
            }
            other => ConnError::Lost(format!("unexpected client action {other:?}")),
        }
    }

    /// Whether the connection can take another message.
    /// The TLS version in use, as rustls names it ("TLSv1_3"), or "" without TLS.
    pub fn tls_version(&self) -> String {
        match &self.stream {
            Stream::Tls(s) => s
                .get_ref()
                .1
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            _ => String::new(),
        }
    }

    pub fn is_ready(&self) -> bool {
        !matches!(self.stream, Stream::Gone) && self.session.is_ready()
    }

    /// Says QUIT (best effort) and closes.
    pub async fn quit(mut self) {
        let actions = self.session.handle(ClientEvent::Quit);
        for a in actions {
            if let ClientAction::Write(bytes) = a {
                let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.write_all(&bytes))
                    .await;
            }
        }
        let mut scratch = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut scratch)).await;
    }

    /// Writes with a timeout (RFC 5321 §4.5.3.2.5: 3 minutes per data block): a
    /// remote that stops reading cannot hold us forever.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let timeout = self.timeouts.command.min(Duration::from_secs(180));
        match tokio::time::timeout(timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.stream = Stream::Gone;
                Err(ConnError::Lost(format!(
                    "write to {}: {}",
                    reason::target(&self.target),
                    reason::io(&e)
                )))
            }
            Err(_) => {
                self.stream = Stream::Gone;
                Err(ConnError::Lost(format!(
                    "{} stopped reading",
                    self.target.host
                )))
            }
        }
    }

    /// Runs writes and reads until the engine produces an action for the caller.
    async fn next_action(&mut self, timeout: Duration) -> Result<ClientAction, ConnError> {
        match self.next_action_within(timeout).await? {
            Some(action) => Ok(action),
            None => {
                self.stream = Stream::Gone;
                Err(ConnError::Lost(format!(
                    "{} did not answer in {}",
                    reason::target(&self.target),
                    reason::duration(timeout)
                )))
            }
        }
    }

    /// The next action, or `None` when nothing arrived within `timeout` (the connection
    /// stays usable: reads are cancel-safe).
    async fn next_action_within(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<ClientAction>, ConnError> {
        loop {
            while !self.pending.is_empty() {
                let action = self.pending.remove(0);
                match action {
                    ClientAction::Write(bytes) => self.write(&bytes).await?,
                    other => return Ok(Some(other)),
                }
            }
            let n = match tokio::time::timeout(timeout, self.stream.read(&mut self.buf)).await {
                Err(_) => return Ok(None),
                Ok(Err(e)) => {
                    self.stream = Stream::Gone;
                    return Err(ConnError::Lost(format!(
                        "read from {}: {}",
                        reason::target(&self.target),
                        reason::io(&e)
                    )));
                }
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                self.stream = Stream::Gone;
                return Err(ConnError::Lost(format!(
                    "{} closed the connection",
                    self.target.host
                )));
            }
            let actions = self.session.handle(ClientEvent::Input(&self.buf[..n]));
            self.pending.extend(actions);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use tokio::net::TcpListener;

    /// A port on 127.0.0.1 where nothing listens.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// A host that greets every connection with `greeting` and closes.
    async fn greeter(greeting: &'static str) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(greeting.as_bytes()).await;
            }
        });
        port
    }

    fn target(host: &str, port: u16) -> Target {
        Target {
            host: host.into(),
            addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into(),
        }
    }

    #[tokio::test]
    async fn a_failed_open_says_what_each_host_did() {
        let refused = closed_port();
        let busy = greeter("421 4.3.2 sink busy\r\n").await;
        let targets = [
            target("mx1.dst.test", refused),
            target("mx2.dst.test", busy),
        ];
        let failed = match Connection::open(
            &targets,
            "relay.test",
            TlsPolicy::Disabled,
            &TlsClients::new(),
            &Timeouts::default(),
        )
        .await
        {
            Ok(_) => panic!("nothing accepts"),
            Err(f) => f,
        };
        assert_eq!(failed.last_target(), Some(&targets[1]));
        assert_eq!(
            failed.reason("dst.test", false),
            format!(
                "could not connect to any MX host of dst.test: \
                 mx1.dst.test[127.0.0.1]:{refused} connection refused; \
                 mx2.dst.test[127.0.0.1]:{busy} answered 421 4.3.2 sink busy"
            )
        );
        // The busy host's reply is kept for whoever wants its code.
        let (_, e) = &failed.tried[1];
        assert!(
            matches!(e, ConnError::Unavailable { reply: Some(r), .. } if r.code == 421),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_smarthost_is_named_once() {
        let port = closed_port();
        let smarthost = target("127.0.0.1", port);
        let failed = match Connection::open(
            std::slice::from_ref(&smarthost),
            "relay.test",
            TlsPolicy::Opportunistic,
            &TlsClients::new(),
            &Timeouts::default(),
        )
        .await
        {
            Ok(_) => panic!("nothing listens"),
            Err(f) => f,
        };
        assert_eq!(
            failed.reason("dst.test", true),
            format!("could not connect to the smarthost: 127.0.0.1:{port} connection refused")
        );
    }
}
