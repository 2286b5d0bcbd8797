//! Client session tests: scripted server replies, no sockets.

use baton_smtp::address::{Mailbox, ReversePath};
use baton_smtp::client::{
    ClientAction, ClientConfig, ClientError, ClientEvent, ClientSession, OutboundMessage,
};
use baton_smtp::reply::Reply;

const EHLO_FULL: &str = "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
    250-SMTPUTF8\r\n250-STARTTLS\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n";
const EHLO_BASIC: &str = "250-mx.example\r\n250 SIZE\r\n";

fn cfg(want_tls: bool) -> ClientConfig {
    ClientConfig {
        helo_name: "relay.test".into(),
        want_tls,
        ..ClientConfig::default()
    }
}

struct C {
    c: ClientSession,
}

impl C {
    fn new(cfg: ClientConfig) -> C {
        C {
            c: ClientSession::new(cfg),
        }
    }
    fn ev(&mut self, e: ClientEvent<'_>) -> Vec<ClientAction> {
        self.c.handle(e)
    }
    fn server(&mut self, s: &str) -> Vec<ClientAction> {
        self.ev(ClientEvent::Input(s.as_bytes()))
    }
    /// Greeting + EHLO, expecting Ready.
    fn ready(cfg: ClientConfig, ehlo: &str) -> C {
        let mut c = C::new(cfg);
        assert_eq!(
            c.server("220 mx.example ESMTP\r\n"),
            vec![w("EHLO relay.test\r\n")]
        );
        assert_eq!(c.server(ehlo), vec![ClientAction::Ready]);
        c
    }
}

fn w(s: &str) -> ClientAction {
    ClientAction::Write(s.as_bytes().to_vec())
}

fn r(code: u16, enh: &str, text: &str) -> Reply {
    Reply::new(code, enh, text)
}

fn msg(rcpts: &[&str]) -> OutboundMessage {
    OutboundMessage {
        from: ReversePath::Mailbox(Mailbox::new("a", "b.test")),
        rcpts: rcpts
            .iter()
            .map(|s| Mailbox::parse(s).expect("valid"))
            .collect(),
        size_hint: 100,
        eight_bit: true,
        smtputf8: false,
    }
}

#[test]
fn starttls_then_pipelined_message() {
    let mut c = C::new(cfg(true));
    assert_eq!(
        c.server("220-mx.example\r\n220 hi\r\n"),
        vec![w("EHLO relay.test\r\n")]
    );
    assert_eq!(c.server(EHLO_FULL), vec![w("STARTTLS\r\n")]);
    // A server injecting a reply after 220 must be ignored.
    assert_eq!(
        c.server("220 2.0.0 go ahead\r\n250 injected\r\n"),
        vec![ClientAction::StartTls]
    );
    assert_eq!(c.server("250 more injected\r\n"), vec![]);
    assert_eq!(
        c.ev(ClientEvent::TlsEstablished),
        vec![w("EHLO relay.test\r\n")]
    );
    assert!(c.c.tls_active());
    let ehlo_tls = EHLO_FULL.replace("250-STARTTLS\r\n", "");
    assert_eq!(c.server(&ehlo_tls), vec![ClientAction::Ready]);
    let ext = c.c.server_extensions();
    assert!(ext.pipelining && ext.eight_bit_mime && ext.smtputf8 && ext.chunking);
    assert!(!ext.starttls);
    assert_eq!(ext.size, Some(1000));

    assert_eq!(
        c.ev(ClientEvent::Send(msg(&["x@y.test", "z@y.test"]))),
        vec![w(
            "MAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<x@y.test>\r\n\
                RCPT TO:<z@y.test>\r\nDATA\r\n"
        )]
    );
    let acts = c.server("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n");
    assert_eq!(
        acts,
        vec![
            ClientAction::RcptResult {
                index: 0,
                reply: r(250, "2.1.5", "ok")
            },
            ClientAction::RcptResult {
                index: 1,
                reply: r(550, "5.1.1", "no such user")
            },
            ClientAction::WriteData,
        ]
    );
    assert_eq!(c.ev(ClientEvent::DataWritten), vec![]);
    assert_eq!(
        c.server("250 2.0.0 queued\r\n"),
        vec![
            ClientAction::MessageDone {
                rcpt_replies: vec![r(250, "2.1.5", "ok"), r(550, "5.1.1", "no such user")],
                data_reply: Some(r(250, "2.0.0", "queued")),
            },
            ClientAction::Ready,
        ]
    );
    // Successful transaction: no RSET before the next one.
    let acts = c.ev(ClientEvent::Send(msg(&["x@y.test"])));
    assert!(matches!(&acts[..], [ClientAction::Write(b)] if b.starts_with(b"MAIL")));
    assert_eq!(c.ev(ClientEvent::Quit), vec![w("QUIT\r\n")]);
    // Owed replies, then 221.
    assert_eq!(c.server("250 ok\r\n250 ok\r\n354 go\r\n"), vec![]);
    assert_eq!(c.server("221 bye\r\n"), vec![ClientAction::Closed]);
    assert!(c.c.is_closed());
}

