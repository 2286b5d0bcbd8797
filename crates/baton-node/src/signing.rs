//! DKIM signing at enqueue (README, "DKIM signing").
//!
//! A message is signed once, when it is accepted, after Baton's own header fields: the
//! signatures are stored with the body, so every retry and every node sends the same
//! bytes. The keys that sign are those whose domain is the `From:` domain or a parent of
//! it (the most specific such domain wins; each of its keys signs, so an RSA and an
//! Ed25519 key give two signatures), and that the tenant may use (`[[dkim]] tenants`).
//! SIGHUP loads the keys again ([`Signing::reload`]); a bad set keeps the old one.

use crate::config::{Alignment, ConfigError, DEFAULT_HEADERS, DkimConfig, SigningConfig};
use baton_smtp::header::{FromError, from_domains};
use baton_smtp::replies;
use baton_smtp::reply::Reply;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use std::sync::{Arc, RwLock};

/// A loaded private key, ready to sign for its domain and selector.
pub enum KeySigner {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

impl KeySigner {
    /// The `DKIM-Signature:` field (CRLF-terminated) for `message`.
    fn sign(&self, message: &[u8]) -> Result<String, mail_auth::Error> {
        match self {
            KeySigner::Rsa(s) => s.sign(message).map(|sig| sig.to_header()),
            KeySigner::Ed25519(s) => s.sign(message).map(|sig| sig.to_header()),
        }
    }
}

/// Reads `key.key_file` and makes its signer; the error is the reason for the key's
/// `key_file`, for people.
pub fn load_key(key: &DkimConfig) -> Result<KeySigner, String> {
    let path = &key.key_file;
    let der = PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::Io(io) => format!("cannot read {}: {io}", path.display()),
        rustls_pki_types::pem::Error::NoItemsFound => format!(
            "{} holds no PEM private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)",
            path.display()
        ),
        other => format!("{}: not a PEM private key: {other:?}", path.display()),
    })?;
    let headers: Vec<String> = if key.headers.is_empty() {
        DEFAULT_HEADERS.iter().map(|h| h.to_string()).collect()
    } else {
        key.headers.clone()
    };
    let domain = key.domain.trim_end_matches('.').to_ascii_lowercase();
    match (key.algorithm.as_str(), der) {
        ("rsa-sha256", der @ (PrivateKeyDer::Pkcs1(_) | PrivateKeyDer::Pkcs8(_))) => {
            let pkcs8_ed25519 = matches!(&der, PrivateKeyDer::Pkcs8(d)
                if Ed25519Key::from_pkcs8_maybe_unchecked_der(d.secret_pkcs8_der()).is_ok());
            if pkcs8_ed25519 {
                return Err(format!(
                    "{} is an Ed25519 key: set algorithm = \"ed25519-sha256\"",
                    path.display()
                ));
            }
            let rsa = RsaKey::<Sha256>::from_key_der(der).map_err(|e| rsa_refused(path, &e))?;
            Ok(KeySigner::Rsa(
                DkimSigner::from_key(rsa)
                    .domain(domain)
                    .selector(&key.selector)
                    .headers(headers),
            ))
        }
        ("ed25519-sha256", PrivateKeyDer::Pkcs8(der)) => {
            let ed = Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                .map_err(|_| {
                    format!(
                        "{} is not an Ed25519 key (PKCS#8): for an RSA key set algorithm = \"rsa-sha256\"",
                        path.display()
                    )
                })?;
            Ok(KeySigner::Ed25519(
                DkimSigner::from_key(ed)
                    .domain(domain)
                    .selector(&key.selector)
                    .headers(headers),
            ))
        }
        ("ed25519-sha256", PrivateKeyDer::Pkcs1(_)) => Err(format!(
            "{} is an RSA key: set algorithm = \"rsa-sha256\"",
            path.display()
        )),
        (_, PrivateKeyDer::Sec1(_)) => Err(format!(
            "{} is an EC key: DKIM signs with RSA or Ed25519 keys",
            path.display()
        )),
        (algorithm, _) => Err(format!("{} is not a key for {algorithm}", path.display())),
    }
}

/// Why an RSA key does not load. The crypto library signs with 2048- to 8192-bit keys
/// only: shorter ones (receivers accept 1024 bits, but no longer trust them) are refused
/// here rather than at the first message.
fn rsa_refused(path: &std::path::Path, e: &mail_auth::Error) -> String {
    let text = e.to_string();
    if text.contains("TooSmall") {
        format!(
            "{}: RSA keys under 2048 bits are refused (make one with `openssl genrsa -out KEY 2048`)",
            path.display()
        )
    } else if text.contains("TooLarge") {
        format!("{}: RSA keys over 8192 bits are refused", path.display())
    } else {
        format!("{}: not a usable RSA private key ({text})", path.display())
    }
}

