//! Server session transcripts: no sockets, just events in and actions out.

use baton_smtp::address::{Mailbox, ReversePath};
use baton_smtp::command::BodyType;
use baton_smtp::reply::Reply;
use baton_smtp::server::{Action, AuthResult, Envelope, Event, Phase, ServerConfig, ServerSession};

fn relay_cfg() -> ServerConfig {
    ServerConfig {
        hostname: "mx.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_errors: 5,
        relay_allowed: true,
        ..ServerConfig::default()
    }
}

/// A session plus what it produced.
struct T {
    s: ServerSession,
    /// Answer Enqueue with Ok("Q1") automatically.
    auto_enqueue: bool,
    enqueued: Vec<Envelope>,
}

/// The actions of one step.
#[derive(Debug)]
struct Step(Vec<Action>);

impl Step {
    fn replies(&self) -> Vec<String> {
        self.0
            .iter()
            .filter_map(|a| match a {
                Action::Reply(r) => Some(String::from_utf8_lossy(&r.to_bytes()).into_owned()),
                _ => None,
            })
            .collect()
    }
    /// Exactly one reply, starting with `prefix`.
    fn expect(self, prefix: &str) -> Self {
        let r = self.replies();
        assert!(
            r.len() == 1 && r[0].starts_with(prefix),
            "want one reply {prefix:?}, got {r:?}"
        );
        self
    }
    /// The replies' code and enhanced code, in order (parsed back with ReplyParser).
    fn codes(&self) -> Vec<String> {
        let mut p = baton_smtp::reply::ReplyParser::new();
        p.feed(self.replies().join("").as_bytes());
        let mut out = Vec::new();
        while let Some(r) = p.next_reply().expect("valid replies") {
            out.push(match r.enhanced {
                Some(e) => format!("{} {e}", r.code),
                None => r.code.to_string(),
            });
        }
        out
    }
    fn has(&self, want: &Action) -> bool {
        self.0.contains(want)
    }
    fn closes(&self) -> bool {
        self.has(&Action::Close)
    }
}

impl T {
    fn new(cfg: ServerConfig) -> T {
        let mut t = T {
            s: ServerSession::new(cfg),
            auto_enqueue: false,
            enqueued: Vec::new(),
        };
        t.event(Event::Connected)
            .expect("220 mx.test ESMTP Baton\r\n");
        t
    }
    fn relay() -> T {
        T::new(relay_cfg())
    }
    fn event(&mut self, e: Event<'_>) -> Step {
        let mut actions = self.s.handle(e);
        // Answer enqueues automatically if asked (repeat: answers can release more).
        let mut i = 0;
        while i < actions.len() {
            if let Action::Enqueue(env) = &actions[i] {
                self.enqueued.push(env.clone());
                if self.auto_enqueue {
                    let more = self.s.handle(Event::Enqueued(Ok("Q1".into())));
                    actions.extend(more);
                }
            }
            i += 1;
        }
        Step(actions)
    }
    fn raw(&mut self, bytes: &[u8]) -> Step {
        self.event(Event::Input(bytes))
    }
    fn send(&mut self, line: &str) -> Step {
        self.raw(format!("{line}\r\n").as_bytes())
    }
    fn ehlo(&mut self) {
        self.send("EHLO client.test").expect("250-mx.test");
    }
}

fn mb(s: &str) -> Mailbox {
    Mailbox::parse(s).expect("valid mailbox")
}

#[test]
fn relay_happy_path() {
    let mut t = T::relay();
    let ehlo = t.send("EHLO client.test");
    let text = ehlo.replies().join("");
    assert_eq!(
        text,
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
         250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
    );
    t.send("MAIL FROM:<a@b.test> BODY=8BITMIME")
        .expect("250 2.1.0");
    t.send("RCPT TO:<x@y.test>").expect("250 2.1.5");
    t.send("RCPT TO:<X@Y.TEST>").expect("250 2.1.5");
    t.send("RCPT TO:<x@Y.test>").expect("250 2.1.5"); // duplicate, dropped
    t.send("DATA").expect("354 End data with <CR><LF>.<CR><LF>");
    assert!(t.s.in_data());
    assert_eq!(t.s.phase(), Phase::Data);
    let step = t.raw(b"Subject: hi\r\n\r\n..dot\r\n.\r\n");
    assert!(step.replies().is_empty());
    let env = match &step.0[..] {
        [Action::Enqueue(env)] => env.clone(),
        other => panic!("want Enqueue, got {other:?}"),
    };
    assert_eq!(env.helo, "client.test");
    assert_eq!(env.from, ReversePath::Mailbox(mb("a@b.test")));
    assert_eq!(env.rcpts, vec![mb("x@y.test"), mb("X@Y.TEST")]);
    assert_eq!(env.body, b"Subject: hi\r\n\r\n.dot\r\n");
    assert_eq!(env.body_type, BodyType::EightBitMime);
    assert!(env.esmtp && !env.tls && !env.smtputf8 && env.authenticated.is_none());
    assert!(t.s.waiting());
    assert_eq!(t.s.phase(), Phase::Waiting);
    // Input while waiting is buffered, not answered.
    assert!(t.send("NOOP").0.is_empty());
    let step = t.event(Event::Enqueued(Ok("01ABC".into())));
    assert_eq!(
        step.replies(),
        vec!["250 2.0.0 Ok: queued as 01ABC\r\n", "250 2.0.0 Ok\r\n"]
    );
    t.send("QUIT").expect("221 2.0.0 Bye");
    assert!(t.s.is_closed());
    assert!(t.send("NOOP").0.is_empty());
}

