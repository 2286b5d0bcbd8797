//! Failure reasons in words an operator can act on.
//!
//! The reasons built here end up in `batonctl message show`, events, logs and bounces
//! (`Diagnostic-Code`), so they say what failed, where, and why, in plain words:
//! `DNS lookup for example.com failed: no answer from the resolver 10.0.0.53:53
//! (timeout)`, `could not connect to any MX host of example.com: mx1.example.com
//! [192.0.2.1]:25 connection refused`. Only wording lives here: which failures are
//! temporary or permanent is decided in [`crate::route`] and [`crate::policy`].

use crate::route::Target;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// The resolvers a [`crate::route::Router`] asks, for reasons that name them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolvers {
    /// `ip:port` of each server, in order.
    pub servers: Vec<SocketAddr>,
    /// Read from the system (`/etc/resolv.conf`), not from `delivery.dns_servers`.
    pub system: bool,
}

impl Resolvers {
    /// "the resolver 10.0.0.53:53", "the resolvers 10.0.0.53:53, 10.0.0.54:53".
    fn named(&self) -> String {
        let list = self
            .servers
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match self.servers.len() {
            0 => "the resolver".into(),
            1 => format!("the resolver {list}"),
            _ => format!("the resolvers {list}"),
        }
    }
}

/// Why a DNS query failed, without the name asked for (the caller says that): the
/// resolver did not answer, could not be reached, or answered an error code.
pub fn dns(e: &NetError, resolvers: &Resolvers) -> String {
    let who = resolvers.named();
    match e {
        NetError::Timeout => format!("no answer from {who} (timeout)"),
        // Every server failed at the network level (hickory reports the I/O errors of
        // a whole pool as this), or none is configured.
        NetError::NoConnections if resolvers.servers.is_empty() => {
            if resolvers.system {
                "no resolver configured (/etc/resolv.conf lists no nameserver; \
                 delivery.dns_servers can name one)"
                    .into()
            } else {
                "no resolver configured".into()
            }
        }
        NetError::NoConnections => format!(
            "could not reach {who} (no network route, or connection refused: \
             is this machine offline?)"
        ),
        NetError::Io(io) => format!("could not reach {who}: {}", self::io(io)),
        NetError::Busy => format!("{who} is busy"),
        NetError::Truncated => {
            format!("the answer from {who} was truncated and could not be had over TCP")
        }
        NetError::Dns(DnsError::ResponseCode(code)) => {
            format!("{who} answered {}", response_code(*code))
        }
        NetError::Dns(DnsError::NoRecordsFound(n)) => {
            format!("{who} answered {}", response_code(n.response_code))
        }
        NetError::Proto(p) => format!("bad answer from {who}: {p}"),
        other => format!("{who}: {other}"),
    }
}

/// Why the address (A/AAAA) lookup of `host` failed: "mx1.example.com does not
/// exist", "mx1.example.com has no A or AAAA record", "mx1.example.com: no answer
/// from the resolver 10.0.0.53:53 (timeout)".
pub fn address(host: &str, e: &NetError, resolvers: &Resolvers) -> String {
    if e.is_nx_domain() {
        format!("{host} does not exist")
    } else if e.is_no_records_found() {
        format!("{host} has no A or AAAA record")
    } else {
        format!("{host}: {}", dns(e, resolvers))
    }
}

/// An RCODE as its RFC name and meaning: "SERVFAIL (server failure)".
fn response_code(code: ResponseCode) -> String {
    let name = match code {
        ResponseCode::NoError => "NOERROR".to_string(),
        ResponseCode::FormErr => "FORMERR".to_string(),
        ResponseCode::ServFail => "SERVFAIL".to_string(),
        ResponseCode::NXDomain => "NXDOMAIN".to_string(),
        ResponseCode::NotImp => "NOTIMP".to_string(),
        ResponseCode::Refused => "REFUSED".to_string(),
        other => format!("RCODE {}", u16::from(other)),
    };
    format!("{name} ({})", code.to_str().to_lowercase())
}

/// An I/O error without Rust's decoration: "connection refused", not
/// "Connection refused (os error 111)".
pub fn io(e: &io::Error) -> String {
    use io::ErrorKind::*;
    let plain = match e.kind() {
        ConnectionRefused => "connection refused",
        ConnectionReset => "connection reset",
        ConnectionAborted => "connection aborted",
        HostUnreachable => "host unreachable",
        NetworkUnreachable => "network unreachable",
        NetworkDown => "network down",
        AddrNotAvailable => "address not available",
        TimedOut => "timed out",
        BrokenPipe => "connection closed",
        UnexpectedEof => "connection closed",
        _ => {
            let text = e.to_string();
            return match text.rsplit_once(" (os error ") {
                Some((head, _)) => head.to_lowercase(),
                None => text,
            };
        }
    };
    plain.into()
}

/// A host as logs name it: `mx1.example.com[192.0.2.1]:25`, or `192.0.2.1:25` when the
/// host is its own address (a smarthost or an address literal).
pub fn target(t: &Target) -> String {
    if t.host == t.addr.ip().to_string() {
        t.addr.to_string()
    } else {
        format!("{}[{}]:{}", t.host, t.addr.ip(), t.addr.port())
    }
}