struct Key {
    /// Lower-case, without a trailing dot.
    domain: String,
    selector: String,
    tenants: Vec<String>,
    signer: KeySigner,
}

impl Key {
    /// `from` (lower-case) is this key's domain or below it.
    fn covers(&self, from: &str) -> bool {
        from == self.domain
            || from
                .strip_suffix(&self.domain)
                .is_some_and(|head| head.ends_with('.'))
    }
}

/// The loaded keys.
pub struct Keys {
    keys: Vec<Key>,
    alignment: Alignment,
}

impl Keys {
    /// Loads every key; all problems are reported, each naming its key.
    pub fn load(configs: &[DkimConfig], signing: &SigningConfig) -> Result<Keys, Vec<ConfigError>> {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            match load_key(c) {
                Ok(signer) => keys.push(Key {
                    domain: c.domain.trim_end_matches('.').to_ascii_lowercase(),
                    selector: c.selector.clone(),
                    tenants: c.tenants.clone(),
                    signer,
                }),
                Err(reason) => errors.push(ConfigError {
                    key: format!("dkim[{i}].key_file"),
                    reason,
                }),
            }
        }
        if errors.is_empty() {
            Ok(Keys {
                keys,
                alignment: signing.require_dkim_alignment,
            })
        } else {
            Err(errors)
        }
    }

    /// Whether [`Keys::sign`] may do anything: keys, or a rule about unsigned mail.
    pub fn active(&self) -> bool {
        !self.keys.is_empty() || self.alignment != Alignment::Off
    }

    /// `domain/selector` of each key, for the reload's log line.
    fn names(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| format!("{}/{}", k.domain, k.selector))
            .collect()
    }

    /// The `DKIM-Signature:` fields to put on top of `message` (empty: unsigned), or the
    /// reply refusing it under `require_dkim_alignment = "reject"`.
    pub fn sign(&self, tenant: &str, message: &[u8]) -> Result<Vec<u8>, Reply> {
        if !self.active() {
            return Ok(Vec::new());
        }
        let unsigned = |why: &str| {
            metrics::counter!(crate::metrics::DKIM_UNSIGNED).increment(1);
            match self.alignment {
                Alignment::Off => Ok(Vec::new()),
                Alignment::Reject => Err(replies::no_aligned_dkim_key(why)),
            }
        };
        let from = match from_domains(message) {
            Ok(domains) => domains,
            Err(FromError::Missing) => return unsigned("(the message has no From: field)"),
            Err(_) => return unsigned("(the From: field does not parse)"),
        };
        let from: Vec<String> = from
            .iter()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        // Keys this tenant may use whose domain covers every From address; of those, the
        // ones of the most specific domain.
        let usable = self.keys.iter().filter(|k| {
            (k.tenants.is_empty() || k.tenants.iter().any(|t| t == tenant))
                && from.iter().all(|d| k.covers(d))
        });
        let longest = usable.clone().map(|k| k.domain.len()).max();
        let Some(longest) = longest else {
            return unsigned(&from.join(", "));
        };
        let mut out = Vec::new();
        for key in usable.filter(|k| k.domain.len() == longest) {
            match key.signer.sign(message) {
                Ok(field) => {
                    metrics::counter!(crate::metrics::DKIM_SIGNATURES, "domain" => key.domain.clone(), "selector" => key.selector.clone())
                        .increment(1);
                    // Each signature covers the message without the other: both verify.
                    let mut signed = field.into_bytes();
                    signed.append(&mut out);
                    out = signed;
                }
                Err(e) => {
                    metrics::counter!(crate::metrics::DKIM_ERRORS).increment(1);
                    tracing::error!(domain = %key.domain, selector = %key.selector, error = %e, "DKIM signing failed");
                }
            }
        }
        if out.is_empty() {
            return unsigned(&from.join(", "));
        }
        Ok(out)
    }
}

/// The keys in use, replaced as a whole by a reload.
#[derive(Clone)]
pub struct Signing {
    current: Arc<RwLock<Arc<Keys>>>,
}

impl Signing {
    pub fn new(keys: Keys) -> Signing {
        Signing {
            current: Arc::new(RwLock::new(Arc::new(keys))),
        }
    }

    pub fn keys(&self) -> Arc<Keys> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the `[[dkim]]` keys and `[signing]` of a freshly read config; on any problem
    /// the keys in use stay and every problem is logged.
    pub fn reload(&self, configs: &[DkimConfig], signing: &SigningConfig) {
        match Keys::load(configs, signing) {
            Ok(keys) => {
                let names = keys.names();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                tracing::info!(keys = ?names, "DKIM keys reloaded");
            }
            Err(errors) => {
                for e in errors {
                    tracing::error!(key = %e.key, reason = %e.reason, "DKIM keys not reloaded; the previous keys stay");
                }
            }
        }
    }
}
