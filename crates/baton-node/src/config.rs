//! The node's configuration (README, "Configuration reference"): TOML into serde structs that reject
//! unknown keys, then [`Config::validate`], which reports every problem at once, each
//! naming its key. [`parse`] collects the parse and type errors the same way, so one run
//! of `batond check-config` lists everything.

pub mod bounces;
mod checks;
mod dkim;
mod external;
mod mta_sts;
mod parse;
mod peer_tls;
mod shaping;
#[cfg(test)]
mod tests;

use checks::{check_data_dir, overlapping_addresses, valid_domain_pattern};
pub use dkim::{Alignment, DEFAULT_HEADERS, DkimConfig, SigningConfig};
use ipnet::IpNet;
use serde::Deserialize;
pub use shaping::{ShapingConfig, SiteConfig, TenantsConfig};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, naming the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Every problem found, one per line.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub dkim: Vec<DkimConfig>,
    #[serde(default)]
    pub signing: SigningConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub shaping: ShapingConfig,
    #[serde(default)]
    pub tenants: TenantsConfig,
    /// The file it was read from (SIGHUP reads it again); none for `--dev`.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    #[serde(default)]
    pub bounces: bounces::BouncesConfig,
}

/// The replicated event log (received, delivered, deferred, ... per recipient).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Keep at most this many events...
    pub retention_count: u64,
    /// ...and none older than this.
    #[serde(with = "humantime_serde")]
    pub retention_age: Duration,
    /// `http://` or `https://` URL the leader POSTs event batches to (JSON); empty: none.
    pub webhook_url: String,
    /// Events per POST.
    pub webhook_batch: usize,
    /// How long one POST may take.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            retention_count: 1_000_000,
            retention_age: Duration::from_secs(7 * 24 * 3600),
            webhook_url: String::new(),
            webhook_batch: 100,
            webhook_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Raft node id, unique in the cluster, > 0.
    pub id: u64,
    /// Take the id from the host name's trailing `-N` (a StatefulSet's ordinal): N + 1.
    pub id_from_hostname: bool,
    /// Where the log, the state and snapshots live.
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            id_from_hostname: false,
            data_dir: PathBuf::from("/var/lib/baton"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Raft gRPC listen address.
    pub listen: SocketAddr,
    /// Allow a non-loopback `listen` without peer TLS: the operator vouches that only
    /// peers can reach it.
    pub insecure: bool,
    /// PEM certificate chain of this node for peer mutual TLS, with `tls_key` and
    /// `tls_ca` (all three or none); it must name the host of `advertise`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): peers' certificates must be signed by it, both ways.
    pub tls_ca: Option<PathBuf>,
    /// How peers reach this node.
    pub advertise: String,
    /// With no state on disk, form a new cluster.
    pub bootstrap: bool,
    /// With no state on disk, ask these to add this node.
    pub join: Vec<String>,
    /// Raft log entries between snapshots (then older entries are purged).
    pub snapshot_logs: u64,
    /// How long a node's delivery lease lasts; it is renewed every third of this. A dead
    /// node's domains move to the others this long after its last renewal.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: ([127, 0, 0, 1], 7301).into(),
            insecure: false,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            advertise: "127.0.0.1:7301".into(),
            bootstrap: false,
            join: Vec::new(),
            snapshot_logs: 5000,
            lease: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerMode {
    /// Port 25 style: relay for `relay_networks`, AUTH optional, STARTTLS if configured.
    Relay,
    /// Port 587: AUTH required before MAIL.
    Submission,
    /// Port 465: TLS from the first byte.
    ImplicitTls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    #[serde(default = "default_mode")]
    pub mode: ListenerMode,
    /// Expect a PROXY v1 or v2 header first.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Peers whose PROXY header is believed; required when `proxy_protocol` is on. Any
    /// other peer is refused before the greeting.
    #[serde(default)]
    pub proxy_trusted: Vec<IpNet>,
    /// Clients that may relay without AUTH.
    #[serde(default)]
    pub relay_networks: Vec<IpNet>,
    /// PEM certificate chain: enables STARTTLS (and implicit TLS).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_mode() -> ListenerMode {
    ListenerMode::Relay
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// PHC string from `batonctl hash-password` (argon2id).
    pub password_hash: String,
    /// Domains the user may send as, in the envelope sender and the `From:` header:
    /// `example.com`, or `*.example.com` for its subdomains. Empty: any.
    #[serde(default)]
    pub allowed_from: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Greeting, `Received:` and DSN host name.
    pub hostname: String,
    /// Largest message accepted, bytes.
    pub max_message_size: u64,
    /// Recipients per transaction.
    pub max_recipients: usize,
    /// Connections per node; over it: 421 at connect.
    pub max_connections: usize,
    /// Connections per client IP; 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Protocol errors before `421` and close.
    pub max_errors: usize,
    /// RFC 5321 §4.5.3.2: waiting for a command.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// RFC 5321 §4.5.3.2: waiting for a data block.
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// How long a session waits for its message's commit before closing without a
    /// reply: a `451` would make the client send again a message that may yet commit.
    #[serde(with = "humantime_serde")]
    pub commit_timeout: Duration,
    /// After the first `data_timeout` of a DATA or BDAT phase, the client must keep this
    /// average rate (bytes per second; 0: no minimum).
    #[serde(deserialize_with = "byte_rate")]
    pub data_min_rate: u64,
    /// AUTH failures from one client address (IPv6: its /64) within 5 minutes, across
    /// connections, before AUTH is refused with `421 4.7.0`; 0: no limit.
    pub max_auth_failures_per_ip: usize,
    /// Connections of `max_connections` that only relay_networks clients and
    /// submission/implicit-TLS listeners may use. Default: a tenth of `max_connections`.
    pub reserved_connections: Option<usize>,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(rename = "user")]
    pub users: Vec<UserConfig>,
    /// A TOML file of `[[user]]` tables (the keys of `[[smtp.user]]`), added to `users`.
    pub users_file: Option<PathBuf>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            hostname: "localhost".into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_connections: 2000,
            max_connections_per_ip: 200,
            max_errors: 10,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            commit_timeout: Duration::from_secs(600),
            data_min_rate: 1024,
            max_auth_failures_per_ip: 10,
            reserved_connections: None,
            listeners: Vec::new(),
            users: Vec::new(),
            users_file: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    Disabled,
    Opportunistic,
    Required,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// `host:port`: send everything there, no MX lookup.
    pub smarthost: String,
    /// DNS servers (`ip:port`); empty: the system resolver.
    pub dns_servers: Vec<SocketAddr>,
    /// Port used on MX hosts.
    pub mx_port: u16,
    pub tls: TlsMode,
    /// Waits between attempts; the last repeats.
    #[serde(deserialize_with = "durations")]
    pub retry_intervals: Vec<Duration>,
    /// Then bounce as expired.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_connections_per_domain: usize,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
    /// TCP connect timeout per host.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Extra CAs (PEM) trusted besides the webpki roots ("" none); see `config/mta_sts.rs`.
    pub tls_ca_file: String,
    /// Honour MTA-STS (RFC 8461) policies.
    pub mta_sts: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            smarthost: String::new(),
            dns_servers: Vec::new(),
            mx_port: 25,
            tls: TlsMode::Opportunistic,
            retry_intervals: [60, 300, 1800, 7200, 21600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max_age: Duration::from_secs(5 * 86_400),
            max_connections_per_domain: 10,
            max_messages_per_connection: 100,
            connect_timeout: Duration::from_secs(30),
            tls_ca_file: String::new(),
            mta_sts: false,
        }
    }
}

