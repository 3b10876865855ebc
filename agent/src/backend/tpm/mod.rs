//! TPM 2.0 devices through `tss-esapi` (tpm2-tss ESAPI).
//!
//! Keys are ordinary signing keys under the owner hierarchy's storage root key (SRK),
//! made from the TCG's standard ECC P-256 SRK template so that other tools
//! (tpm2-openssl, ssh-tpm-agent, tpm2-tools) derive the same parent. The TPM returns
//! each key wrapped by the SRK; the agent stores it as a TSS2 PEM key file
//! ([`keyfile`]) under the device's key folder. Persistent keys (0x81……) are
//! listed and used as `DEVICE/0x81……`. A key may be bound to PCRs ([`pcr`]): it then
//! signs only in a policy session that passed TPM2_PolicyPCR, and a refusal is
//! `pcr-mismatch` naming the PCRs that differ. A key made elsewhere and duplicated for
//! the SRK is brought in by TPM2_Import ([`import`]) and stored the same way.
//!
//! An ESAPI context is not `Send`, so each TPM device is owned by one worker thread;
//! its single lane ([`TpmLane`]) sends that thread jobs. The thread keeps the SRK and
//! the most recently used keys loaded (a TPM holds only a few transient objects, so
//! the rest are flushed) and retries `TPM_RC_RETRY`/`YIELDED`/`TESTING`. Other failures
//! are sorted into the backend kit's faults ([`classify`]; [`super::fault`]): a broken
//! connection (a restarted TPM or swtpm) or an object gone from the TPM starts over on a
//! new connection, once; a TPM still gone answers `device-absent`. A wrong auth value is
//! never retried: its fingerprint is kept, as for PKCS#11 PINs, because each try counts
//! toward the TPM's dictionary-attack lockout.

mod ek;
mod import;
pub mod keyfile;
pub mod pcr;

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use secrecy::ExposeSecret as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tracing::{debug, error, info, warn};
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::response_code::{Tss2ResponseCode, Tss2ResponseCodeKind};
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::{CapabilityType, PropertyTag, SessionType, StartupType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, CapabilityData, Data, Digest, EccParameter, EccPoint, EccScheme, HashScheme,
    HashcheckTicket, KeyDerivationFunctionScheme, PcrSelectSize, PcrSelectionList, PcrSlot,
    Private, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyRsa,
    PublicRsaParametersBuilder, RsaExponent, RsaScheme, Signature, SignatureScheme,
    SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall as _, UnMarshall as _};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::Context;

use self::keyfile::{tpm2b, KeyFile, PARENT_OWNER};
use self::pcr::{PcrBinding, CC_POLICY_AUTH_VALUE, CC_POLICY_PCR};
use super::fault::{self, Fault, Faulted, Recover};
use super::pingate::{PinGate, PinOffer};
use super::{
    crypto, digest_hash, Attestation, Backend, BackendError, DeviceInfo, DeviceKey,
    GenerateOptions, PublicKey, SignInput, Signed,
};
use crate::pin::PinSource;
use crate::proto::{HashAlg, KeyAlg, PcrBank, PcrSelection, RsaPadding, MAX_PCR_VALUES_FILE};

/// Default TCTI: the kernel's resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// Keys kept loaded besides the SRK. A TPM has room for only a few transient objects
/// (three on the reference implementation and swtpm), and attestation needs one more.
const CACHED_KEYS: usize = 2;

/// How long a command answered with RETRY/YIELDED/TESTING is retried.
const RETRY_FOR: Duration = Duration::from_secs(5);

/// What a TPM device needs.
#[derive(Debug, Clone)]
pub struct TpmSettings {
    /// Device name from the config.
    pub name: String,
    /// TCTI configuration string, e.g. `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// Folder of the TSS2 PEM key files.
    pub key_dir: PathBuf,
    /// Source of the keys' auth value, if they have one.
    pub pin: Option<PinSource>,
}

/// Counters, for benchmarks and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TpmStats {
    /// TPM commands sent (including retries).
    pub commands: u64,
    /// Key loads (TPM2_Load or persistent-handle lookups).
    pub loads: u64,
    /// Connections made.
    pub connects: u64,
}

/// One TPM device's lanes: a single lane backed by the device's worker thread.
pub fn open(settings: TpmSettings) -> Vec<Box<dyn Backend>> {
    vec![Box::new(TpmLane::spawn(settings))]
}

// --- the lane: jobs to the worker thread ---------------------------------------------

type Job = Box<dyn FnOnce(&mut Tpm) + Send>;

/// The `Backend` face of a TPM device: forwards each call to the device's thread.
pub struct TpmLane {
    name: String,
    jobs: Option<crossbeam_channel::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for TpmLane {
    /// Stops the worker and waits for it to flush what it loaded: a TPM without a
    /// resource manager (swtpm, a bare /dev/tpm0) keeps transient objects otherwise.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for TpmLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmLane")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TpmLane {
    /// Starts the device's worker thread.
    pub fn spawn(settings: TpmSettings) -> TpmLane {
        let (jobs, rx) = crossbeam_channel::unbounded::<Job>();
        let name = settings.name.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("tpm-{name}"))
            .spawn(move || {
                let mut tpm = Tpm::new(settings);
                while let Some(job) = next_job(&rx) {
                    if catch_unwind(AssertUnwindSafe(|| job(&mut tpm))).is_err() {
                        error!(device = %tpm.settings.name, "a TPM operation panicked; the connection is dropped");
                        tpm.disconnect();
                    }
                }
                tpm.disconnect();
            });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                error!(device = %name, error = %e, "cannot start the TPM worker thread");
                None
            }
        };
        TpmLane {
            name,
            jobs: Some(jobs),
            thread,
        }
    }

    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tpm) -> Result<R, BackendError> + Send + 'static,
    ) -> Result<R, BackendError> {
        let gone =
            || BackendError::failed(&self.name, "the TPM worker stopped (see the agent log)");
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(Box::new(move |tpm: &mut Tpm| {
                let _ = tx.send(f(tpm));
            }))
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }
}

/// How long the worker polls for the next job before it sleeps. A client signing in a
/// loop sends its next request within a socket round trip; catching it awake saves the
/// wake-up (docs/architecture.md, "Threads and lanes").
const WORKER_SPIN: Duration = Duration::from_micros(150);

