//! agent.sock, server side: the frame decoder and the request decoder on arbitrary bytes.
//!
//! - `decode_frame` never panics; `Ok(None)` (incomplete) and `Err` (malformed) agree
//!   with the length prefix; a whole frame re-encodes to the same bytes and every
//!   truncation of it is incomplete, never malformed.
//! - `decode_request` never panics; `malformed` is set exactly when the payload is not
//!   UTF-8 JSON or names a member of an object twice; a decoded `Request` re-encoded with `to_json` decodes to an equal one.
//! - `PinReply::decode` (the answer to a PIN prompt) never panics; a decoded reply has
//!   a PIN of 1 to `MAX_PIN` bytes or is a cancel, re-encodes to a payload that decodes
//!   to the same, and its `Debug` never shows the PIN.
//!
//! The request and PIN-reply decoders run on the frame's payload and also on the whole input, so the
//! fuzzer need not find a matching length prefix to reach it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waxseal_agent::proto::{
    decode_frame, decode_request, encode_frame, ErrorCode, FrameError, PinReply, MAX_FRAME,
    MAX_PIN, PREFIX_LEN,
};

fn check_request(payload: &[u8]) {
    match decode_request(payload) {
        Ok(req) => {
            let json = req.to_json();
            assert!(!json.is_empty(), "to_json failed for {req:?}");
            let again = decode_request(&json).unwrap_or_else(|e| {
                panic!(
                    "re-encoded {req:?} as {:?} does not decode: {e:?}",
                    String::from_utf8_lossy(&json)
                )
            });
            assert_eq!(again, req, "round trip changed the request");
            assert_eq!(again.to_json(), json, "encoding is not stable");
        }
        Err(e) => {
            let is_json = std::str::from_utf8(payload)
                .ok()
                .is_some_and(|t| serde_json::from_str::<serde_json::Value>(t).is_ok());
            // JSON naming a member twice is malformed too (the decoder refuses it). Told
            // by how that message starts: other messages may echo the client's text
            // (regressions/native_frame/op-name-echoes-the-twice-message.json).
            let twice = e.error.message.starts_with("frame is not JSON: member `")
                && e.error.message.contains("appears twice in one object");
            assert_eq!(e.malformed, !is_json || twice, "malformed flag wrong for {e:?}");
            if e.malformed {
                assert_eq!(e.id, None);
            }
            assert!(
                matches!(e.error.code, ErrorCode::BadRequest | ErrorCode::Unsupported),
                "{e:?}"
            );
            assert!(!e.error.message.is_empty());
        }
    }
}

fn check_pin_reply(payload: &[u8]) {
    let Ok((id, reply)) = PinReply::decode(payload) else {
        return;
    };
    if let PinReply::Pin(pin) = &reply {
        assert!(!pin.is_empty() && pin.len() <= MAX_PIN, "PIN of {} bytes", pin.len());
        assert_eq!(format!("{reply:?}"), "Pin(<redacted>)", "Debug shows the PIN");
    }
    let again = reply.encode(id);
    assert_eq!(
        PinReply::decode(&again),
        Ok((id, reply.clone())),
        "re-encoded {reply:?} decodes to something else"
    );
    assert_eq!(reply.encode(id), again, "encoding is not stable");
}

fuzz_target!(|data: &[u8]| {
    match decode_frame(data) {
        Err(FrameError::TooLarge(n)) => {
            assert!(
                data.len() >= PREFIX_LEN,
                "too large from fewer than 4 bytes"
            );
            let announced = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as u64;
            assert_eq!(n, announced);
            assert!(n > MAX_FRAME as u64);
        }
        Ok(None) => {
            if data.len() >= PREFIX_LEN {
                let announced = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
                assert!(announced <= MAX_FRAME);
                assert!(
                    data.len() < PREFIX_LEN + announced,
                    "whole frame reported incomplete"
                );
            }
        }
        Ok(Some((payload, used))) => {
            assert_eq!(used, PREFIX_LEN + payload.len());
            assert!(used <= data.len());
            assert!(payload.len() <= MAX_FRAME);
            assert_eq!(payload, &data[PREFIX_LEN..used]);
            assert_eq!(
                encode_frame(payload),
                &data[..used],
                "re-encoded frame differs"
            );
            for cut in 0..used {
                assert_eq!(
                    decode_frame(&data[..cut]),
                    Ok(None),
                    "a frame truncated to {cut} of {used} bytes is not incomplete"
                );
            }
            // Bytes after the frame never change what the frame is.
            assert_eq!(decode_frame(&data[..used]), Ok(Some((payload, used))));
            check_request(payload);
            check_pin_reply(payload);
        }
    }
    check_request(data);
    check_pin_reply(data);
});
