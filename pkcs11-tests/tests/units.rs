//! The files that install waxseal into a system: the systemd user units and the udev
//! rule in `udev/`, and `scripts/install`.
//!
//! The units are checked by `systemd-analyze verify` (a broken copy must fail it) and
//! then used: the sockets they describe are handed to a real agent the way systemd
//! hands them over, through `systemd-socket-activate`, and `waxseal` and `ssh-add` talk
//! to it. The udev rule is read by udev's own parser (`udevadm test`, in a private
//! mount namespace) and by a strict parser here. `scripts/install` runs for real into
//! temp dirs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pkcs11_tests::{bins, pkcs11_device, require, SoftHsm};

const UNITS: [&str; 3] = [
    "waxseal-agent.service",
    "waxseal-agent.socket",
    "waxseal-ssh.socket",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn unit_source(name: &str) -> String {
    let path = repo().join("udev/systemd").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The values of `key` in `[section]` of a unit file, in order.
fn unit_values(text: &str, section: &str, key: &str) -> Vec<String> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = s.to_string();
        } else if current == section {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    out.push(v.trim().to_string());
                }
            }
        }
    }
    out
}

fn unit_value(text: &str, section: &str, key: &str) -> String {
    let mut v = unit_values(text, section, key);
    assert_eq!(v.len(), 1, "[{section}] {key}= should appear once: {v:?}");
    v.remove(0)
}

/// The unit with `ExecStart=` pointing at `agent`.
fn with_exec_start(text: &str, agent: &Path) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!("ExecStart={}", agent.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Writes the three units to `dir`, `ExecStart=` rewritten to the built agent.
fn write_units(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for name in UNITS {
        let text = with_exec_start(&unit_source(name), &bins().agent);
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// `systemd-analyze --user verify` on the units in `dir`, as a user manager would load
/// them (unit path `dir` first, then the usual ones). Strict: a warning (an unknown
/// key, a value it ignores) counts as a failure, not only a non-zero exit.
fn analyze_verify(dir: &Path) -> Result<(), String> {
    require("systemd-analyze");
    let scratch = tempfile::tempdir().unwrap();
    let runtime = scratch.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["--user", "verify", "--man=no"])
        .args(UNITS.iter().map(|u| dir.join(u)))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("HOME", scratch.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_STATE_HOME")
        .output()
        .expect("run systemd-analyze");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", out.status, text.trim()))
    }
}

#[test]
fn units_pass_systemd_analyze_verify_and_broken_copies_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    write_units(&good);
    analyze_verify(&good).unwrap_or_else(|e| panic!("the units fail verification: {e}"));

    // An unknown directive: systemd only warns, the strict check refuses it.
    let unknown = tmp.path().join("unknown");
    write_units(&unknown);
    let service = std::fs::read_to_string(unknown.join("waxseal-agent.service")).unwrap();
    let broken = service.replacen("[Service]\n", "[Service]\nFrobnicateSockets=yes\n", 1);
    assert_ne!(broken, service);
    std::fs::write(unknown.join("waxseal-agent.service"), broken).unwrap();
    let err = analyze_verify(&unknown).expect_err("an unknown directive must fail");
    assert!(err.contains("FrobnicateSockets"), "{err}");

    // A binary that is not there: systemd-analyze itself exits non-zero.
    let missing = tmp.path().join("missing");
    write_units(&missing);
    let service = with_exec_start(
        &unit_source("waxseal-agent.service"),
        &tmp.path().join("no/such/waxseal-agent"),
    );
    std::fs::write(missing.join("waxseal-agent.service"), service).unwrap();
    let err = analyze_verify(&missing).expect_err("a missing ExecStart binary must fail");
    assert!(err.contains("not executable"), "{err}");

    // A malformed value in a socket unit.
    let bad_mode = tmp.path().join("bad-mode");
    write_units(&bad_mode);
    let socket = unit_source("waxseal-ssh.socket").replace("SocketMode=0600", "SocketMode=0999");
    std::fs::write(bad_mode.join("waxseal-ssh.socket"), socket).unwrap();
    let err = analyze_verify(&bad_mode).expect_err("SocketMode=0999 must fail");
    assert!(err.contains("0999"), "{err}");
}

#[test]
fn service_is_sandboxed() {
    require("systemd-analyze");
    let service = unit_source("waxseal-agent.service");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("PrivateUsers", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "read-only"),
        ("PrivateTmp", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("SystemCallArchitectures", "native"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(unit_value(&service, "Service", key), value, "{key}=");
    }
    // systemd's own score of the sandbox, computed from the unit file alone.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("units");
    write_units(&dir);
    let runtime = tmp.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["--user", "security", "--offline=yes"])
        .arg(dir.join("waxseal-agent.service"))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("HOME", tmp.path())
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for waxseal-agent.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        level <= 3.0,
        "exposure level {level} (of 10) is too high:\n{text}"
    );
}

