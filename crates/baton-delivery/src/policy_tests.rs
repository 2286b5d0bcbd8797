//! Table tests of the delivery policy.

use super::*;
use std::time::Duration;

fn job(sender: &str, rcpts: &[&str], attempts: u32) -> Job {
    Job {
        id: "M1".into(),
        domain: "dst.test".into(),
        meta: MessageMeta {
            sender: sender.into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            received_at_ms: 1_000,
            size: 100,
            eight_bit: false,
            smtputf8: false,
            pending_domains: 1,
        },
        record: DeliveryRecord {
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            attempts,
            next_attempt_ms: 0,
            last_reply: Some("451 4.7.1 later".into()),
        },
    }
}

fn r(code: u16, enhanced: &str, text: &str) -> Reply {
    Reply::new(code, enhanced, text)
}

fn none_suppressed(_: &str) -> Result<bool, String> {
    Ok(false)
}

fn plan(job: &Job) -> Plan {
    match prepare(job, none_suppressed) {
        Prepared::Send(p) => p,
        Prepared::Decided(a) => panic!("nothing to send: {a:?}"),
    }
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        intervals: vec![Duration::from_secs(60), Duration::from_secs(300)],
        max_age: Duration::from_secs(3600),
    }
}

#[test]
fn prepare_decides_what_it_can_before_a_transaction() {
    let j = job(
        "a@src.test",
        &[
            "ok@dst.test",
            "gone@dst.test",
            "broken@@dst.test",
            "io@dst.test",
        ],
        0,
    );
    let prepared = prepare(&j, |r: &str| match r {
        "gone@dst.test" => Ok(true),
        "io@dst.test" => Err("sled: I/O error"),
        _ => Ok(false),
    });
    let Prepared::Send(p) = prepared else {
        panic!("ok@dst.test is to be sent")
    };
    assert_eq!(p.from.to_string(), "<a@src.test>");
    let send: Vec<&str> = p.send.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(send, ["ok@dst.test"]);
    assert_eq!(p.decided.suppressed, ["gone@dst.test"]);
    assert_eq!(p.decided.failed.len(), 1);
    assert_eq!(p.decided.failed[0].0, "broken@@dst.test");
    assert_eq!(p.decided.failed[0].1, "5.1.3");
    // The suppression list could not be read: deferred, never sent.
    assert_eq!(p.decided.deferred.len(), 1);
    assert_eq!(p.decided.deferred[0].0, "io@dst.test");
    assert!(p.decided.deferred[0].1.starts_with("451 4.3.0"));
}

#[test]
fn a_suppression_list_that_cannot_be_read_defers_and_never_sends() {
    let j = job("a@src.test", &["x@dst.test", "y@dst.test"], 0);
    let Prepared::Decided(a) = prepare(&j, |_: &str| Err::<bool, _>("sled: I/O error")) else {
        panic!("nothing may be sent while the suppression list is unreadable")
    };
    let deferred: Vec<&str> = a.deferred.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(deferred, ["x@dst.test", "y@dst.test"]);
    assert!(a.delivered.is_empty() && a.failed.is_empty() && a.suppressed.is_empty());
    let o = outcome(&j, a, &ctx(), Vec::new, String::new);
    assert!(o.finished.is_empty(), "deferred recipients stay queued");
    assert_eq!(o.next_attempt_ms, 61_000);
}

#[test]
fn a_stored_sender_that_does_not_parse_holds_the_message() {
    let j = job("not an address", &["x@dst.test"], 2);
    let Prepared::Decided(a) = prepare(&j, none_suppressed) else {
        panic!("a message whose sender does not parse must not be sent (as <> or otherwise)")
    };
    assert!(a.held);
    assert_eq!(a.deferred.len(), 1);
    let o = outcome(&j, a, &ctx(), Vec::new, String::new);
    assert_eq!(o.next_attempt_ms, HELD, "held until an operator acts");
    assert!(o.finished.is_empty() && o.dsn.is_none());
    assert!(o.last_reply.unwrap().contains("does not parse"));
    // The null sender is a sender, not a parse failure.
    let p = plan(&job("", &["x@dst.test"], 0));
    assert_eq!(p.from, ReversePath::Null);
}

