//! The black-box test harness: starts real processes on 127.0.0.0/8 and waits for
//! readiness signals and counts, never for fixed times.
//!
//! - [`Dns`] — dnsmasq serving MX/A records for the test's domains;
//! - [`Sink`] — `baton-sink`, a real SMTP server that writes each message to a directory;
//! - [`Node`] — `batond` with a generated config, ready when `/readyz` says 200;
//! - [`Smtp`] — a line-level SMTP client for transcript tests (raw bytes allowed);
//! - [`wait_until`] — bounded polling for a condition;
//! - [`TestCa`] — a CA issuing certificates into a directory;
//! - `ops` — `batonctl` against a node ([`ctl`], [`ctl_json`], [`events`]), password
//!   hashes, scripted receivers' replies and per-second counts.
//!
//! Binaries are found next to the test executable (`target/<profile>/`); `cargo test
//! --workspace` builds them because their packages have integration tests.

mod ca;
mod ops;
pub use ca::TestCa;
pub use ops::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built alongside the tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the workspace first (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// A port that was free a moment ago on 127.0.0.1 (TCP and UDP: dnsmasq needs both).
///
/// Taken below Linux's ephemeral range (32768 and up), from a counter this process
/// owns: a port the kernel picked for `bind(0)` can be handed out again as the source
/// port of an outgoing connection before the test's server binds it, and two tests
/// asking at once could get the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 600) * 20;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        let tcp = TcpListener::bind(("127.0.0.1", port));
        let udp = UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL now and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (bounded) for exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if start.elapsed() > timeout {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ------------------------------------------------------------------ DNS

/// A dnsmasq instance answering for the test's zone only.
pub struct Dns {
    pub addr: SocketAddr,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

/// Records for [`Dns::start`].
#[derive(Default, Clone)]
pub struct Zone {
    lines: Vec<String>,
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }
    /// `domain MX pref host`.
    pub fn mx(mut self, domain: &str, pref: u16, host: &str) -> Zone {
        self.lines.push(format!("mx-host={domain},{host},{pref}"));
        self
    }
    /// `host A ip`.
    pub fn a(mut self, host: &str, ip: &str) -> Zone {
        self.lines.push(format!("host-record={host},{ip}"));
        self
    }
    /// `name TXT "text"` (one string; `text` without double quotes).
    pub fn txt(mut self, name: &str, text: &str) -> Zone {
        self.lines.push(format!("txt-record={name},\"{text}\""));
        self
    }
    /// `name TXT "s1" "s2" ...`: each string at most 255 bytes, without `"` or `\\`.
    pub fn txt_strings(mut self, name: &str, strings: &[String]) -> Zone {
        let quoted: Vec<String> = strings.iter().map(|s| format!("\"{s}\"")).collect();
        self.lines
            .push(format!("txt-record={name},{}", quoted.join(",")));
        self
    }
    /// A null MX (RFC 7505): `domain MX 0 .`.
    pub fn null_mx(mut self, domain: &str) -> Zone {
        self.lines.push(format!("dns-rr={domain},15,000000"));
        self
    }
}

impl Dns {
    pub fn start(zone: &Zone) -> Dns {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("dnsmasq.conf");
        let mut text = format!(
            "port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\nuser=root\n\
             local=/test/\npid-file=\nlog-facility=-\n"
        );
        for l in &zone.lines {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&conf, text).expect("write dnsmasq.conf");
        let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("dnsmasq not installed: apt-get install dnsmasq-base (or run .ci/run)");
        let proc = Proc::spawn(
            "dnsmasq",
            Command::new(dnsmasq)
                .arg("--keep-in-foreground")
                .arg(format!("--conf-file={}", conf.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_until("dnsmasq to answer", Duration::from_secs(10), || {
            dns_probe(addr).then_some(())
        });
        Dns {
            addr,
            _proc: proc,
            _dir: dir,
        }
    }
}

/// Sends one A query for `probe.test` and waits briefly for any answer.
fn dns_probe(addr: SocketAddr) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["probe", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if sock.send_to(&q, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(sock.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[0] == 0x12 && buf[1] == 0x34)
}

// ------------------------------------------------------------------ sink

/// A `baton-sink` process writing messages into its directory.
pub struct Sink {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    proc: Proc,
    /// With rules: the rules file and the sink's stdout (event lines).
    rules: Option<(PathBuf, PathBuf)>,
    _tmp: tempfile::TempDir,
}

impl Sink {
    pub fn start(addr: SocketAddr) -> Sink {
        Sink::start_with(addr, 220)
    }

    /// A sink whose greeting has `greeting_code` (e.g. 421 for a busy primary MX).
    pub fn start_with(addr: SocketAddr, greeting_code: u16) -> Sink {
        Sink::spawn(addr, greeting_code, None)
    }

    /// A sink scripted by `rules` (the TOML of `baton-sink --rules`, see
    /// cluster/README.md); its event lines are kept for [`Sink::events`].
    pub fn start_with_rules(addr: SocketAddr, rules: &str) -> Sink {
        Sink::spawn(addr, 220, Some(rules))
    }

    fn spawn(addr: SocketAddr, greeting_code: u16, rules: Option<&str>) -> Sink {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("mail");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let ready = tmp.path().join("ready");
        let mut cmd = Command::new(bin("baton-sink"));
        cmd.arg("--listen")
            .arg(addr.to_string())
            .arg("--dir")
            .arg(&dir)
            .arg("--greeting-code")
            .arg(greeting_code.to_string())
            .arg("--ready-file")
            .arg(&ready);
        let rules = rules.map(|text| {
            let path = tmp.path().join("rules.toml");
            std::fs::write(&path, text).expect("write rules");
            // A file, not a pipe: the sink never blocks on an unread stdout.
            let log = tmp.path().join("events.log");
            let out = std::fs::File::create(&log).expect("events log");
            cmd.arg("--rules").arg(&path).stdout(out);
            (path, log)
        });
        if rules.is_none() {
            cmd.stdout(Stdio::null());
        }
        let proc = Proc::spawn("baton-sink", &mut cmd);
        wait_until("baton-sink to listen", Duration::from_secs(10), || {
            ready.exists().then_some(())
        });
        Sink {
            addr,
            dir,
            proc,
            rules,
            _tmp: tmp,
        }
    }

    /// The sink's stdout lines so far (`hit rule=<i> stage=<s> code=<c> t=<ms> ...`,
    /// `accepted seq=<n> t=<ms>`, `rules reloaded: ...`); empty without rules.
    pub fn events(&self) -> Vec<String> {
        self.rules
            .as_ref()
            .and_then(|(_, log)| std::fs::read_to_string(log).ok())
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Unix-millisecond times of the accepted messages (from the event lines).
    pub fn accepted_times_ms(&self) -> Vec<u64> {
        self.events()
            .iter()
            .filter(|l| l.starts_with("accepted "))
            .filter_map(|l| event_time(l))
            .collect()
    }

    /// Unix-millisecond times of the hits of rule `index` (0-based, file order).
    pub fn hit_times_ms(&self, index: usize) -> Vec<u64> {
        let prefix = format!("hit rule={index} ");
        self.events()
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| event_time(l))
            .collect()
    }

    /// Replace the rules (e.g. lift a rate limit): rewrites the file, sends SIGHUP
    /// and waits for the sink's `rules reloaded` line. Panics if the sink refuses them.
    pub fn set_rules(&self, rules: &str) {
        let (path, _) = self.rules.as_ref().expect("a sink started with rules");
        let reloads = |s: &Sink| {
            s.events()
                .iter()
                .filter(|l| l.starts_with("rules reload"))
                .count()
        };
        let before = reloads(self);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, rules).expect("write rules");
        std::fs::rename(&tmp, path).expect("rename rules");
        let _ = Command::new("kill")
            .arg("-HUP")
            .arg(self.proc.pid().to_string())
            .status();
        let line = wait_until(
            "baton-sink to reload its rules",
            Duration::from_secs(10),
            || {
                self.events()
                    .into_iter()
                    .filter(|l| l.starts_with("rules reload"))
                    .nth(before)
            },
        );
        assert!(line.starts_with("rules reloaded: "), "{line}");
    }

    /// The messages received so far, oldest first.
    pub fn messages(&self) -> Vec<SinkMessage> {
        let mut files: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        });
        files
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .map(SinkMessage::parse)
            .collect()
    }

    /// Waits until at least `n` messages arrived; returns them.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<SinkMessage> {
        wait_until(
            &format!("{n} message(s) at sink {}", self.addr),
            timeout,
            || {
                let m = self.messages();
                (m.len() >= n).then_some(m)
            },
        )
    }

    pub fn stop(&mut self) {
        self.proc.kill();
    }
}

/// The `t=<ms>` field of a sink event line.
fn event_time(line: &str) -> Option<u64> {
    line.split(' ')
        .find_map(|f| f.strip_prefix("t="))
        .and_then(|t| t.parse().ok())
}

/// One message as the sink stored it.
#[derive(Debug, Clone)]
pub struct SinkMessage {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The message as delivered (headers and body).
    pub data: String,
}

impl SinkMessage {
    fn parse(raw: Vec<u8>) -> SinkMessage {
        let text = String::from_utf8_lossy(&raw).into_owned();
        let mut mail_from = String::new();
        let mut rcpts = Vec::new();
        let mut rest = text.as_str();
        while let Some((line, after)) = rest.split_once('\n') {
            let line = line.trim_end_matches('\r');
            if let Some(v) = line.strip_prefix("X-Sink-Mail-From:") {
                mail_from = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("X-Sink-Rcpt-To:") {
                rcpts.push(v.trim().to_string());
            } else if !line.starts_with("X-Sink-") {
                break;
            }
            rest = after;
        }
        SinkMessage {
            mail_from,
            rcpts,
            data: rest.to_string(),
        }
    }

    /// A header's value, folded lines joined with a space.
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        let mut value: Option<String> = None;
        for line in self.data.lines() {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                break;
            }
            match &mut value {
                Some(v) if line.starts_with([' ', '\t']) => {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                Some(_) => break,
                None if line.to_ascii_lowercase().starts_with(&prefix) => {
                    value = Some(line[prefix.len()..].trim().to_string());
                }
                None => {}
            }
        }
        value
    }
}

// ------------------------------------------------------------------ batond

/// Ports and paths of one node.
pub struct Node {
    pub id: u64,
    pub smtp: SocketAddr,
    pub http: SocketAddr,
    pub raft: SocketAddr,
    /// The admin gRPC API.
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub proc: Option<Proc>,
    pub stderr_path: PathBuf,
    /// The network namespace it runs in, if not ours.
    pub netns: Option<String>,
    _tmp: tempfile::TempDir,
}

/// Network namespaces for partition tests (Linux `ip netns`, needs root): a hub
/// namespace with two bridges, and per node a namespace joined to both by veth pairs —
/// the *mail* network (SMTP, HTTP, the sink; 127.100.0.0/24) and the *cluster* network
/// (Raft; 127.101.0.0/24). Cutting a node's cluster link partitions it from its peers
/// while clients and the sink still reach it. Addresses stay in 127.0.0.0/8
/// (`route_localnet`), and no link leads out of the machine. Removed on drop.
pub struct Net {
    pub hub: String,
    pub prefix: String,
    nodes: usize,
    /// Created here (and so removed on drop), or attached to.
    owned: bool,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// The mail address of node `k` (1-based) and of the hub (the sink, the test).
    pub fn mail_ip(k: usize) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(127, 100, 0, k as u8)
    }
    pub fn cluster_ip(k: usize) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(127, 101, 0, k as u8)
    }
    pub const HUB_MAIL: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 100, 0, 254);

    pub fn create(nodes: usize) -> Result<Net, String> {
        let prefix = format!("bt{}", std::process::id());
        let net = Net {
            hub: format!("{prefix}h"),
            prefix,
            nodes,
            owned: true,
        };
        net.setup()?;
        Ok(net)
    }

    /// The namespaces another process created with [`Net::create`].
    pub fn attach(prefix: &str, nodes: usize) -> Net {
        Net {
            hub: format!("{prefix}h"),
            prefix: prefix.to_string(),
            nodes,
            owned: false,
        }
    }

    pub fn ns(&self, k: usize) -> String {
        format!("{}n{k}", self.prefix)
    }

    fn prepare(ns: &str) -> Result<(), String> {
        ip(&["netns", "add", ns])?;
        ip(&[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.route_localnet=1",
            "net.ipv4.conf.default.route_localnet=1",
        ])?;
        // Only 127.0.0.1 is local here, so the rest of 127/8 can be routed to links.
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "addr", "del", "127.0.0.1/8", "dev", "lo"])?;
        ip(&["-n", ns, "addr", "add", "127.0.0.1/32", "dev", "lo"])
    }

    fn setup(&self) -> Result<(), String> {
        let hub = self.hub.as_str();
        Net::prepare(hub)?;
        for (br, addr) in [("brm", "127.100.0.254/24"), ("brc", "127.101.0.254/24")] {
            ip(&["-n", hub, "link", "add", br, "type", "bridge"])?;
            ip(&["-n", hub, "addr", "add", addr, "dev", br])?;
            ip(&["-n", hub, "link", "set", br, "up"])?;
        }
        for k in 1..=self.nodes {
            let ns = self.ns(k);
            Net::prepare(&ns)?;
            for (net, br, addr) in [
                ("m", "brm", Net::mail_ip(k)),
                ("c", "brc", Net::cluster_ip(k)),
            ] {
                let outer = format!("{net}{k}");
                let inner = format!("eth-{net}");
                ip(&[
                    "link", "add", "name", &outer, "netns", hub, "type", "veth", "peer", "name",
                    &inner, "netns", &ns,
                ])?;
                ip(&["-n", hub, "link", "set", &outer, "master", br, "up"])?;
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    &inner,
                ])?;
                ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            }
        }
        Ok(())
    }

    /// Cuts node `k` off the cluster network.
    pub fn cut(&self, k: usize) {
        ip(&["-n", &self.hub, "link", "set", &format!("c{k}"), "down"]).expect("cut");
    }

    pub fn heal(&self, k: usize) {
        ip(&["-n", &self.hub, "link", "set", &format!("c{k}"), "up"]).expect("heal");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        for k in 1..=self.nodes {
            let _ = ip(&["netns", "del", &self.ns(k)]);
        }
        let _ = ip(&["netns", "del", &self.hub]);
    }
}

