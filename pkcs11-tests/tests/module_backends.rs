//! The PKCS#11 module (`libwaxseal_pkcs11.so`) in front of the agent's other two
//! backends and of its confirmation, driven by programs nobody here wrote:
//!
//! - a TPM (swtpm): pkcs11-tool lists the slot and the objects of a P-256 and an
//!   RSA-2048 key, whose CKA_ID is SHA-1 of the public key bits (docs/pkcs11-module.md,
//!   "Objects"), signs with the ECDSA and RSA mechanisms and generates a key pair;
//!   OpenSSL's pkcs11 engine, p11tool and python-pkcs11 sign too; every signature is
//!   verified against the key the agent reports, and each leaves one `signed` record;
//! - a YubiKey (pcscd + vpcd + piv-emulator): the token, a slot key's objects with the
//!   slot certificate, ECDSA signatures, `ssh-keygen -D` listing what `ssh-add -L`
//!   lists on `ssh.sock`, an RSA key that signs PKCS#1 v1.5 only, and the card pulled
//!   out under an open session and put back;
//! - a SoftHSM2 key with `confirm = true`: the `confirm_program` is asked about
//!   pkcs11-tool's request; its yes signs, its no is CKR_FUNCTION_REJECTED and a
//!   `refused` audit record; a pending question holds up no other thread.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use piv_emulator::harness::{Config, Harness};
use pkcs11_tests::output_text as text;
use pkcs11_tests::{
    audit_records, bins, pkcs11_device, require, run_ok, tpm_device, Agent, SoftHsm, Swtpm,
};
use sha2::{Digest, Sha256};
use waxseal_agent::proto::KeyAlg;
use x509_parser::prelude::FromDer;

/// OpenSSL's pkcs11 engine (Debian's libengine-pkcs11-openssl).
const ENGINE: &str = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";
/// The Python with python-pkcs11 that scripts/install-deps sets up.
const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/py/.venv/bin/python");

/// An agent, the scratch directory its clients run in, and each key's public key PEM
/// written there as `LABEL.pem`.
struct Bench {
    agent: Agent,
    dir: tempfile::TempDir,
}

