//! The TPM 2.0 backend against a real swtpm, cross-checked with tpm2-tools, the
//! tpm2-openssl provider and OpenSSL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use p256::pkcs8::DecodePublicKey as _;
use pkcs11_tests::{pkcs11_device, require, run_ok, tpm_device, Agent, PinFifo, SoftHsm, Swtpm};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use waxseal_agent::backend::tpm::keyfile::KeyFile;
use waxseal_agent::client::ClientError;
use waxseal_agent::proto::{ErrorCode, HashAlg, KeyAlg, RsaPadding};

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Agent(e)) => (e.code, e.message),
        other => panic!("expected an agent error, got {other:?}"),
    }
}

fn key_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tpm-keys-")
        .tempdir()
        .unwrap()
}

fn tpm_agent(tpm: &Swtpm, keys: &Path, pin: Option<&Path>) -> Agent {
    Agent::builder()
        .config(&tpm_device("tpm", tpm, keys, pin))
        .start()
}

/// `openssl dgst -<hash> -verify` of `msg` against `sig` made by `pem`'s key.
fn openssl_verify(dir: &Path, pem: &str, msg: &[u8], sig: &[u8], hash: &str, pss: bool) {
    std::fs::write(dir.join("v.pub.pem"), pem).unwrap();
    std::fs::write(dir.join("v.msg"), msg).unwrap();
    std::fs::write(dir.join("v.sig"), sig).unwrap();
    let mut cmd = Command::new(require("openssl"));
    cmd.current_dir(dir).args(["dgst", &format!("-{hash}")]);
    if pss {
        cmd.args([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:auto",
        ]);
    }
    cmd.args(["-verify", "v.pub.pem", "-signature", "v.sig", "v.msg"]);
    let out = run_ok(&mut cmd);
    assert!(out.contains("Verified OK"), "openssl: {out}");
}

fn digest(hash: HashAlg, msg: &[u8]) -> Vec<u8> {
    match hash {
        HashAlg::Sha256 => Sha256::digest(msg).to_vec(),
        HashAlg::Sha384 => Sha384::digest(msg).to_vec(),
        HashAlg::Sha512 => Sha512::digest(msg).to_vec(),
    }
}

/// Parses a DER ECDSA signature strictly: SEQUENCE { INTEGER r, INTEGER s }, minimal.
fn check_der_ecdsa(sig: &[u8]) {
    assert_eq!(sig[0], 0x30, "not a SEQUENCE");
    let body = &sig[2..];
    assert_eq!(usize::from(sig[1]), body.len(), "SEQUENCE length");
    let mut rest = body;
    for _ in 0..2 {
        assert_eq!(rest[0], 0x02, "not an INTEGER");
        let len = usize::from(rest[1]);
        let int = &rest[2..2 + len];
        assert!(
            !(int.len() > 1 && int[0] == 0 && int[1] & 0x80 == 0),
            "non-minimal INTEGER"
        );
        assert_eq!(int[0] & 0x80, 0, "negative INTEGER");
        rest = &rest[2 + len..];
    }
    assert!(rest.is_empty());
}