/// Waits until `path` exists.
fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn expand(value: &str, home: &Path, runtime: &Path) -> PathBuf {
    let expanded = value
        .replace("%h", &home.display().to_string())
        .replace("%t", &runtime.display().to_string());
    assert!(
        !expanded.contains('%'),
        "a specifier this test does not know: {value}"
    );
    PathBuf::from(expanded)
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn socket_units_hand_both_sockets_to_the_agent() {
    require("systemd-socket-activate");
    require("ssh-add");
    let service = unit_source("waxseal-agent.service");
    let sockets: Vec<(String, String)> = ["waxseal-agent.socket", "waxseal-ssh.socket"]
        .iter()
        .map(|name| {
            let unit = unit_source(name);
            assert_eq!(
                unit_value(&unit, "Socket", "Service"),
                "waxseal-agent.service",
                "{name}"
            );
            assert_eq!(unit_value(&unit, "Socket", "SocketMode"), "0600", "{name}");
            assert_eq!(
                unit_value(&unit, "Socket", "DirectoryMode"),
                "0700",
                "{name}"
            );
            (
                unit_value(&unit, "Socket", "ListenStream"),
                unit_value(&unit, "Socket", "FileDescriptorName"),
            )
        })
        .collect();
    let listed: Vec<String> = unit_values(&service, "Service", "Sockets")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert_eq!(listed, ["waxseal-agent.socket", "waxseal-ssh.socket"]);

    // A home with a token configured where the agent looks by default, and a runtime
    // dir standing in for /run/user/UID.
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let runtime = tmp.path().join("run");
    std::fs::create_dir_all(home.join(".config/waxseal")).unwrap();
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let hsm = SoftHsm::new();
    hsm.init_token("units", "so-pin-1", "user-pin-1");
    let pin = hsm.pin_file("pin", "user-pin-1");
    std::fs::write(
        home.join(".config/waxseal/config.toml"),
        pkcs11_device("hsm", "units", &pin),
    )
    .unwrap();

    // What systemd does for the socket units: the directory (DirectoryMode=), then one
    // listening socket per unit, named by its FileDescriptorName=.
    let paths: Vec<PathBuf> = sockets
        .iter()
        .map(|(listen, _)| expand(listen, &home, &runtime))
        .collect();
    for p in &paths {
        let dir = p.parent().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let names: Vec<&str> = sockets.iter().map(|(_, n)| n.as_str()).collect();
    let exec = unit_value(
        &with_exec_start(&service, &bins().agent),
        "Service",
        "ExecStart",
    );
    let mut argv = exec.split_whitespace();
    let log_path = tmp.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new("systemd-socket-activate");
    for p in &paths {
        cmd.arg("-l").arg(p);
    }
    // systemd-socket-activate passes on only PATH, HOME, USER and TERM, plus -E: like a
    // user manager, which sets XDG_RUNTIME_DIR and not XDG_CONFIG_HOME/XDG_STATE_HOME.
    cmd.arg(format!("--fdname={}", names.join(":")))
        .arg(format!("--setenv=XDG_RUNTIME_DIR={}", runtime.display()))
        .arg(format!("--setenv=SOFTHSM2_CONF={}", hsm.conf().display()))
        .args(argv.by_ref())
        .env("HOME", &home)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut child = cmd.spawn().expect("spawn systemd-socket-activate");
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    for p in &paths {
        wait_for(p);
    }
    let agent_sock = &paths[names.iter().position(|n| *n == "agent").unwrap()];
    let ssh_sock = &paths[names.iter().position(|n| *n == "ssh").unwrap()];

    // The first connection starts the agent.
    let waxseal = |args: &[&str]| {
        Command::new(&bins().cli)
            .arg("--socket")
            .arg(agent_sock)
            .args(args)
            .env_remove("WAXSEAL_SOCK")
            .output()
            .unwrap()
    };
    let out = waxseal(&["status"]);
    assert!(
        out.status.success(),
        "waxseal status: {}\nagent log:\n{}",
        output_text(&out),
        agent_log()
    );
    assert!(output_text(&out).contains("hsm"), "{}", output_text(&out));
    let out = waxseal(&["keys", "generate", "hsm/ssh", "--alg", "p256"]);
    assert!(
        out.status.success(),
        "keys generate: {}\nagent log:\n{}",
        output_text(&out),
        agent_log()
    );
    let out = Command::new("ssh-add")
        .arg("-L")
        .env("SSH_AUTH_SOCK", ssh_sock)
        .output()
        .unwrap();
    let listed = output_text(&out);
    assert!(
        out.status.success()
            && listed.starts_with("ecdsa-sha2-nistp256 ")
            && listed.contains("hsm/ssh"),
        "ssh-add -L over {}: {listed}\nagent log:\n{}",
        ssh_sock.display(),
        agent_log()
    );

    // The directories the service may write are the ones the agent uses: its state dir
    // (created at start) and the sockets' directory.
    let writable: Vec<PathBuf> = unit_values(&service, "Service", "ReadWritePaths")
        .iter()
        .flat_map(|v| {
            v.split_whitespace()
                .map(|p| expand(p.trim_start_matches('-'), &home, &runtime))
                .collect::<Vec<_>>()
        })
        .collect();
    let state = home.join(".local/state/waxseal");
    assert!(state.is_dir(), "the agent's default state dir");
    assert!(
        writable.contains(&state),
        "ReadWritePaths= {writable:?} lacks the agent's state dir {}",
        state.display()
    );
    assert!(writable.contains(&agent_sock.parent().unwrap().to_path_buf()));

    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let log = agent_log();
    assert!(status.success(), "{status}: {log}");
    for name in ["agent.sock", "ssh.sock"] {
        assert!(
            log.lines()
                .any(|l| l.contains("using the socket passed by systemd") && l.contains(name)),
            "the agent did not take {name} from systemd:\n{log}"
        );
    }
    assert!(!log.contains("ignoring a passed socket"), "{log}");
}

/// One `KEY{attr}OP"value"` of a udev rule.
#[derive(Debug, Clone, PartialEq)]
struct Token {
    key: String,
    attr: Option<String>,
    op: String,
    value: String,
}

/// Keys that only match, keys that only assign, keys that do both; and which take
/// `{attribute}`.
const MATCH_KEYS: &[&str] = &[
    "ACTION",
    "DEVPATH",
    "KERNEL",
    "KERNELS",
    "SUBSYSTEM",
    "SUBSYSTEMS",
    "DRIVER",
    "DRIVERS",
    "ATTRS",
    "TAGS",
    "TEST",
    "PROGRAM",
    "RESULT",
    "CONST",
];
const ASSIGN_KEYS: &[&str] = &[
    "OWNER", "GROUP", "MODE", "GOTO", "LABEL", "RUN", "OPTIONS", "IMPORT", "SECLABEL",
];
const BOTH_KEYS: &[&str] = &["NAME", "SYMLINK", "ATTR", "SYSCTL", "ENV", "TAG"];
const ATTR_KEYS: &[&str] = &[
    "ATTR", "ATTRS", "ENV", "SYSCTL", "TEST", "IMPORT", "RUN", "CONST", "SECLABEL",
];

/// Parses a rules file strictly: every line is empty, a comment, or a rule of
/// `KEY=="v"` / `KEY!="v"` / `KEY="v"` / `KEY+="v"` / `KEY-="v"` / `KEY:="v"` tokens
/// separated by commas, with known keys used the way udev allows; every GOTO has its
/// LABEL. Returns the rules with the line number of each.
fn parse_rules(text: &str) -> Result<Vec<(usize, Vec<Token>)>, String> {
    let mut rules = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.ends_with('\\') {
            return Err(format!("line {n}: continuation lines are not used here"));
        }
        let mut tokens = Vec::new();
        let mut rest = line;
        loop {
            let key_end = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .ok_or(format!("line {n}: a key without operator: {rest:?}"))?;
            let key = &rest[..key_end];
            rest = &rest[key_end..];
            let attr = if let Some(r) = rest.strip_prefix('{') {
                let end = r
                    .find('}')
                    .ok_or(format!("line {n}: unclosed {{ after {key}"))?;
                let a = &r[..end];
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"') {
                    return Err(format!("line {n}: bad attribute {{{a}}} of {key}"));
                }
                rest = &r[end + 1..];
                Some(a.to_string())
            } else {
                None
            };
            let op = ["==", "!=", "+=", "-=", ":=", "="]
                .into_iter()
                .find(|op| rest.starts_with(op))
                .ok_or(format!("line {n}: no operator after {key}: {rest:?}"))?;
            rest = rest[op.len()..]
                .strip_prefix('"')
                .ok_or(format!("line {n}: the value of {key} is not quoted"))?;
            let end = rest
                .find('"')
                .ok_or(format!("line {n}: unterminated value of {key}"))?;
            let value = rest[..end].to_string();
            rest = &rest[end + 1..];
            let known =
                MATCH_KEYS.contains(&key) || ASSIGN_KEYS.contains(&key) || BOTH_KEYS.contains(&key);
            if !known {
                return Err(format!("line {n}: unknown key {key}"));
            }
            if ATTR_KEYS.contains(&key) != attr.is_some() {
                return Err(format!("line {n}: {key} {{attribute}} misuse"));
            }
            let matching = op == "==" || op == "!=";
            if matching && ASSIGN_KEYS.contains(&key) {
                return Err(format!("line {n}: {key} cannot be matched with {op}"));
            }
            if !matching && MATCH_KEYS.contains(&key) {
                return Err(format!("line {n}: {key} cannot be assigned with {op}"));
            }
            if key == "MODE"
                && !(value.len() == 4 && value.chars().all(|c| ('0'..='7').contains(&c)))
            {
                return Err(format!("line {n}: MODE {value:?} is not 4 octal digits"));
            }
            tokens.push(Token {
                key: key.into(),
                attr,
                op: op.into(),
                value,
            });
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            rest = rest
                .strip_prefix(',')
                .ok_or(format!(
                    "line {n}: tokens must be separated by commas: {rest:?}"
                ))?
                .trim_start();
            if rest.is_empty() {
                return Err(format!("line {n}: a trailing comma"));
            }
        }
        rules.push((n, tokens));
    }
    let labels: Vec<&str> = rules
        .iter()
        .flat_map(|(_, t)| t.iter())
        .filter(|t| t.key == "LABEL")
        .map(|t| t.value.as_str())
        .collect();
    for (n, tokens) in &rules {
        for t in tokens.iter().filter(|t| t.key == "GOTO") {
            if !labels.contains(&t.value.as_str()) {
                return Err(format!("line {n}: GOTO {:?} has no LABEL", t.value));
            }
        }
    }
    Ok(rules)
}

