//! End-to-end relay behaviour: real batond, dnsmasq, sinks and clients on 127.0.0.0/8.

use baton_tests::*;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn at(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// A node that resolves MX through `dns` and delivers to port `port` of the MX hosts.
fn with_dns(dns: &Dns, port: u16) -> Node {
    Node::start(NodeOptions {
        dns: Some(dns.addr),
        mx_port: port,
        ..Default::default()
    })
}

/// A client past the greeting and EHLO.
fn client(node: &Node) -> Smtp {
    let mut c = node.smtp();
    c.hello();
    c
}

fn body(subject: &str) -> String {
    format!("From: <s@src.test>\r\nTo: <x@dst.test>\r\nSubject: {subject}\r\n\r\nHello.\r\n")
}

#[test]
fn one_message_to_two_domains() {
    let port = free_port();
    let dns = Dns::start(
        &Zone::new()
            .mx("one.test", 10, "mx.one.test")
            .a("mx.one.test", "127.0.0.2")
            .mx("two.test", 10, "mx.two.test")
            .a("mx.two.test", "127.0.0.3"),
    );
    let one = Sink::start(at("127.0.0.2", port));
    let two = Sink::start(at("127.0.0.3", port));
    let node = with_dns(&dns, port);
    let mut c = client(&node);
    let reply = c.send_mail(
        "s@src.test",
        &["a@one.test", "b@two.test", "c@TWO.test"],
        &body("two"),
    );
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let id = queue_id(&reply);
    c.cmd("QUIT", "221");

    let m1 = one.wait_for(1, WAIT);
    let m2 = two.wait_for(1, WAIT);
    assert_eq!(m1[0].rcpts, vec!["a@one.test"]);
    let mut r2 = m2[0].rcpts.clone();
    r2.sort();
    assert_eq!(
        r2,
        vec!["b@two.test", "c@TWO.test"],
        "one transaction for both two.test recipients"
    );
    assert_eq!(m1[0].mail_from, "s@src.test");
    let received = m1[0].header("Received").expect("Received header");
    assert!(received.contains(&id), "queue id in Received: {received}");
    assert!(m1[0].data.contains("Subject: two"));
    wait_until("queue to empty", WAIT, || {
        (node.metric("baton_queue_messages") == 0.0).then_some(())
    });
    assert_eq!(node.metric("baton_messages_received_total"), 1.0);
    assert_eq!(node.metric("baton_messages_delivered_total"), 3.0);
}

#[test]
fn mx_preference_falls_back_when_primary_is_down_or_busy() {
    let port = free_port();
    let dns = Dns::start(
        &Zone::new()
            .mx("pref.test", 5, "down.pref.test")
            .a("down.pref.test", "127.0.0.4")
            .mx("pref.test", 10, "busy.pref.test")
            .a("busy.pref.test", "127.0.0.5")
            .mx("pref.test", 20, "backup.pref.test")
            .a("backup.pref.test", "127.0.0.6"),
    );
    // Nothing listens on 127.0.0.4; 127.0.0.5 greets with 421.
    let busy = Sink::start_with(at("127.0.0.5", port), 421);
    let backup = Sink::start(at("127.0.0.6", port));
    let node = with_dns(&dns, port);
    let mut c = client(&node);
    let reply = c.send_mail("s@src.test", &["u@pref.test"], &body("pref"));
    assert!(reply.starts_with("250"), "{reply}");
    let got = backup.wait_for(1, WAIT);
    assert_eq!(got[0].rcpts, vec!["u@pref.test"]);
    assert!(busy.messages().is_empty());
}

#[test]
fn implicit_mx_from_a_record() {
    let port = free_port();
    let dns = Dns::start(&Zone::new().a("bare.test", "127.0.0.7"));
    let sink = Sink::start(at("127.0.0.7", port));
    let node = with_dns(&dns, port);
    let mut c = client(&node);
    assert!(
        c.send_mail("s@src.test", &["u@bare.test"], &body("a"))
            .starts_with("250")
    );
    sink.wait_for(1, WAIT);
}

#[test]
fn temporary_failure_then_success_on_retry() {
    let port = free_port();
    let dns = Dns::start(
        &Zone::new()
            .mx("later.test", 10, "mx.later.test")
            .a("mx.later.test", "127.0.0.8"),
    );
    let sink = Sink::start(at("127.0.0.8", port));
    let node = Node::start(NodeOptions {
        dns: Some(dns.addr),
        mx_port: port,
        retry_intervals: "[\"1s\"]".into(),
        ..Default::default()
    });
    let mut c = client(&node);
    assert!(
        c.send_mail("s@src.test", &["deferonce@later.test"], &body("retry"))
            .starts_with("250")
    );
    let got = sink.wait_for(1, WAIT);
    assert_eq!(got[0].rcpts, vec!["deferonce@later.test"]);
    assert!(node.metric("baton_messages_deferred_total") >= 1.0);
    assert_eq!(node.metric("baton_messages_delivered_total"), 1.0);
}

#[test]
fn permanent_failure_sends_a_dsn_to_the_sender_and_null_sender_gets_none() {
    let port = free_port();
    let dns = Dns::start(
        &Zone::new()
            .mx("dst.test", 10, "mx.dst.test")
            .a("mx.dst.test", "127.0.0.9")
            .mx("src.test", 10, "mx.src.test")
            .a("mx.src.test", "127.0.0.10"),
    );
    let dst = Sink::start(at("127.0.0.9", port));
    let src = Sink::start(at("127.0.0.10", port));
    let node = with_dns(&dns, port);
    let mut c = client(&node);
    let reply = c.send_mail(
        "s@src.test",
        &["reject@dst.test", "ok@dst.test"],
        &body("bounce me"),
    );
    let id = queue_id(&reply);
    // The good recipient is delivered; the rejected one bounces to s@src.test.
    let delivered = dst.wait_for(1, WAIT);
    assert_eq!(delivered[0].rcpts, vec!["ok@dst.test"]);
    let dsn = src.wait_for(1, WAIT);
    assert_eq!(dsn[0].mail_from, "", "DSN has a null envelope sender");
    assert_eq!(dsn[0].rcpts, vec!["s@src.test"]);
    let text = &dsn[0].data;
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; reject@dst.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(
        text.contains("Subject: bounce me"),
        "original headers attached: {text}"
    );
    assert!(text.contains(&id), "{text}");

    // A bounce of a message with a null sender produces no DSN. (Another address:
    // the hard bounce put reject@ on the suppression list.)
    let reply = c.send_mail("", &["reject2@dst.test"], &body("null sender"));
    assert!(reply.starts_with("250"), "{reply}");
    c.cmd("QUIT", "221");
    wait_until("queue to empty", WAIT, || {
        (node.metric("baton_queue_messages") == 0.0).then_some(())
    });
    assert_eq!(
        node.metric("baton_messages_bounced_total"),
        2.0,
        "reject@ and reject2@, and nothing else"
    );
    assert_eq!(src.messages().len(), 1, "no DSN for the null sender");
}

#[test]
fn null_mx_bounces_at_once() {
    let port = free_port();
    let dns = Dns::start(
        &Zone::new()
            .null_mx("nomail.test")
            .mx("src.test", 10, "mx.src.test")
            .a("mx.src.test", "127.0.0.11"),
    );
    let src = Sink::start(at("127.0.0.11", port));
    let node = with_dns(&dns, port);
    let mut c = client(&node);
    assert!(
        c.send_mail("s@src.test", &["u@nomail.test"], &body("null mx"))
            .starts_with("250")
    );
    let dsn = src.wait_for(1, WAIT);
    assert!(dsn[0].data.contains("Status: 5.1.10"), "{}", dsn[0].data);
}

#[test]
fn relay_is_refused_outside_relay_networks() {
    let node = Node::start(NodeOptions {
        listener: "relay_networks = [\"10.9.0.0/16\"]".into(),
        ..Default::default()
    });
    let mut c = client(&node);
    c.cmd("MAIL FROM:<s@src.test>", "250");
    c.cmd("RCPT TO:<u@elsewhere.test>", "554 5.7.1");
    c.cmd("DATA", "554");
}

fn proxy_v2(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // v2, PROXY
    h.push(0x11); // TCP over IPv4
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

#[test]
fn proxy_v2_client_address_drives_policy_and_received() {
    let port = free_port();
    let sink = Sink::start(at("127.0.0.12", port));
    let node = Node::start(NodeOptions {
        smarthost: Some(at("127.0.0.12", port)),
        listener: "proxy_protocol = true\nproxy_trusted = [\"127.0.0.0/8\"]\nrelay_networks = [\"192.0.2.0/24\"]".into(),
        ..Default::default()
    });
    // 192.0.2.7 is in relay_networks (the header is only data: no traffic leaves loopback).
    let mut s = std::net::TcpStream::connect(node.smtp).unwrap();
    std::io::Write::write_all(&mut s, &proxy_v2([192, 0, 2, 7], [127, 0, 0, 1])).unwrap();
    let mut c = Smtp::from_stream(s);
    c.hello();
    assert!(
        c.send_mail("s@src.test", &["u@dst.test"], &body("proxied"))
            .starts_with("250")
    );
    let got = sink.wait_for(1, WAIT);
    let received = got[0].header("Received").unwrap();
    assert!(received.contains("[192.0.2.7]"), "{received}");

    // 198.51.100.1 is not: relaying is refused although the TCP peer is 127.0.0.1.
    let mut s = std::net::TcpStream::connect(node.smtp).unwrap();
    std::io::Write::write_all(&mut s, &proxy_v2([198, 51, 100, 1], [127, 0, 0, 1])).unwrap();
    let mut c = Smtp::from_stream(s);
    c.hello();
    c.cmd("MAIL FROM:<s@src.test>", "250");
    c.cmd("RCPT TO:<u@dst.test>", "554 5.7.1");

    // Without a PROXY header the connection is dropped.
    let mut c = node.smtp();
    c.send_raw(b"EHLO x\r\n");
    assert!(c.closed());
}

#[test]
fn bare_lf_dot_does_not_end_data() {
    let port = free_port();
    let sink = Sink::start(at("127.0.0.13", port));
    let node = Node::start(NodeOptions {
        smarthost: Some(at("127.0.0.13", port)),
        ..Default::default()
    });
    for smuggle in ["\n.\n", "\r\n.\n", "\n.\r\n"] {
        let mut c = node.smtp();
        c.hello();
        c.cmd("MAIL FROM:<s@src.test>", "250");
        c.cmd("RCPT TO:<u@dst.test>", "250");
        c.cmd("DATA", "354");
        let payload = format!(
            "Subject: smuggle\r\n\r\nbefore{smuggle}MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@dst.test>\r\nDATA\r\nevil\r\n.\r\n"
        );
        c.send_raw(payload.as_bytes());
        let (code, text) = c.reply();
        assert_eq!(
            code, 550,
            "{smuggle:?}: the whole thing is one rejected message: {text}"
        );
        // The next reply is for our NOOP: nothing smuggled was executed.
        c.cmd("NOOP", "250");
    }
    // A clean message still goes through, and only that one arrives.
    let mut c = client(&node);
    assert!(
        c.send_mail("s@src.test", &["u@dst.test"], &body("clean"))
            .starts_with("250")
    );
    let got = sink.wait_for(1, WAIT);
    assert!(got[0].data.contains("Subject: clean"));
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn size_and_recipient_limits() {
    let node = Node::start(NodeOptions {
        smtp: "max_message_size = 2048\nmax_recipients = 3".into(),
        ..Default::default()
    });
    let mut c = client(&node);
    c.cmd("MAIL FROM:<s@src.test> SIZE=999999", "552 5.3.4");
    c.cmd("MAIL FROM:<s@src.test>", "250");
    for i in 0..3 {
        c.cmd(&format!("RCPT TO:<u{i}@dst.test>"), "250");
    }
    c.cmd("RCPT TO:<u4@dst.test>", "452 4.5.3");
    c.cmd("DATA", "354");
    let big = "x".repeat(70) + "\r\n";
    c.send_raw(format!("Subject: big\r\n\r\n{}", big.repeat(60)).as_bytes());
    c.send_raw(b".\r\n");
    let (code, text) = c.reply();
    assert_eq!(code, 552, "{text}");
    assert!(text.contains("5.3.4"), "{text}");
    // A line over 1000 bytes is refused with a reason.
    c.cmd("MAIL FROM:<s@src.test>", "250");
    c.cmd("RCPT TO:<u@dst.test>", "250");
    c.cmd("DATA", "354");
    c.send_raw(format!("Subject: long\r\n\r\n{}\r\n.\r\n", "y".repeat(1200)).as_bytes());
    let (code, text) = c.reply();
    assert_eq!(code, 550, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("line too long"),
        "{text}"
    );
    assert_eq!(node.metric("baton_messages_received_total"), 0.0);
}

#[test]
fn auth_only_over_starttls() {
    let port = free_port();
    let sink = Sink::start(at("127.0.0.14", port));
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let hash = String::from_utf8(
        Command::new(bin("batonctl"))
            .arg("hash-password")
            .stdin_bytes(b"s3cret\n")
            .stdout,
    )
    .unwrap();
    let node = Node::start(NodeOptions {
        smarthost: Some(at("127.0.0.14", port)),
        listener: format!(
            "relay_networks = []\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
        tail: format!(
            "[[smtp.user]]\nname = \"app1\"\npassword_hash = \"{}\"\n",
            hash.trim()
        ),
        ..Default::default()
    });
    // Before TLS: STARTTLS offered, AUTH not; AUTH refused.
    let mut c = node.smtp();
    c.reply();
    let ehlo = c.cmd("EHLO client.test", "250");
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    c.cmd("AUTH PLAIN AGFwcDEAczNjcmV0", "538 5.7.11");
    c.cmd("MAIL FROM:<s@src.test>", "250");
    c.cmd("RCPT TO:<u@dst.test>", "554 5.7.1");

    let swaks = |password: &str| {
        Command::new("swaks")
            .args([
                "--server",
                &node.smtp.to_string(),
                "--tls",
                "--auth",
                "PLAIN",
            ])
            .args(["--auth-user", "app1", "--auth-password", password])
            .args([
                "--from",
                "s@src.test",
                "--to",
                "u@dst.test",
                "--h-Subject",
                "via swaks",
            ])
            .output()
            .expect("swaks installed (apt-get install swaks libnet-ssleay-perl)")
    };
    let bad = swaks("wrong");
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains("535 5.7.8"), "{out}");
    let good = swaks("s3cret");
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(out.contains("235 2.7.0"), "{out}");
    let got = sink.wait_for(1, WAIT);
    let received = got[0].header("Received").unwrap();
    assert!(received.contains("ESMTPSA"), "{received}");
}

trait StdinBytes {
    fn stdin_bytes(&mut self, input: &[u8]) -> std::process::Output;
}

impl StdinBytes for Command {
    fn stdin_bytes(&mut self, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

#[test]
fn outbound_starttls_opportunistic_and_required() {
    let port = free_port();
    let sink = Sink::start(at("127.0.0.15", port));
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    // The "remote MX" is another batond with a self-signed certificate.
    let remote = Node::start(NodeOptions {
        smarthost: Some(at("127.0.0.15", port)),
        listener: format!(
            "relay_networks = [\"127.0.0.0/8\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
        ..Default::default()
    });
    let opportunistic = Node::start(NodeOptions {
        smarthost: Some(remote.smtp),
        tls: "opportunistic".into(),
        ..Default::default()
    });
    let mut c = client(&opportunistic);
    assert!(
        c.send_mail("s@src.test", &["u@dst.test"], &body("tls"))
            .starts_with("250")
    );
    let got = sink.wait_for(1, WAIT);
    // The remote's Received: line records that our node spoke TLS to it.
    assert!(
        got[0].data.contains("(Baton) with ESMTPS"),
        "opportunistic TLS used: {}",
        got[0].data
    );

    // `required` verifies the certificate: self-signed fails, the message is deferred.
    let required = Node::start(NodeOptions {
        smarthost: Some(remote.smtp),
        tls: "required".into(),
        ..Default::default()
    });
    let mut c = client(&required);
    assert!(
        c.send_mail("s@src.test", &["u@dst.test"], &body("must verify"))
            .starts_with("250")
    );
    wait_until("a deferral", WAIT, || {
        (required.metric("baton_messages_deferred_total") >= 1.0).then_some(())
    });
    assert_eq!(required.metric("baton_queue_messages"), 1.0);
    assert_eq!(
        sink.messages().len(),
        1,
        "nothing sent without verified TLS"
    );
}

#[test]
fn expired_message_bounces_with_4_4_7() {
    let port = free_port();
    let sink = Sink::start(at("127.0.0.16", port));
    let node = Node::start(NodeOptions {
        smarthost: Some(at("127.0.0.16", port)),
        retry_intervals: "[\"500ms\"]".into(),
        max_age: "2s".into(),
        ..Default::default()
    });
    let mut c = client(&node);
    assert!(
        c.send_mail("s@src.test", &["tempfail@dst.test"], &body("expire"))
            .starts_with("250")
    );
    let got = sink.wait_for(1, WAIT);
    assert_eq!(got[0].rcpts, vec!["s@src.test"]);
    assert_eq!(got[0].mail_from, "");
    assert!(got[0].data.contains("Status: 4.4.7"), "{}", got[0].data);
    assert!(
        got[0].data.contains("451 4.3.0 try later"),
        "last reply quoted: {}",
        got[0].data
    );
    wait_until("queue to empty", WAIT, || {
        (node.metric("baton_queue_messages") == 0.0).then_some(())
    });
}
