//! A small, fast SMTP sink server used by end-to-end tests and the load tool.
//!
//! The sink accepts mail on a TCP listener (only loopback addresses are
//! intended), supports PIPELINING, and decides per recipient what to answer
//! based on the recipient's local part:
//!
//! | local part contains | RCPT reply                      | final DATA reply                 |
//! |---------------------|---------------------------------|----------------------------------|
//! | `reject`            | `550 5.1.1 no such user`        |                                  |
//! | `tempfail`          | `451 4.3.0 try later` (always)  |                                  |
//! | `deferonce`         | `451 4.3.0` first time, then 250|                                  |
//! | `datafail`          | 250                             | `554 5.6.0 content rejected`     |
//! | anything else       | 250                             | `250 2.0.0 Ok: accepted as <seq>`|
//!
//! Accepted messages are written atomically to `<dir>/<seq>.eml` when a
//! directory is configured; otherwise they are only counted (and handed to
//! the optional [`SinkConfig::on_message`] callback).
//!
//! [`SinkConfig::rules`] (see [`crate::rules`]) script other replies per
//! stage; they can be replaced while the sink runs
//! ([`SinkHandle::set_rules`]).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::rules::{Hit, RuleState, Rules, Stage, now_ms};

/// Maximum message size advertised in EHLO (`SIZE`) and enforced.
pub const MAX_MESSAGE_SIZE: usize = 104_857_600;
/// Maximum length of a command line (RFC 5321 says 512; be generous).
const MAX_COMMAND_LINE: usize = 4096;
/// Maximum length of a single DATA line we buffer before giving up.
const MAX_DATA_LINE: usize = 1 << 20;
/// Maximum recipients per transaction.
const MAX_RCPTS: usize = 1000;
/// Maximum number of commands per connection (keeps every loop bounded).
const MAX_COMMANDS_PER_CONN: u64 = 10_000_000;
/// Read buffer chunk size.
const READ_CHUNK: usize = 64 * 1024;

/// A message that the sink accepted (final 250 after DATA).
#[derive(Debug)]
pub struct AcceptedMessage<'a> {
    /// Sink-process-wide sequence number (starts at 1).
    pub seq: u64,
    /// Reverse path without angle brackets (empty for the null sender).
    pub mail_from: &'a str,
    /// Accepted recipients, without angle brackets.
    pub rcpts: &'a [String],
    /// HELO/EHLO name given by the client.
    pub helo: &'a str,
    /// Peer address of the connection.
    pub peer: SocketAddr,
    /// Message bytes exactly as received, after dot-unstuffing
    /// (without the terminating `.` line).
    pub data: &'a [u8],
}

