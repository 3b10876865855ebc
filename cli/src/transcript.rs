//! Ceremony transcripts (README.md, "Ceremony transcripts"): the files a `waxseal ca
//! root|intermediate|tsa|crl --transcript DIR` writes, and the offline check of
//! `waxseal ca transcript verify DIR`.
//!
//! The layout: `command.json`, `agent.json`, `tbs.der`, `tbs-summary.json`,
//! `approvals/` (when the key needed a quorum), the result (`certificate.pem`, or
//! `crl.pem` with `issuer.pem`), `audit.jsonl`, `witness.pub.pem`, then `MANIFEST` (one
//! `SHA256-HEX  PATH` line per file) and `MANIFEST.sig` (base64 of the witness key's
//! signature over the SHA-256 (P-384: SHA-384) of `MANIFEST`).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use waxseal_proto::proto::HashAlg;

use crate::ca;
use crate::verify::{hash_bytes, spki_from_pem, AnyPublicKey};

/// The manifest's file name.
pub const MANIFEST: &str = "MANIFEST";
/// The witness signature's file name.
pub const MANIFEST_SIG: &str = "MANIFEST.sig";
/// The witness key's file name.
pub const WITNESS_PUB: &str = "witness.pub.pem";
/// The audit records' file name.
pub const AUDIT: &str = "audit.jsonl";
/// At most this many files in a transcript.
pub const MAX_FILES: usize = 200;
/// At most this many bytes in one transcript file.
pub const MAX_FILE: u64 = 16 * 1024 * 1024;

/// Refuses a DIR that is a symlink, not a directory, or not empty.
pub fn check_target(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("cannot read --transcript {}: {e}", dir.display())),
        Ok(m) if m.file_type().is_symlink() => bail!(
            "--transcript {} is a symbolic link; name the directory itself",
            dir.display()
        ),
        Ok(m) if !m.is_dir() => bail!("--transcript {} is not a directory", dir.display()),
        Ok(_) => {
            let mut entries = fs::read_dir(dir)
                .with_context(|| format!("cannot read --transcript {}", dir.display()))?;
            if entries.next().is_some() {
                bail!(
                    "--transcript {} is not empty; a transcript goes into a new or empty directory",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// The manifest text of `files` (relative path → bytes).
pub fn manifest(files: &BTreeMap<String, Vec<u8>>) -> String {
    files
        .iter()
        .map(|(name, data)| format!("{}  {name}\n", hex::encode(Sha256::digest(data))))
        .collect()
}

/// The digest the witness signs: of `manifest`, with the key's default hash.
pub fn manifest_digest(spki: &[u8], manifest: &[u8]) -> Result<(Vec<u8>, HashAlg)> {
    let key = AnyPublicKey::from_spki(spki).context("the witness key")?;
    let hash = key.default_hash();
    Ok((hash_bytes(hash, manifest), hash))
}

/// Writes `files` (plus `MANIFEST` and `MANIFEST.sig`) into `dir`, built in a sibling
/// temporary directory (mode 0700) and renamed into place: no partial transcript.
pub fn write_dir(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    check_target(dir)?;
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("--transcript {} has no usable name", dir.display()))?;
    let tmp = parent.join(format!(".{name}.tmp{}", std::process::id()));
    // mkdir(2) refuses an existing path (a symbolic link too): the directory is ours.
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let build = || -> Result<()> {
        for (rel, data) in files {
            let path = tmp.join(rel);
            if let Some(p) = path.parent() {
                if !p.exists() {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(p)
                        .with_context(|| format!("cannot create {}", p.display()))?;
                }
            }
            fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))?;
        }
        // rename(2) replaces an empty directory, never one with files.
        fs::rename(&tmp, dir).with_context(|| format!("cannot create {}", dir.display()))
    };
    let r = build();
    if r.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    r
}

