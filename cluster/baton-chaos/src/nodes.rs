//! The chaos side: find the leader, kill a node of the `cluster/local.sh`
//! cluster, restart it the way local.sh does, wait for its `/readyz`. Kills
//! come on the clock (`--kill-every`) or after progress
//! (`--kill-after-messages`, see `pacing.rs`).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::Ingest;
use crate::pacing::Pacing;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sig {
    Kill,
    Term,
}

impl Sig {
    fn number(self) -> libc::c_int {
        match self {
            Sig::Kill => libc::SIGKILL,
            Sig::Term => libc::SIGTERM,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sig::Kill => "SIGKILL",
            Sig::Term => "SIGTERM",
        }
    }
}

/// When kills happen.
#[derive(Debug, Clone, Copy)]
pub enum Schedule {
    /// `--kill-every`: the first kill at `first`, each next one `every` after
    /// the previous one (and not before its victim is back); kills stop once
    /// the clients have sent everything.
    Clock { first: Duration, every: Duration },
    /// `--kill-after-messages`: kills after settled messages, with the
    /// clients held at a gate until each kill was carried out.
    Progress(Pacing),
}

/// Settings of the chaos task.
pub struct ChaosConfig {
    pub local_dir: PathBuf,
    pub nodes: u32,
    pub kills: u32,
    pub schedule: Schedule,
    pub leader_fraction: f64,
    pub signal: Sig,
    pub restart_after: Duration,
    pub batond: PathBuf,
    pub seed: u64,
    pub quiet: bool,
}

/// What happened to one kill.
#[derive(Debug, Clone)]
pub struct Kill {
    pub node: u32,
    pub leader: bool,
    pub pid: i32,
    /// Nanoseconds since the ingest epoch when the signal was sent.
    pub at_ns: u64,
    /// Messages settled (answered 250 or given up on) when the signal was sent.
    pub settled: u64,
    /// Messages taken by a connection and not yet settled when the signal was sent.
    pub in_flight: u64,
    /// Time from the signal until the process was gone.
    pub exited_after: Option<Duration>,
    /// Time from the signal until the restarted node answered `/readyz` 200.
    pub ready_after: Option<Duration>,
    /// Time from the signal until the restarted node had applied the log up
    /// to the leader's commit index as of its readiness.
    pub caught_up_after: Option<Duration>,
    pub new_pid: Option<i32>,
    pub problem: Option<String>,
}

/// splitmix64: enough randomness to pick victims.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n.max(1))) as u32
    }
}

/// Minimum number of leader kills among `kills`: ceil(kills / 3).
pub fn min_leader_kills(kills: u32) -> u32 {
    kills.div_ceil(3)
}

/// Whether kill number `k` (0-based) of `total` must, or by chance does, hit the leader.
fn pick_leader(k: u32, total: u32, leader_kills: u32, fraction: f64, rng: &mut Rng) -> bool {
    let need = min_leader_kills(total).saturating_sub(leader_kills);
    let remaining = total - k;
    need >= remaining || rng.unit() < fraction
}

/// What the chaos task did: the kills it attempted, and the requested kills
/// it did not attempt (1-based number, reason).
#[derive(Debug, Default)]
pub struct ChaosReport {
    pub kills: Vec<Kill>,
    pub missed: Vec<(u32, String)>,
}

impl ChaosReport {
    fn miss(&mut self, kills: std::ops::Range<u32>, why: &str) {
        self.missed.extend(kills.map(|k| (k + 1, why.to_string())));
    }
}

/// Raises the gate fully when the chaos task ends, however it ends, so that
/// no client waits for a kill that will not come.
struct OpenGateOnDrop(Arc<Ingest>);

impl Drop for OpenGateOnDrop {
    fn drop(&mut self) {
        self.0.raise_gate(u64::MAX);
    }
}

/// How long a kill waits for the load to resume after the clients waited at the gate.
const WARM_UP_LIMIT: Duration = Duration::from_secs(30);

fn http_port(node: u32) -> u16 {
    (9400 + node) as u16
}

