//! The `baton-sink` binary with a rules file, driven by a raw SMTP client:
//! a rate rule, a multi-line 550-5.1.1 on one recipient, max_sessions, and a
//! SIGHUP reload that lifts the rate rule.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use baton_load::rules::now_ms;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);

const GONE: &str = "550-5.1.1 The email account that you tried to reach does not exist.\n\
                    550-5.1.1 Please try double-checking the recipient's email address.\n\
                    550 5.1.1 https://support.google.com/mail/?p=NoSuchUser - gsmtp";
const RATE: &str = "421-4.7.28 Gmail has detected an unusual rate of email originating from your IP address 127.0.0.1.\n\
                    421 4.7.28 To protect our users from spam, email sent from your IP address has been temporarily rate limited. - gsmtp";

fn rules_text(rate: bool) -> String {
    let mut t = format!(
        "[[rule]]\nstage = \"connect\"\nmax_sessions = 2\n\
         reply = \"421 RP-003 too many connections\"\n\n\
         [[rule]]\nstage = \"rcpt\"\nrcpt = \"gone@*\"\nreply = '''{GONE}'''\n"
    );
    if rate {
        t.push_str(&format!(
            "\n[[rule]]\nstage = \"data\"\nrate = \"2/s\"\nclose = true\nreply = '''{RATE}'''\n"
        ));
    }
    t
}

