//! `waxseal verify FILE (--key NAME | --public-key PEMFILE) [--signature SIG]`.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::Ctx;
use crate::verify::{read_signature, verify_file};
use crate::VerifyArgs;

pub fn run(ctx: &Ctx, args: VerifyArgs) -> Result<()> {
    let spki = match (&args.key, &args.public_key) {
        (Some(key), _) => ctx.connect()?.public_key(key)?.spki_der.0,
        (None, Some(pem)) => {
            let text = std::fs::read_to_string(pem)
                .with_context(|| format!("cannot read the public key {}", pem.display()))?;
            crate::verify::spki_from_pem(&text)
                .with_context(|| format!("{} is not a PEM public key", pem.display()))?
        }
        (None, None) => anyhow::bail!("give --key NAME or --public-key PEMFILE"),
    };
    let sig_path = args.signature.clone().unwrap_or_else(|| {
        let mut p = args.file.clone().into_os_string();
        p.push(".sig");
        PathBuf::from(p)
    });
    let signature = read_signature(&sig_path)?;
    let checked = verify_file(&spki, &args.file, &signature, args.pss)?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "verified": true, "file": args.file, "signature_file": sig_path, "alg": checked,
        }));
    }
    outln!("Verified OK: {} ({checked})", args.file.display());
    Ok(())
}
