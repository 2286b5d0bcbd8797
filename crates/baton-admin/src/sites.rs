//! Destination sites as the API shows them: each site's throttle as its owner last
//! committed it, its domains and their queue.

use crate::pb::Site;
use baton_queue::index::Index;
use baton_queue::ownership::Ownership;
use baton_reputation::site::{Mode, SiteState};
use std::collections::BTreeMap;
use tonic::Status;

/// A site's state in one word.
pub(crate) fn state_name(state: Option<&SiteState>) -> &'static str {
    match state.map(|s| s.mode) {
        None | Some(Mode::Normal) => "normal",
        Some(Mode::Throttled) => "throttled",
        Some(Mode::Suspended { .. }) => "suspended",
        Some(Mode::Probing) => "probing",
    }
}

/// Every known site (with its domains), read under one lock of the index.
pub(crate) fn all(index: &Index, ownership: &Ownership) -> Vec<Site> {
    let sites: BTreeMap<String, Vec<String>> = index.sites();
    sites
        .into_iter()
        .map(|(name, domains)| one(index, ownership, name, domains))
        .collect()
}

/// The site `name`, if it is known (a domain belongs to it, or it has a state).
pub(crate) fn get(index: &Index, ownership: &Ownership, name: &str) -> Option<Site> {
    let domains = index.sites().remove(name)?;
    Some(one(index, ownership, name.to_string(), domains))
}

fn one(index: &Index, ownership: &Ownership, name: String, domains: Vec<String>) -> Site {
    let state = index.site_state(&name);
    let (mut queued, mut deferred) = (0u64, 0u64);
    for d in &domains {
        for (_, due) in index.due_times(d) {
            if due == 0 {
                queued += 1;
            } else {
                deferred += 1;
            }
        }
    }
    let suspended_until = match state.map(|s| s.mode) {
        Some(Mode::Suspended { until_ms }) => until_ms,
        _ => 0,
    };
    Site {
        state: state_name(state).to_string(),
        rate_per_minute: state.and_then(|s| match s.mode {
            Mode::Suspended { .. } => Some(0.0),
            _ => s.rate.map(|r| r * 60.0),
        }),
        connections: state.map(|s| match s.mode {
            Mode::Suspended { .. } => 0,
            Mode::Probing => 1,
            _ => s.connections,
        }),
        suspended_until_unix_ms: suspended_until,
        suspensions_24h: state.map_or(0, |s| s.suspensions_ms.len() as u32),
        last_change_unix_ms: state.map_or(0, |s| s.last_change_ms),
        owner: ownership.owner(&name).unwrap_or(0),
        domains,
        queued,
        deferred,
        name,
    }
}

/// A row of the queue summary, read under the index's lock.
pub(crate) struct DomainRow {
    pub domain: String,
    pub queued: u64,
    pub deferred: u64,
    pub oldest: Option<String>,
    pub suspended: bool,
    pub owner: u64,
    pub site: Option<String>,
    pub throttle: &'static str,
}

/// NOT_FOUND for a site nobody knows, saying how sites are named.
pub(crate) fn unknown(name: &str) -> Status {
    Status::not_found(format!(
        "no site {name:?}: `batonctl site list` shows the known ones (a site is named by its [[shaping.site]] name, else by its MX hosts joined with commas)"
    ))
}
