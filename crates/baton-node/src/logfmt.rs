//! Log fields a client or a remote server controls (addresses, user names, reply
//! texts): `tracing`'s text format prints Display fields raw, so a newline or a space in
//! one could forge a line or a `key=value` pair.

use std::fmt;

/// Longest value logged, in characters.
const MAX: usize = 300;

/// Shown as is when it is one plain token (no space, control character, quote or
/// backslash), else quoted and escaped like a Rust string; at most [`MAX`] characters.
pub struct Safe<'a>(pub &'a str);

impl fmt::Display for Safe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.0.char_indices().nth(MAX) {
            Some((cut, _)) => &self.0[..cut],
            None => self.0,
        };
        let plain = !s.is_empty()
            && s.chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\');
        if plain {
            f.write_str(s)
        } else {
            write!(f, "{s:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Safe;

    #[test]
    fn only_plain_tokens_go_unquoted() {
        assert_eq!(Safe("<a@b.test>").to_string(), "<a@b.test>");
        assert_eq!(Safe("").to_string(), "\"\"");
        assert_eq!(
            Safe("x\n2026 INFO received").to_string(),
            "\"x\\n2026 INFO received\""
        );
        assert_eq!(Safe("x client=1.2.3.4").to_string(), "\"x client=1.2.3.4\"");
        assert_eq!(Safe("\u{1b}[31m").to_string(), "\"\\u{1b}[31m\"");
        assert_eq!(Safe(&"y".repeat(400)).to_string().len(), 300);
    }
}
