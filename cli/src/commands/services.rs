//! The Sigstore services of `waxseal sign` and `waxseal attest`: one set of flags
//! ([`crate::ServiceArgs`]), one preparation that refuses what cannot work before
//! anything is signed, and one path from a signature to the bundle's
//! `verificationMaterial` (its RFC 3161 timestamps and transparency log entries), so the
//! two commands cannot drift apart (README, "Sigstore bundles and Rekor" and
//! "Attestations: `waxseal attest`").
//!
//! The services come from `--rekor-url` and `--tsa-url`, or are chosen from
//! `--signing-config` (`crate::signing_config`) at the time of signing. Each log's key
//! comes from `--rekor-public-key` or, by `baseUrl`, from `--trusted-root`, which also
//! names the TSAs a timestamp must come from. A timestamp is over the signature bytes
//! (its imprint is their SHA-256), for a message signature as for a DSSE envelope's.
//! A message signature is logged as `hashedrekord` (v0.0.1 in Rekor v1, v0.0.2 in Rekor
//! v2); a DSSE envelope as `dsse` v0.0.1 in Rekor v1 and as the `hashedrekord` v0.0.2 of
//! its PAE (the PAE's digest and the envelope's signature) in Rekor v2.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::json;
use waxseal_proto::intoto;
use waxseal_proto::proto::{HashAlg, KeyAlg};

use crate::defaults::ServiceFlags;
use crate::signing_config::{SigningConfig, TrustedRoot};
use crate::sigstore::{Envelope, Rekor, VerificationMaterial};
use crate::tsa::{TrustedTsa, Tsa};

/// What a signature is over, as the logs are told.
#[derive(Clone, Copy)]
pub enum Signed<'a> {
    /// A message signature over `digest`, a `hash` of the artifact.
    Message { hash: HashAlg, digest: &'a [u8] },
    /// The one signature of a DSSE envelope, over its PAE's `hash` (None: an Ed25519
    /// key, which signs the PAE itself).
    Dsse {
        envelope: &'a Envelope,
        hash: Option<HashAlg>,
    },
}

/// The logs and TSAs of one invocation, with what checks their answers.
pub struct Services {
    /// Log each signature in every one of these logs.
    rekor: Vec<Rekor>,
    /// Log in `rekor` through the v2 API.
    rekor_v2: bool,
    /// Timestamp each signature with every one of these TSAs.
    tsa: Vec<Tsa>,
    /// With `--trusted-root`: each timestamp must be signed by one of these.
    tsa_trust: Vec<TrustedTsa>,
    /// `--trusted-root`, to name in errors.
    trusted_root: Option<PathBuf>,
}

