//! Checks of [`Config::validate`](super::Config::validate) that need more than a line.

use std::net::SocketAddr;
use std::path::Path;

/// Pairs of addresses that cannot both be bound: the same port on the same address, or
/// on a wildcard address and one it covers (`0.0.0.0` covers IPv4; `[::]` covers both,
/// as sockets are dual-stack by default). Port 0 (any free port) never collides. Each
/// problem is named after the later key.
pub(super) fn overlapping_addresses(addrs: &[(String, SocketAddr)]) -> Vec<(String, String)> {
    let covers = |wild: &SocketAddr, other: &SocketAddr| {
        wild.ip().is_unspecified() && (wild.is_ipv6() || other.is_ipv4())
    };
    let mut problems = Vec::new();
    for (j, (key, b)) in addrs.iter().enumerate() {
        for (other, a) in &addrs[..j] {
            if a.port() != 0
                && a.port() == b.port()
                && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
            {
                let how = if a.ip() == b.ip() { "is" } else { "overlaps" };
                problems.push((key.clone(), format!("{b} {how} {other} ({a})")));
                break;
            }
        }
    }
    problems
}

/// `node.data_dir` must be a writable directory, or creatable: its nearest existing
/// ancestor a writable directory. Writability is tried with a probe file (permissions,
/// ACLs, read-only mounts and root all decide it), removed at once.
pub(super) fn check_data_dir(dir: &Path) -> Result<(), String> {
    if dir.as_os_str().is_empty() {
        return Err("must not be empty".into());
    }
    let mut existing = dir;
    let mut missing = false;
    loop {
        match std::fs::metadata(existing) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) if !missing => {
                return Err(format!("{} exists and is not a directory", dir.display()));
            }
            Ok(_) => {
                return Err(format!(
                    "{} cannot be created: {} is not a directory",
                    dir.display(),
                    existing.display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing = true;
                existing = match existing.parent() {
                    Some(p) if p.as_os_str().is_empty() => Path::new("."),
                    Some(p) => p,
                    None => return Err(format!("{} cannot be created", dir.display())),
                };
            }
            Err(e) => return Err(format!("{}: {e}", existing.display())),
        }
    }
    let probe = existing.join(format!(".baton-write-check.{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if missing => Err(format!(
            "{} does not exist and cannot be created in {}: {e}",
            dir.display(),
            existing.display()
        )),
        Err(e) => Err(format!("{} is not writable: {e}", dir.display())),
    }
}

/// `example.com` or `*.example.com`.
pub(super) fn valid_domain_pattern(p: &str) -> bool {
    let d = p.strip_prefix("*.").unwrap_or(p);
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}
