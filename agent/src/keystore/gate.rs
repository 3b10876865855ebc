//! The gate every signature passes, whichever face asked (agent.sock, ssh.sock; the
//! PKCS#11 module through agent.sock): README → Policy, confirmation and the audit log.
//!
//! One entry point, [`KeyStore::gate`], takes a key, a purpose, the caller and a
//! *preparer* that turns the face's request into what is judged, logged and signed
//! ([`Prepared`]). In order: the agent's lock, the key's name and device, the key's
//! policy (purposes, uids, programs; forwarding on ssh.sock), the preparer (which may
//! refuse too: an x509-tbs certificate the key may not issue), then the rate limits,
//! confirmation, the audit intent, the device (PIN, touch notice, signature), the intent
//! made durable, the outcome and the event. Every refusal is audited exactly once, where
//! it happens; no face names a device type.

use std::borrow::Cow;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};
use tracing::{info, warn};

use super::{wire, ConfirmRequest, Device, Event, Interaction, KeyStore, NoInteraction};
use crate::audit::{self, Record};
use crate::backend::SignInput;
use crate::intoto::{self, Statement};
use crate::policy::Caller;
use crate::proto::{
    Bytes, DeviceKind, ErrorCode, HashAlg, KeyAlg, Purpose, RsaPadding, Sign, SignOk, WireError,
};
use crate::rates::Taken;
use crate::x509::{SigFamily, TbsSummary};

/// What the gate judges, logs and signs, made by a purpose's preparer.
#[derive(Debug)]
pub struct Prepared<'a> {
    /// The digest to sign, or the whole message (`raw`: Ed25519).
    pub digest: Cow<'a, [u8]>,
    /// Its hash (`None`: the key's default).
    pub hash: Option<HashAlg>,
    /// RSA padding.
    pub padding: RsaPadding,
    /// `digest` is the message itself.
    pub raw: bool,
    /// What a person confirming is shown.
    pub what: String,
}

/// A signature made through the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// ECDSA: DER; RSA: raw; Ed25519: 64 bytes.
    pub bytes: Vec<u8>,
    /// The key's algorithm.
    pub alg: KeyAlg,
    /// The hash used.
    pub hash: HashAlg,
    /// The RSA padding used.
    pub padding: RsaPadding,
}

impl Signature {
    /// The answer to a `sign` on agent.sock.
    pub fn into_sign_ok(self) -> SignOk {
        SignOk {
            alg: self.alg.signature_alg(self.hash, self.padding),
            signature: Bytes(self.bytes),
        }
    }
}

/// A signature made whose intent record may not be on disk yet: the caller holds it
/// and hands it to [`KeyStore::finish`], which waits for the disk, writes the outcome
/// and gives out the signature (or withholds it). A connection with several requests
/// in flight (docs/protocol.md, "Pipelining") finishes them together, so one `fdatasync`
/// covers all their intents (docs/architecture.md, "The audit log").
#[derive(Debug)]
pub struct Pending {
    seq: u64,
    key: String,
    purpose: Purpose,
    caller: Caller,
    subject: Map<String, Value>,
    signature: Signature,
}

/// What the gate gives back: a signature, or one still waiting for its record's sync.
#[derive(Debug)]
pub enum Gated {
    /// Made, durable and recorded (or no audit log).
    Done(Signature),
    /// Made; [`KeyStore::finish`] gives it out.
    Pending(Pending),
}

/// Who asks the gate for what.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ask<'a> {
    /// Key NAME.
    key: &'a str,
    /// What the signature is for.
    purpose: Purpose,
    /// Who asks.
    caller: &'a Caller,
    /// On ssh.sock: the connection counts as forwarded.
    forwarded: bool,
    /// Give back a [`Gated::Pending`] instead of waiting for the intent's sync.
    defer: bool,
}

