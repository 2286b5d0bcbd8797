//! The MTA-STS policy cache in the state machine: set, replace, drop.

use super::*;
use crate::sts::StsPolicyRecord;

fn record(id: &str, fetched_ms: u64) -> StsPolicyRecord {
    StsPolicyRecord {
        id: id.into(),
        mode: "enforce".into(),
        mx: vec!["mx.sts.test".into(), "*.sts.test".into()],
        max_age_s: 86400,
        fetched_ms,
        expires_ms: fetched_ms + 86_400_000,
    }
}

#[test]
fn policies_are_set_replaced_and_dropped() {
    let mut m = Machine::new();
    assert_eq!(m.reader().sts_policy("sts.test").unwrap(), None);
    let r = m.apply(Request::SetStsPolicy {
        domain: "STS.test".into(),
        policy: Some(record("1", 1000)),
    });
    assert!(r.changed);
    assert_eq!(
        m.reader().sts_policy("sts.test").unwrap(),
        Some(record("1", 1000))
    );
    m.apply(Request::SetStsPolicy {
        domain: "sts.test".into(),
        policy: Some(record("2", 5000)),
    });
    let p = m.reader().sts_policy("sts.test").unwrap().unwrap();
    assert_eq!(p.id, "2");
    assert!(p.is_live(5000 + 86_399_999) && !p.is_live(5000 + 86_400_000));
    assert!(!p.refresh_due(5000 + 43_199_999) && p.refresh_due(5000 + 43_200_000));
    // Another domain's record is its own.
    assert_eq!(m.reader().sts_policy("other.test").unwrap(), None);
    let r = m.apply(Request::SetStsPolicy {
        domain: "sts.test".into(),
        policy: None,
    });
    assert!(r.changed);
    assert_eq!(m.reader().sts_policy("sts.test").unwrap(), None);
    let r = m.apply(Request::SetStsPolicy {
        domain: "sts.test".into(),
        policy: None,
    });
    assert!(!r.changed);
}
