//! `baton-chaos`: pushes numbered messages through a `cluster/local.sh`
//! cluster while killing and restarting its nodes, and checks with an
//! in-process sink that every message answered `250` is delivered.

mod client;
mod nodes;
mod pacing;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use baton_load::client::parse_size;
use baton_load::sink::{AcceptedMessage, SinkConfig, load_seq, start_sink};
use clap::Parser;

use client::{ClientConfig, Ingest};
use nodes::{Chaos, ChaosConfig, Kill, Schedule, Sig};
use pacing::Pacing;

#[derive(Parser, Debug)]
#[command(
    name = "baton-chaos",
    about = "Load a local Baton cluster (cluster/local.sh) while killing and restarting nodes; \
             exit 0 iff no message answered 250 was lost (and, with --kill-after-messages, \
             every requested kill was carried out and its victim came back)"
)]
struct Args {
    /// Messages to send (each carries a unique X-Load-Seq).
    #[arg(long, default_value_t = 2000)]
    messages: u64,
    /// Size of each message in bytes (k/K and m/M suffixes allowed).
    #[arg(long, default_value = "4096", value_parser = parse_size)]
    size: usize,
    /// Concurrent SMTP connections.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// SMTP address to send to (local.sh's HAProxy).
    #[arg(long, default_value = "127.0.0.1:2500")]
    target: SocketAddr,
    /// Address of the in-process counting sink (the nodes' smarthost).
    #[arg(long, default_value = "127.0.0.3:2600")]
    sink: SocketAddr,
    /// Time between kills (the next kill also waits until the last victim is
    /// ready and has caught up with the leader's commit index).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    kill_every: Duration,
    /// Time from the start to the first kill (default: --kill-every).
    #[arg(long, value_parser = humantime::parse_duration)]
    first_kill_after: Option<Duration>,
    /// Tie kills to progress instead of the clock: kill k comes once k*N
    /// messages are settled (answered 250 or given up on) and the previous
    /// victim is back; the clients wait at a gate (at most two messages per
    /// connection past k*N) until kill k was carried out, so every kill
    /// happens under load whatever the speed. Needs N >= 4 x --connections
    /// and --messages >= (--kills + 1) * N.
    #[arg(long, value_name = "N", conflicts_with_all = ["kill_every", "first_kill_after"])]
    kill_after_messages: Option<u64>,
    /// Number of kills (with --kill-every: fewer if all messages are sent
    /// first; with --kill-after-messages: all of them, or exit status 1).
    #[arg(long, default_value_t = 3)]
    kills: u32,
    /// Probability that a kill hits the leader (at least ceil(K/3) of K kills do).
    #[arg(long, default_value_t = 0.34)]
    leader_fraction: f64,
    /// Signal to send.
    #[arg(long, value_enum, default_value = "kill")]
    signal: Sig,
    /// local.sh's data directory ($BATON_LOCAL_DIR).
    #[arg(long, default_value = "/tmp/baton-local")]
    local_dir: PathBuf,
    /// Number of nodes local.sh started.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Time between a node's exit and its restart.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    restart_after: Duration,
    /// Bound on the whole run: sending, and waiting for the sink.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Bound on waiting for any one SMTP reply; no reply to the final dot in
    /// time makes the attempt ambiguous (then the message is re-sent).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    reply_timeout: Duration,
    /// Attempts per message (connects included) before giving up on it.
    #[arg(long, default_value_t = 200)]
    max_attempts: u32,
    /// After the sink has everything, keep listening this long for late duplicates.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    dup_grace: Duration,
    /// Seed for choosing victims (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Envelope sender and From: address.
    #[arg(long, default_value = "chaos@bench.test")]
    from: String,
    /// Recipient domain (recipients are u<n % 1000>@DOMAIN).
    #[arg(long, default_value = "sink.test")]
    rcpt_domain: String,
    /// EHLO name.
    #[arg(long, default_value = "chaos.bench.test")]
    helo: String,
    /// Print one JSON object instead of human-readable lines.
    #[arg(long)]
    json: bool,
}

