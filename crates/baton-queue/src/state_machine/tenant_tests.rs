//! Tenants in the state machine: whose each message is, the counts its outcomes add,
//! the verdicts the entry's thresholds give, the pause that holds a tenant's deliveries,
//! the resume that lets them go, and addresses suppressed for one tenant.

use super::*;
use crate::types::{AutoSuppression, Finished, domain_of};
use baton_reputation::tenant::{Counts, Standing, Thresholds};

/// Bounce verdicts from `min` attempted recipients on (the defaults' rates: warn 5%,
/// pause 10%).
fn thresholds(min: u64) -> Thresholds {
    Thresholds {
        bounce_min_volume: min,
        ..Thresholds::default()
    }
}

impl Machine {
    /// Enqueues one message of `tenant` to each `(id, recipient)`.
    fn enqueue_for(&mut self, tenant: &str, messages: &[(&str, &str)]) -> Response {
        self.apply(Request::EnqueueTenants {
            node: 2,
            messages: messages.iter().map(|(id, r)| message(id, &[r])).collect(),
            tenants: vec![tenant.to_string(); messages.len()],
        })
    }

    fn finished(&mut self, now_ms: u64, results: Vec<Finished>, t: &Thresholds) -> Response {
        self.apply(Request::Finished {
            now_ms,
            results,
            thresholds: t.clone(),
        })
    }

    fn tenant(&self, name: &str) -> Option<TenantRecord> {
        self.reader().tenant(name).expect("read tenant")
    }

    fn counted(&self, name: &str) -> Counts {
        self.tenant(name)
            .map(|t| t.tenant.totals())
            .unwrap_or_default()
    }

    /// Tenant events: (kind, tenant, rule, detail).
    fn tenant_events(&self) -> Vec<(EventKind, String, String, String)> {
        self.events()
            .into_iter()
            .filter(|(_, e)| !e.tenant.is_empty())
            .map(|(_, e)| (e.kind, e.tenant, e.rule, e.detail))
            .collect()
    }

    fn held(&self, tenant: &str) -> usize {
        self.reader().shared.with(|i| i.held(tenant))
    }

    fn paused(&self, tenant: &str) -> Option<String> {
        self.reader()
            .shared
            .with(|i| i.tenant_paused(tenant).map(str::to_string))
    }
}

/// `id`'s only recipient `rcpt` delivered.
fn delivered(id: &str, rcpt: &str) -> Finished {
    Finished {
        outcome: outcome(id, &domain_of(rcpt), &[rcpt], &[], 0),
        ..Finished::default()
    }
}

/// `id`'s only recipient `rcpt` refused for good: a hard bounce, as the worker reports it.
fn bounced(id: &str, rcpt: &str) -> Finished {
    let mut o = outcome(id, &domain_of(rcpt), &[rcpt], &[rcpt], 0);
    o.last_reply = Some("550 5.1.1 no such user".into());
    Finished {
        outcome: o,
        suppress: vec![AutoSuppression {
            address: rcpt.to_ascii_uppercase(),
            category: "bad_mailbox".into(),
            reply: "550 5.1.1 no such user".into(),
        }],
        throttled: false,
        replies: Vec::new(),
    }
}

#[test]
fn a_message_keeps_its_tenant_while_queued() {
    let mut m = Machine::new();
    let r = m.apply(Request::EnqueueTenants {
        node: 3,
        messages: vec![
            message("A", &["x@one.test", "y@two.test"]),
            message("B", &["z@one.test"]),
            message("C", &["w@one.test"]),
        ],
        // C has none: the list may be short.
        tenants: vec!["app1".into(), String::new()],
    });
    assert_eq!((r.added, r.duplicates), (3, 0));
    let tenant = |id: &str| m.reader().tenant_of(id).unwrap();
    assert_eq!(tenant("A").as_deref(), Some("app1"));
    assert_eq!((tenant("B"), tenant("C")), (None, None));
    // Received events name the node, as EnqueueFrom's do.
    assert!(
        m.events()
            .iter()
            .all(|(_, e)| e.kind == EventKind::Received && e.node == 3)
    );
    // A's tenant stays until its last domain is finished.
    m.outcome(2_000, outcome("A", "one.test", &["x@one.test"], &[], 0));
    assert_eq!(m.reader().tenant_of("A").unwrap().as_deref(), Some("app1"));
    m.outcome(2_000, outcome("A", "two.test", &["y@two.test"], &[], 0));
    assert_eq!(m.reader().tenant_of("A").unwrap(), None);
}

