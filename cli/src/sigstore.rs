//! Sigstore bundles (v0.3 over a public key: message signatures, and DSSE envelopes of
//! in-toto statements) and the Rekor v1 log.
//!
//! The bundle types are serde structs that follow the protobuf JSON mapping of
//! `dev.sigstore.bundle.v1.Bundle` (sigstore/protobuf-specs): camelCase names, `int64`
//! as strings (numbers accepted when reading), `bytes` as standard base64. We write
//! them ourselves rather than use the `sigstore-protobuf-specs` crate, which brings
//! prost and a tree of generated types for the four messages we need.
//!
//! Rekor: `hashedrekord` v0.0.1 entries (message signatures) and `dsse` v0.0.1 entries
//! (DSSE envelopes) are uploaded with `POST /api/v1/log/entries`. Before an entry goes
//! into a bundle the answer is checked: the canonicalized body holds our digest (for
//! dsse: the payload's SHA-256 and the SHA-256 of the envelope sent), signature and key;
//! the log ID is the log key's; the signed entry timestamp (SET) verifies against the
//! log key; the inclusion proof leads to its root hash and the checkpoint over that root
//! is signed by the log key. Rekor v2 takes `hashedrekord` v0.0.2 (for a DSSE envelope:
//! the PAE's digest and the envelope's signature) with `POST /api/v2/log/entries`.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use waxseal_proto::intoto::{self, Statement};
use waxseal_proto::proto::HashAlg;

use crate::verify::{hash_file, AnyPublicKey};
use crate::verify_sigstore::{named_bail, Named};

/// The media type of the bundles we write.
pub const MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// Media types we read.
pub const MEDIA_TYPES_READ: [&str; 4] = [
    MEDIA_TYPE,
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
];

/// `bytes` in protobuf JSON: standard base64 (URL-safe accepted when reading).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct B64Bytes(pub Vec<u8>);

impl Serialize for B64Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        B64.decode(s.trim())
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s.trim()))
            .map(B64Bytes)
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

/// `int64` in protobuf JSON: written as a string, read from a string or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Int64(pub i64);

impl Serialize for Int64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Int64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => s.parse().map(Int64).map_err(serde::de::Error::custom),
            Value::Number(n) => n
                .as_i64()
                .map(Int64)
                .ok_or_else(|| serde::de::Error::custom("not an int64")),
            other => Err(serde::de::Error::custom(format!(
                "expected an int64, found {other}"
            ))),
        }
    }
}

/// `dev.sigstore.bundle.v1.Bundle`, for message signatures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    /// [`MEDIA_TYPE`].
    pub media_type: String,
    /// Key hint and log entries.
    pub verification_material: VerificationMaterial,
    /// The signature over the artifact's digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_signature: Option<MessageSignature>,
    /// A DSSE envelope (bundles of attestations, `waxseal attest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsse_envelope: Option<Envelope>,
}

/// `io.intoto.Envelope`: a DSSE envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The signed payload (an in-toto statement).
    pub payload: B64Bytes,
    /// Its type, `application/vnd.in-toto+json` for statements.
    pub payload_type: String,
    /// Signatures over the PAE of type and payload.
    #[serde(default)]
    pub signatures: Vec<EnvelopeSignature>,
}

/// `io.intoto.Signature`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// The signature (DER for ECDSA).
    pub sig: B64Bytes,
    /// Which key; waxseal leaves it empty, the bundle's key hint names the key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keyid: String,
}

/// `VerificationMaterial`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationMaterial {
    /// The key, by hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKeyIdentifier>,
    /// A certificate (keyless bundles): read, and refused by our verifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Value>,
    /// A certificate chain (v0.1/v0.2 keyless bundles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_certificate_chain: Option<Value>,
    /// Transparency log entries.
    #[serde(default)]
    pub tlog_entries: Vec<TlogEntry>,
    /// RFC 3161 timestamps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_verification_data: Option<Value>,
}

/// `PublicKeyIdentifier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyIdentifier {
    /// base64 of SHA-256 of the DER SubjectPublicKeyInfo, as cosign writes it.
    pub hint: String,
}

/// `MessageSignature`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSignature {
    /// The artifact's digest.
    pub message_digest: HashOutput,
    /// The signature (DER for ECDSA).
    pub signature: B64Bytes,
}

/// `HashOutput`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HashOutput {
    /// `SHA2_256`, `SHA2_384`, `SHA2_512`.
    pub algorithm: String,
    /// The digest.
    pub digest: B64Bytes,
}

/// `TransparencyLogEntry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlogEntry {
    /// Index in the log.
    #[serde(default)]
    pub log_index: Int64,
    /// SHA-256 of the log's public key.
    pub log_id: LogId,
    /// `hashedrekord` / `0.0.1`.
    pub kind_version: KindVersion,
    /// Seconds since the epoch, as the log recorded it (0 in Rekor v2, which gives
    /// no time: protobuf JSON may leave it out).
    #[serde(default)]
    pub integrated_time: Int64,
    /// The signed entry timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusion_promise: Option<InclusionPromise>,
    /// Proof that the entry is in the log's Merkle tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusion_proof: Option<InclusionProof>,
    /// The entry as the log stored it.
    pub canonicalized_body: B64Bytes,
}

/// `LogId`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogId {
    /// The key ID.
    pub key_id: B64Bytes,
}

/// `KindVersion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindVersion {
    /// Entry kind.
    pub kind: String,
    /// Its version.
    pub version: String,
}

/// `InclusionPromise`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InclusionPromise {
    /// The SET.
    pub signed_entry_timestamp: B64Bytes,
}

/// `InclusionProof`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InclusionProof {
    /// Index of the entry in the tree the proof is for.
    #[serde(default)]
    pub log_index: Int64,
    /// Root hash of that tree.
    pub root_hash: B64Bytes,
    /// Size of that tree.
    pub tree_size: Int64,
    /// Sibling hashes, leaf to root.
    #[serde(default)]
    pub hashes: Vec<B64Bytes>,
    /// The signed checkpoint (a signed note) over the root.
    pub checkpoint: Checkpoint,
}

/// `Checkpoint`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The signed note's text.
    pub envelope: String,
}

/// The Sigstore name of a hash.
pub fn hash_name(hash: HashAlg) -> &'static str {
    match hash {
        HashAlg::Sha256 => "SHA2_256",
        HashAlg::Sha384 => "SHA2_384",
        HashAlg::Sha512 => "SHA2_512",
    }
}

pub(crate) fn hash_of_name(name: &str) -> Result<HashAlg> {
    match name {
        "SHA2_256" => Ok(HashAlg::Sha256),
        "SHA2_384" => Ok(HashAlg::Sha384),
        "SHA2_512" => Ok(HashAlg::Sha512),
        other => bail!(
            "messageDigest.algorithm `{other}` is not supported (SHA2_256, SHA2_384, SHA2_512)"
        ),
    }
}

