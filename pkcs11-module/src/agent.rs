//! The module's connections to `agent.sock`: a pool of blocking clients (one per thread
//! signing at the same time), PIN prompts answered with the PIN given to `C_Login`, and
//! the agent's error codes mapped to `CKR_…` in one function.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cryptoki_sys::{
    CKR_DATA_INVALID, CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED, CKR_FUNCTION_REJECTED,
    CKR_KEY_HANDLE_INVALID, CKR_MECHANISM_INVALID, CKR_PIN_INCORRECT, CKR_PIN_LOCKED,
    CKR_USER_NOT_LOGGED_IN, CK_RV,
};
use rustix::net::RecvFlags;
use waxseal_proto::client::{Client, ClientError, DEFAULT_SPIN};
use waxseal_proto::proto::ErrorCode;
use zeroize::Zeroizing;

/// How many idle connections the pool keeps; more threads may sign at once, their
/// extra connections are closed when they are done.
const POOL_MAX: usize = 16;

/// The PIN a connection answers the agent's next prompt with (`None`: cancel).
type PromptPin = Arc<Mutex<Option<Zeroizing<String>>>>;

/// One pooled connection.
struct Conn {
    client: Client,
    pin: PromptPin,
    /// The client's socket, to see whether the agent closed it.
    probe: UnixStream,
}

impl Conn {
    /// Whether the agent still has the connection open: a peek that would block. A
    /// closed one reads end-of-file; writing to it would raise SIGPIPE in the program
    /// that loaded the module.
    fn alive(&self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            rustix::net::recv(&self.probe, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT),
            Err(e) if e == rustix::io::Errno::AGAIN
        )
    }
}

/// The agent, as the module reaches it.
pub struct Agent {
    socket: PathBuf,
    pool: Mutex<Vec<Conn>>,
    /// Requests in flight from this process.
    busy: AtomicUsize,
    /// CPUs this process may run on.
    cpus: usize,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// The agent's answer was an error, or there was no answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent refused or failed with this code.
    #[error("the agent answered {0}")]
    Code(ErrorCode),
    /// No agent, or the connection broke.
    #[error("no answer from the agent: {0}")]
    Unreachable(String),
}

impl AgentError {
    /// The `CKR_…` a PKCS#11 caller gets (docs/pkcs11-module.md, "Errors").
    pub fn rv(&self) -> CK_RV {
        match self {
            AgentError::Code(code) => rv_of(*code),
            AgentError::Unreachable(_) => CKR_DEVICE_REMOVED,
        }
    }
}

/// The mapping of agent error codes (docs/protocol.md, section 5) to return values.
pub fn rv_of(code: ErrorCode) -> CK_RV {
    match code {
        ErrorCode::PolicyDenied
        | ErrorCode::ConfirmDenied
        | ErrorCode::RateLimited
        | ErrorCode::Locked
        | ErrorCode::PcrMismatch
        | ErrorCode::ApprovalRefused
        | ErrorCode::ApprovalExpired => CKR_FUNCTION_REJECTED,
        ErrorCode::PinIncorrect => CKR_PIN_INCORRECT,
        ErrorCode::PinBlocked => CKR_PIN_LOCKED,
        ErrorCode::PinRequired => CKR_USER_NOT_LOGGED_IN,
        ErrorCode::DeviceAbsent => CKR_DEVICE_REMOVED,
        ErrorCode::UnknownKey => CKR_KEY_HANDLE_INVALID,
        ErrorCode::BadRequest => CKR_DATA_INVALID,
        ErrorCode::Unsupported => CKR_MECHANISM_INVALID,
        ErrorCode::DeviceError | ErrorCode::FrameTooLarge | ErrorCode::KeyExists => {
            CKR_DEVICE_ERROR
        }
    }
}

