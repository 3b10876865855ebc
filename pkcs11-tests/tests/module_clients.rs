//! Programs nobody here wrote, signing with agent keys through `libwaxseal_pkcs11.so`:
//! `jarsigner` (SunPKCS11), `osslsigncode` (Authenticode on a PowerShell script),
//! python-pkcs11 from eight threads and from a forked child, and `ssh-keygen -D`
//! beside `ssh-add -L` on `ssh.sock`. Each signature is checked by a verifier that is
//! not ours (`jarsigner -verify`, `osslsigncode verify`) or by RustCrypto against the
//! key the agent reports, and leaves its record in the agent's audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::pkcs8::DecodePublicKey;
use pkcs11_tests::{audit_records, bins, pkcs11_device, require, Agent, SoftHsm};
use waxseal_agent::proto::KeyAlg;

const PIN: &str = "1234";
/// The OpenSSL 3 engine of libp11 (Debian: libengine-pkcs11-openssl).
const ENGINE: &str = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";
/// The Python with python-pkcs11 that scripts/install-deps sets up.
const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/py/.venv/bin/python");

/// The module, built beside the agent by `bins()`.
fn module() -> PathBuf {
    let m = bins().agent.with_file_name("libwaxseal_pkcs11.so");
    assert!(m.exists(), "{} was not built", m.display());
    m
}

/// A SoftHSM2 token behind an agent (PIN from a file), with the P-256 key
/// `hsm/release`.
fn setup() -> (SoftHsm, Agent, tempfile::TempDir) {
    let hsm = SoftHsm::new();
    hsm.init_token("tok", "5555", PIN);
    let pin = hsm.pin_file("pin", PIN);
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", "tok", &pin))
        .start();
    agent
        .client()
        .generate_key("hsm/release", KeyAlg::P256)
        .unwrap();
    (hsm, agent, tempfile::tempdir().unwrap())
}

/// Runs `cmd` with the agent's socket in its environment; fails unless it exits 0.
fn ok(cmd: &mut Command, agent: &Agent) -> Output {
    let out = cmd.env("WAXSEAL_SOCK", &agent.socket).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} exited with {}:\n{}{}\nagent log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    out
}

/// `signed` records in the agent's audit log whose caller's program contains `exe`.
fn signed_by(agent: &Agent, exe: &str) -> usize {
    audit_records(&agent.state_dir)
        .iter()
        .filter(|r| {
            r["event"] == "signed"
                && r["caller"]["exe"]
                    .as_str()
                    .is_some_and(|path| path.contains(exe))
        })
        .count()
}

/// A self-signed certificate for `hsm/release`, made by OpenSSL through the pkcs11
/// engine and the module, then stored on the token through the module
/// (`C_CreateObject`), so that programs which pair keys with certificates see both.
fn certificate(agent: &Agent, dir: &Path) -> PathBuf {
    require("openssl");
    require(ENGINE);
    let cert = dir.join("cert.pem");
    ok(
        Command::new("openssl")
            .args(["req", "-new", "-x509", "-days", "30", "-subj"])
            .arg("/CN=waxseal release signing")
            .args(["-engine", "pkcs11", "-keyform", "engine", "-key"])
            .arg(format!(
                "pkcs11:token=hsm;object=release;type=private;pin-value={PIN}"
            ))
            .arg("-out")
            .arg(&cert)
            .env("PKCS11_MODULE_PATH", module()),
        agent,
    );
    let der = dir.join("cert.der");
    ok(
        Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .arg("-out")
            .arg(&der),
        agent,
    );
    require("pkcs11-tool");
    ok(
        Command::new("pkcs11-tool")
            .arg("--module")
            .arg(module())
            .args(["--login", "--pin", PIN, "--write-object"])
            .arg(&der)
            .args(["--type", "cert", "--id", "01", "--label", "release"]),
        agent,
    );
    let pk = agent.client().public_key("hsm/release").unwrap();
    assert_eq!(
        pk.certificate.map(|c| c.0),
        Some(std::fs::read(&der).unwrap()),
        "the agent holds the certificate written through the module"
    );
    cert
}