/// The key hint cosign writes: base64 of SHA-256 of the DER SubjectPublicKeyInfo.
pub fn key_hint(spki: &[u8]) -> String {
    B64.encode(Sha256::digest(spki))
}

/// PEM SubjectPublicKeyInfo.
pub fn spki_pem(spki: &[u8]) -> String {
    let b64 = B64.encode(spki);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

impl Bundle {
    /// A key-only bundle of a message signature.
    pub fn new(spki: &[u8], hash: HashAlg, digest: &[u8], signature: &[u8]) -> Bundle {
        Bundle {
            media_type: MEDIA_TYPE.to_string(),
            verification_material: VerificationMaterial {
                public_key: Some(PublicKeyIdentifier {
                    hint: key_hint(spki),
                }),
                certificate: None,
                x509_certificate_chain: None,
                tlog_entries: Vec::new(),
                timestamp_verification_data: None,
            },
            message_signature: Some(MessageSignature {
                message_digest: HashOutput {
                    algorithm: hash_name(hash).to_string(),
                    digest: B64Bytes(digest.to_vec()),
                },
                signature: B64Bytes(signature.to_vec()),
            }),
            dsse_envelope: None,
        }
    }

    /// A key-only bundle of a DSSE envelope: an in-toto `statement` and the signature
    /// over its PAE.
    pub fn new_dsse(spki: &[u8], statement: &[u8], signature: &[u8]) -> Bundle {
        Bundle {
            media_type: MEDIA_TYPE.to_string(),
            verification_material: VerificationMaterial {
                public_key: Some(PublicKeyIdentifier {
                    hint: key_hint(spki),
                }),
                certificate: None,
                x509_certificate_chain: None,
                tlog_entries: Vec::new(),
                timestamp_verification_data: None,
            },
            message_signature: None,
            dsse_envelope: Some(Envelope {
                payload: B64Bytes(statement.to_vec()),
                payload_type: intoto::PAYLOAD_TYPE.to_string(),
                signatures: vec![EnvelopeSignature {
                    sig: B64Bytes(signature.to_vec()),
                    keyid: String::new(),
                }],
            }),
        }
    }

    /// Writes the bundle to `path` atomically: a temporary file beside it, renamed.
    /// Nothing is left behind on failure.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.with_context(|| format!("cannot write the bundle {}", path.display()))
    }

    /// Reads a bundle file.
    pub fn read(path: &Path) -> Result<Bundle> {
        let text = read_bounded(path, MAX_BUNDLE_BYTES)
            .with_context(|| format!("cannot read the bundle {}", path.display()))?;
        Bundle::from_slice(&text).with_context(|| format!("the bundle {}", path.display()))
    }

    /// Reads a bundle from its JSON bytes: what [`Bundle::read`] does once the file is
    /// read, so the CLI and the fuzz targets parse one way.
    pub fn from_slice(text: &[u8]) -> Result<Bundle> {
        let bundle: Bundle = serde_json::from_slice(text).context("not a Sigstore bundle")?;
        if !MEDIA_TYPES_READ.contains(&bundle.media_type.as_str()) {
            bail!(
                "mediaType `{}` is not a bundle version this verifier reads (v0.1–v0.3)",
                bundle.media_type
            );
        }
        Ok(bundle)
    }
}

/// The largest bundle file read (a statement is at most 512 KiB; certificates, entries
/// and timestamps add little).
pub const MAX_BUNDLE_BYTES: u64 = 16 << 20;

/// Reads a file of at most `max` bytes; a longer one is refused, not read.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        bail!("{} is longer than {max} bytes", path.display());
    }
    Ok(buf)
}

// --- Rekor ---------------------------------------------------------------------------

/// The `hashedrekord` v0.0.1 entry Rekor is asked to log.
pub fn hashedrekord(hash: HashAlg, digest: &[u8], signature: &[u8], spki: &[u8]) -> Value {
    json!({
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": { "hash": { "algorithm": hash.as_str(), "value": hex::encode(digest) } },
            "signature": {
                "content": B64.encode(signature),
                "publicKey": { "content": B64.encode(spki_pem(spki)) }
            }
        }
    })
}