/// A duration as the config writes it: "30s", "1m 30s".
pub fn duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// No host of `domain` took a connection; `tried` says what each did, in order.
/// `smarthost`: the hosts are the configured smarthost, not the domain's MX hosts.
pub fn no_connection(domain: &str, smarthost: bool, tried: &[String]) -> String {
    let list = tried.join("; ");
    let literal = domain.starts_with('[');
    match (smarthost, literal, tried.is_empty()) {
        (true, _, true) => "the smarthost has no address to connect to".into(),
        (true, _, false) => format!("could not connect to the smarthost: {list}"),
        (false, true, _) => format!("could not connect to {domain}: {list}"),
        (false, false, true) => format!("no MX host of {domain} to connect to"),
        (false, false, false) => {
            format!("could not connect to any MX host of {domain}: {list}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::net::NoRecords;
    use hickory_resolver::proto::op::Query;
    use std::sync::Arc;

    fn one() -> Resolvers {
        Resolvers {
            servers: vec!["10.0.0.53:53".parse().unwrap()],
            system: true,
        }
    }

    fn no_records(code: ResponseCode) -> NetError {
        NetError::from(NoRecords::new(Query::default(), code))
    }

    #[test]
    fn dns_failures_say_what_happened_and_who_was_asked() {
        let cases: Vec<(NetError, Resolvers, &str)> = vec![
            (
                NetError::Timeout,
                one(),
                "no answer from the resolver 10.0.0.53:53 (timeout)",
            ),
            (
                NetError::Timeout,
                Resolvers {
                    servers: vec![
                        "10.0.0.53:53".parse().unwrap(),
                        "127.0.0.1:5353".parse().unwrap(),
                    ],
                    system: false,
                },
                "no answer from the resolvers 10.0.0.53:53, 127.0.0.1:5353 (timeout)",
            ),
            // What an offline machine used to report as "no connections available".
            (
                NetError::NoConnections,
                one(),
                "could not reach the resolver 10.0.0.53:53 (no network route, or \
                 connection refused: is this machine offline?)",
            ),
            (
                NetError::NoConnections,
                Resolvers {
                    servers: vec![],
                    system: true,
                },
                "no resolver configured (/etc/resolv.conf lists no nameserver; \
                 delivery.dns_servers can name one)",
            ),
            (
                NetError::Io(Arc::new(io::Error::from(io::ErrorKind::NetworkUnreachable))),
                one(),
                "could not reach the resolver 10.0.0.53:53: network unreachable",
            ),
            (
                NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)),
                one(),
                "the resolver 10.0.0.53:53 answered SERVFAIL (server failure)",
            ),
            (
                NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)),
                one(),
                "the resolver 10.0.0.53:53 answered REFUSED (query refused)",
            ),
            (
                NetError::Truncated,
                one(),
                "the answer from the resolver 10.0.0.53:53 was truncated and could not be \
                 had over TCP",
            ),
        ];
        for (e, r, want) in cases {
            let got = dns(&e, &r);
            assert_eq!(got, want, "for {e:?}");
            assert!(!got.contains("no connections available"), "{got}");
        }
    }

    #[test]
    fn address_failures_name_the_host() {
        let r = one();
        assert_eq!(
            address("mx1.dst.test", &no_records(ResponseCode::NXDomain), &r),
            "mx1.dst.test does not exist"
        );
        assert_eq!(
            address("mx1.dst.test", &no_records(ResponseCode::NoError), &r),
            "mx1.dst.test has no A or AAAA record"
        );
        assert_eq!(
            address("mx1.dst.test", &NetError::Timeout, &r),
            "mx1.dst.test: no answer from the resolver 10.0.0.53:53 (timeout)"
        );
    }

    #[test]
    fn io_errors_lose_their_decoration() {
        assert_eq!(
            io(&io::Error::from_raw_os_error(111)),
            "connection refused",
            "ECONNREFUSED"
        );
        assert_eq!(
            io(&io::Error::from_raw_os_error(101)),
            "network unreachable"
        );
        assert_eq!(io(&io::Error::from_raw_os_error(113)), "host unreachable");
        // Kinds without a word of ours keep the system's, minus "(os error N)".
        assert_eq!(
            io(&io::Error::from_raw_os_error(24)),
            "too many open files",
            "EMFILE"
        );
        assert_eq!(io(&io::Error::other("odd")), "odd");
    }

    #[test]
    fn targets_and_connection_failures_read_like_a_log_line() {
        let mx = Target {
            host: "mx1.dst.test".into(),
            addr: "192.0.2.1:25".parse().unwrap(),
        };
        let literal = Target {
            host: "127.0.0.2".into(),
            addr: "127.0.0.2:2526".parse().unwrap(),
        };
        let v6 = Target {
            host: "mx2.dst.test".into(),
            addr: "[2001:db8::1]:25".parse().unwrap(),
        };
        assert_eq!(target(&mx), "mx1.dst.test[192.0.2.1]:25");
        assert_eq!(target(&literal), "127.0.0.2:2526");
        assert_eq!(target(&v6), "mx2.dst.test[2001:db8::1]:25");
        assert_eq!(
            no_connection(
                "dst.test",
                false,
                &[
                    "mx1.dst.test[192.0.2.1]:25 connection refused".into(),
                    "mx2.dst.test[2001:db8::1]:25 connection timed out after 30s".into()
                ]
            ),
            "could not connect to any MX host of dst.test: mx1.dst.test[192.0.2.1]:25 \
             connection refused; mx2.dst.test[2001:db8::1]:25 connection timed out after 30s"
        );
        assert_eq!(
            no_connection(
                "dst.test",
                true,
                &["127.0.0.2:2526 connection refused".into()]
            ),
            "could not connect to the smarthost: 127.0.0.2:2526 connection refused"
        );
        assert_eq!(
            no_connection(
                "[127.0.0.9]",
                false,
                &["127.0.0.9:25 connection refused".into()]
            ),
            "could not connect to [127.0.0.9]: 127.0.0.9:25 connection refused"
        );
        assert_eq!(
            no_connection("dst.test", false, &[]),
            "no MX host of dst.test to connect to"
        );
        assert_eq!(duration(Duration::from_secs(30)), "30s");
        assert_eq!(duration(Duration::from_micros(90_500_700)), "1m 30s 500ms");
    }
}
