//! `waxseal keys list|generate|attest|pubkey`.

use anyhow::{Context as _, Result};

use waxseal_proto::proto::TouchPolicy;

use super::Ctx;
use crate::{sshfmt, KeysCommand};

pub fn run(ctx: &Ctx, cmd: KeysCommand) -> Result<()> {
    let mut client = ctx.connect()?;
    match cmd {
        KeysCommand::List => {
            let keys = client.list_keys()?;
            if ctx.json {
                return ctx.print_json(&keys);
            }
            let width = keys
                .keys
                .iter()
                .map(|k| k.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            let dev_width = keys
                .keys
                .iter()
                .map(|k| k.device.len())
                .max()
                .unwrap_or(6)
                .max(6);
            outln!(
                "{:width$}  {:dev_width$}  {:8}  PURPOSES",
                "NAME",
                "DEVICE",
                "ALG"
            );
            for k in &keys.keys {
                let purposes: Vec<&str> = k.purposes.iter().map(|p| p.as_str()).collect();
                outln!(
                    "{:width$}  {:dev_width$}  {:8}  {}",
                    k.name,
                    k.device,
                    k.alg.to_string(),
                    purposes.join(",")
                );
            }
            Ok(())
        }
        KeysCommand::Generate {
            name,
            alg,
            touch,
            pin_policy,
        } => {
            if touch.is_some_and(|t| t != TouchPolicy::Never) {
                eprintln!("touch the YubiKey when it blinks: it signs the new key's certificate");
            }
            let made = client.generate_key_with(&name, alg, touch, pin_policy)?;
            if ctx.json {
                return ctx.print_json(&made);
            }
            eprintln!(
                "generated {} ({}) on device {}; the private key cannot leave it",
                made.key.name, made.key.alg, made.key.device
            );
            out!("{}", made.pem);
            Ok(())
        }
        KeysCommand::Attest { name, out, nonce } => {
            let nonce = nonce
                .map(|h| hex::decode(h.trim()).context("--nonce is not hex"))
                .transpose()?;
            let a = client.attest(&name, nonce.as_deref())?;
            let text = serde_json::to_string_pretty(&a)? + "\n";
            match out {
                Some(dir) => {
                    let label = name.split_once('/').map_or(name.as_str(), |(_, l)| l);
                    let path = dir.join(format!("{label}.{}.json", a.format));
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    std::fs::write(&path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    let mut files = vec![path];
                    // PIV: the certificates as PEM files too, for `openssl verify`.
                    for (member, suffix) in [
                        ("attestation_certificate", "attestation.pem"),
                        ("intermediate_certificate", "f9.pem"),
                    ] {
                        if let Some(pem) = a.evidence.get(member).and_then(|v| v.as_str()) {
                            let p = dir.join(format!("{label}.{suffix}"));
                            std::fs::write(&p, pem)
                                .with_context(|| format!("cannot write {}", p.display()))?;
                            files.push(p);
                        }
                    }
                    if ctx.json {
                        return ctx.print_json(&serde_json::json!({ "files": files }));
                    }
                    for f in files {
                        outln!("{}", f.display());
                    }
                }
                None => out!("{text}"),
            }
            Ok(())
        }
        KeysCommand::Pubkey { name, format } => {
            let pk = client.public_key(&name)?;
            match format.as_str() {
                "ssh" => {
                    let line = sshfmt::authorized_key(&pk.spki_der.0, &name)?;
                    if ctx.json {
                        return ctx.print_json(&serde_json::json!({ "ssh": line }));
                    }
                    outln!("{line}");
                }
                _ => {
                    if ctx.json {
                        return ctx.print_json(&pk);
                    }
                    out!("{}", pk.pem);
                }
            }
            Ok(())
        }
    }
}
