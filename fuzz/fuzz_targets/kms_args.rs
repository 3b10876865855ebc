//! The sigstore KMS plug-in's JSON argument: `waxseal::kms::Call::from_json`, as
//! `sigstore-kms-waxseal v1 '<JSON>'` decodes `argv[2]`.
//!
//! The JSON comes from cosign or Fulcio, built from what their users typed (key
//! references, digests, hash numbers). Checks: no panic; a decoded call names a key
//! exactly when its method uses one, that key is a valid `DEVICE/LABEL`, a signature to
//! verify is never empty; `to_json` (the JSON sigstore's Go client would send for the
//! call) decodes to an equal call, and is stable; the same input gives the same answer
//! through `from_args`; an error is a non-empty sentence.
#![no_main]
// Every `expect`/`unwrap` here is an assertion of the target (a temp file that must
// write, a value that must serialise): a panic is a finding, which libFuzzer keeps.

use std::ffi::OsString;

use libfuzzer_sys::fuzz_target;
use waxseal::kms::{Call, Method, PluginResp};
use waxseal_agent::keyuri::KeyName;

fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    let first = Call::from_json(json);
    let argv: Vec<OsString> = ["sigstore-kms-waxseal", "v1", json]
        .iter()
        .map(OsString::from)
        .collect();
    let via_args = Call::from_args(&argv);
    match (&first, &via_args) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(format!("{a:#}"), format!("{b:#}")),
        _ => panic!("from_json and from_args disagree: {first:?} vs {via_args:?}"),
    }
    match first {
        Ok(call) => {
            let needs_key = !matches!(
                call.method,
                Method::DefaultAlgorithm | Method::SupportedAlgorithms
            );
            assert_eq!(call.key.is_some(), needs_key, "{call:?}");
            if let Some(key) = &call.key {
                assert!(KeyName::parse(key).is_ok(), "accepted key {key:?}");
            }
            match &call.method {
                Method::VerifySignature { signature, message } => {
                    assert!(!signature.is_empty());
                    assert!(message.digest.as_ref().is_none_or(|d| !d.is_empty()));
                }
                Method::SignMessage(message) => {
                    assert!(message.digest.as_ref().is_none_or(|d| !d.is_empty()));
                }
                _ => {}
            }
            assert_eq!(
                PluginResp::without_agent(&call.method).is_some(),
                !needs_key
            );
            let encoded = call.to_json();
            let again = Call::from_json(&encoded)
                .unwrap_or_else(|e| panic!("re-encoded call refused: {e:#}\n{encoded}"));
            assert_eq!(again, call, "round trip changed the call\n{encoded}");
            assert_eq!(again.to_json(), encoded, "encoding not stable");
        }
        Err(e) => {
            let text = format!("{e:#}");
            assert!(!text.trim().is_empty(), "empty error");
        }
    }
});