#[test]
fn pipelined_all_rcpts_fail_then_rset() {
    let mut c = C::ready(cfg(false), EHLO_FULL);
    c.ev(ClientEvent::Send(msg(&["x@y.test"])));
    let acts = c.server("250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n");
    assert_eq!(
        acts,
        vec![
            ClientAction::RcptResult {
                index: 0,
                reply: r(550, "5.1.1", "no")
            },
            ClientAction::MessageDone {
                rcpt_replies: vec![r(550, "5.1.1", "no")],
                data_reply: None
            },
            ClientAction::Ready,
        ]
    );
    let acts = c.ev(ClientEvent::Send(msg(&["x@y.test"])));
    assert!(matches!(&acts[..], [ClientAction::Write(b)] if b.starts_with(b"RSET\r\nMAIL")));
    let acts = c.server("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(acts.last(), Some(&ClientAction::WriteData));
}

#[test]
fn pipelined_mail_rejected() {
    let mut c = C::ready(cfg(false), EHLO_FULL);
    c.ev(ClientEvent::Send(msg(&["x@y.test", "z@y.test"])));
    let acts = c.server("550 5.7.1 sender blocked\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n");
    let mail = r(550, "5.7.1", "sender blocked");
    assert_eq!(
        acts,
        vec![
            ClientAction::RcptResult {
                index: 0,
                reply: mail.clone()
            },
            ClientAction::RcptResult {
                index: 1,
                reply: mail.clone()
            },
            ClientAction::MessageDone {
                rcpt_replies: vec![mail.clone(), mail],
                data_reply: None
            },
            ClientAction::Ready,
        ]
    );
    // No transaction open: no RSET.
    let acts = c.ev(ClientEvent::Send(msg(&["x@y.test"])));
    assert!(matches!(&acts[..], [ClientAction::Write(b)] if b.starts_with(b"MAIL")));
}

#[test]
fn bad_server_354_without_recipients() {
    let mut c = C::ready(cfg(false), EHLO_FULL);
    c.ev(ClientEvent::Send(msg(&["x@y.test"])));
    let acts = c.server("250 ok\r\n550 no\r\n354 go\r\n");
    assert_eq!(acts.last(), Some(&w(".\r\n")));
    let acts = c.server("554 no valid recipients\r\n");
    assert_eq!(
        acts,
        vec![
            ClientAction::MessageDone {
                rcpt_replies: vec![r(550, "", "no")],
                data_reply: None
            },
            ClientAction::Ready
        ]
    );
}

#[test]
fn one_by_one_without_pipelining() {
    let mut c = C::ready(cfg(true), EHLO_BASIC); // no STARTTLS offered: carry on
    assert_eq!(c.c.server_extensions().size, Some(0));
    let mut m = msg(&["x@y.test", "z@y.test"]);
    m.eight_bit = true; // no 8BITMIME: sent without BODY=
    assert_eq!(
        c.ev(ClientEvent::Send(m)),
        vec![w("MAIL FROM:<a@b.test> SIZE=100\r\n")]
    );
    assert_eq!(c.server("250 ok\r\n"), vec![w("RCPT TO:<x@y.test>\r\n")]);
    assert_eq!(
        c.server("451 4.3.0 later\r\n"),
        vec![
            ClientAction::RcptResult {
                index: 0,
                reply: r(451, "4.3.0", "later")
            },
            w("RCPT TO:<z@y.test>\r\n")
        ]
    );
    assert_eq!(
        c.server("250 ok\r\n"),
        vec![
            ClientAction::RcptResult {
                index: 1,
                reply: r(250, "", "ok")
            },
            w("DATA\r\n")
        ]
    );
    assert_eq!(c.server("354 go\r\n"), vec![ClientAction::WriteData]);
    assert_eq!(c.ev(ClientEvent::DataWritten), vec![]);
    let acts = c.server("452 4.3.1 full\r\n");
    assert_eq!(
        acts[0],
        ClientAction::MessageDone {
            rcpt_replies: vec![r(451, "4.3.0", "later"), r(250, "", "ok")],
            data_reply: Some(r(452, "4.3.1", "full"))
        }
    );

    // MAIL rejected: every recipient gets its reply, nothing else sent.
    c.ev(ClientEvent::Send(msg(&["x@y.test", "z@y.test"])));
    let acts = c.server("553 5.1.8 bad sender\r\n");
    assert_eq!(acts.len(), 4);
    assert!(matches!(
        &acts[2],
        ClientAction::MessageDone {
            data_reply: None,
            ..
        }
    ));

    // All RCPTs refused: no DATA, RSET before the next message.
    c.ev(ClientEvent::Send(msg(&["x@y.test"])));
    c.server("250 ok\r\n");
    let acts = c.server("550 no\r\n");
    assert!(matches!(
        &acts[1],
        ClientAction::MessageDone {
            data_reply: None,
            ..
        }
    ));
    assert_eq!(
        c.ev(ClientEvent::Send(msg(&["x@y.test"]))),
        vec![w("RSET\r\n")]
    );
    assert_eq!(
        c.server("250 ok\r\n"),
        vec![w("MAIL FROM:<a@b.test> SIZE=100\r\n")]
    );
}

#[test]
fn ehlo_falls_back_to_helo() {
    let mut c = C::new(cfg(false));
    c.server("220 old\r\n");
    assert_eq!(c.server("502 what\r\n"), vec![w("HELO relay.test\r\n")]);
    assert_eq!(c.server("250 old\r\n"), vec![ClientAction::Ready]);
    assert!(!c.c.server_extensions().esmtp);
    assert_eq!(
        c.ev(ClientEvent::Send(msg(&["x@y.test"]))),
        vec![w("MAIL FROM:<a@b.test>\r\n")]
    );
}

#[test]
fn failures() {
    let mut c = C::new(cfg(false));
    assert_eq!(
        c.server("554 go away\r\n"),
        vec![
            w("QUIT\r\n"),
            ClientAction::Failed {
                reply: Some(r(554, "", "go away")),
                reason: ClientError::Greeting
            },
            ClientAction::Closed
        ]
    );
    assert_eq!(c.server("250 ok\r\n"), vec![]);

    let mut c = C::ready(cfg(false), EHLO_FULL);
    c.ev(ClientEvent::Send(msg(&["x@y.test"])));
    let acts = c.server("250 ok\r\n421 4.3.2 shutting down\r\n");
    assert_eq!(
        acts,
        vec![
            ClientAction::Failed {
                reply: Some(r(421, "4.3.2", "shutting down")),
                reason: ClientError::ServerClosed
            },
            ClientAction::Closed
        ]
    );

    let mut c = C::new(cfg(false));
    let acts = c.server("HTTP/1.1 400 Bad Request\r\n");
    assert!(matches!(
        &acts[0],
        ClientAction::Failed {
            reason: ClientError::Protocol(_),
            ..
        }
    ));

    let mut c = C::new(ClientConfig {
        require_tls: true,
        ..cfg(false)
    });
    c.server("220 hi\r\n");
    let acts = c.server(EHLO_BASIC);
    assert!(matches!(
        &acts[1],
        ClientAction::Failed {
            reason: ClientError::TlsUnavailable,
            ..
        }
    ));

    let mut c = C::ready(cfg(false), EHLO_FULL);
    let acts = c.ev(ClientEvent::DataWritten);
    assert!(matches!(
        &acts[1],
        ClientAction::Failed {
            reason: ClientError::UnexpectedEvent,
            ..
        }
    ));
}

#[test]
fn refused_locally() {
    let mut c = C::ready(cfg(false), EHLO_FULL);
    let mut m = msg(&["x@y.test"]);
    m.size_hint = 5000;
    let acts = c.ev(ClientEvent::Send(m));
    assert!(
        matches!(&acts[0], ClientAction::MessageDone { rcpt_replies, .. } if rcpt_replies[0].code == 552)
    );
    assert_eq!(acts[1], ClientAction::Ready);

    let mut c = C::ready(cfg(false), EHLO_BASIC);
    let mut m = msg(&["x@y.test"]);
    m.smtputf8 = true;
    let acts = c.ev(ClientEvent::Send(m));
    assert!(
        matches!(&acts[0], ClientAction::MessageDone { rcpt_replies, .. } if rcpt_replies[0].code == 553)
    );
}

/// Server bytes split anywhere give the same actions.
#[test]
fn any_chunking() {
    let hello = format!("220 mx\r\n{EHLO_FULL}");
    let txn = "250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n";
    let feed = |c: &mut C, b: &[u8], cut: usize| {
        let mut acts = c.ev(ClientEvent::Input(&b[..cut]));
        acts.extend(c.ev(ClientEvent::Input(&b[cut..])));
        acts
    };
    let run = |cut1: usize, cut2: usize| {
        let mut c = C::new(cfg(false));
        let mut acts = feed(&mut c, hello.as_bytes(), cut1);
        acts.extend(c.ev(ClientEvent::Send(msg(&["x@y.test", "z@y.test"]))));
        acts.extend(feed(&mut c, txn.as_bytes(), cut2));
        acts
    };
    let whole = run(0, 0);
    assert_eq!(whole.last(), Some(&ClientAction::WriteData));
    assert_eq!(whole.len(), 6);
    for cut in 0..=hello.len() {
        assert_eq!(run(cut, 0), whole, "hello split {cut}");
    }
    for cut in 0..=txn.len() {
        assert_eq!(run(0, cut), whole, "txn split {cut}");
    }
}

/// Replies the server sends before being asked (unsolicited pipelining) end the session.
#[test]
fn unsolicited_reply_fails() {
    let mut c = C::new(cfg(false));
    let acts = c.server(&format!("220 mx\r\n{EHLO_FULL}250 surprise\r\n"));
    assert!(matches!(
        &acts[..],
        [
            _,
            ClientAction::Ready,
            ClientAction::Failed { .. },
            ClientAction::Closed
        ]
    ));
}
