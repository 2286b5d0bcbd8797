//! `batonctl`: Baton's admin CLI, a client of the admin gRPC API (proto/admin.proto).
//! Human-readable tables by default, `--json` for scripts (one JSON document per reply;
//! one per line for event streams). Exit codes: 0 done, 1 the call failed, 2 the input
//! is wrong (bad arguments or values, an unusable `--server`, `--token` or `--ca-cert`,
//! an empty password, `queue delete` without `--yes`).
//!
//! This crate owns the command line only; the API it speaks is the generated client in
//! `baton-admin-proto`, so it builds without the node (no Raft, no queue, no delivery).
//!
//! - `main.rs` — the arguments, and dispatch to the modules below;
//! - [`connect`] — the `--server` list, TLS (`--ca-cert`), the bearer token;
//! - [`show`] — the read commands (status, queue, messages, message show, suppressions);
//! - [`change`] — the commands that change the cluster (`queue retry|delete` among them);
//! - [`events`] — the event log, listed or followed across servers;
//! - [`site`] — destination sites and their throttle;
//! - [`tenant`] — `tenant list|show|pause|resume` and tenant-scoped suppressions;
//! - [`output`] — tables, JSON and time formats;
//! - [`password`] — `hash-password`, which needs no server;
//! - [`failure`] — the message and exit code of a failed command.
#![forbid(unsafe_code)]

mod change;
mod connect;
mod events;
mod failure;
mod output;
mod password;
mod show;
mod site;
mod tenant;

