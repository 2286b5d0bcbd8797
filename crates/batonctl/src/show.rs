//! The read commands: `status`, `queue`, `messages`, `message show`, `suppression list`.
//! Each prints the reply as JSON with `--json`, else as text and tables.

use crate::connect::Client;
use crate::failure::Result;
use crate::output::{age, or_dash, print_json, table, time};
use crate::pb;

/// `status`: this node's Raft view, then one row per member.
pub async fn status(client: &mut Client, json: bool) -> Result<()> {
    let s = client.status(pb::StatusRequest {}).await?.into_inner();
    if json {
        print_json(&s);
        return Ok(());
    }
    println!(
        "node {} ({}), leader {}, term {}, commit {}, applied {}",
        s.node_id,
        s.role,
        if s.leader_id == 0 {
            "none".into()
        } else {
            s.leader_id.to_string()
        },
        s.term,
        s.commit_index,
        s.applied_index
    );
    println!(
        "ownership epoch {} ({}), this node's lease {:.1}s",
        s.ownership_epoch,
        if s.ownership_settled {
            "settled"
        } else {
            "settling"
        },
        s.lease_remaining_seconds
    );
    let rows = s
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.addr.clone(),
                format!("{}{}", m.role, if m.leader { " (leader)" } else { "" }),
                known(m.matched_index),
                known(m.lag),
                if m.owner { "yes" } else { "no" }.into(),
                m.lease_renewal_index.to_string(),
                m.owned_domains.len().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "ADDR",
            "ROLE",
            "MATCHED",
            "LAG",
            "OWNER",
            "RENEWED AT",
            "DOMAINS",
        ],
        rows,
    );
    if s.members.iter().any(|m| m.matched_index.is_none()) {
        println!(
            "(MATCHED and LAG are the leader's view: unknown when it could not be asked, or has not heard from the member since it became leader)"
        );
    }
    Ok(())
}

/// A number from the leader's view, or `unknown`.
fn known(n: Option<u64>) -> String {
    n.map_or_else(|| "unknown".into(), |n| n.to_string())
}

/// `queue`: one row per domain, then the suspended domains if any.
pub async fn queue(client: &mut Client, json: bool) -> Result<()> {
    let q = client
        .queue_summary(pb::QueueSummaryRequest {})
        .await?
        .into_inner();
    if json {
        print_json(&q);
        return Ok(());
    }
    println!(
        "{} messages queued (applied index {})",
        q.messages, q.applied_index
    );
    let rows = q
        .domains
        .iter()
        .map(|d| {
            vec![
                d.domain.clone(),
                d.queued.to_string(),
                d.deferred.to_string(),
                d.in_flight.to_string(),
                age(d.oldest_age_seconds),
                or_dash(&d.site),
                d.throttle.clone(),
                if d.owner == 0 {
                    "-".into()
                } else {
                    d.owner.to_string()
                },
            ]
        })
        .collect();
    table(
        &[
            "DOMAIN",
            "QUEUED",
            "DEFERRED",
            "IN FLIGHT",
            "OLDEST",
            "SITE",
            "THROTTLE",
            "OWNER",
        ],
        rows,
    );
    if !q.suspended.is_empty() {
        println!();
        let rows = q
            .suspended
            .iter()
            .map(|s| vec![s.domain.clone(), time(s.since_unix_ms), or_dash(&s.reason)])
            .collect();
        table(&["SUSPENDED", "SINCE", "REASON"], rows);
    }
    Ok(())
}

/// `messages`: the queued messages (filtered by `domain` and `state` when not empty),
/// fetched page by page until `limit` or the end.
pub async fn messages(
    client: &mut Client,
    json: bool,
    domain: &str,
    state: &str,
    limit: usize,
) -> Result<()> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_messages(pb::ListMessagesRequest {
                domain: domain.to_string(),
                state: state.to_string(),
                page_size: (limit - all.len()).clamp(1, 1000) as u32,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        all.extend(page.messages);
        token = page.next_page_token;
        if token.is_empty() || all.len() >= limit {
            break;
        }
    }
    if json {
        print_json(&all);
        return Ok(());
    }
    let rows = all
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                m.domain.clone(),
                m.state.clone(),
                m.attempts.to_string(),
                time(m.next_attempt_unix_ms),
                or_dash(&m.sender),
                m.recipients.join(","),
                or_dash(&m.last_reply),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "DOMAIN",
            "STATE",
            "ATTEMPTS",
            "NEXT ATTEMPT",
            "SENDER",
            "RECIPIENTS",
            "LAST REPLY",
        ],
        rows,
    );
    Ok(())
}