fn has(tokens: &[Token], key: &str, attr: Option<&str>, op: &str, value: &str) -> bool {
    tokens
        .iter()
        .any(|t| t.key == key && t.attr.as_deref() == attr && t.op == op && t.value == value)
}

/// Runs `udevadm test` with `dir` mounted over /etc/udev/rules.d in a private mount
/// namespace (nothing changes outside it), and returns what udev said about files in
/// `dir` beyond reading them.
fn udev_complaints(dir: &Path) -> Vec<String> {
    require("udevadm");
    require("unshare");
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "--propagation", "private"])
        .arg("sh")
        .arg("-c")
        .arg(r#"mount --bind "$1" /etc/udev/rules.d && exec udevadm test --action=add /sys/class/mem/null"#)
        .arg("sh")
        .arg(dir)
        .output()
        .expect("run unshare");
    let text = output_text(&out);
    assert!(
        text.contains("Reading rules file: /etc/udev/rules.d/"),
        "udevadm test did not read the rules under test ({}):\n{text}",
        out.status
    );
    text.lines()
        .filter(|l| l.contains("/etc/udev/rules.d/") && !l.starts_with("Reading rules file"))
        .map(str::to_string)
        .collect()
}

#[test]
fn udev_rule_parses_and_grants_what_waxseal_needs() {
    let path = repo().join("udev/70-waxseal.rules");
    let text = std::fs::read_to_string(&path).unwrap();
    let rules = parse_rules(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));

    // The strict parser refuses what udev would misread.
    for bad in [
        "FOO==\"x\", TAG+=\"uaccess\"",
        "KERNEL=\"tpmrm0\", GROUP=\"tss\"",
        "KERNEL==\"tpmrm0\" GROUP=\"tss\"",
        "KERNEL==\"tpmrm0\", GROUP==\"tss\"",
        "KERNEL==\"tpmrm0\", MODE=\"660\"",
        "SUBSYSTEM==\"usb\", ATTR{idVendor==\"1050\"",
        "SUBSYSTEM==\"usb\", ENV=\"x\"",
        "SUBSYSTEM==usb",
        "GOTO=\"nowhere\"",
        "TAG+=\"uaccess\",",
    ] {
        assert!(parse_rules(bad).is_err(), "accepted: {bad}");
    }

    // Every USB token is given to the logged-in user and starts the agent; each rule
    // says what it is for in a comment right above it.
    let lines: Vec<&str> = text.lines().collect();
    let usb: Vec<&(usize, Vec<Token>)> = rules
        .iter()
        .filter(|(_, t)| has(t, "SUBSYSTEM", None, "==", "usb"))
        .collect();
    assert!(usb.len() >= 5, "rules for YubiKeys and other tokens");
    for (n, tokens) in &usb {
        assert!(
            lines[n - 2].starts_with('#'),
            "line {n}: no comment says which token this is"
        );
        assert!(
            tokens
                .iter()
                .any(|t| t.key == "ATTR" && t.attr.as_deref() == Some("idVendor")),
            "line {n}: matches no vendor"
        );
        assert!(
            has(tokens, "ENV", Some("DEVTYPE"), "==", "usb_device"),
            "line {n}"
        );
        assert!(has(tokens, "TAG", None, "+=", "uaccess"), "line {n}");
        assert!(has(tokens, "TAG", None, "+=", "systemd"), "line {n}");
        assert!(
            has(
                tokens,
                "ENV",
                Some("SYSTEMD_USER_WANTS"),
                "+=",
                "waxseal-agent.service"
            ),
            "line {n}"
        );
    }
    let yubikey = usb
        .iter()
        .find(|(_, t)| has(t, "ATTR", Some("idVendor"), "==", "1050"))
        .expect("a rule for Yubico (vendor 1050)");
    assert!(
        !yubikey
            .1
            .iter()
            .any(|t| t.key == "ATTR" && t.attr.as_deref() == Some("idProduct")),
        "every YubiKey product and mode"
    );
    for vendor in ["20a0", "096e", "08e6", "04e6"] {
        assert!(
            usb.iter()
                .any(|(_, t)| has(t, "ATTR", Some("idVendor"), "==", vendor)),
            "no rule for vendor {vendor}"
        );
    }
    let tpm = rules
        .iter()
        .find(|(_, t)| has(t, "KERNEL", None, "==", "tpmrm[0-9]*"))
        .expect("a rule for /dev/tpmrm*");
    assert!(has(&tpm.1, "GROUP", None, "=", "tss"), "{tpm:?}");
    assert!(has(&tpm.1, "MODE", None, "=", "0660"), "{tpm:?}");
    // 73-seat-late.rules turns uaccess into ACLs: the rule must sort before it.
    assert!(path.file_name().unwrap().to_str().unwrap() < "73-seat-late.rules");

    // udev's own parser reads it without a complaint, and does complain about a broken
    // file beside it (so silence means something).
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(&path, tmp.path().join("70-waxseal.rules")).unwrap();
    std::fs::write(
        tmp.path().join("71-broken.rules"),
        "FROBNICATE==\"x\", TAG+=\"uaccess\"\nKERNEL=\"tpmrm0\", GROUP=\"tss\"\n",
    )
    .unwrap();
    let complaints = udev_complaints(tmp.path());
    assert!(
        complaints.iter().all(|l| !l.contains("70-waxseal.rules")),
        "udev complains about 70-waxseal.rules:\n{}",
        complaints.join("\n")
    );
    assert!(
        complaints.iter().any(|l| l.contains("71-broken.rules:1"))
            && complaints.iter().any(|l| l.contains("71-broken.rules:2")),
        "udev should have refused both lines of the broken file:\n{}",
        complaints.join("\n")
    );
}

