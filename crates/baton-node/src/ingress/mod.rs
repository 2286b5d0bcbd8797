//! Inbound SMTP: one listener task per `[[smtp.listener]]`, one session task per
//! connection driving `baton_smtp::server::ServerSession` over the socket.
//!
//! The session loop is thin: feed bytes to the engine, carry out its actions (write a
//! reply, upgrade to TLS, check credentials, senders and recipients, hand a message to the
//! Committer), feed the results back. A message is answered 250 only after the Committer reports its `Enqueue`
//! committed and flushed; from the end of its data until then, the session holds an
//! activity token, so a drain waits for it.
//!
//! `limits.rs` holds what protects the node from its clients: connection capacity with
//! a reserved share, per-IP counts, AUTH failures per address, and deadlines.

pub mod bounces;
mod limits;

use crate::activity::Activity;
use crate::auth::Users;
use crate::batcher::{self, BatcherMsg};
use crate::config::{ListenerConfig, ListenerMode, SmtpConfig};
use crate::logfmt::Safe;
use crate::metrics as m;
use crate::signing::Signing;
use crate::supervisor::Slot;
use baton_delivery::date::rfc5322;
use baton_queue::clock::now_ms;
use baton_queue::state_machine::QueueReader;
use baton_queue::{NewMessage, QueueError};
use baton_smtp::address::ReversePath;
use baton_smtp::command::BodyType;
use baton_smtp::reply::Reply;
use baton_smtp::server::{
    Action, AuthResult, Envelope, Event, Phase, Refusal, ServerConfig, ServerSession,
};
use baton_smtp::{proxy, replies};
use ipnet::IpNet;
use limits::{AuthFailures, Capacity, Deadlines, RESERVED_AUTH_GRACE, Timeouts};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

/// How long a write to a client may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bodies waiting for their commit, at most (KiB).
const COMMIT_BUDGET_KIB: u32 = 512 * 1024;

/// A message answered 250 once committed, with its tenant, for the Committer.
pub struct Accepted {
    pub message: NewMessage,
    /// The AUTH user, else the sender's domain (lower-cased); "" for neither (the null
    /// sender without AUTH).
    pub tenant: String,
}

/// The tenant of mail from a session: its AUTH user, else the sender's domain,
/// lower-cased (README, "Tenants"); "" for the null sender without AUTH.
pub fn tenant_of(authenticated: Option<&str>, from: &ReversePath) -> String {
    match (authenticated, from.mailbox()) {
        (Some(user), _) => user.to_string(),
        (None, Some(sender)) => sender.domain.to_ascii_lowercase(),
        (None, None) => String::new(),
    }
}

/// What every session of a node shares.
pub struct IngressShared {
    pub smtp: SmtpConfig,
    pub users: Users,
    pub committer: Slot<BatcherMsg<Accepted>>,
    capacity: Capacity,
    auth_failures: AuthFailures,
    /// Messages between the end of their data and their commit's answer.
    pub activity: Activity,
    /// KiB of message bodies handed to the Committer and not yet committed: a burst of
    /// large messages waits here instead of filling memory.
    commit_budget: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Set while the node accepts mail (leader known, not draining).
    pub accepting: watch::Receiver<bool>,
    /// The replicated state, for the suppression lists and paused tenants.
    pub reader: QueueReader,
    /// The DKIM keys, replaced by a reload.
    pub signing: Signing,
    /// `[bounces]`, when on: mail to the bounce domain, and `X-Baton-Ref`.
    pub bounces: Option<Arc<bounces::Inbound>>,
}

impl IngressShared {
    pub fn new(
        smtp: SmtpConfig,
        users: Users,
        committer: Slot<BatcherMsg<Accepted>>,
        accepting: watch::Receiver<bool>,
        reader: QueueReader,
        signing: Signing,
        bounces: Option<Arc<bounces::Inbound>>,
    ) -> Arc<IngressShared> {
        users.warn_unrestricted();
        Arc::new(IngressShared {
            capacity: Capacity::new(smtp.max_connections, smtp.reserved()),
            auth_failures: AuthFailures::new(smtp.max_auth_failures_per_ip),
            commit_budget: Arc::new(Semaphore::new(COMMIT_BUDGET_KIB as usize)),
            smtp,
            users,
            committer,
            activity: Activity::default(),
            per_ip: Mutex::new(HashMap::new()),
            accepting,
            reader,
            signing,
            bounces,
        })
    }

