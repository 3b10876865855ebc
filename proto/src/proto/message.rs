//! Requests, responses and the value types they carry.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::error::{ErrorCode, WireError};

/// The longest key NAME (and device name) a request may carry, in bytes.
pub const MAX_KEY_NAME: usize = 256;
/// The longest artifact name (`sign` purpose `blob`) a request may carry, in bytes.
/// Names reach the audit log and confirmation questions, whose records and answers
/// must stay far below [`super::MAX_FRAME`].
pub const MAX_NAME: usize = 1024;

/// Checks a client-supplied string that reaches the audit log, logs or a question to
/// a person: at most `max` bytes, and no control characters (a newline in an artifact
/// name could forge a line of a confirmation question). The message never repeats the
/// string.
fn check_text(field: &str, text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!(
            "`{field}` is {} bytes long; at most {max} are accepted",
            text.len()
        ));
    }
    if let Some(at) = text.chars().position(char::is_control) {
        return Err(format!(
            "`{field}` holds a control character (character {}); none are accepted",
            at + 1
        ));
    }
    Ok(())
}

/// A JSON value in which no object names a member twice: `{"key":"a","key":"b"}`
/// is refused rather than read as its last member, so that no two readers of one
/// frame can disagree on what it asks.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Strict::deserialize(d).map(|s| s.0)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "member `{}` appears twice in one object",
                    key.chars().take(64).collect::<String>()
                )));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Bytes carried as standard base64 (with padding) in JSON.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({})", B64.encode(&self.0))
    }
}

impl Bytes {
    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        B64.decode(text.as_bytes())
            .map(Bytes)
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word used on the wire and on the command line.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} `{other}` (expected one of: {})",
                        stringify!($name),
                        [$($word),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

word_enum! {
    /// What a signature is for; policy decides which purposes a key serves.
    Purpose {
        /// A digest the caller computed, with its hash algorithm.
        Digest = "digest",
        /// The digest of a named artifact (Sigstore bundles).
        Blob = "blob",
        /// A DER TBSCertificate (CA keys).
        X509Tbs = "x509-tbs",
        /// An SSH signature request (ssh.sock only).
        Ssh = "ssh",
    }
}

word_enum! {
    /// The kind of a device, as `[[device]] kind` names it.
    DeviceKind {
        /// A PKCS#11 token.
        Pkcs11 = "pkcs11",
        /// A TPM 2.0.
        Tpm = "tpm",
        /// A YubiKey (PIV).
        Yubikey = "yubikey",
    }
}

word_enum! {
    /// Hash algorithm of a digest.
    HashAlg {
        /// SHA-256, 32 bytes.
        Sha256 = "sha256",
        /// SHA-384, 48 bytes.
        Sha384 = "sha384",
        /// SHA-512, 64 bytes.
        Sha512 = "sha512",
    }
}

impl HashAlg {
    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The algorithm whose digests are `len` bytes long.
    pub fn from_len(len: usize) -> Option<HashAlg> {
        HashAlg::ALL.iter().copied().find(|h| h.digest_len() == len)
    }
}

word_enum! {
    /// RSA signature padding. PKCS#1 v1.5 unless a request asks for PSS.
    RsaPadding {
        /// RSASSA-PKCS1-v1_5.
        Pkcs1 = "pkcs1",
        /// RSASSA-PSS with MGF1 of the same hash and a salt as long as the digest.
        Pss = "pss",
    }
}

word_enum! {
    /// When a YubiKey wants a touch to sign with a key (set when the key is generated).
    TouchPolicy {
        /// Never.
        Never = "never",
        /// For every signature.
        Always = "always",
        /// Once, then not again for 15 seconds.
        Cached = "cached",
    }
}

word_enum! {
    /// When a YubiKey wants the PIN verified to sign with a key.
    PinPolicy {
        /// Never.
        Never = "never",
        /// Once per session.
        Once = "once",
        /// Before every signature.
        Always = "always",
    }
}

/// Key algorithm. On the wire: `p256`, `p384`, `rsa2048` (any `rsaN`), `ed25519`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlg {
    /// ECDSA over NIST P-256.
    P256,
    /// ECDSA over NIST P-384.
    P384,
    /// RSA with a modulus of this many bits.
    Rsa(u32),
    /// Ed25519.
    Ed25519,
}

