//! YubiKey (PIV) devices through the real pcscd, against `piv-emulator` on the vpcd
//! virtual reader: keys generated in slots with their policies and certificates, seen
//! by OpenSC and `ssh-keygen -D` while the agent runs, signatures checked by OpenSSL,
//! attestation verified to the emulator's root, the PIN never retried and the retry
//! floor, card removal and reinsertion beside a working SoftHSM2 device, and the touch
//! prompt reaching the CLI.
//!
//! pcscd is one per machine: the harness takes a machine-wide lock, so these tests run
//! one at a time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use piv_emulator::harness::{Config, Harness};
use pkcs11_tests::{bins, pkcs11_device, require, run_ok, Agent, SoftHsm};
use sha2::{Digest, Sha256};
use waxseal_agent::client::ClientError;
use waxseal_agent::proto::{ErrorCode, HashAlg};

const SERIAL: u32 = 20_260_005;
const OPENSC: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";

fn card() -> Harness {
    let mut config = Config::new(bins().piv_emulator.clone());
    config.serial = SERIAL;
    config.touch_delay = Duration::from_millis(400);
    Harness::start(config).unwrap_or_else(|e| {
        panic!("pcscd + piv-emulator did not start ({e}); run scripts/install-deps")
    })
}

fn yk_device(pin_file: &Path) -> String {
    format!(
        "[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nserial = {SERIAL}\npin = \"file:{}\"\n",
        pin_file.display()
    )
}

