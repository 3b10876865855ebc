//! Tests of config parsing: every error names file, line and key.

use super::*;

const GOOD: &str = r#"
[agent]
runtime_dir = "/run/user/1000/waxseal"
max_connections = 8

[[device]]
name = "hsm"
kind = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "waxseal"
pin = "file:/etc/pin"

[[key]]
name = "hsm/fulcio-root"
purposes = ["x509-tbs"]
"#;

#[test]
fn good_config() {
    let c = Config::parse(GOOD, "c.toml").unwrap();
    assert_eq!(c.agent.max_connections, 8);
    assert_eq!(c.agent.idle_timeout_secs, DEFAULT_IDLE_TIMEOUT_SECS);
    assert_eq!(c.devices[0].name, "hsm");
    assert_eq!(c.devices[0].pin, Some(PinSource::File("/etc/pin".into())));
    assert!(matches!(
        &c.devices[0].kind,
        DeviceKind::Pkcs11 { token: TokenSelector::Label(l), sessions: 4, .. } if l == "waxseal"
    ));
    assert_eq!(c.keys[0].purposes, vec![Purpose::X509Tbs]);
}

#[test]
fn empty_config_is_valid() {
    let c = Config::parse("", "c.toml").unwrap();
    assert!(c.devices.is_empty());
}

fn err(text: &str) -> ConfigError {
    Config::parse(text, "c.toml").unwrap_err()
}

#[test]
fn wrong_type_names_line_and_key() {
    let e = err("[[device]]\nname = \"hsm\"\nkind = 3\n");
    assert_eq!(e.line, Some(3), "{e}");
    assert_eq!(e.key, "device[0].kind", "{e}");
    let s = e.to_string();
    assert!(s.starts_with("c.toml:3: device[0].kind: "), "{s}");
}

#[test]
fn unknown_key_is_refused() {
    let e = err("[agent]\nmax_connections = 2\naudit_fsink = true\n");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.message.contains("audit_fsink"), "{e}");
}