impl Agent {
    /// The agent at `socket`; nothing is connected yet.
    pub fn new(socket: PathBuf) -> Agent {
        Agent {
            socket,
            pool: Mutex::new(Vec::new()),
            busy: AtomicUsize::new(0),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Runs `f` on a connection, answering PIN prompts with `pin`. A pooled connection
    /// that fails before any answer is taken to be stale (the agent restarted, or
    /// closed it as idle) and `f` is tried once more on a new connection.
    pub fn call<T>(
        &self,
        pin: Option<&Zeroizing<String>>,
        mut f: impl FnMut(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, AgentError> {
        let pooled = {
            let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
            let mut found = None;
            while let Some(conn) = pool.pop() {
                if conn.alive() {
                    found = Some(conn);
                    break;
                }
            }
            found
        };
        let retry = pooled.is_some();
        let conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        match self.run(conn, pin, &mut f) {
            Err(AgentError::Unreachable(_)) if retry => {
                // Every pooled connection predates what broke this one.
                self.pool
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                let conn = self.connect()?;
                self.run(conn, pin, &mut f)
            }
            other => other,
        }
    }

    fn run<T>(
        &self,
        mut conn: Conn,
        pin: Option<&Zeroizing<String>>,
        f: &mut impl FnMut(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, AgentError> {
        *conn.pin.lock().unwrap_or_else(PoisonError::into_inner) = pin.cloned();
        // A client polls for its answer before it sleeps (docs/protocol.md, `spin_us`),
        // which saves a wake-up when a CPU is free for it beside the agent's. With more
        // requests in flight than that, polling takes the agent's CPU: measured on 2
        // cores, 4 threads sign ~25% faster without it and 1 thread ~35% faster with it.
        let in_flight = self.busy.fetch_add(1, Ordering::AcqRel) + 1;
        let spin = if in_flight * 2 <= self.cpus {
            DEFAULT_SPIN
        } else {
            Duration::ZERO
        };
        conn.client.set_spin(spin);
        let result = f(&mut conn.client);
        self.busy.fetch_sub(1, Ordering::AcqRel);
        *conn.pin.lock().unwrap_or_else(PoisonError::into_inner) = None;
        match result {
            Ok(v) => {
                self.put_back(conn);
                Ok(v)
            }
            Err(ClientError::Agent(e)) => {
                self.put_back(conn);
                Err(AgentError::Code(e.code))
            }
            // The connection is dropped: its state is unknown.
            Err(e) => Err(AgentError::Unreachable(e.to_string())),
        }
    }

    fn put_back(&self, conn: Conn) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_MAX {
            pool.push(conn);
        }
    }

    fn connect(&self) -> Result<Conn, AgentError> {
        // `Client::connect` exchanges `hello` before anything else (docs/protocol.md,
        // "Senders").
        let unreachable = |e: &dyn std::fmt::Display| AgentError::Unreachable(e.to_string());
        let stream = UnixStream::connect(&self.socket).map_err(|e| unreachable(&e))?;
        let probe = stream.try_clone().map_err(|e| unreachable(&e))?;
        let mut client = Client::over(stream).map_err(|e| unreachable(&e))?;
        let pin: PromptPin = Arc::new(Mutex::new(None));
        let answer = Arc::clone(&pin);
        client.on_prompt(Box::new(move |_question| {
            answer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }));
        Ok(Conn { client, pin, probe })
    }

    /// Forgets the pooled connections without writing to them: after `fork()` the
    /// child must not use its parent's connections (the agent refuses requests written
    /// by another process). If another thread held the pool's lock when the process
    /// forked, that lock stays held forever in the child, so the connections are
    /// leaked instead.
    pub fn abandon(&self) {
        if let Ok(mut pool) = self.pool.try_lock() {
            pool.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agent_code_has_a_return_value() {
        for code in ErrorCode::ALL {
            let rv = rv_of(code);
            assert_ne!(rv, 0, "{code} maps to CKR_OK");
        }
        assert_eq!(rv_of(ErrorCode::Locked), CKR_FUNCTION_REJECTED);
        assert_eq!(rv_of(ErrorCode::PinRequired), CKR_USER_NOT_LOGGED_IN);
        assert_eq!(
            AgentError::Unreachable("gone".into()).rv(),
            CKR_DEVICE_REMOVED
        );
    }
}