/// Every file under `dir` with its content, to see that nothing changed.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.insert(p.clone(), Vec::new());
            out.extend(snapshot(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
        }
    }
    out
}

fn install_script(home: &Path) -> Command {
    let mut cmd = Command::new(repo().join("scripts/install"));
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .stdin(Stdio::null());
    cmd
}

#[test]
fn install_dry_run_prints_the_steps_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let prefix = tmp.path().join("prefix");
    let before = snapshot(tmp.path());

    let out = install_script(&home)
        .args(["--dry-run", "--user", "--prefix"])
        .arg(&prefix)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("would run: cargo build --release --locked"),
        "{text}"
    );
    for b in ["waxseal", "waxseal-agent", "sigstore-kms-waxseal"] {
        let dest = prefix.join("bin").join(b);
        assert!(
            text.contains(&format!("would install: {} ", dest.display())),
            "{text}"
        );
    }
    for u in UNITS {
        let dest = home.join(".config/systemd/user").join(u);
        assert!(
            text.contains(&format!("would install: {} ", dest.display())),
            "{text}"
        );
    }
    // The PKCS#11 module and its p11-kit module file.
    for dest in [
        prefix.join("lib/waxseal/libwaxseal_pkcs11.so"),
        home.join(".config/pkcs11/modules/waxseal.module"),
    ] {
        assert!(
            text.contains(&format!("would install: {} ", dest.display())),
            "{text}"
        );
    }
    assert!(
        text.contains(&format!(
            "ExecStart={}",
            prefix.join("bin/waxseal-agent").display()
        )),
        "{text}"
    );
    assert!(text.contains("udev rule not installed (--user)"), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("+ ")),
        "a dry run ran a command: {text}"
    );
    assert!(text.contains("nothing was changed"), "{text}");
    assert_eq!(snapshot(tmp.path()), before, "a dry run changed files");

    // System-wide, the plan includes the udev rule; still nothing is written.
    let udev_before = snapshot(Path::new("/etc/udev/rules.d"));
    let units = tmp.path().join("units");
    let out = install_script(&home)
        .args(["--dry-run", "--prefix"])
        .arg(&prefix)
        .arg("--unit-dir")
        .arg(&units)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("udev rule -> /etc/udev/rules.d/70-waxseal.rules"),
        "{text}"
    );
    assert!(
        text.contains("systemctl --global enable waxseal-agent.socket waxseal-ssh.socket"),
        "{text}"
    );
    assert_eq!(snapshot(tmp.path()), before, "a dry run changed files");
    assert_eq!(snapshot(Path::new("/etc/udev/rules.d")), udev_before);
}