/// `"1KiB/s"`, `"500B/s"`, `"2MiB/s"`, `"10kB/s"` or `"0"` (off), in bytes per second.
fn byte_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    parse_byte_rate(&s).map_err(serde::de::Error::custom)
}

pub fn parse_byte_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(0);
    }
    let bad = || format!("{s:?} is not a rate like \"1KiB/s\" (or \"0\" for none)");
    let amount = t.strip_suffix("/s").ok_or_else(bad)?.trim();
    let split = amount
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(amount.len());
    let (num, unit) = amount.split_at(split);
    let num: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "KiB" => 1024,
        "MB" => 1_000_000,
        "MiB" => 1024 * 1024,
        _ => return Err(bad()),
    };
    num.checked_mul(mult).ok_or_else(bad)
}

impl SmtpConfig {
    /// Connections anonymous peers cannot take (see `reserved_connections`).
    pub fn reserved(&self) -> usize {
        self.reserved_connections
            .unwrap_or(self.max_connections / 10)
            .min(self.max_connections)
    }
}

fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let v: Vec<humantime_serde::Serde<Duration>> = Vec::deserialize(d)?;
    Ok(v.into_iter().map(|s| s.into_inner()).collect())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token; required when `listen` is not loopback.
    pub token: String,
    /// PEM certificate chain and key: serve the admin API over TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: ([127, 0, 0, 1], 7401).into(),
            token: String::new(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: ([127, 0, 0, 1], 9401).into(),
        }
    }
}