#[test]
fn outcomes_count_for_the_tenant_once() {
    let mut m = Machine::new();
    let t = thresholds(1_000);
    m.enqueue_for("app1", &[("A", "a@dst.test"), ("B", "b@dst.test")]);
    m.apply(Request::EnqueueTenants {
        node: 1,
        messages: vec![message("C", &["c@dst.test", "d@dst.test", "e@dst.test"])],
        tenants: vec!["app1".into()],
    });
    // A delivered, B a hard bounce; of C one suppressed, one expired, one deferred.
    let mut c = outcome(
        "C",
        "dst.test",
        &["c@dst.test", "d@dst.test"],
        &["d@dst.test"],
        9_000,
    );
    c.suppressed = vec!["c@dst.test".into()];
    c.expired = true;
    let results = vec![
        delivered("A", "a@dst.test"),
        bounced("B", "b@dst.test"),
        Finished {
            outcome: c,
            ..Finished::default()
        },
    ];
    m.finished(5_000, results.clone(), &t);
    let want = Counts {
        attempted: 2,
        hard: 1,
        delivered: 1,
        complaints: 0,
    };
    assert_eq!(m.counted("app1"), want);
    assert_eq!(m.tenant("app1").unwrap().thresholds, Some(t.clone()));
    // The same entry again (a retried commit) finishes nothing and counts nothing.
    m.finished(6_000, results, &t);
    assert_eq!(m.counted("app1"), want);
    // A failure that is not a hard bounce is attempted, not hard.
    m.finished(
        7_000,
        vec![Finished {
            outcome: outcome("C", "dst.test", &["e@dst.test"], &["e@dst.test"], 0),
            ..Finished::default()
        }],
        &t,
    );
    assert_eq!(m.counted("app1").attempted, 3);
    assert_eq!(m.counted("app1").hard, 1);
    // Messages without a tenant (a DSN) count for nobody; nor do `Outcomes` entries.
    m.enqueue(vec![message("D", &["f@dst.test"])]);
    m.finished(8_000, vec![delivered("D", "f@dst.test")], &t);
    assert_eq!(m.reader().tenants().unwrap().len(), 1);
    assert!(m.tenant_events().is_empty(), "under the minimum volume");
}

#[test]
fn the_verdict_follows_the_thresholds_in_the_entry() {
    let mut m = Machine::new();
    m.enqueue_for("app1", &[("A", "a@dst.test"), ("B", "b@dst.test")]);
    m.enqueue_for("app1", &[("C", "c@dst.test"), ("D", "d@dst.test")]);
    // 1 in 2 bounced, but under this entry's minimum volume: no verdict.
    m.finished(
        5_000,
        vec![delivered("A", "a@dst.test"), bounced("B", "b@dst.test")],
        &thresholds(200),
    );
    assert_eq!(m.tenant("app1").unwrap().tenant.standing, Standing::Good);
    // The next entry carries a lower minimum: its proposer's config decides, on every
    // replica alike.
    m.finished(6_000, vec![delivered("C", "c@dst.test")], &thresholds(3));
    assert!(m.tenant("app1").unwrap().tenant.paused());
}

#[test]
fn past_the_pause_rate_a_tenant_is_warned_paused_and_its_mail_held_until_resumed() {
    let mut m = Machine::new();
    let t = thresholds(10);
    let t1: Vec<(String, String)> = (0..10)
        .map(|i| (format!("A{i}"), format!("u{i}@dst.test")))
        .collect();
    let refs: Vec<(&str, &str)> = t1.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    m.enqueue_for("t1", &refs);
    m.enqueue_for("t1", &[("LATE", "late@other.test")]);
    m.enqueue_for("t2", &[("B0", "b0@dst.test"), ("B1", "b1@other.test")]);
    // Eight delivered, two hard bounces: 20%, past both rates at the minimum volume.
    let mut results: Vec<Finished> = refs[..8].iter().map(|(id, r)| delivered(id, r)).collect();
    results.push(bounced("A8", "u8@dst.test"));
    results.push(bounced("A9", "u9@dst.test"));
    m.finished(5_000, results, &t);

    let record = m.tenant("t1").unwrap();
    assert!(record.tenant.paused());
    assert_eq!(record.since_ms, 5_000);
    let paused = "hard-bounce rate 20% (2/10, limit 10%)";
    assert_eq!(record.pause_reason(), Some(paused));
    assert_eq!(
        m.tenant_events(),
        [
            (
                EventKind::TenantWarning,
                "t1".to_string(),
                "tenants.bounce_warn_rate".to_string(),
                "hard-bounce rate 20% (2/10, limit 5%)".to_string()
            ),
            (
                EventKind::TenantPaused,
                "t1".to_string(),
                "tenants.bounce_pause_rate".to_string(),
                paused.to_string()
            ),
        ]
    );
    let last = m.events().pop().unwrap().1;
    assert_eq!(
        (last.reply.as_str(), last.node),
        ("550 5.1.1 no such user", 1)
    );
    // What ingress tells its senders, and what delivery no longer sees: t1's queued
    // mail is held, t2's is not.
    assert_eq!(m.paused("t1").as_deref(), Some(paused));
    assert_eq!(m.paused("t2"), None);
    assert_eq!(m.held("t1"), 1);
    assert_eq!(m.due("other.test", u64::MAX - 1), ["B1"]);
    assert_eq!(m.due("dst.test", u64::MAX - 1), ["B0"]);
    // Mail of t1 accepted meanwhile (another node may not have applied the pause yet)
    // is held too, and an operator's retry does not let it out.
    m.enqueue_for("t1", &[("NEW", "new@dst.test")]);
    assert!(m.apply(Request::Retry { id: "NEW".into() }).changed);
    assert_eq!(m.due("dst.test", u64::MAX - 1), ["B0"]);
    assert_eq!(m.held("t1"), 2);
    // More outcomes (from attempts in flight at the pause) count, but change nothing.
    m.enqueue_for("t1", &[("F", "f@dst.test")]);
    let before = m.events().len();
    m.finished(5_500, vec![bounced("F", "f@dst.test")], &t);
    assert!(m.tenant("t1").unwrap().tenant.paused());
    assert_eq!(m.tenant_events().len(), 2);
    assert_eq!(m.events().len(), before + 1, "just the bounce");

    // Held across a restart (the index is rebuilt from the state).
    m.sm.rebuild_index().unwrap();
    assert_eq!(m.held("t1"), 2);
    assert_eq!(m.paused("t1").as_deref(), Some(paused));
    assert_eq!(m.due("other.test", u64::MAX - 1), ["B1"]);

    let r = m.apply(Request::ResumeTenant {
        tenant: "t1".into(),
        now_ms: 9_000,
    });
    assert!(r.changed);
    let resumed = m.tenant_events().pop().unwrap();
    assert_eq!(
        (resumed.0, resumed.1.as_str(), resumed.2.as_str()),
        (EventKind::TenantResumed, "t1", "operator")
    );
    let record = m.tenant("t1").unwrap();
    assert_eq!(record.tenant.standing, Standing::Good);
    assert_eq!(record.tenant.totals(), Counts::default(), "a fresh window");
    assert_eq!(record.since_ms, 9_000);
    assert_eq!(m.paused("t1"), None);
    assert_eq!(m.held("t1"), 0);
    assert_eq!(m.due("other.test", u64::MAX - 1), ["B1", "LATE"]);
    assert_eq!(m.due("dst.test", u64::MAX - 1), ["B0", "NEW"]);
    // Nothing left to resume.
    let again = Request::ResumeTenant {
        tenant: "t1".into(),
        now_ms: 9_500,
    };
    assert!(!m.apply(again).changed);
}