/// Callback invoked synchronously for each accepted message, before the
/// final 250 reply is sent. Must be cheap.
pub type OnMessage = Arc<dyn Fn(&AcceptedMessage<'_>) + Send + Sync>;

/// Configuration of a sink server.
#[derive(Clone)]
pub struct SinkConfig {
    /// Address to bind; port 0 picks an ephemeral port (see [`SinkHandle::local_addr`]).
    pub listen: SocketAddr,
    /// Directory for `<seq>.eml` files; `None` means counting only.
    pub dir: Option<PathBuf>,
    /// Greeting code; anything other than 220 makes the sink answer
    /// `<code> <class>.3.2 sink busy` and close the connection.
    pub greeting_code: u16,
    /// Host name used in the greeting and EHLO reply.
    pub hostname: String,
    /// Log one line per accepted message to stderr.
    pub verbose: bool,
    /// Maximum concurrent connections; further ones get `421` and are closed.
    pub max_connections: usize,
    /// Idle timeout for reads on a connection.
    pub idle_timeout: Duration,
    /// Optional callback per accepted message.
    pub on_message: Option<OnMessage>,
    /// Scripted replies (empty: none).
    pub rules: Rules,
    /// Print one line per rule hit and per accepted message to stdout
    /// (`hit rule=<i> ...`, `accepted seq=<n> t=<ms>`).
    pub events: bool,
}

impl SinkConfig {
    /// Defaults: greeting 220, counting mode, hostname `sink.test`.
    pub fn new(listen: SocketAddr) -> Self {
        SinkConfig {
            listen,
            dir: None,
            greeting_code: 220,
            hostname: "sink.test".to_string(),
            verbose: false,
            max_connections: 4096,
            idle_timeout: Duration::from_secs(300),
            on_message: None,
            rules: Rules::default(),
            events: false,
        }
    }
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("listen", &self.listen)
            .field("dir", &self.dir)
            .field("greeting_code", &self.greeting_code)
            .field("hostname", &self.hostname)
            .field("verbose", &self.verbose)
            .field("max_connections", &self.max_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("on_message", &self.on_message.is_some())
            .field("rules", &self.rules.rules.len())
            .field("events", &self.events)
            .finish()
    }
}

/// Counters maintained by a running sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Connections accepted (including ones refused by greeting/limit).
    pub connections: AtomicU64,
    /// Messages accepted with a final 250.
    pub accepted: AtomicU64,
    /// Bytes of accepted message data.
    pub accepted_bytes: AtomicU64,
    /// Recipients answered with 5xx.
    pub rcpt_rejected: AtomicU64,
    /// Recipients answered with 4xx.
    pub rcpt_tempfailed: AtomicU64,
    /// Transactions whose final DATA reply was a failure.
    pub data_failed: AtomicU64,
}

impl SinkStats {
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

struct Shared {
    cfg: SinkConfig,
    stats: Arc<SinkStats>,
    seq: AtomicU64,
    active: AtomicUsize,
    deferred_once: Mutex<HashSet<String>>,
    rules: Mutex<RuleState>,
    /// False while there are no rules: the fast path takes no lock.
    has_rules: AtomicBool,
}

impl Shared {
    fn rules(&self) -> std::sync::MutexGuard<'_, RuleState> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Check the rules of `stage`; log the hit when events are on.
    fn check(&self, stage: Stage, rcpts: &[String], peer: SocketAddr) -> Option<Hit> {
        if !self.has_rules.load(Ordering::Relaxed) {
            return None;
        }
        let sessions = self.active.load(Ordering::Relaxed);
        let hit = {
            let mut st = self.rules();
            if st.is_empty() {
                return None;
            }
            st.check(stage, rcpts, sessions, now_ms())?
        };
        self.log_hit(&hit, stage, rcpts, peer);
        Some(hit)
    }

