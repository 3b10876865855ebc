//! TPM keys bound to PCRs (README.md, "TPM keys bound to PCRs") against a real swtpm:
//! PCRs changed with tpm2-tools, signatures checked with OpenSSL, the key file's policy
//! run by tpm2-tools' own policy session.
//!
//! swtpm serves one connection at a time and the agent keeps its connection, so each
//! tpm2-tools step runs while no agent is up; the TPM (and its PCRs) stays up between
//! agents, as a machine's TPM does between agent restarts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use pkcs11_tests::{output_text, require, run_ok, tpm_device, Agent, Swtpm};
use sha2::{Digest as _, Sha256, Sha384};
use waxseal_agent::backend::tpm::keyfile::KeyFile;
use waxseal_agent::client::ClientError;
use waxseal_agent::proto::{ErrorCode, HashAlg};

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Agent(e)) => (e.code, e.message),
        other => panic!("expected an agent error, got {other:?}"),
    }
}

fn key_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tpm-pcr-keys-")
        .tempdir()
        .unwrap()
}

fn tpm_agent(tpm: &Swtpm, keys: &Path, pin: Option<&Path>) -> Agent {
    Agent::builder()
        .config(&tpm_device("tpm", tpm, keys, pin))
        .start()
}

/// The value of one PCR, as tpm2_pcrread prints it.
fn pcr(tpm: &Swtpm, bank: &str, index: u8) -> Vec<u8> {
    let out = run_ok(tpm.tool("tpm2_pcrread").arg(format!("{bank}:{index}")));
    let line = out
        .lines()
        .find(|l| {
            l.trim().starts_with(&format!("{index} ")) || l.trim().starts_with(&format!("{index}:"))
        })
        .unwrap_or_else(|| panic!("no PCR {index} in: {out}"));
    let hex_text = line.rsplit("0x").next().unwrap().trim();
    hex::decode(hex_text).unwrap()
}

fn extend(tpm: &Swtpm, index: u8, data: &[u8; 32]) {
    run_ok(
        tpm.tool("tpm2_pcrextend")
            .arg(format!("{index}:sha256={}", hex::encode(data))),
    );
}

/// `openssl dgst -<hash> -verify` of `msg` against `sig` made by `pem`'s key.
fn openssl_verify(dir: &Path, pem: &str, msg: &[u8], sig: &[u8], hash: &str) {
    std::fs::write(dir.join("v.pub.pem"), pem).unwrap();
    std::fs::write(dir.join("v.msg"), msg).unwrap();
    std::fs::write(dir.join("v.sig"), sig).unwrap();
    let out = run_ok(
        Command::new(require("openssl"))
            .current_dir(dir)
            .args(["dgst", &format!("-{hash}")])
            .args(["-verify", "v.pub.pem", "-signature", "v.sig", "v.msg"]),
    );
    assert!(out.contains("Verified OK"), "openssl: {out}");
}

fn cli_ok(agent: &Agent, args: &[&str]) -> String {
    let out = agent.cli(args);
    assert!(
        out.status.success(),
        "waxseal {args:?}: {}\n{}",
        output_text(&out),
        agent.log()
    );
    output_text(&out)
}

