//! The audit log: one JSON line per signature and per refusal, hash-chained.
//!
//! Each line carries `prev`, the SHA-256 (hex) of the line before it (64 zeros for
//! the very first), so removing or changing a line breaks the chain at the next one.
//! Lines live in `STATE_DIR/audit/audit.jsonl`; past `audit_max_bytes` the file is
//! renamed `audit-<seq>.jsonl` and a new one starts, whose first line's `prev` is the
//! hash of the old file's last line, so the chain runs through every file.
//!
//! **Durability.** A signature is recorded before it is made (`intent`), and the
//! client gets it only once that record is on disk (group commit, the default):
//! - A lone signature (no other between intent and outcome) wakes the `audit-sync`
//!   thread when its intent is written, so the `fdatasync` runs while the device signs
//!   and the client waits for the longer of the two rather than both (DESIGN.md's
//!   overlap; 1 client: 0.36 → 0.51 of direct on SoftHSM2).
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

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tracing::{error, info};

use crate::policy::Caller;

pub use crate::audit_chain::{files, verify_files, Broken, Verified, CURRENT, GENESIS};

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
    durability: Durability,
    max_bytes: u64,
    shared: Arc<Shared>,
    appended: AtomicU64,
    waited: AtomicU64,
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
    /// The last lines, for `audit_tail`.
    recent: VecDeque<String>,
}

const RECENT: usize = 1000;