#[test]
fn an_operator_pauses_any_tenant_and_resumes_only_a_paused_one() {
    let mut m = Machine::new();
    m.enqueue_for("t1", &[("A", "a@dst.test")]);
    let pause = |reason: &str| Request::PauseTenant {
        tenant: "t1".into(),
        reason: reason.into(),
        now_ms: 4_000,
    };
    assert!(m.apply(pause("")).changed);
    assert_eq!(m.paused("t1").as_deref(), Some("paused by an operator"));
    // Paused already: the first reason stays.
    assert!(!m.apply(pause("second thoughts")).changed);
    assert_eq!(m.paused("t1").as_deref(), Some("paused by an operator"));
    assert!(m.due("dst.test", u64::MAX - 1).is_empty());
    let events = m.tenant_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, EventKind::TenantPaused);
    assert_eq!(events[0].2, "operator");
    // A tenant never seen may be paused before it sends (its record is made)...
    assert!(
        m.apply(Request::PauseTenant {
            tenant: "new".into(),
            reason: "compromised account".into(),
            now_ms: 4_000,
        })
        .changed
    );
    assert_eq!(m.paused("new").as_deref(), Some("compromised account"));
    // ...but one never seen cannot be resumed, nor one that is not paused.
    let resume = |tenant: &str| Request::ResumeTenant {
        tenant: tenant.into(),
        now_ms: 5_000,
    };
    assert!(!m.apply(resume("nobody")).changed);
    assert!(m.reader().tenant("nobody").unwrap().is_none());
    assert!(m.apply(resume("t1")).changed);
    assert!(!m.apply(resume("t1")).changed);
    assert_eq!(m.due("dst.test", u64::MAX - 1), ["A"]);
}

#[test]
fn an_address_may_be_suppressed_for_one_tenant_only() {
    let mut m = Machine::new();
    let add = Request::SuppressForTenant {
        tenant: "t1".into(),
        address: "Bob@Dst.test".into(),
        reason: "complained".into(),
        now_ms: 7,
    };
    assert!(m.apply(add.clone()).changed);
    assert!(!m.apply(add).changed);
    let r = m.reader();
    assert!(r.is_suppressed_for("t1", "bob@DST.test").unwrap());
    assert!(!r.is_suppressed_for("t2", "bob@dst.test").unwrap());
    assert!(!r.is_suppressed("bob@dst.test").unwrap(), "not global");
    let list = r.tenant_suppressions().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].0.as_str(), list[0].1.as_str()),
        ("t1", "bob@dst.test")
    );
    assert_eq!(list[0].2.reason, "complained");
    assert!(r.suppressions().unwrap().is_empty());
    let remove = |tenant: &str| Request::UnsuppressForTenant {
        tenant: tenant.into(),
        address: "BOB@dst.test".into(),
    };
    assert!(!m.apply(remove("t2")).changed);
    assert!(m.apply(remove("t1")).changed);
    assert!(!m.reader().is_suppressed_for("t1", "bob@dst.test").unwrap());
}