fn crlf(reply: &str) -> Vec<String> {
    reply.lines().map(|l| l.trim().to_string()).collect()
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The sink's stdout, line by line.
struct Out(mpsc::UnboundedReceiver<String>);

impl Out {
    /// The next line starting with `prefix` (earlier lines are skipped).
    async fn wait(&mut self, prefix: &str) -> String {
        let got = tokio::time::timeout(T, async {
            while let Some(l) = self.0.recv().await {
                if l.starts_with(prefix) {
                    return Some(l);
                }
            }
            None
        })
        .await;
        match got {
            Ok(Some(l)) => l,
            Ok(None) => panic!("sink stdout closed before {prefix:?}"),
            Err(_) => panic!("no {prefix:?} line within {T:?}"),
        }
    }
}

struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    async fn connect(addr: &str) -> Client {
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

    /// One complete reply, its lines without CRLF (each checked for CRLF).
    async fn reply(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        for _ in 0..200 {
            let mut l = String::new();
            let n = tokio::time::timeout(T, self.r.read_line(&mut l))
                .await
                .expect("reply timeout")
                .unwrap();
            assert!(n > 0, "unexpected EOF; got so far {lines:?}");
            assert!(l.ends_with("\r\n"), "reply not CRLF terminated: {l:?}");
            let l = l.trim_end_matches("\r\n").to_string();
            let last = l.as_bytes().get(3) != Some(&b'-');
            lines.push(l);
            if last {
                return lines;
            }
        }
        panic!("reply longer than 200 lines: {lines:?}");
    }

    async fn expect(&mut self, prefix: &str) {
        let r = self.reply().await;
        assert!(
            r.last().unwrap().starts_with(prefix),
            "expected {prefix:?}, got {r:?}"
        );
    }

    async fn greeted(addr: &str) -> Client {
        let mut c = Client::connect(addr).await;
        c.expect("220 ").await;
        c.send(b"EHLO client.test\r\n").await;
        c.expect("250 ").await;
        c
    }

    /// One transaction; the final reply.
    async fn message(&mut self, rcpt: &str) -> Vec<String> {
        self.send(format!("MAIL FROM:<a@src.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").as_bytes())
            .await;
        self.expect("250 ").await;
        self.expect("250 ").await;
        self.expect("354 ").await;
        self.send(b"Subject: x\r\n\r\nbody\r\n.\r\n").await;
        self.reply().await
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

    async fn quit(mut self) {
        self.send(b"QUIT\r\n").await;
        self.expect("221 ").await;
        self.expect_eof().await;
    }
}

/// Sleep until just after the next one-second window starts (the rate
/// rule's windows are wall-clock seconds): a bounded wait of at most 1.02 s.
async fn next_second() {
    let ms = now_ms();
    tokio::time::sleep(Duration::from_millis(1000 - ms % 1000 + 20)).await;
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn rules_rate_rcpt_max_sessions_and_reload() {
    let dir =
        TempDir(std::env::temp_dir().join(format!("baton-sink-rules-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let rules = dir.0.join("rules.toml");
    write_atomic(&rules, &rules_text(true));

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_baton-sink"))
        .args(["--listen", "127.0.0.1:0", "--rules"])
        .arg(&rules)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().expect("pid") as libc::pid_t;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut out = Out(rx);
    let addr = out
        .wait("listening on ")
        .await
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    assert!(
        out.wait("rules loaded: ")
            .await
            .starts_with("rules loaded: 3 from ")
    );

    // The multi-line 550-5.1.1 for one recipient, written as given with CRLF;
    // other recipients are accepted.
    let mut c = Client::greeted(&addr).await;
    c.send(
        b"MAIL FROM:<a@src.test>\r\nRCPT TO:<Gone@dst.test>\r\nRCPT TO:<ok@dst.test>\r\nRSET\r\n",
    )
    .await;
    c.expect("250 ").await;
    assert_eq!(c.reply().await, crlf(GONE));
    c.expect("250 2.1.5").await;
    c.expect("250 ").await;
    let hit = out.wait("hit ").await;
    assert!(hit.starts_with("hit rule=1 stage=rcpt code=550 "), "{hit}");
    assert!(hit.contains("rcpts=\"Gone@dst.test\""), "{hit}");
    c.quit().await;

    // The rate rule: 2 accepted per second, then the multi-line 421 and a
    // close. A try that straddles a window boundary is repeated.
    let mut done = false;
    for _ in 0..5 {
        next_second().await;
        let window = now_ms() / 1000;
        let mut c = Client::greeted(&addr).await;
        let r1 = c.message("u1@dst.test").await;
        let r2 = c.message("u2@dst.test").await;
        let r3 = c.message("u3@dst.test").await;
        if now_ms() / 1000 != window {
            continue;
        }
        assert!(r1[0].starts_with("250 2.0.0 Ok: accepted as "), "{r1:?}");
        assert!(r2[0].starts_with("250 2.0.0 Ok: accepted as "), "{r2:?}");
        assert_eq!(r3, crlf(RATE));
        c.expect_eof().await;
        let hit = out.wait("hit ").await;
        assert!(hit.starts_with("hit rule=2 stage=data code=421 "), "{hit}");
        done = true;
        break;
    }
    assert!(done, "every try straddled a second boundary");
    // The next window accepts again.
    next_second().await;
    let mut c = Client::greeted(&addr).await;
    let r = c.message("u4@dst.test").await;
    assert!(r[0].starts_with("250 2.0.0 Ok: accepted as "), "{r:?}");
    let accepted = out.wait("accepted seq=").await;
    assert!(accepted.contains(" t="), "{accepted}");
    c.quit().await;

    // max_sessions = 2: with two sessions open, a third gets RP-003 and is
    // closed. (The sink may take a moment to count the sessions above as
    // ended, so the two held ones may need a few tries.)
    let mut held = Vec::new();
    for _ in 0..200 {
        if held.len() == 2 {
            break;
        }
        let mut c = Client::connect(&addr).await;
        let r = c.reply().await;
        if r[0].starts_with("220 ") {
            held.push(c);
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(held.len(), 2, "two sessions were never greeted");
    let mut third = Client::connect(&addr).await;
    assert_eq!(
        third.reply().await,
        vec!["421 RP-003 too many connections".to_string()]
    );
    third.expect_eof().await;
    let hit = out.wait("hit rule=0 ").await;
    assert!(
        hit.starts_with("hit rule=0 stage=connect code=421 "),
        "{hit}"
    );
    for c in held {
        c.quit().await;
    }

    // A bad rules file is refused and the old rules stay.
    write_atomic(&rules, "[[rule]]\nstage = \"nowhere\"\nreply = \"421 x\"\n");
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let l = out.wait("rules reload").await;
    assert!(
        l.starts_with("rules reload failed (old rules kept): "),
        "{l}"
    );

    // Lift the rate limit: rewrite the file without the rate rule, SIGHUP,
    // wait for the reload line; 5 messages in a row are all accepted (the
    // old rule would have refused the third of any second).
    write_atomic(&rules, &rules_text(false));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let l = out.wait("rules reload").await;
    assert!(l.starts_with("rules reloaded: 2 from "), "{l}");
    let mut c = Client::greeted(&addr).await;
    for i in 0..5 {
        let r = c.message(&format!("v{i}@dst.test")).await;
        assert!(r[0].starts_with("250 2.0.0 Ok: accepted as "), "{r:?}");
    }
    // The rcpt rule is still there.
    c.send(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<gone@dst.test>\r\nRSET\r\n")
        .await;
    c.expect("250 ").await;
    assert_eq!(c.reply().await, crlf(GONE));
    c.expect("250 ").await;
    c.quit().await;

    child.kill().await.unwrap();
}
