//! Keys generated on a real SoftHSM2 token through the agent, signatures verified by
//! RustCrypto and by OpenSSL, attributes and object ids (CKA_ID) read back by
//! pkcs11-tool, two tokens at once, and a wrong PIN that costs the token exactly one
//! login.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use p256::pkcs8::DecodePublicKey;
use pkcs11_tests::{
    audit_records, pkcs11_device, read_frame, require, run_ok, tpm_device, write_frame, Agent,
    PinFifo, SoftHsm, Spy, Swtpm, SOFTHSM_MODULE,
};
use sha2::{Digest, Sha256, Sha384};
use waxseal_agent::client::ClientError;
use waxseal_agent::keyuri::Pkcs11Uri;
use waxseal_agent::proto::{
    Bytes, ErrorCode, HashAlg, KeyAlg, Op, Purpose, RsaPadding, Sign, SignOk, MAX_MESSAGE,
};

fn one_token(label: &str, pin: &str) -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token(label, "5555", pin);
    let pin_file = hsm.pin_file("pin", pin);
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", label, &pin_file))
        .start();
    (hsm, agent)
}

fn agent_code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Agent(e)) => e.code,
        other => panic!("expected an agent error, got {other:?}"),
    }
}

/// Verifies with `openssl dgst` (or `pkeyutl -rawin` for Ed25519), a peer we did not write.
fn openssl_verify(
    dir: &std::path::Path,
    pem: &str,
    message: &[u8],
    sig: &[u8],
    alg: KeyAlg,
    pss: bool,
) {
    require("openssl");
    std::fs::write(dir.join("pub.pem"), pem).unwrap();
    std::fs::write(dir.join("msg"), message).unwrap();
    std::fs::write(dir.join("sig"), sig).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir);
    match alg {
        KeyAlg::Ed25519 => {
            cmd.args([
                "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "msg",
                "-sigfile", "sig",
            ]);
        }
        _ => {
            let hash = if alg == KeyAlg::P384 {
                "-sha384"
            } else {
                "-sha256"
            };
            cmd.args(["dgst", hash]);
            if pss {
                cmd.args([
                    "-sigopt",
                    "rsa_padding_mode:pss",
                    "-sigopt",
                    "rsa_pss_saltlen:-1",
                ]);
            }
            cmd.args(["-verify", "pub.pem", "-signature", "sig", "msg"]);
        }
    }
    let out = run_ok(&mut cmd);
    assert!(
        out.contains("Verified") || out.contains("Signature Verified Successfully"),
        "{out}"
    );
}

