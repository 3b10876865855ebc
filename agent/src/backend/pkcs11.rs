//! PKCS#11 backend (cryptoki): one token of one module.
//!
//! A device is a set of *lanes* sharing one [`Shared`] state: the module context, the
//! slot, the login state and a cache of key handles. Each lane owns its own session, so
//! a token that allows parallel sessions signs on several threads. Login is app-wide in
//! PKCS#11 and happens under the shared lock, once; a PIN the token refused is never
//! tried again (its fingerprint is kept) — a wrong PIN file costs exactly one try.
//!
//! Connection is lazy and self-healing: an error that means the token or session went
//! away drops the connection, and the next request finds the token again (its slot id
//! may have changed) and logs in again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use tracing::{debug, info, warn};

use super::crypto::{self, OID_ED25519, OID_P256, OID_P384};
use super::pingate::PinGate;
use super::{
    digest_hash, Attestation, Backend, BackendError, CertObject, DeviceInfo, DeviceKey, PublicKey,
    SignInput, Signed,
};
use crate::config::TokenSelector;
use crate::keyuri::Pkcs11Uri;
use crate::pin::PinSource;
use crate::proto::{HashAlg, KeyAlg, RsaPadding};
use secrecy::SecretString;

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
fn module(path: &Path) -> Result<Pkcs11, BackendError> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut modules = lock(MODULES.get_or_init(Default::default));
    if let Some(ctx) = modules.get(path) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(path).map_err(|e| {
        BackendError::Absent(format!(
            "cannot load PKCS#11 module {}: {e} (is it installed? scripts/install-deps installs SoftHSM2)",
            path.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(BackendError::Absent(format!(
                "PKCS#11 module {} failed to initialise: {e}",
                path.display()
            )))
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
}

struct Lane {
    shared: Arc<Shared>,
    session: Option<(u64, Session)>,
    /// This lane's copy of the key handles, taken while its session's generation was live.
    keys: HashMap<String, KeyEntry>,
}

/// How an error from the module is handled.
enum Fault {
    /// Session or token gone: drop the connection and try once more.
    Reconnect,
    /// The login was lost: log in again and try once more.
    Relogin,
    /// A cached handle is stale: reload keys and try once more.
    StaleHandle,
    /// Give up with this error.
    Fail(BackendError),
}

fn classify(name: &str, e: CkError) -> Fault {
    match &e {
        CkError::Pkcs11(rv, f) => match rv {
            RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::SlotIdInvalid
            | RvError::CryptokiNotInitialized => Fault::Reconnect,
            RvError::UserNotLoggedIn => Fault::Relogin,
            RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid => Fault::StaleHandle,
            RvError::DeviceMemory | RvError::HostMemory => Fault::Fail(BackendError::Device(
                format!("device {name}: {f} failed: out of memory on the token or host ({rv:?})"),
            )),
            _ => Fault::Fail(BackendError::Device(format!(
                "device {name}: {f} failed: CKR_{}",
                ckr_name(rv)
            ))),
        },
        _ => Fault::Fail(BackendError::Device(format!("device {name}: {e}"))),
    }
}

/// `RvError` debug names are CamelCase; show them as the CKR_ constants people search for.
fn ckr_name(rv: &RvError) -> String {
    let camel = format!("{rv:?}");
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

impl Shared {
    fn name(&self) -> &str {
        &self.settings.name
    }

    fn connect(&self, conn: &mut Conn) -> Result<Link, BackendError> {
        if let Some(link) = &conn.link {
            return Ok(link.clone());
        }
        let ctx = module(&self.settings.module)?;
        let slots = ctx.get_slots_with_token().map_err(|e| {
            BackendError::Absent(format!("device {}: C_GetSlotList failed: {e}", self.name()))
        })?;
        let mut seen = Vec::new();
        for slot in slots {
            let Ok(info) = ctx.get_token_info(slot) else {
                continue;
            };
            let hit = match &self.settings.token {
                TokenSelector::Label(l) => info.label().trim_end() == l,
                TokenSelector::Serial(s) => info.serial_number().trim_end() == s,
            };
            if hit {
                conn.generation += 1;
                conn.logged_in = false;
                conn.keys.clear();
                conn.keys_loaded = false;
                let link = Link { ctx, slot };
                conn.link = Some(link.clone());
                self.live.store(conn.generation, Ordering::Release);
                info!(device = self.name(), slot = slot.id(), "token found");
                return Ok(link);
            }
            seen.push(format!("'{}'", info.label().trim_end()));
        }
        Err(BackendError::Absent(format!(
            "device {}: no {} in module {} (tokens present: {}); is the token inserted and initialised?",
            self.name(),
            self.settings.token,
            self.settings.module.display(),
            if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
        )))
    }

    fn disconnect(&self, conn: &mut Conn) {
        self.live.store(0, Ordering::Release);
        if conn.link.take().is_some() {
            warn!(
                device = self.name(),
                "lost the token; will reconnect on the next request"
            );
        }
        conn.logged_in = false;
        conn.keys.clear();
        conn.keys_loaded = false;
    }

    /// Logs in with the PIN source, at most once per PIN: a refused PIN is remembered
    /// and not offered again.
    fn login(&self, conn: &mut Conn, link: &Link, session: &Session) -> Result<(), BackendError> {
        if conn.logged_in {
            return Ok(());
        }
        let name = self.name();
        let token = link.ctx.get_token_info(link.slot).map_err(|e| {
            BackendError::Absent(format!("device {name}: C_GetTokenInfo failed: {e}"))
        })?;
        if !token.login_required() {
            conn.logged_in = true;
            return Ok(());
        }
        if let Ok(info) = session.get_session_info() {
            if matches!(
                info.session_state(),
                SessionState::RoUser | SessionState::RwUser
            ) {
                conn.logged_in = true;
                return Ok(());
            }
        }
        if token.user_pin_locked() {
            return Err(BackendError::PinBlocked(format!(
                "device {name}: the token's user PIN is locked; unblock it with the SO PIN (e.g. pkcs11-tool --init-pin --login --login-type so)"
            )));
        }
        let source = self.settings.pin.as_ref().ok_or_else(|| {
            BackendError::PinRequired(format!(
                "device {name} needs a PIN and its [[device]] entry has no `pin` (add pin = \"file:/path\" or \"env:VAR\")"
            ))
        })?;
        let pin = match source {
            PinSource::Prompt => conn.pending_pin.take().ok_or_else(|| {
                BackendError::PinRequired(format!(
                    "device {name} asks for its PIN (pin = \"prompt\") and this request came from a client that cannot ask a person; log in from a terminal with the waxseal command first"
                ))
            })?,
            _ => source
                .read_for(&format!("PIN of device {name} (token '{}')", token.label().trim_end()))
                .map_err(|e| BackendError::PinRequired(format!("device {name}: {e}")))?,
        };
        let offer = conn.pins.offer(pin).map_err(|_| {
            BackendError::PinIncorrect(format!(
                "device {name}: the PIN from {source} was already refused by the token; the agent does not try it again. Put the right PIN there and retry"
            ))
        })?;
        match session.login(UserType::User, Some(offer.secret())) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                info!(device = name, "logged in");
                conn.logged_in = true;
                conn.pins.accepted();
                Ok(())
            }
            Err(CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid,
                _,
            )) => {
                conn.pins.refused(&offer);
                let left = match link.ctx.get_token_info(link.slot) {
                    Ok(t) if t.user_pin_locked() => " The PIN is now locked.".to_string(),
                    Ok(t) if t.user_pin_final_try() => {
                        " One try is left before the PIN locks.".to_string()
                    }
                    Ok(t) if t.user_pin_count_low() => {
                        " The token reports few tries left.".to_string()
                    }
                    _ => String::new(),
                };
                warn!(device = name, source = %source, "token refused the PIN; it will not be retried");
                Err(BackendError::PinIncorrect(format!(
                    "device {name}: the token refused the PIN from {source}.{left} The agent will not retry it; fix the PIN source and try again"
                )))
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(BackendError::PinBlocked(format!(
                "device {name}: the user PIN is locked; unblock it with the SO PIN"
            ))),
            Err(e) => match classify(name, e) {
                Fault::Fail(err) => Err(err),
                _ => Err(BackendError::Absent(format!(
                    "device {name}: the token went away during login"
                ))),
            },
        }
    }

    /// Loads every private key's entry.
    fn load_keys(&self, conn: &mut Conn, session: &Session) -> Result<(), CkError> {
        let handles = session.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])?;
        let mut keys = HashMap::new();
        let mut dup = HashSet::new();
        for handle in handles {
            let Some((label, entry)) = self.read_key(session, handle)? else {
                continue;
            };
            if keys.contains_key(&label) {
                dup.insert(label);
                continue;
            }
            keys.insert(label, entry);
        }
        for label in dup {
            warn!(
                device = self.name(),
                label, "several private keys share this label; using the first"
            );
        }
        conn.keys = keys;
        conn.keys_loaded = true;
        Ok(())
    }

    fn read_key(
        &self,
        session: &Session,
        handle: ObjectHandle,
    ) -> Result<Option<(String, KeyEntry)>, CkError> {
        let attrs = session.get_attributes(
            handle,
            &[
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )?;
        let (mut label, mut id, mut key_type, mut params, mut modulus, mut exponent) =
            (Vec::new(), Vec::new(), None, None, None, None);
        for a in attrs {
            match a {
                Attribute::Label(v) => label = v,
                Attribute::Id(v) => id = v,
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::EcParams(v) => params = Some(v),
                Attribute::Modulus(v) => modulus = Some(v),
                Attribute::PublicExponent(v) => exponent = Some(v),
                _ => {}
            }
        }
        let label = match String::from_utf8(label) {
            Ok(l) if !l.is_empty() && !l.contains('/') && !l.chars().any(char::is_control) => l,
            _ if !id.is_empty() => format!("id-{}", hex::encode(&id)),
            _ => {
                debug!(
                    device = self.name(),
                    "skipping a private key with neither label nor id"
                );
                return Ok(None);
            }
        };
        let (alg, spki) = match key_type {
            Some(KeyType::RSA) => {
                let (Some(n), Some(e)) = (modulus, exponent) else {
                    debug!(
                        device = self.name(),
                        label, "RSA key without modulus; skipped"
                    );
                    return Ok(None);
                };
                (
                    KeyAlg::Rsa(crypto::rsa_bits(&n)),
                    crypto::spki_from_rsa(&n, &e).ok(),
                )
            }
            Some(KeyType::EC) | Some(KeyType::EC_EDWARDS) => {
                let Some(alg) = params.as_deref().and_then(crypto::alg_of_ec_params) else {
                    debug!(
                        device = self.name(),
                        label, "key on an unsupported curve; skipped"
                    );
                    return Ok(None);
                };
                let point = self.public_point(session, handle, &id, &label)?;
                (
                    alg,
                    point.and_then(|p| {
                        crypto::spki_from_point(alg, crypto::unwrap_octet_string(&p)).ok()
                    }),
                )
            }
            _ => return Ok(None),
        };
        Ok(Some((
            label,
            KeyEntry {
                handle,
                alg,
                id,
                spki,
            },
        )))
    }

    /// `CKA_EC_POINT` of the public key paired with a private key (by id, else label).
    fn public_point(
        &self,
        session: &Session,
        private: ObjectHandle,
        id: &[u8],
        label: &str,
    ) -> Result<Option<Vec<u8>>, CkError> {
        let mut template = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
        if id.is_empty() {
            template.push(Attribute::Label(label.as_bytes().to_vec()));
        } else {
            template.push(Attribute::Id(id.to_vec()));
        }
        let mut candidates = session.find_objects(&template)?;
        candidates.push(private); // some tokens keep the point on the private key
        for h in candidates {
            if let Ok(attrs) = session.get_attributes(h, &[AttributeType::EcPoint]) {
                if let Some(Attribute::EcPoint(p)) = attrs.into_iter().next() {
                    return Ok(Some(p));
                }
            }
        }
        Ok(None)
    }

    fn uri(&self, link: &Link, label: &str, id: &[u8]) -> String {
        let (token, serial) = match link.ctx.get_token_info(link.slot) {
            Ok(t) => (
                Some(t.label().trim_end().to_string()),
                Some(t.serial_number().trim_end().to_string()),
            ),
            Err(_) => (None, None),
        };
        Pkcs11Uri {
            token,
            serial,
            object: Some(label.to_string()),
            id: (!id.is_empty()).then(|| id.to_vec()),
            kind: Some("private".into()),
        }
        .to_string()
    }
}

impl Lane {
    /// Ensures a connected, logged-in session; returns the locked state with it.
    fn ready(&mut self) -> Result<(MutexGuard<'_, Conn>, Link, &Session), BackendError> {
        let shared = &*self.shared;
        let mut conn = lock(&shared.conn);
        let link = shared.connect(&mut conn)?;
        if self
            .session
            .as_ref()
            .is_some_and(|(g, _)| *g != conn.generation)
        {
            self.session = None;
        }
        if self.session.is_none() {
            match link.ctx.open_rw_session(link.slot) {
                Ok(s) => self.session = Some((conn.generation, s)),
                Err(e) => {
                    shared.disconnect(&mut conn);
                    return Err(BackendError::Absent(format!(
                        "device {}: cannot open a session: {e}",
                        shared.name()
                    )));
                }
            }
        }
        let Some((_, session)) = &self.session else {
            return Err(BackendError::Device(format!(
                "device {}: no session",
                shared.name()
            )));
        };
        shared.login(&mut conn, &link, session)?;
        if !conn.keys_loaded {
            if let Err(e) = shared.load_keys(&mut conn, session) {
                let fault = classify(shared.name(), e);
                if !matches!(fault, Fault::Fail(_)) {
                    shared.disconnect(&mut conn);
                }
                return Err(match fault {
                    Fault::Fail(err) => err,
                    _ => BackendError::Absent(format!(
                        "device {}: the token went away",
                        shared.name()
                    )),
                });
            }
        }
        Ok((conn, link, session))
    }

    /// Runs `op` with a ready session, healing once after a lost session, login or handle.
    fn with_retry<T>(
        &mut self,
        mut op: impl FnMut(&mut Conn, &Link, &Session) -> Result<T, OpError>,
    ) -> Result<T, BackendError> {
        let mut last = None;
        for _attempt in 0..2 {
            let shared = self.shared.clone();
            let (mut conn, link, session) = self.ready()?;
            match op(&mut conn, &link, session) {
                Ok(v) => return Ok(v),
                Err(OpError::Backend(e)) => return Err(e),
                Err(OpError::Ck(e)) => match classify(shared.name(), e) {
                    Fault::Fail(err) => return Err(err),
                    Fault::Reconnect => {
                        shared.disconnect(&mut conn);
                        last = Some(BackendError::Absent(format!(
                            "device {}: the token is not reachable",
                            shared.name()
                        )));
                    }
                    Fault::Relogin => {
                        conn.logged_in = false;
                        last = Some(BackendError::Device(format!(
                            "device {}: the token logged the agent out",
                            shared.name()
                        )));
                    }
                    Fault::StaleHandle => {
                        conn.keys_loaded = false;
                        last = Some(BackendError::Device(format!(
                            "device {}: key handles changed under the agent",
                            shared.name()
                        )));
                    }
                },
            }
        }
        Err(last.unwrap_or_else(|| BackendError::Device("retry loop ended".into())))
    }
}

fn unknown_key(device: &str, label: &str) -> BackendError {
    BackendError::UnknownKey(format!(
        "no key labelled '{label}' on device {device} (`waxseal keys list` shows the keys)"
    ))
}

/// An error inside a retried operation: from the module (may heal) or final.
enum OpError {
    Ck(CkError),
    Backend(BackendError),
}

impl From<CkError> for OpError {
    fn from(e: CkError) -> Self {
        OpError::Ck(e)
    }
}

impl From<BackendError> for OpError {
    fn from(e: BackendError) -> Self {
        OpError::Backend(e)
    }
}

fn public_of(name: &str, label: &str, entry: &KeyEntry) -> Result<PublicKey, BackendError> {
    let spki = entry.spki.clone().ok_or_else(|| {
        BackendError::Device(format!(
            "device {name}: the public key of '{label}' is not on the token (no CKO_PUBLIC_KEY with its CKA_ID)"
        ))
    })?;
    Ok(PublicKey {
        alg: entry.alg,
        spki_der: spki,
    })
}

impl Lane {
    /// Signs without the shared lock when this lane's session and key copy are current.
    /// `None`: take the slow path (which connects, logs in, reloads and heals).
    fn fast_sign(
        &mut self,
        label: &str,
        input: &SignInput<'_>,
    ) -> Option<Result<Signed, BackendError>> {
        let (generation, session) = self.session.as_ref()?;
        if *generation != self.shared.live.load(Ordering::Acquire) {
            self.keys.clear();
            return None;
        }
        let entry = self.keys.get(label)?;
        let hash = match digest_hash(entry.alg, input) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        match sign_with(session, entry.handle, entry.alg, hash, input) {
            Ok(raw) => Some(finish(self.shared.name(), entry.alg, hash, raw)),
            Err(e) => match classify(self.shared.name(), e) {
                Fault::Fail(err) => Some(Err(err)),
                _ => {
                    // Lost session, login or handle: the slow path heals it.
                    self.keys.clear();
                    None
                }
            },
        }
    }
}

/// DER-encodes ECDSA output; other signatures are returned as the device made them.
fn finish(device: &str, alg: KeyAlg, hash: HashAlg, raw: Vec<u8>) -> Result<Signed, BackendError> {
    let signature = match alg {
        KeyAlg::P256 | KeyAlg::P384 => crypto::ecdsa_raw_to_der(alg, &raw)
            .map_err(|e| BackendError::Device(format!("device {device}: {e}")))?,
        _ => raw,
    };
    Ok(Signed {
        signature,
        alg,
        hash,
    })
}

impl Backend for Lane {
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
                })
                .collect();
            keys.sort_by(|a, b| a.label.cmp(&b.label));
            Ok(keys)
        })
    }

    fn public_key(&mut self, label: &str) -> Result<PublicKey, BackendError> {
        let name = self.shared.settings.name.clone();
        let (conn, _, _) = self.ready()?;
        let hit = conn.keys.get(label).cloned();
        drop(conn);
        let entry = match hit {
            Some(e) => e,
            None => {
                // Maybe created since the last scan.
                self.list_keys()?;
                let conn = lock(&self.shared.conn);
                conn.keys
                    .get(label)
                    .cloned()
                    .ok_or_else(|| unknown_key(&name, label))?
            }
        };
        public_of(&name, label, &entry)
    }

    fn generate(
        &mut self,
        label: &str,
        alg: KeyAlg,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        let shared = self.shared.clone();
        let name = shared.name().to_string();
        if !alg.is_generatable() {
            return Err(BackendError::Unsupported(format!(
                "cannot generate {alg} keys (p256, p384, rsa2048, rsa3072, rsa4096, ed25519)"
            )));
        }
        self.with_retry(|conn, link, session| {
            shared.load_keys(conn, session)?;
            if conn.keys.contains_key(label) {
                return Err(BackendError::KeyExists(format!(
                    "device {name} already has a key labelled '{label}'; choose another name"
                ))
                .into());
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
                return Err(BackendError::Unsupported(format!(
                    "device {name} cannot generate {alg} keys (the token lacks {mech_type})"
                ))
                .into());
            }
            let mut id = vec![0u8; 16];
            getrandom::getrandom(&mut id)
                .map_err(|e| BackendError::Device(format!("no randomness for the key id: {e}")))?;
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
                return Err(BackendError::Device(format!(
                    "device {name}: the new key cannot be read back"
                ))
                .into());
            };
            let public = public_of(&name, label, &entry)?;
            let key = DeviceKey {
                label: label.to_string(),
                alg: entry.alg,
                uri: Some(shared.uri(link, label, &entry.id)),
            };
            conn.keys.insert(label.to_string(), entry);
            Ok((key, public))
        })
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
            let (conn, _, _) = self.ready()?;
            let entry = match conn.keys.get(label) {
                Some(e) => e.clone(),
                None if attempt == 0 => {
                    drop(conn);
                    lock(&self.shared.conn).keys_loaded = false;
                    continue;
                }
                None if attempt == 1 => {
                    drop(conn);
                    let shared = self.shared.clone();
                    shared.disconnect(&mut lock(&shared.conn));
                    self.session = None;
                    continue;
                }
                None => return Err(unknown_key(&name, label)),
            };
            drop(conn);
            let hash = digest_hash(entry.alg, input)?;
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
        let (conn, link, _) = self.ready()?;
        let keys = conn.keys.len();
        drop(conn);
        let t = link.ctx.get_token_info(link.slot).map_err(|e| {
            BackendError::Absent(format!(
                "device {}: C_GetTokenInfo failed: {e}",
                self.shared.name()
            ))
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
        let result = self.ready().map(|_| ());
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
            if !conn.keys.contains_key(label) {
                return Err(unknown_key(&name, label).into());
            }
            let taken = session.find_objects(&[Attribute::Id(cert.id.clone())])?;
            if !taken.is_empty() {
                return Err(BackendError::KeyExists(format!(
                    "device {name} already has an object with id '{}' (CKA_ID); choose another id",
                    String::from_utf8_lossy(&cert.id)
                ))
                .into());
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
        Err(BackendError::Unsupported(format!(
            "device {}: PKCS#11 has no standard key attestation, so waxseal cannot prove where {label} was made (some HSMs have vendor mechanisms). `pkcs11-tool --list-objects` shows its CKA_LOCAL, CKA_SENSITIVE and CKA_EXTRACTABLE attributes",
            self.shared.name()
        )))
    }
}

fn sign_with(
    session: &Session,
    handle: ObjectHandle,
    alg: KeyAlg,
    hash: HashAlg,
    input: &SignInput<'_>,
) -> Result<Vec<u8>, CkError> {
    match alg {
        KeyAlg::P256 | KeyAlg::P384 => session.sign(&Mechanism::Ecdsa, handle, input.digest),
        KeyAlg::Ed25519 => session.sign(
            &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            handle,
            input.digest,
        ),
        KeyAlg::Rsa(_) => match input.padding {
            RsaPadding::Pkcs1 => {
                let mut info = crypto::digest_info_prefix(hash).to_vec();
                info.extend_from_slice(input.digest);
                session.sign(&Mechanism::RsaPkcs, handle, &info)
            }
            RsaPadding::Pss => {
                let (hash_alg, mgf) = match hash {
                    HashAlg::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
                    HashAlg::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
                    HashAlg::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
                };
                let params = PkcsPssParams {
                    hash_alg,
                    mgf,
                    s_len: (hash.digest_len() as u64).into(),
                };
                session.sign(&Mechanism::RsaPkcsPss(params), handle, input.digest)
            }
        },
    }
}
