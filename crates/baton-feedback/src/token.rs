//! The bounce token: which message (and which of its recipients) a bounce address or an
//! `X-Baton-Ref` header stands for, with a MAC only the cluster can make.
//!
//! Layout (28 bytes, then base32 — RFC 4648 alphabet, lower case, no padding — 45
//! characters, so `b-TOKEN` fits the 64-character local-part limit):
//!
//! | bytes | what |
//! |---|---|
//! | 0..16 | the message id (a ULID, big-endian) |
//! | 16..18 | the recipient's index in the message (u16 BE), [`WHOLE_MESSAGE`] for all |
//! | 18..28 | the first 10 bytes of HMAC-SHA256(key, [`LABEL`] ‖ bytes 0..18) |

use aws_lc_rs::{constant_time, hmac};

/// The index that names the whole message rather than one recipient.
pub const WHOLE_MESSAGE: u16 = 0xFFFF;
/// Domain separation: this key makes MACs for nothing else.
pub const LABEL: &[u8] = b"baton bounce token v1\0";
/// The key's length (bytes).
pub const KEY_LEN: usize = 32;
/// The MAC bytes kept.
const MAC_LEN: usize = 10;
const RAW_LEN: usize = 16 + 2 + MAC_LEN;
/// The length of a token in characters.
pub const TOKEN_CHARS: usize = (RAW_LEN * 8).div_ceil(5);
/// The prefix of a bounce address's local part.
pub const LOCAL_PREFIX: &str = "b-";
/// The version tag of an `X-Baton-Ref` value (`v1.TOKEN`).
pub const REF_PREFIX: &str = "v1.";
/// The reference header's name.
pub const REF_HEADER: &str = "X-Baton-Ref";

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// What a verified token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// The message id (ULID).
    pub id: ulid::Ulid,
    /// The recipient's index in the message, or [`WHOLE_MESSAGE`].
    pub index: u16,
}

impl Token {
    /// The token of message `id` (a ULID string) for recipient `index`; `None` if `id` is
    /// not a ULID.
    pub fn for_message(id: &str, index: u16) -> Option<Token> {
        Some(Token {
            id: ulid::Ulid::from_string(id).ok()?,
            index,
        })
    }

    /// The recipient index, if the token names one recipient.
    pub fn recipient(&self) -> Option<usize> {
        (self.index != WHOLE_MESSAGE).then_some(usize::from(self.index))
    }

    /// The token's text, signed with `key`.
    pub fn encode(&self, key: &[u8]) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[..16].copy_from_slice(&self.id.0.to_be_bytes());
        raw[16..18].copy_from_slice(&self.index.to_be_bytes());
        let mac = mac(key, &raw[..18]);
        raw[18..].copy_from_slice(&mac.as_ref()[..MAC_LEN]);
        base32(&raw)
    }

    /// The token `text` (either case) stands for, if its MAC is `key`'s.
    pub fn verify(key: &[u8], text: &str) -> Option<Token> {
        let raw = unbase32(text.trim())?;
        let raw: [u8; RAW_LEN] = raw.try_into().ok()?;
        let want = mac(key, &raw[..18]);
        constant_time::verify_slices_are_equal(&want.as_ref()[..MAC_LEN], &raw[18..]).ok()?;
        let id = u128::from_be_bytes(raw[..16].try_into().ok()?);
        let index = u16::from_be_bytes([raw[16], raw[17]]);
        Some(Token {
            id: ulid::Ulid(id),
            index,
        })
    }

    /// The bounce address `b-TOKEN@domain`.
    pub fn address(&self, key: &[u8], domain: &str) -> String {
        format!("{LOCAL_PREFIX}{}@{domain}", self.encode(key))
    }

    /// The `X-Baton-Ref` header line, CRLF included.
    pub fn header(&self, key: &[u8]) -> String {
        format!("{REF_HEADER}: {REF_PREFIX}{}\r\n", self.encode(key))
    }
}

/// A new random key (the leader's, proposed once for the whole cluster).
pub fn new_key() -> Vec<u8> {
    let mut key = vec![0u8; KEY_LEN];
    // The system's generator failing leaves no safe key: none is better than a weak one.
    match aws_lc_rs::rand::fill(&mut key) {
        Ok(()) => key,
        Err(_) => Vec::new(),
    }
}

fn mac(key: &[u8], data: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(LABEL);
    ctx.update(data);
    ctx.sign()
}

