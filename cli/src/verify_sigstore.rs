//! `waxseal verify --trusted-root`: a Sigstore bundle checked against a `TrustedRoot`,
//! for a public key or for a certificate identity. The checks run in the order the
//! README's "Verifying bundles" section lists them, and each one is named: a failure
//! is reported as `verify: CHECK: what went wrong`, and `--json` lists every check run.
//!
//! 1. `bundle`: the media type (v0.1, v0.2, v0.3 in both spellings).
//! 2. `verification material`: a public-key hint for `--public-key`/`--key`, a leaf
//!    certificate (v0.3 `certificate`, v0.1/v0.2 `x509CertificateChain`'s first) for
//!    `--certificate-identity`.
//! 3. `artifact` and `signature`: the digest (message signature) or a subject of the
//!    in-toto statement (DSSE) is the artifact's, and the signature verifies.
//! 4. `tlog …`: every entry's log is found in the trusted root by `logId` and was valid
//!    at the entry's time; the body logs this signature, key or certificate; the signed
//!    entry timestamp, inclusion proof and checkpoint verify (`tlog log id`, `tlog entry
//!    body`, `tlog signed entry timestamp`, `tlog inclusion proof`, `tlog checkpoint`,
//!    `tlog integrated time` (never in the future), `tlog validity`).
//! 5. `rfc3161 timestamp`: each timestamp is over the signature, chains to one of the
//!    trusted root's `timestampAuthorities` and lies in its `validFor`.
//! 6. `signing time`: the times verified in 4 (signed entry timestamps) and 5; a
//!    certificate needs at least one: the current time is never used for it.
//! 7. Certificates, at every signing time: `certificate validity` (inside the leaf's
//!    notBefore..notAfter), `certificate chain` (to a `certificateAuthorities` entry
//!    valid then), `certificate eku` (code signing), `certificate sct` (an embedded SCT
//!    from a `ctlogs` log, verified over the precertificate), `certificate identity`
//!    (SAN email or URI) and `certificate issuer` (Fulcio's OIDC issuer extension, the
//!    v2 OID 1.3.6.1.4.1.57264.1.8 or else the v1 OID 1.3.6.1.4.1.57264.1.1).

use anyhow::{anyhow, Result};
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode as _, Encode as _};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use waxseal_proto::intoto;
use waxseal_proto::proto::HashAlg;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};
use x509_cert::Certificate;

use crate::signing_config::{Authority, TrustedRoot};
use crate::sigstore::{
    cert_spki, hash_of_name, key_hint, logged_pem_certificate, timestamps, verify_bundle, Artifact,
    Bundle, Rekor, TlogEntry,
};
use crate::tsa::{issued_by, TrustedTsa};
use crate::verify::AnyPublicKey;

const ID_SAN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const ID_EKU: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const ID_KP_CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
const ID_SCT_LIST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.4.2");
const ID_FULCIO_ISSUER_V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.1");
const ID_FULCIO_ISSUER_V2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.8");
const ID_FULCIO_OTHERNAME_SAN: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.7");

/// At most this many transparency log entries, timestamps and SCTs are read.
const MAX_ITEMS: usize = 32;

/// A failure of one named check.
#[derive(Debug)]
pub struct Named {
    /// The check's name, e.g. `tlog inclusion proof`.
    pub check: &'static str,
    /// What went wrong.
    pub detail: String,
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Named {}

impl Named {
    /// An error naming `check`.
    pub fn err(check: &'static str, detail: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Named {
            check,
            detail: detail.into(),
        })
    }

    /// The check a failure names: the innermost [`Named`] in its chain, else `fallback`.
    pub fn of(e: &anyhow::Error, fallback: &'static str) -> &'static str {
        e.chain()
            .filter_map(|c| c.downcast_ref::<Named>())
            .last()
            .map_or(fallback, |n| n.check)
    }
}

/// `return Err(Named::err(check, format!(…)))`.
macro_rules! named_bail {
    ($check:expr, $($arg:tt)*) => {
        return Err($crate::verify_sigstore::Named::err($check, format!($($arg)*)))
    };
}
pub(crate) use named_bail;

/// How a certificate field is matched: exactly, or by a regular expression (unanchored,
/// as cosign's `--certificate-identity-regexp`: write `^…$` to match the whole value).
#[derive(Debug, Clone)]
pub enum Matcher {
    /// The whole value.
    Exact(String),
    /// A regular expression.
    Regex(regex::Regex),
}

