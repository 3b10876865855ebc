//! The device seam: one synchronous trait every backend implements, and the kit all
//! backends share.
//!
//! cryptoki, tss-esapi and yubikey all block, so [`Backend`] is synchronous. A device
//! is a set of *lanes* ([`crate::worker::DeviceLanes`]): the thread serving a request
//! borrows a lane, calls the device itself and gives the lane back, with no hand-off
//! to another thread. A device that allows parallel work (a PKCS#11 token with several
//! sessions) has several lanes, each a `Backend` value sharing the device's state; a
//! YubiKey has one. A TPM's ESAPI context may not move between threads, so its one lane
//! forwards each call to the thread that owns the context ([`tpm::TpmLane`]).
//!
//! What every backend needs is written once: the PIN gate ([`pingate`]), the fault
//! kinds and the reconnect/re-login/retry loop ([`fault`]), and the structured error
//! ([`BackendError`]) that the keystore maps to protocol codes.

pub mod crypto;
pub mod fault;
pub mod pingate;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;
#[cfg(feature = "tpm")]
pub mod tpm;
#[cfg(feature = "yubikey")]
pub mod yubikey;

use crate::proto::{
    ErrorCode, HashAlg, KeyAlg, PcrSelection, PinPolicy, RsaPadding, TouchPolicy, WireError,
};
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
    /// The device's own object id of the key: a PKCS#11 private key's CKA_ID (`None`
    /// when it has none, and on devices without object ids).
    pub id: Option<Vec<u8>>,
    /// The PCRs a TPM key's policy binds it to (`None`: not bound, and on other
    /// devices).
    pub pcrs: Option<PcrSelection>,
    /// The key was brought into the device (imported), not made inside it: its
    /// device cannot attest that it never existed elsewhere.
    pub imported: bool,
}

/// A key made elsewhere, for [`Backend::import`].
pub enum ImportInput {
    /// TPM2_Duplicate's output for this TPM's storage key: TPM2B_PUBLIC,
    /// TPM2B_PRIVATE (the duplicate) and TPM2B_ENCRYPTED_SECRET (the seed), each with
    /// its size prefix.
    TpmDuplicate {
        /// TPM2B_PUBLIC.
        public: Vec<u8>,
        /// TPM2B_PRIVATE.
        duplicate: Vec<u8>,
        /// TPM2B_ENCRYPTED_SECRET.
        seed: Vec<u8>,
    },
    /// A private key wrapped under a token's secret key (PKCS#11 `C_UnwrapKey`).
    Pkcs11Wrapped {
        /// The wrapped PKCS#8 PrivateKeyInfo.
        wrapped: Vec<u8>,
        /// `CKA_LABEL` of the unwrapping secret key.
        unwrapping_key: String,
        /// The key's public key (DER SubjectPublicKeyInfo).
        public: Vec<u8>,
    },
    /// A plaintext private key (PEM), for devices that take keys in the clear (PIV).
    Pem {
        /// The PEM text; zeroized when dropped.
        pem: zeroize::Zeroizing<String>,
        /// Touch policy.
        touch: Option<TouchPolicy>,
        /// PIN policy.
        pin_policy: Option<PinPolicy>,
    },
}

impl std::fmt::Debug for ImportInput {
    /// Sizes only: a PEM key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportInput")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

impl ImportInput {
    /// What kind of import, as the audit log records it.
    pub fn kind(&self) -> &'static str {
        match self {
            ImportInput::TpmDuplicate { .. } => "tpm-duplicate",
            ImportInput::Pem { .. } => "private-key",
            ImportInput::Pkcs11Wrapped { .. } => "pkcs11-unwrap",
        }
    }
}

/// A certificate the device holds for a key, with the object that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    /// The DER X.509 certificate.
    pub der: Vec<u8>,
    /// The object's id: a PKCS#11 certificate's CKA_ID (`None` when it has none, and
    /// on devices without object ids).
    pub id: Option<Vec<u8>>,
    /// The object's label: a PKCS#11 certificate's CKA_LABEL (`None` when it has none,
    /// and on devices without object labels).
    pub label: Option<String>,
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

