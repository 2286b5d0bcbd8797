//! Operating the daemon: --dev, health and metrics endpoints, SIGTERM drain.

use baton_tests::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn dev_mode_runs_a_relay_on_the_contract_ports() {
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Proc::spawn(
        "batond --dev",
        Command::new(bin("batond"))
            .args(["--dev", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("BATON_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap()),
    );
    let stdout = proc.child.stdout.take().unwrap();
    // It prints each address it listens on. The pipe is closed after: the relay must
    // not care.
    let printed: Vec<String> = BufReader::new(stdout)
        .lines()
        .take(5)
        .map(|l| l.unwrap())
        .collect();
    for addr in [
        "127.0.0.1:2525",
        "127.0.0.1:9401",
        "127.0.0.1:7301",
        "127.0.0.1:7401",
    ] {
        assert!(
            printed.iter().any(|l| l.contains(addr)),
            "{addr} not in {printed:?}"
        );
    }
    let http: SocketAddr = "127.0.0.1:9401".parse().unwrap();
    wait_until("--dev /readyz", WAIT, || {
        (http_get(http, "/readyz").map(|r| r.0) == Some(200)).then_some(())
    });
    assert_eq!(http_get(http, "/healthz").map(|r| r.0), Some(200));
    let mut c = Smtp::connect("127.0.0.1:2525".parse().unwrap());
    let (code, greeting) = c.reply();
    assert_eq!(code, 220, "{greeting}");
    assert_eq!(proc.terminate(WAIT), Some(0), "SIGTERM exits 0");
    // It warns that it delivers to the internet, and says where the local setup is.
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(
        stderr.contains("real MX hosts") && stderr.contains("cluster/examples/local-sink.toml"),
        "{stderr}"
    );
}

#[test]
fn logs_carry_no_colour_into_a_file() {
    let node = Node::start(NodeOptions::default());
    let log = node.log();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI escapes in a log file:\n{log}");
}

#[test]
fn metrics_carry_every_contract_name() {
    let node = Node::start(NodeOptions::default());
    let text = node.metrics();
    for name in [
        "baton_messages_received_total",
        "baton_messages_delivered_total",
        "baton_messages_deferred_total",
        "baton_messages_bounced_total",
        "baton_queue_messages",
        "baton_raft_leader",
        "baton_raft_commit_index",
        "baton_smtp_sessions",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics:\n{text}"
        );
    }
    assert_eq!(node.metric("baton_raft_leader"), 1.0);
    assert!(node.metric("baton_raft_commit_index") >= 1.0);
}

#[test]
fn sigterm_drains_and_keeps_queued_mail() {
    let port = free_port();
    let sink_addr: SocketAddr = format!("127.0.0.17:{port}").parse().unwrap();
    let mut node = Node::start(NodeOptions {
        smarthost: Some(sink_addr),
        retry_intervals: "[\"1s\"]".into(),
        ..Default::default()
    });
    let mut c = node.smtp();
    c.hello();
    let reply = c.send_mail("s@src.test", &["u@dst.test"], "Subject: kept\r\n\r\nx\r\n");
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT", "221");
    // The sink is down: the message waits in the queue. SIGTERM exits cleanly.
    let code = node.proc.as_mut().unwrap().terminate(WAIT);
    assert_eq!(code, Some(0), "{}", node.log());
    assert!(http_get(node.http, "/readyz").is_none(), "stopped");
    let sink = Sink::start(sink_addr);
    node.restart();
    let got = sink.wait_for(1, WAIT);
    assert!(got[0].data.contains("Subject: kept"));
    wait_until("queue to empty", WAIT, || {
        (node.metric("baton_queue_messages") == 0.0).then_some(())
    });
    assert_eq!(sink.messages().len(), 1);
}
