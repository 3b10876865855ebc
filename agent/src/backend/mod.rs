//! The device seam: one synchronous trait every backend implements.
//!
//! cryptoki, tss-esapi and yubikey all block and are not `Sync`, so a backend is driven
//! by its own worker thread(s) ([`crate::worker`]); async code only sends it jobs. A
//! device that allows parallel work (a PKCS#11 token with several sessions) gives the
//! worker several *lanes*, each a `Backend` value sharing the device's state.

pub mod crypto;
pub mod pingate;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
#[cfg(feature = "tpm")]
pub mod tpm;
#[cfg(feature = "yubikey")]
pub mod yubikey;

use crate::proto::{ErrorCode, HashAlg, KeyAlg, PinPolicy, RsaPadding, TouchPolicy, WireError};
pub use crate::x509::CertObject;

/// A key as a device lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey {
    /// Label on the device: the second half of the key NAME.
    pub label: String,
    /// Algorithm.
    pub alg: KeyAlg,
    /// Device-level reference (an RFC 7512 URI for PKCS#11).
    pub uri: Option<String>,
}

/// A public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Algorithm.
    pub alg: KeyAlg,
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
}

/// What to sign: a digest (ECDSA, RSA) or, for Ed25519, these bytes as the message.
#[derive(Debug, Clone, Copy)]
pub struct SignInput<'a> {
    /// The digest.
    pub digest: &'a [u8],
    /// Its algorithm, if the request named one; otherwise the key's default.
    pub hash: Option<HashAlg>,
    /// RSA padding.
    pub padding: RsaPadding,
    /// Sign `digest` as the whole message (Ed25519 SSH signatures), not as a digest.
    pub raw: bool,
}

/// What a new key gets beyond its algorithm: a YubiKey's touch and PIN policies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Touch policy.
    pub touch: Option<TouchPolicy>,
    /// PIN policy.
    pub pin_policy: Option<PinPolicy>,
}

/// A signature and how it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// DER for ECDSA; raw for RSA and Ed25519.
    pub signature: Vec<u8>,
    /// The key's algorithm.
    pub alg: KeyAlg,
    /// The hash the digest was taken to be.
    pub hash: HashAlg,
}

/// Status of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// What it says of itself, e.g. `SoftHSM project SoftHSM v2 token 'waxseal' serial 1234`.
    pub detail: String,
    /// How many keys it holds.
    pub keys: usize,
}

/// Evidence that a key lives in the device, in a device-specific JSON form
/// (documented in docs/protocol.md under `attest`).
#[derive(Debug, Clone, PartialEq)]
pub struct Attestation {
    /// What kind of evidence: `tpm2-certify`, `piv-attestation`.
    pub format: String,
    /// The evidence.
    pub evidence: serde_json::Value,
}

/// A backend operation that failed. Messages say what failed and what to do; they
/// never hold a PIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The device is not there (unplugged, token missing, module not loadable).
    #[error("{0}")]
    Absent(String),
    /// No key with that label.
    #[error("{0}")]
    UnknownKey(String),
    /// A key with that label exists already.
    #[error("{0}")]
    KeyExists(String),
    /// A PIN is needed and no source gave one.
    #[error("{0}")]
    PinRequired(String),
    /// The device refused the PIN.
    #[error("{0}")]
    PinIncorrect(String),
    /// The PIN is locked.
    #[error("{0}")]
    PinBlocked(String),
    /// The device cannot do this.
    #[error("{0}")]
    Unsupported(String),
    /// The request does not fit the key (wrong digest length…).
    #[error("{0}")]
    BadRequest(String),
    /// The device failed.
    #[error("{0}")]
    Device(String),
}

impl BackendError {
    /// The wire error for a client: the one place backend errors become codes.
    pub fn to_wire(&self) -> WireError {
        let code = match self {
            BackendError::Absent(_) => ErrorCode::DeviceAbsent,
            BackendError::UnknownKey(_) => ErrorCode::UnknownKey,
            BackendError::KeyExists(_) => ErrorCode::KeyExists,
            BackendError::PinRequired(_) => ErrorCode::PinRequired,
            BackendError::PinIncorrect(_) => ErrorCode::PinIncorrect,
            BackendError::PinBlocked(_) => ErrorCode::PinBlocked,
            BackendError::Unsupported(_) => ErrorCode::Unsupported,
            BackendError::BadRequest(_) => ErrorCode::BadRequest,
            BackendError::Device(_) => ErrorCode::DeviceError,
        };
        WireError::new(code, self.to_string())
    }
}

