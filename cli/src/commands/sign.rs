//! `waxseal sign FILE --key NAME` and `waxseal sign --digest HEX --key NAME`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use waxseal_agent::proto::RsaPadding;

use super::Ctx;
use crate::verify::hash_file;
use crate::SignArgs;

pub fn run(ctx: &Ctx, args: SignArgs) -> Result<()> {
    let mut client = ctx.connect()?;
    let padding = args.pss.then_some(RsaPadding::Pss);
    if let Some(hex_digest) = &args.digest {
        let digest = hex::decode(hex_digest.trim())
            .context("--digest must be hexadecimal, e.g. the output of sha256sum")?;
        let signed = client.sign_digest(&args.key, &digest, args.hash, padding)?;
        if ctx.json {
            return ctx.print_json(&signed);
        }
        outln!("{}", B64.encode(&signed.signature.0));
        return Ok(());
    }
    let Some(file) = args.file else {
        bail!("give a FILE to sign or --digest HEX");
    };
    let pk = client.public_key(&args.key)?;
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
    let out = args.out.unwrap_or_else(|| {
        let mut p = file.clone().into_os_string();
        p.push(".sig");
        PathBuf::from(p)
    });
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
    Ok(())
}
