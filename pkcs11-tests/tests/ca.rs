//! The Fulcio CA ceremony on a real SoftHSM2 token: `waxseal ca root` and `ca
//! intermediate` through a real agent (purpose `x509-tbs`), checked field by field
//! against Fulcio's certificate profile, verified by `openssl verify -x509_strict`, the
//! root stored on the token as `fulcio createca` does (read back with `pkcs11-tool`),
//! and a code-signing leaf issued the way Fulcio's `kmsca` issues it, through
//! `sigstore-kms-waxseal signMessage`; `public_key` answers with the certificate a
//! token holds for a key, whether the agent or `pkcs11-tool` wrote it, and with the
//! CKA_ID and CKA_LABEL of the object that holds it (stored under raw id bytes too).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pkcs11_tests::{bins, pkcs11_device, read_frame, require, run_ok, write_frame, Agent, SoftHsm};
use serde_json::{json, Value};
use sha2::{Digest, Sha384};
use waxseal::ca::{self, KeyMaterial, RemoteSigner};
use waxseal_agent::client::{Client, ClientError};
use waxseal_agent::keyuri::Pkcs11Uri;
use waxseal_agent::proto::{ErrorCode, HashAlg, KeyAlg};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

const ROOT: &str = "hsm/fulcio-root";
const INTERMEDIATE: &str = "hsm/fulcio-intermediate";

/// A token with a root key (x509-tbs, CA certificates only) and an intermediate key
/// (x509-tbs and digest, as Fulcio's kmsca needs), both P-384.
fn ceremony_agent() -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token("ca", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let config = format!(
        "{}\n[[key]]\nname = \"{ROOT}\"\npurposes = [\"x509-tbs\"]\nx509_issue = [\"ca\"]\n\n[[key]]\nname = \"{INTERMEDIATE}\"\npurposes = [\"x509-tbs\", \"digest\"]\n",
        pkcs11_device("hsm", "ca", &pin)
    );
    let agent = Agent::builder().softhsm(&hsm).config(&config).start();
    let mut client = agent.client();
    client.generate_key(ROOT, KeyAlg::P384).unwrap();
    client.generate_key(INTERMEDIATE, KeyAlg::P384).unwrap();
    (hsm, agent)
}

