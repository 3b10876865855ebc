//! Reading existing log files back: each line must be one of this agent's records;
//! one pass finds the chain's end, the last lines for `audit_tail` and the signatures
//! that count against rate limits.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::time::parse_rfc3339;
use super::{stub, AuditError, Event, RateSeed, MAX_LINE, RATE_WINDOW, RECENT, TAIL_BUDGET};
use crate::fsguard::{self, Unsafe};

/// The rotated files' names (`audit-<seq>.jsonl`) in `dir`, in chain order.
pub(super) fn rotated_names(dir: &File, path: &Path) -> Result<Vec<String>, Unsafe> {
    let mut names: Vec<String> = fsguard::names(dir, path)?
        .into_iter()
        .filter(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        .collect();
    names.sort();
    Ok(names)
}

/// What every line read back must be: the head of one of this agent's records.
#[derive(Deserialize)]
pub(super) struct Head<'a> {
    pub(super) seq: u64,
    #[serde(borrow)]
    pub(super) prev: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) event: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) time: Cow<'a, str>,
    #[serde(default)]
    pub(super) key: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) intent: Option<u64>,
}

/// Checks that `line` is one of this agent's records; its head and time.
pub(super) fn parse_head(line: &[u8]) -> Result<(Head<'_>, SystemTime), String> {
    if line.first() != Some(&b'{') {
        return Err("not a JSON object".into());
    }
    let head: Head<'_> =
        serde_json::from_slice(line).map_err(|e| format!("not an audit record: {e}"))?;
    if head.prev.len() != 64 || !head.prev.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("`prev` is not a SHA-256 in hex".into());
    }
    let time = parse_rfc3339(&head.time)
        .ok_or_else(|| format!("`time` {:?} is not an RFC 3339 time", head.time))?;
    Ok((head, time))
}

/// A line that failed [`parse_head`] or a read error, before the path is known.
#[derive(Debug)]
pub(super) enum LineError {
    Foreign { line: usize, problem: String },
    Io(io::Error),
}

impl LineError {
    pub(super) fn at(self, path: &Path) -> AuditError {
        match self {
            LineError::Foreign { line, problem } => AuditError::Foreign {
                path: path.to_path_buf(),
                line,
                problem,
            },
            LineError::Io(source) => AuditError::Io {
                path: path.to_path_buf(),
                what: "cannot read",
                source,
            },
        }
    }
}

/// How a file read by [`read_lines`] ended.
#[derive(Debug)]
pub(super) struct FileEnd {
    /// Bytes up to the end of the last whole line.
    pub(super) complete: u64,
    /// Whole lines.
    pub(super) lines: usize,
    /// Bytes after the last newline (a line cut short), if any, before the zero tail.
    pub(super) fragment: Option<Vec<u8>>,
    /// The zero tail's length: preallocated space after the records (see the parent
    /// module's doc).
    pub(super) zeros: u64,
}

/// Reads `file` from its start up to `limit` bytes, one line of at most [`MAX_LINE`]
/// bytes at a time, and hands each whole non-empty line to `pass`. Stops at the zero
/// tail (`waxseal_proto::audit_chain::records_part` has the rule); a NUL byte followed
/// by anything but NULs is not one of our records.
pub(super) fn read_lines(
    file: &File,
    pass: &mut Pass<'_>,
    limit: u64,
) -> Result<FileEnd, LineError> {
    let mut reader = BufReader::with_capacity(1 << 16, file.take(limit));
    let mut buf = Vec::new();
    let mut end = FileEnd {
        complete: 0,
        lines: 0,
        fragment: None,
        zeros: 0,
    };
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(LineError::Io)?;
        if n == 0 {
            return Ok(end);
        }
        if let Some(nul) = buf.iter().position(|&b| b == 0) {
            let damaged = LineError::Foreign {
                line: end.lines + 1,
                problem: "a NUL byte inside a line (not in the zero tail after the last record)"
                    .into(),
            };
            if !buf[nul..].iter().all(|&b| b == 0) {
                return Err(damaged);
            }
            let Some(rest) = zeros_to_end(&mut reader).map_err(LineError::Io)? else {
                return Err(damaged);
            };
            end.zeros = (buf.len() - nul) as u64 + rest;
            if nul > 0 {
                buf.truncate(nul);
                end.fragment = Some(buf);
            }
            return Ok(end);
        }
        if buf.last() != Some(&b'\n') {
            if buf.len() > MAX_LINE {
                return Err(LineError::Foreign {
                    line: end.lines + 1,
                    problem: format!("a line longer than {MAX_LINE} bytes"),
                });
            }
            end.fragment = Some(std::mem::take(&mut buf));
            return Ok(end);
        }
        end.lines += 1;
        end.complete += n as u64;
        let line = &buf[..buf.len() - 1];
        if line.is_empty() {
            continue;
        }
        pass.line(line).map_err(|problem| LineError::Foreign {
            line: end.lines,
            problem,
        })?;
    }
}

/// Reads `reader` to its end: how many bytes, all NUL; `None` at the first other byte.
fn zeros_to_end(reader: &mut impl BufRead) -> io::Result<Option<u64>> {
    let mut count = 0u64;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(Some(count));
        }
        if chunk.iter().any(|&b| b != 0) {
            return Ok(None);
        }
        let n = chunk.len();
        count += n as u64;
        reader.consume(n);
    }
}

