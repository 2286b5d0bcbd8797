//! A short chaos run, as in CI: `cluster/local.sh up 3` (three nodes behind HAProxy with
//! PROXY v2), then `baton-chaos` pushes 2,000 uniquely numbered messages through the load
//! balancer while it SIGKILLs a node after every 500 settled messages (the leader at least
//! once) and restarts it. The kills are tied to progress, not to the clock: the clients
//! wait at a gate until each kill was carried out, so all three happen under load on a
//! fast machine and on a slow one alike. Nothing answered 250 may be lost. Then
//! `local.sh restart 1` restarts the bootstrapping node, appending to its log.

use baton_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

struct LocalCluster {
    script: PathBuf,
    dir: tempfile::TempDir,
}

impl LocalCluster {
    fn command(&self, arg: &str, lb: &str, smarthost: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg(&self.script)
            .arg(arg)
            .env("BATON_LOCAL_DIR", self.dir.path())
            .env("BATOND", bin("batond"))
            .env("LB_ADDR", lb)
            .env("SMARTHOST", smarthost)
            .env("BATON_LOG", "info,openraft=warn");
        c
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.command("down", "", "").output();
    }
}

#[test]
fn chaos_with_sigkills_through_haproxy_loses_nothing() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster/local.sh");
    let lb = format!("127.0.0.40:{}", free_port());
    let smarthost = format!("127.0.0.41:{}", free_port());
    let cluster = LocalCluster {
        script,
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let up = cluster
        .command("up", &lb, &smarthost)
        .arg("3")
        .output()
        .expect("run cluster/local.sh");
    assert!(
        up.status.success(),
        "local.sh up 3 failed:\n{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let said = String::from_utf8_lossy(&up.stdout);
    for i in 1..=3 {
        // Ports as numbers, not "raft 7300+1".
        let line = format!(
            "node {i} ready: smtp 127.0.0.1:{} raft 127.0.0.1:{} admin http://127.0.0.1:{} \
             http http://127.0.0.1:{}",
            2600 + i,
            7300 + i,
            7400 + i,
            9400 + i
        );
        assert!(said.contains(&line), "{line:?} not in:\n{said}");
    }
    let started = std::time::Instant::now();
    let out = Command::new(bin("baton-chaos"))
        .args(["--messages", "2000", "--size", "4k", "--connections", "10"])
        .args([
            "--kills",
            &KILLS.to_string(),
            "--kill-after-messages",
            &KILL_AFTER.to_string(),
            "--leader-fraction",
            "0.34",
        ])
        .args(["--target", &lb, "--sink", &smarthost, "--timeout", "240s"])
        .arg("--local-dir")
        .arg(cluster.dir.path())
        .env("BATOND", bin("batond"))
        .output()
        .expect("run baton-chaos");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "{}{report}\n(chaos run took {:?})",
        String::from_utf8_lossy(&out.stderr),
        started.elapsed()
    );
    let field = |name: &str| -> u64 {
        report
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no '{name}' in the report"))
    };
    assert_eq!(field("lost:"), 0, "accepted mail was lost");
    assert!(field("accepted:") >= 1900, "too little was accepted");
    let missed: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("missed kill"))
        .collect();
    assert!(missed.is_empty(), "kills were not carried out: {missed:?}");
    // Summary: "kills:             L leader / T total (SIGKILL)".
    let leader_kills = field("kills:");
    let total_kills = report
        .lines()
        .find_map(|l| l.strip_prefix("kills:"))
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(_, t)| t.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("no total in the 'kills:' line");
    assert_eq!(
        total_kills, KILLS,
        "not every requested kill was carried out"
    );
    assert!(leader_kills >= 1, "the leader was never killed");
    // "kill 1: ...", not the "kill -> next 250:" summary.
    let kill_lines: Vec<&str> = report
        .lines()
        .filter(|l| {
            l.strip_prefix("kill ")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    assert_eq!(kill_lines.len() as u64, KILLS, "{kill_lines:?}");
    for (i, line) in kill_lines.iter().enumerate() {
        let (settled, in_flight) =
            settled_at_kill(line).unwrap_or_else(|| panic!("no progress in {line:?}"));
        let due = (i as u64 + 1) * KILL_AFTER;
        assert!(
            settled >= due,
            "kill {} came before {due} settled: {line}",
            i + 1
        );
        assert!(in_flight > 0, "kill {} hit an idle load: {line}", i + 1);
        assert!(!line.contains(" ["), "kill {} had a problem: {line}", i + 1);
    }
    assert!(out.status.success(), "baton-chaos failed");
    assert!(started.elapsed() < Duration::from_secs(300));
    restart_node_1(&cluster, &lb, &smarthost);
}

/// `local.sh restart 1`: node 1's config bootstraps, but with its data it rejoins the
/// cluster (ready again, as a member: `/readyz` says so only with a leader). Its log is
/// appended to: everything before the restart, the chaos run's kills included, stays.
fn restart_node_1(cluster: &LocalCluster, lb: &str, smarthost: &str) {
    let node = cluster.dir.path().join("node1");
    let log_before = std::fs::read_to_string(node.join("batond.log")).expect("node 1's log");
    let pid_before = std::fs::read_to_string(node.join("pid")).expect("node 1's pid");
    let restart = cluster
        .command("restart", lb, smarthost)
        .arg("1")
        .output()
        .expect("run cluster/local.sh restart 1");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&restart.stdout),
        String::from_utf8_lossy(&restart.stderr)
    );
    assert!(
        restart.status.success(),
        "local.sh restart 1 failed:\n{said}"
    );
    assert!(
        said.contains(&format!("stopping node 1 (pid {})", pid_before.trim())),
        "{said}"
    );
    assert!(
        said.contains("node 1 ready: smtp 127.0.0.1:2601 raft 127.0.0.1:7301"),
        "{said}"
    );
    let pid_after = std::fs::read_to_string(node.join("pid")).expect("node 1's pid");
    assert_ne!(pid_before, pid_after, "a new process");
    let log_after = std::fs::read_to_string(node.join("batond.log")).expect("node 1's log");
    assert!(
        log_after.starts_with(&log_before) && log_after.len() > log_before.len(),
        "node 1's log was not appended to ({} bytes before, {} after)",
        log_before.len(),
        log_after.len()
    );
    assert_eq!(
        log_after.matches("local.sh: starting node 1 at").count(),
        2,
        "one mark for `up`, one for `restart`"
    );
    // The others may briefly miss a leader if node 1 handed leadership over.
    let mut status = String::new();
    let ready = |status: &str, i: u32| {
        status
            .lines()
            .any(|l| l.starts_with(&format!("node {i} pid ")) && l.contains("readyz 200"))
    };
    let all = (0..150).any(|_| {
        let out = cluster
            .command("status", lb, smarthost)
            .output()
            .expect("run cluster/local.sh status");
        status = String::from_utf8_lossy(&out.stdout).into_owned();
        let all = (1..=3).all(|i| ready(&status, i));
        if !all {
            std::thread::sleep(Duration::from_millis(200));
        }
        all
    });
    assert!(all, "not every node ready after the restart:\n{status}");
}

const KILLS: u64 = 3;
/// Kill k comes once k * KILL_AFTER messages are settled.
const KILL_AFTER: u64 = 500;

/// From "kill 1: node 2 pid 7 at 1.234s after 503 settled (10 in flight), ...":
/// (settled, in flight) when the signal was sent.
fn settled_at_kill(line: &str) -> Option<(u64, u64)> {
    let (_, rest) = line.split_once("s after ")?;
    let (settled, rest) = rest.split_once(" settled (")?;
    let (in_flight, _) = rest.split_once(" in flight)")?;
    Some((settled.parse().ok()?, in_flight.parse().ok()?))
}