/// What a new key gets beyond its algorithm: a YubiKey's touch and PIN policies, a
/// PKCS#11 key pair's CKA_ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Touch policy.
    pub touch: Option<TouchPolicy>,
    /// PIN policy.
    pub pin_policy: Option<PinPolicy>,
    /// The CKA_ID of a new PKCS#11 key pair (random when `None`).
    pub id: Option<Vec<u8>>,
    /// TPM: bind the new key to these PCRs.
    pub pcrs: Option<PcrSelection>,
    /// TPM, with `pcrs`: the values to bind to, one per PCR of `pcrs` in its order
    /// (their current values when `None`).
    pub pcr_values: Option<Vec<Vec<u8>>>,
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

/// What kind of failure a [`BackendError`] is. Each code is one protocol error code
/// (docs/protocol.md §5, "Error codes"); [`BackendError::to_wire`] is where they meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The device is not there (unplugged, token missing, module not loadable).
    Absent,
    /// No key with that label.
    NoSuchKey,
    /// A key (or object) with that label or id exists already.
    KeyExists,
    /// A PIN is needed and no source gave one.
    PinRequired,
    /// The PIN was refused: by the device, or by the agent, which does not send a PIN
    /// the device refused before or spend the device's last tries.
    PinRefused,
    /// The PIN is locked (or the TPM is in dictionary-attack lockout).
    PinLocked,
    /// The device cannot do this.
    Unsupported,
    /// The request does not fit the key (wrong digest length…).
    BadRequest,
    /// The device failed.
    Failed,
    /// A TPM key bound to PCRs whose current values differ from the bound ones: the
    /// TPM refused the key's policy.
    PcrMismatch,
}

/// A backend operation that failed: what kind of failure, on which device, and what
/// happened. It displays as `device NAME: DETAIL`; the detail says what failed and
/// what to do, and never holds a PIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device {device}: {detail}")]
pub struct BackendError {
    /// What kind of failure.
    pub code: Code,
    /// The device's name from the configuration.
    pub device: String,
    /// What happened and what to do, for a person.
    pub detail: String,
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $fn:ident => $code:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $fn(device: impl Into<String>, detail: impl Into<String>) -> Self {
                Self::new(Code::$code, device, detail)
            }
        )*
    };
}

impl BackendError {
    /// An error of `code` on `device`.
    pub fn new(code: Code, device: impl Into<String>, detail: impl Into<String>) -> Self {
        BackendError {
            code,
            device: device.into(),
            detail: detail.into(),
        }
    }

    constructors! {
        /// [`Code::Absent`].
        absent => Absent;
        /// [`Code::NoSuchKey`].
        no_such_key => NoSuchKey;
        /// [`Code::KeyExists`].
        key_exists => KeyExists;
        /// [`Code::PinRequired`].
        pin_required => PinRequired;
        /// [`Code::PinRefused`].
        pin_refused => PinRefused;
        /// [`Code::PinLocked`].
        pin_locked => PinLocked;
        /// [`Code::Unsupported`].
        unsupported => Unsupported;
        /// [`Code::BadRequest`].
        bad_request => BadRequest;
        /// [`Code::Failed`].
        failed => Failed;
        /// [`Code::PcrMismatch`].
        pcr_mismatch => PcrMismatch;
    }

    /// The wire error for a client: the one place backend errors become codes.
    pub fn to_wire(&self) -> WireError {
        let code = match self.code {
            Code::Absent => ErrorCode::DeviceAbsent,
            Code::NoSuchKey => ErrorCode::UnknownKey,
            Code::KeyExists => ErrorCode::KeyExists,
            Code::PinRequired => ErrorCode::PinRequired,
            Code::PinRefused => ErrorCode::PinIncorrect,
            Code::PinLocked => ErrorCode::PinBlocked,
            Code::Unsupported => ErrorCode::Unsupported,
            Code::BadRequest => ErrorCode::BadRequest,
            Code::Failed => ErrorCode::DeviceError,
            Code::PcrMismatch => ErrorCode::PcrMismatch,
        };
        WireError::new(code, self.to_string())
    }
}

