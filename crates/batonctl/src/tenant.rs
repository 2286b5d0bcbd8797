//! Tenants: `tenant list`, `tenant show T`, `tenant pause T [--reason R]`, `tenant resume
//! T`, and the tenant scope of `suppression add|remove ADDR --tenant T`. Each prints the
//! reply as JSON with `--json`, else as text.

use crate::change::report_change;
use crate::connect::Client;
use crate::failure::Result;
use crate::output::{or_dash, print_json, table, time};
use crate::pb;

/// `0.125` as `12.5%`; `-` with nothing to divide by.
fn percent(rate: f64, of: u64) -> String {
    if of == 0 {
        return "-".into();
    }
    let p = format!("{:.2}", rate * 100.0);
    format!("{}%", p.trim_end_matches('0').trim_end_matches('.'))
}

/// The standing, with who paused it.
fn standing(t: &pb::Tenant) -> String {
    if t.paused_by.is_empty() {
        t.standing.clone()
    } else {
        format!("{} ({})", t.standing, t.paused_by)
    }
}

/// `tenant list`: one row per tenant.
pub async fn list(client: &mut Client, json: bool) -> Result<()> {
    let l = client
        .list_tenants(pb::ListTenantsRequest {})
        .await?
        .into_inner();
    if json {
        print_json(&l);
        return Ok(());
    }
    let rows = l
        .tenants
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                standing(t),
                t.attempted.to_string(),
                t.hard_bounces.to_string(),
                percent(t.bounce_rate, t.attempted),
                t.complaints.to_string(),
                percent(t.complaint_rate, t.delivered),
                t.held.to_string(),
                or_dash(&t.reason),
            ]
        })
        .collect();
    table(
        &[
            "TENANT",
            "STANDING",
            "ATTEMPTED",
            "HARD",
            "BOUNCE",
            "COMPLAINTS",
            "COMPLAINT",
            "HELD",
            "REASON",
        ],
        rows,
    );
    Ok(())
}

/// `tenant show T`: its standing, window, rates and the thresholds they are judged by.
pub async fn show(client: &mut Client, json: bool, tenant: &str) -> Result<()> {
    let r = client
        .get_tenant(pb::TenantRequest {
            tenant: tenant.to_string(),
        })
        .await?
        .into_inner();
    if json {
        print_json(&r);
        return Ok(());
    }
    let Some(t) = r.tenant else {
        return Ok(());
    };
    let mut rows = vec![
        vec!["tenant".to_string(), t.name.clone()],
        vec!["standing".to_string(), standing(&t)],
        vec!["reason".to_string(), or_dash(&t.reason)],
        vec!["since".to_string(), time(t.since_unix_ms)],
        vec!["window from".to_string(), time(t.window_start_unix_ms)],
        vec!["attempted".to_string(), t.attempted.to_string()],
        vec!["delivered".to_string(), t.delivered.to_string()],
        vec![
            "hard bounces".to_string(),
            format!(
                "{} ({})",
                t.hard_bounces,
                percent(t.bounce_rate, t.attempted)
            ),
        ],
        vec![
            "complaints".to_string(),
            format!(
                "{} ({})",
                t.complaints,
                percent(t.complaint_rate, t.delivered)
            ),
        ],
        vec!["held here".to_string(), t.held.to_string()],
    ];
    if let Some(th) = &t.thresholds {
        rows.push(vec![
            "bounce limits".to_string(),
            format!(
                "warn {}, pause {}, from {} attempted",
                percent(th.bounce_warn_rate, 1),
                percent(th.bounce_pause_rate, 1),
                th.bounce_min_volume
            ),
        ]);
        rows.push(vec![
            "complaint limits".to_string(),
            format!(
                "warn {}, pause {}, from {} delivered",
                percent(th.complaint_warn_rate, 1),
                percent(th.complaint_pause_rate, 1),
                th.complaint_min_volume
            ),
        ]);
        rows.push(vec![
            "window".to_string(),
            format!(
                "{}, at most {} recipients",
                humantime::format_duration(std::time::Duration::from_secs(th.window_seconds)),
                th.max_recipients
            ),
        ]);
    }
    table(&["FIELD", "VALUE"], rows);
    println!("(applied index {})", r.applied_index);
    Ok(())
}

/// `tenant pause T [--reason R]`.
pub async fn pause(client: &mut Client, json: bool, tenant: &str, reason: &str) -> Result<()> {
    let r = client
        .pause_tenant(pb::PauseTenantRequest {
            tenant: tenant.to_string(),
            reason: reason.to_string(),
        })
        .await?
        .into_inner();
    report_change(
        json,
        &r,
        &format!("tenant {tenant}: paused (MAIL gets 450 4.7.1, queued mail held)"),
        &format!("tenant {tenant}: was already paused (its reason kept)"),
    );
    Ok(())
}

/// `tenant resume T`.
pub async fn resume(client: &mut Client, json: bool, tenant: &str) -> Result<()> {
    let r = client
        .resume_tenant(pb::TenantRequest {
            tenant: tenant.to_string(),
        })
        .await?
        .into_inner();
    report_change(
        json,
        &r,
        &format!("tenant {tenant}: resumed, a fresh window starts and its held mail goes"),
        &format!("tenant {tenant}: was not paused"),
    );
    Ok(())
}

/// `suppression add ADDR --tenant T [--reason R]`.
pub async fn add_suppression(
    client: &mut Client,
    json: bool,
    address: &str,
    tenant: &str,
    reason: &str,
) -> Result<()> {
    let r = client
        .add_suppression(pb::AddSuppressionRequest {
            address: address.to_string(),
            reason: reason.to_string(),
            tenant: tenant.to_string(),
        })
        .await?
        .into_inner();
    report_change(
        json,
        &r,
        &format!("{address}: suppressed for tenant {tenant}"),
        &format!("{address}: was already suppressed for tenant {tenant} (reason updated)"),
    );
    Ok(())
}

/// `suppression remove ADDR --tenant T`.
pub async fn remove_suppression(
    client: &mut Client,
    json: bool,
    address: &str,
    tenant: &str,
) -> Result<()> {
    let r = client
        .remove_suppression(pb::AddressRequest {
            address: address.to_string(),
            tenant: tenant.to_string(),
        })
        .await?
        .into_inner();
    report_change(
        json,
        &r,
        &format!("{address}: removed from tenant {tenant}'s suppression list"),
        &format!("{address}: was not on tenant {tenant}'s list"),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percent;

    #[test]
    fn rates_read_as_percentages() {
        assert_eq!(percent(0.125, 1000), "12.5%");
        assert_eq!(percent(0.1, 10), "10%");
        assert_eq!(percent(0.005, 1000), "0.5%");
        assert_eq!(percent(0.0, 3), "0%");
        assert_eq!(percent(0.0, 0), "-");
    }
}
