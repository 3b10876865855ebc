//! The PKCS#11 module (`libwaxseal_pkcs11.so`) in front of a real agent on a SoftHSM2
//! token, driven by programs we did not write: OpenSC's pkcs11-tool, GnuTLS's p11tool
//! and OpenSSL's pkcs11 engine (libp11). Their signatures are verified by OpenSSL and
//! leave `signed` records in the agent's audit log; the agent's lock and `allow_exe`
//! refuse them; an agent that dies under an open session gives CKR_DEVICE_REMOVED and
//! a restarted one signs again (driven through `cryptoki`, in this process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use pkcs11_tests::output_text as text;
use pkcs11_tests::{audit_records, bins, pkcs11_device, require, run_ok, Agent, SoftHsm};
use sha2::{Digest, Sha256};
use waxseal_agent::proto::KeyAlg;

/// OpenSSL's pkcs11 engine (Debian's libengine-pkcs11-openssl).
const ENGINE: &str = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";

/// A token behind an agent, device `hsm`, with the keys `hsm/ec` (P-256) and `hsm/rsa`
/// (RSA 2048) generated through the agent.
struct Setup {
    hsm: SoftHsm,
    agent: Agent,
    dir: tempfile::TempDir,
    config: String,
}

impl Setup {
    fn new(extra_config: &str) -> Setup {
        require("pkcs11-tool");
        let hsm = SoftHsm::new();
        hsm.init_token("tok", "5555", "1234");
        let pin = hsm.pin_file("pin", "1234");
        let config = format!("{}\n{extra_config}", pkcs11_device("hsm", "tok", &pin));
        let agent = Agent::builder().softhsm(&hsm).config(&config).start();
        let mut client = agent.client();
        client.generate_key("hsm/ec", KeyAlg::P256).unwrap();
        client.generate_key("hsm/rsa", KeyAlg::Rsa(2048)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for key in ["ec", "rsa"] {
            let pk = client.public_key(&format!("hsm/{key}")).unwrap();
            std::fs::write(dir.path().join(format!("{key}.pem")), pk.pem).unwrap();
        }
        Setup {
            hsm,
            agent,
            dir,
            config,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `pkcs11-tool --module libwaxseal_pkcs11.so ARGS` against this agent.
    fn tool(&self, args: &[&str]) -> Output {
        pkcs11_tests::module_tool(&self.agent, self.dir.path(), args)
    }

    /// As [`Setup::tool`], failing the test unless it exits 0; returns stdout.
    fn tool_ok(&self, args: &[&str]) -> String {
        pkcs11_tests::module_tool_ok(&self.agent, self.dir.path(), args)
    }

    /// The CKA_ID (hex) pkcs11-tool shows for the private key labelled `label`:
    /// pkcs11-tool 0.23 picks the key to sign with by `--id`, not by `--label`.
    fn id(&self, label: &str) -> String {
        let objects = self.tool_ok(&["-O", "--type", "privkey"]);
        let mut current = None;
        for line in objects.lines().map(str::trim) {
            if let Some(l) = line.strip_prefix("label:") {
                current = Some(l.trim().to_string());
            }
            if let Some(id) = line.strip_prefix("ID:") {
                if current.as_deref() == Some(label) {
                    return id.trim().to_string();
                }
            }
        }
        panic!("no private key labelled {label}: {objects}")
    }

    fn openssl(&self) -> Command {
        require("openssl");
        let mut cmd = Command::new("openssl");
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// OpenSSL through its pkcs11 engine, loading our module.
    fn engine(&self) -> Command {
        require(ENGINE);
        let mut cmd = self.openssl();
        cmd.env("WAXSEAL_SOCK", &self.agent.socket)
            .env("PKCS11_MODULE_PATH", &bins().pkcs11_module);
        cmd
    }

    /// `openssl dgst -verify`: the signature over `msg` checks with key `key`'s PEM.
    fn verify(&self, key: &str, msg: &str, sig: &str, extra: &[&str]) {
        let out = run_ok(
            self.openssl()
                .args(["dgst", "-sha256", "-verify", &format!("{key}.pem")])
                .args(extra)
                .args(["-signature", sig, msg]),
        );
        assert!(out.contains("Verified OK"), "{out}");
    }

    fn signed(&self) -> usize {
        audit_records(&self.agent.state_dir)
            .iter()
            .filter(|r| r["event"] == "signed")
            .count()
    }
}

/// Whether pkcs11-tool reports CKR_FUNCTION_REJECTED: OpenSC 0.23 prints its value,
/// "unknown PKCS11 error (0x200)", not its name.
fn rejected(output: &str) -> bool {
    output.contains("CKR_FUNCTION_REJECTED") || output.contains("(0x200)")
}

/// The value after `field:` on each line of pkcs11-tool's object listing.
fn fields<'a>(listing: &'a str, field: &str) -> Vec<&'a str> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix(field))
        .map(|v| v.trim_start_matches(':').trim())
        .collect()
}

#[test]
fn pkcs11_tool_lists_the_token_and_the_objects_of_each_key() {
    let s = Setup::new("");
    let slots = s.tool_ok(&["-L"]);
    assert!(slots.contains("token label        : hsm"), "{slots}");
    assert!(slots.contains("token manufacturer : waxseal"), "{slots}");
    assert!(slots.contains("token model        : pkcs11"), "{slots}");
    assert!(
        slots.contains("PIN pad"),
        "protected authentication path: {slots}"
    );

    let objects = s.tool_ok(&["-O"]);
    assert!(objects.contains("Private Key Object; EC"), "{objects}");
    assert!(
        objects.contains("Public Key Object; EC  EC_POINT 256 bits"),
        "{objects}"
    );
    assert!(objects.contains("Private Key Object; RSA"), "{objects}");
    assert!(
        objects.contains("Public Key Object; RSA 2048 bits"),
        "{objects}"
    );
    let labels = fields(&objects, "label");
    assert_eq!(
        labels.iter().filter(|l| **l == "ec").count(),
        2,
        "{objects}"
    );
    assert_eq!(
        labels.iter().filter(|l| **l == "rsa").count(),
        2,
        "{objects}"
    );
    // CKA_ID: the key's CKA_ID on the token, as the agent reports it, the same on both
    // objects of a key.
    let ids = fields(&objects, "ID");
    assert_eq!(ids.len(), 4, "{objects}");
    let keys = s.agent.client().list_keys().unwrap();
    for key in &keys.keys {
        let id = hex::encode(&key.id.as_ref().expect("a PKCS#11 key has a CKA_ID").0);
        assert_eq!(
            ids.iter().filter(|i| **i == id).count(),
            2,
            "{}: {id} not twice among {ids:?}",
            key.name
        );
    }
    let usage = fields(&objects, "Usage");
    assert!(usage.contains(&"sign"), "{objects}");
    let access = fields(&objects, "Access");
    assert!(
        access
            .iter()
            .any(|a| a.contains("sensitive") && a.contains("never extractable")),
        "{objects}"
    );

    // The mechanisms tell the truth: the token holds EC and RSA keys.
    let mechs = s.tool_ok(&["-M"]);
    for m in [
        "ECDSA-SHA256",
        "SHA256-RSA-PKCS-PSS",
        "RSA-PKCS-KEY-PAIR-GEN",
        "ECDSA-KEY-PAIR-GEN",
    ] {
        assert!(mechs.contains(m), "{m}: {mechs}");
    }
    assert!(!mechs.contains("EDDSA"), "{mechs}");
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[test]
fn pkcs11_tool_signs_with_each_mechanism_and_openssl_verifies() {
    let s = Setup::new("");
    let msg = b"waxseal through PKCS#11";
    std::fs::write(s.path("msg"), msg).unwrap();
    std::fs::write(s.path("digest"), Sha256::digest(msg)).unwrap();
    let (ec, rsa) = (s.id("ec"), s.id("rsa"));
    let before = s.signed();

    // CKM_ECDSA over a digest the caller made.
    s.tool_ok(&[
        "--sign",
        "-m",
        "ECDSA",
        "--id",
        ec.as_str(),
        "--signature-format",
        "openssl",
        "-i",
        "digest",
        "-o",
        "ecdsa.sig",
    ]);
    s.verify("ec", "msg", "ecdsa.sig", &[]);
    // CKM_ECDSA_SHA256: the module hashes.
    s.tool_ok(&[
        "--sign",
        "-m",
        "ECDSA-SHA256",
        "--id",
        ec.as_str(),
        "--signature-format",
        "openssl",
        "-i",
        "msg",
        "-o",
        "ecdsa-sha256.sig",
    ]);
    s.verify("ec", "msg", "ecdsa-sha256.sig", &[]);
    // Raw r‖s is 64 bytes for P-256.
    s.tool_ok(&[
        "--sign",
        "-m",
        "ECDSA-SHA256",
        "--id",
        ec.as_str(),
        "-i",
        "msg",
        "-o",
        "raw.sig",
    ]);
    assert_eq!(std::fs::metadata(s.path("raw.sig")).unwrap().len(), 64);
    // RSA PKCS#1 v1.5.
    s.tool_ok(&[
        "--sign",
        "-m",
        "SHA256-RSA-PKCS",
        "--id",
        rsa.as_str(),
        "-i",
        "msg",
        "-o",
        "rsa.sig",
    ]);
    s.verify("rsa", "msg", "rsa.sig", &[]);
    // RSA-PSS over a digest, and hashed by the module.
    let pss = [
        "-sigopt",
        "rsa_padding_mode:pss",
        "-sigopt",
        "rsa_pss_saltlen:32",
    ];
    s.tool_ok(&[
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
        rsa.as_str(),
        "-i",
        "digest",
        "-o",
        "pss.sig",
    ]);
    s.verify("rsa", "msg", "pss.sig", &pss);
    s.tool_ok(&[
        "--sign",
        "-m",
        "SHA256-RSA-PKCS-PSS",
        "--mgf",
        "MGF1-SHA256",
        "--salt-len",
        "32",
        "--id",
        rsa.as_str(),
        "-i",
        "msg",
        "-o",
        "pss2.sig",
    ]);
    s.verify("rsa", "msg", "pss2.sig", &pss);
    // A salt the agent does not use is refused before anything is signed.
    let out = s.tool(&[
        "--sign",
        "-m",
        "RSA-PKCS-PSS",
        "--hash-algorithm",
        "SHA256",
        "--mgf",
        "MGF1-SHA256",
        "--salt-len",
        "20",
        "--id",
        rsa.as_str(),
        "-i",
        "digest",
        "-o",
        "bad.sig",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("CKR_MECHANISM_PARAM_INVALID"),
        "{}",
        text(&out)
    );

    assert_eq!(s.signed() - before, 6, "one signed record per signature");
}

#[test]
fn pkcs11_tool_generates_a_key_pair_that_signs() {
    let s = Setup::new("");
    let out = s.tool_ok(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "new",
        "--id",
        "0a0b",
    ]);
    assert!(out.contains("Key pair generated"), "{out}");
    let keys = s.agent.client().list_keys().unwrap();
    let new = keys
        .keys
        .iter()
        .find(|k| k.name == "hsm/new")
        .expect("hsm/new listed");
    assert_eq!(new.alg, KeyAlg::P256);
    let pk = s.agent.client().public_key("hsm/new").unwrap();
    std::fs::write(s.path("new.pem"), pk.pem).unwrap();
    std::fs::write(s.path("msg"), b"new key").unwrap();
    // The CKA_ID asked for is the key's.
    let new = s.id("new");
    assert_eq!(new, "0a0b");
    s.tool_ok(&[
        "--sign",
        "-m",
        "ECDSA-SHA256",
        "--id",
        new.as_str(),
        "--signature-format",
        "openssl",
        "-i",
        "msg",
        "-o",
        "new.sig",
    ]);
    s.verify("new", "msg", "new.sig", &[]);

    // Ed25519: generated with the curve pkcs11-tool names, signed with CKM_EDDSA over
    // the message itself, verified by OpenSSL.
    s.tool_ok(&[
        "--keypairgen",
        "--key-type",
        "EC:edwards25519",
        "--label",
        "ed",
    ]);
    let pk = s.agent.client().public_key("hsm/ed").unwrap();
    assert_eq!(pk.alg, KeyAlg::Ed25519);
    std::fs::write(s.path("ed.pem"), pk.pem).unwrap();
    let ed = s.id("ed");
    s.tool_ok(&[
        "--sign",
        "-m",
        "EDDSA",
        "--id",
        ed.as_str(),
        "-i",
        "msg",
        "-o",
        "ed.sig",
    ]);
    let out = run_ok(s.openssl().args([
        "pkeyutl", "-verify", "-pubin", "-inkey", "ed.pem", "-rawin", "-in", "msg", "-sigfile",
        "ed.sig",
    ]));
    assert!(out.contains("Signature Verified Successfully"), "{out}");
}

#[test]
fn p11tool_lists_and_test_signs() {
    let s = Setup::new("");
    require("p11tool");
    let p11tool = |args: &[&str]| {
        let out = Command::new("p11tool")
            .env("WAXSEAL_SOCK", &s.agent.socket)
            .arg("--provider")
            .arg(&bins().pkcs11_module)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "p11tool {args:?}: {}", text(&out));
        text(&out)
    };
    let all = p11tool(&["--list-all", "pkcs11:token=hsm"]);
    assert!(all.contains("object=ec"), "{all}");
    assert!(all.contains("object=rsa"), "{all}");
    assert!(all.contains("Type: Private key"), "{all}");
    let before = s.signed();
    for key in ["ec", "rsa"] {
        let out = p11tool(&[
            "--test-sign",
            &format!("pkcs11:token=hsm;object={key};type=private"),
        ]);
        assert!(
            out.contains("Verifying against public key in the token... ok"),
            "{out}"
        );
    }
    assert!(s.signed() > before, "p11tool's signatures are audited");
}

#[test]
fn openssl_engine_signs_and_makes_a_self_signed_certificate() {
    let s = Setup::new("");
    std::fs::write(s.path("msg"), b"signed by openssl through the engine").unwrap();
    let before = s.signed();
    for key in ["ec", "rsa"] {
        run_ok(s.engine().args([
            "dgst",
            "-sha256",
            "-engine",
            "pkcs11",
            "-keyform",
            "engine",
            "-sign",
            &format!("pkcs11:token=hsm;object={key}"),
            "-out",
            &format!("{key}.sig"),
            "msg",
        ]));
        s.verify(key, "msg", &format!("{key}.sig"), &[]);
    }
    run_ok(s.engine().args([
        "req",
        "-new",
        "-x509",
        "-engine",
        "pkcs11",
        "-keyform",
        "engine",
        "-key",
        "pkcs11:token=hsm;object=ec",
        "-subj",
        "/CN=waxseal pkcs11",
        "-days",
        "1",
        "-out",
        "cert.pem",
    ]));
    let out = run_ok(
        s.openssl()
            .args(["verify", "-CAfile", "cert.pem", "cert.pem"]),
    );
    assert!(out.contains("cert.pem: OK"), "{out}");
    let cert_key = run_ok(
        s.openssl()
            .args(["x509", "-in", "cert.pem", "-noout", "-pubkey"]),
    );
    assert_eq!(cert_key, std::fs::read_to_string(s.path("ec.pem")).unwrap());
    assert_eq!(s.signed() - before, 3);

    // C_CreateObject of the certificate: the agent stores it on the token beside the key.
    run_ok(s.openssl().args([
        "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
    ]));
    let id = s.id("ec");
    s.tool_ok(&[
        "--write-object",
        "cert.der",
        "--type",
        "cert",
        "--id",
        &id,
        "--label",
        "ec-cert",
    ]);
    let on_token = s
        .hsm
        .pkcs11_tool(&["--token-label", "tok", "-O", "--type", "cert"]);
    let on_token = String::from_utf8_lossy(&on_token.stdout).into_owned();
    assert!(on_token.contains("Certificate Object"), "{on_token}");
    assert!(on_token.contains("label:      ec-cert"), "{on_token}");
    assert!(on_token.contains("CN=waxseal pkcs11"), "{on_token}");
    // A certificate for no key of the token is refused.
    run_ok(s.openssl().args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "other.key",
        "-subj",
        "/CN=other",
        "-days",
        "1",
        "-outform",
        "DER",
        "-out",
        "other.der",
    ]));
    let out = s.tool(&[
        "--write-object",
        "other.der",
        "--type",
        "cert",
        "--id",
        "01",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("CKR_ATTRIBUTE_VALUE_INVALID"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_locked_agent_refuses_and_an_unlocked_one_signs() {
    let s = Setup::new("");
    std::fs::write(s.path("msg"), b"while locked").unwrap();
    let ec = s.id("ec");
    let sign = [
        "--sign",
        "-m",
        "ECDSA-SHA256",
        "--id",
        ec.as_str(),
        "-i",
        "msg",
        "-o",
        "sig",
    ];
    assert!(s.agent.cli(&["lock"]).status.success());
    let out = s.tool(&sign);
    assert!(!out.status.success(), "signed while locked: {}", text(&out));
    assert!(rejected(&text(&out)), "{}", text(&out));
    assert!(s.agent.cli(&["unlock"]).status.success());
    s.tool_ok(&sign);
    // The agent has this device's PIN: a PIN given to C_Login is ignored.
    let mut with_pin = sign.to_vec();
    with_pin.extend(["--login", "--pin", "not-the-pin"]);
    s.tool_ok(&with_pin);
}

#[test]
fn allow_exe_without_pkcs11_tool_refuses_it_and_audits_the_program() {
    let openssl = require("openssl");
    let s = Setup::new(&format!(
        "[[key]]\nname = \"hsm/ec\"\npurposes = [\"digest\"]\nallow_exe = [\"{}\"]\n",
        openssl.display()
    ));
    std::fs::write(s.path("msg"), b"not from pkcs11-tool").unwrap();
    let ec = s.id("ec");
    let out = s.tool(&[
        "--sign",
        "-m",
        "ECDSA-SHA256",
        "--id",
        ec.as_str(),
        "-i",
        "msg",
        "-o",
        "sig",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(rejected(&text(&out)), "{}", text(&out));
    let records = audit_records(&s.agent.state_dir);
    let refused = records
        .iter()
        .find(|r| r["event"] == "refused" && r["key"] == "hsm/ec")
        .unwrap_or_else(|| panic!("no refused record: {records:?}"));
    let exe = refused["caller"]["exe"].as_str().unwrap_or_default();
    assert!(exe.ends_with("/pkcs11-tool"), "{refused}");
    // The program allow_exe names signs through the module.
    run_ok(s.engine().args([
        "dgst",
        "-sha256",
        "-engine",
        "pkcs11",
        "-keyform",
        "engine",
        "-sign",
        "pkcs11:token=hsm;object=ec",
        "-out",
        "ok.sig",
        "msg",
    ]));
    s.verify("ec", "msg", "ok.sig", &[]);
}

fn rv(r: Result<impl std::fmt::Debug, CkError>) -> RvError {
    match r {
        Err(CkError::Pkcs11(rv, _)) => rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}

/// The module in this process, through `cryptoki`: an agent killed under an open
/// session gives CKR_DEVICE_REMOVED (no crash); once an agent answers again on the
/// socket, a new session signs. Multi-part signing and the length query run here too.
#[test]
fn the_module_survives_the_agent_dying_and_reconnects() {
    let mut s = Setup::new("");
    // The module reads WAXSEAL_SOCK at C_Initialize; a symlink lets the restarted agent
    // (in a new temp dir) be found at the same path.
    let link = s.path("agent.sock");
    std::os::unix::fs::symlink(&s.agent.socket, &link).unwrap();
    std::env::set_var("WAXSEAL_SOCK", &link);
    let p11 = Pkcs11::new(&bins().pkcs11_module).unwrap();
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slots = p11.get_slots_with_token().unwrap();
    assert_eq!(slots.len(), 1);
    let token = p11.get_token_info(slots[0]).unwrap();
    assert_eq!(token.label(), "hsm");

    let session = p11.open_ro_session(slots[0]).unwrap();
    let find = |session: &cryptoki::session::Session| {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(b"ec".to_vec()),
            ])
            .unwrap();
        assert_eq!(found.len(), 1);
        found[0]
    };
    let key = find(&session);
    let digest = Sha256::digest(b"before the agent dies");
    let sig = session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
    assert_eq!(sig.len(), 64);
    // Multi-part: the module hashes the parts.
    session.sign_init(&Mechanism::EcdsaSha256, key).unwrap();
    session.sign_update(b"before the agent ").unwrap();
    session.sign_update(b"dies").unwrap();
    let multi = session.sign_final().unwrap();
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&{
        let pem = std::fs::read_to_string(s.path("ec.pem")).unwrap();
        let der = pem_der(&pem);
        der[der.len() - 65..].to_vec()
    })
    .unwrap();
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    for sig in [&sig, &multi] {
        let sig = p256::ecdsa::Signature::from_slice(sig).unwrap();
        vk.verify_prehash(&digest, &sig).unwrap();
    }

    // Ed25519: CKK_EC_EDWARDS objects; CKM_EDDSA signs the message itself.
    let ed_pk = s
        .agent
        .client()
        .generate_key("hsm/ed", KeyAlg::Ed25519)
        .unwrap();
    let ed = session
        .find_objects(&[Attribute::KeyType(KeyType::EC_EDWARDS)])
        .unwrap();
    assert_eq!(ed.len(), 2, "private and public key objects");
    let ed_private = session
        .find_objects(&[
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
        ])
        .unwrap();
    let eddsa = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    let message = b"a message of any length, signed whole".repeat(9);
    let sig = session.sign(&eddsa, ed_private[0], &message).unwrap();
    use ed25519_dalek::pkcs8::DecodePublicKey as _;
    let ed_vk = ed25519_dalek::VerifyingKey::from_public_key_der(&ed_pk.spki_der.0).unwrap();
    ed_vk
        .verify_strict(
            &message,
            &ed25519_dalek::Signature::from_slice(&sig).unwrap(),
        )
        .unwrap();
    // Multi-part EdDSA buffers the message.
    session.sign_init(&eddsa, ed_private[0]).unwrap();
    for part in message.chunks(100) {
        session.sign_update(part).unwrap();
    }
    assert_eq!(
        session.sign_final().unwrap(),
        sig,
        "Ed25519 is deterministic"
    );

    // A private key's value is sensitive: not returned (cryptoki leaves out what the
    // module answers CKR_ATTRIBUTE_SENSITIVE for).
    match session.get_attributes(key, &[AttributeType::Value]) {
        Ok(attrs) => assert!(attrs.is_empty(), "{attrs:?}"),
        Err(e) => assert_eq!(rv(Err::<(), _>(e)), RvError::AttributeSensitive),
    }

    // Threads sign at once, each on its own session (and agent connection).
    let before = audit_records(&s.agent.state_dir)
        .iter()
        .filter(|r| r["event"] == "signed")
        .count();
    std::thread::scope(|scope| {
        for t in 0..4u8 {
            let (p11, vk, slot) = (&p11, &vk, slots[0]);
            scope.spawn(move || {
                let session = p11.open_ro_session(slot).unwrap();
                let key = find(&session);
                for i in 0..25u8 {
                    let digest = Sha256::digest([t, i]);
                    let sig = session.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
                    let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
                    vk.verify_prehash(&digest, &sig).unwrap();
                }
            });
        }
    });
    let after = audit_records(&s.agent.state_dir)
        .iter()
        .filter(|r| r["event"] == "signed")
        .count();
    assert_eq!(after - before, 100);

    s.agent.kill9();
    assert_eq!(
        rv(session.sign(&Mechanism::Ecdsa, key, &digest)),
        RvError::DeviceRemoved
    );
    assert_eq!(p11.get_slots_with_token().unwrap(), vec![]);

    // A new agent on the same token and state.
    let agent = Agent::builder()
        .softhsm(&s.hsm)
        .state_dir(&s.agent.state_dir)
        .config(&s.config)
        .start();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&agent.socket, &link).unwrap();
    let slots = p11.get_slots_with_token().unwrap();
    assert_eq!(slots.len(), 1);
    let again = p11.open_ro_session(slots[0]).unwrap();
    let key = find(&again);
    let sig = again.sign(&Mechanism::Ecdsa, key, &digest).unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
    vk.verify_prehash(&digest, &sig).unwrap();
    drop(session);
    drop(again);
    p11.finalize().unwrap();
}

/// A device with `pin = "prompt"`: the token wants a login; C_Login's PIN answers the
/// agent's prompt; a wrong PIN is CKR_PIN_INCORRECT and a right one signs.
#[test]
fn a_prompt_device_takes_its_pin_from_c_login() {
    let hsm = SoftHsm::new();
    hsm.init_token("tok", "5555", "1234");
    let config = format!(
        "[[device]]\nname = \"hsm\"\nkind = \"pkcs11\"\nmodule = \"{}\"\ntoken = \"tok\"\npin = \"prompt\"\n",
        pkcs11_tests::SOFTHSM_MODULE
    );
    let dir = tempfile::tempdir().unwrap();
    {
        let agent = Agent::builder().softhsm(&hsm).config(&config).start();
        let mut client = agent.client();
        client.on_prompt(Box::new(|_| Some(zeroize::Zeroizing::new("1234".into()))));
        let made = client.generate_key("hsm/ec", KeyAlg::P256).unwrap();
        std::fs::write(dir.path().join("ec.pem"), made.pem).unwrap();
    }
    // A new agent, not logged in to the token.
    let agent = Agent::builder().softhsm(&hsm).config(&config).start();
    let state = agent.state_dir.clone();
    let s = Setup {
        hsm,
        agent,
        dir,
        config,
    };
    let slots = s.tool_ok(&["-L"]);
    assert!(slots.contains("login required"), "{slots}");
    std::fs::write(s.path("msg"), b"typed PIN").unwrap();
    let sign = |extra: &[&str]| {
        let mut args = vec![
            "--sign",
            "-m",
            "ECDSA-SHA256",
            "--signature-format",
            "openssl",
            "--label",
            "ec",
            "-i",
            "msg",
            "-o",
            "sig",
        ];
        args.extend(extra);
        s.tool(&args)
    };
    let out = sign(&[]);
    assert!(!out.status.success(), "{}", text(&out));
    let out = sign(&["--login", "--pin", "9999"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("CKR_PIN_INCORRECT"), "{}", text(&out));
    let out = sign(&["--login", "--pin", "1234"]);
    assert!(out.status.success(), "{}\n{}", text(&out), s.agent.log());
    s.verify("ec", "msg", "sig", &[]);
    assert!(audit_records(&state).iter().any(|r| r["event"] == "signed"));
}

/// No agent: the module loads, initialises and shows no slots; nothing crashes.
#[test]
fn without_an_agent_there_are_no_slots() {
    require("pkcs11-tool");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("pkcs11-tool")
        .env("WAXSEAL_SOCK", dir.path().join("agent.sock"))
        .arg("--module")
        .arg(&bins().pkcs11_module)
        .args(["-I", "-L"])
        .output()
        .unwrap();
    let all = text(&out);
    // pkcs11-tool exits 1 when there is no slot; it got that far without a crash.
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("Manufacturer     waxseal"), "{all}");
    assert!(all.contains("No slots."), "{all}");
}

/// The program that loads the module forks (Python through ctypes: a C caller that
/// is not ours, and no `unsafe` here). In the child every call answers
/// CKR_CRYPTOKI_NOT_INITIALIZED until its own C_Initialize, which starts without the
/// parent's connections: the child's signature is made on a connection of its own
/// (the agent would refuse one written on an inherited connection, and audit it), and
/// the parent signs again afterwards.
#[test]
fn a_forked_child_initialises_afresh() {
    let s = Setup::new("");
    let python = require("python3");
    std::fs::write(s.path("fork.py"), [CTYPES_PRELUDE, FORK_DRIVER].concat()).unwrap();
    let out = Command::new(python)
        .current_dir(s.dir.path())
        .env("WAXSEAL_SOCK", &s.agent.socket)
        .arg("fork.py")
        .arg(&bins().pkcs11_module)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), s.agent.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pem = std::fs::read_to_string(s.path("ec.pem")).unwrap();
    let der = pem_der(&pem);
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&der[der.len() - 65..]).unwrap();
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let mut seen = Vec::new();
    for line in stdout.lines() {
        let (tag, sig) = line.split_once(' ').unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&hex::decode(sig).unwrap()).unwrap();
        vk.verify_prehash(&Sha256::digest(tag.as_bytes()), &sig)
            .unwrap_or_else(|e| panic!("{tag}: {e}"));
        seen.push(tag.to_string());
    }
    assert_eq!(seen, ["parent", "child", "again"], "{stdout}");
    let records = audit_records(&s.agent.state_dir);
    assert_eq!(records.iter().filter(|r| r["event"] == "signed").count(), 3);
    assert!(
        !records.iter().any(|r| r["event"] == "refused"),
        "{records:?}"
    );
}

