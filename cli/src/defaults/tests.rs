//! The merge rule of `[sigstore]` and the command line, and the reading of the table.

use super::*;

fn file_private() -> SigstoreDefaults {
    SigstoreDefaults {
        rekor_url: Some("https://rekor.internal".into()),
        rekor_version: Some(2),
        rekor_public_key: Some("/etc/waxseal/rekor.pub".into()),
        tsa_url: Some("https://tsa.internal".into()),
        tsa_timeout_secs: Some(30),
        ..Default::default()
    }
}

fn file_public() -> SigstoreDefaults {
    SigstoreDefaults {
        signing_config: Some("/etc/waxseal/signing_config.v0.2.json".into()),
        trusted_root: Some("/etc/waxseal/trusted_root.json".into()),
        ..Default::default()
    }
}

#[test]
fn no_flags_take_everything_from_the_file() {
    let mut flags = ServiceFlags::default();
    let applied = apply_defaults(&mut flags, &file_private());
    assert_eq!(flags.rekor_url.as_deref(), Some("https://rekor.internal"));
    assert_eq!(flags.rekor_version(), 2);
    assert_eq!(flags.tsa_url.as_deref(), Some("https://tsa.internal"));
    assert_eq!(flags.tsa_timeout(), 30);
    assert_eq!(
        flags.rekor_public_key.as_deref(),
        Some(Path::new("/etc/waxseal/rekor.pub"))
    );
    assert!(applied.replaced.is_empty());
    assert_eq!(applied.used.len(), 5);
    assert_eq!(check(&flags, &applied), Ok(()));
}

#[test]
fn an_empty_table_changes_nothing() {
    let mut flags = ServiceFlags {
        tsa_url: Some("https://t".into()),
        ..Default::default()
    };
    let before = flags.clone();
    let applied = apply_defaults(&mut flags, &SigstoreDefaults::default());
    assert_eq!(flags, before);
    assert_eq!(applied, Applied::default());
    assert_eq!(flags.tsa_timeout(), DEFAULT_TSA_TIMEOUT_SECS);
    assert_eq!(flags.rekor_version(), 1);
}

#[test]
fn a_rekor_url_flag_replaces_the_files_signing_config_and_its_rekor() {
    // Against a signing config: the whole config is set aside, the keys stay.
    let mut flags = ServiceFlags {
        rekor_url: Some("https://other".into()),
        ..Default::default()
    };
    let applied = apply_defaults(&mut flags, &file_public());
    assert_eq!(flags.signing_config, None);
    assert_eq!(flags.rekor_url.as_deref(), Some("https://other"));
    assert_eq!(
        flags.trusted_root.as_deref(),
        Some(Path::new("/etc/waxseal/trusted_root.json"))
    );
    assert_eq!(applied.replaced, vec![("signing_config", "--rekor-url")]);
    assert_eq!(check(&flags, &applied), Ok(()));

    // Against a URL and version: both replaced (version 1 unless the flag says), the
    // file's TSA, key and timeout kept.
    let mut flags = ServiceFlags {
        rekor_url: Some("https://other".into()),
        ..Default::default()
    };
    let applied = apply_defaults(&mut flags, &file_private());
    assert_eq!(flags.rekor_version(), 1);
    assert_eq!(flags.tsa_url.as_deref(), Some("https://tsa.internal"));
    assert_eq!(
        applied.replaced,
        vec![
            ("rekor_url", "--rekor-url"),
            ("rekor_version", "--rekor-url")
        ]
    );
    assert!(applied.uses("rekor_public_key") && applied.uses("tsa_timeout_secs"));
}

#[test]
fn a_tsa_url_flag_replaces_the_files_tsa_only_or_its_whole_signing_config() {
    let mut flags = ServiceFlags {
        tsa_url: Some("https://tsa2".into()),
        ..Default::default()
    };
    let applied = apply_defaults(&mut flags, &file_private());
    assert_eq!(flags.tsa_url.as_deref(), Some("https://tsa2"));
    assert_eq!(flags.rekor_url.as_deref(), Some("https://rekor.internal"));
    assert_eq!(flags.rekor_version(), 2);
    assert_eq!(applied.replaced, vec![("tsa_url", "--tsa-url")]);

    let mut flags = ServiceFlags {
        tsa_url: Some("https://tsa2".into()),
        ..Default::default()
    };
    let applied = apply_defaults(&mut flags, &file_public());
    assert_eq!(flags.signing_config, None);
    assert_eq!(applied.replaced, vec![("signing_config", "--tsa-url")]);
    assert!(applied.uses("trusted_root"));
}

