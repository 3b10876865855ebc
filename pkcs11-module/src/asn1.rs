//! The DER the module reads and writes: a key's SubjectPublicKeyInfo (what the agent's
//! `public_key` answers) turned into PKCS#11 attribute values, PKCS#1 DigestInfo
//! (what `CKM_RSA_PKCS` callers hand in), ECDSA signatures (the agent answers DER,
//! PKCS#11 wants r‖s) and the certificate fields of a certificate object.

use der::asn1::{ObjectIdentifier, OctetStringRef, UintRef};
use der::{Decode, Encode, Reader, SliceReader};
use sha1::{Digest, Sha1};
use waxseal_proto::proto::HashAlg;

/// id-ecPublicKey (RFC 5480).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// rsaEncryption (RFC 8017).
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// id-Ed25519 (RFC 8410).
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// secp256r1 / prime256v1.
pub const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// secp384r1.
pub const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// `CKA_EC_PARAMS` of an Ed25519 key: the PrintableString "edwards25519", the form
/// PKCS#11 v3.0 names and OpenSC 0.23's pkcs11-tool writes (docs/pkcs11-module.md).
pub const EDWARDS25519_PARAMS: &[u8] = b"\x13\x0cedwards25519";
/// `CKA_EC_PARAMS` naming Ed25519 by its OID, 1.3.101.112 (PKCS#11 v3.1 prefers it;
/// accepted for key generation).
pub const ED25519_OID_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// What went wrong reading DER.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Asn1Error {
    /// Not DER of the expected shape.
    #[error("malformed DER: {0}")]
    Der(String),
    /// Well-formed, but an algorithm or curve the module does not handle.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

impl From<der::Error> for Asn1Error {
    fn from(e: der::Error) -> Self {
        Asn1Error::Der(e.to_string())
    }
}

/// A NIST curve of an ECDSA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    /// P-256.
    P256,
    /// P-384.
    P384,
}

impl Curve {
    /// Bytes of a field element (and of r and s).
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    /// Bits of the field, for `CK_MECHANISM_INFO`.
    pub fn bits(self) -> usize {
        self.field_len() * 8
    }

    /// The named curve's OID.
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Curve::P256 => P256,
            Curve::P384 => P384,
        }
    }

    /// The curve named by a DER OID (`CKA_EC_PARAMS`).
    pub fn from_params(params: &[u8]) -> Result<Curve, Asn1Error> {
        let oid = ObjectIdentifier::from_der(params)?;
        match oid {
            o if o == P256 => Ok(Curve::P256),
            o if o == P384 => Ok(Curve::P384),
            _ => Err(Asn1Error::Unsupported("a curve other than P-256 and P-384")),
        }
    }

    /// `CKA_EC_PARAMS`: the DER OID of the named curve.
    pub fn params(self) -> Vec<u8> {
        // An OID always encodes.
        self.oid().to_der().unwrap_or_default()
    }
}

/// A public key as PKCS#11 shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// ECDSA: the uncompressed point.
    Ec {
        /// The curve.
        curve: Curve,
        /// `04 || X || Y`.
        point: Vec<u8>,
    },
    /// Ed25519: the 32-byte key.
    Ed25519 {
        /// The encoded point.
        point: Vec<u8>,
    },
    /// RSA.
    Rsa {
        /// Big-endian modulus without leading zeros.
        modulus: Vec<u8>,
        /// Big-endian public exponent without leading zeros.
        exponent: Vec<u8>,
    },
}

/// A parsed SubjectPublicKeyInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spki {
    /// The key.
    pub key: PublicKey,
    /// The contents of the subjectPublicKey BIT STRING.
    pub bits: Vec<u8>,
}

