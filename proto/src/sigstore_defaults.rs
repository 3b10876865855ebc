//! The `[sigstore]` table of the config file: the Sigstore services and trust files
//! that `waxseal sign` (and `waxseal attest`) use when their command line names none
//! (README, "Signing releases").
//!
//! One schema for both readers: the agent reads the whole file and refuses a
//! `[sigstore]` table this type refuses when it starts (so a typo is caught before a
//! release day); the CLI reads only this table out of the same file and ignores the
//! agent's other tables. Both call [`SigstoreDefaults::check`]. Nothing here touches
//! the network or the file system except [`SigstoreDefaults::relative_to`], which only
//! joins paths.
//!
//! How the table and the command line combine is the CLI's (cli/src/defaults.rs): a
//! flag replaces the file's settings of the same service, as README says.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The longest URL accepted.
pub const MAX_URL: usize = 2048;
/// The longest path accepted.
pub const MAX_PATH: usize = 4096;
/// The longest TSA timeout accepted, in seconds.
pub const MAX_TSA_TIMEOUT_SECS: u64 = 600;

/// `[sigstore]`, as written. Every setting is optional; a table with none is allowed
/// and sets nothing. Unknown settings are refused (`deny_unknown_fields`), so a typo
/// never silently means "no default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigstoreDefaults {
    /// A Sigstore SigningConfig v0.2 (JSON) choosing the Rekor logs and TSAs, like
    /// `--signing-config`. Not together with `rekor_url` or `tsa_url`.
    pub signing_config: Option<PathBuf>,
    /// A Sigstore TrustedRoot (JSON) with the keys that check the logs' and TSAs'
    /// answers, like `--trusted-root`. Not together with `rekor_public_key`.
    pub trusted_root: Option<PathBuf>,
    /// A Rekor log, like `--rekor-url`.
    pub rekor_url: Option<String>,
    /// The API of `rekor_url`: 1 or 2 (default 1), like `--rekor-version`.
    pub rekor_version: Option<u8>,
    /// The Rekor log's public key (PEM), like `--rekor-public-key`.
    pub rekor_public_key: Option<PathBuf>,
    /// An RFC 3161 time-stamp authority, like `--tsa-url`.
    pub tsa_url: Option<String>,
    /// Seconds a TSA has to answer, like `--tsa-timeout` (1 to 600).
    pub tsa_timeout_secs: Option<u64>,
}

/// A setting of `[sigstore]` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sigstore.{field}: {message}")]
pub struct FieldError {
    /// The setting, e.g. `rekor_version`.
    pub field: &'static str,
    /// What is wrong and what is expected.
    pub message: String,
}

