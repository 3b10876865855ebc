//! Talking to the card: opening it, which PC/SC errors are which [`Fault`] and how the
//! lane heals each, and the PIN and management-key steps.

use std::fmt;

use secrecy::ExposeSecret;
use tracing::{info, warn};
use x509_cert::der::Encode;
use yubikey::piv::{self, ManagementAlgorithmId, SlotId};
use yubikey::{MgmKey, Serial, YubiKey};
use zeroize::Zeroizing;

use super::slots::{key_alg, pin_policy, slot_of, touch_policy};
use super::{Lane, SlotInfo, PIN_FLOOR};
use crate::backend::fault::{self, Fault, Faulted, Recover};
use crate::backend::BackendError;
use crate::proto::TouchPolicy;

/// Why a card operation failed.
#[derive(Debug)]
pub(super) enum CardError {
    /// No card to talk to: none found, gone and not back after a reopen, or reset
    /// again after one.
    NoCard(BackendError),
    /// The card (or PC/SC) answered with this error.
    Card(yubikey::Error),
}

impl fmt::Display for CardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CardError::NoCard(e) => e.fmt(f),
            CardError::Card(e) => e.fmt(f),
        }
    }
}

/// The [`Fault`] of a `yubikey` error: the one place that says which PC/SC code
/// means what. Anything the card itself answered is final.
fn classify(e: &yubikey::Error) -> Fault {
    use pcsc::Error as P;
    let yubikey::Error::PcscError { inner } = e else {
        return Fault::Failed;
    };
    match inner {
        // Another program reset the card: it is there but forgot the verified PIN.
        Some(P::ResetCard) => Fault::Relogin,
        Some(
            P::RemovedCard
            | P::NoSmartcard
            | P::ReaderUnavailable
            | P::UnknownReader
            | P::NoService
            | P::ServiceStopped
            | P::UnpoweredCard
            | P::UnresponsiveCard
            | P::NoReadersAvailable
            | P::CommError,
        )
        | None => Fault::Gone,
        Some(_) => Fault::Failed,
    }
}

impl Recover for Lane {
    fn device(&self) -> &str {
        &self.settings.name
    }

    /// Drops the handle; the next attempt opens the card again.
    fn reconnect(&mut self) {
        self.card = None;
        self.policies.clear();
    }

    /// A fresh handle: the `yubikey` crate keeps the card's security state in it.
    fn relogin(&mut self) {
        self.reconnect();
    }

    /// Reads the slots' metadata again.
    fn refind(&mut self) {
        self.policies.clear();
    }
}

impl Lane {
    pub(super) fn name(&self) -> &str {
        &self.settings.name
    }

    pub(super) fn serial_text(&self) -> String {
        match (&self.card, self.settings.serial) {
            (Some(c), _) => c.serial().to_string(),
            (None, Some(s)) => s.to_string(),
            (None, None) => "?".into(),
        }
    }

    /// Opens the card if needed.
    pub(super) fn card(&mut self) -> Result<&mut YubiKey, BackendError> {
        if self.card.is_none() {
            let opened = match self.settings.serial {
                Some(s) => YubiKey::open_by_serial(Serial::from(s)),
                None => YubiKey::open(),
            };
            let which = self.settings.serial.map_or("a YubiKey".to_string(), |s| {
                format!("the YubiKey with serial {s}")
            });
            let card = opened.map_err(|e| {
                BackendError::absent(
                    &self.settings.name,
                    format!("{which} is not there ({e}); plug it in (pcscd must be running)"),
                )
            })?;
            info!(device = %self.settings.name, serial = %card.serial(), version = %card.version(), "YubiKey connected");
            self.card = Some(card);
            self.policies.clear();
        }
        // Just set when it was `None`.
        self.card
            .as_mut()
            .ok_or_else(|| BackendError::absent(&self.settings.name, "no YubiKey"))
    }