#[test]
fn enqueue_failure_reply_passed_through() {
    let mut t = T::relay();
    t.ehlo();
    t.send("MAIL FROM:<>").expect("250");
    t.send("RCPT TO:<x@y>").expect("250");
    t.send("DATA").expect("354");
    t.raw(b".\r\n");
    t.event(Event::Enqueued(Err(Reply::new(451, "4.3.0", "No quorum"))))
        .expect("451 4.3.0 No quorum");
    // The transaction is gone.
    t.send("RCPT TO:<x@y>").expect("503 5.5.1");
}

#[test]
fn relay_denied_and_postmaster() {
    let mut t = T::new(ServerConfig {
        relay_allowed: false,
        ..relay_cfg()
    });
    t.ehlo();
    t.send("MAIL FROM:<a@b>").expect("250");
    t.send("RCPT TO:<x@y>").expect("554 5.7.1");
    let step = t.send("RCPT TO:<postmaster>").expect("250 2.1.5");
    drop(step);
    t.auto_enqueue = true;
    t.send("DATA").expect("354");
    t.raw(b"hi\r\n.\r\n").expect("250 2.0.0 Ok: queued as Q1");
    assert_eq!(t.enqueued[0].rcpts, vec![mb("postmaster@mx.test")]);
}

#[test]
fn sequence_errors() {
    let mut t = T::new(ServerConfig {
        max_errors: 100,
        ..relay_cfg()
    });
    t.send("MAIL FROM:<a@b>").expect("503 5.5.1");
    t.send("RCPT TO:<a@b>").expect("503 5.5.1");
    t.send("DATA").expect("503 5.5.1");
    t.send("FOO").expect("500 5.5.1");
    t.send("HELO x").expect("250 mx.test");
    t.send("RCPT TO:<a@b>").expect("503 5.5.1");
    t.send("MAIL FROM:<a@b>").expect("250");
    t.send("MAIL FROM:<a@b>").expect("503 5.5.1");
    t.send("DATA").expect("554 5.5.1");
    t.send("RSET").expect("250 2.0.0");
    t.send("MAIL FROM:<a@b> RET=HDRS").expect("555 5.5.4");
    t.send("MAIL FROM:<a@b> BODY=BINARYMIME")
        .expect("555 5.5.4");
    t.send("RSET").expect("250 2.0.0");
    t.send("NOOP").expect("250 2.0.0");
    t.send("VRFY bob").expect("252 2.1.5");
    t.send("HELP").expect("214");
    t.send("STARTTLS").expect("502 5.5.1");
    t.send("AUTH PLAIN").expect("503 5.5.1");
}

#[test]
fn too_many_errors_closes() {
    let mut t = T::relay();
    for _ in 0..4 {
        t.send("BAD").expect("500 5.5.1");
    }
    let step = t.send("BAD");
    assert_eq!(step.codes(), vec!["500 5.5.1", "421 4.7.0"]);
    assert!(step.closes());
    assert!(t.s.is_closed());
}

#[test]
fn long_command_line() {
    let mut t = T::relay();
    let long = format!("NOOP {}", "x".repeat(2000));
    t.send(&long).expect("500 5.5.6 Line too long");
    t.send("NOOP").expect("250");
    // Exactly 1000 bytes with CRLF is fine.
    let max = format!("NOOP {}", "x".repeat(1000 - 7));
    t.send(&max).expect("250");
}

#[test]
fn size_limits() {
    let mut t = T::relay();
    t.ehlo();
    t.send("MAIL FROM:<a@b> SIZE=1001").expect("552 5.3.4");
    t.send("MAIL FROM:<a@b> SIZE=1000").expect("250");
    t.send("RCPT TO:<x@y>").expect("250");
    t.send("DATA").expect("354");
    let body = format!("{}\r\n.\r\n", "a\r\n".repeat(400));
    t.raw(body.as_bytes())
        .expect("552 5.3.4 Message size exceeds fixed maximum message size");
    assert!(t.enqueued.is_empty());
    t.send("NOOP").expect("250");
}

