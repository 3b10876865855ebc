//! Sigstore bundles: written by `waxseal sign`, checked by `waxseal verify` and by
//! @sigstore/verify (sigstore-js), key-only and with an entry from a local Rekor
//! (@sigstore/mock's handler).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pkcs11_tests::{agent_with_keys, output_text as text, read_json, write_pubkey};
use pkcs11_tests::{sigstore_js_verify, MockRekor};
use serde_json::Value;
use sha2::{Digest as _, Sha256, Sha384};

fn dir_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn key_only_bundles_verify_with_waxseal_and_sigstore_js() {
    let (_hsm, agent) = agent_with_keys(&[
        ("hsm/ec256", "p256"),
        ("hsm/ec384", "p384"),
        ("hsm/rsa", "rsa2048"),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    for (key, alg_name, len) in [
        ("hsm/ec256", "SHA2_256", 32),
        ("hsm/ec384", "SHA2_384", 48),
        ("hsm/rsa", "SHA2_256", 32),
    ] {
        let file = tmp.path().join(format!("{}.tar.gz", key.replace('/', "_")));
        std::fs::write(&file, format!("release built for {key}\n").repeat(1000)).unwrap();
        let f = file.to_str().unwrap();
        let out = agent.cli(&["sign", f, "--key", key]);
        assert!(out.status.success(), "{}", text(&out));
        let bundle_path = PathBuf::from(format!("{f}.sigstore.json"));
        let b = read_json(&bundle_path);

        // The fields, as the protobuf JSON mapping and cosign have them.
        assert_eq!(
            b["mediaType"],
            "application/vnd.dev.sigstore.bundle.v0.3+json"
        );
        let spki = agent.client().public_key(key).unwrap().spki_der.0;
        assert_eq!(
            b["verificationMaterial"]["publicKey"]["hint"],
            B64.encode(Sha256::digest(&spki))
        );
        assert_eq!(
            b["verificationMaterial"]["tlogEntries"],
            Value::Array(vec![])
        );
        let md = &b["messageSignature"]["messageDigest"];
        assert_eq!(md["algorithm"], alg_name);
        let digest = B64.decode(md["digest"].as_str().unwrap()).unwrap();
        let content = std::fs::read(&file).unwrap();
        let expected = if len == 48 {
            Sha384::digest(&content).to_vec()
        } else {
            Sha256::digest(&content).to_vec()
        };
        assert_eq!(digest, expected);
        assert!(b["messageSignature"]["signature"].as_str().unwrap().len() > 40);

        // Both verifiers accept it.
        let pem = write_pubkey(&agent, key, tmp.path());
        let ours = agent.cli(&["verify", f, "--key", key]);
        assert!(ours.status.success(), "{}", text(&ours));
        assert!(text(&ours).contains("Verified OK"), "{}", text(&ours));
        let ours = agent.cli(&["verify", f, "--public-key", pem.to_str().unwrap()]);
        assert!(ours.status.success(), "{}", text(&ours));
        sigstore_js_verify(&bundle_path, &file, &pem, None)
            .unwrap_or_else(|e| panic!("@sigstore/verify refused {key}'s bundle: {e}"));

        // A changed file fails in both, and ours says what did not match.
        let changed = tmp.path().join("changed");
        std::fs::write(&changed, b"not the release").unwrap();
        let out = agent.cli(&[
            "verify",
            changed.to_str().unwrap(),
            "--bundle",
            bundle_path.to_str().unwrap(),
            "--key",
            key,
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out).contains("digest mismatch"), "{}", text(&out));
        assert!(sigstore_js_verify(&bundle_path, &changed, &pem, None).is_err());

        // A changed signature in the bundle fails in both.
        let mut tampered = b.clone();
        let mut sig = B64
            .decode(tampered["messageSignature"]["signature"].as_str().unwrap())
            .unwrap();
        let last = sig.len() - 5;
        sig[last] ^= 0x01;
        tampered["messageSignature"]["signature"] = Value::String(B64.encode(&sig));
        let tampered_path = tmp.path().join("tampered.json");
        std::fs::write(&tampered_path, tampered.to_string()).unwrap();
        let out = agent.cli(&[
            "verify",
            f,
            "--bundle",
            tampered_path.to_str().unwrap(),
            "--key",
            key,
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out).contains("signature mismatch"), "{}", text(&out));
        assert!(sigstore_js_verify(&tampered_path, &file, &pem, None).is_err());
    }

    // Another key: the hint says so.
    let file = tmp.path().join("hsm_ec256.tar.gz");
    let out = agent.cli(&["verify", file.to_str().unwrap(), "--key", "hsm/ec384"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("key hint mismatch"), "{}", text(&out));
}

#[test]
fn bundles_logged_in_a_local_rekor_verify_with_default_thresholds() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/release", "p256"), ("hsm/big", "p384")]);
    let rekor = MockRekor::start();
    let tmp = tempfile::tempdir().unwrap();
    for key in ["hsm/release", "hsm/big"] {
        let file = tmp.path().join(format!("{}.tgz", key.replace('/', "_")));
        std::fs::write(&file, b"an artifact worth logging\n").unwrap();
        let f = file.to_str().unwrap();
        let bundle = tmp
            .path()
            .join(format!("{}.bundle.json", key.replace('/', "_")));
        let out = agent.cli(&[
            "sign",
            f,
            "--key",
            key,
            "--bundle",
            bundle.to_str().unwrap(),
            "--rekor-url",
            &rekor.url,
            "--rekor-public-key",
            rekor.public_key.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("logged in Rekor at index"),
            "{}",
            text(&out)
        );
        let b = read_json(&bundle);
        let e = &b["verificationMaterial"]["tlogEntries"][0];
        for field in [
            "logIndex",
            "logId",
            "kindVersion",
            "integratedTime",
            "inclusionPromise",
            "inclusionProof",
            "canonicalizedBody",
        ] {
            assert!(!e[field].is_null(), "tlog entry lacks {field}: {e}");
        }
        assert_eq!(e["kindVersion"]["kind"], "hashedrekord");
        assert_eq!(e["kindVersion"]["version"], "0.0.1");
        assert!(e["logIndex"].is_string(), "int64 as a string: {e}");
        let body: Value = serde_json::from_slice(
            &B64.decode(e["canonicalizedBody"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(body["kind"], "hashedrekord");
        assert_eq!(
            body["spec"]["data"]["hash"]["algorithm"],
            if key == "hsm/big" { "sha384" } else { "sha256" }
        );

        let pem = write_pubkey(&agent, key, tmp.path());
        let rk = rekor.public_key.to_str().unwrap();
        let ours = agent.cli(&[
            "verify",
            f,
            "--bundle",
            bundle.to_str().unwrap(),
            "--key",
            key,
            "--rekor-public-key",
            rk,
        ]);
        assert!(ours.status.success(), "{}", text(&ours));
        assert!(
            text(&ours).contains("transparency log: 1 entry checked"),
            "{}",
            text(&ours)
        );
        sigstore_js_verify(&bundle, &file, &pem, Some(&rekor))
            .unwrap_or_else(|e| panic!("@sigstore/verify refused the logged bundle: {e}"));

        // A changed file: both refuse.
        let changed = tmp.path().join("changed.tgz");
        std::fs::write(&changed, b"a different artifact\n").unwrap();
        let out = agent.cli(&[
            "verify",
            changed.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
            "--key",
            key,
            "--rekor-public-key",
            rk,
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(sigstore_js_verify(&bundle, &changed, &pem, Some(&rekor)).is_err());

        // A changed log time: the signed entry timestamp no longer verifies, in both.
        let mut t = b.clone();
        let time: i64 = t["verificationMaterial"]["tlogEntries"][0]["integratedTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        t["verificationMaterial"]["tlogEntries"][0]["integratedTime"] =
            Value::String((time - 3600).to_string());
        let tp = tmp.path().join("time.json");
        std::fs::write(&tp, t.to_string()).unwrap();
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
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out).contains("signed entry timestamp"),
            "{}",
            text(&out)
        );
        assert!(sigstore_js_verify(&tp, &file, &pem, Some(&rekor)).is_err());

        // A changed logged body: the entry is no longer ours.
        let mut t = b.clone();
        let mut body = body.clone();
        body["spec"]["data"]["hash"]["value"] = Value::String("00".repeat(32));
        t["verificationMaterial"]["tlogEntries"][0]["canonicalizedBody"] =
            Value::String(B64.encode(body.to_string()));
        std::fs::write(&tp, t.to_string()).unwrap();
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
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out).contains("logged digest"), "{}", text(&out));
        assert!(sigstore_js_verify(&tp, &file, &pem, Some(&rekor)).is_err());

        // Another log's key: refused.
        let other = MockRekor::start();
        let out = agent.cli(&[
            "verify",
            f,
            "--bundle",
            bundle.to_str().unwrap(),
            "--key",
            key,
            "--rekor-public-key",
            other.public_key.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out).contains("is not the log key's"),
            "{}",
            text(&out)
        );
        assert!(sigstore_js_verify(&bundle, &file, &pem, Some(&other)).is_err());
    }

    // A key-only bundle does not pass when a log entry is asked for.
    let file = tmp.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let f = file.to_str().unwrap();
    assert!(agent
        .cli(&["sign", f, "--key", "hsm/release"])
        .status
        .success());
    let out = agent.cli(&[
        "verify",
        f,
        "--key",
        "hsm/release",
        "--rekor-public-key",
        rekor.public_key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("no transparency log entry"),
        "{}",
        text(&out)
    );
}

#[test]
fn rekor_failures_write_no_bundle_and_say_what_failed() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/release", "p256")]);
    let rekor = MockRekor::start();
    let other = MockRekor::start();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a.tgz");
    std::fs::write(&file, b"artifact").unwrap();
    let f = file.to_str().unwrap();
    let bundle = tmp.path().join("a.tgz.sigstore.json");
    let rk = rekor.public_key.to_str().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let cases = [
        (closed.clone(), rk.to_string(), "cannot reach Rekor"),
        (
            format!("{}/wrong/prefix", rekor.url),
            rk.to_string(),
            "HTTP 404",
        ),
        (
            rekor.url.clone(),
            other.public_key.to_str().unwrap().to_string(),
            "does not check out",
        ),
    ];
    for (url, key, message) in &cases {
        let out = agent.cli(&[
            "sign",
            f,
            "--key",
            "hsm/release",
            "--rekor-url",
            url,
            "--rekor-public-key",
            key,
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(message), "{url}: {}", text(&out));
        assert!(
            text(&out).contains("no bundle was written"),
            "{}",
            text(&out)
        );
        assert!(!bundle.exists());
        assert_eq!(dir_files(tmp.path()), vec!["a.tgz"], "nothing partial left");
    }

    // An earlier bundle survives a failed upload untouched.
    assert!(agent
        .cli(&["sign", f, "--key", "hsm/release"])
        .status
        .success());
    let before = std::fs::read(&bundle).unwrap();
    let out = agent.cli(&[
        "sign",
        f,
        "--key",
        "hsm/release",
        "--rekor-url",
        &closed,
        "--rekor-public-key",
        rk,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&bundle).unwrap(), before);

    // Keys and options a bundle cannot carry are refused before anything is signed.
    let (_hsm2, agent2) = agent_with_keys(&[("hsm/ed", "ed25519"), ("hsm/rsa", "rsa2048")]);
    let out = agent2.cli(&["sign", f, "--key", "hsm/ed"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("Ed25519"), "{}", text(&out));
    let out = agent2.cli(&["sign", f, "--key", "hsm/rsa", "--pss"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--raw"), "{}", text(&out));
    let out = agent2.cli(&["sign", f, "--key", "hsm/rsa", "--rekor-url", &rekor.url]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--rekor-url needs --rekor-public-key"
    );
}
