//! `waxseal sign FILE...`: many files in one invocation over one pipelined connection
//! (docs/protocol.md, "Pipelining"), each into its own bundle, against a real agent on
//! SoftHSM2. Bundles are checked by `waxseal verify`, by @sigstore/verify (sigstore-js)
//! and by `openssl dgst -verify`; the agent's audit log must hold one signature per
//! file. Failures of single files (unreadable, refused) must leave the others signed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pkcs11_tests::output_text as text;
use pkcs11_tests::{
    audit_records, pkcs11_device, read_frame, sigstore_js_verify, write_frame, Agent, MockRekor,
    SoftHsm,
};
use serde_json::Value;
use waxseal_agent::proto::{Bytes, HashAlg, Op, Purpose, Sign, SignOk};
use zeroize::Zeroizing;

const KEY: &str = "hsm/rel";

/// A SoftHSM2 token with a P-256 key `hsm/rel`, behind an agent whose config has
/// `extra` appended.
fn agent_with_key(extra: &str) -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token("many", "so-pin-1", "user-pin-1");
    let pin = hsm.pin_file("pin", "user-pin-1");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", "many", &pin))
        .config(extra)
        .start();
    let out = agent.cli(&["keys", "generate", KEY, "--alg", "p256"]);
    assert!(out.status.success(), "{}", text(&out));
    (hsm, agent)
}

/// `n` small files `f000.bin`… in `dir`, each with its own content.
fn small_files(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("f{i:03}.bin"));
            std::fs::write(&p, format!("artifact number {i}\n").repeat(i % 7 + 1)).unwrap();
            p
        })
        .collect()
}

fn sign(agent: &Agent, files: &[PathBuf], extra: &[&str]) -> Output {
    let mut args: Vec<&str> = vec!["sign", "--key", KEY];
    args.extend_from_slice(extra);
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    agent.cli(&args)
}

fn bundle_of(file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sigstore.json", file.display()))
}

fn public_key_pem(agent: &Agent, dir: &Path) -> PathBuf {
    let p = dir.join("rel.pub.pem");
    std::fs::write(&p, agent.client().public_key(KEY).unwrap().pem).unwrap();
    p
}

/// `waxseal verify FILE --public-key PEM` accepts the file's bundle.
fn assert_verifies(agent: &Agent, file: &Path, pem: &Path) {
    let out = agent.cli(&[
        "verify",
        file.to_str().unwrap(),
        "--public-key",
        pem.to_str().unwrap(),
    ]);
    assert!(
        out.status.success() && text(&out).contains("Verified OK"),
        "{}: {}",
        file.display(),
        text(&out)
    );
}

/// OpenSSL checks the signature in `file`'s bundle against the public key.
fn assert_openssl_verifies(file: &Path, pem: &Path, scratch: &Path) {
    let bundle: Value = serde_json::from_slice(&std::fs::read(bundle_of(file)).unwrap()).unwrap();
    let sig = B64
        .decode(bundle["messageSignature"]["signature"].as_str().unwrap())
        .unwrap();
    let sig_path = scratch.join("sig.der");
    std::fs::write(&sig_path, sig).unwrap();
    let out = Command::new(pkcs11_tests::require("openssl"))
        .args(["dgst", "-sha256", "-verify"])
        .arg(pem)
        .arg("-signature")
        .arg(&sig_path)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out).contains("Verified OK"),
        "openssl on {}: {}",
        file.display(),
        text(&out)
    );
}

/// How many `signed` records the log holds per artifact name (the name is on the
/// intent record that a `signed` record closes, or on the record itself).
fn signed_per_name(state: &Path) -> HashMap<String, usize> {
    let records = audit_records(state);
    let by_seq: HashMap<u64, &Value> = records
        .iter()
        .filter_map(|r| Some((r["seq"].as_u64()?, r)))
        .collect();
    let mut counts = HashMap::new();
    for r in records.iter().filter(|r| r["event"] == "signed") {
        let name = r["name"].as_str().or_else(|| {
            let intent = by_seq.get(&r["intent"].as_u64()?)?;
            intent["name"].as_str()
        });
        let name = name.unwrap_or_else(|| panic!("a signed record without a name: {r}"));
        *counts.entry(name.to_string()).or_insert(0) += 1;
    }
    counts
}

/// Connections the agent accepted so far (its debug log says each).
fn connections(agent: &Agent) -> usize {
    agent.log().matches("client connected").count()
}

