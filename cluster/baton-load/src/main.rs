//! `baton-load`: SMTP load generator for Baton, with an optional in-process
//! counting sink that receives what the relay delivers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use baton_load::client::{Conn, parse_size, read_reply};
use baton_load::message::{MessageSpec, build_message};
use baton_load::sink::{AcceptedMessage, SinkConfig, load_seq, start_sink};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

#[derive(Parser, Debug, Clone)]
#[command(name = "baton-load", about = "SMTP load generator for Baton")]
struct Args {
    /// SMTP address of the relay under test.
    #[arg(long, default_value = "127.0.0.1:2525")]
    target: SocketAddr,
    /// Total number of messages to send.
    #[arg(long, default_value_t = 1000)]
    messages: u64,
    /// Approximate size of each message in bytes (suffixes k/K and m/M allowed).
    #[arg(long, default_value = "4096", value_parser = parse_size)]
    size: usize,
    /// Number of concurrent SMTP connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Run a counting sink on this address (the relay's smarthost) and
    /// measure delivery.
    #[arg(long)]
    sink: Option<SocketAddr>,
    /// Envelope sender and From: address.
    #[arg(long, default_value = "load@bench.test")]
    from: String,
    /// Recipient domain (recipients are u<n % 1000>@DOMAIN).
    #[arg(long, default_value = "sink.test")]
    rcpt_domain: String,
    /// EHLO name.
    #[arg(long, default_value = "load.bench.test")]
    helo: String,
    /// Overall bound for ingest and for waiting on the sink (e.g. 300s, 5m).
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// After all messages reached the sink, keep listening this long to
    /// catch late duplicates.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    dup_grace: Duration,
    /// Consecutive connection failures (100 ms apart) after which a worker gives up.
    #[arg(long, default_value_t = 20)]
    connect_retries: u32,
    /// Print one JSON object instead of human-readable lines.
    #[arg(long)]
    json: bool,
}

/// What the in-process sink observed, indexed by X-Load-Seq.
struct SinkTracker {
    epoch: Instant,
    seen: Vec<AtomicBool>,
    unique: AtomicU64,
    duplicates: AtomicU64,
    unknown: AtomicU64,
    /// Nanoseconds since `epoch` of the last first-time arrival.
    last_arrival_ns: AtomicU64,
}

impl SinkTracker {
    fn record(&self, msg: &AcceptedMessage<'_>) {
        let idx = load_seq(msg.data).and_then(|s| usize::try_from(s).ok());
        match idx.and_then(|i| self.seen.get(i)) {
            None => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
            Some(flag) => {
                if flag.swap(true, Ordering::AcqRel) {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                } else {
                    let ns = self.epoch.elapsed().as_nanos() as u64;
                    self.last_arrival_ns.fetch_max(ns, Ordering::Relaxed);
                    self.unique.fetch_add(1, Ordering::Release);
                }
            }
        }
    }
}

/// Shared client-side state.
struct Client {
    args: Args,
    epoch: Instant,
    deadline: tokio::time::Instant,
    next: AtomicU64,
    sent: AtomicU64,
    accepted: Vec<AtomicBool>,
    accepted_count: AtomicU64,
    failed: AtomicU64,
    connect_errors: AtomicU64,
    last_ok_ns: AtomicU64,
    failures: Mutex<Vec<String>>,
    date: String,
    run_id: String,
}

impl Client {
    fn message_spec(&self) -> MessageSpec<'_> {
        MessageSpec {
            tool: "load",
            run_id: &self.run_id,
            date: &self.date,
            from: &self.args.from,
            size: self.args.size,
        }
    }
}

const MAX_PRINTED_FAILURES: usize = 10;

impl Client {
    fn note_failure(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < MAX_PRINTED_FAILURES {
            f.push(what);
        }
    }
}

async fn connect(client: &Client) -> anyhow::Result<(Conn, bool)> {
    let a = &client.args;
    let stream = timeout_at(client.deadline, TcpStream::connect(a.target))
        .await
        .context("connect timed out")?
        .with_context(|| format!("connecting to {}", a.target))?;
    stream.set_nodelay(true)?;
    let mut conn = BufReader::with_capacity(16 * 1024, stream);
    let mut line = Vec::with_capacity(256);
    let (code, text) = read_reply(&mut conn, &mut line, client.deadline).await?;
    if code != 220 {
        bail!("greeting: {text}");
    }
    conn.get_mut()
        .write_all(format!("EHLO {}\r\n", a.helo).as_bytes())
        .await?;
    let (code, text) = read_reply(&mut conn, &mut line, client.deadline).await?;
    if code == 250 {
        let pipelining = text
            .split(" / ")
            .any(|l| l.len() >= 4 && l[4..].trim().eq_ignore_ascii_case("PIPELINING"));
        return Ok((conn, pipelining));
    }
    conn.get_mut()
        .write_all(format!("HELO {}\r\n", a.helo).as_bytes())
        .await?;
    let (code, text) = read_reply(&mut conn, &mut line, client.deadline).await?;
    if code != 250 {
        bail!("HELO: {text}");
    }
    Ok((conn, false))
}

