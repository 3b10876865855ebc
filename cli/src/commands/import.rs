//! `waxseal keys import`: a key made elsewhere brought into a device (README.md,
//! "Importing keys"). For a TPM only the wrapped key (TPM2_Duplicate's output, as three
//! tpm2-tools files or one importable TSS2 key file parsed here) is read and sent; for
//! a YubiKey the PEM private key is, since a PIV card takes keys in the clear. The PEM
//! text is zeroized once sent.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use zeroize::Zeroizing;

use waxseal_proto::client::Client;
use waxseal_proto::proto::{
    Bytes, ImportKey, PinPolicy, Pkcs11Wrapped, TouchPolicy, TpmDuplicate, MAX_IMPORT_PEM,
    MAX_TPM_BLOB,
};

use super::Ctx;

/// What `keys import` was given.
pub struct Source {
    pub name: String,
    pub duplicate: Option<PathBuf>,
    pub public: Option<PathBuf>,
    pub seed: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub wrapped: Option<PathBuf>,
    pub unwrapping_key: Option<String>,
    pub mechanism: String,
    pub public_key: Option<PathBuf>,
    pub touch: Option<TouchPolicy>,
    pub pin_policy: Option<PinPolicy>,
}

/// Reads at most `max` bytes of `path` (one more says it is too long).
fn read_bounded(flag: &str, path: &Path, max: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut buf))
        .with_context(|| format!("cannot read {flag} {}", path.display()))?;
    if buf.len() > max {
        anyhow::bail!(
            "{flag} {}: over {max} bytes; not what {flag} takes",
            path.display()
        );
    }
    Ok(buf)
}

/// DER SubjectPublicKeyInfo from PEM (`-----BEGIN PUBLIC KEY-----`) or DER.
fn spki_der(bytes: &[u8]) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(bytes.to_vec());
    };
    let Some(start) = text.find("-----BEGIN PUBLIC KEY-----") else {
        anyhow::bail!("not a PEM public key (-----BEGIN PUBLIC KEY-----) nor DER");
    };
    let body = &text[start + "-----BEGIN PUBLIC KEY-----".len()..];
    let Some(end) = body.find("-----END PUBLIC KEY-----") else {
        anyhow::bail!("the PEM public key has no END line");
    };
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| anyhow::anyhow!("the PEM public key is not base64: {e}"))
}

pub fn run(ctx: &Ctx, client: &mut Client, src: Source) -> Result<()> {
    let mut req = ImportKey {
        key: src.name.clone(),
        tpm_duplicate: None,
        pkcs11_wrapped: None,
        pem: None,
        touch: src.touch,
        pin_policy: src.pin_policy,
    };
    match (&src.duplicate, &src.public, &src.seed, &src.key) {
        (None, None, None, None) if src.wrapped.is_some() => {
            let (Some(wrapped), Some(unwrapping_key), Some(public)) =
                (&src.wrapped, &src.unwrapping_key, &src.public_key)
            else {
                anyhow::bail!("--wrapped needs --unwrapping-key and --public-key");
            };
            let pub_bytes = read_bounded("--public-key", public, MAX_IMPORT_PEM)?;
            req.pkcs11_wrapped = Some(Pkcs11Wrapped {
                wrapped: Bytes(read_bounded("--wrapped", wrapped, MAX_IMPORT_PEM)?.to_vec()),
                unwrapping_key: unwrapping_key.clone(),
                mechanism: src.mechanism.clone(),
                public: Bytes(
                    spki_der(&pub_bytes)
                        .with_context(|| format!("--public-key {}", public.display()))?,
                ),
            });
        }
        (Some(dup), Some(public), Some(seed), None) => {
            let part = |flag: &str, p: &Path| -> Result<Bytes> {
                Ok(Bytes(read_bounded(flag, p, MAX_TPM_BLOB)?.to_vec()))
            };
            req.tpm_duplicate = Some(TpmDuplicate {
                public: part("--public", public)?,
                duplicate: part("--duplicate", dup)?,
                seed: part("--seed", seed)?,
            });
        }
        (Some(dup), None, None, None) => {
            let bytes = read_bounded(
                "--duplicate",
                dup,
                waxseal::tpmwrap::MAX_IMPORTABLE_PEM,
            )?;
            if !waxseal::tpmwrap::is_tss2_pem(&bytes) {
                anyhow::bail!(
                    "--duplicate {}: not a TSS2 key file (`-----BEGIN TSS2 PRIVATE KEY-----`); a tpm2_duplicate output (TPM2B_PRIVATE) needs --public and --seed too",
                    dup.display()
                );
            }
            let text = String::from_utf8_lossy(&bytes);
            let file = waxseal::tpmwrap::from_importable_pem(&text)
                .with_context(|| format!("--duplicate {}", dup.display()))?;
            if !file.empty_auth {
                eprintln!(
                    "note: the key file says the key has an auth value (no emptyAuth); the agent signs with the device's PIN, so it must be that value"
                );
            }
            req.tpm_duplicate = Some(TpmDuplicate {
                public: Bytes(file.parts.public),
                duplicate: Bytes(file.parts.duplicate),
                seed: Bytes(file.parts.seed),
            });
        }
        (None, None, None, Some(key)) => {
            let bytes = read_bounded("--key", key, MAX_IMPORT_PEM)?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| anyhow::anyhow!("--key {}: not PEM text", key.display()))?;
            req.pem = Some(text.to_string());
        }
        _ => anyhow::bail!("give --duplicate with an importable TSS2 key file, or --duplicate, --public and --seed (a TPM); or --key (a YubiKey)"),
    }
    // The file's bytes are zeroized when dropped; the request's copy is consumed by
    // the call (README.md, "Importing keys", says which copies are wiped).
    let made = client.import_key(req)?;
    if ctx.json {
        return ctx.print_json(&made);
    }
    eprintln!(
        "imported {} ({}) into device {}; it was made outside the device, so attestation cannot vouch for it",
        made.key.name, made.key.alg, made.key.device
    );
    out!("{}", made.pem);
    Ok(())
}

