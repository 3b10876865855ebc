//! Device lanes: the borrowing pool through which requests reach a device.
//!
//! A device is a set of *lanes* (for PKCS#11: one session each). The thread serving a
//! request borrows a free lane, has exclusive use of it while it works, and gives it
//! back; with no lane free it waits. The request is thus handled start to finish on
//! one thread — socket read, policy, device call, response write — with no hand-off to
//! another thread, because each hand-off costs an idle CPU's wake-up, comparable to a
//! whole signature on a fast token (docs/architecture.md, "Threads and lanes";
//! docs/benchmarks.md has the measurements). Backends whose handle may not move
//! between threads keep their own thread behind a lane (their `Backend` impl sends to
//! it).
//!
//! A lane whose operation panics is dropped (its state may be half-changed); the
//! device keeps its other lanes and the caller gets an error.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use tracing::error;

use crate::backend::Backend;

/// The lanes of one device.
pub struct DeviceLanes {
    name: String,
    /// Free lanes: a bounded queue, so borrowing and returning take no lock in the
    /// common case and a borrower with none free sleeps until one comes back.
    give: Sender<Box<dyn Backend>>,
    take: Receiver<Box<dyn Backend>>,
    total: AtomicUsize,
}

impl std::fmt::Debug for DeviceLanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLanes")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// No lane could serve the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaneError {
    /// Every lane of the device was lost to panics.
    #[error("device {0}: no working lane is left (see the agent log); restart the agent")]
    Gone(String),
    /// The operation panicked.
    #[error("device {0}: the operation failed unexpectedly (see the agent log)")]
    Panicked(String),
    /// All lanes stayed busy for too long.
    #[error("device {0}: busy for over {1} s; try again")]
    Busy(String, u64),
}

/// How long a request waits for a free lane before giving up.
const WAIT: Duration = Duration::from_secs(120);

impl DeviceLanes {
    /// A device served by these lanes.
    pub fn new(name: &str, lanes: Vec<Box<dyn Backend>>) -> Self {
        let (give, take) = crossbeam_channel::bounded(lanes.len().max(1));
        let total = AtomicUsize::new(lanes.len());
        for lane in lanes {
            // Capacity is the number of lanes: this never blocks or fails.
            let _ = give.send(lane);
        }
        DeviceLanes {
            name: name.to_string(),
            give,
            take,
            total,
        }
    }

    /// Runs `f` with exclusive use of a free lane, on the calling thread.
    pub fn run<R>(&self, f: impl FnOnce(&mut dyn Backend) -> R) -> Result<R, LaneError> {
        let mut lane = match self.take.try_recv() {
            Ok(lane) => lane,
            Err(_) => {
                if self.total.load(Ordering::Acquire) == 0 {
                    return Err(LaneError::Gone(self.name.clone()));
                }
                match self.take.recv_timeout(WAIT) {
                    Ok(lane) => lane,
                    Err(RecvTimeoutError::Timeout) => {
                        return Err(LaneError::Busy(self.name.clone(), WAIT.as_secs()))
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(LaneError::Gone(self.name.clone()))
                    }
                }
            }
        };
        match catch_unwind(AssertUnwindSafe(|| f(&mut *lane))) {
            Ok(r) => {
                let _ = self.give.send(lane);
                Ok(r)
            }
            Err(_) => {
                error!(device = %self.name, "a device operation panicked; its lane is dropped");
                self.total.fetch_sub(1, Ordering::AcqRel);
                Err(LaneError::Panicked(self.name.clone()))
            }
        }
    }

    /// Drops every idle lane (closing sessions); used at shutdown.
    pub fn close(&self) {
        while self.take.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, DeviceInfo, DeviceKey, PublicKey, SignInput, Signed};
    use crate::proto::KeyAlg;
    use std::sync::Arc;

    /// A mock backend (named as one): only the lane pool's plumbing is under test here;
    /// real devices are exercised in pkcs11-tests.
    struct MockLane(u32);

    impl Backend for MockLane {
        fn name(&self) -> &str {
            "m"
        }
        fn list_keys(&mut self) -> Result<Vec<DeviceKey>, BackendError> {
            self.0 += 1;
            std::thread::sleep(Duration::from_millis(20));
            Ok(vec![])
        }
        fn public_key(&mut self, _: &str) -> Result<PublicKey, BackendError> {
            panic!("boom")
        }
        fn generate(&mut self, _: &str, _: KeyAlg) -> Result<(DeviceKey, PublicKey), BackendError> {
            Err(BackendError::unsupported("m", "mock"))
        }
        fn sign(&mut self, _: &str, _: &SignInput<'_>) -> Result<Signed, BackendError> {
            Err(BackendError::unsupported("m", "mock"))
        }
        fn info(&mut self) -> Result<DeviceInfo, BackendError> {
            Ok(DeviceInfo {
                detail: format!("calls {}", self.0),
                keys: 0,
            })
        }
    }

    #[test]
    fn lanes_are_exclusive_and_shared_out() {
        let lanes = Arc::new(DeviceLanes::new(
            "m",
            vec![Box::new(MockLane(0)), Box::new(MockLane(0))],
        ));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let l = lanes.clone();
                std::thread::spawn(move || l.run(|b| b.list_keys()).unwrap().unwrap())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let a = lanes.run(|b| b.info()).unwrap().unwrap().detail;
        let b = lanes.run(|b| b.info()).unwrap().unwrap().detail;
        let total: u32 = [a, b]
            .iter()
            .map(|d| d.trim_start_matches("calls ").parse::<u32>().unwrap())
            .sum();
        assert_eq!(total, 6, "six jobs ran across the two lanes");
    }

    #[test]
    fn a_panic_drops_the_lane_and_reports() {
        let lanes = DeviceLanes::new("m", vec![Box::new(MockLane(0))]);
        assert_eq!(
            lanes.run(|b| b.public_key("x")).unwrap_err(),
            LaneError::Panicked("m".into())
        );
        assert_eq!(
            lanes.run(|b| b.info()).unwrap_err(),
            LaneError::Gone("m".into())
        );
    }
}
