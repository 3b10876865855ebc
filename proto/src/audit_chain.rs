//! The audit log's hash chain, as a reader checks it: which files, in which order, and
//! where the chain breaks. Without the daemon feature, for `waxseal audit verify`.
//! The writer is the agent's `audit` module (waxseal-agent).
//!
//! **Where a file's records end.** With `audit_fsync` on, the agent extends the live
//! file ahead of its records with chunks of zero bytes, written and synced once, and
//! writes each record into that space, so a sync of a record writes data only, never
//! the file's size (docs/architecture.md, "The audit log"; docs/benchmarks.md, "Issue
//! 17: the preallocated audit log"). The reader's rule ([`records_part`]): a file's
//! records are its bytes before the first NUL byte, provided every byte from there to
//! the end is NUL (the *zero tail*: space not yet used). A NUL followed by anything
//! else is damage, reported at its line like any other. Files without a NUL (all
//! rotated files, every log written before, and the live file after the agent stopped
//! cleanly) read exactly as before. A live file with a zero tail is a sound log: the
//! chain is verified up to its last record. A line cut short by a crash before the
//! zero tail is reported as damaged, as one at the very end of a file always was (the
//! agent cuts it off when it next starts).

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

/// A NUL byte that is not part of a file's zero tail (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: a NUL byte inside a line (not in the zero tail after the last record): the line was damaged")]
pub struct NulInLine {
    /// 1-based line number of the first NUL.
    pub line: usize,
}

/// The part of a log file's `bytes` that holds records: all of it, or what comes
/// before its zero tail (see the module doc). The part may end in a line cut short.
pub fn records_part(bytes: &[u8]) -> Result<&[u8], NulInLine> {
    let Some(nul) = bytes.iter().position(|&b| b == 0) else {
        return Ok(bytes);
    };
    if bytes[nul..].iter().all(|&b| b == 0) {
        return Ok(&bytes[..nul]);
    }
    Err(NulInLine {
        line: bytes[..nul].iter().filter(|&&b| b == b'\n').count() + 1,
    })
}

/// The records of the log file at `path` as text (see [`records_part`]): what a test
/// or a script reading a live log line by line should see. A NUL inside a line, or a
/// file that is not UTF-8, is [`io::ErrorKind::InvalidData`].
pub fn read_records(path: &Path) -> io::Result<String> {
    let mut bytes = std::fs::read(path)?;
    let len = records_part(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        .len();
    bytes.truncate(len);
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
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
    /// Zero bytes after the last record (the live file's preallocated space, see the
    /// module doc).
    pub unused: u64,
}

/// Checks the chain through `files` in order: every line JSON with `seq` one more than
/// the line before and `prev` the SHA-256 of the line before. Each file is read up to
/// its zero tail ([`records_part`]). Names the first line that breaks it.
pub fn verify_files(files: &[PathBuf]) -> Result<Verified, Broken> {
    let mut prev = GENESIS.to_string();
    let mut seq = 0u64;
    let mut first = true;
    let mut unused = 0u64;
    for path in files {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Broken {
            file: name.clone(),
            line: 0,
            problem: format!("cannot read: {e}"),
        })?;
        let text = records_part(&bytes).map_err(|e| Broken {
            file: name.clone(),
            line: e.line,
            problem: "a NUL byte inside a line (not in the zero tail after the last record): the line was damaged".into(),
        })?;
        unused = (bytes.len() - text.len()) as u64;
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
        unused,
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

    /// Two chained records as the agent writes them.
    fn two_records() -> Vec<u8> {
        let one = format!(r#"{{"seq":1,"prev":"{GENESIS}","event":"lock"}}"#);
        let two = format!(
            r#"{{"seq":2,"prev":"{}","event":"unlock"}}"#,
            hex::encode(Sha256::digest(one.as_bytes()))
        );
        format!("{one}\n{two}\n").into_bytes()
    }

    fn verify_bytes(bytes: &[u8]) -> Result<Verified, Broken> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CURRENT);
        std::fs::write(&file, bytes).unwrap();
        verify_files(&[file])
    }

    #[test]
    fn a_zero_tail_is_unused_space_and_the_chain_verifies_up_to_it() {
        let old = two_records();
        let plain = verify_bytes(&old).unwrap();
        assert_eq!((plain.records, plain.unused), (2, 0));
        let mut live = old.clone();
        live.resize(old.len() + 4096, 0);
        let ok = verify_bytes(&live).unwrap();
        assert_eq!(ok.records, 2);
        assert_eq!(ok.unused, 4096);
        assert_eq!(ok.last_hash, plain.last_hash);
        assert_eq!(records_part(&live).unwrap(), &old[..]);
    }

    #[test]
    fn a_nul_inside_a_line_is_damage_named_at_its_line() {
        let mut bytes = two_records();
        // A NUL in the second record, the rest of the file intact.
        let second = bytes.iter().position(|&b| b == b'\n').unwrap() + 5;
        bytes[second] = 0;
        let broken = verify_bytes(&bytes).unwrap_err();
        assert_eq!(broken.line, 2, "{broken}");
        assert!(
            broken.problem.contains("NUL byte inside a line"),
            "{broken}"
        );
        // Zeros, then a record again (a hole, not a tail): damage too.
        let mut holed = two_records();
        holed.extend_from_slice(&[0; 100]);
        holed.extend_from_slice(b"{\"seq\":3}\n");
        assert_eq!(records_part(&holed), Err(NulInLine { line: 3 }));
        assert!(verify_bytes(&holed).is_err());
    }

    #[test]
    fn a_record_cut_short_before_the_zero_tail_is_reported_as_damaged() {
        let mut bytes = two_records();
        bytes.extend_from_slice(b"{\"seq\":3,\"pr");
        bytes.resize(bytes.len() + 1000, 0);
        let broken = verify_bytes(&bytes).unwrap_err();
        assert_eq!(broken.line, 3, "{broken}");
        assert!(broken.problem.contains("not a JSON record"), "{broken}");
    }
}