impl Bench {
    fn new(agent: Agent) -> Bench {
        require("pkcs11-tool");
        require("openssl");
        Bench {
            agent,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Generates `DEVICE/LABEL` through the agent; writes `LABEL.pem`.
    fn generate(&self, name: &str, alg: KeyAlg) {
        let made = self
            .agent
            .client()
            .generate_key(name, alg)
            .unwrap_or_else(|e| panic!("generate {name}: {e}\n{}", self.agent.log()));
        let label = name.split_once('/').unwrap().1;
        std::fs::write(self.path(&format!("{label}.pem")), made.pem).unwrap();
    }

    /// `pkcs11-tool --module libwaxseal_pkcs11.so ARGS` against this agent.
    fn tool(&self, args: &[&str]) -> Output {
        pkcs11_tests::module_tool(&self.agent, self.dir.path(), args)
    }

    /// As [`Bench::tool`], failing the test unless it exits 0; returns stdout.
    fn tool_ok(&self, args: &[&str]) -> String {
        pkcs11_tests::module_tool_ok(&self.agent, self.dir.path(), args)
    }

    fn openssl(&self) -> Command {
        let mut cmd = Command::new(require("openssl"));
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// `openssl dgst -sha256 -verify LABEL.pem`: OpenSSL accepts `sig` over `msg`.
    fn verify(&self, label: &str, msg: &str, sig: &str, extra: &[&str]) {
        let out = run_ok(
            self.openssl()
                .args(["dgst", "-sha256", "-verify", &format!("{label}.pem")])
                .args(extra)
                .args(["-signature", sig, msg]),
        );
        assert!(out.contains("Verified OK"), "{label} {sig}: {out}");
    }

    /// `signed` audit records of `key`.
    fn signed(&self, key: &str) -> usize {
        audit_records(&self.agent.state_dir)
            .iter()
            .filter(|r| r["event"] == "signed" && r["key"] == key)
            .count()
    }
}

/// `p11tool --test-sign` (GnuTLS) of the private key `label` of `token`: it signs
/// through the module and verifies against the token's public key object.
fn p11tool_test_sign(b: &Bench, token: &str, label: &str) {
    let out = Command::new(require("p11tool"))
        .env("WAXSEAL_SOCK", &b.agent.socket)
        .arg("--provider")
        .arg(&bins().pkcs11_module)
        .arg("--test-sign")
        .arg(format!("pkcs11:token={token};object={label};type=private"))
        .output()
        .unwrap();
    assert!(
        out.status.success()
            && text(&out).contains("Verifying against public key in the token... ok"),
        "p11tool --test-sign {token}/{label}: {}\nagent log:\n{}",
        text(&out),
        b.agent.log()
    );
}

/// pkcs11-tool's object listing, as (kind line, label, ID hex) per object.
fn objects(listing: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for line in listing.lines() {
        let trimmed = line.trim();
        if !line.starts_with(' ') && trimmed.contains("Object") {
            out.push((trimmed.to_string(), String::new(), String::new()));
        } else if let Some(last) = out.last_mut() {
            if let Some(v) = trimmed.strip_prefix("label:") {
                last.1 = v.trim().to_string();
            } else if let Some(v) = trimmed.strip_prefix("ID:") {
                last.2 = v.trim().to_string();
            }
        }
    }
    out
}

/// SHA-1 (by OpenSSL) of the subjectPublicKey BIT STRING of a DER SPKI, in hex.
fn spki_sha1(dir: &Path, spki_der: &[u8]) -> String {
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der).unwrap();
    let bits = dir.join("bits");
    std::fs::write(&bits, spki.subject_public_key.data.as_ref()).unwrap();
    let out = run_ok(
        Command::new(require("openssl"))
            .args(["dgst", "-sha1", "-r"])
            .arg(&bits),
    );
    out.split_whitespace().next().unwrap().to_string()
}

/// Whether pkcs11-tool reports CKR_FUNCTION_REJECTED: OpenSC 0.23 prints its value,
/// "unknown PKCS11 error (0x200)" (docs/pkcs11-module.md, "Errors").
fn rejected(output: &str) -> bool {
    output.contains("CKR_FUNCTION_REJECTED") || output.contains("(0x200)")
}

#[test]
fn a_tpm_device_is_a_token_whose_keys_sign_through_pkcs11_tool_and_the_engine() {
    let tpm = Swtpm::start();
    let keys = tempfile::Builder::new()
        .prefix("tpm-keys-")
        .tempdir()
        .unwrap();
    let agent = Agent::builder()
        .config(&tpm_device("tpm", &tpm, keys.path(), None))
        .start();
    let b = Bench::new(agent);
    b.generate("tpm/ec", KeyAlg::P256);
    b.generate("tpm/rsa", KeyAlg::Rsa(2048));

    // The slot: token label = the device name, model = the device kind.
    let slots = b.tool_ok(&["-L"]);
    assert!(slots.contains("token label        : tpm"), "{slots}");
    assert!(slots.contains("token manufacturer : waxseal"), "{slots}");
    assert!(slots.contains("token model        : tpm"), "{slots}");

    // Each key's objects, with CKA_ID = SHA-1 of the public key bits the agent reports
    // (TPM keys have no id of their own: list_keys says none).
    let listing = b.tool_ok(&["-O"]);
    let objs = objects(&listing);
    let listed = b.agent.client().list_keys().unwrap();
    let mut ids = std::collections::BTreeMap::new();
    for (label, private, public) in [
        (
            "ec",
            "Private Key Object; EC",
            "Public Key Object; EC  EC_POINT 256 bits",
        ),
        (
            "rsa",
            "Private Key Object; RSA",
            "Public Key Object; RSA 2048 bits",
        ),
    ] {
        let name = format!("tpm/{label}");
        let info = listed.keys.iter().find(|k| k.name == name).unwrap();
        assert!(info.id.is_none(), "a TPM key has no device id: {info:?}");
        let pk = b.agent.client().public_key(&name).unwrap();
        let id = spki_sha1(b.dir.path(), &pk.spki_der.0);
        let mine: Vec<_> = objs.iter().filter(|o| o.1 == label).collect();
        let kinds: BTreeSet<&str> = mine.iter().map(|o| o.0.as_str()).collect();
        assert_eq!(kinds, BTreeSet::from([private, public]), "{listing}");
        for o in &mine {
            assert_eq!(
                o.2, id,
                "{label}: CKA_ID is not SHA-1 of the key bits\n{listing}"
            );
        }
        ids.insert(label, id);
    }
    assert_eq!(objs.len(), 4, "{listing}");

    let msg = b"through PKCS#11 to the TPM";
    std::fs::write(b.path("msg"), msg).unwrap();
    std::fs::write(b.path("digest"), Sha256::digest(msg)).unwrap();
    let (ec, rsa) = (ids["ec"].as_str(), ids["rsa"].as_str());
    let (ec0, rsa0) = (b.signed("tpm/ec"), b.signed("tpm/rsa"));

    for (mech, input, out) in [
        ("ECDSA", "digest", "ecdsa.sig"),
        ("ECDSA-SHA256", "msg", "ecdsa-sha256.sig"),
    ] {
        b.tool_ok(&[
            "--sign",
            "-m",
            mech,
            "--id",
            ec,
            "--signature-format",
            "openssl",
            "-i",
            input,
            "-o",
            out,
        ]);
        b.verify("ec", "msg", out, &[]);
    }
    b.tool_ok(&[
        "--sign",
        "-m",
        "SHA256-RSA-PKCS",
        "--id",
        rsa,
        "-i",
        "msg",
        "-o",
        "rsa.sig",
    ]);
    b.verify("rsa", "msg", "rsa.sig", &[]);
    // PSS with the salt the module asks for (the digest's length), which OpenSSL checks
    // exactly, not "auto".
    b.tool_ok(&[
        "--sign",
        "-m",
        "RSA-PKCS-PSS",
        "--hash-algorithm",
        "SHA256",
        "--mgf",
        "MGF1-SHA256",
        "--salt-len",
        "32",
        "--id",
        rsa,
        "-i",
        "digest",
        "-o",
        "pss.sig",
    ]);
    b.verify(
        "rsa",
        "msg",
        "pss.sig",
        &[
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
        ],
    );
    assert_eq!(
        b.signed("tpm/ec") - ec0,
        2,
        "one signed record per signature"
    );
    assert_eq!(
        b.signed("tpm/rsa") - rsa0,
        2,
        "one signed record per signature"
    );

    // OpenSSL's pkcs11 engine finds the key by token and object label.
    require(ENGINE);
    for label in ["ec", "rsa"] {
        let sig = format!("engine-{label}.sig");
        run_ok(
            b.openssl()
                .env("WAXSEAL_SOCK", &b.agent.socket)
                .env("PKCS11_MODULE_PATH", &bins().pkcs11_module)
                .args([
                    "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine", "-sign",
                ])
                .arg(format!("pkcs11:token=tpm;object={label}"))
                .args(["-out", &sig, "msg"]),
        );
        b.verify(label, "msg", &sig, &[]);
    }
    assert_eq!(b.signed("tpm/ec") - ec0, 3);
    assert_eq!(b.signed("tpm/rsa") - rsa0, 3);

    // The longer hashes, hashed by the module: on P-256 the TPM signs the leftmost
    // 256 bits of a SHA-384 or SHA-512 digest, as ECDSA verifiers expect.
    for (mech, id, label, hash, extra) in [
        ("ECDSA-SHA384", ec, "ec", "-sha384", &[][..]),
        ("ECDSA-SHA512", ec, "ec", "-sha512", &[][..]),
        (
            "SHA512-RSA-PKCS-PSS",
            rsa,
            "rsa",
            "-sha512",
            &[
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:64",
            ][..],
        ),
    ] {
        let mut args = vec![
            "--sign", "-m", mech, "--id", id, "-i", "msg", "-o", "long.sig",
        ];
        if label == "ec" {
            args.extend(["--signature-format", "openssl"]);
        } else {
            args.extend(["--mgf", "MGF1-SHA512", "--salt-len", "64"]);
        }
        b.tool_ok(&args);
        let out = run_ok(
            b.openssl()
                .args(["dgst", hash, "-verify", &format!("{label}.pem")])
                .args(extra)
                .args(["-signature", "long.sig", "msg"]),
        );
        assert!(out.contains("Verified OK"), "{mech}: {out}");
    }

    // C_GenerateKeyPair on the TPM token: the key's CKA_ID is SHA-1 of its key bits,
    // and it signs; a CKA_ID of the caller's choosing cannot be kept on a TPM, so it is
    // refused (docs/pkcs11-module.md, "Key generation and certificates") and nothing
    // is generated.
    let made = b.tool_ok(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "gen",
    ]);
    let pk = b.agent.client().public_key("tpm/gen").unwrap();
    std::fs::write(b.path("gen.pem"), &pk.pem).unwrap();
    let gen = spki_sha1(b.dir.path(), &pk.spki_der.0);
    assert_eq!(
        objects(&made)
            .iter()
            .map(|o| o.2.as_str())
            .collect::<Vec<_>>(),
        [gen.as_str(), gen.as_str()],
        "{made}"
    );
    b.tool_ok(&[
        "--sign",
        "-m",
        "ECDSA-SHA256",
        "--id",
        &gen,
        "--signature-format",
        "openssl",
        "-i",
        "msg",
        "-o",
        "gen.sig",
    ]);
    b.verify("gen", "msg", "gen.sig", &[]);
    let out = b.tool(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "chosen",
        "--id",
        "0a0b",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("CKR_ATTRIBUTE_VALUE_INVALID"),
        "{}",
        text(&out)
    );
    let names: Vec<String> = b
        .agent
        .client()
        .list_keys()
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["tpm/ec", "tpm/gen", "tpm/rsa"]);
    // GnuTLS's p11tool signs and checks against the public key objects.
    for label in ["ec", "rsa"] {
        p11tool_test_sign(&b, "tpm", label);
    }

