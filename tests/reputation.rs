//! Reputation end to end: a real batond delivering through dnsmasq to scripted sinks
//! that answer like Gmail and Outlook do. Time is scaled through `[shaping]`'s
//! intervals (seconds where production uses minutes).

use baton_tests::*;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

const GMAIL_GONE: &str = "550-5.1.1 The email account that you tried to reach does not exist. Please try\n550-5.1.1 double-checking the recipient's email address for typos or\n550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser - gsmtp";
const GMAIL_BUSY: &str = "450-4.2.1 The user you are trying to contact is receiving mail at a rate that\n450 4.2.1 prevents additional messages from being delivered. - gsmtp";

/// A node delivering to `port` of the MX hosts `dns` names, with `shaping` appended.
fn node(dns: &Dns, port: u16, shaping: &str) -> Node {
    Node::start(NodeOptions {
        dns: Some(dns.addr),
        mx_port: port,
        tail: shaping.to_string(),
        ..Default::default()
    })
}

/// The sink accepts R messages a second and answers Gmail's 421 beyond. Baton slows
/// down to between 0.5R and 1.1R a second with few 421s, bounces nothing, and climbs
/// back above 1.5R once the limit is lifted.
#[test]
fn a_rate_limited_site_is_paced_below_its_limit_and_climbs_back() {
    const R: usize = 10;
    const MESSAGES: usize = 400;
    let port = free_port();
    let dns = Dns::start(
        &Zone::new()
            .mx("gmail.test", 10, "mx1.gmail.test")
            .a("mx1.gmail.test", "127.0.0.71"),
    );
    let rules = format!(
        "[[rule]]\nstage = \"data\"\nrate = \"{R}/s\"\nreply = '''{GMAIL_RATE}'''\nclose = true\n"
    );
    let sink = Sink::start_with_rules(format!("127.0.0.71:{port}").parse().unwrap(), &rules);
    let node = node(
        &dns,
        port,
        "[shaping]\nconnections = 4\ndecrease_factor = 0.7\nmin_decrease_interval = \"500ms\"\n\
         increase_interval = \"1s\"\nincrease_step = 0.1\nmin_rate = \"60/min\"\n",
    );
    queue_messages(&node, MESSAGES, "user@gmail.test");

    // Limited for 15 seconds of deliveries.
    let first = wait_until("the first delivery", WAIT, || {
        sink.accepted_times_ms().first().copied()
    });
    let lift_at = first / 1000 * 1000 + 16_000;
    wait_until("15 s of limited delivery", WAIT, || {
        (now_ms() >= lift_at).then_some(())
    });
    sink.set_rules("");
    let lifted = now_ms();
    // Then until everything is delivered.
    wait_until("every message delivered", Duration::from_secs(90), || {
        (sink.accepted_times_ms().len() >= MESSAGES).then_some(())
    });

    let accepted = per_second(&sink.accepted_times_ms());
    let refused = per_second(&sink.hit_times_ms(0));
    let start = first / 1000;
    let mut series = String::new();
    for s in start..=accepted.keys().last().copied().unwrap_or(start) {
        let a = accepted.get(&s).copied().unwrap_or(0);
        let r = refused.get(&s).copied().unwrap_or(0);
        let phase = if s * 1000 < lifted {
            "limited"
        } else {
            "lifted"
        };
        series.push_str(&format!(
            "t={:>3}s {phase:<7} delivered {a:>3} 421s {r:>2}\n",
            s - start
        ));
    }
    println!("per-second series (R = {R}):\n{series}");

    // After the first two intervals, while limited: between 0.5R and 1.1R each second,
    // and 421s at most a fifth of the attempts.
    let limited: Vec<u64> = (start + 2..lifted / 1000).collect();
    let mut delivered = 0;
    let mut refusals = 0;
    for s in &limited {
        let a = accepted.get(s).copied().unwrap_or(0);
        assert!(
            (R / 2..=R * 11 / 10).contains(&a),
            "second {}: {a} delivered, outside 0.5R..1.1R\n{series}",
            s - start
        );
        delivered += a;
        refusals += refused.get(s).copied().unwrap_or(0);
    }
    assert!(
        refusals * 5 <= delivered + refusals,
        "{refusals} 421s of {} attempts\n{series}",
        delivered + refusals
    );
    // Lifted: above 1.5R within the ramp (from ~0.8R at +0.1R a second).
    let climbed = accepted
        .iter()
        .find(|(s, n)| **s * 1000 >= lifted && **n > R * 3 / 2)
        .map(|(s, _)| *s);
    let climbed = climbed.unwrap_or_else(|| panic!("never above 1.5R after the lift\n{series}"));
    assert!(
        climbed * 1000 <= lifted + 20_000,
        "above 1.5R only {}s after the lift\n{series}",
        (climbed * 1000).saturating_sub(lifted) / 1000
    );
    // Nothing bounced, nothing lost, and the throttle was explained.
    wait_until("an empty queue", WAIT, || {
        (node.metric("baton_queue_messages") == 0.0).then_some(())
    });
    assert_eq!(node.metric("baton_messages_bounced_total"), 0.0);
    assert_eq!(
        node.metric("baton_messages_delivered_total"),
        MESSAGES as f64
    );
    let throttled = events(&node, "throttled");
    assert!(!throttled.is_empty());
    assert_eq!(throttled[0]["site"], "mx1.gmail.test");
    assert_eq!(
        throttled[0]["rule"], "gmail-unusual-rate",
        "{}",
        throttled[0]
    );
    assert!(
        throttled[0]["reply"]
            .as_str()
            .unwrap_or("")
            .contains("unusual rate"),
        "{}",
        throttled[0]
    );
    assert!(!events(&node, "throttle_relaxed").is_empty());
}

