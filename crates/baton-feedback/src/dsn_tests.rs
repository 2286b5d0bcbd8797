use super::*;
use proptest::prelude::*;

/// Shaped like Postfix's bounce (RFC 3464, with the returned message).
const POSTFIX: &str = "Return-Path: <>\r\n\
Received: by mx.receiver.test (Postfix)\r\n\
Date: Tue, 3 Jun 2025 10:00:00 +0000 (UTC)\r\n\
From: MAILER-DAEMON@mx.receiver.test (Mail Delivery System)\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
To: b-abc@bounces.test\r\n\
Auto-Submitted: auto-replied\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\
\tboundary=\"ABC123.1717408800/mx.receiver.test\"\r\n\
Message-Id: <20250603100000.ABC123@mx.receiver.test>\r\n\
\r\n\
This is a MIME-encapsulated message.\r\n\
\r\n\
--ABC123.1717408800/mx.receiver.test\r\n\
Content-Description: Notification\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
I'm sorry to have to inform you that your message could not\r\n\
be delivered to one or more recipients.\r\n\
\r\n\
--ABC123.1717408800/mx.receiver.test\r\n\
Content-Description: Delivery report\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.receiver.test\r\n\
X-Postfix-Queue-ID: ABC123\r\n\
Original-Envelope-Id: 01ARZ3NDEKTSV4RRFFQ69G5FAV\r\n\
Arrival-Date: Tue,  3 Jun 2025 09:59:59 +0000 (UTC)\r\n\
\r\n\
Final-Recipient: rfc822; gone@receiver.test\r\n\
Original-Recipient: rfc822;Gone@receiver.test\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Remote-MTA: dns; store.receiver.test\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <gone@receiver.test>: Recipient address\r\n\
\x20   rejected: User unknown in local recipient table\r\n\
\r\n\
--ABC123.1717408800/mx.receiver.test\r\n\
Content-Description: Undelivered Message\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
X-Baton-Ref: v1.abcdef\r\n\
Return-Path: <b-abcdef@bounces.test>\r\n\
From: app@sender.test\r\n\
Subject: hello\r\n\
\r\n\
body\r\n\
\r\n\
--ABC123.1717408800/mx.receiver.test--\r\n";

#[test]
fn postfix_bounce() {
    let r = parse(POSTFIX.as_bytes()).unwrap();
    assert_eq!(
        r.original_envelope_id.as_deref(),
        Some("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    );
    assert_eq!(r.reporting_mta.as_deref(), Some("mx.receiver.test"));
    assert_eq!(r.recipients.len(), 1);
    let rc = &r.recipients[0];
    assert_eq!(rc.action, Action::Failed);
    assert_eq!(rc.status.as_deref(), Some("5.1.1"));
    assert_eq!(rc.final_recipient.as_deref(), Some("gone@receiver.test"));
    assert_eq!(rc.recipient(), Some("Gone@receiver.test"));
    assert_eq!(
        rc.reply(),
        "550 5.1.1 <gone@receiver.test>: Recipient address rejected: User unknown in local recipient table"
    );
    let headers = r.returned_headers.unwrap();
    let h = crate::fields::header_section(&headers);
    assert_eq!(crate::fields::get(&h, "X-Baton-Ref"), Some("v1.abcdef"));
    assert!(!headers.contains("body"));
}

fn report(status_part: &str, content_type: &str) -> String {
    format!(
        "From: postmaster@x.test\r\nMIME-Version: 1.0\r\n\
Content-Type: {content_type}; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain\r\n\r\nsorry\r\n\
--b1\r\nContent-Type: message/delivery-status\r\n\r\n{status_part}\r\n--b1--\r\n"
    )
}

#[test]
fn variants_real_mtas_send() {
    // No per-message group, no report-type, lower-case names, several recipients,
    // a status with a comment, a diagnostic that is not an SMTP reply.
    let text = "final-recipient: RFC822; <a@x.test>\r\naction: FAILED\r\nstatus: 5.2.1 (mailbox disabled)\r\n\r\n\r\n\
Final-Recipient: rfc822;b@x.test\r\nAction: delayed\r\nStatus: 4.4.7\r\nDiagnostic-Code: X-Unix; timed out\r\n\r\n\
Final-Recipient: rfc822;c@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp;550 No such user\r\n";
    let r = parse(report(text, "multipart/report").as_bytes()).unwrap();
    assert_eq!(r.recipients.len(), 3);
    assert_eq!(r.recipients[0].recipient(), Some("a@x.test"));
    assert_eq!(r.recipients[0].status.as_deref(), Some("5.2.1"));
    assert_eq!(r.recipients[0].reply(), "550 5.2.1");
    assert_eq!(r.recipients[1].action, Action::Delayed);
    assert_eq!(r.recipients[1].reply(), "450 4.4.7 timed out");
    assert_eq!(r.recipients[2].reply(), "550 5.1.1 No such user");
    assert_eq!(r.returned_headers, None);
    // Nested in a multipart/mixed, as some gateways do.
    let nested = String::from(
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
--outer\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822; n@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b1--\r\n\
--outer--\r\n",
    );
    let r = parse(nested.as_bytes()).unwrap();
    assert_eq!(r.recipients[0].recipient(), Some("n@x.test"));
    // LF-only line ends.
    let lf = report(
        "Reporting-MTA: dns; m\n\nFinal-Recipient: rfc822; l@x.test\nAction: failed\nStatus: 5.1.1\n",
        "multipart/report",
    )
    .replace("\r\n", "\n");
    assert_eq!(
        parse(lf.as_bytes()).unwrap().recipients[0].recipient(),
        Some("l@x.test")
    );
}

#[test]
fn malformed_reports_are_refused_not_panicked_on() {
    assert!(parse(b"").is_err());
    assert_eq!(
        parse(b"Subject: out of office\r\n\r\nI am away.\r\n"),
        Err(NotDsn::NoStatusPart)
    );
    assert_eq!(
        parse(report("Reporting-MTA: dns; m\r\n", "multipart/report").as_bytes()),
        Err(NotDsn::NoRecipients)
    );
    // A bad status and address are dropped, the recipient group is kept.
    let r = parse(
        report(
            "Final-Recipient: x400; nobody\r\nAction: failed\r\nStatus: 9.9\r\n",
            "multipart/report",
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.recipients[0].recipient(), None);
    assert_eq!(r.recipients[0].status, None);
    assert_eq!(r.recipients[0].reply(), "550 5.0.0");
    // Unterminated multipart, binary junk.
    let cut = &POSTFIX.as_bytes()[..POSTFIX.len() / 2];
    let _ = parse(cut);
    let _ = parse(&[0xff, 0xfe, b'\r', b'\n', 0, 1, 2]);
}

#[test]
fn status_codes() {
    assert_eq!(status_code("5.1.1").as_deref(), Some("5.1.1"));
    assert_eq!(status_code("4.7.650").as_deref(), Some("4.7.650"));
    for bad in ["5.1", "6.1.1", "5.1.1.1", "5.a.1", "5..1", "5.1234.1", ""] {
        assert_eq!(status_code(bad), None, "{bad}");
    }
}

proptest! {
    #[test]
    fn any_input_never_panics(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&body);
    }

    #[test]
    fn any_status_part_never_panics(part in "[ -~\r\n\t]{0,400}") {
        let _ = parse(report(&part, "multipart/report").as_bytes());
        let _ = crate::fields::groups(&part);
        for g in crate::fields::groups(&part) {
            let _ = recipient(&g).reply();
        }
    }
}