/// The token text of a bounce address's local part (`b-TOKEN`, any case), if it has the
/// form (the MAC is not checked).
pub fn local_token(local: &str) -> Option<&str> {
    let prefix = local.get(..LOCAL_PREFIX.len())?;
    prefix
        .eq_ignore_ascii_case(LOCAL_PREFIX)
        .then(|| &local[LOCAL_PREFIX.len()..])
}

/// The token text of an `X-Baton-Ref` value (`v1.TOKEN`).
pub fn ref_token(value: &str) -> Option<&str> {
    let value = value.trim();
    let prefix = value.get(..REF_PREFIX.len())?;
    prefix
        .eq_ignore_ascii_case(REF_PREFIX)
        .then(|| &value[REF_PREFIX.len()..])
}

fn base32(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in data {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Decodes unpadded base32 of either case; `None` for other characters, or trailing bits
/// that are not zero (so each byte string has exactly one spelling per case).
fn unbase32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let v = match c.to_ascii_lowercase() {
            c @ b'a'..=b'z' => c - b'a',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    (bits < 5 && buffer == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn round_trip_and_shape() {
        let t = Token::for_message("01ARZ3NDEKTSV4RRFFQ69G5FAV", 3).unwrap();
        let text = t.encode(&KEY);
        assert_eq!(text.len(), TOKEN_CHARS);
        assert_eq!(TOKEN_CHARS, 45);
        assert!(text.bytes().all(|c| ALPHABET.contains(&c)));
        assert_eq!(Token::verify(&KEY, &text), Some(t));
        assert_eq!(Token::verify(&KEY, &text.to_ascii_uppercase()), Some(t));
        assert_eq!(t.id.to_string(), "01ARZ3NDEKTSV4RRFFQ69G5FAV");
        let addr = t.address(&KEY, "bounces.test");
        assert!(addr.len() - "@bounces.test".len() <= 64);
        assert_eq!(local_token(addr.split('@').next().unwrap()), Some(&*text));
        assert_eq!(local_token("B-abc"), Some("abc"));
        assert_eq!(local_token("x-abc"), None);
        assert_eq!(local_token("b"), None);
        let header = t.header(&KEY);
        let value = header.trim_end().strip_prefix("X-Baton-Ref: ").unwrap();
        assert_eq!(ref_token(value), Some(&*text));
        assert_eq!(t.recipient(), Some(3));
        let whole = Token::for_message("01ARZ3NDEKTSV4RRFFQ69G5FAV", WHOLE_MESSAGE).unwrap();
        assert_eq!(whole.recipient(), None);
    }

    #[test]
    fn refuses_other_keys_and_garbage() {
        let t = Token::for_message("01ARZ3NDEKTSV4RRFFQ69G5FAV", 0).unwrap();
        let text = t.encode(&KEY);
        assert_eq!(Token::verify(&[8; 32], &text), None);
        for bad in ["", "a", "!!!", &text[1..], &format!("{text}a"), "é"] {
            assert_eq!(Token::verify(&KEY, bad), None, "{bad:?}");
        }
        assert_eq!(Token::for_message("not a ulid", 0), None);
        // Non-zero trailing bits are another spelling: refused.
        let mut last = text.clone().into_bytes();
        let l = last.len() - 1;
        last[l] = ALPHABET[(ALPHABET.iter().position(|&c| c == last[l]).unwrap() + 1) % 32];
        assert_eq!(
            Token::verify(&KEY, std::str::from_utf8(&last).unwrap()),
            None
        );
    }

    proptest! {
        #[test]
        fn any_token_round_trips(id in any::<u128>(), index in any::<u16>()) {
            let t = Token { id: ulid::Ulid(id), index };
            prop_assert_eq!(Token::verify(&KEY, &t.encode(&KEY)), Some(t));
        }

        #[test]
        fn any_single_change_is_refused(id in any::<u128>(), index in any::<u16>(),
                                        at in 0usize..TOKEN_CHARS, to in 0usize..32) {
            let t = Token { id: ulid::Ulid(id), index };
            let text = t.encode(&KEY);
            let mut bytes = text.clone().into_bytes();
            prop_assume!(bytes[at] != ALPHABET[to]);
            bytes[at] = ALPHABET[to];
            let changed = String::from_utf8(bytes).unwrap();
            prop_assert_eq!(Token::verify(&KEY, &changed), None);
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,80}") {
            let _ = Token::verify(&KEY, &s);
        }

        #[test]
        fn base32_round_trips(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(unbase32(&base32(&data)), Some(data));
        }
    }
}
