//! `waxseal demo`: the embedded default, with nothing but SoftHSM2 installed and no root.
//!
//! Creates a SoftHSM2 token under the state dir (`demo/tokens`), writes a config for it,
//! starts `waxseal-agent` in the background on the usual socket, generates `demo/release`
//! (P-256) on the token, signs a file, verifies the signature and says what it did.
//! Running it again reuses the token, the key and a running demo agent.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use waxseal_proto::client::{Client, ClientError};
use waxseal_proto::paths;
use waxseal_proto::proto::{ErrorCode, HashAlg, KeyAlg};

use super::Ctx;
use crate::verify::{hash_file, verify_file};
use crate::DemoArgs;

const DEVICE: &str = "demo";
const TOKEN: &str = "waxseal-demo";
const KEY: &str = "demo/release";

/// Where SoftHSM2's module is on Debian/Ubuntu and from source builds.
const MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

struct Layout {
    dir: PathBuf,
    state: PathBuf,
    runtime: PathBuf,
    socket: PathBuf,
}

impl Layout {
    fn new(ctx: &Ctx) -> Result<Layout> {
        let state = paths::state_dir();
        let socket = ctx.socket.clone();
        if socket.file_name().and_then(|n| n.to_str()) != Some(paths::AGENT_SOCKET) {
            bail!(
                "the demo starts an agent, which names its socket {}; give --socket DIR/{} (got {})",
                paths::AGENT_SOCKET,
                paths::AGENT_SOCKET,
                socket.display()
            );
        }
        let runtime = socket
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(paths::runtime_dir);
        Ok(Layout {
            dir: state.join("demo"),
            state,
            runtime,
            socket,
        })
    }
    fn conf(&self) -> PathBuf {
        self.dir.join("softhsm2.conf")
    }
    fn pid(&self) -> PathBuf {
        self.dir.join("agent.pid")
    }
}

pub fn run(ctx: &Ctx, args: DemoArgs) -> Result<()> {
    let layout = Layout::new(ctx)?;
    if args.stop {
        return stop(&layout);
    }
    let say = |s: String| {
        if !ctx.json {
            outln!("{s}");
        }
    };
    let module = MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("SoftHSM2 is not installed (no libsofthsm2.so found): run scripts/install-deps, or apt-get install softhsm2")?;
    fs::create_dir_all(&layout.dir)
        .with_context(|| format!("cannot create {}", layout.dir.display()))?;
    fs::set_permissions(&layout.dir, fs::Permissions::from_mode(0o700))?;

    // 1. The token.
    let created = ensure_token(&layout)?;
    say(format!(
        "1. SoftHSM2 token '{TOKEN}' {} in {}",
        if created { "created" } else { "found" },
        layout.dir.join("tokens").display()
    ));

    // 2. The config.
    let config = layout.dir.join("config.toml");
    write_private(
        &config,
        &format!(
            "# Written by `waxseal demo`.\n[[device]]\nname = \"{DEVICE}\"\nkind = \"pkcs11\"\nmodule = \"{}\"\ntoken = \"{TOKEN}\"\npin = \"file:{}\"\n",
            module.display(),
            layout.dir.join("pin").display()
        ),
    )?;
    say(format!("2. config written to {}", config.display()));

    // 3. The agent.
    let (mut client, started) = ensure_agent(&layout, &config)?;
    say(format!(
        "3. {} {} on {}",
        client.agent(),
        if started {
            "started"
        } else {
            "already running"
        },
        layout.socket.display()
    ));

    // 4. The key.
    let had = client.list_keys()?.keys.iter().any(|k| k.name == KEY);
    if !had {
        match client.generate_key(KEY, KeyAlg::P256) {
            Ok(_) => {}
            Err(ClientError::Agent(e)) if e.code == ErrorCode::KeyExists => {}
            Err(e) => return Err(e.into()),
        }
    }
    let pk = client.public_key(KEY)?;
    let pub_path = layout.dir.join("release.pub.pem");
    fs::write(&pub_path, &pk.pem)?;
    say(format!(
        "4. key {KEY} (P-256) {} inside the token; public key in {}",
        if had { "found" } else { "generated" },
        pub_path.display()
    ));

    // 5. A signature.
    let file = layout.dir.join("hello.txt");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    fs::write(&file, format!("Hello from waxseal at unix time {now}.\n"))?;
    let digest = hash_file(&file, HashAlg::Sha256)?;
    let signed = client.sign_blob(KEY, "hello.txt", &digest, HashAlg::Sha256)?;
    let sig_path = layout.dir.join("hello.txt.sig");
    fs::write(&sig_path, format!("{}\n", B64.encode(&signed.signature.0)))?;
    say(format!(
        "5. signed {} ({}); signature in {}",
        file.display(),
        signed.alg,
        sig_path.display()
    ));

    // 6. Verified here, with the public key only.
    let alg = verify_file(&pk.spki_der.0, &file, &signed.signature.0, false)?;
    say(format!("6. signature verified with the public key ({alg})"));

    let pid = fs::read_to_string(layout.pid()).unwrap_or_default();
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "token": TOKEN, "token_dir": layout.dir.join("tokens"), "config": config,
            "socket": layout.socket, "agent_pid": pid.trim(), "agent_started": started,
            "key": KEY, "key_generated": !had, "public_key": pub_path,
            "file": file, "signature": sig_path, "alg": signed.alg, "verified": true,
        }));
    }
    let sock_hint = if ctx.socket == paths::runtime_dir().join(paths::AGENT_SOCKET) {
        String::new()
    } else {
        format!(
            "--socket {} ",
            sh_quote(&layout.socket.display().to_string())
        )
    };
    let (me, off_path) = self_command();
    let q = |p: &Path| sh_quote(&p.display().to_string());
    outln!();
    if off_path {
        outln!("waxseal is not on your PATH, so the commands below name it by its path;");
        outln!("`scripts/install --user` puts it in ~/.local/bin.");
    }
    outln!("Try it yourself:");
    outln!("  {me} {sock_hint}keys list");
    outln!("  {me} {sock_hint}sign {} --key {KEY}", q(&file));
    outln!("  {me} verify {} --public-key {}", q(&file), q(&pub_path));
    outln!(
        "  openssl dgst -sha256 -verify {} -signature <(base64 -d {}) {}",
        q(&pub_path),
        q(&sig_path),
        q(&file)
    );
    outln!();
    outln!(
        "The agent (pid {}) keeps running; its log is {}.",
        pid.trim(),
        layout.dir.join("agent.log").display()
    );
    outln!("Stop it with: {me} {sock_hint}demo --stop");
    Ok(())
}

