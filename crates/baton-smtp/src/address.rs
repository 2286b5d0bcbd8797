//! RFC 5321 / RFC 6531 mailboxes and paths: `<local@domain>`, `<>`, quoted local parts,
//! address literals, source routes (accepted and dropped) and UTF-8.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest local part accepted. RFC 5321 says 64 octets; VERP and tracking addresses
/// routinely exceed that, so be lenient but bounded.
pub const MAX_LOCAL_PART: usize = 255;
/// Longest domain accepted (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;

/// Why a path does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// No `<`, or no closing `>`.
    #[error("path must be enclosed in <>")]
    NotBracketed,
    /// Empty or malformed local part.
    #[error("invalid local part")]
    LocalPart,
    /// Missing `@domain`.
    #[error("missing domain")]
    MissingDomain,
    /// Malformed domain or address literal.
    #[error("invalid domain")]
    Domain,
    /// Local part or domain too long.
    #[error("address too long")]
    TooLong,
    /// `<>` where a mailbox is required.
    #[error("null path not allowed here")]
    Null,
}

/// A mailbox `local@domain`. `local` holds the unquoted content (`john doe` for
/// `"john doe"@x`); `domain` is kept as received (a name, possibly UTF-8, or an address
/// literal such as `[127.0.0.1]`). Compare domains with [`Mailbox::domain_lowercase`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// Local part, unquoted.
    pub local: String,
    /// Domain, or an address literal in brackets.
    pub domain: String,
}

impl Mailbox {
    /// Build a mailbox from parts (not validated).
    pub fn new(local: impl Into<String>, domain: impl Into<String>) -> Self {
        Mailbox {
            local: local.into(),
            domain: domain.into(),
        }
    }

    /// Parse a bare `local@domain` (no angle brackets).
    pub fn parse(s: &str) -> Result<Mailbox, AddressError> {
        let (m, used) = parse_mailbox(s)?;
        if used != s.len() {
            return Err(AddressError::Domain);
        }
        Ok(m)
    }

    /// The domain lower-cased, for comparisons and routing.
    pub fn domain_lowercase(&self) -> String {
        self.domain.to_lowercase()
    }

    /// True if the local part or domain contains non-ASCII (needs SMTPUTF8).
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }

    /// True if the domain is an address literal (`[...]`).
    pub fn is_address_literal(&self) -> bool {
        self.domain.starts_with('[')
    }

    /// Same mailbox, comparing the domain case-insensitively (local parts are
    /// case-sensitive per RFC 5321).
    pub fn same_as(&self, other: &Mailbox) -> bool {
        self.local == other.local && self.domain.to_lowercase() == other.domain.to_lowercase()
    }

    /// True if the local part needs quoting on the wire.
    fn local_needs_quotes(&self) -> bool {
        self.local.is_empty()
            || self.local.starts_with('.')
            || self.local.ends_with('.')
            || self.local.contains("..")
            || !self.local.chars().all(|c| c == '.' || is_atext(c))
    }
}

impl fmt::Display for Mailbox {
    /// Wire form without brackets, quoting the local part when needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.local_needs_quotes() {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        } else {
            f.write_str(&self.local)?;
        }
        if !self.domain.is_empty() {
            write!(f, "@{}", self.domain)?;
        }
        Ok(())
    }
}

/// A MAIL FROM path: the null sender `<>` or a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>` (bounces, DSNs).
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// True if the mailbox needs SMTPUTF8.
    pub fn needs_smtputf8(&self) -> bool {
        match self {
            ReversePath::Null => false,
            ReversePath::Mailbox(m) => m.needs_smtputf8(),
        }
    }

    /// The mailbox, if not null.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }
}

impl fmt::Display for ReversePath {
    /// Wire form with brackets: `<>` or `<a@b>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// RFC 5322 atext, plus any non-ASCII character (RFC 6531 UTF8-non-ascii).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Parse `<...>` at the start of `s` as a reverse path. Returns the path and the bytes
/// consumed (including the brackets).
pub fn parse_reverse_path(s: &str) -> Result<(ReversePath, usize), AddressError> {
    if s.starts_with("<>") {
        return Ok((ReversePath::Null, 2));
    }
    let (m, n) = parse_path(s)?;
    Ok((ReversePath::Mailbox(m), n))
}

/// Parse `<...>` at the start of `s` as a forward path. `<postmaster>` (any case) is
/// returned as a mailbox with an empty domain; the server fills in its own hostname.
pub fn parse_forward_path(s: &str) -> Result<(Mailbox, usize), AddressError> {
    if s.starts_with("<>") {
        return Err(AddressError::Null);
    }
    if let Some(inner) = s.get(1..11)
        && s.starts_with('<')
        && inner.eq_ignore_ascii_case("postmaster")
        && s[11..].starts_with('>')
    {
        return Ok((Mailbox::new(inner, ""), 12));
    }
    parse_path(s)
}

/// `<` [source-route `:`] mailbox `>`.
fn parse_path(s: &str) -> Result<(Mailbox, usize), AddressError> {
    let rest = s.strip_prefix('<').ok_or(AddressError::NotBracketed)?;
    let mut start = 1;
    if rest.starts_with('@') {
        // A-d-l: "@a,@b:" — obsolete source route, accepted and ignored.
        let colon = rest.find(':').ok_or(AddressError::Domain)?;
        for hop in rest[..colon].split(',') {
            let d = hop.strip_prefix('@').ok_or(AddressError::Domain)?;
            if parse_domain(d)? != d.len() {
                return Err(AddressError::Domain);
            }
        }
        start += colon + 1;
    }
    let (m, n) = parse_mailbox(&s[start..])?;
    if !s[start + n..].starts_with('>') {
        return Err(AddressError::NotBracketed);
    }
    Ok((m, start + n + 1))
}

/// local-part "@" domain at the start of `s`; returns bytes consumed.
fn parse_mailbox(s: &str) -> Result<(Mailbox, usize), AddressError> {
    let (local, mut pos) = if s.starts_with('"') {
        parse_quoted(s)?
    } else {
        let end = s
            .char_indices()
            .find(|&(_, c)| !(c == '.' || is_atext(c)))
            .map_or(s.len(), |(i, _)| i);
        let dot = &s[..end];
        if dot.is_empty() || dot.starts_with('.') || dot.ends_with('.') || dot.contains("..") {
            return Err(AddressError::LocalPart);
        }
        (dot.to_string(), end)
    };
    if local.len() > MAX_LOCAL_PART {
        return Err(AddressError::TooLong);
    }
    if !s[pos..].starts_with('@') {
        return Err(AddressError::MissingDomain);
    }
    pos += 1;
    let n = parse_domain(&s[pos..])?;
    let domain = s[pos..pos + n].to_string();
    Ok((Mailbox { local, domain }, pos + n))
}

/// A quoted string; returns the unquoted content and bytes consumed.
fn parse_quoted(s: &str) -> Result<(String, usize), AddressError> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => match chars.next() {
                Some((_, e)) if (' '..='~').contains(&e) => out.push(e),
                _ => return Err(AddressError::LocalPart),
            },
            c if (' '..='~').contains(&c) || !c.is_ascii() => out.push(c),
            _ => return Err(AddressError::LocalPart),
        }
        if out.len() > MAX_LOCAL_PART {
            return Err(AddressError::TooLong);
        }
    }
    Err(AddressError::LocalPart)
}

