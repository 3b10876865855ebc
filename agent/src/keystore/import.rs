//! `import_key`: a key made elsewhere brought into its device (README.md, "Importing
//! keys"). Every import, done or refused, is an `import` record in the audit log with
//! its caller, the key's algorithm and public key fingerprint, and `"imported": true`.

use serde_json::{json, Map};
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::{wire, KeyStore};
use crate::audit::{self, Record};
use crate::backend::{self, ImportInput};
use crate::policy::Caller;
use crate::proto::{Bytes, DeviceKind, ErrorCode, ImportKey, ImportKeyOk, WireError};

impl KeyStore {
    /// `import_key`.
    pub fn import(&self, req: &ImportKey, caller: &Caller) -> Result<ImportKeyOk, WireError> {
        let mut subject = Map::new();
        let r = self.import_inner(req, &mut subject);
        if let Some(audit) = &self.audit {
            subject.insert("imported".into(), json!(true));
            let record = Record {
                event: audit::Event::Import,
                key: req.key.clone(),
                purpose: None,
                caller: caller.clone(),
                subject,
                outcome: r.as_ref().err().map(|e| (e.code, e.message.clone())),
                intent: None,
            };
            if let Err(err) = audit.append(&record) {
                warn!(error = %err, key = %req.key, "import not recorded in the audit log");
            }
        }
        r
    }

    fn import_inner(
        &self,
        req: &ImportKey,
        subject: &mut Map<String, serde_json::Value>,
    ) -> Result<ImportKeyOk, WireError> {
        let bad = |m: String| WireError::new(ErrorCode::BadRequest, m);
        req.check().map_err(|m| bad(format!("import_key: {m}")))?;
        self.check_unlocked()?;
        let (device, name) = self.split(&req.key)?;
        let input = match (&req.tpm_duplicate, &req.pem) {
            (None, None) if req.pkcs11_wrapped.is_some() => {
                let Some(w) = &req.pkcs11_wrapped else {
                    return Err(bad("import_key: no key given".into()));
                };
                if device.kind != DeviceKind::Pkcs11 {
                    return Err(bad(format!(
                        "import_key: `pkcs11_wrapped` is unwrapped by a PKCS#11 token; device {} is a {} device",
                        device.name, device.kind
                    )));
                }
                ImportInput::Pkcs11Wrapped {
                    wrapped: w.wrapped.0.clone(),
                    unwrapping_key: w.unwrapping_key.clone(),
                    public: w.public.0.clone(),
                }
            }
            (Some(d), _) => {
                if device.kind != DeviceKind::Tpm {
                    return Err(bad(format!(
                        "import_key: `tpm_duplicate` is a key wrapped for a TPM; device {} is a {} device",
                        device.name, device.kind
                    )));
                }
                ImportInput::TpmDuplicate {
                    public: d.public.0.clone(),
                    duplicate: d.duplicate.0.clone(),
                    seed: d.seed.0.clone(),
                }
            }
            (None, Some(pem)) => {
                if device.kind != DeviceKind::Yubikey {
                    return Err(bad(format!(
                        "import_key: a plaintext `pem` key is taken by YubiKeys only; device {} is a {} device{}",
                        device.name,
                        device.kind,
                        if device.kind == DeviceKind::Tpm {
                            " (a TPM takes a duplicate wrapped for its storage key: `tpm_duplicate`)"
                        } else {
                            ""
                        }
                    )));
                }
                ImportInput::Pem {
                    pem: Zeroizing::new(pem.clone()),
                    touch: req.touch,
                    pin_policy: req.pin_policy,
                }
            }
            (None, None) => return Err(bad("import_key: no key given".into())),
        };
        subject.insert("import".into(), json!(input.kind()));
        let (k, pk) = device
            .lanes
            .run(|b| b.import(name.label, &input))?
            .map_err(wire)?;
        subject.insert("alg".into(), json!(pk.alg.to_string()));
        subject.insert(
            "spki_sha256".into(),
            json!(hex::encode(Sha256::digest(&pk.spki_der))),
        );
        info!(key = %req.key, alg = %pk.alg, kind = input.kind(), "key imported");
        Ok(ImportKeyOk {
            key: self.key_info(&device.name, k),
            pem: backend::crypto::spki_pem(&pk.spki_der),
            spki_der: Bytes(pk.spki_der),
        })
    }
}
