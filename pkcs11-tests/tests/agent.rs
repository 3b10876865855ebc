//! The daemon as a process: sockets and their modes, peers of another uid, malformed and
//! huge frames while other clients are served, limits, timeouts, signals, systemd socket
//! activation and config errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pkcs11_tests::{
    bins, is_closed, pkcs11_device, read_frame, require, write_frame, Agent, SoftHsm,
};
use sha2::{Digest, Sha256};
use waxseal_agent::proto::KeyAlg;

fn agent_with_key() -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token("t", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", "t", &pin))
        .start();
    agent.client().generate_key("hsm/k", KeyAlg::P256).unwrap();
    (hsm, agent)
}

#[test]
fn sockets_and_runtime_dir_have_tight_modes() {
    let agent = Agent::builder().start();
    let dir = agent.socket.parent().unwrap();
    assert_eq!(std::fs::metadata(dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(&agent.socket).unwrap().mode() & 0o777,
        0o600
    );
}

#[test]
fn malformed_and_huge_frames_fail_alone_while_another_client_is_served() {
    let (_hsm, agent) = agent_with_key();
    let mut good = agent.client();
    let digest = Sha256::digest(b"keep serving");
    good.sign_digest("hsm/k", &digest, None, None).unwrap();

    // A frame announcing 2 GiB: refused from its prefix, connection closed.
    let mut huge = agent.raw();
    huge.write_all(&0x8000_0000u32.to_be_bytes()).unwrap();
    let r = read_frame(&mut huge).expect("an error response");
    assert_eq!(r["error"]["code"], "frame-too-large", "{r}");
    assert!(r["id"].is_null());
    assert!(is_closed(&mut huge));

    // 300 KiB of garbage under the limit: bad-request, closed.
    let mut garbage = agent.raw();
    write_frame(&mut garbage, &vec![0xA5u8; 300 * 1024]);
    let r = read_frame(&mut garbage).unwrap();
    assert_eq!(r["error"]["code"], "bad-request", "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("UTF-8"),
        "{r}"
    );
    assert!(is_closed(&mut garbage));

    // Not JSON.
    let mut text = agent.raw();
    write_frame(&mut text, b"GET / HTTP/1.1\r\n\r\n");
    let r = read_frame(&mut text).unwrap();
    assert_eq!(r["error"]["code"], "bad-request");
    assert!(is_closed(&mut text));

    // Wrong-typed member and unknown op: errors carrying the id; the connection stays.
    let mut typed = agent.raw();
    write_frame(
        &mut typed,
        br#"{"id":7,"op":"sign","key":"hsm/k","purpose":"digest","digest":12}"#,
    );
    let r = read_frame(&mut typed).unwrap();
    assert_eq!(
        (r["id"].as_u64(), r["error"]["code"].as_str()),
        (Some(7), Some("bad-request")),
        "{r}"
    );
    write_frame(&mut typed, br#"{"id":8,"op":"explode"}"#);
    let r = read_frame(&mut typed).unwrap();
    assert_eq!(
        (r["id"].as_u64(), r["error"]["code"].as_str()),
        (Some(8), Some("unsupported")),
        "{r}"
    );
    write_frame(&mut typed, br#"{"id":9,"op":"hello","version":1}"#);
    let r = read_frame(&mut typed).unwrap();
    assert_eq!(r["ok"]["version"], 1, "{r}");

    // A truncated frame that never completes, and a client that vanishes mid-frame.
    let mut slow = agent.raw();
    slow.write_all(&100u32.to_be_bytes()).unwrap();
    slow.write_all(b"{\"id\":1,").unwrap();
    {
        let mut gone = agent.raw();
        gone.write_all(&[0, 0]).unwrap();
    }

    // Meanwhile the good client is served, on the same connection as before.
    for _ in 0..20 {
        good.sign_digest("hsm/k", &digest, None, None).unwrap();
    }
    let mut fresh = agent.client();
    assert_eq!(fresh.list_keys().unwrap().keys.len(), 1);
    drop(slow);
    assert!(agent.log().contains("frame over the limit"));
}

#[test]
fn a_client_of_another_uid_is_refused() {
    require("setpriv");
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "this test runs the client as uid 65534 and needs root"
    );
    let (_hsm, agent) = agent_with_key();
    // The CLI binary where uid 65534 can run it.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cli = tmp.path().join("waxseal");
    std::fs::copy(&bins().cli, &cli).unwrap();
    let as_nobody = || {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&cli)
            .arg("--socket")
            .arg(&agent.socket)
            .arg("status")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // By default the 0700 runtime dir already keeps others out.
    let (code, err) = as_nobody();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Permission denied"), "{err}");

    // With the filesystem opened up by mistake, SO_PEERCRED still refuses the peer.
    let dir = agent.socket.parent().unwrap();
    std::fs::set_permissions(agent.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, err) = as_nobody();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("policy-denied") && err.contains("uid 65534"),
        "{err}"
    );
    assert!(agent.log().contains("connection from another uid refused"));
    // The agent's own uid is still served.
    agent
        .client()
        .sign_digest("hsm/k", &Sha256::digest(b"x"), None, None)
        .unwrap();
}

#[test]
fn sigterm_removes_the_socket_and_a_restart_replaces_a_stale_one() {
    let mut agent = Agent::builder().start();
    let socket = agent.socket.clone();
    let status = agent.terminate();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket removed at shutdown");
    assert!(agent.log().contains("SIGTERM"));

    // A stale socket file (nobody listening) is replaced by the next agent.
    let stale = tempfile::tempdir().unwrap();
    let run = stale.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let path = run.join("agent.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut child = Command::new(&bins().agent)
        .args(["--config", "/dev/null", "--runtime-dir"])
        .arg(&run)
        .arg("--state-dir")
        .arg(stale.path().join("state"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while waxseal_agent::client::Client::connect(&path).is_err() {
        assert!(
            Instant::now() < deadline,
            "agent did not replace the stale socket"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A second agent on the same live socket refuses to start.
    let out = Command::new(&bins().agent)
        .args(["--config", "/dev/null", "--runtime-dir"])
        .arg(&run)
        .arg("--state-dir")
        .arg(stale.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn systemd_socket_activation() {
    require("systemd-socket-activate");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("agent.sock");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&path)
        .arg("--fdname=agent")
        .arg(&bins().agent)
        .args(["--config", "/dev/null", "--runtime-dir"])
        .arg(tmp.path().join("unused"))
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // systemd-socket-activate binds (the path appears) before it listens: until then
    // a connection is refused, so poll for the first accepted one.
    let deadline = Instant::now() + Duration::from_secs(10);
    // The first connection starts the agent, which takes the passed socket.
    let mut client = loop {
        match waxseal_agent::client::Client::connect(&path) {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no listener at {}: {e}",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    assert!(client.agent().starts_with("waxseal-agent"));
    assert_eq!(client.status().unwrap().devices.len(), 0);
    assert!(
        !tmp.path().join("unused/agent.sock").exists(),
        "no socket of its own"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("using the socket passed by systemd"), "{err}");
}

/// How many connections wait in the listen backlog of the socket at `path`, not yet
/// accepted: for a listening Unix socket, `ss` reports its accept queue as Recv-Q.
fn backlog(path: &std::path::Path) -> usize {
    require("ss");
    let out = Command::new("ss")
        .args(["-x", "-l", "-n", "-H", "src"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ss: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains(path.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not listening:\n{text}", path.display()));
    // u_str LISTEN <Recv-Q> <Send-Q> <path> <inode> * 0
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// A raw connection past `hello`.
fn hello(agent: &Agent) -> UnixStream {
    let mut s = agent.raw();
    write_frame(&mut s, br#"{"id":0,"op":"hello","version":1}"#);
    let r = read_frame(&mut s).unwrap();
    assert_eq!(r["ok"]["version"], 1, "{r}");
    s
}

/// Waits up to `within` for the agent to close `s`: a blocking read that ends at EOF.
fn closed_after(s: &mut UnixStream, within: Duration) {
    let t = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1];
    match std::io::Read::read(s, &mut buf) {
        Ok(0) => {}
        other => panic!("connection still open after {:?}: {other:?}", t.elapsed()),
    }
}

#[test]
fn idle_connections_are_closed_and_the_connection_cap_queues_clients() {
    let agent = Agent::builder()
        .config("[agent]\nmax_connections = 2\nidle_timeout_secs = 1\n")
        .start();
    // Two connections take both slots.
    let a = hello(&agent);
    let mut b = hello(&agent);
    // A third connects (the kernel queues it in the listen backlog) and says hello.
    let mut c = UnixStream::connect(&agent.socket).unwrap();
    write_frame(&mut c, br#"{"id":0,"op":"hello","version":1}"#);
    // The agent is running: it answers on a slot after the third connected…
    write_frame(&mut b, br#"{"id":1,"op":"status"}"#);
    assert!(read_frame(&mut b).unwrap()["ok"].is_object());
    let b_answered = Instant::now();
    // …yet the third has not been accepted: it is still in the backlog, unanswered.
    assert_eq!(
        backlog(&agent.socket),
        1,
        "third client accepted while two are connected"
    );
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4];
    let early = std::io::Read::read(&mut c, &mut buf);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "third client answered while two are connected: {early:?}"
    );
    c.set_nonblocking(false).unwrap();
    // A slot frees: the third is accepted and answered.
    drop(a);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = read_frame(&mut c).unwrap();
    assert_eq!(r["ok"]["version"], 1, "{r}");
    let c_answered = Instant::now();
    assert_eq!(backlog(&agent.socket), 0);

    // Idle connections are closed after idle_timeout_secs (1 s), and not before: wait
    // for the agent to close each one, and see how long after its last answer (read
    // here a little after the agent wrote it: hence the slack below 1 s).
    closed_after(&mut b, Duration::from_secs(10));
    assert!(
        b_answered.elapsed() >= Duration::from_millis(750),
        "closed {:?} after its last answer",
        b_answered.elapsed()
    );
    closed_after(&mut c, Duration::from_secs(10));
    assert!(
        c_answered.elapsed() >= Duration::from_millis(750),
        "the third closed {:?} after its answer",
        c_answered.elapsed()
    );
    assert_eq!(
        agent.log().matches("idle or too slow; closing").count(),
        2,
        "{}",
        agent.log()
    );
}

#[test]
fn config_errors_name_file_line_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "[agent]\nmax_connections = 4\n\n[[device]]\nname = \"hsm\"\nkind = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"\npin = \"hunter2\"\n").unwrap();
    let out = Command::new(&bins().agent)
        .arg("--config")
        .arg(&config)
        .arg("--runtime-dir")
        .arg(tmp.path().join("run"))
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:9: device[0].pin", config.display())),
        "{err}"
    );
    assert!(
        !err.contains("hunter2"),
        "a PIN-like value is never echoed: {err}"
    );
    assert!(!tmp.path().join("run/agent.sock").exists());
}