/// Deliveries seen by the sink, per X-Load-Seq.
struct Tracker {
    copies: Vec<AtomicU32>,
    unique: AtomicU64,
    total: AtomicU64,
    unknown: AtomicU64,
}

impl Tracker {
    fn record(&self, m: &AcceptedMessage<'_>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let slot = load_seq(m.data)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|i| self.copies.get(i));
        match slot {
            None => {
                self.unknown.fetch_add(1, Ordering::Relaxed);
            }
            Some(c) => {
                if c.fetch_add(1, Ordering::AcqRel) == 0 {
                    self.unique.fetch_add(1, Ordering::Release);
                }
            }
        }
    }
}

/// The default batond: $BATOND, else target/release/batond of this repository,
/// else next to this binary.
fn batond_path() -> PathBuf {
    if let Some(p) = std::env::var_os("BATOND") {
        return PathBuf::from(p);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/batond");
    if repo.exists() {
        return repo;
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("batond")))
        .unwrap_or(repo)
}

fn median(sorted: &[f64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// For each kill, seconds from the kill to the first 250 after it (None if none came).
fn gaps_after_kills(kills: &[Kill], ok_sorted: &[u64]) -> Vec<Option<f64>> {
    kills
        .iter()
        .map(|k| {
            let i = ok_sorted.partition_point(|&t| t <= k.at_ns);
            ok_sorted.get(i).map(|&t| (t - k.at_ns) as f64 / 1e9)
        })
        .collect()
}

/// For each kill, the longest stretch without a 250 that starts at or after
/// the kill and before the victim was ready again plus 2 s (or the next
/// kill): a 250 already in flight when the kill happened does not hide the
/// outage that follows. None if no 250 came after the kill.
fn stalls_after_kills(kills: &[Kill], ok_sorted: &[u64]) -> Vec<Option<f64>> {
    kills
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let settle = k.ready_after.unwrap_or_default() + Duration::from_secs(2);
            let mut end = k.at_ns + settle.as_nanos() as u64;
            if let Some(next) = kills.get(i + 1) {
                end = end.min(next.at_ns);
            }
            let first = ok_sorted.partition_point(|&t| t <= k.at_ns);
            let mut prev = k.at_ns;
            let mut longest: Option<u64> = None;
            for &t in &ok_sorted[first..] {
                if prev >= end {
                    break;
                }
                longest = Some(longest.unwrap_or(0).max(t - prev));
                prev = t;
            }
            longest.map(|ns| ns as f64 / 1e9)
        })
        .collect()
}