    // The mechanisms tell the truth for this token: EC and RSA-2048 keys.
    let mechs = b.tool_ok(&["-M"]);
    for m in ["ECDSA-SHA256", "SHA256-RSA-PKCS-PSS"] {
        assert!(mechs.contains(m), "{m}: {mechs}");
    }
    assert!(!mechs.contains("EDDSA"), "{mechs}");

    // Many ECDSA signatures from python-pkcs11: the TPM's r and s are sometimes shorter
    // than 32 bytes and are left-padded (docs/protocol.md, ECDSA signatures;
    // docs/pkcs11-module.md, "Mechanisms"). One in 128 signatures has an r or s below
    // 2^248 (a zero first byte once padded): among 1500 at least one does (all but
    // about 1 run in 130,000), and every one must be 64 bytes of r‖s and verify.
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: run scripts/install-deps (it makes the venv with python-pkcs11)"
    );
    let script = r#"
import os, sys
import pkcs11
from pkcs11 import Mechanism, ObjectClass
token = pkcs11.lib(sys.argv[1]).get_token(token_label="tpm")
with token.open() as s:
    key = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="ec")
    for _ in range(1500):
        digest = os.urandom(32)
        print(digest.hex(), key.sign(digest, mechanism=Mechanism.ECDSA).hex())
