//! The agent's TOML config: `Config::parse(text, "fuzz.toml")` on arbitrary UTF-8.
//!
//! The config is trusted input (the user's own file), but a typo must give an error
//! naming file, line and key, never a panic. There is no encoder, so no round trip:
//! the checks are no panic, a deterministic answer, and errors that point inside the
//! file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waxseal_agent::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = Config::parse(text, "fuzz.toml");
    match &first {
        Ok(config) => {
            assert!(config.path.is_none());
            let mut names: Vec<_> = config.devices.iter().map(|d| d.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(
                names.len(),
                config.devices.len(),
                "duplicate device names accepted"
            );
            for k in &config.keys {
                assert!(!k.purposes.is_empty(), "a key without purposes accepted");
                assert!(!k.x509_issue.is_empty());
                assert!(k.allow_exe.iter().all(|p| p.is_absolute()));
            }
        }
        Err(e) => {
            assert_eq!(e.file, "fuzz.toml");
            if let Some(line) = e.line {
                let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
                assert!(
                    (1..=lines).contains(&line),
                    "line {line} of a {lines}-line file: {e}"
                );
            }
            assert!(
                !e.message.is_empty() || !e.key.is_empty(),
                "empty error: {e:?}"
            );
            let _ = e.to_string();
        }
    }
    // Config has no PartialEq; its Debug form shows every field.
    assert_eq!(
        format!("{:?}", Config::parse(text, "fuzz.toml")),
        format!("{first:?}"),
        "not deterministic"
    );
});
