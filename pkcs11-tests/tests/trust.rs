//! The trust layer against real agents on SoftHSM2 tokens: the hash-chained audit log
//! (verified, then broken by an edit that `waxseal audit verify` names; rotated; and
//! complete after a SIGKILL in the middle of a burst), per-key policy (`allow_uids`,
//! `allow_exe`, rate limits, `confirm` through a `confirm_program`), `waxseal lock`
//! and `unlock`, and SIGHUP reloads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pkcs11_tests::{audit_records, pkcs11_device, Agent, SoftHsm};
use serde_json::Value;
use sha2::{Digest, Sha256};
use waxseal_agent::audit_chain;
use waxseal_agent::client::ClientError;
use waxseal_agent::proto::{ErrorCode, HashAlg, KeyAlg};

fn token() -> (SoftHsm, String) {
    let hsm = SoftHsm::new();
    hsm.init_token("trust", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let dev = pkcs11_device("hsm", "trust", &pin);
    (hsm, dev)
}

fn refusal<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Agent(e)) => (e.code, e.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn sign(agent: &Agent, key: &str, data: &[u8]) -> Result<Vec<u8>, ClientError> {
    agent
        .client()
        .sign_digest(key, &Sha256::digest(data), Some(HashAlg::Sha256), None)
        .map(|s| s.signature.0)
}

fn cli_out(agent: &Agent, args: &[&str]) -> (Option<i32>, String, String) {
    let o = agent.cli(args);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn audit_chain_verifies_and_an_edited_line_is_named() {
    let (hsm, dev) = token();
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&dev)
        .config("[[key]]\nname = \"hsm/root\"\npurposes = [\"x509-tbs\"]\n")
        .start();
    let mut client = agent.client();
    client.generate_key("hsm/k", KeyAlg::P256).unwrap();
    client.generate_key("hsm/root", KeyAlg::P256).unwrap();
    for i in 0..5 {
        sign(&agent, "hsm/k", format!("artifact {i}").as_bytes()).unwrap();
    }
    client
        .sign_blob(
            "hsm/k",
            "release.tar.gz",
            &Sha256::digest(b"rel"),
            HashAlg::Sha256,
        )
        .unwrap();
    // Refusals are recorded too.
    let (code, _) = refusal(sign(&agent, "hsm/root", b"not a certificate"));
    assert_eq!(code, ErrorCode::PolicyDenied);

    let recs = audit_records(&agent.state_dir);
    let signed: Vec<&Value> = recs.iter().filter(|r| r["event"] == "signed").collect();
    assert_eq!(signed.len(), 6, "{recs:#?}");
    let intents: Vec<&Value> = recs.iter().filter(|r| r["event"] == "intent").collect();
    assert_eq!(intents.len(), 6);
    let first = intents[0];
    assert_eq!(first["key"], "hsm/k");
    assert_eq!(first["purpose"], "digest");
    assert_eq!(first["digest"], hex::encode(Sha256::digest(b"artifact 0")));
    assert_eq!(first["caller"]["uid"], rustix::process::geteuid().as_raw());
    assert!(
        first["caller"]["exe"].as_str().unwrap().contains("trust"),
        "{first}"
    );
    let blob = intents.iter().find(|r| r["purpose"] == "blob").unwrap();
    assert_eq!(blob["name"], "release.tar.gz");
    let refused = recs.iter().find(|r| r["event"] == "refused").unwrap();
    assert_eq!(refused["key"], "hsm/root");
    assert_eq!(refused["code"], "policy-denied");
    // Every signed record closes its intent.
    for s in &signed {
        let intent = s["intent"].as_u64().unwrap();
        assert!(intents.iter().any(|i| i["seq"] == intent));
    }

    let dir = agent.state_dir.join("audit");
    let (code, out, err) = cli_out(&agent, &["audit", "verify", "--dir", dir.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("{} records", recs.len())), "{out}");
    // The running agent's live file ends in preallocated zeros, and says how many.
    let size = std::fs::metadata(dir.join("audit.jsonl")).unwrap().len();
    let used = audit_chain::read_records(&dir.join("audit.jsonl"))
        .unwrap()
        .len() as u64;
    assert!(
        size > used,
        "the live log is preallocated ({size} bytes, {used} used)"
    );
    assert!(
        out.contains(&format!("{} bytes of preallocated space", size - used)),
        "{out}"
    );
    // `audit tail` through the agent shows the last records.
    let (code, out, _) = cli_out(&agent, &["audit", "tail", "-n", "3"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("\"refused\""), "{out}");

    // Edit the digest of the third record: `audit verify` names the record after it.
    let file = dir.join("audit.jsonl");
    let text = audit_chain::read_records(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let victim: Value = serde_json::from_str(lines[2]).unwrap();
    let digest = victim["digest"].as_str().unwrap().to_string();
    let forged = lines[2].replace(&digest, &"0".repeat(64));
    let edited = text.replacen(lines[2], &forged, 1);
    std::fs::write(&file, edited).unwrap();
    let (code, out, err) = cli_out(&agent, &["audit", "verify", "--dir", dir.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        err.contains("audit.jsonl:4:") && err.contains("prev"),
        "{err}"
    );
    // A deleted record is named as well.
    let without: String = lines
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 5)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    std::fs::write(&file, without).unwrap();
    let (code, _, err) = cli_out(&agent, &["audit", "verify", "--dir", dir.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("audit.jsonl:6:") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn rotation_keeps_the_chain_across_files() {
    let (hsm, dev) = token();
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config("[agent]\naudit_max_bytes = 4096\n")
        .config(&dev)
        .start();
    agent.client().generate_key("hsm/k", KeyAlg::P256).unwrap();
    for i in 0..40 {
        sign(&agent, "hsm/k", format!("{i}").as_bytes()).unwrap();
    }
    let files = audit_chain::files(&agent.state_dir.join("audit")).unwrap();
    assert!(files.len() >= 3, "rotated into several files: {files:?}");
    let ok = audit_chain::verify_files(&files).unwrap();
    assert_eq!(ok.records, 80);
    // The new file's first record carries the old file's last hash.
    let last_of_first = std::fs::read_to_string(&files[0]).unwrap();
    let last_line = last_of_first.lines().last().unwrap();
    let second = std::fs::read_to_string(&files[1]).unwrap();
    let first_of_second: Value = serde_json::from_str(second.lines().next().unwrap()).unwrap();
    assert_eq!(
        first_of_second["prev"],
        hex::encode(Sha256::digest(last_line.as_bytes()))
    );
}

#[test]
fn every_signature_a_client_received_survives_a_sigkill_mid_burst() {
    let (hsm, dev) = token();
    let state = tempfile::tempdir().unwrap();
    let mut agent = Agent::builder()
        .softhsm(&hsm)
        .config(&dev)
        .state_dir(state.path())
        .log_level("info")
        .start();
    agent.client().generate_key("hsm/k", KeyAlg::P256).unwrap();
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let socket = agent.socket.clone();
    let workers: Vec<_> = (0..4)
        .map(|c| {
            let received = received.clone();
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut client = waxseal_agent::client::Client::connect(&socket).unwrap();
                for n in 0..50 {
                    let digest = Sha256::digest(format!("client {c} signature {n}"));
                    match client.sign_digest("hsm/k", &digest, Some(HashAlg::Sha256), None) {
                        Ok(_) => received.lock().unwrap().push(hex::encode(digest)),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().len() < 60 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    agent.kill9();
    for w in workers {
        w.join().unwrap();
    }
    let received = received.lock().unwrap().clone();
    assert!(
        received.len() >= 60,
        "the burst got going: {}",
        received.len()
    );
    assert!(received.len() < 200, "the kill landed mid-burst");

    let recs = audit_records(state.path());
    let intents: HashSet<String> = recs
        .iter()
        .filter(|r| r["event"] == "intent")
        .map(|r| r["digest"].as_str().unwrap().to_string())
        .collect();
    for d in &received {
        assert!(
            intents.contains(d),
            "signature over {d} was returned but is not in the log"
        );
    }
    let files = audit_chain::files(&state.path().join("audit")).unwrap();
    audit_chain::verify_files(&files).unwrap();

    // A new agent on the same state continues the chain.
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&dev)
        .state_dir(state.path())
        .start();
    sign(&agent, "hsm/k", b"after the crash").unwrap();
    let ok = audit_chain::verify_files(&audit_chain::files(&state.path().join("audit")).unwrap())
        .unwrap();
    assert_eq!(ok.records as usize, recs.len() + 2);
}

#[test]
fn caller_rules_rate_limits_and_confirmation_refuse_naming_the_rule() {
    let (hsm, dev) = token();
    let tmp = tempfile::tempdir().unwrap();
    // Confirmation programs: allow, deny, and one that never answers.
    let program = |name: &str, body: &str| pkcs11_tests::write_script(tmp.path(), name, body);
    let asked = tmp.path().join("asked.txt");
    let confirm = program(
        "confirm",
        &format!(
            "printf '%s\\n' \"$1\" >> {}\ncase \"$WAXSEAL_CONFIRM_KEY\" in hsm/confirmed) exit 0;; hsm/hang) sleep 30;; *) exit 1;; esac",
            asked.display()
        ),
    );
    let me = std::env::current_exe().unwrap();
    let config = format!(
        "[agent]\nconfirm_program = \"{}\"\nconfirm_timeout_secs = 2\n\n{dev}\n\
         [[key]]\nname = \"hsm/uids\"\npurposes = [\"digest\"]\nallow_uids = [4242]\n\n\
         [[key]]\nname = \"hsm/exe\"\npurposes = [\"digest\"]\nallow_exe = [\"/usr/bin/cosign\"]\n\n\
         [[key]]\nname = \"hsm/mine\"\npurposes = [\"digest\"]\nallow_exe = [\"{}\"]\n\n\
         [[key]]\nname = \"hsm/rate\"\npurposes = [\"digest\"]\nmax_per_hour = 3\n\n\
         [[key]]\nname = \"hsm/confirmed\"\npurposes = [\"digest\"]\nconfirm = true\n\n\
         [[key]]\nname = \"hsm/denied\"\npurposes = [\"digest\"]\nconfirm = true\n\n\
         [[key]]\nname = \"hsm/hang\"\npurposes = [\"digest\"]\nconfirm = true\n",
        confirm.display(),
        me.display()
    );
    let agent = Agent::builder().softhsm(&hsm).config(&config).start();
    let mut client = agent.client();
    for k in ["uids", "exe", "mine", "rate", "confirmed", "denied", "hang"] {
        client
            .generate_key(&format!("hsm/{k}"), KeyAlg::P256)
            .unwrap();
    }

    let (code, msg) = refusal(sign(&agent, "hsm/uids", b"x"));
    assert_eq!(code, ErrorCode::PolicyDenied);
    assert!(msg.contains("allow_uids"), "{msg}");
    let (code, msg) = refusal(sign(&agent, "hsm/exe", b"x"));
    assert_eq!(code, ErrorCode::PolicyDenied);
    assert!(
        msg.contains("allow_exe") && msg.contains(me.to_str().unwrap()),
        "{msg}"
    );
    sign(&agent, "hsm/mine", b"x").unwrap();

    for i in 0..3 {
        sign(&agent, "hsm/rate", format!("{i}").as_bytes()).unwrap();
    }
    let (code, msg) = refusal(sign(&agent, "hsm/rate", b"fourth"));
    assert_eq!(code, ErrorCode::RateLimited);
    assert!(msg.contains("max_per_hour"), "{msg}");

    sign(&agent, "hsm/confirmed", b"ok").unwrap();
    let (code, _) = refusal(sign(&agent, "hsm/denied", b"no"));
    assert_eq!(code, ErrorCode::ConfirmDenied);
    let t = Instant::now();
    let (code, msg) = refusal(sign(&agent, "hsm/hang", b"nobody answers"));
    assert_eq!(code, ErrorCode::ConfirmDenied, "{msg}");
    assert!(t.elapsed() >= Duration::from_secs(2) && t.elapsed() < Duration::from_secs(15));
    // The question named the key, the purpose, the caller and the digest.
    let question = std::fs::read_to_string(&asked).unwrap();
    assert!(
        question.contains("hsm/confirmed") && question.contains("digest"),
        "{question}"
    );
    assert!(
        question.contains(&format!("pid {}", std::process::id())),
        "{question}"
    );
    assert!(
        question.contains(&hex::encode(Sha256::digest(b"ok"))),
        "{question}"
    );
    // Keys without `confirm` never ask.
    assert!(!question.contains("hsm/mine"));

    // Each refusal is in the audit log with its code.
    let recs = audit_records(&agent.state_dir);
    for (key, code) in [
        ("hsm/uids", "policy-denied"),
        ("hsm/exe", "policy-denied"),
        ("hsm/rate", "rate-limited"),
        ("hsm/denied", "confirm-denied"),
        ("hsm/hang", "confirm-denied"),
    ] {
        assert!(
            recs.iter()
                .any(|r| r["event"] == "refused" && r["key"] == key && r["code"] == code),
            "{key} {code} not audited"
        );
    }
}

#[test]
fn lock_unlock_and_sighup_reload() {
    let (hsm, dev) = token();
    let tmp = tempfile::tempdir().unwrap();
    let agent = Agent::builder().softhsm(&hsm).config(&dev).start();
    agent.client().generate_key("hsm/k", KeyAlg::P256).unwrap();
    sign(&agent, "hsm/k", b"before").unwrap();

    let (code, out, _) = cli_out(&agent, &["lock"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("locked"), "{out}");
    let (code, msg) = refusal(sign(&agent, "hsm/k", b"while locked"));
    assert_eq!(code, ErrorCode::Locked);
    assert!(msg.contains("waxseal unlock"), "{msg}");
    assert!(
        agent.log().contains("logged out: the PIN is needed again"),
        "{}",
        agent.log()
    );
    let (code, out, _) = cli_out(&agent, &["unlock"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("unlocked"), "{out}");
    sign(&agent, "hsm/k", b"after").unwrap();
    // Both requests are in the audit log, with who asked.
    let me = rustix::process::getuid().as_raw();
    let recs = audit_records(&agent.state_dir);
    let events: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"] == "lock" || r["event"] == "unlock")
        .collect();
    assert_eq!(events.len(), 2, "{recs:?}");
    for (r, event) in events.iter().zip(["lock", "unlock"]) {
        assert_eq!(r["event"], event, "{r}");
        assert_eq!(r["key"], "", "{r}");
        assert_eq!(r["caller"]["uid"], me, "{r}");
        assert!(r["caller"]["pid"].as_u64().is_some_and(|p| p > 0), "{r}");
        assert!(r.get("code").is_none(), "{r}");
    }

    // SIGHUP: a new [[key]] policy applies at once.
    let config = agent.dir().join("config.toml");
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{base}\n[[key]]\nname = \"hsm/k\"\npurposes = [\"blob\"]\n"),
    )
    .unwrap();
    agent.signal(rustix::process::Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("SIGHUP: config reloaded") {
        assert!(Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, msg) = refusal(sign(&agent, "hsm/k", b"digest no more"));
    assert_eq!(code, ErrorCode::PolicyDenied, "{msg}");
    // A broken file keeps the old policy, and the log says why.
    std::fs::write(&config, format!("{base}\n[[key]]\nname = 7\n")).unwrap();
    agent.signal(rustix::process::Signal::HUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("the old one stays") {
        assert!(Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(agent.log().contains("key[0].name"), "{}", agent.log());
    let (code, _) = refusal(sign(&agent, "hsm/k", b"still blob only"));
    assert_eq!(code, ErrorCode::PolicyDenied);
    drop(tmp);
}

/// A command in a pseudo-terminal made by `script`, whose keyboard the test types on
/// once the expected text shows on its screen.
struct Terminal {
    child: std::process::Child,
    screen: Arc<Mutex<String>>,
    /// The thread copying the terminal's output to `screen`; it ends at EOF.
    reader: std::thread::JoinHandle<()>,
}

impl Terminal {
    fn run(command: &str) -> Terminal {
        pkcs11_tests::require("script");
        use std::io::Read;
        let mut child = std::process::Command::new("script")
            .args(["-q", "-e", "-c", command, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("script");
        let mut out = child.stdout.take().unwrap();
        let screen: Arc<Mutex<String>> = Arc::default();
        let s = screen.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal {
            child,
            screen,
            reader,
        }
    }

    fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.screen.lock().unwrap().contains(text) {
            assert!(
                Instant::now() < deadline,
                "`{text}` never showed; screen: {}",
                self.screen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\r").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn finish(mut self) -> (bool, String) {
        let status = self.child.wait().unwrap();
        // Everything the command wrote is on the screen once the reader has seen EOF.
        self.reader.join().unwrap();
        let screen = self.screen.lock().unwrap().clone();
        (status.success(), screen)
    }
}

#[test]
fn pin_typed_at_the_requesting_terminal_without_echo_and_dropped_after_pin_ttl() {
    let hsm = SoftHsm::new();
    hsm.init_token("prompted", "5555", "Q7w3e9");
    let config = "[[device]]\nname = \"hsm\"\nkind = \"pkcs11\"\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken = \"prompted\"\npin = \"prompt\"\npin_ttl = 2\n";
    let agent = Agent::builder().softhsm(&hsm).config(config).start();
    let cli = pkcs11_tests::bins().cli.display().to_string();
    let socket = agent.socket.display().to_string();
    let run = |args: &str| Terminal::run(&format!("{cli} --socket {socket} {args}"));

    // A wrong PIN is refused, and the same PIN typed again is not tried again.
    for expected in ["refused the PIN", "already refused"] {
        let mut t = run("keys generate hsm/k --alg p256");
        t.wait_for("PIN of device hsm");
        t.type_line("9999");
        let (ok, screen) = t.finish();
        assert!(!ok, "{screen}");
        assert!(screen.contains(expected), "{screen}");
    }

    let mut t = run("keys generate hsm/k --alg p256");
    t.wait_for("PIN of device hsm (token 'prompted')");
    t.type_line("Q7w3e9");
    let (ok, screen) = t.finish();
    assert!(ok, "{screen}\n{}", agent.log());
    assert!(screen.contains("BEGIN PUBLIC KEY"), "{screen}");
    assert!(!screen.contains("Q7w3e9"), "the PIN was echoed: {screen}");
    assert!(!agent.log().contains("Q7w3e9"));

    // Logged in now: a client that cannot be asked still signs…
    sign(&agent, "hsm/k", b"while the PIN is held").unwrap();
    // …until pin_ttl passes and the token is logged out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.log().contains("pin_ttl passed") {
        assert!(Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, msg) = refusal(sign(&agent, "hsm/k", b"after pin_ttl"));
    assert_eq!(code, ErrorCode::PinRequired, "{msg}");
    assert!(msg.contains("prompt"), "{msg}");
    let digest = hex::encode(Sha256::digest(b"typed again"));
    let mut t = run(&format!("sign --digest {digest} --key hsm/k"));
    t.wait_for("PIN of device hsm");
    t.type_line("Q7w3e9");
    let (ok, screen) = t.finish();
    assert!(ok, "{screen}");
}

#[test]
fn pin_from_a_systemd_credential_and_from_pinentry() {
    let hsm = SoftHsm::new();
    hsm.init_token("cred", "5555", "1234");
    hsm.init_token("entry", "5555", "2468");
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("hsm-pin"), "1234\n").unwrap();
    // A terminal for the pinentry program to ask at.
    // `sleep` only keeps the terminal open for pinentry (nothing waits on it); the
    // terminal is killed at the end, and its hangup ends the sleep.
    let tty_holder = Terminal::run("tty; sleep 60");
    tty_holder.wait_for("/dev/pts/");
    let tty = tty_holder
        .screen
        .lock()
        .unwrap()
        .lines()
        .find(|l| l.starts_with("/dev/pts/"))
        .unwrap()
        .trim()
        .to_string();
    pkcs11_tests::require("pinentry-tty");
    let module = "/usr/lib/softhsm/libsofthsm2.so";
    let agent = Agent::builder()
        .softhsm(&hsm)
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .env("WAXSEAL_PINENTRY_TTY", &tty)
        .config(&format!(
            "[[device]]\nname = \"cred\"\nkind = \"pkcs11\"\nmodule = \"{module}\"\ntoken = \"cred\"\npin = \"credential:hsm-pin\"\n\n\
             [[device]]\nname = \"entry\"\nkind = \"pkcs11\"\nmodule = \"{module}\"\ntoken = \"entry\"\npin = \"pinentry:/usr/bin/pinentry-tty\"\n"
        ))
        .start();
    agent.client().generate_key("cred/k", KeyAlg::P256).unwrap();
    sign(&agent, "cred/k", b"from a credential").unwrap();

    let socket = agent.socket.clone();
    let asking = std::thread::spawn(move || {
        waxseal_agent::client::Client::connect(&socket)
            .unwrap()
            .generate_key("entry/k", KeyAlg::P256)
    });
    let mut holder = tty_holder;
    holder.wait_for("PIN:");
    assert!(holder
        .screen
        .lock()
        .unwrap()
        .contains("PIN of device entry"));
    holder.type_line("2468");
    asking.join().unwrap().unwrap();
    sign(&agent, "entry/k", b"from pinentry").unwrap();
    assert!(!holder.screen.lock().unwrap().contains("2468"), "echoed");
    let _ = holder.child.kill();
}
