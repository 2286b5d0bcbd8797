//! Property tests: parsers never panic, decoding is independent of chunking, and the
//! fuzz harnesses (shared with `fuzz/`) hold on random input.

use proptest::prelude::*;

use baton_smtp::data::DataDecoder;
use baton_smtp::server::{Action, AuthResult, Event, ServerConfig, ServerSession};
use baton_smtp::{address, proxy, reply};

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

/// Bytes biased toward SMTP's interesting characters.
fn smtp_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(vec![b'\r', b'\n', b'.', b'a', b' ', b':', b'<', b'>', b'@']),
            1 => any::<u8>(),
        ],
        0..max,
    )
}

/// Realistic command lines with noise.
fn smtp_session() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(b"EHLO x\r\n".to_vec()),
        Just(b"HELO x\r\n".to_vec()),
        Just(b"MAIL FROM:<a@b>\r\n".to_vec()),
        Just(b"MAIL FROM:<> SIZE=10 BODY=8BITMIME\r\n".to_vec()),
        Just(b"RCPT TO:<x@y>\r\n".to_vec()),
        Just(b"RCPT TO:<s@y>\r\n".to_vec()),
        Just(b"RCPT TO:<postmaster>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"BDAT 3\r\n".to_vec()),
        Just(b"BDAT 2 LAST\r\n".to_vec()),
        Just(b"RSET\r\n".to_vec()),
        Just(b"STARTTLS\r\n".to_vec()),
        Just(b"AUTH PLAIN AGEAb2s=\r\n".to_vec()),
        Just(b"AUTH LOGIN\r\n".to_vec()),
        Just(b"b2s=\r\n".to_vec()),
        Just(b".\r\n".to_vec()),
        Just(b"\r\n.\r\n".to_vec()),
        Just(b"QUIT\r\n".to_vec()),
        smtp_bytes(20),
    ];
    prop::collection::vec(line, 0..30).prop_map(|v| v.concat())
}

fn decode(input: &[u8], cuts: &[usize]) -> (Vec<u8>, usize, bool, String) {
    let mut d = DataDecoder::new(300);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    bounds.sort_unstable();
    bounds.push(input.len());
    for end in bounds {
        if end <= pos || d.is_done() {
            continue;
        }
        pos += d.feed(&input[pos..end], &mut out).consumed;
    }
    (out, pos, d.is_done(), format!("{:?}", d.result()))
}

/// All replies of a session fed in the given chunks, answering waits at once (not
/// StartTls, so input after STARTTLS is dropped whatever the chunking).
fn transcript(input: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut s = ServerSession::new(ServerConfig {
        hostname: "mx".into(),
        max_message_size: 100,
        max_recipients: 3,
        max_errors: 10,
        tls_available: true,
        tls_active: false,
        auth_enabled: true,
        relay_allowed: true,
        check_recipients: true,
        check_senders: true,
        ..ServerConfig::default()
    });
    let mut wire = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    bounds.sort_unstable();
    bounds.push(input.len());
    let mut start = 0;
    for end in bounds {
        let mut actions = s.handle(Event::Input(&input[start..end]));
        start = end;
        let mut i = 0;
        while i < actions.len() {
            let ev = match &actions[i] {
                Action::Reply(r) => {
                    wire.extend(r.to_bytes());
                    None
                }
                Action::CheckAuth { .. } => Some(Event::AuthChecked(AuthResult::valid())),
                Action::CheckMail { .. } => Some(Event::MailChecked(Ok(()))),
                Action::CheckRcpt { .. } => Some(Event::RcptChecked(Ok(()))),
                Action::Enqueue(env) => {
                    wire.extend(b"<enqueued ");
                    wire.extend(&env.body);
                    wire.extend(b">");
                    Some(Event::Enqueued(Ok("ID".into())))
                }
                Action::StartTls | Action::Close | Action::Refused(_) => None,
            };
            if let Some(ev) = ev {
                actions.extend(s.handle(ev));
            }
            i += 1;
        }
    }
    wire
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn command_parser_never_panics(line in smtp_bytes(200)) {
        harness::command(&line);
    }

    #[test]
    fn command_parser_on_text(line in "[A-Za-z]{4} [ -~]{0,80}") {
        harness::command(line.as_bytes());
    }

    #[test]
    fn data_decoder_chunking_independent(
        input in smtp_bytes(600),
        cuts in prop::collection::vec(0usize..600, 0..8),
    ) {
        let whole = decode(&input, &[]);
        prop_assert_eq!(decode(&input, &cuts), whole);
        harness::data(&[7].iter().chain(&input).copied().collect::<Vec<_>>());
    }

    #[test]
    fn server_transcript_chunking_independent(
        input in smtp_session(),
        cuts in prop::collection::vec(0usize..400, 0..6),
    ) {
        prop_assert_eq!(transcript(&input, &cuts), transcript(&input, &[]));
    }

    #[test]
    fn server_session_harness(flags in any::<u8>(), input in smtp_session()) {
        let mut data = vec![flags];
        for chunk in input.chunks(17) {
            data.push(16);
            data.extend(chunk);
        }
        harness::server_session(&data);
    }

    #[test]
    fn server_session_raw_bytes(data in smtp_bytes(400)) {
        harness::server_session(&data);
    }

    #[test]
    fn other_parsers_never_panic(data in smtp_bytes(200)) {
        let _ = proxy::parse(&data);
        let mut p = reply::ReplyParser::new();
        p.feed(&data);
        while let Ok(Some(_)) = p.next_reply() {}
        if let Ok(s) = std::str::from_utf8(&data) {
            let _ = address::parse_forward_path(s);
            let _ = address::parse_reverse_path(s);
        }
    }
}
