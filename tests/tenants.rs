//! Tenants end to end, with a real batond relaying to a baton-sink through a smarthost:
//! a tenant whose hard-bounce rate passes `[tenants] bounce_pause_rate` is paused (450 at
//! MAIL, its queued mail held, events), another tenant sends on, and `batonctl tenant
//! resume` lets the held mail go; addresses suppressed for one tenant only; a pause by
//! hand. The sink answers `550 5.1.1 no such user` to local parts containing `reject`.

use base64::Engine;
use baton_tests::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// `tenant show NAME --json`'s tenant.
fn tenant(node: &Node, name: &str) -> Value {
    ctl_json(node, &["tenant", "show", name])["tenant"].clone()
}

/// [`tenant`], or none while none of its mail is counted (`tenant show` exits 1).
fn counted_tenant(node: &Node, name: &str) -> Option<Value> {
    let out = ctl(node, &["--json", "tenant", "show", name]);
    if out.code == 1 && out.stderr.contains("no tenant") {
        return None;
    }
    assert_eq!(out.code, 0, "tenant show {name}: {}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    Some(v["tenant"].clone())
}

fn number(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A sample of `name` with the label `tenant="..."`, if /metrics has one.
fn tenant_metric(node: &Node, name: &str, t: &str) -> Option<f64> {
    let prefix = format!("{name}{{tenant=\"{t}\"}} ");
    node.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

/// A session authenticated as `user`.
fn session(node: &Node, user: &str, password: &str) -> Smtp {
    let mut c = node.smtp();
    c.hello();
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    c.cmd(&format!("AUTH PLAIN {plain}"), "235");
    c
}

/// Sends one message from `from` to `to`, which must be queued.
fn send(c: &mut Smtp, from: &str, to: &str) {
    let body = format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: to {to}\r\n\r\nHello.\r\n");
    let reply = c.send_mail(from, &[to], &body);
    assert!(reply.starts_with("250 "), "{from} to {to}: {reply}");
}

/// The sink's messages from `sender`, by recipient.
fn received(sink: &Sink, sender: &str) -> Vec<String> {
    sink.messages()
        .into_iter()
        .filter(|m| m.mail_from == sender)
        .flat_map(|m| m.rcpts)
        .collect()
}

/// `(count/of, limit` in a tenant's reason: (count, of).
fn rate_of(reason: &str) -> (u64, u64) {
    let inside = reason
        .split_once('(')
        .and_then(|(_, r)| r.split_once(','))
        .map(|(r, _)| r)
        .unwrap_or_else(|| panic!("no (n/m, ...) in {reason:?}"));
    let (n, m) = inside.split_once('/').expect("n/m");
    (n.parse().expect("n"), m.parse().expect("m"))
}

const T1: &str = "news@t1.test";
const T2: &str = "news@t2.test";
/// t1's messages: five to a held domain, then sixty of which every fifth is refused.
const T1_LATER: usize = 5;
const T1_DST: usize = 60;

fn t1_recipient(i: usize) -> String {
    if i % 5 == 4 {
        format!("reject{i}@dst.test")
    } else {
        format!("ok{i}@dst.test")
    }
}

/// t1 sends 20% to mailboxes that do not exist. Past 50 attempted recipients it is
/// paused: 450 4.7.1 at MAIL with the rate, events, its queued mail held (not attempted,
/// not counted) while t2 sends and is delivered; `tenant resume` lets the held mail go
/// in a fresh window.
#[test]
fn a_tenant_past_its_bounce_rate_is_paused_and_held_until_resumed_while_another_sends() {
    let port = free_port();
    let at: SocketAddr = format!("127.0.0.61:{port}").parse().expect("addr");
    let sink = Sink::start(at);
    let node = Node::start(NodeOptions {
        smarthost: Some(at),
        listener: "mode = \"submission\"\nrelay_networks = [\"127.0.0.0/8\"]".into(),
        tail: format!(
            "[[smtp.user]]\nname = \"t1\"\npassword_hash = \"{}\"\n\
             [[smtp.user]]\nname = \"t2\"\npassword_hash = \"{}\"\n\
             [tenants]\nbounce_min_volume = 50\n\
             [shaping]\nconnections = 1\n",
            password_hash("pw-one"),
            password_hash("pw-two")
        ),
        ..Default::default()
    });
    // Everything is queued before anything is sent: the pause cannot race the sending.
    for d in ["dst.test", "later.test"] {
        assert_eq!(ctl(&node, &["domain", "suspend", d]).code, 0);
    }
    let mut c2 = session(&node, "t2", "pw-two");
    send(&mut c2, T2, "t2@later.test");
    for i in 0..5 {
        send(&mut c2, T2, &format!("ok-t2-{i}@dst.test"));
    }
    let mut c1 = session(&node, "t1", "pw-one");
    for i in 0..T1_LATER {
        send(&mut c1, T1, &format!("held{i}@later.test"));
    }
    for i in 0..T1_DST {
        send(&mut c1, T1, &t1_recipient(i));
    }
    assert_eq!(ctl(&node, &["domain", "resume", "dst.test"]).code, 0);

    // Paused once past the minimum volume, at 10% or more.
    let paused = wait_until("t1 paused", WAIT, || {
        counted_tenant(&node, "t1").filter(|t| t["standing"] == "paused")
    });
    assert_eq!(paused["paused_by"], "thresholds", "{paused}");
    let reason = paused["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.starts_with("hard-bounce rate ") && reason.ends_with(", limit 10%)"),
        "{reason}"
    );
    let (hard, attempted) = rate_of(&reason);
    assert!(attempted >= 50, "paused below the minimum volume: {reason}");
    assert!(hard * 10 >= attempted, "paused under 10%: {reason}");
    let refused = c1.cmd(&format!("MAIL FROM:<{T1}>"), "450 4.7.1");
    assert_eq!(
        refused.trim_end(),
        format!("450 4.7.1 Sending paused for tenant t1: {reason}")
    );
    // t2 goes on: accepted, and delivered.
    let mut c2 = session(&node, "t2", "pw-two");
    for i in 0..5 {
        send(&mut c2, T2, &format!("more-t2-{i}@dst.test"));
    }
    wait_until("t2's mail after the pause delivered", WAIT, || {
        let got = received(&sink, T2);
        (got.iter().filter(|r| r.starts_with("more-t2-")).count() == 5).then_some(())
    });
    // Lift the domain hold: t2's message there goes, t1's stay held.
    assert_eq!(ctl(&node, &["domain", "resume", "later.test"]).code, 0);
    wait_until("t2's held-domain mail delivered", WAIT, || {
        received(&sink, T2)
            .contains(&"t2@later.test".to_string())
            .then_some(())
    });
    // Each t1 message was attempted (and counted) or is held, never both; the held
    // ones reached nobody; after the pausing entry at most what was in flight on the
    // one connection was attempted.
    let all = (T1_LATER + T1_DST) as u64;
    let t = tenant(&node, "t1");
    let (attempted_now, held) = (number(&t["attempted"]), number(&t["held"]));
    println!("t1 paused: {reason}; then {attempted_now} attempted, {held} held");
    assert_eq!(attempted_now + held, all, "{t}");
    assert!(held >= T1_LATER as u64, "{t}");
    assert!(
        attempted_now <= attempted + 2,
        "{attempted_now} attempted, {attempted} at the pause"
    );
    let t1_got = received(&sink, T1);
    assert!(
        !t1_got.iter().any(|r| r.ends_with("@later.test")),
        "held mail was delivered: {t1_got:?}"
    );
    assert!(t1_got.len() as u64 <= number(&t["delivered"]) + 1, "{t}");
    assert_eq!(received(&sink, T2).len(), 11);
    let t2 = tenant(&node, "t2");
    assert_eq!(
        (t2["standing"].as_str(), number(&t2["held"])),
        (Some("good"), 0)
    );

    // What operators see: events naming the tenant and the rule, the list, metrics.
    let warned = events(&node, "tenant_warning");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert_eq!(warned[0]["tenant"], "t1");
    assert_eq!(warned[0]["rule"], "tenants.bounce_warn_rate");
    let paused_events = events(&node, "tenant_paused");
    assert_eq!(paused_events.len(), 1, "{paused_events:?}");
    assert_eq!(paused_events[0]["tenant"], "t1");
    assert_eq!(paused_events[0]["rule"], "tenants.bounce_pause_rate");
    assert_eq!(paused_events[0]["detail"], reason.as_str());
    assert!(
        paused_events[0]["reply"]
            .as_str()
            .is_some_and(|r| r.contains("no such user")),
        "{}",
        paused_events[0]
    );
    let list = ctl_json(&node, &["tenant", "list"]);
    let standings: Vec<(String, String)> = list["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .map(|t| (t["name"].to_string(), t["standing"].to_string()))
        .collect();
    assert_eq!(
        standings,
        [
            ("\"t1\"".to_string(), "\"paused\"".to_string()),
            ("\"t2\"".to_string(), "\"good\"".to_string())
        ]
    );
    let text = ctl(&node, &["tenant", "show", "t1"]);
    assert!(
        text.stdout.contains("paused (thresholds)"),
        "{}",
        text.stdout
    );
    assert_eq!(tenant_metric(&node, "baton_tenant_paused", "t1"), Some(1.0));
    assert_eq!(tenant_metric(&node, "baton_tenant_paused", "t2"), Some(0.0));
    let rate = tenant_metric(&node, "baton_tenant_bounce_rate", "t1").expect("t1's rate");
    assert!(rate >= 0.1, "{rate}");
    assert_eq!(
        tenant_metric(&node, "baton_tenant_bounce_rate", "t2"),
        Some(0.0)
    );

    // Resumed: a fresh window, 250 again, and the held mail goes.
    let r = ctl_json(&node, &["tenant", "resume", "t1"]);
    assert_eq!(r["changed"], true);
    let resumed = events(&node, "tenant_resumed");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["tenant"], "t1");
    let mut c1 = session(&node, "t1", "pw-one");
    send(&mut c1, T1, "after@dst.test");
    let ok = (0..T1_DST).filter(|i| i % 5 != 4).count();
    wait_until("every t1 message delivered", WAIT, || {
        (received(&sink, T1).len() == ok + T1_LATER + 1).then_some(())
    });
    let t1_got = received(&sink, T1);
    for i in 0..T1_LATER {
        assert!(
            t1_got.contains(&format!("held{i}@later.test")),
            "{t1_got:?}"
        );
    }
    // The fresh window holds what was held, and the new message.
    let t = wait_until("t1 settled", WAIT, || {
        let t = tenant(&node, "t1");
        (number(&t["held"]) == 0
            && number(&t["delivered"]) + number(&t["hard_bounces"]) == number(&t["attempted"])
            && number(&t["attempted"]) > T1_LATER as u64)
            .then_some(t)
    });
    assert_eq!(t["standing"], "good", "{t}");
    assert!(number(&t["attempted"]) <= held + 1, "{t}");
    // Nothing left to resume; an unknown tenant is refused.
    let again = ctl_json(&node, &["tenant", "resume", "t1"]);
    assert_eq!(again["changed"], false);
    let unknown = ctl(&node, &["tenant", "resume", "nobody"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stderr.contains("no tenant \"nobody\""),
        "{}",
        unknown.stderr
    );
}

/// An address suppressed for one tenant (here a sender domain: no AUTH) is refused at
/// RCPT with 550 5.7.1 and skipped in its queued mail; other tenants send to it. A tenant
/// paused by hand gets the operator's reason at MAIL.
#[test]
fn suppression_for_one_tenant_and_a_pause_by_hand() {
    let port = free_port();
    let at: SocketAddr = format!("127.0.0.62:{port}").parse().expect("addr");
    let sink = Sink::start(at);
    let node = Node::start(NodeOptions {
        smarthost: Some(at),
        ..Default::default()
    });
    // Queued before the suppression, held by the domain meanwhile.
    assert_eq!(ctl(&node, &["domain", "suspend", "dst.test"]).code, 0);
    let mut c = node.smtp();
    c.hello();
    let reply = c.send_mail("x@a.test", &["bob@dst.test"], "Subject: early a\r\n\r\nx");
    assert!(reply.starts_with("250 "), "{reply}");
    let early = queue_id(&reply);
    let reply = c.send_mail("x@b.test", &["bob@dst.test"], "Subject: early b\r\n\r\nx");
    assert!(reply.starts_with("250 "), "{reply}");

    let r = ctl_json(
        &node,
        &[
            "suppression",
            "add",
            "Bob@Dst.test",
            "--tenant",
            "a.test",
            "--reason",
            "complaint",
        ],
    );
    assert_eq!(r["changed"], true);
    let list = ctl_json(&node, &["suppression", "list"]);
    let entries = list["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["address"], "bob@dst.test");
    assert_eq!(entries[0]["tenant"], "a.test");
    let text = ctl(&node, &["suppression", "list"]);
    assert!(text.stdout.contains("tenant a.test"), "{}", text.stdout);

    // At RCPT: a.test (any case) is refused, b.test is not.
    c.cmd("MAIL FROM:<x@A.Test>", "250");
    let refused = c.cmd("RCPT TO:<bob@dst.test>", "550");
    assert_eq!(
        refused.trim_end(),
        "550 5.7.1 <bob@dst.test>: recipient suppressed for this sender"
    );
    c.cmd("RSET", "250");
    let reply = c.send_mail("x@b.test", &["bob@dst.test"], "Subject: late b\r\n\r\nx");
    assert!(reply.starts_with("250 "), "{reply}");

    // In delivery: a.test's queued message skips bob, b.test's reach him.
    assert_eq!(ctl(&node, &["domain", "resume", "dst.test"]).code, 0);
    let got = sink.wait_for(2, WAIT);
    wait_until("a.test's message suppressed", WAIT, || {
        events(&node, "suppressed")
            .iter()
            .any(|e| e["message_id"] == early.as_str() && e["recipient"] == "bob@dst.test")
            .then_some(())
    });
    let mut senders: Vec<String> = sink.messages().into_iter().map(|m| m.mail_from).collect();
    senders.sort();
    assert_eq!(senders, ["x@b.test", "x@b.test"], "{got:?}");

    // Removed: a.test may send to bob again; no global entry was there to remove.
    let r = ctl_json(
        &node,
        &[
            "suppression",
            "remove",
            "bob@dst.test",
            "--tenant",
            "a.test",
        ],
    );
    assert_eq!(r["changed"], true);
    let r = ctl_json(&node, &["suppression", "remove", "bob@dst.test"]);
    assert_eq!(r["changed"], false);
    c.cmd("MAIL FROM:<x@a.test>", "250");
    c.cmd("RCPT TO:<bob@dst.test>", "250");
    c.cmd("RSET", "250");

    // A pause by hand: the operator's reason at MAIL, other tenants unaffected.
    let r = ctl_json(
        &node,
        &["tenant", "pause", "a.test", "--reason", "spam run reported"],
    );
    assert_eq!(r["changed"], true);
    let refused = c.cmd("MAIL FROM:<x@a.test>", "450 4.7.1");
    assert_eq!(
        refused.trim_end(),
        "450 4.7.1 Sending paused for tenant a.test: spam run reported"
    );
    c.cmd("MAIL FROM:<x@b.test>", "250");
    c.cmd("RSET", "250");
    let t = tenant(&node, "a.test");
    assert_eq!(
        (t["standing"].as_str(), t["paused_by"].as_str()),
        (Some("paused"), Some("operator"))
    );
    let paused = events(&node, "tenant_paused");
    assert_eq!(paused.len(), 1);
    assert_eq!(
        (paused[0]["tenant"].as_str(), paused[0]["rule"].as_str()),
        (Some("a.test"), Some("operator"))
    );
    assert_eq!(
        ctl_json(&node, &["tenant", "resume", "a.test"])["changed"],
        true
    );
    c.cmd("MAIL FROM:<x@a.test>", "250");
    c.cmd("QUIT", "221");

    // Bad input: an unknown tenant, a reason on two lines, an empty --tenant.
    let unknown = ctl(&node, &["tenant", "show", "nobody.test"]);
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("no tenant"), "{}", unknown.stderr);
    let two_lines = ctl(&node, &["tenant", "pause", "a.test", "--reason", "a\nb"]);
    assert_eq!(two_lines.code, 1);
    assert!(
        two_lines.stderr.contains("bad request"),
        "{}",
        two_lines.stderr
    );
    let empty = ctl(&node, &["suppression", "add", "x@dst.test", "--tenant", ""]);
    assert_eq!(empty.code, 2, "{}", empty.stderr);
}
