//! Attestations: `waxseal attest` has the agent (purpose `attest`, on SoftHSM2) sign an
//! in-toto statement's DSSE PAE, and writes a Sigstore bundle that `waxseal verify` and
//! @sigstore/verify (sigstore-js) both accept for each subject file and refuse once the
//! payload changes; the policy, the statement checks and the audit record.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pkcs11_tests::{output_text as text, read_json, write_pubkey};
use pkcs11_tests::{pkcs11_device, sigstore_js_verify, Agent, SoftHsm};
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
