//! OpenSSH public key lines and SSH signatures (SSHSIG, what `ssh-keygen -Y sign`
//! writes), read and checked for quorum approval (docs/protocol.md, "Approvals").
//!
//! The formats: a key line is `TYPE BASE64 [COMMENT]`, BASE64 the key blob (RFC 4253
//! §6.6, RFC 5656 §3.1, RFC 8709). An SSHSIG (OpenSSH's PROTOCOL.sshsig) is armored
//! base64 between `-----BEGIN SSH SIGNATURE-----` and `-----END SSH SIGNATURE-----` of
//! `"SSHSIG" || uint32 1 || string publickey || string namespace || string reserved ||
//! string hash_algorithm || string signature`; the signature is over `"SSHSIG" ||
//! string namespace || string reserved || string hash_algorithm || string H(message)`.
//! Ed25519, ECDSA P-256/P-384 and RSA (`rsa-sha2-256`/`512`) keys are read; security
//! keys (`sk-…`) and SHA-1 RSA signatures are refused.

use base64::engine::general_purpose::{STANDARD as B64, STANDARD_NO_PAD as B64_NO_PAD};
use base64::Engine as _;
use sha2::{Digest, Sha256, Sha512};

/// The longest key line an approver may have, in bytes (an RSA-16384 line is about
/// 2.8 KB).
pub const MAX_KEY_LINE: usize = 8 * 1024;
/// The longest comment (an approver's name) kept from a key line, in bytes.
pub const MAX_COMMENT: usize = 128;
/// The smallest and largest RSA moduli accepted, in bits.
const RSA_BITS: (usize, usize) = (2048, 16384);

/// The algorithm of an approver's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshKeyKind {
    /// `ssh-ed25519`.
    Ed25519,
    /// `ecdsa-sha2-nistp256`.
    P256,
    /// `ecdsa-sha2-nistp384`.
    P384,
    /// `ssh-rsa`.
    Rsa,
}

impl SshKeyKind {
    /// The type word of key lines and blobs.
    pub fn as_str(self) -> &'static str {
        match self {
            SshKeyKind::Ed25519 => "ssh-ed25519",
            SshKeyKind::P256 => "ecdsa-sha2-nistp256",
            SshKeyKind::P384 => "ecdsa-sha2-nistp384",
            SshKeyKind::Rsa => "ssh-rsa",
        }
    }

    fn from_word(word: &str) -> Result<SshKeyKind, String> {
        match word {
            "ssh-ed25519" => Ok(SshKeyKind::Ed25519),
            "ecdsa-sha2-nistp256" => Ok(SshKeyKind::P256),
            "ecdsa-sha2-nistp384" => Ok(SshKeyKind::P384),
            "ssh-rsa" => Ok(SshKeyKind::Rsa),
            w if w.starts_with("sk-") => Err(format!(
                "`{w}` is a security-key type, which this version does not verify (use an ssh-ed25519, ecdsa-sha2-nistp256/384 or ssh-rsa key, e.g. a YubiKey's PIV key through an ssh-agent)"
            )),
            w => Err(format!(
                "unknown key type `{}` (expected ssh-ed25519, ecdsa-sha2-nistp256, ecdsa-sha2-nistp384 or ssh-rsa)",
                w.chars().take(40).collect::<String>()
            )),
        }
    }
}

/// A public key read from an OpenSSH key line.
#[derive(Clone)]
pub struct SshPublicKey {
    /// The algorithm.
    pub kind: SshKeyKind,
    /// The key blob, as SSHSIG carries it.
    pub blob: Vec<u8>,
    /// The line's comment (empty if none).
    pub comment: String,
    key: Verifier,
}

impl std::fmt::Debug for SshPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.kind.as_str(),
            self.fingerprint(),
            self.comment
        )
    }
}

#[derive(Clone)]
enum Verifier {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Rsa(rsa::RsaPublicKey),
}

