//! The SMTP side: C connections push N numbered messages through the target
//! and re-send what was not answered `250`, like a real client would. With
//! `--kill-after-messages` they take sequence numbers only below a gate that
//! the chaos task raises (see `pacing.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_load::message::{MessageSpec, build_message};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout_at;

use crate::pacing::{Take, take};

/// Settings of the SMTP clients.
pub struct ClientConfig {
    pub target: SocketAddr,
    pub messages: u64,
    pub size: usize,
    pub connections: usize,
    pub from: String,
    pub rcpt_domain: String,
    pub helo: String,
    /// How long to wait for any single reply (a final-dot reply that does not
    /// come in time makes the attempt ambiguous).
    pub reply_timeout: Duration,
    /// Attempts per message (connects included) before giving up on it.
    pub max_attempts: u32,
}

/// Shared state of the clients, read by the chaos task and the report.
pub struct Ingest {
    pub cfg: ClientConfig,
    pub epoch: Instant,
    pub deadline: tokio::time::Instant,
    /// The next sequence number to take (never above `messages`).
    next: AtomicU64,
    /// Clients take only sequence numbers below this (`messages` without pacing).
    gate: watch::Sender<u64>,
    /// Messages settled: answered 250 or given up on.
    settled: watch::Sender<u64>,
    /// Set once a client stopped at the gate because of the deadline.
    gate_timed_out: AtomicBool,
    /// Per message: answered 250.
    pub accepted: Vec<AtomicBool>,
    /// Per message: attempts that got no reply at all after the final dot.
    pub ambiguous: Vec<AtomicU32>,
    pub accepted_count: AtomicU64,
    /// Messages given up on (5xx, or out of attempts / time).
    pub failed: AtomicU64,
    /// Re-sends of a message after a failed attempt.
    pub resends: AtomicU64,
    /// Connections that broke or were closed on a 421, plus failed connects.
    pub reconnects: AtomicU64,
    /// Replies with a 4xx code (each one caused a re-send).
    pub tempfails: AtomicU64,
    /// Nanoseconds since `epoch` of every 250 to an end of data.
    pub ok_times: Mutex<Vec<u64>>,
    /// Set once every worker has finished.
    pub done: AtomicBool,
    failures: Mutex<Vec<String>>,
    date: String,
    run_id: String,
}

impl Ingest {
    fn message_spec(&self) -> MessageSpec<'_> {
        MessageSpec {
            tool: "chaos",
            run_id: &self.run_id,
            date: &self.date,
            from: &self.cfg.from,
            size: self.cfg.size,
        }
    }
}

const MAX_NOTED: usize = 10;

impl Ingest {
    /// `gate`: the first gate (`messages` for no gate, see `pacing::Pacing::gate`).
    pub fn new(
        cfg: ClientConfig,
        epoch: Instant,
        deadline: tokio::time::Instant,
        gate: u64,
    ) -> Self {
        let n = cfg.messages as usize;
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ingest {
            cfg,
            epoch,
            deadline,
            next: AtomicU64::new(0),
            gate: watch::Sender::new(gate.min(n as u64)),
            settled: watch::Sender::new(0),
            gate_timed_out: AtomicBool::new(false),
            accepted: (0..n).map(|_| AtomicBool::new(false)).collect(),
            ambiguous: (0..n).map(|_| AtomicU32::new(0)).collect(),
            accepted_count: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            resends: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            tempfails: AtomicU64::new(0),
            ok_times: Mutex::new(Vec::with_capacity(n)),
            done: AtomicBool::new(false),
            failures: Mutex::new(Vec::new()),
            date: baton_load::message::rfc5322_date(unix),
            run_id: format!("{unix}.{}", std::process::id()),
        }
    }

