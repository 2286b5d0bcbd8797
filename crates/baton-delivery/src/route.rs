//! Where mail for a domain goes: MX lookup with fallback to A/AAAA, null MX (RFC 7505),
//! address literals, or a configured smarthost.

use crate::reason::{self, Resolvers};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use std::net::{IpAddr, SocketAddr};

/// One host to try, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The MX host name (or the smarthost), for logs, TLS SNI and `Remote-MTA`.
    pub host: String,
    pub addr: SocketAddr,
}

/// Why no route was found. The second field is the reason in words (see
/// [`crate::reason`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// DNS failed in a way that may pass: try again later.
    #[error("DNS lookup for {0} failed: {1}")]
    Temporary(String, String),
    /// The domain cannot receive mail: bounce.
    #[error("{1}")]
    Permanent(String, String),
}

impl RouteError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, RouteError::Permanent(..))
    }
    /// Enhanced status code for a DSN.
    pub fn status(&self) -> &'static str {
        match self {
            RouteError::Temporary(..) => "4.4.3",
            RouteError::Permanent(_, m) if m.contains("null MX") => "5.1.10",
            RouteError::Permanent(..) => "5.1.2",
        }
    }
}

/// How routes are found.
#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    /// `host:port`; when set, every domain goes there.
    pub smarthost: Option<String>,
    /// DNS servers (`ip:port`); empty: the system resolver.
    pub dns_servers: Vec<SocketAddr>,
    /// Port used on MX hosts.
    pub mx_port: u16,
}

/// Finds targets for domains.
#[derive(Clone)]
pub struct Router {
    resolver: TokioResolver,
    config: RouteConfig,
    /// Who is asked, for failure reasons that name them.
    resolvers: Resolvers,
}

