//! Quorum approval (README → "Quorum approval", docs/protocol.md, "Approvals"): a key
//! whose `[[key]] approvals` names approvers signs only once `quorum` of them have
//! signed the request's text with their own SSH keys (SSHSIG, namespace
//! `waxseal-approval`).
//!
//! The request waits inside the gate, after the key's policy and the request's own
//! checks and before the rate limit, confirmation, the audit intent and the device: the
//! exact bytes the device will sign are in hand and stay there, so what the approvers
//! saw is what is signed. This module holds the checked policy and the registry of
//! waiting requests; [`crate::keystore`] waits on it and writes the audit records.
//!
//! Bounds: at most [`MAX_PENDING_PER_UID`] waiting requests per uid and
//! [`MAX_PENDING`] in all; each expires `timeout_secs` after it was asked, and then
//! nothing signs. The last [`MAX_CLOSED`] ids closed are remembered, so that a late
//! approval is told why it came too late.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::audit::time::rfc3339;
use crate::proto::{ApprovalInfo, ErrorCode, Purpose, WireError, APPROVAL_NAMESPACE};
use crate::sshsig::{SshPublicKey, SshSig};

/// The most approvers one key may name.
pub const MAX_APPROVERS: usize = 32;
/// The longest `timeout_secs`: a day.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;
/// `timeout_secs` when it is not given.
pub const DEFAULT_TIMEOUT_SECS: u64 = 900;
/// Waiting requests per uid.
pub const MAX_PENDING_PER_UID: usize = 4;
/// Waiting requests in all.
pub const MAX_PENDING: usize = 64;
/// Closed ids remembered for late approvals.
pub const MAX_CLOSED: usize = 256;
/// How often a waiting request checks that its requester is still there.
const POLL: Duration = Duration::from_millis(250);

/// A key's `approvals`, checked.
#[derive(Debug, Clone)]
pub struct ApprovalPolicy {
    /// Approvals needed, 1 to `approvers.len()`.
    pub quorum: u32,
    /// Distinct keys with distinct names.
    pub approvers: Vec<SshPublicKey>,
    /// How long a request waits.
    pub timeout: Duration,
}

impl PartialEq for ApprovalPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.quorum == other.quorum
            && self.timeout == other.timeout
            && self.approvers.len() == other.approvers.len()
            && self
                .approvers
                .iter()
                .zip(&other.approvers)
                .all(|(a, b)| a.blob == b.blob && a.comment == b.comment)
    }
}

impl Eq for ApprovalPolicy {}

impl ApprovalPolicy {
    /// Checks `approvals = { quorum, approvers, timeout_secs }`; an error names the
    /// field (`quorum`, `approvers[2]`, `timeout_secs`) and what is wrong.
    pub fn new(
        quorum: u32,
        approvers: &[String],
        timeout_secs: Option<u64>,
    ) -> Result<ApprovalPolicy, (String, String)> {
        if approvers.is_empty() {
            return Err((
                "approvers".into(),
                "must name at least one approver's OpenSSH public key line (`ssh-ed25519 AAAA… alice`)".into(),
            ));
        }
        if approvers.len() > MAX_APPROVERS {
            return Err((
                "approvers".into(),
                format!(
                    "names {} approvers; at most {MAX_APPROVERS} are accepted",
                    approvers.len()
                ),
            ));
        }
        let mut keys: Vec<SshPublicKey> = Vec::with_capacity(approvers.len());
        for (i, line) in approvers.iter().enumerate() {
            let field = format!("approvers[{i}]");
            let key = SshPublicKey::parse_line(line).map_err(|m| (field.clone(), m))?;
            if let Some(j) = keys.iter().position(|k| k.blob == key.blob) {
                return Err((
                    field,
                    format!(
                        "is the same key as approvers[{j}]; each approver needs a key of their own"
                    ),
                ));
            }
            if let Some(j) = keys.iter().position(|k| k.name() == key.name()) {
                return Err((
                    field,
                    format!(
                        "has the same name `{}` as approvers[{j}]; give each key line its own comment",
                        key.name()
                    ),
                ));
            }
            keys.push(key);
        }
        if quorum == 0 || quorum as usize > keys.len() {
            return Err((
                "quorum".into(),
                format!(
                    "is {quorum}; it must be between 1 and the number of approvers ({})",
                    keys.len()
                ),
            ));
        }
        let secs = timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
            return Err((
                "timeout_secs".into(),
                format!("is {secs}; it must be between 1 and {MAX_TIMEOUT_SECS} seconds"),
            ));
        }
        Ok(ApprovalPolicy {
            quorum,
            approvers: keys,
            timeout: Duration::from_secs(secs),
        })
    }
}

