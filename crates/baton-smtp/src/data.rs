//! Message body transfer: [`DataDecoder`] for DATA (dot-unstuffing, strict `CRLF.CRLF`
//! end, bare CR/LF and line-length policing, size limit), [`BdatDecoder`] for BDAT
//! chunks (RFC 3030, binary-clean), and [`dot_stuff`] for the sending side.
//!
//! Policy, chosen against SMTP smuggling: only `<CRLF>.<CRLF>` ends DATA (the start of
//! the body counts as following a CRLF). A bare CR or LF anywhere marks the message
//! rejected ([`DataError::BareLineEnding`]) but decoding continues to the real end, so
//! the session stays in step with the client.
//!
//! DATA and BDAT share one byte policy (BINARYMIME is not offered, so a BDAT body is
//! text too): bare CR, bare LF and NUL are refused, and so is a line over 1000 bytes
//! including its CRLF, not counting a dot added for transparency (RFC 5321 §4.5.3.1.6).
//! [`LineCheck`] applies it to BDAT chunks, which end by byte count, across chunk
//! boundaries.

/// Longest body line including CRLF (RFC 5321 §4.5.3.1.6).
pub const MAX_DATA_LINE: usize = 1000;

/// The terminator a client writes after a dot-stuffed body.
pub const DATA_END: &[u8] = b".\r\n";

/// Why a received body is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// The body exceeded the size limit (bytes past it were not stored).
    #[error("message too large")]
    TooLarge,
    /// A CR or LF not part of CRLF.
    #[error("bare CR or LF in message")]
    BareLineEnding,
    /// A NUL byte (RFC 5322 §2.3 and §3.5 allow none).
    #[error("NUL byte in message")]
    Nul,
    /// A line over 1000 bytes including CRLF.
    #[error("line too long")]
    LineTooLong,
}

/// What one `feed` call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of input consumed. Less than the input only when `done`.
    pub consumed: usize,
    /// The body is complete.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// After CRLF (or at the start).
    LineStart,
    /// `.` at line start.
    Dot,
    /// `.` CR at line start.
    DotCr,
    /// Inside a line.
    Mid,
    /// After a CR (already emitted) inside a line.
    Cr,
    /// `CRLF.CRLF` seen.
    Done,
}

/// Incremental DATA decoder. Works for input split at any byte.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    st: St,
    line_len: usize,
    size: u64,
    max: u64,
    too_large: bool,
    bare: bool,
    nul: bool,
    long: bool,
}

impl DataDecoder {
    /// A decoder storing at most `max_size` body bytes.
    pub fn new(max_size: u64) -> Self {
        DataDecoder {
            st: St::LineStart,
            line_len: 0,
            size: 0,
            max: max_size,
            too_large: false,
            bare: false,
            nul: false,
            long: false,
        }
    }

    /// Decode `input`, appending body bytes to `out`. Stops right after the terminating
    /// `.CRLF`; the remaining input belongs to the next command.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Progress {
        let mut i = 0;
        while i < input.len() && self.st != St::Done {
            if self.st == St::Mid {
                let rest = &input[i..];
                let n = memchr::memchr3(b'\r', b'\n', 0, rest).unwrap_or(rest.len());
                if n > 0 {
                    self.count(n);
                    self.emit(&rest[..n], out);
                    i += n;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            // A dot at line start is either the end or transparency: not line content.
            if !(self.st == St::LineStart && b == b'.') {
                self.count(1);
            }
            match self.st {
                St::LineStart | St::Mid => match b {
                    b'.' if self.st == St::LineStart => self.st = St::Dot,
                    _ => self.in_line(b, out),
                },
                St::Dot => match b {
                    b'\r' => self.st = St::DotCr,
                    _ => self.in_line(b, out),
                },
                St::DotCr => {
                    if b == b'\n' {
                        self.st = St::Done;
                    } else {
                        self.bare = true;
                        self.emit(b"\r", out);
                        self.in_line(b, out);
                    }
                }
                St::Cr => {
                    if b == b'\n' {
                        self.emit(b"\n", out);
                        self.st = St::LineStart;
                        self.line_len = 0;
                    } else {
                        self.bare = true;
                        self.in_line(b, out);
                    }
                }
                St::Done => {}
            }
        }
        Progress {
            consumed: i,
            done: self.st == St::Done,
        }
    }

    /// A byte inside a line (not a stuffed dot).
    fn in_line(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\r' => self.st = St::Cr,
            b'\n' => {
                self.bare = true;
                self.st = St::Mid;
            }
            0 => {
                self.nul = true;
                self.st = St::Mid;
            }
            _ => self.st = St::Mid,
        }
        self.emit(&[b], out);
    }

