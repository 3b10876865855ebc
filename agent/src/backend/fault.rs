//! Device faults (the backend kit, docs/architecture.md): the four kinds every backend
//! sorts its native errors into, and the one loop that decides what each kind leads to.
//!
//! A device call fails because the device went away (a token pulled, a card removed, a
//! TPM or swtpm restarted), because the device forgot the login (a token logged the
//! application out, a card was reset), because a handle the agent kept no longer means
//! anything (an object flushed or replaced behind the agent's back), or for a reason no
//! new attempt cures (a refused PIN, a missing key, a failed operation). Each backend
//! maps its own errors — `CKR_…` values, PC/SC codes, `TPM_RC` values — to a [`Fault`]
//! in one function, and says in a [`Recover`] impl how it reconnects, logs in again or
//! finds its handles again. [`recover`] decides the rest the same way for every device:
//!
//! | fault | healing step | then |
//! |---|---|---|
//! | [`Fault::Gone`] | [`Recover::reconnect`] | once more; if it fails again, `device-absent` |
//! | [`Fault::Relogin`] | [`Recover::relogin`] | once more |
//! | [`Fault::StaleHandle`] | [`Recover::refind`] | once more |
//! | [`Fault::Failed`] | none | reported as it is |
//!
//! One more attempt, never more: a device that keeps failing gets a clear error, never
//! a loop. A device that cannot be reached when the attempt *starts* (connecting fails)
//! is reported as it is — it has just been looked for — so presence polling of an absent
//! device neither retries nor logs.

use tracing::warn;

use super::{BackendError, Code};

/// How many times an operation runs at most: once, and once more after healing.
pub const ATTEMPTS: usize = 2;

/// What kind of failure a device call met, as far as what to do next is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The device or the connection to it is gone: reconnect.
    Gone,
    /// The device is there but no longer holds the login: log in again.
    Relogin,
    /// A handle the agent kept (object, key) no longer refers to anything: find it again.
    StaleHandle,
    /// Nothing a new attempt could change: report.
    Failed,
}

/// A failed device call: its [`Fault`], and the error reported if it is not healed
/// (`E` is a backend's native error where its callers look at the device's answer).
#[derive(Debug)]
pub struct Faulted<E = BackendError> {
    /// What kind of failure.
    pub fault: Fault,
    /// What happened.
    pub error: E,
}

impl<E> Faulted<E> {
    /// A call that failed with `error`, of kind `fault`.
    pub fn new(fault: Fault, error: E) -> Self {
        Faulted { fault, error }
    }

    /// An error that is final: nothing is retried.
    pub fn failed(error: E) -> Self {
        Faulted::new(Fault::Failed, error)
    }
}

impl Faulted<BackendError> {
    /// The error to report: a device still gone after the reconnect is `device-absent`,
    /// whatever the last call's error said.
    pub fn into_error(self) -> BackendError {
        let mut error = self.error;
        if self.fault == Fault::Gone {
            error.code = Code::Absent;
        }
        error
    }
}

impl From<BackendError> for Faulted {
    fn from(error: BackendError) -> Self {
        Faulted::failed(error)
    }
}

impl From<Faulted> for BackendError {
    fn from(f: Faulted) -> Self {
        f.into_error()
    }
}

/// How a device carries out each healing step. Each step only drops state; the next
/// attempt builds it again (connects, logs in, looks the key up).
pub trait Recover {
    /// The device's name, for the log.
    fn device(&self) -> &str;
    /// Drops the connection and everything it held.
    fn reconnect(&mut self);
    /// Forgets that the device is logged in.
    fn relogin(&mut self);
    /// Forgets the handles the agent kept.
    fn refind(&mut self);
}

/// Runs `op` on `device`; after a [`Fault`] that a healing step may cure, takes the
/// step and runs `op` once more. The step is taken after the last attempt too, so that
/// the next request starts afresh. Returns the last failure when none succeeded.
pub fn recover<D, T, E>(
    device: &mut D,
    mut op: impl FnMut(&mut D) -> Result<T, Faulted<E>>,
) -> Result<T, Faulted<E>>
where
    D: Recover + ?Sized,
    E: std::fmt::Display,
{
    let mut attempt = 1;
    loop {
        let faulted = match op(device) {
            Ok(v) => return Ok(v),
            Err(f) => f,
        };
        let again = attempt < ATTEMPTS;
        let (step, next) = match faulted.fault {
            Fault::Failed => return Err(faulted),
            Fault::Gone => ("the device went away", "reconnecting"),
            Fault::Relogin => ("the device forgot the login", "logging in again"),
            Fault::StaleHandle => ("a handle the agent kept is stale", "finding it again"),
        };
        warn!(
            device = device.device(),
            error = %faulted.error,
            "{step}; {}",
            if again { next } else { "giving up on this request" }
        );
        match faulted.fault {
            Fault::Gone => device.reconnect(),
            Fault::Relogin => device.relogin(),
            Fault::StaleHandle => device.refind(),
            Fault::Failed => {}
        }
        if !again {
            return Err(faulted);
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device whose calls fail as scripted; records the healing steps taken.
    #[derive(Default)]
    struct Scripted {
        faults: Vec<Fault>,
        steps: Vec<&'static str>,
        calls: usize,
    }

    impl Recover for Scripted {
        fn device(&self) -> &str {
            "scripted"
        }
        fn reconnect(&mut self) {
            self.steps.push("reconnect");
        }
        fn relogin(&mut self) {
            self.steps.push("relogin");
        }
        fn refind(&mut self) {
            self.steps.push("refind");
        }
    }

    fn run(faults: &[Fault]) -> (Result<usize, BackendError>, Scripted) {
        let mut d = Scripted {
            faults: faults.to_vec(),
            ..Scripted::default()
        };
        let r = recover(&mut d, |d| {
            d.calls += 1;
            match d.faults.get(d.calls - 1) {
                None => Ok(d.calls),
                Some(&f) => Err(Faulted::new(
                    f,
                    BackendError::failed("scripted", "it broke"),
                )),
            }
        });
        (r.map_err(Faulted::into_error), d)
    }

    #[test]
    fn each_fault_gets_its_step_and_one_more_attempt() {
        for (fault, step) in [
            (Fault::Gone, "reconnect"),
            (Fault::Relogin, "relogin"),
            (Fault::StaleHandle, "refind"),
        ] {
            let (r, d) = run(&[fault]);
            assert_eq!(r.unwrap(), 2, "{fault:?}");
            assert_eq!(d.steps, [step]);
        }
    }

    #[test]
    fn failed_is_reported_at_once() {
        let (r, d) = run(&[Fault::Failed]);
        let e = r.unwrap_err();
        assert_eq!(e.code, Code::Failed);
        assert_eq!(e.to_string(), "device scripted: it broke");
        assert_eq!(d.calls, 1);
        assert!(d.steps.is_empty());
    }

    #[test]
    fn never_more_than_two_attempts_and_a_device_still_gone_is_absent() {
        let (r, d) = run(&[Fault::Relogin, Fault::Gone, Fault::Gone]);
        assert_eq!(r.unwrap_err().code, Code::Absent);
        assert_eq!(d.calls, ATTEMPTS);
        // The last step is taken too: the next request reconnects.
        assert_eq!(d.steps, ["relogin", "reconnect"]);
        let (r, _) = run(&[Fault::Gone, Fault::StaleHandle]);
        assert_eq!(r.unwrap_err().code, Code::Failed);
    }
}