/// Rekor's answer for one entry (`LogEntryAnon`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RekorEntry {
    body: String,
    integrated_time: i64,
    #[serde(rename = "logID")]
    log_id: String,
    log_index: i64,
    verification: Option<RekorVerification>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RekorVerification {
    signed_entry_timestamp: Option<String>,
    inclusion_proof: Option<RekorProof>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RekorProof {
    checkpoint: String,
    #[serde(default)]
    hashes: Vec<String>,
    log_index: i64,
    root_hash: String,
    tree_size: i64,
}

/// A Rekor log: where it is and the key its answers must be signed with.
#[derive(Debug, Clone)]
pub struct Rekor {
    /// Base URL, e.g. `https://rekor.sigstore.dev`.
    pub url: String,
    /// The log's public key (SPKI DER).
    pub key_der: Vec<u8>,
}

/// The `dsse` v0.0.1 entry Rekor v1 is asked to log: the envelope as JSON text and the
/// key that verifies its signature (PEM, base64), as `proposedContent`. Also returns
/// that text, whose SHA-256 the log records as `envelopeHash`.
pub fn dsse_proposed(envelope: &Envelope, spki: &[u8]) -> Result<(Value, String)> {
    let text = serde_json::to_string(envelope)?;
    let request = json!({
        "apiVersion": "0.0.1",
        "kind": "dsse",
        "spec": {
            "proposedContent": {
                "envelope": text,
                "verifiers": [B64.encode(spki_pem(spki))]
            }
        }
    });
    Ok((request, text))
}

impl Rekor {
    /// Uploads a `hashedrekord` entry and returns it as a checked bundle entry.
    pub fn upload(
        &self,
        hash: HashAlg,
        digest: &[u8],
        signature: &[u8],
        spki: &[u8],
    ) -> Result<TlogEntry> {
        let request = hashedrekord(hash, digest, signature, spki);
        let (url, uuid, tlog) = self.post_v1(&request)?;
        self.check_entry(&tlog, hash, digest, signature, spki)
            .with_context(|| format!("Rekor at {url}: entry {uuid} does not check out"))?;
        Ok(tlog)
    }

    /// Uploads a DSSE envelope as a `dsse` v0.0.1 entry and returns it as a checked
    /// bundle entry. Beyond what a verifier can check later ([`Rekor::check_dsse_entry`]),
    /// the logged `envelopeHash` must be SHA-256 of the envelope text sent.
    pub fn upload_dsse(&self, envelope: &Envelope, spki: &[u8]) -> Result<TlogEntry> {
        let (request, text) = dsse_proposed(envelope, spki)?;
        let (url, uuid, tlog) = self.post_v1(&request)?;
        let checked = self.check_dsse_entry(&tlog, envelope, spki).and_then(|()| {
            let body: Value = serde_json::from_slice(&tlog.canonicalized_body.0)?;
            let hash = &body["spec"]["envelopeHash"];
            if hash["algorithm"] != "sha256"
                || hash["value"].as_str() != Some(&hex::encode(Sha256::digest(text.as_bytes())))
            {
                bail!("the logged envelopeHash is not SHA-256 of the envelope sent");
            }
            Ok(())
        });
        checked.with_context(|| format!("Rekor at {url}: entry {uuid} does not check out"))?;
        Ok(tlog)
    }

    /// POSTs a proposed entry to `/api/v1/log/entries`: the URL, the entry's UUID and
    /// the entry, not yet checked.
    fn post_v1(&self, request: &Value) -> Result<(String, String, TlogEntry)> {
        let url = format!("{}/api/v1/log/entries", self.url.trim_end_matches('/'));
        let text = post_json(&url, request, Duration::from_secs(30), "Rekor")?;
        let answer: serde_json::Map<String, Value> = serde_json::from_str(&text)
            .with_context(|| format!("Rekor at {url}: the answer is not a JSON object"))?;
        let (uuid, entry) = answer
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("Rekor at {url}: the answer holds no entry"))?;
        let entry: RekorEntry = serde_json::from_value(entry)
            .with_context(|| format!("Rekor at {url}: entry {uuid} is not a log entry"))?;
        let tlog = to_tlog_entry(entry).with_context(|| format!("Rekor at {url}: entry {uuid}"))?;
        Ok((url, uuid.chars().take(128).collect(), tlog))
    }

    /// Checks a `dsse` v0.0.1 entry of a bundle (what Rekor v1 stores for a DSSE
    /// envelope: the payload's SHA-256, the envelope's, and each signature with the key
    /// that verifies it) against this log and the bundle's envelope: the payload hash
    /// is the envelope's, the one logged signature is its signature and the logged key
    /// the signing key; then the log's signature, as for hashedrekord. `envelopeHash`
    /// is not compared: it is the hash of the JSON text that was sent, which a bundle
    /// does not keep.
    pub fn check_dsse_entry(
        &self,
        entry: &TlogEntry,
        envelope: &Envelope,
        spki: &[u8],
    ) -> Result<()> {
        self.check_dsse_entry_opts(entry, envelope, spki, true, true)
    }

    /// [`Rekor::check_dsse_entry`], with what [`Rekor::check_logged_v1_opts`] requires.
    pub fn check_dsse_entry_opts(
        &self,
        entry: &TlogEntry,
        envelope: &Envelope,
        spki: &[u8],
        need_set: bool,
        need_proof: bool,
    ) -> Result<()> {
        if entry.kind_version.kind != "dsse" || entry.kind_version.version != "0.0.1" {
            bail!(
                "the entry is {} {}, not dsse 0.0.1",
                entry.kind_version.kind,
                entry.kind_version.version
            );
        }
        let body: Value = serde_json::from_slice(&entry.canonicalized_body.0)
            .context("canonicalizedBody is not JSON")?;
        if body["kind"] != "dsse" || body["apiVersion"] != "0.0.1" {
            bail!("the logged body is not a dsse 0.0.1 entry");
        }
        let spec = &body["spec"];
        let payload_hash = hex::encode(Sha256::digest(&envelope.payload.0));
        if spec["payloadHash"]["algorithm"] != "sha256"
            || spec["payloadHash"]["value"].as_str() != Some(payload_hash.as_str())
        {
            bail!("the logged payloadHash is not SHA-256 of the envelope's payload");
        }
        let [signature] = envelope.signatures.as_slice() else {
            bail!(
                "the envelope holds {} signatures, not one",
                envelope.signatures.len()
            );
        };
        let logged = match spec["signatures"].as_array().map(Vec::as_slice) {
            Some([one]) => one,
            _ => bail!("the entry does not log exactly one signature"),
        };
        let logged_sig = logged["signature"]
            .as_str()
            .and_then(|s| B64.decode(s).ok());
        if logged_sig.as_deref() != Some(signature.sig.0.as_slice()) {
            bail!("the logged signature is not the envelope's");
        }
        let logged_key = logged["verifier"]
            .as_str()
            .and_then(|k| B64.decode(k).ok())
            .and_then(|pem| logged_pem_key(&pem));
        if logged_key.as_deref() != Some(spki) {
            bail!("the logged public key is not the signing key");
        }
        self.check_logged_v1_opts(entry, need_set, need_proof)
    }

    /// Checks a bundle's log entry against this log's key and the signature it is for.
    pub fn check_entry(
        &self,
        entry: &TlogEntry,
        hash: HashAlg,
        digest: &[u8],
        signature: &[u8],
        spki: &[u8],
    ) -> Result<()> {
        self.check_entry_opts(entry, hash, digest, signature, spki, true, true)
    }

    /// [`Rekor::check_entry`], with what [`Rekor::check_logged_v1_opts`] requires.
    #[allow(clippy::too_many_arguments)]
    pub fn check_entry_opts(
        &self,
        entry: &TlogEntry,
        hash: HashAlg,
        digest: &[u8],
        signature: &[u8],
        spki: &[u8],
        need_set: bool,
        need_proof: bool,
    ) -> Result<()> {
        if entry.kind_version.version == "0.0.2" {
            return self.check_entry_v2(entry, digest, signature, spki);
        }
        // 1. The entry is ours.
        if entry.kind_version.kind != "hashedrekord" {
            bail!(
                "the entry is of kind `{}`, not hashedrekord",
                entry.kind_version.kind
            );
        }
        let body: Value = serde_json::from_slice(&entry.canonicalized_body.0)
            .context("canonicalizedBody is not JSON")?;
        let spec = &body["spec"];
        let logged_digest = spec["data"]["hash"]["value"].as_str().unwrap_or_default();
        if logged_digest != hex::encode(digest) {
            bail!("the logged digest {logged_digest} is not the artifact's");
        }
        if spec["data"]["hash"]["algorithm"].as_str() != Some(hash.as_str()) {
            bail!("the logged hash algorithm is not {hash}");
        }
        let logged_sig = spec["signature"]["content"].as_str().unwrap_or_default();
        if B64.decode(logged_sig).ok().as_deref() != Some(signature) {
            bail!("the logged signature is not the bundle's");
        }
        let logged_key = spec["signature"]["publicKey"]["content"]
            .as_str()
            .and_then(|k| B64.decode(k).ok())
            .and_then(|pem| logged_pem_key(&pem));
        if logged_key.as_deref() != Some(spki) {
            bail!("the logged public key is not the signing key");
        }
        self.check_logged_v1_opts(entry, need_set, need_proof)
    }

    /// What every Rekor v1 entry must pass, whatever its kind: its log ID is this log
    /// key's, its signed entry timestamp verifies with the key, and its inclusion proof
    /// leads to the root of a checkpoint the key signed. Either may be missing when
    /// not needed (v0.1 bundles: a signed entry timestamp alone; v0.2 and later: an
    /// inclusion proof alone, and then the entry gives no time); one that is there is
    /// checked, and an entry with neither is refused. Each failure is a
    /// [`Named`] check: `tlog log id`, `tlog signed entry timestamp`, `tlog inclusion
    /// proof`, `tlog checkpoint`.
    pub fn check_logged_v1_opts(
        &self,
        entry: &TlogEntry,
        need_set: bool,
        need_proof: bool,
    ) -> Result<()> {
        let log_key = AnyPublicKey::from_spki(&self.key_der).context("the Rekor public key")?;
        // 2. The log is the one we trust.
        let log_id = Sha256::digest(&self.key_der);
        if entry.log_id.key_id.0 != log_id[..] {
            named_bail!(
                "tlog log id",
                "logId {} is not the log key's ({})",
                hex::encode(&entry.log_id.key_id.0),
                hex::encode(log_id)
            );
        }
        if entry.inclusion_promise.is_none() && entry.inclusion_proof.is_none() {
            named_bail!(
                "tlog inclusion proof",
                "the log entry has neither an inclusion proof nor a signed entry timestamp"
            );
        }
        // 3. The signed entry timestamp.
        match &entry.inclusion_promise {
            Some(promise) => {
                let set_payload = format!(
                    "{{\"body\":{},\"integratedTime\":{},\"logID\":{},\"logIndex\":{}}}",
                    Value::String(B64.encode(&entry.canonicalized_body.0)),
                    entry.integrated_time.0,
                    Value::String(hex::encode(&entry.log_id.key_id.0)),
                    entry.log_index.0
                );
                let set_digest = Sha256::digest(set_payload.as_bytes());
                log_key
                    .verify_digest(
                        &set_digest,
                        HashAlg::Sha256,
                        &promise.signed_entry_timestamp.0,
                        false,
                    )
                    .map_err(|e| {
                        Named::err(
                            "tlog signed entry timestamp",
                            format!("the signed entry timestamp does not verify with the Rekor public key: {e}"),
                        )
                    })?;
            }
            None if need_set => named_bail!(
                "tlog signed entry timestamp",
                "no inclusion promise (signed entry timestamp)"
            ),
            None => {}
        }
        // 4. The inclusion proof and its checkpoint: required from v0.2 on (an entry with
        // a signed entry timestamp alone is only a promise of inclusion).
        let Some(proof) = entry.inclusion_proof.as_ref() else {
            if need_proof {
                named_bail!(
                    "tlog inclusion proof",
                    "the log entry has no inclusion proof (a v0.2 or v0.3 bundle's entries need one)"
                );
            }
            return Ok(());
        };
        let leaf = leaf_hash(&entry.canonicalized_body.0);
        check_proof(leaf, proof)?;
        check_checkpoint(&proof.checkpoint.envelope, &log_key, &self.key_der, proof)
            .map_err(|e| Named::err("tlog checkpoint", format!("{e:#}")))?;
        Ok(())
    }
}

