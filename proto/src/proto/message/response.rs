//! Responses: the `ok` bodies of each op, and the frames the agent sends while a
//! request is in progress (notices, PIN prompts).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;

/// `hello` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloOk {
    /// The agent's protocol version.
    pub version: u32,
    /// e.g. `waxseal-agent 0.1.0`.
    pub agent: String,
}

/// One device in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Name from the config: the first part of its keys' names.
    pub name: String,
    /// `pkcs11`, `tpm` or `yubikey`.
    pub kind: DeviceKind,
    /// Whether the device answered.
    pub present: bool,
    /// Keys on it (0 when absent).
    pub keys: usize,
    /// What the device says of itself (token label, model, serial…).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Why it is absent or failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The agent asks the requesting client for this device's PIN (`pin = "prompt"`):
    /// a `prompt` frame may come before a response. Otherwise the agent gets the PIN
    /// itself (or the device needs none).
    #[serde(default, skip_serializing_if = "is_false")]
    pub pin_prompt: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `status` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusOk {
    /// e.g. `waxseal-agent 0.1.0`.
    pub agent: String,
    /// Protocol version.
    pub version: u32,
    /// Every configured device.
    pub devices: Vec<DeviceStatus>,
    /// Keys across present devices.
    pub keys: usize,
    /// The audit log, when the agent keeps one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditStatus>,
}

/// The audit log in `status`: how records reach the disk, and counts since the agent
/// started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStatus {
    /// `fsync, group commit`, `fsync per signature` or `no fsync`.
    pub durability: String,
    /// Lines appended.
    pub appended: u64,
    /// `fdatasync` calls made for waiting signatures.
    pub syncs: u64,
    /// Signatures that waited for a sync (the others found their intent on disk).
    pub waited: u64,
}

/// The purposes of a list of words, without the words this version does not know.
fn known_purposes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Purpose>, D::Error> {
    let words = Vec::<String>::deserialize(d)?;
    Ok(words.iter().filter_map(|w| w.parse().ok()).collect())
}

/// One key in `list_keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// `DEVICE/LABEL`.
    pub name: String,
    /// Device name.
    pub device: String,
    /// Algorithm.
    pub alg: KeyAlg,
    /// Purposes the policy grants this key. Words this version does not know (a newer
    /// agent's purposes) are left out when reading, so that a new purpose does not make
    /// older clients fail to list keys.
    #[serde(deserialize_with = "known_purposes")]
    pub purposes: Vec<Purpose>,
    /// Device-level reference, e.g. an RFC 7512 `pkcs11:` URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The device's own object id of the key: on PKCS#11, the private key's `CKA_ID`
    /// (programs pair a key with its certificate by it). Absent for TPM and YubiKey
    /// keys, and for a PKCS#11 key without a `CKA_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Bytes>,
    /// TPM keys bound to PCRs: the bank and PCRs of the key's TPM2_PolicyPCR. Absent
    /// for keys without a PCR binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcrs: Option<PcrSelection>,
    /// True for a key brought into its device from outside (`import_key`, or a key the
    /// device's metadata says was imported): the device holds it, but did not make it,
    /// so its attestation cannot vouch that the key never existed elsewhere. Absent
    /// when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub imported: bool,
}

/// `list_keys` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListKeysOk {
    /// The keys, sorted by name.
    pub keys: Vec<KeyInfo>,
}

/// `public_key` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublicKeyOk {
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Bytes,
    /// The same as PEM (`-----BEGIN PUBLIC KEY-----`).
    pub pem: String,
    /// Algorithm.
    pub alg: KeyAlg,
    /// The DER X.509 certificate the device holds for this key, if any (a YubiKey
    /// slot's certificate; a certificate object on a PKCS#11 token whose public key is
    /// this key's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Bytes>,
    /// On a PKCS#11 token: the `CKA_ID` of the certificate object (absent when the
    /// object has none, and on other devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_id: Option<Bytes>,
    /// On a PKCS#11 token: the `CKA_LABEL` of the certificate object (absent when the
    /// object has none, and on other devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_label: Option<String>,
}

/// `generate_key` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateKeyOk {
    /// The new key as `list_keys` shows it.
    pub key: KeyInfo,
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Bytes,
    /// PEM SubjectPublicKeyInfo.
    pub pem: String,
}

/// `import_key` result: the key as `list_keys` shows it, and its public key.
pub type ImportKeyOk = GenerateKeyOk;

/// `attest` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttestOk {
    /// Key NAME.
    pub key: String,
    /// Kind of evidence: `tpm2-certify` (docs/protocol.md describes each).
    pub format: String,
    /// The evidence, in the form `format` names.
    pub evidence: Value,
}

