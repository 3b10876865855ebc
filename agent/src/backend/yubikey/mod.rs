//! YubiKeys (PIV) through pcscd, with the `yubikey` crate.
//!
//! A YubiKey does one thing at a time, so a device has one lane. Keys are the PIV
//! slots that hold one: `9a`, `9c`, `9d`, `9e` and the retired `82`…`95`, named
//! `DEVICE/9c`. What a slot holds (algorithm, public key, PIN and touch policies) comes
//! from the card's metadata.
//!
//! - **Sharing.** The card is opened in shared mode and a PC/SC transaction lasts one
//!   operation, so OpenSC or ykman can use the card while the agent runs. Because they
//!   may reset the PIV applet's security status, the PIN is verified right before each
//!   signature that needs it.
//! - **PIN.** From the device's `pin` source. A PIN the card refused is never offered
//!   again (its fingerprint is kept), and the error says how many tries are left. With
//!   fewer than [`PIN_FLOOR`] tries left the agent does not try at all until the user
//!   runs `waxseal unlock DEVICE`, which tries the PIN once, right then.
//! - **Removal.** A removed or reset card drops the handle and is opened once more
//!   (the backend kit's [`fault`](super::fault) loop; [`card`] says which PC/SC errors
//!   mean what): requests get `device-absent` until the card is back.
//! - **Management key.** From `mgm_key` (hex, from a file or variable), else the
//!   PIN-protected key stored on the card, else the factory default, with a warning.
//!
//! [`card`] talks to the card (faults, PIN, management key); [`slots`] knows the PIV
//! slots and what they hold.

mod card;
mod import;
mod slots;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tracing::info;
use x509_cert::der::Encode;
use yubikey::piv::{self, AlgorithmId, SlotId};
use yubikey::{Certificate, YubiKey};

use self::card::CardError;
use self::slots::{cert_of_object, label_of, piv_alg, slot_of, SLOTS};
use super::crypto::{digest_info_prefix, pem};
use super::pingate::PinGate;
use super::{
    digest_hash, Attestation, Backend, BackendError, DeviceCertificate, DeviceInfo, DeviceKey,
    GenerateOptions, PublicKey, SignInput, Signed,
};
use crate::pin::PinSource;
use crate::proto::{KeyAlg, PinPolicy, RsaPadding, TouchPolicy};
use crate::x509::certificate_spki;

/// Below this many PIN tries left the agent does not try without `waxseal unlock`.
pub const PIN_FLOOR: u8 = 2;

/// How long a YubiKey remembers a touch for keys with touch policy `cached`.
const TOUCH_CACHE: Duration = Duration::from_secs(15);

/// The PIV object holding the slot f9 (attestation) certificate.
const OBJECT_F9_CERT: u32 = 0x5f_ff01;

/// How to reach one YubiKey.
#[derive(Debug, Clone)]
pub struct YubikeySettings {
    /// Device name from the config.
    pub name: String,
    /// Which YubiKey; the first one found if `None`.
    pub serial: Option<u32>,
    /// PIN source.
    pub pin: Option<PinSource>,
    /// Management key source (hex).
    pub mgm_key: Option<PinSource>,
}

/// The one lane of a YubiKey device.
pub fn open(settings: YubikeySettings) -> Vec<Box<dyn Backend>> {
    vec![Box::new(Lane {
        settings,
        card: None,
        pins: PinGate::default(),
        unlocked: false,
        policies: HashMap::new(),
        last_touch: None,
        warned_default_mgm: false,
    })]
}

/// What a slot holds.
#[derive(Debug, Clone)]
struct SlotInfo {
    alg: KeyAlg,
    spki: Vec<u8>,
    pin: PinPolicy,
    touch: TouchPolicy,
    /// The card's metadata says the key was imported (origin), not generated on it.
    imported: bool,
}

struct Lane {
    settings: YubikeySettings,
    card: Option<YubiKey>,
    /// The PIN the card refused last, never sent again.
    pins: PinGate,
    /// The user ran `waxseal unlock`: one try below the floor is allowed.
    unlocked: bool,
    /// Slot contents read from the card, by slot number.
    policies: HashMap<u8, SlotInfo>,
    /// When the card last waited for a touch (for `cached`).
    last_touch: Option<Instant>,
    warned_default_mgm: bool,
}

impl Backend for Lane {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn list_keys(&mut self) -> Result<Vec<DeviceKey>, BackendError> {
        let mut keys = Vec::new();
        for slot in SLOTS {
            if let Some(info) = self.slot(slot)? {
                keys.push(DeviceKey {
                    label: label_of(slot),
                    alg: info.alg,
                    uri: Some(format!(
                        "yubikey:serial={};slot={}",
                        self.serial_text(),
                        label_of(slot)
                    )),
                    id: None,
                    pcrs: None,
                    imported: info.imported,
                });
            }
        }
        Ok(keys)
    }

