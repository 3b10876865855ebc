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
