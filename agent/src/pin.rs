//! PIN sources: where the agent gets a device's PIN.
//!
//! `file:PATH` (one line; a trailing newline is dropped) and `env:VAR` for now. The PIN
//! lives in a [`SecretString`] (zeroized on drop, redacted in `Debug`); only the
//! source's description ever reaches a log or an error message.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Where a PIN comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// The first line of a file (mode 0600 recommended).
    File(PathBuf),
    /// An environment variable of the agent.
    Env(String),
}

/// A PIN source that could not give a PIN.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Reading the file failed.
    #[error("cannot read the PIN from file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The variable is unset or not UTF-8.
    #[error("environment variable {0} (the PIN source) is not set in the agent's environment")]
    Env(String),
    /// The source gave an empty PIN.
    #[error("the PIN source {0} gave an empty PIN")]
    Empty(String),
}

impl PinSource {
    /// Parses `file:PATH` or `env:VAR`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        if let Some(path) = spec.strip_prefix("file:") {
            if path.is_empty() {
                return Err("`file:` needs a path, e.g. file:/etc/waxseal/hsm.pin".into());
            }
            return Ok(PinSource::File(PathBuf::from(path)));
        }
        if let Some(var) = spec.strip_prefix("env:") {
            if var.is_empty() || var.contains('=') {
                return Err("`env:` needs a variable name, e.g. env:WAXSEAL_HSM_PIN".into());
            }
            return Ok(PinSource::Env(var.to_string()));
        }
        match spec {
            "pinentry" | "prompt" => Err(format!(
                "PIN source `{spec}` is not available in this version yet; use file:PATH or env:VAR"
            )),
            s if s.starts_with("credential:") => Err(
                "PIN source `credential:` is not available in this version yet; use file:PATH (systemd: file:${CREDENTIALS_DIRECTORY}/NAME)"
                    .into(),
            ),
            _ => Err(
                "unknown PIN source (expected file:PATH or env:VAR; the value is not shown)"
                    .to_string(),
            ),
        }
    }

    /// Reads the PIN.
    pub fn read(&self) -> Result<SecretString, PinError> {
        let text = match self {
            PinSource::File(path) => {
                let mut text = Zeroizing::new(String::new());
                std::fs::File::open(path)
                    .and_then(|mut f| f.read_to_string(&mut text))
                    .map_err(|source| PinError::File {
                        path: path.clone(),
                        source,
                    })?;
                let line_len = text.lines().next().map_or(0, str::len);
                text.truncate(line_len);
                text
            }
            PinSource::Env(var) => {
                Zeroizing::new(std::env::var(var).map_err(|_| PinError::Env(var.clone()))?)
            }
        };
        if text.is_empty() {
            return Err(PinError::Empty(self.to_string()));
        }
        Ok(SecretString::from(text.as_str()))
    }
}

impl fmt::Display for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::File(p) => write!(f, "file:{}", p.display()),
            PinSource::Env(v) => write!(f, "env:{v}"),
        }
    }
}

/// A one-way fingerprint of a PIN, kept to recognise a PIN the device already refused
/// (so the agent never spends a second try on it). Zeroized on drop.
pub fn fingerprint(pin: &SecretString) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(Sha256::digest(pin.expose_secret().as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sources() {
        assert_eq!(
            PinSource::parse("file:/x").unwrap(),
            PinSource::File("/x".into())
        );
        assert_eq!(
            PinSource::parse("env:P").unwrap(),
            PinSource::Env("P".into())
        );
        for bad in ["file:", "env:", "1234", "pinentry", "credential:x"] {
            let e = PinSource::parse(bad).unwrap_err();
            assert!(!e.contains("1234"), "the value must never be echoed: {e}");
        }
    }

    #[test]
    fn file_source_takes_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "123456\n").unwrap();
        let pin = PinSource::File(path.clone()).read().unwrap();
        assert_eq!(pin.expose_secret(), "123456");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            PinSource::File(path).read(),
            Err(PinError::Empty(_))
        ));
        let missing = PinSource::File(dir.path().join("none")).read().unwrap_err();
        assert!(missing.to_string().contains("cannot read the PIN"));
    }

    #[test]
    fn debug_never_shows_the_pin() {
        let pin = SecretString::from("987654");
        assert!(!format!("{pin:?}").contains("987654"));
    }
}
