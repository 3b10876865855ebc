//! `waxseal keys wrap-for`: wraps a plaintext EC key for another machine's TPM, on the
//! source machine, with no TPM needed here (README.md, "Importing keys"). The output is
//! what TPM2_Duplicate makes with no inner wrapper (`tpm2_duplicate -G null`), for the
//! target's ECC P-256 storage root key (SRK), so that TPM2_Import there takes it and
//! only that TPM can: the plaintext never reaches the target.
//!
//! The construction (TPM 2.0 Library Part 1, "Protected Storage" and "Duplication";
//! Part 1 §11.4.10 for KDFa and KDFe):
//! 1. seed: an ephemeral P-256 key pair (d_e, Q_e); Z = x(d_e · Q_srk);
//!    seed = KDFe(SHA-256, Z, "DUPLICATE", x(Q_e), x(Q_srk), 256 bits); the encrypted
//!    seed is Q_e as a TPMS_ECC_POINT.
//! 2. the key's TPMT_SENSITIVE (type ECC, empty authValue, a random 32-byte seedValue,
//!    the private scalar), as a TPM2B_SENSITIVE.
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
use hmac::{Hmac, Mac as _};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

const TPM_ALG_SHA256: u16 = 0x000B;
const TPM_ALG_ECC: u16 = 0x0023;
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

/// A plaintext EC private key (PKCS#8 or SEC1 PEM): curve id, scalar, x, y.
type EcKey = (u16, Zeroizing<Vec<u8>>, Vec<u8>, Vec<u8>);

fn ec_key(pem: &str) -> Result<EcKey> {
    use p256::pkcs8::DecodePrivateKey as _;
    if let Ok(k) =
        p256::SecretKey::from_pkcs8_pem(pem).or_else(|_| p256::SecretKey::from_sec1_pem(pem))
    {
        let p = k.public_key().to_encoded_point(false);
        let (x, y) = (p.x().map(|v| v.to_vec()), p.y().map(|v| v.to_vec()));
        if let (Some(x), Some(y)) = (x, y) {
            return Ok((
                TPM_ECC_NIST_P256,
                Zeroizing::new(k.to_bytes().to_vec()),
                x,
                y,
            ));
        }
    }
    if let Ok(k) =
        p384::SecretKey::from_pkcs8_pem(pem).or_else(|_| p384::SecretKey::from_sec1_pem(pem))
    {
        let p = k.public_key().to_encoded_point(false);
        let (x, y) = (p.x().map(|v| v.to_vec()), p.y().map(|v| v.to_vec()));
        if let (Some(x), Some(y)) = (x, y) {
            return Ok((
                TPM_ECC_NIST_P384,
                Zeroizing::new(k.to_bytes().to_vec()),
                x,
                y,
            ));
        }
    }
    bail!("the key is not a P-256 or P-384 private key in PEM (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`); wrap-for does not take RSA keys yet")
}

/// Wraps the private key `pem` for the storage key `srk`.
pub fn wrap(pem: &str, srk: &p256::PublicKey) -> Result<Wrapped> {
    let (curve, scalar, x, y) = ec_key(pem)?;

    // The key's TPMT_PUBLIC and Name.
    let mut public = Vec::new();
    public.extend(TPM_ALG_ECC.to_be_bytes());
    public.extend(TPM_ALG_SHA256.to_be_bytes());
    public.extend(KEY_ATTRIBUTES.to_be_bytes());
    public.extend(tpm2b(&[])?); // authPolicy
    public.extend(TPM_ALG_NULL.to_be_bytes()); // symmetric
    public.extend(TPM_ALG_NULL.to_be_bytes()); // scheme
    public.extend(curve.to_be_bytes());
    public.extend(TPM_ALG_NULL.to_be_bytes()); // kdf
    public.extend(tpm2b(&x)?);
    public.extend(tpm2b(&y)?);
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
    sensitive.extend(TPM_ALG_ECC.to_be_bytes());
    sensitive.extend(tpm2b(&[])?); // authValue
    sensitive.extend(tpm2b(&obfuscation)?); // seedValue
    sensitive.extend(tpm2b(&scalar)?);
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
}