fn cli_ok(agent: &Agent, args: &[&str]) -> String {
    let out = agent.cli(args);
    assert!(
        out.status.success(),
        "waxseal {args:?} failed: {}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli_err(agent: &Agent, args: &[&str]) -> String {
    let out = agent.cli(args);
    assert_eq!(out.status.code(), Some(1), "waxseal {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The DER certificates of a PEM file, in order.
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

fn openssl_verify(dir: &Path, args: &[&str]) -> String {
    require("openssl");
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args(["verify", "-x509_strict"])
            .args(args),
    )
}

/// Writes a DER certificate as PEM.
fn write_pem(path: &Path, der: &[u8]) {
    std::fs::write(path, ca::cert_pem(der)).unwrap();
}

fn ski(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .expect("subject key identifier")
}

fn aki(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

fn attr(cert: &X509Certificate<'_>, oid: &x509_parser::der_parser::Oid<'_>) -> Vec<String> {
    cert.subject()
        .iter_by_oid(oid)
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// Makes root.pem and chain.pem in `dir`.
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
            "sigstore",
            "--org",
            "sigstore.dev",
            "--out",
            root.to_str().unwrap(),
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
            root.to_str().unwrap(),
            "--cn",
            "sigstore-intermediate",
            "--org",
            "sigstore.dev",
            "--out",
            chain.to_str().unwrap(),
        ],
    );
    (root, chain)
}

#[test]
fn root_and_intermediate_follow_fulcios_profile_and_verify_with_openssl() {
    use x509_parser::oid_registry::{OID_X509_COMMON_NAME, OID_X509_ORGANIZATION_NAME};
    let (_hsm, agent) = ceremony_agent();
    let tmp = tempfile::tempdir().unwrap();
    let (root_pem, chain_pem) = make_chain(&agent, tmp.path());

    // The chain file: intermediate first, then the very root certificate.
    let root_der = pem_certs(&root_pem).remove(0);
    let chain = pem_certs(&chain_pem);
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], root_der);
    write_pem(&tmp.path().join("intermediate.pem"), &chain[0]);
    let out = openssl_verify(tmp.path(), &["-CAfile", "root.pem", "intermediate.pem"]);
    assert!(out.contains("intermediate.pem: OK"), "{out}");
    let out = openssl_verify(tmp.path(), &["-CAfile", "root.pem", "root.pem"]);
    assert!(out.contains("root.pem: OK"), "{out}");

    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    let (_, inter) = X509Certificate::from_der(&chain[0]).unwrap();

    // Root: CN and O, self-issued, P-384 with SHA-384.
    assert_eq!(attr(&root, &OID_X509_COMMON_NAME), ["sigstore"]);
    assert_eq!(attr(&root, &OID_X509_ORGANIZATION_NAME), ["sigstore.dev"]);
    assert_eq!(root.subject().as_raw(), root.issuer().as_raw());
    assert_eq!(
        root.signature_algorithm.algorithm.to_id_string(),
        "1.2.840.10045.4.3.3"
    );
    // A random positive 160-bit serial.
    let serial = root.tbs_certificate.raw_serial();
    assert_eq!(serial.len(), 20, "{serial:02x?}");
    assert!(serial[0] & 0x80 == 0 && serial[0] != 0);
    // keyUsage certSign + cRLSign only, critical.
    let ku = root.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.key_cert_sign() && ku.value.crl_sign());
    assert_eq!(ku.value.flags.count_ones(), 2, "{}", ku.value);
    // basicConstraints CA:TRUE pathlen 1, critical.
    let bc = root.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(1));
    assert!(
        root.extended_key_usage().unwrap().is_none(),
        "a root has no EKU"
    );
    let root_ski = ski(&root);
    assert_eq!(root_ski.len(), 20);
    let days =
        (root.validity().not_after.timestamp() - root.validity().not_before.timestamp()) / 86400;
    assert_eq!(days, 3650);

    // Intermediate.
    assert_eq!(
        attr(&inter, &OID_X509_COMMON_NAME),
        ["sigstore-intermediate"]
    );
    assert_eq!(inter.issuer().as_raw(), root.subject().as_raw());
    let ku = inter.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert_eq!(ku.value.flags.count_ones(), 2);
    let eku = inter.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.code_signing);
    assert!(!eku.any && !eku.server_auth && !eku.client_auth && !eku.email_protection);
    assert!(!eku.time_stamping && !eku.ocsp_signing && eku.other.is_empty());
    let bc = inter.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    assert_eq!(ski(&inter).len(), 20);
    assert_ne!(ski(&inter), root_ski);
    assert_eq!(aki(&inter), Some(root_ski));
    assert!(inter.validity().not_before >= root.validity().not_before);
    assert!(inter.validity().not_after <= root.validity().not_after);
    assert_eq!(inter.tbs_certificate.raw_serial().len(), 20);
    // The intermediate certifies the intermediate key of the token.
    let spki = agent.client().public_key(INTERMEDIATE).unwrap().spki_der.0;
    assert_eq!(inter.public_key().raw, spki.as_slice());

    // The agent logged what it certified.
    let log = agent.log();
    assert!(log.contains("x509-tbs signed"), "{log}");
    assert!(log.contains("CN=sigstore-intermediate"), "{log}");

    // A CA file is never replaced.
    let before = std::fs::read(&root_pem).unwrap();
    let err = cli_err(
        &agent,
        &[
            "ca",
            "root",
            "--key",
            ROOT,
            "--cn",
            "x",
            "--org",
            "y",
            "--out",
            root_pem.to_str().unwrap(),
        ],
    );
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(std::fs::read(&root_pem).unwrap(), before);

    // Validity is clipped inside the root's.
    let short_root = tmp.path().join("short-root.pem");
    cli_ok(
        &agent,
        &[
            "ca",
            "root",
            "--key",
            ROOT,
            "--cn",
            "short",
            "--org",
            "o",
            "--days",
            "30",
            "--out",
            short_root.to_str().unwrap(),
        ],
    );
    let clipped = tmp.path().join("clipped.pem");
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
            short_root.to_str().unwrap(),
            "--cn",
            "i",
            "--org",
            "o",
            "--days",
            "3000",
            "--out",
            clipped.to_str().unwrap(),
        ],
    );
    let sr = pem_certs(&short_root).remove(0);
    let ci = pem_certs(&clipped).remove(0);
    let (_, sr) = X509Certificate::from_der(&sr).unwrap();
    let (_, ci) = X509Certificate::from_der(&ci).unwrap();
    assert_eq!(ci.validity().not_after, sr.validity().not_after);

    // A root certificate that is not the root key's is refused.
    let err = cli_err(
        &agent,
        &[
            "ca",
            "intermediate",
            "--key",
            INTERMEDIATE,
            "--root-key",
            INTERMEDIATE,
            "--root-cert",
            root_pem.to_str().unwrap(),
            "--cn",
            "i",
            "--org",
            "o",
            "--out",
            tmp.path().join("never.pem").to_str().unwrap(),
        ],
    );
    assert!(err.contains("public key differs"), "{err}");
    assert!(!tmp.path().join("never.pem").exists());
}

