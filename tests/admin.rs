//! The admin API and `batonctl` against a real 3-node cluster: every command, the
//! state-changing ones sent to a follower, events followed across a leader kill, and the
//! API from another language (Python grpcio) and the metrics through a Prometheus parser.

use baton_tests::*;

#[path = "../crates/baton-reputation/tests/fixtures/mod.rs"]
mod fixtures;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `batonctl --server <servers> <args>`.
fn ctl(servers: &[SocketAddr], args: &[&str]) -> Out {
    ctl_env(servers, args, &[])
}

fn ctl_env(servers: &[SocketAddr], args: &[&str], env: &[(&str, &str)]) -> Out {
    let list: Vec<String> = servers.iter().map(|s| format!("http://{s}")).collect();
    let mut cmd = Command::new(bin("batonctl"));
    cmd.arg("--server").arg(list.join(",")).args(args);
    cmd.env_remove("BATON_TOKEN").env_remove("BATON_SERVER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run batonctl");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a command that must succeed and print JSON.
fn json(servers: &[SocketAddr], args: &[&str]) -> Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = ctl(servers, &full);
    assert_eq!(out.code, 0, "batonctl {args:?} failed: {}", out.stderr);
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("batonctl {args:?}: not JSON ({e}): {}", out.stdout))
}

