//! Group commit: when records reach the disk. Requests that need a sync run one for
//! everyone written so far, or wait for the running one; the `audit-sync` thread syncs
//! a lone signature's intent while the device signs (see the parent module's doc).

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use tracing::error;

use std::sync::Arc;

use super::{Audit, Durability, Shared, State, SyncError};

impl Audit {
    /// Waits until line `seq` is on disk (at once with `audit_fsync = false`). With
    /// group commit the first waiter syncs for everyone (see the module doc).
    pub fn wait_durable(&self, seq: u64) -> Result<(), SyncError> {
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
    fn wait_group(&self, seq: u64) -> Result<(), SyncError> {
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
            // Poll only for a sync short enough that waking up would cost as much
            // (docs/architecture.md, "The audit log"), and only on an idle CPU.
            let worth = SYNC_EWMA_NS.load(Ordering::Relaxed) <= POLL_WORTH.as_nanos() as u64;
            if let Some(_turn) = worth.then(crate::wire::PollTurn::take_busy).flatten() {
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
}

/// `Ok` unless a failed sync covered line `seq` (see [`State::doubtful`]).
pub(super) fn doubt_check(st: &State, seq: u64) -> Result<(), SyncError> {
    match st.doubt(seq) {
        None => Ok(()),
        Some(e) => Err(SyncError::Covered(Box::new(e.clone()))),
    }
}

/// The `audit-sync` thread: syncs a lone signature's intent while the device signs
/// (see the module doc), sharing the `syncing` flag with requests that sync for
/// themselves.
pub(super) fn syncer(shared: &Shared) {
    let mut st = shared.lock();
    loop {
        while !st.closing && (st.want <= st.synced || st.syncing) {
            st.syncer_idle = true;
            shared.parked.notify_all();
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
pub(super) fn run_sync<'a>(
    shared: &'a Shared,
    mut st: MutexGuard<'a, State>,
) -> MutexGuard<'a, State> {
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
pub(super) const POLL: Duration = Duration::from_micros(400);

/// Waiters poll for a running sync only while syncs take about this long or less:
/// about what a thread's wake-up costs on the machines measured (docs/benchmarks.md).
/// A longer sync is waited for asleep: polling through it would burn a CPU for no gain.
const POLL_WORTH: Duration = Duration::from_micros(80);

/// How long the process's recent `fdatasync`s took (ns): an exponentially weighted
/// average, 1/8 per sync, starting at 0 (poll until the disk shows otherwise).
static SYNC_EWMA_NS: AtomicU64 = AtomicU64::new(0);

/// Records a sync's duration in [`SYNC_EWMA_NS`].
fn sync_took(took: Duration) {
    let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
    let _ = SYNC_EWMA_NS.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some(if old == 0 { ns } else { old - old / 8 + ns / 8 })
    });
}

/// One `fdatasync`, counted; the error as the client is told it.
pub(super) fn sync_counted(shared: &Shared, file: &File) -> Result<(), SyncError> {
    shared.syncs.fetch_add(1, Ordering::Relaxed);
    let began = Instant::now();
    let synced = file.sync_data();
    sync_took(began.elapsed());
    synced.map_err(|e| {
        error!(error = %e, "cannot sync the audit log");
        SyncError::Sync(Arc::new(e))
    })
}
