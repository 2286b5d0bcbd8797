//! Outbound TLS policies.
//!
//! - `disabled`: never STARTTLS;
//! - `opportunistic`: STARTTLS when offered and accept any certificate (as MTAs do for
//!   port 25: an unauthenticated encrypted channel beats plain text); if the handshake
//!   fails, the connection is dropped and the next attempt goes in plain text;
//! - `required`: STARTTLS must be offered and the certificate must verify against the
//!   webpki roots (and `delivery.tls_ca_file`'s CAs) for the MX host name, or the
//!   delivery is deferred. MTA-STS `enforce` uses the same verified configuration.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    Disabled,
    Opportunistic,
    Required,
}

/// The rustls client configurations for each policy, built once.
#[derive(Clone)]
pub struct TlsClients {
    pub opportunistic: Arc<ClientConfig>,
    pub verified: Arc<ClientConfig>,
}

impl TlsClients {
    /// With the webpki roots only.
    pub fn new() -> TlsClients {
        TlsClients::with_extra_roots(&[])
    }

    /// With the webpki roots and `extra` CAs (`delivery.tls_ca_file`) trusted wherever a
    /// certificate is verified.
    pub fn with_extra_roots(extra: &[CertificateDer<'static>]) -> TlsClients {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = Arc::new(AnyCertificate(provider.clone()));
        let opportunistic = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            });
        let mut roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        // Checked when the configuration was loaded; one that still does not parse is
        // left out rather than trusted.
        let _ = roots.add_parsable_certificates(extra.iter().cloned());
        let verified = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        // The default provider supports the safe default versions: these cannot fail.
        TlsClients {
            opportunistic: Arc::new(opportunistic.unwrap_or_else(|_| unreachable_config())),
            verified: Arc::new(verified.unwrap_or_else(|_| unreachable_config())),
        }
    }
}

impl Default for TlsClients {
    fn default() -> Self {
        TlsClients::new()
    }
}

fn unreachable_config() -> ClientConfig {
    panic!("aws-lc-rs provider rejected the default TLS versions")
}

/// Accepts any certificate but still checks the handshake signatures, so the channel is
/// at least bound to the key the server presented.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
