//! `waxseal ca root|intermediate|tsa|crl|trusted-root`: a Fulcio CA whose keys stay in
//! the agent's devices, the TSA certificate, CRLs and the trusted root of a private
//! Sigstore deployment (README.md, "Running a Fulcio CA on waxseal").
//!
//! The TBSCertificates are built here with rcgen ([`waxseal::ca`]); the agent signs them
//! with purpose `x509-tbs`, parsing and logging each one. Every certificate is parsed
//! back and its signature checked before it is written, and an existing output file is
//! never replaced.

use std::cell::RefCell;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use waxseal::ca::{self, KeyMaterial, RemoteSigner, RootInfo, SignFn};
use waxseal::ca_template::{self, Kind};
use waxseal_proto::client::Client;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::transcript::{Signed, TranscriptArgs};
use super::Ctx;
use crate::{CaCommand, TranscriptCommand};

/// What was issued, for `--json` and the summary.
#[derive(Debug, Serialize)]
struct Issued {
    subject: String,
    issuer: String,
    serial: String,
    not_before: String,
    not_after: String,
    sha256_fingerprint: String,
    out: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pkcs11_id: Option<String>,
}

pub fn run(ctx: &Ctx, cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Root {
            key,
            cn,
            org,
            days,
            template,
            out,
            pkcs11_store,
            record,
        } => root(
            ctx,
            &Root {
                key: &key,
                cn: cn.as_deref(),
                org: org.as_deref(),
                days,
                template: template.as_deref(),
                out: &out,
                pkcs11_store: pkcs11_store.as_deref(),
                record: &record,
            },
        ),
        CaCommand::Transcript(TranscriptCommand::Verify {
            dir,
            witness_public_key,
        }) => super::transcript::verify(ctx, &dir, witness_public_key.as_deref()),
        CaCommand::Intermediate {
            key,
            csr,
            root_key,
            root_cert,
            cn,
            org,
            days,
            template,
            out,
            record,
        } => intermediate(
            ctx,
            &Intermediate {
                key: key.as_deref(),
                csr: csr.as_deref(),
                root_key: &root_key,
                root_cert: &root_cert,
                cn: cn.as_deref(),
                org: org.as_deref(),
                days,
                template: template.as_deref(),
                out: &out,
                record: &record,
            },
        ),
        CaCommand::Tsa {
            key,
            public_key,
            issuer_key,
            issuer_chain,
            cn,
            org,
            days,
            template,
            out,
            record,
        } => tsa(
            ctx,
            &Tsa {
                key: key.as_deref(),
                public_key: public_key.as_deref(),
                issuer_key: &issuer_key,
                issuer_chain: &issuer_chain,
                cn: cn.as_deref(),
                org: org.as_deref(),
                days,
                template: template.as_deref(),
                out: &out,
                record: &record,
            },
        ),
        CaCommand::TrustedRoot {
            ca_chain,
            ca_url,
            rekor_url,
            rekor_key,
            ctlog_url,
            ctlog_key,
            logs_valid_from,
            tsa_chain,
            tsa_url,
            out,
        } => trusted_root(
            ctx,
            &TrustedRootArgs {
                ca_chain: &ca_chain,
                ca_url: ca_url.as_deref(),
                rekor: rekor_url.as_deref().zip(rekor_key.as_deref()),
                ctlog: ctlog_url.as_deref().zip(ctlog_key.as_deref()),
                logs_valid_from: logs_valid_from.as_deref(),
                tsa_chain: tsa_chain.as_deref(),
                tsa_url: tsa_url.as_deref(),
                out: &out,
            },
        ),
        CaCommand::Crl {
            key,
            issuer_cert,
            revoke,
            reason,
            crl_number,
            days,
            out,
            record,
        } => crl(
            ctx,
            &Crl {
                key: &key,
                issuer_cert: &issuer_cert,
                revoke: &revoke,
                reason: &reason,
                crl_number,
                days,
                out: &out,
                record: &record,
            },
        ),
    }
}

