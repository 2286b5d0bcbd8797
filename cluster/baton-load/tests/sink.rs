//! Integration tests for the SMTP sink, over real loopback sockets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_load::sink::{AcceptedMessage, SinkConfig, SinkHandle, load_seq, start_sink};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(10);

fn loopback0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "baton-sink-test-{}-{}-{}",
            std::process::id(),
            name,
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = match std::fs::read_dir(&self.0) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn sink(dir: Option<&TempDir>) -> SinkHandle {
    let mut cfg = SinkConfig::new(loopback0());
    cfg.dir = dir.map(|d| d.0.clone());
    start_sink(cfg).await.expect("start sink")
}

struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = tokio::time::timeout(T, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client {
            r: BufReader::new(s),
        }
    }

    async fn send(&mut self, data: &[u8]) {
        self.r.get_mut().write_all(data).await.unwrap();
    }

    /// Read one complete (possibly multi-line) reply; returns its lines.
    async fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            let n = tokio::time::timeout(T, self.r.read_line(&mut l))
                .await
                .expect("reply timeout")
                .unwrap();
            assert!(n > 0, "unexpected EOF; got so far {lines:?}");
            assert!(l.ends_with("\r\n"), "reply not CRLF terminated: {l:?}");
            let l = l.trim_end().to_string();
            let last = l.as_bytes().get(3) != Some(&b'-');
            lines.push(l);
            if last {
                return lines;
            }
        }
    }

    async fn expect(&mut self, prefix: &str) -> String {
        let r = self.reply().await;
        let last = r.last().unwrap().clone();
        assert!(last.starts_with(prefix), "expected {prefix:?}, got {r:?}");
        last
    }

    async fn ehlo(&mut self) -> Vec<String> {
        self.expect("220 ").await;
        self.send(b"EHLO client.test\r\n").await;
        let r = self.reply().await;
        assert!(r.last().unwrap().starts_with("250 "), "{r:?}");
        r
    }

    async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(T, self.r.read_to_end(&mut rest))
            .await
            .expect("eof timeout")
            .unwrap_or(0);
        assert_eq!(
            n,
            0,
            "expected EOF, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

#[tokio::test]
async fn binds_ephemeral_port_and_advertises_extensions() {
    let h = sink(None).await;
    assert_eq!(h.local_addr().ip().to_string(), "127.0.0.1");
    assert_ne!(h.local_addr().port(), 0);
    let mut c = Client::connect(h.local_addr()).await;
    let r = c.ehlo().await;
    let exts: Vec<&str> = r.iter().skip(1).map(|l| &l[4..]).collect();
    for e in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "SIZE 104857600",
    ] {
        assert!(exts.contains(&e), "missing {e} in {r:?}");
    }
    assert!(!exts.iter().any(|e| e.starts_with("STARTTLS")), "{r:?}");
    c.send(b"NOOP\r\n").await;
    c.expect("250 ").await;
    c.send(b"QUIT\r\n").await;
    c.expect("221 ").await;
    c.expect_eof().await;
    h.shutdown();
}

