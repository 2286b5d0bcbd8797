//! MTA-STS (RFC 8461), black box: dnsmasq publishes `_mta-sts` TXT records and the MX
//! and policy hosts, a Python HTTPS server (tests/python/sts_policy_server.py) on
//! 127.0.0.x:443 serves the policies with a certificate from a test CA, which batond
//! trusts through `delivery.tls_ca_file`. Cases:
//! - `enforce` with a plain MX (a baton-sink without STARTTLS): nothing is sent, the
//!   message is deferred with `451 4.7.5`, and with the policy server stopped the cached
//!   policy still holds once a refresh is due and fails;
//! - `enforce` with an MX speaking STARTTLS with a certificate from the test CA for the
//!   policy's MX name (a second batond): delivered, the event names the policy; a policy
//!   whose `mx` matches no MX host: `451 4.4.4`;
//! - three nodes: SIGKILL of the domain's owner with the policy server stopped; the new
//!   owner enforces the replicated policy.

use baton_tests::*;
use serde_json::Value;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// `[delivery]` TOML turning MTA-STS on with `ca` trusted.
fn sts_delivery(ca: &TestCa) -> String {
    format!(
        "mta_sts = true\ntls_ca_file = \"{}\"",
        ca.ca_path().display()
    )
}

/// The policy server on `ip:443`, serving `<dir>/<host>.txt` to `Host: <host>`.
struct PolicyServer {
    proc: Proc,
}

impl PolicyServer {
    fn start(ca: &TestCa, ip: &str, hosts: &[&str], dir: &Path) -> PolicyServer {
        let (cert, key) = ca.issue(&format!("policy-{ip}"), hosts);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/sts_policy_server.py");
        let mut proc = Proc::spawn(
            "sts_policy_server",
            Command::new("python3")
                .arg(script)
                .arg(ip)
                .arg("443")
                .arg(&cert)
                .arg(&key)
                .arg(dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        );
        // It prints "ready" once it listens.
        let out = proc.child.stdout.take().expect("stdout");
        let mut first = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut first)
            .expect("read the policy server's first line");
        assert_eq!(
            first.trim(),
            "ready",
            "policy server on {ip}:443 did not start"
        );
        PolicyServer { proc }
    }

    fn stop(&mut self) {
        self.proc.kill();
    }
}

fn policy(mode: &str, mx: &[&str], max_age: u64) -> String {
    let mut text = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        text.push_str(&format!("mx: {m}\r\n"));
    }
    text.push_str(&format!("max_age: {max_age}\r\n"));
    text
}

fn send(node: &Node, to: &str) -> String {
    let mut c = node.smtp();
    c.hello();
    let reply = c.send_mail(
        "s@src.test",
        &[to],
        &format!("Subject: sts\r\nFrom: s@src.test\r\nTo: {to}\r\n\r\nbody\r\n"),
    );
    assert!(reply.starts_with("250"), "{reply}");
    queue_id(&reply)
}

/// A `kind` event of message `id` matching `test`, once there is one.
fn event_of(node: &Node, kind: &str, id: &str, test: impl Fn(&Value) -> bool) -> Value {
    wait_until(&format!("a {kind} event of {id} as wanted"), WAIT, || {
        events(node, kind)
            .into_iter()
            .find(|e| e["message_id"] == id && test(e))
    })
}

/// A deferral of message `id` by `node` matching `test`; fails as soon as `sink` got
/// anything (mail sent in clear), rather than waiting for a deferral that cannot come.
fn deferred_not_sent(node: &Node, sink: &Sink, id: &str, test: impl Fn(&Value) -> bool) -> Value {
    let found = wait_until(&format!("a deferral of {id} as wanted"), WAIT, || {
        if !sink.messages().is_empty() {
            return Some(None);
        }
        events(node, "deferred")
            .into_iter()
            .find(|e| e["message_id"] == id && test(e))
            .map(Some)
    });
    assert_eq!(sink.messages().len(), 0, "nothing may be sent in clear");
    found.expect("a deferral")
}

fn reply(e: &Value) -> &str {
    e["reply"].as_str().unwrap_or_default()
}

fn tls(e: &Value) -> &str {
    e["tls"].as_str().unwrap_or_default()
}

fn tls_policy(e: &Value) -> &str {
    e["tls_policy"].as_str().unwrap_or_default()
}