"#;
    let ec1 = b.signed("tpm/ec");
    let out = run_ok(
        Command::new(PYTHON)
            .env("WAXSEAL_SOCK", &b.agent.socket)
            .arg("-c")
            .arg(script)
            .arg(&bins().pkcs11_module),
    );
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    use p256::pkcs8::DecodePublicKey as _;
    let spki = b.agent.client().public_key("tpm/ec").unwrap().spki_der;
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki.0).unwrap();
    let (mut n, mut padded) = (0, 0);
    for line in out.lines() {
        let (digest, sig) = line.split_once(' ').unwrap();
        let sig = hex::decode(sig).unwrap();
        assert_eq!(sig.len(), 64, "r‖s: {line}");
        if sig[0] == 0 || sig[32] == 0 {
            padded += 1;
        }
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        vk.verify_prehash(&hex::decode(digest).unwrap(), &sig)
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        n += 1;
    }
    assert_eq!(n, 1500);
    assert!(padded > 0, "no short r or s among 1500 signatures");
    assert_eq!(b.signed("tpm/ec") - ec1, 1500);
}

const SERIAL: u32 = 20_260_011;

#[test]
fn a_yubikey_slot_key_is_seen_with_its_certificate_and_signs() {
    require("ssh-keygen");
    require("ssh-add");
    let mut config = Config::new(bins().piv_emulator.clone());
    config.serial = SERIAL;
    config.touch_delay = Duration::from_millis(100);
    let _card = Harness::start(config).unwrap_or_else(|e| {
        panic!("pcscd + piv-emulator did not start ({e}); run scripts/install-deps")
    });
    let pins = tempfile::tempdir().unwrap();
    let pin = pins.path().join("pin");
    std::fs::write(&pin, "123456\n").unwrap();
    let agent = Agent::builder()
        .config(&format!(
            "[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nserial = {SERIAL}\npin = \"file:{}\"\n",
            pin.display()
        ))
        .start();
    let b = Bench::new(agent);
    b.generate("yk/9c", KeyAlg::P256);
    let pk = b.agent.client().public_key("yk/9c").unwrap();
    let cert = pk
        .certificate
        .expect("the agent writes the slot certificate at generation")
        .0;

    let slots = b.tool_ok(&["-L"]);
    assert!(slots.contains("token label        : yk"), "{slots}");
    assert!(slots.contains("token model        : yubikey"), "{slots}");

    // Private key, public key and certificate, with one CKA_ID: SHA-1 of the key bits.
    let listing = b.tool_ok(&["-O"]);
    let objs = objects(&listing);
    let id = spki_sha1(b.dir.path(), &pk.spki_der.0);
    let kinds: BTreeSet<&str> = objs.iter().map(|o| o.0.as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "Private Key Object; EC",
            "Public Key Object; EC  EC_POINT 256 bits",
            "Certificate Object; type = X.509 cert",
        ]),
        "{listing}"
    );
    for o in &objs {
        assert_eq!(o.1, "9c", "{listing}");
        assert_eq!(o.2, id, "{listing}");
    }
    // The certificate object's CKA_VALUE is the slot's certificate.
    b.tool_ok(&[
        "--read-object",
        "--type",
        "cert",
        "--id",
        &id,
        "-o",
        "cert.der",
    ]);
    assert_eq!(std::fs::read(b.path("cert.der")).unwrap(), cert);

    std::fs::write(b.path("msg"), b"through PKCS#11 to the card").unwrap();
    std::fs::write(
        b.path("digest"),
        Sha256::digest(b"through PKCS#11 to the card"),
    )
    .unwrap();
    let before = b.signed("yk/9c");
    b.tool_ok(&[
        "--sign",
        "-m",
        "ECDSA",
        "--id",
        &id,
        "--signature-format",
        "openssl",
        "-i",
        "digest",
        "-o",
        "sig",
    ]);
    b.verify("9c", "msg", "sig", &[]);
    assert_eq!(b.signed("yk/9c") - before, 1);
    // SHA-384 hashed by the module: the card signs its leftmost 256 bits.
    b.tool_ok(&[
        "--sign",
        "-m",
        "ECDSA-SHA384",
        "--id",
        &id,
        "--signature-format",
        "openssl",
        "-i",
        "msg",
        "-o",
        "sig384",
    ]);
    let out = run_ok(b.openssl().args([
        "dgst",
        "-sha384",
        "-verify",
        "9c.pem",
        "-signature",
        "sig384",
        "msg",
    ]));
    assert!(out.contains("Verified OK"), "{out}");
    assert_eq!(b.signed("yk/9c") - before, 2);
    p11tool_test_sign(&b, "yk", "9c");

    // C_GenerateKeyPair: the label names the PIV slot. A slot gets its key and its slot
    // certificate; a label that is no slot is an invalid attribute value (no key).
    let made = b.tool_ok(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "9d",
    ]);
    assert!(made.contains("label:      9d"), "{made}");
    let certs = b.tool_ok(&["-O", "--type", "cert"]);
    assert_eq!(
        objects(&certs)
            .iter()
            .map(|o| o.1.as_str())
            .collect::<BTreeSet<_>>(),
        BTreeSet::from(["9c", "9d"]),
        "{certs}"
    );
    let out = b.tool(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "release",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("CKR_ATTRIBUTE_VALUE_INVALID"),
        "{}",
        text(&out)
    );
    let keys = b.agent.client().list_keys().unwrap().keys;
    assert_eq!(
        keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
        ["yk/9c", "yk/9d"]
    );

    // ssh-keygen -D reads through the module the keys ssh-add -L gets from ssh.sock.
    let keys = |out: &[u8]| -> BTreeSet<String> {
        String::from_utf8_lossy(out)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some(format!("{} {}", f.next()?, f.next()?))
            })
            .collect()
    };
    let via_module = run_ok(
        Command::new("ssh-keygen")
            .env("WAXSEAL_SOCK", &b.agent.socket)
            .arg("-D")
            .arg(&bins().pkcs11_module),
    );
    let via_socket = run_ok(
        Command::new("ssh-add")
            .arg("-L")
            .env("SSH_AUTH_SOCK", &b.agent.ssh_socket),
    );
    let (via_module, via_socket) = (keys(via_module.as_bytes()), keys(via_socket.as_bytes()));
    assert_eq!(via_module.len(), 2, "9c and 9d: {via_module:?}");
    assert!(
        via_module
            .iter()
            .all(|k| k.starts_with("ecdsa-sha2-nistp256 ")),
        "{via_module:?}"
    );
    assert_eq!(via_module, via_socket);
}

