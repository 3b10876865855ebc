//! `ssh.sock` with the real OpenSSH tools: `ssh-add`, `ssh-keygen -Y`, `git` SSH
//! signing, and `ssh` logging in to a local `sshd` (with a forwarded agent).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pkcs11_tests::output_text as text;
use pkcs11_tests::{pkcs11_device, require, run_ok, Agent, SoftHsm};
use ssh_agent_lib::blocking::Client as SshClient;
use ssh_agent_lib::proto::SignRequest;
use waxseal_agent::proto::KeyAlg;

fn agent_with(config: &str, keys: &[(&str, KeyAlg)]) -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token("ssh", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", "ssh", &pin))
        .config(config)
        .start();
    let mut client = agent.client();
    for (name, alg) in keys {
        client.generate_key(name, *alg).unwrap();
    }
    (hsm, agent)
}

fn ssh_cmd(agent: &Agent, program: &str) -> Command {
    require(program);
    let mut c = Command::new(program);
    c.env("SSH_AUTH_SOCK", &agent.ssh_socket)
        .env_remove("SSH_AGENT_PID");
    c
}

#[test]
fn identities_match_and_openssh_signatures_verify() {
    let (_hsm, agent) = agent_with(
        "[[key]]\nname = \"hsm/root\"\npurposes = [\"x509-tbs\"]\n[[key]]\nname = \"hsm/digest-only\"\npurposes = [\"digest\"]\n",
        &[
            ("hsm/ec256", KeyAlg::P256),
            ("hsm/ec384", KeyAlg::P384),
            ("hsm/rsa", KeyAlg::Rsa(2048)),
            ("hsm/ed", KeyAlg::Ed25519),
            ("hsm/root", KeyAlg::P256),
            ("hsm/digest-only", KeyAlg::P256),
        ],
    );
    let listed = run_ok(ssh_cmd(&agent, "ssh-add").arg("-L"));
    let ours = String::from_utf8(agent.cli(&["ssh", "keys"]).stdout).unwrap();
    assert_eq!(listed, ours, "ssh-add -L must equal waxseal ssh keys");
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 4, "{listed}");
    for (kind, name) in [
        ("ecdsa-sha2-nistp256", "hsm/ec256"),
        ("ecdsa-sha2-nistp384", "hsm/ec384"),
        ("ssh-rsa", "hsm/rsa"),
        ("ssh-ed25519", "hsm/ed"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(kind) && l.ends_with(name)),
            "{kind} {name} in {listed}"
        );
    }
    assert!(
        !listed.contains("hsm/root") && !listed.contains("digest-only"),
        "keys without `ssh` are not offered"
    );

    // ssh-keygen -Y sign through the agent, then -Y verify, for every key type.
    let tmp = tempfile::tempdir().unwrap();
    let msg = tmp.path().join("msg");
    std::fs::write(&msg, b"signed by a key that never left the token\n").unwrap();
    for line in &lines {
        let name = line.rsplit(' ').next().unwrap().replace('/', "_");
        let pubkey = tmp.path().join(format!("{name}.pub"));
        std::fs::write(&pubkey, format!("{line}\n")).unwrap();
        let sig = tmp.path().join(format!("{name}.sig"));
        let _ = std::fs::remove_file(tmp.path().join("msg.sig"));
        run_ok(
            ssh_cmd(&agent, "ssh-keygen")
                .args(["-Y", "sign", "-n", "file", "-f"])
                .arg(&pubkey)
                .arg(&msg),
        );
        std::fs::rename(tmp.path().join("msg.sig"), &sig).unwrap();
        let allowed = tmp.path().join("allowed");
        std::fs::write(&allowed, format!("me {line}\n")).unwrap();
        let out = Command::new("ssh-keygen")
            .args(["-Y", "verify", "-f"])
            .arg(&allowed)
            .args(["-I", "me", "-n", "file", "-s"])
            .arg(&sig)
            .stdin(std::fs::File::open(&msg).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success() && text(&out).contains("Good \"file\" signature"),
            "{line}: {}",
            text(&out)
        );
    }

    // RSA: SHA-2 flags honoured, SHA-1 ssh-rsa refused.
    let mut raw = SshClient::new(UnixStream::connect(&agent.ssh_socket).unwrap());
    let ids = raw.request_identities().unwrap();
    let rsa = ids.iter().find(|i| i.comment == "hsm/rsa").unwrap();
    let req = |flags| SignRequest {
        credential: rsa.credential.clone(),
        data: b"data".to_vec(),
        flags,
    };
    assert!(raw.sign(req(0)).is_err(), "ssh-rsa (SHA-1) must be refused");
    assert_eq!(
        raw.sign(req(2)).unwrap().algorithm().as_str(),
        "rsa-sha2-256"
    );
    assert_eq!(
        raw.sign(req(4)).unwrap().algorithm().as_str(),
        "rsa-sha2-512"
    );
    assert!(agent.log().contains("ssh-rsa (SHA-1)"));

    // Keys live in hardware: adding and removing identities fails clearly.
    let key = tmp.path().join("soft");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
    );
    let out = ssh_cmd(&agent, "ssh-add").arg(&key).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let out = ssh_cmd(&agent, "ssh-add").arg("-D").output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(agent.log().contains("live in hardware"));

    // Lock and unlock with a passphrase (the real ssh-add, passphrase from SSH_ASKPASS).
    let askpass = tmp.path().join("askpass");
    std::fs::write(&askpass, "#!/bin/sh\necho 'correct horse'\n").unwrap();
    std::fs::set_permissions(&askpass, std::fs::Permissions::from_mode(0o755)).unwrap();
    let with_askpass = |arg: &str| {
        ssh_cmd(&agent, "ssh-add")
            .arg(arg)
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = with_askpass("-x");
    assert!(out.status.success(), "{}", text(&out));
    let out = ssh_cmd(&agent, "ssh-add").arg("-L").output().unwrap();
    assert!(
        text(&out).contains("no identities"),
        "locked agent lists nothing: {}",
        text(&out)
    );
    let locked = agent.cli(&["sign", "--digest", &"00".repeat(32), "--key", "hsm/ec256"]);
    assert!(text(&locked).contains("locked"), "{}", text(&locked));
    let out = with_askpass("-X");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        run_ok(ssh_cmd(&agent, "ssh-add").arg("-L")).lines().count(),
        4
    );
    // Both are in the audit log, with the ssh-add that asked, and never the passphrase.
    let text = waxseal_agent::audit_chain::read_records(&agent.state_dir.join("audit/audit.jsonl"))
        .unwrap();
    assert!(!text.contains("correct horse"));
    let locks: Vec<serde_json::Value> = pkcs11_tests::audit_records(&agent.state_dir)
        .into_iter()
        .filter(|r| r["event"] == "lock" || r["event"] == "unlock")
        .collect();
    let events: Vec<&str> = locks.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["lock", "unlock"], "{locks:?}");
    for r in &locks {
        assert!(r.get("code").is_none(), "{r}");
        assert!(
            r["caller"]["exe"]
                .as_str()
                .is_some_and(|e| e.ends_with("ssh-add")),
            "{r}"
        );
    }
}

