//! The PIN gate every backend uses (the backend kit, docs/architecture.md): a PIN a
//! device refused is never sent to it again.
//!
//! A wrong PIN costs a try on every device (a YubiKey blocks after 3, a token locks, a
//! TPM counts toward its dictionary-attack lockout), so the agent remembers the PIN a
//! device refused and refuses to send that PIN again until the source gives another.
//! What is remembered is the fingerprint of the PIN that was *sent*, taken before it was
//! sent ([`PinOffer`]): reading the source again after a refusal could remember a PIN
//! that was changed in between and never tried.

use std::fmt;

use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::pin::fingerprint;

/// Remembers the PIN a device refused last.
#[derive(Debug, Default)]
pub struct PinGate {
    refused: Option<Zeroizing<[u8; 32]>>,
}

/// A PIN cleared to be sent to the device: not the one it refused last. Keeps the
/// fingerprint the gate remembers if the device refuses it.
pub struct PinOffer {
    pin: SecretString,
    print: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for PinOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinOffer(<redacted>)")
    }
}

/// The PIN is the one the device refused last: it is not sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyRefused;

impl PinGate {
    /// Clears `pin` to be sent, unless the device refused it last.
    pub fn offer(&self, pin: SecretString) -> Result<PinOffer, AlreadyRefused> {
        let print = fingerprint(&pin);
        if self.refused.as_ref().is_some_and(|r| **r == *print) {
            return Err(AlreadyRefused);
        }
        Ok(PinOffer { pin, print })
    }

    /// The device accepted a PIN: nothing is refused any more.
    pub fn accepted(&mut self) {
        self.refused = None;
    }

    /// The device refused `offer`: that PIN is not sent again.
    pub fn refused(&mut self, offer: &PinOffer) {
        self.refused = Some(offer.print.clone());
    }

    /// Forgets the refusal (the user asked to try again: `waxseal unlock DEVICE`).
    pub fn forget(&mut self) {
        self.refused = None;
    }
}

impl PinOffer {
    /// The PIN, to send.
    pub fn secret(&self) -> &SecretString {
        &self.pin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(s: &str) -> SecretString {
        SecretString::from(s)
    }

    #[test]
    fn the_refused_pin_is_the_one_sent_and_only_it_is_held_back() {
        let mut gate = PinGate::default();
        let sent = gate.offer(pin("1111")).unwrap();
        // The source changes after the PIN was read and sent; the device refuses it.
        gate.refused(&sent);
        assert_eq!(gate.offer(pin("1111")).unwrap_err(), AlreadyRefused);
        assert!(gate.offer(pin("2222")).is_ok(), "a new PIN is tried");
        gate.accepted();
        assert!(gate.offer(pin("1111")).is_ok());
        gate.refused(&gate.offer(pin("3333")).unwrap());
        gate.forget();
        assert!(gate.offer(pin("3333")).is_ok());
        assert_eq!(
            format!("{:?}", gate.offer(pin("3333")).unwrap()),
            "PinOffer(<redacted>)"
        );
    }
}
