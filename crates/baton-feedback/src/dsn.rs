//! RFC 3464 delivery status notifications: the `message/delivery-status` part of a
//! `multipart/report` (report-type `delivery-status`), parsed by Baton itself.
//!
//! Tolerant of what real MTAs send: the report may be nested in another multipart; the
//! `report-type` parameter may be missing; `message/global-delivery-status` (RFC 6533)
//! and `text/delivery-status` are read too; the per-message group may be missing, blank
//! lines may be doubled, values may be folded and carry comments.

use crate::fields::{self, Group};
use mail_parser::{MessageParser, MimeHeaders, PartType};

/// A recipient's `Action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
    /// Anything else, as written (lower-cased).
    Other(String),
}

impl Action {
    fn parse(value: &str) -> Action {
        let word = value
            .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        match word.as_str() {
            "failed" => Action::Failed,
            "delayed" => Action::Delayed,
            "delivered" => Action::Delivered,
            "relayed" => Action::Relayed,
            "expanded" => Action::Expanded,
            _ => Action::Other(word),
        }
    }
}

/// One recipient's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    pub action: Action,
    /// The enhanced status code (`5.1.1`), if well formed.
    pub status: Option<String>,
    /// `Diagnostic-Code`, its type (`smtp;`) stripped.
    pub diagnostic: Option<String>,
    pub final_recipient: Option<String>,
    pub original_recipient: Option<String>,
}

impl RecipientStatus {
    /// The recipient the report is about: `Original-Recipient`, else `Final-Recipient`.
    pub fn recipient(&self) -> Option<&str> {
        self.original_recipient
            .as_deref()
            .or(self.final_recipient.as_deref())
    }

    /// The remote's answer as a reply line for the classifier: `Diagnostic-Code` when it
    /// is an SMTP reply (with `Status` added if it has no enhanced code), else
    /// `"550 5.1.1 <diagnostic text>"` built from `Status`.
    pub fn reply(&self) -> String {
        let diag = self.diagnostic.as_deref().unwrap_or("").trim();
        let starts_with_code = diag.len() >= 3
            && diag.as_bytes()[..3].iter().all(u8::is_ascii_digit)
            && diag
                .as_bytes()
                .get(3)
                .is_none_or(|&c| c == b' ' || c == b'-');
        if starts_with_code {
            let rest = diag[3..].trim_start_matches(['-', ' ']);
            let has_enhanced = rest
                .split_whitespace()
                .next()
                .is_some_and(|w| status_code(w).is_some());
            return match (&self.status, has_enhanced) {
                (Some(s), false) => format!("{} {s} {rest}", &diag[..3]),
                _ => diag.to_string(),
            };
        }
        let status = self.status.as_deref().unwrap_or(match self.action {
            Action::Delayed => "4.0.0",
            _ => "5.0.0",
        });
        let code = if status.starts_with('4') { 450 } else { 550 };
        format!("{code} {status} {diag}").trim_end().to_string()
    }
}

/// A parsed delivery status notification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub original_envelope_id: Option<String>,
    pub reporting_mta: Option<String>,
    pub recipients: Vec<RecipientStatus>,
    /// The header section of the returned message (`message/rfc822` or
    /// `text/rfc822-headers`), if the report has one.
    pub returned_headers: Option<String>,
}

/// Why a message is not a delivery status notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotDsn {
    /// Not a MIME message at all.
    Unparsable,
    /// No `message/delivery-status` part.
    NoStatusPart,
    /// The status part names no recipient.
    NoRecipients,
}

impl std::fmt::Display for NotDsn {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            NotDsn::Unparsable => "not a MIME message",
            NotDsn::NoStatusPart => "no message/delivery-status part",
            NotDsn::NoRecipients => "the delivery status names no recipient",
        })
    }
}

/// `5.1.1` (or `5.1.1` with trailing text stripped by the caller) if well formed.
fn status_code(word: &str) -> Option<String> {
    let word = word.trim_end_matches([',', ';', ')']);
    let mut parts = word.split('.');
    let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = parts.next().is_none()
        && matches!(class, "2" | "4" | "5")
        && (1..=3).contains(&subject.len())
        && (1..=3).contains(&detail.len())
        && subject
            .bytes()
            .chain(detail.bytes())
            .all(|c| c.is_ascii_digit());
    ok.then(|| word.to_string())
}

/// Parses `message` as a delivery status notification.
pub fn parse(message: &[u8]) -> Result<DeliveryReport, NotDsn> {
    let parsed = MessageParser::new()
        .parse(message)
        .ok_or(NotDsn::Unparsable)?;
    let mut status_text: Option<String> = None;
    let mut returned: Option<String> = None;
    for part in &parsed.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        let (ty, sub) = (
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or("").to_ascii_lowercase(),
        );
        match (ty.as_str(), sub.as_str()) {
            ("message", "delivery-status" | "global-delivery-status")
            | ("text", "delivery-status")
                if status_text.is_none() =>
            {
                status_text = Some(String::from_utf8_lossy(part.contents()).into_owned());
            }
            ("message", "rfc822" | "global") | ("text", "rfc822-headers") if returned.is_none() => {
                let raw = match &part.body {
                    PartType::Message(m) => m.raw_message(),
                    _ => part.contents(),
                };
                returned = Some(String::from_utf8_lossy(raw).into_owned());
            }
            _ => {}
        }
    }
    let text = status_text.ok_or(NotDsn::NoStatusPart)?;
    let mut report = DeliveryReport {
        returned_headers: returned.map(|r| {
            let end = r
                .find("\r\n\r\n")
                .or_else(|| r.find("\n\n"))
                .unwrap_or(r.len());
            r[..end].to_string()
        }),
        ..DeliveryReport::default()
    };
    for group in fields::groups(&text) {
        if is_recipient_group(&group) {
            report.recipients.push(recipient(&group));
            continue;
        }
        if report.original_envelope_id.is_none() {
            report.original_envelope_id =
                fields::get(&group, "Original-Envelope-Id").map(str::to_string);
        }
        if report.reporting_mta.is_none() {
            report.reporting_mta = fields::get(&group, "Reporting-MTA").map(|v| {
                v.split_once(';')
                    .map_or(v, |(_, host)| host)
                    .trim()
                    .to_string()
            });
        }
    }
    if report.recipients.is_empty() {
        return Err(NotDsn::NoRecipients);
    }
    Ok(report)
}

fn is_recipient_group(group: &Group) -> bool {
    ["Final-Recipient", "Original-Recipient", "Action"]
        .iter()
        .any(|n| fields::get(group, n).is_some())
}

fn recipient(group: &Group) -> RecipientStatus {
    let diagnostic = fields::get(group, "Diagnostic-Code").map(|v| {
        v.split_once(';')
            .map_or(v, |(_, text)| text)
            .trim()
            .to_string()
    });
    RecipientStatus {
        action: Action::parse(fields::get(group, "Action").unwrap_or("")),
        status: fields::get(group, "Status")
            .and_then(|v| v.split_whitespace().next())
            .and_then(status_code),
        diagnostic,
        final_recipient: fields::get(group, "Final-Recipient").and_then(fields::address),
        original_recipient: fields::get(group, "Original-Recipient").and_then(fields::address),
    }
}

#[cfg(test)]
#[path = "dsn_tests.rs"]
mod tests;