/// What one reading of the files collects: the chain's end, the last lines, and the
/// signatures that count against rate limits.
pub(super) struct Pass<'k> {
    pub(super) keys: &'k HashSet<String>,
    /// Intents before this do not count.
    pub(super) cutoff: SystemTime,
    /// Lines after this `seq` are not counted.
    pub(super) upto: u64,
    /// Whether to keep lines for `audit_tail` and the chain's end.
    pub(super) keep: bool,
    /// Counted intents: seq → (key, time).
    pub(super) intents: HashMap<u64, (String, SystemTime)>,
    /// Intents whose outcome is `failed` or `withheld`.
    pub(super) cancelled: HashSet<u64>,
    /// The newest non-empty file's last line: `(seq, SHA-256 hex)`.
    pub(super) last: Option<(u64, String)>,
    /// This file's last line, until the file is done.
    pub(super) file_last: Option<(u64, Vec<u8>)>,
    /// The last lines of the files done (newer files first read), oldest first, each
    /// as read or its stub: `(seq, text)`.
    pub(super) recent: VecDeque<(u64, Vec<u8>)>,
    pub(super) recent_bytes: usize,
    /// The last lines of the file being read.
    pub(super) file_recent: VecDeque<(u64, Vec<u8>)>,
    pub(super) file_recent_bytes: usize,
    /// Lines read.
    pub(super) lines: u64,
    /// Why the count may be short.
    pub(super) problem: Option<String>,
}

impl<'k> Pass<'k> {
    pub(super) fn new(
        keys: &'k HashSet<String>,
        now: SystemTime,
        upto: u64,
        keep: bool,
    ) -> Pass<'k> {
        Pass {
            keys,
            cutoff: now.checked_sub(RATE_WINDOW).unwrap_or(UNIX_EPOCH),
            upto,
            keep,
            intents: HashMap::new(),
            cancelled: HashSet::new(),
            last: None,
            file_last: None,
            recent: VecDeque::new(),
            recent_bytes: 0,
            file_recent: VecDeque::new(),
            file_recent_bytes: 0,
            lines: 0,
            problem: None,
        }
    }

    /// One whole line.
    pub(super) fn line(&mut self, line: &[u8]) -> Result<(), String> {
        let (head, time) = parse_head(line)?;
        if head.seq > self.upto {
            return Ok(());
        }
        if let Some(key) = head.key.as_deref().filter(|k| self.keys.contains(*k)) {
            match (Event::from_word(&head.event), head.intent) {
                (Some(Event::Intent), _) if time >= self.cutoff => {
                    self.intents.insert(head.seq, (key.to_string(), time));
                }
                (Some(Event::Failed | Event::Withheld), Some(intent)) => {
                    self.cancelled.insert(intent);
                }
                _ => {}
            }
        }
        if self.keep {
            self.lines += 1;
            let kept = if line.len() > TAIL_BUDGET {
                stub(head.seq, line.len()).into_bytes()
            } else {
                line.to_vec()
            };
            self.file_recent_bytes += kept.len() + 1;
            self.file_recent.push_back((head.seq, kept));
            while self.file_recent.len() > RECENT || self.file_recent_bytes > TAIL_BUDGET {
                match self.file_recent.pop_front() {
                    Some((_, old)) => self.file_recent_bytes -= old.len() + 1,
                    None => break,
                }
            }
            match &mut self.file_last {
                Some((seq, text)) => {
                    *seq = head.seq;
                    text.clear();
                    text.extend_from_slice(line);
                }
                None => self.file_last = Some((head.seq, line.to_vec())),
            }
        }
        Ok(())
    }

    /// The file being read is done: its lines go before those of the newer files.
    pub(super) fn file_done(&mut self) {
        if let Some((seq, text)) = self.file_last.take() {
            if self.last.is_none() {
                self.last = Some((seq, hex::encode(Sha256::digest(&text))));
            }
        }
        while let Some((seq, text)) = self.file_recent.pop_back() {
            if self.recent.len() >= RECENT || self.recent_bytes + text.len() + 1 > TAIL_BUDGET {
                break;
            }
            self.recent_bytes += text.len() + 1;
            self.recent.push_front((seq, text));
        }
        self.file_recent.clear();
        self.file_recent_bytes = 0;
    }

    /// Whether older lines would no longer be kept for `audit_tail`.
    pub(super) fn recent_full(&self) -> bool {
        self.recent.len() >= RECENT || self.recent_bytes >= TAIL_BUDGET
    }

    /// The counted signatures.
    pub(super) fn seed(&mut self, upto: u64) -> RateSeed {
        let mut signed: HashMap<String, Vec<SystemTime>> =
            self.keys.iter().map(|k| (k.clone(), Vec::new())).collect();
        for (seq, (key, time)) in self.intents.drain() {
            if !self.cancelled.contains(&seq) {
                signed.entry(key).or_default().push(time);
            }
        }
        for times in signed.values_mut() {
            times.sort();
        }
        RateSeed {
            upto,
            signed,
            problem: self.problem.take(),
        }
    }

    /// The kept lines as `audit_tail` sends them (re-encoded as the answer encodes
    /// them, so their length is what the frame carries), within the budget; and the
    /// number of lines read.
    pub(super) fn into_recent(self) -> (VecDeque<String>, usize, u64) {
        let mut out = VecDeque::new();
        let mut bytes = 0usize;
        for (seq, raw) in self.recent.into_iter().rev() {
            let text = serde_json::from_slice::<Value>(&raw)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| stub(seq, raw.len()));
            let text = if text.len() > TAIL_BUDGET {
                stub(seq, text.len())
            } else {
                text
            };
            if out.len() >= RECENT || bytes + text.len() + 1 > TAIL_BUDGET {
                break;
            }
            bytes += text.len() + 1;
            out.push_front(text);
        }
        (out, bytes, self.lines)
    }
}
