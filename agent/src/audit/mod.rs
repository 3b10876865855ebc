//! The audit log: one JSON line per signature, per refusal and per lock or unlock
//! request, hash-chained. What a line says is typed in `record.rs`.
//!
//! Each line carries `prev`, the SHA-256 (hex) of the line before it (64 zeros for
//! the very first), so removing or changing a line breaks the chain at the next one.
//! Lines live in `STATE_DIR/audit/audit.jsonl`; past `audit_max_bytes` the file is
//! renamed `audit-<seq>.jsonl` and a new one starts, whose first line's `prev` is the
//! hash of the old file's last line, so the chain runs through every file.
//!
//! **Whose files.** The state directory, `audit/` and the log are opened without
//! following symlinks and checked through the opened descriptors ([`crate::fsguard`]):
//! a link planted in their place, a log with other hard links, or files of another
//! user stop the agent at start, naming the path. An existing log whose lines are not
//! this agent's records (JSON objects with `seq`, `prev`, `event`, `time`) is refused
//! too, never appended to. Rotation creates the new file with `O_EXCL`.
//!
//! **Durability.** A signature is recorded before it is made (`intent`), and the
//! client gets it only once that record is on disk (group commit, the default):
//! - A lone signature (no other between intent and outcome) wakes the `audit-sync`
//!   thread when its intent is written, so the `fdatasync` runs while the device signs
//!   and the client waits for the longer of the two rather than both (measured in
//!   docs/benchmarks.md, "Issue 10: what profiling found").
//! - Under concurrency syncs are lazy: when a signature is ready and its intent is not
//!   yet on disk, the request runs one `fdatasync` for every line written so far (if no
//!   sync is running), or polls (one request per CPU, yielding between looks; the rest
//!   sleep) for the running sync to end and is served by it or runs the next. Intents
//!   are written before the device signs, so most are on disk by the time their
//!   signature is ready and one sync covers several signatures (`status` → `audit`
//!   counts them). Waking the syncer for every intent instead was measured and lost:
//!   syncs then run back to back covering barely more than one signature each
//!   (docs/architecture.md, "The audit log"; the numbers are in docs/benchmarks.md).
//!
//! `audit_group_commit = false` makes every signature pay its own sync, for comparison.
//! The outcome (`signed`, `failed`, `withheld`) is appended after, without waiting.
//! `audit_fsync = false` skips the syncs (the lines still reach the kernel before the
//! client gets its signature, so they survive the agent being killed, but not the
//! machine losing power).
//!
//! **Preallocation.** With `audit_fsync` on, the current file is extended ahead of its
//! records in chunks of [`PREALLOC`] bytes that are written as zeros and synced once;
//! each record is written with `pwrite` into that space at the log's logical end. A
//! sync of a record then writes data only: the file's size and its blocks are already
//! on disk, which an append that grows the file must commit with every sync (a sync
//! into the zeros measured 22–37 % cheaper; `fallocate`d space, whose unwritten extents
//! a sync must convert, was no cheaper than written zeros: docs/benchmarks.md, "Issue
//! 17: the preallocated audit log"). The logical end is the end of the last whole line
//! before the zero tail; readers stop there, and a NUL byte followed by anything else
//! is damage (`audit_chain::records_part` has the rule, which `waxseal audit verify`
//! shares). A file is cut to its logical end before it is rotated and when the log is
//! closed (so rotated files and a cleanly stopped agent's file hold no zeros); after a
//! crash the next start continues at the logical end. When a chunk cannot be written (a
//! full disk) it is cut off again and records grow the file as before, until the log
//! has grown another chunk. Without `audit_fsync` nothing is preallocated.
//!
//! **Failures.** A write that fails part-way (a full disk) is cut back to the last
//! whole record before anything else is written; until that succeeds every append
//! fails, so nothing is signed. A failed `fdatasync` refuses the signatures whose
//! records it covered, also when a later sync succeeds (the kernel may have dropped
//! those pages and report the next sync clean), and every signature after it until a
//! sync succeeds.
//!
//! **Rate limits.** The pass that finds the chain's end at start also counts, for the
//! rate-limited keys it is given, the signatures of the last day ([`RateSeed`]):
//! intents, less those whose outcome is `failed` or `withheld` (an intent without an
//! outcome, from a crash, counts). Rotated files last modified more than a day ago
//! are not read for that. [`Audit::scan_rates`] counts the same for keys whose limits
//! appear later (a SIGHUP reload).
//!
//! **`audit_tail`.** The agent keeps the last records, newest first, within
//! [`TAIL_BUDGET`] bytes, so an answer stays well under the frame limit; a record
//! longer than that is kept as `{"bytes":…,"seq":…,"truncated":true}`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;
use std::time::SystemTime;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use crate::fsguard::{self, Create, Unsafe};
use read::{read_lines, rotated_names, Pass};
use sync::syncer;