impl SshPublicKey {
    /// Reads `TYPE BASE64 [COMMENT]`. The comment is kept as the approver's name
    /// (at most [`MAX_COMMENT`] bytes, no control characters).
    pub fn parse_line(line: &str) -> Result<SshPublicKey, String> {
        if line.len() > MAX_KEY_LINE {
            return Err(format!(
                "the key line is {} bytes long; at most {MAX_KEY_LINE} are accepted",
                line.len()
            ));
        }
        let mut parts = line.trim().splitn(3, [' ', '\t']);
        let word = parts.next().unwrap_or_default();
        let kind = SshKeyKind::from_word(word)?;
        let b64 = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or("the key line has no base64 key after its type (expected `TYPE BASE64 NAME`)")?;
        let comment = parts.next().unwrap_or_default().trim().to_string();
        if comment.len() > MAX_COMMENT {
            return Err(format!(
                "the key's comment (its name) is {} bytes long; at most {MAX_COMMENT} are accepted",
                comment.len()
            ));
        }
        if comment.chars().any(char::is_control) {
            return Err("the key's comment (its name) holds a control character".into());
        }
        let blob = B64
            .decode(b64)
            .map_err(|e| format!("the key's base64 does not decode: {e}"))?;
        let key = SshPublicKey::from_blob(&blob)?;
        if key.kind != kind {
            return Err(format!(
                "the line says `{}` but its key is {}",
                kind.as_str(),
                key.kind.as_str()
            ));
        }
        Ok(SshPublicKey { comment, ..key })
    }

    /// Reads a key blob.
    pub fn from_blob(blob: &[u8]) -> Result<SshPublicKey, String> {
        let mut r = Reader(blob);
        let word = r.utf8("the key type")?;
        let kind = SshKeyKind::from_word(word)?;
        let key = match kind {
            SshKeyKind::Ed25519 => {
                let bytes: [u8; 32] = r
                    .string("the Ed25519 key")?
                    .try_into()
                    .map_err(|_| "the Ed25519 key is not 32 bytes")?;
                Verifier::Ed25519(
                    ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                        .map_err(|_| "the Ed25519 key is not a point of the curve")?,
                )
            }
            SshKeyKind::P256 | SshKeyKind::P384 => {
                let (curve, name) = if kind == SshKeyKind::P256 {
                    ("nistp256", "P-256")
                } else {
                    ("nistp384", "P-384")
                };
                if r.string("the curve name")? != curve.as_bytes() {
                    return Err(format!("the {name} key names another curve than {curve}"));
                }
                let point = r.string("the EC point")?;
                let bad = || format!("the {name} key's point is not on the curve");
                if kind == SshKeyKind::P256 {
                    Verifier::P256(
                        p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?,
                    )
                } else {
                    Verifier::P384(
                        p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?,
                    )
                }
            }
            SshKeyKind::Rsa => {
                let e = r.mpint("the RSA exponent")?;
                let n = r.mpint("the RSA modulus")?;
                let key = rsa::RsaPublicKey::new_with_max_size(
                    rsa::BigUint::from_bytes_be(n),
                    rsa::BigUint::from_bytes_be(e),
                    RSA_BITS.1,
                )
                .map_err(|e| format!("the RSA key is not usable: {e}"))?;
                let bits = rsa::traits::PublicKeyParts::n(&key).bits();
                if bits < RSA_BITS.0 {
                    return Err(format!(
                        "the RSA key has {bits} bits; at least {} are accepted",
                        RSA_BITS.0
                    ));
                }
                Verifier::Rsa(key)
            }
        };
        if !r.0.is_empty() {
            return Err("the key blob has bytes after the key".into());
        }
        Ok(SshPublicKey {
            kind,
            blob: blob.to_vec(),
            comment: String::new(),
            key,
        })
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", B64_NO_PAD.encode(Sha256::digest(&self.blob)))
    }

    /// The approver's name: the comment, else the fingerprint.
    pub fn name(&self) -> String {
        if self.comment.is_empty() {
            self.fingerprint()
        } else {
            self.comment.clone()
        }
    }