impl Spki {
    /// Reads a DER SubjectPublicKeyInfo.
    pub fn parse(der: &[u8]) -> Result<Spki, Asn1Error> {
        let spki = spki::SubjectPublicKeyInfoRef::from_der(der)?;
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or(Asn1Error::Unsupported(
                "a public key that is not whole bytes",
            ))?
            .to_vec();
        let alg = spki.algorithm;
        let key = if alg.oid == EC_PUBLIC_KEY {
            let params = alg
                .parameters
                .ok_or(Asn1Error::Unsupported("EC key without a named curve"))?;
            let curve = Curve::from_params(&params.to_der()?)?;
            if bits.len() != 1 + 2 * curve.field_len() || bits[0] != 4 {
                return Err(Asn1Error::Unsupported(
                    "an EC point that is not uncompressed",
                ));
            }
            PublicKey::Ec {
                curve,
                point: bits.clone(),
            }
        } else if alg.oid == ED25519 {
            if bits.len() != 32 {
                return Err(Asn1Error::Der("an Ed25519 key is 32 bytes".into()));
            }
            PublicKey::Ed25519 {
                point: bits.clone(),
            }
        } else if alg.oid == RSA_ENCRYPTION {
            let rsa = pkcs1::RsaPublicKey::from_der(&bits)?;
            PublicKey::Rsa {
                modulus: rsa.modulus.as_bytes().to_vec(),
                exponent: rsa.public_exponent.as_bytes().to_vec(),
            }
        } else {
            return Err(Asn1Error::Unsupported(
                "a key algorithm other than EC, RSA, Ed25519",
            ));
        };
        Ok(Spki { key, bits })
    }

    /// `CKA_ID`: SHA-1 of the subjectPublicKey bits, RFC 5280 4.2.1.2 method (1) — the
    /// subjectKeyIdentifier OpenSSL writes into certificates for the key.
    pub fn key_id(&self) -> [u8; 20] {
        Sha1::digest(&self.bits).into()
    }
}

/// `CKA_EC_POINT`: the point as a DER OCTET STRING.
pub fn octet_string(bytes: &[u8]) -> Vec<u8> {
    OctetStringRef::new(bytes)
        .and_then(|o| o.to_der())
        .unwrap_or_default()
}

/// The DigestInfo prefixes of RFC 8017 9.2 note 1: the AlgorithmIdentifier with NULL
/// parameters and the OCTET STRING header, followed by the digest.
const DIGEST_INFO_PREFIXES: [(HashAlg, &[u8]); 3] = [
    (
        HashAlg::Sha256,
        &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
    ),
    (
        HashAlg::Sha384,
        &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
    ),
    (
        HashAlg::Sha512,
        &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
    ),
];

/// Reads a DER DigestInfo (`CKM_RSA_PKCS` input) for SHA-256/384/512. Only the
/// encoding RFC 8017 prescribes (NULL parameters) is accepted: the agent signs exactly
/// that encoding, so any other would give a signature over different bytes.
pub fn parse_digest_info(input: &[u8]) -> Option<(HashAlg, &[u8])> {
    DIGEST_INFO_PREFIXES.iter().find_map(|(hash, prefix)| {
        input
            .strip_prefix(*prefix)
            .filter(|digest| digest.len() == hash.digest_len())
            .map(|digest| (*hash, digest))
    })
}

/// The DigestInfo for `digest` (tests and the fuzz target check the round trip).
pub fn digest_info(hash: HashAlg, digest: &[u8]) -> Vec<u8> {
    let prefix = DIGEST_INFO_PREFIXES
        .iter()
        .find(|(h, _)| *h == hash)
        .map_or(&[][..], |(_, p)| *p);
    [prefix, digest].concat()
}

/// A DER ECDSA-Sig-Value → r‖s, each left-padded to the curve's field size.
pub fn ecdsa_raw(der: &[u8], curve: Curve) -> Result<Vec<u8>, Asn1Error> {
    let mut reader = SliceReader::new(der)?;
    let (r, s) = reader.sequence(|seq| {
        let r = UintRef::decode(seq)?;
        let s = UintRef::decode(seq)?;
        Ok((r, s))
    })?;
    reader.finish(())?;
    let n = curve.field_len();
    let mut out = vec![0u8; 2 * n];
    for (i, int) in [r, s].iter().enumerate() {
        let bytes = int.as_bytes();
        if bytes.len() > n {
            return Err(Asn1Error::Der(
                "an ECDSA integer longer than the field".into(),
            ));
        }
        out[i * n + n - bytes.len()..(i + 1) * n].copy_from_slice(bytes);
    }
    Ok(out)
}

