//! Sites in the state machine: moves by `SetSite`, throttle state from the owner only,
//! operator resumes, and suppression by hard bounces.

use super::*;
use crate::types::{AutoSuppression, Finished, SiteEvent};
use baton_reputation::site::{Mode, SiteState};

/// A machine where nodes 1 and 2 are voters holding leases, every epoch settled.
fn two_owners() -> Machine {
    let mut m = Machine::new();
    let voters: BTreeSet<NodeId> = [1, 2].into();
    let nodes: BTreeMap<NodeId, openraft::BasicNode> = voters
        .iter()
        .map(|id| (*id, openraft::BasicNode::default()))
        .collect();
    m.entry(EntryPayload::Membership(Membership::new(
        vec![voters],
        nodes,
    )));
    m.apply(Request::LeaseRenew { node: 1 });
    m.apply(Request::LeaseRenew { node: 2 });
    let epoch = m.reader().shared.ownership.borrow().epoch;
    for node in [1, 2] {
        m.apply(Request::AssignAck { node, epoch });
    }
    assert!(m.reader().shared.ownership.borrow().is_settled());
    m
}

fn owner(m: &Machine, key: &str) -> NodeId {
    m.reader()
        .shared
        .ownership
        .borrow()
        .owner(key)
        .expect("an owner")
}

fn set_site(domain: &str, site: &str, base: u64, by: NodeId) -> Request {
    Request::SetSite {
        domain: domain.into(),
        site: site.into(),
        base,
        by,
        resolved_ms: 77,
    }
}

fn throttled(rate: f64) -> SiteState {
    SiteState {
        mode: Mode::Throttled,
        rate: Some(rate),
        connections: 3,
        peak: 10.0,
        last_decrease_ms: 5,
        last_change_ms: 5,
        last_connection_change_ms: 0,
        suspensions_ms: Vec::new(),
        resume_from: 0.0,
    }
}

#[test]
fn a_domain_moves_to_its_site_only_by_who_may_deliver_it_from_the_record_it_read() {
    let mut m = two_owners();
    let domain = "gmail.test";
    let holder = owner(&m, domain);
    let other = 3 - holder;
    // Someone who may not deliver the domain cannot move it.
    assert!(
        !m.apply(set_site(domain, "mx.google.test", 0, other))
            .changed
    );
    let r = m.apply(set_site(domain, "mx.google.test", 0, holder));
    assert!(r.changed);
    let (of, key, may) = m.reader().shared.with(|i| {
        (
            i.site_of(domain).cloned().expect("mapped"),
            i.owner_key(domain).to_string(),
            i.may_deliver(owner(&m, "mx.google.test"), domain),
        )
    });
    assert_eq!(
        (of.site.as_str(), of.index, of.resolved_ms),
        ("mx.google.test", r.index, 77)
    );
    assert_eq!(key, "mx.google.test");
    assert!(may, "the site's owner delivers the domain now");
    // A repeat of the same proposal, or one from the old record, changes nothing.
    assert!(
        !m.apply(set_site(domain, "mx.google.test", 0, holder))
            .changed
    );
    assert!(!m.apply(set_site(domain, "elsewhere", 0, holder)).changed);
    // The next move names the record it replaces, and comes from the site's owner.
    let site_owner = owner(&m, "mx.google.test");
    assert!(
        m.apply(set_site(domain, "elsewhere", r.index, site_owner))
            .changed
    );
    // Survives a rebuild of the index (it is in the state).
    m.sm.rebuild_index().unwrap();
    let site = m
        .reader()
        .shared
        .with(|i| i.site_of(domain).map(|s| s.site.clone()));
    assert_eq!(site.as_deref(), Some("elsewhere"));
}

#[test]
fn only_the_owner_commits_a_site_s_throttle_and_an_operator_resume_clears_it() {
    let mut m = two_owners();
    let site = "mx.google.test";
    let holder = owner(&m, site);
    let update = |by: NodeId, rate: f64| Request::SiteUpdate {
        site: site.into(),
        by,
        state: throttled(rate),
        event: Some(SiteEvent {
            kind: EventKind::Throttled,
            rule: "gmail-unusual-rate".into(),
            reply: "421 4.7.28 unusual rate".into(),
            detail: "rate 60/min, 3 connections".into(),
            time_ms: 9,
        }),
    };
    assert!(!m.apply(update(3 - holder, 9.0)).changed, "not the owner");
    assert!(m.apply(update(holder, 1.0)).changed);
    let state = m.reader().shared.with(|i| i.site_state(site).cloned());
    assert_eq!(state, Some(throttled(1.0)));
    let events = m.events();
    let (_, e) = events.last().expect("an event");
    assert_eq!(
        (e.kind, e.site.as_str(), e.rule.as_str(), e.node),
        (EventKind::Throttled, site, "gmail-unusual-rate", holder)
    );
    m.sm.rebuild_index().unwrap();
    assert!(m.reader().shared.with(|i| i.site_state(site).is_some()));

    let r = m.apply(Request::SiteResume {
        site: site.into(),
        now_ms: 11,
    });
    assert!(r.changed);
    let (state, resumed) = m
        .reader()
        .shared
        .with(|i| (i.site_state(site).cloned(), i.site_resumed_at(site)));
    assert_eq!((state, resumed), (None, r.index));
    m.sm.rebuild_index().unwrap();
    assert!(m.reader().shared.with(|i| i.site_state(site).is_none()));
    let (_, e) = m.events().last().cloned().expect("an event");
    assert_eq!(e.kind, EventKind::SiteResumed);
}

#[test]
fn hard_bounces_suppress_with_their_reply_and_throttled_deferrals_use_no_attempt() {
    let mut m = Machine::new();
    m.enqueue(vec![message("A", &["gone@dst.test", "slow@dst.test"])]);
    let mut o = outcome("A", "dst.test", &["gone@dst.test"], &["gone@dst.test"], 500);
    o.last_reply = Some("421 4.7.28 unusual rate".into());
    let finished = Finished {
        outcome: o,
        suppress: vec![AutoSuppression {
            address: "gone@dst.test".into(),
            category: "bad_mailbox".into(),
            reply: "550 5.1.1 no such user".into(),
        }],
        throttled: true,
        replies: Vec::new(),
    };
    m.apply(Request::Finished {
        now_ms: 400,
        results: vec![finished],
        thresholds: Default::default(),
    });
    let list = m.reader().suppressions().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].0, "gone@dst.test");
    assert_eq!(list[0].1.reason, "bad_mailbox: 550 5.1.1 no such user");
    assert_eq!(list[0].1.since_ms, 400);
    let record = m.record("dst.test", "A").expect("still open for slow@");
    assert_eq!(record.recipients, ["slow@dst.test"]);
    assert_eq!(record.attempts, 0, "a throttled deferral is not an attempt");
    assert_eq!(record.next_attempt_ms, 500);
    // A second hard bounce of a listed address keeps the first listing.
    let again = Finished {
        outcome: outcome("A", "dst.test", &[], &[], 900),
        suppress: vec![AutoSuppression {
            address: "GONE@dst.test".into(),
            category: "bad_mailbox".into(),
            reply: "550 5.1.1 later".into(),
        }],
        throttled: false,
        replies: Vec::new(),
    };
    m.apply(Request::Finished {
        now_ms: 800,
        results: vec![again],
        thresholds: Default::default(),
    });
    let list = m.reader().suppressions().unwrap();
    assert_eq!(list[0].1.since_ms, 400);
    assert_eq!(m.record("dst.test", "A").expect("open").attempts, 1);
}