/// Drives the module through its C ABI from Python's ctypes: C_GetFunctionList, then
/// the table's entries by index (PKCS#11 v2.40's CK_FUNCTION_LIST order).
const CTYPES_PRELUDE: &str = r#"
import ctypes, hashlib, os, sys
U = ctypes.c_ulong
lib = ctypes.CDLL(sys.argv[1])
table = ctypes.c_void_p()
assert lib.C_GetFunctionList(ctypes.byref(table)) == 0
def fn(index, *args):
    addr = ctypes.c_void_p.from_address(table.value + 8 + 8 * index).value
    return ctypes.CFUNCTYPE(U, *args)(addr)
class Attr(ctypes.Structure):
    _fields_ = [("type", U), ("value", ctypes.c_void_p), ("len", U)]
class Mech(ctypes.Structure):
    _fields_ = [("mechanism", U), ("param", ctypes.c_void_p), ("len", U)]
Initialize = fn(0, ctypes.c_void_p)
Finalize = fn(1, ctypes.c_void_p)
GetInfo = fn(2, ctypes.c_void_p)
GetSlotList = fn(4, ctypes.c_ubyte, ctypes.POINTER(U), ctypes.POINTER(U))
OpenSession = fn(12, U, U, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(U))
FindObjectsInit = fn(26, U, ctypes.POINTER(Attr), U)
FindObjects = fn(27, U, ctypes.POINTER(U), U, ctypes.POINTER(U))
FindObjectsFinal = fn(28, U)
SignInit = fn(42, U, ctypes.POINTER(Mech), U)
Sign = fn(43, U, ctypes.c_char_p, U, ctypes.c_char_p, ctypes.POINTER(U))