enum TxnResult {
    Accepted,
    Rejected(String),
}

/// Per-worker reusable buffers.
struct Bufs {
    msg: Vec<u8>,
    cmd: Vec<u8>,
    line: Vec<u8>,
    latencies: Vec<u32>,
}

/// Send one transaction. Returns the latency (end-of-DATA to reply) on acceptance.
async fn send_one(
    client: &Client,
    conn: &mut Conn,
    pipelining: bool,
    seq: u64,
    bufs: &mut Bufs,
) -> anyhow::Result<TxnResult> {
    let Bufs {
        msg,
        cmd,
        line,
        latencies,
    } = bufs;
    let a = &client.args;
    let dl = client.deadline;
    let rcpt = format!("u{}@{}", seq % 1000, a.rcpt_domain);
    build_message(&client.message_spec(), seq, &rcpt, msg);
    cmd.clear();
    let mail = format!("MAIL FROM:<{}> SIZE={}\r\n", a.from, msg.len());
    let rcpt_cmd = format!("RCPT TO:<{rcpt}>\r\n");
    let w = conn.get_mut();
    let mut failure: Option<String> = None;
    let data_code;
    if pipelining {
        cmd.extend_from_slice(mail.as_bytes());
        cmd.extend_from_slice(rcpt_cmd.as_bytes());
        cmd.extend_from_slice(b"DATA\r\n");
        w.write_all(cmd).await?;
        for what in ["MAIL", "RCPT"] {
            let (code, text) = read_reply(conn, line, dl).await?;
            if code != 250 && failure.is_none() {
                failure = Some(format!("{what}: {text}"));
            }
        }
        let (code, text) = read_reply(conn, line, dl).await?;
        data_code = code;
        if code != 354 && failure.is_none() {
            failure = Some(format!("DATA: {text}"));
        }
    } else {
        w.write_all(mail.as_bytes()).await?;
        let (code, text) = read_reply(conn, line, dl).await?;
        if code != 250 {
            return rset_after(conn, line, dl, format!("MAIL: {text}")).await;
        }
        conn.get_mut().write_all(rcpt_cmd.as_bytes()).await?;
        let (code, text) = read_reply(conn, line, dl).await?;
        if code != 250 {
            return rset_after(conn, line, dl, format!("RCPT: {text}")).await;
        }
        conn.get_mut().write_all(b"DATA\r\n").await?;
        let (code, text) = read_reply(conn, line, dl).await?;
        data_code = code;
        if code != 354 {
            failure = Some(format!("DATA: {text}"));
        }
    }
    if data_code == 354 && failure.is_some() {
        // Server wants data although a command failed: send an empty message
        // terminator to close the DATA phase, then reset.
        conn.get_mut().write_all(b".\r\n").await?;
        let _ = read_reply(conn, line, dl).await?;
    }
    if let Some(f) = failure {
        return rset_after(conn, line, dl, f).await;
    }
    conn.get_mut().write_all(msg).await?;
    let t0 = Instant::now();
    let (code, text) = read_reply(conn, line, dl).await?;
    let lat = t0.elapsed();
    if code == 250 {
        latencies.push(lat.as_micros().min(u32::MAX as u128) as u32);
        Ok(TxnResult::Accepted)
    } else {
        Ok(TxnResult::Rejected(format!("end of DATA: {text}")))
    }
}

async fn rset_after(
    conn: &mut Conn,
    line: &mut Vec<u8>,
    dl: tokio::time::Instant,
    failure: String,
) -> anyhow::Result<TxnResult> {
    conn.get_mut().write_all(b"RSET\r\n").await?;
    let _ = read_reply(conn, line, dl).await?;
    Ok(TxnResult::Rejected(failure))
}