#[test]
fn install_user_puts_binaries_and_units_in_place_idempotently() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let prefix = tmp.path().join("prefix");
    let bin_dir = bins().agent.parent().unwrap().to_path_buf();
    let udev_before = snapshot(Path::new("/etc/udev/rules.d"));
    let run = || {
        let out = install_script(&home)
            .args(["--user", "--no-build", "--bin-dir"])
            .arg(&bin_dir)
            .arg("--prefix")
            .arg(&prefix)
            .output()
            .unwrap();
        let text = output_text(&out);
        assert!(out.status.success(), "scripts/install: {text}");
        text
    };
    let text = run();
    assert!(!text.contains("cargo build"), "{text}");

    for b in ["waxseal", "waxseal-agent", "sigstore-kms-waxseal"] {
        let installed = prefix.join("bin").join(b);
        let meta = std::fs::metadata(&installed)
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", installed.display()));
        assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{b}");
        assert!(
            std::fs::read(&installed).unwrap() == std::fs::read(bin_dir.join(b)).unwrap(),
            "{b} differs from the built one"
        );
    }
    let unit_dir = home.join(".config/systemd/user");
    let agent = prefix.join("bin/waxseal-agent");
    for u in UNITS {
        let installed = std::fs::read_to_string(unit_dir.join(u)).unwrap();
        assert_eq!(installed, with_exec_start(&unit_source(u), &agent), "{u}");
    }
    assert_eq!(
        unit_value(
            &std::fs::read_to_string(unit_dir.join("waxseal-agent.service")).unwrap(),
            "Service",
            "ExecStart"
        ),
        agent.display().to_string()
    );
    // The installed units, with the installed agent, pass verification.
    analyze_verify(&unit_dir).unwrap_or_else(|e| panic!("installed units: {e}"));
    // The installed CLI runs.
    let out = Command::new(prefix.join("bin/waxseal"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));

    // The PKCS#11 module, and the p11-kit module file that points p11-kit-proxy
    // programs at it; `p11-kit list-modules` reads that file.
    let module = prefix.join("lib/waxseal/libwaxseal_pkcs11.so");
    let meta =
        std::fs::metadata(&module).unwrap_or_else(|e| panic!("{}: {e}\n{text}", module.display()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert!(
        std::fs::read(&module).unwrap() == std::fs::read(&bins().pkcs11_module).unwrap(),
        "the installed module differs from the built one"
    );
    let p11kit = home.join(".config/pkcs11/modules/waxseal.module");
    let p11kit_text = std::fs::read_to_string(&p11kit).unwrap();
    assert!(
        p11kit_text
            .lines()
            .any(|l| l == format!("module: {}", module.display())),
        "{p11kit_text}"
    );
    // p11-kit ignores user config for root: ask as nobody, who can read the files.
    require("p11-kit");
    require("setpriv");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let listed = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "p11-kit",
            "list-modules",
        ])
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .output()
        .unwrap();
    let listed = output_text(&listed);
    assert!(
        listed.contains("waxseal:"),
        "p11-kit list-modules: {listed}"
    );

    // Manual pages and completions, each working with the program that reads it.
    let share = prefix.join("share");
    let pages = man_and_completions_work(&share, &text);

    // Again: nothing to do.
    let files = snapshot(tmp.path());
    let again = run();
    assert_eq!(
        again.matches("unchanged: ").count(),
        6 + pages + 3 + 2,
        "every file is up to date: {again}"
    );
    assert!(!again.contains("installed: "), "{again}");
    assert_eq!(snapshot(tmp.path()), files);
    assert_eq!(snapshot(Path::new("/etc/udev/rules.d")), udev_before);
}

