//! `waxseal verify --trusted-root` on bundles waxseal did not make (issue 20): keyless
//! bundles signed by sigstore-js (`@sigstore/sign` against @sigstore/mock's Fulcio with
//! its CT log, Rekor v1 and TSA, and the Rekor v2 stand-in of `js/rekor-v2.js`, on
//! 127.0.0.1, `js/keyless.js`): message signatures and DSSE envelopes, each in Rekor v1
//! and Rekor v2. They are verified against the services' trusted root with the signer's
//! identity, and refused, naming the check, when one thing is wrong; `@sigstore/verify`
//! (`js/verify-keyless.js`) reaches the same verdict on each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pkcs11_tests::{bins, output_text, read_json, sigstore_js};
use serde_json::{json, Value};
use tempfile::TempDir;

/// A sigstore-js keyless bundle over `artifact` and its trusted root.
struct Keyless {
    dir: TempDir,
    artifact: PathBuf,
    bundle: Value,
    root: Value,
    identity: String,
    issuer: String,
}

fn keyless(extra: &[&str]) -> Keyless {
    keyless_made(extra, "bundle")
}

/// [`keyless`], reading the bundle `name` keyless.js wrote (`--make` in `extra`).
fn keyless_made(extra: &[&str], name: &str) -> Keyless {
    let js = sigstore_js();
    assert!(
        js.join("node_modules/@sigstore/sign").is_dir(),
        "npm package @sigstore/sign is not installed in {}: run scripts/install-deps",
        js.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir.path().join("release.tar.gz");
    std::fs::write(&artifact, b"release 1.0, signed keyless\n").unwrap();
    let out = Command::new("node")
        .arg(js.join("keyless.js"))
        .arg(dir.path())
        .arg(&artifact)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "keyless.js: {}", output_text(&out));
    let id = read_json(&dir.path().join("identity.json"));
    Keyless {
        bundle: read_json(&dir.path().join(format!("{name}.json"))),
        root: read_json(&dir.path().join("trusted_root.json")),
        identity: id["identity"].as_str().unwrap().to_string(),
        issuer: id["issuer"].as_str().unwrap().to_string(),
        artifact,
        dir,
    }
}

impl Keyless {
    /// `waxseal verify ARTIFACT --bundle B --certificate-identity … --certificate-oidc-issuer
    /// … --trusted-root R` with this bundle and root (written afresh), and `extra`.
    fn verify_with(&self, bundle: &Value, root: &Value, artifact: &Path, extra: &[&str]) -> Output {
        let b = self.dir.path().join("checked.bundle.json");
        let r = self.dir.path().join("checked.root.json");
        std::fs::write(&b, bundle.to_string()).unwrap();
        std::fs::write(&r, root.to_string()).unwrap();
        let mut cmd = Command::new(&bins().cli);
        cmd.arg("verify").arg(artifact).arg("--bundle").arg(&b);
        if !extra
            .iter()
            .any(|a| a.starts_with("--certificate-identity"))
        {
            cmd.args(["--certificate-identity", &self.identity]);
        }
        if !extra
            .iter()
            .any(|a| a.starts_with("--certificate-oidc-issuer"))
        {
            cmd.args(["--certificate-oidc-issuer", &self.issuer]);
        }
        cmd.arg("--trusted-root").arg(&r).args(extra);
        cmd.output().unwrap()
    }

    fn verify(&self, bundle: &Value, root: &Value) -> Output {
        self.verify_with(bundle, root, &self.artifact, &[])
    }
}

/// The run failed with exactly one stderr line naming `check`.
fn refused(out: &Output, check: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {}", output_text(out));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {err}");
    assert!(
        lines[0].starts_with(&format!("waxseal: verify: {check}: ")),
        "expected the check `{check}` named: {err}"
    );
}

