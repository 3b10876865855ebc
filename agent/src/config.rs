//! The TOML configuration file: agent settings, devices and per-key policy.
//!
//! Every error names the file, the line and the key (`device[1].pin`), whether it comes
//! from TOML syntax, a wrong type, an unknown key or a check made after parsing.
//! Options that this version does not implement are refused, never silently ignored.

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use x509_cert::der::asn1::ObjectIdentifier;

use crate::keyuri::{valid_device_name, KeyName};
use crate::pin::PinSource;
use crate::proto::Purpose;
use crate::x509::{self, CertKind};

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
    /// polls (saves CPU, costs ~50 µs of latency per request on VMs).
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
    /// `pkcs11`, `tpm`, `yubikey`.
    pub fn word(&self) -> &'static str {
        match self {
            DeviceKind::Pkcs11 { .. } => "pkcs11",
            DeviceKind::Tpm { .. } => "tpm",
            DeviceKind::Yubikey { .. } => "yubikey",
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

// --- raw TOML shape -----------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    agent: RawAgent,
    #[serde(default, rename = "device")]
    devices: Vec<RawDevice>,
    #[serde(default, rename = "key")]
    keys: Vec<RawKey>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    runtime_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    max_connections: Option<usize>,
    idle_timeout_secs: Option<u64>,
    spin_us: Option<u64>,
    confirm_program: Option<PathBuf>,
    confirm_timeout_secs: Option<u64>,
    audit_fsync: Option<bool>,
    audit_group_commit: Option<bool>,
    audit_max_bytes: Option<u64>,
    #[serde(default)]
    allow_uids: Vec<u32>,
    socket_group: Option<SerialValue>,
    ssh_max_connections: Option<usize>,
    ssh_forwarded_idle_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: String,
    kind: String,
    module: Option<PathBuf>,
    token: Option<String>,
    serial: Option<SerialValue>,
    pin: Option<String>,
    mgm_key: Option<String>,
    pin_ttl: Option<u64>,
    sessions: Option<usize>,
    tcti: Option<String>,
    key_dir: Option<PathBuf>,
}

/// `serial` as written: a YubiKey's is a number, a PKCS#11 token's a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum SerialValue {
    Number(u64),
    Text(String),
}