    /// Runs `op` on the card; the backend kit's [`fault::recover`] reopens a removed
    /// or reset card and tries once more.
    pub(super) fn with_card<T>(
        &mut self,
        mut op: impl FnMut(&mut YubiKey) -> Result<T, yubikey::Error>,
    ) -> Result<T, CardError> {
        let result = fault::recover(self, |lane| {
            let card = lane
                .card()
                .map_err(|e| Faulted::failed(CardError::NoCard(e)))?;
            op(card).map_err(|e| Faulted::new(classify(&e), CardError::Card(e)))
        });
        result.map_err(|f| match (f.fault, f.error) {
            (Fault::Gone, CardError::Card(e)) => CardError::NoCard(BackendError::absent(
                self.name(),
                format!("the YubiKey went away ({e}); plug it back in"),
            )),
            (Fault::Relogin, CardError::Card(e)) => CardError::NoCard(BackendError::failed(
                self.name(),
                format!("the YubiKey keeps resetting ({e})"),
            )),
            (_, error) => error,
        })
    }

    /// A card error as the backend's error, `doing` what.
    pub(super) fn fail(&self, f: CardError, doing: &str) -> BackendError {
        let name = self.name();
        match f {
            CardError::NoCard(e) => e,
            CardError::Card(yubikey::Error::WrongPin { tries }) => BackendError::pin_refused(
                name,
                format!("wrong PIN while {doing}; {tries} tries left"),
            ),
            CardError::Card(yubikey::Error::PinLocked) => BackendError::pin_locked(
                name,
                "the PIN is blocked; unblock it with the PUK (ykman piv access unblock-pin)",
            ),
            CardError::Card(e) => BackendError::failed(name, format!("{doing} failed: {e}")),
        }
    }

