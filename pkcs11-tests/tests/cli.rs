//! The `waxseal` command line against a real agent, and `waxseal demo` from nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pkcs11_tests::{bins, pkcs11_device, require, run_ok, Agent, SoftHsm};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn keys_sign_verify_round_trip_with_openssl() {
    require("openssl");
    let hsm = SoftHsm::new();
    hsm.init_token("cli", "5555", "1234");
    let pin = hsm.pin_file("pin", "1234");
    let agent = Agent::builder()
        .softhsm(&hsm)
        .config(&pkcs11_device("hsm", "cli", &pin))
        .config("[[key]]\nname = \"hsm/root\"\npurposes = [\"x509-tbs\"]\n")
        .start();

    let out = agent.cli(&["keys", "generate", "hsm/release", "--alg", "p384"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("-----BEGIN PUBLIC KEY-----"));
    assert!(agent
        .cli(&["keys", "generate", "hsm/root", "--alg", "p256"])
        .status
        .success());

    let list = stdout(&agent.cli(&["keys", "list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{list}");
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["hsm/release", "hsm", "p384", "digest,blob,ssh,attest"]),
        "{list}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["hsm/root", "hsm", "p256", "x509-tbs"]),
        "{list}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&stdout(&agent.cli(&["--json", "keys", "list"]))).unwrap();
    assert_eq!(json["keys"].as_array().unwrap().len(), 2);

    let status = stdout(&agent.cli(&["status"]));
    assert!(
        status.contains("device:  hsm (pkcs11) present, 2 keys"),
        "{status}"
    );

    // sign FILE --raw → FILE.sig; verify by agent key, by PEM, and with openssl.
    // (Bundles, the default, are tested in sigstore.rs.)
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("release.tar.gz");
    std::fs::write(&file, vec![42u8; 100_000]).unwrap();
    let f = file.to_str().unwrap();
    let out = agent.cli(&["sign", f, "--key", "hsm/release", "--raw"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sig = tmp.path().join("release.tar.gz.sig");
    assert!(sig.exists());
    assert!(agent
        .cli(&["verify", f, "--key", "hsm/release"])
        .status
        .success());
    let pem = tmp.path().join("pub.pem");
    std::fs::write(&pem, stdout(&agent.cli(&["keys", "pubkey", "hsm/release"]))).unwrap();
    let out = Command::new(&bins().cli)
        .args(["verify", f, "--public-key", pem.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify needs no agent with --public-key: {}",
        stderr(&out)
    );
    let der = tmp.path().join("sig.der");
    run_ok(
        Command::new("openssl")
            .args(["base64", "-d", "-in"])
            .arg(&sig)
            .arg("-out")
            .arg(&der),
    );
    let ok = run_ok(
        Command::new("openssl")
            .args(["dgst", "-sha384", "-verify"])
            .arg(&pem)
            .arg("-signature")
            .arg(&der)
            .arg(&file),
    );
    assert!(ok.contains("Verified OK"), "{ok}");

    // A changed file fails, with exit 1 and a reason.
    std::fs::write(&file, vec![43u8; 100_000]).unwrap();
    let out = agent.cli(&["verify", f, "--key", "hsm/release"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("does not match its signature"),
        "{}",
        stderr(&out)
    );

    // sign --digest prints base64 DER that openssl accepts for the same digest, and
    // only for it.
    let digest = [0xabu8; 48];
    let out = agent.cli(&[
        "sign",
        "--digest",
        &hex::encode(digest),
        "--key",
        "hsm/release",
        "--hash",
        "sha384",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let digest_sig = tmp.path().join("digest.sig");
    std::fs::write(
        &digest_sig,
        B64.decode(stdout(&out).trim())
            .unwrap_or_else(|e| panic!("not base64 ({e}): {}", stdout(&out))),
    )
    .unwrap();
    let pkeyutl_verify = |digest: &[u8]| {
        let input = tmp.path().join("digest.bin");
        std::fs::write(&input, digest).unwrap();
        Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
            .arg(&pem)
            .arg("-in")
            .arg(&input)
            .arg("-sigfile")
            .arg(&digest_sig)
            .output()
            .unwrap()
    };
    let verified = pkeyutl_verify(&digest);
    assert!(
        verified.status.success() && stdout(&verified).contains("Signature Verified Successfully"),
        "openssl pkeyutl -verify: {}{}",
        stdout(&verified),
        stderr(&verified)
    );
    let mut other = digest;
    other[0] ^= 1;
    let refused = pkeyutl_verify(&other);
    assert!(
        !refused.status.success(),
        "openssl accepted the signature for another digest: {}",
        stdout(&refused)
    );

    // Refusals: exit 1 with the code and what to do.
    let out = agent.cli(&["sign", "--digest", &"ab".repeat(32), "--key", "hsm/root"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("policy-denied") && stderr(&out).contains("x509-tbs"),
        "{}",
        stderr(&out)
    );
    let out = agent.cli(&["sign", "--digest", "zz", "--key", "hsm/release"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("hexadecimal"));
    let out = agent.cli(&["keys", "pubkey", "hsm/missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown-key") && stderr(&out).contains("waxseal keys list"),
        "{}",
        stderr(&out)
    );

    // Usage errors: exit 2.
    assert_eq!(
        agent
            .cli(&["keys", "generate", "hsm/x", "--alg", "dsa"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(agent.cli(&["sign"]).status.code(), Some(2));

    // ssh format matches ssh-keygen's reading of the PEM key.
    let ssh = stdout(&agent.cli(&["keys", "pubkey", "hsm/release", "--format", "ssh"]));
    assert!(ssh.starts_with("ecdsa-sha2-nistp384 "), "{ssh}");
    if let Ok(out) = Command::new("ssh-keygen")
        .args(["-i", "-m", "PKCS8", "-f"])
        .arg(&pem)
        .output()
    {
        assert!(
            out.status.success(),
            "ssh-keygen is installed by scripts/install-deps"
        );
        let theirs = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            ssh.split_whitespace().nth(1),
            theirs.split_whitespace().nth(1)
        );
    } else {
        panic!("ssh-keygen missing: run scripts/install-deps");
    }
}

#[test]
fn no_agent_gives_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(&bins().cli)
        .arg("--socket")
        .arg(tmp.path().join("none.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot connect to the agent") && err.contains("waxseal demo"),
        "{err}"
    );
    // WAXSEAL_SOCK is honoured too.
    let out = Command::new(&bins().cli)
        .env("WAXSEAL_SOCK", tmp.path().join("env.sock"))
        .arg("status")
        .output()
        .unwrap();
    assert!(stderr(&out).contains("env.sock"), "{}", stderr(&out));
}

#[test]
fn demo_runs_twice_and_stops() {
    require("softhsm2-util");
    require("openssl");
    let home = tempfile::tempdir().unwrap();
    // As after `scripts/demo` on a fresh machine: run from the workspace, with waxseal
    // not on PATH.
    let workspace = bins().cli.parent().unwrap().to_path_buf();
    let env = |cmd: &mut Command| {
        cmd.env("XDG_RUNTIME_DIR", home.path().join("run"))
            .env("XDG_STATE_HOME", home.path().join("state"))
            .env("HOME", home.path())
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env_remove("WAXSEAL_SOCK")
            .env_remove("SOFTHSM2_CONF")
            .current_dir(&workspace);
    };
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&bins().cli);
        cmd.args(args);
        env(&mut cmd);
        cmd.output().unwrap()
    };
    // A line the demo printed, run by bash exactly as printed.
    let shell = |line: &str| {
        let mut cmd = Command::new("bash");
        cmd.args(["--norc", "--noprofile", "-c", line]);
        env(&mut cmd);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "`{line}` as printed fails: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    };
    std::fs::create_dir(home.path().join("run")).unwrap();
    let first = run(&["demo"]);
    assert!(
        first.status.success(),
        "{}{}",
        stdout(&first),
        stderr(&first)
    );
    let text = stdout(&first);
    for step in [
        "created",
        "started",
        "generated",
        "signature verified",
        "demo --stop",
    ] {
        assert!(text.contains(step), "missing `{step}` in:\n{text}");
    }
    // Each "Try it yourself" command works as printed; waxseal is named by its path.
    assert!(text.contains("not on your PATH"), "{text}");
    let tries: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "Try it yourself:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(tries.len(), 4, "{text}");
    assert!(tries[0].starts_with("./waxseal keys list"), "{text}");
    assert!(shell(tries[0]).contains("demo/release"));
    shell(tries[1]);
    assert!(shell(tries[2]).contains("Verified OK"));
    assert!(shell(tries[3]).contains("Verified OK"));
    let demo = home.path().join("state/waxseal/demo");
    // The printed openssl command works: the signature is real P-256 over SHA-256.
    let der = demo.join("sig.der");
    run_ok(
        Command::new("openssl")
            .args(["base64", "-d", "-in"])
            .arg(demo.join("hello.txt.sig"))
            .arg("-out")
            .arg(&der),
    );
    let ok = run_ok(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(demo.join("release.pub.pem"))
            .arg("-signature")
            .arg(&der)
            .arg(demo.join("hello.txt")),
    );
    assert!(ok.contains("Verified OK"));

    let second = run(&["demo"]);
    assert!(second.status.success(), "{}", stderr(&second));
    let text = stdout(&second);
    assert!(
        text.contains("found") && text.contains("already running"),
        "{text}"
    );
    assert!(
        !text.contains("generated inside"),
        "the key is reused: {text}"
    );

    let keys = stdout(&run(&["keys", "list"]));
    assert!(keys.contains("demo/release"), "{keys}");
    let json: serde_json::Value = serde_json::from_str(&stdout(&run(&["--json", "demo"]))).unwrap();
    assert_eq!(json["verified"], true);

    // The printed stop command, as printed.
    let stop = text
        .lines()
        .find_map(|l| l.strip_prefix("Stop it with: "))
        .unwrap_or_else(|| panic!("no stop command in:\n{text}"));
    assert!(shell(stop).contains("stopped the demo agent"));
    assert!(!home.path().join("run/waxseal/agent.sock").exists());
    // After a stop the demo starts the agent again with the same token and key.
    let third = run(&["demo"]);
    assert!(third.status.success(), "{}", stderr(&third));
    assert!(
        stdout(&third).contains("started") && stdout(&third).contains("found inside"),
        "{}",
        stdout(&third)
    );
    assert!(run(&["demo", "--stop"]).status.success());
    let log = std::fs::read_to_string(demo.join("agent.log")).unwrap();
    let pin = std::fs::read_to_string(demo.join("pin")).unwrap();
    assert!(
        !log.contains(pin.trim()),
        "the PIN never reaches the agent log"
    );
}