impl KeyAlg {
    /// The algorithms `generate_key` accepts.
    pub const GENERATABLE: [KeyAlg; 6] = [
        KeyAlg::P256,
        KeyAlg::P384,
        KeyAlg::Rsa(2048),
        KeyAlg::Rsa(3072),
        KeyAlg::Rsa(4096),
        KeyAlg::Ed25519,
    ];

    /// The hash a `digest` request uses when it names none: SHA-384 for P-384,
    /// SHA-256 otherwise.
    pub fn default_hash(self) -> HashAlg {
        match self {
            KeyAlg::P384 => HashAlg::Sha384,
            _ => HashAlg::Sha256,
        }
    }

    /// Whether `generate_key` may create this algorithm.
    pub fn is_generatable(self) -> bool {
        Self::GENERATABLE.contains(&self)
    }

    /// Signature algorithm name returned by `sign` for this key.
    pub fn signature_alg(self, hash: HashAlg, padding: RsaPadding) -> String {
        match (self, padding) {
            (KeyAlg::P256, _) => format!("ecdsa-p256-{hash}"),
            (KeyAlg::P384, _) => format!("ecdsa-p384-{hash}"),
            (KeyAlg::Rsa(_), RsaPadding::Pkcs1) => format!("rsa-pkcs1v15-{hash}"),
            (KeyAlg::Rsa(_), RsaPadding::Pss) => format!("rsa-pss-{hash}"),
            (KeyAlg::Ed25519, _) => "ed25519".to_string(),
        }
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAlg::P256 => f.write_str("p256"),
            KeyAlg::P384 => f.write_str("p384"),
            KeyAlg::Rsa(bits) => write!(f, "rsa{bits}"),
            KeyAlg::Ed25519 => f.write_str("ed25519"),
        }
    }
}

impl FromStr for KeyAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "p256" => Ok(KeyAlg::P256),
            "p384" => Ok(KeyAlg::P384),
            "ed25519" => Ok(KeyAlg::Ed25519),
            _ => s
                .strip_prefix("rsa")
                .and_then(|bits| bits.parse::<u32>().ok())
                .filter(|bits| (1024..=16384).contains(bits))
                .map(KeyAlg::Rsa)
                .ok_or_else(|| {
                    format!(
                        "unknown key algorithm `{s}` (expected p256, p384, rsa2048, rsa3072, rsa4096 or ed25519)"
                    )
                }),
        }
    }
}

impl Serialize for KeyAlg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyAlg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------
// Requests

/// One decoded request: its id and what it asks.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed in the response.
    pub id: u64,
    /// The operation.
    pub op: Op,
}

/// The operations of the native protocol.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// First exchange: protocol version.
    Hello(Hello),
    /// Agent version, devices, key count.
    Status,
    /// Every key the caller may see.
    ListKeys,
    /// Public key of one key.
    PublicKey(KeyRef),
    /// Create a key on a device.
    GenerateKey(GenerateKey),
    /// Sign.
    Sign(Sign),
    /// Evidence that a key was made inside its device.
    Attest(Attest),
    /// Store a certificate for a key on its device (PKCS#11 tokens).
    StoreCertificate(StoreCertificate),
    /// Drop cached PINs and refuse signing until `unlock`.
    Lock,
    /// End a `lock`, or try a device's PIN again (below the retry floor).
    Unlock(Unlock),
    /// The last records of the audit log.
    AuditTail(AuditTail),
}

impl Op {
    /// The op's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello(_) => "hello",
            Op::Status => "status",
            Op::ListKeys => "list_keys",
            Op::PublicKey(_) => "public_key",
            Op::GenerateKey(_) => "generate_key",
            Op::Sign(_) => "sign",
            Op::Attest(_) => "attest",
            Op::StoreCertificate(_) => "store_certificate",
            Op::Lock => "lock",
            Op::Unlock(_) => "unlock",
            Op::AuditTail(_) => "audit_tail",
        }
    }
}

/// `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The client's protocol version.
    pub version: u32,
}

/// A request naming one key, `DEVICE/LABEL`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRef {
    /// Key NAME.
    pub key: String,
}

