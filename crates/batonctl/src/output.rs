//! Printing replies: pretty JSON (`--json`), aligned tables, and the time formats.

use std::time::Duration;

/// Prints `value` as pretty JSON (one document).
pub fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("batonctl: cannot print JSON: {e}"),
    }
}

/// Prints rows as aligned columns under a header.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) {
    for line in table_lines(header, rows) {
        println!("{line}");
    }
}

/// The lines of [`table`]: every column but the last padded to its widest cell (in
/// characters) plus two spaces, trailing space removed.
fn table_lines(header: &[&str], rows: Vec<Vec<String>>) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut out = String::new();
        for (i, (cell, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                out.push_str(&cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut lines = vec![line(header.iter().map(|h| h.to_string()).collect())];
    lines.extend(rows.into_iter().map(line));
    lines
}

/// An age in whole seconds, as `1h 2m 3s`.
pub fn age(seconds: f64) -> String {
    humantime::format_duration(Duration::from_secs(seconds.max(0.0) as u64)).to_string()
}

/// A Unix time in milliseconds as RFC 3339 (UTC, seconds); `-` for 0 (none).
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `s`, or `-` when it is empty.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_the_widest_cell() {
        let rows = vec![
            vec!["example.com".to_string(), "3".to_string(), "x".to_string()],
            vec!["é.org".to_string(), "12345".to_string(), String::new()],
        ];
        assert_eq!(
            table_lines(&["DOMAIN", "QUEUED", "OWNER"], rows),
            [
                "DOMAIN       QUEUED  OWNER",
                "example.com  3       x",
                "é.org        12345",
            ]
        );
    }

    #[test]
    fn times_ages_and_dashes() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_700_000_000_999), "2023-11-14T22:13:20Z");
        assert_eq!(age(-1.0), "0s");
        assert_eq!(age(3723.9), "1h 2m 3s");
        assert_eq!(or_dash(""), "-");
        assert_eq!(or_dash("x"), "x");
    }
}