    fn per_ip_enter(self: &Arc<Self>, ip: IpAddr) -> Option<PerIpGuard> {
        let ip = limits::key(ip);
        let limit = self.smtp.max_connections_per_ip;
        let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if limit > 0 && *n >= limit {
            return None;
        }
        *n += 1;
        Some(PerIpGuard {
            shared: self.clone(),
            ip,
        })
    }
}

struct PerIpGuard {
    shared: Arc<IngressShared>,
    ip: IpAddr,
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut map = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

struct SessionGauge;
impl SessionGauge {
    fn new() -> SessionGauge {
        metrics::gauge!(m::SMTP_SESSIONS).increment(1.0);
        metrics::counter!(m::SMTP_SESSIONS_TOTAL).increment(1);
        SessionGauge
    }
}
impl Drop for SessionGauge {
    fn drop(&mut self) {
        metrics::gauge!(m::SMTP_SESSIONS).decrement(1.0);
    }
}

/// A bound listener, ready to serve.
pub struct Listener {
    tcp: TcpListener,
    config: ListenerConfig,
    tls: Option<TlsAcceptor>,
}

impl Listener {
    pub async fn bind(config: ListenerConfig) -> Result<Listener, String> {
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => Some(TlsAcceptor::from(crate::tls::server_config(c, k)?)),
            _ => None,
        };
        let tcp = TcpListener::bind(config.address)
            .await
            .map_err(|e| format!("smtp listener {}: {e}", config.address))?;
        Ok(Listener { tcp, config, tls })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap_or(self.config.address)
    }

    /// Accepts until `stop` turns true, then waits for open sessions (bounded by
    /// `drain`) before returning.
    pub async fn run(
        self,
        shared: Arc<IngressShared>,
        mut stop: watch::Receiver<bool>,
        drain: Duration,
    ) {
        let listener = Arc::new(self.config);
        let tls = self.tls;
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                accepted = self.tcp.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let shared = shared.clone();
                    let listener = listener.clone();
                    let tls = tls.clone();
                    let id = ulid::Ulid::new().to_string();
                    let span = tracing::info_span!("smtp", session = %id, peer = %peer, listener = %listener.address, client = tracing::field::Empty);
                    let stop = stop.clone();
                    sessions.spawn(async move {
                        if let Err(e) = serve(tcp, peer, shared, listener, tls, stop).await {
                            tracing::debug!(error = %e, "session ended");
                        }
                    }.instrument(span));
                }
                Some(ended) = sessions.join_next(), if !sessions.is_empty() => log_panic(ended),
            }
        }
        drop(self.tcp);
        let _ = tokio::time::timeout(drain, async {
            while let Some(ended) = sessions.join_next().await {
                log_panic(ended);
            }
        })
        .await;
        // Sessions still open are slow clients, or waiting for their message's commit:
        // the latter get their answer (up to another `drain`) before the rest are cut.
        if tokio::time::timeout(drain, shared.activity.idle())
            .await
            .is_err()
        {
            tracing::warn!("messages still waiting for their commit at the end of the drain");
        }
        sessions.abort_all();
    }
}

/// A session that panicked ends alone; say so.
fn log_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        metrics::counter!(m::SESSION_CRASHES).increment(1);
        tracing::error!(error = %e, "an SMTP session panicked");
    }
}

/// The socket, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    fn io(&mut self) -> std::io::Result<&mut (dyn AsyncReadWrite + Unpin)> {
        match self {
            Conn::Plain(s) => Ok(s),
            Conn::Tls(s) => Ok(s.as_mut()),
        }
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> AsyncReadWrite for T {}