/// An SSH signature request, as ssh.sock hands it to the gate.
#[derive(Debug)]
pub struct SshSign<'a> {
    /// Key NAME.
    pub key: &'a str,
    /// The key's algorithm (from the identities the gate offered).
    pub alg: KeyAlg,
    /// The data to sign.
    pub data: &'a [u8],
    /// For RSA: the hash the client asked for (`rsa-sha2-256`/`512`); `None` is SHA-1,
    /// which is refused.
    pub rsa_hash: Option<HashAlg>,
    /// The connection is bound for forwarding (or sent a bind that was not verified).
    pub forwarded: bool,
}

impl KeyStore {
    /// `sign` on agent.sock (purposes `digest`, `blob` and `x509-tbs`), on the calling
    /// thread. `ui` is the requesting client: told when the device will wait for a
    /// touch, and asked for a PIN when the device's source is `prompt`. Every refusal
    /// and every signature is in the audit log, and a signature is returned only once
    /// its record is durable.
    pub fn sign(
        &self,
        req: &Sign,
        caller: &Caller,
        ui: &mut dyn Interaction,
    ) -> Result<SignOk, WireError> {
        match self.sign_gated(req, caller, ui, false)? {
            Gated::Done(signed) => Ok(signed.into_sign_ok()),
            Gated::Pending(p) => self.finish(p).map(Signature::into_sign_ok),
        }
    }

    /// [`KeyStore::sign`], which with `defer` may give back a signature still waiting
    /// for its intent's sync ([`Gated::Pending`]).
    pub fn sign_gated(
        &self,
        req: &Sign,
        caller: &Caller,
        ui: &mut dyn Interaction,
        defer: bool,
    ) -> Result<Gated, WireError> {
        let mut subject = Map::new();
        if !req.digest.is_empty() {
            let hash = req.hash.map_or("default".to_string(), |h| h.to_string());
            subject.insert("hash".into(), json!(hash));
            subject.insert("digest".into(), json!(hex::encode(&req.digest.0)));
        }
        if let Some(name) = &req.name {
            subject.insert("name".into(), json!(name));
        }
        if let Some(tbs) = &req.tbs {
            subject.insert(
                "tbs_sha256".into(),
                json!(hex::encode(Sha256::digest(&tbs.0))),
            );
        }
        if let Some(message) = &req.message {
            subject.insert(
                "message_sha256".into(),
                json!(hex::encode(Sha256::digest(&message.0))),
            );
            subject.insert("message_bytes".into(), json!(message.0.len()));
        }
        if let Some(statement) = &req.statement {
            subject.insert(
                "statement_sha256".into(),
                json!(hex::encode(Sha256::digest(&statement.0))),
            );
        }
        let ask = Ask {
            key: &req.key,
            purpose: req.purpose,
            caller,
            forwarded: false,
            defer,
        };
        let signed = self.gate(ask, subject, ui, |device, label, subject| {
            match (req.purpose, &req.message) {
                (Purpose::Digest, Some(message)) => prepare_message(req, message, device, label),
                (Purpose::Digest | Purpose::Blob, _) => prepare_digest(req),
                (Purpose::X509Tbs, _) => self.prepare_tbs(req, device, label, subject),
                (Purpose::X509Crl, _) => prepare_crl(req, device, label, subject),
                (Purpose::Attest, _) => prepare_attest(req, device, label, subject),
                (Purpose::Ssh, _) => Err(WireError::new(
                    ErrorCode::Unsupported,
                    format!(
                        "purpose `{}` is not served on agent.sock by this version",
                        req.purpose
                    ),
                )),
            }
        })?;
        if req.purpose == Purpose::X509Tbs {
            info!(key = %req.key, tbs_sha256 = %hex::encode(Sha256::digest(req.tbs.as_ref().map_or(&[][..], |t| &t.0))), "x509-tbs signed: certificate issued");
        }
        Ok(signed)
    }

    /// Signs for ssh.sock. An SSH client cannot be told or asked anything: a touch is
    /// only logged, and a device whose PIN source is `prompt` must be logged in first.
    pub fn sign_ssh(&self, req: &SshSign<'_>, caller: &Caller) -> Result<Signature, WireError> {
        self.sign_ssh_with(req, caller, &mut NoInteraction)
    }