/// `waxseal ca crl`, as typed.
#[derive(Debug, Clone, Copy)]
struct Crl<'a> {
    key: &'a str,
    issuer_cert: &'a Path,
    revoke: &'a [PathBuf],
    reason: &'a str,
    crl_number: Option<u64>,
    days: u32,
    out: &'a Path,
    record: &'a TranscriptArgs,
}

/// At most this many certificates revoked by one `ca crl`.
const MAX_REVOKE: usize = 1000;

fn crl(ctx: &Ctx, req: &Crl<'_>) -> Result<()> {
    use rcgen::{
        CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams,
    };
    refuse_existing(req.out)?;
    req.record.check()?;
    let reason = match req.reason {
        "unspecified" => RevocationReason::Unspecified,
        "keyCompromise" => RevocationReason::KeyCompromise,
        "caCompromise" => RevocationReason::CaCompromise,
        "affiliationChanged" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessationOfOperation" => RevocationReason::CessationOfOperation,
        other => bail!("--reason {other:?} is not unspecified, keyCompromise, caCompromise, affiliationChanged, superseded or cessationOfOperation"),
    };
    if req.revoke.len() > MAX_REVOKE {
        bail!("at most {MAX_REVOKE} certificates per CRL");
    }
    let data = fs::read(req.issuer_cert).with_context(|| {
        format!(
            "cannot read the CA certificate {}",
            req.issuer_cert.display()
        )
    })?;
    let first = ca::pem_certificates(&data, MAX_CHAIN)
        .with_context(|| format!("{} is not a PEM certificate", req.issuer_cert.display()))?
        .remove(0);
    let issuer = RootInfo::parse(&first)
        .with_context(|| format!("{} cannot sign a CRL", req.issuer_cert.display()))?;
    let (_, issuer_cert) = X509Certificate::from_der(&issuer.der)
        .map_err(|e| anyhow!("{} does not parse: {e}", req.issuer_cert.display()))?;
    if !matches!(issuer_cert.key_usage(), Ok(Some(ku)) if ku.value.crl_sign()) {
        bail!(
            "{} may not sign CRLs (keyUsage cRLSign missing)",
            issuer.subject
        );
    }
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0)?;
    let mut revoked = Vec::new();
    for path in req.revoke {
        let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let der = ca::pem_certificates(&data, MAX_CHAIN)
            .with_context(|| format!("{} is not a PEM certificate", path.display()))?
            .remove(0);
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| anyhow!("{} does not parse: {e}", path.display()))?;
        if cert.issuer().as_raw() != issuer_cert.subject().as_raw()
            || ca::check_signature(&der, &issuer.spki).is_err()
        {
            bail!(
                "{} ({}) was not issued by {}: a CRL revokes only its issuer's certificates",
                path.display(),
                cert.subject(),
                issuer.subject
            );
        }
        revoked.push(RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(cert.tbs_certificate.raw_serial()),
            revocation_time: now,
            reason_code: Some(reason),
            invalidity_date: None,
        });
    }
    let client = RefCell::new(ctx.connect()?);
    req.record.check_witness(&mut client.borrow_mut())?;
    let public = client
        .borrow_mut()
        .public_key(req.key)
        .with_context(|| format!("cannot read the public key of {}", req.key))?;
    if public.spki_der.0 != issuer.spki {
        bail!(
            "{} is not {}'s certificate: its public key differs",
            req.issuer_cert.display(),
            req.key
        );
    }
    let material = KeyMaterial::from_spki(&public.spki_der.0)?;
    let key = req.key;
    let client_ref = &client;
    let sent = RefCell::new(Vec::new());
    let sent_ref = &sent;
    let sign: SignFn<'_> = Box::new(move |tbs: &[u8]| {
        let signed = client_ref
            .borrow_mut()
            .sign_crl(key, tbs)
            .map_err(|e| anyhow!("{key} did not sign the CRL: {e}"))?;
        sent_ref.borrow_mut().push(tbs.to_vec());
        Ok(signed.signature.0)
    });
    let signer = RemoteSigner::new(material, sign);
    let rc_issuer = ca::issuer_from_cert(&issuer.der, signer)?;
    let number = match req.crl_number {
        Some(n) => n,
        None => u64::try_from(now.unix_timestamp()).unwrap_or(1),
    };
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + time::Duration::days(i64::from(req.days)),
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::PreSpecified(
            ca::subject_key_id(&issuer.der).unwrap_or_default(),
        ),
    };
    let list = params
        .signed_by(&rc_issuer)
        .map_err(|e| rc_issuer.key().explain(e))?;
    let der = list.der().to_vec();
    ca::check_crl_signature(&der, &issuer.spki)?;
    let crl_pem = ca::pem("X509 CRL", &der);
    write_new(req.out, &crl_pem)?;
    req.record.write(
        &mut client.borrow_mut(),
        &Signed {
            key: req.key,
            tbs: &last(&sent)?,
            results: vec![
                ("crl.pem", crl_pem.into_bytes()),
                ("issuer.pem", ca::cert_pem(&issuer.der).into_bytes()),
            ],
        },
    )?;
    let serials: Vec<String> = req
        .revoke
        .iter()
        .filter_map(|p| fs::read(p).ok())
        .filter_map(|d| ca::pem_certificates(&d, MAX_CHAIN).ok())
        .filter_map(|c| {
            X509Certificate::from_der(&c[0])
                .ok()
                .map(|(_, c)| c.tbs_certificate.raw_serial_as_string())
        })
        .collect();
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "out": req.out,
            "issuer": issuer.subject,
            "crl_number": number,
            "revoked": serials,
        }));
    }
    outln!("CRL written to {}", req.out.display());
    outln!("  issuer       {}", issuer.subject);
    outln!("  CRL number   {number}");
    outln!(
        "  revoked      {}",
        if serials.is_empty() {
            "nothing".to_string()
        } else {
            serials.join(", ")
        }
    );
    Ok(())
}

