//! Requests, responses and the value types they carry.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::error::{ErrorCode, WireError};

mod approval;
mod response;
pub use approval::*;
pub use response::*;

/// The longest key NAME (and device name) a request may carry, in bytes.
pub const MAX_KEY_NAME: usize = 256;
/// The longest `message` (`sign` with an Ed25519 key) a request may carry, in bytes:
/// 64 KiB, far below [`super::MAX_FRAME`] once base64-encoded.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The longest artifact name (`sign` purpose `blob`) a request may carry, in bytes.
/// Names reach the audit log and confirmation questions, whose records and answers
/// must stay far below [`super::MAX_FRAME`].
pub const MAX_NAME: usize = 1024;
/// The longest object id (PKCS#11 `CKA_ID`) `generate_key` and `store_certificate`
/// accept, in bytes; the shortest is 1.
pub const MAX_OBJECT_ID: usize = 64;

/// Checks a raw object id (`raw_id` of `generate_key` and `store_certificate`): 1 to
/// [`MAX_OBJECT_ID`] bytes.
fn check_object_id(id: &[u8]) -> Result<(), String> {
    let field = "raw_id";
    match id.len() {
        0 => Err(format!(
            "`{field}` is empty; 1 to {MAX_OBJECT_ID} bytes are accepted"
        )),
        n if n > MAX_OBJECT_ID => Err(format!(
            "`{field}` is {n} bytes long; at most {MAX_OBJECT_ID} are accepted"
        )),
        _ => Ok(()),
    }
}

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

/// Parses JSON text in which no object names a member twice (see [`Strict`]).
pub(crate) fn strict_json(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<Strict>(text).map(|s| s.0)
}

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

mod pcr;
pub use pcr::*;

word_enum! {
    /// What a signature is for; policy decides which purposes a key serves.
    Purpose {
        /// A digest the caller computed, with its hash algorithm.
        Digest = "digest",
        /// The digest of a named artifact (Sigstore bundles).
        Blob = "blob",
        /// A DER TBSCertificate (CA keys).
        X509Tbs = "x509-tbs",
        /// A DER TBSCertList: a certificate revocation list (CA keys), read and
        /// summarised by the agent like a TBSCertificate.
        X509Crl = "x509-crl",
        /// An SSH signature request (ssh.sock only).
        Ssh = "ssh",
        /// An in-toto statement in a DSSE envelope: the agent reads the statement,
        /// builds the envelope's PAE and signs that (docs/protocol.md, `sign`).
        Attest = "attest",
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
    /// Bring a key made elsewhere into a device.
    ImportKey(ImportKey),
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
    /// An approver's signature over a pending request (docs/protocol.md, "Approvals").
    Approve(Approve),
    /// The requests waiting for approvals.
    Approvals,
    /// One request waiting for approvals, with the text to sign.
    ApprovalShow(ApprovalRef),
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
            Op::ImportKey(_) => "import_key",
            Op::Sign(_) => "sign",
            Op::Attest(_) => "attest",
            Op::StoreCertificate(_) => "store_certificate",
            Op::Lock => "lock",
            Op::Unlock(_) => "unlock",
            Op::AuditTail(_) => "audit_tail",
            Op::Approve(_) => "approve",
            Op::Approvals => "approvals",
            Op::ApprovalShow(_) => "approval_show",
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
    /// PKCS#11: the raw `CKA_ID` of the new key pair, 1 to [`MAX_OBJECT_ID`] bytes (16
    /// random bytes if absent). Other devices refuse it. `raw_id` on the wire: a
    /// request's `id` is its request id.
    #[serde(rename = "raw_id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Bytes>,
    /// TPM: bind the new key to these PCRs (its policy is TPM2_PolicyPCR over them).
    /// Other devices refuse it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcrs: Option<PcrSelection>,
    /// TPM, with `pcrs`: the values to bind to, one per PCR in `pcrs`' order (the
    /// PCRs' current values if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr_values: Option<Vec<Bytes>>,
}

impl GenerateKey {
    /// Checks `raw_id`, when given: 1 to [`MAX_OBJECT_ID`] bytes; and `pcrs` and
    /// `pcr_values` (`pcr_values` only with `pcrs`, one value of the bank's length per
    /// PCR).
    pub fn check_id(&self) -> Result<(), String> {
        self.id
            .as_ref()
            .map_or(Ok(()), |id| check_object_id(&id.0))?;
        match (&self.pcrs, &self.pcr_values) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err("`pcr_values` needs `pcrs`".into()),
            (Some(sel), values) => {
                sel.check().map_err(|e| format!("`pcrs`: {e}"))?;
                values.as_ref().map_or(Ok(()), |v| {
                    check_pcr_values(sel, v).map_err(|e| format!("`pcr_values`: {e}"))
                })
            }
        }
    }
}

