//! A site's throttle survives its owner: SIGKILL of the node holding a throttled or
//! suspended site, and the node that takes the site over continues from the replicated
//! state (no burst above the throttled rate, no connection during the suspension).

use baton_tests::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// `batonctl --json ARGS` against `node`, parsed; None when it failed (a node may be
/// down, or the site not known yet).
fn try_json(node: &Node, args: &[&str]) -> Option<Value> {
    let out = ctl(node, &[&["--json"][..], args].concat());
    if out.code != 0 {
        return None;
    }
    serde_json::from_str(&out.stdout).ok()
}

/// Three nodes with a 3 s delivery lease, delivering through `dns` to `port`, with
/// `shaping` appended to their config.
fn cluster(dns: &Dns, port: u16, shaping: &str) -> Vec<Node> {
    let options = |id: u64, join: Vec<SocketAddr>| NodeOptions {
        id,
        bootstrap: join.is_empty(),
        join,
        dns: Some(dns.addr),
        mx_port: port,
        cluster: "lease = \"3s\"".into(),
        tail: shaping.to_string(),
        ..Default::default()
    };
    let n1 = Node::start(options(1, vec![]));
    let n2 = Node::start(options(2, vec![n1.raft]));
    let n3 = Node::start(options(3, vec![n1.raft, n2.raft]));
    let nodes = vec![n1, n2, n3];
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
    nodes
}

/// The site's state as a node other than `not` sees it, once `ready` holds.
fn site(nodes: &[Node], not: Option<usize>, name: &str, ready: impl Fn(&Value) -> bool) -> Value {
    wait_until(&format!("site {name} as wanted"), WAIT, || {
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != not)
            .find_map(|(_, n)| try_json(n, &["site", "show", name]))
            .filter(|s| ready(s))
    })
}

#[test]
fn a_throttled_site_s_new_owner_does_not_start_at_full_speed() {
    const R: usize = 8;
    let port = free_port();
    let dns = Dns::start(
        &Zone::new()
            .mx("gmail.test", 10, "mx1.gmail.test")
            .a("mx1.gmail.test", "127.0.0.74"),
    );
    let rules = format!(
        "[[rule]]\nstage = \"data\"\nrate = \"{R}/s\"\nreply = '''{GMAIL_RATE}'''\nclose = true\n"
    );
    let sink = Sink::start_with_rules(format!("127.0.0.74:{port}").parse().unwrap(), &rules);
    let mut nodes = cluster(
        &dns,
        port,
        "[shaping]\nconnections = 4\ndecrease_factor = 0.5\nmin_decrease_interval = \"500ms\"\n\
         increase_interval = \"30s\"\nmin_rate = \"60/min\"\n",
    );
    queue_messages(&nodes[0], 300, "user@gmail.test");
    // Throttled, and slow to climb back (30 s intervals): the rate at the kill is the
    // one the next owner must keep.
    let s = site(&nodes, None, "mx1.gmail.test", |s| {
        s["state"] == "throttled"
    });
    let owner = s["owner"].as_u64().expect("an owner") as usize - 1;
    let rate = s["rate_per_minute"].as_f64().expect("a rate") / 60.0;
    let killed_at = now_ms();
    nodes[owner].kill();
    // The next owner takes the site over once the killed node's lease ends.
    let next = site(&nodes, Some(owner), "mx1.gmail.test", |s| {
        s["owner"].as_u64().is_some_and(|o| o != owner as u64 + 1)
    });
    let after: Vec<u64> = wait_until("40 deliveries after the kill", WAIT, || {
        let t: Vec<u64> = sink
            .accepted_times_ms()
            .into_iter()
            .filter(|t| *t > killed_at)
            .collect();
        (t.len() >= 40).then_some(t)
    });
    let refused: Vec<u64> = sink
        .hit_times_ms(0)
        .into_iter()
        .filter(|t| *t > killed_at)
        .collect();
    let accepted = per_second(&after);
    let hits = per_second(&refused);
    let series: Vec<String> = accepted
        .iter()
        .map(|(s, n)| format!("{s}: {n} delivered, {} 421s", hits.get(s).unwrap_or(&0)))
        .collect();
    println!(
        "rate at the kill {:.2}/s, new owner {}; after the kill:\n{}",
        rate,
        next["owner"],
        series.join("\n")
    );
    // The first full seconds of the new owner: attempts at the committed rate (one
    // second's worth of tokens at most on top), not the 4 connections' full speed.
    let first = *accepted.keys().next().expect("deliveries after the kill");
    for s in first + 1..first + 4 {
        let attempts = accepted.get(&s).unwrap_or(&0) + hits.get(&s).unwrap_or(&0);
        assert!(
            attempts as f64 <= rate.max(1.0) * 1.5 + 1.0,
            "second {s}: {attempts} attempts at a committed rate of {rate:.2}/s\n{}",
            series.join("\n")
        );
    }
}

#[test]
fn a_suspended_site_stays_suspended_when_its_owner_dies() {
    let port = free_port();
    let dns = Dns::start(
        &Zone::new()
            .mx("outlook.test", 10, "mx.outlook.test")
            .a("mx.outlook.test", "127.0.0.75"),
    );
    let rules = format!("[[rule]]\nstage = \"mail\"\nreply = '''{S3150}'''\n");
    let sink = Sink::start_with_rules(format!("127.0.0.75:{port}").parse().unwrap(), &rules);
    let mut nodes = cluster(
        &dns,
        port,
        "[shaping]\nsuspend = \"15s\"\nmin_rate = \"60/min\"\n",
    );
    queue_messages(&nodes[0], 5, "user@outlook.test");
    let s = site(&nodes, None, "mx.outlook.test", |s| {
        s["state"] == "suspended"
    });
    let owner = s["owner"].as_u64().expect("an owner") as usize - 1;
    let until = s["suspended_until_unix_ms"].as_u64().expect("until");
    let contacts_before = sink.hit_times_ms(0).len();
    nodes[owner].kill();
    // The block is lifted meanwhile: only the suspension holds the mail back.
    sink.set_rules("");
    site(&nodes, Some(owner), "mx.outlook.test", |s| {
        s["owner"].as_u64().is_some_and(|o| o != owner as u64 + 1)
    });
    let got = sink.wait_for(5, WAIT);
    let accepted = sink.accepted_times_ms();
    println!(
        "suspended until {until}; deliveries at {:?} ({} ms after)",
        accepted,
        accepted[0].saturating_sub(until)
    );
    assert_eq!(
        sink.hit_times_ms(0).len(),
        contacts_before,
        "no refusal after the kill"
    );
    assert!(
        accepted[0] >= until,
        "a delivery {} ms before the suspension ended",
        until - accepted[0]
    );
    assert_eq!(got.len(), 5);
}
