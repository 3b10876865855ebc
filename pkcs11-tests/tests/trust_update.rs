//! `waxseal trust update` against a TUF repository built by python-tuf
//! (py/make_tuf_repo.py) and served by Python's http.server on 127.0.0.1, and `waxseal
//! trust show` for what `default_trusted_root()` returns: a new version is taken, and a
//! root that rotates the root and timestamp keys is followed; an expired timestamp, a
//! rolled-back timestamp, a target whose hash does not match and a new root not signed by
//! the old root's key are refused, naming the check, and the trusted root stored before
//! stays.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pkcs11_tests::{bins, output_text, LocalService};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/py/.venv/bin/python");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/py/make_tuf_repo.py");

fn python() -> &'static str {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: run scripts/install-deps (it makes the venv with python-tuf)"
    );
    PYTHON
}

/// A python-tuf repository served on 127.0.0.1, and a user (XDG_DATA_HOME) updating from it.
struct Fixture {
    server: LocalService,
    home: TempDir,
    contents: TempDir,
    published: usize,
}

impl Fixture {
    /// A repository whose first targets are `trusted_root.json` = `trusted_root(1)` and a
    /// signing config.
    fn new() -> Fixture {
        let server = LocalService::start(python(), &[SCRIPT, "serve", "{dir}"]);
        let mut f = Fixture {
            server,
            home: tempfile::Builder::new()
                .prefix("tuf-home-")
                .tempdir()
                .unwrap(),
            contents: tempfile::Builder::new()
                .prefix("tuf-src-")
                .tempdir()
                .unwrap(),
            published: 0,
        };
        f.repo_tool("init", true);
        f
    }

    fn dir(&self) -> &Path {
        self.server.dir.path()
    }

    /// The TUF metadata and targets served.
    fn repo(&self) -> PathBuf {
        self.dir().join("repo")
    }

    /// `make_tuf_repo.py COMMAND DIR [targets of the next version]`.
    fn repo_tool(&mut self, command: &str, with_targets: bool) {
        let mut cmd = Command::new(python());
        cmd.arg(SCRIPT).arg(command).arg(self.dir());
        if with_targets {
            self.published += 1;
            let root = self
                .contents
                .path()
                .join(format!("tr{}.json", self.published));
            std::fs::write(&root, trusted_root(self.published)).unwrap();
            let config = self.contents.path().join("signing_config.json");
            std::fs::write(&config, SIGNING_CONFIG).unwrap();
            cmd.arg(format!("trusted_root.json={}", root.display()));
            cmd.arg(format!("signing_config.v0.2.json={}", config.display()));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "make_tuf_repo.py {command}: {}",
            output_text(&out)
        );
    }

    fn waxseal(&self, args: &[&str]) -> Output {
        Command::new(&bins().cli)
            .args(args)
            .env("XDG_DATA_HOME", self.home.path())
            .env("HOME", self.home.path())
            .output()
            .unwrap()
    }

    fn update(&self) -> Output {
        let root = self.repo().join("root.json");
        self.waxseal(&[
            "trust",
            "update",
            "--repository",
            &self.server.url,
            "--root",
            root.to_str().unwrap(),
        ])
    }

    fn update_ok(&self) {
        let out = self.update();
        assert!(out.status.success(), "trust update: {}", output_text(&out));
    }

