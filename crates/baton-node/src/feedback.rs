//! Bounce tokens at this node: the replicated key (made by the leader when it finds none:
//! at bootstrap, or after an upgrade from a version without it), the VERP MAIL FROM of
//! delivery, the `X-Baton-Ref` header of ingress, and the expiry of the retained records
//! reports are judged by. Receiving reports is `ingress::bounces`.

use crate::config::bounces::BouncesConfig;
use baton_cluster::Writer;
use baton_feedback::token::{KEY_LEN, Token, WHOLE_MESSAGE};
use baton_queue::QueueNode;
use baton_queue::state_machine::QueueReader;
use baton_queue::types::Request;
use baton_smtp::address::{Mailbox, ReversePath};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often a node looks for the key until it is set.
const KEY_CHECK: Duration = Duration::from_secs(1);

/// `[bounces]` with the replicated state: what makes tokens. Present only when
/// `bounces.domain` is set.
pub struct BounceSetup {
    /// Lower-cased.
    pub domain: String,
    /// Lower-cased; empty: none.
    pub fbl_address: String,
    reader: QueueReader,
    /// The key once read: it never changes after it is set (the first one stays), so
    /// tokens after that need no read of the state.
    key: std::sync::OnceLock<Vec<u8>>,
}

impl BounceSetup {
    pub fn new(config: &BouncesConfig, reader: QueueReader) -> Option<Arc<BounceSetup>> {
        config.enabled().then(|| {
            Arc::new(BounceSetup {
                domain: config.domain(),
                fbl_address: config.fbl_address.to_ascii_lowercase(),
                reader,
                key: std::sync::OnceLock::new(),
            })
        })
    }

    /// The key, once the leader has set it.
    pub fn key(&self) -> Option<&[u8]> {
        if let Some(key) = self.key.get() {
            return Some(key);
        }
        match self.reader.bounce_key() {
            Ok(Some(key)) => Some(self.key.get_or_init(|| key)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the bounce key");
                None
            }
        }
    }

    /// The MAIL FROM for sending message `id` (whose recipients are `all`) to `sending`:
    /// `b-TOKEN@domain`, naming the recipient when there is one. `None` (send with the
    /// stored sender) for the null sender, or before the key exists.
    pub fn mail_from(
        &self,
        id: &str,
        from: &ReversePath,
        all: &[String],
        sending: &[&str],
    ) -> Option<ReversePath> {
        from.mailbox()?; // DSNs keep <>
        let index = match sending {
            [one] => all
                .iter()
                .position(|r| r == one)
                .and_then(|i| u16::try_from(i).ok())
                .filter(|i| *i != WHOLE_MESSAGE)
                .unwrap_or(WHOLE_MESSAGE),
            _ => WHOLE_MESSAGE,
        };
        let token = Token::for_message(id, index)?;
        let address = token.address(self.key()?, &self.domain);
        Mailbox::parse(&address).ok().map(ReversePath::Mailbox)
    }

    /// `X-Baton-Ref: v1.TOKEN\r\n` for message `id` with `nrcpt` recipients (the token
    /// names the recipient when there is one); `None` before the key exists.
    pub fn reference_header(&self, id: &str, nrcpt: usize) -> Option<String> {
        let index = if nrcpt == 1 { 0 } else { WHOLE_MESSAGE };
        let token = Token::for_message(id, index)?;
        match self.key() {
            Some(key) => Some(token.header(key)),
            None => {
                tracing::warn!(id, "no bounce key yet: message refused with 451 4.3.0");
                None
            }
        }
    }
}

/// Runs on every node; until the key is set, the leader proposes one (32 random bytes,
/// made here, never in apply: every replica stores the same). Then it idles until told
/// to stop (a task that ends would be started again by the supervisor).
pub async fn ensure_key(queue: QueueNode, writer: Writer, mut stop: watch::Receiver<bool>) {
    loop {
        if matches!(queue.reader.bounce_key(), Ok(Some(_))) {
            let _ = stop.wait_for(|s| *s).await;
            return;
        }
        if queue.is_leader() {
            let key = baton_feedback::token::new_key();
            debug_assert_eq!(key.len(), KEY_LEN);
            match writer.write(Request::SetBounceKey { key }).await {
                Ok(r) if r.changed => tracing::info!("bounce token key made"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not set the bounce key"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(KEY_CHECK) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The cut below which retained records go (`TrimTracked`), if any record is older than
/// `cutoff_ms`: no write at all while there are none (bounce handling off).
pub fn tracked_trim_point(reader: &QueueReader, cutoff_ms: u64) -> Option<u64> {
    let oldest = reader.oldest_tracked().ok()??;
    let at = ulid::Ulid::from_string(&oldest)
        .map(|u| u.timestamp_ms())
        .unwrap_or(0);
    (at < cutoff_ms).then_some(cutoff_ms)
}