#[test]
fn a_signing_config_flag_replaces_every_service_of_the_file() {
    let mut flags = ServiceFlags {
        signing_config: Some("mine.json".into()),
        ..Default::default()
    };
    let applied = apply_defaults(&mut flags, &file_private());
    assert_eq!(flags.rekor_url, None);
    assert_eq!(flags.rekor_version, None);
    assert_eq!(flags.tsa_url, None);
    // The key and the timeout are not services: kept.
    assert!(applied.uses("rekor_public_key") && applied.uses("tsa_timeout_secs"));
    assert_eq!(
        applied.replaced,
        vec![
            ("rekor_url", "--signing-config"),
            ("rekor_version", "--signing-config"),
            ("tsa_url", "--signing-config"),
        ]
    );
    assert_eq!(check(&flags, &applied), Ok(()));
}

#[test]
fn a_key_flag_replaces_both_key_settings_of_the_file() {
    let mut flags = ServiceFlags {
        rekor_public_key: Some("k.pem".into()),
        ..Default::default()
    };
    let applied = apply_defaults(&mut flags, &file_public());
    assert_eq!(flags.trusted_root, None);
    assert_eq!(flags.rekor_public_key.as_deref(), Some(Path::new("k.pem")));
    assert!(applied.uses("signing_config"));
    assert_eq!(
        applied.replaced,
        vec![("trusted_root", "--rekor-public-key")]
    );
    assert_eq!(check(&flags, &applied), Ok(()));

    let mut flags = ServiceFlags {
        trusted_root: Some("root.json".into()),
        ..Default::default()
    };
    let applied = apply_defaults(&mut flags, &file_private());
    assert_eq!(flags.rekor_public_key, None);
    assert_eq!(
        applied.replaced,
        vec![("rekor_public_key", "--trusted-root")]
    );
}

#[test]
fn version_and_timeout_flags_replace_only_themselves() {
    let mut flags = ServiceFlags {
        rekor_version: Some(1),
        tsa_timeout: Some(3),
        ..Default::default()
    };
    let applied = apply_defaults(&mut flags, &file_private());
    assert_eq!(flags.rekor_url.as_deref(), Some("https://rekor.internal"));
    assert_eq!(flags.rekor_version(), 1);
    assert_eq!(flags.tsa_timeout(), 3);
    assert_eq!(
        applied.replaced,
        vec![
            ("rekor_version", "--rekor-version"),
            ("tsa_timeout_secs", "--tsa-timeout")
        ]
    );
    assert_eq!(check(&flags, &applied), Ok(()));
}

