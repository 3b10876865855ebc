//! The module's state between `C_Initialize` and `C_Finalize`, and every PKCS#11
//! operation in safe Rust: slots (one per agent device, in config order), tokens,
//! sessions, logins, object handles, searches, signing, key generation and certificate
//! import. The FFI layer (`ffi.rs`) only copies arguments in and results out.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cryptoki_sys::*;
use sha2::{Digest, Sha256};
use waxseal_proto::proto::{DeviceKind, DeviceStatus, ErrorCode, KeyAlg, MAX_OBJECT_ID};
use zeroize::Zeroizing;

use crate::agent::{Agent, AgentError};
use crate::asn1::{CertFields, Curve, ED25519_OID_PARAMS, EDWARDS25519_PARAMS};
use crate::mechanism::{self, Info, Input, KeyKinds, Mechanism, SignRequest};
use crate::objects::{Class, Key, Value};
use crate::template::{decode_ulong, Template};

/// The module's state.
#[derive(Debug)]
pub struct Module {
    pid: u32,
    agent: Agent,
    state: Mutex<State>,
    sessions: Mutex<HashMap<CK_SESSION_HANDLE, Arc<Mutex<Session>>>>,
    next_session: AtomicU64,
}

/// What the module knows of the agent's devices and keys.
#[derive(Debug, Default)]
struct State {
    /// The devices from the last `status`, in config order: slot N is device N.
    devices: Vec<DeviceStatus>,
    /// Keys by `DEVICE/LABEL`.
    keys: BTreeMap<String, Arc<Key>>,
    /// Object handles, stable for the module's life while the key exists.
    handles: HashMap<(String, Class), CK_OBJECT_HANDLE>,
    /// What each handle names.
    objects: HashMap<CK_OBJECT_HANDLE, (String, Class)>,
    next_handle: CK_OBJECT_HANDLE,
    /// Devices logged in to (`C_Login`), with the PIN that answers the agent's prompts
    /// for devices whose PIN comes from the client.
    logins: HashMap<String, Option<Zeroizing<String>>>,
}

/// One session.
#[derive(Debug)]
struct Session {
    slot: CK_SLOT_ID,
    device: String,
    rw: bool,
    find: Option<Find>,
    sign: Option<SignOp>,
}

#[derive(Debug)]
struct Find {
    handles: Vec<CK_OBJECT_HANDLE>,
    next: usize,
}

#[derive(Debug)]
struct SignOp {
    key: Arc<Key>,
    mechanism: Mechanism,
    len: usize,
    input: Input,
    /// `C_SignUpdate` was called: only `C_SignFinal` may end it.
    multi: bool,
}

/// The answer of `C_Sign`/`C_SignFinal`.
#[derive(Debug, PartialEq, Eq)]
pub enum SignOut {
    /// No buffer given: the signature's length; the operation goes on.
    Len(usize),
    /// The buffer is too small for this many bytes; the operation goes on.
    TooSmall(usize),
    /// The signature; the operation is over.
    Signature(Vec<u8>),
}

/// What `C_GetSlotInfo` shows.
#[derive(Debug)]
pub struct SlotView {
    /// `slotDescription`.
    pub description: String,
    /// Whether the device is there.
    pub present: bool,
}

/// What `C_GetTokenInfo` shows.
#[derive(Debug)]
pub struct TokenView {
    /// Device name.
    pub label: String,
    /// Device kind.
    pub model: String,
    /// From the device's detail, or a hash of its name.
    pub serial: String,
    /// `CKF_…`.
    pub flags: CK_FLAGS,
    /// Open sessions, all and read/write.
    pub sessions: (usize, usize),
}

/// What `C_GetSessionInfo` shows.
#[derive(Debug)]
pub struct SessionView {
    /// Its slot.
    pub slot: CK_SLOT_ID,
    /// `CKS_…`.
    pub state: CK_STATE,
    /// `CKF_SERIAL_SESSION`, maybe `CKF_RW_SESSION`.
    pub flags: CK_FLAGS,
}

type Rv<T> = Result<T, CK_RV>;

/// The label `C_Login` asks the public key of to have the agent try a PIN: one no key
/// is expected to have.
const LOGIN_PROBE: &str = "waxseal-pkcs11-login-check";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The serial a token shows: the word after "serial" in the device's detail, or the
/// first 8 bytes of SHA-256 of the device name in hex; at most 16 characters.
fn serial_of(device: &DeviceStatus) -> String {
    let from_detail = device
        .detail
        .split_whitespace()
        .skip_while(|w| !w.eq_ignore_ascii_case("serial"))
        .nth(1)
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| !w.is_empty());
    let serial = match from_detail {
        Some(s) => s.to_string(),
        None => hex::encode(&Sha256::digest(device.name.as_bytes())[..8]),
    };
    serial.chars().take(16).collect()
}