/// A minimal HTTP/1.0 GET on 127.0.0.1 (bounded in time and size).
async fn http_get(port: u16, path: &str, limit: Duration) -> anyhow::Result<(u16, String)> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut body = Vec::new();
        s.take(8 << 20).read_to_end(&mut body).await?;
        anyhow::Ok(body)
    };
    let body = tokio::time::timeout(limit, fut)
        .await
        .context("HTTP request timed out")??;
    let text = String::from_utf8_lossy(&body).into_owned();
    let status = text
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP response")?;
    Ok((status, text))
}

/// The value of gauge `name` in node `node`'s /metrics.
async fn gauge(node: u32, name: &str) -> Option<f64> {
    match http_get(http_port(node), "/metrics", Duration::from_secs(2)).await {
        Ok((200, text)) => text.lines().find_map(|l| {
            let mut f = l.split_ascii_whitespace();
            if f.next() == Some(name) {
                f.next().and_then(|v| v.parse().ok())
            } else {
                None
            }
        }),
        _ => None,
    }
}

async fn is_leader(node: u32) -> bool {
    gauge(node, "baton_raft_leader").await == Some(1.0)
}

async fn is_ready(node: u32) -> bool {
    matches!(
        http_get(http_port(node), "/readyz", Duration::from_secs(2)).await,
        Ok((200, _))
    )
}

