//! `baton-sink`: a real SMTP sink server for end-to-end tests.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use baton_load::rules::Rules;
use baton_load::sink::{SinkConfig, start_sink};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "baton-sink",
    about = "SMTP sink server for Baton end-to-end tests"
)]
struct Args {
    /// Address to listen on (loopback only, port 0 = ephemeral).
    #[arg(long, default_value = "127.0.0.2:2525")]
    listen: SocketAddr,
    /// Write each accepted message to DIR/<seq>.eml (atomically); count only if absent.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Greeting code; anything other than 220 answers `<code> 4.3.2 sink busy` and closes.
    #[arg(long, default_value_t = 220)]
    greeting_code: u16,
    /// Write this file (containing the bound address) once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Host name used in greeting and EHLO reply.
    #[arg(long, default_value = "sink.test")]
    hostname: String,
    /// Log one line per accepted message to stderr.
    #[arg(long)]
    verbose: bool,
    /// Scripted replies (TOML, see cluster/README.md); re-read on SIGHUP.
    /// Also prints one stdout line per rule hit and per accepted message.
    #[arg(long)]
    rules: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        anyhow::bail!("--listen must be a loopback address (127.0.0.0/8 or ::1)");
    }
    if !(200..=599).contains(&args.greeting_code) {
        anyhow::bail!("--greeting-code must be between 200 and 599");
    }
    let mut cfg = SinkConfig::new(args.listen);
    cfg.dir = args.dir;
    cfg.greeting_code = args.greeting_code;
    cfg.hostname = args.hostname;
    cfg.verbose = args.verbose;
    if let Some(path) = &args.rules {
        cfg.rules = Rules::load(path).map_err(anyhow::Error::msg)?;
        cfg.events = true;
    }
    let rule_count = cfg.rules.rules.len();
    // Installed before "listening on" so a test may send SIGHUP right after.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let mut handle = start_sink(cfg)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = handle.local_addr();
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {addr}")?;
        if let Some(path) = &args.rules {
            writeln!(stdout, "rules loaded: {rule_count} from {}", path.display())?;
        }
        stdout.flush()?;
    }
    if let Some(path) = &args.ready_file {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, format!("{addr}\n"))
            .with_context(|| format!("writing {}", PathBuf::from(&tmp).display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("writing ready file {}", path.display()))?;
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Ends with the process; each turn handles one signal.
    loop {
        tokio::select! {
            _ = handle.wait() => anyhow::bail!("accept loop ended"),
            r = &mut ctrl_c => { r?; return Ok(()); }
            _ = hup.recv() => reload(&handle, args.rules.as_deref()),
        }
    }
}

/// SIGHUP: re-read the rules file; on an error the old rules stay.
fn reload(handle: &baton_load::sink::SinkHandle, path: Option<&std::path::Path>) {
    let line = match path {
        None => "rules not reloaded: no --rules file".to_string(),
        Some(path) => match Rules::load(path) {
            Ok(rules) => {
                let n = rules.rules.len();
                handle.set_rules(rules);
                format!("rules reloaded: {n} from {}", path.display())
            }
            Err(e) => format!("rules reload failed (old rules kept): {e}"),
        },
    };
    // The stdout lock is taken after the rules lock was released.
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
