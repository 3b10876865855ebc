//! `waxseal attest --key NAME --type URI --predicate FILE SUBJECT...` and `waxseal
//! attest --key NAME --statement FILE`: an in-toto statement v1, signed by the agent
//! (purpose `attest`) over its DSSE PAE, written as a Sigstore bundle whose content is
//! the DSSE envelope (docs/protocol.md, `sign`; README, "Attestations: `waxseal
//! attest`").
//!
//! The statement is checked here before anything is asked, with the reader the agent
//! uses ([`waxseal_proto::intoto`]), so a statement the agent would refuse costs no
//! connection. The Sigstore services (`--rekor-url`, `--tsa-url`, `--signing-config`,
//! ...) are `waxseal sign`'s, through the same code (`super::services`): a timestamp over
//! the envelope's signature, a `dsse` v0.0.1 entry in Rekor v1, the PAE's `hashedrekord`
//! v0.0.2 in Rekor v2. Whatever a log or TSA refuses, no bundle is written and an older
//! one stays.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use waxseal_proto::intoto::{Statement, MAX_STATEMENT, STATEMENT_TYPE};
use waxseal_proto::proto::{HashAlg, KeyAlg};

use super::services::{Services, Signed};
use super::Ctx;
use crate::sigstore::Bundle;
use crate::verify::hash_file;
use crate::AttestArgs;

fn with_suffix(file: &Path, suffix: &str) -> PathBuf {
    let mut p = file.to_path_buf().into_os_string();
    p.push(suffix);
    PathBuf::from(p)
}

pub fn run(ctx: &Ctx, args: AttestArgs) -> Result<()> {
    let (statement, out) = match &args.statement {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the statement {}", path.display()))?;
            let out = args
                .bundle
                .clone()
                .unwrap_or_else(|| with_suffix(path, ".sigstore.json"));
            (bytes, out)
        }
        None => {
            let (Some(predicate_type), Some(predicate)) = (&args.predicate_type, &args.predicate)
            else {
                bail!("give --type URI, --predicate FILE and SUBJECT files, or --statement FILE");
            };
            let Some(first) = args.subjects.first() else {
                bail!("give at least one SUBJECT file for the statement to be about");
            };
            let out = args
                .bundle
                .clone()
                .unwrap_or_else(|| with_suffix(first, ".intoto.sigstore.json"));
            (build(predicate_type, predicate, &args.subjects)?, out)
        }
    };
    if statement.len() > MAX_STATEMENT {
        bail!(
            "the statement is {} bytes long; the agent signs statements of at most {MAX_STATEMENT} bytes",
            statement.len()
        );
    }
    let parsed = Statement::parse(&statement).context("the statement cannot be signed")?;
    // The services and their keys before anything is signed, as for `waxseal sign`.
    // The config's [sigstore] defaults fill what the flags leave out.
    let (flags, defaults_from) = ctx.sigstore_services(
        args.services.flags(),
        args.services.no_sigstore_defaults,
        "attest",
    )?;
    let services = Services::prepare(&flags, ctx.json)?;
    let mut client = ctx.connect()?;
    let pk = client.public_key(&args.key)?;
    // What the agent signs the PAE with (docs/protocol.md, `sign`, purpose `attest`).
    let hash = (pk.alg != KeyAlg::Ed25519).then(|| pk.alg.default_hash());
    services.check_key(&args.key, pk.alg, &pk.spki_der.0, hash, true)?;
    let signed = client.sign_statement(&args.key, &statement)?;
    let signature = &signed.signature.0;
    let mut bundle = Bundle::new_dsse(&pk.spki_der.0, &statement, signature);
    let Some(envelope) = &bundle.dsse_envelope else {
        bail!("internal error: the bundle holds no DSSE envelope");
    };
    let logged = services.attach(
        &mut bundle.verification_material,
        Signed::Dsse { envelope, hash },
        signature,
        &pk.spki_der.0,
    )?;
    bundle.write(&out)?;
    if ctx.json {
        let mut described = services.describe();
        described["sigstore_defaults"] = json!(defaults_from);
        return ctx.print_json(&json!({
            "bundle": out, "key": args.key, "alg": signed.alg,
            "predicate_type": parsed.predicate_type,
            "subjects": parsed.subjects.iter().map(|s| json!({"name": s.name, "sha256": s.sha256})).collect::<Vec<_>>(),
            "log_index": logged.map(|l| l.0),
            "integrated_time": logged.map(|l| l.1),
            "timestamps": bundle.verification_material.timestamp_verification_data
                .as_ref()
                .and_then(|t| t["rfc3161Timestamps"].as_array().map(Vec::len))
                .unwrap_or(0),
            "services": described,
        }));
    }
    let logged = match logged {
        Some((index, _)) if services.logs() > 1 => format!(
            "; logged in Rekor at index {index} and in {} more logs",
            services.logs() - 1
        ),
        Some((index, _)) => format!("; logged in Rekor at index {index}"),
        None => String::new(),
    };
    eprintln!(
        "attested {} subject{} ({}) with {} ({}){logged}; bundle in {}",
        parsed.subjects.len(),
        if parsed.subjects.len() == 1 { "" } else { "s" },
        parsed.predicate_type,
        args.key,
        signed.alg,
        out.display()
    );
    Ok(())
}

/// The statement v1 about `subjects` (each file's name and SHA-256) with the predicate
/// read from `predicate`, which must hold one JSON object.
fn build(predicate_type: &str, predicate: &Path, subjects: &[PathBuf]) -> Result<Vec<u8>> {
    let text = std::fs::read(predicate)
        .with_context(|| format!("cannot read the predicate {}", predicate.display()))?;
    let value: Value = serde_json::from_slice(&text)
        .with_context(|| format!("the predicate {} is not JSON", predicate.display()))?;
    if !value.is_object() {
        bail!("the predicate {} is not a JSON object", predicate.display());
    }
    let subject = subjects
        .iter()
        .map(|file| {
            let digest = hash_file(file, HashAlg::Sha256)?;
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| file.display().to_string());
            Ok(json!({"name": name, "digest": {"sha256": hex::encode(digest)}}))
        })
        .collect::<Result<Vec<_>>>()?;
    let statement = json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": predicate_type,
        "predicate": value,
    });
    Ok(serde_json::to_vec(&statement)?)
}
