//! `sigstore-kms-waxseal`, the cosign/Fulcio KMS plug-in, driven exactly as sigstore's
//! Go `cliplugin.PluginClient` drives it: `argv = [plugin, "v1", JSON]`, the message on
//! stdin, exactly one JSON object read back from stdout. Keys live on a real SoftHSM2
//! token behind a real agent; signatures are checked by OpenSSL and by the plug-in's
//! own `verifySignature`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pkcs11_tests::{bins, pkcs11_device, require, run_ok, Agent, SoftHsm};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha384};
use waxseal_agent::proto::KeyAlg;

/// Go's `crypto.SHA256` and `crypto.SHA384`.
const GO_SHA256: u64 = 5;
const GO_SHA384: u64 = 6;

const MESSAGE: &[u8] = b"waxseal release 1.2.3\n";

/// Runs the plug-in with raw argv and stdin; returns the one JSON object on stdout.
fn run_raw(socket: &Path, args: &[&str], stdin: &[u8]) -> Value {
    let mut child = Command::new(&bins().kms_plugin)
        .args(args)
        .env("WAXSEAL_SOCK", socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sigstore-kms-waxseal");
    // Like Go's exec.Cmd, tolerate a plug-in that does not read all of stdin.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    let mut values = serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Value>();
    let value = match values.next() {
        Some(Ok(v)) => v,
        other => panic!(
            "stdout is not one JSON object ({other:?}): {:?}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    };
    assert!(
        values.next().is_none(),
        "more than one JSON value on stdout: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(value.is_object(), "{value}");
    // The exit status is not part of the protocol, but it is kept honest.
    assert_eq!(
        out.status.success(),
        value.get("errorMessage").is_none(),
        "exit status {} for {value}",
        out.status
    );
    value
}

/// `initOptions` as `cliplugin.LoadSignerVerifier` sends them.
fn init(key: &str, hash_func: u64) -> Value {
    json!({
        "protocolVersion": "v1",
        "keyResourceID": key,
        "hashFunc": hash_func,
        "rpcOptions": {"keyVersion": "", "remoteVerification": false},
    })
}

/// Calls `method` with `args` (the object under the method's name) the way sigstore does.
fn call(socket: &Path, init: Value, method: &str, args: Value, stdin: &[u8]) -> Value {
    let mut plugin_args = json!({"initOptions": init, "methodName": method});
    plugin_args[method] = args;
    run_raw(socket, &["v1", &plugin_args.to_string()], stdin)
}

/// The result under `method`, failing the test on an `errorMessage`.
fn ok(resp: Value, method: &str) -> Value {
    assert!(resp.get("errorMessage").is_none(), "{method}: {resp}");
    resp.get(method)
        .unwrap_or_else(|| panic!("no `{method}` in {resp}"))
        .clone()
}

/// The `errorMessage`, failing the test on success.
fn error(resp: Value) -> String {
    resp.get("errorMessage")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("expected an errorMessage, got {resp}"))
        .to_string()
}

/// `messageOptions` as `encoding.PackMessageOptions` writes them: `digest` is `null`
/// when no digest was given, `hashFunc` is left out when no signer opts were given.
fn message_options(digest: Option<&[u8]>, hash_func: Option<u64>) -> Value {
    let mut m = json!({"digest": digest.map(|d| B64.encode(d))});
    if let Some(h) = hash_func {
        m["hashFunc"] = json!(h);
    }
    m
}

fn rpc() -> Value {
    json!({"keyVersion": "", "remoteVerification": false})
}

fn sign(socket: &Path, init: Value, opts: Value, message: &[u8]) -> Vec<u8> {
    let args = json!({"signOptions": {"rpcOptions": rpc(), "messageOptions": opts}});
    let resp = ok(
        call(socket, init, "signMessage", args, message),
        "signMessage",
    );
    B64.decode(resp["signature"].as_str().unwrap()).unwrap()
}

fn verify(socket: &Path, init: Value, sig: &[u8], opts: Value, message: &[u8]) -> Value {
    let args = json!({
        "signature": B64.encode(sig),
        "verifyOptions": {"rpcOptions": rpc(), "messageOptions": opts},
    });
    call(socket, init, "verifySignature", args, message)
}

/// `publicKey`: the PEM text (the JSON holds base64 of the PEM bytes).
fn plugin_pem(socket: &Path, key: &str) -> String {
    let args = json!({"publicKeyOptions": {"rpcOptions": rpc()}});
    let resp = ok(
        call(socket, init(key, GO_SHA256), "publicKey", args, b""),
        "publicKey",
    );
    String::from_utf8(B64.decode(resp["publicKeyPEM"].as_str().unwrap()).unwrap()).unwrap()
}

/// A token with one agent in front of it, and `keys` generated on it.
fn agent_with(label: &str, keys: &[(&str, KeyAlg)]) -> (SoftHsm, Agent) {
    let hsm = SoftHsm::new();
    hsm.init_token(label, "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", label, &pin))
        .start();
    let mut client = agent.client();
    for (name, alg) in keys {
        client.generate_key(name, *alg).unwrap();
    }
    (hsm, agent)
}

/// `openssl dgst -<hash> -verify pub.pem -signature sig msg`.
fn openssl_verify(dir: &Path, pem: &str, hash: &str, message: &[u8], sig: &[u8]) {
    require("openssl");
    std::fs::write(dir.join("pub.pem"), pem).unwrap();
    std::fs::write(dir.join("msg"), message).unwrap();
    std::fs::write(dir.join("sig"), sig).unwrap();
    let out = run_ok(Command::new("openssl").current_dir(dir).args([
        "dgst",
        &format!("-{hash}"),
        "-verify",
        "pub.pem",
        "-signature",
        "sig",
        "msg",
    ]));
    assert!(out.contains("Verified OK"), "{out}");
}

/// A socket path with nothing listening on it.
fn dead_socket(dir: &Path) -> std::path::PathBuf {
    dir.join("nobody-listens.sock")
}

#[test]
fn default_and_supported_algorithms_need_no_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = dead_socket(tmp.path());
    let default = ok(
        call(
            &socket,
            init("", GO_SHA256),
            "defaultAlgorithm",
            json!({}),
            b"",
        ),
        "defaultAlgorithm",
    );
    assert_eq!(default["defaultAlgorithm"], "ecdsa-sha2-256-nistp256");
    let supported = ok(
        call(
            &socket,
            init("", GO_SHA256),
            "supportedAlgorithms",
            json!({}),
            b"",
        ),
        "supportedAlgorithms",
    );
    let names: Vec<&str> = supported["supportedAlgorithms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "ecdsa-sha2-256-nistp256",
            "ecdsa-sha2-384-nistp384",
            "rsa-sign-pkcs1-2048-sha256",
            "rsa-sign-pkcs1-3072-sha256",
            "rsa-sign-pkcs1-4096-sha256",
        ]
    );
}