    fn public_key(&mut self, label: &str) -> Result<PublicKey, BackendError> {
        let (_, info) = self.slot_key(label)?;
        Ok(PublicKey {
            alg: info.alg,
            spki_der: info.spki,
        })
    }

    /// The slot's certificate when its public key is the slot's key (a slot may hold a
    /// stale certificate after its key was replaced). Read from the card each time:
    /// `ykman piv certificates import` may replace it while the agent runs.
    fn certificate(&mut self, label: &str) -> Result<Option<DeviceCertificate>, BackendError> {
        let (id, info) = self.slot_key(label)?;
        let cert = match self.with_card(|yk| Certificate::read(yk, id)) {
            Ok(c) => c,
            // An empty certificate object, or none: the card answers "not found".
            Err(CardError::Card(_)) => return Ok(None),
            Err(f) => return Err(self.fail(f, "reading the slot's certificate")),
        };
        let der = cert.cert.to_der().map_err(|e| {
            BackendError::failed(
                self.name(),
                format!("the certificate of slot {label} cannot be encoded: {e}"),
            )
        })?;
        let ours = certificate_spki(&der) == Some(info.spki.as_slice());
        Ok(ours.then_some(DeviceCertificate {
            der,
            id: None,
            label: None,
        }))
    }

    fn generate(
        &mut self,
        label: &str,
        alg: KeyAlg,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        self.generate_with(label, alg, &GenerateOptions::default())
    }