#[test]
fn a_confirm_key_signs_through_the_module_only_when_the_person_says_yes() {
    let hsm = SoftHsm::new();
    hsm.init_token("tok", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let tmp = tempfile::tempdir().unwrap();
    // The confirm program (docs/architecture.md, step 6 of a request): it records the
    // question it was given and answers with the exit status the test wrote in
    // `answer` beforehand.
    let asked = tmp.path().join("asked");
    let answer = tmp.path().join("answer");
    let program = pkcs11_tests::write_script(
        tmp.path(),
        "confirm",
        &format!(
            "{{ printf 'KEY=%s\\nCALLER=%s\\n' \"$WAXSEAL_CONFIRM_KEY\" \"$WAXSEAL_CONFIRM_CALLER\"; printf '%s\\n--\\n' \"$1\"; }} >> '{}'\nexit \"$(cat '{}')\"",
            asked.display(),
            answer.display()
        ),
    );
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&format!(
            "[agent]\nconfirm_program = \"{}\"\nconfirm_timeout_secs = 20\n\n{}\n[[key]]\nname = \"hsm/ec\"\npurposes = [\"digest\"]\nconfirm = true\n",
            program.display(),
            pkcs11_device("hsm", "tok", &pin)
        ))
        .start();
    let b = Bench::new(agent);
    b.generate("hsm/ec", KeyAlg::P256);
    let ids = objects(&b.tool_ok(&["-O", "--type", "privkey"]));
    let id = ids.iter().find(|o| o.1 == "ec").unwrap().2.clone();

    let msg = b"asks first";
    std::fs::write(b.path("msg"), msg).unwrap();
    let sign = |out: &str| {
        b.tool(&[
            "--sign",
            "-m",
            "ECDSA-SHA256",
            "--id",
            &id,
            "--signature-format",
            "openssl",
            "-i",
            "msg",
            "-o",
            out,
        ])
    };

    // Yes: the signature is made and verifies; the question named the key, pkcs11-tool
    // as the caller, and the digest.
    std::fs::write(&answer, "0").unwrap();
    let out = sign("yes.sig");
    assert!(out.status.success(), "{}\n{}", text(&out), b.agent.log());
    b.verify("ec", "msg", "yes.sig", &[]);
    let question = std::fs::read_to_string(&asked).unwrap();
    assert!(question.contains("KEY=hsm/ec\n"), "{question}");
    let caller = question
        .lines()
        .find_map(|l| l.strip_prefix("CALLER="))
        .unwrap();
    assert!(caller.contains("/pkcs11-tool)"), "{question}");
    assert!(
        question.contains(&hex::encode(Sha256::digest(msg))),
        "{question}"
    );
    assert_eq!(b.signed("hsm/ec"), 1);

    // No: CKR_FUNCTION_REJECTED, nothing signed, and the refusal is audited with the
    // program that asked.
    std::fs::write(&answer, "1").unwrap();
    let out = sign("no.sig");
    assert!(
        !out.status.success(),
        "signed although denied: {}",
        text(&out)
    );
    assert!(rejected(&text(&out)), "{}", text(&out));
    // pkcs11-tool 0.23 tries again when C_Sign fails: C_SignInit, C_SignUpdate,
    // C_SignFinal (OpenSC's pkcs11-spy shows both). Each try is a request of its own,
    // asked and refused on its own.
    let questions = std::fs::read_to_string(&asked).unwrap();
    let denied_asks: Vec<&str> = questions
        .lines()
        .filter_map(|l| l.strip_prefix("CALLER="))
        .skip(1)
        .collect();
    assert_eq!(denied_asks.len(), 2, "{questions}");
    assert!(
        denied_asks
            .iter()
            .all(|c| c.contains("/pkcs11-tool)") && *c == denied_asks[0]),
        "the same pkcs11-tool process asked both times: {questions}"
    );
    assert_eq!(b.signed("hsm/ec"), 1, "a denied request signs nothing");
    let records = audit_records(&b.agent.state_dir);
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "refused" && r["key"] == "hsm/ec")
        .collect();
    assert_eq!(refused.len(), denied_asks.len(), "{records:?}");
    for r in &refused {
        assert_eq!(r["code"], "confirm-denied", "{r}");
        assert_eq!(r["digest"], hex::encode(Sha256::digest(msg)), "{r}");
        assert!(
            r["caller"]["exe"]
                .as_str()
                .is_some_and(|e| e.ends_with("/pkcs11-tool")),
            "{r}"
        );
    }
}

