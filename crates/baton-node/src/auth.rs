//! SMTP AUTH credential checks against argon2 PHC hashes.
//!
//! A check costs the same whether or not the user exists: an unknown name is checked
//! against a fixed dummy hash, and argon2's own comparison is constant-time.

use crate::config::UserConfig;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone)]
pub struct Users {
    hashes: Arc<HashMap<String, String>>,
    /// Each user's `allowed_from` (absent or empty: any sender domain).
    allowed_from: Arc<HashMap<String, Vec<String>>>,
    dummy: Arc<String>,
    /// Argon2 checks at once (each takes ~19 MiB and a core for tens of ms).
    checks: Arc<tokio::sync::Semaphore>,
}

impl Users {
    pub fn new(users: &[UserConfig]) -> Users {
        let hashes = users
            .iter()
            .map(|u| (u.name.clone(), u.password_hash.clone()))
            .collect();
        let allowed_from = users
            .iter()
            .map(|u| (u.name.clone(), u.allowed_from.clone()))
            .collect();
        let salt = SaltString::from_b64("YmF0b25kdW1teXNhbHQ").expect("valid fixed salt");
        let dummy = Argon2::default()
            .hash_password(b"baton-dummy-password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default();
        Users {
            hashes: Arc::new(hashes),
            allowed_from: Arc::new(allowed_from),
            dummy: Arc::new(dummy),
            checks: Arc::new(tokio::sync::Semaphore::new(4)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Logs a warning for each user that may send as any domain.
    pub fn warn_unrestricted(&self) {
        let mut open: Vec<&String> = self
            .allowed_from
            .iter()
            .filter(|(_, domains)| domains.is_empty())
            .map(|(name, _)| name)
            .collect();
        open.sort();
        for name in open {
            tracing::warn!(
                user = %name,
                "smtp.user {name:?} has no allowed_from: once authenticated it may send as any domain"
            );
        }
    }

    /// The sender domains `name` may use (empty: any).
    pub fn allowed_from(&self, name: &str) -> Vec<String> {
        self.allowed_from.get(name).cloned().unwrap_or_default()
    }

    /// Checks a name and password off the async threads (argon2 is deliberately slow).
    pub async fn verify(&self, name: &str, password: &str) -> bool {
        let known = self.hashes.get(name).cloned();
        let hash = known.clone().unwrap_or_else(|| (*self.dummy).clone());
        let password = password.to_string();
        let Ok(_permit) = self.checks.acquire().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        ok && known.is_some()
    }
}

/// Hashes a password for `[[smtp.user]] password_hash` (argon2id, random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_known_user_only() {
        let hash = hash_password("s3cret").unwrap();
        let users = Users::new(&[UserConfig {
            name: "app1".into(),
            password_hash: hash,
            allowed_from: Vec::new(),
        }]);
        assert!(users.verify("app1", "s3cret").await);
        assert!(!users.verify("app1", "wrong").await);
        assert!(!users.verify("nobody", "baton-dummy-password").await);
    }
}
