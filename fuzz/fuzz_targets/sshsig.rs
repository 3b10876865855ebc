//! Approvals (docs/protocol.md, "Approvals"): `sshsig::SshSig::parse_armored` and
//! `parse`, `sshsig::SshPublicKey::from_blob` and `parse_line` on arbitrary input, and
//! `verify` of whatever parses.
//!
//! Any uid the agent admits may send `approve` with up to 16 KiB of text, which the
//! agent reads before it knows who signed; key lines come from the config. The checks
//! are no panic, a deterministic answer, and that a key read from a line has the same
//! blob as the one read from that blob.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waxseal_agent::sshsig::{SshPublicKey, SshSig};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let first = SshSig::parse_armored(text).map(|s| s.public_key);
        let again = SshSig::parse_armored(text).map(|s| s.public_key);
        assert_eq!(first, again, "not deterministic");
        if let Ok(key) = SshPublicKey::parse_line(text) {
            let from_blob = SshPublicKey::from_blob(&key.blob).expect("a line's blob reads");
            assert_eq!(from_blob.kind, key.kind);
            assert!(key.fingerprint().starts_with("SHA256:"));
            assert!(!key.name().is_empty());
        }
    }
    if let Ok(sig) = SshSig::parse(data) {
        if let Ok(key) = SshPublicKey::from_blob(&sig.public_key) {
            let _ = sig.verify(&key, b"waxseal approval request\n");
        }
    }
    if let Ok(key) = SshPublicKey::from_blob(data) {
        assert_eq!(key.blob, data);
    }
});
