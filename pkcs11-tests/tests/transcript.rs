//! Ceremony transcripts (README.md, "Ceremony transcripts"): `waxseal ca root
//! --transcript DIR --witness-key NAME` on a real SoftHSM2 token writes a transcript
//! that `waxseal ca transcript verify` accepts offline (and `ca tsa`, `ca crl` and a
//! `ca intermediate` under a 2-of-2 quorum root key); one byte changed in any file,
//! a file removed, a file added, an audit record edited (even with the manifest
//! re-hashed and re-signed by another key), or another witness key, each fail naming
//! the piece.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::pkcs8::EncodePublicKey;
use pkcs11_tests::{output_text, pkcs11_device, Agent, SoftHsm};
use sha2::{Digest, Sha256};
use waxseal_agent::proto::KeyAlg;

const ROOT: &str = "hsm/ceremony-root";
const WITNESS: &str = "hsm/witness";
const TSA: &str = "hsm/tsa";

fn ceremony() -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token("ca", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let config = format!(
        "{}\n[[key]]\nname = \"{ROOT}\"\npurposes = [\"x509-tbs\", \"x509-crl\"]\n\n[[key]]\nname = \"{WITNESS}\"\npurposes = [\"digest\"]\n\n[[key]]\nname = \"{TSA}\"\npurposes = [\"digest\"]\n",
        pkcs11_device("hsm", "ca", &pin)
    );
    let agent = Agent::builder().softhsm(&hsm).config(&config).start();
    let mut client = agent.client();
    client.generate_key(TSA, KeyAlg::P256).unwrap();
    client.generate_key(ROOT, KeyAlg::P384).unwrap();
    client.generate_key(WITNESS, KeyAlg::P256).unwrap();
    (hsm, agent)
}