    fn generate_with(
        &mut self,
        label: &str,
        alg: KeyAlg,
        opts: &GenerateOptions,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        let name = self.name().to_string();
        if opts.id.is_some() {
            return Err(BackendError::bad_request(
                &name,
                "`raw_id` sets a PKCS#11 CKA_ID; a YubiKey's keys are named by their PIV slot",
            ));
        }
        let id = slot_of(&name, label)?;
        let piv = piv_alg(alg).ok_or_else(|| {
            BackendError::unsupported(
                &name,
                format!("a YubiKey generates p256, p384 and rsa2048 keys, not {alg}"),
            )
        })?;
        if self.slot(u8::from(id))?.is_some() {
            return Err(BackendError::key_exists(&name, format!(
                "slot {label} already holds a key; waxseal never overwrites a key (ykman piv keys delete {label} removes it)"
            )));
        }
        let pin = match opts.pin_policy {
            None => yubikey::PinPolicy::Default,
            Some(PinPolicy::Never) => yubikey::PinPolicy::Never,
            Some(PinPolicy::Once) => yubikey::PinPolicy::Once,
            Some(PinPolicy::Always) => yubikey::PinPolicy::Always,
        };
        let touch = match opts.touch {
            None => yubikey::TouchPolicy::Default,
            Some(TouchPolicy::Never) => yubikey::TouchPolicy::Never,
            Some(TouchPolicy::Always) => yubikey::TouchPolicy::Always,
            Some(TouchPolicy::Cached) => yubikey::TouchPolicy::Cached,
        };
        // The PIN first: the protected management key and the certificate need it.
        self.verify_pin("generating a key")?;
        self.authenticate()?;
        let spki = self
            .with_card(|yk| piv::generate(yk, id, piv, pin, touch))
            .map_err(|f| self.fail(f, "generating the key"))?;
        let spki_der = spki
            .to_der()
            .map_err(|e| BackendError::failed(&name, format!("bad public key: {e}")))?;
        info!(device = %name, slot = label, %alg, "generated a key on the YubiKey");
        self.policies.remove(&u8::from(id));
        let info = self.slot(u8::from(id))?.ok_or_else(|| {
            BackendError::failed(
                &name,
                format!("the new key in slot {label} cannot be read back"),
            )
        })?;
        // A self-signed certificate, so that OpenSC, ssh-keygen -D and ykman see the key.
        let key_name = format!("{name}/{label}");
        if info.touch != TouchPolicy::Never {
            info!(device = %name, slot = label, "touch the YubiKey to sign the slot's certificate");
        }
        if info.pin == PinPolicy::Always {
            self.verify_pin("signing the slot certificate")?;
        }
        // Writing the certificate needs the management key again if the card was
        // re-selected meanwhile (by another client, or an old firmware's PIN check).
        self.write_certificate(id, &key_name, alg, spki.clone())
            .or_else(|_| {
                self.authenticate()?;
                if info.pin == PinPolicy::Always {
                    self.verify_pin("signing the slot certificate")?;
                }
                self.write_certificate(id, &key_name, alg, spki)
            })?;
        if info.touch != TouchPolicy::Never {
            self.last_touch = Some(Instant::now());
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
                imported: false,
            },
            PublicKey { alg, spki_der },
        ))
    }

    fn import(
        &mut self,
        label: &str,
        input: &super::ImportInput,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        self.import_pem(label, input)
    }

    fn sign(&mut self, label: &str, input: &SignInput<'_>) -> Result<Signed, BackendError> {
        let name = self.name().to_string();
        let (id, info) = self.slot_key(label)?;
        if input.raw {
            return Err(BackendError::unsupported(
                &name,
                "YubiKeys have no Ed25519 keys here",
            ));
        }
        let hash = digest_hash(&name, info.alg, input)?;
        let (piv, data) = match info.alg {
            KeyAlg::P256 | KeyAlg::P384 => {
                // ECDSA uses the leftmost bits of a longer digest (FIPS 186-4 6.4); the
                // card takes at most the field size.
                let field = if info.alg == KeyAlg::P256 { 32 } else { 48 };
                let n = input.digest.len().min(field);
                let alg = if info.alg == KeyAlg::P256 {
                    AlgorithmId::EccP256
                } else {
                    AlgorithmId::EccP384
                };
                (alg, input.digest[..n].to_vec())
            }
            KeyAlg::Rsa(bits) => {
                if input.padding == RsaPadding::Pss {
                    return Err(BackendError::unsupported(
                        &name,
                        "RSA-PSS is not offered for YubiKey keys; use PKCS#1 v1.5",
                    ));
                }
                let alg = match bits {
                    2048 => AlgorithmId::Rsa2048,
                    _ => AlgorithmId::Rsa1024,
                };
                let k = (bits / 8) as usize;
                let prefix = digest_info_prefix(hash);
                let t_len = prefix.len() + input.digest.len();
                if k < t_len + 11 {
                    return Err(BackendError::bad_request(
                        &name,
                        format!("a {bits}-bit key cannot sign a {hash} digest"),
                    ));
                }
                let mut block = Vec::with_capacity(k);
                block.extend_from_slice(&[0x00, 0x01]);
                block.resize(k - t_len - 1, 0xff);
                block.push(0x00);
                block.extend_from_slice(prefix);
                block.extend_from_slice(input.digest);
                (alg, block)
            }
            KeyAlg::Ed25519 => {
                return Err(BackendError::unsupported(
                    &name,
                    "YubiKeys have no Ed25519 keys here",
                ))
            }
        };
        // PIN policy `always` wants a VERIFY right before each signature. With `once` the
        // card may still be verified from an earlier signature: try first, and verify
        // only when the card says so (another client may have reset its status).
        if info.pin == PinPolicy::Always {
            self.verify_pin("signing")?;
        }
        let mut attempt = self.with_card(|yk| piv::sign_data(yk, &data, piv, id));
        if info.pin == PinPolicy::Once
            && matches!(
                attempt,
                Err(CardError::Card(yubikey::Error::AuthenticationError))
            )
        {
            self.verify_pin("signing")?;
            attempt = self.with_card(|yk| piv::sign_data(yk, &data, piv, id));
        }
        let signature = attempt.map_err(|f| match f {
            CardError::Card(yubikey::Error::AuthenticationError) => BackendError::pin_required(&name, format!("the YubiKey refused to sign with slot {label}: PIN not verified or touch not given")),
            f => self.fail(f, "signing"),
        })?;
        if info.touch != TouchPolicy::Never {
            self.last_touch = Some(Instant::now());
        }
        Ok(Signed {
            signature: signature.to_vec(),
            alg: info.alg,
            hash,
        })
    }

    fn touch_notice(&mut self, label: &str) -> Option<String> {
        let (_, info) = self.slot_key(label).ok()?;
        let waits = match info.touch {
            TouchPolicy::Never => false,
            TouchPolicy::Always => true,
            TouchPolicy::Cached => self.last_touch.is_none_or(|t| t.elapsed() >= TOUCH_CACHE),
        };
        waits.then(|| {
            format!(
                "touch your YubiKey (serial {}) to sign with {}/{label}",
                self.serial_text(),
                self.name()
            )
        })
    }

    fn present(&mut self) -> bool {
        // The PIN's metadata: no PIN needed, and unlike a re-select it leaves the
        // card's security status alone. Any answer from the card means it is there.
        let pin_slot = SlotId::Management(piv::ManagementSlotId::Pin);
        !matches!(
            self.with_card(|yk| piv::metadata(yk, pin_slot).map(|_| ())),
            Err(CardError::NoCard(_))
        )
    }

    fn forget_pin(&mut self) {
        // The `yubikey` crate keeps the verified PIN in its handle; dropping the handle
        // resets the card, so its security status goes too.
        if self.card.take().is_some() {
            info!(device = %self.settings.name, "YubiKey handle dropped: the PIN is needed again");
        }
    }

    fn unlock(&mut self) -> Result<String, BackendError> {
        self.pins.forget();
        self.unlocked = true;
        let result = self.verify_pin("unlock");
        self.unlocked = false;
        result?;
        Ok(format!(
            "device {}: the YubiKey (serial {}) accepted the PIN; its retry counter is reset",
            self.name(),
            self.serial_text()
        ))
    }

    fn info(&mut self) -> Result<DeviceInfo, BackendError> {
        let keys = self.list_keys()?.len();
        let card = self.card()?;
        Ok(DeviceInfo {
            detail: format!(
                "YubiKey serial {} firmware {} in reader '{}'",
                card.serial(),
                card.version(),
                card.name()
            ),
            keys,
        })
    }

    fn attest(&mut self, label: &str, _nonce: &[u8]) -> Result<Attestation, BackendError> {
        let name = self.name().to_string();
        let (id, info) = self.slot_key(label)?;
        if info.imported {
            return Err(BackendError::unsupported(&name, format!(
                "slot {label} holds an imported key (the card's metadata says origin: imported): a YubiKey attests only keys it generated, since its attestation vouches that the key was made on the card and never existed outside it"
            )));
        }
        let slot_cert = self
            .with_card(|yk| piv::attest(yk, id))
            .map_err(|f| self.fail(f, "attesting the key"))?
            .to_vec();
        let object = self
            .with_card(|yk| yk.fetch_object(OBJECT_F9_CERT))
            .map_err(|f| self.fail(f, "reading the attestation certificate (slot f9)"))?;
        let f9 = cert_of_object(&object).ok_or_else(|| {
            BackendError::failed(&name, "the slot f9 object holds no certificate")
        })?;
        Ok(Attestation {
            format: "piv-attestation".into(),
            evidence: serde_json::json!({
                "serial": self.serial_text(),
                "slot": label,
                "alg": info.alg.to_string(),
                "pin_policy": info.pin.as_str(),
                "touch_policy": info.touch.as_str(),
                "attestation_certificate": pem("CERTIFICATE", &slot_cert),
                "intermediate_certificate": pem("CERTIFICATE", f9),
            }),
        })
    }
}

