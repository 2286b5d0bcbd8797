//! What an attacker tries in the first hour, against a real batond: PROXY headers from
//! anyone, slow clients filling the node, bytes DATA and BDAT disagree on, address
//! probing, password guessing across connections, and sending as someone else.

use baton_tests::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn at(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// A PROXY v1 header naming `client` as the source.
fn proxy_v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 40000 25\r\n").into_bytes()
}

/// A connection to a PROXY listener that claims to come from `client`.
fn via_proxy(node: &Node, client: &str) -> Smtp {
    let mut s = TcpStream::connect(node.smtp).unwrap();
    s.write_all(&proxy_v1(client)).unwrap();
    Smtp::from_stream(s)
}

/// Writes `bytes` one at a time, `every` apart, until the peer closes or all are sent;
/// meanwhile waits for one reply line. Returns the reply and how long after the first
/// byte it came.
fn drip(stream: &TcpStream, bytes: &[u8], every: Duration) -> (String, Duration) {
    let mut writer = stream.try_clone().unwrap();
    let bytes = bytes.to_vec();
    let start = Instant::now();
    let dripper = std::thread::spawn(move || {
        for b in bytes {
            if writer.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(every);
        }
    });
    let mut reader = stream.try_clone().unwrap();
    reader.set_read_timeout(Some(WAIT)).unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\n") {
        match reader.read(&mut byte) {
            Ok(1) => reply.push(byte[0]),
            _ => break,
        }
    }
    let elapsed = start.elapsed();
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = dripper.join();
    (String::from_utf8_lossy(&reply).into_owned(), elapsed)
}

#[test]
fn proxy_header_from_an_untrusted_peer_is_refused_before_the_greeting() {
    let node = Node::start(NodeOptions {
        listener: "proxy_protocol = true\nproxy_trusted = [\"192.0.2.1/32\"]\n\
                   relay_networks = [\"127.0.0.0/8\"]"
            .into(),
        ..Default::default()
    });
    // 127.0.0.1 may relay, but it is not a trusted load balancer: its header is not
    // believed and nothing is answered.
    let mut c = via_proxy(&node, "127.0.0.5");
    assert!(c.closed(), "a greeting was sent to an untrusted PROXY peer");
    let metrics = node.metrics();
    assert!(
        metrics.contains("baton_smtp_refused_connections_total{reason=\"proxy_untrusted\"} 1"),
        "{metrics}"
    );
    assert!(node.log().contains("not in proxy_trusted"));
}

/// Slow clients are cut at their deadlines however they trickle, and when anonymous
/// clients fill the node, a relay_networks client still gets in.
#[test]
fn deadlines_cut_slow_clients_and_trusted_clients_keep_their_share() {
    let port = free_port();
    let sink = Sink::start(at("127.0.0.40", port));
    let node = Node::start(NodeOptions {
        smarthost: Some(at("127.0.0.40", port)),
        listener: "proxy_protocol = true\nproxy_trusted = [\"127.0.0.0/8\"]\n\
                   relay_networks = [\"192.0.2.0/24\"]"
            .into(),
        smtp: "max_connections = 4\nreserved_connections = 1\nmax_connections_per_ip = 0\n\
               command_timeout = \"2s\"\ndata_timeout = \"1s\"\ndata_min_rate = \"1KiB/s\""
            .into(),
        ..Default::default()
    });

    // Three anonymous clients take every general slot; a fourth is refused ...
    let mut fillers: Vec<Smtp> = (1..=3)
        .map(|i| {
            let mut c = via_proxy(&node, &format!("198.51.100.{i}"));
            assert_eq!(c.reply().0, 220);
            c
        })
        .collect();
    let mut fourth = via_proxy(&node, "198.51.100.4");
    let (code, text) = fourth.reply();
    assert_eq!(code, 421, "{text}");
    // ... and a relay_networks client still gets in and sends.
    let mut trusted = via_proxy(&node, "192.0.2.7");
    trusted.hello();
    // (Idle fillers would be cut at command_timeout too: let them go now.)
    for c in &mut fillers {
        c.cmd("QUIT", "221");
    }
    let reply = trusted.send_mail("s@src.test", &["u@dst.test"], "Subject: in\r\n\r\nhi\r\n");
    assert!(reply.starts_with("250"), "{reply}");
    sink.wait_for(1, WAIT);
    trusted.cmd("QUIT", "221");

    // A command line dripped a byte every 300 ms is cut 2 s after its first byte.
    let s = TcpStream::connect(node.smtp).unwrap();
    (&s).write_all(&proxy_v1("198.51.100.9")).unwrap();
    let mut greeting = [0u8; 256];
    let n = (&s).read(&mut greeting).unwrap();
    assert!(greeting[..n].starts_with(b"220"));
    let (reply, after) = drip(
        &s,
        b"EHLO slow.example.test.with.a.long.name\r\n",
        Duration::from_millis(300),
    );
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");
    assert!(after < Duration::from_millis(3500), "cut after {after:?}");

    // A body dripped a byte every 200 ms is cut once its first data_timeout is spent.
    let s = TcpStream::connect(node.smtp).unwrap();
    (&s).write_all(&proxy_v1("192.0.2.8")).unwrap();
    let mut c = Smtp::from_stream(s.try_clone().unwrap());
    c.hello();
    c.cmd("MAIL FROM:<s@src.test>", "250");
    c.cmd("RCPT TO:<u@dst.test>", "250");
    c.cmd("DATA", "354");
    let (reply, after) = drip(&s, &[b'x'; 60], Duration::from_millis(200));
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");
    assert!(after < Duration::from_millis(3000), "cut after {after:?}");

    let metrics = node.metrics();
    for want in [
        "baton_smtp_refused_connections_total{reason=\"capacity\"} 1",
        "baton_smtp_timeouts_total{phase=\"command\"} 1",
        "baton_smtp_timeouts_total{phase=\"data\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} not in\n{metrics}");
    }
    assert_eq!(sink.messages().len(), 1);
}