#[test]
fn syntax_error_has_a_line() {
    let e = err("[agent]\n\nruntime_dir = \n");
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn semantic_errors_name_line_and_key() {
    let text = "[[device]]\nname = \"a\"\nkind = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"\n\n[[device]]\nname = \"b\"\nkind = \"pkcs11\"\nmodule = \"/m.so\"\ntoken = \"t\"\npin = \"1234\"\n";
    let e = err(text);
    assert_eq!((e.key.as_str(), e.line), ("device[1].pin", Some(12)), "{e}");
    assert!(
        !e.to_string().contains("1234"),
        "a PIN-like value is never echoed: {e}"
    );

    let e = err("[[device]]\nname = \"Bad Name\"\nkind = \"pkcs11\"\n");
    assert_eq!((e.key.as_str(), e.line), ("device[0].name", Some(2)), "{e}");

    let e = err("[[device]]\nname = \"x\"\nkind = \"floppy\"\n");
    assert_eq!((e.key.as_str(), e.line), ("device[0].kind", Some(3)), "{e}");
    assert!(e.message.contains("floppy"));

    let e = err("[[device]]\nname = \"x\"\nkind = \"pkcs11\"\nmodule = \"/m\"\n");
    assert!(e.message.contains("token"), "{e}");

    let e = err("[[key]]\nname = \"nodevice\"\npurposes = [\"digest\"]\n");
    assert_eq!((e.key.as_str(), e.line), ("key[0].name", Some(2)), "{e}");

    let e = err("[[key]]\nname = \"a/b\"\npurposes = [\"coffee\"]\n");
    assert_eq!(e.key, "key[0].purposes[0]", "{e}");
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn tpm_devices() {
    let c = Config::parse("[[device]]\nname = \"tpm\"\nkind = \"tpm\"\n", "c.toml").unwrap();
    assert_eq!(
        c.devices[0].kind,
        DeviceKind::Tpm {
            tcti: "device:/dev/tpmrm0".into(),
            key_dir: None
        }
    );
    let c = Config::parse(
        "[[device]]\nname = \"t\"\nkind = \"tpm\"\ntcti = \"swtpm:host=127.0.0.1,port=2321\"\nkey_dir = \"/k\"\npin = \"env:P\"\n",
        "c.toml",
    )
    .unwrap();
    assert!(
        matches!(&c.devices[0].kind, DeviceKind::Tpm { tcti, key_dir: Some(_) } if tcti.starts_with("swtpm:"))
    );
    let e = err("[[device]]\nname = \"t\"\nkind = \"tpm\"\nmodule = \"/m.so\"\n");
    assert_eq!(
        (e.key.as_str(), e.line),
        ("device[0].module", Some(4)),
        "{e}"
    );
    let e = err("[[device]]\nname = \"h\"\nkind = \"pkcs11\"\nmodule = \"/m\"\ntoken = \"t\"\ntcti = \"x\"\n");
    assert_eq!(e.key, "device[0].tcti", "{e}");
}

#[test]
fn device_errors_name_the_setting_and_the_kind() {
    let dev = |rest: &str| format!("[[device]]\nname = \"x\"\n{rest}");
    let said = |rest: &str| err(&dev(rest)).to_string();
    assert_eq!(
        said("kind = \"floppy\"\n"),
        "c.toml:3: device[0].kind: unknown device kind `floppy` (expected pkcs11, tpm or yubikey)"
    );
    assert_eq!(
        said("kind = 3\n"),
        "c.toml:3: device[0].kind: invalid type: integer `3`, expected a device kind (pkcs11, tpm or yubikey)"
    );
    assert_eq!(
        said(""),
        "c.toml:1: device[0]: missing field `kind` (pkcs11, tpm or yubikey)"
    );
    assert_eq!(
        said("kind = \"tpm\"\npin_ttl = \"a\"\n"),
        "c.toml:4: device[0].pin_ttl: invalid type: string \"a\", expected u64"
    );
    assert_eq!(
        said("kind = \"tpm\"\nsessions = 2\n"),
        "c.toml:4: device[0].sessions: `sessions` is not a setting of tpm devices; a tpm device takes `tcti`, `key_dir`, `pin` and `pin_ttl`"
    );
    let e = err("[[device]]\nkind = \"tpm\"\n");
    assert_eq!((e.key.as_str(), e.line), ("device[0]", Some(1)), "{e}");
    assert!(e.message.contains("name"), "{e}");
}

#[test]
fn duplicate_device() {
    let d = "[[device]]\nname = \"a\"\nkind = \"pkcs11\"\nmodule = \"/m\"\ntoken = \"t\"\n";
    let e = err(&format!("{d}{d}"));
    assert_eq!((e.key.as_str(), e.line), ("device[1].name", Some(7)), "{e}");
}

#[test]
fn control_characters_give_an_error_with_a_message() {
    // Found by the `config` fuzz target: toml reports this without a message.
    let e = err("  # keys on it are hsm/<labe\0\0\0\0l>\nkind = \"pkcs11\"\nmtpm");
    assert!(!e.message.is_empty(), "{e:?}");
    assert!(e.to_string().contains("not valid TOML"), "{e}");
    for name in [
        "lone-cr-empty-message.toml",
        "control-char-in-comment-empty-message.toml",
    ] {
        let path = format!(
            "{}/../fuzz/regressions/config/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(path).unwrap();
        let e = err(&text);
        assert!(!e.message.is_empty(), "{name}: {e:?}");
    }
}

#[test]
fn yubikey_devices() {
    let c = Config::parse(
        "[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nserial = 12345678\npin = \"file:/p\"\nmgm_key = \"env:MGM\"\n",
        "c.toml",
    )
    .unwrap();
    assert_eq!(
        c.devices[0].kind,
        DeviceKind::Yubikey {
            serial: Some(12_345_678),
            mgm_key: Some(PinSource::Env("MGM".into()))
        }
    );
    let c = Config::parse(
        "[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nserial = \"42\"\n",
        "c.toml",
    )
    .unwrap();
    assert!(matches!(
        c.devices[0].kind,
        DeviceKind::Yubikey {
            serial: Some(42),
            ..
        }
    ));
    let e = err("[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nserial = \"abc\"\n");
    assert_eq!(e.key, "device[0].serial", "{e}");
    let e = err("[[device]]\nname = \"yk\"\nkind = \"yubikey\"\nmodule = \"/m\"\n");
    assert_eq!(e.key, "device[0].module", "{e}");
    let e = err("[[device]]\nname = \"h\"\nkind = \"pkcs11\"\nmodule = \"/m\"\ntoken = \"t\"\nmgm_key = \"env:X\"\n");
    assert_eq!(e.key, "device[0].mgm_key", "{e}");
    // x509_issue only with x509-tbs.
    let e = err("[[key]]\nname = \"a/b\"\npurposes = [\"digest\"]\nx509_issue = [\"ca\"]\n");
    assert_eq!(e.key, "key[0].x509_issue", "{e}");
}

#[test]
fn x509_eku_words() {
    let key = |eku: &str| {
        format!("[[key]]\nname = \"a/b\"\npurposes = [\"x509-tbs\"]\nx509_eku = {eku}\n")
    };
    let c = Config::parse(
        &key("[\"codeSigning\", \"1.3.6.1.5.5.7.3.8\", \"1.3.6.1.4.1.11129.2.4.4\"]"),
        "c.toml",
    )
    .unwrap();
    assert_eq!(
        c.keys[0].x509_eku.as_deref(),
        Some(
            &[
                "codeSigning".to_string(),
                "timeStamping".into(),
                "1.3.6.1.4.1.11129.2.4.4".into()
            ][..]
        ),
        "dotted OIDs of named purposes are written as their names"
    );
    assert_eq!(
        Config::parse(&key("[\"any\"]"), "c.toml").unwrap().keys[0].x509_eku,
        Some(vec!["any".into()])
    );
    assert_eq!(
        Config::parse(
            &key("[\"any\"]").replace("x509_eku = [\"any\"]\n", ""),
            "c.toml"
        )
        .unwrap()
        .keys[0]
            .x509_eku,
        None
    );
    for bad in ["[\"codesigning\"]", "[\"1..2\"]", "[\"\"]"] {
        let e = err(&key(bad));
        assert_eq!(e.key, "key[0].x509_eku", "{e}");
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("unknown extended key usage"), "{e}");
        assert!(e.message.contains("codeSigning"), "{e}");
    }
    let e = err(&key("[]"));
    assert_eq!(e.key, "key[0].x509_eku", "{e}");
    let e = err("[[key]]\nname = \"a/b\"\npurposes = [\"digest\"]\nx509_eku = [\"codeSigning\"]\n");
    assert_eq!(e.key, "key[0].x509_eku", "{e}");
    assert!(e.message.contains("x509-tbs"), "{e}");
}

/// An `ssh-ed25519` key line for approver tests.
fn ed25519_line(seed: u8, name: &str) -> String {
    use base64::Engine as _;
    let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let mut blob = Vec::new();
    for f in [&b"ssh-ed25519"[..], key.verifying_key().as_bytes()] {
        blob.extend_from_slice(&(f.len() as u32).to_be_bytes());
        blob.extend_from_slice(f);
    }
    format!(
        "ssh-ed25519 {} {name}",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

fn with_approvals(approvals: &str) -> String {
    format!("[[key]]\nname = \"hsm/root\"\npurposes = [\"x509-tbs\"]\napprovals = {approvals}\n")
}

#[test]
fn approvals_are_read_and_checked() {
    let (a, b) = (ed25519_line(1, "alice"), ed25519_line(2, "bob"));
    let c = Config::parse(
        &with_approvals(&format!(
            "{{ quorum = 2, approvers = [\"{a}\", \"{b}\"], timeout_secs = 60 }}"
        )),
        "c.toml",
    )
    .unwrap();
    let p = c.keys[0].approvals.as_ref().unwrap();
    assert_eq!(p.quorum, 2);
    assert_eq!(p.timeout, std::time::Duration::from_secs(60));
    assert_eq!(p.approvers[1].name(), "bob");
    for (approvals, key, why) in [
        (
            format!("{{ quorum = 3, approvers = [\"{a}\", \"{b}\"] }}"),
            "key[0].approvals.quorum",
            "between 1 and the number of approvers (2)",
        ),
        (
            format!("{{ quorum = 0, approvers = [\"{a}\"] }}"),
            "key[0].approvals.quorum",
            "between 1",
        ),
        (
            format!(
                "{{ quorum = 1, approvers = [\"{a}\", \"{}\"] }}",
                ed25519_line(1, "carol")
            ),
            "key[0].approvals.approvers[1]",
            "same key as approvers[0]",
        ),
        (
            format!(
                "{{ quorum = 1, approvers = [\"{a}\", \"{}\"] }}",
                ed25519_line(3, "alice")
            ),
            "key[0].approvals.approvers[1]",
            "same name `alice`",
        ),
        (
            "{ quorum = 1, approvers = [\"ssh-ed25519 AAAA alice\"] }".to_string(),
            "key[0].approvals.approvers[0]",
            "cut short",
        ),
        (
            format!("{{ quorum = 1, approvers = [\"{a}\"], timeout_secs = 0 }}"),
            "key[0].approvals.timeout_secs",
            "between 1 and 86400",
        ),
        (
            "{ quorum = 1, approvers = [] }".to_string(),
            "key[0].approvals.approvers",
            "at least one",
        ),
    ] {
        let e = err(&with_approvals(&approvals));
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(why), "{e}");
        assert_eq!(e.line, Some(4), "{e}");
    }
    let e = err(&with_approvals(&format!(
        "{{ quorum = 1, approvers = [\"{a}\"], timeout = 5 }}"
    )));
    assert!(e.message.contains("timeout"), "{e}");
}

#[test]
fn sigstore_table_is_read_and_its_paths_follow_the_file() {
    let text = format!(
        "{GOOD}\n[sigstore]\nsigning_config = \"signing_config.v0.2.json\"\ntrusted_root = \"/etc/waxseal/trusted_root.json\"\ntsa_timeout_secs = 20\n"
    );
    let c = Config::parse(&text, "c.toml").unwrap();
    let s = c.sigstore.as_ref().unwrap();
    assert_eq!(
        s.signing_config.as_deref(),
        Some(Path::new("signing_config.v0.2.json"))
    );
    assert_eq!(s.tsa_timeout_secs, Some(20));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, &text).unwrap();
    let c = Config::load(&file).unwrap();
    let s = c.sigstore.unwrap();
    assert_eq!(
        s.signing_config.as_deref(),
        Some(dir.path().join("signing_config.v0.2.json").as_path())
    );
    assert_eq!(
        s.trusted_root.as_deref(),
        Some(Path::new("/etc/waxseal/trusted_root.json"))
    );
    assert!(Config::parse(GOOD, "c.toml").unwrap().sigstore.is_none());
}

#[test]
fn sigstore_typos_and_bad_values_name_line_and_field() {
    let e = err("[agent]\nmax_connections = 2\n\n[sigstore]\nrekor_ulr = \"https://rekor\"\n");
    assert_eq!(e.line, Some(5), "{e}");
    assert_eq!(e.key, "sigstore.rekor_ulr", "{e}");
    assert!(e.message.contains("unknown field `rekor_ulr`"), "{e}");
    assert!(
        e.message.contains("rekor_url"),
        "expected fields listed: {e}"
    );

    let e = err("[sigstore]\nrekor_url = \"https://rekor\"\nrekor_version = 3\n");
    assert_eq!(e.key, "sigstore.rekor_version", "{e}");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(
        e.to_string()
            .starts_with("c.toml:3: sigstore.rekor_version: "),
        "{e}"
    );

    let e = err("[sigstore]\nsigning_config = \"s.json\"\ntsa_url = \"https://tsa\"\n");
    assert_eq!(e.key, "sigstore.tsa_url", "{e}");
    assert_eq!(e.line, Some(3), "{e}");

    let e = err("[sigstore]\ntsa_timeout_secs = \"ten\"\n");
    assert_eq!(e.key, "sigstore.tsa_timeout_secs", "{e}");
}
