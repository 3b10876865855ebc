//! `waxseal keys wrap-for`: wraps a plaintext P-256, P-384 or RSA 2048/3072 key for
//! another machine's TPM, on the source machine, with no TPM needed here (README.md,
//! "Importing keys"). The output is what TPM2_Duplicate makes with no inner wrapper
//! (`tpm2_duplicate -G null`), for the target's ECC P-256 storage root key (SRK), so
//! that TPM2_Import there takes it and only that TPM can: the plaintext never reaches
//! the target. It is written as an importable TSS2 key file (id-importablekey, the
//! form ssh-tpm-agent's remote wrapping uses; read back by [`from_importable_pem`] for
//! `keys import`) or as the three tpm2-tools files.
//!
//! The construction (TPM 2.0 Library Part 1, "Protected Storage" and "Duplication";
//! Part 1 §11.4.10 for KDFa and KDFe):
//! 1. seed: an ephemeral P-256 key pair (d_e, Q_e); Z = x(d_e · Q_srk);
//!    seed = KDFe(SHA-256, Z, "DUPLICATE", x(Q_e), x(Q_srk), 256 bits); the encrypted
//!    seed is Q_e as a TPMS_ECC_POINT.
//! 2. the key's TPMT_SENSITIVE (type, empty authValue, a random 32-byte seedValue,
//!    the private scalar or for RSA the prime p), as a TPM2B_SENSITIVE.
//! 3. outer wrapper: symKey = KDFa(SHA-256, seed, "STORAGE", name, "", 128 bits);
//!    encSensitive = AES-128-CFB(symKey, IV = 0, TPM2B_SENSITIVE);
//!    hmacKey = KDFa(SHA-256, seed, "INTEGRITY", "", "", 256 bits);
//!    outerHMAC = HMAC-SHA256(hmacKey, encSensitive ‖ name);
//!    duplicate = TPM2B_DIGEST(outerHMAC) ‖ encSensitive.
//!
//! `name` is the key's Name: nameAlg (SHA-256) ‖ SHA-256(TPMT_PUBLIC). The public area
//! is an unrestricted signing key: `userWithAuth | sign`, no scheme, no policy.

use aes::cipher::{BlockEncrypt as _, KeyInit as _};

use anyhow::{anyhow, bail, Result};
use der::asn1::{Any, ObjectIdentifier, OctetString};
use der::{Decode as _, Encode as _, Sequence};
use hmac::{Hmac, Mac as _};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

const TPM_ALG_SHA256: u16 = 0x000B;
const TPM_ALG_ECC: u16 = 0x0023;
const TPM_ALG_RSA: u16 = 0x0001;
const TPM_ALG_NULL: u16 = 0x0010;
const TPM_ALG_AES: u16 = 0x0006;
const TPM_ALG_CFB: u16 = 0x0043;
const TPM_ECC_NIST_P256: u16 = 0x0003;
const TPM_ECC_NIST_P384: u16 = 0x0004;
/// `userWithAuth | sign`.
const KEY_ATTRIBUTES: u32 = (1 << 6) | (1 << 18);

/// What wrapping gives: the three TPM2B files `waxseal keys import` (and tpm2-tools)
/// read, each with its 2-byte size.
#[derive(Debug, Clone)]
pub struct Wrapped {
    /// TPM2B_PUBLIC of the key.
    pub public: Vec<u8>,
    /// TPM2B_PRIVATE: the duplicate.
    pub duplicate: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET: the seed, encrypted to the SRK.
    pub seed: Vec<u8>,
}

fn tpm2b(body: &[u8]) -> Result<Vec<u8>> {
    let n = u16::try_from(body.len()).map_err(|_| anyhow!("a TPM2B over 65535 bytes"))?;
    let mut v = n.to_be_bytes().to_vec();
    v.extend_from_slice(body);
    Ok(v)
}

