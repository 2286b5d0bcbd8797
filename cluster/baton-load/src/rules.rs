//! Scripted replies for the sink: a rules file lets a test play a real
//! receiver (Gmail's `421-4.7.28` rate limit, Outlook's `RP-003` connection
//! limit, a multi-line `550-5.1.1`, ...).
//!
//! ```toml
//! [[rule]]
//! stage = "data"                 # connect | ehlo | mail | rcpt | data (end of data)
//! rcpt = "*@gmail.test"          # optional glob on the recipient (rcpt, data)
//! rate = "60/min"                # optional: the first 60 accepted per minute pass
//! reply = "421-4.7.28 line one\n421 4.7.28 last line"
//! close = true                   # optional: close the connection after the reply
//!
//! [[rule]]
//! stage = "connect"
//! max_sessions = 2               # optional: applies above 2 concurrent sessions
//! reply = "421 RP-003 too many connections"
//! ```
//!
//! Per stage the first rule whose conditions all hold answers; when none
//! does the sink behaves as without rules.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// Where in the session a rule answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Instead of the 220 greeting (the connection is always closed).
    Connect,
    /// The reply to EHLO/HELO.
    Ehlo,
    /// The reply to MAIL FROM.
    Mail,
    /// The reply to RCPT TO (the recipient is not accepted).
    Rcpt,
    /// The final reply after the message data (the message is not accepted).
    Data,
}

impl Stage {
    fn parse(s: &str) -> Option<Stage> {
        Some(match s.to_ascii_lowercase().as_str() {
            "connect" => Stage::Connect,
            "ehlo" | "helo" => Stage::Ehlo,
            "mail" => Stage::Mail,
            "rcpt" => Stage::Rcpt,
            "data" => Stage::Data,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Ehlo => "ehlo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
        }
    }
}

/// `R` accepted messages per `window`; windows are aligned to the Unix epoch
/// (a `5/s` window is one wall-clock second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub window: Duration,
}

impl Rate {
    /// `"R/s"`, `"R/min"`, `"R/h"`, `"R/10s"` (any humantime duration).
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (n, w) = s
            .split_once('/')
            .ok_or_else(|| format!("rate {s:?}: expected R/s, R/min or R/<duration>"))?;
        let count: u64 = n
            .trim()
            .parse()
            .map_err(|_| format!("rate {s:?}: {n:?} is not a count"))?;
        let w = w.trim();
        let w = if w.starts_with(|c: char| c.is_ascii_digit()) {
            w.to_string()
        } else {
            format!("1{w}")
        };
        let window = humantime::parse_duration(&w).map_err(|e| format!("rate {s:?}: {e}"))?;
        if window < Duration::from_millis(1) {
            return Err(format!("rate {s:?}: the window must be at least 1ms"));
        }
        Ok(Rate { count, window })
    }

    fn window_ms(&self) -> u64 {
        self.window.as_millis().max(1) as u64
    }

    /// Index of the window containing `now_ms` (milliseconds since the epoch).
    pub fn window_index(&self, now_ms: u64) -> u64 {
        now_ms / self.window_ms()
    }
}

/// One parsed rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub stage: Stage,
    /// Lower-cased glob on the whole recipient address.
    pub rcpt: Option<String>,
    /// The reply exactly as written on the wire (CRLF after every line).
    pub reply: String,
    /// The reply code (first three digits).
    pub code: u16,
    pub rate: Option<Rate>,
    pub max_sessions: Option<usize>,
    pub close: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    stage: String,
    rcpt: Option<String>,
    reply: String,
    rate: Option<String>,
    max_sessions: Option<usize>,
    close: Option<bool>,
}

/// Maximum number of rules (keeps the per-command scan small).
const MAX_RULES: usize = 1000;
/// Maximum lines in one reply.
const MAX_REPLY_LINES: usize = 100;

