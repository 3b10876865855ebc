//! Quorum approval (docs/protocol.md, "Approvals"): a SoftHSM2 key whose `[[key]]
//! approvals` names an Ed25519 and an ECDSA approver signs only once both signed the
//! request's text with the real `ssh-keygen -Y sign -n waxseal-approval`; strangers,
//! other namespaces, duplicates, replays from another request and late approvals are
//! refused naming why; every step is an audit record and the chain verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::pkcs8::DecodePublicKey;
use pkcs11_tests::{
    audit_records, bins, output_text, pkcs11_device, read_frame, require, run_ok, tpm_device,
    write_frame, Agent, SoftHsm, Swtpm,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use waxseal_agent::proto::KeyAlg;

const KEY: &str = "hsm/root";

/// An approver's key pair in files, made by ssh-keygen.
struct Approver {
    private: PathBuf,
    line: String,
}

fn approver(dir: &Path, name: &str, kind: &[&str]) -> Approver {
    require("ssh-keygen");
    let private = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-C", name, "-f"])
        .arg(&private)
        .args(kind)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", output_text(&out));
    let line = std::fs::read_to_string(private.with_extension("pub"))
        .expect("the public key line")
        .trim()
        .to_string();
    Approver { private, line }
}

/// Signs `text` with `ssh-keygen -Y sign` in `namespace`; the armored signature's path.
fn ssh_sign(dir: &Path, who: &Approver, namespace: &str, text: &str, tag: &str) -> PathBuf {
    let file = dir.join(format!("{tag}.txt"));
    std::fs::write(&file, text).expect("write the text to sign");
    let out = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", namespace, "-f"])
        .arg(&who.private)
        .arg(&file)
        .output()
        .expect("run ssh-keygen -Y sign");
    assert!(
        out.status.success(),
        "ssh-keygen -Y sign: {}",
        output_text(&out)
    );
    let sig = dir.join(format!("{tag}.txt.sig"));
    assert!(sig.exists(), "ssh-keygen wrote no {}", sig.display());
    sig
}

/// A SoftHSM2 P-256 key behind an agent, with approvals by `approvers`.
struct Setup {
    _hsm: SoftHsm,
    agent: Agent,
    dir: TempDir,
    alice: Approver,
    bob: Approver,
    mallory: Approver,
}

fn setup(quorum: u32, timeout_secs: u64) -> Setup {
    setup_with(quorum, timeout_secs, None)
}

/// [`setup`]; with `second`, that key line is the second approver instead of bob's.
fn setup_with(quorum: u32, timeout_secs: u64, second: Option<&str>) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = approver(dir.path(), "alice", &["-t", "ed25519"]);
    let bob = approver(dir.path(), "bob", &["-t", "ecdsa", "-b", "256"]);
    let mallory = approver(dir.path(), "mallory", &["-t", "ed25519"]);
    let second = second.unwrap_or(&bob.line).to_string();
    let hsm = SoftHsm::new();
    hsm.init_token("sig", "so-pin-1", "user-pin-1");
    let pin = hsm.pin_file("pin", "user-pin-1");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", "sig", &pin))
        .config(&format!(
            "[[key]]\nname = \"{KEY}\"\npurposes = [\"digest\", \"x509-tbs\", \"ssh\"]\napprovals = {{ quorum = {quorum}, approvers = [\"{}\", \"{}\"], timeout_secs = {timeout_secs} }}\n",
            alice.line, second
        ))
        .start();
    let out = agent.cli(&["keys", "generate", KEY, "--alg", "p256"]);
    assert!(out.status.success(), "{}", output_text(&out));
    Setup {
        _hsm: hsm,
        agent,
        dir,
        alice,
        bob,
        mallory,
    }
}

/// `waxseal sign --digest` running in the background; its stderr lines arrive on a
/// channel as they are written.
struct Requester {
    child: Option<Child>,
    lines: Receiver<String>,
    seen: Vec<String>,
}

