//! Every reply Baton itself sends, defined once: code, enhanced code and text. Everything
//! else refers to these by name.
//!
//! - the session engine's replies ([`crate::server`]);
//! - command syntax errors ([`crate::command`]);
//! - what the node's ingress answers outside the engine: connection limits, draining,
//!   the suppression list, the queue's commit;
//! - outcomes Baton decides itself when delivering (a refusal before sending, an expired
//!   message, a suppressed recipient, an operator's delete): they are recorded in events
//!   and delivery status notifications like a remote server's reply.
//!
//! A test checks that each reply's code and enhanced code agree in class.

use crate::address::AddressError;
use crate::data::DataError;
use crate::reply::Reply;

// ---------------------------------------------------------------- session

/// The greeting: `220 <host> <banner>`.
pub fn greeting(host: &str, banner: &str) -> Reply {
    Reply::new(220, "", format!("{host} {banner}").trim_end())
}
/// HELO (`lines` = just the host) or EHLO (the host, then the extensions).
pub fn ehlo(lines: Vec<String>) -> Reply {
    Reply::multiline(250, "", lines)
}

/// `250 2.0.0 Ok`: RSET, NOOP.
pub fn ok() -> Reply {
    Reply::new(250, "2.0.0", "Ok")
}
/// MAIL accepted.
pub fn mail_ok() -> Reply {
    Reply::new(250, "2.1.0", "Ok")
}
/// RCPT accepted.
pub fn rcpt_ok() -> Reply {
    Reply::new(250, "2.1.5", "Ok")
}
/// The message is committed by a quorum and flushed.
pub fn queued(id: &str) -> Reply {
    Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
}
/// A BDAT chunk received.
pub fn bdat_ok(n: u64) -> Reply {
    Reply::new(250, "2.0.0", format!("{n} bytes received"))
}
/// Go ahead with DATA.
pub fn start_data() -> Reply {
    Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")
}
/// VRFY is not answered.
pub fn vrfy() -> Reply {
    Reply::new(252, "2.1.5", "Cannot VRFY user, but will accept message")
}
/// HELP.
pub fn help() -> Reply {
    Reply::new(
        214,
        "2.0.0",
        "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
    )
}
/// QUIT.
pub fn bye() -> Reply {
    Reply::new(221, "2.0.0", "Bye")
}
/// Go ahead with the TLS handshake.
pub fn ready_tls() -> Reply {
    Reply::new(220, "2.0.0", "Ready to start TLS")
}
/// STARTTLS without a certificate.
pub fn tls_unavailable() -> Reply {
    Reply::new(502, "5.5.1", "Error: STARTTLS not available")
}
/// STARTTLS inside TLS.
pub fn tls_active() -> Reply {
    Reply::new(503, "5.5.1", "Error: TLS already active")
}
/// A command line or DATA slower than its deadline.
pub fn timeout(host: &str) -> Reply {
    Reply::new(421, "4.4.2", format!("{host} Error: timeout exceeded"))
}
/// Too many bad commands or refused recipients: the session closes.
pub fn too_many_errors(host: &str) -> Reply {
    Reply::new(421, "4.7.0", format!("{host} Error: too many errors"))
}
/// More pipelined input than the session buffers.
pub fn too_much_input(host: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{host} Error: too much pipelined input"),
    )
}
/// A command line over 1,000 bytes.
pub fn line_too_long() -> Reply {
    Reply::new(500, "5.5.6", "Line too long")
}
/// A command before HELO/EHLO.
pub fn need_helo() -> Reply {
    Reply::new(503, "5.5.1", "Error: send HELO/EHLO first")
}
/// A command that needs EHLO after HELO.
pub fn need_ehlo() -> Reply {
    Reply::new(503, "5.5.1", "Error: send EHLO first")
}
/// MAIL inside a transaction.
pub fn nested_mail() -> Reply {
    Reply::new(503, "5.5.1", "Error: nested MAIL command")
}
/// RCPT or DATA before MAIL.
pub fn need_mail() -> Reply {
    Reply::new(503, "5.5.1", "Error: need MAIL command")
}
/// DATA or BDAT with no accepted recipient.
pub fn no_rcpts() -> Reply {
    Reply::new(554, "5.5.1", "Error: no valid recipients")
}
/// DATA after BDAT, or BDAT after DATA.
pub fn bdat_data_mixed() -> Reply {
    Reply::new(503, "5.5.1", "Error: DATA and BDAT cannot be mixed")
}
/// RCPT after a BDAT chunk.
pub fn rcpt_after_bdat() -> Reply {
    Reply::new(503, "5.5.1", "Error: RCPT after BDAT")
}
/// A submission listener without AUTH.
pub fn auth_required() -> Reply {
    Reply::new(530, "5.7.0", "Authentication required")
}
/// A recipient outside our domains from a client that may not relay.
pub fn relay_denied() -> Reply {
    Reply::new(554, "5.7.1", "Relaying denied")
}
/// A recipient at the local (bounce) domain after relay recipients, or the reverse:
/// the client sends the rest in another transaction.
pub fn local_mixed(domain: &str) -> Reply {
    Reply::new(
        452,
        "4.5.3",
        format!("Recipients at {domain} and elsewhere need separate transactions"),
    )
}
/// Over `smtp.max_recipients`.
pub fn too_many_rcpts() -> Reply {
    Reply::new(452, "4.5.3", "Too many recipients")
}
/// SIZE or body over `smtp.max_message_size`.
pub fn size_exceeded() -> Reply {
    Reply::new(
        552,
        "5.3.4",
        "Message size exceeds fixed maximum message size",
    )
}
/// BODY=BINARYMIME.
pub fn binarymime() -> Reply {
    Reply::new(555, "5.5.4", "BODY=BINARYMIME not supported")
}
/// A non-ASCII address without SMTPUTF8.
pub fn need_smtputf8() -> Reply {
    Reply::new(
        553,
        "5.6.7",
        "Non-ASCII address requires the SMTPUTF8 parameter",
    )
}
/// A message body refused at the end of DATA/BDAT.
pub fn data_error(e: DataError) -> Reply {
    match e {
        DataError::TooLarge => size_exceeded(),
        DataError::BareLineEnding => Reply::new(
            550,
            "5.6.0",
            "Bare CR or LF not allowed, lines must end with CRLF (RFC 5321 2.3.8)",
        ),
        DataError::Nul => Reply::new(
            550,
            "5.6.0",
            "NUL characters not allowed in a message (RFC 5322 2.3)",
        ),
        DataError::LineTooLong => {
            Reply::new(550, "5.6.0", "Line too long (RFC 5321 limit is 1000 bytes)")
        }
    }
}