/// A signature waiting for its confirmation holds up nothing else in the program that
/// loaded the module (docs/pkcs11-module.md, "Threads": no module-wide lock while the
/// agent works): python-pkcs11 signs with the confirm key on one thread and, while the
/// person has not answered yet, lists the token's keys and signs with another key on
/// its main thread; then the answer comes and the first signature is made.
#[test]
fn a_pending_confirmation_holds_up_nothing_else_in_the_process() {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: run scripts/install-deps (it makes the venv with python-pkcs11)"
    );
    require("mkfifo");
    let hsm = SoftHsm::new();
    hsm.init_token("tok", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let tmp = tempfile::tempdir().unwrap();
    // The confirm program says it was asked on one FIFO (the script waits for that
    // line), then waits for the answer on another: the person answers when the script
    // writes to it.
    let asked = tmp.path().join("asked");
    let gate = tmp.path().join("gate");
    run_ok(Command::new("mkfifo").arg(&asked).arg(&gate));
    let program = pkcs11_tests::write_script(
        tmp.path(),
        "confirm",
        &format!(
            "printf '%s\\n' \"$WAXSEAL_CONFIRM_KEY\" >> '{}'\nread answer < '{}'\nexit \"$answer\"",
            asked.display(),
            gate.display()
        ),
    );
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&format!(
            "[agent]\nconfirm_program = \"{}\"\nconfirm_timeout_secs = 30\n\n{}\n[[key]]\nname = \"hsm/asks\"\npurposes = [\"digest\"]\nconfirm = true\n",
            program.display(),
            pkcs11_device("hsm", "tok", &pin)
        ))
        .start();
    let b = Bench::new(agent);
    b.generate("hsm/asks", KeyAlg::P256);
    b.generate("hsm/free", KeyAlg::P256);

    let script = r#"