#[test]
fn git_commit_signed_with_a_hardware_key() {
    require("git");
    let (_hsm, agent) = agent_with("", &[("hsm/git", KeyAlg::P256)]);
    let key = String::from_utf8(agent.cli(&["ssh", "keys"]).stdout).unwrap();
    let key = key.trim();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let git = |args: &[&str]| {
        let mut c = ssh_cmd(&agent, "git");
        c.current_dir(&repo)
            .args(args)
            .env("HOME", tmp.path())
            .env("GIT_CONFIG_NOSYSTEM", "1");
        c
    };
    std::fs::create_dir(&repo).unwrap();
    run_ok(&mut git(&["init", "-q"]));
    let allowed = tmp.path().join("allowed_signers");
    std::fs::write(&allowed, format!("dev@example.org {key}\n")).unwrap();
    for (k, v) in [
        ("user.name", "Dev"),
        ("user.email", "dev@example.org"),
        ("gpg.format", "ssh"),
        ("user.signingkey", &format!("key::{key}")),
        ("gpg.ssh.allowedSignersFile", allowed.to_str().unwrap()),
    ] {
        run_ok(&mut git(&["config", k, v]));
    }
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    run_ok(&mut git(&["add", "README"]));
    run_ok(&mut git(&[
        "commit",
        "-q",
        "-S",
        "-m",
        "signed on the token",
    ]));
    let out = git(&["verify-commit", "-v", "HEAD"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Good \"git\" signature for dev@example.org"),
        "{}",
        text(&out)
    );
}

struct Sshd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's sshd on a loopback port with its own config, host key and authorized_keys.
fn start_sshd(authorized_keys: &str) -> Sshd {
    let sshd = require("/usr/sbin/sshd");
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "the sshd test logs in as root and needs root"
    );
    std::fs::create_dir_all("/run/sshd").unwrap(); // privilege separation directory
    let dir = tempfile::tempdir().unwrap();
    let host_key = dir.path().join("host_ed25519");
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key),
    );
    let auth = dir.path().join("authorized_keys");
    std::fs::write(&auth, authorized_keys).unwrap();
    let port = free_port();
    let config = dir.path().join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nAllowAgentForwarding yes\nLogLevel VERBOSE\n",
            host_key.display(),
            dir.path().join("sshd.pid").display(),
            auth.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("sshd.log")).unwrap();
    let child = Command::new(sshd)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd did not start: {}",
            std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Sshd {
        child,
        port,
        _dir: dir,
    }
}

