//! Smoke tests for the `baton-sink` and `baton-load` binaries.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_load::sink::{AcceptedMessage, SinkConfig, load_seq, start_sink};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::test]
async fn baton_sink_binary_ready_file_and_greeting() {
    let dir = std::env::temp_dir().join(format!("baton-sink-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ready = dir.join("ready");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton-sink"))
        .args(["--listen", "127.0.0.1:0", "--dir"])
        .arg(dir.join("mail"))
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    tokio::time::timeout(Duration::from_secs(10), out.read_line(&mut first))
        .await
        .unwrap()
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    let start = Instant::now();
    while !ready.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no ready file");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(std::fs::read_to_string(&ready).unwrap().trim(), addr);

    let s = TcpStream::connect(&addr).await.unwrap();
    let mut r = BufReader::new(s);
    let mut l = String::new();
    r.read_line(&mut l).await.unwrap();
    assert!(l.starts_with("220 "), "{l}");
    r.get_mut()
        .write_all(b"HELO t\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
        .await
        .unwrap();
    for want in ["250 ", "250 ", "250 ", "354 "] {
        l.clear();
        r.read_line(&mut l).await.unwrap();
        assert!(l.starts_with(want), "want {want} got {l}");
    }
    r.get_mut().write_all(b"hello\r\n.\r\n").await.unwrap();
    l.clear();
    r.read_line(&mut l).await.unwrap();
    assert_eq!(l, "250 2.0.0 Ok: accepted as 1\r\n");
    let eml = std::fs::read_to_string(dir.join("mail/1.eml")).unwrap();
    assert!(eml.starts_with("X-Sink-Mail-From: a@b\r\nX-Sink-Rcpt-To: c@d\r\nX-Sink-Helo: t\r\n"));
    assert!(eml.ends_with("\r\nhello\r\n"));
    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_load_binary_against_sink() {
    let got: Arc<Mutex<BTreeMap<u64, Vec<u8>>>> = Arc::default();
    let g2 = got.clone();
    let mut cfg = SinkConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.on_message = Some(Arc::new(move |m: &AcceptedMessage<'_>| {
        let seq = load_seq(m.data).expect("X-Load-Seq");
        assert!(m.rcpts[0].starts_with(&format!("u{}@", seq % 1000)));
        g2.lock().unwrap().insert(seq, m.data.to_vec());
    }));
    let h = start_sink(cfg).await.unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton-load"))
        .args([
            "--target",
            &h.local_addr().to_string(),
            "--messages",
            "200",
            "--size",
            "3000",
            "--connections",
            "3",
            "--timeout",
            "30s",
            "--json",
        ])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["sent"], 200);
    assert_eq!(v["accepted"], 200);
    assert_eq!(v["failed"], 0);
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 200);
    let mut stuffed_lines = 0;
    for (seq, data) in got.iter() {
        // Size is exact (after unstuffing) and the message is well formed.
        assert_eq!(data.len(), 3000, "seq {seq}");
        let text = std::str::from_utf8(data).unwrap();
        assert!(text.contains(&format!("\r\nX-Load-Seq: {seq}\r\n")));
        let (hdr, body) = text.split_once("\r\n\r\n").unwrap();
        for h in ["Message-ID: <", "Date: ", "From: ", "To: ", "Subject: "] {
            assert!(hdr.contains(h), "missing {h}");
        }
        for line in body.split_terminator("\r\n") {
            assert!(line.len() <= 76 && !line.is_empty());
            assert!(line.bytes().all(|b| (0x21..0x7f).contains(&b)));
            if line.starts_with('.') {
                stuffed_lines += 1;
            }
        }
    }
    assert!(stuffed_lines > 0, "body never exercised dot-stuffing");
    h.shutdown();
}