#[test]
fn too_many_recipients() {
    let mut t = T::relay();
    t.ehlo();
    t.send("MAIL FROM:<a@b>").expect("250");
    for i in 0..3 {
        t.send(&format!("RCPT TO:<r{i}@y>")).expect("250");
    }
    t.send("RCPT TO:<r9@y>").expect("452 4.5.3");
}

#[test]
fn smuggling_is_rejected_and_session_stays_in_sync() {
    for end in [
        &b"\n.\r\n"[..],
        b"\r\n.\n",
        b"\n.\n",
        b"\r.\r\n",
        b"\r\n.\r",
    ] {
        let mut t = T::relay();
        t.auto_enqueue = true;
        t.ehlo();
        t.send("MAIL FROM:<a@b>").expect("250");
        t.send("RCPT TO:<x@y>").expect("250");
        t.send("DATA").expect("354");
        let mut input = b"Subject: a".to_vec();
        input.extend(end);
        input.extend(b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nevil\r\n.\r\n");
        let step = t.raw(&input);
        assert_eq!(step.codes(), vec!["550 5.6.0"], "{end:?}");
        assert!(t.enqueued.is_empty());
        t.send("NOOP").expect("250");
    }
}

#[test]
fn long_body_line_rejected() {
    let mut t = T::new(ServerConfig {
        max_message_size: 10_000,
        ..relay_cfg()
    });
    t.ehlo();
    t.send("MAIL FROM:<a@b>").expect("250");
    t.send("RCPT TO:<x@y>").expect("250");
    t.send("DATA").expect("354");
    let body = format!("{}\r\n.\r\n", "a".repeat(999));
    t.raw(body.as_bytes())
        .expect("550 5.6.0 Line too long (RFC 5321 limit is 1000 bytes)");
}

#[test]
fn utf8_addresses() {
    let mut t = T::relay();
    t.auto_enqueue = true;
    t.ehlo();
    t.send("MAIL FROM:<jörg@bücher.test>").expect("553 5.6.7");
    t.send("MAIL FROM:<a@b>").expect("250");
    t.send("RCPT TO:<jörg@bücher.test>").expect("553 5.6.7");
    t.send("RSET").expect("250");
    t.send("MAIL FROM:<jörg@bücher.test> SMTPUTF8")
        .expect("250");
    t.send("RCPT TO:<\"john doe\"@bücher.test>").expect("250");
    t.send("DATA").expect("354");
    t.raw(b"x\r\n.\r\n").expect("250 2.0.0 Ok: queued as Q1");
    assert!(t.enqueued[0].smtputf8);
    assert_eq!(
        t.enqueued[0].rcpts[0].to_string(),
        "\"john doe\"@bücher.test"
    );
}

fn submission_cfg() -> ServerConfig {
    ServerConfig {
        relay_allowed: false,
        require_auth: true,
        auth_enabled: true,
        tls_available: true,
        ..relay_cfg()
    }
}

#[test]
fn submission_requires_tls_then_auth() {
    let mut t = T::new(submission_cfg());
    let ehlo = t.send("EHLO c").replies().join("");
    assert!(ehlo.contains("250-STARTTLS\r\n") || ehlo.ends_with("250 STARTTLS\r\n"));
    assert!(!ehlo.contains("AUTH"));
    t.send("MAIL FROM:<a@b>")
        .expect("530 5.7.0 Authentication required");
    t.send("AUTH PLAIN AGJvYgBzZWNyZXQ=").expect("538 5.7.11");
    // STARTTLS with a pipelined (injected) command after it.
    let step = t.raw(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n");
    assert_eq!(step.codes(), vec!["220 2.0.0"]);
    assert!(step.has(&Action::StartTls));
    assert_eq!(t.s.phase(), Phase::TlsHandshake);
    assert!(t.raw(b"RSET\r\n").0.is_empty()); // plaintext before the handshake: dropped
    assert!(t.event(Event::TlsEstablished).0.is_empty());
    assert!(t.s.tls_active());
    // EHLO is forgotten; the injected MAIL never ran.
    t.send("MAIL FROM:<a@b>").expect("503 5.5.1");
    let ehlo = t.send("EHLO c").replies().join("");
    assert!(!ehlo.contains("STARTTLS"));
    assert!(ehlo.contains("AUTH PLAIN LOGIN"));
    t.send("STARTTLS").expect("503 5.5.1");
    let step = t.send("AUTH PLAIN AGJvYgBzZWNyZXQ=");
    assert!(step.has(&Action::CheckAuth {
        mechanism: "PLAIN".into(),
        authzid: "".into(),
        username: "bob".into(),
        password: "secret".into(),
    }));
    assert!(t.s.waiting());
    t.event(Event::AuthChecked(AuthResult::valid()))
        .expect("235 2.7.0 Authentication succeeded");
    assert_eq!(t.s.authenticated(), Some("bob"));
    t.send("AUTH PLAIN AGJvYgBzZWNyZXQ=").expect("503 5.5.1");
    t.send("MAIL FROM:<a@b>").expect("250");
    t.send("RCPT TO:<anyone@anywhere.test>").expect("250"); // authenticated: may relay
    t.auto_enqueue = true;
    t.send("DATA").expect("354");
    t.raw(b"x\r\n.\r\n").expect("250 2.0.0");
    assert_eq!(t.enqueued[0].authenticated.as_deref(), Some("bob"));
    assert!(t.enqueued[0].tls);
}

fn tls_auth() -> T {
    let mut t = T::new(ServerConfig {
        tls_active: true,
        ..submission_cfg()
    });
    t.ehlo();
    t
}

#[test]
fn auth_exchanges() {
    // PLAIN without initial response
    let mut t = tls_auth();
    t.send("AUTH PLAIN").expect("334 \r\n");
    let step = t.send("AGJvYgBzZWNyZXQ=");
    assert!(matches!(&step.0[..], [Action::CheckAuth { username, .. }] if username == "bob"));
    t.event(Event::AuthChecked(AuthResult::Invalid))
        .expect("535 5.7.8 Authentication credentials invalid");
    assert_eq!(t.s.authenticated(), None);

    // LOGIN, step by step and with initial response
    t.send("AUTH LOGIN").expect("334 VXNlcm5hbWU6");
    t.send("Ym9i").expect("334 UGFzc3dvcmQ6");
    let step = t.send("c2VjcmV0");
    assert!(step.has(&Action::CheckAuth {
        mechanism: "LOGIN".into(),
        authzid: "".into(),
        username: "bob".into(),
        password: "secret".into(),
    }));
    t.event(Event::AuthChecked(AuthResult::Invalid))
        .expect("535");
    t.send("auth login Ym9i").expect("334 UGFzc3dvcmQ6");
    t.send("=").0.iter().for_each(|a| {
        assert!(matches!(a, Action::CheckAuth { password, .. } if password.is_empty()))
    });
    t.event(Event::AuthChecked(AuthResult::valid()))
        .expect("235");
}

#[test]
fn auth_errors() {
    let mut t = tls_auth();
    t.send("AUTH CRAM-MD5").expect("504 5.5.4");
    t.send("AUTH PLAIN").expect("334");
    t.send("*").expect("501 5.7.0");
    t.send("AUTH PLAIN !!!").expect("501 5.5.2");
    t.send("AUTH PLAIN =").expect("501 5.5.2");
    let step = t.send("AUTH PLAIN Ym9i"); // no NULs
    assert_eq!(step.codes(), vec!["501 5.5.2", "421 4.7.0"]);
    // max_errors = 5 reached: closed.
    assert!(t.s.is_closed());

    let mut t = tls_auth();
    t.send("AUTH LOGIN").expect("334");
    t.send(&"A".repeat(1200)).expect("500 5.5.6");
    t.send("NOOP").expect("250"); // back in command mode

    let mut t = T::new(ServerConfig {
        tls_active: true,
        ..submission_cfg()
    });
    t.send("HELO x").expect("250");
    t.send("AUTH PLAIN").expect("503 5.5.1"); // EHLO needed
}

#[test]
fn auth_without_tls_from_relay_network() {
    let mut t = T::new(ServerConfig {
        relay_allowed: true,
        auth_enabled: true,
        ..relay_cfg()
    });
    let ehlo = t.send("EHLO c").replies().join("");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"));
    t.send("AUTH PLAIN AGJvYgBzZWNyZXQ=");
    t.event(Event::AuthChecked(AuthResult::valid()))
        .expect("235");
}

#[test]
fn recipient_checks_wait_and_buffer() {
    let mut t = T::new(ServerConfig {
        check_recipients: true,
        ..relay_cfg()
    });
    t.ehlo();
    let step = t.raw(b"MAIL FROM:<a@b>\r\nRCPT TO:<s@y>\r\nRCPT TO:<ok@y>\r\nDATA\r\n");
    assert_eq!(step.codes(), vec!["250 2.1.0"]);
    assert!(step.has(&Action::CheckRcpt {
        from: ReversePath::Mailbox(mb("a@b")),
        to: mb("s@y"),
    }));
    assert!(t.s.waiting());
    let step = t.event(Event::RcptChecked(Err(Reply::new(
        550,
        "5.1.1",
        "<s@y> suppressed",
    ))));
    assert_eq!(step.codes(), vec!["550 5.1.1"]);
    assert!(step.has(&Action::CheckRcpt {
        from: ReversePath::Mailbox(mb("a@b")),
        to: mb("ok@y"),
    }));
    let step = t.event(Event::RcptChecked(Ok(())));
    assert_eq!(step.codes(), vec!["250 2.1.5", "354"]);
    // A stray event is ignored.
    assert!(
        t.event(Event::AuthChecked(AuthResult::valid()))
            .0
            .is_empty()
    );
}

#[test]
fn sender_checks_wait_and_a_refused_sender_starts_no_transaction() {
    let mut t = T::new(ServerConfig {
        check_senders: true,
        ..relay_cfg()
    });
    t.ehlo();
    // Pipelined: RCPT waits behind the sender's check.
    let step = t.raw(b"MAIL FROM:<a@paused.test>\r\nRCPT TO:<x@y>\r\n");
    assert!(step.replies().is_empty(), "{:?}", step.replies());
    assert!(step.has(&Action::CheckMail {
        from: ReversePath::Mailbox(mb("a@paused.test")),
    }));
    assert!(t.s.waiting());
    let paused = Reply::new(450, "4.7.1", "Sending paused for tenant paused.test: why");
    let step = t.event(Event::MailChecked(Err(paused.clone())));
    // Refused: logged, and the RCPT after it finds no transaction.
    assert_eq!(step.codes(), vec!["450 4.7.1", "503 5.5.1"]);
    assert!(step.0.iter().any(|a| matches!(
        a,
        Action::Refused(r) if r.reply == paused && r.from == "<a@paused.test>"
    )));
    // Accepted: the transaction goes on as without the check.
    let step = t.send("MAIL FROM:<a@ok.test>");
    assert!(step.has(&Action::CheckMail {
        from: ReversePath::Mailbox(mb("a@ok.test")),
    }));
    let step = t.event(Event::MailChecked(Ok(())));
    assert_eq!(step.codes(), vec!["250 2.1.0"]);
    t.send("RCPT TO:<x@y>").expect("250 2.1.5");
    // A stray answer changes nothing.
    assert!(t.event(Event::MailChecked(Ok(()))).0.is_empty());
    t.send("MAIL FROM:<a@ok.test>").expect("503 5.5.1");
}

#[test]
fn bdat() {
    let mut t = T::relay();
    t.ehlo();
    t.send("MAIL FROM:<a@b>").expect("250");
    t.send("RCPT TO:<x@y>").expect("250");
    // A chunk may end inside a CRLF.
    let step = t.raw(b"BDAT 5\r\nab\r\ncBDAT 4 LAST\r\nd\r\nz");
    assert_eq!(step.codes(), vec!["250 2.0.0"]);
    assert_eq!(step.replies()[0], "250 2.0.0 5 bytes received\r\n");
    match &step.0[..] {
        [_, Action::Enqueue(env)] => assert_eq!(env.body, b"ab\r\ncd\r\nz"),
        other => panic!("{other:?}"),
    }
    t.event(Event::Enqueued(Ok("B1".into())))
        .expect("250 2.0.0 Ok: queued as B1");

    // BDAT without MAIL: the chunk is still consumed.
    t.raw(b"BDAT 6\r\nNOOP\r\n").expect("503 5.5.1");
    t.send("NOOP").expect("250");
    // BDAT then DATA does not mix; RCPT after BDAT neither.
    t.send("MAIL FROM:<a@b>").expect("250");
    t.send("RCPT TO:<x@y>").expect("250");
    t.raw(b"BDAT 1\r\nx").expect("250");
    t.send("DATA").expect("503 5.5.1");
    t.send("RCPT TO:<z@y>").expect("503 5.5.1");
    // Empty last chunk.
    t.auto_enqueue = true;
    t.send("BDAT 0 LAST").expect("250 2.0.0 Ok: queued as Q1");
    assert_eq!(
        t.enqueued.last().map(|e| e.body.clone()),
        Some(b"x".to_vec())
    );
    // Too large: rejected after the chunk, transaction gone.
    t.send("MAIL FROM:<a@b>").expect("250");
    t.send("RCPT TO:<x@y>").expect("250");
    let mut big = b"BDAT 1001\r\n".to_vec();
    big.extend(vec![b'z'; 1001]);
    t.raw(&big).expect("552 5.3.4");
    t.send("NOOP").expect("250");
    // No recipients.
    t.send("MAIL FROM:<a@b>").expect("250");
    t.raw(b"BDAT 2 LAST\r\nhi").expect("554 5.5.1");
}

#[test]
fn timeout_closes() {
    let mut t = T::relay();
    let step = t.event(Event::Timeout);
    assert_eq!(step.codes(), vec!["421 4.4.2"]);
    assert!(step.closes());
    assert_eq!(t.s.phase(), Phase::Closed);
}

#[test]
fn quit_drops_pipelined_rest() {
    let mut t = T::relay();
    let step = t.raw(b"QUIT\r\nNOOP\r\n");
    assert_eq!(step.codes(), vec!["221 2.0.0"]);
    assert!(step.closes());
}

/// A whole pipelined session, fed in every chunking, produces the same transcript.
#[test]
fn pipelined_session_any_chunking() {
    let input: &[u8] = b"EHLO c\r\nMAIL FROM:<a@b> SIZE=20\r\nRCPT TO:<x@y>\r\nRCPT TO:<>\r\n\
        DATA\r\nhello\r\n..\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nBDAT 4\r\nab\r\n\
        BDAT 0 LAST\r\nFOO\r\nQUIT\r\n";
    let run = |cuts: &[usize]| -> (Vec<String>, Vec<Vec<u8>>) {
        let mut t = T::relay();
        t.auto_enqueue = true;
        let mut replies = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&input.len())) {
            replies.extend(t.raw(&input[start..end]).replies());
            start = end;
        }
        (replies, t.enqueued.iter().map(|e| e.body.clone()).collect())
    };
    let whole = run(&[]);
    assert_eq!(
        whole.0.iter().map(|r| &r[..3]).collect::<Vec<_>>(),
        vec![
            "250", "250", "250", "501", "354", "250", "250", "250", "250", "250", "500", "221"
        ]
    );
    assert_eq!(
        whole.1,
        vec![b"hello\r\n.\r\n".to_vec(), b"ab\r\n".to_vec()]
    );
    for split in 0..=input.len() {
        assert_eq!(run(&[split]), whole, "split {split}");
    }
    let bytewise: Vec<usize> = (1..input.len()).collect();
    assert_eq!(run(&bytewise), whole);
}