#[test]
fn generate_sign_and_verify_every_algorithm_with_openssl() {
    let tpm = Swtpm::start();
    let keys = key_dir();
    let agent = tpm_agent(&tpm, keys.path(), None);
    let scratch = agent.dir().to_path_buf();
    let msg = b"release-1.2.3.tar.gz contents";

    for (label, alg) in [
        ("ec256", KeyAlg::P256),
        ("ec384", KeyAlg::P384),
        ("rsa2k", KeyAlg::Rsa(2048)),
        ("rsa3k", KeyAlg::Rsa(3072)),
    ] {
        let name = format!("tpm/{label}");
        let out = agent.cli(&["keys", "generate", &name, "--alg", &alg.to_string()]);
        assert!(
            out.status.success(),
            "generate {name}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent.log()
        );
        let pem = agent.client().public_key(&name).unwrap().pem;
        assert_eq!(String::from_utf8_lossy(&out.stdout), pem);

        // The key file: TSS2 PEM, owner-only.
        let file = keys.path().join(format!("{label}.pem"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("-----BEGIN TSS2 PRIVATE KEY-----\n"),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let hashes: &[HashAlg] = match alg {
            KeyAlg::P256 => &[HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512],
            KeyAlg::P384 => &[HashAlg::Sha384, HashAlg::Sha256],
            _ => &[HashAlg::Sha256, HashAlg::Sha384, HashAlg::Sha512],
        };
        let paddings: &[RsaPadding] = match alg {
            KeyAlg::Rsa(_) => &[RsaPadding::Pkcs1, RsaPadding::Pss],
            _ => &[RsaPadding::Pkcs1],
        };
        for &hash in hashes {
            for &padding in paddings {
                let d = digest(hash, msg);
                let signed = agent
                    .client()
                    .sign_digest(&name, &d, Some(hash), Some(padding))
                    .unwrap_or_else(|e| panic!("sign {name} {hash} {padding:?}: {e}"));
                if matches!(alg, KeyAlg::P256 | KeyAlg::P384) {
                    check_der_ecdsa(&signed.signature.0);
                }
                openssl_verify(
                    &scratch,
                    &pem,
                    msg,
                    &signed.signature.0,
                    hash.as_str(),
                    padding == RsaPadding::Pss,
                );
            }
        }
    }

    // Many P-256 signatures: r or s shorter than 32 bytes (1 in 128 each) must still
    // give valid DER that verifies.
    let pem = agent.client().public_key("tpm/ec256").unwrap().pem;
    let vk: p256::ecdsa::VerifyingKey = {
        use p256::pkcs8::DecodePublicKey as _;
        p256::ecdsa::VerifyingKey::from_public_key_pem(&pem).unwrap()
    };
    let mut client = agent.client();
    for i in 0..300u32 {
        let d = Sha256::digest(i.to_be_bytes());
        let sig = client.sign_digest("tpm/ec256", &d, None, None).unwrap();
        check_der_ecdsa(&sig.signature.0);
        let sig = p256::ecdsa::Signature::from_der(&sig.signature.0).unwrap();
        use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
        vk.verify_prehash(&d, &sig).unwrap();
    }

    // Listing, algorithms the TPM cannot make, a taken name, a bad digest.
    let listed = agent.client().list_keys().unwrap();
    let names: Vec<(&str, KeyAlg)> = listed
        .keys
        .iter()
        .map(|k| (k.name.as_str(), k.alg))
        .collect();
    assert_eq!(
        names,
        vec![
            ("tpm/ec256", KeyAlg::P256),
            ("tpm/ec384", KeyAlg::P384),
            ("tpm/rsa2k", KeyAlg::Rsa(2048)),
            ("tpm/rsa3k", KeyAlg::Rsa(3072)),
        ]
    );
    assert!(listed.keys[0]
        .uri
        .as_deref()
        .unwrap()
        .starts_with("tpm:name=ec256"));
    let (c, m) = code(agent.client().generate_key("tpm/ed", KeyAlg::Ed25519));
    assert_eq!(c, ErrorCode::Unsupported, "{m}");
    assert!(m.contains("p256, p384, rsa2048 or rsa3072"), "{m}");
    let (c, _) = code(agent.client().generate_key("tpm/ec256", KeyAlg::P256));
    assert_eq!(c, ErrorCode::KeyExists);
    let (c, m) = code(agent.client().generate_key("tpm/no spaces", KeyAlg::P256));
    assert_eq!(c, ErrorCode::BadRequest, "{m}");
    let (c, _) = code(
        agent
            .client()
            .sign_digest("tpm/ec256", &[0u8; 20], None, None),
    );
    assert_eq!(c, ErrorCode::BadRequest);
    let (c, _) = code(
        agent
            .client()
            .sign_digest("tpm/nope", &[0u8; 32], None, None),
    );
    assert_eq!(c, ErrorCode::UnknownKey);
}

#[test]
fn more_keys_than_tpm_slots_are_flushed_and_reloaded() {
    // swtpm holds three transient objects; the SRK takes one.
    let tpm = Swtpm::start();
    let keys = key_dir();
    let agent = tpm_agent(&tpm, keys.path(), None);
    let mut pems = Vec::new();
    for i in 0..5 {
        let name = format!("tpm/k{i}");
        let made = agent.client().generate_key(&name, KeyAlg::P256).unwrap();
        pems.push((name, made.pem));
    }
    let mut client = agent.client();
    for round in 0..3u8 {
        for (name, pem) in &pems {
            let msg = [round; 16];
            let sig = client
                .sign_digest(name, &Sha256::digest(msg), None, None)
                .unwrap_or_else(|e| panic!("{name} round {round}: {e}\n{}", agent.log()));
            openssl_verify(agent.dir(), pem, &msg, &sig.signature.0, "sha256", false);
        }
    }
}

/// `openssl asn1parse` of a PEM file, for an independent view of its structure.
fn asn1parse(path: &Path) -> String {
    run_ok(
        Command::new(require("openssl"))
            .args(["asn1parse", "-in"])
            .arg(path),
    )
}

fn flush_transients(tpm: &Swtpm) {
    run_ok(tpm.tool("tpm2_flushcontext").arg("-t"));
}

#[test]
fn key_files_interoperate_with_tpm2_openssl_and_tpm2_tools() {
    let tpm = Swtpm::start();
    let keys = key_dir();
    let mut agent = tpm_agent(&tpm, keys.path(), None);
    let made = agent
        .client()
        .generate_key("tpm/git", KeyAlg::P256)
        .unwrap();
    agent.terminate(); // swtpm serves one connection at a time
    let file = keys.path().join("git.pem");

    // The ASN.1 as OpenSSL reads it: id-loadablekey, emptyAuth TRUE, parent 0x40000001.
    let asn1 = asn1parse(&file);
    assert!(
        asn1.contains("OBJECT            :2.23.133.10.1.3"),
        "{asn1}"
    );
    assert!(asn1.contains("BOOLEAN           :255"), "{asn1}");
    assert!(asn1.contains("INTEGER           :40000001"), "{asn1}");

    // The tpm2-openssl provider loads our file under its own SRK and signs with it.
    let dir = tpm.dir().to_path_buf();
    std::fs::write(dir.join("msg"), b"hello from tpm2-openssl").unwrap();
    run_ok(
        tpm.openssl()
            .args(["pkey", "-provider", "tpm2", "-provider", "default", "-in"])
            .arg(&file)
            .args(["-pubout", "-out", "ossl-pub.pem"]),
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ossl-pub.pem")).unwrap(),
        made.pem,
        "tpm2-openssl sees the same public key"
    );
    run_ok(
        tpm.openssl()
            .args([
                "pkeyutl",
                "-provider",
                "tpm2",
                "-provider",
                "default",
                "-sign",
                "-inkey",
            ])
            .arg(&file)
            .args([
                "-rawin", "-digest", "sha256", "-in", "msg", "-out", "ossl.sig",
            ]),
    );
    let sig = std::fs::read(dir.join("ossl.sig")).unwrap();
    openssl_verify(
        &dir,
        &made.pem,
        b"hello from tpm2-openssl",
        &sig,
        "sha256",
        false,
    );

    // tpm2-tools: the standard ECC SRK, our blobs loaded under it, attributes read back.
    let kf = KeyFile::from_pem(&std::fs::read_to_string(&file).unwrap()).unwrap();
    std::fs::write(dir.join("git.pub"), &kf.public).unwrap();
    std::fs::write(dir.join("git.priv"), &kf.private).unwrap();
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
    // Without a resource manager every tool leaves its objects loaded: flush them.
    flush_transients(&tpm);
    run_ok(tpm.tool("tpm2_load").args([
        "-C", "srk.ctx", "-u", "git.pub", "-r", "git.priv", "-c", "git.ctx",
    ]));
    flush_transients(&tpm);
    let public = run_ok(tpm.tool("tpm2_readpublic").args(["-c", "git.ctx"]));
    let attrs = public
        .lines()
        .skip_while(|l| !l.starts_with("attributes:"))
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(
        attrs.contains("fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign"),
        "attributes: {attrs}\n{public}"
    );
    for never in ["decrypt", "restricted", "noda"] {
        assert!(!attrs.contains(never), "{never} in {attrs}");
    }
    assert!(public.contains("curve-id:\n  value: NIST p256"), "{public}");
    flush_transients(&tpm);

    // A persistent copy of a key made by tpm2-tools, and a restricted (attestation) key.
    run_ok(tpm.tool("tpm2_create").args([
        "-C",
        "srk.ctx",
        "-p",
        "tools-pin",
        "-G",
        "ecc384",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
        "-u",
        "other.pub",
        "-r",
        "other.priv",
    ]));
    flush_transients(&tpm);
    // …encoded as a TSS2 PEM file by tpm2-tools and dropped into the key folder.
    run_ok(
        tpm.tool("tpm2_encodeobject")
            .args(["-C", "srk.ctx", "-u", "other.pub", "-r", "other.priv", "-o"])
            .arg(keys.path().join("from-tools.pem")),
    );
    flush_transients(&tpm);
    let asn1 = asn1parse(&keys.path().join("from-tools.pem"));
    assert!(
        asn1.contains("BOOLEAN           :0"),
        "tpm2_encodeobject marks the key as having an auth value: {asn1}"
    );
    run_ok(
        tpm.tool("tpm2_evictcontrol")
            .args(["-C", "o", "-c", "git.ctx", "0x81000010"]),
    );
    flush_transients(&tpm);
    run_ok(tpm.tool("tpm2_createprimary").args([
        "-C",
        "o",
        "-G",
        "ecc256:ecdsa-sha256:null",
        "-a",
        "restricted|sign|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda",
        "-c",
        "ak.ctx",
    ]));
    run_ok(
        tpm.tool("tpm2_evictcontrol")
            .args(["-C", "o", "-c", "ak.ctx", "0x81000011"]),
    );
    flush_transients(&tpm);
    // …and one made by tpm2-openssl's own key generation.
    run_ok(
        tpm.openssl()
            .args([
                "genpkey",
                "-provider",
                "tpm2",
                "-provider",
                "default",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "group:P-256",
                "-out",
            ])
            .arg(keys.path().join("from-openssl.pem")),
    );
    run_ok(
        tpm.openssl()
            .args(["pkey", "-provider", "tpm2", "-provider", "default", "-in"])
            .arg(keys.path().join("from-openssl.pem"))
            .args(["-pubout", "-out", "from-openssl.pub.pem"]),
    );

    // The device's PIN is the auth value of the tpm2-tools key; keys without one
    // (emptyAuth) and persistent keys are used without it.
    let pin = keys.path().join("pin");
    std::fs::write(&pin, "tools-pin").unwrap();
    let agent = tpm_agent(&tpm, keys.path(), Some(&pin));
    let listed = agent.client().list_keys().unwrap();
    let names: Vec<&str> = listed.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "tpm/0x81000010",
            "tpm/from-openssl",
            "tpm/from-tools",
            "tpm/git"
        ],
        "the restricted key 0x81000011 is not listed"
    );
    let msg = b"signed with keys other tools made";
    for (name, hash, pem) in [
        ("tpm/0x81000010", "sha256", made.pem.clone()),
        (
            "tpm/from-openssl",
            "sha256",
            std::fs::read_to_string(dir.join("from-openssl.pub.pem")).unwrap(),
        ),
        (
            "tpm/from-tools",
            "sha384",
            agent.client().public_key("tpm/from-tools").unwrap().pem,
        ),
    ] {
        let h = if hash == "sha384" {
            Sha384::digest(msg).to_vec()
        } else {
            Sha256::digest(msg).to_vec()
        };
        let sig = agent
            .client()
            .sign_digest(name, &h, None, None)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", agent.log()));
        openssl_verify(agent.dir(), &pem, msg, &sig.signature.0, hash, false);
    }
    assert_eq!(
        agent.client().public_key("tpm/0x81000010").unwrap().pem,
        made.pem
    );
    let (c, m) = code(
        agent
            .client()
            .sign_digest("tpm/0x81000011", &[1u8; 32], None, None),
    );
    assert_eq!(c, ErrorCode::Unsupported, "{m}");
    assert!(m.contains("restricted"), "{m}");
    let (c, _) = code(
        agent
            .client()
            .sign_digest("tpm/0x81000099", &[1u8; 32], None, None),
    );
    assert_eq!(c, ErrorCode::UnknownKey);
}

