//! PKCS#11 backend (cryptoki): one token of one module.
//!
//! A device is a set of *lanes* sharing one [`Shared`] state: the module context, the
//! slot, the login state and a cache of key handles. Each lane owns its own session, so
//! a token that allows parallel sessions signs on several threads. Login is app-wide in
//! PKCS#11 and happens under the shared lock, once; a PIN the token refused is never
//! tried again (its fingerprint is kept) — a wrong PIN file costs exactly one try.
//!
//! Connection is lazy and self-healing: each module error is sorted into a
//! [`Fault`](super::fault::Fault) ([`session`] says which `CKR_…` is which), and the
//! backend kit's retry loop reconnects (finding the token again: its slot id may have
//! changed), logs in again or reloads the key handles, then tries once more.
//!
//! - [`session`]: finding the token, sessions, login, faults and healing.
//! - [`keys`]: reading keys (and the certificates for them) from the token and
//!   signing with them.

mod import;
mod keys;
mod session;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, CertificateType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use secrecy::SecretString;
use tracing::{info, warn};

use self::keys::{find_certificate, finish, id_taken, public_of, sign_with, unknown_key};
use super::crypto::{OID_ED25519, OID_P256, OID_P384};
use super::fault::Recover as _;
use super::pingate::PinGate;
use super::{
    digest_hash, Attestation, Backend, BackendError, CertObject, DeviceCertificate, DeviceInfo,
    DeviceKey, GenerateOptions, PublicKey, SignInput, Signed,
};
use crate::config::TokenSelector;
use crate::pin::PinSource;
use crate::proto::KeyAlg;

/// Settings of one PKCS#11 device.
#[derive(Debug, Clone)]
pub struct Pkcs11Settings {
    /// Device name (for messages).
    pub name: String,
    /// Module path.
    pub module: PathBuf,
    /// Which token.
    pub token: TokenSelector,
    /// PIN source.
    pub pin: Option<PinSource>,
    /// Number of lanes (sessions).
    pub sessions: usize,
}

/// Opens a device: returns its lanes. Nothing is loaded until the first request.
pub fn open(settings: Pkcs11Settings) -> Vec<Box<dyn Backend>> {
    let lanes = settings.sessions.max(1);
    let shared = Arc::new(Shared {
        settings,
        conn: Mutex::new(Conn::default()),
        live: AtomicU64::new(0),
    });
    (0..lanes)
        .map(|_| {
            Box::new(Lane {
                shared: shared.clone(),
                session: None,
                keys: HashMap::new(),
            }) as Box<dyn Backend>
        })
        .collect()
}