/// An authenticated user's envelope sender outside its `allowed_from`.
pub fn sender_not_allowed(domain: &str) -> Reply {
    Reply::new(
        550,
        "5.7.1",
        format!("Sender domain {domain} not allowed for this user"),
    )
}
/// An authenticated user's `From:` header outside its `allowed_from`.
pub fn from_header_not_allowed(domain: &str) -> Reply {
    Reply::new(
        550,
        "5.7.1",
        format!("From: header domain {domain} not allowed for this user"),
    )
}
/// An authenticated user's `From:` header that cannot be checked.
pub fn from_header_unusable(e: crate::header::FromError) -> Reply {
    Reply::new(550, "5.7.1", format!("Message refused: {e}"))
}

// ---------------------------------------------------------------- AUTH
/// AUTH succeeded.
pub fn auth_ok() -> Reply {
    Reply::new(235, "2.7.0", "Authentication succeeded")
}
/// AUTH with bad credentials.
pub fn auth_failed() -> Reply {
    Reply::new(535, "5.7.8", "Authentication credentials invalid")
}
/// Too many AUTH failures from this client address, across connections.
pub fn auth_throttled(host: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!(
            "{host} Error: too many authentication failures from your address, try again later"
        ),
    )
}
/// AUTH where no users are configured.
pub fn auth_disabled() -> Reply {
    Reply::new(503, "5.5.1", "Error: authentication not enabled")
}
/// A second AUTH.
pub fn already_authenticated() -> Reply {
    Reply::new(503, "5.5.1", "Error: already authenticated")
}
/// AUTH inside a transaction.
pub fn auth_in_txn() -> Reply {
    Reply::new(503, "5.5.1", "Error: MAIL transaction in progress")
}
/// AUTH before TLS from outside the relay networks.
pub fn encryption_required() -> Reply {
    Reply::new(
        538,
        "5.7.11",
        "Encryption required for requested authentication mechanism",
    )
}
/// An AUTH mechanism we do not offer.
pub fn unknown_mechanism() -> Reply {
    Reply::new(504, "5.5.4", "Unrecognized authentication type")
}
/// The client cancelled AUTH (`*`).
pub fn auth_cancelled() -> Reply {
    Reply::new(501, "5.7.0", "Authentication cancelled")
}
/// AUTH data that is not base64.
pub fn bad_base64() -> Reply {
    Reply::new(501, "5.5.2", "Invalid base64 data")
}
/// AUTH data that does not decode to credentials.
pub fn bad_auth_data() -> Reply {
    Reply::new(501, "5.5.2", "Invalid authentication data")
}
/// An AUTH challenge.
pub fn challenge(text: &str) -> Reply {
    Reply::new(334, "", text)
}