#[test]
fn two_hundred_files_in_one_invocation_each_get_a_bundle_that_verifies() {
    let (_hsm, agent) = agent_with_key("");
    let tmp = tempfile::tempdir().unwrap();
    let files = small_files(tmp.path(), 200);
    let mut control = agent.client();
    let syncs_before = control.status().unwrap().audit.unwrap().syncs;
    let before = connections(&agent);

    let out = sign(&agent, &files, &["--json"]);
    assert!(out.status.success(), "{}", text(&out));
    // The agent holds a pipelining connection's answers until one sync covers the
    // intents of all its signatures in flight (docs/architecture.md, "The audit log").
    let syncs = control.status().unwrap().audit.unwrap().syncs - syncs_before;
    eprintln!("200 pipelined signatures, {syncs} syncs");
    assert!(
        syncs * 4 <= files.len() as u64,
        "{syncs} syncs for {} pipelined signatures",
        files.len()
    );
    assert_eq!(
        connections(&agent) - before,
        1,
        "one invocation, one connection:\n{}",
        agent.log()
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), files.len());
    for (file, r) in files.iter().zip(&results) {
        assert_eq!(r["file"], file.to_str().unwrap(), "{r}");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["bundle"], bundle_of(file).to_str().unwrap(), "{r}");
        assert_eq!(r["alg"], "ecdsa-p256-sha256", "{r}");
    }

    // Every bundle with our verifier; a sample with two we did not write.
    let pem = public_key_pem(&agent, tmp.path());
    for file in &files {
        assert_verifies(&agent, file, &pem);
    }
    for file in files.iter().step_by(40) {
        sigstore_js_verify(&bundle_of(file), file, &pem, None)
            .unwrap_or_else(|e| panic!("@sigstore/verify on {}: {e}", file.display()));
    }
    for file in files.iter().step_by(20) {
        assert_openssl_verifies(file, &pem, tmp.path());
    }
    // A bundle belongs to its own file only.
    let swapped = tmp.path().join("swapped.sigstore.json");
    std::fs::copy(bundle_of(&files[1]), &swapped).unwrap();
    let out = agent.cli(&[
        "verify",
        files[0].to_str().unwrap(),
        "--bundle",
        swapped.to_str().unwrap(),
        "--public-key",
        pem.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "{}", text(&out));

    // The audit log: one signature per file, under its name.
    let signed = signed_per_name(&agent.state_dir);
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert_eq!(signed.get(name), Some(&1), "{name}: {signed:?}");
    }
    assert_eq!(signed.len(), files.len(), "{signed:?}");
}