    /// [`KeyStore::sign_ssh`] for a client that may go away while its signature waits
    /// for approvals (`ui.gone()`); it is told nothing.
    pub fn sign_ssh_with(
        &self,
        req: &SshSign<'_>,
        caller: &Caller,
        ui: &mut dyn Interaction,
    ) -> Result<Signature, WireError> {
        let mut subject = Map::new();
        if req.forwarded {
            subject.insert("forwarded".into(), json!(true));
        }
        let ask = Ask {
            key: req.key,
            purpose: Purpose::Ssh,
            caller,
            forwarded: req.forwarded,
            defer: false,
        };
        let gated = self.gate(ask, subject, ui, |_, _, subject| {
            let shown = if req.alg == KeyAlg::Ed25519 {
                hex::encode(Sha256::digest(req.data))
            } else {
                String::new()
            };
            let prepared = prepare_ssh(req)?;
            subject.insert(
                "ssh_data".into(),
                json!(if prepared.raw {
                    shown
                } else {
                    hex::encode(&prepared.digest)
                }),
            );
            Ok(prepared)
        })?;
        match gated {
            Gated::Done(signed) => Ok(signed),
            Gated::Pending(p) => self.finish(p),
        }
    }

    /// The gate (see the module doc). `prepare` runs once the key's policy allowed the
    /// caller and purpose; it may add to the audit `subject` and refuse.
    pub(super) fn gate<'a>(
        &self,
        ask: Ask<'_>,
        mut subject: Map<String, Value>,
        ui: &mut dyn Interaction,
        prepare: impl FnOnce(&Device, &str, &mut Map<String, Value>) -> Result<Prepared<'a>, WireError>,
    ) -> Result<Gated, WireError> {
        let Ask {
            key,
            purpose,
            caller,
            forwarded,
            defer,
        } = ask;
        let judged = (|| {
            self.check_unlocked()?;
            let (device, name) = self.split(key)?;
            let policy = self.policy();
            policy.check_sign(key, purpose, caller)?;
            if forwarded && !policy.ssh_forwarding(key) {
                return Err(WireError::new(
                    ErrorCode::PolicyDenied,
                    format!(
                        "key {key} may not be used through a forwarded agent (ssh_forwarding = false)"
                    ),
                ));
            }
            let prepared = prepare(device, name.label, &mut subject)?;
            Ok((device, name.label, prepared))
        })();
        let (device, label, prepared) = match judged {
            Ok(j) => j,
            Err(e) => {
                self.audit_refusal(key, purpose, caller, subject, &e);
                return Err(e);
            }
        };
        // Quorum approval: the request waits here, with the exact bytes to sign in
        // hand, until enough approvers signed its text (crate::approvals).
        if let Some(approvals) = self.policy().approvals(key).cloned() {
            let waiting = super::approval::Waiting {
                key,
                purpose,
                caller,
                policy: &approvals,
                prepared: &prepared,
                device,
                label,
            };
            // A wait can be long: the lock and the key's policy (a SIGHUP may have
            // changed it) are checked again before anything is signed.
            let approved = self.await_approvals(waiting, ui).and_then(|a| {
                self.check_unlocked()?;
                self.policy().check_sign(key, purpose, caller)?;
                Ok(a)
            });
            match approved {
                Ok((id, names)) => {
                    subject.insert("approval".into(), json!(id));
                    subject.insert("approved_by".into(), json!(names));
                }
                Err(e) => {
                    self.audit_refusal(key, purpose, caller, subject, &e);
                    return Err(e);
                }
            }
        }
        let refuse = |e: WireError| {
            self.audit_refusal(key, purpose, caller, subject.clone(), &e);
            e
        };
        let mut slot = self.take_rate(key).map_err(refuse)?;
        let give_back = |slot: Option<Taken>| {
            if let Some(t) = slot {
                self.give_back_rate(key, t);
            }
        };
        if let Err(e) = self.confirm(key, purpose, caller, &prepared.what) {
            give_back(slot);
            return Err(refuse(e));
        }
        let record = |event: audit::Event,
                      outcome: Option<(ErrorCode, String)>,
                      intent: Option<u64>| Record {
            event,
            key: key.to_string(),
            purpose: Some(purpose.into()),
            caller: caller.clone(),
            subject: subject.clone(),
            outcome,
            intent,
        };
        let intent = match &self.audit {
            Some(audit) => match audit.append(&record(audit::Event::Intent, None, None)) {
                Ok(seq) => {
                    slot = self.rate_logged(key, seq, slot);
                    Some(seq)
                }
                Err(e) => {
                    give_back(slot);
                    return Err(WireError::new(
                        ErrorCode::DeviceError,
                        format!("{e}; nothing is signed that the audit log cannot hold"),
                    ));
                }
            },
            None => None,
        };
        let input = SignInput {
            digest: &prepared.digest,
            hash: prepared.hash,
            padding: prepared.padding,
            raw: prepared.raw,
        };
        let result = (|| {
            self.prompt_pin(device, ui)?;
            self.touch_notice(device, key, label, ui)?;
            device
                .lanes
                .run(|b| b.sign(label, &input))?
                .map_err(wire)
                .inspect(|_| self.pin_in_use(device))
        })();
        let made = |signed: crate::backend::Signed| Signature {
            bytes: signed.signature,
            alg: signed.alg,
            hash: signed.hash,
            padding: prepared.padding,
        };
        let (Some(audit), Some(seq)) = (&self.audit, intent) else {
            if result.is_err() {
                give_back(slot);
            }
            return result.map(|signed| {
                self.issued(key, purpose, caller);
                Gated::Done(made(signed))
            });
        };
        match result {
            Err(e) => {
                give_back(slot);
                let _ = audit.append(&record(
                    audit::Event::Failed,
                    Some((e.code, e.message.clone())),
                    Some(seq),
                ));
                Err(e)
            }
            Ok(signed) => {
                let pending = Pending {
                    seq,
                    key: key.to_string(),
                    purpose,
                    caller: caller.clone(),
                    subject,
                    signature: made(signed),
                };
                if defer {
                    Ok(Gated::Pending(pending))
                } else {
                    self.finish(pending).map(Gated::Done)
                }
            }
        }
    }

    /// Gives out a signature the gate made once its intent record is on disk: writes
    /// the outcome (`signed`, or `withheld` when the sync failed) and the event.
    pub fn finish(&self, p: Pending) -> Result<Signature, WireError> {
        let record = |event: audit::Event, outcome: Option<(ErrorCode, String)>| Record {
            event,
            key: p.key.clone(),
            purpose: Some(p.purpose.into()),
            caller: p.caller.clone(),
            subject: p.subject.clone(),
            outcome,
            intent: Some(p.seq),
        };
        if let Some(audit) = &self.audit {
            if let Err(e) = audit.wait_durable(p.seq) {
                let _ = audit.append(&record(
                    audit::Event::Withheld,
                    Some((ErrorCode::DeviceError, e.to_string())),
                ));
                return Err(WireError::new(
                    ErrorCode::DeviceError,
                    format!("{e}; the signature was withheld"),
                ));
            }
            if let Err(e) = audit.append(&record(audit::Event::Signed, None)) {
                warn!(error = %e, "the outcome of a durable intent record was not written");
            }
        }
        self.issued(&p.key, p.purpose, &p.caller);
        Ok(p.signature)
    }

    /// Tells the event bus a signature went out.
    fn issued(&self, key: &str, purpose: Purpose, caller: &Caller) {
        self.emit(Event::SignatureIssued {
            key: key.to_string(),
            purpose,
            caller: caller.clone(),
        });
    }

    /// Purpose `x509-tbs`: parses the TBSCertificate, records what it certifies,
    /// applies `x509_issue` and `x509_eku`, checks it fits the key, and hashes it with
    /// the hash its own signature algorithm names.
    fn prepare_tbs<'a>(
        &self,
        req: &'a Sign,
        device: &Device,
        label: &str,
        subject: &mut Map<String, Value>,
    ) -> Result<Prepared<'a>, WireError> {
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
        subject.insert(
            "certificate".into(),
            json!({
                "subject": summary.subject,
                "issuer": summary.issuer,
                "serial": summary.serial,
                "not_before": summary.not_before,
                "not_after": summary.not_after,
                "ca": summary.ca_text(),
                "eku": summary.eku,
            }),
        );
        let refuse = |e: WireError| {
            warn!(
                key = %key, subject = %summary.subject, issuer = %summary.issuer,
                serial = %summary.serial, ca = %summary.ca_text(), code = %e.code,
                reason = %e.message, "x509-tbs refused"
            );
            e
        };
        self.policy().check_tbs(key, &summary).map_err(refuse)?;
        let pk = device.lanes.run(|b| b.public_key(label))?.map_err(wire)?;
        summary.fits(pk.alg).map_err(|e| {
            refuse(WireError::new(
                ErrorCode::BadRequest,
                format!("x509-tbs: {e}"),
            ))
        })?;
        let raw = summary.family == SigFamily::Ed25519;
        let digest = if raw {
            Cow::Borrowed(tbs.0.as_slice())
        } else {
            Cow::Owned(hash(summary.hash, &tbs.0))
        };
        info!(
            key = %key, subject = %summary.subject, issuer = %summary.issuer,
            serial = %summary.serial, not_before = %summary.not_before,
            not_after = %summary.not_after, ca = %summary.ca_text(),
            eku = %summary.eku.join(","), hash = %summary.hash,
            "x509-tbs judged: the certificate may be issued"
        );
        Ok(Prepared {
            digest,
            hash: Some(summary.hash),
            padding: RsaPadding::Pkcs1,
            raw,
            what: format!(
                "certificate for {} (issuer {}, serial {}, CA {}, valid {} to {}, EKU {})",
                summary.subject,
                summary.issuer,
                summary.serial,
                summary.ca_text(),
                summary.not_before,
                summary.not_after,
                if summary.eku.is_empty() {
                    "none".to_string()
                } else {
                    summary.eku.join(", ")
                }
            ),
        })
    }

    /// Writes a refusal to the audit log (and the log).
    fn audit_refusal(
        &self,
        key: &str,
        purpose: Purpose,
        caller: &Caller,
        subject: Map<String, Value>,
        e: &WireError,
    ) {
        info!(key, %purpose, caller = %caller.describe(), code = %e.code, reason = %e.message, "signature refused");
        if let Some(audit) = &self.audit {
            let record = Record {
                event: audit::Event::Refused,
                key: key.to_string(),
                purpose: Some(purpose.into()),
                caller: caller.clone(),
                subject,
                outcome: Some((e.code, e.message.clone())),
                intent: None,
            };
            if let Err(err) = audit.append(&record) {
                warn!(error = %err, "refusal not recorded in the audit log");
            }
        }
    }

    /// Takes one signature from `key`'s hourly and daily allowance; a key not counted
    /// yet is counted from the audit log first ([`crate::rates`]).
    fn take_rate(&self, key: &str) -> Result<Option<Taken>, WireError> {
        self.rates
            .take(key, self.policy().limits(key), self.audit.as_ref())
    }

    /// `key`'s intent is audit record `seq`: a signature that passed the rate gate
    /// under an earlier policy is counted now if the current count missed it. Returns
    /// the slot to give back if the signature is not made.
    fn rate_logged(&self, key: &str, seq: u64, slot: Option<Taken>) -> Option<Taken> {
        let limits = self.policy().limits(key);
        if slot.is_none() && limits.per_hour.is_none() && limits.per_day.is_none() {
            return None;
        }
        self.rates.logged(key, seq, slot).or(slot)
    }

    /// Returns an allowance taken for a signature that was not made.
    fn give_back_rate(&self, key: &str, taken: Taken) {
        self.rates.give_back(key, taken);
    }

    /// Asks a person when `key`'s policy says `confirm = true`.
    fn confirm(
        &self,
        key: &str,
        purpose: Purpose,
        caller: &Caller,
        what: &str,
    ) -> Result<(), WireError> {
        if !self.policy().confirm(key) {
            return Ok(());
        }
        let Some(confirmer) = self.confirmer() else {
            return Err(WireError::new(
                ErrorCode::ConfirmDenied,
                format!("key {key} needs a person's confirmation (confirm = true) and there is no way to ask: no desktop notification service answered and [agent] confirm_program is not set"),
            ));
        };
        let request = ConfirmRequest {
            key: key.to_string(),
            purpose,
            caller: caller.clone(),
            what: what.to_string(),
        };
        info!(key, %purpose, caller = %caller.describe(), "asking for confirmation");
        match confirmer.confirm(&request) {
            Ok(true) => {
                info!(key, "confirmed");
                Ok(())
            }
            Ok(false) => Err(WireError::new(
                ErrorCode::ConfirmDenied,
                format!("the signature with {key} was denied, or not confirmed in time"),
            )),
            Err(e) => Err(WireError::new(
                ErrorCode::ConfirmDenied,
                format!(
                    "the signature with {key} needs confirmation, which could not be asked: {e}"
                ),
            )),
        }
    }

    /// With `pin = "prompt"`: asks the requesting person for the PIN when the device
    /// needs a login, and logs in with it.
    pub(super) fn prompt_pin(
        &self,
        device: &Device,
        ui: &mut dyn Interaction,
    ) -> Result<(), WireError> {
        let Some(question) = device.lanes.run(|b| b.pin_needed())? else {
            return Ok(());
        };
        match ui.ask_pin(&question) {
            Some(pin) => {
                info!(device = %device.name, "PIN typed by the requesting person");
                device.lanes.run(|b| b.login_with(pin))?.map_err(wire)
            }
            None => Err(WireError::new(
                ErrorCode::PinRequired,
                format!(
                    "device {} asks for its PIN (pin = \"prompt\"), and the requesting client did not give one (run the waxseal command from a terminal)",
                    device.name
                ),
            )),
        }
    }

    /// Tells `ui` (and the log) when signing with `key` will wait for a touch.
    fn touch_notice(
        &self,
        device: &Device,
        key: &str,
        label: &str,
        ui: &mut dyn Interaction,
    ) -> Result<(), WireError> {
        if device.kind != DeviceKind::Yubikey {
            return Ok(());
        }
        if let Some(text) = device.lanes.run(|b| b.touch_notice(label))? {
            info!(key, "{text}");
            ui.notice(&text);
        }
        Ok(())
    }
}

