//! `waxseal keys attest --format tpm|step`: the ACME device-attest-01 attestation
//! objects (docs/key-attestation.md), made against a real swtpm and the PIV emulator
//! through pcscd, and checked by decoders waxseal did not write: Python `cbor2` and
//! `cryptography` (py/attobj.py, in the venv scripts/install-deps makes).
//!
//! The YubiKey test takes pcscd's machine-wide lock (the harness), so it runs alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use piv_emulator::harness::{Config, Harness};
use pkcs11_tests::{bins, require, tpm_device, Agent, Swtpm};
use sha2::{Digest as _, Sha256};

const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/py/.venv/bin/python");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/py/attobj.py");
const SERIAL: u32 = 20_260_022;
/// An ACME key authorization: token "." base64url(JWK thumbprint) (RFC 8555 §8.1).
const KEYAUTH: &str =
    "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI";

fn python(args: &[&str]) -> Output {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: run scripts/install-deps (it makes the venv with cbor2 and cryptography)"
    );
    Command::new(PYTHON)
        .arg(SCRIPT)
        .args(args)
        .output()
        .unwrap()
}

/// Runs py/attobj.py, asserting it passed; returns its OK lines.
fn python_ok(args: &[&str]) -> String {
    let out = python(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "attobj.py {args:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn ok(agent: &Agent, args: &[&str]) -> String {
    let out = agent.cli(args);
    assert!(
        out.status.success(),
        "waxseal {args:?}: {}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The CLI refused: exit status 1, nothing on stdout; returns stderr.
fn refused(agent: &Agent, args: &[&str]) -> String {
    let out = agent.cli(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "waxseal {args:?} was not refused: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn tpm_agent(tpm: &Swtpm, keys: &Path) -> Agent {
    Agent::builder()
        .config(&tpm_device("tpm", tpm, keys, None))
        .start()
}

/// Makes a test attestation CA and an AK certificate for the agent's AK (from the
/// json evidence) in `dir`: ca.pem and ak.pem (AK certificate, then the CA). `plain`:
/// a certificate outside the WebAuthn §8.3.1 profile.
fn issue_ak_cert(agent: &Agent, key: &str, dir: &Path, plain: bool) {
    let doc: serde_json::Value =
        serde_json::from_str(&ok(agent, &["keys", "attest", key])).unwrap();
    let ak = doc["evidence"]["ak_spki_pem"].as_str().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ak.pub.pem"), ak).unwrap();
    let pub_pem = dir.join("ak.pub.pem");
    let mut args = vec![
        "make-ak-cert",
        pub_pem.to_str().unwrap(),
        dir.to_str().unwrap(),
    ];
    if plain {
        args.push("plain");
    }
    python_ok(&args);
}

#[test]
fn tpm_statement_verifies_with_cbor2_and_cryptography_and_holds_the_keys_pubkey() {
    let tpm = Swtpm::start();
    let keys = tempfile::tempdir().unwrap();
    let agent = tpm_agent(&tpm, keys.path());
    let dir = agent.dir().to_path_buf();
    for (label, alg) in [("ec", "p256"), ("rsa", "rsa2048")] {
        let key = format!("tpm/{label}");
        ok(&agent, &["keys", "generate", &key, "--alg", alg]);
        std::fs::write(
            dir.join(format!("{label}.pub.pem")),
            ok(&agent, &["keys", "pubkey", &key]),
        )
        .unwrap();
    }
    issue_ak_cert(&agent, "tpm/ec", &dir, false);
    let ak = dir.join("ak.pem");

    // --challenge: the key authorization, hashed by the CLI. An AK certificate in the
    // WebAuthn profile draws no warning.
    let out = agent.cli(&[
        "keys",
        "attest",
        "tpm/ec",
        "--format",
        "tpm",
        "--challenge",
        KEYAUTH,
        "--ak-cert",
        ak.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", agent.log());
    assert!(!stderr.contains("warning"), "{stderr}");
    let payload = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(dir.join("ec.payload.json"), &payload).unwrap();
    let report = python_ok(&[
        "tpm",
        dir.join("ec.payload.json").to_str().unwrap(),
        KEYAUTH,
        dir.join("ec.pub.pem").to_str().unwrap(),
        dir.join("ca.pem").to_str().unwrap(),
    ]);
    assert_eq!(report.matches("OK ").count(), 5, "{report}");

    // --nonce: the digest itself, and --out: the raw CBOR in DIR/LABEL.tpm.cbor, the
    // same object as the payload's attObj.
    let nonce = hex::encode(Sha256::digest(KEYAUTH.as_bytes()));
    let out_dir = dir.join("out");
    let path = ok(
        &agent,
        &[
            "keys",
            "attest",
            "tpm/rsa",
            "--format",
            "tpm",
            "--nonce",
            &nonce,
            "--ak-cert",
            ak.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(path.trim(), out_dir.join("rsa.tpm.cbor").to_str().unwrap());
    let cbor = std::fs::read(out_dir.join("rsa.tpm.cbor")).unwrap();
    use base64::Engine as _;
    let body = serde_json::json!({
        "attObj": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&cbor)
    });
    std::fs::write(dir.join("rsa.payload.json"), body.to_string()).unwrap();
    python_ok(&[
        "tpm",
        dir.join("rsa.payload.json").to_str().unwrap(),
        KEYAUTH,
        dir.join("rsa.pub.pem").to_str().unwrap(),
        dir.join("ca.pem").to_str().unwrap(),
    ]);

    // An AK certificate outside the profile: the statement is written, with a warning
    // naming what a verifier will refuse.
    let plain = dir.join("plain");
    issue_ak_cert(&agent, "tpm/ec", &plain, true);
    let out = agent.cli(&[
        "keys",
        "attest",
        "tpm/ec",
        "--format",
        "tpm",
        "--challenge",
        KEYAUTH,
        "--ak-cert",
        plain.join("ak.pem").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning")
            && stderr.contains("not empty")
            && stderr.contains("2.23.133.8.3"),
        "{stderr}"
    );

    // The Python checks fail for what they say: a different key authorization, and
    // the other key's public key.
    let out = python(&[
        "tpm",
        dir.join("ec.payload.json").to_str().unwrap(),
        "another.keyauth",
        dir.join("ec.pub.pem").to_str().unwrap(),
        dir.join("ca.pem").to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("FAIL: extraData"),
        "{text}"
    );
    let out = python(&[
        "tpm",
        dir.join("ec.payload.json").to_str().unwrap(),
        KEYAUTH,
        dir.join("rsa.pub.pem").to_str().unwrap(),
        dir.join("ca.pem").to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("FAIL: pubArea's key is not"),
        "{text}"
    );
}

#[test]
fn tpm_statement_without_an_ak_certificate_or_for_the_wrong_kind_is_refused() {
    let tpm = Swtpm::start();
    let keys = tempfile::tempdir().unwrap();
    let agent = tpm_agent(&tpm, keys.path());
    let dir = agent.dir().to_path_buf();
    ok(&agent, &["keys", "generate", "tpm/k", "--alg", "p256"]);
    let out_dir = dir.join("out");

    // No AK certificate: refused naming what is missing and how to get it; no file.
    let err = refused(
        &agent,
        &[
            "keys",
            "attest",
            "tpm/k",
            "--format",
            "tpm",
            "--challenge",
            KEYAUTH,
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    for needle in [
        "certificate of this TPM's attestation key (AK)",
        "--ak-cert FILE",
        "2.23.133.8.3",
        "-----BEGIN PUBLIC KEY-----",
        "holds no EK certificate either",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    assert!(!out_dir.join("k.tpm.cbor").exists());

    // No challenge at all.
    let err = refused(&agent, &["keys", "attest", "tpm/k", "--format", "tpm"]);
    assert!(err.contains("--challenge KEYAUTH"), "{err}");

    // An AK certificate for another key (a second TPM's AK) is refused, and an older
    // output file stays as it was.
    let other_tpm = Swtpm::start();
    let other_keys = tempfile::tempdir().unwrap();
    let other = tpm_agent(&other_tpm, other_keys.path());
    ok(&other, &["keys", "generate", "tpm/k", "--alg", "p256"]);
    issue_ak_cert(&other, "tpm/k", &dir, false);
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("k.tpm.cbor"), b"older").unwrap();
    let err = refused(
        &agent,
        &[
            "keys",
            "attest",
            "tpm/k",
            "--format",
            "tpm",
            "--challenge",
            KEYAUTH,
            "--ak-cert",
            dir.join("ak.pem").to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(err.contains("not for this TPM's attestation key"), "{err}");
    assert_eq!(std::fs::read(out_dir.join("k.tpm.cbor")).unwrap(), b"older");

    // A file that is not PEM certificates.
    std::fs::write(dir.join("junk.pem"), "not a certificate\n").unwrap();
    let err = refused(
        &agent,
        &[
            "keys",
            "attest",
            "tpm/k",
            "--format",
            "tpm",
            "--challenge",
            KEYAUTH,
            "--ak-cert",
            dir.join("junk.pem").to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("--ak-cert") && err.contains("junk.pem"),
        "{err}"
    );

    // Once the TPM holds an EK certificate in NV (as a manufacturer or swtpm_setup
    // --create-ek-cert stores it), the refusal names it and the json evidence has it.
    require("openssl");
    let der = dir.join("ek.der");
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(dir.join("ca.pem"))
        .arg("-out")
        .arg(&der)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = std::fs::metadata(&der).unwrap().len().to_string();
    for args in [
        vec![
            "0x01c0000a",
            "-C",
            "o",
            "-s",
            &size,
            "-a",
            "ownerread|ownerwrite|authread|authwrite",
        ],
        vec!["0x01c0000a", "-C", "o", "-i", der.to_str().unwrap()],
    ] {
        let program = if args.contains(&"-s") {
            "tpm2_nvdefine"
        } else {
            "tpm2_nvwrite"
        };
        let out = tpm.tool(program).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let err = refused(
        &agent,
        &[
            "keys",
            "attest",
            "tpm/k",
            "--format",
            "tpm",
            "--challenge",
            KEYAUTH,
        ],
    );
    assert!(
        err.contains("holds EK certificates")
            && err.contains("NV 0x01c0000a (issuer: CN=waxseal test attestation CA)"),
        "{err}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&ok(&agent, &["keys", "attest", "tpm/k"])).unwrap();
    let ek = &doc["evidence"]["ek_certificates"];
    assert_eq!(ek.as_array().unwrap().len(), 1, "{ek}");
    assert_eq!(ek[0]["nv_index"], "0x01c0000a");
    assert_eq!(
        ek[0]["pem"].as_str().unwrap().trim(),
        std::fs::read_to_string(dir.join("ca.pem")).unwrap().trim()
    );

    // --format step asks for a PIV key.
    let err = refused(
        &agent,
        &[
            "keys",
            "attest",
            "tpm/k",
            "--format",
            "step",
            "--challenge",
            KEYAUTH,
        ],
    );
    assert!(
        err.contains("--format step is for PIV keys") && err.contains("use --format tpm"),
        "{err}"
    );
}

fn card() -> Harness {
    let mut config = Config::new(bins().piv_emulator.clone());
    config.serial = SERIAL;
    config.touch_delay = Duration::from_millis(200);
    Harness::start(config).unwrap_or_else(|e| {
        panic!("pcscd + piv-emulator did not start ({e}); run scripts/install-deps")
    })
}

#[test]
fn piv_step_statement_verifies_with_cbor2_and_cryptography_and_holds_the_keys_pubkey() {
    require("pcscd");
    let h = card();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pin = dir.join("pin");
    std::fs::write(&pin, "123456\n").unwrap();
    let config = format!(
        "[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nserial = {SERIAL}\npin = \"file:{}\"\n",
        pin.display()
    );
    let agent = Agent::builder().config(&config).start();
    std::fs::write(dir.join("root.pem"), h.attestation_root_pem()).unwrap();
    ok(
        &agent,
        &[
            "keys", "generate", "yk/9c", "--alg", "p256", "--touch", "never",
        ],
    );
    std::fs::write(
        dir.join("9c.pub.pem"),
        ok(&agent, &["keys", "pubkey", "yk/9c"]),
    )
    .unwrap();

    let payload = ok(
        &agent,
        &[
            "keys",
            "attest",
            "yk/9c",
            "--format",
            "step",
            "--challenge",
            KEYAUTH,
        ],
    );
    std::fs::write(dir.join("9c.payload.json"), &payload).unwrap();
    let report = python_ok(&[
        "step",
        dir.join("9c.payload.json").to_str().unwrap(),
        KEYAUTH,
        dir.join("9c.pub.pem").to_str().unwrap(),
        dir.join("root.pem").to_str().unwrap(),
    ]);
    assert_eq!(report.matches("OK ").count(), 3, "{report}");
    // The signature check fails for another key authorization.
    let out = python(&[
        "step",
        dir.join("9c.payload.json").to_str().unwrap(),
        "another.keyauth",
        dir.join("9c.pub.pem").to_str().unwrap(),
        dir.join("root.pem").to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("InvalidSignature"),
        "{text}"
    );

    // An RSA key: RS256, PKCS#1 v1.5 over SHA-256(keyAuth); --nonce gives the digest.
    ok(&agent, &["keys", "generate", "yk/82", "--alg", "rsa2048"]);
    std::fs::write(
        dir.join("82.pub.pem"),
        ok(&agent, &["keys", "pubkey", "yk/82"]),
    )
    .unwrap();
    let nonce = hex::encode(Sha256::digest(KEYAUTH.as_bytes()));
    let payload = ok(
        &agent,
        &[
            "keys", "attest", "yk/82", "--format", "step", "--nonce", &nonce,
        ],
    );
    std::fs::write(dir.join("82.payload.json"), &payload).unwrap();
    python_ok(&[
        "step",
        dir.join("82.payload.json").to_str().unwrap(),
        KEYAUTH,
        dir.join("82.pub.pem").to_str().unwrap(),
        dir.join("root.pem").to_str().unwrap(),
    ]);

    // --nonce for step must be the 32-byte digest.
    let err = refused(
        &agent,
        &[
            "keys", "attest", "yk/9c", "--format", "step", "--nonce", "0011",
        ],
    );
    assert!(err.contains("must be 32 bytes"), "{err}");
    // --format tpm asks for a TPM key.
    let err = refused(
        &agent,
        &[
            "keys",
            "attest",
            "yk/9c",
            "--format",
            "tpm",
            "--challenge",
            KEYAUTH,
        ],
    );
    assert!(
        err.contains("--format tpm is for TPM keys") && err.contains("use --format step"),
        "{err}"
    );
    // A P-384 key: step-ca's step format cannot verify it, so it is refused.
    ok(&agent, &["keys", "generate", "yk/9a", "--alg", "p384"]);
    let err = refused(
        &agent,
        &[
            "keys",
            "attest",
            "yk/9a",
            "--format",
            "step",
            "--challenge",
            KEYAUTH,
        ],
    );
    assert!(err.contains("only P-256, RSA and Ed25519"), "{err}");
}