/// KDFa (Part 1 §11.4.10.2): HMAC-SHA256 in counter mode; `label` without its NUL.
fn kdfa(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Zeroizing<Vec<u8>> {
    let bytes = (bits as usize).div_ceil(8);
    let mut out = Zeroizing::new(Vec::with_capacity(bytes + 32));
    let mut counter: u32 = 0;
    while out.len() < bytes {
        counter += 1;
        let Ok(mut mac) = <Hmac<Sha256> as hmac::Mac>::new_from_slice(key) else {
            break; // HMAC takes keys of any length
        };
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
    }
    out.truncate(bytes);
    out
}

/// KDFe (Part 1 §11.4.10.3): SHA-256 in counter mode over Z; `label` without its NUL.
fn kdfe(z: &[u8], label: &str, party_u: &[u8], party_v: &[u8], bits: u32) -> Zeroizing<Vec<u8>> {
    let bytes = (bits as usize).div_ceil(8);
    let mut out = Zeroizing::new(Vec::with_capacity(bytes + 32));
    let mut counter: u32 = 0;
    while out.len() < bytes {
        counter += 1;
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        h.update(label.as_bytes());
        h.update([0]);
        h.update(party_u);
        h.update(party_v);
        out.extend_from_slice(&h.finalize());
    }
    out.truncate(bytes);
    out
}

/// AES-128 in full-block CFB mode (CFB128), IV 0, as the TPM's outer wrapper uses.
fn aes128_cfb(key: &[u8], data: &mut [u8]) -> Result<()> {
    let cipher = aes::Aes128::new_from_slice(key).map_err(|_| anyhow!("AES-128 key length"))?;
    let mut register = [0u8; 16];
    for chunk in data.chunks_mut(16) {
        let mut block = aes::Block::from(register);
        cipher.encrypt_block(&mut block);
        for (b, k) in chunk.iter_mut().zip(block.iter()) {
            *b ^= k;
        }
        register = [0u8; 16];
        register[..chunk.len()].copy_from_slice(chunk);
    }
    Ok(())
}

/// The x and y of the target SRK's P-256 public key, from a TPM2B_PUBLIC
/// (`tpm2_readpublic -o`) or a PEM SubjectPublicKeyInfo (`tpm2_readpublic -f pem -o`).
/// A TPM2B_PUBLIC must be the SRK waxseal's agent uses: ECC P-256, nameAlg SHA-256,
/// restricted decryption, AES-128-CFB.
pub fn srk_point(file: &[u8]) -> Result<p256::PublicKey> {
    if let Ok(text) = std::str::from_utf8(file) {
        if text.contains("-----BEGIN PUBLIC KEY-----") {
            use p256::pkcs8::DecodePublicKey as _;
            return p256::PublicKey::from_public_key_pem(text).map_err(|e| {
                anyhow!("the storage key PEM is not a P-256 public key ({e}); the agent's SRK is ECC P-256")
            });
        }
    }
    let mut r = Reader(file);
    let size = r.u16()? as usize;
    if size != r.0.len() {
        bail!("not a TPM2B_PUBLIC (tpm2_readpublic -o) nor a PEM public key: size {size}, {} bytes follow", r.0.len());
    }
    let (alg, name_alg, attrs) = (r.u16()?, r.u16()?, r.u32()?);
    if alg != TPM_ALG_ECC || name_alg != TPM_ALG_SHA256 {
        bail!("the storage key is not an ECC key with nameAlg SHA-256 (the agent's SRK is)");
    }
    let restricted_decrypt = (1 << 16) | (1 << 17);
    if attrs & restricted_decrypt != restricted_decrypt {
        bail!("the key is not a storage key (restricted|decrypt): a TPM imports under a storage parent, such as the SRK, never under a signing key or the EK's role");
    }
    r.tpm2b()?; // authPolicy
    let (sym, bits, mode) = (r.u16()?, r.u16()?, r.u16()?);
    if (sym, bits, mode) != (TPM_ALG_AES, 128, TPM_ALG_CFB) {
        bail!("the storage key's symmetric algorithm is not AES-128-CFB (the agent's SRK's is)");
    }
    if r.u16()? != TPM_ALG_NULL {
        bail!("the storage key has a scheme; a storage key has none");
    }
    if r.u16()? != TPM_ECC_NIST_P256 {
        bail!("the storage key is not on P-256");
    }
    if r.u16()? != TPM_ALG_NULL {
        bail!("the storage key has a KDF; the SRK template has none");
    }
    let x = r.tpm2b()?;
    let y = r.tpm2b()?;
    if x.len() != 32 || y.len() != 32 {
        bail!("the storage key's point is not 32-byte coordinates");
    }
    let mut sec1 = vec![0x04];
    sec1.extend_from_slice(x);
    sec1.extend_from_slice(y);
    p256::PublicKey::from_sec1_bytes(&sec1)
        .map_err(|_| anyhow!("the storage key's point is not on P-256"))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            bail!("the TPM2B_PUBLIC ends early");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn tpm2b(&mut self) -> Result<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

/// A plaintext private key's TPMT_PUBLIC (unrestricted signing key, nameAlg SHA-256,
/// `userWithAuth | sign`, no scheme, no policy) and the sensitive part of its
/// TPMT_SENSITIVE (type, then the TPM2B of the private scalar or the prime p).
struct Plain {
    public: Vec<u8>,
    sens_type: u16,
    sensitive: Zeroizing<Vec<u8>>,
}

fn ec_public(curve: u16, x: &[u8], y: &[u8]) -> Result<Vec<u8>> {
    let mut public = Vec::new();
    public.extend(TPM_ALG_ECC.to_be_bytes());
    public.extend(TPM_ALG_SHA256.to_be_bytes());
    public.extend(KEY_ATTRIBUTES.to_be_bytes());
    public.extend(tpm2b(&[])?); // authPolicy
    public.extend(TPM_ALG_NULL.to_be_bytes()); // symmetric
    public.extend(TPM_ALG_NULL.to_be_bytes()); // scheme
    public.extend(curve.to_be_bytes());
    public.extend(TPM_ALG_NULL.to_be_bytes()); // kdf
    public.extend(tpm2b(x)?);
    public.extend(tpm2b(y)?);
    Ok(public)
}

/// A P-256 or P-384 key (PKCS#8 or SEC1 PEM).
fn ec_key(pem: &str) -> Option<Result<Plain>> {
    use p256::pkcs8::DecodePrivateKey as _;
    if let Ok(k) =
        p256::SecretKey::from_pkcs8_pem(pem).or_else(|_| p256::SecretKey::from_sec1_pem(pem))
    {
        let p = k.public_key().to_encoded_point(false);
        let (x, y) = (p.x()?, p.y()?);
        return Some(ec_public(TPM_ECC_NIST_P256, x, y).and_then(|public| {
            Ok(Plain {
                public,
                sens_type: TPM_ALG_ECC,
                sensitive: Zeroizing::new(tpm2b(&k.to_bytes())?),
            })
        }));
    }
    if let Ok(k) =
        p384::SecretKey::from_pkcs8_pem(pem).or_else(|_| p384::SecretKey::from_sec1_pem(pem))
    {
        let p = k.public_key().to_encoded_point(false);
        let (x, y) = (p.x()?, p.y()?);
        return Some(ec_public(TPM_ECC_NIST_P384, x, y).and_then(|public| {
            Ok(Plain {
                public,
                sens_type: TPM_ALG_ECC,
                sensitive: Zeroizing::new(tpm2b(&k.to_bytes())?),
            })
        }));
    }
    None
}

/// An RSA 2048 or 3072 key of two primes (PKCS#8 or PKCS#1 PEM): TPMS_RSA_PARMS with
/// no symmetric algorithm, no scheme, the key size and the exponent (0 for 65537, the
/// TPM's default); unique is the modulus n; the sensitive part is the prime p (TPM 2.0
/// Part 2, TPMU_SENSITIVE_COMPOSITE: the TPM recomputes q and d from n and p).
fn rsa_key(pem: &str) -> Option<Result<Plain>> {
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    use rsa::pkcs8::DecodePrivateKey as _;
    use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
    let k = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
        .ok()?;
    Some((|| {
        let bits = k.n().bits();
        if bits != 2048 && bits != 3072 {
            bail!("the RSA key has {bits} bits; a TPM key is RSA 2048 or 3072");
        }
        let [p, _q] = k.primes() else {
            bail!("the RSA key has more than two primes; a TPM key has two");
        };
        let e_bytes = k.e().to_bytes_be();
        if e_bytes.len() > 4 {
            bail!("the RSA public exponent does not fit the TPM's 32 bits");
        }
        let e = e_bytes.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b));
        let exponent = if e == 65_537 { 0 } else { e };
        let n = k.n().to_bytes_be();
        let p = Zeroizing::new(p.to_bytes_be());
        if p.len() > bits / 16 {
            bail!("the RSA key's prime p is longer than half the modulus");
        }
        let mut public = Vec::new();
        public.extend(TPM_ALG_RSA.to_be_bytes());
        public.extend(TPM_ALG_SHA256.to_be_bytes());
        public.extend(KEY_ATTRIBUTES.to_be_bytes());
        public.extend(tpm2b(&[])?); // authPolicy
        public.extend(TPM_ALG_NULL.to_be_bytes()); // symmetric
        public.extend(TPM_ALG_NULL.to_be_bytes()); // scheme
        public.extend((bits as u16).to_be_bytes()); // keyBits
        public.extend(exponent.to_be_bytes());
        public.extend(tpm2b(&n)?);
        Ok(Plain {
            public,
            sens_type: TPM_ALG_RSA,
            sensitive: Zeroizing::new(tpm2b(&p)?),
        })
    })())
}