#[test]
fn every_algorithm_generates_signs_and_verifies() {
    let (_hsm, agent) = one_token("algs", "1234");
    let mut client = agent.client();
    let tmp = tempfile::tempdir().unwrap();
    let message = b"waxseal signs this release";
    for alg in KeyAlg::GENERATABLE {
        let name = format!("hsm/k-{alg}");
        let made = match client.generate_key(&name, alg) {
            Ok(m) => m,
            Err(ClientError::Agent(e))
                if alg == KeyAlg::Ed25519 && e.code == ErrorCode::Unsupported =>
            {
                panic!("SoftHSM2 2.6 offers CKM_EC_EDWARDS_KEY_PAIR_GEN; the agent said: {e}")
            }
            Err(e) => panic!("generate {alg}: {e}"),
        };
        assert_eq!(made.key.alg, alg);
        assert_eq!(made.key.name, name);
        assert!(
            made.key
                .uri
                .as_deref()
                .unwrap()
                .starts_with("pkcs11:token=algs;"),
            "{:?}",
            made.key.uri
        );
        let pk = client.public_key(&name).unwrap();
        assert_eq!(pk.spki_der, made.spki_der);

        let digest = if alg == KeyAlg::P384 {
            Sha384::digest(message).to_vec()
        } else {
            Sha256::digest(message).to_vec()
        };
        let paddings: &[Option<RsaPadding>] = if matches!(alg, KeyAlg::Rsa(_)) {
            &[None, Some(RsaPadding::Pss)]
        } else {
            &[None]
        };
        for &padding in paddings {
            let signed = client.sign_digest(&name, &digest, None, padding).unwrap();
            let sig = &signed.signature.0;
            let pss = padding == Some(RsaPadding::Pss);
            match alg {
                KeyAlg::P256 => {
                    use p256::ecdsa::signature::hazmat::PrehashVerifier;
                    assert_eq!(signed.alg, "ecdsa-p256-sha256");
                    let vk =
                        p256::ecdsa::VerifyingKey::from_public_key_der(&pk.spki_der.0).unwrap();
                    vk.verify_prehash(&digest, &p256::ecdsa::Signature::from_der(sig).unwrap())
                        .unwrap();
                }
                KeyAlg::P384 => {
                    use p384::ecdsa::signature::hazmat::PrehashVerifier;
                    assert_eq!(
                        signed.alg, "ecdsa-p384-sha384",
                        "P-384 digests default to SHA-384"
                    );
                    let vk =
                        p384::ecdsa::VerifyingKey::from_public_key_der(&pk.spki_der.0).unwrap();
                    vk.verify_prehash(&digest, &p384::ecdsa::Signature::from_der(sig).unwrap())
                        .unwrap();
                }
                KeyAlg::Rsa(bits) => {
                    let key = rsa::RsaPublicKey::from_public_key_der(&pk.spki_der.0).unwrap();
                    assert_eq!(sig.len() * 8, bits as usize);
                    if pss {
                        assert_eq!(signed.alg, "rsa-pss-sha256");
                        key.verify(rsa::Pss::new::<Sha256>(), &digest, sig).unwrap();
                    } else {
                        assert_eq!(signed.alg, "rsa-pkcs1v15-sha256");
                        key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, sig)
                            .unwrap();
                    }
                }
                KeyAlg::Ed25519 => {
                    assert_eq!(signed.alg, "ed25519");
                    let vk =
                        ed25519_dalek::VerifyingKey::from_public_key_der(&pk.spki_der.0).unwrap();
                    vk.verify_strict(&digest, &ed25519_dalek::Signature::from_slice(sig).unwrap())
                        .unwrap();
                }
            }
            // OpenSSL checks the same signature over the message (Ed25519: over the digest).
            let signed_bytes: &[u8] = if alg == KeyAlg::Ed25519 {
                &digest
            } else {
                message
            };
            openssl_verify(tmp.path(), &pk.pem, signed_bytes, sig, alg, pss);
        }
    }
    // A digest of the wrong length is refused before it reaches the token.
    assert_eq!(
        agent_code(client.sign_digest("hsm/k-p256", &[1u8; 20], None, None)),
        ErrorCode::BadRequest
    );
    assert_eq!(
        agent_code(client.sign_digest("hsm/k-p256", &[1u8; 32], Some(HashAlg::Sha384), None)),
        ErrorCode::BadRequest
    );
    // SHA-512 digests with RSA.
    let d512 = sha2::Sha512::digest(message);
    let signed = client
        .sign_digest("hsm/k-rsa2048", &d512, Some(HashAlg::Sha512), None)
        .unwrap();
    assert_eq!(signed.alg, "rsa-pkcs1v15-sha512");
    let key = rsa::RsaPublicKey::from_public_key_der(
        &client.public_key("hsm/k-rsa2048").unwrap().spki_der.0,
    )
    .unwrap();
    key.verify(
        rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
        &d512,
        &signed.signature.0,
    )
    .unwrap();

    let listed = client.list_keys().unwrap();
    let names: Vec<&str> = listed.keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names.len(), KeyAlg::GENERATABLE.len(), "{names:?}");
    assert_eq!(
        agent_code(client.generate_key("hsm/k-p256", KeyAlg::P256)),
        ErrorCode::KeyExists
    );
    assert_eq!(
        agent_code(client.generate_key("hsm/weak", KeyAlg::Rsa(1024))),
        ErrorCode::Unsupported
    );
    assert_eq!(
        agent_code(client.public_key("hsm/none")),
        ErrorCode::UnknownKey
    );
    assert_eq!(
        agent_code(client.public_key("nodev/x")),
        ErrorCode::UnknownKey
    );
}

