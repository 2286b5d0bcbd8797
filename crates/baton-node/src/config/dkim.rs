//! `[[dkim]]` keys and `[signing]`: what is signed with which key (README, "DKIM
//! signing"). The keys themselves are read by [`crate::signing`], here as at start, so
//! `check-config` reports a key that would not load.

use super::ConfigError;
use super::checks::valid_domain_pattern;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    /// Signs mail whose `From:` domain is this domain or below it.
    pub domain: String,
    pub selector: String,
    /// PEM: RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8).
    pub key_file: PathBuf,
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Header fields to sign; empty: [`DEFAULT_HEADERS`].
    #[serde(default)]
    pub headers: Vec<String>,
    /// Tenants whose mail this key may sign; empty: any client that may use the domain.
    #[serde(default)]
    pub tenants: Vec<String>,
}

fn default_algorithm() -> String {
    "rsa-sha256".into()
}

/// Signed when `headers` is empty. `From` twice: one more than a message may have, so a
/// second `From:` added on the way breaks the signature (oversigning). Fields a message
/// lacks are signed as absent, so they cannot be added later either.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Sender",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "Feedback-ID",
    "X-Baton-Ref",
];

/// `[signing]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    pub require_dkim_alignment: Alignment,
}

/// What happens to mail that no `[[dkim]]` key may sign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Alignment {
    /// Sent unsigned.
    #[default]
    Off,
    /// Refused at the end of DATA with `550 5.7.1`.
    Reject,
}

/// Every problem of the `[[dkim]]` entries, keys loaded.
pub(super) fn check(keys: &[DkimConfig], errors: &mut Vec<ConfigError>) {
    let mut err = |key: String, reason: String| errors.push(ConfigError { key, reason });
    for (i, k) in keys.iter().enumerate() {
        if !valid_domain_pattern(&k.domain) || k.domain.starts_with("*.") {
            err(
                format!("dkim[{i}].domain"),
                format!("{:?} is not a domain name", k.domain),
            );
        }
        if !valid_selector(&k.selector) {
            err(
                format!("dkim[{i}].selector"),
                format!(
                    "{:?} is not a selector (DNS labels of letters, digits and '-', dot-separated)",
                    k.selector
                ),
            );
        }
        if !k.headers.is_empty() && !k.headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            err(
                format!("dkim[{i}].headers"),
                "must include From (RFC 6376 §5.4)".into(),
            );
        }
        if let Some(bad) = k.headers.iter().find(|h| !valid_field_name(h)) {
            err(
                format!("dkim[{i}].headers"),
                format!("{bad:?} is not a header field name"),
            );
        }
        if k.tenants.iter().any(|t| t.is_empty()) {
            err(format!("dkim[{i}].tenants"), "an entry is empty".into());
        }
        if k.algorithm != "rsa-sha256" && k.algorithm != "ed25519-sha256" {
            err(
                format!("dkim[{i}].algorithm"),
                format!("{:?} is not rsa-sha256 or ed25519-sha256", k.algorithm),
            );
        } else if let Err(reason) = crate::signing::load_key(k) {
            err(format!("dkim[{i}].key_file"), reason);
        }
        if let Some(j) = keys[..i].iter().position(|o| {
            o.domain.eq_ignore_ascii_case(&k.domain) && o.selector.eq_ignore_ascii_case(&k.selector)
        }) {
            err(
                format!("dkim[{i}].selector"),
                format!("dkim[{j}] has the same domain and selector"),
            );
        }
    }
}

/// `s1`, `2026-11.mail`: dot-separated DNS labels.
fn valid_selector(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// RFC 5322 field name: printable ASCII except `:`.
fn valid_field_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}