/// What a test may change in the generated config.
pub struct NodeOptions {
    pub dns: Option<SocketAddr>,
    pub mx_port: u16,
    pub smarthost: Option<SocketAddr>,
    /// Extra TOML for `[[smtp.listener]]` (after `address`).
    pub listener: String,
    /// Extra TOML appended to `[smtp]`.
    pub smtp: String,
    /// Extra TOML appended at the end (e.g. `[[smtp.user]]` tables).
    pub tail: String,
    pub retry_intervals: String,
    pub max_age: String,
    /// `[delivery] tls`.
    pub tls: String,
    /// Extra TOML appended to `[delivery]`.
    pub delivery: String,
    /// `[node] id`.
    pub id: u64,
    /// `[cluster] bootstrap`.
    pub bootstrap: bool,
    /// `[cluster] join`: Raft addresses of seeds.
    pub join: Vec<SocketAddr>,
    /// Extra TOML appended to `[cluster]`.
    pub cluster: String,
    /// `[cluster] listen` and `advertise` (default: a free port on 127.0.0.1), for tests
    /// that must know every node's address before any starts.
    pub raft: Option<SocketAddr>,
    /// The host in `[cluster] advertise` (with the Raft port), instead of the Raft
    /// listen address's IP: e.g. `localhost`, for a certificate naming a DNS name.
    pub advertise_host: Option<String>,
    /// Run inside a network namespace of a [`Net`]: (namespace, mail address for SMTP
    /// and HTTP, cluster address for Raft).
    pub netns: Option<(String, std::net::Ipv4Addr, std::net::Ipv4Addr)>,
    /// `[admin] token`.
    pub admin_token: Option<String>,
    /// `[admin] tls_cert`, `tls_key`.
    pub admin_tls: Option<(PathBuf, PathBuf)>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            dns: None,
            mx_port: 25,
            smarthost: None,
            listener: "relay_networks = [\"127.0.0.0/8\"]".into(),
            smtp: String::new(),
            tail: String::new(),
            retry_intervals: "[\"1s\"]".into(),
            max_age: "1h".into(),
            tls: "opportunistic".into(),
            delivery: String::new(),
            id: 1,
            bootstrap: true,
            join: Vec::new(),
            cluster: String::new(),
            raft: None,
            advertise_host: None,
            netns: None,
            admin_token: None,
            admin_tls: None,
        }
    }
}