fn next_job(rx: &crossbeam_channel::Receiver<Job>) -> Option<Job> {
    let until = Instant::now() + WORKER_SPIN;
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return None,
            Err(crossbeam_channel::TryRecvError::Empty) if Instant::now() < until => {
                std::thread::yield_now();
            }
            Err(crossbeam_channel::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

impl Backend for TpmLane {
    fn name(&self) -> &str {
        &self.name
    }

    fn list_keys(&mut self) -> Result<Vec<DeviceKey>, BackendError> {
        self.call(|t| t.list_keys())
    }

    fn public_key(&mut self, label: &str) -> Result<PublicKey, BackendError> {
        let label = label.to_string();
        self.call(move |t| t.public_key(&label))
    }

    fn generate(
        &mut self,
        label: &str,
        alg: KeyAlg,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        let label = label.to_string();
        self.call(move |t| t.generate(&label, alg, None, None))
    }

    fn generate_with(
        &mut self,
        label: &str,
        alg: KeyAlg,
        opts: &GenerateOptions,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        if opts.touch.is_some() || opts.pin_policy.is_some() {
            return Err(BackendError::unsupported(
                &self.name,
                "touch and PIN policies are set on YubiKey keys only",
            ));
        }
        if opts.id.is_some() {
            return Err(BackendError::bad_request(
                &self.name,
                "`raw_id` sets a PKCS#11 CKA_ID; a TPM has no object ids",
            ));
        }
        let label = label.to_string();
        let (pcrs, values) = (opts.pcrs.clone(), opts.pcr_values.clone());
        self.call(move |t| t.generate(&label, alg, pcrs, values))
    }

    fn sign(&mut self, label: &str, input: &SignInput<'_>) -> Result<Signed, BackendError> {
        let label = label.to_string();
        let digest = input.digest.to_vec();
        let (hash, padding, raw) = (input.hash, input.padding, input.raw);
        self.call(move |t| {
            t.sign(
                &label,
                &SignInput {
                    digest: &digest,
                    hash,
                    padding,
                    raw,
                },
            )
        })
    }

    fn info(&mut self) -> Result<DeviceInfo, BackendError> {
        self.call(|t| t.info())
    }

    fn attest(&mut self, label: &str, nonce: &[u8]) -> Result<Attestation, BackendError> {
        let label = label.to_string();
        let nonce = nonce.to_vec();
        self.call(move |t| t.attest(&label, &nonce))
    }

    fn import(
        &mut self,
        label: &str,
        input: &super::ImportInput,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        match input {
            super::ImportInput::TpmDuplicate {
                public,
                duplicate,
                seed,
            } => {
                let label = label.to_string();
                let (public, duplicate, seed) = (public.clone(), duplicate.clone(), seed.clone());
                self.call(move |t| t.import_duplicate(&label, &public, &duplicate, &seed))
            }
            super::ImportInput::Pem { .. } | super::ImportInput::Pkcs11Wrapped { .. } => Err(BackendError::unsupported(
                &self.name,
                "a TPM imports only a key wrapped for its storage key (a TPM2_Duplicate output: `waxseal keys import tpm/NAME --duplicate …`); a plaintext key is never sent to it",
            )),
        }
    }
}

// --- errors --------------------------------------------------------------------------

/// How an operation failed, before it becomes a [`BackendError`]; [`classify`] gives
/// its [`Fault`].
#[derive(Debug)]
enum Fail {
    /// The TPM (or ESAPI) refused a command.
    Tpm(&'static str, tss_esapi::Error),
    /// The TPM needed TPM2_Startup and did not take it.
    Startup(tss_esapi::Error),
    /// The TPM's object slots were full of objects nobody uses; they were flushed,
    /// ours included.
    Full(String),
    /// Already decided.
    Backend(BackendError),
}

/// The [`Fault`] of a failure: the one place that says which `TPM_RC` means what. A
/// TPM holds no login, so every healing step starts over on a new connection
/// ([`Tpm`]'s [`Recover`] impl); the kinds differ in what the log and a client are told.
fn classify(fail: &Fail) -> Fault {
    match fail {
        // Connection broken or out of step, or the TPM (swtpm) restarted.
        Fail::Startup(_) => Fault::Gone,
        Fail::Tpm(_, e) if tpm_kind(e) == Some(Tss2ResponseCodeKind::Reboot) => Fault::Relogin,
        Fail::Tpm(_, e) if is_lost(e) => Fault::Gone,
        // The TPM no longer holds an object the agent loaded (flushed by another
        // program on a TPM without a resource manager), or every object was flushed
        // to make room.
        Fail::Tpm(_, e) if is_stale(e) => Fault::StaleHandle,
        Fail::Full(_) => Fault::StaleHandle,
        Fail::Tpm(..) | Fail::Backend(_) => Fault::Failed,
    }
}

impl From<BackendError> for Fail {
    fn from(e: BackendError) -> Self {
        Fail::Backend(e)
    }
}

/// The raw TSS2_RC of an error, when it has one.
fn raw_rc(e: &tss_esapi::Error) -> Option<u32> {
    let text = match e {
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatZero(rc)) => rc.to_string(),
        tss_esapi::Error::Tss2Error(Tss2ResponseCode::FormatOne(rc)) => rc.to_string(),
        _ => return None,
    };
    let hex = text.rsplit("0x").next()?;
    u32::from_str_radix(hex.trim(), 16).ok()
}

/// The TPM-layer kind of an error; `None` for errors from the TSS layers above.
fn tpm_kind(e: &tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    match e {
        tss_esapi::Error::Tss2Error(rc) if raw_rc(e).is_some_and(|r| r >> 16 == 0) => rc.kind(),
        _ => None,
    }
}

/// Whether an error says the connection to the TPM is broken or out of step.
fn is_lost(e: &tss_esapi::Error) -> bool {
    match raw_rc(e) {
        // Non-TPM layers (ESAPI 7, SYS 8, TCTI 10, RM 11…): sequence, connection,
        // try-again, IO, malformed or short responses.
        Some(rc) if rc >> 16 != 0 => matches!(rc & 0xffff, 7 | 8 | 9 | 10 | 17 | 19 | 20),
        Some(_) => matches!(tpm_kind(e), Some(Tss2ResponseCodeKind::Reboot)),
        None => false,
    }
}

/// Whether an error says a handle the agent holds no longer refers to a loaded object.
fn is_stale(e: &tss_esapi::Error) -> bool {
    use Tss2ResponseCodeKind as K;
    matches!(
        tpm_kind(e),
        Some(
            K::Handle
                | K::ReferenceH0
                | K::ReferenceH1
                | K::ReferenceH2
                | K::ReferenceH3
                | K::ReferenceH4
                | K::ReferenceH5
                | K::ReferenceH6
        )
    )
}

fn describe(e: &tss_esapi::Error) -> String {
    match raw_rc(e) {
        Some(rc) => format!("{e} (TPM_RC {rc:#x})"),
        None => e.to_string(),
    }
}

// --- the device ------------------------------------------------------------------------

/// A key as read from its file or persistent handle.
#[derive(Debug, Clone)]
struct KeyMeta {
    /// The file, for file keys; `None` for persistent keys.
    file: Option<KeyFile>,
    /// The persistent handle, for persistent keys.
    persistent: Option<u32>,
    public: Public,
    alg: KeyAlg,
    spki: Vec<u8>,
    restricted: bool,
    sign: bool,
    /// The key file's PCR policy: `Ok(None)` without one, `Err` naming what waxseal
    /// cannot run.
    binding: Result<Option<PcrBinding>, String>,
    /// The values the key is bound to, from `LABEL.pcr-values` when that file is there
    /// and its values reach the policy's digest.
    bound_values: Option<Vec<Vec<u8>>>,
}

impl KeyMeta {
    fn pcrs(&self) -> Option<PcrSelection> {
        self.binding
            .as_ref()
            .ok()
            .and_then(|b| b.as_ref())
            .map(|b| b.selection.clone())
    }

    /// A key without fixedTPM: TPM2_Import accepts only such keys (TPM 2.0 Part 3,
    /// TPM2_Import), so the TPM cannot vouch that this key was made inside it.
    fn imported(&self) -> bool {
        !self.public.object_attributes().fixed_tpm()
    }

    fn needs_auth(&self) -> bool {
        self.file.as_ref().is_some_and(|f| !f.empty_auth)
    }
}

/// A key file read earlier, with what identifies its version on disk.
#[derive(Debug, Clone)]
struct CachedFile {
    stamp: (u64, u64, i64, i64),
    meta: KeyMeta,
}

/// A key loaded in the TPM.
struct Loaded {
    label: String,
    /// The TPM2B_PUBLIC it was loaded from (a replaced file is loaded again).
    public: Vec<u8>,
    handle: KeyHandle,
    persistent: bool,
}

/// A live ESAPI connection and what it holds loaded.
struct Conn {
    ctx: Context,
    srk: Option<KeyHandle>,
    /// Least recently used first.
    loaded: Vec<Loaded>,
    commands: u64,
}

impl Conn {
    /// Runs one TPM command, retrying while the TPM says RETRY, YIELDED or TESTING.
    fn cmd<T>(
        &mut self,
        what: &'static str,
        mut f: impl FnMut(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<T, Fail> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        let mut started = false;
        loop {
            self.commands += 1;
            match f(&mut self.ctx) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let transient = matches!(
                        tpm_kind(&e),
                        Some(
                            Tss2ResponseCodeKind::Retry
                                | Tss2ResponseCodeKind::Yielded
                                | Tss2ResponseCodeKind::Testing
                                | Tss2ResponseCodeKind::NvRate
                        )
                    );
                    if !started && tpm_kind(&e) == Some(Tss2ResponseCodeKind::Initialize) {
                        // A TPM that was reset and not started (a bare simulator):
                        // start it, as the kernel or firmware would have.
                        started = true;
                        warn!(what, "the TPM needs TPM2_Startup; sending Startup(CLEAR)");
                        self.commands += 1;
                        if let Err(e) = self.ctx.startup(StartupType::Clear) {
                            return Err(Fail::Startup(e));
                        }
                        continue;
                    }
                    if transient && start.elapsed() < RETRY_FOR {
                        debug!(what, error = %e, "TPM asked to retry");
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(100));
                        continue;
                    }
                    return Err(Fail::Tpm(what, e));
                }
            }
        }
    }

    fn flush(&mut self, handle: KeyHandle) {
        let _ = self.cmd("TPM2_FlushContext", |c| {
            c.flush_context(ObjectHandle::from(handle))
        });
    }

    /// The owner SRK, created from the standard template on first use.
    fn srk(&mut self) -> Result<KeyHandle, Fail> {
        if let Some(h) = self.srk {
            return Ok(h);
        }
        let template = srk_template().map_err(|e| Fail::Tpm("SRK template", e))?;
        let created = self.with_object_room(|c| {
            c.cmd("TPM2_CreatePrimary (SRK)", |ctx| {
                ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                    ctx.create_primary(Hierarchy::Owner, template.clone(), None, None, None, None)
                })
            })
        })?;
        self.srk = Some(created.key_handle);
        Ok(created.key_handle)
    }

    /// Runs `f`; when the TPM is out of object slots, flushes the cached keys and
    /// tries once more. When it is still full, the slots hold objects nobody can use
    /// any more (a TPM without a resource manager keeps what a killed process loaded):
    /// every transient object is flushed and the operation starts over.
    fn with_object_room<T>(
        &mut self,
        mut f: impl FnMut(&mut Conn) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        let full = |r: &Result<T, Fail>| {
            matches!(r, Err(Fail::Tpm(_, e)) if matches!(
                tpm_kind(e),
                Some(Tss2ResponseCodeKind::ObjectMemory | Tss2ResponseCodeKind::SessionMemory)
            ))
        };
        let mut result = f(self);
        if full(&result) && !self.loaded.is_empty() {
            debug!("TPM out of object memory: flushing cached keys");
            self.evict_all();
            result = f(self);
        }
        if full(&result) {
            let flushed = self.flush_all_transients();
            warn!(
                flushed,
                "the TPM's object slots were full of objects the agent did not load; flushed them all"
            );
            return Err(Fail::Full(format!(
                "the TPM's object slots were full; {flushed} left-over transient objects flushed"
            )));
        }
        result
    }

    /// Flushes every transient object in the TPM (ours included); returns how many.
    fn flush_all_transients(&mut self) -> usize {
        self.loaded.clear();
        self.srk = None;
        let Ok((CapabilityData::Handles(list), _)) = self
            .cmd("TPM2_GetCapability (transient)", |c| {
                c.get_capability(CapabilityType::Handles, 0x8000_0000, 64)
            })
        else {
            return 0;
        };
        let mut n = 0;
        for h in list.into_inner() {
            if !matches!(h, TpmHandle::Transient(_)) {
                continue;
            }
            if let Ok(obj) = self.cmd("TPM2_ReadPublic", |c| c.tr_from_tpm_public(h)) {
                if self
                    .cmd("TPM2_FlushContext", |c| c.flush_context(obj))
                    .is_ok()
                {
                    n += 1;
                }
            }
        }
        n
    }

    fn evict_all(&mut self) {
        for l in std::mem::take(&mut self.loaded) {
            if !l.persistent {
                self.flush(l.handle);
            }
        }
    }

    fn evict_except(&mut self, label: &str) {
        let (keep, drop): (Vec<_>, Vec<_>) = std::mem::take(&mut self.loaded)
            .into_iter()
            .partition(|l| l.label == label);
        self.loaded = keep;
        for l in drop {
            if !l.persistent {
                self.flush(l.handle);
            }
        }
    }
}

