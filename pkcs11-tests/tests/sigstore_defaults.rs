//! The config file's `[sigstore]` table (issue 19, part 3; README, "Signing
//! releases"): `waxseal sign FILE` with no service flag signs through the services the
//! table names, a flag replaces the file's setting of its service, relative paths are
//! the file's directory's, and a typo in the table stops both the agent (at start) and
//! the CLI, naming the setting. Services: @sigstore/mock's TSA, OpenSSL's TSA and the
//! Rekor v2 stand-in of `sigstore_tsa.rs`; bundles checked by @sigstore/verify.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pkcs11_tests::{audit_records, bins, pkcs11_device, sigstore_js_verify_with, write_pubkey};
use pkcs11_tests::{output_text as text, read_json, Agent, LocalService, SoftHsm};
use serde_json::{json, Value};

/// A Sigstore `Service` valid since 2024.
fn service(url: &str, version: u32, operator: &str) -> Value {
    json!({ "url": url, "majorApiVersion": version,
            "validFor": { "start": "2024-01-01T00:00:00Z" }, "operator": operator })
}

/// The base64 DER of each PEM block in `pem`.
fn pem_blocks(pem: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(pem).unwrap();
    text.split("-----BEGIN ")
        .skip(1)
        .map(|block| {
            let body = block.split_once("-----\n").unwrap().1;
            let body = body.split("-----END").next().unwrap();
            body.lines().map(str::trim).collect::<String>()
        })
        .collect()
}