#[test]
fn root_key_signs_only_ca_certificates() {
    let (_hsm, agent) = ceremony_agent();
    let mut client = agent.client();
    // Purposes: the root key serves x509-tbs only.
    let digest = [7u8; 48];
    for result in [
        client.sign_digest(ROOT, &digest, Some(HashAlg::Sha384), None),
        client.sign_blob(ROOT, "release.tar.gz", &digest, HashAlg::Sha384),
    ] {
        match result {
            Err(ClientError::Agent(e)) => {
                assert_eq!(e.code, ErrorCode::PolicyDenied, "{e}");
                assert!(e.message.contains("allows only: x509-tbs"), "{e}");
            }
            other => panic!("root key signed a digest: {other:?}"),
        }
    }
    // x509_issue = ["ca"]: a leaf TBSCertificate is refused, naming the rule.
    let leaf_key = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let leaf_spki = {
        use p256::pkcs8::EncodePublicKey;
        leaf_key
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .into_vec()
    };
    let leaf = KeyMaterial::from_spki(&leaf_spki).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root_pem = tmp.path().join("root.pem");
    cli_ok(
        &agent,
        &[
            "ca",
            "root",
            "--key",
            ROOT,
            "--cn",
            "r",
            "--org",
            "o",
            "--out",
            root_pem.to_str().unwrap(),
        ],
    );
    let root_der = pem_certs(&root_pem).remove(0);
    let root_spki = client.public_key(ROOT).unwrap().spki_der.0;
    let cell = std::cell::RefCell::new(agent.client());
    let signer = RemoteSigner::new(
        KeyMaterial::from_spki(&root_spki).unwrap(),
        |tbs: &[u8]| Ok(cell.borrow_mut().sign_tbs(ROOT, tbs)?.signature.0),
    );
    let issuer = ca::issuer_from_cert(&root_der, signer).unwrap();
    let err = ca::leaf_params("dev@example.org", &leaf)
        .unwrap()
        .signed_by(&leaf, &issuer)
        .map_err(|e| issuer.key().explain(e))
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("policy-denied") && text.contains("x509_issue"),
        "{text}"
    );
    assert!(agent.log().contains("x509-tbs refused"));

    // A malformed TBSCertificate is refused and the connection stays usable.
    let mut raw = agent.raw();
    for (tbs, want) in [
        (B64.encode(b"not der at all"), "x509-tbs"),
        (B64.encode([0x30, 0x03, 0x02, 0x01, 0x05]), "x509-tbs"),
    ] {
        let req = json!({"id": 9, "op": "sign", "key": ROOT, "purpose": "x509-tbs", "tbs": tbs});
        write_frame(&mut raw, req.to_string().as_bytes());
        let resp: Value = read_frame(&mut raw).expect("an answer");
        assert_eq!(resp["id"], 9);
        assert_eq!(resp["error"]["code"], "bad-request", "{resp}");
        assert!(
            resp["error"]["message"].as_str().unwrap().contains(want),
            "{resp}"
        );
    }
    write_frame(&mut raw, br#"{"id":10,"op":"hello","version":1}"#);
    assert_eq!(read_frame(&mut raw).unwrap()["id"], 10);
}

