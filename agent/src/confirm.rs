//! Asking a person to confirm a signature with a program of their choosing
//! (`[agent] confirm_program`), the way OpenSSH's `SSH_ASKPASS` confirms keys added
//! with `ssh-add -c`.
//!
//! The program gets the question as its one argument (key, purpose, caller and what
//! is signed, on separate lines) and the same parts in `WAXSEAL_CONFIRM_KEY`,
//! `WAXSEAL_CONFIRM_PURPOSE`, `WAXSEAL_CONFIRM_CALLER` and `WAXSEAL_CONFIRM_WHAT`,
//! plus `SSH_ASKPASS_PROMPT=confirm` for askpass programs. Exit status 0 allows; any
//! other status, a crash, or no answer within the timeout denies.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::keystore::{ConfirmRequest, Confirmer};

/// Why a person could not be asked; the signature is then refused (`confirm-denied`).
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// `confirm_program` did not start.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Waiting for `confirm_program` failed.
    #[error("waiting for {}: {source}", program.display())]
    Wait {
        /// The program.
        program: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The desktop notification service could not be reached or called.
    #[error("desktop notifications (org.freedesktop.Notifications): {0}")]
    Notifications(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The notification service cannot show Allow/Deny buttons.
    #[error(
        "the desktop notification service offers no Allow/Deny buttons (no `actions` capability)"
    )]
    NoActions,
    /// The thread that asks did not answer (it stopped).
    #[error("the D-Bus thread did not answer")]
    NoAnswer,
}

/// A confirmer that runs a program.
#[derive(Debug, Clone)]
pub struct ProgramConfirmer {
    /// The program.
    pub program: PathBuf,
    /// How long to wait for it.
    pub timeout: Duration,
}

impl Confirmer for ProgramConfirmer {
    fn confirm(&self, request: &ConfirmRequest) -> Result<bool, ConfirmError> {
        let mut child = Command::new(&self.program)
            .arg(request.text())
            .env("WAXSEAL_CONFIRM_KEY", &request.key)
            .env("WAXSEAL_CONFIRM_PURPOSE", request.purpose.as_str())
            .env("WAXSEAL_CONFIRM_CALLER", request.caller.describe())
            .env("WAXSEAL_CONFIRM_WHAT", &request.what)
            .env("SSH_ASKPASS_PROMPT", "confirm")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| ConfirmError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status.success()),
                Ok(None) if Instant::now() >= deadline => {
                    warn!(program = %self.program.display(), "no answer in time: denied");
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(false);
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(source) => {
                    return Err(ConfirmError::Wait {
                        program: self.program.clone(),
                        source,
                    })
                }
            }
        }
    }
}