impl Node {
    /// Starts a node and waits until it is ready.
    pub fn start(opts: NodeOptions) -> Node {
        let mut node = Node::start_unready(opts);
        node.wait_ready();
        node
    }

    /// Starts a node without waiting for readiness (one that waits to be added).
    pub fn start_unready(opts: NodeOptions) -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (smtp, http, admin, raft): (SocketAddr, SocketAddr, u16, SocketAddr) = match &opts.netns
        {
            // A namespace of its own: the contract's ports are free there.
            Some((_, mail, cluster)) => (
                (*mail, 2525).into(),
                (*mail, 9401).into(),
                7401,
                (*cluster, 7301).into(),
            ),
            None => (
                format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
                format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
                free_port(),
                opts.raft
                    .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()).parse().expect("addr")),
            ),
        };
        let admin_addr: SocketAddr = match &opts.netns {
            Some((_, mail, _)) => (*mail, admin).into(),
            None => ([127, 0, 0, 1], admin).into(),
        };
        let data_dir = tmp.path().join("data");
        let dns = opts
            .dns
            .map(|d| format!("dns_servers = [\"{d}\"]"))
            .unwrap_or_default();
        let smarthost = opts
            .smarthost
            .map(|s| format!("smarthost = \"{s}\""))
            .unwrap_or_default();
        let config = format!(
            r#"
[node]
id = {id}
data_dir = "{data}"

[cluster]
listen = "{raft}"
advertise = "{advertise}"
bootstrap = {bootstrap}
join = [{join}]
{cluster_extra}

[smtp]
hostname = "relay.baton.test"
{smtp_extra}

[[smtp.listener]]
address = "{smtp}"
{listener}

[delivery]
{dns}
{smarthost}
mx_port = {mx_port}
tls = "{tls}"
retry_intervals = {retry}
max_age = "{max_age}"
connect_timeout = "2s"
{delivery_extra}

[admin]
listen = "{admin_addr}"
token = "{admin_token}"
{admin_tls}

[http]
listen = "{http}"
{tail}
"#,
            data = data_dir.display(),
            id = opts.id,
            bootstrap = opts.bootstrap,
            advertise = match &opts.advertise_host {
                Some(host) => format!("{host}:{}", raft.port()),
                None => raft.to_string(),
            },
            cluster_extra = opts.cluster,
            join = opts
                .join
                .iter()
                .map(|j| format!("\"{j}\""))
                .collect::<Vec<_>>()
                .join(", "),
            smtp_extra = opts.smtp,
            listener = opts.listener,
            mx_port = opts.mx_port,
            retry = opts.retry_intervals,
            max_age = opts.max_age,
            tls = opts.tls,
            delivery_extra = opts.delivery,
            tail = opts.tail,
            admin_token = opts.admin_token.as_deref().unwrap_or(""),
            admin_tls = opts
                .admin_tls
                .as_ref()
                .map(|(c, k)| format!(
                    "tls_cert = \"{}\"\ntls_key = \"{}\"",
                    c.display(),
                    k.display()
                ))
                .unwrap_or_default(),
        );
        let config_path = tmp.path().join("baton.toml");
        std::fs::write(&config_path, config).expect("write config");
        let stderr_path = tmp.path().join("batond.log");
        let mut node = Node {
            netns: opts.netns.as_ref().map(|n| n.0.clone()),
            id: opts.id,
            smtp,
            http,
            raft,
            admin: admin_addr,
            config_path,
            data_dir,
            proc: None,
            stderr_path,
            _tmp: tmp,
        };
        node.spawn();
        node
    }

    /// (Re)starts the process on the same config and data, and waits for readiness.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("log file");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("batond"));
                c
            }
            None => Command::new(bin("batond")),
        };
        let proc = Proc::spawn(
            "batond",
            cmd.arg("--config")
                .arg(&self.config_path)
                .env("BATON_LOG", "info,openraft=warn")
                .stdout(Stdio::null())
                .stderr(log),
        );
        self.proc = Some(proc);
    }

    /// Waits until `/readyz` answers 200; panics if the process exits first.
    pub fn wait_ready(&mut self) {
        let http = self.http;
        let log = self.stderr_path.clone();
        let mut tries = 0;
        wait_until("batond /readyz", Duration::from_secs(60), || {
            tries += 1;
            if let Some(p) = self.proc.as_mut()
                && !p.is_running()
            {
                panic!(
                    "batond exited during start:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            (http_get(http, "/readyz").map(|(code, _)| code) == Some(200)).then_some(())
        });
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    pub fn metrics(&self) -> String {
        http_get(self.http, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// A metric's value (the first sample whose name matches exactly, labels ignored).
    pub fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics(), name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn smtp(&self) -> Smtp {
        Smtp::connect(self.smtp)
    }
}

/// The value of the first sample of `name` in Prometheus text, 0 if absent.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let base = key.split('{').next()?;
            (base == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

// ------------------------------------------------------------------ SMTP client

/// A line-level SMTP client for transcripts.
pub struct Smtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Smtp {
    pub fn connect(addr: SocketAddr) -> Smtp {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Smtp::from_stream(s)
    }

    pub fn from_stream(s: TcpStream) -> Smtp {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        Smtp {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
        }
    }

    /// Reads one (possibly multi-line) reply: (code, full text).
    pub fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(
                n > 0,
                "connection closed while waiting for a reply (so far: {text:?})"
            );
            text.push_str(&line);
            let b = line.as_bytes();
            if b.len() < 4 || b[3] != b'-' {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (code, text);
            }
        }
    }

    /// Whether the server closed (or reset) the connection without another reply.
    pub fn closed(&mut self) -> bool {
        let mut rest = String::new();
        match self.reader.read_line(&mut rest) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write");
    }

    /// Sends a command line and asserts the reply starts with `expect` (e.g. `"250"`,
    /// `"554 5.7.1"`). Returns the reply text.
    pub fn cmd(&mut self, line: &str, expect: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes());
        let (_, text) = self.reply();
        assert!(
            text.starts_with(expect),
            "{line:?}: expected {expect:?}, got {text:?}"
        );
        text
    }

    /// Greeting and EHLO.
    pub fn hello(&mut self) {
        let (code, text) = self.reply();
        assert_eq!(code, 220, "greeting: {text}");
        self.cmd("EHLO client.test", "250");
    }

    /// A whole transaction; returns the final reply text.
    pub fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> String {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250");
        for r in to {
            self.cmd(&format!("RCPT TO:<{r}>"), "250");
        }
        self.cmd("DATA", "354");
        self.send_raw(body.as_bytes());
        self.send_raw(b"\r\n.\r\n");
        self.reply().1
    }
}

/// The queue id in a `250 2.0.0 Ok: queued as <ID>` reply.
pub fn queue_id(reply: &str) -> String {
    reply
        .trim()
        .rsplit(' ')
        .next()
        .expect("queue id")
        .to_string()
}

/// A self-signed certificate for `localhost` written as PEM files in `dir`.
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "relay.baton.test".into()])
            .expect("rcgen");
    let c = dir.join("tls.crt");
    let k = dir.join("tls.key");
    std::fs::write(&c, cert.cert.pem()).expect("write cert");
    std::fs::write(&k, cert.signing_key.serialize_pem()).expect("write key");
    (c, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Sink::start_with_rules`, its event lines and `set_rules` (needs only
    /// the baton-sink binary).
    #[test]
    fn scripted_sink_events_and_reload() {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let gone = "550-5.1.1 The email account that you tried to reach does not exist.\n\
                    550 5.1.1 - gsmtp";
        let rules =
            format!("[[rule]]\nstage = \"rcpt\"\nrcpt = \"gone@*\"\nreply = '''{gone}'''\n");
        let sink = Sink::start_with_rules(addr, &rules);
        let mut c = Smtp::connect(addr);
        c.hello();
        c.cmd("MAIL FROM:<a@src.test>", "250");
        let text = c.cmd("RCPT TO:<gone@dst.test>", "550-5.1.1");
        assert_eq!(text, format!("{}\r\n", gone.replace('\n', "\r\n")));
        c.cmd("RSET", "250");
        let r = c.send_mail("a@src.test", &["ok@dst.test"], "Subject: x\r\n\r\nbody");
        assert!(r.starts_with("250 "), "{r}");
        assert_eq!(sink.hit_times_ms(0).len(), 1);
        assert_eq!(sink.accepted_times_ms().len(), 1);
        sink.wait_for(1, Duration::from_secs(10));

        sink.set_rules("");
        let r = c.send_mail("a@src.test", &["gone@dst.test"], "Subject: y\r\n\r\nbody");
        assert!(r.starts_with("250 "), "{r}");
        assert_eq!(sink.accepted_times_ms().len(), 2);
        assert_eq!(sink.hit_times_ms(0).len(), 1);
    }
}
