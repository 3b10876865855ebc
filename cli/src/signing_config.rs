//! Sigstore signing configs (`SigningConfig` v0.2, JSON): which Rekor logs and which
//! RFC 3161 time-stamp authorities `waxseal sign --signing-config FILE` uses.
//!
//! Pure: [`SigningConfig::parse`] turns the file's bytes into typed services (every
//! error names the field, e.g. `tsaUrls[1].validFor.start`), and
//! [`SigningConfig::choose`] picks the services for one moment, as the README's
//! "Sigstore bundles and Rekor" section describes: only services valid at that moment
//! (`validFor` is closed, `[start, end]`; a missing end is open), only the highest
//! major API version waxseal speaks that has any (Rekor 1 or 2, TSA 1), newest
//! `validFor.start` first, at most one service per `operator`; then the selector:
//! `ANY` the first of those, `ALL` all of them, `EXACT` the first `count` (fewer
//! is an error). [`TrustedRoot::parse`] reads the keys that check those services'
//! answers: each log's by its `baseUrl`, and the TSAs' certificate chains. Reading the
//! files and the clock is the caller's.

use serde_json::Value;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// The one media type read.
pub const MEDIA_TYPE: &str = "application/vnd.dev.sigstore.signingconfig.v0.2+json";

/// Major Rekor API versions waxseal speaks.
pub const REKOR_VERSIONS: [u32; 2] = [1, 2];
/// Major TSA API versions waxseal speaks (RFC 3161 over HTTP).
pub const TSA_VERSIONS: [u32; 1] = [1];

/// Why a signing config was refused. Each variant names the JSON field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Not JSON, or not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// `mediaType` is missing or another one.
    #[error("mediaType is `{0}`, not {MEDIA_TYPE}")]
    MediaType(String),
    /// A field has the wrong type or an unreadable value.
    #[error("{field}: {what}")]
    Field {
        /// The field's path, e.g. `rekorTlogUrls[0].url`.
        field: String,
        /// What is wrong with it.
        what: String,
    },
    /// Services of a kind are listed and none can be used now.
    #[error("{field}: no service is valid now with a majorApiVersion waxseal speaks ({versions})")]
    NoValidService {
        /// `rekorTlogUrls` or `tsaUrls`.
        field: &'static str,
        /// The versions looked for.
        versions: String,
    },
    /// `EXACT` asks for more services than there are usable ones.
    #[error("{field}: EXACT asks for {count} services, and only {usable} are valid now with distinct operators ({urls})")]
    TooFew {
        /// `rekorTlogConfig.count` or `tsaConfig.count`.
        field: &'static str,
        /// The count asked for.
        count: u32,
        /// How many there are.
        usable: usize,
        /// Their URLs.
        urls: String,
    },
}

/// How many of the usable services to take (`ServiceSelector`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selector {
    /// One.
    Any,
    /// All of them.
    All,
    /// Exactly this many.
    Exact(u32),
}

/// One `Service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its base URL.
    pub url: String,
    /// `majorApiVersion`.
    pub major_api_version: u32,
    /// `validFor.start`, if given.
    pub start: Option<OffsetDateTime>,
    /// `validFor.end`, if given.
    pub end: Option<OffsetDateTime>,
    /// `operator`: at most one service per operator is chosen.
    pub operator: String,
}

/// A list of services of one kind and its selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Services {
    /// The services, in file order.
    pub services: Vec<Service>,
    /// The selector; `None` when the list is empty and no config was given.
    pub selector: Option<Selector>,
}

/// The parts of a `SigningConfig` waxseal uses (`caUrls` and `oidcUrls` are for
/// keyless signing and are ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningConfig {
    /// `rekorTlogUrls` with `rekorTlogConfig`.
    pub rekor: Services,
    /// `tsaUrls` with `tsaConfig`.
    pub tsa: Services,
}

/// The services chosen for one signing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chosen {
    /// Rekor logs, all of one major API version.
    pub rekor: Vec<Service>,
    /// Time-stamp authorities.
    pub tsa: Vec<Service>,
}

