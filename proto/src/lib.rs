//! waxseal-proto: how programs talk to `waxseal-agent`, and nothing that talks to a
//! device.
//!
//! The wire protocol ([`proto`]: frames, requests, responses, error codes; pure, no IO),
//! frames over a Unix stream ([`wire`]), the blocking client ([`client`]), key names
//! ([`keyuri`]), in-toto statements and DSSE's PAE ([`intoto`]), the default paths
//! shared by the agent and its clients ([`paths`]), the config file's `[sigstore]`
//! table that the agent checks and the CLI reads ([`sigstore_defaults`]) and the audit
//! log's chain verifier ([`audit_chain`]). The CLI and the KMS plug-in link this crate
//! alone; it pulls in no async runtime and no PKCS#11, TPM or PC/SC crate
//! (`cargo tree -p waxseal-proto`). The agent re-exports these modules under the same
//! names. The protocol is documented in docs/protocol.md.
#![forbid(unsafe_code)]

pub mod audit_chain;
pub mod client;
pub mod intoto;
pub mod keyuri;
pub mod paths;
pub mod proto;
pub mod sigstore_defaults;
pub mod wire;