/// The largest TPM2B part of a TPM duplicate (`public`, `duplicate`, `seed`) that
/// `import_key` accepts, in bytes: the TPM's own buffers are smaller (a TPM2B_PUBLIC of
/// an RSA 4096 key with a policy is under 700 bytes).
pub const MAX_TPM_BLOB: usize = 4096;
/// The largest PEM private key `import_key` accepts for a YubiKey, in bytes (an RSA
/// 2048 PKCS#8 PEM is about 1.7 KiB).
pub const MAX_IMPORT_PEM: usize = 16 * 1024;

/// A key wrapped for a TPM's storage key elsewhere (TPM2_Duplicate's output): each part
/// as tpm2-tools writes it, a TPM2B with its 2-byte size.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct TpmDuplicate {
    /// TPM2B_PUBLIC of the key.
    pub public: Bytes,
    /// TPM2B_PRIVATE: the duplicate (the key's sensitive area under the outer wrapper).
    pub duplicate: Bytes,
    /// TPM2B_ENCRYPTED_SECRET: the seed, encrypted to the target storage key.
    pub seed: Bytes,
}

impl fmt::Debug for TpmDuplicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmDuplicate")
            .field("public", &self.public.0.len())
            .field("duplicate", &self.duplicate.0.len())
            .field("seed", &self.seed.0.len())
            .finish()
    }
}

/// A private key wrapped under a secret key on a PKCS#11 token, for `C_UnwrapKey`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pkcs11Wrapped {
    /// The wrapped key: a PKCS#8 PrivateKeyInfo under `mechanism`.
    pub wrapped: Bytes,
    /// `CKA_LABEL` of the token's secret key that unwraps it.
    pub unwrapping_key: String,
    /// The unwrap mechanism: `aes-key-wrap-pad` (CKM_AES_KEY_WRAP_PAD, RFC 5649).
    pub mechanism: String,
    /// The key's public key, DER SubjectPublicKeyInfo: stored as the key's public key
    /// object once the token has shown that it belongs to the unwrapped key.
    pub public: Bytes,
}

/// `import_key`: exactly one of `tpm_duplicate` (TPM devices), `pem` (YubiKeys) and
/// `pkcs11_wrapped` (PKCS#11 tokens).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportKey {
    /// NAME of the new key, `DEVICE/LABEL`.
    pub key: String,
    /// TPM: the wrapped key; its plaintext is never sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm_duplicate: Option<TpmDuplicate>,
    /// PKCS#11: a key wrapped under a secret key of the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11_wrapped: Option<Pkcs11Wrapped>,
    /// YubiKey: the private key as PEM (PKCS#8 or SEC1/PKCS#1). A PIV card takes the
    /// key in the clear (its import command has no wrapping), so this one crosses the
    /// socket; the agent zeroizes it after use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
    /// YubiKey: touch policy (the card's default if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub touch: Option<TouchPolicy>,
    /// YubiKey: PIN policy (the card's default if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_policy: Option<PinPolicy>,
}