import os, select, sys, threading
import pkcs11
from pkcs11 import Mechanism, ObjectClass
module, asked, gate = sys.argv[1:4]
token = pkcs11.lib(module).get_token(token_label="hsm")
results = {}

def confirmed():
    with token.open() as s:
        key = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="asks")
        results["asks"] = key.sign(b"\x01" * 32, mechanism=Mechanism.ECDSA).hex()

worker = threading.Thread(target=confirmed)
worker.start()
# Wait for the confirm program's line on the FIFO (opened without blocking, so that a
# program never asked fails the deadline instead of hanging the test).
fd = os.open(asked, os.O_RDONLY | os.O_NONBLOCK)
question = b""
while not question.endswith(b"\n"):
    ready, _, _ = select.select([fd], [], [], 20)
    assert ready, "the confirm program was not asked"
    chunk = os.read(fd, 256)
    assert chunk or not question, "the confirm program closed its line early"
    question += chunk
os.close(fd)
print("asked", question.decode().strip(), flush=True)
# The person has not answered: the rest of the process goes on.
with token.open() as s:
    labels = sorted(k.label for k in s.get_objects({pkcs11.Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
    key = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="free")
    results["free"] = key.sign(b"\x02" * 32, mechanism=Mechanism.ECDSA).hex()
assert worker.is_alive(), "the confirmed signature did not wait for its answer"
print("while-asking", ",".join(labels), results["free"], flush=True)
with open(gate, "w") as g:
    g.write("0\n")
worker.join(20)
assert not worker.is_alive(), "no signature after the answer"
print("asks", results["asks"], flush=True)
"#;
    let out = Command::new(PYTHON)
        .env("WAXSEAL_SOCK", &b.agent.socket)
        .arg("-c")
        .arg(script)
        .arg(&bins().pkcs11_module)
        .arg(&asked)
        .arg(&gate)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\nagent log:\n{}",
        text(&out),
        b.agent.log()
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0], ["asked", "hsm/asks"], "{stdout}");
    assert_eq!(lines[1][..2], ["while-asking", "asks,free"], "{stdout}");
    assert_eq!(lines[2][0], "asks", "{stdout}");
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    use p256::pkcs8::DecodePublicKey as _;
    for (label, digest, sig) in [
        ("free", [2u8; 32], lines[1][2]),
        ("asks", [1u8; 32], lines[2][1]),
    ] {
        let spki = b
            .agent
            .client()
            .public_key(&format!("hsm/{label}"))
            .unwrap()
            .spki_der;
        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki.0).unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&hex::decode(sig).unwrap()).unwrap();
        vk.verify_prehash(&digest, &sig)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(b.signed(&format!("hsm/{label}")), 1, "{label}");
    }
}

/// The card pulled out under an open session of python-pkcs11: the token is no longer
/// present (docs/pkcs11-module.md, "Slots and tokens"), signing answers
/// CKR_DEVICE_REMOVED ("Errors": `device-absent`) without a hang, and once the card is
/// back the same session signs again.
#[test]
fn a_yubikey_pulled_out_under_an_open_session_and_put_back() {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: run scripts/install-deps (it makes the venv with python-pkcs11)"
    );
    let mut config = Config::new(bins().piv_emulator.clone());
    config.serial = SERIAL;
    let card = Harness::start(config).unwrap_or_else(|e| {
        panic!("pcscd + piv-emulator did not start ({e}); run scripts/install-deps")
    });
    let pins = tempfile::tempdir().unwrap();
    let pin = pins.path().join("pin");
    std::fs::write(&pin, "123456\n").unwrap();
    let agent = Agent::builder()
        .config(&format!(
            "[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nserial = {SERIAL}\npin = \"file:{}\"\n",
            pin.display()
        ))
        .start();
    let b = Bench::new(agent);
    b.generate("yk/9c", KeyAlg::P256);

    // The script signs, then waits for a line on stdin before each next step.
    let script = r#"
import sys
import pkcs11
from pkcs11 import Mechanism, ObjectClass
lib = pkcs11.lib(sys.argv[1])
session = lib.get_token(token_label="yk").open()
key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="9c")
def step(tag):
    try:
        sig = key.sign(bytes([len(tag)]) * 32, mechanism=Mechanism.ECDSA).hex()
    except pkcs11.PKCS11Error as e:
        sig = type(e).__name__
    present = len(lib.get_slots(token_present=True))
    print(tag, sig, present, flush=True)
    sys.stdin.readline()