#[tokio::test]
async fn pipelined_transaction_writes_file_with_headers_and_unstuffs() {
    let dir = TempDir::new("pipelined");
    let h = sink(Some(&dir)).await;
    let mut c = Client::connect(h.local_addr()).await;
    c.ehlo().await;
    // Whole transaction in one write, including a rejected recipient.
    c.send(
        b"MAIL FROM:<alice@src.test> BODY=8BITMIME\r\n\
          RCPT TO:<bob@dst.test>\r\n\
          RCPT TO:<reject-me@dst.test>\r\n\
          RCPT TO:<carol@dst.test>\r\n\
          DATA\r\n",
    )
    .await;
    c.expect("250 2.1.0").await;
    c.expect("250 2.1.5").await;
    assert_eq!(c.reply().await, vec!["550 5.1.1 no such user".to_string()]);
    c.expect("250 2.1.5").await;
    c.expect("354 ").await;
    // Body with dot-stuffed lines, message terminator and QUIT pipelined.
    c.send(
        b"Subject: hi\r\n\r\n..leading dot\r\n...two dots\r\nnot the end .\r\n\r\n.\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        c.reply().await,
        vec!["250 2.0.0 Ok: accepted as 1".to_string()]
    );
    c.expect("221 ").await;
    c.expect_eof().await;

    assert_eq!(dir.files(), vec!["1.eml".to_string()]);
    let got = std::fs::read(dir.0.join("1.eml")).unwrap();
    let local = c.r.get_ref().local_addr().unwrap();
    let expected = format!(
        "X-Sink-Mail-From: alice@src.test\r\n\
         X-Sink-Rcpt-To: bob@dst.test\r\n\
         X-Sink-Rcpt-To: carol@dst.test\r\n\
         X-Sink-Helo: client.test\r\n\
         X-Sink-Peer: {local}\r\n\
         Subject: hi\r\n\r\n.leading dot\r\n..two dots\r\nnot the end .\r\n\r\n"
    );
    assert_eq!(String::from_utf8_lossy(&got), expected);
    assert_eq!(h.stats().accepted(), 1);
    h.shutdown();
}

#[tokio::test]
async fn tempfail_and_deferonce() {
    let h = sink(None).await;
    let mut c = Client::connect(h.local_addr()).await;
    c.ehlo().await;
    for round in 0..2 {
        c.send(
            b"MAIL FROM:<>\r\n\
              RCPT TO:<x-tempfail@d.test>\r\n\
              RCPT TO:<DeferOnce1@d.test>\r\n\
              RCPT TO:<ok@d.test>\r\n\
              RSET\r\n",
        )
        .await;
        c.expect("250 ").await;
        c.expect("451 4.3.0 try later").await;
        if round == 0 {
            c.expect("451 4.3.0 try later").await;
        } else {
            c.expect("250 2.1.5").await;
        }
        c.expect("250 2.1.5").await;
        c.expect("250 ").await;
    }
    // A different deferonce address is deferred the first time too, also
    // when it arrives over another connection.
    let mut c2 = Client::connect(h.local_addr()).await;
    c2.ehlo().await;
    c2.send(
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<deferonce2@d.test>\r\nRCPT TO:<deferonce2@d.test>\r\n",
    )
    .await;
    c2.expect("250 ").await;
    c2.expect("451 ").await;
    c2.expect("250 ").await;
    h.shutdown();
}

#[tokio::test]
async fn datafail_rejects_at_end_of_data_and_writes_nothing() {
    let dir = TempDir::new("datafail");
    let h = sink(Some(&dir)).await;
    let mut c = Client::connect(h.local_addr()).await;
    c.ehlo().await;
    c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<ok@d.test>\r\nRCPT TO:<datafail@d.test>\r\nDATA\r\n")
        .await;
    c.expect("250 ").await;
    c.expect("250 ").await;
    c.expect("250 ").await;
    c.expect("354 ").await;
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n").await;
    assert_eq!(
        c.reply().await,
        vec!["554 5.6.0 content rejected".to_string()]
    );
    // The transaction is reset; the next one (without datafail) succeeds.
    c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<ok@d.test>\r\nDATA\r\n")
        .await;
    c.expect("250 ").await;
    c.expect("250 ").await;
    c.expect("354 ").await;
    c.send(b"Subject: y\r\n\r\nbody\r\n.\r\n").await;
    c.expect("250 2.0.0 Ok: accepted as 1").await;
    assert_eq!(dir.files(), vec!["1.eml".to_string()]);
    assert_eq!(h.stats().accepted(), 1);
    assert_eq!(h.stats().data_failed.load(Ordering::Relaxed), 1);
    h.shutdown();
}