/// The ECC P-256 storage root key template that TSS2 key files with parent
/// 0x40000001 mean (TCG Provisioning Guidance 7.5.1 over the EK profile's ECC P-256
/// template, with an empty `unique`): restricted decryption key, AES-128 CFB, no
/// scheme, `noDA`, `userWithAuth`. tpm2-openssl derives the same key from it: the
/// tests load our key files with its provider.
pub fn srk_template() -> tss_esapi::Result<Public> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// waxseal's attestation key: an ECC P-256 restricted signing primary key (ECDSA
/// SHA-256) in the endorsement hierarchy. Primary keys are derived from the hierarchy
/// seed and the template, so the same TPM gives the same AK every time: nothing to
/// store, and the AK changes only when the endorsement seed does.
fn ak_template() -> tss_esapi::Result<Public> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_sign_encrypt(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new()
                .with_ecc_scheme(EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)))
                .with_curve(EccCurve::NistP256)
                .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                .with_symmetric(SymmetricDefinitionObject::Null)
                .with_is_signing_key(true)
                .with_is_decryption_key(false)
                .with_restricted(true)
                .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(b"waxseal attestation key v1".to_vec())?,
            EccParameter::try_from(Vec::new())?,
        ))
        .build()
}

/// An unrestricted signing key: fixedTPM, fixedParent, sensitiveDataOrigin,
/// userWithAuth, sign; no scheme fixed, so each signature names its hash and padding.
/// With `policy` (a PCR-bound key, [`pcr`]): that authPolicy and no userWithAuth, so
/// only a policy session signs.
pub fn key_template(alg: KeyAlg, policy: Option<[u8; 32]>) -> tss_esapi::Result<Public> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(policy.is_none())
        .with_sign_encrypt(true)
        .with_decrypt(false)
        .with_restricted(false)
        .build()?;
    let mut builder = PublicBuilder::new()
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs);
    if let Some(digest) = policy {
        builder = builder.with_auth_policy(Digest::try_from(digest.to_vec())?);
    }
    match alg {
        KeyAlg::P256 | KeyAlg::P384 => builder
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_ecc_parameters(
                // Scheme NULL lets each signature choose its hash. tss-esapi's
                // builder refuses NULL on a key it is told signs, though the TPM
                // accepts it; the object attributes above make it a signing key.
                PublicEccParametersBuilder::new()
                    .with_ecc_scheme(EccScheme::Null)
                    .with_curve(if alg == KeyAlg::P256 {
                        EccCurve::NistP256
                    } else {
                        EccCurve::NistP384
                    })
                    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                    .with_symmetric(SymmetricDefinitionObject::Null)
                    .build()?,
            )
            .with_ecc_unique_identifier(EccPoint::default())
            .build(),
        KeyAlg::Rsa(bits) => builder
            .with_public_algorithm(PublicAlgorithm::Rsa)
            .with_rsa_parameters(
                PublicRsaParametersBuilder::new_unrestricted_signing_key(
                    RsaScheme::Null,
                    match bits {
                        2048 => RsaKeyBits::Rsa2048,
                        3072 => RsaKeyBits::Rsa3072,
                        _ => RsaKeyBits::Rsa4096,
                    },
                    RsaExponent::default(),
                )
                .build()?,
            )
            .with_rsa_unique_identifier(PublicKeyRsa::default())
            .build(),
        KeyAlg::Ed25519 => Err(tss_esapi::Error::WrapperError(
            tss_esapi::WrapperErrorKind::UnsupportedParam,
        )),
    }
}

/// Algorithm, SPKI and usage of a public area.
fn describe_public(public: &Public) -> Result<(KeyAlg, Vec<u8>), String> {
    match public {
        Public::Ecc {
            parameters, unique, ..
        } => {
            let (alg, size) = match parameters.ecc_curve() {
                EccCurve::NistP256 => (KeyAlg::P256, 32),
                EccCurve::NistP384 => (KeyAlg::P384, 48),
                other => return Err(format!("curve {other:?} is not supported (P-256, P-384)")),
            };
            let mut point = vec![0x04];
            point.extend(left_pad(unique.x().value(), size));
            point.extend(left_pad(unique.y().value(), size));
            let spki = crypto::spki_from_point(alg, &point).map_err(|e| e.0)?;
            Ok((alg, spki))
        }
        Public::Rsa {
            parameters, unique, ..
        } => {
            let modulus = unique.value();
            let e = match parameters.exponent().value() {
                0 => 65537,
                e => e,
            };
            let exponent: Vec<u8> = e
                .to_be_bytes()
                .into_iter()
                .skip_while(|&b| b == 0)
                .collect();
            let spki = crypto::spki_from_rsa(modulus, &exponent).map_err(|e| e.0)?;
            Ok((KeyAlg::Rsa(crypto::rsa_bits(modulus)), spki))
        }
        _ => Err("not an asymmetric key".into()),
    }
}

fn left_pad(v: &[u8], size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size.saturating_sub(v.len())];
    out.extend_from_slice(v);
    out
}

fn meta_from_public(
    public: Public,
    file: Option<KeyFile>,
    persistent: Option<u32>,
) -> Result<KeyMeta, String> {
    let (alg, spki) = describe_public(&public)?;
    let attrs = public.object_attributes();
    let binding = match &file {
        Some(f) => PcrBinding::from_steps(&f.policy),
        None => Ok(None),
    };
    Ok(KeyMeta {
        binding,
        bound_values: None,
        file,
        persistent,
        alg,
        spki,
        restricted: attrs.restricted(),
        // Keys made elsewhere may also decrypt (tpm2-openssl sets both); they still sign.
        sign: attrs.sign_encrypt(),
        public,
    })
}

/// Labels of persistent keys: `0x81` followed by six hex digits.
fn persistent_label(label: &str) -> Option<u32> {
    let hex = label.strip_prefix("0x")?;
    if hex.len() != 8 {
        return None;
    }
    let v = u32::from_str_radix(hex, 16).ok()?;
    (v >> 24 == 0x81).then_some(v)
}

/// Whether `label` may name a key file: 1–64 of `A-Z a-z 0-9 . _ -`, not starting with
/// `.` and not of the persistent-handle form.
fn valid_file_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 64
        && !label.starts_with('.')
        && !label.starts_with("0x")
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The device behind one TPM lane; owned by its worker thread.
pub struct Tpm {
    settings: TpmSettings,
    conn: Option<Conn>,
    files: HashMap<String, CachedFile>,
    /// The auth value the TPM refused last, never sent again.
    pins: PinGate,
    stats: TpmStats,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tpm")
            .field("settings", &self.settings)
            .field("connected", &self.conn.is_some())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Tpm {
    /// A device; connects on first use.
    pub fn new(settings: TpmSettings) -> Tpm {
        Tpm {
            settings,
            conn: None,
            files: HashMap::new(),
            pins: PinGate::default(),
            stats: TpmStats::default(),
        }
    }

    /// Counters since this value was made.
    pub fn stats(&self) -> TpmStats {
        let mut s = self.stats;
        if let Some(c) = &self.conn {
            s.commands += c.commands;
        }
        s
    }

    fn name(&self) -> &str {
        &self.settings.name
    }

    /// Drops the connection: flushes what it loaded and closes the TCTI.
    pub fn disconnect(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.evict_all();
            if let Some(srk) = conn.srk.take() {
                conn.flush(srk);
            }
            self.stats.commands += conn.commands;
        }
    }