/// A domain name or address literal at the start of `s`; returns bytes consumed.
fn parse_domain(s: &str) -> Result<usize, AddressError> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']').ok_or(AddressError::Domain)?;
        let lit = &rest[..end];
        let ok = if let Some(v6) = lit
            .strip_prefix("IPv6:")
            .or_else(|| lit.strip_prefix("ipv6:"))
        {
            v6.parse::<Ipv6Addr>().is_ok()
        } else {
            lit.parse::<Ipv4Addr>().is_ok()
        };
        return if ok {
            Ok(end + 2)
        } else {
            Err(AddressError::Domain)
        };
    }
    let end = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '-' || c == '.' || !c.is_ascii()))
        .map_or(s.len(), |(i, _)| i);
    let d = &s[..end];
    if d.is_empty() {
        return Err(AddressError::Domain);
    }
    if d.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong);
    }
    for label in d.split('.') {
        if label.is_empty() || label.starts_with('-') || label.ends_with('-') || label.len() > 63 {
            return Err(AddressError::Domain);
        }
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(s: &str) -> Result<Mailbox, AddressError> {
        let (m, n) = parse_forward_path(s)?;
        assert_eq!(n, s.len(), "{s}");
        Ok(m)
    }

    #[test]
    fn paths() {
        assert_eq!(fwd("<a@b.c>"), Ok(Mailbox::new("a", "b.c")));
        assert_eq!(fwd("<@x.y,@z:a@b.c>"), Ok(Mailbox::new("a", "b.c")));
        assert_eq!(fwd("<\"john doe\"@x>"), Ok(Mailbox::new("john doe", "x")));
        assert_eq!(fwd("<\"a\\\"b\"@x>"), Ok(Mailbox::new("a\"b", "x")));
        assert_eq!(fwd("<a@[127.0.0.1]>"), Ok(Mailbox::new("a", "[127.0.0.1]")));
        assert_eq!(fwd("<a@[IPv6:::1]>"), Ok(Mailbox::new("a", "[IPv6:::1]")));
        assert_eq!(fwd("<PostMaster>"), Ok(Mailbox::new("PostMaster", "")));
        assert_eq!(
            fwd("<δοκιμή@παράδειγμα.δοκιμή>").map(|m| m.needs_smtputf8()),
            Ok(true)
        );
        assert_eq!(parse_reverse_path("<>"), Ok((ReversePath::Null, 2)));
        assert_eq!(fwd("<>"), Err(AddressError::Null));
        for bad in [
            "a@b",
            "<a@b",
            "<a>",
            "<@b>",
            "<a@>",
            "<a..b@c>",
            "<.a@c>",
            "<a@-b.c>",
            "<a@b..c>",
            "<a@[1.2.3]>",
            "<\"a@b>",
            "<a b@c>",
            "<a@b c>",
        ] {
            assert!(fwd(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_quotes() {
        assert_eq!(Mailbox::new("john doe", "x").to_string(), "\"john doe\"@x");
        assert_eq!(Mailbox::new("a\"b", "x").to_string(), "\"a\\\"b\"@x");
        assert_eq!(Mailbox::new("a.b+c", "x").to_string(), "a.b+c@x");
        assert_eq!(Mailbox::new("a..b", "x").to_string(), "\"a..b\"@x");
        let m = Mailbox::new("a", "x");
        assert_eq!(ReversePath::Mailbox(m).to_string(), "<a@x>");
        assert_eq!(ReversePath::Null.to_string(), "<>");
        // round trip
        for s in ["<\"john doe\"@x>", "<a.b@c.d>", "<\"a\\\\b\"@x>"] {
            let m = fwd(s).expect("valid");
            assert_eq!(format!("<{m}>"), s);
        }
    }

    #[test]
    fn domain_case() {
        let a = Mailbox::new("u", "Example.COM");
        assert_eq!(a.domain_lowercase(), "example.com");
        assert!(a.same_as(&Mailbox::new("u", "example.com")));
        assert!(!a.same_as(&Mailbox::new("U", "example.com")));
    }
}