impl fmt::Debug for ImportKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportKey")
            .field("key", &self.key)
            .field("tpm_duplicate", &self.tpm_duplicate)
            .field(
                "pkcs11_wrapped",
                &self.pkcs11_wrapped.as_ref().map(|w| &w.unwrapping_key),
            )
            .field("pem", &self.pem.as_ref().map(|_| "<redacted>"))
            .field("touch", &self.touch)
            .field("pin_policy", &self.pin_policy)
            .finish()
    }
}

impl ImportKey {
    /// Checks that one kind of key is given and that it is within its bounds.
    pub fn check(&self) -> Result<(), String> {
        let given = [
            self.tpm_duplicate.is_some(),
            self.pem.is_some(),
            self.pkcs11_wrapped.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            return Err(
                "give exactly one of `tpm_duplicate` (a TPM), `pem` (a YubiKey) and `pkcs11_wrapped` (a PKCS#11 token)"
                    .into(),
            );
        }
        if (self.touch.is_some() || self.pin_policy.is_some()) && self.pem.is_none() {
            return Err("touch and PIN policies are for YubiKey keys (`pem`)".into());
        }
        if let Some(d) = &self.tpm_duplicate {
            for (field, b) in [
                ("public", &d.public),
                ("duplicate", &d.duplicate),
                ("seed", &d.seed),
            ] {
                if b.0.len() < 2 || b.0.len() > MAX_TPM_BLOB {
                    return Err(format!(
                        "`tpm_duplicate.{field}` is {} bytes long; 2 to {MAX_TPM_BLOB} are accepted",
                        b.0.len()
                    ));
                }
            }
        }
        if let Some(p) = &self.pem {
            if p.len() > MAX_IMPORT_PEM {
                return Err(format!(
                    "`pem` is {} bytes long; at most {MAX_IMPORT_PEM} are accepted",
                    p.len()
                ));
            }
        }
        if let Some(w) = &self.pkcs11_wrapped {
            for (field, b) in [("wrapped", &w.wrapped), ("public", &w.public)] {
                if b.0.is_empty() || b.0.len() > MAX_IMPORT_PEM {
                    return Err(format!(
                        "`pkcs11_wrapped.{field}` is {} bytes long; 1 to {MAX_IMPORT_PEM} are accepted",
                        b.0.len()
                    ));
                }
            }
            check_text(
                "pkcs11_wrapped.unwrapping_key",
                &w.unwrapping_key,
                MAX_KEY_NAME,
            )?;
            if w.mechanism != "aes-key-wrap-pad" {
                return Err(format!(
                    "`pkcs11_wrapped.mechanism` must be `aes-key-wrap-pad` (CKM_AES_KEY_WRAP_PAD), not `{}`",
                    w.mechanism.chars().take(64).collect::<String>()
                ));
            }
        }
        Ok(())
    }
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
/// bytes of `object_id` or the raw bytes of `id`, CKA_LABEL = `label`). The certificate
/// must be for `key`. Exactly one of `object_id` and `id` is given
/// ([`StoreCertificate::check_id`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreCertificate {
    /// Key NAME whose certificate this is.
    pub key: String,
    /// Object id (CKA_ID, as ASCII bytes), 1 to [`MAX_OBJECT_ID`] characters; refused
    /// when an object has it already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// Object id as raw bytes (CKA_ID), 1 to [`MAX_OBJECT_ID`]; instead of `object_id`.
    /// `raw_id` on the wire: a request's `id` is its request id.
    #[serde(rename = "raw_id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Bytes>,
    /// Object label; `PKCS11CA` (what Fulcio's pkcs11ca looks for) if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The DER certificate.
    pub cert: Bytes,
}

