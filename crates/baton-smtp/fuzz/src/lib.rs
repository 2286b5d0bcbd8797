//! Fuzz harnesses for `baton-smtp`, kept free of libfuzzer so the crate's own tests can
//! run them too (`tests/prop.rs` includes this file). Each panics on a broken invariant.
//!
//! Run with `cargo fuzz run command|data|server_session` from `crates/baton-smtp`.

use baton_smtp::command;
use baton_smtp::data::{DataDecoder, DataError};
use baton_smtp::reply::{Reply, ReplyParser};
use baton_smtp::server::{Action, AuthResult, Event, ServerConfig, ServerSession};

/// Parse one arbitrary command line; a reply must be a well-formed error.
pub fn command(data: &[u8]) {
    if let Err(r) = command::parse(data) {
        assert!((500..600).contains(&r.code), "{r}");
        round_trip(&r);
    }
}

/// Decode arbitrary bytes whole and in a pseudo-random chunking: results must match.
pub fn data(data: &[u8]) {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let whole = decode(input, &mut |_| usize::MAX);
    let mut x = u32::from(seed) | 1;
    let chunked = decode(input, &mut |_| {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (x >> 16) as usize % 17 + 1
    });
    assert_eq!(whole, chunked);
}

type Decoded = (Vec<u8>, usize, bool, Result<(), DataError>);

fn decode(input: &[u8], next: &mut dyn FnMut(usize) -> usize) -> Decoded {
    let mut d = DataDecoder::new(512);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() && !d.is_done() {
        let n = next(pos).min(input.len() - pos);
        let p = d.feed(&input[pos..pos + n], &mut out);
        assert!(p.consumed <= n);
        assert!(p.done || p.consumed == n);
        pos += p.consumed;
    }
    assert!(out.len() <= 512);
    (out, pos, d.is_done(), d.result())
}

/// Drive a server session with arbitrary input, answering every request it makes.
/// Byte 0 picks the configuration; the rest is cut into chunks of 1..=64 bytes, each
/// chunk's length taken from the byte before it.
pub fn server_session(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let cfg = ServerConfig {
        hostname: "mx.fuzz".into(),
        max_message_size: 4096,
        max_recipients: 5,
        max_errors: 50,
        tls_available: flags & 1 != 0,
        tls_active: flags & 2 != 0,
        auth_enabled: flags & 4 != 0,
        require_auth: flags & 8 != 0,
        relay_allowed: flags & 16 != 0,
        check_recipients: flags & 32 != 0,
        check_senders: flags & 64 != 0,
        greeting_banner: "ESMTP".into(),
        local_domain: if flags & 128 != 0 {
            "b.fuzz".into()
        } else {
            String::new()
        },
        local_max_message_size: 1024,
    };
    let mut s = ServerSession::new(cfg);
    let mut closed = drive(&mut s, Event::Connected);
    let mut enqueued = 0u32;
    while let Some((&len, tail)) = rest.split_first() {
        let n = (usize::from(len) % 64 + 1).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        let actions = s.handle(Event::Input(chunk));
        if closed {
            assert!(actions.is_empty(), "actions after Close");
        }
        closed |= answer(&mut s, actions, &mut enqueued);
    }
}

/// Handle one event and answer everything; true if the session closed.
fn drive(s: &mut ServerSession, ev: Event<'_>) -> bool {
    let actions = s.handle(ev);
    answer(s, actions, &mut 0)
}

fn answer(s: &mut ServerSession, mut actions: Vec<Action>, enqueued: &mut u32) -> bool {
    let mut closed = false;
    let mut i = 0;
    while i < actions.len() {
        let reply = match &actions[i] {
            Action::Reply(r) => {
                round_trip(r);
                None
            }
            Action::Close => {
                assert!(s.is_closed());
                closed = true;
                None
            }
            Action::StartTls => Some(Event::TlsEstablished),
            Action::CheckAuth { password, .. } => Some(Event::AuthChecked(if password == "ok" {
                AuthResult::valid()
            } else {
                AuthResult::Invalid
            })),
            Action::Refused(_) => None,
            Action::CheckMail { from } => Some(Event::MailChecked(match from.mailbox() {
                Some(m) if m.local.starts_with('p') => {
                    Err(Reply::new(450, "4.7.1", "Sending paused for tenant x: y"))
                }
                _ => Ok(()),
            })),
            Action::CheckRcpt { to, .. } => {
                Some(Event::RcptChecked(if to.local.starts_with('s') {
                    Err(Reply::new(550, "5.1.1", "suppressed"))
                } else {
                    Ok(())
                }))
            }
            Action::Enqueue(env) => {
                assert!(!env.rcpts.is_empty());
                assert!(env.body.len() <= 4096);
                *enqueued += 1;
                Some(Event::Enqueued(if enqueued.is_multiple_of(3) {
                    Err(Reply::new(451, "4.3.0", "no quorum"))
                } else {
                    Ok(format!("Q{enqueued}"))
                }))
            }
        };
        if let Some(ev) = reply {
            assert!(s.waiting() || matches!(ev, Event::TlsEstablished));
            let more = s.handle(ev);
            actions.extend(more);
        }
        i += 1;
    }
    closed
}

/// A reply's wire form parses back to the same reply.
fn round_trip(r: &Reply) {
    let mut p = ReplyParser::new();
    p.feed(&r.to_bytes());
    let back = p.next_reply().expect("own reply parses").expect("complete");
    assert_eq!(&back, r);
    assert_eq!(p.buffered(), 0);
}