impl Module {
    /// A module talking to the agent at `socket`; nothing is connected yet.
    pub fn new(socket: std::path::PathBuf) -> Module {
        Module {
            pid: std::process::id(),
            agent: Agent::new(socket),
            state: Mutex::new(State {
                next_handle: 1,
                ..State::default()
            }),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        }
    }

    /// The process that called `C_Initialize`.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// After `fork()`: drops nothing that the parent may be using and writes to no
    /// connection (see [`Agent::abandon`]).
    pub fn abandon(&self) {
        self.agent.abandon();
    }

    // -----------------------------------------------------------------------------
    // Slots and tokens

    /// Asks the agent for its devices. Without an agent there are none.
    fn refresh_devices(&self) -> Vec<DeviceStatus> {
        let devices = match self.agent.call(None, |c| c.status()) {
            Ok(status) => status.devices,
            Err(_) => Vec::new(),
        };
        lock(&self.state).devices = devices.clone();
        devices
    }

    /// The device of `slot`, as last seen; asks the agent when it has not been seen (a
    /// caller may open a session on a slot it knows without listing the slots first).
    fn device(&self, slot: CK_SLOT_ID) -> Rv<DeviceStatus> {
        let index = usize::try_from(slot).map_err(|_| CKR_SLOT_ID_INVALID)?;
        if let Some(d) = lock(&self.state).devices.get(index) {
            return Ok(d.clone());
        }
        self.refresh_devices()
            .get(index)
            .cloned()
            .ok_or(CKR_SLOT_ID_INVALID)
    }

    /// `C_GetSlotList`.
    pub fn slots(&self, token_present: bool) -> Vec<CK_SLOT_ID> {
        self.refresh_devices()
            .iter()
            .enumerate()
            .filter(|(_, d)| d.present || !token_present)
            .map(|(i, _)| i as CK_SLOT_ID)
            .collect()
    }

    /// `C_GetSlotInfo`: the device as `status` says now (kept as last seen when the
    /// agent is gone, then without a token).
    pub fn slot(&self, slot: CK_SLOT_ID) -> Rv<SlotView> {
        let known = self.device(slot)?;
        let now = self.refresh_devices();
        let present = now
            .get(slot as usize)
            .is_some_and(|d| d.present && d.name == known.name);
        Ok(SlotView {
            description: format!("waxseal-agent device {} ({})", known.name, known.kind),
            present,
        })
    }

    /// `C_GetTokenInfo`.
    pub fn token(&self, slot: CK_SLOT_ID) -> Rv<TokenView> {
        if !self.slot(slot)?.present {
            return Err(CKR_TOKEN_NOT_PRESENT);
        }
        let device = self.device(slot)?;
        let mut flags = CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED;
        flags |= if device.pin_prompt {
            CKF_LOGIN_REQUIRED
        } else {
            CKF_PROTECTED_AUTHENTICATION_PATH
        };
        let sessions = lock(&self.sessions)
            .values()
            .map(|s| {
                let s = lock(s);
                (s.slot == slot, s.slot == slot && s.rw)
            })
            .fold((0, 0), |(n, rw), (a, b)| {
                (n + usize::from(a), rw + usize::from(b))
            });
        Ok(TokenView {
            label: device.name.clone(),
            model: device.kind.to_string(),
            serial: serial_of(&device),
            flags,
            sessions,
        })
    }

    /// `C_GetMechanismList`/`C_GetMechanismInfo`: signing mechanisms for the kinds of
    /// key on the token, key-pair generation always.
    pub fn mechanisms(&self, slot: CK_SLOT_ID) -> Rv<Vec<(CK_MECHANISM_TYPE, Info)>> {
        let device = self.device(slot)?;
        // Without the agent's keys (absent device, no login yet) the list is shorter.
        let _ = self.refresh_keys(&device.name);
        let mut kinds = KeyKinds {
            pkcs1_only: !mechanism::signs_pss(device.kind),
            ..KeyKinds::default()
        };
        for key in lock(&self.state)
            .keys
            .values()
            .filter(|k| k.name.split('/').next() == Some(device.name.as_str()))
        {
            kinds.add(&key.public);
        }
        Ok(mechanism::list(kinds, true))
    }

    // -----------------------------------------------------------------------------
    // Sessions and login

    fn session(&self, h: CK_SESSION_HANDLE) -> Rv<Arc<Mutex<Session>>> {
        lock(&self.sessions)
            .get(&h)
            .cloned()
            .ok_or(CKR_SESSION_HANDLE_INVALID)
    }

    /// `C_OpenSession`.
    pub fn open_session(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Rv<CK_SESSION_HANDLE> {
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
        }
        let device = self.device(slot)?;
        if !self.slot(slot)?.present {
            return Err(CKR_TOKEN_NOT_PRESENT);
        }
        let h = self.next_session.fetch_add(1, Ordering::Relaxed) as CK_SESSION_HANDLE;
        let session = Session {
            slot,
            device: device.name,
            rw: flags & CKF_RW_SESSION != 0,
            find: None,
            sign: None,
        };
        lock(&self.sessions).insert(h, Arc::new(Mutex::new(session)));
        Ok(h)
    }