def slots():
    n = U(8)
    ids = (U * 8)()
    return GetSlotList(1, ids, ctypes.byref(n)), n.value

def find_key(h):
    cls = U(3)  # CKO_PRIVATE_KEY
    label = ctypes.create_string_buffer(b"ec", 2)
    attrs = (Attr * 2)(Attr(0, ctypes.cast(ctypes.pointer(cls), ctypes.c_void_p), ctypes.sizeof(U)),
                       Attr(3, ctypes.cast(label, ctypes.c_void_p), 2))
    assert FindObjectsInit(h, attrs, 2) == 0
    key, n = U(), U()
    assert FindObjects(h, ctypes.byref(key), 1, ctypes.byref(n)) == 0 and n.value == 1
    assert FindObjectsFinal(h) == 0
    return key

def sign(tag):
    h = U()
    rv = OpenSession(0, 4, None, None, ctypes.byref(h))  # CKF_SERIAL_SESSION
    if rv:
        return rv, b""
    key = find_key(h)
    mech = Mech(0x1041, None, 0)  # CKM_ECDSA
    assert SignInit(h, ctypes.byref(mech), key) == 0
    digest = hashlib.sha256(tag.encode()).digest()
    out, out_len = ctypes.create_string_buffer(64), U(64)
    rv = Sign(h, digest, 32, out, ctypes.byref(out_len))
    return rv, out.raw[:out_len.value]
