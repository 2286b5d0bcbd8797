//! What an MTA-STS policy changes for a worker's connection (a child of `worker`).
//!
//! - `enforce`: only the MX hosts the policy permits are tried, with STARTTLS required
//!   and the certificate verified for the MX host name (webpki roots plus
//!   `delivery.tls_ca_file`); no permitted host defers with
//!   `451 4.4.4 MTA-STS enforce policy for D permits none of its MX hosts`, a TLS
//!   failure with `451 4.7.5 MTA-STS: <reason>`. Never cleartext.
//! - `testing`: delivered as without a policy; a connection to a host the policy does
//!   not permit, or without TLS, counts in `baton_mta_sts_failures_total{mode="testing"}`.
//!
//! These deferrals are Baton's own replies, not a remote's: they are not classified
//! (the classifier takes only what remotes say) and tell the site nothing, so they never
//! throttle, suspend or bounce; their events carry the rule `mta-sts`. Events say which
//! TLS policy applied in `remote.tls` (see [`tls_label`]).

use super::{InFlight, WorkerState, release_later};
use crate::metrics as m;
use baton_delivery::mta_sts::mx_matches;
use baton_delivery::outbound::{ConnError, Connection, OpenFailed};
use baton_delivery::policy::{self, Job};
use baton_delivery::reason;
use baton_delivery::route::Target;
use baton_delivery::tls::TlsPolicy;
use baton_queue::sts::StsPolicyRecord;
use baton_queue::types::{RecipientReply, Remote};
use ractor::ActorProcessingErr;

/// The rule named in the events of MTA-STS deferrals.
pub(super) const RULE: &str = "mta-sts";

/// How a connection is made under the domain's policy.
pub(super) struct StsPlan {
    pub policy: Option<StsPolicyRecord>,
    /// The name of the TLS policy, for events: `mta-sts-enforce`, `mta-sts-testing`, or
    /// `delivery.tls`'s value.
    pub tag: &'static str,
    pub tls: TlsPolicy,
}

impl StsPlan {
    pub fn new(policy: Option<StsPolicyRecord>, configured: TlsPolicy) -> StsPlan {
        let (tag, tls) = match policy.as_ref().map(|p| p.mode.as_str()) {
            Some("enforce") => ("mta-sts-enforce", TlsPolicy::Required),
            Some("testing") => ("mta-sts-testing", configured),
            _ => (
                match configured {
                    TlsPolicy::Disabled => "disabled",
                    TlsPolicy::Opportunistic => "opportunistic",
                    TlsPolicy::Required => "required",
                },
                configured,
            ),
        };
        StsPlan { policy, tag, tls }
    }

    fn enforced(&self) -> bool {
        self.tag == "mta-sts-enforce"
    }

    fn permits(&self, host: &str) -> bool {
        self.policy
            .as_ref()
            .is_none_or(|p| p.mx.iter().any(|pattern| mx_matches(pattern, host)))
    }

    /// The targets to try: under `enforce`, only the permitted ones.
    pub fn targets(&self, all: &[Target]) -> Vec<Target> {
        if !self.enforced() {
            return all.to_vec();
        }
        all.iter()
            .filter(|t| self.permits(&t.host))
            .cloned()
            .collect()
    }

    /// Under `testing`: counts a connection the policy would have refused.
    pub fn check_testing(&self, domain: &str, conn: &Connection) {
        if self.tag != "mta-sts-testing" {
            return;
        }
        let why = if !self.permits(&conn.target.host) {
            "MX host not permitted"
        } else if !conn.tls {
            "no TLS"
        } else {
            return;
        };
        metrics::counter!(m::MTA_STS_FAILURES, "mode" => "testing").increment(1);
        tracing::info!(%domain, host = %conn.target.host, reason = why, "MTA-STS testing policy would refuse this connection");
    }

    /// Under `enforce`, when TLS could not be had on any permitted host: the deferral.
    pub fn tls_failure(&self, failed: &OpenFailed) -> Option<String> {
        if !self.enforced() {
            return None;
        }
        let tls: Vec<String> = failed
            .tried
            .iter()
            .filter(|(_, e)| matches!(e, ConnError::TlsRequired(_)))
            .map(|(t, e)| format!("{} {e}", reason::target(t)))
            .collect();
        (!tls.is_empty()).then(|| format!("451 4.7.5 MTA-STS: {}", tls.join("; ")))
    }
}

/// The `remote.tls` of an event: the TLS version (empty without TLS) and the TLS policy
/// that applied, `TLSv1_3 tls_policy=mta-sts-enforce`. Kept in the existing string field
/// so that the stored layout of outcomes and events does not change.
pub(super) fn tls_label(version: &str, tag: &str) -> String {
    match (version, tag) {
        (v, "") => v.to_string(),
        ("", t) => format!("tls_policy={t}"),
        (v, t) => format!("{v} tls_policy={t}"),
    }
}

