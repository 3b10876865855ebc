//! `waxseal sign FILE --key NAME` (a Sigstore bundle, optionally logged in Rekor),
//! `waxseal sign FILE --key NAME --raw` (a bare signature) and
//! `waxseal sign --digest HEX --key NAME`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use waxseal_proto::proto::{KeyAlg, RsaPadding};

use super::Ctx;
use crate::sigstore::{Bundle, Rekor};
use crate::verify::hash_file;
use crate::SignArgs;

fn with_suffix(file: &Path, suffix: &str) -> PathBuf {
    let mut p = file.to_path_buf().into_os_string();
    p.push(suffix);
    PathBuf::from(p)
}

pub fn run(ctx: &Ctx, args: SignArgs) -> Result<()> {
    let padding = args.pss.then_some(RsaPadding::Pss);
    if let Some(hex_digest) = &args.digest {
        let digest = hex::decode(hex_digest.trim())
            .context("--digest must be hexadecimal, e.g. the output of sha256sum")?;
        let signed = ctx
            .connect()?
            .sign_digest(&args.key, &digest, args.hash, padding)?;
        if ctx.json {
            return ctx.print_json(&signed);
        }
        outln!("{}", B64.encode(&signed.signature.0));
        return Ok(());
    }
    let Some(file) = args.file.clone() else {
        bail!("give a FILE to sign or --digest HEX");
    };
    if args.pss && !args.raw {
        bail!("a Sigstore bundle cannot say that an RSA signature is PSS (verifiers assume PKCS#1 v1.5): add --raw for a bare PSS signature");
    }
    // Read the Rekor key before anything is signed: a bad key file costs no signature.
    let rekor = match (&args.rekor_url, &args.rekor_public_key) {
        (Some(url), Some(pem)) => {
            let text = std::fs::read_to_string(pem)
                .with_context(|| format!("cannot read the Rekor public key {}", pem.display()))?;
            let key_der = crate::verify::spki_from_pem(&text)
                .with_context(|| format!("{} is not a PEM public key", pem.display()))?;
            Some(Rekor {
                url: url.clone(),
                key_der,
            })
        }
        _ => None,
    };
    let mut client = ctx.connect()?;
    let pk = client.public_key(&args.key)?;
    if !args.raw && pk.alg == KeyAlg::Ed25519 {
        bail!("{} is an Ed25519 key; Sigstore message-signature bundles need an ECDSA or RSA key (or use --raw)", args.key);
    }
    let hash = args.hash.unwrap_or_else(|| pk.alg.default_hash());
    let digest = hash_file(&file, hash)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    let signed = if padding.is_some() {
        client.sign_digest(&args.key, &digest, Some(hash), padding)?
    } else {
        client.sign_blob(&args.key, &name, &digest, hash)?
    };

    if args.raw {
        let out = args.out.unwrap_or_else(|| with_suffix(&file, ".sig"));
        std::fs::write(&out, format!("{}\n", B64.encode(&signed.signature.0)))
            .with_context(|| format!("cannot write the signature to {}", out.display()))?;
        if ctx.json {
            return ctx.print_json(&serde_json::json!({
                "file": file, "signature_file": out, "key": args.key, "alg": signed.alg,
                "digest": hex::encode(&digest), "hash": hash,
            }));
        }
        eprintln!(
            "signed {} with {} ({}); signature in {}",
            file.display(),
            args.key,
            signed.alg,
            out.display()
        );
        return Ok(());
    }

    let out = args
        .bundle
        .unwrap_or_else(|| with_suffix(&file, ".sigstore.json"));
    let mut bundle = Bundle::new(&pk.spki_der.0, hash, &digest, &signed.signature.0);
    let mut logged = None;
    if let Some(rekor) = &rekor {
        let entry = rekor
            .upload(hash, &digest, &signed.signature.0, &pk.spki_der.0)
            .context("no bundle was written")?;
        logged = Some((entry.log_index.0, entry.integrated_time.0));
        bundle.verification_material.tlog_entries.push(entry);
    }
    bundle.write(&out)?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "file": file, "bundle": out, "key": args.key, "alg": signed.alg,
            "digest": hex::encode(&digest), "hash": hash,
            "log_index": logged.map(|l| l.0), "integrated_time": logged.map(|l| l.1),
        }));
    }
    match logged {
        Some((index, _)) => eprintln!(
            "signed {} with {} ({}); logged in Rekor at index {index}; bundle in {}",
            file.display(),
            args.key,
            signed.alg,
            out.display()
        ),
        None => eprintln!(
            "signed {} with {} ({}); bundle in {}",
            file.display(),
            args.key,
            signed.alg,
            out.display()
        ),
    }
    Ok(())
}
