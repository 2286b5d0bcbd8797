//! Peer mutual TLS: the certificate, key and CA of `cluster.tls_cert`, `tls_key` and
//! `tls_ca`, read and checked once ([`PeerTls::load`]), then handed to tonic as the
//! server's and the clients' TLS configuration.
//!
//! Both sides trust only the CA: the server requires a client certificate signed by it
//! (refused at the handshake otherwise), and a client verifies the server's certificate
//! against it for the host of the address it dials (a peer's `cluster.advertise`; DNS
//! names and IP addresses alike). Both negotiate ALPN `h2`, which tonic sets.

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// How long a TLS handshake with a peer may take, on either side.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Which of the three files a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemFile {
    /// This node's certificate chain (`cluster.tls_cert`).
    Cert,
    /// Its private key (`cluster.tls_key`).
    Key,
    /// The CA peers' certificates are signed by (`cluster.tls_ca`).
    Ca,
}

/// A problem with one of the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    pub file: PemFile,
    pub reason: String,
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for TlsFileError {}

/// The PEM files of peer mTLS, checked: they parse, the key is the certificate's, and
/// the certificate is one peers accept (signed by the CA, valid now, usable as a client
/// certificate and as the server certificate of this node's advertised host).
#[derive(Clone)]
pub struct PeerTls {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the key.
        f.debug_struct("PeerTls").finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Reads and checks the files; `host` is the host part of this node's advertised
    /// address (see [`host_of`]), which its certificate must name. Every problem found
    /// is returned, each with the file it is about.
    pub fn load(
        cert: &Path,
        key: &Path,
        ca: &Path,
        host: &str,
    ) -> Result<PeerTls, Vec<TlsFileError>> {
        let mut errors = Vec::new();
        let mut fail = |file, reason: String| errors.push(TlsFileError { file, reason });
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let cert_pem = read(cert).map_err(|e| fail(PemFile::Cert, e)).ok();
        let key_pem = read(key).map_err(|e| fail(PemFile::Key, e)).ok();
        let ca_pem = read(ca).map_err(|e| fail(PemFile::Ca, e)).ok();

        let chain = cert_pem.as_deref().and_then(|pem| {
            certificates(pem)
                .map_err(|e| fail(PemFile::Cert, format!("{}: {e}", cert.display())))
                .ok()
        });
        let private_key = key_pem.as_deref().and_then(|pem| {
            PrivateKeyDer::from_pem_slice(pem)
                .map_err(|e| {
                    fail(
                        PemFile::Key,
                        format!("{}: no usable private key in PEM ({e})", key.display()),
                    )
                })
                .ok()
        });
        let roots = ca_pem.as_deref().and_then(|pem| {
            let certs = certificates(pem)
                .map_err(|e| fail(PemFile::Ca, format!("{}: {e}", ca.display())))
                .ok()?;
            let mut roots = RootCertStore::empty();
            for c in certs {
                if let Err(e) = roots.add(c) {
                    fail(
                        PemFile::Ca,
                        format!("{}: not a usable CA certificate: {e}", ca.display()),
                    );
                    return None;
                }
            }
            Some(Arc::new(roots))
        });

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        if let (Some(chain), Some(private_key)) = (&chain, private_key)
            && let Err(e) = CertifiedKey::from_der(chain.clone(), private_key, &provider)
        {
            fail(
                PemFile::Key,
                format!(
                    "{} cannot be used with the certificate in {}: {e}",
                    key.display(),
                    cert.display()
                ),
            );
        }
        if let (Some(chain), Some(roots)) = (&chain, roots)
            && let Err(e) = accepted_by_peers(chain, roots, provider, host)
        {
            fail(
                PemFile::Cert,
                format!("{}: peers would refuse it: {e}", cert.display()),
            );
        }
        match (cert_pem, key_pem, ca_pem) {
            (Some(cert), Some(key), Some(ca)) if errors.is_empty() => Ok(PeerTls { cert, key, ca }),
            _ => Err(errors),
        }
    }

    /// The Raft server's TLS: this node's certificate, a client certificate signed by
    /// the CA required.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
            .client_auth_optional(false)
            .timeout(HANDSHAKE)
    }

    /// A client's TLS: only the CA trusted, this node's certificate presented. The
    /// server name checked is the host of the URI dialled.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .timeout(HANDSHAKE)
    }
}

/// The certificates in a PEM text; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in PEM".into());
    }
    Ok(certs)
}

/// Whether peers trusting `roots` accept `chain` from this node, as a client and as the
/// server for `host`.
fn accepted_by_peers(
    chain: &[CertificateDer<'static>],
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    host: &str,
) -> Result<(), String> {
    let (end_entity, intermediates) = chain.split_first().ok_or("no certificate")?;
    let now = UnixTime::now();
    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| e.to_string())?
        .verify_client_cert(end_entity, intermediates, now)
        .map_err(|e| format!("as a client certificate: {e}"))?;
    let name = ServerName::try_from(host.to_string()).map_err(|_| {
        format!("{host:?} (the host of cluster.advertise) is not a DNS name or IP address")
    })?;
    WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| e.to_string())?
        .verify_server_cert(end_entity, intermediates, &name, &[], now)
        .map_err(|e| format!("as the server certificate of {host} (cluster.advertise): {e}"))?;
    Ok(())
}

/// The host part of a peer address: `baton-1.peers:7301` -> `baton-1.peers`,
/// `[::1]:7301` -> `::1`, `127.0.0.2:7301` -> `127.0.0.2` — the name a client checks the
/// server's certificate against (tonic takes the same from the URI).
pub fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            host_of("baton-1.baton-peers.default.svc:7301"),
            "baton-1.baton-peers.default.svc"
        );
        assert_eq!(host_of("127.0.0.2:7301"), "127.0.0.2");
        assert_eq!(host_of("[::1]:7301"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
    }
}
