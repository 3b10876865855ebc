//! The audit log's hash chain, as a reader checks it: which files, in which order, and
//! where the chain breaks. Without the daemon feature, for `waxseal audit verify`.
//! The writer is the agent's `audit` module (waxseal-agent).

use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The current file's name inside the audit directory.
pub const CURRENT: &str = "audit.jsonl";
/// `prev` of the very first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The audit files of `dir` in chain order: rotated files by name, then the current.
pub fn files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    rotated.sort();
    let current = dir.join(CURRENT);
    if current.exists() {
        rotated.push(current);
    }
    Ok(rotated)
}

/// A broken chain, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {problem}")]
pub struct Broken {
    /// The file.
    pub file: String,
    /// 1-based line number in it.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// What [`verify_files`] found in a sound chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Lines checked.
    pub records: u64,
    /// Files checked.
    pub files: usize,
    /// SHA-256 of the last line.
    pub last_hash: String,
}

/// Checks the chain through `files` in order: every line JSON with `seq` one more than
/// the line before and `prev` the SHA-256 of the line before. Names the first line
/// that breaks it.
pub fn verify_files(files: &[PathBuf]) -> Result<Verified, Broken> {
    let mut prev = GENESIS.to_string();
    let mut seq = 0u64;
    let mut first = true;
    for path in files {
        let name = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| Broken {
            file: name.clone(),
            line: 0,
            problem: format!("cannot read: {e}"),
        })?;
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            let n = i + 1;
            if raw.is_empty() {
                continue;
            }
            let at = |problem: String| Broken {
                file: name.clone(),
                line: n,
                problem,
            };
            let v: Value = serde_json::from_slice(raw)
                .map_err(|e| at(format!("not a JSON record ({e}): the line was damaged")))?;
            let this_seq = v
                .get("seq")
                .and_then(Value::as_u64)
                .ok_or_else(|| at("no `seq`".into()))?;
            let this_prev = v
                .get("prev")
                .and_then(Value::as_str)
                .ok_or_else(|| at("no `prev`".into()))?;
            if first {
                // A chain whose older files were deleted starts at a later seq; its
                // first line's `prev` cannot be checked.
                if this_seq == 1 && this_prev != GENESIS {
                    return Err(at(
                        "the first record's `prev` is not the genesis hash".into()
                    ));
                }
            } else {
                let next = seq.checked_add(1).ok_or_else(|| {
                    at(format!(
                        "record {seq} is the last a chain can number; nothing may follow it"
                    ))
                })?;
                if this_seq != next {
                    return Err(at(format!(
                        "record {this_seq} follows record {seq}: {}",
                        if this_seq > next {
                            "records are missing"
                        } else {
                            "out of order"
                        }
                    )));
                }
                if this_prev != prev {
                    return Err(at(format!(
                        "`prev` does not match the SHA-256 of the record before it (seq {seq}): that record or this one was changed"
                    )));
                }
            }
            first = false;
            seq = this_seq;
            prev = hex::encode(Sha256::digest(raw));
        }
    }
    Ok(Verified {
        records: seq,
        files: files.len(),
        last_hash: prev,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_largest_seq_ends_a_chain_without_overflow() {
        // Found while fuzzing (fuzz/regressions/audit_chain).
        let data = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/regressions/audit_chain/seq-u64-max"
        ))
        .unwrap();
        let dir = std::env::temp_dir().join(format!("waxseal-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(CURRENT);
        std::fs::write(&file, data).unwrap();
        let broken = verify_files(&[file]).unwrap_err();
        assert!(broken.problem.contains("nothing may follow"), "{broken}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
