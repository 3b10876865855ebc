//! waxseal-agent: keeps signing keys inside hardware and signs for local programs.
//!
//! The protocol, its client, key names and default paths live in `waxseal-proto` (what
//! the CLI and the KMS plug-in link) and are re-exported here under the same names.
//! With the `daemon` feature (and a backend feature) this crate is the agent itself:
//! config, device lanes, key store, policy, the audit log and the socket servers.
#![forbid(unsafe_code)]

pub use waxseal_proto::{
    audit_chain, client, intoto, keyuri, paths, proto, sigstore_defaults, wire,
};

#[cfg(feature = "daemon")]
pub mod approvals;
#[cfg(feature = "daemon")]
pub mod audit;
#[cfg(feature = "daemon")]
pub mod backend;
#[cfg(feature = "daemon")]
pub mod config;
#[cfg(feature = "daemon")]
pub mod confirm;
#[cfg(feature = "daemon")]
pub mod fsguard;
#[cfg(feature = "daemon")]
pub mod keystore;
#[cfg(feature = "daemon")]
pub mod pin;
#[cfg(feature = "daemon")]
pub mod policy;
#[cfg(feature = "daemon")]
pub mod rates;
#[cfg(feature = "daemon")]
pub mod server;
#[cfg(feature = "daemon")]
pub mod sshsig;
#[cfg(feature = "daemon")]
pub mod worker;
#[cfg(feature = "daemon")]
pub mod x509;
