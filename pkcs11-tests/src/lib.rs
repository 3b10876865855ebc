//! Test harness: real SoftHSM2 tokens and swtpm TPMs in temp dirs and a real
//! `waxseal-agent` process on a temp socket, plus helpers to run the peers we check
//! against (OpenSSL, pkcs11-tool, tpm2-tools). Nothing here is a mock.
//!
//! Every agent is its own process with its own `SOFTHSM2_CONF`, so tests run in
//! parallel without sharing a token. The binaries are built once per test run with the
//! same cargo that runs the tests, so they are never stale.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed step is a failed test

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use waxseal_agent::client::Client;

/// The SoftHSM2 module on Debian/Ubuntu.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// OpenSC's PKCS#11 spy, which logs every call to the module behind it.
pub const SPY_MODULE: &str = "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so";

/// Fails the test, naming the install script, when `program` is not installed.
pub fn require(program: &str) -> PathBuf {
    if program.starts_with('/') {
        assert!(
            Path::new(program).exists(),
            "{program} is missing: run scripts/install-deps"
        );
        return PathBuf::from(program);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("`{program}` is not installed: run scripts/install-deps"))
}

/// Paths of the binaries of this workspace and of its PKCS#11 module.
#[derive(Debug)]
pub struct Bins {
    /// `waxseal-agent`.
    pub agent: PathBuf,
    /// `waxseal`.
    pub cli: PathBuf,
    /// `sigstore-kms-waxseal`, the cosign/Fulcio KMS plug-in.
    pub kms_plugin: PathBuf,
    /// `piv-emulator`, the PIV card of the YubiKey tests.
    pub piv_emulator: PathBuf,
    /// `libwaxseal_pkcs11.so`, the PKCS#11 module (pkcs11-module/).
    pub pkcs11_module: PathBuf,
}

/// Builds the binaries (once per process) with the cargo and profile of this test run.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> or target/<profile>/<bin> → target/<profile>
        let mut profile_dir = exe.parent().expect("target dir").to_path_buf();
        if profile_dir.file_name().is_some_and(|n| n == "deps") {
            profile_dir.pop();
        }
        let target_dir = profile_dir.parent().expect("target root").to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "--bins",
            "-p",
            "waxseal-agent",
            "-p",
            "waxseal",
            "-p",
            "piv-emulator",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the binaries");
        assert!(
            status.success(),
            "cargo build of waxseal-agent, waxseal and piv-emulator failed"
        );
        // The module is a library (cdylib): `--bins` leaves it out.
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.args([
            "build",
            "--quiet",
            "--lib",
            "-p",
            "waxseal-pkcs11",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir);
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("run cargo build for the PKCS#11 module");
        assert!(status.success(), "cargo build of waxseal-pkcs11 failed");
        Bins {
            agent: profile_dir.join("waxseal-agent"),
            cli: profile_dir.join("waxseal"),
            kms_plugin: profile_dir.join("sigstore-kms-waxseal"),
            piv_emulator: profile_dir.join("piv-emulator"),
            pkcs11_module: profile_dir.join("libwaxseal_pkcs11.so"),
        }
    })
}

/// A private SoftHSM2 token directory with its own config file.
#[derive(Debug)]
pub struct SoftHsm {
    dir: TempDir,
}

impl Default for SoftHsm {
    fn default() -> Self {
        Self::new()
    }
}

impl SoftHsm {
    /// An empty token directory.
    pub fn new() -> Self {
        require(SOFTHSM_MODULE);
        require("softhsm2-util");
        let dir = tempfile::Builder::new()
            .prefix("softhsm-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("tokens")).expect("tokens dir");
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                dir.path().join("tokens").display()
            ),
        )
        .expect("softhsm2.conf");
        SoftHsm { dir }
    }

    /// `SOFTHSM2_CONF` for processes using these tokens.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// The tokens directory.
    pub fn token_dir(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// Initialises a token with `label`, SO PIN `so_pin` and user PIN `pin`.
    pub fn init_token(&self, label: &str, so_pin: &str, pin: &str) {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", self.conf())
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                so_pin,
                "--pin",
                pin,
            ])
            .output()
            .expect("softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes a PIN file and returns its path.
    pub fn pin_file(&self, name: &str, pin: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("{pin}\n")).expect("pin file");
        p
    }

    /// Runs `pkcs11-tool` on this token directory with `args`, failing the test unless
    /// it exits 0 (output that is asserted on must come from a run that worked: an
    /// absence found in the output of a failed run proves nothing).
    pub fn pkcs11_tool(&self, args: &[&str]) -> Output {
        require("pkcs11-tool");
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", self.conf())
            .arg("--module")
            .arg(SOFTHSM_MODULE)
            .args(args)
            .output()
            .expect("pkcs11-tool");
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?} exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// OpenSC's `pkcs11-spy` in front of SoftHSM2: an agent whose device names
/// [`SPY_MODULE`] and which runs with [`Spy::env`] has every call it makes to the
/// module logged, so a test counts what the agent did to the token (C_Login, C_Logout,
/// C_GetTokenInfo) with a tool it did not write instead of trusting the agent's log.
#[derive(Debug)]
pub struct Spy {
    /// The spy's log (`PKCS11SPY_OUTPUT`).
    pub log: PathBuf,
}