/// `message show`: the envelope, one row per recipient, then the headers, or with `body`
/// the whole message.
pub async fn message(client: &mut Client, json: bool, id: &str, body: bool) -> Result<()> {
    let m = client
        .get_message(pb::GetMessageRequest {
            id: id.to_string(),
            include_body: body,
        })
        .await?
        .into_inner();
    if json {
        print_json(&m);
        return Ok(());
    }
    println!("message   {}", m.id);
    println!(
        "sender    {}",
        if m.sender.is_empty() { "<>" } else { &m.sender }
    );
    println!("received  {}", time(m.received_unix_ms));
    println!("size      {} bytes", m.size);
    println!();
    let rows = m
        .recipients
        .iter()
        .map(|r| {
            vec![
                r.address.clone(),
                r.state.clone(),
                r.attempts.to_string(),
                time(r.next_attempt_unix_ms),
                or_dash(&r.last_reply),
            ]
        })
        .collect();
    table(
        &[
            "RECIPIENT",
            "STATE",
            "ATTEMPTS",
            "NEXT ATTEMPT",
            "LAST REPLY",
        ],
        rows,
    );
    println!();
    print!("{}", message_text(&m, body));
    Ok(())
}

/// What `message show` prints after the recipients: the header fields (unfolded), or
/// with `body` the message as stored, header section included, once.
fn message_text(m: &pb::Message, body: bool) -> String {
    if body {
        let mut text = String::from_utf8_lossy(&m.body).into_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        return text;
    }
    m.headers
        .iter()
        .map(|h| format!("{}: {}\n", h.name, h.value))
        .collect()
}

/// `suppression list`: every suppressed address, for everyone's mail (scope `global`) or
/// one tenant's.
pub async fn suppressions(client: &mut Client, json: bool) -> Result<()> {
    let l = client
        .list_suppressions(pb::ListSuppressionsRequest {})
        .await?
        .into_inner();
    if json {
        print_json(&l);
        return Ok(());
    }
    let rows = l
        .entries
        .iter()
        .map(|e| {
            let scope = if e.tenant.is_empty() {
                "global".to_string()
            } else {
                format!("tenant {}", e.tenant)
            };
            vec![
                e.address.clone(),
                scope,
                time(e.since_unix_ms),
                or_dash(&e.reason),
            ]
        })
        .collect();
    table(&["ADDRESS", "SCOPE", "SINCE", "REASON"], rows);
    Ok(())
}

pub async fn classify(client: &mut Client, json: bool, reply: &str) -> Result<()> {
    let v = client
        .classify(pb::ClassifyRequest {
            reply: reply.to_string(),
        })
        .await?
        .into_inner();
    if json {
        print_json(&v);
        return Ok(());
    }
    let mut rows = vec![
        vec!["category".to_string(), v.category.clone()],
        vec!["scope".to_string(), v.scope.clone()],
        vec!["rule".to_string(), v.rule.clone()],
    ];
    if let Some(f) = v.factor {
        rows.push(vec!["factor".to_string(), f.to_string()]);
    }
    if let Some(s) = v.suspend_seconds {
        rows.push(vec!["suspend".to_string(), format!("{s}s")]);
    }
    rows.push(vec!["reply".to_string(), v.normalized.clone()]);
    table(&["", ""], rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::message_text;
    use crate::pb;

    #[test]
    fn the_message_is_printed_once() {
        let m = pb::Message {
            headers: vec![pb::Header {
                name: "Subject".into(),
                value: "hi there".into(),
            }],
            body: b"Subject: hi\r\n there\r\n\r\nhello\r\n".to_vec(),
            ..Default::default()
        };
        assert_eq!(message_text(&m, false), "Subject: hi there\n");
        let text = message_text(&m, true);
        assert_eq!(text, "Subject: hi\r\n there\r\n\r\nhello\r\n");
        assert_eq!(text.matches("Subject:").count(), 1);
        let m = pb::Message {
            body: b"Subject: x\r\n\r\nno newline at the end".to_vec(),
            ..Default::default()
        };
        assert!(message_text(&m, true).ends_with("the end\n"));
    }
}
