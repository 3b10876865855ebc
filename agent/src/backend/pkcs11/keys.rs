//! Keys on the token: reading them and the certificates for them, and signing with them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use cryptoki::error::Error as CkError;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;
use tracing::{debug, warn};

use super::session::classify;
use super::{lock, Conn, KeyEntry, Lane, Link, Shared};
use crate::backend::fault::Fault;
use crate::backend::{
    crypto, digest_hash, Backend as _, BackendError, DeviceCertificate, PublicKey, SignInput,
    Signed,
};
use crate::keyuri::Pkcs11Uri;
use crate::proto::{HashAlg, KeyAlg, RsaPadding};
use crate::x509::certificate_spki;

impl Shared {
    /// Loads every private key's entry.
    pub(super) fn load_keys(&self, conn: &mut Conn, session: &Session) -> Result<(), CkError> {
        let handles = session.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])?;
        let mut keys = HashMap::new();
        let mut dup = HashSet::new();
        for handle in handles {
            let Some((label, entry)) = self.read_key(session, handle)? else {
                continue;
            };
            if keys.contains_key(&label) {
                dup.insert(label);
                continue;
            }
            keys.insert(label, entry);
        }
        for label in dup {
            warn!(
                device = self.name(),
                label, "several private keys share this label; using the first"
            );
        }
        conn.keys = keys;
        conn.keys_loaded = true;
        Ok(())
    }

    pub(super) fn read_key(
        &self,
        session: &Session,
        handle: ObjectHandle,
    ) -> Result<Option<(String, KeyEntry)>, CkError> {
        let attrs = session.get_attributes(
            handle,
            &[
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
                AttributeType::Local,
            ],
        )?;
        let (mut label, mut id, mut key_type, mut params, mut modulus, mut exponent) =
            (Vec::new(), Vec::new(), None, None, None, None);
        // Tokens that do not say are taken to have generated the key.
        let mut local = true;
        for a in attrs {
            match a {
                Attribute::Label(v) => label = v,
                Attribute::Id(v) => id = v,
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::EcParams(v) => params = Some(v),
                Attribute::Modulus(v) => modulus = Some(v),
                Attribute::PublicExponent(v) => exponent = Some(v),
                Attribute::Local(v) => local = v,
                _ => {}
            }
        }
        let label = match String::from_utf8(label) {
            Ok(l) if !l.is_empty() && !l.contains('/') && !l.chars().any(char::is_control) => l,
            _ if !id.is_empty() => format!("id-{}", hex::encode(&id)),
            _ => {
                debug!(
                    device = self.name(),
                    "skipping a private key with neither label nor id"
                );
                return Ok(None);
            }
        };
        let (alg, spki) = match key_type {
            Some(KeyType::RSA) => {
                let (Some(n), Some(e)) = (modulus, exponent) else {
                    debug!(
                        device = self.name(),
                        label, "RSA key without modulus; skipped"
                    );
                    return Ok(None);
                };
                (
                    KeyAlg::Rsa(crypto::rsa_bits(&n)),
                    crypto::spki_from_rsa(&n, &e).ok(),
                )
            }
            Some(KeyType::EC) | Some(KeyType::EC_EDWARDS) => {
                let Some(alg) = params.as_deref().and_then(crypto::alg_of_ec_params) else {
                    debug!(
                        device = self.name(),
                        label, "key on an unsupported curve; skipped"
                    );
                    return Ok(None);
                };
                let point = self.public_point(session, handle, &id, &label)?;
                (
                    alg,
                    point.and_then(|p| {
                        crypto::spki_from_point(alg, crypto::unwrap_octet_string(&p)).ok()
                    }),
                )
            }
            _ => return Ok(None),
        };
        Ok(Some((
            label,
            KeyEntry {
                handle,
                alg,
                id,
                spki,
                local,
            },
        )))
    }

    /// `CKA_EC_POINT` of the public key paired with a private key (by id, else label).
    fn public_point(
        &self,
        session: &Session,
        private: ObjectHandle,
        id: &[u8],
        label: &str,
    ) -> Result<Option<Vec<u8>>, CkError> {
        let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
        if id.is_empty() {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        } else {
            template.push(Attribute::Id(id.to_vec()));
        }
        let mut candidates = session.find_objects(&template)?;
        candidates.push(private); // some tokens keep the point on the private key
        for h in candidates {
            if let Ok(attrs) = session.get_attributes(h, &[AttributeType::EcPoint]) {
                if let Some(Attribute::EcPoint(p)) = attrs.into_iter().next() {
                    return Ok(Some(p));
                }
            }
        }
        Ok(None)
    }

    pub(super) fn uri(&self, link: &Link, label: &str, id: &[u8]) -> String {
        let (token, serial) = match link.ctx.get_token_info(link.slot) {
            Ok(t) => (
                Some(t.label().trim_end().to_string()),
                Some(t.serial_number().trim_end().to_string()),
            ),
            Err(_) => (None, None),
        };
        Pkcs11Uri {
            token,
            serial,
            object: Some(label.to_string()),
            id: (!id.is_empty()).then(|| id.to_vec()),
            kind: Some("private".into()),
        }
        .to_string()
    }
}