impl StoreCertificate {
    /// Checks the object id: exactly one of `object_id` (1 to [`MAX_OBJECT_ID`]
    /// characters) and `raw_id` (1 to [`MAX_OBJECT_ID`] bytes).
    pub fn check_id(&self) -> Result<(), String> {
        match (&self.object_id, &self.id) {
            (Some(_), Some(_)) => Err(
                "`object_id` and `raw_id` exclude each other: give the CKA_ID as ASCII (`object_id`) or as raw bytes (`raw_id`), not both".into(),
            ),
            (None, None) => Err(
                "missing `object_id` or `raw_id`: the CKA_ID of the certificate object, as ASCII (`object_id`) or as raw bytes (`raw_id`)".into(),
            ),
            (Some(text), None) if text.is_empty() || text.len() > MAX_OBJECT_ID => Err(format!(
                "`object_id` must be 1 to {MAX_OBJECT_ID} characters"
            )),
            (Some(_), None) => Ok(()),
            (None, Some(id)) => check_object_id(&id.0),
        }
    }

    /// The CKA_ID to store: the ASCII bytes of `object_id`, or `id`. Empty when neither
    /// is given (which [`StoreCertificate::check_id`] refuses).
    pub fn cka_id(&self) -> &[u8] {
        match (&self.object_id, &self.id) {
            (Some(text), _) => text.as_bytes(),
            (None, Some(id)) => &id.0,
            (None, None) => &[],
        }
    }
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
    /// The DER TBSCertificate to sign (`x509-tbs`), or TBSCertList (`x509-crl`): the
    /// agent parses it, checks it
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
    /// The whole message to sign (purpose `digest`, Ed25519 keys only: PureEdDSA signs
    /// the message itself), 1 to [`MAX_MESSAGE`] bytes; instead of `digest` and `hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Bytes>,
    /// The in-toto statement to sign (purpose `attest`), 1 to
    /// [`crate::intoto::MAX_STATEMENT`] bytes: the DSSE payload. The agent signs the
    /// PAE of it with payload type `application/vnd.in-toto+json`; instead of `digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<Bytes>,
}

