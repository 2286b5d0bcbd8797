//! Reaching the admin API: the `--server` list (the first that answers is used), TLS for
//! `https://` servers (`--ca-cert`, else the webpki roots), and the bearer token.

use crate::failure::{Failure, Result};
use crate::pb::admin_client::AdminClient;
use std::path::Path;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// An admin API client that sends the token with every call.
pub type Client = AdminClient<InterceptedService<Channel, Auth>>;

/// Where and how to reach the admin API: `--server`, `--token`, `--ca-cert`.
pub struct Target<'a> {
    /// Comma-separated addresses; `http://` is assumed where no scheme is given.
    pub servers: &'a str,
    pub token: Option<&'a str>,
    pub ca_cert: Option<&'a Path>,
}

impl Target<'_> {
    /// The server URLs, in the order given.
    fn servers(&self) -> Vec<String> {
        self.servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.contains("://") {
                    s.to_string()
                } else {
                    format!("http://{s}")
                }
            })
            .collect()
    }

    /// Connects to the first server that answers, starting at `start`; returns the client
    /// and the index of the server used.
    pub async fn connect(&self, start: usize) -> Result<(Client, usize)> {
        let list = self.servers();
        if list.is_empty() {
            return Err(Failure("--server is empty".into(), 2));
        }
        let auth = match self.token {
            Some(t) if !t.is_empty() => {
                Some(MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                    Failure("the token has characters a header cannot carry".into(), 2)
                })?)
            }
            _ => None,
        };
        let mut errors = Vec::new();
        for k in 0..list.len() {
            let i = (start + k) % list.len();
            let url = &list[i];
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| Failure(format!("bad --server {url}: {e}"), 2))?
                .connect_timeout(Duration::from_secs(3));
            if url.starts_with("https://") {
                endpoint = endpoint
                    .tls_config(self.tls()?)
                    .map_err(|e| Failure(format!("TLS for {url}: {e}"), 2))?;
            }
            match endpoint.connect().await {
                Ok(channel) => {
                    let client = AdminClient::with_interceptor(channel, Auth(auth.clone()))
                        .max_decoding_message_size(64 * 1024 * 1024);
                    return Ok((client, i));
                }
                Err(e) => {
                    let cause = std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| e.to_string());
                    errors.push(format!("{url}: {cause}"));
                }
            }
        }
        Err(Failure(
            format!(
                "cannot reach the admin API ({}); is batond running, and is --server right?",
                errors.join("; ")
            ),
            1,
        ))
    }

    /// TLS for an `https://` server: trust `--ca-cert` if given, else the webpki roots.
    fn tls(&self) -> Result<ClientTlsConfig> {
        Ok(match self.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| Failure(format!("--ca-cert {}: {e}", path.display()), 2))?;
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_webpki_roots(),
        })
    }
}

/// Adds `authorization: Bearer <token>` to every call when a token is given.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(a) = &self.0 {
            req.metadata_mut().insert("authorization", a.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    fn servers(list: &str) -> Vec<String> {
        Target {
            servers: list,
            token: None,
            ca_cert: None,
        }
        .servers()
    }

    #[test]
    fn server_list_is_split_trimmed_and_given_a_scheme() {
        assert_eq!(
            servers("127.0.0.1:7401, https://a.example:7401,,http://b:1 "),
            [
                "http://127.0.0.1:7401",
                "https://a.example:7401",
                "http://b:1"
            ]
        );
        assert!(servers(" , ").is_empty());
    }
}