#[test]
fn pcr_bound_key_signs_until_a_bound_pcr_is_extended() {
    let tpm = Swtpm::start();
    let keys = key_dir();
    let mut agent = tpm_agent(&tpm, keys.path(), None);
    let text = cli_ok(
        &agent,
        &[
            "keys",
            "generate",
            "tpm/root",
            "--alg",
            "p384",
            "--pcrs",
            "sha256:16,0,7",
        ],
    );
    assert!(text.contains("PCRs sha256:0,7,16"), "{text}");
    let pem = agent.client().public_key("tpm/root").unwrap().pem;

    // It signs while the PCRs hold their values; OpenSSL verifies.
    let msg = b"root certificate to be";
    let sig = agent
        .client()
        .sign_digest(
            "tpm/root",
            &Sha384::digest(msg),
            Some(HashAlg::Sha384),
            None,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    openssl_verify(agent.dir(), &pem, msg, &sig.signature.0, "sha384");

    // `keys list` shows the binding, as text and as JSON.
    let list = cli_ok(&agent, &["keys", "list"]);
    let row = list.lines().find(|l| l.starts_with("tpm/root")).unwrap();
    assert!(row.contains("sha256:0,7,16"), "{list}");
    assert!(list.lines().next().unwrap().contains("PCRS"), "{list}");
    let json: serde_json::Value =
        serde_json::from_str(&cli_ok(&agent, &["--json", "keys", "list"])).unwrap();
    let key = json["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "tpm/root")
        .unwrap()
        .clone();
    assert_eq!(
        key["pcrs"],
        serde_json::json!({"bank": "sha256", "pcrs": [0, 7, 16]}),
        "{json}"
    );

    // The key file carries the policy (OpenSSL's own ASN.1 parser reads it): one
    // TPMPolicy, commandCode TPM_CC_PolicyPCR.
    let file = keys.path().join("root.pem");
    let asn1 = run_ok(
        Command::new(require("openssl"))
            .args(["asn1parse", "-in"])
            .arg(&file),
    );
    assert!(asn1.contains("cont [ 1 ]"), "{asn1}");
    assert!(asn1.contains("INTEGER           :017F"), "{asn1}");
    let kf = KeyFile::from_pem(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(kf.policy.len(), 1);
    assert_eq!(kf.policy[0].command_code, 0x17f);
    let values = std::fs::read_to_string(keys.path().join("root.pcr-values")).unwrap();
    assert!(values.contains("sha256:16="), "{values}");
    agent.terminate();

    // tpm2-tools runs the policy itself: its own PolicyPCR session (digest from the
    // PCRs it reads) satisfies the key's authPolicy, and the key has no userWithAuth.
    let dir = tpm.dir().to_path_buf();
    std::fs::write(dir.join("root.pub"), &kf.public).unwrap();
    std::fs::write(dir.join("root.priv"), &kf.private).unwrap();
    run_ok(tpm.tool("tpm2_createprimary").args([
        "-C",
        "o",
        "-g",
        "sha256",
        "-G",
        "ecc256:aes128cfb",
        "-a",
        "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda",
        "-c",
        "srk.ctx",
    ]));
    run_ok(tpm.tool("tpm2_flushcontext").arg("-t"));
    run_ok(tpm.tool("tpm2_load").args([
        "-C",
        "srk.ctx",
        "-u",
        "root.pub",
        "-r",
        "root.priv",
        "-c",
        "root.ctx",
    ]));
    run_ok(tpm.tool("tpm2_flushcontext").arg("-t"));
    let public = run_ok(tpm.tool("tpm2_readpublic").args(["-c", "root.ctx"]));
    let attrs = public
        .lines()
        .skip_while(|l| !l.starts_with("attributes:"))
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(!attrs.contains("userwithauth"), "{attrs}");
    run_ok(tpm.tool("tpm2_flushcontext").arg("-t"));
    std::fs::write(dir.join("tools.msg"), b"signed by tpm2-tools").unwrap();
    run_ok(
        tpm.tool("tpm2_startauthsession")
            .args(["--policy-session", "-S", "session.ctx"]),
    );
    run_ok(
        tpm.tool("tpm2_policypcr")
            .args(["-S", "session.ctx", "-l", "sha256:0,7,16"]),
    );
    run_ok(tpm.tool("tpm2_sign").args([
        "-c",
        "root.ctx",
        "-p",
        "session:session.ctx",
        "-g",
        "sha384",
        "-f",
        "plain",
        "-o",
        "tools.sig",
        "tools.msg",
    ]));
    run_ok(tpm.tool("tpm2_flushcontext").args(["session.ctx"]));
    run_ok(tpm.tool("tpm2_flushcontext").arg("-t"));
    let tools_sig = std::fs::read(dir.join("tools.sig")).unwrap();
    openssl_verify(&dir, &pem, b"signed by tpm2-tools", &tools_sig, "sha384");

    // PCR 16 moves on.
    let before = pcr(&tpm, "sha256", 16);
    extend(
        &tpm,
        16,
        &Sha256::digest(b"an unexpected boot component").into(),
    );
    let after = pcr(&tpm, "sha256", 16);
    assert_ne!(before, after);

    let agent = tpm_agent(&tpm, keys.path(), None);
    let (c, m) = code(agent.client().sign_digest(
        "tpm/root",
        &Sha384::digest(msg),
        Some(HashAlg::Sha384),
        None,
    ));
    assert_eq!(c, ErrorCode::PcrMismatch, "{m}\n{}", agent.log());
    assert!(
        m.contains(&format!(
            "PCR sha256:16 is {} but the key is bound to {}",
            hex::encode(&after),
            hex::encode(&before)
        )),
        "{m}"
    );
    assert!(
        !m.contains("sha256:0 ") && !m.contains("sha256:7 "),
        "only PCR 16 differs: {m}"
    );

    // The refusal is in the audit log, with its code and the PCR.
    let records = agent.client().audit_tail(Some(50)).unwrap().records;
    let refusal = records
        .iter()
        .find(|r| r["key"] == "tpm/root" && r["code"] == "pcr-mismatch")
        .unwrap_or_else(|| panic!("no pcr-mismatch record: {records:#?}"));
    assert!(
        refusal["reason"].as_str().unwrap().contains("sha256:16"),
        "{refusal}"
    );

    // The agent keeps serving other keys, and refuses the bound one again, the same way.
    let other = agent
        .client()
        .generate_key("tpm/other", waxseal_agent::proto::KeyAlg::P256)
        .unwrap();
    let sig = agent
        .client()
        .sign_digest("tpm/other", &Sha256::digest(b"x"), None, None)
        .unwrap();
    openssl_verify(agent.dir(), &other.pem, b"x", &sig.signature.0, "sha256");
    let (c, _) = code(agent.client().sign_digest(
        "tpm/root",
        &Sha384::digest(msg),
        Some(HashAlg::Sha384),
        None,
    ));
    assert_eq!(c, ErrorCode::PcrMismatch);
}

#[test]
fn key_bound_to_a_future_state_signs_only_after_the_pcrs_reach_it() {
    let tpm = Swtpm::start();
    let keys = key_dir();
    let pin = keys.path().join("pin");
    std::fs::write(&pin, "boot-pin\n").unwrap();

    // The state after the next boot stage: PCR 23 extended with `stage` (new = SHA-256
    // (old || stage)); PCR 0 as it is now, in tpm2_pcrread's own output form.
    let stage: [u8; 32] = Sha256::digest(b"boot stage 2").into();
    let old23 = pcr(&tpm, "sha256", 23);
    let mut h = Sha256::new();
    h.update(&old23);
    h.update(stage);
    let future23 = h.finalize().to_vec();
    let pcrread = run_ok(tpm.tool("tpm2_pcrread").arg("sha256:0"));
    let values = keys.path().join("future.pcrs");
    std::fs::write(
        &values,
        format!(
            "{pcrread}# after stage 2\nsha256:23={}\n",
            hex::encode(&future23)
        ),
    )
    .unwrap();

    // With a PIN: the policy is PolicyPCR then PolicyAuthValue.
    let mut agent = tpm_agent(&tpm, keys.path(), Some(&pin));
    cli_ok(
        &agent,
        &[
            "keys",
            "generate",
            "tpm/release",
            "--alg",
            "p256",
            "--pcrs",
            "sha256:0,23",
            "--pcr-values",
            values.to_str().unwrap(),
        ],
    );
    let kf = KeyFile::from_pem(&std::fs::read_to_string(keys.path().join("release.pem")).unwrap())
        .unwrap();
    let codes: Vec<u32> = kf.policy.iter().map(|p| p.command_code).collect();
    assert_eq!(codes, vec![0x17f, 0x16b]);
    assert!(!kf.empty_auth);
    let pem = agent.client().public_key("tpm/release").unwrap().pem;
    let msg = b"release 2.0";
    let (c, m) = code(
        agent
            .client()
            .sign_digest("tpm/release", &Sha256::digest(msg), None, None),
    );
    assert_eq!(c, ErrorCode::PcrMismatch, "{m}");
    assert!(
        m.contains(&format!(
            "PCR sha256:23 is {} but the key is bound to {}",
            hex::encode(&old23),
            hex::encode(&future23)
        )),
        "{m}"
    );
    agent.terminate();

    extend(&tpm, 23, &stage);
    assert_eq!(pcr(&tpm, "sha256", 23), future23);
    let agent = tpm_agent(&tpm, keys.path(), Some(&pin));
    let sig = agent
        .client()
        .sign_digest("tpm/release", &Sha256::digest(msg), None, None)
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    openssl_verify(agent.dir(), &pem, msg, &sig.signature.0, "sha256");

    // The PIN is still needed: PolicyAuthValue makes the TPM check it.
    std::fs::write(&pin, "not-the-pin\n").unwrap();
    let (c, m) = code(
        agent
            .client()
            .sign_digest("tpm/release", &Sha256::digest(msg), None, None),
    );
    assert_eq!(c, ErrorCode::PinIncorrect, "{m}");
}

#[test]
fn bad_pcr_selections_and_values_files_are_refused_clearly() {
    let tpm = Swtpm::start();
    let keys = key_dir();
    let agent = tpm_agent(&tpm, keys.path(), None);
    let dir = agent.dir().to_path_buf();
    let short = dir.join("short.pcrs");
    std::fs::write(&short, "sha256:0=abcd\nsha256:7=abcd\n").unwrap();
    let missing = dir.join("missing.pcrs");
    std::fs::write(&missing, format!("sha256:0={}\n", "00".repeat(32))).unwrap();
    let garbage = dir.join("garbage.pcrs");
    std::fs::write(&garbage, "PCR zero is fine\n").unwrap();
    let huge = dir.join("huge.pcrs");
    std::fs::write(&huge, "#".repeat(70_000)).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--pcrs".into(),
                "sha256:0".into(),
                "--pcr-values".into(),
                huge.display().to_string(),
            ],
            "not a PCR values file",
        ),
        (
            vec![
                "--pcrs".into(),
                "sha256:0".into(),
                "--pcr-values".into(),
                "/dev/zero".into(),
            ],
            "not a PCR values file",
        ),
        (
            vec!["--pcrs".into(), "sha256:0,24".into()],
            "`24` in `sha256:0,24` is not a PCR index",
        ),
        (
            vec!["--pcrs".into(), "md5:0".into()],
            "`md5` is not a PCR bank",
        ),
        (
            vec!["--pcrs".into(), "sha256:7,7".into()],
            "PCR 7 is named twice",
        ),
        (
            vec!["--pcrs".into(), "sha256:0+sha1:0".into()],
            "one bank only",
        ),
        (
            vec!["--pcr-values".into(), missing.display().to_string()],
            "--pcrs",
        ),
        (
            vec![
                "--pcrs".into(),
                "sha256:0,7".into(),
                "--pcr-values".into(),
                short.display().to_string(),
            ],
            "line 1: the value of sha256:0 is 2 bytes; sha256 PCRs are 32 bytes",
        ),
        (
            vec![
                "--pcrs".into(),
                "sha256:0,7".into(),
                "--pcr-values".into(),
                missing.display().to_string(),
            ],
            "no value for sha256:7",
        ),
        (
            vec![
                "--pcrs".into(),
                "sha256:0".into(),
                "--pcr-values".into(),
                garbage.display().to_string(),
            ],
            "line 1:",
        ),
        (
            vec![
                "--pcrs".into(),
                "sha256:0".into(),
                "--pcr-values".into(),
                dir.join("nope").display().to_string(),
            ],
            "cannot read --pcr-values",
        ),
    ];
    for (extra, want) in cases {
        let mut args: Vec<&str> = vec!["keys", "generate", "tpm/bad", "--alg", "p256"];
        args.extend(extra.iter().map(String::as_str));
        let out = agent.cli(&args);
        let text = output_text(&out);
        assert!(!out.status.success(), "{args:?} was accepted: {text}");
        assert!(text.contains(want), "{args:?}: want `{want}` in: {text}");
        assert!(
            !keys.path().join("bad.pem").exists() && !keys.path().join("bad.pcr-values").exists(),
            "{args:?} left a key behind"
        );
    }
    // A bank the TPM has no PCRs in: swtpm 0.7 allocates all four; SHA-512's are
    // deallocated, which takes effect at the next TPM reset.
    drop(agent);
    run_ok(
        tpm.tool("tpm2_pcrallocate")
            .arg("sha1:all+sha256:all+sha384:all+sha512:none"),
    );
    let mut tpm = tpm;
    tpm.kill();
    tpm.restart();
    let banks = run_ok(tpm.tool("tpm2_getcap").arg("pcrs"));
    assert!(banks.contains("sha512: [ ]"), "{banks}");
    let agent = tpm_agent(&tpm, keys.path(), None);
    let out = agent.cli(&[
        "keys", "generate", "tpm/bad", "--alg", "p256", "--pcrs", "sha512:0",
    ]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("no active sha512 PCR bank"),
        "{text}\n{banks}"
    );
    assert!(!keys.path().join("bad.pem").exists());
    // A key already there is never replaced, bound or not.
    cli_ok(&agent, &["keys", "generate", "tpm/kept", "--alg", "p256"]);
    let before = std::fs::read(keys.path().join("kept.pem")).unwrap();
    let out = agent.cli(&[
        "keys",
        "generate",
        "tpm/kept",
        "--alg",
        "p256",
        "--pcrs",
        "sha256:16",
    ]);
    assert!(!out.status.success());
    assert!(
        output_text(&out).contains("key-exists") || output_text(&out).contains("exists already"),
        "{}",
        output_text(&out)
    );
    assert_eq!(std::fs::read(keys.path().join("kept.pem")).unwrap(), before);
    assert!(!keys.path().join("kept.pcr-values").exists());
}