/// A transcript's audit records as lines: each as the agent wrote it (the agent's
/// records are JSON objects with sorted keys, so serde_json gives back the same bytes;
/// the chain check proves it).
pub fn audit_lines(records: &[Value]) -> Result<String> {
    let mut out = String::new();
    for r in records {
        if r.get("truncated").and_then(Value::as_bool) == Some(true) {
            bail!("an audit record was too long for the agent's answer; the transcript cannot hold it");
        }
        out.push_str(&serde_json::to_string(r)?);
        out.push('\n');
    }
    Ok(out)
}

/// One failed check, naming the piece.
fn fail(piece: &str, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{piece}: {why}")
}

/// What `verify` found.
#[derive(Debug, serde::Serialize)]
pub struct Verified {
    /// Files checked against the manifest.
    pub files: usize,
    /// Audit records whose chain links were checked.
    pub audit_records: u64,
    /// The seq of the transcript's last audit record, and its SHA-256: in the agent's
    /// log, the record after it has this hash as `prev` (or, when it is the last, `waxseal
    /// audit verify` prints it), which shows the records are the log's own.
    pub audit_last: (u64, String),
    /// The `signed` record's seq.
    pub signed_seq: u64,
    /// The key that signed the TBS.
    pub key: String,
    /// Approvals found, when the key had a quorum.
    pub approvals: usize,
    /// `certificate.pem` or `crl.pem`.
    pub result: String,
    /// Where the witness key came from.
    pub witness: String,
    /// SHA-256 of the witness key's SubjectPublicKeyInfo.
    pub witness_key_sha256: String,
}

/// Every regular file under `dir` (one level of subdirectories), relative paths.
/// Symbolic links and other kinds are refused.
fn list(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new(), 0)];
    while let Some((path, prefix, depth)) = stack.pop() {
        for e in fs::read_dir(&path).with_context(|| format!("cannot read {}", path.display()))? {
            let e = e?;
            let name = e
                .file_name()
                .into_string()
                .map_err(|_| anyhow!("{}: a file name that is not UTF-8", path.display()))?;
            let rel = format!("{prefix}{name}");
            let t = e.file_type()?;
            if t.is_dir() && depth == 0 {
                stack.push((e.path(), format!("{rel}/"), 1));
            } else if t.is_file() {
                out.push(rel);
            } else {
                bail!(
                    "{rel}: not a regular file (symbolic links and nested directories are refused)"
                );
            }
            if out.len() > MAX_FILES {
                bail!("more than {MAX_FILES} files: not a transcript");
            }
        }
    }
    out.sort();
    Ok(out)
}

fn read(dir: &Path, rel: &str) -> Result<Vec<u8>> {
    let path = dir.join(rel);
    let m = fs::symlink_metadata(&path).map_err(|e| fail(rel, format!("cannot read: {e}")))?;
    if !m.is_file() {
        bail!("{rel}: not a regular file");
    }
    if m.len() > MAX_FILE {
        bail!("{rel}: larger than {MAX_FILE} bytes");
    }
    fs::read(&path).map_err(|e| fail(rel, format!("cannot read: {e}")))
}