/// The fields of a DER X.509 certificate a certificate object shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFields {
    /// The whole certificate (`CKA_VALUE`).
    pub der: Vec<u8>,
    /// DER Name (`CKA_SUBJECT`).
    pub subject: Vec<u8>,
    /// DER Name (`CKA_ISSUER`).
    pub issuer: Vec<u8>,
    /// DER INTEGER (`CKA_SERIAL_NUMBER`).
    pub serial: Vec<u8>,
    /// DER SubjectPublicKeyInfo of the certified key.
    pub spki: Vec<u8>,
}

impl CertFields {
    /// Reads a DER certificate.
    pub fn parse(der: &[u8]) -> Result<CertFields, Asn1Error> {
        let cert = x509_cert::Certificate::from_der(der)?;
        let tbs = &cert.tbs_certificate;
        Ok(CertFields {
            der: der.to_vec(),
            subject: tbs.subject.to_der()?,
            issuer: tbs.issuer.to_der()?,
            serial: tbs.serial_number.to_der()?,
            spki: tbs.subject_public_key_info.to_der()?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn digest_info_round_trips_and_rejects_other_encodings() {
        for hash in HashAlg::ALL {
            let digest = vec![0xab; hash.digest_len()];
            let info = digest_info(*hash, &digest);
            assert_eq!(parse_digest_info(&info), Some((*hash, &digest[..])));
            // One byte short, one too many, absent NULL parameters: refused.
            assert_eq!(parse_digest_info(&info[..info.len() - 1]), None);
            assert_eq!(parse_digest_info(&[&info[..], &[0]].concat()), None);
        }
        // SHA-256 with the parameters left out (30 2f 30 0b 06 09 … 04 20 …).
        let mut absent = vec![
            0x30, 0x2f, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x04, 0x20,
        ];
        absent.extend([1u8; 32]);
        assert_eq!(parse_digest_info(&absent), None);
        // SHA-1's DigestInfo.
        let mut sha1 = vec![
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
            0x14,
        ];
        sha1.extend([1u8; 20]);
        assert_eq!(parse_digest_info(&sha1), None);
        // A bare digest.
        assert_eq!(parse_digest_info(&[7u8; 32]), None);
    }

    #[test]
    fn ecdsa_der_becomes_padded_r_and_s() {
        // r = 0x00ff.. (needs a leading zero in DER), s = 0x01 (short).
        let mut der = vec![0x30, 0x00, 0x02, 0x21, 0x00];
        der.extend([0xff; 32]);
        der.extend([0x02, 0x01, 0x01]);
        der[1] = (der.len() - 2) as u8;
        let raw = ecdsa_raw(&der, Curve::P256).unwrap();
        assert_eq!(raw.len(), 64);
        assert_eq!(&raw[..32], &[0xff; 32]);
        assert_eq!(&raw[32..63], &[0; 31]);
        assert_eq!(raw[63], 1);
        // P-384 pads to 48.
        let raw = ecdsa_raw(&der, Curve::P384).unwrap();
        assert_eq!(raw.len(), 96);
        assert_eq!(&raw[16..48], &[0xff; 32]);
        // Too long for P-256: refused; trailing bytes: refused; truncated: refused.
        let mut long = vec![0x30, 0x26, 0x02, 0x21];
        long.extend([0x7f; 33]);
        long.extend([0x02, 0x01, 0x01]);
        assert!(ecdsa_raw(&long, Curve::P256).is_err());
        assert!(ecdsa_raw(&[&der[..], &[0]].concat(), Curve::P256).is_err());
        assert!(ecdsa_raw(&der[..der.len() - 1], Curve::P256).is_err());
    }

    #[test]
    fn curve_params_are_the_named_curve_oids() {
        assert_eq!(
            Curve::P256.params(),
            [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
        assert_eq!(Curve::from_params(&Curve::P384.params()), Ok(Curve::P384));
        assert!(Curve::from_params(EDWARDS25519_PARAMS).is_err());
        assert_eq!(octet_string(&[1, 2, 3]), [4, 3, 1, 2, 3]);
    }
}