impl SigningConfig {
    /// Parses a `SigningConfig` v0.2 in protobuf JSON.
    pub fn parse(bytes: &[u8]) -> Result<SigningConfig, ConfigError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::NotJson(e.to_string()))?;
        let Value::Object(obj) = &v else {
            return Err(ConfigError::NotJson(
                "the top level is not an object".into(),
            ));
        };
        match obj.get("mediaType") {
            Some(Value::String(m)) if m == MEDIA_TYPE => {}
            Some(Value::String(m)) => return Err(ConfigError::MediaType(m.clone())),
            Some(other) => return Err(ConfigError::MediaType(other.to_string())),
            None => return Err(ConfigError::MediaType(String::new())),
        }
        Ok(SigningConfig {
            rekor: services(&v, "rekorTlogUrls", "rekorTlogConfig")?,
            tsa: services(&v, "tsaUrls", "tsaConfig")?,
        })
    }

    /// The services to use at `now`.
    pub fn choose(&self, now: OffsetDateTime) -> Result<Chosen, ConfigError> {
        Ok(Chosen {
            rekor: choose(
                &self.rekor,
                &REKOR_VERSIONS,
                now,
                "rekorTlogUrls",
                "rekorTlogConfig.count",
            )?,
            tsa: choose(&self.tsa, &TSA_VERSIONS, now, "tsaUrls", "tsaConfig.count")?,
        })
    }
}

impl Service {
    /// Whether `now` lies in `validFor`, both ends included.
    pub fn valid_at(&self, now: OffsetDateTime) -> bool {
        self.start.is_none_or(|s| now >= s) && self.end.is_none_or(|e| now <= e)
    }
}

/// The services of `services` to use at `now` (module doc).
fn choose(
    services: &Services,
    versions: &[u32],
    now: OffsetDateTime,
    field: &'static str,
    count_field: &'static str,
) -> Result<Vec<Service>, ConfigError> {
    let Some(selector) = services.selector else {
        return Ok(Vec::new());
    };
    if services.services.is_empty() {
        return Ok(Vec::new());
    }
    let mut newest_first: Vec<&Service> = services.services.iter().collect();
    // Stable: services with the same start keep their file order; no start sorts last.
    newest_first.sort_by_key(|s| std::cmp::Reverse(s.start));
    let mut wanted = versions.to_vec();
    wanted.sort_unstable_by_key(|v| std::cmp::Reverse(*v));
    let mut usable: Vec<Service> = Vec::new();
    for &version in &wanted {
        for s in &newest_first {
            if s.major_api_version == version
                && s.valid_at(now)
                && !usable.iter().any(|u| u.operator == s.operator)
            {
                usable.push((*s).clone());
            }
        }
        if !usable.is_empty() {
            break;
        }
    }
    if usable.is_empty() {
        return Err(ConfigError::NoValidService {
            field,
            versions: wanted
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
        });
    }
    match selector {
        Selector::Any => usable.truncate(1),
        Selector::All => {}
        Selector::Exact(count) => {
            if count as usize > usable.len() {
                return Err(ConfigError::TooFew {
                    field: count_field,
                    count,
                    usable: usable.len(),
                    urls: usable
                        .iter()
                        .map(|s| s.url.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            usable.truncate(count as usize);
        }
    }
    Ok(usable)
}

fn field_err(field: impl Into<String>, what: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        what: what.into(),
    }
}

/// The services of `list` and their selector from `config`.
fn services(v: &Value, list: &str, config: &str) -> Result<Services, ConfigError> {
    let items = match v.get(list) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Err(field_err(list, "is not a list")),
    };
    let services = items
        .iter()
        .enumerate()
        .map(|(i, s)| service(s, &format!("{list}[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let selector = match v.get(config) {
        None | Some(Value::Null) if services.is_empty() => None,
        None | Some(Value::Null) => {
            return Err(field_err(
                format!("{config}.selector"),
                format!("missing, and {list} lists services: say ANY, ALL or EXACT"),
            ))
        }
        Some(c) => Some(selector(c, config)?),
    };
    Ok(Services { services, selector })
}

fn selector(c: &Value, config: &str) -> Result<Selector, ConfigError> {
    let Value::Object(_) = c else {
        return Err(field_err(config, "is not an object"));
    };
    let field = format!("{config}.selector");
    // protobuf JSON writes enums by name and reads their numbers too.
    let name = match c.get("selector") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(1) => "ALL".into(),
            Some(2) => "ANY".into(),
            Some(3) => "EXACT".into(),
            _ => n.to_string(),
        },
        None | Some(Value::Null) => {
            return Err(field_err(field, "missing: say ANY, ALL or EXACT"));
        }
        Some(other) => other.to_string(),
    };
    let count_field = format!("{config}.count");
    let count = match c.get("count") {
        None | Some(Value::Null) => None,
        Some(n) => Some(
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| field_err(&count_field, format!("`{n}` is not a uint32")))?,
        ),
    };
    match name.as_str() {
        "ANY" => Ok(Selector::Any),
        "ALL" => Ok(Selector::All),
        "EXACT" => match count {
            Some(n) if n > 0 => Ok(Selector::Exact(n)),
            _ => Err(field_err(count_field, "EXACT needs a count of 1 or more")),
        },
        other => Err(field_err(
            field,
            format!("`{other}` is not a selector waxseal knows (ANY, ALL, EXACT)"),
        )),
    }
}

fn service(s: &Value, at: &str) -> Result<Service, ConfigError> {
    if !s.is_object() {
        return Err(field_err(at, "is not an object"));
    }
    let url = match s.get("url") {
        Some(Value::String(u)) if u.starts_with("http://") || u.starts_with("https://") => {
            u.clone()
        }
        Some(Value::String(u)) => {
            return Err(field_err(
                format!("{at}.url"),
                format!("`{u}` is not an http:// or https:// URL"),
            ))
        }
        _ => return Err(field_err(format!("{at}.url"), "missing or not a string")),
    };
    let major_api_version = match s.get("majorApiVersion") {
        None | Some(Value::Null) => 0,
        Some(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                field_err(
                    format!("{at}.majorApiVersion"),
                    format!("`{n}` is not a uint32"),
                )
            })?,
    };
    let (start, end) = match s.get("validFor") {
        None | Some(Value::Null) => (None, None),
        Some(Value::Object(r)) => (
            timestamp(r.get("start"), &format!("{at}.validFor.start"))?,
            timestamp(r.get("end"), &format!("{at}.validFor.end"))?,
        ),
        Some(_) => return Err(field_err(format!("{at}.validFor"), "is not an object")),
    };
    let operator = match s.get("operator") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(o)) => o.clone(),
        Some(_) => return Err(field_err(format!("{at}.operator"), "is not a string")),
    };
    Ok(Service {
        url,
        major_api_version,
        start,
        end,
        operator,
    })
}

