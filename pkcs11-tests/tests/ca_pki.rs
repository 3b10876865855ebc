//! The rest of a private Sigstore's PKI (issue 21, part 3) on a real SoftHSM2 token
//! behind a real agent: `waxseal ca tsa` (a timestamping certificate that OpenSSL's own
//! TSA signs replies with, `openssl ts -verify` and `openssl verify -purpose
//! timestampsign` accept, and waxseal's TSA checks accept in a bundle) and `waxseal ca
//! trusted-root` (a TrustedRoot v0.2 file that `waxseal sign --trusted-root` and
//! @sigstore/verify read) and `waxseal ca crl` (purpose x509-crl: a CRL revoking an
//! intermediate that `openssl crl -verify` accepts and that makes `openssl verify
//! -crl_check` refuse the intermediate).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pkcs11_tests::{
    audit_records, output_text as text, pkcs11_device, read_json, require, run_ok, sigstore_js,
    write_pubkey, Agent, LocalService, MockRekor, SoftHsm,
};
use sha2::{Digest, Sha256};
use waxseal::ca::{self, KeyMaterial, RemoteSigner};
use waxseal_agent::proto::KeyAlg;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

const ROOT: &str = "hsm/root";
const INTERMEDIATE: &str = "hsm/intermediate";
const TSA: &str = "hsm/tsa";
const SIGNER: &str = "hsm/release";

/// A token with a root key (CA certificates and leaves: it issues the TSA's), a Fulcio
/// intermediate key (leaves only), a TSA key and a release-signing key.
fn pki_agent() -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token("pki", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let config = format!(
        "{}\n[[key]]\nname = \"{ROOT}\"\npurposes = [\"x509-tbs\", \"x509-crl\"]\nx509_issue = [\"ca\", \"leaf\"]\n\n[[key]]\nname = \"{INTERMEDIATE}\"\npurposes = [\"x509-tbs\"]\nx509_issue = [\"leaf\"]\n\n[[key]]\nname = \"{TSA}\"\npurposes = [\"digest\"]\n\n[[key]]\nname = \"{SIGNER}\"\npurposes = [\"blob\", \"digest\"]\n",
        pkcs11_device("hsm", "pki", &pin)
    );
    let agent = Agent::builder().softhsm(&hsm).config(&config).start();
    let mut client = agent.client();
    client.generate_key(ROOT, KeyAlg::P384).unwrap();
    client.generate_key(INTERMEDIATE, KeyAlg::P256).unwrap();
    client.generate_key(TSA, KeyAlg::P256).unwrap();
    client.generate_key(SIGNER, KeyAlg::P256).unwrap();
    (hsm, agent)
}

