//! `waxseal sign --signing-config FILE` (issue 19, part 3): the Rekor logs and TSAs
//! chosen from a Sigstore SigningConfig v0.2, against the services of
//! `sigstore_tsa.rs` (@sigstore/mock's TSA, OpenSSL's TSA, the Rekor v2 stand-in), the
//! bundles checked by @sigstore/verify, and the refusals made before anything is
//! signed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use pkcs11_tests::{agent_with_keys, output_text as text, read_json, write_pubkey};
use pkcs11_tests::{audit_records, sigstore_js_verify_with, Agent, LocalService};
use serde_json::{json, Value};

const MEDIA_TYPE: &str = "application/vnd.dev.sigstore.signingconfig.v0.2+json";

/// A `Service`; `end` None is open-ended.
fn service(url: &str, version: u32, start: &str, end: Option<&str>, operator: &str) -> Value {
    let mut valid = json!({ "start": start });
    if let Some(end) = end {
        valid["end"] = json!(end);
    }
    json!({ "url": url, "majorApiVersion": version, "validFor": valid, "operator": operator })
}

fn write_config(dir: &Path, name: &str, config: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(config).unwrap()).unwrap();
    p
}

fn signed_records(agent: &Agent) -> usize {
    audit_records(&agent.state_dir)
        .iter()
        .filter(|r| r["event"] == "signed")
        .count()
}

fn stamps(bundle: &Value) -> Vec<Value> {
    bundle["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// `bundle` with only its timestamp `i`.
fn with_only_stamp(bundle: &Value, i: usize) -> Value {
    let mut b = bundle.clone();
    b["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"] =
        json!([stamps(bundle)[i].clone()]);
    b
}

#[test]
fn an_expired_v1_log_is_passed_over_for_a_valid_v2_log_and_the_bundle_verifies() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/ec", "p256")]);
    let rekor = LocalService::rekor_v2("ok");
    let rekor_key = rekor.file("rekor.pub.pem");
    let tsa = LocalService::mock_tsa("ok");
    let chain = tsa.file("chain.pem");
    // Nothing listens on the expired log's port: choosing it would fail the signing.
    let dead = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let dead_url = format!("http://127.0.0.1:{}", dead.local_addr().unwrap().port());
    drop(dead);
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        tmp.path(),
        "signing_config.json",
        &json!({
            "mediaType": MEDIA_TYPE,
            "rekorTlogUrls": [
                service(&dead_url, 1, "2020-01-01T00:00:00Z", Some("2021-01-01T00:00:00Z"), "old.example"),
                service(&rekor.url, 2, "2024-01-01T00:00:00Z", None, "log.example"),
            ],
            "rekorTlogConfig": { "selector": "ANY" },
            "tsaUrls": [ service(&tsa.url, 1, "2024-01-01T00:00:00Z", None, "tsa.example") ],
            "tsaConfig": { "selector": "ANY" },
        }),
    );
    let pem = write_pubkey(&agent, "hsm/ec", tmp.path());
    let file = tmp.path().join("release.tgz");
    std::fs::write(&file, b"release\n".repeat(40)).unwrap();
    let f = file.to_str().unwrap();
    let out = agent.cli(&[
        "sign",
        f,
        "--key",
        "hsm/ec",
        "--signing-config",
        config.to_str().unwrap(),
        "--rekor-public-key",
        rekor_key.to_str().unwrap(),
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("Rekor v2 {}; TSA {}", rekor.url, tsa.url)),
        "{said}"
    );
    assert!(!said.contains(&dead_url), "{said}");
    let bundle = PathBuf::from(format!("{f}.sigstore.json"));
    let b = read_json(&bundle);
    let entries = b["verificationMaterial"]["tlogEntries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{b}");
    assert_eq!(entries[0]["kindVersion"]["version"], "0.0.2");
    assert_eq!(stamps(&b).len(), 1, "{b}");
    sigstore_js_verify_with(
        &bundle,
        &file,
        &pem,
        Some((&rekor_key, &rekor.url)),
        Some(&chain),
    )
    .unwrap_or_else(|e| panic!("@sigstore/verify refused the bundle: {e}"));
    let ours = agent.cli(&[
        "verify",
        f,
        "--key",
        "hsm/ec",
        "--rekor-public-key",
        rekor_key.to_str().unwrap(),
        "--tsa-cert-chain",
        chain.to_str().unwrap(),
    ]);
    assert!(ours.status.success(), "{}", text(&ours));
    assert!(
        text(&ours).contains("transparency log: 1 entry checked"),
        "{}",
        text(&ours)
    );
}

