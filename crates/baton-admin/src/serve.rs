//! Serving the admin API: bearer-token authentication, TLS, gRPC reflection and health.

use crate::pb::FILE_DESCRIPTOR_SET;
use crate::pb::admin_server::AdminServer;
use crate::server::{AdminContext, AdminService};
use std::net::SocketAddr;
use std::sync::Arc;
use tonic::{Request as GrpcRequest, Status};

/// Checks `authorization: Bearer <token>`, the scheme in any case (RFC 7235 §2.1, RFC
/// 6750 §2.1) and the token in constant time. An empty token (allowed only on a loopback
/// listener, see the config check) lets every call through.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Arc<Vec<u8>>,
}

impl TokenCheck {
    pub fn new(token: &str) -> TokenCheck {
        TokenCheck {
            expected: Arc::new(token.as_bytes().to_vec()),
        }
    }

    /// Whether an `authorization` value carries the expected token.
    fn accepts(&self, value: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        // `credentials = auth-scheme 1*SP token68`: the scheme is case-insensitive.
        let Some(space) = value.iter().position(|&b| b == b' ') else {
            return false;
        };
        let (scheme, rest) = value.split_at(space);
        let given = rest.trim_ascii_start();
        let scheme_ok = scheme.eq_ignore_ascii_case(b"bearer");
        // Compare the token even under a wrong scheme, so timing says nothing about it.
        let token_ok = bool::from(given.ct_eq(self.expected.as_slice()));
        scheme_ok & token_ok
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: GrpcRequest<()>) -> Result<GrpcRequest<()>, Status> {
        if self.expected.is_empty() {
            return Ok(req);
        }
        let Some(given) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "this admin API needs a token: send `authorization: Bearer <admin.token>` (batonctl --token or BATON_TOKEN)",
            ));
        };
        if self.accepts(given.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("bad admin token"))
        }
    }
}

/// The warning to log when a token is configured on a listener off loopback without TLS:
/// the token then crosses the network in plaintext (h2c).
pub fn plaintext_token_warning(listen: SocketAddr, token: &str, tls: bool) -> Option<String> {
    (!token.is_empty() && !tls && !listen.ip().is_loopback()).then(|| {
        format!(
            "admin.token is set but the admin API on {listen} is served without TLS: the token \
             travels in plaintext; set admin.tls_cert and admin.tls_key, or listen on loopback"
        )
    })
}

/// PEM certificate chain and private key for serving the API over TLS.
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// Serves the admin API (with reflection and health) on `listener`, over TLS when `tls`
/// is given, until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: AdminContext,
    token: &str,
    tls: Option<TlsFiles>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    if let Ok(listen) = listener.local_addr()
        && let Some(warning) = plaintext_token_warning(listen, token, tls.is_some())
    {
        tracing::warn!("{warning}");
    }
    let check = TokenCheck::new(token);
    let admin = AdminServer::with_interceptor(AdminService::new(ctx), check.clone());
    // Both reflection versions: grpcurl and grpcio-reflection still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) =
        match (reflection().build_v1(), reflection().build_v1alpha()) {
            (Ok(a), Ok(b)) => (Some(a), Some(b)),
            (Err(e), _) | (_, Err(e)) => {
                // The descriptor sets are built into the binary: this cannot fail at run time.
                tracing::error!(error = %e, "gRPC reflection unavailable");
                (None, None)
            }
        };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(files) = tls {
        let identity = tonic::transport::Identity::from_pem(files.cert, files.key);
        builder =
            builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    let mut router = builder.add_service(health).add_service(admin);
    if let (Some(v1), Some(v1alpha)) = (reflection_v1, reflection_v1alpha) {
        router = router
            .add_service(tonic::service::interceptor::InterceptedService::new(
                v1,
                check.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                v1alpha, check,
            ));
    }
    router
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn call(check: &mut TokenCheck, authorization: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = GrpcRequest::new(());
        if let Some(a) = authorization {
            req.metadata_mut()
                .insert("authorization", a.parse().expect("ascii"));
        }
        check.call(req).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
        let mut check = TokenCheck::new("s3cret");
        for ok in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR  s3cret",
        ] {
            assert_eq!(call(&mut check, Some(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "Bearer wrong",
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer S3CRET",
            "Basic s3cret",
            "Bearers3cret",
            "s3cret",
            "Bearer",
            "Bearer ",
        ] {
            assert_eq!(
                call(&mut check, Some(bad)),
                Err(tonic::Code::Unauthenticated),
                "{bad}"
            );
        }
        assert_eq!(call(&mut check, None), Err(tonic::Code::Unauthenticated));
    }

    #[test]
    fn no_token_lets_every_call_through() {
        let mut check = TokenCheck::new("");
        assert_eq!(call(&mut check, None), Ok(()));
        assert_eq!(call(&mut check, Some("Bearer anything")), Ok(()));
    }

    #[test]
    fn a_token_in_plaintext_off_loopback_is_warned_about() {
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let warning = plaintext_token_warning(addr("0.0.0.0:7401"), "t", false);
        assert!(warning.is_some_and(|w| w.contains("plaintext") && w.contains("0.0.0.0:7401")));
        assert!(plaintext_token_warning(addr("10.0.0.1:7401"), "t", false).is_some());
        assert!(plaintext_token_warning(addr("[::]:7401"), "t", false).is_some());
        // TLS, loopback, or no token: nothing to warn about.
        assert!(plaintext_token_warning(addr("0.0.0.0:7401"), "t", true).is_none());
        assert!(plaintext_token_warning(addr("127.0.0.1:7401"), "t", false).is_none());
        assert!(plaintext_token_warning(addr("[::1]:7401"), "t", false).is_none());
        assert!(plaintext_token_warning(addr("0.0.0.0:7401"), "", false).is_none());
    }
}