/// Checks what `scripts/install` put under `share`: `man` finds and renders
/// waxseal(1), a subcommand's page and waxseal-agent(1) through MANPATH, and bash's
/// completion completes a subcommand and an option. Returns how many pages there are.
fn man_and_completions_work(share: &Path, install_log: &str) -> usize {
    let man1 = share.join("man/man1");
    let pages = std::fs::read_dir(&man1)
        .unwrap_or_else(|e| panic!("{}: {e}\n{install_log}", man1.display()))
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "1"))
        })
        .count();
    for (page, expect) in [
        ("waxseal", "keys"),
        ("waxseal-keys-generate", "--alg"),
        ("waxseal-agent", "--runtime-dir"),
    ] {
        let out = Command::new("man")
            .args(["-P", "cat", page])
            .env("MANPATH", share.join("man"))
            .env("MANWIDTH", "100")
            .output()
            .expect("man (man-db) runs: scripts/install-deps installs it");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "man {page}: {}", output_text(&out));
        assert!(text.contains(expect), "man {page} lacks {expect}: {text}");
    }
    // bash: the completion function completes `waxseal ke` to `keys` and
    // `waxseal keys generate --a` to `--alg`.
    let script = share.join("bash-completion/completions/waxseal");
    for (line, expect) in [
        ("waxseal ke", "keys"),
        ("waxseal keys generate --a", "--alg"),
    ] {
        let words: Vec<&str> = line.split(' ').collect();
        let probe = format!(
            "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT={}; \
             _waxseal waxseal {} {}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            line,
            words.len() - 1,
            line.len(),
            words[words.len() - 1],
            words[words.len() - 2],
        );
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &probe])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{line}: {}", output_text(&out));
        assert!(
            text.lines().any(|l| l.trim() == expect),
            "bash completes `{line}` with {text:?}, not {expect}"
        );
    }
    for f in [
        "zsh/site-functions/_waxseal",
        "fish/vendor_completions.d/waxseal.fish",
    ] {
        let text = std::fs::read_to_string(share.join(f)).unwrap();
        assert!(text.contains("generate") && text.contains("attest"), "{f}");
    }
    pages
}

