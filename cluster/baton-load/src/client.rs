//! Pieces of an SMTP client shared by the load and chaos tools.

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

pub type Conn = BufReader<TcpStream>;

/// Reads one (possibly multi-line) SMTP reply by `deadline`; returns (code, full text).
pub async fn read_reply(
    conn: &mut Conn,
    line: &mut Vec<u8>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<(u16, String)> {
    let mut text = String::new();
    for _ in 0..1000 {
        line.clear();
        let n = timeout_at(deadline, conn.read_until(b'\n', line))
            .await
            .context("timed out waiting for reply")??;
        if n == 0 {
            bail!("connection closed by server");
        }
        if line.len() < 4 {
            bail!("malformed reply line {:?}", String::from_utf8_lossy(line));
        }
        let code: u16 = std::str::from_utf8(&line[..3])
            .ok()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("malformed reply {:?}", String::from_utf8_lossy(line)))?;
        text.push_str(String::from_utf8_lossy(line).trim_end());
        if line[3] != b'-' {
            return Ok((code, text));
        }
        text.push_str(" / ");
    }
    bail!("reply too long")
}

/// Parses a message size such as `4096`, `4k` or `1M` (at most 50M).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1024),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let n: usize = num.parse().map_err(|e| format!("bad size {s:?}: {e}"))?;
    n.checked_mul(mult)
        .filter(|&v| v <= 50 * 1024 * 1024)
        .ok_or_else(|| format!("size {s:?} too large (max 50M)"))
}
