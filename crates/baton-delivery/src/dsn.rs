//! Delivery status notifications (RFC 3464 `multipart/report`).

use crate::date::rfc5322;

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
}
