//! The `[sigstore]` defaults of `waxseal sign` (and `waxseal attest`): the table read
//! out of the config file the agent reads too, and how it combines with the command
//! line (README, "Signing releases", which this module follows).
//!
//! The CLI reads only `[sigstore]` and ignores the agent's other tables, so a config
//! the agent understands never stops a signature; the table itself is checked as the
//! agent checks it ([`SigstoreDefaults::check`], one schema in waxseal-proto). A
//! missing file at the default path means no defaults; a file that `--config` names
//! must exist. The file never adds a service by itself: only URLs written in it (or in
//! the signing config it names) are ever contacted.
//!
//! The rule, as [`apply_defaults`] applies it: a setting given on the command line
//! replaces the file's settings of the same service; the file fills in the rest.
//!
//! | the command line gives | the file's settings it replaces |
//! |---|---|
//! | `--signing-config` | `signing_config`, `rekor_url`, `rekor_version`, `tsa_url` |
//! | `--rekor-url` | `signing_config`, `rekor_url`, `rekor_version` |
//! | `--tsa-url` | `signing_config`, `tsa_url` |
//! | `--rekor-version` | `rekor_version` (the flag's version goes with the Rekor URL in use) |
//! | `--trusted-root` or `--rekor-public-key` | `trusted_root`, `rekor_public_key` |
//! | `--tsa-timeout` | `tsa_timeout_secs` |
//!
//! A signing config chooses the logs and the TSAs together, so an explicit Rekor or
//! TSA URL on the command line sets the file's `signing_config` aside entirely (and
//! says so on stderr): the other service then comes from the file's own URL, if any.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use waxseal_proto::paths;
pub use waxseal_proto::sigstore_defaults::SigstoreDefaults;

/// The largest config file read: the agent's config is a few KiB.
const MAX_FILE: u64 = 1 << 20;

/// The Sigstore service settings of one command, as plain values: the flags of `sign`
/// (and `attest`) before [`apply_defaults`], the settings used after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceFlags {
    /// `--signing-config`.
    pub signing_config: Option<PathBuf>,
    /// `--trusted-root`.
    pub trusted_root: Option<PathBuf>,
    /// `--rekor-url`.
    pub rekor_url: Option<String>,
    /// `--rekor-version` (1 when not given).
    pub rekor_version: Option<u8>,
    /// `--rekor-public-key`.
    pub rekor_public_key: Option<PathBuf>,
    /// `--tsa-url`.
    pub tsa_url: Option<String>,
    /// `--tsa-timeout`, seconds (10 when not given).
    pub tsa_timeout: Option<u64>,
}

/// Seconds a TSA has when neither the command line nor the file says.
pub const DEFAULT_TSA_TIMEOUT_SECS: u64 = 10;

impl ServiceFlags {
    /// The Rekor API version to speak to `rekor_url`.
    pub fn rekor_version(&self) -> u8 {
        self.rekor_version.unwrap_or(1)
    }

    /// Seconds a TSA has to answer.
    pub fn tsa_timeout(&self) -> u64 {
        self.tsa_timeout.unwrap_or(DEFAULT_TSA_TIMEOUT_SECS)
    }
}

/// What [`apply_defaults`] did: which settings of the file were used, and which were
/// set aside for a flag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The file's settings now in the flags, by their name in the file.
    pub used: Vec<&'static str>,
    /// The file's settings set aside: (setting, the flag that replaced it).
    pub replaced: Vec<(&'static str, &'static str)>,
}

impl Applied {
    /// Whether the file's `name` setting is in use.
    pub fn uses(&self, name: &str) -> bool {
        self.used.contains(&name)
    }
}

/// Fills in the settings the command line left out from `defaults`, by the rule of
/// the module's table. `defaults` is taken as checked ([`SigstoreDefaults::check`]).
pub fn apply_defaults(flags: &mut ServiceFlags, defaults: &SigstoreDefaults) -> Applied {
    let mut applied = Applied::default();
    // Which flag, if any, replaces each of the file's settings.
    let services_flag = |rekor: bool, tsa: bool| -> Option<&'static str> {
        if flags.signing_config.is_some() {
            Some("--signing-config")
        } else if rekor && flags.rekor_url.is_some() {
            Some("--rekor-url")
        } else if tsa && flags.tsa_url.is_some() {
            Some("--tsa-url")
        } else {
            None
        }
    };
    let signing_config_by = services_flag(true, true);
    let rekor_by = services_flag(true, false);
    let tsa_by = services_flag(false, true);
    let keys_by = if flags.trusted_root.is_some() {
        Some("--trusted-root")
    } else if flags.rekor_public_key.is_some() {
        Some("--rekor-public-key")
    } else {
        None
    };
    let version_by = rekor_by.or(flags.rekor_version.map(|_| "--rekor-version"));
    let timeout_by = flags.tsa_timeout.map(|_| "--tsa-timeout");

    fn take<T: Clone>(
        applied: &mut Applied,
        name: &'static str,
        from_file: &Option<T>,
        replaced_by: Option<&'static str>,
        into: &mut Option<T>,
    ) {
        let Some(value) = from_file else { return };
        match replaced_by {
            Some(flag) => applied.replaced.push((name, flag)),
            None => {
                *into = Some(value.clone());
                applied.used.push(name);
            }
        }
    }
    let a = &mut applied;
    take(
        a,
        "signing_config",
        &defaults.signing_config,
        signing_config_by,
        &mut flags.signing_config,
    );
    take(
        a,
        "rekor_url",
        &defaults.rekor_url,
        rekor_by,
        &mut flags.rekor_url,
    );
    take(
        a,
        "rekor_version",
        &defaults.rekor_version,
        version_by,
        &mut flags.rekor_version,
    );
    take(a, "tsa_url", &defaults.tsa_url, tsa_by, &mut flags.tsa_url);
    take(
        a,
        "trusted_root",
        &defaults.trusted_root,
        keys_by,
        &mut flags.trusted_root,
    );
    take(
        a,
        "rekor_public_key",
        &defaults.rekor_public_key,
        keys_by,
        &mut flags.rekor_public_key,
    );
    take(
        a,
        "tsa_timeout_secs",
        &defaults.tsa_timeout_secs,
        timeout_by,
        &mut flags.tsa_timeout,
    );
    applied
}

