//! The TOML configuration file: agent settings, devices and per-key policy, and the
//! `[sigstore]` defaults of `waxseal sign`, which the agent only checks (its schema is
//! [`crate::sigstore_defaults`], shared with the CLI).
//!
//! Every error names the file, the line and the key (`device[1].pin`), whether it comes
//! from TOML syntax, a wrong type, an unknown key or a check made after parsing.
//! Options that this version does not implement are refused, never silently ignored.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use x509_cert::der::asn1::ObjectIdentifier;

use crate::keyuri::{valid_device_name, KeyName};
use crate::pin::PinSource;
use crate::proto::{self, Purpose};
use crate::sigstore_defaults::SigstoreDefaults;
use crate::x509::{self, CertKind};
use raw::{device_error, RawAgent, RawConfig, RawDevice, RawKey, SerialValue};

mod raw;

/// Default cap on concurrent connections to `agent.sock`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default idle timeout of a connection, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;
/// Default time a connection polls for its next request, in microseconds.
pub const DEFAULT_SPIN_US: u64 = 100;
/// Default cap on concurrent connections to `ssh.sock`.
pub const DEFAULT_SSH_MAX_CONNECTIONS: usize = 64;
/// Default idle timeout of a forwarded `ssh.sock` connection, in seconds.
pub const DEFAULT_SSH_FORWARDED_IDLE_SECS: u64 = 30;

/// The whole configuration, checked.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Where it was read from (for messages); `None` for the built-in empty config.
    pub path: Option<PathBuf>,
    /// `[agent]`.
    pub agent: AgentConfig,
    /// `[[device]]`, in file order.
    pub devices: Vec<DeviceConfig>,
    /// `[[key]]`, in file order.
    pub keys: Vec<KeyConfig>,
    /// `[sigstore]`, checked; the CLI's defaults (README, "Signing releases"), unused
    /// by the agent. Relative paths are relative to the file's directory once
    /// [`Config::load`] has read it.
    pub sigstore: Option<SigstoreDefaults>,
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Directory of the sockets.
    pub runtime_dir: Option<PathBuf>,
    /// Directory of the state (audit log, key files).
    pub state_dir: Option<PathBuf>,
    /// Cap on concurrent connections; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout_secs: u64,
    /// Microseconds a connection polls for its next request before sleeping; 0 never
    /// polls (saves CPU, costs a wake-up's latency per request: docs/architecture.md,
    /// "Threads and lanes").
    pub spin_us: u64,
    /// A program that asks a person to confirm a signature (SSH_ASKPASS-style: the
    /// question is its argument; exit 0 allows). Used instead of desktop notifications.
    pub confirm_program: Option<PathBuf>,
    /// How long a confirmation waits for an answer; no answer is a denial.
    pub confirm_timeout_secs: u64,
    /// Whether audit records are fsynced before signatures are returned.
    pub audit_fsync: bool,
    /// With `audit_fsync`: one fsync serves every signature waiting at that moment
    /// (true, the default), or each signature pays its own (false; for measurements).
    pub audit_group_commit: bool,
    /// The audit log is rotated when it grows past this many bytes.
    pub audit_max_bytes: u64,
    /// Uids other than the agent's own that may connect to `agent.sock` (system mode);
    /// each may use only the keys whose `[[key]] allow_uids` names it.
    pub allow_uids: Vec<u32>,
    /// The group given access to the runtime directory (0710) and `agent.sock` (0660),
    /// so that the uids of `allow_uids` can reach it; by name or number.
    pub socket_group: Option<u32>,
    /// Cap on concurrent connections to `ssh.sock`.
    pub ssh_max_connections: usize,
    /// Idle timeout of an `ssh.sock` connection bound for forwarding, in seconds.
    pub ssh_forwarded_idle_secs: u64,
}

