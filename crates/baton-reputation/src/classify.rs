//! Reply classification: a remote reply or transport error,
//! normalised, into a [`Category`] and the rule that decided it. Callers pass only what a
//! remote server said or a transport error, never Baton's own replies (KumoMTA's
//! `match_internal` lesson: rules matching its own 4xx kept extending suspensions).
//!
//! Order, first match wins:
//! 1. a 2xx reply is `delivered` (rule `code:<enhanced code>`, else `code:<reply code>`);
//!    no rule can turn an accepted message into anything else;
//! 2. text with no SMTP reply code (`connection refused`, `timed out`) is `transport`
//!    (rule `transport`);
//! 3. operator rules ([`RulesFile::parse`]), in file order;
//! 4. the built-in text rules ([`BUILTIN_RULES`]), in order;
//! 5. the enhanced-code table ([`code_category`], rule `code:<enhanced code>`);
//! 6. a 4xx or 5xx reply that nothing above matched, with or without an enhanced code, is
//!    `other` (rule `code:<enhanced code>`, else `code:<reply code>`): "by class", so the
//!    delivery code defers a 4xx and bounces a 5xx without touching the site or the
//!    address.
//!
//! Layout: [`normalize`]; [`Verdict`] and [`Classifier`]; the built-in rules and the code
//! table; [`RulesFile`] (in `classify/rules_file.rs`), the operator rules file with every
//! problem reported at once.

mod rules_file;

pub use crate::category::{Category, Scope};
use regex::Regex;
pub use rules_file::{RuleError, RulesFile};
use std::sync::LazyLock;
use std::time::Duration;

/// The most bytes a normalised reply keeps.
pub const MAX_LEN: usize = 4096;

/// Normalises a reply for matching and display: continuation lines joined, the reply
/// code and enhanced code they repeat stripped, whitespace collapsed to single spaces,
/// capped at [`MAX_LEN`] bytes on a character boundary.
///
/// `"550-5.1.1 The email account\r\n550-5.1.1 does not exist"` becomes
/// `"550 5.1.1 The email account does not exist"`. Text without a reply code (a
/// transport error) only has its whitespace collapsed. Idempotent.
pub fn normalize(reply: &str) -> String {
    let mut lines = reply
        .split('\n')
        .map(str::trim)
        .filter(|line| !line.is_empty());
    let Some(first) = lines.next() else {
        return String::new();
    };
    let mut out = String::with_capacity(reply.len().min(MAX_LEN));
    let (code, rest) = split_reply_code(first);
    let enhanced = match code {
        Some(code) => {
            out.push_str(code);
            push_words(&mut out, rest);
            split_enhanced(rest).0
        }
        None => {
            push_words(&mut out, first);
            None
        }
    };
    for line in lines {
        if out.len() >= MAX_LEN {
            break;
        }
        let mut line = line;
        if let Some(code) = code {
            // `550-5.1.1 more text`, `550 5.1.1 more text`, `550-more text`.
            if let (Some(c), rest) = split_reply_code(line)
                && c == code
            {
                line = rest;
                if let (Some(e), rest) = split_enhanced(line)
                    && Some(e) == enhanced
                {
                    line = rest;
                }
            }
        }
        push_words(&mut out, line);
    }
    if out.len() > MAX_LEN {
        let mut end = MAX_LEN;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
    }
    out
}

