//! Attestations: `waxseal attest` has the agent (purpose `attest`, on SoftHSM2) sign an
//! in-toto statement's DSSE PAE, and writes a Sigstore bundle that `waxseal verify` and
//! @sigstore/verify (sigstore-js) both accept for each subject file and refuse once the
//! payload changes; the policy, the statement checks and the audit record.
//!
//! With `waxseal sign`'s service flags (issue 19, part 4): a `dsse` v0.0.1 entry in
//! Rekor v1 (@sigstore/mock's `rekorHandler` behind `js/rekor.js`, which stores the
//! canonical dsse body as Rekor does: a stand-in for that part), the PAE's hashedrekord
//! v0.0.2 in the Rekor v2 stand-in (`js/rekor-v2.js`), RFC 3161 timestamps from
//! @sigstore/mock's TSA and OpenSSL's, and a signing config with a trusted root; every
//! bundle checked by both verifiers, each with one byte changed refused by both.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pkcs11_tests::{audit_records, output_text as text, read_json, write_pubkey};
use pkcs11_tests::{pkcs11_device, sigstore_js_verify, sigstore_js_verify_with};
use pkcs11_tests::{Agent, LocalService, SoftHsm};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use waxseal_agent::client::ClientError;
use waxseal_agent::proto::{ErrorCode, Purpose};

const PROVENANCE: &str = "https://slsa.dev/provenance/v1";

fn agent_with(policy: &str, keys: &[(&str, &str)]) -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token("att", "so-pin-1", "user-pin-1");
    let pin = hsm.pin_file("pin", "user-pin-1");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", "att", &pin))
        .config(policy)
        .start();
    for (name, alg) in keys {
        let out = agent.cli(&["keys", "generate", name, "--alg", alg]);
        assert!(out.status.success(), "{}", text(&out));
    }
    (hsm, agent)
}

fn sha256_hex(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The audit records of the agent, newest last.
fn audit(agent: &Agent) -> Vec<Value> {
    agent.client().audit_tail(Some(100)).unwrap().records
}

fn statement(subjects: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subjects,
        "predicateType": PROVENANCE,
        "predicate": {"buildDefinition": {"buildType": "https://example.com/make"}},
    }))
    .unwrap()
}