/// Reads a TPM2B off the front of `b`.
fn tpm2b(b: &mut &[u8]) -> Vec<u8> {
    let n = usize::from(u16::from_be_bytes([b[0], b[1]]));
    let v = b[2..2 + n].to_vec();
    *b = &b[2 + n..];
    v
}

#[test]
fn attestation_certifies_the_key_with_the_agents_attestation_key() {
    let tpm = Swtpm::start();
    let keys = key_dir();
    let agent = tpm_agent(&tpm, keys.path(), None);
    agent
        .client()
        .generate_key("tpm/git", KeyAlg::P256)
        .unwrap();
    agent
        .client()
        .generate_key("tpm/rsa", KeyAlg::Rsa(2048))
        .unwrap();

    let out_dir = agent.dir().join("evidence");
    let out = agent.cli(&[
        "keys",
        "attest",
        "tpm/git",
        "--nonce",
        "00112233445566778899aabbccddeeff",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(path, out_dir.join("git.tpm2-certify.json"));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(doc["key"], "tpm/git");
    assert_eq!(doc["format"], "tpm2-certify");
    let ev = &doc["evidence"];
    let b64 = |k: &str| B64.decode(ev[k].as_str().unwrap()).unwrap();
    let attest = b64("attest");
    let key_public = b64("key_public");
    let ak_public = b64("ak_public");

    // The AK's signature over TPMS_ATTEST, checked by OpenSSL with the AK's public key.
    openssl_verify(
        agent.dir(),
        ev["ak_spki_pem"].as_str().unwrap(),
        &attest,
        &b64("signature"),
        "sha256",
        false,
    );

    // TPMS_ATTEST: magic, TPM_ST_ATTEST_CERTIFY, the nonce, and the certified name.
    let mut a = attest.as_slice();
    assert_eq!(&a[..4], &[0xff, 0x54, 0x43, 0x47], "TPM_GENERATED_VALUE");
    assert_eq!(&a[4..6], &[0x80, 0x17], "TPM_ST_ATTEST_CERTIFY");
    a = &a[6..];
    let signer = tpm2b(&mut a);
    let extra = tpm2b(&mut a);
    assert_eq!(hex::encode(&extra), "00112233445566778899aabbccddeeff");
    a = &a[17 + 8..]; // TPMS_CLOCK_INFO, firmwareVersion
    let certified_name = tpm2b(&mut a);
    let _qualified = tpm2b(&mut a);
    assert!(a.is_empty());
    let mut expected = vec![0x00, 0x0b];
    expected.extend(Sha256::digest(&key_public));
    assert_eq!(
        certified_name, expected,
        "certified name = nameAlg || H(public area)"
    );
    assert_eq!(
        hex::encode(&certified_name),
        ev["key_name"].as_str().unwrap()
    );
    assert!(!signer.is_empty());

    // The certified public area is the key's: the one in its file, and its SPKI.
    let kf =
        KeyFile::from_pem(&std::fs::read_to_string(keys.path().join("git.pem")).unwrap()).unwrap();
    assert_eq!(kf.public_area(), key_public.as_slice());
    assert_eq!(
        ev["key_spki_pem"].as_str().unwrap(),
        agent.client().public_key("tpm/git").unwrap().pem
    );
    let mut ak_name = vec![0x00, 0x0b];
    ak_name.extend(Sha256::digest(&ak_public));
    assert_eq!(hex::encode(ak_name), ev["ak_name"].as_str().unwrap());

    // tpm2-tools reads the same header (tpm2_print 5.4 prints TPMS_ATTEST up to the
    // certify body, then says the type is unsupported).
    std::fs::write(agent.dir().join("attest.bin"), &attest).unwrap();
    let printed = tpm
        .tool("tpm2_print")
        .args(["-t", "TPMS_ATTEST"])
        .arg(agent.dir().join("attest.bin"))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.contains("magic: ff544347"), "{printed}");
    assert!(printed.contains("type: 8017"), "{printed}");
    assert!(
        printed.contains("extraData: 00112233445566778899aabbccddeeff"),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("qualifiedSigner: {}", hex::encode(&signer))),
        "{printed}"
    );

    // The AK is the same every time (a primary key from a fixed template); a random
    // nonce is used when none is given; an RSA key is certified too.
    let again = agent.client().attest("tpm/rsa", None).unwrap();
    assert_eq!(again.evidence["ak_name"], ev["ak_name"]);
    assert_eq!(
        B64.decode(again.evidence["nonce"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    // Signing still works after the AK came and went.
    agent
        .client()
        .sign_digest("tpm/git", &[7u8; 32], None, None)
        .unwrap();
    let (c, _) = code(agent.client().attest("tpm/git", Some(&[0u8; 33])));
    assert_eq!(c, ErrorCode::BadRequest);

    // The AK is this TPM's key, not one the agent made up: tpm2-tools, on the same TPM,
    // creates the primary key of the AK template that docs/protocol.md (`attest`)
    // documents and gets the same key: same name, same public key. swtpm serves one
    // connection at a time, so the agent stops first.
    let mut agent = agent;
    assert!(agent.terminate().success());
    // The template's unique field: x = "waxseal attestation key v1", y empty. A file
    // given to `tpm2_createprimary --unique-data` is a TPMU_PUBLIC_ID as laid out in
    // memory (tpm2_createprimary(1)): for ECC two TPM2B_ECC_PARAMETERs, each a
    // little-endian size and a 128-byte buffer.
    let x = b"waxseal attestation key v1";
    let mut unique = (x.len() as u16).to_le_bytes().to_vec();
    unique.extend_from_slice(x);
    unique.resize(2 + 128, 0);
    unique.extend_from_slice(&0u16.to_le_bytes());
    unique.resize(2 * (2 + 128), 0);
    std::fs::write(tpm.dir().join("ak.unique"), &unique).unwrap();
    run_ok(tpm.tool("tpm2_createprimary").args([
        "-C",
        "e",
        "-g",
        "sha256",
        "-G",
        "ecc256:ecdsa-sha256:null",
        "-a",
        "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|sign",
        "-u",
        "ak.unique",
        "-c",
        "ak.ctx",
    ]));
    run_ok(
        tpm.tool("tpm2_readpublic")
            .args(["-c", "ak.ctx", "-f", "pem", "-o", "ak.pem", "-n", "ak.name"]),
    );
    let tools_name = hex::encode(std::fs::read(tpm.dir().join("ak.name")).unwrap());
    assert_eq!(
        tools_name,
        ev["ak_name"].as_str().unwrap(),
        "tpm2-tools made another key from the AK template"
    );
    let tools_pem = std::fs::read_to_string(tpm.dir().join("ak.pem")).unwrap();
    let ours = ev["ak_spki_pem"].as_str().unwrap();
    assert_eq!(
        p256::PublicKey::from_public_key_pem(&tools_pem).unwrap(),
        p256::PublicKey::from_public_key_pem(ours).unwrap(),
        "tpm2-tools: {tools_pem}agent: {ours}"
    );
}

#[test]
fn tpm_restart_gives_device_absent_then_recovers_and_other_devices_keep_working() {
    let mut tpm = Swtpm::start();
    let keys = key_dir();
    let hsm = SoftHsm::new();
    hsm.init_token("other", "so-pin-1", "user-pin-1");
    let pin = hsm.pin_file("pin", "user-pin-1");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&tpm_device("tpm", &tpm, keys.path(), None))
        .config(&pkcs11_device("hsm", "other", &pin))
        .start();
    let made = agent
        .client()
        .generate_key("tpm/git", KeyAlg::P256)
        .unwrap();
    agent.client().generate_key("hsm/k", KeyAlg::P256).unwrap();
    agent
        .client()
        .sign_digest("tpm/git", &[1u8; 32], None, None)
        .unwrap();

    tpm.kill();
    let start = Instant::now();
    let (c, m) = code(
        agent
            .client()
            .sign_digest("tpm/git", &[2u8; 32], None, None),
    );
    assert_eq!(c, ErrorCode::DeviceAbsent, "{m}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "answered in {:?}",
        start.elapsed()
    );
    // Again, on the now dead TPM: still an answer, not a hang.
    let (c, _) = code(
        agent
            .client()
            .sign_digest("tpm/git", &[2u8; 32], None, None),
    );
    assert_eq!(c, ErrorCode::DeviceAbsent);
    let status = agent.client().status().unwrap();
    let dev = status.devices.iter().find(|d| d.name == "tpm").unwrap();
    assert!(!dev.present, "{dev:?}");
    // The other device is not affected; public keys come from the key file.
    agent
        .client()
        .sign_digest("hsm/k", &[3u8; 32], None, None)
        .unwrap();
    assert_eq!(agent.client().public_key("tpm/git").unwrap().pem, made.pem);

    tpm.restart();
    let msg = b"after the restart";
    let sig = agent
        .client()
        .sign_digest("tpm/git", &Sha256::digest(msg), None, None)
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    openssl_verify(
        agent.dir(),
        &made.pem,
        msg,
        &sig.signature.0,
        "sha256",
        false,
    );

    // A restart while the agent is connected (no failed request in between).
    tpm.kill();
    tpm.restart();
    let sig = agent
        .client()
        .sign_digest("tpm/git", &Sha256::digest(msg), None, None)
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    openssl_verify(
        agent.dir(),
        &made.pem,
        msg,
        &sig.signature.0,
        "sha256",
        false,
    );
    assert!(agent.log().contains("reconnecting"), "{}", agent.log());
}

fn lockout_counter(tpm: &Swtpm) -> u32 {
    let out = run_ok(tpm.tool("tpm2_getcap").arg("properties-variable"));
    let line = out
        .lines()
        .find(|l| l.starts_with("TPM2_PT_LOCKOUT_COUNTER:"))
        .unwrap_or_else(|| panic!("{out}"));
    let v = line["TPM2_PT_LOCKOUT_COUNTER:".len()..].trim();
    u32::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn wrong_auth_value_is_never_retried_and_lockout_says_what_to_do() {
    let tpm = Swtpm::start();
    // Two failures lock the TPM out for 10 minutes.
    run_ok(tpm.tool("tpm2_dictionarylockout").args([
        "--setup-parameters",
        "--max-tries=2",
        "--recovery-time=600",
        "--lockout-recovery-time=600",
    ]));
    let keys = key_dir();
    let pin = keys.path().join("pin");
    std::fs::write(&pin, "correct horse\n").unwrap();
    let mut agent = tpm_agent(&tpm, keys.path(), Some(&pin));
    let made = agent
        .client()
        .generate_key("tpm/git", KeyAlg::P256)
        .unwrap();
    let kf =
        KeyFile::from_pem(&std::fs::read_to_string(keys.path().join("git.pem")).unwrap()).unwrap();
    assert!(!kf.empty_auth, "a key made with a PIN has an auth value");
    let msg = b"with auth";
    let sig = agent
        .client()
        .sign_digest("tpm/git", &Sha256::digest(msg), None, None)
        .unwrap();
    openssl_verify(
        agent.dir(),
        &made.pem,
        msg,
        &sig.signature.0,
        "sha256",
        false,
    );

    // A wrong PIN: refused once by the TPM, then refused by the agent without a try.
    std::fs::write(&pin, "wrong horse\n").unwrap();
    for _ in 0..3 {
        let (c, m) = code(
            agent
                .client()
                .sign_digest("tpm/git", &[1u8; 32], None, None),
        );
        assert_eq!(c, ErrorCode::PinIncorrect, "{m}");
        assert!(!m.contains("wrong horse"), "the PIN never appears: {m}");
    }
    agent.terminate();
    assert!(!agent.log().contains("wrong horse"));
    assert!(!agent.log().contains("correct horse"));
    assert_eq!(lockout_counter(&tpm), 1, "one wrong try reached the TPM");

    // A second wrong PIN reaches the TPM once more and locks it out; then even the
    // right PIN is refused with what to do.
    let agent = tpm_agent(&tpm, keys.path(), Some(&pin));
    std::fs::write(&pin, "another wrong one\n").unwrap();
    let (c, _) = code(
        agent
            .client()
            .sign_digest("tpm/git", &[1u8; 32], None, None),
    );
    assert_eq!(c, ErrorCode::PinIncorrect);
    std::fs::write(&pin, "correct horse\n").unwrap();
    let (c, m) = code(
        agent
            .client()
            .sign_digest("tpm/git", &[1u8; 32], None, None),
    );
    assert_eq!(c, ErrorCode::PinBlocked, "{m}");
    assert!(m.contains("dictionary-attack lockout"), "{m}");
    assert!(m.contains("tpm2_dictionarylockout --clear-lockout"), "{m}");
    drop(agent);

    // The owner clears the lockout; the right PIN works again.
    run_ok(tpm.tool("tpm2_dictionarylockout").arg("--clear-lockout"));
    let agent = tpm_agent(&tpm, keys.path(), Some(&pin));
    agent
        .client()
        .sign_digest("tpm/git", &Sha256::digest(msg), None, None)
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // No PIN source for a key with an auth value: pin-required.
    drop(agent);
    let agent = tpm_agent(&tpm, keys.path(), None);
    let (c, m) = code(
        agent
            .client()
            .sign_digest("tpm/git", &[1u8; 32], None, None),
    );
    assert_eq!(c, ErrorCode::PinRequired, "{m}");
}

#[test]
fn absent_tpm_is_reported_not_fatal() {
    let keys = key_dir();
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = Agent::builder()
        .config(&format!(
            "[[device]]\nname = \"tpm\"\nkind = \"tpm\"\ntcti = \"swtpm:host=127.0.0.1,port={port}\"\nkey_dir = \"{}\"\n",
            keys.path().display()
        ))
        .start();
    let status = agent.client().status().unwrap();
    assert!(!status.devices[0].present);
    assert!(
        status.devices[0]
            .error
            .as_deref()
            .unwrap()
            .contains("cannot reach the TPM"),
        "{:?}",
        status.devices[0]
    );
    let (c, _) = code(agent.client().generate_key("tpm/k", KeyAlg::P256));
    assert_eq!(c, ErrorCode::DeviceAbsent);
    assert!(agent.client().list_keys().unwrap().keys.is_empty());
}

#[test]
fn tpm_keys_sign_for_openssh_through_ssh_sock() {
    let tpm = Swtpm::start();
    let keys = key_dir();
    let agent = tpm_agent(&tpm, keys.path(), None);
    agent
        .client()
        .generate_key("tpm/git", KeyAlg::P256)
        .unwrap();
    agent
        .client()
        .generate_key("tpm/rsa", KeyAlg::Rsa(2048))
        .unwrap();
    let ssh = |program: &str| {
        let mut c = Command::new(require(program));
        c.env("SSH_AUTH_SOCK", &agent.ssh_socket)
            .env_remove("SSH_AGENT_PID");
        c
    };
    let listed = run_ok(ssh("ssh-add").arg("-L"));
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ecdsa-sha2-nistp256 ") && l.ends_with(" tpm/git")),
        "{listed}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ssh-rsa ") && l.ends_with(" tpm/rsa")),
        "{listed}"
    );

    let dir = agent.dir().to_path_buf();
    let msg = dir.join("commit");
    std::fs::write(&msg, b"tree 4b825dc6\nsigned by a TPM key\n").unwrap();
    for (i, line) in lines.iter().enumerate() {
        let pubkey = dir.join(format!("k{i}.pub"));
        std::fs::write(&pubkey, format!("{line}\n")).unwrap();
        let _ = std::fs::remove_file(dir.join("commit.sig"));
        run_ok(
            ssh("ssh-keygen")
                .args(["-Y", "sign", "-n", "git", "-f"])
                .arg(&pubkey)
                .arg(&msg),
        );
        let allowed = dir.join("allowed");
        std::fs::write(&allowed, format!("me {line}\n")).unwrap();
        let out = Command::new("ssh-keygen")
            .args(["-Y", "verify", "-f"])
            .arg(&allowed)
            .args(["-I", "me", "-n", "git", "-s"])
            .arg(dir.join("commit.sig"))
            .stdin(std::fs::File::open(&msg).unwrap())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("Good \"git\" signature"),
            "{line}: {text}"
        );
    }
}