#[test]
fn public_key_is_the_agents_key() {
    let (_hsm, agent) = agent_with("pub", &[("hsm/release", KeyAlg::P256)]);
    let tmp = tempfile::tempdir().unwrap();
    let from_agent = agent.client().public_key("hsm/release").unwrap();
    // sigstore strips `waxseal://`; a full reference works too.
    for reference in ["hsm/release", "waxseal://hsm/release"] {
        let pem = plugin_pem(&agent.socket, reference);
        assert_eq!(pem, from_agent.pem, "{reference}");
        // OpenSSL reads it as the same SubjectPublicKeyInfo.
        std::fs::write(tmp.path().join("pub.pem"), &pem).unwrap();
        require("openssl");
        let out = Command::new("openssl")
            .current_dir(tmp.path())
            .args(["pkey", "-pubin", "-in", "pub.pem", "-outform", "DER"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, from_agent.spki_der.0, "{reference}");
    }
}

#[test]
fn create_key_makes_a_key_the_agent_lists_and_returns_an_existing_one() {
    let (_hsm, agent) = agent_with("create", &[]);
    let create = |key: &str, algorithm: &str| {
        call(
            &agent.socket,
            init(key, GO_SHA256),
            "createKey",
            json!({"algorithm": algorithm}),
            b"",
        )
    };
    for (key, algorithm, alg) in [
        ("hsm/cosign", "ecdsa-sha2-256-nistp256", KeyAlg::P256),
        ("hsm/ca", "ecdsa-sha2-384-nistp384", KeyAlg::P384),
        ("hsm/rsa", "rsa-sign-pkcs1-2048-sha256", KeyAlg::Rsa(2048)),
    ] {
        let made = ok(create(key, algorithm), "createKey");
        let pem = B64.decode(made["publicKeyPEM"].as_str().unwrap()).unwrap();
        let listed = agent.client().list_keys().unwrap();
        let info = listed
            .keys
            .iter()
            .find(|k| k.name == key)
            .unwrap_or_else(|| panic!("{key} not listed: {listed:?}"));
        assert_eq!(info.alg, alg);
        assert_eq!(
            String::from_utf8(pem).unwrap(),
            agent.client().public_key(key).unwrap().pem
        );
    }
    // Again: the existing key's public key, as sigstore's KMS providers answer.
    let before = agent.client().public_key("hsm/cosign").unwrap().pem;
    let again = ok(
        create("waxseal://hsm/cosign", "ecdsa-sha2-256-nistp256"),
        "createKey",
    );
    assert_eq!(
        B64.decode(again["publicKeyPEM"].as_str().unwrap()).unwrap(),
        before.as_bytes()
    );
    // Also when another algorithm is asked for: the key is never replaced.
    let other = ok(
        create("hsm/cosign", "rsa-sign-pkcs1-2048-sha256"),
        "createKey",
    );
    assert_eq!(
        B64.decode(other["publicKeyPEM"].as_str().unwrap()).unwrap(),
        before.as_bytes()
    );
    assert_eq!(agent.client().list_keys().unwrap().keys.len(), 3);

    let e = error(create("hsm/other", "any-algorithm"));
    assert!(
        e.contains("any-algorithm") && e.contains("ecdsa-sha2-256-nistp256"),
        "{e}"
    );
    let e = error(create("hsm/ed", "ed25519"));
    assert!(e.contains("Ed25519"), "{e}");
    let e = error(create("nodevice", "ecdsa-sha2-256-nistp256"));
    assert!(e.contains("DEVICE/LABEL"), "{e}");
    assert_eq!(agent.client().list_keys().unwrap().keys.len(), 3);
    // The algorithm is checked before the agent is asked.
    let tmp = tempfile::tempdir().unwrap();
    let e = error(call(
        &dead_socket(tmp.path()),
        init("hsm/x", GO_SHA256),
        "createKey",
        json!({"algorithm": "rsa-sign-pss-2048-sha256"}),
        b"",
    ));
    assert!(e.contains("unsupported algorithm"), "{e}");
}

#[test]
fn sign_digest_and_verify_each_key() {
    let (_hsm, agent) = agent_with(
        "digest",
        &[
            ("hsm/p256", KeyAlg::P256),
            ("hsm/p384", KeyAlg::P384),
            ("hsm/rsa", KeyAlg::Rsa(2048)),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let socket = &agent.socket;
    for (key, go_hash, hash) in [
        ("hsm/p256", GO_SHA256, "sha256"),
        ("hsm/p384", GO_SHA384, "sha384"),
        ("hsm/rsa", GO_SHA256, "sha256"),
    ] {
        let digest = if go_hash == GO_SHA384 {
            Sha384::digest(MESSAGE).to_vec()
        } else {
            Sha256::digest(MESSAGE).to_vec()
        };
        let pem = agent.client().public_key(key).unwrap().pem;
        // As cliplugin.CryptoSigner.Sign does it (Fulcio): digest and hashFunc, empty
        // stdin; then with the hashFunc left out, to be inferred from the length.
        for hash_func in [Some(go_hash), None] {
            let opts = message_options(Some(&digest), hash_func);
            let sig = sign(socket, init(key, GO_SHA256), opts.clone(), b"");
            openssl_verify(tmp.path(), &pem, hash, MESSAGE, &sig);
            // The plug-in's own check: by digest, and by message.
            ok(
                verify(socket, init(key, GO_SHA256), &sig, opts.clone(), b""),
                "verifySignature",
            );
            ok(
                verify(
                    socket,
                    init(key, go_hash),
                    &sig,
                    message_options(None, None),
                    MESSAGE,
                ),
                "verifySignature",
            );
            // A tampered message, or a tampered signature, does not verify.
            let e = error(verify(
                socket,
                init(key, go_hash),
                &sig,
                message_options(None, None),
                b"waxseal release 1.2.4\n",
            ));
            assert!(e.contains("does not match") && e.contains(key), "{e}");
            let mut bad = sig.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            error(verify(socket, init(key, GO_SHA256), &bad, opts, b""));
        }
    }
    // A digest of no SHA-2 length, and one that contradicts hashFunc.
    let e = error(call(
        socket,
        init("hsm/p256", GO_SHA256),
        "signMessage",
        json!({"signOptions": {"messageOptions": message_options(Some(b"bad digest"), None)}}),
        b"",
    ));
    assert!(e.contains("10 bytes"), "{e}");
    let e = error(call(
        socket,
        init("hsm/p256", GO_SHA256),
        "signMessage",
        json!({"signOptions": {"messageOptions": message_options(Some(&[7; 32]), Some(GO_SHA384))}}),
        b"",
    ));
    assert!(e.contains("32 bytes") && e.contains("sha384"), "{e}");
}

#[test]
fn sign_message_from_stdin_infers_the_hash() {
    let (_hsm, agent) = agent_with(
        "message",
        &[
            ("hsm/p256", KeyAlg::P256),
            ("hsm/p384", KeyAlg::P384),
            ("hsm/rsa", KeyAlg::Rsa(2048)),
        ],
    );
    let tmp = tempfile::tempdir().unwrap();
    let socket = &agent.socket;
    let message: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    // No hashFunc anywhere: the key's own hash.
    for (key, hash) in [
        ("waxseal://hsm/p256", "sha256"),
        ("hsm/p384", "sha384"),
        ("hsm/rsa", "sha256"),
    ] {
        let name = key.trim_start_matches("waxseal://");
        let pem = agent.client().public_key(name).unwrap().pem;
        let sig = sign(socket, init(key, 0), message_options(None, None), &message);
        openssl_verify(tmp.path(), &pem, hash, &message, &sig);
        ok(
            verify(
                socket,
                init(key, 0),
                &sig,
                message_options(None, None),
                &message,
            ),
            "verifySignature",
        );
        let mut tampered = message.clone();
        tampered[100_000] ^= 0x80;
        let e = error(verify(
            socket,
            init(key, 0),
            &sig,
            message_options(None, None),
            &tampered,
        ));
        assert!(e.contains("does not match"), "{e}");
    }
    // cosign loads KMS keys with SHA-256: a P-384 key then signs SHA-256 digests, and
    // the same initOptions verify them.
    let pem = agent.client().public_key("hsm/p384").unwrap().pem;
    let sig = sign(
        socket,
        init("hsm/p384", GO_SHA256),
        message_options(None, None),
        MESSAGE,
    );
    openssl_verify(tmp.path(), &pem, "sha256", MESSAGE, &sig);
    ok(
        verify(
            socket,
            init("hsm/p384", GO_SHA256),
            &sig,
            message_options(None, None),
            MESSAGE,
        ),
        "verifySignature",
    );
    // An explicit hashFunc in messageOptions wins over initOptions.
    let sig = sign(
        socket,
        init("hsm/p256", GO_SHA256),
        message_options(None, Some(GO_SHA384)),
        MESSAGE,
    );
    let pem = agent.client().public_key("hsm/p256").unwrap().pem;
    openssl_verify(tmp.path(), &pem, "sha384", MESSAGE, &sig);
    // A hash waxseal does not sign with (Go's crypto.SHA1 = 3).
    let e = error(call(
        socket,
        init("hsm/p256", GO_SHA256),
        "signMessage",
        json!({"signOptions": {"messageOptions": message_options(None, Some(3))}}),
        MESSAGE,
    ));
    assert!(e.contains("SHA-1"), "{e}");
}

#[test]
fn agent_down_names_the_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = dead_socket(tmp.path());
    // A socket file nobody listens on, as a crashed agent leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    for (method, args) in [
        (
            "publicKey",
            json!({"publicKeyOptions": {"rpcOptions": rpc()}}),
        ),
        ("createKey", json!({"algorithm": "ecdsa-sha2-256-nistp256"})),
        (
            "signMessage",
            json!({"signOptions": {"messageOptions": message_options(None, None)}}),
        ),
    ] {
        let e = error(call(
            &socket,
            init("hsm/release", GO_SHA256),
            method,
            args,
            MESSAGE,
        ));
        assert!(
            e.contains(&socket.display().to_string()) && e.contains("waxseal-agent"),
            "{method}: {e}"
        );
    }
}

#[test]
fn unknown_key_is_named() {
    let (_hsm, agent) = agent_with("unknown", &[]);
    for (method, args) in [
        (
            "publicKey",
            json!({"publicKeyOptions": {"rpcOptions": rpc()}}),
        ),
        (
            "signMessage",
            json!({"signOptions": {"messageOptions": message_options(None, None)}}),
        ),
        (
            "verifySignature",
            json!({"signature": B64.encode([1, 2, 3]), "verifyOptions": {}}),
        ),
    ] {
        let e = error(call(
            &agent.socket,
            init("hsm/missing", GO_SHA256),
            method,
            args,
            MESSAGE,
        ));
        assert!(
            e.contains("hsm/missing") && e.contains("no key"),
            "{method}: {e}"
        );
    }
    // A device that does not exist, and another plug-in's reference.
    let e = error(call(
        &agent.socket,
        init("tpm/missing", GO_SHA256),
        "publicKey",
        json!({}),
        b"",
    ));
    assert!(e.contains("tpm/missing"), "{e}");
    let e = error(call(
        &agent.socket,
        init("awskms://alias/x", GO_SHA256),
        "publicKey",
        json!({}),
        b"",
    ));
    assert!(e.contains("awskms"), "{e}");
}

#[test]
fn malformed_invocations_are_refused_on_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = dead_socket(tmp.path());
    let good = json!({"initOptions": init("hsm/k", GO_SHA256), "methodName": "defaultAlgorithm", "defaultAlgorithm": {}})
        .to_string();
    // Missing argv.
    let e = error(run_raw(&socket, &[], b""));
    assert!(e.contains("no protocol version") && e.contains("v1"), "{e}");
    let e = error(run_raw(&socket, &["v1"], b""));
    assert!(e.contains("no JSON argument"), "{e}");
    // Wrong protocol versions, including the draft's "1".
    for version in ["1", "v2", "v1.0.0", ""] {
        let e = error(run_raw(&socket, &[version, &good], b""));
        assert!(
            e.contains("protocol version") && e.contains("`v1`"),
            "{version}: {e}"
        );
    }
    let mismatched =
        json!({"initOptions": {"protocolVersion": "v2"}, "methodName": "defaultAlgorithm"});
    let e = error(run_raw(&socket, &["v1", &mismatched.to_string()], b""));
    assert!(e.contains("protocolVersion"), "{e}");
    // Bad JSON.
    for bad in ["{not json", "[]", "", r#"{"methodName": 7}"#] {
        let e = error(run_raw(&socket, &["v1", bad], b""));
        assert!(e.contains("JSON argument"), "{bad:?}: {e}");
    }
    // Unknown or missing method.
    let e = error(call(
        &socket,
        init("hsm/k", GO_SHA256),
        "cryptoSigner",
        json!({}),
        b"",
    ));
    assert!(e.contains("unsupported method `cryptoSigner`"), "{e}");
    let e = error(run_raw(&socket, &["v1", r#"{"initOptions":{}}"#], b""));
    assert!(e.contains("methodName"), "{e}");
    // A key version (waxseal keys have none).
    let mut versioned = init("hsm/k", GO_SHA256);
    versioned["rpcOptions"]["keyVersion"] = json!("3");
    let e = error(call(&socket, versioned, "publicKey", json!({}), b""));
    assert!(e.contains("key version `3`"), "{e}");
    // verifySignature without a signature, or with one that is not base64.
    let e = error(call(
        &socket,
        init("hsm/k", GO_SHA256),
        "verifySignature",
        json!({"signature": null}),
        MESSAGE,
    ));
    assert!(e.contains("no `signature`"), "{e}");
    let e = error(call(
        &socket,
        init("hsm/k", GO_SHA256),
        "verifySignature",
        json!({"signature": "!!"}),
        MESSAGE,
    ));
    assert!(e.contains("base64"), "{e}");
}