#[test]
fn any_takes_one_tsa_and_all_takes_one_per_operator() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/ec", "p256")]);
    let mock = LocalService::mock_tsa("ok");
    let openssl = LocalService::openssl_tsa();
    let chains = [mock.file("chain.pem"), openssl.file("chain.pem")];
    let tmp = tempfile::tempdir().unwrap();
    let pem = write_pubkey(&agent, "hsm/ec", tmp.path());
    // The mock's service is the newer: it comes first. A second, older service of the
    // mock's operator (OpenSSL's URL) is never taken: one per operator.
    let tsas = json!([
        service(
            &openssl.url,
            1,
            "2023-01-01T00:00:00Z",
            None,
            "openssl.example"
        ),
        service(&mock.url, 1, "2024-06-01T00:00:00Z", None, "mock.example"),
        service(
            &openssl.url,
            1,
            "2022-01-01T00:00:00Z",
            None,
            "mock.example"
        ),
    ]);
    for (selector, expected) in [("ANY", 1usize), ("ALL", 2)] {
        let config = write_config(
            tmp.path(),
            &format!("{selector}.json"),
            &json!({ "mediaType": MEDIA_TYPE, "tsaUrls": tsas, "tsaConfig": { "selector": selector } }),
        );
        let file = tmp.path().join(format!("{selector}.tgz"));
        std::fs::write(&file, format!("{selector}\n").repeat(30)).unwrap();
        let f = file.to_str().unwrap();
        let out = agent.cli(&[
            "sign",
            f,
            "--key",
            "hsm/ec",
            "--signing-config",
            config.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{selector}: {}", text(&out));
        let bundle = PathBuf::from(format!("{f}.sigstore.json"));
        let b = read_json(&bundle);
        assert_eq!(stamps(&b).len(), expected, "{selector}: {b}");
        assert_eq!(
            b["verificationMaterial"]["tlogEntries"],
            json!([]),
            "no log listed, none used"
        );
        // Each timestamp is its TSA's: alone in a bundle, it verifies against a trusted
        // root naming that TSA, and not against the other.
        for (i, chain) in chains.iter().enumerate().take(expected) {
            let one = tmp.path().join(format!("{selector}-{i}.json"));
            std::fs::write(&one, with_only_stamp(&b, i).to_string()).unwrap();
            sigstore_js_verify_with(&one, &file, &pem, None, Some(chain))
                .unwrap_or_else(|e| panic!("{selector}: timestamp {i}: {e}"));
            let other = &chains[1 - i];
            assert!(
                sigstore_js_verify_with(&one, &file, &pem, None, Some(other)).is_err(),
                "{selector}: timestamp {i} verified against the other TSA"
            );
        }
    }
}

#[test]
fn a_config_without_services_signs_key_only_bundles() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/ec", "p256")]);
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(
        tmp.path(),
        "empty.json",
        &json!({
            "mediaType": MEDIA_TYPE,
            "caUrls": [service("https://fulcio.invalid", 1, "2024-01-01T00:00:00Z", None, "x")],
            "rekorTlogUrls": [],
            "tsaUrls": [],
        }),
    );
    let file = tmp.path().join("a.tgz");
    std::fs::write(&file, b"artifact").unwrap();
    let f = file.to_str().unwrap();
    let out = agent.cli(&[
        "sign",
        f,
        "--key",
        "hsm/ec",
        "--signing-config",
        config.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no Rekor log; no TSA"),
        "{}",
        text(&out)
    );
    let b = read_json(&PathBuf::from(format!("{f}.sigstore.json")));
    assert_eq!(b["verificationMaterial"]["tlogEntries"], json!([]));
    assert!(
        b["verificationMaterial"]["timestampVerificationData"].is_null(),
        "{b}"
    );
    let v = agent.cli(&["verify", f, "--key", "hsm/ec"]);
    assert!(v.status.success(), "{}", text(&v));
}

#[test]
fn bad_configs_are_refused_before_anything_is_signed() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/ec", "p256")]);
    let mock = LocalService::mock_tsa("ok");
    let openssl = LocalService::openssl_tsa();
    let rekor = LocalService::rekor_v2("ok");
    let rk = rekor.file("rekor.pub.pem");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a.tgz");
    std::fs::write(&file, b"artifact").unwrap();
    let f = file.to_str().unwrap();
    let since = "2024-01-01T00:00:00Z";
    let two_tsas = json!([
        service(&mock.url, 1, since, None, "mock.example"),
        service(&openssl.url, 1, since, None, "openssl.example"),
    ]);
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed.json", "{\"mediaType\": ".into(), "not a JSON object"),
        (
            "v01.json",
            json!({ "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.1+json" }).to_string(),
            "mediaType is `application/vnd.dev.sigstore.signingconfig.v0.1+json`",
        ),
        (
            "expired.json",
            json!({
                "mediaType": MEDIA_TYPE,
                "tsaUrls": [service(&mock.url, 1, "2020-01-01T00:00:00Z", Some("2021-01-01T00:00:00Z"), "m")],
                "tsaConfig": { "selector": "ANY" },
            })
            .to_string(),
            "tsaUrls: no service is valid now",
        ),
        (
            "selector.json",
            json!({ "mediaType": MEDIA_TYPE, "tsaUrls": two_tsas, "tsaConfig": { "selector": "MOST" } })
                .to_string(),
            "tsaConfig.selector: `MOST` is not a selector",
        ),
        (
            "exact.json",
            json!({
                "mediaType": MEDIA_TYPE, "tsaUrls": two_tsas,
                "tsaConfig": { "selector": "EXACT", "count": 3 },
            })
            .to_string(),
            "tsaConfig.count: EXACT asks for 3 services, and only 2",
        ),
        (
            "start.json",
            json!({
                "mediaType": MEDIA_TYPE,
                "tsaUrls": [service(&mock.url, 1, "last year", None, "m")],
                "tsaConfig": { "selector": "ANY" },
            })
            .to_string(),
            "tsaUrls[0].validFor.start: `last year` is not an RFC 3339 time",
        ),
        (
            "v2-no-tsa.json",
            json!({
                "mediaType": MEDIA_TYPE,
                "rekorTlogUrls": [service(&rekor.url, 2, since, None, "log")],
                "rekorTlogConfig": { "selector": "ANY" },
            })
            .to_string(),
            "chooses the Rekor v2 log",
        ),
    ];
    let before = signed_records(&agent);
    for (name, content, says) in &cases {
        let config = tmp.path().join(name);
        std::fs::write(&config, content).unwrap();
        let c = config.to_str().unwrap();
        let out = agent.cli(&[
            "sign",
            f,
            "--key",
            "hsm/ec",
            "--signing-config",
            c,
            "--rekor-public-key",
            rk.to_str().unwrap(),
        ]);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {said}");
        assert!(said.contains(c), "{name}: names the file: {said}");
        assert!(said.contains(says), "{name}: says {says}: {said}");
        assert_eq!(signed_records(&agent), before, "{name}: nothing was signed");
        assert!(
            !PathBuf::from(format!("{f}.sigstore.json")).exists(),
            "{name}"
        );
    }

    // A chosen log without a key to check it: refused, naming the log.
    let config = write_config(
        tmp.path(),
        "nokey.json",
        &json!({
            "mediaType": MEDIA_TYPE,
            "rekorTlogUrls": [service(&rekor.url, 2, since, None, "log")],
            "rekorTlogConfig": { "selector": "ANY" },
            "tsaUrls": [service(&mock.url, 1, since, None, "m")],
            "tsaConfig": { "selector": "ANY" },
        }),
    );
    let out = agent.cli(&[
        "sign",
        f,
        "--key",
        "hsm/ec",
        "--signing-config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--rekor-public-key"), "{}", text(&out));
    assert!(text(&out).contains(&rekor.url), "{}", text(&out));
    assert_eq!(signed_records(&agent), before);

    // Explicit URLs and a config together: a usage error (clap's exit status 2).
    for extra in [
        ["--tsa-url", mock.url.as_str()],
        ["--rekor-url", rekor.url.as_str()],
    ] {
        let out = agent.cli(&[
            "sign",
            f,
            "--key",
            "hsm/ec",
            "--signing-config",
            config.to_str().unwrap(),
            "--rekor-public-key",
            rk.to_str().unwrap(),
            extra[0],
            extra[1],
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("cannot be used with"), "{}", text(&out));
    }
    assert_eq!(signed_records(&agent), before);
}

