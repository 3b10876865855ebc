//! Device workers: OS threads that own a device's lanes and run jobs sent from async code.
//!
//! Every lane is a thread pulling from one shared queue, so a device with several
//! sessions signs in parallel and a slow operation on one lane does not stall the
//! others. A job that panics is caught: its caller gets an error, the lane lives on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;
use tracing::error;

use crate::backend::Backend;

type Job = Box<dyn FnOnce(&mut dyn Backend) + Send>;

/// The worker threads of one device.
#[derive(Debug)]
pub struct DeviceWorker {
    name: String,
    tx: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

/// The worker is gone (shut down, or the job panicked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device {0}: the worker failed while handling the request (see the agent log)")]
pub struct WorkerGone(pub String);

impl DeviceWorker {
    /// Starts one thread per lane.
    pub fn spawn(name: &str, lanes: Vec<Box<dyn Backend>>) -> std::io::Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut threads = Vec::with_capacity(lanes.len());
        for (i, lane) in lanes.into_iter().enumerate() {
            let rx = rx.clone();
            let thread_name = format!("dev-{name}-{i}");
            let dev = name.to_string();
            threads.push(
                std::thread::Builder::new()
                    .name(thread_name)
                    .spawn(move || lane_loop(&dev, lane, rx))?,
            );
        }
        Ok(DeviceWorker {
            name: name.to_string(),
            tx: Some(tx),
            threads,
        })
    }

    /// Runs `f` on a free lane and waits for its result.
    pub async fn run<R, F>(&self, f: F) -> Result<R, WorkerGone>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Backend) -> R + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |backend| {
            // The caller may have gone away (client disconnected); nothing to do then.
            let _ = reply.send(f(backend));
        });
        let gone = || WorkerGone(self.name.clone());
        self.tx.as_ref().ok_or_else(gone)?.send(job).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Stops taking jobs and waits for the lanes to finish what they hold.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                error!(device = %self.name, "a worker thread panicked at shutdown");
            }
        }
    }
}

impl Drop for DeviceWorker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lane_loop(device: &str, mut lane: Box<dyn Backend>, rx: Receiver<Job>) {
    for job in rx.iter() {
        if catch_unwind(AssertUnwindSafe(|| job(&mut *lane))).is_err() {
            error!(device, "a device operation panicked; the request failed, the lane continues");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, DeviceInfo, DeviceKey, PublicKey, SignInput, Signed};
    use crate::proto::KeyAlg;

    /// A mock backend (named as one): only the worker's plumbing is under test here;
    /// real devices are exercised in pkcs11-tests.
    struct MockLane(u32);

    impl Backend for MockLane {
        fn list_keys(&mut self) -> Result<Vec<DeviceKey>, BackendError> {
            self.0 += 1;
            Ok(vec![])
        }
        fn public_key(&mut self, _: &str) -> Result<PublicKey, BackendError> {
            panic!("boom")
        }
        fn generate(&mut self, _: &str, _: KeyAlg) -> Result<(DeviceKey, PublicKey), BackendError> {
            Err(BackendError::Unsupported("mock".into()))
        }
        fn sign(&mut self, _: &str, _: &SignInput<'_>) -> Result<Signed, BackendError> {
            Err(BackendError::Unsupported("mock".into()))
        }
        fn info(&mut self) -> Result<DeviceInfo, BackendError> {
            Ok(DeviceInfo { detail: format!("calls {}", self.0), keys: 0 })
        }
    }

    #[test]
    fn jobs_run_and_panics_do_not_kill_the_lane() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let w = DeviceWorker::spawn("m", vec![Box::new(MockLane(0))]).unwrap();
        rt.block_on(async {
            w.run(|b| b.list_keys()).await.unwrap().unwrap();
            let gone = w.run(|b| b.public_key("x")).await;
            assert!(gone.is_err(), "a panicking job reports an error");
            let info = w.run(|b| b.info()).await.unwrap().unwrap();
            assert_eq!(info.detail, "calls 1", "the same lane state survives the panic");
        });
        w.shutdown();
    }
}