/// DATA and BDAT refuse bare CR, bare LF and NUL alike, and say so in the log.
#[test]
fn bare_line_endings_and_nul_are_refused_in_data_and_bdat() {
    let port = free_port();
    let sink = Sink::start(at("127.0.0.41", port));
    let node = Node::start(NodeOptions {
        smarthost: Some(at("127.0.0.41", port)),
        ..Default::default()
    });
    let mut c = node.smtp();
    c.hello();
    for (bad, name) in [(&b"\r"[..], "bare CR"), (b"\n", "bare LF"), (b"\0", "NUL")] {
        let body = [
            b"Subject: a".to_vec(),
            bad.to_vec(),
            b"b\r\n\r\nx\r\n".to_vec(),
        ]
        .concat();
        // BDAT
        c.cmd("MAIL FROM:<s@src.test>", "250");
        c.cmd("RCPT TO:<u@dst.test>", "250");
        c.send_raw(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
        c.send_raw(&body);
        let (code, text) = c.reply();
        assert_eq!(code, 550, "BDAT with {name}: {text}");
        assert!(text.starts_with("550 5.6.0"), "{text}");
        // DATA
        c.cmd("MAIL FROM:<s@src.test>", "250");
        c.cmd("RCPT TO:<u@dst.test>", "250");
        c.cmd("DATA", "354");
        c.send_raw(&body);
        c.send_raw(b".\r\n");
        let (code, text) = c.reply();
        assert_eq!(code, 550, "DATA with {name}: {text}");
    }
    // A clean BDAT message still goes through.
    let body = b"Subject: clean\r\n\r\nx\r\n";
    c.cmd("MAIL FROM:<s@src.test>", "250");
    c.cmd("RCPT TO:<u@dst.test>", "250");
    c.send_raw(format!("BDAT {} LAST\r\n", body.len()).as_bytes());
    c.send_raw(body);
    assert_eq!(c.reply().0, 250);
    let got = sink.wait_for(1, WAIT);
    assert_eq!(got[0].header("Subject").as_deref(), Some("clean"));
    assert_eq!(
        node.log().matches("message refused").count(),
        6,
        "{}",
        node.log()
    );
    assert_eq!(node.metric("baton_smtp_refused_messages_total"), 6.0);
}

/// RFC 5321 §4.5.3.1.6: a 998-octet line starting with a dot is sent as 999 octets
/// plus CRLF (what Postfix does); it is accepted and delivered byte for byte.
#[test]
fn a_dot_stuffed_998_octet_line_is_delivered_byte_for_byte() {
    let port = free_port();
    let sink = Sink::start(at("127.0.0.42", port));
    let node = Node::start(NodeOptions {
        smarthost: Some(at("127.0.0.42", port)),
        ..Default::default()
    });
    let line = format!(".{}", "y".repeat(997));
    assert_eq!(line.len(), 998);
    let mut c = node.smtp();
    c.hello();
    c.cmd("MAIL FROM:<s@src.test>", "250");
    c.cmd("RCPT TO:<u@dst.test>", "250");
    c.cmd("DATA", "354");
    c.send_raw(format!("Subject: long\r\n\r\n.{line}\r\n.\r\n").as_bytes());
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    let got = sink.wait_for(1, WAIT);
    assert!(
        got[0].data.contains(&format!("\r\n\r\n{line}\r\n")),
        "the line did not arrive intact"
    );
}

/// Refused recipients count as errors: probing 20 addresses ends the session.
#[test]
fn twenty_refused_recipients_end_the_session() {
    let node = Node::start(NodeOptions {
        listener: "relay_networks = []".into(),
        ..Default::default()
    });
    let mut c = node.smtp();
    c.hello();
    c.cmd("MAIL FROM:<s@src.test>", "250");
    let mut wire = String::new();
    for i in 0..20 {
        wire.push_str(&format!("RCPT TO:<probe{i}@dst.test>\r\n"));
    }
    c.send_raw(wire.as_bytes());
    let mut codes = Vec::new();
    loop {
        let (code, _) = c.reply();
        codes.push(code);
        if code == 421 || codes.len() == 20 {
            break;
        }
    }
    assert_eq!(codes.len(), 11, "{codes:?}");
    assert!(codes[..10].iter().all(|c| *c == 554), "{codes:?}");
    assert!(c.closed());
}

/// AUTH failures are counted per client address across connections; past the limit,
/// even the right password is refused, while another address is unaffected.
#[test]
fn auth_failures_from_one_address_are_throttled_across_connections() {
    let node = Node::start(NodeOptions {
        listener: "proxy_protocol = true\nproxy_trusted = [\"127.0.0.0/8\"]\n\
                   relay_networks = [\"192.0.2.0/24\"]"
            .into(),
        smtp: "max_auth_failures_per_ip = 3".into(),
        tail: format!(
            "[[smtp.user]]\nname = \"app1\"\npassword_hash = \"{}\"\n",
            password_hash("s3cret")
        ),
        ..Default::default()
    });
    // base64("\0app1\0wrong") and base64("\0app1\0s3cret")
    let wrong = "AUTH PLAIN AGFwcDEAd3Jvbmc=";
    let right = "AUTH PLAIN AGFwcDEAczNjcmV0";
    let mut c = via_proxy(&node, "192.0.2.7");
    c.hello();
    c.cmd(wrong, "535 5.7.8");
    c.cmd(wrong, "535 5.7.8");
    c.cmd("QUIT", "221");
    let mut c = via_proxy(&node, "192.0.2.7");
    c.hello();
    c.cmd(wrong, "535 5.7.8");
    c.cmd(right, "421 4.7.0");
    assert!(c.closed());
    let mut c = via_proxy(&node, "192.0.2.8");
    c.hello();
    c.cmd(right, "235");
    assert_eq!(node.metric("baton_smtp_auth_throttled_total"), 1.0);

    // A user name cannot forge a log line.
    let mut c = via_proxy(&node, "192.0.2.9");
    c.hello();
    c.cmd(
        "AUTH PLAIN AHgKRkFLRSBJTkZPIHJlY2VpdmVkIGlkPWZvcmdlZABwdw==",
        "535 5.7.8",
    );
    let log = wait_until("the failure logged", WAIT, || {
        let log = node.log();
        log.contains("FAKE").then_some(log)
    });
    assert!(!log.lines().any(|l| l.starts_with("FAKE")), "{log}");
    assert!(
        log.contains(r#"user="x\nFAKE INFO received id=forged""#),
        "{log}"
    );
}

/// An authenticated user sends only as its allowed_from domains, in the envelope and
/// in From:; unauthenticated relay_networks clients are unchanged.
#[test]
fn allowed_from_is_enforced_for_envelope_and_header() {
    let port = free_port();
    let sink = Sink::start(at("127.0.0.43", port));
    let node = Node::start(NodeOptions {
        smarthost: Some(at("127.0.0.43", port)),
        tail: format!(
            "[[smtp.user]]\nname = \"app1\"\npassword_hash = \"{}\"\nallowed_from = [\"example.com\", \"*.example.com\"]\n\
             [[smtp.user]]\nname = \"app2\"\npassword_hash = \"{}\"\n",
            password_hash("s3cret"),
            password_hash("other")
        ),
        ..Default::default()
    });
    assert!(
        node.log()
            .contains("smtp.user \\\"app2\\\" has no allowed_from")
            || node
                .log()
                .contains("smtp.user \"app2\" has no allowed_from"),
        "{}",
        node.log()
    );
    let mut c = node.smtp();
    c.hello();
    c.cmd("AUTH PLAIN AGFwcDEAczNjcmV0", "235");
    c.cmd("MAIL FROM:<ceo@bank.test>", "550 5.7.1");
    let reply = c.send_mail(
        "news@mail.example.com",
        &["u@dst.test"],
        "From: CEO <ceo@bank.test>\r\nSubject: spoof\r\n\r\nx",
    );
    assert!(reply.starts_with("550 5.7.1"), "{reply}");
    let reply = c.send_mail(
        "news@mail.example.com",
        &["u@dst.test"],
        "From: News <news@example.com>\r\nSubject: own\r\n\r\nx",
    );
    assert!(reply.starts_with("250"), "{reply}");

    // Without AUTH, a relay_networks client may still send as anyone.
    let mut c = node.smtp();
    c.hello();
    let reply = c.send_mail(
        "ceo@bank.test",
        &["u@dst.test"],
        "From: <ceo@bank.test>\r\nSubject: relay\r\n\r\nx",
    );
    assert!(reply.starts_with("250"), "{reply}");
    let got = sink.wait_for(2, WAIT);
    let mut subjects: Vec<String> = got.iter().filter_map(|m| m.header("Subject")).collect();
    subjects.sort();
    assert_eq!(subjects, ["own", "relay"]);
    assert_eq!(node.log().matches("message refused").count(), 2);
}

/// The log has one line per received message and one per recipient outcome, with what
/// an operator greps for, route failures included; events name the receiving node.
#[test]
fn logs_have_a_line_per_message_and_per_recipient_outcome() {
    let port = free_port();
    let sink = Sink::start(at("127.0.0.44", port));
    let dns = Dns::start(
        &Zone::new()
            .mx("dst.test", 10, "mx.dst.test")
            .a("mx.dst.test", "127.0.0.44"),
    );
    let node = Node::start(NodeOptions {
        dns: Some(dns.addr),
        mx_port: port,
        ..Default::default()
    });
    let mut c = node.smtp();
    c.hello();
    let reply = c.send_mail(
        "s@src.test",
        &["u@dst.test", "v@nowhere.test"],
        "Subject: logs\r\n\r\nx",
    );
    let id = queue_id(&reply);
    sink.wait_for(1, WAIT);
    let log = wait_until("both outcome lines", WAIT, || {
        let log = node.log();
        (log.matches("outcome").count() >= 2).then_some(log)
    });
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a log file");
    let received = log
        .lines()
        .find(|l| l.contains(" received") && l.contains(&id))
        .unwrap_or_else(|| panic!("no received line in\n{log}"));
    for want in [
        "from=<s@src.test>",
        "nrcpt=2",
        "client=127.0.0.1",
        "tenant=src.test",
        "tls=false",
        "size=",
    ] {
        assert!(received.contains(want), "{want} not in {received}");
    }
    let sent = log
        .lines()
        .find(|l| l.contains("outcome") && l.contains("to=<u@dst.test>"))
        .unwrap_or_else(|| panic!("no outcome line for u@dst.test in\n{log}"));
    for want in [
        &format!("id={id}") as &str,
        "relay=mx.dst.test[127.0.0.44]",
        "status=sent",
        "dsn=2.0.0",
        "delay=",
    ] {
        assert!(sent.contains(want), "{want} not in {sent}");
    }
    let bounced = log
        .lines()
        .find(|l| l.contains("outcome") && l.contains("to=<v@nowhere.test>"))
        .unwrap_or_else(|| panic!("no outcome line for v@nowhere.test in\n{log}"));
    assert!(bounced.contains("status=bounced"), "{bounced}");
    assert!(bounced.contains("relay=none"), "{bounced}");

    let events = Command::new(bin("batonctl"))
        .args([
            "--server",
            &format!("http://{}", node.admin),
            "--json",
            "events",
            "--kind",
            "received",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&events.stdout);
    assert!(text.contains(&id), "{text}");
    assert!(!text.contains("\"node\":0"), "{text}");
}
