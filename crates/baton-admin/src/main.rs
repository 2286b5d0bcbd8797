//! `batonctl`: Baton's admin CLI, a client of the admin gRPC API (proto/admin.proto).
//! Human-readable tables by default, `--json` for scripts (one JSON document per reply;
//! one per line for event streams).

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
use baton_admin::pb;
use baton_admin::pb::admin_client::AdminClient;
use clap::{Parser, Subcommand};
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

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
    /// Per-domain queue: queued, deferred, in flight, oldest age, suspension, owner.
    Queue,
    /// List queued messages.
    Messages {
        /// Only this destination domain.
        #[arg(long)]
        domain: Option<String>,
        /// queued or deferred.
        #[arg(long)]
        state: Option<String>,
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
        #[arg(long = "kind")]
        kinds: Vec<String>,
    },
    /// Hash a password for `[[smtp.user]] password_hash` (argon2id). Reads the password
    /// from standard input (one line), or prompts on a terminal.
    HashPassword,
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
    },
    Remove {
        address: String,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Add node ID, reachable by peers at ADDR (its cluster.advertise). It joins as a
    /// learner and becomes a voter once caught up.
    Add { id: u64, addr: String },
    /// Remove node ID: its domains move to the other nodes first.
    Remove { id: u64 },
}

/// A failure to report: the message, and the exit code.
struct Failure(String, u8);

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        use tonic::Code;
        let text = match s.code() {
            Code::Unauthenticated => format!(
                "the server refused the call: {} (set --token or BATON_TOKEN to the server's admin.token)",
                s.message()
            ),
            Code::NotFound => s.message().to_string(),
            Code::InvalidArgument => format!("bad request: {}", s.message()),
            Code::Unavailable => format!("unavailable: {}", s.message()),
            code => format!("{}: {}", code.description(), s.message()),
        };
        Failure(text, 1)
    }
}

type Result<T> = std::result::Result<T, Failure>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.command {
        Command::HashPassword => return hash_password(),
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

fn servers(args: &Args) -> Vec<String> {
    args.server
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.contains("://") {
                s.to_string()
            } else {
                format!("http://{s}")
            }
        })
        .collect()
}

/// Adds `authorization: Bearer <token>` to every call when a token is given.
#[derive(Clone)]
struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(a) = &self.0 {
            req.metadata_mut().insert("authorization", a.clone());
        }
        Ok(req)
    }
}

type Client = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Auth>>;

/// Connects to the first server that answers, starting at `start`; returns the client
/// and the index of the server used.
async fn connect(args: &Args, start: usize) -> Result<(Client, usize)> {
    let list = servers(args);
    if list.is_empty() {
        return Err(Failure("--server is empty".into(), 2));
    }
    let auth = match &args.token {
        Some(t) if !t.is_empty() => Some(
            MetadataValue::try_from(format!("Bearer {t}"))
                .map_err(|_| Failure("the token has characters a header cannot carry".into(), 2))?,
        ),
        _ => None,
    };
    let mut errors = Vec::new();
    for k in 0..list.len() {
        let i = (start + k) % list.len();
        let url = &list[i];
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Failure(format!("bad --server {url}: {e}"), 2))?
            .connect_timeout(Duration::from_secs(3));
        if url.starts_with("https://") {
            let tls = match &args.ca_cert {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .map_err(|e| Failure(format!("--ca-cert {}: {e}", path.display()), 2))?;
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                }
                None => tonic::transport::ClientTlsConfig::new().with_webpki_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Failure(format!("TLS for {url}: {e}"), 2))?;
        }
        match endpoint.connect().await {
            Ok(channel) => {
                let client = AdminClient::with_interceptor(channel, Auth(auth.clone()))
                    .max_decoding_message_size(64 * 1024 * 1024);
                return Ok((client, i));
            }
            Err(e) => {
                let cause = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string());
                errors.push(format!("{url}: {cause}"));
            }
        }
    }
    Err(Failure(
        format!(
            "cannot reach the admin API ({}); is batond running, and is --server right?",
            errors.join("; ")
        ),
        1,
    ))
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("batonctl: cannot print JSON: {e}"),
    }
}

