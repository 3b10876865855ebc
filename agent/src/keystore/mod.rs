//! The registry of devices and keys: routes a key NAME to its device's lanes, holds
//! the lock state, the policy, the rate counts, the confirmer and the event bus, and
//! answers the operations that are not signatures. Every signature goes through the
//! gate ([`gate`]).

mod approval;
mod gate;
mod import;
mod lock;

pub use gate::{Gated, Pending, Prepared, Signature, SshSign};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Map};

use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::audit::{self, Audit, Record, Tail, TAIL_BUDGET};
use crate::backend::{self, Backend, BackendError, CertObject, Code, GenerateOptions};
use crate::config::{self, Config};
use crate::confirm::ConfirmError;
use crate::keyuri::KeyName;
use crate::policy::{Caller, Policy};
use crate::proto::{
    AttestOk, AuditStatus, Bytes, DeviceKind, DeviceStatus, ErrorCode, GenerateKey, GenerateKeyOk,
    KeyAlg, KeyInfo, ListKeysOk, PublicKeyOk, Purpose, StatusOk, StoreCertificate,
    StoreCertificateOk, WireError, AGENT_NAME, PROTOCOL_VERSION,
};
use crate::rates::RateBook;
use crate::worker::{DeviceLanes, LaneError};

/// One configured device and its lanes.
#[derive(Debug)]
struct Device {
    name: String,
    kind: DeviceKind,
    lanes: DeviceLanes,
    /// `pin_ttl`: how long the device may hold a PIN.
    pin_ttl: Option<Duration>,
    /// `pin = "prompt"`: the requesting client is asked for the PIN.
    pin_prompt: bool,
    /// Since when the device has held the PIN (first success after it was dropped).
    pin_since: Mutex<Option<Instant>>,
}

/// Every device, and the policy over their keys.
pub struct KeyStore {
    devices: Vec<Device>,
    /// Replaced whole when the config is reloaded (SIGHUP).
    policy: RwLock<Arc<Policy>>,
    /// SHA-256 of the passphrase that locked the agent (`ssh-add -x`), if locked.
    lock: Mutex<Option<Zeroizing<[u8; 32]>>>,
    /// Locked by the user (`waxseal lock`, D-Bus `Lock`) until `unlock`.
    user_locked: AtomicBool,
    /// Observers of [`Event`]s (the D-Bus face).
    events: Mutex<Vec<crossbeam_channel::Sender<Event>>>,
    /// Who asks a person to confirm a signature, for keys with `confirm = true`.
    confirmer: RwLock<Option<Arc<dyn Confirmer>>>,
    /// The audit log; `None` only for key stores made without one (tools, benches).
    audit: Option<Audit>,
    /// What each rate-limited key signed over the last day, counted from the audit log
    /// at start ([`crate::rates`]).
    rates: RateBook,
    /// Requests waiting for approvals ([`crate::approvals`]).
    approvals: crate::approvals::Approvals,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("devices", &self.devices)
            .field("locked", &self.is_locked())
            .finish_non_exhaustive()
    }
}

/// What the agent did, for observers such as the D-Bus face.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A signature was returned to a client.
    SignatureIssued {
        /// Key NAME.
        key: String,
        /// Purpose.
        purpose: Purpose,
        /// Who asked.
        caller: Caller,
    },
    /// The agent was locked (`true`) or unlocked.
    Locked(bool),
}

/// The requesting client, for what only it can do in the middle of a request.
pub trait Interaction {
    /// Tells the person something (e.g. to touch their YubiKey).
    fn notice(&mut self, text: &str);
    /// Asks the person for a PIN; `None` when nobody can be asked or they cancelled.
    fn ask_pin(&mut self, question: &str) -> Option<secrecy::SecretString>;
    /// Tells the person their request waits for approvals, or who has approved since
    /// (docs/protocol.md, "Approvals"); by default as a plain notice.
    fn approval(&mut self, text: &str, _info: &crate::proto::ApprovalInfo) {
        self.notice(text);
    }
    /// Whether the requester went away (closed its connection) while its request
    /// waits; by default it is assumed to be there.
    fn gone(&mut self) -> bool {
        false
    }
}

/// A client that cannot be asked anything (ssh.sock, tools).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoInteraction;

