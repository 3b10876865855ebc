//! The PKCS#11 module's decoders of what a calling program controls:
//! `waxseal_pkcs11::fuzz_decode` reads two attribute templates, a mechanism with its
//! parameter bytes and a signing input, then runs every reader the module applies to
//! them (key-pair generation templates, certificate import, mechanism parameters such
//! as `CK_RSA_PKCS_PSS_PARAMS`, the agent request a `C_Sign` would make); the input is
//! also read as the DER the module parses (SubjectPublicKeyInfo, ECDSA signature).
//!
//! Checks: no panic; a template re-encodes to bytes that decode equal; every template
//! matches an object that has exactly its attributes; an accepted key-pair request has
//! a label without `/` and an algorithm the agent generates; an accepted certificate
//! re-parses equal; an accepted signing request carries a digest of its hash's length,
//! and a raw input is that digest (or its RFC 8017 DigestInfo); an EdDSA request is
//! the input itself; r‖s is twice the field.
#![no_main]
// Every `expect`/`unwrap` here is an assertion of the target: a panic is a finding.

use libfuzzer_sys::fuzz_target;
use waxseal_pkcs11::asn1::{self, CertFields, Curve, Spki};
use waxseal_pkcs11::mechanism::{Mechanism, SignRequest, EDDSA_MESSAGE_LIMIT};
use waxseal_pkcs11::template::{decode_template, Template};

fn encode(t: &Template) -> Vec<u8> {
    let mut out = Vec::new();
    for a in &t.0 {
        out.extend((a.ty as u64).to_le_bytes());
        out.extend((a.value.len() as u16).to_le_bytes());
        out.extend(&a.value);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let Some(d) = waxseal_pkcs11::fuzz_decode(data) {
        for t in [&d.public, &d.private] {
            let bytes = encode(t);
            let (back, rest) = decode_template(&bytes).expect("a template re-encodes");
            assert_eq!(&back, t);
            assert!(rest.is_empty());
            let object = |ty| t.get(ty).ok().flatten().map(<[u8]>::to_vec);
            if t.0.iter().all(|a| t.get(a.ty).is_ok()) {
                assert!(t.matches(object), "a template matches its own values");
            }
        }
        if let Ok(k) = &d.keygen {
            assert!(!k.label.is_empty() && !k.label.contains('/'));
            assert!(k.alg.is_generatable(), "{:?}", k.alg);
        }
        if let Ok(c) = &d.cert {
            assert_eq!(CertFields::parse(&c.cert.der).as_ref(), Ok(&c.cert));
        }
        if let (Ok(m), Ok(r)) = (&d.mechanism, &d.request) {
            let input_at = data.len() - raw_len(data);
            let input = &data[input_at..];
            match (m, r) {
                (Mechanism::Eddsa, SignRequest::Message(msg)) => {
                    assert_eq!(msg.as_slice(), input);
                    assert!(!msg.is_empty() && msg.len() <= EDDSA_MESSAGE_LIMIT);
                }
                (Mechanism::Eddsa, other) => panic!("EdDSA asked {other:?}"),
                (_, SignRequest::Message(_)) => panic!("{m:?} asked for a message"),
                (_, SignRequest::Digest(r)) => {
                    assert_eq!(r.digest.len(), r.hash.digest_len());
                    match m {
                        Mechanism::RsaPkcs(None) => {
                            assert_eq!(input, asn1::digest_info(r.hash, &r.digest))
                        }
                        Mechanism::Ecdsa(None) | Mechanism::RsaPss { hashed: false, .. } => {
                            assert_eq!(input, r.digest.as_slice())
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    if let Ok(spki) = Spki::parse(data) {
        assert_eq!(spki.key_id(), Spki::parse(data).unwrap().key_id());
    }
    for curve in [Curve::P256, Curve::P384] {
        if let Ok(raw) = asn1::ecdsa_raw(data, curve) {
            assert_eq!(raw.len(), 2 * curve.field_len());
        }
    }
});

/// How many bytes at the end of `data` are the signing input `fuzz_decode` read: what
/// follows the two templates, the mechanism type and its parameters.
fn raw_len(data: &[u8]) -> usize {
    let (_, rest) = decode_template(data).expect("decoded once already");
    let (_, rest) = decode_template(rest).expect("decoded once already");
    let rest = &rest[8..];
    let plen = usize::from(rest[0]);
    rest.len() - 1 - plen
}