fn ok(agent: &Agent, args: &[&str]) -> (String, String) {
    let out = agent.cli(args);
    assert!(
        out.status.success(),
        "waxseal {args:?}: {}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Signs `message`'s SHA-256 with `key` through the CLI and checks it with OpenSSL.
fn sign_and_openssl_verify(agent: &Agent, dir: &Path, key: &str, message: &[u8]) {
    let digest = hex::encode(Sha256::digest(message));
    let (sig, _) = ok(
        agent,
        &[
            "sign", "--digest", &digest, "--key", key, "--hash", "sha256",
        ],
    );
    let (pem, _) = ok(agent, &["keys", "pubkey", key]);
    let tag = key.replace('/', "-");
    std::fs::write(dir.join(format!("{tag}.pub")), pem).unwrap();
    std::fs::write(
        dir.join(format!("{tag}.sig")),
        B64.decode(sig.trim()).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{tag}.msg")), message).unwrap();
    let out = run_ok(Command::new("openssl").current_dir(dir).args([
        "dgst",
        "-sha256",
        "-verify",
        &format!("{tag}.pub"),
        "-signature",
        &format!("{tag}.sig"),
        &format!("{tag}.msg"),
    ]));
    assert!(out.contains("Verified OK"), "{key}: {out}");
}

#[test]
fn keys_made_on_the_card_sign_attest_and_are_seen_by_opensc_while_the_agent_runs() {
    require("openssl");
    require("pkcs11-tool");
    require("ssh-keygen");
    let h = card();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pin = dir.join("pin");
    std::fs::write(&pin, "123456\n").unwrap();
    let agent = Agent::builder().config(&yk_device(&pin)).start();

    let (_, err) = ok(
        &agent,
        &[
            "keys",
            "generate",
            "yk/9c",
            "--alg",
            "p256",
            "--touch",
            "never",
            "--pin-policy",
            "once",
        ],
    );
    assert!(!err.contains("touch"), "{err}");
    ok(&agent, &["keys", "generate", "yk/9a", "--alg", "p384"]);
    ok(
        &agent,
        &[
            "keys",
            "generate",
            "yk/82",
            "--alg",
            "rsa2048",
            "--pin-policy",
            "always",
        ],
    );
    // A slot that holds a key is never overwritten.
    let out = agent.cli(&["keys", "generate", "yk/9c", "--alg", "p384"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a key"));
    // Ed25519 and RSA-4096 are not YubiKey 5 PIV algorithms.
    let out = agent.cli(&["keys", "generate", "yk/9d", "--alg", "ed25519"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported"));

    let (list, _) = ok(&agent, &["keys", "list"]);
    for (name, alg) in [("yk/9a", "p384"), ("yk/9c", "p256"), ("yk/82", "rsa2048")] {
        assert!(
            list.lines()
                .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == [name, "yk", alg]),
            "{list}"
        );
    }
    let (status, _) = ok(&agent, &["status"]);
    assert!(
        status.contains(&format!("YubiKey serial {SERIAL}")),
        "{status}"
    );

    for key in ["yk/9c", "yk/9a", "yk/82"] {
        sign_and_openssl_verify(&agent, dir, key, format!("release of {key}").as_bytes());
    }

    // OpenSC, a client nobody here wrote, sees the keys and their certificates
    // (subject CN = the key NAME) while the agent keeps the card open.
    let listed = run_ok(Command::new("pkcs11-tool").args([
        "--module",
        OPENSC,
        "--list-objects",
        "--type",
        "cert",
    ]));
    for key in ["yk\\/9c", "yk\\/9a"] {
        assert!(
            listed.contains(&format!("CN={key}")),
            "{key} not in:\n{listed}"
        );
    }
    // OpenSC lists retired slots only with a key history object; read 82 directly.
    let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial::from(SERIAL)).unwrap();
    let cert = yubikey::Certificate::read(
        &mut yk,
        yubikey::piv::SlotId::Retired(yubikey::piv::RetiredSlotId::R1),
    )
    .unwrap();
    assert_eq!(cert.subject(), "CN=yk/82");
    drop(yk);
    // ssh-keygen -D reads the public keys through OpenSC; they are the agent's.
    let ssh = run_ok(Command::new("ssh-keygen").args(["-D", OPENSC]));
    let (line, _) = ok(&agent, &["keys", "pubkey", "yk/9c", "--format", "ssh"]);
    let blob = line.split_whitespace().nth(1).unwrap();
    assert!(ssh.contains(blob), "{blob} not in:\n{ssh}");
    // The agent still works after OpenSC used the card.
    sign_and_openssl_verify(&agent, dir, "yk/9c", b"after opensc");

    // Attestation: slot certificate under f9 under the emulator's root.
    let out_dir = dir.join("evidence");
    let (files, _) = ok(
        &agent,
        &[
            "keys",
            "attest",
            "yk/9c",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(
        files.contains("9c.attestation.pem") && files.contains("9c.f9.pem"),
        "{files}"
    );
    std::fs::write(dir.join("root.pem"), h.attestation_root_pem()).unwrap();
    let out = run_ok(Command::new("openssl").current_dir(dir).args([
        "verify",
        "-CAfile",
        "root.pem",
        "-untrusted",
        "evidence/9c.f9.pem",
        "evidence/9c.attestation.pem",
    ]));
    assert!(out.contains(": OK"), "{out}");
    // It certifies the key the agent signs with.
    let attested = run_ok(Command::new("openssl").current_dir(dir).args([
        "x509",
        "-in",
        "evidence/9c.attestation.pem",
        "-pubkey",
        "-noout",
    ]));
    let (pem, _) = ok(&agent, &["keys", "pubkey", "yk/9c"]);
    assert_eq!(attested.trim(), pem.trim());
}

/// The card's PIN retry counter, read with the `yubikey` crate beside the agent.
fn pin_retries() -> u8 {
    let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial::from(SERIAL)).unwrap();
    yk.get_pin_retries().unwrap()
}

fn sign_err(agent: &Agent, key: &str) -> (ErrorCode, String) {
    match agent
        .client()
        .sign_digest(key, &[1u8; 32], Some(HashAlg::Sha256), None)
    {
        Err(ClientError::Agent(e)) => (e.code, e.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_refused_pin_is_never_retried_and_the_last_try_waits_for_unlock() {
    let _h = card();
    let tmp = tempfile::tempdir().unwrap();
    let pin = tmp.path().join("pin");
    std::fs::write(&pin, "123456\n").unwrap();
    let agent = Agent::builder().config(&yk_device(&pin)).start();
    ok(
        &agent,
        &[
            "keys",
            "generate",
            "yk/9a",
            "--alg",
            "p256",
            "--pin-policy",
            "always",
        ],
    );
    assert_eq!(pin_retries(), 3);

    // A wrong PIN costs one try, says how many are left, and is not tried again.
    std::fs::write(&pin, "000000\n").unwrap();
    let (code, msg) = sign_err(&agent, "yk/9a");
    assert_eq!(code, ErrorCode::PinIncorrect);
    assert!(msg.contains("2 tries left"), "{msg}");
    assert!(
        !msg.contains("000000"),
        "the PIN must never be shown: {msg}"
    );
    for _ in 0..3 {
        let (code, msg) = sign_err(&agent, "yk/9a");
        assert_eq!(code, ErrorCode::PinIncorrect);
        assert!(msg.contains("does not try it again"), "{msg}");
    }
    assert_eq!(pin_retries(), 2, "one try spent in four requests");

    // Another wrong PIN: one try left now.
    std::fs::write(&pin, "111111\n").unwrap();
    let (_, msg) = sign_err(&agent, "yk/9a");
    assert!(
        msg.contains("1 tries left") && msg.contains("waxseal unlock yk"),
        "{msg}"
    );
    assert_eq!(pin_retries(), 1);

    // Even the right PIN is not tried with one try left: the user must say so.
    std::fs::write(&pin, "123456\n").unwrap();
    let (code, msg) = sign_err(&agent, "yk/9a");
    assert_eq!(code, ErrorCode::PinIncorrect);
    assert!(
        msg.contains("only 1 PIN try is left") && msg.contains("waxseal unlock yk"),
        "{msg}"
    );
    assert_eq!(pin_retries(), 1);
    let (said, _) = ok(&agent, &["unlock", "yk"]);
    assert!(said.contains("accepted the PIN"), "{said}");
    assert_eq!(pin_retries(), 3);
    agent
        .client()
        .sign_digest("yk/9a", &[1u8; 32], Some(HashAlg::Sha256), None)
        .unwrap();
    assert!(
        !agent.log().contains("123456"),
        "the PIN must never be logged"
    );
    // The device unlock is in the audit log, naming the device, without the PIN.
    let audit =
        waxseal_agent::audit_chain::read_records(&agent.state_dir.join("audit/audit.jsonl"))
            .unwrap();
    assert!(!audit.contains("123456"), "the PIN must never be recorded");
    let unlocks: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "unlock")
        .collect();
    assert_eq!(unlocks.len(), 1, "{unlocks:?}");
    assert_eq!(unlocks[0]["key"], "yk", "{}", unlocks[0]);
    assert!(unlocks[0].get("code").is_none(), "{}", unlocks[0]);
}

#[test]
fn a_removed_card_is_absent_while_other_devices_serve_and_works_again_when_back() {
    let h = card();
    let hsm = SoftHsm::new();
    hsm.init_token("side", "5555", "1234");
    let hsm_pin = hsm.pin_file("hsm-pin", "1234");
    let tmp = tempfile::tempdir().unwrap();
    let pin = tmp.path().join("pin");
    std::fs::write(&pin, "123456\n").unwrap();
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&yk_device(&pin))
        .config(&pkcs11_device("hsm", "side", &hsm_pin))
        .start();
    ok(&agent, &["keys", "generate", "yk/9e", "--alg", "p256"]);
    ok(&agent, &["keys", "generate", "hsm/k", "--alg", "p256"]);
    let mut client = agent.client();
    let digest = Sha256::digest(b"x");
    client.sign_digest("yk/9e", &digest, None, None).unwrap();

    h.remove().unwrap();
    let started = Instant::now();
    match client.sign_digest("yk/9e", &digest, None, None) {
        Err(ClientError::Agent(e)) => assert_eq!(e.code, ErrorCode::DeviceAbsent, "{e}"),
        other => panic!("expected device-absent, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10), "no hang");
    client.sign_digest("hsm/k", &digest, None, None).unwrap();
    let (status, _) = ok(&agent, &["status"]);
    assert!(status.contains("yk (yubikey) absent"), "{status}");

    h.insert().unwrap();
    client.sign_digest("yk/9e", &digest, None, None).unwrap();
    client.sign_digest("hsm/k", &digest, None, None).unwrap();
}

#[test]
fn a_touch_key_makes_the_cli_ask_for_a_touch() {
    require("openssl");
    let h = card();
    let touches = || -> u64 { h.control("touches").unwrap().parse().unwrap() };
    let tmp = tempfile::tempdir().unwrap();
    let pin = tmp.path().join("pin");
    std::fs::write(&pin, "123456\n").unwrap();
    let agent = Agent::builder().config(&yk_device(&pin)).start();
    ok(
        &agent,
        &[
            "keys", "generate", "yk/9d", "--alg", "p256", "--touch", "always",
        ],
    );
    // Generating touched too: the agent signs the slot's certificate with the new key.
    let before = touches();
    let digest = Sha256::digest(b"touch me");
    let (sig, err) = ok(
        &agent,
        &["sign", "--digest", &hex::encode(digest), "--key", "yk/9d"],
    );
    assert_eq!(touches(), before + 1, "the card waited for a touch");
    assert!(
        err.contains(&format!("touch your YubiKey (serial {SERIAL})")),
        "{err}"
    );
    assert!(agent.log().contains("touch your YubiKey"));
    // The signature made after the touch is the slot's: OpenSSL checks it against the
    // key in the slot's certificate, which the card returns.
    let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial::from(SERIAL)).unwrap();
    let cert = yubikey::Certificate::read(&mut yk, yubikey::piv::SlotId::KeyManagement)
        .expect("the agent wrote a certificate into slot 9d");
    drop(yk);
    let dir = tmp.path();
    std::fs::write(
        dir.join("9d.der"),
        p256::pkcs8::der::Encode::to_der(&cert.subject_pki()).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("9d.sig"), B64.decode(sig.trim()).unwrap()).unwrap();
    let verify = |digest: &[u8]| {
        std::fs::write(dir.join("9d.digest"), digest).unwrap();
        Command::new("openssl")
            .current_dir(dir)
            .args([
                "pkeyutl",
                "-verify",
                "-pubin",
                "-keyform",
                "DER",
                "-inkey",
                "9d.der",
                "-in",
                "9d.digest",
                "-sigfile",
                "9d.sig",
            ])
            .output()
            .unwrap()
    };
    let out = verify(&digest);
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut other = digest;
    other[0] ^= 1;
    assert!(
        !verify(&other).status.success(),
        "verified for another digest"
    );
}

#[test]
fn public_key_carries_the_slot_certificate_only_when_it_is_for_the_slot_key() {
    let _h = card();
    let tmp = tempfile::tempdir().unwrap();
    let pin = tmp.path().join("pin");
    std::fs::write(&pin, "123456\n").unwrap();
    let agent = Agent::builder().config(&yk_device(&pin)).start();
    ok(&agent, &["keys", "generate", "yk/9a", "--alg", "p256"]);
    ok(&agent, &["keys", "generate", "yk/9e", "--alg", "p384"]);
    let mut client = agent.client();

    // The certificate the agent wrote into the slot, as the card returns it to the
    // `yubikey` crate beside the agent.
    let read = |slot: yubikey::piv::SlotId| {
        let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial::from(SERIAL)).unwrap();
        let cert = yubikey::Certificate::read(&mut yk, slot).unwrap();
        p256::pkcs8::der::Encode::to_der(&cert.cert).unwrap()
    };
    let cert_9a = read(yubikey::piv::SlotId::Authentication);
    let pk = client.public_key("yk/9a").unwrap();
    let carried = pk.certificate.expect("slot 9a holds a certificate").0;
    assert_eq!(carried, cert_9a);
    let (_, parsed) = x509_parser::parse_x509_certificate(&carried).unwrap();
    assert_eq!(parsed.subject().to_string(), "CN=yk/9a");
    assert_eq!(parsed.public_key().raw, &pk.spki_der.0[..]);
    assert!(client.public_key("yk/9e").unwrap().certificate.is_some());

    // Slot 9e given 9a's certificate (read anew on each call): not 9e's key, so left out.
    {
        let mut yk = yubikey::YubiKey::open_by_serial(yubikey::Serial::from(SERIAL)).unwrap();
        yk.authenticate(yubikey::MgmKey::default()).unwrap();
        let cert = yubikey::Certificate::from_bytes(cert_9a.clone()).unwrap();
        cert.write(
            &mut yk,
            yubikey::piv::SlotId::CardAuthentication,
            yubikey::certificate::CertInfo::Uncompressed,
        )
        .unwrap();
    }
    assert_eq!(read(yubikey::piv::SlotId::CardAuthentication), cert_9a);
    let pk_9e = client.public_key("yk/9e").unwrap();
    assert_eq!(pk_9e.certificate, None, "9a's certificate offered for 9e");
    assert_eq!(
        client.public_key("yk/9a").unwrap().certificate.unwrap().0,
        cert_9a
    );
}
