//! Tests of the audit log: chain, durability, files of others, rate seeds, tail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Instant, UNIX_EPOCH};

use serde_json::Map;

use super::time::{civil_from_days, days_from_civil};
use super::*;
use crate::policy::Caller;
use crate::proto;

fn record(event: Event, key: &str) -> Record {
    let mut subject = Map::new();
    subject.insert("digest".into(), json!("ab"));
    Record {
        event,
        key: key.into(),
        purpose: Some(Purpose::Sign(proto::Purpose::Digest)),
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

fn outcome(event: Event, key: &str, intent: u64) -> Record {
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
                .append(&record(Event::Intent, &format!("hsm/k{i}")))
                .unwrap();
            audit.wait_durable(seq).unwrap();
        }
    }
    let audit = Audit::open(state.path(), &opts(Durability::Off, 4096)).unwrap();
    audit.append(&record(Event::Signed, "hsm/after")).unwrap();
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
    const THREADS: usize = 8;
    const ROUNDS: usize = 50;
    const INTENTS: u64 = (THREADS * ROUNDS) as u64;
    for durability in [Durability::GroupCommit, Durability::SyncEach] {
        let state = tempfile::tempdir().unwrap();
        let audit = Arc::new(Audit::open(state.path(), &opts(durability, 64 << 20)).unwrap());
        // Every round, all threads write their intent before any waits for the disk:
        // the appends are concurrent by construction, not by luck of scheduling.
        let barrier = Arc::new(std::sync::Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let audit = audit.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    for i in 0..ROUNDS {
                        let key = format!("hsm/t{t}-{i}");
                        let seq = audit.append(&record(Event::Intent, &key)).unwrap();
                        barrier.wait();
                        audit.wait_durable(seq).unwrap();
                        assert!(audit.shared.synced.load(Ordering::Acquire) >= seq);
                        audit.append(&outcome(Event::Signed, &key, seq)).unwrap();
                        barrier.wait();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = audit.counts();
        assert_eq!(c.appended, 2 * INTENTS);
        assert!(c.syncs >= 1 && c.waited <= INTENTS, "{durability:?}: {c:?}");
        if durability == Durability::SyncEach {
            assert_eq!(c.syncs, c.waited, "one sync per waiting signature");
        } else {
            // Per round: at most the audit-sync thread's sync for the round's first
            // (lone) intent, and one sync run by a waiter for all the others.
            assert!(
                c.syncs <= 2 * ROUNDS as u64,
                "at most two syncs per round of {THREADS} intents: {c:?}"
            );
            assert!(c.syncs < INTENTS, "fewer syncs than intents: {c:?}");
        }
        drop(audit);
        let ok = verify_files(&files(&state.path().join(DIR)).unwrap()).unwrap();
        assert_eq!(ok.records, 2 * INTENTS);
    }
}

/// Waits until the `audit-sync` thread has parked with line `seq` on disk: woken by
/// the thread itself each time it parks, never by a timer.
fn wait_parked(audit: &Audit, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut st = audit.shared.lock();
    while !(st.syncer_idle && st.synced >= seq) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("audit-sync did not park with the line synced");
        st = audit.shared.parked.wait_timeout(st, left).unwrap().0;
    }
}

#[test]
fn a_lone_signature_is_synced_while_the_device_signs() {
    let state = tempfile::tempdir().unwrap();
    let audit = Audit::open(state.path(), &opts(Durability::GroupCommit, 64 << 20)).unwrap();
    // The syncer parks before the first intent, or that intent is not "lone".
    wait_parked(&audit, 0);
    for i in 0..3 {
        let seq = audit
            .append(&record(Event::Intent, &format!("hsm/k{i}")))
            .unwrap();
        // "Signing": the audit-sync thread syncs the intent meanwhile, then parks
        // again (the next intent is lone only once it has).
        wait_parked(&audit, seq);
        let waited = audit.counts().waited;
        audit.wait_durable(seq).unwrap();
        assert_eq!(audit.counts().waited, waited, "nothing left to wait for");
        audit.append(&outcome(Event::Signed, "hsm/k", seq)).unwrap();
        assert_eq!(audit.shared.inflight.load(Ordering::Acquire), 0);
    }
    assert_eq!(audit.counts().syncs, 3, "one sync per lone intent");
}

#[test]
fn a_record_a_failed_sync_covered_is_refused_after_a_later_sync_succeeds() {
    for durability in [Durability::GroupCommit, Durability::SyncEach] {
        let state = tempfile::tempdir().unwrap();
        let audit = Audit::open(state.path(), &opts(durability, 64 << 20)).unwrap();
        let covered = audit.append(&record(Event::Intent, "hsm/a")).unwrap();
        // As `run_sync` records an fdatasync that failed covering line 1 (a real
        // EIO needs a failing disk).
        {
            let mut st = audit.shared.lock();
            let eio = io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error());
            st.doubted(&audit.shared, covered, &SyncError::Sync(Arc::new(eio)));
        }
        let after = audit.append(&record(Event::Intent, "hsm/b")).unwrap();
        // The next sync succeeds: line 2 is served, line 1 never.
        audit.wait_durable(after).unwrap();
        let e = audit.wait_durable(covered).unwrap_err().to_string();
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
            .append(&record(Event::Intent, &format!("hsm/k{i}")))
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
    audit.append(&record(Event::Intent, "hsm/after")).unwrap();
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
            .append(&record(Event::Intent, &format!("hsm/k{i}")))
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
        match audit.append(&record(Event::Intent, &format!("hsm/fill{i}"))) {
            Ok(seq) => audit.wait_durable(seq).unwrap(),
            Err(e) => {
                failed = Some((before, e));
                break;
            }
        }
    }
    let (before, e) = failed.expect("a write fails once the file system is full");
    let said = e.to_string();
    assert!(
        said.contains("No space left") && said.contains(log.to_str().unwrap()),
        "{said}"
    );
    assert_ne!(
        before % 4096,
        0,
        "the failing write had room for part of its line (tmpfs pages are 4 KiB)"
    );
    assert_eq!(len(), before, "the part that was written is cut off");
    assert_eq!(std::fs::read(&log).unwrap().last(), Some(&b'\n'));
    // Still full: refused, the file unchanged.
    assert!(audit
        .append(&record(Event::Intent, "hsm/still-full"))
        .is_err());
    assert_eq!(len(), before);

    std::fs::remove_file(&filler).unwrap();
    let seq = audit
        .append(&record(Event::Intent, "hsm/room-again"))
        .unwrap();
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
    let seq = audit.append(&record(Event::Intent, "hsm/other")).unwrap();
    audit
        .append(&outcome(Event::Failed, "hsm/other", seq))
        .unwrap();
    audit.append(&record(Event::Intent, "hsm/other")).unwrap();
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
    let mut big = record(Event::Intent, "hsm/k");
    big.subject
        .insert("name".into(), json!("n".repeat(900_000)));
    let big_seq = audit.append(&big).unwrap();
    for i in 0..3 {
        audit
            .append(&record(Event::Signed, &format!("hsm/k{i}")))
            .unwrap();
    }
    let tail = audit.tail(1000, TAIL_BUDGET);
    assert_eq!(tail.records.len(), 4);
    let stub: Value = serde_json::from_str(&tail.records[0]).unwrap();
    assert_eq!(stub["seq"], big_seq);
    assert_eq!(stub["truncated"], true);

    // Many records of 100 kB: the newest that fit, and how many were left out.
    for i in 0..10 {
        let mut r = record(Event::Signed, &format!("hsm/m{i}"));
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

#[test]
fn typed_records_write_the_words_logs_always_had() {
    let state = tempfile::tempdir().unwrap();
    let audit = Audit::open(state.path(), &opts(Durability::Off, 64 << 20)).unwrap();
    let mut withheld = outcome(Event::Withheld, "hsm/ca", 1);
    withheld.purpose = Some(proto::Purpose::X509Tbs.into());
    withheld.outcome = Some((proto::ErrorCode::DeviceError, "disk".into()));
    let mut refused = record(Event::Refused, "");
    refused.purpose = Some(Purpose::Connection);
    let mut lock = record(Event::Lock, "");
    lock.purpose = None;
    lock.subject = Map::new();
    for r in [&withheld, &refused, &lock] {
        audit.append(r).unwrap();
    }
    drop(audit);
    let text = std::fs::read_to_string(state.path().join(DIR).join(CURRENT)).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["event"], "withheld");
    assert_eq!(lines[0]["purpose"], "x509-tbs");
    assert_eq!(lines[0]["code"], "device-error");
    assert_eq!(lines[0]["reason"], "disk");
    assert_eq!(lines[0]["intent"], 1);
    assert_eq!(lines[1]["event"], "refused");
    assert_eq!(lines[1]["purpose"], "connection");
    assert_eq!(lines[2]["event"], "lock");
    assert_eq!(lines[2]["key"], "");
    assert!(lines[2].get("purpose").is_none(), "{}", lines[2]);
    assert_eq!(lines[2]["caller"]["uid"], 1000);
}

/// The current file of `state`'s log.
fn current(state: &Path) -> PathBuf {
    state.join(DIR).join(CURRENT)
}

#[test]
fn a_durable_log_writes_into_synced_zeros_and_a_close_cuts_them_off() {
    let state = tempfile::tempdir().unwrap();
    let keys: HashSet<String> = ["hsm/k0".to_string()].into();
    let audit = Audit::open(state.path(), &opts(Durability::GroupCommit, 64 << 20)).unwrap();
    for i in 0..3 {
        let seq = audit
            .append(&record(Event::Intent, &format!("hsm/k{i}")))
            .unwrap();
        audit.wait_durable(seq).unwrap();
    }
    let log = current(state.path());
    let bytes = std::fs::read(&log).unwrap();
    assert_eq!(bytes.len() as u64, PREALLOC, "one chunk preallocated");
    let records = crate::audit_chain::records_part(&bytes).unwrap();
    assert_eq!(records.iter().filter(|&&b| b == b'\n').count(), 3);
    assert_eq!(records.last(), Some(&b'\n'));
    assert!(bytes[records.len()..].iter().all(|&b| b == 0));
    // Readers stop at the zero tail: `audit verify`, the rate count, `audit_tail`.
    let ok = verify_files(&files(&state.path().join(DIR)).unwrap()).unwrap();
    assert_eq!(ok.records, 3);
    assert_eq!(ok.unused, PREALLOC - records.len() as u64);
    let seed = audit.scan_rates(&keys);
    assert_eq!(seed.problem, None);
    assert_eq!(seed.signed["hsm/k0"].len(), 1);
    assert_eq!(audit.tail(10, TAIL_BUDGET).records.len(), 3);

    drop(audit);
    assert_eq!(
        std::fs::read(&log).unwrap(),
        records,
        "closed: no zeros left"
    );
}

#[test]
fn a_crash_leaves_a_zero_tail_that_the_next_start_continues_at_its_logical_end() {
    let state = tempfile::tempdir().unwrap();
    let o = opts(Durability::SyncEach, 64 << 20);
    let keys: HashSet<String> = ["hsm/k1".to_string()].into();
    let audit = Audit::open(state.path(), &o).unwrap();
    for i in 0..2 {
        let seq = audit
            .append(&record(Event::Intent, &format!("hsm/k{i}")))
            .unwrap();
        audit.wait_durable(seq).unwrap();
    }
    drop(audit);
    let log = current(state.path());
    let whole = std::fs::read(&log).unwrap();
    // What a crash leaves: the records, then the rest of the chunk, zeros.
    let mut crashed = whole.clone();
    crashed.resize(whole.len() + 200_000, 0);
    std::fs::write(&log, &crashed).unwrap();

    let with_keys = AuditOptions {
        rate_keys: keys,
        ..opts(Durability::SyncEach, 64 << 20)
    };
    let audit = Audit::open(state.path(), &with_keys).unwrap();
    assert_eq!(
        std::fs::read(&log).unwrap(),
        crashed,
        "nothing cut: no partial record"
    );
    assert_eq!(audit.take_seed().unwrap().signed["hsm/k1"].len(), 1);
    assert_eq!(audit.tail(10, TAIL_BUDGET).records.len(), 2);
    let seq = audit.append(&record(Event::Intent, "hsm/after")).unwrap();
    assert_eq!(seq, 3);
    audit.wait_durable(seq).unwrap();
    let bytes = std::fs::read(&log).unwrap();
    assert_eq!(
        bytes.len(),
        crashed.len(),
        "written into the zeros, not after them"
    );
    assert_eq!(&bytes[..whole.len()], &whole[..]);
    let text = crate::audit_chain::records_part(&bytes).unwrap();
    assert!(
        text[whole.len()..].starts_with(b"{"),
        "record 3 follows record 2"
    );
    drop(audit);
    let ok = verify_files(&files(&state.path().join(DIR)).unwrap()).unwrap();
    assert_eq!((ok.records, ok.unused), (3, 0));
}

#[test]
fn a_record_torn_by_a_crash_before_the_zero_tail_is_cut_off_at_start() {
    let state = tempfile::tempdir().unwrap();
    let o = opts(Durability::GroupCommit, 64 << 20);
    let audit = Audit::open(state.path(), &o).unwrap();
    for i in 0..3 {
        let seq = audit
            .append(&record(Event::Intent, &format!("hsm/k{i}")))
            .unwrap();
        audit.wait_durable(seq).unwrap();
    }
    drop(audit);
    let log = current(state.path());
    let whole = std::fs::read(&log).unwrap();
    // A crash while record 4 was being written into the preallocated space.
    let mut torn = whole.clone();
    torn.extend_from_slice(b"{\"seq\":4,\"time\":\"2025-");
    torn.resize(whole.len() + 65_536, 0);
    std::fs::write(&log, &torn).unwrap();
    let broken = verify_files(&files(&state.path().join(DIR)).unwrap()).unwrap_err();
    assert_eq!(
        broken.line, 4,
        "`audit verify` names the torn record: {broken}"
    );

    let audit = Audit::open(state.path(), &o).unwrap();
    assert_eq!(
        std::fs::read(&log).unwrap(),
        whole,
        "cut back to the last whole record, the zeros with it"
    );
    let seq = audit.append(&record(Event::Intent, "hsm/after")).unwrap();
    audit.wait_durable(seq).unwrap();
    drop(audit);
    let ok = verify_files(&files(&state.path().join(DIR)).unwrap()).unwrap();
    assert_eq!(ok.records, 4);
}

#[test]
fn a_nul_inside_a_line_is_refused_at_start_and_the_file_left_alone() {
    let state = tempfile::tempdir().unwrap();
    let o = opts(Durability::GroupCommit, 64 << 20);
    let audit = Audit::open(state.path(), &o).unwrap();
    for i in 0..3 {
        audit
            .append(&record(Event::Intent, &format!("hsm/k{i}")))
            .unwrap();
    }
    drop(audit);
    let log = current(state.path());
    // Zeros where record 2 was, record 3 after them: a hole, not a tail.
    let mut holed = std::fs::read(&log).unwrap();
    let second = holed.iter().position(|&b| b == b'\n').unwrap() + 1;
    holed[second..second + 10].fill(0);
    holed.resize(holed.len() + 4096, 0);
    std::fs::write(&log, &holed).unwrap();
    let e = Audit::open(state.path(), &o).unwrap_err().to_string();
    assert!(
        e.contains(&format!("{}:2:", log.display())) && e.contains("NUL byte inside a line"),
        "{e}"
    );
    assert_eq!(std::fs::read(&log).unwrap(), holed);
}

#[test]
fn rotated_files_are_cut_to_their_records() {
    let state = tempfile::tempdir().unwrap();
    let audit = Audit::open(state.path(), &opts(Durability::GroupCommit, 8192)).unwrap();
    for i in 0..100 {
        let seq = audit
            .append(&record(Event::Intent, &format!("hsm/k{i}")))
            .unwrap();
        audit.wait_durable(seq).unwrap();
    }
    let all = files(&state.path().join(DIR)).unwrap();
    assert!(all.len() > 2, "rotated: {all:?}");
    for f in &all[..all.len() - 1] {
        let bytes = std::fs::read(f).unwrap();
        assert!(!bytes.contains(&0), "{} holds zeros", f.display());
        assert_eq!(bytes.last(), Some(&b'\n'));
    }
    let live = std::fs::read(&all[all.len() - 1]).unwrap();
    assert!(live.ends_with(&[0]), "the live file is preallocated");
    assert!(
        live.len() <= 8192 + 1024,
        "not past the rotation size: {}",
        live.len()
    );
    assert_eq!(verify_files(&all).unwrap().records, 100);
    drop(audit);
}
