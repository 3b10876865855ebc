//! The attacks of the hardening issue on who may sign, each written as the attacker ran
//! it (a short Python client of the native protocol, or another uid under `setpriv`),
//! asserting that the agent refuses and that the refusal is in its audit log:
//! - a child that inherited a connection whose parent then `exec`s an allowed program;
//! - a request written before the connecting process `exec`s an allowed program;
//! - a frame naming one member twice;
//! - in system mode, a uid admitted for one key asking for every other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pkcs11_tests::{bins, pkcs11_device, read_frame, require, write_frame, Agent, SoftHsm};
use sha2::{Digest, Sha256};
use waxseal_agent::proto::KeyAlg;

/// The program `allow_exe` names besides the CLI: the attacks exec it.
const ALLOWED: &str = "/usr/bin/sleep";

/// The attacker's side of the native protocol (Python's standard library only).
const PY_CLIENT: &str = r#"
import json, os, socket, struct, sys, time

def send(s, o):
    b = json.dumps(o).encode()
    s.sendall(struct.pack(">I", len(b)) + b)

def recv(s):
    def exact(n):
        d = b""
        while len(d) < n:
            c = s.recv(n - len(d))
            if not c:
                return None
            d += c
        return d
    h = exact(4)
    if h is None:
        return None
    return json.loads(exact(struct.unpack(">I", h)[0]))

def sign(key):
    return {"id": 1, "op": "sign", "key": key, "purpose": "digest", "hash": "sha256",
            "digest": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}
"#;

/// Child keeps the connection; the parent that connected execs the allowed program;
/// the child then sends the request.
const PY_CHILD_AFTER_EXEC: &str = r#"
sock, allowed, key = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
parent = os.getpid()
if os.fork() == 0:
    deadline = time.time() + 20
    while os.readlink("/proc/%d/exe" % parent) != allowed:
        assert time.time() < deadline, "the parent never ran the allowed program"
        time.sleep(0.002)
    send(s, {"id": 0, "op": "hello", "version": 1})
    send(s, sign(key))
    print("sent", flush=True)
    print(json.dumps(recv(s)), flush=True)
    os._exit(0)
os.execv(allowed, [allowed, "60"])
"#;

/// The connecting process writes its request, then execs the allowed program.
const PY_WRITE_THEN_EXEC: &str = r#"
sock, allowed, key = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
send(s, {"id": 0, "op": "hello", "version": 1})
send(s, sign(key))
os.set_inheritable(s.fileno(), True)
os.execv(allowed, [allowed, "60"])
"#;

