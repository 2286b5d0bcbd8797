//! Just enough RFC 5322 header parsing to police senders: the domains of the `From:`
//! field's addresses, for `allowed_from`.
//!
//! The parser is deliberately strict where leniency would let a sender hide an address:
//! more than one `From:` field, an address without a domain, or a field that does not
//! parse is an error, never "no address".

/// Why the `From:` field cannot be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FromError {
    /// RFC 5322 §3.6 allows exactly one `From:` field.
    #[error("more than one From: header")]
    Several,
    /// No `From:` field in the header section.
    #[error("no From: header")]
    Missing,
    /// Unbalanced quotes, comments or angle brackets, or an address without a domain.
    #[error("From: header cannot be parsed")]
    Malformed,
}

/// The domains (lowercase) of every address in the message's `From:` field.
pub fn from_domains(message: &[u8]) -> Result<Vec<String>, FromError> {
    let mut found: Option<Vec<u8>> = None;
    for field in fields(message) {
        let Some(colon) = field.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = field[..colon].trim_ascii();
        if !name.eq_ignore_ascii_case(b"from") {
            continue;
        }
        if found.is_some() {
            return Err(FromError::Several);
        }
        found = Some(field[colon + 1..].to_vec());
    }
    let value = found.ok_or(FromError::Missing)?;
    let addresses = addresses(&value)?;
    if addresses.is_empty() {
        return Err(FromError::Malformed);
    }
    addresses.iter().map(|a| domain_of(a)).collect()
}

/// The domain of one addr-spec (comments gone, quoted strings as `""`; a source route
/// `@a,@b:` before it is dropped): exactly one `@`, no space, a local part and a domain.
fn domain_of(addr: &[u8]) -> Result<String, FromError> {
    let addr = match addr.iter().rposition(|&b| b == b':') {
        Some(colon) if addr.first() == Some(&b'@') => &addr[colon + 1..],
        _ => addr,
    };
    let addr = addr.trim_ascii();
    if addr.iter().any(|b| b.is_ascii_whitespace() || *b == b':') {
        return Err(FromError::Malformed);
    }
    let mut ats = addr.iter().enumerate().filter(|(_, b)| **b == b'@');
    let (Some((at, _)), None) = (ats.next(), ats.next()) else {
        return Err(FromError::Malformed);
    };
    let domain = String::from_utf8_lossy(&addr[at + 1..]).to_lowercase();
    let domain = domain.trim_end_matches('.').to_string();
    if domain.is_empty() || at == 0 {
        return Err(FromError::Malformed);
    }
    Ok(domain)
}

/// The unfolded header fields, up to the first empty line.
fn fields(message: &[u8]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        match (line[0], out.last_mut()) {
            (b' ' | b'\t', Some(last)) => last.extend_from_slice(line),
            _ => out.push(line.to_vec()),
        }
    }
    out
}

/// The addr-specs of an address list, with comments removed and quoted strings kept
/// as `""` (their content cannot hold the domain). Groups (`name: a@b, c@d;`) are
/// flattened.
fn addresses(value: &[u8]) -> Result<Vec<Vec<u8>>, FromError> {
    let mut list = Vec::new();
    // The current address: everything outside comments and quotes, and what was
    // inside angle brackets, if any.
    let mut plain: Vec<u8> = Vec::new();
    let mut angle: Option<Vec<u8>> = None;
    let mut in_angle = false;
    // After `>`: only comments and spaces may follow before `,` or `;`.
    let mut closed = false;
    let mut i = 0;
    let end_address = |plain: &mut Vec<u8>, angle: &mut Option<Vec<u8>>, list: &mut Vec<_>| {
        let addr = angle.take().unwrap_or_else(|| std::mem::take(plain));
        plain.clear();
        let addr = addr.trim_ascii().to_vec();
        if !addr.is_empty() {
            list.push(addr);
        }
    };
    while i < value.len() {
        let b = value[i];
        i += 1;
        match b {
            b'(' => {
                let mut depth = 1;
                while depth > 0 {
                    match value.get(i) {
                        None => return Err(FromError::Malformed),
                        Some(b'\\') => i += 1,
                        Some(b'(') => depth += 1,
                        Some(b')') => depth -= 1,
                        Some(_) => {}
                    }
                    i += 1;
                }
            }
            b'"' => {
                if closed {
                    return Err(FromError::Malformed);
                }
                loop {
                    match value.get(i) {
                        None => return Err(FromError::Malformed),
                        Some(b'\\') => i += 1,
                        Some(b'"') => break,
                        Some(_) => {}
                    }
                    i += 1;
                }
                i += 1;
                let target = if in_angle {
                    angle.get_or_insert_with(Vec::new)
                } else {
                    &mut plain
                };
                target.extend_from_slice(b"\"\"");
            }
            // A display name holds no unquoted `@`: one that does is an address a
            // lenient reader may show or use.
            b'<' if !in_angle => {
                if angle.is_some() || plain.contains(&b'@') {
                    return Err(FromError::Malformed);
                }
                in_angle = true;
                angle = Some(Vec::new());
            }
            b'>' if in_angle => {
                in_angle = false;
                closed = true;
            }
            b'<' | b'>' => return Err(FromError::Malformed),
            // A group's display name ends at ':'.
            b':' if !in_angle => {
                if plain.contains(&b'@') || closed {
                    return Err(FromError::Malformed);
                }
                plain.clear();
            }
            b',' | b';' if !in_angle => {
                end_address(&mut plain, &mut angle, &mut list);
                closed = false;
            }
            _ if closed => {
                if !b.is_ascii_whitespace() {
                    return Err(FromError::Malformed);
                }
            }
            _ => {
                if in_angle {
                    angle.get_or_insert_with(Vec::new).push(b);
                } else {
                    plain.push(b);
                }
            }
        }
    }
    if in_angle {
        return Err(FromError::Malformed);
    }
    end_address(&mut plain, &mut angle, &mut list);
    Ok(list)
}