impl Lane {
    /// Writes a self-signed certificate for the key in `id` (subject CN = `key_name`).
    fn write_certificate(
        &mut self,
        id: SlotId,
        key_name: &str,
        alg: KeyAlg,
        spki: spki::SubjectPublicKeyInfoOwned,
    ) -> Result<(), BackendError> {
        use yubikey::certificate::yubikey_signer::{Rsa2048, YubiRsa};
        let name = self.name().to_string();
        let subject = x509_cert::name::Name::from_str(&format!("CN={key_name}")).map_err(|e| {
            BackendError::bad_request(&name, format!("bad certificate subject: {e}"))
        })?;
        let mut serial = [0u8; 16];
        getrandom::getrandom(&mut serial)
            .map_err(|e| BackendError::failed(&name, format!("no randomness for a serial: {e}")))?;
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        let serial = x509_cert::serial_number::SerialNumber::new(&serial)
            .map_err(|e| BackendError::failed(&name, format!("bad serial: {e}")))?;
        let validity =
            x509_cert::time::Validity::from_now(Duration::from_secs(20 * 365 * 24 * 3600))
                .map_err(|e| BackendError::failed(&name, format!("bad validity: {e}")))?;
        let result = self.with_card(|yk| {
            let (s, v, n, k) = (serial.clone(), validity, subject.clone(), spki.clone());
            match alg {
                KeyAlg::P256 => Certificate::generate_self_signed::<_, p256::NistP256>(
                    yk,
                    id,
                    s,
                    v,
                    n,
                    k,
                    |_| Ok(()),
                ),
                KeyAlg::P384 => Certificate::generate_self_signed::<_, p384::NistP384>(
                    yk,
                    id,
                    s,
                    v,
                    n,
                    k,
                    |_| Ok(()),
                ),
                _ => Certificate::generate_self_signed::<_, YubiRsa<Rsa2048>>(
                    yk,
                    id,
                    s,
                    v,
                    n,
                    k,
                    |_| Ok(()),
                ),
            }
        });
        result
            .map(|_| ())
            .map_err(|f| self.fail(f, &format!("writing the certificate of {key_name}")))
            .inspect(|()| info!(device = %name, key = key_name, "self-signed certificate written to the slot"))
    }
}
