//! RFC 3161 timestamps and Rekor v2 in Sigstore bundles (issue 19, parts 1 and 2):
//! `waxseal sign --tsa-url` against two TSAs nobody here wrote (@sigstore/mock's
//! `tsaHandler`, OpenSSL's `openssl ts -reply`), `--rekor-version 2` against the Rekor v2
//! stand-in of `js/rekor-v2.js` (named as one: @sigstore/mock's v2 handler answers
//! entries no verifier accepts), and the bundles checked by @sigstore/verify and
//! `openssl ts -verify`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pkcs11_tests::{agent_with_keys, output_text as text, read_json, write_pubkey};
use pkcs11_tests::{audit_records, require, sigstore_js_verify_with, Agent, LocalService};
use serde_json::Value;

fn write_json(p: &Path, v: &Value) {
    std::fs::write(p, v.to_string()).unwrap();
}

/// The bundle's one RFC 3161 timestamp: the TSA's DER `TimeStampResp`.
fn token(bundle: &Value) -> Vec<u8> {
    let stamps = &bundle["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"];
    assert_eq!(stamps.as_array().map(Vec::len), Some(1), "{bundle}");
    B64.decode(stamps[0]["signedTimestamp"].as_str().unwrap())
        .unwrap()
}

fn with_token(bundle: &Value, token: &[u8]) -> Value {
    let mut b = bundle.clone();
    b["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"][0]
        ["signedTimestamp"] = Value::String(B64.encode(token));
    b
}

fn signature(bundle: &Value) -> Vec<u8> {
    B64.decode(bundle["messageSignature"]["signature"].as_str().unwrap())
        .unwrap()
}

/// `openssl ts -verify` of a TSA's reply over `data`: its verdict and what it said.
fn openssl_ts_verify(token: &[u8], data: &[u8], root: &Path, untrusted: &Path) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("token.der");
    let d = dir.path().join("data");
    std::fs::write(&t, token).unwrap();
    std::fs::write(&d, data).unwrap();
    let out = Command::new(require("openssl"))
        .args(["ts", "-verify", "-in"])
        .arg(&t)
        .arg("-data")
        .arg(&d)
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(untrusted)
        .output()
        .unwrap();
    let said = text(&out);
    (
        out.status.success() && said.contains("Verification: OK"),
        said,
    )
}

/// The last certificate of a PEM chain (its root), written beside it.
fn root_of(chain: &Path) -> PathBuf {
    let pem = std::fs::read_to_string(chain).unwrap();
    let start = pem.rfind("-----BEGIN CERTIFICATE-----").unwrap();
    let root = chain.with_file_name("root-of-chain.pem");
    std::fs::write(&root, &pem[start..]).unwrap();
    root
}