#[tokio::test]
async fn sequencing_errors() {
    let h = sink(None).await;
    let mut c = Client::connect(h.local_addr()).await;
    c.expect("220 ").await;
    c.send(b"MAIL FROM:<a@b>\r\n").await;
    c.expect("503 ").await;
    c.send(b"HELO client.test\r\nRCPT TO:<x@y>\r\nMAIL FROM:<a@b>\r\nRCPT TO:<reject@y>\r\nDATA\r\nRSET\r\nRCPT TO:<x@y>\r\nFOO\r\n")
        .await;
    c.expect("250 ").await; // HELO
    c.expect("503 ").await; // RCPT before MAIL
    c.expect("250 ").await; // MAIL
    c.expect("550 ").await; // RCPT reject
    c.expect("554 5.5.1").await; // DATA with no valid recipients
    c.expect("250 ").await; // RSET
    c.expect("503 ").await; // RCPT after RSET
    c.expect("500 ").await; // unknown
    h.shutdown();
}

#[tokio::test]
async fn busy_greeting_closes() {
    let mut cfg = SinkConfig::new(loopback0());
    cfg.greeting_code = 421;
    let h = start_sink(cfg).await.unwrap();
    let mut c = Client::connect(h.local_addr()).await;
    assert_eq!(c.reply().await, vec!["421 4.3.2 sink busy".to_string()]);
    c.expect_eof().await;
    h.shutdown();
}

/// (sink seq, X-Load-Seq, data)
type Seen = (u64, Option<u64>, Vec<u8>);

#[tokio::test]
async fn counting_mode_callback_and_fragmented_input() {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let s2 = seen.clone();
    let mut cfg = SinkConfig::new(loopback0());
    cfg.on_message = Some(Arc::new(move |m: &AcceptedMessage<'_>| {
        s2.lock()
            .unwrap()
            .push((m.seq, load_seq(m.data), m.data.to_vec()));
    }));
    let h = start_sink(cfg).await.unwrap();
    let mut c = Client::connect(h.local_addr()).await;
    c.ehlo().await;
    for i in 0..3u64 {
        c.send(b"MAIL FROM:<l@b.test>\r\nRCPT TO:<u1@d.test>\r\nDATA\r\n")
            .await;
        c.expect("250 ").await;
        c.expect("250 ").await;
        c.expect("354 ").await;
        let msg = format!("X-Load-Seq: {i}\r\n\r\n..x\r\nline\r\n.\r\n");
        // Dribble the message a few bytes at a time so lines (and the
        // terminator) are split across reads.
        for chunk in msg.as_bytes().chunks(3) {
            c.send(chunk).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        c.expect(&format!("250 2.0.0 Ok: accepted as {}", i + 1))
            .await;
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for (i, (seq, ls, data)) in seen.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(*ls, Some(i as u64));
        assert_eq!(
            String::from_utf8_lossy(data),
            format!("X-Load-Seq: {i}\r\n\r\n.x\r\nline\r\n")
        );
    }
    assert_eq!(h.stats().accepted(), 3);
    h.shutdown();
}

#[tokio::test]
async fn many_pipelined_messages_in_one_write() {
    let dir = TempDir::new("many");
    let h = sink(Some(&dir)).await;
    let mut c = Client::connect(h.local_addr()).await;
    c.ehlo().await;
    // A client that (incorrectly) pipelines past DATA must still get all
    // replies in order.
    let mut buf = Vec::new();
    for i in 0..20 {
        buf.extend_from_slice(
            format!(
                "MAIL FROM:<a@b>\r\nRCPT TO:<r{i}@d>\r\nDATA\r\nSubject: {i}\r\n\r\nb\r\n.\r\n"
            )
            .as_bytes(),
        );
    }
    buf.extend_from_slice(b"QUIT\r\n");
    c.send(&buf).await;
    for i in 0..20 {
        c.expect("250 ").await;
        c.expect("250 ").await;
        c.expect("354 ").await;
        c.expect(&format!("250 2.0.0 Ok: accepted as {}", i + 1))
            .await;
    }
    c.expect("221 ").await;
    assert_eq!(dir.files().len(), 20);
    assert!(dir.files().iter().all(|f| f.ends_with(".eml")));
    h.shutdown();
}