fn request(agent: &Agent, digest: &[u8]) -> Requester {
    request_with(
        agent,
        &["sign", "--key", KEY, "--digest", &hex::encode(digest)],
    )
}

/// Any `waxseal` command in the background, as [`request`].
fn request_with(agent: &Agent, args: &[&str]) -> Requester {
    let mut child = Command::new(&bins().cli)
        .arg("--socket")
        .arg(&agent.socket)
        .args(args)
        .env_remove("WAXSEAL_SOCK")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run waxseal sign");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Requester {
        child: Some(child),
        lines,
        seen: Vec::new(),
    }
}

impl Requester {
    /// Waits (20 s at most) for a stderr line holding `wanted`.
    fn line(&mut self, wanted: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(wanted) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with `{wanted}` from waxseal sign within 20 s; it wrote:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The approval id from the `approval-pending` notice.
    fn pending_id(&mut self) -> String {
        let line = self.line("approval-pending");
        let rest = line
            .split_once("; request ")
            .unwrap_or_else(|| panic!("no request id in: {line}"))
            .1;
        rest.split('.').next().expect("id").to_string()
    }

    fn running(&mut self) -> bool {
        let child = self.child.as_mut().expect("running");
        child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the exit; stdout, and every stderr line.
    fn finish(mut self) -> (Output, String) {
        let child = self.child.take().expect("running");
        let out = child.wait_with_output().expect("wait for waxseal sign");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (out, self.seen.join("\n"))
    }
}

impl Drop for Requester {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `waxseal approvals show ID`: the exact text to sign.
fn show(agent: &Agent, id: &str) -> String {
    let out = agent.cli(&["approvals", "show", id]);
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8(out.stdout).expect("UTF-8 text")
}

fn approve(agent: &Agent, id: &str, sig: &Path) -> Output {
    agent.cli(&["approve", id, "--signature", sig.to_str().expect("path")])
}

fn refused(out: &Output, why: &str) {
    let text = output_text(out);
    assert!(!out.status.success(), "accepted, expected `{why}`: {text}");
    assert!(text.contains("approval-refused"), "{text}");
    assert!(text.contains(why), "expected `{why}` in: {text}");
}

fn events(agent: &Agent, event: &str) -> Vec<serde_json::Value> {
    audit_records(&agent.state_dir)
        .into_iter()
        .filter(|r| r["event"] == event)
        .collect()
}

fn audit_verifies(agent: &Agent) {
    let dir = agent.state_dir.join("audit");
    let out = agent.cli(&["audit", "verify", "--dir", dir.to_str().expect("path")]);
    assert!(out.status.success(), "audit verify: {}", output_text(&out));
}

/// 1 of 2 does not sign; a duplicate, a stranger and another namespace are refused,
/// each naming why; the second approver's signature completes the quorum and the
/// signature verifies over the exact digest the approvers saw.
#[test]
fn two_of_two_sign_one_does_not_and_bad_approvals_are_refused() {
    let s = setup(2, 600);
    let digest = Sha256::digest(b"the release to sign");
    let mut req = request(&s.agent, &digest);
    let id = req.pending_id();
    let text = show(&s.agent, &id);
    for wanted in [
        format!("approval: {id}\n"),
        format!("key: {KEY}\n"),
        format!("sha256 digest {}", hex::encode(digest)),
        "caller: uid ".to_string(),
        "nonce: ".to_string(),
        "quorum: 2 of 2\n".to_string(),
    ] {
        assert!(
            text.contains(&wanted),
            "`{wanted}` not in the text:\n{text}"
        );
    }
    let dir = s.dir.path();

    let alice = ssh_sign(dir, &s.alice, "waxseal-approval", &text, "alice");
    let out = approve(&s.agent, &id, &alice);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("(1 of 2)"),
        "{}",
        output_text(&out)
    );
    req.line("approved by alice (1 of 2)");
    // One of two: nothing is signed, the requester still waits.
    assert!(req.running(), "waxseal sign ended with 1 of 2 approvals");
    assert!(
        events(&s.agent, "intent").is_empty(),
        "an intent record with 1 of 2 approvals"
    );
    let list = s.agent.cli(&["--json", "approvals", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).expect("JSON");
    assert_eq!(list["pending"][0]["approval"], id.as_str());
    assert_eq!(
        list["pending"][0]["approved_by"],
        serde_json::json!(["alice"])
    );

    refused(&approve(&s.agent, &id, &alice), "duplicate: alice");
    let stranger = ssh_sign(dir, &s.mallory, "waxseal-approval", &text, "mallory");
    refused(&approve(&s.agent, &id, &stranger), "stranger");
    let file_ns = ssh_sign(dir, &s.bob, "file", &text, "bob-file");
    refused(&approve(&s.agent, &id, &file_ns), "wrong namespace");
    let changed = text.replace("quorum: 2 of 2", "quorum: 1 of 2");
    let edited = ssh_sign(dir, &s.bob, "waxseal-approval", &changed, "bob-edited");
    refused(&approve(&s.agent, &id, &edited), "is not over request");
    assert!(req.running(), "waxseal sign ended after refused approvals");

    let bob = ssh_sign(dir, &s.bob, "waxseal-approval", &text, "bob");
    let out = approve(&s.agent, &id, &bob);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("quorum reached"),
        "{}",
        output_text(&out)
    );
    let (out, stderr) = req.finish();
    assert!(out.status.success(), "waxseal sign: {stderr}");
    assert!(
        stderr.contains("approved by alice, bob (2 of 2)"),
        "{stderr}"
    );
    let der = B64
        .decode(String::from_utf8_lossy(&out.stdout).trim())
        .expect("base64 signature");
    let pem = s.agent.client().public_key(KEY).expect("public key").pem;
    let vk = p256::ecdsa::VerifyingKey::from_public_key_pem(&pem).expect("P-256 key");
    let sig = p256::ecdsa::Signature::from_der(&der).expect("DER signature");
    vk.verify_prehash(&digest, &sig)
        .expect("the signature verifies over the approved digest");

    // A late approval for a request that was signed is refused too.
    refused(&approve(&s.agent, &id, &bob), "was signed");

    // The audit log: the request, both approvals, the five refusals, the signature.
    let requested = events(&s.agent, "approval-requested");
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0]["approval"], id.as_str());
    assert_eq!(
        requested[0]["text_sha256"],
        hex::encode(Sha256::digest(text.as_bytes()))
    );
    assert_eq!(requested[0]["text"], text.as_str());
    let approved = events(&s.agent, "approved");
    let names: Vec<_> = approved.iter().map(|r| r["approver"].clone()).collect();
    assert_eq!(names, vec!["alice", "bob"]);
    // Each recorded approval checks again, offline, with ssh-keygen -Y verify against
    // the recorded text and the approver's key.
    let allowed = dir.join("allowed_signers");
    std::fs::write(
        &allowed,
        format!("alice {}\nbob {}\n", s.alice.line, s.bob.line),
    )
    .unwrap();
    for r in &approved {
        let who = r["approver"].as_str().unwrap();
        let sig = dir.join(format!("recorded-{who}.sig"));
        std::fs::write(&sig, r["signature"].as_str().unwrap()).unwrap();
        let mut verify = Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", "waxseal-approval", "-I", who, "-f"])
            .arg(&allowed)
            .arg("-s")
            .arg(&sig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            let mut stdin = verify.stdin.take().unwrap();
            stdin
                .write_all(requested[0]["text"].as_str().unwrap().as_bytes())
                .unwrap();
        }
        let out = verify.wait_with_output().unwrap();
        assert!(out.status.success(), "{who}: {}", output_text(&out));
    }
    let reasons: Vec<String> = events(&s.agent, "approval-refused")
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(reasons.len(), 5, "{reasons:#?}");
    for (reason, why) in reasons.iter().zip([
        "duplicate",
        "stranger",
        "wrong namespace",
        "is not over request",
        "was signed",
    ]) {
        assert!(reason.contains(why), "`{why}` not in {reason}");
    }
    let signed = events(&s.agent, "signed");
    assert_eq!(signed.len(), 1);
    assert_eq!(signed[0]["approval"], id.as_str());
    assert_eq!(
        signed[0]["approved_by"],
        serde_json::json!(["alice", "bob"])
    );
    audit_verifies(&s.agent);
}