/// A protobuf JSON `Timestamp`: RFC 3339, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
fn timestamp(v: Option<&Value>, field: &str) -> Result<Option<OffsetDateTime>, ConfigError> {
    let text = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(t)) => t,
        Some(other) => return Err(field_err(field, format!("`{other}` is not a string"))),
    };
    parse_rfc3339(text)
        .map(Some)
        .ok_or_else(|| field_err(field, format!("`{text}` is not an RFC 3339 time")))
}

fn parse_rfc3339(t: &str) -> Option<OffsetDateTime> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let year = i32::try_from(num(0..4)?).ok()?;
    let month = Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let date = Date::from_calendar_date(year, month, u8::try_from(num(8..10)?).ok()?).ok()?;
    let (h, m, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut rest = &t[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = frac[..digits].parse::<u32>().ok()? * 10u32.pow(9 - digits as u32);
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => UtcOffset::UTC,
        _ => {
            let ob = rest.as_bytes();
            if ob.len() != 6 || ob[3] != b':' || !matches!(ob[0], b'+' | b'-') {
                return None;
            }
            let oh = i8::try_from(rest[1..3].parse::<u8>().ok()?).ok()?;
            let om = i8::try_from(rest[4..6].parse::<u8>().ok()?).ok()?;
            let sign = if ob[0] == b'-' { -1 } else { 1 };
            UtcOffset::from_hms(sign * oh, sign * om, 0).ok()?
        }
    };
    let time = Time::from_hms_nano(
        u8::try_from(h).ok()?,
        u8::try_from(m).ok()?,
        u8::try_from(s).ok()?,
        nanos,
    )
    .ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_offset(offset))
}

/// Media types of trusted roots read.
pub const TRUSTED_ROOT_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.dev.sigstore.trustedroot.v0.2+json",
    "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
];