#[test]
fn private_keys_are_sensitive_and_never_extractable() {
    let (hsm, agent) = one_token("attrs", "4321");
    let mut client = agent.client();
    client.generate_key("hsm/ec", KeyAlg::P256).unwrap();
    client.generate_key("hsm/rsa", KeyAlg::Rsa(2048)).unwrap();
    let out = hsm.pkcs11_tool(&[
        "--token-label",
        "attrs",
        "--login",
        "--pin",
        "4321",
        "--list-objects",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let private: Vec<&str> = text
        .split("Private Key Object")
        .skip(1)
        .map(|b| b.split("Object;").next().unwrap_or(b))
        .collect();
    assert_eq!(private.len(), 2, "two private keys expected:\n{text}");
    for block in private {
        let access = block
            .lines()
            .find(|l| l.trim_start().starts_with("Access:"))
            .unwrap_or_else(|| panic!("no Access line:\n{block}"));
        assert!(access.contains("sensitive"), "{access}");
        assert!(access.contains("always sensitive"), "{access}");
        assert!(access.contains("never extractable"), "{access}");
        assert!(access.contains("local"), "generated on the token: {access}");
        let terms: Vec<&str> = access
            .split_once(':')
            .unwrap()
            .1
            .split(',')
            .map(str::trim)
            .collect();
        assert!(!terms.contains(&"extractable"), "{access}");
        let usage = block
            .lines()
            .find(|l| l.trim_start().starts_with("Usage:"))
            .unwrap();
        assert!(usage.contains("sign"), "{usage}");
        assert!(
            !usage.contains("decrypt") && !usage.contains("derive") && !usage.contains("unwrap"),
            "signing keys only: {usage}\n{text}"
        );
    }
    for block in text.split("Public Key Object").skip(1) {
        let usage = block
            .lines()
            .find(|l| l.trim_start().starts_with("Usage:"))
            .unwrap();
        assert!(usage.trim_end().ends_with("verify"), "verify only: {usage}");
    }
    // Private objects are invisible without login: CKA_PRIVATE is set.
    let out = hsm.pkcs11_tool(&[
        "--token-label",
        "attrs",
        "--list-objects",
        "--type",
        "privkey",
    ]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Private Key Object"));
}

#[test]
fn two_tokens_on_two_devices_and_an_absent_one() {
    let hsm = SoftHsm::new();
    hsm.init_token("alpha", "5555", "1111");
    hsm.init_token("beta", "5555", "2222");
    let a = hsm.pin_file("a.pin", "1111");
    let b = hsm.pin_file("b.pin", "2222");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("a", "alpha", &a))
        .config(&pkcs11_device("b", "beta", &b))
        .config(&pkcs11_device("gone", "missing-token", &b))
        .start();
    let mut client = agent.client();
    client.generate_key("a/one", KeyAlg::P256).unwrap();
    client.generate_key("b/two", KeyAlg::P384).unwrap();
    // Same label on both devices: two different keys.
    client.generate_key("b/one", KeyAlg::P256).unwrap();
    let keys = client.list_keys().unwrap().keys;
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["a/one", "b/one", "b/two"]);
    assert_ne!(
        client.public_key("a/one").unwrap().spki_der,
        client.public_key("b/one").unwrap().spki_der
    );
    let d = Sha256::digest(b"x");
    client.sign_digest("a/one", &d, None, None).unwrap();
    client.sign_digest("b/one", &d, None, None).unwrap();
    assert_eq!(
        agent_code(client.sign_digest("gone/k", &d, None, None)),
        ErrorCode::DeviceAbsent
    );
    let status = client.status().unwrap();
    assert_eq!(status.keys, 3);
    let gone = status.devices.iter().find(|d| d.name == "gone").unwrap();
    assert!(!gone.present);
    assert!(
        gone.error.as_deref().unwrap().contains("missing-token"),
        "{gone:?}"
    );
    assert!(status.devices.iter().filter(|d| d.present).count() == 2);
}

/// An agent on a token (user PIN 246810) behind OpenSC's `pkcs11-spy`, whose log
/// counts the module calls; the PIN file holds `pin`, `extra` is added to the device.
fn spied_agent(pin: &str, extra: &str) -> (SoftHsm, std::path::PathBuf, Spy, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token("pins", "5555", "246810");
    let pin_file = hsm.pin_file("pin", pin);
    let spy = Spy::new(&hsm);
    let agent = spy
        .env(Agent::builder())
        .softhsm(&hsm)
        .config(&spy.device("hsm", "pins", &pin_file, extra))
        .start();
    (hsm, pin_file, spy, agent)
}

#[test]
fn wrong_pin_costs_exactly_one_login_and_is_never_retried() {
    let (_hsm, pin_file, spy, agent) = spied_agent("000000", "");
    let mut client = agent.client();
    let d = Sha256::digest(b"x");
    let first = client.sign_digest("hsm/any", &d, None, None);
    let Err(ClientError::Agent(e)) = first else {
        panic!("{first:?}")
    };
    assert_eq!(e.code, ErrorCode::PinIncorrect);
    assert!(
        e.message.contains("file:"),
        "names the PIN source: {}",
        e.message
    );
    assert!(
        !e.message.contains("000000"),
        "never shows the PIN: {}",
        e.message
    );
    for _ in 0..3 {
        assert_eq!(
            agent_code(client.sign_digest("hsm/any", &d, None, None)),
            ErrorCode::PinIncorrect
        );
        assert_eq!(
            agent_code(client.generate_key("hsm/k", KeyAlg::P256)),
            ErrorCode::PinIncorrect
        );
    }
    let status = client.status().unwrap();
    assert!(status.devices[0]
        .error
        .as_deref()
        .unwrap()
        .contains("pin-incorrect"));
    assert_eq!(
        spy.calls("C_Login"),
        1,
        "one C_Login for seven requests; spy log: {}",
        spy.log.display()
    );
    assert!(
        !agent.log().contains("000000"),
        "the PIN never reaches the log"
    );

    // Fixing the PIN source is enough: the next request logs in once and works.
    std::fs::write(&pin_file, "246810\n").unwrap();
    client.generate_key("hsm/k", KeyAlg::P256).unwrap();
    client.sign_digest("hsm/k", &d, None, None).unwrap();
    client.sign_digest("hsm/k", &d, None, None).unwrap();
    assert_eq!(spy.calls("C_Login"), 2);
    assert!(!agent.log().contains("246810"));
}

#[test]
fn missing_pin_source_is_pin_required() {
    let hsm = SoftHsm::new();
    hsm.init_token("nopin", "5555", "1234");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&format!(
            "[[device]]\nname = \"hsm\"\nkind = \"pkcs11\"\nmodule = \"{SOFTHSM_MODULE}\"\ntoken = \"nopin\"\n"
        ))
        .config("[[device]]\nname = \"envpin\"\nkind = \"pkcs11\"\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken = \"nopin\"\npin = \"env:WAXSEAL_TEST_UNSET_PIN\"\n")
        .start();
    let mut client = agent.client();
    let e = client.generate_key("hsm/k", KeyAlg::P256);
    let Err(ClientError::Agent(e)) = e else {
        panic!("{e:?}")
    };
    assert_eq!(e.code, ErrorCode::PinRequired);
    assert!(
        e.message.contains("pin = "),
        "says how to fix it: {}",
        e.message
    );
    assert_eq!(
        agent_code(client.generate_key("envpin/k", KeyAlg::P256)),
        ErrorCode::PinRequired
    );
}