#[test]
fn buffered_input_is_bounded_while_waiting() {
    let mut t = T::relay();
    t.ehlo();
    t.send("MAIL FROM:<a@b>").expect("250");
    t.send("RCPT TO:<x@y>").expect("250");
    t.send("DATA").expect("354");
    assert!(
        t.raw(b".\r\n")
            .0
            .iter()
            .any(|a| matches!(a, Action::Enqueue(_)))
    );
    assert!(t.raw(&vec![b'N'; 60 * 1024]).0.is_empty());
    let step = t.raw(&vec![b'N'; 8 * 1024]);
    assert_eq!(step.codes(), vec!["421 4.7.0"]);
    assert!(step.closes());
    assert_eq!(
        Phase::Command.timeout(),
        Some(std::time::Duration::from_secs(300))
    );
    assert_eq!(
        Phase::Data.timeout(),
        Some(std::time::Duration::from_secs(180))
    );
    assert_eq!(Phase::Waiting.timeout(), None);
}

fn big_cfg() -> ServerConfig {
    ServerConfig {
        max_message_size: 100_000,
        ..relay_cfg()
    }
}

/// Bare CR, bare LF and NUL are refused alike in DATA and in BDAT, with one reply, and
/// the refusal is reported for the log; the session goes on.
#[test]
fn one_byte_policy_for_data_and_bdat() {
    let cases: [(&[u8], &str); 3] = [
        (b"Subject: a\rb\r\n\r\nx\r\n", "550 5.6.0 Bare CR or LF"),
        (b"Subject: a\nb\r\n\r\nx\r\n", "550 5.6.0 Bare CR or LF"),
        (b"Subject: a\0b\r\n\r\nx\r\n", "550 5.6.0 NUL"),
    ];
    for (body, want) in cases {
        for bdat in [false, true] {
            let mut t = T::new(big_cfg());
            t.ehlo();
            t.send("MAIL FROM:<a@b.test>").expect("250");
            t.send("RCPT TO:<x@y.test>").expect("250");
            let step = if bdat {
                let mut wire = format!("BDAT {} LAST\r\n", body.len()).into_bytes();
                wire.extend_from_slice(body);
                t.raw(&wire)
            } else {
                t.send("DATA").expect("354");
                let mut wire = body.to_vec();
                wire.extend_from_slice(b".\r\n");
                t.raw(&wire)
            };
            let step = step.expect(want);
            assert!(
                step.0
                    .iter()
                    .any(|a| matches!(a, Action::Refused(r) if r.reply.code == 550)),
                "{body:?} bdat={bdat}: refusal not reported: {step:?}"
            );
            assert!(t.enqueued.is_empty(), "{body:?} bdat={bdat}");
            t.send("NOOP").expect("250");
        }
    }
}

