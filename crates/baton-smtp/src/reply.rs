//! SMTP replies: the [`Reply`] value the server sends and the client receives, and
//! [`ReplyParser`], which turns server bytes into complete (possibly multi-line) replies.

use std::fmt;
use std::str::FromStr;

/// Longest reply line the [`ReplyParser`] accepts (RFC 5321 says 512; real servers send
/// longer ones, so be generous but bounded).
pub const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one multi-line reply the [`ReplyParser`] accepts.
pub const MAX_REPLY_LINES: usize = 128;

/// An RFC 3463 enhanced status code such as `5.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2, 4 or 5.
    pub class: u8,
    /// 0..=999.
    pub subject: u16,
    /// 0..=999.
    pub detail: u16,
}

impl FromStr for EnhancedCode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let mut it = s.split('.');
        let (Some(c), Some(su), Some(d), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(());
        };
        let num = |p: &str| -> Result<u16, ()> {
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(());
            }
            p.parse().map_err(|_| ())
        };
        let class = match c {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return Err(()),
        };
        Ok(EnhancedCode {
            class,
            subject: num(su)?,
            detail: num(d)?,
        })
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced code and one or more text
/// lines. The enhanced code is written at the start of every line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code, e.g. 250.
    pub code: u16,
    /// The enhanced status code, if any.
    pub enhanced: Option<EnhancedCode>,
    /// Text lines without code, enhanced code or CRLF. Never empty.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply. `enhanced` is parsed (`"2.0.0"`); an empty or malformed string
    /// means no enhanced code.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: enhanced.parse().ok(),
            lines: vec![sanitize(text.into())],
        }
    }

    /// A multi-line reply (an empty `lines` gives one empty line).
    pub fn multiline(code: u16, enhanced: &str, lines: Vec<String>) -> Reply {
        let mut lines: Vec<String> = lines.into_iter().map(sanitize).collect();
        if lines.is_empty() {
            lines.push(String::new());
        }
        Reply {
            code,
            enhanced: enhanced.parse().ok(),
            lines,
        }
    }

    /// The wire form: `250-first\r\n250 last\r\n`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.lines.iter().map(|l| l.len() + 16).sum());
        self.write_to(&mut out);
        out
    }

    /// Append the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.extend_from_slice(format!("{:03}{sep}", self.code).as_bytes());
            if let Some(e) = &self.enhanced {
                out.extend_from_slice(format!("{e} ").as_bytes());
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 2xx.
    pub fn is_completion(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx (e.g. 354, 334).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx (or anything outside 2xx-4xx): do not retry.
    pub fn is_permanent(&self) -> bool {
        !(200..500).contains(&self.code)
    }

    /// All text lines joined with a space.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

/// Strip CR and LF so a reply can never inject extra lines.
fn sanitize(s: String) -> String {
    if s.contains(['\r', '\n']) {
        s.replace(['\r', '\n'], " ")
    } else {
        s
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = &self.enhanced {
            write!(f, " {e}")?;
        }
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                write!(f, " /")?;
            }
            if !l.is_empty() {
                write!(f, " {l}")?;
            }
        }
        Ok(())
    }
}

/// Why the server's bytes are not a valid reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line longer than [`MAX_REPLY_LINE`].
    #[error("reply line too long")]
    LineTooLong,
    /// A multi-line reply with more than [`MAX_REPLY_LINES`] lines.
    #[error("too many reply lines")]
    TooManyLines,
    /// Not `DDD[ -]text`.
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    /// A continuation line with a different code.
    #[error("reply code changed within a multi-line reply")]
    CodeMismatch,
}

/// Incremental reply parser for the client side. Accepts CRLF or bare LF line ends.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    pending: Vec<String>,
    pending_code: Option<u16>,
    failed: bool,
}

impl ReplyParser {
    /// An empty parser.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append bytes received from the server.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes fed but not yet part of a returned reply.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete reply, `Ok(None)` if more bytes are needed. After an error the
    /// parser keeps returning that error: the connection is unusable.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        if self.failed {
            return Err(ReplyError::Malformed("earlier error".into()));
        }
        let r = self.next_inner();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    fn next_inner(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_REPLY_LINE {
                    return Err(ReplyError::LineTooLong);
                }
                return Ok(None);
            };
            if nl > MAX_REPLY_LINE {
                return Err(ReplyError::LineTooLong);
            }
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let (code, last, text) = split_line(&line)?;
            if let Some(c) = self.pending_code
                && c != code
            {
                return Err(ReplyError::CodeMismatch);
            }
            self.pending_code = Some(code);
            self.pending.push(text.to_string());
            if self.pending.len() > MAX_REPLY_LINES {
                return Err(ReplyError::TooManyLines);
            }
            if last {
                self.pending_code = None;
                let lines = std::mem::take(&mut self.pending);
                return Ok(Some(build(code, lines)));
            }
        }
    }
}