    fn log_hit(&self, hit: &Hit, stage: Stage, rcpts: &[String], peer: SocketAddr) {
        if self.cfg.events {
            event_line(&format!(
                "hit rule={} stage={} code={} t={} peer={peer} rcpts={:?}",
                hit.index,
                stage.name(),
                hit.code,
                now_ms(),
                rcpts.join(",")
            ));
        }
    }
}

/// One line on stdout (line-buffered), ignoring a closed stdout.
fn event_line(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Handle to a running sink. Dropping it does NOT stop the sink; call
/// [`SinkHandle::shutdown`].
pub struct SinkHandle {
    local_addr: SocketAddr,
    stats: Arc<SinkStats>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl SinkHandle {
    /// The bound address (useful when listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<SinkStats> {
        self.stats.clone()
    }

    /// Replace the rules; their counters (windows, hits) start from zero.
    /// Commands already answered are not affected.
    pub fn set_rules(&self, rules: Rules) {
        let mut st = self.shared.rules();
        self.shared
            .has_rules
            .store(!rules.rules.is_empty(), Ordering::Relaxed);
        *st = RuleState::new(rules);
    }

    /// How often each rule answered since the rules were last set.
    pub fn rule_hits(&self) -> Vec<u64> {
        self.shared.rules().hits()
    }

    /// Wait for the accept loop to end without consuming the handle.
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }

    /// Stop accepting new connections (existing connections finish on their own).
    pub fn shutdown(&self) {
        self.task.abort();
    }

    /// Wait for the accept loop to end (only ends on shutdown or a fatal accept error).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Bind the listener and spawn the accept loop on the current tokio runtime.
/// Returns once the socket is bound.
pub async fn start_sink(cfg: SinkConfig) -> io::Result<SinkHandle> {
    if let Some(dir) = &cfg.dir {
        tokio::fs::create_dir_all(dir).await?;
    }
    let listener = TcpListener::bind(cfg.listen).await?;
    let local_addr = listener.local_addr()?;
    let stats = Arc::new(SinkStats::default());
    let rules = Mutex::new(RuleState::new(cfg.rules.clone()));
    let shared = Arc::new(Shared {
        rules,
        has_rules: AtomicBool::new(!cfg.rules.rules.is_empty()),
        cfg,
        stats: stats.clone(),
        seq: AtomicU64::new(0),
        active: AtomicUsize::new(0),
        deferred_once: Mutex::new(HashSet::new()),
    });
    let task = tokio::spawn(accept_loop(listener, shared.clone()));
    Ok(SinkHandle {
        local_addr,
        stats,
        shared,
        task,
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut consecutive_errors = 0u32;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                consecutive_errors = 0;
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(stream, peer, shared).await;
                });
            }
            Err(e) => {
                // Transient errors (EMFILE, ECONNABORTED): back off a little;
                // give up after many in a row so the loop stays bounded.
                consecutive_errors += 1;
                if consecutive_errors > 1000 {
                    eprintln!("baton-sink: giving up after accept errors: {e}");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

struct ActiveGuard<'a>(&'a AtomicUsize);
impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Command,
    Data,
}

enum Action {
    Continue,
    Close,
    /// End of DATA reached: deliver the current transaction.
    EndOfData,
}

/// Per-connection SMTP session state. Buffers are reused across transactions.
struct Session {
    state: State,
    helo: String,
    mail_from: Option<String>,
    rcpts: Vec<String>,
    datafail: bool,
    msg: Vec<u8>,
    oversize: bool,
}

impl Session {
    fn reset_txn(&mut self) {
        self.mail_from = None;
        self.rcpts.clear();
        self.datafail = false;
        self.msg.clear();
        self.oversize = false;
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> io::Result<()> {
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    let active = shared.active.fetch_add(1, Ordering::Relaxed) + 1;
    let _guard = ActiveGuard(&shared.active);
    let cfg = &shared.cfg;

    if active > cfg.max_connections {
        stream
            .write_all(b"421 4.3.2 too many connections\r\n")
            .await?;
        return Ok(());
    }
    if let Some(hit) = shared.check(Stage::Connect, &[], peer) {
        stream.write_all(hit.reply.as_bytes()).await?;
        let _ = stream.shutdown().await;
        return Ok(());
    }
    if cfg.greeting_code != 220 {
        let class = match cfg.greeting_code / 100 {
            5 => 5,
            _ => 4,
        };
        let line = format!("{} {}.3.2 sink busy\r\n", cfg.greeting_code, class);
        stream.write_all(line.as_bytes()).await?;
        let _ = stream.shutdown().await;
        return Ok(());
    }
    let greeting = format!("220 {} ESMTP baton-sink\r\n", cfg.hostname);
    stream.write_all(greeting.as_bytes()).await?;

    let mut inbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut pos = 0usize;
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut sess = Session {
        state: State::Command,
        helo: String::new(),
        mail_from: None,
        rcpts: Vec::new(),
        datafail: false,
        msg: Vec::new(),
        oversize: false,
    };
    let mut commands = 0u64;

    loop {
        // Process every complete line already buffered.
        while let Some(nl) = find_newline(&inbuf[pos..]) {
            let line = &inbuf[pos..pos + nl + 1];
            pos += nl + 1;
            let action = match sess.state {
                State::Command => {
                    commands += 1;
                    if commands > MAX_COMMANDS_PER_CONN {
                        out.extend_from_slice(b"421 4.7.0 too many commands\r\n");
                        Action::Close
                    } else {
                        handle_command(line, &mut sess, &shared, peer, &mut out)
                    }
                }
                State::Data => handle_data_line(line, &mut sess),
            };
            match action {
                Action::Continue => {}
                Action::Close => {
                    stream.write_all(&out).await?;
                    let _ = stream.shutdown().await;
                    return Ok(());
                }
                Action::EndOfData => {
                    if finish_data(&mut sess, peer, &shared, &mut out).await {
                        stream.write_all(&out).await?;
                        let _ = stream.shutdown().await;
                        return Ok(());
                    }
                }
            }
        }
        // Input drained: flush pending replies in order.
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        // Compact the buffer.
        if pos == inbuf.len() {
            inbuf.clear();
            pos = 0;
        } else if pos > 0 {
            inbuf.drain(..pos);
            pos = 0;
        }
        let limit = match sess.state {
            State::Command => MAX_COMMAND_LINE,
            State::Data => MAX_DATA_LINE,
        };
        if inbuf.len() > limit {
            stream
                .write_all(b"500 5.5.2 line too long, closing\r\n")
                .await?;
            return Ok(());
        }
        if inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
            inbuf.reserve(READ_CHUNK);
        }
        let n = match tokio::time::timeout(cfg.idle_timeout, stream.read_buf(&mut inbuf)).await {
            Ok(r) => r?,
            Err(_) => {
                let _ = stream
                    .write_all(b"421 4.4.2 idle timeout, closing\r\n")
                    .await;
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
    }
}

#[inline]
fn find_newline(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// Strip the trailing CRLF (or bare LF).
fn trim_eol(line: &[u8]) -> &[u8] {
    let mut l = line;
    if let [rest @ .., b'\n'] = l {
        l = rest;
    }
    if let [rest @ .., b'\r'] = l {
        l = rest;
    }
    l
}

fn starts_with_ci(hay: &[u8], prefix: &[u8]) -> bool {
    hay.len() >= prefix.len() && hay[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Parse `FROM:<addr> params` / `TO:<addr> params` (after the verb).
/// Returns the address without brackets and the remaining parameters.
fn parse_path<'a>(arg: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let arg = arg.trim_start();
    if arg.len() < keyword.len() || !arg[..keyword.len()].eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        let addr = &inner[..end];
        // Drop a source route (`@a,@b:user@host`) if present.
        let addr = match (addr.starts_with('@'), addr.find(':')) {
            (true, Some(i)) => &addr[i + 1..],
            _ => addr,
        };
        Some((addr, inner[end + 1..].trim()))
    } else {
        let end = rest.find(' ').unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        Some((&rest[..end], rest[end..].trim()))
    }
}

fn local_part(addr: &str) -> &str {
    match addr.rfind('@') {
        Some(i) => &addr[..i],
        None => addr,
    }
}

fn handle_command(
    line: &[u8],
    sess: &mut Session,
    shared: &Shared,
    peer: SocketAddr,
    out: &mut Vec<u8>,
) -> Action {
    let raw = trim_eol(line);
    let Ok(cmd) = std::str::from_utf8(raw) else {
        out.extend_from_slice(b"500 5.5.2 invalid command encoding\r\n");
        return Action::Continue;
    };
    let (verb, arg) = match cmd.find(' ') {
        Some(i) => (&cmd[..i], &cmd[i + 1..]),
        None => (cmd, ""),
    };
    let verb_b = verb.as_bytes();
    let is = |v: &[u8]| verb_b.eq_ignore_ascii_case(v);

    if is(b"EHLO") || is(b"HELO") {
        let name = arg.trim();
        if name.is_empty() {
            out.extend_from_slice(b"501 5.5.4 hostname required\r\n");
            return Action::Continue;
        }
        sess.reset_txn();
        sess.helo.clear();
        if let Some(hit) = shared.check(Stage::Ehlo, &[], peer) {
            return answer(hit, out);
        }
        sess.helo.push_str(name);
        if is(b"EHLO") {
            let _ = write!(
                Bytes(out),
                "250-{} greets {}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
                 250-ENHANCEDSTATUSCODES\r\n250 SIZE {}\r\n",
                shared.cfg.hostname,
                name,
                MAX_MESSAGE_SIZE
            );
        } else {
            let _ = write!(
                Bytes(out),
                "250 {} greets {}\r\n",
                shared.cfg.hostname,
                name
            );
        }
    } else if is(b"MAIL") {
        if sess.helo.is_empty() {
            out.extend_from_slice(b"503 5.5.1 send EHLO/HELO first\r\n");
        } else if sess.mail_from.is_some() {
            out.extend_from_slice(b"503 5.5.1 nested MAIL command\r\n");
        } else {
            match parse_path(arg, "FROM:") {
                None => out.extend_from_slice(b"501 5.5.4 syntax: MAIL FROM:<address>\r\n"),
                Some((addr, params)) => {
                    let too_big = params.split_ascii_whitespace().any(|p| {
                        starts_with_ci(p.as_bytes(), b"SIZE=")
                            && p[5..]
                                .parse::<u64>()
                                .is_ok_and(|s| s > MAX_MESSAGE_SIZE as u64)
                    });
                    if too_big {
                        out.extend_from_slice(b"552 5.3.4 message size exceeds limit\r\n");
                    } else if let Some(hit) = shared.check(Stage::Mail, &[], peer) {
                        return answer(hit, out);
                    } else {
                        sess.reset_txn();
                        sess.mail_from = Some(addr.to_string());
                        out.extend_from_slice(b"250 2.1.0 Ok\r\n");
                    }
                }
            }
        }
    } else if is(b"RCPT") {
        if sess.mail_from.is_none() {
            out.extend_from_slice(b"503 5.5.1 need MAIL first\r\n");
        } else {
            match parse_path(arg, "TO:") {
                None => out.extend_from_slice(b"501 5.5.4 syntax: RCPT TO:<address>\r\n"),
                Some(("", _)) => out.extend_from_slice(b"501 5.1.3 empty recipient\r\n"),
                Some((addr, _)) => {
                    let lp = local_part(addr).to_ascii_lowercase();
                    let stats = &shared.stats;
                    if sess.rcpts.len() >= MAX_RCPTS {
                        out.extend_from_slice(b"452 4.5.3 too many recipients\r\n");
                    } else if let Some(hit) = shared
                        .has_rules
                        .load(Ordering::Relaxed)
                        .then(|| shared.check(Stage::Rcpt, &[addr.to_string()], peer))
                        .flatten()
                    {
                        count_refusal(stats, hit.code);
                        return answer(hit, out);
                    } else if lp.contains("reject") {
                        stats.rcpt_rejected.fetch_add(1, Ordering::Relaxed);
                        out.extend_from_slice(b"550 5.1.1 no such user\r\n");
                    } else if lp.contains("tempfail")
                        || (lp.contains("deferonce") && first_sighting(shared, addr))
                    {
                        stats.rcpt_tempfailed.fetch_add(1, Ordering::Relaxed);
                        out.extend_from_slice(b"451 4.3.0 try later\r\n");
                    } else {
                        if lp.contains("datafail") {
                            sess.datafail = true;
                        }
                        sess.rcpts.push(addr.to_string());
                        out.extend_from_slice(b"250 2.1.5 Ok\r\n");
                    }
                }
            }
        }
    } else if is(b"DATA") {
        if sess.mail_from.is_none() {
            out.extend_from_slice(b"503 5.5.1 need MAIL first\r\n");
        } else if sess.rcpts.is_empty() {
            out.extend_from_slice(b"554 5.5.1 no valid recipients\r\n");
        } else {
            sess.state = State::Data;
            sess.msg.clear();
            sess.oversize = false;
            out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
        }
    } else if is(b"RSET") {
        sess.reset_txn();
        out.extend_from_slice(b"250 2.0.0 Ok\r\n");
    } else if is(b"NOOP") {
        out.extend_from_slice(b"250 2.0.0 Ok\r\n");
    } else if is(b"QUIT") {
        out.extend_from_slice(b"221 2.0.0 Bye\r\n");
        return Action::Close;
    } else if is(b"VRFY") {
        out.extend_from_slice(b"252 2.5.2 cannot VRFY\r\n");
    } else if is(b"STARTTLS") || is(b"BDAT") || is(b"AUTH") {
        out.extend_from_slice(b"502 5.5.1 not implemented\r\n");
    } else {
        out.extend_from_slice(b"500 5.5.2 command unrecognized\r\n");
    }
    Action::Continue
}

/// Write a rule's reply; close the connection after it when the rule says so.
fn answer(hit: Hit, out: &mut Vec<u8>) -> Action {
    out.extend_from_slice(hit.reply.as_bytes());
    if hit.close {
        Action::Close
    } else {
        Action::Continue
    }
}

fn count_refusal(stats: &SinkStats, code: u16) {
    if code >= 500 {
        stats.rcpt_rejected.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.rcpt_tempfailed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Returns true the first time `addr` (case-insensitively) is seen.
fn first_sighting(shared: &Shared, addr: &str) -> bool {
    let key = addr.to_ascii_lowercase();
    let mut set = shared
        .deferred_once
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    set.insert(key)
}

fn handle_data_line(line: &[u8], sess: &mut Session) -> Action {
    let content = trim_eol(line);
    if content == b"." {
        return Action::EndOfData;
    }
    // Dot-unstuffing: a leading '.' is removed.
    let line = line.strip_prefix(b".").unwrap_or(line);
    if sess.oversize || sess.msg.len() + line.len() > MAX_MESSAGE_SIZE {
        sess.oversize = true;
    } else {
        sess.msg.extend_from_slice(line);
    }
    Action::Continue
}

/// Answer the end of DATA; returns true when the connection must be closed.
async fn finish_data(
    sess: &mut Session,
    peer: SocketAddr,
    shared: &Shared,
    out: &mut Vec<u8>,
) -> bool {
    sess.state = State::Command;
    let stats = &shared.stats;
    // Decide on the data-stage rules and count the message in the rate
    // windows under one lock, so a window never accepts more than its rate.
    let mut hit = None;
    if !sess.oversize && !sess.datafail && shared.has_rules.load(Ordering::Relaxed) {
        let sessions = shared.active.load(Ordering::Relaxed);
        let mut st = shared.rules();
        if !st.is_empty() {
            let now = now_ms();
            hit = st.check(Stage::Data, &sess.rcpts, sessions, now);
            if hit.is_none() {
                st.record_accept(&sess.rcpts, now);
            }
        }
    }
    if let Some(hit) = hit {
        shared.log_hit(&hit, Stage::Data, &sess.rcpts, peer);
        stats.data_failed.fetch_add(1, Ordering::Relaxed);
        out.extend_from_slice(hit.reply.as_bytes());
        sess.reset_txn();
        return hit.close;
    }
    if sess.oversize {
        stats.data_failed.fetch_add(1, Ordering::Relaxed);
        out.extend_from_slice(b"552 5.3.4 message size exceeds limit\r\n");
    } else if sess.datafail {
        stats.data_failed.fetch_add(1, Ordering::Relaxed);
        out.extend_from_slice(b"554 5.6.0 content rejected\r\n");
    } else {
        let seq = shared.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mail_from = sess.mail_from.as_deref().unwrap_or("");
        let written = match &shared.cfg.dir {
            None => Ok(()),
            Some(dir) => {
                write_eml(
                    dir,
                    seq,
                    mail_from,
                    &sess.rcpts,
                    &sess.helo,
                    peer,
                    &sess.msg,
                )
                .await
            }
        };
        match written {
            Ok(()) => {
                if let Some(cb) = &shared.cfg.on_message {
                    cb(&AcceptedMessage {
                        seq,
                        mail_from,
                        rcpts: &sess.rcpts,
                        helo: &sess.helo,
                        peer,
                        data: &sess.msg,
                    });
                }
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                stats
                    .accepted_bytes
                    .fetch_add(sess.msg.len() as u64, Ordering::Relaxed);
                if shared.cfg.verbose {
                    eprintln!(
                        "baton-sink: accepted {seq} from=<{mail_from}> rcpts={} size={} peer={peer}",
                        sess.rcpts.join(","),
                        sess.msg.len()
                    );
                }
                if shared.cfg.events {
                    event_line(&format!("accepted seq={seq} t={}", now_ms()));
                }
                let _ = write!(Bytes(out), "250 2.0.0 Ok: accepted as {seq}\r\n");
            }
            Err(e) => {
                eprintln!("baton-sink: failed to write message {seq}: {e}");
                stats.data_failed.fetch_add(1, Ordering::Relaxed);
                out.extend_from_slice(b"451 4.3.0 local error writing message\r\n");
            }
        }
    }
    sess.reset_txn();
    false
}

async fn write_eml(
    dir: &std::path::Path,
    seq: u64,
    mail_from: &str,
    rcpts: &[String],
    helo: &str,
    peer: SocketAddr,
    msg: &[u8],
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(msg.len() + 256);
    let _ = write!(Bytes(&mut buf), "X-Sink-Mail-From: {mail_from}\r\n");
    for r in rcpts {
        let _ = write!(Bytes(&mut buf), "X-Sink-Rcpt-To: {r}\r\n");
    }
    let _ = write!(
        Bytes(&mut buf),
        "X-Sink-Helo: {helo}\r\nX-Sink-Peer: {peer}\r\n"
    );
    buf.extend_from_slice(msg);
    let tmp = dir.join(format!(".{seq}.eml.tmp"));
    let dst = dir.join(format!("{seq}.eml"));
    tokio::fs::write(&tmp, buf).await?;
    tokio::fs::rename(&tmp, &dst).await
}

/// `fmt::Write` adapter over a byte vector.
struct Bytes<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Find the value of header `name` (case-insensitive) in the header section
/// of `data` (stops at the first empty line). Folded headers are not joined.
pub fn find_header<'a>(data: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let name = name.as_bytes();
    let mut rest = data;
    // Bounded by the data length: every iteration consumes at least one byte.
    while !rest.is_empty() {
        let end = find_newline(rest).map_or(rest.len(), |i| i + 1);
        let line = trim_eol(&rest[..end]);
        if line.is_empty() {
            return None;
        }
        if line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name)
        {
            return Some(line[name.len() + 1..].trim_ascii());
        }
        rest = &rest[end..];
    }
    None
}

/// Parse the `X-Load-Seq` header used by the load tool.
pub fn load_seq(data: &[u8]) -> Option<u64> {
    let v = find_header(data, "X-Load-Seq")?;
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_paths() {
        assert_eq!(parse_path("FROM:<a@b>", "FROM:"), Some(("a@b", "")));
        assert_eq!(
            parse_path("from: <a@b> SIZE=10 BODY=8BITMIME", "FROM:"),
            Some(("a@b", "SIZE=10 BODY=8BITMIME"))
        );
        assert_eq!(parse_path("FROM:<>", "FROM:"), Some(("", "")));
        assert_eq!(parse_path("TO:<@x,@y:u@h>", "TO:"), Some(("u@h", "")));
        assert_eq!(parse_path("TO:u@h", "TO:"), Some(("u@h", "")));
        assert_eq!(parse_path("X:<a>", "TO:"), None);
    }

    #[test]
    fn headers() {
        let m = b"From: a\r\nx-load-seq:  42 \r\nSubject: s\r\n\r\nX-Load-Seq: 7\r\n";
        assert_eq!(load_seq(m), Some(42));
        assert_eq!(load_seq(b"From: a\r\n\r\nX-Load-Seq: 7\r\n"), None);
    }
}