pub use crate::audit_chain::{files, verify_files, Broken, Verified, CURRENT, GENESIS};
pub use record::{AppendError, Event, Purpose, Record, SyncError};
pub use time::{parse_rfc3339, rfc3339_now};

mod read;
mod record;
mod sync;
#[cfg(test)]
mod tests;
pub mod time;

/// The audit directory's name inside the state directory.
pub const DIR: &str = "audit";

/// At most this much record text (bytes, one more per record for the separator) goes
/// into one `audit_tail` answer: half of the 1 MiB frame limit (`proto::MAX_FRAME`),
/// which leaves room for the envelope and for escaping.
pub const TAIL_BUDGET: usize = 512 * 1024;

/// The longest line read back from an existing log. The agent's own records are far
/// shorter (a request is at most one frame); a longer line is not one of them.
const MAX_LINE: usize = 16 << 20;

/// The longest rate-limit window (`max_per_day`).
pub const RATE_WINDOW: Duration = Duration::from_secs(86_400);

/// How many records the agent keeps for `audit_tail`.
const RECENT: usize = 1000;

/// How far ahead of its records the current file is extended with synced zeros (see
/// the module doc): at about 300 bytes a record, one chunk every 3,500 records.
pub const PREALLOC: u64 = 1 << 20;

/// How many failed syncs' ranges are remembered (see [`State::doubtful`]).
const DOUBTFUL: usize = 64;

/// When a signature's intent record reaches the disk (`audit_fsync`,
/// `audit_group_commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fdatasync` before the client gets its signature; one sync serves every request
    /// waiting at that moment (the default).
    GroupCommit,
    /// `fdatasync` before the client gets its signature, one per signature
    /// (`audit_group_commit = false`: for measuring what group commit saves).
    SyncEach,
    /// No sync (`audit_fsync = false`): the lines reach the kernel, which survives the
    /// agent being killed but not the machine losing power.
    Off,
}

impl Durability {
    /// From the config's two switches.
    pub fn from_config(fsync: bool, group_commit: bool) -> Durability {
        match (fsync, group_commit) {
            (false, _) => Durability::Off,
            (true, true) => Durability::GroupCommit,
            (true, false) => Durability::SyncEach,
        }
    }

    /// The word `status` shows.
    pub fn word(self) -> &'static str {
        match self {
            Durability::GroupCommit => "fsync, group commit",
            Durability::SyncEach => "fsync per signature",
            Durability::Off => "no fsync",
        }
    }
}

/// How to open the log.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// When records reach the disk.
    pub durability: Durability,
    /// `audit_max_bytes`: the current file is rotated past this size.
    pub max_bytes: u64,
    /// Keys with `max_per_hour` or `max_per_day`: their signatures of the last day are
    /// counted while the log is read at start ([`Audit::take_seed`]).
    pub rate_keys: HashSet<String>,
}

impl AuditOptions {
    /// Options without rate-limited keys.
    pub fn new(durability: Durability, max_bytes: u64) -> AuditOptions {
        AuditOptions {
            durability,
            max_bytes,
            rate_keys: HashSet::new(),
        }
    }
}

/// Why the log cannot be opened; the agent does not start (it signs nothing it cannot
/// record).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A directory or file is a link, another user's, or otherwise unsafe to use.
    #[error(transparent)]
    Unsafe(#[from] Unsafe),
    /// A line of an existing log is not a record of this agent's chain.
    #[error("{}:{line}: {problem}; the agent appends only to its own audit chain: move the file aside", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        problem: String,
    },
    /// Reading or repairing a file failed.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Another agent has the log open.
    #[error("{}: another waxseal-agent writes this audit log (two writers would break its chain); stop it first or give this one another --state-dir", .0.display())]
    Busy(PathBuf),
    /// The `audit-sync` thread could not start.
    #[error("cannot start the audit-sync thread: {0}")]
    Thread(io::Error),
}

