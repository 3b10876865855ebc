//! Key material of the emulated card: management keys (3DES/AES block ciphers),
//! slot keys (P-256, P-384, RSA) and the attestation certificates Yubico's firmware
//! issues.
//!
//! Everything here is pure computation; randomness comes from the OS.

use std::time::{Duration, SystemTime};

use aes::cipher::{Block, BlockDecrypt, BlockEncrypt, KeyInit};
use p256::ecdsa::signature::{hazmat::PrehashSigner, Signer};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rand_core::{OsRng, RngCore};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey};
use x509_cert::der::{
    self,
    asn1::{BitString, OctetString},
    oid::ObjectIdentifier,
    Decode, Encode,
};
use x509_cert::{
    certificate::{Certificate, TbsCertificate, Version},
    ext::{pkix::BasicConstraints, Extension},
    name::Name,
    serial_number::SerialNumber,
    spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned},
    time::{Time, Validity},
};
use zeroize::Zeroizing;

/// What went wrong in a cryptographic operation.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A key had the wrong size or encoding.
    #[error("invalid key material")]
    InvalidKey,
    /// The input to sign, decrypt or agree on was not acceptable for the key.
    #[error("invalid input for this key")]
    InvalidInput,
    /// Building or encoding a certificate failed.
    #[error("certificate encoding failed: {0}")]
    Der(#[from] der::Error),
    /// RSA key generation or arithmetic failed.
    #[error("RSA operation failed: {0}")]
    Rsa(#[from] rsa::Error),
}

/// Management key algorithms (Yubico's `ALGO` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MgmAlgorithm {
    /// Three-key 3DES (`03`).
    TripleDes,
    /// AES-128 (`08`).
    Aes128,
    /// AES-192 (`0A`).
    Aes192,
    /// AES-256 (`0C`).
    Aes256,
}

impl MgmAlgorithm {
    /// Parses the algorithm byte of GENERAL AUTHENTICATE / SET MANAGEMENT KEY.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x03 => Some(Self::TripleDes),
            0x08 => Some(Self::Aes128),
            0x0A => Some(Self::Aes192),
            0x0C => Some(Self::Aes256),
            _ => None,
        }
    }

    /// The algorithm byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::TripleDes => 0x03,
            Self::Aes128 => 0x08,
            Self::Aes192 => 0x0A,
            Self::Aes256 => 0x0C,
        }
    }

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Self::TripleDes | Self::Aes192 => 24,
            Self::Aes128 => 16,
            Self::Aes256 => 32,
        }
    }

    /// Cipher block length in bytes (witness and challenge size).
    pub fn block_len(self) -> usize {
        match self {
            Self::TripleDes => 8,
            _ => 16,
        }
    }
}

/// The card management key (slot 9B).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct MgmKey {
    algorithm: MgmAlgorithm,
    #[serde(with = "hex_bytes")]
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for MgmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MgmKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Factory default management key of a YubiKey.
pub const DEFAULT_MGM_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];

impl MgmKey {
    /// A key of `algorithm` from raw bytes.
    pub fn new(algorithm: MgmAlgorithm, key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != algorithm.key_len() {
            return Err(CryptoError::InvalidKey);
        }
        Ok(Self {
            algorithm,
            key: Zeroizing::new(key.to_vec()),
        })
    }

    /// The factory default 3DES key.
    pub fn factory_default() -> Self {
        Self {
            algorithm: MgmAlgorithm::TripleDes,
            key: Zeroizing::new(DEFAULT_MGM_KEY.to_vec()),
        }
    }

    /// Algorithm of this key.
    pub fn algorithm(&self) -> MgmAlgorithm {
        self.algorithm
    }

    /// Whether this is still the factory default key.
    pub fn is_default(&self) -> bool {
        self.algorithm == MgmAlgorithm::TripleDes && self.key.as_slice() == DEFAULT_MGM_KEY
    }

    /// Encrypts one block (ECB), as the PIV witness/challenge protocol does.
    pub fn encrypt_block(&self, block: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.crypt(block, true)
    }