    fn note(&self, what: String) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < MAX_NOTED {
            f.push(what);
        }
    }

    /// The first few notable failures (for the report).
    pub fn noted(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Sequence numbers taken so far.
    pub fn issued(&self) -> u64 {
        self.next.load(Ordering::Acquire).min(self.cfg.messages)
    }

    /// Messages answered 250 or given up on so far.
    pub fn settled(&self) -> u64 {
        *self.settled.borrow()
    }

    /// Raise the gate to `to` (it never goes down, nor above `messages`).
    pub fn raise_gate(&self, to: u64) {
        let to = to.min(self.cfg.messages);
        self.gate.send_if_modified(|g| {
            if to > *g {
                *g = to;
                true
            } else {
                false
            }
        });
    }

    /// Wait until at least `target` messages are settled; false if `until`
    /// or the deadline came first.
    pub async fn wait_settled(&self, target: u64, until: tokio::time::Instant) -> bool {
        let mut rx = self.settled.subscribe();
        let until = until.min(self.deadline);
        matches!(
            timeout_at(until, rx.wait_for(|&s| s >= target)).await,
            Ok(Ok(_))
        )
    }

    fn accept(&self, seq: u64) {
        let ns = self.now_ns();
        self.ok_times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ns);
        self.accepted[seq as usize].store(true, Ordering::Release);
        self.accepted_count.fetch_add(1, Ordering::Relaxed);
        self.settled.send_modify(|s| *s += 1);
    }

    fn give_up(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.note(what);
        self.settled.send_modify(|s| *s += 1);
    }

    /// The next sequence number, waiting at the gate if need be; None when
    /// all are taken or the deadline passed at the gate.
    async fn take_seq(&self, gate: &mut watch::Receiver<u64>) -> Option<u64> {
        let n = self.cfg.messages;
        // Bounded: a failed exchange means another client took a number (at
        // most n in all), and a wait ends when the gate moves or at the deadline.
        loop {
            let next = self.next.load(Ordering::Acquire);
            let limit = *gate.borrow_and_update();
            match take(next, limit, n) {
                Take::Done => return None,
                Take::Seq(seq) => {
                    if self
                        .next
                        .compare_exchange(seq, seq + 1, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Some(seq);
                    }
                }
                Take::Wait => {
                    match timeout_at(self.deadline, gate.wait_for(|&g| g > next)).await {
                        Ok(Ok(_)) => {}
                        // The sender lives in `self`: it cannot be gone.
                        Ok(Err(_)) => return None,
                        Err(_) => {
                            if !self.gate_timed_out.swap(true, Ordering::AcqRel) {
                                self.note(format!(
                                    "--timeout passed while the clients waited at the gate \
                                     (message {next}) for a kill; the rest was never sent"
                                ));
                            }
                            return None;
                        }
                    }
                }
            }
        }
    }

    /// Run all connections to completion.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let n = self.cfg.messages as usize;
        let workers = self.cfg.connections.min(n.max(1));
        let mut tasks = Vec::with_capacity(workers);
        for _ in 0..workers {
            tasks.push(tokio::spawn(worker(self.clone())));
        }
        for t in tasks {
            t.await.context("worker panicked")?;
        }
        self.done.store(true, Ordering::Release);
        Ok(())
    }
}

type Conn = BufReader<TcpStream>;

/// How one attempt to send a message ended.
enum Outcome {
    Accepted,
    /// 4xx reply: nothing stored. `close`: the server closed (421).
    TempFail {
        text: String,
        close: bool,
    },
    /// 5xx reply: the message will not be re-sent.
    PermFail(String),
    /// The connection failed. `ambiguous`: the final dot was written and no
    /// reply came, so the message may have been stored.
    Broken {
        err: String,
        ambiguous: bool,
    },
}

fn backoff(consecutive: u32) -> Duration {
    Duration::from_millis((25u64 << consecutive.min(6)).min(1000))
}

