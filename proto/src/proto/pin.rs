//! The client's answer to a PIN prompt on `agent.sock` (docs/protocol.md, "PIN
//! prompts"): `{"id":…,"op":"pin_reply","pin":"…"}` or
//! `{"id":…,"op":"pin_reply","cancel":true}`.
//!
//! Decoded strictly (no other member, no member twice, exactly one of `pin` and
//! `cancel`), bounded ([`MAX_PIN`]), and the PIN is held in a [`Zeroizing`] string
//! from the moment it is read; neither its `Debug` nor any decode error shows it.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The longest PIN a `pin_reply` may carry, in bytes. PIV PINs are at most 8 bytes and
/// PKCS#11 tokens rarely take more than 64; this leaves room without letting a client
/// make the agent hold a frame-sized secret.
pub const MAX_PIN: usize = 256;

/// A client's answer to a PIN prompt.
#[derive(Clone, PartialEq, Eq)]
pub enum PinReply {
    /// The PIN the person typed: 1 to [`MAX_PIN`] bytes.
    Pin(Zeroizing<String>),
    /// The person declined.
    Cancel,
}

/// Why a frame is not a `pin_reply`. Says what is wrong in general terms only: the
/// frame may hold a PIN, so nothing of it is echoed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PinReplyError {
    /// Not a JSON object of the `pin_reply` shape (a member missing, unknown, of the
    /// wrong type or given twice, or another op).
    #[error("not a pin_reply: expected {{\"id\":N,\"op\":\"pin_reply\",\"pin\":\"…\"}} or {{\"id\":N,\"op\":\"pin_reply\",\"cancel\":true}}")]
    Shape,
    /// Both `pin` and `cancel`, or neither, or `"cancel": false`.
    #[error("a pin_reply carries either a non-empty `pin` or `\"cancel\": true`")]
    Choice,
    /// The PIN is empty.
    #[error("the PIN in a pin_reply is empty")]
    Empty,
    /// The PIN is longer than [`MAX_PIN`] bytes.
    #[error("the PIN in a pin_reply is longer than {MAX_PIN} bytes")]
    TooLong,
}

impl PinReply {
    /// Decodes a `pin_reply` payload (the bytes inside a frame): the request id it
    /// answers, and the answer.
    pub fn decode(payload: &[u8]) -> Result<(u64, PinReply), PinReplyError> {
        let wire: WireIn = serde_json::from_slice(payload).map_err(|e| {
            // The bound is checked while reading, before the PIN is copied.
            if e.to_string().starts_with(TOO_LONG) {
                PinReplyError::TooLong
            } else {
                PinReplyError::Shape
            }
        })?;
        let reply = match (wire.pin, wire.cancel) {
            (Some(Pin(pin)), None) if pin.is_empty() => return Err(PinReplyError::Empty),
            (Some(Pin(pin)), None) => PinReply::Pin(pin),
            (None, Some(true)) => PinReply::Cancel,
            _ => return Err(PinReplyError::Choice),
        };
        Ok((wire.id, reply))
    }

    /// The payload answering request `id` (to be framed), zeroized when dropped.
    pub fn encode(&self, id: u64) -> Zeroizing<Vec<u8>> {
        let (pin, cancel) = match self {
            PinReply::Pin(pin) => (Some(pin.as_str()), None),
            PinReply::Cancel => (None, Some(true)),
        };
        let wire = WireOut {
            id,
            op: "pin_reply",
            pin,
            cancel,
        };
        // Room for the envelope and for every PIN byte escaped, so the buffer never
        // grows (a grown buffer would leave a copy of the PIN behind).
        let mut out = Zeroizing::new(Vec::with_capacity(64 + pin.map_or(0, |p| p.len() * 6)));
        // Writing into a Vec fails only if serializing does, which these plain fields
        // do not; an empty payload would then be refused by the agent as a non-reply.
        let _ = serde_json::to_writer(&mut *out, &wire);
        out
    }
}

