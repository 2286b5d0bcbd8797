//! Asynchronous bounces and complaints end to end: a real batond with `[bounces]`
//! relaying to a baton-sink, and a second listener that trusts nobody (no relay
//! networks, no users) where the reports arrive, as at the bounce domain's MX.
//!
//! - A delivered message went out with MAIL FROM `b-TOKEN@bounces.relay.test` and an
//!   `X-Baton-Ref` header; a DSN (`Status: 5.1.1`) to that address gives a
//!   `bounced_async` event, a global suppression and a hard bounce on the tenant; the
//!   same address with one token character changed is refused at RCPT.
//! - An ARF report to the FBL address, naming the message by its `X-Baton-Ref`, gives a
//!   `complaint` event and a suppression for that tenant only.

use baton_tests::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const DOMAIN: &str = "bounces.relay.test";
const FBL: &str = "fbl@bounces.relay.test";

/// A node relaying to a sink at `sink_ip`, with `[bounces]` and a report listener.
fn setup(sink_ip: &str) -> (Node, Sink, SocketAddr) {
    let at: SocketAddr = format!("{sink_ip}:{}", free_port()).parse().expect("addr");
    let sink = Sink::start(at);
    let reports: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let node = Node::start(NodeOptions {
        smarthost: Some(at),
        tail: format!(
            "[bounces]\ndomain = \"{DOMAIN}\"\nfbl_address = \"{FBL}\"\n\
             [[smtp.listener]]\naddress = \"{reports}\"\nrelay_networks = []\n"
        ),
        ..Default::default()
    });
    wait_until("the bounce key", WAIT, || {
        node.log().contains("bounce token key made").then_some(())
    });
    (node, sink, reports)
}

/// Sends one message of tenant `from`'s domain (no AUTH) to `to`, and waits for the sink
/// to have it.
fn deliver(node: &Node, sink: &Sink, from: &str, to: &str) -> SinkMessage {
    let body = format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: hello\r\n\r\nHello.\r\n");
    let mut c = node.smtp();
    c.hello();
    let reply = c.send_mail(from, &[to], &body);
    assert!(reply.starts_with("250 "), "{reply}");
    wait_until("delivered to the sink", WAIT, || {
        sink.messages()
            .into_iter()
            .find(|m| m.rcpts.iter().any(|r| r == to))
    })
}

/// The reply to RCPT `to` after MAIL FROM `from` on a fresh session to `addr`.
fn rcpt_reply(addr: SocketAddr, from: &str, to: &str) -> String {
    let mut c = Smtp::connect(addr);
    c.hello();
    c.cmd(&format!("MAIL FROM:<{from}>"), "250");
    c.send_raw(format!("RCPT TO:<{to}>\r\n").as_bytes());
    let (_, text) = c.reply();
    text
}

