//! OpenSSH public key lines (`authorized_keys` format) from a SubjectPublicKeyInfo.

use anyhow::{bail, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rsa::traits::PublicKeyParts;

use crate::verify::AnyPublicKey;

fn put_string(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

/// RFC 4251 mpint of a non-negative big-endian integer.
fn put_mpint(out: &mut Vec<u8>, v: &[u8]) {
    let v = match v.iter().position(|&b| b != 0) {
        Some(i) => &v[i..],
        None => &[],
    };
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        let mut padded = vec![0u8];
        padded.extend_from_slice(v);
        put_string(out, &padded);
    } else {
        put_string(out, v);
    }
}

/// `TYPE BASE64 COMMENT` for an SPKI.
pub fn authorized_key(spki: &[u8], comment: &str) -> Result<String> {
    let mut blob = Vec::new();
    let kind = match AnyPublicKey::from_spki(spki)? {
        AnyPublicKey::P256(k) => {
            let t = "ecdsa-sha2-nistp256";
            put_string(&mut blob, t.as_bytes());
            put_string(&mut blob, b"nistp256");
            put_string(&mut blob, k.to_encoded_point(false).as_bytes());
            t
        }
        AnyPublicKey::P384(k) => {
            let t = "ecdsa-sha2-nistp384";
            put_string(&mut blob, t.as_bytes());
            put_string(&mut blob, b"nistp384");
            put_string(&mut blob, k.to_encoded_point(false).as_bytes());
            t
        }
        AnyPublicKey::Rsa(k) => {
            let t = "ssh-rsa";
            put_string(&mut blob, t.as_bytes());
            put_mpint(&mut blob, &k.e().to_bytes_be());
            put_mpint(&mut blob, &k.n().to_bytes_be());
            t
        }
        AnyPublicKey::Ed25519(k) => {
            let t = "ssh-ed25519";
            put_string(&mut blob, t.as_bytes());
            put_string(&mut blob, k.as_bytes());
            t
        }
    };
    if comment.contains('\n') {
        bail!("a key comment cannot hold a newline");
    }
    Ok(format!("{kind} {} {comment}", B64.encode(blob)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mpint_sign_padding() {
        let mut out = Vec::new();
        put_mpint(&mut out, &[0x00, 0x80]);
        assert_eq!(out, vec![0, 0, 0, 2, 0x00, 0x80]);
        let mut out = Vec::new();
        put_mpint(&mut out, &[0x01, 0x00, 0x01]);
        assert_eq!(out, vec![0, 0, 0, 3, 1, 0, 1]);
    }
}
