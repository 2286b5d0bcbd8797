//! A short chaos run, as in CI: `cluster/local.sh up 3` (three nodes behind HAProxy with
//! PROXY v2), then `baton-chaos` pushes 2,000 uniquely numbered messages through the load
//! balancer while it SIGKILLs a node every few seconds (the leader at least once) and
//! restarts it. Nothing answered 250 may be lost.

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
    let started = std::time::Instant::now();
    let out = Command::new(bin("baton-chaos"))
        .args(["--messages", "2000", "--size", "4k", "--connections", "10"])
        .args([
            "--kills",
            "3",
            "--kill-every",
            "3s",
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
    let kills = report.lines().filter(|l| l.starts_with("kill ")).count();
    assert!(kills >= 3, "only {kills} kills happened");
    assert!(out.status.success(), "baton-chaos failed");
    assert!(started.elapsed() < Duration::from_secs(300));
}
