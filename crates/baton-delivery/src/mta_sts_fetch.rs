//! Fetching a domain's MTA-STS policy (RFC 8461 §3): the `_mta-sts` TXT record and
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`, both through the delivery resolver
//! ([`Router`]), over rustls with the verified configuration of [`TlsClients`] (webpki
//! roots plus `delivery.tls_ca_file`): the certificate must be valid for
//! `mta-sts.DOMAIN`. Only `200` with a `text/plain` body is taken; redirects are not
//! followed; the body is capped at [`MAX_POLICY_BYTES`]; the whole fetch (every address
//! tried, TLS, request, body) has [`FETCH_TIMEOUT`].

use crate::mta_sts::{self, Policy};
use crate::route::Router;
use crate::tls::TlsClients;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The whole policy fetch: connect, TLS, request and body (RFC 8461 §3.3 suggests a
/// timeout of a minute or so; 20 s keeps a delivery attempt from waiting long).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest policy body taken (RFC 8461 §3.3: 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;
/// The HTTPS port of the policy host.
const HTTPS_PORT: u16 = 443;

/// The `id` of `domain`'s `_mta-sts` TXT record: `Ok(None)` when none is published,
/// `Err` when the lookup failed or the record is malformed (the reason in words).
pub async fn txt_id(router: &Router, domain: &str) -> Result<Option<String>, String> {
    let name = format!("_mta-sts.{}", domain.trim_end_matches('.'));
    let records = router.txt(&name).await?;
    mta_sts::parse_txt(&records).map_err(|e| format!("{name}: {e}"))
}

/// The policy file of `domain`, fetched and parsed.
pub async fn fetch_policy(
    router: &Router,
    tls: &TlsClients,
    domain: &str,
) -> Result<Policy, String> {
    let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
    let url = format!("https://{host}/.well-known/mta-sts.txt");
    let body = tokio::time::timeout(FETCH_TIMEOUT, fetch(router, tls, &host))
        .await
        .map_err(|_| format!("{url}: no policy within {}s", FETCH_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{url}: {e}"))?;
    let text = std::str::from_utf8(&body).map_err(|_| format!("{url}: not UTF-8"))?;
    mta_sts::parse_policy(text).map_err(|e| format!("{url}: {e}"))
}

async fn fetch(router: &Router, tls: &TlsClients, host: &str) -> Result<Bytes, String> {
    let ips = router.addresses(host).await?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("bad name: {e}"))?;
    let mut config = (*tls.verified).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut errors = Vec::new();
    for ip in ips {
        let addr = SocketAddr::new(ip, HTTPS_PORT);
        let tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => tcp,
            Err(e) => {
                errors.push(format!("{addr}: {}", crate::reason::io(&e)));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let stream = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| format!("{addr}: TLS: {e}"))?;
        return get(stream, host).await;
    }
    Err(format!("could not connect: {}", errors.join("; ")))
}

async fn get<S>(io: S, host: &str) -> Result<Bytes, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(conn);
    let result = async {
        let request = hyper::Request::builder()
            .uri("/.well-known/mta-sts.txt")
            .header(HOST, host)
            .header(USER_AGENT, concat!("baton/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status();
        if status != hyper::StatusCode::OK {
            // Redirects included: RFC 8461 §3.3 forbids following them.
            return Err(format!("HTTP status {status} (only 200 is taken)"));
        }
        let media = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_text_plain(media) {
            return Err(format!("media type {media:?} (only text/plain is taken)"));
        }
        Limited::new(response.into_body(), MAX_POLICY_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!("policy larger than {MAX_POLICY_BYTES} bytes")
                } else {
                    format!("reading the policy: {e}")
                }
            })
    }
    .await;
    driver.abort();
    result
}

/// Whether a `Content-Type` value is `text/plain` (any parameters).
fn is_text_plain(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_text_plain() {
        assert!(super::is_text_plain("text/plain"));
        assert!(super::is_text_plain("Text/Plain; charset=utf-8"));
        assert!(!super::is_text_plain("text/html"));
        assert!(!super::is_text_plain("text/plainx"));
        assert!(!super::is_text_plain(""));
    }
}