/// The embedded configuration of `batond --dev`.
pub const DEV_CONFIG: &str = r#"
[node]
id = 1
data_dir = "./baton-data"

[cluster]
listen = "127.0.0.1:7301"
advertise = "127.0.0.1:7301"
bootstrap = true

[smtp]
hostname = "localhost"

[[smtp.listener]]
address = "127.0.0.1:2525"
mode = "relay"
relay_networks = ["127.0.0.0/8", "::1/128"]

[delivery]
retry_intervals = ["1m", "5m", "30m", "2h", "6h"]

[admin]
listen = "127.0.0.1:7401"

[http]
listen = "127.0.0.1:9401"
"#;

impl Config {
    /// Parses TOML into a config without validating it. Every type error and unknown
    /// key is reported, each with its key path and line; a TOML syntax error is one error
    /// (nothing after it can be read).
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let parsed = parse::parse(text);
        match parsed.config {
            Some(config) if parsed.errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors(parsed.errors)),
        }
    }

    /// Parses and validates TOML: every problem, parse errors and [`Config::validate`]'s
    /// together (those about a key already reported as bad are left out).
    pub fn check(text: &str) -> Result<Config, ConfigErrors> {
        let mut parsed = parse::parse(text);
        let mut errors = parsed.errors.clone();
        if let Some(config) = &mut parsed.config {
            external::resolve(config, &mut errors);
        }
        if let Some(config) = &parsed.config
            && let Err(problems) = config.validate()
        {
            for mut e in problems.0 {
                let path = parsed.original(&parse::split(&e.key));
                if !parsed.touches_removed(&path) {
                    e.key = parse::display(&path);
                    errors.push(e);
                }
            }
        }
        match parsed.config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: "config".into(),
                reason: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        // An unset variable is reported with every other problem (its `${NAME}` stays).
        let (text, mut errors) = external::expand_env(&text, |name| std::env::var(name).ok());
        match Config::check(&text) {
            Ok(mut config) if errors.is_empty() => {
                config.source = Some(path.to_path_buf());
                Ok(config)
            }
            Ok(_) => Err(ConfigErrors(errors)),
            Err(ConfigErrors(more)) => {
                errors.extend(more);
                Err(ConfigErrors(errors))
            }
        }
    }

    /// The `--dev` configuration, with `data_dir` overridden when given.
    pub fn dev(data_dir: Option<PathBuf>) -> Config {
        let mut config = Config::parse(DEV_CONFIG).expect("embedded dev config parses");
        if let Some(dir) = data_dir {
            config.node.data_dir = dir;
        }
        config
    }

    /// Every problem, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        self.shaping
            .check(self.delivery.max_connections_per_domain, &mut errors);
        self.tenants.check(&mut errors);
        self.bounces.check(&mut errors);
        self.cluster.check_peer_access(&mut errors);
        dkim::check(&self.dkim, &mut errors);
        self.delivery.check_mta_sts(&mut errors);
        let mut err = |key: String, reason: String| errors.push(ConfigError { key, reason });
        if self.node.id == 0 {
            err("node.id".into(), "must be greater than 0".into());
        }
        if let Err(reason) = check_data_dir(&self.node.data_dir) {
            err("node.data_dir".into(), reason);
        }
        if self.cluster.snapshot_logs < 10 {
            err("cluster.snapshot_logs".into(), "must be at least 10".into());
        }
        if self.events.retention_count == 0 {
            err("events.retention_count".into(), "must be at least 1".into());
        }
        match (&self.admin.tls_cert, &self.admin.tls_key) {
            (Some(_), None) => err(
                "admin.tls_key".into(),
                "admin.tls_cert is set, admin.tls_key is missing".into(),
            ),
            (None, Some(_)) => err(
                "admin.tls_cert".into(),
                "admin.tls_key is set, admin.tls_cert is missing".into(),
            ),
            _ => {}
        }
        for (k, path) in [
            ("admin.tls_cert", &self.admin.tls_cert),
            ("admin.tls_key", &self.admin.tls_key),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                err(k.into(), format!("file {} not found", p.display()));
            }
        }
        if !self.events.webhook_url.is_empty()
            && let Err(e) = crate::webhook::Target::parse(&self.events.webhook_url)
        {
            err("events.webhook_url".into(), e);
        }
        if !(1..=10_000).contains(&self.events.webhook_batch) {
            err(
                "events.webhook_batch".into(),
                "must be between 1 and 10000".into(),
            );
        }
        if self.events.webhook_timeout < Duration::from_secs(1) {
            err(
                "events.webhook_timeout".into(),
                "must be at least 1s".into(),
            );
        }
        if self.events.retention_age < Duration::from_secs(60) {
            err("events.retention_age".into(), "must be at least 1m".into());
        }
        if self.cluster.lease < Duration::from_secs(2)
            || self.cluster.lease > Duration::from_secs(600)
        {
            err("cluster.lease".into(), "must be between 2s and 10m".into());
        }
        if self.cluster.advertise.is_empty() {
            err("cluster.advertise".into(), "must not be empty".into());
        }
        if self.smtp.hostname.trim().is_empty() || self.smtp.hostname.contains(char::is_whitespace)
        {
            err(
                "smtp.hostname".into(),
                "must be a host name without spaces".into(),
            );
        }
        if self.smtp.max_message_size < 1024 {
            err(
                "smtp.max_message_size".into(),
                "must be at least 1024 bytes".into(),
            );
        }
        if self.smtp.max_recipients == 0 {
            err("smtp.max_recipients".into(), "must be at least 1".into());
        }
        if self.smtp.max_connections == 0 {
            err("smtp.max_connections".into(), "must be at least 1".into());
        }
        if self.smtp.listeners.is_empty() {
            err(
                "smtp.listener".into(),
                "at least one [[smtp.listener]] is needed".into(),
            );
        }
        for (i, l) in self.smtp.listeners.iter().enumerate() {
            let key = |k: &str| format!("smtp.listener[{i}].{k}");
            match (&l.tls_cert, &l.tls_key) {
                (Some(_), None) => {
                    err(key("tls_key"), "tls_cert is set, tls_key is missing".into())
                }
                (None, Some(_)) => err(
                    key("tls_cert"),
                    "tls_key is set, tls_cert is missing".into(),
                ),
                _ => {}
            }
            for (k, path) in [("tls_cert", &l.tls_cert), ("tls_key", &l.tls_key)] {
                if let Some(p) = path
                    && !p.is_file()
                {
                    err(key(k), format!("file {} not found", p.display()));
                }
            }
            if l.proxy_protocol && l.proxy_trusted.is_empty() {
                err(
                    key("proxy_trusted"),
                    "proxy_protocol is on: list the load balancers whose PROXY header is \
                     believed (e.g. [\"10.0.0.0/8\"])"
                        .into(),
                );
            }
            if !l.proxy_protocol && !l.proxy_trusted.is_empty() {
                err(
                    key("proxy_trusted"),
                    "is set but proxy_protocol is off".into(),
                );
            }
            if l.mode == ListenerMode::ImplicitTls && l.tls_cert.is_none() {
                err(
                    key("tls_cert"),
                    "mode implicit-tls needs tls_cert and tls_key".into(),
                );
            }
            if l.mode == ListenerMode::Submission && self.smtp.users.is_empty() {
                err(
                    key("mode"),
                    "submission requires AUTH, but no [[smtp.user]] is configured".into(),
                );
            }
            for (j, net) in l.relay_networks.iter().enumerate() {
                if net.prefix_len() == 0 {
                    err(
                        format!("smtp.listener[{i}].relay_networks[{j}]"),
                        format!(
                            "{net} is every address: anyone could relay through this \
                             listener (an open relay); list your own networks"
                        ),
                    );
                }
            }
        }
        for (i, u) in self.smtp.users.iter().enumerate() {
            if u.name.is_empty() {
                err(format!("smtp.user[{i}].name"), "must not be empty".into());
            }
            if argon2::PasswordHash::new(&u.password_hash).is_err() {
                err(
                    format!("smtp.user[{i}].password_hash"),
                    "not a PHC password hash; make one with `batonctl hash-password`".into(),
                );
            }
            for (j, d) in u.allowed_from.iter().enumerate() {
                if !valid_domain_pattern(d) {
                    err(
                        format!("smtp.user[{i}].allowed_from[{j}]"),
                        format!("{d:?} is not a domain or *.domain"),
                    );
                }
            }
        }
        if let Some(r) = self.smtp.reserved_connections
            && r >= self.smtp.max_connections
        {
            err(
                "smtp.reserved_connections".into(),
                format!(
                    "must be less than smtp.max_connections ({})",
                    self.smtp.max_connections
                ),
            );
        }
        let d = &self.delivery;
        if !d.smarthost.is_empty() && !d.smarthost.contains(':') {
            err(
                "delivery.smarthost".into(),
                format!("{:?} must be host:port", d.smarthost),
            );
        }
        if d.mx_port == 0 {
            err("delivery.mx_port".into(), "must be a port number".into());
        }
        if d.retry_intervals.is_empty() {
            err(
                "delivery.retry_intervals".into(),
                "needs at least one interval".into(),
            );
        }
        if d.retry_intervals.iter().any(|i| i.is_zero()) {
            err(
                "delivery.retry_intervals".into(),
                "intervals must be longer than 0".into(),
            );
        }
        if d.max_age.is_zero() {
            err("delivery.max_age".into(), "must be longer than 0".into());
        }
        if d.max_connections_per_domain == 0 {
            err(
                "delivery.max_connections_per_domain".into(),
                "must be at least 1".into(),
            );
        }
        if d.max_messages_per_connection == 0 {
            err(
                "delivery.max_messages_per_connection".into(),
                "must be at least 1".into(),
            );
        }
        for (key, overlaps) in overlapping_addresses(&self.listen_addresses()) {
            err(key, overlaps);
        }
        if !self.admin.listen.ip().is_loopback() && self.admin.token.is_empty() {
            err(
                "admin.token".into(),
                format!(
                    "admin.listen {} is not loopback, so a token is required",
                    self.admin.listen
                ),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

impl Config {
    /// Every address this node listens on, with its key.
    fn listen_addresses(&self) -> Vec<(String, SocketAddr)> {
        let mut addrs: Vec<(String, SocketAddr)> = self
            .smtp
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("smtp.listener[{i}].address"), l.address))
            .collect();
        addrs.push(("cluster.listen".into(), self.cluster.listen));
        addrs.push(("admin.listen".into(), self.admin.listen));
        addrs.push(("http.listen".into(), self.http.listen));
        addrs
    }
}
