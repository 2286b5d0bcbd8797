//! ARF feedback reports (RFC 5965), parsed with mail-auth's
//! [`Feedback::parse_rfc5322`](mail_auth::report::Feedback::parse_rfc5322): what Baton
//! needs of one to count a complaint.

use crate::fields;
use mail_auth::report::{Feedback, FeedbackType};

/// A feedback report, reduced to what a complaint needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Feedback-Type`, lower case (`abuse`, `fraud`, `not-spam`, `virus`, ...).
    pub feedback_type: String,
    pub user_agent: Option<String>,
    /// `Original-Rcpt-To`, as an address.
    pub original_rcpt_to: Option<String>,
    /// `Original-Mail-From`, as an address.
    pub original_mail_from: Option<String>,
    /// The header section of the returned message (`message/rfc822` or
    /// `text/rfc822-headers`), if any.
    pub returned_headers: Option<String>,
}

impl Report {
    /// Types `abuse` and `fraud` are complaints; the rest are not counted.
    pub fn is_complaint(&self) -> bool {
        matches!(self.feedback_type.as_str(), "abuse" | "fraud")
    }
}

/// Parses `message` as an ARF report; `None` if it is not one.
pub fn parse(message: &[u8]) -> Option<Report> {
    let feedback = Feedback::parse_rfc5322(message).ok()?;
    let feedback_type = match feedback.feedback_type() {
        FeedbackType::Abuse => "abuse",
        FeedbackType::AuthFailure => "auth-failure",
        FeedbackType::Fraud => "fraud",
        FeedbackType::NotSpam => "not-spam",
        FeedbackType::Other => "other",
        FeedbackType::Virus => "virus",
    };
    let returned = feedback.message().or(feedback.headers()).map(|m| {
        let end = m
            .find("\r\n\r\n")
            .or_else(|| m.find("\n\n"))
            .unwrap_or(m.len());
        m[..end].to_string()
    });
    Some(Report {
        feedback_type: feedback_type.to_string(),
        user_agent: feedback.user_agent().map(str::to_string),
        original_rcpt_to: feedback.original_rcpt_to().and_then(fields::address),
        original_mail_from: feedback.original_mail_from().and_then(fields::address),
        returned_headers: returned,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Shaped like RFC 5965's example (and KumoMTA's rfc5965/1.eml), `To:` redacted.
    pub const ARF: &str = "From: <abusedesk@example.com>\r\n\
Date: Thu, 8 Mar 2005 17:40:36 EDT\r\n\
Subject: FW: Earn money\r\n\
To: <fbl@bounces.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report;\r\n\
\x20    boundary=\"part1_13d.2e68ed54_boundary\"\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: text/plain; charset=\"US-ASCII\"\r\n\
Content-Transfer-Encoding: 7bit\r\n\
\r\n\
This is an email abuse report for an email message received from IP\r\n\
127.0.0.1 on Thu, 8 Mar 2005 14:00:00 EDT.\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: SomeGenerator/1.0\r\n\
Version: 1\r\n\
Original-Mail-From: <b-abc@bounces.test>\r\n\
Original-Rcpt-To: <user@example.com>\r\n\
Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT\r\n\
Reporting-MTA: dns; mail.example.com\r\n\
Source-IP: 127.0.0.1\r\n\
\r\n\
--part1_13d.2e68ed54_boundary\r\n\
Content-Type: message/rfc822\r\n\
Content-Disposition: inline\r\n\
\r\n\
Return-Path: <b-abc@bounces.test>\r\n\
X-Baton-Ref: v1.abc\r\n\
From: <somespammer@example.net>\r\n\
To: <redacted@example.com>\r\n\
Subject: Earn money\r\n\
Message-ID: <8787KJKJ3K4J3K4J3K4J3.mail@example.net>\r\n\
Date: Thu, 02 Sep 2004 12:31:03 -0500\r\n\
\r\n\
Spam Spam Spam\r\n\
\r\n\
--part1_13d.2e68ed54_boundary--\r\n";

    #[test]
    fn rfc5965_example() {
        let r = parse(ARF.as_bytes()).unwrap();
        assert_eq!(r.feedback_type, "abuse");
        assert!(r.is_complaint());
        assert_eq!(r.original_rcpt_to.as_deref(), Some("user@example.com"));
        assert_eq!(r.original_mail_from.as_deref(), Some("b-abc@bounces.test"));
        assert_eq!(r.user_agent.as_deref(), Some("SomeGenerator/1.0"));
        let h = fields::header_section(r.returned_headers.as_deref().unwrap());
        assert_eq!(fields::get(&h, "x-baton-ref"), Some("v1.abc"));
        assert_eq!(fields::get(&h, "return-path"), Some("<b-abc@bounces.test>"));
    }

    #[test]
    fn other_types_and_non_reports() {
        let not_spam = ARF.replace("Feedback-Type: abuse", "Feedback-Type: not-spam");
        let r = parse(not_spam.as_bytes()).unwrap();
        assert_eq!(r.feedback_type, "not-spam");
        assert!(!r.is_complaint());
        let fraud = ARF.replace("Feedback-Type: abuse", "Feedback-Type: fraud");
        assert!(parse(fraud.as_bytes()).unwrap().is_complaint());
        assert_eq!(parse(b"Subject: hi\r\n\r\nplain mail\r\n"), None);
        assert_eq!(parse(b""), None);
        // Headers only (text/rfc822-headers) instead of the whole message.
        let headers_only = ARF.replace(
            "Content-Type: message/rfc822\r\nContent-Disposition: inline",
            "Content-Type: text/rfc822-headers",
        );
        let r = parse(headers_only.as_bytes()).unwrap();
        let h = fields::header_section(r.returned_headers.as_deref().unwrap());
        assert_eq!(fields::get(&h, "x-baton-ref"), Some("v1.abc"));
    }

    proptest! {
        #[test]
        fn any_input_never_panics(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&body);
        }

        #[test]
        fn any_cut_never_panics(at in 0usize..ARF.len()) {
            let _ = parse(&ARF.as_bytes()[..at]);
        }
    }
}
