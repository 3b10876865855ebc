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
//! - **Removal.** A removed or reset card drops the handle: requests get
//!   `device-absent` until the card is back, then the next request reconnects.
//! - **Management key.** From `mgm_key` (hex, from a file or variable), else the
//!   PIN-protected key stored on the card, else the factory default, with a warning.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use tracing::{info, warn};
use x509_cert::der::Encode;
use yubikey::piv::{self, AlgorithmId, ManagementAlgorithmId, SlotId};
use yubikey::{MgmKey, Serial, YubiKey};
use zeroize::Zeroizing;

use super::crypto::{digest_info_prefix, pem};
use super::pingate::PinGate;
use super::{
    digest_hash, Attestation, Backend, BackendError, DeviceInfo, DeviceKey, GenerateOptions,
    PublicKey, SignInput, Signed,
};
use crate::pin::PinSource;
use crate::proto::{KeyAlg, PinPolicy, RsaPadding, TouchPolicy};

/// Below this many PIN tries left the agent does not try without `waxseal unlock`.
pub const PIN_FLOOR: u8 = 2;

/// How long a YubiKey remembers a touch for keys with touch policy `cached`.
const TOUCH_CACHE: Duration = Duration::from_secs(15);

/// The slots that can hold signing keys.
const SLOTS: [u8; 24] = [
    0x9a, 0x9c, 0x9d, 0x9e, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d,
    0x8e, 0x8f, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95,
];

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

/// A `yubikey` failure, before it is given a device's words.
enum Fault {
    /// The card or reader went away; drop the handle.
    Gone(String),
    /// Anything else.
    Card(yubikey::Error),
}

fn is_gone(e: &yubikey::Error) -> bool {
    use pcsc::Error as P;
    match e {
        yubikey::Error::PcscError { inner: Some(p) } => matches!(
            p,
            P::RemovedCard
                | P::ResetCard
                | P::NoSmartcard
                | P::ReaderUnavailable
                | P::UnknownReader
                | P::NoService
                | P::ServiceStopped
                | P::UnpoweredCard
                | P::UnresponsiveCard
                | P::NoReadersAvailable
                | P::CommError
        ),
        yubikey::Error::PcscError { inner: None } => true,
        _ => false,
    }
}

/// The slot of a label such as `9c`.
fn slot_of(device: &str, label: &str) -> Result<SlotId, BackendError> {
    let bad = || {
        BackendError::UnknownKey(format!(
            "device {device} has no slot `{label}`: YubiKey keys are named by PIV slot, 9a 9c 9d 9e or 82…95 (e.g. {device}/9c)"
        ))
    };
    let n = u8::from_str_radix(label, 16).map_err(|_| bad())?;
    if label.len() != 2 || !SLOTS.contains(&n) {
        return Err(bad());
    }
    SlotId::try_from(n).map_err(|_| bad())
}

fn label_of(slot: u8) -> String {
    format!("{slot:02x}")
}

fn key_alg(alg: AlgorithmId) -> Option<KeyAlg> {
    match alg {
        AlgorithmId::EccP256 => Some(KeyAlg::P256),
        AlgorithmId::EccP384 => Some(KeyAlg::P384),
        AlgorithmId::Rsa2048 => Some(KeyAlg::Rsa(2048)),
        AlgorithmId::Rsa1024 => Some(KeyAlg::Rsa(1024)),
    }
}

fn piv_alg(alg: KeyAlg) -> Option<AlgorithmId> {
    match alg {
        KeyAlg::P256 => Some(AlgorithmId::EccP256),
        KeyAlg::P384 => Some(AlgorithmId::EccP384),
        KeyAlg::Rsa(2048) => Some(AlgorithmId::Rsa2048),
        _ => None,
    }
}

/// The effective PIN policy: YubiKeys default to `always` in 9c, `never` in 9e, and
/// `once` elsewhere.
fn pin_policy(slot: u8, p: yubikey::PinPolicy) -> PinPolicy {
    match p {
        yubikey::PinPolicy::Never => PinPolicy::Never,
        yubikey::PinPolicy::Once => PinPolicy::Once,
        yubikey::PinPolicy::Always => PinPolicy::Always,
        yubikey::PinPolicy::Default => match slot {
            0x9c => PinPolicy::Always,
            0x9e => PinPolicy::Never,
            _ => PinPolicy::Once,
        },
    }
}