impl Interaction for NoInteraction {
    fn notice(&mut self, _text: &str) {}
    fn ask_pin(&mut self, _question: &str) -> Option<secrecy::SecretString> {
        None
    }
}

/// A question to a person: may this signature be made?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmRequest {
    /// Key NAME.
    pub key: String,
    /// Purpose.
    pub purpose: Purpose,
    /// Who asks.
    pub caller: Caller,
    /// What is signed: the digest (hex) and artifact name, or the certificate's summary.
    pub what: String,
}

impl ConfirmRequest {
    /// The question as one text, for a notification or a prompt program.
    pub fn text(&self) -> String {
        format!(
            "Sign with {} for {}?\nAsked by {}\n{}",
            self.key,
            self.purpose,
            self.caller.describe(),
            self.what
        )
    }
}

/// Asks a person to allow or deny a signature. Blocks until answered; no answer in
/// time is a denial. `Err` means nobody could be asked (also a denial, said so).
pub trait Confirmer: Send + Sync {
    /// `Ok(true)` allow, `Ok(false)` deny.
    fn confirm(&self, request: &ConfirmRequest) -> Result<bool, ConfirmError>;
}

/// A key offered on `ssh.sock`.
#[derive(Debug, Clone)]
pub struct SshKey {
    /// Key NAME (the identity's comment).
    pub name: String,
    /// Algorithm.
    pub alg: KeyAlg,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
}

impl From<LaneError> for WireError {
    fn from(e: LaneError) -> Self {
        WireError::new(ErrorCode::DeviceError, e.to_string())
    }
}

fn wire(e: BackendError) -> WireError {
    e.to_wire()
}

impl KeyStore {
    /// Sets up every configured device. Devices connect on first use.
    pub fn open(config: &Config) -> KeyStore {
        #[cfg(feature = "tpm")]
        let state_dir = config
            .agent
            .state_dir
            .clone()
            .unwrap_or_else(crate::paths::state_dir);
        let mut devices = Vec::new();
        for d in &config.devices {
            let lanes: Vec<Box<dyn Backend>> = match &d.kind {
                #[cfg(feature = "pkcs11")]
                config::DeviceKind::Pkcs11 {
                    module,
                    token,
                    sessions,
                } => backend::pkcs11::open(backend::pkcs11::Pkcs11Settings {
                    name: d.name.clone(),
                    module: module.clone(),
                    token: token.clone(),
                    pin: d.pin.clone(),
                    sessions: *sessions,
                }),
                #[cfg(not(feature = "pkcs11"))]
                config::DeviceKind::Pkcs11 { .. } => {
                    warn!(device = %d.name, "this agent was built without the pkcs11 feature; device skipped");
                    continue;
                }
                #[cfg(feature = "tpm")]
                config::DeviceKind::Tpm { tcti, key_dir } => {
                    backend::tpm::open(backend::tpm::TpmSettings {
                        name: d.name.clone(),
                        tcti: tcti.clone(),
                        key_dir: key_dir.clone().unwrap_or_else(|| state_dir.join("tpm")),
                        pin: d.pin.clone(),
                    })
                }
                #[cfg(not(feature = "tpm"))]
                config::DeviceKind::Tpm { .. } => {
                    warn!(device = %d.name, "this agent was built without the tpm feature; device skipped");
                    continue;
                }
                #[cfg(feature = "yubikey")]
                config::DeviceKind::Yubikey { serial, mgm_key } => {
                    backend::yubikey::open(backend::yubikey::YubikeySettings {
                        name: d.name.clone(),
                        serial: *serial,
                        pin: d.pin.clone(),
                        mgm_key: mgm_key.clone(),
                    })
                }
                #[cfg(not(feature = "yubikey"))]
                config::DeviceKind::Yubikey { .. } => {
                    warn!(device = %d.name, "this agent was built without the yubikey feature; device skipped");
                    continue;
                }
            };
            info!(device = %d.name, kind = %d.kind.kind(), lanes = lanes.len(), "device configured");
            devices.push(Device {
                name: d.name.clone(),
                kind: d.kind.kind(),
                lanes: DeviceLanes::new(&d.name, lanes),
                pin_ttl: d.pin_ttl,
                pin_prompt: matches!(d.pin, Some(crate::pin::PinSource::Prompt)),
                pin_since: Mutex::new(None),
            });
        }
        KeyStore {
            devices,
            policy: RwLock::new(Arc::new(Policy::new(&config.keys))),
            lock: Mutex::new(None),
            user_locked: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
            confirmer: RwLock::new(None),
            audit: None,
            rates: RateBook::new(),
            approvals: crate::approvals::Approvals::default(),
        }
    }

