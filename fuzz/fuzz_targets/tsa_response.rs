//! A time-stamp authority's answer as `waxseal sign --tsa-url` reads it
//! (cli/src/tsa.rs): `tsa::check_response` on arbitrary bytes with the imprint and
//! nonce of the seeds' queries (fuzz/scripts/make-tsa-seeds.py), so that the parsing
//! goes past the imprint and nonce checks into the CMS SignedData, the signed
//! attributes, the ESS signingCertificateV2, the signature and the certificate's EKU.
//! The same bytes are also read as a bare `TimeStampToken` (`check_token`, the path of
//! a token without its response) and, when accepted, by `TrustedTsa::check` (what
//! `waxseal verify` and `sign --trusted-root` run over a bundle's `signedTimestamp`).
//!
//! - never panics;
//! - an error says something;
//! - an accepted answer is kept as it came (`response` is the input), its token is a
//!   part of it, the token alone checks out with the same time and certificate, and a
//!   verifier that trusts exactly that certificate accepts the answer with that time;
//! - the time lies inside the certificate's validity;
//! - the answer is deterministic (a second check gives the same result).
#![no_main]
// Every `expect` here is an assertion of the target: a panic is a finding.

use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};
use waxseal::tsa::{check_response, check_token, TrustedTsa};
use x509_cert::der::Encode as _;

/// The "signature" the seeds' queries timestamp: their imprint is its SHA-256.
const SIGNATURE: &[u8] = b"waxseal fuzz signature\n";
/// The nonce of the seeds' queries.
const NONCE: [u8; 8] = [0x5a, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];

fuzz_target!(|data: &[u8]| {
    let imprint: [u8; 32] = Sha256::digest(SIGNATURE).into();
    let checked = check_response(data, &imprint, &NONCE);
    let again = check_response(data, &imprint, &NONCE);
    assert_eq!(checked.is_ok(), again.is_ok(), "not deterministic");
    match checked {
        Err(e) => assert!(!format!("{e:#}").trim().is_empty(), "an empty error"),
        Ok(stamp) => {
            assert_eq!(stamp.response, data, "the answer is not kept as it came");
            assert!(
                !stamp.token.is_empty()
                    && data
                        .windows(stamp.token.len())
                        .any(|w| w == stamp.token.as_slice()),
                "the token is not a part of the answer"
            );
            let cert = stamp.certificate.to_der().expect("the certificate encodes");
            let validity = &stamp.certificate.tbs_certificate.validity;
            assert!(stamp.time >= validity.not_before.to_system_time());
            assert!(stamp.time <= validity.not_after.to_system_time());

            let token = check_token(&stamp.token, &imprint, Some(&NONCE))
                .expect("the token of an accepted answer checks out alone");
            assert_eq!(token.time, stamp.time);
            assert_eq!(token.certificate.to_der().expect("encodes"), cert);
            assert!(token.response.is_empty());

            let trust = TrustedTsa::from_der(&[cert]).expect("one DER certificate");
            let time = trust
                .check(data, SIGNATURE)
                .expect("a verifier trusting the token's certificate accepts it");
            assert_eq!(time, stamp.time);
            assert!(
                trust.check(data, b"another signature").is_err(),
                "an answer over another signature was accepted"
            );
        }
    }
    // The bytes as a bare token, with and without a nonce to match.
    for nonce in [Some(&NONCE), None] {
        if let Err(e) = check_token(data, &imprint, nonce) {
            assert!(!format!("{e:#}").trim().is_empty(), "an empty error");
        }
    }
});
