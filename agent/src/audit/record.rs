//! What one line of the log says, typed: the event, the purpose, the outcome's error
//! code, and why an append failed. The words on disk are those the log has always
//! carried (docs/protocol.md, `audit_tail`), so old logs read and verify as before.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::fsguard::Unsafe;
use crate::policy::Caller;
use crate::proto::{self, ErrorCode};

/// What happened, the `event` of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// A signature is about to be made (written, and synced, before the device signs).
    Intent,
    /// The signature was made and handed out.
    Signed,
    /// The device failed to sign.
    Failed,
    /// The signature was made but not handed out: its intent did not reach the disk.
    Withheld,
    /// The request was refused before anything was signed.
    Refused,
    /// A client locked the agent (`waxseal lock`, D-Bus `Lock`, `ssh-add -x`).
    Lock,
    /// A client unlocked the agent or a device (`waxseal unlock`, D-Bus `Unlock`,
    /// `ssh-add -X`); a refused unlock carries a `code`.
    Unlock,
    /// A signature waits for approvals (docs/protocol.md, "Approvals"): its id, the
    /// hash of the text approvers sign, the quorum and the expiry.
    ApprovalRequested,
    /// An approver's signature over a waiting request was accepted.
    Approved,
    /// An approval was refused (a stranger, another namespace, a replay, a duplicate,
    /// too late); `code` and `reason` say why.
    ApprovalRefused,
    /// A key was imported into a device (`import_key`); a refused or failed import
    /// carries a `code`.
    Import,
}

impl Event {
    /// The word on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Intent => "intent",
            Event::Signed => "signed",
            Event::Failed => "failed",
            Event::Withheld => "withheld",
            Event::Refused => "refused",
            Event::Lock => "lock",
            Event::Unlock => "unlock",
            Event::ApprovalRequested => "approval-requested",
            Event::Approved => "approved",
            Event::ApprovalRefused => "approval-refused",
            Event::Import => "import",
        }
    }

    /// The event a word on disk names; `None` for a word this version does not write.
    pub fn from_word(word: &str) -> Option<Event> {
        [
            Event::Intent,
            Event::Signed,
            Event::Failed,
            Event::Withheld,
            Event::Refused,
            Event::Lock,
            Event::Unlock,
            Event::ApprovalRequested,
            Event::Approved,
            Event::ApprovalRefused,
            Event::Import,
        ]
        .into_iter()
        .find(|e| e.as_str() == word)
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a line is about, its `purpose`: a signing purpose of the protocol, or a
/// connection refused before any request was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A signature for this purpose of the protocol.
    Sign(proto::Purpose),
    /// A connection whose requests came from another process than the one that
    /// connected.
    Connection,
}

impl Purpose {
    /// The word on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Sign(p) => p.as_str(),
            Purpose::Connection => "connection",
        }
    }
}

impl From<proto::Purpose> for Purpose {
    fn from(p: proto::Purpose) -> Purpose {
        Purpose::Sign(p)
    }
}

impl Serialize for Purpose {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What one line records.
#[derive(Debug, Clone)]
pub struct Record {
    /// What happened.
    pub event: Event,
    /// Key NAME; empty for events of the whole agent.
    pub key: String,
    /// What the signature is for; `None` for lock and unlock.
    pub purpose: Option<Purpose>,
    /// Who asked.
    pub caller: Caller,
    /// What was (to be) signed: `digest`, `hash`, `name`, `certificate`, …
    pub subject: Map<String, Value>,
    /// For refusals and failures: the error code and message.
    pub outcome: Option<(ErrorCode, String)>,
    /// For outcomes: the `seq` of the intent line they close.
    pub intent: Option<u64>,
}

impl Record {
    /// The line's fields without `seq`, `time` and `prev` (which the log adds).
    pub(super) fn fields(&self) -> Map<String, Value> {
        let mut line = Map::new();
        line.insert("event".into(), json!(self.event));
        line.insert("key".into(), json!(self.key));
        if let Some(purpose) = self.purpose {
            line.insert("purpose".into(), json!(purpose));
        }
        for (k, v) in &self.subject {
            line.insert(k.clone(), v.clone());
        }
        line.insert(
            "caller".into(),
            json!({
                "uid": self.caller.uid,
                "pid": self.caller.pid,
                "exe": self.caller.exe.as_ref().map(|p| p.display().to_string()),
            }),
        );
        if let Some(intent) = self.intent {
            line.insert("intent".into(), json!(intent));
        }
        if let Some((code, message)) = &self.outcome {
            line.insert("code".into(), json!(code));
            line.insert("reason".into(), json!(message));
        }
        line
    }
}

/// Why a record could not be appended; nothing is signed that the log cannot hold.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// `seq` would overflow.
    #[error("the audit log's record numbers are exhausted; start a new log (move the audit directory aside)")]
    Exhausted,
    /// The record does not encode as JSON.
    #[error("cannot encode an audit record: {0}")]
    Encode(#[source] serde_json::Error),
    /// The write failed; part of the line may be in the file.
    #[error("cannot write the audit log {}: {source}{}", path.display(), cut.as_ref().map(|c| format!("; {c}")).unwrap_or_default())]
    Write {
        /// The current file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
        /// Why the partial line could not be cut off at once, if it could not.
        cut: Option<Box<AppendError>>,
    },
    /// A partial line from an earlier failed write is still at the end of the file.
    #[error("the audit log {} ends in a partial record that cannot be removed yet ({source}); nothing is signed until it is", path.display())]
    Torn {
        /// The current file.
        path: PathBuf,
        /// Why it could not be cut.
        source: io::Error,
    },
    /// The preallocated space could not be cut off before a rotation.
    #[error("cannot cut the audit log {} to its records before rotating it: {source}", path.display())]
    Trim {
        /// The current file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The sync before a rotation failed.
    #[error(transparent)]
    RotateSync(SyncError),
    /// The current file could not be renamed aside.
    #[error("cannot rotate the audit log {} to {to}: {source}", path.display())]
    Rotate {
        /// The current file.
        path: PathBuf,
        /// The name it was to get.
        to: String,
        /// The OS error.
        source: io::Error,
    },
    /// The new current file could not be created after a rotation.
    #[error("cannot start a new audit log: {0}")]
    NewFile(#[source] Unsafe),
}

/// Why a record is not known to be on disk; the signature it is the intent of is
/// withheld. Shared by every request the failed sync covered, hence the `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    /// `fdatasync` failed.
    #[error("cannot sync the audit log: {0}")]
    Sync(Arc<io::Error>),
    /// `fdatasync` before a rotation failed.
    #[error("cannot sync the audit log before rotating it: {0}")]
    BeforeRotation(Arc<io::Error>),
    /// A sync that failed covered this record: a later sync succeeding does not put it
    /// on disk (the kernel may have dropped its pages).
    #[error("{0} (that sync covered this record; it may not be on disk even though a later sync succeeded)")]
    Covered(Box<SyncError>),
}
