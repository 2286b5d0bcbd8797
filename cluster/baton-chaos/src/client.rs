//! The SMTP side: C connections push N numbered messages through the target
//! and re-send what was not answered `250`, like a real client would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_load::message::{MessageSpec, build_message};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

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
    next: AtomicU64,
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
    pub fn new(cfg: ClientConfig, epoch: Instant, deadline: tokio::time::Instant) -> Self {
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
    let n = ing.cfg.messages;
    // Bounded: each iteration consumes one sequence number (< n).
    'messages: loop {
        let seq = ing.next.fetch_add(1, Ordering::Relaxed);
        if seq >= n {
            break;
        }
        let rcpt = format!("u{}@{}", seq % 1000, ing.cfg.rcpt_domain);
        build_message(&ing.message_spec(), seq, &rcpt, &mut msg);
        // Bounded by max_attempts and the deadline.
        for attempt in 1..=ing.cfg.max_attempts.max(1) {
            if tokio::time::Instant::now() >= ing.deadline {
                ing.failed.fetch_add(1, Ordering::Relaxed);
                ing.note(format!("msg {seq}: timed out (--timeout) before a 250"));
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
                    let ns = ing.now_ns();
                    ing.ok_times
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(ns);
                    ing.accepted[seq as usize].store(true, Ordering::Release);
                    ing.accepted_count.fetch_add(1, Ordering::Relaxed);
                    continue 'messages;
                }
                Outcome::PermFail(text) => {
                    consecutive = 0;
                    ing.failed.fetch_add(1, Ordering::Relaxed);
                    ing.note(format!("msg {seq}: {text}"));
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
        ing.failed.fetch_add(1, Ordering::Relaxed);
        ing.note(format!(
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
        let cfg = ClientConfig {
            target: "127.0.0.1:1".parse().unwrap(),
            messages: 10,
            size,
            connections: 1,
            from: "chaos@bench.test".into(),
            rcpt_domain: "sink.test".into(),
            helo: "chaos.bench.test".into(),
            reply_timeout: Duration::from_secs(1),
            max_attempts: 1,
        };
        let now = Instant::now();
        Ingest::new(cfg, now, tokio::time::Instant::from_std(now))
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

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(backoff(1), Duration::from_millis(50));
        assert_eq!(backoff(100), Duration::from_secs(1));
    }
}