fn verify(agent: &Agent, dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["ca", "transcript", "verify", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    agent.cli(&args)
}

/// `ca transcript verify` fails, naming `piece`.
fn fails(agent: &Agent, dir: &Path, extra: &[&str], piece: &str, case: &str) {
    let out = verify(agent, dir, extra);
    let text = output_text(&out);
    assert!(!out.status.success(), "{case}: verified anyway: {text}");
    assert!(
        text.contains(piece),
        "{case}: expected `{piece}` in: {text}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Every file of the transcript, relative.
fn files(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("MANIFEST")).unwrap();
    let mut names: Vec<String> = text
        .lines()
        .map(|l| l.split_once("  ").unwrap().1.to_string())
        .collect();
    names.push("MANIFEST".into());
    names.push("MANIFEST.sig".into());
    names
}

/// The manifest of `dir` rebuilt and signed by a key that is not the witness's, with
/// witness.pub.pem replaced by that key: what an attacker who edits files can do.
fn resign(dir: &Path) {
    let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let spki = key.verifying_key().to_public_key_der().unwrap();
    std::fs::write(
        dir.join("witness.pub.pem"),
        waxseal::ca::pem("PUBLIC KEY", spki.as_bytes()),
    )
    .unwrap();
    let mut names: Vec<String> = files(dir)
        .into_iter()
        .filter(|n| n != "MANIFEST" && n != "MANIFEST.sig")
        .collect();
    names.sort();
    let manifest: String = names
        .iter()
        .map(|n| {
            format!(
                "{}  {n}\n",
                hex::encode(Sha256::digest(std::fs::read(dir.join(n)).unwrap()))
            )
        })
        .collect();
    std::fs::write(dir.join("MANIFEST"), &manifest).unwrap();
    let sig: p256::ecdsa::Signature = key.sign_prehash(&Sha256::digest(&manifest)).unwrap();
    std::fs::write(
        dir.join("MANIFEST.sig"),
        format!("{}\n", B64.encode(sig.to_der().as_bytes())),
    )
    .unwrap();
}

fn ca_root(agent: &Agent, out: &Path, dir: &Path) -> std::process::Output {
    agent.cli(&[
        "ca",
        "root",
        "--key",
        ROOT,
        "--cn",
        "ceremony",
        "--org",
        "example.org",
        "--out",
        out.to_str().unwrap(),
        "--transcript",
        dir.to_str().unwrap(),
        "--witness-key",
        WITNESS,
    ])
}

#[test]
fn a_root_transcript_verifies_and_every_tampering_is_named() {
    let (_hsm, agent) = ceremony();
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("transcript");
    let out = ca_root(&agent, &work.path().join("root.pem"), &good);
    assert!(
        out.status.success(),
        "ca root --transcript: {}",
        output_text(&out)
    );

    // What it holds.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&good).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the transcript directory's mode");
    let names = files(&good);
    for want in [
        "command.json",
        "agent.json",
        "tbs.der",
        "tbs-summary.json",
        "certificate.pem",
        "audit.jsonl",
        "witness.pub.pem",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    assert_eq!(
        std::fs::read(good.join("certificate.pem")).unwrap(),
        std::fs::read(work.path().join("root.pem")).unwrap()
    );
    let agent_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(good.join("agent.json")).unwrap()).unwrap();
    assert_eq!(
        agent_json["key_evidence"]["can_prove"], false,
        "{agent_json}"
    );
    assert!(
        agent_json["key_evidence"]["why"]
            .as_str()
            .unwrap()
            .contains("PKCS#11 token cannot prove"),
        "{agent_json}"
    );
    let command: serde_json::Value =
        serde_json::from_slice(&std::fs::read(good.join("command.json")).unwrap()).unwrap();
    assert!(
        command["argv"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--transcript"),
        "{command}"
    );
    let audit = std::fs::read_to_string(good.join("audit.jsonl")).unwrap();
    assert!(audit.contains("\"event\":\"intent\""), "{audit}");
    assert!(audit.contains("\"event\":\"signed\""), "{audit}");

    // It verifies, with its own witness key and with the witness key given.
    let ok = verify(&agent, &good, &[]);
    assert!(ok.status.success(), "verify: {}", output_text(&ok));
    assert!(
        output_text(&ok).contains("proves integrity, not who"),
        "{}",
        output_text(&ok)
    );
    let witness_pem = work.path().join("witness.pem");
    std::fs::copy(good.join("witness.pub.pem"), &witness_pem).unwrap();
    let witness_arg = ["--witness-public-key", witness_pem.to_str().unwrap()];
    let ok = verify(&agent, &good, &witness_arg);
    assert!(ok.status.success(), "verify: {}", output_text(&ok));

    // One byte changed in any file: named (MANIFEST's own change breaks its signature).
    for name in files(&good) {
        let bad = work.path().join(format!("byte-{}", name.replace('/', "_")));
        copy_dir(&good, &bad);
        let path = bad.join(&name);
        let mut data = std::fs::read(&path).unwrap();
        let i = data.len() / 2;
        data[i] ^= 0x01;
        std::fs::write(&path, data).unwrap();
        let piece = if name == "MANIFEST" {
            "MANIFEST.sig"
        } else {
            name.as_str()
        };
        fails(
            &agent,
            &bad,
            &[],
            piece,
            &format!("one byte of {name} changed"),
        );
    }

    // A file removed; a file added.
    for name in ["tbs.der", "audit.jsonl", "certificate.pem", "agent.json"] {
        let bad = work.path().join(format!("gone-{name}"));
        copy_dir(&good, &bad);
        std::fs::remove_file(bad.join(name)).unwrap();
        fails(
            &agent,
            &bad,
            &[],
            &format!("{name}: listed in the manifest but missing"),
            &format!("{name} removed"),
        );
    }
    let bad = work.path().join("extra");
    copy_dir(&good, &bad);
    std::fs::write(bad.join("notes.txt"), "added later").unwrap();
    fails(
        &agent,
        &bad,
        &[],
        "notes.txt: a file the manifest does not list",
        "a file added",
    );

    // An audit record edited, the manifest re-hashed and re-signed by another key:
    // the chain names the record; the trusted witness key names the signature.
    let bad = work.path().join("edited-audit");
    copy_dir(&good, &bad);
    let text = std::fs::read_to_string(bad.join("audit.jsonl")).unwrap();
    let edited = text.replacen(
        "\"event\":\"intent\"",
        "\"event\":\"intent\",\"note\":\"x\"",
        1,
    );
    assert_ne!(edited, text);
    std::fs::write(bad.join("audit.jsonl"), edited).unwrap();
    resign(&bad);
    fails(
        &agent,
        &bad,
        &[],
        "audit.jsonl: line",
        "an audit record edited",
    );
    fails(
        &agent,
        &bad,
        &witness_arg,
        "MANIFEST.sig",
        "re-signed by another key",
    );

    // The TBS and the certificate swapped for another ceremony's, re-signed: the
    // audit record no longer names tbs.der.
    let other = work.path().join("other");
    let out = ca_root(&agent, &work.path().join("root2.pem"), &other);
    assert!(out.status.success(), "{}", output_text(&out));
    let bad = work.path().join("swapped");
    copy_dir(&good, &bad);
    for name in ["tbs.der", "certificate.pem", "tbs-summary.json"] {
        std::fs::copy(other.join(name), bad.join(name)).unwrap();
    }
    resign(&bad);
    fails(
        &agent,
        &bad,
        &[],
        "no `signed` record names the SHA-256 of tbs.der",
        "another ceremony's TBS",
    );

    // `ca tsa` and `ca crl` write transcripts that verify too.
    let root = work.path().join("root.pem");
    let tsa_dir = work.path().join("tsa-transcript");
    let out = agent.cli(&[
        "ca",
        "tsa",
        "--key",
        TSA,
        "--issuer-key",
        ROOT,
        "--issuer-chain",
        root.to_str().unwrap(),
        "--cn",
        "ceremony-tsa",
        "--org",
        "example.org",
        "--out",
        work.path().join("tsa.pem").to_str().unwrap(),
        "--transcript",
        tsa_dir.to_str().unwrap(),
        "--witness-key",
        WITNESS,
    ]);
    assert!(
        out.status.success(),
        "ca tsa --transcript: {}",
        output_text(&out)
    );
    let ok = verify(&agent, &tsa_dir, &witness_arg);
    assert!(
        ok.status.success(),
        "verify the tsa transcript: {}",
        output_text(&ok)
    );
    let crl_dir = work.path().join("crl-transcript");
    let out = agent.cli(&[
        "ca",
        "crl",
        "--key",
        ROOT,
        "--issuer-cert",
        root.to_str().unwrap(),
        "--out",
        work.path().join("crl.pem").to_str().unwrap(),
        "--transcript",
        crl_dir.to_str().unwrap(),
        "--witness-key",
        WITNESS,
    ]);
    assert!(
        out.status.success(),
        "ca crl --transcript: {}",
        output_text(&out)
    );
    let ok = verify(&agent, &crl_dir, &witness_arg);
    assert!(
        ok.status.success(),
        "verify the crl transcript: {}",
        output_text(&ok)
    );
    assert!(output_text(&ok).contains("crl.pem"), "{}", output_text(&ok));
    // A CRL transcript whose crl.pem is swapped for another CRL of the same issuer,
    // re-signed: its TBSCertList is not tbs.der.
    let other_crl = work.path().join("crl2.pem");
    let out = agent.cli(&[
        "ca",
        "crl",
        "--key",
        ROOT,
        "--issuer-cert",
        root.to_str().unwrap(),
        "--crl-number",
        "7",
        "--out",
        other_crl.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let bad = work.path().join("crl-swapped");
    copy_dir(&crl_dir, &bad);
    std::fs::copy(&other_crl, bad.join("crl.pem")).unwrap();
    resign(&bad);
    fails(
        &agent,
        &bad,
        &[],
        "crl.pem: its TBSCertList is not tbs.der",
        "another CRL",
    );

    // A witness key that does not exist is refused before anything is signed.
    let out = agent.cli(&[
        "ca",
        "root",
        "--key",
        ROOT,
        "--cn",
        "ceremony",
        "--org",
        "example.org",
        "--out",
        work.path().join("root5.pem").to_str().unwrap(),
        "--transcript",
        work.path().join("t5").to_str().unwrap(),
        "--witness-key",
        "hsm/no-such-witness",
    ]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("--witness-key hsm/no-such-witness"),
        "{}",
        output_text(&out)
    );
    assert!(!work.path().join("root5.pem").exists());
    assert!(!work.path().join("t5").exists());

    // A symbolic link as DIR is refused before anything is signed.
    let link = work.path().join("link");
    std::os::unix::fs::symlink(work.path().join("elsewhere"), &link).unwrap();
    let out = ca_root(&agent, &work.path().join("root4.pem"), &link);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("symbolic link"),
        "{}",
        output_text(&out)
    );
    assert!(!work.path().join("root4.pem").exists());

    // An existing non-empty DIR is refused before anything is signed.
    let out = ca_root(&agent, &work.path().join("root3.pem"), &good);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("is not empty"),
        "{}",
        output_text(&out)
    );
    assert!(!work.path().join("root3.pem").exists());
}

/// An approver's key pair made by ssh-keygen: (private key path, public key line).
fn approver(dir: &Path, name: &str, kind: &[&str]) -> (std::path::PathBuf, String) {
    pkcs11_tests::require("ssh-keygen");
    let private = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name, "-f"])
        .arg(&private)
        .args(kind)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", output_text(&out));
    let line = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    (private, line.trim().to_string())
}

/// `ca intermediate --transcript` with a root key that needs 2 of 2 approvals (real
/// `ssh-keygen -Y sign`, Ed25519 and ECDSA): the transcript holds the request's text
/// and both signatures, verifies (each SSH signature checked offline), and fails when
/// an approval is removed or swapped for another approver's signature.
#[test]
fn an_intermediate_with_a_quorum_has_its_approvals_in_the_transcript() {
    let work = tempfile::tempdir().unwrap();
    let (alice_key, alice) = approver(work.path(), "alice", &["-t", "ed25519"]);
    let (bob_key, bob) = approver(work.path(), "bob", &["-t", "ecdsa", "-b", "256"]);
    let (mallory_key, _) = approver(work.path(), "mallory", &["-t", "ed25519"]);
    let hsm = SoftHsm::new();
    hsm.init_token("ca", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let config = format!(
        "{}\n[[key]]\nname = \"{ROOT}\"\npurposes = [\"x509-tbs\"]\nx509_issue = [\"ca\"]\napprovals = {{ quorum = 2, approvers = [\"{alice}\", \"{bob}\"], timeout_secs = 600 }}\n\n[[key]]\nname = \"{INTERMEDIATE}\"\npurposes = [\"x509-tbs\"]\n\n[[key]]\nname = \"{WITNESS}\"\npurposes = [\"digest\"]\n",
        pkcs11_device("hsm", "ca", &pin)
    );
    let agent = Agent::builder().softhsm(&hsm).config(&config).start();
    let mut client = agent.client();
    client.generate_key(ROOT, KeyAlg::P256).unwrap();
    client.generate_key(INTERMEDIATE, KeyAlg::P256).unwrap();
    client.generate_key(WITNESS, KeyAlg::P256).unwrap();

    // The root, approved by both.
    let root = work.path().join("root.pem");
    let root_args = [
        "ca",
        "root",
        "--key",
        ROOT,
        "--cn",
        "quorum-root",
        "--org",
        "example.org",
        "--out",
        root.to_str().unwrap(),
    ];
    approve_all(
        &agent,
        work.path(),
        &root_args,
        &[(&alice_key, "a1"), (&bob_key, "b1")],
    );

    // The intermediate, with its transcript.
    let chain = work.path().join("chain.pem");
    let good = work.path().join("transcript");
    let args = [
        "ca",
        "intermediate",
        "--key",
        INTERMEDIATE,
        "--root-key",
        ROOT,
        "--root-cert",
        root.to_str().unwrap(),
        "--cn",
        "quorum-intermediate",
        "--org",
        "example.org",
        "--out",
        chain.to_str().unwrap(),
        "--transcript",
        good.to_str().unwrap(),
        "--witness-key",
        WITNESS,
    ];
    approve_all(
        &agent,
        work.path(),
        &args,
        &[(&bob_key, "b2"), (&alice_key, "a2")],
    );
    let ok = verify(&agent, &good, &[]);
    let text = output_text(&ok);
    assert!(ok.status.success(), "verify: {text}");
    assert!(text.contains("approvals    2"), "{text}");
    let request = std::fs::read_to_string(good.join("approvals/text.txt")).unwrap();
    assert!(request.contains("quorum-intermediate"), "{request}");
    assert!(good.join("approvals/1.sig").exists() && good.join("approvals/2.sig").exists());
    let audit = std::fs::read_to_string(good.join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"event\":\"approval-requested\""),
        "{audit}"
    );
    assert_eq!(
        audit.matches("\"event\":\"approved\"").count(),
        2,
        "{audit}"
    );

    // The offline SSHSIG check itself: each approval verifies over the text and names
    // its signer's fingerprint as ssh-keygen prints it; over another text it fails.
    for (n, key) in [(1, &bob_key), (2, &alice_key)] {
        let sig = std::fs::read_to_string(good.join(format!("approvals/{n}.sig"))).unwrap();
        let fp = waxseal::transcript::sshsig::verify(&sig, request.as_bytes()).unwrap();
        let listed = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(key.with_extension("pub"))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&listed.stdout).contains(&fp),
            "{fp}"
        );
        let other = request.replace("quorum-intermediate", "quorum-intermediatf");
        let err = waxseal::transcript::sshsig::verify(&sig, other.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("does NOT verify"), "{err}");
    }

    // An approval removed, even with the manifest re-signed: named.
    let bad = work.path().join("no-approval");
    copy_dir(&good, &bad);
    std::fs::remove_file(bad.join("approvals/2.sig")).unwrap();
    fails(
        &agent,
        &bad,
        &[],
        "approvals/2.sig: listed in the manifest but missing",
        "an approval removed",
    );
    std::fs::copy(bad.join("approvals/1.sig"), bad.join("approvals/2.sig")).unwrap();
    resign(&bad);
    fails(
        &agent,
        &bad,
        &[],
        "approvals/2.sig: not the signature of the audit record",
        "an approval duplicated",
    );

    // A stranger's signature over the same text, in both the file and the audit
    // record: the chain breaks at the record; with the record left alone, the file
    // no longer matches it.
    let bad = work.path().join("stranger");
    copy_dir(&good, &bad);
    let forged = ssh_sign(work.path(), &mallory_key, &request, "m");
    std::fs::write(bad.join("approvals/1.sig"), forged.trim()).unwrap();
    resign(&bad);
    fails(
        &agent,
        &bad,
        &[],
        "approvals/1.sig: not the signature of the audit record",
        "a stranger's approval",
    );
}

