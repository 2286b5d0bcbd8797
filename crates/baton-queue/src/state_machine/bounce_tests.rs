//! Late bounces and complaints in the state machine: the key set once, the retained
//! records (written only by `EnqueueTracked`, trimmed by time), and what one report does.

use super::*;
use crate::types::{FeedbackKind, FeedbackReport};
use baton_reputation::tenant::Thresholds;

const A: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

fn report(kind: FeedbackKind, id: &str, recipient: &str, hard: bool) -> Request {
    Request::Feedback {
        now_ms: 5_000,
        thresholds: Thresholds::default(),
        reports: vec![FeedbackReport {
            kind,
            id: id.into(),
            recipient: recipient.into(),
            reply: "550 5.1.1 no such user".into(),
            rule: "code:5.1.1".into(),
            category: "bad_mailbox".into(),
            hard,
            node: 3,
        }],
    }
}

#[test]
fn the_first_bounce_key_stays() {
    let mut m = Machine::new();
    assert_eq!(m.reader().bounce_key().unwrap(), None);
    assert!(!m.apply(Request::SetBounceKey { key: vec![] }).changed);
    assert!(m.apply(Request::SetBounceKey { key: vec![1; 32] }).changed);
    assert!(!m.apply(Request::SetBounceKey { key: vec![2; 32] }).changed);
    assert_eq!(m.reader().bounce_key().unwrap(), Some(vec![1; 32]));
}

#[test]
fn tracked_records_outlive_delivery_and_expire_by_time() {
    let mut m = Machine::new();
    // EnqueueTenants keeps nothing extra.
    m.apply(Request::EnqueueTenants {
        node: 2,
        messages: vec![message("01ARZ3NDEKTSV4RRFFQ69G5FAA", &["x@d.test"])],
        tenants: vec!["t1".into()],
    });
    assert_eq!(m.reader().oldest_tracked().unwrap(), None);
    let r = m.apply(Request::EnqueueTracked {
        node: 2,
        messages: vec![message(A, &["a@d.test", "b@d.test"])],
        tenants: vec!["t1".into()],
    });
    assert_eq!(r.added, 1);
    let t = m.reader().tracked(A).unwrap().unwrap();
    assert_eq!((t.tenant.as_str(), t.recipients.len()), ("t1", 2));
    // Delivered: the message goes, its record stays.
    m.apply(Request::Outcomes {
        now_ms: 2_000,
        results: vec![Outcome {
            id: A.into(),
            domain: "d.test".into(),
            finished: vec!["a@d.test".into(), "b@d.test".into()],
            ..Outcome::default()
        }],
    });
    assert!(m.reader().message(A).unwrap().is_none());
    assert!(m.reader().tracked(A).unwrap().is_some());
    // A cut at the ULID's time keeps it, one after lets it go.
    let at = ulid::Ulid::from_string(A).unwrap().timestamp_ms();
    assert!(!m.apply(Request::TrimTracked { before_ms: at }).changed);
    assert!(m.apply(Request::TrimTracked { before_ms: at + 1 }).changed);
    assert_eq!(m.reader().oldest_tracked().unwrap(), None);
}

#[test]
fn a_hard_late_bounce_suppresses_counts_and_says_so_once() {
    let mut m = Machine::new();
    m.apply(Request::EnqueueTracked {
        node: 2,
        messages: vec![message(A, &["a@d.test", "b@d.test"])],
        tenants: vec!["t1".into()],
    });
    // Unknown message, or a recipient it did not have: nothing.
    assert!(
        !m.apply(report(
            FeedbackKind::Bounce,
            "01ARZ3NDEKTSV4RRFFQ69G5FAB",
            "a@d.test",
            true
        ))
        .changed
    );
    assert!(
        !m.apply(report(FeedbackKind::Bounce, A, "c@d.test", true))
            .changed
    );
    assert!(!m.reader().is_suppressed("c@d.test").unwrap());
    assert!(
        m.apply(report(FeedbackKind::Bounce, A, "A@d.test", true))
            .changed
    );
    assert!(m.reader().is_suppressed("a@d.test").unwrap());
    let hard = |m: &Machine| {
        m.reader()
            .tenant("t1")
            .unwrap()
            .map_or(0, |t| t.tenant.totals().hard)
    };
    assert_eq!(hard(&m), 1);
    let e = m.events().last().unwrap().1.clone();
    assert_eq!(e.kind, EventKind::BouncedAsync);
    assert_eq!(
        (e.id.as_str(), e.recipient.as_str(), e.tenant.as_str()),
        (A, "a@d.test", "t1")
    );
    assert_eq!((e.rule.as_str(), e.node), ("code:5.1.1", 3));
    // The same report again: an event, no second count.
    m.apply(report(FeedbackKind::Bounce, A, "a@d.test", true));
    assert_eq!(hard(&m), 1);
    // A soft one: an event only.
    m.apply(report(FeedbackKind::Bounce, A, "b@d.test", false));
    assert!(!m.reader().is_suppressed("b@d.test").unwrap());
    assert_eq!(hard(&m), 1);
}

#[test]
fn a_complaint_suppresses_for_the_tenant_only() {
    let mut m = Machine::new();
    m.apply(Request::EnqueueTracked {
        node: 2,
        messages: vec![message(A, &["a@d.test"])],
        tenants: vec!["t1".into()],
    });
    assert!(
        m.apply(report(FeedbackKind::Complaint, A, "a@d.test", false))
            .changed
    );
    let r = m.reader();
    assert!(r.is_suppressed_for("t1", "a@d.test").unwrap());
    assert!(!r.is_suppressed_for("t2", "a@d.test").unwrap());
    assert!(!r.is_suppressed("a@d.test").unwrap());
    assert_eq!(
        r.tenant("t1").unwrap().unwrap().tenant.totals().complaints,
        1
    );
    assert_eq!(m.events().last().unwrap().1.kind, EventKind::Complaint);
    m.apply(report(FeedbackKind::Complaint, A, "a@d.test", false));
    assert_eq!(
        m.reader()
            .tenant("t1")
            .unwrap()
            .unwrap()
            .tenant
            .totals()
            .complaints,
        1
    );
}
