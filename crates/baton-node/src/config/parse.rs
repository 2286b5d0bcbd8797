//! Reading TOML into [`Config`] while collecting every parse and type error, not just the
//! first.
//!
//! serde stops at the first error, so the text is parsed into a [`toml::Value`] tree
//! first (a TOML syntax error is the one error nothing can be checked past), then
//! deserialized; each error is recorded with its key and line, the offending key is
//! removed from the tree (a required key that is missing: the table holding it) and the
//! tree is deserialized again, at most once per key in it. Removing an array element
//! shifts the later ones, so paths are translated back to the file's indices before they
//! are reported, including the keys of [`Config::validate`]'s problems on the result.

use super::{Config, ConfigError};
use toml::Value;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// `smtp.listener[0].mode`; the empty path is `config` (the whole file).
pub(super) fn display(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    if s.is_empty() { "config".into() } else { s }
}

/// The inverse of [`display`] for the keys `validate` names (`dkim[1].key_file`).
pub(super) fn split(key: &str) -> Vec<Seg> {
    let mut path = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            path.push(Seg::Key(name.to_string()));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let Some((n, tail)) = r.split_once(']') else {
                break;
            };
            match n.parse() {
                Ok(i) => path.push(Seg::Index(i)),
                Err(_) => path.push(Seg::Key(n.to_string())),
            }
            rest = tail;
        }
    }
    path
}

/// What [`parse`] made of a text.
pub(super) struct Parsed {
    /// `None` when nothing could be deserialized (a TOML syntax error).
    pub config: Option<Config>,
    /// Parse and type errors, keys as in the file.
    pub errors: Vec<ConfigError>,
    /// Paths removed from the tree (as in the file): the result holds defaults there.
    pub removed: Vec<Vec<Seg>>,
    /// Paths removed, each as it was when removed, in order (to translate later paths).
    removals: Vec<Vec<Seg>>,
}

impl Parsed {
    /// A path in the result (after removals) as it is in the file.
    pub fn original(&self, path: &[Seg]) -> Vec<Seg> {
        to_original(&self.removals, path)
    }

    /// Whether a problem `validate` reports at `path` (as in the file) may be a
    /// consequence of a removal: at a removed key, under it, or above it (a list that is
    /// empty because its only bad element went).
    pub fn touches_removed(&self, path: &[Seg]) -> bool {
        self.removed
            .iter()
            .any(|r| r.starts_with(path) || path.starts_with(r))
    }
}

fn to_original(removals: &[Vec<Seg>], path: &[Seg]) -> Vec<Seg> {
    let mut path = path.to_vec();
    for r in removals.iter().rev() {
        let Some((Seg::Index(k), array)) = r.split_last() else {
            continue;
        };
        if path.len() > array.len()
            && path.starts_with(array)
            && let Seg::Index(j) = &mut path[array.len()]
            && *j >= *k
        {
            *j += 1;
        }
    }
    path
}

/// Parses `text`, collecting every error (see the module docs).
pub(super) fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed {
        config: None,
        errors: Vec::new(),
        removed: Vec::new(),
        removals: Vec::new(),
    };
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let e: toml::de::Error = e;
            parsed.errors.push(ConfigError {
                key: "config".into(),
                reason: format!(
                    "TOML syntax error{}: {}; nothing after it can be checked",
                    e.span()
                        .map(|s| format!(" at line {}", line_of(text, s.start)))
                        .unwrap_or_default(),
                    e.message().trim().lines().collect::<Vec<_>>().join(": ")
                ),
            });
            return parsed;
        }
    };
    // The same text again, for the line of each key (toml::Value keeps no positions).
    let doc = toml_edit::ImDocument::parse(text).ok();
    let line = |path: &[Seg]| {
        doc.as_ref()
            .and_then(|d| find(d.as_item(), path))
            .map(|start| line_of(text, start))
    };
    let mut tree = Value::Table(table);
    let attempts = count(&tree) + 1;
    for _ in 0..attempts {
        let err = match serde_path_to_error::deserialize::<_, Config>(tree.clone()) {
            Ok(config) => {
                parsed.config = Some(config);
                return parsed;
            }
            Err(e) => e,
        };
        let mut path = Vec::new();
        for seg in err.path() {
            match seg {
                serde_path_to_error::Segment::Map { key } => path.push(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => path.push(Seg::Index(*index)),
                // Variant names of an enum: not a place in the tree.
                serde_path_to_error::Segment::Enum { .. } => {}
                serde_path_to_error::Segment::Unknown => break,
            }
        }
        let message = err.into_inner().message().trim_end().to_string();
        let original = parsed.original(&path);
        let (key, reason) = match missing_field(&message) {
            Some(field) => {
                let mut key = original.clone();
                key.push(Seg::Key(field.to_string()));
                (key, "is required".to_string())
            }
            None => (original.clone(), message),
        };
        // A required key already reported as bad and removed: no second error for it.
        if !parsed.removed.contains(&key) {
            let at = line(&key)
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default();
            parsed.errors.push(ConfigError {
                key: display(&key),
                reason: format!("{reason}{at}"),
            });
        }
        if !remove(&mut tree, &path) {
            break;
        }
        parsed.removals.push(path);
        parsed.removed.push(original);
    }
    parsed.errors.push(ConfigError {
        key: "config".into(),
        reason: "the checks stopped here: fix the errors above and run again".into(),
    });
    parsed
}

/// `missing field `x`` (serde's wording) -> `x`.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")?
        .split('`')
        .next()
        .filter(|f| !f.is_empty())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Keys and array elements in a tree: a bound on the removals it can take.
fn count(v: &Value) -> usize {
    match v {
        Value::Table(t) => t.values().map(|v| 1 + count(v)).sum(),
        Value::Array(a) => a.iter().map(|v| 1 + count(v)).sum(),
        _ => 0,
    }
}

/// Removes the key or element at `path`; false when there is none (or the path is empty).
fn remove(tree: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut v = tree;
    for seg in parents {
        v = match (seg, v) {
            (Seg::Key(k), Value::Table(t)) => match t.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, v) {
        (Seg::Key(k), Value::Table(t)) => t.remove(k).is_some(),
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

/// Where the key or element at `path` is in the text; for one that is not there (a
/// missing key), where its deepest existing table or key is.
fn find(root: &toml_edit::Item, path: &[Seg]) -> Option<usize> {
    let mut item = root;
    let mut found = None;
    for seg in path {
        let (child, span) = match seg {
            Seg::Key(k) => match item.as_table_like().and_then(|t| t.get_key_value(k)) {
                Some((key, child)) => (child, key.span().or_else(|| child.span())),
                None => break,
            },
            Seg::Index(i) => match item.get(*i) {
                Some(child) => (child, child.span()),
                None => break,
            },
        };
        found = span.map(|s| s.start).or(found);
        item = child;
    }
    found
}
