//! The audit log: one JSON line per signature and per refusal, hash-chained.
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
//!   signature is ready: 4–8 signatures per sync at 16–64 clients (`status` → `audit`
//!   counts them). Waking the syncer for every intent instead was measured: syncs then
//!   run back to back covering 1.2–2 signatures each, and on 2 busy cores that cost
//!   0.1–0.2 of direct at 4–64 clients (docs/benchmarks.md).
//!
//! `audit_group_commit = false` makes every signature pay its own sync, for comparison.
//! The outcome (`signed`, `failed`, `withheld`) is appended after, without waiting.
//! `audit_fsync = false` skips the syncs (the lines still reach the kernel before the
//! client gets its signature, so they survive the agent being killed, but not the
//! machine losing power).
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

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use crate::fsguard::{self, Create, Unsafe};
use crate::policy::Caller;

pub use crate::audit_chain::{files, verify_files, Broken, Verified, CURRENT, GENESIS};

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

/// How many failed syncs' ranges are remembered (see [`State::doubtful`]).
const DOUBTFUL: usize = 64;

/// What one line records.
#[derive(Debug, Clone)]
pub struct Record {
    /// `intent`, `signed`, `failed`, `refused`, or an agent event (`lock`, `unlock`).
    pub event: &'static str,
    /// Key NAME.
    pub key: String,
    /// Purpose word.
    pub purpose: String,
    /// Who asked.
    pub caller: Caller,
    /// What was (to be) signed: `digest`, `hash`, `name`, `certificate`, …
    pub subject: Map<String, Value>,
    /// For refusals and failures: the error code and message.
    pub outcome: Option<(String, String)>,
    /// For outcomes: the `seq` of the intent line they close.
    pub intent: Option<u64>,
}

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
    /// Signatures between their intent and their outcome record.
    inflight: AtomicUsize,
}

struct State {
    file: Arc<File>,
    size: u64,
    last_hash: String,
    /// Lines written so far (the last line's `seq`).
    written: u64,
    /// Lines known to be on disk.
    synced: u64,
    /// The last sync's failure, reported to every waiter until a sync succeeds.
    sync_error: Option<String>,
    /// Lines `(from, to]` that a failed sync covered: never reported durable, even
    /// after a later sync succeeds (the kernel may have dropped them and report the
    /// next sync clean). The last [`DOUBTFUL`] failures.
    doubtful: VecDeque<(u64, u64, String)>,
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
    fn doubt(&self, seq: u64) -> Option<&str> {
        self.doubtful
            .iter()
            .find(|(from, to, _)| *from < seq && seq <= *to)
            .map(|(_, _, e)| e.as_str())
    }