/// How the user runs this program: `waxseal` when that name on `PATH` is this very
/// program, else its path (relative to the current directory when it lies below it, as
/// `./target/release/waxseal` after `scripts/demo`); the flag says it is not on `PATH`.
fn self_command() -> (String, bool) {
    let Ok(exe) = std::env::current_exe().and_then(fs::canonicalize) else {
        return ("waxseal".into(), false);
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| fs::canonicalize(dir.join("waxseal")).is_ok_and(|found| found == exe))
    });
    if on_path {
        return ("waxseal".into(), false);
    }
    let shown = std::env::current_dir()
        .ok()
        .and_then(|cwd| fs::canonicalize(cwd).ok())
        .and_then(|cwd| {
            exe.strip_prefix(&cwd)
                .ok()
                .map(|rel| Path::new(".").join(rel))
        })
        .unwrap_or_else(|| exe.clone());
    (sh_quote(&shown.display().to_string()), true)
}

/// `word` as one shell word: unchanged when it holds only characters no shell treats
/// specially, else in single quotes.
fn sh_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:=@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Writes a file readable by the owner only.
fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn random_digits(n: usize) -> Result<String> {
    let mut bytes = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| char::from(b'0' + b % 10)).collect())
}

/// Creates the token unless a previous run did. Returns whether it was created.
fn ensure_token(layout: &Layout) -> Result<bool> {
    let tokens = layout.dir.join("tokens");
    let marker = layout.dir.join("token-initialized");
    fs::create_dir_all(&tokens)?;
    write_private(
        &layout.conf(),
        &format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )?;
    if marker.exists() && fs::read_dir(&tokens)?.next().is_some() {
        return Ok(false);
    }
    let pin = random_digits(8)?;
    let so_pin = random_digits(8)?;
    write_private(&layout.dir.join("pin"), &format!("{pin}\n"))?;
    write_private(&layout.dir.join("so-pin"), &format!("{so_pin}\n"))?;
    // softhsm2-util takes PINs as arguments; they protect a demo token only.
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", layout.conf())
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--so-pin",
            &so_pin,
            "--pin",
            &pin,
        ])
        .output()
        .context(
            "cannot run softhsm2-util: run scripts/install-deps, or apt-get install softhsm2",
        )?;
    if !out.status.success() {
        bail!(
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    fs::write(&marker, b"")?;
    Ok(true)
}

/// The agent binary: $WAXSEAL_AGENT, next to this program, or on PATH.
fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WAXSEAL_AGENT") {
        return PathBuf::from(p);
    }
    if let Ok(exe) = std::env::current_exe() {
        let beside = exe.with_file_name("waxseal-agent");
        if beside.exists() {
            return beside;
        }
    }
    PathBuf::from("waxseal-agent")
}

/// Connects to a running demo agent, or starts one.
fn ensure_agent(layout: &Layout, config: &Path) -> Result<(Client, bool)> {
    if let Ok(mut client) = Client::connect(&layout.socket) {
        let status = client.status()?;
        if status.devices.iter().any(|d| d.name == DEVICE) {
            return Ok((client, false));
        }
        bail!(
            "an agent without the demo device already listens on {}; stop it, or run the demo on another socket: waxseal --socket /tmp/waxseal-demo/agent.sock demo",
            layout.socket.display()
        );
    }
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.dir.join("agent.log"))?;
    let bin = agent_binary();
    let child = Command::new(&bin)
        .arg("--config")
        .arg(config)
        .arg("--runtime-dir")
        .arg(&layout.runtime)
        .arg("--state-dir")
        .arg(&layout.state)
        .env("SOFTHSM2_CONF", layout.conf())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0) // not killed with the terminal's Ctrl-C
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (build it with `cargo build --release`)",
                bin.display()
            )
        })?;
    fs::write(layout.pid(), format!("{}\n", child.id()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(&layout.socket) {
            Ok(c) => return Ok((c, true)),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                let log = fs::read_to_string(layout.dir.join("agent.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "the agent did not come up: {e}\nlast lines of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}

fn stop(layout: &Layout) -> Result<()> {
    let text =
        fs::read_to_string(layout.pid()).context("no demo agent was started (no agent.pid)")?;
    let raw: i32 = text
        .trim()
        .parse()
        .context("agent.pid does not hold a pid")?;
    let pid = rustix::process::Pid::from_raw(raw).context("agent.pid does not hold a pid")?;
    if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_err() {
        let _ = fs::remove_file(layout.pid());
        outln!("the demo agent (pid {raw}) is not running");
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while rustix::process::test_kill_process(pid).is_ok() && Instant::now() < deadline {
        if !layout.socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = fs::remove_file(layout.pid());
    outln!("stopped the demo agent (pid {raw})");
    Ok(())
}