/// `address`'s entry in `suppression list`, if any (the only one).
fn suppression(node: &Node, address: &str) -> Option<Value> {
    let list = ctl_json(node, &["suppression", "list"]);
    let mut found: Vec<Value> = list["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["address"] == address)
        .cloned()
        .collect();
    assert!(found.len() <= 1, "{list}");
    found.pop()
}

fn tenant(node: &Node, name: &str) -> Value {
    ctl_json(node, &["tenant", "show", name])["tenant"].clone()
}

/// A DSN from the receiving MTA, shaped like Postfix's, about `rcpt`.
fn dsn(to: &str, rcpt: &str, returned: &str) -> String {
    format!(
        "Return-Path: <>\r\n\
From: MAILER-DAEMON@mx.dst.test (Mail Delivery System)\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
To: {to}\r\n\
Auto-Submitted: auto-replied\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\
\tboundary=\"B1.1717408800/mx.dst.test\"\r\n\
\r\n\
This is a MIME-encapsulated message.\r\n\
\r\n\
--B1.1717408800/mx.dst.test\r\n\
Content-Description: Notification\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
Your message could not be delivered to one or more recipients.\r\n\
\r\n\
--B1.1717408800/mx.dst.test\r\n\
Content-Description: Delivery report\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.dst.test\r\n\
Arrival-Date: Tue,  3 Jun 2025 09:59:59 +0000 (UTC)\r\n\
\r\n\
Final-Recipient: rfc822; {rcpt}\r\n\
Original-Recipient: rfc822;{rcpt}\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Remote-MTA: dns; store.dst.test\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User\r\n\
\x20   unknown in local recipient table\r\n\
\r\n\
--B1.1717408800/mx.dst.test\r\n\
Content-Description: Undelivered Message Headers\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
{returned}\
--B1.1717408800/mx.dst.test--\r\n"
    )
}

/// An ARF report shaped like RFC 5965's example, `To:` redacted.
fn arf(reference: &str) -> String {
    format!(
        "From: <abuse@dst.test>\r\n\
Date: Thu, 8 Mar 2025 17:40:36 +0000\r\n\
Subject: FW: hello\r\n\
To: <{FBL}>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report;\r\n\
\x20    boundary=\"part1_13d.2e68ed54_boundary\"\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: text/plain; charset=\"US-ASCII\"\r\n\
Content-Transfer-Encoding: 7bit\r\n\
\r\n\
This is an email abuse report for an email message received from IP\r\n\
127.0.0.1 on Thu, 8 Mar 2025 14:00:00 +0000.\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: SomeGenerator/1.0\r\n\
Version: 1\r\n\
Original-Rcpt-To: <redacted@dst.test>\r\n\
Arrival-Date: Thu, 8 Mar 2025 14:00:00 +0000\r\n\
Reporting-MTA: dns; mail.dst.test\r\n\
Source-IP: 127.0.0.1\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: message/rfc822\r\n\
Content-Disposition: inline\r\n\
\r\n\
X-Baton-Ref: {reference}\r\n\
From: <news@t1.test>\r\n\
To: <redacted@dst.test>\r\n\
Subject: hello\r\n\
\r\n\
Hello.\r\n\
\r\n\
--part1_13d.2e68ed54_boundary--\r\n"
    )
}

/// The headers of a delivered message, up to its body.
fn headers_of(m: &SinkMessage) -> String {
    let end = m.data.find("\r\n\r\n").map_or(m.data.len(), |i| i + 2);
    m.data[..end].to_string()
}

#[test]
fn a_late_5_1_1_suppresses_the_address_and_counts_a_hard_bounce() {
    let (node, sink, reports) = setup("127.0.0.81");
    let m = deliver(&node, &sink, "news@t1.test", "gone@dst.test");
    // VERP: the bounce address, naming the message and its recipient.
    let (local, domain) = m.mail_from.rsplit_once('@').expect("an address");
    assert_eq!(domain, DOMAIN, "{}", m.mail_from);
    assert!(
        local.starts_with("b-") && local.len() == 47,
        "{}",
        m.mail_from
    );
    let reference = m.header("X-Baton-Ref").expect("X-Baton-Ref");
    assert!(
        reference.starts_with("v1.") && reference.len() == 48,
        "{reference}"
    );

    // Forged: one token character changed is refused at RCPT, as is any other local
    // part at the bounce domain; relaying stays closed on this listener.
    let last = local.chars().last().expect("a token");
    let flipped = format!(
        "{}{}@{DOMAIN}",
        &local[..local.len() - 1],
        if last == 'a' { 'b' } else { 'a' }
    );
    let forged = rcpt_reply(reports, "", &flipped);
    assert!(
        forged.starts_with("550 5.1.1") && forged.contains("unknown bounce address"),
        "{forged}"
    );
    let other = rcpt_reply(reports, "", &format!("postmaster-x@{DOMAIN}"));
    assert!(other.starts_with("550 5.1.1"), "{other}");
    let relay = rcpt_reply(reports, "", "someone@dst.test");
    assert!(relay.starts_with("554 5.7.1"), "{relay}");

    // The DSN, from outside relay_networks, without AUTH.
    let mut c = Smtp::connect(reports);
    c.hello();
    let report = dsn(&m.mail_from, "gone@dst.test", &headers_of(&m));
    let reply = c.send_mail("", &[&m.mail_from], &report);
    assert!(reply.starts_with("250 "), "{reply}");

    let e = wait_until("bounced_async", WAIT, || {
        events(&node, "bounced_async").into_iter().next()
    });
    assert_eq!(e["recipient"], "gone@dst.test", "{e}");
    assert_eq!(e["tenant"], "t1.test", "{e}");
    // Classified like a synchronous reply: a text rule or the code table.
    assert!(!e["rule"].as_str().unwrap_or("").is_empty(), "{e}");
    assert_eq!(e["detail"], "late bounce: bad_mailbox", "{e}");
    assert!(
        e["reply"]
            .as_str()
            .unwrap_or("")
            .starts_with("550 5.1.1 <gone@dst.test>"),
        "{e}"
    );
    let queued_as = m.header("Received").unwrap_or_default();
    assert!(
        queued_as.contains(e["message_id"].as_str().unwrap_or("?")),
        "{e} / {queued_as}"
    );
    // Suppressed for everyone, counted on the tenant.
    let entry = suppression(&node, "gone@dst.test").expect("a suppression");
    assert_eq!(entry["tenant"].as_str().unwrap_or(""), "", "{entry}");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("bounce (async)"),
        "{entry}"
    );
    let t1 = tenant(&node, "t1.test");
    assert_eq!(t1["hard_bounces"], 1, "{t1}");
    for from in ["news@t1.test", "news@t2.test"] {
        let r = rcpt_reply(node.smtp, from, "gone@dst.test");
        assert!(
            r.starts_with("550 5.1.1") && r.contains("suppressed"),
            "{r}"
        );
    }
    // Nothing was relayed or queued: the sink has the one message only.
    assert_eq!(sink.messages().len(), 1);
    assert!(
        node.metrics()
            .contains("baton_feedback_reports_total{kind=\"dsn\",result=\"bounced\"} 1")
    );
}

#[test]
fn an_arf_complaint_suppresses_the_address_for_that_tenant_only() {
    let (node, sink, reports) = setup("127.0.0.82");
    let m = deliver(&node, &sink, "news@t1.test", "fan@dst.test");
    let reference = m.header("X-Baton-Ref").expect("X-Baton-Ref");

    let mut c = Smtp::connect(reports);
    c.hello();
    let reply = c.send_mail("", &[FBL], &arf(&reference));
    assert!(reply.starts_with("250 "), "{reply}");

    let e = wait_until("complaint", WAIT, || {
        events(&node, "complaint").into_iter().next()
    });
    assert_eq!(e["recipient"], "fan@dst.test", "{e}");
    assert_eq!(e["tenant"], "t1.test", "{e}");
    let t1 = tenant(&node, "t1.test");
    assert_eq!(t1["complaints"], 1, "{t1}");
    let r = rcpt_reply(node.smtp, "news@t1.test", "fan@dst.test");
    assert!(r.starts_with("550 5.7.1"), "{r}");
    let r = rcpt_reply(node.smtp, "news@t2.test", "fan@dst.test");
    assert!(r.starts_with("250"), "{r}");
    // Listed for t1 only, not for everyone.
    let entry = suppression(&node, "fan@dst.test").expect("a suppression");
    assert_eq!(entry["tenant"], "t1.test", "{entry}");
}
