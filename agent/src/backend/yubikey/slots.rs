//! PIV slots and what they hold: labels, algorithms, policies, certificate objects.

use yubikey::piv::{AlgorithmId, SlotId};

use crate::backend::BackendError;
use crate::proto::{KeyAlg, PinPolicy, TouchPolicy};

/// The slots that can hold signing keys.
pub(super) const SLOTS: [u8; 24] = [
    0x9a, 0x9c, 0x9d, 0x9e, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d,
    0x8e, 0x8f, 0x90, 0x91, 0x92, 0x93, 0x94, 0x95,
];

/// The slot of a label such as `9c`.
pub(super) fn slot_of(device: &str, label: &str) -> Result<SlotId, BackendError> {
    let bad = || {
        BackendError::no_such_key(device, format!(
            "there is no slot `{label}`: YubiKey keys are named by PIV slot, 9a 9c 9d 9e or 82…95 (e.g. {device}/9c)"
        ))
    };
    let n = u8::from_str_radix(label, 16).map_err(|_| bad())?;
    if label.len() != 2 || !SLOTS.contains(&n) {
        return Err(bad());
    }
    SlotId::try_from(n).map_err(|_| bad())
}

pub(super) fn label_of(slot: u8) -> String {
    format!("{slot:02x}")
}

pub(super) fn key_alg(alg: AlgorithmId) -> Option<KeyAlg> {
    match alg {
        AlgorithmId::EccP256 => Some(KeyAlg::P256),
        AlgorithmId::EccP384 => Some(KeyAlg::P384),
        AlgorithmId::Rsa2048 => Some(KeyAlg::Rsa(2048)),
        AlgorithmId::Rsa1024 => Some(KeyAlg::Rsa(1024)),
    }
}

pub(super) fn piv_alg(alg: KeyAlg) -> Option<AlgorithmId> {
    match alg {
        KeyAlg::P256 => Some(AlgorithmId::EccP256),
        KeyAlg::P384 => Some(AlgorithmId::EccP384),
        KeyAlg::Rsa(2048) => Some(AlgorithmId::Rsa2048),
        _ => None,
    }
}

/// The effective PIN policy: YubiKeys default to `always` in 9c, `never` in 9e, and
/// `once` elsewhere.
pub(super) fn pin_policy(slot: u8, p: yubikey::PinPolicy) -> PinPolicy {
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

pub(super) fn touch_policy(t: yubikey::TouchPolicy) -> TouchPolicy {
    match t {
        yubikey::TouchPolicy::Always => TouchPolicy::Always,
        yubikey::TouchPolicy::Cached => TouchPolicy::Cached,
        yubikey::TouchPolicy::Never | yubikey::TouchPolicy::Default => TouchPolicy::Never,
    }
}

/// The certificate inside a PIV certificate object (`70 cert 71 info FE lrc`).
pub(super) fn cert_of_object(object: &[u8]) -> Option<&[u8]> {
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
    use crate::backend::Code;

    #[test]
    fn slots_by_label() {
        assert!(slot_of("yk", "9c").is_ok());
        assert!(slot_of("yk", "82").is_ok());
        assert!(slot_of("yk", "95").is_ok());
        for bad in ["f9", "9b", "96", "9C0", "c", "zz", ""] {
            assert!(
                matches!(
                    slot_of("yk", bad),
                    Err(BackendError {
                        code: Code::NoSuchKey,
                        ..
                    })
                ),
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