    /// Checks an SSH signature blob (`string format || string bytes`) over `data`.
    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), String> {
        let mut r = Reader(signature);
        let format = r.utf8("the signature format")?;
        let bytes = r.string("the signature")?;
        if !r.0.is_empty() {
            return Err("the signature has bytes after it".into());
        }
        let bad = || "the signature does not verify".to_string();
        match &self.key {
            Verifier::Ed25519(k) => {
                if format != "ssh-ed25519" {
                    return Err(format!("an Ed25519 key with a `{format}` signature"));
                }
                let sig = ed25519_dalek::Signature::from_slice(bytes).map_err(|_| bad())?;
                k.verify_strict(data, &sig).map_err(|_| bad())
            }
            Verifier::P256(k) => {
                if format != SshKeyKind::P256.as_str() {
                    return Err(format!("a P-256 key with a `{format}` signature"));
                }
                let sig =
                    p256::ecdsa::Signature::from_slice(&ecdsa_rs(bytes, 32)?).map_err(|_| bad())?;
                p256::ecdsa::signature::Verifier::verify(k, data, &sig).map_err(|_| bad())
            }
            Verifier::P384(k) => {
                if format != SshKeyKind::P384.as_str() {
                    return Err(format!("a P-384 key with a `{format}` signature"));
                }
                let sig =
                    p384::ecdsa::Signature::from_slice(&ecdsa_rs(bytes, 48)?).map_err(|_| bad())?;
                p384::ecdsa::signature::Verifier::verify(k, data, &sig).map_err(|_| bad())
            }
            Verifier::Rsa(k) => {
                use rsa::signature::Verifier as _;
                let sig = rsa::pkcs1v15::Signature::try_from(bytes).map_err(|_| bad())?;
                match format {
                    "rsa-sha2-512" => rsa::pkcs1v15::VerifyingKey::<Sha512>::new(k.clone())
                        .verify(data, &sig)
                        .map_err(|_| bad()),
                    "rsa-sha2-256" => rsa::pkcs1v15::VerifyingKey::<Sha256>::new(k.clone())
                        .verify(data, &sig)
                        .map_err(|_| bad()),
                    "ssh-rsa" => Err("an `ssh-rsa` (SHA-1) signature is refused; sign with rsa-sha2-512 (ssh-keygen's default)".into()),
                    other => Err(format!("an RSA key with a `{other}` signature")),
                }
            }
        }
    }
}

/// ECDSA's `mpint r || mpint s`, as `r || s`, each left-padded to `len` bytes.
fn ecdsa_rs(bytes: &[u8], len: usize) -> Result<Vec<u8>, String> {
    let mut r = Reader(bytes);
    let a = r.mpint("the ECDSA r")?;
    let b = r.mpint("the ECDSA s")?;
    if !r.0.is_empty() {
        return Err("the ECDSA signature has bytes after s".into());
    }
    let pad = |v: &[u8]| -> Result<Vec<u8>, String> {
        if v.len() > len {
            return Err("an ECDSA scalar is longer than the curve's".into());
        }
        let mut out = vec![0u8; len - v.len()];
        out.extend_from_slice(v);
        Ok(out)
    };
    Ok([pad(a)?, pad(b)?].concat())
}

/// A signature read from its armor, not checked yet.
#[derive(Debug)]
pub struct SshSig {
    /// The signer's key blob.
    pub public_key: Vec<u8>,
    /// The namespace it was made for.
    pub namespace: String,
    reserved: Vec<u8>,
    hash: &'static str,
    signature: Vec<u8>,
}

impl SshSig {
    /// Reads the armored text `ssh-keygen -Y sign` writes.
    pub fn parse_armored(text: &str) -> Result<SshSig, String> {
        const BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
        const END: &str = "-----END SSH SIGNATURE-----";
        let text = text.trim();
        let body = text
            .strip_prefix(BEGIN)
            .and_then(|t| t.strip_suffix(END))
            .ok_or("not an SSH signature: expected the text `ssh-keygen -Y sign` writes, from `-----BEGIN SSH SIGNATURE-----` to `-----END SSH SIGNATURE-----`")?;
        let b64: String = body.split_whitespace().collect();
        let raw = B64
            .decode(b64.as_bytes())
            .map_err(|e| format!("the SSH signature's base64 does not decode: {e}"))?;
        SshSig::parse(&raw)
    }

    /// Reads the binary SSHSIG.
    pub fn parse(raw: &[u8]) -> Result<SshSig, String> {
        let rest = raw
            .strip_prefix(b"SSHSIG")
            .ok_or("not an SSH signature: no SSHSIG magic")?;
        let mut r = Reader(rest);
        let version = r.u32("the version")?;
        if version != 1 {
            return Err(format!("SSH signature version {version}; only 1 is known"));
        }
        let public_key = r.string("the public key")?.to_vec();
        let namespace = std::str::from_utf8(r.string("the namespace")?)
            .map_err(|_| "the namespace is not UTF-8")?
            .to_string();
        let reserved = r.string("the reserved field")?.to_vec();
        let hash = match r.string("the hash algorithm")? {
            b"sha512" => "sha512",
            b"sha256" => "sha256",
            other => {
                return Err(format!(
                    "hash algorithm `{}` (expected sha512 or sha256)",
                    String::from_utf8_lossy(other)
                        .chars()
                        .take(20)
                        .collect::<String>()
                ))
            }
        };
        let signature = r.string("the signature")?.to_vec();
        if !r.0.is_empty() {
            return Err("the SSH signature has bytes after its signature".into());
        }
        Ok(SshSig {
            public_key,
            namespace,
            reserved,
            hash,
            signature,
        })
    }