#[test]
fn attestations_verify_with_waxseal_and_sigstore_js() {
    let (_hsm, agent) = agent_with(
        "",
        &[
            ("hsm/ec", "p256"),
            ("hsm/rsa", "rsa2048"),
            ("hsm/ec384", "p384"),
            ("hsm/ed", "ed25519"),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("app-1.0.tar.gz");
    let b = tmp.path().join("app-1.0.sbom.json");
    std::fs::write(&a, b"the release\n".repeat(500)).unwrap();
    std::fs::write(&b, b"{\"packages\":[]}\n").unwrap();
    let predicate = tmp.path().join("predicate.json");
    std::fs::write(
        &predicate,
        br#"{"buildDefinition":{"buildType":"https://example.com/make"}}"#,
    )
    .unwrap();
    let other = tmp.path().join("other");
    std::fs::write(&other, b"not a subject").unwrap();

    for key in ["hsm/ec", "hsm/rsa", "hsm/ec384", "hsm/ed"] {
        // @sigstore/verify 4.x checks a DSSE signature with Node's default digest for
        // the key, SHA-256, while a P-384 key signs the PAE's SHA-384 (as its message
        // signatures): README, "Attestations", says so. Only ours checks P-384 here.
        let js_checks = key != "hsm/ec384";
        let bundle = PathBuf::from(format!("{}.intoto.sigstore.json", s(&a)));
        let _ = std::fs::remove_file(&bundle);
        let out = agent.cli(&[
            "attest",
            "--key",
            key,
            "--type",
            PROVENANCE,
            "--predicate",
            s(&predicate),
            s(&a),
            s(&b),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("attested 2 subjects"), "{}", text(&out));

        // The bundle: a DSSE envelope of an in-toto statement v1 about both files.
        let v = read_json(&bundle);
        assert_eq!(
            v["mediaType"],
            "application/vnd.dev.sigstore.bundle.v0.3+json"
        );
        assert!(v.get("messageSignature").is_none(), "{v}");
        let spki = agent.client().public_key(key).unwrap().spki_der.0;
        assert_eq!(
            v["verificationMaterial"]["publicKey"]["hint"],
            B64.encode(Sha256::digest(&spki))
        );
        let env = &v["dsseEnvelope"];
        assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
        assert_eq!(env["signatures"].as_array().unwrap().len(), 1);
        let payload = B64.decode(env["payload"].as_str().unwrap()).unwrap();
        let st: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
        assert_eq!(st["predicateType"], PROVENANCE);
        assert_eq!(
            st["predicate"]["buildDefinition"]["buildType"],
            "https://example.com/make"
        );
        assert_eq!(
            st["subject"],
            json!([
                {"name": "app-1.0.tar.gz", "digest": {"sha256": sha256_hex(&a)}},
                {"name": "app-1.0.sbom.json", "digest": {"sha256": sha256_hex(&b)}},
            ])
        );

        // Both verifiers accept it for each subject, ours finding the bundle by name.
        let pem = write_pubkey(&agent, key, tmp.path());
        let ours = agent.cli(&["verify", s(&a), "--key", key]);
        assert!(ours.status.success(), "{}", text(&ours));
        assert!(text(&ours).contains("Verified OK"), "{}", text(&ours));
        assert!(text(&ours).contains(PROVENANCE), "{}", text(&ours));
        let ours = agent.cli(&[
            "verify",
            s(&b),
            "--bundle",
            s(&bundle),
            "--public-key",
            s(&pem),
        ]);
        assert!(ours.status.success(), "{}", text(&ours));
        for subject in [&a, &b].into_iter().filter(|_| js_checks) {
            sigstore_js_verify(&bundle, subject, &pem, None)
                .unwrap_or_else(|e| panic!("@sigstore/verify refused {key}'s bundle: {e}"));
        }

        // A file that is not a subject fails in both.
        let out = agent.cli(&["verify", s(&other), "--bundle", s(&bundle), "--key", key]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("digest mismatch"), "{}", text(&out));
        assert!(!js_checks || sigstore_js_verify(&bundle, &other, &pem, None).is_err());

        // One byte of the payload changed fails in both.
        let mut changed = payload.clone();
        let at = changed
            .windows(4)
            .position(|w| w == b"make")
            .expect("the predicate is in the payload");
        changed[at] = b'M';
        let mut tampered = v.clone();
        tampered["dsseEnvelope"]["payload"] = Value::String(B64.encode(&changed));
        let tampered_path = tmp.path().join("tampered.json");
        std::fs::write(&tampered_path, tampered.to_string()).unwrap();
        let out = agent.cli(&["verify", s(&a), "--bundle", s(&tampered_path), "--key", key]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("signature mismatch"), "{}", text(&out));
        if js_checks {
            let js = sigstore_js_verify(&tampered_path, &a, &pem, None);
            assert!(js.is_err(), "@sigstore/verify accepted a changed payload");
        }
    }

    // The audit log: the signed record names the purpose, predicate type and subjects.
    let records = audit(&agent);
    let signed: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "signed" && r["purpose"] == "attest")
        .collect();
    assert_eq!(signed.len(), 4, "{records:#?}");
    // Ed25519 signs the PAE itself: no hash, no digest.
    let hashes = [
        json!("sha256"),
        json!("sha256"),
        json!("sha384"),
        Value::Null,
    ];
    for (r, hash) in signed.into_iter().zip(hashes) {
        assert_eq!(r["predicate_type"], PROVENANCE, "{r}");
        assert_eq!(
            r["subjects"],
            json!([
                {"name": "app-1.0.tar.gz", "sha256": sha256_hex(&a)},
                {"name": "app-1.0.sbom.json", "sha256": sha256_hex(&b)},
            ]),
            "{r}"
        );
        assert_eq!(r["hash"], hash, "{r}");
    }
}

#[test]
fn a_complete_statement_is_signed_as_it_is_and_bad_ones_are_refused() {
    let (_hsm, agent) = agent_with("", &[("hsm/ec", "p256")]);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("tool");
    std::fs::write(&file, b"#!/bin/sh\necho hi\n").unwrap();
    let pem = write_pubkey(&agent, "hsm/ec", tmp.path());

    // --statement: the payload is the file's bytes, the bundle beside it.
    let st = tmp.path().join("tool.intoto.json");
    let bytes = statement(json!([{"name": "tool", "digest": {"sha256": sha256_hex(&file)}}]));
    std::fs::write(&st, &bytes).unwrap();
    let out = agent.cli(&["attest", "--key", "hsm/ec", "--statement", s(&st)]);
    assert!(out.status.success(), "{}", text(&out));
    let bundle = PathBuf::from(format!("{}.sigstore.json", s(&st)));
    let v = read_json(&bundle);
    let payload = B64
        .decode(v["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    assert_eq!(payload, bytes);
    let ours = agent.cli(&[
        "verify",
        s(&file),
        "--bundle",
        s(&bundle),
        "--public-key",
        s(&pem),
    ]);
    assert!(ours.status.success(), "{}", text(&ours));
    sigstore_js_verify(&bundle, &file, &pem, None).unwrap();

    // No subjects, a statement v0.1, a subject without SHA-256: the CLI refuses
    // before it asks, naming the problem, and writes nothing.
    let v01 = String::from_utf8(bytes.clone())
        .unwrap()
        .replace("Statement/v1", "Statement/v0.1");
    for (body, want) in [
        (statement(json!([])), "names no subjects"),
        (v01.into_bytes(), "Statement/v0.1"),
        (
            statement(json!([{"name": "tool", "digest": {"sha512": "00"}}])),
            "no digest.sha256",
        ),
    ] {
        let bad = tmp.path().join("bad.json");
        std::fs::write(&bad, &body).unwrap();
        let out = agent.cli(&["attest", "--key", "hsm/ec", "--statement", s(&bad)]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(want), "{want:?} not in {}", text(&out));
        assert!(!tmp.path().join("bad.json.sigstore.json").exists());

        // The agent refuses them itself, as bad requests, and audits the refusal.
        match agent.client().sign_statement("hsm/ec", &body) {
            Err(ClientError::Agent(e)) => {
                assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}");
                assert!(e.message.contains(want), "{want:?} not in {}", e.message);
            }
            other => panic!("the agent signed a bad statement: {other:?}"),
        }
        let last = audit(&agent).pop().unwrap();
        assert_eq!(last["event"], "refused", "{last}");
        assert_eq!(last["purpose"], "attest", "{last}");
        assert_eq!(
            last["statement_sha256"],
            hex::encode(Sha256::digest(&body)),
            "{last}"
        );
    }

    // A predicate that is not a JSON object is refused before anything is signed.
    let predicate = tmp.path().join("p.json");
    std::fs::write(&predicate, b"[1, 2]").unwrap();
    let out = agent.cli(&[
        "attest",
        "--key",
        "hsm/ec",
        "--type",
        PROVENANCE,
        "--predicate",
        s(&predicate),
        s(&file),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is not a JSON object"),
        "{}",
        text(&out)
    );
    assert!(!tmp.path().join("tool.intoto.sigstore.json").exists());

    // --json says what was signed.
    std::fs::write(&predicate, b"{}").unwrap();
    let out = agent.cli(&[
        "--json",
        "attest",
        "--key",
        "hsm/ec",
        "--type",
        PROVENANCE,
        "--predicate",
        s(&predicate),
        s(&file),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["predicate_type"], PROVENANCE, "{said}");
    assert_eq!(said["subjects"][0]["sha256"], sha256_hex(&file), "{said}");
    assert_eq!(said["alg"], "ecdsa-p256-sha256", "{said}");
    assert!(tmp.path().join("tool.intoto.sigstore.json").exists());

    // --statement with --predicate: a usage error naming both.
    let out = agent.cli(&[
        "attest",
        "--key",
        "hsm/ec",
        "--statement",
        s(&st),
        "--predicate",
        s(&predicate),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--statement") && err.contains("--predicate"),
        "{err}"
    );
}

#[test]
fn purposes_hold_keys_to_attestations_or_away_from_them() {
    let (_hsm, agent) = agent_with(
        "[[key]]\nname = \"hsm/digest-only\"\npurposes = [\"digest\"]\n\n[[key]]\nname = \"hsm/attest-only\"\npurposes = [\"attest\"]\n",
        &[
            ("hsm/digest-only", "p256"),
            ("hsm/attest-only", "p256"),
            ("hsm/default", "p256"),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("release.tgz");
    std::fs::write(&file, b"release").unwrap();
    let predicate = tmp.path().join("p.json");
    std::fs::write(&predicate, b"{}").unwrap();
    let attest = |key: &str| {
        agent.cli(&[
            "attest",
            "--key",
            key,
            "--type",
            PROVENANCE,
            "--predicate",
            s(&predicate),
            s(&file),
        ])
    };

    // A key limited to digests is refused for attestations, and the refusal audited.
    let out = attest("hsm/digest-only");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("may not sign for purpose `attest`"),
        "{}",
        text(&out)
    );
    let last = audit(&agent).pop().unwrap();
    assert_eq!(last["event"], "refused", "{last}");
    assert_eq!(last["key"], "hsm/digest-only", "{last}");
    assert_eq!(last["purpose"], "attest", "{last}");
    assert_eq!(last["code"], "policy-denied", "{last}");
    assert!(last["statement_sha256"].is_string(), "{last}");

    // A key limited to attestations attests, and is refused for `waxseal sign`.
    let out = attest("hsm/attest-only");
    assert!(out.status.success(), "{}", text(&out));
    let out = agent.cli(&["sign", s(&file), "--key", "hsm/attest-only"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("may not sign for purpose `blob`"),
        "{}",
        text(&out)
    );
    let last = audit(&agent).pop().unwrap();
    assert_eq!(
        (&last["event"], &last["key"], &last["purpose"]),
        (&json!("refused"), &json!("hsm/attest-only"), &json!("blob")),
        "{last}"
    );

    // A key without a [[key]] entry serves attest among its defaults.
    let keys = agent.client().list_keys().unwrap().keys;
    let default = keys.iter().find(|k| k.name == "hsm/default").unwrap();
    assert!(default.purposes.contains(&Purpose::Attest), "{default:?}");
    assert!(default.purposes.contains(&Purpose::Blob), "{default:?}");
    let out = attest("hsm/default");
    assert!(out.status.success(), "{}", text(&out));
}

// --- Sigstore services ---------------------------------------------------------------

/// The Rekor v1 of `js/rekor.js` (@sigstore/mock's `rekorHandler`; dsse entries stored
/// as Rekor stores them); `mode` is `ok` or `refuse`. Its key is `rekor.pub.pem`.
fn rekor_v1(mode: &str) -> LocalService {
    let script = pkcs11_tests::sigstore_js().join("rekor.js");
    LocalService::start(
        "node",
        &[script.to_str().unwrap(), "{dir}/rekor.pub.pem", "v1", mode],
    )
}

fn signed_records(agent: &Agent) -> usize {
    audit_records(&agent.state_dir)
        .iter()
        .filter(|r| r["event"] == "signed")
        .count()
}

/// Runs `waxseal attest` about `file` with `key` and the service flags `extra`.
fn attest_with(
    agent: &Agent,
    key: &str,
    file: &Path,
    predicate: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "attest",
        "--key",
        key,
        "--type",
        PROVENANCE,
        "--predicate",
        s(predicate),
        s(file),
    ];
    args.extend_from_slice(extra);
    agent.cli(&args)
}

/// What a bundle is checked against: the trusted root's log (its key and URL) and TSA
/// (its chain, for @sigstore/verify), and what `waxseal verify` is given for each.
struct Trust<'a> {
    log: Option<(&'a Path, &'a str)>,
    tsa_chain: Option<&'a Path>,
    /// `--tsa-cert-chain` for `waxseal verify` (the chain, or the root that issued it).
    tsa_ours: Option<&'a Path>,
}

impl Trust<'_> {
    fn js(&self, bundle: &Path, file: &Path, pem: &Path) -> Result<(), String> {
        sigstore_js_verify_with(bundle, file, pem, self.log, self.tsa_chain)
    }

    fn ours(&self, agent: &Agent, bundle: &Path, file: &Path, pem: &Path) -> std::process::Output {
        let mut args = vec![
            "verify",
            s(file),
            "--bundle",
            s(bundle),
            "--public-key",
            s(pem),
        ];
        if let Some((key, _)) = self.log {
            args.extend(["--rekor-public-key", s(key)]);
        }
        if let Some(chain) = self.tsa_ours {
            args.extend(["--tsa-cert-chain", s(chain)]);
        }
        agent.cli(&args)
    }
}

fn flip_last(b: &mut [u8]) {
    let last = b.len() - 1;
    b[last] ^= 0x01;
}

/// The bundle at `path` verifies with both verifiers against `trust`; with one byte of
/// the DSSE payload, of the signature, of each timestamp and of each checkpoint (and
/// SET) changed, both refuse it, ours saying what failed.
fn verifies_and_every_changed_byte_fails(
    agent: &Agent,
    trust: &Trust,
    path: &Path,
    file: &Path,
    pem: &Path,
    case: &str,
) {
    trust
        .js(path, file, pem)
        .unwrap_or_else(|e| panic!("{case}: @sigstore/verify refused the bundle: {e}"));
    let out = trust.ours(agent, path, file, pem);
    let said = text(&out);
    assert!(out.status.success(), "{case}: {said}");
    assert!(said.contains(PROVENANCE), "{case}: {said}");
    let b = read_json(path);
    let vm = &b["verificationMaterial"];
    let entries = vm["tlogEntries"].as_array().unwrap().len();
    if trust.log.is_some() {
        assert!(entries > 0, "{case}: {b}");
        assert!(
            said.contains(&format!("transparency log: {entries} entr")),
            "{case}: {said}"
        );
    }
    let stamps = vm["timestampVerificationData"]["rfc3161Timestamps"]
        .as_array()
        .map_or(0, Vec::len);
    if trust.tsa_ours.is_some() {
        assert!(stamps > 0, "{case}: {b}");
        assert!(said.contains("RFC 3161 timestamp"), "{case}: {said}");
    }
    assert!(
        !said.contains("not checked"),
        "{case}: everything was checked: {said}"
    );

    let mut changes: Vec<(String, Value, &str)> = Vec::new();
    // The payload: one byte of the predicate.
    let payload = B64
        .decode(b["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    let mut changed = payload.clone();
    let at = changed.windows(4).position(|w| w == b"make").unwrap();
    changed[at] = b'M';
    let mut t = b.clone();
    t["dsseEnvelope"]["payload"] = Value::String(B64.encode(&changed));
    changes.push(("payload".into(), t, "signature mismatch"));
    // The signature.
    let mut sig = B64
        .decode(b["dsseEnvelope"]["signatures"][0]["sig"].as_str().unwrap())
        .unwrap();
    flip_last(&mut sig);
    let mut t = b.clone();
    t["dsseEnvelope"]["signatures"][0]["sig"] = Value::String(B64.encode(&sig));
    changes.push(("signature".into(), t, "signature mismatch"));
    // Each timestamp (the last byte: the TSA's signature).
    for i in 0..stamps {
        let at = &vm["timestampVerificationData"]["rfc3161Timestamps"][i]["signedTimestamp"];
        let mut token = B64.decode(at.as_str().unwrap()).unwrap();
        flip_last(&mut token);
        let mut t = b.clone();
        t["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"][i]
            ["signedTimestamp"] = Value::String(B64.encode(&token));
        changes.push((format!("timestamp {i}"), t, "RFC 3161 timestamp"));
    }
    // Each checkpoint (a byte of its signature line), and each SET.
    for i in 0..entries {
        let e = &vm["tlogEntries"][i];
        let envelope = e["inclusionProof"]["checkpoint"]["envelope"]
            .as_str()
            .unwrap();
        let (note, sig_line) = envelope.split_once("\n\n").unwrap();
        let (prefix, sig_b64) = sig_line.trim_end().rsplit_once(' ').unwrap();
        let mut sig = B64.decode(sig_b64).unwrap();
        flip_last(&mut sig);
        let mut t = b.clone();
        t["verificationMaterial"]["tlogEntries"][i]["inclusionProof"]["checkpoint"]["envelope"] =
            Value::String(format!("{note}\n\n{prefix} {}\n", B64.encode(&sig)));
        changes.push((
            format!("checkpoint {i}"),
            t,
            "checkpoint's signature does not verify",
        ));
        if let Some(set) = e["inclusionPromise"]["signedEntryTimestamp"].as_str() {
            let mut set = B64.decode(set).unwrap();
            flip_last(&mut set);
            let mut t = b.clone();
            t["verificationMaterial"]["tlogEntries"][i]["inclusionPromise"]
                ["signedEntryTimestamp"] = Value::String(B64.encode(&set));
            changes.push((
                format!("SET {i}"),
                t,
                "signed entry timestamp does not verify",
            ));
        }
    }
    let tampered = path.with_file_name("tampered.json");
    for (what, bundle, says) in changes {
        std::fs::write(&tampered, bundle.to_string()).unwrap();
        let js = trust.js(&tampered, file, pem);
        assert!(
            js.is_err(),
            "{case}: @sigstore/verify accepted a changed {what}"
        );
        let out = trust.ours(agent, &tampered, file, pem);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{case}, {what}: {said}");
        assert!(
            said.contains(says),
            "{case}, {what}: {says:?} not in {said}"
        );
    }
}

#[test]
fn dsse_bundles_with_rekor_v1_rekor_v2_or_a_tsa_verify_and_changed_bytes_fail() {
    let (_hsm, agent) = agent_with(
        "",
        &[
            ("hsm/ec", "p256"),
            ("hsm/rsa", "rsa2048"),
            ("hsm/ed", "ed25519"),
        ],
    );
    let v1 = rekor_v1("ok");
    let v1_key = v1.file("rekor.pub.pem");
    let v2 = LocalService::rekor_v2("ok");
    let v2_key = v2.file("rekor.pub.pem");
    let tsa = LocalService::mock_tsa("ok");
    let chain = tsa.file("chain.pem");
    let openssl = LocalService::openssl_tsa();
    let tmp = tempfile::tempdir().unwrap();
    let predicate = tmp.path().join("predicate.json");
    std::fs::write(
        &predicate,
        br#"{"buildDefinition":{"buildType":"https://example.com/make"}}"#,
    )
    .unwrap();

    let v1_args = ["--rekor-url", &v1.url, "--rekor-public-key", s(&v1_key)];
    let v2_args = [
        "--rekor-url",
        &v2.url,
        "--rekor-public-key",
        s(&v2_key),
        "--rekor-version",
        "2",
        "--tsa-url",
        &tsa.url,
    ];
    let tsa_args = ["--tsa-url", &openssl.url];
    let v1_trust = Trust {
        log: Some((&v1_key, &v1.url)),
        tsa_chain: None,
        tsa_ours: None,
    };
    let v2_trust = Trust {
        log: Some((&v2_key, &v2.url)),
        tsa_chain: Some(&chain),
        tsa_ours: Some(&chain),
    };
    let openssl_chain = openssl.file("chain.pem");
    let openssl_root = openssl.file("root.pem");
    let tsa_trust = Trust {
        log: None,
        tsa_chain: Some(&openssl_chain),
        tsa_ours: Some(&openssl_root),
    };
    let cases: [(&str, &str, &[&str], &Trust); 5] = [
        ("v1", "hsm/ec", &v1_args, &v1_trust),
        ("v1", "hsm/ed", &v1_args, &v1_trust),
        ("v2", "hsm/ec", &v2_args, &v2_trust),
        ("v2", "hsm/rsa", &v2_args, &v2_trust),
        ("tsa", "hsm/ec", &tsa_args, &tsa_trust),
    ];
    for (i, (case, key, extra, trust)) in cases.into_iter().enumerate() {
        let file = tmp.path().join(format!("release-{i}.tgz"));
        std::fs::write(&file, format!("release {i}\n").repeat(100)).unwrap();
        let out = attest_with(&agent, key, &file, &predicate, extra);
        let said = text(&out);
        assert!(out.status.success(), "{case} {key}: {said}");
        let pem = write_pubkey(&agent, key, tmp.path());
        let bundle = PathBuf::from(format!("{}.intoto.sigstore.json", s(&file)));
        let b = read_json(&bundle);
        let vm = &b["verificationMaterial"];
        let env = &b["dsseEnvelope"];
        let payload = B64.decode(env["payload"].as_str().unwrap()).unwrap();
        let sig = B64
            .decode(env["signatures"][0]["sig"].as_str().unwrap())
            .unwrap();
        let entries = vm["tlogEntries"].as_array().unwrap();
        let stamps = &vm["timestampVerificationData"]["rfc3161Timestamps"];
        match case {
            "v1" => {
                assert!(said.contains("logged in Rekor at index"), "{said}");
                assert_eq!(entries.len(), 1, "{b}");
                let e = &entries[0];
                assert_eq!(
                    e["kindVersion"],
                    json!({"kind": "dsse", "version": "0.0.1"})
                );
                assert!(
                    e["inclusionPromise"]["signedEntryTimestamp"].is_string(),
                    "{e}"
                );
                // The body Rekor stores: hashes, the signature and its key.
                let body: Value = serde_json::from_slice(
                    &B64.decode(e["canonicalizedBody"].as_str().unwrap())
                        .unwrap(),
                )
                .unwrap();
                assert_eq!(body["kind"], "dsse");
                assert_eq!(
                    body["spec"]["payloadHash"],
                    json!({"algorithm": "sha256", "value": hex::encode(Sha256::digest(&payload))})
                );
                assert_eq!(body["spec"]["envelopeHash"]["algorithm"], "sha256");
                assert_eq!(
                    body["spec"]["signatures"][0]["signature"],
                    env["signatures"][0]["sig"]
                );
                let logged_pem = B64
                    .decode(body["spec"]["signatures"][0]["verifier"].as_str().unwrap())
                    .unwrap();
                assert_eq!(logged_pem, std::fs::read(&pem).unwrap());
                assert!(body["spec"].get("proposedContent").is_none(), "{body}");
                assert!(stamps.is_null(), "{b}");
            }
            "v2" => {
                assert_eq!(entries.len(), 1, "{b}");
                let e = &entries[0];
                assert_eq!(
                    e["kindVersion"],
                    json!({"kind": "hashedrekord", "version": "0.0.2"})
                );
                assert!(e["inclusionPromise"].is_null(), "{e}");
                // The PAE's SHA-256 and the envelope's signature.
                let body: Value = serde_json::from_slice(
                    &B64.decode(e["canonicalizedBody"].as_str().unwrap())
                        .unwrap(),
                )
                .unwrap();
                let mut pae = format!("DSSEv1 28 application/vnd.in-toto+json {} ", payload.len())
                    .into_bytes();
                pae.extend_from_slice(&payload);
                let spec = &body["spec"]["hashedRekordV002"];
                assert_eq!(spec["data"]["digest"], B64.encode(Sha256::digest(&pae)));
                assert_eq!(spec["signature"]["content"], B64.encode(&sig));
                assert_eq!(stamps.as_array().unwrap().len(), 1, "{b}");
            }
            _ => {
                assert!(entries.is_empty(), "{b}");
                assert_eq!(stamps.as_array().unwrap().len(), 1, "{b}");
            }
        }
        // Changed bytes: for each service once, with the P-256 key.
        if key == "hsm/ec" {
            verifies_and_every_changed_byte_fails(&agent, trust, &bundle, &file, &pem, case);
        } else {
            trust
                .js(&bundle, &file, &pem)
                .unwrap_or_else(|e| panic!("{case} {key}: @sigstore/verify: {e}"));
            let out = trust.ours(&agent, &bundle, &file, &pem);
            assert!(out.status.success(), "{case} {key}: {}", text(&out));
        }
    }
}

fn service(url: &str, version: u32) -> Value {
    json!({
        "url": url, "majorApiVersion": version,
        "validFor": {"start": "2024-01-01T00:00:00Z"}, "operator": url,
    })
}

/// The base64 DER of each PEM block of a file.
fn pem_blocks(pem: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(pem).unwrap();
    text.split("-----BEGIN ")
        .skip(1)
        .map(|block| {
            let body = block.split_once("-----\n").unwrap().1;
            let body = body.split("-----END").next().unwrap();
            body.lines().map(str::trim).collect::<String>()
        })
        .collect()
}

#[test]
fn dsse_bundles_from_a_signing_config_and_trusted_root_verify() {
    let (_hsm, agent) = agent_with("", &[("hsm/ec", "p256")]);
    let v1 = rekor_v1("ok");
    let v2 = LocalService::rekor_v2("ok");
    let tsa = LocalService::mock_tsa("ok");
    let chain = tsa.file("chain.pem");
    let tmp = tempfile::tempdir().unwrap();
    let pem = write_pubkey(&agent, "hsm/ec", tmp.path());
    let predicate = tmp.path().join("predicate.json");
    std::fs::write(
        &predicate,
        br#"{"buildDefinition":{"buildType":"https://example.com/make"}}"#,
    )
    .unwrap();
    let root = tmp.path().join("trusted_root.json");
    std::fs::write(
        &root,
        json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot.v0.2+json",
            "tlogs": ([&v1, &v2]).iter().map(|log| json!({
                "baseUrl": log.url, "hashAlgorithm": "SHA2_256",
                "publicKey": {"rawBytes": pem_blocks(&log.file("rekor.pub.pem"))[0]},
            })).collect::<Vec<_>>(),
            "timestampAuthorities": [{"certChain": {"certificates":
                pem_blocks(&chain).iter().map(|c| json!({"rawBytes": c})).collect::<Vec<_>>()}}],
        })
        .to_string(),
    )
    .unwrap();
    for (log, version, kind) in [(&v1, 1, "dsse"), (&v2, 2, "hashedrekord")] {
        let config = tmp.path().join(format!("signing_config_v{version}.json"));
        std::fs::write(
            &config,
            json!({
                "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
                "rekorTlogUrls": [service(&log.url, version)],
                "rekorTlogConfig": {"selector": "ANY"},
                "tsaUrls": [service(&tsa.url, 1)],
                "tsaConfig": {"selector": "ANY"},
            })
            .to_string(),
        )
        .unwrap();
        let file = tmp.path().join(format!("app-v{version}.tgz"));
        std::fs::write(&file, format!("app {version}\n").repeat(100)).unwrap();
        let out = attest_with(
            &agent,
            "hsm/ec",
            &file,
            &predicate,
            &["--signing-config", s(&config), "--trusted-root", s(&root)],
        );
        let said = text(&out);
        assert!(out.status.success(), "{said}");
        assert!(
            said.contains(&format!("Rekor v{version} {}; TSA {}", log.url, tsa.url)),
            "{said}"
        );
        let bundle = PathBuf::from(format!("{}.intoto.sigstore.json", s(&file)));
        let b = read_json(&bundle);
        let e = &b["verificationMaterial"]["tlogEntries"];
        assert_eq!(e.as_array().unwrap().len(), 1, "{b}");
        assert_eq!(e[0]["kindVersion"]["kind"], kind, "{b}");
        let key = log.file("rekor.pub.pem");
        let trust = Trust {
            log: Some((&key, &log.url)),
            tsa_chain: Some(&chain),
            tsa_ours: Some(&chain),
        };
        let case = format!("signing config, Rekor v{version}");
        verifies_and_every_changed_byte_fails(&agent, &trust, &bundle, &file, &pem, &case);
        // The other log's key does not verify this entry, in either verifier.
        let other = if version == 1 { &v2 } else { &v1 };
        let other_key = other.file("rekor.pub.pem");
        let wrong = Trust {
            log: Some((&other_key, &other.url)),
            ..trust
        };
        assert!(wrong.js(&bundle, &file, &pem).is_err(), "{case}");
        let out = wrong.ours(&agent, &bundle, &file, &pem);
        assert_eq!(out.status.code(), Some(1), "{case}: {}", text(&out));
    }
}

#[test]
fn dsse_failures_write_no_bundle_and_refusals_come_before_signing() {
    let (_hsm, agent) = agent_with(
        "",
        &[
            ("hsm/ec", "p256"),
            ("hsm/ec384", "p384"),
            ("hsm/ed", "ed25519"),
        ],
    );
    let v1 = rekor_v1("ok");
    let v1_refusing = rekor_v1("refuse");
    let v2_refusing = LocalService::rekor_v2("refuse");
    let tsa = LocalService::mock_tsa("ok");
    let garbage = LocalService::mock_tsa("garbage");
    let v1_key = v1.file("rekor.pub.pem");
    let other_key = v2_refusing.file("rekor.pub.pem");
    let tmp = tempfile::tempdir().unwrap();
    let predicate = tmp.path().join("predicate.json");
    std::fs::write(&predicate, b"{}").unwrap();
    let file = tmp.path().join("a.tgz");
    std::fs::write(&file, b"artifact").unwrap();
    let bundle = tmp.path().join("a.tgz.intoto.sigstore.json");

    let v1_refusing_key = v1_refusing.file("rekor.pub.pem");
    let cases: Vec<(Vec<&str>, String, &str)> = vec![
        (
            vec![
                "--rekor-url",
                &v1_refusing.url,
                "--rekor-public-key",
                s(&v1_refusing_key),
            ],
            format!("Rekor at {}/api/v1/log/entries", v1_refusing.url),
            "refused the entry: HTTP 400",
        ),
        (
            // A log answering with another key than the one it is trusted with.
            vec!["--rekor-url", &v1.url, "--rekor-public-key", s(&other_key)],
            format!("Rekor at {}/api/v1/log/entries", v1.url),
            "is not the log key's",
        ),
        (
            vec![
                "--rekor-url",
                &v2_refusing.url,
                "--rekor-public-key",
                s(&other_key),
                "--rekor-version",
                "2",
                "--tsa-url",
                &tsa.url,
            ],
            format!("Rekor v2 at {}/api/v2/log/entries", v2_refusing.url),
            "refused the entry: HTTP 400",
        ),
        (
            vec!["--tsa-url", &garbage.url],
            garbage.url.clone(),
            "not an RFC 3161 TimeStampResp",
        ),
    ];
    // First with no bundle, then with an older one: nothing is written, it stays.
    for older in [false, true] {
        if older {
            assert!(attest_with(&agent, "hsm/ec", &file, &predicate, &[])
                .status
                .success());
        }
        let before = std::fs::read(&bundle).ok();
        for (extra, service, what) in &cases {
            let out = attest_with(&agent, "hsm/ec", &file, &predicate, extra);
            let said = text(&out);
            assert_eq!(out.status.code(), Some(1), "{said}");
            assert!(said.contains(service.as_str()), "names {service}: {said}");
            assert!(said.contains(what), "says {what}: {said}");
            assert!(said.contains("no bundle was written"), "{said}");
            assert_eq!(std::fs::read(&bundle).ok(), before, "{said}");
            let names: Vec<String> = std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "predicate.json" && n != "a.tgz")
                .collect();
            let expected: Vec<String> = before
                .iter()
                .map(|_| "a.tgz.intoto.sigstore.json".to_string())
                .collect();
            assert_eq!(names, expected, "nothing partial left: {said}");
        }
    }

    // Refused before anything is signed, as `waxseal sign` refuses them.
    let v2 = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--rekor-url",
            &v1.url,
            "--rekor-public-key",
            s(&v1_key),
            "--rekor-version",
            "2",
        ]
        .map(String::from)
        .to_vec();
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    let with_tsa = ["--tsa-url".to_string(), tsa.url.clone()];
    let missing = tmp.path().join("missing.json");
    let refusals: Vec<(&str, Vec<String>, &str)> = vec![
        ("hsm/ec", v2(&[]), "add --tsa-url"),
        (
            "hsm/ed",
            [v2(&[]), with_tsa.to_vec()].concat(),
            "Rekor v2 does not accept pure Ed25519",
        ),
        (
            "hsm/ec384",
            ["--rekor-url", &v1.url, "--rekor-public-key", s(&v1_key)]
                .map(String::from)
                .to_vec(),
            "Rekor v1 checks a dsse entry's signature over its sha256",
        ),
        (
            "hsm/ec",
            vec!["--signing-config".into(), s(&missing).into()],
            "cannot read the signing config",
        ),
    ];
    let signed = signed_records(&agent);
    let before = std::fs::read(&bundle).unwrap();
    for (key, extra, says) in &refusals {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = attest_with(&agent, key, &file, &predicate, &extra);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{key}: {said}");
        assert!(said.contains(says), "{key}: {says:?} not in {said}");
        assert_eq!(
            signed_records(&agent),
            signed,
            "{key}: nothing was signed: {said}"
        );
        assert_eq!(std::fs::read(&bundle).unwrap(), before);
    }
    // The flags' own rules are sign's: --rekor-version needs --rekor-url, --rekor-url a
    // key to check the log with: usage errors.
    for extra in [
        &["--rekor-version", "2", "--tsa-url", &tsa.url][..],
        &["--rekor-url", &v1.url][..],
        &["--tsa-timeout", "3"][..],
    ] {
        let out = attest_with(&agent, "hsm/ec", &file, &predicate, extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", text(&out));
    }
    assert_eq!(signed_records(&agent), signed);

    // The P-384 key is fine for Rekor v2 (SHA-384 of the PAE, as its key details say),
    // and waxseal verify checks that entry and timestamp.
    let v2_ok = LocalService::rekor_v2("ok");
    let v2_key = v2_ok.file("rekor.pub.pem");
    let chain = tsa.file("chain.pem");
    let out = attest_with(
        &agent,
        "hsm/ec384",
        &file,
        &predicate,
        &[
            "--rekor-url",
            &v2_ok.url,
            "--rekor-public-key",
            s(&v2_key),
            "--rekor-version",
            "2",
            "--tsa-url",
            &tsa.url,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = agent.cli(&[
        "verify",
        s(&file),
        "--key",
        "hsm/ec384",
        "--rekor-public-key",
        s(&v2_key),
        "--tsa-cert-chain",
        s(&chain),
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("transparency log: 1 entry checked"), "{said}");
    assert!(said.contains("RFC 3161 timestamp: 1 checked"), "{said}");
}
