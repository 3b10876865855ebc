//! Signing mechanisms: which `CKM_…` the module offers, how their parameters are read,
//! and how a mechanism's input becomes the agent's `sign` request (a digest, its hash
//! and the RSA padding; or an Ed25519 message) and the agent's answer the PKCS#11
//! signature.

use std::mem::offset_of;

use cryptoki_sys::{
    CKG_MGF1_SHA256, CKG_MGF1_SHA384, CKG_MGF1_SHA512, CKM_ECDSA, CKM_ECDSA_SHA256,
    CKM_ECDSA_SHA384, CKM_ECDSA_SHA512, CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EC_KEY_PAIR_GEN,
    CKM_EDDSA, CKM_RSA_PKCS, CKM_RSA_PKCS_KEY_PAIR_GEN, CKM_RSA_PKCS_PSS, CKM_SHA256,
    CKM_SHA256_RSA_PKCS, CKM_SHA256_RSA_PKCS_PSS, CKM_SHA384, CKM_SHA384_RSA_PKCS,
    CKM_SHA384_RSA_PKCS_PSS, CKM_SHA512, CKM_SHA512_RSA_PKCS, CKM_SHA512_RSA_PKCS_PSS,
    CKR_DATA_INVALID, CKR_DATA_LEN_RANGE, CKR_DEVICE_ERROR, CKR_KEY_TYPE_INCONSISTENT,
    CKR_MECHANISM_INVALID, CKR_MECHANISM_PARAM_INVALID, CK_EDDSA_PARAMS, CK_MECHANISM_TYPE, CK_RV,
    CK_ULONG,
};
use sha2::{Digest, Sha256, Sha384, Sha512};
use waxseal_proto::proto::{DeviceKind, HashAlg, RsaPadding};

use crate::asn1::{self, Curve, PublicKey};
use crate::template::ULONG_LEN;

/// The longest input a raw mechanism (`CKM_ECDSA`, `CKM_RSA_PKCS`, `CKM_RSA_PKCS_PSS`)
/// buffers across `C_SignUpdate` calls: a DigestInfo of SHA-512 is 83 bytes.
pub const RAW_INPUT_LIMIT: usize = 1024;

/// The longest message `CKM_EDDSA` signs: the agent's limit for `sign` with a
/// `message` (docs/protocol.md, `sign`).
pub const EDDSA_MESSAGE_LIMIT: usize = waxseal_proto::proto::MAX_MESSAGE;

/// RSA modulus sizes the module offers, in bits.
pub const RSA_BITS: (usize, usize) = (2048, 4096);

/// A signing mechanism with its parameters read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// `CKM_ECDSA` (input: a digest) or `CKM_ECDSA_SHA*` (input: the message).
    Ecdsa(Option<HashAlg>),
    /// `CKM_RSA_PKCS` (input: a DigestInfo) or `CKM_SHA*_RSA_PKCS`.
    RsaPkcs(Option<HashAlg>),
    /// `CKM_RSA_PKCS_PSS` (input: a digest of `hash`; `hashed` false) or
    /// `CKM_SHA*_RSA_PKCS_PSS` (input: the message; `hashed` true).
    RsaPss {
        /// The hash the parameters name.
        hash: HashAlg,
        /// Whether the module hashes the input.
        hashed: bool,
    },
    /// `CKM_EDDSA`, Ed25519 (PureEdDSA, no context): the input is the message.
    Eddsa,
}

fn hash_of_ckm(m: CK_ULONG) -> Option<HashAlg> {
    match m {
        CKM_SHA256 => Some(HashAlg::Sha256),
        CKM_SHA384 => Some(HashAlg::Sha384),
        CKM_SHA512 => Some(HashAlg::Sha512),
        _ => None,
    }
}

fn mgf1_of(hash: HashAlg) -> CK_ULONG {
    match hash {
        HashAlg::Sha256 => CKG_MGF1_SHA256,
        HashAlg::Sha384 => CKG_MGF1_SHA384,
        HashAlg::Sha512 => CKG_MGF1_SHA512,
    }
}

/// `CK_RSA_PKCS_PSS_PARAMS` as read from the caller's `pParameter` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PssParams {
    /// `hashAlg` (a `CKM_SHA*`).
    pub hash_alg: CK_ULONG,
    /// `mgf` (a `CKG_MGF1_*`).
    pub mgf: CK_ULONG,
    /// `sLen`.
    pub salt_len: CK_ULONG,
}

