//! HAProxy PROXY protocol headers, v1 (text) and v2 (binary), as sent by a load balancer
//! before the SMTP conversation. See <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest v1 header including CRLF.
pub const V1_MAX: usize = 107;
/// The v2 signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";

/// The connection endpoints the proxy reports. Both are `None` for v1 `UNKNOWN`, v2
/// `LOCAL` and v2 families other than TCP over IPv4/IPv6: use the socket's own
/// addresses then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client.
    pub source: Option<SocketAddr>,
    /// The address the client connected to.
    pub destination: Option<SocketAddr>,
}

/// A malformed or missing PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The input starts with neither signature.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// A v1 header without CRLF within 107 bytes.
    #[error("PROXY v1 header too long")]
    TooLong,
    /// A v1 header that does not parse.
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    /// A v2 header that does not parse.
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
}

/// Parse a PROXY header at the start of `buf`. `Ok(None)`: need more bytes;
/// `Ok(Some((header, n)))`: the header took the first `n` bytes, the rest is SMTP.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] && n > 0 {
        if n < V2_SIGNATURE.len() {
            return Ok(None);
        }
        return parse_v2(buf);
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        if n < V1_PREFIX.len() {
            return Ok(None);
        }
        return parse_v1(buf);
    }
    Err(ProxyError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::TooLong)
        } else {
            Ok(None)
        };
    };
    let line =
        std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| ProxyError::V1("not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let unknown = ProxyHeader {
        source: None,
        destination: None,
    };
    let header = match parts.first().copied() {
        Some("UNKNOWN") => unknown,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let [_, src, dst, sport, dport] = parts[..] else {
                return Err(ProxyError::V1("wrong number of fields"));
            };
            let ip = |s: &str| -> Result<IpAddr, ProxyError> {
                let ip: IpAddr = s.parse().map_err(|_| ProxyError::V1("bad address"))?;
                if ip.is_ipv4() != (proto == "TCP4") {
                    return Err(ProxyError::V1("address family mismatch"));
                }
                Ok(ip)
            };
            let port = |s: &str| -> Result<u16, ProxyError> {
                if s.is_empty()
                    || s.len() > 5
                    || !s.bytes().all(|b| b.is_ascii_digit())
                    || (s.len() > 1 && s.starts_with('0'))
                {
                    return Err(ProxyError::V1("bad port"));
                }
                s.parse().map_err(|_| ProxyError::V1("bad port"))
            };
            ProxyHeader {
                source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
                destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
            }
        }
        _ => return Err(ProxyError::V1("unknown protocol")),
    };
    Ok(Some((header, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2("unsupported version"));
    }
    let fam = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let total = 16 + len;
    let none = ProxyHeader {
        source: None,
        destination: None,
    };
    match ver_cmd & 0x0f {
        0 => return Ok(Some((none, total))), // LOCAL: health check from the proxy itself
        1 => {}
        _ => return Err(ProxyError::V2("unknown command")),
    }
    let header = match fam {
        0x11 => {
            // TCP over IPv4: src(4) dst(4) sport(2) dport(2); TLVs after are skipped.
            if len < 12 {
                return Err(ProxyError::V2("short IPv4 address block"));
            }
            let ip = |o: usize| Ipv4Addr::new(body[o], body[o + 1], body[o + 2], body[o + 3]);
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(IpAddr::V4(ip(0)), port(8))),
                destination: Some(SocketAddr::new(IpAddr::V4(ip(4)), port(10))),
            }
        }
        0x21 => {
            // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
            if len < 36 {
                return Err(ProxyError::V2("short IPv6 address block"));
            }
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[o..o + 16]);
                Ipv6Addr::from(a)
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(IpAddr::V6(ip(0)), port(32))),
                destination: Some(SocketAddr::new(IpAddr::V6(ip(16)), port(34))),
            }
        }
        // UNSPEC, UDP, UNIX: keep the socket's own addresses.
        _ => none,
    };
    Ok(Some((header, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("test address"))
    }

    #[test]
    fn v1_every_prefix() {
        let input = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\nEHLO x\r\n";
        let hdr_len = 44;
        for cut in 0..hdr_len {
            assert_eq!(parse(&input[..cut]), Ok(None), "cut {cut}");
        }
        let want = ProxyHeader {
            source: sa("192.0.2.1:56324"),
            destination: sa("198.51.100.2:25"),
        };
        assert_eq!(parse(input), Ok(Some((want, hdr_len))));
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
        assert_eq!(
            parse(v6),
            Ok(Some((
                ProxyHeader {
                    source: sa("[2001:db8::1]:1"),
                    destination: sa("[2001:db8::2]:65535")
                },
                v6.len()
            )))
        );
        let unk = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
        assert_eq!(
            parse(unk),
            Ok(Some((
                ProxyHeader {
                    source: None,
                    destination: None
                },
                unk.len()
            )))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n").map(|o| o.map(|x| x.1)),
            Ok(Some(15))
        );
    }

    #[test]
    fn v1_errors() {
        for bad in [
            &b"EHLO x\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let long = [b"PROXY ".to_vec(), vec![b'A'; 120]].concat();
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIGNATURE.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend((body.len() as u16).to_be_bytes());
        v.extend(body);
        v
    }

    #[test]
    fn v2_headers() {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
        body.extend(56324u16.to_be_bytes());
        body.extend(25u16.to_be_bytes());
        body.extend([0x04, 0, 1, 0]); // a TLV to skip
        let mut input = v2(1, 0x11, &body);
        let n = input.len();
        input.extend(b"EHLO x\r\n");
        for cut in 0..n {
            assert_eq!(parse(&input[..cut]), Ok(None), "cut {cut}");
        }
        let want = ProxyHeader {
            source: sa("192.0.2.1:56324"),
            destination: sa("198.51.100.2:25"),
        };
        assert_eq!(parse(&input), Ok(Some((want, n))));

        let mut b6 = Vec::new();
        b6.extend("2001:db8::1".parse::<Ipv6Addr>().expect("ip").octets());
        b6.extend("2001:db8::2".parse::<Ipv6Addr>().expect("ip").octets());
        b6.extend(1u16.to_be_bytes());
        b6.extend(2u16.to_be_bytes());
        let h = v2(1, 0x21, &b6);
        let want = ProxyHeader {
            source: sa("[2001:db8::1]:1"),
            destination: sa("[2001:db8::2]:2"),
        };
        assert_eq!(parse(&h), Ok(Some((want, h.len()))));

        let local = v2(0, 0x00, &[]);
        assert_eq!(
            parse(&local),
            Ok(Some((
                ProxyHeader {
                    source: None,
                    destination: None
                },
                16
            )))
        );
        assert!(parse(&v2(1, 0x11, &[1, 2, 3])).is_err());
        assert!(parse(&v2(2, 0x11, &body)).is_err());
        let mut bad_ver = v2(1, 0x11, &body);
        bad_ver[12] = 0x11;
        assert!(parse(&bad_ver).is_err());
    }
}