/// Default seconds a confirmation waits.
pub const DEFAULT_CONFIRM_TIMEOUT_SECS: u64 = 30;
/// Default size at which the audit log rotates: 64 MiB.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 64 << 20;

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            runtime_dir: None,
            state_dir: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            spin_us: DEFAULT_SPIN_US,
            confirm_program: None,
            confirm_timeout_secs: DEFAULT_CONFIRM_TIMEOUT_SECS,
            audit_fsync: true,
            audit_group_commit: true,
            audit_max_bytes: DEFAULT_AUDIT_MAX_BYTES,
            allow_uids: Vec::new(),
            socket_group: None,
            ssh_max_connections: DEFAULT_SSH_MAX_CONNECTIONS,
            ssh_forwarded_idle_secs: DEFAULT_SSH_FORWARDED_IDLE_SECS,
        }
    }
}

/// One `[[device]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// First part of every key NAME on it.
    pub name: String,
    /// What kind of device, with its settings.
    pub kind: DeviceKind,
    /// Where its PIN comes from, if it needs one.
    pub pin: Option<PinSource>,
    /// How long a PIN the device holds (a logged-in token, a verified card) is kept
    /// before the agent drops it; forever if `None`.
    pub pin_ttl: Option<std::time::Duration>,
}

/// The kinds of device, with their own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKind {
    /// A PKCS#11 token.
    Pkcs11 {
        /// The module (shared library).
        module: PathBuf,
        /// How to find the token.
        token: TokenSelector,
        /// Sessions kept open for parallel signing (default: 4).
        sessions: usize,
    },
    /// A YubiKey (PIV), through pcscd.
    Yubikey {
        /// Which YubiKey; the first one found if absent.
        serial: Option<u32>,
        /// Where the management key (hex) comes from; else the PIN-protected one on the
        /// card, else the factory default (with a warning).
        mgm_key: Option<PinSource>,
    },
    /// A TPM 2.0.
    Tpm {
        /// TCTI configuration (default `device:/dev/tpmrm0`).
        tcti: String,
        /// Folder of the TSS2 PEM key files (default: `STATE_DIR/tpm`).
        key_dir: Option<PathBuf>,
    },
}

impl DeviceKind {
    /// Which kind, without its settings.
    pub fn kind(&self) -> proto::DeviceKind {
        match self {
            DeviceKind::Pkcs11 { .. } => proto::DeviceKind::Pkcs11,
            DeviceKind::Tpm { .. } => proto::DeviceKind::Tpm,
            DeviceKind::Yubikey { .. } => proto::DeviceKind::Yubikey,
        }
    }
}

/// How a PKCS#11 token is found among the module's slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// By `CKA_LABEL` of the token (`token = "..."`).
    Label(String),
    /// By serial number (`serial = "..."`).
    Serial(String),
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "token labelled '{l}'"),
            TokenSelector::Serial(s) => write!(f, "token with serial '{s}'"),
        }
    }
}

/// One `[[key]]`: the policy of one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyConfig {
    /// `DEVICE/LABEL`.
    pub name: String,
    /// Purposes the key may sign for.
    pub purposes: Vec<Purpose>,
    /// Whether the key is listed and usable on an SSH connection bound for forwarding
    /// (`session-bind@openssh.com`); by default yes, except for `x509-tbs` keys.
    pub ssh_forwarding: Option<bool>,
    /// Which certificates an `x509-tbs` key may sign: CA certificates, end-entity
    /// certificates or both (the default).
    pub x509_issue: Vec<CertKind>,
    /// When set, an `x509-tbs` key signs only certificates with an extKeyUsage whose
    /// every purpose is listed here, named as [`crate::x509::EKU_NAMES`] (a dotted OID
    /// otherwise).
    pub x509_eku: Option<Vec<String>>,
    /// Uids that may use the key (any uid the agent admits, if empty).
    pub allow_uids: Vec<u32>,
    /// Executables that may use the key, compared with the peer's `/proc/PID/exe`
    /// (any, if empty).
    pub allow_exe: Vec<PathBuf>,
    /// Whether a person confirms each signature.
    pub confirm: bool,
    /// At most this many signatures in any hour.
    pub max_per_hour: Option<u32>,
    /// At most this many signatures in any 24 hours.
    pub max_per_day: Option<u32>,
    /// Quorum approval: no signature until `quorum` approvers approved the request
    /// (docs/protocol.md, "Approvals").
    pub approvals: Option<crate::approvals::ApprovalPolicy>,
}