impl Services {
    /// Reads the signing config, the trusted root and the log key, and refuses a
    /// combination that cannot give a verifiable bundle (Rekor v2 without a TSA, a log
    /// without a key, a TSA the trusted root cannot check). Touches no network. With
    /// `quiet` false, says on stderr which services a signing config chose.
    pub fn prepare(args: &ServiceFlags, quiet: bool) -> Result<Services> {
        let chosen = Chosen::from_args(args, quiet)?;
        let trusted_root = match &args.trusted_root {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read the trusted root {}", path.display()))?;
                let root = TrustedRoot::parse(&bytes)
                    .map_err(|e| anyhow!("trusted root {}: {e}", path.display()))?;
                Some((path, root))
            }
            None => None,
        };
        let pem_key = match &args.rekor_public_key {
            Some(pem) if !chosen.rekor_urls.is_empty() => {
                let text = std::fs::read_to_string(pem).with_context(|| {
                    format!("cannot read the Rekor public key {}", pem.display())
                })?;
                Some(
                    crate::verify::spki_from_pem(&text)
                        .with_context(|| format!("{} is not a PEM public key", pem.display()))?,
                )
            }
            _ => None,
        };
        let mut rekor = Vec::new();
        for url in &chosen.rekor_urls {
            let key_der = match (&pem_key, &trusted_root) {
                (Some(key), _) => key.clone(),
                (None, Some((path, root))) => root
                    .log_key(url)
                    .ok_or_else(|| {
                        anyhow!(
                            "trusted root {}: tlogs names no log whose baseUrl is {url}",
                            path.display()
                        )
                    })?
                    .to_vec(),
                (None, None) => bail!("the Rekor log {url} needs --rekor-public-key or --trusted-root to check its answer"),
            };
            rekor.push(Rekor {
                url: url.clone(),
                key_der,
            });
        }
        let mut tsa_trust = Vec::new();
        if let (Some((path, root)), false) = (&trusted_root, chosen.tsa_urls.is_empty()) {
            if root.tsa_chains.is_empty() {
                bail!(
                    "trusted root {}: timestampAuthorities is empty, so no timestamp could be checked",
                    path.display()
                );
            }
            for (i, chain) in root.tsa_chains.iter().enumerate() {
                tsa_trust.push(TrustedTsa::from_der(chain).with_context(|| {
                    format!(
                        "trusted root {}: timestampAuthorities[{i}].certChain",
                        path.display()
                    )
                })?);
            }
        }
        let rekor_v2 = !rekor.is_empty() && chosen.rekor_version == 2;
        if rekor_v2 && chosen.tsa_urls.is_empty() {
            bail!("a Rekor v2 entry carries no signed time (no signed entry timestamp): add --tsa-url so the bundle gets an RFC 3161 timestamp");
        }
        let timeout = std::time::Duration::from_secs(args.tsa_timeout());
        let tsa = chosen
            .tsa_urls
            .iter()
            .map(|url| Tsa {
                url: url.clone(),
                timeout,
            })
            .collect();
        Ok(Services {
            rekor,
            rekor_v2,
            tsa,
            tsa_trust,
            trusted_root: args.trusted_root.clone(),
        })
    }

    /// How many logs each signature goes into.
    pub fn logs(&self) -> usize {
        self.rekor.len()
    }

    /// The services used, for `--json`: the logs' URLs and API version, the TSAs' URLs.
    pub fn describe(&self) -> serde_json::Value {
        json!({
            "rekor": self.rekor.iter().map(|r| r.url.as_str()).collect::<Vec<_>>(),
            "rekor_version": (!self.rekor.is_empty()).then_some(if self.rekor_v2 { 2 } else { 1 }),
            "tsa": self.tsa.iter().map(|t| t.url.as_str()).collect::<Vec<_>>(),
        })
    }

    /// Before anything is signed: refuses a key the chosen logs would refuse. Rekor v2
    /// takes no Ed25519 key and pairs each key with one hash (`key_details`); Rekor v1
    /// checks a DSSE envelope's signatures over SHA-256 of the PAE (or over the PAE,
    /// Ed25519), so a key that signs another hash of it (P-384) would be refused
    /// there. `hash` is what the key will sign with (None: Ed25519 over the PAE).
    pub fn check_key(
        &self,
        name: &str,
        alg: KeyAlg,
        spki: &[u8],
        hash: Option<HashAlg>,
        dsse: bool,
    ) -> Result<()> {
        if self.rekor.is_empty() {
            return Ok(());
        }
        if self.rekor_v2 {
            if alg == KeyAlg::Ed25519 {
                bail!("{name} is an Ed25519 key: Rekor v2 does not accept pure Ed25519 signatures (use an ECDSA or RSA key, or --rekor-version 1)");
            }
            let hash = hash.unwrap_or(alg.default_hash());
            crate::sigstore::key_details(spki, hash)
                .with_context(|| format!("{name} cannot be logged in Rekor v2"))?;
        } else if dsse {
            if let Some(hash) = hash.filter(|h| *h != HashAlg::Sha256) {
                bail!("{name} signs the {hash} of a DSSE envelope's PAE, and Rekor v1 checks a dsse entry's signature over its sha256: use a P-256 or RSA key, or --rekor-version 2");
            }
        }
        Ok(())
    }

    /// Timestamps `signature` with every TSA and logs it in every log, each answer
    /// checked, into `vm`. Returns the first log's index and integrated time. Any
    /// failure names the service; the caller then writes no bundle.
    pub fn attach(
        &self,
        vm: &mut VerificationMaterial,
        signed: Signed<'_>,
        signature: &[u8],
        spki: &[u8],
    ) -> Result<Option<(i64, i64)>> {
        let mut stamps = Vec::new();
        for tsa in &self.tsa {
            let stamp = tsa.timestamp(signature).context("no bundle was written")?;
            if let Some(root) = &self.trusted_root {
                if !self
                    .tsa_trust
                    .iter()
                    .any(|t| t.check(&stamp.response, signature).is_ok())
                {
                    bail!(
                        "TSA at {}: its certificate is not one of the timestampAuthorities of the trusted root {}, nor issued by one; no bundle was written",
                        tsa.url,
                        root.display()
                    );
                }
            }
            stamps.push(json!({ "signedTimestamp": B64.encode(&stamp.response) }));
        }
        if !stamps.is_empty() {
            vm.timestamp_verification_data = Some(json!({ "rfc3161Timestamps": stamps }));
        }
        let mut logged = None;
        for rekor in &self.rekor {
            let entry = match (signed, self.rekor_v2) {
                (Signed::Message { hash, digest }, false) => {
                    rekor.upload(hash, digest, signature, spki)
                }
                (Signed::Message { hash, digest }, true) => {
                    rekor.upload_v2(hash, digest, signature, spki)
                }
                (Signed::Dsse { envelope, .. }, false) => rekor.upload_dsse(envelope, spki),
                (Signed::Dsse { envelope, hash }, true) => {
                    // `check_key` refused Ed25519 (no hash) for Rekor v2.
                    let hash = hash.ok_or_else(|| {
                        anyhow!("Rekor v2 does not accept pure Ed25519 signatures")
                    })?;
                    let pae = intoto::pae(&envelope.payload_type, &envelope.payload.0);
                    let digest = crate::verify::hash_bytes(hash, &pae);
                    rekor.upload_v2(hash, &digest, signature, spki)
                }
            }
            .context("no bundle was written")?;
            logged.get_or_insert((entry.log_index.0, entry.integrated_time.0));
            vm.tlog_entries.push(entry);
        }
        Ok(logged)
    }
}