impl Spy {
    /// A spy whose log lives beside `hsm`'s tokens.
    pub fn new(hsm: &SoftHsm) -> Spy {
        require(SPY_MODULE);
        Spy {
            log: hsm.dir.path().join("spy.log"),
        }
    }

    /// A `[[device]]` entry for `token` through the spy; `extra` is appended to it.
    pub fn device(&self, name: &str, token: &str, pin_file: &Path, extra: &str) -> String {
        format!(
            "[[device]]\nname = \"{name}\"\nkind = \"pkcs11\"\nmodule = \"{SPY_MODULE}\"\ntoken = \"{token}\"\npin = \"file:{}\"\n{extra}",
            pin_file.display()
        )
    }

    /// The environment that points the spy at SoftHSM2 and at its log.
    pub fn env(&self, builder: AgentBuilder) -> AgentBuilder {
        builder
            .env("PKCS11SPY", SOFTHSM_MODULE)
            .env("PKCS11SPY_OUTPUT", &self.log)
    }

    /// How many calls of `function` (e.g. `C_Logout`) the log holds: the spy writes one
    /// line `N: C_Name` per call.
    pub fn calls(&self, function: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.split_once(": ")
                    .is_some_and(|(n, f)| f == function && n.parse::<u64>().is_ok())
            })
            .count()
    }

    /// Waits (polling against a 10 s deadline) until the log holds more than `than`
    /// calls of `function`; returns how many it holds.
    pub fn wait_more(&self, function: &str, than: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.calls(function);
            if seen > than {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "no call of {function} beyond the first {than} after 10 s; spy log: {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (polling against a 10 s deadline) until the log holds `n` calls of
    /// `function`; fails if it holds more.
    pub fn wait_calls(&self, function: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.calls(function);
            assert!(
                seen <= n,
                "{seen} calls of {function}, expected {n}; spy log: {}",
                self.log.display()
            );
            if seen == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{seen} calls of {function} after 10 s, expected {n}; spy log: {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A `[[device]]` entry for a SoftHSM2 token.
pub fn pkcs11_device(name: &str, token: &str, pin_file: &Path) -> String {
    format!(
        "[[device]]\nname = \"{name}\"\nkind = \"pkcs11\"\nmodule = \"{SOFTHSM_MODULE}\"\ntoken = \"{token}\"\npin = \"file:{}\"\n",
        pin_file.display()
    )
}

/// A PIN file that changes between reads: `path` becomes a FIFO, and each time the
/// agent opens it, it reads the next PIN of `first`, then `then` for every later read.
/// For tests of what the agent remembers when the source changes between two reads.
#[derive(Debug)]
pub struct PinFifo {
    path: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl PinFifo {
    /// Replaces `path` with a FIFO and starts serving.
    pub fn serve(path: &Path, first: &[&str], then: &str) -> PinFifo {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let _ = std::fs::remove_file(path);
        run_ok(
            Command::new(require("mkfifo"))
                .arg("-m")
                .arg("600")
                .arg(path),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let pins: Vec<String> = first.iter().map(|p| p.to_string()).collect();
        let then = then.to_string();
        let (p, st, sv) = (path.to_path_buf(), stop.clone(), served.clone());
        let writer = std::thread::spawn(move || loop {
            // Blocks until the agent (or Drop) opens the FIFO for reading.
            let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&p) else {
                return;
            };
            if st.load(Ordering::Acquire) {
                return;
            }
            let n = sv.fetch_add(1, Ordering::AcqRel);
            let pin = pins.get(n).unwrap_or(&then);
            let _ = f.write_all(format!("{pin}\n").as_bytes());
        });
        PinFifo {
            path: path.to_path_buf(),
            stop,
            served,
            writer: Some(writer),
        }
    }

    /// How many times the PIN was read so far.
    pub fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for PinFifo {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        // Opening the reading end lets the writer's open return and see `stop`. It stays
        // open until the writer is done: a writer between two serves opens only later,
        // and with no reader left it would wait forever.
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&self.path);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        drop(reader);
    }
}

/// A running `waxseal-agent` process in its own temp dirs.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    dir: TempDir,
    /// The state directory (audit log in `audit/`).
    pub state_dir: PathBuf,
    /// The native socket.
    pub socket: PathBuf,
    /// The OpenSSH agent socket.
    pub ssh_socket: PathBuf,
}

/// How to start an agent.
#[derive(Debug, Default)]
pub struct AgentBuilder {
    config: String,
    env: Vec<(String, String)>,
    log_level: Option<String>,
    state_dir: Option<PathBuf>,
}

impl AgentBuilder {
    /// Appends TOML to the config.
    pub fn config(mut self, toml: &str) -> Self {
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }

    /// Sets an environment variable of the agent.
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env
            .push((key.into(), value.as_ref().to_string_lossy().into_owned()));
        self
    }

    /// Log level of the agent (default: debug).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = Some(level.into());
        self
    }

    /// Uses this state directory (audit log, TPM keys) instead of a fresh one, e.g.
    /// to restart on the state of an agent that was killed.
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    /// Uses the tokens of `hsm`.
    pub fn softhsm(self, hsm: &SoftHsm) -> Self {
        self.env("SOFTHSM2_CONF", hsm.conf())
    }

    /// Starts the agent and waits until it answers `hello`.
    pub fn start(self) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("waxseal-agent-")
            .tempdir()
            .expect("tempdir");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, &self.config).expect("config");
        let runtime = dir.path().join("run");
        let socket = runtime.join("agent.sock");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
        let mut cmd = Command::new(&bins().agent);
        cmd.arg("--config")
            .arg(&config)
            .arg("--runtime-dir")
            .arg(&runtime)
            .arg("--state-dir")
            .arg(
                self.state_dir
                    .clone()
                    .unwrap_or_else(|| dir.path().join("state")),
            )
            .arg("--log-level")
            .arg(self.log_level.as_deref().unwrap_or("debug"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn waxseal-agent");
        let mut agent = Agent {
            child: Some(child),
            state_dir: self
                .state_dir
                .clone()
                .unwrap_or_else(|| dir.path().join("state")),
            dir,
            ssh_socket: runtime.join("ssh.sock"),
            socket,
        };
        agent.wait_ready();
        agent
    }
}

impl Agent {
    /// A builder.
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if Client::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "waxseal-agent exited with {status} before it was ready; log:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "waxseal-agent not ready after 20 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A connected client (after `hello`).
    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect: {e}\nlog:\n{}", self.log()))
    }

    /// A raw stream to the socket, for malformed input.
    pub fn raw(&self) -> UnixStream {
        let s = UnixStream::connect(&self.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }

    /// The agent's temp dir (config, run/, state/, agent.log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Runs the `waxseal` CLI against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&bins().cli)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("WAXSEAL_SOCK")
            .output()
            .expect("run waxseal")
    }

    /// Sends SIGKILL and waits: the agent gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. SIGHUP) without waiting.
    pub fn signal(&self, signal: rustix::process::Signal) {
        if let Some(child) = &self.child {
            let pid = rustix::process::Pid::from_child(child);
            rustix::process::kill_process(pid, signal).expect("signal the agent");
        }
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent ignored SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every record of the audit log under the agent's `state` directory, parsed, in chain
/// order; the live file is read up to its preallocated zero tail
/// (docs/architecture.md, "The audit log").
pub fn audit_records(state: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for f in waxseal_agent::audit_chain::files(&state.join("audit")).expect("audit files") {
        let text = waxseal_agent::audit_chain::read_records(&f).expect("audit file");
        for line in text.lines() {
            out.push(serde_json::from_str(line).expect("an audit record is JSON"));
        }
    }
    out
}

/// Writes one frame (length prefix + payload) to a raw stream.
pub fn write_frame(s: &mut UnixStream, payload: &[u8]) {
    s.write_all(&(payload.len() as u32).to_be_bytes())
        .expect("write");
    s.write_all(payload).expect("write");
}

/// Reads one frame as JSON; `None` at end of stream.
pub fn read_frame(s: &mut UnixStream) -> Option<serde_json::Value> {
    let mut prefix = [0u8; 4];
    match s.read_exact(&mut prefix) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) => panic!("read: {e}"),
    }
    let mut buf = vec![0u8; u32::from_be_bytes(prefix) as usize];
    s.read_exact(&mut buf).expect("read body");
    Some(serde_json::from_slice(&buf).expect("response is JSON"))
}

