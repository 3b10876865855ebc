//! The attacks of the hardening issue on the audit log and what it counts, each run
//! against a real agent on a SoftHSM2 token, as a same-uid attacker ran it:
//! - restarting the agent (or reloading its policy) to get a fresh `max_per_hour`;
//! - planting `STATE_DIR/audit/audit.jsonl` (or `audit/`, or the state directory) as a
//!   symlink, or a hard link, to a victim file, or a file that is no audit chain;
//! - filling the disk so that a record is written in part;
//! - making `audit_tail` answer with a frame over the 1 MiB limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pkcs11_tests::{audit_records, bins, pkcs11_device, write_frame, Agent, SoftHsm};
use serde_json::Value;
use sha2::{Digest, Sha256};
use waxseal_agent::client::ClientError;
use waxseal_agent::proto::{ErrorCode, HashAlg, KeyAlg, MAX_FRAME};

fn token() -> (SoftHsm, String) {
    let hsm = SoftHsm::new();
    hsm.init_token("audit", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let dev = pkcs11_device("hsm", "audit", &pin);
    (hsm, dev)
}

fn sign(agent: &Agent, key: &str, data: &[u8]) -> Result<Vec<u8>, ClientError> {
    agent
        .client()
        .sign_digest(key, &Sha256::digest(data), Some(HashAlg::Sha256), None)
        .map(|s| s.signature.0)
}

fn refusal<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Agent(e)) => (e.code, e.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// `waxseal audit verify --dir STATE/audit`.
fn verify(agent: &Agent, state: &Path) -> Output {
    agent.cli(&[
        "audit",
        "verify",
        "--dir",
        state.join("audit").to_str().unwrap(),
    ])
}

/// Runs the agent on `state` and expects it to refuse to start; returns its stderr.
/// An agent that starts anyway is killed and the test fails.
fn refused_start(state: &Path) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, "").unwrap();
    let mut child = Command::new(&bins().agent)
        .arg("--config")
        .arg(&config)
        .arg("--runtime-dir")
        .arg(tmp.path().join("run"))
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent started on {}", state.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        !tmp.path().join("run/agent.sock").exists(),
        "a refused start leaves no socket behind"
    );
    err
}

/// A victim file the attacker wants the agent to write to.
fn victim(dir: &Path) -> PathBuf {
    let v = dir.join("victim");
    std::fs::write(&v, b"the victim's own content\n").unwrap();
    std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o644)).unwrap();
    v
}

fn assert_victim_untouched(v: &Path) {
    assert_eq!(
        std::fs::read(v).unwrap(),
        b"the victim's own content\n",
        "nothing appended to the victim"
    );
    assert_eq!(
        std::fs::metadata(v).unwrap().mode() & 0o7777,
        0o644,
        "the victim was not chmodded"
    );
}

#[test]
fn max_per_hour_holds_across_a_restart_and_a_crash() {
    let (hsm, dev) = token();
    let state = tempfile::tempdir().unwrap();
    let config =
        format!("{dev}\n[[key]]\nname = \"hsm/rate\"\npurposes = [\"digest\"]\nmax_per_hour = 3\n");
    let start = || {
        Agent::builder()
            .softhsm(&hsm)
            .config(&config)
            .state_dir(state.path())
            .start()
    };
    let mut agent = start();
    agent
        .client()
        .generate_key("hsm/rate", KeyAlg::P256)
        .unwrap();
    for i in 0..3 {
        sign(&agent, "hsm/rate", format!("{i}").as_bytes()).unwrap();
    }
    // The attack: restart the agent for a fresh allowance.
    assert!(agent.terminate().success());
    let mut agent = start();
    let before = audit_records(state.path()).len();
    let (code, msg) = refusal(sign(&agent, "hsm/rate", b"fourth"));
    assert_eq!(code, ErrorCode::RateLimited, "{msg}");
    assert!(msg.contains("max_per_hour"), "{msg}");
    let after = audit_records(state.path());
    assert!(
        after[before..].iter().any(|r| r["event"] == "refused"
            && r["key"] == "hsm/rate"
            && r["code"] == "rate-limited"),
        "the refusal is in the audit log: {:?}",
        &after[before..]
    );

    // And after SIGKILL (no clean shutdown) the count is the same.
    agent.kill9();
    let agent = start();
    let (code, _) = refusal(sign(&agent, "hsm/rate", b"fifth"));
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(verify(&agent, state.path()).status.success());
}