/// Validate `reply` and return it with CRLF line ends, plus its code.
///
/// Lines are separated by `\n` (a `\r` before it is dropped). Every line
/// starts with the same 3-digit 4xx or 5xx code, followed by `-` on every
/// line but the last and by a space (or nothing) on the last.
pub fn format_reply(reply: &str) -> Result<(String, u16), String> {
    let body = reply.strip_suffix('\n').unwrap_or(reply);
    let lines: Vec<&str> = body
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    if lines.len() > MAX_REPLY_LINES {
        return Err(format!("reply has more than {MAX_REPLY_LINES} lines"));
    }
    let mut code: Option<&str> = None;
    let mut out = String::with_capacity(reply.len() + 2 * lines.len());
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        let b = line.as_bytes();
        if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) {
            return Err(format!(
                "reply line {} {line:?} does not start with a 3-digit code",
                i + 1
            ));
        }
        if !matches!(b[0], b'4' | b'5') {
            return Err(format!(
                "reply line {} {line:?}: the code must be 4xx or 5xx",
                i + 1
            ));
        }
        match code {
            None => code = Some(&line[..3]),
            Some(c) if c != &line[..3] => {
                return Err(format!(
                    "reply line {} {line:?}: every line must have the code {c}",
                    i + 1
                ));
            }
            Some(_) => {}
        }
        let sep = b.get(3).copied();
        let ok = if last {
            matches!(sep, None | Some(b' '))
        } else {
            sep == Some(b'-')
        };
        if !ok {
            return Err(format!(
                "reply line {} {line:?}: {}",
                i + 1,
                if last {
                    "the last line needs a space after the code"
                } else {
                    "a line before the last needs '-' after the code"
                }
            ));
        }
        if line.chars().any(|c| c.is_control()) {
            return Err(format!(
                "reply line {} {line:?} has a control character",
                i + 1
            ));
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    let code = code
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "empty reply".to_string())?;
    Ok((out, code))
}

/// Case-insensitive glob (`*` any run, `?` one character) on the whole text.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().flat_map(char::to_lowercase).collect();
    let t: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    // Classic two-pointer matcher with one backtrack point: O(|p|·|t|).
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A parsed rules file.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub rules: Vec<Rule>,
}

impl Rules {
    /// Parse the TOML text of a rules file.
    pub fn parse(text: &str) -> Result<Rules, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string())?;
        if raw.rule.len() > MAX_RULES {
            return Err(format!("more than {MAX_RULES} rules"));
        }
        let mut rules = Vec::with_capacity(raw.rule.len());
        for (i, r) in raw.rule.into_iter().enumerate() {
            let n = i + 1;
            let stage = Stage::parse(&r.stage).ok_or_else(|| {
                format!(
                    "rule {n}: stage {:?} is not connect, ehlo, mail, rcpt or data",
                    r.stage
                )
            })?;
            let (reply, code) = format_reply(&r.reply).map_err(|e| format!("rule {n}: {e}"))?;
            let rate = match &r.rate {
                None => None,
                Some(s) => Some(Rate::parse(s).map_err(|e| format!("rule {n}: {e}"))?),
            };
            if r.rcpt.is_some() && !matches!(stage, Stage::Rcpt | Stage::Data) {
                return Err(format!(
                    "rule {n}: rcpt applies to the rcpt and data stages only"
                ));
            }
            if r.max_sessions.is_some() && stage != Stage::Connect {
                return Err(format!(
                    "rule {n}: max_sessions applies to the connect stage only"
                ));
            }
            rules.push(Rule {
                stage,
                rcpt: r.rcpt.map(|g| g.to_lowercase()),
                reply,
                code,
                rate,
                max_sessions: r.max_sessions,
                close: stage == Stage::Connect || r.close.unwrap_or(false),
            });
        }
        Ok(Rules { rules })
    }

    /// Read and parse a rules file.
    pub fn load(path: &std::path::Path) -> Result<Rules, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Rules::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// What a matching rule answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Index of the rule in the file (0-based).
    pub index: usize,
    pub code: u16,
    pub reply: String,
    pub close: bool,
}