impl Matcher {
    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(s) => s == value,
            Matcher::Regex(r) => r.is_match(value),
        }
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Matcher::Exact(s) => write!(f, "`{s}`"),
            Matcher::Regex(r) => write!(f, "the regexp `{}`", r.as_str()),
        }
    }
}

/// Who must have signed.
#[derive(Debug, Clone)]
pub enum Policy {
    /// This key (DER SubjectPublicKeyInfo).
    Key(Vec<u8>),
    /// A certificate from a trusted Fulcio for this identity and OIDC issuer.
    Identity {
        /// The SAN (email or URI).
        san: Matcher,
        /// The OIDC issuer.
        issuer: Matcher,
    },
}

/// One check and its result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Its name.
    pub check: String,
    /// Passed.
    pub ok: bool,
    /// What was checked, or what failed.
    pub detail: String,
}

/// Every check run, in order; verification stops at the first failure.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every check passed.
    pub verified: bool,
    /// The artifact.
    pub artifact: String,
    /// The checks.
    pub checks: Vec<CheckResult>,
    /// The verified signing times, seconds since the epoch.
    pub signing_times: Vec<i64>,
    /// DSSE bundles: the statement's predicate type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicate_type: Option<String>,
    /// Certificates: the SAN and issuer matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<(String, String)>,
}

impl Report {
    fn pass(&mut self, check: &str, detail: impl Into<String>) {
        self.checks.push(CheckResult {
            check: check.to_string(),
            ok: true,
            detail: detail.into(),
        });
    }

    /// The failed check, if any.
    pub fn failure(&self) -> Option<&CheckResult> {
        self.checks.iter().find(|c| !c.ok)
    }
}

/// Verifies `bundle` for `artifact` under `policy` with `root`'s keys and certificates;
/// `now` only bounds log times (an integrated time after it is refused).
pub fn verify(
    bundle: &Bundle,
    artifact: &Artifact,
    policy: &Policy,
    root: &TrustedRoot,
    now: OffsetDateTime,
) -> Report {
    let mut report = Report {
        verified: false,
        artifact: artifact.to_string(),
        checks: Vec::new(),
        signing_times: Vec::new(),
        predicate_type: None,
        identity: None,
    };
    match run(&mut report, bundle, artifact, policy, root, now) {
        Ok(()) => report.verified = true,
        Err(e) => {
            let check = Named::of(&e, "bundle");
            let detail = format!("{e:#}").replace('\n', " ");
            report.checks.push(CheckResult {
                check: check.to_string(),
                ok: false,
                detail,
            });
        }
    }
    report
}

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn at(secs: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| anyhow!("time {secs}: {e}"))
}

fn x509_time(t: &x509_cert::time::Time) -> Result<OffsetDateTime> {
    let secs = i64::try_from(t.to_unix_duration().as_secs())?;
    at(secs)
}

/// The leaf certificate's DER, if the bundle carries one.
fn leaf_certificate(bundle: &Bundle) -> Result<Option<Vec<u8>>> {
    let vm = &bundle.verification_material;
    let raw = |v: &Value, field: &str| -> Result<Vec<u8>> {
        use base64::Engine as _;
        v["rawBytes"]
            .as_str()
            .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
            .ok_or_else(|| {
                Named::err(
                    "verification material",
                    format!("{field}.rawBytes is missing or not base64"),
                )
            })
    };
    match (&vm.certificate, &vm.x509_certificate_chain) {
        (Some(_), Some(_)) => named_bail!(
            "verification material",
            "the bundle has both certificate and x509CertificateChain"
        ),
        (Some(c), None) => Ok(Some(raw(c, "certificate")?)),
        (None, Some(chain)) => match chain["certificates"].as_array().map(Vec::as_slice) {
            Some([leaf, ..]) => Ok(Some(raw(leaf, "x509CertificateChain.certificates[0]")?)),
            _ => named_bail!(
                "verification material",
                "x509CertificateChain.certificates is empty or not a list"
            ),
        },
        (None, None) => Ok(None),
    }
}