/// `waxseal ca trusted-root`, as typed.
#[derive(Debug, Clone, Copy)]
struct TrustedRootArgs<'a> {
    ca_chain: &'a [PathBuf],
    ca_url: Option<&'a str>,
    rekor: Option<(&'a str, &'a Path)>,
    ctlog: Option<(&'a str, &'a Path)>,
    logs_valid_from: Option<&'a str>,
    tsa_chain: Option<&'a Path>,
    tsa_url: Option<&'a str>,
    out: &'a Path,
}

/// RFC 3339 UTC, seconds precision, as Sigstore's JSON writes timestamps.
fn rfc3339(t: time::OffsetDateTime) -> Result<String> {
    let t = t.to_offset(time::UtcOffset::UTC);
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// A `CertificateAuthority` entry: subject (O and CN of the chain's first
/// certificate), uri, the chain, and validFor = that certificate's validity.
fn authority(path: &Path, url: Option<&str>, eku: (&str, &str)) -> Result<serde_json::Value> {
    use base64::Engine as _;
    if let Some(url) = url {
        check_url(url)?;
    }
    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let ders = ca::pem_certificates(&data, MAX_CHAIN)
        .with_context(|| format!("{} is not a PEM certificate chain", path.display()))?;
    ca::check_chain(&ders, Some(eku))
        .with_context(|| format!("{} is not a valid chain for {}", path.display(), eku.1))?;
    let (_, first) = X509Certificate::from_der(&ders[0])
        .map_err(|e| anyhow!("{} does not parse: {e}", path.display()))?;
    let attr = |oid| {
        first
            .subject()
            .iter_by_oid(oid)
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    use x509_parser::oid_registry::{OID_X509_COMMON_NAME, OID_X509_ORGANIZATION_NAME};
    let v = first.validity();
    let (org, cn) = (
        attr(&OID_X509_ORGANIZATION_NAME),
        attr(&OID_X509_COMMON_NAME),
    );
    Ok(serde_json::json!({
        "subject": { "organization": org, "commonName": cn },
        "uri": url.unwrap_or_default(),
        "certChain": {
            "certificates": ders
                .iter()
                .map(|d| serde_json::json!({ "rawBytes": base64::engine::general_purpose::STANDARD.encode(d) }))
                .collect::<Vec<_>>(),
        },
        "validFor": {
            "start": rfc3339(v.not_before.to_datetime())?,
            "end": rfc3339(v.not_after.to_datetime())?,
        },
    }))
}

/// A `TransparencyLogInstance`: baseUrl, hashAlgorithm, the key with its details and
/// validFor.start, and logId.keyId = SHA-256 of the DER SubjectPublicKeyInfo (how
/// Rekor and CT logs name themselves).
fn log_instance(url: &str, key: &Path, start: &str) -> Result<serde_json::Value> {
    use base64::Engine as _;
    use rsa::traits::PublicKeyParts as _;
    check_url(url)?;
    let spki = read_public_key(key)?;
    let details = match waxseal::verify::AnyPublicKey::from_spki(&spki)
        .with_context(|| format!("{} is not a log key waxseal reads", key.display()))?
    {
        waxseal::verify::AnyPublicKey::P256(_) => "PKIX_ECDSA_P256_SHA_256".to_string(),
        waxseal::verify::AnyPublicKey::P384(_) => "PKIX_ECDSA_P384_SHA_384".to_string(),
        waxseal::verify::AnyPublicKey::Ed25519(_) => "PKIX_ED25519".to_string(),
        waxseal::verify::AnyPublicKey::Rsa(k) => {
            format!("PKIX_RSA_PKCS1V15_{}_SHA256", k.size() * 8)
        }
    };
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    Ok(serde_json::json!({
        "baseUrl": url.trim_end_matches('/'),
        "hashAlgorithm": "SHA2_256",
        "publicKey": {
            "rawBytes": b64(&spki),
            "keyDetails": details,
            "validFor": { "start": start },
        },
        "logId": { "keyId": b64(&Sha256::digest(&spki)) },
    }))
}

/// A service URL for the trusted root: http(s), at most 2048 bytes.
fn check_url(url: &str) -> Result<()> {
    if url.len() > 2048 || !(url.starts_with("https://") || url.starts_with("http://")) {
        bail!("{url:?} is not an http(s) URL of at most 2048 bytes");
    }
    Ok(())
}

fn trusted_root(ctx: &Ctx, a: &TrustedRootArgs<'_>) -> Result<()> {
    refuse_existing(a.out)?;
    if a.ca_chain.len() > MAX_CHAIN {
        bail!("at most {MAX_CHAIN} --ca-chain files");
    }
    if a.ca_chain.is_empty() && a.rekor.is_none() && a.tsa_chain.is_none() {
        bail!("name at least one of --ca-chain, --rekor-url/--rekor-key, --tsa-chain");
    }
    let start = match a.logs_valid_from {
        Some(t) => {
            let parsed =
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                    .with_context(|| format!("--logs-valid-from {t:?} is not an RFC 3339 time"))?;
            rfc3339(parsed)?
        }
        None => rfc3339(time::OffsetDateTime::now_utc())?,
    };
    let mut root = serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.trustedroot.v0.2+json",
        "tlogs": [],
        "certificateAuthorities": [],
        "ctlogs": [],
        "timestampAuthorities": [],
    });
    root["certificateAuthorities"] = serde_json::Value::Array(
        a.ca_chain
            .iter()
            .map(|chain| authority(chain, a.ca_url, ("1.3.6.1.5.5.7.3.3", "codeSigning")))
            .collect::<Result<Vec<_>>>()?,
    );
    if let Some((url, key)) = a.rekor {
        root["tlogs"] = serde_json::json!([
            log_instance(url, key, &start).with_context(|| format!("the Rekor log {url}"))?
        ]);
    }
    if let Some((url, key)) = a.ctlog {
        root["ctlogs"] = serde_json::json!([
            log_instance(url, key, &start).with_context(|| format!("the CT log {url}"))?
        ]);
    }
    if let Some(chain) = a.tsa_chain {
        tsa_leaf_check(chain)?;
        root["timestampAuthorities"] = serde_json::json!([authority(
            chain,
            a.tsa_url,
            ("1.3.6.1.5.5.7.3.8", "timeStamping")
        )?]);
    }
    let mut text = serde_json::to_string_pretty(&root)?;
    text.push('\n');
    write_new(a.out, &text)?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({ "out": a.out }));
    }
    outln!("trusted root written to {}", a.out.display());
    Ok(())
}