fn field(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// A URL of a service: http or https, bounded, nothing a header or a log line could
/// be confused by.
fn check_url(name: &'static str, url: &str) -> Result<(), FieldError> {
    if url.len() > MAX_URL {
        return Err(field(name, format!("longer than {MAX_URL} bytes")));
    }
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(field(
            name,
            format!("`{url}` is not an http:// or https:// URL"),
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(field(name, "a URL holds no spaces or control characters"));
    }
    Ok(())
}

fn check_path(name: &'static str, path: &Path) -> Result<(), FieldError> {
    let len = path.as_os_str().len();
    if len == 0 {
        return Err(field(name, "an empty path (leave the setting out instead)"));
    }
    if len > MAX_PATH {
        return Err(field(name, format!("longer than {MAX_PATH} bytes")));
    }
    Ok(())
}

impl SigstoreDefaults {
    /// Checks each setting and the pairs that exclude each other, as the command line
    /// does for its flags. The first problem is named by its setting.
    pub fn check(&self) -> Result<(), FieldError> {
        for (name, path) in [
            ("signing_config", &self.signing_config),
            ("trusted_root", &self.trusted_root),
            ("rekor_public_key", &self.rekor_public_key),
        ] {
            if let Some(p) = path {
                check_path(name, p)?;
            }
        }
        for (name, url) in [("rekor_url", &self.rekor_url), ("tsa_url", &self.tsa_url)] {
            if let Some(u) = url {
                check_url(name, u)?;
            }
        }
        if let Some(v) = self.rekor_version {
            if !(1..=2).contains(&v) {
                return Err(field(
                    "rekor_version",
                    format!("{v} is not a Rekor API version: 1 or 2"),
                ));
            }
            if self.rekor_url.is_none() {
                return Err(field(
                    "rekor_version",
                    "is the API of rekor_url, and there is none (a signing config names each log's version)",
                ));
            }
        }
        if let Some(t) = self.tsa_timeout_secs {
            if !(1..=MAX_TSA_TIMEOUT_SECS).contains(&t) {
                return Err(field(
                    "tsa_timeout_secs",
                    format!("must be between 1 and {MAX_TSA_TIMEOUT_SECS}"),
                ));
            }
        }
        if self.signing_config.is_some() {
            for (name, set) in [
                ("rekor_url", self.rekor_url.is_some()),
                ("tsa_url", self.tsa_url.is_some()),
            ] {
                if set {
                    return Err(field(
                        name,
                        "give signing_config or rekor_url and tsa_url, not both: the signing config chooses the logs and the TSAs",
                    ));
                }
            }
        }
        if self.trusted_root.is_some() && self.rekor_public_key.is_some() {
            return Err(field(
                "rekor_public_key",
                "give trusted_root or rekor_public_key, not both: the trusted root holds each log's key",
            ));
        }
        Ok(())
    }

    /// The same settings with every relative path taken relative to `dir` (the
    /// directory of the config file), so that the file means the same from any
    /// working directory.
    pub fn relative_to(mut self, dir: &Path) -> SigstoreDefaults {
        for path in [
            &mut self.signing_config,
            &mut self.trusted_root,
            &mut self.rekor_public_key,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
        self
    }

    /// Whether the table sets nothing.
    pub fn is_empty(&self) -> bool {
        *self == SigstoreDefaults::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut SigstoreDefaults)) -> SigstoreDefaults {
        let mut d = SigstoreDefaults::default();
        f(&mut d);
        d
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: [(SigstoreDefaults, &str); 9] = [
            (with(|d| d.rekor_url = Some("ftp://x".into())), "rekor_url"),
            (with(|d| d.tsa_url = Some("https://a b".into())), "tsa_url"),
            (
                with(|d| d.rekor_url = Some(format!("https://{}", "a".repeat(MAX_URL)))),
                "rekor_url",
            ),
            (
                with(|d| {
                    d.rekor_url = Some("https://r".into());
                    d.rekor_version = Some(3);
                }),
                "rekor_version",
            ),
            (with(|d| d.rekor_version = Some(2)), "rekor_version"),
            (with(|d| d.tsa_timeout_secs = Some(0)), "tsa_timeout_secs"),
            (
                with(|d| {
                    d.signing_config = Some("s.json".into());
                    d.tsa_url = Some("https://t".into());
                }),
                "tsa_url",
            ),
            (
                with(|d| {
                    d.trusted_root = Some("r.json".into());
                    d.rekor_public_key = Some("k.pem".into());
                }),
                "rekor_public_key",
            ),
            (with(|d| d.trusted_root = Some("".into())), "trusted_root"),
        ];
        for (d, name) in cases {
            assert_eq!(d.check().map_err(|e| e.field), Err(name), "{d:?}");
        }
    }

    #[test]
    fn sound_tables_pass() {
        let private = with(|d| {
            d.rekor_url = Some("https://rekor.internal".into());
            d.rekor_version = Some(2);
            d.rekor_public_key = Some("rekor.pub".into());
            d.tsa_url = Some("http://tsa.internal/api/v1/timestamp".into());
            d.tsa_timeout_secs = Some(30);
        });
        assert_eq!(private.check(), Ok(()));
        let public = with(|d| {
            d.signing_config = Some("signing_config.v0.2.json".into());
            d.trusted_root = Some("/etc/waxseal/trusted_root.json".into());
        });
        assert_eq!(public.check(), Ok(()));
        assert!(SigstoreDefaults::default().is_empty());
        assert!(!public.is_empty());
    }

    #[test]
    fn relative_paths_are_taken_from_the_files_directory() {
        let d = with(|d| {
            d.signing_config = Some("sc.json".into());
            d.trusted_root = Some("/abs/root.json".into());
            d.rekor_public_key = Some("../keys/rekor.pem".into());
        })
        .relative_to(Path::new("/home/u/.config/waxseal"));
        assert_eq!(
            d.signing_config.as_deref(),
            Some(Path::new("/home/u/.config/waxseal/sc.json"))
        );
        assert_eq!(d.trusted_root.as_deref(), Some(Path::new("/abs/root.json")));
        assert_eq!(
            d.rekor_public_key.as_deref(),
            Some(Path::new("/home/u/.config/waxseal/../keys/rekor.pem"))
        );
    }
}