    fn count(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > MAX_DATA_LINE {
            self.long = true;
        }
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        // Store exactly the first `max` bytes whatever the chunking.
        let room = self.max.saturating_sub(self.size);
        let fit = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
        out.extend_from_slice(&bytes[..fit]);
        self.size += bytes.len() as u64;
        if self.size > self.max {
            self.too_large = true;
        }
    }

    /// True once `CRLF.CRLF` was seen.
    pub fn is_done(&self) -> bool {
        self.st == St::Done
    }

    /// Body bytes decoded so far (including any not stored).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The verdict, meaningful once done. Size beats bare line endings beats NUL beats
    /// long lines.
    pub fn result(&self) -> Result<(), DataError> {
        if self.too_large {
            Err(DataError::TooLarge)
        } else if self.bare {
            Err(DataError::BareLineEnding)
        } else if self.nul {
            Err(DataError::Nul)
        } else if self.long {
            Err(DataError::LineTooLong)
        } else {
            Ok(())
        }
    }
}

/// DATA's byte policy for a body that arrives without dot-stuffing (BDAT): bare CR,
/// bare LF, NUL and lines over [`MAX_DATA_LINE`] are noted; feed the chunks in order.
#[derive(Debug, Clone, Default)]
pub struct LineCheck {
    cr: bool,
    line_len: usize,
    bare: bool,
    nul: bool,
    long: bool,
}

impl LineCheck {
    /// Scan the next bytes of the body.
    pub fn scan(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let k = memchr::memchr3(b'\r', b'\n', 0, rest).unwrap_or(rest.len());
            if k > 0 {
                self.text(k);
            }
            let Some(&b) = rest.get(k) else { break };
            match b {
                b'\r' => {
                    if self.cr {
                        self.bare = true;
                    }
                    self.cr = true;
                    self.add(1);
                }
                b'\n' if self.cr => {
                    self.cr = false;
                    self.add(1);
                    self.line_len = 0;
                }
                b'\n' => {
                    self.bare = true;
                    self.add(1);
                }
                _ => {
                    self.nul = true;
                    self.text(1);
                }
            }
            rest = &rest[k + 1..];
        }
    }

    /// `n` bytes that are not CR or LF.
    fn text(&mut self, n: usize) {
        if self.cr {
            self.bare = true;
            self.cr = false;
        }
        self.add(n);
    }

    fn add(&mut self, n: usize) {
        self.line_len += n;
        if self.line_len > MAX_DATA_LINE {
            self.long = true;
        }
    }

    /// The verdict for the body scanned so far, as its end: bare line endings beat NUL
    /// beats long lines.
    pub fn result(&self) -> Result<(), DataError> {
        if self.bare || self.cr {
            Err(DataError::BareLineEnding)
        } else if self.nul {
            Err(DataError::Nul)
        } else if self.long {
            Err(DataError::LineTooLong)
        } else {
            Ok(())
        }
    }
}

/// Reads exactly one BDAT chunk. Bytes are stored only if the whole chunk fits in the
/// room given; otherwise the chunk is consumed and discarded and the result is
/// [`DataError::TooLarge`].
#[derive(Debug, Clone)]
pub struct BdatDecoder {
    remaining: u64,
    store: bool,
}

impl BdatDecoder {
    /// A decoder for a chunk of `size` bytes where at most `room` more may be stored.
    pub fn new(size: u64, room: u64) -> Self {
        BdatDecoder {
            remaining: size,
            store: size <= room,
        }
    }

    /// A decoder that consumes `size` bytes and stores nothing (rejected chunks).
    pub fn discard(size: u64) -> Self {
        BdatDecoder {
            remaining: size,
            store: false,
        }
    }

    /// Consume chunk bytes from `input`, appending them to `out` if stored.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Progress {
        let n = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(input.len());
        if self.store {
            out.extend_from_slice(&input[..n]);
        }
        self.remaining -= n as u64;
        Progress {
            consumed: n,
            done: self.remaining == 0,
        }
    }

    /// Bytes of the chunk still expected.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// `Err(TooLarge)` if the chunk did not fit.
    pub fn result(&self) -> Result<(), DataError> {
        if self.store {
            Ok(())
        } else {
            Err(DataError::TooLarge)
        }
    }
}

/// Dot-stuff `body` for DATA and append it to `out`, followed by the `.CRLF` terminator.
/// See [`dot_stuff_body`].
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    dot_stuff_body(body, out);
    out.extend_from_slice(DATA_END);
}

