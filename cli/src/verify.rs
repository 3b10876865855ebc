//! Signature checks done locally, with RustCrypto, against a SubjectPublicKeyInfo.
//!
//! The CLI verifies without trusting the agent: the public key comes from the agent or
//! from a PEM file, the check runs here.

use std::io::Read;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256, Sha384, Sha512};
use waxseal_proto::proto::HashAlg;

/// A public key of a kind waxseal signs with.
#[derive(Debug, Clone)]
pub enum AnyPublicKey {
    /// ECDSA P-256.
    P256(p256::ecdsa::VerifyingKey),
    /// ECDSA P-384.
    P384(p384::ecdsa::VerifyingKey),
    /// RSA.
    Rsa(rsa::RsaPublicKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl AnyPublicKey {
    /// Parses SPKI DER.
    pub fn from_spki(der: &[u8]) -> Result<Self> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(AnyPublicKey::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(AnyPublicKey::P384(k));
        }
        if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(der) {
            return Ok(AnyPublicKey::Rsa(k));
        }
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_der(der) {
            return Ok(AnyPublicKey::Ed25519(k));
        }
        bail!("unsupported public key (expected ECDSA P-256/P-384, RSA or Ed25519)")
    }

    /// The hash a file is signed with by default.
    pub fn default_hash(&self) -> HashAlg {
        match self {
            AnyPublicKey::P384(_) => HashAlg::Sha384,
            _ => HashAlg::Sha256,
        }
    }

    /// Checks `signature` over `digest` (for Ed25519: over the digest bytes as message).
    /// Returns the algorithm name on success.
    pub fn verify_digest(
        &self,
        digest: &[u8],
        hash: HashAlg,
        signature: &[u8],
        pss: bool,
    ) -> Result<String> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        let fail = |e: &dyn std::fmt::Display| anyhow!("signature does NOT verify: {e}");
        match self {
            AnyPublicKey::P256(k) => {
                let sig = p256::ecdsa::Signature::from_der(signature).map_err(|e| fail(&e))?;
                k.verify_prehash(digest, &sig).map_err(|e| fail(&e))?;
                Ok(format!("ecdsa-p256-{hash}"))
            }
            AnyPublicKey::P384(k) => {
                let sig = p384::ecdsa::Signature::from_der(signature).map_err(|e| fail(&e))?;
                k.verify_prehash(digest, &sig).map_err(|e| fail(&e))?;
                Ok(format!("ecdsa-p384-{hash}"))
            }
            AnyPublicKey::Rsa(k) => {
                let r = match (pss, hash) {
                    (false, HashAlg::Sha256) => {
                        k.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), digest, signature)
                    }
                    (false, HashAlg::Sha384) => {
                        k.verify(rsa::Pkcs1v15Sign::new::<Sha384>(), digest, signature)
                    }
                    (false, HashAlg::Sha512) => {
                        k.verify(rsa::Pkcs1v15Sign::new::<Sha512>(), digest, signature)
                    }
                    (true, HashAlg::Sha256) => {
                        k.verify(rsa::Pss::new::<Sha256>(), digest, signature)
                    }
                    (true, HashAlg::Sha384) => {
                        k.verify(rsa::Pss::new::<Sha384>(), digest, signature)
                    }
                    (true, HashAlg::Sha512) => {
                        k.verify(rsa::Pss::new::<Sha512>(), digest, signature)
                    }
                };
                r.map_err(|e| fail(&e))?;
                Ok(format!(
                    "rsa-{}-{hash}",
                    if pss { "pss" } else { "pkcs1v15" }
                ))
            }
            AnyPublicKey::Ed25519(k) => {
                let sig = ed25519_dalek::Signature::from_slice(signature).map_err(|e| fail(&e))?;
                k.verify_strict(digest, &sig).map_err(|e| fail(&e))?;
                Ok("ed25519".to_string())
            }
        }
    }
}

/// Hashes bytes.
pub fn hash_bytes(hash: HashAlg, data: &[u8]) -> Vec<u8> {
    match hash {
        HashAlg::Sha256 => Sha256::digest(data).to_vec(),
        HashAlg::Sha384 => Sha384::digest(data).to_vec(),
        HashAlg::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// Hashes a file.
pub fn hash_file(path: &Path, hash: HashAlg) -> Result<Vec<u8>> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    fn run<D: Digest>(f: &mut std::fs::File, path: &Path) -> Result<Vec<u8>> {
        let mut h = D::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                return Ok(h.finalize().to_vec());
            }
            h.update(&buf[..n]);
        }
    }
    match hash {
        HashAlg::Sha256 => run::<Sha256>(&mut f, path),
        HashAlg::Sha384 => run::<Sha384>(&mut f, path),
        HashAlg::Sha512 => run::<Sha512>(&mut f, path),
    }
}

/// SPKI DER from a `-----BEGIN PUBLIC KEY-----` PEM.
pub fn spki_from_pem(text: &str) -> Result<Vec<u8>> {
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PUBLIC KEY-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        bail!("no -----BEGIN PUBLIC KEY----- block");
    }
    B64.decode(body.trim()).context("PEM body is not base64")
}

/// Reads a signature file: base64 text (as `waxseal sign` writes) or raw bytes.
pub fn read_signature(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path)
        .with_context(|| format!("cannot read the signature {}", path.display()))?;
    let text: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    Ok(B64.decode(&text).unwrap_or(raw))
}

/// Verifies a file's signature; returns the algorithm.
pub fn verify_file(spki: &[u8], file: &Path, signature: &[u8], pss: bool) -> Result<String> {
    let key = AnyPublicKey::from_spki(spki)?;
    let hash = key.default_hash();
    let digest = hash_file(file, hash)?;
    key.verify_digest(&digest, hash, signature, pss)
        .with_context(|| format!("{} does not match its signature", file.display()))
}