#[test]
fn a_transaction_decides_each_recipient_by_its_rcpt_or_data_reply() {
    let j = job(
        "a@src.test",
        &["a@dst.test", "b@dst.test", "c@dst.test", "d@dst.test"],
        0,
    );
    // (RCPT replies, final-dot reply) -> (delivered, failed, deferred)
    type Row = (Vec<Reply>, Option<Reply>, [&'static [&'static str]; 3]);
    let ok = || r(250, "2.1.5", "ok");
    let table: Vec<Row> = vec![
        (
            vec![ok(), ok(), ok(), ok()],
            Some(r(250, "2.0.0", "queued")),
            [
                &["a@dst.test", "b@dst.test", "c@dst.test", "d@dst.test"],
                &[],
                &[],
            ],
        ),
        (
            vec![
                ok(),
                r(550, "5.1.1", "no such user"),
                r(452, "4.2.2", "full"),
                ok(),
            ],
            Some(r(250, "2.0.0", "queued")),
            [
                &["a@dst.test", "d@dst.test"],
                &["b@dst.test"],
                &["c@dst.test"],
            ],
        ),
        (
            vec![ok(), ok(), r(550, "", "no"), ok()],
            Some(r(451, "4.3.0", "try later")),
            [
                &[],
                &["c@dst.test"],
                &["a@dst.test", "b@dst.test", "d@dst.test"],
            ],
        ),
        (
            vec![ok(), ok(), ok(), ok()],
            Some(r(554, "5.7.1", "spam")),
            [
                &[],
                &["a@dst.test", "b@dst.test", "c@dst.test", "d@dst.test"],
                &[],
            ],
        ),
        // Every RCPT refused: no DATA, so no final-dot reply.
        (
            vec![
                r(550, "5.1.1", "x"),
                r(550, "5.1.1", "x"),
                r(451, "4.1.0", "y"),
                r(421, "4.7.0", "z"),
            ],
            None,
            [
                &[],
                &["a@dst.test", "b@dst.test"],
                &["c@dst.test", "d@dst.test"],
            ],
        ),
        // Fewer RCPT replies than recipients (a broken server): the rest are deferred.
        (
            vec![ok(), ok()],
            None,
            [
                &["a@dst.test", "b@dst.test"],
                &[],
                &["c@dst.test", "d@dst.test"],
            ],
        ),
    ];
    for (i, (rcpts, data, [delivered, failed, deferred])) in table.into_iter().enumerate() {
        let a = from_transaction(plan(&j), &rcpts, data.as_ref(), Remote::default());
        let names = |v: Vec<&String>| v.into_iter().cloned().collect::<Vec<_>>();
        assert_eq!(a.delivered, *delivered, "row {i}: delivered");
        assert_eq!(
            names(a.failed.iter().map(|f| &f.0).collect()),
            *failed,
            "row {i}: failed"
        );
        assert_eq!(
            names(a.deferred.iter().map(|d| &d.0).collect()),
            *deferred,
            "row {i}: deferred"
        );
        let last = data
            .as_ref()
            .or(rcpts.last())
            .map(|r| r.to_string().trim().to_string());
        assert_eq!(a.last_reply, last, "row {i}: last reply");
    }
}

#[test]
fn a_failure_keeps_the_remote_status_or_a_default_and_the_reply_as_reason() {
    let j = job("a@src.test", &["a@dst.test", "b@dst.test"], 0);
    let a = from_transaction(
        plan(&j),
        &[r(550, "5.1.1", "no such user"), r(550, "", "nope")],
        None,
        Remote::default(),
    );
    assert_eq!(
        a.failed,
        [
            (
                "a@dst.test".into(),
                "5.1.1".into(),
                "550 5.1.1 no such user".into()
            ),
            ("b@dst.test".into(), "5.0.0".into(), "550 nope".into()),
        ]
    );
}

#[test]
fn decisions_made_before_the_transaction_are_kept() {
    let j = job("a@src.test", &["gone@dst.test", "a@dst.test"], 0);
    let Prepared::Send(p) = prepare(&j, |r: &str| Ok::<_, String>(r == "gone@dst.test")) else {
        panic!()
    };
    let remote = Remote {
        host: "mx.dst.test".into(),
        ip: "127.0.0.9".into(),
        tls: "TLSv1.3".into(),
    };
    let a = from_transaction(
        p.clone(),
        &[r(250, "2.1.5", "ok")],
        Some(&r(250, "2.0.0", "ok")),
        remote.clone(),
    );
    assert_eq!(a.suppressed, ["gone@dst.test"]);
    assert_eq!(a.delivered, ["a@dst.test"]);
    assert_eq!(a.remote, remote);
    let a = from_error(p, "connection lost: reset", remote);
    assert_eq!(a.suppressed, ["gone@dst.test"]);
    assert_eq!(
        a.deferred,
        [(
            "a@dst.test".to_string(),
            "connection lost: reset".to_string()
        )]
    );
    assert_eq!(a.last_reply.as_deref(), Some("connection lost: reset"));
}