use baton_admin_proto as pb;
use clap::{Parser, Subcommand, ValueEnum};
use connect::Target;
use failure::{Failure, Result};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "batonctl", version, about = "Baton admin CLI")]
struct Args {
    /// Admin API address(es); with several (comma-separated), the first that answers is
    /// used, and `events --follow` moves to the next one if its server goes away.
    #[arg(
        long,
        env = "BATON_SERVER",
        default_value = "http://127.0.0.1:7401",
        global = true
    )]
    server: String,
    /// Bearer token (`admin.token` of the server).
    #[arg(long, env = "BATON_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// PEM CA certificate to trust for an https:// server (else the webpki roots).
    #[arg(long, env = "BATON_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Cluster members, roles, leader, term, commit/applied index, lag, leases.
    Status,
    /// Per-domain queue: queued, deferred, in flight, oldest age, suspension, owner;
    /// `queue retry` and `queue delete` act on every message for a domain (or all).
    Queue {
        #[command(subcommand)]
        action: Option<QueueCmd>,
    },
    /// List queued messages.
    Messages {
        /// Only this destination domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages in this state (held: never tried again until an operator retries
        /// or deletes it).
        #[arg(long, value_enum)]
        state: Option<State>,
        /// At most this many (all pages are fetched up to it).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One message: show, retry now, delete.
    #[command(subcommand)]
    Message(MessageCmd),
    /// Suspend or resume delivery to a domain.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// The suppression list.
    #[command(subcommand)]
    Suppression(SuppressionCmd),
    /// Add or remove a cluster node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Destination sites (a domain's MX host set, or a [[shaping.site]]): their
    /// throttle, suspension, domains and owner.
    #[command(subcommand)]
    Site(SiteCmd),
    /// Delivery events (received, delivered, deferred, bounced, expired, suppressed,
    /// deleted).
    Events {
        /// Keep following new events.
        #[arg(long, short)]
        follow: bool,
        /// Start after this position (0: the oldest kept).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only this message.
        #[arg(long)]
        message: Option<String>,
        /// Only this recipient domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only these kinds (repeatable).
        #[arg(long = "kind", value_enum)]
        kinds: Vec<Kind>,
    },
    /// What a remote reply means: its category, scope and the rule that matched, by the
    /// node's live rules.
    Classify {
        /// The reply text, e.g. "550 5.1.1 <a@b>: no such user" (quote it).
        reply: String,
    },
    /// Hash a password for `[[smtp.user]] password_hash` (argon2id). Reads the password
    /// from standard input (one line), or prompts on a terminal.
    HashPassword,
    /// Tenants (the AUTH user, else the sender's domain): standing, bounce and complaint
    /// rates; pause and resume.
    #[command(subcommand)]
    Tenant(TenantCmd),
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Every tenant: standing, window counts and rates, held deliveries, reason.
    List,
    /// One tenant: standing and why, its window, rates and thresholds.
    Show { tenant: String },
    /// Refuse its mail at MAIL (450 4.7.1) and hold its queued mail.
    Pause {
        tenant: String,
        /// Told to its senders in the 450.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a pause: a fresh window starts and its held mail goes out.
    Resume { tenant: String },
}

/// `messages --state`: the states of admin.proto's `ListMessagesRequest.state`.
#[derive(Clone, Copy, ValueEnum)]
enum State {
    Queued,
    Deferred,
    Held,
}

/// `events --kind`: the kinds of admin.proto's `Event.kind` (tests/admin.rs checks that
/// every kind the queue records is accepted here).
#[derive(Clone, Copy, ValueEnum)]
#[value(rename_all = "snake_case")]
enum Kind {
    Received,
    Delivered,
    Deferred,
    Bounced,
    Expired,
    Suppressed,
    Deleted,
    Throttled,
    ThrottleRelaxed,
    SiteSuspended,
    SiteProbe,
    SiteResumed,
    TenantWarning,
    TenantPaused,
    TenantResumed,
    BouncedAsync,
    Complaint,
}

/// The name a value has on the command line, which is the name the API uses.
fn name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

#[derive(Subcommand)]
enum QueueCmd {
    /// Make every queued message for a domain (its delivery there), or every queued
    /// message, due now. Prints how many.
    Retry {
        #[command(flatten)]
        which: Which,
    },
    /// Delete every queued message for a domain (its recipients there; those in other
    /// domains stay queued), or every queued message. Prints how many.
    Delete {
        #[command(flatten)]
        which: Which,
        /// Send each sender a bounce (DSN) for the recipients deleted.
        #[arg(long)]
        dsn: bool,
        /// Delete without asking: without it, only say how many would go.
        #[arg(long)]
        yes: bool,
    },
}

/// `--domain D | --all`: exactly one.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct Which {
    /// The messages queued for this destination domain.
    #[arg(long)]
    domain: Option<String>,
    /// Every queued message.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
enum MessageCmd {
    /// Envelope, per-recipient state, attempts, last replies, headers.
    Show {
        id: String,
        /// Also print the body.
        #[arg(long)]
        body: bool,
    },
    /// Make every open delivery of the message due now.
    Retry { id: String },
    /// Remove the message from the queue.
    Delete {
        id: String,
        /// Send the sender a bounce (DSN) for the recipients still open.
        #[arg(long)]
        dsn: bool,
    },
}

#[derive(Subcommand)]
enum DomainCmd {
    /// Hold delivery to the domain (mail is still accepted and queued).
    Suspend {
        domain: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Release a suspended domain.
    Resume { domain: String },
}

#[derive(Subcommand)]
enum SuppressionCmd {
    /// Every suppressed address.
    List,
    /// Refuse the address at RCPT (550 5.1.1) and skip it in queued mail.
    Add {
        address: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// For this tenant's mail only (550 5.7.1 at RCPT).
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        tenant: Option<String>,
    },
    Remove {
        address: String,
        /// The tenant's entry, not the global one.
        #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        tenant: Option<String>,
    },
}

#[derive(Subcommand)]
enum SiteCmd {
    /// Every known site: state, rate, connections, domains, queued, owner.
    List,
    /// One site in full.
    Show { site: String },
    /// End the site's throttle or suspension: back to its configured limits.
    Resume { site: String },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Add node ID, reachable by peers at ADDR (its cluster.advertise). It joins as a
    /// learner and becomes a voter once caught up.
    Add { id: u64, addr: String },
    /// Remove node ID: its domains move to the other nodes first.
    Remove { id: u64 },
    /// Shrink a StatefulSet's cluster to REPLICAS pods: remove every member whose id is
    /// above REPLICAS (ordinals REPLICAS and up; ids are ordinals + 1), highest first,
    /// each after its domains moved. Nothing to remove: done.
    ScaleDown {
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        replicas: u64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.command {
        Command::HashPassword => return password::hash_password(),
        _ => run(&args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message, code)) => {
            eprintln!("batonctl: {message}");
            ExitCode::from(code)
        }
    }
}

/// Connects to the first server that answers, then runs the command there.
async fn run(args: &Args) -> Result<()> {
    let target = Target {
        servers: &args.server,
        token: args.token.as_deref(),
        ca_cert: args.ca_cert.as_deref(),
    };
    let (mut client, server) = target.connect(0).await?;
    let c = &mut client;
    let json = args.json;
    match &args.command {
        Command::HashPassword => unreachable!("handled before connecting"),
        Command::Status => show::status(c, json).await,
        Command::Queue { action: None } => show::queue(c, json).await,
        Command::Queue {
            action: Some(QueueCmd::Retry { which }),
        } => change::retry_queue(c, json, which.domain.as_deref()).await,
        Command::Queue {
            action: Some(QueueCmd::Delete { which, dsn, yes }),
        } => change::delete_queue(c, json, which.domain.as_deref(), *dsn, *yes).await,
        Command::Messages {
            domain,
            state,
            limit,
        } => {
            let domain = domain.as_deref().unwrap_or_default();
            let state = state.map(name).unwrap_or_default();
            show::messages(c, json, domain, &state, *limit).await
        }
        Command::Message(MessageCmd::Show { id, body }) => show::message(c, json, id, *body).await,
        Command::Message(MessageCmd::Retry { id }) => change::retry_message(c, json, id).await,
        Command::Message(MessageCmd::Delete { id, dsn }) => {
            change::delete_message(c, json, id, *dsn).await
        }
        Command::Domain(DomainCmd::Suspend { domain, reason }) => {
            change::suspend_domain(c, json, domain, reason).await
        }
        Command::Domain(DomainCmd::Resume { domain }) => {
            change::resume_domain(c, json, domain).await
        }
        Command::Suppression(SuppressionCmd::List) => show::suppressions(c, json).await,
        Command::Classify { reply } => show::classify(c, json, reply).await,
        Command::Suppression(SuppressionCmd::Add {
            address,
            reason,
            tenant: None,
        }) => change::add_suppression(c, json, address, reason).await,
        Command::Suppression(SuppressionCmd::Remove {
            address,
            tenant: None,
        }) => change::remove_suppression(c, json, address).await,
        Command::Suppression(SuppressionCmd::Add {
            address,
            reason,
            tenant: Some(t),
        }) => tenant::add_suppression(c, json, address, t, reason).await,
        Command::Suppression(SuppressionCmd::Remove {
            address,
            tenant: Some(t),
        }) => tenant::remove_suppression(c, json, address, t).await,
        Command::Tenant(TenantCmd::List) => tenant::list(c, json).await,
        Command::Tenant(TenantCmd::Show { tenant: t }) => tenant::show(c, json, t).await,
        Command::Tenant(TenantCmd::Pause { tenant: t, reason }) => {
            tenant::pause(c, json, t, reason).await
        }
        Command::Tenant(TenantCmd::Resume { tenant: t }) => tenant::resume(c, json, t).await,
        Command::Node(NodeCmd::Add { id, addr }) => change::add_node(c, json, *id, addr).await,
        Command::Node(NodeCmd::Remove { id }) => change::remove_node(c, json, *id).await,
        Command::Node(NodeCmd::ScaleDown { replicas }) => {
            change::scale_down(c, json, *replicas).await
        }
        Command::Site(SiteCmd::List) => site::list(c, json).await,
        Command::Site(SiteCmd::Show { site }) => site::show(c, json, site).await,
        Command::Site(SiteCmd::Resume { site }) => site::resume(c, json, site).await,
        Command::Events {
            follow,
            after,
            message,
            domain,
            kinds,
        } => {
            let request = pb::StreamEventsRequest {
                after: *after,
                follow: *follow,
                message_id: message.clone().unwrap_or_default(),
                domain: domain.clone().unwrap_or_default(),
                kinds: kinds.iter().copied().map(name).collect(),
            };
            events::run(&target, json, client, server, request).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("batonctl").chain(args.iter().copied()))
    }

    #[test]
    fn fixed_value_sets_are_checked_here_as_usage_errors() {
        for args in [
            &["messages", "--state", "bogus"][..],
            &["events", "--kind", "bogus"],
            &["events", "--kind", "delivered", "--kind", "Delivered"],
        ] {
            let Err(e) = parse(args) else {
                panic!("{args:?} parsed");
            };
            assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{args:?}");
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
        let e = parse(&["messages", "--state", "bogus"])
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("queued")
                && e.contains("deferred")
                && e.contains("held")),
            "{e:?}"
        );
    }

    #[test]
    fn queue_actions_take_a_domain_or_all() {
        assert!(matches!(
            parse(&["queue"]),
            Ok(Args {
                command: Command::Queue { action: None },
                ..
            })
        ));
        let Ok(Args {
            command:
                Command::Queue {
                    action: Some(QueueCmd::Delete { which, dsn, yes }),
                },
            ..
        }) = parse(&[
            "queue",
            "delete",
            "--domain",
            "example.com",
            "--dsn",
            "--yes",
        ])
        else {
            panic!("queue delete --domain --dsn --yes");
        };
        assert_eq!(
            (which.domain.as_deref(), which.all, dsn, yes),
            (Some("example.com"), false, true, true)
        );
        for args in [
            &["queue", "retry"][..],
            &["queue", "retry", "--domain", "a.test", "--all"],
            &["queue", "delete", "--yes"],
            &["queue", "retry", "--dsn", "--all"],
        ] {
            let e = parse(args).err();
            assert_eq!(e.map(|e| e.exit_code()), Some(2), "{args:?}");
        }
    }

    #[test]
    fn tenant_commands_and_tenant_scoped_suppressions_parse() {
        let Ok(Args {
            command: Command::Tenant(TenantCmd::Pause { tenant, reason }),
            ..
        }) = parse(&["tenant", "pause", "app1", "--reason", "spam run"])
        else {
            panic!("tenant pause");
        };
        assert_eq!((tenant.as_str(), reason.as_str()), ("app1", "spam run"));
        let Ok(Args {
            command:
                Command::Suppression(SuppressionCmd::Add {
                    tenant: Some(t), ..
                }),
            ..
        }) = parse(&["suppression", "add", "a@b.test", "--tenant", "app1"])
        else {
            panic!("suppression add --tenant");
        };
        assert_eq!(t, "app1");
        // An empty tenant would mean the global list: refused as a usage error.
        for args in [
            &["suppression", "add", "a@b.test", "--tenant", ""][..],
            &["suppression", "remove", "a@b.test", "--tenant", ""],
            &["tenant", "show"],
            &["tenant", "bogus"],
        ] {
            let e = parse(args).err();
            assert_eq!(e.map(|e| e.exit_code()), Some(2), "{args:?}");
        }
    }

    #[test]
    fn values_reach_the_api_by_their_names() {
        let Ok(Args {
            command: Command::Messages { state, .. },
            ..
        }) = parse(&["messages", "--state", "held"])
        else {
            panic!("messages --state held");
        };
        assert_eq!(state.map(name).as_deref(), Some("held"));
        let Ok(Args {
            command: Command::Events { kinds, .. },
            ..
        }) = parse(&["events", "--kind", "delivered", "--kind", "deleted"])
        else {
            panic!("events --kind");
        };
        let kinds: Vec<String> = kinds.into_iter().map(name).collect();
        assert_eq!(kinds, ["delivered", "deleted"]);
    }
}