    /// Checks that `key` (whose blob must be the signature's) signed `message` in this
    /// signature's namespace.
    pub fn verify(&self, key: &SshPublicKey, message: &[u8]) -> Result<(), String> {
        if key.blob != self.public_key {
            return Err("the signature names another key".into());
        }
        let digest = match self.hash {
            "sha256" => Sha256::digest(message).to_vec(),
            _ => Sha512::digest(message).to_vec(),
        };
        let mut data = b"SSHSIG".to_vec();
        for field in [
            self.namespace.as_bytes(),
            &self.reserved,
            self.hash.as_bytes(),
            &digest,
        ] {
            data.extend_from_slice(&(field.len() as u32).to_be_bytes());
            data.extend_from_slice(field);
        }
        key.verify(&data, &self.signature)
    }
}

/// RFC 4251 fields from a byte string.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let (head, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("{what} is cut short"))?;
        self.0 = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn string(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = self.u32(what)? as usize;
        if len > self.0.len() {
            return Err(format!("{what} is cut short"));
        }
        let (v, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(v)
    }

    fn utf8(&mut self, what: &str) -> Result<&'a str, String> {
        std::str::from_utf8(self.string(what)?).map_err(|_| format!("{what} is not UTF-8"))
    }

    /// A non-negative mpint, without its leading zero.
    fn mpint(&mut self, what: &str) -> Result<&'a [u8], String> {
        let v = self.string(what)?;
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            return Err(format!("{what} is negative"));
        }
        Ok(v.strip_prefix(&[0]).unwrap_or(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_lines_that_are_not_keys() {
        for (line, why) in [
            ("ssh-dss AAAA x", "unknown key type"),
            ("sk-ssh-ed25519@openssh.com AAAA x", "security-key"),
            ("ssh-ed25519", "no base64"),
            ("ssh-ed25519 !!!! x", "does not decode"),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== x", "cut short"),
        ] {
            let e = SshPublicKey::parse_line(line).unwrap_err();
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn reads_an_ed25519_line_and_its_fingerprint() {
        let k = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let mut blob = Vec::new();
        for f in [&b"ssh-ed25519"[..], k.verifying_key().as_bytes()] {
            blob.extend_from_slice(&(f.len() as u32).to_be_bytes());
            blob.extend_from_slice(f);
        }
        let line = format!("ssh-ed25519 {} alice", B64.encode(&blob));
        let key = SshPublicKey::parse_line(&line).unwrap();
        assert_eq!(key.name(), "alice");
        assert!(key.fingerprint().starts_with("SHA256:"));
        // A signature made the SSHSIG way verifies, in its namespace only.
        let message = b"approve me";
        let mut data = b"SSHSIG".to_vec();
        let digest = Sha512::digest(message);
        for f in [&b"ns"[..], b"", b"sha512", &digest] {
            data.extend_from_slice(&(f.len() as u32).to_be_bytes());
            data.extend_from_slice(f);
        }
        use ed25519_dalek::Signer as _;
        let raw = k.sign(&data).to_bytes();
        let mut sig_blob = Vec::new();
        for f in [&b"ssh-ed25519"[..], &raw[..]] {
            sig_blob.extend_from_slice(&(f.len() as u32).to_be_bytes());
            sig_blob.extend_from_slice(f);
        }
        let mut sshsig = b"SSHSIG".to_vec();
        sshsig.extend_from_slice(&1u32.to_be_bytes());
        for f in [&blob[..], b"ns", b"", b"sha512", &sig_blob] {
            sshsig.extend_from_slice(&(f.len() as u32).to_be_bytes());
            sshsig.extend_from_slice(f);
        }
        let armored = format!(
            "-----BEGIN SSH SIGNATURE-----\n{}\n-----END SSH SIGNATURE-----\n",
            B64.encode(&sshsig)
        );
        let sig = SshSig::parse_armored(&armored).unwrap();
        assert_eq!(sig.namespace, "ns");
        sig.verify(&key, message).unwrap();
        assert!(sig.verify(&key, b"another text").is_err());
    }
}