fn entries(bundle: &Value) -> Vec<Value> {
    bundle["verificationMaterial"]["tlogEntries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn stamps(bundle: &Value) -> Vec<Value> {
    bundle["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn signed_records(agent: &Agent) -> usize {
    audit_records(&agent.state_dir)
        .iter()
        .filter(|r| r["event"] == "signed")
        .count()
}

/// `waxseal ARGS` against `agent` with `env` set (XDG_CONFIG_HOME: where the default
/// config file is looked for).
fn cli_env(agent: &Agent, env: &[(&str, &Path)], args: &[&str]) -> Output {
    let mut cmd = Command::new(&bins().cli);
    cmd.arg("--socket")
        .arg(&agent.socket)
        .args(args)
        .env_remove("WAXSEAL_SOCK");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run waxseal")
}

/// A SoftHSM2 token with one P-256 key behind an agent whose config file also holds
/// `sigstore` (TOML after the `[[device]]`).
fn agent_with_table(sigstore: &str) -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token("sig", "so-pin-1", "user-pin-1");
    let pin = hsm.pin_file("pin", "user-pin-1");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", "sig", &pin))
        .config(sigstore)
        .start();
    let out = agent.cli(&["keys", "generate", "hsm/ec", "--alg", "p256"]);
    assert!(out.status.success(), "{}", text(&out));
    (hsm, agent)
}

/// The agent's own config file names a signing config and a trusted root by relative
/// paths; `waxseal --config THAT_FILE sign FILE` (run from another directory) uses
/// them with no service flag: a Rekor v2 entry and a timestamp, verified by
/// @sigstore/verify; `--json` names the services and the file. The same file at the
/// default path (XDG_CONFIG_HOME) needs no `--config`; without a file there, no
/// service is used.
#[test]
fn a_table_naming_a_signing_config_and_trusted_root_needs_no_service_flags() {
    let rekor = LocalService::rekor_v2("ok");
    let rekor_key = rekor.file("rekor.pub.pem");
    let tsa = LocalService::mock_tsa("ok");
    let chain = tsa.file("chain.pem");
    // The agent reads this table too, and starts: it is its config file.
    let (_hsm, agent) = agent_with_table(
        "[sigstore]\nsigning_config = \"signing_config.v0.2.json\"\ntrusted_root = \"trust/trusted_root.json\"\n",
    );
    let conf_dir = agent.dir().to_path_buf();
    let config = conf_dir.join("config.toml");
    std::fs::write(
        conf_dir.join("signing_config.v0.2.json"),
        json!({
            "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
            "rekorTlogUrls": [service(&rekor.url, 2, "log.example")],
            "rekorTlogConfig": { "selector": "ANY" },
            "tsaUrls": [service(&tsa.url, 1, "tsa.example")],
            "tsaConfig": { "selector": "ANY" },
        })
        .to_string(),
    )
    .unwrap();
    std::fs::create_dir(conf_dir.join("trust")).unwrap();
    std::fs::write(
        conf_dir.join("trust/trusted_root.json"),
        json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot.v0.2+json",
            "tlogs": [{ "baseUrl": rekor.url, "hashAlgorithm": "SHA2_256",
                        "publicKey": { "rawBytes": pem_blocks(&rekor_key)[0] } }],
            "timestampAuthorities": [{ "certChain": { "certificates":
                pem_blocks(&chain).iter().map(|c| json!({ "rawBytes": c })).collect::<Vec<_>>() } }],
        })
        .to_string(),
    )
    .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let pem = write_pubkey(&agent, "hsm/ec", tmp.path());
    let file = tmp.path().join("release.tgz");
    std::fs::write(&file, b"release\n".repeat(50)).unwrap();
    let f = file.to_str().unwrap();
    let bundle = PathBuf::from(format!("{f}.sigstore.json"));
    // The test's working directory is not the config's: relative paths must be taken
    // from the config's directory to be found.
    assert_ne!(std::env::current_dir().unwrap(), conf_dir);
    let out = agent.cli(&[
        "--config",
        config.to_str().unwrap(),
        "sign",
        f,
        "--key",
        "hsm/ec",
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("from [sigstore] in") && said.contains("signing_config, trusted_root"),
        "{said}"
    );
    let b = read_json(&bundle);
    assert_eq!(
        b["mediaType"],
        "application/vnd.dev.sigstore.bundle.v0.3+json"
    );
    let e = entries(&b);
    assert_eq!(e.len(), 1, "{b}");
    assert_eq!(e[0]["kindVersion"]["kind"], "hashedrekord");
    assert_eq!(e[0]["kindVersion"]["version"], "0.0.2");
    assert!(
        e[0]["inclusionProof"]["checkpoint"]["envelope"].is_string(),
        "{b}"
    );
    assert_eq!(stamps(&b).len(), 1, "{b}");
    sigstore_js_verify_with(
        &bundle,
        &file,
        &pem,
        Some((&rekor_key, &rekor.url)),
        Some(&chain),
    )
    .unwrap_or_else(|e| panic!("@sigstore/verify refused the bundle: {e}"));

    // `waxseal attest` takes the same table: its DSSE bundle gets the PAE's hashedrekord
    // in the Rekor v2 log and a timestamp, with no service flag.
    let predicate = tmp.path().join("provenance.json");
    std::fs::write(&predicate, br#"{"buildType":"https://example.com/make"}"#).unwrap();
    let statement_bundle = tmp.path().join("release.intoto.sigstore.json");
    let out = agent.cli(&[
        "--config",
        config.to_str().unwrap(),
        "attest",
        "--key",
        "hsm/ec",
        "--type",
        "https://slsa.dev/provenance/v1",
        "--predicate",
        predicate.to_str().unwrap(),
        "--bundle",
        statement_bundle.to_str().unwrap(),
        f,
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("from [sigstore] in"), "{said}");
    let b = read_json(&statement_bundle);
    assert!(b["dsseEnvelope"]["payload"].is_string(), "{b}");
    let e = entries(&b);
    assert_eq!(e.len(), 1, "{b}");
    assert_eq!(e[0]["kindVersion"]["kind"], "hashedrekord");
    assert_eq!(e[0]["kindVersion"]["version"], "0.0.2");
    assert_eq!(stamps(&b).len(), 1, "{b}");
    sigstore_js_verify_with(
        &statement_bundle,
        &file,
        &pem,
        Some((&rekor_key, &rekor.url)),
        Some(&chain),
    )
    .unwrap_or_else(|e| panic!("@sigstore/verify refused the attestation: {e}"));
    // --no-sigstore-defaults: a DSSE bundle with neither entry nor timestamp.
    let out = agent.cli(&[
        "--config",
        config.to_str().unwrap(),
        "attest",
        "--key",
        "hsm/ec",
        "--type",
        "https://slsa.dev/provenance/v1",
        "--predicate",
        predicate.to_str().unwrap(),
        "--bundle",
        statement_bundle.to_str().unwrap(),
        "--no-sigstore-defaults",
        f,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let b = read_json(&statement_bundle);
    assert_eq!((entries(&b).len(), stamps(&b).len()), (0, 0), "{b}");

    // --rekor-url and --tsa-url set the file's signing config aside (stderr says so)
    // and keep its trusted root, which must then name the flag's log: it does.
    std::fs::remove_file(&bundle).unwrap();
    let out = agent.cli(&[
        "--config",
        config.to_str().unwrap(),
        "sign",
        f,
        "--key",
        "hsm/ec",
        "--rekor-url",
        &rekor.url,
        "--rekor-version",
        "2",
        "--tsa-url",
        &tsa.url,
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("--rekor-url replaces signing_config of [sigstore]"),
        "{said}"
    );
    assert!(
        said.contains("from [sigstore] in") && said.contains(": trusted_root"),
        "{said}"
    );
    assert!(
        !said.contains("signing config "),
        "the config was read: {said}"
    );
    let b = read_json(&bundle);
    assert_eq!((entries(&b).len(), stamps(&b).len()), (1, 1), "{b}");
    sigstore_js_verify_with(
        &bundle,
        &file,
        &pem,
        Some((&rekor_key, &rekor.url)),
        Some(&chain),
    )
    .unwrap_or_else(|e| panic!("@sigstore/verify refused the flags' bundle: {e}"));

    // --json reports the services and the file they came from.
    std::fs::remove_file(&bundle).unwrap();
    let out = agent.cli(&[
        "--json",
        "--config",
        config.to_str().unwrap(),
        "sign",
        f,
        "--key",
        "hsm/ec",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["services"]["rekor"], json!([rekor.url]), "{report}");
    assert_eq!(report["services"]["rekor_version"], 2, "{report}");
    assert_eq!(report["services"]["tsa"], json!([tsa.url]), "{report}");
    assert_eq!(
        report["services"]["sigstore_defaults"],
        json!(config.to_str().unwrap()),
        "{report}"
    );

    // The default path: XDG_CONFIG_HOME/waxseal/config.toml, no --config.
    let xdg = tempfile::tempdir().unwrap();
    std::fs::create_dir(xdg.path().join("waxseal")).unwrap();
    std::fs::write(
        xdg.path().join("waxseal/config.toml"),
        format!(
            "[agent]\nmax_connections = 8\n\n[sigstore]\nsigning_config = \"{}\"\ntrusted_root = \"{}\"\n",
            conf_dir.join("signing_config.v0.2.json").display(),
            conf_dir.join("trust/trusted_root.json").display()
        ),
    )
    .unwrap();
    std::fs::remove_file(&bundle).unwrap();
    let out = cli_env(
        &agent,
        &[("XDG_CONFIG_HOME", xdg.path())],
        &["sign", f, "--key", "hsm/ec"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let b = read_json(&bundle);
    assert_eq!((entries(&b).len(), stamps(&b).len()), (1, 1), "{b}");

    // No file at the default path: no defaults, not an error; a key-only bundle.
    let empty = tempfile::tempdir().unwrap();
    let out = cli_env(
        &agent,
        &[("XDG_CONFIG_HOME", empty.path())],
        &["sign", f, "--key", "hsm/ec"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let b = read_json(&bundle);
    assert_eq!((entries(&b).len(), stamps(&b).len()), (0, 0), "{b}");
}

/// A private deployment's table (Rekor v2 URL and key, a TSA): each flag replaces the
/// file's setting of its own service and keeps the rest; `--no-sigstore-defaults`
/// ignores the table.
#[test]
fn a_flag_replaces_the_files_setting_of_its_service_only() {
    let rekor = LocalService::rekor_v2("ok");
    let rekor_key = rekor.file("rekor.pub.pem");
    let mock = LocalService::mock_tsa("ok");
    let openssl = LocalService::openssl_tsa();
    let (_hsm, agent) = agent_with_table(&format!(
        "[sigstore]\nrekor_url = \"{}\"\nrekor_version = 2\nrekor_public_key = \"{}\"\ntsa_url = \"{}\"\ntsa_timeout_secs = 20\n",
        rekor.url,
        rekor_key.display(),
        mock.url
    ));
    let config = agent.dir().join("config.toml");
    let c = config.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let pem = write_pubkey(&agent, "hsm/ec", tmp.path());
    let file = tmp.path().join("app.bin");
    std::fs::write(&file, b"app\n".repeat(64)).unwrap();
    let f = file.to_str().unwrap();
    let bundle = PathBuf::from(format!("{f}.sigstore.json"));

    // The file alone: its log and its TSA.
    let out = agent.cli(&["--config", c, "sign", f, "--key", "hsm/ec"]);
    assert!(out.status.success(), "{}", text(&out));
    let b = read_json(&bundle);
    assert_eq!((entries(&b).len(), stamps(&b).len()), (1, 1), "{b}");
    sigstore_js_verify_with(
        &bundle,
        &file,
        &pem,
        Some((&rekor_key, &rekor.url)),
        Some(&mock.file("chain.pem")),
    )
    .unwrap_or_else(|e| panic!("@sigstore/verify refused the bundle: {e}"));

    // --tsa-url: OpenSSL's TSA instead of the mock's; the file's Rekor log stays.
    std::fs::remove_file(&bundle).unwrap();
    let out = agent.cli(&[
        "--config",
        c,
        "sign",
        f,
        "--key",
        "hsm/ec",
        "--tsa-url",
        &openssl.url,
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("--tsa-url replaces tsa_url of [sigstore]"),
        "{said}"
    );
    let b = read_json(&bundle);
    assert_eq!((entries(&b).len(), stamps(&b).len()), (1, 1), "{b}");
    sigstore_js_verify_with(
        &bundle,
        &file,
        &pem,
        Some((&rekor_key, &rekor.url)),
        Some(&openssl.file("chain.pem")),
    )
    .unwrap_or_else(|e| panic!("the OpenSSL-stamped bundle: {e}"));
    assert!(
        sigstore_js_verify_with(
            &bundle,
            &file,
            &pem,
            Some((&rekor_key, &rekor.url)),
            Some(&mock.file("chain.pem")),
        )
        .is_err(),
        "the timestamp is not the file's TSA's"
    );

    // --rekor-version 1 goes with the file's URL: the v2 stand-in has no v1 API, so
    // the upload fails naming it, and no bundle is written.
    std::fs::remove_file(&bundle).unwrap();
    let before = signed_records(&agent);
    let out = agent.cli(&[
        "--config",
        c,
        "sign",
        f,
        "--key",
        "hsm/ec",
        "--rekor-version",
        "1",
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&rekor.url), "{said}");
    assert!(
        said.contains("--rekor-version replaces rekor_version"),
        "{said}"
    );
    assert!(!bundle.exists());
    assert_eq!(signed_records(&agent), before + 1);

    // --no-sigstore-defaults: nothing from the file.
    let out = agent.cli(&[
        "--config",
        c,
        "sign",
        f,
        "--key",
        "hsm/ec",
        "--no-sigstore-defaults",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("[sigstore]"), "{}", text(&out));
    let b = read_json(&bundle);
    assert_eq!((entries(&b).len(), stamps(&b).len()), (0, 0), "{b}");

    // --raw: a bare signature has no bundle; the table does not apply.
    let out = agent.cli(&["--config", c, "sign", f, "--key", "hsm/ec", "--raw"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("[sigstore]"), "{}", text(&out));
}

/// `waxseal-agent --config FILE` with a typo in `[sigstore]`: exits 1 at start, naming
/// the file, the line and the setting. The CLI refuses the same file before anything
/// is signed, and a file `--config` names must exist.
#[test]
fn a_typo_in_the_table_stops_the_agent_and_the_cli_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("config.toml");
    std::fs::write(
        &bad,
        "[agent]\nmax_connections = 8\n\n[sigstore]\nsigning_config = \"sc.json\"\nrekor_ulr = \"https://rekor.example\"\n",
    )
    .unwrap();
    let child = Command::new(&bins().agent)
        .arg("--config")
        .arg(&bad)
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The agent's exit is the event: a thread waits for it; 20 s bound the wait.
    let pid = rustix::process::Pid::from_child(&child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            panic!("the agent still runs with a typo in [sigstore]");
        }
    };
    let status = out.status;
    let said = text(&out);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("{}:6: sigstore.rekor_ulr", bad.display())),
        "{said}"
    );
    assert!(said.contains("unknown field `rekor_ulr`"), "{said}");
    assert!(!dir.path().join("run/agent.sock").exists());

    // The CLI, against a sound agent: refused before anything is signed.
    let (_hsm, agent) = agent_with_table("");
    let file = dir.path().join("a.txt");
    std::fs::write(&file, b"a\n").unwrap();
    let f = file.to_str().unwrap();
    let before = signed_records(&agent);
    let out = agent.cli(&[
        "--config",
        bad.to_str().unwrap(),
        "sign",
        f,
        "--key",
        "hsm/ec",
    ]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("config {}:6: sigstore.rekor_ulr", bad.display())),
        "{said}"
    );
    assert!(said.contains("unknown field `rekor_ulr`"), "{said}");
    assert!(said.contains("--no-sigstore-defaults"), "{said}");
    assert!(!PathBuf::from(format!("{f}.sigstore.json")).exists());
    assert_eq!(signed_records(&agent), before);

    // A value the schema refuses, the same way; and --config naming no file.
    std::fs::write(
        &bad,
        "[sigstore]\nrekor_url = \"https://rekor.example\"\nrekor_version = 3\n",
    )
    .unwrap();
    let out = agent.cli(&[
        "--config",
        bad.to_str().unwrap(),
        "sign",
        f,
        "--key",
        "hsm/ec",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(":3: sigstore.rekor_version: 3 is not a Rekor API version"),
        "{}",
        text(&out)
    );
    let gone = dir.path().join("missing.toml");
    let out = agent.cli(&[
        "--config",
        gone.to_str().unwrap(),
        "sign",
        f,
        "--key",
        "hsm/ec",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("config {}: cannot read it", gone.display())),
        "{}",
        text(&out)
    );
    assert_eq!(signed_records(&agent), before);
}
