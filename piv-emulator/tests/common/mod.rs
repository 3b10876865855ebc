//! Helpers shared by the integration tests: harness start-up and certificate checks.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::Duration;

use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;
use piv_emulator::harness::{Config, Harness};
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::Certificate;

/// Serial number the tests give the emulated card.
pub const SERIAL: u32 = 20_250_001;

/// Starts pcscd + the emulator built for this test run.
pub fn start() -> Harness {
    let mut config = Config::new(env!("CARGO_BIN_EXE_piv-emulator").into());
    config.serial = SERIAL;
    config.touch_delay = Duration::from_millis(300);
    Harness::start(config).expect("harness starts (pcscd, vpcd, piv-emulator)")
}

/// Asserts that `cert` is signed (ECDSA P-256/SHA-256) by `issuer`'s key and names
/// it as issuer.
pub fn assert_signed_by(cert: &Certificate, issuer: &Certificate) {
    let spki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .unwrap();
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
    let sig = p256::ecdsa::Signature::from_der(cert.signature.raw_bytes()).unwrap();
    vk.verify(&cert.tbs_certificate.to_der().unwrap(), &sig)
        .expect("signature verifies under the issuer key");
    assert_eq!(cert.tbs_certificate.issuer, issuer.tbs_certificate.subject);
}

/// The attestation root of the harness as a parsed certificate.
pub fn root(harness: &Harness) -> Certificate {
    Certificate::from_pem(harness.attestation_root_pem()).unwrap()
}

/// Parses DER.
pub fn cert(der: &[u8]) -> Certificate {
    Certificate::from_der(der).unwrap()
}
