//! Header-style fields (`Name: value`, folded lines, blank-line separated groups), as in
//! a message's header section and in the body of a `message/delivery-status` part.

/// One group's fields, names as written, values unfolded and trimmed.
pub type Group = Vec<(String, String)>;

/// The groups of `text`: runs of fields separated by blank lines. Lines that are not
/// fields (no colon, or a name with spaces) are skipped; a folded line continues the field
/// before it.
pub fn groups(text: &str) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    let mut current: Group = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            continue;
        }
        current.push((name.to_string(), value.trim().to_string()));
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The first value of field `name` (any case) in `group`.
pub fn get<'a>(group: &'a Group, name: &str) -> Option<&'a str> {
    group
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The header section of a message (or of a header block): up to the first blank line.
pub fn header_section(message: &str) -> Group {
    let end = message
        .find("\r\n\r\n")
        .or_else(|| message.find("\n\n"))
        .unwrap_or(message.len());
    groups(&message[..end])
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// An address field's address: the type prefix (`rfc822;`) and angle brackets and
/// comments stripped; `None` when nothing like an address is left.
pub fn address(value: &str) -> Option<String> {
    let value = match value.split_once(';') {
        Some((_, rest)) => rest,
        None => value,
    };
    let value = match (value.find('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split_whitespace().next().unwrap_or(""),
    };
    let value = value.trim().trim_matches(['<', '>', '"']);
    (value.contains('@') && !value.contains(char::is_whitespace)).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_unfold_and_split() {
        let text = "Reporting-MTA: dns; mx.test\r\n\r\n\r\nFinal-Recipient: rfc822;\r\n a@b.test\r\nAction: failed\nnot a field\n\n";
        let g = groups(text);
        assert_eq!(g.len(), 2);
        assert_eq!(get(&g[0], "reporting-mta"), Some("dns; mx.test"));
        assert_eq!(get(&g[1], "Final-Recipient"), Some("rfc822; a@b.test"));
        assert_eq!(get(&g[1], "ACTION"), Some("failed"));
    }

    #[test]
    fn addresses() {
        assert_eq!(address("rfc822; A@B.test").as_deref(), Some("A@B.test"));
        assert_eq!(address("rfc822;<a@b.test>").as_deref(), Some("a@b.test"));
        assert_eq!(address("a@b.test (comment)").as_deref(), Some("a@b.test"));
        assert_eq!(address("Name <a@b.test>").as_deref(), Some("a@b.test"));
        assert_eq!(address("rfc822; nobody"), None);
        assert_eq!(address(""), None);
    }

    #[test]
    fn header_section_stops_at_the_body() {
        let h = header_section("X-Baton-Ref: v1.abc\r\nSubject: s\r\n\r\nX-Not: body\r\n");
        assert_eq!(get(&h, "x-baton-ref"), Some("v1.abc"));
        assert_eq!(get(&h, "x-not"), None);
    }
}