/// The TSA chain's first certificate must be a timestamping certificate: not a CA,
/// its only extended key usage timeStamping, critical.
fn tsa_leaf_check(chain: &Path) -> Result<()> {
    let data = fs::read(chain).with_context(|| format!("cannot read {}", chain.display()))?;
    let ders = ca::pem_certificates(&data, MAX_CHAIN)
        .with_context(|| format!("{} is not a PEM certificate chain", chain.display()))?;
    let (_, leaf) = X509Certificate::from_der(&ders[0])
        .map_err(|e| anyhow!("{} does not parse: {e}", chain.display()))?;
    let ok = match leaf.extended_key_usage() {
        Ok(Some(e)) => {
            e.critical
                && e.value.time_stamping
                && !(e.value.any
                    || e.value.server_auth
                    || e.value.client_auth
                    || e.value.code_signing
                    || e.value.email_protection
                    || e.value.ocsp_signing)
                && e.value.other.is_empty()
        }
        _ => false,
    };
    let ca = matches!(leaf.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !ok || ca {
        bail!(
            "the first certificate of {} ({}) is not a timestamping certificate: it must be an end entity whose only extended key usage is a critical timeStamping",
            chain.display(),
            leaf.subject()
        );
    }
    Ok(())
}

/// At most this many certificates in a chain file.
const MAX_CHAIN: usize = 8;

/// `waxseal ca tsa`, as typed.
#[derive(Debug, Clone, Copy)]
struct Tsa<'a> {
    key: Option<&'a str>,
    public_key: Option<&'a Path>,
    issuer_key: &'a str,
    issuer_chain: &'a Path,
    cn: Option<&'a str>,
    org: Option<&'a str>,
    days: Option<u32>,
    /// `--template`: replaces cn, org and days (clap refuses both at once).
    template: Option<&'a Path>,
    out: &'a Path,
    record: &'a TranscriptArgs,
}