#[test]
fn a_pin_changed_while_the_tpm_refused_it_is_tried_not_remembered_as_refused() {
    let tpm = Swtpm::start();
    let keys = key_dir();
    let pin = keys.path().join("pin");
    std::fs::write(&pin, "correct horse\n").unwrap();
    let agent = tpm_agent(&tpm, keys.path(), Some(&pin));
    agent
        .client()
        .generate_key("tpm/git", KeyAlg::P256)
        .unwrap();
    // The PIN source gives a wrong PIN once, then the right one: the source changed
    // between the refused try and the next request.
    let fifo = PinFifo::serve(&pin, &["wrong horse"], "correct horse");
    let (c, m) = code(
        agent
            .client()
            .sign_digest("tpm/git", &[1u8; 32], None, None),
    );
    assert_eq!(c, ErrorCode::PinIncorrect, "{m}");
    // What the TPM refused is the PIN that was sent; the new one is tried and works.
    agent
        .client()
        .sign_digest("tpm/git", &[2u8; 32], None, None)
        .unwrap_or_else(|e| panic!("the changed PIN was not tried: {e}\n{}", agent.log()));
    assert!(fifo.served() >= 2);
    drop(fifo);
    assert_eq!(lockout_counter(&tpm), 1, "one wrong try reached the TPM");
}