async fn worker(ing: Arc<Ingest>) {
    let mut msg = Vec::with_capacity(ing.cfg.size + 4096);
    let mut line = Vec::with_capacity(512);
    let mut conn: Option<Conn> = None;
    let mut consecutive = 0u32;
    let mut gate = ing.gate.subscribe();
    // Bounded: each iteration consumes one sequence number (< n).
    'messages: loop {
        let Some(seq) = ing.take_seq(&mut gate).await else {
            break;
        };
        let rcpt = format!("u{}@{}", seq % 1000, ing.cfg.rcpt_domain);
        build_message(&ing.message_spec(), seq, &rcpt, &mut msg);
        // Bounded by max_attempts and the deadline.
        for attempt in 1..=ing.cfg.max_attempts.max(1) {
            if tokio::time::Instant::now() >= ing.deadline {
                ing.give_up(format!("msg {seq}: timed out (--timeout) before a 250"));
                continue 'messages;
            }
            if attempt > 1 {
                ing.resends.fetch_add(1, Ordering::Relaxed);
            }
            if conn.is_none() {
                match connect(&ing, &mut line).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        ing.reconnects.fetch_add(1, Ordering::Relaxed);
                        if consecutive == 5 {
                            ing.note(format!("connect: {e:#}"));
                        }
                        consecutive += 1;
                        tokio::time::sleep(backoff(consecutive)).await;
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { break };
            match send_one(&ing, c, &rcpt, &msg, &mut line).await {
                Outcome::Accepted => {
                    consecutive = 0;
                    ing.accept(seq);
                    continue 'messages;
                }
                Outcome::PermFail(text) => {
                    consecutive = 0;
                    ing.give_up(format!("msg {seq}: {text}"));
                    continue 'messages;
                }
                Outcome::TempFail { text, close } => {
                    ing.tempfails.fetch_add(1, Ordering::Relaxed);
                    if close {
                        ing.reconnects.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                    }
                    if consecutive == 5 {
                        ing.note(format!("msg {seq}: {text}"));
                    }
                    consecutive += 1;
                    tokio::time::sleep(backoff(consecutive)).await;
                }
                Outcome::Broken { err, ambiguous } => {
                    ing.reconnects.fetch_add(1, Ordering::Relaxed);
                    if ambiguous {
                        ing.ambiguous[seq as usize].fetch_add(1, Ordering::Relaxed);
                    }
                    conn = None;
                    if consecutive == 5 {
                        ing.note(format!("msg {seq}: {err}"));
                    }
                    consecutive += 1;
                    tokio::time::sleep(backoff(consecutive)).await;
                }
            }
        }
        ing.give_up(format!(
            "msg {seq}: gave up after {} attempts",
            ing.cfg.max_attempts
        ));
    }
    if let Some(mut c) = conn
        && c.get_mut().write_all(b"QUIT\r\n").await.is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut l = Vec::new();
            let _ = c.read_until(b'\n', &mut l).await;
        })
        .await;
    }
}

/// Reads one (possibly multi-line) reply within the reply timeout; returns (code, text).
async fn read_reply(
    ing: &Ingest,
    conn: &mut Conn,
    line: &mut Vec<u8>,
) -> anyhow::Result<(u16, String)> {
    let deadline = ing
        .deadline
        .min(tokio::time::Instant::now() + ing.cfg.reply_timeout);
    baton_load::client::read_reply(conn, line, deadline).await
}

async fn connect(ing: &Ingest, line: &mut Vec<u8>) -> anyhow::Result<Conn> {
    let dl = ing
        .deadline
        .min(tokio::time::Instant::now() + ing.cfg.reply_timeout);
    let stream = timeout_at(dl, TcpStream::connect(ing.cfg.target))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connecting to {}", ing.cfg.target))?;
    stream.set_nodelay(true)?;
    let mut conn = BufReader::with_capacity(16 * 1024, stream);
    let (code, text) = read_reply(ing, &mut conn, line).await?;
    if code != 220 {
        bail!("greeting: {text}");
    }
    conn.get_mut()
        .write_all(format!("EHLO {}\r\n", ing.cfg.helo).as_bytes())
        .await?;
    let (code, text) = read_reply(ing, &mut conn, line).await?;
    if code != 250 {
        bail!("EHLO: {text}");
    }
    Ok(conn)
}

fn classify(code: u16, text: String) -> Outcome {
    if code == 421 {
        Outcome::TempFail { text, close: true }
    } else if (400..500).contains(&code) {
        Outcome::TempFail { text, close: false }
    } else {
        Outcome::PermFail(text)
    }
}

