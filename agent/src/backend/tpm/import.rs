//! Keys brought into the TPM from elsewhere (README.md, "Importing keys"): a key
//! wrapped for this TPM's storage root key (SRK) by TPM2_Duplicate on another machine
//! (`tpm2_duplicate`, or `waxseal keys wrap-for` where built) is taken in by
//! TPM2_Import under the SRK, which returns it wrapped by the SRK like a key the TPM
//! made; it is then stored as a TSS2 PEM key file like a generated key.
//!
//! The plaintext key never reaches this machine: the duplicate's outer wrapper is keyed
//! by a seed that only the SRK's private key recovers (TPM 2.0 Part 1, "Duplication").
//! A duplicate made for another TPM's SRK fails the TPM's integrity check and is
//! refused with `bad-request`; nothing is written.
//!
//! An imported key has fixedTPM clear (TPM2_Import refuses keys with it set), which is
//! how `list_keys` marks TPM keys as imported ([`super::KeyMeta`]).

use tracing::info;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{EncryptedSecret, Private, Public, SymmetricDefinitionObject};
use tss_esapi::traits::UnMarshall as _;

use super::keyfile::{KeyFile, PARENT_OWNER};
use super::{describe, meta_from_public, tpm_kind, valid_file_label, write_new_file, Fail, Tpm};
use crate::backend::{BackendError, DeviceKey, PublicKey};
use crate::proto::KeyAlg;

/// The body of a TPM2B (`bytes` with its 2-byte big-endian size), checked whole.
fn tpm2b_body<'a>(device: &str, what: &str, bytes: &'a [u8]) -> Result<&'a [u8], BackendError> {
    let bad = |m: String| BackendError::bad_request(device, m);
    let (size, body) = bytes
        .split_first_chunk::<2>()
        .ok_or_else(|| bad(format!("the {what} is shorter than its 2-byte size")))?;
    let size = u16::from_be_bytes(*size) as usize;
    if size != body.len() || size == 0 {
        return Err(bad(format!(
            "the {what} is not a TPM2B as tpm2-tools writes it: it says {size} bytes and holds {}",
            body.len()
        )));
    }
    Ok(body)
}