"#;

/// The fork scenario (after [`CTYPES_PRELUDE`]).
const FORK_DRIVER: &str = r#"
def show(tag):
    rv, sig = sign(tag)
    if rv:
        sys.stderr.write("%s: C_Sign and friends: 0x%x\n" % (tag, rv))
        return False
    print(tag, sig.hex(), flush=True)
    return True

assert Initialize(None) == 0
assert show("parent")
pid = os.fork()
if pid == 0:
    rv, _ = slots()
    if rv != 0x190:  # CKR_CRYPTOKI_NOT_INITIALIZED
        sys.stderr.write("child before C_Initialize: 0x%x\n" % rv)
        os._exit(10)
    if Initialize(None) != 0:
        os._exit(11)
    rv, n = slots()
    if rv != 0 or n != 1:
        os._exit(12)
    os._exit(0 if show("child") else 13)
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
assert show("again")
"#;

/// The C ABI's conventions, from a C caller that is not ours (Python ctypes): NULL
/// pointers are CKR_ARGUMENTS_BAD; `C_Sign` with no buffer gives the length and with a
/// small one CKR_BUFFER_TOO_SMALL and the length, both leaving the operation going;
/// the signature ends it; `C_Initialize` twice and calls after `C_Finalize` are refused.
#[test]
fn the_c_abi_keeps_the_length_query_and_null_pointer_rules() {
    let s = Setup::new("");
    let python = require("python3");
    std::fs::write(s.path("abi.py"), [CTYPES_PRELUDE, ABI_DRIVER].concat()).unwrap();
    let out = Command::new(python)
        .current_dir(s.dir.path())
        .env("WAXSEAL_SOCK", &s.agent.socket)
        .arg("abi.py")
        .arg(&bins().pkcs11_module)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), s.agent.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sig = stdout
        .lines()
        .find_map(|l| l.strip_prefix("buffers "))
        .unwrap_or_else(|| panic!("no signature: {stdout}"));
    let pem = std::fs::read_to_string(s.path("ec.pem")).unwrap();
    let der = pem_der(&pem);
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&der[der.len() - 65..]).unwrap();
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let sig = p256::ecdsa::Signature::from_slice(&hex::decode(sig).unwrap()).unwrap();
    vk.verify_prehash(&Sha256::digest(b"buffers"), &sig)
        .unwrap();
    let signed = audit_records(&s.agent.state_dir)
        .iter()
        .filter(|r| r["event"] == "signed")
        .count();
    assert_eq!(signed, 1, "the length queries sign nothing");
}

