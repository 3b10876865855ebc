//! Pure encodings the backends share: SubjectPublicKeyInfo from raw key material,
//! ECDSA r‖s to DER, PKCS#1 DigestInfo, PEM, EC parameter OIDs.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::pkcs8::EncodePublicKey;
use rsa::BigUint;

use crate::proto::{HashAlg, KeyAlg};

/// DER of the named-curve OID for P-256 (`1.2.840.10045.3.1.7`).
pub const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the named-curve OID for P-384 (`1.3.132.0.34`).
pub const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// DER of the Ed25519 OID (`1.3.101.112`).
pub const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// `PrintableString "edwards25519"`, the older PKCS#11 form of Ed25519 parameters.
pub const PRINTABLE_ED25519: &[u8] = b"\x13\x0cedwards25519";

/// What went wrong encoding key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EncodingError(pub String);

/// The key algorithm of EC parameters (`CKA_EC_PARAMS`).
pub fn alg_of_ec_params(params: &[u8]) -> Option<KeyAlg> {
    match params {
        OID_P256 => Some(KeyAlg::P256),
        OID_P384 => Some(KeyAlg::P384),
        OID_ED25519 | PRINTABLE_ED25519 => Some(KeyAlg::Ed25519),
        _ => None,
    }
}

/// Strips a DER OCTET STRING wrapper (`CKA_EC_POINT` is one per PKCS#11); raw input is
/// returned unchanged.
pub fn unwrap_octet_string(v: &[u8]) -> &[u8] {
    match v {
        [0x04, len, rest @ ..] if (*len as usize) < 0x80 && rest.len() == *len as usize => rest,
        [0x04, 0x81, len, rest @ ..] if rest.len() == *len as usize => rest,
        _ => v,
    }
}

/// SPKI DER of an EC or Ed25519 public point.
pub fn spki_from_point(alg: KeyAlg, point: &[u8]) -> Result<Vec<u8>, EncodingError> {
    let bad = |e: &dyn std::fmt::Display| EncodingError(format!("invalid {alg} public key: {e}"));
    let doc = match alg {
        KeyAlg::P256 => p256::PublicKey::from_sec1_bytes(point)
            .map_err(|e| bad(&e))?
            .to_public_key_der(),
        KeyAlg::P384 => p384::PublicKey::from_sec1_bytes(point)
            .map_err(|e| bad(&e))?
            .to_public_key_der(),
        KeyAlg::Ed25519 => {
            if point.len() != 32 {
                return Err(bad(&format!("{} bytes instead of 32", point.len())));
            }
            let mut der = vec![
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ];
            der.extend_from_slice(point);
            return Ok(der);
        }
        KeyAlg::Rsa(_) => return Err(bad(&"not an EC key")),
    };
    doc.map(|d| d.as_bytes().to_vec()).map_err(|e| bad(&e))
}

/// SPKI DER of an RSA public key from its big-endian modulus and exponent.
pub fn spki_from_rsa(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>, EncodingError> {
    let key = rsa::RsaPublicKey::new_with_max_size(
        BigUint::from_bytes_be(modulus),
        BigUint::from_bytes_be(exponent),
        16384,
    )
    .map_err(|e| EncodingError(format!("invalid RSA public key: {e}")))?;
    key.to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| EncodingError(format!("cannot encode RSA public key: {e}")))
}

/// Bits of a big-endian modulus (leading zero bytes ignored).
pub fn rsa_bits(modulus: &[u8]) -> u32 {
    let m = match modulus.iter().position(|&b| b != 0) {
        Some(i) => &modulus[i..],
        None => return 0,
    };
    (m.len() as u32 - 1) * 8 + (8 - m[0].leading_zeros())
}

/// ECDSA raw `r‖s` (what PKCS#11 CKM_ECDSA returns) to a DER `Ecdsa-Sig-Value`.
/// Short `r` or `s` (some devices drop leading zeros) are left-padded first.
pub fn ecdsa_raw_to_der(alg: KeyAlg, raw: &[u8]) -> Result<Vec<u8>, EncodingError> {
    let field = match alg {
        KeyAlg::P256 => 32,
        KeyAlg::P384 => 48,
        _ => return Err(EncodingError(format!("{alg} is not an ECDSA key"))),
    };
    if !raw.len().is_multiple_of(2) || raw.len() > 2 * field || raw.is_empty() {
        return Err(EncodingError(format!(
            "device returned a {}-byte ECDSA signature for {alg}",
            raw.len()
        )));
    }
    let half = raw.len() / 2;
    let mut fixed = vec![0u8; 2 * field];
    fixed[field - half..field].copy_from_slice(&raw[..half]);
    fixed[2 * field - half..].copy_from_slice(&raw[half..]);
    let bad = |e: p256::ecdsa::Error| {
        EncodingError(format!("device returned an invalid ECDSA signature: {e}"))
    };
    Ok(match alg {
        KeyAlg::P256 => p256::ecdsa::Signature::from_slice(&fixed)
            .map_err(bad)?
            .to_der()
            .as_bytes()
            .to_vec(),
        _ => p384::ecdsa::Signature::from_slice(&fixed)
            .map_err(bad)?
            .to_der()
            .as_bytes()
            .to_vec(),
    })
}

