//! Test harness: a private pcscd with the vpcd reader plus the emulator process.
//!
//! pcscd is one per machine (`/run/pcscd/pcscd.comm`), so [`Harness::start`]
//! first takes an exclusive lock on [`LOCK_FILE`] (held until the harness is
//! dropped), kills processes left behind by an earlier harness that died, then
//! starts `pcscd -f -c <dir>` with one vpcd reader file and the `piv-emulator`
//! binary, and waits until the reader shows the card. Dropping the harness stops
//! both processes. Tests in other crates find the binary through
//! [`emulator_binary`].

use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::control;

/// Lock file serializing every harness on this machine.
pub const LOCK_FILE: &str = "/tmp/waxseal-piv-harness.lock";
/// pcscd binary.
pub const PCSCD: &str = "/usr/sbin/pcscd";
/// vpcd reader driver.
pub const VPCD_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";
/// Friendly name of the harness reader; pcscd appends ` 00 00`.
pub const READER_PREFIX: &str = "waxseal virtual PCD";
/// pcscd's runtime directory (pid file and client socket).
const PCSCD_RUN: &str = "/run/pcscd";
/// Marker in the temporary directory name, used to find stale processes.
const MARKER: &str = "waxseal-piv-harness-";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the harness could not start or act.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// pcscd or the vpcd driver is not installed.
    #[error("{0} not found: install pcscd and vsmartcard-vpcd (scripts/install-deps)")]
    Missing(String),
    /// A pcscd that this harness did not start is running.
    #[error("a pcscd not started by this harness is running (pid {0}); stop it first")]
    ForeignPcscd(i32),
    /// Starting a process, writing a file or talking to the control socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// PC/SC calls failed.
    #[error("PC/SC: {0}")]
    Pcsc(#[from] pcsc::Error),
    /// pcscd or the card did not come up in time.
    #[error("timed out waiting for {what}; logs in {logs}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// Directory with pcscd.log and emulator.log.
        logs: String,
    },
    /// The emulator answered a control command with an error.
    #[error("control socket answered {0:?}")]
    Control(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// How to start the harness.
#[derive(Debug, Clone)]
pub struct Config {
    /// Path of the `piv-emulator` binary.
    pub emulator: PathBuf,
    /// Serial number of the emulated card.
    pub serial: u32,
    /// Touch delay passed as `--touch-delay-ms`.
    pub touch_delay: Duration,
    /// vpcd port; pcscd's reader uses it as CHANNELID.
    pub port: u16,
}

impl Config {
    /// Defaults: serial 13 371 337, touch delay 300 ms, port 30059: below the
    /// ephemeral range (32768–60999), where a TIME_WAIT left by any outgoing
    /// connection (swtpm's, for one) would make vpcd's bind fail.
    pub fn new(emulator: PathBuf) -> Self {
        Self {
            emulator,
            serial: 13_371_337,
            touch_delay: Duration::from_millis(300),
            port: 30059,
        }
    }
}

/// The `piv-emulator` binary: `$PIV_EMULATOR_BIN`, else next to the running test's
/// target directory (`target/<profile>/piv-emulator`; build it first with
/// `cargo build -p piv-emulator`).
pub fn emulator_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PIV_EMULATOR_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/debug/deps/test-binary → target/debug/piv-emulator
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("piv-emulator"))
        .unwrap_or_else(|| PathBuf::from("piv-emulator"))
}

/// A running pcscd + emulator pair; stopped on drop.
#[derive(Debug)]
pub struct Harness {
    dir: tempfile::TempDir,
    pcscd: Child,
    emulator: Child,
    reader: String,
    serial: u32,
    root_pem: String,
    // Dropped last: the lock outlives the processes.
    _lock: File,
}

impl Harness {
    /// Takes the machine-wide lock, starts pcscd and the emulator, and waits until
    /// the card is in the reader.
    pub fn start(config: Config) -> Result<Self, HarnessError> {
        for path in [PCSCD, VPCD_DRIVER] {
            if !Path::new(path).exists() {
                return Err(HarnessError::Missing(path.to_owned()));
            }
        }
        if !config.emulator.exists() {
            return Err(HarnessError::Missing(format!(
                "{} (cargo build -p piv-emulator, or set PIV_EMULATOR_BIN)",
                config.emulator.display()
            )));
        }
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .map_err(io(LOCK_FILE))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io(LOCK_FILE)(e.into()))?;
        kill_stale()?;

        let dir = tempfile::Builder::new()
            .prefix(MARKER)
            .tempdir()
            .map_err(io("temporary directory"))?;
        let conf = dir.path().join("readers");
        std::fs::create_dir(&conf).map_err(io("reader directory"))?;
        std::fs::write(
            conf.join("vpcd"),
            format!(
                "FRIENDLYNAME \"{READER_PREFIX}\"\nDEVICENAME /dev/null:0x{port:X}\n\
                 LIBPATH {VPCD_DRIVER}\nCHANNELID 0x{port:X}\n",
                port = config.port
            ),
        )
        .map_err(io("reader file"))?;
        let log = |name: &str| -> Result<File, HarnessError> {
            File::create(dir.path().join(name)).map_err(io(name))
        };