/// RFC 5321 §4.5.3.1.6: a 998-octet line that starts with a dot is sent as 999 octets
/// plus CRLF; the transparency dot does not count. BDAT counts the same line as is.
#[test]
fn dot_stuffed_998_octet_line_is_accepted() {
    let line = [b".".to_vec(), vec![b'x'; 997]].concat();
    let mut t = T::new(big_cfg());
    t.ehlo();
    t.send("MAIL FROM:<a@b.test>").expect("250");
    t.send("RCPT TO:<x@y.test>").expect("250");
    t.send("DATA").expect("354");
    let wire = [
        b"Subject: s\r\n\r\n.".to_vec(),
        line.clone(),
        b"\r\n.\r\n".to_vec(),
    ]
    .concat();
    match &t.raw(&wire).0[..] {
        [Action::Enqueue(env)] => {
            assert_eq!(
                env.body,
                [
                    b"Subject: s\r\n\r\n".to_vec(),
                    line.clone(),
                    b"\r\n".to_vec()
                ]
                .concat()
            )
        }
        other => panic!("{other:?}"),
    }
    t.event(Event::Enqueued(Ok("Q".into()))).expect("250");

    // One octet more is over the limit, in DATA and in BDAT.
    let long = [line.clone(), b"y".to_vec()].concat();
    t.send("MAIL FROM:<a@b.test>").expect("250");
    t.send("RCPT TO:<x@y.test>").expect("250");
    t.send("DATA").expect("354");
    let wire = [b".".to_vec(), long.clone(), b"\r\n.\r\n".to_vec()].concat();
    t.raw(&wire).expect("550 5.6.0 Line too long");
    t.send("MAIL FROM:<a@b.test>").expect("250");
    t.send("RCPT TO:<x@y.test>").expect("250");
    let wire = [
        format!("BDAT {} LAST\r\n", long.len() + 2).into_bytes(),
        long,
        b"\r\n".to_vec(),
    ]
    .concat();
    t.raw(&wire).expect("550 5.6.0 Line too long");
}

