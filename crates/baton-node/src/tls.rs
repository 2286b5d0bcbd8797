//! Inbound TLS: rustls server configurations from PEM files.

use rustls::ServerConfig;
use std::path::Path;
use std::sync::Arc;

/// Loads a certificate chain and private key (PKCS#8, PKCS#1 or SEC1) into a server config.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs = {
        let data = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
        rustls_pemfile::certs(&mut data.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", cert.display()))?
    };
    if certs.is_empty() {
        return Err(format!("{}: no certificate in PEM file", cert.display()));
    }
    let key_der = {
        let data = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
        rustls_pemfile::private_key(&mut data.as_slice())
            .map_err(|e| format!("{}: {e}", key.display()))?
            .ok_or_else(|| format!("{}: no private key in PEM file", key.display()))?
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| format!("{}: {e}", key.display()))?;
    Ok(Arc::new(config))
}