/// `store_certificate` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreCertificateOk {
    /// Key NAME.
    pub key: String,
    /// Object id: `object_id` as given, or the lowercase hex of `id`.
    pub object_id: String,
    /// Object label.
    pub label: String,
}

/// `sign` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignOk {
    /// Signature: DER for ECDSA, the raw octet string for RSA and Ed25519.
    pub signature: Bytes,
    /// e.g. `ecdsa-p256-sha256`, `rsa-pss-sha384`, `ed25519`.
    pub alg: String,
}

/// Encodes a success response payload.
pub fn encode_ok<T: Serialize>(id: u64, ok: &T) -> Vec<u8> {
    #[derive(Serialize)]
    struct Wire<'a, T> {
        id: u64,
        ok: &'a T,
    }
    // The result types above always serialise.
    serde_json::to_vec(&Wire { id, ok }).unwrap_or_default()
}

/// Encodes an error response payload; `id` is `null` when the request's was unreadable.
pub fn encode_error(id: Option<u64>, error: &WireError) -> Vec<u8> {
    #[derive(Serialize)]
    struct Wire<'a> {
        id: Option<u64>,
        error: &'a WireError,
    }
    serde_json::to_vec(&Wire { id, error }).unwrap_or_default()
}

/// Encodes a notice: a frame sent while a request is in progress (e.g. "touch your
/// YubiKey"), before its response. Clients show it and keep waiting.
pub fn encode_notice(id: u64, notice: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Wire<'a> {
        id: u64,
        notice: &'a str,
    }
    serde_json::to_vec(&Wire { id, notice }).unwrap_or_default()
}

/// Encodes a notice about a request waiting for approvals: `{"id":…,"notice":…,
/// "approval":{…}}` (docs/protocol.md, "Approvals"). The `approval-pending` answer is
/// the first; each later one says who has approved since.
pub fn encode_approval_notice(id: u64, notice: &str, approval: &ApprovalInfo) -> Vec<u8> {
    #[derive(Serialize)]
    struct Wire<'a> {
        id: u64,
        notice: &'a str,
        approval: &'a ApprovalInfo,
    }
    serde_json::to_vec(&Wire {
        id,
        notice,
        approval,
    })
    .unwrap_or_default()
}

/// Encodes a PIN prompt: the agent asks the requesting person for a PIN
/// (`pin = "prompt"`). The client answers `{"id":…,"op":"pin_reply","pin":"…"}`, or
/// `{"id":…,"op":"pin_reply","cancel":true}`, and then reads the response.
pub fn encode_prompt(id: u64, prompt: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Wire<'a> {
        id: u64,
        prompt: &'a str,
    }
    serde_json::to_vec(&Wire { id, prompt }).unwrap_or_default()
}

/// A response as a client reads it, before its `ok` is given a type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Response {
    /// The id of the request it answers (`null` for frame-level errors).
    pub id: Option<u64>,
    /// Success body.
    #[serde(default)]
    pub ok: Option<Value>,
    /// Failure.
    #[serde(default)]
    pub error: Option<WireError>,
    /// A notice while the request is in progress; the response follows.
    #[serde(default)]
    pub notice: Option<String>,
    /// A PIN prompt: the client answers with a `pin_reply`; the response follows.
    #[serde(default)]
    pub prompt: Option<String>,
    /// With a notice: the request waits for approvals (docs/protocol.md, "Approvals");
    /// the first such notice is the `approval-pending` answer, later ones the progress.
    #[serde(default)]
    pub approval: Option<ApprovalInfo>,
}

impl Response {
    /// Decodes a response payload.
    pub fn decode(payload: &[u8]) -> Result<Response, String> {
        let r: Response = serde_json::from_slice(payload)
            .map_err(|e| format!("agent sent a response that is not valid: {e}"))?;
        if r.notice.is_some() || r.prompt.is_some() {
            if r.ok.is_some() || r.error.is_some() {
                return Err("agent notice or prompt carries a result".to_string());
            }
            return Ok(r);
        }
        if r.ok.is_some() == r.error.is_some() {
            return Err("agent response has neither or both of `ok` and `error`".to_string());
        }
        Ok(r)
    }

    /// The typed result.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, ResponseError> {
        match (self.ok, self.error) {
            (_, Some(e)) => Err(ResponseError::Agent(e)),
            (Some(ok), None) => serde_json::from_value(ok)
                .map_err(|e| ResponseError::Shape(format!("unexpected result shape: {e}"))),
            (None, None) => Err(ResponseError::Shape("empty response".to_string())),
        }
    }
}

/// A response that is an error, or not what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResponseError {
    /// The agent refused or failed.
    #[error("{0}")]
    Agent(WireError),
    /// The agent's answer did not have the expected shape.
    #[error("{0}")]
    Shape(String),
}