// --- Rekor v2 --------------------------------------------------------------------------

/// The `keyDetails` (protobuf-specs `PublicKeyDetails`) Rekor v2 is told the key has.
/// A hashedrekord v0.0.2 digest carries no algorithm: the key details imply it, so the
/// signature's hash must be the one they name. Pure Ed25519 is refused by Rekor v2.
pub fn key_details(spki: &[u8], hash: HashAlg) -> Result<&'static str> {
    use rsa::traits::PublicKeyParts as _;
    let key = AnyPublicKey::from_spki(spki)?;
    let (details, wants) = match &key {
        AnyPublicKey::P256(_) => ("PKIX_ECDSA_P256_SHA_256", HashAlg::Sha256),
        AnyPublicKey::P384(_) => ("PKIX_ECDSA_P384_SHA_384", HashAlg::Sha384),
        AnyPublicKey::Rsa(k) => match k.size() * 8 {
            2048 => ("PKIX_RSA_PKCS1V15_2048_SHA256", HashAlg::Sha256),
            3072 => ("PKIX_RSA_PKCS1V15_3072_SHA256", HashAlg::Sha256),
            4096 => ("PKIX_RSA_PKCS1V15_4096_SHA256", HashAlg::Sha256),
            bits => bail!("Rekor v2 takes RSA keys of 2048, 3072 or 4096 bits, not {bits}"),
        },
        AnyPublicKey::Ed25519(_) => {
            bail!("Rekor v2 does not accept pure Ed25519 keys: sign with an ECDSA or RSA key")
        }
    };
    if hash != wants {
        bail!("Rekor v2 logs this key's signatures over {wants} digests only, not {hash}");
    }
    Ok(details)
}

/// The `CreateEntryRequest` (protobuf-specs `rekor.v2`) of a hashedrekord v0.0.2 entry.
pub fn hashedrekord_v2(digest: &[u8], signature: &[u8], spki: &[u8], details: &str) -> Value {
    json!({
        "hashedRekordRequestV002": {
            "digest": B64.encode(digest),
            "signature": {
                "content": B64.encode(signature),
                "verifier": {
                    "publicKey": { "rawBytes": B64.encode(spki) },
                    "keyDetails": details
                }
            }
        }
    })
}

impl Rekor {
    /// Uploads a hashedrekord v0.0.2 entry to a Rekor v2 log (`POST /api/v2/log/entries`)
    /// and returns the checked `TransparencyLogEntry`. The log answers once a checkpoint
    /// covers the entry, so the wait is long.
    pub fn upload_v2(
        &self,
        hash: HashAlg,
        digest: &[u8],
        signature: &[u8],
        spki: &[u8],
    ) -> Result<TlogEntry> {
        let url = format!("{}/api/v2/log/entries", self.url.trim_end_matches('/'));
        let details = key_details(spki, hash)?;
        let request = hashedrekord_v2(digest, signature, spki, details);
        let text = post_json(&url, &request, REKOR_V2_TIMEOUT, "Rekor v2")?;
        let entry: TlogEntry = serde_json::from_str(&text).with_context(|| {
            format!("Rekor v2 at {url}: the answer is not a TransparencyLogEntry")
        })?;
        self.check_entry_v2(&entry, digest, signature, spki)
            .with_context(|| format!("Rekor v2 at {url}: the entry does not check out"))?;
        Ok(entry)
    }

