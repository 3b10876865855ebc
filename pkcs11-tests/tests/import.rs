//! Keys brought into devices (README.md, "Importing keys"): a key made on another
//! machine's TPM and duplicated by `tpm2_duplicate` for this TPM's storage root key is
//! imported through the agent and signs; the same files are refused by a TPM they were
//! not wrapped for; OpenSSL verifies the signature with the public key the source TPM
//! printed. The same wrapping as one importable TSS2 key file (id-importablekey, the
//! form of ssh-tpm-agent's remote wrapping), and `waxseal keys wrap-for`'s output for
//! EC and RSA keys, import and sign; files of another type or parent are refused.
//!
//! Each swtpm stands for one machine's TPM. swtpm serves one connection at a time, so
//! tpm2-tools runs while no agent holds the TPM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use pkcs11_tests::{audit_records, output_text, require, run_ok, tpm_device, Agent, Swtpm};
use sha2::{Digest as _, Sha256};
use waxseal_agent::client::ClientError;
use waxseal_agent::proto::{Bytes, ErrorCode, HashAlg, ImportKey, TpmDuplicate};

/// The attributes of the storage root key the agent makes (the TCG ECC P-256 SRK
/// template; README.md, "Importing keys", tells operators the same command).
const SRK_ATTRS: &str =
    "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda";

fn flush_transients(tpm: &Swtpm) {
    run_ok(tpm.tool("tpm2_flushcontext").arg("-t"));
}

/// The target TPM's SRK public (TPM2B_PUBLIC), as an operator reads it there.
fn srk_public(tpm: &Swtpm, out: &Path) {
    run_ok(tpm.tool("tpm2_createprimary").args([
        "-C",
        "o",
        "-g",
        "sha256",
        "-G",
        "ecc256:aes128cfb",
        "-a",
        SRK_ATTRS,
        "-c",
        "srk.ctx",
    ]));
    run_ok(
        tpm.tool("tpm2_readpublic")
            .args(["-c", "srk.ctx", "-o"])
            .arg(out),
    );
    flush_transients(tpm);
}

/// On `source` (another machine's TPM): a P-256 signing key that may be duplicated
/// (policy TPM2_PolicyCommandCode(Duplicate), no fixedTPM/fixedParent), duplicated for
/// the storage key whose public is `target_srk`. Writes key.pub, dup.dpriv, dup.seed
/// and orig.pem (the key's public key as the source TPM prints it) into `out`.
fn duplicate_for(source: &Swtpm, target_srk: &Path, out: &Path) {
    let t = |p: &str| out.join(p);
    run_ok(source.tool("tpm2_createprimary").args([
        "-C",
        "o",
        "-g",
        "sha256",
        "-G",
        "ecc256:aes128cfb",
        "-a",
        SRK_ATTRS,
        "-c",
        "prim.ctx",
    ]));
    run_ok(
        source
            .tool("tpm2_startauthsession")
            .args(["-S", "trial.ctx"]),
    );
    run_ok(source.tool("tpm2_policycommandcode").args([
        "-S",
        "trial.ctx",
        "-L",
        "dup.policy",
        "TPM2_CC_Duplicate",
    ]));
    run_ok(source.tool("tpm2_flushcontext").arg("trial.ctx"));
    run_ok(
        source
            .tool("tpm2_create")
            .args(["-C", "prim.ctx", "-g", "sha256", "-G", "ecc256"])
            .args(["-a", "sensitivedataorigin|userwithauth|sign"])
            .args(["-L", "dup.policy", "-u"])
            .arg(t("key.pub"))
            .arg("-r")
            .arg(t("key.priv")),
    );
    flush_transients(source);
    run_ok(
        source
            .tool("tpm2_load")
            .args(["-C", "prim.ctx", "-u"])
            .arg(t("key.pub"))
            .arg("-r")
            .arg(t("key.priv"))
            .args(["-c", "key.ctx"]),
    );
    run_ok(
        source
            .tool("tpm2_readpublic")
            .args(["-c", "key.ctx", "-f", "pem", "-o"])
            .arg(t("orig.pem")),
    );
    flush_transients(source);
    run_ok(
        source
            .tool("tpm2_loadexternal")
            .args(["-C", "o", "-u"])
            .arg(target_srk)
            .args(["-c", "newparent.ctx"]),
    );
    run_ok(
        source
            .tool("tpm2_startauthsession")
            .args(["--policy-session", "-S", "s.ctx"]),
    );
    run_ok(
        source
            .tool("tpm2_policycommandcode")
            .args(["-S", "s.ctx", "TPM2_CC_Duplicate"]),
    );
    run_ok(
        source
            .tool("tpm2_duplicate")
            .args(["-C", "newparent.ctx", "-c", "key.ctx", "-G", "null"])
            .args(["-p", "session:s.ctx", "-r"])
            .arg(t("dup.dpriv"))
            .arg("-s")
            .arg(t("dup.seed")),
    );
    run_ok(source.tool("tpm2_flushcontext").arg("s.ctx"));
    flush_transients(source);
}

