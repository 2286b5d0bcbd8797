//! `delivery.mta_sts` and `delivery.tls_ca_file`: MTA-STS (RFC 8461) and the extra CAs
//! trusted, besides the webpki roots, wherever a remote certificate is verified (the
//! MTA-STS policy fetch, MTA-STS enforced SMTP TLS, `delivery.tls = "required"`).

use super::{ConfigError, DeliveryConfig};
use rustls::pki_types::CertificateDer;
use std::path::Path;

impl DeliveryConfig {
    /// Problems with `delivery.tls_ca_file`, named by their key.
    pub(super) fn check_mta_sts(&self, errors: &mut Vec<ConfigError>) {
        if let Err(reason) = self.extra_roots() {
            errors.push(ConfigError {
                key: "delivery.tls_ca_file".into(),
                reason,
            });
        }
    }

    /// The CAs of `delivery.tls_ca_file` (none when it is empty).
    pub fn extra_roots(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        if self.tls_ca_file.is_empty() {
            return Ok(Vec::new());
        }
        load_cas(Path::new(&self.tls_ca_file))
    }
}

/// Every certificate of a PEM file, each one usable as a trust anchor.
fn load_cas(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in PEM file", path.display()));
    }
    let mut store = rustls::RootCertStore::empty();
    let (_, bad) = store.add_parsable_certificates(certs.iter().cloned());
    if bad > 0 {
        return Err(format!(
            "{}: {bad} of {} certificates cannot be trust anchors",
            path.display(),
            certs.len()
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn check(extra: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[node]\nid = 1\ndata_dir = {:?}\n[[smtp.listener]]\naddress = \"127.0.0.1:2525\"\n\
             [delivery]\nmta_sts = true\n{extra}",
            dir.path().join("data")
        );
        Config::check(&text).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_ca_file_is_checked_and_named() {
        assert_eq!(check(""), Ok(()));
        let e = check("tls_ca_file = \"/nonexistent/ca.pem\"").unwrap_err();
        assert!(
            e.contains("delivery.tls_ca_file") && e.contains("cannot read"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = check(&format!("tls_ca_file = {junk:?}")).unwrap_err();
        assert!(
            e.contains("delivery.tls_ca_file") && e.contains("no certificate"),
            "{e}"
        );
        let ca = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&ca).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, cert.pem()).unwrap();
        assert_eq!(check(&format!("tls_ca_file = {good:?}")), Ok(()));
    }
}
