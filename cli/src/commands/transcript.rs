//! `--transcript DIR --witness-key NAME` of `waxseal ca root|intermediate|tsa|crl`,
//! and `waxseal ca transcript verify DIR` (README.md, "Ceremony transcripts"). The
//! files and the checks are [`waxseal::transcript`]'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use waxseal::transcript::{self, AUDIT, MANIFEST, MANIFEST_SIG, WITNESS_PUB};
use waxseal_proto::client::Client;

use super::Ctx;

/// The flags every signing `ca` command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct TranscriptArgs {
    /// Write the ceremony's evidence into DIR (new or empty; created mode 0700): the
    /// command, the agent and device, the TBS and the agent's summary, approvals, the
    /// result, the audit records, all hash-listed in MANIFEST and signed by
    /// --witness-key.
    #[arg(long, value_name = "DIR", requires = "witness_key")]
    pub transcript: Option<PathBuf>,
    /// The agent key (DEVICE/LABEL) that signs the transcript's MANIFEST (purpose
    /// digest).
    #[arg(long, value_name = "NAME", requires = "transcript")]
    pub witness_key: Option<String>,
}

/// What the command signed, for the transcript.
pub struct Signed<'a> {
    /// The key that signed.
    pub key: &'a str,
    /// The TBS sent to the agent.
    pub tbs: &'a [u8],
    /// Result files: (`certificate.pem`, chain text) or (`crl.pem`, …) and
    /// (`issuer.pem`, …).
    pub results: Vec<(&'static str, Vec<u8>)>,
}

/// At most this many audit records are asked for around the signature.
const TAIL: u32 = 1000;

impl TranscriptArgs {
    /// Before anything is signed: DIR must be usable.
    pub fn check(&self) -> Result<()> {
        match &self.transcript {
            Some(dir) => transcript::check_target(dir),
            None => Ok(()),
        }
    }

    /// Before anything is signed: the witness key must exist (its public key reads), so
    /// that a typo does not leave a ceremony without its transcript.
    pub fn check_witness(&self, client: &mut Client) -> Result<()> {
        if let Some(witness) = &self.witness_key {
            client.public_key(witness).with_context(|| {
                format!("--witness-key {witness}: cannot read its public key; nothing was signed")
            })?;
        }
        Ok(())
    }

    /// After the result was written: the transcript, if asked for.
    pub fn write(&self, client: &mut Client, signed: &Signed<'_>) -> Result<()> {
        let (Some(dir), Some(witness)) = (&self.transcript, &self.witness_key) else {
            return Ok(());
        };
        write(client, dir, witness, signed).with_context(|| {
            format!("the ceremony transcript {} was not written", dir.display())
        })?;
        eprintln!(
            "ceremony transcript written to {} (check it with `waxseal ca transcript verify {}`)",
            dir.display(),
            dir.display()
        );
        Ok(())
    }
}

fn field<'v>(r: &'v Value, k: &str) -> Option<&'v str> {
    r.get(k).and_then(Value::as_str)
}

fn seq(r: &Value) -> Option<u64> {
    r.get("seq").and_then(Value::as_u64)
}

