//! Length-prefixed framing: `u32` big-endian length, then the payload.
//!
//! "Incomplete" (more bytes needed) is kept apart from "malformed" (the frame can never
//! be valid): [`decode_frame`] returns `Ok(None)` for the first and an error for the
//! second.

/// Largest payload accepted in either direction: 1 MiB.
pub const MAX_FRAME: usize = 1 << 20;

/// Bytes in the length prefix.
pub const PREFIX_LEN: usize = 4;

/// A frame that can never be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes announced; the limit is {MAX_FRAME} bytes")]
    TooLarge(u64),
}

/// Reads the length prefix at the start of `buf`.
///
/// Returns `Ok(None)` while fewer than four bytes are present, the payload length
/// otherwise, or [`FrameError::TooLarge`] when it exceeds [`MAX_FRAME`].
pub fn payload_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buf.get(..PREFIX_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let len = len as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len as u64));
    }
    Ok(Some(len))
}

/// Splits one frame off the front of `buf`.
///
/// Returns `Ok(Some((payload, consumed)))` when a whole frame is present, `Ok(None)` when
/// more bytes are needed, and an error when the announced length is over the limit (the
/// connection must then be closed: its framing can no longer be trusted).
pub fn decode_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(len) = payload_len(buf)? else {
        return Ok(None);
    };
    let end = PREFIX_LEN + len;
    match buf.get(PREFIX_LEN..end) {
        Some(payload) => Ok(Some((payload, end))),
        None => Ok(None),
    }
}

/// Prefixes `payload` with its length.
///
/// # Panics
/// Never for payloads this crate builds; a payload over `u32::MAX` bytes cannot be
/// framed and is a caller bug (every sender checks [`MAX_FRAME`] first).
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + payload.len());
    #[allow(clippy::expect_used)] // invariant: payloads are checked against MAX_FRAME
    let len = u32::try_from(payload.len()).expect("frame payload over 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let framed = encode_frame(b"{\"id\":1}");
        assert_eq!(&framed[..4], &[0, 0, 0, 8]);
        let (payload, used) = decode_frame(&framed).unwrap().unwrap();
        assert_eq!(payload, b"{\"id\":1}");
        assert_eq!(used, framed.len());
    }

    #[test]
    fn truncated_prefix_and_body_are_incomplete() {
        let framed = encode_frame(b"hello");
        for cut in 0..framed.len() {
            assert_eq!(decode_frame(&framed[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut buf = encode_frame(b"a");
        buf.extend(encode_frame(b"bc"));
        let (first, used) = decode_frame(&buf).unwrap().unwrap();
        assert_eq!(first, b"a");
        let (second, _) = decode_frame(&buf[used..]).unwrap().unwrap();
        assert_eq!(second, b"bc");
    }

    #[test]
    fn oversized_is_refused_from_the_prefix_alone() {
        let limit = (MAX_FRAME as u32).to_be_bytes();
        assert_eq!(
            decode_frame(&limit).unwrap(),
            None,
            "exactly 1 MiB is allowed"
        );
        let over = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert_eq!(
            decode_frame(&over),
            Err(FrameError::TooLarge(MAX_FRAME as u64 + 1))
        );
        let two_gib = 0x8000_0000u32.to_be_bytes();
        assert_eq!(decode_frame(&two_gib), Err(FrameError::TooLarge(1 << 31)));
        assert_eq!(
            decode_frame(&[0xff; 4]),
            Err(FrameError::TooLarge(u32::MAX as u64))
        );
    }

    #[test]
    fn empty_payload_is_a_frame() {
        assert_eq!(decode_frame(&[0, 0, 0, 0]).unwrap(), Some((&b""[..], 4)));
    }
}