fn touch_policy(t: yubikey::TouchPolicy) -> TouchPolicy {
    match t {
        yubikey::TouchPolicy::Always => TouchPolicy::Always,
        yubikey::TouchPolicy::Cached => TouchPolicy::Cached,
        yubikey::TouchPolicy::Never | yubikey::TouchPolicy::Default => TouchPolicy::Never,
    }
}

impl Lane {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn serial_text(&self) -> String {
        match (&self.card, self.settings.serial) {
            (Some(c), _) => c.serial().to_string(),
            (None, Some(s)) => s.to_string(),
            (None, None) => "?".into(),
        }
    }

    /// Opens the card if needed.
    fn card(&mut self) -> Result<&mut YubiKey, BackendError> {
        if self.card.is_none() {
            let opened = match self.settings.serial {
                Some(s) => YubiKey::open_by_serial(Serial::from(s)),
                None => YubiKey::open(),
            };
            let which = self.settings.serial.map_or("a YubiKey".to_string(), |s| {
                format!("the YubiKey with serial {s}")
            });
            let card = opened.map_err(|e| {
                BackendError::Absent(format!(
                    "device {}: {which} is not there ({e}); plug it in (pcscd must be running)",
                    self.settings.name
                ))
            })?;
            info!(device = %self.settings.name, serial = %card.serial(), version = %card.version(), "YubiKey connected");
            self.card = Some(card);
            self.policies.clear();
        }
        // Just set when it was `None`.
        self.card.as_mut().ok_or_else(|| {
            BackendError::Absent(format!("device {}: no YubiKey", self.settings.name))
        })
    }

    /// Runs `op` on the card; a removed or reset card drops the handle (a reset card
    /// is reopened and `op` tried once more).
    fn with_card<T>(
        &mut self,
        mut op: impl FnMut(&mut YubiKey) -> Result<T, yubikey::Error>,
    ) -> Result<T, Fault> {
        for attempt in 0..2 {
            let card = self.card().map_err(|e| Fault::Gone(e.to_string()))?;
            match op(card) {
                Ok(v) => return Ok(v),
                Err(e) if is_gone(&e) => {
                    warn!(device = %self.settings.name, error = %e, "YubiKey removed or reset; handle dropped");
                    self.card = None;
                    self.policies.clear();
                    let reset = matches!(
                        &e,
                        yubikey::Error::PcscError {
                            inner: Some(pcsc::Error::ResetCard)
                        }
                    );
                    if !(reset && attempt == 0) {
                        return Err(Fault::Gone(format!(
                            "device {}: the YubiKey went away ({e}); plug it back in",
                            self.settings.name
                        )));
                    }
                }
                Err(e) => return Err(Fault::Card(e)),
            }
        }
        Err(Fault::Gone(format!(
            "device {}: the YubiKey keeps resetting",
            self.settings.name
        )))
    }

    /// A fault as the backend's error, `doing` what.
    fn fail(&self, f: Fault, doing: &str) -> BackendError {
        let name = self.name();
        match f {
            Fault::Gone(m) => BackendError::Absent(m),
            Fault::Card(yubikey::Error::WrongPin { tries }) => BackendError::PinIncorrect(format!(
                "device {name}: wrong PIN while {doing}; {tries} tries left"
            )),
            Fault::Card(yubikey::Error::PinLocked) => BackendError::PinBlocked(format!(
                "device {name}: the PIN is blocked; unblock it with the PUK (ykman piv access unblock-pin)"
            )),
            Fault::Card(e) => BackendError::Device(format!("device {name}: {doing} failed: {e}")),
        }
    }

