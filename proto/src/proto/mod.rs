//! The native protocol of `agent.sock`: frames, requests, responses and error codes.
//!
//! Pure: bytes in, values out (and back). No sockets, no tokio — the server and the
//! client are adapters around this module, and the fuzz targets drive it directly.
//!
//! A frame is a big-endian `u32` length followed by that many bytes of UTF-8 JSON.
//! Requests are `{"id": n, "op": "...", ...}`; responses `{"id": n, "ok": {...}}` or
//! `{"id": n, "error": {"code": "...", "message": "..."}}`. docs/protocol.md is the
//! reference for every op.

mod error;
pub mod frame;
mod message;
mod pin;

pub use error::{ErrorCode, WireError};
pub use frame::{decode_frame, encode_frame, FrameError, MAX_FRAME, PREFIX_LEN};
pub use message::*;
pub use pin::{PinReply, PinReplyError, MAX_PIN};

/// The protocol version this crate speaks (`hello` exchanges it).
pub const PROTOCOL_VERSION: u32 = 1;

/// The agent's self-description in `hello`, e.g. `waxseal-agent 0.1.0`.
pub const AGENT_NAME: &str = concat!("waxseal-agent ", env!("CARGO_PKG_VERSION"));