/// At most this many entries in each list of a trusted root, and certificates in a chain.
pub const TRUSTED_ROOT_MAX_ENTRIES: usize = 64;

/// A `TransparencyLogInstance` of a trusted root (`tlogs[]` or `ctlogs[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogInstance {
    /// `baseUrl` (a trailing `/` removed; may be empty for CT logs).
    pub base_url: String,
    /// `publicKey.rawBytes`: DER SubjectPublicKeyInfo.
    pub key: Vec<u8>,
    /// `publicKey.keyDetails` (e.g. `PKIX_ECDSA_P256_SHA_256`), empty when not given.
    pub key_details: String,
    /// `logId.keyId`; when the file leaves it out, SHA-256 of the key.
    pub key_id: Vec<u8>,
    /// `publicKey.validFor.start`.
    pub start: Option<OffsetDateTime>,
    /// `publicKey.validFor.end`.
    pub end: Option<OffsetDateTime>,
}

/// A `CertificateAuthority` of a trusted root (`certificateAuthorities[]` or
/// `timestampAuthorities[]`): its chain, issuing certificate first, root last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// `uri`, may be empty.
    pub uri: String,
    /// `certChain.certificates[].rawBytes`.
    pub chain: Vec<Vec<u8>>,
    /// `validFor.start`.
    pub start: Option<OffsetDateTime>,
    /// `validFor.end`.
    pub end: Option<OffsetDateTime>,
}

/// Whether `t` lies in `[start, end]` (both ends included; a missing end is open; a
/// missing start is open too, as protobuf-specs leaves it required but unchecked).
pub fn within(
    start: Option<OffsetDateTime>,
    end: Option<OffsetDateTime>,
    t: OffsetDateTime,
) -> bool {
    start.is_none_or(|s| t >= s) && end.is_none_or(|e| t <= e)
}

impl LogInstance {
    /// Whether the log's key was valid at `t`.
    pub fn valid_at(&self, t: OffsetDateTime) -> bool {
        within(self.start, self.end, t)
    }

    /// Whether a `TransparencyLogEntry`'s `logId.keyId` names this log: it is this log's
    /// `logId`, or the log's checkpoint key ID in full, which Rekor v2 logs put there
    /// (rekor-tiles, "TrustedRoot lookup by checkpoint key ID"), computed with the host
    /// of `baseUrl` (the checkpoints' origin) as key name by
    /// [`crate::sigstore::checkpoint_key_ids`]. The public-good
    /// trusted root already gives Rekor v2 logs this `logId`; older files give the
    /// SubjectPublicKeyInfo's hash. A wrong match only costs a failed checkpoint check.
    pub fn named_by(&self, log_id: &[u8]) -> bool {
        if self.key_id == log_id {
            return true;
        }
        let host = self
            .base_url
            .split_once("://")
            .map_or(self.base_url.as_str(), |(_, rest)| rest);
        let host = host.split('/').next().unwrap_or_default();
        if host.is_empty() {
            return false;
        }
        crate::sigstore::checkpoint_key_ids(&self.key, host)
            .iter()
            .any(|id| id[..] == *log_id)
    }
}

impl Authority {
    /// Whether the authority was valid at `t`.
    pub fn valid_at(&self, t: OffsetDateTime) -> bool {
        within(self.start, self.end, t)
    }
}

/// A Sigstore `TrustedRoot`: the keys and certificates a verifier trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedRoot {
    /// `tlogs[]`: `baseUrl` and `publicKey.rawBytes` (DER SubjectPublicKeyInfo).
    pub tlogs: Vec<(String, Vec<u8>)>,
    /// `timestampAuthorities[].certChain.certificates[].rawBytes`, one chain each.
    pub tsa_chains: Vec<Vec<Vec<u8>>>,
    /// `tlogs[]` in full: Rekor logs, found by `logId`.
    pub logs: Vec<LogInstance>,
    /// `ctlogs[]`: certificate transparency logs, found by `logId`.
    pub ctlogs: Vec<LogInstance>,
    /// `certificateAuthorities[]`: Fulcio instances.
    pub cas: Vec<Authority>,
    /// `timestampAuthorities[]` with their validity windows.
    pub tsas: Vec<Authority>,
}