/// The longest stretch without a 250 between the first and the last 250, and where it began.
fn longest_stall(ok_sorted: &[u64]) -> (f64, f64) {
    ok_sorted
        .windows(2)
        .map(|w| ((w[1] - w[0]) as f64 / 1e9, w[0] as f64 / 1e9))
        .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.target.ip().is_loopback() || !args.sink.ip().is_loopback() {
        bail!("--target and --sink must be loopback addresses (127.0.0.0/8)");
    }
    if args.connections == 0 || args.connections > 1000 {
        bail!("--connections must be between 1 and 1000");
    }
    if args.messages == 0 || args.messages > 10_000_000 {
        bail!("--messages must be between 1 and 10000000");
    }
    if args.nodes == 0 || args.nodes > 99 {
        bail!("--nodes must be between 1 and 99");
    }
    if !(0.0..=1.0).contains(&args.leader_fraction) {
        bail!("--leader-fraction must be between 0 and 1");
    }
    if args.kills > 1000 {
        bail!("--kills must be at most 1000");
    }
    let pacing = match args.kill_after_messages {
        Some(every) => Some(
            Pacing::new(args.messages, args.kills, every, args.connections as u64)
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let schedule = match pacing {
        Some(p) => Schedule::Progress(p),
        None => Schedule::Clock {
            first: args.first_kill_after.unwrap_or(args.kill_every),
            every: args.kill_every,
        },
    };
    let batond = batond_path();
    if args.kills > 0 && !batond.exists() {
        bail!(
            "{} not found (set BATOND or cargo build --release -p batond)",
            batond.display()
        );
    }
    let n = args.messages as usize;

    let tracker = Arc::new(Tracker {
        copies: (0..n).map(|_| AtomicU32::new(0)).collect(),
        unique: AtomicU64::new(0),
        total: AtomicU64::new(0),
        unknown: AtomicU64::new(0),
    });
    let mut sink_cfg = SinkConfig::new(args.sink);
    let t2 = tracker.clone();
    sink_cfg.on_message = Some(Arc::new(move |m: &AcceptedMessage<'_>| t2.record(m)));
    let sink = start_sink(sink_cfg)
        .await
        .with_context(|| format!("starting the sink on {}", args.sink))?;

    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id())
    });
    if !args.json {
        let when = match schedule {
            Schedule::Clock { first, every } => {
                format!("the first after {first:?}, then every {every:?}")
            }
            Schedule::Progress(p) => format!(
                "one every {} settled messages (clients wait at a gate {} past each)",
                p.every,
                p.room()
            ),
        };
        eprintln!(
            "baton-chaos: sink on {}; {} messages of {} bytes over {} connections to {}; \
             {} kills ({}), {when}; seed {seed}",
            sink.local_addr(),
            args.messages,
            args.size,
            args.connections,
            args.target,
            args.kills,
            args.signal.name(),
        );
    }

    let epoch = Instant::now();
    let deadline = tokio::time::Instant::from_std(epoch + args.timeout);
    let ing = Arc::new(Ingest::new(
        ClientConfig {
            target: args.target,
            messages: args.messages,
            size: args.size,
            connections: args.connections,
            from: args.from.clone(),
            rcpt_domain: args.rcpt_domain.clone(),
            helo: args.helo.clone(),
            reply_timeout: args.reply_timeout,
            max_attempts: args.max_attempts,
        },
        epoch,
        deadline,
        pacing.map_or(args.messages, |p| p.gate(0)),
    ));
    let chaos = Chaos::new(
        ChaosConfig {
            local_dir: args.local_dir.clone(),
            nodes: args.nodes,
            kills: args.kills,
            schedule,
            leader_fraction: args.leader_fraction,
            signal: args.signal,
            restart_after: args.restart_after,
            batond,
            seed,
            quiet: args.json,
        },
        ing.clone(),
    );
    let chaos_task = tokio::spawn(chaos.run());
    ing.clone().run().await?;
    let ingest_end = epoch.elapsed();
    // The chaos task stops before its next kill and restarts what it killed.
    let chaos_report = chaos_task.await.context("chaos task panicked")?;
    let kills = &chaos_report.kills;

    // Wait for the sink to have every accepted message (bounded by --timeout).
    let all_delivered = || {
        ing.accepted
            .iter()
            .zip(&tracker.copies)
            .all(|(a, c)| !a.load(Ordering::Acquire) || c.load(Ordering::Acquire) > 0)
    };
    let mut timed_out = false;
    loop {
        if tracker.unique.load(Ordering::Acquire) >= ing.accepted_count.load(Ordering::Relaxed)
            && all_delivered()
        {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !timed_out {
        tokio::time::sleep(args.dup_grace).await;
    }
    let deliver_secs = epoch.elapsed().as_secs_f64();
    sink.shutdown();

    // Tally.
    let accepted = ing.accepted_count.load(Ordering::Relaxed);
    let failed = ing.failed.load(Ordering::Relaxed);
    let (mut lost, mut duplicated, mut extra_copies, mut unexpected) = (0u64, 0u64, 0u64, 0u64);
    let (mut ambiguous_resent, mut ambiguous_dups) = (0u64, 0u64);
    let mut lost_examples = Vec::new();
    let mut dup_examples = Vec::new();
    for (seq, ((a, c), amb)) in ing
        .accepted
        .iter()
        .zip(&tracker.copies)
        .zip(&ing.ambiguous)
        .enumerate()
    {
        let a = a.load(Ordering::Acquire);
        let c = u64::from(c.load(Ordering::Acquire));
        let amb = u64::from(amb.load(Ordering::Relaxed));
        if amb > 0 {
            ambiguous_resent += 1;
        }
        if a && c == 0 {
            lost += 1;
            if lost_examples.len() < 10 {
                lost_examples.push(seq);
            }
        }
        if !a && c > 0 {
            unexpected += 1;
        }
        if c > 1 {
            // Up to `amb` extra copies are explained by our own re-sends.
            let excused = (c - 1).min(amb);
            if excused > 0 {
                ambiguous_dups += 1;
            }
            if c - 1 > excused {
                duplicated += 1;
                extra_copies += c - 1 - excused;
                if dup_examples.len() < 10 {
                    dup_examples.push(seq);
                }
            }
        }
    }
    let delivered = tracker.unique.load(Ordering::Acquire);
    let mut ok_sorted = ing
        .ok_times
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    ok_sorted.sort_unstable();
    let gaps = gaps_after_kills(kills, &ok_sorted);
    let mut gap_vals: Vec<f64> = gaps.iter().flatten().copied().collect();
    gap_vals.sort_by(f64::total_cmp);
    let stalls = stalls_after_kills(kills, &ok_sorted);
    let mut stall_vals: Vec<f64> = stalls.iter().flatten().copied().collect();
    stall_vals.sort_by(f64::total_cmp);
    let gap_median = median(&gap_vals);
    let gap_max = gap_vals.last().copied();
    let (stall, stall_at) = longest_stall(&ok_sorted);
    let last_ok = ok_sorted.last().map_or(0.0, |&t| t as f64 / 1e9);
    let rate = if last_ok > 0.0 {
        accepted as f64 / last_ok
    } else {
        0.0
    };
    let leader_kills = kills.iter().filter(|k| k.leader && k.pid != 0).count();
    let done_kills = kills.iter().filter(|k| k.pid != 0).count();
    let never_sent = args.messages.saturating_sub(ing.issued());
    let errors = if pacing.is_some() {
        paced_errors(args.kills, kills, &chaos_report.missed)
    } else {
        Vec::new()
    };

    if args.json {
        let kill_list: Vec<_> = kills
            .iter()
            .zip(gaps.iter().zip(&stalls))
            .map(|(k, (g, st))| {
                serde_json::json!({
                    "node": k.node,
                    "leader": k.leader,
                    "pid": k.pid,
                    "at_secs": k.at_ns as f64 / 1e9,
                    "settled_before": k.settled,
                    "in_flight": k.in_flight,
                    "exited_after_secs": k.exited_after.map(|d| d.as_secs_f64()),
                    "ready_after_secs": k.ready_after.map(|d| d.as_secs_f64()),
                    "caught_up_after_secs": k.caught_up_after.map(|d| d.as_secs_f64()),
                    "new_pid": k.new_pid,
                    "gap_to_next_250_secs": g,
                    "longest_no_250_secs": st,
                    "problem": k.problem,
                })
            })
            .collect();
        let obj = serde_json::json!({
            "messages": args.messages,
            "size": args.size,
            "connections": args.connections,
            "signal": args.signal.name(),
            "seed": seed,
            "accepted": accepted,
            "failed": failed,
            "delivered": delivered,
            "sink_copies_total": tracker.total.load(Ordering::Relaxed),
            "lost": lost,
            "lost_examples": lost_examples,
            "duplicated": duplicated,
            "duplicate_extra_copies": extra_copies,
            "duplicate_examples": dup_examples,
            "ambiguous_retries": ambiguous_resent,
            "ambiguous_retries_delivered_twice": ambiguous_dups,
            "unexpected": unexpected,
            "unknown": tracker.unknown.load(Ordering::Relaxed),
            "kill_after_messages": args.kill_after_messages,
            "never_sent": never_sent,
            "kills": done_kills,
            "leader_kills": leader_kills,
            "kill_list": kill_list,
            "missed_kills": chaos_report.missed.iter()
                .map(|(k, why)| serde_json::json!({ "kill": k, "reason": why }))
                .collect::<Vec<_>>(),
            "errors": errors,
            "gap_to_next_250_secs": { "median": gap_median, "max": gap_max },
            "longest_no_250_after_kill_secs": {
                "median": median(&stall_vals),
                "max": stall_vals.last(),
            },
            "longest_stall_secs": stall,
            "longest_stall_at_secs": stall_at,
            "ingest_secs": last_ok,
            "ingest_msgs_per_sec": rate,
            "resends": ing.resends.load(Ordering::Relaxed),
            "reconnects": ing.reconnects.load(Ordering::Relaxed),
            "tempfails": ing.tempfails.load(Ordering::Relaxed),
            "first_failures": ing.noted(),
            "deliver_secs": deliver_secs,
            "timed_out": timed_out,
        });
        println!("{obj}");
    } else {
        for f in ing.noted() {
            println!("note: {f}");
        }
        for (i, (k, (g, st))) in kills.iter().zip(gaps.iter().zip(&stalls)).enumerate() {
            let fmt =
                |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.3}s", d.as_secs_f64()));
            println!(
                "kill {}: node {}{} pid {} at {:.3}s after {} settled ({} in flight), exited after {}, ready after {}, caught up after {}, next 250 after {}, longest no-250 {}{}",
                i + 1,
                k.node,
                if k.leader { " (leader)" } else { "" },
                k.pid,
                k.at_ns as f64 / 1e9,
                k.settled,
                k.in_flight,
                fmt(k.exited_after),
                fmt(k.ready_after),
                fmt(k.caught_up_after),
                g.map_or("- (none)".into(), |g| format!("{g:.3}s")),
                st.map_or("-".into(), |g| format!("{g:.3}s")),
                k.problem
                    .as_ref()
                    .map_or(String::new(), |p| format!(" [{p}]")),
            );
        }
        for (k, why) in &chaos_report.missed {
            println!("missed kill {k}: {why}");
        }
        if timed_out {
            println!("TIMED OUT waiting for the sink (--timeout)");
        }
        println!(
            "accepted:          {accepted} of {} (gave up on {failed}{})",
            args.messages,
            if never_sent > 0 {
                format!(", never sent {never_sent}")
            } else {
                String::new()
            }
        );
        println!(
            "delivered:         {delivered} distinct ({} copies at the sink)",
            tracker.total.load(Ordering::Relaxed)
        );
        println!(
            "lost:              {lost}{}",
            if lost_examples.is_empty() {
                String::new()
            } else {
                format!(" (e.g. seq {lost_examples:?})")
            }
        );
        println!(
            "duplicated:        {duplicated} ({extra_copies} extra copies){}",
            if dup_examples.is_empty() {
                String::new()
            } else {
                format!(" (e.g. seq {dup_examples:?})")
            }
        );
        println!(
            "ambiguous retries: {ambiguous_resent} re-sent after no reply to the final dot, \
             {ambiguous_dups} of them delivered twice"
        );
        println!("unexpected:        {unexpected} (delivered but never answered 250)");
        println!(
            "kills:             {leader_kills} leader / {done_kills} total ({})",
            args.signal.name()
        );
        let s = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}s"));
        println!(
            "kill -> next 250:  median {}, max {}",
            s(gap_median),
            s(gap_max)
        );
        println!(
            "longest no-250 after a kill (until ready + 2s): median {}, max {}",
            s(median(&stall_vals)),
            s(stall_vals.last().copied())
        );
        println!("longest no-250:    {stall:.3}s overall (from {stall_at:.3}s)");
        println!(
            "ingest:            {rate:.1} msgs/s ({accepted} in {last_ok:.3}s; sending ended at {:.3}s); \
             re-sends {}, reconnects {}, 4xx {}",
            ingest_end.as_secs_f64(),
            ing.resends.load(Ordering::Relaxed),
            ing.reconnects.load(Ordering::Relaxed),
            ing.tempfails.load(Ordering::Relaxed)
        );
        println!(
            "all delivered at:  {deliver_secs:.3}s (incl. {:?} grace)",
            if timed_out {
                Duration::ZERO
            } else {
                args.dup_grace
            }
        );
        if accepted < args.messages {
            println!(
                "warning: {} messages were never answered 250",
                args.messages - accepted
            );
        }
        for e in &errors {
            println!("error: {e}");
        }
    }
    for e in &errors {
        eprintln!("baton-chaos: error: {e}");
    }
    std::process::exit(if lost == 0 && errors.is_empty() { 0 } else { 1 });
}

/// With --kill-after-messages the kills are part of what is checked: every
/// requested kill must have been carried out and its victim be back.
fn paced_errors(requested: u32, kills: &[Kill], missed: &[(u32, String)]) -> Vec<String> {
    let mut errors = Vec::new();
    let done = kills.iter().filter(|k| k.pid != 0).count();
    if done < requested as usize {
        errors.push(format!(
            "{done} of the {requested} requested kills were carried out"
        ));
    }
    for (i, k) in kills.iter().enumerate() {
        if let Some(p) = &k.problem {
            errors.push(format!("kill {} (node {}): {p}", i + 1, k.node));
        }
    }
    for (k, why) in missed {
        errors.push(format!("kill {k} missed: {why}"));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill_at(ns: u64) -> Kill {
        Kill {
            node: 1,
            leader: true,
            pid: 1,
            at_ns: ns,
            settled: 0,
            in_flight: 0,
            exited_after: None,
            ready_after: None,
            caught_up_after: None,
            new_pid: None,
            problem: None,
        }
    }

    #[test]
    fn paced_runs_fail_without_every_kill() {
        let ok = kill_at(1);
        assert!(paced_errors(2, &[ok.clone(), ok.clone()], &[]).is_empty());
        let mut unready = ok.clone();
        unready.problem = Some("restarted node not ready after 60 s".into());
        let e = paced_errors(2, &[ok.clone(), unready], &[]);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].contains("kill 2") && e[0].contains("not ready"),
            "{e:?}"
        );
        let mut unsent = ok.clone();
        unsent.pid = 0;
        unsent.problem = Some("reading pid: no such file".into());
        let missed = [(3, "not attempted: kill 2's victim is not back".to_string())];
        let e = paced_errors(3, &[ok, unsent], &missed);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].contains("1 of the 3"), "{e:?}");
        assert!(e[2].contains("kill 3 missed"), "{e:?}");
        // No kills requested: nothing to miss.
        assert!(paced_errors(0, &[], &[]).is_empty());
    }

    #[test]
    fn gaps_and_median() {
        let ok = [1_000_000_000, 2_000_000_000, 5_000_000_000];
        let g = gaps_after_kills(&[kill_at(1_500_000_000), kill_at(6_000_000_000)], &ok);
        assert_eq!(g, vec![Some(0.5), None]);
        assert_eq!(median(&[1.0, 2.0, 10.0]), Some(2.0));
        assert_eq!(median(&[1.0, 3.0]), Some(2.0));
        assert_eq!(median(&[]), None);
        assert_eq!(longest_stall(&ok), (3.0, 2.0));
        // A 250 in flight right after the kill does not hide the outage.
        let ok = [1_000_000_000, 1_001_000_000, 3_001_000_000, 3_100_000_000];
        let st = stalls_after_kills(&[kill_at(1_000_500_000)], &ok);
        assert_eq!(st, vec![Some(2.0)]);
        assert_eq!(
            stalls_after_kills(&[kill_at(4_000_000_000)], &ok),
            vec![None]
        );
        // A stall that starts after the next kill belongs to that kill.
        let ok = [1_100_000_000, 1_200_000_000, 5_000_000_000];
        let st = stalls_after_kills(&[kill_at(1_000_000_000), kill_at(1_150_000_000)], &ok);
        assert_eq!(st, vec![Some(0.1), Some(3.8)]);
    }
}