#[test]
fn max_per_hour_added_by_a_sighup_reload_counts_the_signatures_before_it() {
    let (hsm, dev) = token();
    let agent = Agent::builder().softhsm(&hsm).config(&dev).start();
    agent
        .client()
        .generate_key("hsm/later", KeyAlg::P256)
        .unwrap();
    for i in 0..3 {
        sign(&agent, "hsm/later", format!("{i}").as_bytes()).unwrap();
    }
    // The limit appears in the config; the agent reloads it.
    std::fs::write(
        agent.dir().join("config.toml"),
        format!(
            "{dev}\n[[key]]\nname = \"hsm/later\"\npurposes = [\"digest\"]\nmax_per_hour = 3\n"
        ),
    )
    .unwrap();
    agent.signal(rustix::process::Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("SIGHUP: config reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (code, msg) = refusal(sign(&agent, "hsm/later", b"fourth"));
    assert_eq!(code, ErrorCode::RateLimited, "{msg}");
    assert!(msg.contains("max_per_hour"), "{msg}");
}

#[test]
fn a_planted_symlink_for_the_log_or_its_directory_stops_the_agent_and_spares_the_victim() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = victim(tmp.path());

    // audit/audit.jsonl → the victim.
    let state = tmp.path().join("state1");
    std::fs::create_dir_all(state.join("audit")).unwrap();
    let log = state.join("audit/audit.jsonl");
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let err = refused_start(&state);
    assert!(
        err.contains(log.to_str().unwrap()) && err.contains("symbolic link"),
        "{err}"
    );
    assert_victim_untouched(&victim);

    // audit/ → the victim's directory.
    let victim_dir = tmp.path().join("victim-dir");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::set_permissions(&victim_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = tmp.path().join("state2");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::symlink(&victim_dir, state.join("audit")).unwrap();
    let err = refused_start(&state);
    assert!(
        err.contains(state.join("audit").to_str().unwrap()) && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&victim_dir).unwrap().count(),
        0,
        "no log in the victim's directory"
    );
    assert_eq!(
        std::fs::metadata(&victim_dir).unwrap().mode() & 0o7777,
        0o755
    );

    // The state directory itself → the victim's directory.
    let state = tmp.path().join("state3");
    std::os::unix::fs::symlink(&victim_dir, &state).unwrap();
    let err = refused_start(&state);
    assert!(
        err.contains(state.to_str().unwrap()) && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&victim_dir).unwrap().count(), 0);
    assert_eq!(
        std::fs::metadata(&victim_dir).unwrap().mode() & 0o7777,
        0o755
    );
}

#[test]
fn a_planted_hard_link_or_foreign_file_as_the_log_stops_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = victim(tmp.path());
    let state = tmp.path().join("state");
    std::fs::create_dir_all(state.join("audit")).unwrap();
    let log = state.join("audit/audit.jsonl");
    std::fs::hard_link(&victim, &log).unwrap();
    let err = refused_start(&state);
    assert!(
        err.contains(log.to_str().unwrap()) && err.contains("hard links"),
        "{err}"
    );
    assert_victim_untouched(&victim);

    // A copy of the victim (one link, the agent's uid): not an audit chain.
    std::fs::remove_file(&log).unwrap();
    std::fs::copy(&victim, &log).unwrap();
    let err = refused_start(&state);
    assert!(
        err.contains(&format!("{}:1:", log.display())) && err.contains("not a JSON object"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&log).unwrap(),
        b"the victim's own content\n",
        "nothing appended to a file that is no audit chain"
    );
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        assert_eq!(
            rustix::process::geteuid().as_raw(),
            0,
            "this test mounts a small tmpfs as the state directory and fills it: it needs root (the test machines and CI run as root)"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -t tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_refuses_signatures_and_leaves_no_torn_record() {
    let fs = Tmpfs::mount("256k");
    let (hsm, dev) = token();
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&dev)
        .state_dir(fs.path())
        .start();
    agent.client().generate_key("hsm/k", KeyAlg::P256).unwrap();
    sign(&agent, "hsm/k", b"before").unwrap();

    // The attack: fill the file system.
    let filler = fs.path().join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }
    // Signatures fill what is left of the log's last page, until a record does not fit.
    let mut refused = None;
    for i in 0..200 {
        match sign(&agent, "hsm/k", format!("full {i}").as_bytes()) {
            Ok(_) => {}
            Err(e) => {
                refused = Some(refusal::<()>(Err(e)));
                break;
            }
        }
    }
    let (code, msg) = refused.expect("a signature is refused on the full disk");
    assert_eq!(code, ErrorCode::DeviceError, "{msg}");
    assert!(
        msg.contains("No space left on device") && msg.contains("nothing is signed"),
        "{msg}"
    );
    let log = fs.path().join("audit/audit.jsonl");
    assert_eq!(
        std::fs::read(&log).unwrap().last(),
        Some(&b'\n'),
        "the log ends with a whole record"
    );
    // Still full: still refused.
    refusal(sign(&agent, "hsm/k", b"still full"));

    // Space comes back: signing works and the chain is whole.
    std::fs::remove_file(&filler).unwrap();
    sign(&agent, "hsm/k", b"after").unwrap();
    let out = verify(&agent, fs.path());
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit log OK"));
    assert!(audit_records(fs.path())
        .iter()
        .any(|r| r["event"] == "intent" && r["digest"] == hex::encode(Sha256::digest(b"after"))));
    drop(agent);
}

