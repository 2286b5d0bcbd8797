//! Delivery status notifications (RFC 3464 `multipart/report`).

use crate::date::rfc5322;
use baton_queue::{MessageMeta, NewMessage};

/// Why one recipient failed.
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    pub address: String,
    /// Enhanced status, e.g. `5.1.1`, or `4.4.7` for expiry.
    pub status: String,
    /// The remote MTA that answered, if one did.
    pub remote_mta: Option<String>,
    /// The remote's reply (`550 5.1.1 no such user`) or our own reason.
    pub diagnostic: String,
}

/// What the DSN reports on.
pub struct DsnInput<'a> {
    /// Our hostname: Reporting-MTA and the From: address's domain.
    pub reporting_mta: &'a str,
    /// The failed message's queue id.
    pub queue_id: &'a str,
    /// Where the DSN goes: the failed message's envelope sender.
    pub to: &'a str,
    pub arrival_unix: u64,
    pub now_unix: u64,
    pub recipients: &'a [FailedRecipient],
    /// The original message; its header section is attached.
    pub original: &'a [u8],
    /// A unique token for the Message-ID and MIME boundary.
    pub token: &'a str,
}

/// The header section of a message: everything up to the first empty line.
pub fn header_section(message: &[u8]) -> &[u8] {
    let mut i = 0;
    while i < message.len() {
        let line_end = message[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |p| i + p + 1);
        let line = &message[i..line_end];
        if line == b"\r\n" || line == b"\n" {
            return &message[..i];
        }
        i = line_end;
    }
    message
}

