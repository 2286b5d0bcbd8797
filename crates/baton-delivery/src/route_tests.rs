//! Routing against small fake DNS servers on 127.0.0.1: the reasons a failed lookup
//! gives, word for word.

use super::*;
use std::sync::Arc;
use tokio::net::UdpSocket;

/// How the fake server answers a query: (RCODE, answer records in wire format).
type Answer = fn(name: &str, qtype: u16) -> (u8, Vec<Vec<u8>>);

/// A UDP DNS server on 127.0.0.1 that answers every query with `answer` (or never,
/// with `None`). Runs until the test's runtime ends.
async fn fake_dns(answer: Option<Answer>) -> SocketAddr {
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Some(answer) = answer else { continue };
            if let Some(reply) = respond(&buf[..n], answer) {
                let _ = sock.send_to(&reply, peer).await;
            }
        }
    });
    addr
}

/// The reply to one query: its id and question, `answer`'s RCODE and records.
fn respond(query: &[u8], answer: Answer) -> Option<Vec<u8>> {
    let mut i = 12;
    let mut labels = Vec::new();
    while *query.get(i)? != 0 {
        let len = query[i] as usize;
        labels.push(String::from_utf8_lossy(query.get(i + 1..i + 1 + len)?).to_lowercase());
        i += 1 + len;
    }
    let question_end = i + 5;
    let qtype = u16::from_be_bytes([*query.get(i + 1)?, *query.get(i + 2)?]);
    let (rcode, records) = answer(&labels.join("."), qtype);
    let mut out = vec![query[0], query[1], 0x81, 0x80 | rcode, 0, 1];
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(query.get(12..question_end)?);
    for r in records {
        out.extend_from_slice(&r);
    }
    Some(out)
}

/// An MX record for the question's name (a pointer to it): `pref host`.
fn mx(pref: u16, host: &str) -> Vec<u8> {
    let mut rdata = pref.to_be_bytes().to_vec();
    for label in host.split('.') {
        rdata.push(label.len() as u8);
        rdata.extend_from_slice(label.as_bytes());
    }
    rdata.push(0);
    let mut r = vec![0xc0, 12, 0, 15, 0, 1, 0, 0, 0, 60];
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(&rdata);
    r
}

const NOERROR: u8 = 0;
const SERVFAIL: u8 = 2;
const NXDOMAIN: u8 = 3;

fn router(dns: SocketAddr) -> Router {
    Router::new(RouteConfig {
        smarthost: None,
        dns_servers: vec![dns],
        mx_port: 25,
    })
    .unwrap()
}

async fn failure(router: &Router, domain: &str) -> RouteError {
    match router.route(domain).await {
        Ok(t) => panic!("{domain} routed to {t:?}"),
        Err(e) => e,
    }
}

/// Also what a closed port on 127.0.0.1 gives: hickory's UDP sockets do not see the
/// ICMP refusal. (An unreachable network fails the send itself; hickory reports that as
/// "no connections", worded in `reason`'s tests.)
#[tokio::test(start_paused = true)]
async fn a_silent_resolver_is_a_timeout() {
    let dns = fake_dns(None).await;
    let e = failure(&router(dns), "dst.test").await;
    assert!(!e.is_permanent());
    assert_eq!(
        e.to_string(),
        format!("DNS lookup for dst.test failed: no answer from the resolver {dns} (timeout)")
    );
}

#[tokio::test]
async fn servfail_is_spelled_out() {
    let dns = fake_dns(Some(|_, _| (SERVFAIL, vec![]))).await;
    let e = failure(&router(dns), "dst.test").await;
    assert!(!e.is_permanent());
    assert_eq!(
        e.to_string(),
        format!(
            "DNS lookup for dst.test failed: the resolver {dns} answered SERVFAIL (server failure)"
        )
    );
    assert_eq!(e.status(), "4.4.3");
}

#[tokio::test]
async fn mx_hosts_without_an_address_are_listed() {
    let dns = fake_dns(Some(|name, qtype| match (name, qtype) {
        ("dst.test", 15) => (
            NOERROR,
            vec![mx(10, "mx1.dst.test"), mx(20, "mx2.dst.test")],
        ),
        ("mx1.dst.test", _) => (NXDOMAIN, vec![]),
        (_, _) => (NOERROR, vec![]),
    }))
    .await;
    let e = failure(&router(dns), "dst.test").await;
    assert!(
        !e.is_permanent(),
        "as before: an MX host without address may be fixed"
    );
    assert_eq!(
        e.to_string(),
        "DNS lookup for dst.test failed: no address for any MX host: mx1.dst.test does not \
         exist; mx2.dst.test has no A or AAAA record"
    );
}

#[tokio::test]
async fn a_domain_that_does_not_exist_still_bounces() {
    let dns = fake_dns(Some(|_, _| (NXDOMAIN, vec![]))).await;
    let e = failure(&router(dns), "gone.test").await;
    assert!(e.is_permanent());
    assert_eq!(e.to_string(), "domain gone.test does not exist");
    assert_eq!(e.status(), "5.1.2");
}

#[tokio::test]
async fn a_smarthost_without_address_says_so() {
    let dns = fake_dns(Some(|_, _| (NXDOMAIN, vec![]))).await;
    let router = Router::new(RouteConfig {
        smarthost: Some("relay.gone.test:2525".into()),
        dns_servers: vec![dns],
        mx_port: 25,
    })
    .unwrap();
    assert!(router.uses_smarthost());
    let e = failure(&router, "dst.test").await;
    assert!(!e.is_permanent());
    assert_eq!(
        e.to_string(),
        "DNS lookup for the smarthost relay.gone.test failed: relay.gone.test does not exist"
    );
}