/// Purposes `digest` and `blob`: the client's digest as it is.
fn prepare_digest(req: &Sign) -> Result<Prepared<'_>, WireError> {
    if req.purpose == Purpose::Blob && req.name.as_deref().is_none_or(str::is_empty) {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            "purpose `blob` needs `name`, the artifact's name",
        ));
    }
    let digest = hex::encode(&req.digest.0);
    Ok(Prepared {
        digest: Cow::Borrowed(&req.digest.0),
        hash: req.hash,
        padding: req.padding.unwrap_or(RsaPadding::Pkcs1),
        raw: false,
        what: match &req.name {
            Some(n) => format!("artifact {n}, digest {digest}"),
            None => format!("digest {digest}"),
        },
    })
}

/// Purpose `attest`: reads the in-toto statement (v1, every subject with a SHA-256),
/// records its predicate type and subjects, and builds the DSSE PAE the signature is
/// over, with the payload type fixed to in-toto's: the agent signs only what it has
/// read (docs/protocol.md, `sign`). Ed25519 keys sign the PAE itself; others its hash
/// (the request's, or the key's default).
fn prepare_attest<'a>(
    req: &Sign,
    device: &Device,
    label: &str,
    subject: &mut Map<String, Value>,
) -> Result<Prepared<'a>, WireError> {
    let Some(statement) = &req.statement else {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            "purpose attest needs `statement`, the in-toto statement",
        ));
    };
    let parsed = Statement::parse(&statement.0)
        .map_err(|e| WireError::new(ErrorCode::BadRequest, format!("attest: {e}")))?;
    subject.insert("predicate_type".into(), json!(parsed.predicate_type));
    subject.insert(
        "subjects".into(),
        Value::Array(
            parsed
                .subjects
                .iter()
                .map(|s| json!({"name": s.name, "sha256": s.sha256}))
                .collect(),
        ),
    );
    let pae = intoto::pae(intoto::PAYLOAD_TYPE, &statement.0);
    let alg = device
        .lanes
        .run(|b| b.public_key(label))?
        .map_err(wire)?
        .alg;
    let (digest, hash, raw) = if alg == KeyAlg::Ed25519 {
        if req.hash.is_some() {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                format!(
                    "{} is an Ed25519 key, which signs the PAE itself: send no `hash`",
                    req.key
                ),
            ));
        }
        (pae, None, true)
    } else {
        let h = req.hash.unwrap_or(alg.default_hash());
        subject.insert("hash".into(), json!(h));
        let digest = hash(h, &pae);
        subject.insert("digest".into(), json!(hex::encode(&digest)));
        (digest, Some(h), false)
    };
    let names: Vec<String> = parsed
        .subjects
        .iter()
        .map(|s| format!("{} sha256:{}", s.name, s.sha256))
        .collect();
    Ok(Prepared {
        digest: Cow::Owned(digest),
        hash,
        padding: req.padding.unwrap_or(RsaPadding::Pkcs1),
        raw,
        what: format!(
            "in-toto attestation {} about {}",
            parsed.predicate_type,
            names.join(", ")
        ),
    })
}

