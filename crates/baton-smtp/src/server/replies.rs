//! Every reply the server engine sends, in one place (CONTRACT.md's reply table).

use crate::data::DataError;
use crate::reply::Reply;

pub(super) fn ok() -> Reply {
    Reply::new(250, "2.0.0", "Ok")
}
pub(super) fn mail_ok() -> Reply {
    Reply::new(250, "2.1.0", "Ok")
}
pub(super) fn rcpt_ok() -> Reply {
    Reply::new(250, "2.1.5", "Ok")
}
pub(super) fn queued(id: &str) -> Reply {
    Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
}
pub(super) fn bdat_ok(n: u64) -> Reply {
    Reply::new(250, "2.0.0", format!("{n} bytes received"))
}
pub(super) fn start_data() -> Reply {
    Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")
}
pub(super) fn vrfy() -> Reply {
    Reply::new(252, "2.1.5", "Cannot VRFY user, but will accept message")
}
pub(super) fn help() -> Reply {
    Reply::new(
        214,
        "2.0.0",
        "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
    )
}
pub(super) fn bye() -> Reply {
    Reply::new(221, "2.0.0", "Bye")
}
pub(super) fn ready_tls() -> Reply {
    Reply::new(220, "2.0.0", "Ready to start TLS")
}
pub(super) fn tls_unavailable() -> Reply {
    Reply::new(502, "5.5.1", "Error: STARTTLS not available")
}
pub(super) fn tls_active() -> Reply {
    Reply::new(503, "5.5.1", "Error: TLS already active")
}
pub(super) fn timeout(host: &str) -> Reply {
    Reply::new(421, "4.4.2", format!("{host} Error: timeout exceeded"))
}
pub(super) fn too_many_errors(host: &str) -> Reply {
    Reply::new(421, "4.7.0", format!("{host} Error: too many errors"))
}
pub(super) fn too_much_input(host: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{host} Error: too much pipelined input"),
    )
}
pub(super) fn line_too_long() -> Reply {
    Reply::new(500, "5.5.6", "Line too long")
}
pub(super) fn need_helo() -> Reply {
    Reply::new(503, "5.5.1", "Error: send HELO/EHLO first")
}
pub(super) fn need_ehlo() -> Reply {
    Reply::new(503, "5.5.1", "Error: send EHLO first")
}
pub(super) fn nested_mail() -> Reply {
    Reply::new(503, "5.5.1", "Error: nested MAIL command")
}
pub(super) fn need_mail() -> Reply {
    Reply::new(503, "5.5.1", "Error: need MAIL command")
}
pub(super) fn no_rcpts() -> Reply {
    Reply::new(554, "5.5.1", "Error: no valid recipients")
}
pub(super) fn bdat_data_mixed() -> Reply {
    Reply::new(503, "5.5.1", "Error: DATA and BDAT cannot be mixed")
}
pub(super) fn rcpt_after_bdat() -> Reply {
    Reply::new(503, "5.5.1", "Error: RCPT after BDAT")
}
pub(super) fn auth_required() -> Reply {
    Reply::new(530, "5.7.0", "Authentication required")
}
pub(super) fn relay_denied() -> Reply {
    Reply::new(554, "5.7.1", "Relaying denied")
}
pub(super) fn too_many_rcpts() -> Reply {
    Reply::new(452, "4.5.3", "Too many recipients")
}
pub(super) fn size_exceeded() -> Reply {
    Reply::new(
        552,
        "5.3.4",
        "Message size exceeds fixed maximum message size",
    )
}
pub(super) fn binarymime() -> Reply {
    Reply::new(555, "5.5.4", "BODY=BINARYMIME not supported")
}
pub(super) fn need_smtputf8() -> Reply {
    Reply::new(
        553,
        "5.6.7",
        "Non-ASCII address requires the SMTPUTF8 parameter",
    )
}
pub(super) fn data_error(e: DataError) -> Reply {
    match e {
        DataError::TooLarge => size_exceeded(),
        DataError::BareLineEnding => Reply::new(
            550,
            "5.6.0",
            "Bare CR or LF not allowed, lines must end with CRLF (RFC 5321 2.3.8)",
        ),
        DataError::LineTooLong => {
            Reply::new(550, "5.6.0", "Line too long (RFC 5321 limit is 1000 bytes)")
        }
    }
}

// AUTH
pub(super) fn auth_ok() -> Reply {
    Reply::new(235, "2.7.0", "Authentication succeeded")
}
pub(super) fn auth_failed() -> Reply {
    Reply::new(535, "5.7.8", "Authentication credentials invalid")
}
pub(super) fn auth_disabled() -> Reply {
    Reply::new(503, "5.5.1", "Error: authentication not enabled")
}
pub(super) fn already_authenticated() -> Reply {
    Reply::new(503, "5.5.1", "Error: already authenticated")
}
pub(super) fn auth_in_txn() -> Reply {
    Reply::new(503, "5.5.1", "Error: MAIL transaction in progress")
}
pub(super) fn encryption_required() -> Reply {
    Reply::new(
        538,
        "5.7.11",
        "Encryption required for requested authentication mechanism",
    )
}
pub(super) fn unknown_mechanism() -> Reply {
    Reply::new(504, "5.5.4", "Unrecognized authentication type")
}
pub(super) fn auth_cancelled() -> Reply {
    Reply::new(501, "5.7.0", "Authentication cancelled")
}
pub(super) fn bad_base64() -> Reply {
    Reply::new(501, "5.5.2", "Invalid base64 data")
}
pub(super) fn bad_auth_data() -> Reply {
    Reply::new(501, "5.5.2", "Invalid authentication data")
}
pub(super) fn challenge(text: &str) -> Reply {
    Reply::new(334, "", text)
}
