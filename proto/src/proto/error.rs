//! The stable error codes of the wire protocol.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stable word a client can match on. New codes may be added; none is renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The request is not one the agent understands (malformed JSON, wrong type, unknown op).
    BadRequest,
    /// The frame announced more than 1 MiB.
    FrameTooLarge,
    /// No key of that name on any device.
    UnknownKey,
    /// The policy refuses this caller, key or purpose.
    PolicyDenied,
    /// The device needs a PIN and none is available.
    PinRequired,
    /// The device refused the PIN.
    PinIncorrect,
    /// The PIN is blocked (too many wrong tries).
    PinBlocked,
    /// The device is not connected or not found.
    DeviceAbsent,
    /// The device failed the operation.
    DeviceError,
    /// The device or agent cannot do this (algorithm, purpose, op).
    Unsupported,
    /// The agent is locked.
    Locked,
    /// A person refused the confirmation.
    ConfirmDenied,
    /// The key's rate limit is reached.
    RateLimited,
    /// `generate_key` named a key that already exists, or an object id (`raw_id`,
    /// `store_certificate`'s `object_id`) that an object on the device has already.
    KeyExists,
    /// A TPM key bound to PCRs: the PCRs' current values are not the ones the key is
    /// bound to, so the TPM refuses its policy. The message names the PCRs that differ.
    PcrMismatch,
    /// An `approve` was refused: not a signature over a pending request's text by one
    /// of the key's approvers that has not approved it yet (the message says which).
    ApprovalRefused,
    /// A request waiting for its quorum of approvals timed out (or its requester went
    /// away) before the quorum was reached: nothing was signed.
    ApprovalExpired,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::BadRequest,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownKey,
        ErrorCode::PolicyDenied,
        ErrorCode::PinRequired,
        ErrorCode::PinIncorrect,
        ErrorCode::PinBlocked,
        ErrorCode::DeviceAbsent,
        ErrorCode::DeviceError,
        ErrorCode::Unsupported,
        ErrorCode::Locked,
        ErrorCode::ConfirmDenied,
        ErrorCode::RateLimited,
        ErrorCode::KeyExists,
        ErrorCode::PcrMismatch,
        ErrorCode::ApprovalRefused,
        ErrorCode::ApprovalExpired,
    ];

    /// The word on the wire, e.g. `pin-incorrect`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::FrameTooLarge => "frame-too-large",
            ErrorCode::UnknownKey => "unknown-key",
            ErrorCode::PolicyDenied => "policy-denied",
            ErrorCode::PinRequired => "pin-required",
            ErrorCode::PinIncorrect => "pin-incorrect",
            ErrorCode::PinBlocked => "pin-blocked",
            ErrorCode::DeviceAbsent => "device-absent",
            ErrorCode::DeviceError => "device-error",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Locked => "locked",
            ErrorCode::ConfirmDenied => "confirm-denied",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::KeyExists => "key-exists",
            ErrorCode::PcrMismatch => "pcr-mismatch",
            ErrorCode::ApprovalRefused => "approval-refused",
            ErrorCode::ApprovalExpired => "approval-expired",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` member of a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable: what failed and what to do next. Never holds secrets.
    pub message: String,
}

impl WireError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_word_matches_as_str() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, code);
        }
    }
}