    /// Notes that a sync covering the lines up to `target` failed.
    fn doubted(&mut self, shared: &Shared, target: u64, error: &str) {
        if target > self.synced {
            if self.doubtful.len() == DOUBTFUL {
                self.doubtful.pop_front();
            }
            self.doubtful
                .push_back((self.synced, target, error.to_string()));
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
        let end = read_lines(&file, &mut pass).map_err(|e| e.at(&path))?;
        let mut size = end.complete;
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
            size = end.complete;
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
            match read_lines(&file, &mut pass) {
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
    pub fn append(&self, record: &Record) -> Result<u64, String> {
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
        let seq = st.written.checked_add(1).ok_or_else(|| {
            "the audit log's record numbers are exhausted; start a new log (move the audit directory aside)".to_string()
        })?;
        let mut line = Map::new();
        line.insert("seq".into(), json!(seq));
        line.insert("time".into(), json!(rfc3339_now()));
        line.insert("event".into(), json!(record.event));
        line.insert("key".into(), json!(record.key));
        line.insert("purpose".into(), json!(record.purpose));
        for (k, v) in &record.subject {
            line.insert(k.clone(), v.clone());
        }
        line.insert(
            "caller".into(),
            json!({
                "uid": record.caller.uid,
                "pid": record.caller.pid,
                "exe": record.caller.exe.as_ref().map(|p| p.display().to_string()),
            }),
        );
        if let Some(intent) = record.intent {
            line.insert("intent".into(), json!(intent));
        }
        if let Some((code, message)) = &record.outcome {
            line.insert("code".into(), json!(code));
            line.insert("reason".into(), json!(message));
        }
        line.insert("prev".into(), json!(st.last_hash));
        let text = serde_json::to_string(&Value::Object(line))
            .map_err(|e| format!("cannot encode an audit record: {e}"))?;
        let mut bytes = Vec::with_capacity(text.len() + 1);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b'\n');
        if let Err(e) = (&*st.file).write_all(&bytes) {
            let message = format!(
                "cannot write the audit log {}: {e}",
                self.dir.join(CURRENT).display()
            );
            error!("{message}");
            // Part of the line may be in the file: cut it off before anything else is
            // written, or the next record would continue this one's line.
            st.torn = Some(st.size);
            return Err(match self.cut_torn(&mut st) {
                Ok(()) => message,
                Err(e) => format!("{message}; {e}"),
            });
        }
        st.size += bytes.len() as u64;
        st.last_hash = hex::encode(Sha256::digest(text.as_bytes()));
        st.written = seq;
        st.remember(seq, &text);
        self.appended.fetch_add(1, Ordering::Relaxed);
        if record.event == "intent" && self.durability == Durability::GroupCommit {
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

    /// Cuts the file back to its last whole record after a write failed part-way.
    fn cut_torn(&self, st: &mut MutexGuard<'_, State>) -> Result<(), String> {
        let Some(len) = st.torn else { return Ok(()) };
        let path = self.dir.join(CURRENT);
        match st.file.set_len(len) {
            Ok(()) => {
                st.torn = None;
                info!(path = %path.display(), bytes = len, "audit log cut back to its last whole record");
                Ok(())
            }
            Err(e) => {
                error!(path = %path.display(), error = %e, "cannot remove a partial record from the audit log");
                Err(format!(
                    "the audit log {} ends in a partial record that cannot be removed yet ({e}); nothing is signed until it is",
                    path.display()
                ))
            }
        }
    }

    /// Waits until line `seq` is on disk (at once with `audit_fsync = false`). With
    /// group commit the first waiter syncs for everyone (see the module doc).
    pub fn wait_durable(&self, seq: u64) -> Result<(), String> {
        match self.durability {
            Durability::Off => Ok(()),
            Durability::SyncEach => {
                let (file, target) = {
                    let st = self.shared.lock();
                    (st.file.clone(), st.written)
                };
                self.waited.fetch_add(1, Ordering::Relaxed);
                let result = sync_counted(&self.shared, &file);
                let mut st = self.shared.lock();
                match result {
                    Ok(()) => {
                        st.synced = st.synced.max(seq);
                        self.shared.synced.store(st.synced, Ordering::Release);
                        doubt_check(&st, seq)
                    }
                    Err(e) => {
                        st.doubted(&self.shared, target, &e);
                        Err(e)
                    }
                }
            }
            Durability::GroupCommit => self.wait_group(seq),
        }
    }

    /// Group commit, lazily: the first request to need a sync runs it for everything
    /// written so far; those needing one meanwhile poll for its end, then are served
    /// or run the next.
    fn wait_group(&self, seq: u64) -> Result<(), String> {
        let shared = &*self.shared;
        if shared.synced.load(Ordering::Acquire) >= seq
            && shared.doubtful_max.load(Ordering::Acquire) < seq
        {
            return Ok(());
        }
        self.waited.fetch_add(1, Ordering::Relaxed);
        let mut st = shared.lock();
        loop {
            if st.synced >= seq {
                return doubt_check(&st, seq);
            }
            if !st.syncing {
                st = run_sync(shared, st);
                if let Some(e) = &st.sync_error {
                    return Err(e.clone());
                }
                continue;
            }
            // Another request is syncing: poll for the end of its sync.
            let epoch = shared.epoch.load(Ordering::Acquire);
            drop(st);
            if let Some(_turn) = crate::wire::PollTurn::take() {
                let end = Instant::now() + POLL;
                while Instant::now() < end && shared.epoch.load(Ordering::Acquire) == epoch {
                    std::thread::yield_now();
                }
            }
            st = shared.lock();
            if st.syncing && shared.epoch.load(Ordering::Acquire) == epoch {
                st.sleepers += 1;
                st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                st.sleepers -= 1;
            }
            if st.synced < seq {
                if let Some(e) = &st.sync_error {
                    if st.failed_upto >= seq {
                        return Err(e.clone());
                    }
                }
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
        let (upto, opened) = {
            let st = self.shared.lock();
            (st.written, self.window_files(now))
        };
        let mut pass = Pass::new(keys, now, upto, false);
        match opened {
            Err(e) => pass.problem = Some(e.to_string()),
            Ok(files) => {
                for (path, file, current) in files {
                    match read_lines(&file, &mut pass) {
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
    fn rotate(&self, st: &mut MutexGuard<'_, State>) -> Result<(), String> {
        let path = self.dir.join(CURRENT);
        if !st.rotating {
            let target = st.written;
            if let Err(e) = st.file.sync_data() {
                let e = format!("cannot sync the audit log before rotating it: {e}");
                st.doubted(&self.shared, target, &e);
                return Err(e);
            }
            st.synced = st.written;
            self.shared.synced.store(st.synced, Ordering::Release);
            let old = format!("audit-{:012}.jsonl", st.written);
            fsguard::rename_new_at(&self.dir_fd, CURRENT, &old).map_err(|e| {
                format!(
                    "cannot rotate the audit log {} to {old}: {e}",
                    path.display()
                )
            })?;
            st.rotating = true;
            info!(rotated = %self.dir.join(&old).display(), "audit log rotated; the chain continues in a new file");
        }
        let file = fsguard::open_file_at(&self.dir_fd, &path, CURRENT, Create::New)
            .map_err(|e| format!("cannot start a new audit log: {e}"))?;
        if let Err(e) = rustix::fs::fsync(&self.dir_fd) {
            warn!(dir = %self.dir.display(), error = %e, "cannot sync the audit directory after rotating");
        }
        st.file = Arc::new(file);
        st.size = 0;
        st.rotating = false;
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.closing = true;
        self.shared.kick.notify_all();
    }
}

/// `Ok` unless a failed sync covered line `seq` (see [`State::doubtful`]).
fn doubt_check(st: &State, seq: u64) -> Result<(), String> {
    match st.doubt(seq) {
        None => Ok(()),
        Some(e) => Err(format!(
            "{e} (that sync covered this record; it may not be on disk even though a later sync succeeded)"
        )),
    }
}

/// The `audit-sync` thread: syncs a lone signature's intent while the device signs
/// (see the module doc), sharing the `syncing` flag with requests that sync for
/// themselves.
fn syncer(shared: &Shared) {
    let mut st = shared.lock();
    loop {
        while !st.closing && (st.want <= st.synced || st.syncing) {
            st.syncer_idle = true;
            st = shared.kick.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.syncer_idle = false;
        if st.closing {
            return;
        }
        st = run_sync(shared, st);
        st.want = 0;
    }
}

/// Runs one `fdatasync` for every line written so far, with the lock released
/// meanwhile (`syncing` keeps others from starting another), then publishes what is on
/// disk or the failure, and wakes the requests sleeping on it.
fn run_sync<'a>(shared: &'a Shared, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
    st.syncing = true;
    let target = st.written;
    let file = st.file.clone();
    drop(st);
    let result = sync_counted(shared, &file);
    let mut st = shared.lock();
    st.syncing = false;
    match result {
        Ok(()) => {
            st.synced = st.synced.max(target);
            shared.synced.store(st.synced, Ordering::Release);
            st.sync_error = None;
        }
        Err(e) => {
            st.doubted(shared, target, &e);
            st.sync_error = Some(e);
            st.failed_upto = target;
        }
    }
    shared.epoch.fetch_add(1, Ordering::AcqRel);
    if st.sleepers > 0 {
        shared.changed.notify_all();
    }
    st
}

/// How long a request polls for its sync before sleeping.
const POLL: Duration = Duration::from_micros(400);

/// One `fdatasync`, counted; the error as the client is told it.
fn sync_counted(shared: &Shared, file: &File) -> Result<(), String> {
    shared.syncs.fetch_add(1, Ordering::Relaxed);
    file.sync_data().map_err(|e| {
        error!(error = %e, "cannot sync the audit log");
        format!("cannot sync the audit log: {e}")
    })
}

/// The rotated files' names (`audit-<seq>.jsonl`) in `dir`, in chain order.
fn rotated_names(dir: &File, path: &Path) -> Result<Vec<String>, Unsafe> {
    let mut names: Vec<String> = fsguard::names(dir, path)?
        .into_iter()
        .filter(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        .collect();
    names.sort();
    Ok(names)
}

/// What every line read back must be: the head of one of this agent's records.
#[derive(Deserialize)]
struct Head<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(default)]
    key: Option<Cow<'a, str>>,
    #[serde(default)]
    intent: Option<u64>,
}

/// Checks that `line` is one of this agent's records; its head and time.
fn parse_head(line: &[u8]) -> Result<(Head<'_>, SystemTime), String> {
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
enum LineError {
    Foreign { line: usize, problem: String },
    Io(io::Error),
}

impl LineError {
    fn at(self, path: &Path) -> AuditError {
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
struct FileEnd {
    /// Bytes up to the end of the last whole line.
    complete: u64,
    /// Whole lines.
    lines: usize,
    /// Bytes after the last newline (a line cut short), if any.
    fragment: Option<Vec<u8>>,
}

/// Reads `file` from its start, one line of at most [`MAX_LINE`] bytes at a time, and
/// hands each whole non-empty line to `pass`.
fn read_lines(file: &File, pass: &mut Pass<'_>) -> Result<FileEnd, LineError> {
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    let mut end = FileEnd {
        complete: 0,
        lines: 0,
        fragment: None,
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

/// What one reading of the files collects: the chain's end, the last lines, and the
/// signatures that count against rate limits.
struct Pass<'k> {
    keys: &'k HashSet<String>,
    /// Intents before this do not count.
    cutoff: SystemTime,
    /// Lines after this `seq` are not counted.
    upto: u64,
    /// Whether to keep lines for `audit_tail` and the chain's end.
    keep: bool,
    /// Counted intents: seq → (key, time).
    intents: HashMap<u64, (String, SystemTime)>,
    /// Intents whose outcome is `failed` or `withheld`.
    cancelled: HashSet<u64>,
    /// The newest non-empty file's last line: `(seq, SHA-256 hex)`.
    last: Option<(u64, String)>,
    /// This file's last line, until the file is done.
    file_last: Option<(u64, Vec<u8>)>,
    /// The last lines of the files done (newer files first read), oldest first, each
    /// as read or its stub: `(seq, text)`.
    recent: VecDeque<(u64, Vec<u8>)>,
    recent_bytes: usize,
    /// The last lines of the file being read.
    file_recent: VecDeque<(u64, Vec<u8>)>,
    file_recent_bytes: usize,
    /// Lines read.
    lines: u64,
    /// Why the count may be short.
    problem: Option<String>,
}

impl<'k> Pass<'k> {
    fn new(keys: &'k HashSet<String>, now: SystemTime, upto: u64, keep: bool) -> Pass<'k> {
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
    fn line(&mut self, line: &[u8]) -> Result<(), String> {
        let (head, time) = parse_head(line)?;
        if head.seq > self.upto {
            return Ok(());
        }
        if let Some(key) = head.key.as_deref().filter(|k| self.keys.contains(*k)) {
            match (&*head.event, head.intent) {
                ("intent", _) if time >= self.cutoff => {
                    self.intents.insert(head.seq, (key.to_string(), time));
                }
                ("failed" | "withheld", Some(intent)) => {
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
    fn file_done(&mut self) {
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
    fn recent_full(&self) -> bool {
        self.recent.len() >= RECENT || self.recent_bytes >= TAIL_BUDGET
    }

    /// The counted signatures.
    fn seed(&mut self, upto: u64) -> RateSeed {
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
    fn into_recent(self) -> (VecDeque<String>, usize, u64) {
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

/// Now as `2026-11-30T23:40:01.123456Z`.
pub fn rfc3339_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_micros()
    )
}

/// Parses an RFC 3339 time as [`rfc3339_now`] writes it (`…Z`), or with a `±hh:mm`
/// offset; `None` when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let t = s.get(from..to)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, sec) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    if civil_from_days(days) != (y, mo as u32, d as u32) {
        return None; // 31 April and the like
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos += u32::from(b[i] - b'0') * 10u32.pow(8 - (i - start) as u32);
            }
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match &s[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = (num(i + 1, i + 3)?, num(i + 4, i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let at = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))?
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    at.checked_add(Duration::from_nanos(u64::from(nanos)))
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a Gregorian date (the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;

    use super::*;

    fn record(event: &'static str, key: &str) -> Record {
        let mut subject = Map::new();
        subject.insert("digest".into(), json!("ab"));
        Record {
            event,
            key: key.into(),
            purpose: "digest".into(),
            caller: Caller {
                uid: 1000,
                pid: Some(7),
                ..Caller::default()
            },
            subject,
            outcome: None,
            intent: None,
        }
    }

    fn outcome(event: &'static str, key: &str, intent: u64) -> Record {
        let mut r = record(event, key);
        r.intent = Some(intent);
        r
    }

    fn opts(durability: Durability, max_bytes: u64) -> AuditOptions {
        AuditOptions::new(durability, max_bytes)
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    /// A line of this agent's shape (its `prev` is not checked when reading back).
    fn line(seq: u64, event: &str, key: &str, time: SystemTime, intent: Option<u64>) -> String {
        let secs = time.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let (y, m, d) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        let time = format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000000Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        );
        let mut v = json!({"seq": seq, "time": time, "event": event, "key": key,
            "purpose": "digest", "prev": "ab".repeat(32)});
        if let Some(i) = intent {
            v["intent"] = json!(i);
        }
        v.to_string()
    }

    /// A small tmpfs on a temp dir, unmounted when dropped: a real file system that
    /// fills up.
    struct Tmpfs {
        dir: tempfile::TempDir,
    }

    impl Tmpfs {
        fn mount(size: &str) -> Tmpfs {
            assert_eq!(
                rustix::process::geteuid().as_raw(),
                0,
                "this test mounts a small tmpfs to fill it: it needs root (as the test machines and CI run)"
            );
            let dir = tempfile::tempdir().unwrap();
            let status = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "tmpfs",
                ])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "mount -t tmpfs failed");
            Tmpfs { dir }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }

    /// Writes `path` until the file system is full.
    fn fill(path: &Path) {
        let mut f = File::create(path).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_422), (2025, 11, 30));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        for days in [-800_000, -1, 0, 59, 11_016, 20_422, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days);
        }
        assert!(rfc3339_now().ends_with('Z'));
        let now = SystemTime::now();
        let parsed = parse_rfc3339(&rfc3339_now()).unwrap();
        assert!(parsed.duration_since(now).unwrap_or_default() < Duration::from_secs(5));
        assert!(now.duration_since(parsed).unwrap_or_default() < Duration::from_secs(5));
        let z = parse_rfc3339("2025-11-30T12:00:00Z").unwrap();
        assert_eq!(
            z.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            20_422 * 86_400 + 12 * 3600
        );
        assert_eq!(
            parse_rfc3339("2025-11-30T14:30:00.5+02:30").unwrap(),
            z + Duration::from_millis(500)
        );
        for bad in [
            "",
            "2025-11-31T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-11-30 12:00:00Z",
            "2025-11-30T12:00:00",
            "2025-11-30T12:00:00.Z",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn chain_continues_across_reopen_and_rotation_and_names_a_changed_line() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join(DIR);
        {
            let audit = Audit::open(state.path(), &opts(Durability::GroupCommit, 4096)).unwrap();
            for i in 0..40 {
                let seq = audit
                    .append(&record("intent", &format!("hsm/k{i}")))
                    .unwrap();
                audit.wait_durable(seq).unwrap();
            }
        }
        let audit = Audit::open(state.path(), &opts(Durability::Off, 4096)).unwrap();
        audit.append(&record("signed", "hsm/after")).unwrap();
        assert_eq!(audit.tail(2, TAIL_BUDGET).records.len(), 2);
        drop(audit);
        let all = files(&dir).unwrap();
        assert!(all.len() > 2, "rotated: {all:?}");
        for f in &all {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        let ok = verify_files(&all).unwrap();
        assert_eq!(ok.records, 41);

        // Change one character of a line in the middle of the first file.
        let first = &all[0];
        let text = std::fs::read_to_string(first).unwrap();
        let changed = text.replacen("hsm/k3\"", "hsm/kX\"", 1);
        assert_ne!(text, changed);
        std::fs::write(first, changed).unwrap();
        let broken = verify_files(&all).unwrap_err();
        assert_eq!(broken.line, 5, "{broken}");
        assert!(broken.problem.contains("prev"), "{broken}");

        // A removed line is named too.
        std::fs::write(first, &text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let without: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        std::fs::write(first, without).unwrap();
        let broken = verify_files(&all).unwrap_err();
        assert_eq!(broken.line, 3, "{broken}");
        assert!(broken.problem.contains("missing"), "{broken}");
    }

    #[test]
    fn group_commit_serves_concurrent_signatures_with_fewer_syncs() {
        for durability in [Durability::GroupCommit, Durability::SyncEach] {
            let state = tempfile::tempdir().unwrap();
            let audit = Arc::new(Audit::open(state.path(), &opts(durability, 64 << 20)).unwrap());
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let audit = audit.clone();
                    std::thread::spawn(move || {
                        for i in 0..50 {
                            let seq = audit
                                .append(&record("intent", &format!("hsm/t{t}-{i}")))
                                .unwrap();
                            audit.wait_durable(seq).unwrap();
                            assert!(audit.shared.synced.load(Ordering::Acquire) >= seq);
                            audit.append(&record("signed", "hsm/x")).unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let c = audit.counts();
            assert_eq!(c.appended, 800);
            assert!(c.syncs >= 1 && c.waited <= 400, "{durability:?}: {c:?}");
            if durability == Durability::SyncEach {
                assert_eq!(c.syncs, c.waited, "one sync per waiting signature");
            } else {
                assert!(c.syncs <= 400, "at most one sync per intent: {c:?}");
            }
            drop(audit);
            let ok = verify_files(&files(&state.path().join(DIR)).unwrap()).unwrap();
            assert_eq!(ok.records, 800);
        }
    }

    #[test]
    fn a_lone_signature_is_synced_while_the_device_signs() {
        let state = tempfile::tempdir().unwrap();
        let audit = Audit::open(state.path(), &opts(Durability::GroupCommit, 64 << 20)).unwrap();
        // The syncer parks before the first intent, or that intent is not "lone".
        let deadline = Instant::now() + Duration::from_secs(5);
        while !audit.shared.lock().syncer_idle {
            assert!(Instant::now() < deadline, "audit-sync did not park");
            std::thread::yield_now();
        }
        for i in 0..3 {
            let seq = audit
                .append(&record("intent", &format!("hsm/k{i}")))
                .unwrap();
            // "Signing": the audit-sync thread syncs the intent meanwhile.
            let deadline = Instant::now() + Duration::from_secs(5);
            while audit.shared.synced.load(Ordering::Acquire) < seq {
                assert!(
                    Instant::now() < deadline,
                    "the intent was not synced by audit-sync"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let waited = audit.counts().waited;
            audit.wait_durable(seq).unwrap();
            assert_eq!(audit.counts().waited, waited, "nothing left to wait for");
            audit.append(&outcome("signed", "hsm/k", seq)).unwrap();
            assert_eq!(audit.shared.inflight.load(Ordering::Acquire), 0);
            // The next intent is lone only once the syncer parked again.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !audit.shared.lock().syncer_idle {
                assert!(Instant::now() < deadline, "audit-sync did not park");
                std::thread::yield_now();
            }
        }
        assert_eq!(audit.counts().syncs, 3, "one sync per lone intent");
    }

    #[test]
    fn a_record_a_failed_sync_covered_is_refused_after_a_later_sync_succeeds() {
        for durability in [Durability::GroupCommit, Durability::SyncEach] {
            let state = tempfile::tempdir().unwrap();
            let audit = Audit::open(state.path(), &opts(durability, 64 << 20)).unwrap();
            let covered = audit.append(&record("intent", "hsm/a")).unwrap();
            // As `run_sync` records an fdatasync that failed covering line 1 (a real
            // EIO needs a failing disk).
            {
                let mut st = audit.shared.lock();
                st.doubted(
                    &audit.shared,
                    covered,
                    "cannot sync the audit log: Input/output error",
                );
            }
            let after = audit.append(&record("intent", "hsm/b")).unwrap();
            // The next sync succeeds: line 2 is served, line 1 never.
            audit.wait_durable(after).unwrap();
            let e = audit.wait_durable(covered).unwrap_err();
            assert!(
                e.contains("Input/output error") && e.contains("may not be on disk"),
                "{e}"
            );
            assert!(audit.shared.synced.load(Ordering::Acquire) >= covered);
        }
    }

    #[test]
    fn symlinked_state_audit_dir_and_log_are_refused_and_targets_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let victim_dir = tmp.path().join("victim-dir");
        std::fs::create_dir(&victim_dir).unwrap();
        std::fs::set_permissions(&victim_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"precious\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let o = opts(Durability::Off, 64 << 20);

        // The state directory itself.
        let state_link = tmp.path().join("state-link");
        std::os::unix::fs::symlink(&victim_dir, &state_link).unwrap();
        let e = Audit::open(&state_link, &o).unwrap_err().to_string();
        assert!(
            e.contains("symbolic link") && e.contains(state_link.to_str().unwrap()),
            "{e}"
        );

        // `audit/`.
        let state = tmp.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&victim_dir, state.join(DIR)).unwrap();
        let e = Audit::open(&state, &o).unwrap_err().to_string();
        assert!(
            e.contains("symbolic link") && e.contains(state.join(DIR).to_str().unwrap()),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(&victim_dir).unwrap().count(), 0);
        assert_eq!(mode(&victim_dir), 0o755);

        // `audit/audit.jsonl`.
        std::fs::remove_file(state.join(DIR)).unwrap();
        std::fs::create_dir(state.join(DIR)).unwrap();
        let log = state.join(DIR).join(CURRENT);
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        let e = Audit::open(&state, &o).unwrap_err().to_string();
        assert!(
            e.contains("symbolic link") && e.contains(log.to_str().unwrap()),
            "{e}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
        assert_eq!(mode(&victim), 0o644);

        // A dangling link (to where the victim would be created) too.
        std::fs::remove_file(&log).unwrap();
        let absent = tmp.path().join("would-be-created");
        std::os::unix::fs::symlink(&absent, &log).unwrap();
        Audit::open(&state, &o).unwrap_err();
        assert!(!absent.exists());
    }

    #[test]
    fn a_second_writer_of_the_same_log_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let o = opts(Durability::Off, 64 << 20);
        let first = Audit::open(state.path(), &o).unwrap();
        let e = Audit::open(state.path(), &o).unwrap_err();
        assert!(matches!(e, AuditError::Busy(_)), "{e}");
        assert!(e.to_string().contains("another waxseal-agent"), "{e}");
        drop(first);
        // A child another test thread is spawning right now holds a copy of every
        // descriptor (the lock too) until it execs: poll briefly rather than expect
        // the lock gone the instant `first` closed it.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Audit::open(state.path(), &o) {
                Ok(_) => break,
                Err(AuditError::Busy(_)) if Instant::now() < deadline => std::thread::yield_now(),
                Err(e) => panic!("the log was not released: {e}"),
            }
        }
    }

    #[test]
    fn a_hard_linked_log_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir_all(state.join(DIR)).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = state.join(DIR).join(CURRENT);
        std::fs::hard_link(&victim, &log).unwrap();
        let e = Audit::open(&state, &opts(Durability::Off, 64 << 20))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hard links") && e.contains(log.to_str().unwrap()),
            "{e}"
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"");
        assert_eq!(mode(&victim), 0o644, "not chmodded through the other name");
    }

    #[test]
    fn a_log_that_is_not_an_audit_chain_is_refused_and_not_appended_to() {
        let o = opts(Durability::Off, 64 << 20);
        for (content, problem) in [
            ("root:x:0:0:root:/root:/bin/bash\n", "not a JSON object"),
            (
                "{\"seq\":1,\"time\":\"2025-11-30T12:00:00Z\",\"event\":\"intent\"}\n",
                "prev",
            ),
            ("[1,2,3]\n", "not a JSON object"),
            (
                "{\"seq\":\"1\",\"prev\":\"\",\"event\":\"x\",\"time\":\"\"}\n",
                "not an audit record",
            ),
        ] {
            let state = tempfile::tempdir().unwrap();
            std::fs::create_dir(state.path().join(DIR)).unwrap();
            let log = state.path().join(DIR).join(CURRENT);
            std::fs::write(&log, content).unwrap();
            let e = Audit::open(state.path(), &o).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{}:1:", log.display())) && e.contains(problem),
                "{content}: {e}"
            );
            assert_eq!(std::fs::read_to_string(&log).unwrap(), content);
        }
    }

    #[test]
    fn a_partial_record_at_the_end_is_cut_off_at_start_and_the_chain_goes_on() {
        let state = tempfile::tempdir().unwrap();
        let o = opts(Durability::Off, 64 << 20);
        let audit = Audit::open(state.path(), &o).unwrap();
        for i in 0..3 {
            audit
                .append(&record("intent", &format!("hsm/k{i}")))
                .unwrap();
        }
        drop(audit);
        let log = state.path().join(DIR).join(CURRENT);
        let whole = std::fs::read(&log).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(b"{\"seq\":4,\"time\":\"2025-");
        std::fs::write(&log, &torn).unwrap();
        let audit = Audit::open(state.path(), &o).unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), whole);
        audit.append(&record("intent", "hsm/after")).unwrap();
        drop(audit);
        assert_eq!(
            verify_files(&files(&state.path().join(DIR)).unwrap())
                .unwrap()
                .records,
            4
        );
    }

    #[test]
    fn a_write_cut_short_by_a_full_disk_is_removed_before_the_next_record() {
        let fs = Tmpfs::mount("128k");
        let audit = Audit::open(fs.path(), &opts(Durability::GroupCommit, 64 << 20)).unwrap();
        for i in 0..5 {
            let seq = audit
                .append(&record("intent", &format!("hsm/k{i}")))
                .unwrap();
            audit.wait_durable(seq).unwrap();
        }
        let log = fs.path().join(DIR).join(CURRENT);
        let filler = fs.path().join("filler");
        fill(&filler);
        let len = || std::fs::metadata(&log).unwrap().len();
        // Records fill what is left of the log's last page, until one does not fit.
        let mut failed = None;
        for i in 0..100 {
            let before = len();
            match audit.append(&record("intent", &format!("hsm/fill{i}"))) {
                Ok(seq) => audit.wait_durable(seq).unwrap(),
                Err(e) => {
                    failed = Some((before, e));
                    break;
                }
            }
        }
        let (before, e) = failed.expect("a write fails once the file system is full");
        assert!(
            e.contains("No space left") && e.contains(log.to_str().unwrap()),
            "{e}"
        );
        assert_ne!(
            before % 4096,
            0,
            "the failing write had room for part of its line (tmpfs pages are 4 KiB)"
        );
        assert_eq!(len(), before, "the part that was written is cut off");
        assert_eq!(std::fs::read(&log).unwrap().last(), Some(&b'\n'));
        // Still full: refused, the file unchanged.
        assert!(audit.append(&record("intent", "hsm/still-full")).is_err());
        assert_eq!(len(), before);

        std::fs::remove_file(&filler).unwrap();
        let seq = audit.append(&record("intent", "hsm/room-again")).unwrap();
        audit.wait_durable(seq).unwrap();
        drop(audit);
        let ok = verify_files(&files(&fs.path().join(DIR)).unwrap()).unwrap();
        assert_eq!(ok.records, seq);
    }

    #[test]
    fn rate_seed_counts_the_last_days_signatures_less_failed_and_withheld() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join(DIR);
        std::fs::create_dir(&dir).unwrap();
        let now = SystemTime::now();
        let ago = |h: u64| now - Duration::from_secs(h * 3600);
        // An old rotated file, last modified two days ago: not read for rates.
        let old = [
            line(1, "intent", "hsm/r", ago(50), None),
            line(2, "signed", "hsm/r", ago(50), Some(1)),
        ];
        std::fs::write(dir.join("audit-000000000002.jsonl"), old.join("\n") + "\n").unwrap();
        let f = File::options()
            .write(true)
            .open(dir.join("audit-000000000002.jsonl"))
            .unwrap();
        f.set_modified(ago(49)).unwrap();
        drop(f);
        let lines = [
            line(3, "intent", "hsm/r", ago(25), None), // outside the day
            line(4, "signed", "hsm/r", ago(25), Some(3)),
            line(5, "intent", "hsm/r", ago(23), None), // counts
            line(6, "signed", "hsm/r", ago(23), Some(5)),
            line(7, "intent", "hsm/r", ago(2), None), // failed: does not count
            line(8, "failed", "hsm/r", ago(2), Some(7)),
            line(9, "intent", "hsm/r", ago(1), None), // withheld: does not count
            line(10, "withheld", "hsm/r", ago(1), Some(9)),
            line(11, "refused", "hsm/r", ago(1), None), // refusals do not count
            line(12, "intent", "hsm/other", ago(1), None), // another key
            line(13, "signed", "hsm/other", ago(1), Some(12)),
            line(14, "intent", "hsm/r", ago(0), None), // no outcome (a crash): counts
        ];
        std::fs::write(dir.join(CURRENT), lines.join("\n") + "\n").unwrap();

        let mut o = opts(Durability::Off, 64 << 20);
        o.rate_keys = ["hsm/r".to_string(), "hsm/none".to_string()].into();
        let audit = Audit::open(state.path(), &o).unwrap();
        let seed = audit.take_seed().unwrap();
        assert!(audit.take_seed().is_none());
        assert_eq!(seed.problem, None);
        assert_eq!(seed.upto, 14);
        let times = &seed.signed["hsm/r"];
        assert_eq!(times.len(), 2, "{times:?}");
        assert!(times[0] < times[1]);
        assert!(seed.signed["hsm/none"].is_empty());
        assert!(!seed.signed.contains_key("hsm/other"));

        // The same count later, for a key whose limits appear then; with what was
        // written since.
        let seq = audit.append(&record("intent", "hsm/other")).unwrap();
        audit.append(&outcome("failed", "hsm/other", seq)).unwrap();
        audit.append(&record("intent", "hsm/other")).unwrap();
        let later = audit.scan_rates(&["hsm/other".to_string(), "hsm/r".to_string()].into());
        assert_eq!(later.problem, None);
        assert_eq!(later.upto, 17);
        assert_eq!(later.signed["hsm/other"].len(), 2);
        assert_eq!(later.signed["hsm/r"].len(), 2);

        // The start continues the chain from line 14 all the same.
        assert_eq!(audit.last_seq(), 17);
    }

    #[test]
    fn a_rotated_file_of_the_last_day_that_does_not_read_leaves_no_trusted_count() {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join(DIR);
        std::fs::create_dir(&dir).unwrap();
        let now = SystemTime::now();
        std::fs::write(dir.join("audit-000000000001.jsonl"), "not a record\n").unwrap();
        std::fs::write(
            dir.join(CURRENT),
            line(2, "intent", "hsm/r", now, None) + "\n",
        )
        .unwrap();
        let mut o = opts(Durability::Off, 64 << 20);
        o.rate_keys = ["hsm/r".to_string()].into();
        let audit = Audit::open(state.path(), &o).unwrap();
        let seed = audit.take_seed().unwrap();
        let problem = seed.problem.expect("a problem");
        assert!(problem.contains("audit-000000000001.jsonl:1"), "{problem}");
        let later = audit.scan_rates(&["hsm/r".to_string()].into());
        assert!(later.problem.is_some());
    }

    #[test]
    fn audit_tail_stays_within_its_budget_for_huge_records_written_or_found() {
        let state = tempfile::tempdir().unwrap();
        let o = opts(Durability::Off, 64 << 20);
        let audit = Audit::open(state.path(), &o).unwrap();
        let mut big = record("intent", "hsm/k");
        big.subject
            .insert("name".into(), json!("n".repeat(900_000)));
        let big_seq = audit.append(&big).unwrap();
        for i in 0..3 {
            audit
                .append(&record("signed", &format!("hsm/k{i}")))
                .unwrap();
        }
        let tail = audit.tail(1000, TAIL_BUDGET);
        assert_eq!(tail.records.len(), 4);
        let stub: Value = serde_json::from_str(&tail.records[0]).unwrap();
        assert_eq!(stub["seq"], big_seq);
        assert_eq!(stub["truncated"], true);

        // Many records of 100 kB: the newest that fit, and how many were left out.
        for i in 0..10 {
            let mut r = record("signed", &format!("hsm/m{i}"));
            r.subject.insert("name".into(), json!("m".repeat(100_000)));
            audit.append(&r).unwrap();
        }
        let tail = audit.tail(1000, TAIL_BUDGET);
        let bytes: usize = tail.records.iter().map(|r| r.len() + 1).sum();
        assert!(bytes <= TAIL_BUDGET, "{bytes}");
        assert!(
            tail.omitted > 0 && tail.records.len() + tail.omitted == 14,
            "{:?}",
            tail.omitted
        );
        assert!(tail.records.last().unwrap().contains("hsm/m9"));
        assert_eq!(audit.tail(2, TAIL_BUDGET).omitted, 0);
        drop(audit);

        // A huge line planted in the log is read back within the same bound.
        let log = state.path().join(DIR).join(CURRENT);
        let mut planted =
            serde_json::from_str::<Value>(&line(15, "intent", "hsm/k", SystemTime::now(), None))
                .unwrap();
        planted["name"] = json!("p".repeat(2_000_000));
        let mut file = File::options().append(true).open(&log).unwrap();
        writeln!(file, "{planted}").unwrap();
        drop(file);
        let audit = Audit::open(state.path(), &o).unwrap();
        let tail = audit.tail(1000, TAIL_BUDGET);
        let bytes: usize = tail.records.iter().map(|r| r.len() + 1).sum();
        assert!(bytes <= TAIL_BUDGET, "{bytes}");
        let last: Value = serde_json::from_str(tail.records.last().unwrap()).unwrap();
        assert_eq!(last["seq"], 15);
        assert_eq!(last["truncated"], true);
    }
}