step("in")
step("out")
step("back-in")
"#;
    let mut child = Command::new(PYTHON)
        .env("WAXSEAL_SOCK", &b.agent.socket)
        .arg("-c")
        .arg(script)
        .arg(&bins().pkcs11_module)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut next = |what: &str| -> Vec<String> {
        use std::io::BufRead as _;
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let fields: Vec<String> = line.split_whitespace().map(String::from).collect();
        assert_eq!(
            fields.len(),
            3,
            "{what}: {line:?}\nagent log:\n{}",
            b.agent.log()
        );
        fields
    };
    let spki = b.agent.client().public_key("yk/9c").unwrap().spki_der;
    let verify = |tag: &str, sig: &str| {
        use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
        use p256::pkcs8::DecodePublicKey as _;
        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki.0).unwrap();
        let sig = hex::decode(sig).unwrap_or_else(|_| panic!("{tag}: no signature: {sig}"));
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        vk.verify_prehash(&[tag.len() as u8; 32], &sig)
            .unwrap_or_else(|e| panic!("{tag}: {e}"));
    };
    use std::io::Write as _;

    let got = next("in");
    verify("in", &got[1]);
    assert_eq!(got[2], "1", "the token is present: {got:?}");
    card.remove().unwrap();
    let started = std::time::Instant::now();
    stdin.write_all(b"\n").unwrap();
    let got = next("out");
    assert!(started.elapsed() < Duration::from_secs(10), "a hang");
    assert_eq!(got[1], "DeviceRemoved", "{got:?}");
    assert_eq!(got[2], "0", "no token without the card: {got:?}");
    card.insert().unwrap();
    stdin.write_all(b"\n").unwrap();
    let got = next("back-in");
    verify("back-in", &got[1]);
    assert_eq!(got[2], "1", "{got:?}");
    stdin.write_all(b"\n").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(b.signed("yk/9c"), 2);
}

/// A YubiKey RSA key signs PKCS#1 v1.5 only (the agent answers `unsupported` to PSS for
/// it): the token's mechanism list offers no PSS mechanism, and `C_SignInit` with one
/// is CKR_MECHANISM_INVALID before anything reaches the agent (docs/pkcs11-module.md,
/// "Mechanisms": the list tells the truth per token); SHA256-RSA-PKCS signs.
#[test]
fn a_yubikey_rsa_key_offers_and_signs_pkcs1_only() {
    let mut config = Config::new(bins().piv_emulator.clone());
    config.serial = SERIAL;
    let _card = Harness::start(config).unwrap_or_else(|e| {
        panic!("pcscd + piv-emulator did not start ({e}); run scripts/install-deps")
    });
    let pins = tempfile::tempdir().unwrap();
    let pin = pins.path().join("pin");
    std::fs::write(&pin, "123456\n").unwrap();
    let agent = Agent::builder()
        .config(&format!(
            "[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nserial = {SERIAL}\npin = \"file:{}\"\n",
            pin.display()
        ))
        .start();
    let b = Bench::new(agent);
    b.generate("yk/9a", KeyAlg::Rsa(2048));
    let mechs = b.tool_ok(&["-M"]);
    assert!(mechs.contains("SHA256-RSA-PKCS,"), "{mechs}");
    assert!(
        !mechs.contains("PSS"),
        "PSS offered for a YubiKey RSA key: {mechs}"
    );

    let spki = b.agent.client().public_key("yk/9a").unwrap().spki_der;
    let id = spki_sha1(b.dir.path(), &spki.0);
    std::fs::write(b.path("msg"), b"PKCS#1 v1.5 on the card").unwrap();
    std::fs::write(b.path("digest"), Sha256::digest(b"PKCS#1 v1.5 on the card")).unwrap();
    let records = || audit_records(&b.agent.state_dir).len();
    let before = records();
    let out = b.tool(&[
        "--sign",
        "-m",
        "RSA-PKCS-PSS",
        "--hash-algorithm",
        "SHA256",
        "--mgf",
        "MGF1-SHA256",
        "--salt-len",
        "32",
        "--id",
        &id,
        "-i",
        "digest",
        "-o",
        "pss.sig",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("C_SignInit") && text(&out).contains("CKR_MECHANISM_INVALID"),
        "{}",
        text(&out)
    );
    assert_eq!(records(), before, "the agent was asked nothing");

    b.tool_ok(&[
        "--sign",
        "-m",
        "SHA256-RSA-PKCS",
        "--id",
        &id,
        "-i",
        "msg",
        "-o",
        "rsa.sig",
    ]);
    b.verify("9a", "msg", "rsa.sig", &[]);
    assert_eq!(b.signed("yk/9a"), 1);
    // GnuTLS's p11tool picks a mechanism the token offers, signs and verifies.
    p11tool_test_sign(&b, "yk", "9a");
    assert!(b.signed("yk/9a") > 1);
}