    /// What slot `slot` holds, from the card's metadata (cached until reconnect).
    fn slot(&mut self, slot: u8) -> Result<Option<SlotInfo>, BackendError> {
        if let Some(info) = self.policies.get(&slot) {
            return Ok(Some(info.clone()));
        }
        let id = SlotId::try_from(slot)
            .map_err(|_| BackendError::Device(format!("slot {slot:02x} is not a PIV slot")))?;
        let meta = match self.with_card(|yk| piv::metadata(yk, id)) {
            Ok(m) => m,
            // No key in the slot: the card answers "not found".
            Err(Fault::Card(_)) => return Ok(None),
            Err(f) => return Err(self.fail(f, "reading slot metadata")),
        };
        let ManagementAlgorithmId::Asymmetric(alg) = meta.algorithm else {
            return Ok(None);
        };
        let (Some(alg), Some(public)) = (key_alg(alg), meta.public) else {
            return Ok(None);
        };
        let spki = public
            .to_der()
            .map_err(|e| BackendError::Device(format!("slot {slot:02x}: bad public key: {e}")))?;
        let (pin, touch) = meta
            .policy
            .map(|(p, t)| (pin_policy(slot, p), touch_policy(t)))
            .unwrap_or((
                pin_policy(slot, yubikey::PinPolicy::Default),
                TouchPolicy::Never,
            ));
        let info = SlotInfo {
            alg,
            spki,
            pin,
            touch,
        };
        self.policies.insert(slot, info.clone());
        Ok(Some(info))
    }

    fn slot_key(&mut self, label: &str) -> Result<(SlotId, SlotInfo), BackendError> {
        let id = slot_of(self.name(), label)?;
        let info = self.slot(u8::from(id))?.ok_or_else(|| {
            BackendError::UnknownKey(format!(
                "slot {label} of device {} holds no key (`waxseal keys generate {}/{label} --alg p256` makes one)",
                self.name(),
                self.name()
            ))
        })?;
        Ok((id, info))
    }

    /// Verifies the PIN from the device's source, once per PIN and never below the
    /// floor unless the user unlocked.
    fn verify_pin(&mut self, doing: &str) -> Result<(), BackendError> {
        let name = self.name().to_string();
        let source = self.settings.pin.clone().ok_or_else(|| {
            BackendError::PinRequired(format!(
                "device {name} needs its PIN for {doing} and its [[device]] entry has no `pin` (add pin = \"file:/path\" or \"env:VAR\")"
            ))
        })?;
        let pin = source
            .read()
            .map_err(|e| BackendError::PinRequired(format!("device {name}: {e}")))?;
        let offer = self.pins.offer(pin).map_err(|_| {
            BackendError::PinIncorrect(format!(
                "device {name}: the PIN from {source} was refused by the YubiKey before; the agent does not try it again. Put the right PIN there and retry"
            ))
        })?;
        let tries = self.pin_tries()?;
        if tries == 0 {
            return Err(BackendError::PinBlocked(format!(
                "device {name}: the PIN is blocked; unblock it with the PUK (ykman piv access unblock-pin)"
            )));
        }
        if tries < PIN_FLOOR && !self.unlocked {
            return Err(BackendError::PinIncorrect(format!(
                "device {name}: only {tries} PIN try is left before the YubiKey blocks its PIN, so the agent does not try. Check the PIN in {source}, then run `waxseal unlock {name}`"
            )));
        }
        let secret = offer.secret().expose_secret().as_bytes().to_vec();
        let result = self.with_card(|yk| yk.verify_pin(&secret));
        drop(Zeroizing::new(secret));
        match result {
            Ok(()) => {
                self.pins.accepted();
                self.unlocked = false;
                Ok(())
            }
            Err(Fault::Card(yubikey::Error::WrongPin { tries })) => {
                self.pins.refused(&offer);
                self.unlocked = false;
                warn!(device = %name, source = %source, tries, "YubiKey refused the PIN; it will not be retried");
                let next = if tries < PIN_FLOOR {
                    format!(" Below {PIN_FLOOR} tries the agent waits for `waxseal unlock {name}`.")
                } else {
                    String::new()
                };
                Err(BackendError::PinIncorrect(format!(
                    "device {name}: the YubiKey refused the PIN from {source}; {tries} tries left.{next} The agent will not retry it; fix the PIN source and try again"
                )))
            }
            Err(f) => Err(self.fail(f, "verifying the PIN")),
        }
    }