    fn connect(&mut self) -> Result<(), BackendError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let tcti = TctiNameConf::from_str(&self.settings.tcti).map_err(|e| {
            BackendError::absent(
                self.name(),
                format!("TCTI `{}` is not valid: {e}", self.settings.tcti),
            )
        })?;
        let ctx = Context::new(tcti).map_err(|e| {
            BackendError::absent(self.name(), format!("cannot reach the TPM at {}: {} (is the TPM there and readable by this user? /dev/tpmrm0 needs group tss)", self.settings.tcti, describe(&e)))
        })?;
        self.stats.connects += 1;
        info!(device = %self.settings.name, tcti = %self.settings.tcti, "TPM connected");
        self.conn = Some(Conn {
            ctx,
            srk: None,
            loaded: Vec::new(),
            commands: 0,
        });
        Ok(())
    }

    /// Runs `op` on a live connection; when the connection turns out to be broken,
    /// reconnects and runs it once more. Never loops, never hangs on a dead TPM.
    fn with_conn<T>(
        &mut self,
        mut op: impl FnMut(&mut Conn, &mut TpmCtx<'_>) -> Result<T, Fail>,
    ) -> Result<T, BackendError> {
        fault::recover(self, |tpm| {
            // Not reaching the TPM is final: it has just been tried.
            tpm.connect()?;
            let Some(mut conn) = tpm.conn.take() else {
                return Err(BackendError::failed(&tpm.settings.name, "no TPM connection").into());
            };
            let mut cx = TpmCtx {
                settings: &tpm.settings,
                pins: &mut tpm.pins,
                stats: &mut tpm.stats,
            };
            let fail = match op(&mut conn, &mut cx) {
                Ok(v) => {
                    tpm.conn = Some(conn);
                    return Ok(v);
                }
                Err(fail) => fail,
            };
            let fault = classify(&fail);
            // An ESAPI-level failure may leave the context out of step.
            let out_of_step =
                matches!(&fail, Fail::Tpm(_, e) if raw_rc(e).is_some_and(|rc| rc >> 16 != 0));
            // The healing steps retire the connection, which they find in `tpm.conn`.
            tpm.conn = Some(conn);
            if fault == Fault::Failed && out_of_step {
                tpm.retire();
            }
            Err(Faulted::new(fault, tpm.error_of(fault, fail)))
        })
        .map_err(Faulted::into_error)
    }

    /// Drops the connection without flushing: the old context's handles mean nothing
    /// to a restarted TPM, or are gone already.
    fn retire(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.stats.commands += conn.commands;
        }
    }

    /// The error for a failure of kind `fault`, if it is not healed.
    fn error_of(&self, fault: Fault, fail: Fail) -> BackendError {
        let (name, tcti) = (&self.settings.name, &self.settings.tcti);
        match (fault, fail) {
            (_, Fail::Backend(e)) => e,
            (_, Fail::Startup(e)) => BackendError::absent(
                name,
                format!(
                    "the TPM at {tcti} stopped answering (TPM2_Startup: {})",
                    describe(&e)
                ),
            ),
            (_, Fail::Full(why)) => BackendError::failed(name, why),
            (Fault::Gone, Fail::Tpm(what, e)) => BackendError::absent(
                name,
                format!(
                    "the TPM at {tcti} stopped answering ({what}: {})",
                    describe(&e)
                ),
            ),
            (Fault::Relogin, Fail::Tpm(what, e)) => BackendError::failed(
                name,
                format!("the TPM at {tcti} was restarted ({what}: {})", describe(&e)),
            ),
            (Fault::StaleHandle, Fail::Tpm(what, e)) => BackendError::failed(
                name,
                format!(
                    "a TPM object the agent loaded is gone ({what}: {})",
                    describe(&e)
                ),
            ),
            (Fault::Failed, Fail::Tpm(what, e)) => map_tpm_error(name, what, &e),
        }
    }

    fn key_path(&self, label: &str) -> PathBuf {
        self.settings.key_dir.join(format!("{label}.pem"))
    }

    /// Where a PCR-bound key's bound values are kept ([`pcr`]).
    fn values_path(&self, label: &str) -> PathBuf {
        self.settings.key_dir.join(format!("{label}.pcr-values"))
    }

    /// Reads (or takes from the cache) the key file of `label`.
    fn file_meta(&mut self, label: &str) -> Result<KeyMeta, BackendError> {
        let path = self.key_path(label);
        let md = fs::metadata(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackendError::no_such_key(
                    self.name(),
                    format!(
                        "no key `{label}` (no {} and not a persistent handle 0x81……)",
                        path.display()
                    ),
                )
            } else {
                BackendError::failed(self.name(), format!("cannot read {}: {e}", path.display()))
            }
        })?;
        let stamp = (md.ino(), md.len(), md.mtime(), md.mtime_nsec());
        if let Some(c) = self.files.get(label) {
            if c.stamp == stamp {
                return Ok(c.meta.clone());
            }
        }
        let meta = read_key_file(&path, &self.values_path(label)).map_err(|why| {
            BackendError::failed(
                self.name(),
                format!("{} is not a usable TPM key: {why}", path.display()),
            )
        })?;
        self.files.insert(
            label.to_string(),
            CachedFile {
                stamp,
                meta: meta.clone(),
            },
        );
        Ok(meta)
    }

    fn key_meta(&mut self, label: &str) -> Result<KeyMeta, BackendError> {
        match persistent_label(label) {
            Some(handle) => {
                let name = self.settings.name.clone();
                self.with_conn(|conn, _| persistent_meta(conn, &name, handle))
            }
            None => self.file_meta(label),
        }
    }

    /// Every signing key: the key folder's TSS2 files, then persistent keys.
    pub fn list_keys(&mut self) -> Result<Vec<DeviceKey>, BackendError> {
        let mut keys = Vec::new();
        let entries = match fs::read_dir(&self.settings.key_dir) {
            Ok(rd) => rd.filter_map(Result::ok).collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(BackendError::failed(
                    &self.settings.name,
                    format!("cannot read {}: {e}", self.settings.key_dir.display()),
                ))
            }
        };
        let mut labels: Vec<String> = entries
            .iter()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let label = name.strip_suffix(".pem")?;
                valid_file_label(label).then(|| label.to_string())
            })
            .collect();
        labels.sort();
        for label in labels {
            match self.file_meta(&label) {
                Ok(meta) if meta.sign && !meta.restricted => keys.push(DeviceKey {
                    uri: Some(format!(
                        "tpm:name={label};file={}",
                        self.key_path(&label).display()
                    )),
                    id: None,
                    pcrs: meta.pcrs(),
                    imported: meta.imported(),
                    label,
                    alg: meta.alg,
                }),
                Ok(_) => {
                    debug!(device = %self.settings.name, key = %label, "not an unrestricted signing key; not listed")
                }
                Err(e) => {
                    warn!(device = %self.settings.name, key = %label, error = %e, "key file left out")
                }
            }
        }
        let name = self.settings.name.clone();
        let persistent = self.with_conn(|conn, _| {
            let (data, _) = conn.cmd("TPM2_GetCapability (handles)", |c| {
                c.get_capability(CapabilityType::Handles, 0x8100_0000, 64)
            })?;
            let handles: Vec<u32> = match data {
                CapabilityData::Handles(list) => list
                    .into_inner()
                    .into_iter()
                    .map(u32::from)
                    .filter(|h| h >> 24 == 0x81)
                    .collect(),
                _ => Vec::new(),
            };
            let mut out = Vec::new();
            for h in handles {
                match persistent_meta(conn, &name, h) {
                    Ok(meta) if meta.sign && !meta.restricted => {
                        out.push((h, meta.alg, meta.imported()))
                    }
                    Ok(_) => {}
                    Err(f) if matches!(classify(&f), Fault::Gone | Fault::Relogin) => {
                        return Err(f)
                    }
                    Err(_) => {}
                }
            }
            Ok(out)
        })?;
        for (h, alg, imported) in persistent {
            keys.push(DeviceKey {
                label: format!("{h:#010x}"),
                alg,
                uri: Some(format!("tpm:handle={h:#010x}")),
                id: None,
                pcrs: None,
                imported,
            });
        }
        Ok(keys)
    }

    /// The public key of `label`, from its file (no TPM needed) or persistent handle.
    pub fn public_key(&mut self, label: &str) -> Result<PublicKey, BackendError> {
        let meta = self.key_meta(label)?;
        Ok(PublicKey {
            alg: meta.alg,
            spki_der: meta.spki,
        })
    }

    /// Creates a key under the SRK and writes its TSS2 PEM file. With `pcrs`, the key
    /// is bound to those PCRs: to `values` (one per PCR, in the selection's order), or
    /// to their current values ([`pcr`]).
    pub fn generate(
        &mut self,
        label: &str,
        alg: KeyAlg,
        pcrs: Option<PcrSelection>,
        values: Option<Vec<Vec<u8>>>,
    ) -> Result<(DeviceKey, PublicKey), BackendError> {
        if !valid_file_label(label) {
            return Err(BackendError::bad_request(self.name(), format!(
                "`{label}` cannot name a TPM key file: use 1-64 of A-Z a-z 0-9 . _ - (not starting with `.` or `0x`)"
            )));
        }
        if !matches!(
            alg,
            KeyAlg::P256 | KeyAlg::P384 | KeyAlg::Rsa(2048) | KeyAlg::Rsa(3072)
        ) {
            return Err(BackendError::unsupported(
                self.name(),
                format!("TPM keys can be p256, p384, rsa2048 or rsa3072 (not {alg})"),
            ));
        }
        let path = self.key_path(label);
        if path.exists() {
            return Err(BackendError::key_exists(
                self.name(),
                format!("key `{label}` exists already ({})", path.display()),
            ));
        }
        let auth = match &self.settings.pin {
            Some(source) => {
                let pin = source
                    .read()
                    .map_err(|e| BackendError::pin_required(&self.settings.name, e.to_string()))?;
                Some(auth_of(
                    &self.settings.name,
                    pin.expose_secret().as_bytes(),
                )?)
            }
            None => None,
        };
        let empty_auth = auth.is_none();
        let bound = match (pcrs, values) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(BackendError::bad_request(
                    self.name(),
                    "PCR values were given without the PCRs they are for",
                ))
            }
            (Some(sel), values) => {
                sel.check()
                    .map_err(|e| BackendError::bad_request(self.name(), e))?;
                // Read even when values are given: it shows that the TPM has the bank.
                let name = self.settings.name.clone();
                let current = self.with_conn(|conn, _| read_pcrs(conn, &name, &sel))?;
                let values = match values {
                    None => current,
                    Some(v) => {
                        let as_bytes: Vec<crate::proto::Bytes> =
                            v.iter().cloned().map(crate::proto::Bytes).collect();
                        crate::proto::check_pcr_values(&sel, &as_bytes)
                            .map_err(|e| BackendError::bad_request(self.name(), e))?;
                        v
                    }
                };
                Some((sel, values))
            }
        };
        let binding = bound
            .as_ref()
            .map(|(sel, v)| PcrBinding::new(sel.clone(), pcr::pcr_digest(v), !empty_auth));
        let template =
            key_template(alg, binding.as_ref().map(PcrBinding::policy_digest)).map_err(|e| {
                BackendError::failed(self.name(), format!("cannot build the key template: {e}"))
            })?;
        let created = self.with_conn(|conn, _| {
            let srk = conn.srk()?;
            conn.with_object_room(|c| {
                c.cmd("TPM2_Create", |ctx| {
                    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                        ctx.create(srk, template.clone(), auth.clone(), None, None, None)
                    })
                })
            })
        })?;
        let public_area = created.out_public.marshall().map_err(|e| {
            BackendError::failed(
                &self.settings.name,
                format!("cannot encode the new key's public area: {e}"),
            )
        })?;
        let file = KeyFile {
            empty_auth,
            policy: binding.as_ref().map(PcrBinding::steps).unwrap_or_default(),
            has_auth_policy: false,
            parent: PARENT_OWNER,
            public: tpm2b(&public_area),
            private: tpm2b(created.out_private.value()),
            description: None,
        };
        let meta = meta_from_public(created.out_public, Some(file.clone()), None).map_err(|e| {
            BackendError::failed(
                &self.settings.name,
                format!("the TPM made an unusable key: {e}"),
            )
        })?;
        write_new_file(
            &self.settings.name,
            &self.settings.key_dir,
            &path,
            file.to_pem().as_bytes(),
        )?;
        if let Some((sel, values)) = &bound {
            // The key file is ours now (it did not exist): a values file left by an
            // earlier key of this name is replaced. Without it a refusal could not say
            // which PCRs differ, so the key goes too when it cannot be written.
            let values_path = self.values_path(label);
            if let Err(e) = replace_file(&values_path, pcr::values_text(sel, values).as_bytes()) {
                let _ = fs::remove_file(&path);
                return Err(BackendError::failed(
                    self.name(),
                    format!(
                        "cannot write {}: {e}; the new key was removed",
                        values_path.display()
                    ),
                ));
            }
            info!(device = %self.settings.name, key = %label, pcrs = %sel, "TPM key bound to PCRs");
        }
        info!(device = %self.settings.name, key = %label, %alg, file = %path.display(), "TPM key generated");
        Ok((
            DeviceKey {
                label: label.to_string(),
                alg: meta.alg,
                uri: Some(format!("tpm:name={label};file={}", path.display())),
                id: None,
                pcrs: meta.pcrs(),
                imported: false,
            },
            PublicKey {
                alg: meta.alg,
                spki_der: meta.spki,
            },
        ))
    }

    /// Signs a digest with `label`.
    pub fn sign(&mut self, label: &str, input: &SignInput<'_>) -> Result<Signed, BackendError> {
        let meta = self.key_meta(label)?;
        check_usable(&self.settings.name, label, &meta)?;
        let hash = digest_hash(&self.settings.name, meta.alg, input)?;
        let auth = self.auth_for(&meta)?;
        let scheme = match (meta.alg, input.padding) {
            (KeyAlg::Rsa(_), RsaPadding::Pss) => SignatureScheme::RsaPss {
                hash_scheme: HashScheme::new(hashing(hash)),
            },
            (KeyAlg::Rsa(_), RsaPadding::Pkcs1) => SignatureScheme::RsaSsa {
                hash_scheme: HashScheme::new(hashing(hash)),
            },
            _ => SignatureScheme::EcDsa {
                hash_scheme: HashScheme::new(hashing(hash)),
            },
        };
        let digest = Digest::try_from(input.digest.to_vec())
            .map_err(|e| BackendError::bad_request(&self.settings.name, format!("digest: {e}")))?;
        let label_owned = label.to_string();
        let binding = meta.binding.clone().ok().flatten();
        let device = self.settings.name.clone();
        let signature = self.with_conn(|conn, cx| {
            let handle = load_key(conn, cx, &label_owned, &meta, KeyAuth::value(&auth))?;
            // A PCR-bound key signs in a policy session that has passed its policy.
            let session = match &binding {
                None => AuthSession::Password,
                Some(b) => {
                    start_policy(conn, &device, &label_owned, b, meta.bound_values.as_deref())?
                }
            };
            // A persistent key needs a free object slot while it signs.
            let result = conn.with_object_room(|c| {
                c.cmd("TPM2_Sign", |ctx| {
                    ctx.execute_with_session(Some(session), |ctx| {
                        ctx.sign(handle, digest.clone(), scheme, null_ticket()?)
                    })
                })
            });
            if binding.is_some() {
                flush_session(conn, session);
            }
            cx.auth_outcome(&label_owned, KeyAuth::offer(&auth), result)
        })?;
        let bytes = match signature {
            Signature::EcDsa(sig) => {
                let size = if meta.alg == KeyAlg::P384 { 48 } else { 32 };
                let mut raw = left_pad(sig.signature_r().value(), size);
                raw.extend(left_pad(sig.signature_s().value(), size));
                crypto::ecdsa_raw_to_der(meta.alg, &raw)
                    .map_err(|e| BackendError::failed(&self.settings.name, e.0))?
            }
            Signature::RsaSsa(sig) | Signature::RsaPss(sig) => sig.signature().value().to_vec(),
            other => {
                return Err(BackendError::failed(
                    &self.settings.name,
                    format!(
                        "the TPM answered with an unexpected signature type {:?}",
                        other.algorithm()
                    ),
                ))
            }
        };
        Ok(Signed {
            signature: bytes,
            alg: meta.alg,
            hash,
        })
    }

    /// TPM2_Certify over `label` by the agent's attestation key, with `nonce` as the
    /// qualifying data.
    pub fn attest(&mut self, label: &str, nonce: &[u8]) -> Result<Attestation, BackendError> {
        let meta = self.key_meta(label)?;
        let auth = self.auth_for(&meta)?;
        if nonce.len() > 32 {
            return Err(BackendError::bad_request(
                self.name(),
                "the nonce may be at most 32 bytes",
            ));
        }
        let qualifying = Data::try_from(nonce.to_vec())
            .map_err(|e| BackendError::bad_request(&self.settings.name, format!("nonce: {e}")))?;
        let ak_template = ak_template()
            .map_err(|e| BackendError::failed(&self.settings.name, format!("AK template: {e}")))?;
        let label_owned = label.to_string();
        let (attest, signature, ak_public) = self.with_conn(|conn, cx| {
            // Room for the AK: the SRK, this key and the AK are all that stay loaded.
            conn.evict_except(&label_owned);
            let handle = load_key(conn, cx, &label_owned, &meta, KeyAuth::value(&auth))?;
            let ak = conn.with_object_room(|c| {
                c.cmd("TPM2_CreatePrimary (AK)", |ctx| {
                    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                        ctx.create_primary(
                            Hierarchy::Endorsement,
                            ak_template.clone(),
                            None,
                            None,
                            None,
                            None,
                        )
                    })
                })
            })?;
            let result = conn.cmd("TPM2_Certify", |ctx| {
                ctx.execute_with_sessions(
                    (
                        Some(AuthSession::Password),
                        Some(AuthSession::Password),
                        None,
                    ),
                    |ctx| {
                        ctx.certify(
                            ObjectHandle::from(handle),
                            ak.key_handle,
                            qualifying.clone(),
                            SignatureScheme::Null,
                        )
                    },
                )
            });
            conn.flush(ak.key_handle);
            let (attest, sig) = cx.auth_outcome(&label_owned, KeyAuth::offer(&auth), result)?;
            Ok((attest, sig, ak.out_public))
        })?;
        let ek_certs = self.with_conn(|conn, _| Ok(ek::ek_certificates(conn)))?;
        let name = &self.settings.name;
        let bad = |e: tss_esapi::Error| BackendError::failed(name, format!("cannot encode: {e}"));
        let attest_bytes = attest.marshall().map_err(bad)?;
        let tpmt_signature = signature.marshall().map_err(bad)?;
        let ak_area = ak_public.marshall().map_err(bad)?;
        let (_, ak_spki) =
            describe_public(&ak_public).map_err(|e| BackendError::failed(name, e))?;
        let der_sig = match &signature {
            Signature::EcDsa(sig) => {
                let mut raw = left_pad(sig.signature_r().value(), 32);
                raw.extend(left_pad(sig.signature_s().value(), 32));
                crypto::ecdsa_raw_to_der(KeyAlg::P256, &raw)
                    .map_err(|e| BackendError::failed(name, e.0))?
            }
            _ => return Err(BackendError::failed(name, "the AK did not sign with ECDSA")),
        };
        let key_area = meta.public.marshall().map_err(bad)?;
        let name = |area: &[u8]| {
            let mut n = vec![0x00, 0x0b];
            n.extend(Sha256::digest(area));
            hex::encode(n)
        };
        let evidence = json!({
            "nonce": B64.encode(nonce),
            "attest": B64.encode(&attest_bytes),
            "signature": B64.encode(&der_sig),
            "signature_alg": "ecdsa-p256-sha256",
            "tpmt_signature": B64.encode(&tpmt_signature),
            "key_public": B64.encode(&key_area),
            "key_name": name(&key_area),
            "key_spki_pem": crypto::spki_pem(&meta.spki),
            "ak_public": B64.encode(&ak_area),
            "ak_name": name(&ak_area),
            "ak_spki_pem": crypto::spki_pem(&ak_spki),
            "ak_template": "waxseal AK v1: ECC P-256 restricted signing primary key (ECDSA SHA-256), endorsement hierarchy",
            "ek_certificates": ek_certs
                .iter()
                .map(|(index, der)| json!({
                    "nv_index": format!("0x{index:08x}"),
                    "pem": crypto::pem("CERTIFICATE", der),
                }))
                .collect::<Vec<_>>(),
        });
        Ok(Attestation {
            format: "tpm2-certify".into(),
            evidence,
        })
    }

    /// Device status: manufacturer and firmware, and how many keys it has.
    pub fn info(&mut self) -> Result<DeviceInfo, BackendError> {
        let (maker, fw) = self.with_conn(|conn, _| {
            let maker = conn.cmd("TPM2_GetCapability (properties)", |c| {
                c.get_tpm_property(PropertyTag::Manufacturer)
            })?;
            let fw = conn.cmd("TPM2_GetCapability (properties)", |c| {
                c.get_tpm_property(PropertyTag::FirmwareVersion1)
            })?;
            Ok((maker, fw))
        })?;
        let maker = maker
            .map(|m| {
                String::from_utf8_lossy(&m.to_be_bytes())
                    .trim_matches(|c: char| c == '\0' || c.is_whitespace())
                    .to_string()
            })
            .unwrap_or_else(|| "?".into());
        let keys = self.list_keys()?.len();
        Ok(DeviceInfo {
            detail: format!(
                "TPM 2.0 by {maker}, firmware {}.{}, at {}; key files in {}",
                fw.map_or(0, |v| v >> 16),
                fw.map_or(0, |v| v & 0xffff),
                self.settings.tcti,
                self.settings.key_dir.display()
            ),
            keys,
        })
    }

    /// The auth value `meta` needs, from the device's PIN source, with the PIN it came
    /// from (what the PIN gate remembers if the TPM refuses it).
    fn auth_for(&self, meta: &KeyMeta) -> Result<Option<KeyAuth>, BackendError> {
        // Persistent keys carry no emptyAuth flag; they are used with the empty auth
        // value rather than spending a dictionary-attack try on a guess.
        if !meta.needs_auth() {
            return Ok(None);
        }
        let Some(source) = &self.settings.pin else {
            return Err(BackendError::pin_required(
                self.name(),
                "this key has an auth value; set `pin` (file:PATH or env:VAR) on the device",
            ));
        };
        let pin = source
            .read()
            .map_err(|e| BackendError::pin_required(self.name(), e.to_string()))?;
        let offer = self.pins.offer(pin).map_err(|_| {
            BackendError::pin_refused(self.name(), format!("the TPM already refused the auth value from {source}; the agent does not try it again (each try counts toward the TPM's dictionary-attack lockout). Put the right PIN there and retry"))
        })?;
        let value = auth_of(self.name(), offer.secret().expose_secret().as_bytes())?;
        Ok(Some(KeyAuth { value, offer }))
    }
}