/// One lane of a device. Methods block; `&mut self` because a lane owns its session.
pub trait Backend: Send {
    /// The device's name from the configuration.
    fn name(&self) -> &str;
    /// Every signing key on the device.
    fn list_keys(&mut self) -> Result<Vec<DeviceKey>, BackendError>;
    /// The public key of `label`.
    fn public_key(&mut self, label: &str) -> Result<PublicKey, BackendError>;
    /// The DER X.509 certificate the device holds for `label`: one whose public key is
    /// the key's (docs/protocol.md, `public_key`). Looked up anew on every call, so a
    /// certificate stored meanwhile (by `store_certificate` or another tool) is found;
    /// `None` on devices that keep no certificates.
    fn certificate(&mut self, label: &str) -> Result<Option<DeviceCertificate>, BackendError> {
        let _ = label;
        Ok(None)
    }
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
            return Err(BackendError::unsupported(
                self.name(),
                "touch and PIN policies are set on YubiKey keys only",
            ));
        }
        if opts.id.is_some() {
            return Err(BackendError::bad_request(
                self.name(),
                "`raw_id` sets a PKCS#11 CKA_ID; this kind of device has no object ids",
            ));
        }
        if opts.pcrs.is_some() || opts.pcr_values.is_some() {
            return Err(BackendError::unsupported(
                self.name(),
                "PCR bindings are for TPM keys only",
            ));
        }
        self.generate(label, alg)
    }
    /// Brings a key made elsewhere into the device as `label`.
    fn import(
        &mut self,
        label: &str,
        input: &ImportInput,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        let _ = (label, input);
        Err(BackendError::unsupported(
            self.name(),
            "this kind of device does not import keys through waxseal",
        ))
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
        Err(BackendError::unsupported(
            self.name(),
            "this kind of device does not take a typed PIN",
        ))
    }
    /// Drops what the device holds of the PIN (a logged-in session, a verified card),
    /// so that the next operation needs the PIN again.
    fn forget_pin(&mut self) {}
    /// The user's go-ahead to try the PIN again: the device verifies it now, once,
    /// even below the agent's retry floor. Returns what happened.
    fn unlock(&mut self) -> Result<String, BackendError> {
        Err(BackendError::unsupported(
            self.name(),
            "this kind of device has no PIN retry floor to lift; fix its PIN source instead",
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
        Err(BackendError::unsupported(
            self.name(),
            "this kind of device has no standard key attestation",
        ))
    }
    /// Stores `cert`, a certificate for the key `label`, as an object on the device.
    fn store_certificate(&mut self, label: &str, cert: &CertObject) -> Result<(), BackendError> {
        let _ = (label, cert);
        Err(BackendError::unsupported(
            self.name(),
            "this kind of device does not store certificates for waxseal",
        ))
    }
}

/// Checks a digest against its algorithm and the key's (on `device`); returns the hash
/// to use.
pub fn digest_hash(
    device: &str,
    alg: KeyAlg,
    input: &SignInput<'_>,
) -> Result<HashAlg, BackendError> {
    if input.raw {
        // Ed25519 hashes internally (SHA-512); nothing to check but the key type.
        return match alg {
            KeyAlg::Ed25519 => Ok(HashAlg::Sha512),
            _ => Err(BackendError::bad_request(
                device,
                format!("{alg} keys sign digests, not whole messages"),
            )),
        };
    }
    let hash = input.hash.unwrap_or_else(|| alg.default_hash());
    if input.digest.len() != hash.digest_len() {
        return Err(BackendError::bad_request(
            device,
            format!(
                "digest is {} bytes but {hash} digests are {} bytes{}",
                input.digest.len(),
                hash.digest_len(),
                if input.hash.is_none() {
                    format!(" ({hash} is the default for {alg} keys; name another with `hash`)")
                } else {
                    String::new()
                }
            ),
        ));
    }
    Ok(hash)
}