fn ok(out: &Output) {
    assert!(out.status.success(), "refused: {}", output_text(out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("Verified OK"),
        "{}",
        output_text(out)
    );
}

#[test]
fn a_sigstore_js_keyless_bundle_verifies_with_its_identity_and_trusted_root() {
    let k = keyless(&[]);
    assert_eq!(
        k.bundle["mediaType"],
        "application/vnd.dev.sigstore.bundle+json;version=0.2"
    );
    ok(&k.verify(&k.bundle, &k.root));

    // --json: every check, in order, each passed.
    let out = k.verify_with(&k.bundle, &k.root, &k.artifact, &["--json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["ok"], true, "{c}");
            c["check"].as_str().unwrap()
        })
        .collect();
    for wanted in [
        "bundle",
        "signature",
        "tlog entry",
        "rfc3161 timestamp",
        "signing time",
        "certificate validity",
        "certificate chain",
        "certificate eku",
        "certificate sct",
        "certificate identity",
        "certificate issuer",
    ] {
        assert!(checks.contains(&wanted), "{wanted} not in {checks:?}");
    }
    assert_eq!(report["verified"], true);

    // Regular expressions, as cosign has them.
    ok(&k.verify_with(
        &k.bundle,
        &k.root,
        &k.artifact,
        &[
            "--certificate-identity-regexp",
            "^https://github\\.com/waxseal/.*@refs/heads/main$",
            "--certificate-oidc-issuer-regexp",
            "^https://token\\.actions\\.githubusercontent\\.com$",
        ],
    ));

    // The artifact by its digest.
    let digest = {
        use sha2::Digest as _;
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(std::fs::read(&k.artifact).unwrap()))
        )
    };
    ok(&k.verify_with(&k.bundle, &k.root, Path::new(&digest), &[]));

    // The same content as a v0.3 bundle, in both spellings: a single `certificate`.
    let mut v3 = k.bundle.clone();
    let leaf = v3["verificationMaterial"]["x509CertificateChain"]["certificates"][0].clone();
    let vm = v3["verificationMaterial"].as_object_mut().unwrap();
    vm.remove("x509CertificateChain");
    vm.insert("certificate".into(), leaf);
    for media in [
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
    ] {
        v3["mediaType"] = json!(media);
        ok(&k.verify(&v3, &k.root));
    }
}

#[test]
fn the_wrong_identity_or_issuer_is_refused() {
    let k = keyless(&[]);
    let out = k.verify_with(
        &k.bundle,
        &k.root,
        &k.artifact,
        &[
            "--certificate-identity",
            "https://github.com/mallory/release/.github/workflows/release.yml@refs/heads/main",
        ],
    );
    refused(&out, "certificate identity");
    // An unanchored regexp matching elsewhere is cosign's meaning; anchored, it is refused.
    let out = k.verify_with(
        &k.bundle,
        &k.root,
        &k.artifact,
        &[
            "--certificate-identity-regexp",
            "^https://github.com/mallory/",
        ],
    );
    refused(&out, "certificate identity");
    let out = k.verify_with(
        &k.bundle,
        &k.root,
        &k.artifact,
        &["--certificate-oidc-issuer", "https://accounts.google.com"],
    );
    refused(&out, "certificate issuer");
    // --json: the report on stdout ends with the failed check, the line on stderr stays.
    let out = k.verify_with(
        &k.bundle,
        &k.root,
        &k.artifact,
        &[
            "--certificate-oidc-issuer",
            "https://accounts.google.com",
            "--json",
        ],
    );
    refused(&out, "certificate issuer");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verified"], false);
    let checks = report["checks"].as_array().unwrap();
    let last = checks.last().unwrap();
    assert_eq!(last["check"], "certificate issuer", "{report}");
    assert_eq!(last["ok"], false);
    assert!(checks[..checks.len() - 1].iter().all(|c| c["ok"] == true));
}

#[test]
fn a_changed_artifact_is_refused() {
    let k = keyless(&[]);
    let other = k.dir.path().join("other.tar.gz");
    std::fs::write(&other, b"release 1.0, changed\n").unwrap();
    refused(&k.verify_with(&k.bundle, &k.root, &other, &[]), "artifact");
}

#[test]
fn a_corrupted_inclusion_proof_is_refused() {
    let k = keyless(&[]);
    let mut b = k.bundle.clone();
    let proof = &mut b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"];
    let hashes = proof["hashes"].as_array().cloned().unwrap_or_default();
    if hashes.is_empty() {
        // A one-leaf tree: the root hash is the leaf's; change the root instead, and the
        // checkpoint no longer matches the proof either, the proof fails first.
        let mut root = B64.decode(proof["rootHash"].as_str().unwrap()).unwrap();
        root[0] ^= 1;
        proof["rootHash"] = json!(B64.encode(root));
    } else {
        let mut h = B64.decode(hashes[0].as_str().unwrap()).unwrap();
        h[0] ^= 1;
        proof["hashes"][0] = json!(B64.encode(h));
    }
    refused(&k.verify(&b, &k.root), "tlog inclusion proof");
    // A sibling hash the tree cannot have.
    let mut b = k.bundle.clone();
    let proof = &mut b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"];
    let mut hashes = proof["hashes"].as_array().cloned().unwrap_or_default();
    hashes.push(json!(B64.encode([7u8; 32])));
    proof["hashes"] = json!(hashes);
    refused(&k.verify(&b, &k.root), "tlog inclusion proof");
}