fn python(script: &str, args: &[&str]) -> Child {
    require("python3");
    Command::new("python3")
        .arg("-c")
        .arg(format!("{PY_CLIENT}\n{script}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3")
}

/// Polls until `pid` runs `exe`.
fn wait_for_exe(pid: u32, exe: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .as_deref()
        != Some(Path::new(exe))
    {
        assert!(Instant::now() < deadline, "pid {pid} never ran {exe}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// An agent on a SoftHSM2 token with `hsm/guarded` (allow_exe: the CLI and
/// [`ALLOWED`]) and `hsm/open`, at most one connection at a time: the attacker's
/// connection waits in the backlog while a held connection keeps the slot.
fn agent_one_slot() -> (SoftHsm, Agent) {
    require(ALLOWED);
    let hsm = SoftHsm::new();
    hsm.init_token("t", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config("[agent]\nmax_connections = 1\n")
        .config(&pkcs11_device("hsm", "t", &pin))
        .config(&format!(
            "[[key]]\nname = \"hsm/guarded\"\npurposes = [\"digest\"]\nallow_exe = [\"{}\", \"{ALLOWED}\"]\n",
            bins().cli.display()
        ))
        .start();
    let mut c = agent.client();
    c.generate_key("hsm/guarded", KeyAlg::P256).unwrap();
    (hsm, agent)
}

/// The audit records (as JSON) of the agent, newest last.
fn audit(agent: &Agent) -> Vec<serde_json::Value> {
    agent.client().audit_tail(Some(50)).unwrap().records
}

fn signed_count(agent: &Agent, key: &str) -> usize {
    audit(agent)
        .iter()
        .filter(|r| r["event"] == "signed" && r["key"] == key)
        .count()
}

#[test]
fn a_child_using_a_connection_after_its_parent_execs_the_allowed_program_is_refused() {
    let (_hsm, agent) = agent_one_slot();
    // The allowed program itself signs (the CLI is in allow_exe).
    let out = agent.cli(&[
        "sign",
        "--digest",
        &hex::encode(Sha256::digest(b"legit")),
        "--key",
        "hsm/guarded",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(signed_count(&agent, "hsm/guarded"), 1);

    // Hold the only slot, so the attacker's connection is accepted after the exec.
    let holder = agent.client();
    let sock = agent.socket.to_str().unwrap();
    let mut attacker = python(PY_CHILD_AFTER_EXEC, &[sock, ALLOWED, "hsm/guarded"]);
    let mut lines = BufReader::new(attacker.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "sent");
    wait_for_exe(attacker.id(), ALLOWED);
    drop(holder);

    let answer: serde_json::Value =
        serde_json::from_str(&lines.next().expect("an answer").unwrap()).unwrap();
    let _ = attacker.kill();
    let _ = attacker.wait();
    assert_eq!(answer["error"]["code"], "policy-denied", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("not from the process that connected"),
        "{message}"
    );
    let records = audit(&agent);
    let refusal = records
        .iter()
        .rev()
        .find(|r| r["event"] == "refused" && r["purpose"] == "connection")
        .unwrap_or_else(|| panic!("no refusal in the audit log: {records:?}"));
    assert_eq!(
        refusal["connected"]["exe"], ALLOWED,
        "the connecting pid ran the allowed program: {refusal}"
    );
    assert_ne!(refusal["caller"]["pid"], refusal["connected"]["pid"]);
    assert_eq!(
        signed_count(&agent, "hsm/guarded"),
        1,
        "nothing more signed"
    );
}

#[test]
fn a_request_written_before_exec_of_the_allowed_program_is_refused() {
    let (_hsm, agent) = agent_one_slot();
    let holder = agent.client();
    let sock = agent.socket.to_str().unwrap();
    let mut attacker = python(PY_WRITE_THEN_EXEC, &[sock, ALLOWED, "hsm/guarded"]);
    wait_for_exe(attacker.id(), ALLOWED);
    drop(holder);

    // The agent answers the allowed program, which does not read and keeps the only
    // slot: the audit file says what happened.
    let log = agent.state_dir.join("audit/audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(r) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["event"] == "refused" && r["key"] == "hsm/guarded")
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal in the audit log; agent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = attacker.kill();
    let _ = attacker.wait();
    assert_eq!(refusal["code"], "policy-denied", "{refusal}");
    let reason = refusal["reason"].as_str().unwrap();
    assert!(
        reason.contains("before the agent identified the program"),
        "{reason}"
    );
    assert_eq!(signed_count(&agent, "hsm/guarded"), 0);
}

#[test]
fn a_frame_naming_a_member_twice_is_refused() {
    let (_hsm, agent) = agent_one_slot();
    let mut s = agent.raw();
    write_frame(&mut s, br#"{"id":0,"op":"hello","version":1}"#);
    read_frame(&mut s).unwrap();
    // One reader taking the first `key`, another the last, would disagree on the key.
    write_frame(
        &mut s,
        br#"{"id":1,"op":"sign","key":"hsm/open","purpose":"digest","hash":"sha256","key":"hsm/guarded","digest":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#,
    );
    let r = read_frame(&mut s).unwrap();
    assert_eq!(r["error"]["code"], "bad-request", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`key` appears twice"),
        "{r}"
    );
}

/// Runs the CLI as `uid` (group `gid`) from a copy it can execute.
fn as_uid(cli: &Path, agent: &Agent, uid: u32, gid: u32, args: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(cli)
        .arg("--socket")
        .arg(&agent.socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn system_mode_admits_another_uid_for_its_key_and_nothing_else() {
    require("setpriv");
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "this test runs clients as other uids and needs root"
    );
    const FULCIO: u32 = 4242;
    const GROUP: u32 = 4240;
    const STRANGER: u32 = 4243;
    let hsm = SoftHsm::new();
    hsm.init_token("t", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&format!(
            "[agent]\nallow_uids = [{FULCIO}, {STRANGER}]\nsocket_group = {GROUP}\n"
        ))
        .config(&pkcs11_device("hsm", "t", &pin))
        .config(&format!(
            "[[key]]\nname = \"hsm/fulcio\"\npurposes = [\"digest\"]\nallow_uids = [{FULCIO}]\n"
        ))
        .config("[[key]]\nname = \"hsm/root\"\npurposes = [\"digest\"]\n")
        .start();
    let mut owner = agent.client();
    for key in ["hsm/fulcio", "hsm/root", "hsm/release"] {
        owner.generate_key(key, KeyAlg::P256).unwrap();
    }
    // The runtime dir is 0710 and agent.sock 0660, both of the socket group.
    let run = agent.socket.parent().unwrap();
    use std::os::unix::fs::MetadataExt;
    let (d, s) = (
        std::fs::metadata(run).unwrap(),
        std::fs::metadata(&agent.socket).unwrap(),
    );
    assert_eq!((d.mode() & 0o777, d.gid()), (0o710, GROUP));
    assert_eq!((s.mode() & 0o777, s.gid()), (0o660, GROUP));
    assert_eq!(
        std::fs::metadata(&agent.ssh_socket).unwrap().mode() & 0o777,
        0o600,
        "ssh.sock stays the agent's own"
    );

    // The test's temp dir (0700) is opened for traversal, as /run would be.
    std::fs::set_permissions(agent.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cli = tmp.path().join("waxseal");
    std::fs::copy(&bins().cli, &cli).unwrap();
    let digest = hex::encode(Sha256::digest(b"a fulcio leaf"));
    let sign = |uid: u32, key: &str| {
        as_uid(
            &cli,
            &agent,
            uid,
            GROUP,
            &["sign", "--digest", &digest, "--key", key],
        )
    };

    let (ok, out) = sign(FULCIO, "hsm/fulcio");
    assert!(ok, "uid {FULCIO} signs with its key: {out}");
    for key in ["hsm/root", "hsm/release"] {
        let (ok, out) = sign(FULCIO, key);
        assert!(!ok && out.contains("policy-denied"), "{key}: {out}");
        assert!(out.contains(&format!("uid {FULCIO}")), "{out}");
    }
    let (ok, out) = as_uid(&cli, &agent, FULCIO, GROUP, &["keys", "list"]);
    assert!(ok, "{out}");
    assert!(out.contains("hsm/fulcio"), "{out}");
    assert!(
        !out.contains("hsm/root") && !out.contains("hsm/release"),
        "another uid sees only its keys: {out}"
    );
    for args in [&["status"][..], &["lock"], &["audit", "tail"]] {
        let (ok, out) = as_uid(&cli, &agent, FULCIO, GROUP, args);
        assert!(!ok && out.contains("policy-denied"), "{args:?}: {out}");
    }
    // Admitted to the socket but named by no key: nothing.
    let (ok, out) = sign(STRANGER, "hsm/fulcio");
    assert!(!ok && out.contains("policy-denied"), "{out}");
    // Not in the socket group: the filesystem keeps it out.
    let (ok, out) = as_uid(&cli, &agent, 4244, 4244, &["status"]);
    assert!(!ok && out.contains("Permission denied"), "{out}");

    let records = owner.audit_tail(Some(50)).unwrap().records;
    let by = |uid: u32, event: &str, key: &str| {
        records
            .iter()
            .filter(|r| r["caller"]["uid"] == uid && r["event"] == event && r["key"] == key)
            .count()
    };
    assert_eq!(by(FULCIO, "signed", "hsm/fulcio"), 1);
    assert_eq!(by(FULCIO, "refused", "hsm/root"), 1);
    assert_eq!(by(FULCIO, "refused", "hsm/release"), 1);
    assert_eq!(by(STRANGER, "refused", "hsm/fulcio"), 1);
    // The owner still signs with every key.
    owner
        .sign_digest("hsm/root", &Sha256::digest(b"x"), None, None)
        .unwrap();
}