#[test]
fn intermediate_from_a_csr_and_a_tampered_csr_is_refused() {
    require("openssl");
    let (_hsm, agent) = ceremony_agent();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root_pem = dir.join("root.pem");
    cli_ok(
        &agent,
        &[
            "ca",
            "root",
            "--key",
            ROOT,
            "--cn",
            "sigstore",
            "--org",
            "sigstore.dev",
            "--out",
            root_pem.to_str().unwrap(),
        ],
    );
    // A CSR from a key that lives elsewhere (here: an OpenSSL key file).
    run_ok(Command::new("openssl").current_dir(dir).args([
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-nodes",
        "-keyout",
        "other.key",
        "-subj",
        "/CN=elsewhere",
        "-out",
        "req.pem",
    ]));
    cli_ok(
        &agent,
        &[
            "ca",
            "intermediate",
            "--csr",
            "req.pem",
            "--root-key",
            ROOT,
            "--root-cert",
            "root.pem",
            "--cn",
            "sigstore-intermediate",
            "--org",
            "sigstore.dev",
            "--out",
            "chain.pem",
        ]
        .map(|a| {
            if a.ends_with(".pem") {
                dir.join(a).to_str().unwrap().to_string()
            } else {
                a.to_string()
            }
        })
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    let chain = pem_certs(&dir.join("chain.pem"));
    write_pem(&dir.join("intermediate.pem"), &chain[0]);
    let out = openssl_verify(dir, &["-CAfile", "root.pem", "intermediate.pem"]);
    assert!(out.contains("OK"), "{out}");
    // It certifies the CSR's key.
    let csr_pub = run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-in", "req.pem", "-pubkey", "-noout"]),
    );
    let cert_pub = run_ok(Command::new("openssl").current_dir(dir).args([
        "x509",
        "-in",
        "intermediate.pem",
        "-pubkey",
        "-noout",
    ]));
    assert_eq!(csr_pub, cert_pub);

    // The same CSR with one bit of its signature flipped.
    run_ok(Command::new("openssl").current_dir(dir).args([
        "req", "-in", "req.pem", "-outform", "DER", "-out", "req.der",
    ]));
    let mut der = std::fs::read(dir.join("req.der")).unwrap();
    let last = der.len() - 3;
    der[last] ^= 0x01;
    std::fs::write(dir.join("bad.der"), &der).unwrap();
    let out_path = dir.join("bad-chain.pem");
    let err = cli_err(
        &agent,
        &[
            "ca",
            "intermediate",
            "--csr",
            dir.join("bad.der").to_str().unwrap(),
            "--root-key",
            ROOT,
            "--root-cert",
            root_pem.to_str().unwrap(),
            "--cn",
            "i",
            "--org",
            "o",
            "--out",
            out_path.to_str().unwrap(),
        ],
    );
    assert!(err.contains("signature does not verify"), "{err}");
    assert!(!out_path.exists());
}