fn plain_key(pem: &str) -> Result<Plain> {
    if let Some(k) = ec_key(pem).or_else(|| rsa_key(pem)) {
        return k;
    }
    bail!("the key is not a P-256, P-384, RSA 2048 or RSA 3072 private key in PEM (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`; not encrypted)")
}

/// Wraps the private key `pem` for the storage key `srk`.
pub fn wrap(pem: &str, srk: &p256::PublicKey) -> Result<Wrapped> {
    let Plain {
        public,
        sens_type,
        sensitive: sensitive_part,
    } = plain_key(pem)?;
    let mut name = TPM_ALG_SHA256.to_be_bytes().to_vec();
    name.extend(Sha256::digest(&public));

    // The seed, shared with the SRK by ECDH (one-pass, ephemeral on our side).
    let ephemeral = loop {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(&mut bytes[..]).map_err(|e| anyhow!("no randomness: {e}"))?;
        // A value at or over the group order (odds about 2^-32) is drawn again.
        if let Ok(k) = p256::SecretKey::from_slice(&bytes[..]) {
            break k;
        }
    };
    let q_e = ephemeral.public_key().to_encoded_point(false);
    let shared = (srk.to_projective() * *ephemeral.to_nonzero_scalar()).to_affine();
    let shared = shared.to_encoded_point(false);
    let (Some(z), Some(ex), Some(ey)) = (shared.x(), q_e.x(), q_e.y()) else {
        bail!("ECDH gave the point at infinity");
    };
    let srk_point = srk.to_encoded_point(false);
    let Some(srk_x) = srk_point.x() else {
        bail!("the storage key is the point at infinity");
    };
    let z = Zeroizing::new(z.to_vec());
    let seed = kdfe(&z, "DUPLICATE", ex, srk_x, 256);
    let mut enc_seed = tpm2b(ex)?;
    enc_seed.extend(tpm2b(ey)?);

    // TPM2B_SENSITIVE of the key.
    let mut obfuscation = [0u8; 32];
    getrandom::getrandom(&mut obfuscation).map_err(|e| anyhow!("no randomness: {e}"))?;
    let mut sensitive = Zeroizing::new(Vec::new());
    sensitive.extend(sens_type.to_be_bytes());
    sensitive.extend(tpm2b(&[])?); // authValue
    sensitive.extend(tpm2b(&obfuscation)?); // seedValue
    sensitive.extend_from_slice(&sensitive_part);
    let mut enc_sensitive = Zeroizing::new(tpm2b(&sensitive)?);

    // The outer wrapper.
    let sym_key = kdfa(&seed, "STORAGE", &name, &[], 128);
    aes128_cfb(&sym_key, &mut enc_sensitive)?;
    let hmac_key = kdfa(&seed, "INTEGRITY", &[], &[], 256);
    let mut mac =
        <Hmac<Sha256> as hmac::Mac>::new_from_slice(&hmac_key).map_err(|_| anyhow!("HMAC key"))?;
    mac.update(&enc_sensitive);
    mac.update(&name);
    let outer = mac.finalize().into_bytes();
    let mut duplicate = tpm2b(&outer)?;
    duplicate.extend_from_slice(&enc_sensitive);

    Ok(Wrapped {
        public: tpm2b(&public)?,
        duplicate: tpm2b(&duplicate)?,
        seed: tpm2b(&enc_seed)?,
    })
}