/// ALL over two logs gives two entries, EXACT 1 one. The two logs are one stand-in
/// listed under two operators: `--rekor-public-key` is one key for every chosen log.
#[test]
fn all_logs_give_one_entry_each_and_exact_takes_count() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/ec", "p256")]);
    let rekor = LocalService::rekor_v2("ok");
    let rk = rekor.file("rekor.pub.pem");
    let tsa = LocalService::mock_tsa("ok");
    let tmp = tempfile::tempdir().unwrap();
    let since = "2024-01-01T00:00:00Z";
    let logs = json!([
        service(&rekor.url, 2, since, None, "one.example"),
        service(&rekor.url, 2, since, None, "two.example"),
    ]);
    let mut indexes = Vec::new();
    for (config, expected) in [
        (json!({ "selector": "ALL" }), 2usize),
        (json!({ "selector": "EXACT", "count": 1 }), 1),
    ] {
        let name = format!("{expected}.json");
        let path = write_config(
            tmp.path(),
            &name,
            &json!({
                "mediaType": MEDIA_TYPE,
                "rekorTlogUrls": logs, "rekorTlogConfig": config,
                "tsaUrls": [service(&tsa.url, 1, since, None, "tsa.example")],
                "tsaConfig": { "selector": "ANY" },
            }),
        );
        let file = tmp.path().join(format!("{expected}.tgz"));
        std::fs::write(&file, format!("{expected}\n").repeat(20)).unwrap();
        let f = file.to_str().unwrap();
        let out = agent.cli(&[
            "sign",
            f,
            "--key",
            "hsm/ec",
            "--signing-config",
            path.to_str().unwrap(),
            "--rekor-public-key",
            rk.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let b = read_json(&PathBuf::from(format!("{f}.sigstore.json")));
        let entries = b["verificationMaterial"]["tlogEntries"].as_array().unwrap();
        assert_eq!(entries.len(), expected, "{b}");
        assert_eq!(stamps(&b).len(), 1, "{b}");
        indexes.extend(entries.iter().map(|e| e["logIndex"].to_string()));
        let v = agent.cli(&[
            "verify",
            f,
            "--key",
            "hsm/ec",
            "--rekor-public-key",
            rk.to_str().unwrap(),
            "--tsa-cert-chain",
            tsa.file("chain.pem").to_str().unwrap(),
        ]);
        assert!(v.status.success(), "{}", text(&v));
        let checked = if expected == 2 {
            "2 entries checked"
        } else {
            "1 entry checked"
        };
        assert!(text(&v).contains(checked), "{}", text(&v));
    }
    // Three uploads, three distinct entries of the log.
    indexes.sort();
    indexes.dedup();
    assert_eq!(indexes.len(), 3, "{indexes:?}");
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

fn trusted_root(logs: &[(&str, &Path)], tsa_chain: &Path) -> Value {
    json!({
        "mediaType": "application/vnd.dev.sigstore.trustedroot.v0.2+json",
        "tlogs": logs.iter().map(|(url, key)| json!({
            "baseUrl": url,
            "hashAlgorithm": "SHA2_256",
            "publicKey": { "rawBytes": pem_blocks(key)[0] },
        })).collect::<Vec<_>>(),
        "timestampAuthorities": [{
            "certChain": { "certificates": pem_blocks(tsa_chain).iter()
                .map(|c| json!({ "rawBytes": c })).collect::<Vec<_>>() },
        }],
    })
}

#[test]
fn a_trusted_root_supplies_each_logs_key_and_the_tsa_chain() {
    let (_hsm, agent) = agent_with_keys(&[("hsm/ec", "p256")]);
    let logs = [LocalService::rekor_v2("ok"), LocalService::rekor_v2("ok")];
    let keys = [logs[0].file("rekor.pub.pem"), logs[1].file("rekor.pub.pem")];
    let tsa = LocalService::mock_tsa("ok");
    let chain = tsa.file("chain.pem");
    let openssl = LocalService::openssl_tsa();
    let tmp = tempfile::tempdir().unwrap();
    let pem = write_pubkey(&agent, "hsm/ec", tmp.path());
    let since = "2024-01-01T00:00:00Z";
    let config = write_config(
        tmp.path(),
        "config.json",
        &json!({
            "mediaType": MEDIA_TYPE,
            "rekorTlogUrls": [
                service(&logs[0].url, 2, since, None, "one.example"),
                service(&logs[1].url, 2, since, None, "two.example"),
            ],
            "rekorTlogConfig": { "selector": "ALL" },
            "tsaUrls": [service(&tsa.url, 1, since, None, "tsa.example")],
            "tsaConfig": { "selector": "ANY" },
        }),
    );
    let both = [
        (logs[0].url.as_str(), keys[0].as_path()),
        (logs[1].url.as_str(), keys[1].as_path()),
    ];
    let root = write_config(tmp.path(), "root.json", &trusted_root(&both, &chain));
    let file = tmp.path().join("a.tgz");
    std::fs::write(&file, b"artifact\n".repeat(10)).unwrap();
    let f = file.to_str().unwrap();
    let sign = |root: &Path| {
        agent.cli(&[
            "sign",
            f,
            "--key",
            "hsm/ec",
            "--signing-config",
            config.to_str().unwrap(),
            "--trusted-root",
            root.to_str().unwrap(),
        ])
    };
    let out = sign(&root);
    assert!(out.status.success(), "{}", text(&out));
    let bundle = PathBuf::from(format!("{f}.sigstore.json"));
    let b = read_json(&bundle);
    let entries = b["verificationMaterial"]["tlogEntries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{b}");
    // Each entry is its log's: alone in a bundle it verifies with that log's key and
    // not with the other's.
    for i in 0..2 {
        let mut one = b.clone();
        one["verificationMaterial"]["tlogEntries"] = json!([entries[i].clone()]);
        let p = tmp.path().join(format!("entry-{i}.json"));
        std::fs::write(&p, one.to_string()).unwrap();
        sigstore_js_verify_with(
            &p,
            &file,
            &pem,
            Some((&keys[i], &logs[i].url)),
            Some(&chain),
        )
        .unwrap_or_else(|e| panic!("entry {i}: {e}"));
        assert!(
            sigstore_js_verify_with(
                &p,
                &file,
                &pem,
                Some((&keys[1 - i], &logs[1 - i].url)),
                Some(&chain)
            )
            .is_err(),
            "entry {i} verified with the other log's key"
        );
    }
    std::fs::remove_file(&bundle).unwrap();

    // A root that does not name the second log: refused before anything is signed.
    let before = signed_records(&agent);
    let partial = write_config(
        tmp.path(),
        "partial.json",
        &trusted_root(&both[..1], &chain),
    );
    let out = sign(&partial);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(partial.to_str().unwrap()), "{said}");
    assert!(
        said.contains(&format!(
            "tlogs names no log whose baseUrl is {}",
            logs[1].url
        )),
        "{said}"
    );
    assert_eq!(signed_records(&agent), before);

    // A root trusting another TSA: the mock's answer is refused, no bundle written.
    let other = write_config(
        tmp.path(),
        "other-tsa.json",
        &trusted_root(&both, &openssl.file("chain.pem")),
    );
    let out = sign(&other);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("TSA at {}", tsa.url)), "{said}");
    assert!(
        said.contains("not one of the timestampAuthorities"),
        "{said}"
    );
    assert!(!bundle.exists());
}