#[test]
fn env_pin_source_and_serial_selector() {
    let hsm = SoftHsm::new();
    hsm.init_token("bys", "5555", "7777");
    // Find the serial with pkcs11-tool, a peer we did not write.
    let out = hsm.pkcs11_tool(&["--list-token-slots"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let serial = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("serial num")
                .map(|s| s.trim_start_matches([' ', ':']).trim().to_string())
        })
        .unwrap_or_else(|| panic!("no serial in:\n{text}"));
    let agent = Agent::builder()
        .softhsm(&hsm)
        .env("TEST_PIN", "7777")
        .config(&format!(
            "[[device]]\nname = \"s\"\nkind = \"pkcs11\"\nmodule = \"{SOFTHSM_MODULE}\"\nserial = \"{serial}\"\npin = \"env:TEST_PIN\"\nsessions = 2\n"
        ))
        .start();
    let mut client = agent.client();
    client.generate_key("s/k", KeyAlg::P256).unwrap();
    let uri = client.list_keys().unwrap().keys[0].uri.clone().unwrap();
    assert!(uri.contains(&format!("serial={serial}")), "{uri}");
}

#[test]
fn a_pin_changed_after_the_token_refused_it_is_tried_not_remembered_as_refused() {
    let (_hsm, pin_file, spy, agent) = spied_agent("246810", "sessions = 1\n");
    let mut client = agent.client();
    client.generate_key("hsm/k", KeyAlg::P256).unwrap();
    // Log out (the agent's lock drops held PINs), then let the source give a wrong PIN
    // once and the right one after.
    client.lock().unwrap();
    client.unlock(None).unwrap();
    let fifo = PinFifo::serve(&pin_file, &["000000"], "246810");
    let d = Sha256::digest(b"x");
    assert_eq!(
        agent_code(client.sign_digest("hsm/k", &d, None, None)),
        ErrorCode::PinIncorrect
    );
    client
        .sign_digest("hsm/k", &d, None, None)
        .unwrap_or_else(|e| panic!("the changed PIN was not tried: {e}\n{}", agent.log()));
    assert!(fifo.served() >= 2);
    drop(fifo);
    assert_eq!(
        spy.calls("C_Login"),
        3,
        "the first login, the refused one, the changed PIN; spy log: {}",
        spy.log.display()
    );
}