        let state = dir.path().join("state.json");
        let root = Command::new(&config.emulator)
            .arg("--state")
            .arg(&state)
            .arg("--serial")
            .arg(config.serial.to_string())
            .arg("--print-attestation-root")
            .output()
            .map_err(io("piv-emulator --print-attestation-root"))?;
        if !root.status.success() {
            return Err(HarnessError::Io {
                what: "piv-emulator --print-attestation-root".into(),
                source: std::io::Error::other(String::from_utf8_lossy(&root.stderr).into_owned()),
            });
        }
        let root_pem = String::from_utf8_lossy(&root.stdout).into_owned();

        let pcscd = Command::new(PCSCD)
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log("pcscd.log")?)
            .stderr(log("pcscd.err")?)
            .spawn()
            .map_err(io("starting pcscd"))?;
        let emulator = Command::new(&config.emulator)
            .arg("--port")
            .arg(config.port.to_string())
            .arg("--state")
            .arg(&state)
            .arg("--touch-delay-ms")
            .arg(config.touch_delay.as_millis().to_string())
            .arg("--control")
            .arg(dir.path().join("control.sock"))
            .stdin(Stdio::null())
            .stdout(log("emulator.out")?)
            .stderr(log("emulator.log")?)
            .spawn()
            .map_err(io("starting piv-emulator"))?;
        let mut harness = Self {
            reader: format!("{READER_PREFIX} 00 00"),
            serial: config.serial,
            root_pem,
            dir,
            pcscd,
            emulator,
            _lock: lock,
        };
        if let Err(e) = harness.wait_card(true) {
            // Keep pcscd.log and emulator.log for the error message's reader.
            harness.dir.disable_cleanup(true);
            return Err(e);
        }
        Ok(harness)
    }

    /// Name of the PC/SC reader holding the card.
    pub fn reader_name(&self) -> &str {
        &self.reader
    }

    /// Serial number of the card.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// PEM of the emulated attestation root CA.
    pub fn attestation_root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Directory with logs, the state file and the control socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a control command and returns the reply.
    pub fn control(&self, command: &str) -> Result<String, HarnessError> {
        let path = self.dir.path().join("control.sock");
        let reply = control::send(&path, command).map_err(io("control socket"))?;
        if reply.starts_with("error") {
            return Err(HarnessError::Control(reply));
        }
        Ok(reply)
    }

    /// Pulls the card out and waits until pcscd sees the reader empty.
    pub fn remove(&self) -> Result<(), HarnessError> {
        self.control("remove")?;
        self.wait_card(false)
    }

    /// Puts the card back and waits until pcscd sees it.
    pub fn insert(&self) -> Result<(), HarnessError> {
        self.control("insert")?;
        self.wait_card(true)
    }

    fn wait_card(&self, present: bool) -> Result<(), HarnessError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let name = CString::new(self.reader.clone()).unwrap_or_default();
        let mut ctx = None;
        loop {
            if ctx.is_none() {
                ctx = pcsc::Context::establish(pcsc::Scope::System).ok();
            }
            if let Some(c) = &ctx {
                let mut states = [pcsc::ReaderState::new(name.clone(), pcsc::State::UNAWARE)];
                match c.get_status_change(Duration::from_millis(100), &mut states) {
                    Ok(()) => {
                        let s = states[0].event_state();
                        if !s.contains(pcsc::State::UNKNOWN)
                            && s.contains(pcsc::State::PRESENT) == present
                            && !s.contains(pcsc::State::MUTE)
                        {
                            return Ok(());
                        }
                    }
                    Err(pcsc::Error::Timeout) => {}
                    // The daemon restarted or is not up yet: start over.
                    Err(_) => ctx = None,
                }
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout {
                    what: if present {
                        "the card in the reader"
                    } else {
                        "the reader to be empty"
                    },
                    logs: self.dir.path().display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.emulator.kill();
        let _ = self.emulator.wait();
        stop(&mut self.pcscd);
    }
}

/// SIGTERM, then SIGKILL after two seconds.
fn stop(child: &mut Child) {
    if let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills pcscd and emulator processes of an earlier harness (their command lines
/// name a directory with [`MARKER`]); refuses to run next to any other pcscd.
fn kill_stale() -> Result<(), HarnessError> {
    let mut victims = Vec::new();
    let mut foreign = None;
    let me = std::process::id();
    let entries = std::fs::read_dir("/proc").map_err(io("/proc"))?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if u32::try_from(pid).ok() == Some(me) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.is_empty() {
            continue; // Kernel thread or zombie.
        }
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let argv0 = cmdline.split(' ').next().unwrap_or_default();
        let is_pcscd = argv0.ends_with("pcscd");
        if cmdline.contains(MARKER) {
            victims.push(pid);
        } else if is_pcscd {
            foreign = Some(pid);
        }
    }
    if let Some(pid) = foreign {
        return Err(HarnessError::ForeignPcscd(pid));
    }
    for pid in &victims {
        if let Some(p) = rustix::process::Pid::from_raw(*pid) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
    // Wait for them to disappear so pcscd's pid file and socket are free.
    let deadline = Instant::now() + Duration::from_secs(3);
    while victims
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}/cmdline")).exists() && alive(*pid))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A killed pcscd whose parent died stays a zombie when nothing reaps orphans
    // (containers); pcscd then refuses to start while its pid file names it.
    let pid_file = Path::new(PCSCD_RUN).join("pcscd.pid");
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        if pid.trim().parse().map(|pid| !alive(pid)).unwrap_or(true) {
            let _ = std::fs::remove_file(&pid_file);
            let _ = std::fs::remove_file(Path::new(PCSCD_RUN).join("pcscd.comm"));
        }
    }
    Ok(())
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}
