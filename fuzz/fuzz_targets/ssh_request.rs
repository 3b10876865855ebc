//! ssh.sock: a message body decoded as `agent/src/server/ssh.rs` does it,
//! `ssh_agent_lib::proto::Request::decode(&mut &frame[..])`, on arbitrary bytes; then
//! what the session does with `session-bind@openssh.com` (parse, verify the host
//! signature).
//!
//! - never panics (a panic here would kill the connection's thread);
//! - a decoded request re-encodes to exactly `encoded_len()` bytes, and those decode to
//!   an equal request, consuming all of them; a decoded SessionBind likewise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssh_agent_lib::proto::extension::SessionBind;
use ssh_agent_lib::proto::Request;
use ssh_encoding::{Decode, Encode};

fn round_trip<T>(value: &T, what: &str)
where
    T: Decode + Encode + PartialEq + std::fmt::Debug,
    T::Error: std::fmt::Debug,
{
    let Ok(len) = value.encoded_len() else {
        // Lengths over u32 cannot be encoded; nothing decoded from a fuzz input has them.
        panic!("{what}: decoded {value:?} has no encoded length");
    };
    let mut out = Vec::new();
    value
        .encode(&mut out)
        .unwrap_or_else(|e| panic!("{what}: decoded {value:?} does not encode: {e:?}"));
    assert_eq!(out.len(), len, "{what}: encoded_len disagrees with encode");
    let mut reader = &out[..];
    let again = T::decode(&mut reader)
        .unwrap_or_else(|e| panic!("{what}: re-encoded {value:?} does not decode: {e:?}"));
    assert!(
        reader.is_empty(),
        "{what}: {} bytes left after decoding the re-encoding",
        reader.len()
    );
    assert_eq!(&again, value, "{what}: round trip changed the value");
}

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    let Ok(request) = Request::decode(&mut reader) else {
        return;
    };
    round_trip(&request, "request");
    if let Request::Extension(ext) = &request {
        if let Ok(Some(bind)) = ext.parse_message::<SessionBind>() {
            round_trip(&bind, "session-bind");
            let _ = bind.verify_signature();
        }
    }
});