/// A configuration that cannot be used, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {key}{}{message}", line.map(|l| format!(":{l}")).unwrap_or_default(), if key.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key, e.g. `device[0].kind`; empty for file-level errors.
    pub key: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// Makes the error for a dotted key, on the line of its value.
type At<'a> = dyn Fn(String, String) -> ConfigError + 'a;

/// The id of the group `name`, from `/etc/group`.
fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name)
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        })?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        let dir = path.parent().unwrap_or(Path::new("."));
        config.sigstore = config.sigstore.map(|s| s.relative_to(dir));
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and checks `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = match inner.message().trim() {
                // The TOML parser gives some errors (e.g. a control character in a
                // comment) no message of their own.
                "" => "not valid TOML here (a control character or a broken line?)".to_string(),
                m => m.to_string(),
            };
            let line = inner.span().map(|s| line_of(text, s.start));
            let key = if key == "." { String::new() } else { key };
            match device_error(text, &key, &message) {
                Some((key, message)) => ConfigError {
                    file: file.to_string(),
                    line: span_of(text, &key).map(|s| line_of(text, s.start)).or(line),
                    key,
                    message,
                },
                None => ConfigError {
                    file: file.to_string(),
                    line,
                    key,
                    message,
                },
            }
        })?;
        let at = |key: String, message: String| ConfigError {
            file: file.to_string(),
            line: span_of(text, &key).map(|s| line_of(text, s.start)),
            key,
            message,
        };
        let agent = AgentConfig::from_raw(raw.agent, &at)?;
        if let Some(sigstore) = &raw.sigstore {
            sigstore
                .check()
                .map_err(|e| at(format!("sigstore.{}", e.field), e.message))?;
        }
        let mut names = HashSet::new();
        let mut devices = Vec::new();
        for (i, d) in raw.devices.into_iter().enumerate() {
            devices.push(DeviceConfig::from_raw(i, d, &mut names, &at)?);
        }
        let mut keys = Vec::new();
        let mut key_names = HashSet::new();
        for (i, key) in raw.keys.into_iter().enumerate() {
            keys.push(KeyConfig::from_raw(i, key, &mut key_names, &at)?);
        }
        Ok(Config {
            path: None,
            agent,
            devices,
            keys,
            sigstore: raw.sigstore,
        })
    }
}

impl AgentConfig {
    /// `[agent]`, checked.
    fn from_raw(raw: RawAgent, at: &At<'_>) -> Result<AgentConfig, ConfigError> {
        let agent = AgentConfig {
            runtime_dir: raw.runtime_dir,
            state_dir: raw.state_dir,
            max_connections: raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            idle_timeout_secs: raw.idle_timeout_secs.unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS),
            spin_us: raw.spin_us.unwrap_or(DEFAULT_SPIN_US),
            confirm_program: raw.confirm_program,
            confirm_timeout_secs: raw
                .confirm_timeout_secs
                .unwrap_or(DEFAULT_CONFIRM_TIMEOUT_SECS),
            audit_fsync: raw.audit_fsync.unwrap_or(true),
            audit_group_commit: raw.audit_group_commit.unwrap_or(true),
            audit_max_bytes: raw.audit_max_bytes.unwrap_or(DEFAULT_AUDIT_MAX_BYTES),
            allow_uids: raw.allow_uids,
            socket_group: match raw.socket_group {
                None => None,
                Some(SerialValue::Number(n)) => Some(
                    u32::try_from(n)
                        .map_err(|_| at("agent.socket_group".into(), "not a group id".into()))?,
                ),
                Some(SerialValue::Text(name)) => Some(group_id(&name).ok_or_else(|| {
                    at(
                        "agent.socket_group".into(),
                        format!("no group named `{name}` in /etc/group"),
                    )
                })?),
            },
            ssh_max_connections: raw
                .ssh_max_connections
                .unwrap_or(DEFAULT_SSH_MAX_CONNECTIONS),
            ssh_forwarded_idle_secs: raw
                .ssh_forwarded_idle_secs
                .unwrap_or(DEFAULT_SSH_FORWARDED_IDLE_SECS),
        };
        if !agent.allow_uids.is_empty() && agent.socket_group.is_none() {
            return Err(at(
            "agent.allow_uids".into(),
            "other uids cannot reach agent.sock (0600) without [agent] socket_group, the group they share with the agent".into(),
        ));
        }
        if agent.ssh_max_connections == 0 {
            return Err(at(
                "agent.ssh_max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        if agent.ssh_forwarded_idle_secs == 0 {
            return Err(at(
                "agent.ssh_forwarded_idle_secs".into(),
                "must be at least 1".into(),
            ));
        }
        if !(1..=3600).contains(&agent.confirm_timeout_secs) {
            return Err(at(
                "agent.confirm_timeout_secs".into(),
                "must be between 1 and 3600".into(),
            ));
        }
        if agent.audit_max_bytes < 4096 {
            return Err(at(
                "agent.audit_max_bytes".into(),
                "must be at least 4096".into(),
            ));
        }
        if let Some(p) = &agent.confirm_program {
            if !p.is_absolute() {
                return Err(at(
                    "agent.confirm_program".into(),
                    "must be an absolute path".into(),
                ));
            }
        }
        if agent.spin_us > 10_000 {
            return Err(at(
                "agent.spin_us".into(),
                "must be at most 10000 (10 ms)".into(),
            ));
        }
        if agent.max_connections == 0 {
            return Err(at(
                "agent.max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        if agent.idle_timeout_secs == 0 {
            return Err(at(
                "agent.idle_timeout_secs".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(agent)
    }
}

impl DeviceConfig {
    /// `[[device]]` number `i`, checked; `names` holds the names seen before it.
    fn from_raw(
        i: usize,
        d: RawDevice,
        names: &mut HashSet<String>,
        at: &At<'_>,
    ) -> Result<DeviceConfig, ConfigError> {
        let k = |field: &str| format!("device[{i}].{field}");
        let (name, pin, pin_ttl) = d.common();
        let name = name.to_string();
        if !valid_device_name(&name) {
            return Err(at(
                k("name"),
                format!("`{name}` is not a valid device name: use 1-32 of a-z, 0-9, - and _"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(at(k("name"), format!("device `{name}` is defined twice")));
        }
        let pin = match pin {
            Some(spec) => Some(PinSource::parse(spec).map_err(|m| at(k("pin"), m))?),
            None => None,
        };
        let pin_ttl = match pin_ttl {
            Some(0) => {
                return Err(at(
                    k("pin_ttl"),
                    "must be at least 1 (seconds); leave it out to keep the PIN".into(),
                ))
            }
            Some(secs) => Some(std::time::Duration::from_secs(secs)),
            None => None,
        };
        let kind = d.kind(&|field, message| at(k(field), message))?;
        if matches!(pin, Some(PinSource::Prompt)) && !matches!(kind, DeviceKind::Pkcs11 { .. }) {
            return Err(at(
                k("pin"),
                "`prompt` is available for pkcs11 devices; use file:, env:, credential: or pinentry here".into(),
            ));
        }
        Ok(DeviceConfig {
            name,
            kind,
            pin,
            pin_ttl,
        })
    }
}

impl KeyConfig {
    /// `[[key]]` number `i`, checked; `names` holds the names seen before it.
    fn from_raw(
        i: usize,
        key: RawKey,
        names: &mut HashSet<String>,
        at: &At<'_>,
    ) -> Result<KeyConfig, ConfigError> {
        let k = |field: &str| format!("key[{i}].{field}");
        KeyName::parse(&key.name).map_err(|e| at(k("name"), e.to_string()))?;
        if !names.insert(key.name.clone()) {
            return Err(at(
                k("name"),
                format!("key `{}` has two [[key]] entries", key.name),
            ));
        }
        if key.purposes.is_empty() {
            return Err(at(
                k("purposes"),
                "must name at least one purpose (digest, blob, x509-tbs, ssh)".into(),
            ));
        }
        let x509_issue = match key.x509_issue {
            None => vec![CertKind::Ca, CertKind::Leaf],
            Some(kinds) if kinds.is_empty() => {
                return Err(at(
                    k("x509_issue"),
                    "must name at least one kind of certificate (ca, leaf)".into(),
                ))
            }
            Some(_) if !key.purposes.contains(&Purpose::X509Tbs) => {
                return Err(at(
                    k("x509_issue"),
                    "only applies to keys whose purposes include x509-tbs".into(),
                ))
            }
            Some(kinds) => kinds,
        };
        let x509_eku = match key.x509_eku {
            None => None,
            Some(words) if words.is_empty() => {
                return Err(at(
                    k("x509_eku"),
                    "must name at least one extended key usage (leave it out to allow any)".into(),
                ))
            }
            Some(_) if !key.purposes.contains(&Purpose::X509Tbs) => {
                return Err(at(
                    k("x509_eku"),
                    "only applies to keys whose purposes include x509-tbs".into(),
                ))
            }
            Some(words) => Some(
                words
                    .iter()
                    .map(|w| eku_word(w))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|m| at(k("x509_eku"), m))?,
            ),
        };
        if let Some(p) = key.allow_exe.iter().find(|p| !p.is_absolute()) {
            return Err(at(
                k("allow_exe"),
                format!("`{}` is not an absolute path", p.display()),
            ));
        }
        for (field, v) in [
            ("max_per_hour", key.max_per_hour),
            ("max_per_day", key.max_per_day),
        ] {
            if v == Some(0) {
                return Err(at(
                    k(field),
                    "must be at least 1 (remove the key's purposes to forbid it)".into(),
                ));
            }
        }
        let approvals = match key.approvals {
            None => None,
            Some(a) => Some(
                crate::approvals::ApprovalPolicy::new(a.quorum, &a.approvers, a.timeout_secs)
                    .map_err(|(field, m)| at(k(&format!("approvals.{field}")), m))?,
            ),
        };
        Ok(KeyConfig {
            name: key.name,
            purposes: key.purposes,
            ssh_forwarding: key.ssh_forwarding,
            x509_issue,
            x509_eku,
            allow_uids: key.allow_uids,
            allow_exe: key.allow_exe,
            confirm: key.confirm,
            max_per_hour: key.max_per_hour,
            max_per_day: key.max_per_day,
            approvals,
        })
    }
}

/// One word of `x509_eku`: a name of [`x509::EKU_NAMES`], or a dotted OID (written as
/// its name when it has one, as the certificate summary names it).
fn eku_word(word: &str) -> Result<String, String> {
    if x509::EKU_NAMES.iter().any(|(n, _)| *n == word) {
        return Ok(word.to_string());
    }
    // const-oid reads an empty arc as 0: check the dotted form first.
    let dotted = word.split('.').count() >= 2
        && word.split('.').all(|arc| {
            !arc.is_empty()
                && arc.bytes().all(|b| b.is_ascii_digit())
                && (arc == "0" || !arc.starts_with('0'))
        });
    match ObjectIdentifier::new(word) {
        Ok(oid) if dotted => Ok(x509::eku_name(&oid.to_string())),
        _ => Err(format!(
            "unknown extended key usage `{word}` (expected {}, or a dotted OID such as 1.3.6.1.4.1.11129.2.4.4)",
            x509::EKU_NAMES
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Span of the value at a dotted path like `device[1].pin` (or of the closest parent).
fn span_of(text: &str, key: &str) -> Option<Range<usize>> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut item: &toml_edit::Item = doc.as_item();
    let mut best = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        item = item.get(name)?;
        if let Some(i) = index {
            item = item.get(i)?;
        }
        best = item.span().or(best);
    }
    best
}

#[cfg(test)]
mod tests;
