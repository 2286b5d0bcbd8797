//! What receivers tell a sender after delivery, and how Baton knows which message they
//! mean. Pure: no sockets, no state, no clock.
//!
//! - [`token`]: the bounce token (message ULID, recipient index, truncated HMAC-SHA256)
//!   in `b-TOKEN@<bounce domain>` and `X-Baton-Ref: v1.TOKEN`.
//! - [`dsn`]: RFC 3464 delivery status notifications, parsed field by field.
//! - [`arf`]: RFC 5965 feedback reports (complaints), via mail-auth's parser.
//! - [`fields`]: header-style fields, shared by the two.

#![forbid(unsafe_code)]

pub mod arf;
pub mod dsn;
pub mod fields;
pub mod token;

/// The token texts a returned message's header section carries: its `X-Baton-Ref`
/// value's, then its `Return-Path` address's (neither verified).
pub fn returned_tokens(headers: &str) -> (Option<String>, Option<String>) {
    let h = fields::header_section(headers);
    let reference = fields::get(&h, token::REF_HEADER)
        .and_then(token::ref_token)
        .map(str::to_string);
    let return_path = fields::get(&h, "Return-Path")
        .and_then(fields::address)
        .and_then(|a| {
            let (local, _) = a.rsplit_once('@')?;
            token::local_token(local).map(str::to_string)
        });
    (reference, return_path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn returned_tokens() {
        let h = "Return-Path: <B-xyz@bounces.test>\r\nX-Baton-Ref:  v1.abc \r\n\r\nbody";
        assert_eq!(
            super::returned_tokens(h),
            (Some("abc".into()), Some("xyz".into()))
        );
        assert_eq!(super::returned_tokens("Subject: x\r\n"), (None, None));
    }
}