/// The certificate on the token for the key whose SubjectPublicKeyInfo is `spki` and
/// CKA_ID `id`, with its object's CKA_ID and CKA_LABEL: of the X.509 CKO_CERTIFICATE
/// objects (one C_FindObjects), those whose public key is `spki`, the first with CKA_ID
/// `id` (as `pkcs11-tool --write-object --id` pairs them), else the first other (as
/// `store_certificate` writes them, CKA_ID the object id it was given).
pub(super) fn find_certificate(
    session: &Session,
    spki: &[u8],
    id: &[u8],
) -> Result<Option<DeviceCertificate>, CkError> {
    let handles = session.find_objects(&[
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(CertificateType::X_509),
    ])?;
    let mut other = None;
    for handle in handles {
        let (mut cert_id, mut label, mut value) = (Vec::new(), Vec::new(), Vec::new());
        for a in session.get_attributes(
            handle,
            &[
                AttributeType::Id,
                AttributeType::Label,
                AttributeType::Value,
            ],
        )? {
            match a {
                Attribute::Id(v) => cert_id = v,
                Attribute::Label(v) => label = v,
                Attribute::Value(v) => value = v,
                _ => {}
            }
        }
        if certificate_spki(&value) != Some(spki) {
            continue;
        }
        let ours = !id.is_empty() && cert_id == id;
        let found = DeviceCertificate {
            der: value,
            id: (!cert_id.is_empty()).then_some(cert_id),
            // A label that is not UTF-8 is left out rather than altered.
            label: String::from_utf8(label).ok().filter(|l| !l.is_empty()),
        };
        if ours {
            return Ok(Some(found));
        }
        other.get_or_insert(found);
    }
    Ok(other)
}

/// A CKA_ID for messages: `'99'` when it is printable ASCII (as `object_id` gives it),
/// else its hex, `0x0099ff`.
pub(super) fn id_text(id: &[u8]) -> String {
    if id.iter().all(u8::is_ascii_graphic) {
        format!("'{}'", String::from_utf8_lossy(id))
    } else {
        format!("0x{}", hex::encode(id))
    }
}

/// The answer to a CKA_ID that an object on the token has already.
pub(super) fn id_taken(device: &str, id: &[u8]) -> BackendError {
    BackendError::key_exists(
        device,
        format!(
            "an object with id {} (CKA_ID) exists already; choose another id",
            id_text(id)
        ),
    )
}

pub(super) fn unknown_key(device: &str, label: &str) -> BackendError {
    BackendError::no_such_key(
        device,
        format!("no key labelled '{label}' (`waxseal keys list` shows the keys)"),
    )
}