#[test]
fn enforce_never_sends_in_clear_and_the_cache_outlives_the_policy_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "mta-sts");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    // Refreshed after 20 s, expired after 40 s.
    std::fs::write(
        policies.join("mta-sts.sts1.test.txt"),
        policy("enforce", &["mx.sts1.test"], 40),
    )
    .unwrap();
    let mut server = PolicyServer::start(&ca, "127.0.0.20", &["mta-sts.sts1.test"], &policies);
    let dns = Dns::start(
        &Zone::new()
            .mx("sts1.test", 10, "mx.sts1.test")
            .a("mx.sts1.test", "127.0.0.21")
            .a("mta-sts.sts1.test", "127.0.0.20")
            .txt("_mta-sts.sts1.test", "v=STSv1; id=20240101"),
    );
    let port = free_port();
    let sink = Sink::start(format!("127.0.0.21:{port}").parse().unwrap());
    let node = Node::start(NodeOptions {
        dns: Some(dns.addr),
        mx_port: port,
        delivery: sts_delivery(&ca),
        ..Default::default()
    });

    let first = send(&node, "u@sts1.test");
    let e = deferred_not_sent(&node, &sink, &first, |e| {
        reply(e).starts_with("451 4.7.5 MTA-STS: ")
    });
    assert!(
        reply(&e).contains("mx.sts1.test[127.0.0.21]") && reply(&e).contains("STARTTLS"),
        "{e}"
    );
    assert_eq!(tls_policy(&e), "mta-sts-enforce", "{e}");
    assert_eq!(tls(&e), "", "{e}");
    assert_eq!(e["rule"], "mta-sts", "{e}");
    assert!(node.log().contains("MTA-STS policy fetched"));
    assert!(
        metric_value(&node.metrics(), "baton_mta_sts_failures_total") >= 1.0,
        "enforce deferrals counted"
    );
    // Deferrals are Baton's own: the site is not throttled or suspended for them.
    assert_eq!(
        metric_value(&node.metrics(), "baton_site_replies_total"),
        0.0
    );

    // The policy server goes away; once the refresh is due (half of max_age) it fails,
    // and the cached policy holds.
    server.stop();
    wait_until("a failed refresh", WAIT, || {
        node.log()
            .contains("MTA-STS policy not fetched; the cached policy, if any, holds")
            .then_some(())
    });
    let second = send(&node, "v@sts1.test");
    deferred_not_sent(&node, &sink, &second, |e| {
        reply(e).starts_with("451 4.7.5 MTA-STS: ") && tls_policy(e) == "mta-sts-enforce"
    });
    assert_eq!(sink.messages().len(), 0, "nothing was sent in clear");
    assert_eq!(node.metric("baton_queue_messages"), 2.0);
    assert!(events(&node, "bounced").is_empty());
}

#[test]
fn enforce_delivers_over_verified_tls_and_defers_when_no_mx_is_permitted() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "mta-sts");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("mta-sts.sts2.test.txt"),
        policy("enforce", &["mx.sts2.test"], 86400),
    )
    .unwrap();
    std::fs::write(
        policies.join("mta-sts.sts3.test.txt"),
        policy("enforce", &["other.sts3.test", "*.elsewhere.test"], 86400),
    )
    .unwrap();
    let _server = PolicyServer::start(
        &ca,
        "127.0.0.22",
        &["mta-sts.sts2.test", "mta-sts.sts3.test"],
        &policies,
    );
    // The MX: another batond on 127.0.0.1 with STARTTLS and a certificate from the test
    // CA for mx.sts2.test, relaying to a sink.
    let sink_port = free_port();
    let sink = Sink::start(format!("127.0.0.23:{sink_port}").parse().unwrap());
    let (cert, key) = ca.issue("mx", &["mx.sts2.test", "mx.sts3.test"]);
    let mx = Node::start(NodeOptions {
        smarthost: Some(format!("127.0.0.23:{sink_port}").parse().unwrap()),
        listener: format!(
            "relay_networks = [\"127.0.0.0/8\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
        ..Default::default()
    });
    let dns = Dns::start(
        &Zone::new()
            .mx("sts2.test", 10, "mx.sts2.test")
            .a("mx.sts2.test", "127.0.0.1")
            .a("mta-sts.sts2.test", "127.0.0.22")
            .txt("_mta-sts.sts2.test", "v=STSv1; id=1")
            .mx("sts3.test", 10, "mx.sts3.test")
            .a("mx.sts3.test", "127.0.0.1")
            .a("mta-sts.sts3.test", "127.0.0.22")
            .txt("_mta-sts.sts3.test", "v=STSv1; id=1"),
    );
    let node = Node::start(NodeOptions {
        dns: Some(dns.addr),
        mx_port: mx.smtp.port(),
        delivery: sts_delivery(&ca),
        ..Default::default()
    });

    let good = send(&node, "u@sts2.test");
    let got = sink.wait_for(1, WAIT);
    assert_eq!(got[0].rcpts, vec!["u@sts2.test"]);
    assert!(
        got[0].data.contains("with ESMTPS"),
        "the MX received it over TLS: {}",
        got[0].data
    );
    let e = event_of(&node, "delivered", &good, |_| true);
    assert!(
        tls(&e).starts_with("TLS") && tls_policy(&e) == "mta-sts-enforce",
        "{e}"
    );

    let bad = send(&node, "v@sts3.test");
    let e = event_of(&node, "deferred", &bad, |_| true);
    assert_eq!(
        reply(&e),
        "451 4.4.4 MTA-STS enforce policy for sts3.test permits none of its MX hosts",
        "{e}"
    );
    assert_eq!(tls_policy(&e), "mta-sts-enforce", "{e}");
    assert_eq!(tls(&e), "", "{e}");
    assert_eq!(
        sink.messages().len(),
        1,
        "nothing for sts3.test reached the MX"
    );
}