/// Modules are loaded and initialised once per process, whatever number of devices
/// use them (C_Initialize may be called once).
fn module(device: &str, path: &Path) -> Result<Pkcs11, BackendError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = lock(MODULES.get_or_init(Default::default));
    if let Some(ctx) = modules.get(path) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(path).map_err(|e| {
        BackendError::absent(device, format!(
            "cannot load PKCS#11 module {}: {e} (is it installed? scripts/install-deps installs SoftHSM2)",
            path.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(BackendError::absent(
                device,
                format!(
                    "PKCS#11 module {} failed to initialise: {e}",
                    path.display()
                ),
            ))
        }
    }
    modules.insert(path.to_path_buf(), ctx.clone());
    Ok(ctx)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Shared {
    settings: Pkcs11Settings,
    conn: Mutex<Conn>,
    /// The generation of the live connection, 0 when disconnected: a lane whose session
    /// is of this generation may sign with its own copy of the key handles, without
    /// taking `conn`.
    live: AtomicU64,
}

#[derive(Default)]
struct Conn {
    /// Bumped on every (re)connect; lanes drop sessions of older generations.
    generation: u64,
    link: Option<Link>,
    logged_in: bool,
    /// The PIN the token refused last, never sent again.
    pins: PinGate,
    /// A PIN the client typed (`pin = "prompt"`), for the next login.
    pending_pin: Option<SecretString>,
    keys: HashMap<String, KeyEntry>,
    keys_loaded: bool,
}

#[derive(Clone)]
struct Link {
    ctx: Pkcs11,
    slot: Slot,
}

#[derive(Debug, Clone)]
struct KeyEntry {
    handle: ObjectHandle,
    alg: KeyAlg,
    id: Vec<u8>,
    spki: Option<Vec<u8>>,
    /// `CKA_LOCAL`: generated on the token (false: unwrapped or created from outside).
    local: bool,
}

struct Lane {
    shared: Arc<Shared>,
    session: Option<(u64, Session)>,
    /// This lane's copy of the key handles, taken while its session's generation was live.
    keys: HashMap<String, KeyEntry>,
}

impl Backend for Lane {
    fn name(&self) -> &str {
        self.shared.name()
    }

    fn list_keys(&mut self) -> Result<Vec<DeviceKey>, BackendError> {
        let shared = self.shared.clone();
        self.with_retry(|conn, link, session| {
            // Always rescan: keys may have been added by other tools.
            shared.load_keys(conn, session)?;
            let mut keys: Vec<DeviceKey> = conn
                .keys
                .iter()
                .map(|(label, e)| DeviceKey {
                    label: label.clone(),
                    alg: e.alg,
                    uri: Some(shared.uri(link, label, &e.id)),
                    id: (!e.id.is_empty()).then(|| e.id.clone()),
                    pcrs: None,
                    imported: !e.local,
                })
                .collect();
            keys.sort_by(|a, b| a.label.cmp(&b.label));
            Ok(keys)
        })
    }

    fn public_key(&mut self, label: &str) -> Result<PublicKey, BackendError> {
        let entry = self.entry(label)?;
        public_of(self.shared.name(), label, &entry)
    }

    fn certificate(&mut self, label: &str) -> Result<Option<DeviceCertificate>, BackendError> {
        let entry = self.entry(label)?;
        let Some(spki) = entry.spki else {
            return Ok(None);
        };
        self.with_retry(|_, _, session| Ok(find_certificate(session, &spki, &entry.id)?))
    }

    fn generate(
        &mut self,
        label: &str,
        alg: KeyAlg,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        self.generate_with(label, alg, &GenerateOptions::default())
    }

    /// Generates a key pair with CKA_ID `opts.id`, or 16 random bytes (docs/protocol.md,
    /// `generate_key`).
    fn generate_with(
        &mut self,
        label: &str,
        alg: KeyAlg,
        opts: &GenerateOptions,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        let shared = self.shared.clone();
        let name = shared.name().to_string();
        if opts.touch.is_some() || opts.pin_policy.is_some() {
            return Err(BackendError::unsupported(
                &name,
                "touch and PIN policies are set on YubiKey keys only",
            ));
        }
        if !alg.is_generatable() {
            return Err(BackendError::unsupported(
                &name,
                format!(
                    "cannot generate {alg} keys (p256, p384, rsa2048, rsa3072, rsa4096, ed25519)"
                ),
            ));
        }
        self.with_retry(|conn, link, session| {
            shared.load_keys(conn, session)?;
            if conn.keys.contains_key(label) {
                return Err(BackendError::key_exists(
                    &name,
                    format!("a key labelled '{label}' exists already; choose another name"),
                )
                .into());
            }
            if let Some(id) = &opts.id {
                if !session
                    .find_objects(&[Attribute::Id(id.clone())])?
                    .is_empty()
                {
                    return Err(id_taken(&name, id).into());
                }
            }
            let mechs = link.ctx.get_mechanism_list(link.slot)?;
            let (mech, mech_type, mut public, mut private) = match alg {
                KeyAlg::P256 | KeyAlg::P384 => (
                    Mechanism::EccKeyPairGen,
                    MechanismType::ECC_KEY_PAIR_GEN,
                    vec![Attribute::EcParams(
                        if alg == KeyAlg::P256 {
                            OID_P256
                        } else {
                            OID_P384
                        }
                        .to_vec(),
                    )],
                    vec![Attribute::Derive(false)],
                ),
                KeyAlg::Ed25519 => (
                    Mechanism::EccEdwardsKeyPairGen,
                    MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
                    vec![Attribute::EcParams(OID_ED25519.to_vec())],
                    vec![Attribute::Derive(false)],
                ),
                KeyAlg::Rsa(bits) => (
                    Mechanism::RsaPkcsKeyPairGen,
                    MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                    vec![
                        Attribute::ModulusBits(u64::from(bits).into()),
                        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                    ],
                    vec![],
                ),
            };
            if !mechs.contains(&mech_type) {
                return Err(BackendError::unsupported(
                    &name,
                    format!("cannot generate {alg} keys (the token lacks {mech_type})"),
                )
                .into());
            }
            let id = match &opts.id {
                Some(id) => id.clone(),
                None => {
                    let mut id = vec![0u8; 16];
                    getrandom::getrandom(&mut id).map_err(|e| {
                        BackendError::failed(&name, format!("no randomness for the key id: {e}"))
                    })?;
                    id
                }
            };
            let common = |v: &mut Vec<Attribute>| {
                v.push(Attribute::Token(true));
                v.push(Attribute::Label(label.as_bytes().to_vec()));
                v.push(Attribute::Id(id.clone()));
            };
            // Signing keys only: tokens default other usages to true (SoftHSM2 does).
            common(&mut public);
            public.extend([
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Wrap(false),
            ]);
            common(&mut private);
            private.extend([
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Unwrap(false),
            ]);
            let (_, handle) = session.generate_key_pair(&mech, &public, &private)?;
            info!(device = %name, label, %alg, "generated a key on the token");
            let Some((_, entry)) = shared.read_key(session, handle)? else {
                return Err(BackendError::failed(&name, "the new key cannot be read back").into());
            };
            let public = public_of(&name, label, &entry)?;
            let key = DeviceKey {
                label: label.to_string(),
                alg: entry.alg,
                uri: Some(shared.uri(link, label, &entry.id)),
                id: (!entry.id.is_empty()).then(|| entry.id.clone()),
                pcrs: None,
                imported: false,
            };
            conn.keys.insert(label.to_string(), entry);
            Ok((key, public))
        })
    }

    fn import(
        &mut self,
        label: &str,
        input: &super::ImportInput,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        match input {
            super::ImportInput::Pkcs11Wrapped {
                wrapped,
                unwrapping_key,
                public,
            } => self.import_wrapped(label, wrapped, unwrapping_key, public),
            _ => Err(BackendError::unsupported(
                self.shared.name(),
                "a PKCS#11 token imports a key wrapped under one of its secret keys (C_UnwrapKey): `pkcs11_wrapped`",
            )),
        }
    }

    fn sign(&mut self, label: &str, input: &SignInput<'_>) -> Result<Signed, BackendError> {
        if let Some(done) = self.fast_sign(label, input) {
            return done;
        }
        let name = self.shared.settings.name.clone();
        // A label not found is looked for again after a rescan of the token, then
        // after a reconnect: a token that was removed and put back (or a token
        // directory taken away and restored) is found again only through new sessions.
        for attempt in 0..3 {
            let found = self.with_retry(|conn, _, _| Ok(conn.keys.get(label).cloned()))?;
            let entry = match found {
                Some(e) => e,
                None if attempt == 0 => {
                    self.refind();
                    continue;
                }
                None if attempt == 1 => {
                    self.reconnect();
                    continue;
                }
                None => break,
            };
            let hash = digest_hash(&name, entry.alg, input)?;
            let mut fresh = None;
            let raw = self.with_retry(|conn, _, session| {
                // The handle may have been refreshed by a retry.
                let handle = conn.keys.get(label).map_or(entry.handle, |e| e.handle);
                let raw = sign_with(session, handle, entry.alg, hash, input)?;
                fresh = Some(conn.keys.clone());
                Ok(raw)
            })?;
            if let (Some(keys), Some((generation, _))) = (fresh, &self.session) {
                if *generation == self.shared.live.load(Ordering::Acquire) {
                    self.keys = keys;
                }
            }
            return finish(&name, entry.alg, hash, raw);
        }
        Err(unknown_key(&name, label))
    }

    fn info(&mut self) -> Result<DeviceInfo, BackendError> {
        let (keys, link) = self.with_retry(|conn, link, _| Ok((conn.keys.len(), link.clone())))?;
        let t = link.ctx.get_token_info(link.slot).map_err(|e| {
            BackendError::absent(self.shared.name(), format!("C_GetTokenInfo failed: {e}"))
        })?;
        Ok(DeviceInfo {
            detail: format!(
                "{} {} token '{}' serial {}",
                t.manufacturer_id().trim_end(),
                t.model().trim_end(),
                t.label().trim_end(),
                t.serial_number().trim_end()
            ),
            keys,
        })
    }

    fn present(&mut self) -> bool {
        let shared = self.shared.clone();
        let mut conn = lock(&shared.conn);
        let Ok(link) = shared.connect(&mut conn) else {
            return false;
        };
        if link.ctx.get_token_info(link.slot).is_ok() {
            return true;
        }
        shared.disconnect(&mut conn);
        false
    }

    fn pin_needed(&mut self) -> Option<String> {
        if !matches!(self.shared.settings.pin, Some(PinSource::Prompt)) {
            return None;
        }
        let shared = self.shared.clone();
        let mut conn = lock(&shared.conn);
        if conn.logged_in {
            return None;
        }
        let link = shared.connect(&mut conn).ok()?;
        let token = link.ctx.get_token_info(link.slot).ok()?;
        token.login_required().then(|| {
            format!(
                "PIN of device {} (token '{}'): ",
                shared.name(),
                token.label().trim_end()
            )
        })
    }

    fn login_with(&mut self, pin: SecretString) -> Result<(), BackendError> {
        lock(&self.shared.conn).pending_pin = Some(pin);
        let result = self.with_retry(|_, _, _| Ok(()));
        lock(&self.shared.conn).pending_pin = None;
        result
    }

    fn forget_pin(&mut self) {
        let shared = self.shared.clone();
        let mut conn = lock(&shared.conn);
        if !conn.logged_in {
            return;
        }
        let Some(link) = conn.link.clone() else {
            return;
        };
        // Logging out one session logs the whole application out of the token.
        let result = match &self.session {
            Some((generation, session)) if *generation == conn.generation => session.logout(),
            _ => link
                .ctx
                .open_ro_session(link.slot)
                .and_then(|session| session.logout()),
        };
        match result {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) => {
                conn.logged_in = false;
                info!(
                    device = shared.name(),
                    "logged out: the PIN is needed again"
                );
            }
            Err(e) => warn!(device = shared.name(), error = %e, "C_Logout failed"),
        }
    }

    fn store_certificate(&mut self, label: &str, cert: &CertObject) -> Result<(), BackendError> {
        let shared = self.shared.clone();
        let name = shared.name().to_string();
        self.with_retry(|conn, _, session| {
            shared.load_keys(conn, session)?;
            let Some(key) = conn.keys.get(label) else {
                return Err(unknown_key(&name, label).into());
            };
            // The key's own CKA_ID is free for its certificate (programs pair a key
            // with its certificate by equal ids: docs/pkcs11-module.md); any other id
            // must be unused, and no id may hold two certificates.
            let taken = if cert.id == key.id {
                session.find_objects(&[
                    Attribute::Class(ObjectClass::CERTIFICATE),
                    Attribute::Id(cert.id.clone()),
                ])?
            } else {
                session.find_objects(&[Attribute::Id(cert.id.clone())])?
            };
            if !taken.is_empty() {
                return Err(id_taken(&name, &cert.id).into());
            }
            // As `fulcio createca` (crypto11's ImportCertificateWithLabel) stores it.
            session.create_object(&[
                Attribute::Class(ObjectClass::CERTIFICATE),
                Attribute::CertificateType(CertificateType::X_509),
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Id(cert.id.clone()),
                Attribute::Label(cert.label.as_bytes().to_vec()),
                Attribute::Subject(cert.subject.clone()),
                Attribute::Issuer(cert.issuer.clone()),
                Attribute::SerialNumber(cert.serial.clone()),
                Attribute::Value(cert.value.clone()),
            ])?;
            Ok(())
        })
    }

    fn attest(&mut self, label: &str, _nonce: &[u8]) -> Result<Attestation, BackendError> {
        Err(BackendError::unsupported(self.shared.name(), format!("PKCS#11 has no standard key attestation, so waxseal cannot prove where {label} was made (some HSMs have vendor mechanisms). `pkcs11-tool --list-objects` shows its CKA_LOCAL, CKA_SENSITIVE and CKA_EXTRACTABLE attributes")))
    }
}