#[test]
fn a_checkpoint_signed_by_another_key_is_refused() {
    use p256::ecdsa::signature::Signer as _;
    let k = keyless(&[]);
    let mut b = k.bundle.clone();
    let cp = &mut b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]
        ["envelope"];
    let text = cp.as_str().unwrap().to_string();
    let (note, sigs) = text.split_once("\n\n").unwrap();
    let line = sigs.lines().next().unwrap();
    let rest = line.strip_prefix("\u{2014} ").unwrap();
    let (name, sig) = rest.rsplit_once(' ').unwrap();
    let raw = B64.decode(sig).unwrap();
    // The log's key hint, and another key's signature over the same note.
    let other = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let forged: p256::ecdsa::Signature = other.sign(format!("{note}\n").as_bytes());
    let mut new_raw = raw[..4].to_vec();
    new_raw.extend_from_slice(forged.to_der().as_bytes());
    *cp = json!(format!(
        "{note}\n\n\u{2014} {name} {}\n",
        B64.encode(new_raw)
    ));
    refused(&k.verify(&b, &k.root), "tlog checkpoint");
}

#[test]
fn an_sct_from_a_log_outside_the_trusted_root_is_refused() {
    let k = keyless(&[]);
    let mut root = k.root.clone();
    root["ctlogs"] = json!([]);
    refused(&k.verify(&k.bundle, &root), "certificate sct");
}

#[test]
fn a_timestamp_outside_the_tsas_validity_is_refused() {
    let k = keyless(&[]);
    let mut root = k.root.clone();
    // The TSA's window ends where it starts, an hour before the signing.
    let start = root["timestampAuthorities"][0]["validFor"]["start"].clone();
    root["timestampAuthorities"][0]["validFor"]["end"] = start;
    refused(&k.verify(&k.bundle, &root), "rfc3161 timestamp");
}

#[test]
fn an_expired_leaf_without_a_verified_time_is_refused() {
    // Fulcio's clock 30 minutes behind: the leaf (valid ten minutes) expired before the
    // log and the TSA saw the signature.
    let k = keyless(&["--ca-minutes-ago", "30"]);
    refused(&k.verify(&k.bundle, &k.root), "certificate validity");
    // Without the timestamp and the SET there is no verified time, and "now" is never
    // taken instead.
    let mut b = k.bundle.clone();
    let vm = b["verificationMaterial"].as_object_mut().unwrap();
    vm.remove("timestampVerificationData");
    vm["tlogEntries"][0]
        .as_object_mut()
        .unwrap()
        .remove("inclusionPromise");
    refused(&k.verify(&b, &k.root), "signing time");
}

#[test]
fn a_keyless_bundle_of_another_instance_fails_the_default_trusted_root() {
    let k = keyless(&[]);
    let b = k.dir.path().join("b.json");
    std::fs::write(&b, k.bundle.to_string()).unwrap();
    // No --trusted-root and no `waxseal trust update` state: the public-good instance's
    // trusted root shipped with waxseal is used, which knows neither the mock's log nor
    // its Fulcio.
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(&bins().cli)
        .env("XDG_DATA_HOME", state.path())
        .arg("verify")
        .arg(&k.artifact)
        .arg("--bundle")
        .arg(&b)
        .args(["--certificate-identity", &k.identity])
        .args(["--certificate-oidc-issuer", &k.issuer])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("verify: tlog log id"),
        "{}",
        output_text(&out)
    );
}

/// The DER certificates of a PEM file.
fn pem_certs(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|block| {
            let body: String = block
                .split("-----END CERTIFICATE-----")
                .next()
                .unwrap()
                .split_whitespace()
                .collect();
            B64.decode(body).unwrap()
        })
        .collect()
}

/// A trusted root naming exactly one Rekor log (its PEM key and URL) and, if given, one
/// TSA (its chain, signing certificate first), as `js/verify.js` builds it.
fn key_trusted_root(rekor_pem: &Path, rekor_url: &str, tsa_chain: Option<&Path>) -> Value {
    let text = std::fs::read_to_string(rekor_pem).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let spki = B64.decode(body).unwrap();
    let key_id = {
        use sha2::Digest as _;
        B64.encode(sha2::Sha256::digest(&spki))
    };
    let mut root = json!({
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [{
            "baseUrl": rekor_url,
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": B64.encode(&spki),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": { "start": "2000-01-01T00:00:00Z" },
            },
            "logId": { "keyId": key_id },
        }],
        "certificateAuthorities": [], "ctlogs": [], "timestampAuthorities": [],
    });
    if let Some(chain) = tsa_chain {
        let certs: Vec<Value> = pem_certs(chain)
            .iter()
            .map(|c| json!({ "rawBytes": B64.encode(c) }))
            .collect();
        root["timestampAuthorities"] = json!([{
            "uri": "http://127.0.0.1",
            "certChain": { "certificates": certs },
            "validFor": { "start": "2000-01-01T00:00:00Z" },
        }]);
    }
    root
}

