//! MTA-STS (RFC 8461) without IO: the `_mta-sts` TXT record, the policy file, and which
//! MX hosts a policy permits. Fetching is [`crate::mta_sts_fetch`]'s.

use std::fmt;

/// The largest `max_age` a policy may give (one year, RFC 8461 §3.2).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// A policy's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only matching MX hosts, with verified TLS; otherwise no delivery.
    Enforce,
    /// Deliver as without a policy; report (count) what would have failed.
    Testing,
    /// No policy: a cached one is dropped.
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "enforce" => Some(Mode::Enforce),
            "testing" => Some(Mode::Testing),
            "none" => Some(Mode::None),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// The `mx:` patterns, lower-cased, without a trailing dot.
    pub mx: Vec<String>,
    /// Seconds.
    pub max_age: u64,
}

impl Policy {
    /// Whether the policy permits the MX host `host`.
    pub fn permits(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }
}

/// The `id=` of a domain's `_mta-sts` TXT records (each record's strings already joined),
/// or `None` when no record announces a policy. Records that do not start with
/// `v=STSv1` are not MTA-STS records and are ignored; more than one that does, or one
/// that does not parse, is an error (RFC 8461 §3.1: treated as no policy published).
pub fn parse_txt(records: &[String]) -> Result<Option<String>, String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| {
            let r = r.trim_start();
            r.starts_with("v=STSv1")
                && matches!(r.as_bytes().get(7), None | Some(b';' | b' ' | b'\t'))
        })
        .collect();
    match sts.as_slice() {
        [] => Ok(None),
        [one] => parse_txt_record(one).map(Some),
        _ => Err(format!(
            "{} TXT records start with v=STSv1 (one is allowed)",
            sts.len()
        )),
    }
}

/// One `v=STSv1; id=...;` record: its id.
fn parse_txt_record(record: &str) -> Result<String, String> {
    let mut id = None;
    for (i, field) in record.split(';').enumerate() {
        let field = field.trim_matches(|c| c == ' ' || c == '\t');
        if field.is_empty() {
            continue;
        }
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!("TXT record field {field:?} has no '='"));
        };
        match key {
            "v" if i == 0 && value == "STSv1" => {}
            "v" => return Err("TXT record: v=STSv1 must come first, once".into()),
            "id" => {
                if id.is_some() {
                    return Err("TXT record has two ids".into());
                }
                if value.is_empty()
                    || value.len() > 32
                    || !value.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err(format!(
                        "TXT record id {value:?} is not 1 to 32 letters and digits"
                    ));
                }
                id = Some(value.to_string());
            }
            // Other extension fields are ignored (RFC 8461 §3.1).
            _ => {}
        }
    }
    id.ok_or_else(|| "TXT record has no id".to_string())
}

/// Parses a policy file (RFC 8461 §3.2): `key: value` lines ended by CRLF or LF;
/// `version: STSv1`, `mode`, `max_age` once each, `mx` one or more times (none only
/// with `mode: none`); unknown keys are ignored.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("line {}: no ':' in {line:?}", n + 1));
        };
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        let once = |seen: bool, what: &str| {
            if seen {
                Err(format!("line {}: {what} given twice", n + 1))
            } else {
                Ok(())
            }
        };
        match key {
            "version" => {
                once(version.is_some(), "version")?;
                if value != "STSv1" {
                    return Err(format!("unsupported version {value:?} (STSv1 is)"));
                }
                version = Some(());
            }
            "mode" => {
                once(mode.is_some(), "mode")?;
                mode =
                    Some(Mode::parse(value).ok_or_else(|| {
                        format!("mode {value:?} is not enforce, testing or none")
                    })?);
            }
            "max_age" => {
                once(max_age.is_some(), "max_age")?;
                if value.is_empty()
                    || value.len() > 10
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(format!("max_age {value:?} is not a number of seconds"));
                }
                let secs: u64 = value
                    .parse()
                    .map_err(|_| format!("max_age {value:?} is not a number of seconds"))?;
                if secs > MAX_AGE_LIMIT {
                    return Err(format!("max_age {secs} is over {MAX_AGE_LIMIT}"));
                }
                max_age = Some(secs);
            }
            "mx" => mx.push(mx_pattern(value)?),
            // Unknown keys are ignored (RFC 8461 §3.2).
            _ => {}
        }
    }
    if version.is_none() {
        return Err("no version field".into());
    }
    let mode = mode.ok_or("no mode field")?;
    let max_age = max_age.ok_or("no max_age field")?;
    if mx.is_empty() && mode != Mode::None {
        return Err(format!("mode {mode} without any mx field"));
    }
    Ok(Policy { mode, mx, max_age })
}

/// An `mx:` value, checked and normalised: a host name, or `*.` and a host name.
fn mx_pattern(value: &str) -> Result<String, String> {
    let v = value.trim_end_matches('.').to_ascii_lowercase();
    let name = v.strip_prefix("*.").unwrap_or(&v);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(format!("mx {value:?} is not a host name or *.host name"));
    }
    Ok(v)
}

/// Whether the MX host `host` matches `pattern` (lower-cased, no trailing dot): exactly,
/// or, for `*.suffix`, as one more label in front of `suffix`.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => host == pattern,
    }
}

#[cfg(test)]
#[path = "mta_sts_tests.rs"]
mod tests;