/// Appends the words of `text` to `out`, one space before each (none at the start),
/// stopping once `out` holds [`MAX_LEN`] bytes.
fn push_words(out: &mut String, text: &str) {
    for word in text.split_whitespace() {
        if out.len() >= MAX_LEN {
            return;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
}

/// `"550-text"`, `"550 text"` or `"550"` -> `(Some("550"), "text")`; anything else ->
/// `(None, line)`. A reply code is three digits, the first 2–5, the second 0–5.
fn split_reply_code(line: &str) -> (Option<&str>, &str) {
    let b = line.as_bytes();
    let is_code = b.len() >= 3
        && (b'2'..=b'5').contains(&b[0])
        && (b'0'..=b'5').contains(&b[1])
        && b[2].is_ascii_digit()
        && (b.len() == 3 || b[3] == b'-' || b[3].is_ascii_whitespace());
    if !is_code {
        return (None, line);
    }
    (Some(&line[..3]), line.get(4..).unwrap_or("").trim_start())
}

/// `"5.1.1 text"` -> `(Some("5.1.1"), "text")`: class 2, 4 or 5, subject and detail of one
/// to three digits.
fn split_enhanced(text: &str) -> (Option<&str>, &str) {
    let end = text.find(|c: char| c.is_whitespace()).unwrap_or(text.len());
    let token = &text[..end];
    if parse_enhanced(token).is_some() {
        (Some(token), text[end..].trim_start())
    } else {
        (None, text)
    }
}

/// An enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Enhanced {
    class: u16,
    subject: u16,
    detail: u16,
}

fn parse_enhanced(token: &str) -> Option<Enhanced> {
    let mut parts = token.split('.');
    let mut next = |max_len: usize| -> Option<u16> {
        let p = parts.next()?;
        if p.is_empty() || p.len() > max_len || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let class = next(1)?;
    let subject = next(3)?;
    let detail = next(3)?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some(Enhanced {
        class,
        subject,
        detail,
    })
}

/// A normalised reply taken apart.
struct Parsed<'a> {
    text: &'a str,
    /// The reply code (`550`), if there is one.
    code: Option<&'a str>,
    /// The enhanced code (`5.1.1`), if there is one.
    enhanced: Option<(&'a str, Enhanced)>,
}

impl<'a> Parsed<'a> {
    fn new(text: &'a str) -> Parsed<'a> {
        let (code, rest) = split_reply_code(text);
        let enhanced = code.and_then(|_| {
            let (e, _) = split_enhanced(rest);
            e.and_then(|e| parse_enhanced(e).map(|p| (e, p)))
        });
        Parsed {
            text,
            code,
            enhanced,
        }
    }

    /// The reply's class digit (2, 4, 5), if it has a reply code.
    fn class(&self) -> Option<u8> {
        self.code.map(|c| c.as_bytes()[0] - b'0')
    }

    /// `code:5.1.1`, else `code:550`.
    fn code_rule(&self) -> String {
        match (self.enhanced, self.code) {
            (Some((e, _)), _) => format!("code:{e}"),
            (None, Some(c)) => format!("code:{c}"),
            (None, None) => TRANSPORT_RULE.to_string(),
        }
    }
}

/// The rule name of a reply without an SMTP reply code.
pub const TRANSPORT_RULE: &str = "transport";

/// Repeat a rule must see before it applies (`trigger = { count = 3, within = "1h" }`);
/// counting is the caller's (the site actor's) job. No trigger: immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    pub count: u32,
    pub within: Duration,
}

/// What a reply means and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub category: Category,
    /// The rule that matched: an operator rule's `name`, a built-in rule's name
    /// (`gmail-unusual-rate`), `code:<enhanced code>`, `code:<reply code>` when the reply
    /// has no enhanced code, or `transport`.
    pub rule: String,
    /// For `rate_limited`: the rate is multiplied by this. `None`: `[shaping]
    /// decrease_factor`.
    pub factor: Option<f64>,
    /// For `blocklisted` and `domain_reputation`: the first suspension. `None`:
    /// `[shaping] suspend`.
    pub suspend: Option<Duration>,
    /// `None`: the rule applies at once.
    pub trigger: Option<Trigger>,
    /// The normalised reply ([`normalize`]), for events and `batonctl classify`.
    pub reply: String,
}

impl Verdict {
    /// What the reply speaks about.
    pub fn scope(&self) -> Scope {
        self.category.scope()
    }
}

/// A pattern over enhanced codes: `"5.7.1"`, `"4.*"`, `"5.7.*"`, `"*.1.1"`.
///
/// A reply without an enhanced code matches only a pattern whose segments after the
/// first are all `*` (`"5.*"` matches a bare `550`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodePattern {
    /// `None` is `*`. A pattern of fewer than three segments ending in `*` leaves the
    /// rest `*`.
    segments: [Option<u16>; 3],
}

impl CodePattern {
    /// Parses a pattern; `None` when it is not one.
    pub fn parse(text: &str) -> Option<CodePattern> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        if parts.is_empty() || parts.len() > 3 {
            return None;
        }
        let mut segments = [None; 3];
        for (i, p) in parts.iter().enumerate() {
            segments[i] = match *p {
                "*" => None,
                p if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                    Some(p.parse().ok()?)
                }
                _ => return None,
            };
        }
        // "5" or "5.7" alone would silently mean "5.*"; ask for the star.
        if parts.len() < 3 && parts.last() != Some(&"*") {
            return None;
        }
        if let Some(class) = segments[0]
            && !matches!(class, 2 | 4 | 5)
        {
            return None;
        }
        Some(CodePattern { segments })
    }

    fn matches(&self, reply: &Parsed<'_>) -> bool {
        match reply.enhanced {
            Some((_, e)) => [e.class, e.subject, e.detail]
                .iter()
                .zip(self.segments)
                .all(|(v, s)| s.is_none_or(|s| s == *v)),
            None => match reply.class() {
                Some(class) => {
                    self.segments[1..].iter().all(Option::is_none)
                        && self.segments[0].is_none_or(|s| s == u16::from(class))
                }
                None => false,
            },
        }
    }
}