impl Recover for Tpm {
    fn device(&self) -> &str {
        &self.settings.name
    }

    fn reconnect(&mut self) {
        self.retire();
    }

    /// A TPM holds no login; what it held for the agent went with the connection.
    fn relogin(&mut self) {
        self.retire();
    }

    /// Handles live in the connection's context: a new one loads the keys again.
    fn refind(&mut self) {
        self.retire();
    }
}

/// A key's auth value, and the PIN it was made from.
#[derive(Debug)]
struct KeyAuth {
    value: Auth,
    offer: PinOffer,
}

impl KeyAuth {
    fn value(auth: &Option<KeyAuth>) -> Option<&Auth> {
        auth.as_ref().map(|a| &a.value)
    }
    fn offer(auth: &Option<KeyAuth>) -> Option<&PinOffer> {
        auth.as_ref().map(|a| &a.offer)
    }
}

/// Borrowed device state an operation needs besides the connection.
struct TpmCtx<'a> {
    settings: &'a TpmSettings,
    pins: &'a mut PinGate,
    stats: &'a mut TpmStats,
}

impl TpmCtx<'_> {
    /// Records what a command using `auth` taught about it: a refused auth value is
    /// remembered and never sent again; a lockout is reported with what to do.
    fn auth_outcome<T>(
        &mut self,
        label: &str,
        sent: Option<&PinOffer>,
        result: Result<T, Fail>,
    ) -> Result<T, Fail> {
        let name = &self.settings.name;
        match result {
            Ok(v) => {
                if sent.is_some() {
                    self.pins.accepted();
                }
                Ok(v)
            }
            Err(Fail::Tpm(_, e))
                if matches!(
                    tpm_kind(&e),
                    Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth)
                ) =>
            {
                // The PIN that was sent, not the source read again: it may have
                // changed meanwhile.
                if let Some(offer) = sent {
                    self.pins.refused(offer);
                }
                warn!(device = %name, key = %label, "the TPM refused the key's auth value; it will not be retried");
                Err(Fail::Backend(BackendError::pin_refused(name, format!("the TPM refused the auth value (PIN) of key {label}. The agent will not retry it: each wrong try counts toward the TPM's dictionary-attack lockout. Fix the device's `pin` source and try again"))))
            }
            other => other,
        }
    }
}

