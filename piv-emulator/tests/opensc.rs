//! Cross-check against OpenSC's PIV driver and OpenSSL, clients nobody here wrote.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use x509_cert::der::{pem::LineEnding, EncodePem};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;
use yubikey::piv::{self, AlgorithmId, SlotId};
use yubikey::{Certificate, MgmKey, PinPolicy, Serial, TouchPolicy, YubiKey};

const MODULE: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";

/// Runs a command, asserts success, returns stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn pem(cert: &x509_cert::Certificate, path: &Path) {
    std::fs::write(path, cert.to_pem(LineEnding::LF).unwrap()).unwrap();
}

#[test]
fn opensc_names_the_card_lists_objects_and_signs() {
    let h = common::start();
    let dir = h.dir().to_path_buf();
    // No on-disk cache of card files between runs.
    let conf = dir.join("opensc.conf");
    std::fs::write(
        &conf,
        "app default {\n framework pkcs15 {\n  use_file_caching = no;\n }\n}\n",
    )
    .unwrap();
    let opensc = |program: &str| {
        let mut c = Command::new(program);
        c.env("OPENSC_CONF", &conf);
        c
    };

    let name = run(opensc("opensc-tool")
        .arg("-r")
        .arg(h.reader_name())
        .arg("-n"));
    assert!(
        name.contains("Personal Identity Verification Card"),
        "opensc-tool -n: {name}"
    );

    // Key and certificate in 9A, written through the emulator by the yubikey crate.
    let mut yk = YubiKey::open_by_serial(Serial::from(common::SERIAL)).unwrap();
    yk.authenticate(MgmKey::default()).unwrap();
    let spki = piv::generate(
        &mut yk,
        SlotId::Authentication,
        AlgorithmId::EccP256,
        PinPolicy::Once,
        TouchPolicy::Never,
    )
    .unwrap();
    yk.verify_pin(b"123456").unwrap();
    let cert = Certificate::generate_self_signed::<_, p256::NistP256>(
        &mut yk,
        SlotId::Authentication,
        SerialNumber::new(&[0x07]).unwrap(),
        Validity::from_now(Duration::from_secs(3600)).unwrap(),
        Name::from_str("CN=opensc cross-check").unwrap(),
        spki,
        |_| Ok(()),
    )
    .unwrap();
    let slot_attestation = piv::attest(&mut yk, SlotId::Authentication).unwrap();
    let f9 = Certificate::read(&mut yk, SlotId::Attestation).unwrap();
    drop(yk);

    let objects = run(opensc("pkcs11-tool").args([
        "--module",
        MODULE,
        "--login",
        "--pin",
        "123456",
        "--list-objects",
    ]));
    assert!(
        objects.contains("Private Key Object; EC"),
        "private key listed: {objects}"
    );
    assert!(
        objects.contains("Certificate Object") && objects.contains("CN=opensc cross-check"),
        "certificate listed: {objects}"
    );

    // Sign with pkcs11-tool, verify with openssl against the certificate's key.
    let msg = dir.join("msg.txt");
    let sig = dir.join("msg.sig");
    let cert_pem = dir.join("cert.pem");
    let pubkey = dir.join("pub.pem");
    std::fs::write(&msg, b"signed through OpenSC and the emulated card\n").unwrap();
    pem(&cert.cert, &cert_pem);
    run(opensc("pkcs11-tool")
        .args(["--module", MODULE, "--login", "--pin", "123456"])
        .args(["--sign", "--id", "01", "--mechanism", "ECDSA-SHA256"])
        .args(["--signature-format", "openssl", "--input-file"])
        .arg(&msg)
        .arg("--output-file")
        .arg(&sig));
    let pubkey_pem = run(Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(&cert_pem));
    std::fs::write(&pubkey, pubkey_pem).unwrap();
    let verified = run(Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&pubkey)
        .arg("-signature")
        .arg(&sig)
        .arg(&msg));
    assert!(verified.contains("Verified OK"), "openssl dgst: {verified}");

    // Attestation chain: root → f9 → slot certificate.
    let root = dir.join("root.pem");
    let f9_pem = dir.join("f9.pem");
    let slot_pem = dir.join("slot.pem");
    std::fs::write(&root, h.attestation_root_pem()).unwrap();
    pem(&f9.cert, &f9_pem);
    pem(&common::cert(&slot_attestation), &slot_pem);
    let out = run(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&f9_pem)
        .arg(&slot_pem));
    assert!(out.contains(": OK"), "openssl verify: {out}");
    // And a wrong chain is refused: the slot certificate is not signed by the root.
    let bad = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&root)
        .arg(&slot_pem)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