/// `generate_key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateKey {
    /// NAME of the new key, `DEVICE/LABEL`.
    pub key: String,
    /// Algorithm.
    pub alg: KeyAlg,
    /// YubiKey: touch policy of the new key (the card's default if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub touch: Option<TouchPolicy>,
    /// YubiKey: PIN policy of the new key (the card's default if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_policy: Option<PinPolicy>,
}

/// `unlock`: without `device`, ends a `lock`; with it, the user's go-ahead to try
/// that device's PIN once more (see docs/protocol.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unlock {
    /// Device name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// `audit_tail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditTail {
    /// How many records (default 20, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
}

/// `audit_tail` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditTailOk {
    /// The records, oldest first, as written (a record too long for one answer as
    /// `{"bytes":…,"seq":…,"truncated":true}`).
    pub records: Vec<Value>,
    /// How many of the records asked for were left out to keep the answer within
    /// the agent's byte budget (see docs/protocol.md); absent when none were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<u64>,
}

/// `unlock` and `lock` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnlockOk {
    /// Device name, for a device unlock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Whether the agent is still locked.
    pub locked: bool,
    /// What happened, e.g. `PIN verified; 3 tries left`.
    pub message: String,
}

/// `attest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attest {
    /// Key NAME.
    pub key: String,
    /// Qualifying data bound into the evidence (at most 32 bytes); random if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<Bytes>,
}

/// `store_certificate`: puts `cert` on the device of `key` as a certificate object, the
/// way `fulcio createca` stores its root (PKCS#11: CKO_CERTIFICATE, CKA_ID = the ASCII
/// bytes of `object_id`, CKA_LABEL = `label`). The certificate must be for `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreCertificate {
    /// Key NAME whose certificate this is.
    pub key: String,
    /// Object id (CKA_ID, as ASCII bytes); refused when an object has it already.
    pub object_id: String,
    /// Object label; `PKCS11CA` (what Fulcio's pkcs11ca looks for) if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The DER certificate.
    pub cert: Bytes,
}

/// `sign`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sign {
    /// Key NAME.
    pub key: String,
    /// What the signature is for.
    pub purpose: Purpose,
    /// Hash algorithm of `digest`; by default the key's (SHA-384 for P-384, else SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<HashAlg>,
    /// The digest to sign (`digest` and `blob`); absent for `x509-tbs`.
    #[serde(default, skip_serializing_if = "Bytes::is_empty")]
    pub digest: Bytes,
    /// The DER TBSCertificate to sign (`x509-tbs`): the agent parses it, checks it
    /// against the key's policy, logs it, and signs it with the hash its signature
    /// algorithm names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tbs: Option<Bytes>,
    /// Artifact name (`blob`), recorded for audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// RSA padding; PKCS#1 v1.5 by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub padding: Option<RsaPadding>,
}

impl Sign {
    /// Checks that the payload fits the purpose: `tbs` for `x509-tbs`, `digest` for
    /// the others, never both.
    fn check_payload(&self) -> Result<(), String> {
        match (self.purpose, self.tbs.is_some(), self.digest.is_empty()) {
            (Purpose::X509Tbs, true, true) if self.hash.is_some() || self.padding.is_some() => Err(
                "purpose x509-tbs takes no `hash` or `padding`: the TBSCertificate's signature algorithm names them".into(),
            ),
            (Purpose::X509Tbs, true, true) => Ok(()),
            (Purpose::X509Tbs, false, _) => {
                Err("missing field `tbs` (purpose x509-tbs signs a DER TBSCertificate)".into())
            }
            (Purpose::X509Tbs, true, false) => Err(
                "purpose x509-tbs takes `tbs` and no `digest`: the agent hashes the TBSCertificate itself".into(),
            ),
            (_, true, _) => Err(format!(
                "`tbs` is only for purpose x509-tbs, not {}",
                self.purpose
            )),
            (_, false, true) => Err("missing field `digest`".into()),
            (_, false, false) => Ok(()),
        }
    }
}

impl Request {
    /// Encodes the request as a JSON payload (unframed).
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Wire<'a> {
            id: u64,
            #[serde(flatten)]
            op: &'a Op,
        }
        // Serialising these plain structs cannot fail: no maps with non-string keys.
        serde_json::to_vec(&Wire {
            id: self.id,
            op: &self.op,
        })
        .unwrap_or_default()
    }
}