/// Whether the peer closed the stream (reads EOF or a reset).
pub fn is_closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

/// A finished command's stdout and stderr, for failure messages and output checks.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A JSON file (a Sigstore bundle, `--json` output), parsed.
pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).expect("read the JSON file")).expect("JSON")
}

/// Writes `key`'s public key (PEM) into `dir`, for verifiers that take a key file.
pub fn write_pubkey(agent: &Agent, key: &str, dir: &Path) -> PathBuf {
    let p = dir.join(format!("{}.pub.pem", key.replace('/', "_")));
    let pem = agent
        .client()
        .public_key(key)
        .expect("the agent's public key")
        .pem;
    std::fs::write(&p, pem).expect("write the public key");
    p
}

/// A SoftHSM2 token behind an agent, with `keys` (NAME, ALG) generated through the CLI.
pub fn agent_with_keys(keys: &[(&str, &str)]) -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token("sig", "so-pin-1", "user-pin-1");
    let pin = hsm.pin_file("pin", "user-pin-1");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", "sig", &pin))
        .start();
    for (name, alg) in keys {
        let out = agent.cli(&["keys", "generate", name, "--alg", alg]);
        assert!(out.status.success(), "{}", output_text(&out));
    }
    (hsm, agent)
}

/// `pkcs11-tool --module libwaxseal_pkcs11.so ARGS` in `dir`, against `agent`.
pub fn module_tool(agent: &Agent, dir: &Path, args: &[&str]) -> Output {
    require("pkcs11-tool");
    Command::new("pkcs11-tool")
        .current_dir(dir)
        .env("WAXSEAL_SOCK", &agent.socket)
        .arg("--module")
        .arg(&bins().pkcs11_module)
        .args(args)
        .output()
        .expect("run pkcs11-tool")
}