/// The DER `DigestInfo` prefix PKCS#1 v1.5 puts before a digest of `hash`.
pub fn digest_info_prefix(hash: HashAlg) -> &'static [u8] {
    match hash {
        HashAlg::Sha256 => &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
        HashAlg::Sha384 => &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
        HashAlg::Sha512 => &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
    }
}

/// PEM `PUBLIC KEY` of SPKI DER.
pub fn spki_pem(der: &[u8]) -> String {
    pem("PUBLIC KEY", der)
}

/// PEM text: `der` in base64 lines of 64 between `BEGIN label` and `END label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use p256::pkcs8::DecodePublicKey;

    #[test]
    fn octet_string_unwrap() {
        let point = [4u8; 65];
        let mut der = vec![0x04, 65];
        der.extend_from_slice(&point);
        assert_eq!(unwrap_octet_string(&der), &point[..]);
        assert_eq!(
            unwrap_octet_string(&point),
            &point[..],
            "raw point left alone"
        );
        let big = [4u8; 133];
        let mut der = vec![0x04, 0x81, 133];
        der.extend_from_slice(&big);
        assert_eq!(unwrap_octet_string(&der), &big[..]);
    }

    #[test]
    fn ecdsa_der_verifies_and_pads_short_values() {
        use p256::ecdsa::{signature::hazmat::PrehashSigner, SigningKey};
        let sk = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let digest = [9u8; 32];
        let sig: p256::ecdsa::Signature = sk.sign_prehash(&digest).unwrap();
        let der = ecdsa_raw_to_der(KeyAlg::P256, &sig.to_bytes()).unwrap();
        let vk = p256::ecdsa::VerifyingKey::from(&sk);
        let parsed = p256::ecdsa::Signature::from_der(&der).unwrap();
        vk.verify_prehash(&digest, &parsed).unwrap();

        // A device that drops a leading zero byte of r and s.
        let mut short = vec![0u8; 62];
        short[0] = 1;
        short[31] = 2;
        let der = ecdsa_raw_to_der(KeyAlg::P256, &short).unwrap();
        let parsed = p256::ecdsa::Signature::from_der(&der).unwrap();
        let bytes = parsed.to_bytes();
        assert_eq!(bytes[1], 1);
        assert_eq!(bytes[33], 2);
        assert!(ecdsa_raw_to_der(KeyAlg::P256, &[1u8; 65]).is_err());
        assert!(ecdsa_raw_to_der(KeyAlg::Rsa(2048), &[1u8; 64]).is_err());
    }

    #[test]
    fn spki_round_trips() {
        let sk = p256::SecretKey::from_slice(&[3u8; 32]).unwrap();
        let point = sk.public_key().to_sec1_bytes();
        let der = spki_from_point(KeyAlg::P256, &point).unwrap();
        assert_eq!(
            p256::PublicKey::from_public_key_der(&der).unwrap(),
            sk.public_key()
        );
        let pem = spki_pem(&der);
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(
            p256::PublicKey::from_public_key_pem(&pem).unwrap(),
            sk.public_key()
        );
        assert!(spki_from_point(KeyAlg::P384, &point).is_err());
        let ed = spki_from_point(KeyAlg::Ed25519, &[1u8; 32]).unwrap();
        assert_eq!(ed.len(), 44);
    }

    #[test]
    fn rsa_bits_counts() {
        assert_eq!(rsa_bits(&[0x00, 0x80, 0, 0]), 24);
        assert_eq!(rsa_bits(&[0x01]), 1);
        assert_eq!(rsa_bits(&[0xff; 256]), 2048);
    }

    #[test]
    fn ec_params() {
        assert_eq!(alg_of_ec_params(OID_P256), Some(KeyAlg::P256));
        assert_eq!(alg_of_ec_params(PRINTABLE_ED25519), Some(KeyAlg::Ed25519));
        assert_eq!(alg_of_ec_params(&[0x06, 0x01, 0x00]), None);
    }
}