/// Writes each of `files` beside its target and renames them all only when all are
/// written: all or none.
fn write_all(key: &Path, files: &[(PathBuf, &[u8])]) -> Result<()> {
    // An output naming the plaintext key itself would replace it: refused.
    if let Ok(key) = std::fs::canonicalize(key) {
        for (p, _) in files {
            if std::fs::canonicalize(p).is_ok_and(|p| p == key) {
                anyhow::bail!(
                    "{} is the key being wrapped; choose another output with -o",
                    p.display()
                );
            }
        }
    }
    let tmp = |p: &Path| {
        let mut t = p.as_os_str().to_owned();
        t.push(format!(".{}.tmp", std::process::id()));
        PathBuf::from(t)
    };
    let mut written = Vec::new();
    for (p, bytes) in files {
        let t = tmp(p);
        if let Err(e) = std::fs::write(&t, bytes) {
            for w in &written {
                let _ = std::fs::remove_file(w);
            }
            let _ = std::fs::remove_file(&t);
            return Err(e).with_context(|| format!("cannot write {}", t.display()));
        }
        written.push(t);
    }
    for (p, _) in files {
        std::fs::rename(tmp(p), p).with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

/// `waxseal keys wrap-for`: writes an importable TSS2 key file, or with `three_files`
/// OUT.pub, OUT.dpriv and OUT.seed, all or none.
pub fn wrap_for(
    ctx: &Ctx,
    srk: &Path,
    key: &Path,
    out: Option<PathBuf>,
    three_files: bool,
) -> Result<()> {
    let srk_bytes = read_bounded("--tpm-srk", srk, MAX_TPM_BLOB)?;
    let srk_key = waxseal::tpmwrap::srk_point(&srk_bytes)
        .with_context(|| format!("--tpm-srk {}", srk.display()))?;
    let pem = read_bounded("KEY", key, MAX_IMPORT_PEM)?;
    let text = std::str::from_utf8(&pem)
        .map_err(|_| anyhow::anyhow!("{}: not PEM text", key.display()))?;
    let wrapped =
        waxseal::tpmwrap::wrap(text, &srk_key).with_context(|| format!("{}", key.display()))?;
    if !three_files {
        let path = out.unwrap_or_else(|| key.with_extension("tpm-import.pem"));
        let file = waxseal::tpmwrap::to_importable_pem(&wrapped)?;
        write_all(key, &[(path.clone(), file.as_bytes())])?;
        if ctx.json {
            return ctx.print_json(&serde_json::json!({ "file": path }));
        }
        eprintln!(
            "wrapped for the TPM whose storage root key is {}; import it there with:",
            srk.display()
        );
        outln!(
            "waxseal keys import tpm/NAME --duplicate {}",
            path.display()
        );
        return Ok(());
    }
    let prefix = out.unwrap_or_else(|| key.with_extension("tpmdup"));
    let path = |ext: &str| {
        let mut p = prefix.clone().into_os_string();
        p.push(format!(".{ext}"));
        PathBuf::from(p)
    };
    let files = [
        (path("pub"), &wrapped.public[..]),
        (path("dpriv"), &wrapped.duplicate[..]),
        (path("seed"), &wrapped.seed[..]),
    ];
    write_all(key, &files)?;
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "public": files[0].0, "duplicate": files[1].0, "seed": files[2].0,
        }));
    }
    eprintln!(
        "wrapped for the TPM whose storage root key is {}; import it there with:",
        srk.display()
    );
    outln!(
        "waxseal keys import tpm/NAME --duplicate {} --public {} --seed {}",
        files[1].0.display(),
        files[0].0.display(),
        files[2].0.display()
    );
    Ok(())
}