/// As [`module_tool`], failing the test unless it exits 0; returns stdout.
pub fn module_tool_ok(agent: &Agent, dir: &Path, args: &[&str]) -> String {
    let out = module_tool(agent, dir, args);
    assert!(
        out.status.success(),
        "pkcs11-tool {args:?} exited with {}:\n{}\nagent log:\n{}",
        out.status,
        output_text(&out),
        agent.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes an executable shell script `dir/name` (`#!/bin/sh` and `body`), e.g. a
/// `confirm_program` or an askpass; returns its path.
pub fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write the script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
        .expect("make the script executable");
    p
}

/// Runs a command, asserting success; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Hex dump for messages.
pub fn hex_of(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// A software TPM (`swtpm socket --tpm2`) on free loopback ports, with its state in a
/// temp dir. Killing it and starting it again on the same state is a TPM restart.
///
/// swtpm serves one connection at a time: while an agent holds its connection, other
/// TPM programs (tpm2-tools, the tpm2-openssl provider) wait. Tests stop the agent
/// before running them.
#[derive(Debug)]
pub struct Swtpm {
    dir: TempDir,
    /// The TPM command port; the control port is `port + 1`.
    pub port: u16,
}

impl Swtpm {
    /// Starts a fresh TPM.
    pub fn start() -> Swtpm {
        require("swtpm");
        let dir = tempfile::Builder::new()
            .prefix("swtpm-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir(dir.path().join("state")).expect("state dir");
        let mut tpm = Swtpm { dir, port: 0 };
        tpm.launch();
        tpm
    }

    fn launch(&mut self) {
        for _ in 0..20 {
            let port = if self.port != 0 {
                self.port
            } else {
                free_port_pair()
            };
            let state = self.dir.path().join("state");
            let pid = self.dir.path().join("pid");
            let _ = std::fs::remove_file(&pid);
            let out = Command::new("swtpm")
                .arg("socket")
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .arg("--tpm2")
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .args(["--flags", "not-need-init,startup-clear"])
                .arg("--pid")
                .arg(format!("file={}", pid.display()))
                .arg("--log")
                .arg(format!(
                    "file={},level=1",
                    self.dir.path().join("swtpm.log").display()
                ))
                .arg("--daemon")
                .output()
                .expect("run swtpm");
            if !out.status.success() {
                if self.port != 0 {
                    // Restarting on our own port: it may linger in TIME_WAIT briefly.
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                continue;
            }
            self.port = port;
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "swtpm did not listen on {port}");
                std::thread::sleep(Duration::from_millis(10));
            }
            return;
        }
        panic!("swtpm would not start: {}", self.log());
    }

    /// The TCTI string for this TPM.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// swtpm's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("swtpm.log")).unwrap_or_default()
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.path().join("pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// Kills the TPM (SIGKILL), as a crash or power loss would.
    pub fn kill(&self) {
        if let Some(pid) = self.pid().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while rustix::process::test_kill_process(pid).is_ok() {
                assert!(Instant::now() < deadline, "swtpm survived SIGKILL");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_file(self.dir.path().join("pid"));
    }

    /// Starts the TPM again on the same state and port: a TPM restart.
    pub fn restart(&mut self) {
        self.launch();
    }

    /// A `tpm2-tools` command aimed at this TPM.
    pub fn tool(&self, program: &str) -> Command {
        require(program);
        let mut c = Command::new(program);
        c.env("TPM2TOOLS_TCTI", self.tcti())
            .current_dir(self.dir.path());
        c
    }

    /// An `openssl` command with the tpm2-openssl provider aimed at this TPM.
    pub fn openssl(&self) -> Command {
        require("openssl");
        require("/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so");
        let mut c = Command::new("openssl");
        c.env("TPM2OPENSSL_TCTI", self.tcti())
            .current_dir(self.dir.path());
        c
    }

    /// A scratch dir beside the TPM state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two consecutive free loopback ports (swtpm's command and control ports).
fn free_port_pair() -> u16 {
    loop {
        let a = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = a.local_addr().expect("addr").port();
        if port < 65535 && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A `[[device]]` entry for a TPM.
pub fn tpm_device(name: &str, tpm: &Swtpm, key_dir: &Path, pin_file: Option<&Path>) -> String {
    let mut s = format!(
        "[[device]]\nname = \"{name}\"\nkind = \"tpm\"\ntcti = \"{}\"\nkey_dir = \"{}\"\n",
        tpm.tcti(),
        key_dir.display()
    );
    if let Some(p) = pin_file {
        s.push_str(&format!("pin = \"file:{}\"\n", p.display()));
    }
    s
}

/// The Node.js tools of `pkcs11-tests/js` (@sigstore/verify, @sigstore/mock): their
/// folder, after checking that node and the npm packages are installed.
pub fn sigstore_js() -> PathBuf {
    require("node");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
    for package in ["@sigstore/verify", "@sigstore/mock", "@sigstore/bundle"] {
        assert!(
            dir.join("node_modules").join(package).is_dir(),
            "npm package {package} is not installed in {}: run scripts/install-deps",
            dir.display()
        );
    }
    // The TSA and Rekor v2 tests need @sigstore/mock ≥ 0.13 (package-lock.json).
    let manifest = dir.join("node_modules/@sigstore/mock/package.json");
    let version = std::fs::read(&manifest)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["version"].as_str().map(String::from))
        .unwrap_or_default();
    let numbers: Vec<u32> = version
        .split('.')
        .take(2)
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        matches!(numbers.as_slice(), [major, _] if *major > 0)
            || matches!(numbers.as_slice(), [0, minor] if *minor >= 13),
        "@sigstore/mock {version} is older than 0.13 in {}: run scripts/install-deps",
        dir.display()
    );
    dir
}

/// `node js/verify.js BUNDLE ARTIFACT KEY [REKOR_KEY REKOR_URL]`: @sigstore/verify's verdict,
/// `Ok(())` or `Err(its message)`.
pub fn sigstore_js_verify(
    bundle: &Path,
    artifact: &Path,
    key_pem: &Path,
    rekor: Option<&MockRekor>,
) -> Result<(), String> {
    let dir = sigstore_js();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("verify.js"))
        .arg(bundle)
        .arg(artifact)
        .arg(key_pem);
    if let Some(r) = rekor {
        cmd.arg(&r.public_key).arg(&r.url);
    }
    let out = cmd.output().expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.trim() == "OK" {
        Ok(())
    } else {
        Err(text)
    }
}

/// A local Rekor v1: @sigstore/mock's `rekorHandler` in a Node HTTP server on loopback.
#[derive(Debug)]
pub struct MockRekor {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The log's public key (PEM file).
    pub public_key: PathBuf,
    _dir: TempDir,
}

impl MockRekor {
    /// Starts it and waits until it listens.
    pub fn start() -> MockRekor {
        let js = sigstore_js();
        let dir = tempfile::Builder::new()
            .prefix("rekor-")
            .tempdir()
            .expect("tempdir");
        let public_key = dir.path().join("rekor.pub.pem");
        let mut child = Command::new("node")
            .arg(js.join("rekor.js"))
            .arg(&public_key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node rekor.js");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        let port = line
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("rekor.js did not start: {line:?}"))
            .trim()
            .to_string();
        MockRekor {
            child,
            url: format!("http://127.0.0.1:{port}"),
            public_key,
            _dir: dir,
        }
    }
}

impl Drop for MockRekor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A service of the Sigstore tests run as a child process on 127.0.0.1 (a Node or
/// Python script that prints `PORT <n>` once it listens); killed when dropped.
#[derive(Debug)]
pub struct LocalService {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its temp dir: keys and certificates it wrote.
    pub dir: TempDir,
}

impl LocalService {
    /// Runs `program args…` (`{dir}` in an argument is replaced by the temp dir) and
    /// waits for its `PORT` line.
    pub fn start(program: &str, args: &[&str]) -> LocalService {
        let dir = tempfile::Builder::new()
            .prefix("svc-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path().to_str().expect("utf-8 temp dir");
        let mut child = Command::new(program)
            .args(args.iter().map(|a| a.replace("{dir}", d)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program} {args:?}: {e}"));
        let mut stdout = child.stdout.take().expect("stdout");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        let port = line
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("{program} {args:?} did not start: {line:?}"))
            .trim()
            .to_string();
        LocalService {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// A file in its temp dir.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// @sigstore/mock's `tsaHandler` as an RFC 3161 TSA (`js/tsa.js`); `mode` is `ok`,
    /// `garbage` or `wrong-nonce`. Its chain is [`LocalService::file`]`("chain.pem")`.
    pub fn mock_tsa(mode: &str) -> LocalService {
        let js = sigstore_js();
        let script = js.join("tsa.js");
        LocalService::start(
            "node",
            &[script.to_str().expect("utf-8"), "{dir}/chain.pem", mode],
        )
    }

    /// The Rekor v2 stand-in (`js/rekor-v2.js`: @sigstore/mock's v2 handler answers
    /// entries no verifier accepts); `mode` is `ok` or `refuse`. Its key is
    /// [`LocalService::file`]`("rekor.pub.pem")`.
    pub fn rekor_v2(mode: &str) -> LocalService {
        let js = sigstore_js();
        let script = js.join("rekor-v2.js");
        LocalService::start(
            "node",
            &[script.to_str().expect("utf-8"), "{dir}/rekor.pub.pem", mode],
        )
    }

    /// OpenSSL's own TSA (`openssl ts -reply`) behind Python's `http.server`
    /// (`py/openssl_tsa.py`), with an RSA TSA certificate whose only extended key usage
    /// is a critical timeStamping, issued by a fresh root. Its files: `root.pem`,
    /// `tsa.pem` (the TSA certificate), `chain.pem` (both, TSA first).
    pub fn openssl_tsa() -> LocalService {
        require("openssl");
        let python = require("python3");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/openssl_tsa.py");
        LocalService::start(
            python.to_str().expect("utf-8"),
            &[script.to_str().expect("utf-8"), "{dir}"],
        )
    }
}

impl Drop for LocalService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `node js/verify.js BUNDLE ARTIFACT KEY [REKOR_KEY REKOR_URL] [--tsa CHAIN]`:
/// @sigstore/verify's verdict against a trusted root naming exactly the log
/// (`(key PEM, URL)`) and the TSA (its chain) given.
pub fn sigstore_js_verify_with(
    bundle: &Path,
    artifact: &Path,
    key_pem: &Path,
    rekor: Option<(&Path, &str)>,
    tsa_chain: Option<&Path>,
) -> Result<(), String> {
    let dir = sigstore_js();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("verify.js"))
        .arg(bundle)
        .arg(artifact)
        .arg(key_pem);
    if let Some((key, url)) = rekor {
        cmd.arg(key).arg(url);
    }
    if let Some(chain) = tsa_chain {
        cmd.arg("--tsa").arg(chain);
    }
    let out = cmd.output().expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.trim() == "OK" {
        Ok(())
    } else {
        Err(text)
    }
}

/// What the benchmark binaries share: timing loops, the command line, and the
/// Markdown tables `scripts/bench` collects into docs/benchmarks.md.
pub mod bench {
    use std::fmt::Write as _;
    use std::sync::{Arc, Barrier};
    use std::time::{Duration, Instant};

    /// The `q` quantile of `lat` (sorts it).
    pub fn pct(lat: &mut [Duration], q: f64) -> Duration {
        lat.sort_unstable();
        lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)]
    }

    /// Microseconds.
    pub fn us(d: Duration) -> f64 {
        d.as_secs_f64() * 1e6
    }

    /// Runs `op` for `secs` after 20 warm-up runs; returns (rate, p50, p99).
    pub fn measure(secs: f64, mut op: impl FnMut()) -> (f64, Duration, Duration) {
        for _ in 0..20 {
            op();
        }
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut lat = Vec::new();
        while Instant::now() < end {
            let t = Instant::now();
            op();
            lat.push(t.elapsed());
        }
        let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
        (rate, pct(&mut lat, 0.5), pct(&mut lat, 0.99))
    }

    /// One measured row: signatures per second and per-request latency.
    #[derive(Debug, Clone, Copy)]
    pub struct Run {
        /// Signatures per second, all clients together.
        pub rate: f64,
        /// Median latency of one request.
        pub p50: Duration,
        /// 99th percentile.
        pub p99: Duration,
    }

    /// `threads` clients, each made by `setup` on its own thread, running `op` in a loop
    /// for `secs` after 20 warm-up runs each; they start together.
    pub fn measure_threads<S: 'static>(
        threads: usize,
        secs: f64,
        setup: impl Fn() -> S + Send + Sync + 'static,
        op: impl Fn(&mut S) + Send + Sync + 'static,
    ) -> Run {
        let setup = Arc::new(setup);
        let op = Arc::new(op);
        let barrier = Arc::new(Barrier::new(threads + 1));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (setup, op, barrier) = (setup.clone(), op.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut state = setup();
                    for _ in 0..20 {
                        op(&mut state);
                    }
                    barrier.wait();
                    let end = Instant::now() + Duration::from_secs_f64(secs);
                    let mut lat = Vec::with_capacity(100_000);
                    while Instant::now() < end {
                        let t = Instant::now();
                        op(&mut state);
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("a benchmark client failed"));
        }
        let elapsed = start.elapsed();
        let rate = all.len() as f64 / elapsed.as_secs_f64();
        Run {
            rate,
            p50: pct(&mut all, 0.5),
            p99: pct(&mut all, 0.99),
        }
    }

    /// `--repeat N` (default 3): rounds of each comparison, of which the median is
    /// shown, since one round on a shared VM can be off by ±0.2 in either direction.
    pub fn repeat() -> usize {
        arg("--repeat")
            .map_or(3, |s| s.parse().expect("--repeat N"))
            .max(1)
    }

    /// Runs `round` (a baseline and a measured run) `n` times; returns the round with
    /// the median ratio (measured/baseline rate) and the lowest and highest ratios.
    pub fn median_round(n: usize, mut round: impl FnMut() -> (Run, Run)) -> (Run, Run, f64, f64) {
        let mut rounds: Vec<(Run, Run)> = (0..n).map(|_| round()).collect();
        rounds.sort_by(|a, b| (a.1.rate / a.0.rate).total_cmp(&(b.1.rate / b.0.rate)));
        let lo = rounds[0].1.rate / rounds[0].0.rate;
        let hi = rounds[n - 1].1.rate / rounds[n - 1].0.rate;
        let (base, measured) = rounds[n / 2];
        (base, measured, lo, hi)
    }

    /// A ratio cell: the median in bold, and the range over the rounds.
    pub fn ratio_cell(median: f64, lo: f64, hi: f64, suffix: &str) -> String {
        if (hi - lo).abs() < 0.005 {
            format!("**{median:.2}{suffix}**")
        } else {
            format!("**{median:.2}{suffix}** ({lo:.2}–{hi:.2})")
        }
    }

    /// The value after `--name` on the command line.
    pub fn arg(name: &str) -> Option<String> {
        std::env::args().skip_while(|a| a != name).nth(1)
    }

    /// `--seconds N` (per row).
    pub fn seconds(default: f64) -> f64 {
        arg("--seconds").map_or(default, |s| s.parse().expect("--seconds N"))
    }

    /// A list of client counts given as `--name 1,2,16`; `none` is empty.
    pub fn counts(name: &str, default: &[usize]) -> Vec<usize> {
        match arg(name) {
            None => default.to_vec(),
            Some(list) if list == "none" => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|n| n.trim().parse().unwrap_or_else(|_| panic!("{name} N,N,…")))
                .collect(),
        }
    }

    /// `--audit group|each|off`: the agent config for it and the words for the tables.
    pub fn audit() -> (&'static str, &'static str, &'static str) {
        let audit = arg("--audit").unwrap_or_else(|| "group".into());
        match audit.as_str() {
            "group" => ("group", "", "fsync, group commit"),
            "each" => (
                "each",
                "[agent]\naudit_group_commit = false\n",
                "fsync per signature",
            ),
            "off" => ("off", "[agent]\naudit_fsync = false\n", "no fsync"),
            other => panic!("--audit group|each|off, not {other}"),
        }
    }

    /// The machine, in a few words: cores, CPU model, memory, OS and kernel.
    pub fn machine() -> String {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mem_gib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        let kernel = read("/proc/sys/kernel/osrelease");
        format!(
            "{cores} × {cpu}, {mem_gib:.0} GiB, {os}, Linux {}",
            kernel.trim()
        )
    }

    /// The machine in a table cell: `2-core Intel Xeon, 24 GiB, Debian 12, Linux 6.18`.
    pub fn machine_short() -> String {
        let full = machine();
        let mut parts = full.splitn(2, " × ");
        let cores = parts.next().unwrap_or_default().to_string();
        let rest = parts.next().unwrap_or_default();
        let fields: Vec<&str> = rest.split(", ").collect();
        let cpu = fields
            .first()
            .copied()
            .unwrap_or_default()
            .replace("(R)", "")
            .replace("(TM)", "")
            .replace(" Processor", "")
            .replace(" CPU", "");
        let cpu: String = cpu.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        let os = fields
            .get(2)
            .map(|o| {
                o.replace("GNU/Linux ", "")
                    .split(" (")
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default();
        let kernel = fields
            .get(3)
            .map(|k| {
                let v = k.trim_start_matches("Linux ");
                v.split('.').take(2).collect::<Vec<_>>().join(".")
            })
            .unwrap_or_default();
        format!(
            "{cores}-core {cpu}, {}, {os}, Linux {kernel}",
            fields.get(1).copied().unwrap_or_default()
        )
    }

    /// How this binary was run, for the tables: its name and arguments (without
    /// `--out FILE`).
    pub fn command() -> String {
        let mut args = std::env::args();
        let program = args.next().unwrap_or_default();
        let name = std::path::Path::new(&program)
            .file_name()
            .map_or(program.clone(), |n| n.to_string_lossy().into_owned());
        let mut words = vec![name];
        let mut skip = false;
        for a in args {
            if skip {
                skip = false;
            } else if a == "--out" {
                skip = true;
            } else {
                words.push(a);
            }
        }
        words.join(" ")
    }

    /// Signatures per second, with thousands separated.
    pub fn rate(r: f64) -> String {
        let n = r.round() as u64;
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    }

    /// A latency, in µs below 10 ms and in ms above.
    pub fn lat(d: Duration) -> String {
        let us = us(d);
        if us < 10_000.0 {
            format!("{us:.0} µs")
        } else {
            format!("{:.1} ms", us / 1000.0)
        }
    }

    /// A Markdown table whose every row ends with the machine and the command that
    /// measured it.
    #[derive(Debug)]
    pub struct Table {
        columns: Vec<String>,
        rows: Vec<Vec<String>>,
        machine: String,
        command: String,
    }

    impl Table {
        /// A table with these leading columns.
        pub fn new(columns: &[&str]) -> Table {
            Table {
                columns: columns.iter().map(|c| c.to_string()).collect(),
                rows: Vec::new(),
                machine: machine_short(),
                command: command(),
            }
        }

        /// Adds a row (as many cells as columns).
        pub fn row(&mut self, cells: Vec<String>) {
            assert_eq!(cells.len(), self.columns.len(), "cells of a bench row");
            self.rows.push(cells);
        }

        /// The table as Markdown.
        pub fn markdown(&self) -> String {
            let mut s = String::new();
            let head: Vec<&str> = self.columns.iter().map(String::as_str).collect();
            let _ = writeln!(s, "| {} | machine | command |", head.join(" | "));
            let _ = writeln!(s, "|{}", "---|".repeat(self.columns.len() + 2));
            for r in &self.rows {
                let _ = writeln!(
                    s,
                    "| {} | {} | `{}` |",
                    r.join(" | "),
                    self.machine,
                    self.command
                );
            }
            s
        }
    }

    /// Where the report goes: the file after `--out` (appended), else stdout.
    #[derive(Debug)]
    pub struct Report {
        text: String,
    }

    impl Default for Report {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Report {
        /// An empty report.
        pub fn new() -> Report {
            Report {
                text: String::new(),
            }
        }

        /// A line of prose (Markdown).
        pub fn line(&mut self, text: &str) {
            self.text.push_str(text);
            self.text.push('\n');
        }

        /// A table, with a blank line around it.
        pub fn table(&mut self, t: &Table) {
            if !self.text.is_empty() && !self.text.ends_with("\n\n") {
                self.text.push('\n');
            }
            self.text.push_str(&t.markdown());
            self.text.push('\n');
        }

        /// Writes it out (stdout, and `--out FILE` if given).
        pub fn finish(self) {
            use std::io::Write as _;
            print!("{}", self.text);
            if let Some(path) = arg("--out") {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap_or_else(|e| panic!("--out {path}: {e}"));
                f.write_all(self.text.as_bytes())
                    .unwrap_or_else(|e| panic!("--out {path}: {e}"));
            }
        }
    }

    /// The columns of a device table: path, clients, rate, p50, p99, agent/direct.
    pub fn device_table() -> Table {
        Table::new(&[
            "path",
            "clients",
            "signatures/s",
            "p50",
            "p99",
            "agent/direct",
        ])
    }

    /// A device table row for `run`; `ratio` is empty for a baseline.
    pub fn run_row(path: &str, clients: usize, run: &Run, ratio: String) -> Vec<String> {
        vec![
            path.to_string(),
            clients.to_string(),
            rate(run.rate),
            lat(run.p50),
            lat(run.p99),
            ratio,
        ]
    }

    /// The device table row of what the agent adds at one client: p50 and p99
    /// differences, and 1/rate_agent − 1/rate_direct.
    pub fn added_row(direct: &Run, agent: &Run) -> Vec<String> {
        vec![
            "added latency (agent − direct)".into(),
            "1".into(),
            String::new(),
            format!("{:.0} µs", us(agent.p50) - us(direct.p50)),
            format!("{:.0} µs", us(agent.p99) - us(direct.p99)),
            format!(
                "1/rate: {:.0} µs",
                (1.0 / agent.rate - 1.0 / direct.rate) * 1e6
            ),
        ]
    }

    /// `met` or `**missed**`.
    pub fn verdict(ok: bool) -> String {
        if ok { "met" } else { "**missed**" }.to_string()
    }

    /// Resident memory of a process, in KiB.
    pub fn rss_kib(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}
