//! Unwrapping a private key into a PKCS#11 token (README.md, "Importing keys"):
//! `C_UnwrapKey` with CKM_AES_KEY_WRAP_PAD under one of the token's secret keys, so the
//! key is in the clear only inside the token. The new private key is `CKA_SENSITIVE`,
//! not extractable, signing only; its public key (given with the request) is stored as
//! the pair's public key object once the token has verified a signature of the new
//! private key with it. A mismatch removes both objects. Unwrapped keys have
//! `CKA_LOCAL` false, which is how `list_keys` marks PKCS#11 keys as imported.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use spki::der::{Decode as _, Encode as _};
use tracing::info;

use super::keys::public_of;
use super::session::OpError;
use super::Lane;
use crate::backend::{crypto, BackendError, DeviceKey, PublicKey};
use crate::proto::KeyAlg;

/// The public key of an import: its algorithm and the attributes of its PKCS#11 public
/// key object.
fn public_attrs(
    device: &str,
    spki_der: &[u8],
) -> Result<(KeyAlg, KeyType, Vec<Attribute>), BackendError> {
    let bad = |m: String| BackendError::bad_request(device, m);
    let info = spki::SubjectPublicKeyInfoRef::from_der(spki_der).map_err(|e| {
        bad(format!(
            "the public key is not a DER SubjectPublicKeyInfo: {e}"
        ))
    })?;
    let point = info.subject_public_key.raw_bytes();
    match info.algorithm.oid.to_string().as_str() {
        "1.2.840.10045.2.1" => {
            let params = info
                .algorithm
                .parameters
                .map(|p| p.to_der())
                .transpose()
                .map_err(|e| bad(format!("the public key's curve: {e}")))?
                .unwrap_or_default();
            let alg = crypto::alg_of_ec_params(&params)
                .filter(|a| matches!(a, KeyAlg::P256 | KeyAlg::P384))
                .ok_or_else(|| bad("the public key is not on P-256 or P-384".into()))?;
            let point_der = spki::der::asn1::OctetStringRef::new(point)
                .and_then(|o| o.to_der())
                .map_err(|e| bad(format!("the public key's point: {e}")))?;
            Ok((
                alg,
                KeyType::EC,
                vec![Attribute::EcParams(params), Attribute::EcPoint(point_der)],
            ))
        }
        "1.2.840.113549.1.1.1" => {
            let key = rsa::RsaPublicKey::from_public_key_der(spki_der)
                .map_err(|e| bad(format!("the RSA public key: {e}")))?;
            let n = key.n().to_bytes_be();
            let alg = KeyAlg::Rsa(crypto::rsa_bits(&n));
            Ok((
                alg,
                KeyType::RSA,
                vec![
                    Attribute::Modulus(n),
                    Attribute::PublicExponent(key.e().to_bytes_be()),
                ],
            ))
        }
        other => Err(bad(format!(
            "the public key's algorithm {other} is not EC or RSA"
        ))),
    }
}

impl Lane {
    /// `C_UnwrapKey` of `wrapped` under the secret key labelled `unwrapping_key`.
    pub(super) fn import_wrapped(
        &mut self,
        label: &str,
        wrapped: &[u8],
        unwrapping_key: &str,
        public: &[u8],
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        let shared = self.shared.clone();
        let name = shared.name().to_string();
        if label.is_empty() || label.contains('/') || label.chars().any(char::is_control) {
            return Err(BackendError::bad_request(
                &name,
                "a key label must be non-empty, without `/` or control characters",
            ));
        }
        let (alg, key_type, public_key_attrs) = public_attrs(&name, public)?;
        self.with_retry(|conn, link, session| {
            shared.load_keys(conn, session)?;
            if conn.keys.contains_key(label) {
                return Err(BackendError::key_exists(
                    &name,
                    format!("a key labelled '{label}' exists already; choose another name"),
                )
                .into());
            }
            let unwrapper = session.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(unwrapping_key.as_bytes().to_vec()),
            ])?;
            let Some(&unwrapper) = unwrapper.first() else {
                return Err(BackendError::no_such_key(
                    &name,
                    format!("no secret key labelled '{unwrapping_key}' on the token to unwrap with"),
                )
                .into());
            };
            let mut id = vec![0u8; 16];
            getrandom::getrandom(&mut id).map_err(|e| {
                BackendError::failed(&name, format!("no randomness for the key id: {e}"))
            })?;
            let common = [
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
                Attribute::KeyType(key_type),
            ];
            let mut private = common.to_vec();
            private.extend([
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
            ]);
            let handle = session
                .unwrap_key(&Mechanism::AesKeyWrapPad, unwrapper, wrapped, &private)
                .map_err(|e| {
                    OpError::Backend(BackendError::bad_request(
                        &name,
                        format!("C_UnwrapKey with CKM_AES_KEY_WRAP_PAD under '{unwrapping_key}' refused the wrapped key ({e}): it was not wrapped under that key, is not a {alg} PKCS#8 key, or the unwrapping key may not unwrap (CKA_UNWRAP)"),
                    ))
                })?;
            let mut pub_template = common.to_vec();
            pub_template.extend([
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Wrap(false),
            ]);
            pub_template.extend(public_key_attrs.iter().cloned());
            let pub_handle = match session.create_object(&pub_template) {
                Ok(h) => h,
                Err(e) => {
                    let _ = session.destroy_object(handle);
                    return Err(e.into());
                }
            };
            // The public key must be the unwrapped key's: the token signs and verifies.
            let mut challenge = [0u8; 32];
            getrandom::getrandom(&mut challenge).map_err(|e| {
                BackendError::failed(&name, format!("no randomness: {e}"))
            })?;
            let mech = match key_type {
                KeyType::RSA => Mechanism::Sha256RsaPkcs,
                _ => Mechanism::Ecdsa,
            };
            let matches = session
                .sign(&mech, handle, &challenge)
                .and_then(|sig| session.verify(&mech, pub_handle, &challenge, &sig))
                .is_ok();
            if !matches {
                let _ = session.destroy_object(handle);
                let _ = session.destroy_object(pub_handle);
                return Err(BackendError::bad_request(
                    &name,
                    "the public key given is not the unwrapped key's (a signature by the unwrapped key does not verify with it); both were removed",
                )
                .into());
            }
            info!(device = %name, label, %alg, unwrapping_key, "unwrapped a key into the token");
            let Some((_, entry)) = shared.read_key(session, handle)? else {
                return Err(BackendError::failed(&name, "the unwrapped key cannot be read back").into());
            };
            let public = public_of(&name, label, &entry)?;
            let key = DeviceKey {
                label: label.to_string(),
                alg: entry.alg,
                uri: Some(shared.uri(link, label, &entry.id)),
                id: (!entry.id.is_empty()).then(|| entry.id.clone()),
                pcrs: None,
                imported: !entry.local,
            };
            conn.keys.insert(label.to_string(), entry);
            Ok((key, public))
        })
    }
}