    /// Decrypts one block (ECB).
    pub fn decrypt_block(&self, block: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.crypt(block, false)
    }

    fn crypt(&self, block: &[u8], encrypt: bool) -> Result<Vec<u8>, CryptoError> {
        if block.len() != self.algorithm.block_len() {
            return Err(CryptoError::InvalidInput);
        }
        let mut buf = block.to_vec();
        fn run<C: KeyInit + BlockEncrypt + BlockDecrypt>(
            key: &[u8],
            buf: &mut [u8],
            encrypt: bool,
        ) -> Result<(), CryptoError> {
            let c = C::new_from_slice(key).map_err(|_| CryptoError::InvalidKey)?;
            let mut b = Block::<C>::default();
            if b.len() != buf.len() {
                return Err(CryptoError::InvalidInput);
            }
            b.copy_from_slice(buf);
            if encrypt {
                c.encrypt_block(&mut b);
            } else {
                c.decrypt_block(&mut b);
            }
            buf.copy_from_slice(&b);
            Ok(())
        }
        match self.algorithm {
            MgmAlgorithm::TripleDes => run::<des::TdesEde3>(&self.key, &mut buf, encrypt)?,
            MgmAlgorithm::Aes128 => run::<aes::Aes128>(&self.key, &mut buf, encrypt)?,
            MgmAlgorithm::Aes192 => run::<aes::Aes192>(&self.key, &mut buf, encrypt)?,
            MgmAlgorithm::Aes256 => run::<aes::Aes256>(&self.key, &mut buf, encrypt)?,
        }
        Ok(buf)
    }
}

/// Asymmetric algorithms of PIV slots (SP 800-78-4 identifiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    /// RSA-1024 (`06`).
    Rsa1024,
    /// RSA-2048 (`07`).
    Rsa2048,
    /// ECC P-256 (`11`).
    EccP256,
    /// ECC P-384 (`14`).
    EccP384,
}

impl Algorithm {
    /// Parses an algorithm identifier byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x06 => Some(Self::Rsa1024),
            0x07 => Some(Self::Rsa2048),
            0x11 => Some(Self::EccP256),
            0x14 => Some(Self::EccP384),
            _ => None,
        }
    }

    /// The identifier byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::Rsa1024 => 0x06,
            Self::Rsa2048 => 0x07,
            Self::EccP256 => 0x11,
            Self::EccP384 => 0x14,
        }
    }
}

/// A private key held in a slot.
#[derive(Clone)]
pub enum PrivateKey {
    /// NIST P-256.
    P256(p256::SecretKey),
    /// NIST P-384.
    P384(p384::SecretKey),
    /// RSA (1024 or 2048 bits).
    Rsa(Box<RsaPrivateKey>),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({:?})", self.algorithm())
    }
}

impl PrivateKey {
    /// Generates a new key.
    pub fn generate(algorithm: Algorithm) -> Result<Self, CryptoError> {
        Ok(match algorithm {
            Algorithm::EccP256 => Self::P256(p256::SecretKey::random(&mut OsRng)),
            Algorithm::EccP384 => Self::P384(p384::SecretKey::random(&mut OsRng)),
            Algorithm::Rsa1024 => Self::Rsa(Box::new(RsaPrivateKey::new(&mut OsRng, 1024)?)),
            Algorithm::Rsa2048 => Self::Rsa(Box::new(RsaPrivateKey::new(&mut OsRng, 2048)?)),
        })
    }

    /// Builds an ECC key from the private scalar (IMPORT KEY tag `06`).
    pub fn from_ec_scalar(algorithm: Algorithm, scalar: &[u8]) -> Result<Self, CryptoError> {
        match algorithm {
            Algorithm::EccP256 => p256::SecretKey::from_slice(scalar).map(Self::P256),
            Algorithm::EccP384 => p384::SecretKey::from_slice(scalar).map(Self::P384),
            _ => return Err(CryptoError::InvalidKey),
        }
        .map_err(|_| CryptoError::InvalidKey)
    }