#[test]
fn expiry_route_failures_and_deferrals_cover_every_recipient() {
    let j = job("a@src.test", &["a@dst.test", "b@dst.test"], 4);
    assert_eq!(expired(&j, &retry(), 1_000 + 3_599_999), None);
    let a = expired(&j, &retry(), 1_000 + 3_600_000).expect("expired");
    assert!(a.expired);
    assert_eq!(a.failed.len(), 2);
    assert_eq!(a.failed[0].1, "4.4.7");
    assert_eq!(
        a.failed[0].2,
        "delivery time expired after 4 attempts; last reply: 451 4.7.1 later"
    );
    let permanent = RouteError::Permanent("dst.test".into(), "dst.test has a null MX".into());
    let a = route_failed(&j, &permanent);
    assert_eq!(
        a.failed[1],
        (
            "b@dst.test".into(),
            "5.1.10".into(),
            "dst.test has a null MX".into()
        )
    );
    let temporary = RouteError::Temporary("dst.test".into(), "timed out".into());
    let a = route_failed(&j, &temporary);
    assert!(a.failed.is_empty());
    assert_eq!(a.deferred.len(), 2);
    assert_eq!(
        a.last_reply.as_deref(),
        Some("DNS lookup for dst.test failed: timed out")
    );
}

fn ctx() -> Context<'static> {
    static RETRY: std::sync::OnceLock<RetryPolicy> = std::sync::OnceLock::new();
    Context {
        hostname: "relay.test",
        retry: RETRY.get_or_init(retry),
        node: 3,
        now_ms: 1_000,
    }
}

#[test]
fn an_outcome_finishes_what_was_decided_and_schedules_the_rest() {
    // (attempts so far, sender) -> (next attempt, DSN?)
    let table = [
        (0, "a@src.test", 61_000, true),
        (1, "a@src.test", 301_000, true),
        (7, "a@src.test", 301_000, true),
        (0, "", 61_000, false), // the null sender gets no bounce
    ];
    for (attempts, sender, next, bounce) in table {
        let j = job(
            sender,
            &["a@dst.test", "b@dst.test", "c@dst.test", "d@dst.test"],
            attempts,
        );
        let a = Attempt {
            delivered: vec!["a@dst.test".into()],
            failed: vec![(
                "b@dst.test".into(),
                "5.1.1".into(),
                "550 5.1.1 no such user".into(),
            )],
            deferred: vec![("c@dst.test".into(), "451 later".into())],
            suppressed: vec!["d@dst.test".into()],
            last_reply: Some("250 ok".into()),
            remote: Remote {
                host: "mx.dst.test".into(),
                ..Remote::default()
            },
            ..Attempt::default()
        };
        let mut asked = false;
        let o = outcome(
            &j,
            a,
            &ctx(),
            || {
                asked = true;
                b"Subject: original\r\n\r\nbody\r\n".to_vec()
            },
            || "DSN-1".to_string(),
        );
        assert_eq!(o.finished, ["a@dst.test", "b@dst.test", "d@dst.test"]);
        assert_eq!(o.failed, ["b@dst.test"]);
        assert_eq!(o.suppressed, ["d@dst.test"]);
        assert_eq!(o.next_attempt_ms, next, "attempts {attempts}");
        assert_eq!(
            (o.id.as_str(), o.domain.as_str(), o.node),
            ("M1", "dst.test", 3)
        );
        assert_eq!(o.dsn.is_some(), bounce);
        assert_eq!(asked, bounce, "the original is read only for a bounce");
        if let Some(dsn) = o.dsn {
            assert_eq!(dsn.id, "DSN-1");
            assert_eq!(dsn.recipients, [sender]);
            let text = String::from_utf8(dsn.body).unwrap();
            assert!(text.contains("Final-Recipient: rfc822; b@dst.test"));
            assert!(text.contains("Remote-MTA: dns; mx.dst.test"));
            assert!(text.contains("Subject: original"));
        }
    }
}