#[test]
fn a_new_owner_enforces_the_cached_policy_after_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "mta-sts");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("mta-sts.sts4.test.txt"),
        policy("enforce", &["mx.sts4.test"], 86400),
    )
    .unwrap();
    let mut server = PolicyServer::start(&ca, "127.0.0.24", &["mta-sts.sts4.test"], &policies);
    let dns = Dns::start(
        &Zone::new()
            .mx("sts4.test", 10, "mx.sts4.test")
            .a("mx.sts4.test", "127.0.0.25")
            .a("mta-sts.sts4.test", "127.0.0.24")
            .txt("_mta-sts.sts4.test", "v=STSv1; id=7"),
    );
    let port = free_port();
    let sink = Sink::start(format!("127.0.0.25:{port}").parse().unwrap());
    let options = |id: u64, join: Vec<SocketAddr>| NodeOptions {
        id,
        bootstrap: join.is_empty(),
        join,
        dns: Some(dns.addr),
        mx_port: port,
        cluster: "lease = \"3s\"".into(),
        delivery: sts_delivery(&ca),
        ..Default::default()
    };
    let n1 = Node::start(options(1, vec![]));
    let n2 = Node::start(options(2, vec![n1.raft]));
    let n3 = Node::start(options(3, vec![n1.raft, n2.raft]));
    let mut nodes = [n1, n2, n3];
    wait_until("three owners, settled", WAIT, || {
        nodes
            .iter()
            .all(|n| {
                let m = n.metrics();
                metric_value(&m, "baton_ownership_nodes") == 3.0
                    && metric_value(&m, "baton_ownership_settled") == 1.0
            })
            .then_some(())
    });

    let id = send(&nodes[0], "u@sts4.test");
    // Deferred by whoever delivers the domain now (after its site settled).
    let e = deferred_not_sent(&nodes[0], &sink, &id, |e| {
        reply(e).starts_with("451 4.7.5 MTA-STS: ")
    });
    let owner = e["node_id"].as_u64().expect("node_id");
    let last = |n: &Node| {
        events(n, "deferred")
            .into_iter()
            .rev()
            .find(|e| e["message_id"] == id)
    };
    // The owner keeps deferring it (retries every second): take the latest deferral's
    // node as the owner at the kill.
    let owner = last(&nodes[0])
        .and_then(|e| e["node_id"].as_u64())
        .unwrap_or(owner);
    server.stop();
    let killed_at = now_ms();
    let killed = owner as usize - 1;
    nodes[killed].kill();
    let other = (killed + 1) % 3;
    let e = deferred_not_sent(&nodes[other], &sink, &id, |e| {
        e["node_id"].as_u64() != Some(owner)
            && e["time_unix_ms"].as_u64().is_some_and(|t| t > killed_at)
    });
    assert!(reply(&e).starts_with("451 4.7.5 MTA-STS: "), "{e}");
    assert_eq!(tls_policy(&e), "mta-sts-enforce", "{e}");
    assert_eq!(tls(&e), "", "{e}");
    assert_eq!(sink.messages().len(), 0, "nothing was sent in clear");
}