    /// Checks a hashedrekord v0.0.2 entry: it logs our digest, signature and key, its
    /// inclusion proof leads to the root of its checkpoint, and the checkpoint is signed
    /// by this log's key. There is no signed entry timestamp (the bundle's time comes
    /// from a TSA). The entry's logId is not compared: the checkpoint's signature is
    /// what ties the entry to the log.
    pub fn check_entry_v2(
        &self,
        entry: &TlogEntry,
        digest: &[u8],
        signature: &[u8],
        spki: &[u8],
    ) -> Result<()> {
        let log_key = AnyPublicKey::from_spki(&self.key_der).context("the Rekor public key")?;
        // The logged body: a Rekor v2 `Entry` (protobuf-specs rekor/v2), whose spec is
        // `hashedRekordV002` {data: {algorithm, digest}, signature: {content, verifier}}.
        let body = v2_body(entry, "hashedrekord")?;
        let spec = &body["spec"]["hashedRekordV002"];
        let decoded = |v: &Value| v.as_str().and_then(|s| B64.decode(s).ok());
        if decoded(&spec["data"]["digest"]).as_deref() != Some(digest) {
            bail!("the logged digest is not the artifact's");
        }
        if decoded(&spec["signature"]["content"]).as_deref() != Some(signature) {
            bail!("the logged signature is not the bundle's");
        }
        let verifier = &spec["signature"]["verifier"];
        if v2_verifier_key(verifier).as_deref() != Some(spki) {
            bail!("the logged public key is not the signing key");
        }
        self.check_v2_inclusion(entry, &log_key)
    }

    /// Checks a dsse v0.0.2 entry of a Rekor v2 log (rekor-tiles' `dsseRequestV002`,
    /// which sigstore-js sends for a DSSE envelope): the logged body is a `dsseV002`
    /// spec whose `payloadHash` is SHA-256 of the envelope's payload and whose one
    /// signature is the envelope's one signature with the signing key (a `publicKey` or
    /// the `x509Certificate` holding it) as verifier; then the inclusion proof and the
    /// checkpoint, as for [`Rekor::check_entry_v2`].
    pub fn check_dsse_entry_v2(
        &self,
        entry: &TlogEntry,
        envelope: &Envelope,
        spki: &[u8],
    ) -> Result<()> {
        let log_key = AnyPublicKey::from_spki(&self.key_der).context("the Rekor public key")?;
        let body = v2_body(entry, "dsse")?;
        let spec = &body["spec"]["dsseV002"];
        let decoded = |v: &Value| v.as_str().and_then(|s| B64.decode(s).ok());
        let payload = &envelope.payload.0;
        let wanted = match spec["payloadHash"]["algorithm"].as_str() {
            Some("SHA2_256") => Sha256::digest(payload).to_vec(),
            Some("SHA2_384") => sha2::Sha384::digest(payload).to_vec(),
            Some("SHA2_512") => sha2::Sha512::digest(payload).to_vec(),
            other => bail!("the logged payloadHash algorithm {other:?} is not SHA2_256/384/512"),
        };
        if decoded(&spec["payloadHash"]["digest"]).as_deref() != Some(wanted.as_slice()) {
            bail!("the logged payloadHash is not the hash of the envelope's payload");
        }
        let [signature] = envelope.signatures.as_slice() else {
            bail!(
                "the envelope holds {} signatures, not one",
                envelope.signatures.len()
            );
        };
        let logged = match spec["signatures"].as_array().map(Vec::as_slice) {
            Some([one]) => one,
            _ => bail!("the entry does not log exactly one signature"),
        };
        if decoded(&logged["content"]).as_deref() != Some(signature.sig.0.as_slice()) {
            bail!("the logged signature is not the envelope's");
        }
        let verifier = &logged["verifier"];
        if v2_verifier_key(verifier).as_deref() != Some(spki) {
            bail!("the logged public key is not the signing key");
        }
        self.check_v2_inclusion(entry, &log_key)
    }

    /// A Rekor v2 entry's RFC 6962 inclusion proof, and its checkpoint signed by this log.
    fn check_v2_inclusion(&self, entry: &TlogEntry, log_key: &AnyPublicKey) -> Result<()> {
        let proof = entry.inclusion_proof.as_ref().ok_or_else(|| {
            Named::err(
                "tlog inclusion proof",
                "the log entry has no inclusion proof",
            )
        })?;
        let leaf = leaf_hash(&entry.canonicalized_body.0);
        check_proof(leaf, proof)?;
        check_checkpoint(&proof.checkpoint.envelope, log_key, &self.key_der, proof)
            .map_err(|e| Named::err("tlog checkpoint", format!("{e:#}")))
    }
}

/// A Rekor v2 entry's logged body, once its `kindVersion` and the body's own `kind` and
/// `apiVersion` say it is a `kind` 0.0.2 entry.
fn v2_body(entry: &TlogEntry, kind: &str) -> Result<Value> {
    if entry.kind_version.kind != kind || entry.kind_version.version != "0.0.2" {
        bail!(
            "the entry is {} {}, not {kind} 0.0.2",
            entry.kind_version.kind,
            entry.kind_version.version
        );
    }
    let body: Value = serde_json::from_slice(&entry.canonicalized_body.0)
        .context("canonicalizedBody is not JSON")?;
    if body["kind"] != kind || body["apiVersion"] != "0.0.2" {
        bail!("the logged body is not a {kind} 0.0.2 entry");
    }
    Ok(body)
}

/// The DER SubjectPublicKeyInfo of a Rekor v2 `Verifier`: its `publicKey`, or the key
/// of its `x509Certificate`.
fn v2_verifier_key(verifier: &Value) -> Option<Vec<u8>> {
    let decoded = |v: &Value| v.as_str().and_then(|s| B64.decode(s).ok());
    decoded(&verifier["publicKey"]["rawBytes"]).or_else(|| {
        decoded(&verifier["x509Certificate"]["rawBytes"]).and_then(|c| cert_spki(&c).ok())
    })
}

/// How long a Rekor v2 log may take to answer: it answers once a checkpoint covers the
/// entry (rekor-tiles batches entries for a few seconds).
const REKOR_V2_TIMEOUT: Duration = Duration::from_secs(60);