    /// `C_CloseSession`. The last session of a token logs it out (PKCS#11 v2.40 5.6).
    pub fn close_session(&self, h: CK_SESSION_HANDLE) -> Rv<()> {
        let session = lock(&self.sessions)
            .remove(&h)
            .ok_or(CKR_SESSION_HANDLE_INVALID)?;
        let device = lock(&session).device.clone();
        self.logout_if_unused(&device);
        Ok(())
    }

    /// `C_CloseAllSessions`.
    pub fn close_all(&self, slot: CK_SLOT_ID) -> Rv<()> {
        let device = self.device(slot)?;
        lock(&self.sessions).retain(|_, s| lock(s).slot != slot);
        self.logout_if_unused(&device.name);
        Ok(())
    }

    fn logout_if_unused(&self, device: &str) {
        let used = lock(&self.sessions)
            .values()
            .any(|s| lock(s).device == device);
        if !used {
            lock(&self.state).logins.remove(device);
        }
    }

    /// `C_GetSessionInfo`.
    pub fn session_info(&self, h: CK_SESSION_HANDLE) -> Rv<SessionView> {
        let session = self.session(h)?;
        let s = lock(&session);
        let user = lock(&self.state).logins.contains_key(&s.device);
        let state = match (s.rw, user) {
            (false, false) => CKS_RO_PUBLIC_SESSION,
            (false, true) => CKS_RO_USER_FUNCTIONS,
            (true, false) => CKS_RW_PUBLIC_SESSION,
            (true, true) => CKS_RW_USER_FUNCTIONS,
        };
        Ok(SessionView {
            slot: s.slot,
            state,
            flags: CKF_SERIAL_SESSION | if s.rw { CKF_RW_SESSION } else { 0 },
        })
    }

    /// `C_Login`. A device whose PIN comes from the client (`pin_prompt`) has the PIN
    /// checked by the agent at once and kept to answer later prompts; a refused PIN is
    /// not kept and never offered again. Other devices get their PIN from the agent:
    /// a PIN given here is ignored.
    pub fn login(&self, h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: Option<&[u8]>) -> Rv<()> {
        let session = self.session(h)?;
        let device = lock(&session).device.clone();
        match user {
            CKU_USER => {}
            CKU_CONTEXT_SPECIFIC => return Err(CKR_OPERATION_NOT_INITIALIZED),
            _ => return Err(CKR_USER_TYPE_INVALID),
        }
        if lock(&self.state).logins.contains_key(&device) {
            return Err(CKR_USER_ALREADY_LOGGED_IN);
        }
        let prompt = lock(&self.state)
            .devices
            .iter()
            .any(|d| d.name == device && d.pin_prompt);
        if !prompt {
            lock(&self.state).logins.insert(device, None);
            return Ok(());
        }
        let pin = match pin {
            None => return Err(CKR_ARGUMENTS_BAD),
            Some([]) => return Err(CKR_PIN_LEN_RANGE),
            Some(p) => Zeroizing::new(
                std::str::from_utf8(p)
                    .map_err(|_| CKR_PIN_INCORRECT)?
                    .to_string(),
            ),
        };
        self.check_pin(&device, &pin)?;
        lock(&self.state).logins.insert(device, Some(pin));
        Ok(())
    }

    /// Has the agent try `pin` on `device`: `unlock` of the device first; a device
    /// without a retry floor (PKCS#11) answers `unsupported`, and the PIN is then tried
    /// through `public_key` of a label no key has: the agent asks for the PIN of the
    /// key's device before it looks the key up (docs/protocol.md, `status`:
    /// `pin_prompt`), so `unknown-key` means the PIN was taken. When the agent is
    /// already logged in to the device, nothing asks and the PIN is kept unchecked.
    fn check_pin(&self, device: &str, pin: &Zeroizing<String>) -> Rv<()> {
        match self.agent.call(Some(pin), |c| c.unlock(Some(device))) {
            Ok(_) => return Ok(()),
            Err(AgentError::Code(ErrorCode::Unsupported)) => {}
            Err(e) => return Err(e.rv()),
        }
        let probe = format!("{device}/{LOGIN_PROBE}");
        match self.agent.call(Some(pin), |c| c.public_key(&probe)) {
            Ok(_) | Err(AgentError::Code(ErrorCode::UnknownKey)) => Ok(()),
            Err(e) => Err(e.rv()),
        }
    }

    /// `C_Logout`.
    pub fn logout(&self, h: CK_SESSION_HANDLE) -> Rv<()> {
        let session = self.session(h)?;
        let device = lock(&session).device.clone();
        lock(&self.state)
            .logins
            .remove(&device)
            .map(|_| ())
            .ok_or(CKR_USER_NOT_LOGGED_IN)
    }

    fn pin_of(&self, device: &str) -> Option<Zeroizing<String>> {
        lock(&self.state).logins.get(device).cloned().flatten()
    }

