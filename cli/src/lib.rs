//! The library half of the `waxseal` package: what its two binaries share (`waxseal`
//! and `sigstore-kms-waxseal`): local signature checks, key formats and the CA profiles.

pub mod ca;
pub mod kms;
pub mod signing_config;
pub mod sigstore;
pub mod sshfmt;
pub mod tpmwrap;
pub mod tsa;
pub mod verify;