/// One classification rule, operator's or built-in. It matches when its regex (if any)
/// matches the normalised reply and its code pattern (if any) matches the enhanced code.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub regex: Option<Regex>,
    pub code: Option<CodePattern>,
    pub category: Category,
    pub factor: Option<f64>,
    pub suspend: Option<Duration>,
    pub trigger: Option<Trigger>,
}

impl Rule {
    fn matches(&self, reply: &Parsed<'_>) -> bool {
        // Rules speak about SMTP replies; transport errors never reach them.
        reply.code.is_some()
            && self.code.as_ref().is_none_or(|c| c.matches(reply))
            && self.regex.as_ref().is_none_or(|r| r.is_match(reply.text))
    }

    fn verdict(&self, reply: String) -> Verdict {
        Verdict {
            category: self.category,
            rule: self.name.clone(),
            factor: self.factor,
            suspend: self.suspend,
            trigger: self.trigger,
            reply,
        }
    }
}

/// Operator rules, in file order ([`RulesFile::parse`]).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub rules: Vec<Rule>,
}

impl Rules {
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// A built-in text rule: its regex over the normalised reply decides `category`.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    pub name: &'static str,
    pub regex: &'static str,
    pub category: Category,
    /// For `rate_limited`; `None`: `[shaping] decrease_factor`.
    pub factor: Option<f64>,
    /// For `blocklisted`; `None`: `[shaping] suspend`.
    pub suspend: Option<Duration>,
}

const fn builtin(name: &'static str, regex: &'static str, category: Category) -> Builtin {
    Builtin {
        name,
        regex,
        category,
        factor: None,
        suspend: None,
    }
}

/// The built-in text rules, in the order they are tried. Tested against every fixture
/// of the receivers' replies in `tests/fixtures`.
pub const BUILTIN_RULES: &[Builtin] = &[
    // Microsoft S775, before the generic rate rules. Built-in rules carry no factor or
    // suspension of their own: they use [shaping]'s (the stricter
    // ×0.25 here and 2 h for Yahoo's TSS04 are for an operator rule to set).
    builtin(
        "ms-ip-reputation",
        r"(?i)rate limited due to IP reputation",
        Category::RateLimited,
    ),
    builtin(
        "gmail-unusual-rate",
        r"(?i)unusual (rate|amount) of .*from your IP",
        Category::RateLimited,
    ),
    builtin(
        "gmail-domain-reputation",
        r"(?i)your (DKIM|SPF) domain|your URL domains",
        Category::DomainReputation,
    ),
    builtin(
        "gmail-likely-unsolicited",
        r"(?i)likely unsolicited",
        Category::MessageRejected,
    ),
    builtin(
        "tls-required",
        r"(?i)\bTLS required|must issue a STARTTLS command first",
        Category::TlsRequired,
    ),
    builtin(
        "recipient-rate",
        r"(?i)receiving e?mail (at a rate|too quickly)",
        Category::RecipientThrottled,
    ),
    builtin("ms-rp-rate", r"RP-00[12]", Category::RateLimited),
    builtin(
        "connection-limit",
        r"RP-003|(?i:too many (concurrent )?connections)",
        Category::ConnectionLimited,
    ),
    builtin(
        "ms-block-list",
        r"(?i)on our block list",
        Category::Blocklisted,
    ),
    builtin("yahoo-tss", r"\[I?P?TS?S0[45]\]", Category::Blocklisted),
    builtin("yahoo-bl", r"\[BL2\d\]", Category::Blocklisted),
    builtin(
        "dnsbl-blocked-using",
        r"blocked using",
        Category::Blocklisted,
    ),
    // Only 5xx: a 450's "mailbox unavailable" is RFC 5321's "mailbox busy".
    builtin(
        "mailbox-unavailable",
        r"^5\d\d .*(?i:mailbox (unavailable|not found))",
        Category::BadMailbox,
    ),
    builtin(
        "user-unknown",
        r"^5\d\d .*(?i:\b(user unknown|unknown user|no such (user|mailbox|recipient))\b)",
        Category::BadMailbox,
    ),
    builtin(
        "mailbox-full",
        r"(?i)\b(mailbox (is )?full|over ?quota|quota exceeded)\b",
        Category::MailboxFull,
    ),
    builtin(
        "policy-reasons",
        r"(?i)policy reasons",
        Category::MessageRejected,
    ),
];

