//! The library half of the `waxseal` package: what its two binaries share (`waxseal`
//! and `sigstore-kms-waxseal`): local signature checks, key formats, the CA profiles and
//! the `[sigstore]` defaults of the config file.

pub mod ca;
pub mod ca_template;
pub mod cbor;
pub mod defaults;
pub mod device_attest;
pub mod kms;
pub mod signing_config;
pub mod sigstore;
pub mod sshfmt;
pub mod tpmwrap;
pub mod transcript;
pub mod trustroot;
pub mod tsa;
pub mod verify;
pub mod verify_sigstore;