// ---------------------------------------------------------------- command syntax

/// A command whose arguments do not parse.
pub fn syntax(text: &str) -> Reply {
    Reply::new(501, "5.5.2", format!("Syntax error: {text}"))
}
/// A command line that is not UTF-8.
pub fn bad_utf8() -> Reply {
    Reply::new(500, "5.5.2", "Syntax error: invalid UTF-8")
}
/// A command line with a bare CR, LF or NUL.
pub fn bad_character() -> Reply {
    Reply::new(500, "5.5.2", "Syntax error: invalid character")
}
/// HELO or EHLO without a host name.
pub fn helo_syntax(verb: &str) -> Reply {
    Reply::new(501, "5.5.2", format!("Syntax: {verb} hostname"))
}
/// An unknown verb.
pub fn unknown_command() -> Reply {
    Reply::new(500, "5.5.1", "Error: command not recognized")
}
/// A MAIL or RCPT parameter we do not support.
pub fn unsupported_option(name: &str) -> Reply {
    Reply::new(
        555,
        "5.5.4",
        format!(
            "Unsupported option: {}",
            name.chars().take(32).collect::<String>()
        ),
    )
}
/// A sender (MAIL) or recipient (RCPT) address that does not parse.
pub fn bad_address(e: AddressError, sender: bool) -> Reply {
    let (enhanced, who) = if sender {
        ("5.1.7", "sender")
    } else {
        ("5.1.3", "recipient")
    };
    Reply::new(501, enhanced, format!("Bad {who} address syntax: {e}"))
}

// ---------------------------------------------------------------- ingress

