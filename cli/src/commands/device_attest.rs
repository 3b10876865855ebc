//! `waxseal keys attest NAME --format tpm|step`: the ACME device-attest-01
//! attestation objects (docs/key-attestation.md), built from the agent's `attest`
//! evidence by [`waxseal::device_attest`].

use std::io::Read as _;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use waxseal::device_attest::{self as da, Format};
use waxseal::verify::AnyPublicKey;
use waxseal_proto::client::Client;
use waxseal_proto::proto::{HashAlg, KeyAlg, RsaPadding};

use super::Ctx;

/// What `keys attest` was asked, for a format other than json.
pub struct Request<'a> {
    pub name: &'a str,
    pub format: Format,
    /// The 32 bytes (or, for tpm, up to 32) bound into the statement.
    pub nonce: Option<Vec<u8>>,
    /// The ACME key authorization the nonce is the SHA-256 of, when given.
    pub challenge: Option<&'a str>,
    pub ak_cert: Option<&'a Path>,
    pub out: Option<&'a Path>,
}

pub fn run(ctx: &Ctx, client: &mut Client, req: &Request<'_>) -> Result<()> {
    let Some(nonce) = req.nonce.as_deref() else {
        bail!(
            "--format {} binds the ACME challenge: give --challenge KEYAUTH (the key authorization, token.thumbprint) or --nonce HEX (its SHA-256)",
            req.format.as_str()
        );
    };
    if req.format == Format::Step && nonce.len() != 32 {
        bail!("--format step: --nonce must be 32 bytes (the SHA-256 of the ACME key authorization the key signs), not {}", nonce.len());
    }
    if req.format == Format::Tpm && (nonce.is_empty() || nonce.len() > 32) {
        bail!(
            "--format tpm: --nonce must be 1 to 32 bytes (the TPM's qualifying data), not {}",
            nonce.len()
        );
    }
    if req.format != Format::Tpm && req.ak_cert.is_some() {
        bail!("--ak-cert is for --format tpm");
    }
    // An imported TPM key has fixedTPM clear: TPM2_Certify would still certify it, but
    // a statement must not vouch for a key the TPM did not make (docs/key-attestation.md).
    let listed = client.list_keys()?;
    if req.format == Format::Tpm && listed.keys.iter().any(|k| k.name == req.name && k.imported) {
        bail!(
            "{} was imported (its fixedTPM attribute is clear): the TPM did not create it, so no tpm attestation statement vouches for it",
            req.name
        );
    }
    let att = client.attest(req.name, Some(nonce))?;
    da::check_kind(req.format, &att.format, req.name)?;
    let object = match req.format {
        Format::Tpm => tpm(req, &att.evidence)?,
        Format::Step => step(client, req, nonce, &att.evidence)?,
        Format::Json => bail!("--format json is not an attestation object"),
    };
    let payload = da::acme_payload(&object);
    match req.out {
        Some(dir) => {
            let label = req.name.split_once('/').map_or(req.name, |(_, l)| l);
            // The file name comes from the key name: never a path of its own.
            if label.is_empty() || label.starts_with('.') || label.contains('/') {
                bail!(
                    "key label `{label}` cannot name a file in {}",
                    dir.display()
                );
            }
            let path = dir.join(format!("{label}.{}.cbor", req.format.as_str()));
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            write_atomically(&path, &object)?;
            if ctx.json {
                return ctx.print_json(&serde_json::json!({ "files": [path] }));
            }
            outln!("{}", path.display());
        }
        None => ctx.print_json(&payload)?,
    }
    Ok(())
}

/// The `tpm` object: needs the AK certificate, which the agent cannot make (a CA
/// issues it for the AK, after checking the TPM's endorsement key).
fn tpm(req: &Request<'_>, evidence: &serde_json::Value) -> Result<Vec<u8>> {
    let Some(file) = req.ak_cert else {
        let ak = evidence
            .get("ak_spki_pem")
            .and_then(|v| v.as_str())
            .unwrap_or("(not in the evidence)\n");
        bail!(
            "--format tpm needs the certificate of this TPM's attestation key (AK): a verifier such as step-ca \
             checks the statement's x5c (WebAuthn §8.3) against its attestation roots, and a statement without one is refused. \
             This TPM's AK has no certificate that waxseal knows of. Have your attestation CA issue one for the AK \
             (WebAuthn §8.3.1 profile: empty subject, SAN with the TPM manufacturer/model/version, EKU 2.23.133.8.3), \
             usually after checking the TPM's EK certificate, and pass it with --ak-cert FILE (PEM: AK certificate, then its CA chain). \
             {}\nThe AK's public key:\n{ak}",
            da::ek_summary(evidence)
        );
    };
    let text = read_bounded(file, da::MAX_AK_CERT_FILE)?;
    let chain = da::pem_chain(&text).with_context(|| format!("--ak-cert {}", file.display()))?;
    if let Some(first) = chain.first() {
        for finding in da::ak_cert_findings(first) {
            eprintln!(
                "waxseal: warning: the AK certificate in {}: {finding}; step-ca and WebAuthn verifiers (§8.3.1) refuse such a certificate",
                file.display()
            );
        }
    }
    da::tpm_object(evidence, &chain).with_context(|| format!("--ak-cert {}", file.display()))
}

/// The `step` object: the slot's attestation and f9 certificates, and the key's own
/// signature over the challenge, checked here against the slot certificate.
fn step(
    client: &mut Client,
    req: &Request<'_>,
    digest: &[u8],
    evidence: &serde_json::Value,
) -> Result<Vec<u8>> {
    let alg = da::piv_alg(evidence)?;
    let cose = da::step_cose_alg(alg).with_context(|| format!("--format step for {}", req.name))?;
    let (slot, f9) = da::piv_certificates(evidence)?;
    let slot_spki = da::cert_spki(&slot).context("the slot attestation certificate")?;
    let pk = client.public_key(req.name)?;
    if pk.spki_der.0 != slot_spki {
        bail!(
            "the slot attestation certificate of {} is for another key than the one the agent signs with; refusing",
            req.name
        );
    }
    let signed = match alg {
        KeyAlg::Ed25519 => {
            let Some(c) = req.challenge else {
                bail!("an Ed25519 key signs the key authorization itself: give --challenge KEYAUTH, not --nonce");
            };
            client.sign_message(req.name, c.as_bytes())?
        }
        KeyAlg::Rsa(_) => client.sign_digest(
            req.name,
            digest,
            Some(HashAlg::Sha256),
            Some(RsaPadding::Pkcs1),
        )?,
        _ => client.sign_digest(req.name, digest, Some(HashAlg::Sha256), None)?,
    };
    let sig = signed.signature.0;
    let key = AnyPublicKey::from_spki(&slot_spki)?;
    let message = match (alg, req.challenge) {
        (KeyAlg::Ed25519, Some(c)) => c.as_bytes(),
        _ => digest,
    };
    key.verify_digest(message, HashAlg::Sha256, &sig, false)
        .context("the key's signature over the challenge does not verify with the slot attestation certificate")?;
    da::step_object(&slot, &f9, &sig, cose)
}

/// At most `max` bytes of `path`; more is refused.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if buf.len() as u64 > max {
        bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(buf)
}

/// Writes `bytes` to `path` through a temporary file beside it, renamed: an older
/// file stays whole until the new one is complete.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}