#[test]
fn both_verifiers_agree_on_key_based_bundles_of_the_signing_tests() {
    use pkcs11_tests::MockRekor;
    use pkcs11_tests::{agent_with_keys, sigstore_js_verify_with, write_pubkey, LocalService};
    let (_hsm, agent) = agent_with_keys(&[
        ("hsm/ec", "p256"),
        ("hsm/big", "p384"),
        ("hsm/ed", "ed25519"),
    ]);
    let rekor = MockRekor::start();
    let rekor2 = LocalService::rekor_v2("ok");
    let rekor2_key = rekor2.file("rekor.pub.pem");
    let tsa = LocalService::mock_tsa("ok");
    let chain = tsa.file("chain.pem");
    let tmp = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // (what, key, command, log, TSA?)
    // (Ed25519 makes no message-signature bundle: `waxseal sign` refuses it.)
    let kinds: [(&str, &str, &str, u8, bool); 7] = [
        ("rekor v1", "hsm/ec", "sign", 1, false),
        ("rekor v1 p384", "hsm/big", "sign", 1, false),
        ("rekor v1 + tsa", "hsm/ec", "sign", 1, true),
        ("rekor v2 + tsa", "hsm/ec", "sign", 2, true),
        ("dsse, rekor v1", "hsm/ec", "attest", 1, false),
        ("dsse ed25519, rekor v1", "hsm/ed", "attest", 1, false),
        ("dsse, rekor v2 + tsa", "hsm/ec", "attest", 2, true),
    ];
    for (i, (what, key, command, log, with_tsa)) in kinds.into_iter().enumerate() {
        let file = tmp.path().join(format!("artifact-{i}.tgz"));
        std::fs::write(&file, format!("artifact {i}\n").repeat(20)).unwrap();
        let (log_url, log_key) = if log == 1 {
            (rekor.url.clone(), rekor.public_key.clone())
        } else {
            (rekor2.url.clone(), rekor2_key.clone())
        };
        let mut args = vec![command.to_string()];
        if command == "attest" {
            let predicate = tmp.path().join("predicate.json");
            std::fs::write(&predicate, br#"{"built": "by the tests"}"#).unwrap();
            args.extend([
                "--key".into(),
                key.into(),
                "--type".into(),
                "https://example.com/test-predicate/v1".into(),
                "--predicate".into(),
                s(&predicate),
                s(&file),
            ]);
        } else {
            args.extend([s(&file), "--key".into(), key.into()]);
        }
        args.extend([
            "--rekor-url".into(),
            log_url.clone(),
            "--rekor-public-key".into(),
            s(&log_key),
        ]);
        if log == 2 {
            args.extend(["--rekor-version".into(), "2".into()]);
        }
        if with_tsa {
            args.extend(["--tsa-url".into(), tsa.url.clone()]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = agent.cli(&argv);
        assert!(out.status.success(), "{what}: {}", output_text(&out));
        let bundle = PathBuf::from(format!(
            "{}{}",
            s(&file),
            if command == "attest" {
                ".intoto.sigstore.json"
            } else {
                ".sigstore.json"
            }
        ));
        let pem = write_pubkey(&agent, key, tmp.path());
        let tsa_chain = with_tsa.then_some(chain.as_path());
        let root = key_trusted_root(&log_key, &log_url, tsa_chain);
        let root_path = tmp.path().join(format!("root-{i}.json"));
        std::fs::write(&root_path, root.to_string()).unwrap();
        let b = read_json(&bundle);

        let ours = |bundle: &Value, artifact: &Path| -> Result<(), String> {
            let bp = tmp.path().join("checked.json");
            std::fs::write(&bp, bundle.to_string()).unwrap();
            let out = Command::new(&bins().cli)
                .arg("verify")
                .arg(artifact)
                .arg("--bundle")
                .arg(&bp)
                .arg("--public-key")
                .arg(&pem)
                .arg("--trusted-root")
                .arg(&root_path)
                .output()
                .unwrap();
            if out.status.success() {
                Ok(())
            } else {
                Err(output_text(&out))
            }
        };
        let theirs = |bundle: &Value, artifact: &Path| -> Result<(), String> {
            let bp = tmp.path().join("checked-js.json");
            std::fs::write(&bp, bundle.to_string()).unwrap();
            sigstore_js_verify_with(&bp, artifact, &pem, Some((&log_key, &log_url)), tsa_chain)
        };
        // @sigstore/verify 4.x checks a DSSE signature with SHA-256 (README,
        // "Attestations"): P-384 attestations are left out above.
        let agree = |label: &str, bundle: &Value, artifact: &Path, accept: bool| {
            let (o, t) = (ours(bundle, artifact), theirs(bundle, artifact));
            assert_eq!(o.is_ok(), accept, "{what}, {label}: waxseal: {o:?}");
            assert_eq!(
                t.is_ok(),
                accept,
                "{what}, {label}: @sigstore/verify: {t:?}"
            );
        };
        agree("as made", &b, &file, true);

        let changed = tmp.path().join("changed.tgz");
        std::fs::write(&changed, b"another artifact\n").unwrap();
        agree("another artifact", &b, &changed, false);

        // One byte of the checkpoint's signature.
        let mut t = b.clone();
        let cp = &mut t["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]
            ["envelope"];
        let envelope = cp.as_str().unwrap().to_string();
        let (note, sig_line) = envelope.split_once("\n\n").unwrap();
        let (prefix, sig_b64) = sig_line.trim_end().rsplit_once(' ').unwrap();
        let mut sig = B64.decode(sig_b64).unwrap();
        let last = sig.len() - 1;
        sig[last] ^= 0x01;
        *cp = json!(format!("{note}\n\n{prefix} {}\n", B64.encode(&sig)));
        agree("checkpoint signature", &t, &file, false);

        // The log's time moved (v1: the SET no longer verifies).
        if log == 1 {
            let mut t = b.clone();
            let e = &mut t["verificationMaterial"]["tlogEntries"][0];
            let time: i64 = e["integratedTime"].as_str().unwrap().parse().unwrap();
            e["integratedTime"] = json!((time - 3600).to_string());
            agree("integrated time", &t, &file, false);
        }
        // The timestamp's token, one byte changed near its end (the TSA's signature).
        if with_tsa {
            let mut t = b.clone();
            let st = &mut t["verificationMaterial"]["timestampVerificationData"]
                ["rfc3161Timestamps"][0]["signedTimestamp"];
            let mut der = B64.decode(st.as_str().unwrap()).unwrap();
            let n = der.len() - 3;
            der[n] ^= 0x01;
            *st = json!(B64.encode(der));
            agree("timestamp signature", &t, &file, false);
        }
    }
}

/// Makes `bundle` refused by both verifiers for one reason, or accepted as it is.
struct Case {
    label: &'static str,
    /// The check waxseal must name; `None`: both accept.
    check: Option<&'static str>,
    /// Changes the bundle, the trusted root, the identity and the issuer asked for.
    change: fn(&mut Value, &mut Value, &mut String, &mut String),
}

/// The first tlog entry's inclusion proof with one sibling hash changed or, in a
/// one-leaf tree, a sibling hash added. (Not its `rootHash`: @sigstore/verify ignores
/// that field and compares with the checkpoint's root; waxseal, like sigstore-go,
/// refuses a proof whose root is not the checkpoint's, `a_corrupted_inclusion_proof…`.)
fn corrupt_proof(b: &mut Value) {
    let proof = &mut b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"];
    match proof["hashes"].as_array_mut() {
        Some(hashes) if !hashes.is_empty() => {
            let mut h = B64.decode(hashes[0].as_str().unwrap()).unwrap();
            h[0] ^= 1;
            hashes[0] = json!(B64.encode(h));
        }
        _ => proof["hashes"] = json!([B64.encode([7u8; 32])]),
    }
}

/// The first tlog entry's checkpoint with its first signature line's bytes replaced by
/// `change(note, bytes)` (the note text with its final newline; key hint and signature).
fn resign_checkpoint(b: &mut Value, change: impl FnOnce(&str, Vec<u8>) -> Vec<u8>) {
    let cp = &mut b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]
        ["envelope"];
    let text = cp.as_str().unwrap().to_string();
    let (note, sigs) = text.split_once("\n\n").unwrap();
    let rest = sigs
        .lines()
        .next()
        .unwrap()
        .strip_prefix("\u{2014} ")
        .unwrap();
    let (name, sig) = rest.rsplit_once(' ').unwrap();
    let raw = change(&format!("{note}\n"), B64.decode(sig).unwrap());
    *cp = json!(format!("{note}\n\n\u{2014} {name} {}\n", B64.encode(raw)));
}

/// The first tlog entry's checkpoint with its key hint kept and another key's signature.
fn forge_checkpoint(b: &mut Value) {
    use p256::ecdsa::signature::Signer as _;
    resign_checkpoint(b, |note, raw| {
        let other = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let forged: p256::ecdsa::Signature = other.sign(note.as_bytes());
        let mut out = raw[..4].to_vec();
        out.extend_from_slice(forged.to_der().as_bytes());
        out
    });
}

/// The first tlog entry's checkpoint with a witness's cosignature line (C2SP
/// tlog-cosignature: key hint, 8-byte timestamp, Ed25519 signature) before the log's own
/// signature, or (`keep_log` false) instead of it.
fn cosign_checkpoint(b: &mut Value, keep_log: bool) {
    let cp = &mut b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]
        ["envelope"];
    let text = cp.as_str().unwrap().to_string();
    let (note, sigs) = text.split_once("\n\n").unwrap();
    let mut raw = vec![0xa5u8, 0x5a, 0x01, 0x02];
    raw.extend_from_slice(&1_796_000_000u64.to_be_bytes());
    raw.extend_from_slice(&[0x42; 64]);
    let witness = format!("\u{2014} witness.example {}\n", B64.encode(raw));
    let rest = if keep_log { sigs } else { "" };
    *cp = json!(format!("{note}\n\n{witness}{rest}"));
}

const CASES: &[Case] = &[
    Case {
        label: "as made",
        check: None,
        change: |_, _, _, _| {},
    },
    Case {
        label: "another identity",
        check: Some("certificate identity"),
        change: |_, _, id, _| {
            *id = "https://github.com/mallory/release/.github/workflows/release.yml@refs/heads/main"
                .into()
        },
    },
    Case {
        label: "another issuer",
        check: Some("certificate issuer"),
        change: |_, _, _, iss| *iss = "https://accounts.google.com".into(),
    },
    Case {
        label: "a changed signature",
        check: Some("signature"),
        change: |b, _, _, _| {
            let field = if b["dsseEnvelope"].is_object() {
                &mut b["dsseEnvelope"]["signatures"][0]["sig"]
            } else {
                &mut b["messageSignature"]["signature"]
            };
            let mut sig = B64.decode(field.as_str().unwrap()).unwrap();
            let n = sig.len() - 2;
            sig[n] ^= 1;
            *field = json!(B64.encode(sig));
        },
    },
    Case {
        label: "a corrupted inclusion proof",
        check: Some("tlog inclusion proof"),
        change: |b, _, _, _| corrupt_proof(b),
    },
    Case {
        label: "a checkpoint signed by another key",
        check: Some("tlog checkpoint"),
        change: |b, _, _, _| forge_checkpoint(b),
    },
    Case {
        label: "a witness cosignature beside the log's signature",
        check: None,
        change: |b, _, _, _| cosign_checkpoint(b, true),
    },
    Case {
        label: "a witness cosignature instead of the log's signature",
        check: Some("tlog checkpoint"),
        change: |b, _, _, _| cosign_checkpoint(b, false),
    },
    Case {
        label: "a log outside the trusted root",
        check: Some("tlog log id"),
        change: |b, root, _, _| {
            let id = b["verificationMaterial"]["tlogEntries"][0]["logId"]["keyId"].clone();
            let logs = root["tlogs"].as_array_mut().unwrap();
            logs.retain(|l| l["logId"]["keyId"] != id);
        },
    },
    Case {
        label: "an SCT from a log outside the trusted root",
        check: Some("certificate sct"),
        change: |_, root, _, _| root["ctlogs"] = json!([]),
    },
    Case {
        label: "a timestamp outside the TSA's validity",
        check: Some("rfc3161 timestamp"),
        change: |_, root, _, _| {
            let tsa = &mut root["timestampAuthorities"][0]["validFor"];
            tsa["end"] = tsa["start"].clone();
        },
    },
    Case {
        label: "a Fulcio CA whose validity ended before the signing",
        check: Some("certificate chain"),
        change: |_, root, _, _| {
            let ca = &mut root["certificateAuthorities"][0]["validFor"];
            ca["end"] = ca["start"].clone();
        },
    },
];

#[test]
fn both_verifiers_agree_on_sigstore_js_message_and_dsse_bundles_in_rekor_v1_and_v2() {
    let made = ["message-v1", "dsse-v1", "message-v2", "dsse-v2"];
    let k = keyless_made(&["--make", &made.join(",")], "bundle");
    let js = sigstore_js().join("verify-keyless.js");
    let tmp = k.dir.path();
    for name in made {
        let bundle = read_json(&tmp.join(format!("{name}.json")));
        let (kind, version) = if name.starts_with("dsse") {
            (
                "dsse",
                if name.ends_with("v2") {
                    "0.0.2"
                } else {
                    "0.0.1"
                },
            )
        } else {
            (
                "hashedrekord",
                if name.ends_with("v2") {
                    "0.0.2"
                } else {
                    "0.0.1"
                },
            )
        };
        let entry = &bundle["verificationMaterial"]["tlogEntries"][0];
        assert_eq!(entry["kindVersion"]["kind"], kind, "{name}");
        assert_eq!(entry["kindVersion"]["version"], version, "{name}");
        if name.ends_with("v2") {
            assert!(
                entry["inclusionPromise"].is_null(),
                "{name}: Rekor v2 has no SET"
            );
        }
        for case in CASES {
            let (mut b, mut root) = (bundle.clone(), k.root.clone());
            let (mut id, mut iss) = (k.identity.clone(), k.issuer.clone());
            (case.change)(&mut b, &mut root, &mut id, &mut iss);
            let bp = tmp.join("case.bundle.json");
            let rp = tmp.join("case.root.json");
            std::fs::write(&bp, b.to_string()).unwrap();
            std::fs::write(&rp, root.to_string()).unwrap();
            let what = format!("{name}, {}", case.label);

            let ours = Command::new(&bins().cli)
                .arg("verify")
                .arg(&k.artifact)
                .arg("--bundle")
                .arg(&bp)
                .args(["--certificate-identity", &id])
                .args(["--certificate-oidc-issuer", &iss])
                .arg("--trusted-root")
                .arg(&rp)
                .output()
                .unwrap();
            match case.check {
                None => ok(&ours),
                Some(check) => {
                    let err = String::from_utf8_lossy(&ours.stderr);
                    assert!(
                        !ours.status.success()
                            && err.starts_with(&format!("waxseal: verify: {check}: ")),
                        "{what}: waxseal should name `{check}`: {}",
                        output_text(&ours)
                    );
                }
            }

            let mut theirs = Command::new("node");
            theirs.arg(&js).arg(&bp).arg(&rp).arg(&id).arg(&iss);
            if kind == "hashedrekord" {
                theirs.arg(&k.artifact);
            }
            let theirs = theirs.output().unwrap();
            assert_eq!(
                theirs.status.success(),
                case.check.is_none(),
                "{what}: @sigstore/verify: {}",
                output_text(&theirs)
            );
        }
    }

    // A DSSE bundle verifies only for an artifact its statement names as a subject
    // (@sigstore/verify takes no artifact for an envelope: this check is waxseal's).
    let dsse = read_json(&tmp.join("dsse-v2.json"));
    let other = tmp.join("other.tar.gz");
    std::fs::write(&other, b"not the subject\n").unwrap();
    refused(&k.verify_with(&dsse, &k.root, &other, &[]), "artifact");
    ok(&k.verify_with(&dsse, &k.root, &k.artifact, &[]));
}

#[test]
fn an_integrated_time_in_the_future_is_refused() {
    // Rekor v1's clock a day ahead: its signed entry timestamp vouches for a time that
    // has not come. @sigstore/verify refuses it too (the leaf is not valid then).
    let k = keyless(&["--log-minutes-ahead", "1440"]);
    refused(&k.verify(&k.bundle, &k.root), "tlog integrated time");
    let b = k.dir.path().join("future.json");
    let r = k.dir.path().join("future.root.json");
    std::fs::write(&b, k.bundle.to_string()).unwrap();
    std::fs::write(&r, k.root.to_string()).unwrap();
    let theirs = Command::new("node")
        .arg(sigstore_js().join("verify-keyless.js"))
        .arg(&b)
        .arg(&r)
        .arg(&k.identity)
        .arg(&k.issuer)
        .arg(&k.artifact)
        .output()
        .unwrap();
    assert!(!theirs.status.success(), "{}", output_text(&theirs));
}

#[test]
fn a_public_good_bundle_verifies_with_the_trusted_root_waxseal_ships() {
    // A keyless signature made in production (data/public-good/README.md): the real
    // Fulcio chain, CT log, Rekor key and checkpoint, checked offline against the
    // public-good trusted root shipped in the binary (no `trust update` state).
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/public-good/rfc8785-0.1.2-wheel.sigstore.json");
    let digest = "sha256:c4e92e9ecc828bef2aa7dba1de8ac983511f7532a0df11c770d39099a25cf201";
    let identity =
        "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2";
    let issuer = "https://token.actions.githubusercontent.com";
    let state = tempfile::tempdir().unwrap();
    let verify = |bundle: &Path, digest: &str, identity: &str| {
        Command::new(&bins().cli)
            .env("XDG_DATA_HOME", state.path())
            .args(["--json", "verify", digest, "--bundle"])
            .arg(bundle)
            .args(["--certificate-identity", identity])
            .args(["--certificate-oidc-issuer", issuer])
            .output()
            .unwrap()
    };
    let out = verify(&bundle, digest, identity);
    assert!(out.status.success(), "{}", output_text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["signing_times"], json!([1_710_888_076]));
    let detail = |name: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {report}"))["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(detail("tlog entry").contains("https://rekor.sigstore.dev index 79605083"));
    assert!(detail("certificate chain").contains("sigstore-intermediate"));
    assert!(detail("certificate sct").starts_with("log dd3d306a"));

    // Another tag's workflow, another artifact, and one bit of the inclusion proof.
    let other = identity.replace("v0.1.2", "v0.1.3");
    let out = verify(&bundle, digest, &other);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("waxseal: verify: certificate identity: "),
        "{}",
        output_text(&out)
    );
    let out = verify(&bundle, &format!("sha256:{}", "0".repeat(64)), identity);
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("waxseal: verify: artifact: "),
        "{}",
        output_text(&out)
    );
    let mut b = read_json(&bundle);
    corrupt_proof(&mut b);
    let changed = state.path().join("changed.json");
    std::fs::write(&changed, b.to_string()).unwrap();
    let out = verify(&changed, digest, identity);
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("waxseal: verify: tlog inclusion proof: "),
        "{}",
        output_text(&out)
    );
}