/// Purpose `digest` with a `message`: the whole message, signed as it is by an
/// Ed25519 key (PureEdDSA); other keys sign digests only (docs/protocol.md, `sign`).
fn prepare_message<'a>(
    req: &Sign,
    message: &'a Bytes,
    device: &Device,
    label: &str,
) -> Result<Prepared<'a>, WireError> {
    let alg = device
        .lanes
        .run(|b| b.public_key(label))?
        .map_err(wire)?
        .alg;
    if alg != KeyAlg::Ed25519 {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!(
                "`message` is only for Ed25519 keys, and {} is a {alg} key: send the message's digest in `digest`",
                req.key
            ),
        ));
    }
    Ok(Prepared {
        digest: Cow::Borrowed(&message.0),
        hash: None,
        padding: RsaPadding::Pkcs1,
        raw: true,
        what: format!(
            "message of {} bytes, SHA-256 {}",
            message.0.len(),
            hex::encode(Sha256::digest(&message.0))
        ),
    })
}

/// Purpose `ssh`: the data hashed as the key's SSH algorithm signs it (Ed25519 signs
/// the data itself; RSA as the client asked, never SHA-1).
fn prepare_ssh<'a>(req: &SshSign<'a>) -> Result<Prepared<'a>, WireError> {
    let (digest, hash, raw) = match req.alg {
        KeyAlg::P256 => (
            Cow::Owned(hash(HashAlg::Sha256, req.data)),
            HashAlg::Sha256,
            false,
        ),
        KeyAlg::P384 => (
            Cow::Owned(hash(HashAlg::Sha384, req.data)),
            HashAlg::Sha384,
            false,
        ),
        KeyAlg::Rsa(_) => match req.rsa_hash {
            Some(h) => (Cow::Owned(hash(h, req.data)), h, false),
            None => {
                return Err(WireError::new(
                    ErrorCode::Unsupported,
                    "ssh-rsa (SHA-1) signatures are refused; use rsa-sha2-256 or rsa-sha2-512",
                ))
            }
        },
        KeyAlg::Ed25519 => (Cow::Borrowed(req.data), HashAlg::Sha512, true),
    };
    let shown = if raw {
        format!("message SHA-256 {}", hex::encode(Sha256::digest(req.data)))
    } else {
        format!("digest {}", hex::encode(&digest))
    };
    Ok(Prepared {
        digest,
        hash: (!raw).then_some(hash),
        padding: RsaPadding::Pkcs1,
        raw,
        what: format!(
            "SSH signature{} ({shown})",
            if req.forwarded {
                " through a forwarded agent"
            } else {
                ""
            }
        ),
    })
}

