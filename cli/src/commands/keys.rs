//! `waxseal keys list|generate|attest|pubkey`.

use anyhow::{Context as _, Result};

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
        KeysCommand::Generate { name, alg } => {
            let made = client.generate_key(&name, alg)?;
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
                    if ctx.json {
                        return ctx.print_json(&serde_json::json!({ "file": path }));
                    }
                    outln!("{}", path.display());
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
