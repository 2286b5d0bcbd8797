//! `events`: the event log, listed or followed. With `--follow`, a broken stream is
//! resumed after the last position printed, on the next server of the list.

use crate::connect::{Client, Target};
use crate::failure::{Failure, Result};
use crate::output::time;
use crate::pb;
use std::io::Write;
use std::time::Duration;

/// Reconnections in a row (without an event between them) before following gives up, so
/// a cluster that is gone ends the command.
const MAX_RECONNECTS: u32 = 30;

/// Streams the events `request` asks for from `client` (connected to server number
/// `server` of `target`), printing each as it arrives.
pub async fn run(
    target: &Target<'_>,
    json: bool,
    mut client: Client,
    mut server: usize,
    mut request: pb::StreamEventsRequest,
) -> Result<()> {
    let mut header = !json;
    let mut reconnects = 0u32;
    loop {
        let broken = match client.stream_events(request.clone()).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(e)) => {
                            reconnects = 0;
                            request.after = e.position;
                            print_event(json, &mut header, &e);
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
        if !request.follow || reconnects >= MAX_RECONNECTS {
            return Err(broken.into());
        }
        reconnects += 1;
        eprintln!(
            "batonctl: event stream interrupted ({}); resuming after position {}",
            broken.message(),
            request.after
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Try the next server first: this one may be the node that went away.
        match target.connect(server + 1).await {
            Ok((c, i)) => {
                client = c;
                server = i;
            }
            Err(Failure(m, _)) => eprintln!("batonctl: {m}"),
        }
    }
}

/// Prints one event: a JSON line, or a table row (under a header the first time, while
/// `header` is set). Flushes, so a follower sees each event as it comes.
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
        // Site and tenant events name their site or tenant where a recipient goes,
        // and say what changed and which rule caused it before the reply.
        let (who, reply) = if e.site.is_empty() && e.tenant.is_empty() {
            (e.recipient.clone(), e.reply.clone())
        } else {
            let who = if e.site.is_empty() {
                format!("tenant {}", e.tenant)
            } else {
                format!("site {}", e.site)
            };
            let rule = if e.rule.is_empty() {
                String::new()
            } else {
                format!(" [{}]", e.rule)
            };
            (
                who,
                format!("{}{rule} {}", e.detail, e.reply).trim().to_string(),
            )
        };
        println!(
            "{:<8} {:<20} {:<10} {:<26} {:<30} {:<24} {}",
            e.position,
            time(e.time_unix_ms),
            e.kind,
            e.message_id,
            who,
            remote(e),
            reply
        );
    }
    let _ = std::io::stdout().flush();
}

/// The REMOTE column: `host[ip]`, ` tls` after it when the delivery used TLS.
fn remote(e: &pb::Event) -> String {
    match (e.remote_host.as_str(), e.remote_ip.as_str()) {
        ("", "") => "-".to_string(),
        (h, "") => h.to_string(),
        (h, ip) => format!("{h}[{ip}]{}", if e.tls.is_empty() { "" } else { " tls" }),
    }
}

#[cfg(test)]
mod tests {
    use super::remote;
    use crate::pb;

    #[test]
    fn remote_column() {
        let mut e = pb::Event::default();
        assert_eq!(remote(&e), "-");
        e.remote_host = "mx.example.com".into();
        assert_eq!(remote(&e), "mx.example.com");
        e.remote_ip = "192.0.2.1".into();
        assert_eq!(remote(&e), "mx.example.com[192.0.2.1]");
        e.tls = "TLSv1.3".into();
        assert_eq!(remote(&e), "mx.example.com[192.0.2.1] tls");
        e.tls = String::new();
        e.tls_policy = "mta-sts-enforce".into();
        assert_eq!(remote(&e), "mx.example.com[192.0.2.1]");
    }
}
