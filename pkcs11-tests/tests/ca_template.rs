//! `waxseal ca root`, `ca intermediate` and `ca tsa` (the leaf) `--template` with Fulcio
//! certificate-maker JSON templates, on a real SoftHSM2 token through a real agent:
//! the certificates carry the template's subject, validity and extensions and verify
//! with `openssl verify -x509_strict`; a template the Fulcio profile would reject is
//! refused naming the field, with nothing signed (audit log unchanged) and no file
//! written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pkcs11_tests::{audit_records, pkcs11_device, require, run_ok, Agent, SoftHsm};
use waxseal_agent::proto::KeyAlg;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

const ROOT: &str = "hsm/tpl-root";
const INTERMEDIATE: &str = "hsm/tpl-intermediate";

fn agent() -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token("ca", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let config = format!(
        "{}\n[[key]]\nname = \"{ROOT}\"\npurposes = [\"x509-tbs\"]\nx509_issue = [\"ca\", \"leaf\"]\n\n[[key]]\nname = \"{INTERMEDIATE}\"\npurposes = [\"x509-tbs\", \"digest\"]\n",
        pkcs11_device("hsm", "ca", &pin)
    );
    let agent = Agent::builder().softhsm(&hsm).config(&config).start();
    let mut client = agent.client();
    client.generate_key(ROOT, KeyAlg::P384).unwrap();
    client.generate_key(INTERMEDIATE, KeyAlg::P384).unwrap();
    (hsm, agent)
}

/// Shaped as certificate-maker's root example.
const ROOT_TEMPLATE: &str = r#"{
  "subject": {
    "country": ["US"],
    "organization": ["Sigstore"],
    "organizationalUnit": ["Fulcio Root CA"],
    "commonName": "https://fulcio.example.com"
  },
  "issuer": { "commonName": "https://fulcio.example.com" },
  "certLife": "87600h",
  "keyUsage": ["certSign", "crlSign"],
  "basicConstraints": { "isCA": true, "maxPathLen": 1 }
}"#;

/// Shaped as certificate-maker's intermediate example.
const INTERMEDIATE_TEMPLATE: &str = r#"{
  "subject": {
    "country": ["US"],
    "organization": ["Sigstore"],
    "organizationalUnit": ["Fulcio Intermediate CA"],
    "commonName": "https://fulcio.example.com/intermediate"
  },
  "issuer": { "commonName": "https://fulcio.example.com" },
  "certLife": "43800h",
  "keyUsage": ["certSign", "crlSign", "digitalSignature"],
  "extKeyUsage": ["CodeSigning"],
  "basicConstraints": { "isCA": true, "maxPathLen": 0 }
}"#;

/// Shaped as certificate-maker's leaf example (a timestamping certificate), with only
/// the TimeStamping EKU sigstore/timestamp-authority accepts.
const LEAF_TEMPLATE: &str = r#"{
  "subject": {
    "country": ["US"],
    "organization": ["Sigstore"],
    "organizationalUnit": ["Timestamp Authority"],
    "commonName": "Test TSA"
  },
  "issuer": { "commonName": "https://fulcio.example.com" },
  "certLife": "4380h",
  "keyUsage": ["digitalSignature"],
  "extKeyUsage": ["TimeStamping"]
}"#;

/// A P-256 public key made by OpenSSL, for `ca tsa --public-key`.
fn tsa_public_key(dir: &Path) -> std::path::PathBuf {
    run_ok(Command::new("openssl").current_dir(dir).args([
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "tsa.key",
    ]));
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args(["pkey", "-in", "tsa.key", "-pubout", "-out", "tsa.pub"]),
    );
    dir.join("tsa.pub")
}

fn cli(agent: &Agent, args: &[&str]) -> std::process::Output {
    agent.cli(args)
}