/// A `sign` of `message` with purpose `purpose` and, when given, a digest and a hash
/// beside it (which the protocol refuses).
fn message_op(
    key: &str,
    purpose: Purpose,
    message: &[u8],
    digest: &[u8],
    hash: Option<HashAlg>,
) -> Op {
    Op::Sign(Sign {
        key: key.into(),
        purpose,
        hash,
        digest: Bytes(digest.to_vec()),
        tbs: None,
        name: (purpose == Purpose::Blob).then(|| "artifact".into()),
        padding: None,
        message: Some(Bytes(message.to_vec())),
        statement: None,
    })
}

fn bad_request(r: Result<SignOk, ClientError>, says: &str) {
    match r {
        Err(ClientError::Agent(e)) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
            assert!(
                e.message.contains(says),
                "expected {says:?} in: {}",
                e.message
            );
        }
        other => panic!("expected bad-request ({says}), got {other:?}"),
    }
}

#[test]
fn an_ed25519_key_signs_a_whole_message_and_the_audit_log_records_its_hash() {
    let (_hsm, agent) = one_token("eddsa", "1234");
    let mut client = agent.client();
    client.generate_key("hsm/ed", KeyAlg::Ed25519).unwrap();
    client.generate_key("hsm/ec", KeyAlg::P256).unwrap();
    let pk = client.public_key("hsm/ed").unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_public_key_der(&pk.spki_der.0).unwrap();

    let message: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    let signed = client.sign_message("hsm/ed", &message).unwrap();
    assert_eq!(signed.alg, "ed25519");
    let sig = ed25519_dalek::Signature::from_slice(&signed.signature.0).unwrap();
    vk.verify_strict(&message, &sig)
        .expect("the signature is over the message itself");
    let mut changed = message.clone();
    changed[999] ^= 1;
    assert!(vk.verify_strict(&changed, &sig).is_err());
    let tmp = tempfile::tempdir().unwrap();
    openssl_verify(
        tmp.path(),
        &pk.pem,
        &message,
        &signed.signature.0,
        KeyAlg::Ed25519,
        false,
    );

    // The bounds: one byte and 64 KiB are signed; none and one more are refused.
    let one = client.sign_message("hsm/ed", b"x").unwrap();
    vk.verify_strict(
        b"x",
        &ed25519_dalek::Signature::from_slice(&one.signature.0).unwrap(),
    )
    .unwrap();
    let most = vec![0x5au8; MAX_MESSAGE];
    let signed_most = client.sign_message("hsm/ed", &most).unwrap();
    vk.verify_strict(
        &most,
        &ed25519_dalek::Signature::from_slice(&signed_most.signature.0).unwrap(),
    )
    .unwrap();
    bad_request(client.sign_message("hsm/ed", b""), "`message` is empty");
    bad_request(
        client.sign_message("hsm/ed", &vec![0u8; MAX_MESSAGE + 1]),
        &format!("at most {MAX_MESSAGE}"),
    );
    // Alone, and for purpose digest only.
    let d = Sha256::digest(&message);
    bad_request(
        client.call(message_op("hsm/ed", Purpose::Digest, &message, &d, None)),
        "exclude each other",
    );
    bad_request(
        client.call(message_op(
            "hsm/ed",
            Purpose::Digest,
            &message,
            &[],
            Some(HashAlg::Sha512),
        )),
        "takes no `hash`",
    );
    bad_request(
        client.call(message_op("hsm/ed", Purpose::Blob, &message, &[], None)),
        "only for purpose digest, not blob",
    );
    // Only Ed25519 keys sign messages: the agent knows the key's algorithm.
    bad_request(
        client.sign_message("hsm/ec", &message),
        "only for Ed25519 keys, and hsm/ec is a p256 key",
    );

    let records = audit_records(&agent.state_dir);
    let sha = hex::encode(Sha256::digest(&message));
    let of = |event: &str, key: &str| -> Vec<&serde_json::Value> {
        records
            .iter()
            .filter(|r| {
                r["event"] == event && r["key"] == key && r["message_sha256"] == sha.as_str()
            })
            .collect()
    };
    let intents = of("intent", "hsm/ed");
    assert_eq!(intents.len(), 1, "{records:#?}");
    assert_eq!(intents[0]["purpose"], "digest");
    assert_eq!(intents[0]["message_bytes"], 1000);
    assert!(intents[0].get("digest").is_none(), "{}", intents[0]);
    let signed = of("signed", "hsm/ed");
    assert_eq!(signed.len(), 1, "{records:#?}");
    assert_eq!(signed[0]["intent"], intents[0]["seq"]);
    let refused = of("refused", "hsm/ec");
    assert_eq!(refused.len(), 1, "{records:#?}");
    assert_eq!(refused[0]["code"], "bad-request");
    assert!(
        records
            .iter()
            .all(|r| r["key"] != "hsm/ec" || r["event"] == "refused"),
        "nothing was signed with the P-256 key: {records:#?}"
    );
}