fn to_tlog_entry(e: RekorEntry) -> Result<TlogEntry> {
    let v = e
        .verification
        .ok_or_else(|| anyhow!("no `verification` (signed entry timestamp) in the answer"))?;
    let set = v
        .signed_entry_timestamp
        .ok_or_else(|| anyhow!("no signed entry timestamp in the answer"))?;
    let body = B64.decode(&e.body).context("body is not base64")?;
    let kind_version = serde_json::from_slice::<Value>(&body)
        .ok()
        .map(|b| KindVersion {
            kind: b["kind"].as_str().unwrap_or("hashedrekord").to_string(),
            version: b["apiVersion"].as_str().unwrap_or("0.0.1").to_string(),
        })
        .unwrap_or(KindVersion {
            kind: "hashedrekord".into(),
            version: "0.0.1".into(),
        });
    let inclusion_proof = match v.inclusion_proof {
        Some(p) => Some(InclusionProof {
            log_index: Int64(p.log_index),
            root_hash: B64Bytes(hex::decode(&p.root_hash).context("rootHash is not hex")?),
            tree_size: Int64(p.tree_size),
            hashes: p
                .hashes
                .iter()
                .map(|h| hex::decode(h).map(B64Bytes))
                .collect::<Result<_, _>>()
                .context("an inclusion proof hash is not hex")?,
            checkpoint: Checkpoint {
                envelope: p.checkpoint,
            },
        }),
        None => None,
    };
    Ok(TlogEntry {
        log_index: Int64(e.log_index),
        log_id: LogId {
            key_id: B64Bytes(hex::decode(&e.log_id).context("logID is not hex")?),
        },
        kind_version,
        integrated_time: Int64(e.integrated_time),
        inclusion_promise: Some(InclusionPromise {
            signed_entry_timestamp: B64Bytes(B64.decode(&set).context("the SET is not base64")?),
        }),
        inclusion_proof,
        canonicalized_body: B64Bytes(body),
    })
}

/// The inclusion proof leads from `leaf` to its root hash (a [`Named`] `tlog inclusion
/// proof` failure otherwise).
fn check_proof(leaf: [u8; 32], proof: &InclusionProof) -> Result<()> {
    let named = |e: &dyn std::fmt::Display| Named::err("tlog inclusion proof", e.to_string());
    let root = root_from_proof(
        proof.log_index.0,
        proof.tree_size.0,
        leaf,
        &proof.hashes.iter().map(|h| h.0.clone()).collect::<Vec<_>>(),
    )
    .map_err(|e| named(&e))?;
    if root.as_slice() != proof.root_hash.0.as_slice() {
        return Err(named(&"the inclusion proof does not lead to its root hash"));
    }
    Ok(())
}

/// The key of a PEM a Rekor entry logs as its verifier: a `PUBLIC KEY`, or a
/// `CERTIFICATE`'s SubjectPublicKeyInfo (keyless bundles log the leaf certificate).
pub(crate) fn logged_pem_key(pem: &[u8]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("-----BEGIN CERTIFICATE-----") {
        let der = logged_pem_certificate(pem)?;
        return cert_spki(&der).ok();
    }
    crate::verify::spki_from_pem(&text).ok()
}

/// The DER of the first `CERTIFICATE` block of a PEM.
pub(crate) fn logged_pem_certificate(pem: &[u8]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    B64.decode(body.trim()).ok().filter(|d| !d.is_empty())
}

/// A DER certificate's SubjectPublicKeyInfo, DER.
pub(crate) fn cert_spki(der: &[u8]) -> Result<Vec<u8>> {
    use der::{Decode as _, Encode as _};
    let cert =
        x509_cert::Certificate::from_der(der).map_err(|e| anyhow!("not a DER certificate: {e}"))?;
    cert.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| anyhow!("the certificate's public key: {e}"))
}

/// RFC 6962 leaf hash.
fn leaf_hash(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

fn node_hash(left: &[u8], right: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root an RFC 6962 / RFC 9162 inclusion proof leads to.
fn root_from_proof(index: i64, size: i64, leaf: [u8; 32], hashes: &[Vec<u8>]) -> Result<[u8; 32]> {
    if index < 0 || size <= 0 || index >= size {
        bail!("inclusion proof: index {index} is not inside a tree of {size}");
    }
    let (mut fn_, mut sn) = (index as u64, (size - 1) as u64);
    let mut r = leaf;
    for p in hashes {
        if p.len() != 32 {
            bail!("inclusion proof: a hash is not 32 bytes");
        }
        if sn == 0 {
            bail!("inclusion proof: too many hashes");
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        bail!("inclusion proof: too few hashes");
    }
    Ok(r)
}

/// Checks a checkpoint (signed note): signed by the log key, for the proof's tree.
fn check_checkpoint(
    envelope: &str,
    log_key: &AnyPublicKey,
    log_der: &[u8],
    proof: &InclusionProof,
) -> Result<()> {
    let (note, sigs) = envelope
        .split_once("\n\n")
        .ok_or_else(|| anyhow!("the checkpoint is not a signed note"))?;
    let note = format!("{note}\n");
    let mut lines = note.lines();
    let _origin = lines.next();
    let size: i64 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| anyhow!("the checkpoint has no tree size"))?;
    let root = lines
        .next()
        .and_then(|l| B64.decode(l).ok())
        .ok_or_else(|| anyhow!("the checkpoint has no root hash"))?;
    if size != proof.tree_size.0 || root != proof.root_hash.0 {
        bail!("the checkpoint is for another tree than the inclusion proof");
    }
    let note_bytes = note.as_bytes();
    for line in sigs.lines() {
        let Some(rest) = line.strip_prefix("\u{2014} ") else {
            continue;
        };
        let Some((name, sig)) = rest.rsplit_once(' ') else {
            continue;
        };
        let Ok(raw) = B64.decode(sig) else { continue };
        if raw.len() <= 4
            || !checkpoint_key_ids(log_der, name)
                .iter()
                .any(|id| id[..4] == raw[..4])
        {
            continue;
        }
        match log_key {
            // C2SP signed-note: Ed25519 signs the note text itself.
            AnyPublicKey::Ed25519(_) => {
                log_key.verify_digest(note_bytes, HashAlg::Sha256, &raw[4..], false)
            }
            _ => {
                let hash = log_key.default_hash();
                let digest = crate::tsa::digest(hash, note_bytes);
                log_key.verify_digest(&digest, hash, &raw[4..], false)
            }
        }
        .context("the checkpoint's signature does not verify with the Rekor public key")?;
        return Ok(());
    }
    bail!("the checkpoint carries no signature by the Rekor key")
}

/// The full key IDs (SHA-256, before C2SP signed-note truncates them to 4 bytes) under
/// which a log whose key is `log_der` may sign notes as `name`: for Ed25519,
/// SHA-256(name || 0x0A || 0x01 || key); for ECDSA, SHA-256 of the DER
/// SubjectPublicKeyInfo; for RSA, that (Rekor v1) or, as Rekor v2 logs name RSA keys,
/// SHA-256(name || 0x0A || 0xFF || `PKIX-RSA-PKCS#1v1.5` || SubjectPublicKeyInfo).
/// Rekor v2 entries carry the full ID as their `logId` (LogInstance::named_by).
pub(crate) fn checkpoint_key_ids(log_der: &[u8], name: &str) -> Vec<[u8; 32]> {
    let named = |kind: &[u8], key: &[u8]| -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(name.as_bytes());
        h.update([0x0a]);
        h.update(kind);
        h.update(key);
        h.finalize().into()
    };
    match AnyPublicKey::from_spki(log_der) {
        Ok(AnyPublicKey::Ed25519(k)) => vec![named(&[0x01], k.as_bytes())],
        Ok(AnyPublicKey::Rsa(_)) => vec![
            Sha256::digest(log_der).into(),
            named(b"\xffPKIX-RSA-PKCS#1v1.5", log_der),
        ],
        _ => vec![Sha256::digest(log_der).into()],
    }
}

/// POSTs `request` as JSON to a log at `url` and returns the answer's text; a refusal
/// (its HTTP status and the start of its body) and an unreachable log are errors that
/// name `service` and the URL.
fn post_json(url: &str, request: &Value, timeout: Duration, service: &str) -> Result<String> {
    let agent = ureq::AgentBuilder::new().timeout(timeout).build();
    let response = agent
        .post(url)
        .set("Content-Type", "application/json")
        .set("Accept", "application/json")
        .send_string(&request.to_string());
    match response {
        Ok(r) => r
            .into_string()
            .with_context(|| format!("{service} at {url}: cannot read the answer")),
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap_or_default();
            bail!(
                "{service} at {url} refused the entry: HTTP {code}: {}",
                body.trim().chars().take(300).collect::<String>()
            );
        }
        Err(e) => bail!("cannot reach {service} at {url}: {e}"),
    }
}