/// Dot-stuff `body` without the terminator: a `.` at line start is doubled, bare CR and
/// bare LF become CRLF (never send what we refuse to receive), and a missing final CRLF
/// is added, so writing [`DATA_END`] next always ends the message correctly.
pub fn dot_stuff_body(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 2);
    let mut line_start = true;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        i += 1;
        match b {
            b'\r' => {
                if body.get(i) == Some(&b'\n') {
                    i += 1;
                }
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            _ => {
                if line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                line_start = false;
            }
        }
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (body, consumed, done, result)
    type Decoded = (Vec<u8>, usize, bool, Result<(), DataError>);

    /// Decode `input` split at every position; all must agree. Returns
    /// (body, consumed, done, result).
    fn decode_all_splits(input: &[u8], max: u64) -> Decoded {
        let whole = decode(input, &[], max);
        for split in 0..=input.len() {
            assert_eq!(
                decode(input, &[split], max),
                whole,
                "split {split} of {input:?}"
            );
        }
        let bytes: Vec<usize> = (1..input.len()).collect();
        assert_eq!(decode(input, &bytes, max), whole, "bytewise {input:?}");
        whole
    }

    fn decode(input: &[u8], cuts: &[usize], max: u64) -> Decoded {
        let mut d = DataDecoder::new(max);
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut start = 0;
        let mut bounds = cuts.to_vec();
        bounds.push(input.len());
        for end in bounds {
            if start >= end || d.is_done() {
                continue;
            }
            let p = d.feed(&input[start..end], &mut out);
            consumed += p.consumed;
            assert!(p.done || p.consumed == end - start);
            start = end;
        }
        (out, consumed, d.is_done(), d.result())
    }

    #[test]
    fn table() {
        use DataError::*;
        let long = [vec![b'x'; 999], b"\r\n.\r\n".to_vec()].concat();
        let ok_long = [vec![b'x'; 998], b"\r\n.\r\n".to_vec()].concat();
        let dot_long = [b"..".to_vec(), vec![b'x'; 997], b"\r\n.\r\n".to_vec()].concat();
        let dot_too_long = [b"..".to_vec(), vec![b'x'; 998], b"\r\n.\r\n".to_vec()].concat();
        type Case<'a> = (&'a [u8], &'a [u8], bool, Result<(), DataError>);
        let cases: Vec<Case> = vec![
            (b".\r\n", b"", true, Ok(())),
            (b"a\r\n.\r\n", b"a\r\n", true, Ok(())),
            (b"a\r\n..b\r\n.\r\nNEXT", b"a\r\n.b\r\n", true, Ok(())),
            (b"..\r\n.\r\n", b".\r\n", true, Ok(())),
            (b"a\r\n.x\r\n.\r\n", b"a\r\nx\r\n", true, Ok(())),
            // smuggling attempts: none of these end the message
            (
                b"a\n.\nb\r\n.\r\n",
                b"a\n.\nb\r\n",
                true,
                Err(BareLineEnding),
            ),
            (
                b"a\r\n.\nb\r\n.\r\n",
                b"a\r\n\nb\r\n",
                true,
                Err(BareLineEnding),
            ),
            (
                b"a\n.\r\nb\r\n.\r\n",
                b"a\n.\r\nb\r\n",
                true,
                Err(BareLineEnding),
            ),
            (
                b"a\r.\r\nb\r\n.\r\n",
                b"a\r.\r\nb\r\n",
                true,
                Err(BareLineEnding),
            ),
            (
                b"a\r\n.\rb\r\n.\r\n",
                b"a\r\n\rb\r\n",
                true,
                Err(BareLineEnding),
            ),
            (
                b"a\r\n.\r\r\n.\r\n",
                b"a\r\n\r\r\n",
                true,
                Err(BareLineEnding),
            ),
            (b"a\rb\r\n.\r\n", b"a\rb\r\n", true, Err(BareLineEnding)),
            (b"\n.\r\n", b"\n.\r\n", false, Ok(())),
            (b"a\r\n.\n", b"a\r\n\n", false, Ok(())),
            (b"a\r\n", b"a\r\n", false, Ok(())),
            (&long, &long[..1001], true, Err(LineTooLong)),
            (&ok_long, &ok_long[..1000], true, Ok(())),
            // A 998-octet line starting with a dot travels as 999 octets + CRLF: the
            // transparency dot does not count (RFC 5321 §4.5.3.1.6).
            (&dot_long, &dot_long[1..1001], true, Ok(())),
            (
                &dot_too_long,
                &dot_too_long[1..1002],
                true,
                Err(LineTooLong),
            ),
            (b"a\0b\r\n.\r\n", b"a\0b\r\n", true, Err(Nul)),
            (b"\0\r\n.\r\n", b"\0\r\n", true, Err(Nul)),
            (b".\0\r\n.\r\n", b"\0\r\n", true, Err(Nul)),
            (b"a\r\0\r\n.\r\n", b"a\r\0\r\n", true, Err(BareLineEnding)),
        ];
        for (input, body, done, result) in cases {
            let (out, consumed, d, r) = decode_all_splits(input, 1 << 20);
            assert_eq!(out, body, "{input:?}");
            assert_eq!(d, done, "{input:?}");
            if done {
                assert_eq!(r, result, "{input:?}");
                let end = input
                    .windows(5)
                    .position(|w| w == b"\r\n.\r\n")
                    .map_or(3, |p| p + 5);
                assert_eq!(consumed, end, "{input:?}");
            } else {
                assert_eq!(consumed, input.len());
                // The bare-ending flag is already set even before the end.
                if body.contains(&b'\n') && !body.ends_with(b"\r\n") {
                    assert_eq!(r, Err(BareLineEnding));
                }
            }
        }
    }

    #[test]
    fn too_large() {
        let (out, _, done, r) = decode_all_splits(b"abc\r\ndef\r\n.\r\n", 6);
        assert!(done);
        assert_eq!(r, Err(DataError::TooLarge));
        assert_eq!(out, b"abc\r\nd");
        let (_, _, done, r) = decode_all_splits(b"abc\r\n.\r\n", 5);
        assert!(done);
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn bdat() {
        let mut d = BdatDecoder::new(5, 10);
        let mut out = Vec::new();
        assert_eq!(
            d.feed(b"ab", &mut out),
            Progress {
                consumed: 2,
                done: false
            }
        );
        assert_eq!(
            d.feed(b"c\nefg", &mut out),
            Progress {
                consumed: 3,
                done: true
            }
        );
        assert_eq!(out, b"abc\ne");
        assert_eq!(d.result(), Ok(()));
        let mut d = BdatDecoder::new(5, 4);
        let mut out = Vec::new();
        assert!(d.feed(b"abcdef", &mut out).done);
        assert!(out.is_empty());
        assert_eq!(d.result(), Err(DataError::TooLarge));
        let mut d = BdatDecoder::new(0, 0);
        assert_eq!(
            d.feed(b"x", &mut out),
            Progress {
                consumed: 0,
                done: true
            }
        );
    }

    /// Scan `body` split at every position; all splits must agree.
    fn check_all_splits(body: &[u8]) -> Result<(), DataError> {
        let mut whole = LineCheck::default();
        whole.scan(body);
        for split in 0..=body.len() {
            let mut c = LineCheck::default();
            c.scan(&body[..split]);
            c.scan(&body[split..]);
            assert_eq!(c.result(), whole.result(), "split {split} of {body:?}");
        }
        whole.result()
    }

    #[test]
    fn line_check_table() {
        use DataError::*;
        let ok_long = [vec![b'x'; 998], b"\r\n".to_vec()].concat();
        let long = [vec![b'x'; 999], b"\r\n".to_vec()].concat();
        let cases: [(&[u8], Result<(), DataError>); 12] = [
            (b"", Ok(())),
            (b"a\r\nb\r\n", Ok(())),
            (b"a\r\n\r\nbody\r\n", Ok(())),
            (b"a\nb\r\n", Err(BareLineEnding)),
            (b"a\rb\r\n", Err(BareLineEnding)),
            (b"a\r\r\n", Err(BareLineEnding)),
            (b"a\r", Err(BareLineEnding)),
            (b"a\0b\r\n", Err(Nul)),
            (b"\0", Err(Nul)),
            (b"a\r\0\r\n", Err(BareLineEnding)),
            (&ok_long, Ok(())),
            (&long, Err(LineTooLong)),
        ];
        for (body, want) in cases {
            assert_eq!(check_all_splits(body), want, "{body:?}");
        }
    }

    #[test]
    fn stuffing_round_trip() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"", b".\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".a\r\n.\r\n", b"..a\r\n..\r\n.\r\n"),
            (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),
            (b"x\n.\n", b"x\r\n..\r\n.\r\n"),
            (b"\r\n", b"\r\n.\r\n"),
        ];
        for (body, wire) in cases {
            let mut out = Vec::new();
            dot_stuff(body, &mut out);
            assert_eq!(out, wire, "{body:?}");
            let (decoded, _, done, r) = decode_all_splits(&out, 1 << 20);
            assert!(done);
            assert_eq!(r, Ok(()));
            let mut norm = Vec::new();
            dot_stuff_body(&decoded, &mut norm);
            let mut again = Vec::new();
            dot_stuff_body(body, &mut again);
            assert_eq!(norm, again);
        }
    }
}