/// The signatures that count against rate limits, as read from the log.
#[derive(Debug, Clone, Default)]
pub struct RateSeed {
    /// The last record (`seq`) read; later ones are not in `signed`.
    pub upto: u64,
    /// For each key asked about (every one is present): when each of its counted
    /// signatures of the last day was asked for (the intent's `time`), oldest first.
    pub signed: HashMap<String, Vec<SystemTime>>,
    /// Why the log could not be read completely; then `signed` may be short and must
    /// not be trusted.
    pub problem: Option<String>,
}

/// An `audit_tail` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tail {
    /// The records, oldest first, as JSON text.
    pub records: Vec<String>,
    /// How many of the records asked for (and known to the agent) were left out to
    /// stay within the byte budget.
    pub omitted: usize,
}

/// What the log has done since the agent started (for `status` and the benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditCounts {
    /// Lines appended.
    pub appended: u64,
    /// `fdatasync` calls for waiting signatures.
    pub syncs: u64,
    /// Signatures that had to wait for a sync (the others found their intent already
    /// on disk).
    pub waited: u64,
}

/// The audit log of one agent.
pub struct Audit {
    dir: PathBuf,
    /// The audit directory, opened without following links; files are opened in it.
    dir_fd: File,
    durability: Durability,
    max_bytes: u64,
    shared: Arc<Shared>,
    appended: AtomicU64,
    waited: AtomicU64,
    /// What the start pass counted for rate limits, until the key store takes it.
    seed: Mutex<Option<RateSeed>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("dir", &self.dir)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a sync ends (wakes the requests sleeping on it).
    changed: Condvar,
    /// `State::synced`, readable without the lock by requests polling for it.
    synced: AtomicU64,
    /// The highest line in [`State::doubtful`]: lines above it need no look there.
    doubtful_max: AtomicU64,
    /// `fdatasync` calls made.
    syncs: AtomicU64,
    /// Syncs ended (successful or not), for requests polling for the end of one.
    epoch: AtomicU64,
    /// Wakes the `audit-sync` thread.
    kick: Condvar,
    /// Signalled each time the `audit-sync` thread parks (sets `syncer_idle`), so a
    /// test can wait for it instead of guessing how long it takes.
    parked: Condvar,
    /// Signatures between their intent and their outcome record.
    inflight: AtomicUsize,
}

struct State {
    file: Arc<File>,
    /// The logical end: bytes of whole records in the current file.
    size: u64,
    /// The current file's length: `size` plus its zero tail (see the module doc).
    allocated: u64,
    /// After a chunk could not be preallocated, the next try waits until `size`
    /// reaches this.
    prealloc_retry: u64,
    last_hash: String,
    /// Lines written so far (the last line's `seq`).
    written: u64,
    /// Lines known to be on disk.
    synced: u64,
    /// The last sync's failure, reported to every waiter until a sync succeeds.
    sync_error: Option<SyncError>,
    /// Lines `(from, to]` that a failed sync covered: never reported durable, even
    /// after a later sync succeeds (the kernel may have dropped them and report the
    /// next sync clean). The last [`DOUBTFUL`] failures.
    doubtful: VecDeque<(u64, u64, SyncError)>,
    /// Requests sleeping on `changed`.
    sleepers: usize,
    /// The last failed sync covered lines up to here.
    failed_upto: u64,
    /// A request or the `audit-sync` thread is running `fdatasync` for everyone.
    syncing: bool,
    /// The intent the `audit-sync` thread was woken for.
    want: u64,
    /// The `audit-sync` thread waits for `kick`.
    syncer_idle: bool,
    /// The `Audit` is gone: the `audit-sync` thread ends.
    closing: bool,
    /// A write failed part-way: the file must be cut back to this size before anything
    /// else is written.
    torn: Option<u64>,
    /// Rotation renamed the current file; the new one is not created yet.
    rotating: bool,
    /// The last lines, for `audit_tail`: at most [`RECENT`], within [`TAIL_BUDGET`].
    recent: VecDeque<String>,
    /// Bytes in `recent`, one more per line.
    recent_bytes: usize,
    /// Lines read at start and written since: what `recent` would hold unbounded.
    seen: u64,
}

impl State {
    /// The failed sync that covered line `seq`, if one did.
    fn doubt(&self, seq: u64) -> Option<&SyncError> {
        self.doubtful
            .iter()
            .find(|(from, to, _)| *from < seq && seq <= *to)
            .map(|(_, _, e)| e)
    }