async fn serve(
    mut tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<IngressShared>,
    listener: Arc<ListenerConfig>,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let _gauge = SessionGauge::new();
    let hostname = shared.smtp.hostname.clone();

    // The PROXY header, if the listener expects one, names the real client; only the
    // load balancers in proxy_trusted may send one.
    let client = if listener.proxy_protocol {
        if !in_networks(&listener.proxy_trusted, peer.ip()) {
            metrics::counter!(m::SMTP_REFUSED_CONNECTIONS, "reason" => "proxy_untrusted")
                .increment(1);
            tracing::warn!(peer = %peer, "PROXY listener: peer not in proxy_trusted, connection closed");
            return Ok(());
        }
        match read_proxy_header(&mut tcp).await? {
            Some(addr) => addr,
            None => peer,
        }
    } else {
        peer
    };
    tracing::Span::current().record("client", tracing::field::display(client));
    let relay_allowed = in_networks(&listener.relay_networks, client.ip());
    let privileged = relay_allowed || listener.mode != ListenerMode::Relay;
    let stressed = shared.capacity.stressed();
    let Some((_slot, reserved)) = shared.capacity.enter(privileged) else {
        metrics::counter!(m::SMTP_REFUSED_CONNECTIONS, "reason" => "capacity").increment(1);
        let reply = replies::too_many_connections(&hostname);
        tcp.write_all(&reply.to_bytes()).await?;
        return Ok(());
    };
    let Some(_ip_guard) = shared.per_ip_enter(client.ip()) else {
        metrics::counter!(m::SMTP_REFUSED_CONNECTIONS, "reason" => "per_ip").increment(1);
        let reply = replies::too_many_from_address(&hostname);
        tcp.write_all(&reply.to_bytes()).await?;
        return Ok(());
    };
    if !*shared.accepting.borrow() {
        let reply = replies::not_accepting(&hostname);
        tcp.write_all(&reply.to_bytes()).await?;
        return Ok(());
    }
    if stressed {
        metrics::counter!(m::SMTP_STRESSED).increment(1);
    }
    let timeouts = Timeouts::new(&shared.smtp, stressed);
    // A reserved slot held by a client that is not trusted is for authenticating.
    let auth_by =
        (reserved && !relay_allowed).then(|| tokio::time::Instant::now() + RESERVED_AUTH_GRACE);

    let implicit = listener.mode == ListenerMode::ImplicitTls;
    let mut conn = Conn::Plain(tcp);
    if implicit {
        let Some(acceptor) = &tls else {
            return Ok(());
        };
        conn = upgrade(conn, acceptor, timeouts.command).await?;
    }
    let mut session = ServerSession::new(ServerConfig {
        hostname: hostname.clone(),
        max_message_size: shared.smtp.max_message_size,
        max_recipients: shared.smtp.max_recipients,
        max_errors: shared.smtp.max_errors,
        tls_available: tls.is_some(),
        tls_active: implicit,
        auth_enabled: !shared.users.is_empty(),
        require_auth: listener.mode == ListenerMode::Submission,
        relay_allowed,
        check_recipients: true,
        check_senders: true,
        greeting_banner: "ESMTP Baton".into(),
        local_domain: shared
            .bounces
            .as_ref()
            .map(|b| b.setup.domain.clone())
            .unwrap_or_default(),
        local_max_message_size: bounces::MAX_REPORT_SIZE,
    });

    let mut out = Vec::with_capacity(1024);
    let mut actions: VecDeque<Action> = session.handle(Event::Connected).into();
    let mut buf = vec![0u8; 64 * 1024];
    let mut deadlines = Deadlines::default();
    // A command line completed in the last read.
    let mut progressed = false;
    loop {
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Reply(reply) => reply.write_to(&mut out),
                Action::Close => {
                    flush(&mut conn, &mut out).await?;
                    if let Ok(io) = conn.io() {
                        let _ = io.shutdown().await;
                    }
                    return Ok(());
                }
                Action::StartTls => {
                    flush(&mut conn, &mut out).await?;
                    let Some(acceptor) = &tls else {
                        return Ok(());
                    };
                    conn = upgrade(conn, acceptor, timeouts.command).await?;
                    actions.extend(session.handle(Event::TlsEstablished));
                }
                Action::CheckAuth {
                    username,
                    password,
                    authzid,
                    ..
                } => {
                    flush(&mut conn, &mut out).await?;
                    let result = check_auth(&shared, client, &username, &password, &authzid).await;
                    actions.extend(session.handle(Event::AuthChecked(result)));
                }
                Action::CheckMail { from } => {
                    let tenant = tenant_of(session.authenticated(), &from);
                    let paused = (!tenant.is_empty())
                        .then(|| {
                            let index = &shared.reader.shared;
                            index.with(|i| i.tenant_paused(&tenant).map(str::to_string))
                        })
                        .flatten();
                    let verdict = match paused {
                        Some(reason) => Err(replies::tenant_paused(&tenant, &reason)),
                        None => Ok(()),
                    };
                    actions.extend(session.handle(Event::MailChecked(verdict)));
                }
                Action::CheckRcpt { from, to } => {
                    let tenant = tenant_of(session.authenticated(), &from);
                    let verdict = match &shared.bounces {
                        Some(b) if b.is_local(&to) => b.check_rcpt(&to),
                        _ => check_rcpt(&shared.reader, &tenant, &to.to_string()),
                    };
                    actions.extend(session.handle(Event::RcptChecked(verdict)));
                }
                Action::Refused(refusal) => log_refusal(&refusal, client, session.authenticated()),
                Action::Enqueue(envelope) => {
                    flush(&mut conn, &mut out).await?;
                    if let Some(b) = &shared.bounces
                        && envelope.rcpts.first().is_some_and(|r| b.is_local(r))
                    {
                        // A report: processed, never queued.
                        let _activity = shared.activity.begin();
                        let result = b.receive(envelope, client).await;
                        actions.extend(session.handle(Event::Enqueued(result)));
                        continue;
                    }
                    match commit(&shared, envelope, client, matches!(conn, Conn::Tls(_))).await {
                        Some(result) => {
                            let code = match &result {
                                Ok(_) => "250",
                                Err(r) if r.is_transient() => "4xx",
                                Err(_) => "5xx",
                            };
                            metrics::counter!(m::SMTP_REPLIES, "code" => code).increment(1);
                            actions.extend(session.handle(Event::Enqueued(result)));
                        }
                        None => {
                            // Appended but not known to be committed within the bound:
                            // close without a reply. A 451 would make the client send
                            // again a message that may yet commit.
                            return Ok(());
                        }
                    }
                }
            }
        }
        flush(&mut conn, &mut out).await?;
        let phase = session.phase();
        if phase == Phase::Closed {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        let in_body = phase == Phase::Data;
        deadlines.update(now, in_body, session.buffered() > 0, 0, progressed);
        progressed = false;
        // Stress is looked at again for every wait.
        let timeouts = Timeouts::new(&shared.smtp, shared.capacity.stressed());
        let mut deadline = deadlines.next(now, &timeouts);
        if let Some(by) = auth_by
            && session.authenticated().is_none()
        {
            deadline = deadline.min(by);
        }
        // Draining: a session between commands is told to come back later; one in the
        // middle of DATA finishes its message first.
        let may_stop = phase != Phase::Data;
        let read = {
            let io = conn.io()?;
            tokio::select! {
                r = tokio::time::timeout_at(deadline, io.read(&mut buf)) => Some(r),
                _ = async { let _ = stop.wait_for(|s| *s).await; }, if may_stop => None,
            }
        };
        match read {
            None => {
                replies::shutting_down(&hostname).write_to(&mut out);
                flush(&mut conn, &mut out).await?;
                return Ok(());
            }
            Some(Err(_)) => {
                let phase = if phase == Phase::Data {
                    "data"
                } else {
                    "command"
                };
                metrics::counter!(m::SMTP_TIMEOUTS, "phase" => phase).increment(1);
                tracing::info!(client = %client, phase, "deadline passed: 421 4.4.2 and close");
                actions.extend(session.handle(Event::Timeout));
            }
            Some(Ok(Ok(0))) => return Ok(()),
            Some(Ok(Ok(n))) => {
                if in_body {
                    deadlines.update(tokio::time::Instant::now(), true, false, n, false);
                }
                let before = actions.len();
                actions.extend(session.handle(Event::Input(&buf[..n])));
                progressed = actions.len() > before;
            }
            Some(Ok(Err(e))) => return Err(e),
        }
    }
}