static BUILTIN: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    BUILTIN_RULES
        .iter()
        .filter_map(|b| {
            // The patterns are constants, compiled in a test; a bad one is dropped
            // rather than taking the relay down.
            let regex = Regex::new(b.regex).ok()?;
            Some(Rule {
                name: b.name.to_string(),
                regex: Some(regex),
                code: None,
                category: b.category,
                factor: b.factor,
                suspend: b.suspend,
                trigger: None,
            })
        })
        .collect()
});

/// The enhanced-code table (after KumoMTA's `iana.toml`), for a reply no text rule
/// matched. `None`: not in the table (the reply is then `other`, or `delivered` for 2.x.x).
pub fn code_category(class: u16, subject: u16, detail: u16) -> Option<Category> {
    use Category::*;
    Some(match (class, subject, detail) {
        (2, _, _) => Delivered,
        (_, 1, 1 | 3 | 6) => BadMailbox,
        (5, 7, 17) | (_, 2, 1) => InactiveMailbox,
        (5, 7, 18) | (_, 1, 2 | 10) => BadDomain,
        (_, 2, 2) => MailboxFull,
        (_, 4, 1 | 2) => Transport,
        (4, 7, 28) => RateLimited,
        (5, 7, 28) => Blocklisted,
        // Gmail's "rate limited because" SPF, DKIM, TLS-less, DMARC or alignment
        // failed, and Outlook's 5.7.515: not reputation.
        (4, 7, 26 | 27 | 30 | 32 | 40) | (5, 7, 26 | 27 | 30 | 515) => AuthFailure,
        (_, 7, 10 | 29) => TlsRequired,
        (_, 5, 3) => TooManyRecipients,
        (_, 3, 4) | (_, 6, _) | (_, 7, _) => MessageRejected,
        _ => return None,
    })
}

/// Classifies replies: operator rules, then [`BUILTIN_RULES`], then [`code_category`].
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    rules: Rules,
}

impl Classifier {
    /// A classifier with the operator's rules first (`Rules::default()` for none).
    pub fn new(rules: Rules) -> Classifier {
        Classifier { rules }
    }

    /// The operator rules this classifier tries first.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// What `reply` (a remote reply, possibly multi-line, or a transport error) means.
    pub fn classify(&self, reply: &str) -> Verdict {
        let text = normalize(reply);
        let parsed = Parsed::new(&text);
        let plain = |category: Category, rule: String| Verdict {
            category,
            rule,
            factor: None,
            suspend: None,
            trigger: None,
            reply: text.clone(),
        };
        match parsed.class() {
            None => return plain(Category::Transport, TRANSPORT_RULE.to_string()),
            Some(2) => return plain(Category::Delivered, parsed.code_rule()),
            Some(_) => {}
        }
        if let Some(rule) = self
            .rules
            .rules
            .iter()
            .chain(BUILTIN.iter())
            .find(|r| r.matches(&parsed))
        {
            return rule.verdict(text.clone());
        }
        let category = parsed
            .enhanced
            .and_then(|(_, e)| code_category(e.class, e.subject, e.detail))
            .filter(|c| *c != Category::Delivered)
            .unwrap_or(Category::Other);
        plain(category, parsed.code_rule())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_compile() {
        for b in BUILTIN_RULES {
            assert!(Regex::new(b.regex).is_ok(), "{}: {}", b.name, b.regex);
        }
        assert_eq!(BUILTIN.len(), BUILTIN_RULES.len());
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(
            parse_enhanced("5.7.515"),
            Some(Enhanced {
                class: 5,
                subject: 7,
                detail: 515
            })
        );
        assert_eq!(parse_enhanced("5.7"), None);
        assert_eq!(parse_enhanced("3.1.1"), None);
        assert_eq!(parse_enhanced("5.1.1."), None);
        assert_eq!(parse_enhanced("5.1.1000"), None);
    }
}