fn ok(agent: &Agent, args: &[&str]) {
    let out = cli(agent, args);
    assert!(
        out.status.success(),
        "waxseal {args:?} failed: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
}

fn pem_certs(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(path).unwrap();
    text.split("-----END CERTIFICATE-----")
        .filter(|b| b.contains("-----BEGIN CERTIFICATE-----"))
        .map(|b| {
            let body = b.split("-----BEGIN CERTIFICATE-----").nth(1).unwrap();
            let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            B64.decode(b64).unwrap()
        })
        .collect()
}

fn subject_parts(cert: &X509Certificate<'_>) -> String {
    cert.subject().to_string()
}

fn check_common(cert: &X509Certificate<'_>, hours: i64, path_len: u32, ku: &[&str]) {
    let v = cert.validity();
    assert_eq!(
        (v.not_after.to_datetime() - v.not_before.to_datetime()).whole_hours(),
        hours,
        "validity is certLife"
    );
    let mut seen_bc = false;
    for e in cert.extensions() {
        match e.parsed_extension() {
            ParsedExtension::BasicConstraints(bc) => {
                seen_bc = true;
                assert!(bc.ca && e.critical);
                assert_eq!(bc.path_len_constraint, Some(path_len));
            }
            ParsedExtension::KeyUsage(k) => {
                assert!(e.critical);
                assert_eq!(k.key_cert_sign(), ku.contains(&"certSign"));
                assert_eq!(k.crl_sign(), ku.contains(&"crlSign"));
                assert_eq!(k.digital_signature(), ku.contains(&"digitalSignature"));
                assert!(!k.key_encipherment() && !k.non_repudiation());
            }
            _ => {}
        }
    }
    assert!(seen_bc);
}

#[test]
fn root_intermediate_and_leaf_from_certificate_maker_templates_match_and_verify() {
    require("openssl");
    let (_hsm, agent) = agent();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("root-template.json"), ROOT_TEMPLATE).unwrap();
    std::fs::write(d.join("intermediate-template.json"), INTERMEDIATE_TEMPLATE).unwrap();
    let root = d.join("root.pem");
    let chain = d.join("chain.pem");
    ok(
        &agent,
        &[
            "ca",
            "root",
            "--key",
            ROOT,
            "--template",
            d.join("root-template.json").to_str().unwrap(),
            "--out",
            root.to_str().unwrap(),
        ],
    );
    ok(
        &agent,
        &[
            "ca",
            "intermediate",
            "--key",
            INTERMEDIATE,
            "--root-key",
            ROOT,
            "--root-cert",
            root.to_str().unwrap(),
            "--template",
            d.join("intermediate-template.json").to_str().unwrap(),
            "--out",
            chain.to_str().unwrap(),
        ],
    );

    let root_der = &pem_certs(&root)[0];
    let (_, rc) = X509Certificate::from_der(root_der).unwrap();
    assert_eq!(
        subject_parts(&rc),
        "C=US, O=Sigstore, OU=Fulcio Root CA, CN=https://fulcio.example.com"
    );
    assert_eq!(rc.issuer().to_string(), rc.subject().to_string());
    check_common(&rc, 87600, 1, &["certSign", "crlSign"]);
    assert!(
        rc.extended_key_usage().unwrap().is_none(),
        "no EKU on the root"
    );

    let ders = pem_certs(&chain);
    assert_eq!(ders.len(), 2);
    assert_eq!(&ders[1], root_der);
    let (_, ic) = X509Certificate::from_der(&ders[0]).unwrap();
    assert_eq!(
        subject_parts(&ic),
        "C=US, O=Sigstore, OU=Fulcio Intermediate CA, CN=https://fulcio.example.com/intermediate"
    );
    assert_eq!(ic.issuer().to_string(), rc.subject().to_string());
    check_common(&ic, 43800, 0, &["certSign", "crlSign", "digitalSignature"]);
    let eku = ic.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.code_signing && !eku.any && !eku.server_auth && eku.other.is_empty());

    // OpenSSL reads the same.
    let text = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&chain),
    );
    assert!(text.contains("Code Signing"), "{text}");
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    std::fs::write(d.join("int.pem"), waxseal::ca::cert_pem(&ders[0])).unwrap();
    let v = run_ok(Command::new("openssl").current_dir(d).args([
        "verify",
        "-x509_strict",
        "-CAfile",
        "root.pem",
        "int.pem",
    ]));
    assert!(v.contains("int.pem: OK"), "{v}");

    // certificate-maker's leaf: a timestamping certificate under the root.
    std::fs::write(d.join("leaf-template.json"), LEAF_TEMPLATE).unwrap();
    let public = tsa_public_key(d);
    let tsa_chain = d.join("tsa-chain.pem");
    ok(
        &agent,
        &[
            "ca",
            "tsa",
            "--public-key",
            public.to_str().unwrap(),
            "--issuer-key",
            ROOT,
            "--issuer-chain",
            root.to_str().unwrap(),
            "--template",
            d.join("leaf-template.json").to_str().unwrap(),
            "--out",
            tsa_chain.to_str().unwrap(),
        ],
    );
    let ders = pem_certs(&tsa_chain);
    let (_, tc) = X509Certificate::from_der(&ders[0]).unwrap();
    assert_eq!(
        subject_parts(&tc),
        "C=US, O=Sigstore, OU=Timestamp Authority, CN=Test TSA"
    );
    let v = tc.validity();
    assert_eq!(
        (v.not_after.to_datetime() - v.not_before.to_datetime()).whole_hours(),
        4380
    );
    let eku = tc.extended_key_usage().unwrap().unwrap();
    assert!(eku.critical && eku.value.time_stamping && !eku.value.code_signing);
    assert!(!tc
        .basic_constraints()
        .unwrap()
        .map(|b| b.value.ca)
        .unwrap_or(false));
    std::fs::write(d.join("tsa.pem"), waxseal::ca::cert_pem(&ders[0])).unwrap();
    let v = run_ok(Command::new("openssl").current_dir(d).args([
        "verify",
        "-x509_strict",
        "-purpose",
        "timestampsign",
        "-CAfile",
        "root.pem",
        "tsa.pem",
    ]));
    assert!(v.contains("tsa.pem: OK"), "{v}");
}

