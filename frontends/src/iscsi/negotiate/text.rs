//! The key=value text carried by Login and Text PDUs (RFC 7143 section 6.1)
//! and the value encodings of section 5.1: numbers, booleans, lists and
//! binary strings.

use nom::bytes::complete::{tag, take_till};
use nom::sequence::{separated_pair, terminated};
use nom::{IResult, Parser};

/// Longest key name allowed (RFC 7143 section 6.1).
pub const MAX_KEY_LEN: usize = 63;
/// Longest ordinary value in bytes, without its NUL.
pub const MAX_VALUE_LEN: usize = 255;
/// Longest value of a key carrying a large binary value (CHAP challenges
/// and responses, other authentication blobs), encoded.
pub const MAX_LARGE_VALUE_LEN: usize = 8192;

/// Why a key=value text could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// The text does not end with a NUL byte.
    Unterminated,
    /// Two NUL bytes in a row before the end of the text.
    EmptyItem,
    /// An item without `=`.
    MissingEquals,
    /// An item starting with `=`.
    EmptyKey,
    /// A key name longer than [`MAX_KEY_LEN`].
    KeyTooLong,
    /// A key name with characters outside the allowed set.
    BadKey,
    /// A value that is not UTF-8.
    NotUtf8,
    /// A value longer than its limit.
    ValueTooLong,
}

/// Keys whose values may be large binary strings.
fn is_large_value_key(key: &str) -> bool {
    ["CHAP_", "SRP_", "KRB_", "SPKM_"]
        .iter()
        .any(|p| key.starts_with(p))
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_' | b'#')
}