// --- The importable TSS2 key file ------------------------------------------------

/// id-importablekey (2.23.133.10.1.4): a TSS2 key file to be taken in by TPM2_Import.
pub const OID_IMPORTABLE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.10.1.4");
const OID_LOADABLE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.10.1.3");
const OID_OLD_LOADABLE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.10.2");
const OID_SEALED: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.10.1.5");

/// `parent` meaning the primary key made in the owner hierarchy from the standard ECC
/// P-256 SRK template, the agent's SRK (README.md, "Importing keys").
pub const PARENT_OWNER: u32 = 0x4000_0001;

/// The PEM label of TSS2 key files.
pub const PEM_LABEL: &str = "TSS2 PRIVATE KEY";

/// The most one TPM2B field of an importable file may hold (the protocol's bound on a
/// TPM blob, size prefix included).
pub const MAX_FIELD: usize = waxseal_proto::proto::MAX_TPM_BLOB;

/// The most an importable PEM file may hold: three fields in base64 and some text.
pub const MAX_IMPORTABLE_PEM: usize = 24 * 1024;

/// `TPMKey` of the TSS2 key file draft (draft-bottomley-tpm2-keys, "ASN.1 Specification
/// for TPM 2.0 Key Files"), all fields; pubkey, privkey and secret hold the TPM2B
/// encodings (TPM2B_PUBLIC, TPM2B_PRIVATE, TPM2B_ENCRYPTED_SECRET) with their 2-byte
/// sizes, as ssh-tpm-agent and openssl_tpm2_engine write them.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
struct TpmKey {
    key_type: ObjectIdentifier,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    empty_auth: Option<bool>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    policy: Option<Any>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    secret: Option<OctetString>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    auth_policy: Option<Any>,
    #[asn1(context_specific = "4", tag_mode = "EXPLICIT", optional = "true")]
    description: Option<String>,
    #[asn1(context_specific = "5", tag_mode = "EXPLICIT", optional = "true")]
    rsa_parent: Option<bool>,
    parent: u32,
    pubkey: OctetString,
    privkey: OctetString,
}