fn map_tpm_error(device: &str, what: &str, e: &tss_esapi::Error) -> BackendError {
    match tpm_kind(e) {
        Some(Tss2ResponseCodeKind::Lockout) => BackendError::pin_locked(device, "the TPM is in dictionary-attack lockout after too many wrong auth values; keys with an auth value are refused until it recovers. Wait for the recovery time (`tpm2_getcap properties-variable` shows TPM2_PT_LOCKOUT_COUNTER and the TPM's lockout settings) or have the owner run `tpm2_dictionarylockout --clear-lockout`"),
        Some(Tss2ResponseCodeKind::AuthFail | Tss2ResponseCodeKind::BadAuth) => {
            BackendError::pin_refused(device, format!("{what}: the TPM refused the authorization ({})", describe(e)))
        }
        Some(Tss2ResponseCodeKind::Hierarchy) => BackendError::failed(device, format!("{what}: a TPM hierarchy is disabled ({})", describe(e))),
        _ => BackendError::failed(device, format!("{what} failed: {}", describe(e))),
    }
}

fn check_usable(device: &str, label: &str, meta: &KeyMeta) -> Result<(), BackendError> {
    if meta.restricted {
        return Err(BackendError::unsupported(device, format!("key {label} is a restricted signing key (an attestation key): the TPM lets it sign only data the TPM produced itself, not digests. Use an unrestricted key (waxseal keys generate {device}/NAME)")));
    }
    if !meta.sign {
        return Err(BackendError::unsupported(
            device,
            format!("key {label} is not a signing key"),
        ));
    }
    if meta.file.as_ref().is_some_and(|f| f.has_auth_policy) {
        return Err(BackendError::unsupported(device, format!("key {label} carries signed policies (authPolicy, PolicyAuthorize); waxseal runs only PCR policies (PolicyPCR, PolicyAuthValue)")));
    }
    if let Err(why) = &meta.binding {
        return Err(BackendError::unsupported(
            device,
            format!("key {label} cannot be used: {why}"),
        ));
    }
    Ok(())
}