pub(super) fn public_of(
    name: &str,
    label: &str,
    entry: &KeyEntry,
) -> Result<PublicKey, BackendError> {
    let spki = entry.spki.clone().ok_or_else(|| {
        BackendError::failed(name, format!("the public key of '{label}' is not on the token (no CKO_PUBLIC_KEY with its CKA_ID)"))
    })?;
    Ok(PublicKey {
        alg: entry.alg,
        spki_der: spki,
    })
}

impl Lane {
    /// The entry of the key `label`, looked for again after a rescan when it is not
    /// known (it may have been created since).
    pub(super) fn entry(&mut self, label: &str) -> Result<KeyEntry, BackendError> {
        if let Some(e) = self.with_retry(|conn, _, _| Ok(conn.keys.get(label).cloned()))? {
            return Ok(e);
        }
        self.list_keys()?;
        lock(&self.shared.conn)
            .keys
            .get(label)
            .cloned()
            .ok_or_else(|| unknown_key(self.shared.name(), label))
    }

    /// Signs without the shared lock when this lane's session and key copy are current.
    /// `None`: take the slow path (which connects, logs in, reloads and heals).
    pub(super) fn fast_sign(
        &mut self,
        label: &str,
        input: &SignInput<'_>,
    ) -> Option<Result<Signed, BackendError>> {
        let (generation, session) = self.session.as_ref()?;
        if *generation != self.shared.live.load(Ordering::Acquire) {
            self.keys.clear();
            return None;
        }
        let entry = self.keys.get(label)?;
        let hash = match digest_hash(self.shared.name(), entry.alg, input) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        match sign_with(session, entry.handle, entry.alg, hash, input) {
            Ok(raw) => Some(finish(self.shared.name(), entry.alg, hash, raw)),
            Err(e) => match classify(self.shared.name(), e) {
                f if f.fault == Fault::Failed => Some(Err(f.error)),
                _ => {
                    // Lost session, login or handle: the slow path heals it.
                    self.keys.clear();
                    None
                }
            },
        }
    }
}

/// DER-encodes ECDSA output; other signatures are returned as the device made them.
pub(super) fn finish(
    device: &str,
    alg: KeyAlg,
    hash: HashAlg,
    raw: Vec<u8>,
) -> Result<Signed, BackendError> {
    let signature = match alg {
        KeyAlg::P256 | KeyAlg::P384 => crypto::ecdsa_raw_to_der(alg, &raw)
            .map_err(|e| BackendError::failed(device, e.to_string()))?,
        _ => raw,
    };
    Ok(Signed {
        signature,
        alg,
        hash,
    })
}

pub(super) fn sign_with(
    session: &Session,
    handle: ObjectHandle,
    alg: KeyAlg,
    hash: HashAlg,
    input: &SignInput<'_>,
) -> Result<Vec<u8>, CkError> {
    match alg {
        KeyAlg::P256 | KeyAlg::P384 => session.sign(&Mechanism::Ecdsa, handle, input.digest),
        KeyAlg::Ed25519 => session.sign(
            &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            handle,
            input.digest,
        ),
        KeyAlg::Rsa(_) => match input.padding {
            RsaPadding::Pkcs1 => {
                let mut info = crypto::digest_info_prefix(hash).to_vec();
                info.extend_from_slice(input.digest);
                session.sign(&Mechanism::RsaPkcs, handle, &info)
            }
            RsaPadding::Pss => {
                let (hash_alg, mgf) = match hash {
                    HashAlg::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
                    HashAlg::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
                    HashAlg::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
                };
                let params = PkcsPssParams {
                    hash_alg,
                    mgf,
                    s_len: (hash.digest_len() as u64).into(),
                };
                session.sign(&Mechanism::RsaPkcsPss(params), handle, input.digest)
            }
        },
    }
}