/// Debian 12's tpm2-openssl 1.1.1 cannot use a key file with a policy: its TSS2 key
/// decoder knows only type, emptyAuth, parent, pubkey and privkey, so the `[1] policy`
/// field makes it refuse the file, and it has no policy sessions to run. This test pins
/// that down (README.md, "TPM keys bound to PCRs"); when a newer provider reads such
/// files it fails, and the provider should then be tested signing under the policy.
#[test]
fn tpm2_openssl_1_1_1_refuses_pcr_bound_key_files_but_reads_unbound_ones() {
    let tpm = Swtpm::start();
    let keys = key_dir();
    let mut agent = tpm_agent(&tpm, keys.path(), None);
    cli_ok(
        &agent,
        &[
            "keys",
            "generate",
            "tpm/bound",
            "--alg",
            "p256",
            "--pcrs",
            "sha256:16",
        ],
    );
    let plain = agent
        .client()
        .generate_key("tpm/plain", waxseal_agent::proto::KeyAlg::P256)
        .unwrap();
    agent.terminate();
    let version =
        run_ok(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "tpm2-openssl"]));
    let pubout = |name: &str| {
        tpm.openssl()
            .args(["pkey", "-provider", "tpm2", "-provider", "default", "-in"])
            .arg(keys.path().join(format!("{name}.pem")))
            .arg("-pubout")
            .output()
            .unwrap()
    };
    // The control: the same provider, TPM and SRK read a key file without a policy.
    let out = pubout("plain");
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), plain.pem);
    let out = pubout("bound");
    let text = output_text(&out);
    assert!(
        !out.status.success()
            && text.contains("Could not read key")
            && text.contains("unsupported"),
        "tpm2-openssl {version} read a key file with a policy; test signing under it now: {text}"
    );
}

#[test]
fn pcr_bindings_are_refused_for_keys_that_are_not_on_a_tpm() {
    let (_hsm, agent) = pkcs11_tests::agent_with_keys(&[]);
    let out = agent.cli(&[
        "keys",
        "generate",
        "hsm/bound",
        "--alg",
        "p256",
        "--pcrs",
        "sha256:7",
    ]);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("bad-request"), "{text}");
    assert!(
        text.contains("`pcrs` binds a TPM key to PCRs; device hsm is a pkcs11 device"),
        "{text}"
    );
    assert!(
        agent.client().list_keys().unwrap().keys.is_empty(),
        "no key was made"
    );
}