fn hashing(hash: HashAlg) -> HashingAlgorithm {
    match hash {
        HashAlg::Sha256 => HashingAlgorithm::Sha256,
        HashAlg::Sha384 => HashingAlgorithm::Sha384,
        HashAlg::Sha512 => HashingAlgorithm::Sha512,
    }
}

fn null_ticket() -> tss_esapi::Result<HashcheckTicket> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
}

fn auth_of(device: &str, pin: &[u8]) -> Result<Auth, BackendError> {
    if pin.len() > 32 {
        return Err(BackendError::bad_request(
            device,
            "a TPM key's auth value (the PIN) may be at most 32 bytes",
        ));
    }
    Auth::try_from(pin.to_vec())
        .map_err(|e| BackendError::bad_request(device, format!("auth value: {e}")))
}

/// Reads a TSS2 PEM key file, and for a PCR-bound key the bound values beside it
/// (`values_path`).
fn read_key_file(path: &Path, values_path: &Path) -> Result<KeyMeta, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    let file = KeyFile::from_pem(&text).map_err(|e| e.0)?;
    let public = Public::unmarshall(file.public_area())
        .map_err(|e| format!("its public area does not parse: {e}"))?;
    let mut meta = meta_from_public(public, Some(file), None)?;
    if let Ok(Some(b)) = &meta.binding {
        meta.bound_values = read_bound_values(values_path, b);
    }
    Ok(meta)
}

/// The values in `path` when they are the ones `binding`'s digest was made from;
/// `None` (logged) otherwise. They only explain a refusal: the TPM checks the PCRs.
fn read_bound_values(path: &Path, binding: &PcrBinding) -> Option<Vec<Vec<u8>>> {
    use std::io::Read as _;
    let mut text = String::new();
    // At most one byte past the limit, whatever the file is (a device, a FIFO).
    fs::File::open(path)
        .ok()?
        .take(MAX_PCR_VALUES_FILE as u64 + 1)
        .read_to_string(&mut text)
        .ok()?;
    if text.len() > MAX_PCR_VALUES_FILE {
        warn!(file = %path.display(), "PCR values file too long; ignored");
        return None;
    }
    let values: Vec<Vec<u8>> = match crate::proto::parse_pcr_values(&text, &binding.selection) {
        Ok(v) => v.into_iter().map(|b| b.0).collect(),
        Err(e) => {
            warn!(file = %path.display(), error = %e, "PCR values file ignored");
            return None;
        }
    };
    if pcr::pcr_digest(&values) != binding.pcr_digest {
        warn!(file = %path.display(), "the PCR values file does not match the key's policy; ignored");
        return None;
    }
    Some(values)
}

/// The public area of persistent key `handle`.
fn persistent_meta(conn: &mut Conn, device: &str, handle: u32) -> Result<KeyMeta, Fail> {
    let tpm_handle = TpmHandle::try_from(handle).map_err(|e| {
        Fail::Backend(BackendError::no_such_key(
            device,
            format!("{handle:#010x} is not a persistent handle: {e}"),
        ))
    })?;
    // The TPM copies a persistent object into an object slot to use it: make room.
    let object = match conn
        .with_object_room(|c| c.cmd("TPM2_ReadPublic", |x| x.tr_from_tpm_public(tpm_handle)))
    {
        Ok(o) => o,
        Err(Fail::Tpm(what, e)) if is_stale(&e) => {
            return Err(Fail::Backend(BackendError::no_such_key(
                device,
                format!(
                    "no persistent key at {handle:#010x} ({what}: {})",
                    describe(&e)
                ),
            )))
        }
        Err(e) => return Err(e),
    };
    let read = conn.with_object_room(|c| {
        c.cmd("TPM2_ReadPublic", |x| {
            x.read_public(KeyHandle::from(object))
        })
    });
    let mut object = object;
    let _ = conn.ctx.tr_close(&mut object);
    let (public, _, _) = read?;
    meta_from_public(public, None, Some(handle)).map_err(|why| {
        Fail::Backend(BackendError::unsupported(
            device,
            format!("persistent object {handle:#010x}: {why}"),
        ))
    })
}

/// The handle of `label` loaded in the TPM: from the cache (no TPM command), or loaded
/// under its parent, evicting the least recently used key when the cache is full.
fn load_key(
    conn: &mut Conn,
    cx: &mut TpmCtx<'_>,
    label: &str,
    meta: &KeyMeta,
    auth: Option<&Auth>,
) -> Result<KeyHandle, Fail> {
    let public_id: Vec<u8> = match &meta.file {
        Some(f) => f.public.clone(),
        None => meta.spki.clone(),
    };
    if let Some(i) = conn
        .loaded
        .iter()
        .position(|l| l.label == label && l.public == public_id)
    {
        let l = conn.loaded.remove(i);
        let handle = l.handle;
        conn.loaded.push(l);
        if let Some(a) = auth {
            set_auth(conn, handle, a)?;
        }
        return Ok(handle);
    }
    // A stale entry (the file changed) goes first.
    if let Some(i) = conn.loaded.iter().position(|l| l.label == label) {
        let l = conn.loaded.remove(i);
        if !l.persistent {
            conn.flush(l.handle);
        }
    }
    while conn.loaded.len() >= CACHED_KEYS {
        let l = conn.loaded.remove(0);
        if !l.persistent {
            conn.flush(l.handle);
        }
    }
    cx.stats.loads += 1;
    let (handle, persistent) = match (&meta.file, meta.persistent) {
        (Some(file), _) => {
            let parent = match file.parent {
                PARENT_OWNER => conn.srk()?,
                h if h >> 24 == 0x81 => {
                    let tpm_handle = TpmHandle::try_from(h).map_err(|e| Fail::Tpm("parent handle", e))?;
                    KeyHandle::from(conn.with_object_room(|c| {
                        c.cmd("TPM2_ReadPublic (parent)", |x| x.tr_from_tpm_public(tpm_handle))
                    })?)
                }
                h => {
                    return Err(Fail::Backend(BackendError::unsupported(&cx.settings.name, format!("key {label} has parent {h:#010x}; only the owner SRK (0x40000001) and persistent parents (0x81……) are supported"))))
                }
            };
            let private = Private::try_from(file.private_blob().to_vec())
                .map_err(|e| Fail::Tpm("private blob", e))?;
            let public = meta.public.clone();
            let handle = conn.with_object_room(|c| {
                c.cmd("TPM2_Load", |ctx| {
                    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                        ctx.load(parent, private.clone(), public.clone())
                    })
                })
            })?;
            (handle, false)
        }
        (None, Some(h)) => {
            let tpm_handle = TpmHandle::try_from(h).map_err(|e| Fail::Tpm("handle", e))?;
            let object = conn.with_object_room(|c| {
                c.cmd("TPM2_ReadPublic", |x| x.tr_from_tpm_public(tpm_handle))
            })?;
            (KeyHandle::from(object), true)
        }
        (None, None) => {
            return Err(Fail::Backend(BackendError::failed(
                &cx.settings.name,
                "key has neither file nor handle",
            )))
        }
    };
    conn.loaded.push(Loaded {
        label: label.to_string(),
        public: public_id,
        handle,
        persistent,
    });
    if let Some(a) = auth {
        set_auth(conn, handle, a)?;
    }
    Ok(handle)
}