/// `data` hashed with `alg`.
fn hash(alg: HashAlg, data: &[u8]) -> Vec<u8> {
    match alg {
        HashAlg::Sha256 => Sha256::digest(data).to_vec(),
        HashAlg::Sha384 => Sha384::digest(data).to_vec(),
        HashAlg::Sha512 => Sha512::digest(data).to_vec(),
    }
}

/// Purpose `x509-crl`: parses the TBSCertList, records what it revokes (issuer,
/// thisUpdate/nextUpdate, serials, CRL number), checks that its issuer is the subject
/// of the certificate the device holds for the key (when it holds one) and that the
/// key can make the signature it announces, and hashes it with that signature's hash.
fn prepare_crl<'a>(
    req: &'a Sign,
    device: &Device,
    label: &str,
    subject: &mut Map<String, Value>,
) -> Result<Prepared<'a>, WireError> {
    let key = &req.key;
    let Some(tbs) = req.tbs.as_ref() else {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            "purpose x509-crl needs `tbs`, the DER TBSCertList",
        ));
    };
    let summary = crate::x509::CrlSummary::parse(&tbs.0).map_err(|e| {
        warn!(key = %key, error = %e, "x509-crl refused: malformed TBSCertList");
        WireError::new(ErrorCode::BadRequest, format!("x509-crl: {e}"))
    })?;
    subject.insert(
        "crl".into(),
        json!({
            "issuer": summary.issuer,
            "this_update": summary.this_update,
            "next_update": summary.next_update,
            "revoked": summary.revoked,
            "crl_number": summary.crl_number,
        }),
    );
    let pk = device.lanes.run(|b| b.public_key(label))?.map_err(wire)?;
    crate::x509::family_fits(summary.family, pk.alg)
        .map_err(|e| WireError::new(ErrorCode::BadRequest, format!("x509-crl: {e}")))?;
    let cert = device.lanes.run(|b| b.certificate(label))?.map_err(wire)?;
    if let Some(cert) = cert {
        if let Ok((_, c)) = x509_parser::parse_x509_certificate(&cert.der) {
            if c.subject().as_raw() != summary.issuer_der.as_slice() {
                return Err(WireError::new(
                    ErrorCode::PolicyDenied,
                    format!(
                        "x509-crl: the CRL's issuer {} is not the subject {} of the certificate the device holds for {key}",
                        summary.issuer,
                        c.subject()
                    ),
                ));
            }
        }
    }
    let raw = summary.family == SigFamily::Ed25519;
    let digest = if raw {
        Cow::Borrowed(tbs.0.as_slice())
    } else {
        Cow::Owned(hash(summary.hash, &tbs.0))
    };
    info!(
        key = %key, issuer = %summary.issuer, this_update = %summary.this_update,
        revoked = %summary.revoked.join(","), "x509-crl judged: the CRL may be signed"
    );
    Ok(Prepared {
        digest,
        hash: Some(summary.hash),
        padding: RsaPadding::Pkcs1,
        raw,
        what: format!(
            "CRL of {} (thisUpdate {}, nextUpdate {}, CRL number {}) revoking {}",
            summary.issuer,
            summary.this_update,
            summary.next_update.as_deref().unwrap_or("none"),
            summary.crl_number.as_deref().unwrap_or("none"),
            if summary.revoked.is_empty() {
                "nothing".to_string()
            } else {
                summary.revoked.join(", ")
            }
        ),
    })
}