impl Tpm {
    /// TPM2_Import of a duplicate wrapped for this TPM's SRK (no inner wrapper: the
    /// symmetric algorithm is NULL, as `tpm2_duplicate -G null` makes), stored as the
    /// key file of `label`.
    pub fn import_duplicate(
        &mut self,
        label: &str,
        public: &[u8],
        duplicate: &[u8],
        seed: &[u8],
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        let device = self.settings.name.clone();
        if !valid_file_label(label) {
            return Err(BackendError::bad_request(&device, format!(
                "`{label}` cannot name a TPM key file: use 1-64 of A-Z a-z 0-9 . _ - (not starting with `.` or `0x`)"
            )));
        }
        let path = self.key_path(label);
        if path.exists() {
            return Err(BackendError::key_exists(
                &device,
                format!("key `{label}` exists already ({})", path.display()),
            ));
        }
        let bad = |m: String| BackendError::bad_request(&device, m);
        let public_area = tpm2b_body(&device, "public area (TPM2B_PUBLIC)", public)?;
        let parsed = Public::unmarshall(public_area).map_err(|e| {
            bad(format!(
                "the public area does not parse as a TPMT_PUBLIC: {e}"
            ))
        })?;
        let meta = meta_from_public(parsed.clone(), None, None)
            .map_err(|e| bad(format!("the duplicated key cannot be used here: {e}")))?;
        if !matches!(
            meta.alg,
            KeyAlg::P256 | KeyAlg::P384 | KeyAlg::Rsa(2048) | KeyAlg::Rsa(3072)
        ) {
            return Err(BackendError::unsupported(
                &device,
                format!(
                    "TPM keys can be p256, p384, rsa2048 or rsa3072 (not {})",
                    meta.alg
                ),
            ));
        }
        let attrs = parsed.object_attributes();
        if meta.restricted || !meta.sign {
            return Err(bad(
                "the duplicated key is not an unrestricted signing key (it needs `sign` and not `restricted`)".into(),
            ));
        }
        if !attrs.user_with_auth() {
            return Err(bad(
                "the duplicated key has userWithAuth clear: it signs only through its authPolicy, which waxseal cannot run for an imported key; create it with userwithauth".into(),
            ));
        }
        if attrs.fixed_tpm() || attrs.fixed_parent() {
            return Err(bad(
                "the duplicated key has fixedTPM or fixedParent set: such a key cannot be duplicated or imported".into(),
            ));
        }
        let duplicate = Private::try_from(
            tpm2b_body(&device, "duplicate (TPM2B_PRIVATE)", duplicate)?.to_vec(),
        )
        .map_err(|e| bad(format!("the duplicate: {e}")))?;
        let seed = EncryptedSecret::try_from(
            tpm2b_body(&device, "encrypted seed (TPM2B_ENCRYPTED_SECRET)", seed)?.to_vec(),
        )
        .map_err(|e| bad(format!("the encrypted seed: {e}")))?;

        let refused_for = device.clone();
        let private = self.with_conn(|conn, _| {
            let srk = conn.srk()?;
            let result = conn.with_object_room(|c| {
                c.cmd("TPM2_Import", |ctx| {
                    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                        ctx.import(
                            srk.into(),
                            None,
                            parsed.clone(),
                            duplicate.clone(),
                            seed.clone(),
                            SymmetricDefinitionObject::Null,
                        )
                    })
                })
            });
            result.map_err(|fail| match fail {
                Fail::Tpm(what, e) => refusal(&refused_for, what, e),
                other => other,
            })
        })?;

        let file = KeyFile {
            // The key's auth value is the one it was created with; the agent offers the
            // device's PIN, as for its own keys.
            empty_auth: self.settings.pin.is_none(),
            policy: Vec::new(),
            has_auth_policy: false,
            parent: PARENT_OWNER,
            public: public.to_vec(),
            private: super::keyfile::tpm2b(private.value()),
            description: None,
        };
        write_new_file(
            &device,
            &self.settings.key_dir,
            &path,
            file.to_pem().as_bytes(),
        )?;
        info!(device = %device, key = %label, alg = %meta.alg, file = %path.display(), "TPM key imported");
        Ok((
            DeviceKey {
                label: label.to_string(),
                alg: meta.alg,
                uri: Some(format!("tpm:name={label};file={}", path.display())),
                id: None,
                pcrs: None,
                imported: true,
            },
            PublicKey {
                alg: meta.alg,
                spki_der: meta.spki,
            },
        ))
    }
}

/// A TPM2_Import refusal that says what is wrong with the duplicate; other failures go
/// on to the usual sorting.
fn refusal(device: &str, what: &'static str, e: tss_esapi::Error) -> Fail {
    use Tss2ResponseCodeKind as K;
    let why = match tpm_kind(&e) {
        Some(K::Integrity | K::EccPoint | K::Value | K::Key | K::Size | K::NoResult) => {
            "the duplicate was not wrapped for this TPM's storage root key (its seed does not decrypt here or its integrity check fails), or it is damaged; wrap it for this TPM's SRK public (README.md, \"Importing keys\")"
        }
        Some(K::Attributes) => {
            "the key's attributes do not allow import (fixedTPM or fixedParent set, or an inner wrapper was expected)"
        }
        Some(K::Symmetric | K::Scheme | K::Hash) => {
            "the duplicate uses an inner wrapper or algorithm this import does not take (make it with `tpm2_duplicate -G null`)"
        }
        _ => return Fail::Tpm(what, e),
    };
    Fail::Backend(BackendError::bad_request(
        device,
        format!("TPM2_Import refused the key: {why} ({})", describe(&e)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm2b_sizes_are_checked() {
        assert_eq!(tpm2b_body("t", "x", &[0, 2, 7, 8]).unwrap(), &[7, 8]);
        for bad in [
            &[][..],
            &[0][..],
            &[0, 0][..],
            &[0, 3, 1, 2][..],
            &[0, 1, 1, 2][..],
        ] {
            let e = tpm2b_body("t", "public", bad).unwrap_err();
            assert!(e.detail.contains("public"), "{e}");
        }
    }
}
