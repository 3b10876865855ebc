//! Quorum approval (docs/protocol.md, "Approvals"): the ops an approver uses, and
//! what the agent tells a requester whose signature waits for approvals.

use serde::{Deserialize, Serialize};

use super::Purpose;

/// The longest approval id a request may carry, in bytes.
pub const MAX_APPROVAL_ID: usize = 64;
/// The longest armored SSH signature (`approve`'s `signature`) a request may carry, in
/// bytes: an RSA-16384 SSHSIG is under 6 KiB armored.
pub const MAX_APPROVAL_SIGNATURE: usize = 16 * 1024;
/// The namespace approvers sign with (`ssh-keygen -Y sign -n waxseal-approval`).
pub const APPROVAL_NAMESPACE: &str = "waxseal-approval";

/// `approve`: one approver's SSH signature over a pending request's text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approve {
    /// The approval id (`approval-pending`'s `approval`). Named so because a
    /// request's `id` is its request id.
    pub approval: String,
    /// The armored SSHSIG (`-----BEGIN SSH SIGNATURE-----`…) made by `ssh-keygen -Y
    /// sign -n waxseal-approval` over the text `approval_show` gives.
    pub signature: String,
}

/// `approval_show`: one pending request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRef {
    /// The approval id.
    pub approval: String,
}

/// A request waiting for approvals: what `approvals`, `approval_show` and the
/// requester's `approval-pending` notice carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalInfo {
    /// The approval id.
    pub approval: String,
    /// Key NAME.
    pub key: String,
    /// What the signature is for.
    pub purpose: Purpose,
    /// Who asked (uid, pid, program), as the agent knows it.
    pub caller: String,
    /// When it was asked (RFC 3339, UTC).
    pub requested: String,
    /// When it expires unless the quorum is reached (RFC 3339, UTC).
    pub expires: String,
    /// Approvals needed.
    pub quorum: u32,
    /// Approvers configured for the key.
    pub approvers: u32,
    /// The approvers who approved so far (their names, from the key lines' comments,
    /// else their fingerprints).
    pub approved_by: Vec<String>,
    /// The exact text approvers sign, byte for byte.
    pub text: String,
}

/// `approvals` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalsOk {
    /// The pending requests, oldest first.
    pub pending: Vec<ApprovalInfo>,
}

/// `approve` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApproveOk {
    /// The approval id.
    pub approval: String,
    /// Who this signature was from (name, else fingerprint).
    pub approver: String,
    /// The approvers so far, this one included.
    pub approved_by: Vec<String>,
    /// Approvals needed.
    pub quorum: u32,
    /// Whether the quorum is reached: the requester's signature is made now.
    pub complete: bool,
}

impl Approve {
    /// Checks the lengths: `approval` 1 to [`MAX_APPROVAL_ID`] bytes, `signature` 1 to
    /// [`MAX_APPROVAL_SIGNATURE`].
    pub(super) fn check(&self) -> Result<(), String> {
        check_id(&self.approval)?;
        match self.signature.len() {
            0 => Err("`signature` is empty; give the armored SSH signature".into()),
            n if n > MAX_APPROVAL_SIGNATURE => Err(format!(
                "`signature` is {n} bytes long; at most {MAX_APPROVAL_SIGNATURE} are accepted"
            )),
            _ => Ok(()),
        }
    }
}

impl ApprovalRef {
    pub(super) fn check(&self) -> Result<(), String> {
        check_id(&self.approval)
    }
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_APPROVAL_ID {
        return Err(format!(
            "`approval` must be 1 to {MAX_APPROVAL_ID} bytes (the id `waxseal approvals list` shows)"
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("`approval` holds a character other than letters, digits and `-`".into());
    }
    Ok(())
}