#[test]
fn status_says_which_devices_take_their_pin_from_the_client() {
    let hsm = SoftHsm::new();
    hsm.init_token("filepin", "5555", "1234");
    hsm.init_token("typed", "5555", "4321");
    let pin = hsm.pin_file("pin", "1234");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("file", "filepin", &pin))
        .config(&format!(
            "[[device]]\nname = \"typed\"\nkind = \"pkcs11\"\nmodule = \"{SOFTHSM_MODULE}\"\ntoken = \"typed\"\npin = \"prompt\"\n"
        ))
        .start();
    let status = agent.client().status().unwrap();
    let device = |name: &str| status.devices.iter().find(|d| d.name == name).unwrap();
    assert!(device("typed").pin_prompt, "{status:?}");
    assert!(!device("file").pin_prompt, "{status:?}");
    // On the wire the member is there only when true.
    let mut raw = agent.raw();
    write_frame(&mut raw, br#"{"id":1,"op":"status"}"#);
    let answer = read_frame(&mut raw).unwrap();
    let devices = answer["ok"]["devices"].as_array().unwrap();
    let wire = |name: &str| devices.iter().find(|d| d["name"] == name).unwrap();
    assert_eq!(wire("typed")["pin_prompt"], true, "{answer}");
    assert!(wire("file").get("pin_prompt").is_none(), "{answer}");
}