#[test]
fn bad_templates_are_refused_naming_the_field_and_sign_nothing() {
    let (_hsm, agent) = agent();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A good root to issue under.
    std::fs::write(d.join("root-template.json"), ROOT_TEMPLATE).unwrap();
    let root = d.join("root.pem");
    ok(
        &agent,
        &[
            "ca",
            "root",
            "--key",
            ROOT,
            "--template",
            d.join("root-template.json").to_str().unwrap(),
            "--out",
            root.to_str().unwrap(),
        ],
    );
    let before = audit_records(&agent.state_dir).len();

    let root_cases = [
        (
            "unknown field",
            ROOT_TEMPLATE.replace("\"certLife\"", "\"notAfter\": \"2030\", \"certLife\""),
            "notAfter",
        ),
        (
            "bad duration",
            ROOT_TEMPLATE.replace("87600h", "10y"),
            "certLife",
        ),
        (
            "not a CA",
            ROOT_TEMPLATE.replace("\"isCA\": true", "\"isCA\": false"),
            "basicConstraints.isCA",
        ),
        (
            "no certSign",
            ROOT_TEMPLATE.replace("\"certSign\", ", ""),
            "keyUsage",
        ),
        (
            "unknown key usage",
            ROOT_TEMPLATE.replace("\"crlSign\"", "\"keyEncipherment\""),
            "keyUsage",
        ),
        (
            "placeholder",
            ROOT_TEMPLATE.replace("\"Sigstore\"", "\"{{ .Org }}\""),
            "subject.organization",
        ),
        (
            "issuer differs",
            ROOT_TEMPLATE.replace(
                "\"issuer\": { \"commonName\": \"https://fulcio.example.com\" }",
                "\"issuer\": { \"commonName\": \"other\" }",
            ),
            "issuer.commonName",
        ),
    ];
    for (what, text, field) in root_cases {
        assert_ne!(text, ROOT_TEMPLATE, "{what}: the case changes the template");
        let t = d.join("bad.json");
        std::fs::write(&t, &text).unwrap();
        let out_path = d.join("out.pem");
        let out = cli(
            &agent,
            &[
                "ca",
                "root",
                "--key",
                ROOT,
                "--template",
                t.to_str().unwrap(),
                "--out",
                out_path.to_str().unwrap(),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            err.contains(field),
            "{what}: the error names {field}: {err}"
        );
        assert!(!out_path.exists(), "{what}: a certificate was written");
    }
    let int_cases = [
        (
            "contradictory basicConstraints",
            INTERMEDIATE_TEMPLATE.replace("\"maxPathLen\": 0", "\"maxPathLen\": 2"),
            "basicConstraints.maxPathLen",
        ),
        (
            "no CodeSigning",
            INTERMEDIATE_TEMPLATE.replace("[\"CodeSigning\"]", "[\"TimeStamping\"]"),
            "extKeyUsage",
        ),
        (
            "issuer is not the root",
            INTERMEDIATE_TEMPLATE.replace(
                "\"issuer\": { \"commonName\": \"https://fulcio.example.com\" }",
                "\"issuer\": { \"commonName\": \"someone else\" }",
            ),
            "issuer.commonName",
        ),
    ];
    for (what, text, field) in int_cases {
        assert_ne!(
            text, INTERMEDIATE_TEMPLATE,
            "{what}: the case changes the template"
        );
        let t = d.join("bad.json");
        std::fs::write(&t, &text).unwrap();
        let out_path = d.join("chain.pem");
        let out = cli(
            &agent,
            &[
                "ca",
                "intermediate",
                "--key",
                INTERMEDIATE,
                "--root-key",
                ROOT,
                "--root-cert",
                root.to_str().unwrap(),
                "--template",
                t.to_str().unwrap(),
                "--out",
                out_path.to_str().unwrap(),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            err.contains(field),
            "{what}: the error names {field}: {err}"
        );
        assert!(!out_path.exists(), "{what}: a chain was written");
    }
    // certificate-maker's own leaf example also lists CodeSigning, which a
    // timestamping leaf must not carry.
    let leaf = d.join("leaf.json");
    std::fs::write(
        &leaf,
        LEAF_TEMPLATE.replace("[\"TimeStamping\"]", "[\"CodeSigning\", \"TimeStamping\"]"),
    )
    .unwrap();
    let public = tsa_public_key(d);
    let out = cli(
        &agent,
        &[
            "ca",
            "tsa",
            "--public-key",
            public.to_str().unwrap(),
            "--issuer-key",
            ROOT,
            "--issuer-chain",
            root.to_str().unwrap(),
            "--template",
            leaf.to_str().unwrap(),
            "--out",
            d.join("t.pem").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("extKeyUsage"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.join("t.pem").exists());
    // A file over 64 KiB.
    let big = d.join("big.json");
    std::fs::write(&big, " ".repeat(64 * 1024 + 1)).unwrap();
    let out = cli(
        &agent,
        &[
            "ca",
            "root",
            "--key",
            ROOT,
            "--template",
            big.to_str().unwrap(),
            "--out",
            d.join("o.pem").to_str().unwrap(),
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("larger than 65536"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Flags and a template at once are refused, not merged.
    let out = cli(
        &agent,
        &[
            "ca",
            "root",
            "--key",
            ROOT,
            "--cn",
            "x",
            "--template",
            d.join("root-template.json").to_str().unwrap(),
            "--out",
            d.join("o.pem").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--template"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.join("o.pem").exists());

    assert_eq!(
        audit_records(&agent.state_dir).len(),
        before,
        "nothing was signed"
    );

    // A root made with maxPathLen 0 (allowed: certificate-maker's root over a leaf)
    // certifies no intermediate, and the intermediate's template is refused for it.
    let t0 = d.join("root0.json");
    std::fs::write(
        &t0,
        ROOT_TEMPLATE.replace("\"maxPathLen\": 1", "\"maxPathLen\": 0"),
    )
    .unwrap();
    let root0 = d.join("root0.pem");
    ok(
        &agent,
        &[
            "ca",
            "root",
            "--key",
            ROOT,
            "--template",
            t0.to_str().unwrap(),
            "--out",
            root0.to_str().unwrap(),
        ],
    );
    let before = audit_records(&agent.state_dir).len();
    std::fs::write(d.join("int.json"), INTERMEDIATE_TEMPLATE).unwrap();
    let out = cli(
        &agent,
        &[
            "ca",
            "intermediate",
            "--key",
            INTERMEDIATE,
            "--root-key",
            ROOT,
            "--root-cert",
            root0.to_str().unwrap(),
            "--template",
            d.join("int.json").to_str().unwrap(),
            "--out",
            d.join("c0.pem").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pathlen 0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.join("c0.pem").exists());
    assert_eq!(
        audit_records(&agent.state_dir).len(),
        before,
        "nothing was signed"
    );
}