const INTERMEDIATE: &str = "hsm/ceremony-intermediate";

/// Signs `text` with `ssh-keygen -Y sign -n waxseal-approval`; the armored signature.
fn ssh_sign(dir: &Path, key: &Path, text: &str, tag: &str) -> String {
    let file = dir.join(format!("{tag}.txt"));
    std::fs::write(&file, text).unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", "waxseal-approval", "-f"])
        .arg(key)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen -Y sign: {}",
        output_text(&out)
    );
    std::fs::read_to_string(dir.join(format!("{tag}.txt.sig"))).unwrap()
}

/// Runs `waxseal ARGS` in the background, approves its request with each key as
/// it becomes pending (the id from `approvals list --json`, the text from `approvals
/// show`), and waits for it to succeed.
fn approve_all(agent: &Agent, dir: &Path, args: &[&str], approvers: &[(&Path, &str)]) {
    let mut child = Command::new(&pkcs11_tests::bins().cli)
        .arg("--socket")
        .arg(&agent.socket)
        .args(args)
        .env_remove("WAXSEAL_SOCK")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The requester's stderr, line by line: its `approval-pending` notice names the id.
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no approval-pending notice for {args:?}: {e}"));
        if let Some((_, rest)) = line
            .contains("approval-pending")
            .then(|| line.split_once("; request "))
            .flatten()
        {
            break rest.split('.').next().unwrap().to_string();
        }
    };
    let show = agent.cli(&["approvals", "show", &id]);
    assert!(show.status.success(), "{}", output_text(&show));
    let text = String::from_utf8(show.stdout).unwrap();
    for (key, tag) in approvers {
        let sig = ssh_sign(dir, key, &text, tag);
        let file = dir.join(format!("{tag}.sig"));
        std::fs::write(&file, sig).unwrap();
        let out = agent.cli(&["approve", &id, "--signature", file.to_str().unwrap()]);
        assert!(out.status.success(), "approve: {}", output_text(&out));
    }
    let out = child.wait_with_output().unwrap();
    let said = reader.join().unwrap();
    assert!(
        out.status.success(),
        "waxseal {args:?}: {}{said}",
        output_text(&out)
    );
}