/// `public_key` looks for the key's certificate on every call (nothing is cached) at
/// the cost of one object search, counted by OpenSC's spy.
#[test]
fn public_key_searches_the_token_once_per_call_for_a_certificate() {
    let (_hsm, _pin_file, spy, agent) = spied_agent("246810", "");
    let mut client = agent.client();
    client.generate_key("hsm/k", KeyAlg::P256).unwrap();
    client.public_key("hsm/k").unwrap();
    let before = spy.calls("C_FindObjectsInit");
    for _ in 0..10 {
        assert_eq!(client.public_key("hsm/k").unwrap().certificate, None);
    }
    spy.wait_calls("C_FindObjectsInit", before + 10);
}

/// The `ID:` that `pkcs11-tool --list-objects` reports for the object of `kind`
/// (`Private Key`, `Public Key`, `Certificate`…) labelled `label`, or `None` when no
/// such object is listed.
fn listed_id(listing: &str, kind: &str, label: &str) -> Option<String> {
    listing
        .split(&format!("{kind} Object"))
        .skip(1)
        .map(|b| b.split(" Object;").next().unwrap_or(b))
        .find(|block| {
            block
                .lines()
                .any(|l| l.trim() == format!("label:      {label}"))
        })
        .map(|block| {
            let line = block
                .lines()
                .find(|l| l.trim_start().starts_with("ID:"))
                .unwrap_or_else(|| panic!("no ID line:\n{block}"));
            line.split_once(':').unwrap().1.trim().to_string()
        })
}