/// The issuer's chain file: its certificates (issuer first), checked as a chain, and
/// the issuer as [`RootInfo`].
fn read_issuer_chain(path: &Path) -> Result<(Vec<Vec<u8>>, RootInfo)> {
    let data = fs::read(path)
        .with_context(|| format!("cannot read the issuer's chain {}", path.display()))?;
    let ders = ca::pem_certificates(&data, MAX_CHAIN)
        .with_context(|| format!("{} is not a PEM certificate chain", path.display()))?;
    ca::check_chain(&ders, None)
        .with_context(|| format!("{} is not a valid chain", path.display()))?;
    let issuer = RootInfo::parse(&ders[0])
        .with_context(|| format!("the first certificate of {} cannot issue", path.display()))?;
    Ok((ders, issuer))
}

/// The DER SubjectPublicKeyInfo of a PEM `PUBLIC KEY` file, or of a DER one.
fn read_public_key(path: &Path) -> Result<Vec<u8>> {
    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if data.len() > 64 * 1024 {
        bail!("{} is larger than a public key can be", path.display());
    }
    ca::pem_or_der(&data, "PUBLIC KEY").with_context(|| format!("{} refused", path.display()))
}

fn tsa(ctx: &Ctx, req: &Tsa<'_>) -> Result<()> {
    refuse_existing(req.out)?;
    req.record.check()?;
    let template = req
        .template
        .map(|t| ca_template::load(t, Kind::Leaf))
        .transpose()?;
    let (chain, issuer) = read_issuer_chain(req.issuer_chain)?;
    let client = RefCell::new(ctx.connect()?);
    req.record.check_witness(&mut client.borrow_mut())?;
    let subject_key = match (req.key, req.public_key) {
        (Some(key), None) => {
            let public = client
                .borrow_mut()
                .public_key(key)
                .with_context(|| format!("cannot read the public key of {key}"))?;
            KeyMaterial::from_spki(&public.spki_der.0)?
        }
        (None, Some(path)) => KeyMaterial::from_spki(&read_public_key(path)?)
            .with_context(|| format!("{} cannot be certified", path.display()))?,
        _ => bail!("name the TSA's key with --key NAME or --public-key FILE (one of them)"),
    };
    let sent = RefCell::new(Vec::new());
    let signer = agent_signer(&client, req.issuer_key, &sent)?;
    if signer.key().spki() != issuer.spki.as_slice() {
        bail!(
            "the first certificate of {} is not {}'s: its public key differs",
            req.issuer_chain.display(),
            req.issuer_key
        );
    }
    let params = match &template {
        Some(t) => {
            // The profile's subject and validity are replaced by the template's.
            let mut p = ca::tsa_params(t.subject_cn(), "template", 1, &subject_key, &issuer)?;
            t.apply(&mut p, Kind::Leaf, Some(&issuer))?;
            p
        }
        None => ca::tsa_params(
            req.cn.unwrap_or_default(),
            req.org.unwrap_or_default(),
            req.days.unwrap_or(365),
            &subject_key,
            &issuer,
        )?,
    };
    // Before anything is signed: a chain Go's verifiers refuse for timestamping.
    ca::check_chain(&chain, Some(("1.3.6.1.5.5.7.3.8", "timeStamping"))).with_context(|| {
        format!(
            "{} cannot issue a timestamping certificate",
            req.issuer_chain.display()
        )
    })?;
    let issuer_der = issuer.der.clone();
    let rc_issuer = ca::issuer_from_cert(&issuer_der, signer)?;
    let cert = params
        .signed_by(&subject_key, &rc_issuer)
        .map_err(|e| rc_issuer.key().explain(e))?;
    let der = cert.der().to_vec();
    let mut full = vec![der.clone()];
    full.extend(chain);
    ca::check_chain(&full, Some(("1.3.6.1.5.5.7.3.8", "timeStamping")))
        .context("the new timestamping certificate does not chain to the issuer")?;
    let text: String = full.iter().map(|d| ca::cert_pem(d)).collect();
    write_new(req.out, &text)?;
    req.record.write(
        &mut client.borrow_mut(),
        &Signed {
            key: req.issuer_key,
            tbs: &last(&sent)?,
            results: vec![("certificate.pem", text.into_bytes())],
        },
    )?;
    report(
        ctx,
        &der,
        req.out,
        None,
        "timestamping (chain: TSA, then the issuer's chain)",
    )
}