/// A recipient on the global suppression list, or on `tenant`'s: the reply that refuses
/// it.
fn check_rcpt(reader: &QueueReader, tenant: &str, address: &str) -> Result<(), Reply> {
    let listed = reader.is_suppressed(address).and_then(|global| {
        let for_tenant =
            !global && !tenant.is_empty() && reader.is_suppressed_for(tenant, address)?;
        Ok((global, for_tenant))
    });
    match listed {
        Ok((true, _)) => Err(replies::suppressed(address)),
        Ok((false, true)) => Err(replies::suppressed_for_sender(address)),
        Ok((false, false)) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the suppression list");
            Err(replies::suppression_unreadable())
        }
    }
}

/// Checks credentials, unless the client address has failed too often lately.
async fn check_auth(
    shared: &IngressShared,
    client: SocketAddr,
    username: &str,
    password: &str,
    authzid: &str,
) -> AuthResult {
    if !shared
        .auth_failures
        .begin(client.ip(), tokio::time::Instant::now())
    {
        metrics::counter!(m::SMTP_AUTH_THROTTLED).increment(1);
        tracing::warn!(client = %client, user = %Safe(username), "authentication refused: too many failures from this address");
        return AuthResult::Refused(replies::auth_throttled(&shared.smtp.hostname));
    }
    let ok = (authzid.is_empty() || authzid == username)
        && shared.users.verify(username, password).await;
    if ok {
        shared.auth_failures.succeeded(client.ip());
        return AuthResult::Valid {
            allowed_from: shared.users.allowed_from(username),
        };
    }
    tracing::info!(user = %Safe(username), client = %client, "authentication failed");
    AuthResult::Invalid
}