#[test]
fn flags_that_need_a_partner_find_it_in_the_file_or_are_refused() {
    // --rekor-version with the file's Rekor URL: fine; without any: refused.
    let alone = ServiceFlags {
        rekor_version: Some(2),
        ..Default::default()
    };
    let e = check(&alone, &Applied::default()).unwrap_err();
    assert!(e.contains("--rekor-version needs --rekor-url"), "{e}");
    let mut flags = alone.clone();
    let applied = apply_defaults(&mut flags, &file_public());
    let e = check(&flags, &applied).unwrap_err();
    assert!(
        e.contains("signing config names each log's API version"),
        "{e}"
    );

    // --rekor-url with no key anywhere: refused, naming both ways to give one.
    let url = ServiceFlags {
        rekor_url: Some("https://r".into()),
        ..Default::default()
    };
    let e = check(&url, &Applied::default()).unwrap_err();
    assert!(
        e.contains("--rekor-public-key") && e.contains("rekor_public_key"),
        "{e}"
    );
    let mut flags = url.clone();
    let applied = apply_defaults(
        &mut flags,
        &SigstoreDefaults {
            rekor_public_key: Some("k.pem".into()),
            ..Default::default()
        },
    );
    assert_eq!(check(&flags, &applied), Ok(()));

    // A key or a timeout from the file with no service to use it on: harmless; the
    // same from a flag: refused.
    let mut flags = ServiceFlags::default();
    let applied = apply_defaults(
        &mut flags,
        &SigstoreDefaults {
            rekor_public_key: Some("k.pem".into()),
            tsa_timeout_secs: Some(5),
            ..Default::default()
        },
    );
    assert_eq!(check(&flags, &applied), Ok(()));
    let key = ServiceFlags {
        rekor_public_key: Some("k.pem".into()),
        ..Default::default()
    };
    assert!(check(&key, &Applied::default())
        .unwrap_err()
        .contains("--rekor-public-key needs"));
    let timeout = ServiceFlags {
        tsa_timeout: Some(5),
        ..Default::default()
    };
    assert!(check(&timeout, &Applied::default())
        .unwrap_err()
        .contains("--tsa-timeout needs"));
}

#[test]
fn the_cli_reads_sigstore_and_skips_the_agents_tables() {
    let text = r#"
[agent]
max_connections = 8
some_future_setting = true

[[device]]
name = "hsm"
kind = "pkcs11"

[sigstore]
signing_config = "signing_config.v0.2.json"
trusted_root = "trusted_root.json"
"#;
    let d = parse(text, Path::new("/c/config.toml")).unwrap();
    assert_eq!(
        d.signing_config.as_deref(),
        Some(Path::new("signing_config.v0.2.json"))
    );
    assert_eq!(
        parse("[agent]\nx = 1\n", Path::new("c.toml")).unwrap(),
        SigstoreDefaults::default()
    );
}

#[test]
fn bad_tables_name_file_line_and_field() {
    let f = Path::new("/c/config.toml");
    let e = parse("[agent]\n\n[sigstore]\ntsa_ulr = \"https://t\"\n", f).unwrap_err();
    assert_eq!(e.key, "sigstore.tsa_ulr", "{e}");
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.message.contains("unknown field `tsa_ulr`"), "{e}");
    assert!(
        e.message.contains("`tsa_url`"),
        "the fields are listed: {e}"
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with("config /c/config.toml:4: sigstore.tsa_ulr: unknown field"),
        "{shown}"
    );

    let e = parse(
        "[sigstore]\nrekor_url = \"https://r\"\n\nrekor_version = 7\n",
        f,
    )
    .unwrap_err();
    assert_eq!(e.key, "sigstore.rekor_version", "{e}");
    assert_eq!(e.line, Some(4), "{e}");

    let e = parse("[sigstore]\ntsa_timeout_secs = -1\n", f).unwrap_err();
    assert_eq!(e.key, "sigstore.tsa_timeout_secs", "{e}");

    let e = parse("[sigstore\n", f).unwrap_err();
    assert_eq!(e.line, Some(1), "{e}");
    assert!(!e.message.is_empty());
}

#[test]
fn load_resolves_relative_paths_and_tells_a_missing_file_apart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "[sigstore]\nsigning_config = \"sc.json\"\nrekor_public_key = \"/abs/rekor.pem\"\n",
    )
    .unwrap();
    let loaded = load(Some(&file)).unwrap().unwrap();
    assert_eq!(loaded.file, file);
    assert_eq!(
        loaded.defaults.signing_config,
        Some(dir.path().join("sc.json"))
    );
    assert_eq!(
        loaded.defaults.rekor_public_key.as_deref(),
        Some(Path::new("/abs/rekor.pem"))
    );
    // A file --config names must exist.
    let gone = dir.path().join("missing.toml");
    let e = load(Some(&gone)).unwrap_err();
    assert_eq!(e.file, gone);
    assert!(e.message.contains("cannot read"), "{e}");
    // Too large.
    std::fs::write(&file, vec![b'#'; (MAX_FILE + 1) as usize]).unwrap();
    assert!(load(Some(&file)).unwrap_err().message.contains("larger"));
}