fn ssh_to(agent: &Agent, sshd: &Sshd, extra: &[&str], remote: &str) -> Output {
    let mut c = ssh_cmd(agent, "ssh");
    c.args([
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
    ])
    .args(["-p", &sshd.port.to_string()])
    .args(extra)
    .arg("root@127.0.0.1")
    .arg(remote)
    .stdin(Stdio::null());
    c.output().unwrap()
}

#[test]
fn ssh_login_with_the_hardware_key_and_forwarding_policy() {
    let (_hsm, agent) = agent_with(
        "[[key]]\nname = \"hsm/local-only\"\npurposes = [\"ssh\"]\nssh_forwarding = false\n",
        &[
            ("hsm/login", KeyAlg::P256),
            ("hsm/local-only", KeyAlg::Ed25519),
        ],
    );
    let keys = String::from_utf8(agent.cli(&["ssh", "keys"]).stdout).unwrap();
    assert_eq!(keys.lines().count(), 2);
    // Only the ssh_forwarding = false key may log in: proves the login used the agent.
    let local_only = keys
        .lines()
        .find(|l| l.ends_with("hsm/local-only"))
        .unwrap();
    let sshd = start_sshd(&format!("{local_only}\n"));
    let out = ssh_to(&agent, &sshd, &[], "echo logged-in");
    assert!(
        out.status.success() && text(&out).contains("logged-in"),
        "{}",
        text(&out)
    );
    assert!(
        agent.log().contains("ssh: signed"),
        "the login signature came from the agent"
    );

    // Through a forwarded agent, the remote side sees the forwardable key only, and the
    // local-only key cannot sign there.
    let out = ssh_to(&agent, &sshd, &["-A"], "ssh-add -L");
    let remote = text(&out);
    assert!(remote.contains("hsm/login"), "{remote}");
    assert!(
        !remote.contains("hsm/local-only"),
        "ssh_forwarding = false hides the key on a forwarded connection: {remote}"
    );
    assert!(
        agent.log().contains("bound for forwarding"),
        "session-bind@openssh.com was seen and checked"
    );
}

#[test]
fn garbage_and_oversized_frames_fail_while_others_are_served() {
    let (_hsm, agent) = agent_with("", &[("hsm/k", KeyAlg::P256)]);
    let mut good = SshClient::new(UnixStream::connect(&agent.ssh_socket).unwrap());
    let ids = good.request_identities().unwrap();
    assert_eq!(ids.len(), 1);

    let read_reply = |s: &mut UnixStream| {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        body
    };
    // 300 KiB announced: SSH_AGENT_FAILURE, connection closed.
    let mut huge = UnixStream::connect(&agent.ssh_socket).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    huge.write_all(&(300u32 * 1024).to_be_bytes()).unwrap();
    huge.write_all(&[11u8; 1024]).unwrap();
    assert_eq!(read_reply(&mut huge), vec![5], "SSH_AGENT_FAILURE");
    let mut rest = Vec::new();
    let _ = huge.read_to_end(&mut rest);

    // Garbage inside a well-formed frame: failure, and the connection still works.
    let mut garbage = UnixStream::connect(&agent.ssh_socket).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    garbage
        .write_all(&[0, 0, 0, 6, 0xfe, 1, 2, 3, 4, 5])
        .unwrap();
    assert_eq!(read_reply(&mut garbage), vec![5]);
    garbage.write_all(&[0, 0, 0, 5, 13, 0, 0, 0, 99]).unwrap(); // truncated sign request
    assert_eq!(read_reply(&mut garbage), vec![5]);
    garbage.write_all(&[0, 0, 0, 1, 11]).unwrap(); // REQUEST_IDENTITIES
    assert_eq!(
        read_reply(&mut garbage)[0],
        12,
        "IDENTITIES_ANSWER on the same connection"
    );

    // The first client was served throughout, and a new one too.
    for _ in 0..10 {
        let sig = good
            .sign(SignRequest {
                credential: ids[0].credential.clone(),
                data: b"x".to_vec(),
                flags: 0,
            })
            .unwrap();
        assert_eq!(sig.algorithm().as_str(), "ecdsa-sha2-nistp256");
    }
    assert_eq!(
        run_ok(ssh_cmd(&agent, "ssh-add").arg("-L")).lines().count(),
        1
    );
}

