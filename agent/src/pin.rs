//! PIN sources: where the agent gets a device's PIN.
//!
//! - `file:PATH`: the first line of a file (a trailing newline is dropped);
//! - `env:VAR`: a variable of the agent's environment;
//! - `credential:NAME`: `$CREDENTIALS_DIRECTORY/NAME`, a systemd credential
//!   (`LoadCredential=`/`LoadCredentialEncrypted=` in the unit);
//! - `pinentry` or `pinentry:PROGRAM`: asks the person through a pinentry program,
//!   speaking its Assuan protocol (`SETDESC`, `SETPROMPT`, `GETPIN`). The tty of a
//!   terminal pinentry comes from `WAXSEAL_PINENTRY_TTY` (like gpg-agent's `GPG_TTY`);
//!   graphical ones use the agent's `DISPLAY`/`WAYLAND_DISPLAY`;
//! - `prompt`: asks the person at the terminal of the `waxseal` command that made the
//!   request, over `agent.sock` (PKCS#11 devices; see [`PinSource::is_interactive`]).
//!
//! The PIN lives in a [`SecretString`] (zeroized on drop, redacted in `Debug`); only the
//! source's description ever reaches a log or an error message.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

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
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
    /// A pinentry program (`pinentry` from `PATH` when `None`).
    Pinentry(Option<PathBuf>),
    /// The requesting client's terminal.
    Prompt,
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
    /// `credential:` without `$CREDENTIALS_DIRECTORY`.
    #[error("PIN source credential:{0} needs $CREDENTIALS_DIRECTORY (set by systemd for units with LoadCredential=)")]
    NoCredentials(String),
    /// The pinentry program failed or the person cancelled.
    #[error("pinentry: {0}")]
    Pinentry(String),
    /// `prompt` is answered by the client, not read here.
    #[error("the PIN source `prompt` asks the requesting `waxseal` command; this request came from a client that cannot be asked")]
    Interactive,
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
        if let Some(name) = spec.strip_prefix("credential:") {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(
                    "`credential:` needs a credential name, e.g. credential:hsm-pin".into(),
                );
            }
            return Ok(PinSource::Credential(name.to_string()));
        }
        if let Some(program) = spec.strip_prefix("pinentry:") {
            let program = PathBuf::from(program);
            if !program.is_absolute() {
                return Err("`pinentry:` needs the program's absolute path, e.g. pinentry:/usr/bin/pinentry-tty".into());
            }
            return Ok(PinSource::Pinentry(Some(program)));
        }
        match spec {
            "pinentry" => Ok(PinSource::Pinentry(None)),
            "prompt" => Ok(PinSource::Prompt),
            _ => Err(
                "unknown PIN source (expected file:PATH, env:VAR, credential:NAME, pinentry[:PROGRAM] or prompt; the value is not shown)"
                    .to_string(),
            ),
        }
    }

    /// Whether a person answers this source (no cached value to fall back on).
    pub fn is_interactive(&self) -> bool {
        matches!(self, PinSource::Pinentry(_) | PinSource::Prompt)
    }

    /// Reads the PIN.
    pub fn read(&self) -> Result<SecretString, PinError> {
        self.read_for("waxseal-agent needs a PIN")
    }

    /// Reads the PIN; `what` tells a person which PIN is asked for (pinentry).
    pub fn read_for(&self, what: &str) -> Result<SecretString, PinError> {
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
            PinSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| PinError::NoCredentials(name.clone()))?;
                let path = PathBuf::from(dir).join(name);
                let mut text = Zeroizing::new(String::new());
                std::fs::File::open(&path)
                    .and_then(|mut f| f.read_to_string(&mut text))
                    .map_err(|source| PinError::File { path, source })?;
                let line_len = text.lines().next().map_or(0, str::len);
                text.truncate(line_len);
                text
            }
            PinSource::Pinentry(program) => pinentry(program.as_deref(), what)?,
            PinSource::Prompt => return Err(PinError::Interactive),
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
            PinSource::Credential(n) => write!(f, "credential:{n}"),
            PinSource::Pinentry(None) => f.write_str("pinentry"),
            PinSource::Pinentry(Some(p)) => write!(f, "pinentry:{}", p.display()),
            PinSource::Prompt => f.write_str("prompt"),
        }
    }
}