/// One connection worker: pulls sequence numbers from the shared counter.
async fn worker(client: Arc<Client>) -> Vec<u32> {
    let mut bufs = Bufs {
        msg: Vec::with_capacity(client.args.size + 4096),
        cmd: Vec::with_capacity(512),
        line: Vec::with_capacity(512),
        latencies: Vec::new(),
    };
    let mut conn: Option<(Conn, bool)> = None;
    let mut consecutive_errors = 0u32;
    let n = client.args.messages;
    loop {
        if tokio::time::Instant::now() >= client.deadline {
            break;
        }
        if conn.is_none() {
            match connect(&client).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    client.connect_errors.fetch_add(1, Ordering::Relaxed);
                    consecutive_errors += 1;
                    let limit = client.args.connect_retries.max(1);
                    if consecutive_errors == 1 || consecutive_errors >= limit {
                        eprintln!("baton-load: connection error: {e:#}");
                    }
                    if consecutive_errors >= limit {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let seq = client.next.fetch_add(1, Ordering::Relaxed);
        if seq >= n {
            break;
        }
        client.sent.fetch_add(1, Ordering::Relaxed);
        let Some((c, pipelining)) = conn.as_mut() else {
            break;
        };
        let res = send_one(&client, c, *pipelining, seq, &mut bufs).await;
        match res {
            Ok(TxnResult::Accepted) => {
                consecutive_errors = 0;
                client.accepted[seq as usize].store(true, Ordering::Relaxed);
                client.accepted_count.fetch_add(1, Ordering::Relaxed);
                let ns = client.epoch.elapsed().as_nanos() as u64;
                client.last_ok_ns.fetch_max(ns, Ordering::Relaxed);
            }
            Ok(TxnResult::Rejected(why)) => {
                consecutive_errors = 0;
                client.note_failure(format!("msg {seq}: {why}"));
            }
            Err(e) => {
                client.note_failure(format!("msg {seq}: {e:#}"));
                conn = None;
                consecutive_errors += 1;
                if consecutive_errors >= client.args.connect_retries.max(1) {
                    eprintln!(
                        "baton-load: too many consecutive errors on a connection, stopping it"
                    );
                    break;
                }
            }
        }
    }
    if let Some((mut c, _)) = conn
        && c.get_mut().write_all(b"QUIT\r\n").await.is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut l = Vec::new();
            let _ = c.read_until(b'\n', &mut l).await;
        })
        .await;
    }
    bufs.latencies
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.target.ip().is_loopback() {
        bail!("--target must be a loopback address");
    }
    if args.sink.is_some_and(|s| !s.ip().is_loopback()) {
        bail!("--sink must be a loopback address");
    }
    if args.connections == 0 || args.connections > 10_000 {
        bail!("--connections must be between 1 and 10000");
    }
    if args.messages > 100_000_000 {
        bail!("--messages must be at most 100000000");
    }
    let n = args.messages as usize;

    // Start the in-process counting sink first so the relay can deliver.
    let mut sink_handle = None;
    let mut tracker = None;
    if let Some(addr) = args.sink {
        let t = Arc::new(SinkTracker {
            epoch: Instant::now(),
            seen: (0..n).map(|_| AtomicBool::new(false)).collect(),
            unique: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            last_arrival_ns: AtomicU64::new(0),
        });
        let mut cfg = SinkConfig::new(addr);
        let t2 = t.clone();
        cfg.on_message = Some(Arc::new(move |m: &AcceptedMessage<'_>| t2.record(m)));
        let h = start_sink(cfg)
            .await
            .with_context(|| format!("starting sink on {addr}"))?;
        if !args.json {
            eprintln!("baton-load: sink listening on {}", h.local_addr());
        }
        sink_handle = Some(h);
        tracker = Some(t);
    }

    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let epoch = Instant::now();
    let deadline = tokio::time::Instant::from_std(epoch + args.timeout);
    let client = Arc::new(Client {
        epoch,
        deadline,
        next: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        accepted: (0..n).map(|_| AtomicBool::new(false)).collect(),
        accepted_count: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        connect_errors: AtomicU64::new(0),
        last_ok_ns: AtomicU64::new(0),
        failures: Mutex::new(Vec::new()),
        date: baton_load::message::rfc5322_date(now_unix),
        run_id: format!("{now_unix}.{}", std::process::id()),
        args: args.clone(),
    });
    let workers = args.connections.min(n.max(1));
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        tasks.push(tokio::spawn(worker(client.clone())));
    }
    let mut latencies: Vec<u32> = Vec::with_capacity(n);
    for t in tasks {
        latencies.extend(t.await.context("worker panicked")?);
    }
    latencies.sort_unstable();

    let sent = client.sent.load(Ordering::Relaxed);
    let accepted = client.accepted_count.load(Ordering::Relaxed);
    let failed = client.failed.load(Ordering::Relaxed);
    let connect_errors = client.connect_errors.load(Ordering::Relaxed);
    let not_sent = args.messages - sent;
    let ingest_secs = client.last_ok_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let ingest_rate = if ingest_secs > 0.0 {
        accepted as f64 / ingest_secs
    } else {
        0.0
    };
    let failures = client
        .failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();

    // Wait for the sink to see every accepted message.
    let mut sink_report = None;
    if let (Some(t), Some(h)) = (&tracker, &sink_handle) {
        let poll = Duration::from_millis(10);
        let mut timed_out = false;
        // Bounded by the deadline.
        loop {
            // `unique >= accepted` is necessary for all accepted messages to
            // have been seen; only then pay for the full bitmap scan.
            if t.unique.load(Ordering::Acquire) >= accepted
                && client
                    .accepted
                    .iter()
                    .zip(&t.seen)
                    .all(|(a, s)| !a.load(Ordering::Relaxed) || s.load(Ordering::Acquire))
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                timed_out = true;
                break;
            }
            tokio::time::sleep(poll).await;
        }
        if !timed_out && !args.dup_grace.is_zero() {
            tokio::time::sleep(args.dup_grace).await;
        }
        let delivered = t.unique.load(Ordering::Acquire);
        let missing = client
            .accepted
            .iter()
            .zip(&t.seen)
            .filter(|(a, s)| a.load(Ordering::Relaxed) && !s.load(Ordering::Acquire))
            .count() as u64;
        let unexpected = client
            .accepted
            .iter()
            .zip(&t.seen)
            .filter(|(a, s)| !a.load(Ordering::Relaxed) && s.load(Ordering::Acquire))
            .count() as u64;
        // The sink tracker's epoch is slightly earlier than the client's; use
        // the client epoch as "start".
        let offset = epoch.saturating_duration_since(t.epoch).as_nanos() as u64;
        let e2e_secs = t
            .last_arrival_ns
            .load(Ordering::Relaxed)
            .saturating_sub(offset) as f64
            / 1e9;
        let e2e_rate = if e2e_secs > 0.0 && missing == 0 {
            accepted as f64 / e2e_secs
        } else if e2e_secs > 0.0 {
            (accepted - missing) as f64 / e2e_secs
        } else {
            0.0
        };
        sink_report = Some((
            delivered,
            t.duplicates.load(Ordering::Relaxed),
            missing,
            unexpected,
            t.unknown.load(Ordering::Relaxed),
            e2e_secs,
            e2e_rate,
            timed_out,
            h.stats().accepted(),
        ));
        h.shutdown();
    }

    let p50 = percentile(&latencies, 50.0);
    let p90 = percentile(&latencies, 90.0);
    let p99 = percentile(&latencies, 99.0);
    let max = latencies.last().map_or(0.0, |&v| v as f64 / 1000.0);

    if args.json {
        let mut obj = serde_json::json!({
            "target": args.target.to_string(),
            "messages": args.messages,
            "size": args.size,
            "connections": args.connections,
            "sent": sent,
            "not_sent": not_sent,
            "accepted": accepted,
            "failed": failed,
            "connect_errors": connect_errors,
            "first_failures": failures,
            "ingest_secs": ingest_secs,
            "ingest_msgs_per_sec": ingest_rate,
            "latency_ms": { "p50": p50, "p90": p90, "p99": p99, "max": max },
        });
        if let Some((delivered, dups, missing, unexpected, unknown, secs, rate, to, total)) =
            sink_report
        {
            obj["sink"] = serde_json::json!({
                "delivered": delivered,
                "duplicates": dups,
                "missing": missing,
                "unexpected": unexpected,
                "unknown": unknown,
                "sink_messages_total": total,
                "e2e_secs": secs,
                "e2e_msgs_per_sec": rate,
                "timed_out": to,
            });
        }
        println!("{obj}");
    } else {
        for f in &failures {
            println!("failure: {f}");
        }
        println!("messages sent:      {sent} (not sent: {not_sent})");
        println!("accepted (250):     {accepted}");
        println!("failed:             {failed}");
        println!("connect errors:     {connect_errors}");
        println!("ingest duration:    {ingest_secs:.3} s");
        println!("ingest rate:        {ingest_rate:.1} msgs/s");
        println!(
            "latency end-of-DATA->250 ms: p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  max {max:.2}"
        );
        if let Some((delivered, dups, missing, unexpected, unknown, secs, rate, to, total)) =
            sink_report
        {
            if to {
                println!("sink: TIMED OUT waiting for deliveries");
            }
            println!("sink delivered:     {delivered} (total messages at sink: {total})");
            println!("sink duplicates:    {dups}");
            println!("sink missing:       {missing}");
            println!("sink unexpected:    {unexpected} (delivered but not accepted at ingest)");
            println!("sink unknown:       {unknown} (no/invalid X-Load-Seq)");
            println!("end-to-end:         {secs:.3} s, {rate:.1} msgs/s");
        }
    }
    let ok = failed == 0
        && not_sent == 0
        && sink_report.is_none_or(|(_, dups, missing, ..)| dups == 0 && missing == 0);
    std::process::exit(if ok { 0 } else { 1 });
}
