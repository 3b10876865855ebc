//! `waxseal verify FILE_OR_DIGEST [--bundle B | --signature SIG] (--key NAME |
//! --public-key PEM | --certificate-identity[-regexp] … --certificate-oidc-issuer[-regexp]
//! …) [--trusted-root F | --rekor-public-key PEM --tsa-cert-chain PEM]`:
//! message-signature bundles, DSSE bundles (FILE must be one of the statement's
//! subjects), and bare signatures. With a trusted root (always, for certificate
//! identities) the checks are `verify_sigstore`'s, each named.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::Ctx;
use crate::sigstore::{verify_bundle, Artifact, Bundle, Rekor};
use crate::tsa::TrustedTsa;
use crate::verify::{read_signature, spki_from_pem, verify_file};
use crate::verify_sigstore::{default_trusted_root, Matcher, Policy, NO_TRUSTED_ROOT};
use crate::VerifyArgs;

fn read_pem(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    spki_from_pem(&text).with_context(|| format!("{} is not a PEM public key", path.display()))
}

/// The largest trusted root file read (the public-good instance's is about 10 KiB).
const MAX_TRUSTED_ROOT_BYTES: u64 = 4 << 20;

/// At most this many bytes of a regular expression given on the command line.
const MAX_REGEX: usize = 1024;

fn matcher(exact: &Option<String>, re: &Option<String>, what: &str) -> Result<Matcher> {
    match (exact, re) {
        (Some(s), _) => Ok(Matcher::Exact(s.clone())),
        (None, Some(r)) if r.len() > MAX_REGEX => {
            bail!("--{what}-regexp is longer than {MAX_REGEX} bytes")
        }
        (None, Some(r)) => regex::RegexBuilder::new(r)
            .size_limit(1 << 20)
            .build()
            .map(Matcher::Regex)
            .with_context(|| format!("--{what}-regexp is not a regular expression")),
        (None, None) => bail!("give --{what} or --{what}-regexp"),
    }
}

pub fn run(ctx: &Ctx, args: VerifyArgs) -> Result<()> {
    let identity =
        args.certificate_identity.is_some() || args.certificate_identity_regexp.is_some();
    if !identity
        && (args.certificate_oidc_issuer.is_some() || args.certificate_oidc_issuer_regexp.is_some())
    {
        bail!("--certificate-oidc-issuer goes with --certificate-identity or --certificate-identity-regexp");
    }
    if identity || args.trusted_root.is_some() {
        return run_trusted(ctx, &args, identity);
    }
    let spki = match (&args.key, &args.public_key) {
        (Some(key), _) => ctx.connect()?.public_key(key)?.spki_der.0,
        (None, Some(pem)) => read_pem(pem, "the public key")?,
        (None, None) => anyhow::bail!("give --key NAME or --public-key PEMFILE"),
    };
    let with_suffix = |s: &str| {
        let mut p = args.file.clone().into_os_string();
        p.push(s);
        PathBuf::from(p)
    };
    let bundle_path = args.bundle.clone().unwrap_or_else(|| {
        // `waxseal attest`'s default, when the file has no bundle of its own.
        let (plain, attested) = (
            with_suffix(".sigstore.json"),
            with_suffix(".intoto.sigstore.json"),
        );
        if !plain.exists() && attested.exists() {
            attested
        } else {
            plain
        }
    });
    let raw_path = match &args.signature {
        Some(p) => Some(p.clone()),
        None if args.bundle.is_none()
            && !bundle_path.exists()
            && with_suffix(".sig").exists()
            && args.rekor_public_key.is_none()
            && args.tsa_cert_chain.is_none() =>
        {
            Some(with_suffix(".sig"))
        }
        None => None,
    };

    if let Some(sig_path) = raw_path {
        let signature = read_signature(&sig_path)?;
        let checked = verify_file(&spki, &args.file, &signature, args.pss)?;
        if ctx.json {
            return ctx.print_json(&serde_json::json!({
                "verified": true, "file": args.file, "signature_file": sig_path, "alg": checked,
            }));
        }
        outln!("Verified OK: {} ({checked})", args.file.display());
        return Ok(());
    }

    let rekor = match &args.rekor_public_key {
        Some(pem) => Some(Rekor {
            url: String::new(),
            key_der: read_pem(pem, "the Rekor public key")?,
        }),
        None => None,
    };
    let tsa = match &args.tsa_cert_chain {
        Some(pem) => {
            let text = std::fs::read(pem)
                .with_context(|| format!("cannot read the TSA certificates {}", pem.display()))?;
            Some(
                TrustedTsa::from_pem(&text)
                    .with_context(|| format!("{}: the TSA certificates", pem.display()))?,
            )
        }
        None => None,
    };
    let bundle = Bundle::read(&bundle_path)?;
    let artifact = Artifact::parse(&args.file)?;
    let v = verify_bundle(&bundle, &artifact, &spki, rekor.as_ref(), tsa.as_ref()).with_context(
        || {
            format!(
                "{} does not verify against {}",
                args.file.display(),
                bundle_path.display()
            )
        },
    )?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "verified": true, "file": args.file, "bundle": bundle_path, "result": v,
        }));
    }
    outln!("Verified OK: {} ({})", args.file.display(), v.alg);
    if let Some(predicate_type) = &v.predicate_type {
        outln!("  in-toto statement about this file, predicate type {predicate_type}");
    }
    if v.tlog_entries_checked > 0 {
        outln!(
            "  transparency log: {} entr{} checked (inclusion proof, checkpoint{}){}",
            v.tlog_entries_checked,
            if v.tlog_entries_checked == 1 {
                "y"
            } else {
                "ies"
            },
            if v.integrated_time.is_some() {
                ", signed entry timestamp"
            } else {
                ""
            },
            v.integrated_time
                .map_or(String::new(), |t| format!("; logged at {t} (Unix time)"))
        );
    }
    if v.timestamps_checked > 0 {
        outln!(
            "  RFC 3161 timestamp{}: {} checked against the TSA certificates; signed at {}",
            if v.timestamps_checked == 1 { "" } else { "s" },
            v.timestamps_checked,
            v.timestamp
                .map_or(String::new(), |t| format!("{t} (Unix time)"))
        );
    }
    if v.timestamps_unchecked > 0 {
        eprintln!(
            "note: {} RFC 3161 timestamp{} not checked: give --tsa-cert-chain to check them",
            v.timestamps_unchecked,
            if v.timestamps_unchecked == 1 {
                " was"
            } else {
                "s were"
            }
        );
    }
    if v.tlog_entries_unchecked > 0 {
        eprintln!(
            "note: {} transparency log entr{} not checked: give --rekor-public-key to check them",
            v.tlog_entries_unchecked,
            if v.tlog_entries_unchecked == 1 {
                "y was"
            } else {
                "ies were"
            }
        );
    }
    Ok(())
}