/// One transaction, commands sent one at a time (so that a failure is
/// attributed to the right step).
async fn send_one(
    ing: &Ingest,
    conn: &mut Conn,
    rcpt: &str,
    msg: &[u8],
    line: &mut Vec<u8>,
) -> Outcome {
    let broken = |e: anyhow::Error| Outcome::Broken {
        err: format!("{e:#}"),
        ambiguous: false,
    };
    let cmds = [
        format!("MAIL FROM:<{}> SIZE={}\r\n", ing.cfg.from, msg.len()),
        format!("RCPT TO:<{rcpt}>\r\n"),
        "DATA\r\n".to_string(),
    ];
    for (i, cmd) in cmds.iter().enumerate() {
        if let Err(e) = conn.get_mut().write_all(cmd.as_bytes()).await {
            return broken(e.into());
        }
        let (code, text) = match read_reply(ing, conn, line).await {
            Ok(r) => r,
            Err(e) => return broken(e),
        };
        let want = if i == 2 { 354 } else { 250 };
        if code != want {
            if code != 421 {
                // Leave the transaction; a failure here only closes the connection.
                let reset = async {
                    conn.get_mut().write_all(b"RSET\r\n").await?;
                    read_reply(ing, conn, line).await
                };
                if let Err(e) = reset.await {
                    return broken(e);
                }
            }
            return classify(code, format!("{}: {text}", cmd.trim_end()));
        }
    }
    if let Err(e) = conn.get_mut().write_all(msg).await {
        // The final dot was not handed to the kernel: nothing can be stored.
        return broken(e.into());
    }
    match read_reply(ing, conn, line).await {
        Ok((250, _)) => Outcome::Accepted,
        Ok((code, text)) => classify(code, format!("end of data: {text}")),
        Err(e) => Outcome::Broken {
            err: format!("after the final dot: {e:#}"),
            ambiguous: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest(size: usize) -> Ingest {
        ingest_gated(size, 10, 10)
    }

    fn ingest_gated(size: usize, messages: u64, gate: u64) -> Ingest {
        let cfg = ClientConfig {
            target: "127.0.0.1:1".parse().unwrap(),
            messages,
            size,
            connections: 1,
            from: "chaos@bench.test".into(),
            rcpt_domain: "sink.test".into(),
            helo: "chaos.bench.test".into(),
            reply_timeout: Duration::from_secs(1),
            max_attempts: 1,
        };
        let now = Instant::now();
        let deadline = tokio::time::Instant::from_std(now + Duration::from_secs(30));
        Ingest::new(cfg, now, deadline, gate)
    }

    #[test]
    fn message_has_seq_and_ends_with_dot() {
        let ing = ingest(4096);
        let mut buf = Vec::new();
        build_message(&ing.message_spec(), 7, "u7@sink.test", &mut buf);
        assert!(buf.ends_with(b"\r\n.\r\n"));
        assert_eq!(baton_load::sink::load_seq(&buf), Some(7));
        // Unstuffed size is the requested size.
        let unstuffed = buf.len() - 3 - buf.windows(3).filter(|w| w == b"\n..").count();
        assert_eq!(unstuffed, 4096);
    }

    #[tokio::test]
    async fn clients_wait_at_the_gate_until_it_rises() {
        let ing = ingest_gated(64, 6, 3);
        let mut rx = ing.gate.subscribe();
        for want in 0..3 {
            assert_eq!(ing.take_seq(&mut rx).await, Some(want));
        }
        assert_eq!(ing.issued(), 3);
        {
            let waiting = ing.take_seq(&mut rx);
            tokio::pin!(waiting);
            // A zero timeout polls the future once: it must be pending at the gate.
            assert!(
                tokio::time::timeout(Duration::ZERO, waiting.as_mut())
                    .await
                    .is_err()
            );
            // The gate never goes down, nor above the messages.
            ing.raise_gate(1);
            assert_eq!(*ing.gate.borrow(), 3);
            ing.raise_gate(100);
            assert_eq!(*ing.gate.borrow(), 6);
            assert_eq!(waiting.await, Some(3));
        }
        for want in 4..6 {
            assert_eq!(ing.take_seq(&mut rx).await, Some(want));
        }
        assert_eq!(ing.take_seq(&mut rx).await, None);
        assert_eq!(ing.issued(), 6);
        assert!(!ing.gate_timed_out.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn the_deadline_releases_a_client_at_the_gate() {
        let mut ing = ingest_gated(64, 6, 1);
        ing.deadline = tokio::time::Instant::now();
        let mut rx = ing.gate.subscribe();
        assert_eq!(ing.take_seq(&mut rx).await, Some(0));
        assert_eq!(ing.take_seq(&mut rx).await, None);
        assert!(ing.gate_timed_out.load(Ordering::Acquire));
        assert!(ing.noted().iter().any(|n| n.contains("gate")));
    }

    #[tokio::test]
    async fn settled_counts_accepted_and_given_up() {
        let ing = ingest_gated(64, 6, 6);
        let soon = tokio::time::Instant::now() + Duration::from_secs(5);
        assert!(ing.wait_settled(0, soon).await);
        ing.accept(0);
        ing.give_up("msg 1: 550 no".into());
        assert_eq!(ing.settled(), 2);
        assert_eq!(ing.accepted_count.load(Ordering::Relaxed), 1);
        assert_eq!(ing.failed.load(Ordering::Relaxed), 1);
        assert!(ing.wait_settled(2, soon).await);
        // Not reached before `until` (already passed): false, not a hang.
        assert!(!ing.wait_settled(3, tokio::time::Instant::now()).await);
    }

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(100), Duration::from_secs(1));
    }
}