/// Refused recipients count as errors: probing addresses ends the session.
#[test]
fn relay_denied_recipients_end_the_session() {
    let mut t = T::new(ServerConfig {
        relay_allowed: false,
        max_errors: 10,
        ..relay_cfg()
    });
    t.ehlo();
    t.send("MAIL FROM:<a@b.test>").expect("250");
    let mut wire = String::new();
    for i in 0..20 {
        wire.push_str(&format!("RCPT TO:<u{i}@y.test>\r\n"));
    }
    let step = t.raw(wire.as_bytes());
    let codes = step.codes();
    assert_eq!(codes.len(), 11, "{codes:?}");
    assert!(codes[..10].iter().all(|c| c == "554 5.7.1"), "{codes:?}");
    assert_eq!(codes[10], "421 4.7.0");
    assert!(step.closes());
}

/// Over max_recipients: 452 for as many again (a client may send the rest in another
/// transaction), then each one is an error.
#[test]
fn recipients_over_the_limit_count_after_an_overshoot() {
    let mut t = T::new(ServerConfig {
        max_recipients: 2,
        max_errors: 3,
        ..relay_cfg()
    });
    t.ehlo();
    t.send("MAIL FROM:<a@b.test>").expect("250");
    let mut wire = String::new();
    for i in 0..10 {
        wire.push_str(&format!("RCPT TO:<u{i}@y.test>\r\n"));
    }
    let codes = t.raw(wire.as_bytes()).codes();
    assert_eq!(
        codes,
        [
            "250 2.1.5",
            "250 2.1.5",
            "452 4.5.3",
            "452 4.5.3",
            "452 4.5.3",
            "452 4.5.3",
            "452 4.5.3",
            "421 4.7.0"
        ]
    );
}