    /// Notes that a sync covering the lines up to `target` failed.
    fn doubted(&mut self, shared: &Shared, target: u64, error: &SyncError) {
        if target > self.synced {
            if self.doubtful.len() == DOUBTFUL {
                self.doubtful.pop_front();
            }
            self.doubtful
                .push_back((self.synced, target, error.clone()));
            shared.doubtful_max.fetch_max(target, Ordering::AcqRel);
        }
    }

    /// Keeps `text` (or its stub) as the newest line for `audit_tail`.
    fn remember(&mut self, seq: u64, text: &str) {
        let kept = if text.len() > TAIL_BUDGET {
            stub(seq, text.len())
        } else {
            text.to_string()
        };
        self.recent_bytes += kept.len() + 1;
        self.recent.push_back(kept);
        self.seen += 1;
        while self.recent.len() > RECENT || self.recent_bytes > TAIL_BUDGET {
            match self.recent.pop_front() {
                Some(old) => self.recent_bytes -= old.len() + 1,
                None => break,
            }
        }
    }
}

/// What stands for a record too long for `audit_tail`.
fn stub(seq: u64, bytes: usize) -> String {
    json!({"seq": seq, "truncated": true, "bytes": bytes}).to_string()
}

impl Audit {
    /// Opens (or starts) the log in `STATE_DIR/audit`, continuing the chain of what is
    /// there. The state directory, the audit directory and the log are checked (see
    /// the module doc); a partial record at the end of the log (a write cut short) is
    /// removed. Counts the signatures of `opts.rate_keys` on the way.
    pub fn open(state_dir: &Path, opts: &AuditOptions) -> Result<Audit, AuditError> {
        let state = fsguard::open_dir(state_dir)?;
        let dir = state_dir.join(DIR);
        let dir_fd = fsguard::open_subdir(&state, state_dir, DIR)?;
        drop(state);
        // One writer per log: two agents on one state directory would interleave their
        // chains (and one could cut the other's record being written as "partial").
        match rustix::fs::flock(
            &dir_fd,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(AuditError::Busy(dir)),
            Err(e) => {
                return Err(AuditError::Io {
                    path: dir,
                    what: "cannot lock the audit directory",
                    source: e.into(),
                })
            }
        }
        let path = dir.join(CURRENT);
        let file = fsguard::open_file_at(&dir_fd, &path, CURRENT, Create::IfMissing)?;
        let now = SystemTime::now();
        let mut pass = Pass::new(&opts.rate_keys, now, u64::MAX, true);

        // The current file first: it must be all records of ours.
        let end = read_lines(&file, &mut pass, u64::MAX).map_err(|e| e.at(&path))?;
        let size = end.complete;
        let mut allocated =
            end.complete + end.fragment.as_ref().map_or(0, |f| f.len() as u64) + end.zeros;
        if let Some(fragment) = end.fragment {
            if !fragment.starts_with(b"{") {
                return Err(AuditError::Foreign {
                    path,
                    line: end.lines + 1,
                    problem: "the last line is not a record".into(),
                });
            }
            file.set_len(end.complete)
                .map_err(|source| AuditError::Io {
                    path: path.clone(),
                    what: "cannot remove a partial record at its end",
                    source,
                })?;
            warn!(path = %path.display(), bytes = fragment.len(), "removed a partial record at the end of the audit log (a write cut short, e.g. by a full disk)");
            allocated = end.complete;
        }
        pass.file_done();

        // Rotated files, newest first: for the chain's end (when the current file is
        // empty), for `audit_tail`, and for rate limits (the last day).
        let mut rotated = rotated_names(&dir_fd, &dir)?;
        rotated.reverse();
        for name in rotated {
            let path = dir.join(&name);
            let needed_for_chain = pass.last.is_none();
            let opened = fsguard::open_read_at(&dir_fd, &path, &name).map(|f| {
                f.map(|f| {
                    let modified = f.metadata().ok().and_then(|m| m.modified().ok());
                    (f, modified)
                })
            });
            let (file, modified) = match opened {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) if needed_for_chain => return Err(e.into()),
                Err(e) => {
                    // Whether it falls in the rate window is unknown: count it as in.
                    pass.problem.get_or_insert_with(|| e.to_string());
                    continue;
                }
            };
            let in_window = modified.is_none_or(|m| m + RATE_WINDOW >= now);
            if !needed_for_chain && !in_window && pass.recent_full() {
                break;
            }
            match read_lines(&file, &mut pass, u64::MAX) {
                Ok(end) => {
                    if end.fragment.is_some() && in_window {
                        pass.problem.get_or_insert_with(|| {
                            format!("{}: the last line is cut short", path.display())
                        });
                    }
                }
                Err(e) if needed_for_chain => return Err(e.at(&path)),
                Err(e) => {
                    let e = e.at(&path);
                    if in_window {
                        pass.problem.get_or_insert_with(|| e.to_string());
                    } else {
                        warn!(error = %e, "an old rotated audit file does not read; `audit_tail` shows less");
                    }
                }
            }
            pass.file_done();
        }