    /// PIN tries left. From the PIN's metadata, which (unlike an empty VERIFY after a
    /// re-select) leaves the card's security status alone; cards without metadata
    /// (firmware before 5.3) get the re-select.
    fn pin_tries(&mut self) -> Result<u8, BackendError> {
        let pin_slot = SlotId::Management(piv::ManagementSlotId::Pin);
        match self.with_card(|yk| piv::metadata(yk, pin_slot)) {
            Ok(meta) => {
                if let Some(r) = meta.retries {
                    return Ok(r.remaining_count);
                }
            }
            Err(Fault::Gone(m)) => return Err(BackendError::Absent(m)),
            Err(Fault::Card(_)) => {}
        }
        self.with_card(|yk| yk.get_pin_retries())
            .map_err(|f| self.fail(f, "reading the PIN retry counter"))
    }

    /// Authenticates with the management key.
    fn authenticate(&mut self) -> Result<(), BackendError> {
        let name = self.name().to_string();
        let key = match &self.settings.mgm_key {
            Some(source) => {
                let text = source.read().map_err(|e| {
                    BackendError::PinRequired(format!("device {name}: management key: {e}"))
                })?;
                let bytes =
                    Zeroizing::new(hex::decode(text.expose_secret().trim()).map_err(|_| {
                        BackendError::BadRequest(format!(
                            "device {name}: the management key from {source} is not hex"
                        ))
                    })?);
                MgmKey::from_bytes(&*bytes).map_err(|e| {
                    BackendError::BadRequest(format!(
                        "device {name}: the management key from {source} is not a 24-byte key: {e}"
                    ))
                })?
            }
            None => match self.with_card(MgmKey::get_protected) {
                Ok(k) => k,
                Err(Fault::Gone(m)) => return Err(BackendError::Absent(m)),
                Err(Fault::Card(_)) => {
                    if !self.warned_default_mgm {
                        warn!(device = %name, "using the YubiKey's factory default management key: anyone with the card can change it; set a PIN-protected one (ykman piv access change-management-key --protect) or mgm_key");
                        self.warned_default_mgm = true;
                    }
                    MgmKey::default()
                }
            },
        };
        match self.with_card(|yk| yk.authenticate(key.clone())) {
            Ok(()) => Ok(()),
            Err(Fault::Card(yubikey::Error::AuthenticationError)) => Err(BackendError::PinIncorrect(format!(
                "device {name}: the YubiKey refused the management key; set mgm_key in the [[device]] entry"
            ))),
            Err(f) => Err(self.fail(f, "authenticating with the management key")),
        }
    }
}