fn run(
    report: &mut Report,
    bundle: &Bundle,
    artifact: &Artifact,
    policy: &Policy,
    root: &TrustedRoot,
    now: OffsetDateTime,
) -> Result<()> {
    // 1. The bundle.
    let version = match bundle.media_type.as_str() {
        "application/vnd.dev.sigstore.bundle+json;version=0.1" => 1,
        "application/vnd.dev.sigstore.bundle+json;version=0.2" => 2,
        "application/vnd.dev.sigstore.bundle.v0.3+json"
        | "application/vnd.dev.sigstore.bundle+json;version=0.3" => 3,
        other => named_bail!("bundle", "mediaType `{other}` is not a bundle v0.1–v0.3"),
    };
    report.pass("bundle", format!("media type {}", bundle.media_type));

    // 2. The key or the certificate.
    let vm = &bundle.verification_material;
    let leaf_der = leaf_certificate(bundle)?;
    let spki = match (policy, &leaf_der) {
        (Policy::Key(spki), None) => {
            if let Some(pk) = &vm.public_key {
                if !pk.hint.is_empty() && pk.hint != key_hint(spki) {
                    named_bail!(
                        "verification material",
                        "the bundle names key {} and the key given is {}",
                        pk.hint,
                        key_hint(spki)
                    );
                }
            }
            report.pass("verification material", "public key");
            spki.clone()
        }
        (Policy::Key(_), Some(_)) => named_bail!(
            "verification material",
            "the bundle is signed with a certificate: give --certificate-identity and --certificate-oidc-issuer"
        ),
        (Policy::Identity { .. }, None) => named_bail!(
            "verification material",
            "the bundle is signed with a key, not a certificate: give --public-key or --key"
        ),
        (Policy::Identity { .. }, Some(der)) => {
            let spki = cert_spki(der).map_err(|e| Named::err("verification material", format!("{e:#}")))?;
            report.pass("verification material", "certificate");
            spki
        }
    };

    // 3. The artifact and the signature (the same checks as a key-based bundle's).
    let mut bare = bundle.clone();
    bare.verification_material.public_key = None;
    bare.verification_material.certificate = None;
    bare.verification_material.x509_certificate_chain = None;
    bare.verification_material.tlog_entries.clear();
    bare.verification_material.timestamp_verification_data = None;
    let checked = verify_bundle(&bare, artifact, &spki, None, None).map_err(|e| {
        let text = format!("{e:#}");
        let check = match Named::of(&e, "") {
            "" if text.contains("digest mismatch") || text.contains("cannot open") => "artifact",
            "" => "signature",
            named => named,
        };
        Named::err(check, text)
    })?;
    report.pass("artifact", format!("{artifact}"));
    report.pass("signature", checked.alg.clone());
    report.predicate_type = checked.predicate_type.clone();

    // What the log entries must hold.
    let key =
        AnyPublicKey::from_spki(&spki).map_err(|e| Named::err("signature", format!("{e:#}")))?;
    let signature: Vec<u8> = match (&bundle.message_signature, &bundle.dsse_envelope) {
        (Some(ms), _) => ms.signature.0.clone(),
        (None, Some(env)) => env
            .signatures
            .first()
            .map(|s| s.sig.0.clone())
            .unwrap_or_default(),
        (None, None) => named_bail!("signature", "no messageSignature and no dsseEnvelope"),
    };

    // 4. Transparency log entries.
    if vm.tlog_entries.is_empty() {
        named_bail!("tlog", "the bundle has no transparency log entry");
    }
    if vm.tlog_entries.len() > MAX_ITEMS {
        named_bail!("tlog", "more than {MAX_ITEMS} transparency log entries");
    }
    let mut times: Vec<(String, OffsetDateTime)> = Vec::new();
    let mut v2_logs = Vec::new();
    for (i, e) in vm.tlog_entries.iter().enumerate() {
        let log = root
            .logs
            .iter()
            .find(|l| l.named_by(&e.log_id.key_id.0))
            .ok_or_else(|| {
                Named::err(
                    "tlog log id",
                    format!(
                        "entry {i}: log {} is not in the trusted root",
                        hex::encode(&e.log_id.key_id.0)
                    ),
                )
            })?;
        let rekor = Rekor {
            url: log.base_url.clone(),
            key_der: log.key.clone(),
        };
        let v2 = e.kind_version.version == "0.0.2";
        let result = match (&bundle.message_signature, &bundle.dsse_envelope) {
            (Some(ms), _) => {
                let hash = hash_of_name(&ms.message_digest.algorithm)?;
                rekor.check_entry_opts(
                    e,
                    hash,
                    &ms.message_digest.digest.0,
                    &signature,
                    &spki,
                    version == 1,
                    version >= 2,
                )
            }
            (None, Some(env)) => match (
                e.kind_version.kind.as_str(),
                e.kind_version.version.as_str(),
            ) {
                ("dsse", "0.0.1") => {
                    rekor.check_dsse_entry_opts(e, env, &spki, version == 1, version >= 2)
                }
                ("dsse", "0.0.2") => rekor.check_dsse_entry_v2(e, env, &spki),
                ("hashedrekord", "0.0.2") => {
                    let pae = intoto::pae(&env.payload_type, &env.payload.0);
                    let hash = key.default_hash();
                    rekor.check_entry_v2(
                        e,
                        &crate::verify::hash_bytes(hash, &pae),
                        &signature,
                        &spki,
                    )
                }
                (kind, v) => Err(Named::err(
                    "tlog entry body",
                    format!("a {kind} {v} entry is not one checked for a DSSE envelope"),
                )),
            },
            (None, None) => Err(anyhow!("no signature")),
        };
        result.map_err(|err| {
            let check = Named::of(&err, "tlog entry body");
            Named::err(
                check,
                format!("entry {i} (log index {}): {err:#}", e.log_index.0),
            )
        })?;
        if let Some(cert) = &leaf_der {
            // The log must hold the certificate itself, not only its key: what it
            // logged is what the signing time vouches for.
            match logged_certificate(e) {
                Some(logged) if &logged == cert => {}
                Some(_) => named_bail!(
                    "tlog entry body",
                    "entry {i}: the logged certificate is not the bundle's"
                ),
                None => named_bail!(
                    "tlog entry body",
                    "entry {i}: the entry logs a key, not the bundle's certificate"
                ),
            }
        }
        if v2 {
            v2_logs.push((i, log));
        } else if e.inclusion_promise.is_some() {
            let t = at(e.integrated_time.0)
                .map_err(|err| Named::err("tlog integrated time", format!("{err:#}")))?;
            if t > now {
                named_bail!(
                    "tlog integrated time",
                    "entry {i}: integrated time {} is in the future",
                    e.integrated_time.0
                );
            }
            if !log.valid_at(t) {
                named_bail!(
                    "tlog validity",
                    "entry {i}: the log's key was not valid at the integrated time {}",
                    e.integrated_time.0
                );
            }
            times.push((format!("signed entry timestamp of tlog entry {i}"), t));
        }
        report.pass(
            "tlog entry",
            format!(
                "entry {i}: log {} index {} ({} {})",
                log.base_url, e.log_index.0, e.kind_version.kind, e.kind_version.version
            ),
        );
    }

    // 5. RFC 3161 timestamps.
    let stamps = timestamps(vm).map_err(|e| Named::err("rfc3161 timestamp", format!("{e:#}")))?;
    if stamps.len() > MAX_ITEMS {
        named_bail!("rfc3161 timestamp", "more than {MAX_ITEMS} timestamps");
    }
    for (i, stamp) in stamps.iter().enumerate() {
        let t = check_timestamp(&root.tsas, stamp, &signature)
            .map_err(|e| Named::err("rfc3161 timestamp", format!("timestamp {i}: {e:#}")))?;
        report.pass("rfc3161 timestamp", format!("timestamp {i}: {}", unix(t)));
        times.push((format!("RFC 3161 timestamp {i}"), t));
    }
    // Rekor v2 logs carry no time: their keys must be valid at a verified time (or now).
    for (i, log) in v2_logs {
        let ok = if times.is_empty() {
            log.valid_at(now)
        } else {
            times.iter().all(|(_, t)| log.valid_at(*t))
        };
        if !ok {
            named_bail!(
                "tlog validity",
                "entry {i}: the log's key is not valid at the signing time"
            );
        }
    }

    // 6. The signing time.
    report.signing_times = times.iter().map(|(_, t)| unix(*t)).collect();
    let Some(cert_der) = leaf_der else {
        report.pass(
            "signing time",
            if times.is_empty() {
                "none verified (a key needs none)".to_string()
            } else {
                format!("{} verified", times.len())
            },
        );
        return Ok(());
    };
    if times.is_empty() {
        named_bail!(
            "signing time",
            "no verified time (no signed entry timestamp, no RFC 3161 timestamp): a certificate cannot be checked without one"
        );
    }
    report.pass("signing time", format!("{} verified", times.len()));

    // 7. The certificate.
    let Policy::Identity { san, issuer } = policy else {
        named_bail!(
            "verification material",
            "a certificate without an identity to match"
        );
    };
    let leaf = Certificate::from_der(&cert_der)
        .map_err(|e| Named::err("verification material", format!("the certificate: {e}")))?;
    let validity = &leaf.tbs_certificate.validity;
    let (nb, na) = (
        x509_time(&validity.not_before)?,
        x509_time(&validity.not_after)?,
    );
    for (what, t) in &times {
        if *t < nb || *t > na {
            named_bail!(
                "certificate validity",
                "the {what} ({}) is outside the certificate's validity ({}..{})",
                unix(*t),
                unix(nb),
                unix(na)
            );
        }
    }
    report.pass(
        "certificate validity",
        format!("{}..{}", unix(nb), unix(na)),
    );

    let issuer_cert = chain_to_root(&leaf, &root.cas, &times)?;
    report.pass(
        "certificate chain",
        issuer_cert.tbs_certificate.subject.to_string(),
    );

    let ext = |oid: ObjectIdentifier| {
        leaf.tbs_certificate
            .extensions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|e| e.extn_id == oid)
    };
    let code_signing = ext(ID_EKU)
        .and_then(|e| ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok())
        .is_some_and(|eku| eku.0.contains(&ID_KP_CODE_SIGNING));
    if !code_signing {
        named_bail!("certificate eku", "the certificate is not for code signing");
    }
    report.pass("certificate eku", "code signing");

    let log = check_scts(&leaf, &issuer_cert, root)?;
    report.pass("certificate sct", format!("log {}", hex::encode(log)));

    let sans = identities(&leaf);
    let Some(who) = sans.iter().find(|s| san.matches(s)) else {
        named_bail!(
            "certificate identity",
            "the certificate is for {}, not {san}",
            if sans.is_empty() {
                "no email, URI or username".to_string()
            } else {
                sans.join(", ")
            }
        );
    };
    report.pass("certificate identity", who.clone());

    let oidc = match (ext(ID_FULCIO_ISSUER_V2), ext(ID_FULCIO_ISSUER_V1)) {
        (Some(v2), _) => der::asn1::Utf8StringRef::from_der(v2.extn_value.as_bytes())
            .map(|s| s.as_str().to_string())
            .map_err(|e| {
                Named::err(
                    "certificate issuer",
                    format!("the OIDC issuer extension (v2) is not a UTF8String: {e}"),
                )
            })?,
        (None, Some(v1)) => String::from_utf8(v1.extn_value.as_bytes().to_vec()).map_err(|_| {
            Named::err(
                "certificate issuer",
                "the OIDC issuer extension (v1) is not UTF-8",
            )
        })?,
        (None, None) => named_bail!("certificate issuer", "the certificate names no OIDC issuer"),
    };
    if !issuer.matches(&oidc) {
        named_bail!(
            "certificate issuer",
            "the certificate's OIDC issuer is `{oidc}`, not {issuer}"
        );
    }
    report.pass("certificate issuer", oidc.clone());
    report.identity = Some((who.clone(), oidc));
    Ok(())
}