/// One line per refused message or sender.
fn log_refusal(r: &Refusal, client: SocketAddr, user: Option<&str>) {
    metrics::counter!(m::SMTP_REFUSED_MESSAGES).increment(1);
    tracing::info!(
        from = %Safe(&r.from),
        nrcpt = r.rcpts,
        size = r.size,
        client = %client,
        user = %Safe(user.unwrap_or("")),
        reply = %Safe(r.reply.to_string().trim_end()),
        "message refused"
    );
}

/// Writes the pending replies; a client that stops reading is dropped after a while.
async fn flush(conn: &mut Conn, out: &mut Vec<u8>) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let io = conn.io()?;
    let write = async {
        io.write_all(out).await?;
        io.flush().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading")
        })??;
    out.clear();
    Ok(())
}

async fn upgrade(conn: Conn, acceptor: &TlsAcceptor, timeout: Duration) -> std::io::Result<Conn> {
    let Conn::Plain(tcp) = conn else {
        return Err(std::io::Error::other("TLS is already active"));
    };
    let stream = tokio::time::timeout(timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    Ok(Conn::Tls(Box::new(stream)))
}

/// Reads a PROXY v1/v2 header and nothing after it (the next bytes may be a TLS
/// ClientHello): peek until the header parses, then consume exactly its length.
async fn read_proxy_header(tcp: &mut TcpStream) -> std::io::Result<Option<SocketAddr>> {
    let mut buf = vec![0u8; 16 + 65_535];
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no PROXY header"))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        match proxy::parse(&buf[..n]) {
            Ok(Some((header, used))) => {
                tcp.read_exact(&mut buf[..used]).await?;
                return Ok(header.source);
            }
            Ok(None) if n == seen => {
                // Nothing new since the last peek: wait for more to arrive.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(None) => seen = n,
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("PROXY header: {e}"),
                ));
            }
        }
    }
}

fn in_networks(networks: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    networks.iter().any(|n| n.contains(&ip))
}

