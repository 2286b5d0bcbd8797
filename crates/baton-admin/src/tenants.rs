//! Tenants over the admin API: `ListTenants`, `GetTenant`, `PauseTenant`,
//! `ResumeTenant`, and the tenant scope of the suppression RPCs (`AddSuppression`,
//! `RemoveSuppression` and `ListSuppressions` with a tenant).
//!
//! A tenant is what ingress names it: the AUTH user as configured, else the sender's
//! domain in lower case. Its record is made when its mail is first counted or an
//! operator pauses it; reads come from this node's applied state, changes go through
//! Raft like every other.

use crate::convert::{internal, valid_address, write_status};
use crate::pb::*;
use crate::server::AdminContext;
use baton_queue::types::{Request, TenantRecord};
use baton_reputation::tenant::Standing;
use tonic::Status;

/// The longest tenant name taken (an AUTH user or a domain).
const NAME_MAX: usize = 255;
/// The longest pause reason taken: it goes into a one-line SMTP reply (512 octets).
const REASON_MAX: usize = 300;

/// A tenant name as given: trimmed, not empty, one line.
pub(crate) fn valid_tenant(name: &str) -> Result<String, Status> {
    let t = name.trim();
    if t.is_empty() || t.chars().count() > NAME_MAX || t.contains(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{name:?} is not a tenant name (an AUTH user or a sender domain, one line, at most {NAME_MAX} characters)"
        )));
    }
    Ok(t.to_string())
}

/// A pause reason: one line, short enough for the SMTP reply it goes into.
fn valid_reason(reason: &str) -> Result<String, Status> {
    let r = reason.trim();
    if r.chars().count() > REASON_MAX || r.contains(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "the reason must be one line of at most {REASON_MAX} characters (it is told to the tenant's senders)"
        )));
    }
    Ok(r.to_string())
}

fn applied(ctx: &AdminContext) -> u64 {
    *ctx.queue.reader.shared.changed.borrow()
}

async fn change(ctx: &AdminContext, request: Request) -> Result<ChangeReply, Status> {
    let response = ctx
        .writer
        .write_applied(request)
        .await
        .map_err(write_status)?;
    Ok(ChangeReply {
        index: response.index,
        changed: response.changed,
    })
}

/// A tenant's record as the API shows it.
fn tenant_pb(ctx: &AdminContext, name: String, record: TenantRecord) -> Tenant {
    let totals = record.tenant.totals();
    let (standing, reason, paused_by) = match &record.tenant.standing {
        Standing::Good => ("good", String::new(), ""),
        Standing::Warned(r) => ("warned", r.to_string(), ""),
        Standing::Paused { reason, note } => (
            "paused",
            note.clone(),
            if reason.is_some() {
                "thresholds"
            } else {
                "operator"
            },
        ),
    };
    let held = ctx.queue.reader.shared.with(|i| i.held(&name)) as u64;
    Tenant {
        standing: standing.into(),
        reason,
        paused_by: paused_by.into(),
        since_unix_ms: record.since_ms,
        attempted: totals.attempted,
        hard_bounces: totals.hard,
        delivered: totals.delivered,
        complaints: totals.complaints,
        bounce_rate: totals.bounce_rate(),
        complaint_rate: totals.complaint_rate(),
        window_start_unix_ms: record.tenant.window_start_ms().unwrap_or(0),
        held,
        thresholds: record.thresholds.map(|t| TenantThresholds {
            bounce_warn_rate: t.bounce_warn_rate,
            bounce_pause_rate: t.bounce_pause_rate,
            bounce_min_volume: t.bounce_min_volume,
            complaint_warn_rate: t.complaint_warn_rate,
            complaint_pause_rate: t.complaint_pause_rate,
            complaint_min_volume: t.complaint_min_volume,
            window_seconds: t.window.as_secs(),
            max_recipients: t.max_recipients,
        }),
        name,
    }
}