/// A rustls client configuration for the resolver: the webpki roots, aws-lc.
fn resolver_tls() -> Result<rustls::ClientConfig, String> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("resolver TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Router {
    pub fn new(config: RouteConfig) -> Result<Router, String> {
        let provider = TokioRuntimeProvider::default();
        let resolvers;
        let mut builder = if config.dns_servers.is_empty() {
            // What `TokioResolver::builder` does, keeping the servers to name them.
            let (system, options) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("system resolver: {e}"))?;
            resolvers = Resolvers {
                servers: servers_of(system.name_servers()),
                system: true,
            };
            let mut builder = TokioResolver::builder_with_config(system, provider);
            *builder.options_mut() = options;
            builder
        } else {
            resolvers = Resolvers {
                servers: config.dns_servers.clone(),
                system: false,
            };
            let servers = config
                .dns_servers
                .iter()
                .map(|s| {
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for c in &mut ns.connections {
                        c.port = s.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                provider,
            )
        };
        let opts = builder.options_mut();
        opts.timeout = std::time::Duration::from_secs(5);
        opts.attempts = 2;
        // Honour short TTLs so operators' DNS changes take effect.
        opts.positive_max_ttl = Some(std::time::Duration::from_secs(300));
        opts.negative_max_ttl = Some(std::time::Duration::from_secs(60));
        // DNS goes over UDP and TCP only; the TLS configuration hickory would otherwise
        // build from the system's CA files (none in a scratch image: the resolver would
        // fail to start) is given instead.
        let builder = builder.with_tls_config(resolver_tls()?);
        let resolver = builder.build().map_err(|e| format!("resolver: {e}"))?;
        Ok(Router {
            resolver,
            config,
            resolvers,
        })
    }

    /// Whether every domain goes to the configured smarthost.
    pub fn uses_smarthost(&self) -> bool {
        self.config.smarthost.is_some()
    }

    /// The hosts to try for `domain`, most preferred first.
    pub async fn route(&self, domain: &str) -> Result<Vec<Target>, RouteError> {
        if let Some(smarthost) = &self.config.smarthost {
            return self.smarthost(smarthost).await;
        }
        if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let bare = match literal.get(..5) {
                Some(p) if p.eq_ignore_ascii_case("ipv6:") => &literal[5..],
                _ => literal,
            };
            let ip: IpAddr = bare.parse().map_err(|_| {
                RouteError::Permanent(domain.into(), format!("bad address literal {domain}"))
            })?;
            return Ok(vec![Target {
                host: ip.to_string(),
                addr: SocketAddr::new(ip, self.config.mx_port),
            }]);
        }
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let mut exchanges: Vec<(u16, String)> = Vec::new();
        match self.resolver.lookup(fqdn.as_str(), RecordType::MX).await {
            Ok(lookup) => {
                for record in lookup.answers() {
                    if let RData::MX(mx) = &record.data {
                        exchanges.push((mx.preference, mx.exchange.to_ascii()));
                    }
                }
            }
            Err(e) if e.is_nx_domain() => {
                return Err(RouteError::Permanent(
                    domain.into(),
                    format!("domain {domain} does not exist"),
                ));
            }
            Err(e) if e.is_no_records_found() => {}
            Err(e) => {
                return Err(RouteError::Temporary(
                    domain.into(),
                    reason::dns(&e, &self.resolvers),
                ));
            }
        }
        if exchanges.len() == 1 && exchanges[0].1.trim_end_matches('.').is_empty() {
            return Err(RouteError::Permanent(
                domain.into(),
                format!("domain {domain} accepts no mail (null MX, RFC 7505)"),
            ));
        }
        let implicit = exchanges.is_empty();
        if implicit {
            // RFC 5321 §5.1: no MX, so the domain itself is the implicit MX.
            exchanges.push((0, fqdn.clone()));
        }
        exchanges.retain(|(_, host)| !host.trim_end_matches('.').is_empty());
        exchanges.sort_by_key(|(pref, _)| *pref);

        let mut targets = Vec::new();
        let mut failures = Vec::new();
        for (_, host) in &exchanges {
            match self.resolver.lookup_ip(host.as_str()).await {
                Ok(ips) => {
                    for ip in ips.iter() {
                        targets.push(Target {
                            host: host.trim_end_matches('.').to_string(),
                            addr: SocketAddr::new(ip, self.config.mx_port),
                        });
                    }
                }
                Err(e) if implicit && (e.is_no_records_found() || e.is_nx_domain()) => {
                    // No MX and no address: the domain takes no mail (RFC 5321 §5.1).
                    return Err(RouteError::Permanent(
                        domain.into(),
                        format!("domain {domain} has no MX and no address"),
                    ));
                }
                Err(e) => failures.push(reason::address(
                    host.trim_end_matches('.'),
                    &e,
                    &self.resolvers,
                )),
            }
        }
        if targets.is_empty() {
            let why = failures.join("; ");
            return Err(RouteError::Temporary(
                domain.into(),
                if implicit {
                    format!("no MX record, and its address lookup failed: {why}")
                } else {
                    format!("no address for any MX host: {why}")
                },
            ));
        }
        Ok(targets)
    }

    /// The TXT records at `name`, each record's strings joined; empty when the name has
    /// none or does not exist. `Err`: the lookup failed (the reason in words).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.lookup(fqdn.as_str(), RecordType::TXT).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(format!(
                "TXT lookup for {name} failed: {}",
                reason::dns(&e, &self.resolvers)
            )),
        }
    }

    /// The addresses of `host`, through the same resolver as MX hosts.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        self.resolver
            .lookup_ip(fqdn.as_str())
            .await
            .map(|ips| ips.iter().collect())
            .map_err(|e| reason::address(host, &e, &self.resolvers))
    }

    async fn smarthost(&self, smarthost: &str) -> Result<Vec<Target>, RouteError> {
        if let Ok(addr) = smarthost.parse::<SocketAddr>() {
            return Ok(vec![Target {
                host: addr.ip().to_string(),
                addr,
            }]);
        }
        let (host, port) = smarthost
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .unwrap_or((smarthost, 25));
        let ips = self
            .resolver
            .lookup_ip(format!("{}.", host.trim_end_matches('.')))
            .await
            .map_err(|e| {
                RouteError::Temporary(
                    format!("the smarthost {host}"),
                    reason::address(host, &e, &self.resolvers),
                )
            })?;
        Ok(ips
            .iter()
            .map(|ip| Target {
                host: host.to_string(),
                addr: SocketAddr::new(ip, port),
            })
            .collect())
    }
}

/// The distinct `ip:port` of each configured name server (UDP and TCP share them).
fn servers_of(config: &[NameServerConfig]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for ns in config {
        for c in &ns.connections {
            let addr = SocketAddr::new(ns.ip, c.port);
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
