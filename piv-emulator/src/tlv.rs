//! BER-TLV as PIV uses it (ISO 7816-4 / NIST SP 800-73-4 part 2).
//!
//! Tags are one or two bytes (`5F C1 05` style three-byte object identifiers only ever
//! appear as the *value* of a `5C` tag), lengths are short form or `81`/`82`/`83` long
//! form. Parsing distinguishes data that stops early ([`TlvError::Incomplete`]) from data
//! that can never be valid ([`TlvError::Malformed`]).

/// Why a TLV could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlvError {
    /// The input ended before the tag, length or value was complete.
    #[error("TLV data ends early")]
    Incomplete,
    /// The tag or length encoding is not one PIV uses.
    #[error("malformed TLV encoding")]
    Malformed,
}

/// One parsed TLV borrowing its value from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// Tag, one or two bytes, big-endian (`0x7F49`, `0x7C`, `0x53`).
    pub tag: u16,
    /// Value bytes.
    pub value: &'a [u8],
}

/// Parses one TLV from the front of `input`, returning it and the rest.
pub fn parse(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), TlvError> {
    let (&first, rest) = input.split_first().ok_or(TlvError::Incomplete)?;
    let (tag, rest) = if first & 0x1F == 0x1F {
        let (&second, rest) = rest.split_first().ok_or(TlvError::Incomplete)?;
        if second & 0x80 != 0 {
            // Three-byte tags never occur in PIV command or response templates.
            return Err(TlvError::Malformed);
        }
        (u16::from_be_bytes([first, second]), rest)
    } else {
        (u16::from(first), rest)
    };
    let (len, rest) = parse_len(rest)?;
    if rest.len() < len {
        return Err(TlvError::Incomplete);
    }
    let (value, rest) = rest.split_at(len);
    Ok((Tlv { tag, value }, rest))
}

/// Parses a sequence of TLVs that must fill `input` exactly.
pub fn parse_all(mut input: &[u8]) -> Result<Vec<Tlv<'_>>, TlvError> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (tlv, rest) = parse(input)?;
        out.push(tlv);
        input = rest;
    }
    Ok(out)
}

/// Parses exactly one TLV with tag `tag` that fills `input`; returns its value.
pub fn parse_single(input: &[u8], tag: u16) -> Result<&[u8], TlvError> {
    let (tlv, rest) = parse(input)?;
    if tlv.tag != tag || !rest.is_empty() {
        return Err(TlvError::Malformed);
    }
    Ok(tlv.value)
}

/// Finds the first TLV with `tag` among `tlvs`.
pub fn find<'a>(tlvs: &[Tlv<'a>], tag: u16) -> Option<&'a [u8]> {
    tlvs.iter().find(|t| t.tag == tag).map(|t| t.value)
}

/// Encodes `tag` + length + `value`.
pub fn encode(tag: u16, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    write(&mut out, tag, value);
    out
}

/// Appends `tag` + length + `value` to `out`.
pub fn write(out: &mut Vec<u8>, tag: u16, value: &[u8]) {
    if tag > 0xFF {
        out.extend_from_slice(&tag.to_be_bytes());
    } else {
        out.push(tag.to_be_bytes()[1]);
    }
    write_len(out, value.len());
    out.extend_from_slice(value);
}

/// Appends a BER length in its shortest form.
pub fn write_len(out: &mut Vec<u8>, len: usize) {
    let bytes = (len as u32).to_be_bytes();
    match len {
        0..=0x7F => out.push(bytes[3]),
        0x80..=0xFF => out.extend_from_slice(&[0x81, bytes[3]]),
        0x100..=0xFFFF => out.extend_from_slice(&[0x82, bytes[2], bytes[3]]),
        _ => out.extend_from_slice(&[0x83, bytes[1], bytes[2], bytes[3]]),
    }
}

fn parse_len(input: &[u8]) -> Result<(usize, &[u8]), TlvError> {
    let (&first, rest) = input.split_first().ok_or(TlvError::Incomplete)?;
    if first < 0x80 {
        return Ok((usize::from(first), rest));
    }
    let n = usize::from(first & 0x7F);
    if n == 0 || n > 3 {
        return Err(TlvError::Malformed);
    }
    if rest.len() < n {
        return Err(TlvError::Incomplete);
    }
    let len = rest[..n]
        .iter()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    Ok((len, &rest[n..]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn round_trips_lengths_and_tags() {
        for len in [0usize, 1, 0x7F, 0x80, 0xFF, 0x100, 0x1234, 0x10000] {
            let value = vec![0xAB; len];
            for tag in [0x53u16, 0x7F49, 0x5F2F] {
                let enc = encode(tag, &value);
                let (tlv, rest) = parse(&enc).unwrap();
                assert_eq!(tlv.tag, tag);
                assert_eq!(tlv.value.len(), len);
                assert!(rest.is_empty());
            }
        }
    }

    #[test]
    fn incomplete_is_not_malformed() {
        assert_eq!(parse(&[]), Err(TlvError::Incomplete));
        assert_eq!(parse(&[0x53]), Err(TlvError::Incomplete));
        assert_eq!(parse(&[0x53, 0x82, 0x01]), Err(TlvError::Incomplete));
        assert_eq!(parse(&[0x53, 0x03, 1, 2]), Err(TlvError::Incomplete));
        assert_eq!(
            parse(&[0x53, 0x85, 0, 0, 0, 0, 1]),
            Err(TlvError::Malformed)
        );
        assert_eq!(parse(&[0x53, 0x80]), Err(TlvError::Malformed));
    }

    #[test]
    fn parses_template() {
        let data = [0x7C, 0x06, 0x82, 0x00, 0x81, 0x02, 0xAA, 0xBB];
        let inner = parse_single(&data, 0x7C).unwrap();
        let tlvs = parse_all(inner).unwrap();
        assert_eq!(find(&tlvs, 0x82), Some(&[][..]));
        assert_eq!(find(&tlvs, 0x81), Some(&[0xAA, 0xBB][..]));
        assert_eq!(find(&tlvs, 0x85), None);
    }
}