/// Split NUL-terminated `key=value` items. Trailing NUL bytes after the last
/// item are tolerated; anything else malformed is an error. The pairs are
/// returned in the order received; duplicates are not checked here.
pub fn parse_text(text: &[u8]) -> Result<Vec<(&str, &str)>, TextError> {
    let mut pairs = Vec::new();
    match text.last() {
        None => return Ok(pairs),
        Some(0) => {}
        Some(_) => return Err(TextError::Unterminated),
    }
    let end = text.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if end == 0 {
        return Ok(pairs);
    }
    // Keep the NUL that ends the last item, so every item has its own.
    let mut rest = &text[..=end];
    while !rest.is_empty() {
        // Only the `=` can fail to match (the value always finds a NUL):
        // an item that is a bare NUL is empty, anything else lacks `=`.
        let (next, (k, v)) = item(rest).map_err(|_| match rest.first() {
            Some(0) => TextError::EmptyItem,
            _ => TextError::MissingEquals,
        })?;
        rest = next;
        if k.is_empty() {
            return Err(TextError::EmptyKey);
        }
        if k.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong);
        }
        if !k.iter().all(|&b| is_key_byte(b)) {
            return Err(TextError::BadKey);
        }
        let key = std::str::from_utf8(k).map_err(|_| TextError::BadKey)?;
        let value = std::str::from_utf8(v).map_err(|_| TextError::NotUtf8)?;
        let limit = if is_large_value_key(key) {
            MAX_LARGE_VALUE_LEN
        } else {
            MAX_VALUE_LEN
        };
        if value.len() > limit {
            return Err(TextError::ValueTooLong);
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// One item: the key runs to the first `=`, the value from there to the
/// NUL (values may contain `=`, keys may not).
fn item(input: &[u8]) -> IResult<&[u8], (&[u8], &[u8])> {
    terminated(
        separated_pair(
            take_till(|b| b == b'=' || b == 0),
            tag(&b"="[..]),
            take_till(|b| b == 0),
        ),
        tag(&b"\0"[..]),
    )
    .parse(input)
}

/// Append `key=value` and its terminating NUL to `out`.
pub fn format_key(out: &mut Vec<u8>, key: &str, value: &str) {
    out.reserve(key.len() + value.len() + 2);
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

/// A numerical value: decimal digits, or `0x` followed by hex digits.
pub fn parse_number(value: &str) -> Option<u64> {
    let (digits, radix) = match value.get(..2) {
        Some("0x") | Some("0X") => (&value[2..], 16),
        _ => (value, 10),
    };
    if digits.is_empty() || !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// A numerical value inside `min..=max`.
pub fn parse_number_in(value: &str, min: u64, max: u64) -> Option<u64> {
    parse_number(value).filter(|n| (min..=max).contains(n))
}

/// `Yes` or `No`, exactly.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

/// Boolean as sent on the wire.
pub fn bool_text(v: bool) -> &'static str {
    if v {
        "Yes"
    } else {
        "No"
    }
}

/// A comma-separated list with no empty elements.
pub fn parse_list(value: &str) -> Option<Vec<&str>> {
    if value.is_empty() {
        return None;
    }
    let items: Vec<&str> = value.split(',').collect();
    if items.iter().any(|s| s.is_empty()) {
        return None;
    }
    Some(items)
}

fn decode_hex(digits: &[u8]) -> Option<Vec<u8>> {
    if digits.is_empty() {
        return None;
    }
    // An odd number of digits means an implied leading zero.
    if digits.len() % 2 == 1 {
        let mut even = Vec::with_capacity(digits.len() + 1);
        even.push(b'0');
        even.extend_from_slice(digits);
        return hex::decode(even).ok();
    }
    hex::decode(digits).ok()
}

/// Standard base64 with padding; the encoding refuses lengths that are not
/// a multiple of four and non-zero bits left over after the last byte.
fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    data_encoding::BASE64.decode(text).ok()
}

/// A binary value: `0x` + hex digits or `0b` + base64.
pub fn decode_binary(value: &str) -> Option<Vec<u8>> {
    let b = value.as_bytes();
    if b.len() < 3 || b[0] != b'0' {
        return None;
    }
    match b[1] {
        b'x' | b'X' => decode_hex(&b[2..]),
        b'b' | b'B' => decode_base64(&b[2..]),
        _ => None,
    }
}

/// Hex encoding with the `0x` prefix.
pub fn encode_hex(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs_in_order() {
        let p = parse_text(b"A=1\0B=\0C=x=y\0").unwrap();
        assert_eq!(p, vec![("A", "1"), ("B", ""), ("C", "x=y")]);
        assert_eq!(parse_text(b"").unwrap(), vec![]);
        assert_eq!(parse_text(b"A=1\0\0\0").unwrap(), vec![("A", "1")]);
        assert_eq!(parse_text(b"\0").unwrap(), vec![]);
    }

    #[test]
    fn rejects_malformed_text() {
        assert_eq!(parse_text(b"A=1"), Err(TextError::Unterminated));
        assert_eq!(parse_text(b"A=1\0B"), Err(TextError::Unterminated));
        assert_eq!(parse_text(b"A=1\0\0B=2\0"), Err(TextError::EmptyItem));
        assert_eq!(parse_text(b"A\0"), Err(TextError::MissingEquals));
        assert_eq!(parse_text(b"=1\0"), Err(TextError::EmptyKey));
        assert_eq!(parse_text(b"A B=1\0"), Err(TextError::BadKey));
        assert_eq!(parse_text(b"A=\xff\xfe\0"), Err(TextError::NotUtf8));
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert_eq!(parse_text(long_key.as_bytes()), Err(TextError::KeyTooLong));
        let ok_key = format!("{}=1\0", "K".repeat(63));
        assert!(parse_text(ok_key.as_bytes()).is_ok());
        let long_val = format!("A={}\0", "v".repeat(256));
        assert_eq!(
            parse_text(long_val.as_bytes()),
            Err(TextError::ValueTooLong)
        );
        let ok_val = format!("A={}\0", "v".repeat(255));
        assert!(parse_text(ok_val.as_bytes()).is_ok());
        let chap = format!("CHAP_C=0x{}\0", "ab".repeat(1024));
        assert!(parse_text(chap.as_bytes()).is_ok());
    }

    #[test]
    fn numbers_booleans_lists() {
        assert_eq!(parse_number("262144"), Some(262144));
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number("007"), Some(7));
        assert_eq!(parse_number("+5"), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("12a"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
        assert_eq!(parse_number_in("511", 512, 1024), None);
        assert_eq!(parse_bool("Yes"), Some(true));
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(parse_list("CRC32C,None"), Some(vec!["CRC32C", "None"]));
        assert_eq!(parse_list("CRC32C,,None"), None);
        assert_eq!(parse_list(""), None);
    }

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x0102ff"), Some(vec![1, 2, 255]));
        assert_eq!(decode_binary("0X102"), Some(vec![1, 2]));
        assert_eq!(decode_binary("0bAQL/"), Some(vec![1, 2, 255]));
        assert_eq!(decode_binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(decode_binary("0bAQ=="), Some(vec![1]));
        assert_eq!(decode_binary("0bAR=="), None);
        assert_eq!(decode_binary("0bAQ="), None);
        assert_eq!(decode_binary("0x"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("1234"), None);
        assert_eq!(encode_hex(&[0, 0xab, 0x10]), "0x00ab10");
        let mut out = Vec::new();
        format_key(&mut out, "A", "b");
        assert_eq!(out, b"A=b\0");
    }
}
