//! The configuration file's shape as serde reads it, before the checks of
//! [`Config::parse`](super::Config::parse): each `[[device]]` kind is a variant of its
//! own (tagged by `kind`) that takes only its own settings.

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, DeviceKind, TokenSelector};
use crate::pin::PinSource;
use crate::proto::Purpose;
use crate::sigstore_defaults::SigstoreDefaults;
use crate::x509::CertKind;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) agent: RawAgent,
    #[serde(default, rename = "device")]
    pub(super) devices: Vec<RawDevice>,
    #[serde(default, rename = "key")]
    pub(super) keys: Vec<RawKey>,
    /// `[sigstore]`: read by the CLI, checked here so that a typo stops the agent.
    pub(super) sigstore: Option<SigstoreDefaults>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) runtime_dir: Option<PathBuf>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) max_connections: Option<usize>,
    pub(super) idle_timeout_secs: Option<u64>,
    pub(super) spin_us: Option<u64>,
    pub(super) confirm_program: Option<PathBuf>,
    pub(super) confirm_timeout_secs: Option<u64>,
    pub(super) audit_fsync: Option<bool>,
    pub(super) audit_group_commit: Option<bool>,
    pub(super) audit_max_bytes: Option<u64>,
    #[serde(default)]
    pub(super) allow_uids: Vec<u32>,
    pub(super) socket_group: Option<SerialValue>,
    pub(super) ssh_max_connections: Option<usize>,
    pub(super) ssh_forwarded_idle_secs: Option<u64>,
}