/// Builds the DSN message (headers and body, CRLF line endings).
pub fn build(input: &DsnInput<'_>) -> Vec<u8> {
    let boundary = format!("=_baton_{}", input.token);
    let expired = input.recipients.iter().all(|r| r.status == "4.4.7");
    let mut out = String::with_capacity(2048);
    let push = |out: &mut String, line: &str| {
        out.push_str(line);
        out.push_str("\r\n");
    };
    push(
        &mut out,
        &format!(
            "From: Mail Delivery System <MAILER-DAEMON@{}>",
            input.reporting_mta
        ),
    );
    push(&mut out, &format!("To: <{}>", input.to));
    push(&mut out, "Subject: Undelivered Mail Returned to Sender");
    push(&mut out, &format!("Date: {}", rfc5322(input.now_unix)));
    push(
        &mut out,
        &format!("Message-ID: <{}.dsn@{}>", input.token, input.reporting_mta),
    );
    push(&mut out, "Auto-Submitted: auto-replied");
    push(&mut out, "MIME-Version: 1.0");
    push(
        &mut out,
        &format!(
            "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""
        ),
    );
    push(&mut out, "");
    push(&mut out, "This is a MIME-encapsulated message.");
    push(&mut out, "");
    push(&mut out, &format!("--{boundary}"));
    push(&mut out, "Content-Type: text/plain; charset=us-ascii");
    push(&mut out, "");
    if expired {
        push(
            &mut out,
            &format!("This is the mail system at {}.", input.reporting_mta),
        );
        push(&mut out, "");
        push(
            &mut out,
            "Your message could not be delivered before it expired. It was",
        );
        push(
            &mut out,
            "retried until the time limit and has now been removed from the queue.",
        );
    } else {
        push(
            &mut out,
            &format!("This is the mail system at {}.", input.reporting_mta),
        );
        push(&mut out, "");
        push(
            &mut out,
            "Your message could not be delivered to one or more recipients.",
        );
        push(&mut out, "The receiving mail servers gave these reasons:");
    }
    push(&mut out, "");
    for r in input.recipients {
        push(
            &mut out,
            &format!("<{}>: {}", r.address, one_line(&r.diagnostic)),
        );
    }
    push(&mut out, "");
    push(&mut out, &format!("--{boundary}"));
    push(&mut out, "Content-Type: message/delivery-status");
    push(&mut out, "");
    push(
        &mut out,
        &format!("Reporting-MTA: dns; {}", input.reporting_mta),
    );
    push(&mut out, &format!("X-Baton-Queue-ID: {}", input.queue_id));
    push(
        &mut out,
        &format!("Arrival-Date: {}", rfc5322(input.arrival_unix)),
    );
    for r in input.recipients {
        push(&mut out, "");
        push(&mut out, &format!("Final-Recipient: rfc822; {}", r.address));
        push(&mut out, "Action: failed");
        push(&mut out, &format!("Status: {}", r.status));
        if let Some(mta) = &r.remote_mta {
            push(&mut out, &format!("Remote-MTA: dns; {mta}"));
        }
        push(
            &mut out,
            &format!("Diagnostic-Code: smtp; {}", one_line(&r.diagnostic)),
        );
        push(
            &mut out,
            &format!("Last-Attempt-Date: {}", rfc5322(input.now_unix)),
        );
    }
    push(&mut out, "");
    push(&mut out, &format!("--{boundary}"));
    push(&mut out, "Content-Type: text/rfc822-headers");
    push(&mut out, "");
    let mut bytes = out.into_bytes();
    let headers = header_section(input.original);
    bytes.extend_from_slice(headers);
    if !headers.ends_with(b"\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The bounce of the `failed` recipients of message `queue_id` to its sender, ready to
/// enqueue: from the null sender (so it cannot bounce itself), named `token`. Used for
/// delivery failures and for an operator's delete with `--dsn` alike.
pub fn bounce(
    hostname: &str,
    queue_id: &str,
    meta: &MessageMeta,
    failed: &[FailedRecipient],
    original: &[u8],
    now_ms: u64,
    token: String,
) -> NewMessage {
    let body = build(&DsnInput {
        reporting_mta: hostname,
        queue_id,
        to: &meta.sender,
        arrival_unix: meta.received_at_ms / 1000,
        now_unix: now_ms / 1000,
        recipients: failed,
        original,
        token: &token,
    });
    NewMessage {
        id: token,
        sender: String::new(),
        recipients: vec![meta.sender.clone()],
        // What is sent is the report with the original's header section: 8BITMIME only
        // if that has 8-bit bytes, whatever the original's body held.
        eight_bit: body.iter().any(|b| *b >= 0x80),
        body,
        received_at_ms: now_ms,
        smtputf8: meta.smtputf8,
    }
}

fn one_line(s: &str) -> String {
    s.split(['\r', '\n'])
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_has_report_parts_and_original_headers() {
        let original = b"Subject: hello\r\nFrom: a@src.test\r\n\r\nsecret body\r\n";
        let dsn = build(&DsnInput {
            reporting_mta: "relay.test",
            queue_id: "Q1",
            to: "a@src.test",
            arrival_unix: 0,
            now_unix: 60,
            recipients: &[FailedRecipient {
                address: "nobody@dst.test".into(),
                status: "5.1.1".into(),
                remote_mta: Some("mx.dst.test".into()),
                diagnostic: "550 5.1.1 no such user".into(),
            }],
            original,
            token: "tok",
        });
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("multipart/report; report-type=delivery-status"));
        assert!(text.contains("Final-Recipient: rfc822; nobody@dst.test"));
        assert!(text.contains("Status: 5.1.1"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"));
        assert!(text.contains("Subject: hello\r\nFrom: a@src.test\r\n"));
        assert!(!text.contains("secret body"));
        assert!(text.ends_with("--=_baton_tok--\r\n"));
    }

    fn meta(sender: &str) -> MessageMeta {
        MessageMeta {
            sender: sender.into(),
            recipients: vec!["nobody@dst.test".into()],
            received_at_ms: 5_000,
            size: 10,
            eight_bit: true,
            smtputf8: false,
            pending_domains: 1,
        }
    }

    #[test]
    fn a_bounce_goes_from_the_null_sender_to_the_sender_and_is_8bit_only_if_it_carries_8bit() {
        let failed = [FailedRecipient {
            address: "nobody@dst.test".into(),
            status: "5.1.1".into(),
            remote_mta: None,
            diagnostic: "550 5.1.1 no such user".into(),
        }];
        // An 8-bit body, plain headers: the report itself is 7-bit.
        let original = b"Subject: hi\r\n\r\nd\xc3\xa9j\xc3\xa0\r\n";
        let b = bounce(
            "relay.test",
            "Q1",
            &meta("a@src.test"),
            &failed,
            original,
            9_000,
            "T".into(),
        );
        assert_eq!(b.id, "T");
        assert_eq!(b.sender, "");
        assert_eq!(b.recipients, ["a@src.test"]);
        assert_eq!(b.received_at_ms, 9_000);
        assert!(!b.eight_bit);
        // 8-bit header bytes travel in the report's text/rfc822-headers part.
        let original = b"Subject: d\xc3\xa9j\xc3\xa0\r\n\r\nbody\r\n";
        let b = bounce(
            "relay.test",
            "Q1",
            &meta("a@src.test"),
            &failed,
            original,
            9_000,
            "T".into(),
        );
        assert!(b.eight_bit);
        assert!(
            String::from_utf8_lossy(&b.body)
                .contains("Arrival-Date: Thu, 01 Jan 1970 00:00:05 +0000")
        );
    }
}