// --- verification --------------------------------------------------------------------

/// What a bundle is checked against: a file, or the SHA-256 digest of one
/// (`sha256:<64 hex>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    /// A file on disk, hashed when checked.
    File(std::path::PathBuf),
    /// A SHA-256 digest.
    Sha256([u8; 32]),
}

impl Artifact {
    /// A path, or `sha256:<64 hex>` when no file of that name exists.
    pub fn parse(arg: &Path) -> Result<Artifact> {
        if arg.exists() {
            return Ok(Artifact::File(arg.to_path_buf()));
        }
        let text = arg.to_string_lossy();
        if let Some(hexed) = text.strip_prefix("sha256:") {
            let mut d = [0u8; 32];
            if hexed.len() == 64 && hex::decode_to_slice(hexed, &mut d).is_ok() {
                return Ok(Artifact::Sha256(d));
            }
            bail!("`{text}`: a digest is sha256: and 64 hex digits");
        }
        Ok(Artifact::File(arg.to_path_buf()))
    }

    /// The artifact's digest with `hash` (a digest given as such: SHA-256 only).
    pub fn digest(&self, hash: HashAlg) -> Result<Vec<u8>> {
        match (self, hash) {
            (Artifact::File(p), _) => hash_file(p, hash),
            (Artifact::Sha256(d), HashAlg::Sha256) => Ok(d.to_vec()),
            (Artifact::Sha256(_), other) => bail!(
                "the bundle signs a {other} digest, and the artifact is given as a SHA-256 digest: give the file"
            ),
        }
    }
}

impl std::fmt::Display for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Artifact::File(p) => write!(f, "{}", p.display()),
            Artifact::Sha256(d) => write!(f, "sha256:{}", hex::encode(d)),
        }
    }
}

/// What a successful bundle verification checked.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// Signature algorithm.
    pub alg: String,
    /// The digest's algorithm.
    pub hash: String,
    /// Log entries checked against the Rekor key.
    pub tlog_entries_checked: usize,
    /// Log entries present but not checked (no Rekor key given).
    pub tlog_entries_unchecked: usize,
    /// The log's time for the first checked entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrated_time: Option<i64>,
    /// RFC 3161 timestamps checked against the trusted TSA.
    pub timestamps_checked: usize,
    /// RFC 3161 timestamps present but not checked (no TSA certificates given).
    pub timestamps_unchecked: usize,
    /// The first checked timestamp's time, seconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// DSSE bundles: the statement's predicate type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicate_type: Option<String>,
}

/// Verifies `bundle` for `file` with the key `spki`, its log entries with `rekor` and
/// its RFC 3161 timestamps with `tsa`. Each failure says what did not match. The same
/// checks hold for message signatures and DSSE envelopes: every log entry is checked
/// when `rekor` is given, every timestamp (over the signature bytes) when `tsa` is.
pub fn verify_bundle(
    bundle: &Bundle,
    file: &Artifact,
    spki: &[u8],
    rekor: Option<&Rekor>,
    tsa: Option<&crate::tsa::TrustedTsa>,
) -> Result<Verified> {
    let vm = &bundle.verification_material;
    if vm.certificate.is_some() || vm.x509_certificate_chain.is_some() {
        bail!("the bundle is signed with a certificate (keyless); this verifier checks key-based bundles: use cosign or sigstore-js for certificates");
    }
    if let Some(pk) = &vm.public_key {
        let expected = key_hint(spki);
        if !pk.hint.is_empty() && pk.hint != expected {
            bail!(
                "key hint mismatch: the bundle names key {} but this key is {expected}",
                pk.hint
            );
        }
    }
    if let Some(envelope) = &bundle.dsse_envelope {
        if bundle.message_signature.is_some() {
            bail!("the bundle holds both a DSSE envelope and a messageSignature");
        }
        return verify_dsse(envelope, vm, file, spki, rekor, tsa);
    }
    let ms = bundle
        .message_signature
        .as_ref()
        .ok_or_else(|| anyhow!("the bundle has no messageSignature"))?;
    let hash = hash_of_name(&ms.message_digest.algorithm)?;
    let digest = file.digest(hash)?;
    if digest != ms.message_digest.digest.0 {
        bail!(
            "digest mismatch: {} has {} {} but the bundle signed {}",
            file,
            hash,
            hex::encode(&digest),
            hex::encode(&ms.message_digest.digest.0)
        );
    }
    let key = AnyPublicKey::from_spki(spki)?;
    if matches!(key, AnyPublicKey::Ed25519(_)) {
        bail!("Ed25519 keys are not used for Sigstore message signatures by waxseal");
    }
    let alg = key
        .verify_digest(&digest, hash, &ms.signature.0, false)
        .context(
            "signature mismatch: the bundle's signature is not by this key over this digest",
        )?;
    let checked = check_material(vm, rekor, tsa, &ms.signature.0, |rekor, e| {
        rekor.check_entry(e, hash, &digest, &ms.signature.0, spki)
    })?;
    Ok(checked.verified(alg, hash, None))
}

