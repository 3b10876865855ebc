//! Quorum approval in the gate and the approvers' ops (docs/protocol.md,
//! "Approvals"; the registry and its checks are [`crate::approvals`]).

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::gate::Prepared;
use super::{wire, Device, Interaction, KeyStore};
use crate::approvals::{self, Accepted, ApprovalPolicy, Waited};
use crate::audit::{self, Record};
use crate::policy::Caller;
use crate::proto::{
    ApprovalInfo, ApprovalsOk, Approve, ApproveOk, ErrorCode, Purpose, WireError,
    APPROVAL_NAMESPACE,
};

/// What the requester is told first: the `approval-pending` notice.
fn pending_notice(info: &ApprovalInfo) -> String {
    format!(
        "approval-pending: the signature with {key} waits for {q} of {n} approvals until {exp}; request {id}. \
         Each approver runs: waxseal approvals show {id} > {id}.txt && ssh-keygen -Y sign -f KEY -n {ns} {id}.txt && waxseal approve {id} --signature {id}.txt.sig",
        key = info.key,
        q = info.quorum,
        n = info.approvers,
        exp = info.expires,
        id = info.approval,
        ns = APPROVAL_NAMESPACE,
    )
}

/// What the requester is told at each approval.
fn progress_notice(info: &ApprovalInfo) -> String {
    format!(
        "approval {}: approved by {} ({} of {})",
        info.approval,
        info.approved_by.join(", "),
        info.approved_by.len(),
        info.quorum
    )
}

/// A request the gate has judged, for a key with `approvals`.
pub(super) struct Waiting<'a> {
    pub(super) key: &'a str,
    pub(super) purpose: Purpose,
    pub(super) caller: &'a Caller,
    pub(super) policy: &'a ApprovalPolicy,
    pub(super) prepared: &'a Prepared<'a>,
    pub(super) device: &'a Device,
    pub(super) label: &'a str,
}

impl KeyStore {
    /// For a key with `approvals`: opens the request, tells the requester, and waits
    /// for the quorum. Returns the request's id and who approved; an error when it
    /// expired, its requester went away, or its record could not be written.
    pub(super) fn await_approvals(
        &self,
        w: Waiting<'_>,
        ui: &mut dyn Interaction,
    ) -> Result<(String, Vec<String>), WireError> {
        let Waiting {
            key,
            purpose,
            caller,
            policy,
            prepared,
            device,
            label,
        } = w;
        let signs = if prepared.raw {
            format!(
                "the message itself, {} bytes, SHA-256 {}",
                prepared.digest.len(),
                hex::encode(Sha256::digest(&prepared.digest))
            )
        } else {
            let hash = match prepared.hash {
                Some(h) => h,
                None => device
                    .lanes
                    .run(|b| b.public_key(label))?
                    .map_err(wire)?
                    .alg
                    .default_hash(),
            };
            format!("{hash} digest {}", hex::encode(&prepared.digest))
        };
        let ask = approvals::Ask {
            key,
            purpose,
            uid: caller.uid,
            caller: caller.describe(),
            what: &prepared.what,
            signs,
        };
        let info = self.approvals.open(&ask, policy)?;
        let id = info.approval.clone();
        let mut subject = Map::new();
        subject.insert("approval".into(), json!(id));
        subject.insert(
            "text_sha256".into(),
            json!(hex::encode(Sha256::digest(info.text.as_bytes()))),
        );
        subject.insert("text".into(), json!(info.text));
        subject.insert("quorum".into(), json!(info.quorum));
        subject.insert("approvers".into(), json!(info.approvers));
        subject.insert("expires".into(), json!(info.expires));
        if let Err(e) = self.audit_approval(
            audit::Event::ApprovalRequested,
            Some((key, purpose)),
            caller,
            subject,
            None,
        ) {
            self.approvals
                .cancel(&id, "its audit record could not be written");
            return Err(e);
        }
        info!(key, %purpose, approval = %id, caller = %caller.describe(), quorum = info.quorum, expires = %info.expires, "signature waits for approvals");
        ui.approval(&pending_notice(&info), &info);
        match self.approvals.wait(&id, |news| match news {
            Some(info) => {
                ui.approval(&progress_notice(info), info);
                false
            }
            None => ui.gone(),
        }) {
            Waited::Approved(info) => {
                info!(key, approval = %id, approved_by = %info.approved_by.join(", "), "quorum reached");
                ui.approval(
                    &format!("{}; quorum reached, signing", progress_notice(&info)),
                    &info,
                );
                Ok((id, info.approved_by))
            }
            Waited::Refused(e) => Err(e),
        }
    }