/// Hands the message to the Committer; `None` when the commit's outcome is unknown.
async fn commit(
    shared: &IngressShared,
    envelope: Envelope,
    client: SocketAddr,
    tls: bool,
) -> Option<Result<String, Reply>> {
    // From the end of the data until the answer: a drain waits for this.
    let _activity = shared.activity.begin();
    let id = ulid::Ulid::new().to_string();
    let tenant = tenant_of(envelope.authenticated.as_deref(), &envelope.from);
    let from = envelope.from.to_string();
    let mut message = build_message(&shared.smtp.hostname, &id, envelope, client, tls);
    if let Some(bounces) = &shared.bounces {
        match bounces
            .setup
            .reference_header(&id, message.recipients.len())
        {
            Some(header) => {
                message.body.splice(0..0, header.into_bytes());
            }
            // Moments after a cluster forms, before the leader's bounce key is
            // committed: mail accepted now could never be matched to its bounces, so
            // the client is asked to come back (nothing is stored).
            None => return Some(Err(replies::queue_unavailable())),
        }
    }
    // Signed last, over Baton's own fields too; a large body is hashed off the runtime.
    let keys = shared.signing.keys();
    let (signed, body) = if !keys.active() {
        (Ok(Vec::new()), std::mem::take(&mut message.body))
    } else {
        let tenant = tenant.clone();
        let body = std::mem::take(&mut message.body);
        match tokio::task::spawn_blocking(move || (keys.sign(&tenant, &body), body)).await {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "DKIM signing task failed");
                return Some(Err(replies::queue_failed()));
            }
        }
    };
    message.body = body;
    match signed {
        Ok(fields) if !fields.is_empty() => {
            let mut body = fields;
            body.extend_from_slice(&message.body);
            message.body = body;
        }
        Ok(_) => {}
        Err(reply) => {
            tracing::info!(id = %id, from = %Safe(&from), client = %client, tenant = %Safe(&tenant), reply = %Safe(reply.to_string().trim_end()), "message refused: no DKIM key aligned with From");
            return Some(Err(reply));
        }
    }
    let (size, nrcpt) = (message.body.len(), message.recipients.len());
    let kib = (message.body.len() / 1024).clamp(1, COMMIT_BUDGET_KIB as usize) as u32;
    let budget = tokio::time::timeout(
        Duration::from_secs(30),
        shared.commit_budget.acquire_many(kib),
    );
    let Ok(Ok(_budget)) = budget.await else {
        // Nothing was handed over: 451 is truthful.
        return Some(Err(replies::queue_busy()));
    };
    let accepted = Accepted {
        message,
        tenant: tenant.clone(),
    };
    match batcher::submit(&shared.committer, accepted, shared.smtp.commit_timeout).await? {
        Ok(()) => {
            metrics::counter!(m::RECEIVED).increment(1);
            tracing::info!(id = %id, from = %Safe(&from), size, nrcpt, client = %client, tenant = %Safe(&tenant), tls, "received");
            Some(Ok(id))
        }
        // Not stored: the client may try again, here or elsewhere.
        Err(e @ (QueueError::Unavailable(_) | QueueError::NotLeader { .. })) => {
            tracing::warn!(error = %e, "enqueue refused");
            Some(Err(replies::queue_unavailable()))
        }
        Err(e @ QueueError::Fatal(_)) => {
            tracing::error!(error = %e, "enqueue failed: storage error");
            Some(Err(replies::queue_failed()))
        }
    }
}

/// The queued form of a received message, with our `Received:` header on top.
fn build_message(
    hostname: &str,
    id: &str,
    env: Envelope,
    client: SocketAddr,
    tls: bool,
) -> NewMessage {
    let protocol = match (env.esmtp, tls, env.authenticated.is_some()) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    };
    let now = now_ms();
    let helo: String = env
        .helo
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let mut received = format!(
        "Received: from {helo} ([{}])\r\n\tby {hostname} (Baton) with {protocol} id {id}",
        client.ip()
    );
    if let [only] = env.rcpts.as_slice() {
        received.push_str(&format!("\r\n\tfor <{only}>"));
    }
    received.push_str(&format!("; {}\r\n", rfc5322(now / 1000)));
    let mut body = Vec::with_capacity(received.len() + env.body.len());
    body.extend_from_slice(received.as_bytes());
    body.extend_from_slice(&env.body);
    let eight_bit = env.body_type != BodyType::SevenBit || env.body.iter().any(|b| *b >= 0x80);
    NewMessage {
        id: id.to_string(),
        sender: env
            .from
            .mailbox()
            .map(|m| m.to_string())
            .unwrap_or_default(),
        recipients: env.rcpts.iter().map(|r| r.to_string()).collect(),
        body,
        received_at_ms: now,
        eight_bit,
        smtputf8: env.smtputf8,
    }
}