/// `domain` is one of `patterns`: `example.com` matches itself, `*.example.com` its
/// subdomains. Case-insensitive; a trailing dot is ignored.
pub fn domain_allowed(domain: &str, patterns: &[String]) -> bool {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    patterns.iter().any(|p| {
        let p = p.trim_end_matches('.').to_ascii_lowercase();
        match p.strip_prefix("*.") {
            Some(parent) => domain
                .strip_suffix(parent)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => domain == p,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains(headers: &str) -> Result<Vec<String>, FromError> {
        from_domains(format!("{headers}\r\n\r\nbody\r\nFrom: x@later.test\r\n").as_bytes())
    }

    #[test]
    fn from_field_domains() {
        let ok = |h: &str, want: &[&str]| assert_eq!(domains(h).unwrap(), want, "{h}");
        ok("From: a@example.com", &["example.com"]);
        ok("from:a@Example.COM.", &["example.com"]);
        ok("From: Alice <a@example.com>", &["example.com"]);
        ok(
            "From: \"Bank, Inc <x@bank.test>\" <a@example.com>",
            &["example.com"],
        );
        ok(
            "From: (x@bank.test) a@example.com (comment)",
            &["example.com"],
        );
        ok("From: \"x@bank.test\"@example.com", &["example.com"]);
        ok(
            "From: a@example.com, b@other.test",
            &["example.com", "other.test"],
        );
        ok(
            "From: team: a@example.com, B <b@other.test>;",
            &["example.com", "other.test"],
        );
        ok(
            "Subject: hi\r\nFrom: Alice\r\n <a@example.com>\r\nTo: t@x.test",
            &["example.com"],
        );
        ok(
            "From: =?utf-8?q?Al=40ice?= <a@example.com>",
            &["example.com"],
        );
        ok("From: <@route.test:a@example.com>", &["example.com"]);
        ok("From: <@r1.test,@r2.test:a@example.com>", &["example.com"]);
        ok(
            "From: Alice <a@example.com> (work), b@other.test",
            &["example.com", "other.test"],
        );
    }

    #[test]
    fn from_field_errors() {
        let err = |h: &str, want: FromError| assert_eq!(domains(h), Err(want), "{h}");
        err(
            "From: a@example.com\r\nFrom: b@bank.test",
            FromError::Several,
        );
        err("Subject: none", FromError::Missing);
        err("From: Alice <a@example.com", FromError::Malformed);
        err("From: \"unterminated <a@example.com>", FromError::Malformed);
        err("From: (open a@example.com", FromError::Malformed);
        err("From: nobody", FromError::Malformed);
        err("From: <a@example.com> <b@bank.test>", FromError::Malformed);
        err("From: @example.com", FromError::Malformed);
        err("From:", FromError::Malformed);
        // Lenient readers take the first of these addresses.
        err("From: ceo@bank.test a@example.com", FromError::Malformed);
        err("From: ceo@bank.test@example.com", FromError::Malformed);
        err("From: ceo@bank.test: a@example.com;", FromError::Malformed);
        err(
            "From: Alice <a@example.com> ceo@bank.test",
            FromError::Malformed,
        );
        err("From: ceo@bank.test <a@example.com>", FromError::Malformed);
        err("From: <a@example.com> \"x\"", FromError::Malformed);
    }

    #[test]
    fn patterns() {
        let p = vec!["example.com".to_string(), "*.corp.test".to_string()];
        assert!(domain_allowed("example.com", &p));
        assert!(domain_allowed("EXAMPLE.com.", &p));
        assert!(!domain_allowed("sub.example.com", &p));
        assert!(!domain_allowed("badexample.com", &p));
        assert!(domain_allowed("a.corp.test", &p));
        assert!(domain_allowed("a.b.corp.test", &p));
        assert!(!domain_allowed("corp.test", &p));
        assert!(!domain_allowed("evilcorp.test", &p));
    }
}
