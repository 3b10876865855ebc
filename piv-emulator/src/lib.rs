//! Emulated YubiKey 5 PIV card for tests.
//!
//! The card itself ([`card::Card`]) is a pure state machine: APDU bytes in, response
//! bytes out. [`vpcd`] connects it to pcscd's virtual reader driver, [`control`] lets
//! tests pull the card out and put it back, and [`harness`] starts a private pcscd
//! plus the emulator process for integration tests in this and other crates.
#![forbid(unsafe_code)]

pub mod apdu;
pub mod card;
pub mod control;
pub mod crypto;
pub mod harness;
pub mod tlv;
pub mod vpcd;