/// The 4.4.4 deferral of a domain none of whose MX hosts an `enforce` policy permits.
pub(super) fn no_permitted_mx(domain: &str) -> String {
    format!("451 4.4.4 MTA-STS enforce policy for {domain} permits none of its MX hosts")
}

impl WorkerState {
    /// Defers `job` and everything waiting for the domain with `reason`, an MTA-STS
    /// deferral: not classified, nothing told to the site, counted as an attempt.
    pub(super) async fn sts_defer_all(
        &self,
        job: Job,
        token: InFlight,
        reason: &str,
        remote: Remote,
    ) -> Result<(), ActorProcessingErr> {
        metrics::counter!(m::MTA_STS_FAILURES, "mode" => "enforce").increment(1);
        tracing::info!(domain = %self.domain, %reason, "MTA-STS: deferred");
        self.probe_over();
        self.sts_defer(&job, token, reason, remote.clone());
        while let Some(token) = self.next().await? {
            match self.load(&token) {
                Some(job) => self.sts_defer(&job, token, reason, remote.clone()),
                None => release_later(token),
            }
        }
        Ok(())
    }

    fn sts_defer(&self, job: &Job, token: InFlight, reason: &str, remote: Remote) {
        let attempt = policy::defer_all(job, reason, remote);
        let replies = attempt
            .deferred
            .iter()
            .map(|(recipient, reply)| RecipientReply {
                recipient: recipient.clone(),
                reply: reply.clone(),
                rule: RULE.to_string(),
            })
            .collect();
        // The commit runs on its own (the task holds the token).
        drop(self.finish_with(job, token, attempt, Vec::new(), false, replies));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(mode: &str, mx: &[&str]) -> StsPolicyRecord {
        StsPolicyRecord {
            id: "1".into(),
            mode: mode.into(),
            mx: mx.iter().map(|s| s.to_string()).collect(),
            max_age_s: 86400,
            fetched_ms: 0,
            expires_ms: 86_400_000,
        }
    }

    fn target(host: &str) -> Target {
        Target {
            host: host.into(),
            addr: "127.0.0.1:25".parse().unwrap(),
        }
    }

    #[test]
    fn enforce_keeps_permitted_hosts_and_requires_tls() {
        let all = [target("mx.sts.test"), target("other.sts.test")];
        let plan = StsPlan::new(
            Some(record("enforce", &["mx.sts.test"])),
            TlsPolicy::Opportunistic,
        );
        assert_eq!(
            (plan.tag, plan.tls),
            ("mta-sts-enforce", TlsPolicy::Required)
        );
        assert_eq!(plan.targets(&all), vec![all[0].clone()]);
        let none = StsPlan::new(Some(record("enforce", &["x.test"])), TlsPolicy::Disabled);
        assert!(none.targets(&all).is_empty());
        let testing = StsPlan::new(Some(record("testing", &["x.test"])), TlsPolicy::Disabled);
        assert_eq!(
            (testing.tag, testing.tls),
            ("mta-sts-testing", TlsPolicy::Disabled)
        );
        assert_eq!(testing.targets(&all).len(), 2);
        let off = StsPlan::new(None, TlsPolicy::Opportunistic);
        assert_eq!(off.tag, "opportunistic");
        assert_eq!(off.targets(&all).len(), 2);
    }

    #[test]
    fn tls_failures_defer_with_4_7_5_only_under_enforce() {
        let t = target("mx.sts.test");
        let failed = OpenFailed {
            tried: vec![(
                t.clone(),
                ConnError::TlsRequired("STARTTLS not offered".into()),
            )],
        };
        let plan = StsPlan::new(
            Some(record("enforce", &["mx.sts.test"])),
            TlsPolicy::Opportunistic,
        );
        assert_eq!(
            plan.tls_failure(&failed).as_deref(),
            Some(
                "451 4.7.5 MTA-STS: mx.sts.test[127.0.0.1]:25 TLS required but not available: \
                 STARTTLS not offered"
            )
        );
        let refused = OpenFailed {
            tried: vec![(
                t,
                ConnError::Unavailable {
                    reason: "connection refused".into(),
                    reply: None,
                },
            )],
        };
        assert_eq!(plan.tls_failure(&refused), None);
        let off = StsPlan::new(None, TlsPolicy::Required);
        assert_eq!(off.tls_failure(&failed), None);
    }

    #[test]
    fn labels() {
        assert_eq!(
            tls_label("TLSv1_3", "mta-sts-enforce"),
            "TLSv1_3 tls_policy=mta-sts-enforce"
        );
        assert_eq!(
            tls_label("", "mta-sts-enforce"),
            "tls_policy=mta-sts-enforce"
        );
        assert_eq!(tls_label("TLSv1_3", ""), "TLSv1_3");
        assert_eq!(
            no_permitted_mx("sts.test"),
            "451 4.4.4 MTA-STS enforce policy for sts.test permits none of its MX hosts"
        );
    }
}