/// What the gate knows of a request that needs approvals.
#[derive(Debug)]
pub struct Ask<'a> {
    /// Key NAME.
    pub key: &'a str,
    /// Purpose.
    pub purpose: Purpose,
    /// The requester's uid.
    pub uid: u32,
    /// The requester as the gate knows it (uid, pid, program).
    pub caller: String,
    /// What a person is shown ([`crate::keystore::Prepared`]'s `what`).
    pub what: &'a str,
    /// What the device will sign, described with its digest.
    pub signs: String,
}

/// A request waiting for approvals.
#[derive(Debug)]
struct Entry {
    info: ApprovalInfo,
    uid: u32,
    deadline: Instant,
    approvers: Vec<SshPublicKey>,
    /// Blobs of those who approved, in `info.approved_by`'s order.
    approved: Vec<Vec<u8>>,
}

/// Why an id is no longer pending.
#[derive(Debug, Clone)]
enum Closed {
    Expired(String),
    Done,
    Gone(String),
}

#[derive(Debug, Default)]
struct State {
    pending: Vec<Entry>,
    closed: VecDeque<(String, Closed)>,
}

impl State {
    fn close(&mut self, at: usize, why: Closed) -> Entry {
        let e = self.pending.remove(at);
        if self.closed.len() >= MAX_CLOSED {
            self.closed.pop_front();
        }
        self.closed.push_back((e.info.approval.clone(), why));
        e
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.pending.iter().position(|e| e.info.approval == id)
    }
}

/// How a wait ended.
#[derive(Debug)]
pub enum Waited {
    /// The quorum was reached: the request as closed, with who approved.
    Approved(ApprovalInfo),
    /// Nothing signs: why (code `approval-expired`).
    Refused(WireError),
}

/// An accepted approval, for the audit record and the answer.
#[derive(Debug)]
pub struct Accepted {
    /// The key the request is for.
    pub key: String,
    /// Its purpose.
    pub purpose: Purpose,
    /// The approver's name.
    pub approver: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Everyone who approved so far.
    pub approved_by: Vec<String>,
    /// Approvals needed.
    pub quorum: u32,
}

/// A refused approval, for the audit record.
#[derive(Debug)]
pub struct Refusal {
    /// The key of the request, when the id named one.
    pub key: Option<(String, Purpose)>,
    /// The signer's fingerprint, when the signature could be read.
    pub fingerprint: Option<String>,
    /// Why.
    pub error: WireError,
}

/// The registry of requests waiting for approvals.
#[derive(Debug, Default)]
pub struct Approvals {
    state: Mutex<State>,
    changed: Condvar,
}

fn refused(message: String) -> WireError {
    WireError::new(ErrorCode::ApprovalRefused, message)
}

/// A text value on one line: control characters (a newline in a program's path, a
/// certificate's subject) are written escaped, so no value can forge a line.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn random_hex(n: usize) -> Result<String, WireError> {
    let mut bytes = vec![0u8; n];
    getrandom::getrandom(&mut bytes).map_err(|e| {
        WireError::new(
            ErrorCode::DeviceError,
            format!("no randomness for an approval id: {e}"),
        )
    })?;
    Ok(hex::encode(bytes))
}