#[test]
fn jarsigner_signs_a_jar_with_an_agent_key_and_jarsigner_verifies_it() {
    let (_hsm, agent, dir) = setup();
    let dir = dir.path();
    certificate(&agent, dir);
    require("jar");
    require("keytool");
    require("jarsigner");
    let cfg = dir.join("waxseal.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = waxseal\nlibrary = {}\nslotListIndex = 0\n",
            module().display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from a release\n").unwrap();
    ok(
        Command::new("jar")
            .current_dir(dir)
            .args(["cf", "app.jar", "hello.txt"]),
        &agent,
    );
    let store = |cmd: &mut Command| {
        cmd.current_dir(dir)
            .args(["-keystore", "NONE", "-storetype", "PKCS11"])
            .args(["-addprovider", "SunPKCS11", "-providerArg"])
            .arg(&cfg)
            .args(["-storepass", PIN]);
    };
    // The keystore shows the key with its certificate: its alias is what jarsigner takes.
    let mut list = Command::new("keytool");
    list.arg("-list");
    store(&mut list);
    let listed = String::from_utf8_lossy(&ok(&mut list, &agent).stdout).into_owned();
    let alias = listed
        .lines()
        .find(|l| l.contains("PrivateKeyEntry"))
        .and_then(|l| l.split(',').next())
        .unwrap_or_else(|| panic!("keytool -list shows no private key entry:\n{listed}"))
        .trim()
        .to_string();

    let before = signed_by(&agent, "java");
    let mut sign = Command::new("jarsigner");
    store(&mut sign);
    sign.args(["-sigalg", "SHA256withECDSA", "app.jar", &alias]);
    ok(&mut sign, &agent);
    let verified = ok(
        Command::new("jarsigner")
            .current_dir(dir)
            .args(["-verify", "-verbose", "-certs", "app.jar"]),
        &agent,
    );
    let text = String::from_utf8_lossy(&verified.stdout);
    assert!(text.contains("jar verified."), "{text}");
    assert!(text.contains("CN=waxseal release signing"), "{text}");
    assert!(
        signed_by(&agent, "java") > before,
        "no signed audit record names java: {:?}",
        audit_records(&agent.state_dir)
    );
}

#[test]
fn osslsigncode_signs_a_powershell_script_and_verifies_it() {
    let (_hsm, agent, dir) = setup();
    let dir = dir.path();
    let cert = certificate(&agent, dir);
    require("osslsigncode");
    let version = Command::new("osslsigncode")
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    // PowerShell scripts are signed from osslsigncode 2.8 on (scripts/install-deps takes
    // it from bookworm-backports on Debian 12).
    let v: Vec<u32> = version
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .trim_end_matches(',')
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    assert!(
        v >= vec![2, 8],
        "osslsigncode ≥ 2.8 is needed for PowerShell scripts, found {version}: run scripts/install-deps"
    );
    std::fs::write(dir.join("release.ps1"), "Write-Output \"release 1.0\"\r\n").unwrap();
    ok(
        Command::new("osslsigncode")
            .current_dir(dir)
            .args(["sign", "-pkcs11engine", ENGINE, "-pkcs11module"])
            .arg(module())
            .arg("-certs")
            .arg(&cert)
            .args([
                "-key",
                &format!("pkcs11:token=hsm;object=release;type=private;pin-value={PIN}"),
            ])
            .args(["-h", "sha256", "-in", "release.ps1", "-out", "signed.ps1"]),
        &agent,
    );
    let signed = std::fs::read_to_string(dir.join("signed.ps1")).unwrap();
    assert!(signed.contains("# SIG # Begin signature block"), "{signed}");
    let out = ok(
        Command::new("osslsigncode")
            .current_dir(dir)
            .args(["verify", "-CAfile"])
            .arg(&cert)
            .args(["-in", "signed.ps1"]),
        &agent,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Signature verification: ok"), "{text}");
    assert!(signed_by(&agent, "osslsigncode") >= 1, "{text}");
}

/// python-pkcs11: eight threads sign at once, each on its own session, and then a
/// forked child initialises the module again and signs; every signature (raw r‖s over
/// the given digest) is checked against the agent's public key.
#[test]
fn python_pkcs11_signs_from_eight_threads_and_from_a_forked_child() {
    let (_hsm, agent, _dir) = setup();
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: run scripts/install-deps (it makes the venv with python-pkcs11)"
    );
    let script = r#"
import json, os, sys, threading
import pkcs11
from pkcs11 import Mechanism, ObjectClass, TokenFlag

lib = pkcs11.lib(sys.argv[1])
results = []
lock = threading.Lock()

def login(token):
    if token.flags & TokenFlag.PROTECTED_AUTHENTICATION_PATH:
        return token.open(user_pin=pkcs11.PROTECTED_AUTH)
    return token.open(user_pin="1234")

def sign(session, who, n):
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="release")
    for i in range(n):
        digest = os.urandom(32)
        sig = key.sign(digest, mechanism=Mechanism.ECDSA)
        with lock:
            results.append({"who": who, "digest": digest.hex(), "sig": sig.hex()})

token = lib.get_token(token_label="hsm")
held = login(token)  # the login holds for every session of this process

def worker(n):
    with token.open() as s:
        sign(s, "thread", 10)

threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()

sys.stdout.flush()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    code = 0
    try:
        results.clear()
        lib.reinitialize()
        child_token = lib.get_token(token_label="hsm")
        with login(child_token) as s:
            sign(s, "child", 3)
        os.write(w, json.dumps(results).encode())
    except Exception as e:
        os.write(w, json.dumps({"error": repr(e)}).encode())
        code = 1
    os.close(w)
    os._exit(code)
os.close(w)
child = b""
while True:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    child += chunk
_, status = os.waitpid(pid, 0)
child = json.loads(child)
if isinstance(child, dict):
    print(json.dumps(child))
    sys.exit(2)
results.extend(child)
# The parent still signs after its child has gone.
sign(held, "parent-after-fork", 1)
held.close()
print(json.dumps(results))
"#;
    let out = ok(
        Command::new(PYTHON).arg("-c").arg(script).arg(module()),
        &agent,
    );
    let results: serde_json::Value = serde_json::from_slice(out.stdout.trim_ascii_end()).unwrap();
    let pk = agent.client().public_key("hsm/release").unwrap();
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&pk.spki_der.0).unwrap();
    let mut count = std::collections::BTreeMap::new();
    for r in results.as_array().unwrap() {
        let digest = hex::decode(r["digest"].as_str().unwrap()).unwrap();
        let sig = hex::decode(r["sig"].as_str().unwrap()).unwrap();
        assert_eq!(sig.len(), 64, "CKM_ECDSA answers raw r‖s");
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        vk.verify_prehash(&digest, &sig)
            .unwrap_or_else(|e| panic!("{r}: {e}"));
        *count
            .entry(r["who"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(count.get("thread"), Some(&80), "{count:?}");
    assert_eq!(count.get("child"), Some(&3), "{count:?}");
    assert_eq!(count.get("parent-after-fork"), Some(&1), "{count:?}");
    assert_eq!(signed_by(&agent, "python"), 84);
}

/// `ssh-keygen -D` reads the same public keys through the module that `ssh-add -L`
/// gets from `ssh.sock`.
#[test]
fn ssh_keygen_lists_through_the_module_what_ssh_add_lists_on_ssh_sock() {
    let (_hsm, agent, _dir) = setup();
    agent
        .client()
        .generate_key("hsm/second", KeyAlg::P384)
        .unwrap();
    require("ssh-keygen");
    require("ssh-add");
    let keys = |text: &[u8]| -> BTreeSet<String> {
        String::from_utf8_lossy(text)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some(format!("{} {}", f.next()?, f.next()?))
            })
            .collect()
    };
    let via_module = keys(&ok(Command::new("ssh-keygen").arg("-D").arg(module()), &agent).stdout);
    let via_socket = keys(
        &ok(
            Command::new("ssh-add")
                .arg("-L")
                .env("SSH_AUTH_SOCK", &agent.ssh_socket),
            &agent,
        )
        .stdout,
    );
    assert_eq!(via_module.len(), 2, "{via_module:?}");
    assert_eq!(via_module, via_socket);
}