/// What an importable key file holds besides the three parts.
#[derive(Debug, Clone)]
pub struct Importable {
    /// The three parts, each a TPM2B with its size.
    pub parts: Wrapped,
    /// `emptyAuth`: the key has no auth value.
    pub empty_auth: bool,
    /// `description`, when there is one.
    pub description: Option<String>,
}

/// Writes `w` as an importable TSS2 key file (PEM) for the owner SRK, with
/// `emptyAuth` (wrap-for gives keys an empty auth value).
pub fn to_importable_pem(w: &Wrapped) -> Result<String> {
    let key = TpmKey {
        key_type: OID_IMPORTABLE,
        empty_auth: Some(true),
        policy: None,
        secret: Some(OctetString::new(w.seed.clone())?),
        auth_policy: None,
        description: None,
        rsa_parent: None,
        parent: PARENT_OWNER,
        pubkey: OctetString::new(w.public.clone())?,
        privkey: OctetString::new(w.duplicate.clone())?,
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(key.to_der()?);
    let mut pem = format!("-----BEGIN {PEM_LABEL}-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    Ok(pem)
}

/// True when `bytes` look like a TSS2 PEM key file.
pub fn is_tss2_pem(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|t| t.contains(&format!("-----BEGIN {PEM_LABEL}-----")))
}

/// Checks that `field` is one TPM2B (its size prefix says its length) within bounds.
fn tpm2b_field(what: &str, field: &[u8]) -> Result<Vec<u8>> {
    if field.len() > MAX_FIELD {
        bail!(
            "{what} holds {} bytes, over the {MAX_FIELD} a TPM blob may have",
            field.len()
        );
    }
    let ok =
        field.len() > 2 && usize::from(u16::from_be_bytes([field[0], field[1]])) == field.len() - 2;
    if !ok {
        bail!("{what} is not a TPM2B (its 2-byte size does not match its length)");
    }
    Ok(field.to_vec())
}

/// Reads an importable TSS2 key file (PEM): type id-importablekey, parent the owner
/// SRK, a secret, no policy. Everything else is refused naming what is wrong.
pub fn from_importable_pem(text: &str) -> Result<Importable> {
    use base64::Engine as _;
    if text.len() > MAX_IMPORTABLE_PEM {
        bail!("over {MAX_IMPORTABLE_PEM} bytes: not an importable key file");
    }
    let begin = format!("-----BEGIN {PEM_LABEL}-----");
    let end = format!("-----END {PEM_LABEL}-----");
    let Some(start) = text.find(&begin) else {
        bail!("no `{begin}` line: not a TSS2 key file");
    };
    let body = &text[start + begin.len()..];
    let Some(stop) = body.find(&end) else {
        bail!("no `{end}` line");
    };
    let b64: String = body[..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| anyhow!("the PEM body is not base64: {e}"))?;
    let key = TpmKey::from_der(&der)
        .map_err(|e| anyhow!("not a TSS2 key file (TPMKey of draft-bottomley-tpm2-keys): {e}"))?;
    if key.key_type != OID_IMPORTABLE {
        let what = if key.key_type == OID_LOADABLE || key.key_type == OID_OLD_LOADABLE {
            "a loadable key (id-loadablekey): it is already wrapped by the storage key of the TPM that made it and loads only there; an importable key (id-importablekey, 2.23.133.10.1.4) is what another TPM takes in".to_string()
        } else if key.key_type == OID_SEALED {
            "sealed data (id-sealedkey), not a key".to_string()
        } else {
            format!(
                "type {} is not id-importablekey (2.23.133.10.1.4)",
                key.key_type
            )
        };
        bail!("{what}");
    }
    if key.rsa_parent == Some(true) {
        bail!("the key is wrapped for an RSA storage key (rsaParent); the agent imports under its ECC P-256 SRK: wrap it for that key's public");
    }
    if key.parent != PARENT_OWNER {
        bail!(
            "the key is wrapped for parent {:#010x}; the agent imports only under its SRK, the owner hierarchy's primary from the standard ECC P-256 template (parent 0x40000001): wrap it for that key's public (README.md, \"Importing keys\")",
            key.parent
        );
    }
    if key.policy.is_some() || key.auth_policy.is_some() {
        bail!("the key file carries a policy ([1] policy or [3] authPolicy); an imported key signs with its auth value only, so the policy would be lost: wrap the key without one");
    }
    let Some(secret) = key.secret else {
        bail!("the importable key has no secret ([2], the encrypted seed)");
    };
    Ok(Importable {
        parts: Wrapped {
            public: tpm2b_field("pubkey (TPM2B_PUBLIC)", key.pubkey.as_bytes())?,
            duplicate: tpm2b_field(
                "privkey (TPM2B_PRIVATE, the duplicate)",
                key.privkey.as_bytes(),
            )?,
            seed: tpm2b_field(
                "secret (TPM2B_ENCRYPTED_SECRET, the seed)",
                secret.as_bytes(),
            )?,
        },
        empty_auth: key.empty_auth == Some(true),
        description: key.description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_is_the_tpm_counter_mode_kdf() {
        // Recomputed here from its definition: one block, counter 1.
        let out = kdfa(b"k", "STORAGE", b"u", b"v", 128);
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(b"k").unwrap();
        mac.update(&[0, 0, 0, 1]);
        mac.update(b"STORAGE\0uv");
        mac.update(&[0, 0, 0, 128]);
        assert_eq!(&out[..], &mac.finalize().into_bytes()[..16]);
        assert_eq!(kdfa(b"k", "X", b"", b"", 512).len(), 64);
    }

    #[test]
    fn cfb_decrypts_back() {
        let mut data = b"eighteen byte text".to_vec();
        aes128_cfb(&[7u8; 16], &mut data).unwrap();
        assert_ne!(&data[..], b"eighteen byte text");
        // CFB decryption: the register takes the ciphertext.
        let cipher = aes::Aes128::new_from_slice(&[7u8; 16]).unwrap();
        let mut register = [0u8; 16];
        let mut plain = Vec::new();
        for chunk in data.chunks(16) {
            let mut block = aes::Block::from(register);
            cipher.encrypt_block(&mut block);
            plain.extend(chunk.iter().zip(block.iter()).map(|(c, k)| c ^ k));
            register = [0u8; 16];
            register[..chunk.len()].copy_from_slice(chunk);
        }
        assert_eq!(plain, b"eighteen byte text");
    }

    #[test]
    fn a_signing_key_is_not_a_storage_key() {
        let mut file = vec![0, 0];
        file.extend(TPM_ALG_ECC.to_be_bytes());
        file.extend(TPM_ALG_SHA256.to_be_bytes());
        file.extend(KEY_ATTRIBUTES.to_be_bytes());
        let n = (file.len() - 2) as u16;
        file[..2].copy_from_slice(&n.to_be_bytes());
        let e = srk_point(&file).unwrap_err().to_string();
        assert!(e.contains("not a storage key"), "{e}");
    }

    fn parts() -> Wrapped {
        Wrapped {
            public: tpm2b(&[1u8; 90]).unwrap(),
            duplicate: tpm2b(&[2u8; 150]).unwrap(),
            seed: tpm2b(&[3u8; 68]).unwrap(),
        }
    }

    fn reencode(f: impl FnOnce(&mut TpmKey)) -> String {
        use base64::Engine as _;
        let pem = to_importable_pem(&parts()).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut key = TpmKey::from_der(&der).unwrap();
        f(&mut key);
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.to_der().unwrap());
        format!("-----BEGIN TSS2 PRIVATE KEY-----\n{b64}\n-----END TSS2 PRIVATE KEY-----\n")
    }

    #[test]
    fn importable_file_round_trips_with_the_draft_layout() {
        let pem = to_importable_pem(&parts()).unwrap();
        assert!(is_tss2_pem(pem.as_bytes()));
        let back = from_importable_pem(&pem).unwrap();
        assert_eq!(back.parts.public, parts().public);
        assert_eq!(back.parts.duplicate, parts().duplicate);
        assert_eq!(back.parts.seed, parts().seed);
        assert!(back.empty_auth);
        let key = {
            use base64::Engine as _;
            let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        };
        // SEQUENCE { OID 2.23.133.10.1.4, [0] { TRUE }, [2] { OCTET STRING 0044 … } …
        let body = &key[4..];
        assert_eq!(
            &body[..18],
            &[
                0x06, 0x06, 0x67, 0x81, 0x05, 0x0a, 0x01, 0x04, 0xa0, 0x03, 0x01, 0x01, 0xff, 0xa2,
                0x48, 0x04, 0x46, 0x00
            ]
        );
        // … INTEGER 0x40000001, then pubkey and privkey.
        assert!(key
            .windows(6)
            .any(|w| w == [0x02, 0x04, 0x40, 0x00, 0x00, 0x01]));
    }

    #[test]
    fn importable_file_refusals_name_the_reason() {
        let err = |pem: &str| from_importable_pem(pem).unwrap_err().to_string();
        let e = err(&reencode(|k| k.key_type = OID_LOADABLE));
        assert!(e.contains("loadable key"), "{e}");
        let e = err(&reencode(|k| {
            k.key_type = ObjectIdentifier::new_unwrap("1.2.3.4")
        }));
        assert!(e.contains("1.2.3.4 is not id-importablekey"), "{e}");
        let e = err(&reencode(|k| k.parent = 0x8100_0001));
        assert!(e.contains("parent 0x81000001"), "{e}");
        let e = err(&reencode(|k| k.rsa_parent = Some(true)));
        assert!(e.contains("rsaParent"), "{e}");
        let e = err(&reencode(|k| k.secret = None));
        assert!(e.contains("no secret"), "{e}");
        let e = err(&reencode(|k| {
            k.policy = Some(Any::new(der::Tag::Sequence, Vec::<u8>::new()).unwrap())
        }));
        assert!(e.contains("policy"), "{e}");
        let e = err(&reencode(|k| {
            k.pubkey = OctetString::new(vec![0, 9, 1]).unwrap()
        }));
        assert!(e.contains("pubkey (TPM2B_PUBLIC) is not a TPM2B"), "{e}");
        let big = tpm2b(&vec![0u8; MAX_FIELD]).unwrap();
        let e = err(&reencode(|k| k.privkey = OctetString::new(big).unwrap()));
        assert!(e.contains("over the 4096"), "{e}");
        let e = err("-----BEGIN TSS2 PRIVATE KEY-----\nMAA=\n-----END TSS2 PRIVATE KEY-----\n");
        assert!(e.contains("not a TSS2 key file"), "{e}");
        let e = err(&"x".repeat(MAX_IMPORTABLE_PEM + 1));
        assert!(e.contains("over"), "{e}");
        // Every truncation of the DER is refused.
        let pem = to_importable_pem(&parts()).unwrap();
        use base64::Engine as _;
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        for n in 0..der.len() {
            let b = base64::engine::general_purpose::STANDARD.encode(&der[..n]);
            assert!(
                from_importable_pem(&format!(
                    "-----BEGIN TSS2 PRIVATE KEY-----\n{b}\n-----END TSS2 PRIVATE KEY-----"
                ))
                .is_err(),
                "truncated at {n}"
            );
        }
    }

    #[test]
    fn rsa_public_area_has_the_modulus_and_default_exponent() {
        use rsa::pkcs8::EncodePrivateKey as _;
        use rsa::traits::PublicKeyParts as _;
        let k = rsa::RsaPrivateKey::new(&mut rand_core_os(), 2048).unwrap();
        let pem = k.to_pkcs8_pem(Default::default()).unwrap();
        let plain = plain_key(&pem).unwrap();
        let p = &plain.public;
        assert_eq!(&p[..2], &TPM_ALG_RSA.to_be_bytes());
        // type, nameAlg, attributes, empty policy, NULL sym, NULL scheme, 2048, exponent 0
        assert_eq!(&p[10..20], &[0, 0x10, 0, 0x10, 0x08, 0x00, 0, 0, 0, 0]);
        assert_eq!(&p[20..22], &256u16.to_be_bytes());
        assert_eq!(&p[22..], &k.n().to_bytes_be()[..]);
        assert_eq!(plain.sensitive.len(), 2 + 128);
    }

    fn rand_core_os() -> impl rsa::rand_core::CryptoRngCore {
        rsa::rand_core::OsRng
    }
}