/// A signature over one waiting request's text, handed in for another, is refused as
/// a replay naming the request it approves.
#[test]
fn an_approval_of_another_request_is_refused_as_a_replay() {
    let s = setup(2, 600);
    let mut first = request(&s.agent, &Sha256::digest(b"first"));
    let a = first.pending_id();
    let mut second = request(&s.agent, &Sha256::digest(b"second"));
    let b = second.pending_id();
    assert_ne!(a, b);
    // On the wire: the first frame answering a sign is the `approval-pending`
    // notice, which carries the request as `approval`.
    let mut raw = s.agent.raw();
    let digest = B64.encode(Sha256::digest(b"third"));
    write_frame(
        &mut raw,
        format!(r#"{{"id":9,"op":"sign","key":"{KEY}","purpose":"digest","digest":"{digest}"}}"#)
            .as_bytes(),
    );
    let frame = read_frame(&mut raw).expect("a frame");
    assert_eq!(frame["id"], 9);
    assert!(
        frame.get("ok").is_none() && frame.get("error").is_none(),
        "{frame}"
    );
    assert!(
        frame["notice"]
            .as_str()
            .unwrap()
            .starts_with("approval-pending: "),
        "{frame}"
    );
    let c = &frame["approval"];
    assert_eq!(
        (c["key"].as_str(), c["purpose"].as_str()),
        (Some(KEY), Some("digest"))
    );
    assert_eq!(
        (c["quorum"].as_u64(), c["approvers"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(c["approved_by"], serde_json::json!([]));
    let third = c["approval"].as_str().unwrap();
    assert!(c["text"]
        .as_str()
        .unwrap()
        .contains(&format!("approval: {third}\n")));
    assert!(![a.as_str(), b.as_str()].contains(&third));
    let text_a = show(&s.agent, &a);
    let sig = ssh_sign(
        s.dir.path(),
        &s.alice,
        "waxseal-approval",
        &text_a,
        "alice-a",
    );
    refused(
        &approve(&s.agent, &b, &sig),
        "replay: the signature by alice",
    );
    let out = approve(&s.agent, &b, &sig);
    assert!(
        output_text(&out).contains(&format!("approves request {a}, not {b}")),
        "{}",
        output_text(&out)
    );
    // It still counts where it belongs.
    let out = approve(&s.agent, &a, &sig);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(first.running() && second.running());
    let replays = events(&s.agent, "approval-refused");
    assert_eq!(replays.len(), 2);
    assert!(replays
        .iter()
        .all(|r| r["approval"] == b.as_str() && r["code"] == "approval-refused"));
    assert!(events(&s.agent, "intent").is_empty());
    drop(first);
    drop(second);
    audit_verifies(&s.agent);
}

/// After `timeout_secs` nothing signs: the requester is told `approval-expired`, the
/// request leaves `approvals list`, and a late approval is refused as too late.
#[test]
fn after_the_timeout_nothing_signs_and_a_late_approval_is_refused() {
    let s = setup(2, 2);
    let mut req = request(&s.agent, &Sha256::digest(b"too slow"));
    let id = req.pending_id();
    let text = show(&s.agent, &id);
    let alice = ssh_sign(s.dir.path(), &s.alice, "waxseal-approval", &text, "alice");
    let out = approve(&s.agent, &id, &alice);
    assert!(out.status.success(), "{}", output_text(&out));
    let bob = ssh_sign(s.dir.path(), &s.bob, "waxseal-approval", &text, "bob");
    let (out, stderr) = req.finish();
    assert!(!out.status.success(), "signed after the timeout: {stderr}");
    assert!(stderr.contains("approval-expired"), "{stderr}");
    assert!(stderr.contains("with 1 of 2 approvals (alice)"), "{stderr}");
    // The requester's refusal is the event: the agent closed the request before
    // answering, so it has left the list.
    let out = s.agent.cli(&["--json", "approvals", "list"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list["pending"], serde_json::json!([]), "{list}");
    refused(&approve(&s.agent, &id, &bob), "too late");
    assert!(
        events(&s.agent, "intent").is_empty(),
        "an intent after the timeout"
    );
    let refusals = events(&s.agent, "refused");
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0]["code"], "approval-expired");
    assert_eq!(events(&s.agent, "approval-refused").len(), 1);
    audit_verifies(&s.agent);
}

/// An approver whose key is itself hardware: a TPM key served by another agent's
/// `ssh.sock`, used by `ssh-keygen -Y sign` through SSH_AUTH_SOCK, approves with
/// alice; the signature is made.
#[test]
fn an_approver_key_in_a_tpm_behind_ssh_sock_approves() {
    let tpm = Swtpm::start();
    let keys = tempfile::Builder::new()
        .prefix("tpm-keys-")
        .tempdir()
        .expect("tempdir");
    let carols = Agent::builder()
        .config(&tpm_device("tpm", &tpm, keys.path(), None))
        .start();
    carols
        .client()
        .generate_key("tpm/approver", KeyAlg::P256)
        .expect("a TPM key");
    let ssh_add = run_ok(
        Command::new(require("ssh-add"))
            .env("SSH_AUTH_SOCK", &carols.ssh_socket)
            .env_remove("SSH_AGENT_PID")
            .arg("-L"),
    );
    let served = ssh_add
        .lines()
        .find(|l| l.ends_with(" tpm/approver"))
        .unwrap_or_else(|| panic!("ssh.sock does not offer tpm/approver: {ssh_add}"));
    assert!(served.starts_with("ecdsa-sha2-nistp256 "), "{served}");
    let carol_line = served.replace(" tpm/approver", " carol-tpm");
    let s = setup_with(2, 600, Some(&carol_line));
    let digest = Sha256::digest(b"approved by hardware");
    let mut req = request(&s.agent, &digest);
    let id = req.pending_id();
    let text = show(&s.agent, &id);
    let dir = s.dir.path();
    let alice = ssh_sign(dir, &s.alice, "waxseal-approval", &text, "alice");
    let out = approve(&s.agent, &id, &alice);
    assert!(out.status.success(), "{}", output_text(&out));
    // Carol signs with the TPM key: -f names the public key, the agent holds the key.
    let carol_pub = dir.join("carol.pub");
    std::fs::write(&carol_pub, format!("{served}\n")).expect("write carol.pub");
    let file = dir.join("carol.txt");
    std::fs::write(&file, &text).expect("write the text");
    run_ok(
        Command::new("ssh-keygen")
            .env("SSH_AUTH_SOCK", &carols.ssh_socket)
            .env_remove("SSH_AGENT_PID")
            .args(["-Y", "sign", "-n", "waxseal-approval", "-f"])
            .arg(&carol_pub)
            .arg(&file),
    );
    let out = approve(&s.agent, &id, &dir.join("carol.txt.sig"));
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("carol-tpm"),
        "{}",
        output_text(&out)
    );
    let (out, stderr) = req.finish();
    assert!(out.status.success(), "waxseal sign: {stderr}");
    assert!(
        stderr.contains("approved by alice, carol-tpm (2 of 2)"),
        "{stderr}"
    );
    // The TPM agent's own audit log has the ssh signature the approval is.
    let ssh_signed: Vec<_> = audit_records(&carols.state_dir)
        .into_iter()
        .filter(|r| r["event"] == "signed" && r["purpose"] == "ssh")
        .collect();
    assert_eq!(ssh_signed.len(), 1);
    let approved = events(&s.agent, "approved");
    assert_eq!(approved[1]["approver"], "carol-tpm");
    audit_verifies(&s.agent);
}

/// `waxseal ca root` with a root key that needs approvals: the approvers sign a text
/// that summarises the certificate, the CLI shows who approved, and the certificate is
/// written once both did.
#[test]
fn a_root_certificate_waits_for_its_quorum() {
    let s = setup(2, 600);
    let out = s.dir.path().join("root.pem");
    let mut req = request_with(
        &s.agent,
        &[
            "ca",
            "root",
            "--key",
            KEY,
            "--cn",
            "quorum-root",
            "--org",
            "example.org",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let id = req.pending_id();
    let text = show(&s.agent, &id);
    assert!(text.contains("purpose: x509-tbs\n"), "{text}");
    assert!(
        text.contains("what: certificate for O=example.org, CN=quorum-root"),
        "{text}"
    );
    assert!(
        !out.exists(),
        "the certificate was written before any approval"
    );
    let dir = s.dir.path();
    for (who, tag) in [(&s.bob, "bob"), (&s.alice, "alice")] {
        let sig = ssh_sign(dir, who, "waxseal-approval", &text, tag);
        let o = approve(&s.agent, &id, &sig);
        assert!(o.status.success(), "{}", output_text(&o));
    }
    let (o, stderr) = req.finish();
    assert!(o.status.success(), "waxseal ca root: {stderr}");
    assert!(stderr.contains("approved by bob (1 of 2)"), "{stderr}");
    assert!(
        stderr.contains("approved by bob, alice (2 of 2)"),
        "{stderr}"
    );
    let text = run_ok(
        Command::new(require("openssl"))
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(&out),
    );
    assert!(text.contains("quorum-root"), "{text}");
    let signed = events(&s.agent, "signed");
    assert_eq!(signed[0]["purpose"], "x509-tbs");
    assert_eq!(
        signed[0]["approved_by"],
        serde_json::json!(["bob", "alice"])
    );
    audit_verifies(&s.agent);
}

/// Polls `approvals list` (20 s at most) until `done` says the pending list is as
/// wanted; the list.
fn poll_list(
    agent: &Agent,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = agent.cli(&["--json", "approvals", "list"]);
        assert!(out.status.success(), "{}", output_text(&out));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let pending = list["pending"].as_array().cloned().unwrap_or_default();
        if done(&pending) {
            return pending;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 20 s: {pending:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A signature asked on `ssh.sock` (ssh-keygen -Y sign through SSH_AUTH_SOCK) waits for
/// the quorum too, and is made once both approved; a client that goes away while it
/// waits closes its request at once, and nothing is signed.
#[test]
fn an_ssh_sock_request_waits_for_the_quorum_and_one_whose_client_leaves_is_closed() {
    let s = setup(2, 600);
    let dir = s.dir.path();
    let ssh = |program: &str| {
        let mut c = Command::new(require(program));
        c.env("SSH_AUTH_SOCK", &s.agent.ssh_socket)
            .env_remove("SSH_AGENT_PID");
        c
    };
    let listed = run_ok(ssh("ssh-add").arg("-L"));
    let line = listed
        .lines()
        .find(|l| l.ends_with(&format!(" {KEY}")))
        .unwrap_or_else(|| panic!("ssh.sock does not offer {KEY}: {listed}"))
        .to_string();
    let public = dir.join("root.pub");
    std::fs::write(&public, format!("{line}\n")).unwrap();
    let sign = |name: &str| {
        let msg = dir.join(name);
        std::fs::write(&msg, format!("{name}: signed on ssh.sock after a quorum\n")).unwrap();
        ssh("ssh-keygen")
            .args(["-Y", "sign", "-n", "file", "-f"])
            .arg(&public)
            .arg(&msg)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    let first = sign("first");
    let pending = poll_list(&s.agent, "the ssh request listed", |p| p.len() == 1);
    let id = pending[0]["approval"].as_str().unwrap().to_string();
    assert_eq!(pending[0]["purpose"], "ssh");
    let text = show(&s.agent, &id);
    for (who, tag) in [(&s.alice, "alice"), (&s.bob, "bob")] {
        let sig = ssh_sign(dir, who, "waxseal-approval", &text, tag);
        let o = approve(&s.agent, &id, &sig);
        assert!(o.status.success(), "{}", output_text(&o));
    }
    let out = first.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen -Y sign: {}",
        output_text(&out)
    );
    let allowed = dir.join("allowed_root");
    std::fs::write(&allowed, format!("root {line}\n")).unwrap();
    let verify = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "file", "-I", "root", "-f"])
        .arg(&allowed)
        .arg("-s")
        .arg(dir.join("first.sig"))
        .stdin(std::fs::File::open(dir.join("first")).unwrap())
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", output_text(&verify));

    let mut second = sign("second");
    let pending = poll_list(&s.agent, "the second ssh request listed", |p| p.len() == 1);
    let id2 = pending[0]["approval"].as_str().unwrap().to_string();
    second.kill().unwrap();
    second.wait().unwrap();
    poll_list(&s.agent, "the request of a client that left closed", |p| {
        p.is_empty()
    });
    // Closed: an approval that comes now is refused before its signature is read.
    let alice = ssh_sign(dir, &s.alice, "waxseal-approval", &text, "alice-late");
    refused(&approve(&s.agent, &id2, &alice), "requester went away");
    let refusals = events(&s.agent, "refused");
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0]["code"], "approval-expired");
    assert!(refusals[0]["reason"]
        .as_str()
        .unwrap()
        .contains("went away"));
    assert_eq!(events(&s.agent, "signed").len(), 1);
    audit_verifies(&s.agent);
}

/// The policy is checked again once the quorum is reached: a SIGHUP reload that takes
/// `digest` from the key while a request waits makes it `policy-denied`, though both
/// approved (with the approvers of when it was asked).
#[test]
fn a_reload_that_revokes_the_purpose_while_a_request_waits_refuses_it() {
    let s = setup(2, 600);
    let mut req = request(&s.agent, &Sha256::digest(b"revoked meanwhile"));
    let id = req.pending_id();
    let text = show(&s.agent, &id);
    let config = s.agent.dir().join("config.toml");
    let base = std::fs::read_to_string(&config).unwrap();
    let narrowed = base.replace(
        r#"purposes = ["digest", "x509-tbs", "ssh"]"#,
        r#"purposes = ["x509-tbs"]"#,
    );
    assert_ne!(narrowed, base);
    std::fs::write(&config, narrowed).unwrap();
    s.agent.signal(rustix::process::Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.agent.log().contains("SIGHUP: config reloaded") {
        assert!(Instant::now() < deadline, "{}", s.agent.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    for (who, tag) in [(&s.alice, "alice"), (&s.bob, "bob")] {
        let sig = ssh_sign(s.dir.path(), who, "waxseal-approval", &text, tag);
        let o = approve(&s.agent, &id, &sig);
        assert!(o.status.success(), "{}", output_text(&o));
    }
    let (out, stderr) = req.finish();
    assert!(
        !out.status.success(),
        "signed after its purpose was revoked: {stderr}"
    );
    assert!(stderr.contains("policy-denied"), "{stderr}");
    assert!(events(&s.agent, "intent").is_empty());
    let refusals = events(&s.agent, "refused");
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0]["code"], "policy-denied");
    audit_verifies(&s.agent);
}