/// The bundle's path: `--bundle`, or FILE.sigstore.json, or FILE.intoto.sigstore.json.
fn default_bundle(args: &VerifyArgs) -> Result<PathBuf> {
    if let Some(b) = &args.bundle {
        return Ok(b.clone());
    }
    if !args.file.exists() {
        bail!("give --bundle: {} is not a file", args.file.display());
    }
    let with_suffix = |s: &str| {
        let mut p = args.file.clone().into_os_string();
        p.push(s);
        PathBuf::from(p)
    };
    let (plain, attested) = (
        with_suffix(".sigstore.json"),
        with_suffix(".intoto.sigstore.json"),
    );
    Ok(if !plain.exists() && attested.exists() {
        attested
    } else {
        plain
    })
}

/// Verification against a trusted root: every check named, `--json` lists them.
fn run_trusted(ctx: &Ctx, args: &VerifyArgs, identity: bool) -> Result<()> {
    let policy = if identity {
        Policy::Identity {
            san: matcher(
                &args.certificate_identity,
                &args.certificate_identity_regexp,
                "certificate-identity",
            )?,
            issuer: matcher(
                &args.certificate_oidc_issuer,
                &args.certificate_oidc_issuer_regexp,
                "certificate-oidc-issuer",
            )?,
        }
    } else {
        Policy::Key(match (&args.key, &args.public_key) {
            (Some(key), _) => ctx.connect()?.public_key(key)?.spki_der.0,
            (None, Some(pem)) => read_pem(pem, "the public key")?,
            (None, None) => bail!("give --key NAME or --public-key PEMFILE"),
        })
    };
    let root_bytes = match &args.trusted_root {
        Some(path) => crate::sigstore::read_bounded(path, MAX_TRUSTED_ROOT_BYTES)
            .with_context(|| format!("cannot read the trusted root {}", path.display()))?,
        None => default_trusted_root().ok_or_else(|| anyhow::anyhow!("{NO_TRUSTED_ROOT}"))?,
    };
    let root = crate::signing_config::TrustedRoot::parse(&root_bytes).with_context(|| {
        format!(
            "the trusted root {}",
            args.trusted_root.as_ref().map_or_else(
                || match waxseal::trustroot::current_trusted_root().1 {
                    waxseal::trustroot::Source::Shipped =>
                        "(default: the public-good instance's, shipped with waxseal)".to_string(),
                    waxseal::trustroot::Source::Refreshed { repository } =>
                        format!("(default: from `waxseal trust update` of {repository})"),
                },
                |p| p.display().to_string()
            )
        )
    })?;
    let artifact = Artifact::parse(&args.file)?;
    let bundle_path = default_bundle(args)?;
    let bundle = Bundle::read(&bundle_path)
        .map_err(|e| anyhow::anyhow!("verify: bundle: {}", format!("{e:#}").replace('\n', " ")))?;
    let report = crate::verify_sigstore::verify(
        &bundle,
        &artifact,
        &policy,
        &root,
        time::OffsetDateTime::now_utc(),
    );
    if ctx.json {
        ctx.print_json(&report)?;
    }
    if let Some(f) = report.failure() {
        bail!("verify: {}: {}", f.check, f.detail);
    }
    if !ctx.json {
        outln!("Verified OK: {artifact} ({})", bundle_path.display());
        for c in &report.checks {
            outln!("  {}: {}", c.check, c.detail);
        }
    }
    Ok(())
}