    /// What slot `slot` holds, from the card's metadata (cached until reconnect).
    pub(super) fn slot(&mut self, slot: u8) -> Result<Option<SlotInfo>, BackendError> {
        if let Some(info) = self.policies.get(&slot) {
            return Ok(Some(info.clone()));
        }
        let id = SlotId::try_from(slot).map_err(|_| {
            BackendError::failed(self.name(), format!("slot {slot:02x} is not a PIV slot"))
        })?;
        let meta = match self.with_card(|yk| piv::metadata(yk, id)) {
            Ok(m) => m,
            // No key in the slot: the card answers "not found".
            Err(CardError::Card(_)) => return Ok(None),
            Err(f) => return Err(self.fail(f, "reading slot metadata")),
        };
        let ManagementAlgorithmId::Asymmetric(alg) = meta.algorithm else {
            return Ok(None);
        };
        let (Some(alg), Some(public)) = (key_alg(alg), meta.public) else {
            return Ok(None);
        };
        let spki = public.to_der().map_err(|e| {
            BackendError::failed(
                &self.settings.name,
                format!("slot {slot:02x}: bad public key: {e}"),
            )
        })?;
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
            imported: meta.origin == Some(piv::Origin::Imported),
        };
        self.policies.insert(slot, info.clone());
        Ok(Some(info))
    }

    pub(super) fn slot_key(&mut self, label: &str) -> Result<(SlotId, SlotInfo), BackendError> {
        let id = slot_of(self.name(), label)?;
        let info = self.slot(u8::from(id))?.ok_or_else(|| {
            BackendError::no_such_key(
                self.name(),
                format!(
                    "slot {label} holds no key (`waxseal keys generate {}/{label} --alg p256` makes one)",
                    self.name()
                ),
            )
        })?;
        Ok((id, info))
    }

    /// Verifies the PIN from the device's source, once per PIN and never below the
    /// floor unless the user unlocked.
    pub(super) fn verify_pin(&mut self, doing: &str) -> Result<(), BackendError> {
        let name = self.name().to_string();
        let source = self.settings.pin.clone().ok_or_else(|| {
            BackendError::pin_required(&name, format!(
                "the PIN is needed for {doing} and the [[device]] entry has no `pin` (add pin = \"file:/path\" or \"env:VAR\")"
            ))
        })?;
        let pin = source
            .read()
            .map_err(|e| BackendError::pin_required(&name, e.to_string()))?;
        let offer = self.pins.offer(pin).map_err(|_| {
            BackendError::pin_refused(&name, format!("the PIN from {source} was refused by the YubiKey before; the agent does not try it again. Put the right PIN there and retry"))
        })?;
        let tries = self.pin_tries()?;
        if tries == 0 {
            return Err(BackendError::pin_locked(
                &name,
                "the PIN is blocked; unblock it with the PUK (ykman piv access unblock-pin)",
            ));
        }
        if tries < PIN_FLOOR && !self.unlocked {
            return Err(BackendError::pin_refused(&name, format!("only {tries} PIN try is left before the YubiKey blocks its PIN, so the agent does not try. Check the PIN in {source}, then run `waxseal unlock {name}`")));
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
            Err(CardError::Card(yubikey::Error::WrongPin { tries })) => {
                self.pins.refused(&offer);
                self.unlocked = false;
                warn!(device = %name, source = %source, tries, "YubiKey refused the PIN; it will not be retried");
                let next = if tries < PIN_FLOOR {
                    format!(" Below {PIN_FLOOR} tries the agent waits for `waxseal unlock {name}`.")
                } else {
                    String::new()
                };
                Err(BackendError::pin_refused(&name, format!("the YubiKey refused the PIN from {source}; {tries} tries left.{next} The agent will not retry it; fix the PIN source and try again")))
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
            Err(CardError::NoCard(e)) => return Err(e),
            Err(CardError::Card(_)) => {}
        }
        self.with_card(|yk| yk.get_pin_retries())
            .map_err(|f| self.fail(f, "reading the PIN retry counter"))
    }

    /// Authenticates with the management key.
    pub(super) fn authenticate(&mut self) -> Result<(), BackendError> {
        let name = self.name().to_string();
        let key = match &self.settings.mgm_key {
            Some(source) => {
                let text = source.read().map_err(|e| {
                    BackendError::pin_required(&name, format!("management key: {e}"))
                })?;
                let bytes =
                    Zeroizing::new(hex::decode(text.expose_secret().trim()).map_err(|_| {
                        BackendError::bad_request(
                            &name,
                            format!("the management key from {source} is not hex"),
                        )
                    })?);
                MgmKey::from_bytes(&*bytes).map_err(|e| {
                    BackendError::bad_request(
                        &name,
                        format!("the management key from {source} is not a 24-byte key: {e}"),
                    )
                })?
            }
            None => match self.with_card(MgmKey::get_protected) {
                Ok(k) => k,
                Err(CardError::NoCard(e)) => return Err(e),
                Err(CardError::Card(_)) => {
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
            Err(CardError::Card(yubikey::Error::AuthenticationError)) => {
                Err(BackendError::pin_refused(
                    &name,
                    "the YubiKey refused the management key; set mgm_key in the [[device]] entry",
                ))
            }
            Err(f) => Err(self.fail(f, "authenticating with the management key")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcsc(inner: Option<pcsc::Error>) -> yubikey::Error {
        yubikey::Error::PcscError { inner }
    }

    #[test]
    fn card_errors_sort_into_faults() {
        assert_eq!(classify(&pcsc(Some(pcsc::Error::RemovedCard))), Fault::Gone);
        assert_eq!(classify(&pcsc(Some(pcsc::Error::NoService))), Fault::Gone);
        assert_eq!(classify(&pcsc(None)), Fault::Gone);
        assert_eq!(
            classify(&pcsc(Some(pcsc::Error::ResetCard))),
            Fault::Relogin
        );
        assert_eq!(
            classify(&pcsc(Some(pcsc::Error::SharingViolation))),
            Fault::Failed
        );
        // What the card itself answered is final: a wrong PIN is never sent again here.
        assert_eq!(
            classify(&yubikey::Error::WrongPin { tries: 2 }),
            Fault::Failed
        );
        assert_eq!(
            classify(&yubikey::Error::AuthenticationError),
            Fault::Failed
        );
    }
}
