//! `site list|show|resume`: destination sites and their throttle.

use crate::change::report_change;
use crate::connect::Client;
use crate::failure::Result;
use crate::output::{or_dash, print_json, table, time};
use crate::pb;

/// A rate for people: "30/min", "0.25/min", "unlimited".
fn rate(r: Option<f64>) -> String {
    match r {
        None => "unlimited".into(),
        Some(m) if m >= 10.0 => format!("{m:.0}/min"),
        Some(m) => format!("{m:.2}/min"),
    }
}

fn connections(c: Option<u32>) -> String {
    c.map_or_else(|| "configured".into(), |c| c.to_string())
}

fn owner(n: u64) -> String {
    if n == 0 { "-".into() } else { n.to_string() }
}

/// `site list`.
pub async fn list(client: &mut Client, json: bool) -> Result<()> {
    let r = client
        .list_sites(pb::ListSitesRequest {})
        .await?
        .into_inner();
    if json {
        print_json(&r);
        return Ok(());
    }
    let rows = r
        .sites
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.state.clone(),
                rate(s.rate_per_minute),
                connections(s.connections),
                s.domains.len().to_string(),
                (s.queued + s.deferred).to_string(),
                owner(s.owner),
            ]
        })
        .collect();
    table(
        &[
            "SITE",
            "STATE",
            "RATE",
            "CONNECTIONS",
            "DOMAINS",
            "QUEUED",
            "OWNER",
        ],
        rows,
    );
    Ok(())
}

/// `site show SITE`.
pub async fn show(client: &mut Client, json: bool, name: &str) -> Result<()> {
    let s = client
        .get_site(pb::SiteRequest {
            name: name.to_string(),
        })
        .await?
        .into_inner();
    if json {
        print_json(&s);
        return Ok(());
    }
    println!("site         {}", s.name);
    println!("state        {}", s.state);
    if s.suspended_until_unix_ms != 0 {
        println!(
            "until        {} (then one probe message)",
            time(s.suspended_until_unix_ms)
        );
    }
    println!("rate         {}", rate(s.rate_per_minute));
    println!("connections  {}", connections(s.connections));
    println!("suspensions  {} in 24 h", s.suspensions_24h);
    let changed = if s.last_change_unix_ms == 0 {
        "-".to_string()
    } else {
        time(s.last_change_unix_ms)
    };
    println!("changed      {changed}");
    println!("owner        {}", owner(s.owner));
    println!(
        "queued       {} ({} deferred)",
        s.queued + s.deferred,
        s.deferred
    );
    println!("domains      {}", or_dash(&s.domains.join(", ")));
    Ok(())
}

/// `site resume SITE`.
pub async fn resume(client: &mut Client, json: bool, name: &str) -> Result<()> {
    let r = client
        .resume_site(pb::SiteRequest {
            name: name.to_string(),
        })
        .await?
        .into_inner();
    report_change(
        json,
        &r,
        &format!("{name}: resumed at its configured limits"),
        &format!("{name}: not changed"),
    );
    Ok(())
}