/// What the log entries and timestamps of a bundle came to.
struct Material {
    entries: usize,
    entries_checked: usize,
    integrated_time: Option<i64>,
    stamps: usize,
    stamps_checked: usize,
    timestamp: Option<u64>,
}

impl Material {
    fn verified(self, alg: String, hash: HashAlg, predicate_type: Option<String>) -> Verified {
        Verified {
            alg,
            hash: hash_name(hash).to_string(),
            tlog_entries_checked: self.entries_checked,
            tlog_entries_unchecked: self.entries - self.entries_checked,
            integrated_time: self.integrated_time,
            timestamps_checked: self.stamps_checked,
            timestamps_unchecked: self.stamps - self.stamps_checked,
            timestamp: self.timestamp,
            predicate_type,
        }
    }
}

/// Checks every log entry of `vm` with `check` when `rekor` is given, and every RFC 3161
/// timestamp, over `signature`, when `tsa` is; asking for either and finding none is an
/// error. The log's time counts only from an entry with a signed entry timestamp.
fn check_material(
    vm: &VerificationMaterial,
    rekor: Option<&Rekor>,
    tsa: Option<&crate::tsa::TrustedTsa>,
    signature: &[u8],
    check: impl Fn(&Rekor, &TlogEntry) -> Result<()>,
) -> Result<Material> {
    let mut entries_checked = 0;
    let mut integrated_time = None;
    if let Some(rekor) = rekor {
        if vm.tlog_entries.is_empty() {
            bail!("the bundle has no transparency log entry, and --rekor-public-key asks for one");
        }
        for (i, e) in vm.tlog_entries.iter().enumerate() {
            check(rekor, e)
                .with_context(|| format!("tlog entry {i} (log index {})", e.log_index.0))?;
            if e.inclusion_promise.is_some() {
                integrated_time.get_or_insert(e.integrated_time.0);
            }
            entries_checked += 1;
        }
    }
    let stamps = timestamps(vm)?;
    let mut timestamp = None;
    let mut stamps_checked = 0;
    if let Some(tsa) = tsa {
        if stamps.is_empty() {
            bail!("the bundle has no RFC 3161 timestamp, and --tsa-cert-chain asks for one");
        }
        for (i, stamp) in stamps.iter().enumerate() {
            let time = tsa
                .check(stamp, signature)
                .with_context(|| format!("RFC 3161 timestamp {i}"))?;
            let secs = time
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            timestamp.get_or_insert(secs);
            stamps_checked += 1;
        }
    }
    Ok(Material {
        entries: vm.tlog_entries.len(),
        entries_checked,
        integrated_time,
        stamps: stamps.len(),
        stamps_checked,
        timestamp,
    })
}

/// Verifies a DSSE bundle for `file`: the envelope holds an in-toto statement v1 one
/// of whose subjects has `file`'s SHA-256, and exactly one signature, by `spki`, over
/// the PAE (hashed with the key's default hash; Ed25519 signs the PAE itself). Log
/// entries: `dsse` v0.0.1 (Rekor v1) or the PAE's `hashedrekord` v0.0.2 (Rekor v2).
fn verify_dsse(
    envelope: &Envelope,
    vm: &VerificationMaterial,
    file: &Artifact,
    spki: &[u8],
    rekor: Option<&Rekor>,
    tsa: Option<&crate::tsa::TrustedTsa>,
) -> Result<Verified> {
    if envelope.payload_type != intoto::PAYLOAD_TYPE {
        bail!(
            "the DSSE envelope's payloadType is `{}`, not {}",
            envelope.payload_type,
            intoto::PAYLOAD_TYPE
        );
    }
    let [signature] = envelope.signatures.as_slice() else {
        bail!(
            "the DSSE envelope holds {} signatures; a Sigstore bundle's holds exactly one",
            envelope.signatures.len()
        );
    };
    let key = AnyPublicKey::from_spki(spki)?;
    let pae = intoto::pae(&envelope.payload_type, &envelope.payload.0);
    let hash = key.default_hash();
    let ed25519 = matches!(key, AnyPublicKey::Ed25519(_));
    let signed = if ed25519 {
        pae
    } else {
        crate::verify::hash_bytes(hash, &pae)
    };
    let alg = key
        .verify_digest(&signed, hash, &signature.sig.0, false)
        .context(
            "signature mismatch: the envelope's signature is not by this key over this payload",
        )?;
    let statement = Statement::parse(&envelope.payload.0).map_err(|e| {
        Named::err(
            "artifact",
            format!("the DSSE payload is not an in-toto statement waxseal reads: {e}"),
        )
    })?;
    let digest = file.digest(HashAlg::Sha256)?;
    if !statement.names_sha256(&digest) {
        bail!(
            "digest mismatch: {} has SHA-256 {}, which is not among the statement's subjects ({})",
            file,
            hex::encode(&digest),
            statement
                .subjects
                .iter()
                .map(|s| format!("{} {}", s.name, s.sha256))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let checked = check_material(vm, rekor, tsa, &signature.sig.0, |rekor, e| {
        match (e.kind_version.kind.as_str(), e.kind_version.version.as_str()) {
            ("dsse", "0.0.1") => rekor.check_dsse_entry(e, envelope, spki),
            ("hashedrekord", "0.0.2") if !ed25519 => {
                rekor.check_entry_v2(e, &signed, &signature.sig.0, spki)
            }
            (kind, version) => bail!(
                "a {kind} {version} entry is not one waxseal checks for a DSSE envelope (dsse 0.0.1 in Rekor v1, the PAE's hashedrekord 0.0.2 in Rekor v2)"
            ),
        }
    })?;
    Ok(checked.verified(alg, hash, Some(statement.predicate_type)))
}

/// The DER `TimeStampResp`s of `timestampVerificationData.rfc3161Timestamps`.
pub(crate) fn timestamps(vm: &VerificationMaterial) -> Result<Vec<Vec<u8>>> {
    let Some(data) = &vm.timestamp_verification_data else {
        return Ok(Vec::new());
    };
    let list = match &data["rfc3161Timestamps"] {
        Value::Null => return Ok(Vec::new()),
        Value::Array(list) => list,
        _ => bail!("timestampVerificationData.rfc3161Timestamps is not a list"),
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            let text = t["signedTimestamp"]
                .as_str()
                .ok_or_else(|| anyhow!("RFC 3161 timestamp {i} has no signedTimestamp"))?;
            B64.decode(text.trim())
                .with_context(|| format!("RFC 3161 timestamp {i} is not base64"))
        })
        .collect()
}

#[cfg(test)]
mod tests;