pub(crate) fn list(ctx: &AdminContext) -> Result<ListTenantsReply, Status> {
    let applied = applied(ctx);
    let tenants = ctx
        .queue
        .reader
        .tenants()
        .map_err(internal)?
        .into_iter()
        .map(|(name, record)| tenant_pb(ctx, name, record))
        .collect();
    Ok(ListTenantsReply {
        applied_index: applied,
        tenants,
    })
}

fn unknown(name: &str) -> Status {
    Status::not_found(format!(
        "no tenant {name:?}: none of its mail was delivered or bounced and it was never paused (see `batonctl tenant list`)"
    ))
}

pub(crate) fn get(ctx: &AdminContext, req: TenantRequest) -> Result<TenantReply, Status> {
    let name = valid_tenant(&req.tenant)?;
    let applied = applied(ctx);
    let Some(record) = ctx.queue.reader.tenant(&name).map_err(internal)? else {
        return Err(unknown(&name));
    };
    Ok(TenantReply {
        applied_index: applied,
        tenant: Some(tenant_pb(ctx, name, record)),
    })
}

pub(crate) async fn pause(
    ctx: &AdminContext,
    req: PauseTenantRequest,
) -> Result<ChangeReply, Status> {
    let tenant = valid_tenant(&req.tenant)?;
    let reason = valid_reason(&req.reason)?;
    change(
        ctx,
        Request::PauseTenant {
            tenant,
            reason,
            now_ms: baton_queue::clock::now_ms(),
        },
    )
    .await
}

pub(crate) async fn resume(ctx: &AdminContext, req: TenantRequest) -> Result<ChangeReply, Status> {
    let tenant = valid_tenant(&req.tenant)?;
    if ctx
        .queue
        .reader
        .tenant(&tenant)
        .map_err(internal)?
        .is_none()
    {
        return Err(unknown(&tenant));
    }
    change(
        ctx,
        Request::ResumeTenant {
            tenant,
            now_ms: baton_queue::clock::now_ms(),
        },
    )
    .await
}

/// `AddSuppression` with a tenant: the address refused (550 5.7.1) and skipped for that
/// tenant's mail only.
pub(crate) async fn add_suppression(
    ctx: &AdminContext,
    req: AddSuppressionRequest,
) -> Result<ChangeReply, Status> {
    let tenant = valid_tenant(&req.tenant)?;
    let address = valid_address(&req.address)?;
    change(
        ctx,
        Request::SuppressForTenant {
            tenant,
            address,
            reason: req.reason,
            now_ms: baton_queue::clock::now_ms(),
        },
    )
    .await
}

/// `RemoveSuppression` with a tenant.
pub(crate) async fn remove_suppression(
    ctx: &AdminContext,
    req: AddressRequest,
) -> Result<ChangeReply, Status> {
    let tenant = valid_tenant(&req.tenant)?;
    let address = valid_address(&req.address)?;
    change(ctx, Request::UnsuppressForTenant { tenant, address }).await
}

/// The entries of every tenant's suppression list, by tenant, then address.
pub(crate) fn suppressions(ctx: &AdminContext) -> Result<Vec<Suppression>, Status> {
    Ok(ctx
        .queue
        .reader
        .tenant_suppressions()
        .map_err(internal)?
        .into_iter()
        .map(|(tenant, address, l)| Suppression {
            address,
            reason: l.reason,
            since_unix_ms: l.since_ms,
            tenant,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_reasons_are_one_line() {
        assert_eq!(valid_tenant("  app1 ").unwrap(), "app1");
        assert_eq!(valid_tenant("example.com").unwrap(), "example.com");
        for bad in ["", "  ", "a\nb", "a\rb", &"x".repeat(NAME_MAX + 1)] {
            let e = valid_tenant(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
        assert_eq!(valid_reason(" spam run ").unwrap(), "spam run");
        assert_eq!(valid_reason("").unwrap(), "");
        for bad in ["two\r\nlines", &"y".repeat(REASON_MAX + 1)] {
            assert_eq!(
                valid_reason(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
    }
}
