//! The events webhook: the leader POSTs batches of events as JSON to
//! `events.webhook_url`, at least once, in order. The position delivered so far is a Raft
//! command (`WebhookSent`), so a new leader resumes where the old one stopped: a batch the
//! old leader sent but did not record is sent again (at-least-once), none is skipped.
//!
//! Body: `{"events": [Event, ...]}`, each event as in proto/admin.proto's `Event`
//! (`position`, `time_unix_ms`, `kind`, `message_id`, `recipient`, ...). Any 2xx answer
//! counts as delivered; anything else, or no answer within `events.webhook_timeout`, is
//! retried with a backoff from 1 s to 60 s.

use crate::config::EventsConfig;
use baton_cluster::Writer;
use baton_queue::QueueNode;
use baton_queue::types::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Uri};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Where the webhook goes, parsed from its URL.
#[derive(Debug, Clone)]
pub struct Target {
    host: String,
    port: u16,
    tls: bool,
    /// Path and query, `/` at least.
    path: String,
    /// `host[:port]` for the Host header.
    authority: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{url:?}: must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?}: no host"))?
            .clone();
        let host = authority.host().trim_matches(['[', ']']).to_string();
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok(Target {
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            host,
            tls,
            path: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string()),
            authority: authority.as_str().to_string(),
        })
    }
}

/// POSTs `body`; returns the HTTP status.
async fn post(
    target: &Target,
    tls: &Option<Arc<rustls::ClientConfig>>,
    body: Vec<u8>,
) -> Result<u16, String> {
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("connect to {}:{}: {e}", target.host, target.port))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| format!("TLS name {}: {e}", target.host))?;
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {}: {e}", target.host))?;
            send(stream, target, body).await
        }
        None => send(tcp, target, body).await,
    }
}

async fn send<S>(io: S, target: &Target, body: Vec<u8>) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(Method::POST)
        .uri(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("baton/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("POST: {e}"))?;
        let status = response.status().as_u16();
        // Read the (small) answer so the connection ends cleanly.
        let _ = response.into_body().collect().await;
        Ok(status)
    }
    .await;
    driver.abort();
    result
}

/// Runs on every node; sends while this node is the leader.
pub async fn run(
    queue: QueueNode,
    writer: Writer,
    config: EventsConfig,
    mut stop: watch::Receiver<bool>,
) {
    let target = match Target::parse(&config.webhook_url) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "events webhook disabled");
            return;
        }
    };
    let tls = target.tls.then(|| {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    let reader = queue.reader.clone();
    let mut changed = reader.shared.changed.subscribe();
    let mut backoff = Duration::from_secs(1);
    loop {
        if *stop.borrow() {
            return;
        }
        changed.borrow_and_update();
        // A new leader (or a restarted one) first applies everything committed: the last
        // recorded position may be among it.
        let applied = *changed.borrow();
        let caught_up =
            applied >= queue.committed.load(std::sync::atomic::Ordering::Acquire) && applied > 0;
        let batch: Vec<_> = if queue.is_leader() && caught_up {
            let from = reader.webhook_position().unwrap_or(0);
            reader
                .events_after(from)
                .take(config.webhook_batch)
                .filter_map(Result::ok)
                .collect()
        } else {
            Vec::new()
        };
        let Some(last) = batch.last().map(|(p, _)| *p) else {
            // Nothing to send (or not the leader): wait for new entries, or look again
            // in a while (leadership changes do not bump the applied index).
            tokio::select! {
                _ = changed.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        let events: Vec<_> = batch
            .into_iter()
            .map(|(p, e)| baton_admin::server::event_pb(p, e))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap_or_default();
        let sent = tokio::time::timeout(config.webhook_timeout, post(&target, &tls, body)).await;
        let failure = match sent {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                match writer
                    .write_applied(Request::WebhookSent { position: last })
                    .await
                {
                    Ok(_) => {
                        backoff = Duration::from_secs(1);
                        metrics::gauge!(crate::metrics::WEBHOOK_POSITION).set(last as f64);
                        continue;
                    }
                    // Sent but not recorded: it will be sent again (at least once).
                    Err(e) => format!("recording the position: {e}"),
                }
            }
            Ok(Ok(status)) => format!("HTTP {status}"),
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {:?}", config.webhook_timeout),
        };
        metrics::counter!(crate::metrics::WEBHOOK_FAILURES).increment(1);
        tracing::warn!(url = %config.webhook_url, error = %failure, retry_in = ?backoff, "events webhook failed");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8080/hooks/baton?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("127.0.0.1", 8080, false));
        assert_eq!(t.path, "/hooks/baton?x=1");
        let t = Target::parse("https://events.example.com").unwrap();
        assert_eq!((t.port, t.tls, t.path.as_str()), (443, true, "/"));
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("not a url").is_err());
    }
}