/// The identities a Fulcio certificate's SAN extension names: email addresses, URIs, and
/// Fulcio's usernames (its certificate specification, "Username": an otherName of type
/// 1.3.6.1.4.1.57264.1.7 holding a UTF8String). Other names are not identities here.
fn identities(leaf: &Certificate) -> Vec<String> {
    leaf.tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.extn_id == ID_SAN)
        .and_then(|e| SubjectAltName::from_der(e.extn_value.as_bytes()).ok())
        .map(|s| {
            s.0.iter()
                .filter_map(|n| match n {
                    GeneralName::Rfc822Name(v) => Some(v.to_string()),
                    GeneralName::UniformResourceIdentifier(v) => Some(v.to_string()),
                    GeneralName::OtherName(o) if o.type_id == ID_FULCIO_OTHERNAME_SAN => o
                        .value
                        .decode_as::<der::asn1::Utf8StringRef<'_>>()
                        .ok()
                        .map(|u| u.as_str().to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The certificate a Rekor entry logs as its verifier, if it logs one.
fn logged_certificate(e: &TlogEntry) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let b64 = |v: &Value| {
        v.as_str()
            .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
    };
    let body: Value = serde_json::from_slice(&e.canonicalized_body.0).ok()?;
    let spec = &body["spec"];
    match (body["kind"].as_str()?, body["apiVersion"].as_str()?) {
        ("hashedrekord", "0.0.1") => {
            logged_pem_certificate(&b64(&spec["signature"]["publicKey"]["content"])?)
        }
        ("dsse", "0.0.1") => logged_pem_certificate(&b64(&spec["signatures"][0]["verifier"])?),
        ("hashedrekord", "0.0.2") => {
            b64(&spec["hashedRekordV002"]["signature"]["verifier"]["x509Certificate"]["rawBytes"])
        }
        ("dsse", "0.0.2") => {
            b64(&spec["dsseV002"]["signatures"][0]["verifier"]["x509Certificate"]["rawBytes"])
        }
        _ => None,
    }
}

/// Checks one `TimeStampResp` over `signature` against the trusted TSAs: the token
/// verifies, its certificate chains to one of them, and its time lies in that TSA's
/// `validFor`.
fn check_timestamp(tsas: &[Authority], stamp: &[u8], signature: &[u8]) -> Result<OffsetDateTime> {
    if tsas.is_empty() {
        anyhow::bail!("the trusted root has no timestampAuthorities");
    }
    let mut errors = Vec::new();
    for (i, a) in tsas.iter().enumerate() {
        let trusted = TrustedTsa::from_der(&a.chain)?;
        match trusted.check(stamp, signature) {
            Ok(t) => {
                let secs = t
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let t = at(i64::try_from(secs)?)?;
                if a.valid_at(t) {
                    return Ok(t);
                }
                errors.push(format!(
                    "timestampAuthorities[{i}]: the time {secs} is outside its validFor"
                ));
            }
            Err(e) => errors.push(format!("timestampAuthorities[{i}]: {e:#}")),
        }
    }
    anyhow::bail!("{}", errors.join("; "))
}

/// The certificate that issued `leaf`: the first certificate of a trusted root's
/// `certificateAuthorities` chain valid at every signing time, each link of the chain
/// signed by the next and valid at those times.
fn chain_to_root(
    leaf: &Certificate,
    cas: &[Authority],
    times: &[(String, OffsetDateTime)],
) -> Result<Certificate> {
    let mut why = Vec::new();
    for (i, ca) in cas.iter().enumerate() {
        if !times.iter().all(|(_, t)| ca.valid_at(*t)) {
            why.push(format!(
                "certificateAuthorities[{i}] is not valid at the signing time"
            ));
            continue;
        }
        match check_chain(leaf, ca, times) {
            Ok(issuer) => return Ok(issuer),
            Err(e) => why.push(format!("certificateAuthorities[{i}]: {e:#}")),
        }
    }
    if why.is_empty() {
        why.push("the trusted root has no certificateAuthorities".into());
    }
    named_bail!("certificate chain", "{}", why.join("; "))
}

/// Checks `leaf` against one authority's chain; returns the certificate that issued it.
fn check_chain(
    leaf: &Certificate,
    ca: &Authority,
    times: &[(String, OffsetDateTime)],
) -> Result<Certificate> {
    let chain = ca
        .chain
        .iter()
        .map(|c| Certificate::from_der(c).map_err(|e| anyhow!("not a certificate: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let mut child = leaf;
    for c in &chain {
        if c.tbs_certificate.subject != child.tbs_certificate.issuer {
            anyhow::bail!(
                "{} did not issue {}",
                c.tbs_certificate.subject,
                child.tbs_certificate.subject
            );
        }
        issued_by(child, c)?;
        let v = &c.tbs_certificate.validity;
        let (nb, na) = (x509_time(&v.not_before)?, x509_time(&v.not_after)?);
        if times.iter().any(|(_, t)| *t < nb || *t > na) {
            anyhow::bail!(
                "{} is not valid at the signing time",
                c.tbs_certificate.subject
            );
        }
        child = c;
    }
    chain
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("the chain is empty"))
}

/// Verifies the leaf's embedded SCTs (RFC 6962 section 3.2: the signature is over the
/// precertificate's TBS, the leaf's without the SCT list, and the issuer key's hash).
/// At least one must verify with a `ctlogs` key valid at the SCT's time; an SCT from a
/// log the trusted root does not list fails. Returns the first verified log's id.
fn check_scts(leaf: &Certificate, issuer: &Certificate, root: &TrustedRoot) -> Result<Vec<u8>> {
    let fail = |d: String| Named::err("certificate sct", d);
    let exts = leaf
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default();
    let ext = exts
        .iter()
        .find(|e| e.extn_id == ID_SCT_LIST)
        .ok_or_else(|| fail("the certificate has no embedded SCT".into()))?;
    let list = OctetString::from_der(ext.extn_value.as_bytes())
        .map_err(|e| fail(format!("the SCT list is not an OCTET STRING: {e}")))?;
    let scts = parse_sct_list(list.as_bytes()).map_err(|e| fail(format!("{e:#}")))?;
    let mut tbs = leaf.tbs_certificate.clone();
    if let Some(exts) = tbs.extensions.as_mut() {
        exts.retain(|e| e.extn_id != ID_SCT_LIST);
    }
    let tbs_der = tbs
        .to_der()
        .map_err(|e| fail(format!("the precertificate: {e}")))?;
    let issuer_key_hash = Sha256::digest(
        issuer
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| fail(format!("the issuer's key: {e}")))?,
    );
    let mut verified = None;
    for (i, sct) in scts.iter().enumerate() {
        let Some(log) = root.ctlogs.iter().find(|l| l.key_id == sct.log_id) else {
            return Err(fail(format!(
                "SCT {i} is from log {}, which is not among the trusted root's ctlogs",
                hex::encode(sct.log_id)
            )));
        };
        let when = at(i64::try_from(sct.timestamp_ms / 1000)?)?;
        if !log.valid_at(when) {
            return Err(fail(format!(
                "SCT {i}: the log's key was not valid at the SCT's time {}",
                unix(when)
            )));
        }
        let tbs_len = u32::try_from(tbs_der.len())?;
        if tbs_len >= 1 << 24 {
            return Err(fail("the precertificate is too long".into()));
        }
        let mut signed = vec![0u8, 0u8];
        signed.extend_from_slice(&sct.timestamp_ms.to_be_bytes());
        signed.extend_from_slice(&1u16.to_be_bytes());
        signed.extend_from_slice(&issuer_key_hash);
        signed.extend_from_slice(&tbs_len.to_be_bytes()[1..]);
        signed.extend_from_slice(&tbs_der);
        signed.extend_from_slice(&u16::try_from(sct.extensions.len())?.to_be_bytes());
        signed.extend_from_slice(&sct.extensions);
        let key = AnyPublicKey::from_spki(&log.key).map_err(|e| fail(format!("{e:#}")))?;
        if sct.hash_alg != 4 {
            return Err(fail(format!(
                "SCT {i}: hash algorithm {} is not SHA-256",
                sct.hash_alg
            )));
        }
        let ok = match (sct.sig_alg, &key) {
            (3, AnyPublicKey::P256(_) | AnyPublicKey::P384(_)) | (1, AnyPublicKey::Rsa(_)) => key
                .verify_digest(
                    &Sha256::digest(&signed),
                    HashAlg::Sha256,
                    &sct.signature,
                    false,
                )
                .is_ok(),
            _ => false,
        };
        if !ok {
            return Err(fail(format!(
                "SCT {i}: the signature does not verify with the key of log {}",
                hex::encode(sct.log_id)
            )));
        }
        verified.get_or_insert(sct.log_id.to_vec());
    }
    verified.ok_or_else(|| fail("the SCT list is empty".into()))
}

/// One `SignedCertificateTimestamp` (RFC 6962 section 3.2).
struct Sct {
    log_id: [u8; 32],
    timestamp_ms: u64,
    extensions: Vec<u8>,
    hash_alg: u8,
    sig_alg: u8,
    signature: Vec<u8>,
}

/// A TLS `SignedCertificateTimestampList`.
fn parse_sct_list(data: &[u8]) -> Result<Vec<Sct>> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16()?);
    if !r.0.is_empty() {
        anyhow::bail!("bytes after the SCT list");
    }
    let mut out = Vec::new();
    while !list.0.is_empty() {
        if out.len() >= MAX_ITEMS {
            anyhow::bail!("more than {MAX_ITEMS} SCTs");
        }
        let mut s = Reader(list.vec16()?);
        let version = s.take(1)?[0];
        if version != 0 {
            anyhow::bail!("SCT version {version} is not v1");
        }
        let mut log_id = [0u8; 32];
        log_id.copy_from_slice(s.take(32)?);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(s.take(8)?);
        let extensions = s.vec16()?.to_vec();
        let hash_alg = s.take(1)?[0];
        let sig_alg = s.take(1)?[0];
        let signature = s.vec16()?.to_vec();
        if !s.0.is_empty() {
            anyhow::bail!("bytes after an SCT");
        }
        out.push(Sct {
            log_id,
            timestamp_ms: u64::from_be_bytes(ts),
            extensions,
            hash_alg,
            sig_alg,
            signature,
        });
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            anyhow::bail!("the SCT list is truncated");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn vec16(&mut self) -> Result<&'a [u8]> {
        let len = self.take(2)?;
        let n = usize::from(u16::from_be_bytes([len[0], len[1]]));
        self.take(n)
    }
}

/// What to say when neither `--trusted-root` nor a default trusted root is there.
pub const NO_TRUSTED_ROOT: &str = "no --trusted-root and no default trusted root: run `waxseal trust update` to fetch the public-good instance's, or give --trusted-root FILE";

/// The trusted root used without `--trusted-root`: the one `waxseal trust update` last
/// stored, else the public-good instance's shipped with the binary (`crate::trustroot`).
pub fn default_trusted_root() -> Option<Vec<u8>> {
    crate::trustroot::default_trusted_root()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn sct(log: u8, sig: &[u8]) -> Vec<u8> {
        let mut s = vec![0u8];
        s.extend_from_slice(&[log; 32]);
        s.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
        s.extend_from_slice(&[0, 0, 4, 3]);
        s.extend_from_slice(&u16::try_from(sig.len()).unwrap().to_be_bytes());
        s.extend_from_slice(sig);
        s
    }

    fn list(scts: &[Vec<u8>]) -> Vec<u8> {
        let mut body = Vec::new();
        for s in scts {
            body.extend_from_slice(&u16::try_from(s.len()).unwrap().to_be_bytes());
            body.extend_from_slice(s);
        }
        let mut out = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    #[test]
    fn sct_lists_parse_and_malformed_ones_are_refused() {
        let l = list(&[sct(1, b"sig-one"), sct(2, b"sig-two")]);
        let scts = parse_sct_list(&l).unwrap();
        assert_eq!(scts.len(), 2);
        assert_eq!(scts[1].log_id, [2u8; 32]);
        assert_eq!(scts[0].timestamp_ms, 1_700_000_000_000);
        assert_eq!((scts[0].hash_alg, scts[0].sig_alg), (4, 3));
        assert_eq!(scts[1].signature, b"sig-two");
        // Every truncation is an error, never a panic.
        for n in 0..l.len() {
            assert!(parse_sct_list(&l[..n]).is_err(), "{n}");
        }
        let mut trailing = l.clone();
        trailing.push(0);
        assert!(parse_sct_list(&trailing).is_err());
        let mut v2 = sct(1, b"s");
        v2[0] = 1;
        assert!(parse_sct_list(&list(&[v2])).is_err());
    }

    #[test]
    fn the_innermost_named_check_names_a_failure() {
        let e = Named::err("tlog inclusion proof", "wrong root")
            .context("entry 0")
            .context(Named::err("tlog entry body", "outer").to_string());
        assert_eq!(Named::of(&e, "bundle"), "tlog inclusion proof");
        assert_eq!(Named::of(&anyhow!("plain"), "bundle"), "bundle");
    }

    #[test]
    fn identities_are_emails_uris_and_fulcio_usernames() {
        use p256::pkcs8::EncodePublicKey as _;
        use rcgen::{CertificateParams, OtherNameValue, SanType};
        let sk = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let spki = sk.verifying_key().to_public_key_der().unwrap();
        let key = crate::ca::RemoteSigner::new(
            crate::ca::KeyMaterial::from_spki(spki.as_bytes()).unwrap(),
            |tbs: &[u8]| {
                use p256::ecdsa::signature::Signer as _;
                let sig: p256::ecdsa::Signature = sk.sign(tbs);
                Ok(sig.to_der().as_bytes().to_vec())
            },
        );
        let mut params = CertificateParams::default();
        params.serial_number = Some(crate::ca::random_serial().unwrap());
        params.subject_alt_names = vec![
            SanType::Rfc822Name("dev@example.com".try_into().unwrap()),
            SanType::URI(
                "https://github.com/o/r/.github/workflows/w.yml@refs/heads/main"
                    .try_into()
                    .unwrap(),
            ),
            // Fulcio's username SAN, and an otherName of another type (not an identity).
            SanType::OtherName((
                vec![1, 3, 6, 1, 4, 1, 57264, 1, 7],
                OtherNameValue::Utf8String("alice!example.com".into()),
            )),
            SanType::OtherName((
                vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
                OtherNameValue::Utf8String("upn@example.com".into()),
            )),
            SanType::DnsName("example.com".try_into().unwrap()),
        ];
        let der = params.self_signed(&key).unwrap().der().to_vec();
        let cert = Certificate::from_der(&der).unwrap();
        assert_eq!(
            identities(&cert),
            [
                "dev@example.com",
                "https://github.com/o/r/.github/workflows/w.yml@refs/heads/main",
                "alice!example.com",
            ]
        );
        params.subject_alt_names.clear();
        let none = params.self_signed(&key).unwrap().der().to_vec();
        assert!(identities(&Certificate::from_der(&none).unwrap()).is_empty());
    }

    #[test]
    fn matchers_are_exact_or_unanchored_regexps() {
        let exact = Matcher::Exact("a@example.com".into());
        assert!(exact.matches("a@example.com"));
        assert!(!exact.matches("xa@example.com"));
        let re = Matcher::Regex(regex::Regex::new("@example\\.com$").unwrap());
        assert!(re.matches("a@example.com"));
        assert!(!re.matches("a@example.com.evil"));
    }
}