fn restricted(t: &mut T) {
    t.ehlo();
    let step = t.send("AUTH PLAIN AGFsaWNlAHB3");
    assert!(step.has(&Action::CheckAuth {
        mechanism: "PLAIN".into(),
        authzid: String::new(),
        username: "alice".into(),
        password: "pw".into(),
    }));
    t.event(Event::AuthChecked(AuthResult::Valid {
        allowed_from: vec!["example.com".into(), "*.example.com".into()],
    }))
    .expect("235");
}

fn auth_cfg() -> ServerConfig {
    ServerConfig {
        relay_allowed: false,
        tls_active: true,
        auth_enabled: true,
        max_message_size: 10_000,
        ..relay_cfg()
    }
}

/// An authenticated user restricted by allowed_from: the envelope sender at MAIL and
/// the From: header at the end of the data.
#[test]
fn allowed_from_envelope_and_header() {
    let mut t = T::new(auth_cfg());
    restricted(&mut t);
    let step = t.send("MAIL FROM:<ceo@bank.test>").expect("550 5.7.1");
    assert!(step.0.iter().any(|a| matches!(a, Action::Refused(_))));
    t.send("MAIL FROM:<news@mail.example.com>").expect("250");
    t.send("RCPT TO:<x@y.test>").expect("250");
    t.send("DATA").expect("354");
    t.raw(b"From: CEO <ceo@bank.test>\r\n\r\nx\r\n.\r\n")
        .expect("550 5.7.1 From: header domain bank.test");
    assert!(t.enqueued.is_empty());

    for (from, want) in [
        ("From: a@example.com, b@bank.test", "550 5.7.1"),
        (
            "From: a@example.com\r\nFrom: b@bank.test",
            "550 5.7.1 Message refused: more than one From",
        ),
        ("From: <a@example.com", "550 5.7.1 Message refused"),
    ] {
        t.send("MAIL FROM:<a@example.com>").expect("250");
        t.send("RCPT TO:<x@y.test>").expect("250");
        t.send("DATA").expect("354");
        t.raw(format!("{from}\r\n\r\nx\r\n.\r\n").as_bytes())
            .expect(want);
    }
    assert!(t.enqueued.is_empty());

    t.send("MAIL FROM:<a@example.com>").expect("250");
    t.send("RCPT TO:<x@y.test>").expect("250");
    t.send("DATA").expect("354");
    t.raw(b"From: \"Bank <ceo@bank.test>\" <a@EXAMPLE.com>\r\n\r\nx\r\n.\r\n");
    assert_eq!(t.enqueued.len(), 1);
}