/// DER TLV (lengths up to 65535).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    match content.len() {
        n if n < 0x80 => v.push(n as u8),
        n if n < 0x100 => v.extend([0x81, n as u8]),
        n => v.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    v.extend_from_slice(content);
    v
}

/// An importable TSS2 key file, encoded here from the draft's ASN.1 (TPMKey with
/// type 2.23.133.10.1.`oid_last`, emptyAuth, secret [2], parent, pubkey, privkey;
/// the three parts as the TPM2B files tpm2-tools writes).
fn importable_pem(oid_last: u8, parent: u32, public: &[u8], dup: &[u8], seed: &[u8]) -> String {
    use base64::Engine as _;
    let mut body = tlv(0x06, &[0x67, 0x81, 0x05, 0x0a, 0x01, oid_last]);
    body.extend(tlv(0xa0, &tlv(0x01, &[0xff])));
    body.extend(tlv(0xa2, &tlv(0x04, seed)));
    let mut int = parent.to_be_bytes().to_vec();
    if int[0] & 0x80 != 0 {
        int.insert(0, 0);
    }
    body.extend(tlv(0x02, &int));
    body.extend(tlv(0x04, public));
    body.extend(tlv(0x04, dup));
    let b64 = base64::engine::general_purpose::STANDARD.encode(tlv(0x30, &body));
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN TSS2 PRIVATE KEY-----\n{}\n-----END TSS2 PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

fn tpm_agent(tpm: &Swtpm, keys: &Path) -> Agent {
    Agent::builder()
        .config(&tpm_device("tpm", tpm, keys, None))
        .start()
}

fn import_args(files: &Path, name: &str) -> Vec<String> {
    let f = |p: &str| files.join(p).display().to_string();
    vec![
        "keys".into(),
        "import".into(),
        name.into(),
        "--duplicate".into(),
        f("dup.dpriv"),
        "--public".into(),
        f("key.pub"),
        "--seed".into(),
        f("dup.seed"),
    ]
}

fn cli(agent: &Agent, args: &[String]) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    agent.cli(&args)
}