/// The current leader, polled for at most `limit`.
async fn find_leader(nodes: u32, limit: Duration) -> Option<u32> {
    let until = Instant::now() + limit;
    // Bounded by `limit` (each round takes at least 100 ms).
    while Instant::now() < until {
        for i in 1..=nodes {
            if is_leader(i).await {
                return Some(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn node_dir(cfg: &ChaosConfig, node: u32) -> PathBuf {
    cfg.local_dir.join(format!("node{node}"))
}

fn read_pid(dir: &Path) -> anyhow::Result<i32> {
    let p = dir.join("pid");
    let s = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    s.trim()
        .parse()
        .with_context(|| format!("bad pid in {}", p.display()))
}

/// NUL-separated `/proc/<pid>/<file>` entries.
fn proc_entries(pid: i32, file: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Refuse to signal a pid that is not batond running node `node`'s config
/// (a stale pid file must never make us kill something else).
fn check_is_node(pid: i32, node: u32) -> anyhow::Result<()> {
    let args = proc_entries(pid, "cmdline");
    let cfg_name = format!("node{node}/baton.toml");
    let is_batond = args.first().is_some_and(|a| a.contains("batond"));
    if !is_batond || !args.iter().any(|a| a.ends_with(&cfg_name)) {
        bail!("pid {pid} is not batond for node {node} (cmdline {args:?})");
    }
    Ok(())
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // State is the field after the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_ascii_whitespace().next());
            !matches!(state, Some("Z" | "X") | None)
        }
        Err(_) => false,
    }
}

fn signal(pid: i32, sig: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The chaos task: up to `kills` kills while the ingest runs.
pub struct Chaos {
    cfg: ChaosConfig,
    ing: Arc<Ingest>,
    /// Nodes this process started (reaped after they are killed).
    children: HashMap<u32, Child>,
    rng: Rng,
}

impl Chaos {
    pub fn new(cfg: ChaosConfig, ing: Arc<Ingest>) -> Self {
        let rng = Rng(cfg.seed);
        Chaos {
            cfg,
            ing,
            children: HashMap::new(),
            rng,
        }
    }

    fn say(&self, s: String) {
        if !self.cfg.quiet {
            eprintln!("baton-chaos: {s}");
        }
    }

    /// Sleep until `at` (ns since the ingest epoch); false if ingest ended first.
    async fn wait_until(&self, at_ns: u64) -> bool {
        // Bounded: the deadline ends ingest.
        loop {
            if self.ing.done.load(Ordering::Acquire)
                || tokio::time::Instant::now() >= self.ing.deadline
            {
                return false;
            }
            let now = self.ing.epoch.elapsed().as_nanos() as u64;
            if now >= at_ns {
                return true;
            }
            let step = Duration::from_nanos(at_ns - now).min(Duration::from_millis(20));
            tokio::time::sleep(step).await;
        }
    }

    pub async fn run(mut self) -> ChaosReport {
        let _open = OpenGateOnDrop(self.ing.clone());
        let mut rep = ChaosReport::default();
        match self.cfg.schedule {
            Schedule::Clock { first, every } => self.run_clock(first, every, &mut rep).await,
            Schedule::Progress(pacing) => self.run_paced(pacing, &mut rep).await,
        }
        rep
    }

    async fn run_clock(&mut self, first: Duration, every: Duration, rep: &mut ChaosReport) {
        let mut next_at = first.as_nanos() as u64;
        let total = self.cfg.kills;
        for k in 0..total {
            if !self.wait_until(next_at).await {
                let why = if tokio::time::Instant::now() >= self.ing.deadline {
                    "--timeout passed first"
                } else {
                    "the clients had sent every message first (raise --messages, \
                     or use --kill-after-messages)"
                };
                rep.miss(k..total, why);
                break;
            }
            let kill = self.kill_next(k, total, &rep.kills).await;
            let at = kill.at_ns;
            rep.kills.push(kill);
            let ready_ns = self.ing.epoch.elapsed().as_nanos() as u64;
            next_at = (at + every.as_nanos() as u64).max(ready_ns);
        }
    }

    /// Kill `k` once `pacing.threshold(k)` messages are settled (the previous
    /// victim is back by then: `kill_and_restart` waited for it), raising the
    /// clients' gate to the next kill's just before the signal.
    async fn run_paced(&mut self, pacing: Pacing, rep: &mut ChaosReport) {
        let total = pacing.kills;
        for k in 0..total {
            let due = pacing.threshold(k);
            if !self.ing.wait_settled(due, self.ing.deadline).await {
                let why = format!(
                    "--timeout passed with {} messages settled; kill {} waited for {due}",
                    self.ing.settled(),
                    k + 1
                );
                self.say(why.clone());
                rep.miss(k..total, &why);
                return;
            }
            let (settled, issued) = (self.ing.settled(), self.ing.issued());
            let warm_up = pacing.warm_up_target(k, settled, issued);
            self.ing.raise_gate(pacing.gate(k + 1));
            if let Some(target) = warm_up {
                self.say(format!(
                    "the clients waited at the gate ({issued} taken, {settled} settled); \
                     kill {} waits until {target} are settled",
                    k + 1
                ));
                let until = tokio::time::Instant::now() + WARM_UP_LIMIT;
                if !self.ing.wait_settled(target, until).await {
                    if tokio::time::Instant::now() >= self.ing.deadline {
                        let why = format!("--timeout passed while kill {} waited for load", k + 1);
                        rep.miss(k..total, &why);
                        return;
                    }
                    self.say(format!(
                        "load did not resume within {WARM_UP_LIMIT:?}; killing anyway"
                    ));
                }
            }
            let kill = self.kill_next(k, total, &rep.kills).await;
            let back = kill.pid != 0 && kill.ready_after.is_some();
            let why = format!(
                "not attempted: kill {} did not end with its victim (node {}) back: {}",
                k + 1,
                kill.node,
                kill.problem.as_deref().unwrap_or("no reason recorded")
            );
            rep.kills.push(kill);
            if !back && k + 1 < total {
                // Killing another node now could leave no quorum at all.
                self.say(why.clone());
                rep.miss(k + 1..total, &why);
                return;
            }
        }
    }

    /// Kill number `k` (0-based) of `total`: the leader or another node.
    async fn kill_next(&mut self, k: u32, total: u32, done: &[Kill]) -> Kill {
        let leader_kills = done.iter().filter(|x| x.leader).count() as u32;
        let want_leader = pick_leader(
            k,
            total,
            leader_kills,
            self.cfg.leader_fraction,
            &mut self.rng,
        );
        let leader = find_leader(self.cfg.nodes, Duration::from_secs(10)).await;
        let (node, is_leader) = match leader {
            Some(l) if want_leader => (l, true),
            Some(l) if self.cfg.nodes > 1 => {
                // A random node other than the leader.
                let mut n = 1 + self.rng.below(self.cfg.nodes - 1);
                if n >= l {
                    n += 1;
                }
                (n, false)
            }
            Some(l) => (l, true),
            None => {
                self.say("no leader found within 10 s; killing a random node".into());
                (1 + self.rng.below(self.cfg.nodes), false)
            }
        };
        self.kill_and_restart(node, is_leader).await
    }

    async fn kill_and_restart(&mut self, node: u32, leader: bool) -> Kill {
        let mut kill = Kill {
            node,
            leader,
            pid: 0,
            at_ns: self.ing.epoch.elapsed().as_nanos() as u64,
            settled: 0,
            in_flight: 0,
            exited_after: None,
            ready_after: None,
            caught_up_after: None,
            new_pid: None,
            problem: None,
        };
        let dir = node_dir(&self.cfg, node);
        let pid = match read_pid(&dir).and_then(|p| check_is_node(p, node).map(|()| p)) {
            Ok(p) => p,
            Err(e) => {
                kill.problem = Some(format!("{e:#}"));
                self.say(format!("node {node}: not killed: {e:#}"));
                return kill;
            }
        };
        kill.pid = pid;
        // The victim's BATON_LOG, so the restarted node logs like the others.
        let victim_log = proc_entries(pid, "environ")
            .into_iter()
            .find_map(|e| e.strip_prefix("BATON_LOG=").map(str::to_string));
        let t0 = Instant::now();
        kill.at_ns = self.ing.epoch.elapsed().as_nanos() as u64;
        kill.settled = self.ing.settled();
        kill.in_flight = self.ing.issued().saturating_sub(kill.settled);
        if let Err(e) = signal(pid, self.cfg.signal.number()) {
            kill.problem = Some(format!("{e:#}"));
            return kill;
        }
        self.say(format!(
            "kill at {:.3}s after {} settled ({} in flight): node {node}{} pid {pid} {}",
            kill.at_ns as f64 / 1e9,
            kill.settled,
            kill.in_flight,
            if leader { " (leader)" } else { "" },
            self.cfg.signal.name()
        ));
        // Wait for it to be gone: 10 s after SIGKILL, 60 s of drain after SIGTERM
        // (then SIGKILL).
        let limit = match self.cfg.signal {
            Sig::Kill => Duration::from_secs(10),
            Sig::Term => Duration::from_secs(60),
        };
        if !self.wait_gone(node, pid, limit).await {
            if self.cfg.signal == Sig::Term {
                let _ = signal(pid, libc::SIGKILL);
                kill.problem = Some(format!("still running {limit:?} after SIGTERM; SIGKILLed"));
            }
            if !self.wait_gone(node, pid, Duration::from_secs(10)).await {
                kill.problem = Some("did not exit after SIGKILL; not restarted".into());
                return kill;
            }
        }
        kill.exited_after = Some(t0.elapsed());
        tokio::time::sleep(self.cfg.restart_after).await;
        match self.restart(node, victim_log) {
            Ok(new_pid) => kill.new_pid = Some(new_pid),
            Err(e) => {
                kill.problem = Some(format!("restart failed: {e:#}"));
                self.say(format!("node {node}: restart failed: {e:#}"));
                return kill;
            }
        }
        // Bounded: 60 s, like local.sh's wait_ready, and the deadline.
        let until = self.until(Duration::from_secs(60));
        while Instant::now() < until {
            if let Some(c) = self.children.get_mut(&node)
                && let Ok(Some(st)) = c.try_wait()
            {
                kill.problem = Some(format!("restarted node exited: {st}"));
                self.say(format!(
                    "node {node}: restarted node exited ({st}); see {}",
                    dir.join("batond.log").display()
                ));
                return kill;
            }
            if is_ready(node).await {
                kill.ready_after = Some(t0.elapsed());
                self.say(format!(
                    "node {node} pid {} ready {:.3}s after the kill",
                    kill.new_pid.unwrap_or(0),
                    t0.elapsed().as_secs_f64()
                ));
                self.wait_caught_up(node, t0, &mut kill).await;
                return kill;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        kill.problem = Some(if self.past_deadline() {
            "restarted node not ready before --timeout".into()
        } else {
            "restarted node not ready after 60 s".into()
        });
        kill
    }

    /// `limit` from now, but not past the deadline.
    fn until(&self, limit: Duration) -> Instant {
        (Instant::now() + limit).min(self.ing.deadline.into_std())
    }

    fn past_deadline(&self) -> bool {
        tokio::time::Instant::now() >= self.ing.deadline
    }

    /// Wait (at most 30 s) until `node` has applied what the leader had
    /// committed when `node` became ready, so the next kill does not leave a
    /// quorum that depends on a node still catching up.
    async fn wait_caught_up(&self, node: u32, t0: Instant, kill: &mut Kill) {
        let Some(leader) = find_leader(self.cfg.nodes, Duration::from_secs(10)).await else {
            return;
        };
        let Some(target) = gauge(leader, "baton_raft_commit_index").await else {
            return;
        };
        let until = self.until(Duration::from_secs(30));
        // Bounded by 30 s and the deadline.
        while Instant::now() < until {
            if gauge(node, "baton_raft_applied_index")
                .await
                .is_some_and(|a| a >= target)
            {
                kill.caught_up_after = Some(t0.elapsed());
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.say(format!(
            "node {node}: not caught up 30 s after ready (or before --timeout)"
        ));
    }

    /// Wait (at most `limit`) for `pid` to be gone, reaping it if it is ours.
    async fn wait_gone(&mut self, node: u32, pid: i32, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        // Bounded by `limit`.
        while Instant::now() < until {
            if let Some(c) = self.children.get_mut(&node)
                && c.id() as i32 == pid
            {
                if let Ok(Some(_)) = c.try_wait() {
                    self.children.remove(&node);
                    return true;
                }
            } else if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Start node `node` as local.sh does and record its pid.
    fn restart(&mut self, node: u32, victim_log: Option<String>) -> anyhow::Result<i32> {
        let dir = node_dir(&self.cfg, node);
        let config = dir.join("baton.toml");
        let append = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .with_context(|| format!("opening {}", dir.join(name).display()))
        };
        let log = std::env::var("BATON_LOG")
            .ok()
            .or(victim_log)
            .unwrap_or_else(|| "info".into());
        let mut cmd = Command::new(&self.cfg.batond);
        cmd.arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1")
            .env("BATON_LOG", log)
            .stdin(Stdio::null())
            .stdout(append("stdout.log")?)
            .stderr(append("batond.log")?);
        // Own process group: a ^C to baton-chaos must not reach the node.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.cfg.batond.display()))?;
        let pid = child.id() as i32;
        let pid_file = dir.join("pid");
        let tmp = dir.join("pid.chaos.tmp");
        std::fs::write(&tmp, format!("{pid}\n"))?;
        std::fs::rename(&tmp, &pid_file)?;
        self.children.insert(node, child);
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_minimum_is_met() {
        for total in 1..20 {
            // Even with fraction 0, at least ceil(total/3) kills hit the leader.
            let mut rng = Rng(1);
            let mut leaders = 0;
            for k in 0..total {
                if pick_leader(k, total, leaders, 0.0, &mut rng) {
                    leaders += 1;
                }
            }
            assert_eq!(leaders, min_leader_kills(total), "total {total}");
        }
        let mut rng = Rng(1);
        assert!((0..10).all(|k| pick_leader(k, 10, 10, 1.0, &mut rng)));
    }

    #[test]
    fn rng_ranges() {
        let mut rng = Rng(42);
        for _ in 0..1000 {
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(rng.below(3) < 3);
        }
    }
}