/// An IO layer refusing to check credentials (throttled) closes the session with its
/// 421.
#[test]
fn auth_refused_by_the_io_layer_closes() {
    let mut t = T::new(auth_cfg());
    t.ehlo();
    t.send("AUTH PLAIN AGFsaWNlAHB3");
    let step = t
        .event(Event::AuthChecked(AuthResult::Refused(Reply::new(
            421,
            "4.7.0",
            "too many failures",
        ))))
        .expect("421 4.7.0");
    assert!(step.closes());
}

/// NOOP and friends cannot hold a session open for ever: past the junk limit each one
/// is an error.
#[test]
fn junk_commands_count_as_errors_past_the_limit() {
    let mut t = T::new(ServerConfig {
        max_errors: 3,
        ..relay_cfg()
    });
    t.ehlo();
    let wire = "NOOP\r\n".repeat(baton_smtp::server::JUNK_LIMIT);
    assert!(
        t.raw(wire.as_bytes())
            .codes()
            .iter()
            .all(|c| c == "250 2.0.0")
    );
    let step = t.raw(b"NOOP\r\nRSET\r\nHELP\r\n");
    assert!(step.closes(), "{step:?}");
    assert_eq!(step.codes().last().map(String::as_str), Some("421 4.7.0"));
}

#[test]
fn the_local_domain_takes_mail_from_anyone_alone_and_small() {
    let mut t = T::new(ServerConfig {
        relay_allowed: false,
        local_domain: "bounces.test".into(),
        local_max_message_size: 20,
        ..relay_cfg()
    });
    t.ehlo();
    t.send("MAIL FROM:<>").expect("250");
    // No AUTH, not in relay_networks: the bounce domain only.
    t.send("RCPT TO:<x@y>").expect("554 5.7.1");
    t.send("RCPT TO:<b-abc@Bounces.Test>").expect("250 2.1.5");
    t.send("DATA").expect("354");
    t.raw(b"0123456789012345678901234567890\r\n.\r\n")
        .expect("552 5.3.4");
    // A client allowed to relay still may not mix the two.
    let mut t = T::new(ServerConfig {
        local_domain: "bounces.test".into(),
        ..relay_cfg()
    });
    t.ehlo();
    t.send("MAIL FROM:<a@b>").expect("250");
    t.send("RCPT TO:<x@y>").expect("250 2.1.5");
    t.send("RCPT TO:<fbl@bounces.test>").expect("452 4.5.3");
    t.auto_enqueue = true;
    t.send("DATA").expect("354");
    t.raw(b"a message longer than twenty bytes\r\n.\r\n")
        .expect("250 2.0.0");
    assert_eq!(t.enqueued[0].rcpts, vec![mb("x@y")]);
}
