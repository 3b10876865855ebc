//! waxseal-agent: keeps signing keys inside hardware and signs for local programs.
//!
//! Without the `daemon` feature this crate is the wire protocol ([`proto`]), the client
//! ([`client`]), key names ([`keyuri`]) and default paths ([`paths`]): what the CLI and the
//! KMS plug-in link. With it (and a backend feature) it is the agent itself: config,
//! device workers, key store, policy and the socket servers.
#![forbid(unsafe_code)]

pub mod audit_chain;
pub mod client;
pub mod keyuri;
pub mod paths;
pub mod proto;
pub mod wire;

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
pub mod worker;
#[cfg(feature = "daemon")]
pub mod x509;