fn write(client: &mut Client, dir: &Path, witness: &str, signed: &Signed<'_>) -> Result<()> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let argv: Vec<String> = std::env::args().take(256).collect();
    files.insert(
        "command.json".into(),
        pretty(&json!({
            "argv": argv,
            "time": now,
            "waxseal": env!("CARGO_PKG_VERSION"),
        }))?,
    );

    // The agent and the device, and what the device can prove about the key.
    let status = client.status().context("the agent's status")?;
    let device = signed.key.split('/').next().unwrap_or_default();
    let evidence = match client.attest(signed.key, None) {
        Ok(a) => json!({ "can_prove": true, "attestation": a }),
        Err(e) => json!({
            "can_prove": false,
            "why": format!("the agent gives no attestation of {}: {e}. A PKCS#11 token cannot prove that a key was generated on it and cannot leave it; only TPM (certify) and PIV (attestation) devices can", signed.key),
        }),
    };
    files.insert(
        "agent.json".into(),
        pretty(&json!({
            "status": status,
            "device": status.devices.iter().find(|d| d.name == device),
            "key": signed.key,
            "key_evidence": evidence,
        }))?,
    );

    // The audit records of the signature, with the records around them.
    let tail = client
        .audit_tail(Some(TAIL))
        .context("the agent's audit records")?;
    let records = tail.records;
    let tbs_sha = hex::encode(Sha256::digest(signed.tbs));
    let signed_rec = records
        .iter()
        .rev()
        .find(|r| {
            field(r, "event") == Some("signed")
                && field(r, "tbs_sha256") == Some(&tbs_sha)
                && field(r, "key") == Some(signed.key)
        })
        .ok_or_else(|| {
            anyhow!(
                "the agent's audit log has no `signed` record of this TBS (is the audit log on?)"
            )
        })?;
    let signed_seq = seq(signed_rec).ok_or_else(|| anyhow!("the `signed` record has no seq"))?;
    let intent = signed_rec
        .get("intent")
        .and_then(Value::as_u64)
        .unwrap_or(signed_seq);
    let intent_rec = records.iter().find(|r| seq(r) == Some(intent));
    let approval = field(signed_rec, "approval").map(str::to_string);
    let mut first = intent;
    let mut approval_files = Vec::new();
    if let Some(id) = &approval {
        let requested = records
            .iter()
            .find(|r| field(r, "event") == Some("approval-requested") && field(r, "approval") == Some(id))
            .ok_or_else(|| anyhow!("the approval-requested record of {id} is older than the agent's last {TAIL} records"))?;
        first = first.min(seq(requested).unwrap_or(first));
        approval_files.push((
            "approvals/text.txt".to_string(),
            field(requested, "text")
                .unwrap_or_default()
                .as_bytes()
                .to_vec(),
        ));
        let mut n = 0;
        for r in records
            .iter()
            .filter(|r| field(r, "event") == Some("approved") && field(r, "approval") == Some(id))
        {
            n += 1;
            first = first.min(seq(r).unwrap_or(first));
            approval_files.push((
                format!("approvals/{n}.sig"),
                field(r, "signature")
                    .unwrap_or_default()
                    .as_bytes()
                    .to_vec(),
            ));
        }
    }
    let from = first.saturating_sub(1);
    let around: Vec<Value> = records
        .iter()
        .filter(|r| seq(r).is_some_and(|s| s >= from && s <= signed_seq + 1))
        .cloned()
        .collect();
    if around.first().and_then(seq) != Some(from) && from > 0 {
        bail!("the record before the signature's (seq {from}) is no longer in the agent's last {TAIL} records");
    }
    files.insert(AUDIT.into(), transcript::audit_lines(&around)?.into_bytes());
    for (name, data) in approval_files {
        files.insert(name, data);
    }

    // The TBS and the agent's summary of it (its audit record's subject).
    files.insert("tbs.der".into(), signed.tbs.to_vec());
    let mut summary = serde_json::Map::new();
    for rec in [intent_rec, Some(signed_rec)].into_iter().flatten() {
        if let Some(obj) = rec.as_object() {
            for (k, v) in obj {
                if !["seq", "prev", "time", "caller", "event", "intent"].contains(&k.as_str()) {
                    summary.insert(k.clone(), v.clone());
                }
            }
        }
    }
    summary.insert("tbs_sha256".into(), json!(tbs_sha));
    files.insert("tbs-summary.json".into(), pretty(&Value::Object(summary))?);
    for (name, data) in &signed.results {
        files.insert((*name).to_string(), data.clone());
    }

    // The witness: its key, the manifest, the manifest's signature.
    let public = client
        .public_key(witness)
        .with_context(|| format!("cannot read the public key of the witness key {witness}"))?;
    files.insert(
        WITNESS_PUB.into(),
        waxseal::ca::pem("PUBLIC KEY", &public.spki_der.0).into_bytes(),
    );
    let manifest = transcript::manifest(&files);
    let (digest, hash) = transcript::manifest_digest(&public.spki_der.0, manifest.as_bytes())?;
    // Ed25519 signs the digest bytes as its message (PureEdDSA), as `verify` checks.
    let ed25519 = matches!(
        waxseal::verify::AnyPublicKey::from_spki(&public.spki_der.0),
        Ok(waxseal::verify::AnyPublicKey::Ed25519(_))
    );
    let sig = if ed25519 {
        client.sign_message(witness, &digest)
    } else {
        client.sign_digest(witness, &digest, Some(hash), None)
    }
    .with_context(|| format!("the witness key {witness} did not sign the manifest"))?;
    files.insert(MANIFEST.into(), manifest.into_bytes());
    files.insert(
        MANIFEST_SIG.into(),
        format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(&sig.signature.0)
        )
        .into_bytes(),
    );
    transcript::write_dir(dir, &files)?;
    // What was written must check; a transcript that does not is reported at once.
    transcript::verify(dir, None).context("the transcript just written does not verify")?;
    Ok(())
}

fn pretty(v: &Value) -> Result<Vec<u8>> {
    let mut s = serde_json::to_vec_pretty(v)?;
    s.push(b'\n');
    Ok(s)
}

/// `waxseal ca transcript verify DIR [--witness-public-key PEM]`.
pub fn verify(ctx: &Ctx, dir: &Path, witness: Option<&Path>) -> Result<()> {
    let v = transcript::verify(dir, witness)
        .with_context(|| format!("the transcript {} does NOT verify", dir.display()))?;
    if ctx.json {
        return ctx.print_json(&v);
    }
    outln!("transcript {} verifies", dir.display());
    outln!(
        "  files        {} listed in MANIFEST, each with its SHA-256",
        v.files
    );
    outln!(
        "  witness      {} (key SHA-256 {})",
        v.witness,
        v.witness_key_sha256
    );
    outln!(
        "  audit        {} records, chain links checked; `signed` record seq {} by {}; last record seq {} SHA-256 {}",
        v.audit_records,
        v.signed_seq,
        v.key,
        v.audit_last.0,
        v.audit_last.1
    );
    outln!(
        "  result       {}: its TBS is tbs.der and the issuer's key verifies it",
        v.result
    );
    if v.approvals > 0 {
        outln!("  approvals    {} (each SSH signature checked over approvals/text.txt in namespace waxseal-approval, its key the fingerprint its audit record names, no approver twice, at least the quorum)", v.approvals);
    }
    Ok(())
}
