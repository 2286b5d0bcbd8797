//! The commands that change the cluster: retry or delete a message, or every message
//! queued for a domain (or all), suspend or resume a domain, add or remove a
//! suppression, add or remove a node. Each prints the reply as JSON with `--json`, else
//! one line saying what happened.

use crate::connect::Client;
use crate::failure::{Failure, Result};
use crate::output::print_json;
use crate::pb;

/// Reports a change: the reply as JSON, or `what` (or `unchanged` when the change found
/// nothing to do) with the log index.
pub(crate) fn report_change(json: bool, r: &pb::ChangeReply, what: &str, unchanged: &str) {
    if json {
        print_json(r);
    } else if r.changed {
        println!("{what} (log index {})", r.index);
    } else {
        println!("{unchanged} (log index {})", r.index);
    }
}

/// `message retry`: every open delivery of the message due now.
pub async fn retry_message(client: &mut Client, json: bool, id: &str) -> Result<()> {
    let r = client
        .retry_message(pb::MessageRequest { id: id.to_string() })
        .await?
        .into_inner();
    report_change(
        json,
        &r,
        &format!("message {id}: due now"),
        &format!("message {id}: nothing open to retry"),
    );
    Ok(())
}

/// `message delete`: drop the message; with `dsn`, bounce it to the sender.
pub async fn delete_message(client: &mut Client, json: bool, id: &str, dsn: bool) -> Result<()> {
    let r = client
        .delete_message(pb::DeleteMessageRequest {
            id: id.to_string(),
            dsn,
        })
        .await?
        .into_inner();
    let what = if dsn {
        format!("message {id}: deleted, sender notified")
    } else {
        format!("message {id}: deleted")
    };
    report_change(json, &r, &what, &format!("message {id}: already gone"));
    Ok(())
}

/// What `queue retry|delete` act on, for messages: `for example.com`, or `in the queue`.
fn scope(domain: Option<&str>) -> String {
    match domain {
        Some(d) => format!("for {d}"),
        None => "in the queue".into(),
    }
}

/// `queue retry --domain D | --all`: every message queued for D (or all) due now.
pub async fn retry_queue(client: &mut Client, json: bool, domain: Option<&str>) -> Result<()> {
    let r = client
        .retry_queue(pb::QueueSelection {
            domain: domain.unwrap_or_default().to_string(),
            all: domain.is_none(),
        })
        .await?
        .into_inner();
    if json {
        print_json(&r);
    } else {
        println!(
            "{} message(s) {}: due now (log index {})",
            r.messages,
            scope(domain),
            r.index
        );
    }
    Ok(())
}

/// `queue delete --domain D | --all [--dsn] --yes`: every message queued for D (or
/// all) deleted. Without `yes`, refuses (exit 2), saying how many it would delete.
pub async fn delete_queue(
    client: &mut Client,
    json: bool,
    domain: Option<&str>,
    dsn: bool,
    yes: bool,
) -> Result<()> {
    if !yes {
        let q = client
            .queue_summary(pb::QueueSummaryRequest {})
            .await?
            .into_inner();
        let count = match domain {
            Some(d) => q
                .domains
                .iter()
                .filter(|row| row.domain.eq_ignore_ascii_case(d.trim_end_matches('.')))
                .map(|row| row.queued + row.deferred)
                .sum(),
            None => q.messages,
        };
        return Err(Failure(
            format!(
                "this would delete {count} message(s) {}; add --yes to delete them",
                scope(domain)
            ),
            2,
        ));
    }
    let r = client
        .delete_queue(pb::DeleteQueueRequest {
            domain: domain.unwrap_or_default().to_string(),
            all: domain.is_none(),
            dsn,
        })
        .await?
        .into_inner();
    if json {
        print_json(&r);
    } else {
        println!(
            "{} message(s) {}: deleted{} (log index {})",
            r.messages,
            scope(domain),
            if dsn { ", senders notified" } else { "" },
            r.index
        );
    }
    Ok(())
}

/// `domain suspend`: hold delivery to the domain.
pub async fn suspend_domain(
    client: &mut Client,
    json: bool,
    domain: &str,
    reason: &str,
) -> Result<()> {
    let r = client
        .suspend_domain(pb::SuspendDomainRequest {
            domain: domain.to_string(),
            reason: reason.to_string(),
        })
        .await?
        .into_inner();
    report_change(
        json,
        &r,
        &format!("{domain}: suspended"),
        &format!("{domain}: was already suspended"),
    );
    Ok(())
}

/// `domain resume`: release a suspended domain.
pub async fn resume_domain(client: &mut Client, json: bool, domain: &str) -> Result<()> {
    let r = client
        .resume_domain(pb::DomainRequest {
            domain: domain.to_string(),
        })
        .await?
        .into_inner();
    report_change(
        json,
        &r,
        &format!("{domain}: resumed"),
        &format!("{domain}: was not suspended"),
    );
    Ok(())
}

/// `suppression add`: refuse the address at RCPT.
pub async fn add_suppression(
    client: &mut Client,
    json: bool,
    address: &str,
    reason: &str,
) -> Result<()> {
    let r = client
        .add_suppression(pb::AddSuppressionRequest {
            address: address.to_string(),
            reason: reason.to_string(),
            tenant: String::new(),
        })
        .await?
        .into_inner();
    report_change(
        json,
        &r,
        &format!("{address}: suppressed"),
        &format!("{address}: was already suppressed (reason updated)"),
    );
    Ok(())
}

/// `suppression remove`.
pub async fn remove_suppression(client: &mut Client, json: bool, address: &str) -> Result<()> {
    let r = client
        .remove_suppression(pb::AddressRequest {
            address: address.to_string(),
            tenant: String::new(),
        })
        .await?
        .into_inner();
    report_change(
        json,
        &r,
        &format!("{address}: removed from the suppression list"),
        &format!("{address}: was not on the list"),
    );
    Ok(())
}

/// `node add`: node `id`, reachable by its peers at `addr`.
pub async fn add_node(client: &mut Client, json: bool, id: u64, addr: &str) -> Result<()> {
    let r = client
        .add_node(pb::AddNodeRequest {
            id,
            addr: addr.to_string(),
        })
        .await?
        .into_inner();
    if json {
        print_json(&r);
    } else {
        println!("node {id} ({addr}) is a voter (leader {})", r.leader_id);
    }
    Ok(())
}

/// `node remove`: its domains move to the other nodes first.
pub async fn remove_node(client: &mut Client, json: bool, id: u64) -> Result<()> {
    let r = client
        .remove_node(pb::RemoveNodeRequest { id })
        .await?
        .into_inner();
    if json {
        print_json(&r);
    } else {
        println!(
            "node {id} removed; its domains moved (leader {})",
            r.leader_id
        );
    }
    Ok(())
}

/// `node scale-down --replicas N`: removes the members with ids above N, highest first.
pub async fn scale_down(client: &mut Client, json: bool, replicas: u64) -> Result<()> {
    let status = client.status(pb::StatusRequest {}).await?.into_inner();
    let mut doomed: Vec<u64> = status
        .members
        .iter()
        .map(|m| m.id)
        .filter(|id| *id > replicas)
        .collect();
    doomed.sort_unstable_by(|a, b| b.cmp(a));
    if doomed.is_empty() && !json {
        println!("no member above id {replicas}: nothing to remove");
    }
    for id in &doomed {
        if !json {
            println!(
                "removing node {id} (ordinal {}): moving its domains first",
                id - 1
            );
        }
        remove_node(client, json, *id).await?;
    }
    if json {
        print_json(&serde_json::json!({ "removed": doomed }));
    }
    Ok(())
}
