//! waxseal-pkcs11: a PKCS#11 v2.40 module (`libwaxseal_pkcs11.so`) that holds no keys.
//! Every slot is a device of the running `waxseal-agent`, every key object names one of
//! its keys, and every signature is the agent's `sign` over `agent.sock`, so the
//! agent's policy, confirmation and audit log apply to the program that loaded the
//! module (docs/pkcs11-module.md).
//!
//! The logic is safe Rust: [`asn1`] (DER in and out), [`template`] (attribute
//! templates), [`mechanism`] (mechanisms and their parameters), [`objects`] (the
//! objects of a key), [`agent`] (connections and error mapping) and [`module`] (slots,
//! sessions, operations). Only `ffi`, the C ABI, holds `unsafe` code.
#![deny(unsafe_code)]

pub mod agent;
pub mod asn1;
#[allow(unsafe_code)]
mod ffi;
pub mod mechanism;
pub mod module;
pub mod objects;
pub mod template;

/// Decodes what a caller of the module controls, as the module does: a template and
/// a mechanism with its parameters read from `data` (see
/// [`template::decode_template`]), then every reader of them: key-pair generation
/// templates, certificate import templates, mechanism parameters, and the input of a
/// `C_Sign` with that mechanism. For `fuzz/fuzz_targets/pkcs11_template.rs`; returns
/// the template and mechanism so the target can check them.
pub fn fuzz_decode(data: &[u8]) -> Option<FuzzDecoded> {
    let (public, rest) = template::decode_template(data)?;
    let (private, rest) = template::decode_template(rest)?;
    let (ty, rest) = rest.split_first_chunk::<8>()?;
    let ty = u64::from_le_bytes(*ty) as cryptoki_sys::CK_MECHANISM_TYPE;
    let (&plen, rest) = rest.split_first()?;
    let params = rest.get(..usize::from(plen))?;
    let input = &rest[usize::from(plen)..];
    let mechanism = mechanism::Mechanism::decode(ty, Some(params).filter(|p| !p.is_empty()));
    let request = mechanism.and_then(|m| m.request(input));
    Some(FuzzDecoded {
        keygen: module::KeygenRequest::from_templates(ty, &public, &private),
        cert: module::CertRequest::from_template(&public),
        mechanism,
        request,
        public,
        private,
    })
}

/// What [`fuzz_decode`] read.
#[derive(Debug)]
pub struct FuzzDecoded {
    /// The first template.
    pub public: template::Template,
    /// The second template.
    pub private: template::Template,
    /// `C_GenerateKeyPair` with both.
    pub keygen: Result<module::KeygenRequest, cryptoki_sys::CK_RV>,
    /// `C_CreateObject` with the first.
    pub cert: Result<module::CertRequest, cryptoki_sys::CK_RV>,
    /// The mechanism.
    pub mechanism: Result<mechanism::Mechanism, cryptoki_sys::CK_RV>,
    /// The agent request a `C_Sign` of the rest of the input would make.
    pub request: Result<mechanism::SignRequest, cryptoki_sys::CK_RV>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cryptoki_sys::{
        CKA_LABEL, CKG_MGF1_SHA256, CKM_RSA_PKCS_PSS, CKM_SHA256, CKR_MECHANISM_INVALID,
    };
    use waxseal_proto::proto::{HashAlg, RsaPadding};

    use super::*;

    /// The fuzz target's input layout, built by hand: what `fuzz_decode` reads from it
    /// is what the module reads from the same C arguments.
    #[test]
    fn fuzz_decode_reads_templates_mechanism_and_input() {
        let mut data = Vec::new();
        // Public template: CKA_LABEL "k"; end marker.
        data.extend(CKA_LABEL.to_le_bytes());
        data.extend(1u16.to_le_bytes());
        data.extend(b"k");
        data.extend(0u64.to_le_bytes());
        data.extend(0xffffu16.to_le_bytes());
        // Private template: empty.
        data.extend(0u64.to_le_bytes());
        data.extend(0xffffu16.to_le_bytes());
        // CKM_RSA_PKCS_PSS with SHA-256 parameters, then a 32-byte digest.
        data.extend(CKM_RSA_PKCS_PSS.to_le_bytes());
        let params: Vec<u8> = [CKM_SHA256, CKG_MGF1_SHA256, 32]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        data.push(params.len() as u8);
        data.extend(&params);
        data.extend([7u8; 32]);
        let d = fuzz_decode(&data).unwrap();
        assert_eq!(d.public.text(CKA_LABEL), Ok(Some("k")));
        assert!(d.private.0.is_empty());
        assert_eq!(d.keygen, Err(CKR_MECHANISM_INVALID));
        assert_eq!(
            d.request,
            Ok(mechanism::SignRequest::Digest(mechanism::DigestRequest {
                digest: vec![7u8; 32],
                hash: HashAlg::Sha256,
                padding: Some(RsaPadding::Pss),
            }))
        );
    }
}