/// A signer that sends each TBSCertificate to the agent with purpose `x509-tbs`.
fn agent_signer<'c>(
    client: &'c RefCell<Client>,
    key: &'c str,
    sent: &'c RefCell<Vec<Vec<u8>>>,
) -> Result<RemoteSigner<SignFn<'c>>> {
    let public = client
        .borrow_mut()
        .public_key(key)
        .with_context(|| format!("cannot read the public key of {key}"))?;
    let material = KeyMaterial::from_spki(&public.spki_der.0)
        .with_context(|| format!("{key} cannot sign certificates"))?;
    let sign: SignFn<'c> = Box::new(move |tbs: &[u8]| {
        let signed = client
            .borrow_mut()
            .sign_tbs(key, tbs)
            .map_err(|e| anyhow!("{key} did not sign the certificate: {e}"))?;
        sent.borrow_mut().push(tbs.to_vec());
        Ok(signed.signature.0)
    });
    Ok(RemoteSigner::new(material, sign))
}

/// The TBS the agent signed last (for the transcript).
fn last(sent: &RefCell<Vec<Vec<u8>>>) -> Result<Vec<u8>> {
    sent.borrow()
        .last()
        .cloned()
        .ok_or_else(|| anyhow!("nothing was sent to the agent to sign"))
}

fn refuse_existing(out: &Path) -> Result<()> {
    if out.exists() {
        bail!(
            "{} exists already; waxseal never replaces a CA file. Choose another --out or move it away",
            out.display()
        );
    }
    Ok(())
}