/// A request that could not be decoded, with what the response needs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct RequestError {
    /// The request's id, when it could be read.
    pub id: Option<u64>,
    /// Code and message for the client.
    pub error: WireError,
    /// Whether the payload was not JSON at all; the connection is then closed.
    pub malformed: bool,
}

impl RequestError {
    fn bad(id: Option<u64>, message: String) -> Self {
        RequestError {
            id,
            error: WireError::new(ErrorCode::BadRequest, message),
            malformed: false,
        }
    }
}

/// Decodes one request payload (the bytes inside a frame).
///
/// Unknown members are ignored (newer clients may send more); missing or wrong-typed
/// members and unknown ops are errors that keep the request's id when it was readable.
pub fn decode_request(payload: &[u8]) -> Result<Request, RequestError> {
    let text = std::str::from_utf8(payload).map_err(|e| RequestError {
        id: None,
        error: WireError::new(
            ErrorCode::BadRequest,
            format!(
                "frame is not UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        ),
        malformed: true,
    })?;
    let value = serde_json::from_str::<Strict>(text)
        .map_err(|e| RequestError {
            id: None,
            error: WireError::new(ErrorCode::BadRequest, format!("frame is not JSON: {e}")),
            malformed: true,
        })?
        .0;
    let Value::Object(mut map) = value else {
        return Err(RequestError::bad(
            None,
            "request must be a JSON object".to_string(),
        ));
    };
    let id = match map.get("id") {
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
            RequestError::bad(None, "`id` must be a non-negative integer".to_string())
        })?,
        Some(_) => {
            return Err(RequestError::bad(
                None,
                "`id` must be a non-negative integer".to_string(),
            ))
        }
        None => return Err(RequestError::bad(None, "missing `id`".to_string())),
    };
    let op = match map.remove("op") {
        Some(Value::String(op)) => op,
        Some(_) => {
            return Err(RequestError::bad(
                Some(id),
                "`op` must be a string".to_string(),
            ))
        }
        None => return Err(RequestError::bad(Some(id), "missing `op`".to_string())),
    };
    for (field, max) in [
        ("key", MAX_KEY_NAME),
        ("device", MAX_KEY_NAME),
        ("name", MAX_NAME),
    ] {
        if let Some(Value::String(text)) = map.get(field) {
            check_text(field, text, max).map_err(|m| RequestError::bad(Some(id), m))?;
        }
    }
    fn body<T: DeserializeOwned>(
        id: u64,
        op: &str,
        map: Map<String, Value>,
    ) -> Result<T, RequestError> {
        serde_json::from_value(Value::Object(map))
            .map_err(|e| RequestError::bad(Some(id), format!("`{op}` request: {e}")))
    }
    let op = match op.as_str() {
        "hello" => Op::Hello(body(id, &op, map)?),
        "status" => Op::Status,
        "list_keys" => Op::ListKeys,
        "public_key" => Op::PublicKey(body(id, &op, map)?),
        "generate_key" => Op::GenerateKey(body(id, &op, map)?),
        "sign" => {
            let sign: Sign = body(id, &op, map)?;
            sign.check_payload()
                .map_err(|m| RequestError::bad(Some(id), format!("`sign` request: {m}")))?;
            Op::Sign(sign)
        }
        "attest" => Op::Attest(body(id, &op, map)?),
        "store_certificate" => Op::StoreCertificate(body(id, &op, map)?),
        "lock" => Op::Lock,
        "unlock" => Op::Unlock(body(id, &op, map)?),
        "audit_tail" => Op::AuditTail(body(id, &op, map)?),
        other => {
            return Err(RequestError {
                id: Some(id),
                error: WireError::new(
                    ErrorCode::Unsupported,
                    format!(
                        "unknown op `{}` (this agent knows hello, status, list_keys, public_key, generate_key, sign, attest, store_certificate, lock, unlock, audit_tail)",
                        other.chars().take(64).collect::<String>()
                    ),
                ),
                malformed: false,
            })
        }
    };
    Ok(Request { id, op })
}

// ---------------------------------------------------------------------------------
// Responses

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

