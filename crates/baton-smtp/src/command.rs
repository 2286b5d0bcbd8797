//! SMTP command parsing: one line in, a [`Command`] or the exact error [`Reply`] out.

use crate::address::{self, Mailbox, ReversePath};
use crate::replies;
use crate::reply::Reply;

/// The BODY= parameter of MAIL (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    /// `BODY=7BIT` (or no BODY parameter).
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
    /// `BODY=BINARYMIME` (requires BDAT).
    BinaryMime,
}

/// Parameters of MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// `SIZE=n`.
    pub size: Option<u64>,
    /// `BODY=...`, if given.
    pub body: Option<BodyType>,
    /// `SMTPUTF8`.
    pub smtputf8: bool,
    /// `AUTH=<xtext>` (RFC 4954), kept verbatim.
    pub auth: Option<String>,
}

/// Parameters of RCPT TO. None are supported yet (no DSN): any parameter gives 555.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams {}

/// A parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain`.
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `MAIL FROM:<path> params`.
    Mail {
        /// The sender.
        from: ReversePath,
        /// Its parameters.
        params: MailParams,
    },
    /// `RCPT TO:<path> params`.
    Rcpt {
        /// The recipient (`<postmaster>` has an empty domain).
        to: Mailbox,
        /// Its parameters.
        params: RcptParams,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Chunk size in bytes.
        size: u64,
        /// `LAST` given.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [anything]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy(String),
    /// `HELP [topic]`.
    Help(Option<String>),
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]`.
    Auth {
        /// Mechanism name, upper-cased.
        mechanism: String,
        /// Initial response (base64, or `=` for empty), if any.
        initial: Option<String>,
    },
}

fn no_args(verb: &str, args: &str, cmd: Command) -> Result<Command, Reply> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(replies::syntax(&format!("{verb} takes no arguments")))
    }
}

/// Parse one command line (with or without its trailing CRLF).
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Err(replies::bad_utf8());
    };
    if line.contains(['\r', '\n', '\0']) {
        return Err(replies::bad_character());
    }
    let (verb, args) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim_matches(' ')),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let name = args.split(' ').next().unwrap_or("");
            if name.is_empty() {
                return Err(replies::helo_syntax(&verb));
            }
            Ok(if verb == "EHLO" {
                Command::Ehlo(name.to_string())
            } else {
                Command::Helo(name.to_string())
            })
        }
        "MAIL" => parse_mail(args),
        "RCPT" => parse_rcpt(args),
        "DATA" => no_args("DATA", args, Command::Data),
        "BDAT" => parse_bdat(args),
        "RSET" => no_args("RSET", args, Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args("QUIT", args, Command::Quit),
        "STARTTLS" => no_args("STARTTLS", args, Command::StartTls),
        "VRFY" => {
            if args.is_empty() {
                Err(replies::syntax("VRFY needs an argument"))
            } else {
                Ok(Command::Vrfy(args.to_string()))
            }
        }
        "HELP" => Ok(Command::Help((!args.is_empty()).then(|| args.to_string()))),
        "AUTH" => {
            let mut it = args.split(' ').filter(|s| !s.is_empty());
            let Some(mech) = it.next() else {
                return Err(replies::syntax("AUTH mechanism [initial-response]"));
            };
            let initial = it.next().map(str::to_string);
            if it.next().is_some() {
                return Err(replies::syntax("AUTH mechanism [initial-response]"));
            }
            Ok(Command::Auth {
                mechanism: mech.to_ascii_uppercase(),
                initial,
            })
        }
        _ => Err(replies::unknown_command()),
    }
}

/// Strip a case-insensitive `FROM:` / `TO:` prefix, allowing spaces after the colon.
fn strip_keyword<'a>(args: &'a str, kw: &str) -> Option<&'a str> {
    let head = args.get(..kw.len())?;
    head.eq_ignore_ascii_case(kw)
        .then(|| args[kw.len()..].trim_start_matches(' '))
}

/// Split `key[=value]` parameters separated by spaces.
fn params(rest: &str) -> Result<Vec<(String, Option<&str>)>, Reply> {
    let rest = rest.trim_matches(' ');
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (p, None),
            };
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(replies::syntax("bad parameter"));
            }
            Ok((k.to_ascii_uppercase(), v))
        })
        .collect()
}

fn parse_mail(args: &str) -> Result<Command, Reply> {
    let Some(rest) = strip_keyword(args, "FROM:") else {
        return Err(replies::syntax("MAIL FROM:<address>"));
    };
    let (from, used) =
        address::parse_reverse_path(rest).map_err(|e| replies::bad_address(e, true))?;
    let after = &rest[used..];
    if !after.is_empty() && !after.starts_with(' ') {
        return Err(replies::syntax("MAIL FROM:<address>"));
    }
    let mut p = MailParams::default();
    let mut seen = Vec::new();
    for (k, v) in params(after)? {
        if seen.contains(&k) {
            return Err(replies::syntax("duplicate parameter"));
        }
        seen.push(k.clone());
        match (k.as_str(), v) {
            ("SIZE", Some(v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                p.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            ("BODY", Some(v)) => {
                p.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    "BINARYMIME" => BodyType::BinaryMime,
                    _ => return Err(replies::syntax("BODY=7BIT|8BITMIME|BINARYMIME")),
                });
            }
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("AUTH", Some(v)) if !v.is_empty() => p.auth = Some(v.to_string()),
            ("SIZE" | "BODY" | "SMTPUTF8" | "AUTH", _) => {
                return Err(replies::syntax(&format!("bad {k} parameter")));
            }
            _ => return Err(replies::unsupported_option(&k)),
        }
    }
    Ok(Command::Mail { from, params: p })
}

fn parse_rcpt(args: &str) -> Result<Command, Reply> {
    let Some(rest) = strip_keyword(args, "TO:") else {
        return Err(replies::syntax("RCPT TO:<address>"));
    };
    let (to, used) =
        address::parse_forward_path(rest).map_err(|e| replies::bad_address(e, false))?;
    let after = &rest[used..];
    if !after.is_empty() && !after.starts_with(' ') {
        return Err(replies::syntax("RCPT TO:<address>"));
    }
    if let Some((k, _)) = params(after)?.into_iter().next() {
        return Err(replies::unsupported_option(&k));
    }
    Ok(Command::Rcpt {
        to,
        params: RcptParams {},
    })
}

fn parse_bdat(args: &str) -> Result<Command, Reply> {
    let mut it = args.split(' ').filter(|s| !s.is_empty());
    let size = match it.next() {
        Some(n) if !n.is_empty() && n.len() <= 19 && n.bytes().all(|b| b.is_ascii_digit()) => n
            .parse::<u64>()
            .map_err(|_| replies::syntax("BDAT size [LAST]"))?,
        _ => return Err(replies::syntax("BDAT size [LAST]")),
    };
    let last = match it.next() {
        None => false,
        Some(l) if l.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(replies::syntax("BDAT size [LAST]")),
    };
    if it.next().is_some() {
        return Err(replies::syntax("BDAT size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> String {
        match parse(line.as_bytes()) {
            Ok(c) => format!("ok {c:?}"),
            Err(r) => format!(
                "{} {}",
                r.code,
                r.enhanced.map(|e| e.to_string()).unwrap_or_default()
            ),
        }
    }

    #[test]
    fn verbs() {
        assert_eq!(parse(b"ehlo x.y\r\n"), Ok(Command::Ehlo("x.y".into())));
        assert_eq!(
            parse(b"HELO [1.2.3.4]"),
            Ok(Command::Helo("[1.2.3.4]".into()))
        );
        assert_eq!(parse(b"data"), Ok(Command::Data));
        assert_eq!(parse(b"Rset\r\n"), Ok(Command::Rset));
        assert_eq!(parse(b"NOOP hi"), Ok(Command::Noop));
        assert_eq!(parse(b"QUIT"), Ok(Command::Quit));
        assert_eq!(parse(b"STARTTLS"), Ok(Command::StartTls));
        assert_eq!(parse(b"HELP"), Ok(Command::Help(None)));
        assert_eq!(parse(b"VRFY bob"), Ok(Command::Vrfy("bob".into())));
        assert_eq!(
            parse(b"BDAT 10 last"),
            Ok(Command::Bdat {
                size: 10,
                last: true
            })
        );
        assert_eq!(
            parse(b"BDAT 0"),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
        assert_eq!(
            parse(b"auth plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            })
        );
    }

    #[test]
    fn mail_rcpt() {
        let m = |from: ReversePath, params: MailParams| Ok(Command::Mail { from, params });
        let a = ReversePath::Mailbox(Mailbox::new("a", "b"));
        assert_eq!(
            parse(b"MAIL FROM:<a@b>"),
            m(a.clone(), MailParams::default())
        );
        assert_eq!(
            parse(b"mail from: <a@b>"),
            m(a.clone(), MailParams::default())
        );
        assert_eq!(
            parse(b"MAIL FROM:<>"),
            m(ReversePath::Null, MailParams::default())
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b> SIZE=100 BODY=8bitmime SMTPUTF8 AUTH=<>"),
            m(
                a,
                MailParams {
                    size: Some(100),
                    body: Some(BodyType::EightBitMime),
                    smtputf8: true,
                    auth: Some("<>".into())
                }
            )
        );
        assert_eq!(
            parse(b"RCPT TO:<postmaster>"),
            Ok(Command::Rcpt {
                to: Mailbox::new("postmaster", ""),
                params: RcptParams {}
            })
        );
        assert_eq!(
            parse(b"rcpt to: <x@y>"),
            Ok(Command::Rcpt {
                to: Mailbox::new("x", "y"),
                params: RcptParams {}
            })
        );
    }

    #[test]
    fn errors() {
        let table = [
            ("FOO", "500 5.5.1"),
            ("", "500 5.5.1"),
            ("EHLO", "501 5.5.2"),
            ("MAIL", "501 5.5.2"),
            ("MAIL TO:<a@b>", "501 5.5.2"),
            ("MAIL FROM:a@b", "501 5.1.7"),
            ("MAIL FROM:<a@b>x", "501 5.5.2"),
            ("MAIL FROM:<a@b> SIZE=x", "501 5.5.2"),
            ("MAIL FROM:<a@b> SIZE=1 SIZE=2", "501 5.5.2"),
            ("MAIL FROM:<a@b> BODY=9BIT", "501 5.5.2"),
            ("MAIL FROM:<a@b> RET=FULL", "555 5.5.4"),
            ("MAIL FROM:<a@b> FOO", "555 5.5.4"),
            ("RCPT TO:<>", "501 5.1.3"),
            ("RCPT TO:<a@b> NOTIFY=NEVER", "555 5.5.4"),
            ("RCPT FROM:<a@b>", "501 5.5.2"),
            ("DATA x", "501 5.5.2"),
            ("BDAT", "501 5.5.2"),
            ("BDAT -1", "501 5.5.2"),
            ("BDAT 99999999999999999999", "501 5.5.2"),
            ("BDAT 1 FIRST", "501 5.5.2"),
            ("AUTH", "501 5.5.2"),
            ("AUTH PLAIN a b", "501 5.5.2"),
            ("VRFY", "501 5.5.2"),
            ("QUIT now", "501 5.5.2"),
            ("MAIL FROM:<a@b>\0", "500 5.5.2"),
        ];
        for (line, want) in table {
            assert_eq!(code(line), want, "{line:?}");
        }
        assert_eq!(parse(b"\xff\xfe").map_err(|r| r.code), Err(500));
    }
}