/// Asks for a PIN through a pinentry program (the Assuan protocol pinentry speaks).
fn pinentry(program: Option<&Path>, what: &str) -> Result<Zeroizing<String>, PinError> {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let program = program.unwrap_or(Path::new("pinentry"));
    let fail = |m: String| PinError::Pinentry(m);
    let mut child = Command::new(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", program.display())))?;
    let (Some(mut input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        return Err(fail("no pipes to the program".into()));
    };
    let mut output = BufReader::new(output);
    // Reads one answer: the data lines, then OK; ERR is a failure.
    let mut answer = |data: &mut Zeroizing<String>| -> Result<(), PinError> {
        loop {
            let mut line = Zeroizing::new(String::new());
            let n = output
                .read_line(&mut line)
                .map_err(|e| fail(format!("reading from {}: {e}", program.display())))?;
            if n == 0 {
                return Err(fail(format!(
                    "{} ended without an answer",
                    program.display()
                )));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line == "OK" || line.starts_with("OK ") {
                return Ok(());
            }
            if let Some(err) = line.strip_prefix("ERR ") {
                let cancelled = err.contains("cancel") || err.contains("Cancel");
                return Err(fail(if cancelled {
                    "the person cancelled".into()
                } else {
                    format!("{} answered {err}", program.display())
                }));
            }
            if let Some(d) = line.strip_prefix("D ") {
                data.push_str(&percent_decode(d));
            }
            // `S` status and `#` comment lines are skipped.
        }
    };
    let mut data = Zeroizing::new(String::new());
    answer(&mut data)?; // the greeting
    let mut commands = Vec::new();
    if let Some(tty) = std::env::var_os("WAXSEAL_PINENTRY_TTY") {
        commands.push(format!("OPTION ttyname={}", tty.to_string_lossy()));
        if let Some(term) = std::env::var_os("TERM") {
            commands.push(format!("OPTION ttytype={}", term.to_string_lossy()));
        }
    }
    commands.push("SETTITLE waxseal".into());
    commands.push(format!("SETDESC {}", percent_encode(what)));
    commands.push("SETPROMPT PIN:".into());
    commands.push("SETTIMEOUT 120".into());
    for c in &commands {
        writeln!(input, "{c}")
            .map_err(|e| fail(format!("writing to {}: {e}", program.display())))?;
        answer(&mut data)?;
    }
    writeln!(input, "GETPIN")
        .map_err(|e| fail(format!("writing to {}: {e}", program.display())))?;
    let mut pin = Zeroizing::new(String::new());
    let got = answer(&mut pin);
    let _ = writeln!(input, "BYE");
    drop(input);
    let _ = child.wait();
    got?;
    Ok(pin)
}

/// Assuan's escaping of `%`, CR and LF in data.
fn percent_encode(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    out.iter_mut().for_each(|b| *b = 0);
    text
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
        assert_eq!(PinSource::parse("prompt").unwrap(), PinSource::Prompt);
        assert_eq!(
            PinSource::parse("pinentry").unwrap(),
            PinSource::Pinentry(None)
        );
        assert_eq!(
            PinSource::parse("credential:hsm-pin").unwrap(),
            PinSource::Credential("hsm-pin".into())
        );
        for bad in [
            "file:",
            "env:",
            "1234",
            "credential:",
            "credential:../x",
            "pinentry:rel",
        ] {
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
    fn assuan_escapes() {
        assert_eq!(percent_encode("a%b\nc"), "a%25b%0Ac");
        assert_eq!(percent_decode("12%2534%0A"), "12%34\n");
        assert_eq!(percent_decode("é%"), "é%");
    }

    #[test]
    fn credentials_come_from_the_credentials_directory() {
        let src = PinSource::Credential("nope-not-set".into());
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
            assert!(matches!(src.read(), Err(PinError::NoCredentials(_))));
        }
    }

    #[test]
    fn debug_never_shows_the_pin() {
        let pin = SecretString::from("987654");
        assert!(!format!("{pin:?}").contains("987654"));
    }
}