/// The system-mode unit, `ExecStart=`'s program replaced by `agent` (its arguments
/// kept), as `scripts/install --system` writes it.
fn system_unit(agent: &Path) -> String {
    let text = unit_source("system/waxseal-system.service");
    text.lines()
        .map(|l| match l.strip_prefix("ExecStart=") {
            Some(rest) => {
                let args = rest.split_once(' ').map_or("", |(_, a)| a);
                format!("ExecStart={} {args}", agent.display())
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn system_mode_unit_passes_verification_and_runs_the_agent_as_its_own_user() {
    require("systemd-analyze");
    let tmp = tempfile::tempdir().unwrap();
    let unit = tmp.path().join("waxseal-system.service");
    std::fs::write(&unit, system_unit(&bins().agent)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", tmp.path().display()))
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
    let source = unit_source("system/waxseal-system.service");
    assert_eq!(unit_value(&source, "Service", "User"), "waxseal");
    assert_eq!(
        unit_value(&source, "Service", "RuntimeDirectoryMode"),
        "0710"
    );
    let exec = unit_value(&source, "Service", "ExecStart");
    for arg in [
        "--config /etc/waxseal/config.toml",
        "--runtime-dir /run/waxseal",
        "--state-dir /var/lib/waxseal",
    ] {
        assert!(exec.contains(arg), "{exec}");
    }
}

#[test]
fn install_system_dry_run_plans_the_account_unit_and_config_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let prefix = tmp.path().join("prefix");
    let watched = [
        Path::new("/etc/systemd/system"),
        Path::new("/etc/waxseal"),
        Path::new("/etc/udev/rules.d"),
    ];
    let before: Vec<_> = watched.iter().map(|d| snapshot(d)).collect();
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let out = install_script(&home)
        .args(["--system", "--dry-run", "--prefix"])
        .arg(&prefix)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let has_user = std::str::from_utf8(&passwd)
        .unwrap()
        .lines()
        .any(|l| l.starts_with("waxseal:"));
    if !has_user {
        assert!(
            text.contains("would run: useradd --system --gid waxseal"),
            "{text}"
        );
    }
    for step in [
        "would install: /etc/systemd/system/waxseal-system.service",
        &format!("ExecStart={}", prefix.join("bin/waxseal-agent").display()),
        "usermod -aG waxseal SERVICE_USER",
        "systemctl enable --now waxseal-system.service",
        "nothing was changed",
    ] {
        assert!(text.contains(step), "{step}: {text}");
    }
    assert!(
        !text.contains("systemd/user"),
        "system mode installs no user units: {text}"
    );
    let after: Vec<_> = watched.iter().map(|d| snapshot(d)).collect();
    assert_eq!(before, after, "a dry run changed files");
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);

    let out = install_script(&home)
        .args(["--system", "--user", "--dry-run"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(output_text(&out).contains("exclude each other"));
}