/// Checks the transcript in `dir` offline; `witness` is the witness key's PEM when the
/// caller trusts one, else the transcript's own `witness.pub.pem` (integrity only).
pub fn verify(dir: &Path, witness: Option<&Path>) -> Result<Verified> {
    let meta =
        fs::symlink_metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "{} is not a directory (symbolic links are not followed)",
            dir.display()
        );
    }
    // The manifest and its signature first.
    let manifest = read(dir, MANIFEST)?;
    let sig_text = read(dir, MANIFEST_SIG)?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&sig_text).trim())
        .map_err(|e| fail(MANIFEST_SIG, format!("not base64: {e}")))?;
    let (witness_pem, witness_from) = match witness {
        Some(p) => (
            {
                let data = fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
                if data.len() > 64 * 1024 {
                    bail!("{} is larger than a public key can be", p.display());
                }
                String::from_utf8(data)
                    .map_err(|_| anyhow!("{} is not a PEM public key", p.display()))?
            },
            p.display().to_string(),
        ),
        None => (
            String::from_utf8(read(dir, WITNESS_PUB)?)
                .map_err(|_| fail(WITNESS_PUB, "not UTF-8"))?,
            format!("{WITNESS_PUB} (the transcript's own key: this proves integrity, not who witnessed)"),
        ),
    };
    let spki = spki_from_pem(&witness_pem).map_err(|e| fail("witness key", e))?;
    let key = AnyPublicKey::from_spki(&spki).map_err(|e| fail("witness key", e))?;
    let hash = key.default_hash();
    key.verify_digest(&hash_bytes(hash, &manifest), hash, &signature, false)
        .map_err(|e| {
            fail(
                MANIFEST_SIG,
                format!("{e} (the manifest or its signature was changed, or another witness key)"),
            )
        })?;

    // Every file listed, with its hash; nothing missing, nothing extra.
    let text = std::str::from_utf8(&manifest).map_err(|_| fail(MANIFEST, "not UTF-8"))?;
    let mut listed = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let (digest, name) = line
            .split_once("  ")
            .ok_or_else(|| fail(MANIFEST, format!("line {}: not `SHA256  PATH`", i + 1)))?;
        if name.contains("..")
            || name.starts_with('/')
            || listed
                .insert(name.to_string(), digest.to_string())
                .is_some()
        {
            bail!(
                "{MANIFEST}: line {}: {name:?} is not a fresh relative path",
                i + 1
            );
        }
    }
    let present = list(dir)?;
    for name in &present {
        if name != MANIFEST && name != MANIFEST_SIG && !listed.contains_key(name) {
            bail!("{name}: a file the manifest does not list");
        }
    }
    let mut files = BTreeMap::new();
    for (name, digest) in &listed {
        if !present.contains(name) {
            bail!("{name}: listed in the manifest but missing");
        }
        let data = read(dir, name)?;
        if hex::encode(Sha256::digest(&data)) != *digest {
            bail!("{name}: its SHA-256 differs from the manifest's (the file was changed)");
        }
        files.insert(name.clone(), data);
    }
    let get = |name: &str| {
        files
            .get(name)
            .ok_or_else(|| fail(name, "missing from the transcript"))
    };

    // The audit records: chain links, then the signature's records.
    let audit_path = dir.join(AUDIT);
    let chain = waxseal_proto::audit_chain::verify_files(&[audit_path])
        .map_err(|b| fail(AUDIT, format!("line {}: {}", b.line, b.problem)))?;
    let records: Vec<Value> = std::str::from_utf8(get(AUDIT)?)
        .map_err(|_| fail(AUDIT, "not UTF-8"))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .map_err(|e| fail(AUDIT, e))?;
    let tbs = get("tbs.der")?;
    let tbs_sha = hex::encode(Sha256::digest(tbs));
    let field = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
    let signed = records
        .iter()
        .find(|r| {
            field(r, "event").as_deref() == Some("signed")
                && field(r, "tbs_sha256").as_deref() == Some(&tbs_sha)
        })
        .ok_or_else(|| fail(AUDIT, "no `signed` record names the SHA-256 of tbs.der"))?;
    let seq = signed
        .get("seq")
        .and_then(Value::as_u64)
        .unwrap_or_default();
    let signer = field(signed, "key").unwrap_or_default();
    let intent = signed.get("intent").and_then(Value::as_u64);
    if !records.iter().any(|r| {
        r.get("seq").and_then(Value::as_u64) == intent
            && field(r, "event").as_deref() == Some("intent")
    }) {
        bail!("{AUDIT}: the intent record of the signature (seq {intent:?}) is missing");
    }
    let summary: Value = serde_json::from_slice(get("tbs-summary.json")?)
        .map_err(|e| fail("tbs-summary.json", e))?;
    if summary.get("tbs_sha256").and_then(Value::as_str) != Some(&tbs_sha) {
        bail!("tbs-summary.json: its tbs_sha256 is not the SHA-256 of tbs.der");
    }

    // The result: its TBS is tbs.der, and the issuer's key verifies it.
    let result = if files.contains_key("certificate.pem") {
        let certs = ca::pem_certificates(get("certificate.pem")?, 10)
            .map_err(|e| fail("certificate.pem", e))?;
        let (_, cert) =
            X509Certificate::from_der(&certs[0]).map_err(|e| fail("certificate.pem", e))?;
        if cert.tbs_certificate.as_ref() != tbs.as_slice() {
            bail!("certificate.pem: its TBSCertificate is not tbs.der");
        }
        let issuer_spki = match certs.get(1) {
            Some(next) => X509Certificate::from_der(next)
                .map_err(|e| fail("certificate.pem", e))?
                .1
                .public_key()
                .raw
                .to_vec(),
            None => cert.public_key().raw.to_vec(),
        };
        ca::check_signature(&certs[0], &issuer_spki)
            .map_err(|e| fail("certificate.pem", format!("{e:#}")))?;
        "certificate.pem"
    } else if files.contains_key("crl.pem") {
        use x509_parser::revocation_list::CertificateRevocationList;
        let der = ca::pem_or_der(get("crl.pem")?, "X509 CRL").map_err(|e| fail("crl.pem", e))?;
        let (_, crl) = CertificateRevocationList::from_der(&der).map_err(|e| fail("crl.pem", e))?;
        if crl.tbs_cert_list.as_ref() != tbs.as_slice() {
            bail!("crl.pem: its TBSCertList is not tbs.der");
        }
        let issuer =
            ca::pem_certificates(get("issuer.pem")?, 10).map_err(|e| fail("issuer.pem", e))?;
        let (_, cert) = X509Certificate::from_der(&issuer[0]).map_err(|e| fail("issuer.pem", e))?;
        ca::check_crl_signature(&der, cert.public_key().raw)
            .map_err(|e| fail("crl.pem", format!("{e:#}")))?;
        "crl.pem"
    } else {
        bail!("certificate.pem or crl.pem: the transcript holds no result");
    };

    // Approvals: the texts and signatures are those of the audit records.
    let mut approvals = 0;
    if let Some(id) = field(signed, "approval") {
        let requested = records
            .iter()
            .find(|r| {
                field(r, "event").as_deref() == Some("approval-requested")
                    && field(r, "approval").as_deref() == Some(&id)
            })
            .ok_or_else(|| {
                fail(
                    AUDIT,
                    format!("the approval-requested record of {id} is missing"),
                )
            })?;
        let text = get("approvals/text.txt")?;
        if field(requested, "text").as_deref().map(str::as_bytes) != Some(text.as_slice()) {
            bail!("approvals/text.txt: not the text of the approval-requested record");
        }
        let mut signers = Vec::new();
        for r in records.iter().filter(|r| {
            field(r, "event").as_deref() == Some("approved")
                && field(r, "approval").as_deref() == Some(&id)
        }) {
            approvals += 1;
            let name = format!("approvals/{approvals}.sig");
            let sig = get(&name)?;
            if field(r, "signature").as_deref().map(str::as_bytes) != Some(sig.as_slice()) {
                bail!("{name}: not the signature of the audit record of approval {approvals}");
            }
            let armored = std::str::from_utf8(sig).map_err(|_| fail(&name, "not UTF-8"))?;
            let fp = sshsig::verify(armored, text)
                .map_err(|e| fail(&name, format!("{e:#} (over approvals/text.txt)")))?;
            if field(r, "fingerprint").as_deref() != Some(fp.as_str()) {
                bail!("{name}: signed by {fp}, not by the approver its audit record names");
            }
            if signers.contains(&fp) {
                bail!("{name}: a second approval by {fp}");
            }
            signers.push(fp);
        }
        let quorum = requested
            .get("quorum")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        if (approvals as u64) < quorum {
            bail!("{AUDIT}: {approvals} approvals of {id}, fewer than its quorum {quorum}");
        }
        if files.contains_key(&format!("approvals/{}.sig", approvals + 1)) {
            bail!("approvals/{}.sig: no audit record holds it", approvals + 1);
        }
    }
    Ok(Verified {
        files: files.len(),
        audit_records: records.len() as u64,
        audit_last: (chain.records, chain.last_hash),
        signed_seq: seq,
        key: signer,
        approvals,
        result: result.to_string(),
        witness: witness_from,
        witness_key_sha256: hex::encode(Sha256::digest(&spki)),
    })
}