#[test]
fn tsa_only_bundles_verify_with_sigstore_js_and_openssl() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/ec", "p256"), ("hsm/rsa", "rsa2048")]);
    let mock = LocalService::mock_tsa("ok");
    let openssl = LocalService::openssl_tsa();
    // Each TSA: its URL, the chain @sigstore/verify trusts, the root OpenSSL trusts.
    let mock_chain = mock.file("chain.pem");
    let tsas = [
        ("mock", &mock.url, mock_chain.clone(), root_of(&mock_chain)),
        (
            "openssl",
            &openssl.url,
            openssl.file("chain.pem"),
            openssl.file("root.pem"),
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    for key in ["hsm/ec", "hsm/rsa"] {
        let pem = write_pubkey(&agent, key, tmp.path());
        for (name, url, chain, root) in &tsas {
            let file = tmp
                .path()
                .join(format!("{}-{name}.tgz", key.replace('/', "_")));
            std::fs::write(&file, format!("{key} {name}\n").repeat(100)).unwrap();
            let f = file.to_str().unwrap();
            let out = agent.cli(&["sign", f, "--key", key, "--tsa-url", url]);
            assert!(out.status.success(), "{name}: {}", text(&out));
            let bundle_path = PathBuf::from(format!("{f}.sigstore.json"));
            let b = read_json(&bundle_path);
            assert_eq!(
                b["mediaType"],
                "application/vnd.dev.sigstore.bundle.v0.3+json"
            );
            assert_eq!(
                b["verificationMaterial"]["tlogEntries"],
                Value::Array(vec![])
            );
            let tok = token(&b);

            // @sigstore/verify: one timestamp from exactly this TSA.
            sigstore_js_verify_with(&bundle_path, &file, &pem, None, Some(chain))
                .unwrap_or_else(|e| panic!("@sigstore/verify refused {key}/{name}: {e}"));
            // waxseal, trusting this TSA: the mock's chain, or only OpenSSL's root (which
            // issued its TSA certificate).
            let trust = if *name == "mock" { chain } else { root };
            let out = agent.cli(&[
                "verify",
                f,
                "--key",
                key,
                "--tsa-cert-chain",
                trust.to_str().unwrap(),
            ]);
            assert!(out.status.success(), "{name}: {}", text(&out));
            assert!(
                text(&out).contains("RFC 3161 timestamp: 1 checked"),
                "{}",
                text(&out)
            );
            // OpenSSL: the token is over the signature bytes.
            let (ok, said) = openssl_ts_verify(&tok, &signature(&b), root, chain);
            assert!(ok, "openssl ts -verify refused {key}/{name}: {said}");
            let (ok, _) = openssl_ts_verify(&tok, b"other bytes", root, chain);
            assert!(!ok, "openssl ts -verify accepted a token over other bytes");

            // The other TSA's chain is not this token's.
            let other = &tsas[usize::from(*name == "mock")].2;
            assert!(
                sigstore_js_verify_with(&bundle_path, &file, &pem, None, Some(other)).is_err(),
                "{key}/{name} verified against the other TSA"
            );
            let out = agent.cli(&[
                "verify",
                f,
                "--key",
                key,
                "--tsa-cert-chain",
                other.to_str().unwrap(),
            ]);
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(
                text(&out).contains("not one of the trusted TSA certificates"),
                "{}",
                text(&out)
            );

            // One byte of the token changed (the last: the TSA's signature): both refuse.
            let mut bad = tok.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0x01;
            let tampered = tmp.path().join("tampered.json");
            write_json(&tampered, &with_token(&b, &bad));
            let e = sigstore_js_verify_with(&tampered, &file, &pem, None, Some(chain))
                .expect_err("a changed token verified");
            assert!(e.contains("FAILED"), "{e}");
            let (ok, _) = openssl_ts_verify(&bad, &signature(&b), root, chain);
            assert!(!ok, "openssl ts -verify accepted a changed token");
            let out = agent.cli(&[
                "verify",
                f,
                "--bundle",
                tampered.to_str().unwrap(),
                "--key",
                key,
                "--tsa-cert-chain",
                trust.to_str().unwrap(),
            ]);
            assert_eq!(out.status.code(), Some(1), "{}", text(&out));
            assert!(
                text(&out).contains("RFC 3161 timestamp 0"),
                "{}",
                text(&out)
            );
        }
    }
}

#[test]
fn rekor_v2_bundles_with_a_timestamp_verify_with_sigstore_js_and_waxseal() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/ec", "p256"), ("hsm/big", "p384")]);
    let rekor = LocalService::rekor_v2("ok");
    let rekor_key = rekor.file("rekor.pub.pem");
    let rk = rekor_key.to_str().unwrap();
    let tsa = LocalService::mock_tsa("ok");
    let chain = tsa.file("chain.pem");
    let tmp = tempfile::tempdir().unwrap();
    // Three entries: the later ones get inclusion proofs with sibling hashes.
    for (i, key) in ["hsm/ec", "hsm/big", "hsm/ec"].into_iter().enumerate() {
        let pem = write_pubkey(&agent, key, tmp.path());
        let file = tmp.path().join(format!("release-{i}.tgz"));
        std::fs::write(&file, format!("release {i}\n").repeat(50)).unwrap();
        let f = file.to_str().unwrap();
        let out = agent.cli(&[
            "sign",
            f,
            "--key",
            key,
            "--rekor-url",
            &rekor.url,
            "--rekor-public-key",
            rk,
            "--rekor-version",
            "2",
            "--tsa-url",
            &tsa.url,
        ]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("logged in Rekor at index {i}")),
            "{}",
            text(&out)
        );
        let bundle = PathBuf::from(format!("{f}.sigstore.json"));
        let b = read_json(&bundle);
        assert_eq!(
            b["mediaType"],
            "application/vnd.dev.sigstore.bundle.v0.3+json"
        );
        let e = &b["verificationMaterial"]["tlogEntries"][0];
        assert_eq!(e["kindVersion"]["kind"], "hashedrekord");
        assert_eq!(e["kindVersion"]["version"], "0.0.2");
        assert!(
            e["inclusionPromise"].is_null(),
            "Rekor v2 gives no SET: {e}"
        );
        // Leaf i of a tree of i + 1 leaves: 0, 1 and 1 sibling hashes (RFC 6962).
        assert_eq!(
            e["inclusionProof"]["hashes"].as_array().unwrap().len(),
            [0, 1, 1][i],
            "{e}"
        );
        token(&b);

        // Both verifiers accept it: @sigstore/verify with a root naming exactly this
        // log and this TSA, and waxseal with the log's key.
        sigstore_js_verify_with(
            &bundle,
            &file,
            &pem,
            Some((&rekor_key, &rekor.url)),
            Some(&chain),
        )
        .unwrap_or_else(|e| panic!("@sigstore/verify refused the v2 bundle: {e}"));
        let ours = agent.cli(&[
            "verify",
            f,
            "--key",
            key,
            "--rekor-public-key",
            rk,
            "--tsa-cert-chain",
            chain.to_str().unwrap(),
        ]);
        assert!(
            text(&ours).contains("RFC 3161 timestamp: 1 checked"),
            "{}",
            text(&ours)
        );
        assert!(ours.status.success(), "{}", text(&ours));
        assert!(
            text(&ours).contains("transparency log: 1 entry checked"),
            "{}",
            text(&ours)
        );
        // Without the TSA in the trusted root there is no time: @sigstore/verify refuses.
        assert!(
            sigstore_js_verify_with(&bundle, &file, &pem, Some((&rekor_key, &rekor.url)), None)
                .is_err(),
            "a v2 entry alone gave @sigstore/verify a time"
        );

        // One byte of the checkpoint changed (in its signature line): both refuse.
        let envelope = e["inclusionProof"]["checkpoint"]["envelope"]
            .as_str()
            .unwrap()
            .to_string();
        let (note, sig_line) = envelope.split_once("\n\n").unwrap();
        let (prefix, sig_b64) = sig_line.trim_end().rsplit_once(' ').unwrap();
        let mut sig = B64.decode(sig_b64).unwrap();
        let last = sig.len() - 1;
        sig[last] ^= 0x01;
        let mut t = b.clone();
        t["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"]["envelope"] =
            Value::String(format!("{note}\n\n{prefix} {}\n", B64.encode(&sig)));
        let tp = tmp.path().join("checkpoint.json");
        write_json(&tp, &t);
        assert!(
            sigstore_js_verify_with(
                &tp,
                &file,
                &pem,
                Some((&rekor_key, &rekor.url)),
                Some(&chain)
            )
            .is_err(),
            "@sigstore/verify accepted a changed checkpoint"
        );
        let out = agent.cli(&[
            "verify",
            f,
            "--bundle",
            tp.to_str().unwrap(),
            "--key",
            key,
            "--rekor-public-key",
            rk,
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("checkpoint's signature does not verify"),
            "{}",
            text(&out)
        );

        // One byte of the timestamp token changed: @sigstore/verify refuses.
        let mut bad = token(&b);
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        write_json(&tp, &with_token(&b, &bad));
        assert!(
            sigstore_js_verify_with(
                &tp,
                &file,
                &pem,
                Some((&rekor_key, &rekor.url)),
                Some(&chain)
            )
            .is_err(),
            "@sigstore/verify accepted a changed timestamp"
        );
        let out = agent.cli(&[
            "verify",
            f,
            "--bundle",
            tp.to_str().unwrap(),
            "--key",
            key,
            "--rekor-public-key",
            rk,
            "--tsa-cert-chain",
            chain.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("RFC 3161 timestamp 0"),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn tsa_and_rekor_v2_failures_write_no_bundle_and_name_the_service() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/ec", "p256")]);
    let tsa = LocalService::mock_tsa("ok");
    let garbage = LocalService::mock_tsa("garbage");
    let wrong_nonce = LocalService::mock_tsa("wrong-nonce");
    let rekor = LocalService::rekor_v2("ok");
    let refusing = LocalService::rekor_v2("refuse");
    let rk = rekor.file("rekor.pub.pem");
    let rk_refusing = refusing.file("rekor.pub.pem");
    // A TSA that accepts the connection and never answers.
    let silent = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let silent_url = format!("http://127.0.0.1:{}", silent.local_addr().unwrap().port());

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a.tgz");
    std::fs::write(&file, b"artifact").unwrap();
    let f = file.to_str().unwrap();
    let bundle = tmp.path().join("a.tgz.sigstore.json");
    let v2 = |url: &str, key: &Path| -> Vec<String> {
        [
            "--rekor-url",
            url,
            "--rekor-public-key",
            key.to_str().unwrap(),
            "--rekor-version",
            "2",
        ]
        .map(String::from)
        .to_vec()
    };
    let tsa_args = |url: &str| -> Vec<String> {
        ["--tsa-url", url, "--tsa-timeout", "2"]
            .map(String::from)
            .to_vec()
    };
    let cases: Vec<(Vec<String>, String, &str)> = vec![
        (
            tsa_args(&garbage.url),
            garbage.url.clone(),
            "not an RFC 3161 TimeStampResp",
        ),
        (
            tsa_args(&wrong_nonce.url),
            wrong_nonce.url.clone(),
            "is not the query's",
        ),
        (tsa_args(&silent_url), silent_url.clone(), "timed out"),
        (
            [tsa_args(&tsa.url), v2(&refusing.url, &rk_refusing)].concat(),
            format!("{}/api/v2/log/entries", refusing.url),
            "refused the entry: HTTP 400",
        ),
        (
            [tsa_args(&tsa.url), v2(&rekor.url, &rk_refusing)].concat(),
            format!("{}/api/v2/log/entries", rekor.url),
            "checkpoint carries no signature by the Rekor key",
        ),
    ];

    // First with no bundle, then with an older one: nothing is written, it stays.
    for older in [false, true] {
        if older {
            assert!(agent.cli(&["sign", f, "--key", "hsm/ec"]).status.success());
        }
        let before = std::fs::read(&bundle).ok();
        for (extra, service, what) in &cases {
            let mut args = vec!["sign", f, "--key", "hsm/ec"];
            args.extend(extra.iter().map(String::as_str));
            let out = agent.cli(&args);
            let said = text(&out);
            assert_eq!(out.status.code(), Some(1), "{said}");
            assert!(said.contains(service.as_str()), "names {service}: {said}");
            assert!(said.contains(what), "says {what}: {said}");
            assert!(said.contains("no bundle was written"), "{said}");
            assert_eq!(std::fs::read(&bundle).ok(), before, "{said}");
            let mut names: Vec<String> = std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let mut expected = vec!["a.tgz".to_string()];
            if older {
                expected.push("a.tgz.sigstore.json".into());
            }
            assert_eq!(names, expected, "nothing partial left");
        }
    }
    drop(silent);

    // Rekor v2 without a TSA: refused before anything is signed.
    let signed_before = signed_records(&agent);
    let mut args = vec!["sign", f, "--key", "hsm/ec"];
    let v2_args = v2(&rekor.url, &rk);
    args.extend(v2_args.iter().map(String::as_str));
    let out = agent.cli(&args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--tsa-url"), "{}", text(&out));
    assert_eq!(signed_records(&agent), signed_before, "nothing was signed");
}

fn signed_records(agent: &Agent) -> usize {
    audit_records(&agent.state_dir)
        .iter()
        .filter(|r| r["event"] == "signed")
        .count()
}

#[test]
fn ed25519_keys_are_refused_for_rekor_v2_before_signing() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/ed", "ed25519"), ("hsm/ec", "p256")]);
    let rekor = LocalService::rekor_v2("ok");
    let tsa = LocalService::mock_tsa("ok");
    let rk = rekor.file("rekor.pub.pem");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a.tgz");
    std::fs::write(&file, b"artifact").unwrap();
    let f = file.to_str().unwrap();
    let v2 = |key: &str, extra: &[&str]| -> Output {
        let mut args = vec![
            "sign",
            f,
            "--key",
            key,
            "--rekor-url",
            &rekor.url,
            "--rekor-public-key",
            rk.to_str().unwrap(),
            "--rekor-version",
            "2",
            "--tsa-url",
            &tsa.url,
        ];
        args.extend_from_slice(extra);
        agent.cli(&args)
    };
    let before = signed_records(&agent);
    let out = v2("hsm/ed", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("Rekor v2 does not accept pure Ed25519"),
        "{}",
        text(&out)
    );
    // A hash Rekor v2 does not pair with the key: refused before signing too.
    let out = v2("hsm/ec", &["--hash", "sha384"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("over sha256 digests only"),
        "{}",
        text(&out)
    );
    assert_eq!(signed_records(&agent), before, "no signed record");
    assert!(!PathBuf::from(format!("{f}.sigstore.json")).exists());

    // The same key and TSA are fine once the key is ECDSA: the refusal was the key's.
    let out = v2("hsm/ec", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(signed_records(&agent), before + 1);
}

/// Why the Rekor v2 tests use a stand-in: @sigstore/mock 0.13's own `rekorV2Handler`
/// answers an entry whose body is its internal request object (not a Rekor v2 `Entry`)
/// and whose inclusion proof's index lies outside its one-leaf tree. waxseal refuses
/// it, says why, and writes no bundle. When a later mock passes, the tests can use it.
#[test]
fn the_mock_rekor_v2_answer_is_refused_and_named() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/ec", "p256")]);
    let js = pkcs11_tests::sigstore_js();
    let script = js.join("rekor.js");
    let mock = LocalService::start(
        "node",
        &[script.to_str().unwrap(), "{dir}/rekor.pub.pem", "v2"],
    );
    let tsa = LocalService::mock_tsa("ok");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a.tgz");
    std::fs::write(&file, b"artifact").unwrap();
    let f = file.to_str().unwrap();
    let key = mock.file("rekor.pub.pem");
    let out = agent.cli(&[
        "sign",
        f,
        "--key",
        "hsm/ec",
        "--rekor-url",
        &mock.url,
        "--rekor-public-key",
        key.to_str().unwrap(),
        "--rekor-version",
        "2",
        "--tsa-url",
        &tsa.url,
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("the entry does not check out"), "{said}");
    assert!(said.contains("not a hashedrekord 0.0.2 entry"), "{said}");
    assert!(!PathBuf::from(format!("{f}.sigstore.json")).exists());
}

#[test]
fn many_files_each_get_their_own_timestamp() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/ec", "p256")]);
    let tsa = LocalService::openssl_tsa();
    let root = tsa.file("root.pem");
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..5)
        .map(|i| {
            let p = tmp.path().join(format!("part-{i}.bin"));
            std::fs::write(&p, format!("part {i}\n").repeat(10)).unwrap();
            p
        })
        .collect();
    let mut args = vec!["sign", "--key", "hsm/ec", "--tsa-url", &tsa.url];
    args.extend(files.iter().map(|p| p.to_str().unwrap()));
    let out = agent.cli(&args);
    assert!(out.status.success(), "{}", text(&out));
    let mut tokens = Vec::new();
    for file in &files {
        let f = file.to_str().unwrap();
        let b = read_json(&PathBuf::from(format!("{f}.sigstore.json")));
        let tok = token(&b);
        // Each timestamp is over its own file's signature.
        let (ok, said) = openssl_ts_verify(&tok, &signature(&b), &root, &tsa.file("tsa.pem"));
        assert!(ok, "{f}: {said}");
        let out = agent.cli(&[
            "verify",
            f,
            "--key",
            "hsm/ec",
            "--tsa-cert-chain",
            root.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{f}: {}", text(&out));
        tokens.push(tok);
    }
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), files.len(), "one distinct timestamp per file");
}
