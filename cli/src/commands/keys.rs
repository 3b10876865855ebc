//! `waxseal keys list|generate|attest|pubkey`.

use anyhow::{Context as _, Result};

use waxseal_proto::proto::{parse_pcr_values, PcrSelection, TouchPolicy, MAX_PCR_VALUES_FILE};

use super::Ctx;
use crate::{sshfmt, KeysCommand};

pub fn run(ctx: &Ctx, cmd: KeysCommand) -> Result<()> {
    // CLI-only: no agent.
    if let KeysCommand::WrapFor {
        tpm_srk,
        key,
        out,
        format,
    } = cmd
    {
        return super::import::wrap_for(ctx, &tpm_srk, &key, out, format == "tpm2-tools");
    }
    let mut client = ctx.connect()?;
    match cmd {
        KeysCommand::List { uri } => {
            let keys = client.list_keys()?;
            if ctx.json {
                if !uri {
                    return ctx.print_json(&keys);
                }
                let mut v = serde_json::to_value(&keys)?;
                if let Some(list) = v.get_mut("keys").and_then(|k| k.as_array_mut()) {
                    for (entry, k) in list.iter_mut().zip(&keys.keys) {
                        entry["module_uri"] = module_uri(&k.name).into();
                    }
                }
                return ctx.print_json(&v);
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
            let purposes = |k: &waxseal_proto::proto::KeyInfo| {
                let p: Vec<&str> = k.purposes.iter().map(|p| p.as_str()).collect();
                p.join(",")
            };
            let purpose_width = keys
                .keys
                .iter()
                .map(|k| purposes(k).len())
                .max()
                .unwrap_or(8)
                .max(8);
            // The PCRS column only when some key is bound to PCRs.
            let pcrs = |k: &waxseal_proto::proto::KeyInfo| {
                k.pcrs
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |p| p.to_string())
            };
            let bound = keys.keys.iter().any(|k| k.pcrs.is_some());
            let pcr_width = keys
                .keys
                .iter()
                .map(|k| pcrs(k).len())
                .max()
                .unwrap_or(4)
                .max(4);
            // The ORIGIN column only when some key was imported.
            let any_imported = keys.keys.iter().any(|k| k.imported);
            let origin = |k: &waxseal_proto::proto::KeyInfo| {
                if !any_imported {
                    String::new()
                } else if k.imported {
                    format!("  {:9}", "imported")
                } else {
                    format!("  {:9}", "device")
                }
            };
            let pcr_col = |text: &str| {
                if bound {
                    format!("  {text:pcr_width$}")
                } else {
                    String::new()
                }
            };
            if uri {
                outln!(
                    "{:width$}  {:dev_width$}  {:8}{}{}  {:purpose_width$}  URI",
                    "NAME",
                    "DEVICE",
                    "ALG",
                    if any_imported {
                        format!("  {:9}", "ORIGIN")
                    } else {
                        String::new()
                    },
                    pcr_col("PCRS"),
                    "PURPOSES"
                );
            } else {
                outln!(
                    "{:width$}  {:dev_width$}  {:8}{}{}  PURPOSES",
                    "NAME",
                    "DEVICE",
                    "ALG",
                    if any_imported {
                        format!("  {:9}", "ORIGIN")
                    } else {
                        String::new()
                    },
                    pcr_col("PCRS")
                );
            }
            for k in &keys.keys {
                if uri {
                    outln!(
                        "{:width$}  {:dev_width$}  {:8}{}{}  {:purpose_width$}  {}",
                        k.name,
                        k.device,
                        k.alg.to_string(),
                        origin(k),
                        pcr_col(&pcrs(k)),
                        purposes(k),
                        module_uri(&k.name)
                    );
                } else {
                    outln!(
                        "{:width$}  {:dev_width$}  {:8}{}{}  {}",
                        k.name,
                        k.device,
                        k.alg.to_string(),
                        origin(k),
                        pcr_col(&pcrs(k)),
                        purposes(k)
                    );
                }
            }
            if any_imported {
                eprintln!("ORIGIN imported: the device holds the key but did not make it; its attestation cannot vouch that the key never existed outside it");
            }
            Ok(())
        }
        KeysCommand::Generate {
            name,
            alg,
            touch,
            pin_policy,
            pcrs,
            pcr_values,
        } => {
            if touch.is_some_and(|t| t != TouchPolicy::Never) {
                eprintln!("touch the YubiKey when it blinks: it signs the new key's certificate");
            }
            let made = match pcrs {
                Some(sel) => {
                    let values = pcr_values
                        .map(|path| read_pcr_values(&path, &sel))
                        .transpose()?;
                    if touch.is_some() || pin_policy.is_some() {
                        anyhow::bail!(
                            "--pcrs binds a TPM key; --touch and --pin-policy are for YubiKey keys"
                        );
                    }
                    client.generate_key_pcrs(&name, alg, sel, values)?
                }
                None => client.generate_key_with(&name, alg, touch, pin_policy)?,
            };
            if ctx.json {
                return ctx.print_json(&made);
            }
            eprintln!(
                "generated {} ({}) on device {}; the private key cannot leave it",
                made.key.name, made.key.alg, made.key.device
            );
            if let Some(sel) = &made.key.pcrs {
                eprintln!("it signs only while PCRs {sel} hold the values it is bound to");
            }
            out!("{}", made.pem);
            Ok(())
        }
        KeysCommand::Attest {
            name,
            out,
            nonce,
            challenge,
            format,
            ak_cert,
        } => {
            let format = waxseal::device_attest::Format::parse(&format)?;
            let nonce = nonce
                .map(|h| hex::decode(h.trim()).context("--nonce is not hex"))
                .transpose()?;
            let nonce = match &challenge {
                Some(c) => Some(waxseal::device_attest::key_authorization_digest(c)?.to_vec()),
                None => nonce,
            };
            if format != waxseal::device_attest::Format::Json {
                let req = super::device_attest::Request {
                    name: &name,
                    format,
                    nonce,
                    challenge: challenge.as_deref(),
                    ak_cert: ak_cert.as_deref(),
                    out: out.as_deref(),
                };
                return super::device_attest::run(ctx, &mut client, &req);
            }
            if ak_cert.is_some() {
                anyhow::bail!("--ak-cert is for --format tpm");
            }
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
        KeysCommand::Import {
            name,
            duplicate,
            public,
            seed,
            key,
            wrapped,
            unwrapping_key,
            mechanism,
            public_key,
            touch,
            pin_policy,
        } => super::import::run(
            ctx,
            &mut client,
            super::import::Source {
                name,
                duplicate,
                public,
                seed,
                key,
                wrapped,
                unwrapping_key,
                mechanism,
                public_key,
                touch,
                pin_policy,
            },
        ),
        KeysCommand::WrapFor { .. } => Ok(()),
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

/// The values of `sel`'s PCRs from a `--pcr-values` file (docs: README.md, "TPM keys
/// bound to PCRs").
fn read_pcr_values(path: &std::path::Path, sel: &PcrSelection) -> Result<Vec<Vec<u8>>> {
    use std::io::Read as _;
    let mut text = String::new();
    // At most one byte past the limit, whatever the file is (`-` is not special, but
    // /dev/stdin or a FIFO works).
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(MAX_PCR_VALUES_FILE as u64 + 1)
                .read_to_string(&mut text)
        })
        .with_context(|| format!("cannot read --pcr-values {}", path.display()))?;
    if text.len() > MAX_PCR_VALUES_FILE {
        anyhow::bail!(
            "--pcr-values {}: over {MAX_PCR_VALUES_FILE} bytes; not a PCR values file",
            path.display()
        );
    }
    let values = parse_pcr_values(&text, sel)
        .map_err(|e| anyhow::anyhow!("--pcr-values {}: {e}", path.display()))?;
    Ok(values.into_iter().map(|b| b.0).collect())
}

/// The RFC 7512 URI of key `name` (`DEVICE/LABEL`) as the PKCS#11 module shows it: the
/// token is the device, the object the label (docs/pkcs11-module.md). Every byte but
/// RFC 3986's unreserved characters is percent-encoded, which RFC 7512 allows anywhere.
pub fn module_uri(name: &str) -> String {
    let (device, label) = name.split_once('/').unwrap_or((name, ""));
    format!(
        "pkcs11:token={};object={};type=private",
        pct(device),
        pct(label)
    )
}

fn pct(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::module_uri;

    #[test]
    fn module_uris_percent_encode_all_but_unreserved() {
        assert_eq!(
            module_uri("hsm/release"),
            "pkcs11:token=hsm;object=release;type=private"
        );
        assert_eq!(
            module_uri("yk/9c"),
            "pkcs11:token=yk;object=9c;type=private"
        );
        assert_eq!(
            module_uri("ca-hsm/root key;1"),
            "pkcs11:token=ca-hsm;object=root%20key%3B1;type=private"
        );
    }
}