/// SSH signatures (the SSHSIG format of OpenSSH's PROTOCOL.sshsig) as approvers make
/// them with `ssh-keygen -Y sign -n waxseal-approval`, checked offline: Ed25519 and
/// ECDSA P-256/P-384 keys, SHA-256 or SHA-512 message hashes.
pub mod sshsig {
    use anyhow::{anyhow, bail, Result};
    use base64::Engine as _;
    use sha2::{Digest, Sha256, Sha512};

    /// The namespace approvals are signed in.
    pub const NAMESPACE: &str = "waxseal-approval";
    /// At most this many bytes of armored text.
    const MAX_ARMORED: usize = 64 * 1024;

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8]> {
            if self.0.len() < n {
                bail!("the signature blob ends early");
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Ok(a)
        }
        fn string(&mut self) -> Result<&'a [u8]> {
            let len = self.take(4)?;
            let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            self.take(n)
        }
    }

    fn put_string(out: &mut Vec<u8>, v: &[u8]) {
        out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(v);
    }

    /// A checked signature: the signer's key fingerprint (`SHA256:…`, as ssh-keygen
    /// prints it).
    pub fn verify(armored: &str, message: &[u8]) -> Result<String> {
        if armored.len() > MAX_ARMORED {
            bail!("larger than an SSH signature can be");
        }
        let body = armored
            .trim()
            .strip_prefix("-----BEGIN SSH SIGNATURE-----")
            .and_then(|b| b.strip_suffix("-----END SSH SIGNATURE-----"))
            .ok_or_else(|| anyhow!("not an armored SSH signature"))?;
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| anyhow!("not base64: {e}"))?;
        let mut r = Reader(&blob);
        if r.take(6)? != b"SSHSIG" || r.take(4)? != [0, 0, 0, 1] {
            bail!("not an SSHSIG version 1 signature");
        }
        let public = r.string()?;
        let namespace = r.string()?;
        let reserved = r.string()?;
        let hash_alg = r.string()?;
        let signature = r.string()?;
        if namespace != NAMESPACE.as_bytes() {
            bail!("made for another namespace than {NAMESPACE}");
        }
        let hashed = match hash_alg {
            b"sha256" => Sha256::digest(message).to_vec(),
            b"sha512" => Sha512::digest(message).to_vec(),
            _ => bail!("unknown hash algorithm"),
        };
        let mut signed = b"SSHSIG".to_vec();
        put_string(&mut signed, namespace);
        put_string(&mut signed, reserved);
        put_string(&mut signed, hash_alg);
        put_string(&mut signed, &hashed);
        let mut k = Reader(public);
        let kind = k.string()?;
        let mut s = Reader(signature);
        if s.string()? != kind {
            bail!("the signature's algorithm is not its key's");
        }
        let sig = s.string()?;
        let bad = |e: &dyn std::fmt::Display| anyhow!("the signature does NOT verify: {e}");
        match kind {
            b"ssh-ed25519" => {
                let key: [u8; 32] = k
                    .string()?
                    .try_into()
                    .map_err(|_| anyhow!("bad Ed25519 key"))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|e| bad(&e))?;
                let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|e| bad(&e))?;
                key.verify_strict(&signed, &sig).map_err(|e| bad(&e))?;
            }
            b"ecdsa-sha2-nistp256" | b"ecdsa-sha2-nistp384" => {
                let _curve = k.string()?;
                let point = k.string()?;
                let mut rs = Reader(sig);
                let (rr, ss) = (rs.string()?, rs.string()?);
                let trim = |v: &[u8], n: usize| -> Result<Vec<u8>> {
                    let v = &v[v.iter().position(|&b| b != 0).unwrap_or(v.len())..];
                    if v.len() > n {
                        bail!("an ECDSA signature value is too long");
                    }
                    let mut out = vec![0u8; n - v.len()];
                    out.extend_from_slice(v);
                    Ok(out)
                };
                use p256::ecdsa::signature::Verifier as _;
                if kind == b"ecdsa-sha2-nistp256" {
                    let key =
                        p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| bad(&e))?;
                    let raw = [trim(rr, 32)?, trim(ss, 32)?].concat();
                    let sig = p256::ecdsa::Signature::from_slice(&raw).map_err(|e| bad(&e))?;
                    key.verify(&signed, &sig).map_err(|e| bad(&e))?;
                } else {
                    let key =
                        p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|e| bad(&e))?;
                    let raw = [trim(rr, 48)?, trim(ss, 48)?].concat();
                    let sig = p384::ecdsa::Signature::from_slice(&raw).map_err(|e| bad(&e))?;
                    key.verify(&signed, &sig).map_err(|e| bad(&e))?;
                }
            }
            other => bail!(
                "key type {:?} is not checked offline (Ed25519 and ECDSA P-256/P-384 are)",
                String::from_utf8_lossy(&other[..other.len().min(40)])
            ),
        }
        Ok(format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(public))
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn armored(blob: &[u8]) -> String {
        format!(
            "-----BEGIN SSH SIGNATURE-----\n{}\n-----END SSH SIGNATURE-----\n",
            base64::engine::general_purpose::STANDARD.encode(blob)
        )
    }

    fn string(out: &mut Vec<u8>, v: &[u8]) {
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }

    #[test]
    fn malformed_ssh_signatures_are_refused_naming_why() {
        let err = |a: &str| sshsig::verify(a, b"text").unwrap_err().to_string();
        assert!(err("hello").contains("not an armored SSH signature"));
        assert!(err(&armored(b"SSHSIG")).contains("ends early"));
        assert!(err(&armored(b"SSHSIG\0\0\0\x02")).contains("version 1"));
        let mut blob = b"SSHSIG\0\0\0\x01".to_vec();
        string(&mut blob, b"pub");
        string(&mut blob, b"git");
        string(&mut blob, b"");
        string(&mut blob, b"sha512");
        string(&mut blob, b"sig");
        assert!(err(&armored(&blob)).contains("another namespace"));
        // A length that runs past the end.
        let mut blob = b"SSHSIG\0\0\0\x01".to_vec();
        blob.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(err(&armored(&blob)).contains("ends early"));
        assert!(err(&"x".repeat(70_000)).contains("larger than"));
    }

    #[test]
    fn the_target_must_be_new_or_empty_and_not_a_link() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_target(&dir.path().join("new")).is_ok());
        assert!(check_target(dir.path()).is_ok());
        fs::write(dir.path().join("f"), "x").unwrap();
        let e = check_target(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        assert!(check_target(&dir.path().join("f"))
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
        std::os::unix::fs::symlink(dir.path(), dir.path().join("l")).unwrap();
        let e = check_target(&dir.path().join("l")).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn the_manifest_lists_each_file_with_its_sha256() {
        let mut files = BTreeMap::new();
        files.insert("b".to_string(), b"two".to_vec());
        files.insert("a".to_string(), b"one".to_vec());
        let m = manifest(&files);
        assert_eq!(
            m,
            format!(
                "{}  a\n{}  b\n",
                hex::encode(Sha256::digest(b"one")),
                hex::encode(Sha256::digest(b"two"))
            )
        );
    }
}