/// Outlook's S3150 block suspends the site at once: no connection until the
/// cool-down ends, then exactly one probe; refused, the suspension doubles; accepted,
/// delivery resumes. Nothing is bounced or suppressed.
#[test]
fn a_block_suspends_the_site_until_one_probe_gets_through() {
    let port = free_port();
    let dns = Dns::start(
        &Zone::new()
            .mx("outlook.test", 10, "mx.outlook.test")
            .a("mx.outlook.test", "127.0.0.72"),
    );
    let rules = format!("[[rule]]\nstage = \"mail\"\nreply = '''{S3150}'''\n");
    let sink = Sink::start_with_rules(format!("127.0.0.72:{port}").parse().unwrap(), &rules);
    let node = node(
        &dns,
        port,
        "[shaping]\nsuspend = \"3s\"\nmax_suspend = \"1m\"\nmin_rate = \"60/min\"\n",
    );
    queue_messages(&node, 3, "user@outlook.test");

    let first = wait_until("the first refusal", WAIT, || {
        sink.hit_times_ms(0).first().copied()
    });
    let suspended = wait_until("site_suspended", Duration::from_secs(5), || {
        events(&node, "site_suspended").first().cloned()
    });
    assert_eq!(suspended["rule"], "ms-block-list", "{suspended}");
    assert!(
        suspended["reply"].as_str().unwrap_or("").contains("S3150"),
        "{suspended}"
    );
    // Explained: the site, and the queue's view of its domain.
    let Ctl {
        code,
        stdout: out,
        stderr: err,
    } = ctl(&node, &["--json", "site", "show", "mx.outlook.test"]);
    assert_eq!(code, 0, "{err}");
    let site: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(site["state"], "suspended", "{site}");
    assert_eq!(site["domains"][0], "outlook.test", "{site}");
    assert!(site["suspended_until_unix_ms"].as_u64().unwrap_or(0) > first);
    let out = ctl(&node, &["--json", "queue"]).stdout;
    let queue: Value = serde_json::from_str(&out).expect("json");
    let row = &queue["domains"][0];
    assert_eq!(row["domain"], "outlook.test");
    assert_eq!(row["site"], "mx.outlook.test", "{row}");
    assert_eq!(row["throttle"], "suspended", "{row}");
    // The probe comes after the 3 s cool-down, and is alone.
    let probe = wait_until("the probe", Duration::from_secs(10), || {
        sink.hit_times_ms(0).get(1).copied()
    });
    let hits = sink.hit_times_ms(0);
    assert!(
        probe >= first + 3000,
        "a connection {} ms into a 3 s suspension: {hits:?}",
        probe - first
    );
    assert!(!events(&node, "site_probe").is_empty());
    // Refused again: 6 s now. Lift the block meanwhile; the next probe is accepted.
    sink.set_rules("");
    let delivered = sink.wait_for(3, Duration::from_secs(30));
    let accepted_at = sink.accepted_times_ms();
    let hits = sink.hit_times_ms(0);
    assert_eq!(hits.len(), 2, "exactly one probe: {hits:?}");
    assert!(
        accepted_at[0] >= probe + 6000,
        "delivered {} ms after the refused probe, inside its 6 s suspension",
        accepted_at[0] - probe
    );
    assert_eq!(delivered.len(), 3);
    assert!(!events(&node, "site_resumed").is_empty());
    assert_eq!(node.metric("baton_messages_bounced_total"), 0.0);
    let list = ctl(&node, &["--json", "suppression", "list"]).stdout;
    assert!(!list.contains("outlook.test"), "{list}");
}

