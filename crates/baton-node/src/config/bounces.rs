//! `[bounces]`: asynchronous bounces and complaints. With `domain` set, delivery's MAIL
//! FROM becomes `b-TOKEN@domain`, every message carries `X-Baton-Ref`, and mail to the
//! domain (DSNs, and ARF reports to `fbl_address`) is processed instead of relayed.

use super::ConfigError;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BouncesConfig {
    /// The bounce domain (its MX points at Baton), e.g. `bounces.example.com`; empty: off.
    pub domain: String,
    /// Where receivers send ARF feedback reports (complaints); an address at `domain`,
    /// e.g. `fbl@bounces.example.com`; empty: none.
    pub fbl_address: String,
}

impl BouncesConfig {
    /// Whether bounce handling is on.
    pub fn enabled(&self) -> bool {
        !self.domain.is_empty()
    }

    /// The bounce domain, lower-cased.
    pub fn domain(&self) -> String {
        self.domain.trim_end_matches('.').to_ascii_lowercase()
    }

    /// Every problem, each naming its key.
    pub fn check(&self, errors: &mut Vec<ConfigError>) {
        let mut err = |key: &str, reason: String| {
            errors.push(ConfigError {
                key: format!("bounces.{key}"),
                reason,
            })
        };
        let domain = self.domain();
        if !domain.is_empty() {
            let labels_ok = domain.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            });
            if !labels_ok || !domain.contains('.') {
                err(
                    "domain",
                    format!(
                        "{:?} is not a domain name (e.g. \"bounces.example.com\")",
                        self.domain
                    ),
                );
            }
        }
        if self.fbl_address.is_empty() {
            return;
        }
        match self.fbl_address.rsplit_once('@') {
            _ if domain.is_empty() => err(
                "fbl_address",
                "needs bounces.domain (the address must be at the bounce domain)".into(),
            ),
            Some((local, d)) if !local.is_empty() && d.eq_ignore_ascii_case(&domain) => {
                if local.len() >= 2 && local[..2].eq_ignore_ascii_case("b-") {
                    err(
                        "fbl_address",
                        "must not start with \"b-\" (those are bounce addresses)".into(),
                    );
                }
            }
            _ => err(
                "fbl_address",
                format!(
                    "{:?} is not an address at bounces.domain {domain:?}",
                    self.fbl_address
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(domain: &str, fbl: &str) -> Vec<String> {
        let mut errors = Vec::new();
        BouncesConfig {
            domain: domain.into(),
            fbl_address: fbl.into(),
        }
        .check(&mut errors);
        errors.into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn checks_name_their_keys() {
        assert!(keys("", "").is_empty());
        assert!(keys("bounces.example.com", "").is_empty());
        assert!(keys("bounces.example.com", "fbl@Bounces.Example.com").is_empty());
        assert_eq!(
            keys("bounces.example.com", "fbl@example.com"),
            ["bounces.fbl_address"]
        );
        assert_eq!(
            keys("bounces.example.com", "b-x@bounces.example.com"),
            ["bounces.fbl_address"]
        );
        assert_eq!(keys("", "fbl@bounces.example.com"), ["bounces.fbl_address"]);
        assert_eq!(keys("not a domain", ""), ["bounces.domain"]);
        assert_eq!(keys("localhost", ""), ["bounces.domain"]);
    }
}