/// A running `batonctl events --follow --json`, its lines delivered on a channel.
struct Follow {
    /// Killed when the test ends.
    _proc: Proc,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Follow {
    fn start(servers: &[SocketAddr], extra: &[&str]) -> Follow {
        let list: Vec<String> = servers.iter().map(|s| format!("http://{s}")).collect();
        let mut proc = Proc::spawn(
            "batonctl events --follow",
            Command::new(bin("batonctl"))
                .arg("--server")
                .arg(list.join(","))
                .args(["--json", "events", "--follow"])
                .args(extra)
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let stdout = proc.child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Follow {
            _proc: proc,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits until an event matching `f` arrives; returns it.
    fn wait(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        if let Some(v) = self.seen.iter().find(|v| f(v)) {
            return v.clone();
        }
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if f(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("timed out waiting for event {what}; saw {:?}", self.seen),
            }
        }
    }
}

/// A domain's row in `batonctl queue --json`.
fn domain_row(queue: &Value, domain: &str) -> Value {
    queue["domains"]
        .as_array()
        .and_then(|rows| rows.iter().find(|d| d["domain"] == domain))
        .cloned()
        .unwrap_or_else(|| panic!("{domain} not in {queue}"))
}

fn is(kind: &str, id: &str) -> impl Fn(&Value) -> bool {
    let (kind, id) = (kind.to_string(), id.to_string());
    move |v| v["kind"] == kind.as_str() && v["message_id"] == id.as_str()
}

/// Sends one message, retrying a 421 greeting or a 451 (no leader or quorum yet, e.g.
/// just after a leader kill) as a client would; returns its queue id.
fn send(node: &Node, from: &str, to: &str, subject: &str) -> String {
    wait_until("a 250 for the message", WAIT, || {
        let mut c = node.smtp();
        let (greeting, text) = c.reply();
        if greeting == 421 {
            return None; // no leader known at this moment
        }
        assert_eq!(greeting, 220, "{text}");
        c.cmd("EHLO client.test", "250");
        c.cmd(&format!("MAIL FROM:<{from}>"), "250");
        c.cmd(&format!("RCPT TO:<{to}>"), "250");
        c.cmd("DATA", "354");
        c.send_raw(
            format!("Subject: {subject}\r\nFrom: <{from}>\r\n\r\nhello\r\n.\r\n").as_bytes(),
        );
        let (code, text) = c.reply();
        match code {
            250 => Some(queue_id(&text)),
            451 => None,
            _ => panic!("unexpected reply to the message: {code} {text}"),
        }
    })
}

/// The index in `nodes` of the leader.
fn leader(nodes: &[Node]) -> usize {
    wait_until("a leader", WAIT, || {
        nodes
            .iter()
            .position(|n| n.metric("baton_raft_leader") == 1.0)
    })
}

#[test]
fn batonctl_drives_a_three_node_cluster() {
    // good.test delivers; slow.test's MX answers 421 until it is replaced.
    let port = free_port();
    let good: SocketAddr = format!("127.0.0.61:{port}").parse().unwrap();
    let slow: SocketAddr = format!("127.0.0.62:{port}").parse().unwrap();
    let zone = Zone::new()
        .mx("good.test", 10, "mx.good.test")
        .a("mx.good.test", "127.0.0.61")
        .mx("slow.test", 10, "mx.slow.test")
        .a("mx.slow.test", "127.0.0.62");
    let dns = Dns::start(&zone);
    let good_sink = Sink::start(good);
    let mut slow_sink = Sink::start_with(slow, 421);
    let opts = |id: u64, join: Vec<SocketAddr>| NodeOptions {
        id,
        bootstrap: join.is_empty(),
        join,
        dns: Some(dns.addr),
        mx_port: port,
        // A deferral waits an hour: only `message retry` brings it back sooner.
        retry_intervals: "[\"1h\"]".into(),
        ..NodeOptions::default()
    };
    let n1 = Node::start(opts(1, vec![]));
    let seed = n1.raft;
    let mut nodes = vec![n1];
    nodes.push(Node::start(opts(2, vec![seed])));
    nodes.push(Node::start(opts(3, vec![seed])));
    // Every change goes to a follower.
    let lead = leader(&nodes);
    let follower = (lead + 1) % 3;
    let f = nodes[follower].admin;

    // status, from a follower.
    let st = json(&[f], &["status"]);
    assert_eq!(st["members"].as_array().map(Vec::len), Some(3), "{st}");
    assert!(st["leader_id"].as_u64().unwrap_or(0) > 0, "{st}");
    assert!(
        st["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["role"] == "voter"),
        "{st}"
    );
    // Replication lag, asked of the leader by the follower.
    assert!(
        st["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["lag_known"] == true && m["matched_index"].as_u64().unwrap_or(0) > 0),
        "{st}"
    );
    let human = ctl(&[f], &["status"]);
    assert!(human.stdout.contains("ROLE"), "{}", human.stdout);

    // A message's life, followed on a follower while it happens.
    let mut follow = Follow::start(&[f], &["--domain", "slow.test"]);
    let id = send(&nodes[0], "a@good.test", "x@slow.test", "life");
    follow.wait("received", is("received", &id));
    let deferred = follow.wait("deferred", is("deferred", &id));
    assert!(
        deferred["reply"].as_str().unwrap_or("").contains("421"),
        "{deferred}"
    );
    assert_eq!(deferred["remote_ip"], "127.0.0.62", "{deferred}");

    // queue, messages, message show.
    let q = json(&[f], &["queue"]);
    let row = domain_row(&q, "slow.test");
    assert_eq!(row["deferred"], 1, "{row}");
    assert!(row["owner"].as_u64().unwrap_or(0) > 0, "{row}");
    let list = json(&[f], &["messages", "--domain", "slow.test"]);
    assert_eq!(list[0]["id"], id.as_str(), "{list}");
    assert_eq!(list[0]["state"], "deferred", "{list}");
    let shown = json(&[f], &["message", "show", &id]);
    assert_eq!(shown["recipients"][0]["state"], "deferred", "{shown}");
    assert_eq!(shown["recipients"][0]["attempts"], 1, "{shown}");
    assert!(
        shown["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "Subject" && h["value"] == "life"),
        "{shown}"
    );
    let with_body = json(&[f], &["message", "show", &id, "--body"]);
    assert!(
        with_body["body"].as_str().unwrap_or("").contains("hello"),
        "{with_body}"
    );

    // domain suspend + message retry: due now, but held.
    let r = json(
        &[f],
        &["domain", "suspend", "slow.test", "--reason", "testing"],
    );
    assert_eq!(r["changed"], true);
    let r = json(&[f], &["message", "retry", &id]);
    assert_eq!(r["changed"], true);
    let q = json(&[f], &["queue"]);
    let row = domain_row(&q, "slow.test");
    assert_eq!(
        (row["queued"].clone(), row["suspended"].clone()),
        (1.into(), true.into()),
        "{row}"
    );
    assert_eq!(q["suspended"][0]["reason"], "testing", "{q}");
    // The remote now accepts; resuming lets the retried message through.
    slow_sink.stop();
    let slow_sink = Sink::start(slow);
    let r = json(&[f], &["domain", "resume", "slow.test"]);
    assert_eq!(r["changed"], true);
    follow.wait("delivered", is("delivered", &id));
    slow_sink.wait_for(1, WAIT);
    let kinds: Vec<String> = follow
        .seen
        .iter()
        .filter(|v| v["message_id"] == id.as_str())
        .map(|v| v["kind"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        kinds,
        ["received", "deferred", "delivered"],
        "the message's life"
    );
    // A finished message is not found, with a pointer to its events.
    let gone = ctl(&[f], &["message", "show", &id]);
    assert_eq!(gone.code, 1);
    assert!(gone.stderr.contains("no longer queued"), "{}", gone.stderr);
    let unknown = ctl(&[f], &["message", "retry", "01NOSUCHMESSAGE"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("no message 01NOSUCHMESSAGE"),
        "{}",
        unknown.stderr
    );

    // message delete --dsn: the sender hears about it.
    json(&[f], &["domain", "suspend", "slow.test"]);
    let doomed = send(&nodes[0], "a@good.test", "y@slow.test", "doomed");
    wait_until("the doomed message queued on the follower", WAIT, || {
        let out = ctl(&[f], &["--json", "message", "show", &doomed]);
        (out.code == 0).then_some(())
    });
    let r = json(&[f], &["message", "delete", &doomed, "--dsn"]);
    assert_eq!(r["changed"], true);
    let dsn = wait_until("the DSN at good.test", WAIT, || {
        good_sink
            .messages()
            .into_iter()
            .find(|m| m.data.contains(&doomed) && m.rcpts.iter().any(|r| r == "a@good.test"))
    });
    assert!(dsn.data.contains("multipart/report"), "{}", dsn.data);
    follow.wait("deleted", is("deleted", &doomed));
    json(&[f], &["domain", "resume", "slow.test"]);

    // suppression list: refused at RCPT while listed.
    let r = json(
        &[f],
        &[
            "suppression",
            "add",
            "Bob@Good.test",
            "--reason",
            "complaint",
        ],
    );
    assert_eq!(r["changed"], true);
    let l = json(&[f], &["suppression", "list"]);
    assert_eq!(l["entries"][0]["address"], "bob@good.test", "{l}");
    let mut c = nodes[follower].smtp();
    c.hello();
    c.cmd("MAIL FROM:<a@good.test>", "250");
    let refused = c.cmd("RCPT TO:<bob@good.test>", "550");
    assert!(
        refused.contains("5.1.1") && refused.contains("suppressed"),
        "{refused}"
    );
    let r = json(&[f], &["suppression", "remove", "bob@good.test"]);
    assert_eq!(r["changed"], true);
    c.cmd("RCPT TO:<bob@good.test>", "250");
    let not_there = json(&[f], &["suppression", "remove", "bob@good.test"]);
    assert_eq!(not_there["changed"], false);
    let bad = ctl(&[f], &["suppression", "add", "not-an-address"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("bad request"), "{}", bad.stderr);

    // node add / node remove, from a follower: a 4th node that waits to be added.
    let mut n4 = Node::start_unready(NodeOptions {
        bootstrap: false,
        ..opts(4, vec![])
    });
    let raft4 = n4.raft.to_string();
    let added = ctl(&[f], &["node", "add", "4", &raft4]);
    assert_eq!(added.code, 0, "{}", added.stderr);
    n4.wait_ready();
    let st = json(&[f], &["status"]);
    assert!(
        st["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == 4 && m["role"] == "voter"),
        "{st}"
    );
    let removed = ctl(&[f], &["node", "remove", "4"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    let st = json(&[f], &["status"]);
    assert_eq!(st["members"].as_array().map(Vec::len), Some(3), "{st}");
    let again = ctl(&[f], &["node", "remove", "4"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("not a member"), "{}", again.stderr);
    drop(n4);

    // Kill the leader while following on a follower: events keep coming, and a new
    // `events --after` resumes exactly after a position.
    let before = follow
        .seen
        .last()
        .and_then(|v| v["position"].as_u64())
        .unwrap_or(0);
    let lead = leader(&nodes);
    assert_ne!(lead, follower, "the follower became leader; pick again");
    // A second follower of the events, connected to the leader itself (the follower
    // named as the fallback): it must move over and resume after its last position.
    let mut on_leader = Follow::start(
        &[nodes[lead].admin, nodes[follower].admin],
        &["--domain", "slow.test"],
    );
    on_leader.wait("the history on the leader", |v| {
        v["position"].as_u64() == Some(before)
    });
    nodes[lead].kill();
    let survivor = &nodes[follower];
    let after_kill = send(survivor, "a@good.test", "z@slow.test", "after the kill");
    follow.wait(
        "delivered after the leader kill",
        is("delivered", &after_kill),
    );
    on_leader.wait(
        "delivered after the leader kill, on the moved stream",
        is("delivered", &after_kill),
    );
    let positions: Vec<u64> = on_leader
        .seen
        .iter()
        .filter_map(|v| v["position"].as_u64())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "resumed without repeats or reordering: {positions:?}"
    );
    let resumed = ctl(
        &[survivor.admin],
        &[
            "--json",
            "events",
            "--after",
            &before.to_string(),
            "--domain",
            "slow.test",
        ],
    );
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let positions: Vec<u64> = resumed
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["position"].as_u64())
        .collect();
    assert!(
        !positions.is_empty() && positions.iter().all(|p| *p > before),
        "{positions:?}"
    );
    slow_sink.wait_for(2, WAIT);
    drop(follow);
}

#[test]
fn batonctl_reports_unreachable_servers_and_bad_tokens() {
    // Nothing listens here.
    let nowhere: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let out = ctl(&[nowhere], &["status"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("cannot reach the admin API"),
        "{}",
        out.stderr
    );

    let node = Node::start(NodeOptions {
        tail: String::new(),
        admin_token: Some("s3cret".into()),
        ..NodeOptions::default()
    });
    let out = ctl(&[node.admin], &["status"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("needs a token"), "{}", out.stderr);
    let out = ctl_env(&[node.admin], &["status"], &[("BATON_TOKEN", "wrong")]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("bad admin token"), "{}", out.stderr);
    let out = ctl(&[node.admin], &["--token", "s3cret", "status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // The admin API over TLS: trusted through --ca-cert, refused without it.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let node = Node::start(NodeOptions {
        admin_tls: Some((cert.clone(), key)),
        ..NodeOptions::default()
    });
    let url = format!("https://localhost:{}", node.admin.port());
    let run = |extra: &[&str]| {
        let out = Command::new(bin("batonctl"))
            .args(["--server", &url])
            .args(extra)
            .arg("status")
            .env_remove("BATON_TOKEN")
            .env_remove("BATON_CA_CERT")
            .output()
            .expect("batonctl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--ca-cert", cert.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run(&[]);
    assert_eq!(code, Some(1), "an untrusted certificate is refused: {err}");
    assert!(err.contains("cannot reach the admin API"), "{err}");
}

/// Calls `Status` at `admin` with `authorization` as given (not as batonctl spells it).
fn status_with(admin: SocketAddr, authorization: &str) -> Result<(), tonic::Code> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin}"))
            .unwrap()
            .connect()
            .await
            .map_err(|_| tonic::Code::Unavailable)?;
        let value: tonic::metadata::MetadataValue<_> = authorization.parse().unwrap();
        let mut client = baton_admin_proto::admin_client::AdminClient::with_interceptor(
            channel,
            move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", value.clone());
                Ok(req)
            },
        );
        client
            .status(baton_admin_proto::StatusRequest {})
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    })
}

/// RFC 6750 / 7235: the `Bearer` scheme in any case; and a token served in plaintext off
/// loopback is warned about at start.
#[test]
fn bearer_scheme_in_any_case_and_a_warning_for_a_plaintext_token_off_loopback() {
    let mut node = Node::start(NodeOptions {
        admin_token: Some("s3cret".into()),
        ..NodeOptions::default()
    });
    let warning = "served without TLS: the token travels in plaintext";
    assert!(!node.log().contains(warning), "{}", node.log());
    // The same node with its admin API on every interface, still without TLS.
    node.kill();
    let config = std::fs::read_to_string(&node.config_path).unwrap();
    let loopback = format!("listen = \"{}\"", node.admin);
    assert!(config.contains(&loopback), "{config}");
    let everywhere = format!("listen = \"0.0.0.0:{}\"", node.admin.port());
    std::fs::write(&node.config_path, config.replace(&loopback, &everywhere)).unwrap();
    node.restart();
    wait_until("the plaintext-token warning", WAIT, || {
        node.log().contains(warning).then_some(())
    });
    for ok in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret"] {
        assert_eq!(status_with(node.admin, ok), Ok(()), "{ok}");
    }
    for bad in ["bearer wrong", "Basic s3cret", "s3cret"] {
        assert_eq!(
            status_with(node.admin, bad),
            Err(tonic::Code::Unauthenticated),
            "{bad}"
        );
    }
}

/// The API from Python: stubs generated from proto/admin.proto by grpcio-tools, reflection
/// listing the services, Status and an event stream; and /metrics through
/// prometheus_client's parser (tests/python/admin_client.py).
#[test]
fn python_grpc_client_and_prometheus_parser() {
    let port = free_port();
    let sink = Sink::start(format!("127.0.0.63:{port}").parse().unwrap());
    let node = Node::start(NodeOptions {
        smarthost: Some(sink.addr),
        admin_token: Some("py-token".into()),
        ..NodeOptions::default()
    });
    let id = send(&node, "a@src.test", "b@dst.test", "from python's view");
    sink.wait_for(1, WAIT);
    wait_until("the delivered event", WAIT, || {
        let out = ctl_env(
            &[node.admin],
            &["--json", "events", "--message", &id, "--kind", "delivered"],
            &[("BATON_TOKEN", "py-token")],
        );
        (out.code == 0 && out.stdout.contains("delivered")).then_some(())
    });
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg(repo.join("tests/python/admin_client.py"))
        .arg("--proto-dir")
        .arg(repo.join("proto"))
        .args(["--admin", &node.admin.to_string()])
        .args(["--http", &node.http.to_string()])
        .args(["--message-id", &id, "--token", "py-token"])
        .output()
        .expect(
            "python3 (run .ci/run to install grpcio-tools, grpcio-reflection, prometheus_client)",
        );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("events: received -> delivered"), "{stdout}");
    assert!(stdout.contains("baton.admin.v1.Admin"), "{stdout}");
}

/// A tiny HTTP server collecting webhook POSTs: answers 503 to the first `fail_first`
/// requests, 200 after; hands each accepted body's event positions to the test.
fn webhook_receiver(fail_first: usize) -> (SocketAddr, mpsc::Receiver<(String, bool, Vec<u64>)>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut served = 0usize;
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut length = 0usize;
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let ok = served >= fail_first;
            served += 1;
            let positions = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| {
                    v["events"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|e| e["position"].as_u64()).collect())
                })
                .unwrap_or_default();
            let status = if ok {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            if tx.send((request_line, ok, positions)).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// The leader POSTs every event to the webhook in order, at least once: a refused batch
/// is sent again, and after a restart the node goes on from the recorded position.
#[test]
fn webhook_posts_every_event_in_order_across_failures_and_restarts() {
    let port = free_port();
    let sink = Sink::start(format!("127.0.0.64:{port}").parse().unwrap());
    let (hook, posts) = webhook_receiver(1);
    let mut node = Node::start(NodeOptions {
        smarthost: Some(sink.addr),
        tail: format!("[events]\nwebhook_url = \"http://{hook}/hook\"\nwebhook_batch = 3\n"),
        ..NodeOptions::default()
    });
    for i in 0..3 {
        send(&node, "a@src.test", "b@dst.test", &format!("hook {i}"));
    }
    sink.wait_for(3, WAIT);
    // 3 received + 3 delivered.
    let mut accepted: Vec<u64> = Vec::new();
    let mut refused = Vec::new();
    let collect = |accepted: &mut Vec<u64>, refused: &mut Vec<Vec<u64>>, upto: u64| {
        while accepted.last().copied().unwrap_or(0) < upto {
            let (request_line, ok, positions) = posts
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no webhook POST; accepted so far {accepted:?}"));
            assert!(request_line.starts_with("POST /hook "), "{request_line}");
            if ok {
                accepted.extend(positions);
            } else {
                refused.push(positions);
            }
        }
    };
    collect(&mut accepted, &mut refused, 6);
    assert_eq!(refused.len(), 1, "the first POST was refused once");
    assert_eq!(
        refused[0],
        accepted[..refused[0].len()],
        "and sent again, same events"
    );
    assert_eq!(
        accepted,
        (1..=6).collect::<Vec<_>>(),
        "every event, in order, no gaps"
    );

    // After a crash and restart, it goes on from the recorded position (once recorded:
    // a batch answered but not yet recorded is sent again, which at-least-once allows).
    wait_until("position 6 recorded", WAIT, || {
        (node.metric("baton_webhook_position") == 6.0).then_some(())
    });
    node.kill();
    node.restart();
    send(&node, "a@src.test", "b@dst.test", "after restart");
    sink.wait_for(4, WAIT);
    let mut more = Vec::new();
    collect(&mut more, &mut refused, 8);
    assert_eq!(more, vec![7, 8], "resumed after position 6");
}

/// `batonctl events --kind` checks kinds itself: it must accept every kind the queue
/// records (a kind it refused could not be filtered on).
#[test]
fn batonctl_accepts_every_event_kind() {
    let nowhere: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    for kind in baton_queue::types::EventKind::ALL {
        let out = ctl(&[nowhere], &["events", "--kind", kind.as_str()]);
        assert_eq!(out.code, 1, "--kind {}: {}", kind.as_str(), out.stderr);
        assert!(out.stderr.contains("cannot reach"), "{}", out.stderr);
    }
    let out = ctl(&[nowhere], &["events", "--kind", "bogus"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
}

/// A member the leader has not heard from since it became leader shows its replication
/// as unknown (`null` in JSON), not as matched at 0.
#[test]
fn a_dead_members_lag_is_unknown_not_zero() {
    let opts = |id: u64, join: Vec<SocketAddr>| NodeOptions {
        id,
        bootstrap: join.is_empty(),
        join,
        ..NodeOptions::default()
    };
    let n1 = Node::start(opts(1, vec![]));
    let seed = n1.raft;
    let mut nodes = vec![n1];
    nodes.push(Node::start(opts(2, vec![seed])));
    nodes.push(Node::start(opts(3, vec![seed])));
    let lead = leader(&nodes);
    // A follower dies; then the leader restarts, so the next leader (of a new term) has
    // never heard from it.
    let dead = (lead + 1) % 3;
    let dead_id = nodes[dead].id;
    nodes[dead].kill();
    nodes[lead].kill();
    nodes[lead].restart();
    let alive: Vec<usize> = (0..3).filter(|k| *k != dead).collect();
    for k in alive {
        let admin = nodes[k].admin;
        let st = wait_until("a status with a leader", WAIT, || {
            let st = json(&[admin], &["status"]);
            (st["leader_id"].as_u64().unwrap_or(0) > 0).then_some(st)
        });
        let members = st["members"].as_array().expect("members");
        for m in members {
            if m["id"] == dead_id {
                assert_eq!(m["lag_known"], false, "{st}");
                assert!(m["matched_index"].is_null(), "{st}");
                assert!(m["lag"].is_null(), "{st}");
            } else {
                assert!(m["matched_index"].as_u64().unwrap_or(0) > 0, "{st}");
            }
        }
        let human = ctl(&[admin], &["status"]);
        let row = human
            .stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&dead_id.to_string()))
            .unwrap_or_else(|| panic!("no row for node {dead_id}:\n{}", human.stdout));
        assert_eq!(
            row.split_whitespace().nth(3),
            Some("unknown"),
            "MATCHED of node {dead_id}: {row}"
        );
        assert!(
            row.matches("unknown").count() == 2,
            "MATCHED and LAG: {row}"
        );
    }
}

/// `queue retry|delete --domain D | --all`: every message queued for D (its delivery
/// there only) or all, with counts; a delete asks for --yes first; other domains' mail,
/// including the other recipients of a message split across domains, is left alone.
/// Also `message show --body` printing the message once.
#[test]
fn queue_retry_and_delete_by_domain_and_all() {
    // Nothing listens at the smarthost: every attempt is deferred, for an hour.
    let closed: SocketAddr = format!("127.0.0.65:{}", free_port()).parse().unwrap();
    let node = Node::start(NodeOptions {
        smarthost: Some(closed),
        retry_intervals: "[\"1h\"]".into(),
        ..NodeOptions::default()
    });
    let a = |n: usize| send(&node, "s@src.test", "x@a.test", &format!("a{n}"));
    let a_ids: Vec<String> = (1..=3).map(a).collect();
    let b_ids: Vec<String> = (1..=2)
        .map(|n| send(&node, "s@src.test", "y@b.test", &format!("b{n}")))
        .collect();
    let mut c = node.smtp();
    c.hello();
    let both = queue_id(&c.send_mail(
        "s@src.test",
        &["z@a.test", "w@b.test"],
        "Subject: both\r\nFrom: <s@src.test>\r\n\r\nhello",
    ));
    let s = [node.admin];
    let attempts = |domain: &str| -> Vec<u64> {
        let list = json(&s, &["messages", "--domain", domain]);
        let mut v: Vec<u64> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["attempts"].as_u64().unwrap_or(0))
            .collect();
        v.sort();
        v
    };
    wait_until("every message tried once", WAIT, || {
        (attempts("a.test") == [1; 4] && attempts("b.test") == [1; 3]).then_some(())
    });

    // message show --body: the message once (its header section is part of it).
    let shown = ctl(&s, &["message", "show", &a_ids[0], "--body"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert_eq!(
        shown.stdout.matches("Subject: a1").count(),
        1,
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains("hello"), "{}", shown.stdout);

    // queue retry --domain: a.test's four, due now and tried again; b.test untouched.
    let r = ctl(&s, &["queue", "retry", "--domain", "a.test"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with("4 message(s) for a.test: due now"),
        "{}",
        r.stdout
    );
    wait_until("a.test tried again", WAIT, || {
        (attempts("a.test") == [2; 4]).then_some(())
    });
    assert_eq!(attempts("b.test"), [1; 3]);

    // queue delete without --yes: refused, with the count.
    let r = ctl(&s, &["queue", "delete", "--domain", "a.test", "--dsn"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("would delete 4 message(s) for a.test") && r.stderr.contains("--yes"),
        "{}",
        r.stderr
    );
    assert_eq!(attempts("a.test").len(), 4, "nothing deleted");
    // With --yes (and --dsn): gone from a.test, a DSN each; `both` keeps w@b.test.
    let r = json(
        &s,
        &["queue", "delete", "--domain", "a.test", "--dsn", "--yes"],
    );
    assert_eq!(r["messages"], 4, "{r}");
    let q = json(&s, &["queue"]);
    assert!(
        q["domains"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["domain"] != "a.test"),
        "{q}"
    );
    assert_eq!(attempts("b.test"), [1; 3], "b.test untouched");
    let shown = json(&s, &["message", "show", &both]);
    let states: Vec<(String, String)> = shown["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap_or("").to_string(),
                r["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("z@a.test".to_string(), "done".to_string()),
            ("w@b.test".to_string(), "deferred".to_string())
        ],
        "{shown}"
    );
    for id in a_ids.iter().chain([&both]) {
        let out = ctl(
            &s,
            &["--json", "events", "--message", id, "--kind", "deleted"],
        );
        let deleted: Vec<Value> = out
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(deleted.len(), 1, "{id}: {}", out.stdout);
        assert_eq!(deleted[0]["domain"], "a.test", "{id}: {}", out.stdout);
    }
    for id in &b_ids {
        let out = ctl(
            &s,
            &["--json", "events", "--message", id, "--kind", "deleted"],
        );
        assert!(out.stdout.trim().is_empty(), "{id}: {}", out.stdout);
    }
    // The DSNs, one per message deleted from, from the null sender to s@src.test.
    let dsns = json(&s, &["messages", "--domain", "src.test"]);
    let dsns = dsns.as_array().unwrap();
    assert_eq!(dsns.len(), 4, "{dsns:?}");
    assert!(
        dsns.iter()
            .all(|m| m["sender"] == "" && m["recipients"][0] == "s@src.test"),
        "{dsns:?}"
    );

    // --all: b.test's three and the four DSNs.
    let r = ctl(&s, &["queue", "retry", "--all"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with("7 message(s) in the queue: due now"),
        "{}",
        r.stdout
    );
    let r = ctl(&s, &["queue", "delete", "--all"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("would delete 7 message(s)"),
        "{}",
        r.stderr
    );
    let r = ctl(&s, &["queue", "delete", "--all", "--yes"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with("7 message(s) in the queue: deleted"),
        "{}",
        r.stdout
    );
    assert_eq!(json(&s, &["queue"])["messages"], 0);
    // Nothing left: nothing to do, and no DSN was sent for a null sender's DSN.
    let r = json(&s, &["queue", "delete", "--all", "--yes"]);
    assert_eq!(r["messages"], 0, "{r}");
    // A domain and --all together is a usage error.
    let r = ctl(
        &s,
        &["queue", "delete", "--domain", "b.test", "--all", "--yes"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
}

/// A queue bigger than one batch (500 messages a log entry): every message counted once.
#[test]
fn queue_retry_and_delete_span_batches() {
    let closed: SocketAddr = format!("127.0.0.66:{}", free_port()).parse().unwrap();
    let node = Node::start(NodeOptions {
        smarthost: Some(closed),
        retry_intervals: "[\"1h\"]".into(),
        ..NodeOptions::default()
    });
    const N: usize = 1_100;
    // Four sessions at once, so their commits share entries.
    std::thread::scope(|scope| {
        for t in 0..4 {
            let node = &node;
            scope.spawn(move || {
                let mut c = node.smtp();
                c.hello();
                for n in (t..N).step_by(4) {
                    let reply = c.send_mail(
                        "s@src.test",
                        &["x@big.test"],
                        &format!("Subject: big {n}\r\n\r\nhello"),
                    );
                    assert!(reply.starts_with("250"), "{reply}");
                }
            });
        }
    });
    send(&node, "s@src.test", "y@small.test", "small");
    let s = [node.admin];
    let r = json(&s, &["queue", "retry", "--domain", "big.test"]);
    assert_eq!(r["messages"], N as u64, "{r}");
    let r = ctl(&s, &["queue", "delete", "--domain", "big.test"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(&format!("would delete {N} message(s)")),
        "{}",
        r.stderr
    );
    let r = json(&s, &["queue", "delete", "--domain", "big.test", "--yes"]);
    assert_eq!(r["messages"], N as u64, "{r}");
    let q = json(&s, &["queue"]);
    assert_eq!(q["messages"], 1, "small.test's message is left: {q}");
    let small = domain_row(&q, "small.test");
    let count = |k: &str| small[k].as_u64().unwrap_or(0);
    assert_eq!(count("queued") + count("deferred"), 1, "{q}");
}

/// `batonctl classify` answers every fixture reply (crates/baton-reputation/tests/fixtures) with its
/// documented category, from the node's live rules: an operator rule in
/// `shaping.rules_file` comes before the built-in ones.
#[test]
fn batonctl_classifies_every_fixture_by_the_live_rules() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"comcast-rl000010\"\nregex = 'RL000010'\ncategory = \"domain_reputation\"\nsuspend = \"5m\"\n",
    )
    .unwrap();
    let node = Node::start(NodeOptions {
        tail: format!("[shaping]\nrules_file = \"{}\"\n", rules.display()),
        ..Default::default()
    });
    for (reply, category, rule, _, _) in fixtures::fixtures() {
        let v = json(&[node.admin], &["classify", reply]);
        assert_eq!(v["category"], category.name(), "{reply}: {v}");
        assert_eq!(v["rule"], rule, "{reply}: {v}");
        assert_eq!(v["scope"], category.scope().name(), "{reply}: {v}");
    }
    let v = json(
        &[node.admin],
        &["classify", "421 4.7.0 RL000010 too much from you"],
    );
    assert_eq!(v["category"], "domain_reputation", "{v}");
    assert_eq!(v["rule"], "comcast-rl000010", "{v}");
    assert_eq!(v["suspend_seconds"], 300, "{v}");
    let human = ctl(&[node.admin], &["classify", fixtures::GMAIL_551]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.contains("bad_mailbox"), "{}", human.stdout);
    let empty = ctl(&[node.admin], &["classify", " "]);
    assert_eq!(empty.code, 1, "{}", empty.stderr);
}
