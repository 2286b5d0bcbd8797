//! The operator rules file (`shaping.rules_file`): parsed with `toml_edit` so every
//! problem is reported at once with its line, compiled into [`Rules`].

use super::{Category, CodePattern, Rule, Rules, TRANSPORT_RULE, Trigger};
use regex::RegexBuilder;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One problem in a rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub path: PathBuf,
    /// 1-based; the line of the key, else of its rule, else 1.
    pub line: usize,
    /// `rule[2].regex`, or `rules` for the file as a whole.
    pub key: String,
    /// The rule's `name`, when it has one.
    pub rule: Option<String>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.key)?;
        if let Some(name) = &self.rule {
            write!(f, " (rule {name:?})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for RuleError {}

/// The operator rules file (`shaping.rules_file`):
///
/// ```toml
/// [[rule]]
/// name = "comcast-rl000010"
/// regex = 'RL000010'                    # over the normalised reply; regex or code or both
/// code = "4.*"                          # optional: enhanced code pattern
/// category = "domain_reputation"
/// suspend = "5m"                        # blocklisted, domain_reputation
/// factor = 0.5                          # rate_limited, 0 < factor < 1
/// trigger = { count = 3, within = "1h" }  # default: immediate
/// ```
pub enum RulesFile {}

/// The keys a `[[rule]]` may have.
const RULE_KEYS: &[&str] = &[
    "name", "regex", "code", "category", "suspend", "factor", "trigger",
];

/// The largest compiled operator regex, so one rule cannot eat the relay's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl RulesFile {
    /// Parses and compiles a rules file, reporting every problem at once, each with
    /// `path`, its line and its key.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Rules, Vec<RuleError>> {
        let path = path.as_ref();
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let doc = match toml_edit::ImDocument::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                return Err(vec![RuleError {
                    path: path.to_path_buf(),
                    line: e.span().map(|s| line_of(s.start)).unwrap_or(1),
                    key: "rules".into(),
                    rule: None,
                    message: format!(
                        "TOML syntax error: {}",
                        e.message().trim().lines().collect::<Vec<_>>().join(": ")
                    ),
                }]);
            }
        };
        let mut errors = Vec::new();
        let mut error = |line: usize, key: String, rule: Option<&str>, message: String| {
            errors.push(RuleError {
                path: path.to_path_buf(),
                line,
                key,
                rule: rule.map(str::to_string),
                message,
            })
        };
        let mut rules = Vec::new();
        let root = doc.as_table();
        for (key, item) in root.iter() {
            if key != "rule" {
                let line = root
                    .key(key)
                    .and_then(|k| k.span())
                    .or_else(|| item.span())
                    .map(|s| line_of(s.start))
                    .unwrap_or(1);
                error(
                    line,
                    key.to_string(),
                    None,
                    "unknown key: a rules file has only [[rule]] tables".into(),
                );
            }
        }
        let tables: Vec<(usize, &dyn toml_edit::TableLike, Option<usize>)> = match root.get("rule")
        {
            None => Vec::new(),
            Some(toml_edit::Item::ArrayOfTables(a)) => a
                .iter()
                .enumerate()
                .map(|(i, t)| (i, t as &dyn toml_edit::TableLike, t.span().map(|s| s.start)))
                .collect(),
            // `rule = [{ name = "a", ... }, ...]`: the same, inline.
            Some(toml_edit::Item::Value(toml_edit::Value::Array(a)))
                if a.iter().all(|v| v.as_inline_table().is_some()) =>
            {
                a.iter()
                    .filter_map(|v| v.as_inline_table())
                    .enumerate()
                    .map(|(i, t)| (i, t as &dyn toml_edit::TableLike, t.span().map(|s| s.start)))
                    .collect()
            }
            Some(item) => {
                let line = root
                    .key("rule")
                    .and_then(|k| k.span())
                    .or_else(|| item.span())
                    .map(|s| line_of(s.start))
                    .unwrap_or(1);
                error(
                    line,
                    "rule".into(),
                    None,
                    "must be an array of tables ([[rule]])".into(),
                );
                Vec::new()
            }
        };
        let mut names: Vec<(String, usize)> = Vec::new();
        for (index, table, start) in tables {
            let table_line = start.map(line_of).unwrap_or(1);
            let key_line = |k: &str| {
                table
                    .get_key_value(k)
                    .and_then(|(key, item)| key.span().or_else(|| item.span()))
                    .map(|s| line_of(s.start))
                    .unwrap_or(table_line)
            };
            let keyname = |k: &str| format!("rule[{index}].{k}");
            let name = table
                .get("name")
                .and_then(|i| i.as_str())
                .map(str::to_string);
            let rname = name.as_deref();
            let mut ok = true;
            let mut fail = |k: &str, message: String| {
                ok = false;
                error(key_line(k), keyname(k), rname, message);
            };
            for (k, _) in table.iter() {
                if !RULE_KEYS.contains(&k) {
                    fail(k, format!("unknown key (known: {})", RULE_KEYS.join(", ")));
                }
            }
            match (table.get("name"), &name) {
                (None, _) => fail("name", "is required".into()),
                (Some(_), None) => fail("name", "must be a string".into()),
                (Some(_), Some(n)) if n.trim().is_empty() => {
                    fail("name", "must not be empty".into())
                }
                (Some(_), Some(n)) if n.starts_with("code:") || n == TRANSPORT_RULE => fail(
                    "name",
                    "`code:...` and `transport` are the classifier's own rule names".into(),
                ),
                (Some(_), Some(n)) => {
                    if let Some((_, first)) = names.iter().find(|(m, _)| m == n) {
                        fail(
                            "name",
                            format!("duplicate: rule[{first}] has the same name"),
                        );
                    } else {
                        names.push((n.clone(), index));
                    }
                }
            }
            let regex = match table.get("regex") {
                None => None,
                Some(item) => match item.as_str() {
                    None => {
                        fail("regex", "must be a string".into());
                        None
                    }
                    Some(p) => match RegexBuilder::new(p).size_limit(REGEX_SIZE_LIMIT).build() {
                        Ok(r) => Some(r),
                        Err(e) => {
                            let msg = e.to_string();
                            fail(
                                "regex",
                                format!(
                                    "bad regex: {}",
                                    msg.lines()
                                        .map(str::trim)
                                        .filter(|l| !l.is_empty())
                                        .collect::<Vec<_>>()
                                        .join(" ")
                                ),
                            );
                            None
                        }
                    },
                },
            };
            let code = match table.get("code") {
                None => None,
                Some(item) => match item.as_str().map(CodePattern::parse) {
                    Some(Some(c)) => Some(c),
                    _ => {
                        fail(
                            "code",
                            "must be an enhanced code pattern such as \"5.7.1\", \"5.7.*\" or \"4.*\""
                                .into(),
                        );
                        None
                    }
                },
            };
            if table.get("regex").is_none() && table.get("code").is_none() {
                fail("regex", "a rule needs a regex, a code or both".into());
            }
            let category = match table.get("category") {
                None => {
                    fail("category", "is required".into());
                    None
                }
                Some(item) => match item.as_str().map(|s| (s, Category::parse(s))) {
                    Some((_, Some(Category::Delivered))) => {
                        fail(
                            "category",
                            "delivered is not allowed: every 2xx is delivered, nothing else is"
                                .into(),
                        );
                        None
                    }
                    Some((_, Some(c))) => Some(c),
                    Some((s, None)) => {
                        fail(
                            "category",
                            format!(
                                "unknown category {s:?} (known: {})",
                                Category::ALL
                                    .iter()
                                    .filter(|c| **c != Category::Delivered)
                                    .map(|c| c.name())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        );
                        None
                    }
                    None => {
                        fail("category", "must be a string".into());
                        None
                    }
                },
            };
            let factor = match table.get("factor") {
                None => None,
                Some(item) => {
                    let v = item
                        .as_float()
                        .or_else(|| item.as_integer().map(|i| i as f64));
                    match v {
                        Some(f) if f > 0.0 && f < 1.0 => {
                            if category.is_some_and(|c| c != Category::RateLimited) {
                                fail("factor", "applies only to category rate_limited".into());
                            }
                            Some(f)
                        }
                        Some(f) => {
                            fail("factor", format!("{f} is not between 0 and 1 (exclusive)"));
                            None
                        }
                        None => {
                            fail("factor", "must be a number between 0 and 1".into());
                            None
                        }
                    }
                }
            };
            let suspend = match table.get("suspend") {
                None => None,
                Some(item) => match item.as_str().map(parse_duration) {
                    Some(Ok(d)) => {
                        if category.is_some_and(|c| {
                            !matches!(c, Category::Blocklisted | Category::DomainReputation)
                        }) {
                            fail(
                                "suspend",
                                "applies only to categories blocklisted and domain_reputation"
                                    .into(),
                            );
                        }
                        Some(d)
                    }
                    Some(Err(e)) => {
                        fail("suspend", e);
                        None
                    }
                    None => {
                        fail(
                            "suspend",
                            "must be a duration string such as \"15m\"".into(),
                        );
                        None
                    }
                },
            };
            let trigger = match table.get("trigger") {
                None => None,
                Some(item) => match item.as_table_like() {
                    None => {
                        fail(
                            "trigger",
                            "must be a table such as { count = 3, within = \"1h\" }".into(),
                        );
                        None
                    }
                    Some(t) => {
                        let mut problems = Vec::new();
                        for (k, _) in t.iter() {
                            if k != "count" && k != "within" {
                                problems.push(format!("unknown key {k:?} (known: count, within)"));
                            }
                        }
                        let count = match t.get("count").and_then(|c| c.as_integer()) {
                            Some(c) if (1..=i64::from(u32::MAX)).contains(&c) => {
                                u32::try_from(c).ok()
                            }
                            _ => {
                                problems.push("count must be a positive integer".into());
                                None
                            }
                        };
                        let within = match t.get("within").and_then(|w| w.as_str()) {
                            Some(w) => match parse_duration(w) {
                                Ok(d) => Some(d),
                                Err(e) => {
                                    problems.push(format!("within: {e}"));
                                    None
                                }
                            },
                            None => {
                                problems.push("within must be a duration string".into());
                                None
                            }
                        };
                        for p in problems {
                            fail("trigger", p);
                        }
                        count
                            .zip(within)
                            .map(|(count, within)| Trigger { count, within })
                    }
                },
            };
            if let (true, Some(name), Some(category)) = (ok, name, category) {
                rules.push(Rule {
                    name,
                    regex,
                    code,
                    category,
                    factor,
                    suspend,
                    trigger,
                });
            }
        }
        if errors.is_empty() {
            Ok(Rules { rules })
        } else {
            errors.sort_by_key(|e| e.line);
            Err(errors)
        }
    }
}

/// A positive humantime duration (`"15m"`, `"2h 30m"`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{text:?} is not a duration such as \"15m\": {e}")),
    }
}
