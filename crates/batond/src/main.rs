//! `batond`: the Baton relay daemon. Parses arguments and config, sets up logging and
//! signals, and hands over to `baton_node::run`.

use baton_node::Config;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::sync::watch;

#[derive(Parser)]
#[command(name = "batond", version, about = "Baton clustered SMTP relay")]
struct Args {
    /// Run a complete single-node relay with the embedded development config.
    #[arg(long, conflicts_with = "config")]
    dev: bool,
    /// Data directory for --dev (default ./baton-data).
    #[arg(long, requires = "dev")]
    data_dir: Option<PathBuf>,
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file: exit 0 if it is valid, 2 with the problems if not.
    CheckConfig { file: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Caps glibc's malloc arenas (unless the operator set `MALLOC_ARENA_MAX`). glibc makes
/// up to 8 arenas per core and returns little of their memory; with tokio's worker and
/// blocking threads moving multi-MiB Raft batches, resident memory ratchets far above
/// what is in use (a node joining a cluster with 100,000 queued 4 KiB messages peaked at
/// 1.6 GiB with the default, 0.85 GiB with 2 arenas).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: `mallopt` only sets an allocator tunable and has no memory-safety
    // preconditions; it is called first thing in `main`, before this process starts
    // any thread, so no allocation races with the change.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
    // Log entries and snapshot records are buffers of up to 16 MiB, allocated and freed
    // by the thousand while a node catches up. glibc raises its mmap threshold to the
    // size of the last large block freed (up to 32 MiB), after which such buffers come
    // from the heap and fragment it: a joining node grew past 2 GiB. A fixed threshold
    // keeps them in their own mappings, returned to the system when freed.
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: as above.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let args = Args::parse();
    if let Some(Command::CheckConfig { file }) = &args.command {
        return match Config::load(file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{}: invalid configuration", file.display());
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
                ExitCode::from(2)
            }
        };
    }
    let config = if args.dev {
        let config = Config::dev(args.data_dir.clone());
        if let Err(errors) = config.validate() {
            eprintln!("batond --dev: invalid configuration");
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(2);
        }
        dev_notice();
        config
    } else if let Some(path) = &args.config {
        match Config::load(path) {
            Ok(c) => c,
            Err(errors) => {
                eprintln!("{}: invalid configuration", path.display());
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
                return ExitCode::from(2);
            }
        }
    } else {
        eprintln!("batond: give --dev or --config FILE (see --help)");
        return ExitCode::from(2);
    };
    init_tracing(args.log_format);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("batond: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            let _ = tx.send(true);
        });
        match baton_node::run(config, rx).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("batond: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `--dev` relays for real: say so before anything is sent, and where the setup that
/// keeps mail on this machine is.
fn dev_notice() {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "batond --dev: mail relayed here is delivered to the recipients' real MX hosts on \
         the internet (port 25).\n\
         \x20 To keep everything on this machine, start a local sink (baton-sink) and run \
         `batond --config cluster/examples/local-sink.toml` instead\n\
         \x20 (README, \"Send a test message\")."
    );
}

/// Colour only for a person at a terminal: not into files or pipes, and never with
/// `NO_COLOR` set to anything but "" (<https://no-color.org>).
fn use_colour() -> bool {
    use std::io::IsTerminal as _;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,sled=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(use_colour())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
