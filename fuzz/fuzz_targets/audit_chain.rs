//! The audit log verifier (`waxseal audit verify`): `audit_chain::verify_files` on
//! files holding arbitrary bytes. The input is cut into up to four files at each line
//! `--8<--` (so chains that cross a rotation are fuzzed too), written to a temporary
//! directory, and verified in order.
//!
//! - never panics: the answer is `Ok(Verified)` or `Err(Broken)`;
//! - `Broken` names one of the files and a line inside it (1-based);
//! - `Verified` counts the files, its `records` is the last record's seq, and
//!   `last_hash` the SHA-256 of the last non-empty line before the files' zero tails
//!   (the genesis hash if none); `unused` is the last file's zero tail.
#![no_main]
// Every `expect`/`unwrap` here is an assertion of the target (a temp file that must
// write, a value that must serialise): a panic is a finding, which libFuzzer keeps.

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use waxseal_agent::audit_chain::{records_part, verify_files, GENESIS};

const CUT: &[u8] = b"\n--8<--\n";

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() < 3 {
        match rest.windows(CUT.len()).position(|w| w == CUT) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + CUT.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

fn sha256_hex(line: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(line))
}

fuzz_target!(|data: &[u8]| {
    let parts = split(data);
    let paths: Vec<PathBuf> = parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let p = dir().path().join(format!("audit-{i}.jsonl"));
            std::fs::write(&p, part).expect("write");
            p
        })
        .collect();
    match verify_files(&paths) {
        Ok(v) => {
            assert_eq!(v.files, paths.len());
            let kept: Vec<&[u8]> = parts
                .iter()
                .map(|p| records_part(p).expect("a verified file has no NUL inside a line"))
                .collect();
            let tail = parts.last().expect("one part at least").len() - kept[kept.len() - 1].len();
            assert_eq!(v.unused, tail as u64);
            let last = kept
                .iter()
                .flat_map(|p| p.split(|&b| b == b'\n'))
                .filter(|l| !l.is_empty())
                .last();
            match last {
                Some(line) => {
                    assert_eq!(v.last_hash, sha256_hex(line));
                    let rec: serde_json::Value =
                        serde_json::from_slice(line).expect("verified line is JSON");
                    assert_eq!(Some(v.records), rec.get("seq").and_then(|s| s.as_u64()));
                }
                None => {
                    assert_eq!(v.last_hash, GENESIS);
                    assert_eq!(v.records, 0);
                }
            }
        }
        Err(b) => {
            let i = paths
                .iter()
                .position(|p| p.display().to_string() == b.file)
                .unwrap_or_else(|| panic!("Broken names an unknown file: {b}"));
            let lines = parts[i].split(|&x| x == b'\n').count();
            assert!(
                (1..=lines).contains(&b.line),
                "line {} of {lines}: {b}",
                b.line
            );
        }
    }
});