/// A multi-line 550-5.1.1 bounces and suppresses the address, whose next RCPT gets the
/// suppressed reply; a 450-4.2.1 defers only its recipient and leaves the site alone.
#[test]
fn a_bad_mailbox_is_suppressed_and_a_busy_one_only_deferred() {
    let port = free_port();
    let dns = Dns::start(
        &Zone::new()
            .mx("gmail.test", 10, "mx1.gmail.test")
            .a("mx1.gmail.test", "127.0.0.73"),
    );
    let rules = format!(
        "[[rule]]\nstage = \"rcpt\"\nrcpt = \"gone@*\"\nreply = '''{GMAIL_GONE}'''\n\n\
         [[rule]]\nstage = \"rcpt\"\nrcpt = \"busy@*\"\nreply = '''{GMAIL_BUSY}'''\n"
    );
    let sink = Sink::start_with_rules(format!("127.0.0.73:{port}").parse().unwrap(), &rules);
    let node = node(&dns, port, "");
    let mut c = node.smtp();
    c.hello();
    let reply = c.send_mail(
        "s@src.test",
        &["gone@gmail.test", "busy@gmail.test", "ok@gmail.test"],
        "Subject: three\r\n\r\nHello.\r\n",
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let got = sink.wait_for(1, WAIT);
    assert_eq!(got[0].rcpts, vec!["ok@gmail.test"]);

    let started = Instant::now();
    let entry = wait_until("the suppression", WAIT, || {
        let out = ctl(&node, &["--json", "suppression", "list"]).stdout;
        let v: Value = serde_json::from_str(&out).ok()?;
        v["entries"]
            .as_array()?
            .iter()
            .find(|e| e["address"] == "gone@gmail.test")
            .cloned()
    });
    println!(
        "suppressed {:?} after the delivery: {entry}",
        started.elapsed()
    );
    let reason = entry["reason"].as_str().unwrap_or("");
    assert!(
        reason.starts_with("bad_mailbox: 550") && reason.contains("NoSuchUser"),
        "{entry}"
    );
    // The bounce: one `bounced` event, and a DSN queued to the sender.
    let bounced: Vec<Value> = events(&node, "bounced")
        .into_iter()
        .filter(|e| e["domain"] == "gmail.test")
        .collect();
    assert_eq!(bounced.len(), 1, "{bounced:?}");
    assert_eq!(bounced[0]["recipient"], "gone@gmail.test");
    // Its own reply, not the transaction's last one, and the rule that classified it.
    let reply = bounced[0]["reply"].as_str().unwrap_or("");
    assert!(
        reply.starts_with("550 5.1.1") && reply.contains("NoSuchUser"),
        "{reply}"
    );
    assert_eq!(bounced[0]["rule"], "code:5.1.1");
    let received = events(&node, "received");
    assert!(
        received
            .iter()
            .any(|e| e["sender"] == "" && e["recipient"] == "s@src.test"),
        "no DSN to the sender: {received:?}"
    );
    // busy@ was deferred, the site untouched.
    let deferred = events(&node, "deferred");
    assert!(
        deferred.iter().all(|e| e["recipient"] == "busy@gmail.test"),
        "{deferred:?}"
    );
    assert!(!deferred.is_empty());
    assert!(
        deferred[0]["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("450 4.2.1"),
        "{deferred:?}"
    );
    assert!(events(&node, "throttled").is_empty());
    assert!(events(&node, "site_suspended").is_empty());
    let list = ctl(&node, &["--json", "suppression", "list"]).stdout;
    assert!(!list.contains("busy@"), "{list}");

    c.cmd("MAIL FROM:<s@src.test>", "250");
    let refused = c.cmd("RCPT TO:<gone@gmail.test>", "550");
    assert!(
        refused.contains("5.1.1") && refused.contains("recipient address suppressed"),
        "{refused}"
    );
}

/// `batonctl site resume` ends a suspension at once; unknown sites are NOT_FOUND.
#[test]
fn an_operator_resumes_a_suspended_site() {
    let port = free_port();
    let dns = Dns::start(
        &Zone::new()
            .mx("outlook.test", 10, "mx.outlook.test")
            .a("mx.outlook.test", "127.0.0.76"),
    );
    let rules = format!("[[rule]]\nstage = \"mail\"\nreply = '''{S3150}'''\n");
    let sink = Sink::start_with_rules(format!("127.0.0.76:{port}").parse().unwrap(), &rules);
    let node = node(&dns, port, "[shaping]\nsuspend = \"1h\"\n");
    queue_messages(&node, 2, "user@outlook.test");
    wait_until("site_suspended", WAIT, || {
        events(&node, "site_suspended").first().cloned()
    });
    sink.set_rules("");
    let Ctl {
        code,
        stdout: out,
        stderr: err,
    } = ctl(&node, &["site", "resume", "mx.outlook.test"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("resumed"), "{out}");
    // An hour's suspension ends now: the mail goes.
    sink.wait_for(2, WAIT);
    let resumed = events(&node, "site_resumed");
    assert!(
        resumed
            .iter()
            .any(|e| e["detail"].as_str().unwrap_or("").contains("operator")),
        "{resumed:?}"
    );
    let out = ctl(&node, &["--json", "site", "show", "mx.outlook.test"]).stdout;
    let site: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(site["state"], "normal", "{site}");
    let Ctl {
        code, stderr: err, ..
    } = ctl(&node, &["site", "resume", "mx.nowhere.test"]);
    assert_eq!(code, 1);
    assert!(err.contains("no site"), "{err}");
    let Ctl {
        code, stdout: out, ..
    } = ctl(&node, &["site", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("mx.outlook.test") && out.contains("normal"),
        "{out}"
    );
}

/// SIGHUP reloads `shaping.rules_file`; a file that no longer parses keeps the rules
/// in force and says why in the log.
#[test]
fn sighup_reloads_the_classification_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    let write = |name: &str| {
        let text =
            format!("[[rule]]\nname = \"{name}\"\nregex = 'FOOBAR'\ncategory = \"blocklisted\"\n");
        std::fs::write(&rules, text).expect("write rules");
    };
    write("first");
    let node = Node::start(NodeOptions {
        tail: format!("[shaping]\nrules_file = \"{}\"\n", rules.display()),
        ..Default::default()
    });
    let rule = |node: &Node| {
        let Ctl {
            code,
            stdout: out,
            stderr: err,
        } = ctl(node, &["--json", "classify", "550 5.7.1 FOOBAR here"]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).expect("json");
        v["rule"].as_str().unwrap_or("").to_string()
    };
    assert_eq!(rule(&node), "first");
    let hup = |node: &Node| {
        let pid = node.proc.as_ref().expect("running").pid();
        let ok = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    };
    write("second");
    hup(&node);
    wait_until("the new rule", WAIT, || {
        (rule(&node) == "second").then_some(())
    });
    assert!(node.log().contains("classification rules reloaded"));
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"bad\"\nregex = '('\ncategory = \"nope\"\n",
    )
    .expect("write rules");
    hup(&node);
    wait_until("the refused reload in the log", WAIT, || {
        node.log()
            .contains("classification rules not reloaded")
            .then_some(())
    });
    assert_eq!(rule(&node), "second", "a bad file keeps the rules in force");
}