/// Checks the settings after [`apply_defaults`]: what a flag needs must now be there,
/// from the command line or the file. The message names the flags and settings that
/// would supply it.
pub fn check(flags: &ServiceFlags, applied: &Applied) -> Result<(), String> {
    let from_flag = |name: &str, set: bool| set && !applied.uses(name);
    if let Some(v) = flags.rekor_version {
        if flags.rekor_url.is_none() {
            return Err(if flags.signing_config.is_some() {
                format!("--rekor-version {v} applies to --rekor-url; a signing config names each log's API version (majorApiVersion)")
            } else {
                "--rekor-version needs --rekor-url (or rekor_url in the config's [sigstore])"
                    .to_string()
            });
        }
    }
    if let Some(url) = &flags.rekor_url {
        if flags.rekor_public_key.is_none() && flags.trusted_root.is_none() {
            return Err(format!(
                "the Rekor log {url} needs --rekor-public-key or --trusted-root (or rekor_public_key or trusted_root in the config's [sigstore]) to check its answer"
            ));
        }
    }
    let services = flags.rekor_url.is_some() || flags.signing_config.is_some();
    if from_flag("rekor_public_key", flags.rekor_public_key.is_some()) && !services {
        return Err(
            "--rekor-public-key needs --rekor-url or --signing-config (or rekor_url or signing_config in the config's [sigstore])"
                .into(),
        );
    }
    let tsa = flags.tsa_url.is_some() || flags.signing_config.is_some();
    if from_flag("tsa_timeout_secs", flags.tsa_timeout.is_some()) && !tsa {
        return Err(
            "--tsa-timeout needs --tsa-url or --signing-config (or tsa_url or signing_config in the config's [sigstore])"
                .into(),
        );
    }
    Ok(())
}

/// The `[sigstore]` table of a config file, checked, its paths made absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The file it came from.
    pub file: PathBuf,
    /// The table; empty when the file has none.
    pub defaults: SigstoreDefaults,
}

/// A config file whose `[sigstore]` cannot be used, located in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DefaultsError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key, e.g. `sigstore.rekor_version`; empty for the whole file.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for DefaultsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config {}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(
            f,
            ": {} (--no-sigstore-defaults ignores [sigstore])",
            self.message
        )
    }
}

/// Reads `[sigstore]` from `explicit` (`--config`), or from the default config file
/// (`$XDG_CONFIG_HOME/waxseal/config.toml`, the agent's) when it exists. `None`: no
/// file at the default path.
pub fn load(explicit: Option<&Path>) -> Result<Option<Loaded>, DefaultsError> {
    let file = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let p = paths::config_file();
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    let err = |message: String| DefaultsError {
        file: file.clone(),
        line: None,
        key: String::new(),
        message,
    };
    let bytes = {
        use std::io::Read as _;
        let f = std::fs::File::open(&file).map_err(|e| err(format!("cannot read it: {e}")))?;
        let mut bytes = Vec::new();
        f.take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| err(format!("cannot read it: {e}")))?;
        if bytes.len() as u64 > MAX_FILE {
            return Err(err(format!("larger than {MAX_FILE} bytes")));
        }
        bytes
    };
    let text = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
    let defaults = parse(&text, &file)?;
    let dir = file.parent().unwrap_or(Path::new("."));
    Ok(Some(Loaded {
        defaults: defaults.relative_to(dir),
        file,
    }))
}

/// The file as the CLI reads it: `[sigstore]` only, every other table skipped.
#[derive(Deserialize)]
struct FileView {
    sigstore: Option<SigstoreDefaults>,
}

/// `[sigstore]` of the TOML `text` (paths as written), checked; an empty table when
/// there is none. `file` names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<SigstoreDefaults, DefaultsError> {
    let view: FileView =
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = match inner.message().trim() {
                "" => "not valid TOML here (a control character or a broken line?)".to_string(),
                m => m.to_string(),
            };
            DefaultsError {
                file: file.to_path_buf(),
                line: inner.span().map(|s| line_of(text, s.start)),
                key: if key == "." { String::new() } else { key },
                message,
            }
        })?;
    let defaults = view.sigstore.unwrap_or_default();
    defaults.check().map_err(|e| {
        let key = format!("sigstore.{}", e.field);
        DefaultsError {
            file: file.to_path_buf(),
            line: span_of(text, e.field).map(|s| line_of(text, s.start)),
            key,
            message: e.message,
        }
    })?;
    Ok(defaults)
}

/// 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Span of `sigstore.FIELD`'s value.
fn span_of(text: &str, field: &str) -> Option<Range<usize>> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    doc.as_item().get("sigstore")?.get(field)?.span()
}

#[cfg(test)]
mod tests;