fn hashing_of_bank(bank: PcrBank) -> HashingAlgorithm {
    match bank {
        PcrBank::Sha1 => HashingAlgorithm::Sha1,
        PcrBank::Sha256 => HashingAlgorithm::Sha256,
        PcrBank::Sha384 => HashingAlgorithm::Sha384,
        PcrBank::Sha512 => HashingAlgorithm::Sha512,
    }
}

/// A TPML_PCR_SELECTION of `indices` in `bank`, three select octets (as the key
/// file's policy marshals it: the policy digest covers these bytes).
fn selection_list(bank: PcrBank, indices: &[u8]) -> tss_esapi::Result<PcrSelectionList> {
    let slots = indices
        .iter()
        .map(|&i| PcrSlot::try_from(1u32 << i))
        .collect::<tss_esapi::Result<Vec<_>>>()?;
    PcrSelectionList::builder()
        .with_size_of_select(PcrSelectSize::ThreeOctets)
        .with_selection(hashing_of_bank(bank), &slots)
        .build()
}

/// The current values of `sel`'s PCRs, in its order. TPM2_PCR_Read returns at most 8
/// values per call, so they are read 8 at a time.
fn read_pcrs(conn: &mut Conn, device: &str, sel: &PcrSelection) -> Result<Vec<Vec<u8>>, Fail> {
    let mut values = Vec::with_capacity(sel.pcrs.len());
    for chunk in sel.pcrs.chunks(8) {
        let list = selection_list(sel.bank, chunk).map_err(|e| Fail::Tpm("PCR selection", e))?;
        let (_, _, digests) = conn.cmd("TPM2_PCR_Read", |c| c.pcr_read(list.clone()))?;
        if digests.len() != chunk.len() {
            return Err(Fail::Backend(BackendError::unsupported(
                device,
                format!(
                    "the TPM has no active {} PCR bank (PCR_Read returned {} of {} values); pick a bank it has (tpm2_getcap pcrs lists them)",
                    sel.bank,
                    digests.len(),
                    chunk.len()
                ),
            )));
        }
        for d in digests.value() {
            values.push(d.value().to_vec());
        }
    }
    Ok(values)
}

/// Starts a policy session and runs `binding`'s policy in it. When the TPM refuses
/// PolicyPCR because the PCRs are not the bound values, the PCRs are read and the
/// answer is `pcr-mismatch` naming those that differ.
fn start_policy(
    conn: &mut Conn,
    device: &str,
    label: &str,
    binding: &PcrBinding,
    bound_values: Option<&[Vec<u8>]>,
) -> Result<AuthSession, Fail> {
    let session = conn
        .cmd("TPM2_StartAuthSession", |c| {
            c.start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::Null,
                HashingAlgorithm::Sha256,
            )
        })?
        .ok_or_else(|| {
            Fail::Backend(BackendError::failed(
                device,
                "TPM2_StartAuthSession returned no session",
            ))
        })?;
    let result = run_policy(conn, device, label, binding, bound_values, session);
    if result.is_err() {
        flush_session(conn, session);
    }
    result.map(|()| session)
}

fn run_policy(
    conn: &mut Conn,
    device: &str,
    label: &str,
    binding: &PcrBinding,
    bound_values: Option<&[Vec<u8>]>,
    session: AuthSession,
) -> Result<(), Fail> {
    // Kept open after TPM2_Sign; flushed by the agent either way.
    let (attrs, mask) = SessionAttributesBuilder::new()
        .with_continue_session(true)
        .build();
    conn.ctx
        .tr_sess_set_attributes(session, attrs, mask)
        .map_err(|e| Fail::Tpm("Esys_TRSess_SetAttributes", e))?;
    let policy = PolicySession::try_from(session).map_err(|e| Fail::Tpm("policy session", e))?;
    let sel = &binding.selection;
    let list = selection_list(sel.bank, &sel.pcrs).map_err(|e| Fail::Tpm("PCR selection", e))?;
    let digest =
        Digest::try_from(binding.pcr_digest.to_vec()).map_err(|e| Fail::Tpm("PCR digest", e))?;
    for &code in &binding.order {
        match code {
            CC_POLICY_PCR => {
                match conn.cmd("TPM2_PolicyPCR", |c| {
                    c.policy_pcr(policy, digest.clone(), list.clone())
                }) {
                    Ok(()) => {}
                    Err(Fail::Tpm(_, e)) if tpm_kind(&e) == Some(Tss2ResponseCodeKind::Value) => {
                        let current = read_pcrs(conn, device, sel)?;
                        let why = pcr::describe_mismatch(sel, &current, bound_values);
                        warn!(device, key = %label, pcrs = %sel, "PCR policy refused: the PCRs are not in the bound state");
                        return Err(Fail::Backend(BackendError::pcr_mismatch(
                            device,
                            format!("key {label}: {why}"),
                        )));
                    }
                    Err(e) => return Err(e),
                }
            }
            CC_POLICY_AUTH_VALUE => {
                conn.cmd("TPM2_PolicyAuthValue", |c| c.policy_auth_value(policy))?;
            }
            other => {
                return Err(Fail::Backend(BackendError::unsupported(
                    device,
                    format!("key {label}: policy command {other:#x} is not supported"),
                )))
            }
        }
    }
    Ok(())
}

fn flush_session(conn: &mut Conn, session: AuthSession) {
    let handle = ObjectHandle::from(SessionHandle::from(session));
    let _ = conn.cmd("TPM2_FlushContext (session)", |c| c.flush_context(handle));
}

/// Writes `bytes` to a new temporary file (0600) beside `path`, synced, and returns its
/// path; nothing is left behind on failure.
fn write_synced_temp(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Writes `path` whole, replacing what was there: a temporary file (0600) beside it,
/// synced, then renamed over it.
fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = write_synced_temp(path, bytes)?;
    let result = fs::rename(&tmp, path);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn set_auth(conn: &mut Conn, handle: KeyHandle, auth: &Auth) -> Result<(), Fail> {
    conn.ctx
        .tr_set_auth(ObjectHandle::from(handle), auth.clone())
        .map_err(|e| Fail::Tpm("Esys_TR_SetAuth", e))
}

/// Writes a new file that must not exist yet, atomically: a temporary file (0600) is
/// written and synced, then linked to `path` (which fails if `path` appeared).
fn write_new_file(device: &str, dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), BackendError> {
    let io = |what: &str, e: std::io::Error| {
        BackendError::failed(device, format!("cannot {what} {}: {e}", path.display()))
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("create the folder of", e))?;
    let result = write_synced_temp(path, bytes).and_then(|tmp| {
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        linked
    });
    match result {
        Ok(()) => {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(BackendError::key_exists(
            device,
            format!("{} exists already", path.display()),
        )),
        Err(e) => Err(io("write", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(persistent_label("0x81000001"), Some(0x8100_0001));
        assert_eq!(persistent_label("0x40000001"), None);
        assert_eq!(persistent_label("0x8100001"), None);
        assert!(valid_file_label("git-signing_2.key"));
        for bad in ["", ".hidden", "0x81000001", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_file_label(bad), "{bad}");
        }
    }

    #[test]
    fn tpm_errors_sort_into_faults() {
        let tpm = |rc: u32| {
            Fail::Tpm(
                "TPM2_Sign",
                tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(rc)),
            )
        };
        // TCTI layer (10), TSS2_BASE_RC_IO_ERROR: the connection broke.
        assert_eq!(classify(&tpm(0x000a_000a)), Fault::Gone);
        // TPM_RC_REBOOT: the TPM restarted.
        assert_eq!(classify(&tpm(0x130)), Fault::Relogin);
        // TPM_RC_HANDLE: an object the agent loaded is not there.
        assert_eq!(classify(&tpm(0x08b)), Fault::StaleHandle);
        assert_eq!(classify(&Fail::Full("full".into())), Fault::StaleHandle);
        // TPM_RC_AUTH_FAIL (session 1): final, never retried.
        assert_eq!(classify(&tpm(0x98e)), Fault::Failed);
        let decided = Fail::Backend(BackendError::no_such_key("tpm", "no key"));
        assert_eq!(classify(&decided), Fault::Failed);
    }

    #[test]
    fn templates_build() {
        srk_template().unwrap();
        ak_template().unwrap();
        for alg in [
            KeyAlg::P256,
            KeyAlg::P384,
            KeyAlg::Rsa(2048),
            KeyAlg::Rsa(3072),
        ] {
            let t = key_template(alg, None).unwrap();
            let a = t.object_attributes();
            assert!(a.fixed_tpm() && a.fixed_parent() && a.sensitive_data_origin());
            assert!(a.user_with_auth() && a.sign_encrypt());
            assert!(!a.decrypt() && !a.restricted());
            // Bound to PCRs: only a policy session may use it.
            let t = key_template(alg, Some([5; 32])).unwrap();
            assert!(!t.object_attributes().user_with_auth());
            assert_eq!(t.auth_policy().value(), &[5; 32]);
        }
        assert!(key_template(KeyAlg::Ed25519, None).is_err());
    }
}