/// One key in `list_keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// `DEVICE/LABEL`.
    pub name: String,
    /// Device name.
    pub device: String,
    /// Algorithm.
    pub alg: KeyAlg,
    /// Purposes the policy grants this key.
    pub purposes: Vec<Purpose>,
    /// Device-level reference, e.g. an RFC 7512 `pkcs11:` URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
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
    /// Object id, as given.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<Request, RequestError> {
        decode_request(s.as_bytes())
    }

    #[test]
    fn a_member_named_twice_is_refused_at_any_depth() {
        for frame in [
            r#"{"id":1,"op":"public_key","key":"hsm/a","key":"hsm/b"}"#,
            r#"{"id":1,"id":2,"op":"list_keys"}"#,
            r#"{"id":1,"op":"list_keys","x":{"a":1,"a":2}}"#,
            r#"{"id":1,"op":"list_keys","x":[{"a":1,"a":1}]}"#,
        ] {
            let e = decode(frame).unwrap_err();
            assert!(e.malformed, "{frame}");
            assert!(
                e.error.message.contains("appears twice"),
                "{}",
                e.error.message
            );
        }
        assert!(decode(r#"{"id":1,"op":"public_key","key":"hsm/a","x":{"key":"b"}}"#).is_ok());
    }

    #[test]
    fn client_strings_are_bounded_and_free_of_control_characters() {
        let sign = |name: &str| {
            decode(&format!(
                r#"{{"id":3,"op":"sign","key":"hsm/r","purpose":"blob","hash":"sha256","digest":"{}","name":{}}}"#,
                B64.encode([0u8; 32]),
                serde_json::to_string(name).unwrap()
            ))
        };
        assert!(sign(&"a".repeat(MAX_NAME)).is_ok());
        let e = sign(&"a".repeat(MAX_NAME + 1)).unwrap_err();
        assert_eq!(e.id, Some(3));
        assert!(
            e.error.message.contains("at most 1024"),
            "{}",
            e.error.message
        );
        assert!(
            !e.error.message.contains("aaaa"),
            "the string is not echoed"
        );
        let e = sign(
            "release.tar.gz
Asked by uid 0",
        )
        .unwrap_err();
        assert!(
            e.error.message.contains("control character"),
            "{}",
            e.error.message
        );
        let long_key = format!(
            r#"{{"id":4,"op":"public_key","key":"hsm/{}"}}"#,
            "k".repeat(300)
        );
        assert!(decode(&long_key)
            .unwrap_err()
            .error
            .message
            .contains("`key`"));
    }

    #[test]
    fn design_examples_decode() {
        assert_eq!(
            decode(r#"{"id":0,"op":"hello","version":1}"#).unwrap(),
            Request {
                id: 0,
                op: Op::Hello(Hello { version: 1 })
            }
        );
        assert_eq!(
            decode(r#"{"id":1,"op":"list_keys"}"#).unwrap().op,
            Op::ListKeys
        );
        assert_eq!(
            decode(r#"{"id":2,"op":"public_key","key":"hsm/release"}"#)
                .unwrap()
                .op,
            Op::PublicKey(KeyRef {
                key: "hsm/release".into()
            })
        );
        let sign = decode(
            r#"{"id":3,"op":"sign","key":"hsm/release","purpose":"digest","hash":"sha256","digest":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="}"#,
        )
        .unwrap();
        let Op::Sign(s) = sign.op else {
            panic!("not sign")
        };
        assert_eq!(s.purpose, Purpose::Digest);
        assert_eq!(s.hash, Some(HashAlg::Sha256));
        assert_eq!(s.digest.0, (0u8..32).collect::<Vec<_>>());
    }

    #[test]
    fn request_round_trip() {
        let ops = vec![
            Op::Hello(Hello { version: 1 }),
            Op::Status,
            Op::ListKeys,
            Op::PublicKey(KeyRef { key: "a/b".into() }),
            Op::GenerateKey(GenerateKey {
                key: "a/b".into(),
                alg: KeyAlg::Rsa(3072),
                touch: None,
                pin_policy: None,
            }),
            Op::GenerateKey(GenerateKey {
                key: "yk/9c".into(),
                alg: KeyAlg::P256,
                touch: Some(TouchPolicy::Cached),
                pin_policy: Some(PinPolicy::Always),
            }),
            Op::Unlock(Unlock {
                device: Some("yk".into()),
            }),
            Op::Unlock(Unlock { device: None }),
            Op::Lock,
            Op::AuditTail(AuditTail { n: Some(5) }),
            Op::Sign(Sign {
                key: "a/b".into(),
                purpose: Purpose::Blob,
                hash: Some(HashAlg::Sha384),
                digest: Bytes(vec![7; 48]),
                tbs: None,
                name: Some("release.tar.gz".into()),
                padding: Some(RsaPadding::Pss),
            }),
            Op::Sign(Sign {
                key: "a/root".into(),
                purpose: Purpose::X509Tbs,
                hash: None,
                digest: Bytes::default(),
                tbs: Some(Bytes(vec![0x30, 0x00])),
                name: None,
                padding: None,
            }),
            Op::StoreCertificate(StoreCertificate {
                key: "a/root".into(),
                object_id: "99".into(),
                label: None,
                cert: Bytes(vec![0x30, 0x00]),
            }),
        ];
        for (id, op) in ops.into_iter().enumerate() {
            let req = Request { id: id as u64, op };
            assert_eq!(decode_request(&req.to_json()).unwrap(), req);
        }
    }

    #[test]
    fn unknown_members_are_ignored() {
        let r = decode(r#"{"id":9,"op":"status","future":[1,2,3]}"#).unwrap();
        assert_eq!(
            r,
            Request {
                id: 9,
                op: Op::Status
            }
        );
    }

    #[test]
    fn non_utf8_is_malformed() {
        let e = decode_request(b"{\"id\":1,\"op\":\"\xff\"}").unwrap_err();
        assert!(e.malformed);
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        assert!(e.error.message.contains("UTF-8"), "{}", e.error.message);
    }

    #[test]
    fn non_json_is_malformed() {
        for bad in ["", "hello", "{\"id\":1", "[1,2", "{\"id\":1,}"] {
            let e = decode(bad).unwrap_err();
            assert!(e.malformed, "{bad:?}");
            assert_eq!(e.id, None);
            assert!(e.error.message.contains("not JSON"), "{}", e.error.message);
        }
    }

    #[test]
    fn truncated_json_is_malformed() {
        let full = r#"{"id":3,"op":"sign","key":"hsm/release","purpose":"digest","digest":"AAAA"}"#;
        for cut in 1..full.len() {
            let e = decode(&full[..cut]).unwrap_err();
            assert!(e.malformed, "cut at {cut}");
        }
    }

    #[test]
    fn non_object_json_is_bad_request() {
        for bad in ["[]", "1", "\"x\"", "null", "true"] {
            let e = decode(bad).unwrap_err();
            assert!(!e.malformed);
            assert_eq!(e.error.code, ErrorCode::BadRequest);
            assert_eq!(e.id, None);
        }
    }

    #[test]
    fn wrong_typed_id() {
        for bad in [
            r#"{"op":"status"}"#,
            r#"{"id":"1","op":"status"}"#,
            r#"{"id":-1,"op":"status"}"#,
            r#"{"id":1.5,"op":"status"}"#,
            r#"{"id":null,"op":"status"}"#,
        ] {
            let e = decode(bad).unwrap_err();
            assert_eq!(e.id, None, "{bad}");
            assert_eq!(e.error.code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn wrong_typed_members_keep_the_id() {
        let cases = [
            (r#"{"id":4,"op":7}"#, "`op` must be a string"),
            (r#"{"id":4}"#, "missing `op`"),
            (r#"{"id":4,"op":"hello","version":"1"}"#, "invalid type"),
            (r#"{"id":4,"op":"hello"}"#, "missing field `version`"),
            (r#"{"id":4,"op":"public_key","key":5}"#, "invalid type"),
            (
                r#"{"id":4,"op":"sign","key":"a/b","purpose":"digest","digest":"!!"}"#,
                "not base64",
            ),
            (
                r#"{"id":4,"op":"sign","key":"a/b","purpose":"nope","digest":""}"#,
                "unknown Purpose",
            ),
            (
                r#"{"id":4,"op":"sign","key":"a/b","purpose":"digest","hash":"md5","digest":""}"#,
                "unknown HashAlg",
            ),
            (
                r#"{"id":4,"op":"generate_key","key":"a/b","alg":"rsa1"}"#,
                "unknown key algorithm",
            ),
            (
                r#"{"id":4,"op":"sign","key":"a/b","purpose":"digest"}"#,
                "missing field `digest`",
            ),
            (
                r#"{"id":4,"op":"sign","key":"a/b","purpose":"x509-tbs","digest":"AAAA"}"#,
                "missing field `tbs`",
            ),
            (
                r#"{"id":4,"op":"sign","key":"a/b","purpose":"x509-tbs","tbs":"MAA=","digest":"AAAA"}"#,
                "no `digest`",
            ),
            (
                r#"{"id":4,"op":"sign","key":"a/b","purpose":"blob","tbs":"MAA=","digest":"AAAA"}"#,
                "only for purpose x509-tbs",
            ),
            (
                r#"{"id":4,"op":"store_certificate","key":"a/b","object_id":"1"}"#,
                "missing field `cert`",
            ),
        ];
        for (bad, want) in cases {
            let e = decode(bad).unwrap_err();
            assert_eq!(e.id, Some(4), "{bad}");
            assert!(!e.malformed);
            assert_eq!(e.error.code, ErrorCode::BadRequest, "{bad}");
            assert!(e.error.message.contains(want), "{bad}: {}", e.error.message);
        }
    }

    #[test]
    fn unknown_op_is_unsupported() {
        let e = decode(r#"{"id":5,"op":"format_disk"}"#).unwrap_err();
        assert_eq!(e.id, Some(5));
        assert_eq!(e.error.code, ErrorCode::Unsupported);
        assert!(e.error.message.contains("format_disk"));
    }

    #[test]
    fn responses_encode_as_designed() {
        let hello = encode_ok(
            0,
            &HelloOk {
                version: 1,
                agent: "waxseal-agent 0.1.0".into(),
            },
        );
        assert_eq!(
            std::str::from_utf8(&hello).unwrap(),
            r#"{"id":0,"ok":{"version":1,"agent":"waxseal-agent 0.1.0"}}"#
        );
        let err = encode_error(Some(3), &WireError::new(ErrorCode::PolicyDenied, "no"));
        assert_eq!(
            std::str::from_utf8(&err).unwrap(),
            r#"{"id":3,"error":{"code":"policy-denied","message":"no"}}"#
        );
        let null = encode_error(None, &WireError::new(ErrorCode::FrameTooLarge, "big"));
        assert!(std::str::from_utf8(&null)
            .unwrap()
            .starts_with(r#"{"id":null,"#));
    }

    #[test]
    fn response_decode_and_typing() {
        let r = Response::decode(br#"{"id":1,"ok":{"keys":[{"name":"hsm/release","device":"hsm","alg":"p256","purposes":["digest","blob","ssh"]}]}}"#).unwrap();
        let keys: ListKeysOk = r.into_result().unwrap();
        assert_eq!(keys.keys[0].alg, KeyAlg::P256);
        assert_eq!(
            keys.keys[0].purposes,
            vec![Purpose::Digest, Purpose::Blob, Purpose::Ssh]
        );
        let r = Response::decode(br#"{"id":3,"error":{"code":"pin-incorrect","message":"m"}}"#)
            .unwrap();
        match r.into_result::<SignOk>() {
            Err(ResponseError::Agent(e)) => assert_eq!(e.code, ErrorCode::PinIncorrect),
            other => panic!("{other:?}"),
        }
        assert!(Response::decode(br#"{"id":3}"#).is_err());
        assert!(
            Response::decode(br#"{"id":3,"ok":{},"error":{"code":"locked","message":""}}"#)
                .is_err()
        );
    }

    #[test]
    fn key_alg_words() {
        for alg in KeyAlg::GENERATABLE {
            assert_eq!(alg.to_string().parse::<KeyAlg>().unwrap(), alg);
        }
        assert_eq!("rsa8192".parse::<KeyAlg>().unwrap(), KeyAlg::Rsa(8192));
        assert!("rsa".parse::<KeyAlg>().is_err());
        assert!("p521".parse::<KeyAlg>().is_err());
        assert!(!KeyAlg::Rsa(1024).is_generatable());
        assert_eq!(KeyAlg::P384.default_hash(), HashAlg::Sha384);
    }
}
