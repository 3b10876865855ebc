//! The registry of devices and keys: routes a key NAME to its device's lanes, applies
//! the policy, and turns backend results into protocol results.
//!
//! The native server (and later the SSH and D-Bus faces) are thin adapters over this.

use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256, Sha384, Sha512};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::backend::{self, Backend, BackendError, CertObject, GenerateOptions, SignInput};
use crate::config::{Config, DeviceKind};
use crate::keyuri::KeyName;
use crate::policy::{Caller, Policy};
use crate::proto::{
    AttestOk, Bytes, DeviceStatus, ErrorCode, GenerateKeyOk, HashAlg, KeyAlg, KeyInfo, ListKeysOk,
    PublicKeyOk, Purpose, RsaPadding, Sign, SignOk, StatusOk, StoreCertificate, StoreCertificateOk,
    UnlockOk, WireError, AGENT_NAME, PROTOCOL_VERSION,
};
use crate::worker::{DeviceLanes, LaneError};
use crate::x509::{SigFamily, TbsSummary};

/// One configured device and its lanes.
#[derive(Debug)]
struct Device {
    name: String,
    kind: &'static str,
    lanes: DeviceLanes,
}

/// Every device, and the policy over their keys.
#[derive(Debug)]
pub struct KeyStore {
    devices: Vec<Device>,
    policy: Policy,
    /// SHA-256 of the passphrase that locked the agent (`ssh-add -x`), if locked.
    lock: Mutex<Option<Zeroizing<[u8; 32]>>>,
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
        let state_dir = config
            .agent
            .state_dir
            .clone()
            .unwrap_or_else(crate::paths::state_dir);
        let mut devices = Vec::new();
        for d in &config.devices {
            let lanes: Vec<Box<dyn Backend>> = match &d.kind {
                #[cfg(feature = "pkcs11")]
                DeviceKind::Pkcs11 {
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
                DeviceKind::Pkcs11 { .. } => {
                    warn!(device = %d.name, "this agent was built without the pkcs11 feature; device skipped");
                    continue;
                }
                #[cfg(feature = "tpm")]
                DeviceKind::Tpm { tcti, key_dir } => {
                    backend::tpm::open(backend::tpm::TpmSettings {
                        name: d.name.clone(),
                        tcti: tcti.clone(),
                        key_dir: key_dir.clone().unwrap_or_else(|| state_dir.join("tpm")),
                        pin: d.pin.clone(),
                    })
                }
                #[cfg(not(feature = "tpm"))]
                DeviceKind::Tpm { .. } => {
                    warn!(device = %d.name, "this agent was built without the tpm feature; device skipped");
                    continue;
                }
                #[cfg(feature = "yubikey")]
                DeviceKind::Yubikey { serial, mgm_key } => {
                    backend::yubikey::open(backend::yubikey::YubikeySettings {
                        name: d.name.clone(),
                        serial: *serial,
                        pin: d.pin.clone(),
                        mgm_key: mgm_key.clone(),
                    })
                }
                #[cfg(not(feature = "yubikey"))]
                DeviceKind::Yubikey { .. } => {
                    warn!(device = %d.name, "this agent was built without the yubikey feature; device skipped");
                    continue;
                }
            };
            info!(device = %d.name, kind = d.kind.word(), lanes = lanes.len(), "device configured");
            devices.push(Device {
                name: d.name.clone(),
                kind: d.kind.word(),
                lanes: DeviceLanes::new(&d.name, lanes),
            });
        }
        KeyStore {
            devices,
            policy: Policy::new(&config.keys),
            lock: Mutex::new(None),
        }
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
            purposes: self.policy.purposes(&name),
            name,
            device: device.to_string(),
            alg: key.alg,
            uri: key.uri,
        }
    }

    /// `status`: every device, present or not.
    pub fn status(&self) -> StatusOk {
        let mut devices = Vec::with_capacity(self.devices.len());
        let mut total = 0;
        for d in &self.devices {
            let status = match d.lanes.run(|b| b.info()).map_err(WireError::from) {
                Ok(Ok(info)) => {
                    total += info.keys;
                    DeviceStatus {
                        name: d.name.clone(),
                        kind: d.kind.to_string(),
                        present: true,
                        keys: info.keys,
                        detail: info.detail,
                        error: None,
                    }
                }
                Ok(Err(e)) => DeviceStatus {
                    name: d.name.clone(),
                    kind: d.kind.to_string(),
                    present: !matches!(e, BackendError::Absent(_)),
                    keys: 0,
                    detail: String::new(),
                    error: Some(e.to_wire().to_string()),
                },
                Err(e) => DeviceStatus {
                    name: d.name.clone(),
                    kind: d.kind.to_string(),
                    present: false,
                    keys: 0,
                    detail: String::new(),
                    error: Some(e.to_string()),
                },
            };
            devices.push(status);
        }
        StatusOk {
            agent: AGENT_NAME.to_string(),
            version: PROTOCOL_VERSION,
            devices,
            keys: total,
        }
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

    /// `public_key`.
    pub fn public_key(&self, key: &str) -> Result<PublicKeyOk, WireError> {
        let (device, name) = self.split(key)?;
        let pk = device
            .lanes
            .run(|b| b.public_key(name.label))?
            .map_err(wire)?;
        Ok(PublicKeyOk {
            pem: backend::crypto::spki_pem(&pk.spki_der),
            spki_der: Bytes(pk.spki_der),
            alg: pk.alg,
        })
    }

    /// `generate_key`.
    pub fn generate(
        &self,
        key: &str,
        alg: KeyAlg,
        opts: &GenerateOptions,
    ) -> Result<GenerateKeyOk, WireError> {
        let (device, name) = self.split(key)?;
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
            .run(|b| b.generate_with(name.label, alg, opts))?
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

    /// `sign` (purposes `digest`, `blob` and `x509-tbs`), on the calling thread.
    ///
    /// `notice` is told, before the device is asked, when the device will wait for the
    /// user (a YubiKey touch).
    pub fn sign(
        &self,
        req: &Sign,
        caller: &Caller,
        notice: &mut dyn FnMut(&str),
    ) -> Result<SignOk, WireError> {
        self.check_unlocked()?;
        let (device, name) = self.split(&req.key)?;
        self.policy.check_sign(&req.key, req.purpose, caller)?;
        match req.purpose {
            Purpose::Digest | Purpose::Blob => {}
            Purpose::X509Tbs => return self.sign_tbs(req, device, name.label),
            Purpose::Ssh => {
                return Err(WireError::new(
                    ErrorCode::Unsupported,
                    format!(
                        "purpose `{}` is not served on agent.sock by this version",
                        req.purpose
                    ),
                ))
            }
        }
        if req.purpose == Purpose::Blob && req.name.as_deref().map_or(true, str::is_empty) {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                "purpose `blob` needs `name`, the artifact's name",
            ));
        }
        self.touch_notice(device, &req.key, name.label, notice)?;
        let padding = req.padding.unwrap_or(RsaPadding::Pkcs1);
        let input = SignInput {
            digest: &req.digest.0,
            hash: req.hash,
            padding,
            raw: false,
        };
        let signed = device
            .lanes
            .run(|b| b.sign(name.label, &input))?
            .map_err(wire)?;
        Ok(SignOk {
            alg: signed.alg.signature_alg(signed.hash, padding),
            signature: Bytes(signed.signature),
        })
    }

    /// `sign` with purpose `x509-tbs` (policy's purpose check done): parses the
    /// TBSCertificate, applies `x509_issue`, checks it fits the key, logs what is
    /// certified and signs its digest.
    fn sign_tbs(&self, req: &Sign, device: &Device, label: &str) -> Result<SignOk, WireError> {
        let key = &req.key;
        let Some(tbs) = req.tbs.as_ref() else {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                "purpose x509-tbs needs `tbs`, the DER TBSCertificate",
            ));
        };
        let summary = TbsSummary::parse(&tbs.0).map_err(|e| {
            warn!(key = %key, error = %e, "x509-tbs refused: malformed TBSCertificate");
            WireError::new(ErrorCode::BadRequest, format!("x509-tbs: {e}"))
        })?;
        let refuse = |e: WireError| {
            warn!(
                key = %key, subject = %summary.subject, issuer = %summary.issuer,
                serial = %summary.serial, ca = %summary.ca_text(), code = %e.code,
                reason = %e.message, "x509-tbs refused"
            );
            e
        };
        self.policy.check_tbs(key, &summary).map_err(refuse)?;
        let pk = device.lanes.run(|b| b.public_key(label))?.map_err(wire)?;
        summary.fits(pk.alg).map_err(|e| {
            refuse(WireError::new(
                ErrorCode::BadRequest,
                format!("x509-tbs: {e}"),
            ))
        })?;
        let raw = summary.family == SigFamily::Ed25519;
        let digest = if raw {
            tbs.0.clone()
        } else {
            match summary.hash {
                HashAlg::Sha256 => Sha256::digest(&tbs.0).to_vec(),
                HashAlg::Sha384 => Sha384::digest(&tbs.0).to_vec(),
                HashAlg::Sha512 => Sha512::digest(&tbs.0).to_vec(),
            }
        };
        let input = SignInput {
            digest: &digest,
            hash: Some(summary.hash),
            padding: RsaPadding::Pkcs1,
            raw,
        };
        let signed = device.lanes.run(|b| b.sign(label, &input))?.map_err(wire)?;
        info!(
            key = %key, subject = %summary.subject, issuer = %summary.issuer,
            serial = %summary.serial, not_before = %summary.not_before,
            not_after = %summary.not_after, ca = %summary.ca_text(),
            eku = %summary.eku.join(","), hash = %summary.hash,
            "x509-tbs signed: certificate issued"
        );
        Ok(SignOk {
            alg: signed.alg.signature_alg(signed.hash, RsaPadding::Pkcs1),
            signature: Bytes(signed.signature),
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
        if req.object_id.is_empty() || req.object_id.len() > 64 {
            return Err(bad("`object_id` must be 1 to 64 characters".into()));
        }
        let label = req.label.clone().unwrap_or_else(|| "PKCS11CA".to_string());
        if label.is_empty() || label.len() > 64 {
            return Err(bad("`label` must be 1 to 64 characters".into()));
        }
        let object = CertObject::from_der(&req.object_id, &label, &req.cert.0)
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
        info!(key = %req.key, object_id = %req.object_id, label = %label, subject = %object.subject_text, "certificate stored on the device");
        Ok(StoreCertificateOk {
            key: req.key.clone(),
            object_id: req.object_id.clone(),
            label,
        })
    }

    /// Tells `notice` (and the log) when signing with `key` will wait for a touch.
    fn touch_notice(
        &self,
        device: &Device,
        key: &str,
        label: &str,
        notice: &mut dyn FnMut(&str),
    ) -> Result<(), WireError> {
        if device.kind != "yubikey" {
            return Ok(());
        }
        if let Some(text) = device.lanes.run(|b| b.touch_notice(label))? {
            info!(key, "{text}");
            notice(&text);
        }
        Ok(())
    }

    /// `unlock`: the user's go-ahead to try `device`'s PIN again.
    pub fn unlock_device(&self, device: &str) -> Result<UnlockOk, WireError> {
        let d = self.device(device)?;
        let message = d.lanes.run(|b| b.unlock())?.map_err(wire)?;
        info!(device, %message, "unlock");
        Ok(UnlockOk {
            device: device.to_string(),
            message,
        })
    }

    fn check_unlocked(&self) -> Result<(), WireError> {
        if self.is_locked() {
            return Err(WireError::new(
                ErrorCode::Locked,
                "the agent is locked (ssh-add -x); unlock it with ssh-add -X",
            ));
        }
        Ok(())
    }

    /// Whether the agent is locked.
    pub fn is_locked(&self) -> bool {
        self.lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Locks the agent with `passphrase`; false if it was locked already.
    pub fn lock(&self, passphrase: &[u8]) -> bool {
        let mut lock = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if lock.is_some() {
            return false;
        }
        *lock = Some(Zeroizing::new(Sha256::digest(passphrase).into()));
        info!("agent locked");
        true
    }

    /// Unlocks the agent if `passphrase` is the one it was locked with. A wrong
    /// passphrase costs a second, against guessing.
    pub fn unlock(&self, passphrase: &[u8]) -> bool {
        let given: Zeroizing<[u8; 32]> = Zeroizing::new(Sha256::digest(passphrase).into());
        let mut lock = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match lock.as_ref() {
            Some(held)
                if held
                    .iter()
                    .zip(given.iter())
                    .fold(0u8, |d, (a, b)| d | (a ^ b))
                    == 0 =>
            {
                *lock = None;
                info!("agent unlocked");
                true
            }
            _ => {
                drop(lock);
                warn!("unlock refused");
                std::thread::sleep(Duration::from_secs(1));
                false
            }
        }
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
                || (forwarded && !self.policy.ssh_forwarding(&key.name))
            {
                continue;
            }
            match self.public_key(&key.name) {
                Ok(pk) => out.push(SshKey {
                    name: key.name,
                    alg: pk.alg,
                    spki: pk.spki_der.0,
                }),
                Err(e) => warn!(key = %key.name, error = %e, "key left out of the SSH identities"),
            }
        }
        out
    }

    /// Signs for `ssh.sock`: `input` is the digest (ECDSA, RSA) or the message (Ed25519).
    pub fn sign_ssh(
        &self,
        key: &str,
        input: &SignInput<'_>,
        caller: &Caller,
        forwarded: bool,
    ) -> Result<Vec<u8>, WireError> {
        self.check_unlocked()?;
        let (device, name) = self.split(key)?;
        self.policy.check_sign(key, Purpose::Ssh, caller)?;
        if forwarded && !self.policy.ssh_forwarding(key) {
            return Err(WireError::new(
                ErrorCode::PolicyDenied,
                format!(
                    "key {key} may not be used through a forwarded agent (ssh_forwarding = false)"
                ),
            ));
        }
        // An SSH client cannot be told; the log says it.
        self.touch_notice(device, key, name.label, &mut |_| {})?;
        let signed = device
            .lanes
            .run(|b| b.sign(name.label, input))?
            .map_err(wire)?;
        Ok(signed.signature)
    }

    /// Closes every idle lane (sessions logged out and closed by the module).
    pub fn shutdown(&self) {
        for d in &self.devices {
            d.lanes.close();
        }
    }
}