#[test]
fn unreadable_files_in_the_middle_are_named_and_the_others_signed() {
    let (_hsm, agent) = agent_with_key("");
    let tmp = tempfile::tempdir().unwrap();
    let mut files = small_files(tmp.path(), 9);
    // A directory and a dangling symlink (chmod 000 means nothing to root).
    let dir = tmp.path().join("not-a-file.bin");
    std::fs::create_dir(&dir).unwrap();
    let dangling = tmp.path().join("dangling.bin");
    std::os::unix::fs::symlink(tmp.path().join("gone"), &dangling).unwrap();
    files[3] = dir.clone();
    files[6] = dangling.clone();

    let out = sign(&agent, &files, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for bad in [&dir, &dangling] {
        assert!(
            err.lines()
                .any(|l| l.contains(bad.to_str().unwrap()) && l.contains("not signed")),
            "stderr does not name {}: {err}",
            bad.display()
        );
        assert!(!bundle_of(bad).exists());
    }
    assert!(err.contains("signed 7 of 9 files"), "{err}");
    let pem = public_key_pem(&agent, tmp.path());
    for (i, file) in files.iter().enumerate() {
        if i != 3 && i != 6 {
            assert_verifies(&agent, file, &pem);
        }
    }
    assert_eq!(signed_per_name(&agent.state_dir).len(), 7);
}

#[test]
fn refusals_by_the_agent_are_named_and_the_others_signed() {
    // The agent signs three, then refuses the key (max_per_hour).
    let (_hsm, agent) = agent_with_key(&format!(
        "[[key]]\nname = \"{KEY}\"\npurposes = [\"blob\"]\nmax_per_hour = 3\n"
    ));
    let tmp = tempfile::tempdir().unwrap();
    let files = small_files(tmp.path(), 6);

    let out = sign(&agent, &files, &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let pem = public_key_pem(&agent, tmp.path());
    for (i, (file, r)) in files.iter().zip(&results).enumerate() {
        if i < 3 {
            assert_eq!(r["ok"], true, "{r}");
            assert_verifies(&agent, file, &pem);
        } else {
            assert_eq!(r["ok"], false, "{r}");
            assert!(r["error"].as_str().unwrap().contains("max_per_hour"), "{r}");
            assert!(
                err.lines()
                    .any(|l| l.contains(file.to_str().unwrap()) && l.contains("max_per_hour")),
                "stderr does not name {}: {err}",
                file.display()
            );
            assert!(!bundle_of(file).exists());
        }
    }
    assert_eq!(signed_per_name(&agent.state_dir).len(), 3);
}

#[test]
fn each_file_is_logged_in_rekor_with_its_own_entry() {
    let (_hsm, agent) = agent_with_key("");
    let rekor = MockRekor::start();
    let tmp = tempfile::tempdir().unwrap();
    let files = small_files(tmp.path(), 4);
    let rekor_key = rekor.public_key.to_str().unwrap();
    let out = sign(
        &agent,
        &files,
        &[
            "--json",
            "--rekor-url",
            &rekor.url,
            "--rekor-public-key",
            rekor_key,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut indexes = std::collections::HashSet::new();
    let pem = public_key_pem(&agent, tmp.path());
    for (file, r) in files.iter().zip(&results) {
        assert_eq!(r["ok"], true, "{r}");
        assert!(
            indexes.insert(r["log_index"].as_i64().unwrap()),
            "{results:?}"
        );
        // Both verifiers check the log entry too.
        let ours = agent.cli(&[
            "verify",
            file.to_str().unwrap(),
            "--public-key",
            pem.to_str().unwrap(),
            "--rekor-public-key",
            rekor_key,
        ]);
        assert!(ours.status.success(), "{}", text(&ours));
        sigstore_js_verify(&bundle_of(file), file, &pem, Some(&rekor))
            .unwrap_or_else(|e| panic!("@sigstore/verify on {}: {e}", file.display()));
    }
}

#[test]
fn bundle_and_out_name_one_file_only() {
    let (_hsm, agent) = agent_with_key("");
    let tmp = tempfile::tempdir().unwrap();
    let files = small_files(tmp.path(), 2);
    let target = tmp.path().join("one.json");
    for extra in [
        &["--bundle", target.to_str().unwrap()][..],
        &["--raw", "--out", target.to_str().unwrap()][..],
    ] {
        let out = sign(&agent, &files, extra);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(extra[extra.len() - 2]), "{err}");
        assert!(err.contains("2 files"), "{err}");
        assert!(!target.exists());
    }
    assert!(signed_per_name(&agent.state_dir).is_empty());
    // One file with --bundle still works.
    let out = sign(&agent, &files[..1], &["--bundle", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(target.exists());
}

/// Requests sent ahead of a PIN reply wait their turn: the agent asks for the PIN
/// while later requests are already queued on the connection, and serves them all.
#[test]
fn pipelined_requests_behind_a_pin_prompt_are_all_served() {
    let hsm = SoftHsm::new();
    hsm.init_token("prompted", "5555", "Q7w3e9");
    let pin = hsm.pin_file("pin", "Q7w3e9");
    // The key is made by an agent that reads the PIN from a file…
    let mut maker = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", "prompted", &pin))
        .start();
    assert!(maker
        .client()
        .generate_key(KEY, waxseal_agent::proto::KeyAlg::P256)
        .is_ok());
    maker.terminate();
    // …and used by one that asks the client.
    let config = "[[device]]\nname = \"hsm\"\nkind = \"pkcs11\"\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken = \"prompted\"\npin = \"prompt\"\n";
    let agent = Agent::builder().softhsm(&hsm).config(config).start();
    let mut client = agent.client();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&asked);
    client.on_prompt(Box::new(move |_| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(Zeroizing::new("Q7w3e9".to_string()))
    }));
    let ops = (0..20u8).map(|i| {
        let op = Op::Sign(Sign {
            key: KEY.into(),
            purpose: Purpose::Blob,
            hash: Some(HashAlg::Sha256),
            digest: Bytes(vec![i; 32]),
            tbs: None,
            name: Some(format!("queued-{i}")),
            padding: None,
            message: None,
            statement: None,
        });
        (i, op)
    });
    let mut answered = 0u8;
    for (i, result) in client.pipeline::<_, SignOk, _>(ops, 8) {
        assert_eq!(i, answered);
        let signed = result.unwrap_or_else(|e| panic!("request {i}: {e}\n{}", agent.log()));
        assert_eq!(signed.alg, "ecdsa-p256-sha256");
        answered += 1;
    }
    assert_eq!(answered, 20);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(signed_per_name(&agent.state_dir).len(), 20);
}

#[test]
fn held_answers_go_out_before_the_connection_ends_and_their_signatures_are_recorded() {
    use std::io::Write;
    let (_hsm, agent) = agent_with_key("");
    // Three signatures pipelined, then a frame announced over the limit: the agent holds
    // the three answers for one sync, and must send them, and record their outcomes,
    // before it refuses the frame and closes.
    let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
    for (id, name) in [(1, "held-1"), (2, "held-2"), (3, "held-3")] {
        let sign = format!(
            r#"{{"id":{id},"op":"sign","key":"{KEY}","purpose":"blob","name":"{name}","hash":"sha256","digest":"{}"}}"#,
            B64.encode([id as u8; 32])
        );
        write_frame(&mut s, sign.as_bytes());
    }
    s.write_all(&(64u32 << 20).to_be_bytes()).unwrap();
    for id in 1..=3 {
        let answer = read_frame(&mut s).unwrap();
        assert_eq!(answer["id"], id, "{answer}");
        assert!(answer["ok"]["signature"].is_string(), "{answer}");
    }
    let refusal = read_frame(&mut s).unwrap();
    assert_eq!(refusal["error"]["code"], "frame-too-large", "{refusal}");
    let signed = signed_per_name(&agent.state_dir);
    for name in ["held-1", "held-2", "held-3"] {
        assert_eq!(signed.get(name), Some(&1), "{name}: {signed:?}");
    }
}