/// Every object on the token, as `pkcs11-tool --login --list-objects` shows them.
fn list_objects(hsm: &SoftHsm, token: &str, pin: &str) -> String {
    let out = hsm.pkcs11_tool(&[
        "--token-label",
        token,
        "--login",
        "--pin",
        pin,
        "--list-objects",
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn list_keys_and_generate_key_show_the_tokens_own_cka_ids() {
    let (hsm, agent) = one_token("ids", "4321");
    let mut client = agent.client();

    // Without `raw_id`: 16 random bytes, shown as the token has them.
    let random = client.generate_key("hsm/random", KeyAlg::P256).unwrap();
    let random_id = random.key.id.clone().expect("a PKCS#11 key has an id").0;
    assert_eq!(random_id.len(), 16);
    let listing = list_objects(&hsm, "ids", "4321");
    assert_eq!(
        listed_id(&listing, "Private Key", "random"),
        Some(hex::encode(&random_id)),
        "{listing}"
    );

    // With `raw_id`: exactly those bytes, on the private and the public key.
    let chosen_id = [0x00, 0x99, 0xfe];
    let chosen = client
        .generate_key_id("hsm/chosen", KeyAlg::P256, &chosen_id)
        .unwrap();
    assert_eq!(chosen.key.id, Some(Bytes(chosen_id.to_vec())));
    let uri = Pkcs11Uri::parse(chosen.key.uri.as_deref().unwrap()).unwrap();
    assert_eq!(uri.id.as_deref(), Some(&chosen_id[..]));
    let listing = list_objects(&hsm, "ids", "4321");
    for kind in ["Private Key", "Public Key"] {
        assert_eq!(
            listed_id(&listing, kind, "chosen").as_deref(),
            Some("0099fe"),
            "{kind}:\n{listing}"
        );
    }
    // list_keys shows, for each key, the CKA_ID pkcs11-tool reports.
    let keys = client.list_keys().unwrap().keys;
    assert_eq!(keys.len(), 2);
    for key in &keys {
        let label = key.name.strip_prefix("hsm/").unwrap();
        assert_eq!(
            key.id.as_ref().map(|id| hex::encode(&id.0)),
            listed_id(&listing, "Private Key", label),
            "{key:?}"
        );
    }
    // The pair belongs together: its public key verifies its signature.
    let digest = Sha256::digest(b"paired by CKA_ID");
    let sig = client
        .sign_digest("hsm/chosen", &digest, None, None)
        .unwrap();
    let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&chosen.spki_der.0).unwrap();
    let sig = p256::ecdsa::Signature::from_der(&sig.signature.0).unwrap();
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    vk.verify_prehash(&digest, &sig).unwrap();

    // An id that a key has already: refused, and nothing is made.
    let taken = client.generate_key_id("hsm/again", KeyAlg::P256, &chosen_id);
    match taken {
        Err(ClientError::Agent(e)) => {
            assert_eq!(e.code, ErrorCode::KeyExists);
            assert!(
                e.message.contains("0x0099fe") && e.message.contains("exists already"),
                "{}",
                e.message
            );
        }
        other => panic!("expected key-exists, got {other:?}"),
    }
    // So is one that another kind of object has (an AES key made by pkcs11-tool).
    hsm.pkcs11_tool(&[
        "--token-label",
        "ids",
        "--login",
        "--pin",
        "4321",
        "--keygen",
        "--key-type",
        "AES:16",
        "--id",
        "4242",
        "--label",
        "aes",
    ]);
    let listing = list_objects(&hsm, "ids", "4321");
    assert_eq!(
        listed_id(&listing, "Secret Key", "aes").as_deref(),
        Some("4242"),
        "{listing}"
    );
    assert_eq!(
        agent_code(client.generate_key_id("hsm/again", KeyAlg::P256, b"BB")),
        ErrorCode::KeyExists
    );
    let listing = list_objects(&hsm, "ids", "4321");
    assert_eq!(
        listed_id(&listing, "Private Key", "again"),
        None,
        "{listing}"
    );
    assert_eq!(
        listed_id(&listing, "Public Key", "again"),
        None,
        "{listing}"
    );
    let names: Vec<String> = client
        .list_keys()
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["hsm/chosen", "hsm/random"]);
}

#[test]
fn a_raw_id_is_refused_on_a_tpm_whose_keys_have_none() {
    let tpm = Swtpm::start();
    let keys = tempfile::Builder::new()
        .prefix("tpm-keys-")
        .tempdir()
        .unwrap();
    let agent = Agent::builder()
        .config(&tpm_device("tpm", &tpm, keys.path(), None))
        .start();
    let mut client = agent.client();
    match client.generate_key_id("tpm/k", KeyAlg::P256, b"99") {
        Err(ClientError::Agent(e)) => {
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(
                e.message.contains("raw_id") && e.message.contains("tpm device"),
                "{}",
                e.message
            );
        }
        other => panic!("expected bad-request, got {other:?}"),
    }
    assert!(
        !keys.path().join("k.pem").exists(),
        "no key file is written for a refused request"
    );
    // Without `raw_id` the same key is made, and a TPM key has no object id.
    let made = client.generate_key("tpm/k", KeyAlg::P256).unwrap();
    assert_eq!(made.key.id, None);
    assert!(keys.path().join("k.pem").exists());
    let listed = client.list_keys().unwrap().keys;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), &listed[0].id), ("tpm/k", &None));
}