/// Rules plus their live counters (accepted messages per window, hits).
#[derive(Debug, Default)]
pub struct RuleState {
    rules: Rules,
    /// Per rule: (window index, messages accepted in it) for rate rules.
    windows: Vec<(u64, u64)>,
    /// Per rule: how often it answered.
    hits: Vec<u64>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RuleState {
    pub fn new(rules: Rules) -> RuleState {
        let n = rules.rules.len();
        RuleState {
            rules,
            windows: vec![(0, 0); n],
            hits: vec![0; n],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.rules.len()
    }

    /// Hits per rule, in file order.
    pub fn hits(&self) -> Vec<u64> {
        self.hits.clone()
    }

    fn rcpt_matches(rule: &Rule, rcpts: &[String]) -> bool {
        match &rule.rcpt {
            None => true,
            Some(g) => rcpts.iter().any(|r| glob_match(g, r)),
        }
    }

    fn accepted_in_window(&self, i: usize, rate: &Rate, now_ms: u64) -> u64 {
        let (w, n) = self.windows[i];
        if w == rate.window_index(now_ms) { n } else { 0 }
    }

    /// The first rule of `stage` whose conditions hold, counted as a hit.
    /// `rcpts` is the recipient being tried (rcpt) or the accepted ones
    /// (data); `sessions` counts the current one.
    pub fn check(
        &mut self,
        stage: Stage,
        rcpts: &[String],
        sessions: usize,
        now_ms: u64,
    ) -> Option<Hit> {
        let mut found = None;
        for (i, rule) in self.rules.rules.iter().enumerate() {
            if rule.stage != stage || !Self::rcpt_matches(rule, rcpts) {
                continue;
            }
            if rule.max_sessions.is_some_and(|max| sessions <= max) {
                continue;
            }
            if let Some(rate) = &rule.rate
                && self.accepted_in_window(i, rate, now_ms) < rate.count
            {
                continue;
            }
            found = Some(Hit {
                index: i,
                code: rule.code,
                reply: rule.reply.clone(),
                close: rule.close,
            });
            break;
        }
        if let Some(h) = &found {
            self.hits[h.index] += 1;
        }
        found
    }

    /// Count an accepted message in the windows of the rate rules it matches.
    pub fn record_accept(&mut self, rcpts: &[String], now_ms: u64) {
        for (i, rule) in self.rules.rules.iter().enumerate() {
            let Some(rate) = &rule.rate else { continue };
            if !Self::rcpt_matches(rule, rcpts) {
                continue;
            }
            let idx = rate.window_index(now_ms);
            let w = &mut self.windows[i];
            if w.0 == idx {
                w.1 += 1;
            } else {
                *w = (idx, 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn multi_line_reply_is_written_with_crlf() {
        let (r, c) =
            format_reply("550-5.1.1 line one\n550-5.1.1 line two\r\n550 5.1.1 last").unwrap();
        assert_eq!(
            r,
            "550-5.1.1 line one\r\n550-5.1.1 line two\r\n550 5.1.1 last\r\n"
        );
        assert_eq!(c, 550);
        assert_eq!(
            format_reply("421 4.7.0 bye\n").unwrap().0,
            "421 4.7.0 bye\r\n"
        );
        assert_eq!(format_reply("421").unwrap().0, "421\r\n");
    }

    #[test]
    fn bad_replies_are_refused() {
        for bad in [
            "",
            "55 x",
            "250 ok",
            "550 5.1.1 a\n550 5.1.1 b",   // first line needs '-'
            "550-5.1.1 a\n550-5.1.1 b",   // last line needs ' '
            "550-5.1.1 a\n551 5.1.1 b",   // codes differ
            "550-5.1.1 a\n\n550 5.1.1 b", // empty line
            "550 tab\there",
        ] {
            assert!(format_reply(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("*@gmail.test", "Bob@GMAIL.test"));
        assert!(glob_match("bob@*", "bob@x"));
        assert!(glob_match("b?b@x", "bab@x"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYbc"));
        assert!(!glob_match("a*b*c", "aXXbYYbcd"));
        assert!(!glob_match("bob@x", "bob@xy"));
        assert!(!glob_match("?", ""));
    }

    #[test]
    fn rates() {
        assert_eq!(
            Rate::parse("60/min").unwrap(),
            Rate {
                count: 60,
                window: Duration::from_secs(60)
            }
        );
        assert_eq!(Rate::parse("5/s").unwrap().window, Duration::from_secs(1));
        assert_eq!(
            Rate::parse(" 7 / 10s").unwrap().window,
            Duration::from_secs(10)
        );
        assert_eq!(
            Rate::parse("1000/h").unwrap().window,
            Duration::from_secs(3600)
        );
        for bad in ["60", "x/min", "5/parsec", "5/0s", "-1/s"] {
            assert!(Rate::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn parses_a_file() {
        let r = Rules::parse(
            r#"
            [[rule]]
            stage = "connect"
            max_sessions = 2
            reply = "421 RP-003 too many connections"

            [[rule]]
            stage = "rcpt"
            rcpt = "Gone@*"
            reply = """550-5.1.1 The email account that you tried to reach does not exist.
550 5.1.1 - gsmtp"""

            [[rule]]
            stage = "data"
            rate = "60/min"
            reply = "421-4.7.28 unusual rate\n421 4.7.28 - gsmtp"
            close = true
            "#,
        )
        .unwrap();
        assert_eq!(r.rules.len(), 3);
        assert_eq!(r.rules[0].stage, Stage::Connect);
        assert!(r.rules[0].close, "connect rules always close");
        assert_eq!(r.rules[0].max_sessions, Some(2));
        assert_eq!(r.rules[1].rcpt.as_deref(), Some("gone@*"));
        assert!(
            r.rules[1]
                .reply
                .ends_with("exist.\r\n550 5.1.1 - gsmtp\r\n")
        );
        assert!(!r.rules[1].close);
        assert_eq!(r.rules[2].code, 421);
        assert_eq!(r.rules[2].rate.unwrap().count, 60);
        assert!(r.rules[2].close);
        assert!(Rules::parse("").unwrap().rules.is_empty());
    }

    #[test]
    fn bad_files_name_the_rule() {
        for (text, want) in [
            (
                "[[rule]]\nstage = \"quit\"\nreply = \"421 x\"",
                "rule 1: stage",
            ),
            (
                "[[rule]]\nstage = \"mail\"\nrcpt = \"a\"\nreply = \"421 x\"",
                "rcpt applies",
            ),
            (
                "[[rule]]\nstage = \"rcpt\"\nmax_sessions = 1\nreply = \"421 x\"",
                "max_sessions",
            ),
            (
                "[[rule]]\nstage = \"rcpt\"\nreply = \"250 ok\"",
                "4xx or 5xx",
            ),
            (
                "[[rule]]\nstage = \"rcpt\"\nreply = \"421 x\"\nrate = \"1\"",
                "rate",
            ),
            (
                "[[rule]]\nstage = \"rcpt\"\nreply = \"421 x\"\nextra = 1",
                "unknown field",
            ),
            ("[[rule]]\nstage = \"rcpt\"", "reply"),
        ] {
            let e = Rules::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn first_matching_rule_of_the_stage_wins() {
        let r = Rules::parse(
            "[[rule]]\nstage = \"rcpt\"\nrcpt = \"a@*\"\nreply = \"550 5.1.1 a\"\n\
             [[rule]]\nstage = \"rcpt\"\nreply = \"450 4.2.1 all\"\n\
             [[rule]]\nstage = \"rcpt\"\nrcpt = \"b@*\"\nreply = \"550 5.1.1 b\"\n",
        )
        .unwrap();
        let mut st = RuleState::new(r);
        let h = st.check(Stage::Rcpt, &s(&["a@x"]), 1, 0).unwrap();
        assert_eq!((h.index, h.code), (0, 550));
        let h = st.check(Stage::Rcpt, &s(&["b@x"]), 1, 0).unwrap();
        assert_eq!((h.index, h.code), (1, 450));
        assert_eq!(st.check(Stage::Mail, &[], 1, 0), None);
        assert_eq!(st.hits(), vec![1, 1, 0]);
    }

    #[test]
    fn max_sessions_applies_above_the_limit() {
        let r =
            Rules::parse("[[rule]]\nstage = \"connect\"\nmax_sessions = 2\nreply = \"421 busy\"")
                .unwrap();
        let mut st = RuleState::new(r);
        assert!(st.check(Stage::Connect, &[], 1, 0).is_none());
        assert!(st.check(Stage::Connect, &[], 2, 0).is_none());
        assert!(st.check(Stage::Connect, &[], 3, 0).is_some());
    }

    #[test]
    fn rate_window_accepts_r_then_refuses_until_the_next_window() {
        let r = Rules::parse(
            "[[rule]]\nstage = \"data\"\nrcpt = \"*@g.test\"\nrate = \"2/s\"\nreply = \"421-4.7.28 a\\n421 4.7.28 b\"",
        )
        .unwrap();
        let mut st = RuleState::new(r);
        let g = s(&["u@g.test"]);
        let other = s(&["u@o.test"]);
        let t0 = 5_000; // the start of a one-second window
        for t in [t0, t0 + 10] {
            assert!(st.check(Stage::Data, &g, 1, t).is_none());
            st.record_accept(&g, t);
        }
        let h = st.check(Stage::Data, &g, 1, t0 + 999).unwrap();
        assert_eq!(h.reply, "421-4.7.28 a\r\n421 4.7.28 b\r\n");
        // Another domain is neither limited nor counted.
        assert!(st.check(Stage::Data, &other, 1, t0 + 999).is_none());
        st.record_accept(&other, t0 + 999);
        // The next window starts from zero.
        assert!(st.check(Stage::Data, &g, 1, t0 + 1000).is_none());
        st.record_accept(&g, t0 + 1000);
        assert!(st.check(Stage::Data, &g, 1, t0 + 1500).is_none());
        st.record_accept(&g, t0 + 1500);
        assert!(st.check(Stage::Data, &g, 1, t0 + 1999).is_some());
        assert_eq!(st.hits(), vec![2]);
    }
}