#[test]
fn tpm2_duplicate_output_is_imported_signs_and_is_refused_by_another_tpm() {
    let target = Swtpm::start();
    let source = Swtpm::start();
    let third = Swtpm::start();
    let files = tempfile::Builder::new()
        .prefix("dup-files-")
        .tempdir()
        .unwrap();
    srk_public(&target, &files.path().join("srk.pub"));
    duplicate_for(&source, &files.path().join("srk.pub"), files.path());

    // Imported on the target through the CLI; the key is marked as imported.
    let keys = tempfile::Builder::new()
        .prefix("import-keys-")
        .tempdir()
        .unwrap();
    let mut agent = tpm_agent(&target, keys.path());
    let mut args = vec!["--json".to_string()];
    args.extend(import_args(files.path(), "tpm/moved"));
    let out = cli(&agent, &args);
    assert!(
        out.status.success(),
        "import: {}\n{}",
        output_text(&out),
        agent.log()
    );
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["key"]["imported"], true, "{made}");
    assert_eq!(made["key"]["alg"], "p256", "{made}");
    let orig = std::fs::read_to_string(files.path().join("orig.pem")).unwrap();
    assert_eq!(
        made["pem"].as_str().unwrap().trim(),
        orig.trim(),
        "the imported key's public key is the source TPM's key"
    );
    assert!(keys.path().join("moved.pem").exists());
    // No ACME tpm attestation statement vouches for a key the TPM did not create.
    let out = agent.cli(&[
        "keys",
        "attest",
        "tpm/moved",
        "--format",
        "tpm",
        "--challenge",
        "tok.thumb",
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("was imported (its fixedTPM attribute is clear)"),
        "{}",
        output_text(&out)
    );

    // It signs on the target; OpenSSL verifies with the public key from the source.
    let msg = b"signed by a key that moved between TPMs";
    let sig = agent
        .client()
        .sign_digest(
            "tpm/moved",
            &Sha256::digest(msg),
            Some(HashAlg::Sha256),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let dir = files.path();
    std::fs::write(dir.join("msg"), msg).unwrap();
    std::fs::write(dir.join("sig"), &sig.signature.0).unwrap();
    let verified = run_ok(Command::new(require("openssl")).current_dir(dir).args([
        "dgst",
        "-sha256",
        "-verify",
        "orig.pem",
        "-signature",
        "sig",
        "msg",
    ]));
    assert!(verified.contains("Verified OK"), "{verified}");

    // `keys list` shows it as imported (text and JSON); a generated key is not.
    agent
        .client()
        .generate_key("tpm/native", waxseal_agent::proto::KeyAlg::P256)
        .unwrap();
    let out = agent.cli(&["keys", "list"]);
    let list = output_text(&out);
    assert!(list.lines().next().unwrap().contains("ORIGIN"), "{list}");
    let row = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(row("tpm/moved").contains("imported"), "{list}");
    assert!(!row("tpm/native").contains("imported"), "{list}");
    assert!(list.contains("attestation cannot vouch"), "{list}");
    let json: serde_json::Value =
        serde_json::from_slice(&agent.cli(&["--json", "keys", "list"]).stdout).unwrap();
    let entry = |name: &str| {
        json["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(entry("tpm/moved")["imported"], true, "{json}");
    assert!(entry("tpm/native").get("imported").is_none(), "{json}");

    // The audit log has the import, marked as such, with the key's fingerprint.
    let records = audit_records(&agent.state_dir);
    let import = records
        .iter()
        .find(|r| r["event"] == "import" && r["key"] == "tpm/moved")
        .unwrap_or_else(|| panic!("no import record: {records:?}"));
    assert_eq!(import["imported"], true, "{import}");
    assert_eq!(import["import"], "tpm-duplicate", "{import}");
    assert!(import.get("code").is_none(), "{import}");
    assert_eq!(import["alg"], "p256", "{import}");

    // The same tpm2_duplicate output as an importable TSS2 key file (encoded here by
    // hand from the draft's ASN.1, not by waxseal's writer) imports too and is the
    // same key; with another type OID or another parent it is refused, nothing written.
    let read = |p: &str| std::fs::read(files.path().join(p)).unwrap();
    let (public, duplicate, seed) = (read("key.pub"), read("dup.dpriv"), read("dup.seed"));
    let write_pem = |name: &str, oid_last: u8, parent: u32| {
        let pem = importable_pem(oid_last, parent, &public, &duplicate, &seed);
        let path = files.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let good = write_pem("dup.tss2.pem", 4, 0x4000_0001);
    let out = agent.cli(&[
        "--json",
        "keys",
        "import",
        "tpm/moved-pem",
        "--duplicate",
        &good,
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        output_text(&out),
        agent.log()
    );
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["pem"].as_str().unwrap().trim(), orig.trim());
    let sig = agent
        .client()
        .sign_digest(
            "tpm/moved-pem",
            &Sha256::digest(msg),
            Some(HashAlg::Sha256),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    std::fs::write(dir.join("sig2"), &sig.signature.0).unwrap();
    let verified = run_ok(Command::new(require("openssl")).current_dir(dir).args([
        "dgst",
        "-sha256",
        "-verify",
        "orig.pem",
        "-signature",
        "sig2",
        "msg",
    ]));
    assert!(verified.contains("Verified OK"), "{verified}");
    for (file, oid_last, parent, why) in [
        (
            "loadable.pem",
            3,
            0x4000_0001,
            "a loadable key (id-loadablekey)",
        ),
        ("sealed.pem", 5, 0x4000_0001, "sealed data (id-sealedkey)"),
        (
            "persistent.pem",
            4,
            0x8100_0001,
            "wrapped for parent 0x81000001",
        ),
        (
            "endorsement.pem",
            4,
            0x4000_000b,
            "wrapped for parent 0x4000000b",
        ),
    ] {
        let path = write_pem(file, oid_last, parent);
        let out = agent.cli(&["keys", "import", "tpm/refused", "--duplicate", &path]);
        assert!(!out.status.success(), "{file}");
        let text = output_text(&out);
        assert!(text.contains(why), "{file}: {text}");
        assert!(text.contains(&format!("--duplicate {path}")), "{text}");
    }
    // A tpm2_duplicate output alone is not a key file: says what else it needs.
    let dpriv = files.path().join("dup.dpriv").display().to_string();
    let out = agent.cli(&["keys", "import", "tpm/refused", "--duplicate", &dpriv]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("needs --public and --seed"),
        "{}",
        output_text(&out)
    );
    assert!(!keys.path().join("refused.pem").exists());

    // The same name again: refused, the first file stays.
    let before = std::fs::read(keys.path().join("moved.pem")).unwrap();
    let again = cli(&agent, &import_args(files.path(), "tpm/moved"));
    assert!(!again.status.success());
    assert!(
        output_text(&again).contains("exists already"),
        "{}",
        output_text(&again)
    );
    assert_eq!(
        std::fs::read(keys.path().join("moved.pem")).unwrap(),
        before
    );
    agent.terminate();

    // A third machine's TPM: the seed does not decrypt there; refused, clearly, with
    // nothing written, and audited with its code.
    let third_keys = tempfile::Builder::new()
        .prefix("import-third-")
        .tempdir()
        .unwrap();
    let mut other = tpm_agent(&third, third_keys.path());
    let dup = |p: &str| Bytes(std::fs::read(files.path().join(p)).unwrap());
    let refused = other.client().import_key(ImportKey {
        key: "tpm/moved".into(),
        tpm_duplicate: Some(TpmDuplicate {
            public: dup("key.pub"),
            duplicate: dup("dup.dpriv"),
            seed: dup("dup.seed"),
        }),
        pem: None,
        pkcs11_wrapped: None,
        touch: None,
        pin_policy: None,
    });
    let e = match refused {
        Err(ClientError::Agent(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);
    assert!(
        e.message
            .contains("not wrapped for this TPM's storage root key"),
        "{}",
        e.message
    );
    assert!(e.message.contains("TPM2_Import"), "{}", e.message);
    assert_eq!(std::fs::read_dir(third_keys.path()).unwrap().count(), 0);
    let records = audit_records(&other.state_dir);
    let refusal = records
        .iter()
        .find(|r| r["event"] == "import")
        .unwrap_or_else(|| panic!("no import record: {records:?}"));
    assert_eq!(refusal["code"], "bad-request", "{refusal}");
    other.terminate();
}

#[test]
fn damaged_or_oversized_duplicates_are_refused_before_the_tpm() {
    let tpm = Swtpm::start();
    let keys = tempfile::Builder::new()
        .prefix("import-bad-")
        .tempdir()
        .unwrap();
    let mut agent = tpm_agent(&tpm, keys.path());
    let dir = agent.dir().to_path_buf();
    // A size prefix that does not match the bytes.
    std::fs::write(dir.join("pub"), [0u8, 9, 1, 2]).unwrap();
    std::fs::write(dir.join("dup"), [0u8, 1, 1]).unwrap();
    std::fs::write(dir.join("seed"), [0u8, 1, 1]).unwrap();
    let out = agent.cli(&[
        "keys",
        "import",
        "tpm/bad",
        "--duplicate",
        dir.join("dup").to_str().unwrap(),
        "--public",
        dir.join("pub").to_str().unwrap(),
        "--seed",
        dir.join("seed").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let text = output_text(&out);
    assert!(text.contains("public area (TPM2B_PUBLIC)"), "{text}");
    // Over the bound: the CLI refuses to send it.
    std::fs::write(dir.join("big"), vec![0u8; 5000]).unwrap();
    let out = agent.cli(&[
        "keys",
        "import",
        "tpm/bad",
        "--duplicate",
        dir.join("big").to_str().unwrap(),
        "--public",
        dir.join("pub").to_str().unwrap(),
        "--seed",
        dir.join("seed").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("over 4096 bytes"),
        "{}",
        output_text(&out)
    );
    // A plaintext key is never taken by a TPM.
    std::fs::write(dir.join("k.pem"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let out = agent.cli(&[
        "keys",
        "import",
        "tpm/bad",
        "--key",
        dir.join("k.pem").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("tpm_duplicate"),
        "{}",
        output_text(&out)
    );
    assert_eq!(std::fs::read_dir(keys.path()).unwrap().count(), 0);
    agent.terminate();
}

#[test]
fn wrap_for_wraps_a_plaintext_key_for_one_tpm_only() {
    let target = Swtpm::start();
    let third = Swtpm::start();
    let files = tempfile::Builder::new()
        .prefix("wrap-for-")
        .tempdir()
        .unwrap();
    let dir = files.path();
    // The operator reads the target's SRK public there, as PEM this time.
    srk_public(&target, &dir.join("srk.pub"));
    run_ok(
        target
            .tool("tpm2_createprimary")
            .args([
                "-C",
                "o",
                "-g",
                "sha256",
                "-G",
                "ecc256:aes128cfb",
                "-a",
                SRK_ATTRS,
            ])
            .args(["-c", "srk2.ctx"]),
    );
    run_ok(
        target
            .tool("tpm2_readpublic")
            .args(["-c", "srk2.ctx", "-f", "pem", "-o"])
            .arg(dir.join("srk.pem")),
    );
    flush_transients(&target);
    let openssl =
        |args: &[&str]| run_ok(Command::new(require("openssl")).current_dir(dir).args(args));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-out",
        "k.pem",
    ]);
    openssl(&["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub.pem"]);

    // On the source machine: no agent, no TPM. From the TPM2B_PUBLIC and from the PEM.
    let wrap = |srk: &str, out: &str, format: &str| {
        let o = Command::new(&pkcs11_tests::bins().cli)
            .current_dir(dir)
            .args(["keys", "wrap-for", "--tpm-ek", srk, "k.pem", "-o", out])
            .args(["--format", format])
            .output()
            .unwrap();
        assert!(o.status.success(), "wrap-for: {}", output_text(&o));
        output_text(&o)
    };
    let text = wrap("srk.pub", "w", "tpm2-tools");
    assert!(text.contains("--duplicate w.dpriv"), "{text}");
    let text = wrap("srk.pem", "w2.pem", "tss2");
    assert!(text.contains("--duplicate w2.pem\n"), "{text}");
    assert!(!dir.join("w2.pem.dpriv").exists());
    // A file that is not a storage key is refused and nothing is written.
    let o = Command::new(&pkcs11_tests::bins().cli)
        .current_dir(dir)
        .args([
            "keys",
            "wrap-for",
            "--tpm-srk",
            "k.pub.pem",
            "k.pem",
            "-o",
            "bad",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        output_text(&o).contains("--tpm-srk k.pub.pem"),
        "{}",
        output_text(&o)
    );
    assert!(!dir.join("bad.dpriv").exists());

    // The target imports both and signs; OpenSSL verifies with the original key.
    let keys = tempfile::Builder::new()
        .prefix("wrap-keys-")
        .tempdir()
        .unwrap();
    let mut agent = tpm_agent(&target, keys.path());
    let w2 = dir.join("w2.pem").display().to_string();
    let out = agent.cli(&[
        "--json",
        "keys",
        "import",
        "tpm/wrapped2",
        "--duplicate",
        &w2,
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        output_text(&out),
        agent.log()
    );
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["key"]["imported"], true, "{made}");
    assert_eq!(made["key"]["alg"], "p384", "{made}");
    for name in ["tpm/wrapped", "tpm/wrapped2"] {
        if name == "tpm/wrapped" {
            let f = |ext: &str| Bytes(std::fs::read(dir.join(format!("w.{ext}"))).unwrap());
            let made = agent
                .client()
                .import_key(ImportKey {
                    key: name.into(),
                    tpm_duplicate: Some(TpmDuplicate {
                        public: f("pub"),
                        duplicate: f("dpriv"),
                        seed: f("seed"),
                    }),
                    pem: None,
                    pkcs11_wrapped: None,
                    touch: None,
                    pin_policy: None,
                })
                .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
            assert!(made.key.imported);
        }
        let pem = agent.cli(&["keys", "pubkey", name]);
        assert!(pem.status.success(), "{}", output_text(&pem));
        assert_eq!(
            String::from_utf8(pem.stdout).unwrap().trim(),
            std::fs::read_to_string(dir.join("k.pub.pem"))
                .unwrap()
                .trim()
        );
        let msg = format!("signed by {name}");
        let sig = agent
            .client()
            .sign_digest(
                name,
                &sha2::Sha384::digest(msg.as_bytes()),
                Some(HashAlg::Sha384),
                None,
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
        std::fs::write(dir.join("msg"), &msg).unwrap();
        std::fs::write(dir.join("sig"), &sig.signature.0).unwrap();
        let v = openssl(&[
            "dgst",
            "-sha384",
            "-verify",
            "k.pub.pem",
            "-signature",
            "sig",
            "msg",
        ]);
        assert!(v.contains("Verified OK"), "{v}");
    }
    agent.terminate();

    // Another TPM cannot import it.
    let third_keys = tempfile::Builder::new()
        .prefix("wrap-third-")
        .tempdir()
        .unwrap();
    let mut other = tpm_agent(&third, third_keys.path());
    let mut args = import_args(dir, "tpm/wrapped");
    for a in args.iter_mut() {
        *a = a
            .replace("dup.dpriv", "w.dpriv")
            .replace("key.pub", "w.pub")
            .replace("dup.seed", "w.seed");
    }
    let out = cli(&other, &args);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("not wrapped for this TPM's storage root key"),
        "{}",
        output_text(&out)
    );
    assert_eq!(std::fs::read_dir(third_keys.path()).unwrap().count(), 0);
    other.terminate();
}

#[test]
fn wrap_for_writes_an_importable_key_file_for_rsa_and_p256_keys() {
    let target = Swtpm::start();
    let files = tempfile::Builder::new()
        .prefix("wrap-pem-")
        .tempdir()
        .unwrap();
    let dir = files.path();
    srk_public(&target, &dir.join("srk.pub"));
    let openssl =
        |args: &[&str]| run_ok(Command::new(require("openssl")).current_dir(dir).args(args));
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "rsa.pem",
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:3072",
        "-out",
        "rsa3072.pem",
    ]);
    openssl(&[
        "pkey",
        "-in",
        "rsa3072.pem",
        "-pubout",
        "-out",
        "rsa3072.pub.pem",
    ]);
    // PKCS#1 (`RSA PRIVATE KEY`) is read as well as PKCS#8.
    openssl(&["rsa", "-in", "rsa.pem", "-traditional", "-out", "rsa1.pem"]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "ec.pem",
    ]);
    for k in ["rsa", "ec"] {
        openssl(&[
            "pkey",
            "-in",
            &format!("{k}.pem"),
            "-pubout",
            "-out",
            &format!("{k}.pub.pem"),
        ]);
    }
    for key in ["rsa1.pem", "ec.pem", "rsa3072.pem"] {
        let o = Command::new(&pkcs11_tests::bins().cli)
            .current_dir(dir)
            .args(["keys", "wrap-for", "--tpm-srk", "srk.pub", key])
            .output()
            .unwrap();
        assert!(o.status.success(), "wrap-for {key}: {}", output_text(&o));
    }
    // The default output: KEY without its extension plus .tpm-import.pem, one file.
    let rsa_file = dir.join("rsa1.tpm-import.pem");
    let ec_file = dir.join("ec.tpm-import.pem");
    let text = std::fs::read_to_string(&rsa_file).unwrap();
    assert!(
        text.starts_with("-----BEGIN TSS2 PRIVATE KEY-----\n"),
        "{text}"
    );
    // OpenSSL's ASN.1 parser reads it as the draft's TPMKey: the importable type, the
    // owner SRK parent and the three octet strings.
    let parsed = openssl(&["asn1parse", "-in", rsa_file.to_str().unwrap()]);
    assert!(parsed.contains(":2.23.133.10.1.4"), "{parsed}");
    assert!(parsed.contains("cont [ 2 ]"), "{parsed}");
    assert!(parsed.contains("INTEGER           :40000001"), "{parsed}");

    let keys = tempfile::Builder::new()
        .prefix("wrap-pem-keys-")
        .tempdir()
        .unwrap();
    let mut agent = tpm_agent(&target, keys.path());
    for (name, file, alg, public, hash) in [
        (
            "tpm/rsa",
            &rsa_file,
            "rsa2048",
            "rsa.pub.pem",
            HashAlg::Sha256,
        ),
        ("tpm/ec", &ec_file, "p256", "ec.pub.pem", HashAlg::Sha256),
        (
            "tpm/rsa3072",
            &dir.join("rsa3072.tpm-import.pem"),
            "rsa3072",
            "rsa3072.pub.pem",
            HashAlg::Sha256,
        ),
    ] {
        let out = agent.cli(&[
            "--json",
            "keys",
            "import",
            name,
            "--duplicate",
            file.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{name}: {}\n{}",
            output_text(&out),
            agent.log()
        );
        let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(made["key"]["alg"], alg, "{made}");
        assert_eq!(made["key"]["imported"], true, "{made}");
        assert_eq!(
            made["pem"].as_str().unwrap().trim(),
            std::fs::read_to_string(dir.join(public)).unwrap().trim()
        );
        let msg = format!("signed by {name} after wrap-for");
        let sig = agent
            .client()
            .sign_digest(name, &Sha256::digest(msg.as_bytes()), Some(hash), None)
            .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
        std::fs::write(dir.join("msg"), &msg).unwrap();
        std::fs::write(dir.join("sig"), &sig.signature.0).unwrap();
        let v = openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            public,
            "-signature",
            "sig",
            "msg",
        ]);
        assert!(v.contains("Verified OK"), "{name}: {v}");
    }
    agent.terminate();

    // An output naming the plaintext key is refused; the key stays as it was.
    let before = std::fs::read(dir.join("ec.pem")).unwrap();
    let o = Command::new(&pkcs11_tests::bins().cli)
        .current_dir(dir)
        .args([
            "keys",
            "wrap-for",
            "--tpm-srk",
            "srk.pub",
            "ec.pem",
            "-o",
            "ec.pem",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        output_text(&o).contains("is the key being wrapped"),
        "{}",
        output_text(&o)
    );
    assert_eq!(std::fs::read(dir.join("ec.pem")).unwrap(), before);

    // A 1024-bit RSA key is refused by wrap-for, naming the sizes, with nothing written.
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        "small.pem",
    ]);
    let o = Command::new(&pkcs11_tests::bins().cli)
        .current_dir(dir)
        .args(["keys", "wrap-for", "--tpm-srk", "srk.pub", "small.pem"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        output_text(&o).contains("1024 bits; a TPM key is RSA 2048 or 3072"),
        "{}",
        output_text(&o)
    );
    assert!(!dir.join("small.tpm-import.pem").exists());
}

// --- YubiKey (PIV) -------------------------------------------------------------------

const PIV_SERIAL: u32 = 20_260_022;

fn card() -> piv_emulator::harness::Harness {
    let mut config = piv_emulator::harness::Config::new(pkcs11_tests::bins().piv_emulator.clone());
    config.serial = PIV_SERIAL;
    piv_emulator::harness::Harness::start(config).unwrap_or_else(|e| {
        panic!("pcscd + piv-emulator did not start ({e}); run scripts/install-deps")
    })
}

#[test]
fn an_imported_piv_key_signs_shows_as_imported_and_is_not_attested() {
    let _card = card();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("pin"), "123456\n").unwrap();
    let agent = Agent::builder()
        .config(&format!(
            "[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nserial = {PIV_SERIAL}\npin = \"file:{}\"\n",
            dir.join("pin").display()
        ))
        .start();
    let openssl =
        |args: &[&str]| run_ok(Command::new(require("openssl")).current_dir(dir).args(args));
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "k.pem",
    ]);
    openssl(&["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub.pem"]);
    let key = dir.join("k.pem").display().to_string();

    let out = agent.cli(&[
        "--json",
        "keys",
        "import",
        "yk/9c",
        "--key",
        &key,
        "--touch",
        "never",
        "--pin-policy",
        "once",
    ]);
    assert!(
        out.status.success(),
        "import: {}\n{}",
        output_text(&out),
        agent.log()
    );
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["key"]["imported"], true, "{made}");
    assert_eq!(
        made["pem"].as_str().unwrap().trim(),
        std::fs::read_to_string(dir.join("k.pub.pem"))
            .unwrap()
            .trim()
    );

    // It signs; OpenSSL verifies with the public key of the original file.
    let msg = b"signed by an imported PIV key";
    let sig = agent
        .client()
        .sign_digest("yk/9c", &Sha256::digest(msg), Some(HashAlg::Sha256), None)
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    std::fs::write(dir.join("msg"), msg).unwrap();
    std::fs::write(dir.join("sig"), &sig.signature.0).unwrap();
    let v = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        "k.pub.pem",
        "-signature",
        "sig",
        "msg",
    ]);
    assert!(v.contains("Verified OK"), "{v}");

    // `keys list`: imported (the card's metadata says so), a generated key is not.
    agent
        .client()
        .generate_key("yk/9a", waxseal_agent::proto::KeyAlg::P256)
        .unwrap();
    let out = agent.cli(&["keys", "list"]);
    let list = output_text(&out);
    let row = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(row("yk/9c").contains("imported"), "{list}");
    assert!(row("yk/9a").contains("device"), "{list}");
    assert!(list.contains("attestation cannot vouch"), "{list}");

    // Attestation is refused, saying why; the generated key is still attested.
    let out = agent.cli(&["keys", "attest", "yk/9c"]);
    assert!(!out.status.success());
    let text = output_text(&out);
    assert!(text.contains("imported key"), "{text}");
    assert!(text.contains("attests only keys it generated"), "{text}");
    assert!(agent.cli(&["keys", "attest", "yk/9a"]).status.success());

    // A second import into the slot is refused; RSA is refused with the reason.
    let out = agent.cli(&["keys", "import", "yk/9c", "--key", &key]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("already holds a key"),
        "{}",
        output_text(&out)
    );
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "r.pem",
    ]);
    let out = agent.cli(&[
        "keys",
        "import",
        "yk/9d",
        "--key",
        dir.join("r.pem").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("RSA import is not offered"),
        "{}",
        output_text(&out)
    );

    // Audited as an import; the PEM never reaches the log.
    let records = audit_records(&agent.state_dir);
    let import = records
        .iter()
        .find(|r| r["event"] == "import" && r["key"] == "yk/9c" && r.get("code").is_none())
        .unwrap_or_else(|| panic!("no import record: {records:?}"));
    assert_eq!(import["imported"], true, "{import}");
    assert_eq!(import["import"], "private-key", "{import}");
    let log = std::fs::read_to_string(&key).unwrap();
    let body: String = log.lines().filter(|l| !l.starts_with("-----")).collect();
    let all = serde_json::to_string(&records).unwrap();
    assert!(
        !all.contains(&body[..40]),
        "the private key reached the audit log"
    );
}

// --- PKCS#11 (SoftHSM2) ----------------------------------------------------------------

#[test]
fn a_key_wrapped_under_a_token_key_is_unwrapped_sensitive_and_signs() {
    let (hsm, agent) = pkcs11_tests::agent_with_keys(&[("hsm/native", "p256")]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let openssl =
        |args: &[&str]| run_ok(Command::new(require("openssl")).current_dir(dir).args(args));
    // The token's key-encryption key, known to the source side (here, OpenSSL).
    std::fs::write(dir.join("kek.bin"), [0x11u8; 32]).unwrap();
    hsm.pkcs11_tool(&[
        "--token-label",
        "sig",
        "--login",
        "--pin",
        "user-pin-1",
        "--write-object",
        dir.join("kek.bin").to_str().unwrap(),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--label",
        "kek",
        "--usage-wrap",
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "k.pem",
    ]);
    openssl(&[
        "pkcs8", "-topk8", "-nocrypt", "-in", "k.pem", "-outform", "DER", "-out", "k.p8",
    ]);
    openssl(&["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub.pem"]);
    let kek_hex = "11".repeat(32);
    openssl(&[
        "enc",
        "-id-aes256-wrap-pad",
        "-K",
        &kek_hex,
        "-iv",
        "A65959A6",
        "-in",
        "k.p8",
        "-out",
        "k.wrapped",
    ]);
    // Another key's public key, to be refused.
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "o.pem",
    ]);
    openssl(&["pkey", "-in", "o.pem", "-pubout", "-out", "o.pub.pem"]);
    let path = |p: &str| dir.join(p).display().to_string();

    let out = agent.cli(&[
        "keys",
        "import",
        "hsm/moved",
        "--wrapped",
        &path("k.wrapped"),
        "--unwrapping-key",
        "kek",
        "--public-key",
        &path("o.pub.pem"),
    ]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("is not the unwrapped key's"),
        "{}",
        output_text(&out)
    );

    let out = agent.cli(&[
        "--json",
        "keys",
        "import",
        "hsm/moved",
        "--wrapped",
        &path("k.wrapped"),
        "--unwrapping-key",
        "kek",
        "--mechanism",
        "aes-key-wrap-pad",
        "--public-key",
        &path("k.pub.pem"),
    ]);
    assert!(
        out.status.success(),
        "import: {}\n{}",
        output_text(&out),
        agent.log()
    );
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["key"]["imported"], true, "{made}");

    let msg = b"signed by an unwrapped key";
    let sig = agent
        .client()
        .sign_digest(
            "hsm/moved",
            &Sha256::digest(msg),
            Some(HashAlg::Sha256),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    std::fs::write(dir.join("msg"), msg).unwrap();
    std::fs::write(dir.join("sig"), &sig.signature.0).unwrap();
    let v = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        "k.pub.pem",
        "-signature",
        "sig",
        "msg",
    ]);
    assert!(v.contains("Verified OK"), "{v}");

    // One private key of that label (the refused import left nothing), sensitive and
    // not extractable, as OpenSC's pkcs11-tool reads it.
    let objects = String::from_utf8_lossy(
        &hsm.pkcs11_tool(&[
            "--token-label",
            "sig",
            "--login",
            "--pin",
            "user-pin-1",
            "--list-objects",
            "--type",
            "privkey",
        ])
        .stdout,
    )
    .into_owned();
    let blocks: Vec<&str> = objects
        .split("Private Key Object")
        .filter(|b| b.contains("label:      moved"))
        .collect();
    assert_eq!(blocks.len(), 1, "{objects}");
    assert!(blocks[0].contains("sensitive"), "{objects}");
    assert!(
        blocks[0].contains("never extractable") || !blocks[0].contains("extractable"),
        "{objects}"
    );
    assert!(!blocks[0].contains("local"), "{objects}");

    let list = output_text(&agent.cli(&["keys", "list"]));
    let row = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(row("hsm/moved").contains("imported"), "{list}");
    assert!(row("hsm/native").contains("device"), "{list}");
    let records = audit_records(&agent.state_dir);
    assert!(
        records.iter().any(|r| r["event"] == "import"
            && r["key"] == "hsm/moved"
            && r["import"] == "pkcs11-unwrap"
            && r.get("code").is_none()),
        "{records:?}"
    );
}