/// One `[[device]]` as written: `kind` picks the variant, and each kind takes only its
/// own settings.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(super) enum RawDevice {
    Pkcs11(RawPkcs11),
    Tpm(RawTpm),
    Yubikey(RawYubikey),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPkcs11 {
    name: String,
    pin: Option<String>,
    pin_ttl: Option<u64>,
    module: Option<PathBuf>,
    token: Option<String>,
    serial: Option<SerialValue>,
    sessions: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTpm {
    name: String,
    pin: Option<String>,
    pin_ttl: Option<u64>,
    tcti: Option<String>,
    key_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawYubikey {
    name: String,
    pin: Option<String>,
    pin_ttl: Option<u64>,
    serial: Option<SerialValue>,
    mgm_key: Option<String>,
}

/// The settings each kind takes, for messages.
const KIND_SETTINGS: [(&str, &str); 3] = [
    (
        "pkcs11",
        "`module`, `token` or `serial`, `sessions`, `pin` and `pin_ttl`",
    ),
    ("tpm", "`tcti`, `key_dir`, `pin` and `pin_ttl`"),
    ("yubikey", "`serial`, `pin`, `mgm_key` and `pin_ttl`"),
];

impl RawDevice {
    /// `name`, `pin` and `pin_ttl`, which every kind has.
    pub(super) fn common(&self) -> (&str, Option<&str>, Option<u64>) {
        match self {
            RawDevice::Pkcs11(d) => (&d.name, d.pin.as_deref(), d.pin_ttl),
            RawDevice::Tpm(d) => (&d.name, d.pin.as_deref(), d.pin_ttl),
            RawDevice::Yubikey(d) => (&d.name, d.pin.as_deref(), d.pin_ttl),
        }
    }

    /// The kind's own settings, checked; `at` locates an error at `device[i].FIELD`.
    pub(super) fn kind(
        self,
        at: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<DeviceKind, ConfigError> {
        match self {
            RawDevice::Pkcs11(d) => {
                let module = d.module.ok_or_else(|| {
                    at("kind", "a pkcs11 device needs `module`, e.g. module = \"/usr/lib/softhsm/libsofthsm2.so\"".into())
                })?;
                let token = match (d.token, d.serial.map(SerialValue::text)) {
                    (Some(l), None) => TokenSelector::Label(l),
                    (None, Some(s)) => TokenSelector::Serial(s),
                    (Some(_), Some(_)) => {
                        return Err(at(
                            "serial",
                            "give `token` (label) or `serial`, not both".into(),
                        ))
                    }
                    (None, None) => {
                        return Err(at(
                            "kind",
                            "a pkcs11 device needs `token` (the token label) or `serial`".into(),
                        ))
                    }
                };
                let sessions = d.sessions.unwrap_or(4);
                if !(1..=64).contains(&sessions) {
                    return Err(at("sessions", "must be between 1 and 64".into()));
                }
                Ok(DeviceKind::Pkcs11 {
                    module,
                    token,
                    sessions,
                })
            }
            RawDevice::Tpm(d) => {
                let tcti = d.tcti.unwrap_or_else(|| "device:/dev/tpmrm0".to_string());
                if tcti.trim().is_empty() {
                    return Err(at("tcti", "must not be empty (e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321)".into()));
                }
                Ok(DeviceKind::Tpm {
                    tcti,
                    key_dir: d.key_dir,
                })
            }
            RawDevice::Yubikey(d) => {
                let serial = match d.serial {
                    None => None,
                    Some(v) => {
                        let text = v.text();
                        Some(text.parse::<u32>().map_err(|_| {
                            at("serial", format!("`{text}` is not a YubiKey serial number (the number `ykman list` or `waxseal status` shows)"))
                        })?)
                    }
                };
                let mgm_key = match &d.mgm_key {
                    Some(spec) => Some(PinSource::parse(spec).map_err(|m| at("mgm_key", m))?),
                    None => None,
                };
                Ok(DeviceKind::Yubikey { serial, mgm_key })
            }
        }
    }
}

/// `serial` as written: a YubiKey's is a number, a PKCS#11 token's a string.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum SerialValue {
    Number(u64),
    Text(String),
}

impl SerialValue {
    pub(super) fn text(self) -> String {
        match self {
            SerialValue::Number(n) => n.to_string(),
            SerialValue::Text(t) => t,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKey {
    pub(super) name: String,
    pub(super) purposes: Vec<Purpose>,
    pub(super) ssh_forwarding: Option<bool>,
    pub(super) x509_issue: Option<Vec<CertKind>>,
    pub(super) x509_eku: Option<Vec<String>>,
    #[serde(default)]
    pub(super) allow_uids: Vec<u32>,
    #[serde(default)]
    pub(super) allow_exe: Vec<PathBuf>,
    #[serde(default)]
    pub(super) confirm: bool,
    pub(super) max_per_hour: Option<u32>,
    pub(super) max_per_day: Option<u32>,
    pub(super) approvals: Option<RawApprovals>,
}

/// `[[key]] approvals = { quorum, approvers, timeout_secs }`, checked by
/// [`crate::approvals::ApprovalPolicy::new`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApprovals {
    pub(super) quorum: u32,
    pub(super) approvers: Vec<String>,
    pub(super) timeout_secs: Option<u64>,
}

/// Says an error inside a `[[device]]` as the other checks do. Serde reports a wrong
/// setting at the device (`device[1]`), as the `kind` tag picks the variant after the
/// table is read; this names the setting instead (`device[1].tcti`) and, for one the
/// kind does not take, says which settings it takes. A bad `kind` is named as such.
pub(super) fn device_error(text: &str, key: &str, message: &str) -> Option<(String, String)> {
    const KINDS: &str = "pkcs11, tpm or yubikey";
    if let Some(index) = key
        .strip_prefix("device[")
        .and_then(|k| k.strip_suffix("].kind"))
    {
        let message = match message.strip_prefix("unknown variant `") {
            Some(rest) => format!(
                "unknown device kind `{}` (expected {KINDS})",
                rest.split_once('`').map_or(rest, |(kind, _)| kind)
            ),
            None => message.replace("variant identifier", &format!("a device kind ({KINDS})")),
        };
        return Some((format!("device[{index}].kind"), message));
    }
    let index = key.strip_prefix("device[")?.strip_suffix(']')?;
    if message == "missing field `kind`" {
        return Some((key.to_string(), format!("missing field `kind` ({KINDS})")));
    }
    let doc: toml::Table = toml::from_str(text).ok()?;
    let mut table = doc
        .get("device")?
        .get(index.parse::<usize>().ok()?)?
        .as_table()?
        .clone();
    let kind = table.remove("kind")?.as_str()?.to_string();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split_once('`')?.0;
        let (_, takes) = KIND_SETTINGS.iter().find(|(k, _)| *k == kind)?;
        return Some((
            format!("device[{index}].{field}"),
            format!("`{field}` is not a setting of {kind} devices; a {kind} device takes {takes}"),
        ));
    }
    // A value of the wrong type: read the table as its kind alone, which names the
    // setting.
    fn path_of<T: serde::de::DeserializeOwned>(table: toml::Table) -> Option<String> {
        serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table))
            .err()
            .map(|e| e.path().to_string())
    }
    let field = match kind.as_str() {
        "pkcs11" => path_of::<RawPkcs11>(table),
        "tpm" => path_of::<RawTpm>(table),
        "yubikey" => path_of::<RawYubikey>(table),
        _ => None,
    }?;
    (field != ".").then(|| (format!("device[{index}].{field}"), message.to_string()))
}