/// `waxseal ca root`, as typed.
#[derive(Debug, Clone, Copy)]
struct Root<'a> {
    key: &'a str,
    cn: Option<&'a str>,
    org: Option<&'a str>,
    days: Option<u32>,
    /// `--template`: replaces cn, org and days (clap refuses both at once).
    template: Option<&'a Path>,
    out: &'a Path,
    pkcs11_store: Option<&'a str>,
    record: &'a TranscriptArgs,
}

fn root(ctx: &Ctx, req: &Root<'_>) -> Result<()> {
    let Root {
        key,
        cn,
        org,
        days,
        template,
        out,
        pkcs11_store,
        record,
    } = *req;
    refuse_existing(out)?;
    record.check()?;
    let template = template
        .map(|t| ca_template::load(t, Kind::Root))
        .transpose()?;
    let client = RefCell::new(ctx.connect()?);
    record.check_witness(&mut client.borrow_mut())?;
    let sent = RefCell::new(Vec::new());
    let signer = agent_signer(&client, key, &sent)?;
    let params = match &template {
        Some(t) => {
            // The profile's subject and validity are replaced by the template's.
            let mut p = ca::root_params(t.subject_cn(), "template", 1, signer.key())?;
            t.apply(&mut p, Kind::Root, None)?;
            p
        }
        None => ca::root_params(
            cn.unwrap_or_default(),
            org.unwrap_or_default(),
            days.unwrap_or(3650),
            signer.key(),
        )?,
    };
    let cert = params.self_signed(&signer).map_err(|e| signer.explain(e))?;
    let der = cert.der().to_vec();
    ca::check_signature(&der, signer.key().spki())?;
    if let Some(id) = pkcs11_store {
        client
            .borrow_mut()
            .store_certificate(key, id, None, &der)
            .with_context(|| format!("cannot store the root certificate on {key}'s token as id '{id}'; nothing was written"))?;
    }
    let pem = ca::cert_pem(&der);
    write_new(out, &pem)?;
    record.write(
        &mut client.borrow_mut(),
        &Signed {
            key,
            tbs: &last(&sent)?,
            results: vec![("certificate.pem", pem.into_bytes())],
        },
    )?;
    report(ctx, &der, out, pkcs11_store, "root")
}

/// `waxseal ca intermediate`, as typed.
#[derive(Debug, Clone, Copy)]
struct Intermediate<'a> {
    /// The intermediate's key on the agent (or `csr`).
    key: Option<&'a str>,
    /// A PKCS#10 request for a key that lives elsewhere (or `key`).
    csr: Option<&'a Path>,
    /// The root key, which signs.
    root_key: &'a str,
    /// The root certificate.
    root_cert: &'a Path,
    /// Subject CN.
    cn: Option<&'a str>,
    /// Subject O.
    org: Option<&'a str>,
    /// Validity, clipped inside the root's.
    days: Option<u32>,
    /// `--template`: replaces cn, org and days (clap refuses both at once).
    template: Option<&'a Path>,
    /// The chain written: intermediate, then root.
    out: &'a Path,
    /// `--transcript`.
    record: &'a TranscriptArgs,
}