/// Prints rows as aligned columns under a header.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut out = String::new();
        for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                out.push_str(&cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn age(seconds: f64) -> String {
    humantime::format_duration(Duration::from_secs(seconds.max(0.0) as u64)).to_string()
}

fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Reports a change: the reply as JSON, or `what` (or `unchanged` when the change found
/// nothing to do) with the log index.
fn report_change(json: bool, r: &pb::ChangeReply, what: &str, unchanged: &str) {
    if json {
        print_json(r);
    } else if r.changed {
        println!("{what} (log index {})", r.index);
    } else {
        println!("{unchanged} (log index {})", r.index);
    }
}

async fn run(args: &Args) -> Result<()> {
    let (mut client, server) = connect(args, 0).await?;
    match &args.command {
        Command::HashPassword => unreachable!("handled before connecting"),
        Command::Status => {
            let s = client.status(pb::StatusRequest {}).await?.into_inner();
            if args.json {
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
                        if m.lag_known {
                            m.matched_index.to_string()
                        } else {
                            "-".into()
                        },
                        if m.lag_known {
                            m.lag.to_string()
                        } else {
                            "-".into()
                        },
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
            if s.members.iter().any(|m| !m.lag_known) {
                println!(
                    "(MATCHED and LAG are the leader's view; \"-\" when it could not be asked)"
                );
            }
        }
        Command::Queue => {
            let q = client
                .queue_summary(pb::QueueSummaryRequest {})
                .await?
                .into_inner();
            if args.json {
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
        }
        Command::Messages {
            domain,
            state,
            limit,
        } => {
            let mut all = Vec::new();
            let mut token = String::new();
            loop {
                let page = client
                    .list_messages(pb::ListMessagesRequest {
                        domain: domain.clone().unwrap_or_default(),
                        state: state.clone().unwrap_or_default(),
                        page_size: (*limit - all.len()).clamp(1, 1000) as u32,
                        page_token: token.clone(),
                    })
                    .await?
                    .into_inner();
                all.extend(page.messages);
                token = page.next_page_token;
                if token.is_empty() || all.len() >= *limit {
                    break;
                }
            }
            if args.json {
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
        }
        Command::Message(MessageCmd::Show { id, body }) => {
            let m = client
                .get_message(pb::GetMessageRequest {
                    id: id.clone(),
                    include_body: *body,
                })
                .await?
                .into_inner();
            if args.json {
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
            for h in &m.headers {
                println!("{}: {}", h.name, h.value);
            }
            if *body {
                println!();
                print!("{}", String::from_utf8_lossy(&m.body));
            }
        }
        Command::Message(MessageCmd::Retry { id }) => {
            let r = client
                .retry_message(pb::MessageRequest { id: id.clone() })
                .await?
                .into_inner();
            report_change(
                args.json,
                &r,
                &format!("message {id}: due now"),
                &format!("message {id}: nothing open to retry"),
            );
        }
        Command::Message(MessageCmd::Delete { id, dsn }) => {
            let r = client
                .delete_message(pb::DeleteMessageRequest {
                    id: id.clone(),
                    dsn: *dsn,
                })
                .await?
                .into_inner();
            let what = if *dsn {
                format!("message {id}: deleted, sender notified")
            } else {
                format!("message {id}: deleted")
            };
            report_change(args.json, &r, &what, &format!("message {id}: already gone"));
        }
        Command::Domain(DomainCmd::Suspend { domain, reason }) => {
            let r = client
                .suspend_domain(pb::SuspendDomainRequest {
                    domain: domain.clone(),
                    reason: reason.clone(),
                })
                .await?
                .into_inner();
            report_change(
                args.json,
                &r,
                &format!("{domain}: suspended"),
                &format!("{domain}: was already suspended"),
            );
        }
        Command::Domain(DomainCmd::Resume { domain }) => {
            let r = client
                .resume_domain(pb::DomainRequest {
                    domain: domain.clone(),
                })
                .await?
                .into_inner();
            report_change(
                args.json,
                &r,
                &format!("{domain}: resumed"),
                &format!("{domain}: was not suspended"),
            );
        }
        Command::Suppression(SuppressionCmd::List) => {
            let l = client
                .list_suppressions(pb::ListSuppressionsRequest {})
                .await?
                .into_inner();
            if args.json {
                print_json(&l);
                return Ok(());
            }
            let rows = l
                .entries
                .iter()
                .map(|e| vec![e.address.clone(), time(e.since_unix_ms), or_dash(&e.reason)])
                .collect();
            table(&["ADDRESS", "SINCE", "REASON"], rows);
        }
        Command::Suppression(SuppressionCmd::Add { address, reason }) => {
            let r = client
                .add_suppression(pb::AddSuppressionRequest {
                    address: address.clone(),
                    reason: reason.clone(),
                })
                .await?
                .into_inner();
            report_change(
                args.json,
                &r,
                &format!("{address}: suppressed"),
                &format!("{address}: was already suppressed (reason updated)"),
            );
        }
        Command::Suppression(SuppressionCmd::Remove { address }) => {
            let r = client
                .remove_suppression(pb::AddressRequest {
                    address: address.clone(),
                })
                .await?
                .into_inner();
            report_change(
                args.json,
                &r,
                &format!("{address}: removed from the suppression list"),
                &format!("{address}: was not on the list"),
            );
        }
        Command::Node(NodeCmd::Add { id, addr }) => {
            let r = client
                .add_node(pb::AddNodeRequest {
                    id: *id,
                    addr: addr.clone(),
                })
                .await?
                .into_inner();
            if args.json {
                print_json(&r);
            } else {
                println!("node {id} ({addr}) is a voter (leader {})", r.leader_id);
            }
        }
        Command::Node(NodeCmd::Remove { id }) => {
            let r = client
                .remove_node(pb::RemoveNodeRequest { id: *id })
                .await?
                .into_inner();
            if args.json {
                print_json(&r);
            } else {
                println!(
                    "node {id} removed; its domains moved (leader {})",
                    r.leader_id
                );
            }
        }
        Command::Events {
            follow,
            after,
            message,
            domain,
            kinds,
        } => {
            events(
                args, client, server, *follow, *after, message, domain, kinds,
            )
            .await?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn events(
    args: &Args,
    mut client: Client,
    mut server: usize,
    follow: bool,
    mut after: u64,
    message: &Option<String>,
    domain: &Option<String>,
    kinds: &[String],
) -> Result<()> {
    let mut header = !args.json;
    // Reconnections while following: bounded, so a cluster that is gone ends the command.
    let mut reconnects = 0u32;
    loop {
        let request = pb::StreamEventsRequest {
            after,
            follow,
            message_id: message.clone().unwrap_or_default(),
            domain: domain.clone().unwrap_or_default(),
            kinds: kinds.to_vec(),
        };
        let broken = match client.stream_events(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(e)) => {
                            reconnects = 0;
                            after = e.position;
                            print_event(args.json, &mut header, &e);
                        }
                        Ok(None) => return Ok(()),
                        Err(s) => break s,
                    }
                }
            }
            Err(s) if s.code() != tonic::Code::Unavailable && s.code() != tonic::Code::Unknown => {
                return Err(s.into());
            }
            Err(s) => s,
        };
        if !follow || reconnects >= 30 {
            return Err(broken.into());
        }
        reconnects += 1;
        eprintln!(
            "batonctl: event stream interrupted ({}); resuming after position {after}",
            broken.message()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Try the next server first: this one may be the node that went away.
        match connect(args, server + 1).await {
            Ok((c, i)) => {
                client = c;
                server = i;
            }
            Err(Failure(m, _)) => eprintln!("batonctl: {m}"),
        }
    }
}

fn print_event(json: bool, header: &mut bool, e: &pb::Event) {
    if json {
        match serde_json::to_string(e) {
            Ok(s) => println!("{s}"),
            Err(err) => eprintln!("batonctl: cannot print JSON: {err}"),
        }
    } else {
        if *header {
            println!(
                "{:<8} {:<20} {:<10} {:<26} {:<30} {:<24} REPLY",
                "POS", "TIME", "KIND", "MESSAGE", "RECIPIENT", "REMOTE"
            );
            *header = false;
        }
        let remote = match (e.remote_host.as_str(), e.remote_ip.as_str()) {
            ("", "") => "-".to_string(),
            (h, "") => h.to_string(),
            (h, ip) => format!("{h}[{ip}]{}", if e.tls.is_empty() { "" } else { " tls" }),
        };
        println!(
            "{:<8} {:<20} {:<10} {:<26} {:<30} {:<24} {}",
            e.position,
            time(e.time_unix_ms),
            e.kind,
            e.message_id,
            e.recipient,
            remote,
            e.reply
        );
    }
    let _ = std::io::stdout().flush();
}

fn hash_password() -> ExitCode {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    if let Err(e) = stdin.lock().read_line(&mut line) {
        eprintln!("batonctl: cannot read the password: {e}");
        return ExitCode::from(2);
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("batonctl: empty password");
        return ExitCode::from(2);
    }
    let salt = SaltString::generate(&mut OsRng);
    match Argon2::default().hash_password(password.as_bytes(), &salt) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("batonctl: cannot hash: {e}");
            ExitCode::from(1)
        }
    }
}