        let (last_hash, written) = pass
            .last
            .clone()
            .map_or((GENESIS.to_string(), 0), |(seq, hash)| (hash, seq));
        let seed = pass.seed(written);
        if let Some(problem) = &seed.problem {
            warn!(problem = %problem, "the audit log does not read completely: rate-limited keys are refused until it does");
        }
        let (recent, recent_bytes, seen) = pass.into_recent();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                file: Arc::new(file),
                size,
                allocated,
                prealloc_retry: 0,
                last_hash,
                written,
                synced: written,
                sync_error: None,
                doubtful: VecDeque::new(),
                sleepers: 0,
                failed_upto: 0,
                syncing: false,
                want: 0,
                syncer_idle: false,
                closing: false,
                torn: None,
                rotating: false,
                recent,
                recent_bytes,
                seen,
            }),
            changed: Condvar::new(),
            synced: AtomicU64::new(written),
            doubtful_max: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            kick: Condvar::new(),
            parked: Condvar::new(),
            inflight: AtomicUsize::new(0),
        });
        if opts.durability == Durability::GroupCommit {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("audit-sync".into())
                .spawn(move || syncer(&shared))
                .map_err(AuditError::Thread)?;
        }
        info!(dir = %dir.display(), records = written, durability = opts.durability.word(), "audit log open");
        Ok(Audit {
            dir,
            dir_fd,
            durability: opts.durability,
            max_bytes: opts.max_bytes,
            shared,
            appended: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            seed: Mutex::new(Some(seed)),
        })
    }

    /// Appends `record`; returns its `seq`. The line is in the kernel when this
    /// returns; [`Audit::wait_durable`] waits for the disk.
    pub fn append(&self, record: &Record) -> Result<u64, AppendError> {
        if record.intent.is_some() {
            // An outcome: its signature is no longer in flight.
            let _ = self
                .shared
                .inflight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
        let mut st = self.shared.lock();
        self.cut_torn(&mut st)?;
        if st.rotating || st.size >= self.max_bytes {
            self.rotate(&mut st)?;
        }
        let seq = st.written.checked_add(1).ok_or(AppendError::Exhausted)?;
        let mut line = record.fields();
        line.insert("seq".into(), json!(seq));
        line.insert("time".into(), json!(rfc3339_now()));
        line.insert("prev".into(), json!(st.last_hash));
        let text = serde_json::to_string(&Value::Object(line)).map_err(AppendError::Encode)?;
        let mut bytes = Vec::with_capacity(text.len() + 1);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b'\n');
        let end = st.size + bytes.len() as u64;
        if self.durability != Durability::Off && end > st.allocated && st.size >= st.prealloc_retry
        {
            self.preallocate(&mut st, end);
        }
        if let Err(source) = st.file.write_all_at(&bytes, st.size) {
            let path = self.dir.join(CURRENT);
            error!(path = %path.display(), error = %source, "cannot write the audit log");
            // Part of the line may be in the file: cut it off before anything else is
            // written, or the next record would continue this one's line.
            st.torn = Some(st.size);
            let cut = self.cut_torn(&mut st).err().map(Box::new);
            return Err(AppendError::Write { path, source, cut });
        }
        st.size += bytes.len() as u64;
        st.allocated = st.allocated.max(st.size);
        st.last_hash = hex::encode(Sha256::digest(text.as_bytes()));
        st.written = seq;
        st.remember(seq, &text);
        self.appended.fetch_add(1, Ordering::Relaxed);
        if record.event == Event::Intent && self.durability == Durability::GroupCommit {
            let alone = self.shared.inflight.fetch_add(1, Ordering::AcqRel) == 0;
            if alone && !st.syncing && st.syncer_idle {
                // A lone signature: sync its intent now, while the device signs.
                st.want = seq;
                st.syncer_idle = false;
                self.shared.kick.notify_one();
            }
        }
        Ok(seq)
    }

    /// Extends the current file with a chunk of zeros, written and synced, so that it
    /// holds at least `need` bytes (see the module doc). The chunk stops at
    /// `audit_max_bytes`, past which the file is rotated (and cut to its records). On
    /// failure the chunk is cut off again and records grow the file until the next try.
    fn preallocate(&self, st: &mut MutexGuard<'_, State>, need: u64) {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        // Records may have grown the file past the zeros (a chunk failed before).
        let from = st.allocated.max(st.size);
        let to = (from + PREALLOC).min(self.max_bytes.max(need)).max(need);
        let mut at = from;
        let mut result = Ok(());
        while at < to && result.is_ok() {
            // At most 64 KiB, so the cast cannot truncate.
            let n = (to - at).min(ZEROS.len() as u64) as usize;
            result = st.file.write_all_at(&ZEROS[..n], at);
            at += n as u64;
        }
        match result.and_then(|()| st.file.sync_data()) {
            Ok(()) => st.allocated = to,
            Err(e) => {
                let path = self.dir.join(CURRENT);
                warn!(path = %path.display(), error = %e, bytes = to - from, "cannot preallocate the audit log; records grow the file meanwhile");
                match st.file.set_len(from) {
                    Ok(()) => st.allocated = from,
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "cannot cut back a failed preallocation (zeros after the last record are read as unused space)");
                        st.allocated = at;
                    }
                }
                st.prealloc_retry = st.size + PREALLOC;
            }
        }
    }

    /// Cuts the file back to its last whole record after a write failed part-way.
    fn cut_torn(&self, st: &mut MutexGuard<'_, State>) -> Result<(), AppendError> {
        let Some(len) = st.torn else { return Ok(()) };
        let path = self.dir.join(CURRENT);
        match st.file.set_len(len) {
            Ok(()) => {
                st.torn = None;
                st.allocated = len;
                info!(path = %path.display(), bytes = len, "audit log cut back to its last whole record");
                Ok(())
            }
            Err(source) => {
                error!(path = %path.display(), error = %source, "cannot remove a partial record from the audit log");
                Err(AppendError::Torn { path, source })
            }
        }
    }

    /// How records reach the disk.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Counts since the agent started.
    pub fn counts(&self) -> AuditCounts {
        AuditCounts {
            appended: self.appended.load(Ordering::Relaxed),
            syncs: self.shared.syncs.load(Ordering::Relaxed),
            waited: self.waited.load(Ordering::Relaxed),
        }
    }

    /// The last `n` records (at most the last 1000 the agent wrote or found), newest
    /// kept first, within `budget` bytes of record text (one more per record; at most
    /// [`TAIL_BUDGET`]: the agent keeps no more).
    pub fn tail(&self, n: usize, budget: usize) -> Tail {
        let st = self.shared.lock();
        let want = n.min(RECENT);
        let mut records = Vec::new();
        let mut used = 0usize;
        for line in st.recent.iter().rev() {
            if records.len() == want || used + line.len() + 1 > budget {
                break;
            }
            used += line.len() + 1;
            records.push(line.clone());
        }
        records.reverse();
        let known = want.min(usize::try_from(st.seen).unwrap_or(usize::MAX));
        Tail {
            omitted: known.saturating_sub(records.len()),
            records,
        }
    }

    /// The rate-limit counts the start pass made, once (then `None`).
    pub fn take_seed(&self) -> Option<RateSeed> {
        self.seed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Counts the signatures of `keys` over the last day from the files, as the start
    /// pass does, up to the last record written now (see [`RateSeed`]). The files are
    /// opened under the log's lock, so a rotation cannot slip a file past the count;
    /// they are read after it is released.
    pub fn scan_rates(&self, keys: &HashSet<String>) -> RateSeed {
        let now = SystemTime::now();
        // The current file is read up to its logical end now: past it a record may be
        // being written into the zero tail.
        let (upto, current_end, opened) = {
            let st = self.shared.lock();
            (st.written, st.size, self.window_files(now))
        };
        let mut pass = Pass::new(keys, now, upto, false);
        match opened {
            Err(e) => pass.problem = Some(e.to_string()),
            Ok(files) => {
                for (path, file, current) in files {
                    let limit = if current { current_end } else { u64::MAX };
                    match read_lines(&file, &mut pass, limit) {
                        // The current file may end in a line being written now.
                        Ok(end) if end.fragment.is_some() && !current => {
                            pass.problem.get_or_insert_with(|| {
                                format!("{}: the last line is cut short", path.display())
                            });
                        }
                        Ok(_) => {}
                        Err(e) => {
                            pass.problem.get_or_insert_with(|| e.at(&path).to_string());
                        }
                    }
                }
            }
        }
        pass.seed(upto)
    }

    /// Opens the current file and the rotated files modified within the rate window,
    /// newest first: `(path, file, whether it is the current file)`.
    fn window_files(&self, now: SystemTime) -> Result<Vec<(PathBuf, File, bool)>, Unsafe> {
        let mut out = Vec::new();
        let path = self.dir.join(CURRENT);
        if let Some(f) = fsguard::open_read_at(&self.dir_fd, &path, CURRENT)? {
            out.push((path, f, true));
        }
        let mut rotated = rotated_names(&self.dir_fd, &self.dir)?;
        rotated.reverse();
        for name in rotated {
            let path = self.dir.join(&name);
            let Some(f) = fsguard::open_read_at(&self.dir_fd, &path, &name)? else {
                continue;
            };
            let modified = f.metadata().ok().and_then(|m| m.modified().ok());
            if modified.is_some_and(|m| m + RATE_WINDOW < now) {
                break;
            }
            out.push((path, f, false));
        }
        Ok(out)
    }

    /// The directory of the log files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last record's `seq`.
    pub fn last_seq(&self) -> u64 {
        self.shared.lock().written
    }

    /// Renames the current file aside and starts a new one; the chain goes on. The new
    /// file is created with `O_EXCL | O_NOFOLLOW`; when that fails after the rename,
    /// the next append tries again.
    fn rotate(&self, st: &mut MutexGuard<'_, State>) -> Result<(), AppendError> {
        let path = self.dir.join(CURRENT);
        if !st.rotating {
            let target = st.written;
            // Rotated files hold no zero tail (see the module doc).
            st.file
                .set_len(st.size)
                .map_err(|source| AppendError::Trim {
                    path: path.clone(),
                    source,
                })?;
            st.allocated = st.size;
            if let Err(e) = st.file.sync_data() {
                let e = SyncError::BeforeRotation(Arc::new(e));
                st.doubted(&self.shared, target, &e);
                return Err(AppendError::RotateSync(e));
            }
            st.synced = st.written;
            self.shared.synced.store(st.synced, Ordering::Release);
            let old = format!("audit-{:012}.jsonl", st.written);
            fsguard::rename_new_at(&self.dir_fd, CURRENT, &old).map_err(|source| {
                AppendError::Rotate {
                    path: path.clone(),
                    to: old.clone(),
                    source,
                }
            })?;
            st.rotating = true;
            info!(rotated = %self.dir.join(&old).display(), "audit log rotated; the chain continues in a new file");
        }
        let file = fsguard::open_file_at(&self.dir_fd, &path, CURRENT, Create::New)
            .map_err(AppendError::NewFile)?;
        if let Err(e) = rustix::fs::fsync(&self.dir_fd) {
            warn!(dir = %self.dir.display(), error = %e, "cannot sync the audit directory after rotating");
        }
        st.file = Arc::new(file);
        st.size = 0;
        st.allocated = 0;
        st.prealloc_retry = 0;
        st.rotating = false;
        Ok(())
    }

    /// Cuts the current file to its logical end (its zero tail off), as a clean stop
    /// leaves it: old readers and tools that append to it read it as before. Appends
    /// after this preallocate again. Called when the log is dropped and by
    /// `KeyStore::shutdown`.
    pub fn close(&self) {
        let mut st = self.shared.lock();
        if st.allocated > st.size && st.torn.is_none() && !st.rotating {
            match st.file.set_len(st.size) {
                Ok(()) => st.allocated = st.size,
                Err(e) => {
                    warn!(path = %self.dir.join(CURRENT).display(), error = %e, "cannot cut the audit log's preallocated space off; the next start reads it as unused");
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.close();
        let mut st = self.shared.lock();
        st.closing = true;
        self.shared.kick.notify_all();
    }
}