/// One `TransparencyLogInstance` at `at`.
fn log_instance(t: &Value, at: &str, need_url: bool) -> Result<LogInstance, ConfigError> {
    use base64::Engine as _;
    let b64 = |v: Option<&Value>, field: String| -> Result<Vec<u8>, ConfigError> {
        v.and_then(Value::as_str)
            .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
            .ok_or_else(|| field_err(field, "missing or not base64"))
    };
    let base_url = match t.get("baseUrl").and_then(Value::as_str) {
        Some(u) => u.trim_end_matches('/').to_string(),
        None if need_url => return Err(field_err(format!("{at}.baseUrl"), "missing")),
        None => String::new(),
    };
    let pk = t.get("publicKey");
    let key = b64(
        pk.and_then(|k| k.get("rawBytes")),
        format!("{at}.publicKey.rawBytes"),
    )?;
    let key_details = match pk.and_then(|k| k.get("keyDetails")) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let key_id = match t.get("logId").and_then(|l| l.get("keyId")) {
        None | Some(Value::Null) => {
            use sha2::Digest as _;
            sha2::Sha256::digest(&key).to_vec()
        }
        v => b64(v, format!("{at}.logId.keyId"))?,
    };
    let (start, end) = valid_for(
        pk.and_then(|k| k.get("validFor")),
        &format!("{at}.publicKey.validFor"),
    )?;
    Ok(LogInstance {
        base_url,
        key,
        key_details,
        key_id,
        start,
        end,
    })
}

/// A `TimeRange` at `at`.
fn valid_for(
    v: Option<&Value>,
    at: &str,
) -> Result<(Option<OffsetDateTime>, Option<OffsetDateTime>), ConfigError> {
    match v {
        None | Some(Value::Null) => Ok((None, None)),
        Some(Value::Object(r)) => Ok((
            timestamp(r.get("start"), &format!("{at}.start"))?,
            timestamp(r.get("end"), &format!("{at}.end"))?,
        )),
        Some(_) => Err(field_err(at, "is not an object")),
    }
}