fn intermediate(ctx: &Ctx, req: &Intermediate<'_>) -> Result<()> {
    let Intermediate {
        key,
        csr,
        root_key,
        root_cert,
        cn,
        org,
        days,
        template,
        out,
        record,
    } = *req;
    refuse_existing(out)?;
    record.check()?;
    let template = template
        .map(|t| ca_template::load(t, Kind::Intermediate))
        .transpose()?;
    let root_data = fs::read(root_cert)
        .with_context(|| format!("cannot read the root certificate {}", root_cert.display()))?;
    let root = RootInfo::parse(&root_data)
        .with_context(|| format!("{} cannot issue the intermediate", root_cert.display()))?;
    let client = RefCell::new(ctx.connect()?);
    record.check_witness(&mut client.borrow_mut())?;
    let subject_key = match (key, csr) {
        (Some(key), None) => {
            let public = client
                .borrow_mut()
                .public_key(key)
                .with_context(|| format!("cannot read the public key of {key}"))?;
            KeyMaterial::from_spki(&public.spki_der.0)?
        }
        (None, Some(csr)) => {
            let data = fs::read(csr).with_context(|| format!("cannot read {}", csr.display()))?;
            let (material, subject) =
                ca::csr_key(&data).with_context(|| format!("{} refused", csr.display()))?;
            eprintln!(
                "certificate request {} checked (its subject {subject:?} is replaced by {})",
                csr.display(),
                match &template {
                    Some(_) => "the template's".to_string(),
                    None => format!(
                        "CN={}, O={}",
                        cn.unwrap_or_default(),
                        org.unwrap_or_default()
                    ),
                }
            );
            material
        }
        _ => bail!("name the intermediate's key with --key NAME or --csr FILE (one of them)"),
    };
    let sent = RefCell::new(Vec::new());
    let signer = agent_signer(&client, root_key, &sent)?;
    if signer.key().spki() != root.spki.as_slice() {
        bail!(
            "{} is not {root_key}'s certificate: its public key differs. Pass the root certificate made with --key {root_key}",
            root_cert.display()
        );
    }
    let params = match &template {
        Some(t) => {
            // The profile's subject and validity are replaced by the template's.
            let mut p =
                ca::intermediate_params(t.subject_cn(), "template", 1, &subject_key, &root)?;
            t.apply(&mut p, Kind::Intermediate, Some(&root))?;
            p
        }
        None => ca::intermediate_params(
            cn.unwrap_or_default(),
            org.unwrap_or_default(),
            days.unwrap_or(1825),
            &subject_key,
            &root,
        )?,
    };
    let issuer = ca::issuer_from_cert(&root.der, signer)?;
    let cert = params
        .signed_by(&subject_key, &issuer)
        .map_err(|e| issuer.key().explain(e))?;
    let der = cert.der().to_vec();
    ca::check_signature(&der, &root.spki)?;
    let chain = format!("{}{}", ca::cert_pem(&der), ca::cert_pem(&root.der));
    write_new(out, &chain)?;
    record.write(
        &mut client.borrow_mut(),
        &Signed {
            key: root_key,
            tbs: &last(&sent)?,
            results: vec![("certificate.pem", chain.into_bytes())],
        },
    )?;
    report(
        ctx,
        &der,
        out,
        None,
        "intermediate (chain: intermediate, then root)",
    )
}

/// Writes `text` to `out`, which must not exist, through a temporary file.
fn write_new(out: &Path, text: &str) -> Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("cert"),
        std::process::id()
    ));
    let mut f =
        fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // hard_link fails if `out` appeared meanwhile: never replace a CA file.
    let linked = fs::hard_link(&tmp, out);
    let _ = fs::remove_file(&tmp);
    linked.with_context(|| format!("cannot create {}", out.display()))
}

fn report(ctx: &Ctx, der: &[u8], out: &Path, pkcs11_id: Option<&str>, what: &str) -> Result<()> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| anyhow!("certificate does not parse: {e}"))?;
    let issued = Issued {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.tbs_certificate.raw_serial_as_string(),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
        sha256_fingerprint: hex::encode(Sha256::digest(der)),
        out: out.to_path_buf(),
        pkcs11_id: pkcs11_id.map(str::to_string),
    };
    if ctx.json {
        return ctx.print_json(&issued);
    }
    outln!("{what} certificate written to {}", out.display());
    outln!("  subject      {}", issued.subject);
    outln!("  issuer       {}", issued.issuer);
    outln!("  serial       {}", issued.serial);
    outln!(
        "  valid        {} to {}",
        issued.not_before,
        issued.not_after
    );
    outln!("  SHA-256      {}", issued.sha256_fingerprint);
    if let Some(id) = pkcs11_id {
        outln!("  stored on the token as CKO_CERTIFICATE id '{id}', label PKCS11CA");
    }
    Ok(())
}