    /// Shares the store, and starts what runs beside the requests: the sweeper that
    /// drops PINs held longer than their device's `pin_ttl`.
    pub fn start(self) -> Arc<KeyStore> {
        let store = Arc::new(self);
        if store.devices.iter().any(|d| d.pin_ttl.is_some()) {
            let weak = Arc::downgrade(&store);
            let spawned = std::thread::Builder::new()
                .name("waxseal-pin-ttl".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_millis(500));
                    let Some(store) = weak.upgrade() else { return };
                    store.expire_pins();
                });
            if let Err(e) = spawned {
                warn!(error = %e, "cannot start the pin_ttl sweeper; PINs are kept");
            }
        }
        store
    }

    /// Drops the PIN of every device that has held it longer than its `pin_ttl`.
    fn expire_pins(&self) {
        for d in &self.devices {
            let Some(ttl) = d.pin_ttl else { continue };
            let mut since = d.pin_since.lock().unwrap_or_else(|p| p.into_inner());
            if since.is_some_and(|t| t.elapsed() >= ttl) {
                *since = None;
                drop(since);
                if let Err(e) = d.lanes.run(|b| b.forget_pin()) {
                    warn!(device = %d.name, error = %e, "cannot drop the PIN after pin_ttl");
                } else {
                    info!(device = %d.name, ttl_secs = ttl.as_secs(), "pin_ttl passed: PIN dropped");
                }
            }
        }
    }

    /// Notes that `device` holds its PIN (after a successful operation).
    fn pin_in_use(&self, device: &Device) {
        if device.pin_ttl.is_some() {
            let mut since = device.pin_since.lock().unwrap_or_else(|p| p.into_inner());
            since.get_or_insert_with(Instant::now);
        }
    }

    /// Records every signature and refusal in `audit` from now on; rate limits start
    /// from the signatures it counted when it was opened.
    pub fn with_audit(mut self, audit: Audit) -> KeyStore {
        if let Some(seed) = audit.take_seed() {
            self.rates.seed(seed);
        }
        self.audit = Some(audit);
        self
    }

    /// The last `n` audit records, newest kept first, within [`TAIL_BUDGET`] bytes of
    /// record text (so the answer fits a frame); `omitted` says how many did not fit.
    pub fn audit_tail(&self, n: usize) -> Tail {
        self.audit
            .as_ref()
            .map_or_else(Tail::default, |a| a.tail(n, TAIL_BUDGET))
    }

    /// Bytes on a connection came from `sender`, not from the process that connected
    /// (`connected`): refused, logged and audited; the face closes the connection.
    /// Returns the error to send before closing.
    pub fn refuse_foreign(
        &self,
        connected: &Caller,
        sender: Option<crate::wire::Sender>,
        socket: &str,
    ) -> WireError {
        let from = sender.map_or_else(
            || Caller {
                uid: u32::MAX,
                ..Caller::default()
            },
            |s| Caller::from_peer(s.uid, Some(s.pid)),
        );
        let e = WireError::new(
            ErrorCode::PolicyDenied,
            format!(
                "a request on this connection came from {}, not from the process that connected ({}); the connection is closed",
                if sender.is_some() { from.describe() } else { "a sender the kernel did not name".into() },
                connected.describe()
            ),
        );
        warn!(socket, sender = %from.describe(), connected = %connected.describe(), "request from another process than the one that connected; connection closed");
        if let Some(audit) = &self.audit {
            let mut subject = Map::new();
            subject.insert("socket".into(), json!(socket));
            subject.insert(
                "connected".into(),
                json!({
                    "uid": connected.uid,
                    "pid": connected.pid,
                    "exe": connected.exe.as_ref().map(|p| p.display().to_string()),
                }),
            );
            let record = Record {
                event: audit::Event::Refused,
                key: String::new(),
                purpose: Some(audit::Purpose::Connection),
                caller: from,
                subject,
                outcome: Some((e.code, e.message.clone())),
                intent: None,
            };
            if let Err(err) = audit.append(&record) {
                warn!(error = %err, "refusal not recorded in the audit log");
            }
        }
        e
    }

    fn device(&self, name: &str) -> Result<&Device, WireError> {
        self.devices.iter().find(|d| d.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.devices.iter().map(|d| d.name.as_str()).collect();
            WireError::new(
                ErrorCode::UnknownKey,
                format!(
                    "no device named `{name}` (configured: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
    }

    fn split<'a>(&self, key: &'a str) -> Result<(&Device, KeyName<'a>), WireError> {
        let name = KeyName::parse(key)
            .map_err(|e| WireError::new(ErrorCode::UnknownKey, e.to_string()))?;
        Ok((self.device(name.device)?, name))
    }

    fn key_info(&self, device: &str, key: backend::DeviceKey) -> KeyInfo {
        let name = format!("{device}/{}", key.label);
        KeyInfo {
            purposes: self.policy().purposes(&name),
            name,
            device: device.to_string(),
            alg: key.alg,
            uri: key.uri,
            id: key.id.map(Bytes),
            pcrs: key.pcrs,
            imported: key.imported,
        }
    }

    /// `status`: every device, present or not.
    pub fn status(&self) -> StatusOk {
        let mut devices = Vec::with_capacity(self.devices.len());
        let mut total = 0;
        for d in &self.devices {
            let pin_prompt = d.pin_prompt;
            let status = match d.lanes.run(|b| b.info()).map_err(WireError::from) {
                Ok(Ok(info)) => {
                    total += info.keys;
                    DeviceStatus {
                        name: d.name.clone(),
                        kind: d.kind,
                        present: true,
                        keys: info.keys,
                        detail: info.detail,
                        error: None,
                        pin_prompt,
                    }
                }
                Ok(Err(e)) => DeviceStatus {
                    name: d.name.clone(),
                    kind: d.kind,
                    present: e.code != Code::Absent,
                    keys: 0,
                    detail: String::new(),
                    error: Some(e.to_wire().to_string()),
                    pin_prompt,
                },
                Err(e) => DeviceStatus {
                    name: d.name.clone(),
                    kind: d.kind,
                    present: false,
                    keys: 0,
                    detail: String::new(),
                    error: Some(e.to_string()),
                    pin_prompt,
                },
            };
            devices.push(status);
        }
        StatusOk {
            agent: AGENT_NAME.to_string(),
            version: PROTOCOL_VERSION,
            devices,
            keys: total,
            audit: self.audit.as_ref().map(|a| {
                let c = a.counts();
                AuditStatus {
                    durability: a.durability().word().to_string(),
                    appended: c.appended,
                    syncs: c.syncs,
                    waited: c.waited,
                }
            }),
        }
    }

    /// Whether each device is there, checked without logging in.
    pub fn presence(&self) -> Vec<(String, bool)> {
        self.devices
            .iter()
            .map(|d| {
                let present = d.lanes.run(|b| b.present()).unwrap_or(false);
                (d.name.clone(), present)
            })
            .collect()
    }

    /// `list_keys`: keys of every present device; absent devices are logged and skipped.
    pub fn list_keys(&self) -> ListKeysOk {
        let mut keys = Vec::new();
        for d in &self.devices {
            match d.lanes.run(|b| b.list_keys()) {
                Ok(Ok(list)) => keys.extend(list.into_iter().map(|k| self.key_info(&d.name, k))),
                Ok(Err(e)) => warn!(device = %d.name, error = %e, "device left out of list_keys"),
                Err(e) => warn!(device = %d.name, error = %e, "device left out of list_keys"),
            }
        }
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        ListKeysOk { keys }
    }

    /// `public_key`, with the certificate the device holds for the key, if any. A
    /// certificate that cannot be read is logged and left out: the public key stands.
    pub fn public_key(&self, key: &str) -> Result<PublicKeyOk, WireError> {
        let (device, name) = self.split(key)?;
        let (pk, certificate) = device
            .lanes
            .run(|b| {
                let pk = b.public_key(name.label)?;
                let certificate = b.certificate(name.label).unwrap_or_else(|e| {
                    warn!(key, error = %e, "the key's certificate cannot be read; left out");
                    None
                });
                Ok::<_, BackendError>((pk, certificate))
            })?
            .map_err(wire)?;
        let (certificate, certificate_id, certificate_label) = match certificate {
            Some(c) => (Some(Bytes(c.der)), c.id.map(Bytes), c.label),
            None => (None, None, None),
        };
        Ok(PublicKeyOk {
            pem: backend::crypto::spki_pem(&pk.spki_der),
            spki_der: Bytes(pk.spki_der),
            alg: pk.alg,
            certificate,
            certificate_id,
            certificate_label,
        })
    }

    /// The public key of `key` alone (no certificate lookup).
    fn spki(&self, key: &str) -> Result<backend::PublicKey, WireError> {
        let (device, name) = self.split(key)?;
        device
            .lanes
            .run(|b| b.public_key(name.label))?
            .map_err(wire)
    }

    /// `generate_key`.
    pub fn generate(&self, req: &GenerateKey) -> Result<GenerateKeyOk, WireError> {
        let alg = req.alg;
        let opts = GenerateOptions {
            touch: req.touch,
            pin_policy: req.pin_policy,
            id: req.id.as_ref().map(|id| id.0.clone()),
            pcrs: req.pcrs.clone(),
            pcr_values: req
                .pcr_values
                .as_ref()
                .map(|v| v.iter().map(|b| b.0.clone()).collect()),
        };
        let bad = |m: String| WireError::new(ErrorCode::BadRequest, m);
        req.check_id()
            .map_err(|m| bad(format!("generate_key: {m}")))?;
        let (device, name) = self.split(&req.key)?;
        if opts.id.is_some() && device.kind != DeviceKind::Pkcs11 {
            return Err(bad(format!(
                "generate_key: `raw_id` sets the CKA_ID of a key on a pkcs11 device; device {} is a {} device",
                device.name, device.kind
            )));
        }
        if opts.pcrs.is_some() && device.kind != DeviceKind::Tpm {
            return Err(bad(format!(
                "generate_key: `pcrs` binds a TPM key to PCRs; device {} is a {} device",
                device.name, device.kind
            )));
        }
        if !alg.is_generatable() {
            return Err(WireError::new(
                ErrorCode::Unsupported,
                format!(
                    "cannot generate {alg} keys (p256, p384, rsa2048, rsa3072, rsa4096, ed25519)"
                ),
            ));
        }
        let (k, pk) = device
            .lanes
            .run(|b| b.generate_with(name.label, alg, &opts))?
            .map_err(wire)?;
        Ok(GenerateKeyOk {
            key: self.key_info(&device.name, k),
            pem: backend::crypto::spki_pem(&pk.spki_der),
            spki_der: Bytes(pk.spki_der),
        })
    }

    /// `attest`: the device's evidence that the key was made inside it.
    pub fn attest(&self, key: &str, nonce: Option<&[u8]>) -> Result<AttestOk, WireError> {
        let (device, name) = self.split(key)?;
        let mut fresh = [0u8; 32];
        let nonce = match nonce {
            Some(n) => n,
            None => {
                getrandom::getrandom(&mut fresh).map_err(|e| {
                    WireError::new(
                        ErrorCode::DeviceError,
                        format!("no randomness for a nonce: {e}"),
                    )
                })?;
                &fresh[..]
            }
        };
        let a = device
            .lanes
            .run(|b| b.attest(name.label, nonce))?
            .map_err(wire)?;
        info!(key, format = %a.format, "attestation issued");
        Ok(AttestOk {
            key: key.to_string(),
            format: a.format,
            evidence: a.evidence,
        })
    }

    /// `store_certificate`: checks that `cert` is a certificate for `key`, then stores
    /// it on the key's device.
    pub fn store_certificate(
        &self,
        req: &StoreCertificate,
    ) -> Result<StoreCertificateOk, WireError> {
        self.check_unlocked()?;
        let (device, name) = self.split(&req.key)?;
        let bad = |m: String| WireError::new(ErrorCode::BadRequest, m);
        req.check_id()
            .map_err(|m| bad(format!("store_certificate: {m}")))?;
        // The answer's `object_id`: as given, or the hex of `raw_id`.
        let object_id = req
            .object_id
            .clone()
            .unwrap_or_else(|| hex::encode(req.cka_id()));
        let label = req.label.clone().unwrap_or_else(|| "PKCS11CA".to_string());
        if label.is_empty() || label.len() > 64 {
            return Err(bad("`label` must be 1 to 64 characters".into()));
        }
        let object = CertObject::from_der(req.cka_id(), &label, &req.cert.0)
            .map_err(|e| bad(format!("store_certificate: {e}")))?;
        let pk = device
            .lanes
            .run(|b| b.public_key(name.label))?
            .map_err(wire)?;
        if object.spki != pk.spki_der {
            return Err(bad(format!(
                "store_certificate: the certificate (subject {}) is not for {}: its public key differs",
                object.subject_text, req.key
            )));
        }
        device
            .lanes
            .run(|b| b.store_certificate(name.label, &object))?
            .map_err(wire)?;
        info!(key = %req.key, object_id = %object_id, label = %label, subject = %object.subject_text, "certificate stored on the device");
        Ok(StoreCertificateOk {
            key: req.key.clone(),
            object_id,
            label,
        })
    }

    /// With `pin = "prompt"`: before an operation on `key`, asks the requesting person
    /// for the device's PIN when it needs a login.
    pub fn login_interactively(
        &self,
        key: &str,
        ui: &mut dyn Interaction,
    ) -> Result<(), WireError> {
        let (device, _) = self.split(key)?;
        self.prompt_pin(device, ui)
    }

    /// Whether the agent is locked (by `ssh-add -x` or by the user).
    pub fn is_locked(&self) -> bool {
        self.user_locked.load(Ordering::Acquire) || self.ssh_locked()
    }

    /// The current policy.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the policy (config reload).
    pub fn set_policy(&self, policy: Policy) {
        let new = Arc::new(policy);
        let old = std::mem::replace(
            &mut *self.policy.write().unwrap_or_else(|p| p.into_inner()),
            new.clone(),
        );
        self.rates.policy_changed(&old, &new);
    }

    /// Installs who asks people to confirm signatures.
    pub fn set_confirmer(&self, confirmer: Arc<dyn Confirmer>) {
        *self.confirmer.write().unwrap_or_else(|p| p.into_inner()) = Some(confirmer);
    }

    /// The current confirmer, if any.
    pub fn confirmer(&self) -> Option<Arc<dyn Confirmer>> {
        self.confirmer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A stream of [`Event`]s from now on.
    pub fn subscribe(&self) -> crossbeam_channel::Receiver<Event> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    fn emit(&self, event: Event) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|tx| tx.send(event.clone()).is_ok());
    }

    /// Forgets every PIN the devices hold (PKCS#11 sessions log out, YubiKeys are
    /// reopened), so the next signature needs the PIN again. For sleep, screen lock
    /// and `waxseal lock`.
    pub fn forget_pins(&self) {
        for d in &self.devices {
            *d.pin_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
            match d.lanes.run(|b| b.forget_pin()) {
                Ok(()) => {}
                Err(e) => warn!(device = %d.name, error = %e, "cannot drop the device's PIN"),
            }
        }
        info!("cached PINs dropped");
    }

    /// Keys offered on `ssh.sock`: those whose policy allows `ssh` (and, on a
    /// connection bound for forwarding, `ssh_forwarding`). None while locked.
    pub fn ssh_keys(&self, forwarded: bool) -> Vec<SshKey> {
        if self.is_locked() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for key in self.list_keys().keys {
            if !key.purposes.contains(&Purpose::Ssh)
                || (forwarded && !self.policy().ssh_forwarding(&key.name))
            {
                continue;
            }
            match self.spki(&key.name) {
                Ok(pk) => out.push(SshKey {
                    name: key.name,
                    alg: pk.alg,
                    spki: pk.spki_der,
                }),
                Err(e) => warn!(key = %key.name, error = %e, "key left out of the SSH identities"),
            }
        }
        out
    }

    /// Closes every idle lane (sessions logged out and closed by the module) and cuts the
    /// audit log to its records (`Audit::close`).
    pub fn shutdown(&self) {
        for d in &self.devices {
            d.lanes.close();
        }
        if let Some(audit) = &self.audit {
            audit.close();
        }
    }
}