    /// The kind of `device`, as last seen.
    fn kind_of(&self, device: &str) -> Option<DeviceKind> {
        lock(&self.state)
            .devices
            .iter()
            .find(|d| d.name == device)
            .map(|d| d.kind)
    }

    /// Whether the RSA keys of `device` sign RSA-PSS (a device not seen yet: the agent
    /// decides).
    fn signs_pss(&self, device: &str) -> bool {
        self.kind_of(device).is_none_or(mechanism::signs_pss)
    }

    /// Whether a device needing the client's PIN has one.
    fn check_login(&self, device: &str) -> Rv<()> {
        let state = lock(&self.state);
        let prompt = state
            .devices
            .iter()
            .any(|d| d.name == device && d.pin_prompt);
        if prompt && !state.logins.contains_key(device) {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------
    // Objects

    /// Reads the device's keys from the agent (`list_keys`, then `public_key` of each)
    /// and gives their objects handles. A key whose public key cannot be read now (a
    /// PIN not given yet) is left out.
    fn refresh_keys(&self, device: &str) -> Rv<()> {
        let pin = self.pin_of(device);
        let list = self
            .agent
            .call(pin.as_ref(), |c| c.list_keys())
            .map_err(|e| e.rv())?;
        let mut fresh = Vec::new();
        for info in list.keys.iter().filter(|k| k.device == device) {
            let Ok(pk) = self.agent.call(pin.as_ref(), |c| c.public_key(&info.name)) else {
                continue;
            };
            let token_id = info.id.as_ref().map(|b| b.0.as_slice());
            if let Some(key) = Key::new(&info.name, pk.alg, &pk.spki_der.0, token_id) {
                let cert = pk.certificate.as_ref().map(|c| c.0.as_slice());
                fresh.push(key.with_certificate(cert, pk.certificate_label.as_deref()));
            }
        }
        let mut state = lock(&self.state);
        let prefix = format!("{device}/");
        state.keys.retain(|name, _| !name.starts_with(&prefix));
        let names: Vec<String> = fresh.iter().map(|k| k.name.clone()).collect();
        for key in fresh {
            state.insert(key);
        }
        let State {
            handles, objects, ..
        } = &mut *state;
        objects.retain(|_, (name, class)| {
            let keep = !name.starts_with(&prefix) || names.contains(name);
            if !keep {
                handles.remove(&(name.clone(), *class));
            }
            keep
        });
        Ok(())
    }

    fn object(&self, handle: CK_OBJECT_HANDLE) -> Rv<(Arc<Key>, Class)> {
        let state = lock(&self.state);
        let (name, class) = state
            .objects
            .get(&handle)
            .ok_or(CKR_OBJECT_HANDLE_INVALID)?;
        let key = state.keys.get(name).ok_or(CKR_OBJECT_HANDLE_INVALID)?;
        Ok((Arc::clone(key), *class))
    }

    /// `C_FindObjectsInit`.
    pub fn find_init(&self, h: CK_SESSION_HANDLE, template: &Template) -> Rv<()> {
        let session = self.session(h)?;
        let device = {
            let s = lock(&session);
            if s.find.is_some() {
                return Err(CKR_OPERATION_ACTIVE);
            }
            s.device.clone()
        };
        self.refresh_keys(&device)?;
        let prefix = format!("{device}/");
        let mut handles: Vec<CK_OBJECT_HANDLE> = {
            let state = lock(&self.state);
            state
                .objects
                .iter()
                .filter(|(_, (name, class))| {
                    name.starts_with(&prefix)
                        && state
                            .keys
                            .get(name)
                            .is_some_and(|k| template.matches(|ty| k.matchable(*class, ty)))
                })
                .map(|(h, _)| *h)
                .collect()
        };
        handles.sort_unstable();
        let mut s = lock(&session);
        if s.find.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        s.find = Some(Find { handles, next: 0 });
        Ok(())
    }

    /// `C_FindObjects`.
    pub fn find(&self, h: CK_SESSION_HANDLE, max: usize) -> Rv<Vec<CK_OBJECT_HANDLE>> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        let find = s.find.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let end = (find.next + max).min(find.handles.len());
        let out = find.handles[find.next..end].to_vec();
        find.next = end;
        Ok(out)
    }

    /// `C_FindObjectsFinal`.
    pub fn find_final(&self, h: CK_SESSION_HANDLE) -> Rv<()> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        s.find
            .take()
            .map(|_| ())
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)
    }

    /// `C_GetAttributeValue`, one attribute.
    pub fn attribute(
        &self,
        h: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> Rv<Value> {
        self.session(h)?;
        let (key, class) = self.object(object)?;
        Ok(key.attribute(class, ty))
    }

    /// Checks a session and object handle (`C_GetObjectSize` and the refused object
    /// functions answer after it).
    pub fn check_object(&self, h: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE) -> Rv<()> {
        self.session(h)?;
        self.object(object).map(|_| ())
    }

    /// Checks a session handle.
    pub fn check_session(&self, h: CK_SESSION_HANDLE) -> Rv<()> {
        self.session(h).map(|_| ())
    }

    // -----------------------------------------------------------------------------
    // Signing

    /// `C_SignInit`.
    pub fn sign_init(
        &self,
        h: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        params: Option<&[u8]>,
        key: CK_OBJECT_HANDLE,
    ) -> Rv<()> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        if s.sign.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let (key, class) = self.object(key).map_err(|_| CKR_KEY_HANDLE_INVALID)?;
        if class != Class::Private || !key.name.starts_with(&format!("{}/", s.device)) {
            return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
        }
        let mechanism = Mechanism::decode(mechanism, params)?;
        let len = mechanism.signature_len(&key.public)?;
        if mechanism.is_pss() && !self.signs_pss(&s.device) {
            return Err(CKR_MECHANISM_INVALID);
        }
        self.check_login(&s.device)?;
        s.sign = Some(SignOp {
            key,
            mechanism,
            len,
            input: Input::new(mechanism),
            multi: false,
        });
        Ok(())
    }

    /// `C_Sign`: `capacity` is the caller's buffer size, `None` to ask the length.
    pub fn sign(&self, h: CK_SESSION_HANDLE, data: &[u8], capacity: Option<usize>) -> Rv<SignOut> {
        self.finish(h, capacity, Some(data))
    }

    /// `C_SignUpdate`. An error ends the operation.
    pub fn sign_update(&self, h: CK_SESSION_HANDLE, part: &[u8]) -> Rv<()> {
        let session = self.session(h)?;
        let mut s = lock(&session);
        let op = s.sign.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        op.multi = true;
        if let Err(e) = op.input.update(part) {
            s.sign = None;
            return Err(e);
        }
        Ok(())
    }

    /// `C_SignFinal`.
    pub fn sign_final(&self, h: CK_SESSION_HANDLE, capacity: Option<usize>) -> Rv<SignOut> {
        self.finish(h, capacity, None)
    }

    fn finish(
        &self,
        h: CK_SESSION_HANDLE,
        capacity: Option<usize>,
        data: Option<&[u8]>,
    ) -> Rv<SignOut> {
        let session = self.session(h)?;
        let op = {
            let mut s = lock(&session);
            let op = s.sign.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
            if data.is_some() && op.multi {
                s.sign = None;
                return Err(CKR_OPERATION_ACTIVE);
            }
            match capacity {
                None => return Ok(SignOut::Len(op.len)),
                Some(c) if c < op.len => return Ok(SignOut::TooSmall(op.len)),
                Some(_) => {}
            }
            s.sign.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?
        };
        let request = match data {
            Some(d) => op.mechanism.request(d)?,
            None => op.input.request(op.mechanism)?,
        };
        let device = op.key.name.split('/').next().unwrap_or_default();
        let pin = self.pin_of(device);
        let answer = self
            .agent
            .call(pin.as_ref(), |c| match &request {
                SignRequest::Digest(r) => {
                    c.sign_digest(&op.key.name, &r.digest, Some(r.hash), r.padding)
                }
                SignRequest::Message(m) => c.sign_message(&op.key.name, m),
            })
            .map_err(|e| e.rv())?;
        let signature = op
            .mechanism
            .signature(&op.key.public, &answer.signature.0)?;
        Ok(SignOut::Signature(signature))
    }

    // -----------------------------------------------------------------------------
    // Key generation and certificates

    /// `C_GenerateKeyPair`: the agent's `generate_key` for `DEVICE/LABEL`, the label
    /// from the private template's `CKA_LABEL`, else the public one's. Returns the
    /// public and private key handles.
    pub fn generate_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        public: &Template,
        private: &Template,
    ) -> Rv<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let session = self.session(h)?;
        let (device, rw) = {
            let s = lock(&session);
            (s.device.clone(), s.rw)
        };
        if !rw {
            return Err(CKR_SESSION_READ_ONLY);
        }
        let request = KeygenRequest::from_templates(mechanism, public, private)?;
        // Only a PKCS#11 token keeps a CKA_ID of the caller's choosing (the agent's
        // `raw_id`, docs/protocol.md `generate_key`); TPM and YubiKey keys get SHA-1 of
        // their key bits.
        if request.id.is_some()
            && self
                .kind_of(&device)
                .is_some_and(|k| k != DeviceKind::Pkcs11)
        {
            return Err(CKR_ATTRIBUTE_VALUE_INVALID);
        }
        self.check_login(&device)?;
        let name = format!("{device}/{}", request.label);
        let pin = self.pin_of(&device);
        let made = self
            .agent
            .call(pin.as_ref(), |c| match &request.id {
                Some(id) => c.generate_key_id(&name, request.alg, id),
                None => c.generate_key(&name, request.alg),
            })
            .map_err(|e| match e {
                // The label or id in use, a label the device cannot name a key by (a
                // YubiKey's keys are named by PIV slot: `unknown-key`), a value the
                // agent refuses: all are the template's values.
                AgentError::Code(
                    ErrorCode::KeyExists | ErrorCode::UnknownKey | ErrorCode::BadRequest,
                ) => CKR_ATTRIBUTE_VALUE_INVALID,
                other => other.rv(),
            })?;
        let token_id = made.key.id.as_ref().map(|b| b.0.as_slice());
        let key = Key::new(&made.key.name, made.key.alg, &made.spki_der.0, token_id)
            .ok_or(CKR_DEVICE_ERROR)?;
        let name = key.name.clone();
        let mut state = lock(&self.state);
        state.insert(key);
        let public = state.handle(&name, Class::Public);
        let private = state.handle(&name, Class::Private);
        Ok((public, private))
    }

    /// `C_CreateObject`: only X.509 certificates, stored by the agent for the key on
    /// the session's token whose public key is the certificate's.
    pub fn create_object(&self, h: CK_SESSION_HANDLE, template: &Template) -> Rv<CK_OBJECT_HANDLE> {
        let session = self.session(h)?;
        let (device, rw) = {
            let s = lock(&session);
            (s.device.clone(), s.rw)
        };
        let request = CertRequest::from_template(template)?;
        if !rw {
            return Err(CKR_SESSION_READ_ONLY);
        }
        self.check_login(&device)?;
        self.refresh_keys(&device)?;
        let key = {
            let state = lock(&self.state);
            let prefix = format!("{device}/");
            state
                .keys
                .values()
                .find(|k| k.name.starts_with(&prefix) && k.spki == request.cert.spki)
                .cloned()
                .ok_or(CKR_ATTRIBUTE_VALUE_INVALID)?
        };
        // The certificate takes the CKA_ID the caller gave, else its key's (the agent
        // lets a certificate share its own key's CKA_ID: that is how programs pair
        // them, docs/protocol.md `store_certificate`).
        let raw_id = request.id.clone().unwrap_or_else(|| key.id.clone());
        let pin = self.pin_of(&device);
        self.agent
            .call(pin.as_ref(), |c| {
                c.store_certificate_id(
                    &key.name,
                    &raw_id,
                    request.label.as_deref(),
                    &request.cert.der,
                )
            })
            .map_err(|e| match e {
                AgentError::Code(ErrorCode::KeyExists) => CKR_ATTRIBUTE_VALUE_INVALID,
                other => other.rv(),
            })?;
        let mut updated = (*key).clone();
        updated.certificate = Some(request.cert);
        updated.certificate_label = request.label;
        let name = updated.name.clone();
        let mut state = lock(&self.state);
        state.insert(updated);
        Ok(state.handle(&name, Class::Certificate))
    }
}