impl Approvals {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a request: its id (16 hex digits, within the protocol's
    /// [`crate::proto::MAX_APPROVAL_ID`]), nonce and text. Refused (`rate-limited`) past the
    /// bounds on waiting requests.
    pub fn open(&self, ask: &Ask<'_>, policy: &ApprovalPolicy) -> Result<ApprovalInfo, WireError> {
        let id = random_hex(8)?;
        let nonce = random_hex(32)?;
        let now = SystemTime::now();
        let requested = rfc3339(now);
        let expires = rfc3339(now + policy.timeout);
        let text = format!(
            "waxseal approval request\n\
             approval: {id}\n\
             key: {key}\n\
             purpose: {purpose}\n\
             what: {what}\n\
             signs: {signs}\n\
             caller: {caller}\n\
             requested: {requested}\n\
             expires: {expires}\n\
             quorum: {quorum} of {n}\n\
             nonce: {nonce}\n",
            key = one_line(ask.key),
            purpose = ask.purpose,
            what = one_line(ask.what),
            signs = one_line(&ask.signs),
            caller = one_line(&ask.caller),
            quorum = policy.quorum,
            n = policy.approvers.len(),
        );
        let info = ApprovalInfo {
            approval: id,
            key: ask.key.to_string(),
            purpose: ask.purpose,
            caller: ask.caller.clone(),
            requested,
            expires,
            quorum: policy.quorum,
            approvers: policy.approvers.len() as u32,
            approved_by: Vec::new(),
            text,
        };
        let mut state = self.lock();
        let now = Instant::now();
        // Requests whose waiter has not woken since they expired do not count.
        let live = |e: &&Entry| e.deadline > now;
        if state.pending.iter().filter(live).count() >= MAX_PENDING {
            return Err(WireError::new(
                ErrorCode::RateLimited,
                format!("{MAX_PENDING} requests are waiting for approvals already; try again once some are approved or expired"),
            ));
        }
        let mine = state
            .pending
            .iter()
            .filter(live)
            .filter(|e| e.uid == ask.uid)
            .count();
        if mine >= MAX_PENDING_PER_UID {
            return Err(WireError::new(
                ErrorCode::RateLimited,
                format!("uid {} has {mine} requests waiting for approvals already (at most {MAX_PENDING_PER_UID})", ask.uid),
            ));
        }
        state.pending.push(Entry {
            info: info.clone(),
            uid: ask.uid,
            deadline: now + policy.timeout,
            approvers: policy.approvers.clone(),
            approved: Vec::new(),
        });
        Ok(info)
    }

    /// Closes request `id` at once (its record could not be written).
    pub fn cancel(&self, id: &str, why: &str) {
        let mut state = self.lock();
        if let Some(at) = state.find(id) {
            state.close(at, Closed::Gone(why.to_string()));
        }
    }

    /// Waits until request `id` has its quorum, expires, or its requester went away:
    /// `requester(Some(info))` hears of each new approval, and `requester(None)` is
    /// asked every [`POLL`] whether the requester is gone. The request is closed when
    /// this returns.
    pub fn wait(
        &self,
        id: &str,
        mut requester: impl FnMut(Option<&ApprovalInfo>) -> bool,
    ) -> Waited {
        let mut seen = 0usize;
        loop {
            let news = {
                let mut state = self.lock();
                let Some(at) = state.find(id) else {
                    return Waited::Refused(WireError::new(
                        ErrorCode::ApprovalExpired,
                        format!("approval request {id} is gone; nothing was signed"),
                    ));
                };
                let e = &state.pending[at];
                if e.approved.len() >= e.info.quorum as usize {
                    let e = state.close(at, Closed::Done);
                    self.changed.notify_all();
                    return Waited::Approved(e.info);
                }
                let now = Instant::now();
                if now >= e.deadline {
                    let expires = e.info.expires.clone();
                    let e = state.close(at, Closed::Expired(expires));
                    self.changed.notify_all();
                    return Waited::Refused(WireError::new(
                        ErrorCode::ApprovalExpired,
                        format!(
                            "approval request {id} expired at {} with {} of {} approvals ({}); nothing was signed",
                            e.info.expires,
                            e.approved.len(),
                            e.info.quorum,
                            if e.info.approved_by.is_empty() { "none".to_string() } else { e.info.approved_by.join(", ") }
                        ),
                    ));
                }
                let news = (e.approved.len() != seen).then(|| e.info.clone());
                if news.is_none() {
                    let wait = e.deadline.saturating_duration_since(now).min(POLL);
                    let (s, _) = self
                        .changed
                        .wait_timeout(state, wait)
                        .unwrap_or_else(|p| p.into_inner());
                    drop(s);
                }
                news
            };
            if let Some(info) = news {
                seen = info.approved_by.len();
                requester(Some(&info));
                continue;
            }
            if requester(None) {
                let mut state = self.lock();
                if let Some(at) = state.find(id) {
                    state.close(
                        at,
                        Closed::Gone("its requester went away before the quorum".into()),
                    );
                }
                return Waited::Refused(WireError::new(
                    ErrorCode::ApprovalExpired,
                    format!("the requester of approval request {id} went away; nothing was signed"),
                ));
            }
        }
    }

    /// The waiting requests, oldest first (expired ones left out).
    pub fn list(&self) -> Vec<ApprovalInfo> {
        let now = Instant::now();
        self.lock()
            .pending
            .iter()
            .filter(|e| e.deadline > now)
            .map(|e| e.info.clone())
            .collect()
    }

    /// One waiting request.
    pub fn show(&self, id: &str) -> Result<ApprovalInfo, WireError> {
        let state = self.lock();
        match state.find(id) {
            Some(at) if state.pending[at].deadline > Instant::now() => {
                Ok(state.pending[at].info.clone())
            }
            Some(at) => Err(expired(id, &state.pending[at].info.expires)),
            None => Err(not_pending(&state, id)),
        }
    }

    /// Checks an approver's armored SSH signature over request `id`'s text and counts
    /// it. Refused, naming why: an id not pending (unknown, expired, done), a signature
    /// that does not read, another namespace, a key that is not one of the request's
    /// approvers (a stranger), a signature over another text (another request's: a
    /// replay), an approver who approved already.
    ///
    /// `record` writes the approval's audit record before it counts; when it fails
    /// the approval does not count.
    pub fn approve(
        &self,
        id: &str,
        armored: &str,
        record: impl FnOnce(&Accepted) -> Result<(), WireError>,
    ) -> Result<Accepted, Refusal> {
        let mut state = self.lock();
        let key = state.find(id).map(|at| {
            let e = &state.pending[at];
            (e.info.key.clone(), e.info.purpose)
        });
        let refuse = |error: WireError, fingerprint: Option<String>| Refusal {
            key: key.clone(),
            fingerprint,
            error,
        };
        let Some(at) = state.find(id) else {
            return Err(refuse(not_pending(&state, id), None));
        };
        if state.pending[at].deadline <= Instant::now() {
            let e = expired(id, &state.pending[at].info.expires);
            return Err(refuse(e, None));
        }
        let sig = SshSig::parse_armored(armored).map_err(|m| {
            refuse(
                refused(format!("the approval is not a readable SSH signature: {m}")),
                None,
            )
        })?;
        let fp = format!(
            "SHA256:{}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                Sha256::digest(&sig.public_key)
            )
        );
        if sig.namespace != APPROVAL_NAMESPACE {
            return Err(refuse(
                refused(format!(
                    "wrong namespace: the signature by {fp} was made for namespace `{}`, not `{APPROVAL_NAMESPACE}` (sign with ssh-keygen -Y sign -n {APPROVAL_NAMESPACE})",
                    one_line(&sig.namespace.chars().take(64).collect::<String>())
                )),
                Some(fp),
            ));
        }
        let entry = &state.pending[at];
        let Some(approver) = entry.approvers.iter().find(|k| k.blob == sig.public_key) else {
            return Err(refuse(
                refused(format!(
                    "stranger: the signing key {fp} is not one of the approvers of key {} (its [[key]] approvals.approvers)",
                    entry.info.key
                )),
                Some(fp),
            ));
        };
        if let Err(why) = sig.verify(approver, entry.info.text.as_bytes()) {
            // Over another waiting request's text: say so, it is a replay.
            let other = state
                .pending
                .iter()
                .find(|o| {
                    o.info.approval != id && sig.verify(approver, o.info.text.as_bytes()).is_ok()
                })
                .map(|o| o.info.approval.clone());
            let message = match other {
                Some(other) => format!(
                    "replay: the signature by {} ({fp}) approves request {other}, not {id}; sign the text `waxseal approvals show {id}` prints",
                    approver.name()
                ),
                None => format!(
                    "the signature by {} ({fp}) is not over request {id}'s text ({why}); sign exactly what `waxseal approvals show {id}` prints",
                    approver.name()
                ),
            };
            return Err(refuse(refused(message), Some(fp)));
        }
        let name = approver.name();
        let blob = approver.blob.clone();
        let entry = &mut state.pending[at];
        if entry.approved.contains(&blob) {
            return Err(refuse(
                refused(format!(
                    "duplicate: {name} ({fp}) has approved request {id} already; {} of {} approvals",
                    entry.approved.len(),
                    entry.info.quorum
                )),
                Some(fp),
            ));
        }
        let mut approved_by = entry.info.approved_by.clone();
        approved_by.push(name.clone());
        let accepted = Accepted {
            key: entry.info.key.clone(),
            purpose: entry.info.purpose,
            approver: name,
            fingerprint: fp,
            approved_by,
            quorum: entry.info.quorum,
        };
        if let Err(error) = record(&accepted) {
            return Err(Refusal {
                key,
                fingerprint: Some(accepted.fingerprint),
                error,
            });
        }
        entry.approved.push(blob);
        entry.info.approved_by.push(accepted.approver.clone());
        self.changed.notify_all();
        Ok(accepted)
    }
}

fn expired(id: &str, at: &str) -> WireError {
    refused(format!(
        "too late: approval request {id} expired at {at}; nothing was signed and nothing will be"
    ))
}

fn not_pending(state: &State, id: &str) -> WireError {
    match state.closed.iter().rev().find(|(c, _)| c == id) {
        Some((_, Closed::Expired(at))) => expired(id, at),
        Some((_, Closed::Done)) => refused(format!(
            "approval request {id} has its quorum already and was signed"
        )),
        Some((_, Closed::Gone(why))) => refused(format!(
            "approval request {id} is closed: {why}; nothing was signed"
        )),
        None => refused(format!(
            "no approval request {id} is waiting (`waxseal approvals list` shows those that are)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_names_what_is_wrong() {
        let e = ApprovalPolicy::new(1, &[], None).unwrap_err();
        assert_eq!(e.0, "approvers");
        let e = ApprovalPolicy::new(1, &["ssh-dss AAAA bob".into()], None).unwrap_err();
        assert_eq!(e.0, "approvers[0]");
        assert!(e.1.contains("unknown key type"), "{}", e.1);
    }

    #[test]
    fn one_line_escapes_newlines() {
        assert_eq!(one_line("a\nb"), "a\\u{a}b");
    }
}