/// One lane of a device. Methods block; `&mut self` because a lane owns its session.
pub trait Backend: Send {
    /// Every signing key on the device.
    fn list_keys(&mut self) -> Result<Vec<DeviceKey>, BackendError>;
    /// The public key of `label`.
    fn public_key(&mut self, label: &str) -> Result<PublicKey, BackendError>;
    /// Generates a key on the device; the private half never leaves it.
    fn generate(
        &mut self,
        label: &str,
        alg: KeyAlg,
    ) -> Result<(DeviceKey, PublicKey), BackendError>;
    /// Generates a key with `opts`; devices without such options refuse them.
    fn generate_with(
        &mut self,
        label: &str,
        alg: KeyAlg,
        opts: &GenerateOptions,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        if opts.touch.is_some() || opts.pin_policy.is_some() {
            return Err(BackendError::Unsupported(
                "touch and PIN policies are set on YubiKey keys only".into(),
            ));
        }
        self.generate(label, alg)
    }
    /// Signs with `label`.
    fn sign(&mut self, label: &str, input: &SignInput<'_>) -> Result<Signed, BackendError>;
    /// What to tell the user before signing with `label` when the device will wait
    /// for a touch (`None`: no touch needed).
    fn touch_notice(&mut self, label: &str) -> Option<String> {
        let _ = label;
        None
    }
    /// With `pin = "prompt"`: the question to ask the requesting person when the next
    /// operation needs a login, `None` when it does not (or the source is another).
    fn pin_needed(&mut self) -> Option<String> {
        None
    }
    /// Logs in with a PIN the requesting person typed (`pin = "prompt"`). A refused
    /// PIN is remembered like any other and never tried again.
    fn login_with(&mut self, pin: secrecy::SecretString) -> Result<(), BackendError> {
        drop(pin);
        Err(BackendError::Unsupported(
            "this kind of device does not take a typed PIN".into(),
        ))
    }
    /// Drops what the device holds of the PIN (a logged-in session, a verified card),
    /// so that the next operation needs the PIN again.
    fn forget_pin(&mut self) {}
    /// The user's go-ahead to try the PIN again: the device verifies it now, once,
    /// even below the agent's retry floor. Returns what happened.
    fn unlock(&mut self) -> Result<String, BackendError> {
        Err(BackendError::Unsupported(
            "this kind of device has no PIN retry floor to lift; fix its PIN source instead".into(),
        ))
    }
    /// Device status; connects if needed.
    fn info(&mut self) -> Result<DeviceInfo, BackendError>;
    /// Whether the device is there, found without a PIN (for presence polling, which
    /// must not log in: that would take back PINs that a lock dropped).
    fn present(&mut self) -> bool {
        self.info().is_ok()
    }
    /// Evidence from the device that `label` was made inside it, bound to `nonce`.
    fn attest(&mut self, label: &str, nonce: &[u8]) -> Result<Attestation, BackendError> {
        let _ = (label, nonce);
        Err(BackendError::Unsupported(
            "this kind of device has no standard key attestation".into(),
        ))
    }
    /// Stores `cert`, a certificate for the key `label`, as an object on the device.
    fn store_certificate(&mut self, label: &str, cert: &CertObject) -> Result<(), BackendError> {
        let _ = (label, cert);
        Err(BackendError::Unsupported(
            "this kind of device does not store certificates for waxseal".into(),
        ))
    }
}

/// Checks a digest against its algorithm and the key's; returns the hash to use.
pub fn digest_hash(alg: KeyAlg, input: &SignInput<'_>) -> Result<HashAlg, BackendError> {
    if input.raw {
        // Ed25519 hashes internally (SHA-512); nothing to check but the key type.
        return match alg {
            KeyAlg::Ed25519 => Ok(HashAlg::Sha512),
            _ => Err(BackendError::BadRequest(format!(
                "{alg} keys sign digests, not whole messages"
            ))),
        };
    }
    let hash = input.hash.unwrap_or_else(|| alg.default_hash());
    if input.digest.len() != hash.digest_len() {
        return Err(BackendError::BadRequest(format!(
            "digest is {} bytes but {hash} digests are {} bytes{}",
            input.digest.len(),
            hash.digest_len(),
            if input.hash.is_none() {
                format!(" ({hash} is the default for {alg} keys; name another with `hash`)")
            } else {
                String::new()
            }
        )));
    }
    Ok(hash)
}