impl PssParams {
    /// Reads the structure: three `CK_ULONG`s in the machine's byte order.
    pub fn decode(bytes: &[u8]) -> Result<PssParams, CK_RV> {
        if bytes.len() != 3 * ULONG_LEN {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        let word = |i: usize| {
            let mut b = [0u8; ULONG_LEN];
            b.copy_from_slice(&bytes[i * ULONG_LEN..(i + 1) * ULONG_LEN]);
            CK_ULONG::from_ne_bytes(b)
        };
        Ok(PssParams {
            hash_alg: word(0),
            mgf: word(1),
            salt_len: word(2),
        })
    }

    /// The hash, when the parameters are the ones the agent signs with: MGF1 of the
    /// same hash and a salt as long as the digest (docs/protocol.md, `sign`).
    pub fn check(&self) -> Result<HashAlg, CK_RV> {
        let hash = hash_of_ckm(self.hash_alg).ok_or(CKR_MECHANISM_PARAM_INVALID)?;
        if self.mgf != mgf1_of(hash) || self.salt_len != hash.digest_len() as CK_ULONG {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        Ok(hash)
    }
}

/// `CKM_EDDSA`'s parameters: none, or a `CK_EDDSA_PARAMS` asking for plain Ed25519
/// (`phFlag` false, no context). Ed25519ph and Ed25519ctx are not what the agent signs.
/// The context pointer is never followed: its length must be 0.
fn eddsa(params: Option<&[u8]>) -> Result<Mechanism, CK_RV> {
    let Some(bytes) = params.filter(|p| !p.is_empty()) else {
        return Ok(Mechanism::Eddsa);
    };
    if bytes.len() != size_of::<CK_EDDSA_PARAMS>() {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    let ph = bytes[offset_of!(CK_EDDSA_PARAMS, phFlag)];
    let at = offset_of!(CK_EDDSA_PARAMS, ulContextDataLen);
    let context_len = bytes
        .get(at..at + ULONG_LEN)
        .and_then(|b| b.try_into().ok())
        .map(CK_ULONG::from_ne_bytes)
        .ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    if ph != 0 || context_len != 0 {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    Ok(Mechanism::Eddsa)
}

impl Mechanism {
    /// Reads `CK_MECHANISM` (its type and parameter bytes, `None` for a NULL pointer).
    pub fn decode(ty: CK_MECHANISM_TYPE, params: Option<&[u8]>) -> Result<Mechanism, CK_RV> {
        let no_params = || match params {
            None | Some([]) => Ok(()),
            Some(_) => Err(CKR_MECHANISM_PARAM_INVALID),
        };
        let pss = |fixed: Option<HashAlg>| -> Result<Mechanism, CK_RV> {
            let params = params.ok_or(CKR_MECHANISM_PARAM_INVALID)?;
            let hash = PssParams::decode(params)?.check()?;
            if fixed.is_some_and(|f| f != hash) {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            Ok(Mechanism::RsaPss {
                hash,
                hashed: fixed.is_some(),
            })
        };
        let m = match ty {
            CKM_ECDSA => Mechanism::Ecdsa(None),
            CKM_ECDSA_SHA256 => Mechanism::Ecdsa(Some(HashAlg::Sha256)),
            CKM_ECDSA_SHA384 => Mechanism::Ecdsa(Some(HashAlg::Sha384)),
            CKM_ECDSA_SHA512 => Mechanism::Ecdsa(Some(HashAlg::Sha512)),
            CKM_RSA_PKCS => Mechanism::RsaPkcs(None),
            CKM_SHA256_RSA_PKCS => Mechanism::RsaPkcs(Some(HashAlg::Sha256)),
            CKM_SHA384_RSA_PKCS => Mechanism::RsaPkcs(Some(HashAlg::Sha384)),
            CKM_SHA512_RSA_PKCS => Mechanism::RsaPkcs(Some(HashAlg::Sha512)),
            CKM_RSA_PKCS_PSS => return pss(None),
            CKM_SHA256_RSA_PKCS_PSS => return pss(Some(HashAlg::Sha256)),
            CKM_SHA384_RSA_PKCS_PSS => return pss(Some(HashAlg::Sha384)),
            CKM_SHA512_RSA_PKCS_PSS => return pss(Some(HashAlg::Sha512)),
            CKM_EDDSA => return eddsa(params),
            _ => return Err(CKR_MECHANISM_INVALID),
        };
        no_params()?;
        Ok(m)
    }

    /// Whether the module hashes the input (multi-part input is unbounded).
    pub fn hashes(self) -> bool {
        match self {
            Mechanism::Ecdsa(h) | Mechanism::RsaPkcs(h) => h.is_some(),
            Mechanism::RsaPss { hashed, .. } => hashed,
            Mechanism::Eddsa => false,
        }
    }

    /// Checks the mechanism fits `key`; returns the signature's length.
    pub fn signature_len(self, key: &PublicKey) -> Result<usize, CK_RV> {
        match (self, key) {
            (Mechanism::Ecdsa(_), PublicKey::Ec { curve, .. }) => Ok(2 * curve.field_len()),
            (Mechanism::RsaPkcs(_) | Mechanism::RsaPss { .. }, PublicKey::Rsa { modulus, .. }) => {
                Ok(modulus.len())
            }
            (Mechanism::Eddsa, PublicKey::Ed25519 { .. }) => Ok(64),
            _ => Err(CKR_KEY_TYPE_INCONSISTENT),
        }
    }

    /// The agent's `sign` request for `input`.
    pub fn request(self, input: &[u8]) -> Result<SignRequest, CK_RV> {
        if self == Mechanism::Eddsa {
            if input.is_empty() || input.len() > EDDSA_MESSAGE_LIMIT {
                return Err(CKR_DATA_LEN_RANGE);
            }
            return Ok(SignRequest::Message(input.to_vec()));
        }
        self.digest_request(input).map(SignRequest::Digest)
    }

    fn digest_request(self, input: &[u8]) -> Result<DigestRequest, CK_RV> {
        let hashed = |hash: HashAlg| DigestRequest {
            digest: digest(hash, input),
            hash,
            padding: None,
        };
        Ok(match self {
            Mechanism::Ecdsa(Some(h)) => hashed(h),
            Mechanism::Ecdsa(None) => DigestRequest {
                hash: HashAlg::from_len(input.len()).ok_or(CKR_DATA_LEN_RANGE)?,
                digest: input.to_vec(),
                padding: None,
            },
            Mechanism::RsaPkcs(Some(h)) => DigestRequest {
                padding: Some(RsaPadding::Pkcs1),
                ..hashed(h)
            },
            Mechanism::RsaPkcs(None) => {
                let (hash, digest) = asn1::parse_digest_info(input).ok_or(CKR_DATA_INVALID)?;
                DigestRequest {
                    digest: digest.to_vec(),
                    hash,
                    padding: Some(RsaPadding::Pkcs1),
                }
            }
            Mechanism::RsaPss { hash, hashed: true } => DigestRequest {
                padding: Some(RsaPadding::Pss),
                ..hashed(hash)
            },
            Mechanism::Eddsa => return Err(CKR_MECHANISM_INVALID),
            Mechanism::RsaPss {
                hash,
                hashed: false,
            } => {
                if input.len() != hash.digest_len() {
                    return Err(CKR_DATA_LEN_RANGE);
                }
                DigestRequest {
                    digest: input.to_vec(),
                    hash,
                    padding: Some(RsaPadding::Pss),
                }
            }
        })
    }

    /// The PKCS#11 signature from the agent's answer (DER for ECDSA; the raw octet
    /// string, as long as the modulus, for RSA).
    pub fn signature(self, key: &PublicKey, answer: &[u8]) -> Result<Vec<u8>, CK_RV> {
        match key {
            PublicKey::Ec { curve, .. } => {
                asn1::ecdsa_raw(answer, *curve).map_err(|_| CKR_DEVICE_ERROR)
            }
            PublicKey::Ed25519 { .. } if answer.len() == 64 => Ok(answer.to_vec()),
            PublicKey::Rsa { modulus, .. } if answer.len() <= modulus.len() => {
                let mut out = vec![0u8; modulus.len() - answer.len()];
                out.extend_from_slice(answer);
                Ok(out)
            }
            _ => Err(CKR_DEVICE_ERROR),
        }
    }
}

/// What the agent is asked to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignRequest {
    /// A digest (ECDSA, RSA).
    Digest(DigestRequest),
    /// A whole message (Ed25519).
    Message(Vec<u8>),
}

/// A digest for the agent to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestRequest {
    /// The digest.
    pub digest: Vec<u8>,
    /// Its hash.
    pub hash: HashAlg,
    /// RSA padding (`None` for ECDSA).
    pub padding: Option<RsaPadding>,
}

/// The digest of `data`.
pub fn digest(hash: HashAlg, data: &[u8]) -> Vec<u8> {
    match hash {
        HashAlg::Sha256 => Sha256::digest(data).to_vec(),
        HashAlg::Sha384 => Sha384::digest(data).to_vec(),
        HashAlg::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// Input gathered by `C_SignUpdate`: hashed as it comes, or buffered (up to
/// [`RAW_INPUT_LIMIT`]) for a raw mechanism.
#[derive(Debug, Clone)]
pub enum Input {
    /// A raw mechanism's bytes, and how many it takes.
    Raw(Vec<u8>, usize),
    /// SHA-256 so far.
    Sha256(Sha256),
    /// SHA-384 so far.
    Sha384(Sha384),
    /// SHA-512 so far.
    Sha512(Sha512),
}

impl Input {
    /// Empty input for `mechanism`.
    pub fn new(mechanism: Mechanism) -> Input {
        let hash = match mechanism {
            Mechanism::Ecdsa(h) | Mechanism::RsaPkcs(h) => h,
            Mechanism::RsaPss { hash, hashed } => hashed.then_some(hash),
            Mechanism::Eddsa => return Input::Raw(Vec::new(), EDDSA_MESSAGE_LIMIT),
        };
        match hash {
            None => Input::Raw(Vec::new(), RAW_INPUT_LIMIT),
            Some(HashAlg::Sha256) => Input::Sha256(Sha256::new()),
            Some(HashAlg::Sha384) => Input::Sha384(Sha384::new()),
            Some(HashAlg::Sha512) => Input::Sha512(Sha512::new()),
        }
    }

    /// Adds a part.
    pub fn update(&mut self, part: &[u8]) -> Result<(), CK_RV> {
        match self {
            Input::Raw(buf, limit) => {
                if buf.len() + part.len() > *limit {
                    return Err(CKR_DATA_LEN_RANGE);
                }
                buf.extend_from_slice(part);
            }
            Input::Sha256(h) => h.update(part),
            Input::Sha384(h) => h.update(part),
            Input::Sha512(h) => h.update(part),
        }
        Ok(())
    }

    /// The agent's request for the input gathered.
    pub fn request(&self, mechanism: Mechanism) -> Result<SignRequest, CK_RV> {
        let done = |digest: Vec<u8>, hash: HashAlg| {
            let padding = match mechanism {
                Mechanism::Ecdsa(_) | Mechanism::Eddsa => None,
                Mechanism::RsaPkcs(_) => Some(RsaPadding::Pkcs1),
                Mechanism::RsaPss { .. } => Some(RsaPadding::Pss),
            };
            Ok(SignRequest::Digest(DigestRequest {
                digest,
                hash,
                padding,
            }))
        };
        match self {
            Input::Raw(buf, _) => mechanism.request(buf),
            Input::Sha256(h) => done(h.clone().finalize().to_vec(), HashAlg::Sha256),
            Input::Sha384(h) => done(h.clone().finalize().to_vec(), HashAlg::Sha384),
            Input::Sha512(h) => done(h.clone().finalize().to_vec(), HashAlg::Sha512),
        }
    }
}

/// The kinds of key a token holds, for its mechanism list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyKinds {
    /// Smallest and largest EC field in bits, if any EC key.
    pub ec: Option<(usize, usize)>,
    /// Smallest and largest RSA modulus in bits, if any RSA key.
    pub rsa: Option<(usize, usize)>,
    /// Whether any Ed25519 key.
    pub ed25519: bool,
    /// The token's RSA keys sign PKCS#1 v1.5 only ([`signs_pss`]): no PSS mechanism.
    pub pkcs1_only: bool,
}

/// Whether RSA keys of a `kind` device sign RSA-PSS: a YubiKey's do not, the agent
/// answers `unsupported` (docs/protocol.md, "How each kind of key signs").
pub fn signs_pss(kind: DeviceKind) -> bool {
    kind != DeviceKind::Yubikey
}

impl Mechanism {
    /// Whether this is one of the RSA-PSS mechanisms.
    pub fn is_pss(&self) -> bool {
        matches!(self, Mechanism::RsaPss { .. })
    }
}

impl KeyKinds {
    /// Adds a key.
    pub fn add(&mut self, key: &PublicKey) {
        let widen = |range: &mut Option<(usize, usize)>, bits: usize| {
            *range = Some(range.map_or((bits, bits), |(lo, hi)| (lo.min(bits), hi.max(bits))));
        };
        match key {
            PublicKey::Ec { curve, .. } => widen(&mut self.ec, curve.bits()),
            PublicKey::Rsa { modulus, .. } => widen(&mut self.rsa, modulus.len() * 8),
            PublicKey::Ed25519 { .. } => self.ed25519 = true,
        }
    }
}

/// Signing mechanisms for EC keys.
pub const EC_SIGN: [CK_MECHANISM_TYPE; 4] = [
    CKM_ECDSA,
    CKM_ECDSA_SHA256,
    CKM_ECDSA_SHA384,
    CKM_ECDSA_SHA512,
];
/// Signing mechanisms for RSA keys.
pub const RSA_SIGN: [CK_MECHANISM_TYPE; 8] = [
    CKM_RSA_PKCS,
    CKM_SHA256_RSA_PKCS,
    CKM_SHA384_RSA_PKCS,
    CKM_SHA512_RSA_PKCS,
    CKM_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_SHA384_RSA_PKCS_PSS,
    CKM_SHA512_RSA_PKCS_PSS,
];

/// What `C_GetMechanismInfo` says of a mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// `ulMinKeySize` (bits).
    pub min: usize,
    /// `ulMaxKeySize` (bits).
    pub max: usize,
    /// Signs (else generates key pairs).
    pub sign: bool,
    /// An EC mechanism (named curves, uncompressed points, prime fields).
    pub ec: bool,
}

/// The mechanisms of a token holding `kinds` keys that can generate keys: signing for
/// the kinds present, key-pair generation always.
pub fn list(kinds: KeyKinds, generates: bool) -> Vec<(CK_MECHANISM_TYPE, Info)> {
    let mut out = Vec::new();
    if let Some((min, max)) = kinds.ec {
        for m in EC_SIGN {
            out.push((
                m,
                Info {
                    min,
                    max,
                    sign: true,
                    ec: true,
                },
            ));
        }
    }
    if let Some((min, max)) = kinds.rsa {
        let pss = [
            CKM_RSA_PKCS_PSS,
            CKM_SHA256_RSA_PKCS_PSS,
            CKM_SHA384_RSA_PKCS_PSS,
            CKM_SHA512_RSA_PKCS_PSS,
        ];
        for m in RSA_SIGN
            .into_iter()
            .filter(|m| !(kinds.pkcs1_only && pss.contains(m)))
        {
            out.push((
                m,
                Info {
                    min,
                    max,
                    sign: true,
                    ec: false,
                },
            ));
        }
    }
    if kinds.ed25519 {
        out.push((
            CKM_EDDSA,
            Info {
                min: 256,
                max: 256,
                sign: true,
                ec: false,
            },
        ));
    }
    if generates {
        out.push((
            CKM_EC_EDWARDS_KEY_PAIR_GEN,
            Info {
                min: 256,
                max: 256,
                sign: false,
                ec: false,
            },
        ));
        out.push((
            CKM_EC_KEY_PAIR_GEN,
            Info {
                min: Curve::P256.bits(),
                max: Curve::P384.bits(),
                sign: false,
                ec: true,
            },
        ));
        out.push((
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            Info {
                min: RSA_BITS.0,
                max: RSA_BITS.1,
                sign: false,
                ec: false,
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn pss_bytes(hash: CK_ULONG, mgf: CK_ULONG, salt: CK_ULONG) -> Vec<u8> {
        [hash, mgf, salt]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect()
    }

    #[test]
    fn a_pkcs1_only_token_lists_no_pss_mechanism() {
        let mut kinds = KeyKinds {
            rsa: Some((2048, 2048)),
            ..KeyKinds::default()
        };
        let all: Vec<_> = list(kinds, false).into_iter().map(|(m, _)| m).collect();
        assert_eq!(all, RSA_SIGN);
        kinds.pkcs1_only = true;
        let some: Vec<_> = list(kinds, false).into_iter().map(|(m, _)| m).collect();
        assert_eq!(
            some,
            [
                CKM_RSA_PKCS,
                CKM_SHA256_RSA_PKCS,
                CKM_SHA384_RSA_PKCS,
                CKM_SHA512_RSA_PKCS
            ]
        );
        assert!(!signs_pss(DeviceKind::Yubikey));
        assert!(signs_pss(DeviceKind::Tpm) && signs_pss(DeviceKind::Pkcs11));
    }

    #[test]
    fn pss_parameters_must_be_the_agents() {
        let good = pss_bytes(CKM_SHA256, CKG_MGF1_SHA256, 32);
        assert_eq!(
            Mechanism::decode(CKM_RSA_PKCS_PSS, Some(&good)),
            Ok(Mechanism::RsaPss {
                hash: HashAlg::Sha256,
                hashed: false
            })
        );
        assert_eq!(
            Mechanism::decode(CKM_SHA256_RSA_PKCS_PSS, Some(&good)),
            Ok(Mechanism::RsaPss {
                hash: HashAlg::Sha256,
                hashed: true
            })
        );
        let sha512 = pss_bytes(CKM_SHA512, CKG_MGF1_SHA512, 64);
        assert!(Mechanism::decode(CKM_RSA_PKCS_PSS, Some(&sha512)).is_ok());
        for bad in [
            pss_bytes(CKM_SHA256, CKG_MGF1_SHA384, 32),
            pss_bytes(CKM_SHA256, CKG_MGF1_SHA256, 20),
            pss_bytes(CKM_SHA256, CKG_MGF1_SHA256, 0),
            pss_bytes(0x220 /* CKM_SHA_1 */, 1, 20),
            good[..16].to_vec(),
        ] {
            assert_eq!(
                Mechanism::decode(CKM_RSA_PKCS_PSS, Some(&bad)),
                Err(CKR_MECHANISM_PARAM_INVALID),
                "{bad:?}"
            );
        }
        assert_eq!(
            Mechanism::decode(CKM_RSA_PKCS_PSS, None),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
        // The hash of CKM_SHA384_RSA_PKCS_PSS is fixed.
        assert_eq!(
            Mechanism::decode(CKM_SHA384_RSA_PKCS_PSS, Some(&good)),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
        // Parameters where none belong; an unknown mechanism.
        assert_eq!(
            Mechanism::decode(CKM_ECDSA, Some(&good)),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
        assert_eq!(Mechanism::decode(0x1234, None), Err(CKR_MECHANISM_INVALID));
    }

    fn digest_of(r: Result<SignRequest, CK_RV>) -> DigestRequest {
        match r {
            Ok(SignRequest::Digest(d)) => d,
            other => panic!("expected a digest request, got {other:?}"),
        }
    }

    #[test]
    fn inputs_become_agent_requests() {
        let ecdsa = Mechanism::Ecdsa(None);
        let r = digest_of(ecdsa.request(&[1u8; 48]));
        assert_eq!((r.hash, r.digest.len()), (HashAlg::Sha384, 48));
        assert_eq!(ecdsa.request(&[1u8; 20]), Err(CKR_DATA_LEN_RANGE));
        let hashed = digest_of(Mechanism::Ecdsa(Some(HashAlg::Sha256)).request(b"abc"));
        assert_eq!(hashed.digest, digest(HashAlg::Sha256, b"abc"));
        let info = asn1::digest_info(HashAlg::Sha512, &[3u8; 64]);
        let r = digest_of(Mechanism::RsaPkcs(None).request(&info));
        assert_eq!(
            (r.hash, r.digest, r.padding),
            (HashAlg::Sha512, vec![3u8; 64], Some(RsaPadding::Pkcs1))
        );
        assert_eq!(
            Mechanism::RsaPkcs(None).request(&[3u8; 64]),
            Err(CKR_DATA_INVALID)
        );
        let pss = Mechanism::RsaPss {
            hash: HashAlg::Sha384,
            hashed: false,
        };
        assert_eq!(pss.request(&[0u8; 32]), Err(CKR_DATA_LEN_RANGE));
        assert_eq!(
            digest_of(pss.request(&[0u8; 48])).padding,
            Some(RsaPadding::Pss)
        );
        // Ed25519 signs the message itself, 1 byte to the agent's limit.
        assert_eq!(
            Mechanism::Eddsa.request(b"any length"),
            Ok(SignRequest::Message(b"any length".to_vec()))
        );
        assert_eq!(Mechanism::Eddsa.request(b""), Err(CKR_DATA_LEN_RANGE));
        assert_eq!(
            Mechanism::Eddsa.request(&vec![0u8; EDDSA_MESSAGE_LIMIT + 1]),
            Err(CKR_DATA_LEN_RANGE)
        );
    }

    #[test]
    fn eddsa_parameters_ask_for_plain_ed25519_only() {
        assert_eq!(Mechanism::decode(CKM_EDDSA, None), Ok(Mechanism::Eddsa));
        let params = |ph: u8, context: CK_ULONG| {
            let mut b = vec![0u8; size_of::<CK_EDDSA_PARAMS>()];
            b[offset_of!(CK_EDDSA_PARAMS, phFlag)] = ph;
            let at = offset_of!(CK_EDDSA_PARAMS, ulContextDataLen);
            b[at..at + ULONG_LEN].copy_from_slice(&context.to_ne_bytes());
            b
        };
        assert_eq!(
            Mechanism::decode(CKM_EDDSA, Some(&params(0, 0))),
            Ok(Mechanism::Eddsa)
        );
        for bad in [params(1, 0), params(0, 4), vec![0u8; 3]] {
            assert_eq!(
                Mechanism::decode(CKM_EDDSA, Some(&bad)),
                Err(CKR_MECHANISM_PARAM_INVALID)
            );
        }
        let ed = PublicKey::Ed25519 { point: vec![1; 32] };
        assert_eq!(Mechanism::Eddsa.signature_len(&ed), Ok(64));
        assert_eq!(
            Mechanism::Ecdsa(None).signature_len(&ed),
            Err(CKR_KEY_TYPE_INCONSISTENT)
        );
        assert_eq!(
            Mechanism::Eddsa.signature(&ed, &[5u8; 64]),
            Ok(vec![5u8; 64])
        );
        assert_eq!(
            Mechanism::Eddsa.signature(&ed, &[5u8; 63]),
            Err(CKR_DEVICE_ERROR)
        );
    }

    #[test]
    fn multi_part_input_equals_single_part() {
        for m in [
            Mechanism::Ecdsa(Some(HashAlg::Sha384)),
            Mechanism::RsaPkcs(None),
            Mechanism::RsaPss {
                hash: HashAlg::Sha512,
                hashed: true,
            },
        ] {
            let data = if m.hashes() {
                b"a message in three parts".to_vec()
            } else {
                asn1::digest_info(HashAlg::Sha256, &[5u8; 32])
            };
            let mut input = Input::new(m);
            for part in data.chunks(7) {
                input.update(part).unwrap();
            }
            assert_eq!(input.request(m), m.request(&data));
        }
        let mut raw = Input::new(Mechanism::Ecdsa(None));
        assert_eq!(
            raw.update(&[0u8; RAW_INPUT_LIMIT + 1]),
            Err(CKR_DATA_LEN_RANGE)
        );
    }

    #[test]
    fn signatures_fit_their_key() {
        let ec = PublicKey::Ec {
            curve: Curve::P384,
            point: vec![4; 97],
        };
        let rsa = PublicKey::Rsa {
            modulus: vec![0xc0; 256],
            exponent: vec![1, 0, 1],
        };
        assert_eq!(Mechanism::Ecdsa(None).signature_len(&ec), Ok(96));
        assert_eq!(Mechanism::RsaPkcs(None).signature_len(&rsa), Ok(256));
        assert_eq!(
            Mechanism::RsaPkcs(None).signature_len(&ec),
            Err(CKR_KEY_TYPE_INCONSISTENT)
        );
        // A short RSA answer is left-padded; a long one is the device's fault.
        let sig = Mechanism::RsaPkcs(None)
            .signature(&rsa, &[7u8; 255])
            .unwrap();
        assert_eq!((sig.len(), sig[0], sig[1]), (256, 0, 7));
        assert_eq!(
            Mechanism::RsaPkcs(None).signature(&rsa, &[7u8; 257]),
            Err(CKR_DEVICE_ERROR)
        );
    }
}