impl State {
    /// Adds or replaces a key and gives each of its objects a handle.
    fn insert(&mut self, key: Key) {
        let name = key.name.clone();
        let classes: Vec<Class> = [Class::Private, Class::Public, Class::Certificate]
            .into_iter()
            .filter(|c| key.has(*c))
            .collect();
        self.keys.insert(name.clone(), Arc::new(key));
        for class in classes {
            self.handle(&name, class);
        }
    }

    /// The handle of an object, given one if it has none yet.
    fn handle(&mut self, name: &str, class: Class) -> CK_OBJECT_HANDLE {
        let id = (name.to_string(), class);
        if let Some(h) = self.handles.get(&id) {
            return *h;
        }
        let h = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(id.clone(), h);
        self.objects.insert(h, id);
        h
    }
}

/// What `C_GenerateKeyPair`'s templates ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeygenRequest {
    /// The algorithm.
    pub alg: KeyAlg,
    /// The key's label.
    pub label: String,
    /// The `CKA_ID` the caller asked for (the agent's `raw_id`), if any.
    pub id: Option<Vec<u8>>,
}

impl KeygenRequest {
    /// Reads the mechanism and templates. A `CKA_ID` (1 to 64 bytes, the same in both
    /// templates when both have one) becomes the new key pair's `CKA_ID` on the token.
    pub fn from_templates(
        mechanism: CK_MECHANISM_TYPE,
        public: &Template,
        private: &Template,
    ) -> Rv<KeygenRequest> {
        let alg = match mechanism {
            CKM_EC_KEY_PAIR_GEN => {
                let params = public
                    .get(CKA_EC_PARAMS)?
                    .or(private.get(CKA_EC_PARAMS)?)
                    .ok_or(CKR_TEMPLATE_INCOMPLETE)?;
                match Curve::from_params(params) {
                    Ok(Curve::P256) => KeyAlg::P256,
                    Ok(Curve::P384) => KeyAlg::P384,
                    Err(_) => return Err(CKR_CURVE_NOT_SUPPORTED),
                }
            }
            CKM_EC_EDWARDS_KEY_PAIR_GEN => {
                // The curve is named by printable string or OID (PKCS#11 v3.0); only
                // Ed25519 is offered, so naming none is Ed25519 too.
                match public.get(CKA_EC_PARAMS)?.or(private.get(CKA_EC_PARAMS)?) {
                    None => KeyAlg::Ed25519,
                    Some(p) if p == EDWARDS25519_PARAMS || p == ED25519_OID_PARAMS => {
                        KeyAlg::Ed25519
                    }
                    Some(_) => return Err(CKR_CURVE_NOT_SUPPORTED),
                }
            }
            CKM_RSA_PKCS_KEY_PAIR_GEN => {
                let bits = public
                    .ulong(CKA_MODULUS_BITS)?
                    .ok_or(CKR_TEMPLATE_INCOMPLETE)?;
                let alg = u32::try_from(bits)
                    .map(KeyAlg::Rsa)
                    .map_err(|_| CKR_KEY_SIZE_RANGE)?;
                if !alg.is_generatable() {
                    return Err(CKR_KEY_SIZE_RANGE);
                }
                if let Some(e) = public.get(CKA_PUBLIC_EXPONENT)? {
                    let significant: Vec<u8> = e.iter().copied().skip_while(|b| *b == 0).collect();
                    if significant != [1, 0, 1] {
                        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
                    }
                }
                alg
            }
            _ => return Err(CKR_MECHANISM_INVALID),
        };
        // The key never leaves the device: a template asking for that is refused. Usage
        // flags other than signing (CKA_DERIVE, CKA_DECRYPT… which pkcs11-tool sets by
        // default) are ignored: the objects show them false.
        if private.bool(CKA_EXTRACTABLE)? == Some(true)
            || private.bool(CKA_SENSITIVE)? == Some(false)
            || private.bool(CKA_SIGN)? == Some(false)
        {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        let label = match private.text(CKA_LABEL)? {
            Some(l) => l,
            None => public.text(CKA_LABEL)?.ok_or(CKR_TEMPLATE_INCOMPLETE)?,
        };
        if label.is_empty() || label.contains('/') || label.chars().any(char::is_control) {
            return Err(CKR_ATTRIBUTE_VALUE_INVALID);
        }
        let id = match (public.get(CKA_ID)?, private.get(CKA_ID)?) {
            (Some(a), Some(b)) if a != b => return Err(CKR_TEMPLATE_INCONSISTENT),
            (Some(id), _) | (None, Some(id)) => Some(id.to_vec()),
            (None, None) => None,
        };
        if id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > MAX_OBJECT_ID)
        {
            return Err(CKR_ATTRIBUTE_VALUE_INVALID);
        }
        Ok(KeygenRequest {
            alg,
            label: label.to_string(),
            id,
        })
    }
}