fn split_line(line: &str) -> Result<(u16, bool, &str), ReplyError> {
    let b = line.as_bytes();
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&b[0]) {
        return Err(ReplyError::Malformed(line.chars().take(64).collect()));
    }
    let code = u16::from(b[0] - b'0') * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0');
    match b.get(3) {
        None => Ok((code, true, "")),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(ReplyError::Malformed(line.chars().take(64).collect())),
    }
}

/// Build a reply, extracting the enhanced code if every line (or the first) carries one
/// whose class matches the reply code.
fn build(code: u16, mut lines: Vec<String>) -> Reply {
    let class = (code / 100) as u8;
    let first = lines
        .first()
        .and_then(|l| l.split(' ').next())
        .unwrap_or("");
    let enhanced = first
        .parse::<EnhancedCode>()
        .ok()
        .filter(|e| e.class == class);
    if let Some(e) = enhanced {
        let prefix = e.to_string();
        for l in &mut lines {
            if let Some(rest) = l.strip_prefix(prefix.as_str())
                && (rest.is_empty() || rest.starts_with(' '))
            {
                *l = rest.strip_prefix(' ').unwrap_or(rest).to_string();
            }
        }
    }
    Reply {
        code,
        enhanced,
        lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        let r = Reply::new(250, "2.0.0", "Ok");
        assert_eq!(r.to_bytes(), b"250 2.0.0 Ok\r\n");
        let r = Reply::multiline(250, "", vec!["a".into(), "b".into()]);
        assert_eq!(r.to_bytes(), b"250-a\r\n250 b\r\n");
        let r = Reply::new(334, "", "");
        assert_eq!(r.to_bytes(), b"334 \r\n");
        let r = Reply::new(550, "5.1.1", "x\r\n250 injected");
        assert_eq!(r.to_bytes(), b"550 5.1.1 x  250 injected\r\n");
        assert_eq!(
            Reply::new(550, "5.1.1", "no").to_string(),
            "550 5.1.1 no".to_string()
        );
    }

    #[test]
    fn classes() {
        assert!(Reply::new(250, "", "").is_positive());
        assert!(Reply::new(354, "", "").is_positive());
        assert!(Reply::new(451, "", "").is_transient());
        assert!(Reply::new(554, "", "").is_permanent());
        assert!(!Reply::new(554, "", "").is_transient());
    }

    #[test]
    fn enhanced_parse() {
        assert_eq!(
            "5.7.11".parse::<EnhancedCode>(),
            Ok(EnhancedCode {
                class: 5,
                subject: 7,
                detail: 11
            })
        );
        assert!("3.0.0".parse::<EnhancedCode>().is_err());
        assert!("5.0".parse::<EnhancedCode>().is_err());
        assert!("5.0.0.0".parse::<EnhancedCode>().is_err());
        assert!("5.1000.0".parse::<EnhancedCode>().is_err());
    }

    #[test]
    fn parser_every_chunking() {
        let input = b"220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250 2.0.0 SIZE 10\r\n550 5.1.1 <a@b> no\n";
        for split in 0..=input.len() {
            let mut p = ReplyParser::new();
            let mut got = Vec::new();
            for part in [&input[..split], &input[split..]] {
                p.feed(part);
                while let Some(r) = p.next_reply().expect("valid") {
                    got.push(r);
                }
            }
            assert_eq!(got.len(), 3, "split {split}");
            assert_eq!(got[0].code, 220);
            assert_eq!(got[1].lines, vec!["mx", "PIPELINING", "2.0.0 SIZE 10"]);
            assert_eq!(got[2].enhanced.map(|e| e.to_string()), Some("5.1.1".into()));
            assert_eq!(got[2].lines, vec!["<a@b> no"]);
        }
    }

    #[test]
    fn parser_errors() {
        for bad in [&b"hello\r\n"[..], b"25\r\n", b"250x\r\n", b"650 x\r\n"] {
            let mut p = ReplyParser::new();
            p.feed(bad);
            assert!(p.next_reply().is_err(), "{bad:?}");
        }
        let mut p = ReplyParser::new();
        p.feed(b"250-a\r\n251 b\r\n");
        assert_eq!(p.next_reply(), Err(ReplyError::CodeMismatch));
        let mut p = ReplyParser::new();
        p.feed(&vec![b'2'; MAX_REPLY_LINE + 2]);
        assert_eq!(p.next_reply(), Err(ReplyError::LineTooLong));
    }
}
