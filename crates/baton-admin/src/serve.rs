//! Serving the admin API: bearer-token authentication, TLS, gRPC reflection and health.

use crate::pb::FILE_DESCRIPTOR_SET;
use crate::pb::admin_server::AdminServer;
use crate::server::{AdminContext, AdminService};
use std::sync::Arc;
use tonic::{Request as GrpcRequest, Status};

/// Checks `authorization: Bearer <token>` in constant time. An empty token (allowed
/// only on a loopback listener, see the config check) lets every call through.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Arc<Vec<u8>>,
}

impl TokenCheck {
    pub fn new(token: &str) -> TokenCheck {
        TokenCheck {
            expected: Arc::new(format!("Bearer {token}").into_bytes()),
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: GrpcRequest<()>) -> Result<GrpcRequest<()>, Status> {
        use subtle::ConstantTimeEq;
        if self.expected.as_slice() == b"Bearer " {
            return Ok(req);
        }
        let Some(given) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "this admin API needs a token: send `authorization: Bearer <admin.token>` (batonctl --token or BATON_TOKEN)",
            ));
        };
        if bool::from(given.as_bytes().ct_eq(self.expected.as_slice())) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("bad admin token"))
        }
    }
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
