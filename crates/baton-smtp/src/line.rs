//! Command line reader: accumulates bytes and yields complete lines, bounded by the RFC
//! 5321 §4.5.3.1.4 limit of 1000 bytes including CRLF.
//!
//! Lines end at LF; a CR before it is stripped. (Bare LF is tolerated for *commands*
//! only — it cannot cause message smuggling there. DATA is decoded strictly by
//! [`crate::data::DataDecoder`].)

/// Longest command line including CRLF (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 1000;

/// A line that could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line exceeded the limit; it was discarded up to and including its LF.
    #[error("line too long")]
    TooLong,
}

/// Result of one [`LineReader::read`] call.
#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent {
    /// All input consumed, no complete line yet.
    NeedMore,
    /// A complete line, without CR LF.
    Line(Vec<u8>),
    /// A too-long line ended (and was discarded).
    Error(LineError),
}

/// Incremental line reader. It consumes input only up to the end of the first complete
/// line, so the caller can hand the rest to a different decoder (DATA, BDAT, TLS).
#[derive(Debug)]
pub struct LineReader {
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl Default for LineReader {
    fn default() -> Self {
        Self::new(MAX_COMMAND_LINE)
    }
}

impl LineReader {
    /// A reader for lines of at most `max` bytes including CRLF.
    pub fn new(max: usize) -> Self {
        LineReader {
            buf: Vec::new(),
            max: max.max(2),
            discarding: false,
        }
    }

    /// Bytes of a partial line held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Forget any partial line.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// Consume bytes from `input` up to the end of the first line. Returns how many bytes
    /// were consumed and what was found.
    pub fn read(&mut self, input: &[u8]) -> (usize, LineEvent) {
        let nl = input.iter().position(|&b| b == b'\n');
        let take = nl.map_or(input.len(), |i| i + 1);
        if !self.discarding {
            self.buf.extend_from_slice(&input[..take]);
            // The line so far, counting a CR LF it still needs (or has).
            let len = if nl.is_some() {
                self.buf.len() + usize::from(!self.buf.ends_with(b"\r\n"))
            } else {
                self.buf.len() + 1
            };
            if len > self.max {
                self.buf.clear();
                self.discarding = true;
            }
        }
        if nl.is_none() {
            return (take, LineEvent::NeedMore);
        }
        if self.discarding {
            self.discarding = false;
            return (take, LineEvent::Error(LineError::TooLong));
        }
        let mut line = std::mem::take(&mut self.buf);
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        (take, LineEvent::Line(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], chunks: &[usize]) -> Vec<Result<Vec<u8>, LineError>> {
        let mut r = LineReader::default();
        let mut out = Vec::new();
        let mut start = 0;
        let mut bounds: Vec<usize> = chunks.to_vec();
        bounds.push(input.len());
        for end in bounds {
            let mut part = &input[start..end];
            start = end;
            while !part.is_empty() {
                let (n, ev) = r.read(part);
                part = &part[n..];
                match ev {
                    LineEvent::NeedMore => assert!(part.is_empty()),
                    LineEvent::Line(l) => out.push(Ok(l)),
                    LineEvent::Error(e) => out.push(Err(e)),
                }
            }
        }
        out
    }

    #[test]
    fn every_split() {
        let mut input = b"EHLO a\r\nNOOP\nX\r".to_vec();
        input.extend(vec![b'a'; 996]);
        input.extend(b"\r\n");
        input.extend(vec![b'b'; 1200]);
        input.extend(b"\r\nQUIT\r\n");
        let want = vec![
            Ok(b"EHLO a".to_vec()),
            Ok(b"NOOP".to_vec()),
            Ok([b"X\r".to_vec(), vec![b'a'; 996]].concat()),
            Err(LineError::TooLong),
            Ok(b"QUIT".to_vec()),
        ];
        for split in 0..=input.len() {
            assert_eq!(all(&input, &[split]), want, "split {split}");
        }
    }

    #[test]
    fn exact_limit() {
        let mut ok = vec![b'a'; 998];
        ok.extend(b"\r\n");
        assert_eq!(all(&ok, &[]), vec![Ok(vec![b'a'; 998])]);
        let mut bad = vec![b'a'; 999];
        bad.extend(b"\r\n");
        assert_eq!(all(&bad, &[]), vec![Err(LineError::TooLong)]);
        let mut lf = vec![b'a'; 999];
        lf.push(b'\n');
        assert_eq!(all(&lf, &[]), vec![Err(LineError::TooLong)]);
        // one byte at a time
        let bounds: Vec<usize> = (1..ok.len()).collect();
        assert_eq!(all(&ok, &bounds), vec![Ok(vec![b'a'; 998])]);
        let bounds: Vec<usize> = (1..bad.len()).collect();
        assert_eq!(all(&bad, &bounds), vec![Err(LineError::TooLong)]);
    }
}