/// Sends `audit_tail` for `n` records on a raw connection; returns the answer frame's
/// length and the answer.
fn raw_tail(agent: &Agent, n: u32) -> (usize, Value) {
    let mut s = agent.raw();
    write_frame(
        &mut s,
        format!(r#"{{"id":1,"op":"audit_tail","n":{n}}}"#).as_bytes(),
    );
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix).unwrap();
    let len = u32::from_be_bytes(prefix) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (len, serde_json::from_slice(&body).unwrap())
}

#[test]
fn audit_tail_answers_within_the_frame_limit_whatever_the_log_holds() {
    let (hsm, dev) = token();
    let state = tempfile::tempdir().unwrap();
    let start = || {
        Agent::builder()
            .softhsm(&hsm)
            .config(&dev)
            .state_dir(state.path())
            .start()
    };
    let mut agent = start();
    agent.client().generate_key("hsm/k", KeyAlg::P256).unwrap();
    let mut client = agent.client();

    // A blob signature with a 900 kB artifact name: refused by the protocol's bound on
    // names, or recorded; either way `audit tail` must work.
    let huge = "n".repeat(900_000);
    let _ = client.sign_blob("hsm/k", &huge, &Sha256::digest(b"x"), HashAlg::Sha256);
    // A thousand refusals (a device that does not exist) naming artifacts of 1000
    // bytes, within the bound: 1.2 MB of records, more than one frame holds.
    let mut client = agent.client();
    let name = "a".repeat(1000);
    for _ in 0..1000 {
        let (code, _) = refusal(client.sign_blob(
            "nodev/absent",
            &name,
            &Sha256::digest(b"x"),
            HashAlg::Sha256,
        ));
        assert_eq!(code, ErrorCode::UnknownKey);
    }
    let on_disk: usize = audit_records(state.path())
        .iter()
        .rev()
        .take(1000)
        .map(|r| r.to_string().len())
        .sum();
    assert!(
        on_disk > MAX_FRAME,
        "the last 1000 records hold {on_disk} bytes"
    );

    let (len, answer) = raw_tail(&agent, 1000);
    assert!(
        len < MAX_FRAME,
        "audit_tail answered with a frame of {len} bytes"
    );
    let records_sent = answer["ok"]["records"].as_array().unwrap().len();
    let omitted = answer["ok"]["omitted"].as_u64().unwrap();
    assert!(
        records_sent > 0 && omitted > 0,
        "{records_sent} sent, {omitted} omitted"
    );
    assert_eq!(records_sent as u64 + omitted, 1000);
    // The newest are the ones kept.
    let last_seq = audit_records(state.path()).last().unwrap()["seq"].clone();
    assert_eq!(
        answer["ok"]["records"].as_array().unwrap().last().unwrap()["seq"],
        last_seq
    );
    let out = agent.cli(&["audit", "tail", "-n", "1000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("older records were left out"),
        "the CLI says so: {err}"
    );

    // A 2 MB record planted in the log (chained, so `audit verify` still passes) is
    // read back at the next start within the same bound.
    assert!(agent.terminate().success());
    let log = state.path().join("audit/audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap();
    let seq = serde_json::from_str::<Value>(last).unwrap()["seq"]
        .as_u64()
        .unwrap()
        + 1;
    let planted = serde_json::json!({
        "seq": seq,
        "time": "2025-11-30T12:00:00.000000Z",
        "event": "refused",
        "key": "hsm/k",
        "purpose": "blob",
        "name": "p".repeat(2_000_000),
        "prev": hex::encode(Sha256::digest(last.as_bytes())),
    });
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(f, "{planted}").unwrap();
    drop(f);
    let agent = start();
    assert!(verify(&agent, state.path()).status.success());
    let (len, answer) = raw_tail(&agent, 1000);
    assert!(
        len < MAX_FRAME,
        "audit_tail answered with a frame of {len} bytes"
    );
    let sent = answer["ok"]["records"].as_array().unwrap();
    let stub = sent
        .iter()
        .find(|r| r["seq"] == seq)
        .unwrap_or_else(|| panic!("record {seq} is not in the tail: {answer}"));
    assert_eq!(stub["truncated"], true, "{stub}");
    assert!(stub.to_string().len() < 100, "{stub}");
    let out = agent.cli(&["--json", "audit", "tail", "-n", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