    /// `waxseal trust show --json`.
    fn show(&self) -> serde_json::Value {
        let out = self.waxseal(&["--json", "trust", "show"]);
        assert!(out.status.success(), "trust show: {}", output_text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Asserts the default trusted root is the refreshed `trusted_root(n)` from this repository.
    fn assert_default_is(&self, n: usize) {
        let shown = self.show();
        assert_eq!(shown["source"], "refreshed", "{shown}");
        assert_eq!(shown["repository"], self.server.url.as_str());
        let expected: serde_json::Value = serde_json::from_slice(&trusted_root(n)).unwrap();
        assert_eq!(shown["trusted_root"], expected, "expected version {n}");
        assert_eq!(shown["sha256"], hex(&Sha256::digest(trusted_root(n))));
        // The signing config published with it goes with it.
        assert_eq!(
            shown["signing_config_sha256"],
            hex(&Sha256::digest(SIGNING_CONFIG))
        );
        // The plain output is the stored bytes themselves.
        let plain = self.waxseal(&["trust", "show"]);
        assert_eq!(plain.stdout, trusted_root(n));
    }
}

/// The signing config every version publishes.
const SIGNING_CONFIG: &[u8] =
    br#"{"mediaType":"application/vnd.dev.sigstore.signingconfig.v0.2+json"}"#;

/// A distinct trusted root per published version.
fn trusted_root(n: usize) -> Vec<u8> {
    format!(
        "{{\"mediaType\":\"application/vnd.dev.sigstore.trustedroot+json;version=0.1\",\
         \"tlogs\":[{{\"baseUrl\":\"https://rekor-{n}.example\"}}]}}\n"
    )
    .into_bytes()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn refused(out: &Output, what: &str) -> String {
    let text = output_text(out);
    assert!(!out.status.success(), "update accepted: {text}");
    assert!(
        text.to_lowercase().contains(what),
        "expected {what:?} in: {text}"
    );
    text
}

#[test]
fn update_stores_the_trusted_root_and_takes_new_versions() {
    let mut f = Fixture::new();
    // Before any update: the shipped public-good trusted root.
    let shipped = f.show();
    assert_eq!(shipped["source"], "shipped");
    assert_eq!(
        shipped["sha256"],
        "6494e21ea73fa7ee769f85f57d5a3e6a08725eae1e38c755fc3517c9e6bc0b66"
    );
    assert_eq!(
        shipped["trusted_root"]["tlogs"][0]["baseUrl"],
        "https://rekor.sigstore.dev"
    );
    // The public-good signing config shipped beside it (cli/data/sigstore-public-good).
    assert_eq!(
        shipped["signing_config_sha256"],
        "9711a6d5375706957a4859af31c5866a4474f81f0544f9f4b76c9c4f4c8a539c"
    );

    f.update_ok();
    f.assert_default_is(1);

    f.repo_tool("publish", true);
    let out = f.update();
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(updated)"));
    f.assert_default_is(2);

    // The second update started from the stored root: no --root needed any more.
    f.repo_tool("publish", true);
    let out = f.waxseal(&["--json", "trust", "update", "--repository", &f.server.url]);
    assert!(out.status.success(), "{}", output_text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["targets_version"], 3);
    assert_eq!(report["trusted_root_changed"], true);
    assert!(report["signing_config_sha256"].is_string());
    f.assert_default_is(3);
}

#[test]
fn first_update_of_another_repository_needs_its_root() {
    let f = Fixture::new();
    let out = f.waxseal(&["trust", "update", "--repository", &f.server.url]);
    refused(&out, "--root");
    assert_eq!(f.show()["source"], "shipped");
}

#[test]
fn a_root_rotating_the_root_and_timestamp_keys_is_followed() {
    let mut f = Fixture::new();
    f.update_ok();
    f.assert_default_is(1);
    // Root 2 (signed by the old and the new root key) replaces both keys; the next
    // timestamp is signed by the new timestamp key only, so it verifies only for a client
    // that took root 2.
    f.repo_tool("rotate", false);
    f.repo_tool("publish", true);
    f.update_ok();
    f.assert_default_is(2);
    // And root 2 is now the one updates start from.
    f.repo_tool("publish", true);
    let out = f.waxseal(&["trust", "update", "--repository", &f.server.url]);
    assert!(out.status.success(), "{}", output_text(&out));
    f.assert_default_is(3);
}

#[test]
fn a_new_root_not_signed_by_the_old_root_key_is_refused_and_the_old_root_kept() {
    let mut f = Fixture::new();
    f.update_ok();
    f.repo_tool("rotate-unsigned", false);
    f.repo_tool("publish", true);
    let text = refused(&f.update(), "root");
    assert!(
        text.contains("signature") || text.contains("threshold"),
        "{text}"
    );
    f.assert_default_is(1);
}

#[test]
fn expired_timestamp_is_refused_and_the_old_root_kept() {
    let mut f = Fixture::new();
    f.update_ok();
    // A new trusted root, then a timestamp (vouching for it) generated already expired.
    f.repo_tool("publish", true);
    f.repo_tool("expire", false);
    let text = refused(&f.update(), "expired");
    assert!(text.contains("timestamp"), "{text}");
    f.assert_default_is(1);
}

#[test]
fn rolled_back_timestamp_is_refused_and_the_old_root_kept() {
    let mut f = Fixture::new();
    let first_timestamp = std::fs::read(f.repo().join("timestamp.json")).unwrap();
    f.repo_tool("publish", true);
    f.update_ok();
    f.assert_default_is(2);
    // The repository (or a mirror) serves the older timestamp after version 2 was seen.
    std::fs::write(f.repo().join("timestamp.json"), first_timestamp).unwrap();
    let text = refused(&f.update(), "rollback");
    assert!(text.contains("version 1 of timestamp"), "{text}");
    f.assert_default_is(2);
}

#[test]
fn target_whose_hash_does_not_match_is_refused() {
    let mut f = Fixture::new();
    f.update_ok();
    f.repo_tool("publish", true);
    // Same length, one byte changed: only the hash check can catch it.
    let digest = hex(&Sha256::digest(trusted_root(2)));
    let served = f.repo().join(format!("targets/{digest}.trusted_root.json"));
    let mut bytes = std::fs::read(&served).unwrap();
    let at = bytes.iter().position(|&b| b == b'2').unwrap();
    bytes[at] = b'9';
    std::fs::write(&served, bytes).unwrap();
    refused(&f.update(), "hash mismatch");
    f.assert_default_is(1);
}

#[test]
fn symlinked_state_directory_is_refused() {
    let f = Fixture::new();
    let elsewhere = tempfile::Builder::new()
        .prefix("tuf-elsewhere-")
        .tempdir()
        .unwrap();
    std::fs::create_dir_all(f.home.path().join("waxseal")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), f.home.path().join("waxseal/tuf")).unwrap();
    refused(&f.update(), "not a symlink");
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    assert_eq!(f.show()["source"], "shipped");
}