impl Audit {
    /// Opens (or starts) the log in `dir`, continuing the chain of what is there.
    pub fn open(dir: &Path, durability: Durability, max_bytes: u64) -> io::Result<Audit> {
        std::fs::create_dir_all(dir)?;
        set_mode(dir, 0o700);
        let (last_hash, written, recent) = last_of_chain(dir)?;
        let path = dir.join(CURRENT);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        set_mode(&path, 0o600);
        let size = file.metadata()?.len();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                file: Arc::new(file),
                size,
                last_hash,
                written,
                synced: written,
                sync_error: None,
                sleepers: 0,
                failed_upto: 0,
                syncing: false,
                want: 0,
                syncer_idle: false,
                closing: false,
                recent,
            }),
            changed: Condvar::new(),
            synced: AtomicU64::new(written),
            syncs: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            kick: Condvar::new(),
            inflight: AtomicUsize::new(0),
        });
        if durability == Durability::GroupCommit {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("audit-sync".into())
                .spawn(move || syncer(&shared))?;
        }
        info!(dir = %dir.display(), records = written, durability = durability.word(), "audit log open");
        Ok(Audit {
            dir: dir.to_path_buf(),
            durability,
            max_bytes,
            shared,
            appended: AtomicU64::new(0),
            waited: AtomicU64::new(0),
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
        if st.size >= self.max_bytes {
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
        (&*st.file).write_all(&bytes).map_err(|e| {
            error!(error = %e, "cannot write the audit log");
            format!("cannot write the audit log: {e}")
        })?;
        st.size += bytes.len() as u64;
        st.last_hash = hex::encode(Sha256::digest(text.as_bytes()));
        st.written = seq;
        if st.recent.len() == RECENT {
            st.recent.pop_front();
        }
        st.recent.push_back(text);
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

    /// Waits until line `seq` is on disk (at once with `audit_fsync = false`). With
    /// group commit the first waiter syncs for everyone (see the module doc).
    pub fn wait_durable(&self, seq: u64) -> Result<(), String> {
        match self.durability {
            Durability::Off => Ok(()),
            Durability::SyncEach => {
                let file = {
                    let st = self.shared.lock();
                    st.file.clone()
                };
                self.waited.fetch_add(1, Ordering::Relaxed);
                let result = sync_counted(&self.shared, &file);
                let mut st = self.shared.lock();
                match result {
                    Ok(()) => {
                        st.synced = st.synced.max(seq);
                        self.shared.synced.store(st.synced, Ordering::Release);
                        Ok(())
                    }
                    Err(e) => Err(e),
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
        if shared.synced.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        self.waited.fetch_add(1, Ordering::Relaxed);
        let mut st = shared.lock();
        loop {
            if st.synced >= seq {
                return Ok(());
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

    /// The last `n` lines (at most the last 1000 the agent wrote or found).
    pub fn tail(&self, n: usize) -> Vec<String> {
        let st = self.shared.lock();
        let skip = st.recent.len().saturating_sub(n);
        st.recent.iter().skip(skip).cloned().collect()
    }

    /// The directory of the log files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Renames the current file aside and starts a new one; the chain goes on.
    fn rotate(&self, st: &mut MutexGuard<'_, State>) -> Result<(), String> {
        st.file
            .sync_data()
            .map_err(|e| format!("cannot sync the audit log before rotating it: {e}"))?;
        st.synced = st.written;
        self.shared.synced.store(st.synced, Ordering::Release);
        let old = self.dir.join(format!("audit-{:012}.jsonl", st.written));
        std::fs::rename(self.dir.join(CURRENT), &old)
            .map_err(|e| format!("cannot rotate the audit log: {e}"))?;
        let path = self.dir.join(CURRENT);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot start a new audit log: {e}"))?;
        set_mode(&path, 0o600);
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        st.file = Arc::new(file);
        st.size = 0;
        info!(rotated = %old.display(), "audit log rotated; the chain continues in a new file");
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

/// The hash and `seq` of the chain's last line, and its last lines, from the files in
/// `dir`. A damaged chain is not repaired here (`waxseal audit verify` names it); the
/// new lines continue from the last line as it is.
fn last_of_chain(dir: &Path) -> io::Result<(String, u64, VecDeque<String>)> {
    let mut last = None;
    let mut recent = VecDeque::new();
    for path in files(dir)? {
        let reader = BufReader::new(File::open(&path)?);
        for line in reader.lines() {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(line.clone());
            last = Some(line);
        }
    }
    Ok(match last {
        None => (GENESIS.to_string(), 0, recent),
        Some(line) => {
            let seq = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v.get("seq").and_then(Value::as_u64))
                .unwrap_or(0);
            (hex::encode(Sha256::digest(line.as_bytes())), seq, recent)
        }
    })
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

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

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_422), (2025, 11, 30));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert!(rfc3339_now().ends_with('Z'));
    }

    #[test]
    fn chain_continues_across_reopen_and_rotation_and_names_a_changed_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let audit = Audit::open(dir.path(), Durability::GroupCommit, 4096).unwrap();
            for i in 0..40 {
                let seq = audit
                    .append(&record("intent", &format!("hsm/k{i}")))
                    .unwrap();
                audit.wait_durable(seq).unwrap();
            }
        }
        let audit = Audit::open(dir.path(), Durability::Off, 4096).unwrap();
        audit.append(&record("signed", "hsm/after")).unwrap();
        assert_eq!(audit.tail(2).len(), 2);
        drop(audit);
        let all = files(dir.path()).unwrap();
        assert!(all.len() > 2, "rotated: {all:?}");
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
            let dir = tempfile::tempdir().unwrap();
            let audit = Arc::new(Audit::open(dir.path(), durability, 64 << 20).unwrap());
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
            let ok = verify_files(&files(dir.path()).unwrap()).unwrap();
            assert_eq!(ok.records, 800);
        }
    }

    #[test]
    fn a_lone_signature_is_synced_while_the_device_signs() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path(), Durability::GroupCommit, 64 << 20).unwrap();
        std::thread::sleep(Duration::from_millis(20)); // the syncer parks
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
            let mut outcome = record("signed", "hsm/k");
            outcome.intent = Some(seq);
            audit.append(&outcome).unwrap();
            assert_eq!(audit.shared.inflight.load(Ordering::Acquire), 0);
        }
        assert_eq!(audit.counts().syncs, 3, "one sync per lone intent");
    }
}
