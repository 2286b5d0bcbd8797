//! What tests of an operator's view share: `batonctl` against a node, password hashes
//! for `[[smtp.user]]`, and the scripted receivers' replies with the counts of a sink's
//! events per second.

use crate::{Node, bin};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// Gmail's rate limit (the first line as in crates/baton-reputation/tests/fixtures).
pub const GMAIL_RATE: &str = "421-4.7.28 Gmail has detected an unusual rate of email originating from your IP address 127.0.0.1. To protect our users from spam, email sent from your IP address has been temporarily rate limited.\n421 4.7.28 Please visit https://support.google.com/mail/?p=UnsolicitedRateLimitError - gsmtp";
/// Outlook's block.
pub const S3150: &str = "550 5.7.1 Unfortunately, messages from [127.0.0.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).";

/// What a `batonctl` run printed, and how it exited.
pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `batonctl ARGS` against `node`'s admin API (no token).
pub fn ctl(node: &Node, args: &[&str]) -> Ctl {
    let out = Command::new(bin("batonctl"))
        .arg("--server")
        .arg(format!("http://{}", node.admin))
        .args(args)
        .env_remove("BATON_TOKEN")
        .env_remove("BATON_SERVER")
        .output()
        .expect("run batonctl");
    Ctl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `batonctl --json ARGS`, which must succeed: its JSON document.
pub fn ctl_json(node: &Node, args: &[&str]) -> Value {
    let out = ctl(node, &[&["--json"][..], args].concat());
    assert_eq!(out.code, 0, "batonctl {args:?}: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", out.stdout))
}

/// Events of `kind` (JSON objects), oldest first.
pub fn events(node: &Node, kind: &str) -> Vec<Value> {
    let out = ctl(node, &["--json", "events", "--kind", kind]);
    assert_eq!(out.code, 0, "batonctl events: {}", out.stderr);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("an event"))
        .collect()
}

/// `batonctl hash-password` of `password`, for `[[smtp.user]] password_hash`.
pub fn password_hash(password: &str) -> String {
    let mut child = Command::new(bin("batonctl"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("batonctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    let out = child.wait_with_output().expect("hash-password");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// Queues `n` messages from `s@src.test` to `to` over one session.
pub fn queue_messages(node: &Node, n: usize, to: &str) {
    let mut c = node.smtp();
    c.hello();
    for i in 0..n {
        let body = format!("From: <s@src.test>\r\nTo: <{to}>\r\nSubject: m{i}\r\n\r\nHello.\r\n");
        let reply = c.send_mail("s@src.test", &[to], &body);
        assert!(reply.starts_with("250 "), "{reply}");
    }
    c.cmd("QUIT", "221");
}

/// Counts per wall-clock second (a scripted sink's rate windows) of `times` (unix ms).
pub fn per_second(times: &[u64]) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for t in times {
        *out.entry(t / 1000).or_insert(0) += 1;
    }
    out
}

/// Unix milliseconds now, to compare with a sink's event times.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The one node among `nodes` that says it leads (`baton_raft_leader` 1), if exactly one.
pub fn leader_of(nodes: &[&Node]) -> Option<u64> {
    let leaders: Vec<u64> = nodes
        .iter()
        .filter(|n| n.metric("baton_raft_leader") == 1.0)
        .map(|n| n.id)
        .collect();
    (leaders.len() == 1).then(|| leaders[0])
}

/// Sends message number `n` (header `X-Seq: n`) through `node`, asserting the 250.
pub fn send_numbered(node: &Node, n: usize) {
    let mut c = node.smtp();
    c.hello();
    let reply = c.send_mail(
        "s@src.test",
        &["u@dst.test"],
        &format!("Subject: message {n}\r\nX-Seq: {n}\r\n\r\nbody\r\n"),
    );
    assert!(reply.starts_with("250"), "node {}: {reply}", node.id);
    c.cmd("QUIT", "221");
}

/// (leader id, member ids sorted) in `batonctl status` on `node`; 0 while no leader.
pub fn members(node: &Node) -> (u64, Vec<u64>) {
    let st = ctl_json(node, &["status"]);
    let mut ids: Vec<u64> = st["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members: {st}"))
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .collect();
    ids.sort_unstable();
    (st["leader_id"].as_u64().unwrap_or(0), ids)
}