/// Over `smtp.max_connections`: said at connect, then the connection closes.
pub fn too_many_connections(host: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{host} Too many connections, try again later"),
    )
}
/// Over `smtp.max_connections_per_ip`.
pub fn too_many_from_address(host: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{host} Too many connections from your address"),
    )
}
/// The node does not accept mail now (no leader known, catching up).
pub fn not_accepting(host: &str) -> Reply {
    Reply::new(
        421,
        "4.3.2",
        format!("{host} Service not available, try again later"),
    )
}
/// The node is draining: an idle session is told to come back.
pub fn shutting_down(host: &str) -> Reply {
    Reply::new(
        421,
        "4.3.2",
        format!("{host} Service shutting down, try again later"),
    )
}
/// A recipient on the global suppression list, at RCPT.
pub fn suppressed(address: &str) -> Reply {
    Reply::new(
        550,
        "5.1.1",
        format!("<{address}>: recipient address suppressed"),
    )
}
/// A recipient suppressed for this tenant's mail only (a complaint, an unsubscribe, an
/// operator), at RCPT.
pub fn suppressed_for_sender(address: &str) -> Reply {
    Reply::new(
        550,
        "5.7.1",
        format!("<{address}>: recipient suppressed for this sender"),
    )
}
/// `signing.require_dkim_alignment = "reject"` and no DKIM key may sign for the message's
/// `From:` domain (`what`: the domain, or why there is none), at the end of DATA.
pub fn no_aligned_dkim_key(what: &str) -> Reply {
    let what = what.replace(|c: char| c.is_control(), " ");
    Reply::new(
        550,
        "5.7.1",
        format!("no DKIM key aligned with From domain {what}"),
    )
}
/// The sender's tenant is paused (its bounce or complaint rate, or an operator), at MAIL.
/// Control characters in the names are shown as spaces: the reply stays one line.
pub fn tenant_paused(tenant: &str, reason: &str) -> Reply {
    let clean = |s: &str| s.replace(|c: char| c.is_control(), " ");
    Reply::new(
        450,
        "4.7.1",
        format!(
            "Sending paused for tenant {}: {}",
            clean(tenant),
            clean(reason)
        ),
    )
}
/// The suppression list could not be read: the recipient is not taken (at RCPT) or not
/// sent to (in delivery) now.
pub fn suppression_unreadable() -> Reply {
    Reply::new(
        451,
        "4.3.0",
        "local error reading the suppression list; try again later",
    )
}
/// Too many message bytes wait for their commit: nothing was handed over.
pub fn queue_busy() -> Reply {
    Reply::new(451, "4.3.0", "Queue busy, try again later")
}
/// The queue refused the message (no quorum, no leader): nothing was stored.
pub fn queue_unavailable() -> Reply {
    Reply::new(451, "4.3.0", "Queue unavailable, try again later")
}
/// The queue's storage failed on this node: nothing was stored.
pub fn queue_failed() -> Reply {
    Reply::new(451, "4.3.0", "Local error in processing, try again later")
}

// ---------------------------------------------------------------- outcomes decided locally