/// One `CertificateAuthority` at `at`.
fn authority(t: &Value, at: &str) -> Result<Authority, ConfigError> {
    use base64::Engine as _;
    let certs = t
        .get("certChain")
        .and_then(|c| c.get("certificates"))
        .and_then(Value::as_array)
        .ok_or_else(|| field_err(format!("{at}.certChain.certificates"), "missing"))?;
    if certs.is_empty() || certs.len() > TRUSTED_ROOT_MAX_ENTRIES {
        return Err(field_err(
            format!("{at}.certChain.certificates"),
            format!(
                "holds {} certificates (1 to {TRUSTED_ROOT_MAX_ENTRIES})",
                certs.len()
            ),
        ));
    }
    let chain = certs
        .iter()
        .enumerate()
        .map(|(j, c)| {
            c.get("rawBytes")
                .and_then(Value::as_str)
                .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
                .ok_or_else(|| {
                    field_err(
                        format!("{at}.certChain.certificates[{j}].rawBytes"),
                        "missing or not base64",
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (start, end) = valid_for(t.get("validFor"), &format!("{at}.validFor"))?;
    Ok(Authority {
        uri: t
            .get("uri")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        chain,
        start,
        end,
    })
}

impl TrustedRoot {
    /// Parses a `TrustedRoot` in protobuf JSON.
    pub fn parse(bytes: &[u8]) -> Result<TrustedRoot, ConfigError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::NotJson(e.to_string()))?;
        match v.get("mediaType").and_then(Value::as_str) {
            Some(m) if TRUSTED_ROOT_MEDIA_TYPES.contains(&m) => {}
            other => {
                return Err(field_err(
                    "mediaType",
                    format!(
                        "`{}` is not {}",
                        other.unwrap_or_default(),
                        TRUSTED_ROOT_MEDIA_TYPES.join(" or ")
                    ),
                ))
            }
        }
        let list = |name: &str| -> Result<Vec<Value>, ConfigError> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(a)) if a.len() > TRUSTED_ROOT_MAX_ENTRIES => Err(field_err(
                    name,
                    format!(
                        "lists {} entries, more than {TRUSTED_ROOT_MAX_ENTRIES}",
                        a.len()
                    ),
                )),
                Some(Value::Array(a)) => Ok(a.clone()),
                Some(_) => Err(field_err(name, "is not a list")),
            }
        };
        let logs = list("tlogs")?
            .iter()
            .enumerate()
            .map(|(i, t)| log_instance(t, &format!("tlogs[{i}]"), true))
            .collect::<Result<Vec<_>, _>>()?;
        let ctlogs = list("ctlogs")?
            .iter()
            .enumerate()
            .map(|(i, t)| log_instance(t, &format!("ctlogs[{i}]"), false))
            .collect::<Result<Vec<_>, _>>()?;
        let cas = list("certificateAuthorities")?
            .iter()
            .enumerate()
            .map(|(i, t)| authority(t, &format!("certificateAuthorities[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let tsas = list("timestampAuthorities")?
            .iter()
            .enumerate()
            .map(|(i, t)| authority(t, &format!("timestampAuthorities[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedRoot {
            tlogs: logs
                .iter()
                .map(|l| (l.base_url.clone(), l.key.clone()))
                .collect(),
            tsa_chains: tsas.iter().map(|t| t.chain.clone()).collect(),
            logs,
            ctlogs,
            cas,
            tsas,
        })
    }

    /// The key of the log at `url` (matched on `baseUrl`, a trailing `/` ignored).
    pub fn log_key(&self, url: &str) -> Option<&[u8]> {
        let url = url.trim_end_matches('/');
        self.tlogs
            .iter()
            .find(|(base, _)| base == url)
            .map(|(_, key)| key.as_slice())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    fn at(t: &str) -> OffsetDateTime {
        parse_rfc3339(t).unwrap()
    }

    fn svc(url: &str, version: u32, start: &str, end: Option<&str>, operator: &str) -> Value {
        let mut valid = json!({ "start": start });
        if let Some(end) = end {
            valid["end"] = json!(end);
        }
        json!({ "url": url, "majorApiVersion": version, "validFor": valid, "operator": operator })
    }

    fn config(rekor: Vec<Value>, rekor_cfg: Value, tsa: Vec<Value>, tsa_cfg: Value) -> Value {
        json!({
            "mediaType": MEDIA_TYPE,
            "rekorTlogUrls": rekor, "rekorTlogConfig": rekor_cfg,
            "tsaUrls": tsa, "tsaConfig": tsa_cfg,
        })
    }

    fn chosen(v: &Value, now: &str) -> Result<Chosen, ConfigError> {
        SigningConfig::parse(v.to_string().as_bytes())?.choose(at(now))
    }

    fn urls(s: &[Service]) -> Vec<&str> {
        s.iter().map(|s| s.url.as_str()).collect()
    }

    const T0: &str = "2025-01-01T00:00:00Z";
    const T1: &str = "2025-07-01T00:00:00Z";

    #[test]
    fn validity_is_closed_at_both_ends() {
        let v = config(
            vec![svc("https://r", 1, T0, Some(T1), "a")],
            json!({"selector": "ANY"}),
            vec![],
            Value::Null,
        );
        for (now, ok) in [
            ("2024-12-31T23:59:59.999999999Z", false),
            (T0, true),
            ("2025-03-01T00:00:00Z", true),
            (T1, true),
            ("2025-07-01T00:00:00.000000001Z", false),
        ] {
            let got = chosen(&v, now);
            assert_eq!(got.is_ok(), ok, "{now}: {got:?}");
            if ok {
                assert_eq!(urls(&got.unwrap().rekor), ["https://r"]);
            } else {
                assert!(
                    matches!(
                        got,
                        Err(ConfigError::NoValidService {
                            field: "rekorTlogUrls",
                            ..
                        })
                    ),
                    "{now}"
                );
            }
        }
        // An offset is honoured: 01:00+01:00 is T0.
        assert!(chosen(&v, "2025-01-01T01:00:00+01:00").is_ok());
        assert!(chosen(&v, "2025-01-01T00:59:59+01:00").is_err());
    }

    #[test]
    fn the_highest_version_valid_now_wins_and_unknown_versions_are_skipped() {
        let rekor = vec![
            svc("https://v1", 1, T0, None, "a"),
            svc(
                "https://v2-expired",
                2,
                "2024-01-01T00:00:00Z",
                Some(T0),
                "b",
            ),
            svc("https://v3", 3, T0, None, "c"),
            svc("https://v2", 2, T1, None, "d"),
        ];
        let v = config(rekor, json!({"selector": "ALL"}), vec![], Value::Null);
        // Before v2's start only v1 is valid (v3 is not a version waxseal speaks).
        assert_eq!(
            urls(&chosen(&v, "2025-02-01T00:00:00Z").unwrap().rekor),
            ["https://v1"]
        );
        // Once v2 is valid, ALL still takes only v2 logs: versions are never mixed.
        assert_eq!(
            urls(&chosen(&v, "2025-08-01T00:00:00Z").unwrap().rekor),
            ["https://v2"]
        );
    }

    #[test]
    fn newest_first_and_one_per_operator() {
        let tsa = vec![
            svc("https://old-a", 1, "2024-01-01T00:00:00Z", None, "a"),
            svc("https://new-a", 1, T0, None, "a"),
            svc("https://b", 1, "2024-06-01T00:00:00Z", None, "b"),
        ];
        let all = config(vec![], Value::Null, tsa.clone(), json!({"selector": "ALL"}));
        assert_eq!(
            urls(&chosen(&all, T1).unwrap().tsa),
            ["https://new-a", "https://b"]
        );
        let any = config(vec![], Value::Null, tsa.clone(), json!({"selector": "ANY"}));
        assert_eq!(urls(&chosen(&any, T1).unwrap().tsa), ["https://new-a"]);
        let exact = config(
            vec![],
            Value::Null,
            tsa.clone(),
            json!({"selector": "EXACT", "count": 2}),
        );
        assert_eq!(chosen(&exact, T1).unwrap().tsa.len(), 2);
        // Three listed, two operators: EXACT 3 is refused, naming the count field.
        let three = config(
            vec![],
            Value::Null,
            tsa,
            json!({"selector": "EXACT", "count": 3}),
        );
        let e = chosen(&three, T1).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::TooFew {
                    field: "tsaConfig.count",
                    count: 3,
                    usable: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("https://new-a, https://b"), "{e}");
    }

    #[test]
    fn no_services_means_none_chosen_and_no_config_needed() {
        let v =
            json!({ "mediaType": MEDIA_TYPE, "caUrls": [svc("https://fulcio", 1, T0, None, "x")] });
        assert_eq!(chosen(&v, T1).unwrap(), Chosen::default());
    }

    #[test]
    fn refusals_name_the_field() {
        let ok_rekor = vec![svc("https://r", 1, T0, None, "a")];
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"mediaType": "application/vnd.dev.sigstore.signingconfig.v0.1+json"}),
                "mediaType",
            ),
            (json!({}), "mediaType"),
            (
                config(
                    ok_rekor.clone(),
                    json!({"selector": "SOME"}),
                    vec![],
                    Value::Null,
                ),
                "rekorTlogConfig.selector: `SOME`",
            ),
            (
                config(ok_rekor.clone(), Value::Null, vec![], Value::Null),
                "rekorTlogConfig.selector",
            ),
            (
                config(
                    ok_rekor.clone(),
                    json!({"selector": "EXACT"}),
                    vec![],
                    Value::Null,
                ),
                "rekorTlogConfig.count",
            ),
            (
                config(
                    vec![svc("https://r", 1, "yesterday", None, "a")],
                    json!({"selector": "ANY"}),
                    vec![],
                    Value::Null,
                ),
                "rekorTlogUrls[0].validFor.start",
            ),
            (
                config(
                    vec![],
                    Value::Null,
                    vec![json!({"url": "ftp://t"})],
                    json!({"selector": "ANY"}),
                ),
                "tsaUrls[0].url",
            ),
            (
                config(
                    vec![],
                    Value::Null,
                    vec![json!({"url": "https://t", "majorApiVersion": "one"})],
                    json!({"selector": "ANY"}),
                ),
                "tsaUrls[0].majorApiVersion",
            ),
            (
                json!({"mediaType": MEDIA_TYPE, "tsaUrls": {}}),
                "tsaUrls: is not a list",
            ),
        ];
        for (v, names) in cases {
            let e = SigningConfig::parse(v.to_string().as_bytes()).unwrap_err();
            assert!(e.to_string().contains(names), "{names}: {e}");
        }
        assert!(matches!(
            SigningConfig::parse(b"{not json"),
            Err(ConfigError::NotJson(_))
        ));
    }

    #[test]
    fn trusted_roots_give_log_keys_by_base_url() {
        let root = json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot.v0.2+json",
            "tlogs": [{ "baseUrl": "https://log.example/", "publicKey": { "rawBytes": "AQID" } }],
            "timestampAuthorities": [{ "certChain": { "certificates": [{ "rawBytes": "BAU=" }] } }],
        });
        let r = TrustedRoot::parse(root.to_string().as_bytes()).unwrap();
        assert_eq!(r.log_key("https://log.example"), Some(&[1u8, 2, 3][..]));
        assert_eq!(r.log_key("https://other.example"), None);
        assert_eq!(r.tsa_chains, vec![vec![vec![4u8, 5]]]);
        let bad = json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot.v0.2+json",
            "tlogs": [{ "baseUrl": "https://log.example", "publicKey": {} }],
        });
        let e = TrustedRoot::parse(bad.to_string().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("tlogs[0].publicKey.rawBytes"), "{e}");
    }

    #[test]
    fn trusted_roots_give_logs_by_log_id_cas_and_validity_windows() {
        let root = json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": "https://rekor.example",
                "publicKey": { "rawBytes": "AQID", "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                               "validFor": { "start": T0, "end": T1 } },
                "logId": { "keyId": "CQk=" },
            }],
            "ctlogs": [{ "publicKey": { "rawBytes": "BAU=" } }],
            "certificateAuthorities": [{
                "uri": "https://fulcio.example",
                "certChain": { "certificates": [{ "rawBytes": "Bgc=" }, { "rawBytes": "CAk=" }] },
                "validFor": { "start": T0 },
            }],
        });
        let r = TrustedRoot::parse(root.to_string().as_bytes()).unwrap();
        let log = &r.logs[0];
        assert_eq!(log.key_id, [9u8, 9]);
        assert_eq!(log.key_details, "PKIX_ECDSA_P256_SHA_256");
        // Both ends are inside the window.
        assert!(log.valid_at(at(T0)) && log.valid_at(at(T1)));
        assert!(!log.valid_at(at("2024-12-31T23:59:59Z")));
        assert!(!log.valid_at(at("2025-07-01T00:00:01Z")));
        // No logId: SHA-256 of the key; no validFor: always.
        {
            use sha2::Digest as _;
            assert_eq!(r.ctlogs[0].key_id, sha2::Sha256::digest([4u8, 5]).to_vec());
        }
        assert!(r.ctlogs[0].valid_at(at(T0)));
        assert_eq!(r.cas[0].chain, vec![vec![6u8, 7], vec![8, 9]]);
        assert!(r.cas[0].valid_at(at(T1)) && !r.cas[0].valid_at(at("2024-06-01T00:00:00Z")));
        assert_eq!(
            r.tlogs,
            vec![("https://rekor.example".to_string(), vec![1u8, 2, 3])]
        );

        for (bad, names) in [
            (
                json!({"certificateAuthorities": [{"certChain": {"certificates": []}}]}),
                "certificateAuthorities[0].certChain.certificates",
            ),
            (
                json!({"ctlogs": [{"publicKey": {"rawBytes": "AQ==", "validFor": {"start": "soon"}}}]}),
                "ctlogs[0].publicKey.validFor.start",
            ),
            (
                json!({"tlogs": (0..65).map(|_| json!({})).collect::<Vec<_>>()}),
                "tlogs: lists 65 entries",
            ),
        ] {
            let mut v = bad;
            v["mediaType"] = json!("application/vnd.dev.sigstore.trustedroot.v0.2+json");
            let e = TrustedRoot::parse(v.to_string().as_bytes()).unwrap_err();
            assert!(e.to_string().contains(names), "{names}: {e}");
        }
    }

    #[test]
    fn selector_numbers_are_read_as_protobuf_json_allows() {
        let v = config(
            vec![
                svc("https://a", 1, T0, None, "a"),
                svc("https://b", 1, T0, None, "b"),
            ],
            json!({"selector": 1}),
            vec![],
            Value::Null,
        );
        assert_eq!(chosen(&v, T1).unwrap().rekor.len(), 2);
    }
}