#[test]
fn a_statement_naming_the_artifact_by_sha512_only_is_refused_at_artifact() {
    // npm's provenance names its subjects by SHA-512 only; waxseal's in-toto reader
    // needs SHA-256 (docs/verify.md, "What is not checked yet"). The refusal names the
    // artifact, not the signature, which verified.
    let k = keyless_made(&["--make", "dsse-v1", "--sha512-subject"], "dsse-v1");
    let out = k.verify(&k.bundle, &k.root);
    refused(&out, "artifact");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an in-toto statement waxseal reads"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn a_rekor_v2_bundle_of_sigstore_staging_verifies_offline() {
    // Real rekor-tiles output (an Ed25519-signed checkpoint, the entry's logId being the
    // log's checkpoint key ID) and a real timestamp-authority token (an imprint whose
    // SHA-256 AlgorithmIdentifier has NULL parameters): data/sigstage/README.md.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sigstage");
    let bundle = data.join("rekor-v2-tsa.sigstore.json");
    let root = read_json(&data.join("trusted_root.json"));
    let digest = "sha256:15f67246115921bb7c1de0e7e9e9275c8016dc254a0c009888944b7ed3644aaa";
    let tmp = tempfile::tempdir().unwrap();
    let verify = |bundle: &Value, root: &Value, identity: &str| {
        let b = tmp.path().join("b.json");
        let r = tmp.path().join("r.json");
        std::fs::write(&b, bundle.to_string()).unwrap();
        std::fs::write(&r, root.to_string()).unwrap();
        Command::new(&bins().cli)
            .args(["verify", digest, "--bundle"])
            .arg(&b)
            .args(["--certificate-identity", identity])
            .args([
                "--certificate-oidc-issuer",
                "https://github.com/login/oauth",
            ])
            .arg("--trusted-root")
            .arg(&r)
            .output()
            .unwrap()
    };
    let b = read_json(&bundle);
    let out = verify(&b, &root, "jku@goto.fi");
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "log https://log2025-alpha1.rekor.sigstage.dev index 645 (hashedrekord 0.0.2)"
        ),
        "{text}"
    );
    assert!(
        text.contains("rfc3161 timestamp: timestamp 0: 1749470258"),
        "{text}"
    );

    // The same log named in the trusted root by its checkpoint key ID (as the
    // public-good trusted root names its Rekor v2 log) verifies too.
    let mut by_checkpoint_id = root.clone();
    by_checkpoint_id["tlogs"][0]["logId"]["keyId"] =
        b["verificationMaterial"]["tlogEntries"][0]["logId"]["keyId"].clone();
    ok(&verify(&b, &by_checkpoint_id, "jku@goto.fi"));

    // Refusals, each naming its check.
    refused(
        &verify(&b, &root, "someone@example.com"),
        "certificate identity",
    );
    let mut t = b.clone();
    corrupt_proof(&mut t);
    refused(&verify(&t, &root, "jku@goto.fi"), "tlog inclusion proof");
    let mut t = b.clone();
    forge_checkpoint_ed25519(&mut t);
    refused(&verify(&t, &root, "jku@goto.fi"), "tlog checkpoint");
    let mut t = b.clone();
    let st = &mut t["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"][0]
        ["signedTimestamp"];
    let mut der = B64.decode(st.as_str().unwrap()).unwrap();
    let n = der.len() - 3;
    der[n] ^= 0x01;
    *st = json!(B64.encode(der));
    refused(&verify(&t, &root, "jku@goto.fi"), "rfc3161 timestamp");
    // Another host for the log: its checkpoint key ID no longer names the entry's log.
    let mut other_host = root.clone();
    other_host["tlogs"][0]["baseUrl"] = json!("https://log2025-alpha2.rekor.sigstage.dev");
    refused(&verify(&b, &other_host, "jku@goto.fi"), "tlog log id");
}

/// The first tlog entry's checkpoint with the log's key hint and one bit of its Ed25519
/// signature changed.
fn forge_checkpoint_ed25519(b: &mut Value) {
    resign_checkpoint(b, |_, mut raw| {
        raw[10] ^= 0x01;
        raw
    });
}