#[test]
fn a_client_of_another_uid_is_refused_on_ssh_sock() {
    require("setpriv");
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "this test runs ssh-add as uid 65534 and needs root"
    );
    let (_hsm, agent) = agent_with("", &[("hsm/k", KeyAlg::P256)]);
    let as_nobody = || {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "ssh-add",
                "-L",
            ])
            .env("SSH_AUTH_SOCK", &agent.ssh_socket)
            .output()
            .unwrap()
    };
    let out = as_nobody();
    assert!(!out.status.success(), "{}", text(&out));
    // Open the filesystem up: SO_PEERCRED still refuses.
    for p in [agent.dir(), agent.ssh_socket.parent().unwrap()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&agent.ssh_socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("ecdsa"), "{}", text(&out));
    assert!(agent
        .log()
        .contains("ssh: connection from another uid refused"));
    assert_eq!(
        run_ok(ssh_cmd(&agent, "ssh-add").arg("-L")).lines().count(),
        1
    );
}

/// An SSH agent message: length, then `body`.
fn ssh_frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// An SSH wire `string`.
fn ssh_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Sends one message and reads the answer's body.
fn ssh_exchange(s: &mut UnixStream, body: &[u8]) -> Vec<u8> {
    s.write_all(&ssh_frame(body)).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut reply).unwrap();
    reply
}

/// How many identities REQUEST_IDENTITIES lists on `s`.
fn identity_count(s: &mut UnixStream) -> u32 {
    let reply = ssh_exchange(s, &[11]);
    assert_eq!(reply[0], 12, "IDENTITIES_ANSWER");
    u32::from_be_bytes(reply[1..5].try_into().unwrap())
}

#[test]
fn a_session_bind_the_agent_cannot_verify_counts_as_forwarded() {
    let (_hsm, agent) = agent_with(
        "[[key]]\nname = \"hsm/local-only\"\npurposes = [\"ssh\"]\nssh_forwarding = false\n",
        &[
            ("hsm/login", KeyAlg::P256),
            ("hsm/local-only", KeyAlg::P256),
        ],
    );
    let connect = || {
        let s = UnixStream::connect(&agent.ssh_socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let mut plain = connect();
    assert_eq!(identity_count(&mut plain), 2);

    let extension = |details: &[u8]| {
        let mut body = vec![27u8];
        body.extend(ssh_string(b"session-bind@openssh.com"));
        body.extend_from_slice(details);
        body
    };
    // A bind that does not parse, and one whose host signature does not verify: both
    // may hide a forwarding, so the local-only key disappears.
    let mut unverifiable = Vec::new();
    let mut host_key = ssh_string(b"ssh-ed25519");
    host_key.extend(ssh_string(&[7u8; 32]));
    unverifiable.extend(ssh_string(&host_key));
    unverifiable.extend(ssh_string(&[1u8; 32]));
    let mut signature = ssh_string(b"ssh-ed25519");
    signature.extend(ssh_string(&[0u8; 64]));
    unverifiable.extend(ssh_string(&signature));
    unverifiable.push(0); // "not forwarding", unproven
    for details in [ssh_string(b"x"), unverifiable] {
        let mut s = connect();
        let reply = ssh_exchange(&mut s, &extension(&details));
        assert_eq!(reply, vec![28], "SSH_AGENT_EXTENSION_FAILURE");
        assert_eq!(
            identity_count(&mut s),
            1,
            "only the forwardable key after a bind that cannot be verified"
        );
    }
    assert!(agent.log().contains("counts as forwarded"));
}

#[test]
fn ssh_sock_has_its_own_cap_and_agent_sock_is_served_while_it_is_full() {
    let (_hsm, agent) = agent_with(
        "[agent]\nssh_max_connections = 2\n",
        &[("hsm/k", KeyAlg::P256)],
    );
    let connect = || {
        let s = UnixStream::connect(&agent.ssh_socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let mut held: Vec<UnixStream> = (0..2).map(|_| connect()).collect();
    for s in &mut held {
        assert_eq!(identity_count(s), 1);
    }
    // A third waits in the backlog: no answer while both slots are held.
    let mut third = connect();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    third.write_all(&ssh_frame(&[11])).unwrap();
    let mut byte = [0u8; 1];
    let e = third.read(&mut byte).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e}"
    );
    // agent.sock has its own slots.
    agent
        .client()
        .sign_digest("hsm/k", &[0u8; 32], None, None)
        .unwrap();
    drop(held.pop());
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut len = [0u8; 4];
    third.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    third.read_exact(&mut reply).unwrap();
    assert_eq!(reply[0], 12, "served once a slot is free");
}
