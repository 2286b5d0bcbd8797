//! The test messages both tools send: numbered by an `X-Load-Seq` header so the sink
//! can tell losses from duplicates, sized to the byte, dot-stuffing exercised.

use std::fmt::Write;

/// What varies between runs and tools.
pub struct MessageSpec<'a> {
    /// `load` or `chaos`: in Message-ID and Subject.
    pub tool: &'a str,
    pub run_id: &'a str,
    /// RFC 5322 date for the Date: header.
    pub date: &'a str,
    pub from: &'a str,
    /// Total size in bytes (at least the headers plus one body line).
    pub size: usize,
}

/// Builds message `seq` in wire format (dot-stuffed, with the final `.` line) into `buf`.
pub fn build_message(spec: &MessageSpec<'_>, seq: u64, rcpt: &str, buf: &mut Vec<u8>) {
    buf.clear();
    let mut hdr = String::with_capacity(512);
    let _ = write!(
        hdr,
        "Message-ID: <{tool}.{run}.{seq}@bench.test>\r\n\
         Date: {date}\r\n\
         From: <{from}>\r\n\
         To: <{rcpt}>\r\n\
         Subject: baton-{tool} message {seq}\r\n\
         X-Load-Seq: {seq}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n",
        tool = spec.tool,
        run = spec.run_id,
        date = spec.date,
        from = spec.from,
    );
    buf.extend_from_slice(hdr.as_bytes());
    let mut total = hdr.len();
    // Body: lines of up to 76 printable ASCII chars + CRLF; some start with '.', which
    // exercises dot-stuffing. The last line is shortened so the total hits `size`.
    // Bounded: every line adds at least 3 bytes towards `size`.
    let mut i: u64 = 0;
    while total < spec.size || i == 0 {
        let len = spec.size.saturating_sub(total + 2).clamp(1, 76) as u64;
        let start = seq.wrapping_add(i.wrapping_mul(7)) % 94;
        if 0x21 + start as u8 == b'.' {
            buf.push(b'.');
        }
        for j in 0..len {
            buf.push(0x21 + ((start + j) % 94) as u8);
        }
        buf.extend_from_slice(b"\r\n");
        total += len as usize + 2;
        i += 1;
    }
    buf.extend_from_slice(b".\r\n");
}

/// RFC 5322 date (UTC) for a Unix time: the relay's own formatter.
pub use baton_delivery::date::rfc5322 as rfc5322_date;