impl Backend for Lane {
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
        let id = slot_of(&name, label)?;
        let piv = piv_alg(alg).ok_or_else(|| {
            BackendError::Unsupported(format!(
                "a YubiKey generates p256, p384 and rsa2048 keys, not {alg}"
            ))
        })?;
        if self.slot(u8::from(id))?.is_some() {
            return Err(BackendError::KeyExists(format!(
                "slot {label} of device {name} already holds a key; waxseal never overwrites a key (ykman piv keys delete {label} removes it)"
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
            .map_err(|e| BackendError::Device(format!("device {name}: bad public key: {e}")))?;
        info!(device = %name, slot = label, %alg, "generated a key on the YubiKey");
        self.policies.remove(&u8::from(id));
        let info = self.slot(u8::from(id))?.ok_or_else(|| {
            BackendError::Device(format!(
                "device {name}: the new key in slot {label} cannot be read back"
            ))
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
            },
            PublicKey { alg, spki_der },
        ))
    }

    fn sign(&mut self, label: &str, input: &SignInput<'_>) -> Result<Signed, BackendError> {
        let name = self.name().to_string();
        let (id, info) = self.slot_key(label)?;
        if input.raw {
            return Err(BackendError::Unsupported(format!(
                "device {name}: YubiKeys have no Ed25519 keys here"
            )));
        }
        let hash = digest_hash(info.alg, input)?;
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
                    return Err(BackendError::Unsupported(format!(
                        "device {name}: RSA-PSS is not offered for YubiKey keys; use PKCS#1 v1.5"
                    )));
                }
                let alg = match bits {
                    2048 => AlgorithmId::Rsa2048,
                    _ => AlgorithmId::Rsa1024,
                };
                let k = (bits / 8) as usize;
                let prefix = digest_info_prefix(hash);
                let t_len = prefix.len() + input.digest.len();
                if k < t_len + 11 {
                    return Err(BackendError::BadRequest(format!(
                        "a {bits}-bit key cannot sign a {hash} digest"
                    )));
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
                return Err(BackendError::Unsupported(format!(
                    "device {name}: YubiKeys have no Ed25519 keys here"
                )))
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
                Err(Fault::Card(yubikey::Error::AuthenticationError))
            )
        {
            self.verify_pin("signing")?;
            attempt = self.with_card(|yk| piv::sign_data(yk, &data, piv, id));
        }
        let signature = attempt.map_err(|f| match f {
            Fault::Card(yubikey::Error::AuthenticationError) => BackendError::PinRequired(format!(
                "device {name}: the YubiKey refused to sign with slot {label}: PIN not verified or touch not given"
            )),
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
            Err(Fault::Gone(_))
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
        let slot_cert = self
            .with_card(|yk| piv::attest(yk, id))
            .map_err(|f| self.fail(f, "attesting the key"))?
            .to_vec();
        let object = self
            .with_card(|yk| yk.fetch_object(OBJECT_F9_CERT))
            .map_err(|f| self.fail(f, "reading the attestation certificate (slot f9)"))?;
        let f9 = cert_of_object(&object).ok_or_else(|| {
            BackendError::Device(format!(
                "device {name}: the slot f9 object holds no certificate"
            ))
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
        use yubikey::Certificate;
        let name = self.name().to_string();
        let subject = x509_cert::name::Name::from_str(&format!("CN={key_name}"))
            .map_err(|e| BackendError::BadRequest(format!("bad certificate subject: {e}")))?;
        let mut serial = [0u8; 16];
        getrandom::getrandom(&mut serial)
            .map_err(|e| BackendError::Device(format!("no randomness for a serial: {e}")))?;
        serial[0] &= 0x7f;
        serial[0] |= 0x01;
        let serial = x509_cert::serial_number::SerialNumber::new(&serial)
            .map_err(|e| BackendError::Device(format!("bad serial: {e}")))?;
        let validity =
            x509_cert::time::Validity::from_now(Duration::from_secs(20 * 365 * 24 * 3600))
                .map_err(|e| BackendError::Device(format!("bad validity: {e}")))?;
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

/// The certificate inside a PIV certificate object (`70 cert 71 info FE lrc`).
fn cert_of_object(object: &[u8]) -> Option<&[u8]> {
    if object.first() != Some(&0x70) {
        return None;
    }
    let (len, start) = match *object.get(1)? {
        0x82 => (
            usize::from(u16::from_be_bytes([*object.get(2)?, *object.get(3)?])),
            4,
        ),
        0x81 => (usize::from(*object.get(2)?), 3),
        l if l < 0x80 => (usize::from(l), 2),
        _ => return None,
    };
    object.get(start..start + len)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn slots_by_label() {
        assert!(slot_of("yk", "9c").is_ok());
        assert!(slot_of("yk", "82").is_ok());
        assert!(slot_of("yk", "95").is_ok());
        for bad in ["f9", "9b", "96", "9C0", "c", "zz", ""] {
            assert!(
                matches!(slot_of("yk", bad), Err(BackendError::UnknownKey(_))),
                "{bad}"
            );
        }
        assert_eq!(label_of(0x9a), "9a");
    }

    #[test]
    fn default_pin_policies() {
        assert_eq!(
            pin_policy(0x9c, yubikey::PinPolicy::Default),
            PinPolicy::Always
        );
        assert_eq!(
            pin_policy(0x9e, yubikey::PinPolicy::Default),
            PinPolicy::Never
        );
        assert_eq!(
            pin_policy(0x9a, yubikey::PinPolicy::Default),
            PinPolicy::Once
        );
        assert_eq!(
            pin_policy(0x9a, yubikey::PinPolicy::Always),
            PinPolicy::Always
        );
    }

    #[test]
    fn certificate_objects() {
        let obj = [0x70, 0x03, 1, 2, 3, 0x71, 0x01, 0x00, 0xfe, 0x00];
        assert_eq!(cert_of_object(&obj), Some(&[1u8, 2, 3][..]));
        assert_eq!(cert_of_object(&[0x70, 0x05, 1]), None);
        assert_eq!(cert_of_object(&[0x53, 0x00]), None);
    }
}
