//! Importing a private key into a PIV slot (README.md, "Importing keys"). The PIV
//! import command (INS 0xFE) carries the key in the clear, so the key crosses the
//! agent's socket and the PC/SC link; the agent keeps its copies in zeroizing buffers.
//! The card records the slot's origin as "imported", which `list_keys` shows and which
//! makes [`super::Lane`]'s `attest` refuse: the card's attestation vouches only for keys
//! it generated.
//!
//! P-256 and P-384 keys only: the yubikey crate (0.8) builds an RSA key's CRT values
//! from p and q with a wrong totient, which a real card would store as a broken key.

use p256::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
use spki::der::Decode as _;
use tracing::info;
use yubikey::piv::{self, AlgorithmId};
use zeroize::Zeroizing;

use super::slots::slot_of;
use super::{DeviceKey, Lane, PublicKey};
use crate::backend::{BackendError, ImportInput};
use crate::proto::{KeyAlg, PinPolicy, TouchPolicy};

/// An EC key's algorithm, private scalar (zeroized on drop) and SPKI DER.
type EcKey = (KeyAlg, Zeroizing<Vec<u8>>, Vec<u8>);

/// An EC private key from PEM (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`): its
/// algorithm, scalar (zeroized on drop) and SubjectPublicKeyInfo DER.
fn ec_key(device: &str, pem: &str) -> Result<EcKey, BackendError> {
    let spki_of = |r: Result<spki::Document, spki::Error>| {
        r.map(|d| d.as_bytes().to_vec()).map_err(|e| {
            BackendError::failed(device, format!("cannot encode the key's public key: {e}"))
        })
    };
    if let Ok(k) =
        p256::SecretKey::from_pkcs8_pem(pem).or_else(|_| p256::SecretKey::from_sec1_pem(pem))
    {
        let spki = spki_of(k.public_key().to_public_key_der())?;
        return Ok((KeyAlg::P256, Zeroizing::new(k.to_bytes().to_vec()), spki));
    }
    if let Ok(k) =
        p384::SecretKey::from_pkcs8_pem(pem).or_else(|_| p384::SecretKey::from_sec1_pem(pem))
    {
        let spki = spki_of(k.public_key().to_public_key_der())?;
        return Ok((KeyAlg::P384, Zeroizing::new(k.to_bytes().to_vec()), spki));
    }
    let rsa =
        pem.contains("BEGIN RSA PRIVATE KEY") || rsa::RsaPrivateKey::from_pkcs8_pem(pem).is_ok();
    Err(if rsa {
        BackendError::unsupported(
            device,
            "waxseal imports P-256 and P-384 keys into a YubiKey; RSA import is not offered (the PIV library it uses derives an RSA key's CRT values wrongly)",
        )
    } else {
        BackendError::bad_request(
            device,
            "the key is not a P-256 or P-384 private key in PEM (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`; an encrypted PEM must be decrypted first)",
        )
    })
}

impl Lane {
    /// Imports the PEM key of `input` into slot `label`, which must be empty.
    pub(super) fn import_pem(
        &mut self,
        label: &str,
        input: &ImportInput,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        let name = self.name().to_string();
        let ImportInput::Pem {
            pem,
            touch,
            pin_policy,
        } = input
        else {
            return Err(BackendError::unsupported(
                &name,
                "a YubiKey imports a private key (PEM); a TPM duplicate is for TPM devices",
            ));
        };
        let id = slot_of(&name, label)?;
        let (alg, scalar, spki_der) = ec_key(&name, pem)?;
        let piv_alg = if alg == KeyAlg::P256 {
            AlgorithmId::EccP256
        } else {
            AlgorithmId::EccP384
        };
        if self.slot(u8::from(id))?.is_some() {
            return Err(BackendError::key_exists(&name, format!(
                "slot {label} already holds a key; waxseal never overwrites a key (ykman piv keys delete {label} removes it)"
            )));
        }
        let pin = match pin_policy {
            None => yubikey::PinPolicy::Default,
            Some(PinPolicy::Never) => yubikey::PinPolicy::Never,
            Some(PinPolicy::Once) => yubikey::PinPolicy::Once,
            Some(PinPolicy::Always) => yubikey::PinPolicy::Always,
        };
        let touch_policy = match touch {
            None => yubikey::TouchPolicy::Default,
            Some(TouchPolicy::Never) => yubikey::TouchPolicy::Never,
            Some(TouchPolicy::Always) => yubikey::TouchPolicy::Always,
            Some(TouchPolicy::Cached) => yubikey::TouchPolicy::Cached,
        };
        self.verify_pin("importing a key")?;
        self.authenticate()?;
        self.with_card(|yk| piv::import_ecc_key(yk, id, piv_alg, &scalar, touch_policy, pin))
            .map_err(|f| self.fail(f, "importing the key"))?;
        drop(scalar);
        info!(device = %name, slot = label, %alg, "imported a key into the YubiKey");
        self.policies.remove(&u8::from(id));
        let info = self.slot(u8::from(id))?.ok_or_else(|| {
            BackendError::failed(
                &name,
                format!("the imported key in slot {label} cannot be read back"),
            )
        })?;
        if info.spki != spki_der {
            return Err(BackendError::failed(
                &name,
                format!(
                    "slot {label} does not hold the imported key's public key after the import"
                ),
            ));
        }
        // A self-signed certificate, as for generated keys, so OpenSC and ykman see it.
        let spki = spki::SubjectPublicKeyInfoOwned::from_der(&spki_der)
            .map_err(|e| BackendError::failed(&name, format!("bad public key: {e}")))?;
        let key_name = format!("{name}/{label}");
        if info.pin == PinPolicy::Always {
            self.verify_pin("signing the slot certificate")?;
        }
        self.write_certificate(id, &key_name, alg, spki.clone())
            .or_else(|_| {
                self.authenticate()?;
                if info.pin == PinPolicy::Always {
                    self.verify_pin("signing the slot certificate")?;
                }
                self.write_certificate(id, &key_name, alg, spki)
            })?;
        if info.touch != TouchPolicy::Never {
            self.last_touch = Some(std::time::Instant::now());
        }
        Ok((
            DeviceKey {
                label: label.to_string(),
                alg,
                uri: Some(format!(
                    "yubikey:serial={};slot={label}",
                    self.serial_text()
                )),
                id: None,
                pcrs: None,
                imported: info.imported,
            },
            PublicKey { alg, spki_der },
        ))
    }
}