impl Sign {
    /// Checks that the payload fits the purpose: `tbs` for `x509-tbs`, `message` or
    /// `digest` for `digest`, `digest` for the others, never two of them.
    fn check_payload(&self) -> Result<(), String> {
        if let Some(message) = &self.message {
            return self.check_message(message);
        }
        if self.purpose == Purpose::Attest || self.statement.is_some() {
            return self.check_statement();
        }
        if self.purpose == Purpose::X509Crl {
            return match (self.tbs.is_some(), self.digest.is_empty()) {
                (true, true) if self.hash.is_some() || self.padding.is_some() => Err(
                    "purpose x509-crl takes no `hash` or `padding`: the TBSCertList's signature algorithm names them".into(),
                ),
                (true, true) => Ok(()),
                (false, _) => Err(
                    "missing field `tbs` (purpose x509-crl signs a DER TBSCertList)".into(),
                ),
                (true, false) => Err(
                    "purpose x509-crl takes `tbs` and no `digest`: the agent hashes the TBSCertList itself".into(),
                ),
            };
        }
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
                "`tbs` is only for purpose x509-tbs or x509-crl, not {}",
                self.purpose
            )),
            (_, false, true) => Err("missing field `digest`".into()),
            (_, false, false) => Ok(()),
        }
    }

    /// `statement` (docs/protocol.md, `sign`): purpose `attest` only, alone (no
    /// `digest`, `tbs` or `message`), 1 to [`crate::intoto::MAX_STATEMENT`] bytes. What
    /// the statement says is read by the agent ([`crate::intoto::Statement::parse`]).
    fn check_statement(&self) -> Result<(), String> {
        use crate::intoto::MAX_STATEMENT;
        let Some(statement) = &self.statement else {
            return Err(
                "missing field `statement` (purpose attest signs an in-toto statement)".into(),
            );
        };
        if self.purpose != Purpose::Attest {
            return Err(format!(
                "`statement` is only for purpose attest, not {}",
                self.purpose
            ));
        }
        if !self.digest.is_empty() || self.tbs.is_some() || self.message.is_some() {
            return Err(
                "purpose attest takes `statement` alone: the agent builds and hashes the DSSE PAE itself, so `digest`, `tbs` and `message` are refused".into(),
            );
        }
        match statement.0.len() {
            0 => Err(format!(
                "`statement` is empty; 1 to {MAX_STATEMENT} bytes are accepted"
            )),
            n if n > MAX_STATEMENT => Err(format!(
                "`statement` is {n} bytes long; at most {MAX_STATEMENT} are accepted"
            )),
            _ => Ok(()),
        }
    }

    /// `message` (docs/protocol.md, `sign`): purpose `digest` only, alone (no `digest`,
    /// `hash` or `tbs`), 1 to [`MAX_MESSAGE`] bytes. Whether the key is Ed25519 is
    /// known only to the agent.
    fn check_message(&self, message: &Bytes) -> Result<(), String> {
        if self.purpose != Purpose::Digest {
            return Err(format!(
                "`message` is only for purpose digest, not {}",
                self.purpose
            ));
        }
        if !self.digest.is_empty() || self.tbs.is_some() {
            return Err(
                "`message` and `digest` exclude each other: send the whole message (Ed25519 keys) or a digest, not both".into(),
            );
        }
        if self.hash.is_some() {
            return Err(
                "`message` takes no `hash`: an Ed25519 key hashes the message itself".into(),
            );
        }
        match message.0.len() {
            0 => Err(format!(
                "`message` is empty; 1 to {MAX_MESSAGE} bytes are accepted"
            )),
            n if n > MAX_MESSAGE => Err(format!(
                "`message` is {n} bytes long; at most {MAX_MESSAGE} are accepted (sign a digest of a longer message)"
            )),
            _ => Ok(()),
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
        "generate_key" => {
            let generate: GenerateKey = body(id, &op, map)?;
            generate.check_id().map_err(|m| {
                RequestError::bad(Some(id), format!("`generate_key` request: {m}"))
            })?;
            Op::GenerateKey(generate)
        }
        "import_key" => {
            let import: ImportKey = body(id, &op, map)?;
            import
                .check()
                .map_err(|m| RequestError::bad(Some(id), format!("`import_key` request: {m}")))?;
            Op::ImportKey(import)
        }
        "sign" => {
            let sign: Sign = body(id, &op, map)?;
            sign.check_payload()
                .map_err(|m| RequestError::bad(Some(id), format!("`sign` request: {m}")))?;
            Op::Sign(sign)
        }
        "attest" => Op::Attest(body(id, &op, map)?),
        "store_certificate" => {
            let store: StoreCertificate = body(id, &op, map)?;
            store.check_id().map_err(|m| {
                RequestError::bad(Some(id), format!("`store_certificate` request: {m}"))
            })?;
            Op::StoreCertificate(store)
        }
        "lock" => Op::Lock,
        "unlock" => Op::Unlock(body(id, &op, map)?),
        "audit_tail" => Op::AuditTail(body(id, &op, map)?),
        "approve" => {
            let approve: Approve = body(id, &op, map)?;
            approve
                .check()
                .map_err(|m| RequestError::bad(Some(id), format!("`approve` request: {m}")))?;
            Op::Approve(approve)
        }
        "approvals" => Op::Approvals,
        "approval_show" => {
            let show: ApprovalRef = body(id, &op, map)?;
            show.check().map_err(|m| {
                RequestError::bad(Some(id), format!("`approval_show` request: {m}"))
            })?;
            Op::ApprovalShow(show)
        }
        other => {
            return Err(RequestError {
                id: Some(id),
                error: WireError::new(
                    ErrorCode::Unsupported,
                    format!(
                        "unknown op `{}` (this agent knows hello, status, list_keys, public_key, generate_key, import_key, sign, attest, store_certificate, lock, unlock, audit_tail, approve, approvals, approval_show)",
                        other.chars().take(64).collect::<String>()
                    ),
                ),
                malformed: false,
            })
        }
    };
    Ok(Request { id, op })
}

#[cfg(test)]
mod tests;