/// The ABI scenario (after [`CTYPES_PRELUDE`]).
const ABI_DRIVER: &str = r#"
def rv_is(got, want, what):
    if got != want:
        sys.stderr.write("%s: 0x%x, expected 0x%x\n" % (what, got, want))
        sys.exit(1)

rv_is(GetSlotList(1, None, None), 0x190, "C_GetSlotList before C_Initialize")
rv_is(Initialize(None), 0, "C_Initialize")
rv_is(Initialize(None), 0x191, "C_Initialize again")
rv_is(GetInfo(None), 0x7, "C_GetInfo(NULL)")
rv_is(GetSlotList(1, None, None), 0x7, "C_GetSlotList(NULL count)")
h = U()
rv_is(OpenSession(0, 4, None, None, None), 0x7, "C_OpenSession(NULL handle)")
rv_is(OpenSession(0, 4, None, None, ctypes.byref(h)), 0, "C_OpenSession")
key = find_key(h)
rv_is(SignInit(h, None, key), 0x7, "C_SignInit(NULL mechanism)")
rv_is(SignInit(h, ctypes.byref(Mech(0x1041, None, 0)), key), 0, "C_SignInit")
digest = hashlib.sha256(b"buffers").digest()
n = U(0)
rv_is(Sign(h, digest, 32, None, ctypes.byref(n)), 0, "C_Sign length query")
rv_is(n.value, 64, "length")
small, n = ctypes.create_string_buffer(10), U(10)
rv_is(Sign(h, digest, 32, small, ctypes.byref(n)), 0x150, "C_Sign into 10 bytes")
rv_is(n.value, 64, "length after CKR_BUFFER_TOO_SMALL")
rv_is(Sign(h, digest, 32, small, None), 0x7, "C_Sign(NULL length)")
out, n = ctypes.create_string_buffer(64), U(64)
rv_is(Sign(h, digest, 32, out, ctypes.byref(n)), 0, "C_Sign")
print("buffers", out.raw[:n.value].hex(), flush=True)
rv_is(Sign(h, digest, 32, out, ctypes.byref(n)), 0x91, "C_Sign after the signature")
rv_is(Finalize(None), 0, "C_Finalize with a session open")
n = U(0)
rv_is(GetSlotList(1, None, ctypes.byref(n)), 0x190, "C_GetSlotList after C_Finalize")
"#;