    /// `approve`: checks and counts one approver's signature; every acceptance and
    /// every refusal is an audit record.
    pub fn approve(&self, a: &Approve, caller: &Caller) -> Result<ApproveOk, WireError> {
        let record = |acc: &Accepted| {
            let mut subject = Map::new();
            subject.insert("approval".into(), json!(a.approval));
            subject.insert("approver".into(), json!(acc.approver));
            subject.insert("fingerprint".into(), json!(acc.fingerprint));
            // The approval itself, so that it can be checked again later, offline,
            // against the request's text in its `approval-requested` record.
            subject.insert("signature".into(), json!(a.signature.trim()));
            subject.insert("approvals".into(), json!(acc.approved_by.len()));
            subject.insert("quorum".into(), json!(acc.quorum));
            self.audit_approval(
                audit::Event::Approved,
                Some((&acc.key, acc.purpose)),
                caller,
                subject,
                None,
            )
        };
        match self.approvals.approve(&a.approval, &a.signature, record) {
            Ok(acc) => {
                info!(approval = %a.approval, key = %acc.key, approver = %acc.approver, fingerprint = %acc.fingerprint, approvals = acc.approved_by.len(), quorum = acc.quorum, "approval accepted");
                Ok(ApproveOk {
                    approval: a.approval.clone(),
                    complete: acc.approved_by.len() >= acc.quorum as usize,
                    approver: acc.approver,
                    approved_by: acc.approved_by,
                    quorum: acc.quorum,
                })
            }
            Err(r) => {
                info!(approval = %a.approval, reason = %r.error.message, "approval refused");
                let mut subject = Map::new();
                subject.insert("approval".into(), json!(a.approval));
                if let Some(fp) = &r.fingerprint {
                    subject.insert("fingerprint".into(), json!(fp));
                }
                let key = r.key.as_ref().map(|(k, p)| (k.as_str(), *p));
                if r.error.code == ErrorCode::ApprovalRefused {
                    let _ = self.audit_approval(
                        audit::Event::ApprovalRefused,
                        key,
                        caller,
                        subject,
                        Some(&r.error),
                    );
                }
                Err(r.error)
            }
        }
    }

    /// `approvals`.
    pub fn approvals_list(&self) -> ApprovalsOk {
        ApprovalsOk {
            pending: self.approvals.list(),
        }
    }

    /// `approval_show`.
    pub fn approval_show(&self, id: &str) -> Result<ApprovalInfo, WireError> {
        self.approvals.show(id)
    }

    /// Appends an approval record; an error when the log cannot hold it.
    fn audit_approval(
        &self,
        event: audit::Event,
        key: Option<(&str, Purpose)>,
        caller: &Caller,
        subject: Map<String, Value>,
        outcome: Option<&WireError>,
    ) -> Result<(), WireError> {
        let Some(audit) = &self.audit else {
            return Ok(());
        };
        let record = Record {
            event,
            key: key.map_or(String::new(), |(k, _)| k.to_string()),
            purpose: key.map(|(_, p)| p.into()),
            caller: caller.clone(),
            subject,
            outcome: outcome.map(|e| (e.code, e.message.clone())),
            intent: None,
        };
        audit.append(&record).map(|_| ()).map_err(|e| {
            warn!(error = %e, "approval record not written");
            WireError::new(
                ErrorCode::DeviceError,
                format!("{e}; no approval counts that the audit log cannot hold"),
            )
        })
    }
}