    /// Builds an RSA key from its primes (IMPORT KEY tags `01`, `02`), e = 65537.
    pub fn from_rsa_primes(algorithm: Algorithm, p: &[u8], q: &[u8]) -> Result<Self, CryptoError> {
        let key = RsaPrivateKey::from_p_q(
            BigUint::from_bytes_be(p),
            BigUint::from_bytes_be(q),
            BigUint::from(65537u32),
        )?;
        let key = Self::Rsa(Box::new(key));
        if key.algorithm() != algorithm {
            return Err(CryptoError::InvalidKey);
        }
        Ok(key)
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::P256(_) => Algorithm::EccP256,
            Self::P384(_) => Algorithm::EccP384,
            Self::Rsa(k) if k.size() <= 128 => Algorithm::Rsa1024,
            Self::Rsa(_) => Algorithm::Rsa2048,
        }
    }

    /// The public key as PIV encodes it inside `7F49`: `86 point` or `81 n, 82 e`.
    pub fn piv_public(&self) -> Vec<u8> {
        match self {
            Self::P256(k) => crate::tlv::encode(0x86, k.public_key().to_sec1_bytes().as_ref()),
            Self::P384(k) => crate::tlv::encode(0x86, k.public_key().to_sec1_bytes().as_ref()),
            Self::Rsa(k) => {
                let mut out = crate::tlv::encode(0x81, &k.n().to_bytes_be());
                crate::tlv::write(&mut out, 0x82, &k.e().to_bytes_be());
                out
            }
        }
    }

    /// The public key as a SubjectPublicKeyInfo.
    pub fn spki(&self) -> Result<SubjectPublicKeyInfoOwned, CryptoError> {
        let der = match self {
            Self::P256(k) => k.public_key().to_public_key_der(),
            Self::P384(k) => k.public_key().to_public_key_der(),
            Self::Rsa(k) => k.to_public_key().to_public_key_der(),
        }
        .map_err(|_| CryptoError::InvalidKey)?;
        Ok(SubjectPublicKeyInfoOwned::from_der(der.as_bytes())?)
    }

    /// The private operation of GENERAL AUTHENTICATE tag `81`: an ECDSA signature
    /// (DER) over a digest, or the raw RSA private operation on a padded block.
    pub fn sign(&self, input: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self {
            Self::P256(k) => {
                let digest = left_pad(input, 32)?;
                let sig: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(k)
                    .sign_prehash(&digest)
                    .map_err(|_| CryptoError::InvalidInput)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            Self::P384(k) => {
                let digest = left_pad(input, 48)?;
                let sig: p384::ecdsa::Signature = p384::ecdsa::SigningKey::from(k)
                    .sign_prehash(&digest)
                    .map_err(|_| CryptoError::InvalidInput)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            Self::Rsa(k) => {
                let size = k.size();
                if input.len() != size {
                    return Err(CryptoError::InvalidInput);
                }
                let c = BigUint::from_bytes_be(input);
                if &c >= k.n() {
                    return Err(CryptoError::InvalidInput);
                }
                let m = rsa::hazmat::rsa_decrypt_and_check(k.as_ref(), Some(&mut OsRng), &c)?;
                left_pad(&m.to_bytes_be(), size)
            }
        }
    }

    /// ECDH (GENERAL AUTHENTICATE tag `85`): the shared secret's x coordinate.
    pub fn ecdh(&self, peer_point: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self {
            Self::P256(k) => {
                let peer = p256::PublicKey::from_sec1_bytes(peer_point)
                    .map_err(|_| CryptoError::InvalidInput)?;
                let shared = p256::ecdh::diffie_hellman(k.to_nonzero_scalar(), peer.as_affine());
                Ok(shared.raw_secret_bytes().to_vec())
            }
            Self::P384(k) => {
                let peer = p384::PublicKey::from_sec1_bytes(peer_point)
                    .map_err(|_| CryptoError::InvalidInput)?;
                let shared = p384::ecdh::diffie_hellman(k.to_nonzero_scalar(), peer.as_affine());
                Ok(shared.raw_secret_bytes().to_vec())
            }
            Self::Rsa(_) => Err(CryptoError::InvalidInput),
        }
    }

    /// PKCS#8 DER, for the state file.
    pub fn to_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let doc = match self {
            Self::P256(k) => k.to_pkcs8_der(),
            Self::P384(k) => k.to_pkcs8_der(),
            Self::Rsa(k) => k.to_pkcs8_der(),
        }
        .map_err(|_| CryptoError::InvalidKey)?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// Reads a key written by [`PrivateKey::to_pkcs8`].
    pub fn from_pkcs8(algorithm: Algorithm, der: &[u8]) -> Result<Self, CryptoError> {
        let key = match algorithm {
            Algorithm::EccP256 => p256::SecretKey::from_pkcs8_der(der).map(Self::P256),
            Algorithm::EccP384 => p384::SecretKey::from_pkcs8_der(der).map(Self::P384),
            Algorithm::Rsa1024 | Algorithm::Rsa2048 => {
                RsaPrivateKey::from_pkcs8_der(der).map(|k| Self::Rsa(Box::new(k)))
            }
        }
        .map_err(|_| CryptoError::InvalidKey)?;
        if key.algorithm() != algorithm {
            return Err(CryptoError::InvalidKey);
        }
        Ok(key)
    }
}

fn left_pad(input: &[u8], len: usize) -> Result<Vec<u8>, CryptoError> {
    if input.len() > len {
        return Err(CryptoError::InvalidInput);
    }
    let mut out = vec![0u8; len - input.len()];
    out.extend_from_slice(input);
    Ok(out)
}

/// Yubico attestation extension: firmware version (3 raw bytes).
pub const OID_FIRMWARE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.3");
/// Yubico attestation extension: serial number (DER INTEGER).
pub const OID_SERIAL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.7");
/// Yubico attestation extension: PIN policy and touch policy (2 raw bytes).
pub const OID_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.8");
/// Yubico attestation extension: form factor (1 raw byte).
pub const OID_FORM_FACTOR: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.9");
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// Facts about the attested key that go into the attestation certificate.
#[derive(Debug, Clone, Copy)]
pub struct AttestedKey {
    /// Slot of the key (`9a`, `82`, …).
    pub slot: u8,
    /// Firmware version.
    pub firmware: [u8; 3],
    /// Card serial number.
    pub serial: u32,
    /// PIN policy byte as stored (1 never, 2 once, 3 always).
    pub pin_policy: u8,
    /// Touch policy byte as stored (1 never, 2 always, 3 cached).
    pub touch_policy: u8,
    /// Form factor byte (`0x01` USB-A keychain).
    pub form_factor: u8,
}

/// Creates a self-signed P-256 CA: the emulated attestation root.
pub fn new_attestation_root(serial: u32) -> Result<(p256::SecretKey, Vec<u8>), CryptoError> {
    let key = p256::SecretKey::random(&mut OsRng);
    let name = name(&format!("CN=waxseal emulated PIV Root CA Serial {serial}"))?;
    let spki = PrivateKey::P256(key.clone()).spki()?;
    let ca = vec![ca_extension()?];
    let cert = issue(&key, name.clone(), name, spki, Some(ca))?;
    Ok((key, cert))
}

/// Creates the slot-f9 attestation key and its certificate under the root.
pub fn new_attestation_key(
    root_key: &p256::SecretKey,
    root_cert: &[u8],
) -> Result<(p256::SecretKey, Vec<u8>), CryptoError> {
    let root = Certificate::from_der(root_cert)?;
    let key = p256::SecretKey::random(&mut OsRng);
    let spki = PrivateKey::P256(key.clone()).spki()?;
    let ca = vec![ca_extension()?];
    let subject = name("CN=Yubico PIV Attestation")?;
    let cert = issue(
        root_key,
        root.tbs_certificate.subject,
        subject,
        spki,
        Some(ca),
    )?;
    Ok((key, cert))
}

/// Issues the attestation certificate for a slot key, signed by the f9 key.
pub fn attest(
    f9_key: &p256::SecretKey,
    f9_cert: &[u8],
    key: &PrivateKey,
    facts: &AttestedKey,
) -> Result<Vec<u8>, CryptoError> {
    let f9 = Certificate::from_der(f9_cert)?;
    let subject = name(&format!("CN=YubiKey PIV Attestation {:02x}", facts.slot))?;
    let raw = |oid, bytes: Vec<u8>| -> Result<Extension, CryptoError> {
        Ok(Extension {
            extn_id: oid,
            critical: false,
            extn_value: OctetString::new(bytes)?,
        })
    };
    let extensions = vec![
        raw(OID_FIRMWARE, facts.firmware.to_vec())?,
        raw(OID_SERIAL, facts.serial.to_der()?)?,
        raw(OID_POLICY, vec![facts.pin_policy, facts.touch_policy])?,
        raw(OID_FORM_FACTOR, vec![facts.form_factor])?,
    ];
    issue(
        f9_key,
        f9.tbs_certificate.subject,
        subject,
        key.spki()?,
        Some(extensions),
    )
}

fn name(s: &str) -> Result<Name, CryptoError> {
    s.parse()
        .map_err(|_| CryptoError::Der(der::ErrorKind::Failed.into()))
}

fn ca_extension() -> Result<Extension, CryptoError> {
    let bc = BasicConstraints {
        ca: true,
        path_len_constraint: None,
    };
    Ok(Extension {
        extn_id: ObjectIdentifier::new_unwrap("2.5.29.19"),
        critical: true,
        extn_value: OctetString::new(bc.to_der()?)?,
    })
}

fn issue(
    signer: &p256::SecretKey,
    issuer: Name,
    subject: Name,
    spki: SubjectPublicKeyInfoOwned,
    extensions: Option<Vec<Extension>>,
) -> Result<Vec<u8>, CryptoError> {
    let mut serial = [0u8; 16];
    OsRng.fill_bytes(&mut serial);
    serial[0] = (serial[0] & 0x7F) | 0x01;
    let not_before = Time::try_from(SystemTime::now() - Duration::from_secs(86_400))?;
    let algorithm = AlgorithmIdentifierOwned {
        oid: OID_ECDSA_SHA256,
        parameters: None,
    };
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial)?,
        signature: algorithm.clone(),
        issuer,
        validity: Validity {
            not_before,
            not_after: Time::INFINITY,
        },
        subject,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions,
    };
    let signing_key = p256::ecdsa::SigningKey::from(signer);
    let sig: p256::ecdsa::Signature = signing_key.sign(&tbs.to_der()?);
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(sig.to_der().as_bytes())?,
    };
    Ok(cert.to_der()?)
}

/// Serde helper: byte vectors as hex strings.
pub(crate) mod hex_bytes {
    use zeroize::Zeroizing;

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        hex::decode(s)
            .map(Zeroizing::new)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn tdes_block_matches_single_des_when_keys_repeat() {
        // With K1 = K2 = K3, 3DES EDE equals single DES.
        let key = MgmKey::new(MgmAlgorithm::TripleDes, &[0x13; 24]).unwrap();
        let des = des::Des::new_from_slice(&[0x13; 8]).unwrap();
        let mut block = Block::<des::Des>::default();
        block.copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        des.encrypt_block(&mut block);
        assert_eq!(
            key.encrypt_block(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap(),
            block.to_vec()
        );
        assert_eq!(key.decrypt_block(&block).unwrap(), [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn pkcs8_round_trip() {
        let k = PrivateKey::generate(Algorithm::EccP384).unwrap();
        let der = k.to_pkcs8().unwrap();
        let back = PrivateKey::from_pkcs8(Algorithm::EccP384, &der).unwrap();
        assert_eq!(k.piv_public(), back.piv_public());
        assert!(PrivateKey::from_pkcs8(Algorithm::EccP256, &der).is_err());
    }
}