#[test]
fn root_stored_on_the_token_as_fulcio_createca_does() {
    let (hsm, agent) = ceremony_agent();
    let tmp = tempfile::tempdir().unwrap();
    let root_pem = tmp.path().join("root.pem");
    let out = cli_ok(
        &agent,
        &[
            "ca",
            "root",
            "--key",
            ROOT,
            "--cn",
            "sigstore",
            "--org",
            "sigstore.dev",
            "--out",
            root_pem.to_str().unwrap(),
            "--pkcs11-store",
            "99",
        ],
    );
    assert!(out.contains("id '99'"), "{out}");
    // Public (CKA_PRIVATE false): listed without logging in.
    let listed = hsm.pkcs11_tool(&["--token-label", "ca", "--list-objects", "--type", "cert"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("label:      PKCS11CA"), "{listed}");
    assert!(listed.contains("ID:         3939"), "{listed}");
    assert!(listed.contains("sigstore"), "{listed}");
    // CKA_VALUE is the certificate.
    let read = hsm.pkcs11_tool(&[
        "--token-label",
        "ca",
        "--read-object",
        "--type",
        "cert",
        "--id",
        "3939",
    ]);
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(read.stdout, pem_certs(&root_pem)[0]);

    // The id is taken now: refused, and nothing is written.
    let again = tmp.path().join("again.pem");
    let err = cli_err(
        &agent,
        &[
            "ca",
            "root",
            "--key",
            ROOT,
            "--cn",
            "s",
            "--org",
            "o",
            "--out",
            again.to_str().unwrap(),
            "--pkcs11-store",
            "99",
        ],
    );
    assert!(
        err.contains("id '99'") && err.contains("key-exists"),
        "{err}"
    );
    assert!(!again.exists());
}

/// Runs `sigstore-kms-waxseal signMessage` for `digest` as sigstore's CryptoSigner does.
fn plugin_sign(socket: &Path, key: &str, digest: &[u8], hash_func: u64) -> Vec<u8> {
    let args = json!({
        "initOptions": {"protocolVersion": "v1", "keyResourceID": key, "hashFunc": hash_func},
        "methodName": "signMessage",
        "signMessage": {"signOptions": {"rpcOptions": {}, "messageOptions": {
            "digest": B64.encode(digest), "hashFunc": hash_func}}},
    });
    let mut child = Command::new(&bins().kms_plugin)
        .args(["v1", &args.to_string()])
        .env("WAXSEAL_SOCK", socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take().unwrap().write_all(b""));
    let out = child.wait_with_output().unwrap();
    let resp: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(resp.get("errorMessage").is_none(), "{resp}");
    B64.decode(resp["signMessage"]["signature"].as_str().unwrap())
        .unwrap()
}

#[test]
fn fulcio_kmsca_leaf_signed_through_the_plugin_verifies_to_the_root() {
    let (_hsm, agent) = ceremony_agent();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, chain_pem) = make_chain(&agent, dir);
    let chain = pem_certs(&chain_pem);
    write_pem(&dir.join("intermediate.pem"), &chain[0]);

    // The leaf key is the requester's (software here, as with Fulcio's clients).
    let leaf_key = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let leaf_spki = {
        use p256::pkcs8::EncodePublicKey;
        leaf_key
            .verifying_key()
            .to_public_key_der()
            .unwrap()
            .into_vec()
    };
    let leaf = KeyMaterial::from_spki(&leaf_spki).unwrap();
    // kmsca: the TBS digest goes to the plug-in, which signs with the intermediate.
    let inter_spki = agent.client().public_key(INTERMEDIATE).unwrap().spki_der.0;
    let socket = agent.socket.clone();
    let signer = RemoteSigner::new(
        KeyMaterial::from_spki(&inter_spki).unwrap(),
        |tbs: &[u8]| Ok(plugin_sign(&socket, INTERMEDIATE, &Sha384::digest(tbs), 6)),
    );
    let issuer = ca::issuer_from_cert(&chain[0], signer).unwrap();
    let cert = ca::leaf_params("dev@example.org", &leaf)
        .unwrap()
        .signed_by(&leaf, &issuer)
        .map_err(|e| issuer.key().explain(e))
        .unwrap();
    write_pem(&dir.join("leaf.pem"), cert.der());
    let out = openssl_verify(
        dir,
        &[
            "-CAfile",
            "root.pem",
            "-untrusted",
            "intermediate.pem",
            "leaf.pem",
        ],
    );
    assert!(out.contains("leaf.pem: OK"), "{out}");
    let (_, parsed) = X509Certificate::from_der(cert.der()).unwrap();
    let lifetime =
        parsed.validity().not_after.timestamp() - parsed.validity().not_before.timestamp();
    assert_eq!(lifetime, 600);
    let ku = parsed.key_usage().unwrap().unwrap();
    assert!(ku.value.digital_signature() && ku.value.flags.count_ones() == 1);
    assert!(
        parsed
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .code_signing
    );
    // A change to the leaf breaks the chain for OpenSSL too.
    let mut bad = cert.der().to_vec();
    let n = bad.len() - 5;
    bad[n] ^= 0x01;
    write_pem(&dir.join("bad-leaf.pem"), &bad);
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "verify",
            "-x509_strict",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "intermediate.pem",
            "bad-leaf.pem",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// A self-signed certificate for `key` (which may sign `x509-tbs`), made through the
/// agent; `cn` tells certificates for one key apart.
fn self_signed(client: &mut Client, key: &str, cn: &str) -> Vec<u8> {
    let spki = client.public_key(key).unwrap().spki_der.0;
    let material = KeyMaterial::from_spki(&spki).unwrap();
    let params = ca::root_params(cn, "waxseal tests", 30, &material).unwrap();
    let cell = std::cell::RefCell::new(client);
    let signer = RemoteSigner::new(material, |tbs: &[u8]| {
        Ok(cell.borrow_mut().sign_tbs(key, tbs)?.signature.0)
    });
    let cert = params
        .self_signed(&signer)
        .map_err(|e| signer.explain(e))
        .unwrap();
    cert.der().to_vec()
}

/// The key's CKA_ID, from the `pkcs11:` URI `list_keys` gives it.
fn cka_id(client: &mut Client, key: &str) -> Vec<u8> {
    let listed = client.list_keys().unwrap();
    let uri = listed
        .keys
        .iter()
        .find(|k| k.name == key)
        .and_then(|k| k.uri.clone())
        .unwrap();
    Pkcs11Uri::parse(&uri).unwrap().id.unwrap()
}

/// The certificate `public_key` carries for `key`.
fn certificate_of(client: &mut Client, key: &str) -> Option<Vec<u8>> {
    client.public_key(key).unwrap().certificate.map(|c| c.0)
}

#[test]
fn public_key_carries_the_certificate_the_token_holds_for_the_key() {
    let hsm = SoftHsm::new();
    hsm.init_token("certs", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let mut config = pkcs11_device("hsm", "certs", &pin);
    for key in ["hsm/stored", "hsm/written", "hsm/bare"] {
        config.push_str(&format!(
            "\n[[key]]\nname = \"{key}\"\npurposes = [\"x509-tbs\", \"digest\"]\n"
        ));
    }
    let agent = Agent::builder().softhsm(&hsm).config(&config).start();
    let mut client = agent.client();
    client.generate_key("hsm/stored", KeyAlg::P384).unwrap();
    client.generate_key("hsm/written", KeyAlg::P256).unwrap();
    client.generate_key("hsm/bare", KeyAlg::P256).unwrap();
    for key in ["hsm/stored", "hsm/written", "hsm/bare"] {
        assert_eq!(certificate_of(&mut client, key), None, "{key}");
    }

    // Stored through the agent: CKA_ID is the ASCII object id, not the key's.
    let stored = self_signed(&mut client, "hsm/stored", "stored");
    client
        .store_certificate("hsm/stored", "77", None, &stored)
        .unwrap();
    assert_eq!(
        certificate_of(&mut client, "hsm/stored"),
        Some(stored.clone())
    );
    assert_eq!(certificate_of(&mut client, "hsm/bare"), None);

    // A certificate for `written` under another id is found by its public key…
    let other = self_signed(&mut client, "hsm/written", "under another id");
    client
        .store_certificate("hsm/written", "88", None, &other)
        .unwrap();
    assert_eq!(certificate_of(&mut client, "hsm/written"), Some(other));
    // …and one written by pkcs11-tool with the key's CKA_ID is preferred, found on
    // the next call (nothing is cached).
    let tmp = tempfile::tempdir().unwrap();
    let written = self_signed(&mut client, "hsm/written", "written by pkcs11-tool");
    let written_der = tmp.path().join("written.der");
    std::fs::write(&written_der, &written).unwrap();
    let id = hex::encode(cka_id(&mut client, "hsm/written"));
    hsm.pkcs11_tool(&[
        "--token-label",
        "certs",
        "--login",
        "--pin",
        "1234",
        "--write-object",
        written_der.to_str().unwrap(),
        "--type",
        "cert",
        "--id",
        &id,
        "--label",
        "written",
    ]);
    assert_eq!(certificate_of(&mut client, "hsm/written"), Some(written));
    // The answer names the object that holds it: the key's own CKA_ID and its label.
    let answer = client.public_key("hsm/written").unwrap();
    assert_eq!(
        answer.certificate_id.map(|c| hex::encode(c.0)),
        Some(id.clone())
    );
    assert_eq!(answer.certificate_label.as_deref(), Some("written"));

    // A certificate under `bare`'s CKA_ID but for another key is not `bare`'s.
    let stored_der = tmp.path().join("stored.der");
    std::fs::write(&stored_der, &stored).unwrap();
    let bare_id = hex::encode(cka_id(&mut client, "hsm/bare"));
    hsm.pkcs11_tool(&[
        "--token-label",
        "certs",
        "--login",
        "--pin",
        "1234",
        "--write-object",
        stored_der.to_str().unwrap(),
        "--type",
        "cert",
        "--id",
        &bare_id,
    ]);
    let listed = hsm.pkcs11_tool(&["--token-label", "certs", "--list-objects", "--type", "cert"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(listed.matches("Certificate Object").count(), 4, "{listed}");
    assert_eq!(certificate_of(&mut client, "hsm/bare"), None);
    assert_eq!(certificate_of(&mut client, "hsm/stored"), Some(stored));
}

/// `public_key`'s answer for `key`: the certificate and its object's CKA_ID and label.
fn certificate_object(
    client: &mut Client,
    key: &str,
) -> (Option<Vec<u8>>, Option<Vec<u8>>, Option<String>) {
    let answer = client.public_key(key).unwrap();
    (
        answer.certificate.map(|c| c.0),
        answer.certificate_id.map(|c| c.0),
        answer.certificate_label,
    )
}

#[test]
fn a_certificate_stored_under_raw_id_bytes_is_found_with_that_id_and_label() {
    let (hsm, agent) = ceremony_agent();
    let mut client = agent.client();
    let root = self_signed(&mut client, ROOT, "stored under raw bytes");
    assert_eq!(certificate_object(&mut client, ROOT), (None, None, None));

    // Neither or both of `object_id` and `raw_id`: refused before the token is touched.
    let mut raw = agent.raw();
    let cert = B64.encode(&root);
    for (ids, want) in [
        (json!({}), "missing `object_id` or `raw_id`"),
        (
            json!({"object_id": "98", "raw_id": B64.encode(b"98")}),
            "exclude each other",
        ),
    ] {
        let mut req = json!({"id": 3, "op": "store_certificate", "key": ROOT, "cert": cert});
        req.as_object_mut()
            .unwrap()
            .extend(ids.as_object().unwrap().clone());
        write_frame(&mut raw, req.to_string().as_bytes());
        let resp: Value = read_frame(&mut raw).expect("an answer");
        assert_eq!(resp["id"], 3);
        assert_eq!(resp["error"]["code"], "bad-request", "{resp}");
        let message = resp["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{message}");
    }
    let listed = hsm.pkcs11_tool(&["--token-label", "ca", "--list-objects", "--type", "cert"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(!listed.contains("Certificate Object"), "{listed}");

    // Raw bytes 0x39 0x39: CKA_ID "99", as `--hsm-caroot-id 99` looks for it.
    let stored = client
        .store_certificate_id(ROOT, &[0x39, 0x39], None, &root)
        .unwrap();
    assert_eq!(
        (stored.object_id.as_str(), stored.label.as_str()),
        ("3939", "PKCS11CA")
    );
    let listed = hsm.pkcs11_tool(&["--token-label", "ca", "--list-objects", "--type", "cert"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(listed.matches("Certificate Object").count(), 1, "{listed}");
    assert!(listed.contains("ID:         3939"), "{listed}");
    assert!(listed.contains("label:      PKCS11CA"), "{listed}");
    assert_eq!(
        certificate_object(&mut client, ROOT),
        (
            Some(root.clone()),
            Some(vec![0x39, 0x39]),
            Some("PKCS11CA".to_string())
        )
    );
    // The ASCII id "99" is the same CKA_ID: taken.
    match client.store_certificate(ROOT, "99", Some("again"), &root) {
        Err(ClientError::Agent(e)) => {
            assert_eq!(e.code, ErrorCode::KeyExists);
            assert!(e.message.contains("id '99'"), "{}", e.message);
        }
        other => panic!("expected key-exists, got {other:?}"),
    }
    // Bytes that are not text are stored as they are, and named in hex.
    let inter = self_signed(&mut client, INTERMEDIATE, "stored under binary bytes");
    let stored = client
        .store_certificate_id(INTERMEDIATE, &[0x00, 0xff], Some("binary"), &inter)
        .unwrap();
    assert_eq!(stored.object_id, "00ff");
    let listed = hsm.pkcs11_tool(&["--token-label", "ca", "--list-objects", "--type", "cert"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("ID:         00ff"), "{listed}");
    assert_eq!(
        certificate_object(&mut client, INTERMEDIATE),
        (
            Some(inter.clone()),
            Some(vec![0x00, 0xff]),
            Some("binary".to_string())
        )
    );
    match client.store_certificate_id(INTERMEDIATE, &[0x00, 0xff], None, &inter) {
        Err(ClientError::Agent(e)) => {
            assert_eq!(e.code, ErrorCode::KeyExists);
            assert!(e.message.contains("0x00ff"), "{}", e.message);
        }
        other => panic!("expected key-exists, got {other:?}"),
    }
}

/// A certificate may take its own key's CKA_ID (PKCS#11 programs pair a key with its
/// certificate by equal ids), once; another key's id stays refused.
#[test]
fn a_certificate_may_share_its_own_keys_id_once_and_never_another_keys() {
    let (hsm, agent) = ceremony_agent();
    let mut client = agent.client();
    let root = self_signed(&mut client, ROOT, "under its key's id");
    let own = cka_id(&mut client, ROOT);
    let other = cka_id(&mut client, INTERMEDIATE);
    match client.store_certificate_id(ROOT, &other, None, &root) {
        Err(ClientError::Agent(e)) => assert_eq!(e.code, ErrorCode::KeyExists, "{}", e.message),
        other => panic!("another key's id: expected key-exists, got {other:?}"),
    }
    client
        .store_certificate_id(ROOT, &own, Some("root"), &root)
        .unwrap();
    assert_eq!(
        certificate_object(&mut client, ROOT),
        (
            Some(root.clone()),
            Some(own.clone()),
            Some("root".to_string())
        )
    );
    match client.store_certificate_id(ROOT, &own, Some("again"), &root) {
        Err(ClientError::Agent(e)) => assert_eq!(e.code, ErrorCode::KeyExists, "{}", e.message),
        other => panic!("a second certificate under that id: expected key-exists, got {other:?}"),
    }
    let listed = hsm.pkcs11_tool(&["--token-label", "ca", "--list-objects", "--type", "cert"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(listed.matches("Certificate Object").count(), 1, "{listed}");
    assert!(
        listed.contains(&format!("ID:         {}", hex::encode(&own))),
        "{listed}"
    );
}