impl fmt::Debug for PinReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinReply::Pin(_) => f.write_str("Pin(<redacted>)"),
            PinReply::Cancel => f.write_str("Cancel"),
        }
    }
}

/// The start of the error a too-long PIN gives while reading.
const TOO_LONG: &str = "pin too long";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    id: u64,
    #[allow(dead_code)] // Its one allowed value is checked by deserializing it.
    op: Op,
    #[serde(default)]
    pin: Option<Pin>,
    #[serde(default)]
    cancel: Option<bool>,
}

#[derive(Deserialize)]
enum Op {
    #[serde(rename = "pin_reply")]
    PinReply,
}

#[derive(Serialize)]
struct WireOut<'a> {
    id: u64,
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pin: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancel: Option<bool>,
}

/// A PIN as read: zeroized when dropped, at most [`MAX_PIN`] bytes.
struct Pin(Zeroizing<String>);

impl<'de> Deserialize<'de> for Pin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Pin, D::Error> {
        struct PinVisitor;
        impl Visitor<'_> for PinVisitor {
            type Value = Pin;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a PIN string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Pin, E> {
                if s.len() > MAX_PIN {
                    return Err(E::custom(TOO_LONG));
                }
                Ok(Pin(Zeroizing::new(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Pin, E> {
                let s = Zeroizing::new(s);
                if s.len() > MAX_PIN {
                    return Err(E::custom(TOO_LONG));
                }
                Ok(Pin(s))
            }
        }
        d.deserialize_str(PinVisitor)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pin(p: &str) -> PinReply {
        PinReply::Pin(Zeroizing::new(p.to_string()))
    }

    #[test]
    fn round_trips() {
        for (id, reply) in [
            (7, pin("123456")),
            (0, PinReply::Cancel),
            (9, pin("a\"\\é\u{1}")),
        ] {
            let bytes = reply.encode(id);
            assert_eq!(PinReply::decode(&bytes), Ok((id, reply)));
        }
        assert_eq!(
            &**pin("1234").encode(3),
            br#"{"id":3,"op":"pin_reply","pin":"1234"}"#
        );
        assert_eq!(
            &**PinReply::Cancel.encode(3),
            br#"{"id":3,"op":"pin_reply","cancel":true}"#
        );
    }

    #[test]
    fn strict_and_never_echoes_the_pin() {
        let long = format!(
            r#"{{"id":1,"op":"pin_reply","pin":"{}"}}"#,
            "9".repeat(MAX_PIN + 1)
        );
        let cases: [(&str, PinReplyError); 10] = [
            (
                r#"{"id":1,"op":"pin_reply","pin":""}"#,
                PinReplyError::Empty,
            ),
            (&long, PinReplyError::TooLong),
            (r#"{"id":1,"op":"pin_reply"}"#, PinReplyError::Choice),
            (
                r#"{"id":1,"op":"pin_reply","cancel":false}"#,
                PinReplyError::Choice,
            ),
            (
                r#"{"id":1,"op":"pin_reply","pin":"7531","cancel":true}"#,
                PinReplyError::Choice,
            ),
            (
                r#"{"id":1,"op":"pin_reply","pin":7531}"#,
                PinReplyError::Shape,
            ),
            (
                r#"{"id":1,"op":"pin_reply","pin":"7531","pin":"7531"}"#,
                PinReplyError::Shape,
            ),
            (
                r#"{"id":1,"op":"pin_reply","pin":"7531","x":1}"#,
                PinReplyError::Shape,
            ),
            (r#"{"id":1,"op":"sign","pin":"7531"}"#, PinReplyError::Shape),
            ("7531", PinReplyError::Shape),
        ];
        for (text, want) in cases {
            let e = PinReply::decode(text.as_bytes()).unwrap_err();
            assert_eq!(e, want, "{text}");
            assert!(!e.to_string().contains("7531"), "{e}");
        }
        assert_eq!(format!("{:?}", pin("7531")), "Pin(<redacted>)");
    }
}