/// The service URLs of one invocation: from `--rekor-url` and `--tsa-url`, or chosen
/// from `--signing-config` now.
struct Chosen {
    rekor_urls: Vec<String>,
    /// The Rekor API of every log in `rekor_urls`.
    rekor_version: u8,
    tsa_urls: Vec<String>,
}

impl Chosen {
    fn from_args(args: &ServiceFlags, quiet: bool) -> Result<Chosen> {
        let Some(path) = &args.signing_config else {
            return Ok(Chosen {
                rekor_urls: args.rekor_url.iter().cloned().collect(),
                rekor_version: args.rekor_version(),
                tsa_urls: args.tsa_url.iter().cloned().collect(),
            });
        };
        let name = path.display();
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the signing config {name}"))?;
        let chosen = SigningConfig::parse(&bytes)
            .and_then(|c| c.choose(time::OffsetDateTime::now_utc()))
            .map_err(|e| anyhow!("signing config {name}: {e}"))?;
        let rekor_urls: Vec<String> = chosen.rekor.iter().map(|s| s.url.clone()).collect();
        // `choose` takes the logs of one API version only.
        let rekor_version = match chosen.rekor.first().map(|s| s.major_api_version) {
            Some(2) => 2,
            _ => 1,
        };
        let tsa_urls: Vec<String> = chosen.tsa.iter().map(|s| s.url.clone()).collect();
        if !rekor_urls.is_empty() && args.rekor_public_key.is_none() && args.trusted_root.is_none()
        {
            bail!(
                "signing config {name} chooses the Rekor log {}: add --rekor-public-key (the log's PEM key) or --trusted-root so its answer can be checked",
                rekor_urls.join(", ")
            );
        }
        if rekor_version == 2 && tsa_urls.is_empty() {
            bail!(
                "signing config {name} chooses the Rekor v2 log {}, whose entries carry no signed time, and tsaUrls lists no TSA: add one, so the bundle gets an RFC 3161 timestamp",
                rekor_urls.join(", ")
            );
        }
        if !quiet {
            let rekor = match rekor_urls.as_slice() {
                [] => "no Rekor log".to_string(),
                urls => format!("Rekor v{rekor_version} {}", urls.join(", ")),
            };
            let tsa = match tsa_urls.as_slice() {
                [] => "no TSA".to_string(),
                urls => format!("TSA {}", urls.join(", ")),
            };
            eprintln!("signing config {name}: {rekor}; {tsa}");
        }
        Ok(Chosen {
            rekor_urls,
            rekor_version,
            tsa_urls,
        })
    }
}