fn cli_ok(agent: &Agent, args: &[&str]) -> String {
    let out = agent.cli(args);
    assert!(
        out.status.success(),
        "waxseal {args:?} failed: {}\nagent log:\n{}",
        text(&out),
        agent.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_err(agent: &Agent, args: &[&str]) -> String {
    let out = agent.cli(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "waxseal {args:?} should fail: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// root.pem and chain.pem (Fulcio intermediate, then root) in `dir`.
fn make_chain(agent: &Agent, dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("root.pem");
    let chain = dir.join("chain.pem");
    cli_ok(
        agent,
        &[
            "ca",
            "root",
            "--key",
            ROOT,
            "--cn",
            "pki root",
            "--org",
            "example",
            "--out",
            s(&root),
        ],
    );
    cli_ok(
        agent,
        &[
            "ca",
            "intermediate",
            "--key",
            INTERMEDIATE,
            "--root-key",
            ROOT,
            "--root-cert",
            s(&root),
            "--cn",
            "pki intermediate",
            "--org",
            "example",
            "--out",
            s(&chain),
        ],
    );
    (root, chain)
}

fn certs(path: &Path) -> Vec<Vec<u8>> {
    ca::pem_certificates(&std::fs::read(path).unwrap(), 16).unwrap()
}

fn openssl(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(require("openssl"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// Every extension's (OID, critical) of a certificate.
fn extensions(cert: &X509Certificate<'_>) -> Vec<(String, bool)> {
    cert.extensions()
        .iter()
        .map(|e| (e.oid.to_id_string(), e.critical))
        .collect()
}

/// Checks the TSA profile of `der`, issued by `issuer`.
fn assert_tsa_profile(der: &[u8], issuer: &[u8]) {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    let (_, issuer) = X509Certificate::from_der(issuer).unwrap();
    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(
        bc.critical && !bc.value.ca,
        "basicConstraints CA:FALSE, critical"
    );
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature());
    assert_eq!(ku.value.flags.count_ones(), 1, "{}", ku.value);
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.critical, "extendedKeyUsage must be critical");
    assert!(eku.value.time_stamping);
    assert!(
        !(eku.value.any
            || eku.value.code_signing
            || eku.value.server_auth
            || eku.value.client_auth
            || eku.value.email_protection
            || eku.value.ocsp_signing)
            && eku.value.other.is_empty(),
        "only timeStamping"
    );
    let ski = |c: &X509Certificate<'_>| {
        c.extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
    };
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    assert!(ski(&cert).is_some(), "subject key identifier");
    assert_eq!(
        aki,
        ski(&issuer),
        "authority key identifier = the issuer's SKID"
    );
    assert_eq!(cert.issuer().as_raw(), issuer.subject().as_raw());
    let exts: Vec<String> = extensions(&cert).into_iter().map(|(o, _)| o).collect();
    assert_eq!(
        exts.len(),
        5,
        "BC, KU, EKU, SKID, AKI and nothing else: {exts:?}"
    );
}

/// `ca tsa` for an agent key under the root: the profile, `openssl verify -purpose
/// timestampsign`, the audit record naming the EKU; under the Fulcio intermediate
/// (EKU codeSigning) it is refused before anything is signed, since Go's x509 (which
/// sigstore/timestamp-authority verifies its chain with) would refuse that chain.
#[test]
fn tsa_certificate_for_an_agent_key_follows_the_timestamp_authority_profile() {
    let (_hsm, agent) = pki_agent();
    let tmp = tempfile::tempdir().unwrap();
    let (root, chain) = make_chain(&agent, tmp.path());
    let out = tmp.path().join("tsa-chain.pem");
    let said = cli_ok(
        &agent,
        &[
            "ca",
            "tsa",
            "--key",
            TSA,
            "--issuer-key",
            ROOT,
            "--issuer-chain",
            s(&root),
            "--cn",
            "pki tsa",
            "--org",
            "example",
            "--days",
            "30",
            "--out",
            s(&out),
        ],
    );
    assert!(said.contains("timestamping"), "{said}");
    let got = certs(&out);
    assert_eq!(got.len(), 2, "TSA certificate, then the root");
    assert_eq!(got[1], certs(&root)[0]);
    assert_tsa_profile(&got[0], &got[1]);
    // The certified key is the agent's TSA key.
    let (_, cert) = X509Certificate::from_der(&got[0]).unwrap();
    let spki = agent.client().public_key(TSA).unwrap().spki_der.0;
    assert_eq!(cert.public_key().raw, spki.as_slice());
    let days =
        (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86400;
    assert_eq!(days, 30);

    std::fs::write(tmp.path().join("tsa.pem"), ca::cert_pem(&got[0])).unwrap();
    let v = openssl(
        tmp.path(),
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            "timestampsign",
            "-CAfile",
            "root.pem",
            "tsa.pem",
        ],
    );
    assert!(text(&v).contains("tsa.pem: OK"), "{}", text(&v));
    // The same certificate is not one for code signing: OpenSSL reads the EKU.
    let v = openssl(
        tmp.path(),
        &[
            "verify", "-purpose", "codesign", "-CAfile", "root.pem", "tsa.pem",
        ],
    );
    assert!(!v.status.success(), "a TSA certificate passed as codesign");

    // The audit log names what was certified, EKU included.
    let records = audit_records(&agent.state_dir);
    let signed: Vec<_> = records
        .iter()
        .filter(|r| {
            r["event"] == "signed"
                && r["certificate"]["subject"]
                    .as_str()
                    .is_some_and(|s| s.contains("pki tsa"))
        })
        .collect();
    assert_eq!(signed.len(), 1, "{records:#?}");
    assert_eq!(signed[0]["key"], ROOT);
    assert_eq!(signed[0]["purpose"], "x509-tbs");
    assert_eq!(
        signed[0]["certificate"]["eku"],
        serde_json::json!(["timeStamping"])
    );
    assert_eq!(signed[0]["certificate"]["ca"], "false");

    // Under the Fulcio intermediate (EKU codeSigning only): refused, nothing signed,
    // nothing written.
    let tbs_records = || {
        audit_records(&agent.state_dir)
            .iter()
            .filter(|r| r["purpose"] == "x509-tbs")
            .count()
    };
    let before = tbs_records();
    let refused = tmp.path().join("refused.pem");
    let e = cli_err(
        &agent,
        &[
            "ca",
            "tsa",
            "--key",
            TSA,
            "--issuer-key",
            INTERMEDIATE,
            "--issuer-chain",
            s(&chain),
            "--cn",
            "pki tsa",
            "--org",
            "example",
            "--out",
            s(&refused),
        ],
    );
    assert!(
        e.contains("timeStamping") && e.contains("pki intermediate"),
        "{e}"
    );
    assert!(!refused.exists());
    assert_eq!(tbs_records(), before, "nothing was asked of the agent");

    // The issuer key must be the chain's first certificate's.
    let e = cli_err(
        &agent,
        &[
            "ca",
            "tsa",
            "--key",
            TSA,
            "--issuer-key",
            INTERMEDIATE,
            "--issuer-chain",
            s(&root),
            "--cn",
            "x",
            "--org",
            "y",
            "--out",
            s(&refused),
        ],
    );
    assert!(e.contains("public key differs"), "{e}");
    // An existing output file is never replaced.
    let e = cli_err(
        &agent,
        &[
            "ca",
            "tsa",
            "--key",
            TSA,
            "--issuer-key",
            ROOT,
            "--issuer-chain",
            s(&root),
            "--cn",
            "x",
            "--org",
            "y",
            "--out",
            s(&out),
        ],
    );
    assert!(e.contains("exists already"), "{e}");
    assert_eq!(certs(&out), got);
    // A chain whose certificates do not link is refused.
    let broken = tmp.path().join("broken.pem");
    let c = certs(&chain);
    std::fs::write(
        &broken,
        format!("{}{}", ca::cert_pem(&c[1]), ca::cert_pem(&c[0])),
    )
    .unwrap();
    let e = cli_err(
        &agent,
        &[
            "ca",
            "tsa",
            "--key",
            TSA,
            "--issuer-key",
            ROOT,
            "--issuer-chain",
            s(&broken),
            "--cn",
            "x",
            "--org",
            "y",
            "--out",
            s(&refused),
        ],
    );
    assert!(e.contains("not a valid chain"), "{e}");
    assert!(!refused.exists());
}

/// A TSA whose key is a file (OpenSSL's `openssl ts -reply` loads its signer key only
/// from a file), certified by `ca tsa --public-key` under the agent's root: the
/// directory holding tsa.key, tsa.pem, chain.pem (TSA, root), root.pem and tsa.cnf.
fn file_key_tsa(agent: &Agent, dir: &Path, root: &Path) -> PathBuf {
    let tsa_dir = dir.join("tsa");
    std::fs::create_dir(&tsa_dir).unwrap();
    let d = |n: &str| tsa_dir.join(n);
    run_ok(
        Command::new(require("openssl"))
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(d("tsa.key")),
    );
    run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(d("tsa.key"))
            .arg("-out")
            .arg(d("tsa.pub.pem")),
    );
    cli_ok(
        agent,
        &[
            "ca",
            "tsa",
            "--public-key",
            s(&d("tsa.pub.pem")),
            "--issuer-key",
            ROOT,
            "--issuer-chain",
            s(root),
            "--cn",
            "openssl tsa",
            "--org",
            "example",
            "--out",
            s(&d("chain.pem")),
        ],
    );
    let got = certs(&d("chain.pem"));
    assert_tsa_profile(&got[0], &got[1]);
    std::fs::write(d("tsa.pem"), ca::cert_pem(&got[0])).unwrap();
    std::fs::copy(root, d("root.pem")).unwrap();
    std::fs::write(d("serial"), "01\n").unwrap();
    std::fs::write(
        d("tsa.cnf"),
        format!(
            "[ tsa ]\ndefault_tsa = t\n[ t ]\ndir = {}\nserial = $dir/serial\ncrypto_device = builtin\nsigner_cert = $dir/tsa.pem\ncerts = $dir/root.pem\nsigner_key = $dir/tsa.key\nsigner_digest = sha256\ndefault_policy = 1.3.6.1.4.1.99999.1\ndigests = sha256, sha384, sha512\naccuracy = secs:1\nordering = no\ntsa_name = no\ness_cert_id_chain = no\ness_cert_id_alg = sha256\n",
            tsa_dir.display()
        ),
    )
    .unwrap();

    tsa_dir
}

/// OpenSSL's TSA over `tsa_dir` (see [`file_key_tsa`]) behind HTTP.
fn serve_tsa(tsa_dir: &Path) -> LocalService {
    let python = require("python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/openssl_tsa.py");
    LocalService::start(s(&python), &[s(&script), s(tsa_dir), "existing"])
}

/// A TSA certificate for a key in a file (`--public-key`), issued by the agent's root:
/// OpenSSL's own TSA (`openssl ts -reply`, which loads its signer key only from a
/// file, not through an engine) answers with it, `openssl ts -verify` accepts the
/// reply against the root, and `waxseal sign --tsa-url` against that TSA served over
/// HTTP makes a bundle `waxseal verify` accepts with the root as the TSA trust anchor.
#[test]
fn openssl_ts_signs_with_the_issued_tsa_certificate() {
    let (_hsm, agent) = pki_agent();
    let tmp = tempfile::tempdir().unwrap();
    let (root, _chain) = make_chain(&agent, tmp.path());
    let tsa_dir = file_key_tsa(&agent, tmp.path(), &root);
    let d = |n: &str| tsa_dir.join(n);
    // OpenSSL's TSA, directly: query, reply, verify against the root.
    std::fs::write(d("data"), b"timestamp me").unwrap();
    let ok = |args: &[&str]| {
        let o = openssl(&tsa_dir, args);
        assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
        text(&o)
    };
    ok(&[
        "ts", "-query", "-data", "data", "-sha256", "-cert", "-out", "q.tsq",
    ]);
    ok(&[
        "ts",
        "-reply",
        "-config",
        "tsa.cnf",
        "-queryfile",
        "q.tsq",
        "-out",
        "r.tsr",
    ]);
    let said = ok(&[
        "ts",
        "-verify",
        "-in",
        "r.tsr",
        "-data",
        "data",
        "-CAfile",
        "root.pem",
        "-untrusted",
        "chain.pem",
    ]);
    assert!(said.contains("Verification: OK"), "{said}");
    std::fs::write(d("other"), b"other bytes").unwrap();
    let o = openssl(
        &tsa_dir,
        &[
            "ts",
            "-verify",
            "-in",
            "r.tsr",
            "-data",
            "other",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "chain.pem",
        ],
    );
    assert!(!text(&o).contains("Verification: OK"), "{}", text(&o));

    // Behind HTTP, for `waxseal sign --tsa-url`; waxseal's TSA checks (a critical
    // timeStamping EKU alone) pass and the token chains to the root.
    let python = require("python3");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/openssl_tsa.py");
    let service = LocalService::start(s(&python), &[s(&script), s(&tsa_dir), "existing"]);
    let file = tmp.path().join("release.tgz");
    std::fs::write(&file, b"release bytes\n".repeat(50)).unwrap();
    let out = agent.cli(&["sign", s(&file), "--key", SIGNER, "--tsa-url", &service.url]);
    assert!(out.status.success(), "{}", text(&out));
    let out = agent.cli(&[
        "verify",
        s(&file),
        "--key",
        SIGNER,
        "--tsa-cert-chain",
        s(&root),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("RFC 3161 timestamp: 1 checked"),
        "{}",
        text(&out)
    );
    // Another root does not anchor it.
    let other = LocalService::openssl_tsa();
    let out = agent.cli(&[
        "verify",
        s(&file),
        "--key",
        SIGNER,
        "--tsa-cert-chain",
        s(&other.file("root.pem")),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

/// `node js/verify-root.js`: @sigstore/verify's verdict on a bundle against a trusted
/// root file, with these tlog and timestamp thresholds (no SCT asked for).
fn sigstore_js_verify_root(
    bundle: &Path,
    artifact: &Path,
    root: &Path,
    tlogs: u32,
    stamps: u32,
    key: Option<&Path>,
) -> Result<(), String> {
    let js = sigstore_js();
    let mut cmd = Command::new("node");
    cmd.arg(js.join("verify-root.js"))
        .arg(bundle)
        .arg(artifact)
        .arg(root)
        .arg(tlogs.to_string())
        .arg(stamps.to_string());
    if let Some(k) = key {
        cmd.arg(k);
    }
    let out = cmd.output().unwrap();
    let said = text(&out);
    if out.status.success() && said.trim() == "OK" {
        Ok(())
    } else {
        Err(said)
    }
}

/// A Fulcio-profile leaf (code signing, an e-mail SAN, 10 minutes) for `key`, issued
/// by the agent's intermediate key (purpose x509-tbs, x509_issue = ["leaf"]).
fn leaf_for(agent: &Agent, key: &str, intermediate_der: &[u8]) -> Vec<u8> {
    let spki = agent.client().public_key(key).unwrap().spki_der.0;
    let leaf = KeyMaterial::from_spki(&spki).unwrap();
    let issuer_spki = agent.client().public_key(INTERMEDIATE).unwrap().spki_der.0;
    let cell = std::cell::RefCell::new(agent.client());
    let signer = RemoteSigner::new(
        KeyMaterial::from_spki(&issuer_spki).unwrap(),
        |tbs: &[u8]| Ok(cell.borrow_mut().sign_tbs(INTERMEDIATE, tbs)?.signature.0),
    );
    let issuer = ca::issuer_from_cert(intermediate_der, signer).unwrap();
    ca::leaf_params("dev@example.org", &leaf)
        .unwrap()
        .signed_by(&leaf, &issuer)
        .map_err(|e| issuer.key().explain(e))
        .unwrap()
        .der()
        .to_vec()
}

/// `ca trusted-root` names the ceremony's chain, the Rekor log's key and the TSA's
/// chain; `waxseal sign --trusted-root` checks the Rekor answer and the timestamp
/// with it, and @sigstore/verify, reading the very file, accepts a key bundle (one tlog
/// entry, one timestamp) and a bundle whose leaf certificate was issued under the
/// ceremony's intermediate (one timestamp); a trusted root without the CA refuses the
/// latter.
#[test]
fn trusted_root_file_lets_sigstore_js_verify_bundles_of_the_private_deployment() {
    let (_hsm, agent) = pki_agent();
    let tmp = tempfile::tempdir().unwrap();
    let (root, chain) = make_chain(&agent, tmp.path());
    let tsa_dir = file_key_tsa(&agent, tmp.path(), &root);
    let tsa = serve_tsa(&tsa_dir);
    let rekor = MockRekor::start();
    let tsa_chain = tsa_dir.join("chain.pem");
    let tr = tmp.path().join("trusted_root.json");
    let base = [
        "ca",
        "trusted-root",
        "--rekor-url",
        &rekor.url,
        "--rekor-key",
        s(&rekor.public_key),
        "--tsa-chain",
        s(&tsa_chain),
        "--tsa-url",
        &tsa.url,
        "--logs-valid-from",
        "2020-01-01T00:00:00Z",
    ];
    // Intermediate rotation: a second intermediate under the same root, both valid.
    let chain2 = tmp.path().join("chain2.pem");
    cli_ok(
        &agent,
        &[
            "ca",
            "intermediate",
            "--key",
            INTERMEDIATE,
            "--root-key",
            ROOT,
            "--root-cert",
            s(&root),
            "--cn",
            "pki intermediate 2",
            "--org",
            "example",
            "--out",
            s(&chain2),
        ],
    );
    let mut args = base.to_vec();
    args.extend([
        "--ca-chain",
        s(&chain2),
        "--ca-chain",
        s(&chain),
        "--ca-url",
        "https://fulcio.example.com",
        "-o",
        s(&tr),
    ]);
    cli_ok(&agent, &args);
    let v = read_json(&tr);
    assert_eq!(
        v["mediaType"],
        "application/vnd.dev.sigstore.trustedroot.v0.2+json"
    );
    let rekor_spki =
        ca::pem_or_der(&std::fs::read(&rekor.public_key).unwrap(), "PUBLIC KEY").unwrap();
    assert_eq!(
        v["tlogs"][0]["logId"]["keyId"],
        B64.encode(Sha256::digest(&rekor_spki))
    );
    assert_eq!(
        v["tlogs"][0]["publicKey"]["rawBytes"],
        B64.encode(&rekor_spki)
    );
    assert_eq!(
        v["tlogs"][0]["publicKey"]["validFor"]["start"],
        "2020-01-01T00:00:00Z"
    );
    assert_eq!(v["tlogs"][0]["baseUrl"], rekor.url.as_str());
    let ca_chain = certs(&chain);
    assert_eq!(v["certificateAuthorities"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["certificateAuthorities"][0]["subject"]["commonName"],
        "pki intermediate 2"
    );
    let got: Vec<Vec<u8>> = v["certificateAuthorities"][1]["certChain"]["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| B64.decode(c["rawBytes"].as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(got, ca_chain);
    assert_eq!(
        v["certificateAuthorities"][1]["subject"]["commonName"],
        "pki intermediate"
    );
    let (_, inter) = X509Certificate::from_der(&ca_chain[0]).unwrap();
    let start = &v["certificateAuthorities"][1]["validFor"]["start"];
    let t = inter.validity().not_before.to_datetime();
    let want = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    assert_eq!(start.as_str(), Some(want.as_str()));
    assert_eq!(
        v["timestampAuthorities"][0]["certChain"]["certificates"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // An existing file is never replaced.
    let e = cli_err(&agent, &args);
    assert!(e.contains("exists already"), "{e}");

    // A key bundle through the Rekor stand-in and OpenSSL's TSA, checked by waxseal
    // against the file as it signs, then by @sigstore/verify.
    let file = tmp.path().join("release.tgz");
    std::fs::write(&file, b"release\n".repeat(64)).unwrap();
    let out = agent.cli(&[
        "sign",
        s(&file),
        "--key",
        SIGNER,
        "--rekor-url",
        &rekor.url,
        "--tsa-url",
        &tsa.url,
        "--trusted-root",
        s(&tr),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let bundle = PathBuf::from(format!("{}.sigstore.json", s(&file)));
    let pem = write_pubkey(&agent, SIGNER, tmp.path());
    sigstore_js_verify_root(&bundle, &file, &tr, 1, 1, Some(&pem))
        .unwrap_or_else(|e| panic!("@sigstore/verify refused the key bundle: {e}"));

    // A certificate bundle: the signer's leaf issued under the ceremony's intermediate,
    // the signature timestamped by the TSA.
    let leaf = leaf_for(&agent, SIGNER, &ca_chain[0]);
    let file2 = tmp.path().join("release2.tgz");
    std::fs::write(&file2, b"release two\n".repeat(64)).unwrap();
    let out = agent.cli(&["sign", s(&file2), "--key", SIGNER, "--tsa-url", &tsa.url]);
    assert!(out.status.success(), "{}", text(&out));
    let bundle2 = PathBuf::from(format!("{}.sigstore.json", s(&file2)));
    let mut b = read_json(&bundle2);
    let vm = b["verificationMaterial"].as_object_mut().unwrap();
    vm.remove("publicKey");
    vm.insert(
        "certificate".into(),
        serde_json::json!({ "rawBytes": B64.encode(&leaf) }),
    );
    let cert_bundle = tmp.path().join("cert.sigstore.json");
    std::fs::write(&cert_bundle, b.to_string()).unwrap();
    sigstore_js_verify_root(&cert_bundle, &file2, &tr, 0, 1, None)
        .unwrap_or_else(|e| panic!("@sigstore/verify refused the certificate bundle: {e}"));
    // The same bundle over other bytes is refused.
    assert!(sigstore_js_verify_root(&cert_bundle, &file, &tr, 0, 1, None).is_err());

    // A trusted root without the CA does not accept the certificate bundle.
    let no_ca = tmp.path().join("no-ca.json");
    let mut args = base.to_vec();
    args.extend(["-o", s(&no_ca)]);
    cli_ok(&agent, &args);
    let e = sigstore_js_verify_root(&cert_bundle, &file2, &no_ca, 0, 1, None)
        .expect_err("verified without the CA");
    assert!(e.contains("FAILED"), "{e}");

    // A TSA chain whose first certificate is not a timestamping one is refused.
    let e = cli_err(
        &agent,
        &[
            "ca",
            "trusted-root",
            "--tsa-chain",
            s(&chain),
            "-o",
            s(&tmp.path().join("bad.json")),
        ],
    );
    assert!(e.contains("not a timestamping certificate"), "{e}");
    assert!(!tmp.path().join("bad.json").exists());
}

/// `ca crl` through the agent (purpose x509-crl): an empty CRL leaves the intermediate
/// valid under `openssl verify -crl_check`; one revoking it (serial read from its chain
/// file) verifies with `openssl crl -verify` and makes OpenSSL refuse the intermediate
/// as revoked; the audit record names the issuer, the serial and the CRL number; a key
/// whose policy lacks x509-crl is refused.
#[test]
fn a_crl_signed_by_the_root_revokes_the_intermediate_for_openssl() {
    let (_hsm, agent) = pki_agent();
    let tmp = tempfile::tempdir().unwrap();
    let (root, chain) = make_chain(&agent, tmp.path());
    let dir = tmp.path();
    let inter = certs(&chain).remove(0);
    std::fs::write(dir.join("intermediate.pem"), ca::cert_pem(&inter)).unwrap();
    let (_, inter_cert) = X509Certificate::from_der(&inter).unwrap();
    let serial_hex = hex::encode(inter_cert.tbs_certificate.raw_serial());

    let empty = dir.join("empty.pem");
    cli_ok(
        &agent,
        &[
            "ca",
            "crl",
            "--key",
            ROOT,
            "--issuer-cert",
            s(&root),
            "--crl-number",
            "1",
            "--out",
            s(&empty),
        ],
    );
    let o = openssl(
        dir,
        &[
            "crl",
            "-in",
            "empty.pem",
            "-CAfile",
            "root.pem",
            "-noout",
            "-verify",
        ],
    );
    assert!(
        o.status.success() && text(&o).contains("verify OK"),
        "{}",
        text(&o)
    );
    let o = openssl(
        dir,
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "root.pem",
            "-CRLfile",
            "empty.pem",
            "intermediate.pem",
        ],
    );
    assert!(text(&o).contains("intermediate.pem: OK"), "{}", text(&o));

    let crl = dir.join("crl.pem");
    let said = cli_ok(
        &agent,
        &[
            "ca",
            "crl",
            "--key",
            ROOT,
            "--issuer-cert",
            s(&root),
            "--revoke",
            s(&chain),
            "--reason",
            "keyCompromise",
            "--crl-number",
            "2",
            "--days",
            "7",
            "--out",
            s(&crl),
        ],
    );
    assert!(said.contains("CRL written"), "{said}");
    let o = openssl(
        dir,
        &[
            "crl", "-in", "crl.pem", "-CAfile", "root.pem", "-noout", "-verify",
        ],
    );
    assert!(
        o.status.success() && text(&o).contains("verify OK"),
        "{}",
        text(&o)
    );
    let o = openssl(dir, &["crl", "-in", "crl.pem", "-noout", "-text"]);
    let shown = text(&o).to_uppercase();
    assert!(shown.contains(&serial_hex.to_uppercase()), "{shown}");
    assert!(shown.contains("KEY COMPROMISE"), "{shown}");
    assert!(shown.contains("X509V3 CRL NUMBER"), "{shown}");
    let o = openssl(
        dir,
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "root.pem",
            "-CRLfile",
            "crl.pem",
            "intermediate.pem",
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("certificate revoked"), "{}", text(&o));
    // A CRL changed by one byte (its signature) no longer verifies.
    let mut der = ca::pem_or_der(&std::fs::read(&crl).unwrap(), "X509 CRL").unwrap();
    let last = der.len() - 1;
    der[last] ^= 1;
    std::fs::write(dir.join("bad.pem"), ca::pem("X509 CRL", &der)).unwrap();
    let o = openssl(
        dir,
        &[
            "crl", "-in", "bad.pem", "-CAfile", "root.pem", "-noout", "-verify",
        ],
    );
    assert!(!text(&o).contains("verify OK"), "{}", text(&o));

    let records = audit_records(&agent.state_dir);
    let signed: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "signed" && r["purpose"] == "x509-crl")
        .collect();
    assert_eq!(signed.len(), 2, "{records:#?}");
    assert_eq!(signed[1]["crl"]["revoked"], serde_json::json!([serial_hex]));
    assert_eq!(signed[1]["crl"]["crl_number"], "2");
    assert_eq!(signed[1]["crl"]["issuer"], "O=example, CN=pki root");
    assert_eq!(signed[0]["crl"]["revoked"], serde_json::json!([]));

    // The intermediate's key may not sign CRLs (its policy has no x509-crl).
    let e = cli_err(
        &agent,
        &[
            "ca",
            "crl",
            "--key",
            INTERMEDIATE,
            "--issuer-cert",
            s(&chain),
            "--out",
            s(&dir.join("no.pem")),
        ],
    );
    assert!(e.contains("x509-crl"), "{e}");
    assert!(!dir.join("no.pem").exists());
    // A certificate the CA did not issue is not put on its CRL.
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-keyout",
                "other.key",
                "-out",
                "other.pem",
                "-days",
                "1",
            ])
            .args(["-subj", "/CN=pki root"]),
    );
    let e = cli_err(
        &agent,
        &[
            "ca",
            "crl",
            "--key",
            ROOT,
            "--issuer-cert",
            s(&root),
            "--revoke",
            s(&dir.join("other.pem")),
            "--out",
            s(&dir.join("no.pem")),
        ],
    );
    assert!(e.contains("was not issued by"), "{e}");
    assert!(!dir.join("no.pem").exists());
    // An existing CRL file is never replaced.
    let e = cli_err(
        &agent,
        &[
            "ca",
            "crl",
            "--key",
            ROOT,
            "--issuer-cert",
            s(&root),
            "--out",
            s(&crl),
        ],
    );
    assert!(e.contains("exists already"), "{e}");
}