/// What `C_CreateObject`'s template asks for: a certificate to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    /// The certificate.
    pub cert: CertFields,
    /// `CKA_ID`, if given.
    pub id: Option<Vec<u8>>,
    /// `CKA_LABEL`, if given.
    pub label: Option<String>,
}

impl CertRequest {
    /// Reads the template: `CKO_CERTIFICATE`, `CKC_X_509` and a DER `CKA_VALUE`.
    /// Any other class of object cannot be created here.
    pub fn from_template(template: &Template) -> Rv<CertRequest> {
        let class = template.ulong(CKA_CLASS)?.ok_or(CKR_TEMPLATE_INCOMPLETE)?;
        if class != CKO_CERTIFICATE {
            return Err(CKR_ATTRIBUTE_VALUE_INVALID);
        }
        if let Some(ty) = template.get(CKA_CERTIFICATE_TYPE)? {
            if decode_ulong(ty)? != CKC_X_509 {
                return Err(CKR_ATTRIBUTE_VALUE_INVALID);
            }
        }
        let value = template.get(CKA_VALUE)?.ok_or(CKR_TEMPLATE_INCOMPLETE)?;
        let cert = CertFields::parse(value).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
        let id = template.get(CKA_ID)?.map(<[u8]>::to_vec);
        if id
            .as_ref()
            .is_some_and(|id| id.is_empty() || id.len() > MAX_OBJECT_ID)
        {
            return Err(CKR_ATTRIBUTE_VALUE_INVALID);
        }
        let label = template.text(CKA_LABEL)?.map(str::to_string);
        Ok(CertRequest { cert, id, label })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use waxseal_proto::proto::DeviceKind;

    use super::*;
    use crate::template::{bool_value, ulong, Attribute};

    fn tpl(attrs: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>) -> Template {
        Template(
            attrs
                .into_iter()
                .map(|(ty, value)| Attribute { ty, value })
                .collect(),
        )
    }

    #[test]
    fn keygen_templates_name_the_algorithm_and_label() {
        let ec = tpl(vec![(CKA_EC_PARAMS, Curve::P384.params())]);
        let label = tpl(vec![(CKA_LABEL, b"new".to_vec())]);
        assert_eq!(
            KeygenRequest::from_templates(CKM_EC_KEY_PAIR_GEN, &ec, &label),
            Ok(KeygenRequest {
                alg: KeyAlg::P384,
                label: "new".into(),
                id: None,
            })
        );
        // The private template's label wins over the public one's.
        let both = tpl(vec![
            (CKA_EC_PARAMS, Curve::P256.params()),
            (CKA_LABEL, b"pub".to_vec()),
        ]);
        assert_eq!(
            KeygenRequest::from_templates(CKM_EC_KEY_PAIR_GEN, &both, &label)
                .unwrap()
                .label,
            "new"
        );
        assert_eq!(
            KeygenRequest::from_templates(CKM_EC_KEY_PAIR_GEN, &ec, &tpl(vec![])),
            Err(CKR_TEMPLATE_INCOMPLETE)
        );
        let rsa = tpl(vec![
            (CKA_MODULUS_BITS, ulong(3072)),
            (CKA_PUBLIC_EXPONENT, vec![1, 0, 1]),
        ]);
        assert_eq!(
            KeygenRequest::from_templates(CKM_RSA_PKCS_KEY_PAIR_GEN, &rsa, &label)
                .unwrap()
                .alg,
            KeyAlg::Rsa(3072)
        );
        let small = tpl(vec![(CKA_MODULUS_BITS, ulong(1024))]);
        assert_eq!(
            KeygenRequest::from_templates(CKM_RSA_PKCS_KEY_PAIR_GEN, &small, &label),
            Err(CKR_KEY_SIZE_RANGE)
        );
        let e3 = tpl(vec![
            (CKA_MODULUS_BITS, ulong(2048)),
            (CKA_PUBLIC_EXPONENT, vec![3]),
        ]);
        assert_eq!(
            KeygenRequest::from_templates(CKM_RSA_PKCS_KEY_PAIR_GEN, &e3, &label),
            Err(CKR_ATTRIBUTE_VALUE_INVALID)
        );
        let extractable = tpl(vec![
            (CKA_LABEL, b"x".to_vec()),
            (CKA_EXTRACTABLE, bool_value(true)),
        ]);
        assert_eq!(
            KeygenRequest::from_templates(CKM_EC_KEY_PAIR_GEN, &ec, &extractable),
            Err(CKR_TEMPLATE_INCONSISTENT)
        );
        let slash = tpl(vec![(CKA_LABEL, b"a/b".to_vec())]);
        assert_eq!(
            KeygenRequest::from_templates(CKM_EC_KEY_PAIR_GEN, &ec, &slash),
            Err(CKR_ATTRIBUTE_VALUE_INVALID)
        );
        assert_eq!(
            KeygenRequest::from_templates(CKM_ECDSA, &ec, &label),
            Err(CKR_MECHANISM_INVALID)
        );
    }

    #[test]
    fn only_certificates_are_created() {
        let key = tpl(vec![(CKA_CLASS, ulong(CKO_PRIVATE_KEY))]);
        assert_eq!(
            CertRequest::from_template(&key),
            Err(CKR_ATTRIBUTE_VALUE_INVALID)
        );
        let junk = tpl(vec![
            (CKA_CLASS, ulong(CKO_CERTIFICATE)),
            (CKA_VALUE, vec![0x30, 0x00]),
        ]);
        assert_eq!(
            CertRequest::from_template(&junk),
            Err(CKR_ATTRIBUTE_VALUE_INVALID)
        );
        let empty = tpl(vec![(CKA_CLASS, ulong(CKO_CERTIFICATE))]);
        assert_eq!(
            CertRequest::from_template(&empty),
            Err(CKR_TEMPLATE_INCOMPLETE)
        );
    }

    #[test]
    fn a_module_without_an_agent_has_no_slots() {
        let dir = std::env::temp_dir().join(format!("waxseal-p11-none-{}", std::process::id()));
        let module = Module::new(dir.join("agent.sock"));
        assert_eq!(module.slots(false), Vec::<CK_SLOT_ID>::new());
        assert_eq!(
            module.open_session(0, CKF_SERIAL_SESSION).err(),
            Some(CKR_SLOT_ID_INVALID)
        );
        assert_eq!(
            module.sign(7, b"x", None).err(),
            Some(CKR_SESSION_HANDLE_INVALID)
        );
    }

    #[test]
    fn serials_come_from_the_detail_or_a_hash() {
        let mut d = DeviceStatus {
            name: "hsm".into(),
            kind: DeviceKind::Pkcs11,
            present: true,
            keys: 0,
            detail: "SoftHSM project SoftHSM v2 token 'w' serial 5a1c0e3f9b2d4c71".into(),
            error: None,
            pin_prompt: false,
        };
        assert_eq!(serial_of(&d), "5a1c0e3f9b2d4c71");
        d.detail.clear();
        let hashed = serial_of(&d);
        assert_eq!(hashed.len(), 16);
        assert_eq!(hashed, serial_of(&d), "stable");
    }
}