/// The remote server does not offer SMTPUTF8 and the message needs it.
pub fn remote_lacks_smtputf8() -> Reply {
    Reply::new(553, "5.6.7", "Remote server does not support SMTPUTF8")
}
/// The message is over the remote server's SIZE.
pub fn remote_size_exceeded() -> Reply {
    Reply::new(
        552,
        "5.3.4",
        "Message size exceeds remote server's fixed maximum message size",
    )
}
/// A transaction with no recipient left to send to.
pub fn no_recipients() -> Reply {
    Reply::new(554, "5.5.1", "No recipients")
}
/// A recipient the remote never answered.
pub fn no_rcpt_reply() -> Reply {
    Reply::new(451, "4.4.0", "No reply to RCPT")
}
/// A queued recipient that does not parse as an address.
pub fn bad_recipient(e: impl std::fmt::Display) -> Reply {
    Reply::new(553, "5.1.3", format!("bad recipient address: {e}"))
}
/// Recipients skipped because they are on the suppression list.
pub fn recipient_suppressed() -> Reply {
    Reply::new(550, "5.1.1", "recipient on the suppression list")
}
/// A message older than `delivery.max_age`.
pub fn expired(attempts: u32, last_reply: Option<&str>) -> Reply {
    Reply::new(
        451,
        "4.4.7",
        format!(
            "delivery time expired after {attempts} attempts; last reply: {}",
            last_reply.unwrap_or("none")
        ),
    )
}
/// A message whose stored sender does not parse: it is held, not sent with another
/// sender, until an operator retries or deletes it.
pub fn sender_unparsable(sender: &str) -> Reply {
    Reply::new(
        451,
        "4.1.7",
        format!(
            "stored sender {sender:?} does not parse; held until an operator retries or deletes the message"
        ),
    )
}
/// A message an operator deleted with `--dsn`.
pub fn deleted_by_operator() -> Reply {
    Reply::new(
        550,
        "5.0.0",
        "deleted from the queue by the relay's operator",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reply of the table, with the arguments a test can give.
    fn all() -> Vec<Reply> {
        let e = crate::address::parse_forward_path("<@>").unwrap_err();
        vec![
            greeting("h", "ESMTP Baton"),
            ehlo(vec!["h".into()]),
            ok(),
            mail_ok(),
            rcpt_ok(),
            queued("ID"),
            bdat_ok(1),
            start_data(),
            vrfy(),
            help(),
            bye(),
            ready_tls(),
            tls_unavailable(),
            tls_active(),
            timeout("h"),
            too_many_errors("h"),
            too_much_input("h"),
            line_too_long(),
            need_helo(),
            need_ehlo(),
            nested_mail(),
            need_mail(),
            no_rcpts(),
            bdat_data_mixed(),
            rcpt_after_bdat(),
            auth_required(),
            relay_denied(),
            too_many_rcpts(),
            size_exceeded(),
            binarymime(),
            need_smtputf8(),
            data_error(DataError::TooLarge),
            data_error(DataError::BareLineEnding),
            data_error(DataError::LineTooLong),
            data_error(DataError::Nul),
            sender_not_allowed("x"),
            from_header_not_allowed("x"),
            from_header_unusable(crate::header::FromError::Several),
            auth_throttled("h"),
            auth_ok(),
            auth_failed(),
            auth_disabled(),
            already_authenticated(),
            auth_in_txn(),
            encryption_required(),
            unknown_mechanism(),
            auth_cancelled(),
            bad_base64(),
            bad_auth_data(),
            challenge(""),
            syntax("x"),
            bad_utf8(),
            bad_character(),
            helo_syntax("HELO"),
            unknown_command(),
            unsupported_option("X"),
            bad_address(e.clone(), true),
            bad_address(e, false),
            too_many_connections("h"),
            too_many_from_address("h"),
            not_accepting("h"),
            shutting_down("h"),
            suppressed("a@b"),
            suppressed_for_sender("a@b"),
            tenant_paused("t1", "hard-bounce rate 12.5% (125/1000, limit 10%)"),
            suppression_unreadable(),
            queue_busy(),
            queue_unavailable(),
            queue_failed(),
            remote_lacks_smtputf8(),
            remote_size_exceeded(),
            no_recipients(),
            no_rcpt_reply(),
            bad_recipient("x"),
            recipient_suppressed(),
            expired(3, Some("451 4.7.1 later")),
            sender_unparsable("x@"),
            deleted_by_operator(),
        ]
    }

    /// The tenant replies exactly as the README's "SMTP replies" table gives them.
    #[test]
    fn tenant_replies_read_as_the_contract_says() {
        assert_eq!(
            suppressed_for_sender("bob@x.test").to_string(),
            "550 5.7.1 <bob@x.test>: recipient suppressed for this sender"
        );
        let r = tenant_paused("t1", "hard-bounce rate 12.5% (125/1000, limit 10%)");
        assert_eq!(
            r.to_string(),
            "450 4.7.1 Sending paused for tenant t1: hard-bounce rate 12.5% (125/1000, limit 10%)"
        );
        // Whatever an operator typed, the reply stays one line.
        let r = tenant_paused("t\r\n1", "a\r\nb");
        assert_eq!(
            r.to_bytes(),
            b"450 4.7.1 Sending paused for tenant t  1: a  b\r\n"
        );
    }

    #[test]
    fn code_and_enhanced_code_agree_in_class() {
        for r in all() {
            match &r.enhanced {
                Some(e) => assert_eq!(
                    u16::from(e.class),
                    r.code / 100,
                    "{r}: the enhanced code's class is not the reply's"
                ),
                // Only greetings, EHLO and intermediate replies go without one.
                None => assert!(
                    matches!(r.code, 220 | 250 | 334 | 354),
                    "{r} has no enhanced code"
                ),
            }
            assert!((200..600).contains(&r.code), "{r}");
        }
    }
}