impl SerialValue {
    fn text(self) -> String {
        match self {
            SerialValue::Number(n) => n.to_string(),
            SerialValue::Text(t) => t,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    purposes: Vec<Purpose>,
    ssh_forwarding: Option<bool>,
    x509_issue: Option<Vec<CertKind>>,
    x509_eku: Option<Vec<String>>,
    #[serde(default)]
    allow_uids: Vec<u32>,
    #[serde(default)]
    allow_exe: Vec<PathBuf>,
    #[serde(default)]
    confirm: bool,
    max_per_hour: Option<u32>,
    max_per_day: Option<u32>,
}

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
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and checks `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError {
                file: file.to_string(),
                line: inner.span().map(|s| line_of(text, s.start)),
                key: if key == "." { String::new() } else { key },
                message: match inner.message().trim() {
                    // The TOML parser gives some errors (e.g. a control character in
                    // a comment) no message of their own.
                    "" => "not valid TOML here (a control character or a broken line?)".to_string(),
                    m => m.to_string(),
                },
            }
        })?;
        let at = |key: String, message: String| ConfigError {
            file: file.to_string(),
            line: span_of(text, &key).map(|s| line_of(text, s.start)),
            key,
            message,
        };
        let agent = AgentConfig {
            runtime_dir: raw.agent.runtime_dir,
            state_dir: raw.agent.state_dir,
            max_connections: raw.agent.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            idle_timeout_secs: raw
                .agent
                .idle_timeout_secs
                .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS),
            spin_us: raw.agent.spin_us.unwrap_or(DEFAULT_SPIN_US),
            confirm_program: raw.agent.confirm_program,
            confirm_timeout_secs: raw
                .agent
                .confirm_timeout_secs
                .unwrap_or(DEFAULT_CONFIRM_TIMEOUT_SECS),
            audit_fsync: raw.agent.audit_fsync.unwrap_or(true),
            audit_group_commit: raw.agent.audit_group_commit.unwrap_or(true),
            audit_max_bytes: raw.agent.audit_max_bytes.unwrap_or(DEFAULT_AUDIT_MAX_BYTES),
            allow_uids: raw.agent.allow_uids,
            socket_group: match raw.agent.socket_group {
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
                .agent
                .ssh_max_connections
                .unwrap_or(DEFAULT_SSH_MAX_CONNECTIONS),
            ssh_forwarded_idle_secs: raw
                .agent
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
        let mut names = HashSet::new();
        let mut devices = Vec::new();
        for (i, d) in raw.devices.into_iter().enumerate() {
            let k = |field: &str| format!("device[{i}].{field}");
            if !valid_device_name(&d.name) {
                return Err(at(
                    k("name"),
                    format!(
                        "`{}` is not a valid device name: use 1-32 of a-z, 0-9, - and _",
                        d.name
                    ),
                ));
            }
            if !names.insert(d.name.clone()) {
                return Err(at(
                    k("name"),
                    format!("device `{}` is defined twice", d.name),
                ));
            }
            let pin = match &d.pin {
                Some(spec) => Some(PinSource::parse(spec).map_err(|m| at(k("pin"), m))?),
                None => None,
            };
            let kind = match d.kind.as_str() {
                "pkcs11" => {
                    for (field, set) in [
                        ("tcti", d.tcti.is_some()),
                        ("key_dir", d.key_dir.is_some()),
                        ("mgm_key", d.mgm_key.is_some()),
                    ] {
                        if set {
                            return Err(at(
                                k(field),
                                format!("`{field}` is for tpm devices, not pkcs11"),
                            ));
                        }
                    }
                    let module = d.module.ok_or_else(|| {
                        at(k("kind"), "a pkcs11 device needs `module`, e.g. module = \"/usr/lib/softhsm/libsofthsm2.so\"".into())
                    })?;
                    let token = match (d.token, d.serial.map(SerialValue::text)) {
                        (Some(l), None) => TokenSelector::Label(l),
                        (None, Some(s)) => TokenSelector::Serial(s),
                        (Some(_), Some(_)) => {
                            return Err(at(
                                k("serial"),
                                "give `token` (label) or `serial`, not both".into(),
                            ))
                        }
                        (None, None) => {
                            return Err(at(
                                k("kind"),
                                "a pkcs11 device needs `token` (the token label) or `serial`"
                                    .into(),
                            ))
                        }
                    };
                    let sessions = d.sessions.unwrap_or(4);
                    if !(1..=64).contains(&sessions) {
                        return Err(at(k("sessions"), "must be between 1 and 64".into()));
                    }
                    DeviceKind::Pkcs11 {
                        module,
                        token,
                        sessions,
                    }
                }
                "tpm" => {
                    for (field, set) in [
                        ("module", d.module.is_some()),
                        ("token", d.token.is_some()),
                        ("serial", d.serial.is_some()),
                        ("sessions", d.sessions.is_some()),
                        ("mgm_key", d.mgm_key.is_some()),
                    ] {
                        if set {
                            return Err(at(k(field), format!("`{field}` is not for tpm devices; a tpm device takes `tcti`, `key_dir` and `pin`")));
                        }
                    }
                    let tcti = d.tcti.unwrap_or_else(|| "device:/dev/tpmrm0".to_string());
                    if tcti.trim().is_empty() {
                        return Err(at(k("tcti"), "must not be empty (e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321)".into()));
                    }
                    DeviceKind::Tpm {
                        tcti,
                        key_dir: d.key_dir,
                    }
                }
                "yubikey" => {
                    for (field, set) in [
                        ("module", d.module.is_some()),
                        ("token", d.token.is_some()),
                        ("sessions", d.sessions.is_some()),
                        ("tcti", d.tcti.is_some()),
                        ("key_dir", d.key_dir.is_some()),
                    ] {
                        if set {
                            return Err(at(k(field), format!("`{field}` is not for yubikey devices; a yubikey device takes `serial`, `pin` and `mgm_key`")));
                        }
                    }
                    let serial = match d.serial {
                        None => None,
                        Some(v) => {
                            let text = v.text();
                            Some(text.parse::<u32>().map_err(|_| {
                                at(k("serial"), format!("`{text}` is not a YubiKey serial number (the number `ykman list` or `waxseal status` shows)"))
                            })?)
                        }
                    };
                    let mgm_key = match &d.mgm_key {
                        Some(spec) => {
                            Some(PinSource::parse(spec).map_err(|m| at(k("mgm_key"), m))?)
                        }
                        None => None,
                    };
                    DeviceKind::Yubikey { serial, mgm_key }
                }
                other => {
                    return Err(at(
                        k("kind"),
                        format!("unknown device kind `{other}` (expected pkcs11, tpm or yubikey)"),
                    ))
                }
            };
            if matches!(pin, Some(PinSource::Prompt)) && !matches!(kind, DeviceKind::Pkcs11 { .. })
            {
                return Err(at(
                    k("pin"),
                    "`prompt` is available for pkcs11 devices; use file:, env:, credential: or pinentry here".into(),
                ));
            }
            let pin_ttl = match d.pin_ttl {
                Some(0) => {
                    return Err(at(
                        k("pin_ttl"),
                        "must be at least 1 (seconds); leave it out to keep the PIN".into(),
                    ))
                }
                Some(secs) => Some(std::time::Duration::from_secs(secs)),
                None => None,
            };
            devices.push(DeviceConfig {
                name: d.name,
                kind,
                pin,
                pin_ttl,
            });
        }
        let mut keys = Vec::new();
        let mut key_names = HashSet::new();
        for (i, key) in raw.keys.into_iter().enumerate() {
            let k = |field: &str| format!("key[{i}].{field}");
            KeyName::parse(&key.name).map_err(|e| at(k("name"), e.to_string()))?;
            if !key_names.insert(key.name.clone()) {
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
                        "must name at least one extended key usage (leave it out to allow any)"
                            .into(),
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
            keys.push(KeyConfig {
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
            });
        }
        Ok(Config {
            path: None,
            agent,
            devices,
            keys,
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
mod tests {
    use super::*;

    const GOOD: &str = r#"
[agent]
runtime_dir = "/run/user/1000/waxseal"
max_connections = 8

[[device]]
name = "hsm"
kind = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "waxseal"
pin = "file:/etc/pin"

[[key]]
name = "hsm/fulcio-root"
purposes = ["x509-tbs"]
"#;

    #[test]
    fn good_config() {
        let c = Config::parse(GOOD, "c.toml").unwrap();
        assert_eq!(c.agent.max_connections, 8);
        assert_eq!(c.agent.idle_timeout_secs, DEFAULT_IDLE_TIMEOUT_SECS);
        assert_eq!(c.devices[0].name, "hsm");
        assert_eq!(c.devices[0].pin, Some(PinSource::File("/etc/pin".into())));
        assert!(matches!(
            &c.devices[0].kind,
            DeviceKind::Pkcs11 { token: TokenSelector::Label(l), sessions: 4, .. } if l == "waxseal"
        ));
        assert_eq!(c.keys[0].purposes, vec![Purpose::X509Tbs]);
    }

    #[test]
    fn empty_config_is_valid() {
        let c = Config::parse("", "c.toml").unwrap();
        assert!(c.devices.is_empty());
    }

    fn err(text: &str) -> ConfigError {
        Config::parse(text, "c.toml").unwrap_err()
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let e = err("[[device]]\nname = \"hsm\"\nkind = 3\n");
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.key, "device[0].kind", "{e}");
        let s = e.to_string();
        assert!(s.starts_with("c.toml:3: device[0].kind: "), "{s}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let e = err("[agent]\nmax_connections = 2\naudit_fsink = true\n");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("audit_fsink"), "{e}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = err("[agent]\n\nruntime_dir = \n");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn semantic_errors_name_line_and_key() {
        let text = "[[device]]\nname = \"a\"\nkind = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"\n\n[[device]]\nname = \"b\"\nkind = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"\npin = \"1234\"\n";
        let e = err(text);
        assert_eq!((e.key.as_str(), e.line), ("device[1].pin", Some(12)), "{e}");
        assert!(
            !e.to_string().contains("1234"),
            "a PIN-like value is never echoed: {e}"
        );

        let e = err("[[device]]\nname = \"Bad Name\"\nkind = \"pkcs11\"\n");
        assert_eq!((e.key.as_str(), e.line), ("device[0].name", Some(2)), "{e}");

        let e = err("[[device]]\nname = \"x\"\nkind = \"floppy\"\n");
        assert_eq!((e.key.as_str(), e.line), ("device[0].kind", Some(3)), "{e}");
        assert!(e.message.contains("floppy"));

        let e = err("[[device]]\nname = \"x\"\nkind = \"pkcs11\"\nmodule = \"/m\"\n");
        assert!(e.message.contains("token"), "{e}");

        let e = err("[[key]]\nname = \"nodevice\"\npurposes = [\"digest\"]\n");
        assert_eq!((e.key.as_str(), e.line), ("key[0].name", Some(2)), "{e}");

        let e = err("[[key]]\nname = \"a/b\"\npurposes = [\"coffee\"]\n");
        assert_eq!(e.key, "key[0].purposes[0]", "{e}");
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn tpm_devices() {
        let c = Config::parse("[[device]]\nname = \"tpm\"\nkind = \"tpm\"\n", "c.toml").unwrap();
        assert_eq!(
            c.devices[0].kind,
            DeviceKind::Tpm {
                tcti: "device:/dev/tpmrm0".into(),
                key_dir: None
            }
        );
        let c = Config::parse(
            "[[device]]\nname = \"t\"\nkind = \"tpm\"\ntcti = \"swtpm:host=127.0.0.1,port=2321\"\nkey_dir = \"/k\"\npin = \"env:P\"\n",
            "c.toml",
        )
        .unwrap();
        assert!(
            matches!(&c.devices[0].kind, DeviceKind::Tpm { tcti, key_dir: Some(_) } if tcti.starts_with("swtpm:"))
        );
        let e = err("[[device]]\nname = \"t\"\nkind = \"tpm\"\nmodule = \"/m.so\"\n");
        assert_eq!(
            (e.key.as_str(), e.line),
            ("device[0].module", Some(4)),
            "{e}"
        );
        let e = err("[[device]]\nname = \"h\"\nkind = \"pkcs11\"\nmodule = \"/m\"\ntoken = \"t\"\ntcti = \"x\"\n");
        assert_eq!(e.key, "device[0].tcti", "{e}");
    }

    #[test]
    fn duplicate_device() {
        let d = "[[device]]\nname = \"a\"\nkind = \"pkcs11\"\nmodule = \"/m\"\ntoken = \"t\"\n";
        let e = err(&format!("{d}{d}"));
        assert_eq!((e.key.as_str(), e.line), ("device[1].name", Some(7)), "{e}");
    }

    #[test]
    fn control_characters_give_an_error_with_a_message() {
        // Found by the `config` fuzz target: toml reports this without a message.
        let e = err("  # keys on it are hsm/<labe\0\0\0\0l>\nkind = \"pkcs11\"\nmtpm");
        assert!(!e.message.is_empty(), "{e:?}");
        assert!(e.to_string().contains("not valid TOML"), "{e}");
        for name in [
            "lone-cr-empty-message.toml",
            "control-char-in-comment-empty-message.toml",
        ] {
            let path = format!(
                "{}/../fuzz/regressions/config/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read_to_string(path).unwrap();
            let e = err(&text);
            assert!(!e.message.is_empty(), "{name}: {e:?}");
        }
    }

    #[test]
    fn yubikey_devices() {
        let c = Config::parse(
            "[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nserial = 12345678\npin = \"file:/p\"\nmgm_key = \"env:MGM\"\n",
            "c.toml",
        )
        .unwrap();
        assert_eq!(
            c.devices[0].kind,
            DeviceKind::Yubikey {
                serial: Some(12_345_678),
                mgm_key: Some(PinSource::Env("MGM".into()))
            }
        );
        let c = Config::parse(
            "[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nserial = \"42\"\n",
            "c.toml",
        )
        .unwrap();
        assert!(matches!(
            c.devices[0].kind,
            DeviceKind::Yubikey {
                serial: Some(42),
                ..
            }
        ));
        let e = err("[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nserial = \"abc\"\n");
        assert_eq!(e.key, "device[0].serial", "{e}");
        let e = err("[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nmodule = \"/m\"\n");
        assert_eq!(e.key, "device[0].module", "{e}");
        let e = err("[[device]]\nname = \"h\"\nkind = \"pkcs11\"\nmodule = \"/m\"\ntoken = \"t\"\nmgm_key = \"env:X\"\n");
        assert_eq!(e.key, "device[0].mgm_key", "{e}");
        // x509_issue only with x509-tbs.
        let e = err("[[key]]\nname = \"a/b\"\npurposes = [\"digest\"]\nx509_issue = [\"ca\"]\n");
        assert_eq!(e.key, "key[0].x509_issue", "{e}");
    }

    #[test]
    fn x509_eku_words() {
        let key = |eku: &str| {
            format!("[[key]]\nname = \"a/b\"\npurposes = [\"x509-tbs\"]\nx509_eku = {eku}\n")
        };
        let c = Config::parse(
            &key("[\"codeSigning\", \"1.3.6.1.5.5.7.3.8\", \"1.3.6.1.4.1.11129.2.4.4\"]"),
            "c.toml",
        )
        .unwrap();
        assert_eq!(
            c.keys[0].x509_eku.as_deref(),
            Some(
                &[
                    "codeSigning".to_string(),
                    "timeStamping".into(),
                    "1.3.6.1.4.1.11129.2.4.4".into()
                ][..]
            ),
            "dotted OIDs of named purposes are written as their names"
        );
        assert_eq!(
            Config::parse(&key("[\"any\"]"), "c.toml").unwrap().keys[0].x509_eku,
            Some(vec!["any".into()])
        );
        assert_eq!(
            Config::parse(
                &key("[\"any\"]").replace("x509_eku = [\"any\"]\n", ""),
                "c.toml"
            )
            .unwrap()
            .keys[0]
                .x509_eku,
            None
        );
        for bad in ["[\"codesigning\"]", "[\"1..2\"]", "[\"\"]"] {
            let e = err(&key(bad));
            assert_eq!(e.key, "key[0].x509_eku", "{e}");
            assert_eq!(e.line, Some(4), "{e}");
            assert!(e.message.contains("unknown extended key usage"), "{e}");
            assert!(e.message.contains("codeSigning"), "{e}");
        }
        let e = err(&key("[]"));
        assert_eq!(e.key, "key[0].x509_eku", "{e}");
        let e =
            err("[[key]]\nname = \"a/b\"\npurposes = [\"digest\"]\nx509_eku = [\"codeSigning\"]\n");
        assert_eq!(e.key, "key[0].x509_eku", "{e}");
        assert!(e.message.contains("x509-tbs"), "{e}");
    }
}
