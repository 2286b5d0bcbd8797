//! What a config takes from outside its file: environment variables (`${NAME}` in the
//! text), the node id from the host name, SMTP users from `smtp.users_file`, and its own
//! address left out of `cluster.join`. These let one file serve every pod of a
//! StatefulSet, with secrets kept out of it.

use super::{ConfigError, UserConfig, valid_domain_pattern};
use serde::Deserialize;
use std::path::Path;

/// Replaces each `${NAME}` with `lookup(NAME)`; `$${` is a literal `${`. Lines whose
/// first non-blank character is `#` (TOML comments) are copied as they are. Every unset
/// variable and malformed reference is an error naming its line.
pub(super) fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<ConfigError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') || !line.contains("${") {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("${") {
            if rest[..at].ends_with('$') {
                out.push_str(&rest[..at - 1]);
                out.push_str("${");
                rest = &rest[at + 2..];
                continue;
            }
            out.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let Some(end) = after.find('}') else {
                errors.push(env_error(n, "`${` without a closing `}`".into()));
                rest = "";
                break;
            };
            let name = &after[..end];
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                errors.push(env_error(
                    n,
                    format!("`${{{name}}}` is not an environment variable name"),
                ));
            } else if let Some(value) = lookup(name) {
                out.push_str(&value);
            } else {
                errors.push(env_error(
                    n,
                    format!("environment variable {name} is not set"),
                ));
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn env_error(line: usize, reason: String) -> ConfigError {
    ConfigError {
        key: "config".into(),
        reason: format!("line {}: {reason}", line + 1),
    }
}

/// Applies what comes from outside the file to a parsed config, before it is validated.
pub(super) fn resolve(config: &mut super::Config, errors: &mut Vec<ConfigError>) {
    if config.node.id_from_hostname {
        match hostname().and_then(|h| id_from_hostname(&h)) {
            Ok(id) => config.node.id = id,
            Err(reason) => errors.push(ConfigError {
                key: "node.id_from_hostname".into(),
                reason,
            }),
        }
    }
    if let Some(path) = config.smtp.users_file.clone() {
        match users_from_file(&path) {
            Ok(users) => config.smtp.users.extend(users),
            Err(reason) => errors.push(ConfigError {
                key: "smtp.users_file".into(),
                reason,
            }),
        }
    }
    let own = config.cluster.advertise.clone();
    config.cluster.join.retain(|seed| *seed != own);
}

/// The kernel's host name (a pod's name in Kubernetes), else `$HOSTNAME`.
fn hostname() -> Result<String, String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()));
    name.ok_or_else(|| "cannot read the host name".to_string())
}

/// `baton-2` → 3: the trailing `-N` plus one, as node ids start at 1.
pub(super) fn id_from_hostname(host: &str) -> Result<u64, String> {
    let short = host.split('.').next().unwrap_or(host);
    let ordinal = short
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .filter(|n| *n < u64::MAX);
    match ordinal {
        Some(n) => Ok(n + 1),
        None => Err(format!(
            "the host name {host:?} does not end in -N (a StatefulSet pod's ordinal); \
             set node.id instead"
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserConfig>,
}

/// The `[[user]]` tables of a users file, each checked as `[[smtp.user]]` is.
fn users_from_file(path: &Path) -> Result<Vec<UserConfig>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file: UsersFile =
        toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
    let mut problems = Vec::new();
    for (i, u) in file.user.iter().enumerate() {
        if u.name.is_empty() {
            problems.push(format!("user[{i}].name must not be empty"));
        }
        if argon2::PasswordHash::new(&u.password_hash).is_err() {
            problems.push(format!(
                "user[{i}].password_hash is not a PHC password hash (`batonctl hash-password` makes one)"
            ));
        }
        for d in &u.allowed_from {
            if !valid_domain_pattern(d) {
                problems.push(format!(
                    "user[{i}].allowed_from: {d:?} is not a domain or *.domain"
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(file.user)
    } else {
        Err(format!("{}: {}", path.display(), problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "POD_NAME" => Some("baton-2".into()),
            "TOKEN" => Some("s3cret".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_are_replaced_and_unset_ones_named() {
        let text = "a = \"${POD_NAME}.peers:7301\"\n# b = \"${UNSET}\"\nc = \"$${POD_NAME}\"\nd = \"${TOKEN}${TOKEN}\"\n";
        let out = expand_env(text, env).unwrap();
        assert_eq!(
            out,
            "a = \"baton-2.peers:7301\"\n# b = \"${UNSET}\"\nc = \"${POD_NAME}\"\nd = \"s3crets3cret\"\n"
        );
        let e = expand_env(
            "x = 1\ny = \"${UNSET}\"\nz = \"${1A}\"\nw = \"${OPEN\n",
            env,
        )
        .unwrap_err();
        let reasons: Vec<_> = e.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "line 2: environment variable UNSET is not set",
                "line 3: `${1A}` is not an environment variable name",
                "line 4: `${` without a closing `}`",
            ]
        );
        assert!(e.iter().all(|e| e.key == "config"));
    }

    #[test]
    fn the_id_is_the_ordinal_plus_one() {
        assert_eq!(id_from_hostname("baton-0"), Ok(1));
        assert_eq!(id_from_hostname("my-relay-baton-12.x.svc"), Ok(13));
        assert!(
            id_from_hostname("baton")
                .unwrap_err()
                .contains("does not end in -N")
        );
        assert!(id_from_hostname("baton-x").is_err());
    }

    #[test]
    fn users_file_adds_users_and_names_its_problems() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("users.toml");
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$3mNOIhWbqg4Hzk5ZkKvJZyHZcv2ihhSm0b1hWqXq0Lk";
        std::fs::write(
            &good,
            format!("[[user]]\nname = \"app2\"\npassword_hash = \"{hash}\"\nallowed_from = [\"b.example\"]\n"),
        )
        .unwrap();
        let users = users_from_file(&good).unwrap();
        assert_eq!(users[0].name, "app2");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[[user]]\nname = \"\"\npassword_hash = \"x\"\n").unwrap();
        let e = users_from_file(&bad).unwrap_err();
        assert!(e.contains("user[0].name must not be empty"), "{e}");
        assert!(e.contains("user[0].password_hash"), "{e}");
        let typo = dir.path().join("typo.toml");
        std::fs::write(&typo, "[[user]]\nnmae = \"a\"\n").unwrap();
        assert!(
            users_from_file(&typo)
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(
            users_from_file(&dir.path().join("missing.toml"))
                .unwrap_err()
                .contains("cannot read")
        );
    }
}
